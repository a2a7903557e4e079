"""hu.check.agrees: a learner's sketch against the library, one line, never a stopped notebook (issue 21)."""
import pytest
import torch

from hlb_utils import check


@pytest.fixture
def lenient(monkeypatch):
    monkeypatch.setenv(check.STRICT_ENV, "0")


def test_agreement_is_one_line(lenient, capsys):
    x = torch.randn(5)
    assert check.agrees(lambda t: t * 2, lambda t: t + t, {"x": (x,)}, what="double")
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("double: they agree") and "the cells below use yours" in out[0]


def test_a_difference_names_its_size_and_input_and_goes_on(lenient, capsys):
    inputs = {"small": (torch.ones(3),), "large": (10 * torch.ones(3),)}
    assert not check.agrees(lambda t: 1.001 * t, lambda t: t, inputs, what="scaled")
    line = capsys.readouterr().out.strip()
    assert "differ, by up to 0.01 on large" in line and "the cells below use yours" in line


def test_a_failing_sketch_is_reported_not_raised(lenient, capsys):
    def broken(t):
        raise ValueError("my bug")

    assert not check.agrees(broken, lambda t: t, {"x": (torch.ones(2),)}, what="broken")
    assert "yours raised ValueError: my bug (on x)" in capsys.readouterr().out


def test_shapes_structures_and_numbers():
    assert check.difference([torch.ones(2), 3.0], [torch.ones(2), 3.5]) == 0.5
    assert check.difference(torch.ones(2), torch.ones(3)) == float("inf")
    assert check.difference({"a": [1, 2]}, {"a": [1]}) == float("inf")


def test_strict_mode_raises(monkeypatch):
    monkeypatch.setenv(check.STRICT_ENV, "1")
    with pytest.raises(check.SketchDiffers, match="scaled: they differ"):
        check.agrees(lambda: torch.ones(2) * 1.5, lambda: torch.ones(2), what="scaled")
    assert check.agrees(lambda: torch.ones(2), lambda: torch.ones(2), what="same")


def test_the_test_suite_runs_strictly():
    # conftest turns strict mode on, so an unchanged notebook sketch that drifts from the library fails
    assert check.strict()
