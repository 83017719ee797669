"""Eye-state classifier: crops, network, dataset labels, a short training run, loading."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import data_root
from imgtrans.errors import UserError
from imgtrans.faces.eyes import apply, eye_boxes, template_points
from imgtrans.faces.eyestate import (
    CROP_HW,
    CROP_SPEC,
    EyeStateArch,
    EyeStateNet,
    eye_crops,
    load_eyestate,
)
from imgtrans.objectives import eyestate as es
from imgtrans.train.launch import RunRequest, run

OPEN, CLOSED, UNSURE = 0.3, 0.05, 0.18  # openness scores: open, closed, between the thresholds
DRAW = 96  # synthetic faces are drawn in template coordinates at this size


def draw_face(eyes_open: tuple[bool, bool], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A cartoon face (skin ellipse, two eyes at the template points), randomly placed in 112 px.

    Returns the image and its 5 landmarks. Open eye: white ellipse with a dark iris; closed eye:
    a thin dark line.
    """
    img = np.full((DRAW, DRAW, 3), rng.integers(40, 200, 3), np.uint8)
    pts = template_points(DRAW)
    skin = tuple(int(v) for v in rng.integers([150, 100, 70], [240, 180, 140]))
    cv2.ellipse(img, (48, 56), (36, 46), 0, 0, 360, skin, -1, cv2.LINE_AA)
    iod = float(np.linalg.norm(pts[1] - pts[0]))
    ax = (int(round(0.22 * iod)), int(round(0.11 * iod)))
    for (x, y), is_open in zip(pts[:2], eyes_open):
        c = (int(round(x)), int(round(y)))
        if is_open:
            cv2.ellipse(img, c, ax, 0, 0, 360, (250, 250, 250), -1, cv2.LINE_AA)
            cv2.circle(img, c, ax[1], tuple(int(v) for v in rng.integers(10, 90, 3)), -1, cv2.LINE_AA)
        else:
            cv2.line(img, (c[0] - ax[0], c[1]), (c[0] + ax[0], c[1]), (40, 30, 30), 1, cv2.LINE_AA)
    # A random similarity places the face in the photo, so alignment has work to do.
    m = cv2.getRotationMatrix2D((DRAW / 2, DRAW / 2), rng.uniform(-12, 12), rng.uniform(0.9, 1.1))
    m[:, 2] += rng.uniform(2, 14, 2)
    photo = cv2.warpAffine(img, m, (112, 112), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    photo = np.clip(photo + rng.normal(0, 4, photo.shape), 0, 255).astype(np.uint8)
    return photo, apply(m, pts).astype(np.float32)


def write_faces(root: Path, n: int, seed: int = 0) -> dict[str, np.ndarray | None]:
    """Synthetic faces root: utkface/ with index.csv, closed_eyes/ with both eyes shut.

    Returns landmarks by file name (None for an image with no face).
    """
    rng = np.random.default_rng(seed)
    table: dict[str, np.ndarray | None] = {}
    (root / "utkface").mkdir(parents=True)
    with (root / "utkface" / "index.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "open_score", "open_left", "open_right"])
        for i in range(n):
            state = (bool(rng.random() < 0.5), bool(rng.random() < 0.5))
            photo, lm = draw_face(state, rng)
            name = f"face_{i:03d}.png"
            cv2.imwrite(str(root / "utkface" / name), photo[:, :, ::-1])
            table[name] = lm
            scores = [OPEN if s else CLOSED for s in state]
            w.writerow([name, np.mean(scores), *scores])
        cv2.imwrite(str(root / "utkface" / "noface.png"), np.zeros((64, 64, 3), np.uint8))
        table["noface.png"] = None
        w.writerow(["noface.png", OPEN, OPEN, OPEN])
    (root / "closed_eyes").mkdir()
    for i in range(4):
        photo, lm = draw_face((False, False), rng)
        cv2.imwrite(str(root / "closed_eyes" / f"shut_{i}.jpg"), photo[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        table[f"shut_{i}.jpg"] = lm
    cv2.imwrite(str(root / "closed_eyes" / "blank.jpg"), np.full((64, 64, 3), 128, np.uint8))
    table["blank.jpg"] = None
    return table


@pytest.fixture
def fake_landmarks(monkeypatch: pytest.MonkeyPatch) -> dict[str, np.ndarray | None]:
    """Landmarks by file name instead of MTCNN; tests fill the table."""
    table: dict[str, np.ndarray | None] = {}
    monkeypatch.setattr("imgtrans.data.faces.detect_landmarks",
                        lambda files, who="": {f: table.get(f.name) for f in files})
    return table


def test_eye_crops_geometry_mirrors_the_right_eye() -> None:
    size = 128
    xx = np.broadcast_to(np.arange(size, dtype=np.float64)[None, :], (size, size))
    ramp = np.stack([xx * 2, np.zeros_like(xx), np.zeros_like(xx)], -1).astype(np.uint8)  # red grows to the right
    crops = eye_crops(ramp)
    assert crops.shape == (2, *CROP_HW, 3) and crops.dtype == np.uint8
    left, right = crops[:, :, :, 0].astype(int)
    assert (np.diff(left[16]) >= 0).all() and left[16, -1] > left[16, 0]
    assert (np.diff(right[16]) <= 0).all() and right[16, 0] > right[16, -1]  # mirrored
    boxes = eye_boxes(size, CROP_SPEC)
    centres = (boxes[:, 0] + boxes[:, 2]) / 2
    assert abs(left.mean() / 2 - centres[0]) < 1.0 and abs(right.mean() / 2 - centres[1]) < 1.0
    assert eye_crops(ramp[:64, :64]).shape == (2, *CROP_HW, 3)  # any aligned size


def test_net_output_shape() -> None:
    net = EyeStateNet(EyeStateArch(width=8))
    assert net(torch.zeros(5, 3, *CROP_HW)).shape == (5,)


def test_weak_labels_and_masked_loss() -> None:
    labels, known = es.weak_labels(np.array([0.3, 0.05, 0.18, 0.25, 0.12]), 0.25, 0.12)
    assert labels.tolist() == [1, 0, 0, 1, 0] and known.tolist() == [True, True, False, True, True]
    obj = es.EyeState(es.EyeStateConfig(width=8, pos_weight=1.0))
    crops = torch.rand(3, 2, 3, *CROP_HW) * 2 - 1
    known_t = torch.tensor([[True, False], [False, True], [True, False]])
    base = {"crops": crops, "labels": torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]), "known": known_t}
    flipped = {**base, "labels": torch.where(known_t, base["labels"], 1 - base["labels"])}
    obj._nets["C"].eval()  # batch statistics would not change, but keep it obviously deterministic
    a, terms = obj.loss("C", base)
    b, _ = obj.loss("C", flipped)
    assert torch.equal(a, b) and set(terms) == {"bce", "acc"}  # ignored eyes do not count
    only = obj.loss("C", {**base, "known": torch.zeros_like(known_t)})[0]
    assert only.item() == 0.0


def test_dataset_flip_swaps_labels(tmp_path: Path, fake_landmarks: dict) -> None:
    rng = np.random.default_rng(3)
    photo, lm = draw_face((True, False), rng)  # image-left open, image-right closed
    labels, known = es.weak_labels(np.array([OPEN, CLOSED]), 0.25, 0.12)
    rec = es.FaceRecord(tmp_path / "f.png", lm.astype(np.float64), labels, known)
    cv2.imwrite(str(rec.path), photo[:, :, ::-1])
    data = es.EyeFaces([rec], size=96, seed=0)
    seen = set()
    for k in range(16):
        item = data[k]
        assert item["crops"].shape == (2, 3, *CROP_HW) and item["crops"].dtype == torch.float32
        assert -1 <= item["crops"].min() and item["crops"].max() <= 1 and item["known"].all()
        labels = tuple(item["labels"].tolist())
        seen.add(labels)
        # The open eye (white sclera) is the crop labelled open, whichever side it ended up on.
        brightest = item["crops"].mean(1).flatten(1).max(1).values
        assert brightest[labels.index(1.0)] > brightest[labels.index(0.0)] + 0.1
    assert seen == {(1.0, 0.0), (0.0, 1.0)}
    assert torch.equal(data[5]["crops"], data[5]["crops"])  # a pure function of k


def test_closed_faces_are_oversampled(tmp_path: Path) -> None:
    from imgtrans.data.stream import sample_seed

    def rec(i: int, left: float, right: float) -> es.FaceRecord:
        labels, known = es.weak_labels(np.array([left, right]), 0.25, 0.12)
        return es.FaceRecord(tmp_path / f"{i}.png", template_points(96), labels, known)

    records = [rec(i, OPEN, OPEN) for i in range(10)] + [rec(10, CLOSED, OPEN), rec(11, CLOSED, CLOSED)]
    data = es.EyeFaces(records, size=64, seed=0, closed_share=0.5)
    picks = [data._index(k, np.random.default_rng(sample_seed(0, k))) for k in range(600)]
    share = np.mean([i >= 10 for i in picks])
    assert 0.5 < share < 0.68  # 0.5 drawn from the closed-eye faces + 0.5 * 2/12 uniformly
    n_open, n_closed = data.eyes_per_sample()
    assert n_closed == pytest.approx(0.5 * 1.5 + 0.5 * 3 / 12) and n_open == pytest.approx(0.5 * 0.5 + 0.5 * 21 / 12)
    assert es.EyeFaces(records[:10], size=64, closed_share=0.5).closed_share == 0.0  # nothing to oversample


def test_build_splits_index_and_dropped(tmp_path: Path, fake_landmarks: dict) -> None:
    root = tmp_path / "faces"
    fake_landmarks.update(write_faces(root, 6))
    (root / "subset.csv").write_text("file,open_left,open_right\nutkface/face_000.png,0.3,0.18\n"
                                     "utkface/noface.png,0.3,0.3\nutkface/gone.png,0.3,0.3\n")
    s = es.build_splits(es.EyeStateConfig(faces=str(root), index="subset.csv", val_fraction=0.0))
    assert (len(s.train), len(s.val), s.no_face, s.missing) == (1, 0, 1, 1)
    assert s.train[0].known.tolist() == [True, False]
    full = es.build_splits(es.EyeStateConfig(faces=str(root), val_fraction=0.5))
    assert len(full.train) + len(full.val) == 6 and full.no_face == 1
    with pytest.raises(UserError, match="file,open_left,open_right|'file' column"):
        (root / "bad.csv").write_text("path,score\n")
        es.build_splits(es.EyeStateConfig(faces=str(root), index=str(root / "bad.csv")))


def test_train_evaluate_export_and_load(tmp_path: Path, fake_landmarks: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "faces"
    fake_landmarks.update(write_faces(root, 40))
    values = {
        "model.faces": str(root), "model.size": 64, "model.width": 8, "model.lr": 3e-3, "model.val_fraction": 0.25,
        "train.steps": 60, "train.batch_size": 8, "train.workers": 0, "train.log_every": 10,
        "train.sample_every": 30, "train.checkpoint_every": 0, "train.sample_count": 2,
    }
    run_dir = run(RunRequest(objective="eyestate", values=values, out=str(tmp_path / "runs"), quiet=True))
    assert run_dir is not None
    figures = json.loads((run_dir / "eval.json").read_text())
    assert figures["val_eyes"] >= 10, figures
    assert figures["val_accuracy"] > 0.9, figures
    assert figures["closed_eyes_photos"] == 5 and figures["closed_eyes_no_face"] == 1
    assert figures["closed_eyes_closed_recall"] >= 0.75, figures
    assert figures["closed_eyes_utk"].startswith("skipped")
    assert (run_dir / "samples" / "step-00000060.png").is_file()
    export = run_dir / "export" / "eyestate.safetensors"
    meta = json.loads((run_dir / "export" / "eyestate.json").read_text())
    assert meta["objective"] == "eyestate" and meta["crop_hw"] == list(CROP_HW) and meta["size"] == 64

    # Same predictions from the run folder, the export file and a manifest name.
    from imgtrans.faces.eyes import align
    from imgtrans.weights import sha256_file

    names = [f"face_{i:03d}.png" for i in range(6)]
    faces = [align(fake_landmarks[n], 64).warp(cv2.imread(str(root / "utkface" / n))[:, :, ::-1]) for n in names]
    p_dir = load_eyestate(run_dir).predict(faces)
    p_file = load_eyestate(str(export)).predict(np.stack(faces))
    assert p_dir.shape == (6, 2) and p_dir.dtype == np.float32 and np.array_equal(p_dir, p_file)
    shipped = tmp_path / "weights"
    shipped.mkdir()
    shutil.copy(export, shipped / "eyes-test.safetensors")
    entry = {"name": "eyes-test", "task": "eyestate", "file": "eyes-test.safetensors",
             "sha256": sha256_file(export)}
    (shipped / "manifest.json").write_text(json.dumps({"models": [entry]}))
    monkeypatch.setenv("IMGTRANS_WEIGHTS", str(shipped))
    monkeypatch.setenv("IMGTRANS_HOME", str(tmp_path / "home"))
    assert np.array_equal(load_eyestate("eyes-test").predict(faces), p_dir)
    (shipped / "manifest.json").write_text(json.dumps({"models": [{**entry, "sha256": "0" * 64}]}))
    with pytest.raises(UserError, match="does not match the manifest"):
        load_eyestate("eyes-test")


def test_load_eyestate_errors(tmp_path: Path) -> None:
    from imgtrans.train.checkpoint import save_export

    other = save_export(tmp_path, "gen", {"w": torch.zeros(1)}, {"objective": "cyclegan"})
    with pytest.raises(UserError, match="not eyestate weights"):
        load_eyestate(other)
    with pytest.raises(UserError, match="no export/eyestate.safetensors"):
        load_eyestate(tmp_path)
    with pytest.raises(UserError, match="file not found"):
        load_eyestate(str(tmp_path / "missing.safetensors"))


@pytest.mark.data
def test_real_lfw_subset_dataset(tmp_path: Path) -> None:
    """16 real LFW photos through the real landmark detector (slow the first time: MTCNN)."""
    faces = data_root() / "faces"
    with (faces / "lfw_pairs" / "index.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))[:16]
    index = tmp_path / "lfw16.csv"
    index.write_text("file,open_left,open_right\n" + "".join(
        f"lfw_pairs/{r['file']},{r['open_left']},{r['open_right']}\n" for r in rows))
    obj = es.EyeState(es.EyeStateConfig(faces=str(faces), index=str(index), val_fraction=0.0), seed=0)
    data = obj.dataset()
    sizes = data.sizes()
    assert sizes["train_faces"] + sizes["no_face"] == 16 and sizes["train_faces"] >= 12, sizes
    for k in range(4):
        item = data[k]
        assert item["crops"].shape == (2, 3, *CROP_HW) and item["labels"].shape == (2,)
        assert item["known"].dtype == torch.bool
    rec = data.records[0]
    expected = {r["file"]: (float(r["open_left"]), float(r["open_right"])) for r in rows}
    labels, known = es.weak_labels(np.array(expected[str(rec.path.relative_to(faces / "lfw_pairs"))]), 0.25, 0.12)
    assert np.array_equal(rec.labels, labels) and np.array_equal(rec.known, known)
