"""Person detectors: ONNX models run with onnxruntime, batched, with letterbox preprocessing.

``detect.onnx`` recognises the layout of a model's outputs when it starts:

- ``mmdeploy``: two outputs, ``dets`` (B, N, 5) = x1, y1, x2, y2, score and ``labels``
  (B, N), boxes in model-input pixels, NMS done inside the model. MMDeploy exports every
  MMDetection detector this way (RTMDet, YOLOX, Faster R-CNN...).
- ``yolov8``: one output (B, 4 + C, A) = cx, cy, w, h and C class scores for each of A
  anchors, in model-input pixels, no NMS: the raw Ultralytics export (YOLOv8, YOLO11).
  NMS runs here, per class or across classes.

- ``yolox``: one output (B, A, 5 + C) from the original YOLOX export (``tools/
  export_onnx.py``): for each of A anchors over strides 8, 16, 32 (and 64 for P6 models)
  the offset of the box centre from its grid cell, the log of its size in strides,
  objectness and C class scores; decoded here (score = objectness x class), NMS here.
  A model exported with ``--decode_in_inference`` has pixels there instead: set
  ``decoded: true``.

Preprocessing is a letterbox: the image is resized keeping its aspect ratio to fit the
model input, padded with ``pad_value`` (on the right and bottom as MMDetection does, or
on both sides as Ultralytics does with ``center``), then normalised per channel. Its
parameters come, in this order, from the node's parameters, from the MMDeploy
``pipeline.json`` next to the model (``NAME.pipeline.json`` or ``pipeline.json``), and
from the defaults of the layout's exporter.
"""

from __future__ import annotations

import ast
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from nodes.sources import resolve_path
from posegraph.node import Context, Node, NodeError, register
from posegraph.packet import DETECT_SKIPPED, Detections, Frame
from posegraph.scheduler import Client, bucket_sizes, model_key

log = logging.getLogger(__name__)

LAYOUTS = {
    "mmdeploy": "outputs 'dets' (B, N, 5) and 'labels' (B, N), NMS in the model (MMDeploy)",
    "yolov8": "one output (B, 4 + C, A) of boxes and class scores, no NMS (Ultralytics)",
    "yolox": "one output (B, A, 5 + C) of grid offsets, objectness and class scores (YOLOX)",
}

# What each exporter's own preprocessing does when nothing else says.
_EXPORTER_DEFAULTS: dict[str, dict[str, Any]] = {
    # MMDetection's RTMDet: BGR, ImageNet statistics in BGR order, pad right/bottom with 114
    "mmdeploy": {
        "mean": (103.53, 116.28, 123.675),
        "std": (57.375, 57.12, 58.395),
        "bgr": True,
        "pad_value": 114,
        "center": False,
    },
    # Ultralytics: RGB scaled to 0..1, pad both sides with 114
    "yolov8": {
        "mean": (0.0, 0.0, 0.0),
        "std": (255.0, 255.0, 255.0),
        "bgr": False,
        "pad_value": 114,
        "center": True,
    },
    # YOLOX's own preprocessing (``preproc``): BGR pixels as they are, pad right/bottom 114
    "yolox": {
        "mean": (0.0, 0.0, 0.0),
        "std": (1.0, 1.0, 1.0),
        "bgr": True,
        "pad_value": 114,
        "center": False,
    },
}


@dataclass(frozen=True)
class Letterbox:
    """Where an image landed in the model input: ``x_input = x_image * scale + offset``.

    ``scale`` (sx, sy) and ``offset`` (left, top) in pixels; ``image_size`` (w, h) of the
    original image, to clip mapped boxes to it.
    """

    scale: tuple[float, float]
    offset: tuple[float, float]
    image_size: tuple[int, int]

    def to_image(self, xyxy: np.ndarray) -> np.ndarray:
        """Boxes (N, 4) xyxy in model-input pixels -> image pixels (N, 4) float32, clipped."""
        sx, sy = self.scale
        ox, oy = self.offset
        w, h = self.image_size
        out = (np.asarray(xyxy, np.float32) - (ox, oy, ox, oy)) / np.float32((sx, sy, sx, sy))
        np.clip(out[:, 0::2], 0, w, out=out[:, 0::2])
        np.clip(out[:, 1::2], 0, h, out=out[:, 1::2])
        return out


def letterbox(
    image: np.ndarray, size: tuple[int, int], pad_value: int = 114, center: bool = False
) -> tuple[np.ndarray, Letterbox]:
    """Resize ``image`` (H, W, 3) keeping its aspect ratio to fit ``size`` (w, h), then pad.

    Returns the padded image (h, w, 3) uint8 and the mapping back to ``image``. The scale
    of each axis is the rounded new size over the old one, so boxes map back exactly.
    """
    in_w, in_h = size
    h, w = image.shape[:2]
    r = min(in_w / w, in_h / h)
    new_w, new_h = min(in_w, int(w * r + 0.5)), min(in_h, int(h * r + 0.5))
    left, top = ((in_w - new_w) // 2, (in_h - new_h) // 2) if center else (0, 0)
    canvas = np.full((in_h, in_w, 3), pad_value, np.uint8)
    # bilinear, as both MMDetection and Ultralytics resize, so scores match theirs
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    canvas[top : top + new_h, left : left + new_w] = resized
    return canvas, Letterbox((new_w / w, new_h / h), (float(left), float(top)), (w, h))


def read_mmdeploy_pipeline(path: Path) -> dict[str, Any]:
    """Preprocessing found in an MMDeploy ``pipeline.json``: input_size, mean, std, bgr, pad_value.

    Only the keys the file states are returned; MMDeploy pads right and bottom, so
    ``center`` is False.
    """
    doc = json.loads(path.read_text())
    found: dict[str, Any] = {"center": False}
    for task in doc.get("pipeline", {}).get("tasks", []):
        for t in task.get("transforms", []):
            kind = t.get("type")
            if kind == "Resize" and "size" in t:
                found.setdefault("input_size", tuple(int(v) for v in t["size"]))
            elif kind == "Pad" and "size" in t:
                # the pad size is the tensor size, whatever the resize step said
                found["input_size"] = tuple(int(v) for v in t["size"])
                pad = t.get("pad_val", {})
                pad = pad.get("img", pad) if isinstance(pad, dict) else pad
                found["pad_value"] = int(pad[0] if isinstance(pad, list | tuple) else pad)
            elif kind == "Normalize":
                found["mean"] = tuple(float(v) for v in t["mean"])
                found["std"] = tuple(float(v) for v in t["std"])
                found["bgr"] = not t.get("to_rgb", False)
    return found


def recognise_layout(outputs: Sequence[tuple[str, Sequence[Any]]]) -> str:
    """The layout name of a model's outputs, given as (name, shape); None dims are dynamic.

    Raises NodeError naming the outputs and the layouts supported.
    """
    shapes = dict(outputs)
    if len(outputs) == 2 and set(shapes) == {"dets", "labels"}:
        if len(shapes["dets"]) == 3 and len(shapes["labels"]) == 2:
            return "mmdeploy"
    if len(outputs) == 1:
        shape = outputs[0][1]
        # (B, 4 + C, A): the channel axis is static and shorter than the anchor axis
        if len(shape) == 3 and isinstance(shape[1], int) and shape[1] > 4:
            if not isinstance(shape[2], int) or shape[2] > shape[1]:
                return "yolov8"
        # (B, A, 5 + C): the last axis is static and shorter than the anchor axis
        if len(shape) == 3 and isinstance(shape[2], int) and shape[2] > 5:
            if not isinstance(shape[1], int) or shape[1] > shape[2]:
                return "yolox"
    got = ", ".join(f"{n} {list(s)}" for n, s in outputs)
    known = "; ".join(f"{k}: {v}" for k, v in LAYOUTS.items())
    raise NodeError(
        f"the model's outputs ({got}) are not a detector layout this node knows ({known})"
    )


def nms_yolov8(
    raw: np.ndarray,
    score_threshold: float,
    iou_threshold: float,
    classes: Sequence[int] | None,
    class_agnostic: bool,
    max_detections: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes of one image from a raw YOLOv8 output (4 + C, A), after NMS.

    Each anchor keeps its best class among ``classes`` (all when None), so a person
    scored below another class at the same anchor is still found by a person-only
    filter. Returns xyxy (M, 4) float32 in model-input pixels, scores (M,), labels (M,)
    int64, best score first.
    """
    class_scores = raw[4:].T  # (A, C)
    class_ids = np.arange(class_scores.shape[1]) if classes is None else np.asarray(classes)
    class_scores = class_scores[:, class_ids]
    best = class_scores.argmax(1)
    scores = class_scores[np.arange(len(best)), best]
    keep = scores >= score_threshold
    cxcywh, scores, labels = raw[:4, keep].T, scores[keep], class_ids[best[keep]]
    xywh = np.concatenate([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, 2:]], axis=1)
    if class_agnostic:
        picked = cv2.dnn.NMSBoxes(xywh, scores, score_threshold, iou_threshold)
    else:
        picked = cv2.dnn.NMSBoxesBatched(xywh, scores, labels, score_threshold, iou_threshold)
    picked = np.asarray(picked, np.int64).reshape(-1)
    picked = picked[np.argsort(-scores[picked], kind="stable")][:max_detections]
    xywh = xywh[picked]
    xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    return (
        xyxy.astype(np.float32),
        scores[picked].astype(np.float32),
        labels[picked].astype(np.int64),
    )


def yolox_grid(input_size: tuple[int, int], anchors: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The grid cell (A, 2) x, y and stride (A, 1) of each anchor of a YOLOX model with input
    (w, h), in the export's order: stride 8, 16, 32 (then 64 for a P6 model), each row by
    row. ``anchors``: the model's A, when static, to tell P6 models apart and to check."""
    w, h = input_size
    options = []
    for strides in ((8, 16, 32), (8, 16, 32, 64)):
        cells, steps = [], []
        for stride in strides:
            ys, xs = np.mgrid[0 : h // stride, 0 : w // stride]
            cells.append(np.stack([xs.ravel(), ys.ravel()], 1))
            steps.append(np.full((xs.size, 1), stride))
        grid, step = np.concatenate(cells).astype(np.float32), np.concatenate(steps)
        if anchors is None or len(grid) == anchors:
            return grid, step.astype(np.float32)
        options.append(f"{len(grid)} for strides {list(strides)}")
    raise NodeError(
        f"the YOLOX output has {anchors} anchors, but a {w}x{h} input has "
        f"{' or '.join(options)}: give the input_size the model was exported for"
    )


def decode_yolox(
    raw: np.ndarray, grid: np.ndarray, stride: np.ndarray, decoded: bool
) -> np.ndarray:
    """One image's YOLOX output (A, 5 + C) as YOLOv8's layout (4 + C, A): cx, cy, w, h in
    input pixels and the class scores times objectness."""
    if decoded:
        centre, size = raw[:, :2], raw[:, 2:4]
    else:
        centre = (raw[:, :2] + grid) * stride
        size = np.exp(np.minimum(raw[:, 2:4], 20.0)) * stride
    scores = raw[:, 5:] * raw[:, 4:5]
    return np.concatenate([centre, size, scores], axis=1).T


def onnx_providers(ort, device: str) -> list[Any]:
    """onnxruntime execution providers for ``device`` (cpu, cuda, cuda:N); a clear error when
    CUDA is asked for and this onnxruntime has no CUDA provider."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise NodeError(
            f"device {device!r} asked for, but this onnxruntime has no CUDA provider "
            f"(it has {', '.join(available)}): install onnxruntime-gpu "
            "(pip install -e '.[gpu]') or use device: cpu"
        )
    index = int(device.partition(":")[2] or 0)
    return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]


@register("detect.onnx")
class OnnxDetector(Node):
    """Finds people (or other classes) with an ONNX detector; writes ``frame.detections``.

    Parameters:
        model: path of the ``.onnx`` file.
        score_threshold: boxes scoring below it are dropped.
        iou_threshold: NMS overlap limit, for layouts without NMS in the model (yolov8,
            yolox).
        classes: class ids to keep, ``[0]`` (person) by default; null keeps every class.
        class_agnostic: NMS across classes instead of per class (yolov8, yolox).
        decoded: a YOLOX model exported with ``--decode_in_inference`` (boxes in pixels).
        max_detections: at most this many boxes per image, best first.
        input_size: model input (w, h), when the model's input shape is dynamic and no
            pipeline.json gives it.
        mean, std, bgr: normalisation ``(pixel - mean) / std`` in the model's channel
            order, and whether that order is BGR (else RGB).
        pad_value: grey level of the letterbox padding.
        center: pad on both sides (Ultralytics) instead of right and bottom (MMDetection).
        device: ``cpu`` or ``cuda`` / ``cuda:N`` (needs onnxruntime-gpu).
        batch: most images per session call when several streams or replicas share the
            model on the device scheduler (a model with a fixed batch takes only that).
            Default: the frames the node keeps in flight, one per stream it serves.
        threads: onnxruntime intra-op threads, 0 for its default.

    The model runs through the device scheduler (:mod:`posegraph.scheduler`); a frame whose
    deadline cannot be met leaves without detections and ``meta["detect_skipped"]``, for
    the tracker to coast. :meth:`detect_batch` runs B images directly, in one session call.
    """

    uses_device = True
    concurrent = True

    def __init__(
        self,
        model: str,
        score_threshold: float = 0.3,
        iou_threshold: float = 0.5,
        classes: tuple[int, ...] | None = (0,),
        class_agnostic: bool = False,
        max_detections: int = 100,
        input_size: tuple[int, ...] | None = None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        bgr: bool | None = None,
        pad_value: int | None = None,
        center: bool | None = None,
        device: str = "cpu",
        batch: int | None = None,
        threads: int = 0,
        decoded: bool = False,
    ):
        for name, value in (("input_size", input_size), ("mean", mean), ("std", std)):
            want = 2 if name == "input_size" else 3
            if value is not None and len(value) != want:
                raise NodeError(f"{name} needs {want} numbers, got {list(value)}")
        if not (device == "cpu" or device == "cuda" or device.startswith("cuda:")):
            raise NodeError(f"device {device!r}: use cpu, cuda or cuda:N")
        if max_detections < 1:
            raise NodeError(f"max_detections must be at least 1, got {max_detections}")
        if batch is not None and batch < 1:
            raise NodeError(f"batch must be at least 1, got {batch}")
        self.batch = batch
        self.model = model
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold
        self.classes = None if classes is None else tuple(classes)
        self.class_agnostic = class_agnostic
        self.max_detections = max_detections
        self.given = {
            "input_size": input_size,
            "mean": mean,
            "std": std,
            "bgr": bgr,
            "pad_value": pad_value,
            "center": center,
        }
        self.device = device
        self.threads = threads
        self.decoded = decoded

    # ------------------------------------------------------------------ setup

    def setup(self, ctx: Context) -> None:
        super().setup(ctx)
        import onnxruntime as ort

        path = resolve_path(ctx, self.model)
        if not path.is_file():
            raise NodeError(
                f"detector model not found: {self.model}: give the path of an .onnx file"
            )
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=onnx_providers(ort, self.device)
            )
        except Exception as exc:  # onnxruntime raises its own exception types per failure
            raise NodeError(f"onnxruntime cannot load {path}: {exc}") from exc

        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            got = ", ".join(f"{i.name} {i.shape}" for i in inputs)
            raise NodeError(f"{path}: expected one image input (B, 3, H, W), got {got}")
        self.input_name = inputs[0].name
        b, _, h, w = (d if isinstance(d, int) else None for d in inputs[0].shape)
        # a model exported for a fixed batch runs bigger batches in chunks of that size
        self.fixed_batch = b
        outputs = [
            (o.name, [d if isinstance(d, int) else None for d in o.shape])
            for o in self.session.get_outputs()
        ]
        try:
            self.layout = recognise_layout(outputs)
        except NodeError as exc:
            raise NodeError(f"{path}: {exc}") from None
        # fetched in the order the decoding reads them, whatever order the file lists them in
        self.output_names = ["dets", "labels"] if self.layout == "mmdeploy" else [outputs[0][0]]
        extra = self._read_metadata(path)
        self._configure(path, (w, h) if w and h else None, outputs, extra)
        if self.fixed_batch is None:
            self._probe_batch(ort, path)
        w, h = self.input_size
        batch = self.batch or ctx.in_flight
        self.client = Client.attach(
            self.device,
            model_key(path.stem, str(path.resolve()), w, h),
            self._session_outputs,
            (self.fixed_batch,) if self.fixed_batch else bucket_sizes(batch),
            np.zeros((3, h, w), np.float32),
            role="image",
            slots=ctx.in_flight,
        )
        log.info(
            "detect.onnx %s: %s layout, input %dx%d, batch %s, %s",
            path.name,
            self.layout,
            *self.input_size,
            self.fixed_batch or "any",
            self.session.get_providers()[0],
        )

    def _probe_batch(self, ort, path: Path) -> None:
        """Run a batch of two blank images once: some exports (RTMDet through MMDeploy,
        whose NMS is traced for one image) declare a dynamic batch axis yet fail on B > 1.
        Those run one image per call."""
        w, h = self.input_size
        blank = np.zeros((2, 3, h, w), np.float32)
        quiet = ort.RunOptions()
        quiet.log_severity_level = 4  # the expected failure is not an error worth a log line
        try:
            outputs = self.session.run(self.output_names, {self.input_name: blank}, quiet)
            if all(len(o) == 2 for o in outputs):
                return
        except Exception as exc:  # onnxruntime raises its own exception types per failure
            log.debug("batch probe of %s failed: %s", path, exc)
        log.info("%s runs one image per call: its graph does not take batches", path.name)
        self.fixed_batch = 1

    def _read_metadata(self, path: Path) -> dict[str, Any]:
        """Ultralytics writes task, class names and image size into the model's metadata."""
        meta = self.session.get_modelmeta().custom_metadata_map
        found: dict[str, Any] = {}
        task = meta.get("task")
        if task is not None and task != "detect":
            raise NodeError(
                f"{path} is an Ultralytics {task!r} model; detect.onnx runs 'detect' models"
            )
        try:
            if "names" in meta:
                found["num_classes"] = len(ast.literal_eval(meta["names"]))
            if "imgsz" in meta:
                h, w = ast.literal_eval(meta["imgsz"])
                found["input_size"] = (int(w), int(h))
        except (ValueError, SyntaxError, TypeError):
            log.warning("%s: unreadable Ultralytics metadata, ignored", path)
        return found

    def _configure(
        self,
        path: Path,
        static_size: tuple[int, int] | None,
        outputs: list[tuple[str, list[int | None]]],
        extra: dict[str, Any],
    ) -> None:
        """Settle the preprocessing: parameters, then pipeline.json, then exporter defaults."""
        from_json: dict[str, Any] = {}
        for candidate in (path.with_suffix(".pipeline.json"), path.parent / "pipeline.json"):
            if candidate.is_file():
                try:
                    from_json = read_mmdeploy_pipeline(candidate)
                except (ValueError, KeyError, TypeError, IndexError) as exc:
                    raise NodeError(
                        f"cannot read the preprocessing in {candidate}: {exc}"
                    ) from None
                break
        if self.layout == "mmdeploy" and not from_json:
            log.warning(
                "%s: no pipeline.json next to the model; using RTMDet's preprocessing "
                "(BGR, ImageNet mean/std, pad 114): set mean, std, bgr if the model differs",
                path,
            )
        settled = {**_EXPORTER_DEFAULTS[self.layout], **extra, **from_json}
        settled.update({k: v for k, v in self.given.items() if v is not None})

        size = settled.get("input_size")
        if size is None:
            size = static_size
        if size is None:
            raise NodeError(
                f"{path}: the model's input size is dynamic and no pipeline.json states it: "
                "give input_size: [width, height]"
            )
        if static_size is not None and tuple(size) != static_size:
            raise NodeError(
                f"{path}: input_size {list(size)} differs from the model's fixed input "
                f"{list(static_size)}: leave input_size out or export the model again"
            )
        self.input_size = (int(size[0]), int(size[1]))
        self.mean = np.asarray(settled["mean"], np.float32)
        self.inv_std = 1.0 / np.asarray(settled["std"], np.float32)
        self.bgr = bool(settled["bgr"])
        self.pad_value = int(settled["pad_value"])
        self.center = bool(settled["center"])

        if self.layout == "yolox":
            try:
                self.grid, self.stride = yolox_grid(self.input_size, outputs[0][1][1])
            except NodeError as exc:
                raise NodeError(f"{path}: {exc}") from None
        if self.layout in ("yolov8", "yolox") and self.classes is not None:
            shape = outputs[0][1]
            num_classes = shape[1] - 4 if self.layout == "yolov8" else shape[2] - 5
            bad = [c for c in self.classes if not 0 <= c < num_classes]
            if bad:
                raise NodeError(
                    f"{path}: classes {bad} out of range: the model has {num_classes} classes "
                    f"(0..{num_classes - 1})"
                )

    # ------------------------------------------------------------------- work

    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, list[Letterbox]]:
        """Images (H, W, 3) uint8 BGR -> the input tensor (B, 3, h, w) float32 and mappings."""
        padded, boxes = zip(
            *(letterbox(im, self.input_size, self.pad_value, self.center) for im in images),
            strict=True,
        )
        batch = np.stack(padded)
        if not self.bgr:
            batch = batch[..., ::-1]
        blob = (batch.astype(np.float32) - self.mean) * self.inv_std
        return np.ascontiguousarray(blob.transpose(0, 3, 1, 2)), list(boxes)

    def _run(self, blob: np.ndarray) -> list[list[np.ndarray]]:
        """Model outputs per image, ``[image][output]``: one session call for the batch, or
        one per chunk of the model's fixed batch size (outputs may differ in length per
        chunk, so they are not concatenated)."""
        step = self.fixed_batch or len(blob)
        per_image: list[list[np.ndarray]] = []
        for start in range(0, len(blob), step):
            part = blob[start : start + step]
            real = len(part)
            if real < step:  # the last chunk is padded up to the fixed size
                part = np.concatenate([part, np.zeros((step - real, *blob.shape[1:]), blob.dtype)])
            outputs = self.session.run(self.output_names, {self.input_name: part})
            per_image.extend([out[b] for out in outputs] for b in range(real))
        return per_image

    def _session_outputs(self, blob: np.ndarray) -> dict[str, np.ndarray]:
        """One session call on a batch (B, 3, h, w): output name -> (B, ...)."""
        outputs = self.session.run(self.output_names, {self.input_name: blob})
        return dict(zip(self.output_names, outputs, strict=True))

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detections of B images (H_i, W_i, 3) uint8 BGR, in image pixels, in one model call
        (or one per image for a model that takes no batches, see :meth:`_probe_batch`)."""
        if not images:
            return []
        blob, mappings = self.preprocess(images)
        return [
            self._detections(outputs, mapping)
            for outputs, mapping in zip(self._run(blob), mappings, strict=True)
        ]

    def _detections(self, outputs: Sequence[np.ndarray], mapping: Letterbox) -> Detections:
        """One image's detections in image pixels from its model outputs (in the order of
        ``output_names``)."""
        if self.layout == "mmdeploy":
            xyxy, scores, labels = self._select_mmdeploy(*outputs)
        else:
            raw = outputs[0]
            if self.layout == "yolox":
                raw = decode_yolox(raw, self.grid, self.stride, self.decoded)
            xyxy, scores, labels = nms_yolov8(
                raw,
                self.score_threshold,
                self.iou_threshold,
                self.classes,
                self.class_agnostic,
                self.max_detections,
            )
        xyxy = mapping.to_image(xyxy)
        # boxes that lay wholly in the padding are empty once clipped to the image
        real = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
        return Detections(xyxy[real], scores[real], labels[real])

    def _select_mmdeploy(
        self, dets: np.ndarray, labels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """dets (N, 5), labels (N,) of one image -> kept xyxy, scores, labels, best first."""
        keep = dets[:, 4] >= self.score_threshold
        if self.classes is not None:
            keep &= np.isin(labels, self.classes)
        dets, labels = dets[keep], labels[keep]
        order = np.argsort(-dets[:, 4], kind="stable")[: self.max_detections]
        return dets[order, :4], dets[order, 4], labels[order].astype(np.int64)

    def process(self, frame: Frame) -> Frame:
        blob, (mapping,) = self.preprocess([frame.image])
        result = self.client.run(
            blob,
            self.client.image_deadline(frame.deadline, frame.captured_at),
            frame.stream,
            frame.captured_at,
            self.ctx.tail,
        )
        try:
            if not result.done[0]:
                return frame.replace(
                    detections=Detections.empty(), meta={**frame.meta, DETECT_SKIPPED: True}
                )
            outputs = [result.outputs[name][0] for name in self.output_names]
            return frame.replace(detections=self._detections(outputs, mapping))
        finally:
            self.client.finished()

    def close(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close()
            self.client = None
