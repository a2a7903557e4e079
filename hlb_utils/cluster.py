"""Many runs on many GPUs: a series or a sweep spread over a Ray cluster, one task per run.

Taught in notebook 06 ("Many runs"). `runs.run_many(..., cluster="local")` (a Ray instance on this
machine) or `cluster="ADDRESS"` (a running Ray cluster) comes here, so that runs.py keeps the plain
serial loop a learner reads. Ray is an optional extra (`pip install "hlb_utils[ray]"`), imported only
when a cluster is asked for. The runs are independent, so Ray's own scheduler and retries do all the
work: the dataset goes to the object store once, each run is one task (one GPU, or a share of the
CPUs), and the results come back in seed order whatever order they finish in.

Reproducibility: on a CPU a run's accuracy depends on torch's thread count (a convolution's sums are
split over the threads and rounded in another order), and Ray starts its workers with one thread.
Every task therefore sets the thread count the driver's serial runs use (`torch.get_num_threads()`,
or `threads=`), so that the same seeds give the same accuracies here and there.
"""
from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from .config import TrainConfig
from .runs import FailedRun
from .train import TrainResult, train

RETRIES = 2          # further attempts of a task whose worker died (Ray's own retries)
_warmed: set = set()  # in each worker process: the configs (seed aside) it has already warmed up


@dataclass
class ClusterOutcome:
    """What came back: `runs` in config order (a TrainResult, a FailedRun, or None where cancelled)."""

    runs: list
    warmup_seconds: list[float] = field(default_factory=list)
    stopped: bool = False   # Ctrl-C cancelled the tasks still running
    cluster: dict | None = None


def _ray():
    try:
        import ray
    except ImportError as err:
        raise ImportError('runs on a cluster need Ray: pip install "hlb_utils[ray]" (or pip install ray)') from err
    return ray


def connect(cluster: str) -> dict:
    """Start a local Ray instance ("local") or join a running cluster (its address); reuse a connection
    already made. Joining ships this copy of hlb_utils to the cluster, so every node runs the same code."""
    ray = _ray()
    if not ray.is_initialized():
        if cluster == "local":
            ray.init(include_dashboard=False)
        else:
            import hlb_utils

            ray.init(address=cluster, runtime_env={"py_modules": [hlb_utils]})
    return describe(ray)


def describe(ray) -> dict:
    """The cluster's nodes, CPUs and GPUs, for the run records."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    total = ray.cluster_resources()
    return dict(address=ray.get_runtime_context().gcs_address, nodes=len(nodes),
                hosts=sorted({n.get("NodeManagerHostname", "") for n in nodes}),
                cpus=total.get("CPU", 0), gpus=total.get("GPU", 0), ray=ray.__version__)


def task_options(nodes: list[dict], threads: int) -> dict:
    """One GPU per run where the cluster has GPUs; otherwise `threads` CPUs, capped at the largest node's
    count (a task asking for more CPUs than any node has would wait forever). `nodes`: each node's
    resources, as in `ray.nodes()[i]["Resources"]`."""
    if any(n.get("GPU", 0) >= 1 for n in nodes):
        return dict(num_gpus=1, num_cpus=1, max_retries=RETRIES)
    most = max(int(n.get("CPU", 1)) for n in nodes)
    return dict(num_cpus=max(1, min(threads, most)), max_retries=RETRIES)


def _run_task(cfg: TrainConfig, data, threads: int, warmup_runs: int, train_fn: Callable) -> tuple:
    """What one task does in its worker: warm up once per worker and config, then train one run."""
    torch.set_num_threads(threads)
    key, warm = cfg.replace(seed=0), []
    if warmup_runs and key not in _warmed:
        for i in range(warmup_runs):
            warm.append(train_fn(cfg.replace(seed=cfg.seed - warmup_runs + i), data, verbose=False).wall_seconds)
        _warmed.add(key)
    result = train_fn(cfg, data, verbose=False)
    result.model = None   # the weights stay on the worker: only the measurements travel back
    return result, warm


def run_on_cluster(configs: list[TrainConfig], data, cluster: str, warmup_runs: int = 0,
                   threads: int | None = None, train_fn: Callable = train, verbose: bool = True,
                   on_result: Callable[[ClusterOutcome], None] | None = None) -> ClusterOutcome:
    """Train each config once as its own Ray task; `data` goes to the object store once.

    `threads`: torch threads per task (default: this process's, as a serial run would use). `train_fn`
    is what each task calls (`train.train`, or a wrapper of it). `on_result` gets the outcome so far
    after each run comes back. Ctrl-C cancels the tasks still out and returns the finished runs.
    """
    ray = _ray()
    outcome = ClusterOutcome([None] * len(configs), cluster=connect(cluster))
    threads = threads or torch.get_num_threads()
    options = task_options([n["Resources"] for n in ray.nodes() if n.get("Alive")], threads)
    task = ray.remote(_run_task).options(**options)
    data_ref = ray.put(data)
    # each task's torch threads: its CPUs (the driver's count unless capped by the nodes' size)
    pending = {task.remote(c, data_ref, options["num_cpus"], warmup_runs, train_fn): i
               for i, c in enumerate(configs)}
    progress = Progress(len(configs), enabled=verbose)
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(ready[0])
            outcome.runs[index] = _fetch(ray, ready[0], configs[index], outcome)
            progress.update(outcome.runs)
            if on_result is not None:
                on_result(outcome)
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        outcome.stopped = True
        progress.note(f"interrupted: cancelled {len(pending)} run(s) still out")
    progress.close()
    return outcome


def _fetch(ray, ref, cfg: TrainConfig, outcome: ClusterOutcome):
    """The run's TrainResult, or a FailedRun when its task raised or its worker died past the retries."""
    try:
        result, warm = ray.get(ref)
    except ray.exceptions.RayError as err:
        lines = [line for line in str(err).splitlines() if line.strip()]
        return FailedRun(cfg, f"{type(err).__name__}: {lines[-1] if lines else ''}"[:300])
    outcome.warmup_seconds.extend(warm)
    return result


class Progress:
    """One line, rewritten in place, counting finished runs and their running mean accuracy.

    In Jupyter it is one output updated in place; in a terminal one line redrawn with a carriage return;
    in a log file (no terminal) a line at most every 30 seconds, and the last one."""

    def __init__(self, total: int, enabled: bool = True, every: float = 30.0):
        from .progress import in_jupyter

        self.total, self.enabled, self.every = total, enabled, every
        self.jupyter = enabled and in_jupyter()
        self.tty = enabled and not self.jupyter and sys.stdout.isatty()
        self._handle, self._last, self.text = None, 0.0, ""

    def update(self, runs: list) -> None:
        done = [r for r in runs if isinstance(r, TrainResult) and not r.interrupted]
        failed = sum(isinstance(r, FailedRun) for r in runs)
        accs = [r.test_accuracy for r in done]
        mean = f"running mean {statistics.fmean(accs):.4f}" if accs else "running mean -"
        self.text = (f"runs finished {len(done)}/{self.total}" + (f", {failed} failed" if failed else "")
                     + f", {mean}")
        self._show(final=len(done) + failed == self.total)

    def note(self, text: str) -> None:
        self.text = f"{self.text}; {text}" if self.text else text
        self._show(final=True)

    def close(self) -> None:
        if self.tty and self.text:
            sys.stdout.write("\n")
            sys.stdout.flush()

    def _show(self, final: bool) -> None:
        now = time.monotonic()
        if not self.enabled:
            return
        if self.jupyter:
            from IPython.display import display

            bundle = {"text/plain": self.text}
            if self._handle is None:
                self._handle = display(bundle, raw=True, display_id=True)
            else:
                self._handle.update(bundle, raw=True)
        elif self.tty:
            sys.stdout.write("\r" + self.text.ljust(100))
            sys.stdout.flush()
        elif final or now - self._last >= self.every:
            print(self.text, flush=True)
            self._last = now
