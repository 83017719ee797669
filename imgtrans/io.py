"""Find images in folders and read them safely as RGB (EXIF orientation, modes, bit depths)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imgtrans.errors import UserError

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".gif"})

# Refuse decompression bombs: 200 MP is far beyond any camera photo yet bounded in memory.
MAX_PIXELS = 200_000_000


class ImageReadError(Exception):
    """An image file that cannot be used; the message says why in a few words."""


def list_images(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Image files under `folder` by extension, sorted, hidden files and folders skipped."""
    root = Path(folder)
    if not root.exists():
        raise UserError(f"{root}: folder not found; check the path")
    if not root.is_dir():
        raise UserError(f"{root}: not a folder; pass the folder that holds the images")
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath, f) for f in filenames if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTS]
        if not recursive:
            break
    return sorted(found)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB; alpha is composited away, 16-bit is scaled, CMYK converted."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        # 16-bit modes declare their depth; 32-bit "I" (e.g. from some PNG/TIFF writers) does not.
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        base = Image.new("RGB", img.size, (255, 255, 255))
        base.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return base
    return img.convert("RGB")


def read_rgb(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode `path` fully as an upright RGB image or raise ImageReadError."""
    p = Path(path)
    try:
        if p.stat().st_size == 0:
            raise ImageReadError("empty file")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                if img.width * img.height > max_pixels:
                    raise ImageReadError(f"{img.width}x{img.height} is over the limit of {max_pixels:,} pixels")
                img.load()
                img = ImageOps.exif_transpose(img)
                return _to_rgb(img)
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError("not an image PIL can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageReadError(f"too many pixels ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"unreadable ({e})") from None


def probe(path: str | Path) -> str | None:
    """Cheap header check: None if the file looks like a readable image, else the reason."""
    p = Path(path)
    try:
        if p.stat().st_size == 0:
            return "empty file"
        with Image.open(p) as img:
            img.verify()
    except UnidentifiedImageError:
        return "not an image PIL can read"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return f"unreadable ({e})"
    return None
