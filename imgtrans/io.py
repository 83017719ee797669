"""Find images in folders and read them safely as RGB (EXIF orientation, modes, bit depths)."""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imgtrans.errors import UserError

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".gif"})

# Refuse decompression bombs: 200 MP is far beyond any camera photo yet bounded in memory.
MAX_PIXELS = 200_000_000


_UMASK = os.umask(0)
os.umask(_UMASK)


def refuse_existing(paths: list[Path], overwrite: bool) -> None:
    """Outputs never replace a file silently: refuse (before anything is written) unless `overwrite`."""
    taken = [p for p in paths if p.exists()]
    if taken and not overwrite:
        more = f" (and {len(taken) - 1} more)" if len(taken) > 1 else ""
        raise UserError(f"{taken[0]}{more}: already exists; pass --overwrite to replace it, or choose another --out")


def atomic_write(path: Path, write: Callable[[str], object], fsync: bool = True) -> None:
    """Call `write(tmp_path)` then rename over `path`, so a crash never leaves a half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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


def read_rgb(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode `path` as an upright RGB image (alpha composited on white) or raise ImageReadError."""
    photo = read_photo(path, max_pixels)
    img = Image.fromarray(photo.rgb)
    if photo.alpha is None:
        return img
    base = Image.new("RGB", img.size, (255, 255, 255))
    base.paste(img, mask=Image.fromarray(photo.alpha))
    return base


# Why a file cannot be used, each with what the user can do about it (printed after the path).
EMPTY = "empty file; copy it again from its source, or remove it"
NOT_AN_IMAGE = "not an image PIL can read; convert it to JPEG or PNG, or move it out of the folder"


def _unreadable(e: BaseException) -> str:
    return f"unreadable ({e}); re-save it with an image editor, or remove it"


def probe(path: str | Path) -> str | None:
    """Cheap header check: None if the file looks like a readable image, else the reason."""
    p = Path(path)
    try:
        if p.stat().st_size == 0:
            return EMPTY
        with Image.open(p) as img:
            img.verify()
    except UnidentifiedImageError:
        return NOT_AN_IMAGE
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return _unreadable(e)
    return None


# ----- full-fidelity reading and writing for inference ------------------------------------

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_FORMATS = {"jpg": ("JPEG", ".jpg"), "png": ("PNG", ".png")}
_EXT_FORMAT = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP",
               ".tif": "TIFF", ".tiff": "TIFF", ".ppm": "PPM", ".pgm": "PPM", ".gif": "PNG"}


@dataclass
class Photo:
    """A decoded photo ready for a network: upright 8-bit RGB, plus what the output should keep."""

    rgb: np.ndarray  # HxWx3 uint8, EXIF orientation applied
    alpha: np.ndarray | None = None  # HxW uint8, reattached to the output
    exif: bytes | None = None  # with the orientation reset, since pixels are now upright
    icc: bytes | None = None  # only when it describes RGB pixels

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[1], self.rgb.shape[0]


def _eight_bit(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if img.mode == "F":
        return Image.fromarray(np.clip(np.asarray(img) * 255.0 + 0.5, 0, 255).astype(np.uint8))
    return img


def read_photo(path: str | Path, max_pixels: int = MAX_PIXELS) -> Photo:
    """Decode `path` keeping alpha, EXIF and an RGB ICC profile; raise ImageReadError if unusable."""
    p = Path(path)
    try:
        if p.stat().st_size == 0:
            raise ImageReadError(EMPTY)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                if img.width * img.height > max_pixels:
                    raise ImageReadError(f"{img.width}x{img.height} is over the limit of {max_pixels:,} pixels; "
                                         "downscale it first")
                img.load()
                icc = img.info.get("icc_profile") if img.mode in ("RGB", "RGBA", "P") else None
                upright = ImageOps.exif_transpose(img)
                exif = upright.getexif()
                exif_bytes = exif.tobytes() if len(exif) else None
                return _split(_eight_bit(upright), exif_bytes, icc)
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(NOT_AN_IMAGE) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageReadError(f"too many pixels ({e}); downscale it first") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(_unreadable(e)) from None


def _split(img: Image.Image, exif: bytes | None, icc: bytes | None) -> Photo:
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    alpha = None
    if img.mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A")).copy()
        if alpha.min() == 255:
            alpha = None  # fully opaque: nothing to keep
        img = rgba.convert("RGB")
    return Photo(rgb=np.asarray(img.convert("RGB")).copy(), alpha=alpha, exif=exif, icc=icc)


def format_for_ext(ext: str) -> str:
    """PIL format that writes files with extension `ext` (PNG when unknown)."""
    return _EXT_FORMAT.get(ext.lower(), "PNG")


def output_format(src: Path, fmt: str) -> tuple[str, str]:
    """(PIL format, extension) for an output: 'jpg', 'png', or 'same' as the input."""
    if fmt in _FORMATS:
        return _FORMATS[fmt]
    ext = src.suffix.lower()
    if ext == ".gif":
        return "PNG", ".png"  # animated/paletted output would lose the translation's colours
    return format_for_ext(ext), src.suffix


def write_photo(path: Path, photo: Photo, pil_format: str, quality: int = 95) -> None:
    """Write atomically (temp file + rename): an interrupted run never leaves a half image
    that a resumed run would then skip as done."""
    img = Image.fromarray(photo.rgb)
    if photo.alpha is not None:
        if pil_format in ("JPEG", "BMP", "PPM"):
            # No alpha channel in these formats: composite on white, as a viewer would show it.
            base = Image.new("RGB", img.size, (255, 255, 255))
            base.paste(img, mask=Image.fromarray(photo.alpha))
            img = base
        else:
            img.putalpha(Image.fromarray(photo.alpha))
    options: dict = {}
    if photo.icc and pil_format in ("JPEG", "PNG", "WEBP", "TIFF"):
        options["icc_profile"] = photo.icc
    if photo.exif and pil_format in ("JPEG", "PNG", "WEBP", "TIFF"):
        options["exif"] = photo.exif
    if pil_format in ("JPEG", "WEBP"):
        options["quality"] = quality
    if pil_format == "JPEG":
        options["subsampling"] = 0 if quality >= 90 else 2
    atomic_write(path, lambda tmp: img.save(tmp, format=pil_format, **options), fsync=False)
