"""Learning-rate schedule as a pure function of training progress."""

from __future__ import annotations


def lr_factor(step: int, total: int, decay_start: float) -> float:
    """Constant until `decay_start` (a fraction of `total`), then linear decay towards zero.

    Same shape as the reference CycleGAN's 100 epochs constant + 100 epochs decay when
    `decay_start=0.5`. The last step keeps a small positive rate (1 / decay length), as there.
    Being a function of the step alone, it needs no state to resume.
    """
    if total <= 0:
        return 1.0
    start = int(round(total * decay_start))
    if step < start:
        return 1.0
    return max(0.0, (total - step) / max(1, total - start))
