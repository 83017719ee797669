"""CycleGAN on the training core: outputs, exact resume, export round trip, CLI behaviour."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import TINY, data_root
from imgtrans.cli import run_cli
from imgtrans.errors import UserError
from imgtrans.objectives.cyclegan import DIRECTIONS, CycleGAN
from imgtrans.train.checkpoint import latest_checkpoint, load_checkpoint, load_export
from imgtrans.train.launch import RunRequest, run
from imgtrans.weights import load_generator


def request(a: Path, b: Path, out: Path, **values: Any) -> RunRequest:
    merged = {**TINY, "model.a": str(a), "model.b": str(b), **values}
    return RunRequest(objective="cyclegan", values=merged, out=str(out), quiet=True)


def final_nets(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    return load_checkpoint(latest_checkpoint(run_dir))["nets"]


def assert_nets_close(x: dict, y: dict, atol: float) -> None:
    assert x.keys() == y.keys()
    for net in x:
        for k in x[net]:
            diff = (x[net][k].float() - y[net][k].float()).abs().max().item()
            assert diff <= atol, f"{net}.{k} differs by {diff}"


def test_run_writes_every_output(domains: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = domains
    run_dir = run(request(a, b, tmp_path / "runs", **{"train.steps": 4, "train.sample_every": 2,
                                                      "train.checkpoint_every": 2}))
    assert run_dir is not None and run_dir.name == "00000-cyclegan-data"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["objective"] == "cyclegan" and config["model"]["ngf"] == 8 and config["train"]["steps"] == 4
    stats = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert [s["step"] for s in stats] == [2, 4]
    assert all(k in stats[-1] for k in ("loss/G_AB", "loss/cycle_A", "loss/idt_B", "loss/D_A", "lr"))
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == ["step-00000002.png", "step-00000004.png"]
    assert [p.name for p in sorted((run_dir / "checkpoints").iterdir())] == ["step-00000002.pt", "step-00000004.pt"]
    for direction, net in (("AtoB", "G_AB"), ("BtoA", "G_BA")):
        state, meta = load_export(run_dir / "export" / f"{direction}.safetensors")
        assert meta["direction"] == direction and meta["steps"] == 4 and meta["train_size"] == 36  # load_size
        assert meta["arch"] == {"in_channels": 3, "out_channels": 3, "ngf": 8, "n_blocks": 2,
                                "norm": "instance", "dropout": False, "residual": False,
                                "upsample": "transpose", "down_pad": "zero", "mask": False}
        assert meta["data"] == {"a": str(a), "b": str(b)} and "G_AB" in meta["last_losses"]
        assert json.loads((run_dir / "export" / f"{direction}.json").read_text()) == meta
        ckpt = final_nets(run_dir)[net]
        assert all(torch.equal(state[k], ckpt[k]) for k in state)


def test_two_scale_discriminators_train_and_resume(domains: tuple[Path, Path], tmp_path: Path) -> None:
    """`d_scales=2` gives each D a second, half-size PatchGAN that trains and survives resume."""
    a, b = domains
    cfg = {"train.steps": 4, "train.deterministic": True, "model.d_scales": 2}
    straight = run(request(a, b, tmp_path / "one", **cfg))
    nets = final_nets(straight)
    assert any(k.startswith("coarser.0.") for k in nets["D_B"])
    first = run(RunRequest(**{**request(a, b, tmp_path / "two", **cfg).__dict__, "until": 2}))
    start = final_nets(first)["D_A"]
    resumed = run(RunRequest(objective="cyclegan", values={}, resume=str(first), quiet=True))
    coarse = [k for k in start if k.startswith("coarser.0.") and k.endswith("weight")]
    assert coarse and any(not torch.equal(start[k], final_nets(resumed)["D_A"][k]) for k in coarse)
    assert_nets_close(nets, final_nets(resumed), atol=1e-6)


def test_d_augment_changes_training_and_resumes_exactly(domains: tuple[Path, Path], tmp_path: Path) -> None:
    """DiffAugment draws come from saved generators: N steps straight == N/2, stop, resume, N/2."""
    a, b = domains
    cfg = {"train.steps": 4, "train.deterministic": True, "model.d_augment": "color,translation,cutout"}
    straight = run(request(a, b, tmp_path / "one", **cfg))
    plain = run(request(a, b, tmp_path / "plain", **{**cfg, "model.d_augment": ""}))
    assert not torch.equal(final_nets(straight)["D_B"]["model.0.weight"], final_nets(plain)["D_B"]["model.0.weight"])
    first = run(RunRequest(**{**request(a, b, tmp_path / "two", **cfg).__dict__, "until": 2}))
    assert {"aug_A", "aug_B"} <= load_checkpoint(latest_checkpoint(first))["ranks"][0]["objective"].keys()
    resumed = run(RunRequest(objective="cyclegan", values={}, resume=str(first), quiet=True))
    assert_nets_close(final_nets(straight), final_nets(resumed), atol=1e-6)


def test_r1_penalty_joins_the_judges_losses_and_resumes_exactly(domains: tuple[Path, Path], tmp_path: Path) -> None:
    """`r1_gamma` adds gamma / 2 * R1 on the real images to each D's loss (logged as r1_A / r1_B),
    changes what the judges learn, and a stopped and resumed run equals the straight one."""
    from imgtrans.nn.losses import r1_penalty
    from imgtrans.objectives.cyclegan import CycleGANConfig

    cfg = CycleGANConfig(ngf=8, ndf=8, n_blocks=1, n_layers_d=2, crop_size=32, pool_size=0, r1_gamma=4.0)
    obj = CycleGAN(cfg)
    gen = torch.Generator().manual_seed(0)
    batch = {k: torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1 for k in "AB"}
    obj.loss("G", batch)
    total, terms = obj.loss("D", batch)
    for k in "AB":
        real = batch[k].clone().requires_grad_(True)
        want = 2.0 * r1_penalty(obj.networks()[f"D_{k}"](real), real)
        assert want.item() > 0 and terms[f"r1_{k}"].item() == pytest.approx(want.item(), rel=1e-5)
    assert total.item() == pytest.approx(sum(v.item() for v in terms.values()), rel=1e-5)

    a, b = domains
    steps = {"train.steps": 4, "train.deterministic": True}
    straight = run(request(a, b, tmp_path / "one", **steps, **{"model.r1_gamma": 10.0}))
    plain = run(request(a, b, tmp_path / "plain", **steps))
    assert not torch.equal(final_nets(straight)["D_A"]["model.0.weight"], final_nets(plain)["D_A"]["model.0.weight"])
    first = run(RunRequest(**{**request(a, b, tmp_path / "two", **steps, **{"model.r1_gamma": 10.0}).__dict__,
                              "until": 2}))
    resumed = run(RunRequest(objective="cyclegan", values={}, resume=str(first), quiet=True))
    assert_nets_close(final_nets(straight), final_nets(resumed), atol=1e-6)
    with pytest.raises(UserError, match="r1_gamma must be >= 0"):
        CycleGANConfig(r1_gamma=-1.0)


def test_relativistic_gan_mode_judges_fakes_against_reals_and_resumes_exactly(
        domains: tuple[Path, Path], tmp_path: Path) -> None:
    """`gan_mode=ralsgan`: each generator's adversarial term is the relativistic one against its
    judge's logits on the real images of the target domain; the judges' terms pair reals with the
    pooled fakes; a stopped and resumed run equals the straight one."""
    from imgtrans.nn import GANLoss
    from imgtrans.objectives.cyclegan import CycleGANConfig

    cfg = CycleGANConfig(ngf=8, ndf=8, n_blocks=1, n_layers_d=2, crop_size=32, pool_size=0, gan_mode="ralsgan")
    obj = CycleGAN(cfg)
    gen = torch.Generator().manual_seed(0)
    batch = {k: torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1 for k in "AB"}
    nets, gan = obj.networks(), GANLoss("ralsgan")
    _, g_terms = obj.loss("G", batch)
    with torch.no_grad():
        fake_b = nets["G_AB"](batch["A"])
        want_g = gan.fool(nets["D_B"](fake_b), nets["D_B"](batch["B"]))
        want_d = 0.5 * sum(gan.judge(nets["D_B"](batch["B"]), nets["D_B"](fake_b)))
    assert g_terms["G_AB"].item() == pytest.approx(want_g.item(), rel=1e-5)
    assert g_terms["G_AB"].item() != pytest.approx(GANLoss("lsgan")(nets["D_B"](fake_b), True).item(), rel=1e-3)
    _, d_terms = obj.loss("D", batch)
    assert d_terms["D_B"].item() == pytest.approx(want_d.item(), rel=1e-5)

    a, b = domains
    steps = {"train.steps": 4, "train.deterministic": True, "model.gan_mode": "ralsgan"}
    straight = run(request(a, b, tmp_path / "one", **steps))
    first = run(RunRequest(**{**request(a, b, tmp_path / "two", **steps).__dict__, "until": 2}))
    resumed = run(RunRequest(objective="cyclegan", values={}, resume=str(first), quiet=True))
    assert_nets_close(final_nets(straight), final_nets(resumed), atol=1e-6)


def test_feature_matching_joins_each_generators_terms_and_resumes_exactly(
        domains: tuple[Path, Path], tmp_path: Path) -> None:
    """`lambda_fm`: each generator gains lambda_fm x feature_matching between its judge's hidden
    features of its fakes and of the real target images (logged as fm_AB / fm_BA), which reaches
    the generator and changes what it learns; off by default; a stopped and resumed run equals the
    straight one."""
    from imgtrans.nn import GANLoss
    from imgtrans.nn.losses import feature_matching
    from imgtrans.objectives.cyclegan import CycleGANConfig

    cfg = CycleGANConfig(ngf=8, ndf=8, n_blocks=1, n_layers_d=2, crop_size=32, pool_size=0, lambda_fm=3.0)
    obj = CycleGAN(cfg)
    gen = torch.Generator().manual_seed(0)
    batch = {k: torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1 for k in "AB"}
    nets = obj.networks()
    total, terms = obj.loss("G", batch)
    with torch.no_grad():
        fake_b = nets["G_AB"](batch["A"])
        pred_fake, hidden_fake = nets["D_B"](fake_b, features=True)
        want = 3.0 * feature_matching(hidden_fake, nets["D_B"](batch["B"], features=True)[1])
    assert want.item() > 0 and terms["fm_AB"].item() == pytest.approx(want.item(), rel=1e-5)
    assert terms["G_AB"].item() == pytest.approx(GANLoss("lsgan")(pred_fake, True).item(), rel=1e-5)
    assert total.item() == pytest.approx(sum(v.item() for v in terms.values()), rel=1e-5)
    assert "fm_AB" not in CycleGAN(CycleGANConfig(ngf=8, ndf=8, n_blocks=1, crop_size=32)).loss("G", batch)[1]

    a, b = domains
    steps = {"train.steps": 4, "train.deterministic": True, "model.lambda_fm": 5.0}
    straight = run(request(a, b, tmp_path / "one", **steps))
    plain = run(request(a, b, tmp_path / "plain", **{**steps, "model.lambda_fm": 0.0}))
    assert not torch.equal(final_nets(straight)["G_AB"]["model.1.weight"], final_nets(plain)["G_AB"]["model.1.weight"])
    stats = json.loads((straight / "stats.jsonl").read_text().splitlines()[-1])
    assert stats["loss/fm_AB"] > 0 and stats["loss/fm_BA"] > 0
    first = run(RunRequest(**{**request(a, b, tmp_path / "two", **steps).__dict__, "until": 2}))
    resumed = run(RunRequest(objective="cyclegan", values={}, resume=str(first), quiet=True))
    assert_nets_close(final_nets(straight), final_nets(resumed), atol=1e-6)
    with pytest.raises(UserError, match="lambda_fm must be >= 0"):
        CycleGANConfig(lambda_fm=-1.0)


def test_export_rebuilds_the_trained_generator(domains: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = domains
    run_dir = run(request(a, b, tmp_path / "runs", **{"train.steps": 2}))
    state, meta = load_export(run_dir / "export" / "AtoB.safetensors")
    g = CycleGAN.build_inference(meta)
    g.load_state_dict(state, strict=True)
    trained = CycleGAN(CycleGAN.config_class(ngf=8, n_blocks=2))._nets["G_AB"]
    trained.load_state_dict(final_nets(run_dir)["G_AB"])
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(g(x), trained(x))


def test_ema_run_exports_both_averaged_generators(domains: tuple[Path, Path], tmp_path: Path) -> None:
    from imgtrans.train.ema import WeightAverage

    a, b = domains
    run_dir = run(request(a, b, tmp_path / "runs", **{"train.steps": 3, "train.ema": 0.5}))
    ckpt = load_checkpoint(latest_checkpoint(run_dir))
    assert ckpt["ema"]["updates"] == 3
    model = CycleGAN(CycleGAN.config_class(ngf=8, ndf=8, n_blocks=2, n_layers_d=2))
    for name, net in model.networks().items():
        net.load_state_dict(ckpt["nets"][name])
    average = WeightAverage({n: model.networks()[n] for n in CycleGAN.averaged}, 0.5)
    average.load_state_dict(ckpt["ema"])
    for direction, (net, _) in DIRECTIONS.items():
        state, meta = load_export(run_dir / "export" / f"{direction}.safetensors")
        assert meta["ema"] == 0.5
        assert any(not torch.equal(state[k], ckpt["nets"][net][k]) for k in state)  # not the raw weights
        with average.applied():
            assert all(torch.equal(state[k], v) for k, v in model.networks()[net].state_dict().items())
        from_checkpoint = load_generator(str(latest_checkpoint(run_dir)), direction=direction)
        assert all(torch.equal(state[k], v) for k, v in from_checkpoint.net.state_dict().items())


@pytest.mark.parametrize("form", [{"model.residual": True}, {"model.mask": True}])
def test_checkpoint_loads_the_generator_its_run_config_names(domains: tuple[Path, Path], tmp_path: Path,
                                                             form: dict[str, bool]) -> None:
    # residual, mask, upsample and down_pad cannot (all) be read off the weights: the run's config.json says them.
    a, b = domains
    run_dir = run(request(a, b, tmp_path / "runs", **{"train.steps": 2, **form,
                                                      "model.upsample": "resize", "model.down_pad": "reflect"}))
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    for direction in DIRECTIONS:
        exported = load_generator(str(run_dir / "export" / f"{direction}.safetensors"))
        checkpoint = load_generator(str(latest_checkpoint(run_dir)), direction=direction)
        assert checkpoint.meta["arch"] == exported.meta["arch"]
        for key, value in form.items():
            assert exported.meta["arch"][key.removeprefix("model.")] is value
        with torch.no_grad():
            assert torch.equal(checkpoint.net(x), exported.net(x))


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_matches_uninterrupted_run(domains: tuple[Path, Path], tmp_path: Path, workers: int) -> None:
    """N steps straight == N/2, stop, resume, N/2 (pool, dropout RNG, Adam, schedule restored)."""
    a, b = domains
    cfg = {"train.steps": 6, "train.deterministic": True, "train.workers": workers,
           "model.pool_size": 2, "model.dropout": True, "train.batch_size": 2}
    straight = run(request(a, b, tmp_path / "one", **cfg))
    first = run(RunRequest(**{**request(a, b, tmp_path / "two", **cfg).__dict__, "until": 3}))
    assert [s for s, _ in [(int(p.stem[5:]), p) for p in (first / "checkpoints").iterdir()]] == [3]
    resumed = run(RunRequest(objective="cyclegan", values={}, resume=str(first), quiet=True))
    assert resumed == first
    assert_nets_close(final_nets(straight), final_nets(resumed), atol=1e-6)
    s1 = (straight / "stats.jsonl").read_text().splitlines()
    s2 = (resumed / "stats.jsonl").read_text().splitlines()
    assert [json.loads(x)["loss/G_AB"] for x in s1] == pytest.approx([json.loads(x)["loss/G_AB"] for x in s2])


def test_resume_drops_stats_past_the_checkpoint(domains: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = domains
    run_dir = run(RunRequest(**{**request(a, b, tmp_path, **{"train.steps": 8}).__dict__, "until": 4}))
    with (run_dir / "stats.jsonl").open("a") as f:  # as if it crashed after logging step 6
        f.write(json.dumps({"step": 6, "loss/G_AB": 1.0}) + "\n")
    run(RunRequest(objective="cyclegan", values={}, resume=str(run_dir), quiet=True))
    steps = [json.loads(x)["step"] for x in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6, 8]


def test_changed_settings_apply_on_resume(domains: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = domains
    run_dir = run(request(a, b, tmp_path, **{"train.steps": 2}))
    run(RunRequest(objective="cyclegan", values={"train.steps": 4}, resume=str(run_dir), quiet=True))
    assert load_checkpoint(latest_checkpoint(run_dir))["step"] == 4


def test_resume_of_a_folder_that_is_not_a_run_says_so(domains: tuple[Path, Path]) -> None:
    a, _ = domains  # an image folder given to --resume by mistake
    with pytest.raises(UserError, match=f"^{a}: not a training run folder \\(no config.json\\)"):
        run(RunRequest(objective="cyclegan", values={}, resume=str(a), quiet=True))


# ----- CLI --------------------------------------------------------------------------------



def cli_run(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "imgtrans", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def tiny_sets() -> list[str]:
    out = []
    for k, v in TINY.items():
        out += ["--set", f"{k}={v}"]
    return out


def test_cli_train_and_resume(domains: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = domains
    p = cli_run(["train", "cyclegan", "--a", str(a), "--b", str(b), "--out", str(tmp_path / "runs"),
                 "--steps", "2", *tiny_sets()])
    assert p.returncode == 0, p.stderr
    run_dir = next((tmp_path / "runs").iterdir())
    assert (run_dir / "export" / "AtoB.safetensors").exists()
    p = cli_run(["train", "cyclegan", "--resume", str(run_dir), "--steps", "4", "-q"])
    assert p.returncode == 0, p.stderr
    assert load_checkpoint(latest_checkpoint(run_dir))["step"] == 4
    p = cli_run(["train", "cyclegan", "--resume", str(run_dir), "-q"])
    assert p.returncode == 2 and "already finished 4 steps" in p.stderr and "Traceback" not in p.stderr


def in_process(args: list[str], capsys: pytest.CaptureFixture) -> subprocess.CompletedProcess:
    """The same entry point as the console script, without paying a Python start-up per test."""
    code = run_cli(args)
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def test_cli_dry_run_prints_config_and_sizes(domains: tuple[Path, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    a, b = domains
    p = in_process(["train", "cyclegan", "--a", str(a), "--b", str(b), "--out", str(tmp_path / "runs"),
                 "--epochs", "2", "--set", "crop_size=32", "--set", "model.ngf=16", "--dry-run"], capsys)
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert info["dataset"]["sizes"] == {"A": 6, "B": 5} and info["total_steps"] == 12
    assert info["model"]["ngf"] == 16 and info["model"]["crop_size"] == 32
    assert not (tmp_path / "runs").exists()


def test_cli_config_file_layers_under_set(domains: tuple[Path, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    a, b = domains
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"model": {"ngf": 12, "n_blocks": 3}, "train": {"seed": 7}}))
    p = in_process(["train", "cyclegan", "--a", str(a), "--b", str(b), "--config", str(cfg),
                 "--set", "ngf=20", "--dry-run"], capsys)
    info = json.loads(p.stdout)
    assert (info["model"]["ngf"], info["model"]["n_blocks"], info["train"]["seed"]) == (20, 3, 7)


@pytest.mark.parametrize("case", ["missing", "empty", "unknown_key", "bad_value", "no_b", "all_bad", "negative_width",
                                  "zero_lr", "crop_over_load", "unknown_norm", "d_augment",
                                  "negative_lr_d"])
def test_cli_bad_inputs_give_one_line_errors(case: str, domains: tuple[Path, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    a, b = domains
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jpg").write_bytes(b"")
    (bad / "y.png").write_text("not an image")
    args = {
        "missing": ["--a", str(tmp_path / "nope"), "--b", str(b)],
        "empty": ["--a", str(empty), "--b", str(b)],
        "unknown_key": ["--a", str(a), "--b", str(b), "--set", "crop=3"],
        "bad_value": ["--a", str(a), "--b", str(b), "--set", "ngf=many"],
        "no_b": ["--a", str(a)],
        "all_bad": ["--a", str(bad), "--b", str(b)],
        "negative_width": ["--a", str(a), "--b", str(b), "--set", "ngf=-1"],
        "zero_lr": ["--a", str(a), "--b", str(b), "--set", "lr=0"],
        "crop_over_load": ["--a", str(a), "--b", str(b), "--set", "load_size=16", "--set", "crop_size=32"],
        "unknown_norm": ["--a", str(a), "--b", str(b), "--set", "norm=foo"],
        "d_augment": ["--a", str(a), "--b", str(b), "--set", "d_augment=color,flip"],
        "negative_lr_d": ["--a", str(a), "--b", str(b), "--set", "lr_d=-1e-4"],
    }[case]
    p = in_process(["train", "cyclegan", *args, "--out", str(tmp_path / "runs"), "--dry-run"], capsys)
    expected = {"missing": "nope: folder not found", "empty": "no readable images",
                "unknown_key": "unknown setting 'crop'", "bad_value": "cannot read 'many' as int",
                "no_b": "pass --a FOLDER and --b FOLDER", "all_bad": "no readable images",
                "negative_width": "ngf=-1: must be at least 1", "zero_lr": "lr=0: must be above 0",
                "crop_over_load": "crop_size 32 is larger than load_size 16; change it with --set",
                "unknown_norm": "unknown norm 'foo'", "d_augment": "d_augment: unknown policy flip",
                "negative_lr_d": "lr_d=-0.0001: must be at least 0"}[case]
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], p.stderr


def test_python_m_and_version() -> None:
    p = cli_run(["--version"])
    assert p.returncode == 0 and "imgtrans" in p.stdout


@pytest.mark.data
def test_horse2zebra_acceptance_command(tmp_path: Path) -> None:
    """The issue's acceptance run on the real data: 20 steps, then --resume continues it."""
    root = data_root() / "horse2zebra"
    p = cli_run(["train", "cyclegan", "--a", str(root / "trainA"), "--b", str(root / "trainB"),
                 "--out", str(tmp_path / "runs"), "--steps", "20", "--set", "crop_size=64", "--set", "ngf=8", "-q"])
    assert p.returncode == 0, p.stderr
    run_dir = next((tmp_path / "runs").iterdir())
    assert run_dir.name.endswith("cyclegan-horse2zebra")
    for rel in ("config.json", "stats.jsonl", "samples/step-00000020.png", "checkpoints/step-00000020.pt",
                "export/AtoB.safetensors", "export/BtoA.json"):
        assert (run_dir / rel).exists(), rel
    p = cli_run(["train", "cyclegan", "--resume", str(run_dir), "--steps", "24", "-q"])
    assert p.returncode == 0, p.stderr
    assert load_checkpoint(latest_checkpoint(run_dir))["step"] == 24


@pytest.mark.parametrize(("norm", "d_scales"), [("instance", 1), ("batch", 1), ("instance", 2)])
def test_losses_equal_the_reference_formulas(norm: str, d_scales: int) -> None:
    """Every loss term is the reference CycleGAN's, computed here from the same networks
    (with two discriminator scales, each adversarial term is the mean over the scales)."""
    from imgtrans.nn.losses import l1
    from imgtrans.objectives.cyclegan import CycleGANConfig

    cfg = CycleGANConfig(ngf=8, ndf=8, n_blocks=1, n_layers_d=2, crop_size=32, norm=norm, pool_size=0,
                         d_scales=d_scales)
    obj = CycleGAN(cfg)
    gen = torch.Generator().manual_seed(0)
    batch = {"A": torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1, "B": torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1}
    _, got_g = obj.loss("G", batch)
    _, got_d = obj.loss("D", batch)

    n, w = obj.networks(), cfg.lambda_cycle * cfg.lambda_identity
    fake_b, fake_a = n["G_AB"](batch["A"]), n["G_BA"](batch["B"])
    want = {
        "G_AB": obj.gan(n["D_B"](fake_b), True, for_d=False),
        "G_BA": obj.gan(n["D_A"](fake_a), True, for_d=False),
        "cycle_A": l1(n["G_BA"](fake_b), batch["A"]) * cfg.lambda_cycle,
        "cycle_B": l1(n["G_AB"](fake_a), batch["B"]) * cfg.lambda_cycle,
        "idt_A": l1(n["G_BA"](batch["A"]), batch["A"]) * w,
        "idt_B": l1(n["G_AB"](batch["B"]), batch["B"]) * w,
        "D_A": 0.5 * (obj.gan(n["D_A"](batch["A"]), True) + obj.gan(n["D_A"](fake_a.detach()), False)),
        "D_B": 0.5 * (obj.gan(n["D_B"](batch["B"]), True) + obj.gan(n["D_B"](fake_b.detach()), False)),
    }
    got = {**got_g, **got_d}
    assert got.keys() == want.keys()
    for k in want:
        assert abs(got[k].item() - want[k].item()) <= 1e-5 * max(1.0, abs(want[k].item())), k


def test_per_cycle_weights_scale_only_their_own_cycle() -> None:
    """lambda_cycle_b reweights cycle B alone; cycle A and the identity terms keep lambda_cycle."""
    from imgtrans.objectives.cyclegan import CycleGANConfig

    gen = torch.Generator().manual_seed(1)
    batch = {"A": torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1, "B": torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1}
    base = dict(ngf=8, ndf=8, n_blocks=1, n_layers_d=2, crop_size=32, pool_size=0, lambda_cycle=2.0)
    losses = {}
    for b_weight in (None, 0.5):
        torch.manual_seed(0)  # same initial networks for both configs
        obj = CycleGAN(CycleGANConfig(**base, lambda_cycle_b=b_weight))
        losses[b_weight] = obj.loss("G", batch)[1]
    same, scaled = losses[None], losses[0.5]
    assert scaled["cycle_B"].item() == pytest.approx(same["cycle_B"].item() * 0.25, rel=1e-5)
    assert scaled["cycle_B"].item() > 0
    for k in ("cycle_A", "idt_A", "idt_B", "G_AB", "G_BA"):
        assert scaled[k].item() == pytest.approx(same[k].item(), rel=1e-6), k


@pytest.mark.parametrize("objective", ["cyclegan", "cut"])
def test_lr_d_sets_the_discriminator_phase_apart(objective: str) -> None:
    """lr_d 0 gives both phases `lr`; a value of its own (the two time-scale rule) moves only D's."""
    from imgtrans.objectives.cut import CUTConfig
    from imgtrans.objectives.cyclegan import CycleGANConfig

    make = CycleGANConfig if objective == "cyclegan" else CUTConfig
    same = make(lr=1e-4, beta1=0.0, beta2=0.9).gan_phases(("G",), ("D",))
    apart = make(lr=1e-4, lr_d=4e-4).gan_phases(("G",), ("D",))
    assert [(p.name, p.nets, p.lr, p.betas) for p in same] == [("G", ("G",), 1e-4, (0.0, 0.9)),
                                                              ("D", ("D",), 1e-4, (0.0, 0.9))]
    assert [(p.name, p.lr) for p in apart] == [("G", 1e-4), ("D", 4e-4)]


def test_lr_d_reaches_the_discriminator_optimizer(domains: tuple[Path, Path], tmp_path: Path) -> None:
    """The logged per-phase LR of a run with lr_d is the one its Adam used."""
    a, b = domains
    run_dir = run(request(a, b, tmp_path / "runs", **{"train.steps": 2, "train.checkpoint_every": 2,
                                                      "model.lr": 1e-4, "model.lr_d": 3e-4}))
    assert run_dir is not None
    stats = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    lr = stats[-1]["lr"]
    assert lr["G"] == pytest.approx(1e-4) and lr["D"] == pytest.approx(3e-4)
    opts = load_checkpoint(latest_checkpoint(run_dir))["opts"]
    assert opts["G"]["param_groups"][0]["lr"] == pytest.approx(1e-4)
    assert opts["D"]["param_groups"][0]["lr"] == pytest.approx(3e-4)
