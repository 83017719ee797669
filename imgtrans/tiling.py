"""Run a fully-convolutional image network on any size: stride padding, and overlapping tiles with a feathered blend."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

# A per-call record of one InstanceNorm2d: (mean, biased variance), each shaped like the input
# with its two spatial dims reduced to 1.
Stats = tuple[torch.Tensor, torch.Tensor]


def _pad_axis(x: torch.Tensor, pad: int, dim: int) -> torch.Tensor:
    """Extend `x` by `pad` pixels after its end along `dim` (-1: width, -2: height) by mirroring.

    Reflect padding needs pad < size, so a pad larger than the image is done in several
    reflections, each as wide as the image now allows; this keeps mirrored content (not smeared
    edge pixels) on tiny images. A side of 1 pixel cannot be reflected and is replicated.
    """
    while pad > 0:
        size = x.shape[dim]
        step = min(pad, size - 1)
        mode = "reflect" if step > 0 else "replicate"
        step = step if step > 0 else pad
        widths = (0, step, 0, 0) if dim == -1 else (0, 0, 0, step)
        x = F.pad(x, widths, mode=mode)
        pad -= step
    return x


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad (N, C, H, W) on the bottom and right so H and W become multiples of `multiple`.

    Returns the padded tensor and the original (H, W) to crop back to.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    h, w = x.shape[-2:]
    x = _pad_axis(x, -h % multiple, -2)
    x = _pad_axis(x, -w % multiple, -1)
    return x, (h, w)


def run_padded(net: nn.Module, x: torch.Tensor, multiple: int = 4) -> torch.Tensor:
    """Run `net` on `x` padded to its stride, then crop the output back to the input's size."""
    padded, (h, w) = pad_to_multiple(x, multiple)
    return net(padded)[..., :h, :w]


def _uses_input_stats(m: nn.Module) -> bool:
    """An InstanceNorm2d that normalises with its input's statistics (not running estimates)."""
    return isinstance(m, nn.InstanceNorm2d) and (m.training or not m.track_running_stats)


def _input_stats(x: torch.Tensor) -> Stats:
    """Per-sample, per-channel mean and biased variance over the two spatial dims, in float32."""
    x32 = x.float()
    var, mean = torch.var_mean(x32, dim=(-2, -1), unbiased=False, keepdim=True)
    return mean.detach(), var.detach()


class FrozenNormStats:
    """Record every InstanceNorm2d's statistics on one forward pass, then reuse them on others.

    A network normalised per instance gives each tile of an image its own colour balance, so
    naive tiling shows colour jumps at the seams. Record the statistics on a (downscaled) view
    of the whole image, then run the tiles with them:

        stats = FrozenNormStats(net)
        with stats.record():
            net(small)
        with stats.apply():
            out = net(tile)

    Statistics are kept per module and per call index within one forward of `net`, so a module
    used several times in a forward gets the right record each time. The call counters restart
    whenever `net` itself is called, so one `apply()` context can serve many tiles. All hooks and
    overrides are removed when a context exits, also on an exception.
    """

    def __init__(self, net: nn.Module) -> None:
        self.net = net
        self._stats: dict[nn.Module, list[Stats]] = {}
        self._calls: dict[nn.Module, int] = {}

    @property
    def recorded(self) -> bool:
        """Whether a recording pass has seen at least one InstanceNorm2d call."""
        return any(self._stats.values())

    def _norms(self) -> list[nn.Module]:
        return [m for m in self.net.modules() if _uses_input_stats(m)]

    def _restart_calls(self, *_: object) -> None:
        # Root pre-hook: every forward of `net` numbers its norm calls from zero again.
        self._calls = dict.fromkeys(self._calls, 0)

    @contextmanager
    def record(self) -> Iterator[FrozenNormStats]:
        """Context in which forwards of `net` record the statistics (the last forward wins)."""
        norms = self._norms()
        self._stats = {m: [] for m in norms}

        def restart(*_: object) -> None:
            for m in norms:
                self._stats[m] = []

        def keep(m: nn.Module, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
            self._stats[m].append(_input_stats(inputs[0]))

        handles = [self.net.register_forward_pre_hook(restart)]
        try:
            handles += [m.register_forward_hook(keep) for m in norms]
            yield self
        finally:
            for handle in handles:
                handle.remove()

    @contextmanager
    def apply(self) -> Iterator[FrozenNormStats]:
        """Context in which every recorded InstanceNorm2d normalises with its recorded statistics."""
        if not self.recorded:
            raise RuntimeError("FrozenNormStats.apply() before any forward inside record()")
        norms = list(self._stats)
        self._calls = dict.fromkeys(norms, 0)
        # An instance attribute shadows the class's forward; keep any earlier one to put it back.
        saved = {m: m.__dict__.get("forward") for m in norms}
        handle = self.net.register_forward_pre_hook(self._restart_calls)
        try:
            for m in norms:
                m.forward = self._frozen_forward(m)  # type: ignore[method-assign]
            yield self
        finally:
            handle.remove()
            for m, previous in saved.items():
                if previous is None:
                    m.__dict__.pop("forward", None)
                else:
                    m.forward = previous  # type: ignore[method-assign]

    def _frozen_forward(self, m: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """A replacement for `m.forward` that normalises with the next recorded statistics."""

        def forward(x: torch.Tensor) -> torch.Tensor:
            return self._normalise(m, x)

        return forward

    def _normalise(self, m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """What InstanceNorm2d computes, with this call's recorded mean and variance."""
        records = self._stats[m]
        i = self._calls[m]
        if i >= len(records):
            raise RuntimeError(
                f"{type(m).__name__} called {i + 1} times in one forward but recorded {len(records)}; "
                "record and apply must run the same network"
            )
        self._calls[m] = i + 1
        mean, var = records[i]
        if mean.shape[0] not in (1, x.shape[0]) and x.dim() == 4:
            raise ValueError(f"statistics recorded for batch {mean.shape[0]} cannot apply to batch {x.shape[0]}")
        y = (x.float() - mean) * torch.rsqrt(var + m.eps)
        if m.affine:
            y = y * m.weight[:, None, None] + m.bias[:, None, None]
        return y.to(x.dtype)


def tile_spans(length: int, tile: int, overlap: int, multiple: int = 4) -> list[tuple[int, int]]:
    """Half-open (start, end) tile ranges that cover [0, length) along one axis.

    Starts are multiples of `multiple`, so every tile sees the same stride phase as the whole
    image and its downsampled features line up with the whole-image run. Neighbours overlap by
    at least `overlap` pixels; tiles are spread evenly, and the last one ends at the border
    (it may be up to `multiple - 1` pixels longer than `tile` to get there).
    """
    tile = max(multiple, tile - tile % multiple)
    step = (tile - overlap) // multiple * multiple
    if step <= 0:
        raise ValueError(f"overlap {overlap} leaves no stride for tile {tile} at multiple {multiple}")
    last = max(0, (length - tile) // multiple * multiple)
    if last == 0:
        return [(0, length)]
    gaps = math.ceil(last / step)
    # Flooring each evenly spaced start to the grid keeps every gap <= step (last, step are on it).
    starts = [(i * last // gaps) // multiple * multiple for i in range(gaps + 1)]
    return [(s, s + tile) for s in starts[:-1]] + [(last, length)]


def _feather(spans: list[tuple[int, int]], i: int) -> torch.Tensor:
    """1-D blend weights of span `i`: within each overlap with a neighbour, a linear ramp.

    A tile's outputs next to a cut edge lack context (the network sees its own padding there),
    so the outer quarter of each overlap gets almost no weight and the ramp runs over the middle
    half; two neighbours' ramps then sum to one. Image borders keep full weight. Weights stay
    strictly positive so no pixel is divided by a zero sum after normalising.
    """
    start, end = spans[i]
    n = end - start
    dist = torch.arange(n, dtype=torch.float32) + 0.5  # pixel centres' distance from the start
    w = torch.ones(n)
    if i > 0:
        w = torch.minimum(w, _ramp(dist, spans[i - 1][1] - start))
    if i < len(spans) - 1:
        w = torch.minimum(w, _ramp(n - dist, end - spans[i + 1][0]))
    return w


def _ramp(dist: torch.Tensor, overlap: int) -> torch.Tensor:
    """Weight by distance from a cut edge: ~0 up to overlap/4, rising linearly to 1 at 3*overlap/4."""
    return ((dist - overlap / 4) / (overlap / 2)).clamp(1e-3, 1.0)


def _downscale(x: torch.Tensor, long_side: int) -> torch.Tensor:
    """Antialiased resize so the longer side is at most `long_side`; smaller images pass as is."""
    h, w = x.shape[-2:]
    scale = long_side / max(h, w)
    if scale >= 1:
        return x
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def run_tiled(
    net: nn.Module,
    x: torch.Tensor,
    tile: int = 512,
    overlap: int = 64,
    multiple: int = 4,
    stats_size: int = 512,
) -> torch.Tensor:
    """Translate a (1, C, H, W) image in [-1, 1] tile by tile, without seams.

    InstanceNorm statistics come from one pass over the whole image downscaled to `stats_size`,
    so all tiles share one colour balance; overlapping tiles are blended with feathered weights.
    Memory beyond one tile's forward is two full-size float32 buffers (weighted sum, weight sum).
    Images that fit in one tile are simply run whole. Inference mode and eval() are the caller's.
    """
    h, w = x.shape[-2:]
    if h <= tile and w <= tile:
        return run_padded(net, x, multiple)

    # A network without torch norm modules (an ONNX runner) brings its own way to share them.
    stats = net.tile_stats() if hasattr(net, "tile_stats") else FrozenNormStats(net)
    with stats.record():
        run_padded(net, _downscale(x, stats_size), multiple)

    rows, cols = tile_spans(h, tile, overlap, multiple), tile_spans(w, tile, overlap, multiple)
    acc: torch.Tensor | None = None
    weight = torch.zeros(1, 1, h, w, device=x.device)
    out_dtype = x.dtype
    with stats.apply():
        for i, (y0, y1) in enumerate(rows):
            wy = _feather(rows, i).to(x.device)
            for j, (x0, x1) in enumerate(cols):
                out = run_padded(net, x[..., y0:y1, x0:x1], multiple)
                if acc is None:
                    acc = torch.zeros(out.shape[0], out.shape[1], h, w, device=x.device)
                    out_dtype = out.dtype
                win = wy[:, None] * _feather(cols, j).to(x.device)[None, :]
                acc[..., y0:y1, x0:x1] += out.float() * win
                weight[..., y0:y1, x0:x1] += win
    assert acc is not None  # at least one tile always runs
    return acc.div_(weight).to(out_dtype)


def needs_tiling(h: int, w: int, pixel_budget: int) -> bool:
    """Whether an h x w image exceeds the pixel budget of one whole-image forward."""
    return h * w > pixel_budget
