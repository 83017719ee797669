"""Inference for the eye in-painter: aligned faces + masks (+ exemplars) -> faces with new eyes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from imgtrans.data.transforms import to_tensor, to_uint8
from imgtrans.errors import UserError
from imgtrans.faces.eyes import EyeBoxSpec, box_mask, eye_boxes
from imgtrans.objectives.eyes import EyeInpainting, compose_input
from imgtrans.train.checkpoint import load_export
from imgtrans.train.runtime import select_device
from imgtrans.weights import resolve_export

EXPORT_NAME = "inpainter.safetensors"  # what an `imgtrans train eyes` run writes under export/
ACCEPTED = f"a model name, an eyes .safetensors export or an eyes training run folder (with export/{EXPORT_NAME})"


class Inpainter:
    """A trained eye in-painting generator with what it needs to be used: face size and eye boxes."""

    def __init__(self, net: nn.Module, meta: dict[str, Any], device: str | torch.device = "cpu",
                 batch_size: int = 16) -> None:
        self.device = select_device(str(device))  # "auto" and bad names handled, as everywhere
        self.net = net.float().eval().to(self.device)
        self.meta = meta
        self.batch_size = batch_size  # faces per forward pass: bounds memory on big group photos

    @property
    def size(self) -> int:
        """Side of the aligned faces the network was trained on, in pixels."""
        return int(self.meta["size"])

    @property
    def box_spec(self) -> EyeBoxSpec:
        """The eye boxes the network learned to fill."""
        return EyeBoxSpec(**self.meta["box_spec"])

    def default_boxes(self, n: int) -> np.ndarray:
        """(n, 2, 4) training-time boxes around the template eyes."""
        return np.repeat(eye_boxes(self.size, self.box_spec)[None], n, axis=0)

    def masks(self, boxes: np.ndarray) -> np.ndarray:
        """(N, S, S) float32 masks, 1 inside each face's eye boxes: the pixels `inpaint` may change."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 2, 4)
        out = np.zeros((len(boxes), self.size, self.size), np.float32)
        for i, b in enumerate(boxes):
            out[i] = box_mask(self.size, b)
        return out

    def _check(self, faces: np.ndarray, boxes: np.ndarray, exemplars: list[np.ndarray | None]) -> None:
        s = self.size
        if faces.ndim != 4 or faces.shape[1:] != (s, s, 3) or faces.dtype != np.uint8:
            raise ValueError(f"faces must be (N, {s}, {s}, 3) uint8 aligned faces, got {faces.shape} {faces.dtype}")
        if boxes.shape != (len(faces), 2, 4):
            raise ValueError(f"boxes must be ({len(faces)}, 2, 4), got {boxes.shape}")
        if len(exemplars) != len(faces):
            raise ValueError(f"got {len(exemplars)} exemplars for {len(faces)} faces")
        for ex in exemplars:
            if ex is not None and (ex.shape != (s, s, 3) or ex.dtype != np.uint8):
                raise ValueError(f"an exemplar must be a ({s}, {s}, 3) uint8 aligned face, got {ex.shape} {ex.dtype}")

    @torch.no_grad()
    def _generate(self, faces: np.ndarray, masks: np.ndarray, exemplars: list[np.ndarray | None]) -> np.ndarray:
        face = torch.stack([to_tensor(f) for f in faces])
        mask = torch.from_numpy(masks)[:, None]
        zeros = np.zeros_like(faces[0])
        exemplar = torch.stack([to_tensor(e if e is not None else zeros) for e in exemplars])
        has = torch.tensor([[0.0 if e is None else 1.0] for e in exemplars])
        x = compose_input(face, mask, exemplar, has).to(self.device)
        out = self.net(x)
        return np.stack([to_uint8(o) for o in out])

    def inpaint(self, faces: np.ndarray, boxes: np.ndarray | None = None,
                exemplars: list[np.ndarray | None] | None = None) -> np.ndarray:
        """Faces (N, S, S, 3) uint8 with the eye boxes re-drawn; every other pixel is the input's.

        `boxes` (N, 2, 4) in aligned pixels default to the training boxes; `exemplars` are aligned
        open-eye faces of the same people (None where there is none).
        """
        faces = np.asarray(faces)
        boxes = self.default_boxes(len(faces)) if boxes is None else np.asarray(boxes, np.float64)
        exemplars = [None] * len(faces) if exemplars is None else list(exemplars)
        self._check(faces, boxes, exemplars)
        out = faces.copy()
        if not len(faces):
            return out
        masks = self.masks(boxes)
        for i in range(0, len(faces), self.batch_size):
            part = slice(i, i + self.batch_size)
            generated = self._generate(faces[part], masks[part], exemplars[part])
            # Composited in uint8, not in [-1, 1]: a float round trip could move pixels outside the
            # mask by one level, and callers rely on those being untouched.
            inside = masks[part][..., None] > 0.5
            out[part] = np.where(inside, generated, faces[part])
        return out


def _build(state: dict[str, torch.Tensor], meta: dict[str, Any], source: str, device: str) -> Inpainter:
    objective = meta.get("objective")
    if objective != EyeInpainting.name:
        what = f"a {objective!r} export" if objective else "a file without imgtrans metadata"
        raise UserError(f"{source}: {what}, not an eye in-painter; pass {ACCEPTED}")
    try:
        net = EyeInpainting.build_inference(meta)
        EyeBoxSpec(**meta["box_spec"])
        int(meta["size"])
        net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{source}: weights or metadata do not form an eye in-painter ({reason}); "
                        "re-export it") from None
    return Inpainter(net, meta, device)


def _load_file(path: Path, device: str) -> Inpainter:
    if path.suffix != ".safetensors":
        raise UserError(f"{path}: not a .safetensors export; pass {ACCEPTED}")
    state, meta = load_export(path)
    return _build(state, meta, str(path), device)


def load_inpainter(name_or_path: str | Path, device: str = "cpu") -> Inpainter:
    """An Inpainter from an export, a training run folder or a manifest name (an existing path wins)."""
    path, name = resolve_export(name_or_path, EXPORT_NAME.removesuffix(".safetensors"), ACCEPTED)
    inpainter = _load_file(path, device)
    if name:
        inpainter.meta = {**inpainter.meta, "name": name}
    return inpainter
