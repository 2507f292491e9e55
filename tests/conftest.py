"""Shared fixtures: real videos written with PyAV, the posegraph command in a subprocess,
and checks that a run left no process and no shared-memory segment behind.

The suite runs in two processes (pytest-xdist, ``-n 2`` in pyproject.toml; ``-n 0`` runs it
in one). A test marked ``exclusive`` runs while no other test does: it measures time, or
it looks at state that every run on the machine shares. The check for shared-memory
segments left behind counts only this test's runs.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "exclusive: run while no other test runs (timing, or machine-wide state)"
    )
    if "PYTEST_XDIST_WORKER" in os.environ:
        # Each test process runs its own models with one thread: two processes each with as
        # many threads as cores made a training test 2.5 times slower than alone.
        import torch

        torch.set_num_threads(1)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """With several test processes: a test marked ``exclusive`` holds a lock that every
    other test holds shared, over its whole protocol (the set-up and tear-down of module
    fixtures included: they can load the machine too). A gate, taken first (for good by an
    exclusive test, for a moment by the others), keeps a stream of shared holders from
    starving an exclusive test."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        yield
        return
    shared = Path(item.config.option.basetemp).parent  # the run's folder: popen-gwN's parent
    exclusive = item.get_closest_marker("exclusive") is not None
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    with open(shared / "exclusive.gate", "a") as gate, open(shared / "exclusive.lock", "a") as lock:
        fcntl.flock(gate, mode)
        fcntl.flock(lock, mode)
        if not exclusive:
            fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            fcntl.flock(gate, fcntl.LOCK_UN)


def write_video(
    path: Path, frames: int = 40, size: tuple[int, int] = (160, 120), fps: int = 25
) -> Path:
    """An H.264 MP4 whose frame n shows a bar at a position that encodes n."""
    import av

    w, h = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for n in range(frames):
            img = np.full((h, w, 3), 40, np.uint8)
            x = (n * 7) % (w - 8)
            img[:, x : x + 8] = (0, 200, 255)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="session")
def video(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("media") / "clip.mp4", frames=40)


def write_pipeline(path: Path, nodes: list[dict], **top) -> Path:
    doc = {"pipeline": top.pop("pipeline", "test"), **top, "nodes": nodes}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def write_zmq_pipeline(path: Path, address: str, **sink) -> Path:
    """A pipeline of 60 small frames paced at 50 fps into a ``sink.zmq`` named ``pub`` on
    ``address``, with the sink's other settings from ``sink``."""
    return write_pipeline(
        path,
        [
            {
                "name": "cam",
                "type": "source.synthetic",
                "with": {"width": 64, "height": 48, "fps": 50, "frames": 60, "realtime": True},
            },
            {
                "name": "pub",
                "type": "sink.zmq",
                "from": "cam",
                "with": {"address": address, **sink},
            },
        ],
    )


def frames_and_events(messages: list[dict]) -> tuple[list[dict], list[dict]]:
    frames = [m for m in messages if "event" not in m]
    events = [m for m in messages if "event" in m]
    return frames, events


def stuck_nodes(tmp_path: Path, out: Path, spin: bool = False, place: str | None = None):
    """150 paced frames through a node that gets stuck at frame 10 on its first run
    (``tests.helpers.custom_nodes:Hang``, optionally placed) into ``out`` (JSON lines)."""
    stuck = {
        "name": "stuck",
        "type": "tests.helpers.custom_nodes:Hang",
        "from": "cam",
        "with": {"marker": str(tmp_path / "hung"), "at": 10, "spin": spin},
    }
    if place is not None:
        stuck["place"] = place
    return [
        {
            "name": "cam",
            "type": "source.synthetic",
            "with": {"width": 32, "height": 32, "fps": 25, "frames": 150, "realtime": True},
        },
        stuck,
        {"name": "out", "type": "sink.jsonl", "from": "stuck", "with": {"path": str(out)}},
    ]


def check_resumed_after_a_gap(out: Path) -> None:
    """The 150 frames of ``stuck_nodes``: the first ten, then a gap, then the rest to the
    last, every frame either delivered once in order or counted in a gap."""
    frames, events = frames_and_events(read_jsonl(out))
    indices = [f["index"] for f in frames]
    assert indices[:10] == list(range(10)) and indices[-1] == 149, indices
    assert indices == sorted(set(indices)), "frames repeated or out of order"
    gaps = [e for e in events if e["event"] == "gap"]
    assert gaps and len(indices) + sum(g["count"] for g in gaps) == 150


def posegraph_with_mounts(
    mounts: list[str], args: list[str], cwd: Path, env: dict | None = None
) -> subprocess.CompletedProcess:
    """``posegraph ARGS`` in a mount namespace of its own, after ``mounts`` (``mount``
    arguments, e.g. a small tmpfs on /dev/shm); skips the test where that needs a root
    this machine does not give."""
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("mounts of a test's own need root (unshare -m): " + probe.stderr.decode())
    script = " && ".join(
        [
            *(f"mount {m}" for m in mounts),
            f"exec {sys.executable} -m posegraph.cli {' '.join(args)}",
        ]
    )
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Run:
    """``posegraph ...`` in a subprocess, marked so its processes can be found afterwards."""

    def __init__(self, args: list[str], cwd: Path, env: dict | None = None):
        self.mark = uuid.uuid4().hex
        environ = {**os.environ, "POSEGRAPH_TEST_MARK": self.mark, **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "posegraph.cli", *args],
            cwd=cwd,
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def wait(self, timeout: float = 60) -> tuple[int, str, str]:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            out, err = self.proc.communicate()
            raise AssertionError(f"posegraph did not finish in {timeout} s\n{out}\n{err}") from None
        return self.proc.returncode, out, err

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def processes(self) -> list[psutil.Process]:
        """Every live process that carries this run's mark."""
        out = []
        for p in psutil.process_iter(["pid"]):
            try:
                if p.environ().get("POSEGRAPH_TEST_MARK") == self.mark and p.status() != "zombie":
                    out.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return out

    def workers(self) -> dict[str, psutil.Process]:
        return {p.name(): p for p in self.processes() if p.name().startswith("pg:")}


def wait_for_metrics(port: int, *needles: str, timeout: float = 15) -> str:
    """The Prometheus page of a run on ``port`` once it holds every one of ``needles``."""
    import urllib.request

    def scrape() -> str | None:
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read()
        except OSError:
            return None
        text = body.decode()
        return text if all(n in text for n in needles) else None

    return wait_for(scrape, timeout, f"{', '.join(needles)} on the metrics endpoint")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shm_segments() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("pg-")}


def own_segments(names: set[str], supervisors: Iterable[int] = ()) -> set[str]:
    """Those of the segments ``names`` that are still there and belong to this test: the
    segments of runs whose supervisor is this process, one of ``supervisors`` or gone (a
    run that left them behind), not those of a run that a test beside this one has under
    way. A supervisor writes its pid before any segment is made, and removes the segments
    before its folder."""
    from posegraph.runtime.plan import rundir_of
    from posegraph.runtime.shm import segment_writer, supervisor_pid

    mine = {os.getpid(), *supervisors}
    out = set()
    for name in names:
        pid = supervisor_pid(rundir_of(name.split("-")[1]))
        if pid is not None and pid not in mine and psutil.pid_exists(pid):
            continue
        # pg-RUN-OWNER-PID-SERIAL: with no run folder here (a run under another TMPDIR),
        # a writer still alive is another test's (this test's processes are gone by now)
        writer = segment_writer(name)
        if pid is None and writer and writer != os.getpid() and psutil.pid_exists(writer):
            continue
        if os.path.exists(f"/dev/shm/{name}"):
            out.add(name)
    return out


@pytest.fixture
def posegraph(tmp_path):
    """Start ``posegraph ARGS`` in tmp_path; checks afterwards that nothing was left behind."""
    runs: list[Run] = []
    before = shm_segments()

    def start(*args: str, env: dict | None = None) -> Run:
        run = Run(list(args), tmp_path, env)
        runs.append(run)
        return run

    yield start
    for run in runs:
        if run.proc.poll() is None:
            os.killpg(run.proc.pid, signal.SIGKILL)
            run.proc.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(r.processes() for r in runs):
        time.sleep(0.1)
    left = [p.pid for r in runs for p in r.processes()]
    assert not left, f"processes left behind: {left}"
    left = own_segments(shm_segments() - before)
    assert not left, f"shared-memory segments left in /dev/shm: {sorted(left)}"


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def topdown_with_fallback():
    """``crop.topdown`` and ``pose.topdown`` (HRNet-W16, the shipped weights, ER-Pose-n as
    the whole-image fallback) set up in this process: (crop, pose)."""
    from nodes.crop import TopDownCrop
    from nodes.pose import TopDownPose
    from posegraph.node import Context

    ctx = Context(name="pose")
    crop = TopDownCrop(model="hrnet_w16_128x96")
    pose = TopDownPose(model="hrnet_w16_128x96", weights="builtin", fallback="erpose_n_320")
    crop.setup(ctx)
    pose.setup(ctx)
    yield crop, pose
    pose.close()
