"""Our `record`, `airbench` and `seed` profiles timed side by side with the record scripts, on one GPU and one data set.

Why: "record pace" means nothing until it is measured against the record on the same GPU, with the same
data, over enough runs to trust the mean (per-run accuracy wanders by about 0.13 points). Notebook 06
(the record run) shows the table this writes. The whole thing fits one 8-minute call on an H200:

    python benchmarks/gpu_bench.py --data path/to/cifar10-jpeg.tar.gz \
        --peer airbench94_muon=peers/airbench94_muon.py --peer cifar10_speedrun=peers/cifar10_speedrun.py

CPU plumbing check (what tests/test_bench.py runs: the `quick` profile twice and a stand-in peer):

    python benchmarks/gpu_bench.py --quick --data path/to/cifar10-jpeg.tar.gz \
        --peer airbench94_muon=tests/fake_peer.py --out /tmp/bench

Each recipe keeps its own timer (benchmarks/README.md says what is inside each); every row is also
reported under each timing scope (`SCOPES`), so that a ratio compares like with like. Peers run unmodified but
for two things: the prepared data goes where they look before downloading (`cifar10/{train,test}.pt` in
their folder), and a copy of the script gets its one `range(<int>)` run loop set to the run count. Rows of
recipes not measured in a call are kept from an earlier call (same day and GPU): `--only` splits the work.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import importlib.util
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent
# Mean seconds of each recipe under each timing scope (blank where its output cannot give it):
# steps only (ours); airbench's (whitening init + the epochs' steps + TTA); hiverge's (one span from the
# whitening init through TTA, with no evaluation in between). README says which measure fills which.
SCOPES = ("steps_seconds", "airbench_scope_seconds", "hiverge_scope_seconds")
COLUMNS = ("recipe", "gpu", "torch", "data", "runs", "mean_acc", "std_acc", "min_acc",
           "mean_seconds", "median_seconds", *SCOPES, "date", "note")
# The comparisons that matter first; the costly peer (it sleeps a few seconds between runs) after them.
ORDER = ("record", "airbench", "quick", "airbench94_muon", "cifar10_speedrun", "seed")
OURS = ("record", "airbench", "seed", "quick")
# (ours, peer) pairs compared at the end: the record against both peers, airbench against its own code.
PAIRS = (("record", "cifar10_speedrun"), ("record", "airbench94_muon"), ("airbench", "airbench94_muon"),
         ("quick", "airbench94_muon"))
MIN_STEP_SECONDS = 60.0   # wall seconds any step needs (interpreter, data, compile); kept back for later steps
TABLE_SECONDS = 10.0      # wall seconds kept back at the end for the CSV and the table


class PeerRun(NamedTuple):
    label: str        # the peer's own run label ('0', '1', ...)
    accuracy: float   # final test accuracy with TTA, 0..1
    seconds: float    # the peer's own timer for that run
    before_tta: float | None = None   # its timer at the last epoch row (airbench: init + steps), if printed


def parse_peer_output(text: str) -> list[PeerRun]:
    """Per-run results from the airbench-style log table both peers print, warm-up runs dropped.

    The header names the columns (`run`, `epoch`, ..., `tta_val_acc`, `time_seconds`); a run's label is
    printed on its first row only, and its `eval` row holds the final TTA accuracy and its timed seconds.
    """
    columns, label, runs, last_epoch = None, "", [], None
    for line in text.splitlines():
        if not line.strip().startswith("|"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if "tta_val_acc" in cells and "time_seconds" in cells:
            columns = cells
        elif columns and len(cells) == len(columns):
            row = dict(zip(columns, cells))
            label = row.get("run") or label
            if row.get("epoch", "").isdigit() and row.get("time_seconds"):
                last_epoch = float(row["time_seconds"])
            if row.get("epoch") == "eval" and row.get("tta_val_acc"):
                if label != "warmup":
                    runs.append(PeerRun(label, float(row["tta_val_acc"]), float(row["time_seconds"]), last_epoch))
                label, last_epoch = "", None
    return runs


def patch_run_count(code: str, runs: int, name: str) -> str:
    """The peer's code with the one `range(<int>)` of its main block set to `runs`, and a comment saying so."""
    match = re.search(r"^if __name__ == ['\"]__main__['\"]:", code, flags=re.MULTILINE)
    if match is None:
        raise ValueError(f"peer {name}: no `if __name__ == \"__main__\":` block; is this the peer's script?")
    head, main = code[:match.start()], code[match.start():]
    counts = re.findall(r"range\((\d+)\)", main)
    if len(counts) != 1:
        raise ValueError(f"peer {name}: expected one `range(<int>)` run loop in the main block, found "
                         f"{len(counts)}; set its run count by hand in a copy and pass that copy")
    comment = (f"# Copy of {name} written by hlb benchmarks/gpu_bench.py. The only change: the run loop in the\n"
               f"# main block, range({counts[0]}) -> range({runs}). The data was written where it looks for it.\n")
    return comment + head + re.sub(r"range\(\d+\)", f"range({runs})", main, count=1)


def slugify(name: str) -> str:
    """'NVIDIA H200' -> 'nvidia-h200', for file names."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def write_peer_cache(data, folder: Path) -> None:
    """Both peers load `cifar10/{train,test}.pt` before they download: a dict of `images` (uint8, NHWC
    (N, 32, 32, 3), like torchvision's `dataset.data`), `labels` (int64 (N,)) and `classes` (list of str).

    The images go in a fixed shuffled order, as torchvision's files hold them: the peers fit their
    whitening to their first few thousand training images, and the replica (or a folder source) is
    stored class by class, which would hand them airplanes only.
    """
    import torch

    from hlb_utils.data import shuffled_indices

    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        images, labels = getattr(data, f"{split}_images"), getattr(data, f"{split}_labels")
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (3, 32, 32):
            raise ValueError(f"{split}_images must be uint8 (N, 3, 32, 32), got {images.dtype} {tuple(images.shape)}")
        order = shuffled_indices(len(labels))
        torch.save({"images": images[order].permute(0, 2, 3, 1).contiguous(), "labels": labels[order].to(torch.int64),
                    "classes": list(data.classes)}, folder / f"{split}.pt")


def stream(cmd: list[str], cwd: Path, env: dict, log: Path, timeout: float, tag: str) -> tuple[str, int | None]:
    """Run `cmd`, echo and log its output, kill its process group at the deadline.

    Returns (output, exit code); the code is None when the deadline killed it (finished runs still count).
    """
    group = hasattr(os, "killpg")
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1, start_new_session=group)
    killed = threading.Event()

    def kill() -> None:
        killed.set()
        try:
            # The whole group: torch.compile's worker processes would outlive the script otherwise.
            os.killpg(proc.pid, signal.SIGKILL) if group else proc.kill()
        except ProcessLookupError:
            pass

    timer = threading.Timer(timeout, kill)
    timer.start()
    lines = []
    with open(log, "w") as out:
        for line in proc.stdout:
            lines.append(line)
            out.write(line)
            print(f"  [{tag}] {line}", end="", flush=True)
    code = proc.wait()
    timer.cancel()
    return "".join(lines), (None if killed.is_set() else code)


def summarise(recipe: str, accs: list[float], secs: list[float], info: dict, note: str,
              planned: int, code: int | None, scopes: dict | None = None) -> dict:
    """One CSV row: accuracy as a fraction 0..1, seconds as the recipe's own timer reports them, and the
    mean under each timing scope that `scopes` (scope -> per-run seconds) holds."""
    if code != 0 or len(accs) < planned:
        note += f"; cut short: {len(accs)} of {planned} runs" + (" (time budget)" if code is None else f" (exit {code})")
    means = {scope: round(statistics.fmean(v), 4) for scope, v in (scopes or {}).items() if v}
    return {**{scope: "" for scope in SCOPES}, **means, "recipe": recipe, "gpu": info["gpu"], "torch": info["torch"], "data": info["data"], "runs": len(accs),
            "mean_acc": round(statistics.fmean(accs), 5),
            "std_acc": round(statistics.stdev(accs), 5) if len(accs) > 1 else "", "min_acc": round(min(accs), 5),
            "mean_seconds": round(statistics.fmean(secs), 4), "median_seconds": round(statistics.median(secs), 4),
            "date": info["date"], "note": note.strip("; ")}


def run_ours(recipe: str, runs: int, warmup: int, ctx: dict, timeout: float) -> dict | None:
    """A profile through `python -m hlb_utils train`; its warm-up runs are in none of the files it writes."""
    out, log = ctx["work"] / recipe, ctx["work"] / f"{recipe}.log"
    cmd = [sys.executable, "-u", "-m", "hlb_utils", "train", "--profile", recipe, "--runs", str(runs),
           "--warmup-runs", str(warmup), "--data", ctx["source"], "--out", str(out)]
    for change in ctx["sets"]:
        cmd += ["--set", change]
    _, code = stream(cmd, REPO, ctx["env"], log, timeout, recipe)
    if not (out / "summary.json").exists():
        print(f"!! {recipe}: no summary.json ({'time budget hit' if code is None else f'exit {code}'}); log {log}")
        return None
    summary = json.loads((out / "summary.json").read_text())
    info = dict(ctx["info"], gpu=summary.get("device") or ctx["info"]["gpu"], torch=summary.get("torch") or "?")
    # summary.json lists the finished runs only (an interrupted run is never counted).
    done = [(a, s) for a, s in zip(summary["accuracies"], summary["train_seconds_all"]) if a is not None]
    if not done:
        return None
    note = "; ".join([f"{warmup} warm-up not counted"] * bool(warmup) + [f"set {c}" for c in ctx["sets"]]
                     + [f"precision {summary.get('precision')}, compile {summary.get('compile')}"])
    runs_table = []
    if (out / "runs.csv").exists():
        with open(out / "runs.csv", newline="") as f:
            # finished runs only: an interrupted run keeps its (partial) accuracy in runs.csv
            runs_table = [r for r in csv.DictReader(f) if r.get("status", "finished") == "finished"
                          and r.get("test_accuracy") not in (None, "", "nan")]
    return summarise(recipe, [a for a, _ in done], [s for _, s in done], info, note, runs, code,
                     our_scopes(runs_table))


def our_scopes(runs_table: list[dict]) -> dict:
    """Per-run seconds of our runs under each scope, from runs.csv. Ours time the steps; the whitening
    init and the TTA are timed apart, so airbench's scope is their sum. Hiverge's span adds only the
    gaps between epochs, where our recipes do nothing that the record does not (the per-epoch
    evaluation is no part of either recipe), so it gets the same sum."""
    steps = [float(r["train_seconds"]) for r in runs_table]
    if not runs_table or not {"init_seconds", "tta_seconds"} <= set(runs_table[0]):
        return {"steps_seconds": steps}
    wide = [float(r["train_seconds"]) + float(r["init_seconds"] or 0) + float(r["tta_seconds"] or 0)
            for r in runs_table]
    return {"steps_seconds": steps, "airbench_scope_seconds": wide, "hiverge_scope_seconds": wide}


def peer_scopes(parsed: list[PeerRun]) -> dict:
    """A peer's per-run seconds under each scope. Both peers' timers span whitening init to TTA, so
    that is their airbench and hiverge scope (airbench94_muon leaves its per-epoch evaluation out,
    which the record has none of). Steps alone are not printed: airbench94_muon's last epoch row
    (init + steps, the init a few milliseconds) stands in; cifar10_speedrun prints no epoch rows."""
    own = [r.seconds for r in parsed]
    before = [r.before_tta for r in parsed if r.before_tta is not None]
    return {"steps_seconds": before if len(before) == len(parsed) else [],
            "airbench_scope_seconds": own, "hiverge_scope_seconds": own}


def run_peer(recipe: str, script: Path, runs: int, ctx: dict, timeout: float) -> dict | None:
    """A peer script, changed only in its run count, run in the folder that holds the prepared data."""
    folder, log = ctx["work"] / "peers", ctx["work"] / f"{recipe}.log"
    (folder / f"{recipe}.py").write_text(patch_run_count(script.read_text(), runs, recipe))
    text, code = stream([sys.executable, "-u", f"{recipe}.py"], folder, ctx["env"], log, timeout, recipe)
    parsed = parse_peer_output(text)
    if not parsed:
        print(f"!! {recipe}: no per-run results in its output (exit {code}); log {log}")
        return None
    note = "1 warm-up not counted" + ("" if script.stem == recipe else f"; script {script.name}")
    return summarise(recipe, [r.accuracy for r in parsed], [r.seconds for r in parsed], ctx["info"], note, runs, code,
                     peer_scopes(parsed))


def build_plan(args: argparse.Namespace, ctx: dict) -> list[tuple[str, object]]:
    """(recipe, step) pairs in ORDER; a step takes its time allowance in seconds and returns a row or None."""
    if args.quick:
        steps = {"quick": lambda t: run_ours("quick", 2, 0, ctx, t)}
    else:
        steps = {"record": lambda t: run_ours("record", args.runs, 1, ctx, t),
                 "airbench": lambda t: run_ours("airbench", args.runs, 1, ctx, t),
                 "seed": lambda t: run_ours("seed", args.seed_runs, 1, ctx, t)}
    peer_runs = args.peer_runs or (2 if args.quick else args.runs)
    for name, path in args.peer:
        steps[name] = (lambda n, p: lambda t: run_peer(n, p, peer_runs, ctx, t))(name, path)
    if args.only - steps.keys():
        raise SystemExit(f"--only: {', '.join(sorted(args.only - steps.keys()))} is not in the plan ({', '.join(steps)})")
    steps = {name: step for name, step in steps.items() if not args.only or name in args.only}
    return sorted(steps.items(), key=lambda item: _rank(item[0]))


def _rank(recipe: str) -> int:
    return ORDER.index(recipe) if recipe in ORDER else len(ORDER)


def run_plan(plan: list, end: float) -> tuple[list[dict], list[str]]:
    """Run the steps while the budget lasts, in order of importance: each leaves MIN_STEP_SECONDS for every
    step after it, but never takes less than that itself; a step that cannot get it is skipped."""
    rows, problems = [], []
    for i, (recipe, step) in enumerate(plan):
        left = end - time.monotonic() - TABLE_SECONDS
        if left < MIN_STEP_SECONDS:
            problems.append(f"{recipe}: skipped, {int(max(left, 0))} s of the time budget left (a step needs "
                            f"{MIN_STEP_SECONDS:.0f} s); run it in another call with --only {recipe}")
            continue
        allowance = max(MIN_STEP_SECONDS, left - (len(plan) - i - 1) * MIN_STEP_SECONDS)
        print(f"== {recipe}: up to {allowance:.0f} s", flush=True)
        row = step(allowance)
        rows += [row] if row else []
        problems += [] if row else [f"{recipe}: no result (its log is above)"]
    return rows, problems


def write_csv(rows: list[dict], path: Path) -> list[dict]:
    """Write the rows, keeping an earlier call's rows (same date and GPU) for recipes not measured now."""
    kept = []
    if path.exists():
        with open(path, newline="") as f:
            kept = [row for row in csv.DictReader(f) if row["recipe"] not in {r["recipe"] for r in rows}]
        print(f"kept from an earlier call: {', '.join(row['recipe'] for row in kept) or 'nothing'}")
    table = sorted(kept + rows, key=lambda row: _rank(row["recipe"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(table)
    return table


# The span each peer times (and publishes): a comparison with it puts ours on that span.
PEER_SCOPE = {"cifar10_speedrun": ("hiverge_scope_seconds", "hiverge's span, whitening through TTA, for both"),
              "airbench94_muon": ("airbench_scope_seconds", "airbench's scope, whitening + steps + TTA, for both")}


def comparison(rows: list[dict]) -> list[str]:
    """For each (ours, peer) pair measured: the time ratio under the peer's own span (hiverge's: one span
    from the whitening init through TTA), the accuracy gap, then the ratio under each other scope, steps
    only labelled as such (targets: `airbench` below 1.0 against airbench94_muon; `record` about 0.78
    against it and below 1.0 against cifar10_speedrun)."""
    by_name, lines = {row["recipe"]: row for row in rows}, []
    for name, peer_name in PAIRS:
        ours, peer = by_name.get(name), by_name.get(peer_name)
        if not (ours and peer):
            continue
        gap = 100 * (float(ours["mean_acc"]) - float(peer["mean_acc"]))   # percentage points
        scope, label = PEER_SCOPE.get(peer_name, (None, ""))
        if scope and ours.get(scope) not in (None, "") and peer.get(scope) not in (None, ""):
            lines.append(f"mean seconds {name} / {peer_name} = {float(ours[scope]) / float(peer[scope]):.3f} ({label})")
        else:
            scope = None
            lines.append(f"mean seconds {name} / {peer_name} = {float(ours['mean_seconds']) / float(peer['mean_seconds']):.3f} "
                         "(each recipe's own timer, not one span; see benchmarks/README.md)")
        lines.append(f"mean accuracy {name} - {peer_name} = {gap:+.2f} points (target >= 0)")
        for other in SCOPES:
            if other != scope and ours.get(other) not in (None, "") and peer.get(other) not in (None, ""):
                what = "steps only" if other == "steps_seconds" else other.replace("_seconds", "")
                lines.append(f"  {what}: {float(ours[other]) / float(peer[other]):.3f}")
    if "quick" in by_name:
        lines.append("(quick mode: a plumbing check against whatever --peer was given, not a speed claim)")
    return lines


def format_table(rows: list[dict]) -> str:
    widths = {c: max(len(c), *(len(str(row.get(c, ""))) for row in rows)) for c in COLUMNS}
    lines = [[c.ljust(widths[c]) for c in COLUMNS]]
    lines += [[str(row.get(c, "")).ljust(widths[c]) for c in COLUMNS] for row in rows]
    return "\n".join("  ".join(cells).rstrip() for cells in lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="CIFAR-10 source: a torchvision folder or the JPEG replica's .tar.gz")
    p.add_argument("--runs", type=int, default=25,
                   help="timed runs of `record` and `airbench` (each after 1 warm-up) and of each peer")
    p.add_argument("--seed-runs", type=int, default=3, help="timed runs of `seed` (after 1 warm-up)")
    p.add_argument("--peer", action="append", default=[], metavar="NAME=PATH",
                   help="a peer's script, e.g. airbench94_muon=peers/airbench94_muon.py (repeatable)")
    p.add_argument("--peer-runs", type=int, default=None, help="runs of each peer (default --runs; 2 with --quick)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="folder of the CSV")
    p.add_argument("--quick", action="store_true", help="CPU check: the `quick` profile twice, peers 2 runs")
    p.add_argument("--time-budget", type=float, default=450.0, help="wall seconds for everything (default 7.5 min)")
    p.add_argument("--only", default="", help="comma-separated recipes to run now (others keep their CSV rows)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE",
                   help="change our profiles' config, e.g. --set compile=false (repeatable; named in the row's note)")
    p.add_argument("--work", type=Path, default=None, help="keep logs and run folders here (default: a temp folder)")
    args = p.parse_args(argv)
    if not Path(args.data).exists():
        p.error(f"--data {args.data}: no such file or folder; give a CIFAR-10 folder or the replica's .tar.gz")
    if min(args.runs, args.seed_runs, args.peer_runs or 1) < 1:
        p.error("--runs, --seed-runs and --peer-runs must be at least 1")
    peers = [spec.partition("=")[::2] for spec in args.peer]
    for (name, path), spec in zip(peers, args.peer):
        if not re.fullmatch(r"\w+", name) or name in OURS or not Path(path).is_file():
            p.error(f"--peer {spec!r}: write NAME=PATH with a script that exists (fetch it; never commit it)")
    if len(dict(peers)) < len(peers):
        p.error("--peer: give each NAME once")
    if peers and importlib.util.find_spec("torchvision") is None:
        p.error("--peer: both peer scripts import torchvision, which is not installed here")
    args.peer = [(name, Path(path).resolve()) for name, path in peers]
    args.only = {name.strip() for name in args.only.split(",") if name.strip()}
    sys.path.insert(0, str(REPO))   # this checkout's hlb_utils, as the children get it
    from hlb_utils.cli import parse_changes
    from hlb_utils.config import TrainConfig, get_profile

    try:   # the children parse --set the same way; checking here fails before any data is decoded
        changes = parse_changes(args.sets)
        unknown = set(changes) - set(TrainConfig.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{', '.join(sorted(unknown))} is not a TrainConfig field")
        for profile in OURS:
            get_profile(profile, **changes)
    except ValueError as err:
        p.error(f"--set: {err} (write FIELD=VALUE with a TrainConfig field, e.g. compile=false)")
    return args


def machine_info(source: str, quick: bool) -> dict:
    import torch

    from hlb_utils.data import data_label   # this checkout's (parse_args put it on the path)

    gpu = "cpu" if quick or not torch.cuda.is_available() else torch.cuda.get_device_name(0)
    return {"gpu": gpu, "torch": torch.__version__, "data": data_label(source),
            "date": datetime.date.today().isoformat()}


def child_env(quick: bool) -> dict:
    """Children import hlb_utils from this checkout, print unbuffered (a cut-short peer keeps its finished
    runs' lines), and in quick mode see no GPU."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    if quick:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    end = time.monotonic() + args.time_budget
    source = str(Path(args.data).resolve())
    work = args.work.resolve() if args.work else Path(tempfile.mkdtemp(prefix="hlb-bench-"))
    (work / "peers").mkdir(parents=True, exist_ok=True)
    ctx = {"work": work, "source": source, "env": child_env(args.quick), "info": machine_info(source, args.quick),
           "sets": args.sets}
    plan = build_plan(args, ctx)
    print(f"== plan: {', '.join(name for name, _ in plan)} on {ctx['info']['gpu']}, {ctx['info']['data']}, "
          f"budget {args.time_budget:.0f} s, work folder {work}", flush=True)
    try:
        from hlb_utils.data import load_cifar10   # this checkout's (parse_args put it on the path)

        # Decoded once here (and cached), so our runs load the cache and the peers get the same pixels.
        data = load_cifar10(source)
        if any(name not in OURS for name, _ in plan):
            write_peer_cache(data, work / "peers" / "cifar10")
        del data
        rows, problems = run_plan(plan, end)
    finally:
        # The peer cache is derived data (~180 MB); the logs stay when --work was given.
        shutil.rmtree(work / "peers" / "cifar10", ignore_errors=True)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    if not rows:
        print("\n".join(problems + ["nothing was measured; no CSV written"]))
        return 1
    path = args.out.resolve() / f"{ctx['info']['date']}-{slugify(ctx['info']['gpu'])}.csv"
    table = write_csv(rows, path)
    print("\n".join(problems + comparison(table) + [f"wrote {path}", ""]))
    print(format_table(table))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
