"""Adversarial losses (lsgan | vanilla | hinge | ralsgan), feature matching, the R1 gradient penalty and the reconstruction loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GAN_MODES = ("lsgan", "vanilla", "hinge", "ralsgan")
# Modes that score an image against the other side's mean logit, so both sides' logits go in.
RELATIVISTIC = ("ralsgan",)

Logits = torch.Tensor | list[torch.Tensor]


class GANLoss(nn.Module):
    """Adversarial loss on a discriminator's logit map.

    `loss(pred, real, for_d)`: `real` says which side the prediction should be pushed to;
    `for_d` matters only for hinge, whose generator loss is -mean(D(fake)) rather than a margin.
    Computed in float32 so mixed-precision logits do not lose the loss's precision. A list of
    maps (a multi-scale discriminator's) gives the mean of the per-map losses.

    Objectives call `judge` and `fool`, which take both sides' logits and so serve every mode:
    "ralsgan" (relativistic average LSGAN, Jolicoeur-Martineau 2019) asks the judge how much more
    real a real image looks than the average fake (and the reverse), not whether each looks real.
    """

    def __init__(self, mode: str = "lsgan") -> None:
        super().__init__()
        if mode not in GAN_MODES:
            raise ValueError(f"unknown gan_mode {mode!r}; choose one of {', '.join(GAN_MODES)}")
        self.mode = mode

    @property
    def relativistic(self) -> bool:
        """Whether `fool` needs the judge's logits on real images too."""
        return self.mode in RELATIVISTIC

    def judge(self, pred_real: Logits, pred_fake: Logits) -> tuple[torch.Tensor, torch.Tensor]:
        """The discriminator's terms on its real and on its fake images (callers weight each by 0.5)."""
        if not self.relativistic:
            return self(pred_real, True), self(pred_fake, False)
        return self._paired(pred_real, pred_fake, True), self._paired(pred_fake, pred_real, False)

    def fool(self, pred_fake: Logits, pred_real: Logits | None = None) -> torch.Tensor:
        """The generator's adversarial term. A relativistic mode also needs `pred_real` (taken as
        constants: reals do not depend on the generator) and averages its two mirrored terms where
        the paper sums them, so each weighs half as much as the other modes' single term. Its values
        still run larger (up to 4 against a perfect judge), so it pushes harder at the same weight."""
        if not self.relativistic:
            return self(pred_fake, True, for_d=False)
        if pred_real is None:
            raise ValueError(f"gan_mode {self.mode!r} needs the discriminator's logits on real images")
        pred_real = [p.detach() for p in pred_real] if isinstance(pred_real, (list, tuple)) else pred_real.detach()
        return 0.5 * (self._paired(pred_fake, pred_real, True) + self._paired(pred_real, pred_fake, False))

    def _paired(self, pred: Logits, other: Logits, real: bool) -> torch.Tensor:
        """Relativistic LSGAN: (pred - mean(other) -/+ 1)^2, per discriminator scale."""
        if isinstance(pred, (list, tuple)):
            return torch.stack([self._paired(p, o, real) for p, o in zip(pred, other, strict=True)]).mean()
        # The other side's mean over the batch and the patch map: one reference logit per step,
        # which at batch 1 is still the mean of a whole map rather than a single patch.
        rel = pred.float() - other.float().mean()
        return F.mse_loss(rel, torch.full_like(rel, 1.0 if real else -1.0))

    def forward(self, pred: Logits, real: bool, for_d: bool = True) -> torch.Tensor:
        if self.relativistic:
            raise ValueError(f"gan_mode {self.mode!r} scores pairs: call judge() or fool()")
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


def feature_matching(fake: list[torch.Tensor], real: list[torch.Tensor]) -> torch.Tensor:
    """Feature matching for unpaired images: per hidden discriminator layer, how far the fakes'
    per-channel mean and standard deviation (over the batch and all positions) lie from the reals',
    in units of the reals' mean standard deviation; the mean over layers.

    Salimans et al. (2016) match a layer's mean feature over a batch; pix2pixHD matches the features
    of paired images position by position, which unpaired images do not allow. Statistics pooled
    over positions need no pairing, and the standard deviation carries texture (a zebra's stripes
    raise it on a horse) that a mean alone averages away. Dividing by the reals' spread puts
    layers of different magnitude on one scale. `real` is taken as constants.
    """
    if len(fake) != len(real) or not fake:
        raise ValueError(f"feature matching needs the same non-empty list of layers on both sides "
                         f"(got {len(fake)} and {len(real)})")
    terms = []
    for f, r in zip(fake, real):
        f_var, f_mean = torch.var_mean(f.float(), dim=(0, 2, 3), correction=0)
        r_var, r_mean = torch.var_mean(r.detach().float(), dim=(0, 2, 3), correction=0)
        # eps inside the root: a constant channel (var 0) would give an infinite gradient.
        f_std, r_std = (f_var + 1e-8).sqrt(), (r_var + 1e-8).sqrt()
        gap = (f_mean - r_mean).abs() + (f_std - r_std).abs()
        terms.append(gap.mean() / (r_std.mean() + 1e-6))
    return torch.stack(terms).mean()


def r1_penalty(pred: Logits, images: torch.Tensor) -> torch.Tensor:
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
