"""track.bytetrack on synthetic people with ground-truth ids.

A clip made by training.synth (MP4, MOT csv, per-frame COCO json with track ids) gives the
truth; the tracker is fed its boxes and keypoints with noise, lowered scores for hidden
people and dropped detections, and is scored with motmetrics (MOTA, IDF1, ID switches).
Hand-made walkers test the cases a clip does not pin down: crossing people, occlusion
lengths around the buffer, gaps, coasting.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from nodes.trackers import assign
from posegraph import Frame, Graph, Node, skeletons
from posegraph.node import Context, NodeError
from posegraph.packet import DETECT_SKIPPED, POSE_SKIPPED
from training.synth.video import VideoConfig, write_video
from training.tracking import (
    FPS,
    Observed,
    as_frame,
    load_truth,
    mot_scores,
    observe,
    tracked,
    tracker,
)

CLIP = VideoConfig(people=8, seconds=6.0, fps=FPS, width=320, height=240, seed=5)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> dict:
    """An 8-person 6-second synthetic clip, 320x240 at 25 fps, and its truth per frame."""
    made = write_video(CLIP, tmp_path_factory.mktemp("tracker") / "clip.mp4")
    return {**made, "truth": load_truth(made["json"])}


# ---------------------------------------------------------------- on a clip


@pytest.mark.parametrize("poses", [True, False], ids=["oks", "iou"])
def test_tracks_a_synthetic_clip_from_jittered_truth(clip, poses):
    truths = clip["truth"]
    rng = np.random.default_rng(0)
    node = tracker()
    hypotheses = []
    for index, truth in enumerate(truths):
        out = node.process(as_frame(observe(truth, rng), index, poses=poses))
        assert len(out.poses.track_ids) == len(out.poses.boxes)
        if not poses:
            assert out.poses.keypoints.shape[1:] == (0, 2)
        hypotheses.append(tracked(out.poses))
    scores = mot_scores(truths, hypotheses)
    # The targets hold with keypoints (measured here: MOTA 0.91, IDF1 0.93, 2 ID
    # switches). Boxes alone swap more ids where people occlude each other (0.91, 0.87, 3).
    assert scores["mota"] >= 0.9, scores
    assert scores["idf1"] >= (0.9 if poses else 0.85), scores
    assert scores["num_switches"] <= 3, scores


def test_pipeline_runs_the_tracker_between_a_video_and_a_sink(clip, tmp_path):
    out = tmp_path / "tracks.jsonl"
    g = Graph("tracking")
    cam = g.add("cam", "source.video", uri=str(clip["mp4"]))
    people = g.add("people", "tests.test_tracker:JitteredTruth", cam, annotations=str(clip["json"]))
    track = g.add("track", "track.bytetrack", people, track_buffer=30, smooth=True)
    g.add("out", "sink.jsonl", track, path=str(out))
    g.run(executor="inproc")
    messages = [json.loads(line) for line in out.read_text().splitlines()]
    frames = [m for m in messages if "event" not in m]
    assert [m["event"] for m in messages if "event" in m] == ["eos"]
    assert [m["index"] for m in frames] == list(range(len(clip["truth"])))
    assert all(m["skeleton"] == "coco17" for m in frames)
    hypotheses = [
        (
            np.array([p["track_id"] for p in m["people"] if p["track_id"] >= 0], np.int64),
            np.array([p["box"] for p in m["people"] if p["track_id"] >= 0]).reshape(-1, 4),
        )
        for m in frames
    ]
    scores = mot_scores(clip["truth"], hypotheses)
    assert scores["mota"] >= 0.9 and scores["idf1"] >= 0.9, scores


class JitteredTruth(Node):
    """Puts the jittered truth of each frame (by index) on the frame, as coco17 poses."""

    def __init__(self, annotations: str, seed: int = 0):
        self.annotations = annotations
        self.seed = seed

    def setup(self, ctx: Context) -> None:
        super().setup(ctx)
        self.truth = load_truth(Path(self.annotations))
        self.rng = np.random.default_rng(self.seed)

    def process(self, frame: Frame) -> Frame:
        obs = observe(self.truth[frame.index], self.rng)
        frame.poses = as_frame(obs, frame.index).poses
        return frame


def test_smoothing_brings_keypoints_closer_to_the_truth(clip):
    truths = clip["truth"]

    def error(smooth: bool) -> float:
        rng = np.random.default_rng(1)
        node = tracker(smooth=smooth)
        errors = []
        for index, truth in enumerate(truths):
            obs = observe(truth, rng, drop=0.0)
            out = node.process(as_frame(obs, index)).poses
            seen = truth.keypoints[:, :, 2] == 2
            d = np.linalg.norm(out.keypoints - truth.keypoints[:, :, :2], axis=-1)
            errors.append(d[seen & (out.track_ids >= 0)[:, None]])
        return float(np.concatenate(errors).mean())

    assert error(True) < 0.9 * error(False)


# ----------------------------------------------------------- hand-made people

# coco17 keypoints as fractions of the box: a person with arms down and one with arms up
# and legs apart. Their boxes can coincide while their keypoints cannot.
ARMS_DOWN = np.array(
    [
        (0.5, 0.08), (0.55, 0.06), (0.45, 0.06), (0.6, 0.08), (0.4, 0.08),
        (0.7, 0.22), (0.3, 0.22), (0.78, 0.38), (0.22, 0.38), (0.8, 0.52), (0.2, 0.52),
        (0.62, 0.55), (0.38, 0.55), (0.62, 0.76), (0.38, 0.76), (0.62, 0.97), (0.38, 0.97),
    ]
)  # fmt: skip
ARMS_UP = np.array(
    [
        (0.5, 0.24), (0.55, 0.22), (0.45, 0.22), (0.6, 0.24), (0.4, 0.24),
        (0.7, 0.34), (0.3, 0.34), (0.8, 0.16), (0.2, 0.16), (0.85, 0.02), (0.15, 0.02),
        (0.62, 0.6), (0.38, 0.6), (0.8, 0.78), (0.2, 0.78), (0.95, 0.97), (0.05, 0.97),
    ]
)  # fmt: skip


def walker(
    start: tuple[float, float],
    velocity: tuple[float, float],
    frames: int,
    pose: np.ndarray = ARMS_DOWN,
) -> list[Observed]:
    """A 40x100 px person moving at ``velocity`` px/frame, one exact observation per frame."""
    out = []
    for n in range(frames):
        x, y = start[0] + velocity[0] * n, start[1] + velocity[1] * n
        box = np.array([[x, y, x + 40, y + 100]])
        kpts = box[:, None, :2] + pose[None] * (box[:, None, 2:] - box[:, None, :2])
        out.append(Observed(box, np.array([0.9]), kpts, np.full((1, 17), 0.9)))
    return out


def together(*people: Observed) -> Observed:
    """One frame's observation of several people."""
    return Observed(
        *(np.concatenate([getattr(p, f.name) for p in people]) for f in fields(Observed))
    )


def test_oks_keeps_crossing_people_apart_where_boxes_alone_swap_them():
    # Two people cross slowly, boxes within a few pixels of each other for ~40 frames, and
    # the box noise is larger than their distance; their keypoints tell them apart.
    rng = np.random.default_rng(3)
    a = walker((100, 60), (0.5, 0), 100, ARMS_DOWN)
    b = walker((150, 60), (-0.5, 0), 100, ARMS_UP)
    frames = []
    for n in range(100):
        obs = together(a[n], b[n])
        obs.boxes = obs.boxes + rng.normal(0, 4, obs.boxes.shape)
        obs.keypoints = obs.keypoints + rng.normal(0, 1.5, obs.keypoints.shape)
        frames.append(obs)

    def identities(poses: bool) -> list[tuple[int, int]]:
        node = tracker()
        return [
            tuple(node.process(as_frame(obs, n, poses=poses)).poses.track_ids.tolist())
            for n, obs in enumerate(frames)
        ]

    with_keypoints = identities(poses=True)
    assert set(with_keypoints) == {(1, 2)}
    boxes_only = identities(poses=False)
    assert len(set(boxes_only)) > 1, "the case must confuse box IoU to show anything"


def test_a_track_follows_a_person_whose_sides_the_pose_model_swaps():
    """A person seen from the back gets their sides swapped on some frames, and scores lower
    there (ByteTrack's second round, which asks for a closer match): matched as they are or
    mirrored, they are followed on every frame."""
    flip = np.asarray(skeletons.get("coco17").flip_indices)
    frames = walker((20, 50), (1, 0), 40, ARMS_UP)
    for obs in frames[2::2]:
        obs.keypoints = obs.keypoints[:, flip]
        obs.scores = np.array([0.4])

    def followed(**params) -> list[int]:
        node = tracker(**params)
        return [node.process(as_frame(o, n)).poses.track_ids[0] for n, o in enumerate(frames)]

    assert followed()[1:] == [1] * 39  # confirmed on the second frame
    plain = followed(mirror_invariant=False)
    assert plain[1::2] == [1] * 20  # the frames as the model saw them right
    assert plain[2::2] == [-1] * 19, "the swaps must break plain OKS to show anything"


def test_an_id_outlives_an_occlusion_shorter_than_the_buffer_only():
    person = walker((20, 50), (2, 0), 120)
    empty = Observed(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 17, 2)), np.zeros((0, 17)))

    def ids_after_hiding(hidden: range) -> set[int]:
        node = tracker(track_buffer=30)  # 25 frames at 25 fps
        seen = set()
        for n, obs in enumerate(person):
            out = node.process(as_frame(empty if n in hidden else obs, n)).poses
            seen.update(out.track_ids[out.track_ids >= 0].tolist())
        return seen

    assert ids_after_hiding(range(30, 50)) == {1}
    assert ids_after_hiding(range(30, 60)) == {1, 2}


def test_without_score_fusion_people_of_a_low_scoring_model_keep_their_ids():
    """Two people, scored 0.3 by their model, appear on the second frame: weighing the
    box overlap (about 0.9) by the score makes the confirming match cost more than its
    limit, so their tracks are dropped again and again."""
    empty = Observed(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 17, 2)), np.zeros((0, 17)))
    pairs = zip(walker((20, 50), (2, 0), 10), walker((200, 50), (-2, 0), 10), strict=True)
    people = [empty] + [together(a, b) for a, b in pairs]
    for obs in people[1:]:
        obs.scores = np.array([0.3, 0.3])

    def ids(**params) -> list[list[int]]:
        node = tracker(high_thresh=0.25, new_track_thresh=0.3, **params)
        frames = [node.process(as_frame(o, n, poses=False)).poses for n, o in enumerate(people)]
        return [sorted(p.track_ids[p.track_ids >= 0].tolist()) for p in frames[2:]]

    assert ids() == [[]] * 9
    assert ids(fuse_score=False) == [[1, 2]] * 9


def test_gap_event_moves_predictions_on_by_the_missing_frames():
    person = walker((10, 50), (6, 0), 60)  # 6 px a frame: 10 missing frames move it 1.5 widths
    node = tracker()
    ids = []
    for n in range(20):
        ids.append(node.process(as_frame(person[n], n)).poses.track_ids[0])
    gap = Frame.make_event("cam", "gap", 20, count=10)
    assert node.on_event(gap) is gap
    (track,) = node.streams["cam"].tracks
    assert track.box[0] == pytest.approx(person[29].boxes[0, 0], abs=3.0)
    for n in range(30, 60):
        ids.append(node.process(as_frame(person[n], n)).poses.track_ids[0])
    assert set(ids) == {1}

    node.on_event(Frame.make_event("cam", "gap", 60, count=200))
    assert node.streams["cam"].tracks == []


def test_streams_keep_their_own_tracks_and_eos_forgets_one():
    a = [
        together(p, q)
        for p, q in zip(walker((10, 20), (2, 0), 40), walker((200, 20), (-2, 1), 40), strict=True)
    ]
    b = walker((50, 100), (1, -1), 40)

    def alone(frames: list[Observed]) -> list[list[int]]:
        node = tracker()
        return [node.process(as_frame(o, n)).poses.track_ids.tolist() for n, o in enumerate(frames)]

    node = tracker()
    got: dict[str, list[list[int]]] = {"a": [], "b": []}
    for n in range(40):
        for stream, frames in (("a", a), ("b", b)):
            out = node.process(as_frame(frames[n], n, stream=stream))
            got[stream].append(out.poses.track_ids.tolist())
    assert got["a"] == alone(a)
    assert got["b"] == alone(b)
    node.on_event(Frame.make_event("a", "eos", 40))
    assert set(node.streams) == {"b"}
    assert node.process(as_frame(a[0], 0, stream="a")).poses.track_ids.tolist() == [1, 2]


def test_coasting_adds_lost_people_as_predicted_poses_for_a_few_frames():
    a, b = walker((10, 50), (2, 0), 41), walker((200, 50), (-1, 0), 41)
    node = tracker(coast=True, coast_frames=3)
    outs = []
    for n in range(40):
        obs = a[n] if 20 <= n < 30 else together(a[n], b[n])
        outs.append(node.process(as_frame(obs, n)).poses)
    for n in range(20, 23):
        ids, predicted = outs[n].track_ids.tolist(), outs[n].predicted.tolist()
        assert ids == [1, 2] and predicted == [False, True]
        assert np.abs(outs[n].keypoints[1] - b[n].keypoints[0]).max() < 2.0
        assert outs[n].scores[1].min() > 0
    assert outs[23].track_ids.tolist() == [1]
    assert outs[30].track_ids.tolist() == [1, 2] and not outs[30].predicted.any()

    # A frame whose pose step was skipped still comes out with poses, marked predicted.
    skipped = node.process(as_frame(together(a[40], b[40]), 40, poses=False)).poses
    assert skipped.skeleton == "coco17" and skipped.keypoints.shape == (2, 17, 2)
    assert skipped.predicted.tolist() == [True, True]
    assert not tracker().process(as_frame(together(a[0], b[0]), 0)).poses.predicted.any()


def test_frames_the_scheduler_skipped_are_coasted_from_the_tracks():
    """Without ``coast``: a person whose pose was skipped keeps the track's keypoints, moved
    with the box; a frame whose detector was skipped carries every track, predicted, and
    no track is lost for it."""
    a, b = walker((10, 50), (2, 0), 12), walker((200, 50), (-1, 0), 12)
    node = tracker()
    for n in range(8):
        node.process(as_frame(together(a[n], b[n]), n))

    partial = as_frame(together(a[8], b[8]), 8)
    partial.poses.keypoints[1], partial.poses.scores[1] = 0.0, 0.0  # b's pose not computed
    partial.meta[POSE_SKIPPED] = [1]
    out = node.process(partial).poses
    assert out.track_ids.tolist() == [1, 2] and out.predicted.tolist() == [False, True]
    assert np.abs(out.keypoints[1] - b[8].keypoints[0]).max() < 2.0
    assert out.scores[1].min() > 0

    blind = Frame(stream="cam", index=9, pts=9 / FPS, meta={DETECT_SKIPPED: True})
    out = node.process(blind).poses
    assert sorted(out.track_ids.tolist()) == [1, 2] and out.predicted.all()
    assert out.skeleton == "coco17" and out.keypoints.shape == (2, 17, 2)
    assert np.abs(out.keypoints[out.track_ids == 1][0] - a[9].keypoints[0]).max() < 3.0

    # the next measured frame finds both tracks followed, not lost
    out = node.process(as_frame(together(a[10], b[10]), 10)).poses
    assert out.track_ids.tolist() == [1, 2] and not out.predicted.any()


def test_assignment_leaves_pairs_above_the_limit_unmatched():
    cost = np.array([[0.1, 0.5], [0.5, 0.95]])
    # Forcing both rows would take 0.5 + 0.5; one good pair and two left alone is cheaper.
    assert assign(cost, 0.8) == ([(0, 0)], [1], [1])
    assert assign(np.zeros((0, 3)), 0.8) == ([], [], [0, 1, 2])


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"high_thresh": 1.5}, "high_thresh must be in [0, 1]"),
        ({"keypoint_thresh": -0.1}, "keypoint_thresh must be in [0, 1]"),
        ({"low_thresh": 0.6, "high_thresh": 0.5}, "must not exceed high_thresh"),
        ({"track_buffer": -1}, "track_buffer"),
        ({"frame_rate": 0.0}, "frame_rate must be positive"),
        ({"coast_frames": 0}, "coast_frames"),
        ({"smooth": True, "min_cutoff": 0.0}, "min_cutoff > 0"),
    ],
)
def test_bad_parameters_stop_setup_with_a_clear_error(params, message):
    with pytest.raises(NodeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        tracker(**params)
