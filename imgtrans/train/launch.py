"""Assemble a training run from its config: runtime, seeds, objective, run directory, trainer."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgtrans import __version__
from imgtrans.config import Sections, load_file, merge, to_dict
from imgtrans.errors import UserError
from imgtrans.registry import objective_class
from imgtrans.io import atomic_write
from imgtrans.train.records import new_run_dir
from imgtrans.train.runtime import Runtime, amp_hint, init_runtime, seed_everything
from imgtrans.train.trainer import Trainer, TrainConfig, total_steps
from imgtrans.train.warmstart import parse_init, warm_start


@dataclass(frozen=True)
class RunRequest:
    """What the user asked for: a model, config layers, and where to write or resume."""

    objective: str
    values: dict[str, Any]  # merged over the defaults (or the resumed run's config)
    config_file: str | None = None
    out: str = "runs"
    resume: str | None = None
    dry_run: bool = False
    quiet: bool = False
    until: int | None = None  # stop (with a checkpoint) at this step; resume continues


def default_sections(objective: str) -> Sections:
    return {"train": TrainConfig(), "model": objective_class(objective).config_class()}


def resolve_sections(req: RunRequest) -> Sections:
    """defaults < resumed run's config.json < --config file < explicit values."""
    sections = default_sections(req.objective)
    if req.resume and {"init", "train.init"} & set(req.values):
        raise UserError("--init starts a new run from trained weights; --resume continues a run from its own "
                        "checkpoint: pass one of them")
    if req.resume:
        if not (Path(req.resume) / "config.json").is_file():
            raise UserError(f"{req.resume}: not a training run folder (no config.json); pass the folder "
                            "`imgtrans train` printed, e.g. runs/00000-horse2zebra")
        saved = load_file(Path(req.resume) / "config.json")
        if saved.get("objective", req.objective) != req.objective:
            raise UserError(f"{req.resume} is a {saved['objective']!r} run; resume it with "
                            f"`imgtrans train {saved['objective']} --resume {req.resume}`")
        sections = merge(sections, {k: saved[k] for k in sections if k in saved})
    if req.config_file:
        data = load_file(req.config_file)
        data.pop("objective", None)
        sections = merge(sections, data)
    return merge(sections, req.values)


def _describe(req: RunRequest, sections: Sections, objective: Any, dataset: Any, rt: Runtime) -> str:
    train: TrainConfig = sections["train"]
    sizes = dataset.sizes() if hasattr(dataset, "sizes") else {"samples": len(dataset)}
    info = {
        "objective": req.objective,
        **to_dict(sections),
        "dataset": {"sizes": sizes, "epoch_length": len(dataset)},
        "total_steps": total_steps(train, len(dataset)),
        "device": str(rt.device),
        "world_size": rt.world_size,
    }
    return json.dumps(info, indent=2)


def run(req: RunRequest) -> Path | None:
    """Train (or resume) and return the run directory; None for a dry run."""
    sections = resolve_sections(req)
    train: TrainConfig = sections["train"]
    rt = init_runtime(train.device, train.amp)
    try:
        seed_everything(train.seed, train.deterministic)  # same initial weights on every rank
        objective, dataset = _build(req.objective, sections["model"], train.seed)
        if req.dry_run:
            if rt.is_main:
                print(_describe(req, sections, objective, dataset, rt))
            return None
        if train.init and not req.resume:  # a resumed run's checkpoint holds every network already
            warm_start(objective.networks(), parse_init(train.init))
        run_dir = _run_dir(req, objective, rt)
        hint = amp_hint(rt)
        if hint and rt.is_main and not req.quiet:
            print(hint, file=sys.stderr)
        config = {"objective": req.objective, "imgtrans": __version__, **to_dict(sections)}
        if rt.is_main:
            atomic_write(run_dir / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"))
        seed_everything(train.seed + rt.rank)  # per-rank streams for dropout and pools
        trainer = Trainer(objective, train, rt, run_dir, meta={"train": to_dict(sections)["train"]}, quiet=req.quiet)
        if req.resume:
            path = trainer.resume(run_dir)
            if rt.is_main and not req.quiet:
                fresh = "; compact checkpoint: the optimizers start fresh" if trainer.resumed_compact else ""
                print(f"resuming {run_dir} from {path.name} (step {trainer.step}/{trainer.total}){fresh}",
                      file=sys.stderr)
            if trainer.step >= trainer.total:
                raise UserError(f"{run_dir} already finished {trainer.step} steps; pass --steps N (N > "
                                f"{trainer.step}) to train longer")
        finished = trainer.fit(until=req.until)
        figures = trainer.evaluate() if finished else None
        if figures:
            atomic_write(run_dir / "eval.json", lambda tmp: Path(tmp).write_text(json.dumps(figures, indent=2) + "\n"))
        if rt.is_main and not req.quiet:
            what = "done" if finished else f"stopped at step {trainer.step}/{trainer.total}; continue with --resume"
            print(f"{what}: run directory {run_dir}", file=sys.stderr)
        return run_dir
    finally:
        rt.close()


def _build(name: str, model_cfg: Any, seed: int) -> tuple[Any, Any]:
    """The objective and its dataset; a combination of settings the networks or data cannot take
    (norm=foo, load_size below crop_size) is the user's to fix, so it is said in one line."""
    try:
        objective = objective_class(name)(model_cfg, seed=seed)
        return objective, objective.dataset()
    except ValueError as e:
        raise UserError(f"{name} settings: {str(e).splitlines()[0]}; change it with --set or --config") from None


def _run_dir(req: RunRequest, objective: Any, rt: Runtime) -> Path:
    if req.resume:
        return Path(req.resume)
    train: TrainConfig = resolve_sections(req)["train"]
    name = train.name or (objective.tag() if hasattr(objective, "tag") else req.objective)
    created = str(new_run_dir(req.out, name)) if rt.is_main else None
    return Path(rt.broadcast(created))
