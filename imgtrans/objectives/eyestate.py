"""Eye-state training: an open/closed classifier on aligned eye crops, from weak openness scores."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from imgtrans.data import faces as face_data
from imgtrans.data.faces import held_out, index_records
from imgtrans.data.stream import pick, sample_seed
from imgtrans.data.transforms import jitter_alignment, photometric
from imgtrans.errors import UserError
from imgtrans.faces.eyes import align
from imgtrans.faces.eyestate import (
    CROP_HW,
    CROP_SPEC,
    EXPORT_NAME,
    EyeStateArch,
    EyeStateClassifier,
    EyeStateNet,
    build_net,
    crops_to_tensor,
    eye_crops,
)
from imgtrans.io import ImageReadError, read_rgb
from imgtrans.train.objective import Losses, ObjectiveBase, Phase

DEFAULT_INDEXES = ("utkface", "lfw_pairs")  # each folder's index.csv lists files relative to it
CLOSED_FOLDERS = ("closed_eyes", "closed_eyes_utk")  # real closed-eye photos for evaluate()

@dataclass(frozen=True)
class EyeStateConfig:
    """Eye-state classifier settings: data, weak-label thresholds, network width, learning rate."""

    faces: str = field(default="", metadata={"cli": "--faces",
                                             "help": "faces root holding utkface/ and lfw_pairs/ with index.csv"})
    index: str = field(default="", metadata={"cli": "--index",
                                             "help": "CSV file,open_left,open_right (files relative to --faces); "
                                                     "default: utkface/index.csv + lfw_pairs/index.csv"})
    open_above: float = 0.25  # eye-openness score at or above which an eye counts as open
    closed_below: float = 0.12  # at or below which it counts as closed; in between: ignored
    val_fraction: float = 0.1  # files held out for evaluate(), chosen by a hash of the path
    size: int = 128  # aligned face size
    width: int = 32
    lr: float = 1e-3
    pos_weight: float = 0.0  # weight of "open" eyes in the loss; 0: balance the sampled label counts
    # Share of samples drawn from faces with a closed eye. Closed eyes are rare (113 of 13,752
    # labelled eyes in the default data): drawn uniformly, most batches hold none and the
    # balanced loss swings from batch to batch.
    closed_share: float = 0.25


@dataclass(frozen=True)
class FaceRecord:
    """One usable face: its file, 5 landmarks, and weak labels per image side (left, right)."""

    path: Path
    landmarks: np.ndarray
    labels: np.ndarray  # (2,) float32, 1 = open
    known: np.ndarray  # (2,) bool, False between the thresholds


@dataclass(frozen=True)
class Splits:
    train: list[FaceRecord]
    val: list[FaceRecord]
    missing: int  # listed in the index but not on disk
    no_face: int  # no face detected


# ----- labels and splits -------------------------------------------------------------------
def weak_labels(scores: np.ndarray, open_above: float, closed_below: float) -> tuple[np.ndarray, np.ndarray]:
    """Openness scores -> (labels, known): open at >= open_above, closed at <= closed_below."""
    s = np.asarray(scores, np.float64)
    is_open, is_closed = s >= open_above, s <= closed_below
    return is_open.astype(np.float32), is_open | is_closed


def read_index(faces: Path, index: str = "") -> list[tuple[str, float, float]]:
    """(path relative to `faces`, open_left, open_right) rows of the chosen index CSV(s)."""
    rows = []
    for rec in index_records(faces, index, DEFAULT_INDEXES):
        if rec.open_left is None or rec.open_right is None:
            raise UserError(f"{index or faces}: {rec.file.name}: the eye-state model needs scores; the index "
                            "needs columns file,open_left,open_right")
        # Relative paths name the validation split (is_validation), so they must not depend on cwd.
        rel = rec.file.relative_to(faces).as_posix() if rec.file.is_relative_to(faces) else str(rec.file)
        rows.append((rel, rec.open_left, rec.open_right))
    return rows


def build_splits(cfg: EyeStateConfig) -> Splits:
    """Index rows with a detected face, labelled, split into training and validation by file."""
    if not cfg.faces:
        raise UserError("eyestate needs the faces data: pass --faces FOLDER (with utkface/ and lfw_pairs/)")
    faces = Path(cfg.faces)
    if not faces.is_dir():
        raise UserError(f"--faces {faces}: folder not found")
    listed = read_index(faces, cfg.index)
    rows = [r for r in listed if (faces / r[0]).is_file()]
    missing = len(listed) - len(rows)
    landmarks = face_data.detect_landmarks([faces / r[0] for r in rows], "eyestate")
    train, val, no_face = [], [], 0
    for rel, left, right in rows:
        lm = landmarks.get(faces / rel)
        if lm is None:
            no_face += 1
            continue
        labels, known = weak_labels(np.array([left, right]), cfg.open_above, cfg.closed_below)
        rec = FaceRecord(faces / rel, np.asarray(lm, np.float64), labels, known)
        (val if held_out(rel, cfg.val_fraction) else train).append(rec)
    return Splits(train, val, missing, no_face)


# ----- images ------------------------------------------------------------------------------
def load_rgb(path: Path) -> np.ndarray:
    return np.asarray(read_rgb(path))


def augmented_face(rgb: np.ndarray, rec: FaceRecord, size: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A jittered aligned face and its (labels, known), mirrored half the time.

    Mirroring moves each eye to the other image side, so its label moves with it.
    """
    aligned = photometric(jitter_alignment(align(rec.landmarks, size), rng).warp(rgb), rng)
    labels, known = rec.labels, rec.known
    if rng.random() < 0.5:
        aligned, labels, known = aligned[:, ::-1], labels[::-1], known[::-1]
    return np.ascontiguousarray(aligned), labels.copy(), known.copy()


class EyeFaces(Dataset):
    """Sample k: a face, aligned with jitter, as two eye crops with their weak labels.

    With probability `closed_share` the face is picked from those with a closed eye, else from
    all faces (each from its own shuffled stream, see data.stream). Items: crops (2, 3, 32, 48)
    in [-1, 1] for [image-left, image-right (mirrored)], labels (2,) float and known (2,) bool.
    A file that fails to decode is reported once and replaced by the next one.
    """

    def __init__(self, records: list[FaceRecord], size: int, seed: int = 0, closed_share: float = 0.0,
                 info: dict[str, int] | None = None) -> None:
        if not records:
            raise UserError("no training faces left (none listed, found on disk or with a detected face)")
        self.records, self.size, self.seed = records, size, seed
        self.closed = [i for i, r in enumerate(records) if (r.known & (r.labels < 0.5)).any()]
        self.closed_share = closed_share if self.closed else 0.0
        self.info = info or {}
        self._reported: set[Path] = set()

    def eyes_per_sample(self) -> tuple[float, float]:
        """Expected (open, closed) labelled eyes per sample under this sampling."""
        def rates(idx: list[int]) -> np.ndarray:
            lab = np.stack([self.records[i].labels for i in idx])
            kn = np.stack([self.records[i].known for i in idx])
            return np.array([(kn & (lab > 0.5)).sum(), (kn & (lab < 0.5)).sum()]) / len(idx)

        s = self.closed_share
        mix = (1 - s) * rates(list(range(len(self.records)))) + (s * rates(self.closed) if s > 0 else 0.0)
        return float(mix[0]), float(mix[1])

    def __len__(self) -> int:
        return len(self.records)

    def sizes(self) -> dict[str, int]:
        labels = np.stack([r.labels for r in self.records])
        known = np.stack([r.known for r in self.records])
        return {"train_faces": len(self.records), "closed_eye_faces": len(self.closed),
                "open_eyes": int((known & (labels > 0.5)).sum()), "closed_eyes": int((known & (labels < 0.5)).sum()),
                "ignored_eyes": int((~known).sum()), **self.info}

    def _load(self, index: int) -> tuple[np.ndarray, FaceRecord]:
        for offset in range(len(self.records)):
            rec = self.records[(index + offset) % len(self.records)]
            try:
                return load_rgb(rec.path), rec
            except ImageReadError as e:
                if rec.path not in self._reported:
                    self._reported.add(rec.path)
                    print(f"warning: skipping {rec.path}: {e}", file=sys.stderr)
        raise UserError("no training face could be decoded; check the faces folder")

    def _index(self, k: int, rng: np.random.Generator) -> int:
        if rng.random() < self.closed_share:
            return self.closed[pick(self.seed, k, len(self.closed), stream=1)]
        return pick(self.seed, k, len(self.records))

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng(sample_seed(self.seed, k))
        rgb, rec = self._load(self._index(k, rng))
        aligned, labels, known = augmented_face(rgb, rec, self.size, rng)
        return {"crops": crops_to_tensor(eye_crops(aligned)), "labels": torch.from_numpy(labels),
                "known": torch.from_numpy(known)}


# ----- objective ---------------------------------------------------------------------------
def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


class EyeState(ObjectiveBase):
    """Open/closed eye classifier on aligned eye crops (weak labels from openness scores)."""

    name: ClassVar[str] = "eyestate"
    config_class: ClassVar[type] = EyeStateConfig

    def __init__(self, cfg: EyeStateConfig, seed: int = 0) -> None:
        super().__init__({"C": EyeStateNet(EyeStateArch(cfg.width))})
        self.cfg, self.seed = cfg, seed
        self._splits: Splits | None = None  # landmarks are found once, then reused
        self._pos_weight: float | None = None

    def splits(self) -> Splits:
        if self._splits is None:
            self._splits = build_splits(self.cfg)
        return self._splits

    def pos_weight(self) -> float:
        """The loss weight of open eyes: as set, or closed / open eyes per sample as drawn."""
        if self.cfg.pos_weight > 0:
            return self.cfg.pos_weight
        if self._pos_weight is None:
            n_open, n_closed = self.dataset().eyes_per_sample()
            self._pos_weight = n_closed / n_open if n_open and n_closed else 1.0
        return self._pos_weight

    def phases(self) -> list[Phase]:
        return [Phase("C", ("C",), self.cfg.lr, betas=(0.9, 0.999))]

    def dataset(self) -> EyeFaces:
        s = self.splits()
        info = {"val_faces": len(s.val), "no_face": s.no_face, "missing_files": s.missing}
        return EyeFaces(s.train, self.cfg.size, seed=self.seed, closed_share=self.cfg.closed_share, info=info)

    def loss(self, phase: str, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Losses]:
        # A batch of N faces is 2N eyes; eyes between the thresholds carry no label.
        x = batch["crops"].flatten(0, 1)
        y = batch["labels"].flatten().float()
        w = batch["known"].flatten().float()
        logits = self.nets["C"](x).float()
        pw = torch.tensor(self.pos_weight(), device=logits.device)
        per_eye = F.binary_cross_entropy_with_logits(logits, y, pos_weight=pw, reduction="none")
        n = w.sum().clamp(min=1.0)
        loss = (per_eye * w).sum() / n
        acc = (((logits > 0).float() == y).float() * w).sum() / n
        return loss, {"bce": loss.detach(), "acc": acc.detach()}

    def sample(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        crops = batch["crops"].flatten(0, 1).float()
        p = torch.sigmoid(self.nets["C"](crops).float())
        y, known = batch["labels"].flatten().float(), batch["known"].flatten().float()
        green = torch.tensor([-1.0, 1.0, -1.0], device=crops.device)
        red = torch.tensor([1.0, -1.0, -1.0], device=crops.device)

        def tint(amount: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
            colour = amount[:, None] * green + (1 - amount[:, None]) * red  # green = open, red = closed
            mix = (0.4 * weight)[:, None, None, None]
            return crops * (1 - mix) + colour[:, :, None, None] * mix

        return {"eye": crops, "label_tint": tint(y, known), "open_prob_tint": tint(p, torch.ones_like(p))}

    def export_meta(self) -> dict[str, Any]:
        c = self.cfg
        return {
            "objective": self.name,
            "network": "eyestate_net",
            "arch": EyeStateArch(c.width).to_dict(),
            "crop_hw": list(CROP_HW),
            "crop_spec": asdict(CROP_SPEC),
            "size": c.size,
            "thresholds": {"open_above": c.open_above, "closed_below": c.closed_below},
            "data": {"faces": c.faces, "index": c.index},
        }

    def export(self) -> dict[str, tuple[dict[str, torch.Tensor], dict[str, Any]]]:
        return {EXPORT_NAME: (self._nets["C"].state_dict(), self.export_meta())}

    @classmethod
    def build_inference(cls, meta: dict[str, Any]) -> nn.Module:
        return build_net(meta)

    # ----- evaluation ------------------------------------------------------------------
    def evaluate(self) -> dict[str, Any]:
        """Validation accuracy and per-class precision/recall, and recall on real closed-eye photos."""
        clf = EyeStateClassifier(self._nets["C"], self.export_meta())  # type: ignore[arg-type]
        out = self._evaluate_val(clf, self.splits().val)
        faces = Path(self.cfg.faces)
        for folder in CLOSED_FOLDERS:
            out.update(self._evaluate_closed(clf, faces / folder, folder))
        return out

    def _evaluate_val(self, clf: EyeStateClassifier, records: list[FaceRecord]) -> dict[str, Any]:
        if not records:
            return {"val": "skipped: no validation faces"}
        crops = np.concatenate([clf.crops(align(r.landmarks, self.cfg.size).warp(load_rgb(r.path))) for r in records])
        p = clf.predict_crops(crops)
        y = np.concatenate([r.labels for r in records]) > 0.5
        known = np.concatenate([r.known for r in records])
        pred, y = p[known] >= 0.5, y[known]
        tp, tn = int((pred & y).sum()), int((~pred & ~y).sum())
        return {
            "val_faces": len(records),
            "val_eyes": int(known.sum()),
            "val_open_eyes": int(y.sum()),
            "val_closed_eyes": int((~y).sum()),
            "val_accuracy": _ratio(tp + tn, int(known.sum())),
            "val_open_precision": _ratio(tp, int(pred.sum())),
            "val_open_recall": _ratio(tp, int(y.sum())),
            "val_closed_precision": _ratio(tn, int((~pred).sum())),
            "val_closed_recall": _ratio(tn, int((~y).sum())),
        }

    def _evaluate_closed(self, clf: EyeStateClassifier, folder: Path, key: str) -> dict[str, Any]:
        """Share of faces in a folder of closed-eye photos whose eyes are both found closed."""
        files = sorted(folder.glob("*.jpg")) if folder.is_dir() else []
        if not files:
            return {key: f"skipped: no {folder}/*.jpg"}
        landmarks = face_data.detect_landmarks(files, "eyestate")
        found = [(f, lm) for f in files if (lm := landmarks.get(f)) is not None]
        aligned = [align(np.asarray(lm, np.float64), self.cfg.size).warp(load_rgb(f)) for f, lm in found]
        closed = clf.predict(aligned) < 0.5
        return {
            f"{key}_photos": len(files),
            f"{key}_no_face": len(files) - len(found),
            f"{key}_closed_recall": _ratio(int(closed.all(1).sum()), len(found)),
            f"{key}_one_eye_closed": _ratio(int(closed.any(1).sum()), len(found)),
        }
