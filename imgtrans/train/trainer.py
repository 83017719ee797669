"""The phase loop: optimizers, trainability, LR schedule, guards, cadence and exact resume."""

from __future__ import annotations

import contextlib
import hashlib
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, default_collate
from tqdm import tqdm

from imgtrans.data.stream import StreamSampler
from imgtrans.errors import UserError
from imgtrans.train.branches import BranchRunner, threads_per_branch
from imgtrans.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    save_export,
    set_rng_state,
)
from imgtrans.train.compact import is_compact, widen
from imgtrans.train.ema import WeightAverage
from imgtrans.train.objective import Objective, Phase
from imgtrans.train.records import StatsLog, flatten_figures, save_grid
from imgtrans.train.runtime import Runtime, frozen_sync
from imgtrans.train.schedule import lr_factor
from imgtrans.train.stopping import StopRequest, stop_on_signals


@dataclass(frozen=True)
class TrainConfig:
    """How long and how a model trains; shared by every objective."""

    steps: int = 0  # 0: derive from epochs
    epochs: float = 200.0  # the reference CycleGAN's 100 constant + 100 decay epochs
    batch_size: int = 1  # global batch, split evenly over processes
    decay_start: float = 0.5  # fraction of steps at constant LR before linear decay
    seed: int = 0
    deterministic: bool = False
    amp: str = "off"  # off | bf16 | fp16
    device: str = "auto"
    grad_clip: float = 0.0  # max global grad norm per phase; 0 disables
    max_nonfinite: int = 20  # skipped steps tolerated before stopping
    log_every: int = 10
    sample_every: int = 500
    checkpoint_every: int = 1000
    # Steps between the objective's held-out evaluations (eval.jsonl; e.g. a translation run's
    # --test-a/--test-b figures); 0: only at the end (eval.json).
    eval_every: int = 0
    keep_checkpoints: int = 2
    sample_count: int = 4
    workers: int = 2
    time_limit: float = 0.0  # minutes; checkpoint and stop cleanly after this long (0: no limit)
    ema: float = 0.0  # decay of a weight average of the generators, used for samples and exports; 0: off
    # On CPU without DDP, run an objective's independent loss branches (CycleGAN: its A and B
    # halves) in concurrent threads that split the cores (train/branches.py). Same results.
    branches: bool = True
    name: str = ""
    # NET=SOURCE: networks that start from trained weights instead of random ones (train/warmstart.py).
    init: tuple[str, ...] = ()
    # Steps at the start in which the generators' learning rate is 0 and only the other networks
    # (the discriminators) learn: new discriminators catch up with generators started by --init
    # before their gradients move them. The generators' forward and backward still run (the
    # discriminators need their outputs, and Adam's moments warm up).
    d_warmup: int = 0


class DivergedError(UserError):
    """Too many steps produced a non-finite loss."""


def total_steps(cfg: TrainConfig, epoch_len: int) -> int:
    if cfg.steps > 0:
        return cfg.steps
    return max(1, math.ceil(cfg.epochs * epoch_len / cfg.batch_size))


def _params(nets: Iterable[nn.Module]) -> list[nn.Parameter]:
    return [p for net in nets for p in net.parameters()]


def adam_kernel(device: torch.device) -> dict[str, bool]:
    """Adam's implementation for `device`: the fused kernel where torch has one (CPU, CUDA).

    Measured in benchmarks/train.py: on CPU fused Adam updates a CycleGAN's G and D 2.7-3.1x
    faster than the per-tensor loop torch defaults to there (foreach is slower on CPU). Its state
    dict is the same, so checkpoints resume across implementations (to rounding, not bit for bit).
    """
    return {"fused": True} if device.type in ("cpu", "cuda") else {}


def fingerprint(nets: dict[str, nn.Module]) -> str:
    """sha256 of every parameter and buffer, bit for bit: equal across ranks when in sync."""
    h = hashlib.sha256()
    for name in sorted(nets):
        for key, t in sorted(nets[name].state_dict().items()):
            h.update(f"{name}.{key}".encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class Trainer:
    """Runs an Objective's phases step by step and keeps the run directory up to date."""

    def __init__(self, objective: Objective, cfg: TrainConfig, runtime: Runtime, run_dir: Path,
                 meta: dict[str, Any] | None = None, quiet: bool = False) -> None:
        if cfg.batch_size % runtime.world_size:
            raise UserError(f"batch_size {cfg.batch_size} does not split over {runtime.world_size} processes; "
                            "use a multiple of the process count")
        self.obj, self.cfg, self.rt, self.run_dir = objective, cfg, runtime, run_dir
        self.meta, self.quiet = meta or {}, quiet
        self.resumed_compact = False  # set by resume(): a compact checkpoint's optimizers start fresh
        self.raw = objective.networks()
        self.wrapped = {name: runtime.prepare(net) for name, net in self.raw.items()}
        objective.bind(self.wrapped)
        self.phases: list[Phase] = objective.phases()
        self.opts = {p.name: self._optimizer(p) for p in self.phases}
        self.scalers = {p.name: runtime.grad_scaler() for p in self.phases}
        self.dataset = objective.dataset()
        self.total = total_steps(cfg, len(self.dataset))
        self.step = 0
        self.nonfinite = 0
        self.stats = StatsLog(run_dir / "stats.jsonl")
        self.evals = StatsLog(run_dir / "eval.jsonl")
        self._acc: dict[str, torch.Tensor] = {}  # loss sums since the last log line
        self._acc_n = 0
        self.last_losses: dict[str, float] = {}
        self.ema = self._weight_average()
        # Concurrent branches help where one branch cannot fill the cores: CPU, one process.
        self.concurrent = (cfg.branches and runtime.device.type == "cpu" and not runtime.distributed
                           and torch.get_num_threads() > 1)
        self._runners: dict[int, BranchRunner] = {}
        generators = set(getattr(objective, "averaged", ()))
        if cfg.d_warmup and not generators:
            raise UserError(f"--set d_warmup={cfg.d_warmup}: objective {objective.name!r} has no generator to hold "
                            "back; leave d_warmup at 0")
        self.held_back = {p.name for p in self.phases if generators & set(p.nets)}  # during d_warmup

    def _runner(self, branches: int) -> BranchRunner:
        if branches not in self._runners:
            self._runners[branches] = BranchRunner(branches, threads_per_branch(torch.get_num_threads(), branches))
        return self._runners[branches]

    def _weight_average(self) -> WeightAverage | None:
        if self.cfg.ema <= 0:
            return None
        names = getattr(self.obj, "averaged", ())
        if not names:
            raise UserError(f"--set ema={self.cfg.ema}: objective {self.obj.name!r} has no generator to average; "
                            "leave ema at 0")
        if self.cfg.ema >= 1:
            raise UserError(f"--set ema={self.cfg.ema}: the decay must be below 1 (e.g. 0.999)")
        return WeightAverage({n: self.raw[n] for n in names}, self.cfg.ema)

    def averaged(self) -> contextlib.AbstractContextManager[None]:
        """Within the block the averaged networks hold their EMA weights (when ema is on)."""
        return self.ema.applied() if self.ema else contextlib.nullcontext()

    def _optimizer(self, phase: Phase) -> torch.optim.Optimizer:
        unknown = [n for n in phase.nets if n not in self.raw]
        if unknown:
            raise ValueError(f"phase {phase.name} names unknown networks {unknown}")
        params = _params(self.raw[n] for n in phase.nets)
        return torch.optim.Adam(params, lr=phase.lr, betas=phase.betas, weight_decay=phase.weight_decay,
                                **adam_kernel(self.rt.device))

    # ----- state -------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything exact resume needs; per-rank parts (RNG, objective) from every rank."""
        per_rank = self.rt.gather({"rng": rng_state(), "objective": self.obj.state_dict(),
                                   "fingerprint": fingerprint(self.raw)})
        if len({r["fingerprint"] for r in per_rank}) > 1:
            raise RuntimeError(f"processes out of sync at step {self.step}: network parameters differ "
                               "between ranks; every network must be called through its DDP wrapper")
        return {
            "step": self.step,
            "total": self.total,
            "nonfinite": self.nonfinite,
            "log_window": {"sums": {k: v.cpu() for k, v in self._acc.items()}, "n": self._acc_n},
            "nets": {n: net.state_dict() for n, net in self.raw.items()},
            "opts": {n: o.state_dict() for n, o in self.opts.items()},
            "scalers": {n: s.state_dict() for n, s in self.scalers.items()},
            "ema": self.ema.state_dict() if self.ema else None,
            "ranks": per_rank,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        compact = is_compact(state)
        if compact:  # fp16 weights and no optimizer state: the optimizers start fresh (train/compact.py)
            state = widen(state)
        for name, net in self.raw.items():
            net.load_state_dict(state["nets"][name])
        for name, opt in self.opts.items() if not compact else ():
            opt.load_state_dict(state["opts"][name])
        for name, scaler in self.scalers.items() if not compact else ():
            scaler.load_state_dict(state["scalers"][name])
        if self.ema:
            # A run that switches averaging on at --resume starts it from the loaded weights.
            self.ema = self._weight_average()
            if state.get("ema"):
                self.ema.load_state_dict(state["ema"])
        self.step, self.nonfinite = int(state["step"]), int(state["nonfinite"])
        window = state["log_window"]
        self._acc = {k: v.to(self.rt.device) for k, v in window["sums"].items()}
        self._acc_n = int(window["n"])
        ranks = state["ranks"]
        mine = ranks[self.rt.rank % len(ranks)]
        self.obj.load_state_dict(mine["objective"])
        set_rng_state(mine["rng"])

    def resume(self, run_dir: Path) -> Path:
        path = latest_checkpoint(run_dir)
        state = load_checkpoint(path)
        self.resumed_compact = is_compact(state)
        self.load_state(state)
        if self.rt.is_main:
            self.stats.truncate_after(self.step)
            self.evals.truncate_after(self.step)
        return path

    # ----- one step ----------------------------------------------------------------------
    def _set_trainable(self, names: tuple[str, ...]) -> None:
        for name, net in self.raw.items():
            net.requires_grad_(name in names)

    def _run_phase(self, phase: Phase, batch: dict[str, torch.Tensor], factor: float) -> bool:
        """Forward, backward and update one phase; False if its loss was not finite anywhere."""
        opt, scaler = self.opts[phase.name], self.scalers[phase.name]
        for group in opt.param_groups:
            group["lr"] = phase.lr * factor
        self._set_trainable(phase.nets)
        opt.zero_grad(set_to_none=True)
        branches = self.obj.branches(phase.name, batch) if self.concurrent else []
        if len(branches) > 1:
            loss, terms = self._runner(len(branches)).run(branches, lambda part: scaler.scale(part).backward(),
                                                          self.rt.autocast)
            finite = bool(torch.isfinite(loss))
        else:
            frozen = [w for n, w in self.wrapped.items() if n not in phase.nets]
            with frozen_sync(frozen), self.rt.autocast():
                loss, terms = self.obj.loss(phase.name, batch)
            finite = self.rt.all_true(bool(torch.isfinite(loss.detach())))
            if finite or self.rt.distributed:
                # Under DDP every rank must run backward once it ran forward, even on a NaN
                # loss, or the gradient reducers of the next step would wait forever.
                scaler.scale(loss).backward()
        if not finite:
            opt.zero_grad(set_to_none=True)
            return False
        if self.cfg.grad_clip > 0:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(_params(self.raw[n] for n in phase.nets), self.cfg.grad_clip)
        scaler.step(opt)
        scaler.update()
        for name, value in terms.items():
            v = value.detach().float() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
            self._acc[name] = self._acc.get(name, 0.0) + v
        return True

    def _lr_factor(self, phase: Phase, step: int) -> float:
        """The schedule's factor for `phase` at `step`; 0 for the generators during d_warmup."""
        if step < self.cfg.d_warmup and phase.name in self.held_back:
            return 0.0
        return lr_factor(step, self.total, self.cfg.decay_start)

    def train_step(self, batch: dict[str, torch.Tensor]) -> bool:
        """One step of every due phase; the whole step is skipped at the first non-finite loss."""
        for phase in self.phases:
            if self.step % phase.every:
                continue
            if not self._run_phase(phase, batch, self._lr_factor(phase, self.step)):
                self.nonfinite += 1
                if self.nonfinite > self.cfg.max_nonfinite:
                    raise DivergedError(
                        f"training diverged: {self.nonfinite} steps had a non-finite loss (last in phase "
                        f"{phase.name!r} at step {self.step + 1}); lower the learning rate or set grad_clip, "
                        "then --resume from the last checkpoint")
                self.step += 1
                return False
        if self.ema:
            self.ema.update()
        self._acc_n += 1
        self.step += 1
        return True

    # ----- cadence -----------------------------------------------------------------------
    def _due(self, every: int) -> bool:
        return self.step == self.total or (every > 0 and self.step % every == 0)

    def _log(self, seconds: float, other: float, steps: int, bar: tqdm) -> None:
        sums = {k: v / max(1, self._acc_n) for k, v in sorted(self._acc.items())}
        losses = {k: float(v) for k, v in zip(sums, self.rt.mean(list(sums.values())))}
        self._acc, self._acc_n = {}, 0
        if losses:
            self.last_losses = losses
        record = {
            "step": self.step,
            "epoch": round(self.step * self.cfg.batch_size / len(self.dataset), 4),
            "lr": {p.name: p.lr * self._lr_factor(p, self.step - 1) for p in self.phases},
            **{f"loss/{k}": round(v, 6) for k, v in losses.items()},
            "sec_per_step": round(seconds / max(1, steps), 4),
            # Samples, evaluations and checkpoints since the last line, kept out of sec_per_step.
            "sec_other": round(other, 3),
            "threads": torch.get_num_threads() * self.rt.world_size,  # CPU threads of all processes
            "nonfinite_steps": self.nonfinite,
        }
        if self.rt.is_main:
            self.stats.write(record)
            bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()}, refresh=False)

    def _sample_batch(self) -> dict[str, torch.Tensor]:
        n = max(1, self.cfg.sample_count)
        return default_collate([self.dataset[k] for k in range(n)])

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        """The objective on its raw networks in eval mode, with averaged weights, without gradients."""
        # Raw networks: a rank-0-only call must not enter DDP collectives.
        self.obj.bind(self.raw)
        for net in self.raw.values():
            net.eval()
        try:
            with torch.no_grad(), self.averaged():
                yield
        finally:
            for net in self.raw.values():
                net.train()
            self.obj.bind(self.wrapped)

    def save_samples(self) -> None:
        if not self.rt.is_main:
            return
        with self._inference(), self.rt.autocast():
            images = self.obj.sample(self.rt.to_device(self._sample_batch()))
        save_grid(images, self.run_dir / "samples" / f"step-{self.step:08d}.png")

    def evaluate(self) -> dict[str, Any] | None:
        """The objective's held-out figures now (rank 0; None without any), also one eval.jsonl line."""
        if not self.rt.is_main or not hasattr(self.obj, "evaluate"):
            return None
        # Its own RNG stream: evaluating must not shift training's (exact resume).
        with torch.random.fork_rng(devices=[]), self._inference():
            figures = self.obj.evaluate()
        if figures:
            self.evals.write({"step": self.step, **flatten_figures(figures)})
            if not self.quiet:
                describe = getattr(self.obj, "describe", None)
                line = describe(figures) if describe else ", ".join(f"{k}={v:.4g}" for k, v in
                                                                    flatten_figures(figures).items())
                tqdm.write(f"evaluation at step {self.step}: {line}", file=sys.stderr)  # beside the bar
        return figures

    def export(self) -> list[Path]:
        if not self.rt.is_main:
            return []
        paths = []
        with self.averaged():
            # The state dicts alias the networks' tensors, so they are written inside the block.
            for name, (state, meta) in self.obj.export().items():
                full = {**self.meta, **meta, "steps": self.step, "last_losses": self.last_losses,
                        "ema": self.cfg.ema}
                paths.append(save_export(self.run_dir / "export", name, state, full))
        return paths

    def checkpoint(self) -> None:
        state = self.state()  # collective: every rank contributes its RNG and objective state
        if self.rt.is_main:
            save_checkpoint(self.run_dir, self.step, state, self.cfg.keep_checkpoints)
            self.export()
        self.rt.barrier()

    # ----- loop --------------------------------------------------------------------------
    def _loader(self) -> DataLoader:
        local = self.cfg.batch_size // self.rt.world_size
        sampler = StreamSampler(self.step, self.total, local, self.rt.rank, self.rt.world_size)
        workers = self.cfg.workers
        return DataLoader(self.dataset, batch_size=local, sampler=sampler, num_workers=workers,
                          pin_memory=self.rt.device.type == "cuda", drop_last=False,
                          persistent_workers=False, prefetch_factor=4 if workers > 0 else None,
                          # Its own generator: starting an iterator must not draw from the global
                          # RNG, or a resumed run's dropout stream would shift by one draw.
                          generator=torch.Generator().manual_seed(self.cfg.seed + self.step))

    def _must_stop(self, started: float, request: StopRequest) -> bool:
        """Out of time or asked to stop by a signal (on any rank)."""
        in_time = self.cfg.time_limit <= 0 or time.monotonic() - started < self.cfg.time_limit * 60
        # Every rank must stop at the same step, so the decision is agreed on.
        return not self.rt.all_true(in_time and not request)

    def fit(self, until: int | None = None) -> bool:
        """Train from the current step to the total (or to `until`, or the time limit).

        Returns True when training reached its total; False when it stopped early (time limit,
        SIGTERM or a first Ctrl-C), in which case a checkpoint of the stopping step was written
        and `--resume` continues exactly.
        """
        stop_at = min(self.total, until) if until else self.total
        for net in self.raw.values():
            net.train()
        bar = tqdm(total=self.total, initial=self.step, disable=self.quiet or not self.rt.is_main,
                   unit="step", dynamic_ncols=True, desc=self.obj.name)
        with stop_on_signals() as request:
            try:
                self._run(stop_at, request, bar)
            finally:
                bar.close()
        return self.step >= self.total

    def _run(self, stop_at: int, request: StopRequest, bar: tqdm) -> None:
        started = time.monotonic()
        t0, s0, other = time.perf_counter(), self.step, 0.0
        for batch in self._loader():
            self.train_step(self.rt.to_device(batch))
            bar.update(1)
            if self._due(self.cfg.log_every):
                self._log(time.perf_counter() - t0 - other, other, self.step - s0, bar)
                t0, s0, other = time.perf_counter(), self.step, 0.0
            busy = time.perf_counter()
            early = self._housekeeping(stop_at, started, request)
            other += time.perf_counter() - busy
            if early:
                break

    def _housekeeping(self, stop_at: int, started: float, request: StopRequest) -> bool:
        """Samples, evaluation and checkpoint due after this step; True when training stops here."""
        if self._due(self.cfg.sample_every):
            self.save_samples()
        if self.cfg.eval_every > 0 and self.step % self.cfg.eval_every == 0 and self.step < self.total:
            self.evaluate()  # the last step's evaluation is the run's eval.json (launch)
        early = self.step >= stop_at or self._must_stop(started, request)
        if self._due(self.cfg.checkpoint_every) or (early and self.step < self.total):
            self.checkpoint()
        return early
