"""int8 ONNX export (`--format onnx-int8`) and running .onnx models with onnxruntime in translate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import photo as synthetic_photo
from imgtrans.cli import run_cli
from imgtrans.errors import UserError
from imgtrans.nn import ResnetGenerator, init_weights
from imgtrans.pipelines.translate import TranslateConfig, Translator, to_input, to_rgb
from imgtrans.train.checkpoint import save_export
from imgtrans.weights import import_weights, load_generator

onnx = pytest.importorskip("onnx", reason="needs the onnx extra: pip install 'imgtrans[onnx]'")
pytest.importorskip("onnxruntime", reason="needs the onnx extra: pip install 'imgtrans[onnx]'")


def photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """The shared synthetic photo, its texture period changing with the seed."""
    return synthetic_photo(h, w, seed, period=5.0 + seed)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def net() -> ResnetGenerator:
    torch.manual_seed(0)
    return init_weights(ResnetGenerator(ngf=8, n_blocks=2)).eval()


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory: pytest.TempPathFactory, net: ResnetGenerator) -> Path:
    root = tmp_path_factory.mktemp("int8")
    meta = {"objective": "cyclegan", "direction": "AtoB", "arch": net.arch.to_dict(), "train_size": 48}
    weights = save_export(root / "w", "toy", net.state_dict(), meta)
    calib = root / "calib"
    calib.mkdir()
    for i in range(6):
        Image.fromarray(photo(56 + 4 * i, 64, seed=i)).save(calib / f"p{i}.png")
    out = root / "toy.int8.onnx"
    assert run_cli(["export", "-m", str(weights), "--format", "onnx-int8", "--calibrate", str(calib),
                    "--out", str(out)]) == 0
    return out


def test_int8_export_quantizes_the_inner_convolutions_and_keeps_the_metadata(int8_model: Path,
                                                                             net: ResnetGenerator) -> None:
    model = onnx.load(str(int8_model))
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    # QDQ form: a quantized conv reads its weight through DequantizeLinear; the float edges do not.
    produced_by = {o: n.op_type for n in model.graph.node for o in n.output}
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    weight_from_dq = [produced_by.get(n.input[1]) == "DequantizeLinear" for n in convs]
    assert not weight_from_dq[0] and not weight_from_dq[-1]
    assert all(weight_from_dq[1:-1]) and len(convs) == 2 + 2 + 2 * 2 + 2  # in, 2 down, 2 blocks, 2 up, out
    meta = json.loads({p.key: p.value for p in model.metadata_props}["imgtrans"])
    assert meta["arch"] == net.arch.to_dict() and meta["direction"] == "AtoB" and meta["precision"] == "int8"


def test_int8_model_translates_close_to_float32_at_any_size(int8_model: Path, net: ResnetGenerator) -> None:
    loaded = load_generator(int8_model)
    assert loaded.meta["backend"] == "onnxruntime" and loaded.meta["train_size"] == 48
    fast = Translator(loaded.net, loaded.meta, device="cpu")
    exact = Translator(net, device="cpu", config=TranslateConfig(precision="fp32"))
    for h, w, seed in [(50, 70, 7), (64, 33, 8)]:  # not multiples of 4, not calibration sizes
        rgb = photo(h, w, seed)
        got, want = fast.translate_rgb([rgb])[0], exact.translate_rgb([rgb])[0]
        assert got.shape == want.shape == rgb.shape
        assert 30.0 < psnr(got, want) < float("inf")  # close, and really computed in int8


def test_onnx_models_tile_large_images_with_shared_statistics(tmp_path: Path, int8_model: Path,
                                                                net: ResnetGenerator) -> None:
    from imgtrans.export import export_onnx
    from imgtrans.onnxrun import OnnxGenerator

    x = to_input(photo(72, 100, seed=3))
    tiled = TranslateConfig(tile=48, overlap=16, stats_size=40, precision="fp32")
    # float32: the rewritten graphs compute what the torch modules do with frozen statistics.
    fp32 = OnnxGenerator(export_onnx(net, tmp_path / "toy.onnx", {}))
    got = Translator(fp32, device="cpu", config=tiled).run_tensor(x)
    want = Translator(net, device="cpu", config=tiled).run_tensor(x)
    assert set(fp32._variants) == {"record", "apply"}  # the tiles really ran through the variants
    assert (got - want).abs().max() < 1e-4
    # int8: the tiles agree with the whole image as closely as the torch path's tiles do.
    q8 = OnnxGenerator(int8_model)
    whole = Translator(q8, device="cpu").run_tensor(x)
    tiles = Translator(q8, device="cpu", config=tiled).run_tensor(x)
    torch_whole = Translator(net, device="cpu", config=TranslateConfig(precision="fp32")).run_tensor(x)
    assert psnr(to_rgb(tiles), to_rgb(whole)) > psnr(to_rgb(want), to_rgb(torch_whole)) - 3
    assert not torch.equal(tiles, whole)
    # The pixel budget alone also sends large images to tiles (of 256 to 576 px).
    big = to_input(photo(300, 700, seed=4))
    budget = Translator(q8, device="cpu", config=TranslateConfig(pixel_budget=300 * 700 // 2)).run_tensor(big)
    big_whole = Translator(q8, device="cpu").run_tensor(big)
    assert budget.shape == big.shape and not torch.equal(budget, big_whole)
    ref = [Translator(net, device="cpu", config=TranslateConfig(pixel_budget=p, precision="fp32")).run_tensor(big)
           for p in (300 * 700 // 2, 300 * 700)]
    assert psnr(to_rgb(budget), to_rgb(big_whole)) > psnr(to_rgb(ref[0]), to_rgb(ref[1])) - 3


def test_translate_cli_runs_an_onnx_model_on_a_folder(tmp_path: Path, int8_model: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    src, dst = tmp_path / "in", tmp_path / "out"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(photo(45, 61, seed=1)).save(src / "a.jpg")
    Image.fromarray(photo(32, 40, seed=2)).save(src / "sub" / "b.png")
    assert run_cli(["translate", str(src), str(dst), "--weights", str(int8_model), "-q"]) == 0
    assert Image.open(dst / "a.jpg").size == (61, 45) and Image.open(dst / "sub" / "b.png").size == (40, 32)
    # Tiles work as with torch weights.
    Image.fromarray(photo(200, 290, seed=4)).save(src / "big.png")
    assert run_cli(["translate", str(src), str(tmp_path / "o2"), "--weights", str(int8_model), "--tile", "144",
                    "-q"]) == 0
    assert Image.open(tmp_path / "o2" / "big.png").size == (290, 200)


def test_int8_export_errors_are_one_line(tmp_path: Path, int8_model: Path, net: ResnetGenerator,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    meta = {"objective": "cyclegan", "direction": "AtoB", "arch": net.arch.to_dict()}
    weights = save_export(tmp_path / "w", "toy", net.state_dict(), meta)
    out = tmp_path / "x.onnx"
    (tmp_path / "empty").mkdir()
    cases = [
        (["--format", "onnx-int8"], "--calibrate"),
        (["--format", "onnx-int8", "--calibrate", str(tmp_path / "empty")], "no images to calibrate on"),
        (["--format", "onnx-int8", "--calibrate", str(tmp_path / "nowhere")], "folder not found"),
    ]
    for extra, expected in cases:
        assert run_cli(["export", "-m", str(weights), "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and expected in err
        assert not out.exists()
    # An ONNX model is an end product: neither exported again nor imported as torch weights.
    assert run_cli(["export", "-m", str(int8_model), "--out", str(out)]) == 2
    assert "cannot be exported again" in capsys.readouterr().err
    with pytest.raises(UserError, match="cannot be imported"):
        import_weights(int8_model, "toy-int8")
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(b"not an onnx file")
    with pytest.raises(UserError, match="damaged.onnx"):
        load_generator(damaged)


def test_a_batch_runs_concurrently_and_matches_one_by_one(int8_model: Path) -> None:
    from imgtrans.onnxrun import OnnxGenerator

    gen = OnnxGenerator(int8_model, threads=2)
    x = torch.stack([to_input(photo(40, 48, seed=s))[0] for s in range(3)])
    together = gen(x)
    alone = torch.cat([OnnxGenerator(int8_model, threads=1)(xi[None]) for xi in x])
    assert together.shape == x.shape and torch.allclose(together, alone, atol=1e-5)
    assert not torch.allclose(together[0], together[1])  # each image got its own output
    translator = Translator(gen, device="cpu", config=TranslateConfig(batch_size=4))
    assert translator._per_forward() == 4  # the Translator hands the backend whole batches


def test_calibration_takes_every_photo_up_to_the_limit_spread_evenly(tmp_path: Path) -> None:
    from imgtrans.quantize import calibration_images

    for i in range(5):
        Image.fromarray(np.full((30 + i, 40, 3), 40 * i, np.uint8)).save(tmp_path / f"p{i}.png")
    every = calibration_images(tmp_path, 16)
    assert len(every) == 5 and all(x.shape == (1, 3, 16, 16) for x in every)
    firsts = [round(float(x[0, 0, 0, 0]), 3) for x in calibration_images(tmp_path, 8, limit=3)]
    assert firsts == [round(40 * i / 127.5 - 1, 3) for i in (0, 2, 4)]  # first, middle, last
