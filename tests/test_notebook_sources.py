"""What the notebooks show of the library is code a learner can read as the idea itself.

Every `show_source(...)` in a notebook names a public object whose source holds no guard, fallback
or private helper: validation and fallbacks live at the boundaries (config, data loading, the
command line), and where the library's version needs them a notebook writes the plain version in
a cell instead and checks it against the library (issue 14).
"""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import nbformat
import pytest

import hlb_utils as hu

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
SHOWN = re.compile(r"show_source\(hu\.([\w.]+)\)")
# a raise, a try/except, a warning, or a call of a private helper (`_name(`, not `__init__(`)
DEFENSIVE = re.compile(r"\braise\b|\btry:|\bexcept\b|warnings\.warn|(?<!\w)_[A-Za-z]\w*\(")


def code_of(obj) -> str:
    """Its source without the docstrings (the text between triple quotes)."""
    return "".join(inspect.getsource(obj).split('"""')[0::2])


def shown_objects() -> list[tuple[str, str]]:
    found = []
    for path in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code":
                found += [(path.stem, name) for name in SHOWN.findall(cell.source)]
    return found


def test_the_pattern_finds_what_notebooks_show():
    assert len(shown_objects()) >= 10


@pytest.mark.parametrize("stem, name", shown_objects(), ids=lambda v: str(v))
def test_shown_code_is_public_and_plain(stem, name):
    assert not any(part.startswith("_") for part in name.split(".")), f"{stem} shows private {name}"
    obj = hu
    for part in name.split("."):
        obj = getattr(obj, part)
    found = DEFENSIVE.findall(code_of(obj))
    assert not found, f"{stem} shows {name}, which holds {found}: show a plain sketch or prose instead"


def test_the_check_catches_a_guard_and_a_private_helper():
    # The check itself must be able to fail: the pieces the notebooks stopped showing have these.
    assert DEFENSIVE.findall(code_of(hu.compiling.prepare)) == ["try:", "except", "raise", "warnings.warn"]
    assert DEFENSIVE.findall(code_of(hu.loader.normalize)) == ["_check_uint8("]
    assert not DEFENSIVE.search(code_of(hu.model.BatchNorm))   # super().__init__( is no private helper
