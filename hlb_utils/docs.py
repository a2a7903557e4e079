"""Executed copies of the notebooks and README's figures, made by one command from one run.

The notebooks are stored without outputs (for editing and Colab), so a reader on GitHub sees no figure
and no number. `python -m hlb_utils notebook docs [NN ...] [--out docs/notebooks]` runs each notebook
top to bottom with the headless runner (`notebook.run_notebook`), stamps the executed copy (metadata
`hlb_docs` and a first markdown line the reader sees) and writes it as `docs/notebooks/NN_name.ipynb`,
or under `gpu/` when the run used a CUDA GPU. The same run writes README's figures: every code cell
tagged `figure:NAME` gives its last PNG output as `docs/figures/NAME.png`, so figures and copies
always come from the same run. `tests/test_docs.py` keeps each copy's code equal to its notebook's.
"""
from __future__ import annotations

import argparse
import base64
import datetime
import functools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import hlb_utils

ROOT = Path(hlb_utils.__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
DOCS_OUT = Path("docs") / "notebooks"
FIGURE_TAG = "figure:"        # a cell tagged 'figure:augmentations' gives docs/figures/augmentations.png
STAMP_KEY = "hlb_docs"        # the copy's metadata entry, and the stamp cell's marker
DOCS_LIMIT_BYTES = 15 * 2**20  # the whole docs/ folder stays under this
# What the stamp calls each data source (`data.data_label`), in words a reader can use.
READER_DATA = {"JPEG copy of CIFAR-10": "a JPEG copy of CIFAR-10", "CIFAR-10": "CIFAR-10",
               "synthetic": "synthetic images"}


def pick_notebooks(numbers: list[str] | None = None, folder: Path = NOTEBOOKS) -> list[Path]:
    """The series' notebooks (NN_name.ipynb), all of them or those numbered in `numbers`."""
    found = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if not numbers:
        return found
    wanted = [Path(n).name.zfill(2)[:2] for n in numbers]   # '1', '01' or '01_data_pipeline.ipynb'
    picked = [p for p in found if p.name[:2] in wanted]
    missing = sorted(set(wanted) - {p.name[:2] for p in picked})
    if missing:
        raise FileNotFoundError(f"no notebook numbered {', '.join(missing)} in {folder}")
    return picked


@functools.lru_cache(maxsize=None)
def code_version(root: Path = ROOT) -> str:
    """`git describe --always --dirty` of the checkout, or 'unknown' outside a git checkout.

    Read once per process, before the first copy is written: rewriting committed copies would
    otherwise mark every later copy of the same run 'dirty'."""
    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=root,
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "unknown"


def run_facts(profile: str | None, data: str | None) -> dict:
    """What a copy is stamped with before its run: profile, device, data, date, code and torch."""
    import torch

    from hlb_utils import config
    from hlb_utils.data import data_label
    from hlb_utils.notebook import _machine_lines

    name = config.resolve_profile(profile)
    source = data or os.environ.get("HLB_DATA")
    label = data_label(source) if source else "CIFAR-10"
    device = _machine_lines(name)["device"]   # 'cpu', or 'cuda (NAME, capability X.Y)'
    if device == "cpu":
        device = f"a CPU ({os.cpu_count()} cores)"
    return {"profile": name, "device": device,
            "data": READER_DATA.get(label, label),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
            "code": code_version(), "torch": torch.__version__}


def stamp_line(facts: dict) -> str:
    """The one line a reader sees first in an executed copy."""
    minutes = facts["seconds"] / 60
    took = f"{minutes:.0f} minutes" if minutes >= 1.5 else f"{facts['seconds']:.0f} seconds"
    return (f"*Executed on {facts['date']} on {facts['device']} with the {facts['profile']} profile on "
            f"{facts['data']} (code {facts['code']}, torch {facts['torch']}); {took}.*")


def stamp(nb: Any, facts: dict) -> Any:
    """Put `facts` into the notebook's metadata and its line into a first markdown cell (replacing an
    earlier stamp), so that the copy says where its outputs come from."""
    import nbformat

    nb.metadata[STAMP_KEY] = dict(facts)
    nb.cells = [c for c in nb.cells if not c.get("metadata", {}).get(STAMP_KEY)]
    nb.cells.insert(0, nbformat.v4.new_markdown_cell(stamp_line(facts), metadata={STAMP_KEY: True}))
    return nb


def figure_name(cell: Any) -> str | None:
    """NAME of a cell tagged 'figure:NAME', else None."""
    for tag in cell.get("metadata", {}).get("tags", []):
        if tag.startswith(FIGURE_TAG) and tag[len(FIGURE_TAG):]:
            return tag[len(FIGURE_TAG):]
    return None


def extract_figures(nb: Any, folder: str | Path) -> list[Path]:
    """Write the last PNG output of every cell tagged 'figure:NAME' as folder/NAME.png.

    A tagged cell that drew nothing is an error: README would otherwise link a missing or stale image.
    """
    folder = Path(folder)
    written = []
    for cell in nb.cells:
        name = figure_name(cell)
        if name is None:
            continue
        images = [o["data"]["image/png"] for o in cell.get("outputs", [])
                  if "image/png" in o.get("data", {})]
        if not images:
            raise ValueError(f"the cell tagged {FIGURE_TAG}{name} drew no PNG figure")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.png"
        path.write_bytes(base64.b64decode(images[-1]))
        written.append(path)
    return written


def errors_in(nb: Any) -> list[str]:
    """The error outputs of an executed notebook, as 'ename: evalue' (a copy must have none)."""
    return [f"{o['ename']}: {o['evalue']}" for c in nb.cells for o in c.get("outputs", [])
            if o.get("output_type") == "error"]


def code_sources(nb: Any) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "code"]


def copy_problems(copy: Path, folder: Path = NOTEBOOKS) -> list[str]:
    """What makes an executed copy stale or unfit to show: code that differs from its notebook's (the
    notebook changed since the run), a missing stamp, or error output. Empty when the copy is good."""
    import nbformat

    source = folder / copy.name
    if not source.is_file():
        return [f"{copy.name}: no notebook of that name in {folder}"]
    nb, ref = nbformat.read(copy, as_version=4), nbformat.read(source, as_version=4)
    problems = []
    mine, theirs = code_sources(nb), code_sources(ref)
    if mine != theirs:
        changed = [i + 1 for i, (a, b) in enumerate(zip(mine, theirs)) if a != b]
        problems.append(f"{copy.name}: code differs from {source.name} ({len(mine)} against {len(theirs)} "
                        f"code cells; first differing: {changed[:3] or 'the count'}); regenerate it with "
                        f"`python -m hlb_utils notebook docs {copy.name[:2]}`")
    if STAMP_KEY not in nb.metadata or not nb.cells[0].get("metadata", {}).get(STAMP_KEY):
        problems.append(f"{copy.name}: no {STAMP_KEY} stamp in its metadata and first cell")
    problems += [f"{copy.name}: error output {e}" for e in errors_in(nb)]
    return problems


def local_paths(data: str | None) -> dict[str, str]:
    """This machine's paths that printed outputs may hold, each with what a published copy shows
    instead: the data source by its file name, the checkout as '.', the home folder as '~'."""
    names = {}
    source = data or os.environ.get("HLB_DATA")
    if source and Path(source).expanduser().exists():
        found = Path(source).expanduser()
        names[str(found.resolve())] = names[str(found)] = found.name
    names[str(ROOT)] = "."
    names[str(Path.home())] = "~"
    return names


def scrub_paths(nb: Any, names: dict[str, str]) -> Any:
    """Replace this machine's paths in the text outputs (longest first), so the copy names none."""
    order = sorted(names, key=len, reverse=True)

    def clean(text: Any) -> Any:
        if isinstance(text, list):
            return [clean(t) for t in text]
        if isinstance(text, str):
            for path in order:
                text = text.replace(path, names[path])
        return text

    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if "text" in output:
                output["text"] = clean(output["text"])
            for kind in ("text/plain", "text/html", "text/markdown"):
                if kind in output.get("data", {}):
                    output["data"][kind] = clean(output["data"][kind])
    return nb


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def make_copy(path: Path, out: Path, figures: Path, profile: str | None = None,
              data: str | None = None, timeout: int | None = 3600, echo: bool = True) -> Path:
    """Execute one notebook, stamp it, write it as out/NAME and its tagged figures into `figures`.

    The run's own records (HLB_RUN_DIR) go to a temporary folder, not into the docs.
    """
    import nbformat

    from hlb_utils.notebook import run_notebook

    facts = run_facts(profile, data)
    with tempfile.TemporaryDirectory(prefix="hlb-docs-") as work:
        start = time.perf_counter()
        executed = run_notebook(path, work, profile=facts["profile"], timeout=timeout, echo=echo,
                                data=data)
        facts["seconds"] = round(time.perf_counter() - start, 1)
        nb = nbformat.read(executed, as_version=4)
    failed = errors_in(nb)
    if failed:
        raise RuntimeError(f"{path.name} ran with error output: {failed[0]}")
    stamp(scrub_paths(nb, local_paths(data)), facts)
    extract_figures(nb, figures)
    out.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out / path.name)
    return out / path.name


def make_docs(numbers: list[str] | None = None, out: str | Path = DOCS_OUT, profile: str | None = None,
              data: str | None = None, timeout: int | None = 3600, folder: Path = NOTEBOOKS) -> list[Path]:
    """Executed copies of the named notebooks (default: all) and their figures.

    `out` is the CPU copies' folder (docs/notebooks); a CUDA run writes into out/gpu and its figures
    into figures/gpu beside them, so GPU and CPU copies coexist. Figures go to out/../figures.
    """
    out = Path(out)
    gpu = run_facts(profile, data)["device"].startswith("cuda")  # a bad profile name fails here, first
    copies_dir = out / "gpu" if gpu else out
    figures_dir = out.parent / "figures" / ("gpu" if gpu else "")
    written = [make_copy(p, copies_dir, figures_dir, profile, data, timeout)
               for p in pick_notebooks(numbers, folder)]
    size = folder_bytes(out.parent)
    if size > DOCS_LIMIT_BYTES:
        print(f"warning: {out.parent} holds {size / 2**20:.1f} MB, over the {DOCS_LIMIT_BYTES / 2**20:.0f} MB "
              f"it should stay under: draw smaller figures")
    for path in written:
        print(f"wrote {path}")
    return written


def main(argv: list[str] | None = None) -> int:
    """`python -m hlb_utils notebook docs [NN ...] [--out docs/notebooks] [--profile NAME] [--data SOURCE]`."""
    parser = argparse.ArgumentParser(prog="python -m hlb_utils notebook docs",
                                     description="Executed copies of the notebooks and README's figures.")
    parser.add_argument("numbers", nargs="*", help="notebook numbers, e.g. 01 06 (default: all)")
    parser.add_argument("--out", default=str(DOCS_OUT),
                        help="folder for the executed copies; figures go to its parent's figures/")
    parser.add_argument("--profile", default=None, help="default: HLB_PROFILE or auto")
    parser.add_argument("--data", default=None, help="CIFAR-10 source (default: HLB_DATA, else a download)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds allowed per cell")
    args = parser.parse_args(argv)
    try:
        make_docs(args.numbers, args.out, profile=args.profile, data=args.data, timeout=args.timeout)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
