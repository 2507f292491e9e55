"""Top-down crops: one affine crop per detected person, at the pose model's input size.

``crop.topdown`` turns each box of ``frame.detections`` (the ``max_persons`` best by
score) into a center and a scale as HRNet does: the box is widened or heightened to the
model's aspect ratio, padded by ``padding`` (x1.25), and expressed in units of 200 pixels
(HRNet's ``pixel_std``). Each crop is then cut out with ``cv2.warpAffine``.

It writes one entry, ``frame.meta["crops"]``, a dict of arrays (they travel on the wire
as msgpack ext types). For N crops of a model input (w, h):

- ``images``: (N, h, w, 3) uint8 BGR crops (absent when ``images`` is off);
- ``affine``: (N, 2, 3) float32, image pixels -> crop pixels;
- ``inverse``: (N, 2, 3) float32, crop pixels -> image pixels, to map keypoints back;
- ``center``: (N, 2) float32 box centres in image pixels;
- ``scale``: (N, 2) float32 crop (width, height) in units of 200 pixels, padding included;
- ``detection``: (N,) int64, the row of ``frame.detections`` each crop comes from;
- ``input_size``: [w, h].

Pixel convention: the box centre maps to (w / 2, h / 2), as in HRNet's
``get_affine_transform``; a codec that works to another convention (UDP) maps keypoints
back with its own.

The crops are cut on the CPU here. With ``images: false`` only the matrices go on and the
pose node cuts the crops itself from the frame: with a torch model on a CUDA device it
uploads each frame once and samples every crop there (:class:`DeviceFrames`,
``grid_sample`` with the same geometry as ``cv2.warpAffine``), so only the frame's pixels
cross to the GPU; otherwise with OpenCV. The pose node normalises on the model's device.
"""

from __future__ import annotations

import itertools
import threading
import warnings
from typing import Any

import cv2
import numpy as np

from posegraph.node import Context, Node, NodeError, register
from posegraph.packet import Frame

PIXEL_STD = 200.0  # HRNet's unit of scale, kept so scales read as in its annotations


def box_to_center_scale(
    xyxy: np.ndarray, aspect_ratio: float, padding: float = 1.25
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (N, 4) xyxy -> centres (N, 2) and scales (N, 2) in units of ``PIXEL_STD``.

    The box grows along one axis to ``aspect_ratio`` (width / height), never shrinks,
    then both sides grow by ``padding``.
    """
    xyxy = np.asarray(xyxy, np.float32).reshape(-1, 4)
    center = (xyxy[:, :2] + xyxy[:, 2:]) / 2
    w = xyxy[:, 2] - xyxy[:, 0]
    h = xyxy[:, 3] - xyxy[:, 1]
    w, h = np.maximum(w, h * aspect_ratio), np.maximum(h, w / aspect_ratio)
    scale = np.stack([w, h], axis=1) * (padding / PIXEL_STD)
    return center, scale.astype(np.float32)


def center_scale_to_affine(
    center: np.ndarray, scale: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Affine matrices (N, 2, 3) image -> crop of ``size`` (w, h), and their inverses.

    Without rotation the map is a scale and a shift, so both come in closed form for the
    whole batch; the scale is taken from the width (the aspect ratio already matches).
    """
    w, h = size
    n = len(center)
    s = w / (scale[:, 0] * PIXEL_STD)  # crop pixels per image pixel
    affine = np.zeros((n, 2, 3), np.float32)
    affine[:, 0, 0] = affine[:, 1, 1] = s
    affine[:, 0, 2] = w / 2 - s * center[:, 0]
    affine[:, 1, 2] = h / 2 - s * center[:, 1]
    inverse = np.zeros((n, 2, 3), np.float32)
    inverse[:, 0, 0] = inverse[:, 1, 1] = 1 / s
    inverse[:, 0, 2] = center[:, 0] - w / (2 * s)
    inverse[:, 1, 2] = center[:, 1] - h / (2 * s)
    return affine, inverse


def warp_crops(image: np.ndarray, affine: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Cut N crops (N, h, w, 3) uint8 out of ``image`` (H, W, 3) with ``affine`` (N, 2, 3).

    Pixels outside the image are black, as HRNet trains with.
    """
    w, h = size
    crops = np.empty((len(affine), h, w, 3), np.uint8)
    for crop, m in zip(crops, affine, strict=True):
        cv2.warpAffine(
            image, m, (w, h), dst=crop, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
        )
    return crops


#: One row per crop for :class:`DeviceFrames`: the frame's id, 1 to mirror the crop, then
#: its (2, 3) inverse matrix (crop pixels -> image pixels), row-major.
CROP_ROW = 8


def read_only_tensor(torch: Any, array: np.ndarray) -> Any:
    """``torch.from_numpy`` of a contiguous copy-free view, for arrays torch only reads:
    a frame in shared memory is not writeable, and torch would warn about it on every run.
    """
    array = np.ascontiguousarray(array)
    if array.flags.writeable:
        return torch.from_numpy(array)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


class DeviceFrames:
    """Frames on a torch device, from which crops are sampled there.

    A node puts a frame here (:meth:`add`, one upload), asks for its crops by id in rows of
    :data:`CROP_ROW` numbers, and removes it when its crops have run. One table per device
    and process, so that nodes sharing a model on the scheduler share it too. A row whose
    frame is gone (id 0: the scheduler's padding; or a request given up at its deadline
    while its batch ran) gives a black crop.
    """

    _tables: dict[str, DeviceFrames] = {}
    _tables_lock = threading.Lock()

    def __init__(self, device: str):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.frames: dict[int, Any] = {}
        self.lock = threading.Lock()
        self.ids = itertools.count(1)

    @classmethod
    def on(cls, device: str) -> DeviceFrames:
        with cls._tables_lock:
            table = cls._tables.get(device)
            if table is None:
                table = cls._tables[device] = cls(device)
            return table

    def add(self, image: np.ndarray) -> int:
        """Upload ``image`` (H, W, 3) uint8; its id for the crop rows (exact in float32)."""
        frame = (
            read_only_tensor(self.torch, image)
            .to(self.device)
            .permute(2, 0, 1)
            .unsqueeze(0)
            .float()
        )  # (1, 3, H, W)
        with self.lock:
            fid = next(self.ids) % (1 << 24)  # float32 holds every integer below 2**24
            if fid == 0:
                fid = next(self.ids) % (1 << 24)
            self.frames[fid] = frame
        return fid

    def remove(self, fid: int) -> None:
        with self.lock:
            self.frames.pop(fid, None)

    def __len__(self) -> int:
        with self.lock:
            return len(self.frames)

    @staticmethod
    def rows(fid: int, inverse: np.ndarray, flip: bool = False) -> np.ndarray:
        """Crop rows (N, CROP_ROW) float32 for the crops of one frame."""
        inverse = np.asarray(inverse, np.float32).reshape(-1, 6)
        rows = np.empty((len(inverse), CROP_ROW), np.float32)
        rows[:, 0] = fid
        rows[:, 1] = float(flip)
        rows[:, 2:] = inverse
        return rows

    def crops(self, rows: np.ndarray, size: tuple[int, int]) -> Any:
        """Crops (B, 3, h, w) float32, BGR on the 0-255 scale, on the device, for ``rows``
        (B, CROP_ROW); ``size`` is (w, h).

        ``cv2.warpAffine``'s geometry (crop pixel (x, y) samples the image at
        ``inverse @ (x, y, 1)``, pixel centres at integers, black outside) through
        ``grid_sample`` with ``align_corners=True``; bilinear in float, not rounded to
        uint8.
        """
        torch = self.torch
        functional = torch.nn.functional
        w, h = size
        rows = np.asarray(rows, np.float32).reshape(-1, CROP_ROW)
        out = torch.zeros((len(rows), 3, h, w), device=self.device)
        ids = rows[:, 0].astype(np.int64)
        with self.lock:
            frames = {int(f): self.frames.get(int(f)) for f in np.unique(ids) if f}
        ys, xs = torch.meshgrid(
            torch.arange(h, dtype=torch.float32, device=self.device),
            torch.arange(w, dtype=torch.float32, device=self.device),
            indexing="ij",
        )
        crop_px = torch.stack([xs, ys, torch.ones_like(xs)], -1).view(1, h * w, 3)
        inverse = torch.from_numpy(rows[:, 2:].reshape(-1, 2, 3).copy()).to(self.device)
        source = crop_px @ inverse.transpose(1, 2)  # (B, h*w, 2) image pixels
        for fid, frame in frames.items():
            if frame is None:
                continue
            picked = np.flatnonzero(ids == fid)
            _, _, height, width = frame.shape
            span = torch.tensor(
                [max(width - 1, 1), max(height - 1, 1)], dtype=torch.float32, device=self.device
            )
            index = torch.from_numpy(picked).to(self.device)
            grid = source[index] * (2 / span) - 1
            # every crop of the frame in one call: the grids stacked along the height
            sampled = functional.grid_sample(
                frame,
                grid.view(1, len(picked) * h, w, 2),
                mode="bilinear",
                padding_mode="zeros",
                align_corners=True,
            )
            out[index] = sampled.view(3, len(picked), h, w).transpose(0, 1)
        flip = torch.from_numpy(np.flatnonzero(rows[:, 1] > 0.5)).to(self.device)
        if len(flip):
            out[flip] = out[flip].flip(-1)
        return out


@register("crop.topdown")
class TopDownCrop(Node):
    """Cuts one crop per detection for a top-down pose model; see the module docstring.

    Parameters:
        model: zoo name of the pose model, whose input size sets the crop size.
        width, height: an explicit crop size instead (both, e.g. for an ONNX pose model).
        max_persons: at most this many crops per frame, best detection scores first.
        padding: how much larger than the box the crop is (1.25 as HRNet).
        images: cut the crops here; off, only the matrices go on (the pose node crops).
    """

    def __init__(
        self,
        model: str = "hrnet_w32",
        width: int | None = None,
        height: int | None = None,
        max_persons: int = 32,
        padding: float = 1.25,
        images: bool = True,
    ):
        if (width is None) != (height is None):
            raise NodeError("give both width and height, or neither (the model's size is used)")
        if width is not None and (width < 1 or height < 1):
            raise NodeError(f"crop size {width}x{height} must be positive")
        if max_persons < 1:
            raise NodeError(f"max_persons must be at least 1, got {max_persons}")
        if padding <= 0:
            raise NodeError(f"padding must be positive, got {padding}")
        self.model = model
        self.size = None if width is None else (width, height)
        self.max_persons = max_persons
        self.padding = padding
        self.images = images

    def setup(self, ctx: Context) -> None:
        super().setup(ctx)
        if self.size is None:
            # the zoo imports torch, so it is only reached when no size is given
            from posegraph.models import spec_of

            try:
                self.size = tuple(spec_of(self.model).input_size)
            except ValueError as exc:
                raise NodeError(f"{exc}; or give width and height") from None

    def process(self, frame: Frame) -> Frame:
        det = frame.detections
        order = np.argsort(-det.scores, kind="stable")[: self.max_persons]
        w, h = self.size
        center, scale = box_to_center_scale(det.xyxy[order], w / h, self.padding)
        affine, inverse = center_scale_to_affine(center, scale, self.size)
        crops = {
            "affine": affine,
            "inverse": inverse,
            "center": center,
            "scale": scale,
            "detection": order.astype(np.int64),
            "input_size": [w, h],
        }
        if self.images:
            crops["images"] = warp_crops(frame.image, affine, self.size)
        return frame.replace(meta={**frame.meta, "crops": crops})
