"""benchmarks/op_count.py against a hiverge-shaped stand-in (tests/fake_speedrun.py), on the CPU."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HIVERGE_REAL = dict(ordinary=32, rescaling=64)   # op_count on cifar10_speedrun.py (benchmarks/NOTES.md)


def load_op_count():
    spec = importlib.util.spec_from_file_location("op_count", ROOT / "benchmarks" / "op_count.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_op_count_counts_both_kinds_of_step_for_ours_and_the_peer(capsys):
    op_count = load_op_count()
    assert op_count.main(["--peer", str(ROOT / "tests" / "fake_speedrun.py"), "--widths", "8,16,16", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    counts = json.loads(out[-1])
    assert set(counts) == {"ours", "hiverge"}
    for side in counts.values():
        assert set(side) == {"ordinary", "rescaling"} and all(isinstance(n, int) and n > 0 for n in side.values())
    # ours rescales inside its compiled Muon update: no extra operator on a rescaling step
    assert counts["ours"]["rescaling"] == counts["ours"]["ordinary"]
    # the stand-in rescales eagerly: a norm, and a few operators per weight, more on those steps
    assert counts["hiverge"]["rescaling"] > counts["hiverge"]["ordinary"]
    # the compiled forward and backward graphs count one each, on both sides; ours adds Muon's update
    ours_step = next(line for line in out if line.startswith("ours, one step:"))
    assert "graph 3" in ours_step and "_fused_sgd_" in ours_step
    # ours stays at or below what op_count finds for hiverge's real script (benchmarks/NOTES.md)
    assert counts["ours"]["ordinary"] <= HIVERGE_REAL["ordinary"] and counts["ours"]["rescaling"] <= HIVERGE_REAL["rescaling"]
