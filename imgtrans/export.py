"""ONNX export of a translation generator (dynamic batch, height and width), verified with onnxruntime."""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from imgtrans.errors import UserError
from imgtrans.nn.subpixel import with_subpixel_upsampling

EXTRA_HINT = "ONNX export needs the `onnx` extra: pip install 'imgtrans[onnx]' (onnx, onnxruntime, onnxscript)"
INPUT, OUTPUT = "image", "translated"
# Shapes the export is checked at: different batch sizes and non-square sides prove the axes are
# dynamic. Sides are multiples of 4, the generator's stride (callers pad, as Translator does).
CHECK_SHAPES = ((1, 3, 64, 64), (2, 3, 72, 100))
TOLERANCE = 1e-4


@dataclass(frozen=True)
class ExportReport:
    """Where the model went and how far onnxruntime's output is from torch's."""

    path: Path
    max_abs_diff: float
    shapes: tuple[tuple[int, ...], ...]


def require_onnx() -> None:
    """Fail with one line naming the extra when onnx, onnxruntime or onnxscript is missing."""
    try:
        for module in ("onnx", "onnxruntime", "onnxscript"):
            importlib.import_module(module)
    except ImportError:
        raise UserError(EXTRA_HINT) from None


def _in_channels(net: nn.Module) -> int:
    return int(getattr(getattr(net, "arch", None), "in_channels", 3))


def export_onnx(net: nn.Module, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write `net` (N x C x H x W in [-1, 1] -> same) as ONNX with dynamic N, H and W.

    `meta` (architecture, direction, ...) is stored as JSON in the model's metadata under
    "imgtrans", so the file says what it is.
    """
    require_onnx()
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Sub-pixel upsampling computes the same; onnxruntime runs it faster and can quantize it.
    net = with_subpixel_upsampling(net.float().eval().cpu())
    sample = torch.zeros(1, _in_channels(net), 64, 64)
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
    with torch.inference_mode(False), torch.no_grad():
        program = torch.onnx.export(net, (sample,), input_names=[INPUT], output_names=[OUTPUT], dynamo=True,
                                    dynamic_shapes=({**dims},), verbose=False)
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    model = program.model_proto
    entry = model.metadata_props.add()
    entry.key, entry.value = "imgtrans", json.dumps(meta or {}, sort_keys=True, default=str)
    onnx.save(model, str(path))
    return path


def max_difference(net: nn.Module, path: str | Path,
                   shapes: tuple[tuple[int, ...], ...] = CHECK_SHAPES, seed: int = 0) -> float:
    """Largest |onnxruntime - torch| over random inputs of `shapes`."""
    require_onnx()
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(seed)
    channels = _in_channels(net)
    worst = 0.0
    for n, _, h, w in shapes:
        x = torch.rand((n, channels, h, w), generator=gen) * 2 - 1
        with torch.inference_mode():
            expected = net.float().eval().cpu()(x).numpy()
        got = session.run([OUTPUT], {INPUT: x.numpy()})[0]
        if got.shape != expected.shape:
            raise RuntimeError(f"ONNX output shape {got.shape} != torch {expected.shape} for input {tuple(x.shape)}")
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def export_checked(net: nn.Module, path: str | Path, meta: dict[str, Any] | None = None,
                   tolerance: float = TOLERANCE) -> ExportReport:
    """Export, then refuse the file (delete it) unless onnxruntime matches torch within `tolerance`."""
    out = export_onnx(net, path, meta)
    diff = max_difference(net, out)
    if not diff <= tolerance:
        out.unlink(missing_ok=True)
        raise UserError(f"ONNX export does not match torch (max |diff| {diff:.2e} > {tolerance:.0e}); "
                        "file not written. Please report this with your torch and onnx versions")
    return ExportReport(path=out, max_abs_diff=diff, shapes=CHECK_SHAPES)
