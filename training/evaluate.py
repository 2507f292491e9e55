"""Evaluation: COCO OKS AP/AR of top-down models on person crops and of whole-image models
(HPRNet, ER-Pose) on letterboxed images, PCKh and PCK.

The test protocol of the official HRNet (``lib/core/function.py`` ``validate`` and
``lib/dataset/coco.py`` ``evaluate``): crops from ground-truth or detection boxes, the flip
test (heatmaps of the mirrored crop flipped back and averaged), keypoints mapped back to the
image through the inverse crop, each pose rescored by the mean confidence of its keypoints
above 0.2 times the box score, OKS-NMS at 0.9 per image, then pycocotools' COCOeval
(xtcocotools for COCO-WholeBody parts and CrowdPose).

Whole-image models are scored without flip test on their decoded poses (HPRNet on its 17
body keypoints) after letterboxing to their square input.

``posegraph eval MODEL --weights W --data ANNOTATIONS.json [--images DIR]
[--boxes gt|DETECTIONS.json] [--json]``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from posegraph import codecs, skeletons
from posegraph.codecs import PoseInstances
from posegraph.codecs.oks import oks
from posegraph.models import ModelSpec, build, load_checkpoint, spec_of
from training.datasets.bottomup import CocoImages
from training.datasets.coco import (
    CocoPersons,
    PersonInstance,
    TopDownDataset,
    annotation_flags,
    annotation_keypoints,
    guess_skeleton,
)
from training.datasets.mpii import load_mpii
from training.transforms.bottomup import letterbox, transform_points
from training.transforms.topdown import PIXEL_STD, TopDownAffine

logger = logging.getLogger(__name__)

#: Keypoints at or below this confidence do not count in the rescoring mean (HRNet in_vis_thre).
KEYPOINT_THRESHOLD = 0.2
#: OKS above which a lower-scored pose of the same image is dropped (HRNet oks_thre).
NMS_OKS = 0.9
#: COCO-WholeBody parts as xtcocotools names them, with the annotation fields they read.
WHOLEBODY_PARTS = {
    "body": ("keypoints", "keypoints", range(0, 17)),
    "foot": ("keypoints_foot", "foot_kpts", range(17, 23)),
    "face": ("keypoints_face", "face_kpts", range(23, 91)),
    "lefthand": ("keypoints_lefthand", "lefthand_kpts", range(91, 112)),
    "righthand": ("keypoints_righthand", "righthand_kpts", range(112, 133)),
    "wholebody": ("keypoints_wholebody", None, range(0, 133)),
}
_STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
_BOX_STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR",
    "ARs",
    "ARm",
    "ARl",
)
_CROWD_STAT_NAMES = ("AP", "AP50", "AP75", "AR", "AR50", "AR75", "AP_easy", "AP_medium", "AP_hard")


@dataclass
class PosePrediction:
    """One person's prediction in image pixels.

    Attributes:
        image_id: the image's id.
        keypoints: (K, 2) float32 pixels.
        keypoint_scores: (K,) float32.
        box_score: the detector's score (1 for ground-truth boxes).
        area: the crop's area in pixels^2 (scale * 200 squared), for OKS-NMS.
        index: the person's index in the evaluated list.
    """

    image_id: int
    keypoints: np.ndarray
    keypoint_scores: np.ndarray
    box_score: float
    area: float
    index: int


class LowPrecision(nn.Module):
    """A model run in float16 or bfloat16 (``dtype``), as the pose nodes run it with
    ``fp16`` or ``bf16``: takes and gives float32, as the evaluation expects."""

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.float16):
        super().__init__()
        self.dtype = dtype
        self.model = copy.deepcopy(model).to(dtype)

    def forward(self, x: torch.Tensor) -> Any:
        out = self.model(x.to(self.dtype))
        if isinstance(out, dict):
            return {k: v.float() for k, v in out.items()}
        return out.float()


#: ``--precision``: the names, and the dtype each runs the model in
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def to_tensor(images: np.ndarray | torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """(B, h, w, 3) uint8 BGR crops -> (B, 3, h, w) float32 normalised as ``spec`` says."""
    x = torch.as_tensor(images)
    if spec.color == "rgb":
        x = x.flip(-1)
    x = x.permute(0, 3, 1, 2).float()
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def _decode_batch(
    model: nn.Module,
    x: torch.Tensor,
    codec: Any,
    flip_indices: np.ndarray,
    flip_test: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints (B, K, 2) in crop pixels and scores (B, K) of one normalised batch."""
    output = model(x).float().cpu().numpy()
    if not flip_test:
        return codec.decode(output)
    flipped = model(x.flip(3)).float().cpu().numpy()
    if hasattr(codec, "decode_flip_test"):
        return codec.decode_flip_test(output, flipped, flip_indices)
    # Coordinate codecs: un-mirror the decoded points and average the coordinates.
    keypoints, scores = codec.decode(output)
    mirrored, mirrored_scores = codec.decode(flipped)
    mirrored = mirrored[:, flip_indices]
    mirrored[..., 0] = x.shape[3] - 1 - mirrored[..., 0]
    return (keypoints + mirrored) * 0.5, (scores + mirrored_scores[:, flip_indices]) * 0.5


@torch.no_grad()
def predict(
    model: nn.Module,
    spec: ModelSpec,
    codec: Any,
    dataset: TopDownDataset,
    skeleton: str,
    flip_test: bool = True,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
) -> list[PosePrediction]:
    """Predictions for every person of ``dataset`` (crops without augmentation)."""
    flip_indices = skeletons.get(skeleton).flip_indices
    was_training = model.training
    model.eval()
    predictions = []
    try:
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            x = to_tensor(np.stack([item["image"] for item in items]), spec).to(device)
            keypoints, scores = _decode_batch(model, x, codec, flip_indices, flip_test)
            for item, points, point_scores in zip(items, keypoints, scores, strict=True):
                index = int(item["index"])
                person = dataset.instances[index]
                image_points = dataset.transform.to_image(
                    points, item["center"], item["scale"], float(item["rotation"])
                )
                predictions.append(
                    PosePrediction(
                        person.image_id,
                        image_points,
                        point_scores.astype(np.float32),
                        float(item["score"]),
                        float(np.prod(item["scale"]) * PIXEL_STD**2),
                        index,
                    )
                )
    finally:
        model.train(was_training)
    return predictions


def rescore_and_nms(
    predictions: list[PosePrediction], sigmas: np.ndarray, nms_oks: float | None = NMS_OKS
) -> list[tuple[PosePrediction, float]]:
    """(prediction, score) pairs kept after rescoring and per-image OKS-NMS.

    score = box score x mean of the keypoint scores above 0.2 (0 if none is).
    """
    by_image: dict[int, list[tuple[PosePrediction, float]]] = defaultdict(list)
    for pred in predictions:
        confident = pred.keypoint_scores[pred.keypoint_scores > KEYPOINT_THRESHOLD]
        keypoint_score = float(confident.mean()) if len(confident) else 0.0
        by_image[pred.image_id].append((pred, keypoint_score * pred.box_score))
    kept = []
    for people in by_image.values():
        if nms_oks is None or len(people) == 1:
            kept.extend(people)
            continue
        keep = codecs.oks_nms(
            np.stack([p.keypoints for p, _ in people]),
            np.array([s for _, s in people]),
            np.array([p.area for p, _ in people]),
            sigmas,
            threshold=nms_oks,
        )
        kept.extend(people[i] for i in keep)
    return kept


def coco_results(scored: list[tuple[PosePrediction, float]], skeleton: str) -> list[dict]:
    """COCO keypoint results (one dict per pose); whole-body poses get their part fields."""
    results = []
    for pred, score in scored:
        flat = np.concatenate([pred.keypoints, pred.keypoint_scores[:, None]], axis=1)
        result = {"image_id": int(pred.image_id), "category_id": 1, "score": float(score)}
        if skeleton == "wholebody133":
            for part, (_, field, indices) in WHOLEBODY_PARTS.items():
                # xtcocotools ranks each part by its own score key; all share the pose's.
                result[f"{part}_score"] = float(score)
                if field is not None:
                    result[field] = flat[indices.start : indices.stop].reshape(-1).tolist()
        else:
            result["keypoints"] = flat.reshape(-1).tolist()
        results.append(result)
    return results


def _quiet(function: Any, *args: Any) -> Any:
    """Run a pycocotools call without its prints on stdout (they would break ``--json``)."""
    with contextlib.redirect_stdout(io.StringIO()) as out:
        value = function(*args)
    logger.debug("%s", out.getvalue())
    return value


def coco_keypoint_ap(annotations: Path, results: list[dict], skeleton: str) -> dict[str, float]:
    """COCO OKS AP and AR of ``results`` against an annotation file.

    coco17 uses pycocotools; crowdpose14 uses xtcocotools' ``keypoints_crowd`` (no areas,
    easy/medium/hard APs); wholebody133 uses xtcocotools per part, giving ``AP``, ``AP50``,
    ``AP75``, ``AR`` of the whole body and ``AP_body``, ``AP_foot``, ``AP_face``,
    ``AP_lefthand``, ``AP_righthand``, ``AP_wholebody``.

    Returns:
        metric name -> value in [0, 1]; all 0 when there are no results.
    """
    names = _CROWD_STAT_NAMES if skeleton == "crowdpose14" else _STAT_NAMES
    if not results:
        logger.warning("no predictions to evaluate against %s", annotations)
        return dict.fromkeys(names, 0.0)
    if skeleton == "coco17":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        gt = _quiet(COCO, str(annotations))
        evaluator = COCOeval(gt, _quiet(gt.loadRes, results), "keypoints")
        return _run(evaluator, names)
    from xtcocotools.coco import COCO as XCOCO
    from xtcocotools.cocoeval import COCOeval as XCOCOeval

    gt = _quiet(XCOCO, str(annotations))
    dt = _quiet(gt.loadRes, results)
    sigmas = skeletons.get(skeleton).sigmas
    if skeleton == "crowdpose14":
        evaluator = XCOCOeval(gt, dt, "keypoints_crowd", sigmas, use_area=False)
        return _run(evaluator, names)
    if skeleton != "wholebody133":
        raise ValueError(
            f"COCO AP is defined for coco17, crowdpose14, wholebody133, not {skeleton}"
        )
    metrics: dict[str, float] = {}
    for part, (iou_type, _, indices) in WHOLEBODY_PARTS.items():
        evaluator = XCOCOeval(gt, dt, iou_type, sigmas[indices.start : indices.stop], True)
        stats = _run(evaluator, names)
        metrics[f"AP_{part}"] = stats["AP"]
        if part == "wholebody":
            metrics.update(stats)
    return metrics


def _run(evaluator: Any, names: tuple[str, ...]) -> dict[str, float]:
    evaluator.params.useSegm = None
    _quiet(evaluator.evaluate)
    _quiet(evaluator.accumulate)
    _quiet(evaluator.summarize)
    return {
        name: float(max(value, 0.0)) for name, value in zip(names, evaluator.stats, strict=True)
    }


def pck(
    predictions: list[PosePrediction],
    instances: list[PersonInstance],
    normalisers: np.ndarray,
    threshold: float,
) -> float:
    """Fraction of labelled keypoints within ``threshold * normaliser`` pixels of the truth.

    Args:
        predictions: one per instance, in any order (matched by ``index``).
        instances: the ground truth.
        normalisers: (len(instances),) per-person lengths in pixels; people with 0 are skipped.
        threshold: e.g. 0.5 for PCKh@0.5.
    """
    hits = total = 0
    for pred in predictions:
        truth = instances[pred.index].keypoints
        norm = normalisers[pred.index]
        labelled = truth[:, 2] > 0
        if norm <= 0 or not labelled.any():
            continue
        distance = np.linalg.norm(pred.keypoints[labelled] - truth[labelled, :2], axis=1)
        hits += int((distance <= threshold * norm).sum())
        total += int(labelled.sum())
    return hits / total if total else 0.0


def pckh(predictions: list[PosePrediction], instances: list[PersonInstance]) -> float:
    """PCKh@0.5 (MPII): within half the head size (see :func:`training.datasets.mpii.head_size`)."""
    return pck(predictions, instances, np.array([p.head_size for p in instances]), 0.5)


def pck_bbox(
    predictions: list[PosePrediction], instances: list[PersonInstance], threshold: float = 0.05
) -> float:
    """PCK normalised by the longer side of each person's box (MMPose's bbox PCK)."""
    sizes = np.array([max(p.box[2:]) if p.box is not None else 0.0 for p in instances])
    return pck(predictions, instances, sizes, threshold)


def sides_swapped(
    predictions: list[PosePrediction],
    instances: list[PersonInstance],
    flip_indices: np.ndarray,
    sigmas: np.ndarray,
    min_oks: float = 0.5,
) -> float:
    """How often the model puts a person's left keypoints on the right and the reverse.

    Over each person's labelled keypoints that have a mirror partner (not the nose), the OKS
    of the prediction as it is and with its left and right keypoints exchanged, against the
    truth (area: the box's). A person counts as found where the better of the two reaches
    ``min_oks``, and as swapped where the exchanged one is the better.

    Returns:
        the share of found people that are swapped; 0 when none is found.
    """
    flip_indices = np.asarray(flip_indices)
    paired = flip_indices != np.arange(len(flip_indices))
    found = swapped = 0
    for pred in predictions:
        person = instances[pred.index]
        counted = (person.keypoints[:, 2] > 0) & paired
        if person.box is None or counted.sum() < 2:
            continue
        truth = person.keypoints[None, :, :2]
        area = np.array([person.box[2] * person.box[3]])
        as_is, exchanged = (
            oks(points[None], truth, area, sigmas, counted[None])[0, 0]
            for points in (pred.keypoints, pred.keypoints[flip_indices])
        )
        if max(as_is, exchanged) < min_oks:
            continue
        found += 1
        swapped += int(exchanged > as_is)
    return swapped / found if found else 0.0


def keypoint_ap(
    predictions: list[PosePrediction], annotations: Path, skeleton_name: str
) -> dict[str, float]:
    """COCO AP of top-down predictions: rescored, OKS-NMS per image, then COCOeval."""
    scored = rescore_and_nms(predictions, skeletons.get(skeleton_name).sigmas)
    return coco_keypoint_ap(annotations, coco_results(scored, skeleton_name), skeleton_name)


def keypoint_groups(skeleton: skeletons.Skeleton) -> dict[str, list[int]]:
    """Each mirror pair as one group named without its side (``ankle``), each mid-line
    keypoint alone (``nose``), in keypoint order."""
    groups: dict[str, list[int]] = {}
    partner = skeleton.flip_indices
    for k, name in enumerate(skeleton.keypoint_names):
        if partner[k] < k:
            continue
        if partner[k] == k:
            groups[name] = [k]
            continue
        other = skeleton.keypoint_names[partner[k]]
        side_free = [n.removeprefix("left_").removeprefix("right_") for n in (name, other)]
        label = side_free[0] if side_free[0] == side_free[1] else f"{name}/{other}"
        groups[label] = [k, int(partner[k])]
    return groups


def mirrored_share(
    predictions: list[PosePrediction],
    instances: Sequence[PersonInstance | None],
    pair: tuple[int, int],
    min_separation: float = 0.05,
) -> float:
    """How often a predicted keypoint of ``pair`` lies nearer its mirror partner's truth than
    its own: about 0.5 where a model has learnt one map for both (a collapsed pair), the
    share of swapped sides where it tells them apart.

    Counted over the people whose two keypoints are labelled and at least ``min_separation``
    times the longer side of their box apart, each keypoint of the pair once; a prediction
    whose ``instances`` entry is None (of no one) is not counted.
    """
    nearer = total = 0
    for pred in predictions:
        person = instances[pred.index]
        if person is None or person.box is None:
            continue
        truth = person.keypoints
        if not (truth[list(pair), 2] > 0).all():
            continue
        own, other = truth[pair[0], :2], truth[pair[1], :2]
        if np.linalg.norm(own - other) < min_separation * max(person.box[2:]):
            continue
        for k, (mine, theirs) in zip(pair, ((own, other), (other, own)), strict=True):
            point = pred.keypoints[k]
            nearer += int(np.linalg.norm(point - theirs) < np.linalg.norm(point - mine))
            total += 1
    return nearer / total if total else 0.0


def error_analysis(
    predictions: list[PosePrediction],
    instances: Sequence[PersonInstance | None],
    annotations: Path,
    skeleton_name: str,
    ap: Callable[[list[PosePrediction]], float] | None = None,
) -> dict[str, dict[str, float]]:
    """Where a model loses AP, by keypoint group (:func:`keypoint_groups`).

    ``instances[pred.index]`` is the person a prediction is of (None: of no one, left as it
    is). ``exact_AP``: the AP of the same protocol (``ap``; default the top-down one of
    :func:`keypoint_ap`) with that group's predicted keypoints moved onto their labelled
    truth, so ``exact_AP - AP`` is what the group's errors cost. ``mirrored`` (pairs only):
    :func:`mirrored_share`. Then, where the file tells them apart, ``visible`` and
    ``occluded``: every keypoint labelled visible (flag 2), or labelled but hidden (flag 1),
    exact, whatever its group: what the model loses on what it can see and on what it must
    infer. The last entry, ``all``, has every keypoint of every prediction of someone exact
    (what is left below 1 is people missed, predictions of no one and their order by score)
    and ``found``, the share of the file's labelled people some prediction is of.
    """

    def top_down_ap(chosen: list[PosePrediction]) -> float:
        return keypoint_ap(chosen, annotations, skeleton_name)["AP"]

    score = ap or top_down_ap
    skeleton = skeletons.get(skeleton_name)
    groups = keypoint_groups(skeleton)
    every = list(range(skeleton.num_keypoints))
    # (name, keypoint indices, the flags as written that count); visible and occluded only
    # where the file says which labelled points are hidden
    selections = [(group, indices, (1, 2)) for group, indices in groups.items()]
    if any(person is not None and person.flags is not None for person in instances):
        selections += [("visible", every, (2,)), ("occluded", every, (1,))]
    selections.append(("all", every, (1, 2)))
    analysis: dict[str, dict[str, float]] = {}
    for group, indices, flags in selections:
        exact = []
        for pred in predictions:
            person = instances[pred.index]
            points = pred.keypoints.copy()
            if person is not None:
                written = person.flags if person.flags is not None else 2 * person.keypoints[:, 2]
                chosen = [k for k in indices if written[k] in flags]
                points[chosen] = person.keypoints[chosen, :2]
            exact.append(replace(pred, keypoints=points))
        entry = {"exact_AP": score(exact)}
        if group in groups and len(indices) == 2:
            entry["mirrored"] = mirrored_share(predictions, instances, (indices[0], indices[1]))
        analysis[group] = entry
    found = {
        id(person)
        for pred in predictions
        if (person := instances[pred.index]) is not None and person.keypoints[:, 2].any()
    }
    analysis["all"]["found"] = len(found) / max(_labelled_people(annotations), 1)
    return analysis


def _labelled_people(annotations: Path) -> int:
    """The people of a COCO-format file that the keypoint AP counts: not crowds, with at
    least one labelled keypoint."""
    doc = json.loads(Path(annotations).read_text())
    return sum(
        1
        for ann in doc["annotations"]
        if not ann.get("iscrowd", 0) and ann.get("num_keypoints", 0) > 0
    )


def match_people(
    predictions: list[PosePrediction],
    annotations: Path,
    skeleton_name: str,
    min_oks: float = 0.1,
) -> list[PersonInstance | None]:
    """The labelled person each whole-image prediction is of, by ``prediction.index``.

    Per image, in order of falling score, a prediction takes the person not yet taken whom
    it has the highest OKS with (COCO's ``area`` as the scale; people not crowds, with at
    least one labelled keypoint), if that is at least ``min_oks``; below it, the prediction
    is of no one (None): Ronchi and Perona's background false positive.
    """
    doc = json.loads(Path(annotations).read_text())
    sigmas = skeletons.get(skeleton_name).sigmas
    people: dict[int, list[tuple[PersonInstance, float]]] = defaultdict(list)
    files = {image["id"]: image["file_name"] for image in doc["images"]}
    for ann in doc["annotations"]:
        if ann.get("iscrowd", 0) or ann.get("num_keypoints", 0) <= 0:
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        person = PersonInstance(
            image_path=Path(annotations).parent / files[ann["image_id"]],
            image_id=ann["image_id"],
            keypoints=annotation_keypoints(ann, skeleton_name),
            center=np.array([x + w / 2, y + h / 2], np.float32),
            scale=np.array([w, h], np.float32) / PIXEL_STD,
            box=np.array([x, y, w, h], np.float32),
            flags=annotation_flags(ann, skeleton_name),
        )
        people[ann["image_id"]].append((person, float(ann["area"])))
    matched: list[PersonInstance | None] = [None] * (
        max((p.index for p in predictions), default=-1) + 1
    )
    by_image: dict[int, list[PosePrediction]] = defaultdict(list)
    for pred in predictions:
        by_image[pred.image_id].append(pred)
    for image_id, preds in by_image.items():
        candidates = people.get(image_id, [])
        if not candidates:
            continue
        similarity = oks(
            np.stack([p.keypoints for p in preds]),
            np.stack([person.keypoints[:, :2] for person, _ in candidates]),
            np.array([area for _, area in candidates]),
            sigmas,
            visible=np.stack([person.keypoints[:, 2] for person, _ in candidates]),
        )
        taken = np.zeros(len(candidates), bool)
        for row in sorted(range(len(preds)), key=lambda r: -preds[r].box_score):
            free = np.where(taken, -1.0, similarity[row])
            best = int(free.argmax())
            if free[best] >= min_oks:
                taken[best] = True
                matched[preds[row].index] = candidates[best][0]
    return matched


def evaluate_coco(
    model: nn.Module,
    spec: ModelSpec,
    persons: CocoPersons,
    flip_test: bool = True,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    analyze: bool = False,
) -> dict[str, Any]:
    """The whole top-down protocol on a COCO-format file: predict, rescore, NMS, COCOeval.

    With ground-truth boxes it also gives ``PCK`` (bbox-normalised, 0.05) per person and
    ``swapped``, the share of people found (OKS >= 0.5 on either side) whose left and right
    keypoints the model exchanged (:func:`sides_swapped`); with ``analyze``, ``analysis``:
    :func:`error_analysis`.
    """
    codec = codecs.build(spec.codec, **spec.codec_kwargs)
    skeleton = skeletons.get(persons.skeleton)
    transform = TopDownAffine(spec.input_size, skeleton.flip_indices)
    dataset = TopDownDataset(persons.instances, transform)
    predictions = predict(
        model, spec, codec, dataset, persons.skeleton, flip_test, batch_size, device
    )
    metrics: dict[str, Any] = keypoint_ap(predictions, persons.annotations, persons.skeleton)
    if persons.detections is None:
        metrics["PCK"] = pck_bbox(predictions, persons.instances)
        metrics["swapped"] = sides_swapped(
            predictions, persons.instances, skeleton.flip_indices, skeleton.sigmas
        )
        if analyze:
            metrics["analysis"] = error_analysis(
                predictions, persons.instances, persons.annotations, persons.skeleton
            )
    return metrics


def evaluate_mpii(
    model: nn.Module,
    spec: ModelSpec,
    instances: list[PersonInstance],
    flip_test: bool = True,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """PCKh@0.5 and bbox PCK on MPII people."""
    codec = codecs.build(spec.codec, **spec.codec_kwargs)
    transform = TopDownAffine(spec.input_size, skeletons.get("mpii16").flip_indices)
    dataset = TopDownDataset(instances, transform)
    predictions = predict(model, spec, codec, dataset, "mpii16", flip_test, batch_size, device)
    return {"PCKh": pckh(predictions, instances)}


#: Paradigms that train and evaluate on whole images (HPRNet, ER-Pose).
WHOLE_IMAGE_PARADIGMS = ("bottomup", "onestage")
#: Decoding thresholds in validation: low, so that COCO AP sees the whole ranking (the
#: Ultralytics validator decodes at 0.001; CenterNet keeps the top 100 centres).
VALIDATION_CODEC_KWARGS = {
    "hprnet": {"center_threshold": 0.001},
    "erpose": {"score_threshold": 0.001},
}


def image_predictions(
    poses: PoseInstances, matrix: np.ndarray, image_id: int, k: int, first_index: int
) -> list[tuple[PosePrediction, float]]:
    """Decoded poses of one letterboxed image, mapped back to the image's pixels.

    Args:
        poses: the codec's output, in network-input pixels.
        matrix: (2, 3) affine from image pixels to network-input pixels (the letterbox's).
        image_id: the image's id in the annotation file.
        k: keep the first K keypoints (17: the body of a whole-body pose).
        first_index: ``index`` of the first prediction.

    Returns:
        (prediction, instance score) per pose, as :func:`training.evaluate.coco_results`
        takes them.
    """
    back = cv2.invertAffineTransform(matrix)
    predictions = []
    for n in range(len(poses)):
        x1, y1, x2, y2 = image_box(poses.boxes[n], back)
        score = float(poses.scores[n])
        prediction = PosePrediction(
            image_id,
            transform_points(poses.keypoints[n, :k], back).astype(np.float32),
            poses.keypoint_scores[n, :k],
            score,
            float((x2 - x1) * (y2 - y1)),
            first_index + n,
        )
        predictions.append((prediction, score))
    return predictions


def image_box(box: np.ndarray, back: np.ndarray) -> np.ndarray:
    """A box (4,) xyxy in network-input pixels, in image pixels (``back``: input -> image)."""
    return transform_points(np.asarray(box, np.float64).reshape(2, 2), back).ravel()


def coco_box_ap(annotations: Path, results: list[dict]) -> dict[str, float]:
    """COCO box AP of person boxes (pycocotools ``bbox``): ``box_AP``, ``box_AP50``,
    ``box_AR`` (100 boxes per image)."""
    if not results:
        return {"box_AP": 0.0, "box_AP50": 0.0, "box_AR": 0.0}
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = _quiet(COCO, str(annotations))
    evaluator = COCOeval(gt, _quiet(gt.loadRes, results), "bbox")
    stats = _run(evaluator, _BOX_STAT_NAMES)
    return {"box_AP": stats["AP"], "box_AP50": stats["AP50"], "box_AR": stats["AR"]}


@torch.no_grad()
def evaluate_whole_images(
    model: nn.Module,
    spec: ModelSpec,
    images: CocoImages,
    skeleton: str,
    size: int,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    analyze: bool = False,
) -> dict[str, Any]:
    """COCO OKS AP of a whole-image model (HPRNet, ER-Pose) on a COCO-format file.

    Each image is letterboxed to ``size`` (a square), decoded by the model's codec at low
    thresholds, and mapped back to the image's pixels. No flip test. ER-Pose is scored on
    ``skeleton``. HPRNet is scored per part by xtcocotools on a COCO-WholeBody file
    (``AP_body``, ``AP_foot``, ``AP_face``, ``AP_lefthand``, ``AP_righthand``; ``AP`` is the
    whole body's, as in :func:`coco_keypoint_ap`), and on its 17 body keypoints by
    pycocotools on a body-only file. The person boxes, as ``detect.synthetic`` uses them,
    get COCO box AP too (``box_AP``, ``box_AP50``, ``box_AR``). With ``analyze`` (a body
    skeleton), ``analysis``: :func:`error_analysis` of the poses matched to the people by
    :func:`match_people`.
    """
    kwargs = dict(spec.codec_kwargs)
    if spec.codec == "erpose":
        kwargs["skeleton"] = skeleton
    kwargs.update(VALIDATION_CODEC_KWARGS.get(spec.codec, {}))
    codec = codecs.build(spec.codec, **kwargs)
    scored_skeleton = skeleton
    if spec.paradigm == "bottomup":
        scored_skeleton = "wholebody133" if images.skeleton == "wholebody133" else "coco17"
    k = skeletons.get(scored_skeleton).num_keypoints
    was_training = model.training
    model.eval()
    scored: list[tuple[PosePrediction, float]] = []
    boxes: list[dict] = []
    try:
        for start in range(0, len(images), batch_size):
            indices = range(start, min(start + batch_size, len(images)))
            boxed = [letterbox(images[i], size) for i in indices]
            x = to_tensor(np.stack([b.image for b in boxed]), spec).to(device)
            outputs = model(x)
            for row, (index, sample) in enumerate(zip(indices, boxed, strict=True)):
                if isinstance(outputs, dict):
                    output: Any = {h: m[row].float().cpu().numpy() for h, m in outputs.items()}
                else:
                    output = outputs[row].float().cpu().numpy()
                image_id = images.records[index].image_id
                poses = codec.decode(output)
                scored += image_predictions(poses, sample.matrix, image_id, k, len(scored))
                back = cv2.invertAffineTransform(sample.matrix)
                for box, score in zip(poses.boxes, poses.scores, strict=True):
                    x1, y1, x2, y2 = image_box(box, back)
                    xywh = [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]
                    boxes.append(
                        {
                            "image_id": image_id,
                            "category_id": 1,
                            "bbox": xywh,
                            "score": float(score),
                        }
                    )
    finally:
        model.train(was_training)
    results = coco_results(scored, scored_skeleton)
    metrics: dict[str, Any] = coco_keypoint_ap(images.annotations, results, scored_skeleton)
    metrics |= coco_box_ap(images.annotations, boxes)
    if analyze:

        def whole_image_ap(chosen: list[PosePrediction]) -> float:
            rescored = coco_results([(p, p.box_score) for p in chosen], scored_skeleton)
            return coco_keypoint_ap(images.annotations, rescored, scored_skeleton)["AP"]

        predictions = [p for p, _ in scored]
        people = match_people(predictions, images.annotations, scored_skeleton)
        metrics["analysis"] = error_analysis(
            predictions, people, images.annotations, scored_skeleton, whole_image_ap
        )
    return metrics


def _parse_overrides(pairs: list[str]) -> dict[str, Any]:
    import yaml

    overrides = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep:
            raise ValueError(f"--set {pair!r}: expected key=value, e.g. input_size=[96,128]")
        overrides[key] = yaml.safe_load(text)
    return overrides


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="posegraph eval", description=__doc__.split("\n")[0])
    parser.add_argument("model", help="zoo name, e.g. hrnet_w32")
    parser.add_argument("--weights", type=Path, required=True, help=".safetensors or .pth")
    parser.add_argument("--data", type=Path, required=True, help="COCO-format json or MPII list")
    parser.add_argument("--images", type=Path, help="image folder (default: next to --data)")
    parser.add_argument("--boxes", default="gt", help="gt, or a COCO detection results json")
    parser.add_argument("--score-threshold", type=float, default=0.0, help="detection boxes")
    parser.add_argument("--skeleton", help="coco17, wholebody133, crowdpose14 (default: guess)")
    parser.add_argument("--set", action="append", default=[], help="model setting key=value")
    parser.add_argument("--no-flip", action="store_true", help="skip the flip test")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--precision",
        default="fp32",
        help="fp32, fp16, bf16 or several, comma-separated (fp32,bf16): each one's metrics, "
        "and with fp32 and one other the other's change against it; both: fp32,fp16",
    )
    parser.add_argument(
        "--analyze",
        action="store_true",
        help="the AP with each keypoint group exact, how often a left or right point lands "
        "nearer its mirror partner, and the AP with every found person exact (top-down: "
        "with ground-truth boxes)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _analysis_table(analysis: dict[str, dict[str, float]], ap: float, precision: str) -> Any:
    from rich.table import Table

    table = Table(title=f"where the AP is lost ({precision}; AP {ap:.4f})")
    for column in ("keypoints", "AP with them exact", "gain", "mirrored"):
        table.add_column(column, justify="left" if column == "keypoints" else "right")
    for group, entry in analysis.items():
        mirrored = f"{entry['mirrored']:.3f}" if "mirrored" in entry else "-"
        gain = f"{entry['exact_AP'] - ap:+.4f}"
        if group == "all":
            group = f"all, of the {entry['found']:.1%} of people found"
        elif group in ("visible", "occluded"):
            group = f"every {group} one (flag {2 if group == 'visible' else 1})"
        table.add_row(group, f"{entry['exact_AP']:.4f}", gain, mirrored)
    return table


def _precisions(text: str) -> list[str]:
    """``--precision``: the names in order, without repeats."""
    names = ["fp32", "fp16"] if text == "both" else [p.strip() for p in text.split(",")]
    unknown = [p for p in names if p not in PRECISIONS]
    if unknown or not names:
        raise ValueError(
            f"--precision {text}: {', '.join(unknown) or 'none'} unknown; give fp32, fp16, "
            "bf16 or several of them, comma-separated (both: fp32,fp16)"
        )
    return list(dict.fromkeys(names))


def main(argv: list[str]) -> int:
    """``posegraph eval``; returns the exit status."""
    from rich.console import Console
    from rich.table import Table

    args = build_parser().parse_args(argv)
    console = Console(stderr=args.json)
    try:
        try:
            doc = json.loads(args.data.read_text())
        except OSError as exc:
            raise ValueError(
                f"--data {args.data}: {exc.strerror.lower()}; give a COCO-format json or an "
                "MPII list"
            ) from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"--data {args.data}: not JSON ({exc})") from None
        if not isinstance(doc, list | dict):
            raise ValueError(f"--data {args.data}: neither a COCO-format json nor an MPII list")
        is_mpii = isinstance(doc, list)
        skeleton = "mpii16" if is_mpii else args.skeleton or guess_skeleton(doc)
        overrides = _parse_overrides(args.set)
        precisions = _precisions(args.precision)
        whole_image = spec_of(args.model).paradigm in WHOLE_IMAGE_PARADIGMS
        if args.analyze and (is_mpii or (not whole_image and args.boxes != "gt")):
            raise ValueError(
                "--analyze needs a COCO-format file and, for a top-down model, the "
                "ground-truth boxes (--boxes gt)"
            )
        if args.analyze and skeleton not in ("coco17", "crowdpose14"):
            raise ValueError(
                f"--analyze: {skeleton} has too many keypoint groups to score one by one; "
                "use a coco17 or crowdpose14 file"
            )
        if not whole_image:
            overrides.setdefault("num_keypoints", skeletons.get(skeleton).num_keypoints)
        model, spec = build(args.model, **overrides)
        load_checkpoint(model, args.weights)
        model.to(args.device)
        if whole_image:
            if is_mpii:
                raise ValueError(f"{args.model} evaluates on COCO-format files, not MPII lists")
            width, height = spec.input_size
            if width != height:
                raise ValueError(f"{args.model}: whole-image evaluation needs a square input")
            images = CocoImages(args.data, args.images, with_people_only=False)
        elif is_mpii:
            instances = load_mpii(args.data, args.images)
        else:
            persons = CocoPersons(
                args.data,
                args.images,
                skeleton,
                spec.input_size,
                detections=None if args.boxes == "gt" else Path(args.boxes),
                score_threshold=args.score_threshold,
            )
    except (OSError, ValueError) as error:
        Console(stderr=True).print(f"error: {error}", markup=False, highlight=False)
        return 2
    flip = not args.no_flip

    def evaluate(net: nn.Module) -> dict[str, float]:
        if whole_image:
            return evaluate_whole_images(
                net, spec, images, skeleton, width, args.batch_size, args.device, args.analyze
            )
        if is_mpii:
            return evaluate_mpii(net, spec, instances, flip, args.batch_size, args.device)
        return evaluate_coco(
            net, spec, persons, flip, args.batch_size, args.device, analyze=args.analyze
        )

    headline = "PCKh" if is_mpii else "AP"
    runs: dict[str, dict[str, float]] = {}
    for name in precisions:
        runs[name] = evaluate(model if name == "fp32" else LowPrecision(model, PRECISIONS[name]))
    if len(runs) == 1:
        metrics: dict[str, Any] = runs[precisions[0]]
    else:
        # the accuracy check of lower precision: one object with every run, and the change
        metrics = dict(runs)
        others = [p for p in precisions if p != "fp32"]
        if "fp32" in runs and len(others) == 1:
            metrics[f"{headline}_change"] = runs[others[0]][headline] - runs["fp32"][headline]
    if args.json:
        Console(highlight=False, soft_wrap=True).print(json.dumps(metrics), markup=False)
        return 0
    analyses = {p: r.pop("analysis") for p, r in runs.items() if "analysis" in r}
    table = Table(title=f"{args.model} on {args.data.name}")
    table.add_column("metric")
    for precision in runs:
        table.add_column(precision, justify="right")
    for name in next(iter(runs.values())):
        table.add_row(name, *(f"{r[name]:.4f}" for r in runs.values()))
    console.print(table)
    for precision, analysis in analyses.items():
        console.print(_analysis_table(analysis, runs[precision]["AP"], precision))
    summary = ", ".join(f"{headline} {r[headline]:.4f} in {p}" for p, r in runs.items())
    console.print(f"{args.model}: {summary} on {args.data}")
    return 0
