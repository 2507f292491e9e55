"""COCO-format person datasets for top-down models: COCO keypoints, COCO-WholeBody, CrowdPose.

One item per person box, as the official HRNet ``lib/dataset/coco.py`` does:

- ground-truth boxes: crowd annotations are skipped, people without a labelled keypoint are
  skipped, boxes are clipped to the image and empty ones dropped;
- detection boxes (a COCO results file): person boxes with a score of at least
  ``score_threshold``, with no keypoints (evaluation only).

Crowd regions stay in the annotation file that the evaluation reads (pycocotools ignores
detections that fall in them). Nothing here imports torch: the trainer wraps these in a
DataLoader.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from posegraph import skeletons
from training.datasets.draws import Draw, as_draw, draw_rng
from training.transforms.topdown import TopDownAffine, box_to_center_scale

logger = logging.getLogger(__name__)

#: COCO-WholeBody's 133 keypoints: the annotation fields in model-output order, with counts.
WHOLEBODY_FIELDS: tuple[tuple[str, int], ...] = (
    ("keypoints", 17),
    ("foot_kpts", 6),
    ("face_kpts", 68),
    ("lefthand_kpts", 21),
    ("righthand_kpts", 21),
)


@dataclass
class PersonInstance:
    """One person to crop.

    Attributes:
        image_path: the image file.
        image_id: the image's id in the annotation file.
        keypoints: (K, 3) float32 x, y pixels and flag (0 unlabelled, 1 labelled); zeros for
            detection boxes.
        center: (2,) float32 box centre in pixels.
        scale: (2,) float32 box size in units of 200 pixels, padded and fitted to the input
            aspect ratio.
        score: the box score (1 for ground truth).
        box: (4,) float32 x, y, w, h of the (clipped) box.
        head_size: MPII's normalising head size in pixels, or 0 where not used.
        flags: (K,) the annotation's flags as written (0 unlabelled, 1 labelled but hidden,
            2 visible), or None where the source has no such distinction.
    """

    image_path: Path
    image_id: int
    keypoints: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    score: float = 1.0
    box: np.ndarray | None = None
    head_size: float = 0.0
    flags: np.ndarray | None = None


def read_json(path: Path, what: str) -> Any:
    """The JSON document in ``path`` (``what``: how errors name the file, e.g. "annotation
    file"); raises with the path when it is missing or not JSON."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} {path} is not JSON: {exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{what} {path} is not JSON: not text") from None


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 BGR; raises with the path when the file cannot be read."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"cannot read image {path}: missing or not an image")
    return image


def annotation_keypoints(ann: dict[str, Any], skeleton: str) -> np.ndarray:
    """(K, 3) float32 keypoints of one annotation; flags above 1 become 1 (labelled).

    For ``wholebody133`` the body, foot, face and hand fields are concatenated; a missing
    field (a person without hand annotations) gives unlabelled points.
    """
    keypoints = _written_keypoints(ann, skeleton)
    keypoints[:, 2] = np.minimum(keypoints[:, 2], 1.0)
    return keypoints


def annotation_flags(ann: dict[str, Any], skeleton: str) -> np.ndarray:
    """(K,) int8 visibility flags of one annotation as written: 0 unlabelled, 1 labelled but
    hidden, 2 visible (:func:`annotation_keypoints` keeps only labelled or not)."""
    return np.clip(_written_keypoints(ann, skeleton)[:, 2], 0, 2).astype(np.int8)


def _written_keypoints(ann: dict[str, Any], skeleton: str) -> np.ndarray:
    """(K, 3) float32 keypoints of one annotation, flags as written."""
    if skeleton == "wholebody133":
        parts = []
        for field, count in WHOLEBODY_FIELDS:
            values = ann.get(field) or [0.0] * (count * 3)
            parts.append(np.asarray(values, dtype=np.float32).reshape(count, 3))
        keypoints = np.concatenate(parts)
    else:
        keypoints = np.asarray(ann["keypoints"], dtype=np.float32).reshape(-1, 3)
    expected = skeletons.get(skeleton).num_keypoints
    if keypoints.shape[0] != expected:
        raise ValueError(
            f"annotation {ann.get('id')}: {keypoints.shape[0]} keypoints, skeleton {skeleton!r} "
            f"has {expected}; pick the skeleton that matches the file"
        )
    return keypoints


def clean_box(box: list[float], width: int, height: int) -> np.ndarray | None:
    """Clip an x, y, w, h box to the image as the reference does; None if nothing is left."""
    x, y, w, h = box
    x1, y1 = max(0.0, x), max(0.0, y)
    x2 = min(width - 1.0, x1 + max(0.0, w - 1.0))
    y2 = min(height - 1.0, y1 + max(0.0, h - 1.0))
    if x2 < x1 or y2 < y1:
        return None
    return np.array([x1, y1, x2 - x1, y2 - y1], dtype=np.float32)


def guess_skeleton(doc: dict[str, Any]) -> str:
    """The skeleton of a COCO-format file: wholebody133 when it has hand fields, else by K."""
    annotations = doc.get("annotations", [])
    if any("lefthand_kpts" in ann for ann in annotations[:50]):
        return "wholebody133"
    names = (doc.get("categories") or [{}])[0].get("keypoints", [])
    by_count = {17: "coco17", 14: "crowdpose14"}
    if len(names) not in by_count:
        raise ValueError(
            f"cannot tell the skeleton of a file with {len(names)} keypoint names; "
            "pass the skeleton (coco17, wholebody133, crowdpose14) explicitly"
        )
    return by_count[len(names)]


@dataclass
class CocoPersons:
    """The people of a COCO-format keypoint file, as :class:`PersonInstance` items.

    Args:
        annotations: the json file.
        images: folder the ``file_name`` of each image is relative to; default: the json's
            folder.
        skeleton: ``coco17``, ``wholebody133`` or ``crowdpose14``; None guesses from the file.
        input_size: (w, h) of the model, for the box aspect ratio.
        detections: a COCO results file of person boxes to use instead of the ground truth.
        score_threshold: detection boxes below this score are dropped.
    """

    annotations: Path
    images: Path | None = None
    skeleton: str | None = None
    input_size: tuple[int, int] = (192, 256)
    detections: Path | None = None
    score_threshold: float = 0.0

    def __post_init__(self) -> None:
        self.annotations = Path(self.annotations)
        self.doc = read_json(self.annotations, "annotation file")
        self.images = Path(self.images) if self.images else self.annotations.parent
        self.skeleton = self.skeleton or guess_skeleton(self.doc)
        self.image_info = {image["id"]: image for image in self.doc["images"]}
        if self.detections is None:
            self.instances = self._from_ground_truth()
        else:
            self.instances = self._from_detections(Path(self.detections))
        logger.info(
            "%s: %d people (%s boxes)",
            self.annotations,
            len(self.instances),
            "ground-truth" if self.detections is None else "detection",
        )

    @property
    def aspect_ratio(self) -> float:
        return self.input_size[0] / self.input_size[1]

    def _image_path(self, image_id: int) -> Path:
        return self.images / self.image_info[image_id]["file_name"]

    def _from_ground_truth(self) -> list[PersonInstance]:
        instances = []
        for ann in self.doc["annotations"]:
            if ann.get("iscrowd", 0) or ann.get("category_id", 1) != 1:
                continue
            image = self.image_info[ann["image_id"]]
            box = clean_box(ann["bbox"], image["width"], image["height"])
            # The reference also drops annotations whose area is 0 (degenerate masks).
            if box is None or ann.get("area", 1.0) <= 0:
                continue
            keypoints = annotation_keypoints(ann, self.skeleton)
            if not keypoints[:, 2].any():
                continue
            center, scale = box_to_center_scale(box, self.aspect_ratio)
            instances.append(
                PersonInstance(
                    self._image_path(ann["image_id"]),
                    ann["image_id"],
                    keypoints,
                    center,
                    scale,
                    box=box,
                    flags=annotation_flags(ann, self.skeleton),
                )
            )
        if not instances:
            logger.warning("%s has no person with labelled keypoints", self.annotations)
        return instances

    def _from_detections(self, path: Path) -> list[PersonInstance]:
        results = read_json(path, "detection results file")
        if not isinstance(results, list):
            raise ValueError(f"{path}: expected a COCO results list of boxes, got a json object")
        num_keypoints = skeletons.get(self.skeleton).num_keypoints
        instances = []
        for det in results:
            if det.get("category_id", 1) != 1 or det["score"] < self.score_threshold:
                continue
            if det["image_id"] not in self.image_info:
                raise ValueError(
                    f"{path}: detection for image {det['image_id']}, which "
                    f"{self.annotations} does not list"
                )
            box = np.asarray(det["bbox"], dtype=np.float32)
            center, scale = box_to_center_scale(box, self.aspect_ratio)
            instances.append(
                PersonInstance(
                    self._image_path(det["image_id"]),
                    det["image_id"],
                    np.zeros((num_keypoints, 3), np.float32),
                    center,
                    scale,
                    score=float(det["score"]),
                    box=box,
                )
            )
        return instances


@dataclass
class TopDownDataset:
    """Person crops and codec targets, a map-style dataset (``len`` and indexing).

    Item ``i`` of epoch ``e`` is drawn with ``numpy.random.default_rng([seed, e, i])`` (pass
    ``r`` > 0 of an epoch appends ``r``: :mod:`training.datasets.draws`), so a run is
    repeatable whatever the number of workers, and a resumed run sees the same crops.

    Args:
        instances: the people.
        transform: the crop (with augmentation for training).
        encode: the codec's ``encode``; None gives crops without targets (evaluation).
        load_image: path -> (H, W, 3) uint8 BGR.
        seed: base seed of the augmentation.
    """

    instances: list[PersonInstance]
    transform: TopDownAffine
    encode: Callable[..., dict[str, np.ndarray]] | None = None
    load_image: Callable[[Path], np.ndarray] = read_image
    seed: int = 0
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the augmentation of ``epoch`` (call before each epoch's loader is made)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.instances)

    def __getitem__(self, key: int | Draw) -> dict[str, np.ndarray]:
        """A dict of ``image`` (h, w, 3) uint8 BGR, ``keypoints`` (K, 3) in crop pixels,
        ``center``, ``scale`` (2,), ``rotation``, ``score``, ``index``, and the codec targets
        (e.g. ``heatmaps`` (K, H, W) and ``keypoint_weights`` (K,)). ``key``: an index, or a
        :class:`~training.datasets.draws.Draw` that also names the epoch and pass."""
        draw = as_draw(key, self.epoch)
        index = draw.index
        person = self.instances[index]
        rng = draw_rng(self.seed, draw)
        image = self.load_image(person.image_path)
        return crop_item(self.transform, self.encode, image, person, rng, index)


def crop_item(
    transform: TopDownAffine,
    encode: Callable[..., dict[str, np.ndarray]] | None,
    image: np.ndarray,
    person: PersonInstance,
    rng: np.random.Generator,
    index: int,
) -> dict[str, np.ndarray]:
    """One training or evaluation item (see :meth:`TopDownDataset.__getitem__`)."""
    crop = transform(image, person.keypoints, person.center, person.scale, rng)
    item: dict[str, Any] = {
        "image": crop.image,
        "keypoints": crop.keypoints,
        "center": crop.center,
        "scale": crop.scale,
        "rotation": np.float32(crop.rotation),
        "score": np.float32(person.score),
        "index": np.int64(index),
    }
    if encode is not None:
        targets = encode(crop.keypoints[None, :, :2], crop.keypoints[None, :, 2])
        item.update({name: value[0] for name, value in targets.items()})
    return item
