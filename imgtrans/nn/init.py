"""Weight initialisation as in the reference CycleGAN (normal, std 0.02)."""

from __future__ import annotations

from torch import nn


def init_weights(net: nn.Module, gain: float = 0.02) -> nn.Module:
    """Draw conv weights from N(0, gain) and zero their biases; BatchNorm scales from N(1, gain).

    Uses the global torch RNG, so seeding before construction makes networks reproducible.
    """
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            weight = getattr(m, "parametrizations", None)
            target = weight.weight.original if weight is not None else m.weight
            nn.init.normal_(target, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
    for m in net.modules():
        zero_init = getattr(m, "zero_init", None)
        if callable(zero_init):  # layers a network wants to start at zero (e.g. a residual edit)
            zero_init()
    return net
