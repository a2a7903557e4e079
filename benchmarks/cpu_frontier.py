"""The `cpu` profile's frontier: test accuracy against wall minutes for candidate changes of the profile.

Why: the `cpu` profile is the run every learner without a GPU trains (notebooks 00 and 06), sized to
12 minutes of wall time on 2 CPU cores. The record's recipe was tuned for an A100; on two cores other
trade-offs may win (smaller batches for more steps, more epochs at low resolution, other widths). Each
candidate is `python -m hlb_utils train --profile cpu --set ...`, timed as a learner would time it
(the whole command: start, loading, training, evaluations, TTA, records), one seed after another:

    OMP_WAIT_POLICY=PASSIVE python benchmarks/cpu_frontier.py --data ../shared/data/cifar10-jpeg.tar.gz
    python benchmarks/cpu_frontier.py --report          # table (markdown) and figure from the CSV

Every finished run is appended at once to `benchmarks/results/cpu-frontier.csv`, so a call cut short
loses only the run in flight, and a later call skips the (candidate, seed) pairs already there. Run it
on a quiet machine: another busy process on two cores slows torch several-fold. The figure (median
accuracy against median wall minutes, each point's seed range as bars, the target's lines drawn)
goes to `docs/figures/cpu-frontier.png`.
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CSV = REPO / "benchmarks" / "results" / "cpu-frontier.csv"
CSV = DEFAULT_CSV   # the results file of this call (--csv)
FIGURE = REPO / "docs" / "figures" / "cpu-frontier.png"
FIELDS = ["date", "candidate", "changes", "seed", "test_accuracy", "train_seconds", "wall_seconds",
          "load_before", "code"]
TARGET_ACCURACY, TARGET_MINUTES = 0.895, 12.0

# Each candidate is a change (`--set` items) to the `cpu` profile as it was until 2026-12-02, which
# differed from today's in the knobs of BEFORE only: spelt out here, they keep each candidate the same
# run whatever the profile is now. All but PROFILE evaluate only at the end (eval_every=0): the
# evaluations between epochs change no weight, and on two cores they cost about 5 s each.
BEFORE = "widths=32,128,128 epochs=10 low_res_epochs=7 eval_every=2"
PROFILE = "the profile as it stands"   # `train --profile cpu` with no change: what a learner runs
CANDIDATES: dict[str, str] = {
    PROFILE: "",
    "eval at end only": "eval_every=0",
    "12 epochs (11 at 24 px)": "epochs=12 low_res_epochs=11 eval_every=0",
    "batch 250": "batch_size=250 eval_every=0",
    "label smoothing 0.2": "label_smoothing=0.2 eval_every=0",
    "widths 32-160-160 + 8 epochs (7 at 24 px)": "widths=32,160,160 epochs=8 low_res_epochs=7 eval_every=0",
    "14 epochs (13 at 20 px)": "epochs=14 low_res=20 low_res_epochs=13 eval_every=0",
    "batch 250 + 12 epochs (11 at 24 px)": "batch_size=250 epochs=12 low_res_epochs=11 eval_every=0",
    "10 epochs (5 at 24 px)": "low_res_epochs=5 eval_every=0",
    "12 epochs (8 at 24 px)": "epochs=12 low_res_epochs=8 eval_every=0",
    "widths 32-160-160 + 9 epochs (6 at 24 px)": "widths=32,160,160 epochs=9 low_res_epochs=6 eval_every=0",
    "widths 32-160-160": "widths=32,160,160 eval_every=0",
    "widths 32-192-192 + 8 epochs (5 at 24 px)": "widths=32,192,192 epochs=8 low_res_epochs=5 eval_every=0",
    # the last group is the cheapest to widen: it runs at 7 px or less (benchmarks/flops.py's per-image count)
    "widths 32-128-192": "widths=32,128,192 eval_every=0",
    "widths 32-128-256": "widths=32,128,256 eval_every=0",
    # first_res: a first stage at 16 px inside the low-resolution epochs
    "12 epochs (3 at 16 px + 5 at 24 px)": "epochs=12 low_res_epochs=8 first_res=16 first_res_epochs=3 eval_every=0",
    "10 epochs (2 at 16 px + 3 at 24 px)": "low_res_epochs=5 first_res=16 first_res_epochs=2 eval_every=0",
    # the 16 px stage spent on width: the profile's net with its first epochs cheaper, and a wider one
    "widths 32-160-160 + 9 epochs (2 at 16 px + 4 at 24 px)":
        "widths=32,160,160 epochs=9 low_res_epochs=6 first_res=16 first_res_epochs=2 eval_every=0",
    "widths 32-192-192 + 9 epochs (3 at 16 px + 3 at 24 px)":
        "widths=32,192,192 epochs=9 low_res_epochs=6 first_res=16 first_res_epochs=3 eval_every=0",
}


def done_runs() -> set[tuple[str, int]]:
    if not CSV.exists():
        return set()
    with CSV.open() as f:
        return {(row["candidate"], int(row["seed"])) for row in csv.DictReader(f)}


def code_version() -> str:
    """The commit, with "-dirty" when the library or the benchmarks (not this results file) have changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    try:
        changed = git("status", "--porcelain", "--", "hlb_utils", "benchmarks", f":!{DEFAULT_CSV.relative_to(REPO)}")
        return git("describe", "--always") + ("-dirty" if changed else "")
    except (OSError, ValueError, subprocess.CalledProcessError):
        return "unknown"


def run_one(name: str, seed: int, data: str, profile: str = "cpu") -> dict:
    """One `train --profile cpu` command, timed from outside; its accuracy read from its runs.csv."""
    sets = ([] if name == PROFILE else BEFORE.split()) + CANDIDATES[name].split() + [f"seed={seed}"]
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "hlb_utils", "train", "--profile", profile, "--data", data, "--out", out,
               "--quiet"] + [a for s in sets for a in ("--set", s)]
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        code = code_version()   # the code this run trains with, read before it starts
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"{name} seed {seed} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        with open(Path(out) / "runs.csv") as f:
            row = next(csv.DictReader(f))
    return dict(date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"), candidate=name,
                changes=CANDIDATES[name] or f"(none: the {profile} profile at {code})", seed=seed,
                test_accuracy=f"{float(row['test_accuracy']):.4f}",
                train_seconds=f"{float(row['train_seconds']):.1f}", wall_seconds=f"{wall:.1f}",
                load_before=f"{load:.2f}", code=code)


def append(row: dict) -> None:
    CSV.parent.mkdir(parents=True, exist_ok=True)
    new = not CSV.exists()
    with CSV.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def summary():
    """One row per candidate: seeds, median and range of accuracy, median wall and training seconds."""
    import pandas as pd
    runs = pd.read_csv(CSV)
    table = runs.groupby("candidate", sort=False).agg(
        changes=("changes", "first"), seeds=("seed", "count"), median=("test_accuracy", "median"),
        low=("test_accuracy", "min"), high=("test_accuracy", "max"),
        wall=("wall_seconds", "median"), train=("train_seconds", "median"))
    return table.reset_index()


def markdown(table) -> str:
    lines = ["| candidate | changes (`--set`) | seeds | median accuracy (range) | median wall | median training |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in table.itertuples():
        lines.append(f"| {r.candidate} | `{r.changes}` | {r.seeds} | {100 * r.median:.2f}% "
                     f"({100 * r.low:.2f}-{100 * r.high:.2f}) | {r.wall / 60:.1f} min | {r.train:.0f} s |")
    return "\n".join(lines)


def plot(table, path: Path = FIGURE) -> Path:
    """Median accuracy against median wall minutes, each point numbered (the key on the right); bars span
    the seeds; the accuracies above the target shaded."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(11, 5))
    right = max(TARGET_MINUTES, table["wall"].max() / 60) + 0.5
    ax.axhspan(100 * TARGET_ACCURACY, 100 * max(TARGET_ACCURACY, table["high"].max()) + 0.1, xmax=1,
               color="tab:green", alpha=0.06)
    ax.axhline(100 * TARGET_ACCURACY, color="tab:green", ls="--", lw=1, label="target: 89.5% within 12 min")
    ax.axvline(TARGET_MINUTES, color="tab:green", ls="--", lw=1)
    key = []
    for i, r in enumerate(table.itertuples(), start=1):
        x, y = r.wall / 60, 100 * r.median
        ax.errorbar(x, y, yerr=[[y - 100 * r.low], [100 * r.high - y]], fmt="o",
                    color="tab:blue" if r.seeds >= 3 else "tab:gray", capsize=3)
        ax.annotate(str(i), (x, y), textcoords="offset points", xytext=(5, 3), fontsize=8)
        entry = f"{i:<3} {r.candidate} ({r.seeds} seed{'s' if r.seeds > 1 else ''})"
        key += textwrap.wrap(entry, 46, subsequent_indent="    ")   # long names wrap instead of leaving the figure
    ax.set_xlim(min(table["wall"].min() / 60 - 0.5, TARGET_MINUTES - 1), right)
    ax.set_xlabel("wall minutes of `python -m hlb_utils train --profile cpu` (median over seeds)")
    ax.set_ylabel("test accuracy, selective TTA (%, median)")
    ax.set_title("The `cpu` profile's candidates on 2 CPU cores, a JPEG copy of CIFAR-10", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    about = ["Candidates: changes to the profile until 2026-12-02", "(widths 32-128-128, 10 epochs, 7 at 24 px).",
             "Blue: 3 seeds or more, grey: fewer;", "bars: the seeds' range.", ""]
    fig.text(0.63, 0.5, "\n".join(about + key), fontsize=7.5, va="center", family="monospace")
    fig.subplots_adjust(left=0.07, right=0.61, bottom=0.12)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    global CSV
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=os.environ.get("HLB_DATA"), help="CIFAR-10 source (default: HLB_DATA)")
    p.add_argument("--only", default="", help="comma-separated candidate names (none holds a comma) (default: all, in order)")
    p.add_argument("--seeds", default="0,1,2", help="seeds of each candidate (default: 0,1,2)")
    p.add_argument("--profile", default="cpu", help="the profile the candidates change (quick: a smoke test)")
    p.add_argument("--csv", type=Path, default=DEFAULT_CSV,
                   help=f"results file (default: {DEFAULT_CSV.relative_to(REPO)})")
    p.add_argument("--report", action="store_true", help="print the table and draw the figure; train nothing")
    args = p.parse_args(argv)
    CSV = args.csv
    if not args.report:
        names = [n.strip() for n in args.only.split(",") if n.strip()] or list(CANDIDATES)
        unknown = [n for n in names if n not in CANDIDATES]
        if unknown:
            p.error(f"unknown candidates {unknown}; known: {list(CANDIDATES)}")
        if not args.data:
            p.error("--data (or HLB_DATA) is needed to train")
        seeds = [int(s) for s in args.seeds.split(",")]
        done = done_runs()
        for name in names:
            for seed in seeds:
                if (name, seed) in done:
                    continue
                row = run_one(name, seed, args.data, args.profile)
                append(row)
                print(f"{name:45s} seed {seed}: {row['test_accuracy']}  wall {row['wall_seconds']} s  "
                      f"training {row['train_seconds']} s  (load before {row['load_before']})", flush=True)
    if CSV.exists():
        table = summary()
        print(markdown(table))
        if args.profile == "cpu":
            print(f"figure: {plot(table)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
