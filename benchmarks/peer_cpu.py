"""Train a peer's record script whole on the CPU, in fp32, on our data: the other half of a CPU comparison.

Why: `tests/test_peers.py` shows our `record` and `airbench` profiles equal to the peers' code step by
step; a whole run of each, side by side on the same CPU and data, shows the steps add up to the same
accuracy. The peers' scripts are CUDA-only and fp16, so this runs a rewritten copy, in this process:

    python benchmarks/peer_cpu.py --peer path/to/cifar10_speedrun.py --data path/to/cifar10-jpeg.tar.gz \
        --work /tmp/peer_cpu --out /tmp/peer_cpu/speedrun.json

and compare with `python -m hlb_utils train --profile record --set device=cpu` (or `airbench` against
airbench94_muon.py). The script is read from the given path at run time and never stored here.

What the rewrite changes, and nothing else (each is checked to leave no CUDA or half precision behind):
CUDA tensors and loads go to the CPU; fp16 and bf16 become fp32 (weights, data, Muon's buffers and its
Newton-Schulz); pinned memory goes (it needs CUDA); CUDA events become a wall clock; `torch.compile` is
the identity. The script's main block (a warm-up run on random data and hundreds of timed runs) is
replaced by `--runs` calls of its `main(run, model)` on one fp32 model, each after `torch.manual_seed`.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_bench import write_peer_cache  # noqa: E402  (the peers' data layout lives there)

# (pattern, replacement): applied to the script above its main block
REWRITES = (
    (r'torch\.device\("cuda"\)', 'torch.device("cpu")'),
    (r'device="cuda"', 'device="cpu"'),
    (r"\.pin_memory\(\)", ""),
    (r"torch\.half\b", "torch.float"),
    (r"\.half\(\)", ".float()"),
    (r"\.bfloat16\(\)", ".float()"),
    (r"torch\.cuda\.Event\(", "_WallClockEvent("),
    (r"torch\.cuda\.synchronize\(\)", "None"),
)
LEFT_BEHIND = re.compile(r"cuda|\.half\(|torch\.half|bfloat16")
MAIN_BLOCK = re.compile(r'^if __name__ == "__main__":', re.MULTILINE)


class _WallClockEvent:
    """Stands in for `torch.cuda.Event`: `record()` notes the time, `elapsed_time` answers milliseconds."""

    def __init__(self, enable_timing: bool = True):
        self.t = None

    def record(self) -> None:
        self.t = time.perf_counter()

    def elapsed_time(self, end: "_WallClockEvent") -> float:
        return 1e3 * (end.t - self.t)


def _identity_compile(fn=None, **_options):
    return fn if fn is not None else (lambda f: f)


def rewrite(source: str) -> str:
    """The script above its main block, moved to the CPU and fp32; fails loudly if anything is left."""
    found = MAIN_BLOCK.search(source)
    if found is None:
        raise SystemExit('peer_cpu: the script has no `if __name__ == "__main__":` block to replace')
    head = source[:found.start()]
    for pattern, replacement in REWRITES:
        head = re.sub(pattern, replacement, head)
    code_lines = [line.split("#")[0] for line in head.splitlines()]
    left = [line.strip() for line in code_lines if LEFT_BEHIND.search(line)]
    if left:
        raise SystemExit("peer_cpu: the rewrite left CUDA or half-precision code behind (the script changed?):\n  "
                         + "\n  ".join(left))
    return head


def load_peer(path: Path) -> dict:
    """Execute the rewritten script as a module and return its globals (`main`, `CifarNet`...)."""
    torch.compile = _identity_compile
    sys.argv = [str(path)]   # the scripts read their own source at import
    space = {"__name__": "peer", "__file__": str(path), "_WallClockEvent": _WallClockEvent}
    exec(compile(rewrite(path.read_text()), str(path), "exec"), space)
    return space


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer", type=Path, required=True, help="the peer's script (cifar10_speedrun.py, airbench94_muon.py)")
    parser.add_argument("--data", required=True, help="CIFAR-10 source, as for `python -m hlb_utils train`")
    parser.add_argument("--work", type=Path, required=True, help="folder for the peer's data files (cifar10/*.pt)")
    parser.add_argument("--out", type=Path, help="JSON file for the results (default: WORK/<script>.json)")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="run i uses torch.manual_seed(seed + i)")
    parser.add_argument("--train-subset", type=int, help="the first N training images only: a minutes-long smoke "
                        "check of the rewrite (the peer keeps its epochs, so its steps shrink with N)")
    args = parser.parse_args(argv)
    if not args.peer.is_file():
        parser.error(f"--peer {args.peer}: no such file")
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    from hlb_utils.data import data_label, load_cifar10, shuffled_indices

    data = load_cifar10(args.data)
    if args.train_subset:
        keep = shuffled_indices(len(data.train_labels))[:args.train_subset]
        data = data._replace(train_images=data.train_images[keep], train_labels=data.train_labels[keep])
    write_peer_cache(data, args.work / "cifar10")
    peer = load_peer(args.peer.resolve())
    os.chdir(args.work)   # the peers open "cifar10/{train,test}.pt" relative to where they run
    model = peer["CifarNet"]().float().to(memory_format=torch.channels_last)
    out = args.out or args.work / f"{args.peer.stem}.json"
    record = {"peer": args.peer.name, "data": data_label(args.data), "train_images": len(data.train_labels), "device": "cpu", "dtype": "fp32",
              "threads": torch.get_num_threads(), "torch": torch.__version__, "runs": []}
    for i in range(args.runs):
        torch.manual_seed(args.seed + i)
        start = time.perf_counter()
        result = peer["main"](i + 1, model)
        record["runs"].append({"seed": args.seed + i, "returned": _plain(result),
                               "wall_seconds": round(time.perf_counter() - start, 1)})
        out.write_text(json.dumps(record, indent=1))   # after every run: nothing lost if stopped
        print(f"run {i + 1}: main() returned {_plain(result)} in {record['runs'][-1]['wall_seconds']} s", flush=True)
    print(f"results in {out}")


def _plain(value):
    """Tensors and tuples from `main()` as JSON numbers and lists."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value.item() if isinstance(value, torch.Tensor) else value


if __name__ == "__main__":
    main()
