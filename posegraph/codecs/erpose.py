"""ER-Pose: dense per-anchor keypoint regression, one pose per person without NMS."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np

from posegraph import skeletons
from posegraph.codecs.common import PoseInstances, check_keypoints, sigmoid, topk
from posegraph.codecs.oks import oks_nms

#: numpy array or torch tensor: the parametrisation helpers work on both.
Array = TypeVar("Array")


def anchor_grid(
    input_size: tuple[int, int], strides: tuple[int, ...] = (8, 16, 32)
) -> tuple[np.ndarray, np.ndarray]:
    """Anchor points of every output level, in the order the model flattens them.

    Level by level (strides in the given order), row by row, left to right. A level of
    stride s has ceil(h / s) x ceil(w / s) cells (what a chain of stride-2, padding-1 convs
    gives); each anchor sits at its cell centre, ``(i + 0.5, j + 0.5)`` in that level's cells.

    Args:
        input_size: (w, h) of the network input in pixels.
        strides: input pixels per cell of each level.

    Returns:
        anchors (A, 2) float32 in cells of their own level, and strides (A,) float32.
    """
    w, h = (int(v) for v in input_size)
    points, per_anchor = [], []
    for s in strides:
        gw, gh = -(-w // s), -(-h // s)
        gx, gy = np.meshgrid(np.arange(gw, dtype=np.float32), np.arange(gh, dtype=np.float32))
        points.append(np.stack([gx.ravel(), gy.ravel()], axis=-1) + 0.5)
        per_anchor.append(np.full(gw * gh, s, dtype=np.float32))
    return np.concatenate(points), np.concatenate(per_anchor)


def raw_to_keypoints(raw: Array, anchors: Array, strides: Array) -> Array:
    """Keypoint positions from raw regression outputs: ``(2 raw + anchor - 0.5) * stride``.

    The YOLOv8-pose parametrisation: raw 0 is the top-left corner of the anchor's cell, and
    one unit of raw output is two cells, so a keypoint can reach far from its anchor without
    large activations. Uses only arithmetic and indexing, so numpy arrays and torch tensors
    (the loss) both work.

    Args:
        raw: (..., K, >=2) raw x, y (further channels, e.g. visibility, are ignored).
        anchors: (..., 2) anchor points from :func:`anchor_grid`.
        strides: (...) their strides.

    Returns:
        (..., K, 2) keypoints in input pixels.
    """
    return (raw[..., :2] * 2 + (anchors[..., None, :] - 0.5)) * strides[..., None, None]


def keypoints_to_raw(keypoints: Array, anchors: Array, strides: Array) -> Array:
    """The inverse of :func:`raw_to_keypoints`: the raw x, y that place ``keypoints`` exactly.

    Args:
        keypoints: (..., K, 2) in input pixels.
        anchors: (..., 2) anchor points.
        strides: (...) their strides.

    Returns:
        (..., K, 2) raw regression targets.
    """
    return (keypoints / strides[..., None, None] - (anchors[..., None, :] - 0.5)) / 2


def keypoint_boxes(keypoints: np.ndarray, counted: np.ndarray) -> np.ndarray:
    """Tight boxes around the counted keypoints of each pose (all of them where none counts).

    Args:
        keypoints: (N, K, 2).
        counted: (N, K) bool.

    Returns:
        (N, 4) float32 x1, y1, x2, y2.
    """
    counted = np.where(counted.any(axis=1, keepdims=True), counted, True)[..., None]
    low = np.where(counted, keypoints, np.inf).min(axis=1)
    high = np.where(counted, keypoints, -np.inf).max(axis=1)
    return np.concatenate([low, high], axis=-1).astype(np.float32)


@dataclass
class ERPoseCodec:
    """Targets and decoding for ER-Pose's dense one-stage head.

    Shapes: N people, K keypoints, A anchors over all levels (:func:`anchor_grid`). For one
    image the model gives (A, 1 + 3K), channels last, one row per anchor:
    ``[score, x_0, y_0, v_0, ..., x_{K-1}, y_{K-1}, v_{K-1}]``. With ``outputs="pixels"``
    (the model's eval-mode and exported output) the score and visibilities are
    probabilities and x, y input pixels; with ``outputs="raw"`` (the training-mode head maps,
    flattened level by level, row-major) they are logits and raw offsets, which this turns
    into pixels with :func:`raw_to_keypoints`. There is no box branch: boxes are the extent
    of the confident keypoints.

    Trained with one-to-one assignment (one anchor per person), the model predicts each
    person once, so decoding is a score threshold and a top-k; ``use_oks_nms=True`` adds
    greedy OKS-NMS (the skeleton's sigmas) for models trained with one-to-many assignment.
    The assignment itself depends on the predictions and lives in the loss; ``encode`` gives
    it the per-person targets.

    Args:
        input_size: (w, h) network input in pixels (a multiple of the largest stride).
        skeleton: keypoint set name; its K and sigmas are used.
        strides: strides of the output levels, in output order.
        outputs: ``"pixels"`` or ``"raw"``, see above.
        score_threshold: minimum instance score (probability).
        max_people: at most this many poses per image.
        use_oks_nms: suppress duplicates by OKS.
        oks_threshold: OKS above which a lower-scored pose is a duplicate.
        keypoint_threshold: keypoint score above which a keypoint shapes the box and counts
            in OKS-NMS.
    """

    input_size: tuple[int, int] = (640, 640)
    skeleton: str = "coco17"
    strides: tuple[int, ...] = (8, 16, 32)
    outputs: Literal["pixels", "raw"] = "pixels"
    score_threshold: float = 0.25
    max_people: int = 100
    use_oks_nms: bool = False
    oks_threshold: float = 0.7
    keypoint_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.outputs not in ("pixels", "raw"):
            raise ValueError(f"ERPoseCodec: outputs={self.outputs!r}; use 'pixels' or 'raw'")
        self.input_size = tuple(int(v) for v in self.input_size)
        self.strides = tuple(int(s) for s in self.strides)
        self._skeleton = skeletons.get(self.skeleton)
        self._anchors, self._anchor_strides = anchor_grid(self.input_size, self.strides)

    @property
    def num_keypoints(self) -> int:
        """K."""
        return self._skeleton.num_keypoints

    @property
    def anchors(self) -> tuple[np.ndarray, np.ndarray]:
        """(anchors (A, 2), strides (A,)) for ``input_size``, see :func:`anchor_grid`."""
        return self._anchors, self._anchor_strides

    def encode(
        self,
        keypoints: np.ndarray,
        keypoints_visible: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """Per-person targets for the loss of one image.

        Args:
            keypoints: (N, K, 2) in input pixels.
            keypoints_visible: (N, K) annotation flags; > 0 means annotated. None: all.
            boxes: (N, 4) person boxes x1, y1, x2, y2 for the OKS scale; None uses the
                extent of the annotated keypoints.

        Returns:
            ``keypoints`` (N, K, 2), ``keypoint_weights`` (N, K) (1 annotated, else 0; the
            visibility target too), ``boxes`` (N, 4) and ``areas`` (N,) in pixels^2, the
            OKS scale of each person; all float32.
        """
        keypoints, visible = check_keypoints(keypoints, keypoints_visible, "ERPoseCodec.encode")
        if keypoints.shape[1] != self.num_keypoints:
            raise ValueError(
                f"ERPoseCodec.encode: {keypoints.shape[1]} keypoints per person, but skeleton "
                f"{self.skeleton!r} has {self.num_keypoints}"
            )
        weights = (visible > 0).astype(np.float32)
        if boxes is None:
            boxes = keypoint_boxes(keypoints, weights > 0)
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        return {
            "keypoints": keypoints,
            "keypoint_weights": weights,
            "boxes": boxes,
            "areas": areas.astype(np.float32),
        }

    def decode(
        self, predictions: np.ndarray, input_size: tuple[int, int] | None = None
    ) -> PoseInstances:
        """Poses from one image's output.

        Args:
            predictions: (A, 1 + 3K) as in the class docstring (a leading batch axis of 1 is
                accepted).
            input_size: (w, h) of this image's network input when it differs from the
                codec's; only ``outputs="raw"`` needs it (for the anchors).

        Returns:
            :class:`PoseInstances`, best first; keypoint scores are visibility probabilities.
        """
        predictions = np.asarray(predictions, dtype=np.float32)
        if predictions.ndim == 3 and predictions.shape[0] == 1:
            predictions = predictions[0]
        k = self.num_keypoints
        raw = self.outputs == "raw"
        anchors, anchor_strides = self._anchors, self._anchor_strides
        if raw and input_size is not None:
            anchors, anchor_strides = anchor_grid(input_size, self.strides)
        expected = anchors.shape[0] if raw else predictions.shape[0]
        if predictions.shape != (expected, 1 + 3 * k):
            where = f", A = {expected} anchors for input_size={input_size or self.input_size}"
            raise ValueError(
                f"ERPoseCodec.decode: predictions have shape {predictions.shape}; expected "
                f"(A, {1 + 3 * k}) for one image, channels last, {k} keypoints"
                + (where if raw else "")
            )
        scores = sigmoid(predictions[:, 0]) if raw else predictions[:, 0]
        candidates = np.nonzero(scores > self.score_threshold)[0]
        # With use_oks_nms, duplicates must not crowd people out of the top-k before NMS.
        budget = candidates.size if self.use_oks_nms else self.max_people
        best, _ = topk(scores[candidates], budget)
        chosen = candidates[best]
        rows = predictions[chosen, 1:].reshape(-1, k, 3)
        if raw:
            keypoints = raw_to_keypoints(rows, anchors[chosen], anchor_strides[chosen])
            keypoint_scores = sigmoid(rows[..., 2])
        else:
            keypoints, keypoint_scores = rows[..., :2], rows[..., 2]
        boxes = keypoint_boxes(keypoints, keypoint_scores > self.keypoint_threshold)
        if self.use_oks_nms and chosen.size:
            areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            keep = oks_nms(
                keypoints,
                scores[chosen],
                areas,
                self._skeleton.sigmas,
                self.oks_threshold,
                keypoint_scores,
                self.keypoint_threshold,
            )[: self.max_people]
            chosen, keypoints, keypoint_scores, boxes = (
                chosen[keep],
                keypoints[keep],
                keypoint_scores[keep],
                boxes[keep],
            )
        return PoseInstances(
            boxes=boxes,
            scores=scores[chosen],
            keypoints=keypoints.astype(np.float32),
            keypoint_scores=keypoint_scores,
        )
