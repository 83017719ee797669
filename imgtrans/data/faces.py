"""Face in-painting data: aligned faces, eye masks with jitter, and same-identity exemplars."""

from __future__ import annotations

import csv
import hashlib
import sys
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from imgtrans.data.stream import pick, sample_seed
from imgtrans.data.transforms import to_tensor
from imgtrans.errors import UserError
from imgtrans.faces.eyes import EyeBoxSpec, align, box_mask, eye_boxes
from imgtrans.io import ImageReadError, read_rgb

# The two sources of the prepared data (../shared/data/README.md): folder -> has identities.
SOURCES = ("lfw_pairs", "utkface")

Landmarks = Mapping[Path, np.ndarray | None]


def held_out(key: str, fraction: float = 0.1) -> bool:
    """True if `key` (an identity, else a file's path relative to the faces folder) is held out.

    A hash of the name, not a random draw, so training and a later evaluation agree on the split
    without sharing any state, on every machine and Python version.
    """
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


@dataclass(frozen=True)
class FaceRecord:
    """One photo of the index: where it is, whose face it is and how open its eyes are."""

    file: Path
    identity: str | None = None
    open_score: float | None = None
    open_left: float | None = None
    open_right: float | None = None

    def eyes_open(self, above: float) -> bool:
        """Both eyes score above `above`; a record without scores counts as open (user index)."""
        scores = [s for s in (self.open_left, self.open_right) if s is not None]
        return all(s > above for s in scores)


def _float(text: str | None, where: str) -> float | None:
    if text is None or not text.strip():
        return None
    try:
        return float(text)
    except ValueError:
        raise UserError(f"{where}: cannot read {text!r} as a number") from None


def read_index(csv_path: Path, root: Path) -> list[FaceRecord]:
    """Rows of an index CSV (columns file[,identity][,open_score][,open_left,open_right]).

    `file` is relative to `root` (absolute paths are kept as they are); an empty identity means
    none, so that photo never gets an exemplar.
    """
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = set(reader.fieldnames or [])
    except FileNotFoundError:
        raise UserError(f"{csv_path}: index file not found; check the path") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{csv_path}: not a readable CSV index ({e})") from None
    if "file" not in columns:
        raise UserError(f"{csv_path}: an index needs a 'file' column (and optionally identity, open_left, "
                        f"open_right); found {', '.join(sorted(c for c in columns if c))}")
    records = []
    for line, row in enumerate(rows, start=2):
        where = f"{csv_path}:{line}"
        if not (row.get("file") or "").strip():
            raise UserError(f"{where}: empty 'file' value")
        identity = (row.get("identity") or "").strip() or None
        records.append(FaceRecord(root / row["file"].strip(), identity, _float(row.get("open_score"), where),
                                  _float(row.get("open_left"), where), _float(row.get("open_right"), where)))
    return records


def index_records(faces: str | Path, index: str | Path = "", sources: Sequence[str] = SOURCES) -> list[FaceRecord]:
    """Every row of a user `index` CSV (found as given or under `faces`; files relative to `faces`),
    else of the prepared `faces/SOURCE/index.csv` files in `sources` order. One reader for every
    model that trains on faces."""
    root = Path(faces)
    if not root.is_dir():
        raise UserError(f"{root}: faces folder not found; pass --faces FOLDER (the data's faces/ folder)")
    if index:
        path = Path(index)
        if not path.is_absolute() and not path.exists():
            path = root / path
        return read_index(path, root)
    found = [root / s for s in sources if (root / s / "index.csv").is_file()]
    if not found:
        raise UserError(f"{root}: no {' or '.join(f'{s}/index.csv' for s in sources)}; pass the data's "
                        "faces/ folder, or --index CSV with a 'file' column relative to it")
    return [r for folder in found for r in read_index(folder / "index.csv", folder)]


def read_records(faces: str | Path, index: str | Path = "", open_above: float = 0.2) -> list[FaceRecord]:
    """Open-eye training photos: a user `index` CSV, else the prepared lfw_pairs + utkface indexes."""
    records = index_records(faces, index)
    kept = [r for r in records if r.eyes_open(open_above)]
    if not kept:
        raise UserError(f"{index or faces}: no photo has both eyes scored above {open_above} "
                        f"({len(records)} listed); lower open_above or check the index")
    return kept


def mirror_boxes(boxes: np.ndarray, size: int) -> np.ndarray:
    """Boxes of a horizontally flipped `size` px image, still ordered image-left eye first."""
    b = np.asarray(boxes, np.float64)
    mirrored = np.stack([size - b[:, 2], b[:, 1], size - b[:, 0], b[:, 3]], 1)
    return mirrored[::-1].copy()


def detect_landmarks(files: list[Path], who: str = "faces") -> dict[Path, np.ndarray | None]:
    """5-point MTCNN landmarks per file (None: no face), cached on disk by faces.landmarks.

    Callers reach it as a module attribute (`faces.detect_landmarks`), so tests can substitute it.
    """
    from imgtrans.faces.landmarks import dataset_landmarks  # lazy: the data module loads without MTCNN

    started = time.monotonic()
    found = dataset_landmarks(files, progress=sys.stderr.isatty())
    seconds = time.monotonic() - started
    if seconds > 10:  # a real detection pass (not cache hits) is worth a line in the log
        print(f"{who}: landmarks for {len(files)} files in {seconds:.0f} s", file=sys.stderr)
    return found


@dataclass(frozen=True)
class SampleSpec:
    """How a training sample is made: aligned size, eye boxes and their random variation."""

    size: int = 128
    box: EyeBoxSpec = field(default_factory=EyeBoxSpec)
    center_jitter: float = 0.08  # box centre shift, +- this fraction of the inter-ocular distance
    size_jitter: float = 0.15  # box width/height change, +- this fraction of the IOD
    flip: bool = True


@dataclass(frozen=True, eq=False)  # eq=False: compare by identity, arrays have no single truth value
class Draw:
    """The random choices behind sample k; `InpaintFaces.render` turns them into tensors."""

    index: int
    jitter: np.ndarray  # (2, 4) dx, dy, dw, dh per eye, in IOD units
    exemplar: int | None
    flip: bool


class InpaintFaces(Dataset):
    """Sample k: an aligned open-eye face, jittered eye masks and an exemplar of the same person.

    Only training-split records are used (identities with `held_out` true are held out);
    records without landmarks (no face found) are dropped at construction. `landmarks` maps
    each record's file to its (5, 2) landmarks, or None to detect them (MTCNN, cached on disk).
    """

    def __init__(self, records: list[FaceRecord], spec: SampleSpec | None = None, seed: int = 0,
                 landmarks: Landmarks | None = None, val_fraction: float = 0.1) -> None:
        self.spec, self.seed = spec or SampleSpec(), seed
        train = [r for r in records if r.identity is None or not held_out(r.identity, val_fraction)]
        self.held_out = len(records) - len(train)
        if landmarks is None:
            landmarks = detect_landmarks([r.file for r in train])
        kept = [(r, lm) for r in train if (lm := landmarks.get(r.file)) is not None]
        self.dropped = len(train) - len(kept)
        if not kept:
            raise UserError(f"no usable training face: {len(records)} listed, {self.held_out} held out for "
                            f"validation, {self.dropped} without a detected face; add more photos")
        if self.dropped:
            print(f"warning: no face found in {self.dropped} of {len(train)} photos; left out", file=sys.stderr)
        self.records = [r for r, _ in kept]
        self.landmarks = [np.asarray(lm, np.float64).reshape(5, 2) for _, lm in kept]
        by_identity: dict[str, list[int]] = defaultdict(list)
        for i, r in enumerate(self.records):
            if r.identity is not None:
                by_identity[r.identity].append(i)
        # Exemplar candidates: the other usable photos of the same person.
        self.partners: list[tuple[int, ...]] = [
            tuple(j for j in by_identity[r.identity] if j != i) if r.identity is not None else ()
            for i, r in enumerate(self.records)
        ]
        self.exemplar_identities = sum(len(v) > 1 for v in by_identity.values())

    def __len__(self) -> int:
        return len(self.records)

    def sizes(self) -> dict[str, int]:
        return {"faces": len(self), "identities_with_exemplars": self.exemplar_identities,
                "dropped": self.dropped, "held_out": self.held_out}

    def draw(self, k: int) -> Draw:
        """The random choices of sample k: a pure function of (seed, k)."""
        rng = np.random.default_rng(sample_seed(self.seed, k))
        c, s = self.spec.center_jitter, self.spec.size_jitter
        jitter = np.concatenate([rng.uniform(-c, c, (2, 2)), rng.uniform(-s, s, (2, 2))], 1)
        u_exemplar, u_flip = rng.random(2)  # drawn even when unused, so one choice never shifts another
        index = pick(self.seed, k, len(self))
        partners = self.partners[index]
        exemplar = partners[int(u_exemplar * len(partners))] if partners else None
        return Draw(index, jitter, exemplar, bool(self.spec.flip and u_flip < 0.5))

    def aligned(self, index: int) -> np.ndarray:
        """Record `index`'s face aligned to the template, (S, S, 3) uint8."""
        path = self.records[index].file
        try:
            rgb = np.asarray(read_rgb(path))
        except ImageReadError as e:
            raise UserError(f"{path}: {e}; remove it from the index") from None
        return align(self.landmarks[index], self.spec.size).warp(rgb)

    def render(self, d: Draw) -> dict[str, torch.Tensor]:
        size = self.spec.size
        face = self.aligned(d.index)
        exemplar = self.aligned(d.exemplar) if d.exemplar is not None else None
        boxes = eye_boxes(size, self.spec.box, d.jitter)
        if d.flip:
            face = face[:, ::-1]
            exemplar = exemplar[:, ::-1] if exemplar is not None else None
            boxes = mirror_boxes(boxes, size)
        return {
            "face": to_tensor(face),
            "mask": torch.from_numpy(box_mask(size, boxes))[None],
            "exemplar": to_tensor(exemplar) if exemplar is not None else torch.zeros(3, size, size),
            "has_exemplar": torch.tensor([1.0 if exemplar is not None else 0.0]),
            "boxes": torch.from_numpy(boxes.astype(np.float32)),
        }

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        return self.render(self.draw(k))
