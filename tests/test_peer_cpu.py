"""benchmarks/peer_cpu.py: the rewrite that runs a peer's CUDA, fp16 script on the CPU in fp32.

A stand-in script written here plays the peer: it uses each CUDA and half-precision form the real
scripts use, and its `main()` reports what it sees (data size, dtypes, devices, the timer).
"""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))
_spec = importlib.util.spec_from_file_location("peer_cpu", BENCH / "peer_cpu.py")
peer_cpu = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(peer_cpu)

STAND_IN = '''
import torch

MEAN = torch.tensor((0.5, 0.5), dtype=torch.half)

def helper():
    return torch.zeros(2, device="cuda").half() + MEAN   # a comment about cuda stays harmless

class CifarNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))
        self.half()

def main(run, model):
    data = torch.load("cifar10/train.pt", map_location=torch.device("cuda"), weights_only=True)
    buffer = torch.zeros(4, dtype=torch.half).pin_memory().contiguous()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    x = helper().bfloat16()
    end.record()
    torch.cuda.synchronize()
    return (len(data["labels"]), str(x.dtype), x.device.type, str(model.w.dtype), str(buffer.dtype),
            start.elapsed_time(end) >= 0)

if __name__ == "__main__":
    model = CifarNet().cuda()
    main("warmup", model)
'''


def test_rewrite_leaves_no_cuda_or_half_precision():
    head = peer_cpu.rewrite(STAND_IN)
    assert "__main__" not in head
    code = "\n".join(line.split("#")[0] for line in head.splitlines())
    for gone in ("cuda", ".half()", "torch.half", "bfloat16", "pin_memory"):
        assert gone not in code, gone


def test_rewrite_refuses_what_it_cannot_move():
    with pytest.raises(SystemExit, match=r"left CUDA or half-precision code behind .*\n  y = x.cuda\(\)"):
        peer_cpu.rewrite("import torch\ny = x.cuda()\nif __name__ == \"__main__\":\n    pass\n")
    with pytest.raises(SystemExit, match="no `if __name__"):
        peer_cpu.rewrite("import torch\n")


def test_stand_in_peer_trains_on_the_cpu_in_fp32(replica, tmp_path, monkeypatch):
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    monkeypatch.chdir(tmp_path)   # the harness changes folder; pytest's is restored after
    monkeypatch.setattr(torch, "compile", torch.compile)   # and makes compile the identity
    monkeypatch.setattr(sys, "argv", sys.argv)
    out = tmp_path / "result.json"
    peer_cpu.main(["--peer", str(script), "--data", str(replica), "--work", str(tmp_path / "work"),
                   "--out", str(out), "--runs", "2", "--train-subset", "64"])
    record = json.loads(out.read_text())
    assert record["train_images"] == 64 and record["dtype"] == "fp32"
    assert [r["seed"] for r in record["runs"]] == [0, 1]
    assert record["runs"][0]["returned"] == [64, "torch.float32", "cpu", "torch.float32", "torch.float32", True]
