"""A worker runs the node instances of one process group, each on its own thread.

The ``inproc`` executor runs one worker holding every node; ``procs`` runs one worker per
process group, under the supervisor. Both share this code: only where an edge leaves the
process does a frame go through ZeroMQ (and the frame plane).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import zmq

from posegraph import scheduler
from posegraph.node import Context, Node, NodeError, Source, resolve
from posegraph.packet import Frame, ShmRef, WireError, decode, encode
from posegraph.runtime.channels import (
    Entry,
    Inbox,
    LocalEndpoint,
    Outlet,
    RemoteEndpoint,
)
from posegraph.runtime.curve import RunKeys
from posegraph.runtime.plan import InstanceSpec, Plan
from posegraph.runtime.shm import FramePlane

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_ERRORS = 25
SAMPLES_PER_REPORT = 2000


class FatalNodeError(Exception):
    """A node cannot start; restarting it would not help."""

    def __init__(self, node: str, message: str):
        self.node = node
        super().__init__(f"node {node!r}: {message}")


@dataclass
class Stats:
    """Counters and latency samples of one node instance, reported every half second."""

    frames_in: int = 0
    frames_out: int = 0
    dropped: int = 0  # by the input queue policy, or by process() returning None
    lost: int = 0  # gone in transit (a restarted process, a full socket)
    errors: int = 0
    gaps: int = 0  # gap events this instance announced
    proc_ms: deque = field(default_factory=lambda: deque(maxlen=SAMPLES_PER_REPORT))
    queue_ms: deque = field(default_factory=lambda: deque(maxlen=SAMPLES_PER_REPORT))
    e2e_ms: deque = field(default_factory=lambda: deque(maxlen=SAMPLES_PER_REPORT))
    hop_ms: deque = field(default_factory=lambda: deque(maxlen=SAMPLES_PER_REPORT))
    # at sinks: upstream node -> ms from that node's output to here, per frame
    tail_ms: dict[str, list[float]] = field(default_factory=dict)
    last_index: dict[str, int] = field(default_factory=dict)
    done: bool = False
    # at sinks: the capture time of the first frame and the time the last one arrived
    first_capture: float = float("inf")
    last_delivery: float = 0.0
    # at sinks, per stream: the newest frame's capture time, and whether its source is up,
    # down (source_down seen, no source_up since) or ended (eos), since when
    streams: dict[str, dict[str, Any]] = field(default_factory=dict)

    def stream_state(self, stream: str, state: str | None = None, capture: float = 0.0) -> None:
        """Called for every frame at a sink: no clock read unless the state changes."""
        st = self.streams.get(stream)
        if st is None:
            st = self.streams[stream] = {"capture": 0.0, "state": "up", "since": time.time()}
        if capture:  # the newest by arrival: the wall clock may have been set back
            st["capture"] = capture
        if state is not None and state != st["state"]:
            st["state"], st["since"] = state, time.time()

    def snapshot(self, queue: int) -> dict[str, Any]:
        snap = {
            "in": self.frames_in,
            "out": self.frames_out,
            "dropped": self.dropped,
            "lost": self.lost,
            "errors": self.errors,
            "gaps": self.gaps,
            "queue": queue,
            "proc_ms": list(self.proc_ms),
            "queue_ms": list(self.queue_ms),
            "e2e_ms": list(self.e2e_ms),
            "hop_ms": list(self.hop_ms),
            "tail_ms": self.tail_ms,
            "last_index": dict(self.last_index),
            "done": self.done,
            "window": (self.first_capture, self.last_delivery),
            "streams": {name: dict(st) for name, st in self.streams.items()},
        }
        for d in (self.proc_ms, self.queue_ms, self.e2e_ms, self.hop_ms):
            d.clear()
        self.tail_ms = {}
        return snap


class Runner:
    """One node instance: its inbox, its node object, its outlets, its thread."""

    def __init__(self, worker: Worker, spec: InstanceSpec):
        self.worker = worker
        self.spec = spec
        self.name = spec.id
        self.stats = Stats()
        self.stop = worker.stop  # sources stop taking new frames
        self.abort = worker.abort  # everything stops now
        self.inbox = Inbox(spec.capacity, spec.policy, self._on_drop)
        self.entry = Entry(
            self.inbox,
            spec.replicated_inputs,
            worker.plan.options.reorder_timeout_s,
            self._on_late,
            self._gap,
        )
        self.outlets: list[Outlet] = []
        self.node: Node | None = None
        self.thread: threading.Thread | None = None
        self._eid = itertools.count()
        self._dropped_marks: list[tuple[str, int]] = []
        self._allocated: dict[int, tuple[ShmRef, np.ndarray]] = {}
        self._marks_lock = threading.Lock()
        self._last_in: dict[str, int] = {}
        self._last_out: dict[str, int] = {}
        self._eos_seen: dict[str, int] = {}
        self._streams_open = set(spec.eos_expected)
        self.error: str | None = None
        self.fatal = False  # the error needs a change of configuration, not a restart
        # thread -> when its call into the node began: a call that never returns is a hang
        self._calls: dict[int, float] = {}

    # ----------------------------------------------------------------- set-up

    def build(self) -> None:
        spec = self.spec
        cls = resolve(spec.type)
        try:
            self.node = cls(**spec.params)
            ctx = Context(
                name=spec.node,
                pipeline=self.worker.plan.pipeline,
                replica=spec.replica,
                replicas=spec.replicas,
                latency_budget=self.worker.plan.latency_budget,
                max_frames=self.worker.plan.max_frames,
                resume_index=self.worker.resume.get(spec.node, 0),
                stop_event=self.stop,
                in_flight=spec.in_flight,
                extra={"base_dir": self.worker.plan.base_dir},
                alloc=self._alloc if spec.is_source else None,
            )
            self.node.setup(ctx)
        except NodeError as exc:
            raise FatalNodeError(spec.node, str(exc)) from exc
        except (TypeError, ValueError, FileNotFoundError, OSError, ImportError) as exc:
            raise FatalNodeError(spec.node, f"{type(exc).__name__}: {exc}") from exc

    def connect(
        self, endpoints: dict[str, Entry], zctx: zmq.Context | None, curve: RunKeys | None = None
    ) -> None:
        for out in self.spec.outputs:
            eps = []
            for group, address in out.targets:
                if group == self.spec.group:
                    consumer_id = (
                        out.consumer
                        if len(out.targets) == 1
                        else f"{out.consumer}.{out.targets.index((group, address))}"
                    )
                    eps.append(LocalEndpoint(consumer_id, endpoints[consumer_id]))
                else:
                    hwm = 2 * max(1, self.spec.capacity) if out.block else 1000
                    eps.append(RemoteEndpoint(zctx, address, hwm, curve))
            self.outlets.append(Outlet(out.consumer, eps, out.block))

    # --------------------------------------------------------------- helpers

    def _event(self, stream: str, kind: str, index: int, **meta: Any) -> Frame:
        ev = Frame.make_event(stream, kind, index, **meta)
        ev.meta["_eid"] = f"{self.name}:{os.getpid()}:{next(self._eid)}"
        return ev

    def _gap(self, stream: str, index: int, count: int) -> Frame:
        return self._event(stream, "gap", index, count=count)

    def _alloc(self, shape: tuple[int, ...]) -> np.ndarray:
        plane = self.worker.plane
        if plane is not None and any(o.remote for o in self.outlets):
            got = plane.alloc(shape)
            if got is not None:
                self._allocated[id(got[1])] = got
                return got[1]
        return np.empty(shape, np.uint8)

    def _adopt(self, frame: Frame) -> None:
        """Attach the slot a source wrote its image into; release slots it left unused."""
        held = self._allocated.pop(id(frame.image), None)
        if held is not None and held[1] is frame.image:
            frame.image.flags.writeable = False
            frame.shm = held
        for ref, _ in self._allocated.values():
            self.worker.plane.release(ref)
        self._allocated.clear()

    def _on_drop(self, frame: Frame) -> None:
        self.stats.dropped += 1
        self.worker.release(frame)
        with self._marks_lock:
            self._dropped_marks.append((frame.stream, frame.index))

    def _on_late(self, frame: Frame) -> None:
        self.stats.lost += 1
        self.worker.release(frame)

    # --------------------------------------------------------------- output

    def emit(self, frame: Frame) -> None:
        """Send a frame or event to every consumer, announcing any frames missing before it."""
        replica = self.spec.replicas > 1
        if frame.event is None:
            last = self._last_out.get(frame.stream)
            if last is not None and frame.index > last + 1 and not replica:
                self._send(self._gap(frame.stream, last + 1, frame.index - last - 1))
            self._last_out[frame.stream] = frame.index
        elif frame.event == "gap":
            end = frame.index + int(frame.meta.get("count", 0)) - 1
            self._last_out[frame.stream] = max(self._last_out.get(frame.stream, -1), end)
            self.stats.gaps += 1
        self._send(frame)

    def _send(self, frame: Frame) -> None:
        worker = self.worker
        if frame.event is None:
            self.stats.frames_out += 1
            self.stats.last_index[frame.stream] = frame.index
            if frame.trace and frame.trace[-1][0] == self.name:
                t_in = frame.trace[-1][1]
                frame.trace[-1] = (self.name, t_in, time.time())
            else:
                frame.trace.append((self.name, time.time(), time.time()))
        if not self.outlets:
            worker.release(frame)
            return
        copies = sum(o.targets(frame) for o in self.outlets)
        remote = any(o.remote for o in self.outlets)
        ref = worker.hold(frame, remote)
        if ref is not None:
            worker.plane.acquire(ref, copies - 1)
        cache: list[bytes] = []

        def payload() -> bytes:
            if not cache:
                cache.append(encode(frame, ref) if ref is not None else encode(frame))
            return cache[0]

        for outlet in self.outlets:
            sent = outlet.send(self.spec.node, frame, payload, self.abort)
            missing = outlet.targets(frame) - sent
            if missing and frame.event is None:
                self.stats.lost += missing
            if ref is not None:
                for _ in range(missing):
                    worker.plane.release(ref)

    # --------------------------------------------------------------- input

    def _flush_marks(self, deliver: Callable[[Frame], None]) -> None:
        """Announce frames that the input queue dropped, as gap events in stream order."""
        with self._marks_lock:
            marks, self._dropped_marks = self._dropped_marks, []
        if not marks:
            return
        marks.sort()
        runs: list[list] = []
        for stream, index in marks:
            if runs and runs[-1][0] == stream and runs[-1][1] + runs[-1][2] == index:
                runs[-1][2] += 1
            else:
                runs.append([stream, index, 1])
        for stream, index, count in runs:
            self._last_in[stream] = max(self._last_in.get(stream, -1), index + count - 1)
            deliver(self._gap(stream, index, count))

    def _handle_event(self, ev: Frame) -> None:
        if self.spec.is_sink and ev.event in ("source_down", "source_up"):
            self.stats.stream_state(ev.stream, "down" if ev.event == "source_down" else "up")
        if ev.event == "gap":
            end = ev.index + int(ev.meta.get("count", 0)) - 1
            self._last_in[ev.stream] = max(self._last_in.get(ev.stream, -1), end)
        if ev.event == "eos":
            n = self._eos_seen.get(ev.stream, 0) + 1
            self._eos_seen[ev.stream] = n
            if n < self.spec.eos_expected.get(ev.stream, 1):
                return
            if self.spec.is_sink:
                self.stats.stream_state(ev.stream, "ended")
            self._call(self.node.on_event, ev)
            self.emit(ev)
            self._streams_open.discard(ev.stream)
            return
        out = self._call(self.node.on_event, ev)
        if out is not None:
            self.emit(out)

    def busy_s(self) -> float:
        """How long the oldest call into the node that has not returned has lasted; 0 if
        none is under way."""
        started = list(self._calls.values())  # one C call: safe beside the node's threads
        return time.monotonic() - min(started) if started else 0.0

    def _call(self, fn: Callable[[Frame], Frame | None], arg: Frame) -> Frame | None:
        thread = threading.get_ident()
        if not self.node.waits_outside:
            self._calls[thread] = time.monotonic()
        try:
            out = fn(arg)
        except NodeError as exc:
            # a node that cannot work with what it is given: stopping beats a restart loop
            raise FatalNodeError(self.spec.node, str(exc)) from exc
        except Exception as exc:  # noqa: BLE001 - a node's bug costs a frame, not the pipeline
            self.stats.errors += 1
            self._consecutive_errors += 1
            if self._consecutive_errors == 1 or self.stats.errors % 100 == 0:
                log.error(
                    "node %s failed on %s %d of %s (%d errors so far): %s\n%s",
                    self.name,
                    arg.event or "frame",
                    arg.index,
                    arg.stream,
                    self.stats.errors,
                    exc,
                    traceback.format_exc(limit=4),
                )
            if self._consecutive_errors >= MAX_CONSECUTIVE_ERRORS:
                raise RuntimeError(
                    f"node {self.name!r} failed on {self._consecutive_errors} "
                    f"frames in a row; last error: {exc}"
                ) from exc
            return None
        finally:
            self._calls.pop(thread, None)
        self._consecutive_errors = 0
        return out

    def _admit(self, frame: Frame, deliver: Callable[[Frame], None]) -> bool:
        """Take a frame in, announcing frames missing before it (through ``deliver``);
        False if seen already."""
        if self.spec.replicas == 1:
            last = self._last_in.get(frame.stream)
            if last is not None and frame.index <= last:
                # a restarted source resumes from its last reported frame, so the first
                # frames it sends may already have passed here
                log.debug(
                    "node %s: frame %d of %s seen already", self.name, frame.index, frame.stream
                )
                self.worker.release(frame)
                return False
            if last is not None and frame.index > last + 1:
                lost = frame.index - last - 1
                self.stats.lost += lost
                deliver(self._gap(frame.stream, last + 1, lost))
        self._last_in[frame.stream] = max(self._last_in.get(frame.stream, -1), frame.index)
        self.stats.frames_in += 1
        return True

    def _timed_call(self, frame: Frame) -> tuple[Frame | None, float]:
        t0 = time.perf_counter()
        out = self._call(self.node.process, frame)
        return out, (time.perf_counter() - t0) * 1000.0

    def _complete(self, frame: Frame, out: Frame | None, proc_ms: float) -> None:
        """Account for a processed frame and pass its result on."""
        self.stats.proc_ms.append(proc_ms)
        held = frame.shm
        if held is not None and (out is None or out.shm is None or out.image is not held[1]):
            # the node dropped the frame or replaced its image: this reference is done
            self.worker.plane.release(held[0])
            if out is not None:
                out.shm = None
        if self.spec.is_sink or not self.outlets:
            now = time.time()
            self.stats.e2e_ms.append((now - frame.captured_at) * 1000.0)
            self.stats.first_capture = min(self.stats.first_capture, frame.captured_at)
            self.stats.last_delivery = now
            if self.spec.is_sink:
                self.stats.stream_state(frame.stream, capture=frame.captured_at)
            self._record_hops(frame, now)
            if out is None:
                return
        if out is None:
            self.stats.dropped += 1
            if self.spec.replicas > 1:
                self.emit(self._gap(frame.stream, frame.index, 1))
            return
        self.emit(out)

    def _record_hops(self, frame: Frame, now: float) -> None:
        """Transport time of each hop: from one node's output to the next one's input; and
        from each node's output to here."""
        trace = frame.trace
        for (_, _, t_out), (_, t_in, _) in zip(trace[:-1], trace[1:], strict=False):
            self.stats.hop_ms.append((t_in - t_out) * 1000.0)
        tails = self.stats.tail_ms
        for node, _, t_out in trace[:-1]:
            samples = tails.setdefault(node, [])
            if len(samples) < SAMPLES_PER_REPORT:
                samples.append((now - t_out) * 1000.0)

    # ---------------------------------------------------------------- loops

    def start(self) -> None:
        target = self._run_source if self.spec.is_source else self._run_node
        self.thread = threading.Thread(
            target=self._guard, args=(target,), name=self.name, daemon=True
        )
        self.thread.start()

    def _guard(self, target: Callable[[], None]) -> None:
        try:
            target()
        except FatalNodeError as exc:
            self.error = str(exc)
            self.fatal = True
            log.error("%s", exc)
            self.worker.failed.set()
        except Exception as exc:  # noqa: BLE001 - reported to the supervisor, which restarts
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("node %s stopped: %s\n%s", self.name, self.error, traceback.format_exc())
            self.worker.failed.set()
        finally:
            self.stats.done = self.error is None
            try:
                self.node.close()
            except Exception as exc:  # noqa: BLE001
                log.warning("node %s: close() failed: %s", self.name, exc)

    def _run_source(self) -> None:
        node: Source = self.node  # type: ignore[assignment]
        self._consecutive_errors = 0
        limit = self.worker.plan.max_frames
        count = 0
        frames = node.frames()
        try:
            while not self.stop.is_set() and not self.abort.is_set():
                try:
                    item = next(frames)
                except StopIteration:
                    break
                except NodeError as exc:
                    log.error("source %s: %s", self.name, exc)
                    self.error = str(exc)
                    break
                if item.event is not None:
                    item.meta.setdefault("_eid", f"{self.name}:{os.getpid()}:{next(self._eid)}")
                    self.emit(item)
                    continue
                self.stats.frames_in += 1
                if self._allocated:
                    self._adopt(item)
                item.trace.append((self.name, item.captured_at, item.captured_at))
                self.emit(item)
                count += 1
                if limit is not None and count >= limit:
                    break
        finally:
            frames.close()
        if not self.abort.is_set():
            self.emit(self._event(node.stream, "eos", node.next_index))

    def _run_node(self) -> None:
        self._consecutive_errors = 0
        slots = self.spec.in_flight
        # A concurrent node works on up to ``slots`` frames at once. What it passes on
        # keeps each stream's order: a frame waits in its stream's line for the frames
        # before it, and events (eos, gaps) take their place in the same line; streams
        # do not wait for each other.
        pool = ThreadPoolExecutor(slots, thread_name_prefix=self.name) if slots > 1 else None
        lines: dict[str, deque[tuple[Frame, Future | None]]] = {}

        def in_line(event: Frame) -> None:
            lines.setdefault(event.stream, deque()).append((event, None))

        deliver = self._handle_event if pool is None else in_line
        try:
            while self._streams_open and not self.abort.is_set():
                self._emit_done(lines, slots)
                item = self.inbox.get(0.005 if lines else 0.1)
                self._flush_marks(deliver)
                if item is None:
                    self.entry.tick(self.abort)
                    continue
                if item.event is not None:
                    deliver(item)
                    continue
                queued_at = (
                    item.trace[-1][1] if item.trace and item.trace[-1][0] == self.name else None
                )
                if queued_at is not None:
                    self.stats.queue_ms.append((time.time() - queued_at) * 1000.0)
                if not self._admit(item, deliver):
                    continue
                if pool is None:
                    self._complete(item, *self._timed_call(item))
                else:
                    future = pool.submit(self._timed_call, item)
                    lines.setdefault(item.stream, deque()).append((item, future))
            self._emit_done(lines, 0)
        finally:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
            for line in lines.values():
                for frame, future in line:
                    if future is not None:
                        self.worker.release(frame)
            for left in self.inbox.close():
                self.worker.release(left)

    def _emit_done(self, lines: dict[str, deque[tuple[Frame, Future | None]]], slots: int) -> None:
        """Pass on what is finished at the head of each stream's line; then, while more
        than ``slots - 1`` frames are in the lines (0: any), wait for one to finish,
        unless the pipeline aborts."""
        while True:
            waiting: list[Future] = []
            for stream in list(lines):
                line = lines[stream]
                while line:
                    item, future = line[0]
                    if future is not None and not future.done():
                        waiting.append(future)
                        break
                    line.popleft()
                    if future is None:
                        self._handle_event(item)
                    else:
                        self._complete(item, *future.result())
                if not line:
                    del lines[stream]
            held = sum(future is not None for line in lines.values() for _, future in line)
            if not waiting or held < max(1, slots) or self.abort.is_set():
                return
            wait_futures(waiting, timeout=0.1, return_when=FIRST_COMPLETED)


class Worker:
    """Builds, connects and runs the node instances of one process group."""

    def __init__(self, plan: Plan, group: str, resume: dict[str, int] | None = None):
        self.plan = plan
        self.group = group
        self.resume = resume or {}
        self.stop = threading.Event()
        self.abort = threading.Event()
        self.failed = threading.Event()
        self.plane = (
            FramePlane(
                plan.run_id,
                group.replace("/", "_"),
                plan.rows[group],
                len(plan.rows),
                slots=plan.options.shm_slots,
            )
            if plan.shm
            else None
        )
        scheduler.forget_retired()  # counts of an earlier run in this process
        self.runners = [Runner(self, spec) for spec in plan.groups[group]]
        self.zctx: zmq.Context | None = None
        self._receivers: list[threading.Thread] = []
        self._sockets: list[zmq.Socket] = []

    # frame-plane bookkeeping ------------------------------------------------

    def hold(self, frame: Frame, remote: bool) -> ShmRef | None:
        """The reference this frame's image travels under, writing it into a pool if needed."""
        if self.plane is None or frame.event is not None or frame.image is None:
            return None
        if frame.shm is not None and frame.image is frame.shm[1]:
            return frame.shm[0]
        if not remote:
            return None
        put = self.plane.put(frame.image)
        if put is None:
            return None
        frame.shm = put
        frame.image = put[1]
        return put[0]

    def release(self, frame: Frame) -> None:
        if self.plane is not None and frame.shm is not None and frame.image is frame.shm[1]:
            self.plane.release(frame.shm[0])

    # lifecycle --------------------------------------------------------------

    def build(self) -> None:
        """Construct and set up every node; raises FatalNodeError for a clear stop."""
        for r in self.runners:
            r.build()

    def connect(self) -> None:
        os.makedirs(self.plan.rundir, exist_ok=True)
        entries = {r.name: r.entry for r in self.runners}
        needs_zmq = any(r.spec.remote_inputs for r in self.runners) or any(
            g != self.group for r in self.runners for o in r.spec.outputs for g, _ in o.targets
        )
        if needs_zmq:
            self.zctx = zmq.Context.instance()
        for r in self.runners:
            r.connect(entries, self.zctx, self.plan.curve)
            if not r.spec.remote_inputs:
                continue
            sock = self.zctx.socket(zmq.PULL)
            sock.setsockopt(zmq.RCVHWM, 2 * r.spec.capacity if r.spec.policy == "block" else 1000)
            sock.setsockopt(zmq.LINGER, 0)
            if self.plan.curve is not None:
                self.plan.curve.serve(sock)
            sock.bind(r.spec.address)
            self._sockets.append(sock)
            t = threading.Thread(
                target=self._receive, args=(r, sock), name=f"{r.name}-recv", daemon=True
            )
            self._receivers.append(t)

    def read(self, runner: Runner, sock: zmq.Socket) -> tuple[str, Frame] | None:
        """Take one message off a node's socket: (producing node, frame), None if unusable."""
        src_raw, body = sock.recv_multipart()
        now = time.time()
        try:
            frame, ref = decode(body)
        except WireError as exc:
            runner.stats.lost += 1
            log.error("node %s: dropped a message: %s", runner.name, exc)
            return None
        if ref is not None:
            view = self.plane.view(ref) if self.plane is not None else None
            if view is None:
                runner.stats.lost += 1  # announced as a gap by the index jump
                return None
            frame.image = view
            frame.shm = (ref, view)
        if frame.event is None:
            frame.trace.append((runner.name, now, 0.0))
        return msgpack.unpackb(src_raw), frame

    def _receive(self, runner: Runner, sock: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        while not self.abort.is_set() and runner.thread is not None and runner.thread.is_alive():
            if not poller.poll(100):
                runner.entry.tick(self.abort)
                continue
            msg = self.read(runner, sock)
            if msg is not None:
                runner.entry.put(msg[0], msg[1], self.abort)

    def start(self) -> None:
        for r in self.runners:
            r.start()
        for t in self._receivers:
            t.start()

    @property
    def done(self) -> bool:
        return all(r.thread is not None and not r.thread.is_alive() for r in self.runners)

    def join(self, timeout: float | None = None) -> None:
        end = None if timeout is None else time.monotonic() + timeout
        for r in self.runners:
            if r.thread is not None:
                r.thread.join(None if end is None else max(0.0, end - time.monotonic()))

    def set_tails(self, tails: dict[str, float]) -> None:
        """Tell the last model nodes how long their frames now take to reach the sinks
        (seconds, see ``Context.tail``)."""
        for r in self.runners:
            if r.spec.last_model and r.name in tails and r.node is not None:
                r.node.ctx.tail = float(tails[r.name])

    def metrics(self) -> dict[str, Any]:
        out = {}
        for r in self.runners:
            snap = r.stats.snapshot(len(r.inbox))
            snap["lost"] += r.entry.lost
            # frames a sink could not write (a disk with no room): dropped there
            snap["dropped"] += getattr(r.node, "unwritten", 0)
            snap["busy_s"] = r.busy_s()
            out[r.name] = snap
        if self.plane is not None:
            out["_plane"] = {"fallbacks": self.plane.fallbacks, "reclaimed": self.plane.reclaimed}
        schedulers = scheduler.snapshot()
        if schedulers:
            out["_scheduler"] = schedulers
        return out

    def close(self) -> None:
        """Stop every thread and close the sockets (what is still queued is dropped: the
        supervisor ends processes only once every sink has seen eos)."""
        self.abort.set()
        for t in self._receivers:
            t.join(1.0)
        self.join(1.0)
        for r in self.runners:
            for o in r.outlets:
                o.close()
        for s in self._sockets:
            s.close(0)
        if self.plane is not None:
            self.plane.close()
