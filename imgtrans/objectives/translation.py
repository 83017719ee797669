"""What the translation objectives share: held-out test folders in their config, and scoring on them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgtrans.errors import UserError


@dataclass(frozen=True)
class HeldOutConfig:
    """Test folders a translation run scores itself on (none: no held-out evaluation)."""

    test_a: str = field(default="", metadata={"cli": "--test-a",
                                              "help": "held-out domain A images, scored every eval_every steps "
                                                      "and at the end (with --test-b)"})
    test_b: str = field(default="", metadata={"cli": "--test-b", "help": "held-out domain B images"})
    test_images: int = 50  # per folder, evenly spread over its sorted files (0: all)
    test_judge: str = ""  # a domain judge (name, run or export) for the judge share; "": none
    test_size: str = "train"  # networks run at this short side, as `imgtrans translate --size`
    test_fid: bool = True  # FID/KID (needs the Inception weights; skipped with a note without them)

    def __post_init__(self) -> None:
        # Checked when the run starts, not at its first evaluation hours later.
        if bool(self.test_a) != bool(self.test_b):
            raise UserError("held-out evaluation needs both test folders: pass --test-a and --test-b")
        for flag, folder in (("--test-a", self.test_a), ("--test-b", self.test_b)):
            if folder and not Path(folder).is_dir():
                raise UserError(f"{flag} {folder}: folder not found")

    def enabled(self) -> bool:
        return bool(self.test_a)


class ScoresHeldOut:
    """Mixin for translation objectives (a `cfg` that is a HeldOutConfig, `export()` by direction):
    `evaluate()` scores the exported generators on the test folders; None when none are named."""

    cfg: HeldOutConfig
    _held_out: Any = None  # eval.heldout.HeldOut, made at the first evaluation

    def evaluate(self) -> dict[str, Any] | None:
        if not self.cfg.enabled():
            return None
        if self._held_out is None:
            from imgtrans.eval.heldout import HeldOut  # lazy: Inception and the judge load only when used

            nets = self.networks().values()  # type: ignore[attr-defined]
            device = next(next(iter(nets)).parameters()).device
            self._held_out = HeldOut(self.cfg, device, self.build_inference)  # type: ignore[attr-defined]
        return self._held_out.score(self.export())  # type: ignore[attr-defined]

    def describe(self, figures: dict[str, Any]) -> str:
        from imgtrans.eval.heldout import summary

        return summary(figures)
