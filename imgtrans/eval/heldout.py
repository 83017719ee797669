"""Held-out translation figures while training: judge share, FID and KID per direction, beside identity.

A translation objective scores its current generators on a few test images every `eval_every`
steps and at the end (the trainer writes the figures to eval.jsonl and eval.json), so a user
sees when more steps stop paying. The real target images, the identity baseline and the judge
are prepared once per run; each evaluation costs one generator pass and one Inception pass per
test image. The figures use the same code as `imgtrans eval translate`, on fewer images.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from imgtrans.errors import UserError
from imgtrans.eval import metrics
from imgtrans.eval.images import load_set
from imgtrans.eval.judge import load_judge
from imgtrans.eval.translate import DIRECTIONS, FeatureBank, Images, score, translate_all
from imgtrans.objectives.translation import HeldOutConfig
from imgtrans.pipelines.translate import TranslateConfig, Translator
from imgtrans.weights import run_size

Exports = dict[str, tuple[dict[str, torch.Tensor], dict[str, Any]]]  # direction -> (state, meta)
FIGURES = ("judge_target_share", "fid", "kid")  # what each direction reports


class HeldOut:
    """Scores exported generators on the test folders; everything that does not change is cached."""

    def __init__(self, cfg: HeldOutConfig, device: torch.device,
                 build: Callable[[dict[str, Any]], nn.Module]) -> None:
        self.cfg, self.device, self.build = cfg, device, build
        self.test = {"A": load_set(cfg.test_a, "test A", cfg.test_images),
                     "B": load_set(cfg.test_b, "test B", cfg.test_images)}
        for domain, images in self.test.items():
            if len(images) < 2:
                raise UserError(f"--test-{domain.lower()}: {len(images)} readable image(s); "
                                "held-out figures need at least 2 per folder")
        why = metrics.available() if cfg.test_fid else "not requested"
        self.fid_note = why
        inception = metrics.InceptionFeatures.load(device) if why is None else None
        judge = load_judge(cfg.test_judge).to(device) if cfg.test_judge else None
        self.bank = FeatureBank(judge, inception)
        self._identity: dict[str, dict[str, Any]] = {}

    def _translator(self, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> Translator:
        net = self.build(meta)
        net.load_state_dict(state)
        # fp32 whatever the training precision: the figures are of the weights.
        config = TranslateConfig(size=run_size(self.cfg.test_size, meta), precision="fp32")
        return Translator(net, meta, device=str(self.device), config=config)

    def _row(self, key: str, images: Images, direction: str) -> dict[str, Any]:
        tgt = DIRECTIONS[direction][1]
        figures = score(self.bank, key, images, tgt, f"test_{tgt}", self.test[tgt])
        return {k: figures[k] for k in FIGURES}

    def score(self, exports: Exports) -> dict[str, Any]:
        """{direction: {model figures, "identity": the unchanged test images' figures}}."""
        out: dict[str, Any] = {}
        for direction, (state, meta) in exports.items():
            src, _ = DIRECTIONS[direction]
            inputs = self.test[src]
            outputs = translate_all(self._translator(state, meta), inputs)
            key = f"{direction}/model"
            row = self._row(key, outputs, direction)
            self.bank.forget(key)  # the next evaluation's outputs differ
            if direction not in self._identity:
                self._identity[direction] = self._row(f"test_{src}", inputs, direction)
            out[direction] = {**row, "identity": self._identity[direction]}
        if self.fid_note is not None:
            out["fid_skipped"] = self.fid_note
        return out


def summary(figures: dict[str, Any]) -> str:
    """One line: per direction judge share, FID and KID, with the identity baseline's in brackets."""
    def cells(f: dict[str, Any]) -> str:
        parts = []
        if f.get("judge_target_share") is not None:
            parts.append(f"judge {f['judge_target_share']:.0%}")
        if f.get("fid") is not None:
            parts.append(f"FID {f['fid']:.1f}")
        if f.get("kid") is not None:
            parts.append(f"KID {f['kid'] * 1e3:.1f}e-3")
        return " ".join(parts) or "no figures"

    return "; ".join(f"{d} {cells(f)} (identity {cells(f['identity'])})"
                     for d, f in figures.items() if isinstance(f, dict) and d in DIRECTIONS)
