"""Named models: the manifest, resolving names and paths to generator weights, the user cache."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from torch import Tensor, nn

from imgtrans import legacy
from imgtrans.data.transforms import load_size_for
from imgtrans.errors import UserError
from imgtrans.nn.generators import ResnetArch, ResnetGenerator
from imgtrans.objectives.cyclegan import DIRECTIONS
from imgtrans.train.checkpoint import atomic_write, latest_checkpoint, load_export, save_export
from imgtrans.train.ema import averaged_state

MANIFEST = "manifest.json"
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".onnx")
TRANSLATION_OBJECTIVES = ("cyclegan", "cut")  # objectives whose exports `translate` runs
ACCEPTED = ("a model name, a .safetensors export, a training run folder, a checkpoint .pt, an official .pth "
            "or an `imgtrans export` .onnx")


@dataclass(frozen=True)
class LoadedGenerator:
    """A ready-to-run generator (eval mode, float32, CPU) with its metadata and origin."""

    net: nn.Module
    meta: dict[str, Any]
    source: str


# ----- locations ---------------------------------------------------------------------------
def run_size(size: int | str | None, meta: dict[str, Any]) -> int:
    """The short side to run a generator at: a number, "train" (its training size) or 0/None (native)."""
    text = str(size or 0).strip()
    if text == "train":
        train = int(meta.get("train_size") or 0)
        if not train:
            raise UserError("--size train: these weights do not record a training size; pass a number")
        return train
    if not text.isdigit() or (text != "0" and int(text) < 8):
        raise UserError(f"--size {text!r}: give a short side in pixels (>= 8) or 'train'")
    return int(text)


def recorded_settings(meta: dict[str, Any], size: int | str | None,
                      keep_detail: bool | None) -> tuple[int | str | None, bool, list[str]]:
    """`size` and `keep_detail`, each as given or else from the model's recorded defaults (a
    shipped model's manifest "defaults": the settings its figures were measured with), and the
    flags that came from the defaults."""
    defaults = meta.get("defaults") or {}
    used = []
    if size is None and defaults.get("size") is not None:
        size = str(defaults["size"])
        used.append(f"--size {size}")
    if keep_detail is None:
        # Only meaningful when the network runs smaller than the photo (not at size 0).
        keep_detail = bool(defaults.get("keep_detail", False)) and str(size or 0).strip() != "0"
        if keep_detail:
            used.append("--keep-detail")
    return size, keep_detail, used


def repo_weights_dir() -> Path:
    """The shipped `weights/` folder (or $IMGTRANS_WEIGHTS)."""
    env = os.environ.get("IMGTRANS_WEIGHTS")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "weights"


def home_dir() -> Path:
    """The user's own models (imports): $IMGTRANS_HOME, default ~/.cache/imgtrans."""
    env = os.environ.get("IMGTRANS_HOME")
    return Path(env) if env else Path.home() / ".cache" / "imgtrans"


def search_dirs() -> list[Path]:
    """Folders searched for a model name, first match wins: shipped weights, then the user cache."""
    return [repo_weights_dir(), home_dir()]


# ----- manifest ----------------------------------------------------------------------------
def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_name(name: str) -> None:
    """Refuse names that could not be a manifest name (they would also be read as paths)."""
    if not NAME_RE.match(name) or name in (".", ".."):
        raise UserError(f"invalid model name {name!r}; use letters, digits, '_', '.' and '-' only")


def read_manifest(folder: Path) -> list[dict[str, Any]]:
    """The entries of `folder/manifest.json`; a missing manifest means no models there."""
    path = folder / MANIFEST
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a readable manifest ({e}); fix the JSON or restore it from git") from None
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, list) or not all(isinstance(m, dict) and "name" in m and "file" in m for m in models):
        raise UserError(f"{path}: a manifest must be {{\"models\": [{{\"name\": ..., \"file\": ..., ...}}]}}; "
                        "see weights/README.md")
    return models


def write_manifest(folder: Path, models: list[dict[str, Any]]) -> None:
    text = json.dumps({"models": models}, indent=2) + "\n"
    atomic_write(folder / MANIFEST, lambda tmp: Path(tmp).write_text(text))


def list_models() -> list[dict[str, Any]]:
    """Every manifest entry in search order, with `location`, `path`, `size` (None if missing), `active`."""
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for folder in search_dirs():
        for entry in read_manifest(folder):
            file = folder / entry["file"]
            out.append({**entry, "location": str(folder), "path": str(file),
                        "size": file.stat().st_size if file.is_file() else None,
                        "active": entry["name"] not in seen})  # False: shadowed by an earlier folder
            seen.add(entry["name"])
    return out


def model_info(name: str) -> dict[str, Any]:
    """The manifest entry a name resolves to (the first folder that lists it)."""
    for entry in list_models():
        if entry["name"] == name:
            return entry
    raise _unknown_name(name)


def _unknown_name(name: str) -> UserError:
    names = sorted({m["name"] for m in list_models()})
    where = " and ".join(str(d / MANIFEST) for d in search_dirs())
    if names:
        return UserError(f"unknown model {name!r}; available: {', '.join(names)} (or pass a weights file path)")
    return UserError(f"unknown model {name!r}: no named models are installed yet (looked in {where}); "
                     "pass --weights PATH to a .safetensors export, official .pth or training run folder")


# ----- loading -----------------------------------------------------------------------------
def _check_direction(direction: str | None) -> None:
    if direction is not None and direction not in DIRECTIONS:
        raise UserError(f"unknown direction {direction!r}; choose one of {', '.join(DIRECTIONS)}")


def _build(state: Mapping[str, Tensor], meta: dict[str, Any], source: str) -> LoadedGenerator:
    """Rebuild the generator from `meta["arch"]` and load `state` strictly, in float32."""
    try:
        arch = ResnetArch(**meta["arch"])
        net = ResnetGenerator(arch)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{source}: metadata has no usable generator architecture ({e}); re-export it") from None
    # Stored half-precision weights are upcast: inference runs in float32 (autocast may lower it).
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    problems = legacy.layout_problems(state, arch)
    if problems:
        raise UserError(f"{source}: weights do not fit their recorded architecture ({'; '.join(problems[:3])})")
    net.load_state_dict(state, strict=True)
    return LoadedGenerator(net=net.float().eval(), meta=meta, source=source)


def _from_export(path: Path, direction: str | None) -> LoadedGenerator:
    state, meta = load_export(path)
    objective = meta.get("objective")
    if objective is not None and objective not in TRANSLATION_OBJECTIVES:
        raise UserError(f"{path}: {objective} weights, not a translation generator; pass a translation model "
                        f"({', '.join(translation_names()) or 'see `imgtrans weights list`'})")
    if "arch" not in meta:
        # A bare safetensors file with the official key layout: infer like a .pth.
        state, arch = legacy.state_from_object(state, path)
        meta = {"objective": "cyclegan", "arch": arch.to_dict(), "direction": direction or "AtoB",
                "source_format": "safetensors"}
    recorded = meta.get("direction")
    if direction is not None and recorded is not None and recorded != direction:
        raise UserError(f"{path}: these weights translate {recorded}, not {direction}; "
                        f"leave the direction out or pick the {direction} weights")
    return _build(state, meta, str(path))


def _run_config(run_dir: Path) -> dict[str, Any]:
    """The run's config.json if present; only used to describe the weights, so absence is fine."""
    try:
        data = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# What a generator computes beyond its weights' names and shapes: a run's config.json says them.
BEHAVIOUR = ("residual", "upsample", "down_pad", "mask")


def _configured_arch(state: Mapping[str, Tensor], model: dict[str, Any], source: str) -> ResnetArch:
    """The generator of a translation run's checkpoint: sizes read off the weights, and the
    settings in BEHAVIOUR (residual output, resize upsampling, reflect padding, mask) from its config,
    since they change the computation without (always) changing a name or a shape."""
    try:
        inferred = legacy.infer_resnet_arch(state)
        return replace(inferred, **{k: model[k] for k in BEHAVIOUR if k in model})
    except (UserError, TypeError, ValueError) as e:
        raise UserError(f"{source}: {e}") from None


def _from_checkpoint(ckpt: dict[str, Any], path: Path, direction: str | None) -> LoadedGenerator:
    """One generator out of a training checkpoint `{"nets": {...}, ...}`."""
    direction = direction or "AtoB"
    net_name, official = DIRECTIONS[direction]
    nets = ckpt["nets"]
    if not isinstance(nets, Mapping) or net_name not in nets:
        found = ", ".join(sorted(nets)) if isinstance(nets, Mapping) else "none"
        raise UserError(f"{path}: checkpoint has no {net_name} network for {direction} (it has: {found})")
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    config = _run_config(run_dir)
    model = config.get("model", {}) if isinstance(config.get("model"), dict) else {}
    # A run trained with --set ema exports its weight average; a checkpoint gives the same weights.
    state = averaged_state(ckpt, net_name)
    if config.get("objective", "cyclegan") in ("cyclegan", "cut") and model:
        arch = _configured_arch(state, model, f"{path} [{net_name}]")
    else:  # no run config beside it: only what the weights tell
        state, arch = legacy.state_from_object(state, f"{path} [{net_name}]")
    meta: dict[str, Any] = {
        "objective": config.get("objective", "cyclegan"),
        "network": "resnet_generator",
        "direction": direction,
        "official_name": official,
        "arch": arch.to_dict(),
        "source_format": "checkpoint",
    }
    if "step" in ckpt:
        meta["steps"] = int(ckpt["step"])
    if "crop_size" in model:
        meta["train_size"] = load_size_for(int(model["crop_size"]), int(model.get("load_size") or 0))
    if "a" in model and "b" in model:
        meta["data"] = {"a": model["a"], "b": model["b"]}
    return _build(state, meta, f"{path} [{net_name}]")


def _from_run_dir(run_dir: Path, direction: str | None) -> LoadedGenerator:
    """A training run: its export for the direction if written, else its newest checkpoint."""
    exported = run_dir / "export" / f"{direction or 'AtoB'}.safetensors"
    if exported.is_file():
        return _from_export(exported, direction or "AtoB")
    if not (run_dir / "checkpoints").is_dir():
        raise UserError(f"{run_dir}: not a training run folder (no export/{exported.name} and no "
                        f"checkpoints/step-*.pt); pass {ACCEPTED}")
    path = latest_checkpoint(run_dir)
    return _from_torch_file(path, direction)


def _from_torch_file(path: Path, direction: str | None) -> LoadedGenerator:
    """A pickle-format file: our checkpoint (has "nets") or an official generator state dict."""
    obj = legacy.read_torch_file(path)
    if isinstance(obj, Mapping) and "nets" in obj:
        return _from_checkpoint(dict(obj), path, direction)
    state, arch = legacy.state_from_object(obj, path)
    meta = {"objective": "cyclegan", "arch": arch.to_dict(), "direction": direction or "AtoB",
            "source_format": "official"}
    return _build(state, meta, str(path))


def _from_onnx(path: Path, direction: str | None) -> LoadedGenerator:
    from imgtrans.onnxrun import OnnxGenerator, onnx_meta

    meta = onnx_meta(path)
    recorded = meta.get("direction")
    if direction is not None and recorded is not None and recorded != direction:
        raise UserError(f"{path}: this model translates {recorded}, not {direction}; leave the direction out")
    return LoadedGenerator(net=OnnxGenerator(path), meta={**meta, "backend": "onnxruntime"}, source=str(path))


def _load_path(path: Path, direction: str | None) -> LoadedGenerator:
    if path.suffix == ".onnx":
        return _from_onnx(path, direction)
    if path.is_dir():
        return _from_run_dir(path, direction)
    if path.suffix == ".safetensors":
        return _from_export(path, direction)
    return _from_torch_file(path, direction)


def verified_file(name: str) -> tuple[Path, dict[str, Any]]:
    """The file a manifest name resolves to, after checking it exists and matches its sha256."""
    entry = model_info(name)
    path = Path(entry["path"])
    if entry["size"] is None:
        raise UserError(f"{path}: file of model {name!r} is missing; restore it or re-import the model")
    expected = entry.get("sha256")
    if not expected:
        raise UserError(f"{entry['location']}/{MANIFEST}: model {name!r} has no sha256; add it "
                        f"(imgtrans.weights.sha256_file) so the file can be verified")
    actual = sha256_file(path)
    if actual != expected:
        raise UserError(f"{path}: sha256 {actual[:12]}... does not match the manifest ({expected[:12]}...); "
                        "the file is damaged or was replaced: restore it or re-import the model")
    return path, entry


def resolve_export(name_or_path: str | Path, export_name: str, accepted: str) -> tuple[Path, str | None]:
    """An exported .safetensors from a run folder (`export/NAME.safetensors`), a file, or a verified
    manifest name; returns the file and the model name (None for paths). Shared by every model
    loader that is not a CycleGAN generator."""
    path = Path(name_or_path)
    if path.is_dir():
        exported = path / "export" / f"{export_name}.safetensors"
        if not exported.is_file():
            raise UserError(f"{path}: no export/{exported.name} in this folder; pass {accepted}")
        return exported, None
    if path.is_file():
        return path, None
    text = str(name_or_path)
    if _looks_like_path(text):
        raise UserError(f"{text}: file not found; pass {accepted}")
    return verified_file(text)[0], text


def load_checked_export(path: Path, objective: str, build: Callable[[dict[str, Any]], nn.Module],
                        hint: str) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a network from an export whose metadata must name `objective`; eval mode, float32."""
    state, meta = load_export(path)
    if meta.get("objective") != objective:
        found = meta.get("objective") or "no imgtrans metadata"
        raise UserError(f"{path}: not {objective} weights (objective: {found}); {hint}")
    try:
        net = build(meta)
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except (KeyError, TypeError, RuntimeError) as e:
        reason = str(e).splitlines()[0]
        raise UserError(f"{path}: weights do not fit their recorded architecture ({reason}); re-export them") from None
    return net.float().eval(), meta


def translation_names() -> list[str]:
    """Names of the installed translation models (what `translate -m` accepts)."""
    return sorted({m["name"] for m in list_models() if m.get("task") == "translate"})


def _load_name(name: str, direction: str | None) -> LoadedGenerator:
    names = ", ".join(translation_names())
    try:
        task = model_info(name).get("task", "translate")
    except UserError:
        if not names:
            raise
        raise UserError(f"unknown model {name!r}; translation models: {names} (or pass a weights file path)") from None
    if task != "translate":
        raise UserError(f"{name!r} is not a translation model (task: {task}); translation models: {names or 'none'}")
    path, entry = verified_file(name)
    loaded = _load_path(path, direction or entry.get("direction"))
    meta = {**loaded.meta, "name": name}
    if entry.get("defaults"):
        meta["defaults"] = dict(entry["defaults"])  # the run settings its figures were measured with
    return LoadedGenerator(net=loaded.net, meta=meta, source=f"{name} ({path})")


def _looks_like_path(text: str) -> bool:
    return os.sep in text or "/" in text or text.endswith(WEIGHT_SUFFIXES) or not NAME_RE.match(text)


def require_torch(loaded: LoadedGenerator, action: str) -> None:
    """Refuse an ONNX model where torch weights are needed (`action`: e.g. "imported")."""
    if loaded.meta.get("backend") == "onnxruntime":
        raise UserError(f"{loaded.source}: an ONNX model cannot be {action}; pass the weights it was exported from")


def load_generator(name_or_path: str | Path, direction: str | None = None) -> LoadedGenerator:
    """Load generator weights from a model name or a path; an existing path always wins over a name.

    `direction` ("AtoB"/"BtoA") picks the generator out of a run folder or checkpoint (default
    AtoB) and must agree with the direction recorded in exported weights.
    """
    _check_direction(direction)
    path = Path(name_or_path)
    if path.exists():
        return _load_path(path, direction)
    text = str(name_or_path)
    if _looks_like_path(text):
        raise UserError(f"{text}: file not found; pass {ACCEPTED}")
    return _load_name(text, direction)


# ----- importing ---------------------------------------------------------------------------
def import_weights(path: str | Path, name: str, direction: str | None = None) -> Path:
    """Convert any accepted input into `IMGTRANS_HOME/NAME.safetensors` and list it in its manifest."""
    check_name(name)
    shipped = {m["name"] for m in read_manifest(repo_weights_dir())}
    if name in shipped:
        raise UserError(f"model name {name!r} is already used by {repo_weights_dir() / MANIFEST}, which would "
                        "shadow the import; pick another name")
    loaded = load_generator(path, direction)
    require_torch(loaded, "imported")
    home = home_dir()
    meta = {**loaded.meta, "name": name, "imported_from": loaded.source}
    state = {k: v.detach().float() for k, v in loaded.net.state_dict().items()}
    out = save_export(home, name, state, meta)
    entry: dict[str, Any] = {
        "name": name,
        "task": "translate",
        "direction": meta.get("direction", "AtoB"),
        "file": out.name,
        "sha256": sha256_file(out),
        "architecture": meta["arch"],
        "source": str(Path(path).resolve()) if Path(path).exists() else str(path),
    }
    for key in ("train_size", "data", "steps"):
        if key in meta:
            entry[key] = meta[key]
    models = [m for m in read_manifest(home) if m["name"] != name] + [entry]
    write_manifest(home, sorted(models, key=lambda m: m["name"]))
    return out
