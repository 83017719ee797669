"""Shipping weights: fp16 only when lossless enough, the file, sha256 and manifest entry, loading by name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from imgtrans import ship as ship_mod
from imgtrans.cli import run_cli
from imgtrans.errors import UserError
from imgtrans.nn import ResnetGenerator, init_weights
from imgtrans.nn.generators import ResnetArch
from imgtrans.train.checkpoint import load_export, save_export
from imgtrans.weights import load_generator, read_manifest, sha256_file


@pytest.fixture(autouse=True)
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    weights = tmp_path / "weights"
    monkeypatch.setenv("IMGTRANS_WEIGHTS", str(weights))
    monkeypatch.setenv("IMGTRANS_HOME", str(tmp_path / "home"))
    return weights


def export(tmp_path: Path, objective: str = "cyclegan", in_channels: int = 3) -> tuple[Path, ResnetGenerator]:
    torch.manual_seed(0)
    net = ResnetGenerator(ResnetArch(in_channels=in_channels, ngf=8, n_blocks=2))
    init_weights(net, 0.02)
    meta = {"objective": objective, "network": "resnet_generator", "arch": net.arch.to_dict(), "steps": 7,
            "train_size": 36}
    if objective == "cyclegan":
        meta["direction"] = "AtoB"
    else:
        del meta["train_size"]  # the in-painter's export says `size`, as objectives/eyes.py writes it
        meta.update({"size": 64, "box_spec": {"width": 0.6, "height": 0.4, "dy": 0.0}, "template": "arcface5"})
    return save_export(tmp_path / "run" / "export", "AtoB", net.state_dict(), meta), net.eval()


def test_ship_stores_fp16_checks_it_and_loads_by_name(tmp_path: Path, dirs: Path) -> None:
    path, net = export(tmp_path)
    metrics = tmp_path / "m.json"
    metrics.write_text(json.dumps({"kid": 0.01}))
    code = run_cli(["weights", "ship", str(path), "--name", "tiny2b", "--data", "synthetic", "--command", "make it",
                    "--cpu-hours", "0.5", "--metrics", str(metrics), "--licence", "CC0"])
    assert code == 0
    [entry] = read_manifest(dirs)
    assert entry["name"] == "tiny2b" and entry["storage"] == "fp16" and entry["task"] == "translate"
    assert entry["sha256"] == sha256_file(dirs / entry["file"]) and entry["metrics"] == {"kid": 0.01}
    assert entry["steps"] == 7 and entry["train_size"] == 36 and entry["cpu_hours"] == 0.5
    assert 0 < entry["fp16_max_diff"] < ship_mod.FP16_MAX_DIFF
    state, meta = load_export(dirs / entry["file"])
    assert all(v.dtype == torch.float16 for v in state.values()) and meta["storage"] == "fp16"
    loaded = load_generator("tiny2b")
    x = ship_mod.probe_inputs(meta, 64)[0]
    with torch.no_grad():
        assert float((loaded.net(x) - net(x)).abs().max()) / 2 < ship_mod.FP16_MAX_DIFF
    # Shipping again under the same name replaces the entry, never duplicates it.
    assert run_cli(["weights", "ship", str(path), "--name", "tiny2b", "--data", "d", "--command", "c",
                    "--cpu-hours", "1", "--no-fp16"]) == 0
    [entry] = read_manifest(dirs)
    assert entry["storage"] == "fp32" and "fp16_max_diff" not in entry
    assert load_export(dirs / entry["file"])[0]["model.1.weight"].dtype == torch.float32


def test_fp16_kept_only_below_the_bound(tmp_path: Path, dirs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, net = export(tmp_path)
    state = {k: v.half().float() for k, v in net.state_dict().items()}
    inputs = ship_mod.probe_inputs({"objective": "cyclegan"}, 32)
    build = lambda: ResnetGenerator(net.arch)  # noqa: E731
    assert ship_mod.fp16_difference(state, build, inputs) == 0.0  # already fp16-exact
    assert ship_mod.fp16_difference(net.state_dict(), build, inputs) > 0.0
    monkeypatch.setattr(ship_mod, "FP16_MAX_DIFF", 0.0)
    entry = ship_mod.ship(ship_mod.ShipRequest(export=path, name="strict", folder=dirs, probe_size=32))
    assert entry["storage"] == "fp32"


def test_ship_inpainter_probes_masked_faces(tmp_path: Path, dirs: Path) -> None:
    from imgtrans.faces.inpaint import load_inpainter

    path, _ = export(tmp_path, objective="eyes", in_channels=8)
    inputs = ship_mod.probe_inputs(load_export(path)[1], 32)
    assert inputs[0].shape == (1, 8, 64, 64) and np.isclose(float(inputs[0][0, 7].mean()), 1.0)
    entry = ship_mod.ship(ship_mod.ShipRequest(export=path, name="eyes", folder=dirs, fields={"data": "x"}))
    assert entry["task"] == "eye-inpainting" and "direction" not in entry and entry["data"] == "x"
    assert entry["train_size"] == 64  # the in-painter's aligned face size
    assert load_inpainter("eyes").meta["name"] == "eyes"


def test_ship_face_model_probes_latents_and_keeps_its_directions(tmp_path: Path, dirs: Path) -> None:
    from imgtrans.objectives.dcgan import DCGANArch, Generator
    from imgtrans.pipelines.latent import latents, load_face_model

    torch.manual_seed(0)
    arch = DCGANArch(nz=16, ngf=8, ndf=8, size=16)
    net = Generator(arch, track_stats=True)
    init_weights(net, 0.02)
    unit = (torch.ones(16) / 4).tolist()
    meta = {"objective": "dcgan", "network": "dcgan_generator", "arch": arch.to_dict(), "train_size": 16,
            "steps": 3, "directions": {"male": unit}}
    path = save_export(tmp_path / "run" / "export", "faces", net.state_dict(), meta)
    inputs = ship_mod.probe_inputs(meta, 32)
    assert sum(len(z) for z in inputs) == ship_mod.PROBE_LATENTS and inputs[0].shape[1] == 16
    entry = ship_mod.ship(ship_mod.ShipRequest(export=path, name="tinyfaces", folder=dirs))
    assert entry["task"] == "face-generation" and entry["storage"] == "fp16" and entry["train_size"] == 16
    assert 0 < entry["fp16_max_diff"] < ship_mod.FP16_MAX_DIFF
    model = load_face_model("tinyfaces")
    assert torch.equal(model.directions["male"], torch.tensor(unit))  # metadata, not rounded to fp16
    z = latents([1, 2], 16)
    with torch.no_grad():
        assert float((model.generate(z) - net.eval()(z)).abs().max()) / 2 < ship_mod.FP16_MAX_DIFF


def test_ship_refuses_what_it_cannot_ship(tmp_path: Path, dirs: Path) -> None:
    path, _ = export(tmp_path)
    with pytest.raises(UserError, match="invalid model name"):
        ship_mod.ship(ship_mod.ShipRequest(export=path, name="../x", folder=dirs))
    state, meta = load_export(path)
    other = save_export(tmp_path, "judge", state, {**meta, "objective": "judge"})
    with pytest.raises(UserError, match="not an exported imgtrans generator"):
        ship_mod.ship(ship_mod.ShipRequest(export=other, name="j", folder=dirs))
    bad = tmp_path / "m.json"
    bad.write_text("{")
    assert run_cli(["weights", "ship", str(path), "--name", "n", "--data", "d", "--command", "c", "--cpu-hours", "1",
                    "--metrics", str(bad)]) == 2
    assert read_manifest(dirs) == []


def test_recorded_run_settings_apply_to_translate_unless_overridden(tmp_path: Path, dirs: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    from imgtrans.pipelines.translate import TranslateConfig, Translator

    path, net = export(tmp_path)
    base = ["weights", "ship", str(path), "--name", "tiny2b", "--data", "d", "--command", "c", "--cpu-hours", "1"]
    assert run_cli([*base, "--default-keep-detail"]) == 2  # keeping detail needs a smaller run size
    assert "--default-size" in capsys.readouterr().err
    assert run_cli([*base, "--default-size", "big"]) == 2
    assert run_cli([*base, "--default-size", "train", "--default-keep-detail"]) == 0
    assert read_manifest(dirs)[0]["defaults"] == {"size": "train", "keep_detail": True}
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(src / "p.png")
    capsys.readouterr()
    assert run_cli(["translate", str(src), str(tmp_path / "out"), "-m", "tiny2b", "-q"]) == 0
    assert "using its recorded settings --size train --keep-detail" in capsys.readouterr().err
    loaded = load_generator("tiny2b")
    recorded = Translator(loaded.net, device="cpu", config=TranslateConfig(size=36, keep_detail=True))
    native = Translator(loaded.net, device="cpu", config=TranslateConfig())
    got = np.asarray(Image.open(tmp_path / "out" / "p.png"))
    assert np.array_equal(got, recorded(rgb)) and not np.array_equal(got, native(rgb))
    # Flags on the command line win, and nothing is announced.
    assert run_cli(["translate", str(src), str(tmp_path / "out0"), "-m", "tiny2b", "--size", "0", "-q"]) == 0
    assert "recorded settings" not in capsys.readouterr().err
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out0" / "p.png")), native(rgb))
    # The Python API applies the same recorded settings.
    import imgtrans

    assert imgtrans.load("tiny2b", device="cpu").config == recorded.config
    assert imgtrans.load("tiny2b", device="cpu", size=0).config == native.config
    # So does `eval translate`: its figures are of what `translate -m tiny2b` gives, as the manifest's.
    from imgtrans.eval.translate import evaluate_translation, format_table

    scored = evaluate_translation("tiny2b", src, src, device="cpu", fid=False)
    assert scored["model"]["run_size"] == {"AtoB": 36} and scored["model"]["keep_detail"] == {"AtoB": True}
    assert scored["model"]["recorded_settings"] == {"AtoB": ["--size train", "--keep-detail"]}
    assert "(run at short side AtoB 36 with detail kept)" in format_table(scored)
    scored = evaluate_translation("tiny2b", src, src, device="cpu", fid=False, size=0)
    assert scored["model"]["run_size"] == {"AtoB": 0} and scored["model"]["keep_detail"] == {"AtoB": False}
    assert "run at" not in format_table(scored).splitlines()[0]


def test_cpu_hours_auto_sums_the_runs_stats(tmp_path: Path, dirs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = export(tmp_path)
    base = ["weights", "ship", str(path), "--name", "tiny2b", "--data", "d", "--command", "c", "--cpu-hours"]
    assert run_cli([*base, "auto"]) == 2  # no stats.jsonl beside the export's run folder
    assert "stats.jsonl: not found" in capsys.readouterr().err
    lines = [  # an old line (no threads, no sec_other), then two of a run at 2 threads
        {"step": 10, "sec_per_step": 0.9},
        {"step": 20, "sec_per_step": 1.0, "sec_other": 36.0, "threads": 2},
        {"step": 30, "sec_per_step": 1.8, "sec_other": 0.0, "threads": 2},
    ]
    (tmp_path / "run" / "stats.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert run_cli([*base, "auto"]) == 0
    wall = 9 + (10 + 36) + 18
    assert read_manifest(dirs)[0]["cpu_hours"] == round((9 + 2 * (46 + 18)) / 3600, 2)
    out = capsys.readouterr().out
    assert f"{wall / 3600:.2f} h wall" in out and "1 lines without a thread count" in out
    assert run_cli([*base, "lots"]) == 2
    assert "give a number of hours or 'auto'" in capsys.readouterr().err
    (tmp_path / "run" / "stats.jsonl").write_text('{"step": 10}\n')
    assert run_cli([*base, "auto"]) == 2
    assert "stats.jsonl:1: not a stats line" in capsys.readouterr().err
