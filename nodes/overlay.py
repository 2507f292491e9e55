"""Drawing: boxes, skeletons and track ids on a copy of the frame's image.

``overlay.skeleton`` is optional: a pipeline that wants no annotated video leaves it out.
It never writes into the incoming image (which may be a read-only view into shared
memory); it draws on a copy and replaces ``frame.image`` with it.

Drawing is vectorised: all limbs of one colour go to one ``cv2.polylines`` call, and all
keypoints are stamped as filled discs with one numpy assignment. Limbs and keypoints are
coloured by side (left orange, right blue, centre green); boxes and ids by track id.
Poses the tracker coasted (``predicted``) are drawn dimmed and thinner.
"""

from __future__ import annotations

import cv2
import numpy as np

from posegraph import skeletons
from posegraph.node import Context, Node, NodeError, register
from posegraph.packet import Frame

# BGR colours by side: left, right, centre
SIDE_COLORS = np.array([(0, 165, 255), (255, 128, 0), (0, 200, 0)], np.uint8)
UNTRACKED_COLOR = (220, 220, 220)
REGION_IN, REGION_OUT = (80, 220, 80), (60, 60, 230)  # filter.region's polygons (BGR)
DIM = 0.5  # brightness of predicted poses
SHIFT = 2  # sub-pixel bits for cv2 drawing: coordinates are multiplied by 2**SHIFT
# body and feet get full-size dots; face and hand points are dense, so smaller
_SMALL_PARTS = ("face", "left_hand", "right_hand")


def _side(name: str) -> int:
    return 0 if name.startswith("left_") else 1 if name.startswith("right_") else 2


def track_color(track_id: int) -> tuple[int, int, int]:
    """A stable, well-spread BGR colour per track id (golden-angle hues)."""
    if track_id < 0:
        return UNTRACKED_COLOR
    hue = int(track_id * 111.25) % 180  # OpenCV hues run 0..180: 111.25 is the golden angle
    bgr = cv2.cvtColor(np.array([[[hue, 200, 255]]], np.uint8), cv2.COLOR_HSV2BGR)[0, 0]
    return tuple(int(c) for c in bgr)


def disc_offsets(radius: int) -> np.ndarray:
    """(D, 2) integer (dx, dy) offsets of the pixels of a filled disc."""
    r = np.arange(-radius, radius + 1)
    dx, dy = np.meshgrid(r, r)
    inside = dx**2 + dy**2 <= radius**2 + radius  # the +r keeps small discs round
    return np.stack([dx[inside], dy[inside]], axis=1)


def stamp_discs(canvas: np.ndarray, points: np.ndarray, colors: np.ndarray, radius: int) -> None:
    """Draw filled discs at ``points`` (P, 2) float pixels with ``colors`` (P, 3) uint8."""
    if radius < 1 or not len(points):
        return
    h, w = canvas.shape[:2]
    pixels = np.rint(points).astype(np.int64)[:, None, :] + disc_offsets(radius)[None]  # (P,D,2)
    inside = (
        (pixels[..., 0] >= 0) & (pixels[..., 0] < w) & (pixels[..., 1] >= 0) & (pixels[..., 1] < h)
    )
    which = np.nonzero(inside)
    canvas[pixels[..., 1][which], pixels[..., 0][which]] = colors[which[0]]


class _Style:
    """Per-skeleton drawing tables, built once."""

    def __init__(self, skeleton: skeletons.Skeleton):
        self.skeleton = skeleton
        side = np.array([_side(n) for n in skeleton.keypoint_names], np.int64)
        self.point_side = side
        self.limbs = np.array(skeleton.limbs, np.int64).reshape(-1, 2)
        a, b = side[self.limbs[:, 0]], side[self.limbs[:, 1]]
        self.limb_side = np.where(a == b, a, 2)
        small = np.zeros(skeleton.num_keypoints, bool)
        for part in _SMALL_PARTS:
            if part in skeleton.parts:
                small[skeleton.parts[part].start : skeleton.parts[part].stop] = True
        self.small = small


@register("overlay.skeleton")
class SkeletonOverlay(Node):
    """Draws boxes, skeletons and track ids; the image it passes on is a new array.

    Parameters:
        skeleton: the keypoint set to draw with; by default the one the poses name
            (``Poses.skeleton``). Known: coco17, wholebody133, mpii16, crowdpose14.
        keypoint_threshold: keypoints scoring below it are not drawn, nor their limbs.
        boxes: draw the people's boxes (the detections' when a frame has no poses).
        ids: write track ids above the boxes.
        thickness: limb and box line width in pixels.
        radius: keypoint disc radius in pixels (face and hand points get half).
        regions: outline ``filter.region``'s polygons (include green, exclude red).
    """

    def __init__(
        self,
        skeleton: str | None = None,
        keypoint_threshold: float = 0.3,
        boxes: bool = True,
        ids: bool = True,
        thickness: int = 2,
        radius: int = 3,
        regions: bool = True,
    ):
        if skeleton is not None:
            self._style_of(skeleton)  # an unknown name stops the pipeline before it starts
        if thickness < 1 or radius < 0:
            raise NodeError(f"thickness ({thickness}) must be >= 1 and radius ({radius}) >= 0")
        self.skeleton = skeleton
        self.keypoint_threshold = keypoint_threshold
        self.boxes = boxes
        self.ids = ids
        self.thickness = thickness
        self.radius = radius
        self.regions = regions
        self._styles: dict[str, _Style] = {}

    def setup(self, ctx: Context) -> None:
        super().setup(ctx)
        # OpenCV loads its font, numpy its kernels, on their first call (about 60 ms): on
        # a blank canvas here, not on the first frame
        style = self._style(self.skeleton or "coco17")
        k = style.skeleton.num_keypoints
        canvas = np.zeros((64, 64, 3), np.uint8)
        points = np.full((1, k, 2), 32.0, np.float32)
        self._draw_poses(canvas, style, points, np.ones((1, k), np.float32), np.zeros(1, bool))
        cv2.putText(canvas, "0", (2, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1)

    @staticmethod
    def _style_of(name: str) -> _Style:
        try:
            return _Style(skeletons.get(name))
        except ValueError as exc:
            raise NodeError(f"overlay cannot draw this skeleton: {exc}") from None

    def _style(self, name: str) -> _Style:
        if name not in self._styles:
            self._styles[name] = self._style_of(name)
        return self._styles[name]

    def process(self, frame: Frame) -> Frame:
        canvas = np.array(frame.image, dtype=np.uint8, copy=True, order="C")
        poses = frame.poses
        # people without keypoints (a tracker behind a detector) are drawn as boxes and ids
        if len(poses) and poses.keypoints.shape[1]:
            name = self.skeleton or poses.skeleton
            if not name:
                raise NodeError(
                    "the poses name no skeleton: set the overlay's skeleton parameter "
                    f"(known: {', '.join(sorted(skeletons.SKELETONS))})"
                )
            style = self._style(name)
            k = poses.keypoints.shape[1]
            if k != style.skeleton.num_keypoints:
                raise NodeError(
                    f"poses have {k} keypoints, skeleton {name!r} has "
                    f"{style.skeleton.num_keypoints}: set the overlay's skeleton to the "
                    "pose model's"
                )
            self._draw_poses(canvas, style, poses.keypoints, poses.scores, poses.predicted)
        if self.boxes:
            self._draw_boxes(canvas, frame)
        regions = frame.meta.get("regions")
        if self.regions and regions:
            for kind, color in (("include", REGION_IN), ("exclude", REGION_OUT)):
                outlines = [np.asarray(p, np.int32) for p in regions.get(kind, ())]
                cv2.polylines(canvas, outlines, True, color, 1, cv2.LINE_AA)
        return frame.replace(image=canvas)

    def _draw_poses(
        self,
        canvas: np.ndarray,
        style: _Style,
        keypoints: np.ndarray,
        scores: np.ndarray,
        predicted: np.ndarray,
    ) -> None:
        """keypoints (N, K, 2) pixels, scores (N, K), predicted (N,) bool."""
        visible = scores >= self.keypoint_threshold  # (N, K)
        a, b = style.limbs[:, 0], style.limbs[:, 1]
        drawn = visible[:, a] & visible[:, b]  # (N, L)
        fixed = np.rint(keypoints * (1 << SHIFT)).astype(np.int32)
        for coasted in (False, True):
            people = predicted == coasted
            dim = DIM if coasted else 1.0
            width = max(1, self.thickness // 2) if coasted else self.thickness
            for side, color in enumerate(SIDE_COLORS):
                n, limb = np.nonzero(drawn & people[:, None] & (style.limb_side == side)[None])
                if not len(n):
                    continue
                segments = np.stack([fixed[n, a[limb]], fixed[n, b[limb]]], axis=1)  # (M,2,2)
                bgr = tuple(int(c * dim) for c in color)
                cv2.polylines(canvas, segments, False, bgr, width, cv2.LINE_AA, SHIFT)

        n, kp = np.nonzero(visible)
        colors = SIDE_COLORS[style.point_side[kp]]
        colors = np.where(predicted[n, None], (colors * DIM).astype(np.uint8), colors)
        small = style.small[kp]
        stamp_discs(canvas, keypoints[n[~small], kp[~small]], colors[~small], self.radius)
        stamp_discs(canvas, keypoints[n[small], kp[small]], colors[small], self.radius // 2)

    def _draw_boxes(self, canvas: np.ndarray, frame: Frame) -> None:
        poses = frame.poses
        if len(poses):
            boxes, ids, predicted = poses.boxes, poses.track_ids, poses.predicted
        else:
            boxes = frame.detections.xyxy
            ids = np.full(len(boxes), -1, np.int64)
            predicted = np.zeros(len(boxes), bool)
        # one rectangle and one label per person: OpenCV has no batched form of either
        for box, track_id, coasted in zip(np.rint(boxes).astype(int), ids, predicted, strict=True):
            color = track_color(int(track_id))
            if coasted:
                color = tuple(int(c * DIM) for c in color)
            x1, y1, x2, y2 = (int(v) for v in box)
            cv2.rectangle(canvas, (x1, y1), (x2, y2), color, 1 if coasted else self.thickness)
            if self.ids and track_id >= 0:
                cv2.putText(
                    canvas,
                    str(int(track_id)),
                    (x1 + 2, max(12, y1 - 4)),
                    cv2.FONT_HERSHEY_SIMPLEX,
                    0.5,
                    color,
                    1,
                    cv2.LINE_AA,
                )
