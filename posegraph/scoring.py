"""Score a pipeline's published poses against a clip's ground truth.

The ground truth is a COCO keypoints file whose images carry ``frame_index`` (what
``posegraph synth video`` writes next to each clip); the poses are the JSON lines
``sink.jsonl`` writes. Per frame, predictions and ground-truth people are matched one to
one by OKS (Hungarian); a missed person counts OKS 0. Reported:

- ``mean_oks``: the mean OKS over all ground-truth people (misses included);
- ``recall_50``: the share of ground-truth people matched at OKS >= 0.5;
- ``extra``: predicted people matched to nobody (at OKS >= 0.5);
- ``AP``, ``AP50``, ``AR``: COCO keypoint AP over the clip's frames (pycocotools).

Only the 17 body keypoints are scored; a whole-body pose's first 17 are its body.

Where no ground truth exists (real video), :func:`compare` scores the poses against another
pipeline's output on the same video, a reference such as a real detector's
(``pipelines/real-detector.yaml``): people are matched one to one by box IoU, and the
reference's boxes and confident keypoints are read as the truth.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from posegraph import skeletons
from posegraph.codecs.oks import oks

BODY = 17


class Truth:
    """A clip's ground truth, by frame index."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read ground truth {self.path}: {exc}") from None
        if not doc.get("images") or "frame_index" not in doc["images"][0]:
            raise ValueError(
                f"{self.path}: no frame_index on its images; give the .json that "
                "`posegraph synth video` wrote next to the clip"
            )
        self.doc = doc
        self.image_of = {im["frame_index"]: im["id"] for im in doc["images"]}
        people: dict[int, list[dict]] = {}
        for a in doc["annotations"]:
            if a.get("num_keypoints", 0) > 0 and not a.get("iscrowd", 0):
                people.setdefault(a["image_id"], []).append(a)
        self.people = people

    def frame(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """((N, 17, 3) keypoints, (N,) areas) of frame ``index``; empty if none."""
        found = self.people.get(self.image_of.get(index, -1), [])
        if not found:
            return np.zeros((0, BODY, 3), np.float32), np.zeros(0, np.float32)
        kpts = np.array([a["keypoints"] for a in found], np.float32).reshape(-1, BODY, 3)
        areas = np.array([a["area"] for a in found], np.float32)
        return kpts, areas


def _predicted(message: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    people = [p for p in message.get("people", []) if p.get("keypoints")]
    if not people:
        return np.zeros((0, BODY, 3), np.float32), np.zeros(0, np.float32)
    kpts = np.array([np.asarray(p["keypoints"], np.float32)[:BODY] for p in people])
    scores = np.array([p.get("score", 1.0) for p in people], np.float32)
    return kpts, scores


def score(messages: list[dict[str, Any]], truth: Truth, stream: str | None = None) -> dict:
    """Score the frame messages of one stream (all when ``stream`` is None)."""
    sigmas = skeletons.get("coco17").sigmas
    total, matched_oks, hits, extra, frames = 0, 0.0, 0, 0, 0
    results: list[dict[str, Any]] = []
    image_ids: list[int] = []
    for m in messages:
        if "event" in m or (stream is not None and m.get("stream") != stream):
            continue
        if m["index"] not in truth.image_of:
            continue
        frames += 1
        gt, areas = truth.frame(m["index"])
        pred, scores = _predicted(m)
        image_id = truth.image_of[m["index"]]
        image_ids.append(image_id)
        total += len(gt)
        for k, s in zip(pred, scores, strict=True):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": 1,
                    "keypoints": np.concatenate([k[:, :2], np.ones((BODY, 1))], 1)
                    .ravel()
                    .round(2)
                    .tolist(),
                    "score": float(s),
                }
            )
        if len(gt) == 0 or len(pred) == 0:
            extra += len(pred)
            continue
        sim = oks(pred[..., :2], gt[..., :2], areas, sigmas, gt[..., 2])
        rows, cols = linear_sum_assignment(-sim)
        good = sim[rows, cols]
        matched_oks += float(good.sum())
        hits += int((good >= 0.5).sum())
        extra += len(pred) - int((good >= 0.5).sum())
    if frames == 0:
        raise ValueError(
            f"no frame of {stream or 'any stream'} has ground truth in {truth.path}: is it "
            "the clip the pipeline ran on?"
        )
    out = {
        "frames": frames,
        "people": total,
        "mean_oks": matched_oks / max(total, 1),
        "recall_50": hits / max(total, 1),
        "extra": extra,
    }
    out.update(_coco_ap(truth, results, image_ids))
    return out


def _coco_ap(truth: Truth, results: list[dict], image_ids: list[int]) -> dict[str, float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not results:
        return {"AP": 0.0, "AP50": 0.0, "AR": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {
            "images": truth.doc["images"],
            "annotations": [
                {**a, "keypoints": a["keypoints"][: BODY * 3]} for a in truth.doc["annotations"]
            ],
            "categories": truth.doc["categories"],
        }
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "keypoints")
        ev.params.imgIds = sorted(set(image_ids))
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"AP": float(ev.stats[0]), "AP50": float(ev.stats[1]), "AR": float(ev.stats[5])}


#: Reference keypoints with a score below this are not counted in :func:`compare`'s OKS.
REFERENCE_KEYPOINT_THRESHOLD = 0.3
#: Segment area over box area, for the OKS scale of a reference person known by its box
#: (the factor MMPose applies to detected boxes).
BOX_AREA_FACTOR = 0.53


def _boxes(message: dict[str, Any]) -> tuple[np.ndarray, list[list]]:
    """(N, 4) xyxy person boxes of a frame message and the people's keypoint lists."""
    people = [p for p in message.get("people", []) if p.get("box")]
    boxes = np.array([p["box"][:4] for p in people], np.float64).reshape(-1, 4)
    return boxes, [p.get("keypoints") or [] for p in people]


def compare(
    messages: list[dict[str, Any]],
    reference: list[dict[str, Any]],
    stream: str | None = None,
    iou_threshold: float = 0.5,
) -> dict[str, Any]:
    """Agreement of frame messages with a reference pipeline's messages for the same video.

    Frames are paired by (stream, index); frames missing from either side are not counted.
    Per frame, people are matched one to one by box IoU (Hungarian). Reported:
    ``box_recall`` (reference people matched at IoU >= ``iou_threshold``),
    ``box_precision`` (of the poses' people, those matched), ``mean_iou`` of those matches,
    and ``keypoint_oks``, the mean OKS of the matched people's first 17 keypoints against
    the reference's, counting reference keypoints scored >= 0.3 (None without keypoints).
    """
    from nodes.trackers import box_iou

    sigmas = skeletons.get("coco17").sigmas
    frames_of = {
        (m.get("stream"), m["index"]): m
        for m in reference
        if "event" not in m and (stream is None or m.get("stream") == stream)
    }
    frames = total = found = hits = 0
    ious: list[float] = []
    similarities: list[float] = []
    for m in messages:
        if "event" in m or (stream is not None and m.get("stream") != stream):
            continue
        ref = frames_of.get((m.get("stream"), m["index"]))
        if ref is None:
            continue
        frames += 1
        truth_boxes, truth_points = _boxes(ref)
        boxes, points = _boxes(m)
        total, found = total + len(truth_boxes), found + len(boxes)
        if len(truth_boxes) == 0 or len(boxes) == 0:
            continue
        overlap = box_iou(truth_boxes, boxes)
        for i, j in zip(*linear_sum_assignment(-overlap), strict=True):
            if overlap[i, j] < iou_threshold:
                continue
            hits += 1
            ious.append(float(overlap[i, j]))
            a, b = np.asarray(truth_points[i], np.float32), np.asarray(points[j], np.float32)
            if len(a) < BODY or len(b) < BODY:
                continue
            w, h = truth_boxes[i, 2:] - truth_boxes[i, :2]
            area = np.array([max(w * h * BOX_AREA_FACTOR, 1.0)], np.float32)
            visible = (a[None, :BODY, 2] >= REFERENCE_KEYPOINT_THRESHOLD).astype(np.float32)
            if visible.any():
                sim = oks(b[None, :BODY, :2], a[None, :BODY, :2], area, sigmas, visible)
                similarities.append(float(sim[0, 0]))
    if frames == 0:
        raise ValueError(
            f"no frame of {stream or 'any stream'} is in the reference: did both pipelines "
            "run on the same video (and stream names)?"
        )
    return {
        "frames": frames,
        "reference_people": total,
        "people": found,
        "box_recall": hits / max(total, 1),
        "box_precision": hits / max(found, 1),
        "mean_iou": float(np.mean(ious)) if ious else 0.0,
        "keypoint_oks": float(np.mean(similarities)) if similarities else None,
    }


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The messages of a ``sink.jsonl`` file."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def split_runs(messages: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The runs a ``sink.jsonl`` file holds, in order: ``sink.jsonl`` appends, so a second
    run of the same pipeline adds its frames after the first's. A run begins where a frame
    of a stream comes again (the same stream and index), or where a stream starts again
    after its ``eos``."""
    runs: list[list[dict[str, Any]]] = [[]]
    seen: set[tuple[str, int]] = set()
    ended: set[str] = set()
    for m in messages:
        stream = m.get("stream")
        if "event" not in m:
            key = (stream, m["index"])
            if key in seen or stream in ended:
                runs.append([])
                seen, ended = set(), set()
            seen.add(key)
        elif m["event"] == "eos":
            ended.add(stream)
        runs[-1].append(m)
    return [r for r in runs if r]
