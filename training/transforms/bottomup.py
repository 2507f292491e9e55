"""Whole-image transforms for the bottom-up (HPRNet) and one-stage (ER-Pose) models.

Every geometric change is one 2x3 affine matrix applied by ``cv2.warpAffine`` to the image
and by the same arithmetic to the keypoints and boxes, so the two cannot disagree. Pixel
coordinates follow OpenCV: pixel (i, j) has its centre at x = j, y = i; a horizontal flip of
an image W wide maps x to W - 1 - x (the convention of CenterNet's flipped annotations).

- :class:`RandomAffine`: random zoom, rotation, translation and flip with left/right swap,
  onto a square output (512 for HPRNet, 640 for ER-Pose; see :meth:`RandomAffine.hprnet`
  and :meth:`RandomAffine.erpose`).
- :func:`letterbox`: the evaluation resize: keep the aspect ratio, pad to a square.
- :class:`Mosaic`: four images around a random centre, then a random affine (YOLO's mosaic,
  optional for ER-Pose).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

#: Grey of the padding and of uncovered output pixels (YOLO's 114).
PAD_VALUE = 114
#: Part box order of COCO-WholeBody (face, left hand, right hand) and its flip permutation.
WHOLEBODY_PART_FLIP = (0, 2, 1)


@dataclass
class BottomUpSample:
    """One image and its people.

    Attributes:
        image: (H, W, 3) uint8.
        keypoints: (N, K, 3) float32 x, y in pixels and the annotation flag (COCO 0/1/2);
            a flag of 0 means not annotated (or out of the image after a transform).
        boxes: (N, 4) float32 person boxes x1, y1, x2, y2 in pixels.
        part_boxes: (N, P, 4) float32 part boxes (COCO-WholeBody face, left hand, right
            hand), or None.
        part_valid: (N, P) part flags, or None.
        matrix: (2, 3) float64 affine from the original image's pixels to this image's; for
            a mosaic, from the mosaic canvas.
    """

    image: np.ndarray
    keypoints: np.ndarray
    boxes: np.ndarray
    part_boxes: np.ndarray | None = None
    part_valid: np.ndarray | None = None
    matrix: np.ndarray = dataclasses.field(default_factory=lambda: np.eye(2, 3))

    def select(self, keep: np.ndarray) -> BottomUpSample:
        """The sample with only the people where ``keep`` (N,) is true."""
        return dataclasses.replace(
            self,
            keypoints=self.keypoints[keep],
            boxes=self.boxes[keep],
            part_boxes=None if self.part_boxes is None else self.part_boxes[keep],
            part_valid=None if self.part_valid is None else self.part_valid[keep],
        )


def _clip_to_image(
    keypoints: np.ndarray, boxes: np.ndarray, image_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Unflag keypoints outside a (w, h) image and clip boxes to it (new arrays)."""
    w, h = image_size
    x, y = keypoints[..., 0], keypoints[..., 1]
    outside = (x < 0) | (x > w - 1) | (y < 0) | (y > h - 1)
    keypoints = keypoints.copy()
    keypoints[..., 2] = np.where(outside, 0, keypoints[..., 2])
    return keypoints, np.clip(boxes, 0, np.array([w - 1, h - 1, w - 1, h - 1], boxes.dtype))


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine to (..., 2) points."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def transform_boxes(boxes: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """The axis-aligned extent of (..., 4) x1, y1, x2, y2 boxes after an affine.

    All four corners are moved, so rotations and flips give the enclosing box.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
    corners = np.stack(
        [np.stack([x1, y1], -1), np.stack([x2, y1], -1), np.stack([x1, y2], -1)]
        + [np.stack([x2, y2], -1)],
        axis=-2,
    )
    moved = transform_points(corners, matrix)
    return np.concatenate([moved.min(axis=-2), moved.max(axis=-2)], axis=-1)


def warp_sample(
    sample: BottomUpSample,
    matrix: np.ndarray,
    output_size: tuple[int, int],
    flip_indices: np.ndarray | None = None,
    part_flip_indices: Sequence[int] | None = None,
    min_box_size: float = 2.0,
) -> BottomUpSample:
    """Warp an image and its people by ``matrix`` onto ``output_size``.

    Keypoints that land outside the output lose their flag; boxes are clipped to the output
    and people whose clipped box is narrower or lower than ``min_box_size`` pixels are
    dropped. When ``flip_indices`` is given the matrix mirrors the image, so keypoints are
    reordered (output k is input ``flip_indices[k]``), and parts by ``part_flip_indices``.

    Args:
        sample: the input.
        matrix: (2, 3) from input pixels to output pixels.
        output_size: (w, h) of the output.
        flip_indices: (K,) left/right permutation of the skeleton, when mirroring.
        part_flip_indices: (P,) permutation of the parts, when mirroring.
        min_box_size: smallest kept box side, in output pixels.

    Returns:
        A new :class:`BottomUpSample`; its ``matrix`` composes ``matrix`` with the input's.
    """
    w, h = output_size
    image = cv2.warpAffine(
        sample.image,
        matrix,
        (w, h),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(PAD_VALUE,) * 3,
    )
    keypoints = sample.keypoints.astype(np.float32)
    keypoints[..., :2] = transform_points(keypoints[..., :2], matrix)
    boxes = transform_boxes(sample.boxes, matrix)
    part_boxes = None if sample.part_boxes is None else transform_boxes(sample.part_boxes, matrix)
    part_valid = None if sample.part_valid is None else sample.part_valid.copy()
    if flip_indices is not None:
        keypoints = keypoints[:, np.asarray(flip_indices)]
        if part_flip_indices is not None and part_boxes is not None:
            part_boxes = part_boxes[:, list(part_flip_indices)]
            if part_valid is not None:
                part_valid = part_valid[:, list(part_flip_indices)]
    keypoints, boxes = _clip_to_image(keypoints, boxes, (w, h))
    keep = ((boxes[:, 2] - boxes[:, 0]) >= min_box_size) & (
        (boxes[:, 3] - boxes[:, 1]) >= min_box_size
    )
    full = np.vstack([sample.matrix, [0, 0, 1]])
    warped = BottomUpSample(
        image=image,
        keypoints=keypoints,
        boxes=boxes.astype(np.float32),
        part_boxes=None if part_boxes is None else part_boxes.astype(np.float32),
        part_valid=part_valid,
        matrix=matrix @ full,
    )
    return warped.select(keep)


@dataclass
class RandomAffine:
    """Random zoom, rotation, translation and horizontal flip onto a square output.

    A zoom of 1 fits the image's long side (or ``base_size``) to the output side; the zoom
    is drawn uniformly from ``scale``, the rotation uniformly from +-``rotation`` degrees
    with probability ``rotation_prob``, and the centre moves by up to ``translate`` x the
    base size on each axis. The flip mirrors with probability ``flip_prob`` and swaps
    left/right keypoints and parts.

    Args:
        output_size: side of the square output in pixels.
        flip_indices: (K,) the skeleton's ``flip_indices``.
        scale: (low, high) zoom.
        rotation: largest rotation in degrees.
        rotation_prob: probability of a rotation.
        translate: largest shift of the centre, as a fraction of the base size.
        flip_prob: probability of a horizontal flip.
        part_flip_indices: (P,) permutation of the part boxes under a flip.
        min_box_size: people whose clipped box side is smaller are dropped (pixels).
    """

    output_size: int
    flip_indices: np.ndarray
    scale: tuple[float, float] = (0.5, 1.5)
    rotation: float = 0.0
    rotation_prob: float = 1.0
    translate: float = 0.1
    flip_prob: float = 0.5
    part_flip_indices: Sequence[int] = WHOLEBODY_PART_FLIP
    min_box_size: float = 2.0

    @classmethod
    def hprnet(cls, flip_indices: np.ndarray, output_size: int = 512) -> RandomAffine:
        """HPRNet's training crop (CenterNet's): crop side 0.6 to 1.3 x the long side.

        The reference draws the crop centre uniformly at least 128 pixels inside the border,
        +-0.3 x the side of a 640-pixel COCO image; we shift by up to 0.3 x the long side.
        No rotation, flip with p 0.5.
        """
        return cls(output_size, flip_indices, scale=(1 / 1.3, 1 / 0.6), rotation=0.0, translate=0.3)

    @classmethod
    def erpose(cls, flip_indices: np.ndarray, output_size: int = 640) -> RandomAffine:
        """YOLOv8-pose's defaults: zoom 0.5 to 1.5, shift 0.1, no rotation, flip p 0.5."""
        return cls(output_size, flip_indices, scale=(0.5, 1.5), rotation=0.0, translate=0.1)

    def matrix(
        self,
        image_size: tuple[int, int],
        rng: np.random.Generator,
        base_size: float | None = None,
        center: tuple[float, float] | None = None,
    ) -> tuple[np.ndarray, bool]:
        """A random (2, 3) matrix from input pixels to output pixels, and whether it flips.

        ``base_size`` and ``center`` are the input length shown at zoom 1 and the point
        the output centres on before the shift (defaults: long side, image centre).
        """
        w, h = image_size
        base = float(base_size if base_size is not None else max(w, h))
        zoom = rng.uniform(*self.scale) * self.output_size / base
        angle = 0.0
        if self.rotation > 0 and rng.random() < self.rotation_prob:
            angle = rng.uniform(-self.rotation, self.rotation)
        middle = np.array(center if center is not None else ((w - 1) / 2, (h - 1) / 2))
        center = middle + rng.uniform(-self.translate, self.translate, size=2) * base
        matrix = cv2.getRotationMatrix2D((float(center[0]), float(center[1])), angle, zoom)
        matrix[:, 2] += (self.output_size - 1) / 2 - center
        flip = bool(rng.random() < self.flip_prob)
        if flip:
            mirror = np.array([[-1.0, 0.0, self.output_size - 1], [0.0, 1.0, 0.0], [0, 0, 1]])
            matrix = (mirror @ np.vstack([matrix, [0, 0, 1]]))[:2]
        return matrix, flip

    def __call__(
        self,
        sample: BottomUpSample,
        rng: np.random.Generator,
        base_size: float | None = None,
        center: tuple[float, float] | None = None,
    ) -> BottomUpSample:
        """A randomly warped copy of ``sample``.

        Args:
            sample: the input.
            rng: the random source (seeded by the caller for determinism).
            base_size: the input length shown at zoom 1 (default: the long side).
            center: the input point the output centres on before the random shift
                (default: the image centre).
        """
        h, w = sample.image.shape[:2]
        matrix, flip = self.matrix((w, h), rng, base_size, center)
        return warp_sample(
            sample,
            matrix,
            (self.output_size, self.output_size),
            flip_indices=self.flip_indices if flip else None,
            part_flip_indices=self.part_flip_indices if flip else None,
            min_box_size=self.min_box_size,
        )


def letterbox(sample: BottomUpSample, size: int, min_box_size: float = 0.0) -> BottomUpSample:
    """Resize to fit a ``size`` square, keeping the aspect ratio, and pad evenly.

    For evaluation: map predictions back to the original image with
    ``cv2.invertAffineTransform(result.matrix)``.
    """
    h, w = sample.image.shape[:2]
    zoom = size / max(w, h)
    offset = ((size - 1) - zoom * (w - 1)) / 2, ((size - 1) - zoom * (h - 1)) / 2
    matrix = np.array([[zoom, 0.0, offset[0]], [0.0, zoom, offset[1]]])
    return warp_sample(sample, matrix, (size, size), min_box_size=min_box_size)


@dataclass
class Mosaic:
    """YOLO's mosaic: four images tiled around a random centre, then a random affine.

    Each image is resized so that its long side is the output side S and placed in one
    quadrant of a 2S x 2S canvas, its corner at the mosaic centre (drawn in [S/2, 3S/2] on
    each axis); ``affine`` then centres on the mosaic centre, zoom 1 showing S canvas
    pixels. People and keypoints cut off by the canvas are dropped or unflagged.

    Args:
        affine: the random affine applied to the canvas (its ``output_size`` is S).
    """

    affine: RandomAffine

    def __call__(
        self, samples: Sequence[BottomUpSample], rng: np.random.Generator
    ) -> BottomUpSample:
        """One mosaic of four samples (all with part boxes, or none)."""
        if len(samples) != 4:
            raise ValueError(f"Mosaic: {len(samples)} samples given; it tiles exactly 4")
        with_parts = [s.part_boxes is not None and s.part_valid is not None for s in samples]
        if any(with_parts) and not all(with_parts):
            raise ValueError("Mosaic: some samples have part boxes and flags and some do not")
        side = self.affine.output_size
        canvas = np.full((2 * side, 2 * side, 3), PAD_VALUE, dtype=np.uint8)
        xc, yc = (int(v) for v in rng.uniform(side / 2, 3 * side / 2, size=2))
        tiles = []
        for quadrant, sample in enumerate(samples):
            h, w = sample.image.shape[:2]
            zoom = side / max(w, h)
            size = (max(1, round(w * zoom)), max(1, round(h * zoom)))
            tile = warp_sample(
                sample, np.array([[zoom, 0.0, 0.0], [0.0, zoom, 0.0]]), size, min_box_size=0.0
            )
            # Quadrants 0-3: top-left, top-right, bottom-left, bottom-right of the centre.
            x0 = xc - size[0] if quadrant in (0, 2) else xc
            y0 = yc - size[1] if quadrant in (0, 1) else yc
            xa, ya = max(x0, 0), max(y0, 0)
            xb, yb = min(x0 + size[0], 2 * side), min(y0 + size[1], 2 * side)
            canvas[ya:yb, xa:xb] = tile.image[ya - y0 : yb - y0, xa - x0 : xb - x0]
            tiles.append(_translate(tile, x0, y0))
        keypoints, boxes = _clip_to_image(
            np.concatenate([t.keypoints for t in tiles]),
            np.concatenate([t.boxes for t in tiles]),
            (2 * side, 2 * side),
        )
        merged = BottomUpSample(
            image=canvas,
            keypoints=keypoints,
            boxes=boxes,
            part_boxes=np.concatenate([t.part_boxes for t in tiles]) if all(with_parts) else None,
            part_valid=np.concatenate([t.part_valid for t in tiles]) if all(with_parts) else None,
        )
        kept = (boxes[:, 2] - boxes[:, 0] > 0) & (boxes[:, 3] - boxes[:, 1] > 0)
        # The centre lies between canvas pixels xc - 1 and xc.
        return self.affine(merged.select(kept), rng, base_size=side, center=(xc - 0.5, yc - 0.5))


def _translate(sample: BottomUpSample, dx: float, dy: float) -> BottomUpSample:
    """The people of ``sample`` moved by (dx, dy) pixels; the image is left as it is."""
    keypoints = sample.keypoints.copy()
    keypoints[..., :2] += (dx, dy)
    shift = np.array([dx, dy, dx, dy], dtype=np.float32)
    return dataclasses.replace(
        sample,
        keypoints=keypoints,
        boxes=sample.boxes + shift,
        part_boxes=None if sample.part_boxes is None else sample.part_boxes + shift,
    )
