"""Whole-image datasets for the bottom-up (HPRNet) and one-stage (ER-Pose) models.

An item is one image with all its people: the image is warped by the paper's random affine
(:class:`training.transforms.bottomup.RandomAffine`; optionally a YOLO mosaic of four images
for ER-Pose) onto the square training input, and its people are encoded by the model's codec
(``HPRNetCodec.encode`` or ``ERPoseCodec.encode``), the object that also decodes. Without
augmentation the image is letterboxed, as in evaluation.

Images come from a COCO-format file (:class:`CocoImages`: COCO keypoints, or COCO-WholeBody
with its face and hand boxes and valid flags) or are rendered on the fly
(:class:`SyntheticImages`). Each item follows from the seed, the epoch, the index and the
pass alone (:mod:`training.datasets.draws`), as the top-down datasets do, so a resumed run sees
the same batches.

Collate with :func:`collate_hprnet` (targets stacked into tensors, as ``HPRNetLoss`` reads
them) or :func:`collate_erpose` (a list of per-image targets, as ``ERPoseLoss`` reads them).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from posegraph.codecs.erpose import ERPoseCodec
from posegraph.codecs.hprnet import HPRNetCodec
from training.datasets.coco import (
    annotation_keypoints,
    clean_box,
    guess_skeleton,
    read_image,
    read_json,
)
from training.datasets.draws import Draw, as_draw, draw_rng
from training.losses.hprnet import stack_targets
from training.synth import SceneConfig, SyntheticPeople
from training.transforms.bottomup import BottomUpSample, Mosaic, RandomAffine, letterbox

logger = logging.getLogger(__name__)

#: COCO-WholeBody's part box fields and their valid flags, in ``part_boxes`` order.
WHOLEBODY_PART_FIELDS = (
    ("face_box", "face_valid"),
    ("lefthand_box", "lefthand_valid"),
    ("righthand_box", "righthand_valid"),
)
#: Keypoint counts of the skeletons whole-image models train on; coco17 is the first 17 of
#: wholebody133.
_NUM_KEYPOINTS = {"coco17": 17, "wholebody133": 133}
#: People narrower or lower than this after the letterbox are dropped (pixels), as
#: ``RandomAffine`` drops them in training.
MIN_BOX_SIZE = 2.0


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """(..., 4) x, y, w, h boxes -> x1, y1, x2, y2 (float32)."""
    boxes = np.asarray(boxes, dtype=np.float32)
    return np.concatenate([boxes[..., :2], boxes[..., :2] + boxes[..., 2:]], axis=-1)


def convert_keypoints(keypoints: np.ndarray, source: str, target: str) -> np.ndarray:
    """(N, K, 3) keypoints of skeleton ``source`` in skeleton ``target``'s order.

    wholebody133 starts with the 17 COCO keypoints, so coco17 -> wholebody133 pads with
    unlabelled points and wholebody133 -> coco17 keeps the first 17.
    """
    if source == target:
        return keypoints
    if {source, target} != set(_NUM_KEYPOINTS):
        raise ValueError(
            f"whole-image data in skeleton {source!r} cannot train a {target!r} model; "
            f"use data in {sorted(_NUM_KEYPOINTS)}"
        )
    k = _NUM_KEYPOINTS[target]
    converted = np.zeros((keypoints.shape[0], k, 3), dtype=np.float32)
    shared = min(k, keypoints.shape[1])
    converted[:, :shared] = keypoints[:, :shared]
    return converted


class ImageSource(Protocol):
    """Whole images with their people, by index."""

    skeleton: str

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> BottomUpSample: ...


@dataclass
class ImageRecord:
    """The people of one image of a COCO-format file.

    Attributes:
        path: the image file.
        image_id: the image's id in the file.
        keypoints: (N, K, 3) float32 x, y pixels and flag (0 unlabelled, 1 labelled).
        boxes: (N, 4) float32 x1, y1, x2, y2, clipped to the image.
        part_boxes: (N, 3, 4) float32 face, left-hand, right-hand boxes x1, y1, x2, y2
            (COCO-WholeBody), or None.
        part_valid: (N, 3) bool part flags, or None.
    """

    path: Path
    image_id: int
    keypoints: np.ndarray
    boxes: np.ndarray
    part_boxes: np.ndarray | None
    part_valid: np.ndarray | None


@dataclass
class CocoImages:
    """The images of a COCO-format keypoint file (COCO keypoints or COCO-WholeBody).

    Crowd annotations and boxes that clipping leaves empty are dropped, as the top-down
    loader does; people without labelled keypoints are kept (HPRNet still learns their
    centre; the ER-Pose loss skips them). For COCO-WholeBody the part boxes and valid flags
    of the file are used.

    Args:
        annotations: the json file.
        images: folder ``file_name`` is relative to; default: the json's folder.
        with_people_only: keep only images with at least one person (training, as CenterNet
            does); False keeps every image (evaluation).
    """

    annotations: Path
    images: Path | None = None
    with_people_only: bool = True
    records: list[ImageRecord] = field(init=False)
    skeleton: str = field(init=False)

    def __post_init__(self) -> None:
        self.annotations = Path(self.annotations)
        doc = read_json(self.annotations, "annotation file")
        self.images = Path(self.images) if self.images else self.annotations.parent
        self.skeleton = guess_skeleton(doc)
        by_image: dict[int, list[dict[str, Any]]] = {image["id"]: [] for image in doc["images"]}
        for ann in doc["annotations"]:
            if ann.get("iscrowd", 0) or ann.get("category_id", 1) != 1:
                continue
            by_image[ann["image_id"]].append(ann)
        self.records = []
        for image in doc["images"]:
            record = self._record(image, by_image[image["id"]])
            if len(record.boxes) or not self.with_people_only:
                self.records.append(record)
        logger.info("%s: %d images", self.annotations, len(self.records))

    def _record(self, image: dict[str, Any], anns: list[dict[str, Any]]) -> ImageRecord:
        keypoints, boxes, part_boxes, part_valid = [], [], [], []
        for ann in anns:
            box = clean_box(ann["bbox"], image["width"], image["height"])
            if box is None or ann.get("area", 1.0) <= 0:
                continue
            keypoints.append(annotation_keypoints(ann, self.skeleton))
            boxes.append(xywh_to_xyxy(box))
            if self.skeleton == "wholebody133":
                part_boxes.append([xywh_to_xyxy(ann[name]) for name, _ in WHOLEBODY_PART_FIELDS])
                part_valid.append([bool(ann[flag]) for _, flag in WHOLEBODY_PART_FIELDS])
        k = _NUM_KEYPOINTS.get(self.skeleton, 0)
        wholebody = self.skeleton == "wholebody133"
        return ImageRecord(
            path=self.images / image["file_name"],
            image_id=image["id"],
            keypoints=np.asarray(keypoints, np.float32).reshape(-1, k, 3),
            boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
            part_boxes=np.asarray(part_boxes, np.float32).reshape(-1, 3, 4) if wholebody else None,
            part_valid=np.asarray(part_valid, bool).reshape(-1, 3) if wholebody else None,
        )

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> BottomUpSample:
        record = self.records[index]
        return BottomUpSample(
            image=read_image(record.path),
            keypoints=record.keypoints.copy(),
            boxes=record.boxes.copy(),
            part_boxes=None if record.part_boxes is None else record.part_boxes.copy(),
            part_valid=None if record.part_valid is None else record.part_valid.copy(),
        )


@dataclass
class SyntheticImages:
    """Images of :class:`training.synth.SyntheticPeople` rendered on demand, in wholebody133
    with face and hand boxes and valid flags.

    Args:
        length: number of images.
        seed: which images.
        config: what they look like.
    """

    length: int
    seed: int = 0
    config: SceneConfig = field(default_factory=SceneConfig)
    skeleton: str = field(default="wholebody133", init=False)

    def __post_init__(self) -> None:
        self.people = SyntheticPeople(self.length, seed=self.seed, config=self.config)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> BottomUpSample:
        sample = self.people[index]
        parts = (sample.face_boxes, sample.lefthand_boxes, sample.righthand_boxes)
        valid = (sample.face_valid, sample.lefthand_valid, sample.righthand_valid)
        return BottomUpSample(
            image=sample.image,
            keypoints=sample.keypoints.astype(np.float32),
            boxes=xywh_to_xyxy(sample.boxes).reshape(-1, 4),
            part_boxes=xywh_to_xyxy(np.stack(parts, axis=1)).reshape(-1, 3, 4),
            part_valid=np.stack(valid, axis=1).reshape(-1, 3),
        )


def encode_sample(codec: HPRNetCodec | ERPoseCodec, sample: BottomUpSample) -> dict[str, Any]:
    """The codec's training targets of one transformed sample (keypoints in its skeleton)."""
    points, flags = sample.keypoints[..., :2], sample.keypoints[..., 2]
    if isinstance(codec, HPRNetCodec):
        return codec.encode(points, flags, sample.boxes, sample.part_boxes, sample.part_valid)
    return codec.encode(points, flags, sample.boxes)


@dataclass
class BottomUpDataset:
    """Transformed whole images and their codec targets (map-style dataset).

    Args:
        images: where images and people come from.
        codec: the model's codec (HPRNet or ER-Pose), which encodes the targets.
        skeleton: the model's keypoint set (``wholebody133`` for HPRNet; ``coco17`` or
            ``wholebody133`` for ER-Pose); the source's keypoints are converted to it.
        input_size: side of the square network input in pixels.
        affine: the training augmentation; None letterboxes without augmentation.
        mosaic_p: probability that an item is a mosaic of four images (with ``affine``).
        mosaic_epochs: epochs from 0 in which mosaics are drawn (YOLO's ``close_mosaic``
            turns them off for the last epochs); None: all.
        seed: with the epoch and the index, fixes every random draw.
    """

    images: ImageSource
    codec: HPRNetCodec | ERPoseCodec
    skeleton: str
    input_size: int
    affine: RandomAffine | None = None
    mosaic_p: float = 0.0
    mosaic_epochs: int | None = None
    seed: int = 0
    epoch: int = 0

    def __post_init__(self) -> None:
        if self.mosaic_p > 0 and self.affine is None:
            raise ValueError("BottomUpDataset: a mosaic needs the random affine (augmentation)")
        self.mosaic = Mosaic(self.affine) if self.affine is not None else None

    def set_epoch(self, epoch: int) -> None:
        """Draw the augmentation of ``epoch``; the images stay the same."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def _load(self, index: int) -> BottomUpSample:
        sample = self.images[index]
        sample.keypoints = convert_keypoints(sample.keypoints, self.images.skeleton, self.skeleton)
        return sample

    def sample(self, key: int | Draw) -> BottomUpSample:
        """Image ``key`` (an index, or a :class:`~training.datasets.draws.Draw`) transformed as
        its epoch (this epoch for an index) and pass draw it."""
        draw = as_draw(key, self.epoch)
        index = draw.index
        rng = draw_rng(self.seed, draw)
        if self.affine is None:
            return letterbox(self._load(index), self.input_size, MIN_BOX_SIZE)
        mosaic_on = self.mosaic_epochs is None or draw.epoch < self.mosaic_epochs
        if self.mosaic is not None and mosaic_on and rng.random() < self.mosaic_p:
            others = rng.integers(0, len(self), size=3)
            return self.mosaic([self._load(i) for i in (index, *others)], rng)
        return self.affine(self._load(index), rng)

    def __getitem__(self, key: int | Draw) -> dict[str, Any]:
        """``image`` (S, S, 3) uint8 BGR and ``targets``, the codec's dict for the image."""
        sample = self.sample(key)
        return {"image": sample.image, "targets": encode_sample(self.codec, sample)}


def _images(items: Sequence[dict[str, Any]]) -> torch.Tensor:
    return torch.from_numpy(np.stack([item["image"] for item in items]))


def collate_hprnet(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``image`` (B, S, S, 3) uint8 and ``targets``: :func:`stack_targets` of the items'."""
    return {"image": _images(items), "targets": stack_targets([item["targets"] for item in items])}


def collate_erpose(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``image`` (B, S, S, 3) uint8 and ``targets``: the B per-image dicts, as a list."""
    return {"image": _images(items), "targets": [item["targets"] for item in items]}
