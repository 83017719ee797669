"""EyeOpener: detect faces, decide which eyes are closed, in-paint them and blend into the photo."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from imgtrans.faces.blend import paste_back
from imgtrans.faces.detect import Face
from imgtrans.faces.eyes import Alignment, EyeBoxSpec, align, box_mask, eye_boxes, feather
from imgtrans.errors import UserError
from imgtrans.io import ImageReadError, Photo, atomic_write, list_images, read_photo, write_photo
from imgtrans.pipelines.folders import FolderReport, Job, plan


class Detector(Protocol):
    def detect(self, rgb: np.ndarray) -> list[Face]: ...


class EyeClassifier(Protocol):
    def predict(self, aligned_faces: list[np.ndarray]) -> np.ndarray: ...  # (N, 2) p(open)


class FaceInpainter(Protocol):
    size: int
    box_spec: EyeBoxSpec

    def inpaint(self, faces: np.ndarray, boxes: np.ndarray | None = None,
                exemplars: list[np.ndarray | None] | None = None) -> np.ndarray: ...


@dataclass(frozen=True)
class EyeConfig:
    """When a face is fixed and how the result is blended back."""

    threshold: float = 0.5  # an eye with p(open) below this is closed
    all_faces: bool = False  # in-paint every face, closed eyes or not
    blend: str = "seamless"  # seamless (Poisson) | feather
    margin: float = 0.1  # blend band around the eye boxes, as a fraction of the inter-ocular distance


@dataclass(frozen=True)
class Reference:
    """An open-eye face from a reference photo, aligned like the faces it will serve."""

    aligned: np.ndarray
    center: tuple[float, float]  # box centre relative to its photo's width and height


def _center(face: Face, shape: tuple[int, ...]) -> tuple[float, float]:
    x1, y1, x2, y2 = face.box
    return (x1 + x2) / 2 / shape[1], (y1 + y2) / 2 / shape[0]


def match_reference(face: Face, shape: tuple[int, ...], refs: list[Reference]) -> np.ndarray | None:
    """The reference face at the nearest relative position (a burst keeps people in place)."""
    if not refs:
        return None
    cx, cy = _center(face, shape)
    best = min(refs, key=lambda r: (r.center[0] - cx) ** 2 + (r.center[1] - cy) ** 2)
    return best.aligned


class EyeOpener:
    """The whole eye-opening job for one photo or a folder of photos."""

    def __init__(self, detector: Detector, classifier: EyeClassifier, inpainter: FaceInpainter,
                 config: EyeConfig | None = None) -> None:
        self.detector, self.classifier, self.inpainter = detector, classifier, inpainter
        self.config = config or EyeConfig()
        size = inpainter.size
        boxes = eye_boxes(size, inpainter.box_spec)
        iod = float(np.linalg.norm(boxes[1, :2] - boxes[0, :2]))
        # The in-painter only changes pixels inside the boxes; the band lets the blend settle.
        self.region = feather(box_mask(size, boxes), max(1.0, self.config.margin * iod))

    def references(self, rgbs: list[np.ndarray]) -> list[Reference]:
        """Every face of the reference photos, aligned as exemplars."""
        refs = []
        for rgb in rgbs:
            for face in self.detector.detect(rgb):
                a = align(face.landmarks, self.inpainter.size)
                refs.append(Reference(a.warp(rgb), _center(face, rgb.shape)))
        return refs

    def process(self, rgb: np.ndarray, refs: list[Reference] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """The photo with closed eyes opened, and a report of what was found and done."""
        faces = self.detector.detect(rgb)
        alignments = [align(f.landmarks, self.inpainter.size) for f in faces]
        crops = [a.warp(rgb) for a in alignments]
        probs = np.asarray(self.classifier.predict(crops)) if crops else np.zeros((0, 2))
        closed = probs < self.config.threshold
        fix = [bool(self.config.all_faces or c.any()) for c in closed]
        out = rgb
        todo = [i for i, f in enumerate(fix) if f]
        if todo:
            exemplars = [match_reference(faces[i], rgb.shape, refs or []) for i in todo]
            edited = self.inpainter.inpaint(np.stack([crops[i] for i in todo]), None, exemplars)
            for i, face_out in zip(todo, edited):
                out = self._paste(out, face_out, alignments[i])
        report = {
            "faces": len(faces),
            "closed_eyes": int(closed.sum()),
            "fixed": len(todo),
            "details": [{"box": [round(float(v), 1) for v in f.box], "p_open": [round(float(p), 3) for p in pr],
                         "fixed": fx} for f, pr, fx in zip(faces, probs, fix)],
        }
        return out, report

    def _paste(self, photo: np.ndarray, edited: np.ndarray, alignment: Alignment) -> np.ndarray:
        return paste_back(photo, edited, alignment, self.region, blend=self.config.blend)

    def open_folder(self, src: str | Path, dst: str | Path, fmt: str = "same", recursive: bool = True,
                    overwrite: bool = False, reference: str | Path | None = None,
                    progress: Callable[[int], None] | None = None,
                    jobs: list[Job] | None = None) -> tuple[FolderReport, dict[str, Any]]:
        """Process every photo under `src` into the mirrored tree under `dst`.

        Photos with nothing to fix are copied byte for byte. Returns the folder report and a
        per-photo report keyed by input path. `jobs` (e.g. one process's share of a planned run)
        replaces the planning; the report then lists no skipped files.
        """
        t0 = time.perf_counter()
        report = FolderReport()
        if jobs is None:
            work = plan(src, dst, fmt, recursive, overwrite)
            jobs, report.skipped = work.jobs, work.skipped
        refs = self.references(_read_references(reference)) if reference else None
        photos: dict[str, Any] = {}
        for job in jobs:
            try:
                photos[str(job.src)] = self._one(job, refs, fmt)
                report.converted.append(job.src)
            except ImageReadError as e:
                report.failed.append((job.src, str(e)))
            except OSError as e:
                report.failed.append((job.src, f"cannot write {job.dst} ({e.strerror or e})"))
            if progress:
                progress(1)
        report.seconds = time.perf_counter() - t0
        return report, photos

    def _one(self, job: Job, refs: list[Reference] | None, fmt: str) -> dict[str, Any]:
        photo = read_photo(job.src)
        rgb, info = self.process(photo.rgb, refs)
        if info["fixed"] == 0 and job.dst.suffix.lower() == job.src.suffix.lower():
            atomic_write(job.dst, lambda tmp: shutil.copyfile(job.src, tmp), fsync=False)
        else:
            write_photo(job.dst, Photo(rgb=rgb, alpha=photo.alpha, exif=photo.exif, icc=photo.icc), job.pil_format)
        return info


def _read_references(reference: str | Path) -> list[np.ndarray]:
    path = Path(reference)
    files = [path] if path.is_file() else list_images(path)
    if not files:
        raise UserError(f"{path}: no photos in this --reference folder; pass open-eye photos of the same people")
    out = []
    for f in files:
        try:
            out.append(read_photo(f).rgb)
        except ImageReadError as e:
            raise UserError(f"{f}: {e} (a --reference photo)") from None
    return out
