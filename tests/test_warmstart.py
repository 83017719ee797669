"""`imgtrans train --init NET=SOURCE`: new runs start from shipped models, exports, runs or checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import TINY
from imgtrans.cli import run_cli
from imgtrans.errors import UserError
from imgtrans.objectives.cyclegan import CycleGAN, CycleGANConfig
from imgtrans.train.checkpoint import latest_checkpoint, load_checkpoint, load_export
from imgtrans.train.ema import averaged_state
from imgtrans.train.launch import RunRequest, run
from imgtrans.train.warmstart import parse_init, warm_start
from imgtrans.weights import load_generator


def request(a: Path, b: Path, out: Path, **values: Any) -> RunRequest:
    merged = {**TINY, "model.a": str(a), "model.b": str(b), **values}
    return RunRequest(objective="cyclegan", values=merged, out=str(out), quiet=True)


def tiny_model(**changes: Any) -> CycleGAN:
    return CycleGAN(CycleGANConfig(ngf=8, ndf=8, n_blocks=2, n_layers_d=2, **changes))


def same(x: dict[str, torch.Tensor], y: dict[str, torch.Tensor]) -> bool:
    return x.keys() == y.keys() and all(torch.equal(x[k].float(), y[k].float()) for k in x)


@pytest.fixture(scope="module")
def source_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny finished run with a weight average, so its exports differ from its raw weights."""
    from conftest import make_domain

    root = tmp_path_factory.mktemp("source")
    a, b = make_domain(root / "data" / "A", 6, "stripes"), make_domain(root / "data" / "B", 5, "blobs")
    run_dir = run(request(a, b, root / "runs", **{"train.steps": 3, "train.ema": 0.5}))
    assert run_dir is not None
    return run_dir


def test_each_source_kind_loads_the_networks_it_names(source_run: Path) -> None:
    ckpt = load_checkpoint(latest_checkpoint(source_run))
    model = tiny_model()
    nets = model.networks()
    untouched = {k: v.clone() for k, v in nets["G_BA"].state_dict().items()}
    warm_start(nets, parse_init([f"G_AB={source_run / 'export' / 'AtoB.safetensors'}",
                                 f"D_A={source_run}", f"D_B={latest_checkpoint(source_run)}"]))
    exported, _ = load_export(source_run / "export" / "AtoB.safetensors")
    assert same(nets["G_AB"].state_dict(), exported)
    assert same(nets["D_A"].state_dict(), ckpt["nets"]["D_A"])
    assert same(nets["D_B"].state_dict(), ckpt["nets"]["D_B"])
    assert same(nets["G_BA"].state_dict(), untouched)  # not named: keeps its random start
    # A run folder gives a generator's weight average, as its exports do.
    warm_start(nets, {"G_BA": str(source_run)})
    assert same(nets["G_BA"].state_dict(), averaged_state(ckpt, "G_BA"))
    assert not same(nets["G_BA"].state_dict(), ckpt["nets"]["G_BA"])


def test_shipped_model_name_starts_a_generator() -> None:
    shipped = load_generator("horse2zebra")
    arch = shipped.net.arch
    model = CycleGAN(CycleGANConfig(ngf=arch.ngf, n_blocks=arch.n_blocks, residual=arch.residual,
                                    upsample=arch.upsample, down_pad=arch.down_pad))
    g = model.networks()["G_AB"]
    warm_start(model.networks(), {"G_AB": "horse2zebra"})
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        g.eval()
        assert torch.equal(g(x), shipped.net(x))
        assert (g(x) - x).abs().max() > 0.01  # a trained edit, not the residual net's identity start


def test_run_records_init_and_resumes_without_reloading(domains: tuple[Path, Path], source_run: Path,
                                                        tmp_path: Path) -> None:
    a, b = domains
    init = (f"G_AB={source_run}", f"G_BA={source_run}")
    # The smallest learning rate the settings accept: the run's first step barely moves the weights.
    run_dir = run(request(a, b, tmp_path / "runs", **{"train.steps": 1, "train.init": init, "model.lr": 1e-12}))
    config = json.loads((run_dir / "config.json").read_text())
    assert config["train"]["init"] == list(init)
    start = load_checkpoint(latest_checkpoint(source_run))
    after = load_checkpoint(latest_checkpoint(run_dir))["nets"]
    for net in ("G_AB", "G_BA"):
        source = averaged_state(start, net)
        assert all(torch.allclose(after[net][k].float(), source[k].float(), atol=1e-6) for k in source)
    fresh = tiny_model().networks()["D_A"].state_dict()  # not named: the seeded random start, one tiny step on
    assert all(torch.allclose(after["D_A"][k], fresh[k], atol=1e-6) for k in fresh)
    fresh_g = tiny_model().networks()["G_AB"].state_dict()
    assert not all(torch.allclose(after["G_AB"][k], fresh_g[k], atol=1e-6) for k in fresh_g)
    resumed = run(RunRequest(objective="cyclegan", values={"train.steps": 2}, resume=str(run_dir), quiet=True))
    assert resumed == run_dir and load_checkpoint(latest_checkpoint(run_dir))["step"] == 2


@pytest.mark.parametrize("case", ["arch", "unknown", "not-generator", "format", "twice", "missing", "resume"])
def test_bad_init_is_one_line(case: str, domains: tuple[Path, Path], source_run: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture) -> None:
    a, b = domains
    base = ["train", "cyclegan", "--a", str(a), "--b", str(b), "--out", str(tmp_path / "runs"), "--steps", "1",
            "-q", *[x for k, v in TINY.items() for x in ("--set", f"{k}={v}")]]
    args, expected = {
        "arch": (["--set", "ngf=16", "--init", f"G_AB={source_run}"], "differs from this run's in ngf=8"),
        "unknown": (["--init", f"G_X={source_run}"], "no network 'G_X'; its networks are D_A, D_B, G_AB, G_BA"),
        "not-generator": (["--init", "D_A=horse2zebra"], "do not fit this run's D_A"),
        "format": (["--init", "G_AB"], "expected NET=SOURCE"),
        "twice": (["--init", f"G_AB={source_run}", "--init", "G_AB=horse2zebra"], "names G_AB twice"),
        "missing": (["--init", "G_AB=nowhere/AtoB.safetensors"], "file not found"),
        "resume": (["--resume", str(source_run), "--init", f"G_AB={source_run}"], "pass one of them"),
    }[case]
    code = run_cli(["train", "cyclegan", *args, "-q"] if case == "resume" else [*base, *args])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1
    if case != "resume":
        assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # no run folder left


def test_arch_difference_names_the_settings_to_use(source_run: Path) -> None:
    model = tiny_model(residual=True)
    with pytest.raises(UserError, match=r"residual=False.*--set residual=false"):
        warm_start(model.networks(), {"G_AB": str(source_run / "export" / "AtoB.safetensors")})


def test_other_models_start_from_their_exports() -> None:
    # Not only translation generators: any network whose export fits, here a shipped domain judge.
    from imgtrans.objectives.judge import Judge, JudgeConfig
    from imgtrans.weights import verified_file

    nets = Judge(JudgeConfig()).networks()
    warm_start(nets, {"J": "judge-horse2zebra"})
    shipped, _ = load_export(verified_file("judge-horse2zebra")[0])
    assert same(nets["J"].state_dict(), shipped)
    with pytest.raises(UserError, match="unknown model"):
        warm_start(nets, {"J": "no-such-model"})


def test_d_warmup_holds_the_generators_while_the_discriminators_learn(domains: tuple[Path, Path],
                                                                      source_run: Path, tmp_path: Path) -> None:
    a, b = domains
    init = (f"G_AB={source_run}", f"G_BA={source_run}")
    start = load_checkpoint(latest_checkpoint(source_run))
    held = run(request(a, b, tmp_path / "held", **{"train.steps": 2, "train.init": init, "train.d_warmup": 2}))
    after = load_checkpoint(latest_checkpoint(held))["nets"]
    for net in ("G_AB", "G_BA"):
        assert same(after[net], averaged_state(start, net))  # bit for bit: learning rate 0
    fresh = tiny_model().networks()["D_A"].state_dict()
    assert not all(torch.allclose(after["D_A"][k], fresh[k], atol=1e-6) for k in fresh)  # D learned
    stats = [json.loads(line) for line in (held / "stats.jsonl").read_text().splitlines()]
    assert stats[-1]["lr"]["G"] == 0 and stats[-1]["lr"]["D"] > 0
    # After the warm-up the generators learn again.
    moved = run(request(a, b, tmp_path / "moved", **{"train.steps": 2, "train.init": init, "train.d_warmup": 1}))
    after = load_checkpoint(latest_checkpoint(moved))["nets"]
    assert not same(after["G_AB"], averaged_state(start, "G_AB"))


def test_d_warmup_needs_a_generator(tmp_path: Path) -> None:
    from conftest import make_domain

    a, b = make_domain(tmp_path / "A", 4, "blobs"), make_domain(tmp_path / "B", 4, "stripes")
    req = RunRequest(objective="judge", values={"model.a": str(a), "model.b": str(b), "model.size": 32,
                                                "train.steps": 1, "train.d_warmup": 5, "train.workers": 0},
                     out=str(tmp_path / "runs"), quiet=True)
    with pytest.raises(UserError, match="no generator to hold back"):
        run(req)
