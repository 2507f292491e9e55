"""Tracker metrics on synthetic clips with ground-truth ids.

A clip made by :mod:`training.synth.video` (MP4 plus per-frame COCO json with track ids)
gives the truth; the tracker is fed its boxes and keypoints with detector-like noise and
scored with motmetrics (MOTA, IDF1, ID switches). ``posegraph bench tracking`` runs it; with ``--pipeline`` it also runs the surveillance
pipeline itself (the shipped detector, HRNet and the tracker, as
``pipelines/surveillance.yaml`` sets it) on the clip and scores its tracks::

    posegraph bench tracking [--people 8] [--seconds 20] [--seeds 0 1 2] [--pipeline] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nodes.trackers import ByteTrack, box_iou
from posegraph import Detections, Frame, Poses
from posegraph.node import Context

FPS = 25.0


@dataclass
class Truth:
    """The people of one frame: ``ids`` (N,), ``boxes`` (N, 4) xyxy, ``keypoints`` (N, 17, 3)
    x, y and visibility v (2 seen, 1 hidden, 0 unlabelled)."""

    ids: np.ndarray
    boxes: np.ndarray
    keypoints: np.ndarray


def load_truth(path: Path) -> list[Truth]:
    """One Truth per frame of a training.synth video, from its COCO json."""
    doc = json.loads(path.read_text())
    frame_of = {im["id"]: im["frame_index"] for im in doc["images"]}
    people: list[list[dict]] = [[] for _ in frame_of]
    for ann in doc["annotations"]:
        people[frame_of[ann["image_id"]]].append(ann)
    out = []
    for anns in people:
        boxes = np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        out.append(
            Truth(
                np.array([a["track_id"] for a in anns], np.int64),
                boxes,
                np.array([a["keypoints"] for a in anns], np.float64).reshape(-1, 17, 3),
            )
        )
    return out


@dataclass
class Observed:
    """What a detector and a pose model would report for one frame (see ``observe``)."""

    boxes: np.ndarray
    scores: np.ndarray
    keypoints: np.ndarray
    keypoint_scores: np.ndarray


def observe(truth: Truth, rng: np.random.Generator, drop: float = 0.03) -> Observed:
    """The truth with detector-like errors.

    Box edges move by 4 % of the box size, keypoints by 2 % of its height (5 % when hidden);
    the score falls with the share of hidden keypoints, so partly occluded people make
    ByteTrack's second round; ``drop`` of the people are missed.
    """
    keep = rng.random(len(truth.ids)) >= drop
    boxes, kpts = truth.boxes[keep], truth.keypoints[keep]
    size = np.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, axis=1)
    boxes = boxes + rng.normal(0, 0.04, boxes.shape) * size
    seen = kpts[:, :, 2] == 2
    hidden = kpts[:, :, 2] == 1
    height = size[:, 3:4, None]
    spread = np.where(seen, 0.02, 0.05)[..., None] * height
    keypoints = kpts[:, :, :2] + rng.normal(0, 1, (*kpts.shape[:2], 2)) * spread
    keypoint_scores = np.where(
        seen,
        rng.uniform(0.7, 1.0, seen.shape),
        np.where(hidden, rng.uniform(0.1, 0.5, seen.shape), 0.0),
    )
    share = seen.mean(1) if len(seen) else np.zeros(0)
    scores = np.clip(0.2 + 1.1 * share + rng.normal(0, 0.08, len(share)), 0.05, 0.99)
    return Observed(boxes, scores, keypoints, keypoint_scores)


def as_frame(obs: Observed, index: int, stream: str = "cam", poses: bool = True) -> Frame:
    """A frame carrying ``obs`` as coco17 poses, or as detections only."""
    frame = Frame(stream=stream, index=index, pts=index / FPS)
    if poses:
        frame.poses = Poses(
            obs.keypoints,
            obs.keypoint_scores,
            obs.boxes,
            obs.scores,
            skeleton="coco17",
        )
    else:
        frame.detections = Detections(obs.boxes, obs.scores, np.zeros(len(obs.scores)))
    return frame


def tracker(**params) -> ByteTrack:
    node = ByteTrack(**params)
    node.setup(Context(name="track"))
    return node


def mot_scores(truths: list[Truth], hypotheses: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """MOTA, IDF1 and ID switches of (ids (M,), boxes (M, 4) xyxy) per frame, IoU >= 0.5."""
    try:
        import motmetrics
    except ImportError:
        raise SystemExit("tracking metrics need motmetrics: pip install motmetrics") from None
    acc = motmetrics.MOTAccumulator(auto_id=True)
    for truth, (ids, boxes) in zip(truths, hypotheses, strict=True):
        # motmetrics' own iou_matrix needs numpy < 2; the distance is the same 1 - IoU,
        # with pairs under IoU 0.5 never matched.
        dist = 1.0 - box_iou(truth.boxes, np.asarray(boxes, np.float64).reshape(-1, 4))
        dist[dist > 0.5] = np.nan
        acc.update(truth.ids.tolist(), np.asarray(ids).tolist(), dist)
    names = ["mota", "idf1", "num_switches", "recall", "precision"]
    summary = motmetrics.metrics.create().compute(acc, metrics=names, name="clip")
    return {k: float(summary[k].iloc[0]) for k in names}


def tracked(poses: Poses) -> tuple[np.ndarray, np.ndarray]:
    """The measured people that carry a track id: (ids, boxes)."""
    keep = (poses.track_ids >= 0) & ~poses.predicted
    return poses.track_ids[keep], poses.boxes[keep]


def run_clip(truths: list[Truth], seed: int, poses: bool, **params) -> dict:
    """Track one clip from its noisy truth; MOTA, IDF1, ID switches and ms per frame."""
    rng = np.random.default_rng(seed)
    node = tracker(**params)
    t0 = time.perf_counter()
    hyp = [
        tracked(node.process(as_frame(observe(t, rng), i, poses=poses)).poses)
        for i, t in enumerate(truths)
    ]
    ms = (time.perf_counter() - t0) / max(1, len(truths)) * 1000
    return {**mot_scores(truths, hyp), "ms_per_frame": round(ms, 3)}


def message_tracks(messages: list[dict], frames: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ids, boxes) per frame index of ``sink.jsonl`` messages: the measured people with a
    track id; a frame with no message (lost, or never sent) counts as empty."""
    by_index: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for message in messages:
        if "event" in message:
            continue
        people = [p for p in message["people"] if p["track_id"] >= 0 and not p["predicted"]]
        by_index[message["index"]] = (
            np.array([p["track_id"] for p in people], np.int64),
            np.array([p["box"] for p in people], np.float64).reshape(-1, 4),
        )
    empty = (np.zeros(0, np.int64), np.zeros((0, 4)))
    return [by_index.get(i, empty) for i in range(frames)]


def run_pipeline(clip: Path, truths: list[Truth], jsonl: Path) -> dict:
    """The surveillance pipeline (detector, crop, HRNet, tracker; unpaced) on ``clip``;
    MOTA, IDF1, ID switches, recall and precision of its tracks, and ms per frame."""
    from posegraph.benchmarks import surveillance_graph
    from posegraph.scoring import read_jsonl

    graph = surveillance_graph(clip, jsonl, flip_test=False, name="bench-tracking")
    t0 = time.perf_counter()
    graph.run(executor="inproc")
    ms = (time.perf_counter() - t0) / max(1, len(truths)) * 1000
    hypotheses = message_tracks(read_jsonl(jsonl), len(truths))
    return {**mot_scores(truths, hypotheses), "ms_per_frame": round(ms, 3)}


def main(argv: list[str]) -> int:
    """``posegraph bench tracking``: track.bytetrack on a synthetic clip, with keypoints
    (OKS cost) and with boxes only (IoU cost), for a few noise seeds."""
    from training.synth.video import VideoConfig, write_video

    parser = argparse.ArgumentParser(prog="posegraph bench tracking", description=main.__doc__)
    parser.add_argument("--people", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--size", default="640x480", help="WIDTHxHEIGHT")
    parser.add_argument("--clip-seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="noise seeds")
    parser.add_argument(
        "--pipeline",
        action="store_true",
        help="also track with the surveillance pipeline's own detector and HRNet",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    config = VideoConfig(
        people=args.people,
        seconds=args.seconds,
        fps=FPS,
        width=width,
        height=height,
        seed=args.clip_seed,
    )
    with tempfile.TemporaryDirectory(prefix="posegraph-track-") as tmp:
        clip = Path(tmp) / "clip.mp4"
        write_video(config, clip)
        truths = load_truth(clip.with_suffix(".json"))
        rows = []
        for poses in (True, False):
            for seed in args.seeds:
                scores = run_clip(truths, seed, poses)
                rows.append({"cost": "oks" if poses else "iou", "seed": seed, **scores})
        if args.pipeline:
            scores = run_pipeline(clip, truths, Path(tmp) / "tracks.jsonl")
            rows.append({"cost": "pipeline", "seed": None, **scores})
    result = {
        "frames": len(truths),
        "people": args.people,
        "seconds": args.seconds,
        "size": args.size,
        "runs": rows,
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{len(truths)} frames, {args.people} people, {args.size}")
    for r in rows:
        what = {"oks": "keypoints (OKS)", "iou": "boxes only (IoU)"}.get(r["cost"])
        source = f"{what:17s} noise seed {r['seed']}" if what else "the pipeline's detector"
        print(
            f"{source}: MOTA {r['mota']:.3f}  IDF1 {r['idf1']:.3f}  "
            f"ID switches {int(r['num_switches'])}  recall {r['recall']:.3f}  "
            f"precision {r['precision']:.3f}  ({r['ms_per_frame']:.2f} ms/frame)"
        )
    return 0
