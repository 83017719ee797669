"""Albumentations pipelines for training crops and the array <-> tensor conversions."""

from __future__ import annotations

from dataclasses import dataclass

import albumentations as A
import numpy as np
import torch


@dataclass(frozen=True)
class CropSpec:
    """Resize to a square `load_size`, random-crop `crop_size`, optional horizontal flip."""

    load_size: int
    crop_size: int
    flip: bool = True


def load_size_for(crop_size: int, load_size: int = 0) -> int:
    """The square size whole images are resized to before cropping (0: the reference 286/256 ratio).

    It is also the scale the network saw whole images at, so exports record it as `train_size`.
    """
    return load_size or int(round(crop_size * 286 / 256))


def train_pipeline(spec: CropSpec) -> A.Compose:
    if spec.crop_size > spec.load_size:
        raise ValueError(f"crop_size {spec.crop_size} is larger than load_size {spec.load_size}")
    steps: list[A.BasicTransform] = [
        A.Resize(spec.load_size, spec.load_size, interpolation=3),  # bicubic, as the reference
        A.RandomCrop(spec.crop_size, spec.crop_size),
    ]
    if spec.flip:
        steps.append(A.HorizontalFlip(p=0.5))
    return A.Compose(steps, seed=0)


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> 3xHxW float in [-1, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float()
    return t.div_(127.5).sub_(1.0)


def to_uint8(t: torch.Tensor) -> np.ndarray:
    """3xHxW in [-1, 1] -> HxWx3 uint8."""
    x = ((t.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 0).numpy()
