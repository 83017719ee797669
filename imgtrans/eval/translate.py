"""Offline translation quality: judge verdicts, feature distances and cycle error, beside baselines.

For each direction (AtoB: test A -> domain B; BtoA the reverse) three systems are scored on the
same inputs: the model, identity (output = input: the floor a useful model must beat) and the
untrained network (same architecture, fixed-seed initialisation: what training bought). A "real"
row gives the ceiling: real target images judged, and real-vs-real distances (target test images
vs the target train folder when given, else one half of the test set vs the other).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from imgtrans.errors import UserError
from imgtrans.eval import metrics
from imgtrans.eval.images import load_set
from imgtrans.eval.judge import DomainJudge, Judgement, load_judge
from imgtrans.eval.sheet import contact_sheet
from imgtrans.nn import ResnetGenerator, init_weights
from imgtrans.nn.generators import ResnetArch
from imgtrans.pipelines.translate import TranslateConfig, Translator
from imgtrans.train.runtime import select_device
from imgtrans.weights import LoadedGenerator, load_generator, recorded_settings, run_size

DIRECTIONS = {"AtoB": ("A", "B"), "BtoA": ("B", "A")}  # direction -> (source domain, target domain)
REVERSE = {"AtoB": "BtoA", "BtoA": "AtoB"}
SYSTEMS = ("model", "identity", "untrained")
REAL = "real"  # the reference row
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000
Images = list[np.ndarray]
Pair = tuple[np.ndarray | None, np.ndarray | None]  # two feature sets to compare


# ----- networks ----------------------------------------------------------------------------
def load_directions(model: str | Path, wanted: Sequence[str] | None) -> tuple[dict[str, LoadedGenerator], dict[str, str]]:
    """The model's generators by direction, and why each missing one is missing.

    A run folder or checkpoint holds both; an export or manifest name holds the direction it
    records. Only `wanted` directions (None: whatever exists) must load.
    """
    found: dict[str, LoadedGenerator] = {}
    missing: dict[str, str] = {}
    for d in DIRECTIONS:
        try:
            found[d] = load_generator(model, d)
        except UserError as e:
            missing[d] = str(e)
    # A file without a recorded direction (official .pth) loads under either name: one network.
    if len(found) == 2 and found["AtoB"].source == found["BtoA"].source:
        del found["BtoA"]
        missing["BtoA"] = f"{found['AtoB'].source} holds one generator of unrecorded direction (taken as AtoB)"
    asked = list(wanted) if wanted else [d for d in DIRECTIONS if d in found]
    unknown = [d for d in asked if d not in DIRECTIONS]
    if unknown:
        raise UserError(f"unknown direction {unknown[0]!r}; choose from {', '.join(DIRECTIONS)}")
    absent = [d for d in asked if d not in found]
    if absent or not asked:
        failed = absent or list(DIRECTIONS)
        if len(failed) > 1 and len({missing[d] for d in failed}) == 1:  # e.g. an unknown name: said once
            raise UserError(missing[failed[0]])
        reasons = "; ".join(f"{d}: {missing[d]}" for d in failed)
        raise UserError(f"{model}: cannot evaluate {' and '.join(absent) or 'any direction'} ({reasons})")
    return found, missing


def untrained_like(arch: dict[str, Any], seed: int) -> ResnetGenerator:
    """A freshly initialised generator of the same architecture (reference init, fixed seed)."""
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG stream untouched
        torch.manual_seed(seed)
        return init_weights(ResnetGenerator(ResnetArch(**arch)), 0.02)


def translate_all(translator: Translator, images: Images) -> Images:
    """Translate at native resolution, batching runs of same-size images."""
    out: Images = []
    i, batch = 0, max(1, translator.config.batch_size)
    while i < len(images):
        j = i + 1
        while j < len(images) and j - i < batch and images[j].shape == images[i].shape:
            j += 1
        out += translator.translate_rgb(images[i:j])
        i = j
    return out


# ----- figures -----------------------------------------------------------------------------
def cycle_l1(inputs: Images, reconstructions: Images) -> float:
    """Mean |input - reconstruction| on the [-1, 1] scale of the training loss (per image, then averaged)."""
    return float(np.mean([np.abs(r.astype(np.int16) - x.astype(np.int16)).mean() / 127.5
                          for x, r in zip(inputs, reconstructions)]))


def _fd(x: np.ndarray | None, y: np.ndarray | None) -> float | None:
    """Fréchet distance, or None when a set is missing or too small to have a covariance."""
    if x is None or y is None or len(x) < 2 or len(y) < 2:
        return None
    return metrics.frechet_distance(x, y)


def _kid(x: np.ndarray | None, y: np.ndarray | None) -> tuple[float | None, float | None]:
    if x is None or y is None or len(x) < 2 or len(y) < 2:
        return None, None
    return metrics.kid(x, y, KID_SUBSETS, KID_SUBSET_SIZE)


class FeatureBank:
    """Judge verdicts and Inception features per named image set, each computed once."""

    def __init__(self, judge: DomainJudge | None, inception: metrics.InceptionFeatures | None) -> None:
        self.judge, self.inception = judge, inception
        self._judged: dict[str, Judgement] = {}
        self._inception: dict[str, np.ndarray] = {}

    def judged(self, key: str, images: Images) -> Judgement | None:
        if self.judge is None or not images:
            return None
        if key not in self._judged:
            self._judged[key] = self.judge.judge(images)
        return self._judged[key]

    def inception_features(self, key: str, images: Images) -> np.ndarray | None:
        if self.inception is None or not images:
            return None
        if key not in self._inception:
            self._inception[key] = self.inception.features(images)
        return self._inception[key]

    def forget(self, key: str) -> None:
        """Drop what was computed for `key` (a set that will change, e.g. a model still training)."""
        self._judged.pop(key, None)
        self._inception.pop(key, None)



def _figures(verdict: Judgement | None, target: str, judge_pair: Pair, inception_pair: Pair) -> dict[str, Any]:
    """One table row: the judge's verdict on a set and the distances of two feature-set pairs."""
    share = p_mean = None
    if verdict is not None:
        p = verdict.p_b if target == "B" else 1.0 - verdict.p_b
        share, p_mean = float((p > 0.5).mean()), float(p.mean())
    kid_mean, kid_std = _kid(*inception_pair)
    return {"judge_target_share": share, "judge_p_target": p_mean, "judge_fd": _fd(*judge_pair),
            "fid": _fd(*inception_pair), "kid": kid_mean, "kid_std": kid_std}


def _judge_features(j: Judgement | None) -> np.ndarray | None:
    return j.features if j is not None else None


def score(bank: FeatureBank, key: str, images: Images, target: str, ref_key: str, ref: Images) -> dict[str, Any]:
    """The judge's verdict on `images` (share and mean probability of `target`) and their distances to `ref`."""
    j, jr = bank.judged(key, images), bank.judged(ref_key, ref)
    f, fr = bank.inception_features(key, images), bank.inception_features(ref_key, ref)
    return _figures(j, target, (_judge_features(j), _judge_features(jr)), (f, fr))


def real_row(bank: FeatureBank, target: str, targets: Images, train: Images | None) -> dict[str, Any]:
    """The reference row: the judge on the real target test images, and the distances between two
    real target sets: test vs train images when `train` is given, else the test set's even vs odd
    halves (smaller sets, so FID reads higher)."""
    key = f"test_{target}"
    j, f = bank.judged(key, targets), bank.inception_features(key, targets)
    jf = _judge_features(j)
    if train is not None:
        judge_pair: Pair = (jf, _judge_features(bank.judged(f"train_{target}", train)))
        inception_pair: Pair = (f, bank.inception_features(f"train_{target}", train))
    else:
        judge_pair = (jf[0::2], jf[1::2]) if jf is not None else (None, None)
        inception_pair = (f[0::2], f[1::2]) if f is not None else (None, None)
    return {**_figures(j, target, judge_pair, inception_pair), "cycle_l1": None}


# ----- the evaluation ------------------------------------------------------------------------
Translators = dict[str, Translator]  # direction -> translator


def _run_settings(nets: dict[str, LoadedGenerator], size: int | str | None,
                  keep_detail: bool | None) -> dict[str, dict[str, Any]]:
    """Each direction's run size and keep_detail: as given, else its model's recorded defaults.

    The same rule as `imgtrans translate`, so `eval translate -m NAME` measures what a user of
    NAME gets (and what its manifest figures were measured with) unless told otherwise.
    """
    settings = {}
    for d, g in nets.items():
        s, keep, used = recorded_settings(g.meta, size, keep_detail)
        settings[d] = {"size": run_size(s, g.meta), "keep_detail": keep, "recorded": used}
    return settings


def _translators(nets: dict[str, LoadedGenerator], settings: dict[str, dict[str, Any]], device: str,
                 seed: int) -> tuple[Translators, Translators]:
    """Each direction's model translator and an untrained one of the same settings."""
    # Figures are of the weights, not of a device's reduced-precision arithmetic: always fp32.
    configs = {d: TranslateConfig(size=settings[d]["size"], precision="fp32", keep_detail=settings[d]["keep_detail"])
               for d in nets}
    models = {d: Translator(g.net, g.meta, device=device, config=configs[d]) for d, g in nets.items()}
    untrained = {d: Translator(untrained_like(g.meta["arch"], seed + i), device=device, config=configs[d])
                 for i, (d, g) in enumerate(nets.items())}
    return models, untrained


def _reference(folder: str | Path | None, targets: Images, train: Images | None) -> dict[str, Any]:
    """What the real row compares: the target test images against train images, or its halves."""
    if train is not None:
        return {"kind": "train", "folder": str(folder), "sizes": [len(targets), len(train)]}
    return {"kind": "halves", "folder": None, "sizes": [len(targets[0::2]), len(targets[1::2])]}


def _direction(d: str, test: dict[str, Images], models: Translators, untrained: Translators, bank: FeatureBank,
               train_folder: str | Path | None, say: Callable[[str], None]) -> tuple[dict[str, Any], list[Images]]:
    """One direction's entry (every system scored against the target test images) and its sheet columns."""
    src, tgt = DIRECTIONS[d]
    inputs, targets = test[src], test[tgt]
    say(f"{d}: translating {len(inputs)} images (model, untrained)")
    outputs = {"model": translate_all(models[d], inputs), "identity": inputs,
               "untrained": translate_all(untrained[d], inputs)}
    keys = {"model": f"{d}/model", "identity": f"test_{src}", "untrained": f"{d}/untrained"}
    rec: dict[str, Images | None] = {"model": None, "identity": inputs, "untrained": None}
    back = REVERSE[d]
    if back in models:
        say(f"{d}: cycle back through {back}")
        rec["model"] = translate_all(models[back], outputs["model"])
        rec["untrained"] = translate_all(untrained[back], outputs["untrained"])
    say(f"{d}: scoring")
    systems = {}
    for s in SYSTEMS:
        figures = score(bank, keys[s], outputs[s], tgt, f"test_{tgt}", targets)
        figures["cycle_l1"] = cycle_l1(inputs, rec[s]) if rec[s] is not None else None  # type: ignore[arg-type]
        systems[s] = figures
    train = load_set(train_folder, f"{tgt} train", len(inputs)) if train_folder is not None else None
    systems[REAL] = real_row(bank, tgt, targets, train)
    entry = {"source_domain": src, "target_domain": tgt, "inputs": len(inputs), "targets": len(targets),
             "reference": _reference(train_folder, targets, train), "systems": systems}
    columns = [inputs, outputs["model"], outputs["untrained"]] + ([rec["model"]] if rec["model"] is not None else [])
    return entry, columns


def evaluate_translation(model: str | Path, a: str | Path, b: str | Path, judge: str | Path | None = None,
                         directions: Sequence[str] | None = None, max_images: int = 0, device: str = "auto",
                         fid: bool = True, a_train: str | Path | None = None, b_train: str | Path | None = None,
                         sheet: str | Path | None = None, sheet_images: int = 4, seed: int = 0,
                         size: int | str | None = None, keep_detail: bool | None = None,
                         judge_swapped: bool = False,
                         progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Score `model` on test folders `a` and `b`; returns a JSON-ready dict (see format_table).

    `judge`: a judge run folder, export or name (None: no judge figures). `directions`: None for
    every direction the model has. `max_images`: per test folder, evenly spread (0: all).
    `fid`: Inception FID/KID when the weights are installed (else skipped, with the reason).
    `a_train`/`b_train`: real train folders for the real-vs-real reference. `sheet`: write a
    contact sheet PNG (input | model | untrained | model reconstruction) of `sheet_images` per
    direction. `size`: run the networks at this short side and resize back ("train": each model's
    training size; 0: at the test images' own size), as `imgtrans translate --size`; `keep_detail`
    as `imgtrans translate --keep-detail`; either left None takes the model's recorded default
    (a shipped model's manifest "defaults"), else native size without. `judge_swapped`: the
    judge's A and B are this model's B and A. `progress` receives one line per stage.
    """
    t0 = time.perf_counter()
    say = progress or (lambda _msg: None)
    dev = select_device(device)
    nets, missing = load_directions(model, directions)
    evaluated = [d for d in (directions or DIRECTIONS) if d in nets]  # load_directions vetted them
    domain_judge = load_judge(judge, swapped=judge_swapped).to(dev) if judge is not None else None
    why_no_fid = metrics.available() if fid else "not requested"
    inception = metrics.InceptionFeatures.load(dev) if why_no_fid is None else None
    bank = FeatureBank(domain_judge, inception)

    say("reading test images")
    test = {"A": load_set(a, "A", max_images), "B": load_set(b, "B", max_images)}
    trains = {"A": a_train, "B": b_train}
    settings = _run_settings(nets, size, keep_detail)
    models, untrained = _translators(nets, settings, device, seed)
    for d, st in settings.items():
        if st["recorded"]:
            say(f"{d}: using {nets[d].meta.get('name', 'the model')}'s recorded settings {' '.join(st['recorded'])}")
    result: dict[str, Any] = {
        "model": {"source": str(model), "directions": {d: g.source for d, g in nets.items()},
                  "unavailable": missing, "arch": next(iter(nets.values())).meta.get("arch"),
                  "run_size": {d: st["size"] for d, st in settings.items()},
                  "keep_detail": {d: st["keep_detail"] for d, st in settings.items()},
                  "recorded_settings": {d: st["recorded"] for d, st in settings.items()}},
        "judge": _judge_info(domain_judge, bank, test),
        "inception": {"used": inception is not None, "reason": why_no_fid},
        "data": {"a": str(a), "b": str(b), "images": {k: len(v) for k, v in test.items()}},
        "directions": {},
    }
    rows: list[Images] = []
    for d in evaluated:
        entry, columns = _direction(d, test, models, untrained, bank, trains[DIRECTIONS[d][1]], say)
        result["directions"][d] = entry
        rows += [[column[i] for column in columns] for i in range(min(sheet_images, entry["inputs"]))]
    if sheet is not None and rows:
        say(f"writing {sheet}")
        result["sheet"] = str(contact_sheet(rows, sheet, ["input", "model", "untrained", "model reconstructed"]))
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return result


def _judge_info(judge: DomainJudge | None, bank: FeatureBank, test: dict[str, Images]) -> dict[str, Any] | None:
    """Where the judge came from and how well it separates the real test sets (a sanity check)."""
    if judge is None:
        return None
    accuracy = {}
    for domain, images in test.items():
        j = bank.judged(f"test_{domain}", images)
        if j is not None:
            accuracy[domain] = float(((j.p_b > 0.5) == (domain == "B")).mean())
    info = {"source": judge.source, "size": judge.size, "steps": judge.meta.get("steps"),
            "data": judge.meta.get("data"), "swapped": judge.swapped, "real_test_accuracy": accuracy}
    if len(accuracy) == 2 and max(accuracy.values()) < 0.5:
        # Worse than chance on both real test sets: the judge's labels are almost surely reversed.
        fix = "without --judge-swapped" if judge.swapped else "with --judge-swapped"
        info["warning"] = (f"the judge calls most real test images of both domains the other domain: its A and B "
                           f"look like this model's B and A; run again {fix}")
    return info


# ----- the report --------------------------------------------------------------------------
def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _kid_cell(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    # std is the spread over random subsets: 0 when every subset is both whole sets, so not shown.
    return f"{mean * 1e3:.1f}" + (f" ± {std * 1e3:.1f}" if std else "")


def _reference_note(direction: str, entry: dict[str, Any]) -> str:
    ref, tgt = entry["reference"], entry["target_domain"]
    if ref["kind"] == "train":
        return f"{direction} real: test {tgt} ({ref['sizes'][0]}) vs {ref['sizes'][1]} images of {ref['folder']}"
    return f"{direction} real: test {tgt} halves ({ref['sizes'][0]} vs {ref['sizes'][1]} images; FID reads high on small sets)"


def _run_note(model: dict[str, Any]) -> str:
    """ " (run at short side AtoB 256, BtoA 160 with detail kept)", or "" at native size."""
    keep = model.get("keep_detail", {})
    scaled = ", ".join(f"{d} {n}" + (" with detail kept" if keep.get(d) else "")
                       for d, n in model.get("run_size", {}).items() if n)
    return f" (run at short side {scaled})" if scaled else ""


def format_table(result: dict[str, Any]) -> str:
    """A plain-text report: one row per direction x {model, identity, untrained, real}."""
    model = result["model"]
    lines = [f"model: {model['source']}" + _run_note(model)]
    judge = result.get("judge")
    if judge:
        acc = ", ".join(f"{k} {v:.0%}" for k, v in judge["real_test_accuracy"].items())
        swapped = "; A and B swapped" if judge.get("swapped") else ""
        lines.append(f"judge: {judge['source']} (size {judge['size']}{swapped}; accuracy on the real test images: {acc})")
        if judge.get("warning"):
            lines.append(f"warning: {judge['warning']}")
    else:
        lines.append("judge: none (train one with `imgtrans eval train-judge`; judge columns empty)")
    inc = result["inception"]
    lines.append("FID/KID: FID Inception (TF reference weights)" if inc["used"] else f"FID/KID: skipped ({inc['reason']})")
    for d, why in result["model"].get("unavailable", {}).items():
        if d not in result["directions"]:
            lines.append(f"{d}: not evaluated ({why.splitlines()[0]})")
    header = ["direction", "system", "judge->target", "p(target)", "FD judge", "FID", "KID x1e3", "cycle L1"]
    table = [header]
    for d, entry in result["directions"].items():
        for s in (*SYSTEMS, REAL):
            f = entry["systems"][s]
            table.append([d if s == SYSTEMS[0] else "", s, _cell(f["judge_target_share"], ".0%"),
                          _cell(f["judge_p_target"], ".2f"), _cell(f["judge_fd"], ".2f"), _cell(f["fid"], ".1f"),
                          _kid_cell(f["kid"], f["kid_std"]), _cell(f["cycle_l1"], ".4f")])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines += ["", *("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table), ""]
    lines += [_reference_note(d, entry) for d, entry in result["directions"].items()]
    lines.append("judge->target: share of outputs the judge assigns to the target domain. FD judge, FID, KID: "
                 "outputs vs the real target test images, lower is better; the real row is what real images "
                 "score. cycle L1: mean |x - back(forward(x))| on the [-1, 1] scale.")
    if "sheet" in result:
        lines.append(f"contact sheet: {result['sheet']}")
    return "\n".join(lines)
