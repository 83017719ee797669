"""Eye state: a small CNN that says whether each eye of an aligned face is open."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from imgtrans.faces.eyes import EyeBoxSpec, crop_box, eye_boxes

# Wider and taller than the in-painting mask (0.6 x 0.4 IOD): brows and lid creases help tell
# a closed eye from a dark open one.
CROP_SPEC = EyeBoxSpec(width=0.9, height=0.6)
CROP_HW = (32, 48)
EXPORT_NAME = "eyestate"


def eye_crops(aligned: np.ndarray, spec: EyeBoxSpec = CROP_SPEC, hw: tuple[int, int] = CROP_HW) -> np.ndarray:
    """(2, H, W, 3) uint8 crops of the image-left and image-right eye of an aligned face.

    The image-right crop is mirrored so both look like image-left eyes: one set of weights
    sees one eye shape. Works at any aligned size (boxes scale with it).
    """
    boxes = eye_boxes(aligned.shape[0], spec)
    left = crop_box(aligned, boxes[0], hw)
    right = crop_box(aligned, boxes[1], hw)[:, ::-1]
    return np.ascontiguousarray(np.stack([left, right]))


def crops_to_tensor(crops: np.ndarray) -> torch.Tensor:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float in [-1, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(crops)).float().div_(127.5).sub_(1.0)
    return t.movedim(-1, -3)


@dataclass(frozen=True)
class EyeStateArch:
    """EyeStateNet's shape: channels of the first stage (then 2x and 4x)."""

    width: int = 32

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _conv_bn_relu(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class EyeStateNet(nn.Module):
    """(N, 3, 32, 48) eye crops in [-1, 1] -> (N,) logits that the eye is open.

    Three stages (width, 2w, 4w), each a conv and a stride-2 conv, then global average pooling
    and a linear layer: about 26 MFLOPs per eye at width 32, so CPU inference is cheap.
    """

    def __init__(self, arch: EyeStateArch = EyeStateArch()) -> None:
        super().__init__()
        w = arch.width
        layers: list[nn.Module] = []
        for cin, cout in ((3, w), (w, 2 * w), (2 * w, 4 * w)):
            layers += _conv_bn_relu(cin, cout, 1) + _conv_bn_relu(cout, cout, 2)
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(4 * w, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3))).squeeze(1)


def build_net(meta: dict[str, Any]) -> EyeStateNet:
    """The network an export's metadata describes (weights not loaded)."""
    return EyeStateNet(EyeStateArch(**meta["arch"]))


class EyeStateClassifier:
    """A trained EyeStateNet plus the crop geometry it was trained with."""

    def __init__(self, net: EyeStateNet, meta: dict[str, Any], source: str = "", batch_size: int = 256) -> None:
        self.net, self.meta, self.source, self.batch_size = net, meta, source, batch_size
        spec = meta.get("crop_spec")
        self.spec = EyeBoxSpec(**spec) if spec else CROP_SPEC
        self.hw = tuple(meta.get("crop_hw") or CROP_HW)
        self.size = int(meta.get("size") or 128)  # aligned face size it was trained at

    def crops(self, aligned: np.ndarray) -> np.ndarray:
        """The (2, H, W, 3) eye crops this classifier reads from one aligned face."""
        return eye_crops(aligned, self.spec, self.hw)  # type: ignore[arg-type]

    def predict_crops(self, crops: np.ndarray) -> np.ndarray:
        """(M, H, W, 3) uint8 eye crops (image-left orientation) -> (M,) p(open)."""
        self.net.eval()
        device = next(self.net.parameters()).device
        out = []
        with torch.inference_mode():
            for i in range(0, len(crops), self.batch_size):
                x = crops_to_tensor(crops[i:i + self.batch_size]).to(device)
                out.append(torch.sigmoid(self.net(x).float()).cpu())
        return torch.cat(out).numpy() if out else np.zeros(0, np.float32)

    def predict(self, aligned_faces: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """(N, 2) probabilities that the [image-left, image-right] eye of each aligned face is open."""
        faces = list(aligned_faces)
        if not faces:
            return np.zeros((0, 2), np.float32)
        crops = np.concatenate([self.crops(np.asarray(f)) for f in faces])
        return self.predict_crops(crops).reshape(len(faces), 2)


# ----- loading -----------------------------------------------------------------------------
def _from_export(path: Path) -> EyeStateClassifier:
    from imgtrans.weights import load_checked_export

    net, meta = load_checked_export(path, "eyestate", build_net, "pass an eyestate export")
    return EyeStateClassifier(net, meta, str(path))


def load_eyestate(name_or_path: str | Path) -> EyeStateClassifier:
    """An eye-state classifier from an export .safetensors, a training run folder or a model name."""
    from imgtrans.weights import resolve_export

    path, name = resolve_export(name_or_path, EXPORT_NAME,
                                "an eyestate run folder, its .safetensors export or a model name")
    clf = _from_export(path)
    if name:
        clf.meta = {**clf.meta, "name": name}
        clf.source = f"{name} ({path})"
    return clf
