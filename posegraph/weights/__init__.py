"""The weights that ship with posegraph, trained on synthetic people.

Each model with shipped weights has ``MODEL.safetensors`` (fp16) and ``MODEL.md``, its model
card: the training config, data, steps, time, the command that was run and the AP measured
on a held-out synthetic set. A zoo name in :data:`SHARED` takes another's file and card. A
pose node takes them with ``weights: builtin``; from Python, :func:`path` gives the file for
:func:`posegraph.models.load_checkpoint`.

They were trained on rendered people only. On real video expect far less than the
synthetic AP: plug in real weights (an official HRNet ``.pth``, an RTMPose ONNX) for that.
"""

from __future__ import annotations

from pathlib import Path

DIR = Path(__file__).parent

#: The name a node's ``weights`` parameter takes for the shipped weights.
BUILTIN = "builtin"


#: Zoo names that run the shipped file of another: the same network at another input size.
#: ER-Pose-n's weights are ``erpose_n_320``'s; their last stage trained them at 512.
SHARED: dict[str, str] = {"erpose_n_416": "erpose_n_320", "erpose_n_512": "erpose_n_320"}


def available() -> dict[str, Path]:
    """Zoo name -> shipped weights file, for every model that has one (a file named for one
    model may serve another, see :data:`SHARED`)."""
    files = {p.stem: p for p in sorted(DIR.glob("*.safetensors"))}
    return {**files, **{name: files[stem] for name, stem in SHARED.items() if stem in files}}


def path(model: str) -> Path:
    """The shipped weights of zoo model ``model``.

    Raises:
        ValueError: no weights ship for it; the message lists the models that have some.
    """
    found = available()
    if model in found:
        return found[model]
    have = ", ".join(found) or "none"
    raise ValueError(
        f"no built-in weights for {model!r}: they ship for {have}; give a weights file "
        "(.pth or .safetensors) instead"
    )


def card(model: str) -> str:
    """The model card (markdown) of the shipped weights of ``model``."""
    return path(model).with_suffix(".md").read_text(encoding="utf-8")
