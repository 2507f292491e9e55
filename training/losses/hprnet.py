"""HPRNet's training loss: CenterNet focal loss on the heatmaps, L1 on everything regressed.

The terms and their weights are those of HPRNet's landmark trainer (itself CenterNet's
multi-pose loss with the face and hand levels added):

============== ============================== ====================== ==========
head           target rows read at            loss                   weight
============== ============================== ====================== ==========
``hm``         the whole map                  focal                  ``hm``
``hm_hp``      the whole map                  focal                  ``hm_hp``
``hps``        ``ind``, ``hps_mask``          L1                     ``keypoints``
``face_lms``   ``face_ind``, ``face_lms_mask`` L1                    ``keypoints``
``hand_lms``   ``hand_ind``, ``hand_lms_mask`` L1, per hand, summed  ``keypoints``
``reg``        ``ind``, ``reg_mask``          L1                     ``offset``
``hp_offset``  ``hp_ind``, ``hp_mask``        L1                     ``offset``
``wh``         ``ind``, ``reg_mask``          L1                     ``size`` (0.1)
``wh_face``    ``face_ind``, ``face_mask``    L1                     ``size`` (0.1)
============== ============================== ====================== ==========

Target names are those of :meth:`posegraph.codecs.HPRNetCodec.encode`. For Hourglass-104
every stack is supervised and each term is the mean over stacks (the reference adds
``loss / num_stacks`` per stack), so the loss has the same scale for one stack or two.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from posegraph.codecs.hprnet import NUM_HAND_LANDMARKS

#: CenterNet clamps the heatmap probabilities so that log() stays finite.
PROBABILITY_CLAMP = 1e-4
#: Added to the mask sums of the L1 terms so that an image with no target gives 0, not NaN.
MASK_EPSILON = 1e-4


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced pixel-wise focal loss (alpha 2, beta 4).

    With p the predicted probability and y the Gaussian target, a pixel with y = 1 costs
    ``-(1 - p)^2 log p``; any other pixel costs ``-(1 - y)^4 p^2 log(1 - p)``, so pixels near
    a peak are penalised less for firing. The sum is divided by the number of y = 1 pixels
    (not divided when there are none). As in the reference, p = sigmoid(logits) is clamped
    to [1e-4, 1 - 1e-4], which also stops the gradient of saturated pixels.

    Args:
        logits: (N, C, H, W) raw head output.
        target: (N, C, H, W) Gaussian heatmaps in [0, 1], peaks exactly 1.

    Returns:
        Scalar loss.
    """
    prob = torch.sigmoid(logits.float()).clamp(PROBABILITY_CLAMP, 1 - PROBABILITY_CLAMP)
    target = target.float()
    positive = target.eq(1).float()
    negative_weight = (1 - target).pow(4) * (1 - positive)
    positive_loss = (torch.log(prob) * (1 - prob).pow(2) * positive).sum()
    negative_loss = (torch.log(1 - prob) * prob.pow(2) * negative_weight).sum()
    num_positive = positive.sum()
    return -(positive_loss + negative_loss) / num_positive.clamp(min=1)


def gather_rows(maps: torch.Tensor, ind: torch.Tensor) -> torch.Tensor:
    """The feature vector of each target row at its cell.

    Args:
        maps: (N, C, H, W).
        ind: (N, M) int64 row-major cell indices ``y * W + x``.

    Returns:
        (N, M, C).
    """
    n, c = maps.shape[:2]
    flat = maps.reshape(n, c, -1)
    return flat.gather(2, ind.long().unsqueeze(1).expand(n, c, ind.shape[1])).transpose(1, 2)


def reg_l1_loss(
    maps: torch.Tensor, ind: torch.Tensor, mask: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """CenterNet's masked L1 loss, read at ``ind`` (RegL1Loss and RegWeightedL1Loss).

    The absolute error is summed over the masked entries and divided by the number of them
    (+1e-4): with a row mask (N, M) every channel of a row counts; with an entry mask
    (N, M, C) each coordinate does.

    Args:
        maps: (N, C, H, W) head output.
        ind: (N, M) cell of each target row.
        mask: (N, M) or (N, M, C), nonzero where the target is valid.
        target: (N, M, C).

    Returns:
        Scalar loss.
    """
    prediction = gather_rows(maps, ind).float()
    mask = mask.float()
    if mask.dim() == 2:
        mask = mask.unsqueeze(2).expand_as(prediction)
    error = (prediction - target.float()).abs() * mask
    return error.sum() / (mask.sum() + MASK_EPSILON)


def stack_targets(
    targets: Sequence[Mapping[str, np.ndarray]], device: torch.device | str | None = None
) -> dict[str, torch.Tensor]:
    """Batch the per-image targets of ``HPRNetCodec.encode`` into tensors.

    Every array gains a leading batch axis N; index arrays stay int64, maps and masks
    become float32.
    """
    batch: dict[str, torch.Tensor] = {}
    for name in targets[0]:
        stacked = torch.from_numpy(np.stack([t[name] for t in targets]))
        batch[name] = (stacked if stacked.dtype == torch.int64 else stacked.float()).to(device)
    return batch


class HPRNetLoss(nn.Module):
    """The weighted sum of HPRNet's loss terms (see the module docstring).

    Args:
        hm: weight of the person-centre focal loss.
        hm_hp: weight of the joint heatmap focal loss.
        keypoints: weight of the regressed points (``hps``, ``face_lms``, ``hand_lms``).
        offset: weight of the sub-pixel offsets (``reg``, ``hp_offset``).
        size: weight of the box sizes (``wh``, ``wh_face``).
    """

    def __init__(
        self,
        hm: float = 1.0,
        hm_hp: float = 1.0,
        keypoints: float = 1.0,
        offset: float = 1.0,
        size: float = 0.1,
    ) -> None:
        super().__init__()
        self.weights = {
            "hm": hm,
            "hm_hp": hm_hp,
            "hps": keypoints,
            "face_lms": keypoints,
            "hand_lms": keypoints,
            "reg": offset,
            "hp_offset": offset,
            "wh": size,
            "wh_face": size,
        }

    def forward(
        self,
        outputs: Sequence[Mapping[str, torch.Tensor]] | Mapping[str, torch.Tensor],
        targets: Mapping[str, torch.Tensor],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of a batch.

        Args:
            outputs: the model's training output, one dict of raw ``(N, C, H/4, W/4)`` maps
                per stack (a single dict is taken as one stack).
            targets: :func:`stack_targets` of the codec's targets, on the maps' device.

        Returns:
            The weighted total (scalar), and each term unweighted and averaged over stacks,
            keyed by head name (detached).
        """
        stacks = [outputs] if isinstance(outputs, Mapping) else list(outputs)
        parts: dict[str, torch.Tensor] = {}
        for output in stacks:
            for head, value in self._terms(output, targets).items():
                parts[head] = parts.get(head, 0) + value / len(stacks)
        total = sum(self.weights[head] * value for head, value in parts.items())
        return total, {head: value.detach() for head, value in parts.items()}

    @staticmethod
    def _terms(
        output: Mapping[str, torch.Tensor], t: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        m = t["ind"].shape[1]
        # Left hands are rows 0..M-1 of hand_ind and channels 0:42 of hand_lms, right hands
        # the rest; each hand is normalised by its own count, as in the reference.
        left, right = slice(0, 2 * NUM_HAND_LANDMARKS), slice(2 * NUM_HAND_LANDMARKS, None)
        hands = output["hand_lms"]
        hand_lms = reg_l1_loss(
            hands[:, left],
            t["hand_ind"][:, :m],
            t["hand_lms_mask"][..., left],
            t["hand_lms"][..., left],
        ) + reg_l1_loss(
            hands[:, right],
            t["hand_ind"][:, m:],
            t["hand_lms_mask"][..., right],
            t["hand_lms"][..., right],
        )
        return {
            "hm": focal_loss(output["hm"], t["hm"]),
            "hm_hp": focal_loss(output["hm_hp"], t["hm_hp"]),
            "hps": reg_l1_loss(output["hps"], t["ind"], t["hps_mask"], t["hps"]),
            "face_lms": reg_l1_loss(
                output["face_lms"], t["face_ind"], t["face_lms_mask"], t["face_lms"]
            ),
            "hand_lms": hand_lms,
            "reg": reg_l1_loss(output["reg"], t["ind"], t["reg_mask"], t["reg"]),
            "hp_offset": reg_l1_loss(
                output["hp_offset"], t["hp_ind"], t["hp_mask"], t["hp_offset"]
            ),
            "wh": reg_l1_loss(output["wh"], t["ind"], t["reg_mask"], t["wh"]),
            "wh_face": reg_l1_loss(output["wh_face"], t["face_ind"], t["face_mask"], t["wh_face"]),
        }
