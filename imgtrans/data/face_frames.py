"""Whole faces in one aligned frame, for the face generator and the face-attribute classifiers."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from imgtrans.data import faces as face_data
from imgtrans.data.faces import index_records
from imgtrans.data.stream import pick, sample_seed
from imgtrans.data.transforms import jitter_alignment, to_tensor
from imgtrans.errors import UserError
from imgtrans.faces.eyes import TEMPLATE, Alignment, align
from imgtrans.io import ImageReadError, read_rgb

# The prepared faces/ folders (../shared/data/README.md) read by default. closed_eyes/ adds the
# only sizeable set of real closed eyes (48 of its 67 photos score below 0.12; utkface has 14).
FACE_SOURCES = ("utkface", "lfw_pairs", "closed_eyes")
# The face frame: our 5-point template alignment, zoomed so the eyes are FRAME_IOD of the side
# apart with their midpoint at FRAME_EYES_Y from the top. UTKFace chips are that tight (eyes
# about 0.31 from the top, 0.39 apart): the template's own frame reaches past them, and the
# border reflection paints mirrored eyes into the forehead, which a GAN learns as faithfully
# as the face.
FRAME_IOD, FRAME_EYES_Y = 0.40, 0.32


def square(rgb: np.ndarray, size: int) -> np.ndarray:
    """The centred square of an image, resized to size x size (area filter: no aliasing)."""
    h, w = rgb.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = np.ascontiguousarray(rgb[top:top + s, left:left + s])
    return crop if s == size else cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


def frame_alignment(landmarks: np.ndarray, size: int) -> Alignment:
    """Our template alignment, zoomed and shifted to the face frame (FRAME_IOD, FRAME_EYES_Y)."""
    base = align(np.asarray(landmarks, np.float64), size)
    eyes = TEMPLATE[:2].mean(0)
    zoom = FRAME_IOD / float(np.linalg.norm(TEMPLATE[1] - TEMPLATE[0]))
    shift = np.array([[zoom, 0, size * (0.5 - zoom * eyes[0])], [0, zoom, size * (FRAME_EYES_Y - zoom * eyes[1])],
                      [0, 0, 1]])
    return Alignment((shift @ np.vstack([base.matrix, [0, 0, 1]]))[:2], size)


def aligned_face(rgb: np.ndarray, landmarks: np.ndarray, size: int,
                 rng: np.random.Generator | None = None) -> np.ndarray:
    """The face in our frame at `size` px (randomly jittered when `rng` is given).

    Warped at twice the size, then area-resized: the prepared photos are 2-3x larger than a
    64 px face, and a direct bilinear warp would alias.
    """
    base = frame_alignment(landmarks, 2 * size)
    if rng is not None:
        base = jitter_alignment(base, rng)
    return cv2.resize(base.warp(rgb), (size, size), interpolation=cv2.INTER_AREA)


@dataclass(frozen=True)
class FaceFile:
    """One training image: its file, its landmarks (None: use the image as it is) and index row."""

    path: Path
    landmarks: np.ndarray | None = None
    rel: str = ""  # path relative to the faces folder: names the held-out split
    identity: str | None = None
    open_score: float | None = None


@dataclass(frozen=True)
class FaceFiles:
    files: list[FaceFile]
    missing: int = 0  # listed in an index but not on disk
    no_face: int = 0  # no face detected


def indexed_faces(faces: str, index: str = "") -> FaceFiles:
    """Every indexed face of the faces folder that exists and has a detected face."""
    root = Path(faces)
    records = index_records(root, index, FACE_SOURCES)
    present = [r for r in records if r.file.is_file()]
    landmarks = face_data.detect_landmarks([r.file for r in present])
    kept = []
    for r in present:
        lm = landmarks.get(r.file)
        if lm is not None:
            rel = r.file.relative_to(root).as_posix() if r.file.is_relative_to(root) else str(r.file)
            kept.append(FaceFile(r.file, np.asarray(lm, np.float64), rel, r.identity, r.open_score))
    if not kept:
        raise UserError(f"{faces}: no usable face ({len(records)} listed, {len(records) - len(present)} missing, "
                        f"{len(present)} without a detected face)")
    return FaceFiles(kept, len(records) - len(present), len(present) - len(kept))


def load_face(item: FaceFile, size: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """The item as a size x size uint8 face: aligned when it has landmarks, else its centred square."""
    rgb = np.asarray(read_rgb(item.path))
    if item.landmarks is None:
        return square(rgb, size)
    return aligned_face(rgb, item.landmarks, size, rng)


class FaceImages(Dataset):
    """Sample k: face pick(k) at `size` px, mirrored half the time (by a per-sample seed).

    Items: {"image": (3, size, size) in [-1, 1]}. A file that fails to decode is reported once
    and replaced by the next one.
    """

    def __init__(self, files: FaceFiles, size: int, flip: bool = True, seed: int = 0) -> None:
        self.data, self.size, self.flip, self.seed = files, size, flip, seed
        self._reported: set[Path] = set()

    def __len__(self) -> int:
        return len(self.data.files)

    def sizes(self) -> dict[str, int]:
        return {"faces": len(self), "missing_files": self.data.missing, "no_face": self.data.no_face}

    def _face(self, index: int) -> np.ndarray:
        files = self.data.files
        for offset in range(len(files)):
            item = files[(index + offset) % len(files)]
            try:
                return load_face(item, self.size)
            except ImageReadError as e:
                if item.path not in self._reported:
                    self._reported.add(item.path)
                    print(f"warning: skipping {item.path}: {e}", file=sys.stderr)
        raise UserError("no training image could be decoded; check the folder")

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        face = self._face(pick(self.seed, k, len(self)))
        if self.flip and np.random.default_rng(sample_seed(self.seed, k)).random() < 0.5:
            face = face[:, ::-1]
        return {"image": to_tensor(face)}
