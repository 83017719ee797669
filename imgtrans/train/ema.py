"""Exponential moving average (EMA) of network weights, swapped in for samples and exports."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

# Decay ramp: early averages must not be dominated by the random initial weights (or, when a run
# switches averaging on at --resume, by nothing at all), so the effective decay starts near 0.
_RAMP = 10


class WeightAverage:
    """EMA of the parameters of some networks; buffers (e.g. batch-norm statistics) stay live.

    Why: a GAN generator oscillates from step to step because its discriminator keeps moving the
    target; the average of its recent weights is a better generator at no training cost (Yazici
    et al. 2019, "The Unusual Effectiveness of Averaging in GAN Training"; StyleGAN and StarGAN v2
    ship averaged generators). The optimizer never sees the average: training is unchanged.
    """

    def __init__(self, nets: dict[str, nn.Module], decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        named = [(f"{net}.{key}", p) for net in sorted(nets) for key, p in nets[net].named_parameters()]
        self.keys = [k for k, _ in named]  # "NET.PARAM": checkpoints name each average
        self.params = [p for _, p in named]
        self.average = [p.detach().clone() for p in self.params]
        self.updates = 0

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (_RAMP + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        """Move the average toward the networks' current weights (call after each optimizer step)."""
        weight = 1.0 - self.current_decay()
        torch._foreach_lerp_(self.average, [p.detach() for p in self.params], weight)
        self.updates += 1

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Within the block the networks hold the averaged weights; the trained ones come back after."""
        with torch.no_grad():
            trained = [p.detach().clone() for p in self.params]
            for p, a in zip(self.params, self.average):
                p.copy_(a)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, t in zip(self.params, trained):
                    p.copy_(t)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates,
                "average": {k: a.cpu() for k, a in zip(self.keys, self.average)}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state["average"]
        if set(saved) != set(self.keys) or any(saved[k].shape != a.shape for k, a in zip(self.keys, self.average)):
            raise ValueError("the checkpoint's weight average does not match these networks")
        with torch.no_grad():
            for k, a in zip(self.keys, self.average):
                a.copy_(saved[k])
        self.updates = int(state["updates"])


def averaged_state(ckpt: dict[str, Any], net: str) -> dict[str, torch.Tensor]:
    """Network `net`'s state dict from a training checkpoint, with its weight average if it has one."""
    state = dict(ckpt["nets"][net])
    average = (ckpt.get("ema") or {}).get("average", {})
    prefix = f"{net}."
    state.update({k[len(prefix):]: v for k, v in average.items() if k.startswith(prefix)})
    return state
