"""ER-Pose's training loss: keypoint-driven dynamic assignment and the smooth OKS loss.

The ER-Pose paper (Li et al., 2026) names three parts: a keypoint-driven dynamic sample
assignment aligned with the OKS evaluation metric, dense supervision in training with
NMS-free inference, and a smooth OKS-based loss that stabilises the regression. There is no
official code and the paper gives no formulas beyond these, so each choice is written here;
where the paper is silent we take YOLOv8's task-aligned assigner (TAL) and YOLOv10's
consistent one-to-one matching, with OKS in place of the box IoU.

Assignment (per image, on detached predictions)
    - Candidates: anchors whose centre lies inside the person's keypoint extent (the box of
      their annotated keypoints), on every level. The extent is widened to at least half a
      stride around its centre on each level, so the cell holding the centre is always a
      candidate and small people get anchors too. A person with no annotated keypoint is
      not assigned (nothing to regress).
    - Metric: ``t = score^alpha * OKS^beta`` (TAL's alpha 0.5, beta 6), with the anchor's
      predicted score and the OKS of its decoded pose to the person
      (:func:`posegraph.codecs.oks`, the codec's areas and the skeleton's sigmas). It is
      computed in logs so that the tiny values of an untrained model keep their order.
    - One-to-many: each person's ``topk`` candidates by metric; an anchor claimed by two
      people goes to the one with the higher OKS (TAL's rule with OKS for IoU).
    - One-to-one: one anchor per person, by the Hungarian algorithm
      (:func:`scipy.optimize.linear_sum_assignment`) on ``-log t`` over the candidates, so
      two people never share an anchor. The same metric ranks both sets (YOLOv10's
      consistent matching), so the one-to-one anchor is the best of the one-to-many set
      unless two people compete for it.

Supervision. ER-Pose has a single head, so the two sets supervise different outputs:
    - Score: with ``one_to_one=True`` (the default) only the one-to-one anchors get a
      positive target, so each person scores high at exactly one anchor and decoding needs
      no NMS; with ``one_to_one=False`` all one-to-many anchors do (decode with OKS-NMS).
      The target is OKS-aligned, TAL's normalised metric ``t / max t * max OKS`` over the
      person's positives (for a one-to-one anchor: its OKS). Loss: BCE with logits over all
      anchors, divided by the sum of the targets (at least 1), as YOLOv8.
    - Keypoints and visibility: every one-to-many anchor and every one-to-one anchor
      regresses its person's pose (the dense supervision), each pair weighted equally. The
      keypoint loss is :func:`smooth_oks_loss`; the visibility loss is BCE with logits
      against the annotation flag (1 annotated, 0 not), over all K keypoints.
    - Weights: YOLOv8-pose's gains without the box terms, score 0.5, keypoints 12,
      visibility 1. The loss is a per-batch mean (YOLOv8's extra factor of the batch size
      is left to the learning rate).

Smooth OKS. The per-keypoint COCO similarity is ``exp(-u^2 / 2)`` with the normalised
distance ``u = d / (2 sigma s)`` (``s^2`` the person's area). ``1 - exp(-u^2/2)`` as a loss
(YOLO-Pose's) has a gradient that vanishes for far-off keypoints and peaks at u = 1. We keep
``1 - exp(-u^2/2)`` up to u = 1 and continue it by its tangent beyond: the loss is convex,
C1, equals 1 - OKS for good predictions, and its gradient in u rises to ``exp(-1/2)`` and
stays there, so far keypoints keep being pulled in without spikes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from posegraph.codecs import anchor_grid, oks, raw_to_keypoints
from posegraph.models.erpose import STRIDES

#: Where the smooth OKS loss turns linear (the inflection point of 1 - exp(-u^2/2)).
SMOOTH_KNEE = 1.0
#: Floor on OKS before its log, so that the metric of an anchor far from a person is finite.
OKS_FLOOR = 1e-12
#: Cost of an anchor that is not a candidate, in the one-to-one matching.
NOT_A_CANDIDATE = 1e9


def smooth_oks_loss(
    predicted: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor,
    areas: torch.Tensor,
    sigmas: torch.Tensor,
) -> torch.Tensor:
    """Smooth 1 - OKS of each pose (see the module docstring).

    Args:
        predicted: (P, K, 2) keypoints in pixels.
        target: (P, K, 2) ground-truth keypoints in pixels.
        weights: (P, K), 1 where the keypoint is annotated; only these count.
        areas: (P,) OKS scale s^2 in pixels^2.
        sigmas: (K,) the skeleton's OKS sigmas.

    Returns:
        (P,) mean loss over each pose's annotated keypoints (0 for a pose with none).
    """
    d2 = ((predicted.float() - target.float()) ** 2).sum(-1)
    scale2 = (2 * sigmas.float()) ** 2 * (areas.float()[:, None] + np.spacing(1))
    # sqrt of a tiny positive number: the gradient at d = 0 stays finite.
    u = torch.sqrt(d2 / scale2 + 1e-12)
    knee = SMOOTH_KNEE
    value_at_knee = 1 - math.exp(-(knee**2) / 2)
    slope_at_knee = knee * math.exp(-(knee**2) / 2)
    per_keypoint = torch.where(
        u <= knee,
        1 - torch.exp(-(u**2) / 2),
        value_at_knee + slope_at_knee * (u - knee),
    )
    weights = weights.float()
    return (per_keypoint * weights).sum(-1) / weights.sum(-1).clamp(min=1)


@dataclass
class Assignment:
    """Positives of one image.

    Attributes:
        anchors: (P,) int64 anchor index of each positive pair (regression).
        people: (P,) int64 person index of each pair.
        score_target: (A,) float32 OKS-aligned score target of every anchor.
        one_to_one: (N,) int64 the one-to-one anchor of each person, -1 if unassigned.
    """

    anchors: np.ndarray
    people: np.ndarray
    score_target: np.ndarray
    one_to_one: np.ndarray


class ERPoseLoss(nn.Module):
    """Score, smooth-OKS keypoint and visibility losses with dynamic assignment.

    Args:
        sigmas: (K,) OKS sigmas of the skeleton (``posegraph.skeletons.get(name).sigmas``).
        strides: the model's output strides, in output order.
        topk: one-to-many candidates per person (1 gives pure one-to-one supervision).
        alpha: exponent of the score in the metric.
        beta: exponent of the OKS in the metric.
        one_to_one: score targets at the one-to-one anchors only (NMS-free decoding).
        score_weight, keypoint_weight, visibility_weight: weights of the three terms.
    """

    def __init__(
        self,
        sigmas: np.ndarray,
        strides: tuple[int, ...] = STRIDES,
        topk: int = 10,
        alpha: float = 0.5,
        beta: float = 6.0,
        one_to_one: bool = True,
        score_weight: float = 0.5,
        keypoint_weight: float = 12.0,
        visibility_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.sigmas = np.asarray(sigmas, dtype=np.float32)
        self.strides = tuple(int(s) for s in strides)
        self.topk = int(topk)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.one_to_one = bool(one_to_one)
        self.weights = {
            "score": score_weight,
            "keypoints": keypoint_weight,
            "visibility": visibility_weight,
        }
        self._anchor_cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def anchors_for(self, input_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(anchors (A, 2), strides (A,)) of :func:`posegraph.codecs.anchor_grid`, cached."""
        if input_size not in self._anchor_cache:
            self._anchor_cache[input_size] = anchor_grid(input_size, self.strides)
        return self._anchor_cache[input_size]

    def forward(
        self, outputs: Sequence[torch.Tensor], targets: Sequence[Mapping[str, np.ndarray]]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of a batch.

        Args:
            outputs: the model's training output, raw maps ``[(N, 1 + 3K, H/s, W/s)]`` per
                stride.
            targets: N dicts from ``ERPoseCodec.encode`` (``keypoints`` (n, K, 2),
                ``keypoint_weights`` (n, K), ``areas`` (n,)), numpy arrays or tensors.

        Returns:
            The weighted total (scalar), and the unweighted ``score``, ``keypoints`` and
            ``visibility`` terms (detached).
        """
        n = outputs[0].shape[0]
        k = self.sigmas.shape[0]
        height, width = outputs[0].shape[2:]
        input_size = (width * self.strides[0], height * self.strides[0])
        anchors_np, strides_np = self.anchors_for(input_size)
        # (N, A, 1 + 3K), anchors in anchor_grid order: level by level, row-major.
        flat = torch.cat([level.flatten(2).transpose(1, 2) for level in outputs], dim=1).float()
        if flat.shape[1:] != (anchors_np.shape[0], 1 + 3 * k) or len(targets) != n:
            raise ValueError(
                f"ERPoseLoss: outputs give {tuple(flat.shape)} (N, A, 1 + 3K) for {len(targets)} "
                f"targets; expected ({n}, {anchors_np.shape[0]}, {1 + 3 * k}) for input "
                f"{input_size}, strides {self.strides} and {k} sigmas, one target per image"
            )
        device = flat.device
        anchors = torch.from_numpy(anchors_np).to(device)
        strides = torch.from_numpy(strides_np).to(device)
        rows = flat[..., 1:].reshape(n, -1, k, 3)
        decoded = raw_to_keypoints(rows, anchors, strides)  # (N, A, K, 2) pixels

        score_targets, pairs = [], []
        for b, target in enumerate(targets):
            target = {name: _numpy(value) for name, value in target.items()}
            assignment = self.assign(
                flat[b, :, 0].detach().sigmoid().cpu().numpy(),
                decoded[b].detach().cpu().numpy(),
                target,
                anchors_np,
                strides_np,
            )
            score_targets.append(torch.from_numpy(assignment.score_target))
            pairs.append((b, assignment, target))
        score_target = torch.stack(score_targets).to(device)
        score_loss = F.binary_cross_entropy_with_logits(
            flat[..., 0], score_target, reduction="sum"
        ) / score_target.sum().clamp(min=1)

        batch_index = torch.cat([torch.full((len(a.anchors),), b) for b, a, _ in pairs]).long()
        anchor_index = torch.cat([torch.from_numpy(a.anchors) for _, a, _ in pairs]).long()
        if anchor_index.numel():
            gathered = _concat_targets(pairs, device)
            predicted = decoded[batch_index.to(device), anchor_index.to(device)]
            keypoint_loss = smooth_oks_loss(
                predicted,
                gathered["keypoints"],
                gathered["keypoint_weights"],
                gathered["areas"],
                torch.from_numpy(self.sigmas).to(device),
            ).mean()
            visibility_logits = rows[batch_index.to(device), anchor_index.to(device), :, 2]
            visibility_loss = F.binary_cross_entropy_with_logits(
                visibility_logits, gathered["keypoint_weights"]
            )
        else:
            keypoint_loss = visibility_loss = flat.new_zeros(())
        parts = {"score": score_loss, "keypoints": keypoint_loss, "visibility": visibility_loss}
        total = sum(self.weights[name] * value for name, value in parts.items())
        return total, {name: value.detach() for name, value in parts.items()}

    def assign(
        self,
        scores: np.ndarray,
        keypoints: np.ndarray,
        target: Mapping[str, np.ndarray],
        anchors: np.ndarray,
        strides: np.ndarray,
    ) -> Assignment:
        """Dynamic assignment of one image (see the module docstring).

        Args:
            scores: (A,) predicted person probabilities.
            keypoints: (A, K, 2) decoded predicted keypoints in pixels.
            target: ``ERPoseCodec.encode`` output for the image (numpy).
            anchors: (A, 2) anchor points in cells, and ``strides`` (A,) their strides.

        Returns:
            The :class:`Assignment`.
        """
        num_anchors = scores.shape[0]
        gt = np.asarray(target["keypoints"], dtype=np.float32)
        annotated = np.asarray(target["keypoint_weights"]) > 0
        areas = np.asarray(target["areas"], dtype=np.float32)
        people = gt.shape[0]
        empty = Assignment(
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
            np.zeros(num_anchors, np.float32),
            np.full(people, -1, np.int64),
        )
        if people == 0:
            return empty

        candidates = self.candidates(gt, annotated, anchors, strides)  # (N, A)
        used = np.nonzero(candidates.any(axis=0))[0]
        if used.size == 0:
            return empty
        similarity = np.zeros((people, num_anchors), np.float32)
        similarity[:, used] = oks(keypoints[used], gt, areas, self.sigmas, annotated).T
        log_metric = np.full((people, num_anchors), -np.inf)
        log_metric[:, used] = self.alpha * np.log(
            np.clip(scores[used], OKS_FLOOR, None)
        ) + self.beta * np.log(np.clip(similarity[:, used], OKS_FLOOR, None))
        log_metric[~candidates] = -np.inf

        # One-to-many: each person's top-k candidates; shared anchors go to the best OKS.
        many = np.zeros((people, num_anchors), bool)
        for person in range(people):
            count = min(self.topk, int(candidates[person].sum()))
            if count:
                best = np.argpartition(-log_metric[person], count - 1)[:count]
                many[person, best] = True
        shared = many.sum(axis=0) > 1
        if shared.any():
            owner = np.argmax(np.where(many, similarity, -1.0), axis=0)
            many[:, shared] = False
            many[owner[shared], np.nonzero(shared)[0]] = True

        # One-to-one: Hungarian matching on the same metric, over candidate anchors only.
        cost = np.where(np.isfinite(log_metric[:, used]), -log_metric[:, used], NOT_A_CANDIDATE)
        person_rows, columns = linear_sum_assignment(cost)
        matched = cost[person_rows, columns] < NOT_A_CANDIDATE
        one_to_one = np.full(people, -1, np.int64)
        one_to_one[person_rows[matched]] = used[columns[matched]]

        scored = np.zeros((people, num_anchors), bool)
        if self.one_to_one:
            assigned = one_to_one >= 0
            scored[np.nonzero(assigned)[0], one_to_one[assigned]] = True
        else:
            scored = many
        score_target = _aligned_scores(scored, log_metric, similarity)

        pairs = many.copy()
        assigned = one_to_one >= 0
        pairs[np.nonzero(assigned)[0], one_to_one[assigned]] = True
        pair_people, pair_anchors = np.nonzero(pairs)
        return Assignment(
            pair_anchors.astype(np.int64), pair_people.astype(np.int64), score_target, one_to_one
        )

    @staticmethod
    def candidates(
        gt: np.ndarray, annotated: np.ndarray, anchors: np.ndarray, strides: np.ndarray
    ) -> np.ndarray:
        """Which anchors may take which person.

        Args:
            gt: (N, K, 2) keypoints in pixels.
            annotated: (N, K) bool.
            anchors: (A, 2) anchor points in cells, and ``strides`` (A,) their strides.

        Returns:
            (N, A) bool: the anchor's centre lies in the person's keypoint extent, widened to
            at least half the anchor's stride around its centre; False for people with no
            annotated keypoint.
        """
        has_keypoints = annotated.any(axis=1)
        # People without keypoints get an empty extent at 0; they are masked out below.
        counted = annotated[..., None] & has_keypoints[:, None, None]
        low = np.where(counted, gt, np.inf).min(axis=1, initial=np.inf)  # (N, 2)
        high = np.where(counted, gt, -np.inf).max(axis=1, initial=-np.inf)
        low, high = np.where(np.isfinite(low), low, 0), np.where(np.isfinite(high), high, 0)
        center = (low + high) / 2
        half = np.maximum((high - low)[:, None, :] / 2, strides[None, :, None] / 2)  # (N, A, 2)
        points = anchors * strides[:, None]  # anchor centres in pixels
        inside = (np.abs(points[None] - center[:, None]) <= half).all(axis=-1)
        return inside & has_keypoints[:, None]


def _aligned_scores(
    positive: np.ndarray, log_metric: np.ndarray, similarity: np.ndarray
) -> np.ndarray:
    """(A,) TAL's normalised metric: t / max t * max OKS over each person's positives."""
    masked = np.where(positive, log_metric, -np.inf)
    best = masked.max(axis=1, keepdims=True)
    ratio = np.where(positive, np.exp(masked - np.where(np.isfinite(best), best, 0)), 0.0)
    best_oks = np.where(positive, similarity, 0.0).max(axis=1, keepdims=True)
    return (ratio * best_oks).max(axis=0).astype(np.float32)


def _numpy(value: np.ndarray | torch.Tensor) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _concat_targets(
    pairs: Sequence[tuple[int, Assignment, Mapping[str, np.ndarray]]], device: torch.device
) -> dict[str, torch.Tensor]:
    """Each positive pair's person targets, concatenated over the batch in pair order."""
    gathered = {}
    for name in ("keypoints", "keypoint_weights", "areas"):
        rows = [np.asarray(t[name], np.float32)[a.people] for _, a, t in pairs]
        gathered[name] = torch.from_numpy(np.concatenate(rows)).to(device)
    return gathered
