"""Loading and saving weights: official ``.pth`` state dicts and our safetensors.

Official releases (HRNet, SimpleBaseline, CenterNet/HPRNet) ship pickled
state dicts; they are read with ``torch.load(weights_only=True)``, which
refuses arbitrary pickled objects. Our own weights are safetensors.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

logger = logging.getLogger(__name__)

#: Key fragments that identify an architecture in a state dict, most specific first.
_SIGNATURES: tuple[tuple[tuple[str, ...], str], ...] = (
    ((".dem.", "stage4."), "DE-HRNet"),
    (("stage4.", "fuse_layers"), "HRNet"),
    (("deconv_layers.",), "SimpleBaseline"),
    (("regressor.",), "direct-regression ResNet"),
    (("base.level5.", "dla_up."), "HPRNet (DLA-34)"),
    (("kps.", "cnvs."), "HPRNet (Hourglass-104)"),
    (("backbone.", "neck.", "head."), "ER-Pose"),
    (("layer4.", "fc."), "ResNet classifier"),
)

#: How many key names an error message shows.
_SHOWN = 5


@dataclass
class LoadReport:
    """What a load matched; empty lists mean an exact match."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def architecture_of(keys: list[str]) -> str:
    """A readable guess of the architecture a list of state-dict keys belongs to."""
    for fragments, label in _SIGNATURES:
        if all(any(fragment in key for key in keys) for fragment in fragments):
            return label
    return f"an unknown architecture (first key {keys[0]!r})" if keys else "nothing (empty)"


def _read(path_or_state_dict: str | Path | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if isinstance(path_or_state_dict, dict):
        state = path_or_state_dict
    else:
        path = Path(path_or_state_dict)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    # CenterNet-style files wrap the weights with training state.
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    # Checkpoints saved from DataParallel / DDP prefix every key.
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_checkpoint(
    model: nn.Module,
    path_or_state_dict: str | Path | dict[str, torch.Tensor],
    strict: bool = True,
) -> LoadReport:
    """Load weights into ``model`` in place.

    Args:
        model: the built model.
        path_or_state_dict: a ``.pth``/``.pt`` file (an official release, read
            with ``weights_only=True``), a ``.safetensors`` file, or a state
            dict. A ``module.`` prefix is stripped. ``num_batches_tracked``
            buffers may be absent (older PyTorch wrote none); the model's own
            values are kept.
        strict: raise when keys are missing or unexpected; with ``False`` they
            are logged and reported, and the rest is loaded.

    Raises:
        ValueError: the checkpoint belongs to another architecture, tensor
            shapes differ (another width or keypoint count), or, when strict,
            keys are missing or unexpected.
    """
    state = _read(path_or_state_dict)
    # Some releases carry tensors no pose model uses (e.g. the DLA ImageNet classifier).
    ignored = tuple(getattr(model, "checkpoint_ignore_prefixes", ()))
    state = {k: v for k, v in state.items() if not (ignored and k.startswith(ignored))}
    own = model.state_dict()
    needed = [k for k in own if not k.endswith("num_batches_tracked")]
    missing = [k for k in needed if k not in state]
    unexpected = [k for k in state if k not in own and not k.endswith("num_batches_tracked")]
    model_arch = architecture_of(list(own))
    if len(missing) > len(needed) // 2:
        raise ValueError(
            f"checkpoint has keys of {architecture_of(list(state))}, model is {model_arch}: "
            f"{len(missing)} of {len(needed)} keys missing, first: {missing[:_SHOWN]}"
        )
    mismatched = [
        f"{k}: checkpoint {list(state[k].shape)}, model {list(own[k].shape)}"
        for k in needed
        if k in state and state[k].shape != own[k].shape
    ]
    if mismatched:
        raise ValueError(
            f"checkpoint does not fit this {model_arch}: {len(mismatched)} tensors have "
            f"other shapes (another width or keypoint count?), first: {mismatched[:_SHOWN]}"
        )
    if (missing or unexpected) and strict:
        raise ValueError(
            f"checkpoint does not match this {model_arch}: {len(missing)} keys missing "
            f"(first: {missing[:_SHOWN]}), {len(unexpected)} unexpected (first: "
            f"{unexpected[:_SHOWN]}); pass strict=False to load the rest"
        )
    if missing or unexpected:
        logger.warning(
            "partial load: %d keys missing (first: %s), %d unexpected (first: %s)",
            len(missing),
            missing[:_SHOWN],
            len(unexpected),
            unexpected[:_SHOWN],
        )
    merged = {k: state.get(k, v) for k, v in own.items()}
    model.load_state_dict(merged, strict=True)
    return LoadReport(missing=missing, unexpected=unexpected)


def save_checkpoint(
    model: nn.Module,
    path: str | Path,
    metadata: dict[str, str] | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Write ``model``'s state dict as safetensors (no pickle), with ``metadata`` (string
    pairs, e.g. the training run's ``seed``) in the file's header; ``dtype`` casts the
    floating-point tensors (``torch.float16`` for the shipped files)."""
    state = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v)
        .detach()
        .contiguous()
        .cpu()
        for k, v in model.state_dict().items()
    }
    save_file(state, str(path), metadata={"format": "pt", **(metadata or {})})


def checkpoint_metadata(path: str | Path) -> dict[str, str]:
    """The string pairs in a safetensors file's header (``{}`` for other files)."""
    if Path(path).suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return dict(f.metadata() or {})
