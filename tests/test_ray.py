"""Many runs on a Ray cluster (cluster.py): a local Ray instance with 2 CPUs stands in for a cluster.

The same seeds give the same accuracies as a serial series; a run whose worker dies is retried; a run
that keeps failing is recorded as failed and never counted; Ctrl-C cancels the runs still out and keeps
the finished ones. A cluster with GPUs is simulated by the node resources `plan_workers` reads.
"""
import json
import os
import time

import pandas as pd
import pytest
import torch

ray = pytest.importorskip("ray", reason='ray is not installed: pip install -e ".[test,ray]" (CI installs it)')

from hlb_utils import cli, cluster, notebook, runs, train  # noqa: E402
from hlb_utils.config import get_profile  # noqa: E402

# Seconds per run on the synthetic data (1,000 images of 32x32).
TINY = dict(widths=(8, 16, 16), batch_size=100, epochs=1, tta="none", eval_every=0, whiten_bias_epochs=1.0)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for the whole file (starting one takes tens of seconds on 2 busy cores).

    On an overloaded machine Ray's agents can take longer than the raylet waits for them (given 2 minutes
    here, as cluster.connect does) and the node longer than Ray's 30 s to register (tried once more)."""
    options = dict(num_cpus=2, include_dashboard=False, _system_config={"raylet_start_wait_time_s": 120})
    try:
        ray.init(**options)
    except Exception:   # Ray raises Exception itself for a node that timed out
        ray.shutdown()
        ray.init(**options)
    yield
    ray.shutdown()


@pytest.fixture(autouse=True)
def one_thread():
    """Every run here, serial or on the cluster, uses one torch thread: two workers share the 2 CPUs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_one_worker_per_gpu_where_there_are_gpus():
    """Simulated nodes: 8 GPUs on one node, a CPU-only node beside it; then CPU-only clusters."""
    eight_gpus = [{"CPU": 96.0, "GPU": 8.0}, {"CPU": 16.0}]
    assert cluster.plan_workers(eight_gpus, threads=4) == (dict(num_gpus=1, num_cpus=1), 8)
    cpu_only = [{"CPU": 2.0}, {"CPU": 8.0}]
    assert cluster.plan_workers(cpu_only, threads=4) == (dict(num_cpus=4), 2)
    assert cluster.plan_workers(cpu_only, threads=1) == (dict(num_cpus=1), 10)
    # never more CPUs than the largest node has: such a worker would wait forever
    assert cluster.plan_workers(cpu_only, threads=32) == (dict(num_cpus=8), 1)


def test_cluster_series_equals_serial_series(cifar, local_ray, monkeypatch, tmp_path):
    """Three quick-profile runs (shrunk to seconds) on the cluster against the same seeds trained here."""
    cfg = get_profile("quick", epochs=1, train_subset=1000, test_subset=500, seed=3)
    serial = runs.run_many(cfg, cifar, runs=3, verbose=False)
    puts = []
    real_put = ray.put
    monkeypatch.setattr(ray, "put", lambda value, **kw: puts.append(type(value).__name__) or real_put(value, **kw))
    spread = runs.run_many(cfg, cifar, runs=3, verbose=False, cluster="local")
    assert puts == ["Cifar10"]   # the dataset went to the object store once, not once per task
    assert list(spread.table["seed"]) == [3, 4, 5] and list(spread.table["status"]) == ["finished"] * 3
    assert spread.accuracies == serial.accuracies
    assert len(set(serial.accuracies)) > 1   # three seeds, three different runs: the comparison has teeth
    for a, b in zip(serial.results, spread.results):
        pd.testing.assert_series_equal(a.history["train_loss"], b.history["train_loss"])
        assert b.model is None and b.device == "cpu" and b.host
    assert spread.cluster["cpus"] == 2 and spread.cluster["nodes"] == 1
    out = runs.write_records(spread, tmp_path / "rec", data_source="replica")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs_requested"] == summary["runs_finished"] == 3 and summary["runs_failed"] == 0
    assert summary["cluster"]["cpus"] == 2
    table = pd.read_csv(out / "runs.csv")
    assert list(table["host"].notna()) == [True] * 3 and set(table["device"]) == {"cpu"}


def test_killed_worker_is_retried(synthetic, local_ray, tmp_path):
    """The run's worker dies on its first attempt (as on a lost node or a hard crash) and is retried."""
    def dies_once(cfg, data, verbose=False):
        attempts = len(list(tmp_path.glob("attempt-*")))
        (tmp_path / f"attempt-{attempts}").touch()
        if attempts == 0:
            os._exit(1)
        return train.train(cfg, data, verbose=verbose)

    cfg = get_profile("quick", **TINY)
    result = runs.run_many(cfg, synthetic, runs=1, verbose=False, cluster="local", train_fn=dies_once)
    assert len(list(tmp_path.glob("attempt-*"))) == 2
    assert not result.failed and result.accuracies == [result.results[0].test_accuracy]
    assert list(result.table["status"]) == ["finished"]


def test_failing_value_of_a_sweep_is_recorded_failed(synthetic, local_ray, tmp_path):
    """batch_size 5000 cannot fit 1,000 images: its runs raise (a worker that dies past its retries ends
    the same way, in the same `except`), the other value's runs count."""
    cfg = get_profile("quick", **TINY)
    swept = runs.sweep(cfg, synthetic, "batch_size", [100, 5000], runs=2, cluster="local", verbose=False)
    assert list(swept) == ["batch_size=100", "batch_size=5000"]
    good, bad = swept.values()
    assert good.summary.loc[0, "runs"] == 2 and not good.failed
    assert not bad.results and [f.config.seed for f in bad.failed] == [0, 1]
    assert "batch_size=5000" in bad.failed[0].error
    table = notebook.results_table(swept)   # the table notebook 07 ends with: failed runs not counted
    assert list(table["runs"]) == [2, 0] and table.loc[1, "device"] == "-"
    out = runs.write_records(bad, tmp_path / "bad")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs_failed"] == 2 and summary["runs_finished"] == 0 and summary["test_accuracy"] is None
    assert list(pd.read_csv(out / "runs.csv")["status"]) == ["failed", "failed"]


def test_ctrl_c_cancels_outstanding_runs_and_keeps_finished_ones(synthetic, local_ray, monkeypatch, tmp_path):
    """Seed 0 trains at once, the others would take a minute; Ctrl-C comes while waiting for them."""
    def slow_after_the_first(cfg, data, verbose=False):
        if cfg.seed > 0:
            time.sleep(120)
        return train.train(cfg, data, verbose=verbose)

    came_back, cancelled = [], []
    real_wait, real_cancel = ray.wait, ray.cancel

    def wait(refs, **kw):   # Ctrl-C in the first wait after seed 0 came back (a wait may time out empty)
        if came_back:
            raise KeyboardInterrupt
        ready, rest = real_wait(refs, **kw)
        came_back.extend(ready)
        return ready, rest

    monkeypatch.setattr(ray, "wait", wait)
    monkeypatch.setattr(ray, "cancel", lambda ref, **kw: cancelled.append(ref) or real_cancel(ref, **kw))
    saved = []   # what the command line does after each run: write the records so far
    cfg = get_profile("quick", **TINY)
    result = runs.run_many(cfg, synthetic, runs=3, verbose=False, cluster="local",
                           train_fn=slow_after_the_first,
                           on_run=lambda so_far: saved.append(runs.write_records(so_far, tmp_path / "rec")))
    assert len(cancelled) == 2 and result.stopped and result.interrupted
    assert [r.config.seed for r in result.results] == [0] and len(saved) == 1
    runs.write_records(result, tmp_path / "rec")
    summary = json.loads((tmp_path / "rec" / "summary.json").read_text())
    assert summary["runs_requested"] == 3 and summary["runs_finished"] == 1 and summary["interrupted"]
    assert list(pd.read_csv(tmp_path / "rec" / "runs.csv")["seed"]) == [0]


def test_progress_is_one_line_rewritten_in_place(synthetic, monkeypatch, capsys):
    res = train.train(get_profile("quick", **TINY), synthetic, verbose=False)
    failed = runs.FailedRun(res.config.replace(seed=1), "WorkerCrashedError")
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    line = cluster.Progress(total=3)
    line.update([res, None, None])
    line.update([res, failed, None])
    shown = capsys.readouterr().out
    assert shown.count("\r") == 2 and "\n" not in shown
    assert shown.endswith(f"runs finished 1/3, 1 failed, running mean {res.test_accuracy:.4f}".ljust(100))
    line.close()
    assert capsys.readouterr().out == "\n"


def test_command_line_passes_the_cluster(synthetic, monkeypatch, tmp_path):
    seen = {}

    def fake_run_many(cfg, data, **kw):
        seen.update(kw)
        return runs.RunsResult(cfg, [train.train(cfg, data, verbose=False)])

    monkeypatch.setattr(cli, "run_many", fake_run_many)
    monkeypatch.setattr(cli.data_mod, "load_cifar10", lambda source=None: synthetic)
    monkeypatch.setattr(cluster, "check_address", lambda address: None)   # no head at that address here
    args = ["--profile", "quick", "--set", "epochs=1", "--set", "widths=[8,16,16]", "--quiet"]
    assert cli.main(args + ["--cluster", "10.0.0.1:6379"]) == 0
    assert seen["cluster"] == "10.0.0.1:6379"
    cli.main(args)
    assert seen["cluster"] is None
