"""Paste an edited aligned face region back into the full-resolution photo, touching nothing else."""

from __future__ import annotations

import cv2
import numpy as np

from imgtrans.faces.eyes import Alignment

BLENDS = ("seamless", "feather")


def _roi(inverse: np.ndarray, mask: np.ndarray, shape: tuple[int, int], margin: int) -> tuple[int, int, int, int]:
    """Photo-space bounding box (x0, y0, x1, y1) of the mask's support, with a margin, clamped."""
    ys, xs = np.nonzero(mask > 0)
    corners = np.array([[xs.min(), ys.min()], [xs.max() + 1, ys.min()], [xs.min(), ys.max() + 1],
                        [xs.max() + 1, ys.max() + 1]], np.float64)
    pts = corners @ inverse[:, :2].T + inverse[:, 2]
    h, w = shape
    x0, y0 = np.floor(pts.min(0)).astype(int) - margin
    x1, y1 = np.ceil(pts.max(0)).astype(int) + margin
    return max(0, x0), max(0, y0), min(w, x1), min(h, y1)


def _warp_to_roi(img: np.ndarray, inverse: np.ndarray, roi: tuple[int, int, int, int], interp: int) -> np.ndarray:
    x0, y0, x1, y1 = roi
    m = inverse.copy()
    m[:, 2] -= (x0, y0)
    return cv2.warpAffine(img, m, (x1 - x0, y1 - y0), flags=interp, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _seamless(dst: np.ndarray, src: np.ndarray, region: np.ndarray) -> np.ndarray | None:
    """Poisson (NORMAL_CLONE) blend of `src` into `dst` inside `region`; None if OpenCV refuses."""
    pad = 4  # seamlessClone fails when the mask touches the border: give it a reflected frame
    dst_p = cv2.copyMakeBorder(dst, pad, pad, pad, pad, cv2.BORDER_REFLECT101)
    src_p = cv2.copyMakeBorder(src, pad, pad, pad, pad, cv2.BORDER_REFLECT101)
    mask_p = cv2.copyMakeBorder(region, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    x, y, w, h = cv2.boundingRect(mask_p)
    # OpenCV places the mask's bounding box at center - size // 2: this centre maps it onto itself.
    center = (x + w // 2, y + h // 2)
    try:
        out = cv2.seamlessClone(src_p, dst_p, mask_p, center, cv2.NORMAL_CLONE)
    except cv2.error:
        return None
    return out[pad:-pad, pad:-pad]


def paste_back(photo: np.ndarray, edited: np.ndarray, alignment: Alignment, region: np.ndarray,
               feather_px: float = 2.0, blend: str = "seamless") -> np.ndarray:
    """Return a copy of `photo` with `edited` (an aligned crop) blended in where `region` > 0.

    `region` is an aligned-frame mask in [0, 1] (the dilated, feathered eye boxes). Pixels whose
    warped region weight is 0 are copied from `photo` bit for bit, whatever the blend.
    """
    if blend not in BLENDS:
        raise ValueError(f"unknown blend {blend!r}; choose one of {', '.join(BLENDS)}")
    out = photo.copy()
    if not (region > 0).any():
        return out
    inverse = alignment.inverse
    margin = int(np.ceil(feather_px / max(alignment.scale, 1e-6))) + 2
    roi = _roi(inverse, region, photo.shape[:2], margin)
    x0, y0, x1, y1 = roi
    if x1 <= x0 or y1 <= y0:
        return out  # the face region lies outside the photo
    weight = _warp_to_roi(region.astype(np.float32), inverse, roi, cv2.INTER_LINEAR)
    patch = _warp_to_roi(edited, inverse, roi, cv2.INTER_CUBIC)
    dst = photo[y0:y1, x0:x1]
    inside = weight > 0
    if blend == "seamless":
        cloned = _seamless(dst, patch, (weight > 0.5).astype(np.uint8) * 255)
        if cloned is not None:
            patch = cloned  # Poisson-corrected colours, then feathered into the photo below
    mixed = dst.astype(np.float32) * (1 - weight[..., None]) + patch.astype(np.float32) * weight[..., None]
    blended = np.clip(mixed + 0.5, 0, 255).astype(np.uint8)
    out[y0:y1, x0:x1] = np.where(inside[..., None], blended, dst)
    return out
