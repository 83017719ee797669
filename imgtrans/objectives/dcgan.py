"""DCGAN faces (Radford et al. 2016) and the face-attribute classifiers that find its latent directions."""

from __future__ import annotations

import math
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from imgtrans.data.faces import index_records, val_identity
from imgtrans.data.stream import pick, sample_seed
from imgtrans.data.transforms import to_tensor
from imgtrans.data.unpaired import scan_folder
from imgtrans.errors import UserError
from imgtrans.eval.judge import JudgeArch, JudgeNet
from imgtrans.faces.eyes import TEMPLATE, Alignment, align
from imgtrans.io import ImageReadError, read_rgb
from imgtrans.nn import GANLoss, init_weights
from imgtrans.objectives.eyestate import is_validation, jitter_alignment, photometric
from imgtrans.train.objective import Losses, ObjectiveBase, Phase

# The prepared faces/ folders (../shared/data/README.md) read by default. closed_eyes/ adds the
# only sizeable set of real closed eyes (48 of its 67 photos score below 0.12; utkface has 14).
FACE_SOURCES = ("utkface", "lfw_pairs", "closed_eyes")
GENERATOR_EXPORT = "generator"
ATTRIBUTE_EXPORT = "attributes"
ATTRIBUTES = ("male", "age", "eyes_open")  # classifier heads, in order; positive = male, old, open
UTK_NAME = re.compile(r"^(\d+)_([01])_(\d)_")  # AGE_GENDER_RACE_date.jpg.chip.jpg, gender 0 = male
# The face frame: our 5-point template alignment, zoomed so the eyes are FRAME_IOD of the side
# apart with their midpoint at FRAME_EYES_Y from the top. UTKFace chips are that tight (eyes
# about 0.31 from the top, 0.39 apart): the template's own frame reaches past them, and the
# border reflection paints mirrored eyes into the forehead, which a GAN learns as faithfully
# as the face.
FRAME_IOD, FRAME_EYES_Y = 0.40, 0.32
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


class AttributeNet(JudgeNet):
    """(N, 3, S, S) aligned faces in [-1, 1] -> (N, A) logits, one per attribute.

    The domain judge's body (four stride-2 convs, no normalisation, global average pooling)
    with one linear head per attribute: heads share features, and batches may be small.
    """

    def __init__(self, width: int = 32, n_attributes: int = len(ATTRIBUTES)) -> None:
        super().__init__(JudgeArch(width))
        self.head = nn.Linear(self.num_features, n_attributes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# ----- face images -------------------------------------------------------------------------
def square(rgb: np.ndarray, size: int) -> np.ndarray:
    """The centred square of an image, resized to size x size (area filter: no aliasing)."""
    h, w = rgb.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = np.ascontiguousarray(rgb[top:top + s, left:left + s])
    return crop if s == size else cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


def frame_alignment(landmarks: np.ndarray, size: int) -> Alignment:
    """Our template alignment, zoomed and shifted to the face frame (FRAME_IOD, FRAME_EYES_Y)."""
    base = align(np.asarray(landmarks, np.float64), size)
    eyes = TEMPLATE[:2].mean(0)
    zoom = FRAME_IOD / float(np.linalg.norm(TEMPLATE[1] - TEMPLATE[0]))
    shift = np.array([[zoom, 0, size * (0.5 - zoom * eyes[0])], [0, zoom, size * (FRAME_EYES_Y - zoom * eyes[1])],
                      [0, 0, 1]])
    return Alignment((shift @ np.vstack([base.matrix, [0, 0, 1]]))[:2], size)


def aligned_face(rgb: np.ndarray, landmarks: np.ndarray, size: int,
                 rng: np.random.Generator | None = None) -> np.ndarray:
    """The face in our frame at `size` px (randomly jittered when `rng` is given).

    Warped at twice the size, then area-resized: the prepared photos are 2-3x larger than a
    64 px face, and a direct bilinear warp would alias.
    """
    base = frame_alignment(landmarks, 2 * size)
    if rng is not None:
        base = jitter_alignment(base, rng)
    return cv2.resize(base.warp(rgb), (size, size), interpolation=cv2.INTER_AREA)


def find_landmarks(files: list[Path]) -> dict[Path, np.ndarray | None]:
    """5-point landmarks per file (None: no face), cached in $IMGTRANS_HOME by faces.landmarks."""
    from imgtrans.faces.landmarks import dataset_landmarks  # lazy: loads the MTCNN detector

    started = time.monotonic()
    found = dataset_landmarks(files, progress=sys.stderr.isatty())
    if time.monotonic() - started > 10:  # a real detection pass, not cache hits
        print(f"faces: landmarks for {len(files)} files in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return found


@dataclass(frozen=True)
class FaceFile:
    """One training image: its file, its landmarks (None: use the image as it is) and index row."""

    path: Path
    landmarks: np.ndarray | None = None
    rel: str = ""  # path relative to the faces folder: names the held-out split
    identity: str | None = None
    open_score: float | None = None


@dataclass(frozen=True)
class FaceFiles:
    files: list[FaceFile]
    missing: int = 0  # listed in an index but not on disk
    no_face: int = 0  # no face detected


def indexed_faces(faces: str, index: str = "") -> FaceFiles:
    """Every indexed face of the faces folder that exists and has a detected face."""
    root = Path(faces)
    records = index_records(root, index, FACE_SOURCES)
    present = [r for r in records if r.file.is_file()]
    landmarks = find_landmarks([r.file for r in present])
    kept = []
    for r in present:
        lm = landmarks.get(r.file)
        if lm is not None:
            rel = r.file.relative_to(root).as_posix() if r.file.is_relative_to(root) else str(r.file)
            kept.append(FaceFile(r.file, np.asarray(lm, np.float64), rel, r.identity, r.open_score))
    if not kept:
        raise UserError(f"{faces}: no usable face ({len(records)} listed, {len(records) - len(present)} missing, "
                        f"{len(present)} without a detected face)")
    return FaceFiles(kept, len(records) - len(present), len(present) - len(kept))


def load_face(item: FaceFile, size: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """The item as a size x size uint8 face: aligned when it has landmarks, else its centred square."""
    rgb = np.asarray(read_rgb(item.path))
    if item.landmarks is None:
        return square(rgb, size)
    return aligned_face(rgb, item.landmarks, size, rng)


class FaceImages(Dataset):
    """Sample k: face pick(k) at `size` px, mirrored half the time (by a per-sample seed).

    Items: {"image": (3, size, size) in [-1, 1]}. A file that fails to decode is reported once
    and replaced by the next one.
    """

    def __init__(self, files: FaceFiles, size: int, flip: bool = True, seed: int = 0) -> None:
        self.data, self.size, self.flip, self.seed = files, size, flip, seed
        self._reported: set[Path] = set()

    def __len__(self) -> int:
        return len(self.data.files)

    def sizes(self) -> dict[str, int]:
        return {"faces": len(self), "missing_files": self.data.missing, "no_face": self.data.no_face}

    def _face(self, index: int) -> np.ndarray:
        files = self.data.files
        for offset in range(len(files)):
            item = files[(index + offset) % len(files)]
            try:
                return load_face(item, self.size)
            except ImageReadError as e:
                if item.path not in self._reported:
                    self._reported.add(item.path)
                    print(f"warning: skipping {item.path}: {e}", file=sys.stderr)
        raise UserError("no training image could be decoded; check the folder")

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        face = self._face(pick(self.seed, k, len(self)))
        if self.flip and np.random.default_rng(sample_seed(self.seed, k)).random() < 0.5:
            face = face[:, ::-1]
        return {"image": to_tensor(face)}


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


# ----- attribute classifiers ---------------------------------------------------------------
@dataclass(frozen=True)
class FaceAttrConfig:
    """Attribute classifier settings: label thresholds, split, network width, learning rate."""

    faces: str = field(default="", metadata={"cli": "--faces",
                                             "help": "the data's faces/ folder (utkface/ names give sex and "
                                                     "age; index.csv open_score gives eye state)"})
    index: str = field(default="", metadata={"cli": "--index",
                                             "help": "CSV with file[,identity][,open_score] relative to --faces"})
    size: int = 64  # aligned face side, the generator's
    width: int = 32
    lr: float = 1e-3
    val_fraction: float = 0.1  # held out by a hash of the identity (else the file path)
    # Age: "young" adults against people 50 and over. Children are left out of the age label:
    # a child-to-adult axis would dominate a young/old direction and is not ageing.
    young_from: int = 18
    young_below: int = 30
    old_from: int = 50
    open_above: float = 0.25  # open_score at or above: open; at or below closed_below: closed
    closed_below: float = 0.12
    rare_share: float = 0.2  # share of samples drawn from the (62) faces with closed eyes


def face_labels(name: str, open_score: float | None, cfg: FaceAttrConfig) -> tuple[np.ndarray, np.ndarray]:
    """(labels, known) for ATTRIBUTES from a UTKFace-style file name and an openness score."""
    labels, known = np.zeros(len(ATTRIBUTES), np.float32), np.zeros(len(ATTRIBUTES), bool)
    m = UTK_NAME.match(name)
    if m:
        age, gender = int(m.group(1)), int(m.group(2))
        labels[0], known[0] = float(gender == 0), True
        if age >= cfg.old_from or cfg.young_from <= age < cfg.young_below:
            labels[1], known[1] = float(age >= cfg.old_from), True
    if open_score is not None and (open_score >= cfg.open_above or open_score <= cfg.closed_below):
        labels[2], known[2] = float(open_score >= cfg.open_above), True
    return labels, known


@dataclass(frozen=True)
class LabelledFace:
    face: FaceFile
    labels: np.ndarray  # (A,) float32, 1 = male / old / open
    known: np.ndarray  # (A,) bool


def split_labelled(cfg: FaceAttrConfig) -> tuple[list[LabelledFace], list[LabelledFace], dict[str, int]]:
    """(train, held-out, counts): indexed faces with at least one known label."""
    if not cfg.faces:
        raise UserError("faceattrs needs the faces data: pass --faces FOLDER (with utkface/ and index.csv)")
    found = indexed_faces(cfg.faces, cfg.index)
    train, val = [], []
    for f in found.files:
        labels, known = face_labels(f.path.name, f.open_score, cfg)
        if not known.any():
            continue
        held = val_identity(f.identity, cfg.val_fraction) if f.identity else is_validation(f.rel, cfg.val_fraction)
        (val if held else train).append(LabelledFace(f, labels, known))
    if not train:
        raise UserError(f"{cfg.faces}: no labelled training face (UTKFace names or open_score in the index)")
    return train, val, {"missing_files": found.missing, "no_face": found.no_face, "val_faces": len(val)}


class AttributeFaces(Dataset):
    """Sample k: a labelled face, aligned with jitter, photometric noise and a random mirror.

    With probability `rare_share` the face comes from those with closed eyes (own stream), else
    from all. Items: image (3, S, S) in [-1, 1], labels (A,), known (A,) bool.
    """

    def __init__(self, faces: list[LabelledFace], size: int, rare_share: float = 0.0, seed: int = 0,
                 info: dict[str, int] | None = None) -> None:
        self.faces, self.size, self.seed, self.info = faces, size, seed, info or {}
        self.rare = [i for i, f in enumerate(faces) if f.known[2] and f.labels[2] < 0.5]
        self.rare_share = rare_share if self.rare else 0.0

    def __len__(self) -> int:
        return len(self.faces)

    def label_rates(self) -> np.ndarray:
        """(A, 2) expected (positive, negative) known labels per sample under this sampling."""
        def rates(idx: list[int]) -> np.ndarray:
            lab = np.stack([self.faces[i].labels for i in idx])
            kn = np.stack([self.faces[i].known for i in idx])
            return np.stack([(kn & (lab > 0.5)).sum(0), (kn & (lab < 0.5)).sum(0)], 1) / len(idx)

        mix = (1 - self.rare_share) * rates(list(range(len(self))))
        return mix + self.rare_share * rates(self.rare) if self.rare_share > 0 else mix

    def sizes(self) -> dict[str, int]:
        lab = np.stack([f.labels for f in self.faces])
        kn = np.stack([f.known for f in self.faces])
        counts = {f"{a}_{v}": int((kn[:, i] & ((lab[:, i] > 0.5) == bool(v))).sum())
                  for i, a in enumerate(ATTRIBUTES) for v in (1, 0)}
        return {"train_faces": len(self), **counts, **self.info}

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng(sample_seed(self.seed, k))
        if rng.random() < self.rare_share:
            item = self.faces[self.rare[pick(self.seed, k, len(self.rare), stream=1)]]
        else:
            item = self.faces[pick(self.seed, k, len(self))]
        try:
            face = photometric(load_face(item.face, self.size, rng), rng)
        except ImageReadError as e:
            raise UserError(f"{item.face.path}: {e}; remove it from the index") from None
        if rng.random() < 0.5:  # every attribute here is mirror-symmetric
            face = face[:, ::-1]
        return {"image": to_tensor(face), "labels": torch.from_numpy(item.labels.copy()),
                "known": torch.from_numpy(item.known.copy())}


def attribute_accuracy(p: np.ndarray, labelled: list[LabelledFace]) -> dict[str, Any]:
    """Held-out accuracy per attribute: overall, per class (recall) and balanced (their mean)."""
    labels = np.stack([f.labels for f in labelled]) > 0.5
    known = np.stack([f.known for f in labelled])
    out: dict[str, Any] = {}
    for i, a in enumerate(ATTRIBUTES):
        m = known[:, i]
        y, pred = labels[m, i], p[m, i] >= 0.5
        pos, neg = int(y.sum()), int((~y).sum())
        recall_pos = float((pred & y).sum() / pos) if pos else None
        recall_neg = float((~pred & ~y).sum() / neg) if neg else None
        both = [r for r in (recall_pos, recall_neg) if r is not None]
        out[a] = {"n": int(m.sum()), "positive": pos, "negative": neg,
                  "accuracy": round(float((pred == y).mean()), 4) if m.any() else None,
                  "recall_positive": None if recall_pos is None else round(recall_pos, 4),
                  "recall_negative": None if recall_neg is None else round(recall_neg, 4),
                  "balanced_accuracy": round(float(np.mean(both)), 4) if both else None}
    return out


class FaceAttributes(ObjectiveBase):
    """Face attribute classifiers (male, age 50+ vs 18-29, eyes open) on aligned faces, one net, three heads.

    Trained on real faces to label generated ones, whose labels give the DCGAN's latent
    directions (`imgtrans faces directions`). Each head's loss is balanced binary cross-entropy
    over the faces that carry its label.
    """

    name: ClassVar[str] = "faceattrs"
    config_class: ClassVar[type] = FaceAttrConfig

    def __init__(self, cfg: FaceAttrConfig, seed: int = 0) -> None:
        super().__init__({"C": AttributeNet(cfg.width)})
        self.cfg, self.seed = cfg, seed
        self._split: tuple[list[LabelledFace], list[LabelledFace], dict[str, int]] | None = None
        self._data: AttributeFaces | None = None
        self._pos_weights: torch.Tensor | None = None

    def tag(self) -> str:
        return f"{self.name}-{Path(self.cfg.faces).resolve().name}" if self.cfg.faces else self.name

    def split(self) -> tuple[list[LabelledFace], list[LabelledFace], dict[str, int]]:
        if self._split is None:
            self._split = split_labelled(self.cfg)
        return self._split

    def phases(self) -> list[Phase]:
        return [Phase("C", ("C",), self.cfg.lr, betas=(0.9, 0.999))]

    def dataset(self) -> AttributeFaces:
        if self._data is None:
            train, _, info = self.split()
            self._data = AttributeFaces(train, self.cfg.size, self.cfg.rare_share, self.seed, info)
        return self._data

    def pos_weights(self) -> torch.Tensor:
        """Per head, negatives / positives per sample as drawn: each class weighs the same in total."""
        if self._pos_weights is None:
            rates = self.dataset().label_rates()
            w = [neg / pos if pos > 0 and neg > 0 else 1.0 for pos, neg in rates]
            self._pos_weights = torch.tensor(w, dtype=torch.float32)
        return self._pos_weights

    def loss(self, phase: str, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Losses]:
        logits = self.nets["C"](batch["image"]).float()
        y, known = batch["labels"].float(), batch["known"].float()
        per = F.binary_cross_entropy_with_logits(logits, y, pos_weight=self.pos_weights().to(logits.device),
                                                 reduction="none") * known
        n = known.sum(0)
        head = per.sum(0) / n.clamp(min=1.0)
        hits = ((logits > 0).float() == y).float() * known
        terms: Losses = {}
        for i, a in enumerate(ATTRIBUTES):
            terms[f"bce_{a}"] = head[i].detach()
            terms[f"acc_{a}"] = (hits[:, i].sum() / n[i].clamp(min=1.0)).detach()
        return head.sum(), terms

    def sample(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each face beside one tint per attribute: red = p of the positive class (male, old, open)."""
        x = batch["image"].float()
        p = torch.sigmoid(self.nets["C"](x).float())
        out = {"face": x}
        for i, a in enumerate(ATTRIBUTES):
            red = torch.tensor([1.0, -1.0, -1.0], device=x.device).view(1, 3, 1, 1)
            blue = torch.tensor([-1.0, -1.0, 1.0], device=x.device).view(1, 3, 1, 1)
            tint = torch.lerp(blue, red, p[:, i].view(-1, 1, 1, 1))
            out[a] = 0.6 * x + 0.4 * tint
        return out

    def meta(self) -> dict[str, Any]:
        c = self.cfg
        return {
            "objective": self.name,
            "network": "attribute_net",
            "arch": {"width": c.width},
            "attributes": list(ATTRIBUTES),
            "size": c.size,
            "labels": {
                "male": "UTKFace gender 0 (male) = 1, 1 (female) = 0",
                "age": f"UTKFace age >= {c.old_from} = 1, {c.young_from} <= age < {c.young_below} = 0",
                "eyes_open": f"open_score >= {c.open_above} = 1, <= {c.closed_below} = 0",
            },
            "data": {"faces": c.faces, "index": c.index},
            "val_fraction": c.val_fraction,
        }

    @torch.inference_mode()
    def predict(self, faces: list[np.ndarray], batch: int = 256) -> np.ndarray:
        """(N, A) probabilities for aligned uint8 faces."""
        net = self._nets["C"].eval()
        device = next(net.parameters()).device
        out = [torch.sigmoid(net(torch.stack([to_tensor(f) for f in faces[i:i + batch]]).to(device)).float()).cpu()
               for i in range(0, len(faces), batch)]
        return torch.cat(out).numpy() if out else np.zeros((0, len(ATTRIBUTES)), np.float32)

    def evaluate(self) -> dict[str, Any]:
        """Accuracy on the held-out real faces, aligned without jitter."""
        _, val, _ = self.split()
        if not val:
            return {"val": "skipped: no held-out faces"}
        p = self.predict([load_face(f.face, self.cfg.size) for f in val])
        return {"val_faces": len(val), **attribute_accuracy(p, val)}

    def export(self) -> dict[str, tuple[dict[str, torch.Tensor], dict[str, Any]]]:
        return {ATTRIBUTE_EXPORT: (self._nets["C"].state_dict(), self.meta())}

    @classmethod
    def build_inference(cls, meta: dict[str, Any]) -> nn.Module:
        return AttributeNet(int(meta["arch"]["width"]), len(meta["attributes"]))
