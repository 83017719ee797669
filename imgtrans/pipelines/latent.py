"""DCGAN face models at work: load, seeds to faces, interpolation, attribute directions and edits, grids."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from imgtrans.data.transforms import to_uint8
from imgtrans.errors import UserError
from imgtrans.io import Photo, format_for_ext, refuse_existing, write_photo
from imgtrans.objectives.dcgan import DCGAN, GENERATOR_EXPORT, Generator, latents, z_from_seed  # noqa: F401 (CLI API)
from imgtrans.objectives.faceattrs import ATTRIBUTE_EXPORT, FaceAttributes
from imgtrans.train.checkpoint import save_export

MODEL_ACCEPTED = "a dcgan run folder, its export/*.safetensors or a model name"
CLASSIFIER_ACCEPTED = "a faceattrs run folder, its export/attributes.safetensors or a model name"
FACE_EXPORT = "faces"  # run/export/faces.safetensors: the generator with its attribute directions
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MAX_SEED = 2**63 - 1
DIRECTION_SEED, MEASURE_SEED = 1, 2  # latent streams for finding directions and for measuring edits


# ----- models ------------------------------------------------------------------------------
@dataclass
class FaceModel:
    """A trained DCGAN generator (eval mode, float32) with its metadata and attribute directions."""

    net: Generator
    meta: dict[str, Any]
    source: str = ""

    @property
    def nz(self) -> int:
        return int(self.meta["arch"]["nz"])

    @property
    def directions(self) -> dict[str, torch.Tensor]:
        """Unit vectors by attribute name (empty until `imgtrans faces directions` ran)."""
        return {k: torch.tensor(v, dtype=torch.float32) for k, v in (self.meta.get("directions") or {}).items()}

    @torch.inference_mode()
    def generate(self, z: torch.Tensor, batch: int = 64) -> torch.Tensor:
        """(N, nz) latents -> (N, 3, S, S) float32 CPU images in [-1, 1]; each face depends on its z alone."""
        device = next(self.net.parameters()).device
        out = [self.net(z[i:i + batch].float().to(device)).float().cpu() for i in range(0, len(z), batch)]
        return torch.cat(out) if out else torch.zeros(0, 3, self.net.arch.size, self.net.arch.size)

    def faces(self, seeds: Sequence[int]) -> torch.Tensor:
        return self.generate(latents(list(seeds), self.nz))


def _resolve(name_or_path: str | Path, export_name: str, accepted: str, preferred: str | None = None
             ) -> tuple[Path, str | None]:
    from imgtrans.weights import resolve_export

    folder = Path(name_or_path)
    if preferred and folder.is_dir() and (folder / "export" / f"{preferred}.safetensors").is_file():
        return folder / "export" / f"{preferred}.safetensors", None
    return resolve_export(name_or_path, export_name, accepted)


def load_face_model(name_or_path: str | Path, device: str = "cpu") -> FaceModel:
    """A face model from a dcgan run folder (its export/faces.safetensors, with directions, when
    written, else export/generator.safetensors), an export file or a manifest name."""
    from imgtrans.weights import load_checked_export

    path, name = _resolve(name_or_path, GENERATOR_EXPORT, MODEL_ACCEPTED, preferred=FACE_EXPORT)
    net, meta = load_checked_export(path, DCGAN.name, DCGAN.build_inference,
                                    "pass a dcgan face model (train one with `imgtrans train dcgan`)")
    source = f"{name} ({path})" if name else str(path)
    return FaceModel(net.to(_device(device)), {**meta, **({"name": name} if name else {})}, source)  # type: ignore[arg-type]


@dataclass
class AttributeClassifier:
    """A trained attribute network (eval mode, float32) and the attribute names of its heads."""

    net: torch.nn.Module
    meta: dict[str, Any]
    source: str = ""

    @property
    def attributes(self) -> list[str]:
        return list(self.meta["attributes"])

    @torch.inference_mode()
    def probs(self, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
        """(N, 3, H, W) aligned faces in [-1, 1] -> (N, A) float64 probabilities of the positive class."""
        size = int(self.meta.get("size") or images.shape[-1])
        device = next(self.net.parameters()).device
        out = []
        for i in range(0, len(images), batch):
            x = images[i:i + batch].float().to(device)
            if x.shape[-1] != size:
                x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            out.append(torch.sigmoid(self.net(x).float()).double().cpu())
        return torch.cat(out) if out else torch.zeros(0, len(self.attributes), dtype=torch.float64)


def load_attributes(name_or_path: str | Path, device: str = "cpu") -> AttributeClassifier:
    """Attribute classifiers from a faceattrs run folder, its export or a manifest name."""
    from imgtrans.weights import load_checked_export

    path, name = _resolve(name_or_path, ATTRIBUTE_EXPORT, CLASSIFIER_ACCEPTED)
    net, meta = load_checked_export(path, FaceAttributes.name, FaceAttributes.build_inference,
                                    "pass attribute classifiers (train them with `imgtrans train faceattrs`)")
    return AttributeClassifier(net.to(_device(device)), meta, f"{name} ({path})" if name else str(path))


def _device(name: str) -> torch.device:
    from imgtrans.train.runtime import select_device

    return select_device(name)


# ----- latent paths and edits --------------------------------------------------------------
def check_seed(seed: int) -> int:
    if not 0 <= int(seed) <= MAX_SEED:
        raise UserError(f"seed {seed}: use a whole number from 0 to {MAX_SEED}")
    return int(seed)


def lerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    return a + (b - a) * t


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation (White 2016): stays in the shell where Gaussian latents live,
    where a straight line passes closer to the origin and its faces look washed out."""
    cos = torch.dot(a.double(), b.double()) / (a.double().norm() * b.double().norm()).clamp(min=1e-12)
    omega = torch.arccos(cos.clamp(-1.0, 1.0))
    if float(torch.sin(omega)) < 1e-6:  # (anti)parallel: every great circle fits; use the line
        return lerp(a, b, t)
    s = torch.sin(omega)
    return ((torch.sin((1 - t) * omega) / s) * a.double() + (torch.sin(t * omega) / s) * b.double()).to(a.dtype)


def interpolate(a: torch.Tensor, b: torch.Tensor, steps: int, mode: str = "slerp") -> torch.Tensor:
    """(steps, nz) latents from a to b; the first and last are exactly a and b."""
    if steps < 2:
        raise UserError(f"--steps {steps}: an interpolation needs at least 2 steps")
    step = {"lerp": lerp, "slerp": slerp}.get(mode)
    if step is None:
        raise UserError(f"interpolation mode {mode!r}: use lerp or slerp")
    path = [a] + [step(a, b, i / (steps - 1)) for i in range(1, steps - 1)] + [b]
    return torch.stack(path)


def parse_attribute(text: str) -> tuple[str, float]:
    """'male=-1' -> ('male', -1.0)."""
    name, sep, value = text.partition("=")
    try:
        weight = float(value)
    except ValueError:
        weight = math.nan
    if not sep or not name.strip() or not math.isfinite(weight):
        raise UserError(f"--attribute {text!r}: expected NAME=WEIGHT, e.g. male=-1 or age=+1.5")
    return name.strip(), weight


def edit(z: torch.Tensor, weights: Mapping[str, float], directions: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """z + sum of weight * direction (unit vectors, so a weight is a distance in latent space)."""
    if weights and not directions:
        raise UserError("this face model has no attribute directions; compute them with "
                        "`imgtrans faces directions -m MODEL --classifier ...`")
    unknown = [a for a in weights if a not in directions]
    if unknown:
        raise UserError(f"unknown attribute {unknown[0]!r}; this model has: {', '.join(sorted(directions))}")
    out = z.clone()
    for name, w in weights.items():
        out = out + w * directions[name].to(z.dtype)
    return out


# ----- directions --------------------------------------------------------------------------
@dataclass(frozen=True)
class Directions:
    """Unit latent directions by attribute and how they were found."""

    vectors: dict[str, torch.Tensor]  # (nz,) float32, unit length
    stats: dict[str, Any]


def _classify(model: FaceModel, clf: AttributeClassifier, z: torch.Tensor, batch: int = 256) -> torch.Tensor:
    return torch.cat([clf.probs(model.generate(z[i:i + batch])) for i in range(0, len(z), batch)])


def class_mean_difference(z: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Mean latent of the positive class minus that of the negative, each face weighted by the
    classifier's probability (hard 0/1 labels give the plain difference of class means).

    Soft weights keep a rare class (closed eyes) from resting on a handful of hard decisions.
    For z ~ N(0, I) this is parallel to the least-squares linear probe Cov(z, p).
    """
    z, w1 = z.double(), p.double()
    w0 = 1 - w1
    if float(w1.sum()) <= 0 or float(w0.sum()) <= 0:
        raise UserError("every generated face got the same label; this attribute has no direction here "
                        "(train the generator longer or use more --samples)")
    return (w1 @ z) / w1.sum() - (w0 @ z) / w0.sum()


def compute_directions(model: FaceModel, clf: AttributeClassifier, samples: int = 5000, seed: int = DIRECTION_SEED,
                       progress: Callable[[str], None] | None = None) -> Directions:
    """Label `samples` generated faces with the classifiers and take each attribute's normalised
    difference of class-mean latents."""
    if samples < 2:
        raise UserError(f"--samples {samples}: need at least 2 generated faces")
    z = torch.randn(samples, model.nz, generator=torch.Generator().manual_seed(seed))
    if progress:
        progress(f"labelling {samples} generated faces")
    p = _classify(model, clf, z)
    vectors: dict[str, torch.Tensor] = {}
    stats: dict[str, Any] = {"samples": samples, "seed": seed, "method": "probability-weighted class-mean difference"}
    for i, a in enumerate(clf.attributes):
        diff = class_mean_difference(z, p[:, i])
        vectors[a] = (diff / diff.norm()).float()
        stats[a] = {"positive": int((p[:, i] >= 0.5).sum()), "negative": int((p[:, i] < 0.5).sum()),
                    "mean_p": round(float(p[:, i].mean()), 4), "separation": round(float(diff.norm()), 4)}
    names = list(vectors)
    stats["cosines"] = {f"{x}/{y}": round(float(vectors[x] @ vectors[y]), 4)
                        for i, x in enumerate(names) for y in names[i + 1:]}
    return Directions(vectors, stats)


def flip_rates(model: FaceModel, clf: AttributeClassifier, vectors: Mapping[str, torch.Tensor], samples: int = 200,
               strengths: Sequence[float] = (1.0, 2.0, 3.0), seed: int = MEASURE_SEED) -> dict[str, Any]:
    """How often an edit flips the classifier's decision on `samples` fresh generated faces.

    Each face is moved by `strength` towards the class it is not in (a male face along -male,
    a female one along +male). Beside it: the same move along a random unit direction per face
    (the rate that says nothing about the attribute) and how often the other attributes flip.
    """
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(samples, model.nz, generator=gen)
    noise = torch.randn(samples, model.nz, generator=gen)
    noise = noise / noise.norm(dim=1, keepdim=True)
    before = _classify(model, clf, z) >= 0.5
    names = clf.attributes
    out: dict[str, Any] = {"samples": samples, "seed": seed, "strengths": list(strengths), "attributes": {}}
    for k in strengths:
        random_after = _classify(model, clf, z + k * noise) >= 0.5
        for i, a in enumerate(names):
            if a not in vectors:
                continue
            sign = torch.where(before[:, i], -1.0, 1.0)[:, None]
            after = _classify(model, clf, z + k * sign * vectors[a][None]) >= 0.5
            flipped = after != before
            pos = before[:, i]
            rec = {
                "strength": k,
                "positive": int(pos.sum()), "negative": int((~pos).sum()),
                "flip_rate": round(float(flipped[:, i].float().mean()), 4),
                "to_positive": round(float(flipped[~pos, i].float().mean()), 4) if (~pos).any() else None,
                "to_negative": round(float(flipped[pos, i].float().mean()), 4) if pos.any() else None,
                "random_direction_flip_rate": round(float((random_after[:, i] != before[:, i]).float().mean()), 4),
                "others_flipped": {b: round(float(flipped[:, j].float().mean()), 4)
                                   for j, b in enumerate(names) if b != a},
            }
            out["attributes"].setdefault(a, []).append(rec)
    return out


def with_directions(model: FaceModel, found: Directions, report: Mapping[str, Any], out: str | Path) -> Path:
    """Write the generator again with its directions and their report in the metadata."""
    path = Path(out)
    if path.suffix != ".safetensors":
        raise UserError(f"--out {out}: the face model is written as a .safetensors file")
    meta = {k: v for k, v in model.meta.items() if k != "name"}
    meta.update({
        "directions": {a: [float(x) for x in v] for a, v in found.vectors.items()},
        "direction_stats": found.stats,
        "direction_report": dict(report),
    })
    state = {k: v.detach().float().cpu() for k, v in model.net.state_dict().items()}
    return save_export(path.parent, path.name[: -len(".safetensors")], state, meta)


# ----- images ------------------------------------------------------------------------------
def grid(images: torch.Tensor, cols: int, pad: int = 2) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> one uint8 picture, row-major, `pad` white pixels between cells."""
    n, _, h, w = images.shape
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    out = np.full((rows * h + (rows - 1) * pad, cols * w + (cols - 1) * pad, 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = to_uint8(images[i])
    return out


def check_image_path(path: str | Path, overwrite: bool = True) -> Path:
    p = Path(path)
    if p.suffix.lower() not in IMAGE_SUFFIXES:
        raise UserError(f"{p}: name an image file ({', '.join(IMAGE_SUFFIXES)})")
    refuse_existing([p], overwrite)
    return p


def write_image(path: str | Path, rgb: np.ndarray, upscale: int = 1) -> Path:
    """Write atomically (never a half image); `upscale` enlarges by pixel repetition for viewing."""
    p = check_image_path(path)
    if upscale > 1:
        rgb = np.repeat(np.repeat(rgb, upscale, 0), upscale, 1)
    write_photo(p, Photo(rgb=np.ascontiguousarray(rgb)), format_for_ext(p.suffix))
    return p


def face_files(folder: str | Path, seeds: Sequence[int], overwrite: bool = False) -> list[Path]:
    """The files --separate writes (seed-000042.png), checked before any face is made."""
    root = Path(folder)
    if root.exists() and not root.is_dir():
        raise UserError(f"{root}: not a folder; --separate writes one file per seed into a folder")
    paths = [root / f"seed-{s:06d}.png" for s in seeds]
    refuse_existing(paths, overwrite)
    return paths


def write_faces(paths: Sequence[Path], images: torch.Tensor, upscale: int = 1) -> list[Path]:
    """One PNG per face, at the paths face_files() gave."""
    return [write_image(p, to_uint8(img), upscale) for img, p in zip(images, paths)]


# ----- the directions command --------------------------------------------------------------
def heldout_figures(classifier: str | Path) -> dict[str, Any] | None:
    """The classifier run's eval.json (held-out accuracy on real faces), when given a run folder."""
    path = Path(classifier) / "eval.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def direction_report(model: FaceModel, clf: AttributeClassifier, classifier: str | Path, samples: int = 5000,
                     measure: int = 200, strengths: Sequence[float] = (1.0, 2.0, 3.0),
                     progress: Callable[[str], None] | None = None) -> tuple[Directions, dict[str, Any]]:
    """Find the directions, then measure them on `measure` other faces; the report says it all."""
    found = compute_directions(model, clf, samples, progress=progress)
    if progress:
        progress(f"measuring edits on {measure} other generated faces")
    report = {
        "model": model.source,
        "classifier": clf.source,
        "classifier_labels": clf.meta.get("labels"),
        "classifier_heldout": heldout_figures(classifier),
        "directions": found.stats,
        "flips": flip_rates(model, clf, found.vectors, measure, strengths),
    }
    return found, report


def format_report(report: Mapping[str, Any]) -> str:
    """A table: per attribute and strength, the flip rate of the edit beside a random direction's."""
    lines = [f"{'attribute':<10} {'+/- in samples':>15} {'strength':>8} {'flip':>6} {'to +':>6} {'to -':>6} "
             f"{'random':>7}"]
    stats = report["directions"]
    for a, recs in report["flips"]["attributes"].items():
        counts = f"{stats[a]['positive']}/{stats[a]['negative']}"
        for r in recs:
            cells = [r["flip_rate"], r["to_positive"], r["to_negative"], r["random_direction_flip_rate"]]
            text = ["-" if c is None else f"{c:.0%}" for c in cells]
            lines.append(f"{a:<10} {counts:>15} {r['strength']:>8g} {text[0]:>6} {text[1]:>6} {text[2]:>6} "
                         f"{text[3]:>7}")
    cos = ", ".join(f"{k} {v:+.2f}" for k, v in stats.get("cosines", {}).items())
    if cos:
        lines.append(f"cosines between directions: {cos}")
    return "\n".join(lines)
