"""Graph.results: a running graph's frames handed back to the Python process running it."""

from __future__ import annotations

import numpy as np
import psutil
import pytest

from posegraph import Graph
from posegraph.graph import GraphError
from posegraph.runtime import PipelineError
from tests.conftest import write_video


def _pg_children() -> list[str]:
    return [
        p.name() for p in psutil.Process().children(recursive=True) if p.name().startswith("pg:")
    ]


@pytest.mark.parametrize("executor", ["procs", "inproc"])
def test_every_frame_comes_back_in_order_with_what_it_carries(tmp_path, executor):
    clip = write_video(tmp_path / "c.mp4", frames=40)
    g = Graph("back")
    cam = g.add("cam", "source.video", uri=str(clip))
    fast = g.add("fast", "util.passthrough", cam)
    slow = g.add("slow", "tests.helpers.custom_nodes:Stamp", cam, label="seen")
    results = g.results(fast, slow, images=True, executor=executor)
    frames = list(results)
    for node in ("fast", "slow"):
        mine = [f for f in frames if f.meta["node"] == node]
        assert [f.index for f in mine if f.event is None] == list(range(40))
        assert mine[-1].event == "eos"
        for f in mine[:-1]:
            # the clip's frame n has its bar at x = 7n mod 152, in its colours
            orange = np.abs(f.image.astype(int) - (0, 200, 255)).sum(axis=2) < 60
            assert abs(int(np.argmax(orange.mean(axis=0) > 0.9)) - (f.index * 7) % 152) <= 1
    assert all(
        f.meta.get("label") == "seen" for f in frames if f.meta["node"] == "slow" and not f.event
    )
    assert results.summary["delivered"] == 80 and results.summary["lost"] == 0
    without = list(g.results(fast, executor=executor, max_frames=5))
    assert len(without) == 6 and all(f.image is None for f in without)


def test_leaving_the_loop_early_stops_the_run_and_its_processes():
    g = Graph("endless")
    cam = g.add("cam", "source.synthetic", width=32, height=32, fps=25, realtime=True)
    results = g.results(cam)
    for n, frame in enumerate(results):
        assert frame.index == n
        if n == 9:
            assert _pg_children(), "the run's processes, while it runs"
            break
    assert results.summary is not None and results.summary["delivered"] >= 10
    # what the loop took counts as delivered, not lost: every frame was taken or never sent
    assert results.summary["lost"] == 0 and results.summary["dropped"] == 0, results.summary
    assert _pg_children() == []


def test_a_failing_pipeline_raises_in_the_loop_and_bad_names_are_refused():
    g = Graph("bad")
    cam = g.add("cam", "source.synthetic", width=32, height=32, frames=50)
    crash = g.add("crash", "tests.helpers.custom_nodes:Crash", cam, at=5)
    g.runtime.max_restarts = 0
    with pytest.raises(PipelineError, match="process 'crash' \\(nodes crash\\) failed 1 times"):
        for _ in g.results(crash):
            pass
    with pytest.raises(GraphError, match="results: no node 'crush' \\(nodes: cam, crash\\)"):
        g.results("crush")


def test_a_loop_paused_past_the_hang_timeout_is_waited_for():
    """A reader that stops for longer than hang_timeout_s (a breakpoint) does not get the
    results sink killed as stuck: it is waiting for the reader, not hanging."""
    import time

    g = Graph("paused")
    cam = g.add("cam", "source.synthetic", width=32, height=32, frames=40)
    g.runtime.hang_timeout_s = 1.0
    results = g.results(cam)
    frames = []
    for frame in results:
        frames.append(frame)
        if len(frames) == 5:
            time.sleep(4.0)  # the sink waits in one call all this time
    assert [f.index for f in frames if f.event is None] == list(range(40))
    assert results.summary["restarts"] == 0 and results.summary["lost"] == 0
