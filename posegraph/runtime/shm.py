"""The shared-memory frame plane: images written once, passed between processes by reference.

A pool is one POSIX shared-memory segment owned by the process that writes images into it
(usually a source). It holds ``slots`` image slots and an accounting header::

    generation[slots]            uint64, written by the owner when a slot is (re)used
    pids[rows]                   int64, the pid of the process on each row that mapped it
    acquired[rows, slots]        uint64, references created by each process (monotonic)
    released[rows, slots]        uint64, references dropped by each process (monotonic)

Every process of a pipeline has one row, and only that process writes it, so no lock or
atomic instruction is needed. A frame travelling on an edge carries one reference; a
process that fans a frame out to m edges adds m - 1, one that drops or consumes it
releases 1. A slot is free when, reading every ``released`` cell first and every
``acquired`` cell after, the sums are equal: a release is always preceded by the acquire
it pairs with, so a stale read can only make a slot look busy, never free. A slot is
therefore never reused while a reader may still hold it.

References held by a process that is killed are never released. When no slot is free,
the owner reclaims the oldest slot if it has been held for longer than ``reclaim_after``
seconds and a process that mapped the pool has died (or been replaced by a restart) since
the slot was written (bumping its generation, so that a late holder's release is ignored).
Otherwise the slot's holders are alive and merely slow (a pipeline reading a file as fast
as it decodes keeps many frames in its queues): the image goes inline instead, and no
frame that a live process holds is taken from it. Either way nothing blocks for long and
the event is counted.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sys
import threading
import time
from multiprocessing import resource_tracker, shared_memory

import numpy as np

from posegraph.packet import ShmRef

log = logging.getLogger(__name__)

_ALIGN = 64
SHM_DIR = "/dev/shm"
#: the fewest slots a pool is made with when /dev/shm is short of room
MIN_SLOTS = 4
#: a run's folder without a pid file, untouched for this long, is a dead run's
UNCLAIMED_S = 86400.0
#: how long a process whose pool found no room sends images inline before trying again
NO_ROOM_RETRY_S = 30.0


_TRACKER_LOCK = threading.Lock()


def _open(name: str, create: bool = False, size: int = 0) -> shared_memory.SharedMemory:
    """Create or map a segment without telling Python's resource tracker.

    The pipeline supervisor owns the cleanup of every segment. The tracker would unlink a
    segment when the first process that touched it exits, and since the processes of a
    pipeline share one tracker that keeps a set of names, registering a segment from two
    processes and unregistering it from both makes the tracker print a KeyError traceback
    on the run's stderr. So the segment is never registered (``track=False`` from Python
    3.13; before, the register call is skipped for shared memory while the segment opens).
    """
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name=name, create=create, size=size, track=False)
    with _TRACKER_LOCK:
        register = resource_tracker.register

        def skip_shared_memory(resource: str, rtype: str) -> None:
            if rtype != "shared_memory":
                register(resource, rtype)

        resource_tracker.register = skip_shared_memory
        try:
            return shared_memory.SharedMemory(name=name, create=create, size=size)
        finally:
            resource_tracker.register = register


def _shm_free() -> int | None:
    """Bytes free in /dev/shm, or None if it cannot be told."""
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _reserve(name: str, size: int) -> bool:
    """Allocate every page of a new segment now; False when /dev/shm has no room for it."""
    try:
        fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR)
    except OSError:
        return True  # not a file under /dev/shm here: nothing to reserve through
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
            return False
        return True  # no fallocate on this filesystem: pages come as they are written
    finally:
        os.close(fd)
    return True


def _layout(slots: int, rows: int) -> tuple[int, int, int, int, int]:
    gen = _ALIGN
    pids = gen + 8 * slots
    acq = pids + 8 * rows
    rel = acq + 8 * slots * rows
    data = rel + 8 * slots * rows
    data = (data + _ALIGN - 1) // _ALIGN * _ALIGN
    return gen, pids, acq, rel, data


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Segment:
    """A mapped pool segment: the accounting arrays and the slot bytes."""

    def __init__(self, shm: shared_memory.SharedMemory):
        self.shm = shm
        header = np.ndarray((4,), np.uint64, shm.buf, 0)
        self.slots, self.rows, self.slot_bytes = int(header[0]), int(header[1]), int(header[2])
        gen, pids, acq, rel, data = _layout(self.slots, self.rows)
        self.generation = np.ndarray((self.slots,), np.uint64, shm.buf, gen)
        self.pids = np.ndarray((self.rows,), np.int64, shm.buf, pids)
        self.acquired = np.ndarray((self.rows, self.slots), np.uint64, shm.buf, acq)
        self.released = np.ndarray((self.rows, self.slots), np.uint64, shm.buf, rel)
        self.data_offset = data

    def view(self, ref: ShmRef, writeable: bool = False) -> np.ndarray:
        offset = self.data_offset + ref.slot * self.slot_bytes
        arr = np.ndarray(ref.shape, np.dtype(ref.dtype), self.shm.buf, offset)
        arr.flags.writeable = writeable
        return arr

    def close(self) -> None:
        # drop the buffer exports
        self.generation = self.pids = self.acquired = self.released = None
        try:
            self.shm.close()
        except BufferError:
            # a node still holds a view of a slot; the mapping goes with the process
            pass


class _Owned:
    """An own pool, with what its owner remembers: when each slot was written, the pids
    last seen on each row, and when each row's process was last seen to die or be replaced
    (-inf: never)."""

    #: seconds between checks that the processes on the rows are alive
    POLL = 0.5

    def __init__(self, segment: _Segment, written_at: np.ndarray) -> None:
        self.segment = segment
        self.written_at = written_at
        self.pids = segment.pids.copy()
        self.gone_at = np.full(segment.rows, -np.inf)
        self.dead: set[int] = set()
        self.polled = -np.inf

    def watch(self, now: float, poll: bool = False) -> None:
        """Note the rows whose process changed (a restart) or, every POLL s, died."""
        current = self.segment.pids.copy()
        self.gone_at[(self.pids != 0) & (current != self.pids)] = now
        self.pids = current
        if not poll and now - self.polled < self.POLL:
            return
        self.polled = now
        for row, pid in enumerate(current.tolist()):
            if pid > 0 and pid not in self.dead and not _alive(pid):
                self.dead.add(pid)
                self.gone_at[row] = now

    def died_since(self, written: float, now: float) -> bool:
        """Has a process that mapped the pool died, or been replaced, since ``written``?"""
        self.watch(now, poll=True)
        return bool(np.any(self.gone_at >= written))


class FramePlane:
    """One process's side of the frame plane: the pools it owns and the pools it reads.

    ``row`` is this process's accounting row, ``rows`` the number of processes.
    """

    def __init__(
        self,
        run_id: str,
        owner: str,
        row: int,
        rows: int,
        slots: int = 32,
        reclaim_after: float = 10.0,
    ):
        self.run_id = run_id
        self.owner = owner
        self.row = row
        self.rows = rows
        self.slots = slots
        self.reclaim_after = reclaim_after
        self._lock = threading.Lock()
        self._own: list[_Owned] = []
        self._mapped: dict[str, _Segment] = {}
        self.fallbacks = 0
        self.reclaimed = 0
        self._serial = 0
        self._no_room_until = 0.0

    # ------------------------------------------------------------------ writer

    def alloc(
        self, shape: tuple[int, ...], dtype: np.dtype | str = np.uint8
    ) -> tuple[ShmRef, np.ndarray] | None:
        """A free slot of an own pool for an image to be written into, holding one reference.

        Returns the reference and a writeable view; None when no slot is free (the image
        then travels inline).
        """
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        with self._lock:
            pool = next((p for p in self._own if p.segment.slot_bytes >= nbytes), None)
            if pool is None:
                if time.monotonic() < self._no_room_until:
                    self.fallbacks += 1
                    return None
                pool = self._create(nbytes)
                if pool is None:
                    self._no_room_until = time.monotonic() + NO_ROOM_RETRY_S
                    self.fallbacks += 1
                    return None
            seg, written_at = pool.segment, pool.written_at
            pool.watch(time.monotonic())
            slot = self._free_slot(pool)
            if slot is None:
                self.fallbacks += 1
                return None
            seg.generation[slot] += 1
            written_at[slot] = time.monotonic()
            ref = ShmRef(seg.shm.name, slot, int(seg.generation[slot]), tuple(shape), dtype.str)
            seg.acquired[self.row, slot] += 1
            return ref, seg.view(ref, writeable=True)

    def put(self, image: np.ndarray) -> tuple[ShmRef, np.ndarray] | None:
        """Copy ``image`` into a free slot; returns the reference and a read-only view."""
        got = self.alloc(image.shape, image.dtype)
        if got is None:
            return None
        ref, view = got
        np.copyto(view, image)
        view.flags.writeable = False
        return ref, view

    def _create(self, nbytes: int) -> _Owned | None:
        """A new own pool for images of ``nbytes``, its memory reserved now; None when
        ``/dev/shm`` has no room for even ``MIN_SLOTS`` of them (or ``slots``, if fewer).

        The pages are reserved up front (``posix_fallocate``): a segment is sparse until
        written, and a write into a page that a full ``/dev/shm`` cannot supply kills the
        writer with SIGBUS. With less room than ``slots`` need (Docker gives containers
        64 MB), the pool takes as many slots as half the free room holds, leaving room for
        the run's other pools.
        """
        slot_bytes = (nbytes + _ALIGN - 1) // _ALIGN * _ALIGN
        slots = self.slots
        free = _shm_free()
        if free is not None:
            slots = min(slots, free // 2 // slot_bytes)
        while slots >= min(MIN_SLOTS, self.slots):
            self._serial += 1
            # the pid keeps the name unique when a restarted process makes its pools again
            name = f"pg-{self.run_id}-{self.owner}-{os.getpid()}-{self._serial}"
            total = _layout(slots, self.rows)[-1] + slot_bytes * slots
            shm = _open(name, create=True, size=total)
            if _reserve(name, total):
                break
            shm.close()
            shm.unlink()
            slots //= 2
        else:
            self._warn_room(slot_bytes, free, 0)
            return None
        if slots < self.slots:
            self._warn_room(slot_bytes, free, slots)
        header = np.ndarray((4,), np.uint64, shm.buf, 0)
        header[:] = (slots, self.rows, slot_bytes, 0)
        del header
        seg = _Segment(shm)
        seg.generation[:] = 0
        seg.pids[:] = 0
        seg.pids[self.row] = os.getpid()
        seg.acquired[:] = 0
        seg.released[:] = 0
        self._mapped[name] = seg
        entry = _Owned(seg, np.zeros(slots))
        self._own.append(entry)
        log.debug("frame plane: pool %s, %d slots of %d bytes", name, slots, slot_bytes)
        return entry

    def _warn_room(self, slot_bytes: int, free: int | None, slots: int) -> None:
        mb = 1 << 20
        room = "too little room" if free is None else f"{free / mb:.0f} MB free"
        what = (
            f"using {slots} slots (images go inline when every slot is in use)"
            if slots
            else f"images go inline over the sockets (slower); trying again every "
            f"{NO_ROOM_RETRY_S:.0f} s"
        )
        log.warning(
            "frame plane (%s): %s has %s; %d slots of %.1f MB need %.0f MB: %s. Give this "
            "host more shared memory (docker run --shm-size=1g; Kubernetes: an emptyDir "
            "with medium: Memory on /dev/shm) or lower the runtime option shm_slots",
            self.owner,
            SHM_DIR,
            room,
            self.slots,
            slot_bytes / mb,
            self.slots * slot_bytes / mb,
            what,
        )

    def _free_slot(self, pool: _Owned) -> int | None:
        seg, written_at = pool.segment, pool.written_at
        deadline = time.monotonic() + 0.02
        while True:
            released = seg.released.sum(axis=0)  # read releases before acquires: see module doc
            acquired = seg.acquired.sum(axis=0)
            free = np.flatnonzero(acquired == released)
            if len(free):
                # the least recently written free slot, so that references stay valid longest
                return int(free[np.argmin(written_at[free])])
            now = time.monotonic()
            oldest = int(np.argmin(written_at))
            held = now - written_at[oldest]
            if held > self.reclaim_after and pool.died_since(written_at[oldest], now):
                seg.released[self.row, oldest] += int(acquired[oldest] - released[oldest])
                self.reclaimed += 1
                log.warning(
                    "frame plane: reclaimed slot %d of %s, held for %.0f s by a process "
                    "that has died since",
                    oldest,
                    seg.shm.name,
                    held,
                )
                return oldest
            if now > deadline:
                return None
            time.sleep(0.0005)

    # ------------------------------------------------------------------ readers

    def _segment(self, pool: str) -> _Segment:
        seg = self._mapped.get(pool)
        if seg is None:
            shm = _open(pool)
            seg = _Segment(shm)
            seg.pids[self.row] = os.getpid()  # this process's row: only it writes there
            self._mapped[pool] = seg
        return seg

    def view(self, ref: ShmRef) -> np.ndarray | None:
        """Map a reference; None if its pool is gone or the slot was reclaimed."""
        try:
            with self._lock:  # threads of a process that read a new pool at once map it once
                seg = self._segment(ref.pool)
        except FileNotFoundError:
            return None
        if int(seg.generation[ref.slot]) != ref.generation:
            return None
        return seg.view(ref)

    def acquire(self, ref: ShmRef, n: int) -> None:
        """Add ``n`` references (a frame fanned out to n + 1 edges)."""
        if n > 0:
            with self._lock:
                self._segment(ref.pool).acquired[self.row, ref.slot] += n

    def release(self, ref: ShmRef) -> None:
        with self._lock:
            try:
                seg = self._segment(ref.pool)
            except FileNotFoundError:
                return
            if int(seg.generation[ref.slot]) == ref.generation:
                seg.released[self.row, ref.slot] += 1

    def close(self) -> None:
        with self._lock:
            for seg in self._mapped.values():
                seg.close()
            self._mapped.clear()
            self._own.clear()


def segment_writer(name: str) -> int:
    """The pid of the process that made the segment ``name`` (``pg-RUN-OWNER-PID-SERIAL``;
    OWNER may hold '-'); 0 where the name does not say."""
    pid = name.rsplit("-", 2)[-2] if name.startswith("pg-") else ""
    return int(pid) if pid.isdigit() else 0


def reap_stale(rundir_of) -> int:
    """Remove segments left by runs whose supervisor is gone (killed with SIGKILL, say),
    and those runs' folders.

    ``rundir_of(run_id)`` is the run's folder, where its supervisor keeps ``supervisor.pid``.
    """
    n = 0
    try:
        names = os.listdir(SHM_DIR)
    except FileNotFoundError:
        names = []
    owners: dict[str, list[int]] = {}
    for name in names:
        if name.startswith("pg-"):
            owners.setdefault(name.split("-")[1], []).append(segment_writer(name))
    for run_id, pids in owners.items():
        # a run is left over when its supervisor is gone and so are the processes that
        # made its segments (its pid file may have been cleaned out of /tmp)
        if _supervisor_alive(rundir_of(run_id)) or any(p and _alive(p) for p in pids):
            continue
        n += unlink_run(run_id)
    if n:
        log.warning("removed %d shared-memory segments left by runs that were killed", n)
    # folders of killed runs that had no segment left
    parent, prefix = os.path.split(rundir_of(""))
    try:
        folders = [f for f in os.listdir(parent) if f.startswith(prefix)]
    except FileNotFoundError:
        folders = []
    for folder in folders:
        rundir = os.path.join(parent, folder)
        if os.path.exists(os.path.join(rundir, "supervisor.pid")):
            stale = not _supervisor_alive(rundir)
        else:
            # a run being set up: its supervisor writes the pid first thing, and a running
            # one touches its folder (writing the pid again if it was cleaned away) every
            # hour; a folder without one, untouched for a day, is a dead run's
            try:
                stale = time.time() - os.stat(rundir).st_mtime > UNCLAIMED_S
            except OSError:
                stale = False
        if stale:
            shutil.rmtree(rundir, ignore_errors=True)
    return n


def supervisor_pid(rundir: str) -> int | None:
    """The pid a run's supervisor wrote in its folder; None if there is none."""
    try:
        with open(os.path.join(rundir, "supervisor.pid")) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def _supervisor_alive(rundir: str) -> bool:
    pid = supervisor_pid(rundir)
    return pid is not None and _alive(pid)


def unlink_run(run_id: str) -> int:
    """Remove every segment of a run from /dev/shm; returns how many were left."""
    prefix = f"pg-{run_id}-"
    n = 0
    try:
        names = os.listdir(SHM_DIR)
    except FileNotFoundError:
        return 0
    for name in names:
        if name.startswith(prefix):
            try:
                os.unlink(os.path.join(SHM_DIR, name))
                n += 1
            except FileNotFoundError:
                pass
            except PermissionError:
                # another user's run (/dev/shm is sticky): left to that user or root
                log.warning(
                    "cannot remove %s/%s, left by another user's run that was killed: "
                    "remove it as that user",
                    SHM_DIR,
                    name,
                )
    return n
