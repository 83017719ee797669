"""Runs an exported ONNX generator with onnxruntime behind the nn.Module call the Translator makes."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from imgtrans.errors import UserError
from imgtrans.export import INPUT, OUTPUT, require_onnx


def _session(path: str | Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # Idle threads would otherwise spin and take the cores from the concurrent single-thread runs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # A memory pattern is planned per input shape and allocated beside the arena: it doubled the
    # peak of a second 2048x1536 photo (int8 ngf 64: 2.2 -> 4.7 GB) and saves under 2% at 256 px.
    options.enable_mem_pattern = False
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for unreadable models
        reason = str(e).splitlines()[0][:200]
        raise UserError(f"{path}: not a usable ONNX model ({reason}); re-export it with `imgtrans export`") from None


class OnnxGenerator(nn.Module):
    """N x 3 x H x W in [-1, 1] -> same, computed by onnxruntime on the CPU.

    One image runs on all `threads`; the images of a batch run concurrently, one per thread, each
    single-threaded, which keeps every core busy where one image's small layers cannot (measured on
    2 cores, int8 horse2zebra at 256 px: 80 ms per image one by one, 52 ms two at a time).
    It has no instance-norm modules to share statistics across tiles, so `tileable` is False and
    the Translator runs each image whole (use --size for large photos).
    """

    tileable = False
    batch_parallel = True

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        super().__init__()
        require_onnx()
        # Follow torch's thread setting (OMP_NUM_THREADS, torch.set_num_threads) like the torch path.
        self.threads = max(1, threads or torch.get_num_threads())
        self.session = _session(path, self.threads)
        self.single = _session(path, 1) if self.threads > 1 else self.session
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="imgtrans-onnx") if self.threads > 1 else None
        self.stride = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feed = x.detach().to("cpu", torch.float32).contiguous().numpy()
        if self.pool is None or len(feed) == 1:
            y = self.session.run([OUTPUT], {INPUT: feed})[0]
        else:
            runs = self.pool.map(lambda one: self.single.run([OUTPUT], {INPUT: one})[0], np.split(feed, len(feed)))
            y = np.concatenate(list(runs))
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
