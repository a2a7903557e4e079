"""Compare a learner's sketch with the library's version on the same inputs, and say how far apart they are.

Notebooks 01 and 03 to 06 write the plain version of an idea in a cell and check it against the library
with `agrees`. The check prints one line and never stops the notebook: a learner who changes a sketch
on purpose sees how far it now is from the library, and the cells below go on with the learner's version.
With `HLB_STRICT_CHECKS=1` (set by the test suite) a difference raises instead, so that an unchanged
sketch that no longer equals the library fails the tests.
"""
from __future__ import annotations

import math
import os
from typing import Any, Callable, Mapping

import torch

STRICT_ENV = "HLB_STRICT_CHECKS"


class SketchDiffers(AssertionError):
    """Raised by `agrees` in strict mode when a sketch and the library disagree (or the sketch fails)."""


def strict() -> bool:
    """True when the checks must raise (the test suite sets HLB_STRICT_CHECKS=1)."""
    return os.environ.get(STRICT_ENV, "") not in ("", "0")


def _flatten(value: Any) -> list[torch.Tensor]:
    """A result as a list of float64 tensors (tensors, numbers, and lists, tuples or dicts of them)."""
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in _flatten(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _flatten(v)]
    return [torch.as_tensor(value).detach().to("cpu", torch.float64)]


def difference(mine: Any, library: Any) -> float:
    """The largest absolute difference between two results of the same structure (inf if the shapes differ)."""
    a, b = _flatten(mine), _flatten(library)
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return math.inf
    return max((float((x - y).abs().max()) if x.numel() else 0.0 for x, y in zip(a, b)), default=0.0)


def _close(mine: Any, library: Any, rtol: float, atol: float) -> bool:
    a, b = _flatten(mine), _flatten(library)
    return difference(mine, library) < math.inf and all(
        torch.allclose(x, y, rtol=rtol, atol=atol) for x, y in zip(a, b))


def agrees(mine: Callable, library: Callable, inputs: Mapping[str, tuple] | None = None, *, what: str,
           rtol: float = 1.3e-6, atol: float = 1e-5) -> bool:
    """Call `mine(*args)` and `library(*args)` for each named `args` in `inputs` and print one line:
    that they agree within the tolerance, or the largest difference and on which input. Returns
    whether they agree. `what` names the two, e.g. "my_smoothed_loss against hu.optim.smoothed_cross_entropy".

    It never raises in a notebook (a sketch that fails is reported as such); in strict mode
    (`HLB_STRICT_CHECKS=1`) a disagreement raises `SketchDiffers`.
    """
    inputs = inputs if inputs is not None else {"the example": ()}
    worst, where, failure = 0.0, None, None
    for name, args in inputs.items():
        expected = library(*args)
        try:
            got = mine(*args)
        except Exception as err:   # the learner's code: report, never stop the notebook
            failure = f"{type(err).__name__}: {err} (on {name})"
            break
        gap = difference(got, expected)
        if not _close(got, expected, rtol, atol) and (where is None or gap > worst):
            worst, where = gap, name
        elif where is None:
            worst = max(worst, gap)
    if failure is None and where is None:
        over = f" on all {len(inputs)} inputs" if len(inputs) > 1 else ""
        print(f"{what}: they agree{over} (largest difference {worst:.2g}); the cells below use yours")
        return True
    if failure is not None:
        line = f"{what}: yours raised {failure}; the cells below use yours"
    else:
        line = f"{what}: they differ, by up to {worst:.3g} on {where}; the cells below use yours"
    if strict():
        raise SketchDiffers(line)
    print(line)
    return False
