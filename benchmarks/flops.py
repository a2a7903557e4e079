"""FLOPs of one full training run of each profile, next to airbench94_muon's published figure.

    python benchmarks/flops.py

Counted by `hlb_utils.runs.run_flops` (torch's FLOP counter: convolutions and matmuls, 2 FLOPs per
multiply-add; element-wise work such as BatchNorm and activations is not counted, as in the published
figures): training (forward + backward for every image of every epoch), the final evaluation with TTA
(one forward pass per view) and the per-epoch evaluations the profile asks for.
"""
from __future__ import annotations

import sys

import pandas as pd

from hlb_utils import config, runs

AIRBENCH94_MUON_PFLOPS = 0.29  # published (airbench paper / README): training plus its 6-view TTA


def main() -> int:
    rows = [runs.run_flops(config.get_profile(name)) for name in config.PROFILE_NAMES]
    rows.append(dict(profile="airbench94_muon (published)", total_pflops=AIRBENCH94_MUON_PFLOPS))
    pd.set_option("display.width", 160)
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
