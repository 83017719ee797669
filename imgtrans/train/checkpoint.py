"""Full training state <-> disk (atomic, weights_only-loadable) and exported inference weights."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from imgtrans.errors import UserError
from imgtrans.io import atomic_write

CKPT_RE = re.compile(r"^step-(\d+)\.pt$")


def rng_state() -> dict[str, Any]:
    """Every global RNG's state, as tensors and plain values only (weights_only-safe)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:08d}.pt"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CKPT_RE.match(p.name))]
    return sorted(found)


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write the training state for `step` and keep only the `keep` newest checkpoints."""
    path = checkpoint_path(run_dir, step)
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    for _, old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint as data only: no pickled code is ever executed."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means the file is unusable as a checkpoint
        raise UserError(f"{path}: not a readable imgtrans checkpoint ({type(e).__name__}); "
                        "pick an older one in the same folder") from None


def latest_checkpoint(run_dir: Path) -> Path:
    found = list_checkpoints(run_dir)
    if not found:
        raise UserError(f"{run_dir}: no checkpoints/step-*.pt to resume from; start a new run instead")
    return found[-1][1]


def save_export(folder: Path, name: str, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write `name.safetensors` (metadata embedded) and a readable `name.json` beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    text = json.dumps(meta, sort_keys=True)
    path = folder / f"{name}.safetensors"
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"imgtrans": text}))
    atomic_write(folder / f"{name}.json", lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2) + "\n"))
    return path


def load_export(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read exported weights and their metadata."""
    p = Path(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("imgtrans", "{}"))
            state = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise UserError(f"{p}: weights file not found") from None
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for bad files
        raise UserError(f"{p}: not a readable safetensors file ({e})") from None
    return state, meta
