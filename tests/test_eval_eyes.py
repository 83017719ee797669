"""Eye in-painting evaluation: metric helpers, baseline fills, and the report end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import data_root
from imgtrans.data.faces import held_out
from imgtrans.eval.eyes import (BASELINES, NO_FACE_ERROR, PSNR_CAP, REAL, UPSAMPLE, evaluate_eyes, eye_ssim,
                                flat_fill, format_eyes_table, masked_l1, masked_psnr, telea_fill)
from imgtrans.faces.detect import Face
from imgtrans.faces.eyes import box_mask, eye_boxes, template_points
from imgtrans.faces.landmarks import PAD
from imgtrans.train.launch import RunRequest, run

SIZE = 64
PHOTO = 96
TINY = {"model.ngf": 8, "model.n_blocks": 1, "model.ndf": 8, "model.local_ndf": 8, "model.n_layers_d": 2,
        "model.size": SIZE, "train.steps": 2, "train.workers": 0, "train.batch_size": 2, "train.log_every": 2,
        "train.sample_every": 0, "train.checkpoint_every": 0, "train.sample_count": 2}


def noisy_face(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


# ----- metric helpers and fills ------------------------------------------------------------
def test_identical_faces_score_perfect() -> None:
    face, boxes = noisy_face(), eye_boxes(SIZE)
    mask = box_mask(SIZE, boxes)
    assert eye_ssim(face, face, boxes) == pytest.approx(1.0)
    assert masked_l1(face, face, mask) == 0.0 and masked_l1(face, face) == 0.0
    assert masked_psnr(face, face, mask) == PSNR_CAP  # capped, not inf: the result must be JSON


def test_known_difference_gives_known_l1_and_psnr() -> None:
    real = np.clip(noisy_face(), 10, 245).astype(np.uint8)
    mask = box_mask(SIZE, eye_boxes(SIZE))
    signs = np.where(np.random.default_rng(1).random(real.shape) < 0.5, -10, 10)
    result = (real.astype(np.int16) + signs).astype(np.uint8)  # every pixel off by exactly 10 levels
    assert masked_l1(result, real, mask) == pytest.approx(10.0)
    assert masked_psnr(result, real, mask) == pytest.approx(10 * np.log10(255**2 / 100), abs=1e-6)
    assert eye_ssim(result, real, eye_boxes(SIZE)) < 1.0


def test_flat_fill_is_mean_colour_outside_the_mask() -> None:
    face, mask = noisy_face(), box_mask(SIZE, eye_boxes(SIZE))
    out = flat_fill(face, mask)
    inside = mask > 0.5
    expected = np.round(face[~inside].astype(np.float64).mean(0))
    assert (out[inside] == expected).all()
    assert np.array_equal(out[~inside], face[~inside])


def test_telea_changes_only_mask_pixels() -> None:
    face, mask = noisy_face(), box_mask(SIZE, eye_boxes(SIZE))
    out = telea_fill(face, mask)
    changed = (out != face).any(-1)
    assert changed.any() and not (changed & (mask < 0.5)).any()


# ----- end to end ---------------------------------------------------------------------------
class FakeDetector:
    """Finds the template face in a 2x upsampled, grey-framed aligned face, unless the left eye box is flat."""

    def detect(self, rgb: np.ndarray) -> list[Face]:
        inner = int(round(rgb.shape[0] / (1 + 2 * PAD)))  # the upsampled face inside the frame
        size, shift = inner // UPSAMPLE, int(round(inner * PAD))
        x1, y1, x2, y2 = (eye_boxes(size)[0] * UPSAMPLE).astype(int) + shift
        if rgb[y1 + 5:y2 - 5, x1 + 5:x2 - 5].reshape(-1, 3).std(0).max() < 1.0:  # per channel
            return []
        pts = (template_points(size) + 0.5) * UPSAMPLE - 0.5 + shift
        return [Face(box=[0, 0, rgb.shape[1], rgb.shape[0]], landmarks=pts, score=1.0)]


def draw_face(lm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A skin ellipse on a noisy background with white eyes and dark irises at the landmarks."""
    img = rng.integers(60, 120, (PHOTO, PHOTO, 3)).astype(np.uint8)
    iod = float(np.linalg.norm(lm[1] - lm[0]))
    centre = tuple(int(round(v)) for v in lm.mean(0))
    cv2.ellipse(img, centre, (int(iod * 1.1), int(iod * 1.5)), 0, 0, 360, (215, 170, 140), -1)
    for eye in lm[:2]:
        c = tuple(int(round(v)) for v in eye)
        cv2.ellipse(img, c, (int(iod * 0.22), int(iod * 0.11)), 0, 0, 360, (245, 245, 245), -1)
        cv2.circle(img, c, max(2, int(iod * 0.09)), (40, 30, 20), -1)
    return img


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[Path, np.ndarray]]:
    """faces/lfw_pairs with 3 training identities and 3 held-out ones (two with a second photo)."""
    root = tmp_path_factory.mktemp("faces")
    train = [n for n in (f"id{i}" for i in range(20)) if not held_out(n)][:3]
    held = [n for n in (f"id{i}" for i in range(100)) if held_out(n)][:3]
    plan = [(n, 2) for n in train] + [(held[0], 2), (held[1], 2), (held[2], 1)]
    rng = np.random.default_rng(0)
    rows, landmarks = [], {}
    for identity, count in plan:
        (root / "lfw_pairs" / identity).mkdir(parents=True)
        for i in range(count):
            rel = f"{identity}/{i}.jpg"
            lm = template_points(60) + 18 + rng.uniform(-3, 3, 2)
            cv2.imwrite(str(root / "lfw_pairs" / rel), cv2.cvtColor(draw_face(lm, rng), cv2.COLOR_RGB2BGR))
            rows.append({"file": rel, "identity": identity, "open_score": "0.3", "open_left": "0.3",
                         "open_right": "0.3"})
            landmarks[root / "lfw_pairs" / rel] = lm.astype(np.float32)
    with open(root / "lfw_pairs" / "index.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root, landmarks


def test_evaluate_eyes_end_to_end(tree: tuple[Path, dict[Path, np.ndarray]], tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    root, landmarks = tree
    monkeypatch.setattr("imgtrans.data.faces.detect_landmarks",
                        lambda files: {f: landmarks.get(Path(f)) for f in files})
    run_dir = run(RunRequest(objective="eyes", values={**TINY, "model.faces": str(root)},
                             out=str(tmp_path / "runs"), quiet=True))
    assert run_dir is not None
    stages: list[str] = []
    result = evaluate_eyes(run_dir, root, sheet=tmp_path / "sheet.png", detector=FakeDetector(),
                           progress=stages.append)
    json.dumps(result, allow_nan=False)  # JSON-ready: no inf or NaN anywhere
    assert result["data"]["evaluated"] == 3 and result["model"]["size"] == SIZE
    assert result["exemplars"]["same_identity"] == 2 and result["exemplars"]["other_identity"] == 1
    systems = result["systems"]
    assert list(systems) == ["model", *BASELINES, REAL]
    assert systems[REAL]["landmark_error"] == pytest.approx(0.0, abs=1e-5) and systems[REAL]["no_face"] == 0
    # The flat fill leaves nothing to find: every face is missed and charged NO_FACE_ERROR.
    assert systems["flat"]["no_face"] == 3 and systems["flat"]["landmark_error"] == pytest.approx(NO_FACE_ERROR)
    for name in ("model", "telea", "exemplar_paste"):
        f = systems[name]
        assert 0 <= f["l1_face"] <= f["l1_mask"] and -1 <= f["ssim_eyes"] <= 1 and f["psnr_mask"] < PSNR_CAP
    table = format_eyes_table(result)
    assert all(f"\n{name} " in table for name in systems)
    assert (tmp_path / "sheet.png").is_file() and result["sheet"] == str(tmp_path / "sheet.png")
    assert stages


def test_baselines_only_without_a_model(tree: tuple[Path, dict[Path, np.ndarray]],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    root, landmarks = tree
    monkeypatch.setattr("imgtrans.data.faces.detect_landmarks",
                        lambda files: {f: landmarks.get(Path(f)) for f in files})
    result = evaluate_eyes(None, root, max_faces=2, detector=FakeDetector())
    assert list(result["systems"]) == [*BASELINES, REAL]
    assert result["model"]["size"] == 128 and result["data"]["evaluated"] == 2


@pytest.mark.data
def test_real_lfw_faces_rank_real_eyes_above_flat_fill(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    """Through the CLI: `imgtrans eval eyes --faces ... --json` on 6 held-out LFW faces, baselines only."""
    from imgtrans.cli import run_cli

    monkeypatch.setenv("IMGTRANS_HOME", str(tmp_path / "home"))  # landmark cache of this test only
    code = run_cli(["eval", "eyes", "--faces", str(data_root() / "faces"), "--max-faces", "6",
                    "--json", str(tmp_path / "r.json"), "--sheet", str(tmp_path / "s.png")])
    out = capsys.readouterr().out
    assert code == 0 and "telea" in out and "flat" in out
    result = json.loads((tmp_path / "r.json").read_text())
    systems = result["systems"]
    assert result["data"]["evaluated"] >= 5
    assert systems[REAL]["landmark_error"] < 0.15  # about 0.03 measured on 30 faces
    assert systems["flat"]["landmark_error"] > systems[REAL]["landmark_error"]
    assert (tmp_path / "s.png").stat().st_size > 0
