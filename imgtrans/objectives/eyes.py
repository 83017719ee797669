"""ExGAN-style eye in-painting (Dolhansky & Canton Ferrer 2018): exemplar-conditioned G, global + local Ds."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn
from torchvision.ops import roi_align

from imgtrans.data.faces import InpaintFaces, SampleSpec, read_records
from imgtrans.errors import UserError
from imgtrans.faces.eyes import EyeBoxSpec
from imgtrans.nn import GANLoss, PatchDiscriminator, ResnetGenerator, init_weights
from imgtrans.nn.discriminators import PatchArch
from imgtrans.nn.generators import ResnetArch
from imgtrans.nn.losses import l1
from imgtrans.train.objective import Losses, ObjectiveBase, Phase

IN_CHANNELS = 8  # masked face 3, mask 1, exemplar 3, exemplar present 1
TEMPLATE = "arcface5"  # the 5-point alignment template of imgtrans.faces.eyes


def compose_input(face: torch.Tensor, mask: torch.Tensor, exemplar: torch.Tensor,
                  has_exemplar: torch.Tensor) -> torch.Tensor:
    """The generator's (N, 8, S, S) input; shared by training and inference.

    Channels: the face with its eye boxes zeroed, the mask in {-1, 1}, the exemplar (zeros when
    absent) and a constant plane in {-1, 1} saying whether an exemplar is present, so G can tell a
    missing exemplar from a mid-grey one.
    """
    n, _, h, w = face.shape
    has = has_exemplar.reshape(n, 1, 1, 1).to(face.dtype)
    return torch.cat([face * (1 - mask), mask * 2 - 1, exemplar * has, (has * 2 - 1).expand(n, 1, h, w)], 1)


def composite(face: torch.Tensor, generated: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The face outside the mask, the generator's pixels inside it."""
    return face * (1 - mask) + generated * mask


def eye_crops(images: torch.Tensor, boxes: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """(2N, C, h, w) crops of each image's two boxes (image 0 left eye, image 0 right eye, ...).

    Boxes are in pixel-edge coordinates (pixel i spans [i, i + 1]); aligned=True makes roi_align
    sample at the same pixel centres.
    """
    images = images.float()  # box coordinates need float32: bf16 would round them to 0.5 px
    n = images.shape[0]
    index = torch.arange(n, device=images.device, dtype=images.dtype).repeat_interleave(boxes.shape[1])
    rois = torch.cat([index[:, None], boxes.reshape(-1, 4).to(images.dtype)], 1)
    return roi_align(images, rois, out_hw, spatial_scale=1.0, sampling_ratio=2, aligned=True)


def _exemplar(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The batch's exemplars, zero where there is none."""
    return batch["exemplar"] * batch["has_exemplar"].reshape(-1, 1, 1, 1)


@dataclass(frozen=True)
class EyesConfig:
    """Eye in-painting settings; losses and discriminators as in ExGAN's public ports (ANCHORS.md)."""

    faces: str = field(default="", metadata={"cli": "--faces", "help": "the data's faces/ folder "
                                             "(lfw_pairs/ and utkface/ with index.csv), or the root of --index paths"})
    index: str = field(default="", metadata={"cli": "--index", "help": "CSV of training photos: "
                                             "file[,identity][,open_left,open_right], paths relative to --faces"})
    size: int = 128
    ngf: int = 32
    n_blocks: int = 6
    ndf: int = 32
    n_layers_d: int = 3
    local_ndf: int = 32
    spectral_norm: bool = True
    gan_mode: str = "hinge"
    norm: str = "instance"  # G's; the discriminators use none under spectral norm
    lambda_hole: float = 10.0  # L1 inside the mask, normalised by the mask area
    lambda_full: float = 1.0  # L1 of G's raw output over the whole image
    lambda_adv: float = 1.0  # global + local adversarial
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    open_above: float = 0.2  # keep photos whose eyes both score above this
    local_hw: tuple[int, int] = (32, 48)  # eye crop height, width for the local D (boxes are 3:2)
    box_width: float = 0.6  # eye box, fractions of the inter-ocular distance (EyeBoxSpec)
    box_height: float = 0.4
    box_dy: float = 0.0
    center_jitter: float = 0.08
    size_jitter: float = 0.15
    flip: bool = True
    init_gain: float = 0.02

    def generator_arch(self) -> ResnetArch:
        return ResnetArch(in_channels=IN_CHANNELS, out_channels=3, ngf=self.ngf, n_blocks=self.n_blocks,
                          norm=self.norm)

    def _d_norm(self) -> str:
        # Spectral norm already bounds each layer; a norm on top fights it (and InstanceNorm on
        # small eye crops has few pixels to average), so the ports drop it.
        return "none" if self.spectral_norm else self.norm

    def global_arch(self) -> PatchArch:
        return PatchArch(in_channels=6, ndf=self.ndf, n_layers=self.n_layers_d, norm=self._d_norm(),
                         spectral_norm=self.spectral_norm)

    def local_arch(self) -> PatchArch:
        return PatchArch(in_channels=3, ndf=self.local_ndf, n_layers=2, norm=self._d_norm(),
                         spectral_norm=self.spectral_norm)

    def box_spec(self) -> EyeBoxSpec:
        return EyeBoxSpec(width=self.box_width, height=self.box_height, dy=self.box_dy)

    def sample_spec(self) -> SampleSpec:
        return SampleSpec(size=self.size, box=self.box_spec(), center_jitter=self.center_jitter,
                          size_jitter=self.size_jitter, flip=self.flip)


class EyeInpainting(ObjectiveBase):
    """In-paint the eye regions of aligned faces from a same-person exemplar (ExGAN).

    G sees the masked face, the mask and the exemplar; D_global judges whole faces (paired with
    the exemplar), D_local the two eye crops.
    """

    name: ClassVar[str] = "eyes"
    averaged: ClassVar[tuple[str, ...]] = ("G",)
    config_class: ClassVar[type] = EyesConfig

    def __init__(self, cfg: EyesConfig, seed: int = 0) -> None:
        if cfg.size % ResnetGenerator.stride:
            raise UserError(f"size {cfg.size} must be a multiple of {ResnetGenerator.stride}")
        nets: dict[str, nn.Module] = {
            "G": ResnetGenerator(cfg.generator_arch()),
            "D_global": PatchDiscriminator(cfg.global_arch()),
            "D_local": PatchDiscriminator(cfg.local_arch()),
        }
        for net in nets.values():
            init_weights(net, cfg.init_gain)
        super().__init__(nets)
        self.cfg, self.seed = cfg, seed
        self.gan = GANLoss(cfg.gan_mode)
        self._fake: torch.Tensor | None = None
        self._dataset: InpaintFaces | None = None

    def phases(self) -> list[Phase]:
        betas = (self.cfg.beta1, self.cfg.beta2)
        return [Phase("G", ("G",), self.cfg.lr, betas), Phase("D", ("D_global", "D_local"), self.cfg.lr, betas)]

    def dataset(self) -> InpaintFaces:
        # Built once: finding landmarks for thousands of photos is slow even from the cache, and
        # launch and the trainer each ask for the dataset.
        if self._dataset is None:
            if not self.cfg.faces:
                raise UserError("eyes needs training faces: pass --faces FOLDER (the data's faces/ folder)")
            records = read_records(self.cfg.faces, self.cfg.index, self.cfg.open_above)
            self._dataset = InpaintFaces(records, self.cfg.sample_spec(), seed=self.seed)
        return self._dataset

    def _generate(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """G's raw output and its composite into the face."""
        face, mask = batch["face"], batch["mask"]
        raw = self.nets["G"](compose_input(face, mask, batch["exemplar"], batch["has_exemplar"]))
        return raw, composite(face, raw, mask)

    def _judge(self, image: torch.Tensor, exemplar: torch.Tensor,
               boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Global and local logits for `image`; the global D also sees the exemplar, as in ExGAN."""
        whole = self.nets["D_global"](torch.cat([image, exemplar], 1))
        local = self.nets["D_local"](eye_crops(image, boxes, self.cfg.local_hw))
        return whole, local

    def _judge_real(self, batch: dict[str, torch.Tensor]) -> tuple[Any, Any]:
        """Both judges' logits on the real faces, for a relativistic generator loss; else (None, None)."""
        if not self.gan.relativistic:
            return None, None
        with torch.no_grad():  # constants to the generator
            return self._judge(batch["face"], _exemplar(batch), batch["boxes"])

    def loss(self, phase: str, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Losses]:
        return self._loss_g(batch) if phase == "G" else self._loss_d(batch)

    def _loss_g(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Losses]:
        c = self.cfg
        face, mask = batch["face"], batch["mask"]
        raw, comp = self._generate(batch)
        whole, local = self._judge(comp, _exemplar(batch), batch["boxes"])
        real_whole, real_local = self._judge_real(batch)
        # Per masked pixel, so the hole term's weight does not depend on how big the boxes are.
        area = (mask.float().sum() * face.shape[1]).clamp_min(1.0)
        hole = ((raw.float() - face.float()).abs() * mask.float()).sum() / area
        terms: Losses = {
            "G_global": self.gan.fool(whole, real_whole) * c.lambda_adv,
            "G_local": self.gan.fool(local, real_local) * c.lambda_adv,
            "hole": hole * c.lambda_hole,
            # On the raw output, not the composite (which equals the face outside the mask): it
            # keeps G's whole image close to the face, so its in-painted edges meet the surround.
            "full": l1(raw, face) * c.lambda_full,
        }
        self._fake = comp.detach()
        total = sum(terms.values())
        return total, {k: v.detach() for k, v in terms.items()}

    def _loss_d(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Losses]:
        if self._fake is None:
            raise RuntimeError("the D phase needs the G phase's composite of the same step; run G first")
        # Real and fake in one call per D: one spectral-norm power iteration per step, and one
        # forward per DDP wrapper. Every layer treats samples independently (no batch norm by
        # default), so this equals two separate calls.
        n = batch["face"].shape[0]
        images = torch.cat([batch["face"], self._fake.to(batch["face"].dtype)])
        exemplar, boxes = _exemplar(batch).repeat(2, 1, 1, 1), batch["boxes"].repeat(2, 1, 1)
        whole, local = self._judge(images, exemplar, boxes)
        real_whole, fake_whole = whole[:n], whole[n:]
        real_local, fake_local = local[: 2 * n], local[2 * n:]  # two eyes per face
        terms: Losses = {
            "D_global": 0.5 * sum(self.gan.judge(real_whole, fake_whole)),
            "D_local": 0.5 * sum(self.gan.judge(real_local, fake_local)),
        }
        self._fake = None  # one step's fakes are never judged again
        total = terms["D_global"] + terms["D_local"]
        return total, {k: v.detach() for k, v in terms.items()}

    def sample(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        face, mask = batch["face"], batch["mask"]
        _, comp = self._generate(batch)
        return {"masked": face * (1 - mask), "exemplar": _exemplar(batch), "output": comp, "real": face}

    def export(self) -> dict[str, tuple[dict[str, torch.Tensor], dict[str, Any]]]:
        meta = {
            "objective": self.name,
            "network": "resnet_generator",
            "arch": self.cfg.generator_arch().to_dict(),
            "size": self.cfg.size,
            "box_spec": asdict(self.cfg.box_spec()),
            "template": TEMPLATE,
            "data": {"faces": self.cfg.faces, "index": self.cfg.index},
        }
        return {"inpainter": (self._nets["G"].state_dict(), meta)}

    @classmethod
    def build_inference(cls, meta: dict[str, Any]) -> nn.Module:
        return ResnetGenerator(ResnetArch(**meta["arch"]))
