"""Training augmentations (albumentations crops, aligned-face jitter) and array <-> tensor conversions."""

from __future__ import annotations

import math
from dataclasses import dataclass

import albumentations as A
import cv2
import numpy as np
import torch

from imgtrans.faces.eyes import Alignment

# Aligned-face jitter (eye-state crops, attribute faces). Geometry stays within typical MTCNN
# landmark error, so an eye never leaves its 0.9 x 0.6 IOD crop box.
ROTATE_DEG = 8.0
SCALE = 0.08
SHIFT = 0.03  # of the aligned size
CONTRAST = (0.7, 1.3)
BRIGHTNESS = 30.0  # grey levels
BLUR_P, BLUR_SIGMA = 0.3, (0.3, 1.2)  # sigma in pixels of a 128 px face, scaled with the size


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


def jitter_alignment(base: Alignment, rng: np.random.Generator) -> Alignment:
    """`base` followed by a small random rotation, scale and shift about the face centre."""
    n = base.size
    angle = rng.uniform(-ROTATE_DEG, ROTATE_DEG)
    scale = math.exp(rng.uniform(-math.log1p(SCALE), math.log1p(SCALE)))
    m = cv2.getRotationMatrix2D((n / 2, n / 2), angle, scale)
    m[:, 2] += rng.uniform(-SHIFT, SHIFT, 2) * n
    full = np.vstack([m, [0, 0, 1]]) @ np.vstack([base.matrix, [0, 0, 1]])
    return Alignment(full[:2], n)


def photometric(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blur, contrast and brightness jitter of a uint8 face (lighting and focus vary in photos)."""
    x = img.astype(np.float32)
    if rng.random() < BLUR_P:
        sigma = rng.uniform(*BLUR_SIGMA) * img.shape[0] / 128
        x = cv2.GaussianBlur(x, (0, 0), sigma)
    mean = x.mean()
    x = (x - mean) * rng.uniform(*CONTRAST) + mean + rng.uniform(-BRIGHTNESS, BRIGHTNESS)
    return np.clip(x, 0, 255).round().astype(np.uint8)


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> 3xHxW float in [-1, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float()
    return t.div_(127.5).sub_(1.0)


def to_uint8(t: torch.Tensor) -> np.ndarray:
    """3xHxW in [-1, 1] -> HxWx3 uint8."""
    x = ((t.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 0).numpy()
