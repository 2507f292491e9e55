"""The wire form, the shared-memory frame plane and the published message."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import sys
import time
import uuid

import msgpack
import numpy as np
import pytest

from posegraph.packet import (
    Detections,
    Frame,
    Poses,
    ShmRef,
    WireError,
    decode,
    encode,
    to_message,
)
from posegraph.runtime.shm import FramePlane, unlink_run


def sample_frame() -> Frame:
    rng = np.random.default_rng(0)
    return Frame(
        stream="cam1",
        index=1234,
        pts=41.13,
        captured_at=1763700000.12,
        deadline=1763700000.27,
        image=rng.integers(0, 255, (48, 64, 3), dtype=np.uint8),
        detections=Detections(rng.random((2, 4)) * 60, [0.9, 0.8], [0, 0]),
        poses=Poses(
            rng.random((2, 17, 2)) * 60,
            rng.random((2, 17)),
            rng.random((2, 4)) * 60,
            [0.93, 0.7],
            [7, -1],
            "coco17",
            [False, True],
        ),
        meta={"file": "a.jpg"},
        trace=[("cam", 1.0, 2.0)],
    )


def test_round_trip_inline():
    f = sample_frame()
    g, ref = decode(encode(f))
    assert ref is None
    assert (g.stream, g.index, g.pts, g.captured_at, g.deadline) == (
        f.stream,
        f.index,
        f.pts,
        f.captured_at,
        f.deadline,
    )
    np.testing.assert_array_equal(g.image, f.image)
    np.testing.assert_array_equal(g.detections.xyxy, f.detections.xyxy)
    np.testing.assert_array_equal(g.poses.keypoints, f.poses.keypoints)
    np.testing.assert_array_equal(g.poses.track_ids, [7, -1])
    np.testing.assert_array_equal(g.poses.predicted, [False, True])
    assert g.poses.skeleton == "coco17" and g.meta == f.meta and g.trace == [("cam", 1.0, 2.0)]


def test_events_round_trip():
    ev = Frame.make_event("cam1", "gap", 10, count=12)
    g, _ = decode(encode(ev))
    assert g.event == "gap" and g.meta == {"count": 12} and g.image is None


def test_schema_version_and_garbage_are_rejected():
    body = msgpack.unpackb(encode(Frame("s", 0)))
    body["v"] = 99
    with pytest.raises(WireError, match="schema version 99"):
        decode(msgpack.packb(body))
    with pytest.raises(WireError, match="malformed"):
        decode(b"\x01\x02garbage")


def test_published_message_matches_the_schema():
    msg = to_message(sample_frame(), now=1763700000.1831)
    assert set(msg) == {
        "v",
        "stream",
        "index",
        "pts",
        "captured_at",
        "latency_ms",
        "skeleton",
        "people",
    }
    assert msg["v"] == 1 and msg["latency_ms"] == pytest.approx(63.1)
    person = msg["people"][0]
    assert set(person) == {"track_id", "box", "score", "keypoints", "predicted"}
    assert person["track_id"] == 7 and len(person["keypoints"]) == 17
    assert len(person["keypoints"][0]) == 3
    assert to_message(Frame.make_event("cam1", "gap", 3, count=12), 0) == {
        "v": 1,
        "stream": "cam1",
        "event": "gap",
        "count": 12,
    }
    assert to_message(Frame.make_event("cam1", "eos", 3), 0) == {
        "v": 1,
        "stream": "cam1",
        "event": "eos",
    }


@pytest.mark.exclusive  # segments with no run: another test's run would remove them
def test_frame_plane_reference_counting():
    run = uuid.uuid4().hex[:8]
    owner = FramePlane(run, "src", row=0, rows=2, slots=2, reclaim_after=60)
    reader = FramePlane(run, "sink", row=1, rows=2, slots=2)
    try:
        img = np.arange(48 * 64 * 3, dtype=np.uint8).reshape(48, 64, 3)
        ref, view = owner.put(img)
        assert isinstance(ref, ShmRef)
        g, r = decode(encode(Frame("s", 0), ref))
        assert r == ref and g.image is None
        seen = reader.view(r)
        np.testing.assert_array_equal(seen, img)
        assert not seen.flags.writeable
        owner.acquire(ref, 1)  # fanned out to two consumers
        ref2, _ = owner.put(img)
        assert ref2.slot != ref.slot
        # both slots are held: a third image cannot be written, it goes inline
        assert owner.put(img) is None and owner.fallbacks == 1
        reader.release(ref)
        assert owner.put(img) is None  # one holder of the first slot is left
        reader.release(ref)
        ref3, _ = owner.put(img)
        assert ref3.slot == ref.slot and ref3.generation == ref.generation + 1
        # a late reader of the old generation no longer maps it
        assert reader.view(ref) is None
    finally:
        reader.close()
        owner.close()
        assert unlink_run(run) == 1


def _hold_and_die(run: str, ref: ShmRef) -> None:
    """A reader process that maps a frame and dies without releasing it."""
    reader = FramePlane(run, "pose", row=2, rows=3)
    assert reader.view(ref) is not None
    os._exit(0)


@pytest.mark.exclusive  # segments with no run: another test's run would remove them
def test_frame_plane_reclaims_only_what_a_dead_process_held():
    # reclaim_after leaves a loaded machine time to fork, map and reap the child below
    run = uuid.uuid4().hex[:8]
    owner = FramePlane(run, "src", row=0, rows=3, slots=1, reclaim_after=1.0)
    reader = FramePlane(run, "sink", row=1, rows=3)
    img = np.full((8, 8, 3), 7, np.uint8)
    try:
        ref, _ = owner.put(img)
        assert reader.view(ref) is not None  # a live, slow reader holds the only slot
        time.sleep(1.1)
        assert owner.put(img) is None  # so the image goes inline: the reader keeps its frame
        assert (owner.reclaimed, owner.fallbacks) == (0, 1)
        np.testing.assert_array_equal(reader.view(ref), img)
        reader.release(ref)

        ref, _ = owner.put(img)
        child = multiprocessing.get_context("fork").Process(target=_hold_and_die, args=(run, ref))
        child.start()
        child.join(10)
        assert child.exitcode == 0
        assert owner.put(img) is None  # held for less than reclaim_after: not yet
        time.sleep(1.1)
        again, _ = owner.put(img)  # its holder has died: the slot is taken back
        assert owner.reclaimed == 1 and again.generation == ref.generation + 1
        assert reader.view(ref) is None
    finally:
        reader.close()
        owner.close()
        assert unlink_run(run) == 1


# Four threads of one process read the first frame of each of 500 new pools at once, as the
# nodes of a process do at the start of a run.
_READ_NEW_POOLS_AT_ONCE = """
import threading, uuid
import numpy as np
from posegraph.runtime.shm import FramePlane, unlink_run

run = uuid.uuid4().hex[:8]
owners = [FramePlane(run, f"src{i}", row=0, rows=2, slots=1) for i in range(500)]
refs = [o.put(np.zeros((4, 4, 3), np.uint8))[0] for o in owners]
reader = FramePlane(run, "sink", row=1, rows=2)
barrier = threading.Barrier(4)

def read():
    for ref in refs:
        barrier.wait()
        assert reader.view(ref) is not None

threads = [threading.Thread(target=read) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
reader.close()
for o in owners:
    o.close()
print(unlink_run(run))
"""


@pytest.mark.exclusive  # segments with no run: another test's run would remove them
def test_pools_mapped_by_several_threads_leave_python_s_resource_tracker_quiet():
    # Python's resource tracker, shared by the processes of a run, keeps a set of segment
    # names: a segment registered twice and unregistered twice made it print a KeyError
    # traceback on the run's stderr. Segments are not registered with it at all.
    done = subprocess.run(
        [sys.executable, "-c", _READ_NEW_POOLS_AT_ONCE], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["500"]
    assert done.stderr == "", done.stderr


def test_segments_whose_maker_lives_are_not_reaped_without_a_pid_file():
    """A run whose folder lost its pid file (cleaned out of /tmp by age) but whose
    segment's maker is alive is not taken for a killed run."""
    from posegraph.runtime.plan import rundir_of
    from posegraph.runtime.shm import reap_stale

    run = "00a11ve000"
    plane = FramePlane(run, "cam-north", row=0, rows=1, slots=2)
    try:
        plane.put(np.zeros((4, 4, 3), np.uint8))
        name = plane._own[0].segment.shm.name.lstrip("/")
        assert name == f"pg-{run}-cam-north-{os.getpid()}-1"
        assert not os.path.exists(rundir_of(run))
        reap_stale(rundir_of)
        assert name in os.listdir("/dev/shm")
    finally:
        plane.close()
        unlink_run(run)
    assert name not in os.listdir("/dev/shm")


def test_a_run_folder_without_a_pid_is_reaped_once_untouched_for_a_day():
    """A folder without supervisor.pid is a run being set up, or a dead run's whose pid
    file was cleaned away: the next run removes it once it has not been touched for a day
    (a running supervisor touches its folder every hour)."""
    from posegraph.runtime.plan import rundir_of
    from posegraph.runtime.shm import UNCLAIMED_S, reap_stale

    old, new = rundir_of("0dead0pid0"), rundir_of("0new00pid0")
    for folder in (old, new):
        os.makedirs(folder)
    try:
        stamp = time.time() - UNCLAIMED_S - 60
        os.utime(old, (stamp, stamp))
        reap_stale(rundir_of)
        assert not os.path.exists(old)
        assert os.path.exists(new)
    finally:
        for folder in (old, new):
            shutil.rmtree(folder, ignore_errors=True)
