"""Regions of the picture: people kept or left out by where they stand.

``filter.region`` keeps the people (detection boxes, and poses with their tracks) whose
point (``bottom``: the middle of the box's lower edge, where a person stands; ``center``)
lies inside any ``include`` polygon and inside no ``exclude`` polygon. Put it after the
detector to spend no pose work on people outside (a street behind a fence, a poster, a
screen showing people), or after the tracker to publish only those in an area. Between
``crop.topdown`` and the pose node it takes the crops of the people it leaves out away too.

Polygons are lists of ``[x, y]`` points, as fractions of the picture's width and height
(``relative: true``, the default: one setting for any resolution) or in pixels. Either
setting is one list of polygons for every stream, or a mapping from stream to its list
(streams not named keep everyone, for ``include``).

The polygons go on with each frame (``meta["regions"]``, in pixels), and
``overlay.skeleton`` and ``sink.mjpeg``'s ``draw`` draw them: include in green, exclude
in red, to set them up by eye.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from posegraph.node import Node, NodeError, register
from posegraph.packet import Detections, Frame, Poses


def inside(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """(N,) bool: which of ``points`` (N, 2) lie inside ``polygon`` (M, 2), by the even-odd
    rule (a point on an edge may fall either way)."""
    x, y = points[:, 0:1], points[:, 1:2]  # (N, 1)
    x0, y0 = polygon[:, 0], polygon[:, 1]  # (M,)
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    crosses = (y0 > y) != (y1 > y)  # (N, M): the edge spans the point's row
    with np.errstate(divide="ignore", invalid="ignore"):
        at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
    return np.count_nonzero(crosses & (x < at), axis=1) % 2 == 1


def _polygons(value: Any, name: str, relative: bool) -> list[np.ndarray]:
    if not isinstance(value, list) or not value:
        raise NodeError(f"{name}: give a list of polygons, each a list of [x, y] points")
    out = []
    for k, polygon in enumerate(value):
        try:
            array = np.asarray(polygon, np.float64)
        except (TypeError, ValueError):
            array = np.zeros((0,))
        if array.ndim != 2 or array.shape[1] != 2 or len(array) < 3:
            raise NodeError(
                f"{name}: polygon {k} must be at least 3 [x, y] points, got {polygon!r}"
            )
        if relative and (array.min() < 0 or array.max() > 1):
            raise NodeError(
                f"{name}: polygon {k} has points outside 0-1, which relative: true reads as "
                "fractions of the picture; give fractions, or pixels with relative: false"
            )
        out.append(array)
    return out


def _crops_kept(crops: dict[str, Any], keep: np.ndarray) -> dict[str, Any]:
    """crop.topdown's crops of the people kept, pointing at their new detection rows."""
    rows = np.asarray(crops["detection"], np.int64)
    chosen = keep[rows]
    renumber = np.cumsum(keep) - 1  # old detection row -> new
    out = {}
    for key, value in crops.items():
        if key == "input_size":
            out[key] = value
        elif key == "detection":
            out[key] = renumber[rows[chosen]]
        else:
            out[key] = np.asarray(value)[chosen]
    return out


@register("filter.region")
class RegionFilter(Node):
    """Keeps the people who stand inside ``include`` and outside ``exclude``.

    Parameters:
        include: polygons people must stand in (None: the whole picture).
        exclude: polygons where people are left out.
        relative: polygon points are fractions of the picture (true) or pixels (false).
        point: which point of a person's box decides: ``bottom`` or ``center``.
    """

    def __init__(
        self,
        include: list | dict | None = None,
        exclude: list | dict | None = None,
        relative: bool = True,
        point: Literal["bottom", "center"] = "bottom",
    ):
        if include is None and exclude is None:
            raise NodeError("give include or exclude polygons (or both)")
        self.relative = relative
        self.point = point
        self.include = self._per_stream(include, "include")
        self.exclude = self._per_stream(exclude, "exclude")
        self._outlines: dict[tuple[str, tuple[int, int]], dict[str, list]] = {}

    def _per_stream(self, value: Any, name: str) -> dict[str | None, list[np.ndarray]] | None:
        """{stream: polygons}; the key None holds those of every stream."""
        if value is None:
            return None
        if isinstance(value, dict):
            return {str(s): _polygons(v, f"{name}[{s}]", self.relative) for s, v in value.items()}
        return {None: _polygons(value, name, self.relative)}

    @staticmethod
    def _for(table, stream: str) -> list[np.ndarray] | None:
        if table is None:
            return None
        return table.get(stream, table.get(None))

    def keep(self, boxes: np.ndarray, stream: str, size: tuple[int, int]) -> np.ndarray:
        """(N,) bool for boxes (N, 4) xyxy in a picture of ``size`` (w, h)."""
        x = (boxes[:, 0] + boxes[:, 2]) / 2
        y = boxes[:, 3] if self.point == "bottom" else (boxes[:, 1] + boxes[:, 3]) / 2
        points = np.stack([x, y], axis=1).astype(np.float64)
        if self.relative:
            points = points / np.asarray(size, np.float64)
        keep = np.ones(len(boxes), bool)
        include = self._for(self.include, stream)
        if include is not None:
            keep &= np.any([inside(points, p) for p in include], axis=0)
        exclude = self._for(self.exclude, stream)
        if exclude is not None:
            keep &= ~np.any([inside(points, p) for p in exclude], axis=0)
        return keep

    def outlines(self, stream: str, size: tuple[int, int]) -> dict[str, list]:
        """This stream's polygons in pixels, as ``overlay.skeleton`` draws them (made once
        per stream and picture size)."""
        key = (stream, size)
        if key not in self._outlines:
            self._outlines[key] = self._in_pixels(stream, size)
        return self._outlines[key]

    def _in_pixels(self, stream: str, size: tuple[int, int]) -> dict[str, list]:
        scale = np.asarray(size, np.float64) if self.relative else np.ones(2)
        return {
            kind: [np.rint(p * scale).astype(int).tolist() for p in polygons]
            for kind, polygons in (
                ("include", self._for(self.include, stream)),
                ("exclude", self._for(self.exclude, stream)),
            )
            if polygons
        }

    def process(self, frame: Frame) -> Frame:
        if frame.image is None:
            raise NodeError("filter.region needs the frames' pictures, for their size")
        h, w = frame.image.shape[:2]
        # the regions go with the frame, for the overlay and the live view to draw
        changes: dict[str, Any] = {
            "meta": {**frame.meta, "regions": self.outlines(frame.stream, (w, h))}
        }
        d = frame.detections
        if len(d):
            keep = self.keep(d.xyxy, frame.stream, (w, h))
            if not keep.all():
                changes["detections"] = Detections(d.xyxy[keep], d.scores[keep], d.labels[keep])
                crops = frame.meta.get("crops")
                if crops is not None:  # after crop.topdown: its crops follow their people
                    changes["meta"]["crops"] = _crops_kept(crops, keep)
        p = frame.poses
        if len(p):
            keep = self.keep(p.boxes, frame.stream, (w, h))
            if not keep.all():
                changes["poses"] = Poses(
                    keypoints=p.keypoints[keep],
                    scores=p.scores[keep],
                    boxes=p.boxes[keep],
                    instance_scores=p.instance_scores[keep],
                    track_ids=p.track_ids[keep],
                    skeleton=p.skeleton,
                    predicted=p.predicted[keep],
                )
        return frame.replace(**changes)
