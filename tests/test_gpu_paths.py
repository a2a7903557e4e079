"""What train() does differently on a GPU, checked on the CPU.

CUDA is simulated where a choice depends on it (torch.cuda's answers are monkeypatched, or the one
function that asks is); everything that runs, runs on the CPU (`device="cpu"` is pinned), except one
timed loop on the "meta" device, which stands in for a GPU's memory (shapes, no data).
"""
from __future__ import annotations

import importlib.util
import json
import math
import sys
import types
from collections.abc import Callable
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from hlb_utils import compiling as comp
from hlb_utils import device as dev
from hlb_utils import data, evaluate, history, loader, model, notebook, optim, runs, train
from hlb_utils.config import get_profile

from test_device import simulate_gpu

TINY = dict(widths=(8, 16, 16), batch_size=100, epochs=2, tta="flip", eval_every=1, whiten_bias_epochs=1.0,
            device="cpu")


def tiny_cfg(**changes):
    return get_profile("quick", **{**TINY, **changes})


class BatchedProducts(TorchDispatchMode):
    """The dtype of every batched matrix product run while open: in a training step, Muon's
    Newton-Schulz (on each stack of filter banks) is the only one."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in (torch.ops.aten.bmm, torch.ops.aten.baddbmm):
            self.dtypes.append(out.dtype)
        return out


@pytest.mark.parametrize("gpu, setting, expected", [
    ("T4", "auto", torch.float16), ("T4", "fp32", torch.float32), ("A100", "auto", torch.bfloat16),
    ("A100", "fp16", torch.float16), ("A100", "fp32", torch.float32)])
def test_newton_schulz_runs_in_the_configs_precision(monkeypatch, gpu, setting, expected):
    # The precision is resolved for a simulated GPU; the optimiser then steps a CPU net with it.
    simulate_gpu(monkeypatch, gpu)
    cfg = tiny_cfg(dtype=setting)
    dtype = dev.pick_dtype(torch.device("cuda"), cfg.dtype)
    net = model.make_net(cfg)
    muon = optim.make_optimizers(net, cfg, dtype)[-1]
    net(torch.randn(4, 3, 32, 32)).square().sum().backward()
    with BatchedProducts() as products:
        muon.step()
    assert products.dtypes and set(products.dtypes) == {expected}


@pytest.mark.parametrize("setting, expected", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_train_hands_its_precision_to_muon(synthetic, setting, expected):
    with BatchedProducts() as products:
        result = train.train(tiny_cfg(dtype=setting, epochs=1), synthetic, verbose=False)
    assert result.precision == setting and products.dtypes and set(products.dtypes) == {expected}


def precision_on(monkeypatch, gpu: str, cfg) -> torch.dtype:
    """The compute precision `cfg` resolves to on a simulated GPU, for train(dtype=...) to run on the CPU."""
    simulate_gpu(monkeypatch, gpu)
    return dev.pick_dtype(torch.device("cuda"), cfg.dtype, cfg.weights)


def recording_optimizers(made: list, dtype: torch.dtype):
    """train()'s `make_optimizers`: the library's optimisers in `dtype`, kept in `made` to read their state."""
    def make(net, cfg):
        optimizers = optim.make_optimizers(net, cfg, dtype=dtype)
        made.extend(optimizers)
        return optimizers
    return make


@contextmanager
def autocast_seen(device: str = "cpu"):
    """Yield the autocast dtype of every module's forward pass while open (none when autocast is off):
    torch's global forward pre-hook reads the autocast state each pass runs under."""
    seen = []

    def record(module, args):
        if torch.is_autocast_enabled(device):
            seen.append(torch.get_autocast_dtype(device))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        yield seen
    finally:
        handle.remove()


def floating_dtypes(net) -> set:
    return {t.dtype for t in (*net.parameters(), *net.buffers()) if t.is_floating_point()}


@pytest.mark.parametrize("gpu, setting, weights, held, computed", [
    ("T4", "auto", "half", torch.float16, torch.float16), ("A100", "auto", "half", torch.float16, torch.float16),
    ("H100", "bf16", "half", torch.bfloat16, torch.bfloat16), ("A100", "auto", "fp32", torch.float32, torch.bfloat16)])
def test_half_weights_hold_the_net_and_the_momentum_in_the_compute_precision(synthetic, monkeypatch, gpu, setting,
                                                                             weights, held, computed):
    # weights="half" (hiverge's record): parameters and BatchNorm's running statistics in the compute
    # precision, the optimisers' momentum too, no autocast; 'auto' is then fp16 on every GPU. One step
    # of 32 images at 16 px: the CPU's fp16 convolutions train only through a slow reference kernel.
    cfg = tiny_cfg(dtype=setting, weights=weights, batch_size=32, train_subset=32, test_subset=64, epochs=1,
                   low_res=16, low_res_epochs=1, whiten_images=32)
    dtype, made = precision_on(monkeypatch, gpu, cfg), []
    with autocast_seen() as casts, BatchedProducts() as products:
        result = train.train(cfg, synthetic, verbose=False, dtype=dtype,
                             make_optimizers=recording_optimizers(made, dtype))
    assert result.precision == dev.dtype_name(computed) and set(products.dtypes) == {computed}
    assert floating_dtypes(result.model) == {held}
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in result.model.modules())
    buffers = [s["momentum_buffer"] for opt in made for s in opt.state.values()]
    assert any(isinstance(opt, optim.Muon) and opt.state for opt in made)
    assert buffers and {b.dtype for b in buffers} == {held}
    assert set(casts) == (set() if weights == "half" else {computed})
    assert result.history["train_loss"].notna().all() and math.isfinite(result.test_accuracy)


def small_real_images(cifar, n_train: int = 1000, n_test: int = 500):
    """A seeded sample of the replica (every class), average-pooled to 16 px: the CPU trains fp16
    convolutions only through a slow reference kernel, so a few fp16 steps must be small ones."""
    def pooled(images, n):
        pick = data.shuffled_indices(len(images), n, seed=0)
        return pick, F.avg_pool2d(images[pick].float(), 2).round().to(torch.uint8)

    train_pick, train_images = pooled(cifar.train_images, n_train)
    test_pick, test_images = pooled(cifar.test_images, n_test)
    return cifar._replace(train_images=train_images, train_labels=cifar.train_labels[train_pick],
                          test_images=test_images, test_labels=cifar.test_labels[test_pick])


def test_the_record_learns_in_fp16_weights_as_in_fp32(cifar, monkeypatch):
    # The record's settings with its precision on an A100 (fp16 weights, no loss scaling: the summed loss
    # keeps the gradients out of fp16's subnormals), 20 steps on real images, against the same run in fp32.
    images = small_real_images(cifar)
    cfg = get_profile("record", device="cpu", compile=False, widths=(8, 16, 16), batch_size=100, epochs=2,
                      whiten_images=500, eval_every=1)
    fp32 = train.train(cfg.replace(weights="fp32"), images, verbose=False)
    fp16 = train.train(cfg, images, verbose=False, dtype=precision_on(monkeypatch, "A100", cfg))
    assert (fp32.precision, fp16.precision) == ("fp32", "fp16")
    assert floating_dtypes(fp16.model) == {torch.float16}
    first, last = fp16.history["train_loss"]
    assert math.isfinite(last) and last < first and last < math.log(10) - 0.1
    losses = [torch.tensor(run.history["train_loss"].tolist()) for run in (fp16, fp32)]
    torch.testing.assert_close(*losses, rtol=0.02, atol=0)   # per epoch, within 2% of the fp32 run's
    assert not fp16.at_chance


def test_on_the_cpu_half_weights_change_nothing(synthetic):
    # 'auto' is fp32 on the CPU (and MPS) whatever `weights` says: the record's settings train there as before.
    assert get_profile("record").weights == "half"
    assert get_profile("cpu").weights == get_profile("quick").weights == "fp32"
    for name in ("cpu", "mps"):
        assert dev.pick_dtype(torch.device(name), "auto", "half") == torch.float32
    with pytest.raises(ValueError, match="weights"):
        tiny_cfg(weights="fp16")
    half = train.train(tiny_cfg(weights="half", epochs=1), synthetic, verbose=False)
    plain = train.train(tiny_cfg(epochs=1), synthetic, verbose=False)
    assert half.precision == "fp32" and floating_dtypes(half.model) == {torch.float32}
    cols = ["train_loss", "train_acc", "test_loss", "test_acc"]
    assert half.history[cols].equals(plain.history[cols]) and half.test_accuracy == plain.test_accuracy


def make_run(cfg, data):
    """What train() warms up, on the CPU, uncompiled: (the run, its optimisers, its training loader)."""
    train_loader, _ = train.make_loaders(cfg, data, "cpu")
    torch.manual_seed(cfg.seed)
    net = model.make_net(cfg)
    optimizers = optim.make_optimizers(net, cfg, torch.float32)
    plan = train.plan_steps(cfg, len(train_loader))
    for opt in optimizers:
        opt.total_steps = plan.total
    forward_loss = partial(train.forward_loss, loss_fn=partial(optim.smoothed_cross_entropy, reduction="sum"),
                           autocast=None)
    return comp.compile_run(net, forward_loss, None), optimizers, train_loader


def state_of(run, optimizers) -> dict:
    """Every tensor and number the warm-up could touch, copied."""
    return dict(net={k: v.clone() for k, v in run.net.state_dict().items()},
                state=[{id(p): {k: (v.clone() if torch.is_tensor(v) else v) for k, v in s.items()}
                        for p, s in opt.state.items()} for opt in optimizers],
                groups=[[{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
                        for opt in optimizers])


def test_warm_up_restores_weights_buffers_optimiser_state_and_lrs_bit_for_bit(synthetic):
    cfg = tiny_cfg(low_res=16, low_res_epochs=1, optimizer="muon", renorm_every=2, renorm_growth=15.0)
    run, optimizers, train_loader = make_run(cfg, synthetic)
    x, y = next(iter(train_loader))
    run.forward(x, y)[0].backward()   # momentum buffers exist and BatchNorm has statistics: a non-trivial state
    for opt in optimizers:
        opt.step()
        opt.zero_grad(set_to_none=True)
    train.set_lrs(optimizers, cfg, 7, 20, 10)
    for opt in optimizers:   # a step count, as Adam-like optimisers keep one
        for p in opt.state:
            opt.state[p]["step"] = torch.tensor(3.0)
    clock = optimizers[-1].state_dict()["renorm_clock"]
    before = state_of(run, optimizers)
    counts = [v for k, v in before["net"].items() if k.endswith("num_batches_tracked")]
    assert all(before["state"]) and counts and all(c == 1 for c in counts)
    comp.warm_up(run, optimizers, [(x, y), (loader.shrink(x, 16), y)])
    assert optimizers[-1].state_dict()["renorm_clock"] == clock   # Muon's renormalisation clock too
    after = state_of(run, optimizers)
    for name, tensor in before["net"].items():
        assert torch.equal(tensor, after["net"][name]), name
    for mine, theirs in zip(before["state"], after["state"]):
        assert mine.keys() == theirs.keys()
        for pid, s in mine.items():
            assert all(torch.equal(v, theirs[pid][k]) for k, v in s.items())
    assert before["groups"] == after["groups"]
    assert run.net.training


def test_warm_up_really_steps_the_optimisers(synthetic, monkeypatch):
    # The optimisers' first kernels must load in the warm-up, not in the first timed step.
    run, optimizers, train_loader = make_run(tiny_cfg(), synthetic)
    steps = []
    for opt in optimizers:
        monkeypatch.setattr(opt, "step", lambda *a, o=opt, real=opt.step: steps.append(type(o).__name__) or real())
    comp.warm_up(run, optimizers, [next(iter(train_loader))])
    assert sorted(set(steps)) == ["Muon", "SGD"] and len(steps) == 2 * comp.WARM_CALLS   # two optimisers


@pytest.mark.parametrize("compile", [False, True])
def test_a_cuda_run_warms_up_compiled_or_not_and_trains_as_if_it_had_not(synthetic, monkeypatch, compile):
    assert comp.needs_warm_up(torch.device("cuda")) and not comp.needs_warm_up(torch.device("cpu"))
    cfg = tiny_cfg(seed=4, compile=compile, low_res=16, low_res_epochs=1)
    plain = train.train(cfg.replace(compile=False), synthetic, verbose=False)
    # compiling.prepare asks needs_warm_up about the run's device: give the answer a CUDA device gets.
    monkeypatch.setattr(comp, "needs_warm_up", lambda device: True)
    if compile:   # the CPU has no compile here: an eager-backend torch.compile stands in
        eager_backend_compile(monkeypatch)
    warm_ups = []
    real = comp.warm_up
    monkeypatch.setattr(comp, "warm_up", lambda *args: warm_ups.append(1) or real(*args))
    warm = train.train(cfg, synthetic, verbose=False)
    assert warm_ups == [1] and warm.compile_seconds > 0
    cols = ["train_loss", "train_acc", "test_loss", "test_acc"]
    assert plain.history[cols].equals(warm.history[cols]) and plain.test_accuracy == warm.test_accuracy
    for a, b in zip(plain.model.state_dict().values(), warm.model.state_dict().values()):
        assert torch.equal(a, b)


def eager_backend_compile(monkeypatch, backend="eager"):
    """train() compiles only on CUDA; here its compile goes through compile_run with the `eager`
    backend, which traces like the real one (same guards, same recompiles) but builds no kernels."""
    monkeypatch.setattr(comp, "compile_choice", lambda enabled, device, mode:
                        ("default", "compiled (eager backend)") if enabled else (None, "off"))
    monkeypatch.setattr(comp, "BACKEND", backend)


def net_with_trainable_bn_scales(cfg):
    torch.manual_seed(cfg.seed)
    net = model.make_net(cfg)
    for module in net.modules():
        if isinstance(module, model.BatchNorm):
            module.weight.requires_grad_(True)
    return net


def test_the_ablations_configs_all_stay_compiled_in_one_process(synthetic, monkeypatch):
    # The variants of notebook 05's ablation, one after another as the notebook trains them: with
    # torch's default budget (8 compiled variants of the nets' one shared `forward`) the later rows ran
    # eager while their notes said "compiled". Two image sizes and multi-view TTA, as on a GPU.
    eager_backend_compile(monkeypatch)
    base = tiny_cfg(compile=True, dtype="bf16", epochs=1, low_res=16, low_res_epochs=0.5, tta="multi",
                    train_subset=400, test_subset=200)
    rows = [(base, None), (base.replace(dtype="fp32"), None), (base.replace(channels_last="off"), None),
            (base, net_with_trainable_bn_scales), (base.replace(net="seed", widths=(8, 8, 16, 16)), None),
            (base.replace(flip="random"), None), (base.replace(low_res=0), None)]
    gave_up = comp.dynamo_gave_up()
    for cfg, make in rows:
        result = train.train(cfg, synthetic, model=make(cfg) if make else None, verbose=False)
        assert result.compile_note == "compiled (eager backend)", cfg
    assert comp.dynamo_gave_up() == gave_up


def test_a_compile_that_falls_back_to_eager_says_so(synthetic, monkeypatch):
    # Forced: a budget of one compiled variant, and a run that needs more (two image sizes, evaluation).
    eager_backend_compile(monkeypatch)
    monkeypatch.setattr(comp, "RECOMPILE_LIMIT", 1)
    cfg = tiny_cfg(compile=True, epochs=1, low_res=16, low_res_epochs=0.5, seed=11)
    # torch's own patch() puts its config back as it was (monkeypatch's undo deletes the entry on pytest 9.2)
    with torch._dynamo.config.patch(recompile_limit=1):
        with pytest.warns(UserWarning, match="gave up part-way"):
            result = train.train(cfg, synthetic, verbose=False)
    assert result.compile_note == "compiled (eager backend); fell back to eager part-way"
    # the next compile starts afresh instead of inheriting the exhausted budget
    monkeypatch.setattr(comp, "RECOMPILE_LIMIT", 64)
    with torch._dynamo.config.patch(recompile_limit=8):
        assert train.train(cfg, synthetic, verbose=False).compile_note == "compiled (eager backend)"


def test_the_recompile_limit_is_raised_under_either_name_and_never_lowered():
    import types
    new, old, bare = (types.SimpleNamespace(recompile_limit=8), types.SimpleNamespace(cache_size_limit=8),
                      types.SimpleNamespace())
    for config, name in ((new, "recompile_limit"), (old, "cache_size_limit")):
        comp.raise_recompile_limit(config, 64)
        assert getattr(config, name) == 64
        comp.raise_recompile_limit(config, 4)
        assert getattr(config, name) == 64
    comp.raise_recompile_limit(bare, 64)   # an entry that is gone is left alone, no AttributeError
    assert vars(bare) == {}


def counting_backend(graphs: list):
    """A torch.compile backend that keeps each graph it is given and runs it as traced; each build is
    a profiler range, "test:graph_built", for `during_timed_epochs`."""
    def backend(graph_module, example_inputs):
        with torch.profiler.record_function("test:graph_built"):
            graphs.append(graph_module)
        return graph_module.forward
    return backend


def profiled(run: Callable):
    """`run()`'s result and the profiler's events: the loop marks each timed epoch "hlb:train_epoch"."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        result = run()
    return result, prof.events()


def during_timed_epochs(events, name: str) -> list[int]:
    """How many `name` ranges began inside each timed epoch ("hlb:train_epoch"), in order."""
    epochs = sorted((e.time_range.start, e.time_range.end) for e in events if e.name == "hlb:train_epoch")
    starts = [e.time_range.start for e in events if e.name == name]
    return [sum(begin <= t <= end for t in starts) for begin, end in epochs]


def computes(graph, op) -> bool:
    return any(node.op == "call_function" and node.target is op for node in graph.graph.nodes)


def test_step_scope_compiles_forward_and_loss_as_one_graph_per_image_size(synthetic, monkeypatch):
    # hiverge's record compiles the forward pass with its loss as one `fullgraph` function. Two image
    # sizes (progressive resizing), each with and without the whitening bias's gradient: four graphs,
    # all built in the warm-up, recompiled without giving up.
    torch._dynamo.reset()   # graphs cached by earlier tests would not reach the backend
    graphs = []
    eager_backend_compile(monkeypatch, backend=counting_backend(graphs))
    cfg = tiny_cfg(compile=True, compile_scope="step", epochs=1, low_res=16, low_res_epochs=0.5,
                   whiten_bias_epochs=0.25, train_subset=400, test_subset=200, seed=12)
    gave_up = comp.dynamo_gave_up()
    result, events = profiled(lambda: train.train(cfg, synthetic, verbose=False))
    assert result.compile_note == "compiled (eager backend), forward+loss as one graph"
    assert comp.dynamo_gave_up() == gave_up
    assert during_timed_epochs(events, "test:graph_built") == [0]   # graphs built while the clock runs
    steps = [g for g in graphs if computes(g, torch.nn.functional.cross_entropy)]
    assert len(steps) == 4 and all(computes(g, torch.conv2d) for g in steps)
    inputs = [node.meta.get("example_value") for g in steps for node in g.graph.nodes if node.op == "placeholder"]
    images = {tuple(t.shape) for t in inputs if torch.is_tensor(t) and t.dim() == 4 and t.shape[0] == cfg.batch_size}
    assert images == {(100, 3, 16, 16), (100, 3, 32, 32)}


def test_step_scope_trains_exactly_as_model_scope(synthetic, monkeypatch):
    eager_backend_compile(monkeypatch)
    cfg = tiny_cfg(compile=True, epochs=1, low_res=16, low_res_epochs=0.5, train_subset=400, test_subset=200,
                   seed=13)
    by_model = train.train(cfg, synthetic, verbose=False)
    by_step = train.train(cfg.replace(compile_scope="step"), synthetic, verbose=False)
    assert by_step.compile_note.endswith("forward+loss as one graph") and by_model.compile_note == "compiled (eager backend)"
    cols = ["train_loss", "train_acc", "test_loss", "test_acc"]
    assert by_model.history[cols].equals(by_step.history[cols]) and by_model.test_accuracy == by_step.test_accuracy
    for a, b in zip(by_model.model.state_dict().values(), by_step.model.state_dict().values()):
        assert torch.equal(a, b)


def test_compile_scope_is_checked_and_record_compiles_the_step():
    assert get_profile("record").compile_scope == "step"
    assert get_profile("airbench").compile_scope == get_profile("seed").compile_scope == "model"
    with pytest.raises(ValueError, match="TrainConfig.compile_scope"):
        tiny_cfg(compile_scope="everything")


class HostDeviceTraffic(TorchDispatchMode):
    """Records every operator that would make the host wait for a GPU: a copy between the host and
    the device (a synchronous copy waits for the queue), or a device value read on the host."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        devices = {t.device.type for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)}
        if len(devices) > 1 or (func is torch.ops.aten._local_scalar_dense.default and devices != {"cpu"}):
            self.seen.append(f"{func} {sorted(devices)}")
        return out


def test_the_timed_loop_never_waits_for_the_host(synthetic):
    # The "meta" device stands in for a GPU: its tensors have shapes and no data, so every step runs
    # (the loader's whole-epoch path of a GPU too) and any transfer between host and device shows.
    meta, stats = torch.device("meta"), dict(mean=[0.5] * 3, std=[0.25] * 3)
    cfg = tiny_cfg(low_res=16, low_res_epochs=1, cutout=8, flip="alternate")
    train_loader = loader.DeviceLoader(synthetic.train_images, synthetic.train_labels, cfg.batch_size,
                                       device=meta, translate=2, cutout=8, channels_last=True, **stats)
    test_loader = loader.DeviceLoader(synthetic.test_images, synthetic.test_labels, 100, train=False,
                                      device=meta, **stats)
    net = model.make_net(cfg).to(meta).to(memory_format=torch.channels_last)
    optimizers = optim.make_optimizers(net, cfg, torch.float32)
    plan = train.plan_steps(cfg, len(train_loader))
    forward = partial(train.forward_loss, net, loss_fn=partial(optim.smoothed_cross_entropy, reduction="sum"),
                      autocast=None)
    timer = train.Timer(meta)
    log = history.EpochLog(cfg, plan, timer, verbose=False)
    scores = partial(evaluate.epoch_scores, loader=test_loader)
    traffic, start, stop = HostDeviceTraffic(), timer.start, timer.stop
    with traffic:   # the mode sees what it is meant to see
        torch.arange(3).to(meta)
    assert len(traffic.seen) == 1
    traffic.seen.clear()
    timer.start = lambda: (start(), traffic.__enter__())
    timer.stop = lambda: (traffic.__exit__(None, None, None), stop())[1]
    with pytest.raises(RuntimeError, match="meta"):   # the epoch's summary reads the loss, after the clock
        train.train_loop(cfg, plan, net, forward, net, optimizers, train_loader, timer, log, scores)
    assert timer.total > 0 and traffic.seen == []


@pytest.mark.parametrize("gpu, line", [
    ("T4", "profile: record  device: cuda (Tesla T4, capability 7.5)  precision: fp16  compile: compile (default)"),
    # the record holds its net in half precision, so fp16 on every GPU (bf16 weights would lose small steps)
    ("H100", "profile: record  device: cuda (NVIDIA H100 80GB HBM3, capability 9.0)  precision: fp16  "
             "compile: compile (max-autotune)")])
def test_setup_says_what_a_gpu_run_will_use(monkeypatch, capsys, gpu, line):
    simulate_gpu(monkeypatch, gpu)
    monkeypatch.setitem(sys.modules, "triton", types.ModuleType("triton"))
    monkeypatch.delenv("HLB_PROFILE", raising=False)
    info = notebook.setup()
    assert capsys.readouterr().out.startswith(line)
    assert info["precision"] == line.split("precision: ")[1][:4]


def test_setup_on_the_cpu(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    info = notebook.setup("quick")
    assert (info["device"], info["precision"]) == ("cpu", "fp32") and info["compile"] == "off"
    assert "profile: quick  device: cpu  precision: fp32  compile: off" in capsys.readouterr().out


def load_profile_run():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "profile_run.py"
    spec = importlib.util.spec_from_file_location("profile_run", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("gpu, precision, floor", [
    ("A100", "fp32", "tf32"), ("H100", "fp32", "tf32"), ("T4", "fp32", "fp32"), ("V100", "fp32", "fp32"),
    ("A100", "bf16", "bf16"), ("T4", "fp16", "fp16")])
def test_the_flop_floor_is_timed_in_the_convs_precision(monkeypatch, gpu, precision, floor):
    # cuDNN runs fp32 convolutions in TF32 from capability 8.0 on: strict-fp32 matmuls would put the
    # floor several times too high there.
    simulate_gpu(monkeypatch, gpu)
    prof = load_profile_run()
    assert prof.conv_precision(torch.device("cuda"), precision) == floor
    assert prof.conv_precision(torch.device("cpu"), precision) == precision


def test_the_tf32_floor_restores_the_matmul_setting():
    prof = load_profile_run()
    before = torch.backends.cuda.matmul.allow_tf32
    assert prof.matmul_rate(torch.device("cpu"), "tf32", seconds=0.01) > 0
    assert torch.backends.cuda.matmul.allow_tf32 == before


def test_run_records_name_a_fallback_to_eager_in_any_run(synthetic, tmp_path):
    first = train.train(tiny_cfg(epochs=1), synthetic, verbose=False)
    second = train.train(tiny_cfg(epochs=1, seed=1), synthetic, verbose=False)
    first.compile_note, second.compile_note = "compiled (default)", "compiled (default); fell back to eager part-way"
    out = runs.write_records(runs.RunsResult(first.config, [first, second]), tmp_path)
    assert json.loads((out / "summary.json").read_text())["compile"] == \
        "compiled (default) | compiled (default); fell back to eager part-way"
    assert list(runs.RunsResult(first.config, [first, second]).table["compile"]) == \
        [first.compile_note, second.compile_note]


def test_a_series_trains_one_net_in_place_warms_every_graph_and_compiles_nothing_once_timed(synthetic, monkeypatch,
                                                                                              request):
    # On CUDA a series keeps one net per shape (CUDA graphs are bound to its tensors): re-initialised in
    # place, it trains as a new net would. Every compiled graph (training steps with and without the
    # whitening bias's gradient, Muon's update, the evaluations at their TTA sizes) is called at least
    # WARM_CALLS times before the clock first starts (with CUDA graphs the 1st call runs eager and the
    # 2nd records), and nothing compiles after that, final evaluation included, nor in a later run.
    torch._dynamo.reset()
    graphs = []

    def backend(graph_module, example_inputs):
        index = len(graphs)
        with torch.profiler.record_function("test:graph_built"):
            graphs.append(graph_module)

        def run(*args):
            with torch.profiler.record_function(f"test:graph_call {index}"):
                return graph_module.forward(*args)
        return run

    eager_backend_compile(monkeypatch, backend=backend)
    monkeypatch.setattr(comp, "needs_warm_up", lambda device: True)
    train.forget_nets()
    request.addfinalizer(train.forget_nets)
    cfg = tiny_cfg(compile=True, compile_scope="step", epochs=2, whiten_bias_epochs=0.25, train_subset=400,
                   test_subset=300, tta="selective", renorm_every=2)
    first, events = profiled(lambda: train.train(cfg.replace(seed=1), synthetic, verbose=False, reuse_net=True))
    # before the clock first starts (the first "hlb:train_epoch" range): graphs built, and each one's calls
    clock = min(e.time_range.start for e in events if e.name == "hlb:train_epoch")
    before = [e.name for e in events if e.time_range.start < clock]
    built = before.count("test:graph_built")
    warm_calls = [before.count(f"test:graph_call {i}") for i in range(len(graphs))]
    assert built == len(graphs) > 0 and min(warm_calls) >= 3
    storage = [p.data_ptr() for p in first.model.parameters()]
    weights_after_first = {k: v.clone() for k, v in first.model.state_dict().items()}
    second = train.train(cfg.replace(seed=2), synthetic, verbose=False, reuse_net=True)
    assert len(graphs) == built and second.model is first.model
    assert [p.data_ptr() for p in second.model.parameters()] == storage
    # run 1 keeps its own weights, on the CPU
    assert all(torch.equal(v, first.weights[k]) for k, v in weights_after_first.items())
    assert first.weights["head.weight"].device.type == "cpu"
    # re-initialised in place, the net trains as a new one does
    fresh = train.train(cfg.replace(seed=2), synthetic, verbose=False, reuse_net=False)
    assert fresh.model is not second.model and fresh.weights is None
    cols = ["train_loss", "train_acc", "test_loss", "test_acc"]
    assert fresh.history[cols].equals(second.history[cols]) and fresh.test_accuracy == second.test_accuracy
    for a, b in zip(fresh.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)
