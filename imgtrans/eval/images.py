"""Evaluation image sets: a folder's images, evenly subsampled, decoded to uint8 arrays."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from imgtrans.data.unpaired import scan_folder
from imgtrans.io import ImageReadError, read_rgb


def pick_evenly(files: list[Path], n: int) -> list[Path]:
    """`n` files spread evenly over the sorted list (all of them when n <= 0 or n >= len)."""
    if n <= 0 or n >= len(files):
        return list(files)
    return [files[i] for i in np.linspace(0, len(files) - 1, n).round().astype(int)]


def read_images(files: list[Path]) -> list[np.ndarray]:
    """Decoded HxWx3 uint8 images; files that fail to decode are reported and left out."""
    out = []
    for f in files:
        try:
            out.append(np.asarray(read_rgb(f)))
        except ImageReadError as e:
            print(f"warning: skipping {f}: {e}", file=sys.stderr)
    return out


def load_set(folder: str | Path, label: str, max_images: int = 0) -> list[np.ndarray]:
    """Up to `max_images` (0: all) readable images of `folder`, evenly spread over its sorted files."""
    return read_images(pick_evenly(scan_folder(folder, label), max_images))
