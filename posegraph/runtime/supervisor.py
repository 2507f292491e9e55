"""The ``procs`` executor: one supervised OS process per process group, linked by ZeroMQ.

The supervisor starts every worker, waits until each has set up its nodes, then lets the
sources go. A worker that dies is restarted with backoff (its sources resume after the
last frame they sent; the loss is announced downstream as a gap); after
``max_restarts`` failures within ``restart_window_s`` the pipeline stops with the node's
error. A worker that fails to
set up (a missing file, a bad parameter) stops the pipeline at once with that error.
SIGINT and SIGTERM drain: sources stop, the last frames flow to the sinks, every process
ends; a second signal, or a drain longer than ``drain_timeout_s``, ends them at once.

A worker that is alive but stuck is treated as one that died: when a call into one of its
nodes (``process``, an event) has not returned for ``hang_timeout_s``, or the process
has sent no report for that long (a node holding the interpreter's lock in a C call
starves the thread that reports), it is killed and restarted like any other failure.
Sources are not watched this way: waiting for a camera is their work, and they watch
their own input (RTSP's ``stall_timeout``). Set-up has a limit of its own,
``setup_timeout_s``: a process that has not set up its nodes in that time stops the run
(at the start) or is killed and restarted (after a restart).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import multiprocessing as mp
import os
import shutil
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgpack
import zmq

from posegraph.metrics import Metrics
from posegraph.runtime.curve import authenticator
from posegraph.runtime.plan import Plan, rundir_of
from posegraph.runtime.shm import reap_stale, unlink_run

if TYPE_CHECKING:
    from posegraph.runtime.cluster import Cluster

log = logging.getLogger(__name__)

REPORT_EVERY = 0.5
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15


class PipelineError(RuntimeError):
    """The pipeline stopped because of an error; the message says which node and why."""


# ------------------------------------------------------------------ worker side


def _set_up_process(group: str) -> None:
    """End with the supervisor, and carry the group's name (``pg:NAME`` in ps and top)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        libc.prctl(PR_SET_NAME, f"pg:{group}"[:15].encode())
    except OSError:
        pass


def worker_main(plan: Plan, group: str, resume: dict[str, int], log_level: int) -> None:
    """Entry point of a worker process."""
    from posegraph.runtime.worker import FatalNodeError, Worker

    _set_up_process(group)
    from posegraph.logs import configure

    configure(log_level, f"%(levelname)s [{group}] %(message)s", process=group)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when to stop
    zctx = zmq.Context.instance()
    # tcp: the ZAP handler lets only the run's processes into this one's sockets; it runs
    # before any of them binds
    auth = authenticator(zctx, [plan.curve.client_public]) if plan.curve else None
    control = zctx.socket(zmq.DEALER)
    control.setsockopt(zmq.IDENTITY, group.encode())
    control.setsockopt(zmq.LINGER, 2000)
    if plan.curve is not None:
        plan.curve.connect_as_client(control)
    control.connect(plan.control)

    def send(kind: str, **body) -> None:
        control.send(msgpack.packb({"t": kind, **body}, use_bin_type=True))

    worker = Worker(plan, group, resume)
    # while setting up, nothing has flowed and nothing is held: a stop ends the process
    # at once (a model may take minutes to load); from then on it drains
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))  # noqa: SLF001
    code = 0
    try:
        try:
            worker.build()
            signal.signal(signal.SIGTERM, lambda *_: worker.abort.set())
            worker.connect()
        except FatalNodeError as exc:
            send("fatal", error=str(exc), node=exc.node)
            code = 3
            return
        except Exception as exc:  # noqa: BLE001 - stops the run, as a node's own set-up error does
            log.error("process %s could not set up:\n%s", group, traceback.format_exc())
            send("fatal", error=f"process {group!r} could not set up: {type(exc).__name__}: {exc}")
            code = 3
            return
        send("ready")
        gc.freeze()  # what set-up allocated stays out of every later collection
        while not worker.abort.is_set():
            if control.poll(100):
                msg = msgpack.unpackb(control.recv())
                if msg["t"] == "go":
                    break
                if msg["t"] == "stop":
                    worker.stop.set()
        worker.start()
        next_report = time.monotonic() + REPORT_EVERY
        while True:
            if control.poll(50):
                msg = msgpack.unpackb(control.recv())
                if msg["t"] == "stop":
                    worker.stop.set()
                elif msg["t"] == "tails":
                    worker.set_tails(msg["tails"])
            if worker.failed.is_set():
                send("metrics", nodes=worker.metrics())
                fatal = [r for r in worker.runners if r.fatal]
                if fatal:
                    send("fatal", error=fatal[0].error, node=fatal[0].spec.node)
                    code = 3
                else:
                    send("failed", error="; ".join(r.error for r in worker.runners if r.error))
                    code = 1
                break
            if worker.done or worker.abort.is_set():
                send("metrics", nodes=worker.metrics())
                send("done")
                # Stay until every process is done: ZeroMQ drops what a peer has not read
                # yet when the sending process goes away, so nobody leaves before the
                # sinks have seen eos.
                while not worker.abort.is_set():
                    if control.poll(100) and msgpack.unpackb(control.recv())["t"] == "exit":
                        break
                break
            if time.monotonic() >= next_report:
                send("metrics", nodes=worker.metrics())
                next_report += REPORT_EVERY
    finally:
        worker.close()
        control.close()
        if auth is not None:
            auth.stop()
        zctx.term()
        logging.shutdown()
        os._exit(code)  # noqa: SLF001 - node threads may still be blocked in I/O


# -------------------------------------------------------------- supervisor side


def _signal_text(number: int) -> str:
    try:
        name = signal.Signals(number).name
    except ValueError:
        return f"killed by signal {number}"
    hint = {
        "SIGBUS": ": a write into memory that could not be supplied, such as a full /dev/shm",
        "SIGKILL": ": by a person or the kernel (out of memory? see dmesg)",
    }.get(name, "")
    return f"killed by signal {number} ({name}{hint})"


@dataclass
class _Proc:
    group: str
    nodes: list[str]
    sources: list[str]
    process: mp.Process | None = None
    state: str = "starting"  # starting, ready, running, done, failed
    failures: int = 0  # within the restart window
    failure_times: list[float] = field(default_factory=list)
    restart_at: float | None = None
    last_error: str = ""
    started: list[float] = field(default_factory=list)
    last_report: float = 0.0  # when it last sent its metrics (monotonic)
    killed: bool = False  # by the supervisor, as stuck: waiting for it to end


#: how often the supervisor touches its run's folder and everything in it
FRESH_EVERY_S = 3600.0


def keep_fresh(rundir: str) -> None:
    """Touch the run's folder and its files (ipc sockets, the supervisor's pid), and write
    the pid again where it is gone; called by the run's supervisor.

    Hosts that clean /tmp by age (systemd-tmpfiles: 10 days on Fedora and RHEL) would
    otherwise remove them from a run of months: a restarted process could then not bind
    its socket, and another run would take this one's shared memory for a dead run's.
    """
    try:
        names = os.listdir(rundir)
    except OSError:
        return
    if "supervisor.pid" not in names:
        with contextlib.suppress(OSError), open(os.path.join(rundir, "supervisor.pid"), "w") as f:
            f.write(str(os.getpid()))
    for name in [*names, ""]:
        with contextlib.suppress(OSError):
            os.utime(os.path.join(rundir, name))


def claim_rundir(plan: Plan) -> None:
    """Make the run's folder with this process's pid in it, as the run's supervisor, and
    remove what runs that were killed left behind (their segments and folders)."""
    try:
        os.makedirs(plan.rundir, exist_ok=True)
        with open(os.path.join(plan.rundir, "supervisor.pid"), "w") as f:
            f.write(str(os.getpid()))
    except OSError as exc:
        raise PipelineError(
            f"cannot make the run's folder {plan.rundir}: {exc.strerror}; a run keeps its "
            "sockets in the temporary folder: set TMPDIR to a writable one"
        ) from None
    reap_stale(rundir_of)


class Supervisor:
    def __init__(
        self,
        plan: Plan,
        metrics: Metrics,
        log_level: int = logging.WARNING,
        cluster: Cluster | None = None,
    ):
        self.plan = plan
        self.cluster = cluster  # runs the placed groups on other hosts
        self.metrics = metrics
        self.log_level = log_level
        self.ctx = mp.get_context("spawn")
        self.procs = {
            g: _Proc(g, [i.id for i in insts], [i.node for i in insts if i.is_source])
            for g, insts in plan.groups.items()
        }
        self.stop_requested = threading.Event()
        self.abort_requested = threading.Event()
        self.error: str | None = None

    def request_stop(self) -> None:
        if self.stop_requested.is_set():
            self.abort_requested.set()
        self.stop_requested.set()

    def _spawn(self, p: _Proc) -> None:
        resume = {}
        for src in p.sources:
            m = self.metrics.nodes.get(src)
            if m is not None and m.last_index:
                resume[src] = max(m.last_index.values()) + 1
        args = (self.plan, p.group, resume, self.log_level)
        if self.cluster is not None and p.group in self.plan.placement:
            p.process = self.cluster.process(p.group, args)
        else:
            p.process = self.ctx.Process(
                target=worker_main, name=f"posegraph:{p.group}", args=args, daemon=False
            )
        p.process.start()
        p.state = "starting"
        p.killed = False
        p.started.append(time.monotonic())

    def run(
        self,
        duration: float | None = None,
        on_tick: Callable[[], None] | None = None,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        """Run until the sources end, a stop, or ``duration`` seconds from the moment every
        process was set up (``on_stop`` is called then, as the drain begins)."""
        plan = self.plan
        claim_rundir(plan)
        # tcp runs get a context of their own: its ZAP handler, which lets in only the
        # run's worker processes, must not answer for other sockets of this process
        zctx = zmq.Context() if plan.curve else zmq.Context.instance()
        auth = authenticator(zctx, [plan.curve.client_public]) if plan.curve else None
        control = zctx.socket(zmq.ROUTER)
        control.setsockopt(zmq.LINGER, 0)
        if plan.curve is not None:
            plan.curve.serve(control)
        control.bind(plan.control)
        try:
            for p in self.procs.values():
                self._spawn(p)
            self._loop(control, duration, on_tick, on_stop)
        finally:
            self._terminate_all()
            control.close(0)
            if auth is not None:
                auth.stop()
                zctx.term()
            unlink_run(plan.run_id)
            shutil.rmtree(plan.rundir, ignore_errors=True)
        if self.error:
            raise PipelineError(self.error)

    def _send(self, control: zmq.Socket, group: str, kind: str, **body: Any) -> None:
        control.send_multipart([group.encode(), msgpack.packb({"t": kind, **body})])

    def _send_tails(self, control: zmq.Socket) -> None:
        """Tell each process its last model nodes' time to the sinks, as measured there."""
        for group, p in self.procs.items():
            if p.state != "running":
                continue
            mine = [i.id for i in self.plan.groups[group] if i.last_model]
            tails = self.metrics.tails(mine) if mine else {}
            if tails:
                self._send(control, group, "tails", tails=tails)

    def _loop(
        self,
        control: zmq.Socket,
        duration: float | None,
        on_tick: Callable[[], None] | None,
        on_stop: Callable[[], None] | None,
    ) -> None:
        opts = self.plan.options
        running = False
        started_at: float | None = None
        stop_sent_at: float | None = None
        next_tick = next_fresh = time.monotonic()
        while True:
            now = time.monotonic()
            while control.poll(0 if not running else 50):
                group_raw, body = control.recv_multipart()
                self._on_message(control, group_raw.decode(), msgpack.unpackb(body), running)
            if self.error:
                return
            if not running and all(p.state == "ready" for p in self.procs.values()):
                for g in self.procs:
                    self._send(control, g, "go")
                    self.procs[g].state = "running"
                    self.procs[g].last_report = now
                running = True
                started_at = next_tick = now  # READY=1 on this turn: the run's clock starts
                self.metrics.started = now
                self.metrics.running = True
            if not running:
                time.sleep(0.02)
            for p in self.procs.values():
                self._check(p, control, now)
            if self.error:
                return
            if all(p.state == "done" for p in self.procs.values()):
                for g in self.procs:
                    self._send(control, g, "exit")
                return
            if running and duration is not None and now - started_at >= duration:
                if not self.stop_requested.is_set() and on_stop is not None:
                    on_stop()
                self.stop_requested.set()
            if self.stop_requested.is_set() and not running:
                # no frame has flowed, so there is nothing to drain: a stop while models
                # load ends every process now instead of after the slowest set-up
                log.warning("stopped while starting; ending every process")
                return
            if self.stop_requested.is_set() and stop_sent_at is None:
                stop_sent_at = now
                for g, p in self.procs.items():
                    if p.state != "done":
                        self._send(control, g, "stop")
            if self.abort_requested.is_set() or (
                stop_sent_at is not None and now - stop_sent_at > opts.drain_timeout_s
            ):
                if not self.abort_requested.is_set():
                    log.warning(
                        "pipeline did not drain within %.0f s; stopping every process",
                        opts.drain_timeout_s,
                    )
                return
            if now >= next_fresh:
                keep_fresh(self.plan.rundir)
                next_fresh = now + FRESH_EVERY_S
            if now >= next_tick:
                if running:
                    self._send_tails(control)
                if on_tick is not None:
                    on_tick()
                next_tick = now + 0.25

    def _on_message(self, control, group: str, msg: dict, running: bool) -> None:
        p = self.procs.get(group)
        if p is None:
            return
        kind = msg["t"]
        if kind == "ready":
            if running:
                self._send(control, group, "go")
                if self.stop_requested.is_set():
                    self._send(control, group, "stop")
                p.state = "running"
                p.last_report = time.monotonic()
            else:
                p.state = "ready"
        elif kind == "metrics":
            p.last_report = time.monotonic()
            self.metrics.update(msg["nodes"], group)
            limit = self.plan.options.hang_timeout_s
            if limit and p.state == "running":
                for node, snap in msg["nodes"].items():
                    busy = snap.get("busy_s", 0.0) if not node.startswith("_") else 0.0
                    if busy > limit:
                        self._kill_stuck(p, f"node {node} has been in one call for {busy:.0f} s")
                        break
        elif kind == "done":
            p.state = "done"
        elif kind == "fatal":
            self.error = msg["error"]
        elif kind == "failed":
            p.last_error = msg["error"]

    def _check(self, p: _Proc, control, now: float) -> None:
        proc = p.process
        if p.state in ("done", "failed") or proc is None:
            if p.state == "failed" and p.restart_at is not None and now >= p.restart_at:
                p.restart_at = None
                self.metrics.restarted(p.nodes)
                log.warning(
                    "restarting %s (failure %d of %d)",
                    p.group,
                    p.failures,
                    self.plan.options.max_restarts,
                )
                self._spawn(p)
            return
        if proc.is_alive() or proc.exitcode is None:
            opts = self.plan.options
            limit = opts.hang_timeout_s
            if limit and p.state == "running" and now - p.last_report > limit:
                self._kill_stuck(p, f"it has sent no report for {now - p.last_report:.0f} s")
            setting_up = now - p.started[-1]
            if opts.setup_timeout_s and p.state == "starting" and setting_up > opts.setup_timeout_s:
                if self.metrics.running:
                    # a restart that does not come back: killed and restarted as a failure
                    self._kill_stuck(
                        p, f"it has not set up in {setting_up:.0f} s", "setup_timeout_s"
                    )
                elif not self.error:
                    self.error = (
                        f"process {p.group!r} (nodes {', '.join(p.nodes)}) did not set up "
                        f"within {opts.setup_timeout_s:g} s (runtime setup_timeout_s): a "
                        "model or device that never answers? Raise setup_timeout_s if "
                        "loading takes longer"
                    )
            return
        if p.state == "done":
            return
        if proc.exitcode == 3:
            # set-up failed: the fatal message carries the error; give it a moment to land
            if p.restart_at is None:
                p.restart_at = now + 2.0
            elif now > p.restart_at and not self.error:
                self.error = f"process {p.group!r} (nodes {', '.join(p.nodes)}) could not set up"
            return
        code = proc.exitcode
        why = p.last_error or (_signal_text(-code) if code < 0 else f"exit status {code}")
        # Only failures within the restart window count: a pipeline that runs for months
        # may lose a process now and then without ever being stopped for it.
        window = self.plan.options.restart_window_s
        p.failure_times = [t for t in p.failure_times if now - t < window] + [now]
        p.failures = len(p.failure_times)
        p.state = "failed"
        if p.failures > self.plan.options.max_restarts:
            self.error = (
                f"process {p.group!r} (nodes {', '.join(p.nodes)}) failed "
                f"{p.failures} times within {window:.0f} s; last: {why}"
            )
            return
        delay = min(10.0, 0.25 * 2 ** (p.failures - 1))
        log.warning(
            "process %s (nodes %s) died: %s; restarting in %.2f s",
            p.group,
            ", ".join(p.nodes),
            why,
            delay,
        )
        p.last_error = ""
        p.restart_at = now + delay

    def _kill_stuck(self, p: _Proc, why: str, option: str = "hang_timeout_s") -> None:
        """Kill a worker that is alive but stuck; ``_check`` restarts it as a failure."""
        if p.killed or self.stop_requested.is_set():
            return  # a drain has drain_timeout_s for a process that does not end
        p.killed = True
        p.last_error = f"killed as stuck ({why})"
        log.error(
            "process %s (nodes %s) is stuck: %s (runtime %s: %g); killing it",
            p.group,
            ", ".join(p.nodes),
            why,
            option,
            getattr(self.plan.options, option),
        )
        p.process.kill()

    def _terminate_all(self) -> None:
        procs = [p.process for p in self.procs.values() if p.process is not None]
        deadline = time.monotonic() + 3.0
        if all(p.state == "done" for p in self.procs.values()):
            for proc in procs:  # told to exit: give them a moment
                proc.join(max(0.0, deadline - time.monotonic()))
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(1.0)
