"""Adversarial losses (lsgan | vanilla | hinge), the R1 gradient penalty and the reconstruction loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GAN_MODES = ("lsgan", "vanilla", "hinge")


class GANLoss(nn.Module):
    """Adversarial loss on a discriminator's logit map.

    `loss(pred, real, for_d)`: `real` says which side the prediction should be pushed to;
    `for_d` matters only for hinge, whose generator loss is -mean(D(fake)) rather than a margin.
    Computed in float32 so mixed-precision logits do not lose the loss's precision. A list of
    maps (a multi-scale discriminator's) gives the mean of the per-map losses.
    """

    def __init__(self, mode: str = "lsgan") -> None:
        super().__init__()
        if mode not in GAN_MODES:
            raise ValueError(f"unknown gan_mode {mode!r}; choose one of {', '.join(GAN_MODES)}")
        self.mode = mode

    def forward(self, pred: torch.Tensor | list[torch.Tensor], real: bool, for_d: bool = True) -> torch.Tensor:
        if isinstance(pred, (list, tuple)):
            return torch.stack([self._one(p, real, for_d) for p in pred]).mean()
        return self._one(pred, real, for_d)

    def _one(self, pred: torch.Tensor, real: bool, for_d: bool) -> torch.Tensor:
        pred = pred.float()
        if self.mode == "lsgan":
            target = torch.ones_like(pred) if real else torch.zeros_like(pred)
            return F.mse_loss(pred, target)
        if self.mode == "vanilla":
            target = torch.ones_like(pred) if real else torch.zeros_like(pred)
            return F.binary_cross_entropy_with_logits(pred, target)
        if not for_d:
            return -pred.mean() if real else pred.mean()
        return F.relu(1.0 - pred).mean() if real else F.relu(1.0 + pred).mean()


def l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute error in float32."""
    return F.l1_loss(a.float(), b.float())


def r1_penalty(pred: torch.Tensor | list[torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """Zero-centred gradient penalty on real images (R1, Mescheder et al. 2018): the mean over the
    batch of |d score / d image|^2, an image's score being the mean of its logit map(s).

    `images` must require grad and `pred` come from them; the graph is kept (create_graph) so the
    penalty trains the discriminator through a double backward. The patch map's mean, not its sum,
    keeps the penalty on the same per-image scale as GANLoss, whatever the map's size.
    """
    maps = pred if isinstance(pred, (list, tuple)) else [pred]
    score = torch.stack([m.float().flatten(1).mean(1) for m in maps]).sum()
    (grad,) = torch.autograd.grad(score, images, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(1).mean()
