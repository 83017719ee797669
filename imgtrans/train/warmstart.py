"""Warm start: a new run's networks begin from trained weights (a shipped model, an export, a run).

Why: a run's checkpoints live beside it and are lost with the machine, while shipped and exported
generators travel with the project; fine-tuning from them continues training (with fresh
discriminators and optimizers) instead of repeating hours of CPU. Users fine-tune a shipped model
on their own folders the same way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from imgtrans.errors import UserError
from imgtrans.nn.generators import ResnetArch, ResnetGenerator
from imgtrans.objectives.cyclegan import DIRECTIONS
from imgtrans.train.checkpoint import latest_checkpoint, load_checkpoint, load_export
from imgtrans.train.ema import averaged_state

# Which generator of a two-way run a network name means (G_AB -> AtoB), to pick it out of a run folder.
_DIRECTION_OF = {net: direction for direction, (net, _) in DIRECTIONS.items()}


def parse_init(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """`NET=SOURCE` items as {net: source}; a source that is an existing path is made absolute."""
    out: dict[str, str] = {}
    for item in items:
        net, sep, source = item.partition("=")
        net, source = net.strip(), source.strip()
        if not sep or not net or not source:
            raise UserError(f"--init {item!r}: expected NET=SOURCE, e.g. --init G_AB=horse2zebra")
        if net in out:
            raise UserError(f"--init names {net} twice; give each network one source")
        out[net] = os.path.abspath(source) if Path(source).exists() else source
    return out


def _checkpoint_file(source: str) -> Path | None:
    """The training checkpoint a source names (a run folder with checkpoints, or a .pt), else None."""
    path = Path(source)
    if path.is_dir() and (path / "checkpoints").is_dir():
        return latest_checkpoint(path)
    if path.is_file() and path.suffix == ".pt":
        return path
    return None


def _from_checkpoint(net: str, path: Path) -> dict[str, Tensor] | None:
    """Network `net` of a training checkpoint (its weight average when it has one); None if absent."""
    ckpt = load_checkpoint(path)
    nets = ckpt.get("nets") if isinstance(ckpt, Mapping) else None
    if not isinstance(nets, Mapping) or net not in nets:
        return None
    return averaged_state(dict(ckpt), net)


def _arch_difference(source: ResnetArch, target: ResnetArch) -> list[str]:
    theirs, ours = source.to_dict(), target.to_dict()
    return [f"{k}={theirs[k]}" for k in theirs if theirs[k] != ours[k]]


def _generator_state(net: str, source: str, target: ResnetGenerator) -> dict[str, Tensor]:
    """A translation generator's weights from anything `imgtrans translate --weights` accepts."""
    from imgtrans.weights import load_generator, require_torch

    # A run folder or checkpoint holds both generators of a two-way run: take the one `net` names.
    path = Path(source)
    from_run = path.is_dir() or (path.is_file() and path.suffix == ".pt")
    loaded = load_generator(source, _DIRECTION_OF.get(net) if from_run else None)
    require_torch(loaded, "trained further")
    arch = getattr(loaded.net, "arch", None)
    if isinstance(arch, ResnetArch):
        differ = _arch_difference(arch, target.arch)
        if differ:
            fix = " ".join(f"--set {d.lower() if d.endswith(('True', 'False')) else d}" for d in differ)
            raise UserError(f"--init {net}={source}: its generator differs from this run's in "
                            f"{', '.join(differ)}; train with the same architecture: {fix}")
    return loaded.net.state_dict()


def _export_file(source: str) -> Path | None:
    """An exported `.safetensors` a source names (a path, or a model name's checked file), else None."""
    from imgtrans.weights import NAME_RE, verified_file

    path = Path(source)
    if path.is_file() and path.suffix == ".safetensors":
        return path
    if not path.exists() and NAME_RE.match(source):
        return verified_file(source)[0]  # says so in one line if the name is unknown
    return None


def _state_for(net: str, source: str, target: nn.Module) -> dict[str, Tensor]:
    if isinstance(target, ResnetGenerator) and net in _DIRECTION_OF:
        return _generator_state(net, source, target)
    ckpt = _checkpoint_file(source)
    if ckpt is not None:
        state = _from_checkpoint(net, ckpt)
        if state is None:
            raise UserError(f"--init {net}={source}: that run has no {net} network; pass a run of the same model")
        return state
    export = _export_file(source)
    if export is not None:
        return load_export(export)[0]
    raise UserError(f"--init {net}={source}: not found; pass a model name, an exported .safetensors, or a "
                    f"training run folder or checkpoint with a {net} network")


def _copy_into(net: str, source: str, target: nn.Module, state: Mapping[str, Tensor]) -> None:
    ours = target.state_dict()
    if set(state) != set(ours) or any(state[k].shape != ours[k].shape for k in ours):
        raise UserError(f"--init {net}={source}: its weights do not fit this run's {net} (different "
                        "architecture); train with the settings that run used (its config.json)")
    with torch.no_grad():
        for key, value in ours.items():
            value.copy_(state[key].to(value.dtype))


def warm_start(nets: Mapping[str, nn.Module], init: Mapping[str, str]) -> None:
    """Load each `init[net]` source into `nets[net]` in place; one line naming the problem if it cannot."""
    unknown = [n for n in init if n not in nets]
    if unknown:
        raise UserError(f"--init {unknown[0]}: this model has no network {unknown[0]!r}; its networks are "
                        f"{', '.join(sorted(nets))}")
    for net, source in init.items():
        _copy_into(net, source, nets[net], _state_for(net, source, nets[net]))
