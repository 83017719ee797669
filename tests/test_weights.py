"""Weights: official .pth conversion, exports, run folders, checkpoints, manifests, imports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from imgtrans import legacy
from imgtrans.errors import UserError
from imgtrans.nn.generators import ResnetArch, ResnetGenerator
from imgtrans.train.checkpoint import save_export
from imgtrans.weights import (
    import_weights,
    list_models,
    load_generator,
    model_info,
    read_manifest,
    repo_weights_dir,
    sha256_file,
)

KEYS = Path(__file__).resolve().parent / "official_resnet9_keys.txt"


@pytest.fixture(autouse=True)
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """Point both model folders into tmp_path so the repository's weights/ is never touched."""
    weights, home = tmp_path / "weights", tmp_path / "home"
    monkeypatch.setenv("IMGTRANS_WEIGHTS", str(weights))
    monkeypatch.setenv("IMGTRANS_HOME", str(home))
    return weights, home


def tiny(seed: int, **kwargs: object) -> ResnetGenerator:
    torch.manual_seed(seed)
    return ResnetGenerator(**{"ngf": 8, "n_blocks": 2, **kwargs}).eval()  # type: ignore[arg-type]


def image(channels: int = 3) -> torch.Tensor:
    return torch.randn(1, channels, 16, 16, generator=torch.Generator().manual_seed(7))


def run(net: torch.nn.Module, channels: int = 3) -> torch.Tensor:
    with torch.no_grad():
        return net(image(channels))


def cyclegan_meta(net: ResnetGenerator, direction: str) -> dict:
    return {"objective": "cyclegan", "network": "resnet_generator", "direction": direction,
            "official_name": {"AtoB": "G_A", "BtoA": "G_B"}[direction], "arch": net.arch.to_dict(),
            "train_size": 32, "data": {"a": "A", "b": "B"}}


def add_to_manifest(folder: Path, name: str, file: Path, direction: str = "AtoB") -> None:
    path = folder / "manifest.json"
    models = json.loads(path.read_text())["models"] if path.exists() else []
    models.append({"name": name, "task": "translate", "direction": direction, "file": file.name,
                   "sha256": sha256_file(file), "architecture": {}})
    path.write_text(json.dumps({"models": models}))


# ----- official .pth -------------------------------------------------------------------------
def test_official_pth_gives_bitwise_identical_output(tmp_path: Path) -> None:
    g = tiny(0)
    path = tmp_path / "latest_net_G_A.pth"
    torch.save(g.state_dict(), path)
    loaded = load_generator(str(path))
    assert not loaded.net.training
    assert all(p.dtype == torch.float32 for p in loaded.net.parameters())
    assert loaded.meta["source_format"] == "official" and loaded.meta["direction"] == "AtoB"
    assert loaded.meta["arch"] == g.arch.to_dict()
    assert torch.equal(run(loaded.net), run(g))


@pytest.mark.parametrize("ngf,n_blocks", [(8, 2), (16, 6)])
def test_infer_ngf_and_blocks(ngf: int, n_blocks: int) -> None:
    state = ResnetGenerator(ngf=ngf, n_blocks=n_blocks).state_dict()
    assert legacy.infer_resnet_arch(state) == ResnetArch(ngf=ngf, n_blocks=n_blocks)


def test_infer_full_size_official_layout_from_key_list(tmp_path: Path) -> None:
    rows = [line.split() for line in KEYS.read_text().splitlines() if line.strip()]
    state = {k: torch.randn(*(int(x) for x in shape.split("x"))) for k, shape in rows}
    path = tmp_path / "latest_net_G.pth"
    torch.save(state, path)
    del state
    loaded, arch = legacy.load_official(path)
    assert arch == ResnetArch(ngf=64, n_blocks=9)
    assert len(loaded) == len(rows)


@pytest.mark.parametrize("kwargs", [
    {"dropout": True},
    {"norm": "batch"},
    {"norm": "batch", "dropout": True, "n_blocks": 3},
    {"in_channels": 4, "out_channels": 1},
])
def test_variants_are_inferred_and_load_exactly(tmp_path: Path, kwargs: dict) -> None:
    g = tiny(1, **kwargs)
    with torch.no_grad():  # non-trivial running stats, so a batch-norm mix-up would show
        for m in g.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "g.pth"
    torch.save(g.state_dict(), path)
    loaded = load_generator(path)
    assert loaded.meta["arch"] == g.arch.to_dict()
    channels = kwargs.get("in_channels", 3)
    assert torch.equal(run(loaded.net, channels), run(g, channels))


def test_stale_running_stats_and_module_prefix_are_tolerated(tmp_path: Path) -> None:
    g = tiny(2)
    state = {f"module.{k}": v for k, v in g.state_dict().items()}
    for layer in ("model.2", "model.5", "model.10.conv_block.2", "model.11.conv_block.6"):
        state[f"module.{layer}.running_mean"] = torch.zeros(8)
        state[f"module.{layer}.running_var"] = torch.ones(8)
        state[f"module.{layer}.num_batches_tracked"] = torch.tensor(3)
    cleaned = legacy.clean_official(state)
    assert set(cleaned) == set(g.state_dict())
    path = tmp_path / "old.pth"
    torch.save(state, path)
    assert torch.equal(run(load_generator(path).net), run(g))


def _write_marker(path: str) -> None:
    Path(path).write_text("pickled code ran")


class Payload:
    """An object whose unpickling would run `_write_marker` (what a hostile checkpoint does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (_write_marker, (str(self.marker),))


def test_pickled_code_is_refused_and_never_runs(tmp_path: Path) -> None:
    proof = tmp_path / "proof"
    fn, args = Payload(proof).__reduce__()
    fn(*args)
    assert proof.exists()  # the payload really would write its marker if it were executed

    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    torch.save({"model.1.weight": torch.zeros(8, 3, 7, 7), "extra": Payload(marker)}, path)
    for load in (load_generator, legacy.load_official):
        with pytest.raises(UserError) as err:
            load(path)
        msg = str(err.value)
        assert "\n" not in msg and str(path) in msg and "refused" in msg and "_write_marker" in msg
    assert not marker.exists()


@pytest.mark.parametrize("content", [
    b"\x8b\x03random bytes \x00\xff\xfe" * 50,
    b"just some text\nnot a model\n",
    b"",
])
def test_unreadable_files_are_user_errors(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(UserError) as err:
        load_generator(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("obj,expect", [
    ({}, "plain state dict"),
    ({"model.1.weight": "text"}, "plain state dict"),
    ([torch.zeros(3)], "plain state dict"),
    ({"encoder.weight": torch.zeros(3, 3)}, "model.1.weight"),
    ({k: v for k, v in ResnetGenerator(ngf=8, n_blocks=2).state_dict().items() if k != "model.1.bias"},
     "missing model.1.bias"),
    ({**ResnetGenerator(ngf=8, n_blocks=2).state_dict(), "model.4.weight": torch.zeros(16, 8, 5, 5)},
     r"model.4.weight has shape \(16, 8, 5, 5\), expected \(16, 8, 3, 3\)"),
    ({**ResnetGenerator(ngf=8, n_blocks=2).state_dict(), "model.99.weight": torch.tensor(1.0)},
     "unexpected model.99.weight"),
])
def test_state_dicts_that_do_not_fit_are_user_errors(tmp_path: Path, obj: object, expect: str) -> None:
    path = tmp_path / "other.pth"
    torch.save(obj, path)
    with pytest.raises(UserError, match=expect) as err:
        legacy.load_official(path)
    assert str(err.value).startswith(str(path))


# ----- our exports, run folders, checkpoints -----------------------------------------------------
def test_export_loads_with_its_metadata(tmp_path: Path) -> None:
    g = tiny(3)
    path = save_export(tmp_path / "export", "AtoB", g.state_dict(), cyclegan_meta(g, "AtoB"))
    loaded = load_generator(path)
    assert loaded.meta["train_size"] == 32 and loaded.meta["direction"] == "AtoB"
    assert torch.equal(run(loaded.net), run(g))
    with pytest.raises(UserError, match="translate AtoB, not BtoA"):
        load_generator(path, "BtoA")


def test_run_folder_uses_export_for_the_direction(tmp_path: Path) -> None:
    ab, ba = tiny(4), tiny(5)
    run_dir = tmp_path / "run"
    save_export(run_dir / "export", "AtoB", ab.state_dict(), cyclegan_meta(ab, "AtoB"))
    save_export(run_dir / "export", "BtoA", ba.state_dict(), cyclegan_meta(ba, "BtoA"))
    assert torch.equal(run(load_generator(run_dir).net), run(ab))
    loaded = load_generator(str(run_dir), "BtoA")
    assert loaded.meta["direction"] == "BtoA"
    assert torch.equal(run(loaded.net), run(ba))


def test_run_folder_without_export_uses_newest_checkpoint(tmp_path: Path) -> None:
    old, ab, ba = tiny(6), tiny(7), tiny(8)
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save({"step": 1, "nets": {"G_AB": old.state_dict(), "G_BA": old.state_dict()}},
               run_dir / "checkpoints" / "step-00000001.pt")
    newest = run_dir / "checkpoints" / "step-00000002.pt"
    torch.save({"step": 2, "nets": {"G_AB": ab.state_dict(), "G_BA": ba.state_dict()},
                "opts": {}, "ranks": [{"rng": {"torch": torch.get_rng_state()}}]}, newest)
    (run_dir / "config.json").write_text(json.dumps({"objective": "cyclegan",
                                                     "model": {"crop_size": 48, "load_size": 56, "a": "x", "b": "y"}}))
    loaded = load_generator(run_dir)
    assert loaded.meta["steps"] == 2 and loaded.meta["train_size"] == 56  # the load size: the scale seen
    assert torch.equal(run(loaded.net), run(ab))
    assert torch.equal(run(load_generator(run_dir, "BtoA").net), run(ba))
    from_file = load_generator(newest, "BtoA")
    assert from_file.meta["official_name"] == "G_B" and torch.equal(run(from_file.net), run(ba))


def test_bad_run_folder_and_direction_are_user_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a training run folder"):
        load_generator(tmp_path / "empty")
    with pytest.raises(UserError, match="unknown direction"):
        load_generator(tmp_path / "empty", "AtoC")
    ckpt = tmp_path / "step-00000001.pt"
    torch.save({"nets": {"G": tiny(0).state_dict()}}, ckpt)
    with pytest.raises(UserError, match="no G_AB network"):
        load_generator(ckpt)


def test_fp16_safetensors_load_as_float32(tmp_path: Path) -> None:
    g = tiny(9)
    half = {k: v.half() for k, v in g.state_dict().items()}
    path = save_export(tmp_path, "half", half, cyclegan_meta(g, "AtoB"))
    loaded = load_generator(path)
    assert all(t.dtype == torch.float32 for t in loaded.net.state_dict().values())
    expected = ResnetGenerator(g.arch).eval()
    expected.load_state_dict({k: v.float() for k, v in half.items()})
    assert torch.equal(run(loaded.net), run(expected))
    assert not torch.equal(run(loaded.net), run(g))  # it really used the rounded weights


def test_bare_safetensors_with_official_keys_is_inferred(tmp_path: Path) -> None:
    g = tiny(10, ngf=16)
    path = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in g.state_dict().items()}, str(path))
    loaded = load_generator(path)
    assert loaded.meta["arch"]["ngf"] == 16 and torch.equal(run(loaded.net), run(g))


# ----- names, manifests, imports ---------------------------------------------------------------
def test_manifest_name_is_verified_by_sha256(dirs: tuple[Path, Path]) -> None:
    weights, _ = dirs
    g, other = tiny(11), tiny(12)
    file = save_export(weights, "horse2zebra", g.state_dict(), cyclegan_meta(g, "AtoB"))
    add_to_manifest(weights, "horse2zebra", file)
    loaded = load_generator("horse2zebra")
    assert loaded.meta["name"] == "horse2zebra" and "horse2zebra" in loaded.source
    assert torch.equal(run(loaded.net), run(g))

    save_export(weights, "horse2zebra", other.state_dict(), cyclegan_meta(other, "AtoB"))  # tamper
    with pytest.raises(UserError, match="sha256") as err:
        load_generator("horse2zebra")
    assert str(file) in str(err.value)


def test_unknown_name_lists_available_or_explains(dirs: tuple[Path, Path]) -> None:
    weights, _ = dirs
    with pytest.raises(UserError, match="no named models are installed yet") as err:
        load_generator("horse2zebra")
    assert "--weights PATH" in str(err.value)
    g = tiny(13)
    add_to_manifest(weights, "monet2photo", save_export(weights, "monet2photo", g.state_dict(),
                                                        cyclegan_meta(g, "AtoB")))
    with pytest.raises(UserError, match="translation models: monet2photo"):
        load_generator("horse2zebra")
    with pytest.raises(UserError, match="file not found"):
        load_generator("missing/file.pth")


def test_models_of_other_tasks_are_refused_by_name_and_by_file(dirs: tuple[Path, Path]) -> None:
    """An in-painter has the translation network's layout (8 input channels): it must be refused up
    front, not fail on every photo of a folder."""
    weights, _ = dirs
    g, eyes = tiny(14), tiny(15, in_channels=8)
    add_to_manifest(weights, "monet2photo", save_export(weights, "monet2photo", g.state_dict(),
                                                        cyclegan_meta(g, "AtoB")))
    file = save_export(weights, "eyes", eyes.state_dict(), {"objective": "eyes", "arch": eyes.arch.to_dict()})
    path = weights / "manifest.json"
    models = json.loads(path.read_text())["models"]
    models.append({"name": "eyes", "task": "eye-inpainting", "file": file.name, "sha256": sha256_file(file)})
    path.write_text(json.dumps({"models": models}))
    with pytest.raises(UserError, match=r"'eyes' is not a translation model \(task: eye-inpainting\); "
                                        "translation models: monet2photo"):
        load_generator("eyes")
    with pytest.raises(UserError, match="eyes weights, not a translation generator") as err:
        load_generator(file)
    assert str(file) in str(err.value) and "monet2photo" in str(err.value)
    assert load_generator("monet2photo").meta["name"] == "monet2photo"


def test_precedence_path_then_weights_then_home(tmp_path: Path, dirs: tuple[Path, Path],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    weights, home = dirs
    g_home, g_repo, g_path = tiny(14), tiny(15), tiny(16)
    src = tmp_path / "home_src.pth"
    torch.save(g_home.state_dict(), src)
    import_weights(src, "shared")
    assert torch.equal(run(load_generator("shared").net), run(g_home))

    file = save_export(weights, "shared", g_repo.state_dict(), cyclegan_meta(g_repo, "AtoB"))
    add_to_manifest(weights, "shared", file)
    assert torch.equal(run(load_generator("shared").net), run(g_repo))
    entries = [m for m in list_models() if m["name"] == "shared"]
    assert [(Path(m["location"]), m["active"]) for m in entries] == [(weights, True), (home, False)]
    assert Path(model_info("shared")["location"]) == weights

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    torch.save(g_path.state_dict(), cwd / "shared")
    monkeypatch.chdir(cwd)
    assert torch.equal(run(load_generator("shared").net), run(g_path))


def test_import_round_trip(tmp_path: Path, dirs: tuple[Path, Path]) -> None:
    _, home = dirs
    g = tiny(17, ngf=16)
    src = tmp_path / "latest_net_G_A.pth"
    torch.save(g.state_dict(), src)
    out = import_weights(src, "my-model.v1")
    assert out == home / "my-model.v1.safetensors" and out.with_suffix(".json").is_file()

    (entry,) = list_models()
    assert entry["name"] == "my-model.v1" and Path(entry["location"]) == home
    assert entry["size"] == out.stat().st_size and entry["sha256"] == sha256_file(out)
    assert entry["architecture"] == g.arch.to_dict() and entry["source"] == str(src.resolve())
    loaded = load_generator("my-model.v1")
    assert torch.equal(run(loaded.net), run(g))

    ab, ba = tiny(18), tiny(19)
    ckpt = tmp_path / "step-00000005.pt"
    torch.save({"step": 5, "nets": {"G_AB": ab.state_dict(), "G_BA": ba.state_dict()}}, ckpt)
    import_weights(ckpt, "my-model.v1", direction="BtoA")  # replaces the entry
    (entry,) = read_manifest(home)
    assert entry["direction"] == "BtoA" and entry["steps"] == 5
    assert torch.equal(run(load_generator("my-model.v1").net), run(ba))


@pytest.mark.parametrize("name", ["../escape", "a b", "", "x/y", "..", "naïve"])
def test_bad_import_names_are_refused(tmp_path: Path, dirs: tuple[Path, Path], name: str) -> None:
    _, home = dirs
    src = tmp_path / "g.pth"
    torch.save(tiny(0).state_dict(), src)
    with pytest.raises(UserError, match="invalid model name"):
        import_weights(src, name)
    assert not home.exists()


def test_import_refuses_name_shadowed_by_shipped_model(tmp_path: Path, dirs: tuple[Path, Path]) -> None:
    weights, home = dirs
    g = tiny(20)
    add_to_manifest(weights, "horse2zebra", save_export(weights, "horse2zebra", g.state_dict(),
                                                        cyclegan_meta(g, "AtoB")))
    src = tmp_path / "g.pth"
    torch.save(g.state_dict(), src)
    with pytest.raises(UserError, match="already used"):
        import_weights(src, "horse2zebra")
    assert not (home / "manifest.json").exists()


def test_broken_manifest_names_its_file(dirs: tuple[Path, Path]) -> None:
    weights, _ = dirs
    weights.mkdir()
    (weights / "manifest.json").write_text("{not json")
    with pytest.raises(UserError) as err:
        list_models()
    assert str(weights / "manifest.json") in str(err.value)


def test_default_weights_folder_is_the_repositorys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMGTRANS_WEIGHTS")
    folder = repo_weights_dir()
    assert folder == Path(__file__).resolve().parents[1] / "weights"
    assert isinstance(read_manifest(folder), list)  # the shipped manifest parses
