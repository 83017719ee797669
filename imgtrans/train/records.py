"""Training records: the run directory, stats.jsonl lines and sample-image grids."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import make_grid, save_image

from imgtrans.errors import UserError
from imgtrans.io import atomic_write

RUN_RE = re.compile(r"^(\d{5})-")


def new_run_dir(out: str | Path, name: str) -> Path:
    """Create `out/NNNNN-name/` with the next free number."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    numbers = [int(m.group(1)) for p in root.iterdir() if (m := RUN_RE.match(p.name))]
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "run"
    for n in range(max(numbers, default=-1) + 1, 100000):
        path = root / f"{n:05d}-{safe}"
        try:
            path.mkdir()
        except FileExistsError:
            continue
        for sub in ("samples", "checkpoints", "export"):
            (path / sub).mkdir()
        return path
    raise RuntimeError(f"{root}: no free run number left")


class StatsLog:
    """Append-only `stats.jsonl`; on resume, lines past the resumed step are dropped."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        keep = [ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
        atomic_write(self.path, lambda tmp: Path(tmp).write_text("".join(ln + "\n" for ln in keep)))

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


@dataclass(frozen=True)
class RunCost:
    """What a run's kept training took, from its stats.jsonl (resumed legs included)."""

    steps: int  # the last logged step
    hours: float  # wall-clock hours of training steps, samples, evaluations and checkpoints
    cpu_hours: float  # the same, times the threads of every process
    unthreaded: int  # lines written before threads were logged, counted at one thread


def run_cost(stats: Path) -> RunCost:
    """Sum the logged windows of `stats` (one line per log_every steps; sec_other where logged)."""
    if not stats.is_file():
        raise UserError(f"{stats}: not found; a run's cost is read from the stats.jsonl beside its export")
    step = 0
    hours = cpu_hours = 0.0
    unthreaded = 0
    for n, line in enumerate(stats.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            seconds = rec["sec_per_step"] * (rec["step"] - step) + rec.get("sec_other", 0.0)
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{stats}:{n}: not a stats line (step, sec_per_step)") from None
        threads = rec.get("threads")
        unthreaded += threads is None
        hours += seconds / 3600
        cpu_hours += seconds * (threads or 1) / 3600
        step = rec["step"]
    return RunCost(step, hours, cpu_hours, unthreaded)


def flatten_figures(figures: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of nested evaluation figures as {"a/b/c": value}, for one JSON line."""
    flat: dict[str, float] = {}
    for k, v in figures.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(flatten_figures(v, key + "/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            flat[key] = round(float(v), 6)
    return flat


def save_grid(images: dict[str, torch.Tensor], path: Path) -> None:
    """One row per sample, one column per named image (all in [-1, 1], same size)."""
    cols = list(images.values())
    rows = torch.stack([torch.stack([c[i].float().cpu() for c in cols]) for i in range(cols[0].shape[0])])
    grid = make_grid(rows.flatten(0, 1), nrow=len(cols), normalize=True, value_range=(-1, 1), padding=2)
    atomic_write(path, lambda tmp: save_image(grid, tmp, format="png"))
