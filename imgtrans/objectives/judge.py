"""Domain judge objective: a classifier of domain A vs B images, trained to score translations offline."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import albumentations as A
import cv2
import torch
import torch.nn.functional as F
from torch import nn

from imgtrans.data.unpaired import DomainImages, scan_folder
from imgtrans.errors import UserError
from imgtrans.eval.images import read_images
from imgtrans.eval.judge import DomainJudge, JudgeArch, JudgeNet, build_net
from imgtrans.train.objective import Losses, ObjectiveBase, Phase

DOMAINS = ("A", "B")  # label = index
# Sample-grid tints: images judged A lean red, judged B lean blue, in proportion to p(B).
_TINT_A = torch.tensor([1.0, -0.6, -0.6]).view(1, 3, 1, 1)
_TINT_B = torch.tensor([-0.6, -0.6, 1.0]).view(1, 3, 1, 1)


@dataclass(frozen=True)
class JudgeConfig:
    """Domain judge settings."""

    a: str = field(default="", metadata={"cli": "--a", "help": "folder of domain A images (label 0, recursive)"})
    b: str = field(default="", metadata={"cli": "--b", "help": "folder of domain B images (label 1, recursive)"})
    size: int = 128
    width: int = 32
    lr: float = 1e-3
    val_fraction: float = 0.1  # files held out (by a hash of their path) for the accuracy in eval.json
    min_scale: float = 0.5  # random resized crops cover this much of the image area or more
    flip: bool = True


def holdout_key(relative: str) -> float:
    """A stable pseudo-random number in [0, 1) for a file's path relative to its folder."""
    return int(hashlib.sha256(relative.encode()).hexdigest()[:16], 16) / 2**64


def split_files(files: list[Path], root: str | Path, fraction: float) -> tuple[list[Path], list[Path]]:
    """(train, held-out) by path hash, so the split survives new files and other machines.

    At least one file is held out when there are two or more (the accuracy needs one), and at
    least one is kept for training.
    """
    keys = {f: holdout_key(f.relative_to(root).as_posix()) for f in files}
    held = [f for f in files if keys[f] < fraction]
    if not held and fraction > 0 and len(files) >= 2:
        held = [min(files, key=keys.__getitem__)]
    if held and len(held) == len(files):
        held.remove(max(held, key=keys.__getitem__))
    held_set = set(held)
    return [f for f in files if f not in held_set], held


def crop_pipeline(size: int, min_scale: float, flip: bool) -> A.Compose:
    steps: list[A.BasicTransform] = [
        # INTER_AREA as judge_view uses at evaluation, so both see equally smooth pixels.
        A.RandomResizedCrop(size=(size, size), scale=(min_scale, 1.0), interpolation=cv2.INTER_AREA),
    ]
    if flip:
        steps.append(A.HorizontalFlip(p=0.5))
    return A.Compose(steps, seed=0)


class JudgeImages(DomainImages):
    """Sample k: a random resized crop of training image pick(k) of A and one of B (independent shuffles)."""

    def __init__(self, files: dict[str, list[Path]], cfg: JudgeConfig, seed: int = 0) -> None:
        super().__init__(files, crop_pipeline(cfg.size, cfg.min_scale, cfg.flip), seed)


class Judge(ObjectiveBase):
    """A domain classifier, A (0) vs B (1), that scores translations offline.

    Binary cross-entropy on balanced batches: each sample brings one A crop and one B crop, so a
    step of batch size N sees 2N images. eval.json gets the accuracy on held-out files.
    """

    name: ClassVar[str] = "judge"
    config_class: ClassVar[type] = JudgeConfig

    def __init__(self, cfg: JudgeConfig, seed: int = 0) -> None:
        super().__init__({"J": JudgeNet(JudgeArch(cfg.width))})
        self.cfg, self.seed = cfg, seed
        self._splits: dict[str, tuple[list[Path], list[Path]]] | None = None

    def tag(self) -> str:
        """A short run name: the data folders' common parent (e.g. judge-horse2zebra)."""
        pa, pb = Path(self.cfg.a).resolve().parent, Path(self.cfg.b).resolve().parent
        return f"{self.name}-{pa.name}" if pa == pb and pa.name else self.name

    def splits(self) -> dict[str, tuple[list[Path], list[Path]]]:
        """Per domain (train files, held-out files); scanned once."""
        if self._splits is None:
            if not self.cfg.a or not self.cfg.b:
                raise UserError("judge needs both domains: pass --a FOLDER and --b FOLDER")
            roots = {"A": self.cfg.a, "B": self.cfg.b}
            self._splits = {d: split_files(scan_folder(r, d), r, self.cfg.val_fraction) for d, r in roots.items()}
        return self._splits

    def phases(self) -> list[Phase]:
        return [Phase("J", ("J",), self.cfg.lr, betas=(0.9, 0.999))]

    def dataset(self) -> JudgeImages:
        return JudgeImages({d: train for d, (train, _) in self.splits().items()}, self.cfg, seed=self.seed)

    def loss(self, phase: str, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Losses]:
        x = torch.cat([batch["A"], batch["B"]])
        y = torch.cat([torch.zeros(len(batch["A"])), torch.ones(len(batch["B"]))]).to(x.device)
        logits = self.nets["J"](x).float()
        bce = F.binary_cross_entropy_with_logits(logits, y)
        acc = ((logits > 0).float() == y).float().mean()
        return bce, {"bce": bce.detach(), "train_acc": acc.detach()}

    def sample(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for domain in DOMAINS:
            x = batch[domain]
            p = torch.sigmoid(self.nets["J"](x).float()).view(-1, 1, 1, 1)
            tint = torch.lerp(_TINT_A.to(x.device), _TINT_B.to(x.device), p)
            out[domain] = x
            out[f"{domain}_judged"] = (0.6 * x.float() + 0.4 * tint).clamp(-1, 1)
        return out

    def meta(self) -> dict[str, Any]:
        return {
            "objective": self.name,
            "network": "judge_net",
            "arch": JudgeArch(self.cfg.width).to_dict(),
            "size": self.cfg.size,
            "labels": {d: i for i, d in enumerate(DOMAINS)},
            "data": {"a": self.cfg.a, "b": self.cfg.b},
            "val_fraction": self.cfg.val_fraction,
        }

    def evaluate(self) -> dict[str, Any]:
        """Accuracy on the held-out files, each seen whole at the judge's size."""
        judge = DomainJudge(self._nets["J"], self.meta())
        figures: dict[str, Any] = {"val_accuracy": None}
        correct = total = 0
        for label, domain in enumerate(DOMAINS):
            images = read_images(self.splits()[domain][1])
            hits = int(((judge.judge(images).p_b > 0.5) == bool(label)).sum())
            figures[f"val_accuracy_{domain}"] = hits / len(images) if images else None
            figures[f"val_images_{domain}"] = len(images)
            correct, total = correct + hits, total + len(images)
        figures["val_accuracy"] = correct / total if total else None
        return figures

    def export(self) -> dict[str, tuple[dict[str, torch.Tensor], dict[str, Any]]]:
        return {"judge": (self._nets["J"].state_dict(), self.meta())}

    @classmethod
    def build_inference(cls, meta: dict[str, Any]) -> nn.Module:
        return build_net(meta)
