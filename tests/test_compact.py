"""Compact run copies: fp16, no optimizer state, resumable at the same step and learning rate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import TINY
from imgtrans.cli import run_cli
from imgtrans.errors import UserError
from imgtrans.train.checkpoint import latest_checkpoint, load_checkpoint
from imgtrans.train.compact import MARKER, compact_run
from imgtrans.train.launch import RunRequest, run


def request(a: Path, b: Path, out: Path, until: int | None = None) -> RunRequest:
    values: dict[str, Any] = {**TINY, "model.a": str(a), "model.b": str(b), "train.steps": 6,
                              "train.ema": 0.9, "train.log_every": 1, "model.pool_size": 2}
    return RunRequest(objective="cyclegan", values=values, out=str(out), quiet=True, until=until)


def stats(run_dir: Path) -> dict[int, dict[str, Any]]:
    return {rec["step"]: rec for rec in map(json.loads, (run_dir / "stats.jsonl").read_text().splitlines())}


@pytest.fixture
def stopped_run(domains: tuple[Path, Path], tmp_path: Path) -> Path:
    """A 6-step run with a weight average, stopped with a checkpoint at step 3."""
    return run(request(*domains, tmp_path / "runs", until=3))


def test_compact_copy_keeps_every_network_in_fp16_without_optimizer_state(stopped_run: Path, tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    full_path = latest_checkpoint(stopped_run)
    assert run_cli(["train", "compact", str(stopped_run), str(tmp_path / "kept")]) == 0
    assert "continue with --resume" in capsys.readouterr().out
    path = latest_checkpoint(tmp_path / "kept")
    full, small = load_checkpoint(full_path), load_checkpoint(path)
    assert path.name == full_path.name and small["step"] == 3 and small["compact"] is True
    assert "opts" not in small and "scalers" not in small
    assert small["ranks"][0]["objective"] == {}  # the image pools are dropped
    assert torch.equal(small["ranks"][0]["rng"]["torch"], full["ranks"][0]["rng"]["torch"])
    for net, state in full["nets"].items():
        for key, value in state.items():
            assert small["nets"][net][key].dtype == torch.float16
            assert torch.allclose(small["nets"][net][key].float(), value, rtol=1e-3, atol=1e-4), f"{net}.{key}"
    assert small["ema"]["average"].keys() == full["ema"]["average"].keys()
    assert path.stat().st_size < 0.3 * full_path.stat().st_size
    assert (tmp_path / "kept" / "config.json").read_text() == (stopped_run / "config.json").read_text()
    assert json.loads((tmp_path / "kept" / MARKER).read_text())["step"] == 3


def test_resuming_a_compact_copy_continues_the_same_schedule(stopped_run: Path, domains: tuple[Path, Path],
                                                            tmp_path: Path) -> None:
    straight = run(request(*domains, tmp_path / "straight"))
    compact_run(stopped_run, tmp_path / "kept")
    resumed = run(RunRequest(objective="cyclegan", values={}, resume=str(tmp_path / "kept"), quiet=True))
    assert load_checkpoint(latest_checkpoint(resumed))["step"] == 6
    assert "opts" in load_checkpoint(latest_checkpoint(resumed))  # full checkpoints again from here on
    ours, theirs = stats(resumed), stats(straight)
    assert sorted(ours) == sorted(theirs) == [1, 2, 3, 4, 5, 6]  # the copied history goes on
    for step in (4, 5, 6):
        lr = {k: v for k, v in ours[step].items() if k.startswith("lr")}
        assert lr and lr == {k: v for k, v in theirs[step].items() if k.startswith("lr")}
        assert all(v == v for k, v in ours[step].items() if k.startswith("loss"))  # finite, not NaN
    assert (resumed / "export" / "AtoB.safetensors").is_file()


def test_compact_cli_message_on_resume(stopped_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    compact_run(stopped_run, tmp_path / "kept")
    assert run_cli(["train", "cyclegan", "--resume", str(tmp_path / "kept"), "--steps", "4"]) == 0
    assert "compact checkpoint: the optimizers start fresh" in capsys.readouterr().err


def test_compact_replaces_only_an_earlier_compact_copy(stopped_run: Path, tmp_path: Path) -> None:
    kept = tmp_path / "kept"
    compact_run(stopped_run, kept)
    (kept / "stats.jsonl").write_text("")
    compact_run(stopped_run, kept)  # an earlier, untouched copy is replaced whole
    assert (kept / "stats.jsonl").read_text() == (stopped_run / "stats.jsonl").read_text()
    assert sorted(p.name for p in (kept / "checkpoints").iterdir()) == ["step-00000003.pt"]
    # A run continued inside the copy has made it training state of its own: refused, kept.
    run(RunRequest(objective="cyclegan", values={}, resume=str(kept), quiet=True))
    before = sorted(p.name for p in (kept / "checkpoints").iterdir())
    with pytest.raises(UserError, match="not an untouched compact run copy"):
        compact_run(stopped_run, kept)
    assert sorted(p.name for p in (kept / "checkpoints").iterdir()) == before != ["step-00000003.pt"]
    other = tmp_path / "photos"
    other.mkdir()
    (other / "mine.jpg").write_bytes(b"user data")
    with pytest.raises(UserError, match="exists and is not an untouched compact run copy"):
        compact_run(stopped_run, other)
    assert (other / "mine.jpg").read_bytes() == b"user data"
    with pytest.raises(UserError, match="is the run itself"):
        compact_run(stopped_run, stopped_run)


def test_compact_of_a_folder_that_is_not_a_run_says_so(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run_cli(["train", "compact", str(tmp_path), str(tmp_path / "kept")]) == 2
    err = capsys.readouterr().err
    assert "not a training run folder" in err and "Traceback" not in err
    assert not (tmp_path / "kept").exists()
