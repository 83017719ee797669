"""Normalisation layer factory shared by generators and discriminators."""

from __future__ import annotations

from typing import Callable

from torch import nn

NORMS = ("instance", "batch", "none")


def norm_layer(kind: str) -> Callable[[int], nn.Module]:
    """Return a constructor `channels -> module` for the named normalisation.

    InstanceNorm carries no affine parameters and no running statistics, exactly as the
    reference CycleGAN, so official checkpoints hold no norm keys.
    """
    if kind == "instance":
        return lambda c: nn.InstanceNorm2d(c, affine=False, track_running_stats=False)
    if kind == "batch":
        return lambda c: nn.BatchNorm2d(c, affine=True, track_running_stats=True)
    if kind == "none":
        return lambda c: nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose one of {', '.join(NORMS)}")


def conv_bias(kind: str) -> bool:
    """Convolutions before BatchNorm need no bias (the norm's shift replaces it)."""
    return kind != "batch"
