"""ResNet image-to-image generator with the reference CycleGAN's exact state-dict layout."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from imgtrans.nn.norm import conv_bias, norm_layer


@dataclass(frozen=True)
class ResnetArch:
    """Architecture arguments of `ResnetGenerator`; stored in exported weights' metadata."""

    in_channels: int = 3
    out_channels: int = 3
    ngf: int = 64
    n_blocks: int = 9
    norm: str = "instance"
    dropout: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


class ResnetBlock(nn.Module):
    """Residual block: pad-conv-norm-relu[-dropout]-pad-conv-norm, plus the skip connection.

    The child indices (`conv_block.1`, `conv_block.5`, or `.6` with dropout) match the
    reference implementation so its checkpoints load key for key.
    """

    def __init__(self, dim: int, norm: str, dropout: bool) -> None:
        super().__init__()
        make_norm, bias = norm_layer(norm), conv_bias(norm)
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3, bias=bias),
            make_norm(dim),
            nn.ReLU(True),
        ]
        if dropout:
            layers.append(nn.Dropout(0.5))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), make_norm(dim)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """c7s1-ngf, two stride-2 downsamplings, n residual blocks, two upsamplings, c7s1-out, tanh.

    Input and output are in [-1, 1]. The network is fully convolutional with a total stride of
    4, so any input whose sides are multiples of 4 keeps its size.
    """

    stride = 4

    def __init__(self, arch: ResnetArch | None = None, **kwargs: object) -> None:
        super().__init__()
        self.arch = arch if arch is not None else ResnetArch(**kwargs)  # type: ignore[arg-type]
        a = self.arch
        make_norm, bias = norm_layer(a.norm), conv_bias(a.norm)
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(a.in_channels, a.ngf, 7, bias=bias),
            make_norm(a.ngf),
            nn.ReLU(True),
        ]
        for i in range(2):
            c = a.ngf * 2**i
            layers += [nn.Conv2d(c, c * 2, 3, stride=2, padding=1, bias=bias), make_norm(c * 2), nn.ReLU(True)]
        width = a.ngf * 4
        layers += [ResnetBlock(width, a.norm, a.dropout) for _ in range(a.n_blocks)]
        for i in range(2):
            c = width // 2**i
            layers += [
                nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1, bias=bias),
                make_norm(c // 2),
                nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(a.ngf, a.out_channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
