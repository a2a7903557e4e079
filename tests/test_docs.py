"""The executed copies in docs/ and the prose a learner reads (issue 23).

- every committed copy in docs/notebooks/ (and docs/notebooks/gpu/) has its notebook's code, a stamp
  and no error output: a changed notebook needs its copy regenerated (`python -m hlb_utils notebook docs NN`);
- the docs command, on a tiny notebook of its own: stamp in metadata and first cell, the tagged figure
  written as a PNG, the code unchanged, and a stale copy caught;
- the notebooks' prose (markdown cells and the strings their code prints) names none of the project's
  own machinery: the learner cannot use those words.
"""
from __future__ import annotations

import ast
import base64
import io
import re
from pathlib import Path

import nbformat
import pytest

from hlb_utils import docs

ROOT = Path(__file__).resolve().parent.parent
COPIES = sorted((ROOT / "docs" / "notebooks").glob("**/[0-9][0-9]_*.ipynb"))
NOTEBOOK_PATHS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))

# Words about this project's machinery that mean nothing to a learner (a list that can grow), each
# with what to write instead.
MACHINERY = {
    r"\bthe tests\b": "say what the thing does for the learner (e.g. 'a fast check that everything runs')",
    r"\bCI\b": "leave the project's automation out of the notebooks",
    r"\bpytest\b": "leave the project's test runner out of the notebooks",
    r"\bheadless\b": "'without Jupyter' or 'from a terminal'",
    r"README's first command": "name the command itself",
    r"\breplica\b": "'the JPEG copy of CIFAR-10' (and say once what it is)",
}


@pytest.mark.skipif(not COPIES, reason="docs/notebooks/ holds no executed copies yet; "
                                        "make them with `python -m hlb_utils notebook docs`")
@pytest.mark.parametrize("copy", COPIES, ids=lambda p: str(p.relative_to(ROOT / "docs" / "notebooks")))
def test_committed_copy_matches_its_notebook(copy):
    assert docs.copy_problems(copy) == []


def _png() -> bytes:
    from matplotlib.figure import Figure   # no pyplot: no backend switched for other tests

    fig = Figure(figsize=(1, 1))
    fig.add_subplot().plot([0, 1], [1, 0])
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=20)
    return buffer.getvalue()


def _tiny_series(folder: Path) -> Path:
    """notebooks/00_tiny.ipynb: a markdown cell, a printing cell and a cell tagged figure:tiny."""
    png = base64.b64encode(_png()).decode()
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# 00 · tiny"),
        nbformat.v4.new_code_cell("print('hello')"),
        nbformat.v4.new_code_cell("import base64\nfrom IPython.display import Image, display\n"
                                  f"display(Image(data=base64.b64decode('{png}')))",
                                  metadata={"tags": ["figure:tiny"]}),
    ]
    folder.mkdir(parents=True)
    nbformat.write(nb, folder / "00_tiny.ipynb")
    return folder


def test_docs_command_stamps_the_copy_and_writes_the_tagged_figure(tmp_path, monkeypatch):
    source = _tiny_series(tmp_path / "notebooks")
    monkeypatch.setattr(docs, "NOTEBOOKS", source)
    out = tmp_path / "docs" / "notebooks"
    (copy,) = docs.make_docs(["0"], out, profile="quick", data="synthetic", timeout=120, folder=source)

    assert copy == out / "00_tiny.ipynb"
    nb = nbformat.read(copy, as_version=4)
    facts = nb.metadata["hlb_docs"]
    assert {"profile", "device", "data", "date", "code", "torch", "seconds"} <= set(facts)
    assert facts["profile"] == "quick" and facts["data"] == "synthetic images"
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("*Executed on ")
    assert "quick profile" in first.source and facts["code"] in first.source
    figure = tmp_path / "docs" / "figures" / "tiny.png"
    assert figure.read_bytes() == _png()
    assert docs.copy_problems(copy, source) == []
    assert any("hello" in o.get("text", "") for o in nb.cells[2].outputs)

    # a notebook changed after the run makes its copy stale
    changed = nbformat.read(source / "00_tiny.ipynb", as_version=4)
    changed.cells[1].source = "print('hello again')"
    nbformat.write(changed, source / "00_tiny.ipynb")
    (problem,) = docs.copy_problems(copy, source)
    assert "code differs" in problem and "notebook docs 00" in problem


def test_a_tagged_cell_without_a_figure_and_a_missing_number_are_errors(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("1", metadata={"tags": ["figure:none"]})]
    with pytest.raises(ValueError, match="figure:none"):
        docs.extract_figures(nb, tmp_path)
    with pytest.raises(FileNotFoundError, match="42"):
        docs.pick_notebooks(["42"], _tiny_series(tmp_path / "nb"))


def test_copy_without_stamp_or_with_an_error_is_reported(tmp_path):
    source = _tiny_series(tmp_path / "notebooks")
    nb = nbformat.read(source / "00_tiny.ipynb", as_version=4)
    nb.cells[1].outputs = [nbformat.v4.new_output("error", ename="ValueError", evalue="boom", traceback=[])]
    (tmp_path / "copies").mkdir()
    nbformat.write(nb, tmp_path / "copies" / "00_tiny.ipynb")
    problems = docs.copy_problems(tmp_path / "copies" / "00_tiny.ipynb", source)
    assert any("no hlb_docs stamp" in p for p in problems) and any("boom" in p for p in problems)


def test_stamp_line_reads_as_one_sentence():
    line = docs.stamp_line({"date": "2026-12-02", "device": "a CPU (2 cores)", "profile": "cpu",
                            "data": "a JPEG copy of CIFAR-10", "code": "abc1234", "torch": "2.5",
                            "seconds": 3720})
    assert line == ("*Executed on 2026-12-02 on a CPU (2 cores) with the cpu profile on a JPEG copy of CIFAR-10 "
                    "(code abc1234, torch 2.5); 62 minutes.*")


def printed_strings(source: str) -> list[str]:
    """The literal text of every print(...) call in a code cell (f-strings' literal parts included)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    texts = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
            for arg in ast.walk(node):
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    texts.append(arg.value)
    return texts


def learner_prose(path: Path) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    return [c.source for c in nb.cells if c.cell_type == "markdown"] + [
        text for c in nb.cells if c.cell_type == "code" for text in printed_strings(c.source)]


def machinery_words(texts: list[str]) -> list[str]:
    return [f"{m.group()!r} in {text[max(0, m.start() - 40):m.end() + 40]!r}: {advice}"
            for text in texts for pattern, advice in MACHINERY.items()
            for m in re.finditer(pattern, text)]


@pytest.mark.parametrize("path", NOTEBOOK_PATHS, ids=lambda p: p.stem)
def test_learner_prose_names_no_project_machinery(path):
    assert machinery_words(learner_prose(path)) == []


def test_the_machinery_check_catches_each_word():
    texts = ["the tests use it", "run it headless", "as README's first command does", "on the JPEG replica",
             "in CI", "with pytest"]
    assert len(machinery_words(texts)) == len(texts)
    assert machinery_words(["test-time augmentation, the test set, a t-test"]) == []
    assert printed_strings("print(f'on the replica {x}')\ny = 'not printed: the tests'") == ["on the replica "]


def test_copies_name_no_path_of_the_machine_they_ran_on(tmp_path):
    data = tmp_path / "cifar10-jpeg.tar.gz"
    data.write_bytes(b"")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x")]
    nb.cells[0].outputs = [
        nbformat.v4.new_output("stream", name="stdout", text=f"data: {data}  cache {Path.home()}/.cache\n"),
        nbformat.v4.new_output("execute_result", data={"text/plain": f"'{docs.ROOT}/runs'"}, execution_count=1)]
    docs.scrub_paths(nb, docs.local_paths(str(data)))
    assert nb.cells[0].outputs[0]["text"] == "data: cifar10-jpeg.tar.gz  cache ~/.cache\n"
    assert nb.cells[0].outputs[1]["data"]["text/plain"] == "'./runs'"


def test_the_series_tags_four_to_eight_readme_figures_with_unique_names():
    names = [docs.figure_name(c) for p in NOTEBOOK_PATHS for c in nbformat.read(p, as_version=4).cells]
    names = [n for n in names if n]
    assert 4 <= len(names) <= 8 and len(set(names)) == len(names), names
