"""The GPU benchmark's plumbing, checked on the CPU (issue 5): reading the peers' logs, setting their run
count, merging the CSV, the time-budget guard, and one `--quick` run end to end with a stand-in peer."""
import csv
import datetime
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from hlb_utils.config import get_profile
from hlb_utils.runs import run_flops

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks" / "gpu_bench.py"
FAKE_PEER = REPO / "tests" / "fake_peer.py"

_spec = importlib.util.spec_from_file_location("gpu_bench", BENCH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

RULE = "-" * 81
HEADER = "|  run     |  epoch  |  train_acc  |  val_acc  |  tta_val_acc  |  time_seconds  |"
# airbench94_muon's layout: per-epoch rows, the run label on a run's first row only, then an eval row.
AIRBENCH_LOG = "\n".join([
    RULE, HEADER, RULE,
    "|  warmup  |      1  |     0.1050  |   0.1000  |               |       35.0000  |",
    "|          |   eval  |             |           |       0.1000  |       36.1000  |", RULE,
    "|       0  |      1  |     0.5120  |   0.6000  |               |        0.4000  |",
    "|          |      2  |     0.7010  |   0.7500  |               |        0.7000  |",
    "|          |   eval  |             |           |       0.9401  |        2.6012  |", RULE,
    "|       1  |      1  |     0.5000  |   0.6100  |               |        0.4000  |",
    "|          |   eval  |             |           |       0.9395  |        2.5900  |", RULE,
    "|       2  |      1  |     0.5000  |   0.6100  |               |        0.4000  |",  # killed mid-run
])
# cifar10_speedrun's layout: one eval row per run, with a carriage-return progress line before it.
SPEEDRUN_LOG = "\n".join([
    RULE, HEADER, RULE,
    "|  warmup  |   eval  |     0.1111  |   0.0978  |       0.0963  |       40.5124  |", RULE,
    "|       1  |   eval  |     0.9875  |   0.9314  |       0.9401  |        2.0133  |", RULE,
    "Mean accuracy after 1 runs: 0.940100 | Mean time: 2.013260s\r"
    "|       2  |   eval  |     0.9873  |   0.9346  |       0.9407  |        2.0131  |", RULE,
    "Mean accuracy after 2 runs: 0.940400 | Mean time: 2.013200s",
])


def test_parser_reads_airbench_runs_and_drops_warmup_and_unfinished_runs():
    runs = bench.parse_peer_output(AIRBENCH_LOG)
    assert runs == [("0", 0.9401, 2.6012, 0.7), ("1", 0.9395, 2.59, 0.4)]   # with the last epoch row's time


def test_parser_reads_speedrun_rows_behind_carriage_returns():
    runs = bench.parse_peer_output(SPEEDRUN_LOG)
    assert runs == [("1", 0.9401, 2.0133, None), ("2", 0.9407, 2.0131, None)]   # no epoch rows


def test_parser_ignores_tables_without_the_header():
    assert bench.parse_peer_output(AIRBENCH_LOG.replace(HEADER, "")) == []
    assert bench.parse_peer_output("Mean accuracy after 2 runs: 0.94 | Mean time: 2.0s") == []


def test_patch_sets_only_the_main_run_loop_and_says_so():
    code = ("def steps():\n    return list(range(3))\n\n"
            "if __name__ == '__main__':\n    RESULTS = [steps() for run in range(200)]\n")
    patched = bench.patch_run_count(code, 4, "airbench94_muon")
    namespace = {"__name__": "__main__"}
    exec(compile(patched, "patched", "exec"), namespace)
    assert len(namespace["RESULTS"]) == 4 and namespace["RESULTS"][0] == [0, 1, 2]
    assert "range(200) -> range(4)" in patched.splitlines()[1]


def test_patch_refuses_scripts_it_cannot_patch_safely():
    with pytest.raises(ValueError, match="peer p: no `if __name__"):
        bench.patch_run_count("for run in range(200): pass\n", 3, "p")
    with pytest.raises(ValueError, match="found 2"):
        bench.patch_run_count('if __name__ == "__main__":\n    a = range(2), range(200)\n', 3, "p")


def test_data_labels_and_file_names(tmp_path):
    (tmp_path / "cifar10" / "cifar-10-batches-py").mkdir(parents=True)
    assert bench.machine_info("/data/cifar10-jpeg.tar.gz", quick=True)["data"] == "JPEG copy of CIFAR-10"
    assert bench.machine_info(str(tmp_path / "cifar10"), quick=True)["data"] == "CIFAR-10"
    assert bench.slugify("NVIDIA A100-SXM4-80GB") == "nvidia-a100-sxm4-80gb"


def _row(recipe, acc, seconds):
    accs = [acc - 0.001, acc + 0.001]
    info = {"gpu": "cpu", "torch": "2.x", "data": "JPEG copy of CIFAR-10", "date": "2026-01-01"}
    return bench.summarise(recipe, accs, [seconds, seconds], info, "", planned=2, code=0)


def test_csv_keeps_other_recipes_of_an_earlier_call(tmp_path):
    path = tmp_path / "2026-01-01-cpu.csv"
    bench.write_csv([_row("airbench", 0.94, 2.0), _row("seed", 0.93, 9.0)], path)
    table = bench.write_csv([_row("airbench94_muon", 0.94, 2.5), _row("seed", 0.935, 8.0)], path)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["recipe"] for r in rows] == [r["recipe"] for r in table] == ["airbench", "airbench94_muon", "seed"]
    assert float(rows[2]["mean_seconds"]) == 8.0
    assert any(line.startswith("mean seconds airbench / airbench94_muon = 0.800") for line in bench.comparison(table))


def test_every_recipe_is_reported_under_each_timing_scope():
    ours = bench.our_scopes([{"train_seconds": "2.0", "init_seconds": "0.1", "tta_seconds": "0.3"},
                             {"train_seconds": "2.2", "init_seconds": "0.1", "tta_seconds": "0.3"}])
    assert ours["steps_seconds"] == [2.0, 2.2]
    assert ours["airbench_scope_seconds"] == ours["hiverge_scope_seconds"] == pytest.approx([2.4, 2.6])
    airbench = bench.peer_scopes(bench.parse_peer_output(AIRBENCH_LOG))
    assert airbench == {"steps_seconds": [0.7, 0.4], "airbench_scope_seconds": [2.6012, 2.59],
                        "hiverge_scope_seconds": [2.6012, 2.59]}
    speedrun = bench.peer_scopes(bench.parse_peer_output(SPEEDRUN_LOG))
    assert speedrun["steps_seconds"] == [] and speedrun["hiverge_scope_seconds"] == [2.0133, 2.0131]
    info = {"gpu": "H200", "torch": "2.x", "data": "CIFAR-10", "date": "2026-01-01"}
    rows = [bench.summarise("record", [0.94, 0.94], [2.0, 2.2], info, "", 2, 0, ours),
            bench.summarise("cifar10_speedrun", [0.94, 0.94], [2.0133, 2.0131], info, "", 2, 0, speedrun)]
    assert rows[1]["steps_seconds"] == "" and rows[0]["airbench_scope_seconds"] == 2.5
    lines = bench.comparison(rows)
    # beside hiverge, one span for both: theirs, from the whitening init through TTA
    assert lines[0] == f"mean seconds record / cifar10_speedrun = {2.5 / 2.0132:.3f} (hiverge's span, whitening through TTA, for both)"
    assert [line.split(":")[0].strip() for line in lines[2:]] == ["airbench_scope"]   # no steps-only figure of theirs


def test_cut_short_runs_are_flagged():
    info = {"gpu": "cpu", "torch": "2.x", "data": "CIFAR-10", "date": "2026-01-01"}
    row = bench.summarise("cifar10_speedrun", [0.94], [2.0], info, "1 warm-up not counted", planned=25, code=None)
    assert row["runs"] == 1 and row["std_acc"] == ""
    assert row["note"] == "1 warm-up not counted; cut short: 1 of 25 runs (time budget)"


def test_fake_peer_stops_without_its_data_like_a_real_peer_would_download(tmp_path):
    proc = subprocess.run([sys.executable, str(FAKE_PEER)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "cifar10/train.pt not found" in proc.stderr


def _bench(replica, out, budget):
    # The budget is generous (several quick runs' worth) because CI's cores are shared.
    cmd = [sys.executable, str(BENCH), "--quick", "--peer", f"airbench94_muon={FAKE_PEER}",
           "--data", str(replica), "--out", str(out), "--time-budget", str(budget), "--set", "epochs=3"]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=budget + 120)


def test_time_budget_skips_what_does_not_fit_and_says_so(replica, tmp_path):
    proc = _bench(replica, tmp_path, budget=1)
    assert proc.returncode == 1
    assert "quick: skipped" in proc.stdout and "airbench94_muon: skipped" in proc.stdout
    assert not list(tmp_path.glob("*.csv"))


def test_quick_bench_writes_a_well_formed_csv(replica, tmp_path):
    proc = _bench(replica, tmp_path, budget=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    (path,) = tmp_path.glob("*.csv")
    assert path.name == f"{datetime.date.today().isoformat()}-cpu.csv"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == bench.COLUMNS
    assert [r["recipe"] for r in rows] == ["quick", "airbench94_muon"]
    for r in rows:
        assert (r["gpu"], r["data"], r["runs"]) == ("cpu", "JPEG copy of CIFAR-10", "2")
        assert 0.1 < float(r["min_acc"]) <= float(r["mean_acc"]) <= 1.0   # above chance (10%)
        assert 0 <= float(r["std_acc"]) < 0.2
        assert float(r["mean_seconds"]) > 0 and float(r["median_seconds"]) > 0
    assert "script fake_peer.py" in rows[1]["note"]
    assert "set epochs=3" in rows[0]["note"] and "precision fp32, compile off" in rows[0]["note"]
    assert "mean seconds quick / airbench94_muon" in proc.stdout
    assert proc.stdout.rstrip().splitlines()[-1].startswith("airbench94_muon")   # the table comes last


def test_set_must_name_a_config_field(tmp_path, capsys):
    assert bench.parse_args(["--data", str(tmp_path), "--set", "compile=false"]).sets == ["compile=false"]
    with pytest.raises(SystemExit):
        bench.parse_args(["--data", str(tmp_path), "--set", "epoch=3"])   # the field is `epochs`
    assert "TrainConfig field" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args(["--data", str(tmp_path), "--set", "epochs=-1"])   # a field, but out of range
    assert "out of range" in capsys.readouterr().err


def test_profile_run_sorts_a_real_runs_time_and_never_beats_the_flop_floor(replica, tmp_path):
    import torch

    from hlb_utils.config import get_profile
    from hlb_utils.model import make_net

    # benchmarks/profile_run.py, the follow-up when a profile misses: the same script a GPU session runs.
    out = tmp_path / "profile"
    cmd = [sys.executable, str(REPO / "benchmarks" / "profile_run.py"), "--profile", "quick", "--data", str(replica),
           "--set", "epochs=1", "--set", "train_subset=1000", "--set", "test_subset=500", "--out", str(out), "--trace"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert {p.name for p in out.iterdir()} == {"summary.csv", "phases.csv", "kernels.csv", "categories.csv",
                                               "trace.json.gz"}
    with open(out / "summary.csv", newline="") as f:
        figures = {row["figure"]: row["value"] for row in csv.DictReader(f)}
    clean = float(figures["train seconds, clean run (the run's own timer)"])
    assert clean > 0 and 0.1 < float(figures["test accuracy (profiled run)"]) <= 1.0   # it learned
    assert float(figures["clean train seconds / FLOP floor"]) > 1.0   # no run multiplies faster than matmul peak
    with open(out / "phases.csv", newline="") as f:
        phases = {row["region"]: row for row in csv.DictReader(f)}
    inside = [name for name in phases if name.startswith("training: ")]
    # the library names the epoch and augmentation; the step's phases come from torch's own ranges
    assert {"training: forward", "training: backward", "training: optimizer", "training: augment"} <= set(inside)
    assert "hlb:augment_plan" in phases   # the loader's plan of each epoch, before the clock starts
    epoch_ms = float(phases["hlb:train_epoch"]["host_ms"])
    step_ms = sum(float(phases[f"training: {name}"]["host_ms"]) for name in ("forward", "backward"))
    assert step_ms > 0.3 * epoch_ms   # the bulk of a CPU step
    assert sum(float(phases[name]["host_ms"]) for name in inside) <= epoch_ms * 1.01
    # one range per optimiser step: SGD and Muon at each of the 4 steps; the test set is not counted
    assert int(phases["training: optimizer"]["calls"]) == 2 * 1000 // 250
    # Operator counts, not times (a busy machine reorders the times): each of the net's convolutions runs
    # forward and backward once per training step, and the kinds are sorted apart.
    with open(out / "categories.csv", newline="") as f:
        kinds = {row["kind"]: row for row in csv.DictReader(f)}
    assert {"convolution", "normalisation", "activation"} <= set(kinds)
    with open(out / "kernels.csv", newline="") as f:
        calls = {row["name"]: int(row["calls"]) for row in csv.DictReader(f)}
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in make_net(get_profile("quick")).modules())
    assert convs > 0 and calls["aten::convolution"] == calls["aten::convolution_backward"] == convs * 1000 // 250
    assert int(kinds["convolution"]["calls"]) >= 2 * convs * 1000 // 250


def test_kernel_kinds_by_name():
    spec = importlib.util.spec_from_file_location("profile_run", REPO / "benchmarks" / "profile_run.py")
    prof = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prof)
    assert prof.kind_of("sm90_xmma_fprop_implicit_gemm_bf16") == "convolution"
    assert prof.kind_of("triton_tem_fused_mm_3") == "matmul"
    assert prof.kind_of("triton_poi_fused_gelu_7") == "fused by torch.compile"
    assert prof.kind_of("aten::gelu_backward") == "activation"
    assert prof.kind_of("something_new") == "other"


def test_peer_cache_is_shuffled_with_each_image_kept_with_its_label(tmp_path):
    # Peers fit their whitening to their first 960-5,000 training images: a class-ordered cache would
    # hand them one class.
    import torch

    from synthetic import synthetic_dataset

    synthetic = synthetic_dataset(n_train=600, n_test=100, seed=0)
    order = synthetic.train_labels.argsort(stable=True)   # class by class, like the replica
    sorted_set = synthetic._replace(train_images=synthetic.train_images[order], train_labels=synthetic.train_labels[order])
    bench.write_peer_cache(sorted_set, tmp_path / "cifar10")
    train = torch.load(tmp_path / "cifar10" / "train.pt", weights_only=True)
    assert train["images"].shape == (600, 32, 32, 3) and train["images"].dtype == torch.uint8
    assert train["labels"][:60].unique().numel() == 10
    label_of = {image.numpy().tobytes(): int(y) for image, y in zip(sorted_set.train_images, sorted_set.train_labels)}
    cached = train["images"].permute(0, 3, 1, 2)
    assert [label_of[image.contiguous().numpy().tobytes()] for image in cached] == train["labels"].tolist()


def test_run_flops_matches_the_published_airbench94_muon_figure():
    # `airbench` is airbench94_muon's network and schedule: training plus its 6-view TTA is published as 0.29 PFLOPs.
    airbench = run_flops(get_profile("airbench"))
    assert abs(airbench["train_pflops"] + airbench["tta_pflops"] - 0.29) < 0.01
    assert airbench["total_pflops"] > airbench["train_pflops"] + airbench["tta_pflops"]   # plus the per-epoch test passes
    # progressive resizing: the first 2 of 4 epochs at 16 px cost about a quarter of the full-size epochs
    small = run_flops(get_profile("airbench", epochs=4, low_res=16, low_res_epochs=2))
    large = run_flops(get_profile("airbench", epochs=4))
    assert 0.55 < small["train_pflops"] / large["train_pflops"] < 0.7
    # a first stage at 12 px in the small epochs: its epoch costs about (12/32)^2 = 0.14 of a full one
    # instead of 0.25, so the run's training about 0.11 / 4 less
    smaller = run_flops(get_profile("airbench", epochs=4, low_res=16, low_res_epochs=2, first_res=12,
                                    first_res_epochs=1))
    assert 0.015 < (small["train_pflops"] - smaller["train_pflops"]) / large["train_pflops"] < 0.04


def test_gpu_check_without_cuda_says_what_it_would_measure(tmp_path):
    import os

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OUT": str(tmp_path / "out")}
    proc = subprocess.run(["bash", str(Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "no CUDA device here" in proc.stdout and "50 record runs" in proc.stdout and "hiverge's span" in proc.stdout
    assert not (tmp_path / "out").exists()   # nothing measured, nothing written


def _frontier():
    spec = importlib.util.spec_from_file_location("cpu_frontier", REPO / "benchmarks" / "cpu_frontier.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_frontier_candidates_are_valid_profile_changes():
    from hlb_utils.cli import check_config
    frontier = _frontier()
    for name, changes in frontier.CANDIDATES.items():
        assert "," not in name   # --only splits at commas
        check_config("cpu", (frontier.BEFORE + " " + changes).split())   # a misspelt knob or a bad value fails here


def test_frontier_resumes_and_summarises_by_median(replica, tmp_path):
    frontier = _frontier()
    results = tmp_path / "frontier.csv"
    args = ["--profile", "quick", "--data", str(replica), "--csv", str(results), "--only", frontier.PROFILE]
    assert frontier.main(args + ["--seeds", "0"]) == 0
    with results.open() as f:
        first = list(csv.DictReader(f))
    assert [(r["candidate"], r["seed"]) for r in first] == [(frontier.PROFILE, "0")]
    assert first[0]["changes"].startswith("(none: the quick profile at ")
    run = first[0]
    assert 0.3 < float(run["test_accuracy"]) < 1 and float(run["wall_seconds"]) > float(run["train_seconds"])
    assert frontier.main(args + ["--seeds", "0,1"]) == 0   # seed 0 is kept, only seed 1 trains
    with results.open() as f:
        rows = list(csv.DictReader(f))
    assert rows[0] == first[0] and [r["seed"] for r in rows] == ["0", "1"]
    table = frontier.summary()
    assert table.loc[0, "seeds"] == 2
    assert table.loc[0, "median"] == pytest.approx(sum(float(r["test_accuracy"]) for r in rows) / 2)
    assert f"| {frontier.PROFILE} | `(none: the quick profile at " in frontier.markdown(table)
    assert frontier.plot(table, tmp_path / "frontier.png").stat().st_size > 10_000
