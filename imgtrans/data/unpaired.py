"""Unpaired A/B image folders for CycleGAN-style training."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from imgtrans.data.stream import pick, sample_seed
from imgtrans.data.transforms import CropSpec, to_tensor, train_pipeline
from imgtrans.errors import UserError
from imgtrans.io import ImageReadError, list_images, probe, read_rgb


def scan_folder(folder: str | Path, label: str) -> list[Path]:
    """Readable images under `folder`; unreadable ones are reported by name and left out."""
    files = list_images(folder)
    bad = [(f, why) for f in files if (why := probe(f)) is not None]
    if bad:
        names = "; ".join(f"{f} ({why})" for f, why in bad[:10])
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        print(f"warning: skipping {len(bad)} unreadable file(s) in {label}: {names}{more}", file=sys.stderr)
    good = [f for f in files if f not in {b for b, _ in bad}]
    if not good:
        raise UserError(f"{folder}: no readable images found ({label}); add .jpg/.png files or fix the path")
    return good


class DomainImages(Dataset):
    """Sample k: image pick(k) of A and an independently shuffled image of B, through `pipeline`.

    Length is one epoch, max(|A|, |B|) as in the reference; any k >= 0 is valid. A file that
    fails to decode mid-run is reported once and replaced by the next file of its domain.
    """

    def __init__(self, files: dict[str, list[Path]], pipeline: Any, seed: int = 0) -> None:
        self.files, self.pipeline, self.seed = files, pipeline, seed
        self._reported: set[Path] = set()

    def __len__(self) -> int:
        return max(len(f) for f in self.files.values())

    def sizes(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.files.items()}

    def _load(self, domain: str, index: int) -> np.ndarray:
        files = self.files[domain]
        for offset in range(len(files)):
            path = files[(index + offset) % len(files)]
            try:
                return np.asarray(read_rgb(path))
            except ImageReadError as e:
                if path not in self._reported:
                    self._reported.add(path)
                    print(f"warning: skipping {path}: {e}", file=sys.stderr)
        raise UserError(f"no image in domain {domain} could be decoded; check the folder")

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        out = {}
        for stream, domain in enumerate(("A", "B")):
            img = self._load(domain, pick(self.seed, k, len(self.files[domain]), stream))
            self.pipeline.set_random_seed(sample_seed(self.seed, k * 2 + stream))
            out[domain] = to_tensor(self.pipeline(image=img)["image"])
        return out


class UnpairedImages(DomainImages):
    """Two image folders (CycleGAN data) with resize, random crop and flip."""

    def __init__(self, a: str | Path, b: str | Path, spec: CropSpec, seed: int = 0) -> None:
        super().__init__({"A": scan_folder(a, "A"), "B": scan_folder(b, "B")}, train_pipeline(spec), seed)
        self.spec = spec


def pair_tag(model: str, a: str, b: str) -> str:
    """A short run name for a two-folder model: the folders' common parent (e.g. cyclegan-horse2zebra)."""
    pa, pb = Path(a).resolve().parent, Path(b).resolve().parent
    return f"{model}-{pa.name}" if pa == pb and pa.name else model


def two_domains(model: str, a: str, b: str, spec: CropSpec, seed: int) -> UnpairedImages:
    """The training set of a model that needs both folders, or a one-line error naming the flags."""
    if not a or not b:
        raise UserError(f"{model} needs both domains: pass --a FOLDER and --b FOLDER")
    return UnpairedImages(a, b, spec, seed=seed)
