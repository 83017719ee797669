"""Adding a trained generator to a weights folder: fp16 when lossless enough, sha256, manifest entry."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch import nn

from imgtrans.errors import UserError
from imgtrans.io import list_images, read_rgb
from imgtrans.registry import objective_class
from imgtrans.train.checkpoint import load_export, save_export
from imgtrans.weights import (TRANSLATION_OBJECTIVES, check_name, read_manifest, repo_weights_dir, sha256_file,
                              write_manifest)

# fp16 storage is kept only when no output pixel moves by a full 8-bit level.
FP16_MAX_DIFF = 1 / 255
SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "photos"
# Generators only: their outputs are images, where "a full 8-bit level" is the natural bound.
TASKS = {**dict.fromkeys(TRANSLATION_OBJECTIVES, "translate"), "eyes": "eye-inpainting", "dcgan": "face-generation"}
PROBE_LATENTS = 256  # DCGAN faces drawn to probe fp16 storage (seeds 0..255)


@dataclass(frozen=True)
class ShipRequest:
    """What to ship: an exported generator and the manifest fields only a person can say."""

    export: Path
    name: str
    folder: Path = field(default_factory=repo_weights_dir)
    fields: dict[str, Any] = field(default_factory=dict)  # data, command, cpu_hours, metrics, licence, ...
    fp16: bool = True  # try half-precision storage (kept only when the probe says it is lossless)
    probe_size: int = 256


def _photos(size: int) -> list[torch.Tensor]:
    """The redistributable sample photos, short side `size` (a multiple of 4), as 1x3xHxW in [-1, 1]."""
    out = []
    for path in list_images(SAMPLES):
        img = read_rgb(path)
        scale = size / min(img.size)
        w, h = (max(4, int(round(d * scale / 4)) * 4) for d in img.size)
        rgb = np.asarray(img.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
        out.append(torch.from_numpy(rgb).permute(2, 0, 1)[None] / 127.5 - 1)
    if not out:
        raise UserError(f"{SAMPLES}: no sample photos to check fp16 storage with; restore samples/ or pass --no-fp16")
    return out


def probe_inputs(meta: dict[str, Any], size: int) -> list[torch.Tensor]:
    """Realistic inputs for the generator the metadata describes (photos; for the in-painter, faces
    with their eye boxes masked and another photo as the exemplar; for a DCGAN, seeded latents)."""
    if meta.get("objective") == "dcgan":
        from imgtrans.pipelines.latent import latents

        z = latents(list(range(PROBE_LATENTS)), int(meta["arch"]["nz"]))
        return list(z.split(64))
    photos = _photos(size)
    if meta.get("objective") != "eyes":
        return photos
    from imgtrans.faces.eyes import EyeBoxSpec, box_mask, eye_boxes
    from imgtrans.objectives.eyes import compose_input

    s = int(meta.get("size", 128))
    faces = [torch.nn.functional.interpolate(p[..., :min(p.shape[-2:]), :min(p.shape[-2:])], size=(s, s),
                                             mode="bilinear", align_corners=False) for p in photos]
    mask = torch.from_numpy(box_mask(s, eye_boxes(s, EyeBoxSpec(**meta.get("box_spec", {}))))).float()[None, None]
    one = torch.ones(1)
    return [compose_input(f, mask, faces[(i + 1) % len(faces)], one) for i, f in enumerate(faces)]


@torch.inference_mode()
def fp16_difference(state: dict[str, torch.Tensor], build: Callable[[], nn.Module],
                    inputs: list[torch.Tensor]) -> float:
    """Largest output change, on the [0, 1] scale of a [-1, 1] generator, from rounding the weights to fp16."""
    nets = []
    for half in (False, True):
        net = build()
        net.load_state_dict({k: (v.half() if half and v.is_floating_point() else v).float() for k, v in state.items()})
        nets.append(net.eval())
    return max(float((nets[0](x) - nets[1](x)).abs().max()) / 2 for x in inputs)


def ship(req: ShipRequest) -> dict[str, Any]:
    """Copy the export into `req.folder` as NAME.safetensors and add or replace its manifest entry."""
    check_name(req.name)
    state, meta = load_export(req.export)
    if "arch" not in meta or meta.get("objective") not in TASKS:
        raise UserError(f"{req.export}: not an exported imgtrans generator ({', '.join(TASKS)}); "
                        "pass a run's export/*.safetensors")
    objective = objective_class(meta["objective"])
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    storage, diff = "fp32", None
    if req.fp16:
        diff = fp16_difference(state, lambda: objective.build_inference(meta), probe_inputs(meta, req.probe_size))
        if diff < FP16_MAX_DIFF:
            storage = "fp16"
            state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    meta = {**meta, "name": req.name, "storage": storage}
    path = save_export(req.folder, req.name, state, meta)
    (req.folder / f"{req.name}.json").unlink(missing_ok=True)  # the manifest entry says it all
    entry: dict[str, Any] = {
        "name": req.name,
        "task": TASKS[meta["objective"]],
        **({"direction": meta["direction"]} if "direction" in meta else {}),
        "file": path.name,
        "sha256": sha256_file(path),
        "objective": meta["objective"],
        "architecture": meta["arch"],
        "storage": storage,
        **({"fp16_max_diff": round(diff, 6)} if diff is not None else {}),
        # The in-painter records its aligned face size as `size`; translation exports as `train_size`.
        **({"train_size": meta.get("train_size", meta.get("size"))} if "train_size" in meta or "size" in meta else {}),
        **({"steps": meta["steps"]} if "steps" in meta else {}),
        **req.fields,
    }
    models = [m for m in read_manifest(req.folder) if m["name"] != req.name] + [entry]
    write_manifest(req.folder, sorted(models, key=lambda m: m["name"]))
    return entry
