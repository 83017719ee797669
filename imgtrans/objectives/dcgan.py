"""DCGAN faces (Radford et al. 2016): the paper's networks, seeded latents and the training objective."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from imgtrans.data.face_frames import FaceFile, FaceFiles, FaceImages, indexed_faces
from imgtrans.data.unpaired import scan_folder
from imgtrans.errors import UserError
from imgtrans.nn import GANLoss, init_weights
from imgtrans.train.objective import Losses, ObjectiveBase, Phase

GENERATOR_EXPORT = "generator"
CALIBRATION_SEED = 20160107  # private latent stream for batch-norm calibration (any fixed number)


# ----- networks ----------------------------------------------------------------------------
@dataclass(frozen=True)
class DCGANArch:
    """Shape of both DCGAN networks: latent size, widths and image side (a power of two >= 8)."""

    nz: int = 100
    ngf: int = 64
    ndf: int = 64
    size: int = 64

    def stages(self) -> int:
        """Stride-2 layers between 4x4 and the image side (4 at 64 px, as the paper)."""
        n = int(round(math.log2(self.size))) if self.size > 0 else 0
        if self.size < 8 or 2**n != self.size:
            raise UserError(f"dcgan size {self.size}: use a power of two >= 8 (64 as the paper)")
        return n - 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _bn(channels: int, track: bool) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, track_running_stats=track)


class Generator(nn.Module):
    """(N, nz) latents -> (N, 3, size, size) images in [-1, 1].

    The paper's generator: a 4x4 transposed conv from z, then stride-2 transposed convs halving
    the width (8 ngf at 4x4 down to ngf at size/2), batch norm + ReLU after each, tanh at the end.

    `track_stats=False` (training) normalises with batch statistics only and keeps no running
    buffers: under DDP every rank would otherwise update them from its own batch after DDP's
    broadcast, and ranks would drift apart. Inference networks track them and get population
    statistics from `calibrate_batch_norm` at export, so a face depends on its seed alone, not
    on the rest of its batch.
    """

    def __init__(self, arch: DCGANArch = DCGANArch(), track_stats: bool = True) -> None:
        super().__init__()
        self.arch = arch
        n = arch.stages()
        widths = [arch.ngf * 2 ** (n - 1 - i) for i in range(n)]  # at 4x4 ... size/2
        layers: list[nn.Module] = [nn.ConvTranspose2d(arch.nz, widths[0], 4, 1, 0, bias=False),
                                   _bn(widths[0], track_stats), nn.ReLU(True)]
        for cin, cout in zip(widths, widths[1:]):
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), _bn(cout, track_stats), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(widths[-1], 3, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z.reshape(len(z), -1, 1, 1))


class Discriminator(nn.Module):
    """(N, 3, size, size) images -> (N,) logits that they are real.

    Stride-2 convs doubling the width from ndf, LeakyReLU(0.2), batch norm on all but the first
    (as the paper), then a 4x4 conv to one logit. Batch statistics only, as the generator.
    """

    def __init__(self, arch: DCGANArch = DCGANArch()) -> None:
        super().__init__()
        n = arch.stages()
        widths = [arch.ndf * 2**i for i in range(n)]  # at size/2 ... 4x4
        layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        for cin, cout in zip(widths, widths[1:]):
            layers += [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), _bn(cout, False), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(widths[-1], 1, 4, 1, 0, bias=False))
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).flatten()


@torch.no_grad()
def calibrate_batch_norm(net: Generator, samples: int, batch: int = 256, seed: int = CALIBRATION_SEED) -> Generator:
    """Set `net`'s running statistics to their average over `samples` random latents.

    Batch-norm layers in train mode with momentum None keep a cumulative mean of the batch
    statistics: the population statistics the generator was trained under. The latents come
    from a private generator, so calibrating never moves the training RNG (exact resume).
    """
    device = next(net.parameters()).device
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    gen = torch.Generator().manual_seed(seed)
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    # Equal batches: the cumulative average weighs every batch the same.
    batches = math.ceil(max(samples, 2) / batch)
    per_batch = max(2, math.ceil(max(samples, 2) / batches))
    for _ in range(batches):
        net(torch.randn(per_batch, net.arch.nz, generator=gen).to(device))
    for m in norms:
        m.momentum = 0.1
    return net.eval()


# ----- seeds -------------------------------------------------------------------------------
def z_from_seed(seed: int, nz: int) -> torch.Tensor:
    """The latent of one face: N(0, I) drawn from its own seeded generator, so a seed names the
    same face in every run, batch and order."""
    return torch.randn(nz, generator=torch.Generator().manual_seed(int(seed)))


def latents(seeds: list[int] | range, nz: int) -> torch.Tensor:
    """(len(seeds), nz) latents, one per seed."""
    return torch.stack([z_from_seed(s, nz) for s in seeds]) if len(seeds) else torch.zeros(0, nz)


# ----- DCGAN objective ---------------------------------------------------------------------
@dataclass(frozen=True)
class DCGANConfig:
    """DCGAN settings; defaults are the paper's (64 px, z of 100, Adam 2e-4, beta1 0.5)."""

    images: str = field(default="", metadata={"cli": "--images",
                                              "help": "folder of face images used as they are (centre square, "
                                                      "resized to --set size)"})
    faces: str = field(default="", metadata={"cli": "--faces",
                                             "help": "the data's faces/ folder: each indexed face aligned with "
                                                     "our landmarks and template"})
    index: str = field(default="", metadata={"cli": "--index",
                                             "help": "with --faces: CSV with a 'file' column relative to it "
                                                     "(default: utkface, lfw_pairs, closed_eyes index.csv)"})
    nz: int = 100
    ngf: int = 64
    ndf: int = 64
    size: int = 64
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    flip: bool = True
    init_gain: float = 0.02  # N(0, 0.02) as the paper
    sample_grid: int = 8  # samples/ shows the faces of seeds 0 .. grid^2 - 1
    bn_calibration: int = 1024  # latents averaged for the exported generator's batch-norm statistics

    def arch(self) -> DCGANArch:
        return DCGANArch(nz=self.nz, ngf=self.ngf, ndf=self.ndf, size=self.size)


class DCGAN(ObjectiveBase):
    """Unconditional 64 px face generator: latent z of 100 -> face, with the non-saturating GAN loss.

    The generator phase draws z from the global torch RNG (saved in checkpoints, so resume is
    exact) and keeps its fakes for the discriminator phase, which sees real and fake batches
    separately (batch norm statistics of one kind each, as the paper's reference code).
    """

    name: ClassVar[str] = "dcgan"
    averaged: ClassVar[tuple[str, ...]] = ("G",)
    config_class: ClassVar[type] = DCGANConfig

    def __init__(self, cfg: DCGANConfig, seed: int = 0) -> None:
        arch = cfg.arch()
        nets: dict[str, nn.Module] = {"G": Generator(arch, track_stats=False), "D": Discriminator(arch)}
        for net in nets.values():
            init_weights(net, cfg.init_gain)
        super().__init__(nets)
        self.cfg, self.seed = cfg, seed
        self.gan = GANLoss("vanilla")  # BCE on logits; G's target "real" is the non-saturating loss
        self._fake: torch.Tensor | None = None
        self._data: FaceImages | None = None

    def tag(self) -> str:
        folder = Path(self.cfg.faces or self.cfg.images).resolve()
        return f"{self.name}-{folder.name}" if folder.name else self.name

    def phases(self) -> list[Phase]:
        betas = (self.cfg.beta1, self.cfg.beta2)
        return [Phase("G", ("G",), self.cfg.lr, betas), Phase("D", ("D",), self.cfg.lr, betas)]

    def dataset(self) -> FaceImages:
        if self._data is None:  # landmarks are found (or read from the cache) once per run
            c = self.cfg
            if bool(c.images) == bool(c.faces):
                raise UserError("dcgan needs one source of faces: --images FOLDER (used as they are) or "
                                "--faces FOLDER (the data's faces/, aligned)")
            if c.faces:
                files = indexed_faces(c.faces, c.index)
            else:
                files = FaceFiles([FaceFile(p) for p in scan_folder(c.images, "images")])
            self._data = FaceImages(files, c.size, c.flip, seed=self.seed)
        return self._data

    def _z(self, n: int, device: torch.device) -> torch.Tensor:
        # Drawn on the CPU generator whatever the device: the same run gives the same latents on
        # CPU and GPU, and the trainer's saved RNG state covers them.
        return torch.randn(n, self.cfg.nz).to(device)

    def loss(self, phase: str, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Losses]:
        real = batch["image"]
        if len(real) < 2:
            raise UserError("dcgan's batch norm needs batches of 2 or more per process: pass --set batch_size=64 "
                            "(the paper used 128)")
        g, d = self.nets["G"], self.nets["D"]
        if phase == "G":
            fake = g(self._z(len(real), real.device))
            self._fake = fake.detach()
            loss = self.gan(d(fake), True, for_d=False)
            return loss, {"G": loss.detach()}
        if self._fake is None:
            raise RuntimeError("the D phase runs after the G phase of the same step")
        logits_real, logits_fake = d(real).float(), d(self._fake).float()
        terms = {"D_real": self.gan(logits_real, True), "D_fake": self.gan(logits_fake, False)}
        total = terms["D_real"] + terms["D_fake"]
        # D(x) and D(G(z)) as in the reference code's log: both drift towards 0.5 when training is healthy.
        return total, {**{k: v.detach() for k, v in terms.items()},
                       "D_x": torch.sigmoid(logits_real).mean().detach(),
                       "D_G_z": torch.sigmoid(logits_fake).mean().detach()}

    def sample(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The faces of seeds 0 .. n^2 - 1 as an n x n grid (row-major), the same every time."""
        n = max(1, self.cfg.sample_grid)
        device = batch["image"].device
        faces = self.nets["G"](latents(range(n * n), self.cfg.nz).to(device)).float()
        return {f"col{c}": faces[c::n] for c in range(n)}

    def inference_generator(self) -> Generator:
        """A copy of G with population batch-norm statistics, ready for inference."""
        trained = self._nets["G"]
        g = Generator(self.cfg.arch(), track_stats=True).to(next(trained.parameters()).device)
        g.load_state_dict(trained.state_dict(), strict=False)  # running buffers come from calibration
        return calibrate_batch_norm(g, self.cfg.bn_calibration)

    def export(self) -> dict[str, tuple[dict[str, torch.Tensor], dict[str, Any]]]:
        c = self.cfg
        meta = {
            "objective": self.name,
            "network": "dcgan_generator",
            "arch": c.arch().to_dict(),
            "train_size": c.size,
            "latent": f"z ~ N(0, I) of {c.nz} dims; seed s -> torch.randn(nz, generator=manual_seed(s))",
            "bn_calibration": c.bn_calibration,
            "data": {"images": c.images, "faces": c.faces, "index": c.index},
        }
        return {GENERATOR_EXPORT: (self.inference_generator().state_dict(), meta)}

    @classmethod
    def build_inference(cls, meta: dict[str, Any]) -> nn.Module:
        return Generator(DCGANArch(**meta["arch"]), track_stats=True)
