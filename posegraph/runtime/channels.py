"""Edges: bounded input queues with a policy, in-order merging after replicas, ZeroMQ links.

A node instance has one :class:`Inbox`. Items reach it through its :class:`Entry`, either
from a node in the same process or from the receiver thread of its ZeroMQ PULL socket.
Frames coming from a replicated node pass a :class:`Reorder` stage first, which puts each
stream back in index order. On the producing side an :class:`Outlet` sends each frame to
one instance of the consumer (round-robin when it has replicas) and every event to all.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import msgpack
import zmq

from posegraph.packet import Frame
from posegraph.runtime.curve import RunKeys

log = logging.getLogger(__name__)

ZERO_COPY_MIN = 1 << 16


def event_id(frame: Frame) -> str | None:
    return frame.meta.get("_eid")


class Inbox:
    """A bounded queue with a policy: ``block``, ``drop_oldest`` or ``latest``.

    Events are never dropped and do not count against the capacity. ``latest`` keeps only
    the newest frame of each stream. ``on_drop`` receives every frame the policy drops.
    """

    def __init__(self, capacity: int, policy: str, on_drop: Callable[[Frame], None]):
        self.capacity = capacity
        self.policy = policy
        self.on_drop = on_drop
        self._q: deque[Frame] = deque()
        self._frames = 0
        self._cond = threading.Condition()
        self.closed = False

    def __len__(self) -> int:
        return self._frames

    def has_room(self) -> bool:
        return self.policy != "block" or self._frames < self.capacity

    def put(self, item: Frame, stop: threading.Event | None = None) -> bool:
        """Queue ``item``; with ``block`` wait for room. False if the inbox closed meanwhile."""
        dropped: list[Frame] = []
        with self._cond:
            if item.event is None:
                if self.policy == "block":
                    while self._frames >= self.capacity and not self.closed:
                        if stop is not None and stop.is_set():
                            return False
                        self._cond.wait(0.05)
                elif self.policy == "latest":
                    if any(f.stream == item.stream and f.event is None for f in self._q):
                        keep = deque()
                        for f in self._q:
                            (
                                dropped if f.event is None and f.stream == item.stream else keep
                            ).append(f)
                        self._q = keep
                    while self._frames - len(dropped) >= self.capacity:
                        dropped.append(self._pop_oldest_frame())
                else:
                    while self._frames - len(dropped) >= self.capacity:
                        dropped.append(self._pop_oldest_frame())
                self._frames += 1 - len(dropped)
            # counted before the newer frame can be taken: its consumer announces the
            # drop (a gap) before it, never after
            for f in dropped:
                self.on_drop(f)
            if self.closed:
                return False
            self._q.append(item)
            self._cond.notify()
        return True

    def _pop_oldest_frame(self) -> Frame:
        for i, f in enumerate(self._q):
            if f.event is None:
                del self._q[i]
                return f
        raise AssertionError("no frame to drop")

    def get(self, timeout: float | None = None) -> Frame | None:
        with self._cond:
            if not self._q and not self.closed:
                self._cond.wait(timeout)
            if not self._q:
                return None
            item = self._q.popleft()
            if item.event is None:
                self._frames -= 1
            self._cond.notify_all()
            return item

    def close(self) -> list[Frame]:
        """Close the inbox; returns what was still queued."""
        with self._cond:
            self.closed = True
            left = list(self._q)
            self._q.clear()
            self._frames = 0
            self._cond.notify_all()
            return left


@dataclass
class _StreamOrder:
    stream: str
    expected: int = 0  # streams start at index 0
    heap: list = field(default_factory=list)
    eos_seen: int = 0
    waiting_since: float | None = None


class Reorder:
    """Puts one stream of a replicated producer back in index order.

    Each of the ``instances`` replicas sends its share of the frames, its drops as
    ``gap`` events and a copy of every event that came from upstream. Frames and gaps are
    released in index order, duplicated events once, ``eos`` once all instances sent it.
    A missing index is waited for at most ``timeout`` seconds (its replica died), then
    skipped with a ``gap`` event of its own.
    """

    def __init__(
        self,
        instances: int,
        timeout: float,
        on_late: Callable[[Frame], None],
        make_gap: Callable[[str, int, int], Frame],
    ):
        self.instances = instances
        self.timeout = timeout
        self.on_late = on_late
        self.make_gap = make_gap
        self._streams: dict[str, _StreamOrder] = {}
        self._seen_events: deque[str] = deque(maxlen=4096)
        self._seq = itertools.count()
        self.lost = 0

    def push(self, item: Frame) -> list[Frame]:
        st = self._streams.setdefault(item.stream, _StreamOrder(item.stream))
        heapq.heappush(st.heap, (item.index, 1 if item.event is None else 0, next(self._seq), item))
        return self._release(st, time.monotonic())

    def tick(self) -> list[Frame]:
        now = time.monotonic()
        out: list[Frame] = []
        for st in self._streams.values():
            out += self._release(st, now)
        return out

    def _release(self, st: _StreamOrder, now: float) -> list[Frame]:
        out: list[Frame] = []
        while st.heap:
            index, _, _, item = st.heap[0]
            if index > st.expected:
                if st.waiting_since is None:
                    st.waiting_since = now
                if now - st.waiting_since < self.timeout:
                    break
                missing = index - st.expected
                self.lost += missing
                out.append(self.make_gap(item.stream, st.expected, missing))
                st.expected = index
            heapq.heappop(st.heap)
            st.waiting_since = None
            if item.event is None:
                if index < st.expected:
                    self.on_late(item)
                    continue
                st.expected = index + 1
                out.append(item)
            elif item.event == "eos":
                st.eos_seen += 1
                if st.eos_seen == self.instances:
                    out.append(item)
            else:
                eid = event_id(item)
                if eid is not None and eid in self._seen_events:
                    continue
                if eid is not None:
                    self._seen_events.append(eid)
                if item.event == "gap":
                    st.expected = max(st.expected, index + int(item.meta.get("count", 0)))
                out.append(item)
        if st.heap and st.heap[0][0] <= st.expected:
            return out + self._release(st, now)
        if st.eos_seen and st.eos_seen < self.instances and not st.heap:
            # an instance that died may have lost its copy of eos
            if st.waiting_since is None:
                st.waiting_since = now
            elif now - st.waiting_since > self.timeout:
                st.eos_seen = self.instances
                out.append(Frame.make_event(st.stream, "eos", st.expected))
        return out


class Entry:
    """The way into one node instance: merges replicated producers, then the inbox."""

    def __init__(
        self,
        inbox: Inbox,
        replicated: dict[str, int],
        reorder_timeout: float,
        on_late: Callable[[Frame], None],
        make_gap: Callable[[str, int, int], Frame],
    ):
        self.inbox = inbox
        self._lock = threading.Lock()
        self._reorders = {
            src: Reorder(n, reorder_timeout, on_late, make_gap) for src, n in replicated.items()
        }

    def put(self, src: str, item: Frame, stop: threading.Event | None = None) -> bool:
        reorder = self._reorders.get(src)
        if reorder is None:
            return self.inbox.put(item, stop)
        with self._lock:
            released = reorder.push(item)
            ok = True
            for f in released:
                ok = self.inbox.put(f, stop) and ok
            return ok

    def tick(self, stop: threading.Event | None = None) -> None:
        if not self._reorders:
            return
        with self._lock:
            for reorder in self._reorders.values():
                for f in reorder.tick():
                    self.inbox.put(f, stop)

    @property
    def lost(self) -> int:
        return sum(r.lost for r in self._reorders.values())


# ------------------------------------------------------------------- ZeroMQ


def envelope(src: str) -> bytes:
    return msgpack.packb(src)


class Endpoint:
    """One consumer instance as seen by a producer."""

    def ready(self) -> bool:
        raise NotImplementedError

    def send(
        self,
        src: str,
        frame: Frame,
        payload: Callable[[], bytes],
        block: bool,
        stop: threading.Event,
    ) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        pass


class LocalEndpoint(Endpoint):
    """A consumer instance in the same process: it gets its own Frame object (nodes may
    change fields), sharing the image."""

    def __init__(self, name: str, entry: Entry):
        self.name = name
        self.entry = entry

    def ready(self) -> bool:
        return self.entry.inbox.has_room()

    def send(self, src, frame, payload, block, stop) -> bool:
        trace = frame.trace
        if frame.event is None:
            trace = [*trace, (self.name, time.time(), 0.0)]
        item = frame.replace(trace=trace, meta=dict(frame.meta))
        return self.entry.put(src, item, stop)


class RemoteEndpoint(Endpoint):
    """A PUSH socket connected to a consumer instance's PULL address."""

    def __init__(self, ctx: zmq.Context, address: str, hwm: int, curve: RunKeys | None = None):
        self.address = address
        self.sock = ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.SNDHWM, hwm)
        self.sock.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            curve.connect_as_client(self.sock)
        self.sock.connect(address)

    def ready(self) -> bool:
        return bool(self.sock.poll(0, zmq.POLLOUT))

    def send(self, src, frame, payload, block, stop) -> bool:
        parts = [envelope(src), payload()]
        # zero-copy pays off only for large bodies (pixels sent inline)
        copy = len(parts[1]) < ZERO_COPY_MIN
        try:
            self.sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=copy)
            return True
        except zmq.Again:
            if not block:
                return False
        while not stop.is_set():
            if self.sock.poll(100, zmq.POLLOUT):
                self.sock.send_multipart(parts, copy=copy)
                return True
        return False

    def close(self) -> None:
        self.sock.close(0)


class Outlet:
    """All instances of one consumer node: frames to one (round-robin), events to all."""

    def __init__(self, consumer: str, endpoints: list[Endpoint], block: bool):
        self.consumer = consumer
        self.endpoints = endpoints
        self.block = block
        self._next = 0

    @property
    def remote(self) -> bool:
        return isinstance(self.endpoints[0], RemoteEndpoint)

    def targets(self, frame: Frame) -> int:
        return len(self.endpoints) if frame.event is not None else 1

    def send(
        self, src: str, frame: Frame, payload: Callable[[], bytes], stop: threading.Event
    ) -> int:
        """Send; returns how many copies were delivered (the rest were dropped)."""
        if frame.event is not None:
            return sum(ep.send(src, frame, payload, True, stop) for ep in self.endpoints)
        n = len(self.endpoints)
        ep = self.endpoints[self._next % n]
        if n > 1:
            # round-robin over the instances that have room; wait only when none has
            for k in range(n):
                cand = self.endpoints[(self._next + k) % n]
                if cand.ready():
                    ep = cand
                    self._next += k
                    break
        self._next += 1
        return int(ep.send(src, frame, payload, self.block, stop))

    def close(self) -> None:
        for ep in self.endpoints:
            ep.close()
