"""Shared fixtures: synthetic domains and photos, tiny model settings, and the real-data gate."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Tiny networks keep the suite fast on 2 CPU cores; they exercise every code path.
TINY = {
    "model.ngf": 8,
    "model.ndf": 8,
    "model.n_blocks": 2,
    "model.n_layers_d": 2,
    "model.crop_size": 32,
    "model.load_size": 36,
    "train.workers": 0,
    "train.log_every": 2,
    "train.sample_every": 0,
    "train.checkpoint_every": 0,
    "train.sample_count": 2,
}


def data_root() -> Path:
    return Path(os.environ.get("IMGTRANS_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `data` tests when the datasets are absent, unless CI demands them."""
    if data_root().is_dir():
        return
    if os.environ.get("IMGTRANS_REQUIRE_DATA") == "1":
        raise pytest.UsageError(f"IMGTRANS_REQUIRE_DATA=1 but {data_root()} does not exist; set IMGTRANS_DATA")
    skip = pytest.mark.skip(reason=f"real datasets not found at {data_root()} (set IMGTRANS_DATA)")
    for item in items:
        if "data" in item.keywords:
            item.add_marker(skip)


def make_domain(folder: Path, n: int, kind: str, size: int = 40, seed: int = 0) -> Path:
    """Write `n` small RGB images: 'stripes' (vertical bars) or 'blobs' (smooth colour fields)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        if kind == "stripes":
            period = rng.uniform(0.1, 0.3)
            v = (np.sin(2 * np.pi * xx / period) > 0).astype(np.float64)
            img = np.stack([v, v * 0.8, v * 0.3], -1)
        else:
            c = rng.uniform(0, 1, 3)
            img = np.stack([c[0] * xx, c[1] * yy, c[2] * (1 - xx)], -1)
        img = np.clip(img + rng.normal(0, 0.05, img.shape), 0, 1)
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"{kind}_{i:03d}.png")
    return folder


@pytest.fixture
def domains(tmp_path: Path) -> tuple[Path, Path]:
    a = make_domain(tmp_path / "data" / "A", 6, "blobs", seed=1)
    b = make_domain(tmp_path / "data" / "B", 5, "stripes", seed=2)
    return a, b


def photo(h: int, w: int, seed: int = 0, period: float = 7.0) -> np.ndarray:
    """An HxWx3 uint8 stand-in for a photo: smooth colour ramps, a sine texture of `period` px, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx / w, yy / h, 0.5 + 0.5 * np.sin(xx / period)], -1) * 255
    return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
