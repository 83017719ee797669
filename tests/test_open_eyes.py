"""Eye opening pipeline: alignment round trip, masks, paste-back identity, faces and folders."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from imgtrans.faces.blend import paste_back
from imgtrans.faces.detect import Face
from imgtrans.faces.eyes import EyeBoxSpec, align, box_mask, eye_boxes, feather, similarity, template_points
from imgtrans.pipelines.eyes import EyeConfig, EyeOpener, Reference, match_reference

SIZE = 64


def face_at(cx: float, cy: float, iod: float, angle_deg: float = 0.0) -> Face:
    """A face whose landmarks are the template, scaled to `iod`, rotated and centred at (cx, cy)."""
    t = template_points(1.0)
    t = (t - t[:2].mean(0)) / np.linalg.norm(t[1] - t[0]) * iod
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    pts = (t @ rot.T + (cx, cy)).astype(np.float32)
    box = np.array([cx - 1.2 * iod, cy - 1.2 * iod, cx + 1.2 * iod, cy + 1.6 * iod], np.float32)
    return Face(box=box, landmarks=pts, score=0.99)


class FakeDetector:
    def __init__(self, faces: list[Face]) -> None:
        self.faces = faces

    def detect(self, rgb: np.ndarray) -> list[Face]:
        return list(self.faces)


class FakeClassifier:
    def __init__(self, probs: list[tuple[float, float]]) -> None:
        self.probs = probs

    def predict(self, aligned_faces: list[np.ndarray]) -> np.ndarray:
        assert all(a.shape == (SIZE, SIZE, 3) for a in aligned_faces)
        return np.array(self.probs[: len(aligned_faces)], dtype=np.float32)


class FakeInpainter:
    """Paints the eye boxes a flat colour (the exemplar's mean colour when one is given)."""

    size = SIZE
    box_spec = EyeBoxSpec()

    def __init__(self) -> None:
        self.exemplars: list = []

    def inpaint(self, faces: np.ndarray, boxes: np.ndarray | None = None, exemplars: list | None = None) -> np.ndarray:
        mask = box_mask(SIZE, eye_boxes(SIZE, self.box_spec)) > 0
        out = faces.copy()
        self.exemplars += list(exemplars or [None] * len(faces))
        for i, ex in enumerate(exemplars or [None] * len(faces)):
            out[i][mask] = (255, 0, 255) if ex is None else ex.reshape(-1, 3).mean(0).astype(np.uint8)
        return out


def textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([120 + 60 * np.sin(xx / 9.0), 110 + 50 * np.cos(yy / 7.0), 100 + 0 * xx], -1)
    return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)


def photo_region(opener: EyeOpener, face: Face, shape: tuple[int, int]) -> np.ndarray:
    """Photo pixels the blend may touch: the warped support of the blend region, grown by 1 px."""
    a = align(face.landmarks, SIZE)
    support = cv2.warpAffine((opener.region > 0).astype(np.uint8), a.inverse, (shape[1], shape[0]),
                             flags=cv2.INTER_LINEAR, borderValue=0)
    return cv2.dilate(support, np.ones((3, 3), np.uint8)) > 0


# ----- geometry ---------------------------------------------------------------------------

@pytest.mark.parametrize("angle", [0.0, 17.0, -35.0])
def test_alignment_round_trip_within_a_pixel(angle: float) -> None:
    face = face_at(210.0, 160.0, 48.0, angle)
    a = align(face.landmarks, 128)
    assert np.allclose(a.to_aligned(face.landmarks), template_points(128), atol=1e-6)
    assert np.allclose(a.to_photo(a.to_aligned(face.landmarks)), face.landmarks, atol=1e-6)
    # Pixel level: a bright dot at the left eye lands on the template's left eye after warping.
    img = np.zeros((320, 420, 3), np.uint8)
    x, y = np.round(face.landmarks[0]).astype(int)
    img[y - 1:y + 2, x - 1:x + 2] = 255
    warped = a.warp(img)[..., 0].astype(np.float64)
    ys, xs = np.nonzero(warped > 0.2 * warped.max())
    wts = warped[ys, xs]
    found = np.array([(xs * wts).sum(), (ys * wts).sum()]) / wts.sum() + 0.5
    expected = a.to_aligned(np.array([[x + 0.5, y + 0.5]]))[0]
    assert np.linalg.norm(found - expected) < 1.0


def test_similarity_recovers_known_transform_and_never_mirrors() -> None:
    src = np.random.default_rng(0).normal(size=(5, 2)) * 30
    m_true = np.array([[0.8 * np.cos(0.3), -0.8 * np.sin(0.3), 5.0], [0.8 * np.sin(0.3), 0.8 * np.cos(0.3), -7.0]])
    dst = src @ m_true[:, :2].T + m_true[:, 2]
    assert np.allclose(similarity(src, dst), m_true, atol=1e-9)
    mirrored = dst * (-1, 1)
    assert np.linalg.det(similarity(src, mirrored)[:, :2]) > 0


def test_eye_boxes_geometry() -> None:
    boxes = eye_boxes(128)
    eyes = template_points(128)[:2]
    iod = np.linalg.norm(eyes[1] - eyes[0])
    assert np.allclose((boxes[:, :2] + boxes[:, 2:]) / 2, eyes)
    assert np.allclose(boxes[:, 2] - boxes[:, 0], 0.6 * iod) and np.allclose(boxes[:, 3] - boxes[:, 1], 0.4 * iod)
    assert boxes[0, 2] < boxes[1, 0]  # the two boxes never touch
    moved = eye_boxes(128, jitter=np.array([[0.1, 0.0, 0.0, 0.0], [0.0, 0.0, 0.2, 0.0]]))
    assert np.isclose(moved[0, 0] - boxes[0, 0], 0.1 * iod)
    assert np.isclose((moved[1, 2] - moved[1, 0]) - (boxes[1, 2] - boxes[1, 0]), 0.2 * iod)


def test_masks_and_feather() -> None:
    boxes = np.array([[10.0, 10.0, 20.0, 14.0]])
    m = box_mask(32, boxes)
    assert m.sum() == 40 and m[10, 10] == 1 and m[14, 10] == 0 and m[10, 20] == 0
    f = feather(m, 3)
    assert np.all(f[m > 0] == 1) and 0 < f[10, 21] < 1 and f[10, 25] == 0


# ----- paste back -------------------------------------------------------------------------

@pytest.mark.parametrize("blend", ["seamless", "feather"])
@pytest.mark.parametrize("where", ["middle", "corner"])
def test_paste_back_touches_only_the_region(blend: str, where: str) -> None:
    photo = textured(240, 320)
    face = face_at(160, 120, 40) if where == "middle" else face_at(12, 8, 40, 20)
    a = align(face.landmarks, SIZE)
    edited = np.zeros((SIZE, SIZE, 3), np.uint8)
    region = feather(box_mask(SIZE, eye_boxes(SIZE)), 2)
    out = paste_back(photo, edited, a, region, blend=blend)
    support = cv2.warpAffine((region > 0).astype(np.uint8), a.inverse, (320, 240), flags=cv2.INTER_LINEAR)
    allowed = cv2.dilate(support, np.ones((3, 3), np.uint8)) > 0
    changed = (out != photo).any(-1)
    assert changed.any()
    assert not (changed & ~allowed).any()


def test_paste_back_face_outside_photo_is_a_no_op() -> None:
    photo = textured(50, 60)
    a = align(face_at(500, 500, 40).landmarks, SIZE)
    out = paste_back(photo, np.zeros((SIZE, SIZE, 3), np.uint8), a, feather(box_mask(SIZE, eye_boxes(SIZE)), 2))
    assert np.array_equal(out, photo)


# ----- the pipeline -----------------------------------------------------------------------

def make_opener(faces: list[Face], probs: list[tuple[float, float]], **cfg) -> EyeOpener:
    return EyeOpener(FakeDetector(faces), FakeClassifier(probs), FakeInpainter(), EyeConfig(**cfg))


def test_no_face_leaves_photo_unchanged() -> None:
    photo = textured(100, 120)
    out, report = make_opener([], []).process(photo)
    assert np.array_equal(out, photo) and report == {"faces": 0, "closed_eyes": 0, "fixed": 0, "details": []}


def test_open_eyes_untouched_closed_fixed_outside_identical() -> None:
    photo = textured(300, 400)
    faces = [face_at(100, 150, 40), face_at(300, 140, 44, 10)]
    opener = make_opener(faces, [(0.9, 0.95), (0.1, 0.7)], blend="feather")
    out, report = opener.process(photo)
    assert report["faces"] == 2 and report["closed_eyes"] == 1 and report["fixed"] == 1
    assert [d["fixed"] for d in report["details"]] == [False, True]
    changed = (out != photo).any(-1)
    assert not (changed & photo_region(opener, faces[0], photo.shape[:2])).any()  # open face untouched
    allowed = photo_region(opener, faces[1], photo.shape[:2])
    assert changed[allowed].any() and not (changed & ~allowed).any()


def test_all_forces_every_face() -> None:
    photo = textured(200, 300)
    faces = [face_at(80, 100, 36), face_at(220, 100, 36)]
    out, report = make_opener(faces, [(0.9, 0.9), (0.8, 0.99)], all_faces=True).process(photo)
    assert report["fixed"] == 2 and report["closed_eyes"] == 0
    for f in faces:
        a = align(f.landmarks, SIZE)
        x, y = np.round(a.to_photo(eye_boxes(SIZE)[:, :2].reshape(-1, 2) + 4)[0]).astype(int)
        assert not np.array_equal(out[y, x], photo[y, x])


def test_threshold_decides_closed() -> None:
    photo = textured(120, 160)
    faces = [face_at(80, 60, 30)]
    assert make_opener(faces, [(0.4, 0.45)], threshold=0.3).process(photo)[1]["fixed"] == 0
    assert make_opener(faces, [(0.4, 0.45)], threshold=0.5).process(photo)[1]["fixed"] == 1


def test_reference_matched_by_position() -> None:
    refs = [Reference(np.full((SIZE, SIZE, 3), 10, np.uint8), (0.25, 0.5)),
            Reference(np.full((SIZE, SIZE, 3), 200, np.uint8), (0.75, 0.5))]
    right = face_at(300, 100, 40)
    assert match_reference(right, (200, 400, 3), refs)[0, 0, 0] == 200
    assert match_reference(right, (200, 400, 3), []) is None
    opener = make_opener([right], [(0.1, 0.1)], blend="feather")
    opener.process(textured(200, 400), refs)
    assert opener.inpainter.exemplars[0][0, 0, 0] == 200


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_folder_copies_untouched_photos_and_reports(tmp_path: Path) -> None:
    src = tmp_path / "in"
    (src / "burst").mkdir(parents=True)
    Image.fromarray(textured(200, 300, 1)).save(src / "burst" / "a.jpg", quality=90)
    Image.fromarray(textured(200, 300, 2)).save(src / "b.png")
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    opener = make_opener([face_at(150, 100, 40)], [(0.9, 0.9)])
    report, photos = opener.open_folder(src, tmp_path / "out")
    assert sorted(p.name for p in report.converted) == ["a.jpg", "b.png"]
    assert [p.name for p, _ in report.failed] == ["broken.jpg"]
    assert sha(tmp_path / "out" / "burst" / "a.jpg") == sha(src / "burst" / "a.jpg")  # nothing to fix: same bytes
    assert all(p["faces"] == 1 and p["fixed"] == 0 for p in photos.values())
    fixing = make_opener([face_at(150, 100, 40)], [(0.1, 0.9)], blend="feather")
    report, photos = fixing.open_folder(src, tmp_path / "out2", fmt="png")
    fixed = np.asarray(Image.open(tmp_path / "out2" / "b.png"))
    original = textured(200, 300, 2)
    changed = (fixed != original).any(-1)
    allowed = photo_region(fixing, face_at(150, 100, 40), (200, 300))
    assert changed.any() and not (changed & ~allowed).any()  # PNG: bit-identical outside the masks


def test_models_take_the_same_device_names_as_the_cli() -> None:
    import torch

    from imgtrans.errors import UserError
    from imgtrans.faces.inpaint import Inpainter
    from imgtrans.nn import ResnetGenerator

    net = ResnetGenerator(in_channels=8, ngf=8, n_blocks=1)
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert Inpainter(net, {}, device="auto").device.type == expected  # "auto" once was a traceback
    assert Inpainter(net, {}, device="cpu").device == torch.device("cpu")
    with pytest.raises(UserError, match="not a device"):
        Inpainter(net, {}, device="gpu0")


def test_unusable_reference_is_refused_before_any_photo(tmp_path: Path) -> None:
    from imgtrans.errors import UserError

    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(textured(200, 300, 1)).save(src / "a.png")
    (tmp_path / "refs").mkdir()
    (tmp_path / "bad.jpg").write_bytes(b"")
    opener = make_opener([face_at(150, 100, 40)], [(0.1, 0.1)])
    with pytest.raises(UserError, match="no photos in this --reference folder"):
        opener.open_folder(src, tmp_path / "out", reference=tmp_path / "refs")
    with pytest.raises(UserError) as err:
        opener.open_folder(src, tmp_path / "out", reference=tmp_path / "bad.jpg")
    assert str(err.value).startswith(f"{tmp_path / 'bad.jpg'}: empty file") and "--reference" in str(err.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
