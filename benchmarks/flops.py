"""FLOPs of one full training run of each profile, next to airbench94_muon's published figure.

    python benchmarks/flops.py

Counted with torch's FLOP counter (`hlb_utils.model.count_flops`: convolutions and matmuls, 2 FLOPs
per multiply-add; element-wise work such as BatchNorm and activations is not counted, as in the
published figures). A run = training (forward + backward for every image of every epoch, the
whitening init's forward-free eigendecomposition ignored) + the final evaluation with TTA
(forward passes only, one per view) + the per-epoch evaluations the profile asks for.
"""
from __future__ import annotations

import math
import sys

import pandas as pd
import torch

from hlb_utils import config, evaluate, model

TRAIN_IMAGES, TEST_IMAGES = 50_000, 10_000
AIRBENCH94_MUON_PFLOPS = 0.29  # published (airbench paper / README), one A100 run


def run_flops(cfg: config.TrainConfig) -> dict:
    net = model.make_net(cfg)
    train_per_image = model.count_flops(net, train=True)
    infer_per_image = model.count_flops(net, train=False)
    n_train = min(cfg.train_subset or TRAIN_IMAGES, TRAIN_IMAGES)
    n_test = min(cfg.test_subset or TEST_IMAGES, TEST_IMAGES)
    steps_per_epoch = n_train // cfg.batch_size
    steps = round(cfg.epochs * steps_per_epoch)
    # progressive resizing: the first low_res_epochs see smaller images
    small = min(steps, round(cfg.low_res_epochs * steps_per_epoch)) if cfg.low_res else 0
    small_per_image = model.count_flops(net, train=True, image_size=cfg.low_res) if small else 0
    train_flops = cfg.batch_size * ((steps - small) * train_per_image + small * small_per_image)
    views = len(evaluate.tta_views(torch.zeros(1, 3, 32, 32), cfg.tta))
    evals = math.ceil(cfg.epochs / cfg.eval_every) if cfg.eval_every else 1
    eval_flops = n_test * infer_per_image * (views + evals)
    return dict(profile=cfg.profile, net=cfg.net, widths=str(cfg.widths), params=model.count_params(net),
                gflops_train_image=train_per_image / 1e9, train_pflops=train_flops / 1e15,
                eval_pflops=eval_flops / 1e15, total_pflops=(train_flops + eval_flops) / 1e15)


def main() -> int:
    rows = [run_flops(config.get_profile(name)) for name in config.PROFILE_NAMES]
    rows.append(dict(profile="airbench94_muon (published)", total_pflops=AIRBENCH94_MUON_PFLOPS))
    pd.set_option("display.width", 160)
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
