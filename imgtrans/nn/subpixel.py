"""Inference rewrite: stride-2 transposed convolutions as an equal convolution plus pixel shuffle."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

# Output phase (0: even, 1: odd row or column) and input offset (0: same pixel, 1: the next one)
# -> the transposed kernel's tap that joins them. With padding 1, an even output row 2i reads only
# input row i through tap 1; an odd row 2i+1 reads row i through tap 2 and row i+1 through tap 0.
_TAP = {(0, 0): 1, (1, 0): 2, (1, 1): 0}


class SubPixelUpsample(nn.Module):
    """Computes ConvTranspose2d(k=3, stride=2, padding=1, output_padding=1) exactly (to float
    rounding) as zero-pad right/bottom, a 2x2 convolution to 4x the channels and a pixel shuffle.

    Measured on CPU (benchmarks/README.md) the convolution runs faster than oneDNN's transposed
    one, and int8 quantizers handle it, where onnxruntime keeps transposed convolutions in float.
    """

    def __init__(self, ct: nn.ConvTranspose2d) -> None:
        super().__init__()
        if not is_stride2_upsample(ct):
            raise ValueError(f"not a k3 s2 p1 op1 transposed convolution: {ct}")
        w = ct.weight.detach()  # c_in x c_out x 3 x 3
        c_in, c_out = w.shape[:2]
        k = w.new_zeros(c_out, 2, 2, c_in, 2, 2)  # (out channel, row phase, col phase) x c_in x 2 x 2
        for (a, dy), ty in _TAP.items():
            for (b, dx), tx in _TAP.items():
                k[:, a, b, :, dy, dx] = w[:, :, ty, tx].t()
        self.conv = nn.Conv2d(c_in, 4 * c_out, 2, bias=ct.bias is not None)
        with torch.no_grad():
            self.conv.weight.copy_(k.reshape(4 * c_out, c_in, 2, 2))
            if ct.bias is not None:
                self.conv.bias.copy_(ct.bias.detach().repeat_interleave(4))
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(F.pad(x, (0, 1, 0, 1))))


def is_stride2_upsample(m: nn.Module) -> bool:
    """Whether `m` is the ResNet generator's upsampling layer (the only kind rewritten)."""
    return (isinstance(m, nn.ConvTranspose2d) and m.kernel_size == (3, 3) and m.stride == (2, 2)
            and m.padding == (1, 1) and m.output_padding == (1, 1) and m.groups == 1 and m.dilation == (1, 1))


def with_subpixel_upsampling(net: nn.Module) -> nn.Module:
    """A copy of `net` for inference whose stride-2 transposed convolutions are SubPixelUpsample
    (`net` itself is left as it is; its state_dict keys would no longer match a rewritten copy).
    A network without such layers is returned as it is, not copied."""
    if not any(is_stride2_upsample(m) for m in net.modules()):
        return net
    out = copy.deepcopy(net)
    for name, module in list(out.named_modules()):
        if is_stride2_upsample(module):
            parent_name, _, child = name.rpartition(".")
            setattr(out.get_submodule(parent_name), child, SubPixelUpsample(module))
    return out
