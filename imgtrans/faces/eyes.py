"""Face alignment from 5 landmarks, eye boxes and masks in the aligned frame, and the inverse warp."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Canonical 5-point template (image-left eye, image-right eye, nose, mouth left, mouth right) in
# unit coordinates of a square aligned face: the widely used 112 px ArcFace layout divided by 112.
TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
) / 112.0


def template_points(size: int) -> np.ndarray:
    """The template's 5 points for an aligned face of `size` pixels (pixel centres at +0.5)."""
    return TEMPLATE * size


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (rotation, uniform scale, shift) taking src to dst.

    Umeyama's closed form; returns a 2x3 matrix. Reflections are excluded, so a mirrored
    face is never produced.
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    flip = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rot = u @ flip @ vt
    var = (s**2).sum() / len(src)
    scale = (sig * np.diag(flip)).sum() / var if var > 0 else 1.0
    t = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, t[:, None]])


def invert(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine matrix."""
    return cv2.invertAffineTransform(np.asarray(matrix, np.float64))


def apply(matrix: np.ndarray, pts: np.ndarray) -> np.ndarray:
    pts = np.asarray(pts, np.float64)
    return pts @ matrix[:, :2].T + matrix[:, 2]


@dataclass(frozen=True)
class Alignment:
    """Maps a face in a photo to a `size` x `size` canonical crop and back."""

    matrix: np.ndarray  # 2x3, photo -> aligned
    size: int

    @property
    def inverse(self) -> np.ndarray:
        return invert(self.matrix)

    @property
    def scale(self) -> float:
        """Aligned pixels per photo pixel."""
        return float(np.sqrt(abs(np.linalg.det(self.matrix[:, :2]))))

    def to_aligned(self, pts: np.ndarray) -> np.ndarray:
        return apply(self.matrix, pts)

    def to_photo(self, pts: np.ndarray) -> np.ndarray:
        return apply(self.inverse, pts)

    def warp(self, rgb: np.ndarray) -> np.ndarray:
        """The aligned crop. Area-like filtering when shrinking keeps eyes from aliasing."""
        interp = cv2.INTER_AREA if self.scale < 1 else cv2.INTER_LINEAR
        return cv2.warpAffine(rgb, self.matrix, (self.size, self.size), flags=interp,
                              borderMode=cv2.BORDER_REFLECT101)


def align(landmarks: np.ndarray, size: int = 128) -> Alignment:
    """Similarity alignment of a face's 5 landmarks onto the template at `size` px."""
    return Alignment(similarity(landmarks, template_points(size)), size)


@dataclass(frozen=True)
class EyeBoxSpec:
    """Eye boxes as fractions of the inter-ocular distance (IOD), centred on each eye.

    0.6 x 0.4 IOD covers the eye, both lids and the lash line: about 1.3x the eye's width,
    inside ExGAN's 0.75-1.5x range, without reaching the eyebrows.
    """

    width: float = 0.6
    height: float = 0.4
    dy: float = 0.0  # shift down (positive) as a fraction of IOD


def eye_boxes(size: int, spec: EyeBoxSpec | None = None, jitter: np.ndarray | None = None) -> np.ndarray:
    """(2, 4) boxes x1, y1, x2, y2 in aligned pixels for the image-left and image-right eye.

    `jitter` (2, 4) adds per-box offsets (dx, dy, dw, dh) in IOD units, for training masks.
    """
    spec = spec or EyeBoxSpec()
    eyes = template_points(size)[:2]
    iod = float(np.linalg.norm(eyes[1] - eyes[0]))
    j = np.zeros((2, 4)) if jitter is None else np.asarray(jitter, np.float64)
    cx, cy = eyes[:, 0] + j[:, 0] * iod, eyes[:, 1] + (spec.dy + j[:, 1]) * iod
    w, h = (spec.width + j[:, 2]) * iod, (spec.height + j[:, 3]) * iod
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)


def box_mask(size: int, boxes: np.ndarray) -> np.ndarray:
    """HxW float32 mask, 1 inside any box (pixel centres inside), 0 elsewhere."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    mask = np.zeros((size, size), np.float32)
    for x1, y1, x2, y2 in np.asarray(boxes, np.float64):
        mask[(xx >= x1) & (xx < x2) & (yy >= y1) & (yy < y2)] = 1.0
    return mask


def feather(mask: np.ndarray, radius: float) -> np.ndarray:
    """Soft edges that stay 1 inside the mask and fall to 0 within `radius` px outside it."""
    if radius <= 0:
        return mask.astype(np.float32)
    outside = (mask < 0.5).astype(np.uint8)
    dist = cv2.distanceTransform(outside, cv2.DIST_L2, 5)
    return np.clip(1.0 - dist / radius, 0.0, 1.0).astype(np.float32)


def crop_box(rgb: np.ndarray, box: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Resample the region `box` (x1, y1, x2, y2, sub-pixel) of `rgb` to `out_hw`."""
    x1, y1, x2, y2 = (float(v) for v in box)
    h, w = out_hw
    m = np.array([[w / (x2 - x1), 0, -x1 * w / (x2 - x1)], [0, h / (y2 - y1), -y1 * h / (y2 - y1)]])
    return cv2.warpAffine(rgb, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
