"""Translate benchmark: imgtrans folder runs vs the reference test script's per-image loop, and the speed-up means."""

from __future__ import annotations

import copy
import glob
import importlib.util
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python benchmarks/x.py` from anywhere

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import (  # noqa: E402
    ROOT,
    CaseResult,
    case_args,
    interleaved,
    machine_line,
    peak_gflops,
    print_table,
    report,
    run_case,
    verdict,
    write_jpegs,
)

SCRIPT = Path(__file__).resolve()
TARGET_RATIO = 2.5  # imgtrans images/s over the naive loop's, at 256 px
TARGET_PEAK = 0.5  # share of the measured matmul peak reached by the shipped generator forward
TARGET_RSS_MB = 4096  # 2048x1536 photos with tiling
TARGET_PSNR = 40.0  # bf16 vs fp32 output
ONNX_TOL = 1e-4
WARMUP_SHAPE = (1, 3, 256, 256)  # one forward before timing (first-call set-up), for both loops


@dataclass(frozen=True)
class Plan:
    """Sizes of one benchmark run (full or --quick)."""

    small_n: int
    small_side: int
    large_n: int
    large_hw: tuple[int, int]
    ngf: int
    n_blocks: int
    pixel_budget: int  # above it imgtrans tiles; lowered in quick mode so tiling still runs
    rounds: int  # interleaved rounds of the forward variants
    folder_rounds: int  # alternating naive/imgtrans runs of the small folder; the best of each counts
    tile_rounds: int  # interleaved runs of the whole-vs-tiles comparison
    real_photos: int  # horse2zebra test photos in the precision check
    quick: bool  # also: no torch.compile, no trained generator, one sample photo


FULL = Plan(64, 256, 8, (1536, 2048), 64, 9, 2_000_000, 3, 3, 2, 8, False)
QUICK = Plan(4, 128, 2, (384, 640), 16, 9, 20_000, 2, 1, 1, 1, True)


# ----- models -------------------------------------------------------------------------------
def build_generator(ngf: int, n_blocks: int) -> torch.nn.Module:
    """The reference ResNet generator, untrained (reference init): speed does not need training."""
    from imgtrans.nn import ResnetGenerator, init_weights

    torch.manual_seed(0)
    return init_weights(ResnetGenerator(ngf=ngf, n_blocks=n_blocks)).eval()


def save_generator(net: torch.nn.Module, folder: Path) -> Path:
    from imgtrans.train.checkpoint import save_export

    meta = {"objective": "cyclegan", "direction": "AtoB", "arch": net.arch.to_dict()}
    return save_export(folder, "generator", net.state_dict(), meta)


def load(path: Path) -> torch.nn.Module:
    from imgtrans.weights import load_generator

    return load_generator(path).net


def trained_generator() -> Path | None:
    """The shipped horse2zebra generator (weights/): trained, in every checkout, and of the same
    domain as the real photos the precision check scores, so runs compare with each other."""
    path = ROOT / "weights" / "horse2zebra.safetensors"
    return path if path.is_file() else None


def generator_flops(net: torch.nn.Module, h: int, w: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        net(torch.zeros(1, 3, h, w))
    return float(counter.get_total_flops())


# ----- cases (each runs in its own process) -------------------------------------------------
def naive_folder(model: Path, src: Path, dst: Path) -> dict[str, Any]:
    """The reference CycleGAN test script's way, per image: PIL load, ToTensor + Normalize,
    model.eval(), torch.no_grad(), forward, tensor2im, PIL save (JPEG q95 like imgtrans's
    "same" format, so both pay the same encoder)."""
    from PIL import Image
    from torchvision import transforms

    net = load(model)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)])
    files = sorted(src.glob("*.jpg"))
    dst.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():  # one warm-up forward, as imgtrans gets
        net(torch.zeros(WARMUP_SHAPE))
    t0 = time.perf_counter()
    done = []
    for path in files:
        img = Image.open(path).convert("RGB")
        x = transform(img).unsqueeze(0)
        net.eval()
        with torch.no_grad():
            y = net(x)
        arr = y[0].cpu().float().numpy()
        arr = ((np.transpose(arr, (1, 2, 0)) + 1) / 2.0 * 255.0).astype(np.uint8)  # tensor2im
        Image.fromarray(arr).save(dst / path.name, quality=95)
        done.append(time.perf_counter())
    seconds = time.perf_counter() - t0
    return {"images": len(files), "seconds": seconds, "median_s": median_gap(t0, done, [1] * len(files))}


def imgtrans_folder(model: Path, src: Path, dst: Path, pixel_budget: int) -> dict[str, Any]:
    """`imgtrans translate` as the CLI runs it (default settings), timed around the folder run;
    `model` a .safetensors (torch) or an `imgtrans export` .onnx (onnxruntime backend)."""
    from imgtrans.pipelines.translate import TranslateConfig, Translator

    translator = Translator(load(model), device="cpu", config=TranslateConfig(pixel_budget=pixel_budget))
    translator.run_tensor(torch.zeros(WARMUP_SHAPE))  # the same warm-up forward as the naive loop
    done: list[float] = []
    sizes: list[int] = []

    def progress(n: int) -> None:
        done.append(time.perf_counter())
        sizes.append(n)

    t0 = time.perf_counter()
    report_ = translator.translate_folder(src, dst, overwrite=True, progress=progress)
    if report_.failed:
        raise RuntimeError(f"imgtrans failed on {report_.failed}")
    dtype = "fp32" if translator.dtype is None else str(translator.dtype).removeprefix("torch.")
    return {"images": len(report_.converted), "seconds": report_.seconds, "median_s": median_gap(t0, done, sizes),
            "precision": translator.config.precision, "dtype": dtype}


def median_gap(t0: float, done: list[float], sizes: list[int]) -> float:
    """Median seconds per image between completions: robust to a burst of outside load."""
    gaps = np.diff([t0, *done]) / np.asarray(sizes)
    return float(np.median(gaps))


def forward_means(model: Path, side: int, rounds: int, try_compile: bool, workdir: Path) -> dict[str, Any]:
    """One 256 px forward per variant, interleaved; each kept only if it helps (see README)."""
    from imgtrans.nn.subpixel import with_subpixel_upsampling
    from imgtrans.pipelines.translate import TranslateConfig, Translator

    net = load(model)
    x = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0)) * 2 - 1
    x4 = x.repeat(4, 1, 1, 1)
    threads = torch.get_num_threads()
    peak = peak_gflops()
    extra: dict[str, Any] = {"threads": threads}

    def reference() -> None:
        net.eval()
        with torch.no_grad():
            net(x)

    def inference_mode() -> None:
        with torch.inference_mode():
            net(x)

    def batch4() -> None:
        with torch.inference_mode():
            net(x4)

    cl_net = copy.deepcopy(net).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def channels_last() -> None:
        with torch.inference_mode():
            cl_net(x_cl)

    def bf16() -> None:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            net(x)

    def one_thread() -> None:
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                net(x)
        finally:
            torch.set_num_threads(threads)

    sub_net = with_subpixel_upsampling(net)

    def subpixel() -> None:
        with torch.inference_mode():
            sub_net(x)

    shipped = Translator(net, device="cpu", config=TranslateConfig())

    variants = {"reference: eval + no_grad, fp32": reference, "inference_mode": inference_mode,
                "batch of 4 (time per image)": batch4, "channels_last": channels_last,
                "bf16 autocast": bf16, f"1 intra-op thread (of {threads})": one_thread,
                "sub-pixel upsampling (exact)": subpixel}
    per_call = {"batch of 4 (time per image)": 4}
    if try_compile:
        extra["compile_s"] = []  # cold (empty cache), then warm (from the on-disk cache)
        for _ in range(2):
            torch._dynamo.reset()
            compiled = torch.compile(copy.deepcopy(net))
            t0 = time.perf_counter()
            with torch.inference_mode():
                compiled(x)
            extra["compile_s"].append(time.perf_counter() - t0)

        def compiled_fn() -> None:
            with torch.inference_mode():
                compiled(x)

        variants["torch.compile (inductor)"] = compiled_fn
    ort_fn = _onnxruntime_variant(net, x, workdir, extra)
    if ort_fn is not None:
        variants[f"onnxruntime ({threads} threads)"] = ort_fn
        backends = _backend_variants(net, x, threads, workdir)
        variants.update(backends)
        per_call.update({name: threads for name in backends if "at once" in name})
    variants["imgtrans Translator (shipped path)"] = lambda: shipped.run_tensor(x)

    best = interleaved(variants, rounds)
    for name, n in per_call.items():  # time per image for the variants that run several at once
        best[name] /= n
    extra["seconds"] = best
    extra["flops"] = generator_flops(net, side, side)
    extra["peak_gflops"] = max(peak, peak_gflops())  # before and after: the less disturbed one
    extra["shipped_dtype"] = "fp32" if shipped.dtype is None else str(shipped.dtype).removeprefix("torch.")
    return extra


def _backend_variants(net: torch.nn.Module, x: torch.Tensor, threads: int,
                     workdir: Path) -> dict[str, Callable[[], Any]]:
    """imgtrans's onnxruntime backend (OnnxGenerator) in fp32 and int8, one image and a batch of
    `threads` images run concurrently (one single-threaded run per core)."""
    from imgtrans.export import export_onnx
    from imgtrans.onnxrun import OnnxGenerator
    from imgtrans.quantize import calibration_images, export_int8

    write_jpegs(workdir / "calib-means", 8, x.shape[-2], x.shape[-1], seed=50)
    images = calibration_images(workdir / "calib-means", x.shape[-1])
    files = {"fp32": export_onnx(net, workdir / "means.onnx"),
             "int8": export_int8(net, workdir / "means.int8.onnx", {}, images).path}
    xn = x.repeat(threads, 1, 1, 1)
    out: dict[str, Callable[[], Any]] = {}
    for kind, path in files.items():
        gen = OnnxGenerator(path, threads)
        if kind == "int8":
            out[f"onnxruntime int8 ({threads} threads)"] = lambda gen=gen: gen(x)
        if threads > 1:  # with one thread there is nothing to run beside
            out[f"onnxruntime {kind}, {threads} images at once ({threads} threads, per image)"] = lambda gen=gen: gen(xn)
    return out


def _onnxruntime_variant(net: torch.nn.Module, x: torch.Tensor, workdir: Path,
                         extra: dict[str, Any]) -> Callable[[], Any] | None:
    try:
        import onnxruntime as ort

        from imgtrans.export import export_onnx, max_difference
    except ImportError:
        extra["onnx"] = "not installed (pip install 'imgtrans[onnx]')"
        return None
    t0 = time.perf_counter()
    path = export_onnx(net, workdir / "generator.onnx")
    extra["onnx_export_s"] = time.perf_counter() - t0
    extra["onnx_max_diff"] = max_difference(net, path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    # Idle onnxruntime threads spin by default, which would slow the next variant timed.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"image": x.numpy()}
    return lambda: session.run(None, feed)


def tile_sizes(model: Path, hw: tuple[int, int], pixel_budget: int, rounds: int) -> dict[str, Any]:
    """One large photo whole, in fixed 512 px tiles (the earlier default) and in the automatic
    evenly spread tiles now shipped: seconds and pixels computed per image pixel."""
    from imgtrans.pipelines.translate import TranslateConfig, Translator
    from imgtrans.tiling import tile_spans

    from benchmarks.common import synthetic_photo

    net = load(model)
    rgb = synthetic_photo(*hw, seed=7)
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 127.5 - 1
    h, w = hw
    configs = {"whole image (no tiles)": TranslateConfig(pixel_budget=h * w),
               "fixed 512 px tiles (previous default)": TranslateConfig(pixel_budget=pixel_budget, tile=512),
               "automatic tiles (shipped)": TranslateConfig(pixel_budget=pixel_budget)}
    out: dict[str, Any] = {}
    runs = {}
    for name, config in configs.items():
        t = Translator(net, device="cpu", config=config)
        side = t._tile_side(h, w) if config.pixel_budget < h * w else max(h, w)
        spans = [tile_spans(n, side, config.overlap) for n in (h, w)]
        computed = sum(b - a for a, b in spans[0]) * sum(b - a for a, b in spans[1]) / (h * w)
        out[name] = {"tile": side, "computed": computed}
        runs[name] = lambda t=t: t.run_tensor(x)
    for name, seconds in interleaved(runs, rounds, warmup=0).items():
        out[name]["seconds"] = seconds
    return out


def precision_check(models: dict[str, str], photos: list[str], calibration: str, workdir: Path) -> dict[str, Any]:
    """PSNR of bf16-autocast and of int8 (ONNX, calibrated on `calibration`) output against fp32
    output, per generator, over real photos."""
    from PIL import Image

    from imgtrans.pipelines.translate import TranslateConfig, Translator

    out: dict[str, Any] = {}
    for label, path in models.items():
        net = load(Path(path))
        fp32 = Translator(net, device="cpu", config=TranslateConfig(precision="fp32"))
        fast = {"bf16 autocast": Translator(net, device="cpu", config=TranslateConfig(precision="bf16"))}
        if importlib.util.find_spec("onnxruntime") is not None:
            fast["int8 ONNX"] = Translator(_int8_of(net, calibration, workdir / f"precision-{len(out)}.onnx"),
                                           device="cpu")
        for mode, translator in fast.items():
            psnrs, worst = [], 0
            for photo in photos:
                rgb = np.asarray(Image.open(photo).convert("RGB"))
                a, b = fp32(rgb).astype(np.float64), translator(rgb).astype(np.float64)
                mse = float(((a - b) ** 2).mean())
                psnrs.append(99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse))
                worst = max(worst, int(np.abs(a - b).max()))
            out[f"{label}, {mode}"] = {"images": len(photos), "min": min(psnrs), "mean": float(np.mean(psnrs)),
                                       "max_diff": worst}
    return out


def _int8_of(net: torch.nn.Module, calibration: str, path: Path) -> torch.nn.Module:
    from imgtrans.onnxrun import OnnxGenerator
    from imgtrans.quantize import calibration_images, export_int8

    return OnnxGenerator(export_int8(net, path, {}, calibration_images(calibration, 256)).path)


# Folder implementations besides the naive loop: imgtrans with each backend, by model file.
BACKENDS = {"imgtrans": "generator.safetensors", "onnx": "generator.onnx", "int8": "generator.int8.onnx"}
BACKEND_LABELS = {"imgtrans": "imgtrans (torch, precision {precision}: {dtype})",
                  "onnx": "imgtrans --weights FILE.onnx (onnxruntime fp32)",
                  "int8": "imgtrans --weights FILE.onnx (onnxruntime int8, export --format onnx-int8)"}


def prepare_onnx(workdir: Path, calibration: Path) -> dict[str, Any]:
    """The benchmark generator as fp32 and int8 ONNX files beside its .safetensors."""
    from imgtrans.export import export_checked
    from imgtrans.quantize import calibration_images, export_int8

    net = load(workdir / "model" / BACKENDS["imgtrans"])
    diff = export_checked(net, workdir / "model" / BACKENDS["onnx"], {}).max_abs_diff
    q = export_int8(net, workdir / "model" / BACKENDS["int8"], {}, calibration_images(calibration, 256))
    return {"onnx_max_diff": diff, "int8_mean_psnr": q.mean_psnr}


def run_one(case: str, workdir: Path, plan: Plan) -> dict[str, Any]:
    model = workdir / "model" / "generator.safetensors"
    impl, _, size = case.partition("-")
    if case == "prepare-onnx":
        return prepare_onnx(workdir, workdir / "calib")
    if impl == "naive" and size in ("small", "large"):
        return naive_folder(model, workdir / size, workdir / f"out-naive-{size}")
    if impl in BACKENDS and size in ("small", "large"):
        return imgtrans_folder(workdir / "model" / BACKENDS[impl], workdir / size, workdir / f"out-{impl}-{size}",
                               plan.pixel_budget)
    if case == "tiles":
        return tile_sizes(model, plan.large_hw, plan.pixel_budget, plan.tile_rounds)
    if case == "means":
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(workdir / "inductor-cache")  # cold compile first
        return forward_means(model, plan.small_side, plan.rounds, not plan.quick, workdir)
    if case == "precision":
        models = {f"untrained ResNet-9 ngf{plan.ngf}": str(model)}
        trained = None if plan.quick else trained_generator()
        if trained is not None:
            models[f"trained: {trained.relative_to(ROOT)}"] = str(trained)
        photos = sorted(glob.glob(str(ROOT / "samples" / "photos" / "*")))
        real = sorted(glob.glob(str(ROOT.parent / "shared" / "data" / "horse2zebra" / "testA" / "*.jpg")))
        if plan.quick:
            photos = photos[:1]
        # int8 calibrates on train photos of the same pair where present, never on the photos scored.
        train = ROOT.parent / "shared" / "data" / "horse2zebra" / "trainA"
        calibration = str(train) if train.is_dir() else str(ROOT / "samples" / "photos")
        return precision_check(models, photos + real[:plan.real_photos], calibration, workdir)
    raise SystemExit(f"unknown case {case}")


# ----- the parent: run cases, print tables ---------------------------------------------------
def faster(old: CaseResult | None, new: CaseResult) -> CaseResult:
    """The quicker of two runs of one case (least disturbed), with the larger peak RSS of both."""
    if old is None:
        return new
    rate = lambda r: r.values["images"] / r.values["seconds"]  # noqa: E731
    best = new if rate(new) > rate(old) else old
    return CaseResult(best.name, best.values, max(old.max_rss_mb, new.max_rss_mb), best.seconds)


def folder_rows(results: dict[str, Any], plan: Plan, impls: list[str]) -> list[list[Any]]:
    """Rows for whichever implementations ran per size; ratios need the naive run from this run."""
    rows = []
    for size in ("small", "large"):
        naive = results.get(f"naive-{size}")
        n_rate = naive.values["images"] / naive.values["seconds"] if naive else None
        if size == "small":
            label = f"{plan.small_n} x {plan.small_side}x{plan.small_side}"
        else:
            label = f"{plan.large_n} x {plan.large_hw[1]}x{plan.large_hw[0]}"
        if naive:
            rows.append([label, "naive (reference test loop)", n_rate, naive.values["median_s"], naive.max_rss_mb,
                         1.0, "", ""])
        for impl in (i for i in impls if i in BACKENDS):
            ours = results.get(f"{impl}-{size}")
            if ours is None:
                continue
            rate = ours.values["images"] / ours.values["seconds"]
            ratio = rate / n_rate if n_rate else None
            if size == "small":
                target, ok = f">= {TARGET_RATIO}x naive", None if ratio is None else ratio >= TARGET_RATIO
            else:
                target, ok = f"max RSS < {TARGET_RSS_MB} MB", ours.max_rss_mb < TARGET_RSS_MB
            name = BACKEND_LABELS[impl].format(precision=ours.values["precision"], dtype=ours.values["dtype"])
            rows.append([label, name, rate, ours.values["median_s"], ours.max_rss_mb, ratio, target, verdict(ok)])
    return rows


# What the shipped path does with each mean on CPU; the README gives the reasons with numbers.
DECISIONS = {
    "reference": "baseline",
    "inference_mode": "kept",
    "batch of 4": "CPU: 1 image per forward",
    "channels_last": "CUDA only",
    "bf16 autocast": "auto: native bf16 CPUs only",
    "1 intra-op thread": "default (all cores) kept",
    "sub-pixel upsampling": "shipped (CPU, ONNX export)",
    "torch.compile": "dropped: compile > saving",
    "onnxruntime (": "backend: --weights FILE.onnx",
    "onnxruntime fp32,": "backend: batches of same-size photos",
    "onnxruntime int8": "opt-in: export --format onnx-int8",
    "imgtrans Translator": "shipped",
}


def means_rows(m: dict[str, Any]) -> list[list[Any]]:
    ref = m["seconds"]["reference: eval + no_grad, fp32"]
    rows = []
    for name, s in m["seconds"].items():
        gflops = m["flops"] / s / 1e9
        note = next((v for k, v in DECISIONS.items() if name.startswith(k)), "")
        rows.append([name, s * 1000, gflops, 100 * gflops / m["peak_gflops"], ref / s, note])
    return rows


def folder_section(work: Path, plan: Plan, sizes: list[str], impls: list[str], extra: list[str]) -> None:
    results: dict[str, Any] = {}
    if {"onnx", "int8"} & set(impls):
        if importlib.util.find_spec("onnxruntime") is None:
            print("- onnx and int8 rows skipped: pip install 'imgtrans[onnx]'\n", flush=True)
            impls = [i for i in impls if i not in ("onnx", "int8")]
        else:  # int8 calibrated on photos of the same kind as the folders, not the timed ones
            write_jpegs(work / "calib", 8, plan.small_side, plan.small_side, seed=50)
            prepared = run_case(SCRIPT, "prepare-onnx", work, extra).values
            print(f"- ONNX: max |onnxruntime - torch| {prepared['onnx_max_diff']:.1e}; int8 mean PSNR against "
                  f"fp32 on the calibration photos {prepared['int8_mean_psnr']:.1f} dB\n", flush=True)
    for size in sizes:
        if size == "small":
            write_jpegs(work / "small", plan.small_n, plan.small_side, plan.small_side)
        else:
            write_jpegs(work / "large", plan.large_n, *plan.large_hw, seed=100)
        for _ in range(plan.folder_rounds if size == "small" else 1):
            for impl in impls:
                key = f"{impl}-{size}"
                results[key] = faster(results.get(key), run_case(SCRIPT, key, work, extra))
    print_table(f"Folder translation, ResNet-9 ngf{plan.ngf}, untrained (small folder: best of {plan.folder_rounds} "
                "alternating runs; a fresh process per run)",
                ["photos", "implementation", "images/s", "median s/image", "max RSS MB", "vs naive", "target",
                 "result"],
                folder_rows(results, plan, impls))


def means_section(work: Path, plan: Plan, extra: list[str]) -> None:
    v = run_case(SCRIPT, "means", work, extra).values
    shipped = v["seconds"]["imgtrans Translator (shipped path)"]
    share = v["flops"] / shipped / 1e9 / v["peak_gflops"]
    print_table(f"Generator forward, 1 x {plan.small_side}x{plan.small_side}, {v['flops'] / 1e9:.1f} GFLOP; measured "
                f"peak (4096^2 sgemm) {v['peak_gflops']:.0f} GFLOP/s; best of {plan.rounds} interleaved rounds",
                ["variant", "ms/image", "GFLOP/s", "% of peak", "vs reference", "decision"], means_rows(v))
    notes = [f"shipped path reaches {100 * share:.0f}% of peak (target >= {100 * TARGET_PEAK:.0f}%): "
             f"{verdict(share >= TARGET_PEAK)}; shipped autocast dtype: {v['shipped_dtype']}"]
    if "compile_s" in v:
        cold, warm = v["compile_s"]
        notes.append(f"torch.compile first call: {cold:.1f} s with an empty inductor cache, {warm:.1f} s "
                     "from the cache (again for every new image size)")
    if "onnx_max_diff" in v:
        ok = verdict(v["onnx_max_diff"] < ONNX_TOL)
        notes.append(f"ONNX export {v['onnx_export_s']:.1f} s; max |onnxruntime - torch| "
                     f"{v['onnx_max_diff']:.1e} (target < {ONNX_TOL:.0e}): {ok}")
    elif "onnx" in v:
        notes.append(f"onnxruntime: {v['onnx']}")
    print("\n".join(f"- {n}" for n in notes) + "\n", flush=True)


def tiles_section(work: Path, plan: Plan, extra: list[str]) -> None:
    tiles = run_case(SCRIPT, "tiles", work, extra).values
    h, w = plan.large_hw
    whole = tiles["whole image (no tiles)"]["seconds"]
    rows = [[name, r["tile"], r["computed"], r["seconds"], whole / r["seconds"]] for name, r in tiles.items()]
    print_table(f"One {w}x{h} photo: whole vs tiled (overlap 64; best of {plan.tile_rounds} interleaved runs)",
                ["run", "tile side", "pixels computed / image pixels", "seconds", "vs whole"], rows)


def precision_section(work: Path, extra: list[str]) -> None:
    pr = run_case(SCRIPT, "precision", work, extra).values
    rows = [[label, r["images"], r["min"], r["mean"], r["max_diff"], f"> {TARGET_PSNR:.0f} dB",
             verdict(r["min"] > TARGET_PSNR)] for label, r in pr.items()]
    print_table("bf16 autocast and int8 (ONNX) vs fp32 output on real photos (samples/photos, horse2zebra testA)",
                ["generator, precision", "photos", "min PSNR dB", "mean PSNR dB", "max abs diff (levels)", "target", "result"],
                rows)


def main() -> None:
    parser = case_args(__doc__.splitlines()[0])
    parser.add_argument("--sections", default="small,means,precision,large,tiles",
                        help="comma-separated subset of small,means,precision,large,tiles")
    parser.add_argument("--impls", default="naive,imgtrans,onnx,int8",
                        help="folder runs to time: naive,imgtrans (torch),onnx (fp32),int8 (the last two need the onnx extra)")
    args = parser.parse_args()
    extra = ["--quick"] if args.quick else []
    plan = QUICK if args.quick else FULL
    if args.case:
        report(run_one(args.case, Path(args.workdir), plan))
        return
    sections = args.sections.split(",")
    print(f"translate benchmark ({'quick' if args.quick else 'full'}): {machine_line()}\n", flush=True)
    with tempfile.TemporaryDirectory(prefix="imgtrans-bench-") as tmp:
        work = Path(tmp)
        save_generator(build_generator(plan.ngf, plan.n_blocks), work / "model")
        sizes = [s for s in ("small", "large") if s in sections]
        if sizes:
            folder_section(work, plan, sizes, args.impls.split(","), extra)
        if "means" in sections:
            means_section(work, plan, extra)
        if "tiles" in sections:
            tiles_section(work, plan, extra)
        if "precision" in sections:
            precision_section(work, extra)


if __name__ == "__main__":
    main()
