"""Translation pipeline: any size, alpha/EXIF/ICC/modes, folders with bad files, CLI and API."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from conftest import photo
import imgtrans
from imgtrans.cli import run_cli
from imgtrans.errors import UserError
from imgtrans.nn import ResnetGenerator, init_weights
from imgtrans.pipelines.folders import plan
from imgtrans.pipelines.translate import TranslateConfig, Translator
from imgtrans.train.checkpoint import save_export


@pytest.fixture(scope="module")
def net() -> ResnetGenerator:
    torch.manual_seed(0)
    return init_weights(ResnetGenerator(ngf=8, n_blocks=2))


@pytest.fixture
def weights_file(tmp_path: Path, net: ResnetGenerator) -> Path:
    meta = {"objective": "cyclegan", "direction": "AtoB", "arch": net.arch.to_dict(), "train_size": 32}
    return save_export(tmp_path / "w", "toy", net.state_dict(), meta)



def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ----- Translator on single images ----------------------------------------------------------

@pytest.mark.parametrize("size", [(37, 53), (64, 64), (5, 9)])
def test_any_size_keeps_shape(net: ResnetGenerator, size: tuple[int, int]) -> None:
    t = Translator(net, device="cpu")
    out = t(photo(*size))
    assert out.shape == (*size, 3) and out.dtype == np.uint8


def test_output_is_the_network_output(net: ResnetGenerator) -> None:
    rgb = photo(32, 48)
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        expected = ((net.eval()(x)[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    # fp32: `auto` lowers precision to bf16 on CPUs that compute it natively (AVX512-BF16, AMX).
    assert np.array_equal(Translator(net, device="cpu", config=TranslateConfig(precision="fp32"))(rgb), expected)


def test_batch_equals_one_by_one(net: ResnetGenerator) -> None:
    t = Translator(net, device="cpu")
    arrays = [photo(40, 44, seed=i) for i in range(3)]
    together = t.translate_rgb(arrays)
    alone = [t.translate_rgb([a])[0] for a in arrays]
    assert all(np.abs(x.astype(int) - y.astype(int)).max() <= 1 for x, y in zip(together, alone))


def test_types_round_trip(net: ResnetGenerator) -> None:
    t = Translator(net, device="cpu")
    rgba = Image.fromarray(np.dstack([photo(24, 28), np.full((24, 28), 77, np.uint8)]), "RGBA")
    out = t(rgba)
    assert isinstance(out, Image.Image) and out.mode == "RGBA" and out.size == (28, 24)
    assert np.all(np.asarray(out)[..., 3] == 77)
    gray = t(Image.fromarray(photo(20, 20)[..., 0], "L"))
    assert gray.mode == "RGB"
    arr4 = t(np.dstack([photo(16, 16), np.zeros((16, 16), np.uint8)]))
    assert arr4.shape == (16, 16, 4) and not arr4[..., 3].any()
    ten = t(torch.rand(2, 3, 20, 24))
    assert ten.shape == (2, 3, 20, 24) and 0 <= ten.min() and ten.max() <= 1
    assert t(torch.rand(3, 8, 8)).shape == (3, 8, 8)
    with pytest.raises(TypeError):
        t("not an image")  # type: ignore[arg-type]


def test_size_option_runs_smaller_and_resizes_back(net: ResnetGenerator) -> None:
    t = Translator(net, device="cpu", config=TranslateConfig(size=32))
    rgb = photo(64, 96)
    out = t(rgb)
    assert out.shape == rgb.shape
    assert not np.array_equal(out, Translator(net, device="cpu")(rgb))


class Brighten(torch.nn.Module):
    """An edit the size of the photo's smooth content: +0.2 everywhere (a 10% brighter photo)."""

    stride = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.2


def test_keep_detail_adds_the_low_resolution_edit_to_the_full_photo() -> None:
    rgb = photo(64, 96)  # noise and a 7 px sine: detail finer than the 32 px run loses
    kept = Translator(Brighten(), device="cpu", config=TranslateConfig(size=32, keep_detail=True))(rgb)
    blurred = Translator(Brighten(), device="cpu", config=TranslateConfig(size=32))(rgb)
    expected = np.clip(rgb.astype(np.float64) + 0.2 * 127.5, 0, 255)
    assert np.abs(kept - expected).max() <= 1  # rounding only: every pixel's detail survives
    assert np.abs(blurred.astype(np.float64) - expected).mean() > 3  # without it, the detail is gone
    native = Translator(Brighten(), device="cpu", config=TranslateConfig(keep_detail=True))(rgb)
    assert np.abs(native - expected).max() <= 1  # at native size the flag changes nothing


def test_forced_tiles_keep_shape_and_stay_close(net: ResnetGenerator) -> None:
    rgb = photo(100, 140)
    whole = Translator(net, device="cpu")(rgb).astype(int)
    tiled = Translator(net, device="cpu", config=TranslateConfig(tile=48, overlap=16, stats_size=1024))(rgb).astype(int)
    assert tiled.shape == whole.shape
    assert np.abs(tiled - whole).mean() < 8  # out of 255; seams are measured in test_tiling


# ----- files ------------------------------------------------------------------------------

def write_jpeg_with_exif(path: Path, rgb: np.ndarray, orientation: int) -> None:
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = orientation
    exif[0x013B] = "Ansel"  # Artist, must survive
    img.save(path, exif=exif.tobytes(), quality=95)


def test_folder_keeps_exif_icc_alpha_and_modes(net: ResnetGenerator, tmp_path: Path) -> None:
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    write_jpeg_with_exif(src / "rotated.jpg", photo(30, 50), orientation=6)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(photo(24, 24)).save(src / "icc.png", icc_profile=srgb)
    Image.fromarray(np.dstack([photo(20, 28), np.tile(np.arange(28, dtype=np.uint8) * 9, (20, 1))])).save(
        src / "sub" / "alpha.png")
    Image.fromarray(photo(22, 26)[..., 1]).save(src / "sub" / "gray.png")
    Image.fromarray((photo(18, 18)[..., 0].astype(np.uint16) * 257)).save(src / "sub" / "deep.png")
    Image.fromarray(photo(20, 20)).convert("CMYK").save(src / "cmyk.jpg")
    Image.fromarray(photo(16, 20)).convert("P").save(src / "pal.gif")
    before = digest(src)
    report = Translator(net, device="cpu").translate_folder(src, tmp_path / "out")
    assert report.ok and len(report.converted) == 7
    assert digest(src) == before
    out = tmp_path / "out"
    rotated = Image.open(out / "rotated.jpg")
    assert rotated.size == (30, 50)  # upright: EXIF orientation 6 applied
    exif = rotated.getexif()
    assert exif.get(0x013B) == "Ansel" and exif.get(0x0112, 1) == 1
    assert Image.open(out / "icc.png").info.get("icc_profile") == srgb
    alpha = Image.open(out / "sub" / "alpha.png")
    assert alpha.mode == "RGBA" and np.array_equal(np.asarray(alpha)[..., 3], np.tile(np.arange(28, dtype=np.uint8) * 9, (20, 1)))
    assert Image.open(out / "sub" / "gray.png").mode == "RGB"
    assert Image.open(out / "sub" / "deep.png").size == (18, 18)
    assert Image.open(out / "cmyk.jpg").mode == "RGB" and "icc_profile" not in Image.open(out / "cmyk.jpg").info
    assert Image.open(out / "pal.png").mode == "RGB"


def test_format_option_converts(net: ResnetGenerator, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.dstack([photo(16, 16), np.full((16, 16), 100, np.uint8)])).save(src / "a.png")
    Translator(net, device="cpu").translate_folder(src, tmp_path / "out", fmt="jpg")
    out = Image.open(tmp_path / "out" / "a.jpg")
    assert out.format == "JPEG" and out.mode == "RGB"  # alpha composited: JPEG has none


def make_bad_folder(src: Path) -> list[str]:
    src.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(photo(24, 32, seed=i)).save(src / f"good{i}.png")
    Image.fromarray(photo(48, 48)).save(src / "big.png")
    (src / "empty.jpg").write_bytes(b"")
    (src / "text.png").write_text("hello")
    Image.fromarray(photo(64, 64)).save(src / "trunc.jpg", quality=95)
    data = (src / "trunc.jpg").read_bytes()
    (src / "trunc.jpg").write_bytes(data[: len(data) // 3])
    (src / "notes.txt").write_text("ignored: not an image extension")
    return ["big.png", "empty.jpg", "text.png", "trunc.jpg"]


def test_folder_with_bad_files_finishes_and_reports_each(net: ResnetGenerator, tmp_path: Path) -> None:
    src = tmp_path / "in"
    bad = make_bad_folder(src)
    before = digest(src)
    t = Translator(net, device="cpu", config=TranslateConfig(max_pixels=40 * 40))
    report = t.translate_folder(src, tmp_path / "out")
    assert sorted(p.name for p in report.converted) == ["good0.png", "good1.png", "good2.png"]
    assert sorted(p.name for p, _ in report.failed) == bad
    reasons = {p.name: r for p, r in report.failed}
    assert "empty" in reasons["empty.jpg"] and "limit" in reasons["big.png"]
    assert digest(src) == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good0.png", "good1.png", "good2.png"]


def test_cli_reports_failures_and_exits_nonzero(weights_file: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "in"
    make_bad_folder(src)
    code = run_cli(["translate", str(src), str(tmp_path / "out"), "--weights", str(weights_file), "-q"])
    err = capsys.readouterr().err
    assert code == 1
    assert "converted 4, skipped 0" in err and "failed 3" in err  # big.png is fine at the default limit
    failed = [line for line in err.splitlines() if line.strip().startswith("failed:")]
    assert len(failed) == 3 and all("Traceback" not in line for line in err.splitlines())
    code = run_cli(["translate", str(src), str(tmp_path / "out"), "--weights", str(weights_file), "-q"])
    assert code == 1 and "converted 0, skipped 4" in capsys.readouterr().err


def test_skip_existing_and_overwrite(net: ResnetGenerator, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(photo(16, 16)).save(src / "a.png")
    (tmp_path / "out").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "out" / "a.png")
    t = Translator(net, device="cpu")
    report = t.translate_folder(src, tmp_path / "out")
    assert not report.converted and [p.name for p in report.skipped] == ["a.png"]
    assert Image.open(tmp_path / "out" / "a.png").size == (4, 4)
    report = t.translate_folder(src, tmp_path / "out", overwrite=True)
    assert [p.name for p in report.converted] == ["a.png"] and Image.open(tmp_path / "out" / "a.png").size == (16, 16)


def test_plan_refuses_overwriting_inputs(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(photo(8, 8)).save(src / "a.png")
    with pytest.raises(UserError, match="inside the input folder"):
        plan(src, src / "out")
    with pytest.raises(UserError, match="inside the input folder"):
        plan(src, src)
    with pytest.raises(UserError, match="overwrite the input"):
        plan(src / "a.png", src / "a.png")
    with pytest.raises(UserError, match="overwrite the input"):
        plan(src / "a.png", src, fmt="same")
    with pytest.raises(UserError, match="not found"):
        plan(tmp_path / "nope", tmp_path / "out")


def test_plan_single_file_targets(tmp_path: Path) -> None:
    Image.fromarray(photo(8, 8)).save(tmp_path / "a.jpg")
    p = plan(tmp_path / "a.jpg", tmp_path / "result.png")
    assert [(j.dst.name, j.pil_format) for j in p.jobs] == [("result.png", "PNG")]
    p = plan(tmp_path / "a.jpg", tmp_path / "outdir", fmt="png")
    assert [j.dst.relative_to(tmp_path).as_posix() for j in p.jobs] == ["outdir/a.png"]


def test_cli_needs_exactly_one_model_source(weights_file: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    Image.fromarray(photo(8, 8)).save(tmp_path / "a.png")
    assert run_cli(["translate", str(tmp_path / "a.png"), str(tmp_path / "o")]) == 2
    assert "exactly one of -m NAME or --weights PATH" in capsys.readouterr().err
    code = run_cli(["translate", str(tmp_path / "a.png"), str(tmp_path / "o"), "-m", "no-such-model"])
    err = capsys.readouterr().err
    assert code == 2 and "no-such-model" in err and len(err.strip().splitlines()) == 1


def test_cli_refuses_a_tile_no_larger_than_its_overlap_before_any_file(weights_file: Path, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        Image.fromarray(photo(40, 48, seed=i)).save(src / f"p{i}.png")
    code = run_cli(["translate", str(src), str(tmp_path / "o"), "--weights", str(weights_file), "--tile", "32"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "--tile 32" in err and "--tile 68 or more" in err  # overlap 64 + the stride of 4
    assert not (tmp_path / "o").exists()


def test_cli_size_train_uses_metadata(weights_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    Image.fromarray(photo(64, 80)).save(tmp_path / "a.png")
    code = run_cli(["translate", str(tmp_path / "a.png"), str(tmp_path / "o"), "--weights", str(weights_file),
                    "--size", "train", "-q"])
    assert code == 0, capsys.readouterr().err
    assert Image.open(tmp_path / "o" / "a.png").size == (80, 64)
    assert run_cli(["translate", str(tmp_path / "a.png"), str(tmp_path / "o2"), "--weights", str(weights_file),
                    "--size", "big"]) == 2
    code = run_cli(["translate", str(tmp_path / "a.png"), str(tmp_path / "o3"), "--weights", str(weights_file),
                    "--size", "train", "--keep-detail", "-q"])
    assert code == 0
    sharp, soft = (np.asarray(Image.open(tmp_path / o / "a.png"), dtype=np.float64) for o in ("o3", "o"))
    assert not np.array_equal(sharp, soft)


def test_load_api_with_official_checkpoint(net: ResnetGenerator, tmp_path: Path) -> None:
    torch.save(net.state_dict(), tmp_path / "latest_net_G_A.pth")
    t = imgtrans.load(str(tmp_path / "latest_net_G_A.pth"), device="cpu")
    rgb = photo(24, 36)
    assert np.array_equal(t(rgb), Translator(net, device="cpu")(rgb))
    out = tmp_path / "api_out"
    src = tmp_path / "api_in"
    src.mkdir()
    Image.fromarray(rgb).save(src / "x.png")
    assert t.translate_folder(src, out).ok and (out / "x.png").exists()


def test_jpeg_quality_and_bytes_readable(net: ResnetGenerator, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(photo(32, 32)).save(src / "a.jpg", quality=90)
    Translator(net, device="cpu").translate_folder(src, tmp_path / "out")
    data = (tmp_path / "out" / "a.jpg").read_bytes()
    assert Image.open(io.BytesIO(data)).format == "JPEG"
    assert (tmp_path / "out" / "a.jpg").stat().st_mode & 0o044  # readable by others, like any saved file


def test_cli_weights_import_list_info_then_translate_by_name(net: ResnetGenerator, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("IMGTRANS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("IMGTRANS_WEIGHTS", str(tmp_path / "shipped"))
    assert run_cli(["weights", "list"]) == 0
    assert "no models installed yet" in capsys.readouterr().out
    torch.save(net.state_dict(), tmp_path / "latest_net_G_A.pth")
    assert run_cli(["weights", "import", str(tmp_path / "latest_net_G_A.pth"), "--name", "toy2toy"]) == 0
    capsys.readouterr()
    assert run_cli(["weights", "list"]) == 0
    listing = capsys.readouterr().out
    assert "toy2toy" in listing and "MB" in listing and "translate" in listing  # its task column
    assert run_cli(["weights", "info", "toy2toy"]) == 0
    assert '"sha256"' in capsys.readouterr().out
    Image.fromarray(photo(20, 24)).save(tmp_path / "a.png")
    assert run_cli(["translate", str(tmp_path / "a.png"), str(tmp_path / "o"), "-m", "toy2toy", "-q"]) == 0
    expected = Translator(net, device="cpu")(photo(20, 24))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "o" / "a.png")), expected)
