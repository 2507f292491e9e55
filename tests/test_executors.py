"""Real runs: video through PyAV, processes linked by ZeroMQ, kill -9 and SIGINT."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from posegraph import Graph
from tests.conftest import (
    ROOT,
    check_resumed_after_a_gap,
    frames_and_events,
    free_port,
    own_segments,
    posegraph_with_mounts,
    read_jsonl,
    shm_segments,
    stuck_nodes,
    wait_for,
    wait_for_metrics,
    write_pipeline,
)


@pytest.mark.parametrize("executor", ["inproc", "procs"])
def test_block_delivers_every_frame_once_in_order(tmp_path, video, executor):
    g = Graph("block")
    cam = g.add("cam", "source.video", uri=str(video))
    mid = g.add("mid", "util.passthrough", cam)
    g.add("out", "sink.jsonl", mid, path=str(tmp_path / "out.jsonl"))
    g.add("count", "sink.null", cam)
    before = shm_segments()
    summary = g.run(executor=executor)
    frames, events = frames_and_events(read_jsonl(tmp_path / "out.jsonl"))
    assert [f["index"] for f in frames] == list(range(40))
    assert [e["event"] for e in events] == ["eos"]
    assert frames[-1]["pts"] == pytest.approx(39 / 25, abs=1e-3)
    assert summary["dropped"] == 0 and summary["lost"] == 0 and summary["delivered"] == 80
    assert not own_segments(shm_segments() - before)


def test_latest_drops_and_announces_gaps(tmp_path, posegraph):
    out = tmp_path / "out.jsonl"
    write_pipeline(
        tmp_path / "p.yaml",
        [
            {
                "name": "cam",
                "type": "source.synthetic",
                "with": {"width": 64, "height": 48, "fps": 100, "frames": 100, "realtime": True},
            },
            {
                "name": "slow",
                "type": "util.passthrough",
                "from": "cam",
                "queue": {"capacity": 1, "policy": "latest"},
                "with": {"delay_ms": 40},
            },
            {"name": "out", "type": "sink.jsonl", "from": "slow", "with": {"path": str(out)}},
        ],
    )
    code, stdout, stderr = posegraph("run", "p.yaml", "--json").wait()
    assert code == 0, stderr
    frames, events = frames_and_events(read_jsonl(out))
    gaps = [e for e in events if e["event"] == "gap"]
    assert gaps, "frames were dropped without a gap event"
    # every frame is accounted for: delivered once, or counted in an announced gap
    assert len(frames) + sum(g["count"] for g in gaps) == 100
    assert [f["index"] for f in frames] == sorted(f["index"] for f in frames)
    assert events[-1]["event"] == "eos"
    summary = json.loads(stdout.splitlines()[-1])
    assert summary["dropped"] == sum(g["count"] for g in gaps)


def test_replicas_are_merged_back_in_order(tmp_path, posegraph):
    out = tmp_path / "out.jsonl"
    write_pipeline(
        tmp_path / "p.yaml",
        [
            {
                "name": "cam",
                "type": "source.synthetic",
                "with": {"width": 64, "height": 48, "frames": 60},
            },
            {
                "name": "work",
                "type": "util.passthrough",
                "from": "cam",
                "replicas": 3,
                "with": {"jitter_ms": 15},
            },
            {"name": "out", "type": "sink.jsonl", "from": "work", "with": {"path": str(out)}},
        ],
    )
    code, _, stderr = posegraph("run", "p.yaml").wait()
    assert code == 0, stderr
    frames, events = frames_and_events(read_jsonl(out))
    assert [f["index"] for f in frames] == list(range(60))
    assert [e["event"] for e in events] == ["eos"]


def test_kill_9_restarts_the_node_and_announces_the_gap(tmp_path, posegraph):
    out = tmp_path / "out.jsonl"
    write_pipeline(
        tmp_path / "p.yaml",
        [
            {
                "name": "cam",
                "type": "source.synthetic",
                "with": {"width": 64, "height": 48, "fps": 50, "frames": 200, "realtime": True},
            },
            {"name": "mid", "type": "util.passthrough", "from": "cam", "with": {"delay_ms": 5}},
            {"name": "out", "type": "sink.jsonl", "from": "mid", "with": {"path": str(out)}},
        ],
    )
    run = posegraph("run", "p.yaml", "--json")
    wait_for(lambda: len(read_jsonl(out)) > 30, 20, "frames to reach the sink")
    victim = run.workers()["pg:mid"]
    victim.send_signal(signal.SIGKILL)
    code, stdout, stderr = run.wait()
    assert code == 0, stderr
    assert "restarting" in stderr
    frames, events = frames_and_events(read_jsonl(out))
    indices = [f["index"] for f in frames]
    assert indices == sorted(set(indices)), "frames repeated or out of order"
    assert indices[-1] == 199
    gaps = [e for e in events if e["event"] == "gap"]
    assert len(indices) + sum(g["count"] for g in gaps) == 200
    assert events[-1]["event"] == "eos"
    summary = json.loads(stdout.splitlines()[-1])
    assert summary["restarts"] == 1


def test_sigint_stops_every_process_and_cleans_shared_memory(tmp_path, posegraph):
    out = tmp_path / "out.jsonl"
    write_pipeline(
        tmp_path / "p.yaml",
        [
            {
                "name": "cam",
                "type": "source.synthetic",
                "with": {"width": 320, "height": 240, "fps": 30, "realtime": True},
            },
            {"name": "mid", "type": "util.passthrough", "from": "cam"},
            {"name": "out", "type": "sink.jsonl", "from": "mid", "with": {"path": str(out)}},
            {"name": "n", "type": "sink.null", "from": "cam"},
        ],
    )
    run = posegraph("run", "p.yaml")
    wait_for(lambda: len(read_jsonl(out)) > 10, 20, "frames to reach the sink")
    assert len(run.workers()) == 4
    assert any(n.startswith("pg-") for n in os.listdir("/dev/shm"))
    run.signal(signal.SIGINT)
    code, stdout, stderr = run.wait(30)
    assert code == 0, stderr
    assert run.processes() == []
    messages = read_jsonl(out)
    assert messages[-1] == {"v": 1, "stream": "cam", "event": "eos"}
    assert "frames delivered" in stdout


def test_duration_limit(tmp_path, posegraph):
    write_pipeline(
        tmp_path / "p.yaml",
        [
            {"name": "cam", "type": "source.synthetic", "with": {"fps": 20, "realtime": True}},
            {"name": "n", "type": "sink.null", "from": "cam"},
        ],
    )
    t0 = time.monotonic()
    code, _, stderr = posegraph("run", "p.yaml", "--duration", "1.5").wait()
    assert code == 0, stderr
    assert time.monotonic() - t0 < 15


def test_several_streams_share_nodes_and_end_separately(tmp_path, posegraph):
    out = tmp_path / "out.jsonl"
    write_pipeline(
        tmp_path / "p.yaml",
        [
            {
                "name": "cam1",
                "type": "source.synthetic",
                "with": {"width": 64, "height": 48, "frames": 30},
            },
            {
                "name": "cam2",
                "type": "source.synthetic",
                "with": {"width": 80, "height": 60, "frames": 50},
            },
            {"name": "mid", "type": "util.passthrough", "from": ["cam1", "cam2"]},
            {"name": "out", "type": "sink.jsonl", "from": "mid", "with": {"path": str(out)}},
        ],
    )
    code, _, stderr = posegraph("run", "p.yaml").wait()
    assert code == 0, stderr
    messages = read_jsonl(out)
    for stream, n in (("cam1", 30), ("cam2", 50)):
        mine = [m for m in messages if m["stream"] == stream]
        assert [m["index"] for m in mine if "event" not in m] == list(range(n))
        assert [m["event"] for m in mine if "event" in m] == ["eos"]


def test_tcp_transport_sends_pixels_inline(tmp_path, posegraph):
    out = tmp_path / "out.jsonl"
    write_pipeline(
        tmp_path / "p.yaml",
        [
            {
                "name": "cam",
                "type": "source.synthetic",
                "with": {"width": 64, "height": 48, "frames": 40},
            },
            {"name": "mid", "type": "util.passthrough", "from": "cam"},
            {"name": "out", "type": "sink.jsonl", "from": "mid", "with": {"path": str(out)}},
        ],
        runtime={"transport": "tcp"},
    )
    before = shm_segments()
    run = posegraph("run", "p.yaml")

    def made() -> set[str]:
        return own_segments(shm_segments() - before, [run.proc.pid])

    wait_for(lambda: run.proc.poll() is not None or made(), 20, "the run")
    assert not made(), "tcp edges must not use shared memory"
    code, _, stderr = run.wait()
    assert code == 0, stderr
    frames, events = frames_and_events(read_jsonl(out))
    assert [f["index"] for f in frames] == list(range(40)) and events[-1]["event"] == "eos"


@pytest.mark.parametrize("curve", [True, False])
def test_tcp_sockets_let_in_only_the_runs_own_processes(tmp_path, posegraph, curve):
    """A stranger on the host pushes a message into every tcp port the run listens on.
    With CURVE (the default) none gets in: the nodes see only the run's frames. With
    ``curve: false`` the same message reaches a node, which drops it as unreadable and says
    so: what the first case shows is CURVE's doing."""
    import zmq

    out = tmp_path / "out.jsonl"
    write_pipeline(
        tmp_path / "p.yaml",
        [
            {
                "name": "cam",
                "type": "source.synthetic",
                "with": {"width": 64, "height": 48, "fps": 20, "frames": 50, "realtime": True},
            },
            {"name": "mid", "type": "util.passthrough", "from": "cam"},
            {"name": "out", "type": "sink.jsonl", "from": "mid", "with": {"path": str(out)}},
        ],
        runtime={"transport": "tcp", "curve": curve},
    )
    run = posegraph("run", "p.yaml")

    def listening() -> set[int]:
        ports = set()
        for p in run.processes():
            try:
                conns = p.net_connections("tcp")
            except Exception:  # noqa: BLE001 - a process that just ended
                continue
            ports |= {c.laddr.port for c in conns if c.status == "LISTEN"}
        return ports

    # the control channel and the two nodes' inputs, once the workers are up
    wait_for(lambda: len(listening()) >= 3 or run.proc.poll() is not None, 30, "the ports")
    ports = listening()
    assert len(ports) >= 3, f"the run listens on {sorted(ports)} only"
    ctx = zmq.Context()
    socks = []
    for port in ports:
        s = ctx.socket(zmq.PUSH)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(f"tcp://127.0.0.1:{port}")
        socks.append(s)
    time.sleep(0.5)
    for s in socks:
        try:
            s.send_multipart([b"stranger", b"not a frame"], flags=zmq.NOBLOCK)
        except zmq.Again:  # no handshake done (a CURVE server, or the control ROUTER)
            pass
    code, _, stderr = run.wait()
    for s in socks:
        s.close()
    ctx.term()
    assert code == 0, stderr
    frames, events = frames_and_events(read_jsonl(out))
    assert [f["index"] for f in frames] == list(range(50)) and events[-1]["event"] == "eos"
    assert ("dropped a message" in stderr) is not curve, stderr


def test_metric_windows_keep_the_newest_samples_in_memory_taken_at_once():
    from posegraph.metrics import Window, percentiles

    w = Window(5)
    nbytes = w.buf.nbytes
    w.extend([1, 2, 3])
    assert sorted(w.values()) == [1, 2, 3]
    w.extend([4, 5, 6, 7, 8])  # wraps around
    assert sorted(w.values()) == [4, 5, 6, 7, 8] and len(w) == 5
    w.extend(range(100, 112))  # more than it holds at once
    assert sorted(w.values()) == list(range(107, 112))
    assert percentiles(w)["p50"] == 109 and w.buf.nbytes == nbytes


def test_prometheus_endpoint_serves_node_metrics(tmp_path, posegraph):
    port = free_port()
    write_pipeline(
        tmp_path / "p.yaml",
        [
            {"name": "cam", "type": "source.synthetic", "with": {"fps": 50, "realtime": True}},
            {"name": "n", "type": "sink.null", "from": "cam"},
        ],
    )
    run = posegraph("run", "p.yaml", "--metrics-port", str(port), "--duration", "4")

    # the sink's first report may come a tick after the source's: wait for both
    text = wait_for_metrics(
        port,
        'posegraph_node_frames_out_total{node="cam"',
        'posegraph_stream_up{pipeline="test",stream="cam"} 1.0',
    )
    assert 'posegraph_node_fps{node="cam",pipeline="test"}' in text
    assert "posegraph_e2e_latency_ms" in text
    age = text.split('posegraph_stream_last_frame_age_seconds{pipeline="test",stream="cam"} ')
    assert 0.0 <= float(age[1].split()[0]) < 2.0
    code, _, stderr = run.wait()
    assert code == 0, stderr


def _get(url: str) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_health_and_readiness_endpoints(tmp_path, posegraph):
    """/healthz answers 200 while the run starts and runs; /readyz 503 ("starting") while
    a node sets up, then 200 ("running") with the streams' states."""
    port = free_port()
    write_pipeline(
        tmp_path / "p.yaml",
        [
            {"name": "cam", "type": "source.synthetic", "with": {"fps": 25, "realtime": True}},
            {"name": "slow", "type": "tests.helpers.custom_nodes:SlowSetup", "from": "cam"},
            {"name": "n", "type": "sink.null", "from": "slow"},
        ],
        runtime={"metrics_port": port},
    )
    run = posegraph("run", "p.yaml", "--duration", "3", env={"PYTHONPATH": str(ROOT)})
    base = f"http://127.0.0.1:{port}"

    def up() -> tuple[int, dict] | None:
        try:
            return _get(base + "/readyz")
        except OSError:
            return None

    code, body = wait_for(up, 15, "the health endpoint")
    assert (code, body["state"]) == (503, "starting"), body
    assert _get(base + "/healthz")[0] == 200

    def ready() -> dict | None:
        code, body = _get(base + "/readyz")
        return body if code == 200 and body["streams"] else None

    body = wait_for(ready, 30, "the run to be ready, its stream at a sink")
    assert body["state"] == "running" and body["streams"] == {"cam": "up"}, body
    assert body["supervisor_tick_age_s"] < 2.0
    code, _, stderr = run.wait()
    assert code == 0, stderr


def test_liveness_fails_when_the_supervising_loop_stops_turning():
    import time

    from posegraph.metrics import STALE_TICK_S, Metrics

    m = Metrics("p")
    assert m.health(ready=False)[0] == 200 and m.health(ready=True)[0] == 503  # starting
    m.running = True
    code, body = m.health(ready=True)
    assert code == 200 and body["state"] == "running" and body["streams"] == {}
    m.last_tick = time.monotonic() - STALE_TICK_S - 1
    code, body = m.health(ready=False)
    assert code == 503 and body["supervisor_tick_age_s"] > STALE_TICK_S
    m.last_tick = time.monotonic()
    m.stopping = True
    assert m.health(ready=False)[0] == 200
    assert m.health(ready=True)[0] == 503


def test_soak_flags_the_process_that_grows_and_only_it(tmp_path, posegraph):
    """bench soak over 10 s of a pipeline with a node that keeps 1 MB of every frame: its
    process is flagged, the others (source, sink, supervisor) are steady; so is one whose
    resident set grows by touching more and more of a shared segment, as a frame-plane
    reader's does."""
    write_pipeline(
        tmp_path / "p.yaml",
        [
            {
                "name": "cam",
                "type": "source.synthetic",
                "with": {"width": 64, "height": 48, "fps": 20, "realtime": True},
            },
            {"name": "leak", "type": "tests.helpers.custom_nodes:Leak", "from": "cam"},
            {"name": "touch", "type": "tests.helpers.custom_nodes:TouchShared", "from": "leak"},
            {"name": "out", "type": "sink.null", "from": "touch"},
        ],
    )
    args = ("bench", "soak", "p.yaml", "--seconds", "10", "--every", "0.5", "--json")
    code, stdout, stderr = posegraph(*args, env={"PYTHONPATH": str(ROOT)}).wait()
    assert code == 0, stderr
    result = json.loads(stdout.splitlines()[-1])
    procs = result["processes"]
    assert {"supervisor", "pg:cam", "pg:leak", "pg:touch", "pg:out"} <= set(procs)
    assert result["flagged"] == ["pg:leak"], procs
    # about 20 MB a second kept after the warm-up
    assert procs["pg:leak"]["mb_end"] - procs["pg:leak"]["mb_start"] > 50
    assert procs["pg:leak"]["mb_per_hour"] > 10000
    touch = procs["pg:touch"]
    assert touch["rss_mb"][1] - touch["rss_mb"][0] > 50, touch
    assert touch["shared_mb"][1] - touch["shared_mb"][0] > 50, touch
    assert abs(touch["mb_end"] - touch["mb_start"]) < 2, touch
    # the run's own frame-plane pool, not the segments of runs beside it
    assert result["shm_mb"][0] > 0 and not result["shm_grew"], result["shm_series"]
    assert result["run"]["delivered"] > 100 and result["run"]["lost"] == 0


def test_soak_keeps_time_from_the_end_of_the_set_up(tmp_path, posegraph):
    """A run that takes 4 s to set up (a model loading), soaked for 4 s with a 1 s warm-up:
    the samples judged are the run's, after READY=1, not its set-up's: the source's pool
    is there in all of them and each process was sampled for the whole run."""
    write_pipeline(
        tmp_path / "p.yaml",
        [
            {
                "name": "cam",
                "type": "source.synthetic",
                "with": {"width": 64, "height": 48, "fps": 20, "realtime": True},
            },
            {
                "name": "slow",
                "type": "tests.helpers.custom_nodes:SlowSetup",
                "from": "cam",
                "with": {"seconds": 4.0},
            },
            {"name": "out", "type": "sink.null", "from": "slow"},
        ],
    )
    args = ("bench", "soak", "p.yaml", "--seconds", "4", "--every", "0.25", "--warmup", "0.25")
    code, stdout, stderr = posegraph(*args, "--json", env={"PYTHONPATH": str(ROOT)}).wait()
    assert code == 0, stderr
    result = json.loads(stdout.splitlines()[-1])
    assert result["setup_s"] >= 4.0, result
    assert result["warmup_s"] == 1.0
    assert result["shm_mb"][0] > 0, result["shm_series"]
    slow = result["processes"]["pg:slow"]
    # from 1 s to 4 s after the set-up, every 0.25 s: about 12 samples, none of the set-up
    assert 8 <= slow["samples"] <= 13, slow
    assert slow["series"][0][0] >= 1.0, slow


@pytest.mark.parametrize(
    "threads, flagged",
    [
        ([7] * 40, False),  # steady
        ([7] * 12 + [10] * 28, False),  # a library's threads, started once at 30%
        ([7 + i // 4 for i in range(40)], True),  # one more every fourth sample: a leak
        ([7] * 30 + [10] * 10, True),  # a step at 75%: cannot be told from a late leak
    ],
    ids=["steady", "early-step", "leak", "late-step"],
)
def test_soak_tells_a_one_time_step_in_threads_from_a_leak(threads, flagged):
    """Threads and descriptors held for good are judged by the second half of the run: a
    thread pool that a library starts the first time it is needed (pyzmq's for zero-copy
    sends) is a step that stays flat after it, a leak rises all along."""
    from posegraph.soak import _judge

    rows = [
        (
            30.0 * i,
            {
                "pid": 1,
                "private_mb": 100.0,
                "rss_mb": 120.0,
                "shared_mb": 20.0,
                "fds": 25,
                "threads": n,
            },
        )
        for i, n in enumerate(threads)
    ]
    assert _judge(rows)["flag"] is flagged
    # descriptors alike
    rows = [(t, {**r, "fds": r["threads"] + 18, "threads": 7}) for t, r in rows]
    assert _judge(rows)["flag"] is flagged


def test_soak_finds_the_runs_pool_when_its_folder_was_cleaned():
    """The soak knows its run's segments by the run's folder; where an age-based cleaning
    of /tmp took the pid file from it, by the processes that made them."""
    import glob

    import psutil

    from posegraph.runtime.plan import rundir_of
    from posegraph.soak import _run_id

    with _run_in_this_process("procs", "cleaned") as (folder, _):
        run_id = folder[len(rundir_of("")) :]
        wait_for(lambda: glob.glob(f"/dev/shm/pg-{run_id}-*"), 20, "the source's pool")
        pids = {os.getpid(), *(c.pid for c in psutil.Process().children(recursive=True))}
        assert _run_id(os.getpid(), pids) == run_id
        os.remove(os.path.join(folder, "supervisor.pid"))
        assert _run_id(os.getpid(), pids) == run_id
        assert _run_id(os.getpid(), {os.getpid()}) is None  # the pool is the source's


def test_kill_9_of_a_source_resumes_the_stream(tmp_path, posegraph):
    from tests.conftest import write_video

    clip = write_video(tmp_path / "long.mp4", frames=100)
    out = tmp_path / "out.jsonl"
    write_pipeline(
        tmp_path / "p.yaml",
        [
            {"name": "cam", "type": "source.video", "with": {"uri": str(clip), "realtime": True}},
            {"name": "out", "type": "sink.jsonl", "from": "cam", "with": {"path": str(out)}},
        ],
    )
    run = posegraph("run", "p.yaml", "--json")
    wait_for(lambda: len(read_jsonl(out)) > 20, 20, "frames to reach the sink")
    run.workers()["pg:cam"].send_signal(signal.SIGKILL)
    code, stdout, stderr = run.wait()
    assert code == 0, stderr
    frames, events = frames_and_events(read_jsonl(out))
    indices = [f["index"] for f in frames]
    assert indices == sorted(set(indices)) and indices[-1] == 99
    gaps = [e for e in events if e["event"] == "gap"]
    assert len(indices) + sum(g["count"] for g in gaps) == 100
    assert events[-1]["event"] == "eos"
    assert json.loads(stdout.splitlines()[-1])["restarts"] == 1


@pytest.mark.parametrize("spin", [False, True], ids=["waits", "holds-the-lock"])
def test_a_stuck_node_is_killed_and_restarted(tmp_path, posegraph, spin):
    """A node stuck in one call (waiting for ever, or spinning in C with the interpreter's
    lock so that its process cannot even report) is killed after hang_timeout_s and
    restarted; the stream goes on, the loss announced as a gap."""
    out = tmp_path / "out.jsonl"
    write_pipeline(
        tmp_path / "p.yaml",
        stuck_nodes(tmp_path, out, spin=spin),
        runtime={"hang_timeout_s": 1.5 if spin else 3},
    )
    port = free_port()
    args = ("run", "p.yaml", "--json", "--metrics-port", str(port))
    run = posegraph(*args, env={"PYTHONPATH": str(ROOT)})
    if not spin:
        # while it waits, the endpoint shows how long its call has lasted
        gauge = 'posegraph_node_busy_seconds{node="stuck",pipeline="test"} '

        def busy() -> bool:
            text = wait_for_metrics(port, gauge)
            return float(text.split(gauge)[1].split()[0]) >= 1.0

        wait_for(busy, 15, "the stuck node's busy seconds to pass 1")
    code, stdout, stderr = run.wait()
    assert code == 0, stderr
    why = "it has sent no report for" if spin else "node stuck has been in one call for"
    assert "process stuck (nodes stuck) is stuck: " + why in stderr, stderr
    assert f"hang_timeout_s: {1.5 if spin else 3}); killing it" in stderr
    assert "died: killed as stuck (" + why in stderr
    check_resumed_after_a_gap(out)
    assert json.loads(stdout.splitlines()[-1])["restarts"] == 1


def test_a_stuck_node_stops_an_inproc_run_with_one_line(tmp_path, posegraph):
    """In one process a stuck thread cannot be killed: past hang_timeout_s the run stops
    with an error naming the node, what it has delivered kept, and no process left."""
    out = tmp_path / "out.jsonl"
    write_pipeline(tmp_path / "p.yaml", stuck_nodes(tmp_path, out), runtime={"hang_timeout_s": 2})
    code, _, stderr = posegraph("run", "p.yaml", "--inproc", env={"PYTHONPATH": str(ROOT)}).wait(60)
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1, stderr
    assert re.search(
        r"node stuck has been in one call for \d+ s \(runtime hang_timeout_s: 2\)", lines[0]
    )
    assert "run without --inproc" in lines[0]
    frames, _ = frames_and_events(read_jsonl(out))
    assert [f["index"] for f in frames] == list(range(10))


def test_an_unforeseen_set_up_error_stops_the_run_with_one_line(tmp_path, posegraph):
    """An exception of any kind while a process sets up stops the run with it (the
    process ended with status 0 and was restarted, the error unsaid)."""
    write_pipeline(
        tmp_path / "p.yaml",
        [
            {"name": "cam", "type": "source.synthetic", "with": {"width": 32, "height": 32}},
            {"name": "gpu", "type": "tests.helpers.custom_nodes:SetupRaises", "from": "cam"},
            {"name": "n", "type": "sink.null", "from": "gpu"},
        ],
    )
    code, _, stderr = posegraph("run", "p.yaml", env={"PYTHONPATH": str(ROOT)}).wait(30)
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1, stderr
    assert "process 'gpu' could not set up: RuntimeError: the device is on fire" in lines[0]
    assert "restarting" not in stderr


@pytest.mark.parametrize("tmpdir", [0, 64, 90], ids=["tmp", "TMPDIR-64", "TMPDIR-90"])
def test_long_node_names(tmp_path, posegraph, tmpdir):
    """Node names of any length (a socket's path has room for 107 bytes), in /tmp, in a
    TMPDIR of 64 characters (names cut to fit) and in one of 90 (the run goes to /tmp)."""
    cam, mid = "front-door-camera-" + "n" * 80, "detector-for-the-front-door-" + "d" * 70
    write_pipeline(
        tmp_path / "p.yaml",
        [
            {"name": cam, "type": "source.synthetic", "with": {"width": 32, "height": 32}},
            {"name": mid, "type": "util.passthrough", "from": cam},
            {"name": "out", "type": "sink.null", "from": mid},
        ],
    )
    env = None
    if tmpdir:
        import shutil
        import tempfile

        folder = tempfile.mkdtemp(prefix="t" * (tmpdir - len("/tmp/") - 8), dir="/tmp")
        assert len(folder) == tmpdir
        env = {"TMPDIR": folder}
    try:
        run = posegraph("run", "p.yaml", "--max-frames", "20", "--json", env=env)
        code, stdout, stderr = run.wait(30)
    finally:
        if tmpdir:
            shutil.rmtree(folder)
    assert code == 0, stderr
    assert json.loads(stdout.splitlines()[-1])["delivered"] == 20


def test_a_stop_while_models_load_ends_the_run_at_once(tmp_path, posegraph):
    """SIGINT while a node takes a minute to set up: nothing has flowed, so nothing is
    drained, and the run ends without waiting for the set-up."""
    write_pipeline(
        tmp_path / "p.yaml",
        [
            {"name": "cam", "type": "source.synthetic", "with": {"width": 32, "height": 32}},
            {
                "name": "model",
                "type": "tests.helpers.custom_nodes:SlowSetup",
                "from": "cam",
                "with": {"seconds": 60},
            },
            {"name": "n", "type": "sink.null", "from": "model"},
        ],
    )
    run = posegraph("run", "p.yaml", env={"PYTHONPATH": str(ROOT)})
    wait_for(lambda: "pg:model" in run.workers(), 20, "the model's process")
    run.signal(signal.SIGINT)
    code, _, stderr = run.wait(15)
    assert code == 0, stderr
    assert "stopped while starting; ending every process" in stderr


def test_a_process_that_never_sets_up_stops_the_run_with_one_line(tmp_path, posegraph):
    hang = tmp_path / "hang"
    hang.touch()
    write_pipeline(
        tmp_path / "p.yaml",
        [
            {"name": "cam", "type": "source.synthetic", "with": {"width": 32, "height": 32}},
            {
                "name": "load",
                "type": "tests.helpers.custom_nodes:SetupHang",
                "from": "cam",
                "with": {"hang": str(hang)},
            },
            {"name": "n", "type": "sink.null", "from": "load"},
        ],
        runtime={"setup_timeout_s": 2},
    )
    code, _, stderr = posegraph("run", "p.yaml", env={"PYTHONPATH": str(ROOT)}).wait(30)
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1, stderr
    why = "process 'load' (nodes load) did not set up within 2 s (runtime setup_timeout_s)"
    assert why in lines[0], lines
    # the posegraph fixture checks that no process of the run is left


def test_a_restart_that_never_sets_up_is_killed_and_restarted(tmp_path, posegraph):
    """A process that died and, restarted, hangs in set-up is killed after setup_timeout_s
    and restarted again; the stream goes on, every frame delivered or counted."""
    out = tmp_path / "out.jsonl"
    write_pipeline(
        tmp_path / "p.yaml",
        [
            {
                "name": "cam",
                "type": "source.synthetic",
                "with": {"width": 32, "height": 32, "fps": 25, "frames": 150, "realtime": True},
            },
            {
                "name": "stuck",
                "type": "tests.helpers.custom_nodes:SetupHang",
                "from": "cam",
                "with": {"hang": str(tmp_path / "hang"), "crash_at": 10},
            },
            {"name": "out", "type": "sink.jsonl", "from": "stuck", "with": {"path": str(out)}},
        ],
        runtime={"setup_timeout_s": 2},
    )
    run = posegraph("run", "p.yaml", "--json", env={"PYTHONPATH": str(ROOT)})
    code, stdout, stderr = run.wait()
    assert code == 0, stderr
    assert "process stuck (nodes stuck) is stuck: it has not set up in " in stderr, stderr
    assert "(runtime setup_timeout_s: 2); killing it" in stderr
    check_resumed_after_a_gap(out)
    assert json.loads(stdout.splitlines()[-1])["restarts"] == 2


def test_a_node_that_keeps_dying_stops_the_pipeline_with_its_error(tmp_path, posegraph):
    write_pipeline(
        tmp_path / "p.yaml",
        [
            {
                "name": "cam",
                "type": "source.synthetic",
                "with": {"width": 32, "height": 32, "fps": 50, "realtime": True},
            },
            {"name": "bad", "type": "tests.helpers.custom_nodes:Crash", "from": "cam"},
            {"name": "n", "type": "sink.null", "from": "bad"},
        ],
        runtime={"max_restarts": 2},
    )
    code, _, stderr = posegraph("run", "p.yaml", env={"PYTHONPATH": str(ROOT)}).wait()
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1, stderr
    assert "process 'bad' (nodes bad) failed 3 times within 300 s" in lines[0]
    assert "exit status 1" in lines[0]


def test_no_writable_temporary_folder_is_one_line(tmp_path):
    read_only = "-t tmpfs -o ro,size=1m tmpfs"
    done = posegraph_with_mounts(
        [f"{read_only} /tmp", f"{read_only} /var/tmp"],
        ["run", f"{ROOT}/pipelines/passthrough.yaml", "--max-frames", "5"],
        cwd=Path("/tmp"),
        env={"TMPDIR": ""},
    )
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "cannot make the run's folder /tmp/posegraph-" in lines[0]
    assert (
        "Read-only file system; a run keeps its sockets in the temporary folder: set TMPDIR"
        in (lines[0])
    )


@pytest.mark.parametrize("mb", [40, 4])
def test_a_small_dev_shm_gives_smaller_pools_or_inline_images(tmp_path, mb):
    """1280x720 frames need 84 MB for a pool of 32 slots: with 40 MB the pool takes the
    slots half of it holds, with 4 MB none, and the images go inline; either way with one
    warning, every frame delivered, and no process killed by SIGBUS (as when a write into
    a segment finds /dev/shm full)."""
    write_pipeline(
        tmp_path / "p.yaml",
        [
            {
                "name": "cam",
                "type": "source.synthetic",
                "with": {"width": 1280, "height": 720, "fps": 25, "frames": 200},
            },
            {"name": "pass", "type": "util.passthrough", "from": "cam"},
            {"name": "out", "type": "sink.null", "from": "pass"},
        ],
    )
    done = posegraph_with_mounts(
        [f"-t tmpfs -o size={mb}m tmpfs /dev/shm"], ["run", "p.yaml", "--json"], cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "frame plane (cam)" in line]
    assert len(warnings) == 1, done.stderr
    assert f"/dev/shm has {mb} MB free; 32 slots of 2.6 MB need 84 MB: " in warnings[0]
    if mb == 40:
        assert "using 7 slots" in warnings[0]
    else:
        assert "images go inline over the sockets" in warnings[0]
    summary = json.loads(done.stdout.splitlines()[-1])
    assert (summary["delivered"], summary["lost"], summary["restarts"]) == (200, 0, 0), summary


@pytest.mark.exclusive  # every run removes such segments: no other test may run meanwhile
def test_segments_left_by_a_killed_run_are_removed_by_the_next(tmp_path, posegraph):
    from multiprocessing import resource_tracker, shared_memory

    from posegraph.runtime.plan import rundir_of

    # a process that has ended: the killed run's supervisor, and its segment's maker
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    segment = f"pg-00dead00aa-cam-{gone.stdout.decode().strip()}-1"
    stale = shared_memory.SharedMemory(name=segment, create=True, size=64)
    resource_tracker.unregister(stale._name, "shared_memory")
    stale.close()
    # the folders of killed runs: one with a segment left, one without
    folders = [Path(rundir_of("00dead00aa")), Path(rundir_of("00dead00bb"))]
    for folder in folders:
        folder.mkdir(exist_ok=True)
        (folder / "supervisor.pid").write_text(gone.stdout.decode().strip())
    write_pipeline(
        tmp_path / "p.yaml",
        [
            {
                "name": "cam",
                "type": "source.synthetic",
                "with": {"width": 32, "height": 32, "frames": 5},
            },
            {"name": "n", "type": "sink.null", "from": "cam"},
        ],
    )
    code, _, stderr = posegraph("run", "p.yaml").wait()
    assert code == 0, stderr
    assert segment not in os.listdir("/dev/shm")
    assert "removed 1 shared-memory segments left by runs that were killed" in stderr
    assert not any(folder.exists() for folder in folders)


@pytest.mark.exclusive  # another test's run would remove the folder first
def test_the_folder_of_a_killed_inproc_run_is_removed_by_the_next(tmp_path, posegraph):
    from posegraph.runtime.plan import rundir_of
    from posegraph.runtime.shm import supervisor_pid

    def pipeline(frames: int) -> list[dict]:
        return [
            {
                "name": "cam",
                "type": "source.synthetic",
                "with": {"width": 32, "height": 32, "fps": 10, "frames": frames, "realtime": True},
            },
            {"name": "n", "type": "sink.null", "from": "cam"},
        ]

    write_pipeline(tmp_path / "long.yaml", pipeline(1000))
    killed = posegraph("run", "long.yaml", "--inproc")
    parent, prefix = os.path.split(rundir_of(""))

    def its_folder() -> Path | None:
        for name in os.listdir(parent):
            folder = Path(parent, name)
            if name.startswith(prefix) and supervisor_pid(str(folder)) == killed.proc.pid:
                return folder
        return None

    folder = wait_for(its_folder, 30, "the inproc run's folder")
    os.killpg(killed.proc.pid, signal.SIGKILL)
    killed.proc.wait()
    assert folder.exists()
    write_pipeline(tmp_path / "short.yaml", pipeline(2))
    code, _, stderr = posegraph("run", "short.yaml", "--inproc").wait()
    assert code == 0, stderr
    assert not folder.exists()


@pytest.mark.parametrize(
    "inproc, node", [(False, "Refuse"), (True, "Refuse"), (True, "RefuseConcurrently")]
)
def test_a_node_error_while_running_stops_with_one_line_not_restarts(
    tmp_path, posegraph, inproc, node
):
    """Also from a concurrent node's worker threads (two streams: two frames in flight)."""
    write_pipeline(
        tmp_path / "p.yaml",
        [
            *(
                {
                    "name": cam,
                    "type": "source.synthetic",
                    "with": {"width": 32, "height": 32, "frames": 50},
                }
                for cam in ("cam", "cam2")
            ),
            {
                "name": "picky",
                "type": f"tests.helpers.custom_nodes:{node}",
                "from": ["cam", "cam2"],
            },
            {"name": "n", "type": "sink.null", "from": "picky"},
        ],
    )
    args = ["run", "p.yaml", *(["--inproc"] if inproc else [])]
    code, _, stderr = posegraph(*args, env={"PYTHONPATH": str(ROOT)}).wait()
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and lines == [
        "error: node 'picky': frames of this stream carry no poses: put a pose node before me"
    ], stderr
    assert "restarting" not in stderr


@pytest.mark.parametrize("in_flight", [None, 1])
def test_a_concurrent_node_keeps_a_frame_per_stream_in_flight_and_its_order(tmp_path, in_flight):
    """Model nodes are ``concurrent``: the runtime hands them one frame per stream at once
    (so that several streams' requests can share a batch), and still passes frames on in
    each stream's order, with the gaps of a dropping queue and eos after the frames before
    them. ``runtime: in_flight: 1`` turns it off."""
    from tests.helpers.custom_nodes import Overlapping

    Overlapping.peak = 0
    g = Graph("overlap")
    g.runtime.in_flight = in_flight
    cams = [
        g.add(f"cam{i}", "source.synthetic", width=64, height=48, fps=60, frames=40, realtime=True)
        for i in range(3)
    ]
    work = g.add(
        "work",
        "tests.helpers.custom_nodes:Overlapping",
        *cams,
        queue={"capacity": 2, "policy": "drop_oldest"},
    )
    g.add("out", "sink.jsonl", work, path=str(tmp_path / "out.jsonl"))
    summary = g.run(executor="inproc")
    messages = read_jsonl(tmp_path / "out.jsonl")
    assert Overlapping.peak == (3 if in_flight is None else 1)
    dropped = 0
    for i in range(3):
        mine = [m for m in messages if m["stream"] == f"cam{i}"]
        # each frame comes after the frames and announced gaps before it, and only them
        passed = 0
        for m in mine[:-1]:
            if m.get("event") == "gap":
                passed += m["count"]
                dropped += m["count"]
            else:
                assert "event" not in m and m["index"] == passed, (m, passed)
                passed += 1
        assert passed == 40
        assert mine[-1]["event"] == "eos"
    assert summary["dropped"] == dropped > 0, "the queue dropped nothing: the test lost its point"


@pytest.mark.exclusive
def test_a_slow_stream_does_not_hold_back_the_others_in_a_concurrent_node(tmp_path):
    """Order is kept per stream: b's quick frames leave while a's slow one is at work."""
    g = Graph("slow")
    a = g.add("a", "source.synthetic", width=64, height=48, frames=2, fps=4, realtime=True)
    b = g.add("b", "source.synthetic", width=64, height=48, frames=10, fps=100, realtime=True)
    work = g.add(
        "work", "tests.helpers.custom_nodes:Overlapping", a, b, delay_ms=0, slow={"a": 400}
    )
    g.add("out", "sink.jsonl", work, path=str(tmp_path / "out.jsonl"))
    g.run(executor="inproc")
    order = [m["stream"] for m in read_jsonl(tmp_path / "out.jsonl") if "event" not in m]
    assert order.count("a") == 2 and order.count("b") == 10
    assert order.index("a") >= 5, f"b's frames waited for a's: {order}"


@pytest.mark.exclusive
@pytest.mark.parametrize("executor", ["inproc", "procs"])
def test_the_last_model_node_learns_the_time_its_frames_take_to_the_sinks(tmp_path, executor):
    """Measured at the sinks, handed back to the last model node on each path (which plans
    its model work to end that much earlier); a model node with another after it is told
    nothing, since the time after it is that node's to plan."""
    g = Graph("tail")
    cam = g.add("cam", "source.synthetic", width=32, height=32, fps=10, frames=25, realtime=True)
    first = g.add("first", "tests.helpers.custom_nodes:TailProbe", cam, path=str(tmp_path / "1"))
    last = g.add("last", "tests.helpers.custom_nodes:TailProbe", first, path=str(tmp_path / "2"))
    slow = g.add("slow", "util.passthrough", last, delay_ms=60)
    g.add("out", "sink.null", slow)
    g.run(executor=executor)
    firsts = [float(v) for v in (tmp_path / "1").read_text().split()]
    lasts = [float(v) for v in (tmp_path / "2").read_text().split()]
    assert set(firsts) == {0.0}
    # the 95th percentile of the recent frames: at least the 60 ms delay; the ceiling leaves
    # room for one stall of a busy 2-core machine among them (CI runs saw 0.36 and 0.58 s)
    assert lasts[0] == 0.0 and 0.06 <= lasts[-1] < 1.0, lasts


def _datagrams(sock) -> list[str]:
    sock.setblocking(False)
    out = []
    while True:
        try:
            out.append(sock.recv(65536).decode())
        except BlockingIOError:
            return out


@pytest.mark.parametrize("executor", ["procs", "inproc"])
def test_systemd_hears_ready_watchdog_status_and_stopping(tmp_path, posegraph, executor):
    """Under Type=notify with a watchdog (NOTIFY_SOCKET, WATCHDOG_USEC), a run says READY=1
    once running, pings WATCHDOG=1 every half interval, STATUS lines, and STOPPING=1 when
    it drains: on SIGTERM (procs) or when its source ends (inproc)."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        path = tmp_path / "notify"
        sock.bind(str(path))
        frames = 2000 if executor == "procs" else 100
        write_pipeline(
            tmp_path / "p.yaml",
            [
                {
                    "name": "cam",
                    "type": "source.synthetic",
                    "with": {
                        "width": 32,
                        "height": 32,
                        "fps": 25,
                        "frames": frames,
                        "realtime": True,
                    },
                },
                {"name": "out", "type": "sink.null", "from": "cam"},
            ],
        )
        env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "500000"}
        args = ("run", "p.yaml", "--json") + (("--inproc",) if executor == "inproc" else ())
        run = posegraph(*args, env=env)
        got: list[str] = []

        def ready() -> bool:
            got.extend(_datagrams(sock))
            return any("READY=1" in m for m in got)

        wait_for(ready, 30, "READY=1")

        def pinged() -> bool:
            got.extend(_datagrams(sock))
            first = next(i for i, m in enumerate(got) if "READY=1" in m)
            return sum("WATCHDOG=1" in m for m in got[first + 1 :]) >= 6

        # a ping every 0.25 s: six of them take 1.5 s on a quiet machine
        wait_for(pinged, 30, "six watchdog pings after READY=1")
        if executor == "procs":
            run.signal(signal.SIGTERM)
        code, stdout, stderr = run.wait()
        assert code == 0, stderr
        got.extend(_datagrams(sock))
    first = next(i for i, m in enumerate(got) if "READY=1" in m)
    assert all(m == "WATCHDOG=1" for m in got[:first]), got
    assert "\nSTATUS=test: " in got[first] and "frames delivered in" in got[first], got
    stopping = [i for i, m in enumerate(got) if "STOPPING=1" in m]
    assert len(stopping) == 1 and stopping[0] > first, got
    delivered = json.loads(stdout.splitlines()[-1])["delivered"]
    assert f"STATUS=ended: test: {delivered} frames delivered in " in got[-1], got
    if executor == "procs":
        assert "STATUS=draining" in got[stopping[0]], got
        assert delivered < frames


@pytest.mark.parametrize("executor", ["procs", "inproc"])
def test_a_run_says_stopping_when_its_duration_ends_not_after_the_drain(
    tmp_path, posegraph, executor
):
    """--duration: STOPPING=1 comes as the drain begins, as on a signal, not once the run
    has drained (here a node that takes 2 s to close): a listener (systemd, the soak) knows
    what it sees after it is the drain."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        path = tmp_path / "notify"
        sock.bind(str(path))
        cam = {"width": 32, "height": 32, "fps": 25, "realtime": True}
        write_pipeline(
            tmp_path / "p.yaml",
            [
                {"name": "cam", "type": "source.synthetic", "with": cam},
                {"name": "slow", "type": "tests.helpers.custom_nodes:SlowClose", "from": "cam"},
                {"name": "out", "type": "sink.null", "from": "slow"},
            ],
        )
        args = ("run", "p.yaml", "--json", "--duration", "1")
        args += ("--inproc",) if executor == "inproc" else ()
        run = posegraph(*args, env={"NOTIFY_SOCKET": str(path), "PYTHONPATH": str(ROOT)})
        got: list[str] = []

        def stopping() -> bool:
            got.extend(_datagrams(sock))
            return any("STOPPING=1" in m for m in got)

        wait_for(stopping, 60, "STOPPING=1")
        heard = time.monotonic()
        code, _, stderr = run.wait()
        assert code == 0, stderr
        assert time.monotonic() - heard > 1.5, "STOPPING=1 came after the drain"
        got.extend(_datagrams(sock))
    assert sum("STOPPING=1" in m for m in got) == 1, got
    assert "STATUS=ended: " in got[-1], got


def test_notifier_speaks_to_abstract_sockets_and_gives_up_on_a_missing_one(tmp_path, caplog):
    import socket

    from posegraph.runtime.notify import Notifier

    name = f"posegraph-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        n = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"})
        assert n.watchdog_s is None  # the watchdog is another process's
        n.tick(running=True, status=lambda: "fine")
        n.tick(running=True, status=lambda: "fine")  # READY once; the status not yet again
        n.stopping()
        assert _datagrams(sock) == ["READY=1\nSTATUS=fine", "STOPPING=1\nSTATUS=draining"]
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    gone.tick(running=True)
    gone.tick(running=True)
    gone.stopping()
    warnings = [r for r in caplog.records if "cannot notify systemd" in r.message]
    assert len(warnings) == 1 and not gone.enabled


def test_a_listener_that_stops_reading_never_blocks_the_notifier(tmp_path, caplog):
    """A listener that reads nothing: its queue fills (a few datagrams on Linux), and the
    notifier drops what does not fit instead of waiting, saying so once."""
    import socket

    from posegraph.runtime.notify import Notifier

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify"))
        n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify")})
        started = time.monotonic()
        for i in range(2000):
            n.send(f"STATUS=line {i}")
        assert time.monotonic() - started < 5
        assert n.enabled and n.dropped > 0
        assert _datagrams(sock)[0] == "STATUS=line 0"
        n.send("STATUS=read again")  # room once the listener reads
        assert _datagrams(sock) == ["STATUS=read again"]
    full = [r for r in caplog.records if "reads no notifications" in r.message]
    assert len(full) == 1


SCRIPT = """
from posegraph import Frame, Graph, Node


class EvenOnly(Node):
    def process(self, frame: Frame) -> Frame | None:
        return frame if frame.index % 2 == 0 else None


if __name__ == "__main__":
    g = Graph("script")
    cam = g.add("cam", "source.synthetic", width=32, height=32, frames=20)
    even = g.add("even", EvenOnly, cam)
    g.add("out", "sink.jsonl", even, path="out.jsonl")
    g.run(executor="procs")
"""


def test_a_node_class_of_the_script_itself_runs_in_node_processes(tmp_path):
    """Graph.add takes a node class itself, even one defined in the script being run:
    its process imports it from there."""
    (tmp_path / "script.py").write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, "script.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    frames, events = frames_and_events(read_jsonl(tmp_path / "out.jsonl"))
    assert [f["index"] for f in frames] == list(range(0, 20, 2))
    assert events[-1]["event"] == "eos"


def test_a_node_class_defined_in_a_function_is_refused_with_why():
    from posegraph.graph import GraphError
    from posegraph.node import Node

    class Local(Node):
        pass

    with pytest.raises(GraphError, match="Local is defined inside a function: define it at the"):
        Graph("g").add("n", Local)


@contextlib.contextmanager
def _run_in_this_process(executor: str, name: str = "fresh"):
    """A synthetic camera into a null sink, run by this process (its supervisor) in a
    thread for up to 30 s; yields the run's folder and the dict its summary goes into."""
    import glob
    import threading

    from posegraph.runtime.plan import rundir_of

    pattern = rundir_of("*")
    before = set(glob.glob(pattern))
    g = Graph(name)
    cam = g.add("cam", "source.synthetic", width=32, height=32, fps=25, realtime=True)
    g.add("out", "sink.null", cam)
    result: dict = {}
    stop = threading.Event()
    run = threading.Thread(
        target=lambda: result.update(g.run(executor=executor, duration=30, stop=stop))
    )
    run.start()

    def mine() -> str | None:
        for folder in set(glob.glob(pattern)) - before:
            pid = os.path.join(folder, "supervisor.pid")
            if os.path.exists(pid) and open(pid).read() == str(os.getpid()):
                return folder
        return None

    try:
        yield wait_for(mine, 20, "this run's folder"), result
    finally:
        stop.set()
        run.join(30)


def test_a_long_run_keeps_its_folder_from_age_based_tmp_cleaning(tmp_path, monkeypatch):
    """systemd-tmpfiles removes what in /tmp has not changed for its age (10 days on
    Fedora and RHEL); the run's pid file gone, another run would take this run's shared
    memory for a dead run's. The supervisor touches its folder: here every 0.5 s against
    an age of 4 s. The cleaning is given this run's folder alone: a pattern would clean the
    folders of the runs of the tests beside this one, which do not touch theirs that often."""
    import shutil

    import posegraph.runtime.supervisor as supervisor

    tmpfiles = shutil.which("systemd-tmpfiles")
    if tmpfiles is None:
        pytest.skip("systemd-tmpfiles is not installed")
    monkeypatch.setattr(supervisor, "FRESH_EVERY_S", 0.5)
    conf = tmp_path / "posegraph.conf"
    with _run_in_this_process("procs") as (mine, result):
        conf.write_text(f"e {mine} - - - 4s\n")
        time.sleep(6.5)  # older than the age, but for the touching
        subprocess.run([tmpfiles, "--clean", str(conf)], check=True, capture_output=True)
        assert os.path.exists(f"{mine}/supervisor.pid"), os.listdir(mine)
    assert result["delivered"] > 0 and result["restarts"] == 0, result


def test_an_inproc_run_keeps_its_folder_fresh_and_writes_its_pid_again(monkeypatch):
    """An inproc run touches its folder as a procs run's supervisor does, and writes its
    pid file again where an age-based cleaning took it away (here every 0.5 s)."""
    import posegraph.runtime.supervisor as supervisor

    monkeypatch.setattr(supervisor, "FRESH_EVERY_S", 0.5)
    with _run_in_this_process("inproc") as (folder, result):
        os.remove(f"{folder}/supervisor.pid")
        stamp = time.time() - 60  # well short of a day: no run beside this one reaps it
        os.utime(folder, (stamp, stamp))
        wait_for(lambda: os.path.exists(f"{folder}/supervisor.pid"), 5, "the pid file again")
        assert open(f"{folder}/supervisor.pid").read() == str(os.getpid())
        assert time.time() - os.stat(folder).st_mtime < 5
    assert result["delivered"] > 0, result


def test_json_logs_from_every_process_and_the_error_line(tmp_path, posegraph):
    """--log-format json: each stderr line is one JSON object, node processes' included
    (they inherit it), and so is the line a failed run ends with."""
    write_pipeline(
        tmp_path / "p.yaml",
        [
            {
                "name": "cam",
                "type": "source.rtsp",
                "with": {
                    "uri": f"rtsp://127.0.0.1:{free_port()}/none",
                    "open_timeout": 0.5,
                    "backoff": 0.2,
                    "backoff_max": 0.2,
                },
            },
            {"name": "out", "type": "sink.null", "from": "cam"},
        ],
    )
    code, _, stderr = posegraph("--log-format", "json", "run", "p.yaml", "--duration", "2").wait()
    assert code == 0, stderr
    entries = [json.loads(line) for line in stderr.splitlines()]
    assert all(set(e) >= {"ts", "level", "process", "logger", "message"} for e in entries)
    mine = [e for e in entries if e["process"] == "cam" and e["level"] == "warning"]
    assert mine and "source cam: cannot read rtsp://127.0.0.1:" in mine[0]["message"], entries
    write_pipeline(tmp_path / "q.yaml", [{"name": "cam", "type": "source.nope"}])
    code, _, stderr = posegraph("--log-format", "json", "run", "q.yaml").wait()
    (entry,) = [json.loads(line) for line in stderr.splitlines()]
    assert code == 2 and entry["level"] == "error" and "source.nope" in entry["message"]
