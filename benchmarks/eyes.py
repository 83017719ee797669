"""Eyes benchmark: seconds per 12 MP photo (1 and 5 faces) by stage, imgtrans's EyeOpener vs a naive full-frame pass."""

from __future__ import annotations

import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python benchmarks/x.py` from anywhere

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import (  # noqa: E402
    ROOT,
    case_args,
    machine_line,
    print_table,
    report,
    run_case,
    synthetic_photo,
    verdict,
)

SCRIPT = Path(__file__).resolve()
ASTRONAUT = ROOT / "samples" / "photos" / "astronaut.png"  # public domain (NASA), via scikit-image
STAGES = ("decode", "detect", "eye-state", "in-paint", "blend", "encode")
TARGET_S = 1.0  # one face, 12 MP
TRAINED_INPAINTER = ROOT / "runs" / "eyes"


@dataclass(frozen=True)
class Plan:
    """Sizes of one benchmark run (full or --quick)."""

    hw: tuple[int, int]
    repeats: int
    naive: bool


FULL = Plan((3000, 4000), 3, True)
QUICK = Plan((750, 1000), 1, True)


# ----- inputs -------------------------------------------------------------------------------
def group_photo(faces: int, hw: tuple[int, int], seed: int) -> np.ndarray:
    """A synthetic background with the astronaut portrait pasted `faces` times across it."""
    from PIL import Image

    h, w = hw
    canvas = synthetic_photo(h, w, seed)
    portrait = Image.open(ASTRONAUT).convert("RGB")
    side = int(h * 0.55) if faces == 1 else int(w / (faces + 0.5))
    face = np.asarray(portrait.resize((side, side), Image.Resampling.LANCZOS))
    gap = (w - faces * side) // (faces + 1)
    y = (h - side) // 2
    for i in range(faces):
        x = gap + i * (side + gap)
        canvas[y:y + side, x:x + side] = face
    return canvas


def write_photos(folder: Path, plan: Plan) -> dict[int, Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for faces in (1, 5):
        path = folder / f"faces{faces}.jpg"
        Image.fromarray(group_photo(faces, plan.hw, seed=faces)).save(path, quality=92)
        out[faces] = path
    return out


# ----- models -------------------------------------------------------------------------------
def inpainter() -> tuple[Any, str]:
    """The newest trained in-painter export under runs/eyes, else an untrained one (same
    architecture: ResNet-6 ngf 32 at 128 px), and a label saying which."""
    from imgtrans.faces.inpaint import Inpainter, load_inpainter
    from imgtrans.objectives.eyes import EyeInpainting, EyesConfig

    exports = sorted(TRAINED_INPAINTER.glob("*/export/inpainter.safetensors"), key=lambda p: p.stat().st_mtime)
    if exports:
        return load_inpainter(exports[-1]), f"in-painter {exports[-1].relative_to(ROOT)} (partly trained)"
    torch.manual_seed(0)
    state, meta = EyeInpainting(EyesConfig()).export()["inpainter"]
    net = EyeInpainting.build_inference(meta)
    net.load_state_dict(state)
    return Inpainter(net, meta), "untrained in-painter (ResNet-6 ngf32, 128 px)"


def models_line() -> str:
    from imgtrans.weights import model_info

    _, label = inpainter()
    path = Path(model_info("eyestate")["path"])
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    return (f"MTCNN (facenet-pytorch 2.5.3 weights), eye-state classifier `eyestate` ({where}), {label}; "
            "every face in-painted (EyeConfig all_faces=True)")


# ----- timing helpers -----------------------------------------------------------------------
class Stopwatch:
    """Seconds per named stage, summed over one photo."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)

    @contextmanager
    def lap(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.totals[stage] += time.perf_counter() - t0


class Timed:
    """Forwards `method` of `inner` through a stopwatch stage; everything else passes through."""

    def __init__(self, inner: Any, method: str, stage: str, watch: Stopwatch) -> None:
        self._inner, self._method, self._stage, self._watch = inner, method, stage, watch

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name != self._method:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._watch.lap(self._stage):
                return attr(*args, **kwargs)

        return call


# ----- cases --------------------------------------------------------------------------------
def imgtrans_case(photo: Path, out_dir: Path, repeats: int) -> dict[str, Any]:
    """EyeOpener.process on the photo, with read_photo/write_photo around it, stage by stage."""
    from imgtrans.faces.detect import MTCNNDetector
    from imgtrans.faces.eyestate import load_eyestate
    from imgtrans.io import Photo, read_photo, write_photo
    from imgtrans.pipelines.eyes import EyeConfig, EyeOpener

    watch = Stopwatch()
    paint, _ = inpainter()

    class TimedOpener(EyeOpener):
        def _paste(self, *args: Any) -> np.ndarray:
            with watch.lap("blend"):
                return super()._paste(*args)

    opener = TimedOpener(Timed(MTCNNDetector(), "detect", "detect", watch),
                         Timed(load_eyestate("eyestate"), "predict", "eye-state", watch),
                         Timed(paint, "inpaint", "in-paint", watch), EyeConfig(all_faces=True))

    def once() -> tuple[dict[str, float], int]:
        watch.totals.clear()
        t0 = time.perf_counter()
        with watch.lap("decode"):
            src = read_photo(photo)
        t1 = time.perf_counter()
        rgb, info = opener.process(src.rgb)
        inner = time.perf_counter() - t1
        with watch.lap("encode"):
            write_photo(out_dir / photo.name, Photo(rgb=rgb, alpha=src.alpha, exif=src.exif, icc=src.icc), "JPEG")
        stages = dict(watch.totals)
        stages["other"] = inner - sum(v for k, v in stages.items() if k not in ("decode", "encode"))
        stages["total"] = time.perf_counter() - t0
        return stages, info["faces"]

    once()  # warm-up: loads MTCNN and primes oneDNN
    runs = [once() for _ in range(repeats)]
    stages, faces = min(runs, key=lambda r: r[0]["total"])
    return {"stages": stages, "faces": faces}


def naive_case(photo: Path, out_dir: Path, repeats: int) -> dict[str, Any]:
    """The straightforward way: PIL decode, MTCNN on the full-resolution photo, one face at a
    time through the classifier and in-painter, Poisson blend over the whole frame, PIL encode."""
    from facenet_pytorch import MTCNN
    from PIL import Image

    from imgtrans.faces.eyes import align
    from imgtrans.faces.eyestate import load_eyestate

    watch = Stopwatch()
    mtcnn = MTCNN(keep_all=True, device=torch.device("cpu")).eval()
    classifier = load_eyestate("eyestate")
    paint, _ = inpainter()

    def once() -> tuple[dict[str, float], int]:
        watch.totals.clear()
        t0 = time.perf_counter()
        with watch.lap("decode"):
            rgb = np.asarray(Image.open(photo).convert("RGB"))
        with watch.lap("detect"):
            _, probs, points = mtcnn.detect(rgb, landmarks=True)
        keep = [i for i in range(0 if probs is None else len(probs)) if probs[i] is not None and probs[i] >= 0.9]
        out = rgb.copy()
        h, w = rgb.shape[:2]
        for i in keep:
            with watch.lap("eye-state"):
                alignment = align(np.asarray(points[i], np.float32), paint.size)
                crop = alignment.warp(rgb)
                classifier.predict([crop])
            with watch.lap("in-paint"):
                edited = paint.inpaint(crop[None])[0]
            with watch.lap("blend"):
                inverse = alignment.inverse
                src = cv2.warpAffine(edited, inverse, (w, h), flags=cv2.INTER_CUBIC)
                mask = cv2.warpAffine(np.full((paint.size, paint.size), 255, np.uint8), inverse, (w, h))
                x, y, bw, bh = cv2.boundingRect(mask)
                out = cv2.seamlessClone(src, out, mask, (x + bw // 2, y + bh // 2), cv2.NORMAL_CLONE)
        with watch.lap("encode"):
            Image.fromarray(out).save(out_dir / photo.name, quality=95)
        stages = dict(watch.totals)
        stages["total"] = time.perf_counter() - t0
        return stages, len(keep)

    once()  # the same warm-up as imgtrans gets
    stages, faces = min((once() for _ in range(repeats)), key=lambda r: r[0]["total"])
    return {"stages": stages, "faces": faces}


def run_one(case: str, workdir: Path, plan: Plan) -> dict[str, Any]:
    kind, faces = case.split(":")
    photo = workdir / f"faces{faces}.jpg"
    out = workdir / f"out-{kind}"
    out.mkdir(exist_ok=True)
    if kind == "imgtrans":
        return imgtrans_case(photo, out, plan.repeats)
    if kind == "naive":
        return naive_case(photo, out, plan.repeats)
    raise SystemExit(f"unknown case {case}")


def main() -> None:
    args = case_args(__doc__.splitlines()[0]).parse_args()
    plan = QUICK if args.quick else FULL
    extra = ["--quick"] if args.quick else []
    if args.case:
        report(run_one(args.case, Path(args.workdir), plan))
        return
    mp = plan.hw[0] * plan.hw[1] / 1e6
    print(f"eyes benchmark ({'quick' if args.quick else 'full'}): {machine_line()}\n", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="imgtrans-bench-") as tmp:
        work = Path(tmp)
        write_photos(work, plan)
        for faces in (1, 5):
            kinds = ("naive", "imgtrans") if plan.naive else ("imgtrans",)
            res = {k: run_case(SCRIPT, f"{k}:{faces}", work, extra) for k in kinds}
            base = res["naive"].values["stages"]["total"] if plan.naive else None
            for kind, r in res.items():
                st = r.values["stages"]
                shipped = kind == "imgtrans"
                target = f"< {TARGET_S:.0f} s" if shipped and faces == 1 else ""
                label = "imgtrans EyeOpener" if shipped else "naive (full-res detect, full-frame blend)"
                rows.append([f"{mp:.0f} MP, {faces} face{'s' * (faces > 1)} ({r.values['faces']} found)", label,
                             *[st.get(s, 0.0) for s in STAGES], st.get("other"), st["total"], r.max_rss_mb,
                             base / st["total"] if base else None, target,
                             verdict(st["total"] < TARGET_S) if target else ""])
        line = models_line()
    print_table(f"Eye opening, seconds per photo by stage (best of {plan.repeats} after a warm-up; "
                "one process per row)",
                ["photo", "implementation", *STAGES, "other", "total s", "max RSS MB", "speed-up", "target",
                 "result"], rows)
    print(f"- models: {line}\n- other: face alignment and crops outside the timed calls\n", flush=True)


if __name__ == "__main__":
    main()
