"""Config sections as frozen dataclasses; merge defaults < file < --set key=value; JSON round trip."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, Callable, Mapping

from imgtrans.errors import UserError

Sections = dict[str, Any]  # section name -> frozen dataclass instance

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def coerce(value: Any, typ: Any, key: str) -> Any:
    """Convert a JSON value or a `--set` string to the field's declared type."""
    origin = typing.get_origin(typ)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return coerce(value, args[0], key)
    if origin is tuple:
        parts = value.split(",") if isinstance(value, str) else list(value)
        args = typing.get_args(typ)
        inner = [args[0]] * len(parts) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(inner) != len(parts):
            raise UserError(f"{key}: expected {len(inner)} comma-separated values, got {value!r}")
        return tuple(coerce(p, t, key) for p, t in zip(parts, inner))
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE | _FALSE:
                return text in _TRUE
            raise ValueError(value)
        if typ in (int, float) and isinstance(value, bool):
            raise ValueError(value)  # JSON true/false is not a number
        if typ is int:
            number = float(value) if isinstance(value, str) and "e" in value.lower() else value
            if isinstance(number, float) and not number.is_integer():
                raise ValueError(value)
            return int(number)
        if typ is float:
            return float(value)
        if typ is str:
            return str(value)
    except (TypeError, ValueError):
        raise UserError(f"{key}: cannot read {value!r} as {typ.__name__}") from None
    return value


# Allowed ranges of settings by name, checked whenever a config file or `--set` gives one. A name
# means the same in every section that has it (ngf is a width in CycleGAN, CUT and the in-painter),
# so one table serves them all; values outside it would fail later inside torch with a traceback.
Rule = tuple[Callable[[float], bool], str]  # (accepts the value, what is allowed)


def _at_least(low: float) -> Rule:
    return (lambda v: v >= low), f"at least {low:g}"


_POSITIVE: Rule = ((lambda v: v > 0), "above 0")
_FRACTION: Rule = ((lambda v: 0 <= v <= 1), "between 0 and 1")
_BELOW_1: Rule = ((lambda v: 0 <= v < 1), "at least 0 and below 1")
RANGES: dict[str, Rule] = {
    **dict.fromkeys(("ngf", "ndf", "local_ndf", "n_layers_d", "nz", "width", "f_width", "num_patches",
                     "batch_size", "bn_calibration", "sample_grid"), _at_least(1)),
    **dict.fromkeys(("n_blocks", "load_size", "steps", "epochs", "workers", "pool_size", "log_every",
                     "sample_every", "checkpoint_every", "eval_every", "test_images", "keep_checkpoints", "sample_count", "max_nonfinite",
                     "time_limit", "grad_clip", "init_gain", "pos_weight", "center_jitter", "size_jitter",
                     "d_warmup", "lr_d"),
                    _at_least(0)),
    **dict.fromkeys(("decay_start", "rare_share", "closed_share", "min_scale"), _FRACTION),
    **dict.fromkeys(("beta1", "beta2", "val_fraction"), _BELOW_1),
    **dict.fromkeys(("crop_size", "size"), _at_least(8)),
    "lr": _POSITIVE,
}


def check_range(key: str, name: str, value: Any) -> None:
    """Refuse a numeric setting outside its range, in one line naming it and what is allowed."""
    rule = _at_least(0) if name.startswith("lambda_") else RANGES.get(name)  # loss weights
    if rule is None or not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    accepts, allowed = rule
    if not accepts(value):
        raise UserError(f"{key}={value:g}: must be {allowed}")


def parse_sets(items: list[str]) -> dict[str, str]:
    """Parse repeated `--set key=value` options."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected key=value, e.g. --set crop_size=128")
        out[key.strip()] = value.strip()
    return out


def _locate(sections: Sections, key: str) -> tuple[str, str]:
    """Find which section owns `key` (`section.key` or a field name unique across sections)."""
    if "." in key:
        section, _, name = key.partition(".")
        if section in sections and name in _hints(type(sections[section])):
            return section, name
    else:
        owners = [s for s, inst in sections.items() if key in _hints(type(inst))]
        if len(owners) == 1:
            return owners[0], key
        if len(owners) > 1:
            options = ", ".join(f"{s}.{key}" for s in owners)
            raise UserError(f"setting {key!r} is ambiguous; use one of {options}")
    known = sorted(f for inst in sections.values() for f in _hints(type(inst)))
    raise UserError(f"unknown setting {key!r}; known settings: {', '.join(known)}")


def merge(sections: Sections, values: Mapping[str, Any]) -> Sections:
    """Return new sections with `values` (flat or dotted keys, or nested section dicts) applied."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if key in sections and isinstance(value, Mapping):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    changes: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        section, name = _locate(sections, key)
        typ = _hints(type(sections[section]))[name]
        changes.setdefault(section, {})[name] = coerce(value, typ, key)
        check_range(key, name, changes[section][name])
    return {s: dataclasses.replace(inst, **changes.get(s, {})) for s, inst in sections.items()}


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON config file (the same shape `to_dict` writes)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise UserError(f"{p}: config file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{p}: not a readable JSON config ({e}); write it as the run's config.json") from None
    if not isinstance(data, dict):
        raise UserError(f"{p}: a config file must hold a JSON object")
    return data


def to_dict(sections: Sections) -> dict[str, Any]:
    """Sections as plain dicts, ready for json.dumps."""
    return {name: dataclasses.asdict(inst) for name, inst in sections.items()}
