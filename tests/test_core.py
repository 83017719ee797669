"""Training core with a minimal objective: phases, trainability, schedule, pool, guard, runtime."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from imgtrans.errors import UserError
from imgtrans.train.objective import Objective, ObjectiveBase, Phase
from imgtrans.train.pool import ImagePool
from imgtrans.train.runtime import Runtime, init_runtime, select_device
from imgtrans.train.schedule import lr_factor
from imgtrans.train.trainer import DivergedError, Trainer, TrainConfig, total_steps


class Points(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(k)
        return {"x": torch.randn(1, 4, 4, generator=g)}


class Toy(ObjectiveBase):
    """G maps noise to images, D scores them; records what the trainer does during each phase."""

    name = "toy"
    averaged = ("G",)

    def __init__(self, nan_steps: set[int] | None = None, every_d: int = 1) -> None:
        super().__init__({"G": nn.Conv2d(1, 1, 1), "D": nn.Conv2d(1, 1, 1)})
        self.calls: list[tuple[str, bool, bool]] = []
        self.nan_steps, self.every_d, self.n = nan_steps or set(), every_d, 0

    def phases(self) -> list[Phase]:
        return [Phase("G", ("G",), 0.1), Phase("D", ("D",), 0.1, every=self.every_d)]

    def dataset(self) -> Dataset:
        return Points()

    def loss(self, phase: str, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        g, d = self._nets["G"], self._nets["D"]
        self.calls.append((phase, g.weight.requires_grad, d.weight.requires_grad))
        self.n += 1
        score = self.nets["D"](self.nets["G"](batch["x"])).mean()
        loss = -score if phase == "G" else score
        if phase == "G" and (self.n - 1) in self.nan_steps:
            loss = loss * float("nan")
        return loss, {phase: loss.detach()}

    def sample(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"x": batch["x"], "y": self.nets["G"](batch["x"])}

    def export(self) -> dict[str, Any]:
        return {"G": (self._nets["G"].state_dict(), {"objective": "toy"})}

    @classmethod
    def build_inference(cls, meta: dict[str, Any]) -> nn.Module:
        return nn.Conv2d(1, 1, 1)


def make_trainer(tmp_path: Path, obj: Toy, **cfg: Any) -> Trainer:
    for sub in ("samples", "checkpoints", "export"):
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
    settings = {"steps": 4, "workers": 0, "log_every": 1, "sample_every": 0, "checkpoint_every": 0, **cfg}
    return Trainer(obj, TrainConfig(**settings), Runtime(torch.device("cpu")), tmp_path, quiet=True)


def test_toy_satisfies_protocol() -> None:
    assert isinstance(Toy(), Objective)


def test_phases_run_in_order_with_only_their_nets_trainable(tmp_path: Path) -> None:
    obj = Toy()
    g0, d0 = obj._nets["G"].weight.clone(), obj._nets["D"].weight.clone()
    make_trainer(tmp_path, obj).fit()
    assert obj.calls == [("G", True, False), ("D", False, True)] * 4
    assert not torch.equal(obj._nets["G"].weight, g0) and not torch.equal(obj._nets["D"].weight, d0)


def test_each_phase_updates_only_its_own_networks(tmp_path: Path) -> None:
    obj = Toy()
    trainer = make_trainer(tmp_path, obj, steps=1)
    d_before = obj._nets["D"].weight.clone()
    trainer._run_phase(trainer.phases[0], {"x": torch.randn(1, 1, 4, 4)}, 1.0)
    assert torch.equal(obj._nets["D"].weight, d_before)  # D got no gradient step in phase G


def test_phase_every_skips_steps(tmp_path: Path) -> None:
    obj = Toy(every_d=2)
    make_trainer(tmp_path, obj).fit()
    assert [c[0] for c in obj.calls] == ["G", "D", "G", "G", "D", "G"]


def test_lr_follows_schedule_each_step(tmp_path: Path) -> None:
    obj = Toy()
    trainer = make_trainer(tmp_path, obj, steps=4, decay_start=0.5)
    seen = []
    for _ in range(4):
        trainer.train_step({"x": torch.randn(1, 1, 4, 4)})
        seen.append(trainer.opts["G"].param_groups[0]["lr"])
    assert seen == pytest.approx([0.1, 0.1, 0.1, 0.05])


def test_sec_per_step_excludes_samples_and_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import time

    trainer = make_trainer(tmp_path, Toy(), steps=4, log_every=2, sample_every=2, checkpoint_every=100)
    monkeypatch.setattr(trainer, "save_samples", lambda: time.sleep(0.5))
    trainer.fit()
    lines = [json.loads(x) for x in (tmp_path / "stats.jsonl").read_text().splitlines()]
    # Step 2's samples run after its line is written, so their time belongs to the next window.
    assert lines[0]["sec_other"] == 0.0
    assert lines[1]["sec_other"] >= 0.5
    assert lines[1]["sec_per_step"] < 0.25  # two toy steps, without the half-second of samples
    assert lines[0]["threads"] == torch.get_num_threads()
    from imgtrans.train.records import run_cost

    cost = run_cost(tmp_path / "stats.jsonl")
    wall = sum(x["sec_per_step"] * 2 + x["sec_other"] for x in lines)
    assert cost.steps == 4 and cost.unthreaded == 0
    assert cost.hours == pytest.approx(wall / 3600) and cost.cpu_hours == pytest.approx(wall * torch.get_num_threads() / 3600)


def test_stats_samples_and_export_written(tmp_path: Path) -> None:
    import json

    trainer = make_trainer(tmp_path, Toy(), steps=4, log_every=2, sample_every=2, checkpoint_every=4)
    trainer.fit()
    lines = [json.loads(x) for x in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [2, 4]
    assert {"loss/G", "loss/D", "lr", "sec_per_step"} <= set(lines[0])
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["step-00000002.png", "step-00000004.png"]
    assert (tmp_path / "checkpoints" / "step-00000004.pt").exists()
    assert (tmp_path / "export" / "G.safetensors").exists() and (tmp_path / "export" / "G.json").exists()


def test_nonfinite_loss_skips_the_whole_step(tmp_path: Path) -> None:
    obj = Toy(nan_steps={2})  # the second G call (step 2) is NaN
    trainer = make_trainer(tmp_path, obj, steps=3, max_nonfinite=5)
    trainer.fit()
    assert trainer.nonfinite == 1 and trainer.step == 3
    # Step 2 ran G only (D skipped with the step); steps 1 and 3 ran both.
    assert [c[0] for c in obj.calls] == ["G", "D", "G", "G", "D"]
    assert all(torch.isfinite(p).all() for net in obj.networks().values() for p in net.parameters())


def test_too_many_nonfinite_losses_stop_with_clear_error(tmp_path: Path) -> None:
    obj = Toy(nan_steps=set(range(100)))  # every G call is NaN
    trainer = make_trainer(tmp_path, obj, steps=10, max_nonfinite=3)
    with pytest.raises(DivergedError, match="non-finite loss.*lower the learning rate"):
        trainer.fit()
    assert trainer.nonfinite == 4


def test_grad_clip_bounds_update(tmp_path: Path) -> None:
    obj = Toy()
    trainer = make_trainer(tmp_path, obj, steps=1, grad_clip=1e-3)
    w0 = obj._nets["G"].weight.clone()
    big = {"x": torch.full((1, 1, 4, 4), 1e4)}
    trainer._run_phase(trainer.phases[0], big, 1.0)
    # Adam's first step moves each weight by ~lr regardless of scale; clipping must keep grads finite.
    assert torch.isfinite(obj._nets["G"].weight).all()
    assert (obj._nets["G"].weight - w0).abs().max().item() == pytest.approx(0.1, rel=0.01)


def test_total_steps_from_epochs() -> None:
    assert total_steps(TrainConfig(steps=0, epochs=2, batch_size=3), epoch_len=10) == 7
    assert total_steps(TrainConfig(steps=5, epochs=2), epoch_len=10) == 5


def test_fit_until_stops_early_with_checkpoint(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, Toy(), steps=6)
    assert trainer.fit(until=2) is False
    assert trainer.step == 2 and (tmp_path / "checkpoints" / "step-00000002.pt").exists()


# ----- weight average (--set ema) -----------------------------------------------------

def test_weight_average_follows_the_ramped_decay_and_swaps_back() -> None:
    from imgtrans.train.ema import WeightAverage

    net = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.0)
    ema = WeightAverage({"G": net}, decay=0.5)
    expected = 0.0
    for value in (1.0, 2.0, 3.0):
        with torch.no_grad():
            net.weight.fill_(value)
        d = ema.current_decay()  # ramp (1 + n) / (10 + n): 1/10, 2/11, 3/12 (all below the cap 0.5)
        ema.update()
        expected = d * expected + (1 - d) * value
    assert expected == pytest.approx(0.25 * ((2 / 11) * 0.9 + (9 / 11) * 2.0) + 0.75 * 3.0)  # = 2.7
    assert float(ema.average[0]) == pytest.approx(expected)
    assert list(ema.state_dict()["average"]) == ["G.weight"]
    with ema.applied():
        assert float(net.weight.detach()) == pytest.approx(expected)
    assert float(net.weight.detach()) == 3.0  # the trained weight is back


def test_ema_exports_the_average_and_resumes_exactly(tmp_path: Path) -> None:
    from imgtrans.train.checkpoint import load_export

    torch.manual_seed(0)
    straight = make_trainer(tmp_path / "a", Toy(), steps=4, ema=0.9)
    straight.fit()
    exported, meta = load_export(tmp_path / "a" / "export" / "G.safetensors")
    assert meta["ema"] == 0.9
    assert torch.equal(exported["weight"], straight.ema.average[0])
    assert not torch.equal(exported["weight"], straight.raw["G"].weight.detach())  # not the raw weights

    torch.manual_seed(0)
    first = make_trainer(tmp_path / "b", Toy(), steps=4, ema=0.9)
    assert first.fit(until=2) is False
    second = make_trainer(tmp_path / "b", Toy(), steps=4, ema=0.9)
    second.resume(tmp_path / "b")
    second.fit()
    resumed, _ = load_export(tmp_path / "b" / "export" / "G.safetensors")
    assert second.ema.updates == 4
    assert torch.allclose(resumed["weight"], exported["weight"], atol=1e-7)


def test_ema_switched_on_at_resume_starts_from_the_loaded_weights(tmp_path: Path) -> None:
    plain = make_trainer(tmp_path, Toy(), steps=4)
    plain.fit(until=2)
    later = make_trainer(tmp_path, Toy(), steps=4, ema=0.99)
    later.resume(tmp_path)
    assert later.ema.updates == 0
    assert torch.equal(later.ema.average[0], plain.raw["G"].weight.detach())


def test_ema_needs_an_objective_that_names_its_generators(tmp_path: Path) -> None:
    class Plain(Toy):
        averaged = ()

    with pytest.raises(UserError, match="no generator to average"):
        make_trainer(tmp_path, Plain(), ema=0.999)
    with pytest.raises(UserError, match="below 1"):
        make_trainer(tmp_path, Toy(), ema=1.0)


class Terminated(Toy):
    """Receives SIGTERM during its `at`-th loss call, as a scheduler preempting the job would send."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def loss(self, phase: str, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.n + 1 == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().loss(phase, batch)


def test_sigterm_finishes_the_step_checkpoints_and_stops(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    trainer = make_trainer(tmp_path, Terminated(at=5), steps=10)  # 2 phases per step: call 5 is in step 3
    assert trainer.fit() is False
    assert trainer.step == 3 and (tmp_path / "checkpoints" / "step-00000003.pt").exists()
    assert signal.getsignal(signal.SIGTERM) is before  # the trainer's handler is gone afterwards
    resumed = make_trainer(tmp_path, Toy(), steps=10)
    resumed.resume(tmp_path)
    assert resumed.step == 3 and resumed.fit() is True and resumed.step == 10


def test_a_second_ctrl_c_aborts_at_once() -> None:
    from imgtrans.train.stopping import StopRequest

    request = StopRequest()
    request._handle(signal.SIGINT, None)
    assert request
    with pytest.raises(KeyboardInterrupt):
        request._handle(signal.SIGINT, None)


# ----- schedule -------------------------------------------------------------------------

def test_schedule_constant_then_linear_decay() -> None:
    factors = [lr_factor(s, 10, 0.5) for s in range(10)]
    assert factors[:5] == [1.0] * 5
    assert factors[5:] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])
    assert all(a >= b for a, b in zip(factors, factors[1:]))


def test_schedule_reference_shape_200_epochs() -> None:
    # 100 constant + 100 decaying epochs (one step per epoch here): last epoch keeps 1/100.
    assert lr_factor(99, 200, 0.5) == 1.0
    assert lr_factor(100, 200, 0.5) == 1.0
    assert lr_factor(199, 200, 0.5) == pytest.approx(0.01)


def test_schedule_no_decay() -> None:
    assert lr_factor(9, 10, 1.0) == 1.0


# ----- image pool ------------------------------------------------------------------------

def test_pool_fills_then_mixes_history() -> None:
    pool = ImagePool(3, seed=0)
    first = torch.arange(3.0).view(3, 1, 1, 1)
    assert torch.equal(pool.query(first), first)  # filling: returned as is
    returned = torch.cat([pool.query(torch.full((1, 1, 1, 1), 10.0 + i)) for i in range(40)])
    values = set(returned.flatten().tolist())
    assert values & {0.0, 1.0, 2.0} or values & {10.0 + i for i in range(39)}  # older images come back
    assert any(v != 10.0 + i for i, v in enumerate(returned.flatten().tolist()))
    assert len(pool.images) == 3


def test_pool_zero_passes_through() -> None:
    x = torch.randn(2, 3, 4, 4)
    assert ImagePool(0).query(x) is x


def test_pool_state_round_trip_reproduces_future() -> None:
    a = ImagePool(2, seed=5)
    for i in range(4):
        a.query(torch.full((1, 1, 2, 2), float(i)))
    b = ImagePool(2, seed=99)
    b.load_state_dict(a.state_dict())
    xs = [torch.full((1, 1, 2, 2), 100.0 + i) for i in range(10)]
    assert all(torch.equal(a.query(x), b.query(x)) for x in xs)


# ----- runtime ---------------------------------------------------------------------------

def test_device_selection() -> None:
    assert select_device("cpu").type == "cpu"
    auto = select_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else auto.type)
    with pytest.raises(UserError, match="--device"):
        select_device("potato")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            select_device("cuda")


def test_runtime_rejects_bad_amp() -> None:
    with pytest.raises(UserError, match="amp"):
        init_runtime("cpu", "fp8")
    with pytest.raises(UserError, match="fp16 needs a GPU"):
        init_runtime("cpu", "fp16")


def test_amp_hint_only_for_plain_fp32_on_native_bf16_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    from imgtrans.train import runtime

    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "native_cpu_bf16", lambda: True)
    hint = runtime.amp_hint(Runtime(cpu, amp="off"))
    assert hint is not None and "--set amp=bf16" in hint
    assert runtime.amp_hint(Runtime(cpu, amp="bf16")) is None
    assert runtime.amp_hint(Runtime(torch.device("cuda", 0), amp="off")) is None  # no CUDA call made
    monkeypatch.setattr(runtime, "native_cpu_bf16", lambda: False)
    assert runtime.amp_hint(Runtime(cpu, amp="off")) is None


def test_bf16_autocast_trains_on_cpu(tmp_path: Path) -> None:
    obj = Toy()
    trainer = Trainer(obj, TrainConfig(steps=2, workers=0, log_every=1, sample_every=0, checkpoint_every=0),
                      Runtime(torch.device("cpu"), amp="bf16"), tmp_path, quiet=True)
    with trainer.rt.autocast():
        y = obj.nets["G"](torch.randn(1, 1, 4, 4))
    assert y.dtype == torch.bfloat16
    trainer.fit()
    assert trainer.step == 2 and obj._nets["G"].weight.dtype == torch.float32
