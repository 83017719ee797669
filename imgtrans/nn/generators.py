"""ResNet image-to-image generator with the reference CycleGAN's exact state-dict layout."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from torch import nn

from imgtrans.nn.norm import conv_bias, norm_layer


MASK_START_LOGIT = -3.0  # sigmoid(-3) = 0.047: a masked generator starts 95% input


@dataclass(frozen=True)
class ResnetArch:
    """Architecture arguments of `ResnetGenerator`; stored in exported weights' metadata."""

    in_channels: int = 3
    out_channels: int = 3
    ngf: int = 64
    n_blocks: int = 9
    norm: str = "instance"
    dropout: bool = False
    # Output = input + a learned edit (no final tanh), the edit's layer zero-initialised: the net
    # starts as the identity map and keeps the photo's detail from step one, so short CPU runs
    # spend their steps on the domain change instead of learning to redraw the photo.
    residual: bool = False
    # "transpose" (reference) or "resize": nearest 2x upsampling then a 3x3 conv, which cannot
    # leave the checkerboard pattern strided transposed convolutions print on early outputs.
    upsample: str = "transpose"
    # Padding of the two stride-2 convolutions: "zero" (reference) or "reflect". With zeros the
    # top and left image borders see padding the bottom and right never do (even sizes), which
    # shows as a bright or dark edge on short runs.
    down_pad: str = "zero"
    # Output = m * content + (1 - m) * input, m a per-pixel mask in [0, 1] from a second 7x7 head
    # on the last features (attention-guided translation, Mejjati et al. 2018, Tang et al. 2019).
    # A residual edit has to cancel the input pixel for pixel to erase a texture (zebra stripes);
    # a mask replaces the region outright and leaves the rest untouched. The mask starts nearly
    # shut, so step 0 is close to the identity as with `residual`.
    mask: bool = False

    def __post_init__(self) -> None:
        if self.upsample not in ("transpose", "resize"):
            raise ValueError(f"upsample={self.upsample!r}: use 'transpose' or 'resize'")
        if self.down_pad not in ("zero", "reflect"):
            raise ValueError(f"down_pad={self.down_pad!r}: use 'zero' or 'reflect'")
        if self.mask and (self.residual or self.out_channels != self.in_channels):
            raise ValueError("mask=True blends output and input: it needs residual=False and as many "
                             "input as output channels")

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


def _upsample(c_in: int, c_out: int, kind: str, bias: bool) -> nn.Module:
    """One 2x upsampling layer (a single child, so the indices after it match either kind)."""
    if kind == "resize":
        return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.ReflectionPad2d(1),
                             nn.Conv2d(c_in, c_out, 3, bias=bias))
    return nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1, bias=bias)


class ResnetGenerator(nn.Module):
    """c7s1-ngf, two stride-2 downsamplings, n residual blocks, two upsamplings, c7s1-out, tanh.

    Input and output are in [-1, 1]; the residual form (`ResnetArch.residual`) has no tanh and
    returns input + edit, unclamped; the masked form (`ResnetArch.mask`) blends the tanh output into
    the input through a mask from `mask_head`. The network is fully convolutional with a total stride of
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
            pad_mode = "reflect" if a.down_pad == "reflect" else "zeros"  # same keys either way
            layers += [nn.Conv2d(c, c * 2, 3, stride=2, padding=1, padding_mode=pad_mode, bias=bias),
                       make_norm(c * 2), nn.ReLU(True)]
        width = a.ngf * 4
        layers += [ResnetBlock(width, a.norm, a.dropout) for _ in range(a.n_blocks)]
        for i in range(2):
            c = width // 2**i
            layers += [_upsample(c, c // 2, a.upsample, bias), make_norm(c // 2), nn.ReLU(True)]
        if a.residual and a.out_channels > a.in_channels:
            raise ValueError("a residual generator needs at least as many input as output channels")
        # Identity keeps the child count (and so the indices CUT taps) the same in both forms.
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(a.ngf, a.out_channels, 7),
                   nn.Identity() if a.residual else nn.Tanh()]
        self.model = nn.Sequential(*layers)
        # Outside `model`, so the official layout (and the indices CUT taps) stay as they are.
        self.mask_head = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(a.ngf, 1, 7)) if a.mask else None
        self.zero_init()

    def zero_init(self) -> None:
        """Start a residual generator's edit at zero and a masked one's mask nearly shut (about 0.05
        everywhere), so that either starts at or near the identity map.

        `init_weights` calls this after drawing every weight; it does nothing for the reference form.
        """
        if self.arch.residual:
            last = self.model[-2]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        if self.mask_head is not None:
            head = self.mask_head[1]
            nn.init.zeros_(head.weight)
            nn.init.constant_(head.bias, MASK_START_LOGIT)

    def forward(self, x: torch.Tensor, layers: Sequence[int] = ()) -> torch.Tensor | list[torch.Tensor]:
        """The translated image; or, given `layers`, the outputs of those `model` children, in order.

        With `layers` the pass stops after the deepest requested child (encoder features for
        contrastive losses such as CUT's). It is still this module's forward, so DDP wrappers see it.
        """
        if not layers and self.mask_head is not None:
            features = self.model[:-3](x)
            content = self.model[-3:](features)
            drawn = torch.sigmoid(self.mask_head(features))  # share of each pixel the content replaces
            return x + drawn * (content - x)
        if not layers:
            y = self.model(x)
            # Unbounded during training, so no pixel loses its gradient at the range ends; every
            # consumer of images clamps to [-1, 1] (and the discriminators learn that real images do not leave it).
            return x[:, : self.arch.out_channels] + y if self.arch.residual else y
        return self._taps(x, layers)

    def _taps(self, x: torch.Tensor, layers: Sequence[int]) -> list[torch.Tensor]:
        n = len(self.model)
        bad = [i for i in layers if not 0 <= i < n]
        if bad:
            raise ValueError(f"layer indices {bad} out of range: the generator has children 0..{n - 1}")
        wanted, last = set(layers), max(layers)
        feats: dict[int, torch.Tensor] = {}
        for i, child in enumerate(self.model):
            x = child(x)
            if i in wanted:
                following = self.model[i + 1] if i + 1 < n else None
                # A norm output tapped before an in-place ReLU would be overwritten by it.
                feats[i] = x.clone() if i < last and getattr(following, "inplace", False) else x
            if i == last:
                break
        return [feats[i] for i in layers]
