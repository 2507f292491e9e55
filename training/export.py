"""``posegraph export MODEL --weights W --out DIR``: ONNX and safetensors, with a parity check.

Writes ``DIR/MODEL.onnx`` (opset 17, dynamic batch, through :mod:`posegraph.models.export`),
``DIR/MODEL.fp32.safetensors``, ``DIR/MODEL.fp16.safetensors`` and ``DIR/MODEL.json`` (the
spec), then compares onnxruntime with PyTorch on a random batch of two and fails when the
largest absolute difference exceeds the tolerance (1e-3 by default).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from posegraph.models import build, checkpoint_metadata, load_checkpoint, save_checkpoint
from posegraph.models.export import check_parity, export_onnx

logger = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-3


class ParityError(RuntimeError):
    """The ONNX graph does not compute what the PyTorch model computes."""


@dataclass
class ExportResult:
    """Files written and the measured parity (max abs difference, ONNX vs PyTorch)."""

    onnx: Path
    fp32: Path
    fp16: Path
    spec: Path
    max_abs_diff: float


def export(
    model_name: str,
    weights: Path | None,
    out: Path,
    overrides: dict[str, Any] | None = None,
    opset: int = 17,
    tolerance: float = PARITY_TOLERANCE,
    seed: int = 0,
) -> ExportResult:
    """Export one zoo model with its weights.

    Args:
        model_name: zoo name.
        weights: a checkpoint (safetensors or official .pth); None exports fresh weights.
        out: output folder.
        overrides: zoo config overrides (``num_keypoints``, ``input_size``, ``width``...).
        opset: ONNX opset.
        tolerance: largest allowed |onnxruntime - PyTorch|.
        seed: of the random parity batch.

    Raises:
        ParityError: when the difference exceeds ``tolerance``; the files stay for inspection.
    """
    model, spec = build(model_name, **(overrides or {}))
    if weights is not None:
        load_checkpoint(model, weights)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = export_onnx(model, spec, out / f"{model_name}.onnx", opset=opset)
    fp32 = out / f"{model_name}.fp32.safetensors"
    # what the training run recorded (its seed) stays with the weights
    recorded = checkpoint_metadata(weights) if weights is not None else {}
    recorded.pop("format", None)
    save_checkpoint(model, fp32, recorded)
    fp16 = out / f"{model_name}.fp16.safetensors"
    save_checkpoint(model, fp16, recorded, torch.float16)
    spec_path = out / f"{model_name}.json"
    spec_path.write_text(json.dumps(spec.to_dict(), indent=1))
    w, h = spec.input_size
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(2, 3, h, w, generator=generator)
    diff = check_parity(model, onnx_path, sample)
    if not diff <= tolerance:
        raise ParityError(
            f"{onnx_path}: onnxruntime differs from PyTorch by up to {diff:.3g} (> {tolerance:g}) "
            f"on a random batch; an operator exports wrongly at opset {opset}: try another opset "
            "or report the model"
        )
    logger.info("%s: parity %.3g (<= %g)", onnx_path, diff, tolerance)
    return ExportResult(onnx_path, fp32, fp16, spec_path, diff)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="posegraph export", description=__doc__.split("\n")[0])
    parser.add_argument("model", help="zoo name, e.g. hrnet_w32")
    parser.add_argument("--weights", type=Path, help="checkpoint (default: fresh weights)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--set", action="append", default=[], help="model setting key=value")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--tolerance", type=float, default=PARITY_TOLERANCE)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv: list[str]) -> int:
    """``posegraph export``; exit status 0, 1 when parity fails, 2 for bad input."""
    import yaml
    from rich.console import Console

    args = build_parser().parse_args(argv)
    console = Console(stderr=args.json)
    errors = Console(stderr=True)
    try:
        overrides = {}
        for pair in args.set:
            key, sep, text = pair.partition("=")
            if not sep:
                raise ValueError(f"--set {pair!r}: expected key=value, e.g. num_keypoints=133")
            overrides[key] = yaml.safe_load(text)
        result = export(args.model, args.weights, args.out, overrides, args.opset, args.tolerance)
    except ParityError as error:
        errors.print(f"error: {error}", markup=False, highlight=False)
        return 1
    except (OSError, ValueError) as error:
        errors.print(f"error: {error}", markup=False, highlight=False)
        return 2
    if args.json:
        summary = {
            "onnx": str(result.onnx),
            "fp32": str(result.fp32),
            "fp16": str(result.fp16),
            "spec": str(result.spec),
            "max_abs_diff": result.max_abs_diff,
        }
        Console(highlight=False, soft_wrap=True).print(json.dumps(summary), markup=False)
        return 0
    console.print(
        f"exported {args.model} to {result.onnx}, {result.fp32.name}, {result.fp16.name}; "
        f"parity max |diff| {result.max_abs_diff:.2e} (<= {args.tolerance:g})"
    )
    return 0
