"""The notebooks' sizes (`hlb_utils.sizes.notebook_size`): valid configs in every profile, fresh copies."""
from __future__ import annotations

import pytest

from hlb_utils import config as C
from hlb_utils import sizes as S

# Which recipe each named size changes: a profile's own, the seed profile's, or none (plain values).
_SIZED_RECIPE = {"seed_net": "seed", "recipe_steps": "seed", "ablation": "own", "sweep": "own", "quickstart": "own",
                 "spread": "own"}


@pytest.mark.parametrize("profile", C.PROFILE_NAMES)
def test_every_notebook_size_is_valid_in_every_profile(profile):
    for name in S.NOTEBOOK_SIZE_NAMES:
        size = S.notebook_size(name, profile)
        if name in _SIZED_RECIPE:
            base = C.get_profile(profile if _SIZED_RECIPE[name] == "own" else _SIZED_RECIPE[name])
            base.replace(**size)   # validated: a misspelt field or a value out of range raises
        elif name == "se_widths":
            C.get_profile("seed", widths=size)
        elif name == "sweep_epochs":
            # each value in the sweep's own recipe (which turns progressive resizing off where it would outlast it)
            swept = C.get_profile(profile, **S.notebook_size("sweep", profile))
            assert size and all(swept.replace(epochs=e).epochs == e for e in size)
        elif name == "spread_target":
            assert isinstance(size, float) and 0 < size < 1, (name, size)
        elif name == "sweep_target":
            assert 0 < size < 1, (name, size)
        elif name == "baseline":
            assert {"subset", "epochs", "widths", "num_workers"} <= set(size)
        elif name == "ablation_skip":
            assert isinstance(size, list) and all(isinstance(row, str) and row for row in size)
        else:
            assert isinstance(size, int) and size >= 1, (name, size)


def test_notebook_size_defaults_to_the_resolved_profile_and_hands_out_copies(monkeypatch):
    monkeypatch.setenv("HLB_PROFILE", "quick")
    assert S.notebook_size("record_runs") == S.notebook_size("record_runs", "quick") == 2
    assert S.notebook_size("record_runs", "record") == 5   # GPU profiles run at full size
    changes = S.notebook_size("ablation")
    changes["epochs"] = 99
    assert S.notebook_size("ablation")["epochs"] != 99
    with pytest.raises(ValueError, match="did you mean 'ablation'"):
        S.notebook_size("ablations")
