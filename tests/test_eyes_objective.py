"""Eye in-painting GAN: face data, input/composite seams, training, exact resume, the Inpainter."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from conftest import data_root
from imgtrans.data.faces import InpaintFaces, SampleSpec, mirror_boxes, read_records, held_out
from imgtrans.errors import UserError
from imgtrans.faces.eyes import EyeBoxSpec, box_mask, eye_boxes, template_points
from imgtrans.faces.inpaint import Inpainter, load_inpainter
from imgtrans.objectives.eyes import EyeInpainting, EyesConfig, composite, compose_input, eye_crops
from imgtrans.train.checkpoint import latest_checkpoint, load_checkpoint, load_export, save_export
from imgtrans.train.launch import RunRequest, run
from imgtrans.weights import sha256_file

PHOTO = 96  # synthetic photo side; faces inside it are rotated, scaled and shifted
SIZE = 64  # aligned size used throughout (small keeps the file fast)
TINY = {"model.ngf": 8, "model.n_blocks": 1, "model.ndf": 8, "model.local_ndf": 8, "model.n_layers_d": 2,
        "model.size": SIZE, "train.workers": 0, "train.batch_size": 2, "train.log_every": 2,
        "train.sample_every": 0, "train.checkpoint_every": 0, "train.sample_count": 2}


# ----- synthetic faces ---------------------------------------------------------------------
def names(split_val: bool, n: int) -> list[str]:
    """The first `n` made-up identities on the requested side of the validation split."""
    found = [f"person_{i:03d}" for i in range(1000) if held_out(f"person_{i:03d}") == split_val]
    return found[:n]


def fake_landmarks(rng: np.random.Generator) -> np.ndarray:
    """The template's 5 points for a ~60 px face, rotated, scaled and shifted inside the photo."""
    pts = template_points(60) - 30.0
    angle, scale = np.deg2rad(rng.uniform(-12, 12)), rng.uniform(0.9, 1.1)
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return (pts @ rot.T + PHOTO / 2 + rng.uniform(-5, 5, 2)).astype(np.float32)


def draw_face(lm: np.ndarray, rng: np.random.Generator, iris: tuple[int, int, int]) -> np.ndarray:
    """A skin ellipse on a noisy background, white eyes with dark irises at the eye landmarks."""
    img = rng.integers(60, 120, (PHOTO, PHOTO, 3)).astype(np.uint8)
    iod = float(np.linalg.norm(lm[1] - lm[0]))
    angle = float(np.degrees(np.arctan2(lm[1, 1] - lm[0, 1], lm[1, 0] - lm[0, 0])))
    centre = tuple(int(round(v)) for v in lm.mean(0))
    cv2.ellipse(img, centre, (int(iod * 1.1), int(iod * 1.5)), angle, 0, 360, (215, 170, 140), -1)
    for eye in lm[:2]:
        c = tuple(int(round(v)) for v in eye)
        cv2.ellipse(img, c, (int(iod * 0.22), int(iod * 0.11)), angle, 0, 360, (245, 245, 245), -1)
        cv2.circle(img, c, max(2, int(iod * 0.09)), iris, -1)
    cv2.line(img, tuple(int(v) for v in lm[3]), tuple(int(v) for v in lm[4]), (120, 40, 40), 2)
    return img


@dataclasses.dataclass
class Faces:
    root: Path
    index: Path
    landmarks: dict[Path, np.ndarray | None]
    rows: list[dict[str, str]]


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> Faces:
    """Synthetic photos + index: two people with two usable photos each, two with one (one of
    them because no face is 'detected' in the other), a held-out person, a photo without
    identity, and a closed-eye photo that the open_above filter drops."""
    root = tmp_path_factory.mktemp("faces")
    (root / "synth").mkdir()
    train, val = names(False, 4), names(True, 1)
    # identity, photos, which photo has closed eyes, which has no detectable face
    plan = [(train[0], 3, 1, None), (train[1], 2, None, None), (train[2], 2, None, 1), (train[3], 1, None, None),
            (val[0], 2, None, None), ("", 1, None, None)]
    rng = np.random.default_rng(0)
    rows, landmarks = [], {}
    for identity, count, closed, undetected in plan:
        iris = tuple(int(v) for v in rng.integers(0, 90, 3))  # per person, like an eye colour
        for i in range(count):
            rel = f"synth/{identity or 'anon'}_{i}.png"
            lm = fake_landmarks(rng)
            cv2.imwrite(str(root / rel), cv2.cvtColor(draw_face(lm, rng, iris), cv2.COLOR_RGB2BGR))
            right = "0.1" if i == closed else "0.31"
            rows.append({"file": rel, "identity": identity, "open_left": "0.3", "open_right": right})
            landmarks[root / rel] = None if i == undetected else lm
    index = root / "index.csv"
    with open(index, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "identity", "open_left", "open_right"])
        w.writeheader()
        w.writerows(rows)
    return Faces(root, index, landmarks, rows)


def dataset(faces: Faces, **spec: Any) -> InpaintFaces:
    records = read_records(faces.root, faces.index)
    return InpaintFaces(records, SampleSpec(size=SIZE, **spec), seed=3, landmarks=faces.landmarks)


@pytest.fixture
def fake_detector(faces: Faces, monkeypatch: pytest.MonkeyPatch) -> None:
    """Training runs look up the synthetic landmarks instead of running MTCNN."""
    monkeypatch.setattr("imgtrans.data.faces.detect_landmarks",
                        lambda files: {f: faces.landmarks.get(Path(f)) for f in files})


# ----- input and composite -----------------------------------------------------------------
def test_compose_input_channels_and_values() -> None:
    face = torch.rand(2, 3, 8, 8) * 2 - 1
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:4, 3:6] = 1
    exemplar = torch.rand(2, 3, 8, 8) * 2 - 1
    x = compose_input(face, mask, exemplar, torch.tensor([[1.0], [0.0]]))
    assert x.shape == (2, 8, 8, 8)
    assert torch.equal(x[:, :3], face * (1 - mask)) and (x[:, :3][mask.expand(-1, 3, -1, -1) > 0] == 0).all()
    assert set(x[:, 3].unique().tolist()) == {-1.0, 1.0} and torch.equal(x[:, 3:4] > 0, mask > 0)
    assert torch.equal(x[0, 4:7], exemplar[0]) and (x[1, 4:7] == 0).all()
    assert (x[0, 7] == 1).all() and (x[1, 7] == -1).all()


def test_composite_keeps_pixels_outside_the_mask() -> None:
    face, generated = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    mask = torch.from_numpy(box_mask(16, eye_boxes(16)))[None, None].expand(2, 1, 16, 16)
    out = composite(face, generated, mask)
    outside, inside = (mask == 0).expand_as(face), (mask == 1).expand_as(face)
    assert torch.equal(out[outside], face[outside]) and torch.equal(out[inside], generated[inside])


def test_eye_crops_follow_the_boxes_in_batch_order() -> None:
    images = torch.zeros(2, 3, 32, 32)
    boxes = torch.tensor([[[2.0, 4.0, 14.0, 12.0], [18.0, 4.0, 30.0, 12.0]]] * 2)
    for i in range(2):
        for j, (x1, y1, x2, y2) in enumerate(boxes[i].int().tolist()):
            images[i, :, y1:y2, x1:x2] = 2 * i + j + 1
    crops = eye_crops(images, boxes, (8, 12))
    assert crops.shape == (4, 3, 8, 12)
    # Inner samples only: the outermost ones blend with the border pixels, as bilinear sampling does.
    assert [c[:, 1:-1, 1:-1].unique().tolist() for c in crops] == [[1.0], [2.0], [3.0], [4.0]]


# ----- data --------------------------------------------------------------------------------
def test_records_from_a_user_index(faces: Faces) -> None:
    records = read_records(faces.root, faces.index)
    assert len(records) == len(faces.rows) - 1  # the closed-eye row is left out
    assert records[0].file == faces.root / faces.rows[0]["file"] and records[0].open_left == pytest.approx(0.3)
    assert records[-1].identity is None
    assert len(read_records(faces.root, faces.index, open_above=0.0)) == len(faces.rows)


def test_records_from_the_prepared_layout(tmp_path: Path) -> None:
    (tmp_path / "lfw_pairs").mkdir()
    (tmp_path / "utkface").mkdir()
    (tmp_path / "lfw_pairs" / "index.csv").write_text(
        "file,identity,open_score,open_left,open_right\nA/A_1.jpg,A,0.3,0.3,0.3\nA/A_2.jpg,A,0.2,0.15,0.3\n")
    (tmp_path / "utkface" / "index.csv").write_text("file,open_score,open_left,open_right\nu1.jpg,0.3,0.25,0.3\n")
    records = read_records(tmp_path)
    assert [(r.file, r.identity) for r in records] == [(tmp_path / "lfw_pairs" / "A/A_1.jpg", "A"),
                                                      (tmp_path / "utkface" / "u1.jpg", None)]
    with pytest.raises(UserError, match="no lfw_pairs/index.csv or utkface/index.csv"):
        read_records(tmp_path / "lfw_pairs")
    bad = tmp_path / "bad.csv"
    bad.write_text("path,who\nx.jpg,A\n")
    with pytest.raises(UserError, match="needs a 'file' column"):
        read_records(tmp_path, bad)
    with pytest.raises(UserError, match="faces folder not found"):
        read_records(tmp_path / "nope")


def test_held_out_is_stable_and_disjoint_from_training(faces: Faces) -> None:
    people = [f"Someone_{i}" for i in range(2000)]
    split = [held_out(p) for p in people]
    assert split == [held_out(p) for p in people] and 0.08 < np.mean(split) < 0.12
    # Pinned: a changed hash would silently move LFW identities between train and validation.
    assert names(True, 3) == ["person_006", "person_010", "person_016"]
    assert held_out("Aaron_Peirsol", 1.0) and not held_out("Aaron_Peirsol", 0.0)
    ds = dataset(faces)
    trained = {r.identity for r in ds.records if r.identity}
    assert trained and not any(held_out(p) for p in trained)
    assert ds.held_out == 2 and ds.sizes() == {"faces": 7, "identities_with_exemplars": 2, "dropped": 1,
                                              "held_out": 2}


def test_items_have_the_documented_shapes_and_depend_only_on_k(faces: Faces) -> None:
    ds = dataset(faces)
    item = ds[5]
    assert item["face"].shape == (3, SIZE, SIZE) and item["exemplar"].shape == (3, SIZE, SIZE)
    assert item["mask"].shape == (1, SIZE, SIZE) and set(item["mask"].unique().tolist()) == {0.0, 1.0}
    assert item["has_exemplar"].shape == (1,) and item["boxes"].shape == (2, 4)
    assert item["face"].min() >= -1 and item["face"].max() <= 1
    again = dataset(faces)[5]  # a fresh dataset, as a resumed run or another worker builds it
    assert all(torch.equal(item[k], again[k]) for k in item)
    assert not torch.equal(ds[6]["mask"], item["mask"])
    # The synthetic irises land under the boxes: alignment and eye boxes agree.
    d = dataclasses.replace(ds.draw(0), flip=False)
    plain = ds.render(d)
    for x, y in template_points(SIZE)[:2]:
        assert plain["face"][:, int(y), int(x)].mean() < -0.2 and plain["mask"][0, int(y), int(x)] == 1


def test_jitter_stays_near_the_template_eyes(faces: Faces) -> None:
    ds = dataset(faces)
    eyes = template_points(SIZE)[:2]
    iod = float(np.linalg.norm(eyes[1] - eyes[0]))
    boxes = np.stack([ds[k]["boxes"].numpy() for k in range(40)])
    centres = (boxes[..., :2] + boxes[..., 2:]) / 2
    sizes = boxes[..., 2:] - boxes[..., :2]
    # 0.08 IOD of jitter, plus under 0.01 IOD because the template is not exactly symmetric (flips).
    assert np.abs(centres - eyes).max() <= 0.09 * iod
    assert np.abs(sizes - np.array([0.6, 0.4]) * iod).max() <= 0.15 * iod + 1e-4
    assert centres.std(0).min() > 0.02 * iod and sizes.std(0).min() > 0.03 * iod  # it does vary
    still = dataset(faces, center_jitter=0.0, size_jitter=0.0, flip=False)
    assert np.allclose(still[0]["boxes"].numpy(), eye_boxes(SIZE))


def test_flip_mirrors_face_boxes_and_exemplar_together(faces: Faces) -> None:
    ds = dataset(faces)
    flips = [ds.draw(k).flip for k in range(20)]
    assert any(flips) and not all(flips)
    k = next(k for k in range(20) if ds.draw(k).exemplar is not None)
    plain = ds.render(dataclasses.replace(ds.draw(k), flip=False))
    flipped = ds.render(dataclasses.replace(ds.draw(k), flip=True))
    for key in ("face", "exemplar", "mask"):
        assert torch.equal(flipped[key], plain[key].flip(-1)), key
    expected = mirror_boxes(plain["boxes"].numpy(), SIZE)
    assert np.allclose(flipped["boxes"].numpy(), expected, atol=1e-5)
    assert flipped["boxes"][0, 0] < flipped["boxes"][1, 0]  # still image-left eye first
    assert np.allclose(flipped["boxes"][0, 0], SIZE - plain["boxes"][1, 2], atol=1e-5)


def test_exemplars_come_from_the_same_person_or_are_absent(faces: Faces) -> None:
    ds = dataset(faces)
    seen = set()
    for k in range(3 * len(ds)):
        d, item = ds.draw(k), ds[k]
        record = ds.records[d.index]
        if d.exemplar is None:
            assert item["has_exemplar"].item() == 0 and (item["exemplar"] == 0).all()
            # Only people without a second usable photo (or without identity) go without.
            assert record.identity is None or sum(r.identity == record.identity for r in ds.records) == 1
            continue
        seen.add(record.identity)
        assert d.exemplar != d.index and ds.records[d.exemplar].identity == record.identity
        expected = torch.from_numpy(ds.aligned(d.exemplar)).permute(2, 0, 1).float() / 127.5 - 1
        assert item["has_exemplar"].item() == 1
        assert torch.allclose(item["exemplar"], expected.flip(-1) if d.flip else expected)
    assert len(seen) == 2


# ----- training ----------------------------------------------------------------------------
def request(faces: Faces, out: Path, **values: Any) -> RunRequest:
    merged = {**TINY, "model.faces": str(faces.root), "model.index": str(faces.index), **values}
    return RunRequest(objective="eyes", values=merged, out=str(out), quiet=True)


@pytest.fixture(scope="module")
def trained(faces: Faces, tmp_path_factory: pytest.TempPathFactory) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("imgtrans.data.faces.detect_landmarks",
                   lambda files: {f: faces.landmarks.get(Path(f)) for f in files})
        run_dir = run(request(faces, tmp_path_factory.mktemp("runs"), **{
            "train.steps": 4, "train.sample_every": 2, "train.checkpoint_every": 2}))
    assert run_dir is not None
    return run_dir


def test_run_writes_samples_checkpoints_and_export(trained: Path, faces: Faces) -> None:
    assert sorted(p.name for p in (trained / "samples").iterdir()) == ["step-00000002.png", "step-00000004.png"]
    assert [p.name for p in sorted((trained / "checkpoints").iterdir())] == ["step-00000002.pt", "step-00000004.pt"]
    stats = [json.loads(line) for line in (trained / "stats.jsonl").read_text().splitlines()]
    assert [s["step"] for s in stats] == [2, 4]
    assert all(f"loss/{k}" in stats[-1] for k in ("G_global", "G_local", "hole", "full", "D_global", "D_local"))
    state, meta = load_export(trained / "export" / "inpainter.safetensors")
    assert meta["objective"] == "eyes" and meta["network"] == "resnet_generator" and meta["template"] == "arcface5"
    assert meta["size"] == SIZE and meta["box_spec"] == dataclasses.asdict(EyeBoxSpec()) and meta["steps"] == 4
    assert meta["arch"] == {"in_channels": 8, "out_channels": 3, "ngf": 8, "n_blocks": 1, "norm": "instance",
                            "dropout": False, "residual": False, "upsample": "transpose",
                            "down_pad": "zero", "mask": False}
    ckpt = load_checkpoint(latest_checkpoint(trained))["nets"]
    assert set(ckpt) == {"G", "D_global", "D_local"}
    assert all(torch.equal(state[k], ckpt["G"][k]) for k in state)
    g = EyeInpainting.build_inference(meta)
    g.load_state_dict(state, strict=True)


def test_discriminators_use_spectral_norm_without_a_norm_layer() -> None:
    obj = EyeInpainting(EyesConfig(ngf=8, n_blocks=1, ndf=8, local_ndf=8, size=SIZE))
    d_local = obj.networks()["D_local"]
    assert d_local.arch.n_layers == 2 and d_local.arch.in_channels == 3 and d_local.arch.norm == "none"
    assert obj.networks()["D_global"].arch.in_channels == 6
    assert any("parametrizations" in k for k in d_local.state_dict())
    with pytest.raises(UserError, match="multiple of 4"):
        EyeInpainting(EyesConfig(size=66))


def final_nets(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    return load_checkpoint(latest_checkpoint(run_dir))["nets"]


def test_resume_matches_uninterrupted_run(faces: Faces, tmp_path: Path, fake_detector: None) -> None:
    cfg = {"train.steps": 4, "train.deterministic": True}
    straight = run(request(faces, tmp_path / "one", **cfg))
    first = run(dataclasses.replace(request(faces, tmp_path / "two", **cfg), until=2))
    assert [p.name for p in (first / "checkpoints").iterdir()] == ["step-00000002.pt"]
    resumed = run(RunRequest(objective="eyes", values={}, resume=str(first), quiet=True))
    assert resumed == first
    a, b = final_nets(straight), final_nets(resumed)
    assert a.keys() == b.keys()
    for net in a:
        for k in a[net]:
            diff = (a[net][k].float() - b[net][k].float()).abs().max().item()
            assert diff <= 1e-6, f"{net}.{k} differs by {diff}"
    s1, s2 = ((r / "stats.jsonl").read_text().splitlines() for r in (straight, resumed))
    assert [json.loads(x)["loss/hole"] for x in s1] == pytest.approx([json.loads(x)["loss/hole"] for x in s2])


def test_relativistic_gan_mode_trains_both_judges(faces: Faces, tmp_path: Path, fake_detector: None) -> None:
    """`gan_mode=ralsgan` reaches the in-painter too: its generator terms need both judges' logits
    on the real faces, and the run learns something else than the default hinge run."""
    cfg = {"train.steps": 2, "train.deterministic": True}
    hinge = run(request(faces, tmp_path / "hinge", **cfg))
    rel = run(request(faces, tmp_path / "rel", **cfg, **{"model.gan_mode": "ralsgan"}))
    stats = [json.loads(x) for x in (rel / "stats.jsonl").read_text().splitlines()]
    assert all(np.isfinite(s[k]) for s in stats for k in ("loss/G_global", "loss/G_local", "loss/D_local"))
    h, r = final_nets(hinge)["D_local"], final_nets(rel)["D_local"]
    assert any(not torch.equal(h[k], r[k]) for k in h)


# ----- inference ---------------------------------------------------------------------------
def aligned_faces(faces: Faces, n: int) -> np.ndarray:
    ds = dataset(faces)
    return np.stack([ds.aligned(i) for i in range(n)])


def test_inpainter_changes_only_the_eye_boxes(trained: Path, faces: Faces) -> None:
    inp = load_inpainter(trained)
    assert inp.size == SIZE and inp.box_spec == EyeBoxSpec()
    crops = aligned_faces(faces, 3)
    out = inp.inpaint(crops)
    assert out.shape == crops.shape and out.dtype == np.uint8
    mask = inp.masks(inp.default_boxes(3)) > 0
    assert np.array_equal(out[~mask], crops[~mask])
    assert (out[mask] != crops[mask]).mean() > 0.5
    boxes = np.stack([eye_boxes(SIZE, EyeBoxSpec(width=0.5, height=0.3))] * 3)
    out2 = inp.inpaint(crops, boxes, [crops[1], None, crops[0]])
    mask2 = inp.masks(boxes) > 0
    assert np.array_equal(out2[~mask2], crops[~mask2]) and not np.array_equal(out2[mask2], crops[mask2])
    assert inp.inpaint(crops[:0]).shape == (0, SIZE, SIZE, 3)
    with pytest.raises(ValueError, match="uint8 aligned faces"):
        inp.inpaint(crops[:, :32])


def test_load_inpainter_accepts_export_and_manifest_name(trained: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    export = trained / "export" / "inpainter.safetensors"
    direct = load_inpainter(export)
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(export, home / "eyes-test.safetensors")
    entry = {"name": "eyes-test", "file": "eyes-test.safetensors", "sha256": sha256_file(export)}
    (home / "manifest.json").write_text(json.dumps({"models": [entry]}))
    monkeypatch.setenv("IMGTRANS_HOME", str(home))
    monkeypatch.setenv("IMGTRANS_WEIGHTS", str(tmp_path / "no-shipped-weights"))
    named = load_inpainter("eyes-test")
    assert named.meta["name"] == "eyes-test" and isinstance(named, Inpainter)
    x = np.random.default_rng(0).integers(0, 256, (1, SIZE, SIZE, 3), dtype=np.uint8)
    assert np.array_equal(named.inpaint(x), direct.inpaint(x))
    entry["sha256"] = "0" * 64
    (home / "manifest.json").write_text(json.dumps({"models": [entry]}))
    with pytest.raises(UserError, match="does not match the manifest"):
        load_inpainter("eyes-test")


@pytest.mark.parametrize("case", ["missing", "unknown_name", "not_a_run", "other_objective", "torch_file",
                                  "wrong_weights"])
def test_load_inpainter_errors_are_one_line(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGTRANS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("IMGTRANS_WEIGHTS", str(tmp_path / "weights"))
    if case == "other_objective":
        target = save_export(tmp_path, "AtoB", {"w": torch.zeros(1)}, {"objective": "cyclegan", "arch": {}})
    elif case == "wrong_weights":
        _, meta = EyeInpainting(EyesConfig(ngf=8, n_blocks=1, size=SIZE)).export()["inpainter"]
        target = save_export(tmp_path, "inpainter", {"w": torch.zeros(1)}, meta)
    elif case == "torch_file":
        target = tmp_path / "g.pt"
        torch.save({"w": torch.zeros(1)}, target)
    elif case == "not_a_run":
        target = tmp_path
    else:
        target = {"missing": tmp_path / "nope" / "x.safetensors", "unknown_name": "no-such-model"}[case]
    expected = {"missing": "file not found", "unknown_name": "unknown model 'no-such-model'",
                "not_a_run": "no export/inpainter.safetensors in this folder", "other_objective": "a 'cyclegan' export, not an eye",
                "torch_file": "not a .safetensors export", "wrong_weights": "do not form an eye in-painter"}[case]
    with pytest.raises(UserError, match=expected) as info:
        load_inpainter(target)
    assert "\n" not in str(info.value)


# ----- real data ---------------------------------------------------------------------------
@pytest.mark.data
def test_cli_trains_and_exports_on_lfw_pairs(tmp_path: Path) -> None:
    """`imgtrans train eyes` end to end: real photos, MTCNN landmarks, 3 steps, an export."""
    faces_root = data_root() / "faces"
    with open(faces_root / "lfw_pairs" / "index.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if not held_out(r["identity"])
                and min(float(r["open_left"]), float(r["open_right"])) > 0.2]
    by_person: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_person.setdefault(r["identity"], []).append(r)
    chosen = [p for p in by_person.values() if len(p) >= 2][:4]
    index = tmp_path / "index.csv"
    with open(index, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "identity"])
        w.writerows([f"lfw_pairs/{r['file']}", r["identity"]] for person in chosen for r in person[:2])
    sets = [f"{k.split('.')[1]}={v}" for k, v in TINY.items()]
    # --set index=... rather than --index: the CLI's data options accept folders only so far.
    args = ["train", "eyes", "--faces", str(faces_root), "--set", f"index={index}", "--steps", "3",
            "--out", str(tmp_path / "runs"), "-q", *[x for s in sets for x in ("--set", s)]]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "IMGTRANS_HOME": str(tmp_path / "home")}
    p = subprocess.run([sys.executable, "-m", "imgtrans", *args], capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    run_dir = next((tmp_path / "runs").iterdir())
    _, meta = load_export(run_dir / "export" / "inpainter.safetensors")
    assert meta["objective"] == "eyes" and meta["steps"] == 3
    inp = load_inpainter(run_dir)
    x = np.full((1, SIZE, SIZE, 3), 128, np.uint8)
    assert inp.inpaint(x).shape == x.shape
