"""Eye in-painting quality: masked SSIM/L1/PSNR, landmark error after re-detection, baselines side by side.

Held-out LFW faces (identities with `held_out` true) are aligned, their default eye boxes are
masked and filled by each system: the model, a flat mean-colour fill, OpenCV Telea and pasted
exemplar eyes. Pixel metrics reward blur (the flat fill often wins PSNR, see ANCHORS.md), so SSIM
in the eye boxes and the eye-landmark error after re-detecting the face are reported beside them.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from imgtrans.data import faces as face_data
from imgtrans.data.faces import FaceRecord, read_index, held_out
from imgtrans.errors import UserError
from imgtrans.eval.sheet import contact_sheet
from imgtrans.faces.detect import DetectConfig, Detector, Face, MTCNNDetector
from imgtrans.faces.eyes import EyeBoxSpec, align, box_mask, eye_boxes, template_points
from imgtrans.faces.landmarks import pad
from imgtrans.io import ImageReadError, read_rgb

BASELINES = ("flat", "telea", "exemplar_paste")
REAL = "real"  # the original face: reference row for the landmark error
PSNR_CAP = 100.0  # dB reported for identical pixels: PSNR is infinite there and JSON has no inf
NO_FACE_ERROR = 0.5  # landmark error charged when no face is re-detected (real eyes score ~0.05)
SSIM_KERNEL = 7  # small Gaussian window: an eye box at 128 px is only about 16 px tall
UPSAMPLE = 2  # MTCNN misses or misplaces eyes on 128 px faces; twice the size is reliable
OPEN_ABOVE = 0.2  # the open-eye filter of the training data (read_records' default)
SHEET_FACES = 6


# ----- metrics -----------------------------------------------------------------------------
def _tensor(rgb: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> (1, 3, H, W) float in 0..255."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].double()


def crop_around(box: np.ndarray, size: int, margin: int = SSIM_KERNEL // 2) -> tuple[slice, slice]:
    """Rows and columns of the box's pixels grown by `margin`, clipped to the image.

    SSIM drops a half-window border of its input, so the margin makes the scored windows centre
    on the box's own pixels.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    r0, r1 = max(0, int(np.floor(y1)) - margin), min(size, int(np.ceil(y2)) + margin)
    c0, c1 = max(0, int(np.floor(x1)) - margin), min(size, int(np.ceil(x2)) + margin)
    return slice(r0, r1), slice(c0, c1)


def eye_ssim(result: np.ndarray, real: np.ndarray, boxes: np.ndarray) -> float:
    """SSIM of `result` vs `real` on a crop around each eye box (0..255 range), averaged over boxes."""
    values = []
    for box in np.asarray(boxes, np.float64):
        rows, cols = crop_around(box, real.shape[0])
        values.append(float(structural_similarity_index_measure(
            _tensor(result[rows, cols]), _tensor(real[rows, cols]), data_range=255.0, kernel_size=SSIM_KERNEL)))
    return float(np.mean(values))


def masked_l1(result: np.ndarray, real: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute difference in 0..255 levels over the mask's pixels (None: the whole image)."""
    diff = np.abs(result.astype(np.float64) - real.astype(np.float64))
    return float(diff.mean() if mask is None else diff[mask > 0.5].mean())


def masked_psnr(result: np.ndarray, real: np.ndarray, mask: np.ndarray) -> float:
    """PSNR in dB over the mask's pixels (0..255 range), capped at PSNR_CAP for identical pixels."""
    inside = mask > 0.5
    a = torch.from_numpy(result[inside].astype(np.float64))
    b = torch.from_numpy(real[inside].astype(np.float64))
    if torch.equal(a, b):
        return PSNR_CAP
    return min(PSNR_CAP, float(peak_signal_noise_ratio(a, b, data_range=255.0)))


# ----- fills -------------------------------------------------------------------------------
def flat_fill(face: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The face with the mask set to the mean colour of the pixels outside it."""
    inside = mask > 0.5
    colour = np.round(face[~inside].astype(np.float64).mean(0)).astype(np.uint8)
    out = face.copy()
    out[inside] = colour
    return out


def telea_fill(face: np.ndarray, mask: np.ndarray, radius: float = 3.0) -> np.ndarray:
    """OpenCV's Telea in-painting of the mask; pixels outside it are the input's."""
    inside = mask > 0.5
    filled = cv2.inpaint(np.ascontiguousarray(face), inside.astype(np.uint8), radius, cv2.INPAINT_TELEA)
    return np.where(inside[..., None], filled, face)  # guarantee: only mask pixels may change


def paste_fill(face: np.ndarray, mask: np.ndarray, donor: np.ndarray) -> np.ndarray:
    """The donor's aligned pixels pasted into the mask."""
    return np.where((mask > 0.5)[..., None], donor, face)


# ----- landmark error ----------------------------------------------------------------------
def central_face(faces: list[Face], eyes: np.ndarray) -> Face | None:
    """The detected face whose eye midpoint is nearest the expected one."""
    if not faces:
        return None
    mid = eyes.mean(0)
    return min(faces, key=lambda f: float(np.linalg.norm(f.eyes.mean(0) - mid)))


def landmark_error(detector: Detector, aligned: np.ndarray, truth: np.ndarray | None = None) -> float | None:
    """Mean distance of re-detected eye centres from the true ones over the inter-ocular distance.

    `truth` (2, 2): where the eyes are in the aligned face, i.e. the photo's eye landmarks through
    the alignment (default: the template's). Not the template itself: a least-squares fit of 5
    points leaves the eyes of turned heads ~0.1 IOD off it, which would swamp the signal. The
    face is upsampled UPSAMPLE x (cubic) and framed in grey before detection; None when no face
    is found.
    """
    size = aligned.shape[0]
    truth = template_points(size)[:2] if truth is None else np.asarray(truth, np.float64)
    big = cv2.resize(aligned, (size * UPSAMPLE, size * UPSAMPLE), interpolation=cv2.INTER_CUBIC)
    # The grey frame matters: on an aligned crop the face box leaves the image and MTCNN misplaces
    # the eyes (30 held-out LFW faces, real eyes: mean error 0.090 unframed, 0.030 framed).
    framed, shift = pad(big)
    face = central_face(detector.detect(framed), (truth + 0.5) * UPSAMPLE - 0.5 + shift)
    if face is None:
        return None
    # cv2.resize puts pixel centres at (x + 0.5) * scale - 0.5; map the eyes back the same way.
    eyes = (face.eyes.astype(np.float64) - shift + 0.5) / UPSAMPLE - 0.5
    iod = float(np.linalg.norm(truth[1] - truth[0]))
    return float(np.linalg.norm(eyes - truth, axis=1).mean() / iod)


# ----- data --------------------------------------------------------------------------------
def held_out_pairs(faces: Path, max_faces: int) -> list[tuple[FaceRecord, FaceRecord | None]]:
    """(target, same-identity exemplar or None) for up to `max_faces` held-out open-eye LFW photos.

    One target per identity, identities evenly spread over the sorted list so a small run still
    samples the whole split.
    """
    folder = faces / "lfw_pairs"
    if not (folder / "index.csv").is_file():
        raise UserError(f"{faces}: no lfw_pairs/index.csv; pass the data's faces/ folder")
    records = [r for r in read_index(folder / "index.csv", folder)
               if r.identity is not None and held_out(r.identity) and r.eyes_open(OPEN_ABOVE)]
    by_identity: dict[str, list[FaceRecord]] = defaultdict(list)
    for r in records:
        by_identity[r.identity].append(r)  # type: ignore[index]
    names = sorted(by_identity)
    if not names:
        raise UserError(f"{folder}: no held-out (validation split) identity with open eyes")
    if max_faces and len(names) > max_faces:
        names = [names[int(i)] for i in np.linspace(0, len(names) - 1, max_faces).round()]
    return [(by_identity[n][0], by_identity[n][1] if len(by_identity[n]) > 1 else None) for n in names]


def _aligned(record: FaceRecord, landmarks: dict[Path, np.ndarray | None],
             size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The record's aligned face and where its eye landmarks land in it; None without a face."""
    lm = landmarks.get(record.file)
    if lm is None:
        return None
    points = np.asarray(lm, np.float64).reshape(5, 2)
    alignment = align(points, size)
    try:
        return alignment.warp(np.asarray(read_rgb(record.file))), alignment.to_aligned(points[:2])
    except ImageReadError:
        return None


# ----- the evaluation ----------------------------------------------------------------------
def _summary(rows: list[dict[str, float | None]], no_face: int) -> dict[str, Any]:
    keys = ("ssim_eyes", "l1_mask", "psnr_mask", "l1_face", "landmark_error")
    out: dict[str, Any] = {}
    for k in keys:
        vals = [r[k] for r in rows if r.get(k) is not None]
        out[k] = float(np.mean(vals)) if vals else None
    out["no_face"] = no_face
    return out


def _score(result: np.ndarray, real: np.ndarray, truth: np.ndarray, mask: np.ndarray, boxes: np.ndarray,
           detector: Detector) -> tuple[dict[str, float | None], bool]:
    """One face's figures, and whether the detector missed it (charged NO_FACE_ERROR)."""
    err = landmark_error(detector, result, truth)
    return {"ssim_eyes": eye_ssim(result, real, boxes), "l1_mask": masked_l1(result, real, mask),
            "psnr_mask": masked_psnr(result, real, mask), "l1_face": masked_l1(result, real),
            "landmark_error": NO_FACE_ERROR if err is None else err}, err is None


@dataclass
class HeldOutFaces:
    """Aligned held-out faces: the photos, their eye landmarks and same-identity exemplars (or None)."""

    photos: int  # held-out photos asked for, with or without a detected face
    reals: list[np.ndarray]
    truths: list[np.ndarray]
    exemplars: list[np.ndarray | None]


def _held_out_faces(root: Path, max_faces: int, size: int) -> HeldOutFaces:
    """One photo per held-out identity (and a second as exemplar), aligned at `size`; faceless ones left out."""
    pairs = held_out_pairs(root, max_faces)
    files = [r.file for p in pairs for r in p if r is not None]
    landmarks = face_data.detect_landmarks(files)  # module attribute: tests substitute it
    loaded = [(_aligned(t, landmarks, size), _aligned(e, landmarks, size) if e is not None else None)
              for t, e in pairs]
    usable = [(t, e) for t, e in loaded if t is not None]
    if not usable:
        raise UserError(f"{root}: no face found in any of {len(pairs)} held-out photos")
    return HeldOutFaces(len(pairs), [t[0] for t, _ in usable], [t[1] for t, _ in usable],
                        [e[0] if e is not None else None for _, e in usable])


def _fill(faces: HeldOutFaces, inpainter: Any, boxes: np.ndarray, mask: np.ndarray,
          say: Callable[[str], None]) -> dict[str, list[np.ndarray]]:
    """Each system's filled faces: the model (when given) and the baselines."""
    reals = faces.reals
    # The paste baseline needs a donor for every face: another held-out person when there is no
    # second photo of the same one (worse eyes, but still real eyes).
    donors = [e if e is not None else reals[(i + 1) % len(reals)] for i, e in enumerate(faces.exemplars)]
    outputs: dict[str, list[np.ndarray]] = {}
    if inpainter is not None:
        say(f"in-painting {len(reals)} faces")
        outputs["model"] = list(inpainter.inpaint(np.stack(reals), np.repeat(boxes[None], len(reals), 0),
                                                  faces.exemplars))
    say("baselines")
    outputs["flat"] = [flat_fill(f, mask) for f in reals]
    outputs["telea"] = [telea_fill(f, mask) for f in reals]
    outputs["exemplar_paste"] = [paste_fill(f, mask, d) for f, d in zip(reals, donors)]
    return outputs


def _systems(outputs: dict[str, list[np.ndarray]], faces: HeldOutFaces, mask: np.ndarray, boxes: np.ndarray,
             detector: Detector, say: Callable[[str], None]) -> dict[str, Any]:
    """Every system's mean figures, and the real row (the detector's error on the untouched faces)."""
    systems: dict[str, Any] = {}
    for name, results in outputs.items():
        say(f"scoring {name}")
        scored = [_score(r, f, t, mask, boxes, detector) for r, f, t in zip(results, faces.reals, faces.truths)]
        systems[name] = _summary([s for s, _ in scored], sum(missed for _, missed in scored))
    say("scoring real")
    errors = [landmark_error(detector, f, t) for f, t in zip(faces.reals, faces.truths)]
    systems[REAL] = {"ssim_eyes": None, "l1_mask": None, "psnr_mask": None, "l1_face": None,
                     "landmark_error": float(np.mean([NO_FACE_ERROR if e is None else e for e in errors])),
                     "no_face": sum(e is None for e in errors)}
    return systems


def _sheet(path: str | Path, outputs: dict[str, list[np.ndarray]], reals: list[np.ndarray], mask: np.ndarray) -> str:
    rows = []
    for i in range(min(SHEET_FACES, len(reals))):
        masked = reals[i].copy()
        masked[mask > 0.5] = 128
        rows.append([masked, *(outputs[s][i] for s in outputs), reals[i]])
    return str(contact_sheet(rows, path, ["masked", *outputs, REAL]))


def evaluate_eyes(model: str | Path | None, faces: str | Path, max_faces: int = 100,
                  classifier: str | Path | None = None, sheet: str | Path | None = None, device: str = "cpu",
                  detector: Detector | None = None,
                  progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Score eye in-painting on held-out LFW faces beside baselines; returns a JSON-ready dict.

    `model`: an in-painter name, export or run folder (None: baselines only, at 128 px).
    `max_faces`: held-out identities, one photo each, evenly spread (0: all).
    `classifier`: an eye-state model; with a model and `<faces>/closed_eyes`, the share of eyes it
    calls open on real closed-eye photos before and after in-painting. `detector`: for the
    re-detection (default MTCNN). `sheet`: a contact sheet PNG of up to 6 faces.
    """
    t0 = time.perf_counter()
    say = progress or (lambda _msg: None)
    root = Path(faces)
    detector = detector or MTCNNDetector(DetectConfig(device=device))
    inpainter = None
    if model is not None:
        from imgtrans.faces.inpaint import load_inpainter

        inpainter = load_inpainter(model, device)
    size = inpainter.size if inpainter is not None else 128
    spec = inpainter.box_spec if inpainter is not None else EyeBoxSpec()
    boxes = eye_boxes(size, spec)
    mask = box_mask(size, boxes)

    say("reading held-out faces")
    held = _held_out_faces(root, max_faces, size)
    outputs = _fill(held, inpainter, boxes, mask, say)
    n, same = len(held.reals), sum(e is not None for e in held.exemplars)
    result: dict[str, Any] = {
        "model": {"source": str(model) if model is not None else None, "size": size,
                  "steps": inpainter.meta.get("steps") if inpainter is not None else None},
        "data": {"faces": str(root), "held_out_photos": held.photos, "evaluated": n,
                 "no_landmarks": held.photos - n},
        "exemplars": {"same_identity": same, "other_identity": n - same,
                      "note": "model gets a same-identity exemplar or none; exemplar_paste uses another "
                              "held-out person's face where the identity has no second photo"},
        "metrics": {"l1": "mean |result - real| in 0..255 levels", "psnr_cap_db": PSNR_CAP,
                    "ssim_kernel": SSIM_KERNEL, "upsample": UPSAMPLE, "no_face_error": NO_FACE_ERROR},
        "systems": _systems(outputs, held, mask, boxes, detector, say),
    }
    if classifier is not None:
        result["closed_eyes"] = closed_eye_shares(root / "closed_eyes", classifier, inpainter, detector, say)
    if sheet is not None:
        result["sheet"] = _sheet(sheet, outputs, held.reals, mask)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return result


def closed_eye_shares(folder: Path, classifier: str | Path, inpainter: Any, detector: Detector,
                      say: Callable[[str], None]) -> dict[str, Any]:
    """Share of eyes the classifier calls open on real closed-eye photos, before and after the model.

    The central face of each photo is in-painted whatever the classifier says of it (--all
    semantics), without exemplars; `inpainter` None reports the share before only.
    """
    from imgtrans.faces.eyestate import load_eyestate

    if not (folder / "index.csv").is_file():
        return {"skipped": f"{folder}/index.csv not found"}
    clf = load_eyestate(classifier)
    size = inpainter.size if inpainter is not None else clf.size
    say(f"closed-eye photos in {folder}")
    before: list[np.ndarray] = []
    for record in read_index(folder / "index.csv", folder):
        try:
            rgb = np.asarray(read_rgb(record.file))
        except ImageReadError:
            continue
        h, w = rgb.shape[:2]
        found = detector.detect(rgb)
        if not found:
            continue
        face = min(found, key=lambda f: float(np.linalg.norm(f.centre - [w / 2, h / 2])))
        before.append(align(face.landmarks, size).warp(rgb))
    if not before:
        return {"photos": 0, "skipped": "no face detected"}
    p_before = clf.predict(before)
    out: dict[str, Any] = {"photos": len(before), "open_before": float((p_before > 0.5).mean()),
                           "open_after": None, "threshold": 0.5}
    if inpainter is not None:
        after = inpainter.inpaint(np.stack(before))
        out["open_after"] = float((clf.predict(list(after)) > 0.5).mean())
    return out


# ----- the report --------------------------------------------------------------------------
def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_eyes_table(result: dict[str, Any]) -> str:
    """A plain-text report: one row per system (model, baselines, real)."""
    m, d, ex = result["model"], result["data"], result["exemplars"]
    lines = [f"model: {m['source'] or 'none (baselines only)'} at {m['size']} px",
             f"faces: {d['evaluated']} held-out LFW faces ({d['no_landmarks']} without landmarks left out); "
             f"exemplars: {ex['same_identity']} same person, {ex['other_identity']} another person (paste only)"]
    header = ["system", "SSIM eyes", "L1 mask", "PSNR mask", "L1 face", "eye error", "no face"]
    table = [header]
    for name, f in result["systems"].items():
        table.append([name, _cell(f["ssim_eyes"], ".3f"), _cell(f["l1_mask"], ".1f"), _cell(f["psnr_mask"], ".1f"),
                      _cell(f["l1_face"], ".2f"), _cell(f["landmark_error"], ".3f"), str(f["no_face"])])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines += ["", *("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table), ""]
    lines.append(f"SSIM eyes: on a crop around each eye box, higher is better. L1 (0..255 levels) and PSNR "
                 f"(dB, capped at {PSNR_CAP:.0f}) inside the masks; they reward blur, so flat fills score well. "
                 "eye error: re-detected eye centres vs the face's own aligned eye landmarks over the "
                 f"inter-ocular distance ({UPSAMPLE}x upsampled and grey-framed for the detector); a face not "
                 f"re-detected counts {NO_FACE_ERROR} and is counted under 'no face'.")
    closed = result.get("closed_eyes")
    if closed:
        if "open_before" in closed:
            after = "-" if closed["open_after"] is None else f"{closed['open_after']:.0%}"
            lines.append(f"closed-eye photos ({closed['photos']}): eyes called open before "
                         f"{closed['open_before']:.0%}, after the model {after}")
        else:
            lines.append(f"closed-eye photos: skipped ({closed['skipped']})")
    if "sheet" in result:
        lines.append(f"contact sheet: {result['sheet']}")
    return "\n".join(lines)
