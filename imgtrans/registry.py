"""Names -> objective classes (drives `imgtrans train NAME` and rebuilding exported networks)."""

from __future__ import annotations

import importlib
from typing import Any

from imgtrans.errors import UserError

# name -> "module:Class". Adding a model = one objective file + one line here.
OBJECTIVES: dict[str, str] = {
    "cyclegan": "imgtrans.objectives.cyclegan:CycleGAN",
    "cut": "imgtrans.objectives.cut:CUT",
    "judge": "imgtrans.objectives.judge:Judge",
    "eyes": "imgtrans.objectives.eyes:EyeInpainting",
    "eyestate": "imgtrans.objectives.eyestate:EyeState",
    "dcgan": "imgtrans.objectives.dcgan:DCGAN",
    "faceattrs": "imgtrans.objectives.faceattrs:FaceAttributes",  # labels DCGAN faces for latent directions
}


def objective_names() -> list[str]:
    return sorted(OBJECTIVES)


def objective_class(name: str) -> Any:
    """Import and return the objective class registered as `name`."""
    try:
        target = OBJECTIVES[name]
    except KeyError:
        raise UserError(f"unknown model {name!r}; available: {', '.join(objective_names())}") from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)
