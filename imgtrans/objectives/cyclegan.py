"""CycleGAN (Zhu et al. 2017): two generators, two PatchGANs, adversarial + cycle + identity losses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from imgtrans.data.unpaired import UnpairedImages, pair_tag, two_domains
from imgtrans.nn import GANLoss, PatchDiscriminator, ResnetGenerator, init_weights
from imgtrans.nn.diffaug import DiffAugment
from imgtrans.nn.generators import ResnetArch
from imgtrans.nn.losses import l1
from imgtrans.objectives.translation import ScoresHeldOut, UnpairedGANConfig, fool_terms, judge_real
from imgtrans.train.objective import Branch, Losses, ObjectiveBase, Phase, combine
from imgtrans.train.pool import ImagePool

# Export names by direction; "G_A"/"G_B" are the reference project's names for the same nets.
DIRECTIONS = {"AtoB": ("G_AB", "G_A"), "BtoA": ("G_BA", "G_B")}


@dataclass(frozen=True)
class CycleGANConfig(UnpairedGANConfig):
    """CycleGAN settings; defaults are the reference project's (ANCHORS.md)."""

    lambda_cycle: float = 10.0
    # Per-cycle weights (None: lambda_cycle). Cycle B (B -> A -> B) makes the A images made from B
    # carry what B needs back (a zebra's stripes on its horse); a lower lambda_cycle_b loosens that.
    lambda_cycle_a: float | None = None
    lambda_cycle_b: float | None = None
    lambda_identity: float = 0.5  # times lambda_cycle, as the reference
    pool_size: int = 50

    def cycle_weight(self, src: str) -> float:
        """The weight of the cycle that starts in domain `src` ("A" or "B")."""
        own = self.lambda_cycle_a if src == "A" else self.lambda_cycle_b
        return self.lambda_cycle if own is None else own


class CycleGAN(ScoresHeldOut, ObjectiveBase):
    """Unpaired translation between two image folders, both directions at once.

    G_AB: A -> B, G_BA: B -> A; D_A judges domain A images, D_B domain B images.
    """

    name: ClassVar[str] = "cyclegan"
    averaged: ClassVar[tuple[str, ...]] = ("G_AB", "G_BA")
    config_class: ClassVar[type] = CycleGANConfig

    def __init__(self, cfg: CycleGANConfig, seed: int = 0) -> None:
        g, d = cfg.generator_arch(), cfg.discriminator_arch()
        nets: dict[str, nn.Module] = {
            "G_AB": ResnetGenerator(g),
            "G_BA": ResnetGenerator(g),
            "D_A": PatchDiscriminator(d),
            "D_B": PatchDiscriminator(d),
        }
        for net in nets.values():
            init_weights(net, cfg.init_gain)
        super().__init__(nets)
        self.cfg, self.seed = cfg, seed
        self.gan = GANLoss(cfg.gan_mode)
        self.pools = {"A": ImagePool(cfg.pool_size, seed * 2 + 1), "B": ImagePool(cfg.pool_size, seed * 2 + 2)}
        # One augmenter per judge: the two halves of a phase may run at once (branches).
        self.augs = {k: DiffAugment(cfg.d_augment, seed * 2 + 101 + i) for i, k in enumerate("AB")}
        self._fakes: dict[str, torch.Tensor] = {}

    def tag(self) -> str:
        return pair_tag(self.name, self.cfg.a, self.cfg.b)

    def phases(self) -> list[Phase]:
        return self.cfg.gan_phases(("G_AB", "G_BA"), ("D_A", "D_B"))

    def dataset(self) -> UnpairedImages:
        return two_domains(self.name, self.cfg.a, self.cfg.b, self.cfg.crop_spec(), self.seed)

    def loss(self, phase: str, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Losses]:
        return combine([branch() for branch in self._branches(phase, batch)])

    def branches(self, phase: str, batch: dict[str, torch.Tensor]) -> list[Branch]:
        # Dropout draws from the global random stream, which concurrent branches would interleave.
        return [] if self.cfg.dropout else self._branches(phase, batch)

    def _branches(self, phase: str, batch: dict[str, torch.Tensor]) -> list[Branch]:
        """The two mirror-image halves of a phase: one per source domain (G) or per judge (D)."""
        if phase == "G":
            return [lambda: self._cycle(batch, "A", "B"), lambda: self._cycle(batch, "B", "A")]
        return [lambda: self._judge(batch, "A"), lambda: self._judge(batch, "B")]

    def _cycle(self, batch: dict[str, torch.Tensor], src: str, dst: str) -> tuple[torch.Tensor, Losses]:
        """src -> dst -> src: the forward generator's adversarial term, the cycle term, and the
        backward generator's identity term on this source (it maps to src, so src must pass)."""
        c, n = self.cfg, self.nets
        forward, back = n[f"G_{src}{dst}"], n[f"G_{dst}{src}"]
        real = batch[src]
        fake = forward(real)
        adv, fm = fool_terms(self.gan, n[f"D_{dst}"], self.augs[dst], fake, batch[dst], c.lambda_fm)
        terms: Losses = {f"G_{src}{dst}": adv, f"cycle_{src}": l1(back(fake), real) * c.cycle_weight(src)}
        if fm is not None:
            terms[f"fm_{src}{dst}"] = fm
        if c.lambda_identity > 0:
            terms[f"idt_{src}"] = l1(back(real), real) * (c.lambda_cycle * c.lambda_identity)
        self._fakes[dst] = fake.detach().float()
        total = sum(terms.values())
        return total, {k: v.detach() for k, v in terms.items()}

    def _judge(self, batch: dict[str, torch.Tensor], domain: str) -> tuple[torch.Tensor, Losses]:
        d, aug = self.nets[f"D_{domain}"], self.augs[domain]
        fake = self.pools[domain].query(self._fakes[domain])
        pred_real, r1 = judge_real(d, aug, batch[domain], self.cfg.r1_gamma)
        loss = 0.5 * sum(self.gan.judge(pred_real, d(aug(fake))))
        if r1 is None:
            return loss, {f"D_{domain}": loss.detach()}
        return loss + r1, {f"D_{domain}": loss.detach(), f"r1_{domain}": r1.detach()}

    def sample(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        n = self.nets
        fake_b, fake_a = n["G_AB"](batch["A"]), n["G_BA"](batch["B"])
        return {"real_A": batch["A"], "fake_B": fake_b, "rec_A": n["G_BA"](fake_b),
                "real_B": batch["B"], "fake_A": fake_a, "rec_B": n["G_AB"](fake_a)}

    def state_dict(self) -> dict[str, Any]:
        state = {f"pool_{k}": p.state_dict() for k, p in self.pools.items()}
        state.update({f"aug_{k}": a.state_dict() for k, a in self.augs.items() if a})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = next(self._nets["G_AB"].parameters()).device
        for k, p in self.pools.items():
            if f"pool_{k}" in state:  # absent in a compact checkpoint: the pool refills as it trains
                p.load_state_dict(state[f"pool_{k}"], device)
        for k, a in self.augs.items():
            if a and f"aug_{k}" in state:
                a.load_state_dict(state[f"aug_{k}"])

    def export(self) -> dict[str, tuple[dict[str, torch.Tensor], dict[str, Any]]]:
        out = {}
        for direction, (net, official) in DIRECTIONS.items():
            meta = {
                "objective": self.name,
                "network": "resnet_generator",
                "direction": direction,
                "official_name": official,
                "arch": self.cfg.generator_arch().to_dict(),
                "train_size": self.cfg.crop_spec().load_size,  # the scale whole images were seen at
                "data": {"a": self.cfg.a, "b": self.cfg.b},
            }
            out[direction] = (self._nets[net].state_dict(), meta)
        return out

    @classmethod
    def build_inference(cls, meta: dict[str, Any]) -> nn.Module:
        return ResnetGenerator(ResnetArch(**meta["arch"]))
