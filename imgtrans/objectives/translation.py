"""What the translation objectives share: settings, judging real images (R1 penalty) and held-out scoring."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgtrans.data.transforms import CropSpec, load_size_for
from imgtrans.errors import UserError
from imgtrans.nn.diffaug import parse_policy
from imgtrans.nn.discriminators import PatchArch
from imgtrans.nn.generators import ResnetArch
from imgtrans.nn.losses import GANLoss, feature_matching, r1_penalty
from imgtrans.train.objective import Phase


@dataclass(frozen=True)
class HeldOutConfig:
    """Test folders a translation run scores itself on (none: no held-out evaluation)."""

    test_a: str = field(default="", metadata={"cli": "--test-a",
                                              "help": "held-out domain A images, scored every eval_every steps "
                                                      "and at the end (with --test-b)"})
    test_b: str = field(default="", metadata={"cli": "--test-b", "help": "held-out domain B images"})
    test_images: int = 50  # per folder, evenly spread over its sorted files (0: all)
    test_judge: str = ""  # a domain judge (name, run or export) for the judge share; "": none
    test_size: str = "train"  # networks run at this short side, as `imgtrans translate --size`
    test_fid: bool = True  # FID/KID (needs the Inception weights; skipped with a note without them)

    def __post_init__(self) -> None:
        # Checked when the run starts, not at its first evaluation hours later.
        if bool(self.test_a) != bool(self.test_b):
            raise UserError("held-out evaluation needs both test folders: pass --test-a and --test-b")
        for flag, folder in (("--test-a", self.test_a), ("--test-b", self.test_b)):
            if folder and not Path(folder).is_dir():
                raise UserError(f"{flag} {folder}: folder not found")

    def enabled(self) -> bool:
        return bool(self.test_a)


@dataclass(frozen=True)
class UnpairedGANConfig(HeldOutConfig):
    """Settings every unpaired translation GAN here has: its two folders, a ResnetGenerator, PatchGAN
    discriminators, Adam and the crops it trains on; defaults are the reference project's (ANCHORS.md)."""

    a: str = field(default="", metadata={"cli": "--a", "help": "folder of domain A images (recursive)"})
    b: str = field(default="", metadata={"cli": "--b", "help": "folder of domain B images (recursive)"})
    ngf: int = 64
    ndf: int = 64
    n_blocks: int = 9
    n_layers_d: int = 3
    norm: str = "instance"
    dropout: bool = False
    residual: bool = False  # generator = input + learned edit, starting as the identity (ResnetArch)
    upsample: str = "transpose"  # or "resize": nearest 2x + conv, no checkerboard (ResnetArch)
    down_pad: str = "zero"  # or "reflect": padding of the stride-2 convs (ResnetArch)
    mask: bool = False  # generator = mask * content + (1 - mask) * input (ResnetArch)
    spectral_norm: bool = False
    d_scales: int = 1  # discriminator scales (PatchArch.scales); 2 adds a half-size judge
    gan_mode: str = "lsgan"
    # DiffAugment policy for every image a discriminator judges (imgtrans/nn/diffaug.py), e.g.
    # "color,translation,cutout"; "": none, the reference's.
    d_augment: str = ""
    # R1 weight gamma (imgtrans.nn.losses.r1_penalty): gamma / 2 * |grad D(real)|^2 is added to each
    # judge's loss, smoothing it around the real images (StyleGAN2, R3GAN); 0: off, the reference's.
    r1_gamma: float = 0.0
    # Weight of the generators' feature-matching term (imgtrans.nn.losses.feature_matching): their
    # fakes' per-channel statistics in each hidden discriminator layer against a real target batch's,
    # beside the adversarial term; 0: off, the reference's.
    lambda_fm: float = 0.0
    lr: float = 2e-4
    # The discriminators' LR; 0: `lr`. Set apart (e.g. lr 1e-4, lr_d 4e-4) it is the two time-scale
    # update rule (Heusel et al. 2017), which lets the judges keep pace with the generators.
    lr_d: float = 0.0
    beta1: float = 0.5
    beta2: float = 0.999
    load_size: int = 0  # 0: crop_size * 286 / 256, the reference ratio
    crop_size: int = 256
    flip: bool = True
    init_gain: float = 0.02

    def __post_init__(self) -> None:
        super().__post_init__()
        parse_policy(self.d_augment)  # a typo fails at start, not as a silent no-op
        if self.r1_gamma < 0:
            raise UserError(f"r1_gamma must be >= 0 (got {self.r1_gamma}); 0 turns the penalty off")
        if self.lambda_fm < 0:
            raise UserError(f"lambda_fm must be >= 0 (got {self.lambda_fm}); 0 turns feature matching off")

    def gan_phases(self, generators: tuple[str, ...], discriminators: tuple[str, ...]) -> list[Phase]:
        """The generator phase, then the discriminator phase, with their learning rates and Adam betas."""
        betas = (self.beta1, self.beta2)
        return [Phase("G", generators, self.lr, betas), Phase("D", discriminators, self.lr_d or self.lr, betas)]

    def crop_spec(self) -> CropSpec:
        return CropSpec(load_size=load_size_for(self.crop_size, self.load_size), crop_size=self.crop_size,
                        flip=self.flip)

    def generator_arch(self) -> ResnetArch:
        return ResnetArch(ngf=self.ngf, n_blocks=self.n_blocks, norm=self.norm, dropout=self.dropout,
                          residual=self.residual, upsample=self.upsample, down_pad=self.down_pad, mask=self.mask)

    def discriminator_arch(self) -> PatchArch:
        return PatchArch(ndf=self.ndf, n_layers=self.n_layers_d, norm=self.norm, spectral_norm=self.spectral_norm,
                         scales=self.d_scales)


def judge_real(d: nn.Module, aug: nn.Module, real: torch.Tensor, r1_gamma: float) -> tuple[Any, torch.Tensor | None]:
    """A discriminator's logits on (augmented) real images and, with r1_gamma > 0, its weighted R1
    penalty, taken against the images before augmentation as StyleGAN2-ADA does; else None."""
    if r1_gamma <= 0:
        return d(aug(real)), None
    real = real.detach().requires_grad_(True)
    pred = d(aug(real))
    return pred, r1_penalty(pred, real) * (r1_gamma / 2)


def fool_terms(gan: GANLoss, d: nn.Module, aug: nn.Module, fake: torch.Tensor, real: torch.Tensor,
               lambda_fm: float = 0.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The generator's adversarial term on `fake` against judge `d`, and with lambda_fm > 0 its
    weighted feature-matching term against the real target images `real` (else None).

    The judge sees `real` only when the loss needs it (a relativistic mode, feature matching) and
    then without a graph: real images are constants to the generator.
    """
    if lambda_fm <= 0:
        pred_fake, pred_real = d(aug(fake)), None
        if gan.relativistic:
            with torch.no_grad():
                pred_real = d(aug(real))
        return gan.fool(pred_fake, pred_real), None
    pred_fake, hidden_fake = d(aug(fake), features=True)
    with torch.no_grad():
        pred_real, hidden_real = d(aug(real), features=True)
    fm = feature_matching(hidden_fake, hidden_real) * lambda_fm
    return gan.fool(pred_fake, pred_real if gan.relativistic else None), fm


class ScoresHeldOut:
    """Mixin for translation objectives (a `cfg` that is a HeldOutConfig, `export()` by direction):
    `evaluate()` scores the exported generators on the test folders; None when none are named."""

    cfg: HeldOutConfig
    _held_out: Any = None  # eval.heldout.HeldOut, made at the first evaluation

    def evaluate(self) -> dict[str, Any] | None:
        if not self.cfg.enabled():
            return None
        if self._held_out is None:
            from imgtrans.eval.heldout import HeldOut  # lazy: Inception and the judge load only when used

            nets = self.networks().values()  # type: ignore[attr-defined]
            device = next(next(iter(nets)).parameters()).device
            self._held_out = HeldOut(self.cfg, device, self.build_inference)  # type: ignore[attr-defined]
        return self._held_out.score(self.export())  # type: ignore[attr-defined]

    def describe(self, figures: dict[str, Any]) -> str:
        from imgtrans.eval.heldout import summary

        return summary(figures)
