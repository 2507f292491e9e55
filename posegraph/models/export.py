"""ONNX export with a dynamic batch axis, and a parity check with onnxruntime.

The graph is traced (TorchScript exporter) at the spec's input size with a
dynamic batch axis; height and width stay fixed, as the scheduler's batch
buckets expect. Opset 17 by default; 16 is the least that carries
``grid_sample`` (DySample, deformable convolution).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from posegraph.models.spec import ModelSpec

logger = logging.getLogger(__name__)

INPUT_NAME = "images"
#: Output names of single-tensor models, by paradigm.
_SINGLE_OUTPUT = {"topdown": "heatmaps", "onestage": "poses", "bottomup": "output"}


def _flatten(output: torch.Tensor | dict | list | tuple) -> list[tuple[str, torch.Tensor]]:
    """Named tensors in the order the exporter writes them."""
    if isinstance(output, torch.Tensor):
        return [("", output)]
    if isinstance(output, dict):
        return [(str(k), v) for k, v in output.items()]
    return [(f"output{i}", v) for i, v in enumerate(output)]


def output_names(model: nn.Module, spec: ModelSpec, sample: torch.Tensor) -> list[str]:
    """Names the exported graph gives its outputs (dict keys for multi-head models)."""
    with torch.no_grad():
        named = _flatten(model(sample))
    if len(named) == 1 and not named[0][0]:
        single = "keypoints" if spec.codec == "regression_label" else _SINGLE_OUTPUT[spec.paradigm]
        return [single]
    return [name for name, _ in named]


def export_onnx(
    model: nn.Module,
    spec: ModelSpec,
    path: str | Path,
    opset: int = 17,
    input_size: tuple[int, int] | None = None,
) -> Path:
    """Write ``model`` as ONNX with input ``images`` ``(batch, 3, H, W)``.

    Args:
        model: the built model; it is exported in eval mode and put back in
            the mode it was in.
        spec: its spec; gives the input size and the output names.
        path: the ``.onnx`` file to write.
        opset: ONNX opset, 16 or later.
        input_size: ``(width, height)`` to export whole-image models at, if
            not ``spec.input_size`` (top-down models take only their own).

    Returns:
        ``path``.
    """
    if opset < 16:
        raise ValueError(f"opset {opset} lacks GridSample; use 16 or later")
    path = Path(path)
    w, h = input_size or spec.input_size
    first = next(model.parameters())
    sample = torch.zeros(1, 3, h, w, device=first.device, dtype=first.dtype)
    was_training = model.training
    model.eval()
    try:
        names = output_names(model, spec, sample)
        # Sizes read from shapes become constants of the graph: intended, H and W are fixed.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                model,
                (sample,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=names,
                dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME, *names]},
            )
    finally:
        model.train(was_training)
    logger.info("exported %s to %s (opset %d, %dx%d)", spec.name, path, opset, w, h)
    return path


def check_parity(model: nn.Module, onnx_path: str | Path, x: torch.Tensor) -> float:
    """Largest absolute difference between PyTorch (eval) and onnxruntime (CPU) on ``x``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = [t.float().cpu().numpy() for _, t in _flatten(model(x))]
    finally:
        model.train(was_training)
    feed = {session.get_inputs()[0].name: x.detach().float().cpu().numpy()}
    actual = session.run(None, feed)
    if len(actual) != len(expected):
        raise ValueError(f"{onnx_path}: {len(actual)} outputs, the model gives {len(expected)}")
    return max(float(np.abs(a - e).max()) for a, e in zip(actual, expected, strict=True))
