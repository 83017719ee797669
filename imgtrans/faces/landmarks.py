"""Landmarks for face datasets, detected once and cached on disk."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgtrans.faces.detect import DetectConfig, Detector, Face, MTCNNDetector
from imgtrans.io import ImageReadError, read_rgb

CACHE_NAME = "landmarks-v2.jsonl"  # v2: detection on padded crops (v1 missed tight crops)
PAD = 0.25  # grey border per side, as a fraction of the image size
CHUNK = 32  # images per detect_batch call: amortises MTCNN's per-call cost, bounds memory
DECIMALS = 2  # a hundredth of a pixel is far below MTCNN's accuracy and keeps the cache small


@dataclass(frozen=True)
class FileKey:
    """What identifies one version of a file: a rewritten file gets a new size or mtime."""

    path: str  # absolute, symlinks resolved, so different spellings of a path share an entry
    size: int
    mtime_ns: int

    @staticmethod
    def of(file: Path) -> FileKey:
        st = file.stat()
        return FileKey(str(file.resolve()), st.st_size, st.st_mtime_ns)


def cache_path() -> Path:
    """$IMGTRANS_HOME/landmarks-v2.jsonl (IMGTRANS_HOME defaults to ~/.cache/imgtrans)."""
    home = os.environ.get("IMGTRANS_HOME")
    return (Path(home) if home else Path.home() / ".cache" / "imgtrans") / CACHE_NAME


def dataset_landmarks(
    files: list[Path], detector: Detector | None = None, progress: bool = False
) -> dict[Path, np.ndarray | None]:
    """(5, 2) float32 landmarks of each file's central face, or None (no face, unreadable file).

    Only files missing from the cache, or changed since, are detected; their results are appended
    to the cache after each chunk, so an interrupted run keeps what it finished.
    """
    files = [Path(f) for f in files]
    keys: dict[Path, FileKey | None] = {}
    for f in files:
        try:
            keys[f] = FileKey.of(f)
        except OSError:
            keys[f] = None  # missing or unreadable: nothing to detect or to cache
    cached = read_cache(cache_path())
    found: dict[FileKey, np.ndarray | None] = {k: cached[k] for k in keys.values() if k is not None and k in cached}
    todo = list(dict.fromkeys(k for k in keys.values() if k is not None and k not in found))
    if todo:
        found.update(_detect_and_cache(todo, detector, progress))
    return {f: (None if k is None else _copy(found[k])) for f, k in keys.items()}


def read_cache(path: Path) -> dict[FileKey, np.ndarray | None]:
    """Entries of a cache file; later lines win, and lines that do not parse are skipped, since
    another process may be halfway through appending the last one."""
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return {}
    entries: dict[FileKey, np.ndarray | None] = {}
    for line in lines:
        parsed = _parse_line(line)
        if parsed is not None:
            entries[parsed[0]] = parsed[1]
    return entries


def _parse_line(line: bytes) -> tuple[FileKey, np.ndarray | None] | None:
    try:
        rec = json.loads(line)
        key = FileKey(str(rec["path"]), int(rec["size"]), int(rec["mtime_ns"]))
        if rec["landmarks"] is None:
            return key, None
        pts = np.asarray(rec["landmarks"], dtype=np.float32)
    except (ValueError, TypeError, KeyError):
        return None
    if pts.shape != (5, 2) or not np.isfinite(pts).all():
        return None
    return key, pts


def _detect_and_cache(
    todo: list[FileKey], detector: Detector | None, progress: bool
) -> dict[FileKey, np.ndarray | None]:
    from tqdm import tqdm

    if detector is None:
        # Dataset crops are small and sometimes soft: accept slightly less confident, smaller faces.
        detector = MTCNNDetector(DetectConfig(min_score=0.8, min_eye_distance=8))
    results: dict[FileKey, np.ndarray | None] = {}
    with tqdm(total=len(todo), unit="img", desc="landmarks", disable=not progress, dynamic_ncols=True) as bar:
        for chunk in _chunks(todo, CHUNK):
            found = _detect_chunk(chunk, detector)
            _append(cache_path(), [_line(k, v) for k, v in found.items()])
            results.update(found)
            bar.update(len(chunk))
    return results


def _detect_chunk(chunk: list[FileKey], detector: Detector) -> dict[FileKey, np.ndarray | None]:
    found: dict[FileKey, np.ndarray | None] = {}
    images: dict[FileKey, np.ndarray] = {}
    shifts: dict[FileKey, np.ndarray] = {}
    for key in chunk:
        try:
            images[key], shifts[key] = pad(np.asarray(read_rgb(key.path)))
        except ImageReadError:
            found[key] = None  # cached as null: this version of the file will never have landmarks
    batch = getattr(detector, "detect_batch", None)
    arrays = list(images.values())
    all_faces = batch(arrays) if batch is not None else [detector.detect(a) for a in arrays]
    for (key, rgb), faces in zip(images.items(), all_faces):
        face = central_face(faces, rgb.shape[1], rgb.shape[0])
        if face is None:
            found[key] = None
            continue
        # Rounded as the cache stores them, so a cached result equals a fresh one exactly.
        found[key] = np.asarray(_rounded(face.landmarks - shifts[key]), np.float32)
    return found


def pad(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A grey frame around a dataset crop: MTCNN misplaces landmarks of faces cropped so tightly
    that the face box leaves the image (measured on UTKFace: median eye error 0.28 of the
    inter-ocular distance without padding, LFW unaffected)."""
    h, w = rgb.shape[:2]
    by, bx = int(round(h * PAD)), int(round(w * PAD))
    padded = np.pad(rgb, ((by, by), (bx, bx), (0, 0)), constant_values=128)
    return padded, np.array([bx, by], np.float32)  # the (x, y) shift back to the original


def central_face(faces: list[Face], width: int, height: int) -> Face | None:
    """The face whose box centre is closest to the image centre (a dataset crop's subject);
    the larger one when two are equally close."""
    centre = np.array([width / 2, height / 2], np.float32)
    return min(faces, key=lambda f: (float(np.linalg.norm(f.centre - centre)), -f.area), default=None)


def _line(key: FileKey, landmarks: np.ndarray | None) -> str:
    pts = None if landmarks is None else _rounded(landmarks)
    return json.dumps({"path": key.path, "size": key.size, "mtime_ns": key.mtime_ns, "landmarks": pts}) + "\n"


def _rounded(landmarks: np.ndarray) -> list[list[float]]:
    return [[round(float(x), DECIMALS), round(float(y), DECIMALS)] for x, y in landmarks]


def _append(path: Path, lines: list[str]) -> None:
    """Append lines with one O_APPEND write, so lines from concurrent processes never interleave."""
    if not lines:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(lines).encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        if _ends_mid_line(fd):
            data = b"\n" + data  # a crashed writer left a partial line: do not glue ours onto it
        while data:
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)


def _ends_mid_line(fd: int) -> bool:
    size = os.fstat(fd).st_size
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"


def _chunks(items: list[FileKey], n: int) -> Iterator[list[FileKey]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _copy(landmarks: np.ndarray | None) -> np.ndarray | None:
    # A file listed twice (or under two spellings) must not hand out one shared array.
    return None if landmarks is None else landmarks.copy()
