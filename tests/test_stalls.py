"""What a host that runs for months meets: a batch that stalls (a machine paused,
swapping), frames that reach the model already late, an estimate thrown far out by a busy
spell, and the wall clock set back or forward (NTP, a hand, a VM resumed). None of them may
stop a model's work, or hide a stalled stream, beyond the moment itself.

The clock tests run processes whose wall clock is set by
``tests/clockshift.c`` (preloaded: ``CLOCK_REALTIME`` read off by a shift the test
writes; the monotonic clock left alone, as a real step leaves it)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from posegraph.scheduler import Client, DeviceScheduler
from posegraph.scheduler.core import PROBE_S
from tests.conftest import ROOT, free_port, wait_for, wait_for_metrics, write_pipeline

BUDGET = 0.3  # each frame's latency budget here, seconds


class Model:
    """10 ms a batch; ``stall`` seconds more, once, when set."""

    def __init__(self) -> None:
        self.stall = 0.0

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        stall, self.stall = self.stall, 0.0
        time.sleep(0.01 + stall)
        return {"twice": batch * 2}


def stream(client: Client, seconds: float, period: float = 0.05) -> list[tuple[float, bool]]:
    """Requests as a live stream makes them, one a ``period``, each due ``BUDGET`` after its
    capture: (when it returned, served) for each."""
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        captured = time.time()
        result = client.run(np.ones((1, 2), np.float32), captured + BUDGET, "cam", captured)
        client.finished()
        out.append((time.monotonic(), bool(result.done.all())))
        time.sleep(max(0.0, period - (time.time() - captured)))
    return out


@pytest.fixture
def model():
    scheduler = DeviceScheduler("cpu", "edf")
    model = Model()
    handle = scheduler.register("m", model, (1, 2))
    handle.warm_up(np.ones(2, np.float32), runs=3)
    yield model, handle, Client(handle)
    scheduler.close()


@pytest.mark.exclusive
def test_a_batch_that_stalls_does_not_stop_the_model(model):
    model, handle, client = model
    assert all(done for _, done in stream(client, 0.5))
    model.stall = 3.0  # the next batch takes 3 s: the process stopped, the host swapping
    stalled_until = time.monotonic() + 3.0
    after = stream(client, 5.0)
    # the frames during the stall leave without poses at their deadline, none later
    assert not any(done for t, done in after if t < stalled_until)
    recovered = [done for t, done in after if t > stalled_until + 1.0]
    assert recovered and sum(recovered) >= 0.8 * len(recovered), after
    assert handle.estimate(1) < BUDGET


@pytest.mark.exclusive
def test_frames_that_come_in_late_do_not_make_the_next_frames_late(model):
    # A burst of frames already past their deadline (queued behind a stall upstream):
    # each leaves at once. What the client learns of its own work after the model must not
    # count their lateness, or each next frame would be due earlier, and so on for good.
    _, _, client = model
    for _ in range(10):
        captured = time.time() - 1.0
        result = client.run(np.ones((1, 2), np.float32), captured + BUDGET, "cam", captured)
        time.sleep(0.01)  # the node's own work on the frame
        client.finished()
        assert not result.done.any()
    assert client.after_estimate() < 0.05
    assert all(done for _, done in stream(client, 0.5))


@pytest.mark.exclusive
def test_a_model_kept_from_running_by_its_estimate_is_measured_again(model):
    # A busy spell (another job on the host) measured the model at 10 s a batch; the spell
    # is over, but skipped work is never timed: every PROBE_S one request runs anyway.
    _, handle, client = model
    for bucket in (1, 2):
        for _ in range(12):
            handle.times.add(bucket, 10.0)
    assert handle.estimate(1) > 5.0 and handle.estimate(2) > 5.0
    results = stream(client, PROBE_S + 1.5)
    assert not results[0][1]  # skipped on the estimate's word at first
    assert all(done for _, done in results[-10:]), results
    assert handle.estimate(1) < BUDGET and handle.estimate(2) < BUDGET  # both came down


@pytest.mark.exclusive
def test_a_model_too_slow_for_the_budget_is_checked_less_and_less_often(monkeypatch):
    # The checks above cost a batch whose result comes too late: for a model that is
    # truly too slow, each check that finds the estimate right doubles the wait for the
    # next one, so that the device's other models keep their time.
    from posegraph.scheduler import core

    monkeypatch.setattr(core, "PROBE_S", 0.25)
    scheduler = DeviceScheduler("cpu", "edf")
    try:
        runs = []

        def slow(batch: np.ndarray) -> dict[str, np.ndarray]:
            runs.append(time.monotonic())
            time.sleep(0.4)
            return {"twice": batch * 2}

        handle = scheduler.register("m", slow, (1,))
        handle.warm_up(np.ones(2, np.float32), runs=2)
        runs.clear()
        results = stream(Client(handle), 5.0)
        assert not any(done for _, done in results)
        gaps = np.diff(runs)
        # checks every 0.25 s after the last run would make about 8 in 5 s
        assert 2 <= len(runs) <= 5 and all(np.diff(gaps) > 0), gaps
    finally:
        scheduler.close()


# ------------------------------------------------------------------ the wall clock set

CLOCK_RUN = textwrap.dedent(
    """
    import json, mmap, struct, sys, threading, time
    import numpy as np
    from posegraph.scheduler import Client, DeviceScheduler

    with open(sys.argv[1], "r+b") as f:
        shift = mmap.mmap(f.fileno(), 8)
    step = float(sys.argv[2])
    budget = 0.3

    def model(batch):
        time.sleep(0.01)
        return {"twice": batch * 2}

    scheduler = DeviceScheduler("cpu", "edf")
    handle = scheduler.register("m", model, (1,))
    handle.warm_up(np.ones(2, np.float32), runs=3)
    client = Client(handle)
    item = np.ones((1, 2), np.float32)

    def frame(captured=None):
        captured = time.time() if captured is None else captured
        began = time.monotonic()
        result = client.run(item, captured + budget, "cam", captured)
        client.finished()
        return {"served": bool(result.done.all()), "took": time.monotonic() - began}

    out = {"before": [frame() for _ in range(20)]}
    # frames caught on either side of the step, the device busy meanwhile: each must
    # leave within its budget, not the step's length
    gate = threading.Event()
    threading.Thread(target=scheduler.call, args=(gate.wait,), daemon=True).start()
    time.sleep(0.05)
    captured = time.time()
    shift[:8] = struct.pack("q", int(step * 1e9))
    out["across"] = [frame(captured), frame()]
    gate.set()
    out["after"] = []
    for _ in range(40):
        out["after"].append(frame())
        time.sleep(0.02)
    out["wall"] = time.time() - captured
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def clockshift(tmp_path_factory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build tests/clockshift.c")
    lib = tmp_path_factory.mktemp("clockshift") / "clockshift.so"
    subprocess.run(
        [
            cc,
            "-shared",
            "-fPIC",
            "-O2",
            "-o",
            str(lib),
            str(ROOT / "tests" / "clockshift.c"),
            "-ldl",
        ],
        check=True,
    )
    return lib


@pytest.mark.exclusive
@pytest.mark.parametrize("step", [-3600.0, 3600.0], ids=["set-back-an-hour", "set-on-an-hour"])
def test_the_wall_clock_set_costs_no_wait_and_no_stall(clockshift, tmp_path, step):
    shift = tmp_path / "shift"
    shift.write_bytes(struct.pack("q", 0))
    run = subprocess.run(
        [sys.executable, "-c", CLOCK_RUN, str(shift), str(step)],
        env={
            **os.environ,
            "LD_PRELOAD": str(clockshift),
            "CLOCK_SHIFT_FILE": str(shift),
        },
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert abs(out["wall"] - step) < 30  # the step was seen
    assert all(f["served"] for f in out["before"])
    for f in out["across"]:
        assert not f["served"] and f["took"] < BUDGET + 0.1, out["across"]
    assert all(f["took"] < BUDGET + 0.1 for f in out["after"]), out["after"]
    assert sum(f["served"] for f in out["after"]) >= 36, out["after"]


@pytest.mark.exclusive
def test_a_stalled_stream_is_seen_after_the_clock_was_set_back(clockshift, tmp_path, posegraph):
    # The age of a stream's newest frame (what alerts on a stalled camera watch) must grow
    # while no frame comes, also when the frames before it were stamped an hour "later".
    port = free_port()
    write_pipeline(
        tmp_path / "p.yaml",
        [
            {"name": "cam", "type": "source.synthetic", "with": {"fps": 25, "realtime": True}},
            {"name": "n", "type": "sink.null", "from": "cam"},
        ],
    )
    shift = tmp_path / "shift"
    shift.write_bytes(struct.pack("q", 0))
    env = {"LD_PRELOAD": str(clockshift), "CLOCK_SHIFT_FILE": str(shift)}
    run = posegraph("run", "p.yaml", "--metrics-port", str(port), "--duration", "15", env=env)
    up = 'posegraph_stream_up{pipeline="test",stream="cam"} 1.0'
    wait_for_metrics(port, up)
    with open(shift, "r+b") as f:  # in place: the processes map it
        f.write(struct.pack("q", int(-3600 * 1e9)))
    time.sleep(1.0)
    source = run.workers()["pg:cam"]
    source.suspend()  # the camera's frames stop coming
    try:
        gauge = 'posegraph_stream_last_frame_age_seconds{pipeline="test",stream="cam"} '

        def stale() -> float | None:
            age = float(wait_for_metrics(port, gauge).split(gauge)[1].split()[0])
            return age if age > 2.0 else None

        assert wait_for(stale, 6, "the stream's age to pass 2 s") < 10.0
    finally:
        source.resume()
    code, _, stderr = run.wait()
    assert code == 0, stderr


def test_a_model_that_serves_nothing_for_a_while_is_said_in_the_log(tmp_path, posegraph):
    # For 3 s the model takes 1 s a frame against a 300 ms budget: none of its work is
    # served. The counts are exported all along; the log says it once it has lasted
    # skip_warn_s, and says when the model serves again.
    write_pipeline(
        tmp_path / "p.yaml",
        [
            {
                "name": "cam",
                "type": "source.synthetic",
                "with": {"fps": 20, "realtime": True, "width": 64, "height": 48},
            },
            {
                "name": "slow",
                "type": "tests.helpers.custom_nodes:SlowSpell",
                "from": "cam",
                "with": {"slow_from": 20, "slow_until": 80, "seconds": 1.0},
            },
            {"name": "out", "type": "sink.null", "from": "slow"},
        ],
        latency_budget_ms=300,
        runtime={"skip_warn_s": 2},
    )
    args = ("-v", "run", "p.yaml", "--max-frames", "240")
    code, _, stderr = posegraph(*args, env={"PYTHONPATH": str(ROOT)}).wait(90)
    assert code == 0, stderr
    said = "model slow-spell on cpu has served none of its work for"
    assert said in stderr and "model slow-spell on cpu serves again" in stderr, stderr
    assert stderr.index(said) < stderr.index("serves again")


@pytest.mark.exclusive
def test_top_down_comes_back_from_the_fallback_once_its_estimate_is_checked(
    topdown_with_fallback,
):
    # pose.topdown sends a frame to its whole-image fallback when the crops' estimate
    # says they will not be done in time: an estimate thrown far out would keep top-down
    # from ever running (and being timed) again.
    from posegraph.packet import Frame
    from posegraph.scheduler.bench import _boxes, _first_frame

    crop, pose = topdown_with_fallback
    image, people = _first_frame(), _boxes(2, np.random.default_rng(1))
    handle = pose.client.handle
    for bucket in handle.buckets:
        for _ in range(12):
            handle.times.add(bucket, 10.0)  # a busy spell, over now
    routes = []
    end = time.monotonic() + PROBE_S + 3.0
    while time.monotonic() < end:
        now = time.time()
        f = Frame(stream="cam", index=0, pts=0.0, captured_at=now, deadline=now + 1.0)
        out = pose.process(crop.process(f.replace(image=image, detections=people)))
        routes.append(out.meta.get("pose_fallback", "topdown"))
    assert routes[0] == "erpose_n_320"
    assert routes[-3:] == ["topdown"] * 3, routes
