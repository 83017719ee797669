"""The domain judge: a small CNN telling domain A (0) from B (1), its loading and its training entry point."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np
import torch
from torch import nn

from imgtrans.errors import UserError

EXPORT_NAME = "judge"
_ACCEPTED = "a judge run folder, its export/judge.safetensors or a model name"


@dataclass(frozen=True)
class JudgeArch:
    """JudgeNet's shape: channels of the first stage (then 2x, 4x, 8x)."""

    width: int = 32

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class JudgeNet(nn.Module):
    """(N, 3, S, S) images in [-1, 1] -> (N,) logits that the image belongs to domain B.

    Four stride-2 convs (a 4x4 stem to `width`, then 3x3 to 2w, 4w, 8w) with leaky ReLUs, global
    average pooling to `features` (N, 8w) and a linear head: about 63 MMAC per 128 px image at
    width 32. No normalisation layers: batches can be tiny, and per-image normalisation would
    remove the colour statistics that often tell domains apart.
    """

    def __init__(self, arch: JudgeArch = JudgeArch()) -> None:
        super().__init__()
        w = arch.width
        layers: list[nn.Module] = [nn.Conv2d(3, w, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        for cin, cout in ((w, 2 * w), (2 * w, 4 * w), (4 * w, 8 * w)):
            layers += [nn.Conv2d(cin, cout, 3, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(8 * w, 1)
        self.num_features = 8 * w

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).squeeze(1)


def build_net(meta: Mapping[str, Any]) -> JudgeNet:
    """The network an export's metadata describes (weights not loaded)."""
    return JudgeNet(JudgeArch(**meta["arch"]))


def judge_view(rgb: np.ndarray, size: int) -> np.ndarray:
    """A whole HxWx3 uint8 image squeezed to size x size, as the judge sees it at evaluation."""
    if rgb.shape[:2] == (size, size):
        return rgb
    # INTER_AREA averages when shrinking (no aliasing); training crops are resized the same way.
    return cv2.resize(np.ascontiguousarray(rgb), (size, size), interpolation=cv2.INTER_AREA)


def views_to_tensor(views: Sequence[np.ndarray]) -> torch.Tensor:
    """Same-size HxWx3 uint8 arrays -> Nx3xHxW float in [-1, 1]."""
    x = torch.from_numpy(np.stack([np.asarray(v, np.uint8) for v in views]))
    return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


@dataclass(frozen=True)
class Judgement:
    """Per image: the probability of domain B and the judge's feature vector."""

    p_b: np.ndarray  # (N,)
    features: np.ndarray  # (N, F) float64


class DomainJudge:
    """A trained JudgeNet plus the input size it was trained at.

    `swapped`: the judge was trained with A and B the other way round (its A is the caller's B), so
    its probabilities are read as 1 - p; everything downstream then speaks of the caller's A and B.
    """

    def __init__(self, net: JudgeNet, meta: dict[str, Any], source: str = "", batch_size: int = 64,
                 swapped: bool = False) -> None:
        self.net, self.meta, self.source, self.batch_size = net, meta, source, batch_size
        self.size = int(meta.get("size") or 128)
        self.swapped = swapped

    def to(self, device: str | torch.device) -> "DomainJudge":
        self.net.to(device)
        return self

    @torch.inference_mode()
    def judge(self, rgbs: Sequence[np.ndarray]) -> Judgement:
        """Judge HxWx3 uint8 images of any sizes (each squeezed to the judge's size)."""
        self.net.eval()
        device = next(self.net.parameters()).device
        probs, feats = [], []
        for i in range(0, len(rgbs), self.batch_size):
            x = views_to_tensor([judge_view(r, self.size) for r in rgbs[i:i + self.batch_size]]).to(device)
            f = self.net.features(x)
            probs.append(torch.sigmoid(self.net.head(f).squeeze(1)).float().cpu())
            feats.append(f.double().cpu())
        if not probs:
            return Judgement(np.zeros(0), np.zeros((0, self.net.num_features)))
        p_b = torch.cat(probs).numpy()
        return Judgement(1.0 - p_b if self.swapped else p_b, torch.cat(feats).numpy())


# ----- loading -----------------------------------------------------------------------------
def _from_export(path: Path) -> DomainJudge:
    from imgtrans.weights import load_checked_export

    net, meta = load_checked_export(path, "judge", build_net,
                                    "pass a judge export (train one with `imgtrans eval train-judge`)")
    return DomainJudge(net, meta, str(path))


def load_judge(name_or_path: str | Path, swapped: bool = False) -> DomainJudge:
    """A domain judge from a judge run folder, its .safetensors export or a manifest model name.

    `swapped`: its A and B are the caller's B and A (see DomainJudge).
    """
    from imgtrans.weights import resolve_export

    path, name = resolve_export(name_or_path, EXPORT_NAME, _ACCEPTED)
    judge = _from_export(path)
    judge.swapped = swapped
    if name:
        judge.meta = {**judge.meta, "name": name}
        judge.source = f"{name} ({path})"
    return judge


# ----- training ----------------------------------------------------------------------------
def train_judge(a: str | Path, b: str | Path, out: str | Path = "runs", steps: int = 1000, size: int = 128,
                width: int = 32, batch_size: int = 16, device: str = "auto", seed: int = 0,
                quiet: bool = False, extra: Mapping[str, Any] | None = None) -> Path:
    """Train a judge on folders `a` (label 0) and `b` (label 1); returns the run folder.

    Each step sees `batch_size` crops of each domain. The run's eval.json holds the held-out
    accuracy and export/judge.safetensors the weights for `load_judge`. `extra` adds any other
    "section.field" setting (e.g. {"train.workers": 0, "model.val_fraction": 0.2}).
    """
    from imgtrans.train.launch import RunRequest, run

    if steps <= 0:
        raise UserError(f"steps must be positive, got {steps}")
    values: dict[str, Any] = {
        "model.a": os.path.abspath(a), "model.b": os.path.abspath(b),
        "model.size": size, "model.width": width,
        "train.steps": steps, "train.batch_size": batch_size, "train.device": device, "train.seed": seed,
        **(extra or {}),
    }
    run_dir = run(RunRequest(objective="judge", values=values, out=str(out), quiet=quiet))
    assert run_dir is not None  # None only for dry runs
    return run_dir
