"""Shared benchmark plumbing: cases in fresh subprocesses (time + peak RSS), timing, inputs and tables."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULT_TAG = "BENCH-RESULT "


# ----- cases in subprocesses ----------------------------------------------------------------
@dataclass
class CaseResult:
    """What one case reported, plus the peak resident memory of its whole process."""

    name: str
    values: dict[str, Any]
    max_rss_mb: float
    seconds: float


def case_args(description: str) -> argparse.ArgumentParser:
    """The flags every benchmark script takes; `--case`/`--workdir` are for its own subprocesses."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a much smaller run, for a smoke test")
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    return p


def report(values: dict[str, Any]) -> None:
    """Called by a case in its subprocess: hand its numbers and its peak RSS to the parent."""
    print(RESULT_TAG + json.dumps({**values, "peak_rss_mb": peak_rss_mb()}), flush=True)


def peak_rss_mb() -> float:
    """This process's peak resident set in MB since it started its program.

    Linux's VmHWM, not getrusage's ru_maxrss: the kernel carries ru_maxrss over from the
    parent's memory at fork/exec, so every case would seem at least as big as the (torch-laden)
    parent that launched it.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def run_case(script: Path, name: str, workdir: Path, extra: Sequence[str] = (),
             env: dict[str, str] | None = None) -> CaseResult:
    """Run `script --case name` in a fresh interpreter and collect its report and peak RSS.

    A fresh process per case keeps one case's allocations (and allocator caches) out of the
    next one's peak.
    """
    cmd = [sys.executable, str(script), "--case", name, "--workdir", str(workdir), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=ROOT)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"case {name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if not lines:
        raise RuntimeError(f"case {name} reported nothing:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    values = json.loads(lines[-1][len(RESULT_TAG):])
    return CaseResult(name, values, float(values.pop("peak_rss_mb")), seconds)


# ----- timing -------------------------------------------------------------------------------
def best_of(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Fastest wall time of `repeats` calls after `warmup` calls: the least disturbed run."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1) -> dict[str, float]:
    """Best wall time of each function, measured round-robin so drifting load hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def peak_gflops(n: int = 4096, repeats: int = 8) -> float:
    """The machine's float32 peak as torch sees it: a large square matrix product."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / best_of(lambda: a @ b, repeats) / 1e9


# ----- inputs -------------------------------------------------------------------------------
def synthetic_photo(h: int, w: int, seed: int) -> np.ndarray:
    """A random but photo-like HxWx3 uint8 image: smooth colour fields, shapes, texture, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy /= h
    xx /= w
    c = rng.uniform(0.2, 0.8, (3, 3)).astype(np.float32)
    img = np.stack([c[i, 0] + c[i, 1] * xx + c[i, 2] * yy for i in range(3)], -1) * 0.6
    for _ in range(int(rng.integers(4, 9))):  # soft ellipses
        cy, cx, ry, rx = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.3), rng.uniform(0.05, 0.3)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        img[inside] = img[inside] * 0.4 + rng.uniform(0, 1, 3).astype(np.float32) * 0.6
    freq = rng.uniform(20, 60)
    img += 0.06 * np.sin(2 * np.pi * freq * (xx + 0.7 * yy))[..., None]
    img += rng.normal(0, 0.03, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def write_jpegs(folder: Path, n: int, h: int, w: int, seed: int = 0, quality: int = 92) -> Path:
    """`n` synthetic photos as JPEG files in `folder`."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(synthetic_photo(h, w, seed + i)).save(folder / f"photo_{i:03d}.jpg", quality=quality)
    return folder


# ----- tables -------------------------------------------------------------------------------
def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("pass" if ok else "FAIL")


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if 0 < abs(value) < 0.1:  # keep two significant digits of small rates
            return f"{value:.2g}"
        return f"{value:.{digits}f}"
    return str(value)


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Print (and return) a Markdown table, so README results are pasted as printed."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = [f"### {title}", "",
             "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    return text


def machine_line() -> str:
    """Date, CPU, cores, torch and its threads, and the load when the run started."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"{when}; {cpu}; {os.cpu_count()} logical CPUs; torch {torch.__version__} "
            f"({torch.get_num_threads()} threads, capability {torch.backends.cpu.get_cpu_capability()}); "
            f"load average at start {load}")
