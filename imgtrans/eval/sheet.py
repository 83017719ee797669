"""Contact sheets: a PNG grid of images (e.g. input | output columns) for eyeballing results."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from imgtrans.io import atomic_write

BACKGROUND = (32, 32, 32)
TEXT = (230, 230, 230)
HEADER = 18  # pixels of column-title band


def _fit(rgb: np.ndarray, cell: int) -> Image.Image:
    """The image scaled to fit a cell x cell square, aspect kept, centred on the background."""
    img = Image.fromarray(np.asarray(rgb, np.uint8)).convert("RGB")
    scale = cell / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    img = img.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)
    tile = Image.new("RGB", (cell, cell), BACKGROUND)
    tile.paste(img, ((cell - size[0]) // 2, (cell - size[1]) // 2))
    return tile


def contact_sheet(rows: Sequence[Sequence[np.ndarray]], path: str | Path, labels: Sequence[str] | None = None,
                  cell: int = 160, pad: int = 4) -> Path:
    """Write `rows` of HxWx3 uint8 images as one PNG grid (one row per list); returns the path.

    `labels` titles the columns. Rows may be of different lengths; missing cells stay empty.
    """
    if not rows or not any(rows):
        raise ValueError("contact_sheet needs at least one image")
    ncols = max(len(r) for r in rows)
    top = HEADER + pad if labels else 0
    sheet = Image.new("RGB", (pad + ncols * (cell + pad), top + pad + len(rows) * (cell + pad)), BACKGROUND)
    if labels:
        draw = ImageDraw.Draw(sheet)
        for j, text in enumerate(labels[:ncols]):
            draw.text((pad + j * (cell + pad) + 2, pad + 2), str(text), fill=TEXT)
    for i, row in enumerate(rows):
        for j, rgb in enumerate(row):
            sheet.paste(_fit(rgb, cell), (pad + j * (cell + pad), top + pad + i * (cell + pad)))
    out = Path(path)
    atomic_write(out, lambda tmp: sheet.save(tmp, format="PNG"))
    return out
