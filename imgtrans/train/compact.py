"""Compact run copies: a run's newest checkpoint without optimizer state, its weights in fp16.

Why: a run's checkpoints (about 150 MB for a CycleGAN at ngf 32, most of it Adam's moments)
live beside the run and are lost with the machine. A compact copy keeps every network, the
generators' weight average, the step and the random state in under a fifth of that, small
enough to keep with the project, and `--resume` continues it at the same step of the same
learning-rate schedule; only the optimizers and the image pools start fresh. Continuing with
the run's own discriminators is what matters: fine-tuning generators against new ones undoes
what they had learned (weights/README.md, "Fine-tuning the shipped generators").
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from imgtrans.errors import UserError
from imgtrans.io import atomic_write
from imgtrans.train.checkpoint import checkpoint_path, latest_checkpoint, load_checkpoint

MARKER = "compact.json"
# Run records copied beside the checkpoint: the config --resume reads, and the logged history.
RECORDS = ("config.json", "stats.jsonl", "eval.jsonl")


def _map_floats(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """`obj` with `fn` applied to every floating-point tensor in its nested dicts, lists and tuples."""
    if isinstance(obj, torch.Tensor):
        return fn(obj) if obj.is_floating_point() else obj
    if isinstance(obj, dict):
        return {k: _map_floats(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_floats(v, fn) for v in obj)
    return obj


def is_compact(state: dict[str, Any]) -> bool:
    return bool(state.get("compact"))


def compact_state(state: dict[str, Any]) -> dict[str, Any]:
    """A full training state without optimizer and loss-scaler state, floats stored in fp16."""
    # Random states (torch's is a uint8 tensor, numpy's int64) are not floating and stay exact.
    kept = {k: v for k, v in state.items() if k not in ("opts", "scalers")}
    kept["log_window"] = {"sums": {}, "n": 0}  # a partial logging window is not worth keeping
    # The objective's own state (a CycleGAN's image pools of past fakes: a quarter of what is
    # left) refills within the pool size in steps, so it is dropped too.
    kept["ranks"] = [{**rank, "objective": {}} for rank in state["ranks"]]
    out = _map_floats(kept, lambda t: t.detach().cpu().half())
    out["compact"] = True
    return out


def widen(state: dict[str, Any]) -> dict[str, Any]:
    """A compact state's fp16 tensors back in fp32, as the networks and pools hold them."""
    return _map_floats(state, lambda t: t.float() if t.dtype == torch.float16 else t)


def _untouched_copy(dest: Path) -> bool:
    """Whether `dest` is a compact copy that no run has continued in (its checkpoint is the only one)."""
    try:
        step = int(json.loads((dest / MARKER).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return [p.name for p in (dest / "checkpoints").iterdir()] == [checkpoint_path(dest, step).name]


def _check_dest(dest: Path, run_dir: Path) -> None:
    if dest.resolve() == run_dir.resolve():
        raise UserError(f"{dest}: is the run itself; pass a new folder for the compact copy")
    if dest.exists() and any(dest.iterdir()) and not _untouched_copy(dest):
        raise UserError(f"{dest}: exists and is not an untouched compact run copy (a run may have continued "
                        "in it); pass a new or empty folder")


def compact_run(run_dir: str | Path, dest: str | Path) -> Path:
    """Write `run_dir`'s newest checkpoint as a compact copy in `dest`; returns the checkpoint path.

    `dest` becomes a run folder of its own: `--resume dest` continues the run. An earlier compact
    copy in `dest` that no run has continued in is replaced; anything else is refused, never overwritten.
    """
    run, out = Path(run_dir), Path(dest)
    if not (run / "config.json").is_file():
        raise UserError(f"{run}: not a training run folder (no config.json); pass a run directory")
    _check_dest(out, run)
    source = latest_checkpoint(run)
    state = compact_state(load_checkpoint(source))
    if out.exists():
        shutil.rmtree(out)
    (out / "checkpoints").mkdir(parents=True)
    for name in RECORDS:
        if (run / name).is_file():
            shutil.copyfile(run / name, out / name)
    path = checkpoint_path(out, int(state["step"]))
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    info = {"from": str(run.resolve()), "checkpoint": source.name, "step": int(state["step"]),
            "total": int(state["total"]), "bytes": path.stat().st_size}
    atomic_write(out / MARKER, lambda tmp: Path(tmp).write_text(json.dumps(info, indent=2) + "\n"))
    return path
