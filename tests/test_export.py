"""Faster inference paths agree with plain fp32 torch: ONNX export, bf16 precision, automatic tiles."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import photo
from imgtrans.cli import run_cli
from imgtrans.errors import UserError
from imgtrans.nn import ResnetGenerator, init_weights
from imgtrans.pipelines import translate
from imgtrans.pipelines.translate import TranslateConfig, Translator, autocast_dtype
from imgtrans.tiling import tile_spans
from imgtrans.train.checkpoint import save_export


@pytest.fixture(scope="module")
def net() -> ResnetGenerator:
    torch.manual_seed(0)
    return init_weights(ResnetGenerator(ngf=8, n_blocks=2)).eval()


@pytest.fixture
def weights_file(tmp_path: Path, net: ResnetGenerator) -> Path:
    meta = {"objective": "cyclegan", "direction": "AtoB", "arch": net.arch.to_dict()}
    return save_export(tmp_path / "w", "toy", net.state_dict(), meta)



def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


# ----- ONNX ---------------------------------------------------------------------------------

def test_onnx_export_matches_torch_at_any_batch_and_size(tmp_path: Path, weights_file: Path,
                                                         net: ResnetGenerator) -> None:
    ort = pytest.importorskip("onnxruntime", reason="needs the onnx extra: pip install 'imgtrans[onnx]'")
    out = tmp_path / "model.onnx"
    assert run_cli(["export", "-m", str(weights_file), "--format", "onnx", "--out", str(out)]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 32, 48), (3, 3, 44, 20)]:  # neither was used when exporting
        x = torch.rand(shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
        with torch.inference_mode():
            expected = net(x).numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() < 1e-4
    meta = json.loads(session.get_modelmeta().custom_metadata_map["imgtrans"])
    assert meta["arch"] == net.arch.to_dict() and meta["direction"] == "AtoB"


def test_export_never_replaces_a_file_unless_told(tmp_path: Path, weights_file: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnxruntime", reason="needs the onnx extra: pip install 'imgtrans[onnx]'")
    notes = tmp_path / "notes.txt"
    notes.write_text("the user's own file")
    assert run_cli(["export", "-m", str(weights_file), "--out", str(notes)]) == 2
    assert f"{notes}: already exists; pass --overwrite" in capsys.readouterr().err
    assert notes.read_text() == "the user's own file"
    assert run_cli(["export", "-m", str(weights_file), "--out", str(notes), "--overwrite"]) == 0
    assert notes.read_bytes()[:2] != b"th"  # replaced by the ONNX model


def test_export_without_the_onnx_extra_names_it_in_one_line(tmp_path: Path, weights_file: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    out = tmp_path / "model.onnx"
    assert run_cli(["export", "-m", str(weights_file), "--format", "onnx", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "imgtrans[onnx]" in err
    assert not out.exists()


# ----- precision ----------------------------------------------------------------------------

def test_precision_auto_lowers_only_where_it_is_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert autocast_dtype("fp32", cpu) is None
    assert autocast_dtype("bf16", cpu) is torch.bfloat16
    monkeypatch.setattr(translate, "native_cpu_bf16", lambda: False)
    assert autocast_dtype("auto", cpu) is None  # emulated bf16 is slower than fp32
    monkeypatch.setattr(translate, "native_cpu_bf16", lambda: True)
    assert autocast_dtype("auto", cpu) is torch.bfloat16
    assert autocast_dtype("auto", torch.device("mps")) is None
    with pytest.raises(UserError, match="fp32, bf16, auto"):
        autocast_dtype("fp16", cpu)


def test_bf16_output_stays_close_to_fp32(net: ResnetGenerator) -> None:
    rgb = photo(48, 64)
    fp32 = Translator(net, device="cpu", config=TranslateConfig(precision="fp32"))(rgb)
    bf16 = Translator(net, device="cpu", config=TranslateConfig(precision="bf16"))(rgb)
    assert not np.array_equal(fp32, bf16)  # bf16 really ran
    assert psnr(fp32, bf16) > 40  # the bound the benchmark checks on real photos


def test_cli_precision_option(tmp_path: Path, weights_file: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        Image.fromarray(photo(40, 56, seed=i)).save(src / f"p{i}.png")
    outs = {}
    for precision in ("fp32", "bf16"):
        dst = tmp_path / precision
        assert run_cli(["translate", str(src), str(dst), "--weights", str(weights_file), "-q",
                        "--precision", precision]) == 0
        outs[precision] = [np.asarray(Image.open(dst / f"p{i}.png")) for i in range(2)]
    assert all(psnr(a, b) > 40 for a, b in zip(outs["fp32"], outs["bf16"]))
    assert run_cli(["translate", str(src), str(tmp_path / "x"), "--weights", str(weights_file),
                    "--precision", "fp8"]) == 2


# ----- automatic tiles ----------------------------------------------------------------------

def computed_pixels(h: int, w: int, tile: int, overlap: int = 64) -> int:
    rows, cols = tile_spans(h, tile, overlap), tile_spans(w, tile, overlap)
    return sum(b - a for a, b in rows) * sum(b - a for a, b in cols)


def test_automatic_tiles_spread_evenly(net: ResnetGenerator) -> None:
    t = Translator(net, device="cpu")
    side = t._tile_side(1536, 2048)
    assert 256 <= side <= 576 and side % 64 == 0  # on the 16-stride grid
    assert computed_pixels(1536, 2048, side) < 0.8 * computed_pixels(1536, 2048, 512)
    assert Translator(net, device="cpu", config=TranslateConfig(tile=300))._tile_side(1536, 2048) == 300


def test_automatically_tiled_output_stays_close_to_whole_image(net: ResnetGenerator) -> None:
    rgb = photo(600, 760)
    whole = Translator(net, device="cpu", config=TranslateConfig(pixel_budget=10**7))(rgb).astype(int)
    tiled = Translator(net, device="cpu", config=TranslateConfig(pixel_budget=100_000, stats_size=1024))(rgb)
    assert tiled.shape == whole.shape
    assert np.abs(tiled.astype(int) - whole).mean() < 1
