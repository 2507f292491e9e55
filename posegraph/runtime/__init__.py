"""Executors: ``inproc`` (every node on a thread of this process) and ``procs`` (supervised
processes linked by ZeroMQ, frames through shared memory)."""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from posegraph.graph import Graph
from posegraph.metrics import Metrics, ServiceWatch
from posegraph.runtime import supervisor
from posegraph.runtime.notify import Notifier
from posegraph.runtime.plan import Plan, build_plan
from posegraph.runtime.supervisor import PipelineError, Supervisor, claim_rundir, keep_fresh

log = logging.getLogger(__name__)

EXECUTORS = ("inproc", "procs")

__all__ = ["EXECUTORS", "PipelineError", "run"]


@contextlib.contextmanager
def _signals(on_signal: Callable[[], None]) -> Iterator[None]:
    """SIGINT and SIGTERM ask the pipeline to drain (only from the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, lambda *_: on_signal())
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run(
    graph: Graph,
    executor: str = "procs",
    max_frames: int | None = None,
    duration: float | None = None,
    on_tick: Callable[[Metrics], None] | None = None,
    log_level: int | None = None,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """Run a graph until its sources end, ``max_frames`` per source, or ``duration`` seconds.

    ``stop``, when set (from another thread), drains and ends the run as SIGINT does.
    Returns the metrics summary; raises PipelineError when a node stops the pipeline.
    """
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}: use one of {', '.join(EXECUTORS)}")
    graph.validate()
    placed = [n for n, spec in graph.nodes.items() if spec.place]
    if placed and executor != "procs":
        raise PipelineError(
            f"nodes {', '.join(placed)} have place: other hosts run only with the procs "
            "executor (without --inproc)"
        )
    plan = build_plan(graph, executor, max_frames)
    metrics = Metrics(graph.name, order=[i.id for i in plan.instances()])
    server = None
    if graph.runtime.metrics_port is not None:
        try:
            server = metrics.serve(graph.runtime.metrics_port, graph.runtime.metrics_host)
        except OSError as exc:
            raise PipelineError(
                f"cannot serve metrics on {graph.runtime.metrics_host}:"
                f"{graph.runtime.metrics_port}: {exc}; choose another metrics_port"
            ) from None
    notifier = Notifier()

    def status() -> str:
        return Metrics.line_from(metrics.summary())

    asked: list[Callable[[], None]] = []  # how this executor stops, once it runs

    watch = ServiceWatch(graph.runtime.skip_warn_s) if graph.runtime.skip_warn_s else None

    def tick() -> None:
        metrics.last_tick = time.monotonic()
        if watch is not None and metrics.running:
            watch.check(metrics)
        notifier.tick(metrics.running, status)
        if stop is not None and stop.is_set() and asked and not metrics.stopping:
            asked[0]()
        if on_tick is not None:
            on_tick(metrics)

    def begin_stop() -> None:
        metrics.stopping = True
        notifier.stopping()

    level = log_level if log_level is not None else logging.getLogger().getEffectiveLevel()
    cluster = None
    try:
        if plan.placement:
            from posegraph.runtime.cluster import Cluster, ClusterError

            try:
                cluster = Cluster(plan)
                cluster.place()
            except ClusterError as exc:
                raise PipelineError(str(exc)) from None
        if executor == "procs":
            sup = Supervisor(plan, metrics, level, cluster)

            def on_signal() -> None:
                begin_stop()
                sup.request_stop()

            asked.append(on_signal)
            with _signals(on_signal):
                sup.run(duration, tick, begin_stop)
        else:
            _run_inproc(plan, metrics, duration, tick, begin_stop, asked)
    finally:
        metrics.stopping = True
        if notifier.enabled:
            notifier.stopping(f"ended: {status()}")
            notifier.close()
        if server is not None:
            server.shutdown()
        if cluster is not None:
            cluster.close()
    summary = metrics.summary()
    if cluster is not None:
        summary["placement"] = cluster.placement
    return summary


def _run_inproc(
    plan: Plan,
    metrics: Metrics,
    duration: float | None,
    tick: Callable[[], None] | None,
    on_stop: Callable[[], None] = lambda: None,
    asked: list[Callable[[], None]] | None = None,
) -> None:
    from posegraph.runtime.worker import FatalNodeError, Worker

    worker = Worker(plan, "main")
    last_models = [i.id for i in plan.instances() if i.last_model]
    stop_requests = []

    def on_signal() -> None:
        on_stop()
        stop_requests.append(time.monotonic())
        worker.stop.set()
        if len(stop_requests) > 1:
            worker.abort.set()

    if asked is not None:
        asked.append(on_signal)
    try:
        claim_rundir(plan)
        with _signals(on_signal):
            try:
                worker.build()
            except FatalNodeError as exc:
                raise PipelineError(str(exc)) from None
            worker.connect()
            worker.start()
            started = time.monotonic()
            metrics.started = started
            metrics.running = True
            next_tick = next_fresh = started
            stop_at: float | None = None
            while not worker.done:
                time.sleep(0.05)
                now = time.monotonic()
                if worker.failed.is_set():
                    errors = "; ".join(r.error for r in worker.runners if r.error)
                    metrics.update(worker.metrics())
                    raise PipelineError(errors)
                if duration is not None and now - started >= duration:
                    if not worker.stop.is_set():
                        on_stop()
                    worker.stop.set()
                if worker.stop.is_set():
                    if stop_at is None:
                        stop_at = now
                    elif worker.abort.is_set() or now - stop_at > plan.options.drain_timeout_s:
                        log.warning(
                            "pipeline did not drain within %.0f s; stopping",
                            plan.options.drain_timeout_s,
                        )
                        break
                if now >= next_fresh:
                    keep_fresh(plan.rundir)
                    next_fresh = now + supervisor.FRESH_EVERY_S
                if now >= next_tick:
                    snapshot = worker.metrics()
                    metrics.update(snapshot)
                    if not worker.stop.is_set():
                        _stop_if_stuck(snapshot, plan.options.hang_timeout_s)
                    worker.set_tails(metrics.tails(last_models))
                    if tick is not None:
                        tick()
                    next_tick = now + 0.25
            metrics.update(worker.metrics())
    finally:
        worker.abort.set()
        worker.join(2.0)
        worker.close()
        shutil.rmtree(plan.rundir, ignore_errors=True)


def _stop_if_stuck(snapshot: dict[str, Any], limit: float) -> None:
    """Stop an ``inproc`` run with a node that has been in one call for ``limit`` seconds:
    a thread cannot be killed or restarted, so the run ends with an error saying which (a
    service manager restarts the process; the ``procs`` executor restarts the node)."""
    if not limit:
        return
    for node, snap in snapshot.items():
        busy = 0.0 if node.startswith("_") else snap.get("busy_s", 0.0)
        if busy > limit:
            raise PipelineError(
                f"node {node} has been in one call for {busy:.0f} s (runtime hang_timeout_s: "
                f"{limit:g}); the inproc executor cannot restart a thread, so the run stops: "
                "run without --inproc to have the node's process killed and restarted"
            )
