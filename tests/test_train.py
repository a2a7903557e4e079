"""The training engine: determinism, learning on real images, faults, run records, TTA (statistics: test_stats.py)."""
import json
import math
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch

from hlb_utils import config, evaluate, history, loader, optim, runs, train
from hlb_utils import compiling as comp
from hlb_utils import device as dev
from hlb_utils.config import get_profile

# A tiny config for the synthetic data: seconds, not minutes.
TINY = dict(widths=(8, 16, 16), batch_size=100, epochs=2, tta="flip", eval_every=1, whiten_bias_epochs=1.0,
            device="cpu")   # pinned: these tests assert CPU behaviour, on GPU machines too


def tiny_cfg(**changes):
    return get_profile("quick", **{**TINY, **changes})


def compile_on_the_cpu(monkeypatch, compile_model) -> None:
    """train() compiles on CUDA only: give it the compile choice a GPU gets, and a stand-in for
    `compiling.compile_model(model, mode, backend)`."""
    monkeypatch.setattr(comp, "compile_choice", lambda enabled, device, mode:
                        (mode, f"compiled ({mode})") if enabled else (None, "off"))
    monkeypatch.setattr(comp, "compile_model", compile_model)
    monkeypatch.setattr(comp, "BACKEND", "eager")   # Muon's update: traced, no kernels built


def fail_at_epoch(monkeypatch, at_call: int, error: BaseException) -> None:
    """Raise `error` when the training loader is asked for its `at_call`-th epoch (counted from 1)."""
    calls, original = {"n": 0}, loader.DeviceLoader.__iter__

    def epoch(self):
        calls["n"] += self.train
        if self.train and calls["n"] == at_call:
            raise error
        return original(self)

    monkeypatch.setattr(loader.DeviceLoader, "__iter__", epoch)


def test_same_seed_same_history(synthetic):
    a = train.train(tiny_cfg(seed=3), synthetic, verbose=False)
    b = train.train(tiny_cfg(seed=3), synthetic, verbose=False)
    cols = ["train_loss", "train_acc", "test_loss", "test_acc"]
    pd.testing.assert_frame_equal(a.history[cols], b.history[cols])
    assert a.test_accuracy == b.test_accuracy
    c = train.train(tiny_cfg(seed=4), synthetic, verbose=False)
    assert not a.history["train_loss"].equals(c.history["train_loss"])


def test_history_and_result_fields(synthetic):
    res = train.train(tiny_cfg(epochs=3), synthetic, verbose=False)
    assert list(res.history["epoch"]) == [1, 2, 3]
    assert set(train.COLUMNS) <= set(res.history.columns)
    assert res.history["train_seconds"].is_monotonic_increasing
    assert res.train_seconds > 0 and res.wall_seconds >= res.train_seconds
    assert math.isclose(res.history["tta_acc"].iloc[-1], res.test_accuracy)
    assert 0 <= res.test_accuracy <= 1 and res.device == "cpu"


def test_steps_record_each_step_loss_and_lr_in_step_with_the_history(synthetic):
    # 1000 images in batches of 100: every step sees as many images, so the epoch's mean of the steps'
    # per-image losses is the history's train_loss; the lr is the schedule's multiplier at that step
    res = train.train(tiny_cfg(epochs=3), synthetic, verbose=False)
    steps = res.steps
    plan = train.plan_steps(res.config, 10)
    assert list(steps.columns) == history.STEP_COLUMNS and list(steps["step"]) == list(range(plan.total))
    assert list(steps["epoch"]) == [s // 10 + 1 for s in range(plan.total)]
    by_epoch = steps.groupby("epoch")["loss"].mean()
    assert list(by_epoch.index) == list(res.history["epoch"])
    assert by_epoch.to_numpy() == pytest.approx(res.history["train_loss"].to_numpy(), rel=1e-5)
    assert list(steps["lr"]) == pytest.approx([optim.lr_multiplier(res.config, s, plan.total) for s in steps["step"]])
    assert list(steps.groupby("epoch")["lr"].last()) == pytest.approx(list(res.history["lr"]))


def test_steps_of_finished_epochs_only_when_interrupted(synthetic, monkeypatch):
    fail_at_epoch(monkeypatch, 2, KeyboardInterrupt())
    res = train.train(tiny_cfg(epochs=3), synthetic, verbose=False)
    assert res.interrupted and list(res.steps["epoch"].unique()) == [1] and len(res.steps) == 10


@pytest.mark.parametrize("changes", [{}, {"batch_size": 300}, {"train_subset": 450, "batch_size": 100}])
def test_steps_per_epoch_is_what_the_loader_yields(synthetic, changes):
    cfg = tiny_cfg(**changes)   # used by the lr-schedule plots and the FLOP count, so it must agree
    loader, _ = train.make_loaders(cfg, synthetic, "cpu")
    assert cfg.steps_per_epoch(len(synthetic.train_labels)) == len(loader) == sum(1 for _ in loader)


def test_learns_synthetic_far_above_chance(synthetic):
    res = train.train(tiny_cfg(epochs=4), synthetic, verbose=False)
    assert res.test_accuracy > 0.5  # chance is 0.1


def test_mixed_precision_path_learns(synthetic):
    # The path GPUs take (autocast to bf16, loader batches in bf16, Muon in bf16), run on the CPU,
    # with progressive resizing on so that shrinking half-precision batches is exercised too.
    res = train.train(tiny_cfg(epochs=4, dtype="bf16", low_res=24, low_res_epochs=2), synthetic, verbose=False)
    assert res.precision == "bf16"
    assert res.history["train_loss"].notna().all()
    assert res.test_accuracy > 0.5  # chance is 0.1


def test_progressive_resizing_stages_show_the_net_each_size_for_its_steps(synthetic):
    # first_res: a first, smaller stage inside the low-resolution epochs (2 steps at 16 px, 2 at 24, 4 at 32)
    cfg = tiny_cfg(epochs=2, train_subset=400, low_res=24, low_res_epochs=1, first_res=16, first_res_epochs=0.5,
                   tta="none", eval_every=0)
    plan = train.plan_steps(cfg, cfg.steps_per_epoch(len(synthetic.train_labels)))
    assert (plan.first_res, plan.low_res, plan.total) == (2, 4, 8)
    seen = []

    class Sizes(torch.nn.Module):
        """A small net that notes the size of each training batch it sees."""

        def __init__(self):
            super().__init__()
            self.conv, self.head = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Linear(8, 10)

        def forward(self, x):
            if self.training:
                seen.append(x.shape[-1])
            return self.head(self.conv(x).amax((2, 3)))

    train.train(cfg, synthetic, model=Sizes(), verbose=False)
    assert seen == [16, 16, 24, 24, 32, 32, 32, 32]
    seen.clear()
    train.train(cfg.replace(first_res=0), synthetic, model=Sizes(), verbose=False)   # off: one small stage
    assert seen == [24] * 4 + [32] * 4


def test_user_model_trains(synthetic):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))
    before = net[0].weight.detach().clone()
    # airbench94's SGD lr, per 1024 examples (config.sgd_lr_scale converts it)
    res = train.train(tiny_cfg(optimizer="sgd", lr=11.5, head_lr=11.5), synthetic, model=net, verbose=False)
    assert res.model is net and len(res.history) == 2
    assert res.history["train_loss"].notna().all()
    assert (net[0].weight.detach() - before).abs().max() > 1e-3   # the learner's net is the one trained


def test_learners_loss_is_the_one_trained_on(synthetic):
    # Plain cross-entropy plus a constant: the same gradients as our loss without smoothing, so the
    # weights (and test accuracy) must match that run, while the logged loss carries the constant.
    calls = {"n": 0}

    def shifted_loss(logits, labels):
        calls["n"] += 1
        return torch.nn.functional.cross_entropy(logits, labels, reduction="sum") + 1000.0

    cfg = tiny_cfg(label_smoothing=0.0, seed=2)
    ours = train.train(cfg, synthetic, verbose=False)
    theirs = train.train(cfg, synthetic, verbose=False, loss_fn=shifted_loss)
    steps = cfg.steps_per_epoch(len(synthetic.train_labels)) * cfg.epochs
    assert calls["n"] == steps
    per_example = 1000.0 / cfg.batch_size
    torch.testing.assert_close(torch.tensor(theirs.history["train_loss"].to_numpy() - per_example),
                               torch.tensor(ours.history["train_loss"].to_numpy()), rtol=1e-5, atol=1e-5)
    assert theirs.test_accuracy == ours.test_accuracy


def test_learners_optimiser_factory_is_used_and_scheduled(synthetic):
    made = []

    def frozen_sgd(net, cfg):   # one plain SGD at lr 0: nothing may move, whatever the schedule
        made.append(torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.0))
        return made[-1]

    from hlb_utils.model import make_net

    net = make_net(tiny_cfg())
    before = {k: v.clone() for k, v in net.named_parameters() if v.requires_grad}
    train.train(tiny_cfg(), synthetic, model=net, verbose=False, make_optimizers=frozen_sgd)
    assert len(made) == 1
    for name, value in net.named_parameters():
        if name in before:
            assert torch.equal(value, before[name]), f"{name} moved under an lr-0 optimiser"

    def sgd_at(net, cfg):   # a learner's list of optimisers, without initial_lr: the schedule adds it
        made[:] = [torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True)]
        return made

    cfg = tiny_cfg(epochs=3, schedule="linear", end_lr=0.1)
    res = train.train(cfg, synthetic, verbose=False, make_optimizers=sgd_at)
    group = made[0].param_groups[0]
    assert group["initial_lr"] == 0.05 and group["lr"] < 0.05
    assert math.isclose(group["lr"], 0.05 * res.history["lr"].iloc[-1])
    assert res.test_accuracy > 0.3   # chance is 0.1


class KeepsGradient(torch.nn.Parameter):
    """A parameter that stays trainable whatever `requires_grad_` asks (the loop's stop has no effect)."""

    def requires_grad_(self, requires_grad: bool = True):
        return self


def test_whitening_bias_gradient_stops_with_its_training(synthetic):
    # Once the whitening bias's lr reaches 0 it gets no gradient, so the backward pass ends at the first
    # conv group: the weights come out bit for bit as when the gradient is kept (the lr-0 steps move
    # nothing), the stem's backward runs only during the bias's training steps, and the net leaves
    # with the bias trainable again.
    from hlb_utils.model import make_net

    cfg = tiny_cfg(epochs=2, whiten_bias_epochs=0.5, train_subset=400)   # 4 steps an epoch, the bias trains 2
    plan = train.plan_steps(cfg, 4)
    stem_backwards = []

    def count_stem_backwards(net):
        net.whiten.bias.register_hook(lambda grad: stem_backwards.append(1))
        return net

    stopped = count_stem_backwards(make_net(cfg))
    torch.manual_seed(cfg.seed)   # the same initial weights twice
    stopped.load_state_dict(make_net(cfg).state_dict())
    reference = make_net(cfg)
    reference.load_state_dict(stopped.state_dict())
    train.train(cfg, synthetic, model=stopped, verbose=False)
    assert len(stem_backwards) == plan.whiten == 2
    assert stopped.whiten.bias.requires_grad

    # the schedule without the stop: the reference's bias ignores being switched off
    reference.whiten.bias = KeepsGradient(reference.whiten.bias.detach().clone())
    stem_backwards.clear()
    train.train(cfg, synthetic, model=count_stem_backwards(reference), verbose=False)
    assert len(stem_backwards) == plan.total   # every step's backward reached the stem
    for (name, a), b in zip(stopped.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name


def test_seed_net_and_ema(synthetic):
    cfg = get_profile("seed", widths=(8, 16, 16, 16), batch_size=100, epochs=2, ema_epochs=1)
    res = train.train(cfg, synthetic, verbose=False)
    assert res.history["ema_acc"].notna().iloc[-1]


class BlowsUp(torch.nn.Module):
    """A model whose logits turn infinite from the third training call on."""

    def __init__(self):
        super().__init__()
        self.head, self.calls = torch.nn.Linear(3, 10), 0

    def forward(self, x):
        self.calls += self.training
        logits = self.head(x.mean((2, 3)))
        return logits * float("inf") if self.calls >= 3 else logits


def test_compile_warm_up_leaves_no_trace(synthetic, monkeypatch):
    # A stand-in for torch.compile's wrapper (real compilation needs CUDA here): the warm-up steps it
    # runs before the clock starts must not change the weights, the BN statistics or the data order.
    calls = {"n": 0}

    class FakeCompiled:   # like torch.compile's OptimizedModule: callable, the net at `_orig_mod`
        def __init__(self, net):
            self._orig_mod = net

        def __call__(self, x):
            calls["n"] += 1
            return self._orig_mod(x)

    plain = train.train(tiny_cfg(seed=5), synthetic, verbose=False)
    compile_on_the_cpu(monkeypatch, lambda net, mode, backend="inductor": FakeCompiled(net))
    warm = train.train(tiny_cfg(seed=5, compile=True), synthetic, verbose=False)
    assert calls["n"] > 3 and warm.compile_note == "compiled (max-autotune)" and warm.compile_seconds > 0
    cols = ["train_loss", "train_acc", "test_loss", "test_acc"]
    pd.testing.assert_frame_equal(plain.history[cols], warm.history[cols])
    assert plain.test_accuracy == warm.test_accuracy


@pytest.mark.skipif(not shutil.which("g++"), reason="torch.compile's CPU backend needs a C++ compiler")
def test_real_compile_matches_eager_and_is_reused(synthetic, monkeypatch):
    # The library compiles on CUDA only; here torch.compile's CPU backend stands in, which traces the
    # same graphs (training step at both image sizes, evaluation, TTA). Slow with a cold compile cache
    # (minutes on 2 cores); a second run's new net reuses the compiled code.
    from torch._dynamo.utils import counters

    # the library's own compile_model, with the CPU backend
    monkeypatch.setattr(comp, "compile_choice", lambda enabled, device, mode:
                        ("default", "compiled (cpu backend)") if enabled else (None, "off"))
    # progressive resizing: the first epoch at 16 px, so the run needs two training graphs
    cfg = tiny_cfg(tta="multi", compile=True, low_res=16, low_res_epochs=1)
    # the profiler sees each timed epoch (the loop's "hlb:train_epoch" range) and each graph dynamo
    # compiles (its "... compile_inner (dynamo_timed)" ranges)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        first = train.train(cfg.replace(seed=0), synthetic, verbose=False)
        graphs = counters["stats"]["unique_graphs"]
        second = train.train(cfg.replace(seed=1), synthetic, verbose=False)
    events = prof.events()
    epochs = [(e.time_range.start, e.time_range.end) for e in events if e.name == "hlb:train_epoch"]
    compiles = [e.time_range.start for e in events if "compile_inner" in e.name]
    assert counters["stats"]["unique_graphs"] == graphs > 0   # the second net compiled nothing new
    assert not counters["graph_break"]                         # the whole net is one graph
    assert len(epochs) >= 4 and compiles   # all compiling in the warm-up, none while timed
    assert not [t for t in compiles for begin, end in epochs if begin <= t <= end]
    eager = train.train(cfg.replace(seed=1, compile=False), synthetic, verbose=False)
    assert first.compile_note == second.compile_note == "compiled (cpu backend)"
    assert abs(second.test_accuracy - eager.test_accuracy) <= 0.02
    assert second.compile_seconds < first.compile_seconds


def test_compile_failure_falls_back_to_eager(synthetic, monkeypatch):
    def broken_compile(net, mode, backend="inductor"):
        def compiled(x):
            raise RuntimeError("backend cannot build this graph")
        return compiled

    compile_on_the_cpu(monkeypatch, broken_compile)
    with pytest.warns(UserWarning, match="torch.compile failed on the first step"):
        res = train.train(tiny_cfg(compile=True, epochs=3), synthetic, verbose=False)
    assert res.compile_note.startswith("compile failed: RuntimeError")
    assert res.test_accuracy > 0.3 and len(res.history) == 3


def test_nan_loss_is_caught_with_the_step(synthetic):
    with pytest.raises(history.TrainingDiverged, match=r"at step 2; try a lower learning rate"):
        train.train(tiny_cfg(optimizer="sgd"), synthetic, model=BlowsUp(), verbose=False)


def test_interrupt_keeps_history(synthetic, monkeypatch):
    fail_at_epoch(monkeypatch, 2, KeyboardInterrupt())
    res = train.train(tiny_cfg(epochs=3), synthetic, verbose=False)
    assert res.interrupted and len(res.history) == 1


@pytest.mark.parametrize("field,value", [("batch_size", 0), ("lr", -1.0), ("flip", "sideways"),
                                         ("widths", (8, 16)), ("epochs", 0), ("brightness", -0.1),
                                         ("muon_batch", "all"), ("ns_coeffs", (3.4, -4.7)),
                                         ("renorm_every", 0), ("whiten_act", "tanh"), ("tta", "best"),
                                         ("first_res", 16), ("first_res", 4), ("first_res_epochs", -1.0)])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"TrainConfig.{field}"):
        tiny_cfg(**{field: value})


def test_misspelt_field_is_named_with_the_nearest_ones():
    # notebook 07 sweeps a knob by name: a typo must say so, not raise a bare TypeError
    with pytest.raises(ValueError, match=r"no field 'epoch'; did you mean 'epochs'"):
        tiny_cfg().replace(epoch=3)
    with pytest.raises(ValueError, match=r"no field 'btach_size'; did you mean 'batch_size'"):
        get_profile("quick", btach_size=100)
    assert tiny_cfg().replace(epochs=3).epochs == 3


def test_profiles_resolve(monkeypatch):
    monkeypatch.setenv("HLB_PROFILE", "quick")
    assert config.get_profile().profile == "quick"
    monkeypatch.delenv("HLB_PROFILE")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert config.resolve_profile("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)   # a simulated GPU gets the record
    assert config.resolve_profile("auto") == "record"
    with pytest.raises(ValueError, match="unknown profile"):
        config.get_profile("turbo")


def test_tta_is_weighted_mean_of_views():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(10))
    x = torch.randn(5, 3, 32, 32)
    net(x)
    for mode, n_views in (("none", 1), ("flip", 2), ("multi", 6)):
        views = evaluate.tta_views(x, mode)
        assert len(views) == n_views and math.isclose(sum(w for w, _ in views), 1.0)
        expected = sum(w * net(v) for w, v in views)
        torch.testing.assert_close(evaluate.tta_logits(net, x, mode), expected)
    # the flip view really is the mirror image
    assert torch.equal(evaluate.tta_views(x, "flip")[1][1], x.flip(-1))


def test_selective_tta_spends_six_views_on_the_least_confident_quarter():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 30 * 30, 10))
    x = torch.randn(40, 3, 32, 32)
    views = evaluate.tta_views(x, "selective")
    assert len(views) == 6 and all(math.isclose(w, 1 / 6) for w, _ in views)
    with torch.no_grad():
        plain = net(x)
        six = sum(w * net(v) for w, v in views)
    got = evaluate.selective_logits(net, x, chunk=16)   # chunks: the ranking is over the whole set
    unsure = plain.softmax(1).amax(1).argsort()[:10]
    changed = torch.zeros(40, dtype=torch.bool)
    changed[unsure] = True
    torch.testing.assert_close(got[changed], six[changed])
    torch.testing.assert_close(got[~changed], plain[~changed])
    assert evaluate.tta_passes("selective") == 2.5 and evaluate.tta_passes("multi") == 6


def test_record_knobs_train_and_count_steps_as_the_record_does(synthetic):
    record = get_profile("record")
    knobs = {k: getattr(record, k) for k in ("act", "whiten_act", "bn_momentum", "brightness", "contrast",
                                             "ns_coeffs", "filter_weight_decay", "renorm_every",
                                             "renorm_growth", "muon_batch", "label_smoothing", "tta")}
    res = train.train(tiny_cfg(epochs=4, whiten_images=300, **knobs), synthetic, verbose=False)
    assert res.test_accuracy > 0.5   # chance is 0.1
    # the whitening bias trains for ceil(0.19 * 32) = 7 steps, as hiverge counts them
    cfg = tiny_cfg(batch_size=31, whiten_bias_epochs=0.19, epochs=0.05)
    train_loader, _ = train.make_loaders(cfg, synthetic, "cpu")
    plan = train.plan_steps(cfg, len(train_loader))
    assert len(train_loader) == 32 and plan.whiten == 7 and plan.total == 2
    made = []
    train.train(cfg, synthetic, verbose=False, make_optimizers=lambda net, c: made.extend(optim.make_optimizers(net, c)) or made)
    assert isinstance(made[-1], optim.Muon) and made[-1].total_steps == plan.total


def test_run_many_and_records(synthetic, tmp_path):
    seen = []   # the runs so far, after each run (the command line saves its records there)
    result = runs.run_many(tiny_cfg(epochs=1), synthetic, runs=2, target=0.5, verbose=False,
                           on_run=lambda so_far: seen.append(list(so_far.table["seed"])))
    assert seen == [[0], [0, 1]]
    assert list(result.table["seed"]) == [0, 1]
    assert result.summary.loc[0, "runs"] == 2
    out = runs.write_records(result, tmp_path / "rec", data_source="synthetic", wall_seconds=1.5)
    summary = json.loads((out / "summary.json").read_text())
    for key in ("profile", "test_accuracy", "train_seconds", "wall_seconds", "epochs", "runs", "device",
                "torch", "data", "seed", "config"):
        assert key in summary
    assert summary["runs"] == 2 and len(summary["accuracies"]) == 2
    assert len(pd.read_csv(out / "history.csv")) == 2 and len(pd.read_csv(out / "runs.csv")) == 2
    steps = pd.read_csv(out / "steps.csv")   # each run's steps, by run
    assert list(steps.groupby("run").size()) == [len(r.steps) for r in result.results] == [10, 10]


def test_quick_profile_learns_real_images(cifar):
    """The quick profile on the JPEG replica: far above chance (0.1)."""
    res = train.train(get_profile("quick"), cifar, verbose=False)
    assert res.test_accuracy > 0.45


def test_command_line_writes_summary(replica, tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "hlb_utils", "train", "--profile", "quick", "--data", str(replica),
           "--out", str(out), "--set", "epochs=1", "--set", "train_subset=2000", "--quiet"]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["profile"] == "quick" and summary["runs"] == 1 and summary["epochs"] == 1
    assert 0.0 <= summary["test_accuracy"] <= 1.0 and summary["train_seconds"] > 0
    assert summary["data"].endswith("cifar10-jpeg.tar.gz")
    assert summary["precision"] == "fp32" and summary["compile"] == "off"  # what 'auto' meant on this CPU


def test_out_of_memory_names_a_smaller_batch(synthetic, monkeypatch):
    fail_at_epoch(monkeypatch, 1, torch.cuda.OutOfMemoryError("CUDA out of memory"))
    with pytest.raises(RuntimeError, match=r"batch_size=100.*batch_size=50"):
        train.train(tiny_cfg(), synthetic, verbose=False)


def test_sweep_trains_each_value_with_its_seeds(synthetic):
    swept = runs.sweep(tiny_cfg(epochs=1), synthetic, "batch_size", [100, 200], runs=2, verbose=False)
    assert list(swept) == ["batch_size=100", "batch_size=200"]
    for value, result in zip([100, 200], swept.values()):
        assert [r.config.batch_size for r in result.results] == [value, value]
        assert list(result.table["seed"]) == [0, 1] and list(result.table["status"]) == ["finished"] * 2


def test_learners_schedule_average_flips_views_and_whitening_are_the_ones_used(synthetic):
    # Each of train()'s learner hooks (notebooks 03 and 04) is called, and changes the run when it differs.
    from hlb_utils.model import init_whitening

    seen = {"schedule": 0, "ema": 0, "flips": 0, "views": 0, "whiten": 0}

    def constant(step, total):
        seen["schedule"] += 1
        return 0.5

    def make_ema(net, decay):
        seen["ema"] += 1
        return optim.EMA(net, decay)

    def flips(n, epochs, generator):   # every image mirrored in every epoch
        seen["flips"] += 1
        return [torch.ones(n, dtype=torch.bool)] * epochs

    def views(net, x, mode):
        seen["views"] += 1
        return evaluate.tta_logits(net, x, mode)

    def whiten(net, images):
        seen["whiten"] += 1
        init_whitening(net, images)

    cfg = tiny_cfg(ema_decay=0.5, ema_every=1, ema_epochs=1.0, seed=5)
    ours = train.train(cfg, synthetic, verbose=False)
    theirs = train.train(cfg, synthetic, verbose=False, lr_schedule=constant, make_ema=make_ema,
                         flip_masks=flips, tta_logits=views, whiten_init=whiten)
    steps = cfg.steps_per_epoch(len(synthetic.train_labels)) * cfg.epochs
    assert seen["schedule"] == steps and seen["ema"] == 1 and seen["flips"] == cfg.epochs
    assert seen["views"] >= 1 and seen["whiten"] == 1
    assert list(theirs.history["lr"]) == [0.5] * cfg.epochs
    assert not theirs.history["train_loss"].equals(ours.history["train_loss"])


def test_learners_parameter_groups_reach_the_optimisers():
    from hlb_utils.model import make_net

    net = make_net(tiny_cfg())

    def no_head(net):   # the classifier left out of every group: it must then not be optimised
        parts = optim.split_params(net)
        parts["head"] = []
        return parts

    optimised = {id(p) for opt in optim.make_optimizers(net, tiny_cfg(), split=no_head)
                 for group in opt.param_groups for p in group["params"]}
    assert id(net.head.weight) not in optimised and id(net.whiten.bias) in optimised
