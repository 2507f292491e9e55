"""Pose model nodes: top-down on person crops, bottom-up (HPRNet) and one-stage (ER-Pose).

``pose.topdown`` runs a zoo model (HRNet, DE-HRNet, SimpleBaseline) with torch, or any
ONNX top-down model (a zoo export, RTMPose with SimCC outputs...) with onnxruntime, on the
crops of ``crop.topdown``. ``pose.bottomup`` and ``pose.onestage`` run on the whole image,
letterboxed into the network input. Each either decodes in place (``decode: true``, the
default) or leaves the raw outputs in ``frame.meta["pose_outputs"]`` for a ``decode.*``
node (:mod:`nodes.decoders`, which holds the one decoding path both use).

Models run through their device's scheduler (:mod:`posegraph.scheduler`): a frame's crops
(or its image) are one request with the frame's deadline; batches hold items of many frames
and streams, padded to fixed bucket sizes, so the model only ever sees a few shapes (what
CUDA graphs, cudnn autotuning and onnxruntime's shape caches want). Work that cannot meet
the deadline is skipped and marked in ``frame.meta`` (``pose_skipped``: person rows;
``detect_skipped``: the whole frame) for the tracker to coast.

Weights: the zoo models load an official ``.pth`` or our ``.safetensors``; a file that does
not fit the model stops the node at setup. No weights at all is allowed only with
``allow_random: true``, so that a pipeline never runs random weights by accident.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from nodes import decoders
from nodes.crop import DeviceFrames, read_only_tensor, warp_crops
from nodes.detectors import letterbox, onnx_providers
from nodes.sources import resolve_path
from nodes.trackers import box_iou
from posegraph import codecs, skeletons
from posegraph.node import Context, Node, NodeError, register
from posegraph.packet import DETECT_SKIPPED, POSE_SKIPPED, Detections, Frame
from posegraph.scheduler import Client, bucket_sizes, model_key

log = logging.getLogger(__name__)

#: The model's outputs by name, each (B, ...) float32.
Outputs = dict[str, np.ndarray]


class Normalise:
    """uint8 BGR images (B, h, w, 3) -> model input (B, 3, h, w): colour order, then
    ``(pixel - mean) / std`` with mean and std on the 0-255 scale in the model's order."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], color: str):
        self.mean = np.asarray(mean, np.float32)
        self.inv_std = 1.0 / np.asarray(std, np.float32)
        self.rgb = color == "rgb"

    def numpy(self, images: np.ndarray) -> np.ndarray:
        if self.rgb:
            images = images[..., ::-1]
        blob = (images.astype(np.float32) - self.mean) * self.inv_std
        return np.ascontiguousarray(blob.transpose(0, 3, 1, 2))

    def torch(self, images: Any, dtype: Any) -> Any:
        """The same on a torch uint8 tensor (B, h, w, 3), on its device."""
        return self.torch_planar(images.permute(0, 3, 1, 2).float(), dtype)

    def torch_planar(self, x: Any, dtype: Any) -> Any:
        """The same on float BGR pixels (B, 3, h, w) on the 0-255 scale, on their device."""
        import torch

        if self.rgb:
            x = x.flip(1)
        mean = torch.as_tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        inv_std = torch.as_tensor(self.inv_std, device=x.device).view(1, 3, 1, 1)
        return ((x - mean) * inv_std).to(dtype).contiguous()


class TorchModel:
    """A zoo model on a torch device: uint8 BGR images (B, h, w, 3) in, named numpy out.

    Preprocessing runs on the model's device, so on CUDA only uint8 pixels are copied. With
    ``frames`` the items are crop rows instead (:class:`~nodes.crop.DeviceFrames`), whose
    crops of ``size`` (w, h) are sampled on the device from frames uploaded once.
    """

    def __init__(
        self,
        model: Any,
        normalise: Normalise,
        device: str,
        precision: str,
        single_output: str,
        frames: DeviceFrames | None = None,
        size: tuple[int, int] | None = None,
    ):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
        self.model = model.to(self.device, self.dtype).eval()
        self.normalise = normalise
        self.single_output = single_output
        self.frames = frames
        self.size = size

    def __call__(self, images: np.ndarray) -> Outputs:
        torch = self.torch
        with torch.inference_mode():
            if self.frames is not None:
                crops = self.frames.crops(images, self.size)
                x = self.normalise.torch_planar(crops, self.dtype)
            else:
                pixels = read_only_tensor(torch, images).to(self.device)
                x = self.normalise.torch(pixels, self.dtype)
            out = self.model(x)
            named = out if isinstance(out, dict) else {self.single_output: out}
            return {k: v.float().cpu().numpy() for k, v in named.items()}


class OnnxModel:
    """An onnxruntime session: uint8 BGR images (B, h, w, 3) in, outputs under the names
    the decoders read (``names``: decoder name -> the graph's output name)."""

    def __init__(self, session: Any, normalise: Normalise, names: dict[str, str]):
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.normalise = normalise
        self.wanted = list(names)
        self.graph_names = list(names.values())

    def __call__(self, images: np.ndarray) -> Outputs:
        out = self.session.run(self.graph_names, {self.input_name: self.normalise.numpy(images)})
        return {k: np.asarray(v, np.float32) for k, v in zip(self.wanted, out, strict=True)}


def _pairwise(
    model: Callable[[np.ndarray], Outputs], fixed_batch: int | None = None
) -> Callable[[np.ndarray], Outputs]:
    """A model on pairs (B, 2, h, w, 3) -> outputs (B, 2, ...): one call on the 2B images,
    or calls of ``fixed_batch`` images (the last padded) for a graph of one batch size."""

    def run(pairs: np.ndarray) -> Outputs:
        images = pairs.reshape(-1, *pairs.shape[2:])
        step = fixed_batch or len(images)
        parts = []
        for start in range(0, len(images), step):
            chunk = images[start : start + step]
            real = len(chunk)
            if real < step:
                pad = np.zeros((step - real, *chunk.shape[1:]), chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            parts.append({k: v[:real] for k, v in model(chunk).items()})
        out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return {k: v.reshape(len(pairs), 2, *v.shape[1:]) for k, v in out.items()}

    return run


def _static(dim: Any) -> int | None:
    return dim if isinstance(dim, int) else None


class _ModelNode(Node):
    """What every pose model node shares: weights, backend, device, the scheduler client.

    Subclasses settle ``self.settled`` (input_size, mean, std, color, skeleton, codec,
    codec_kwargs) and call :meth:`_start_model`.
    """

    uses_device = True
    concurrent = True

    def process(self, frame: Frame) -> Frame:
        try:
            return self._process(frame)
        finally:
            if getattr(self, "client", None) is not None:
                self.client.finished()  # how long the node worked after the model

    def _process(self, frame: Frame) -> Frame:
        raise NotImplementedError

    def _take_common(
        self,
        model: str | None,
        weights: str | None,
        allow_random: bool,
        onnx: str | None,
        backend: str | None,
        device: str,
        fp16: bool,
        decode: bool,
        overrides: dict | None,
        codec_kwargs: dict | None,
        threads: int,
        bf16: bool = False,
    ) -> None:
        if backend not in (None, "torch", "onnxruntime"):
            raise NodeError(f"backend {backend!r}: use torch or onnxruntime")
        backend = backend or ("onnxruntime" if onnx else "torch")
        if backend == "onnxruntime" and onnx is None:
            raise NodeError(
                "backend onnxruntime needs an onnx model file: export the zoo model with "
                "`posegraph export MODEL --weights W --out DIR` and give onnx: DIR/MODEL.onnx"
            )
        if backend == "torch" and onnx is not None:
            raise NodeError("an onnx model runs with backend onnxruntime, not torch")
        if onnx is not None and weights is not None:
            raise NodeError("an onnx model carries its weights: leave weights out")
        if not (device == "cpu" or device == "cuda" or device.startswith("cuda:")):
            raise NodeError(f"device {device!r}: use cpu, cuda or cuda:N")
        if fp16 and (device == "cpu" or backend != "torch"):
            raise NodeError("fp16 runs with backend torch on a cuda device only")
        if bf16:
            if fp16:
                raise NodeError("fp16 and bf16: choose one")
            if backend != "torch":
                raise NodeError("bf16 runs with backend torch only")
            from posegraph.models import cpu_has_bfloat16

            if device == "cpu" and not cpu_has_bfloat16():
                raise NodeError(
                    "bf16 on a CPU that does not compute in bfloat16 (no AMX or AVX512-BF16: "
                    "`posegraph doctor` says), where it runs slower than float32: leave it off"
                )
        self.model_name = model
        self.weights = weights
        self.allow_random = allow_random
        self.onnx = onnx
        self.backend = backend
        self.device = device
        self.fp16 = fp16
        self.bf16 = bf16
        self.precision = "fp16" if fp16 else "bf16" if bf16 else "fp32"
        self.decode = decode
        self.overrides = dict(overrides or {})
        self.codec_kwargs = dict(codec_kwargs or {})
        self.threads = threads
        self.session: Any = None

    # -------------------------------------------------------------- settings

    def _zoo_spec(self) -> Any:
        from posegraph.models import spec_of

        try:
            spec = spec_of(self.model_name, **self.overrides)
        except ValueError as exc:
            raise NodeError(f"{self.ctx.name}: {exc}") from None
        return spec

    def _open_onnx(self) -> None:
        """Open the ONNX session; its input shape is read by the subclass."""
        import onnxruntime as ort

        path = resolve_path(self.ctx, self.onnx)
        if not path.is_file():
            raise NodeError(f"{self.ctx.name}: onnx model not found: {self.onnx}")
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        providers = onnx_providers(ort, self.device)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types per failure
            raise NodeError(f"{self.ctx.name}: onnxruntime cannot load {path}: {exc}") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            got = ", ".join(f"{i.name} {i.shape}" for i in inputs)
            raise NodeError(f"{path}: expected one image input (B, 3, H, W), got {got}")
        self.onnx_path = path

    def _onnx_input(self) -> tuple[int | None, tuple[int, int] | None]:
        """(fixed batch or None, static (w, h) or None) of the ONNX input."""
        b, _, h, w = (_static(d) for d in self.session.get_inputs()[0].shape)
        return b, ((w, h) if w and h else None)

    def _onnx_names(self, codec: str) -> dict[str, str]:
        """Decoder output name -> graph output name: by name, else by order when the count
        matches (an export that called its single output ``output``)."""
        wanted = decoders.output_names(codec)
        graph = [o.name for o in self.session.get_outputs()]
        if all(n in graph for n in wanted):
            return {n: n for n in wanted}
        if len(graph) == len(wanted):
            return dict(zip(wanted, graph, strict=True))
        raise NodeError(
            f"{self.onnx_path}: outputs {graph} are not what the {codec} codec reads "
            f"({', '.join(wanted)}): rename the outputs or set codec"
        )

    def _check_onnx_keypoints(self, names: dict[str, str]) -> None:
        """A top-down graph's K (axis 1 of its outputs, where static) is the skeleton's."""
        if self.settled["codec"] not in decoders.TOPDOWN_CODECS:
            return
        shapes = {o.name: o.shape for o in self.session.get_outputs()}
        k = self.skeleton.num_keypoints
        for graph_name in names.values():
            shape = shapes[graph_name]
            if len(shape) >= 2 and _static(shape[1]) is not None and shape[1] != k:
                raise NodeError(
                    f"{self.onnx_path}: output {graph_name} has {shape[1]} keypoints, skeleton "
                    f"{self.skeleton.name} has {k}: set skeleton to the model's keypoint set"
                )

    def _check_device(self) -> None:
        if self.device == "cpu" or self.backend != "torch":
            return
        import torch

        index = int(self.device.partition(":")[2] or 0)
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise NodeError(
                f"{self.ctx.name}: device {self.device!r} asked for, but torch sees "
                f"{torch.cuda.device_count()} CUDA devices: use device: cpu or install a "
                "CUDA build of torch"
            )

    def _load_zoo_model(self) -> Any:
        """The zoo model with its weights, on the CPU."""
        from posegraph import weights as shipped
        from posegraph.models import build, load_checkpoint

        if self.weights is None and not self.allow_random:
            have = ", ".join(shipped.available()) or "none"
            raise NodeError(
                f"{self.ctx.name}: no weights for {self.model_name}: give weights: PATH "
                f"(.pth or .safetensors), weights: builtin (shipped for: {have}), or "
                "allow_random: true to run random weights on purpose (tests, benchmarks)"
            )
        if self.weights == shipped.BUILTIN:
            try:
                path = shipped.path(self.model_name)
            except ValueError as exc:
                raise NodeError(f"{self.ctx.name}: {exc}") from None
        else:
            path = None if self.weights is None else resolve_path(self.ctx, self.weights)
        if path is not None and not path.is_file():
            raise NodeError(f"{self.ctx.name}: weights file not found: {self.weights}")
        self.weights_path = None if path is None else str(path.resolve())
        try:
            model, _ = build(self.model_name, **self.overrides)
        except ValueError as exc:
            raise NodeError(f"{self.ctx.name}: {exc}") from None
        if path is None:
            log.warning("%s: %s runs with random weights", self.ctx.name, self.model_name)
            return model
        try:
            load_checkpoint(model, path)
        except ValueError as exc:
            raise NodeError(
                f"{self.ctx.name}: weights {path} do not fit {self.model_name}: {exc}"
            ) from None
        except Exception as exc:  # torch.load and safetensors raise their own types
            raise NodeError(f"{self.ctx.name}: cannot read weights {path}: {exc}") from None
        return model

    def _start_model(
        self, buckets: Sequence[int], example: np.ndarray, pairs: bool = False
    ) -> None:
        """The model on its device's scheduler, and the codec, from ``self.settled``.

        ``example`` is one item (for the warm-up of every bucket); with ``pairs`` an item is
        a crop and its mirror, (2, h, w, 3), and outputs come back (B, 2, ...).
        """
        s = self.settled
        normalise = Normalise(s["mean"], s["std"], s["color"])
        self._check_device()
        try:
            self.skeleton = skeletons.get(s["skeleton"])
        except ValueError as exc:
            raise NodeError(f"{self.ctx.name}: {exc}") from None
        try:
            self.codec = codecs.build(s["codec"], **s["codec_kwargs"])
        except (TypeError, ValueError) as exc:
            raise NodeError(f"{self.ctx.name}: cannot build codec {s['codec']!r}: {exc}") from None
        fixed_batch = None
        if self.session is not None:
            fixed_batch, _ = self._onnx_input()
            if fixed_batch is not None:
                # a graph exported for one batch size takes only that size (pairs: as many
                # as fit, at least one, run in calls of that size)
                buckets = (max(1, fixed_batch // 2) if pairs else fixed_batch,)
            names = self._onnx_names(s["codec"])
            self._check_onnx_keypoints(names)
            model: Callable[[np.ndarray], Outputs] = OnnxModel(self.session, normalise, names)
            name, origin = self.onnx_path.stem, str(self.onnx_path.resolve())
        else:
            single = decoders.output_names(s["codec"])[0]
            loaded = self._load_zoo_model()
            frames = getattr(self, "device_frames", None)
            size = self.input_size if frames is not None else None
            model = TorchModel(loaded, normalise, self.device, self.precision, single, frames, size)
            # nodes that load the same weights share one model on the scheduler; random
            # weights are never shared
            name = self.model_name
            origin = self.weights_path or f"random:{id(loaded)}"
        if pairs:
            model = _pairwise(model, fixed_batch)
        device_crops = getattr(self, "device_frames", None) is not None  # items are crop rows
        settings = (
            origin,
            self.backend,
            sorted(self.overrides.items()),
            self.precision,
            pairs,
            device_crops,
        )
        self.client = Client.attach(
            self.device,
            model_key(name, *settings, self.input_size, s["mean"], s["std"], s["color"]),
            model,
            buckets,
            example,
            role=self.role,
            slots=self.ctx.in_flight,
        )

    def _run(self, items: np.ndarray, frame: Frame, deadline: float | None = None) -> Any:
        """The scheduler's :class:`~posegraph.scheduler.Result` for this frame's items."""
        return self.client.run(
            items,
            frame.deadline if deadline is None else deadline,
            frame.stream,
            frame.captured_at,
            self.ctx.tail,
        )

    def _pose_outputs(self, outputs: Outputs, **extra: Any) -> dict[str, Any]:
        return {
            "codec": self.settled["codec"],
            "codec_kwargs": self.settled["codec_kwargs"],
            "skeleton": self.skeleton.name,
            "outputs": outputs,
            **extra,
        }

    def close(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close()
        self.client = None
        self.session = None
        fallback = getattr(self, "fallback", None)
        if fallback is not None:
            fallback.close()
            self.fallback = None


@register("pose.topdown")
class TopDownPose(_ModelNode):
    """Keypoints of each person crop of ``crop.topdown``; writes ``frame.poses``.

    Parameters:
        model: zoo name (hrnet_w32, de_hrnet_w32, simplebaseline_res50...); the default
            model when no onnx is given. With onnx it only supplies the settings below.
        weights: ``.pth`` (official release) or ``.safetensors`` for the zoo model, or
            ``builtin`` for the weights shipped with posegraph (``posegraph models``).
        allow_random: run without weights (random ones), for tests and benchmarks.
        overrides: zoo config overrides, e.g. ``{input_size: [96, 128]}``.
        onnx: path of an ONNX top-down model (input (B, 3, h, w); outputs ``heatmaps``, or
            ``simcc_x`` and ``simcc_y``), run with onnxruntime.
        input_size, mean, std, color, skeleton, codec, codec_kwargs: what the model wants
            and what its outputs mean (see ``ModelSpec``); they replace the zoo model's.
            An ONNX model without ``model`` needs at least ``codec``, and ``input_size``
            unless its input shape is static. Defaults: ImageNet mean/std in RGB, coco17.
        backend: ``torch`` or ``onnxruntime``; by default onnxruntime when onnx is given.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        fp16: half precision (torch on CUDA).
        bf16: bfloat16 (torch, on CUDA or on a CPU that computes in it: AMX or AVX512-BF16,
            as ``posegraph doctor`` says; refused on other CPUs, where it is slower). On
            the development machine's AMX CPU the surveillance pipeline ran 1.18x and 1.32x
            the frames/s with 4 and 16 people (``posegraph bench pipeline --bf16``; the
            README gives it and the accuracy). The fallback runs in it too.
        batch: most crops per model call (a batch may hold crops of several frames and
            streams); calls are padded to bucket sizes (1, 2, 4...).
        flip_test: also run the mirrored crops and average (twice the model work).
        crop_on: where the crops are cut when ``crop.topdown`` leaves them to this node
            (``images: false``): ``device`` samples them on the model's device from the
            frame, uploaded once (torch backend); ``cpu`` cuts them with OpenCV; ``auto``
            (default) is ``device`` for torch on CUDA, else ``cpu`` (OpenCV is the faster
            on a CPU). On ``device`` this node always cuts its own crops.
        decode: decode here; off, raw outputs go to ``meta["pose_outputs"]``.
        keypoint_threshold: keypoint score that counts in the instance score.
        threads: onnxruntime intra-op threads, 0 for its default.
        fallback: zoo name of a whole-image model with the same skeleton (``erpose_n_320``,
            an ER-Pose or HPRNet size): a frame with more people than the top-down model
            can serve by the frame's deadline goes through it instead, in constant time
            (its poses replace the crops'; ``meta["pose_fallback"]`` names it).
        fallback_weights: the fallback's weights (default: the shipped ones).

    Crops run in order of detection score, except that people skipped in the stream's
    frame before (a box overlapping theirs at IoU >= 0.3) go first: under a load the model
    cannot keep up with, the misses then pass from person to person instead of falling on
    the lowest-scored people every frame. Crops the scheduler cannot run by the frame's
    deadline are skipped (listed in ``meta["pose_skipped"]``, keypoint scores 0, instance
    score the box's) and the tracker coasts them.
    """

    role = "crops"  # one request per frame, an item per person

    def __init__(
        self,
        model: str | None = None,
        weights: str | None = None,
        allow_random: bool = False,
        overrides: dict | None = None,
        onnx: str | None = None,
        input_size: tuple[int, ...] | None = None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        color: str | None = None,
        skeleton: str | None = None,
        codec: str | None = None,
        codec_kwargs: dict | None = None,
        backend: str | None = None,
        device: str = "cpu",
        fp16: bool = False,
        bf16: bool = False,
        batch: int = 8,
        flip_test: bool = False,
        crop_on: str = "auto",
        decode: bool = True,
        keypoint_threshold: float = 0.2,
        threads: int = 0,
        fallback: str | None = None,
        fallback_weights: str | None = "builtin",
    ):
        if model is None and onnx is None:
            model = "hrnet_w32"
        self._take_common(
            model,
            weights,
            allow_random,
            onnx,
            backend,
            device,
            fp16,
            decode,
            overrides,
            codec_kwargs,
            threads,
            bf16,
        )
        for name, value, want in (
            ("input_size", input_size, 2),
            ("mean", mean, 3),
            ("std", std, 3),
        ):
            if value is not None and len(value) != want:
                raise NodeError(f"{name} needs {want} numbers, got {list(value)}")
        if color not in (None, "rgb", "bgr"):
            raise NodeError(f"color {color!r}: use rgb or bgr")
        if codec is not None and codec not in decoders.TOPDOWN_CODECS:
            raise NodeError(
                f"codec {codec!r}: pose.topdown decodes {', '.join(decoders.TOPDOWN_CODECS)}"
            )
        if batch < 1:
            raise NodeError(f"batch must be at least 1, got {batch}")
        if crop_on not in ("auto", "cpu", "device"):
            raise NodeError(f"crop_on {crop_on!r}: use auto, cpu or device")
        if crop_on == "device" and self.backend != "torch":
            raise NodeError(
                "crop_on: device samples the crops with torch beside the model, which needs "
                "backend torch; with onnxruntime use crop_on: cpu (OpenCV)"
            )
        if crop_on == "auto":
            on_gpu = self.backend == "torch" and self.device != "cpu"
            crop_on = "device" if on_gpu else "cpu"
        self.crop_on = crop_on
        self.device_frames: DeviceFrames | None = None
        self._unused_images_told = False
        self.given = {
            "input_size": None if input_size is None else tuple(int(v) for v in input_size),
            "mean": mean,
            "std": std,
            "color": color,
            "skeleton": skeleton,
            "codec": codec,
        }
        self.batch = batch
        self.flip_test = flip_test
        self.keypoint_threshold = keypoint_threshold
        self.fallback_model = fallback
        self.fallback_weights = fallback_weights
        self.fallback: _WholeImagePose | None = None
        self.fallbacks = 0
        # per stream, the boxes of the people whose crops were skipped in its last frame
        self._waiting: dict[str, np.ndarray] = {}

    def setup(self, ctx: Context) -> None:
        super().setup(ctx)
        settled: dict[str, Any] = {
            "mean": (123.675, 116.28, 103.53),
            "std": (58.395, 57.12, 57.375),
            "color": "rgb",
            "skeleton": "coco17",
            "codec_kwargs": {},
        }
        if self.model_name is not None:
            spec = self._zoo_spec()
            if spec.paradigm != "topdown":
                raise NodeError(
                    f"{ctx.name}: {self.model_name} is a {spec.paradigm} model: use "
                    f"pose.{'bottomup' if spec.paradigm == 'bottomup' else 'onestage'}"
                )
            if spec.codec not in decoders.TOPDOWN_CODECS:
                raise NodeError(
                    f"{ctx.name}: {self.model_name} uses the {spec.codec} codec, which "
                    "pose.topdown does not decode"
                )
            settled.update(
                input_size=tuple(spec.input_size),
                mean=spec.mean,
                std=spec.std,
                color=spec.color,
                skeleton=spec.skeleton,
                codec=spec.codec,
                codec_kwargs=dict(spec.codec_kwargs),
            )
        settled.update({k: v for k, v in self.given.items() if v is not None})
        heatmap_size = None
        if self.onnx is not None:
            self._open_onnx()
            _, static_size = self._onnx_input()
            size = settled.setdefault("input_size", static_size)
            if static_size is not None and tuple(size) != static_size:
                raise NodeError(
                    f"{self.onnx_path}: input_size {list(size)} differs from the model's "
                    f"fixed input {list(static_size)}"
                )
            out_shape = self.session.get_outputs()[0].shape
            if len(out_shape) == 4 and _static(out_shape[2]) and _static(out_shape[3]):
                heatmap_size = (out_shape[3], out_shape[2])
        if settled.get("input_size") is None or settled.get("codec") is None:
            raise NodeError(
                f"{ctx.name}: give codec ({', '.join(decoders.TOPDOWN_CODECS)}) and "
                "input_size: [w, h] for this onnx model, or a zoo model whose settings it has"
            )
        w, h = settled["input_size"]
        kwargs = {"input_size": (w, h), **settled["codec_kwargs"], **self.codec_kwargs}
        if settled["codec"] in decoders.HEATMAP_CODECS:
            # HRNet-style models give heatmaps at a quarter of the input
            kwargs.setdefault("heatmap_size", heatmap_size or (w // 4, h // 4))
        settled["codec_kwargs"] = kwargs
        self.settled = settled
        self.input_size = (int(w), int(h))
        if self.crop_on == "device":
            self._check_device()
            self.device_frames = DeviceFrames.on(self.device)
            # warm-up crops come from a frame of a camera's size, so that the bucket times
            # include the sampling
            warm = self.device_frames.add(np.zeros((720, 1280, 3), np.uint8))
            inverse = np.array([[[1, 0, 0], [0, 1, 0]]], np.float32)
            row = DeviceFrames.rows(warm, inverse)[0]
            mirror = DeviceFrames.rows(warm, inverse, flip=True)[0]
            example = np.stack([row, mirror]) if self.flip_test else row
            try:
                self._start_model(bucket_sizes(self.batch), example, pairs=self.flip_test)
            finally:
                self.device_frames.remove(warm)
        else:
            crop = np.zeros((int(h), int(w), 3), np.uint8)
            example = np.stack([crop, crop]) if self.flip_test else crop
            self._start_model(bucket_sizes(self.batch), example, pairs=self.flip_test)
        if self.fallback_model is not None:
            self.fallback = self._start_fallback(ctx)
        log.info(
            "pose.topdown %s: %s, %s on %s, input %dx%d, buckets %s, crops cut on %s",
            ctx.name,
            self.onnx or self.model_name,
            self.backend,
            self.device,
            w,
            h,
            self.client.handle.buckets,
            self.device if self.crop_on == "device" else "cpu (OpenCV)",
        )

    def _start_fallback(self, ctx: Context) -> _WholeImagePose:
        from posegraph.models import spec_of

        try:
            spec = spec_of(self.fallback_model)
        except ValueError as exc:
            raise NodeError(f"{ctx.name}: fallback: {exc}") from None
        kinds = {"bottomup": BottomUpPose, "onestage": OneStagePose}
        if spec.paradigm not in kinds:
            raise NodeError(
                f"{ctx.name}: fallback {self.fallback_model} is a {spec.paradigm} model: give "
                "a whole-image one (ER-Pose, HPRNet), whose time does not grow with people"
            )
        if spec.skeleton != self.skeleton.name:
            raise NodeError(
                f"{ctx.name}: fallback {self.fallback_model} gives {spec.skeleton} keypoints, "
                f"this node {self.skeleton.name}: give a fallback with the same skeleton"
            )
        node = kinds[spec.paradigm](
            model=self.fallback_model,
            weights=self.fallback_weights,
            device=self.device,
            bf16=self.bf16,
        )
        node.reserve_crops = False  # it stands in for the crops: the whole deadline is its
        node.setup(ctx)
        return node

    def _over_budget(self, n: int, frame: Frame) -> bool:
        """Whether ``n`` crops would miss the frame's deadline where the fallback would not."""
        if self.fallback is None or not math.isfinite(frame.deadline):
            return False
        handle = self.client.handle
        if handle.due_for_check():
            return False  # an estimate that keeps top-down from running is checked now and then
        left = frame.deadline - time.time()
        biggest = handle.buckets[-1]
        full, rest = divmod(n, biggest)
        need = full * handle.estimate(biggest) + (handle.estimate(rest) if rest else 0.0)
        return need > left >= self.fallback.client.handle.estimate(1)

    def _process(self, frame: Frame) -> Frame:
        crops = frame.meta.get("crops")
        if crops is None:
            raise NodeError(f"{self.ctx.name}: frame has no meta['crops']: put crop.topdown first")
        if tuple(crops["input_size"]) != self.input_size:
            raise NodeError(
                f"{self.ctx.name}: crops are {list(crops['input_size'])}, the model takes "
                f"{list(self.input_size)}: give crop.topdown the same model or width/height"
            )
        n = len(crops["detection"])
        meta = dict(frame.meta)
        if n == 0:
            self._waiting.pop(frame.stream, None)
            if self.decode:
                k = self.skeleton.num_keypoints
                return frame.replace(poses=decoders.empty_poses(k, self.skeleton.name))
            meta["pose_outputs"] = self._pose_outputs({})
            return frame.replace(meta=meta)
        if self._over_budget(n, frame):
            # too many people for top-down in time: the whole-image model takes the frame
            self.fallbacks += 1
            self._waiting.pop(frame.stream, None)  # everyone got a pose from it
            found = self.fallback.process(frame)
            meta = {**found.meta, "pose_fallback": self.fallback_model}
            meta.pop("crops", None)
            return found.replace(detections=frame.detections, meta=meta)
        boxes = frame.detections.xyxy[crops["detection"]]
        order = self._serving_order(frame.stream, boxes)
        result = self._run_crops(frame, _reordered(crops, order))
        if order is not None:
            back = np.argsort(order)
            result = dataclasses.replace(
                result,
                outputs={name: v[back] for name, v in result.outputs.items()},
                done=result.done[back],
            )
        self._waiting[frame.stream] = boxes[~result.done]
        if not result.done.any():
            # nothing ran in time: the people keep their boxes, the tracker their keypoints
            k = self.skeleton.num_keypoints
            meta[POSE_SKIPPED] = list(range(n))
            poses = decoders.topdown_poses(
                np.zeros((n, k, 2), np.float32),
                np.zeros((n, k), np.float32),
                crops,
                frame.detections,
                self.skeleton.name,
                self.keypoint_threshold,
            )
            return frame.replace(poses=_keep_box_scores(poses, crops, frame), meta=meta)
        if self.flip_test:
            outputs = {k: v[:, 0] for k, v in result.outputs.items()}
            outputs.update({k + decoders.FLIPPED: v[:, 1] for k, v in result.outputs.items()})
        else:
            outputs = dict(result.outputs)
        skipped = np.flatnonzero(~result.done)
        if len(skipped):
            meta[POSE_SKIPPED] = skipped.tolist()
        if not self.decode:
            meta["pose_outputs"] = self._pose_outputs(
                outputs, keypoint_threshold=self.keypoint_threshold
            )
            return frame.replace(meta=meta)
        keypoints, scores = decoders.decode_crops(self.codec, outputs, self.skeleton.flip_indices)
        if len(skipped):
            keypoints[skipped], scores[skipped] = 0.0, 0.0
        poses = decoders.topdown_poses(
            keypoints, scores, crops, frame.detections, self.skeleton.name, self.keypoint_threshold
        )
        if len(skipped):
            poses = _keep_box_scores(poses, crops, frame, skipped)
        return frame.replace(poses=poses, meta=meta)

    def _serving_order(self, stream: str, boxes: np.ndarray) -> np.ndarray | None:
        """Indices of the crops (``boxes``, xyxy in crop order) with the people skipped in
        the stream's last frame first (each group in crop order); None when that changes
        nothing."""
        waiting = self._waiting.get(stream)
        if waiting is None or not len(waiting):
            return None
        first = box_iou(boxes, waiting).max(axis=1) >= 0.3
        if first.all() or not first.any() or np.all(np.diff(first.astype(int)) <= 0):
            return None
        return np.concatenate([np.flatnonzero(first), np.flatnonzero(~first)])

    def _run_crops(self, frame: Frame, crops: dict[str, Any]) -> Any:
        """The scheduler's result for the frame's crops, cut here or by crop.topdown; with
        flip_test an item is a crop and its mirror, which one batch runs both."""
        if self.device_frames is None:
            images = crops.get("images")
            if images is None:
                images = warp_crops(frame.image, crops["affine"], self.input_size)
            if self.flip_test:
                images = np.stack([images, images[:, :, ::-1]], axis=1)
            return self._run(images, frame)
        if "images" in crops and not self._unused_images_told:
            self._unused_images_told = True
            log.info(
                "%s: cuts its crops on %s; crop.topdown's crop images go unused: give it "
                "images: false",
                self.ctx.name,
                self.device,
            )
        fid = self.device_frames.add(frame.image)
        try:
            items = DeviceFrames.rows(fid, crops["inverse"])
            if self.flip_test:
                mirrors = DeviceFrames.rows(fid, crops["inverse"], flip=True)
                items = np.stack([items, mirrors], axis=1)
            return self._run(items, frame)
        finally:
            self.device_frames.remove(fid)


def _reordered(crops: dict[str, Any], order: np.ndarray | None) -> dict[str, Any]:
    """``crops`` with its per-person arrays in ``order`` (the crops as they are for None)."""
    if order is None:
        return crops
    per_person = ("images", "affine", "inverse", "detection")
    return {**crops, **{key: crops[key][order] for key in per_person if key in crops}}


def _keep_box_scores(
    poses: Any, crops: dict[str, Any], frame: Frame, rows: np.ndarray | None = None
) -> Any:
    """People whose pose was skipped score as their detection box (not as keypoints that
    were never computed), so the tracker weighs them as it would a detection."""
    scores = poses.instance_scores.copy()
    detection = np.asarray(crops["detection"], np.int64)
    rows = np.arange(len(scores)) if rows is None else rows
    scores[rows] = frame.detections.scores[detection[rows]]
    return dataclasses.replace(poses, instance_scores=scores)


class _WholeImagePose(_ModelNode):
    """Whole image in: letterbox into the network input, run, decode, map back.

    Subclasses name their paradigm and default model.
    """

    paradigm = ""
    role = "image"  # one request per frame, ahead of any top-down model on the device
    #: leave a top-down model on the device time for its crops (off: nothing runs after)
    reserve_crops = True

    def _take_whole(
        self,
        input_size: tuple[int, ...] | None,
        pad_value: int,
        batch: int | None,
    ) -> None:
        if input_size is not None and len(input_size) != 2:
            raise NodeError(f"input_size needs 2 numbers, got {list(input_size)}")
        if batch is not None and batch < 1:
            raise NodeError(f"batch must be at least 1, got {batch}")
        self.batch = batch
        self.given_size = None if input_size is None else tuple(int(v) for v in input_size)
        self.pad_value = pad_value

    def setup(self, ctx: Context) -> None:
        super().setup(ctx)
        spec = self._zoo_spec()
        if spec.paradigm != self.paradigm:
            raise NodeError(
                f"{ctx.name}: {self.model_name} is a {spec.paradigm} model, "
                f"{self.type_name} runs {self.paradigm} models"
            )
        size = self.given_size or tuple(spec.input_size)
        if self.onnx is not None:
            self._open_onnx()
            _, static_size = self._onnx_input()
            if static_size is not None:
                if self.given_size is not None and self.given_size != static_size:
                    raise NodeError(
                        f"{self.onnx_path}: input_size {list(self.given_size)} differs from "
                        f"the model's fixed input {list(static_size)}"
                    )
                size = static_size
        if any(v % spec.size_divisor for v in size):
            raise NodeError(
                f"{ctx.name}: input_size {list(size)} must be a multiple of "
                f"{spec.size_divisor} for {self.model_name}"
            )
        self.input_size = (int(size[0]), int(size[1]))
        self.settled = {
            "mean": spec.mean,
            "std": spec.std,
            "color": spec.color,
            "skeleton": spec.skeleton,
            "codec": spec.codec,
            "codec_kwargs": {
                **spec.codec_kwargs,
                "input_size": self.input_size,
                **self.codec_kwargs,
            },
        }
        w, h = self.input_size
        batch = self.batch or ctx.in_flight
        self._start_model(bucket_sizes(batch), np.zeros((h, w, 3), np.uint8))

    def _process(self, frame: Frame) -> Frame:
        canvas, placed = letterbox(frame.image, self.input_size, self.pad_value)
        deadline = frame.deadline
        if self.reserve_crops:
            deadline = self.client.image_deadline(deadline, frame.captured_at)
        result = self._run(canvas[None], frame, deadline)
        if not result.done[0]:
            meta = {**frame.meta, DETECT_SKIPPED: True}
            k = self.skeleton.num_keypoints
            return frame.replace(
                poses=decoders.empty_poses(k, self.skeleton.name),
                detections=Detections.empty(),
                meta=meta,
            )
        outputs = result.outputs
        if not self.decode:
            meta = dict(frame.meta)
            meta["pose_outputs"] = self._pose_outputs(
                outputs, letterbox=decoders.letterbox_to_meta(placed)
            )
            return frame.replace(meta=meta)
        instances = decoders.decode_whole_image(self.codec, outputs)
        poses, found = decoders.whole_image_poses(instances, placed, self.skeleton.name)
        return frame.replace(poses=poses, detections=found)


_WHOLE_DOC = """
    Parameters:
        model: zoo name ({models}).
        weights: ``.pth`` (official release), ``.safetensors`` or ``builtin``.
        allow_random: run without weights (random ones), for tests and benchmarks.
        overrides: zoo config overrides.
        onnx: an ONNX export of the zoo model (its outputs named as the export names
            them), run with onnxruntime; ``model`` still gives its settings.
        input_size: network input (w, h), a multiple of the model's size divisor; the image
            is letterboxed into it (padded right and bottom with ``pad_value``). Default:
            the model's training size.
        codec_kwargs: decoding settings that replace the model's (thresholds, top-k...).
        batch: most images per model call when several streams or replicas share the
            model on the device scheduler; calls are padded to bucket sizes (1, 2, 4...).
            Default: the frames the node keeps in flight, one per stream it serves.
        backend, device, fp16, bf16, decode, threads: as for ``pose.topdown``.
"""


@register("pose.bottomup")
class BottomUpPose(_WholeImagePose):
    __doc__ = (
        "Whole-body poses (wholebody133) with HPRNet on the whole image; writes "
        "``frame.poses`` and the person boxes to ``frame.detections``.\n"
        + _WHOLE_DOC.format(models="hprnet_dla34, hprnet_hg104")
    )

    paradigm = "bottomup"

    def __init__(
        self,
        model: str = "hprnet_dla34",
        weights: str | None = None,
        allow_random: bool = False,
        overrides: dict | None = None,
        onnx: str | None = None,
        input_size: tuple[int, ...] | None = None,
        pad_value: int = 0,
        codec_kwargs: dict | None = None,
        backend: str | None = None,
        device: str = "cpu",
        fp16: bool = False,
        bf16: bool = False,
        batch: int | None = None,
        decode: bool = True,
        threads: int = 0,
    ):
        self._take_common(
            model,
            weights,
            allow_random,
            onnx,
            backend,
            device,
            fp16,
            decode,
            overrides,
            codec_kwargs,
            threads,
            bf16,
        )
        self._take_whole(input_size, pad_value, batch)


@register("pose.onestage")
class OneStagePose(_WholeImagePose):
    __doc__ = (
        "COCO poses (coco17) with ER-Pose on the whole image, one pose per person without "
        "NMS; writes ``frame.poses`` and the person boxes to ``frame.detections``.\n"
        + _WHOLE_DOC.format(models="erpose_n, erpose_s, erpose_m, erpose_l")
    )

    paradigm = "onestage"

    def __init__(
        self,
        model: str = "erpose_n",
        weights: str | None = None,
        allow_random: bool = False,
        overrides: dict | None = None,
        onnx: str | None = None,
        input_size: tuple[int, ...] | None = None,
        pad_value: int = 114,
        codec_kwargs: dict | None = None,
        backend: str | None = None,
        device: str = "cpu",
        fp16: bool = False,
        bf16: bool = False,
        batch: int | None = None,
        decode: bool = True,
        threads: int = 0,
    ):
        self._take_common(
            model,
            weights,
            allow_random,
            onnx,
            backend,
            device,
            fp16,
            decode,
            overrides,
            codec_kwargs,
            threads,
            bf16,
        )
        self._take_whole(input_size, pad_value, batch)


#: codec settings that set a whole-image model's person threshold and most people, by codec
_DETECTOR_CODEC_KWARGS = {
    "hprnet": ("center_threshold", "top_k"),
    "erpose": ("score_threshold", "max_people"),
}


@register("detect.synthetic")
class SyntheticDetector(_WholeImagePose):
    """The default person detector: a whole-image model trained on synthetic people (the
    weights that ship with posegraph), keeping only its person boxes for a top-down model.

    By default the shipped HPRNet (``hprnet_dla34_half_256``): its centre heatmap and box
    size heads give the boxes. The shipped ER-Pose-n (``model: erpose_n_320``) also runs;
    its boxes are the extent of its confident keypoints and score far lower (box AP50 0.300
    at 320, 0.339 at 512, on the 500 held-out synthetic images, HPRNet's 0.863; ``posegraph
    eval``, figures in the model cards). Both were trained on rendered people: on real video use
    ``detect.onnx`` with a real detector.

    Parameters:
        score_threshold: minimum person score.
        max_people: keep at most this many boxes, the highest scored.
        keep_poses: also write the model's own poses to ``frame.poses``.
        model: a zoo name of an HPRNet (bottomup) or ER-Pose (onestage) model.
        pad_value: letterbox padding; default 0 for HPRNet, 114 for ER-Pose.
        weights, input_size, backend, device, fp16, bf16, batch, threads, overrides, onnx: as
            for ``pose.bottomup`` and ``pose.onestage``.
    """

    def __init__(
        self,
        score_threshold: float = 0.3,
        max_people: int = 100,
        keep_poses: bool = False,
        model: str = "hprnet_dla34_half_256",
        weights: str | None = "builtin",
        overrides: dict | None = None,
        onnx: str | None = None,
        input_size: tuple[int, ...] | None = None,
        pad_value: int | None = None,
        backend: str | None = None,
        device: str = "cpu",
        fp16: bool = False,
        bf16: bool = False,
        batch: int | None = None,
        threads: int = 0,
    ):
        if not 0.0 <= score_threshold < 1.0:
            raise NodeError(f"score_threshold {score_threshold}: use a value in [0, 1)")
        if max_people < 1:
            raise NodeError(f"max_people {max_people}: use at least 1")
        self._take_common(
            model,
            None if onnx is not None else weights,
            False,
            onnx,
            backend,
            device,
            fp16,
            True,
            overrides,
            None,
            threads,
            bf16,
        )
        self._take_whole(input_size, 0 if pad_value is None else pad_value, batch)
        self.score_threshold, self.max_people = score_threshold, max_people
        self.given_pad = pad_value
        self.keep_poses = keep_poses

    def setup(self, ctx: Context) -> None:
        self.ctx = ctx
        spec = self._zoo_spec()
        if spec.codec not in _DETECTOR_CODEC_KWARGS:
            raise NodeError(
                f"{ctx.name}: {self.model_name} is a {spec.paradigm} model; detect.synthetic "
                "runs whole-image models with person boxes: HPRNet (hprnet_*) or ER-Pose "
                "(erpose_*)"
            )
        self.paradigm = spec.paradigm
        threshold, most = _DETECTOR_CODEC_KWARGS[spec.codec]
        self.codec_kwargs = {threshold: self.score_threshold, most: self.max_people}
        if self.given_pad is None:
            self.pad_value = 114 if spec.paradigm == "onestage" else 0
        super().setup(ctx)

    def _process(self, frame: Frame) -> Frame:
        found = super()._process(frame)
        if self.keep_poses:
            return found
        # the meta carries the skip marker when the scheduler skipped the frame
        return frame.replace(detections=found.detections, meta=found.meta)
