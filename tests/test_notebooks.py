"""The notebook series (issue 4): stored clean, opened the same way, executed headless.

Static checks (no data): the stored notebooks carry no outputs, each opens with its Colab badge and
then the set-up cell. That set-up cell is the one piece of text the series repeats on purpose: it
must run before hlb_utils is importable, so it cannot live in the library; these tests keep every
copy identical to `hlb_utils.notebook.SETUP_CELL`.

Execution checks (the replica, quick profile): every notebook runs top to bottom with no error
output and draws its figures; the record notebook writes a summary.json above chance; re-running a
middle cell and everything after it reproduces the results of the first pass; and in every notebook,
after a change in the config cell and a re-run of it and every cell after it, every table and figure
shows the new config's runs (no stale rows, no leaked rows).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable, NamedTuple

import nbformat
import pytest
from nbclient.exceptions import CellExecutionError

from hlb_utils import notebook as hn
from hlb_utils.data import data_label
from hlb_utils.sizes import notebook_size

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
SERIES = ["00_quickstart", "01_data_pipeline", "02_baseline", "03_se_resnet",
          "04_training_recipe", "05_speed_tricks", "06_record_run"]
# The fewest figures (image/png outputs) each notebook draws in the quick profile.
MIN_FIGURES = {"00": 2, "01": 5, "02": 2, "03": 3, "04": 4, "05": 3, "06": 5, "07": 2}
RERUN_NOTEBOOK = "01_data_pipeline.ipynb"
CELL_TIMEOUT = 600  # seconds allowed per cell


def _read(path: Path):
    return nbformat.read(path, as_version=4)


def _code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def test_the_series_is_complete_and_numbered_once():
    stems = [p.stem for p in PATHS]
    assert stems[: len(SERIES)] == SERIES
    numbers = [s[:2] for s in stems]
    assert len(numbers) == len(set(numbers)), f"two notebooks share a number: {stems}"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_stored_without_outputs(path):
    for cell in _code_cells(_read(path)):
        assert cell.outputs == [], f"{path.name}: a cell was stored with outputs:\n{cell.source[:200]}"
        assert cell.execution_count is None, f"{path.name}: a cell was stored with an execution count"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_badge_then_setup_cell(path):
    nb = _read(path)
    first, second = nb.cells[0], nb.cells[1]
    assert first.cell_type == "markdown" and first.source.startswith(hn.colab_badge(path.name))
    assert hn.REPO_URL.split("github.com/")[1] in hn.colab_url(path.name)
    assert second.cell_type == "code" and second.source == hn.SETUP_CELL, (
        f"{path.name}: the second cell must be hlb_utils.notebook.SETUP_CELL, unchanged")
    assert sum(c.source == hn.SETUP_CELL for c in nb.cells) == 1


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_house_style(path):
    nb = _read(path)
    assert 15 <= len(nb.cells) <= 40, f"{path.name} has {len(nb.cells)} cells; keep 15 to 40"
    text = "\n".join(c.source for c in nb.cells)
    assert "## Summary" in text and "## Try this" in text
    assert "import *" not in text
    # One results table, in a Results section before the Summary, after which no code runs.
    heads = [i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and c.source.startswith("## Results")]
    assert len(heads) == 1, f"{path.name} has {len(heads)} Results sections"
    summary = next(i for i, c in enumerate(nb.cells) if "## Summary" in c.source)
    table = next(c for c in nb.cells[heads[0]:] if c.cell_type == "code")
    assert "results_table" in table.source and heads[0] < summary
    assert not [c for c in nb.cells[summary:] if c.cell_type == "code"], f"{path.name}: code after the Summary"


# A size table by profile in a code cell: a 'quick' key or entry, or a lookup by the profile's name.
PROFILE_TABLE = re.compile(r"""["']quick["']\s*:|\bquick\s*=|\[(?:cfg\.)?profile\]""")


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_sizes_live_in_the_config_not_in_config_cells(path):
    # hu.sizes.notebook_size holds each notebook's sizes, so a config cell lists its chapter's knobs.
    for cell in _code_cells(_read(path)):
        assert not PROFILE_TABLE.search(cell.source), f"{path.name}: a per-profile table in\n{cell.source}"


def test_published_records_are_one_table_in_06_linked_from_00():
    text = {p.stem: "\n".join(c.source for c in _read(p).cells) for p in PATHS}
    # airbench94's published 3.83 s is a row of the records table, and of no other notebook's
    assert [stem for stem, t in text.items() if "3.83" in t] == ["06_record_run"]
    assert "(06_record_run.ipynb)" in text["00_quickstart"]


def test_prose_quotes_the_config_it_describes():
    # Figures that the prose of 03 and 04 states about the seed recipe, read from the config.
    from hlb_utils.config import get_profile

    seed = get_profile("seed")
    text = {stem: "\n".join(c.source for c in _read(NOTEBOOKS / f"{stem}.ipynb").cells)
            for stem in ("03_se_resnet", "04_training_recipe")}
    assert "widths " + "-".join(map(str, seed.widths)) in text["03_se_resnet"]
    assert f"`recipe.peak` of the run ({seed.peak:g}, a fifth" in text["04_training_recipe"]
    assert seed.peak == 0.2 and f"label smoothing {seed.label_smoothing:g}" in text["03_se_resnet"]


ROOT = NOTEBOOKS.parent
BADGE_LINK = re.compile(r"colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)/blob/([^/\s)]+)/notebooks/")
INSTALL = re.compile(r"git\+https://github\.com/([\w.-]+/[\w.-]+)@([^\s\"'`]+)")


def test_colab_ref_resolves_in_this_checkout():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout (an installed copy): no refs to resolve")
    candidates = [hn.REF, f"origin/{hn.REF}"]   # a checkout may hold main only as a remote branch
    resolved = [subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
                               capture_output=True).returncode == 0 for ref in candidates]
    assert any(resolved), f"neither of {candidates} resolves here: badges and installs would open nothing"


def test_badges_setup_cells_and_readme_name_one_ref():
    # Read from the files themselves (not the constants), so that any copy that drifts is caught.
    found = []
    for path in PATHS:
        nb = _read(path)
        found += [("badge", path.name, m) for m in BADGE_LINK.findall(nb.cells[0].source)]
        found += [("set-up cell", path.name, m) for m in INSTALL.findall(nb.cells[1].source)]
    readme = (ROOT / "README.md").read_text()
    found += [("README", "link", m) for m in BADGE_LINK.findall(readme)]
    found += [("README", "install", m) for m in INSTALL.findall(readme)]
    assert sum(where == "README" for where, _, _ in found) >= 1, "README names no install ref"
    assert len([f for f in found if f[0] != "README"]) == 2 * len(PATHS)
    wrong = [f for f in found if f[2] != (hn.REPO, hn.REF)]
    assert not wrong, f"these name another repository or ref than {hn.REPO}@{hn.REF}: {wrong}"


def _fake_packages(root: Path, pip_ok: bool) -> None:
    """An hlb_utils that is not installed until a fake pip (which fails, or 'installs' it) has run."""
    marker = root / "installed"
    (root / "hlb_utils").mkdir(parents=True)
    (root / "hlb_utils" / "__init__.py").write_text(
        f"import os\nif not os.path.exists({str(marker)!r}):\n    raise ImportError('not installed')\n"
        "from . import notebook\n")
    (root / "hlb_utils" / "notebook.py").write_text("def setup():\n    print('set up done')\n")
    (root / "pip").mkdir()
    (root / "pip" / "__init__.py").write_text("")
    body = (f"open({str(marker)!r}, 'w').close()" if pip_ok
            else "print('ERROR: Could not reach github.com (simulated)', file=sys.stderr); sys.exit(1)")
    (root / "pip" / "__main__.py").write_text(f"import sys\nprint('pip', *sys.argv[1:])\n{body}\n")


@pytest.mark.parametrize("pip_ok", [True, False], ids=["installs", "pip-fails"])
def test_setup_cell_installs_or_says_what_to_do(tmp_path, pip_ok):
    _fake_packages(tmp_path / "site", pip_ok)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    done = subprocess.run([sys.executable, "-c", hn.SETUP_CELL], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert f"git+{hn.REPO_URL}@{hn.REF}" in done.stdout   # what pip was asked to install
    if pip_ok:
        assert done.returncode == 0 and "set up done" in done.stdout, done.stderr
        return
    assert done.returncode != 0 and "Could not reach github.com (simulated)" in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "RuntimeError: hlb_utils could not be installed (pip's message is above): check this runtime's "
        "internet access, or install it from a copy of the repository (pip install PATH_TO_THE_COPY).")
    assert "CalledProcessError" not in done.stderr and "ImportError" not in done.stderr


def test_run_notebook_writes_output_and_names_the_failing_cell(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import os\nprint(os.environ['HLB_RUN_DIR'])"),
        nbformat.v4.new_code_cell("x = 1\nraise ValueError('broken on purpose')"),
    ])
    path = tmp_path / "broken.ipynb"
    nbformat.write(nb, path)
    out = tmp_path / "out"
    with pytest.raises(hn.NotebookError, match="ValueError: broken on purpose") as err:
        hn.run_notebook(path, out, timeout=60, echo=False)
    assert "raise ValueError('broken on purpose')" in str(err.value)
    executed = _read(out / "broken.ipynb")
    assert executed.cells[0].outputs[0]["text"].strip() == str(out.resolve())


def test_command_line_explains_a_missing_notebook(tmp_path, capsys):
    assert hn.main(["run", str(tmp_path / "nope.ipynb"), "--out", str(tmp_path)]) == 2
    assert "no notebook at" in capsys.readouterr().err


# ---- execution in the quick profile -------------------------------------------------------------

def _texts(cell) -> list[str]:
    """The text a reader sees in a cell's outputs (stream text, text/plain and HTML tables).

    One print can reach the notebook in several stream messages, split wherever the kernel flushed;
    Jupyter shows consecutive pieces of a stream as one block, and so are they joined here.
    """
    out, last_stream = [], None
    for o in cell.get("outputs", []):
        if o.get("output_type") == "stream":
            if last_stream == o["name"]:
                out[-1] += o["text"]
            else:
                out.append(o["text"])
            last_stream = o["name"]
            continue
        last_stream = None
        for kind in ("text/html", "text/plain"):
            if kind in o.get("data", {}):
                out.append(o["data"][kind])
    return out


def test_a_print_split_into_several_stream_messages_reads_as_one():
    # The kernel flushes where it likes: "a: " and "[1]\n" may come as two messages (issue 26's CI run).
    piece = lambda text, name="stdout": {"output_type": "stream", "name": name, "text": text}
    table = {"output_type": "display_data", "data": {"text/plain": "table"}}
    cell = {"outputs": [piece("a: "), piece("[1]\n"), table, piece("b\n"), piece("warn\n", "stderr"), piece("c\n")]}
    assert _texts(cell) == ["a: [1]\n", "table", "b\n", "warn\n", "c\n"]


def _shown(cell) -> list[str]:
    """Everything a reader sees in a cell's outputs: its texts and its figures (PNG data)."""
    return _texts(cell) + [o["data"]["image/png"] for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]


def _set_lines(source: str, changes: dict[str, str]) -> str:
    """The cell's source with each statement `NAME = ...` (its indented continuation lines too) replaced
    by `NAME = value`."""
    for name, value in changes.items():
        source, n = re.subn(rf"^{name} = .*(?:\n[ \t]+.*)*$", f"{name} = {value}", source, flags=re.M)
        assert n == 1, f"no single line `{name} = ...` in the config cell"
    return source


def _probe(client, nb, source: str) -> dict:
    """Run `source` (which prints one JSON line) in the notebook's kernel; return what it printed."""
    cell = nbformat.v4.new_code_cell(source)
    nb.cells.append(cell)
    client.execute_cell(cell, len(nb.cells) - 1)
    nb.cells.pop()
    return json.loads("".join(_texts(cell)))


PLAYGROUND_STATE = """import json
ax = sweep_figure.axes[0]
print(json.dumps(dict(title=ax.get_title(), labels=[t.get_text() for t in ax.texts],
                      seconds=[float(s) for s in ax.lines[0].get_xdata()],
                      swept=[float(x) for x in hu.compare.sweep_table(sweep, TARGET)["seconds"]])))"""


def _after(source: str, name: str, line: str) -> str:
    """The cell's source with `line` inserted after the statement `NAME = ...` (and its continuation lines)."""
    source, n = re.subn(rf"^({name} = .*(?:\n[ \t]+.*)*)$", rf"\1\n{line}", source, flags=re.M)
    assert n == 1, f"no single statement `{name} = ...` in the config cell"
    return source


class Change(NamedTuple):
    """A learner's edit of a notebook's config cell, and how to tell that every later cell followed it.

    `edit` rewrites the config cell's source; `changed` are markers of the cells whose tables or
    figures must differ after the re-run; `probe` prints one JSON line of state, which `check` tests.
    """
    edit: Callable[[str], str]
    changed: tuple[str, ...]
    probe: str
    check: Callable[[dict], None]


def _json(expr: str) -> str:
    return f"import json\nprint(json.dumps({expr}))"


def _check_00(s):
    assert s["trained"] == 1 and s["last_epoch"] == 1


def _check_01(s):
    assert s["grid"] == 4 and s["batch"] == [100, 100] and s["flip_columns"] == 4


def _check_02(s):
    assert s["baseline_epochs"] == 1 and s["ours"] == 1 and s["rows"] == ["conventional baseline",
                                                                          "our recipe, same images and epochs"]
    # both recipes trained the same seeds, and the comparison pairs them all
    seeds = notebook_size("baseline_seeds", "quick")
    assert s["seeds"] == [list(range(seeds))] * 2 and s["paired"] == [seeds, seeds]


def _check_03(s):
    assert s["rows"] == 1 and s["trained"] == [4, 8, 16, 32] and s["costed"] == s["params"]


def _check_04(s):
    # three steps, EMA first: each step stays one row, named by its step, trained over the same seeds,
    # and compared with the step before it, then the last with the first
    assert s["rows"] == ["+ EMA", "+ test-time augmentation", "+ label smoothing"]
    assert s["runs"] == [notebook_size("recipe_seeds", "quick")] * 3 and s["last"] == 0.2
    assert s["compared"] == ["+ test-time augmentation", "+ label smoothing", "all 2 pieces together"]
    assert s["against"] == ["+ EMA", "+ test-time augmentation", "+ EMA"]


def _check_05(s):
    assert s["epochs"] == [0.5] and s["rows"] == s["results"] and s["rows"][0] == "all tricks"
    # every row trained the same seeds, and the chart's rows are the table's after 'all tricks'
    assert len(s["seeds"]) == 1 and len(s["seeds"][0]) >= 2 and s["paired"] == s["rows"][1:]


def _check_06(s):
    assert s["runs"] == 1 and s["table"] == 1 and s["published_ours"] == [1, 1] and s["record"] == 1
    assert s["epochs"] == [1] and s["record_epochs"] == 1 and s["steps"] == s["record_steps"]


def _check_07(s):
    assert s["title"] == "sweep of translate" and s["labels"] == ["translate=0", "translate=1"]
    assert s["seconds"] == s["swept"]


CONFIG_CHANGES = {
    "00_quickstart": Change(
        lambda src: src.replace("cfg = hu.config.get_profile()", "cfg = hu.config.get_profile().replace(epochs=1)"),
        ("history.readable(result.history)", "plot_curves", "results_table"),
        _json("dict(trained=result.config.epochs, last_epoch=float(result.history['epoch'].iloc[-1]))"),
        _check_00),
    "01_data_pipeline": Change(
        lambda src: _set_lines(src, {"SHOW": "4"}) + "\ncfg = cfg.replace(batch_size=100)",
        ("alternating_flip_mask(base", "image_grid(torch.cat([sample, mirrored", "checksum of the shifted images",
         "cutout(sample", "print(loader)", "results_table"),
        _json("dict(grid=len(sample), batch=[int(x.shape[0]), loader.batch_size], flip_columns=len(base))"),
        _check_01),
    "02_baseline": Change(
        lambda src: _after(src, "BASELINE", 'BASELINE = {**BASELINE, "epochs": 1}'),
        ("history.round", "plot_accuracy_over_time", "paired_table(baseline_runs", "results_table"),
        _json("dict(baseline_epochs=len(history), ours=ours.config.epochs, rows=list(results), "
              "seeds=[[r.config.seed for r in x.results] for x in (baseline_runs, ours_runs)], "
              "paired=[int(n) for n in comparison['runs']])"), _check_02),
    # narrower: the cost table, the printed net and the results must all be the new net's
    "03_se_resnet": Change(
        lambda src: src + "\ncfg = cfg.replace(widths=(4, 8, 16, 32))",
        ("def cost", "net = hu.model.make_net(cfg)\nnet", "plot_curves", "results_table"),
        _json("dict(rows=len(results), trained=list(seed_run.config.widths), costed=cost(cfg)['parameters'], "
              "params=hu.model.count_params(seed_run.model))"), _check_03),
    "04_training_recipe": Change(
        lambda src: src + '\nSTEPS = {name: STEPS[name] for name in ("+ EMA", "+ test-time augmentation", '
                          '"+ label smoothing")}',
        ("plot_curves", "evaluate.evaluate(last.model", "plot_paired_differences(steps)", "results_table"),
        _json("dict(rows=list(table['change']), runs=[int(n) for n in table['runs']], "
              "last=last.config.label_smoothing, compared=list(steps['setting']), against=list(steps['against']))"),
        _check_04),
    # half an epoch per row: every row of the table and every point of the chart is a new run
    "05_speed_tricks": Change(
        lambda src: _after(src, "base", "base = base.replace(epochs=0.5)"),
        ("results_table", "plot_paired_differences"),
        _json("dict(epochs=sorted({r.config.epochs for runs in results.values() for r in runs.results}), "
              "results=list(results), rows=list(table['change']), paired=list(paired['setting'][1:]), "
              "seeds=sorted({tuple(r.config.seed for r in runs.results) for runs in results.values()}))"),
        _check_05),
    "06_record_run": Change(
        # one spread run, and a one-epoch record run: cheap
        lambda src: _set_lines(src, {"RUNS": "1"}) + "\ncfg = cfg.replace(epochs=1)",
        ("plot_lr_schedule", "runs.table", "runs.summary.round", "plot_spread", "my_summary(runs.accuracies",
         "plot_curves", "record.history", "plot_loss_and_lr", "plot_confidence", "published = ", "SERIES, DEVICES",
         "results_table"),
        _json("dict(runs=len(runs.results), table=len(runs.table), published_ours=[int(r) for r in ours['runs']], "
              "record=json.load(open(folder / 'summary.json'))['runs'], "
              "epochs=[r.config.epochs for r in runs.results], record_epochs=record.config.epochs, "
              "steps=len(record.steps), record_steps=record.config.steps_per_epoch(record.config.train_subset))"),
        _check_06),
    "07_playground": Change(
        lambda src: _set_lines(src, {"KNOB": '"translate"', "VALUES": "[0, 1]"}),
        ("table = ", "plot_sweep", "confirm.summary", "confirmed}"), PLAYGROUND_STATE, _check_07),
}


# ---- "Try this": each suggestion is a fenced block the tests apply (convention: DEVELOPERS.md) -----

TRY_BLOCK = re.compile(r"^[ \t]*```python\n(?P<body>(?:.*\n)*?)[ \t]*```", re.M)


class Suggestion(NamedTuple):
    """One "Try this" change: the code cell that holds the line `cell`, the expression `watch` whose
    value the change must move, and its edits: (old, new) replaces old; (line, None) appends line."""
    cell: str
    watch: str
    edits: tuple[tuple[str, str | None], ...]


def suggestions(nb) -> list[Suggestion]:
    """The fenced blocks of the notebook's "Try this" section, parsed."""
    section = next(c.source for c in nb.cells if c.cell_type == "markdown" and "## Try this" in c.source)
    section = section[section.index("## Try this"):section.index("## Summary")]
    found = []
    for block in TRY_BLOCK.finditer(section):
        lines = [line.strip() for line in block["body"].splitlines() if line.strip()]
        assert lines[0].startswith("# in cell: ") and lines[1].startswith("# watch: "), block["body"]
        edits = []
        for line in lines[2:]:
            if line.startswith("+ "):
                edits.append((line[2:], None))
            else:
                assert " -> " in line, f"neither `old -> new` nor `+ line`: {line!r}"
                edits.append(tuple(line.split(" -> ", 1)))
        found.append(Suggestion(lines[0][len("# in cell: "):], lines[1][len("# watch: "):], tuple(edits)))
    return found


def target_cell(nb, suggestion: Suggestion) -> int:
    hits = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and suggestion.cell in c.source]
    assert len(hits) == 1, f"`# in cell: {suggestion.cell}` names {len(hits)} code cells, not one"
    return hits[0]


def apply(source: str, suggestion: Suggestion) -> str:
    for old, new in suggestion.edits:
        if new is None:
            source = source.rstrip("\n") + "\n" + old
        else:
            assert source.count(old) == 1, f"`{old}` is not in the cell exactly once"
            source = source.replace(old, new)
    return source


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_try_this_suggestions_name_their_cell_and_apply(path):
    # Static (no data): every notebook suggests at least one change, and each one applies as written.
    nb = _read(path)
    found = suggestions(nb)
    assert found, f"{path.name}: no runnable suggestion under Try this"
    for s in found:
        cell = nb.cells[target_cell(nb, s)]
        compile(apply(cell.source, s), "cell", "exec")
        compile(s.watch, "watch", "eval")


EXERCISE_BLOCK = re.compile(r"^[ \t]*```python\n(?P<body>(?:.*\n)*?)[ \t]*```", re.M)


def exercises(nb) -> list[str]:
    """The code of each exercise: the fenced blocks of the notebook's "## Exercises" cell, dedented."""
    import textwrap

    cells = [c.source for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("## Exercises")]
    return [textwrap.dedent(m["body"]) for text in cells for m in EXERCISE_BLOCK.finditer(text)]


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_exercises_ask_first_and_answer_in_a_fold(path):
    nb = _read(path)
    if path.stem == "00_quickstart":
        assert not exercises(nb)
        return
    last = nb.cells[-1]
    assert last.cell_type == "markdown" and last.source.startswith("## Exercises"), (
        f"{path.name} must end with exercises")
    numbered = re.findall(r"^(\d+)\. ", last.source, re.M)
    codes = exercises(nb)
    assert 2 <= len(numbered) <= 4 and numbered == [str(k + 1) for k in range(len(numbered))]
    assert len(codes) == len(numbered) and last.source.count("<details><summary>Answer</summary>") == len(numbered)
    assert last.source.count("</details>") == len(numbered) and "quick profile" in last.source
    for code in codes:
        compile(code, "exercise", "exec")


def _run_the_exercises(client, nb, name: str) -> None:
    """Each exercise's code, run after the notebook's first pass as a learner would paste it."""
    for code in exercises(nb):
        cell = nbformat.v4.new_code_cell(code)
        nb.cells.append(cell)
        try:
            client.execute_cell(cell, len(nb.cells) - 1)
        except CellExecutionError as err:
            pytest.fail(f"{name}: an exercise failed:\n{err}")
        finally:
            nb.cells.pop()


def _set_strict(client, nb, on: bool) -> None:
    """A learner's change makes a sketch differ from the library on purpose: the checks report it only."""
    cell = nbformat.v4.new_code_cell(f"import os\nos.environ['HLB_STRICT_CHECKS'] = {'1' if on else '0'!r}")
    nb.cells.append(cell)
    client.execute_cell(cell, len(nb.cells) - 1)
    nb.cells.pop()


def _watch(client, nb, expr: str) -> str:
    return _probe(client, nb, _json(f"repr({expr})"))


def _try_the_suggestions(client, nb, code: list[int], name: str) -> None:
    """Apply every "Try this" change at once (one pass, for the test's time), run from the first changed
    cell to the end; each watched value must differ from the first pass's. The cells are put back."""
    found = suggestions(nb)
    first = [_watch(client, nb, s.watch) for s in found]
    targets = [target_cell(nb, s) for s in found]   # found before any change: one may edit another's line
    originals = {i: nb.cells[i].source for i in targets}
    for s, i in zip(found, targets):
        nb.cells[i].source = apply(nb.cells[i].source, s)
    try:
        for j in code[code.index(min(originals)):]:
            client.execute_cell(nb.cells[j], j)
    except CellExecutionError as err:
        pytest.fail(f"{name}: after the Try-this changes {[s.edits for s in found]}:\n{err}")
    for s, before in zip(found, first):
        assert _watch(client, nb, s.watch) != before, (
            f"{name}: the Try-this change {s.edits} left `{s.watch}` as it was")
    for i, source in originals.items():
        nb.cells[i].source = source


# Each sketch's output scaled by 1.001 (a learner's small change): the notebook must still run to its end.
SCALE_HELPERS = """import functools as _functools
import torch as _torch


def _hlb_scaled(value):
    if isinstance(value, _torch.nn.Parameter) or isinstance(value, bool):
        return value
    if isinstance(value, _torch.Tensor):
        return value * 1.001 if value.is_floating_point() or value.dtype == _torch.uint8 else value
    if isinstance(value, float):
        return value * 1.001
    if isinstance(value, (list, tuple)):
        return type(value)(_hlb_scaled(v) for v in value)
    if isinstance(value, dict):
        return {k: _hlb_scaled(v) for k, v in value.items()}
    return value


def _hlb_wrap(fn):
    @_functools.wraps(fn)
    def scaled(*args, **kwargs):
        return _hlb_scaled(fn(*args, **kwargs))
    return scaled


def _hlb_wrap_class(cls):
    if issubclass(cls, _torch.nn.Module):
        cls.forward = _hlb_wrap(cls.forward)
    for method in ("update", "step"):   # a weight average, an optimiser: what they hold, scaled
        if hasattr(cls, method):
            def after(self, *args, _call=getattr(cls, method), **kwargs):
                out = _call(self, *args, **kwargs)
                with _torch.no_grad():
                    held = (self.model.state_dict().values() if hasattr(self, "model")
                            else [p for g in self.param_groups for p in g["params"]])
                    for t in held:
                        if t.is_floating_point():
                            t.mul_(1.001)
                return out
            setattr(cls, method, after)
    return cls"""
SKETCH = re.compile(r"^(def (my_\w+)|class (My\w+))\(", re.M)


def _scale_the_sketches(source: str) -> str:
    """The cell with a line after each top-level sketch (def my_..., class My...) that scales its output."""
    import ast

    lines = source.split("\n")
    for node in sorted(ast.parse(source).body, key=lambda n: -n.lineno):
        if isinstance(node, ast.FunctionDef) and node.name.startswith("my_"):
            lines.insert(node.end_lineno, f"{node.name} = _hlb_wrap({node.name})")
        elif isinstance(node, ast.ClassDef) and node.name.startswith("My"):
            lines.insert(node.end_lineno, f"{node.name} = _hlb_wrap_class({node.name})")
    return "\n".join(lines)


def _scale_every_sketch(client, nb, code: list[int]) -> int:
    """Put the 1.001 wrappers into every sketch cell; returns how many cells hold sketches."""
    cell = nbformat.v4.new_code_cell(SCALE_HELPERS)
    nb.cells.append(cell)
    client.execute_cell(cell, len(nb.cells) - 1)
    nb.cells.pop()
    cells = [i for i in code if SKETCH.search(nb.cells[i].source)]
    for i in cells:
        nb.cells[i].source = _scale_the_sketches(nb.cells[i].source)
    return len(cells)


def test_every_sketch_is_used_by_a_later_cell_other_than_its_check():
    # What a learner writes is what trains, evaluates or draws (issue 21): each sketch is named by a code
    # cell, its own or a later one, that does not check anything against the library.
    for path in PATHS:
        cells = [c.source for c in _read(path).cells if c.cell_type == "code"]
        for k, source in enumerate(cells):
            for m in SKETCH.finditer(source):
                name = m.group(2) or m.group(3)
                users = [s for s in cells[k:] if "hu.check.agrees" not in s
                         and re.search(rf"\b{name}\b", s.replace(m.group(0), ""))]
                assert users, f"{path.name}: {name} is checked, but no other cell uses it"


def test_scaling_wrappers_follow_each_sketch():
    source = "import torch\n\n\ndef my_f(x):\n    return x\n\n\nclass MyG:\n    pass\n\n\ny = my_f(2.0)"
    scaled = _scale_the_sketches(source)
    assert "def my_f(x):\n    return x\nmy_f = _hlb_wrap(my_f)" in scaled
    assert "class MyG:\n    pass\nMyG = _hlb_wrap_class(MyG)" in scaled and scaled.endswith("y = my_f(2.0)")
    scope: dict = {}
    exec(SCALE_HELPERS + "\n" + scaled, scope)
    assert scope["y"] == 2.0 * 1.001


def _check_first_pass(path: Path, nb, run_dir: Path, replica: Path) -> None:
    for cell in _code_cells(nb):
        errors = [o for o in cell.outputs if o.get("output_type") == "error"]
        assert not errors, f"{path.name}: {errors[0]['ename']} in\n{cell.source}"
    figures = sum("image/png" in o.get("data", {}) for c in _code_cells(nb) for o in c.outputs)
    assert figures >= MIN_FIGURES.get(path.name[:2], 0), f"{path.name} drew {figures} figures"
    shown = "\n".join(t for c in _code_cells(nb) for t in _texts(c))
    if path.name[:2] in ("04", "05"):
        assert hn.QUICK_NOTE in shown, f"{path.name} does not say that the quick profile's rows are noise"
    if path.name == "06_record_run.ipynb":
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["profile"] == "quick" and summary["runs"] >= 2
        assert summary["test_accuracy"] > 0.2, "the record notebook learned nothing"
        assert (run_dir / "history.csv").is_file()
        assert f"measured here on {data_label(replica)}" in shown, "the comparison row must name its data"


def _rerun_from_the_middle(client, nb, code: list[int]) -> None:
    """Re-run the middle code cell onwards: the cells tagged 'deterministic' must show the same again."""
    later = code[len(code) // 2:]
    tagged = [i for i in later if "deterministic" in nb.cells[i].metadata.get("tags", [])]
    first = {i: _texts(nb.cells[i]) for i in tagged}
    for i in later:
        client.execute_cell(nb.cells[i], i)
    assert first, "no cell tagged 'deterministic' after the middle"
    assert first == {i: _texts(nb.cells[i]) for i in tagged}, "re-running from the middle changed a result"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_notebook_runs_then_follows_a_changed_config(path, replica, tmp_path, monkeypatch):
    # Every notebook runs top to bottom in the quick profile. Then the learner's loop: change the
    # config cell, re-run it and every cell after it; every table and figure must be the new config's
    # (no stale rows, no leaked rows). One kernel and one first pass serve both checks.
    monkeypatch.setenv("HLB_DATA", str(replica))
    nb = _read(path)
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    config = next(i + 1 for i, c in enumerate(nb.cells) if c.source.startswith("## The config cell"))
    change = CONFIG_CHANGES[path.stem]
    client = hn.make_client(nb, cwd=NOTEBOOKS, timeout=CELL_TIMEOUT)
    with client.setup_kernel(env=hn.notebook_env(tmp_path, "quick")):
        for i in code:
            client.execute_cell(nb.cells[i], i)
        _check_first_pass(path, nb, tmp_path, replica)
        if path.name == RERUN_NOTEBOOK:
            _rerun_from_the_middle(client, nb, code)
        marked = {m: next(i for i in code if i > config and m in nb.cells[i].source) for m in change.changed}
        before = {m: _shown(nb.cells[i]) for m, i in marked.items()}
        _run_the_exercises(client, nb, path.name)
        # the learner's changes: each "Try this" suggestion, then (below) every sketch scaled by 1.001
        _set_strict(client, nb, False)
        _try_the_suggestions(client, nb, code, path.name)
        sketches = _scale_every_sketch(client, nb, code)
        nb.cells[config].source = change.edit(nb.cells[config].source)
        client.execute_cell(nb.cells[config], config)
        if path.stem == "07_playground":
            with pytest.raises(CellExecutionError, match="run the sweep cell"):   # no old points under the new title
                client.execute_cell(nb.cells[marked["plot_sweep"]], marked["plot_sweep"])
        for i in code[code.index(config) + 1:]:
            client.execute_cell(nb.cells[i], i)
        state = _probe(client, nb, change.probe)
    differ = sum("they differ" in t for i in code for t in _texts(nb.cells[i]))
    assert differ >= min(sketches, 1), f"{path.name}: no check reported the scaled sketches"
    stale = [m for m, i in marked.items() if _shown(nb.cells[i]) == before[m]]
    assert not stale, f"{path.name}: these cells still show the old config's output: {stale}"
    change.check(state)
    if path.stem == "07_playground":
        swept = "".join(_texts(nb.cells[marked["table = "]]))
        assert "translate=0" in swept and "translate=1" in swept
        assert "epochs=" not in swept and "seeds" not in swept   # no stale rows, no leaked confirmation
        everything = "".join(_texts(nb.cells[marked["confirmed}"]]))
        assert "epochs=" not in everything and re.search(r"translate=[01], 2 new seeds", everything)


def test_plot_sweep_draws_the_table_it_is_given_and_refuses_an_empty_one():
    from hlb_utils import plots

    table = hn.results_table({"lr=0.1": dict(accuracy=0.5, seconds=2.0, device="cpu", runs=1),
                              "lr=0.2": dict(accuracy=0.93, seconds=3.0, device="cpu", runs=1)})
    ax = plots.plot_sweep(table, "lr").axes[0]
    assert ax.get_title() == "sweep of lr" and [t.get_text() for t in ax.texts] == ["lr=0.1", "lr=0.2"]
    assert list(ax.lines[0].get_xdata()) == [2.0, 3.0] and len(ax.lines) == 2   # the target line: 0.93 is near 0.94
    with pytest.raises(ValueError, match="run the sweep cell first"):
        plots.plot_sweep(table.iloc[:0], "lr")


def test_playground_out_of_order_and_misspelt_knob_say_what_to_do(replica, tmp_path, monkeypatch):
    # A fresh kernel, cells run out of order: the confirmation before any sweep, then a misspelt knob.
    monkeypatch.setenv("HLB_DATA", str(replica))
    nb = _read(NOTEBOOKS / "07_playground.ipynb")
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    setup, config, data = code[:3]
    confirm = next(i for i in code if "run_many" in nb.cells[i].source)
    client = hn.make_client(nb, cwd=NOTEBOOKS, timeout=CELL_TIMEOUT)
    with client.setup_kernel(env=hn.notebook_env(tmp_path, "quick")):
        for i in (setup, config, data):
            client.execute_cell(nb.cells[i], i)
        with pytest.raises(CellExecutionError, match="no runs of the epochs sweep yet: run the sweep cell"):
            client.execute_cell(nb.cells[confirm], confirm)
        nb.cells[config].source = _set_lines(nb.cells[config].source, {"KNOB": '"epoch"'})
        with pytest.raises(CellExecutionError, match="no field 'epoch'; did you mean 'epochs'"):
            client.execute_cell(nb.cells[config], config)


def test_notebooks_name_no_absolute_paths():
    # Notebooks must run in Colab, locally and headless: no machine-specific paths in the source.
    for path in PATHS:
        for cell in _read(path).cells:
            assert not re.search(r"(/work/|/root/|/home/|C:\\\\)", cell.source), path.name


def test_jupyter_is_recognised_by_its_kernel_not_its_class_name(monkeypatch):
    # Colab's shell is google.colab._shell.Shell, a subclass with its own name; a terminal IPython has no kernel.
    import IPython

    from hlb_utils import progress

    class Shell:
        kernel = object()

    class TerminalInteractiveShell:
        pass

    monkeypatch.setattr(IPython, "get_ipython", lambda: Shell())
    assert progress.in_jupyter() and progress.LiveTable(["epoch"]).jupyter
    monkeypatch.setattr(IPython, "get_ipython", lambda: TerminalInteractiveShell())
    assert not progress.in_jupyter() and not progress.LiveTable(["epoch"]).jupyter
