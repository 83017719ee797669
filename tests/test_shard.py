"""Folder runs shared by torchrun processes: the split, the combined report, and 2-process CLI runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import photo as synthetic_photo
from imgtrans.cli import run_cli
from imgtrans.nn import ResnetGenerator, init_weights
from imgtrans.pipelines.folders import FolderReport, plan
from imgtrans.pipelines.shard import Shard, merge_reports, pixel_count, shard
from imgtrans.train.checkpoint import save_export
from imgtrans.train.runtime import TorchrunEnv, torchrun_env


# ----- the split ---------------------------------------------------------------------------

CASES = [
    ([5.0, 1.0, 1.0, 1.0, 1.0, 1.0], 2),
    ([1.0] * 7, 3),
    ([0.0] * 5, 2),
    (list(np.random.default_rng(0).integers(1, 10_000_000, 101).astype(float)), 4),
    ([3.0, 2.0], 5),  # more processes than files: some shares are empty
    ([], 3),
]


@pytest.mark.parametrize("weights,world", CASES)
def test_shares_are_disjoint_covering_and_sorted(weights: list[float], world: int) -> None:
    shares = shard(weights, world)
    assert len(shares) == world
    flat = [i for s in shares for i in s]
    assert sorted(flat) == list(range(len(weights)))  # every file exactly once
    assert all(s == sorted(s) for s in shares)  # each process works in plan (path) order


@pytest.mark.parametrize("weights,world", CASES)
def test_shares_are_balanced(weights: list[float], world: int) -> None:
    loads = [sum(weights[i] for i in s) for s in shard(weights, world)]
    # Greedy to the lightest share: no two shares differ by more than the heaviest file.
    assert max(loads) - min(loads) <= max(weights, default=0.0)


def test_equal_weights_split_by_count_and_big_files_spread() -> None:
    assert [len(s) for s in shard([1.0] * 7, 3)] == [3, 2, 2]
    assert [len(s) for s in shard([0.0] * 5, 2)] == [3, 2]  # unreadable headers still spread
    assert shard([9.0, 9.0, 1.0, 1.0], 2) == [[0, 2], [1, 3]]  # not both big files on one rank


def test_split_is_deterministic() -> None:
    weights = list(np.random.default_rng(1).integers(0, 50, 40).astype(float))  # many ties
    assert shard(weights, 3) == shard(list(weights), 3)
    assert shard(weights, 1) == [list(range(40))]
    with pytest.raises(ValueError):
        shard(weights, 0)


def test_pixel_count_reads_headers_only(tmp_path: Path) -> None:
    Image.new("RGB", (30, 20)).save(tmp_path / "a.png")
    (tmp_path / "bad.png").write_text("not an image")
    assert pixel_count(tmp_path / "a.png") == 600
    assert pixel_count(tmp_path / "bad.png") == 0 and pixel_count(tmp_path / "missing.png") == 0


def test_merge_reports_orders_by_path_and_keeps_the_slowest_time() -> None:
    a = FolderReport(converted=[Path("/o/c.png"), Path("/o/a.png")], failed=[(Path("/o/z.png"), "bad")], seconds=2.0)
    b = FolderReport(converted=[Path("/o/b.png")], failed=[(Path("/o/d.png"), "empty")], seconds=3.5)
    m = merge_reports([a, b])
    assert m.converted == [Path("/o/a.png"), Path("/o/b.png"), Path("/o/c.png")]
    assert m.failed == [(Path("/o/d.png"), "empty"), (Path("/o/z.png"), "bad")]
    assert m.seconds == 3.5 and not m.ok


def test_alone_the_shard_is_the_whole_run(tmp_path: Path) -> None:
    for i in range(3):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.png")
    alone = Shard()
    work, jobs = alone.plan(lambda: plan(tmp_path, tmp_path.parent / "out"))
    assert jobs == work.jobs and len(jobs) == 3
    assert alone.is_main and not alone.distributed and alone.device("auto") == "auto"
    report = FolderReport(converted=[Path("x")])
    assert alone.combine(report) is report and alone.gather(1) == [1]


def test_torchrun_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    assert torchrun_env() is None
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert torchrun_env() is None  # one process: nothing to share
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert torchrun_env() == TorchrunEnv(3, 4, 1, 4)  # no LOCAL_WORLD_SIZE: one machine
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert torchrun_env() == TorchrunEnv(3, 4, 1, 2)


@pytest.mark.parametrize("gpus,option,expected", [(0, "auto", "cpu"), (2, "auto", "cuda:1"), (2, "cuda", "cuda:1"),
                                                   (1, "auto", "cuda:0"), (2, "cpu", "cpu"), (2, "cuda:0", "cuda:0")])
def test_each_rank_gets_its_own_gpu(gpus: int, option: str, expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    chosen: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert Shard(TorchrunEnv(rank=3, world_size=4, local_rank=1, local_world_size=2)).device(option) == expected
    assert [str(d) for d in chosen] == ([expected] if expected.startswith("cuda") else [])


def test_thread_share(monkeypatch: pytest.MonkeyPatch) -> None:
    from imgtrans.pipelines import shard as sharing

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        sharing._share_threads(TorchrunEnv(0, 2, 0, 2))
        assert torch.get_num_threads() == 1  # the user's (or torchrun's) setting wins
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
        sharing._share_threads(TorchrunEnv(0, 8, 0, 4))
        assert torch.get_num_threads() == 2
        sharing._share_threads(TorchrunEnv(0, 16, 0, 16))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


# ----- two processes under torchrun ---------------------------------------------------------

# Runs the CLI and records this rank's exit code, so the test sees every rank's, not torchrun's.
WRAPPER = """
import os, sys
from imgtrans.cli import run_cli
code = run_cli(sys.argv[1:])
open(os.path.join(os.environ["RC_DIR"], "rc" + os.environ["RANK"]), "w").write(str(code))
sys.exit(code)
"""


def torchrun(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "RC_DIR": str(tmp)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp, timeout=300)


def photo(h: int, w: int, seed: int) -> np.ndarray:
    return synthetic_photo(h, w, seed, period=5.0)


def photo_folder(src: Path) -> list[str]:
    """Six small photos in two folders, every one a different size (so every run feeds the network
    one photo at a time, as the split does: batched and unbatched floats may differ by a level)."""
    names = []
    for i, (h, w) in enumerate([(24, 32), (40, 28), (36, 36), (20, 44), (48, 24), (28, 30)]):
        name = f"{'sub/' if i % 2 else ''}p{i}.png"
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo(h, w, i)).save(src / name)
        names.append(name)
    return names


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.mark.slow
def test_translate_two_processes_match_one_and_fail_together(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(0)
    net = init_weights(ResnetGenerator(ngf=8, n_blocks=2))
    meta = {"objective": "cyclegan", "direction": "AtoB", "arch": net.arch.to_dict(), "train_size": 32}
    weights = save_export(tmp_path / "w", "toy", net.state_dict(), meta)
    src = tmp_path / "in"
    names = photo_folder(src)
    (src / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_cli(["translate", str(src), str(one), "--weights", str(weights), "-q"]) == 1
    capsys.readouterr()
    # An output that already exists is skipped by the plan, before the split.
    (two / "sub").mkdir(parents=True)
    (two / names[1]).write_bytes((one / names[1]).read_bytes())
    wrapper = tmp_path / "wrap.py"
    wrapper.write_text(WRAPPER)
    p = torchrun([str(wrapper), "translate", str(src), str(two), "--weights", str(weights), "-q", "--device", "auto"],
                 tmp_path)
    # The bad file sits in one share, yet every rank exits 1.
    assert p.returncode != 0 and [(tmp_path / f"rc{r}").read_text() for r in (0, 1)] == ["1", "1"], p.stderr[-3000:]
    # Rank 0 prints the whole run's summary, once; 5 converted = no file done twice.
    assert p.stderr.count("converted 5, skipped 1 (already done), failed 1") == 1, p.stderr[-3000:]
    assert p.stderr.count(f"failed: {(src / 'sub' / 'broken.png').resolve()}:") == 1
    assert files(two) == files(one) == sorted(names)  # each output once, no temporary files left
    for name in names:
        assert np.array_equal(np.asarray(Image.open(two / name)), np.asarray(Image.open(one / name))), name


@pytest.mark.slow
def test_open_eyes_two_processes(tmp_path: Path) -> None:
    from imgtrans.objectives.eyes import EyeInpainting, EyesConfig

    state, meta = EyeInpainting(EyesConfig(ngf=8, n_blocks=1, size=64)).export()["inpainter"]
    inpainter = save_export(tmp_path / "w", "inpainter", state, meta)
    src = tmp_path / "in"
    names = photo_folder(src)
    out = tmp_path / "out"
    p = torchrun(["-m", "imgtrans", "open-eyes", str(src), str(out), "--weights", str(inpainter),
                  "--report", str(tmp_path / "report.json"), "-q"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stderr.count("0 faces found, 0 fixed") == 1 and p.stderr.count("converted 6, skipped 0") == 1
    assert files(out) == sorted(names)
    # No faces in these: every photo is copied byte for byte, by exactly one rank.
    assert all((out / n).read_bytes() == (src / n).read_bytes() for n in names)
    report = json.loads((tmp_path / "report.json").read_text())
    assert sorted(report["photos"]) == sorted(str((src / n).resolve()) for n in names)
    assert list(report["photos"]) == [str(j.src) for j in plan(src, out, overwrite=True).jobs]
