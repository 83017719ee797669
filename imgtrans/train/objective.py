"""The Objective protocol: the one seam between a model and the shared trainer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn
from torch.utils.data import Dataset


@dataclass(frozen=True)
class Phase:
    """One optimisation phase of a training step (e.g. generators, then discriminators).

    The trainer owns one optimizer per phase over the parameters of `nets`, makes only those
    networks trainable while the phase runs, and runs it on steps where `step % every == 0`.
    """

    name: str
    nets: tuple[str, ...]
    lr: float
    betas: tuple[float, float] = (0.5, 0.999)
    every: int = 1
    weight_decay: float = 0.0


Losses = dict[str, torch.Tensor]
# One independent part of a phase's loss: computes its (scalar loss, detached terms) when called.
Branch = Callable[[], tuple[torch.Tensor, Losses]]


def combine(parts: list[tuple[torch.Tensor, Losses]]) -> tuple[torch.Tensor, Losses]:
    """The sum of branches' losses and all their named terms, as one phase's loss()."""
    terms: Losses = {}
    for _, named in parts:
        terms.update(named)
    return torch.stack([loss for loss, _ in parts]).sum(), terms


@runtime_checkable
class Objective(Protocol):
    """What a model implements to be trained by `imgtrans.train.trainer.Trainer`.

    An objective computes losses; it never calls backward(), step() or zero_grad(), and never
    touches devices, precision or processes: the trainer and runtime own those.
    """

    name: ClassVar[str]
    averaged: ClassVar[tuple[str, ...]]  # networks whose weight average `--set ema` exports

    def networks(self) -> dict[str, nn.Module]:
        """The raw trainable networks by name (built in the constructor)."""

    def bind(self, nets: dict[str, nn.Module]) -> None:
        """Use these callables (e.g. DDP wrappers of `networks()`) in loss() and sample()."""

    def phases(self) -> list[Phase]:
        """The phases of one step, in order."""

    def dataset(self) -> Dataset:
        """A map-style dataset indexed by the global sample counter (see data.stream)."""

    def loss(self, phase: str, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Losses]:
        """The phase's scalar loss, plus detached named terms for logging."""

    def branches(self, phase: str, batch: dict[str, torch.Tensor]) -> list[Branch]:
        """The phase's loss as independent parts whose sum is loss(), or [] when it has none.

        Parts must share no intermediate tensors (their graphs meet only at parameters) and draw
        no random numbers; the trainer may run their forwards and backwards concurrently
        (train/branches.py).
        """

    def sample(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Images in [-1, 1] to show side by side in a sample grid (called under no_grad)."""

    def state_dict(self) -> dict[str, Any]:
        """Training state outside the networks (e.g. an image pool), for exact resume."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict() returned."""

    def export(self) -> dict[str, tuple[dict[str, torch.Tensor], dict[str, Any]]]:
        """Inference artefacts: name -> (state dict, metadata that build_inference() reads)."""

    @classmethod
    def build_inference(cls, meta: dict[str, Any]) -> nn.Module:
        """Rebuild an exported network from its metadata (weights not loaded)."""


class ObjectiveBase:
    """Shared plumbing for objectives: holds the networks and the callables bound to them."""

    name: ClassVar[str] = ""
    averaged: ClassVar[tuple[str, ...]] = ()

    def __init__(self, nets: dict[str, nn.Module]) -> None:
        self._nets = nets
        self.nets: dict[str, nn.Module] = dict(nets)

    def networks(self) -> dict[str, nn.Module]:
        return self._nets

    def bind(self, nets: dict[str, nn.Module]) -> None:
        self.nets = dict(nets)

    def branches(self, phase: str, batch: dict[str, torch.Tensor]) -> list[Branch]:
        return []

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
