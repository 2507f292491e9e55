"""Modulated deformable convolution (DCNv2) in plain PyTorch.

Zhu et al., "Deformable ConvNets v2", CVPR 2019, as packaged in the DCNv2
extension that CenterNet and HPRNet use: one ordinary convolution
(``conv_offset_mask``, zero-initialised, 3 * k * k output channels for one
deformable group) predicts per output pixel and kernel tap an offset
``(dy, dx)`` and a modulation mask; the main weights (``weight``, ``bias``)
are then applied to the input sampled bilinearly at the displaced taps,
each tap scaled by its sigmoid mask. Taps outside the image read zeros.

The parameter names and the channel layout of ``conv_offset_mask``
(``o1, o2, mask = chunk(3)``; ``offset = cat(o1, o2)`` with ``offset[2k]``
the y and ``offset[2k + 1]`` the x displacement of tap ``k`` in row-major
kernel order) are the extension's, so CenterNet/HPRNet checkpoints load.
Sampling uses ``grid_sample``, so the module runs on any device and exports
to ONNX (opset 16 or later) without a custom operator. In float16 or bfloat16
the positions and the sampling stay in float32: a bfloat16 position near 64 is
held to a quarter pixel (on random maps the layer's output was off float32's by
7-14% of its magnitude, against 0.3% for a plain convolution), and torch's CPU
``grid_sample`` in half precision reads garbage (1e38, NaN) from channels-last
maps of some sizes, such as HPRNet's 64 x 32 x 32. Only the sampled columns go
back to the model's type, for the product with the weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ModulatedDeformConv2d(nn.Module):
    """DCNv2 layer with its own offset/mask predictor (the extension's ``DCN``).

    Args:
        in_channels, out_channels: as for ``nn.Conv2d``.
        kernel_size, stride, padding, dilation: square, as for ``nn.Conv2d``.

    Shapes: ``(N, C_in, H, W)`` -> ``(N, C_out, H_out, W_out)`` with the usual
    convolution arithmetic.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        taps = kernel_size * kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        self.conv_offset_mask = nn.Conv2d(
            in_channels, 3 * taps, kernel_size, stride, padding, dilation, bias=True
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The extension's initialisation: uniform weights, zero offsets, mask 0.5."""
        bound = 1.0 / math.sqrt(self.in_channels * self.kernel_size**2)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.bias)
        nn.init.zeros_(self.conv_offset_mask.weight)
        nn.init.zeros_(self.conv_offset_mask.bias)

    def flops_macs(self, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
        """Counted as the equivalent dense convolution (sampling not counted)."""
        del inputs
        return int(output[0].numel()) * int(self.weight[0].numel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        k = self.kernel_size
        taps = k * k
        o1, o2, mask = self.conv_offset_mask(x).chunk(3, dim=1)
        offset = torch.cat([o1, o2], dim=1)
        h_out, w_out = offset.shape[-2:]
        dy = offset[:, 0::2]  # (N, taps, H_out, W_out)
        dx = offset[:, 1::2]
        source = x
        if x.dtype != torch.float32:  # positions and sampling in float32 (module docstring)
            source, dy, dx = x.float(), dy.float(), dx.float()
        # Regular sampling positions of every tap, in input pixel indices.
        kernel = torch.arange(k, dtype=source.dtype, device=x.device) * self.dilation
        tap_y = kernel.repeat_interleave(k).view(1, taps, 1, 1)
        tap_x = kernel.repeat(k).view(1, taps, 1, 1)
        base_y = torch.arange(h_out, dtype=source.dtype, device=x.device)
        base_x = torch.arange(w_out, dtype=source.dtype, device=x.device)
        base_y = base_y * self.stride - self.padding
        base_x = base_x * self.stride - self.padding
        ys = base_y.view(1, 1, h_out, 1) + tap_y + dy
        xs = base_x.view(1, 1, 1, w_out) + tap_x + dx
        # Pixel index i has its centre at normalised (2i + 1) / size - 1 when
        # align_corners is False; zero padding then reads zeros off the image.
        grid = torch.stack([(2 * xs + 1) / w - 1, (2 * ys + 1) / h - 1], dim=-1)
        sampled = F.grid_sample(
            source,
            grid.view(n, taps * h_out, w_out, 2),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        ).reshape(n, c, taps, h_out, w_out)
        sampled = sampled.to(x.dtype) * mask.sigmoid().unsqueeze(1)
        # (N, C*taps, L) columns against (C_out, C*taps) weights: C-major, then
        # taps, the order of ``weight.view(C_out, -1)``.
        # reshape, not view: under channels_last neither is contiguous in NCHW order.
        columns = sampled.reshape(n, c * taps, h_out * w_out)
        out = torch.matmul(self.weight.reshape(self.out_channels, -1), columns)
        return (out + self.bias.view(1, -1, 1)).view(n, self.out_channels, h_out, w_out)
