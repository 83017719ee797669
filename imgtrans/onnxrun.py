"""Runs an exported ONNX generator with onnxruntime behind the nn.Module call the Translator makes."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from imgtrans.errors import UserError
from imgtrans.export import INPUT, OUTPUT, require_onnx


def _session(path: str | Path | bytes, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # Idle threads would otherwise spin and take the cores from the concurrent single-thread runs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # A memory pattern is planned per input shape and allocated beside the arena: it doubled the
    # peak of a second 2048x1536 photo (int8 ngf 64: 2.2 -> 4.7 GB) and saves under 2% at 256 px.
    options.enable_mem_pattern = False
    try:
        model = path if isinstance(path, bytes) else str(path)
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for unreadable models
        reason = str(e).splitlines()[0][:200]
        where = "the model's tiled variant" if isinstance(path, bytes) else str(path)
        raise UserError(f"{where}: not a usable ONNX model ({reason}); re-export it with `imgtrans export`") from None


class OnnxGenerator(nn.Module):
    """N x 3 x H x W in [-1, 1] -> same, computed by onnxruntime on the CPU.

    One image runs on all `threads`; the images of a batch run concurrently, one per thread, each
    single-threaded, which keeps every core busy where one image's small layers cannot (measured on
    2 cores, int8 horse2zebra at 256 px: 80 ms per image one by one, 52 ms two at a time).
    Large images run in tiles that share instance-norm statistics through `tile_stats()`, which
    runs rewritten copies of the graph (onnxtiles.py).
    """

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
        self.path = Path(path)
        self._variants: dict[str, Any] = {}  # "record" / "apply" sessions, built on first use
        self._run: Callable[[np.ndarray], np.ndarray] | None = None  # set inside tile_stats() contexts

    def variant(self, kind: str) -> Any:
        """The session of the recording or applying variant of the graph (see onnxtiles.py)."""
        if kind not in self._variants:
            import onnx

            from imgtrans.onnxtiles import applying_variant, recording_variant

            rewrite = recording_variant if kind == "record" else applying_variant
            model = rewrite(onnx.load(str(self.path)))
            self._variants[kind] = _session(model.SerializeToString(), self.threads)
        return self._variants[kind]

    def tile_stats(self) -> OnnxTileStats:
        """Shares instance-norm statistics between the tiles of an image (tiling.run_tiled)."""
        return OnnxTileStats(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feed = x.detach().to("cpu", torch.float32).contiguous().numpy()
        if self._run is not None:
            y = self._run(feed)
        elif self.pool is None or len(feed) == 1:
            y = self.session.run([OUTPUT], {INPUT: feed})[0]
        else:
            runs = self.pool.map(lambda one: self.single.run([OUTPUT], {INPUT: one})[0], np.split(feed, len(feed)))
            y = np.concatenate(list(runs))
        return torch.from_numpy(y).to(x.device)


class OnnxTileStats:
    """FrozenNormStats (tiling.py) for an OnnxGenerator: inside `record()` its forwards keep the
    statistics of every instance norm (the last forward wins); inside `apply()` they use them."""

    def __init__(self, gen: OnnxGenerator) -> None:
        self.gen = gen
        self.stats: dict[str, np.ndarray] = {}

    @contextmanager
    def _running(self, run: Callable[[np.ndarray], np.ndarray]) -> Iterator[OnnxTileStats]:
        self.gen._run = run
        try:
            yield self
        finally:
            self.gen._run = None

    def record(self) -> Any:
        return self._running(self._record)

    def apply(self) -> Any:
        if not self.stats:
            raise RuntimeError("OnnxTileStats.apply() before any forward inside record()")
        return self._running(self._apply)

    def _record(self, feed: np.ndarray) -> np.ndarray:
        session = self.gen.variant("record")
        names = [o.name for o in session.get_outputs()]
        values = session.run(names, {INPUT: feed})
        self.stats = {n: v for n, v in zip(names, values) if n != OUTPUT}
        return values[names.index(OUTPUT)]

    def _apply(self, feed: np.ndarray) -> np.ndarray:
        return self.gen.variant("apply").run([OUTPUT], {INPUT: feed, **self.stats})[0]


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
