"""Parameter and FLOP counts, measured with forward hooks.

We count the way the HRNet paper's model summary does, so that our figures
sit beside the published ones (HRNet-W32 at 256x192: 7.1 GFLOPs, SimpleBaseline
ResNet-50: 8.9):

- only convolutions (deformable ones included), transposed convolutions and
  linear layers count; normalisation, activations, pooling, up-sampling and
  element-wise additions are left out;
- one multiply-accumulate counts as one FLOP, bias excluded;
- a transposed convolution costs its weight size times its *output* area
  (this overstates a stride-s deconvolution by s**2, but it is how the
  published SimpleBaseline figure was made);
- "G" is 2**30, as in that summary code.

The count runs happily on the ``meta`` device, where no memory is allocated
and no arithmetic is done, which is how the zoo lists large models quickly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Profile:
    """Size and cost of a model for one input shape."""

    params: int
    macs: int

    @property
    def gflops(self) -> float:
        """Multiply-accumulates in units of 2**30 (the HRNet paper's "GFLOPs")."""
        return self.macs / 2**30


def count_params(model: nn.Module) -> int:
    """Number of parameters (buffers such as BN statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def _conv_macs(module: nn.Conv2d, output: torch.Tensor) -> int:
    # Every output element costs one kernel window over the group's inputs.
    return int(output[0].numel()) * int(module.weight[0].numel())


def _deconv_macs(module: nn.ConvTranspose2d, output: torch.Tensor) -> int:
    # The published convention: weight size times output area (see above).
    return int(module.weight.numel()) * int(output.shape[-2] * output.shape[-1])


def _linear_macs(module: nn.Linear, output: torch.Tensor) -> int:
    return int(output[0].numel()) * module.in_features


def _module_macs(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    """MACs of one sample through ``module``; 0 for layers we do not count."""
    custom = getattr(module, "flops_macs", None)
    if custom is not None:
        return int(custom(inputs, output))
    if isinstance(module, nn.ConvTranspose2d):
        return _deconv_macs(module, output)
    if isinstance(module, nn.Conv2d):
        return _conv_macs(module, output)
    if isinstance(module, nn.Linear):
        return _linear_macs(module, output)
    return 0


#: Uncounted layers whose output has their input's shape. On the meta device
#: their shape inference runs through slow Python reference kernels, and it
#: tells us nothing, so a meta-device count passes their input through.
_SHAPE_KEEPING = (nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.SiLU, nn.Sigmoid, nn.Dropout)


def _passthrough(x: torch.Tensor) -> torch.Tensor:
    return x


def profile(model: nn.Module, input_shape: tuple[int, int, int, int]) -> Profile:
    """Count parameters and per-image MACs of ``model`` for ``input_shape``.

    Args:
        model: any module; it is run once in eval mode on a tensor of the
            model's own device (use ``meta`` for a free run) and put back in
            the mode it was in.
        input_shape: ``(N, C, H, W)``; the count is per image, whatever N is.
    """
    total = 0

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        total += _module_macs(module, inputs, output)

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    skipped = []
    if device.type == "meta":
        skipped = [m for m in model.modules() if isinstance(m, _SHAPE_KEEPING)]
    for module in skipped:
        module.forward = _passthrough
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(input_shape, device=device))
    finally:
        for handle in handles:
            handle.remove()
        for module in skipped:
            del module.forward
        model.train(was_training)
    return Profile(params=count_params(model), macs=total)
