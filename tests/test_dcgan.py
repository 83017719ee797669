"""DCGAN faces: networks, training steps, exact resume, export round trip, latent tools, directions, CLI."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import make_domain
from imgtrans.cli import run_cli
from imgtrans.errors import UserError
from imgtrans.faces.eyes import template_points
from imgtrans.objectives import dcgan as dc
from imgtrans.objectives import faceattrs as fa
from imgtrans.pipelines import latent
from imgtrans.train.checkpoint import latest_checkpoint, load_checkpoint, load_export, save_export
from imgtrans.train.launch import RunRequest, run

SIZE = 16  # tiny faces: two stride-2 stages between 4x4 and 16x16
TINY_DC = {
    "model.size": SIZE, "model.ngf": 8, "model.ndf": 8, "model.sample_grid": 2, "model.bn_calibration": 64,
    "train.batch_size": 4, "train.workers": 0, "train.log_every": 1, "train.sample_every": 0,
    "train.checkpoint_every": 0, "train.sample_count": 1,
}


def train_dcgan(images: Path, out: Path, until: int | None = None, **values: Any) -> Path:
    run_dir = run(RunRequest(objective="dcgan", values={**TINY_DC, "model.images": str(images), **values},
                             out=str(out), quiet=True, until=until))
    assert run_dir is not None
    return run_dir


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_domain(tmp_path_factory.mktemp("data") / "faces", 6, "blobs", size=24, seed=3)


@pytest.fixture(scope="module")
def trained(images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DCGAN run of 3 steps with samples and a checkpoint at the end."""
    return train_dcgan(images, tmp_path_factory.mktemp("runs"),
                       **{"train.steps": 3, "train.sample_every": 3, "train.checkpoint_every": 3})


def write_utk_faces(root: Path, n: int = 24, seed: int = 0) -> None:
    """faces/utkface/AGE_GENDER_RACE_date.jpg.chip.jpg with index.csv: men bluish, women reddish,
    old faces darker; the face sits where the template puts it, so fake landmarks fit."""
    rng = np.random.default_rng(seed)
    folder = root / "utkface"
    folder.mkdir(parents=True)
    rows = []
    for i in range(n):
        age, gender = (int(rng.integers(18, 30)) if i % 3 else int(rng.integers(50, 80))), i % 2
        colour = np.array([200, 120, 90] if gender else [90, 120, 200], np.float64) * (0.6 if age >= 50 else 1.0)
        img = np.clip(colour + rng.normal(0, 12, (48, 48, 3)), 0, 255).astype(np.uint8)
        name = f"{age}_{gender}_0_2017{i:010d}.jpg.chip.jpg"
        Image.fromarray(img).save(folder / name, format="JPEG", quality=95)
        rows.append([name, 0.05 if i == 5 else 0.3])
    with (folder / "index.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["file", "open_score"], *rows])


@pytest.fixture
def fake_landmarks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The template's points for every file (a 48 px face), instead of MTCNN."""
    monkeypatch.setattr("imgtrans.data.faces.detect_landmarks",
                        lambda files, who="": {f: template_points(48) for f in files})


# ----- networks ----------------------------------------------------------------------------
def test_networks_follow_the_paper_layout() -> None:
    arch = dc.DCGANArch(ngf=8, ndf=8)  # 64 px, z of 100
    g, d = dc.Generator(arch, track_stats=False), dc.Discriminator(arch)
    kinds = [type(m) for m in g.main]
    assert kinds.count(nn.ConvTranspose2d) == 5 and kinds.count(nn.BatchNorm2d) == 4 and kinds[-1] is nn.Tanh
    assert [m.out_channels for m in g.main if isinstance(m, nn.ConvTranspose2d)] == [64, 32, 16, 8, 3]
    assert isinstance(d.main[1], nn.LeakyReLU) and d.main[1].negative_slope == 0.2  # no norm on the first conv
    assert [m.out_channels for m in d.main if isinstance(m, nn.Conv2d)] == [8, 16, 32, 64, 1]
    x = g(torch.randn(2, 100))
    assert x.shape == (2, 3, 64, 64) and x.abs().max() <= 1 and d(x).shape == (2,)
    # Training nets keep no running statistics (nothing for DDP ranks to disagree on); inference ones do.
    assert not list(g.buffers()) and not list(d.buffers())
    assert any("running_var" in k for k in dc.Generator(arch).state_dict())
    assert dc.Generator(dc.DCGANArch(ngf=4, size=32))(torch.randn(1, 100)).shape == (1, 3, 32, 32)
    with pytest.raises(UserError, match="power of two"):
        dc.DCGANArch(size=48).stages()


# ----- training ----------------------------------------------------------------------------
def test_trains_a_few_steps_on_synthetic_images(trained: Path) -> None:
    stats = [json.loads(line) for line in (trained / "stats.jsonl").read_text().splitlines()]
    assert [s["step"] for s in stats] == [1, 2, 3]
    for key in ("loss/G", "loss/D_real", "loss/D_fake", "loss/D_x", "loss/D_G_z"):
        assert all(np.isfinite(s[key]) for s in stats), key
    assert stats[0]["lr"] == {"G": 2e-4, "D": 2e-4}
    grid = Image.open(trained / "samples" / "step-00000003.png")
    assert grid.size == (2 * (SIZE + 2) + 2,) * 2  # the 2 x 2 faces of seeds 0-3
    nets = load_checkpoint(latest_checkpoint(trained))["nets"]
    torch.manual_seed(0)  # the run's seed: the same initial weights
    init = dc.DCGAN(dc.DCGANConfig(size=SIZE, ngf=8, ndf=8)).networks()
    for name in ("G", "D"):
        assert any(not torch.equal(v, nets[name][k]) for k, v in init[name].state_dict().items()), name
    config = json.loads((trained / "config.json").read_text())
    assert config["objective"] == "dcgan" and trained.name.endswith("dcgan-faces")


def test_resume_is_exact(images: Path, tmp_path: Path) -> None:
    """4 steps straight == 2 steps, stop, resume, 2 steps (z comes from the saved RNG)."""
    steps = {"train.steps": 4}
    straight = train_dcgan(images, tmp_path / "straight", **steps)
    first = train_dcgan(images, tmp_path / "split", **steps, until=2)
    assert load_checkpoint(latest_checkpoint(first))["step"] == 2
    resumed = run(RunRequest(objective="dcgan", values={}, resume=str(first), quiet=True))
    a, b = (load_checkpoint(latest_checkpoint(d))["nets"] for d in (straight, resumed))
    for net in a:
        for k in a[net]:
            assert (a[net][k] - b[net][k]).abs().max().item() <= 1e-6, f"{net}.{k}"


def test_bf16_autocast_trains(images: Path, tmp_path: Path) -> None:
    run_dir = train_dcgan(images, tmp_path, **{"train.steps": 2, "train.amp": "bf16"})
    stats = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert len(stats) == 2 and all(np.isfinite(s["loss/G"]) and np.isfinite(s["loss/D_real"]) for s in stats)
    state, meta = load_export(run_dir / "export" / "generator.safetensors")
    assert all(v.dtype == torch.float32 for k, v in state.items() if v.is_floating_point())


def test_one_source_of_faces(images: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--images FOLDER .* or --faces"):
        dc.DCGAN(dc.DCGANConfig(images=str(images), faces=str(images))).dataset()
    with pytest.raises(UserError, match="batch_size"):
        obj = dc.DCGAN(dc.DCGANConfig(size=SIZE, ngf=4, ndf=4))
        obj.loss("G", {"image": torch.zeros(1, 3, SIZE, SIZE)})


def test_faces_folder_is_aligned_and_a_pure_function_of_k(tmp_path: Path, fake_landmarks: None) -> None:
    write_utk_faces(tmp_path / "faces", n=6)
    data = dc.DCGAN(dc.DCGANConfig(faces=str(tmp_path / "faces"), size=SIZE)).dataset()
    assert len(data) == 6 and data.sizes()["no_face"] == 0
    item = data[7]["image"]
    assert item.shape == (3, SIZE, SIZE) and torch.equal(item, data[7]["image"])
    # The frame zooms in on the face: the flat synthetic skin fills it, no reflected border.
    assert item.std(dim=(1, 2)).max() < 0.2


# ----- export and latent tools -------------------------------------------------------------
def test_export_round_trip_and_batch_independence(trained: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    model = latent.load_face_model(trained)
    assert model.meta["objective"] == "dcgan" and model.meta["arch"]["size"] == SIZE and model.directions == {}
    state = model.net.state_dict()
    trained_g = load_checkpoint(latest_checkpoint(trained))["nets"]["G"]
    assert all(torch.equal(state[k], v) for k, v in trained_g.items())  # same weights, plus running stats
    assert all((v > 0).all() for k, v in state.items() if k.endswith("running_var"))
    one = model.faces([5])
    many = model.faces([3, 4, 5, 6])
    assert one.shape == (1, 3, SIZE, SIZE) and torch.allclose(one[0], many[2], atol=1e-6)  # a seed is a face
    assert torch.equal(latent.z_from_seed(5, 100), latent.latents([4, 5], 100)[1])
    export = trained / "export" / "generator.safetensors"
    assert torch.equal(latent.load_face_model(str(export)).faces([5]), one)
    shipped = tmp_path / "weights"
    shipped.mkdir()
    shutil.copy(export, shipped / "faces-test.safetensors")
    from imgtrans.weights import sha256_file

    entry = {"name": "faces-test", "task": "faces", "file": "faces-test.safetensors", "sha256": sha256_file(export)}
    (shipped / "manifest.json").write_text(json.dumps({"models": [entry]}))
    monkeypatch.setenv("IMGTRANS_WEIGHTS", str(shipped))
    monkeypatch.setenv("IMGTRANS_HOME", str(tmp_path / "home"))
    by_name = latent.load_face_model("faces-test")
    assert torch.equal(by_name.faces([5]), one) and by_name.meta["name"] == "faces-test"
    other = save_export(tmp_path, "gen", {"w": torch.zeros(1)}, {"objective": "cyclegan"})
    with pytest.raises(UserError, match="not dcgan weights"):
        latent.load_face_model(other)


def test_interpolation_endpoints_equal_the_endpoint_samples(trained: Path) -> None:
    model = latent.load_face_model(trained)
    a, b = latent.z_from_seed(1, 100), latent.z_from_seed(2, 100)
    ends = model.faces([1, 2])
    for mode in ("lerp", "slerp"):
        path = latent.interpolate(a, b, 8, mode)
        assert path.shape == (8, 100) and torch.equal(path[0], a) and torch.equal(path[-1], b)
        strip = model.generate(path)
        assert torch.allclose(strip[0], ends[0], atol=1e-6) and torch.allclose(strip[-1], ends[1], atol=1e-6)
    mid_l, mid_s = latent.lerp(a, b, 0.5), latent.slerp(a, b, 0.5)
    # Two random 100-d latents are nearly orthogonal: the chord's midpoint is ~1/sqrt(2) as long.
    assert mid_s.norm() > 1.3 * mid_l.norm() and abs(mid_s.norm() / a.norm() - 1) < 0.15
    assert torch.allclose(latent.slerp(a, 2 * a, 0.5), 1.5 * a)  # parallel: falls back to the line
    with pytest.raises(UserError, match="at least 2"):
        latent.interpolate(a, b, 1)


def test_edit_arithmetic_and_errors() -> None:
    dirs = {"male": torch.nn.functional.normalize(torch.randn(100), dim=0), "age": torch.eye(100)[3]}
    z = latent.z_from_seed(9, 100)
    assert torch.equal(latent.edit(z, {"male": 0.0, "age": 0.0}, dirs), z)
    moved = latent.edit(z, {"male": -1.0, "age": 2.0}, dirs)
    assert torch.allclose(moved, z - dirs["male"] + 2 * dirs["age"])
    with pytest.raises(UserError, match="unknown attribute 'smile'; this model has: age, male"):
        latent.edit(z, {"smile": 1.0}, dirs)
    with pytest.raises(UserError, match="no attribute directions"):
        latent.edit(z, {"male": 1.0}, {})
    assert latent.parse_attribute("age=+1.5") == ("age", 1.5)
    for bad in ("male", "male=", "=1", "male=x", "male=nan"):
        with pytest.raises(UserError, match="NAME=WEIGHT"):
            latent.parse_attribute(bad)


# ----- attribute classifiers and directions ------------------------------------------------
def test_labels_from_names_and_scores() -> None:
    cfg = fa.FaceAttrConfig()
    labels, known = fa.face_labels("25_1_2_20170116174525125.jpg.chip.jpg", 0.3, cfg)
    assert labels.tolist() == [0, 0, 1] and known.all()  # female, young, open
    labels, known = fa.face_labels("61_0_0_x.jpg.chip.jpg", 0.05, cfg)
    assert labels.tolist() == [1, 1, 0] and known.all()  # male, old, closed
    _, known = fa.face_labels("40_0_0_x.jpg.chip.jpg", 0.18, cfg)  # age and eyes between the classes
    assert known.tolist() == [True, False, False]
    _, known = fa.face_labels("9_0_0_x.jpg.chip.jpg", None, cfg)  # children carry no age label
    assert known.tolist() == [True, False, False]
    _, known = fa.face_labels("Aaron_Peirsol_0001.jpg", 0.3, cfg)  # LFW: eyes only
    assert known.tolist() == [False, False, True]


def test_directions_from_classifiers_and_the_cli(trained: Path, tmp_path: Path, fake_landmarks: None,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    faces = tmp_path / "faces"
    write_utk_faces(faces)
    values = {"model.faces": str(faces), "model.size": SIZE, "model.width": 4, "model.val_fraction": 0.3,
              "model.rare_share": 0.25, "train.steps": 3, "train.batch_size": 8, "train.workers": 0,
              "train.log_every": 3, "train.sample_every": 3, "train.checkpoint_every": 0, "train.sample_count": 2}
    clf_dir = run(RunRequest(objective="faceattrs", values=values, out=str(tmp_path / "runs"), quiet=True))
    assert clf_dir is not None
    figures = json.loads((clf_dir / "eval.json").read_text())
    assert figures["val_faces"] >= 3 and set(fa.ATTRIBUTES) <= set(figures), figures
    assert figures["male"]["n"] == figures["male"]["positive"] + figures["male"]["negative"] >= 3
    stats = json.loads((clf_dir / "stats.jsonl").read_text().splitlines()[-1])
    assert all(np.isfinite(stats[f"loss/bce_{a}"]) for a in fa.ATTRIBUTES)
    clf = latent.load_attributes(clf_dir)
    assert clf.attributes == list(fa.ATTRIBUTES) and clf.probs(torch.zeros(2, 3, 32, 32)).shape == (2, 3)

    out = tmp_path / "model" / "faces.safetensors"
    rc = run_cli(["faces", "directions", "-m", str(trained), "--classifier", str(clf_dir), "--samples", "48",
                  "--measure", "8", "--strength", "2", "--out", str(out), "--report", str(tmp_path / "report.json")])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["classifier_heldout"] == figures and report["directions"]["samples"] == 48
    for a in fa.ATTRIBUTES:
        rec = report["flips"]["attributes"][a][0]
        assert rec["strength"] == 2 and 0 <= rec["flip_rate"] <= 1 and rec["positive"] + rec["negative"] == 8
    model = latent.load_face_model(out)
    assert sorted(model.directions) == sorted(fa.ATTRIBUTES) and model.meta["direction_report"] == report
    for v in model.directions.values():
        assert v.shape == (100,) and abs(float(v.norm()) - 1) < 1e-6  # unit vectors
    z = latent.z_from_seed(11, 100)
    original = model.generate(z[None])
    assert torch.equal(model.generate(latent.edit(z, {"male": 0.0, "age": 0.0}, model.directions)[None]), original)
    assert not torch.allclose(model.generate(latent.edit(z, {"male": 3.0}, model.directions)[None]), original)

    # A run folder with export/faces.safetensors loads the model with directions.
    shutil.copy(out, trained / "export" / "faces.safetensors")
    try:
        assert latent.load_face_model(trained).directions.keys() == model.directions.keys()
    finally:
        (trained / "export" / "faces.safetensors").unlink()

    strip = tmp_path / "edit.png"
    assert run_cli(["faces", "edit", "-m", str(out), "--seed", "11", "--seed", "12", "--attribute", "male=-2",
                    "--attribute", "age=+1", "--steps", "3", "--out", str(strip)]) == 0
    assert Image.open(strip).size == (3 * SIZE + 2 * 2, 2 * SIZE + 2)
    edited = np.asarray(Image.open(strip))
    from imgtrans.data.transforms import to_uint8

    assert np.abs(edited[:SIZE, :SIZE].astype(int) - to_uint8(original[0]).astype(int)).max() <= 1  # weight 0

    fresh = tmp_path / "fresh.png"
    assert run_cli(["faces", "edit", "-m", str(out), "--seed", "1", "--attribute", "smile=1",
                    "--out", str(fresh)]) == 2
    assert "unknown attribute 'smile'; this model has: age, eyes_open, male" in capsys.readouterr().err
    assert run_cli(["faces", "edit", "-m", str(trained), "--seed", "1", "--attribute", "male=1",
                    "--out", str(fresh)]) == 2
    assert "no attribute directions" in capsys.readouterr().err


def test_cli_generate_interpolate_and_errors(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = tmp_path / "grid.png"
    assert run_cli(["faces", "generate", "-m", str(trained), "-n", "4", "--seed", "7", "--out", str(grid)]) == 0
    assert Image.open(grid).size == (2 * SIZE + 2, 2 * SIZE + 2)
    model = latent.load_face_model(trained)
    from imgtrans.data.transforms import to_uint8

    expected = to_uint8(model.faces([10])[0])  # seed 10 is the grid's 4th face (row 1, column 1)
    assert np.abs(np.asarray(Image.open(grid))[SIZE + 2:, SIZE + 2:].astype(int) - expected).max() <= 1
    folder = tmp_path / "separate"
    assert run_cli(["faces", "generate", "-m", str(trained), "-n", "3", "--seed", "9", "--separate",
                    "--out", str(folder), "--upscale", "2"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["seed-000009.png", "seed-000010.png", "seed-000011.png"]
    assert Image.open(folder / "seed-000010.png").size == (2 * SIZE, 2 * SIZE)

    strip = tmp_path / "strip.png"
    assert run_cli(["faces", "interpolate", "-m", str(trained), "--from", "3", "--to", "10", "--steps", "5",
                    "--mode", "both", "--out", str(strip)]) == 0
    pixels = np.asarray(Image.open(strip))
    assert pixels.shape == (2 * SIZE + 2, 5 * SIZE + 4 * 2, 3)
    for row in (0, SIZE + 2):  # both paths end on the face of seed 10
        assert np.abs(pixels[row:row + SIZE, -SIZE:].astype(int) - expected).max() <= 1

    # An existing --out is never replaced silently: the grid, one face of a --separate folder, the strip.
    before = {p: p.read_bytes() for p in (grid, strip, folder / "seed-000011.png")}
    capsys.readouterr()
    for args in (["generate", "-n", "2", "--seed", "1", "--out", str(grid)],
                 ["generate", "-n", "2", "--seed", "11", "--separate", "--out", str(folder)],
                 ["interpolate", "--from", "1", "--to", "2", "--out", str(strip)],
                 ["edit", "--seed", "1", "--attribute", "male=1", "--out", str(strip)]):
        assert run_cli(["faces", args[0], "-m", str(trained), *args[1:]]) == 2
        assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert all(p.read_bytes() == data for p, data in before.items())
    assert not (folder / "seed-000012.png").exists()  # refused before any face was written
    assert run_cli(["faces", "generate", "-m", str(trained), "-n", "2", "--seed", "1", "--out", str(grid),
                    "--overwrite"]) == 0
    assert grid.read_bytes() != before[grid]

    fresh = tmp_path / "fresh.png"
    assert run_cli(["faces", "generate", "-m", str(trained), "--seed", "-1", "--out", str(fresh)]) == 2
    assert "-1" in capsys.readouterr().err
    assert run_cli(["faces", "generate", "-m", str(tmp_path / "nope"), "--out", str(fresh)]) == 2
    assert "file not found" in capsys.readouterr().err
    assert run_cli(["faces", "generate", "-m", "no-such-model", "--out", str(fresh)]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err
    assert run_cli(["faces", "generate", "-m", str(trained), "--out", str(tmp_path / "grid.txt")]) == 2
    assert "name an image file" in capsys.readouterr().err
