"""Face detection: the Detector protocol and an MTCNN implementation (facenet-pytorch, lazy)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import numpy as np

from imgtrans.errors import UserError

# Pixels fed to one MTCNN call: bounds the image pyramid's memory (about 100 bytes per input
# pixel) while still batching dozens of small face crops or a few full photos together.
BATCH_PIXELS = 4_000_000

INSTALL_HINT = "face detection needs facenet-pytorch: pip install facenet-pytorch==2.5.3"


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value, so compare by identity
class Face:
    """One detected face in image pixel coordinates."""

    box: np.ndarray  # (4,) float32 x1, y1, x2, y2
    # (5, 2) float32 x, y: eye on the image's left, eye on the image's right, nose, mouth left, mouth right
    landmarks: np.ndarray
    score: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "box", np.asarray(self.box, np.float32).reshape(4))
        object.__setattr__(self, "landmarks", np.asarray(self.landmarks, np.float32).reshape(5, 2))
        object.__setattr__(self, "score", float(self.score))

    @property
    def eye_distance(self) -> float:
        """Distance between the two eye landmarks, in pixels."""
        return float(np.linalg.norm(self.landmarks[1] - self.landmarks[0]))

    @property
    def eyes(self) -> np.ndarray:
        """(2, 2) the image-left eye then the image-right eye."""
        return self.landmarks[:2]

    @property
    def centre(self) -> np.ndarray:
        """(2,) centre of the box."""
        return np.array([(self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2], np.float32)

    @property
    def area(self) -> float:
        return float(max(self.box[2] - self.box[0], 0.0) * max(self.box[3] - self.box[1], 0.0))


class Detector(Protocol):
    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Faces in an HxWx3 uint8 image, sorted left to right by box centre x."""
        ...


@dataclass(frozen=True)
class DetectConfig:
    min_score: float = 0.9
    min_eye_distance: float = 10.0  # in original-image pixels; smaller faces are dropped
    max_side: int = 1024  # detect on a copy downscaled so its long side is at most this
    min_face: int = 20  # MTCNN min_face_size, in pixels of the (downscaled) detection image
    device: str = "cpu"


def check_rgb(rgb: np.ndarray) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        got = f"{rgb.dtype} array of shape {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise ValueError(f"face detection expects an HxWx3 uint8 RGB array, got {got}")


def downscale(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, float, float]:
    """`rgb` shrunk (area interpolation) so its long side is at most `max_side`, and the x and y
    factors that take its pixel coordinates back to the original."""
    h, w = rgb.shape[:2]
    if max(h, w) <= max_side:
        return rgb, 1.0, 1.0
    s = max_side / max(h, w)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    # The rounded size, not s, defines the exact per-axis factors of the resize.
    return cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA), w / nw, h / nh


def to_original(xy: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Map (..., 2) pixel coordinates of the downscaled copy to the original image.

    Pixel centres sit at integer coordinates, so scaling is about the -0.5 pixel edge.
    """
    if sx == 1.0 and sy == 1.0:
        return xy
    factor = np.array([sx, sy], np.float32)
    return (xy + 0.5) * factor - 0.5


class MTCNNDetector:
    """Detector using facenet-pytorch's MTCNN (weights ship in the package; loaded on first use).

    Never changes torch's global thread count: callers decide how many threads it may use.
    """

    def __init__(self, config: DetectConfig | None = None) -> None:
        self.config = config or DetectConfig()
        self._mtcnn: Any = None

    def _model(self) -> Any:
        if self._mtcnn is None:
            try:
                from facenet_pytorch import MTCNN
            except ImportError as e:
                raise UserError(INSTALL_HINT) from e
            from imgtrans.train.runtime import select_device

            self._mtcnn = MTCNN(
                keep_all=True, post_process=False, select_largest=False,
                device=select_device(self.config.device), min_face_size=self.config.min_face,
            ).eval()
        return self._mtcnn

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Faces in an HxWx3 uint8 image, sorted left to right by box centre x."""
        return self.detect_batch([rgb])[0]

    def detect_batch(self, rgbs: list[np.ndarray]) -> list[list[Face]]:
        """`detect` for each image; same-size images share MTCNN calls, which is faster."""
        for rgb in rgbs:
            check_rgb(rgb)
        by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, rgb in enumerate(rgbs):
            by_shape[rgb.shape].append(i)
        out: list[list[Face]] = [[] for _ in rgbs]
        for shape, idxs in by_shape.items():
            per_call = max(1, BATCH_PIXELS // (min(max(shape[:2]), self.config.max_side) ** 2))
            for start in range(0, len(idxs), per_call):
                chunk = idxs[start:start + per_call]
                for i, faces in zip(chunk, self._detect_same_size([rgbs[i] for i in chunk])):
                    out[i] = faces
        return out

    def _detect_same_size(self, rgbs: list[np.ndarray]) -> list[list[Face]]:
        small = [downscale(rgb, self.config.max_side) for rgb in rgbs]
        _, sx, sy = small[0]
        if min(small[0][0].shape[:2]) < self.config.min_face:
            return [[] for _ in rgbs]  # no face of min_face pixels fits; MTCNN's pyramid would be empty
        batch = np.stack([img for img, _, _ in small])
        boxes, probs, points = self._model().detect(batch, landmarks=True)
        return [self._faces(boxes[k], probs[k], points[k], sx, sy) for k in range(len(rgbs))]

    def _faces(self, boxes: Any, probs: Any, points: Any, sx: float, sy: float) -> list[Face]:
        # MTCNN gives None (or [None] scores) for an image without faces, and object arrays otherwise.
        if boxes is None or points is None or probs is None:
            return []
        try:
            boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
            points = np.asarray(points, np.float32).reshape(-1, 5, 2)
            probs = np.asarray(probs, np.float32).reshape(-1)
        except (TypeError, ValueError):
            return []
        if not len(boxes) == len(points) == len(probs):
            return []
        faces = []
        for box, pts, score in zip(boxes, points, probs):
            if not (np.isfinite(box).all() and np.isfinite(pts).all() and np.isfinite(score)):
                continue
            box = to_original(box.reshape(2, 2), sx, sy).reshape(4)
            # MTCNN already orders the eyes image-left first (checked on real and mirrored faces);
            # re-sorting by x would swap them on strongly rotated faces.
            face = Face(box=box, landmarks=to_original(pts, sx, sy), score=float(score))
            if face.score >= self.config.min_score and face.eye_distance >= self.config.min_eye_distance:
                faces.append(face)
        return sorted(faces, key=lambda f: float(f.centre[0]))
