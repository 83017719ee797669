"""CUT / FastCUT (Park et al. 2020): one generator, one PatchGAN, adversarial + PatchNCE losses.

Contrastive Unpaired Translation keeps content by making each patch of the output image match
the patch at the same place of the input, and no other patch of it, in the generator's own
encoder features (passed through a small MLP head F). No second generator, no cycle.

Feature taps: CUT's default nce_layers 0,4,8,12,16 index its antialiased generator, whose
children are pad, conv7, norm, relu, (conv, norm, relu, blur-downsample) x2, blocks... Its taps
are the padded input image, the conv of each downsampling, and the outputs of resnet blocks 1
and 5. The same places in our `ResnetGenerator.model` (pad, conv7, norm, relu, (stride-2 conv,
norm, relu) x2, blocks at 10...) are children 0, 4, 7, 10, 14, the default here. (Feeding CUT's
numbers unchanged would tap a norm output at 8 and blocks 3 and 7 instead.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from imgtrans.data.unpaired import UnpairedImages, pair_tag, two_domains
from imgtrans.errors import UserError
from imgtrans.nn import GANLoss, PatchDiscriminator, ResnetGenerator, init_weights
from imgtrans.nn.diffaug import DiffAugment
from imgtrans.nn.generators import ResnetArch
from imgtrans.nn.patchnce import PatchHead, patch_nce, sample_patch_ids
from imgtrans.objectives.translation import ScoresHeldOut, UnpairedGANConfig, fool_terms, judge_real
from imgtrans.train.objective import Losses, ObjectiveBase, Phase

# What fast=true writes into the config (FastCUT, paper section 4). FastCUT also trains 150 + 50
# epochs instead of CUT's 200 + 200; epochs live in the train section, so set those there.
FASTCUT = {"lambda_nce": 10.0, "nce_idt": False, "flip_equivariance": True}

# `ResnetGenerator.model` children before the first resnet block: pad, conv7, norm, relu, then
# (stride-2 conv, norm, relu) twice.
ENCODER_STEM = 10


@dataclass(frozen=True)
class CUTConfig(UnpairedGANConfig):
    """CUT settings; defaults are the paper's CUT, `fast=true` turns them into FastCUT's."""

    # FastCUT preset: sets lambda_nce=10, nce_idt=false, flip_equivariance=true in this config
    # (so the saved config shows them) and takes precedence over them; false changes nothing.
    fast: bool = False
    lambda_gan: float = 1.0
    lambda_nce: float = 1.0
    nce_idt: bool = True  # also PatchNCE between B and G(B), the loss then averaging both
    nce_layers: tuple[int, ...] = (0, 4, 7, 10, 14)  # ResnetGenerator.model children (module doc)
    nce_T: float = 0.07
    num_patches: int = 256  # per layer and image
    f_width: int = 256  # F: per layer Linear(C, w), ReLU, Linear(w, w), then L2 normalisation
    flip_equivariance: bool = False  # half the steps, G sees mirrored inputs; features flipped back

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.fast:
            return
        if self.lambda_nce not in (1.0, FASTCUT["lambda_nce"]):
            raise UserError(f"fast=true sets lambda_nce={FASTCUT['lambda_nce']:g}, not {self.lambda_nce:g}; "
                            "for other values set fast=false, nce_idt=false and flip_equivariance=true")
        for name, value in FASTCUT.items():
            object.__setattr__(self, name, value)  # frozen: only construction may write


def tap_channels(arch: ResnetArch, layers: Sequence[int]) -> list[int]:
    """Channels of the outputs of `ResnetGenerator(arch).model[i]` for encoder children i."""
    last = ENCODER_STEM + arch.n_blocks - 1

    def channels(i: int) -> int:
        if not 0 <= i <= last:
            raise UserError(f"nce_layers: {i} is not an encoder layer of this generator (0..{last} with "
                            f"n_blocks={arch.n_blocks}); e.g. --set nce_layers=0,4,7,10,{last} (mapping: "
                            "imgtrans/objectives/cut.py)")
        if i == 0:
            return arch.in_channels  # the reflection-padded image
        return arch.ngf * (1 if i < 4 else 2 if i < 7 else 4)

    return [channels(i) for i in layers]


class CUT(ScoresHeldOut, ObjectiveBase):
    """Unpaired translation A -> B with contrastive patch losses (CUT, or FastCUT with fast=true).

    G_AB: A -> B; D_B judges domain B images; F projects G_AB's encoder features for PatchNCE.
    """

    name: ClassVar[str] = "cut"
    averaged: ClassVar[tuple[str, ...]] = ("G_AB",)
    config_class: ClassVar[type] = CUTConfig

    def __init__(self, cfg: CUTConfig, seed: int = 0) -> None:
        if not cfg.nce_layers:
            raise UserError("nce_layers: give at least one generator layer")
        if cfg.num_patches < 1 or cfg.nce_T <= 0:
            raise UserError("num_patches must be >= 1 and nce_T > 0")
        arch = cfg.generator_arch()
        nets: dict[str, nn.Module] = {
            "G_AB": ResnetGenerator(arch),
            "D_B": PatchDiscriminator(cfg.discriminator_arch()),
            # Built now, not on first use: the trainer makes its optimizers before step one.
            "F": PatchHead(tap_channels(arch, cfg.nce_layers), cfg.f_width),
        }
        for net in nets.values():
            init_weights(net, cfg.init_gain)
        super().__init__(nets)
        self.cfg, self.seed = cfg, seed
        self.gan = GANLoss(cfg.gan_mode)
        self.aug = DiffAugment(cfg.d_augment, seed * 2 + 101)
        self._fake: torch.Tensor | None = None  # G phase -> D phase of the same step

    def tag(self) -> str:
        return pair_tag(self.name, self.cfg.a, self.cfg.b)

    def phases(self) -> list[Phase]:
        return self.cfg.gan_phases(("G_AB", "F"), ("D_B",))

    def dataset(self) -> UnpairedImages:
        return two_domains(self.name, self.cfg.a, self.cfg.b, self.cfg.crop_spec(), self.seed)

    def loss(self, phase: str, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Losses]:
        return self._loss_g(batch) if phase == "G" else self._loss_d(batch)

    def _loss_g(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Losses]:
        c, n = self.cfg, self.nets
        real_a, real_b = batch["A"], batch["B"]
        flipped = c.flip_equivariance and bool(torch.rand(()) < 0.5)
        # A and B through G in one pass, as CUT; with instance norm the images stay independent.
        src = torch.cat([real_a, real_b]) if c.nce_idt else real_a
        out = n["G_AB"](src.flip(3) if flipped else src)
        fake_b = out[: len(real_a)]  # mirrored when flipped: still a domain B image for D
        adv, fm = fool_terms(self.gan, n["D_B"], self.aug, fake_b, real_b, c.lambda_fm)
        terms: Losses = {"G_GAN": adv * c.lambda_gan}
        if fm is not None:
            terms["G_FM"] = fm
        nce_a = self._nce(real_a, fake_b, flipped)
        if c.nce_idt:
            terms["NCE"] = 0.5 * nce_a  # CUT averages the two contrastive terms
            terms["NCE_Y"] = 0.5 * self._nce(real_b, out[len(real_a):], flipped)
        else:
            terms["NCE"] = nce_a
        self._fake = fake_b.detach()
        total = sum(terms.values())
        return total, {k: v.detach() for k, v in terms.items()}

    def _nce(self, src: torch.Tensor, out: torch.Tensor, flipped: bool) -> torch.Tensor:
        """lambda_nce x PatchNCE between G's features of `src` (keys) and of its translation `out`
        (queries), averaged over layers. `flipped`: `out` was made from the mirrored `src`, so its
        features are mirrored back to line up with the keys (flip equivariance)."""
        g, f, layers = self.nets["G_AB"], self.nets["F"], self.cfg.nce_layers
        with torch.no_grad():  # keys are targets (patch_nce detaches them): no graph needed
            key_feats = g(src, layers)
            ids = sample_patch_ids(key_feats, self.cfg.num_patches)
            keys = f(key_feats, ids)
        query_feats = g(out, layers)
        if flipped:
            query_feats = [t.flip(3) for t in query_feats]
        queries = f(query_feats, ids)
        per_layer = [patch_nce(q, k, len(src), self.cfg.nce_T) for q, k in zip(queries, keys)]
        return torch.stack(per_layer).mean() * self.cfg.lambda_nce

    def _loss_d(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Losses]:
        if self._fake is None:
            raise RuntimeError("the D phase needs the G phase's translation of the same step")
        d = self.nets["D_B"]
        pred_real, r1 = judge_real(d, self.aug, batch["B"], self.cfg.r1_gamma)
        on_real, on_fake = self.gan.judge(pred_real, d(self.aug(self._fake)))
        terms: Losses = {"D_real": 0.5 * on_real, "D_fake": 0.5 * on_fake}
        if r1 is not None:
            terms["r1"] = r1
        total = sum(terms.values())
        return total, {k: v.detach() for k, v in terms.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"aug": self.aug.state_dict()} if self.aug else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.aug and "aug" in state:
            self.aug.load_state_dict(state["aug"])

    def sample(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        g = self.nets["G_AB"]
        images = {"real_A": batch["A"], "fake_B": g(batch["A"]), "real_B": batch["B"]}
        if self.cfg.nce_idt:
            images["idt_B"] = g(batch["B"])
        return images

    def export(self) -> dict[str, tuple[dict[str, torch.Tensor], dict[str, Any]]]:
        meta = {
            "objective": self.name,
            "network": "resnet_generator",
            "direction": "AtoB",
            "official_name": "G",  # the CUT project's name for the generator
            "arch": self.cfg.generator_arch().to_dict(),
            "train_size": self.cfg.crop_spec().load_size,  # the scale whole images were seen at
            "data": {"a": self.cfg.a, "b": self.cfg.b},
        }
        return {"AtoB": (self._nets["G_AB"].state_dict(), meta)}

    @classmethod
    def build_inference(cls, meta: dict[str, Any]) -> nn.Module:
        return ResnetGenerator(ResnetArch(**meta["arch"]))
