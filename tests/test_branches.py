"""Concurrent loss branches: same training as the sequential step, independent of thread timing."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import TINY
from imgtrans.objectives.cyclegan import CycleGAN, CycleGANConfig
from imgtrans.train.branches import BranchRunner, threads_per_branch
from imgtrans.train.checkpoint import latest_checkpoint, load_checkpoint
from imgtrans.train.launch import RunRequest, run
from imgtrans.train.runtime import init_runtime
from imgtrans.train.trainer import TrainConfig, Trainer


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def trainer(domains: tuple[Path, Path], run_dir: Path, branches: bool, **model: Any) -> Trainer:
    a, b = domains
    cfg = CycleGANConfig(a=str(a), b=str(b), ngf=8, ndf=8, n_blocks=2, n_layers_d=2, crop_size=32, load_size=36,
                         pool_size=2, **model)
    torch.manual_seed(0)
    t = Trainer(CycleGAN(cfg, seed=0), TrainConfig(steps=20, device="cpu", workers=0, branches=branches),
                init_runtime("cpu", "off"), run_dir, quiet=True)
    for net in t.raw.values():
        net.train()
    return t


def steps(t: Trainer, n: int) -> dict[str, torch.Tensor]:
    # Batches from the objective's own data, so the image pools fill and start swapping.
    for k in range(n):
        t.train_step({d: torch.stack([t.dataset[2 * k + j][d] for j in range(2)]) for d in ("A", "B")})
    return {f"{name}.{key}": v.clone() for name, net in t.raw.items() for key, v in net.state_dict().items()}


def test_concurrent_branches_train_like_the_sequential_step(domains: tuple[Path, Path], tmp_path: Path) -> None:
    with threads(2):
        together = trainer(domains, tmp_path / "c", branches=True)
        one_by_one = trainer(domains, tmp_path / "s", branches=False)
        assert together.concurrent and not one_by_one.concurrent
        start = {f"{n}.{k}": v.clone() for n, net in together.raw.items() for k, v in net.state_dict().items()}
        got = steps(together, 4)
        steps(one_by_one, 4)
        assert together._runners  # the branches really ran in the worker threads
    assert sum(not torch.equal(got[k], start[k]) for k in got) > len(got) // 2  # the steps trained
    # Only the order of float sums differs between the two ways. Compared through the networks'
    # outputs: a conv bias under instance norm gets a zero gradient up to rounding, which Adam
    # scales up to full steps in an arbitrary direction, yet the norm removes it from the output.
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1
    untrained = trainer(domains, tmp_path / "u", branches=False)
    with torch.no_grad():
        for name, net in together.raw.items():
            nets = [net, one_by_one.raw[name], untrained.raw[name]]
            y, y_seq, y0 = [n.eval()(x) for n in nets]
            assert torch.allclose(y, y_seq, atol=1e-4), name
            assert (y - y0).abs().max() > 1e-3, name  # far more than the tolerance above
    # The logged terms are the same set.
    assert together._acc.keys() == one_by_one._acc.keys() == {"G_AB", "G_BA", "cycle_A", "cycle_B", "idt_A",
                                                             "idt_B", "D_A", "D_B"}


def test_concurrent_branches_give_bit_identical_runs(domains: tuple[Path, Path], tmp_path: Path) -> None:
    with threads(2):
        first = steps(trainer(domains, tmp_path / "1", branches=True), 4)
        second = steps(trainer(domains, tmp_path / "2", branches=True), 4)
    start = {f"{n}.{k}": v for n, net in trainer(domains, tmp_path / "0", branches=True).raw.items()
             for k, v in net.state_dict().items()}
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], start[k]) for k in first)  # training changed the weights


def test_branches_stay_off_where_they_cannot_help_or_would_change_results(domains: tuple[Path, Path],
                                                                         tmp_path: Path) -> None:
    with threads(1):
        assert not trainer(domains, tmp_path / "one-core", branches=True).concurrent
    with threads(2):
        assert not trainer(domains, tmp_path / "off", branches=False).concurrent
        dropout = trainer(domains, tmp_path / "dropout", branches=True, dropout=True)
        # Dropout draws from the global random stream, which concurrent threads would interleave.
        assert dropout.obj.branches("G", {}) == [] and dropout.obj.branches("D", {}) == []
        steps(dropout, 1)
        assert not dropout._runners


def test_runner_workers_use_their_own_thread_count() -> None:
    with threads(2):
        runner = BranchRunner(2, 1)
        seen: list[int] = []

        def branch(name: str) -> Callable[[], tuple[torch.Tensor, dict[str, torch.Tensor]]]:
            # Each branch names its own term: the two run at once, so a shared counter would race.
            def run() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
                x = torch.ones(64, 64, requires_grad=True)
                seen.append(torch.get_num_threads())
                loss = (x @ x).sum()
                return loss, {name: loss.detach()}
            return run

        total, terms = runner.run([branch("n1"), branch("n2")], lambda loss: loss.backward(),
                                  contextlib.nullcontext)
        assert seen == [1, 1] and torch.get_num_threads() == 2  # the caller keeps its own
        assert total.item() == 2 * 64 ** 3 and set(terms) == {"n1", "n2"}
        runner.close()
    assert [threads_per_branch(c, 2) for c in (1, 2, 3, 8)] == [1, 1, 1, 4]


def test_resume_with_concurrent_branches_matches_the_straight_run(domains: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = domains
    values = {**TINY, "model.a": str(a), "model.b": str(b), "model.pool_size": 2, "train.steps": 6,
              "train.deterministic": True, "train.workers": 0}

    def request(out: str, until: int | None = None) -> RunRequest:
        return RunRequest(objective="cyclegan", values=values, out=str(tmp_path / out), quiet=True, until=until)

    with threads(2):
        straight = run(request("one"))
        first = run(request("two", until=3))
        resumed = run(RunRequest(objective="cyclegan", values={}, resume=str(first), quiet=True))
    nets = [load_checkpoint(latest_checkpoint(d))["nets"] for d in (straight, resumed)]
    for name in nets[0]:
        for key in nets[0][name]:
            assert torch.equal(nets[0][name][key], nets[1][name][key]), f"{name}.{key}"
    losses = [[json.loads(line)["loss/G_AB"] for line in (d / "stats.jsonl").read_text().splitlines()]
              for d in (straight, resumed)]
    assert losses[0] == losses[1]


@pytest.mark.parametrize("phase", ["G", "D"])
def test_branches_sum_to_the_phase_loss(phase: str) -> None:
    cfg = CycleGANConfig(ngf=8, ndf=8, n_blocks=1, n_layers_d=2, crop_size=32, pool_size=0)
    obj = CycleGAN(cfg)
    gen = torch.Generator().manual_seed(0)
    batch = {d: torch.rand(1, 3, 32, 32, generator=gen) * 2 - 1 for d in ("A", "B")}
    if phase == "D":
        obj.loss("G", batch)  # the D phase judges the fakes of the G phase
    total, terms = obj.loss(phase, batch)
    parts = [branch() for branch in obj.branches(phase, batch)]
    assert len(parts) == 2
    assert torch.allclose(total, sum(loss for loss, _ in parts), atol=1e-6)
    assert set(terms) == {k for _, t in parts for k in t}
