"""Many runs on many GPUs: a series or a sweep spread over a Ray cluster, one Ray task per run.

Taught in notebook 06 ("Many runs on many GPUs"). `runs.run_many(..., cluster="local")` (a Ray
instance on this machine) or `cluster="ADDRESS"` (a running Ray cluster) comes here, so that runs.py
keeps the plain serial loop a learner reads. Ray is an optional extra (`pip install "hlb_utils[ray]"`),
imported only when a cluster is asked for. The runs are independent, so Ray's scheduler and retries do
the work: the dataset goes to the object store once, and results come back in seed order whatever
order they finish in.

Each GPU (on a CPU cluster, each share of `threads` CPUs) gets one Ray actor, a worker process that
keeps the dataset and the compiled code across its runs; each run is one task on a free worker. Plain
Ray tasks would not do on GPUs: Ray starts a fresh process for every GPU task (so every run would
compile again), and a reused process would keep the GPU it first saw.

Reproducibility: on a CPU a run's accuracy depends on torch's thread count (a convolution's sums are
split over the threads and rounded in another order), and Ray starts its workers with one thread.
Every worker therefore uses the thread count the driver's serial runs use (`torch.get_num_threads()`,
or `threads=`), so that the same seeds give the same accuracies here and there.
"""
from __future__ import annotations

import os
import signal
import socket
import statistics
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch

from .config import TrainConfig
from .failures import FailedRun
from .train import TrainResult, train

RETRIES = 2   # further attempts of a run whose worker died (Ray's own retries)


@dataclass
class ClusterOutcome:
    """What came back: `runs` in config order (a TrainResult, a FailedRun, or None where cancelled)."""

    runs: list
    warmup_seconds: list[float] = field(default_factory=list)
    stopped: bool = False   # Ctrl-C cancelled the runs still out
    cluster: dict | None = None


def _ray():
    try:
        import ray
    except ImportError as err:
        raise ImportError('runs on a cluster need Ray: pip install "hlb_utils[ray]" (or pip install ray)') from err
    return ray


def connect(cluster: str) -> dict:
    """Start a local Ray instance ("local") or join a running cluster (its address, or "auto"); reuse a
    connection already made. Joining ships this copy of hlb_utils to the cluster, so every node runs
    the same code.

    `ray.init` installs its own SIGTERM handler (and may touch SIGINT's), which would end the process
    without the run records: the handlers in place before it (the command line's, which turn these
    signals into a recorded interruption) are put back afterwards."""
    ray = _ray()
    if not ray.is_initialized():
        with _KeptHandlers():
            if cluster == "local":
                _start_local(ray)
            else:
                import hlb_utils

                ray.init(address=cluster, runtime_env={"py_modules": [hlb_utils]})
    return describe(ray)


def stop_signals() -> list[int]:
    """The signals that stop a series: SIGINT, SIGTERM and, where the platform has it, SIGHUP."""
    return [s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]


class _KeptHandlers:
    """The handlers of `stop_signals()` as they were when made (main thread only: elsewhere Python
    allows no handlers), put back by `restore()` and on leaving a `with` block. A SIGTERM that came while
    Ray's handler was in place (which exits with the signal's number) is handed to the handler that was
    there before, as if Ray had not been there."""

    def __init__(self) -> None:
        main = threading.current_thread() is threading.main_thread()
        self.saved = {s: signal.getsignal(s) for s in stop_signals()} if main else {}

    def __enter__(self) -> "_KeptHandlers":
        return self

    def restore(self) -> None:
        """Install the saved handlers again, even where Python believes they are in place: Ray's C++
        core can replace one under Python's feet (its failure handler, which aborts the process)."""
        for signum, handler in self.saved.items():
            if handler is not None:
                signal.signal(signum, handler)

    def __exit__(self, kind, err, trace) -> None:
        self.restore()
        previous = self.saved.get(signal.SIGTERM)
        if isinstance(err, SystemExit) and err.code == signal.SIGTERM and callable(previous):
            previous(signal.SIGTERM, None)   # the command line's: records the stop (KeyboardInterrupt)


def check_address(cluster: str, timeout: float = 3.0) -> None:
    """ValueError in one line unless `cluster` is "local", "auto" (a cluster started on this machine by
    `ray start`) or HOST:PORT, and a Ray head answers there within `timeout` seconds: a typo or a
    cluster that is down is then named at once, not after decoding and Ray's minutes of retries."""
    if cluster == "local":
        return
    form = "give local, auto, or the head's HOST:PORT (e.g. 10.0.0.5:6379)"
    address = _current_address() if cluster == "auto" else cluster
    if address is None:
        raise ValueError(f"--cluster auto: no Ray cluster was started on this machine (ray start --head); {form}")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--cluster {cluster}: not a cluster address; {form}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        reason = "no answer" if isinstance(err, socket.timeout) else (err.strerror or str(err))
        raise ValueError(f"--cluster {cluster}: no Ray head answers at {host}:{port} within {timeout:g} s "
                         f"({reason}); start one with `ray start --head`, or use --cluster local") from None


def _current_address() -> str | None:
    """What `ray.init(address="auto")` joins: RAY_ADDRESS, else the address `ray start` left in
    /tmp/ray/ray_current_cluster."""
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    try:
        with open(os.path.join(os.environ.get("RAY_TMPDIR", "/tmp"), "ray", "ray_current_cluster")) as f:
            return f.read().strip() or None
    except OSError:
        return None


def _start_local(ray, attempts: int = 2) -> None:
    """Start Ray here. On a busy machine Ray's agents can take longer than the raylet waits for them
    (15 s by default: given 2 minutes here) and the node longer than Ray's 30 s to register, which Ray
    reports as a plain Exception: then it is tried once more."""
    for attempt in range(1, attempts + 1):
        try:
            ray.init(include_dashboard=False, _system_config={"raylet_start_wait_time_s": 120})
            return
        except Exception as err:   # Ray raises Exception itself for a node that timed out
            ray.shutdown()
            if attempt == attempts:
                raise RuntimeError(f"Ray did not start on this machine ({err}); is it overloaded? "
                                   "Try again, or run without a cluster") from err


def describe(ray) -> dict:
    """The cluster's nodes, CPUs and GPUs, for the run records."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    total = ray.cluster_resources()
    return dict(address=ray.get_runtime_context().gcs_address, nodes=len(nodes),
                hosts=sorted({n.get("NodeManagerHostname", "") for n in nodes}),
                cpus=total.get("CPU", 0), gpus=total.get("GPU", 0), ray=ray.__version__)


def plan_workers(nodes: list[dict], threads: int) -> tuple[dict, int]:
    """(Ray options of one worker, how many workers): one per GPU where the cluster has GPUs; otherwise
    one per `threads` CPUs of a node, `threads` capped at the largest node's count (a worker asking for
    more CPUs than any node has would wait forever). `nodes`: each node's resources, as in
    `ray.nodes()[i]["Resources"]`."""
    gpus = sum(int(n.get("GPU", 0)) for n in nodes)
    if gpus:
        return dict(num_gpus=1, num_cpus=1), gpus
    per = max(1, min(threads, max(int(n.get("CPU", 1)) for n in nodes)))
    return dict(num_cpus=per), max(1, sum(int(n.get("CPU", 0)) // per for n in nodes))


class Worker:
    """A Ray actor: one GPU (or share of CPUs) that trains run after run with the same dataset and
    compiled code. Private to this module; `run_on_cluster` is the public face."""

    def __init__(self, data_ref: list, threads: int):
        import ray

        # The reference arrives in a list, so Ray passes it unresolved: fetched here, once per worker
        # (and again after a restart).
        torch.set_num_threads(threads)
        self.data, self.warmed = ray.get(data_ref[0]), set()

    def run(self, cfg: TrainConfig, warmup_runs: int, train_fn: Callable) -> tuple[TrainResult, list[float]]:
        """Warm up once per config (seed aside), then train one run; the weights stay here."""
        warm = []
        if warmup_runs and cfg.replace(seed=0) not in self.warmed:
            for i in range(warmup_runs):
                warm.append(train_fn(cfg.replace(seed=cfg.seed - warmup_runs + i), self.data,
                                     verbose=False).wall_seconds)
            self.warmed.add(cfg.replace(seed=0))
        result = train_fn(cfg, self.data, verbose=False)
        result.model = None
        return result, warm


def run_on_cluster(configs: list[TrainConfig], data, cluster: str, warmup_runs: int = 0,
                   threads: int | None = None, train_fn: Callable = train, verbose: bool = True,
                   on_result: Callable[[ClusterOutcome], None] | None = None) -> ClusterOutcome:
    """Train each config once, each run a Ray task on a free worker; `data` goes to the object store once.

    `threads`: torch threads per CPU worker (default: this process's, as a serial run uses). `train_fn`
    is what each run calls (`train.train`, or a wrapper of it). `on_result` gets the outcome so far after
    each run comes back. Ctrl-C cancels the runs still out and returns the finished ones.
    """
    ray = _ray()
    kept = _KeptHandlers()   # the handlers before Ray (the command line's)
    outcome = ClusterOutcome([None] * len(configs), cluster=connect(cluster))
    options, count = plan_workers([n["Resources"] for n in ray.nodes() if n.get("Alive")],
                                  threads or torch.get_num_threads())
    data_ref = ray.put(data)
    actor = ray.remote(Worker).options(max_restarts=-1, max_task_retries=RETRIES, **options)
    workers = [actor.remote([data_ref], options["num_cpus"]) for _ in range(min(count, len(configs)))]
    queue, pending = deque(range(len(configs))), {}

    def submit(worker):
        if queue:
            i = queue.popleft()
            pending[worker.run.remote(configs[i], warmup_runs, train_fn)] = (i, worker)

    progress = Progress(len(configs), enabled=verbose)
    try:
        for worker in workers:
            submit(worker)
        while pending:
            kept.restore()   # Ray's core worker can install its own SIGTERM handler late (it aborts)
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=5.0)
            if not ready:
                continue
            index, worker = pending.pop(ready[0])
            outcome.runs[index] = _fetch(ray, ready[0], configs[index], outcome)
            submit(worker)
            progress.update(outcome.runs)
            if on_result is not None:
                on_result(outcome)
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref)
        outcome.stopped = True
        progress.note(f"interrupted: cancelled {len(pending)} run(s) still out")
    finally:
        for worker in workers:   # frees the GPUs (and stops runs still going after Ctrl-C)
            ray.kill(worker)
        progress.close()
    return outcome


def _fetch(ray, ref, cfg: TrainConfig, outcome: ClusterOutcome):
    """The run's TrainResult, or a FailedRun when it raised or its worker died past the retries."""
    try:
        result, warm = ray.get(ref)
    except ray.exceptions.RayError as err:
        lines = [line for line in str(err).splitlines() if line.strip()]
        return FailedRun(cfg, f"{type(err).__name__}: {lines[-1] if lines else ''}"[:300])
    outcome.warmup_seconds.extend(warm)
    return result


class Progress:
    """One line, rewritten in place, counting finished runs and their running mean accuracy.

    In Jupyter one output updated in place; in a terminal one line redrawn after a carriage return;
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
        mean = f"{statistics.fmean(r.test_accuracy for r in done):.4f}" if done else "-"
        self.text = (f"runs finished {len(done)}/{self.total}" + (f", {failed} failed" if failed else "")
                     + f", running mean {mean}")
        self._show(final=len(done) + failed == self.total)

    def note(self, text: str) -> None:
        self.text = f"{self.text}; {text}" if self.text else text
        self._show(final=True)

    def close(self) -> None:
        if self.tty and self.text:
            sys.stdout.write("\n")
            sys.stdout.flush()

    def _show(self, final: bool) -> None:
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
        elif final or time.monotonic() - self._last >= self.every:
            print(self.text, flush=True)
            self._last = time.monotonic()
