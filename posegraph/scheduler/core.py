"""One scheduler per device: requests from every stream, earliest deadline first, in batches
of fixed sizes that still meet the oldest deadline.

A *request* is ``n`` items for one model (a frame's image for a detector, a frame's person
crops for a top-down model, in the order ``pose.topdown`` gives them: people it could not
serve in the stream's frame before first, then best detection score first) with the
frame's ``deadline`` (``time.time()`` seconds, the frames' clock) and stream. Items of a
request may run in different batches; a batch may hold items of many requests, of many
streams. On submission the deadline becomes a time on this host's monotonic clock, with at
most the frame's budget left (from ``captured_at``), and the scheduler keeps time by that
clock alone: a wall clock set back (NTP, a hand, a VM resumed) costs no wait and no stall,
one set forward costs at most the frames in flight at that moment.

The ``edf`` policy, each time the device is free:

1. A request whose items cannot finish by its deadline even in the smallest bucket is not
   run: its remaining items are *skipped* (counted per stream). Unless its model has not
   run for ``probe_every`` seconds on that estimate's word alone: then it runs, and the
   model's estimates start again from that run (an estimate thrown out by a stall would
   otherwise never be measured again).
2. The model whose oldest request has the earliest deadline runs next. Its batch takes items
   in deadline order up to the largest bucket whose estimated run time still meets that
   oldest deadline, padded to the next bucket (so the model sees a few fixed shapes).
3. A batch that is not full waits for more items while waiting still meets the oldest
   deadline, unless every client of the model already has a request waiting (no item can
   arrive). Meanwhile the device serves another model's ready batch if it fits.
4. A client waits for its request until the deadline, less a margin for its node's work
   after the model (the scheduler's ``margin``, or what the client measured that work to
   take when that is longer), at most: what is not done by then is skipped, so the frame
   leaves on time (late results are counted and thrown away).

The ``fifo`` policy is the baseline it is measured against: requests in arrival order,
one at a time, in chunks of the largest bucket, no deadline, nothing skipped.

Run times per (model, bucket) are measured online (:class:`RunTimes`); every bucket is run
at registration (warm-up), so the first frames are neither slow nor unplanned.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from posegraph.scheduler.timing import RunTimes, timer_for

log = logging.getLogger(__name__)

#: A model as the scheduler sees it: a batch (B, ...) -> named outputs, each (B, ...).
ModelFn = Callable[[np.ndarray], dict[str, np.ndarray]]

POLICIES = ("edf", "fifo")
ROLES = ("image", "crops")


# a model skipped this long on its estimate alone runs its next request with time left;
# twice as long after each such run that finds the estimate right, up to PROBE_MAX_S (a
# model too slow for the budget costs its device one wasted batch a minute at most)
PROBE_S = 2.0
PROBE_MAX_S = 60.0

# at most this share of a frame's budget is kept free for the work after the last model
TAIL_SHARE = 0.25


def model_key(name: str, *settings: Any) -> str:
    """A model's name on a scheduler: readable, and the same only for the same settings
    (weights file, input size, precision...): ``hrnet_w32#1a2b3c4d``."""
    digest = hashlib.sha1(repr(settings).encode()).hexdigest()[:8]
    return f"{name}#{digest}"


def bucket_sizes(batch: int) -> tuple[int, ...]:
    """Powers of two below ``batch``, then ``batch``: (1, 2, 4, 8) for 8, (1, 2, 4, 6) for 6."""
    sizes = [1 << i for i in range(batch.bit_length()) if 1 << i < batch]
    return (*sizes, batch)


def monotonic_deadline(deadline: float, captured_at: float | None = None) -> float:
    """A frame's ``deadline`` (``time.time()`` seconds) as a ``time.monotonic()`` time.

    Frames carry wall-clock times (they cross hosts); waits here must not follow the wall
    clock when it is set. The time left is at most the frame's budget (``deadline -
    captured_at``): a frame captured before the clock was set back would otherwise seem to
    have that much longer (an hour set back: an hour's wait).
    """
    if not math.isfinite(deadline):
        return deadline
    left = deadline - time.time()
    if captured_at:
        left = min(left, deadline - captured_at)
    return time.monotonic() + left


@dataclass
class Result:
    """What a request got: ``outputs`` name -> (n, ...) with a row per item (zeros where not
    done), ``done`` (n,) bool. Items not done were skipped: their deadline could not be met."""

    outputs: dict[str, np.ndarray]
    done: np.ndarray
    #: ``time.monotonic()`` when the result was handed over: the request finished, or the
    #: client was due to leave without the rest (what it then waited longer is the machine's
    #: delay)
    released: float = math.nan

    @property
    def skipped(self) -> int:
        return int((~self.done).sum())


@dataclass
class StreamCounts:
    requests: int = 0
    items: int = 0
    done: int = 0
    skipped: int = 0
    late: int = 0  # run, but finished after the client had left with the frame

    @property
    def skipped_share(self) -> float:
        return self.skipped / self.items if self.items else 0.0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class RecentService:
    """Items served per stream, decaying with a time constant of ``tau`` seconds; a stream
    with no request for ``tau`` seconds no longer counts as active."""

    def __init__(self, tau: float = 1.0):
        self.tau = tau
        self.value: dict[str, float] = {}
        self.seen: dict[str, float] = {}

    def add(self, stream: str, n: int, now: float) -> None:
        last = self.seen.get(stream, now)
        decayed = self.value.get(stream, 0.0) * math.exp(-max(0.0, now - last) / self.tau)
        self.value[stream] = decayed + n
        self.seen[stream] = now

    def recent(self, now: float) -> dict[str, float]:
        """Active streams -> their decayed count."""
        return {
            s: v * math.exp(-(now - self.seen[s]) / self.tau)
            for s, v in self.value.items()
            if now - self.seen[s] <= self.tau
        }


class _Request:
    __slots__ = (
        "handle",
        "items",
        "stream",
        "deadline",
        "seq",
        "next",
        "inflight",
        "done",
        "outputs",
        "finished",
        "cancelled",
        "error",
        "released",
        "submitted",
    )

    def __init__(
        self,
        handle: ModelHandle,
        items: np.ndarray,
        stream: str,
        deadline: float,
        seq: int,
    ):
        self.handle = handle
        self.items = items
        self.stream = stream
        self.deadline = deadline
        self.seq = seq
        self.next = 0  # first item not yet given to a batch
        self.inflight = 0
        self.done = np.zeros(len(items), bool)
        self.outputs: dict[str, np.ndarray] = {}
        self.finished = threading.Event()
        self.cancelled = False
        self.error: BaseException | None = None
        self.released = math.inf
        self.submitted = time.monotonic()

    @property
    def remaining(self) -> int:
        return len(self.items) - self.next

    def key(self) -> tuple[float, int]:
        return (self.deadline, self.seq)

    def __lt__(self, other: _Request) -> bool:
        return self.key() < other.key()


class ModelHandle:
    """One model on a scheduler; nodes call :meth:`run`. Get one from
    :meth:`DeviceScheduler.register`."""

    def __init__(
        self,
        scheduler: DeviceScheduler,
        key: str,
        fn: ModelFn,
        buckets: tuple[int, ...],
        role: str = "image",
    ):
        self.scheduler = scheduler
        self.key = key
        self.role = role
        self.fn = fn
        self.buckets = buckets
        self.times = RunTimes(buckets)
        self.queue: list[_Request] = []  # heap by (deadline, seq)
        self.clients = 0
        self.outstanding = 0  # requests submitted and not finished
        self.counts: dict[str, StreamCounts] = {}
        self.batches: dict[int, int] = dict.fromkeys(buckets, 0)
        self.served = RecentService()
        self.measured_at = time.monotonic()  # when a batch of it last ran and was timed
        self.probing = False  # its next batch checks an estimate that kept it from running
        self.probe_every = PROBE_S

    def due_for_check(self) -> bool:
        """Whether it has not run for ``probe_every`` seconds: its next request runs even
        if its estimate says it will not finish in time (rule 1 of the module's policy).
        A node that routes work around the model on its estimate asks this first."""
        return time.monotonic() - self.measured_at > self.probe_every

    def bucket_for(self, n: int) -> int:
        """The smallest bucket that holds ``n`` items (n <= the largest bucket)."""
        return next(b for b in self.buckets if b >= n)

    def estimate(self, n: int) -> float:
        """Seconds to run ``n`` items in one batch (n <= the largest bucket)."""
        return self.times.estimate(self.bucket_for(n))

    def add_client(self) -> None:
        """One more submitter (a node instance, a stream): while some client has no request
        waiting, a batch that is not full may wait for one."""
        with self.scheduler._cond:
            self.clients += 1

    def remove_client(self) -> None:
        with self.scheduler._cond:
            self.clients = max(0, self.clients - 1)
            self.scheduler._cond.notify_all()

    def run(
        self,
        items: np.ndarray,
        deadline: float = math.inf,
        stream: str = "",
        captured_at: float | None = None,
    ) -> Result:
        """Run the model on ``items`` (n, ...), in order of priority; returns by ``deadline``
        (``time.time()`` seconds) at the latest under the ``edf`` policy, and, given the
        frame's ``captured_at``, never later than its budget from now."""
        due = monotonic_deadline(deadline, captured_at)
        request = self.scheduler._submit(self, items, stream, due)
        return self.scheduler._wait(request)

    def warm_up(self, example: np.ndarray, runs: int = 2) -> None:
        """Run every bucket ``runs`` times on copies of ``example`` (one item), measuring
        each, so that the estimates hold from the first frame."""

        def warm() -> None:
            for bucket in self.buckets:
                batch = np.repeat(example[None], bucket, axis=0)
                self.scheduler._run_batch(self, batch, bucket, record=False)  # first-call set-up
                for _ in range(runs):
                    self.scheduler._run_batch(self, batch, bucket)

        self.scheduler.call(warm)

    def snapshot(self) -> dict[str, Any]:
        with self.scheduler._cond:
            return {
                "buckets": list(self.buckets),
                "batches": {str(b): n for b, n in self.batches.items()},
                "run_ms": {str(b): v for b, v in self.times.snapshot().items()},
                "streams": {s: c.as_dict() for s, c in self.counts.items()},
            }


@dataclass
class DeviceScheduler:
    """Serves every model registered on one device from one worker thread.

    Attributes:
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        policy: ``edf`` (deadlines, batching, skips) or ``fifo`` (the baseline).
        margin: seconds kept free before a deadline for the work after the model call
            (decoding, the hand-over to the next node): batches are planned to end this
            long before it, and a client leaves with what is done this long before it.
        threads: torch intra-op threads of the scheduler's thread on the CPU; by default
            half the logical cores (the physical ones on a machine with two threads per
            core). More OpenMP threads than cores, with the nodes' own threads beside them,
            made every model call two to three times slower on a 2-core machine.
    """

    device: str = "cpu"
    policy: str = "edf"
    margin: float = 0.02
    threads: int | None = None
    handles: dict[str, ModelHandle] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"scheduler policy {self.policy!r}: use one of {', '.join(POLICIES)}")
        self._cond = threading.Condition()
        self._device_lock = threading.Lock()
        self._seq = itertools.count()
        self._timed = timer_for(self.device)
        self._closed = False
        self._failure: RuntimeError | None = None  # the loop's own fault, once it stopped
        self._threads_set = False
        # the last counts of models let go since the last snapshot
        self._retired: dict[str, dict[str, Any]] = {}
        self._calls: list[tuple[Callable[[], Any], dict[str, Any], threading.Event]] = []
        self._thread = threading.Thread(
            target=self._loop, name=f"scheduler-{self.device}", daemon=True
        )
        self._thread.start()

    # ----------------------------------------------------------- registration

    def register(
        self, key: str, fn: ModelFn, buckets: Sequence[int], role: str = "image"
    ) -> ModelHandle:
        """The handle of model ``key``, made on first use: nodes that run the same model
        (same weights, device and settings) share it and batch together.

        ``role``: ``image`` for a model that takes a frame's image (a detector, a
        whole-image pose model), ``crops`` for one that takes its person crops after it.
        """
        if role not in ROLES:
            raise ValueError(f"model role {role!r}: use one of {', '.join(ROLES)}")
        sizes = tuple(sorted({int(b) for b in buckets}))
        if not sizes or sizes[0] < 1:
            raise ValueError(f"bucket sizes must be positive, got {list(buckets)}")
        with self._cond:
            handle = self.handles.get(key)
            if handle is None:
                handle = self.handles[key] = ModelHandle(self, key, fn, sizes, role)
            elif handle.buckets != sizes:
                raise ValueError(
                    f"model {key} is on the {self.device} scheduler with buckets "
                    f"{list(handle.buckets)}, not {list(sizes)}: give its nodes the same batch"
                )
            return handle

    def unregister(self, handle: ModelHandle) -> None:
        """Forget a model no client uses any more."""
        with self._cond:
            if handle.clients == 0 and self.handles.get(handle.key) is handle:
                del self.handles[handle.key]
                # the node closed after the last metrics report: its final counts stay
                self._retired[handle.key] = handle.snapshot()

    def crops_reserve(self) -> float:
        """Seconds an image request leaves before its frame's deadline for the top-down
        model that runs on its crops next: the smallest batch of the slowest such model."""
        with self._cond:
            return max(
                (
                    h.times.estimate(h.buckets[0])
                    for h in self.handles.values()
                    if h.role == "crops"
                ),
                default=0.0,
            )

    def _set_threads(self) -> None:
        """Torch's intra-op threads for this thread (OpenMP settings are per thread)."""
        self._threads_set = True
        if self.device != "cpu" or "torch" not in sys.modules:
            return
        import torch

        torch.set_num_threads(self.threads or max(1, (os.cpu_count() or 2) // 2))

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the scheduler's thread, between batches, and return its result:
        every model call of a device happens on one thread (one OpenMP team on the CPU, one
        stream on CUDA)."""
        done = threading.Event()
        box: dict[str, Any] = {}
        with self._cond:
            if self._closed:
                raise RuntimeError(f"the {self.device} scheduler is closed")
            if self._failure is not None:
                raise self._failure
            self._calls.append((fn, box, done))
            self._cond.notify_all()
        done.wait()
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(5.0)

    def snapshot(self) -> dict[str, Any]:
        """Counts per model and stream, batches per bucket, run-time estimates; a model
        closed since the last snapshot is in this one with its final counts, once."""
        with self._cond:
            retired, self._retired = self._retired, {}
            models = {**retired, **{k: h.snapshot() for k, h in self.handles.items()}}
        return {"device": self.device, "policy": self.policy, "models": models}

    def forget_retired(self) -> None:
        """Drop the final counts of closed models not reported yet (a new run starts)."""
        with self._cond:
            self._retired = {}

    # ----------------------------------------------------------- clients' side

    def _submit(
        self, handle: ModelHandle, items: np.ndarray, stream: str, deadline: float
    ) -> _Request:
        with self._cond:
            if self._closed:
                raise RuntimeError(f"the {self.device} scheduler is closed")
            if self._failure is not None:
                raise self._failure
            request = _Request(handle, items, stream, deadline, next(self._seq))
            counts = handle.counts.setdefault(stream, StreamCounts())
            handle.served.add(stream, 0, time.monotonic())  # active, even if never served
            counts.requests += 1
            counts.items += len(items)
            handle.outstanding += 1
            if len(items) == 0:
                self._finish(request)
            else:
                heapq.heappush(handle.queue, request)
                self._cond.notify_all()
            return request

    def _wait(self, request: _Request) -> Result:
        if self.policy == "edf" and math.isfinite(request.deadline):
            leave = request.deadline - self.margin
            request.finished.wait(max(0.0, leave - time.monotonic()))
            if not request.finished.is_set():
                with self._cond:
                    if not request.finished.is_set():
                        # the frame leaves now; what is not done is skipped
                        self._cancel(request)
                        # due to leave at ``leave``, or at once if that had passed when it
                        # came: the client learns its own delay after the model from this,
                        # not the frame's lateness (which would lower the next deadlines,
                        # so that every frame came late, and so on, for good)
                        request.released = min(request.released, max(leave, request.submitted))
        else:
            request.finished.wait()
        if request.error is not None:
            raise request.error
        return Result(request.outputs, request.done.copy(), request.released)

    # ----------------------------------------------------------- bookkeeping (locked)

    def _skip_rest(self, request: _Request) -> None:
        """Skip the items of ``request`` not given to a batch yet."""
        skipped = request.remaining
        if skipped:
            request.handle.counts[request.stream].skipped += skipped
            request.next = len(request.items)
        if request.inflight == 0:
            self._finish(request)

    def _cancel(self, request: _Request) -> None:
        request.cancelled = True
        self._skip_rest(request)
        if not request.finished.is_set():
            # items in a running batch: their results will come late; count them then
            self._finish(request)

    def _finish(self, request: _Request) -> None:
        if not request.finished.is_set():
            request.released = time.monotonic()
            request.handle.outstanding -= 1
            request.finished.set()
            self._cond.notify_all()

    # ----------------------------------------------------------- the worker

    def _loop(self) -> None:
        try:
            self._serve()
        except Exception as exc:  # noqa: BLE001 - a fault of the scheduler itself
            # Every request fails with it, so its nodes fail and their process is restarted,
            # where a dead thread would leave every frame skipped from then on, unannounced.
            log.exception("the %s scheduler stopped", self.device)
            failure = RuntimeError(
                f"the {self.device} scheduler stopped: {type(exc).__name__}: {exc}"
            )
            with self._cond:
                self._failure = failure
                for handle in self.handles.values():
                    for request in handle.queue:
                        request.error = failure
                        self._finish(request)
                    handle.queue = []
                for _, box, done in self._calls:
                    box["error"] = failure
                    done.set()
                self._calls = []

    def _serve(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        for _, box, done in self._calls:
                            box["error"] = RuntimeError(f"the {self.device} scheduler closed")
                            done.set()
                        return
                    if self._calls:
                        plan = self._calls.pop(0)
                        break
                    plan = self._plan(time.monotonic())
                    if isinstance(plan, tuple):
                        break
                    self._cond.wait(plan)
            if isinstance(plan[1], dict):
                fn, box, done = plan
                try:
                    box["value"] = fn()
                except Exception as exc:  # handed back to the caller
                    box["error"] = exc
                done.set()
                continue
            handle, taken, bucket = plan
            self._execute(handle, taken, bucket)

    def _plan(
        self, now: float
    ) -> tuple[ModelHandle, list[tuple[_Request, int, int]], int] | float | None:
        """The next batch (handle, [(request, start, stop)], bucket), or how long to wait
        (None: until a request arrives)."""
        if self.policy == "fifo":
            return self._plan_fifo()
        heads: list[tuple[tuple[float, int], ModelHandle]] = []
        for handle in self.handles.values():
            self._drop_hopeless(handle, now)
            if handle.queue:
                heads.append((handle.queue[0].key(), handle))
        if not heads:
            return None
        heads.sort(key=lambda kh: kh[0])
        first = heads[0][1]
        taken, bucket, latest = self._form(first, now)
        if latest is None or latest <= now:
            return first, taken, bucket
        # The most urgent model would rather wait for more items; meanwhile the device
        # serves another model's ready batch, if that ends before the wait does.
        for _, other in heads[1:]:
            o_taken, o_bucket, o_latest = self._form(other, now)
            if (o_latest is None or o_latest <= now) and (
                now + other.times.estimate(o_bucket) <= latest
            ):
                return other, o_taken, o_bucket
        return max(1e-4, latest - now)

    def _drop_hopeless(self, handle: ModelHandle, now: float) -> None:
        """Skip the requests that cannot finish in time even alone in the smallest bucket."""
        smallest = handle.times.estimate(handle.buckets[0])
        while handle.queue:
            head = handle.queue[0]
            if head.cancelled or head.remaining == 0:
                heapq.heappop(handle.queue)
                continue
            if now + smallest + self.margin <= head.deadline:
                return
            if head.deadline - now > self.margin and now - handle.measured_at > handle.probe_every:
                # Not run for a while on the estimate's word alone: run it and measure
                # again. An estimate thrown far out (a stalled machine, a busy spell
                # that is over) would otherwise skip this model's work for good.
                handle.probing = True
                return
            heapq.heappop(handle.queue)
            log.debug(
                "%s: skip %d items of %s, %.1f ms left, smallest batch takes %.1f ms",
                handle.key,
                head.remaining,
                head.stream,
                1e3 * (head.deadline - now),
                1e3 * smallest,
            )
            self._skip_rest(head)
            if head.deadline - now > 0.5 * smallest:
                # skipped on the estimate's word, not because the frame came in late
                handle.times.relax(handle.buckets[0])

    def _form(
        self, handle: ModelHandle, now: float
    ) -> tuple[list[tuple[_Request, int, int]], int, float | None]:
        """Items for ``handle``'s next batch, its bucket, and the latest time it may start
        while waiting for more items (None: start now)."""
        oldest = handle.queue[0].deadline
        fits = [
            b for b in handle.buckets if now + handle.times.estimate(b) + self.margin <= oldest
        ] or [handle.buckets[0]]
        room = fits[-1]
        live = [r for r in sorted(handle.queue) if r.remaining and not r.cancelled]
        # Fairness, within the batch: the room goes round-robin, one item at a time, to the
        # oldest request of each stream (within a frame in the request's order), the
        # streams that lost the largest share of their items first; under overload every
        # stream loses the people at the end of its requests (pose.topdown puts those it
        # skipped last frame first) rather than some streams whole frames.
        firsts: dict[str, _Request] = {}
        for request in live:
            firsts.setdefault(request.stream, request)
        turns = sorted(firsts.values(), key=lambda r: -handle.counts[r.stream].skipped_share)
        # Fairness, over time: while other clients may still submit, a stream served more
        # than the average of the active streams in the last second takes at most its
        # equal part of the batch; the rest waits for the others (or the deadline).
        caps: dict[str, int] = {}
        if handle.outstanding < handle.clients:
            served = handle.served.recent(now)
            if len(served) > 1:
                fair = sum(served.values()) / len(served)
                part = max(1, math.ceil(room / len(served)))
                caps = {st: part for st, n in served.items() if n > 1.1 * fair}
        share = dict.fromkeys(live, 0)
        taken_by: dict[str, int] = {}
        count = 0

        def give(request: _Request, n: int) -> int:
            cap = caps.get(request.stream)
            if cap is not None:
                n = min(n, cap - taken_by.get(request.stream, 0))
            n = max(0, min(n, request.remaining - share[request], room - count))
            share[request] += n
            taken_by[request.stream] = taken_by.get(request.stream, 0) + n
            return n

        while count < room:
            before = count
            for request in turns:
                count += give(request, 1)
            if count == before:
                break
        for request in live:  # room left: later requests, in deadline order
            count += give(request, room)
        taken = [(r, r.next, r.next + n) for r, n in share.items() if n]
        bucket = handle.bucket_for(count)
        latest = None
        if count < room and handle.outstanding < handle.clients and math.isfinite(oldest):
            grown = handle.bucket_for(min(count + 1, room))
            latest = oldest - handle.times.estimate(grown) - self.margin
        return taken, bucket, latest

    def _plan_fifo(self) -> tuple[ModelHandle, list[tuple[_Request, int, int]], int] | None:
        first: _Request | None = None
        for handle in self.handles.values():
            for request in handle.queue:
                if request.remaining and (first is None or request.seq < first.seq):
                    first = request
        if first is None:
            return None
        handle = first.handle
        n = min(first.remaining, handle.buckets[-1])
        return handle, [(first, first.next, first.next + n)], handle.bucket_for(n)

    def _execute(
        self, handle: ModelHandle, taken: list[tuple[_Request, int, int]], bucket: int
    ) -> None:
        with self._cond:
            for request, start, stop in taken:
                request.next = stop
                request.inflight += stop - start
            handle.queue = [r for r in handle.queue if r.remaining and not r.cancelled]
            heapq.heapify(handle.queue)
        parts = [request.items[start:stop] for request, start, stop in taken]
        count = sum(len(p) for p in parts)
        if count < bucket:
            parts.append(np.zeros((bucket - count, *parts[0].shape[1:]), parts[0].dtype))
        batch = np.concatenate(parts) if len(parts) > 1 else parts[0]
        error: BaseException | None = None
        try:
            outputs = self._run_batch(handle, batch, bucket)
        except Exception as exc:  # the model's own failure goes back to every client
            error, outputs = exc, {}
        now = time.monotonic()
        with self._cond:
            handle.batches[bucket] += 1  # served batches: warm-up runs are not counted
            offset = 0
            for request, start, stop in taken:
                n = stop - start
                request.inflight -= n
                counts = handle.counts[request.stream]
                if error is not None:
                    request.error = error
                elif request.cancelled:
                    counts.late += n
                else:
                    for name, value in outputs.items():
                        if name not in request.outputs:
                            request.outputs[name] = np.zeros(
                                (len(request.items), *value.shape[1:]), value.dtype
                            )
                        request.outputs[name][start:stop] = value[offset : offset + n]
                    request.done[start:stop] = True
                    counts.done += n
                    handle.served.add(request.stream, n, now)
                offset += n
                if request.error is not None:
                    request.next = len(request.items)
                if request.inflight == 0 and request.remaining == 0:
                    self._finish(request)

    def _run_batch(
        self, handle: ModelHandle, batch: np.ndarray, bucket: int, record: bool = True
    ) -> dict[str, np.ndarray]:
        with self._device_lock:
            if not self._threads_set:
                self._set_threads()
            outputs, seconds = self._timed(lambda: handle.fn(batch))
        if not record:
            return outputs
        with self._cond:
            if handle.probing:
                right = seconds > 0.5 * handle.times.estimate(bucket)
                handle.probe_every = min(PROBE_MAX_S, 2 * handle.probe_every) if right else PROBE_S
                handle.times.remeasure(bucket, seconds)
                handle.probing = False
            else:
                handle.times.add(bucket, seconds)
                handle.probe_every = PROBE_S
            handle.measured_at = time.monotonic()
        return outputs


class Client:
    """A model node's seat at its model: submits the node's requests, one per slot at a
    time (a concurrent node has one slot per frame it keeps in flight).

    :meth:`attach` registers the model on its device's scheduler of this process (shared
    with every node that runs the same model) and, the first time, warms up every bucket.

    A node calls :meth:`finished` when it is done with the frame of its last request; the
    client learns from it how long the node works after the model (decoding, and waiting
    for the interpreter among busy threads) and, where that is more than the scheduler's
    margin, asks for its results that much before the frame's deadline.
    """

    def __init__(self, handle: ModelHandle, slots: int = 1):
        self.handle = handle
        self.after = RunTimes((1,))
        self.slots = max(1, slots)
        self._local = threading.local()  # the release time of each thread's last request
        self._after_lock = threading.Lock()
        for _ in range(self.slots):
            handle.add_client()

    @classmethod
    def attach(
        cls,
        device: str,
        key: str,
        fn: ModelFn,
        buckets: Sequence[int],
        example: np.ndarray,
        role: str = "image",
        slots: int = 1,
    ) -> Client:
        """``slots``: requests the node may have waiting at once (its frames in flight)."""
        from posegraph.scheduler import for_device

        scheduler = for_device(device)
        handle = scheduler.register(key, fn, buckets, role)
        client = cls(handle, slots)
        with handle.scheduler._cond:
            fresh = not any(handle.times.count.values())
        if fresh:
            handle.warm_up(example, runs=2)
        return client

    def run(
        self,
        items: np.ndarray,
        deadline: float,
        stream: str,
        captured_at: float | None = None,
        tail: float = 0.0,
    ) -> Result:
        """Run ``items`` for a frame due at ``deadline``; ``tail``: seconds the frame takes
        from this node to the sinks (``Context.tail``), of which up to a quarter of the
        frame's budget (from ``captured_at``) is kept free as well."""
        if math.isfinite(deadline):
            if tail > 0.0 and captured_at is not None:
                tail = min(tail, TAIL_SHARE * max(0.0, deadline - captured_at))
            else:
                tail = 0.0
            deadline -= max(0.0, self.after_estimate() + tail - self.handle.scheduler.margin)
        result = self.handle.run(items, deadline, stream, captured_at)
        self._local.released = result.released
        return result

    def finished(self) -> None:
        """The node is done with the frame of this thread's last request: learn the time
        it took since the result was handed over."""
        released = getattr(self._local, "released", None)
        self._local.released = None
        if released is not None and math.isfinite(released):
            with self._after_lock:
                self.after.add(1, max(0.0, time.monotonic() - released))

    def after_estimate(self) -> float:
        """Seconds the node is expected to work on a result, at most (see the class)."""
        with self._after_lock:
            return self.after.estimate(1)

    def image_deadline(self, deadline: float, captured_at: float) -> float:
        """The deadline for a frame's image request: the frame's, less the time a top-down
        model on the same device needs for its smallest batch of crops afterwards, but at
        most half the frame's budget (without people found there is nothing to pose)."""
        if not math.isfinite(deadline) or self.handle.role != "image":
            return deadline
        reserve = self.handle.scheduler.crops_reserve()
        return deadline - min(reserve, 0.5 * (deadline - captured_at))

    def close(self) -> None:
        for _ in range(self.slots):
            self.handle.remove_client()
        self.handle.scheduler.unregister(self.handle)
