"""Operators per training step, ours (`record` profile) against hiverge's cifar10_speedrun.py, on the CPU.

On a GPU the record's step is short enough that each kernel launch counts, so this counts what a step
launches: every aten operator the forward pass, the backward pass, the optimisers and the bookkeeping
dispatch (a `TorchDispatchMode`), at the same small batch for both, in fp16 as both run on a GPU.
Both are counted as their CUDA path runs: every `torch.compile`d function is compiled (through a
counting backend) and each call of a compiled graph counts as one operator, however many it fuses
(the forward step's graphs are CUDA graphs there, one launch each); ours steps SGD fused (`fused=True`,
as on CUDA; torch's CPU has the same fused kernel) and compiles Muon's update as `compiling.prepare`
does on CUDA. Left out, on both sides: the loader's work for the next batch, and our per-step
bookkeeping (`history.EpochLog.step`: a check of the loss on the CPU only, which a GPU run does once an
epoch, and on every device one copy of the step's loss for the run's per-step record).

Two kinds of step are reported: an ordinary one, and one where Muon rescales the weights (hiverge:
every 2..17 steps); both after the whitening bias stopped, and never the last of an epoch (whose
evaluation follows it).

    python benchmarks/op_count.py --peer .carry/cifar10_speedrun.py [--json]

With --json the last line is {"ours": {"ordinary": N, "rescaling": N}, "hiverge": {...}}.
"""
from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import types
from collections import Counter
from pathlib import Path

import torch
from torch._dynamo.backends.common import aot_autograd
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hlb_utils import compiling, data as data_mod, history, optim as optim_mod, train as train_mod  # noqa: E402
from hlb_utils.config import get_profile  # noqa: E402

BATCH, STEPS_PER_EPOCH, EPOCHS = 16, 8, 2   # two epochs of the run's steps are counted
RUN_EPOCHS = 7.59   # the run both are planned for (Muon's rescaling period grows with its progress)


class OpCounter(TorchDispatchMode):
    """Counts aten operators while `on`; a compiled graph's call counts as one ("graph")."""

    def __init__(self) -> None:
        super().__init__()
        self.on, self.ops = False, Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.on:
            self.ops[str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))

    def total(self) -> int:
        return sum(self.ops.values())


COUNTER = OpCounter()


def _counted_graph(gm, example_inputs):
    """aot_autograd's compiler for the forward and the backward graph: runs the graph unseen, counts one."""
    def run(args):
        was, COUNTER.on = COUNTER.on, False
        if was:
            COUNTER.ops["graph"] += 1
        try:
            return gm(*args)
        finally:
            COUNTER.on = was
    run._boxed_call = True
    return run


COUNTING_BACKEND = aot_autograd(fw_compiler=_counted_graph, bw_compiler=_counted_graph)
_real_compile = torch.compile


def counting_compile(fn=None, **options):
    """torch.compile with the counting backend (mode ignored). Dynamo skips any frame that runs under a
    dispatch mode, so the compiled function is called with the counter's mode lifted; its graphs count
    themselves (and the backward graph runs under the mode, from the autograd engine)."""
    if fn is None:
        return lambda f: counting_compile(f, **options)
    if isinstance(fn, torch.nn.Module):
        return fn
    compiled = _real_compile(fn, backend=COUNTING_BACKEND, fullgraph=options.get("fullgraph", False),
                             dynamic=options.get("dynamic"))

    @functools.wraps(fn)
    def call(*args, **kwargs):
        if torch.compiler.is_compiling():
            return compiled(*args, **kwargs)
        with _disable_current_modes():
            return compiled(*args, **kwargs)
    return call


def mark_step(marks: list, rescaled: list, one_step: Counter, rescaling: bool) -> None:
    """At the start of a step: the running op count, whether the step before rescaled, and (between the
    5th and 6th marks) the ops of one ordinary step by name."""
    rescaled.append(rescaling)
    marks.append(COUNTER.total())
    if len(marks) == 5:
        one_step.clear()
        one_step.update(COUNTER.ops)
    if len(marks) == 6:
        one_step.subtract(COUNTER.ops)


def per_step(marks: list, rescaled: list, first: int, last_of_epoch: set) -> dict:
    """The median count of ordinary and rescaling steps from the counter's running totals at each step."""
    kinds = {"ordinary": [], "rescaling": []}
    for step in range(first, len(marks) - 1):
        if step not in last_of_epoch:
            kinds["rescaling" if rescaled[step] else "ordinary"].append(marks[step + 1] - marks[step])
    return {kind: int(statistics.median(v)) if v else None for kind, v in kinds.items()}


def random_data(n_train: int, n_test: int) -> data_mod.Cifar10:
    gen = torch.Generator().manual_seed(0)
    def images(n):
        return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    def labels(n):
        return torch.arange(n) % 10
    return data_mod.Cifar10(images(n_train), labels(n_train), images(n_test), labels(n_test),
                            [str(c) for c in range(10)], "random")


def count_ours(widths: tuple) -> tuple[dict, Counter]:
    """Our record profile's steps, compiled and stepped as on CUDA (see the module docstring)."""
    cfg = get_profile("record", batch_size=BATCH, epochs=RUN_EPOCHS, train_subset=BATCH * STEPS_PER_EPOCH,
                      test_subset=64, widths=widths, device="cpu")   # fp16: as a GPU resolves 'auto' (patched below)
    made, marks, rescaled, one_step = [], [], [], Counter()
    real_make = optim_mod.make_optimizers

    def make_optimizers(net, cfg, dtype=None):
        made.extend(real_make(net, cfg, dtype, fused=True))
        return made

    class CountingTimer(train_mod.Timer):   # counting on while the clock runs
        def start(self):
            COUNTER.on = True
            super().start()

        def stop(self):
            COUNTER.on = False
            return super().stop()

    real_iter, real_step = train_mod.DeviceLoader.__iter__, history.EpochLog.step

    def batches(loader):
        inner = real_iter(loader)
        if not loader.train:
            yield from inner
            return
        while True:
            if len(marks) == EPOCHS * STEPS_PER_EPOCH:
                marks.append(COUNTER.total())
                raise KeyboardInterrupt   # train() keeps the finished epochs and stops
            was, COUNTER.on = COUNTER.on, False   # the loader's own work is not the step's
            try:
                batch = next(inner)
            except StopIteration:
                COUNTER.on = was
                return
            COUNTER.on = was
            if was:
                muon = made[-1]
                mark_step(marks, rescaled, one_step, bool(marks) and muon.last_renorm == muon.steps_done)
            yield batch

    def log_step(self, *args):
        was, COUNTER.on = COUNTER.on, False   # on the CPU only: a NaN check and the progress line
        try:
            real_step(self, *args)
        finally:
            COUNTER.on = was

    patches = [(compiling, "compile_choice", lambda enabled, device, mode: (mode, f"compiled ({mode}), counted")),
               (compiling, "needs_warm_up", lambda device: True), (optim_mod, "make_optimizers", make_optimizers),
               (train_mod, "Timer", CountingTimer), (train_mod.DeviceLoader, "__iter__", batches),
               (history.EpochLog, "step", log_step), (torch, "compile", counting_compile),
               (train_mod, "pick_dtype", lambda device, name="auto", weights="fp32": torch.float16)]
    with patched(patches), COUNTER:
        train_mod.train(cfg, random_data(BATCH * STEPS_PER_EPOCH, 64), verbose=False)
    rescaled = rescaled[1:] + [False]   # a step's mark is taken before it: whether it rescaled shows at the next
    plan = train_mod.plan_steps(cfg, STEPS_PER_EPOCH)
    last = {e * STEPS_PER_EPOCH - 1 for e in range(1, EPOCHS + 1)}
    return per_step(marks, rescaled, plan.whiten, last), -one_step


class _Stop(Exception):
    pass


def count_hiverge(path: Path) -> tuple[dict, Counter]:
    """hiverge's own `main()`, on random fp16 images from a stand-in loader, for two epochs' steps."""
    source = path.read_text()
    source = source.split('\nif __name__ == "__main__":')[0]
    made, marks, rescaled, one_step = [], [], [], Counter()

    class Event:   # their CUDA timer
        def __init__(self, **_):
            pass

        def record(self):
            pass

        def elapsed_time(self, other):
            return 0.0

    with patched([(torch, "compile", counting_compile), (torch.cuda, "Event", Event),
                  (torch.cuda, "synchronize", lambda *a: None)]), COUNTER:
        COUNTER.on = False
        module = types.ModuleType("cifar10_speedrun_peer")
        module.__file__ = str(path)
        exec(compile(source, str(path), "exec"), module.__dict__)

        class Muon(module.Muon):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                made.append(self)

        class Loader:
            def __init__(self, path, train=True, batch_size=500, aug=None):
                n = BATCH * STEPS_PER_EPOCH if train else 64
                gen = torch.Generator().manual_seed(1)
                self.images = torch.rand(n, 3, 32, 32, generator=gen).half().to(memory_format=torch.channels_last)
                self.labels = torch.arange(n) % 10
                self.batch_size, self.train = BATCH, train
                self.normalize = lambda x: x

            def __len__(self):
                return len(self.images) // self.batch_size

            def __iter__(self):
                for i in range(len(self)):
                    if len(marks) == EPOCHS * STEPS_PER_EPOCH:
                        marks.append(COUNTER.total())
                        raise _Stop
                    muon = made[-1]
                    mark_step(marks, rescaled, one_step, bool(marks) and muon.last_norm_step == muon.step_count)
                    COUNTER.on = True   # from the first step on; off while the next batch is cut
                    batch = (self.images[i * BATCH:(i + 1) * BATCH], self.labels[i * BATCH:(i + 1) * BATCH])
                    yield batch
                    COUNTER.on = False

        module.Muon, module.CifarLoader = Muon, Loader
        model = module.CifarNet()
        try:
            module.main(1, model)
        except _Stop:
            pass
        COUNTER.on = False
    rescaled = rescaled[1:] + [False]
    whiten = -(-19 * STEPS_PER_EPOCH // 100)   # their ceil(0.19 * steps per epoch)
    last = {e * STEPS_PER_EPOCH - 1 for e in range(1, EPOCHS + 1)}
    return per_step(marks, rescaled, whiten, last), -one_step


class patched:
    """Set attributes for the duration of a with block, and put them back."""

    def __init__(self, changes: list) -> None:
        self.changes, self.saved = changes, []

    def __enter__(self):
        for obj, name, value in self.changes:
            self.saved.append((obj, name, getattr(obj, name)))
            setattr(obj, name, value)

    def __exit__(self, *exc):
        for obj, name, value in reversed(self.saved):
            setattr(obj, name, value)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", type=Path, required=True, help="hiverge's cifar10_speedrun.py")
    parser.add_argument("--widths", default="64,256,256", help="our net's widths (counts do not depend on them)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of the counts")
    args = parser.parse_args(argv)
    if not args.peer.is_file():
        parser.error(f"--peer {args.peer}: no such file")
    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    ours, our_step = count_ours(tuple(int(w) for w in args.widths.split(",")))
    torch._dynamo.reset()
    theirs, their_step = count_hiverge(args.peer)
    print(f"aten operators per training step, batch {BATCH}, fp16, compiled graphs counted as one each")
    print(f"{'':10} {'ordinary':>9} {'rescaling':>10}")
    for name, counts in (("ours", ours), ("hiverge", theirs)):
        print(f"{name:10} {counts['ordinary']!s:>9} {counts['rescaling']!s:>10}")
    for name, step in (("ours", our_step), ("hiverge", their_step)):
        print(f"{name}, one step: " + ", ".join(f"{op} {n}" for op, n in step.most_common() if n))
    if args.json:
        print(json.dumps({"ours": ours, "hiverge": theirs}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
