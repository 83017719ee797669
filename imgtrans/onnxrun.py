"""Runs an exported ONNX generator with onnxruntime behind the nn.Module call the Translator makes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgtrans.errors import UserError
from imgtrans.export import INPUT, OUTPUT, require_onnx


class OnnxGenerator(nn.Module):
    """N x 3 x H x W in [-1, 1] -> same, computed by onnxruntime on the CPU.

    It has no instance-norm modules to share statistics across tiles, so `tileable` is False and
    the Translator runs each image whole (use --size for large photos).
    """

    tileable = False

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        super().__init__()
        require_onnx()
        import onnxruntime as ort

        options = ort.SessionOptions()
        # Follow torch's thread setting (OMP_NUM_THREADS, torch.set_num_threads) like the torch path.
        options.intra_op_num_threads = threads or torch.get_num_threads()
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for unreadable models
            reason = str(e).splitlines()[0][:200]
            raise UserError(f"{path}: not a usable ONNX model ({reason}); re-export it with `imgtrans export`") from None
        self.stride = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feed = x.detach().to("cpu", torch.float32).contiguous().numpy()
        y = self.session.run([OUTPUT], {INPUT: feed})[0]
        return torch.from_numpy(y).to(x.device)


def onnx_meta(path: str | Path) -> dict[str, Any]:
    """The imgtrans metadata stored in an exported ONNX file ({} when there is none)."""
    require_onnx()
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and others for damaged files
        raise UserError(f"{path}: not a readable ONNX file ({str(e)[:120]}); re-export it with `imgtrans export`") from None
    for entry in model.metadata_props:
        if entry.key == "imgtrans":
            return dict(json.loads(entry.value))
    return {}
