"""Notebook plumbing: the Colab badge, the set-up cell, `show_source`, and headless execution.

Every notebook (00 to 07) starts with the badge from `colab_badge` and the set-up cell `SETUP_CELL`,
which installs this package from the repository when it is missing (Colab) and then calls `setup()`.
`run_notebook` executes a notebook with no Jupyter server, for README's first command:

    python -m hlb_utils notebook run notebooks/06_record_run.ipynb --out runs/record [--profile NAME] [--data SOURCE]
"""
from __future__ import annotations

import argparse
import inspect
import os
import shutil
import sys
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any

import hlb_utils

from .progress import HeadlessEcho, in_jupyter, jupyter_shell

# The repository, written in one place: the badges, the set-up cell and the docs derive from it.
REPO = "hlb-notebooks/hlb-notebooks"
REPO_URL = f"https://github.com/{REPO}"
# The ref that Colab opens and installs from: the main branch, which every clone has (CI's clean
# checkout included), so badge and install always find it. README names the same ref, and
# tests/test_notebooks.py checks that it resolves here and that badges, set-up cells and README agree.
REF = "main"
COLAB_BADGE_SVG = "https://colab.research.google.com/assets/colab-badge.svg"

# The first code cell of every notebook, identical everywhere (the one repetition the series allows;
# tests/test_notebooks.py checks that each notebook carries exactly this text).
SETUP_CELL = f"""\
# Set-up: use hlb_utils if it is installed, otherwise (e.g. in Colab) install it from the repository.
try:
    import hlb_utils
except ImportError:
    import importlib, subprocess, sys
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                          "git+{REPO_URL}@{REF}"])
    if pip.returncode != 0:
        raise RuntimeError("hlb_utils could not be installed (pip's message is above): check this "
                           "runtime's internet access, or install it from a copy of the repository "
                           "(pip install PATH_TO_THE_COPY).") from None
    importlib.invalidate_caches()
import hlb_utils as hu
env = hu.notebook.setup()"""

GPU_HINT = ("No GPU found: running on the CPU. For a GPU choose Runtime > Change runtime type > "
            "a GPU (e.g. T4), then run all cells again.")


def in_colab() -> bool:
    """True in a Google Colab runtime: its `google.colab` package is loaded, or its COLAB_ variables are set.

    Only there does GPU_HINT's menu exist; elsewhere a CPU run is the learner's choice, not a mistake.
    """
    return "google.colab" in sys.modules or any(name.startswith("COLAB_") for name in os.environ)


def colab_url(notebook_name: str) -> str:
    """The address that opens `notebooks/<notebook_name>` of this repository in Colab."""
    name = Path(notebook_name).name
    return f"https://colab.research.google.com/github/{REPO}/blob/{REF}/notebooks/{name}"


def colab_badge(notebook_name: str) -> str:
    """Markdown for the "Open in Colab" badge of one notebook (the first line of its first cell)."""
    return f"[![Open In Colab]({COLAB_BADGE_SVG})]({colab_url(notebook_name)})"


def _machine_lines(profile: str) -> dict:
    """What a run of this profile will use here: device, precision and compile mode."""
    from hlb_utils import compiling, config, device

    cfg = config.get_profile(profile)
    found = device.pick_device(cfg.device)
    _, compile_note = compiling.compile_choice(cfg.compile, found, cfg.compile_mode)
    return {"device": device.describe(found),
            "precision": device.dtype_name(device.pick_dtype(found, cfg.dtype, cfg.weights)),
            "compile": compile_note.replace("compiled (", "compile (")}


def setup(profile: str | None = None) -> dict:
    """Say where this notebook runs and how: profile, device (with a GPU's compute capability),
    precision, compile mode, torch and data source; returns them as a dict.

    The profile follows `profile`, else `HLB_PROFILE`, else 'auto' (record on CUDA, cpu elsewhere);
    the data follows `HLB_DATA`. In Jupyter it also switches on inline figures, so that a cell
    ending in a Figure shows it; otherwise it only reports.
    """
    import torch

    from hlb_utils import config

    name = config.resolve_profile(profile)
    info = {
        "profile": name,
        **_machine_lines(name),
        "torch": torch.__version__,
        "hlb_utils": hlb_utils.__version__,
        "data": os.environ.get("HLB_DATA") or "(default: see hu.data.load_cifar10)",
        "cpu_threads": torch.get_num_threads(),
    }
    shell = jupyter_shell()
    if shell is not None:
        # hlb_utils.plots returns matplotlib Figures without pyplot; this makes Jupyter draw them.
        shell.run_line_magic("matplotlib", "inline")
    print("  ".join(f"{key}: {value}" for key, value in info.items()))
    if info["device"] == "cpu" and in_colab():
        print(GPU_HINT)
    return info


def show_source(obj: Any) -> None:
    """Show the source of a library function or class: highlighted in Jupyter, plain in a terminal.

    The notebooks use it to show library code instead of re-typing it (one source of truth).
    """
    try:
        source = inspect.getsource(obj)
    except (TypeError, OSError) as err:
        raise TypeError(f"show_source needs a function, class or module defined in Python; "
                        f"got {obj!r} ({err})") from None
    if in_jupyter():
        from IPython.display import Markdown, display

        display(Markdown(f"```python\n{source}```"))
    else:
        print(source)


def results_table(entries: dict) -> "pd.DataFrame":
    """The table every notebook ends with: change, accuracy, seconds, device, runs.

    `entries` maps a change's name to a TrainResult, a RunsResult (mean accuracy and seconds), or a
    dict with those keys. Keyed by name, so re-running a cell replaces its row instead of adding one.
    """
    import pandas as pd

    rows = []
    for change, entry in entries.items():
        if isinstance(entry, dict):
            row = dict(entry)
        elif hasattr(entry, "results"):  # RunsResult
            stats = entry.summary.iloc[0]
            row = dict(accuracy=stats["mean"], seconds=stats["mean_seconds"],   # finished runs only
                       device=entry.results[0].device if entry.results else "-", runs=int(stats["runs"]))
        else:  # TrainResult
            row = dict(accuracy=entry.test_accuracy, seconds=entry.train_seconds,
                       device=entry.device, runs=1)
        rows.append({"change": change, **row})
    columns = ["change", "accuracy", "seconds", "device", "runs"]
    return pd.DataFrame(rows, columns=columns).round({"accuracy": 4, "seconds": 2})


QUICK_NOTE = ("quick profile: runs this short stay near chance (10%), so these rows are noise, not "
              "gains; learn with the 'cpu' profile on a CPU or 'record' on a GPU (HLB_PROFILE)")


def quick_note(profile: str) -> None:
    """Print, above a results table, that the `quick` profile's rows are noise (notebooks 04, 05).

    The tests run every notebook in `quick`; a learner who picks it must not read its rows as results.
    """
    if profile == "quick":
        print(QUICK_NOTE)


class NotebookError(RuntimeError):
    """A cell failed during headless execution; the message names the cell and its source."""


class NotebookUsageError(ValueError):
    """The notebook or the output folder is unusable: said in one line before any kernel starts."""


def read_notebook(path: str | Path) -> Any:
    """The notebook at `path`, validated; NotebookUsageError in one line when it is missing, not JSON,
    or not a notebook (instead of nbformat's multi-line schema report)."""
    import nbformat

    path = Path(path)
    if not path.is_file():
        raise NotebookUsageError(f"no notebook at {path}; the series is in notebooks/*.ipynb")
    try:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
    except Exception as err:   # NotJSONError, jsonschema's ValidationError, a conversion's KeyError...
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise NotebookUsageError(f"{path} is not a valid notebook ({first[:200]})") from None
    return nb


def check_out_dir(out_dir: str | Path) -> Path:
    """The folder for the executed notebook, created and known to be writable (before any cell runs)."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as err:
        raise NotebookUsageError(f"--out {out_dir}: cannot write the executed notebook there "
                                 f"({err.strerror or err})") from None
    return out_dir


def notebook_env(out_dir: str | Path, profile: str | None = None, data: str | None = None) -> dict:
    """The environment a headless kernel gets: this process's, plus HLB_RUN_DIR, HLB_PROFILE, HLB_DATA."""
    env = dict(os.environ)
    env["HLB_RUN_DIR"] = str(Path(out_dir).resolve())
    # OpenMP threads that spin while they wait slow training several-fold when another process shares
    # the cores (measured in benchmarks/NOTES.md). A user's own setting wins.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if profile:
        env["HLB_PROFILE"] = profile
    if data:
        env["HLB_DATA"] = str(Path(data).expanduser().resolve()) if Path(data).expanduser().exists() else data
    # The package must import in the kernel even when it is not installed (a plain clone).
    root = str(Path(hlb_utils.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def make_client(nb: Any, cwd: str | Path, timeout: int | None = None, echo: bool = False):
    """A NotebookClient (kernel python3) that runs in `cwd`; with `echo`, printed text and live tables
    go to stdout (`progress.HeadlessEcho`: a table's header once, its rows, a self-rewriting status)."""
    from nbclient import NotebookClient

    shown = HeadlessEcho() if echo else None

    class _Client(NotebookClient):
        echo = shown

        def process_message(self, msg, cell, cell_index):
            if shown is not None and msg.get("msg_type") == "stream":
                shown.text(msg["content"]["text"])
            elif shown is not None and msg.get("msg_type") in ("display_data", "update_display_data"):
                shown.display(msg["content"])
            return super().process_message(msg, cell, cell_index)

    client = _Client(nb, timeout=timeout, kernel_name="python3", config=_kernel_config(),
                     resources={"metadata": {"path": str(cwd)}})
    if client.config.KernelManager.get("ip"):
        weakref.finalize(client, shutil.rmtree, Path(client.config.KernelManager.ip).parent, True)
    return client


def _kernel_config():
    """Where the POSIX sockets allow it, talk to the kernel through a private folder's sockets (ipc):
    over local TCP the kernel warns at every start that its traffic is unencrypted."""
    from traitlets.config import Config

    config = Config()
    if os.name == "posix":
        config.KernelManager.transport = "ipc"
        config.KernelManager.ip = str(Path(tempfile.mkdtemp(prefix="hlb-kernel-")) / "kernel")
    return config


def _first_line(source: str) -> str:
    lines = [ln for ln in source.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    text = lines[0].strip() if lines else ""
    return text if len(text) <= 60 else text[:57] + "..."


def _fail(cell: Any, where: str, out_path: Path) -> NotebookError:
    errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    what = f"{errors[0]['ename']}: {errors[0]['evalue']}" if errors else "the kernel stopped"
    return NotebookError(f"code cell {where} failed with {what}\n--- source ---\n{cell.source}\n"
                         f"--- the partly executed notebook is at {out_path}")


def run_notebook(path: str | Path, out_dir: str | Path, profile: str | None = None,
                 timeout: int | None = 3600, echo: bool = True, data: str | None = None) -> Path:
    """Execute a notebook headless and write it, with outputs and figures, into `out_dir`.

    The kernel gets HLB_RUN_DIR=out_dir (the record notebook writes summary.json there) and, when
    given, HLB_PROFILE=profile and HLB_DATA=data (else the ones of this process). Prints a line per
    code cell with its time. `timeout` is per cell, in seconds (None: no limit). Raises
    NotebookError naming the failing cell's source and error, and NotebookUsageError (before any cell
    runs) when `out_dir` is not writable or `path` is not a valid notebook.
    """
    import nbformat

    path, out_dir = Path(path), check_out_dir(out_dir)
    out_path = out_dir / path.name
    nb = read_notebook(path)
    client = make_client(nb, cwd=path.parent.resolve(), timeout=timeout, echo=echo)
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    start = time.perf_counter()
    # through the echo, so that a status line left on a terminal is cleared first
    say = client.echo.text if client.echo else lambda text: print(text, end="", flush=True)
    with client.setup_kernel(env=notebook_env(out_dir, profile, data)):
        for n, index in enumerate(code, 1):
            cell = nb.cells[index]
            say(f"[cell {n}/{len(code)}] {_first_line(cell.source)}\n")
            tic = time.perf_counter()
            try:
                client.execute_cell(cell, index)
            except Exception as err:
                nbformat.write(nb, out_path)
                raise _fail(cell, f"{n}/{len(code)}", out_path) from err
            say(f"[cell {n}/{len(code)}] {time.perf_counter() - tic:.1f} s\n")
    nbformat.write(nb, out_path)
    print(f"done in {time.perf_counter() - start:.1f} s: {out_path}", flush=True)
    return out_path


def main(argv: list[str] | None = None) -> int:
    """`python -m hlb_utils notebook run NOTEBOOK --out DIR [--profile NAME] [--data SOURCE] [--timeout S]`
    (`notebook docs ...` is dispatched to `hlb_utils.docs` by `__main__`, since docs runs notebooks)."""
    parser = argparse.ArgumentParser(prog="python -m hlb_utils notebook",
                                     description="Run a notebook of the series headless.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute a notebook and save it with its outputs")
    run.add_argument("notebook", help="e.g. notebooks/06_record_run.ipynb")
    run.add_argument("--out", default="runs/record", help="folder for the executed notebook and run records")
    run.add_argument("--profile", default=None, help="record, airbench, seed, cpu, quick (default: HLB_PROFILE or auto)")
    run.add_argument("--data", default=None, help="CIFAR-10 source (default: HLB_DATA, else a download)")
    run.add_argument("--timeout", type=int, default=3600, help="seconds allowed per cell")
    args = parser.parse_args(argv)
    from hlb_utils import config

    try:   # what can be checked before a kernel starts: the folder first, then the notebook, the profile
        check_out_dir(args.out)
        read_notebook(args.notebook)
        if args.profile:
            config.resolve_profile(args.profile)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        run_notebook(args.notebook, args.out, profile=args.profile, timeout=args.timeout, data=args.data)
    except (NotebookError, FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
