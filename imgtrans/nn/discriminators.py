"""PatchGAN discriminator (the reference 70x70 design for n_layers=3), optional spectral norm and scales."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _sn

from imgtrans.nn.norm import conv_bias, norm_layer


@dataclass(frozen=True)
class PatchArch:
    """Architecture arguments of `PatchDiscriminator`."""

    in_channels: int = 3
    ndf: int = 64
    n_layers: int = 3
    norm: str = "instance"
    spectral_norm: bool = False
    # pix2pixHD's multi-scale design: scale k judges the image average-pooled k times (half the
    # size each), so the same 70 px patches cover 2^k times the context (a whole animal, not a
    # stripe). Each scale has its own weights; scales=1 is the reference single PatchGAN.
    scales: int = 1

    def __post_init__(self) -> None:
        if self.scales < 1:
            raise ValueError(f"discriminator scales (d_scales) must be at least 1, got {self.scales}")

    def to_dict(self) -> dict:
        return asdict(self)


def _patch_stack(a: PatchArch) -> nn.Sequential:
    """One PatchGAN: stride-2 convs down to a map of per-patch logits."""
    make_norm, bias = norm_layer(a.norm), conv_bias(a.norm)
    sn = _sn if a.spectral_norm else (lambda m: m)
    layers: list[nn.Module] = [sn(nn.Conv2d(a.in_channels, a.ndf, 4, 2, 1)), nn.LeakyReLU(0.2, True)]
    mult = 1
    for n in range(1, a.n_layers + 1):
        prev, mult = mult, min(2**n, 8)
        stride = 2 if n < a.n_layers else 1
        layers += [
            sn(nn.Conv2d(a.ndf * prev, a.ndf * mult, 4, stride, 1, bias=bias)),
            make_norm(a.ndf * mult),
            nn.LeakyReLU(0.2, True),
        ]
    layers.append(sn(nn.Conv2d(a.ndf * mult, 1, 4, 1, 1)))
    return nn.Sequential(*layers)


def halve(x: torch.Tensor) -> torch.Tensor:
    """Average-pool to half size; padding is not counted, so border pixels keep their level."""
    return F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)


class PatchDiscriminator(nn.Module):
    """Classifies overlapping patches as real or fake.

    Returns a map of logits, or with `scales` > 1 a list of maps, finest first (`GANLoss` takes
    either). `model` is the finest scale, so single-scale state dicts keep the reference keys.
    With `features=True` it returns (logits, hidden), `hidden` being every hidden conv's output,
    before its norm and activation, finest scale first (for `feature_matching`). It is a forward
    argument, not a method, so a DistributedDataParallel wrapper passes it through.
    """

    def __init__(self, arch: PatchArch | None = None, **kwargs: object) -> None:
        super().__init__()
        self.arch = arch if arch is not None else PatchArch(**kwargs)  # type: ignore[arg-type]
        self.model = _patch_stack(self.arch)
        self.coarser = nn.ModuleList(_patch_stack(self.arch) for _ in range(self.arch.scales - 1))

    def forward(self, x: torch.Tensor, features: bool = False) -> Any:
        hidden: list[torch.Tensor] | None = [] if features else None
        outs = [_run(self.model, x, hidden)]
        for net in self.coarser:
            x = halve(x)
            outs.append(_run(net, x, hidden))
        logits = outs if len(outs) > 1 else outs[0]
        return (logits, hidden) if features else logits


def _run(stack: nn.Sequential, x: torch.Tensor, hidden: list[torch.Tensor] | None) -> torch.Tensor:
    """One PatchGAN stack; with a `hidden` list, collects its hidden convs' outputs on the way."""
    if hidden is None:
        return stack(x)
    last = len(stack) - 1  # the logit conv, not a feature
    for i, layer in enumerate(stack):
        if isinstance(layer, nn.LeakyReLU):
            # Out of place: the stack's in-place activation would overwrite a collected conv output.
            x = F.leaky_relu(x, layer.negative_slope)
        else:
            x = layer(x)
        if i < last and isinstance(layer, nn.Conv2d):
            hidden.append(x)
    return x
