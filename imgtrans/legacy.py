"""Converters for foreign checkpoints (the official CycleGAN `latest_net_G*.pth`)."""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from imgtrans.errors import UserError
from imgtrans.nn.generators import ResnetArch, ResnetGenerator

BLOCK_RE = re.compile(r"^model\.(\d+)\.conv_block\.")
TOP_WEIGHT_RE = re.compile(r"^model\.(\d+)\.weight$")
RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")
EXPECTED = ("an official CycleGAN ResNet generator state dict (keys model.1.weight ... model.26.bias, "
            "as in latest_net_G_A.pth)")
_GLOBAL_RE = re.compile(r"GLOBAL (\S+)")


def read_torch_file(path: str | Path) -> Any:
    """`torch.load` as data only: pickled classes and functions are refused, never run."""
    p = Path(path)
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{p}: file not found") from None
    except IsADirectoryError:
        raise UserError(f"{p}: is a folder; expected a .pth/.pt weights file or a training run folder") from None
    except pickle.UnpicklingError as e:
        # torch's own message is many lines long; keep the one fact that matters: which object.
        found = _GLOBAL_RE.search(str(e))
        if found:
            raise UserError(f"{p}: refused: it holds a pickled Python object ({found.group(1)}) and pickled "
                            "code is never run; re-save it as a plain state dict "
                            "(torch.save(net.state_dict(), PATH)) or as .safetensors") from None
        raise UserError(f"{p}: not a PyTorch weights file (unreadable pickle); expected {EXPECTED}") from None
    except Exception as e:  # noqa: BLE001 - torch raises many types for files that are not its format
        raise UserError(f"{p}: not a PyTorch weights file ({type(e).__name__}); expected {EXPECTED}") from None


def clean_official(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Normalise an official state dict: strip `module.`, drop stale InstanceNorm statistics.

    Files saved from DataParallel prefix every key with `module.`. Files written by PyTorch < 0.4
    carry InstanceNorm running statistics that today's InstanceNorm (track_running_stats=False)
    does not have; the reference project deletes them on load too. Norm layers with a `weight`
    are BatchNorm, whose statistics are real and kept.
    """
    plain = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    affine = {k.rpartition(".")[0] for k in plain if k.endswith(".weight")}
    out: dict[str, Tensor] = {}
    for key, value in plain.items():
        layer, _, leaf = key.rpartition(".")
        if leaf in RUNNING_STATS and layer not in affine:
            continue
        out[key] = value
    # BatchNorm files from before PyTorch 0.4.1 lack the counter; it only matters for momentum=None.
    for key in [k for k in out if k.endswith(".running_mean")]:
        out.setdefault(key[: -len("running_mean")] + "num_batches_tracked", torch.tensor(0, dtype=torch.long))
    return out


def infer_resnet_arch(state: Mapping[str, Tensor]) -> ResnetArch:
    """Read the generator's architecture off a (cleaned) official-layout state dict."""
    first = state.get("model.1.weight")
    if not isinstance(first, Tensor) or first.ndim != 4:
        raise UserError(f"no model.1.weight convolution; expected {EXPECTED}")
    blocks = {int(m.group(1)) for k in state if (m := BLOCK_RE.match(k))}
    # The output conv is the last top-level 4-d weight; anything odd after it fails the layout check.
    tops = [int(m.group(1)) for k, v in state.items() if (m := TOP_WEIGHT_RE.match(k)) and v.ndim == 4]
    last = state[f"model.{max(tops)}.weight"]
    # The reference puts BatchNorm (affine) after the first conv; InstanceNorm there has no keys.
    norm = "batch" if "model.2.weight" in state else "instance"
    return ResnetArch(
        in_channels=int(first.shape[1]),
        out_channels=int(last.shape[0]),
        ngf=int(first.shape[0]),
        n_blocks=len(blocks),
        norm=norm,
        dropout=_second_conv_shifted(state, blocks),
    )


def _second_conv_shifted(state: Mapping[str, Tensor], blocks: set[int]) -> bool:
    """Dropout inserts a layer, moving each block's second conv from `conv_block.5` to `.6`.

    Only a 4-d weight counts: with BatchNorm, `.6` is also where the second norm sits.
    """
    if not blocks:
        return False
    weight = state.get(f"model.{min(blocks)}.conv_block.6.weight")
    return isinstance(weight, Tensor) and weight.ndim == 4


def layout_problems(state: Mapping[str, Tensor], arch: ResnetArch) -> list[str]:
    """Differences between `state` and what `ResnetGenerator(arch)` expects; empty when it fits."""
    with torch.device("meta"):  # shapes only: no memory, no init cost even for ngf 64
        expected = {k: tuple(v.shape) for k, v in ResnetGenerator(arch).state_dict().items()}
    problems = [f"missing {k}" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    problems += [f"{k} has shape {tuple(state[k].shape)}, expected {shape}"
                 for k, shape in expected.items() if k in state and tuple(state[k].shape) != shape]
    return problems


def state_from_object(obj: Any, path: str | Path) -> tuple[dict[str, Tensor], ResnetArch]:
    """Validate an already loaded official object and return its cleaned state and architecture."""
    if not isinstance(obj, Mapping) or not obj or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    ):
        raise UserError(f"{path}: not a plain state dict of tensors; expected {EXPECTED}")
    state = clean_official(obj)
    try:
        arch = infer_resnet_arch(state)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    problems = layout_problems(state, arch)
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise UserError(f"{path}: keys do not fit a ResNet generator with ngf={arch.ngf}, "
                        f"n_blocks={arch.n_blocks}, norm={arch.norm} ({shown}); expected {EXPECTED}")
    return state, arch


def load_official(path: str | Path) -> tuple[dict[str, Tensor], ResnetArch]:
    """Load an official `latest_net_G*.pth` safely and infer the generator that fits it."""
    return state_from_object(read_torch_file(path), path)
