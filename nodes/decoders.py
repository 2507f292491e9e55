"""Decoders: pose model outputs -> ``frame.poses`` in image pixels, through the codecs.

A pose model node run with ``decode: false`` leaves its raw outputs in
``frame.meta["pose_outputs"]``, a dict:

- ``codec``: codec name (``posegraph.codecs``), ``codec_kwargs``: its arguments;
- ``skeleton``: keypoint set name;
- ``outputs``: output name -> array with a leading axis of N crops (top-down:
  ``heatmaps`` (N, K, H, W), or ``simcc_x`` (N, K, Wr) and ``simcc_y`` (N, K, Hr); with the
  flip test also the same names with ``_flipped``, the outputs of the mirrored crops as the
  model gave them) or of one image (whole-image models: the HPRNet heads ``{head: (1, C, H,
  W)}``, or ER-Pose ``poses`` (1, A, 1 + 3K));
- top-down: ``keypoint_threshold``, the keypoint score that counts in instance scores;
- whole-image: ``letterbox``, ``{"scale": [sx, sy], "offset": [left, top], "image_size":
  [w, h]}``, where the image landed in the network input.

Top-down decoders read the crop matrices from ``frame.meta["crops"]`` (``crop.topdown``).
The pose nodes decode in place with the same functions when ``decode`` is on, so there is
one decoding path. These nodes import numpy and OpenCV only: they can run in a light process
apart from the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from nodes.detectors import Letterbox
from posegraph import codecs, skeletons
from posegraph.codecs import PoseInstances
from posegraph.node import Context, Node, NodeError, register
from posegraph.packet import Detections, Frame, Poses

HEATMAP_CODECS = ("msra_heatmap", "udp_heatmap")
SIMCC_CODECS = ("simcc",)
TOPDOWN_CODECS = HEATMAP_CODECS + SIMCC_CODECS
WHOLE_IMAGE_CODECS = ("hprnet", "erpose")

#: Flipped outputs travel under the output's name with this suffix.
FLIPPED = "_flipped"


def output_names(codec_name: str) -> tuple[str, ...]:
    """The outputs a codec decodes, by name (the names of the zoo's ONNX exports)."""
    if codec_name in HEATMAP_CODECS:
        return ("heatmaps",)
    if codec_name in SIMCC_CODECS:
        return ("simcc_x", "simcc_y")
    if codec_name == "erpose":
        return ("poses",)
    if codec_name == "hprnet":
        return tuple(h for h in codecs.HPRNET_HEADS if h != "wh_face")
    raise ValueError(f"codec {codec_name!r} is not one the pose nodes decode")


def decode_crops(
    codec: Any, outputs: Mapping[str, np.ndarray], flip_indices: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints of N crops from a top-down model's outputs, merging the flip test.

    Args:
        codec: an MSRA/UDP heatmap codec or a SimCC codec.
        outputs: ``heatmaps`` (N, K, H, W), or ``simcc_x`` (N, K, Wr) and ``simcc_y``
            (N, K, Hr); with ``*_flipped`` twins from horizontally mirrored crops.
        flip_indices: (K,) the skeleton's left/right permutation, needed with flipped outputs.

    Returns:
        keypoints (N, K, 2) float32 in crop (model input) pixels, scores (N, K) float32.
    """
    flipped = any(name.endswith(FLIPPED) for name in outputs)
    if flipped and flip_indices is None:
        raise ValueError("flipped outputs need the skeleton's flip_indices")
    if isinstance(codec, codecs.SimCCLabel):
        simcc_x = np.asarray(outputs["simcc_x"], np.float32)
        simcc_y = np.asarray(outputs["simcc_y"], np.float32)
        if flipped:
            # A mirrored crop reverses the x bins and swaps left and right (as RTMPose does).
            back_x = np.asarray(outputs["simcc_x" + FLIPPED], np.float32)[:, flip_indices, ::-1]
            back_y = np.asarray(outputs["simcc_y" + FLIPPED], np.float32)[:, flip_indices]
            simcc_x, simcc_y = (simcc_x + back_x) / 2, (simcc_y + back_y) / 2
        return codec.decode(simcc_x, simcc_y)
    heatmaps = np.asarray(outputs["heatmaps"], np.float32)
    if flipped:
        mirrored = np.asarray(outputs["heatmaps" + FLIPPED], np.float32)
        return codec.decode_flip_test(heatmaps, mirrored, flip_indices)
    return codec.decode(heatmaps)


def crops_to_image(keypoints: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """Crop pixels -> image pixels through each crop's inverse affine.

    Args:
        keypoints: (N, K, 2) in crop pixels.
        inverse: (N, 2, 3) crop -> image matrices from ``crop.topdown``.

    Returns:
        (N, K, 2) float32 image pixels.
    """
    inverse = np.asarray(inverse, np.float32)
    linear = np.einsum("nij,nkj->nki", inverse[:, :, :2], keypoints)
    return (linear + inverse[:, None, :, 2]).astype(np.float32)


def instance_scores(
    box_scores: np.ndarray, keypoint_scores: np.ndarray, threshold: float
) -> np.ndarray:
    """Box score x the mean of the keypoint scores above ``threshold`` (0 when none is), as
    HRNet rescores people before OKS-NMS.

    Args:
        box_scores: (N,); keypoint_scores: (N, K).

    Returns:
        (N,) float32.
    """
    counted = keypoint_scores > threshold
    total = np.where(counted, keypoint_scores, 0).sum(axis=1)
    mean = total / np.maximum(counted.sum(axis=1), 1)
    return (box_scores * mean).astype(np.float32)


def topdown_poses(
    keypoints: np.ndarray,
    scores: np.ndarray,
    crops: Mapping[str, Any],
    detections: Detections,
    skeleton: str,
    keypoint_threshold: float,
) -> Poses:
    """Poses in image pixels from the crop-pixel keypoints of ``crop.topdown``'s crops.

    Args:
        keypoints: (N, K, 2) crop pixels; scores: (N, K).
        crops: ``frame.meta["crops"]`` (``inverse`` (N, 2, 3), ``detection`` (N,)).
        detections: the frame's detections, whose boxes and scores the people keep.
        skeleton: keypoint set name.
        keypoint_threshold: see :func:`instance_scores`.
    """
    rows = np.asarray(crops["detection"], np.int64)
    return Poses(
        keypoints=crops_to_image(keypoints, crops["inverse"]),
        scores=scores,
        boxes=detections.xyxy[rows],
        instance_scores=instance_scores(detections.scores[rows], scores, keypoint_threshold),
        skeleton=skeleton,
    )


def empty_poses(num_keypoints: int, skeleton: str) -> Poses:
    """No people, but the skeleton named, so that downstream nodes know what would come."""
    return Poses(
        keypoints=np.zeros((0, num_keypoints, 2), np.float32),
        scores=np.zeros((0, num_keypoints), np.float32),
        skeleton=skeleton,
    )


def whole_image_poses(
    instances: PoseInstances, letterbox: Letterbox, skeleton: str
) -> tuple[Poses, Detections]:
    """Poses and person boxes in image pixels from one image's decoded instances.

    Args:
        instances: from the HPRNet or ER-Pose codec, in network-input pixels.
        letterbox: where the image landed in the network input.
        skeleton: keypoint set name.

    Returns:
        ``Poses`` (boxes and instance scores from the instances) and ``Detections`` (the
        same boxes, label 0: person).
    """
    ox, oy = letterbox.offset
    sx, sy = letterbox.scale
    keypoints = (instances.keypoints - np.float32((ox, oy))) / np.float32((sx, sy))
    boxes = letterbox.to_image(instances.boxes)
    people = Poses(
        keypoints=keypoints.astype(np.float32),
        scores=instances.keypoint_scores,
        boxes=boxes,
        instance_scores=instances.scores,
        skeleton=skeleton,
    )
    found = Detections(boxes, instances.scores, np.zeros(len(boxes), np.int64))
    return people, found


def letterbox_to_meta(box: Letterbox) -> dict[str, list[float]]:
    """A :class:`Letterbox` as plain lists, to travel in ``pose_outputs``."""
    return {
        "scale": list(box.scale),
        "offset": list(box.offset),
        "image_size": list(box.image_size),
    }


def letterbox_from_meta(meta: Mapping[str, Any]) -> Letterbox:
    return Letterbox(
        tuple(float(v) for v in meta["scale"]),
        tuple(float(v) for v in meta["offset"]),
        tuple(int(v) for v in meta["image_size"]),
    )


def decode_whole_image(codec: Any, outputs: Mapping[str, np.ndarray]) -> PoseInstances:
    """One image's instances from HPRNet heads (each (1, C, H, W)) or ER-Pose ``poses``
    (1, A, 1 + 3K), in network-input pixels."""
    if isinstance(codec, codecs.ERPoseCodec):
        return codec.decode(np.asarray(outputs["poses"], np.float32))
    return codec.decode({k: np.asarray(v, np.float32) for k, v in outputs.items()})


class _Decoder(Node):
    """Reads ``frame.meta["pose_outputs"]`` and writes ``frame.poses``; see the module doc.

    Parameters:
        codec_kwargs: codec arguments that replace what the model node sent (e.g.
            ``refine: dark`` for DARK decoding of MSRA heatmaps, a ``center_threshold``).
    """

    accepts: tuple[str, ...] = ()

    def __init__(self, codec_kwargs: dict | None = None):
        self.codec_kwargs = dict(codec_kwargs or {})
        self._codecs: dict[str, Any] = {}

    def setup(self, ctx: Context) -> None:
        super().setup(ctx)
        self._codecs = {}

    def codec(self, sent: Mapping[str, Any]) -> Any:
        """The codec the outputs name, built once per distinct set of arguments."""
        name = sent["codec"]
        if name not in self.accepts:
            raise NodeError(
                f"{self.ctx.name}: {self.type_name} decodes {', '.join(self.accepts)} outputs, "
                f"the pose node sent {name!r}: use decode.{_node_for(name)}"
            )
        kwargs = {**sent.get("codec_kwargs", {}), **self.codec_kwargs}
        key = repr((name, sorted(kwargs.items())))
        if key not in self._codecs:
            try:
                self._codecs[key] = codecs.build(name, **kwargs)
            except (TypeError, ValueError) as exc:
                raise NodeError(f"{self.ctx.name}: cannot build codec {name!r}: {exc}") from None
        return self._codecs[key]

    def outputs_of(self, frame: Frame) -> dict[str, Any]:
        sent = frame.meta.get("pose_outputs")
        if sent is None:
            raise NodeError(
                f"{self.ctx.name}: frame has no meta['pose_outputs']: put a pose node with "
                "decode: false before this decoder"
            )
        return sent


def _node_for(codec_name: str) -> str:
    if codec_name in HEATMAP_CODECS:
        return "heatmap"
    if codec_name in SIMCC_CODECS:
        return "simcc"
    return codec_name


class _TopDownDecoder(_Decoder):
    def process(self, frame: Frame) -> Frame:
        sent = self.outputs_of(frame)
        codec = self.codec(sent)
        skeleton = skeletons.get(sent["skeleton"])
        crops = frame.meta.get("crops")
        if crops is None:
            raise NodeError(f"{self.ctx.name}: frame has no meta['crops'] to map keypoints back")
        meta = {k: v for k, v in frame.meta.items() if k != "pose_outputs"}
        if len(crops["detection"]) == 0:
            return frame.replace(
                poses=empty_poses(skeleton.num_keypoints, skeleton.name), meta=meta
            )
        keypoints, scores = decode_crops(codec, sent["outputs"], skeleton.flip_indices)
        poses = topdown_poses(
            keypoints,
            scores,
            crops,
            frame.detections,
            skeleton.name,
            float(sent.get("keypoint_threshold", 0.2)),
        )
        return frame.replace(poses=poses, meta=meta)


@register("decode.heatmap")
class HeatmapDecoder(_TopDownDecoder):
    """Heatmaps (MSRA, UDP; DARK with ``codec_kwargs: {refine: dark}``) -> image-pixel poses,
    merging the flip test when flipped heatmaps came along."""

    accepts = HEATMAP_CODECS


@register("decode.simcc")
class SimCCDecoder(_TopDownDecoder):
    """SimCC x/y vectors (RTMPose) -> image-pixel poses, merging the flip test."""

    accepts = SIMCC_CODECS


class _WholeImageDecoder(_Decoder):
    def process(self, frame: Frame) -> Frame:
        sent = self.outputs_of(frame)
        codec = self.codec(sent)
        instances = decode_whole_image(codec, sent["outputs"])
        poses, found = whole_image_poses(
            instances, letterbox_from_meta(sent["letterbox"]), sent["skeleton"]
        )
        meta = {k: v for k, v in frame.meta.items() if k != "pose_outputs"}
        return frame.replace(poses=poses, detections=found, meta=meta)


@register("decode.hprnet")
class HPRNetDecoder(_WholeImageDecoder):
    """HPRNet heads -> whole-body poses (wholebody133) and person boxes in image pixels."""

    accepts = ("hprnet",)


@register("decode.erpose")
class ERPoseDecoder(_WholeImageDecoder):
    """ER-Pose per-anchor poses -> coco17 poses and their boxes in image pixels."""

    accepts = ("erpose",)
