"""HPRNet: bottom-up whole-body poses as centre-offset regression (Samet & Akbas, 2021).

CenterNet finds each person as a peak of a centre heatmap and regresses their body and foot
joints, and the centres of their face and hands, as offsets from it. HPRNet adds a second
level of this hierarchy: face and hand landmarks are offsets from their part centre, read
where that centre lies. Per-joint heatmaps give precise positions to snap the regressed
points to.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from posegraph.codecs.common import PoseInstances, draw_gaussian, peak_nms, sigmoid, topk

logger = logging.getLogger(__name__)

#: Rows of the ``hps``/``hm_hp`` points: COCO-WholeBody body 0-16 and feet 17-22, then the
#: centres of the face, left hand and right hand boxes.
NUM_JOINTS = 26
FACE_CENTER, LEFT_HAND_CENTER, RIGHT_HAND_CENTER = 23, 24, 25
NUM_FACE_LANDMARKS = 68
NUM_HAND_LANDMARKS = 21

#: Output heads and their channel counts, in the reference model's layout.
HEADS: Mapping[str, int] = {
    "hm": 1,  # person centre heatmap (logits)
    "wh": 2,  # person box width, height, read at the centre
    "reg": 2,  # sub-pixel offset of the centre
    "hps": 2 * NUM_JOINTS,  # (dx, dy) of the 26 points from the integer centre
    "hm_hp": NUM_JOINTS,  # heatmaps of the 26 points (logits)
    "hp_offset": 2,  # sub-pixel offset of each point's heatmap peak
    "wh_face": 2,  # face box width, height, read at the face centre (trained, not decoded)
    "face_lms": 2 * NUM_FACE_LANDMARKS,  # 68 x (dx, dy) from the integer face centre
    "hand_lms": 4 * NUM_HAND_LANDMARKS,  # left hand 21 x (dx, dy), then right hand 21 x
}

# Where the landmark groups sit in wholebody133, and which of the 26 points anchors each.
_PARTS = (
    # (part centre row, landmark slice in wholebody133, channels in its head)
    (FACE_CENTER, slice(23, 91), ("face_lms", slice(0, 2 * NUM_FACE_LANDMARKS))),
    (LEFT_HAND_CENTER, slice(91, 112), ("hand_lms", slice(0, 2 * NUM_HAND_LANDMARKS))),
    (RIGHT_HAND_CENTER, slice(112, 133), ("hand_lms", slice(2 * NUM_HAND_LANDMARKS, None))),
)


def gaussian_radius(height: float, width: float, min_overlap: float = 0.7) -> float:
    """CenterNet's Gaussian radius for a box: how far a corner may move and keep the IoU.

    Three cases (both corners move inwards, outwards, or one each way) each give a quadratic
    in the radius; the smallest root wins. The roots are halved with the ``/ 2`` of
    CenterNet's code (not ``/ 2a``) so that targets match the published models.
    """
    area, perimeter = height * width, height + width
    cases = (
        (1.0, perimeter, area * (1 - min_overlap) / (1 + min_overlap)),
        (4.0, 2 * perimeter, (1 - min_overlap) * area),
        (4 * min_overlap, -2 * min_overlap * perimeter, (min_overlap - 1) * area),
    )
    return min((b + math.sqrt(b * b - 4 * a * c)) / 2 for a, b, c in cases)


def _box_center(box: np.ndarray) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2], dtype=np.float32)


@dataclass
class HPRNetCodec:
    """Targets and decoding for HPRNet's heads (:data:`HEADS`).

    Shapes: N people, M = ``max_people`` target rows, K = 133 keypoints in wholebody133 order;
    maps are (C, H, W), ``output_stride`` input pixels per map pixel. Everything is measured
    in map pixels inside, and in input pixels outside. Training targets are made at
    ``input_size`` (w, h); decoding takes maps of any size (whole images of any shape).

    Encoding follows the reference: Gaussians with CenterNet's box-dependent radius at the
    integer centres, offsets relative to integer cells, and ``ind`` (row-major cell index)
    and mask arrays that say where each regression target is read (see :meth:`encode`).

    Decoding takes the ``top_k`` centre peaks (3x3 peak NMS) above ``center_threshold``.
    Each of the 26 regressed points snaps to the nearest peak of its own heatmap (above
    ``keypoint_threshold``, refined by ``hp_offset``) if that peak lies inside the person's
    box and within ``snap_distance`` x max(box w, box h); otherwise the regressed point stays.
    Landmarks are read at the cell of the person's own final part centre and added to it, so
    they stay with their person: the reference decoder reads them at the part peaks in
    heatmap-score order, which hands one person's face to another when the two orders
    differ. Keypoint scores: the snapped peak's value, else the joint heatmap at the point;
    landmarks take the score of their part centre.

    Args:
        input_size: (w, h) network input for training, in pixels (multiples of the stride).
        output_stride: input pixels per map pixel (4 for DLA-34 and Hourglass-104).
        heads: the model's head name -> channels, checked against :data:`HEADS` (the layout
            this codec reads); None skips the check.
        max_people: M, target rows per image (people beyond are not encoded).
        top_k: centre peaks considered when decoding, and peaks per joint heatmap.
        center_threshold: minimum person score.
        keypoint_threshold: minimum joint heatmap peak to snap to.
        snap_distance: snapping radius as a fraction of the larger box side.
        min_overlap: IoU kept by the Gaussian radius (CenterNet's 0.7).
        logits: ``hm`` and ``hm_hp`` are logits (raw model output) rather than probabilities.
    """

    input_size: tuple[int, int] = (512, 512)
    output_stride: int = 4
    heads: Mapping[str, int] | None = None
    max_people: int = 32
    top_k: int = 100
    center_threshold: float = 0.1
    keypoint_threshold: float = 0.1
    snap_distance: float = 0.3
    min_overlap: float = 0.7
    logits: bool = True

    def __post_init__(self) -> None:
        self.input_size = tuple(int(v) for v in self.input_size)
        if any(v % self.output_stride for v in self.input_size):
            raise ValueError(
                f"HPRNetCodec: input_size={self.input_size} is not a multiple of "
                f"output_stride={self.output_stride}"
            )
        if self.heads is not None and dict(self.heads) != dict(HEADS):
            raise ValueError(
                f"HPRNetCodec: the model's heads {dict(self.heads)} differ from the layout "
                f"this codec reads, {dict(HEADS)}"
            )

    @property
    def heatmap_size(self) -> tuple[int, int]:
        """(W, H) of the training targets."""
        return (self.input_size[0] // self.output_stride, self.input_size[1] // self.output_stride)

    def encode(
        self,
        keypoints: np.ndarray,
        keypoints_visible: np.ndarray,
        boxes: np.ndarray,
        part_boxes: np.ndarray | None = None,
        part_valid: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """Training targets for one image.

        Args:
            keypoints: (N, 133, 2) in input pixels, wholebody133 order.
            keypoints_visible: (N, 133) annotation flags; > 0 means annotated.
            boxes: (N, 4) person boxes x1, y1, x2, y2 in input pixels.
            part_boxes: (N, 3, 4) face, left-hand and right-hand boxes (COCO-WholeBody's
                ``face_box``, ``lefthand_box``, ``righthand_box``); None: the extent of each
                part's annotated landmarks.
            part_valid: (N, 3) part flags (``face_valid``...); None: a part is valid when
                any of its landmarks is annotated.

        Returns:
            Maps: ``hm`` (1, H, W), ``hm_hp`` (26, H, W). Rows read at ``ind`` (M,)
            (``reg_mask`` (M,) says which): ``wh`` (M, 2), ``reg`` (M, 2), ``hps`` (M, 52)
            with ``hps_mask`` (M, 52). Read at ``hp_ind`` (M*26,) where ``hp_mask``:
            ``hp_offset`` (M*26, 2), row ``m*26 + j``. Read at ``face_ind`` (M,) where
            ``face_mask``: ``wh_face`` (M, 2), ``face_lms`` (M, 136) with ``face_lms_mask``.
            Read at ``hand_ind`` (2M,) where ``hand_mask`` (left hands rows 0..M-1, right
            hands M..2M-1): ``hand_lms`` (M, 84) with ``hand_lms_mask`` (left 0:42, right
            42:84). Indices are int64 ``y * W + x``; masks are uint8; sizes in heatmap pixels.
        """
        keypoints = np.asarray(keypoints, dtype=np.float32)
        visible = np.asarray(keypoints_visible, dtype=np.float32) > 0
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        n = keypoints.shape[0]
        if keypoints.shape[1:] != (133, 2) or visible.shape != (n, 133) or boxes.shape[0] != n:
            raise ValueError(
                f"HPRNetCodec.encode: keypoints {keypoints.shape}, keypoints_visible "
                f"{visible.shape}, boxes {boxes.shape}; expected (N, 133, 2), (N, 133), (N, 4) "
                "in wholebody133 order"
            )
        if part_boxes is None or part_valid is None:
            derived_boxes, derived_valid = self._parts_from_landmarks(keypoints, visible)
            part_boxes = derived_boxes if part_boxes is None else part_boxes
            part_valid = derived_valid if part_valid is None else part_valid
        part_boxes = np.asarray(part_boxes, dtype=np.float32)
        part_valid = np.asarray(part_valid) > 0

        stride = float(self.output_stride)
        w, h = self.heatmap_size
        m = self.max_people
        t = self._empty_targets()
        if n > m:
            logger.debug("HPRNetCodec.encode: %d people, encoding the first max_people=%d", n, m)
        for k in range(min(n, m)):
            box = np.clip(boxes[k] / stride, 0, [w - 1, h - 1, w - 1, h - 1])
            bw, bh = box[2] - box[0], box[3] - box[1]
            if bw <= 0 or bh <= 0:
                continue
            radius = max(0, int(gaussian_radius(math.ceil(bh), math.ceil(bw), self.min_overlap)))
            sigma = (2 * radius + 1) / 6
            center = _box_center(box)
            cell = np.floor(center)
            draw_gaussian(t["hm"][0], cell, sigma, radius)
            t["wh"][k] = bw, bh
            t["ind"][k] = cell[1] * w + cell[0]
            t["reg"][k] = center - cell
            # A person with no annotated body joint still gets a centre peak, but no box or
            # offset supervision (as in the reference).
            t["reg_mask"][k] = visible[k, :17].any()

            points = (
                np.concatenate([keypoints[k, :23], [_box_center(b) for b in part_boxes[k]]])
                / stride
            )
            point_ok = np.concatenate([visible[k, :23], part_valid[k]])
            for j in np.nonzero(point_ok)[0]:
                pt = points[j]
                if not (0 <= pt[0] < w and 0 <= pt[1] < h):
                    continue
                pt_cell = np.floor(pt)
                pt_ind = pt_cell[1] * w + pt_cell[0]
                t["hps"][k, 2 * j : 2 * j + 2] = pt - cell
                t["hps_mask"][k, 2 * j : 2 * j + 2] = 1
                row = k * NUM_JOINTS + j
                t["hp_offset"][row] = pt - pt_cell
                t["hp_ind"][row] = pt_ind
                t["hp_mask"][row] = 1
                draw_gaussian(t["hm_hp"][j], pt_cell, sigma, radius)
                if j == FACE_CENTER:
                    fb = part_boxes[k, 0] / stride
                    t["wh_face"][k] = fb[2] - fb[0], fb[3] - fb[1]
                    t["face_ind"][k], t["face_mask"][k] = pt_ind, 1
                elif j in (LEFT_HAND_CENTER, RIGHT_HAND_CENTER):
                    hand_row = k + m * (j - LEFT_HAND_CENTER)
                    t["hand_ind"][hand_row], t["hand_mask"][hand_row] = pt_ind, 1
                if j >= FACE_CENTER:
                    self._encode_landmarks(t, k, j, pt_cell, keypoints[k] / stride, visible[k])
        return t

    def _empty_targets(self) -> dict[str, np.ndarray]:
        w, h = self.heatmap_size
        m = self.max_people
        f32, i64, u8 = np.float32, np.int64, np.uint8
        return {
            "hm": np.zeros((1, h, w), f32),
            "wh": np.zeros((m, 2), f32),
            "reg": np.zeros((m, 2), f32),
            "ind": np.zeros(m, i64),
            "reg_mask": np.zeros(m, u8),
            "hm_hp": np.zeros((NUM_JOINTS, h, w), f32),
            "hps": np.zeros((m, 2 * NUM_JOINTS), f32),
            "hps_mask": np.zeros((m, 2 * NUM_JOINTS), u8),
            "hp_offset": np.zeros((m * NUM_JOINTS, 2), f32),
            "hp_ind": np.zeros(m * NUM_JOINTS, i64),
            "hp_mask": np.zeros(m * NUM_JOINTS, u8),
            "wh_face": np.zeros((m, 2), f32),
            "face_ind": np.zeros(m, i64),
            "face_mask": np.zeros(m, u8),
            "face_lms": np.zeros((m, HEADS["face_lms"]), f32),
            "face_lms_mask": np.zeros((m, HEADS["face_lms"]), u8),
            "hand_ind": np.zeros(2 * m, i64),
            "hand_mask": np.zeros(2 * m, u8),
            "hand_lms": np.zeros((m, HEADS["hand_lms"]), f32),
            "hand_lms_mask": np.zeros((m, HEADS["hand_lms"]), u8),
        }

    def _encode_landmarks(
        self,
        targets: dict[str, np.ndarray],
        k: int,
        center_row: int,
        center_cell: np.ndarray,
        points: np.ndarray,
        visible: np.ndarray,
    ) -> None:
        """Landmarks of one part of person ``k``: offsets from the part centre's cell."""
        w, h = self.heatmap_size
        _, span, (head, channels) = next(p for p in _PARTS if p[0] == center_row)
        lms = points[span]
        ok = visible[span] & (lms[:, 0] >= 0) & (lms[:, 0] < w) & (lms[:, 1] >= 0)
        ok &= lms[:, 1] < h
        offsets = np.where(ok[:, None], lms - center_cell, 0).reshape(-1)
        targets[head][k, channels] = offsets
        targets[head + "_mask"][k, channels] = np.repeat(ok, 2)

    @staticmethod
    def _parts_from_landmarks(
        keypoints: np.ndarray, visible: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Part boxes as the extent of each part's annotated landmarks; valid if any is."""
        n = keypoints.shape[0]
        boxes = np.zeros((n, 3, 4), dtype=np.float32)
        valid = np.zeros((n, 3), dtype=bool)
        for p, (_, span, _) in enumerate(_PARTS):
            for k in range(n):
                pts = keypoints[k, span][visible[k, span]]
                if len(pts):
                    boxes[k, p] = *pts.min(axis=0), *pts.max(axis=0)
                    valid[k, p] = True
        return boxes, valid

    def decode(self, outputs: Mapping[str, np.ndarray]) -> PoseInstances:
        """Whole-body poses from one image's outputs.

        Args:
            outputs: head name -> (C, H, W) map (a leading batch axis of 1 is accepted), for
                every head of :data:`HEADS` but ``wh_face``; any H and W, the same for all.

        Returns:
            :class:`PoseInstances` with K = 133 (wholebody133), best first.
        """
        maps = self._check_outputs(outputs)
        w = maps["hm"].shape[2]
        hm, hm_hp = maps["hm"][0], maps["hm_hp"]
        if self.logits:
            hm, hm_hp = sigmoid(hm), sigmoid(hm_hp)

        idx, scores = topk(peak_nms(hm[None])[0].ravel(), self.top_k)
        keep = scores > self.center_threshold
        idx, scores = idx[keep], scores[keep]
        p = idx.size
        cx, cy = idx % w, idx // w
        cells = np.stack([cx, cy], axis=-1).astype(np.float32)  # (P, 2)
        centers = cells + maps["reg"][:, cy, cx].T
        size = maps["wh"][:, cy, cx].T
        boxes = np.concatenate([centers - size / 2, centers + size / 2], axis=-1)

        regressed = cells[:, None] + maps["hps"][:, cy, cx].T.reshape(p, NUM_JOINTS, 2)
        points, point_cells, point_scores = self._snap(regressed, boxes, hm_hp, maps)

        keypoints = np.zeros((p, 133, 2), dtype=np.float32)
        keypoint_scores = np.zeros((p, 133), dtype=np.float32)
        keypoints[:, :23] = points[:, :23]
        keypoint_scores[:, :23] = point_scores[:, :23]
        for row, span, (head, channels) in _PARTS:
            px, py = point_cells[:, row, 0], point_cells[:, row, 1]
            offsets = maps[head][channels][:, py, px].T.reshape(p, span.stop - span.start, 2)
            keypoints[:, span] = point_cells[:, row, None].astype(np.float32) + offsets
            keypoint_scores[:, span] = point_scores[:, row, None]

        stride = np.float32(self.output_stride)
        return PoseInstances(
            boxes=(boxes * stride).astype(np.float32),
            scores=scores.astype(np.float32),
            keypoints=keypoints * stride,
            keypoint_scores=keypoint_scores,
        )

    def _snap(
        self,
        regressed: np.ndarray,
        boxes: np.ndarray,
        hm_hp: np.ndarray,
        maps: Mapping[str, np.ndarray],
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Snap regressed points to their joint heatmap peaks.

        Args:
            regressed: (P, 26, 2) points from the centre offsets, heatmap pixels.
            boxes: (P, 4) person boxes, heatmap pixels.
            hm_hp: (26, H, W) joint heatmaps as probabilities.
            maps: the outputs (for ``hp_offset``).

        Returns:
            points (P, 26, 2); their integer cells (P, 26, 2) int64, where a part's landmarks
            are read (the peak's cell when snapped, else the regressed point's, clipped into
            the map); scores (P, 26).
        """
        p = regressed.shape[0]
        h, w = hm_hp.shape[1:]
        points = regressed.copy()
        cells = np.stack(
            [
                np.clip(np.floor(regressed[..., 0]), 0, w - 1),
                np.clip(np.floor(regressed[..., 1]), 0, h - 1),
            ],
            axis=-1,
        ).astype(np.int64)
        joint = np.arange(NUM_JOINTS)
        scores = hm_hp[joint[None], cells[..., 1], cells[..., 0]]
        if p == 0:
            return points, cells, scores

        peaks = peak_nms(hm_hp)
        reach = self.snap_distance * np.maximum(
            boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        )
        for j in range(NUM_JOINTS):
            idx, peak_scores = topk(peaks[j].ravel(), self.top_k)
            strong = peak_scores > self.keypoint_threshold
            idx, peak_scores = idx[strong], peak_scores[strong]
            if not idx.size:
                continue
            peak_cells = np.stack([idx % w, idx // w], axis=-1)
            peak_points = peak_cells + maps["hp_offset"][:, peak_cells[:, 1], peak_cells[:, 0]].T
            dist = np.linalg.norm(regressed[:, j, None] - peak_points[None], axis=-1)  # (P, Q)
            nearest = dist.argmin(axis=1)
            chosen = peak_points[nearest]
            inside = (
                (chosen[:, 0] >= boxes[:, 0])
                & (chosen[:, 0] <= boxes[:, 2])
                & (chosen[:, 1] >= boxes[:, 1])
                & (chosen[:, 1] <= boxes[:, 3])
            )
            snap = inside & (dist[np.arange(p), nearest] <= reach)
            points[snap, j] = chosen[snap]
            cells[snap, j] = peak_cells[nearest[snap]]
            scores[snap, j] = peak_scores[nearest[snap]]
        return points, cells, scores

    def _check_outputs(self, outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every decoded head present, (C, H, W) with one H, W for all, float32."""
        size = None
        maps = {}
        for name, channels in HEADS.items():
            if name == "wh_face":
                continue
            if name not in outputs:
                raise ValueError(
                    f"HPRNetCodec.decode: output {name!r} is missing; got {sorted(outputs)}, "
                    f"need {sorted(set(HEADS) - {'wh_face'})}"
                )
            out = np.asarray(outputs[name], dtype=np.float32)
            if out.ndim == 4 and out.shape[0] == 1:
                out = out[0]
            size = size or out.shape[1:]
            if out.shape != (channels, *size):
                raise ValueError(
                    f"HPRNetCodec.decode: output {name!r} has shape {out.shape}; expected "
                    f"({channels}, H, W) for one image, with the H, W of 'hm' {tuple(size)}"
                )
            maps[name] = out
        return maps
