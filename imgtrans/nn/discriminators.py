"""PatchGAN discriminator (the reference 70x70 design for n_layers=3), optional spectral norm."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
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

    def to_dict(self) -> dict:
        return asdict(self)


class PatchDiscriminator(nn.Module):
    """Classifies overlapping patches as real or fake; returns a map of logits."""

    def __init__(self, arch: PatchArch | None = None, **kwargs: object) -> None:
        super().__init__()
        self.arch = arch if arch is not None else PatchArch(**kwargs)  # type: ignore[arg-type]
        a = self.arch
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
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
