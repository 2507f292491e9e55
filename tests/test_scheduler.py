"""The device scheduler: deadline order, bucket choice, skips, fairness, and in a pipeline
under overload, skip-and-coast with the counts exported.

The policy tests drive the scheduler with a model whose run time is set by a sleep, so that
the load is known; the pipeline test runs the shipped models on the sample clip."""

from __future__ import annotations

import math
import re
import threading
import time

import numpy as np
import pytest

from posegraph.scheduler import Client, DeviceScheduler, RunTimes, bucket_sizes
from tests.conftest import ROOT, free_port, read_jsonl, wait_for_metrics, write_pipeline


class SleepModel:
    """Takes ``base + per_item * B`` seconds for a batch of B items; records each batch's
    item ids (the first value of each item; padding is zeros)."""

    def __init__(self, base: float, per_item: float):
        self.base, self.per_item = base, per_item
        self.batches: list[list[int]] = []

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        time.sleep(self.base + self.per_item * len(batch))
        self.batches.append([int(v) for v in batch[:, 0]])
        return {"twice": batch * 2}


@pytest.fixture
def scheduler():
    s = DeviceScheduler("cpu", "edf")
    yield s
    s.close()


def hold(scheduler: DeviceScheduler, gate: threading.Event) -> None:
    """Keep the device busy until ``gate`` opens, so that requests queue up meanwhile."""
    threading.Thread(target=scheduler.call, args=(gate.wait,), daemon=True).start()
    time.sleep(0.05)


def items(*ids: int) -> np.ndarray:
    return np.array([[i, 0] for i in ids], np.float32)


@pytest.mark.exclusive
def test_requests_run_earliest_deadline_first(scheduler):
    model = SleepModel(0.0, 0.0)
    handle = scheduler.register("m", model, (1,))
    gate = threading.Event()
    hold(scheduler, gate)
    now = time.time()
    results: dict[int, np.ndarray] = {}

    def submit(i: int, deadline: float) -> None:
        results[i] = handle.run(items(i), deadline, f"s{i}").outputs["twice"]

    threads = []
    for i, offset in ((1, 30.0), (2, 10.0), (3, 20.0), (4, 40.0)):
        threads.append(threading.Thread(target=submit, args=(i, now + offset)))
        threads[-1].start()
        time.sleep(0.05)  # arrival order 1, 2, 3, 4
    gate.set()
    for t in threads:
        t.join()
    assert [b[0] for b in model.batches] == [2, 3, 1, 4]
    assert all(results[i][0, 0] == 2 * i for i in results)


@pytest.mark.exclusive
def test_fifo_baseline_keeps_arrival_order(scheduler):
    fifo = DeviceScheduler("cpu", "fifo")
    try:
        model = SleepModel(0.0, 0.0)
        handle = fifo.register("m", model, (1,))
        gate = threading.Event()
        hold(fifo, gate)
        now = time.time()
        threads = []
        for i, offset in ((1, 30.0), (2, 10.0), (3, 20.0)):
            threads.append(threading.Thread(target=handle.run, args=(items(i), now + offset)))
            threads[-1].start()
            time.sleep(0.05)
        gate.set()
        for t in threads:
            t.join()
        assert [b[0] for b in model.batches] == [1, 2, 3]
    finally:
        fifo.close()


@pytest.mark.exclusive
def test_bucket_is_the_largest_that_meets_the_deadline(scheduler):
    assert bucket_sizes(8) == (1, 2, 4, 8) and bucket_sizes(6) == (1, 2, 4, 6)
    # slow enough that a busy machine's sleep overshoot does not change the choice
    model = SleepModel(0.02, 0.04)  # bucket 1: 60 ms, 2: 100, 4: 180, 8: 340
    handle = scheduler.register("m", model, (1, 2, 4, 8))
    handle.warm_up(items(0)[0], runs=4)
    model.batches.clear()

    # no deadline: 5 items go in one batch, padded to the bucket of 8
    result = handle.run(items(1, 2, 3, 4, 5))
    assert result.done.all() and model.batches == [[1, 2, 3, 4, 5, 0, 0, 0]]
    np.testing.assert_array_equal(result.outputs["twice"][:, 0], [2, 4, 6, 8, 10])

    # 280 ms: bucket 8 (340 ms) cannot make it, bucket 4 (180 ms) can; what is left then
    # cannot be done in time and is skipped, and the call returns by the deadline
    model.batches.clear()
    start = time.time()
    result = handle.run(items(*range(10, 18)), start + 0.28)
    assert time.time() - start < 0.28 + 0.05
    assert [len(b) for b in model.batches][0] == 4
    assert model.batches[0] == [10, 11, 12, 13]  # best-scored items first
    assert result.done[:4].all() and result.skipped >= 1
    counts = handle.snapshot()["streams"][""]
    assert counts["skipped"] == result.skipped and counts["done"] == 5 + int(result.done.sum())


@pytest.mark.exclusive
def test_a_request_that_cannot_meet_its_deadline_is_skipped_not_run(scheduler):
    model = SleepModel(0.05, 0.0)
    handle = scheduler.register("m", model, (1,))
    handle.warm_up(items(0)[0], runs=2)
    model.batches.clear()
    result = handle.run(items(7), time.time() + 0.01)  # less than one run
    assert result.skipped == 1 and model.batches == []
    assert handle.snapshot()["streams"][""] == {
        "requests": 1,
        "items": 1,
        "done": 0,
        "skipped": 1,
        "late": 0,
    }


@pytest.mark.exclusive
def test_a_client_leaves_early_enough_for_its_work_after_the_model(scheduler):
    # The device stays busy past the deadline; the node works 60 ms on what it gets back.
    # The 20 ms margin alone lets the frame end 40 ms late; the client learns the 60 ms and
    # leaves that much earlier from the next frame on.
    client = Client(scheduler.register("m", SleepModel(0.0, 0.0), (1,)))
    late = []
    for _ in range(4):
        gate = threading.Event()
        hold(scheduler, gate)
        deadline = time.time() + 0.2
        result = client.run(items(1), deadline, "cam")
        time.sleep(0.06)
        client.finished()
        late.append(time.time() - deadline)
        gate.set()
        assert not result.done.any()
    assert late[0] > 0.03, late
    assert max(late[1:]) <= 0.0, late
    assert 0.06 <= client.after_estimate() < 0.1


@pytest.mark.exclusive
def test_a_client_keeps_the_time_to_the_sinks_free_up_to_a_quarter_of_the_budget(scheduler):
    # The device stays busy past the deadline; the nodes after this one take ``tail`` to
    # bring the frame to the sinks. The client leaves that much before the deadline (the
    # margin counts towards it), but never gives up more than a quarter of the budget.
    client = Client(scheduler.register("m", SleepModel(0.0, 0.0), (1,)))
    margin = scheduler.margin
    for tail, kept in ((0.06, 0.06), (0.2, 0.1)):
        gate = threading.Event()
        hold(scheduler, gate)
        captured = time.time()
        deadline = captured + 0.4
        due = time.monotonic() + 0.4  # the scheduler keeps time by the monotonic clock
        result = client.run(items(1), deadline, "cam", captured, tail)
        gate.set()
        assert not result.done.any()
        assert result.released == pytest.approx(due - max(margin, kept), abs=0.015)


def test_run_times_are_learnt_per_bucket():
    times = RunTimes((1, 2, 4))
    assert times.estimate(2) == 0.0
    for _ in range(20):
        times.add(2, 0.010)
    assert times.estimate(2) == pytest.approx(0.010, abs=0.001)
    assert times.estimate(4) >= times.estimate(2)  # unmeasured: borrowed, scaled by size
    times.add(2, 0.050)
    assert times.estimate(2) > 0.015  # a slow run raises the estimate at once


@pytest.mark.exclusive
def test_no_stream_is_starved_under_overload(scheduler):
    """Four streams ask for twice what the device can do: each gets a fair share."""
    model = SleepModel(0.004, 0.004)  # 8 items in 36 ms
    handle = scheduler.register("m", model, (1, 2, 4, 8))
    handle.warm_up(items(0)[0], runs=2)
    stop = time.time() + 2.0

    def stream(name: str) -> None:
        handle.add_client()
        while time.time() < stop:
            handle.run(items(*range(8)), time.time() + 0.08, name)
            time.sleep(0.01)

    threads = [threading.Thread(target=stream, args=(f"cam{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts = handle.snapshot()["streams"]
    done = {s: c["done"] / c["items"] for s, c in counts.items()}
    skipped = sum(c["skipped"] for c in counts.values())
    assert skipped > 0, "the load was meant to be more than the device can do"
    assert min(done.values()) >= 0.5 * max(done.values()), counts
    # The device is kept busy: 0.33-0.37 of each stream's items are done on an idle
    # machine, 0.20-0.25 in the middle of the test suite. The floor is half of that.
    assert min(done.values()) > 0.1, counts


# ----------------------------------------------------------------- in a pipeline


def test_overload_skips_work_and_exports_the_counts(tmp_path, posegraph):
    """The sample clip in real time with a budget the CPU cannot meet for every person:
    every frame still leaves, and the skips are counted per stream on the Prometheus
    endpoint and in the run's summary. (How the tracker coasts what was skipped:
    tests/test_tracker.py.)"""
    out = tmp_path / "poses.jsonl"
    port = free_port()
    write_pipeline(
        tmp_path / "p.yaml",
        [
            {
                "name": "cam",
                "type": "source.video",
                "with": {
                    "uri": str(ROOT / "pipelines" / "media" / "street.mp4"),
                    "realtime": True,
                    "latency_budget_ms": 300,
                },
            },
            {"name": "people", "type": "detect.synthetic", "from": "cam"},
            {
                "name": "crops",
                "type": "crop.topdown",
                "from": "people",
                "with": {"model": "hrnet_w16_128x96"},
            },
            {
                "name": "pose",
                "type": "pose.topdown",
                "from": "crops",
                "with": {"model": "hrnet_w16_128x96", "weights": "builtin", "flip_test": True},
            },
            {"name": "track", "type": "track.bytetrack", "from": "pose"},
            {"name": "out", "type": "sink.jsonl", "from": "track", "with": {"path": str(out)}},
        ],
    )
    run = posegraph("run", "p.yaml", "--max-frames", "40", "--metrics-port", str(port))

    text = wait_for_metrics(port, 'outcome="skipped"', 'stream="cam"', timeout=120)
    assert "posegraph_scheduler_items_total" in text
    code, stdout, stderr = run.wait(240)
    assert code == 0, stderr
    frames = [m for m in read_jsonl(out) if "event" not in m]
    assert [m["index"] for m in frames] == list(range(40)), "every frame leaves"
    summary = stdout.strip().splitlines()[-1]
    skipped = int(re.search(r"skipped (\d+) \(deadlines\)", summary).group(1))
    assert skipped > 0, summary


def test_too_many_people_for_top_down_in_time_go_to_the_whole_image_fallback(
    topdown_with_fallback,
):
    from posegraph.packet import Detections, Frame
    from posegraph.scheduler.bench import _boxes, _first_frame

    crop, pose = topdown_with_fallback
    image = _first_frame()
    crowd = _boxes(32, np.random.default_rng(0))
    now = time.time()

    def frame(deadline: float, people: Detections) -> Frame:
        f = Frame(stream="cam", index=0, pts=0.0, captured_at=now, deadline=deadline)
        return crop.process(f.replace(image=image, detections=people))

    # 32 crops cannot be done in 250 ms on this model; the whole-image model can
    out = pose.process(frame(now + 0.25, crowd))
    assert out.meta["pose_fallback"] == "erpose_n_320" and pose.fallbacks == 1
    assert out.poses.skeleton == "coco17" and "crops" not in out.meta
    assert out.detections is not None and len(out.detections) == 32
    # without a deadline, or with few people, top-down serves every crop
    out = pose.process(frame(math.inf, crowd))
    assert "pose_fallback" not in out.meta and len(out.poses) == 32
    out = pose.process(frame(time.time() + 5.0, _boxes(2, np.random.default_rng(1))))
    assert "pose_fallback" not in out.meta and len(out.poses) == 2
    assert pose.fallbacks == 1


def test_people_skipped_in_the_last_frame_are_served_first():
    """Under overload the misses move on: the crops of people skipped in the stream's frame
    before (matched by box) go to the scheduler first, and the poses come back in the
    detections' order whatever order they ran in."""
    from nodes.crop import TopDownCrop
    from nodes.pose import TopDownPose
    from posegraph.node import Context
    from posegraph.packet import POSE_SKIPPED, Detections, Frame
    from posegraph.scheduler.bench import _first_frame

    ctx = Context(name="pose")
    crop = TopDownCrop(model="hrnet_w16_128x96")
    pose = TopDownPose(model="hrnet_w16_128x96", weights="builtin")
    crop.setup(ctx)
    pose.setup(ctx)
    try:
        image = _first_frame()
        # six people side by side (no two boxes overlap), best score first
        x = np.arange(6, dtype=np.float32)[:, None] * 100 + 10
        people = Detections(
            np.hstack([x, np.full_like(x, 100), x + 80, np.full_like(x, 400)]),
            np.linspace(0.9, 0.4, 6),
            np.zeros(6, np.int64),
        )

        def frame(deadline: float) -> Frame:
            f = Frame(stream="cam", index=0, pts=0.0, captured_at=time.time(), deadline=deadline)
            return crop.process(f.replace(image=image, detections=people))

        plain = pose.process(frame(math.inf))
        assert pose._waiting["cam"].shape == (0, 4)  # everyone served
        # a frame already past its deadline: nobody is served, everyone waits
        late = pose.process(frame(time.time() - 1.0))
        assert late.meta[POSE_SKIPPED] == list(range(6))
        assert len(pose._waiting["cam"]) == 6
        # the last three people were skipped: their crops go first ...
        pose._waiting["cam"] = people.xyxy[3:]
        f = frame(math.inf)
        boxes = people.xyxy[f.meta["crops"]["detection"]]
        assert pose._serving_order("cam", boxes).tolist() == [3, 4, 5, 0, 1, 2]
        # ... and each pose still lands on its own person
        again = pose.process(f)
        np.testing.assert_allclose(again.poses.keypoints, plain.poses.keypoints, atol=1e-3)
        np.testing.assert_allclose(again.poses.scores, plain.poses.scores, atol=1e-4)
        assert pose._waiting["cam"].shape == (0, 4)
        # no other stream's misses count, and a frame with nobody waiting keeps its order
        assert pose._serving_order("other", boxes) is None
    finally:
        pose.close()


def test_fallback_must_be_a_whole_image_model_of_the_same_skeleton():
    from nodes.pose import TopDownPose
    from posegraph.node import Context, NodeError

    for fallback, message in (
        ("hrnet_w32", "is a topdown model"),
        ("hprnet_dla34", "gives wholebody133 keypoints"),
    ):
        node = TopDownPose(model="hrnet_w16_128x96", weights="builtin", fallback=fallback)
        with pytest.raises(NodeError, match=message):
            node.setup(Context(name="pose"))
        node.close()


@pytest.mark.parametrize("in_flight", [None, 1])
def test_one_model_node_batches_the_frames_of_several_streams(tmp_path, in_flight):
    """Three streams through one whole-image pose node: it keeps a frame of each in flight,
    so the scheduler runs their images in shared batches (the run's summary counts the
    batches per bucket); with ``in_flight: 1`` every batch holds one image."""
    from posegraph import Graph

    g = Graph("streams")
    g.runtime.in_flight = in_flight
    cams = [
        g.add(f"cam{i}", "source.synthetic", width=160, height=120, frames=12, seed=i)
        for i in range(3)
    ]
    pose = g.add("pose", "pose.onestage", *cams, model="erpose_n_320", weights="builtin")
    g.add("out", "sink.jsonl", pose, path=str(tmp_path / "out.jsonl"))
    summary = g.run(executor="procs")  # a device process of its own: its models only
    assert summary["delivered"] == 36 and summary["skipped"] == 0
    (batching,) = summary["batching"].values()
    if in_flight is None:
        assert set(batching["batches"]) == {"1", "2", "3"}, "buckets up to one per stream"
        assert batching["mean_items"] > 1.2, batching
    else:
        assert batching["batches"] == {"1": 36}
