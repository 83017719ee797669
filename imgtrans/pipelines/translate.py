"""Translator: run an image-to-image generator on photos of any size, one by one or whole folders."""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from imgtrans.errors import UserError
from imgtrans.nn.subpixel import with_subpixel_upsampling
from imgtrans.io import MAX_PIXELS, ImageReadError, Photo, read_photo, write_photo
from imgtrans.pipelines.folders import FolderReport, Job, plan
from imgtrans.tiling import needs_tiling, run_padded, run_tiled, tile_spans
from imgtrans.train.runtime import native_cpu_bf16, select_device

ImageLike = TypeVar("ImageLike", Image.Image, np.ndarray, torch.Tensor)

PRECISIONS = ("fp32", "bf16", "auto")


@dataclass(frozen=True)
class TranslateConfig:
    """How photos are fed to the network."""

    size: int = 0  # run at this short side and resize the result back; 0: native resolution
    tile: int = 0  # tile side; 0: tile only images over pixel_budget (tiles of 256-576, spread evenly)
    overlap: int = 64
    pixel_budget: int = 2_000_000  # larger images run in tiles
    stats_size: int = 512  # long side of the downscaled copy that gives tiles their norm stats
    batch_size: int = 4  # same-size images per forward pass
    max_pixels: int = MAX_PIXELS
    quality: int = 95
    precision: str = "auto"  # fp32 | bf16 | auto (see autocast_dtype)
    keep_detail: bool = False  # with `size`: add the network's edit to the full-resolution photo


def to_input(rgb: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> 1x3xHxW float in [-1, 1]."""
    # np.require copies only read-only or strided arrays (e.g. np.asarray of a PIL image).
    return torch.from_numpy(np.require(rgb, requirements=["C", "W"])).permute(2, 0, 1)[None].float().div(127.5).sub(1.0)


def to_rgb(t: torch.Tensor) -> np.ndarray:
    """1x3xHxW in [-1, 1] -> HxWx3 uint8 (rounded, not truncated)."""
    return _to_uint8(t)[0].permute(1, 2, 0).cpu().numpy()


def _to_uint8(t: torch.Tensor) -> torch.Tensor:
    """Nx3xHxW in [-1, 1] -> uint8 on the same device (a quarter of the bytes to copy back)."""
    return t.float().clamp(-1, 1).add(1.0).mul(127.5).round().to(torch.uint8)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision setting on `device`; None means plain float32.

    `auto` lowers precision only where it is known to be faster: CUDA (bf16 where supported,
    else fp16) and CPUs with native bf16. bf16 output stays above 40 dB PSNR of fp32 on real
    photos (benchmarks/translate.py checks it).
    """
    if precision not in PRECISIONS:
        raise UserError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and native_cpu_bf16():
        return torch.bfloat16
    return None


class Translator:
    """Wraps a generator (eval mode, no gradients) for photos, arrays, tensors and folders.

    Sizes are kept: inputs are reflect-padded to the network's stride and cropped back; large
    images run in feathered tiles that share one set of normalisation statistics.
    """

    def __init__(self, net: nn.Module, meta: dict[str, Any] | None = None, device: str = "auto",
                 config: TranslateConfig | None = None) -> None:
        self.device = select_device(device)
        self.meta = meta or {}
        self.config = config or TranslateConfig()
        self.dtype = autocast_dtype(self.config.precision, self.device)
        self.net = net.eval().to(self.device)
        if self.device.type == "cpu":
            # Exact, and ~30% faster per upsampling layer on CPU (benchmarks/README.md).
            self.net = with_subpixel_upsampling(self.net)
        if self.device.type == "cuda":
            # NHWC lets cuDNN use tensor-core kernels; benchmark mode picks the fastest per shape.
            self.net = self.net.to(memory_format=torch.channels_last)
            torch.backends.cudnn.benchmark = True
        self.stride = int(getattr(net, "stride", 4))
        c = self.config
        if 0 < c.tile < c.overlap + self.stride:
            # Checked here, once: per photo it would fail every file of a folder run the same way.
            least = -(-(c.overlap + self.stride) // self.stride) * self.stride
            raise UserError(f"--tile {c.tile}: tiles must be larger than their {c.overlap} px overlap; "
                            f"use --tile {least} or more, or 0 for automatic")

    # ----- core ---------------------------------------------------------------------------
    def _scaled_size(self, h: int, w: int) -> tuple[int, int]:
        s = self.config.size
        if s <= 0:
            return h, w
        k = s / min(h, w)
        return max(1, round(h * k)), max(1, round(w * k))

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda" and x.device.type == "cpu":
            x = x.pin_memory()  # page-locked, so the copy below runs asynchronously
        return x.to(self.device, non_blocking=True)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _per_forward(self) -> int:
        # On CPU one image per forward is faster than a batch (ResNet-9 at 256 px: 4 images in
        # one pass cost ~16% more per image, the activations fall out of cache); GPUs want batches,
        # and so does a backend that runs a batch's images concurrently (OnnxGenerator).
        whole_batch = self.device.type != "cpu" or getattr(self.net, "batch_parallel", False)
        return max(1, self.config.batch_size) if whole_batch else 1

    def _tile_side(self, h: int, w: int) -> int:
        """The tile side for an h x w image: the configured one, or in automatic mode the side
        (256 to 576, a multiple of 16 strides) whose evenly spread tiles compute the fewest pixels.

        Measured on 2048x1536 (benchmarks/README.md): fixed 512 tiles compute 1.67x the image's
        pixels, 576 tiles 1.27x. Sides off the 16-stride grid run slower per pixel (464: +16% over
        448, the deepest features are then no whole number of 16-float vectors wide), and tiles
        past 576 slower too (the activations leave the cache).
        """
        c = self.config
        if c.tile > 0:
            return c.tile
        align = 16 * self.stride

        def computed(t: int) -> int:
            rows, cols = (tile_spans(n, t, c.overlap, self.stride) for n in (h, w))
            return sum(b - a for a, b in rows) * sum(b - a for a, b in cols)

        low = max(256, -(-(2 * c.overlap + align) // align) * align)  # the overlap must not fill a tile
        candidates = range(max(low, 576 // align * align), low - 1, -align)
        return min(candidates, key=lambda t: (computed(t), -t))

    @torch.inference_mode()
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """Nx3xHxW in [-1, 1] (same size, any device) -> same shape on the device, float32."""
        x = self._to_device(x)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        h, w = x.shape[-2:]
        sh, sw = self._scaled_size(h, w)
        full = x
        if (sh, sw) != (h, w):
            x = F.interpolate(x, size=(sh, sw), mode="bicubic", align_corners=False, antialias=True)
        c = self.config
        with self._autocast():
            if c.tile > 0 or needs_tiling(sh, sw, c.pixel_budget):
                tile = self._tile_side(sh, sw)
                parts = [run_tiled(self.net, xi[None], tile=tile, overlap=c.overlap, multiple=self.stride,
                                   stats_size=c.stats_size) for xi in x]
            else:
                parts = [run_padded(self.net, xi, self.stride) for xi in x.split(self._per_forward())]
            y = torch.cat(parts).float()
        if (sh, sw) != (h, w):
            if c.keep_detail:
                # Only the edit is upsampled: the result is the network's low-resolution output
                # plus the photo's own detail above that resolution, instead of a blurred copy.
                y = y - x.float()
            y = F.interpolate(y, size=(h, w), mode="bicubic", align_corners=False, antialias=True)
            if c.keep_detail:
                y = y + full.float()
        return y.clamp(-1, 1)

    def run_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Nx3xHxW in [-1, 1] (same size) -> same shape, on CPU."""
        return self._forward(x).cpu()

    @torch.inference_mode()
    def translate_rgb(self, rgbs: list[np.ndarray]) -> list[np.ndarray]:
        """Same-size HxWx3 uint8 arrays -> translated arrays (batched where that is faster)."""
        # uint8 crosses to the device and back: a quarter of the bytes of float32.
        u8 = torch.from_numpy(np.stack(rgbs)).permute(0, 3, 1, 2)
        x = self._to_device(u8).float().div_(127.5).sub_(1.0)
        out = _to_uint8(self._forward(x)).permute(0, 2, 3, 1).contiguous().cpu().numpy()
        return list(out)

    def translate_photo(self, photo: Photo) -> Photo:
        out = self.translate_rgb([photo.rgb])[0]
        return Photo(rgb=out, alpha=photo.alpha, exif=photo.exif, icc=photo.icc)

    # ----- convenience: same type in, same type out ----------------------------------------
    def __call__(self, image: ImageLike) -> ImageLike:
        """PIL image -> PIL image (alpha kept); uint8 HxWx3 array -> array; float tensor in [0, 1]
        (3xHxW or Nx3xHxW) -> tensor of the same shape."""
        if isinstance(image, Image.Image):
            return self._call_pil(image)
        if isinstance(image, np.ndarray):
            return self._call_array(image)
        if isinstance(image, torch.Tensor):
            batched = image.dim() == 4
            x = (image if batched else image[None]).float() * 2 - 1
            y = (self.run_tensor(x) + 1) / 2
            return (y if batched else y[0]).to(image.dtype if image.is_floating_point() else torch.float32)
        raise TypeError(f"expected a PIL image, numpy array or torch tensor, got {type(image).__name__}")

    def _call_pil(self, image: Image.Image) -> Image.Image:
        mode = image.mode
        rgba = image.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"))
        out = Image.fromarray(self.translate_rgb([np.asarray(rgba.convert("RGB"))])[0])
        if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
            out.putalpha(Image.fromarray(alpha))
        return out

    def _call_array(self, arr: np.ndarray) -> np.ndarray:
        if arr.dtype != np.uint8:
            raise TypeError("numpy input must be uint8 (HxW, HxWx3 or HxWx4)")
        rgb = np.repeat(arr[..., None], 3, -1) if arr.ndim == 2 else arr[..., :3]
        out = self.translate_rgb([rgb])[0]
        if arr.ndim == 3 and arr.shape[2] == 4:
            out = np.concatenate([out, arr[..., 3:]], -1)
        return out

    # ----- folders -------------------------------------------------------------------------
    def translate_folder(self, src: str | Path, dst: str | Path, fmt: str = "same", recursive: bool = True,
                         overwrite: bool = False, jobs: list[Job] | None = None,
                         progress: Callable[[int], None] | None = None) -> FolderReport:
        """Translate every image under `src` into the mirrored tree under `dst`.

        Existing outputs are skipped unless `overwrite`; per-file failures are collected, never
        raised. Decoding and encoding run in threads beside the network.
        """
        t0 = time.perf_counter()
        report = FolderReport()
        if jobs is None:
            p = plan(src, dst, fmt, recursive, overwrite)
            jobs, report.skipped = p.jobs, p.skipped
        with ThreadPoolExecutor(2, thread_name_prefix="imgtrans-io") as pool:
            writes: list[tuple[Job, Future]] = []
            for batch in self._batches(jobs, pool, report):
                outs = self._translate_batch(batch, report)
                for job, photo in outs:
                    writes.append((job, pool.submit(write_photo, job.dst, photo, job.pil_format, self.config.quality)))
                self._collect(writes, report, wait=False)
                if progress:
                    progress(len(batch))
            self._collect(writes, report, wait=True)
        report.seconds = time.perf_counter() - t0
        return report

    def _translate_batch(self, batch: list[tuple[Job, Photo]], report: FolderReport) -> list[tuple[Job, Photo]]:
        try:
            outs = self.translate_rgb([p.rgb for _, p in batch])
        except (RuntimeError, ValueError) as e:  # e.g. out of memory on one huge photo
            report.failed += [(job.src, f"translation failed ({str(e).splitlines()[0]})") for job, _ in batch]
            return []
        return [(job, Photo(rgb=o, alpha=p.alpha, exif=p.exif, icc=p.icc)) for (job, p), o in zip(batch, outs)]

    @staticmethod
    def _collect(writes: list[tuple[Job, Future]], report: FolderReport, wait: bool) -> None:
        while writes and (wait or writes[0][1].done()):
            job, fut = writes.pop(0)
            try:
                fut.result()
                report.converted.append(job.src)
            except OSError as e:
                report.failed.append((job.src, f"cannot write {job.dst} ({e.strerror or e})"))

    def _batches(self, jobs: list[Job], pool: ThreadPoolExecutor,
                 report: FolderReport) -> Iterator[list[tuple[Job, Photo]]]:
        """Decoded photos, prefetched in a thread, grouped into runs of equal size."""
        ahead = max(4, 2 * self.config.batch_size)
        futures: list[tuple[Job, Future]] = []
        batch: list[tuple[Job, Photo]] = []
        i = 0
        while i < len(jobs) or futures:
            while i < len(jobs) and len(futures) < ahead:
                futures.append((jobs[i], pool.submit(read_photo, jobs[i].src, self.config.max_pixels)))
                i += 1
            job, fut = futures.pop(0)
            try:
                photo = fut.result()
            except ImageReadError as e:
                report.failed.append((job.src, str(e)))
                continue
            if batch and (photo.size != batch[0][1].size or len(batch) >= self.config.batch_size
                          or self._is_large(photo)):
                yield batch
                batch = []
            batch.append((job, photo))
            if self._is_large(photo):
                yield batch
                batch = []
        if batch:
            yield batch

    def _is_large(self, photo: Photo) -> bool:
        w, h = photo.size
        sh, sw = self._scaled_size(h, w)
        return self.config.tile > 0 or needs_tiling(sh, sw, self.config.pixel_budget)
