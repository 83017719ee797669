"""Plan a folder run: mirrored output paths, skip-existing, and refusing to overwrite inputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from imgtrans.errors import UserError
from imgtrans.io import IMAGE_EXTS, format_for_ext, list_images, output_format


@dataclass(frozen=True)
class Job:
    """One input photo and where its result goes."""

    src: Path
    dst: Path
    pil_format: str


@dataclass
class Plan:
    jobs: list[Job] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)  # outputs that already exist


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def plan(src: str | Path, dst: str | Path, fmt: str = "same", recursive: bool = True,
         overwrite: bool = False) -> Plan:
    """Map every input image to an output path that mirrors the input tree.

    A file input writes to `dst` itself when `dst` has an image extension, else into `dst/`.
    Refuses any layout where an output could replace an input, or where outputs would land in
    the input tree and be picked up as inputs by the next run.
    """
    src_p, dst_p = Path(src).resolve(), Path(dst).resolve()
    if not src_p.exists():
        raise UserError(f"{src}: not found; pass an image file or a folder of images")
    if src_p.is_file():
        if dst_p.suffix.lower() in IMAGE_EXTS and not dst_p.is_dir():
            pairs = [(src_p, dst_p.with_suffix(""), dst_p.suffix)]
        else:
            pairs = [(src_p, dst_p / src_p.stem, None)]
    else:
        if _inside(dst_p, src_p):
            raise UserError(f"{dst}: the output folder is inside the input folder {src}; "
                            "choose an output folder outside it so no input can be overwritten")
        files = list_images(src_p, recursive=recursive)
        if not files:
            raise UserError(f"{src}: no images found (looked for {', '.join(sorted(IMAGE_EXTS))})")
        pairs = [(f, dst_p / f.relative_to(src_p).with_suffix(""), None) for f in files]
    out = Plan()
    for f, stem, forced_ext in pairs:
        pil_format, ext = output_format(f, fmt)
        if forced_ext:  # an explicit output file name decides its own format
            pil_format, ext = format_for_ext(forced_ext), forced_ext
        target = stem.with_name(stem.name + ext)
        if target == f:
            raise UserError(f"{dst}: the output would overwrite the input {f}; choose another output path")
        if target.exists() and not overwrite:
            out.skipped.append(target)
        else:
            out.jobs.append(Job(f, target, pil_format))
    return out


@dataclass
class FolderReport:
    """What a folder run did; `failed` holds (input, reason)."""

    converted: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed
