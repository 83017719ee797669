"""Face-attribute classifiers (male, age, eyes open) whose labels on generated faces give the DCGAN's latent directions."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from imgtrans.data.face_frames import FaceFile, indexed_faces, load_face
from imgtrans.data.faces import held_out
from imgtrans.data.stream import pick, sample_seed
from imgtrans.data.transforms import photometric, to_tensor
from imgtrans.errors import UserError
from imgtrans.eval.judge import JudgeArch, JudgeNet
from imgtrans.io import ImageReadError
from imgtrans.train.objective import Losses, ObjectiveBase, Phase

ATTRIBUTE_EXPORT = "attributes"
ATTRIBUTES = ("male", "age", "eyes_open")  # classifier heads, in order; positive = male, old, open
UTK_NAME = re.compile(r"^(\d+)_([01])_(\d)_")  # AGE_GENDER_RACE_date.jpg.chip.jpg, gender 0 = male


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
        held = held_out(f.identity or f.rel, cfg.val_fraction)
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
