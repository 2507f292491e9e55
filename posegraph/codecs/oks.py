"""Object Keypoint Similarity (COCO) and the greedy NMS built on it.

The one OKS in posegraph: the ER-Pose decoder, the tracker and the evaluation all use it.
"""

from __future__ import annotations

import numpy as np


def oks(
    keypoints_a: np.ndarray,
    keypoints_b: np.ndarray,
    areas: np.ndarray,
    sigmas: np.ndarray,
    visible: np.ndarray | None = None,
) -> np.ndarray:
    """Pairwise OKS between two sets of poses, as the COCO keypoint evaluation defines it.

    ``OKS = mean over counted keypoints of exp(-d^2 / (2 * area * (2 sigma)^2))``, where the
    counted keypoints are those flagged in ``visible``; a pair with none counts 0.

    Args:
        keypoints_a: (Na, K, 2) poses, e.g. detections, in pixels.
        keypoints_b: (Nb, K, 2) poses, e.g. ground truth, in the same pixels.
        areas: object scale s^2 in pixels^2 (the COCO ``area``): (Nb,) for one area per pose
            of ``b``, or (Na, Nb) for one per pair (NMS uses the mean of the two).
        sigmas: (K,) the skeleton's ``sigmas``.
        visible: which keypoints count, (Nb, K) per pose of ``b`` or (Na, Nb, K) per pair;
            values > 0 count. None counts all.

    Returns:
        (Na, Nb) float32 in [0, 1].
    """
    a = np.asarray(keypoints_a, dtype=np.float64)
    b = np.asarray(keypoints_b, dtype=np.float64)
    sigmas = np.asarray(sigmas, dtype=np.float64)
    if a.ndim != 3 or b.ndim != 3 or a.shape[1:] != b.shape[1:] or a.shape[1] != len(sigmas):
        raise ValueError(
            f"oks: keypoints {a.shape} and {b.shape} with {len(sigmas)} sigmas; expected "
            "(Na, K, 2) and (Nb, K, 2) with K sigmas from the same skeleton"
        )
    areas = np.asarray(areas, dtype=np.float64)
    if areas.ndim == 1:
        areas = areas[None, :]
    d2 = ((a[:, None] - b[None]) ** 2).sum(-1)  # (Na, Nb, K)
    variances = (2 * sigmas) ** 2
    e = d2 / variances / (areas[..., None] + np.spacing(1)) / 2
    sim = np.exp(-e)
    if visible is None:
        return sim.mean(-1).astype(np.float32)
    counted = np.broadcast_to(np.asarray(visible) > 0, sim.shape)
    n = counted.sum(-1)
    total = np.where(counted, sim, 0.0).sum(-1)
    return np.where(n > 0, total / np.maximum(n, 1), 0.0).astype(np.float32)


def oks_nms(
    keypoints: np.ndarray,
    scores: np.ndarray,
    areas: np.ndarray,
    sigmas: np.ndarray,
    threshold: float = 0.7,
    keypoint_scores: np.ndarray | None = None,
    keypoint_threshold: float = 0.2,
) -> np.ndarray:
    """Greedy non-maximum suppression of poses by OKS.

    The best-scoring pose is kept and every remaining pose with OKS above ``threshold`` to
    it is dropped, until none is left. OKS between two predictions uses the mean of their
    areas and, with ``keypoint_scores``, only keypoints confident in both.

    Args:
        keypoints: (N, K, 2) in pixels.
        scores: (N,) instance scores.
        areas: (N,) object scale s^2 per pose in pixels^2 (e.g. keypoint box area).
        sigmas: (K,) the skeleton's ``sigmas``.
        threshold: OKS above which a lower-scored pose is a duplicate.
        keypoint_scores: (N, K) optional; keypoints at or below ``keypoint_threshold`` in
            either pose are not compared.
        keypoint_threshold: see ``keypoint_scores``.

    Returns:
        (M,) int64 indices of the kept poses, best first.
    """
    order = np.argsort(-np.asarray(scores), kind="stable")
    areas = np.asarray(areas, dtype=np.float64)
    keep: list[int] = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        if not rest.size:
            break
        visible = None
        if keypoint_scores is not None:
            visible = (keypoint_scores[best] > keypoint_threshold)[None, None] & (
                keypoint_scores[rest] > keypoint_threshold
            )[None]
        sim = oks(
            keypoints[best][None],
            keypoints[rest],
            (areas[best] + areas[rest])[None] / 2,
            sigmas,
            visible,
        )[0]
        order = rest[sim <= threshold]
    return np.asarray(keep, dtype=np.int64)
