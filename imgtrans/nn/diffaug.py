"""Differentiable augmentation of what a discriminator sees (DiffAugment, Zhao et al. 2020).

A discriminator trained on a few hundred images can learn them by heart and stop teaching the
generator (on horse2zebra's thousand it did not: weights/README.md). Augmenting every image it
judges, real and generated alike, in the discriminator's step and in the generator's, keeps it
from memorising without changing what the generator is asked to produce: the augmentations are
differentiable, so the generator is still graded on its own output and never learns to make
augmented images.

Policies (comma-separated, applied in this order): `color` (brightness, saturation, contrast),
`translation` (shift by up to 1/8 of each side, zeros shifted in), `cutout` (a zeroed square of
half each side). Images are in [-1, 1]. Each image gets its own draw, from the augmenter's own
generator, so its state can be saved for exact resume.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from imgtrans.errors import UserError

POLICIES = ("color", "translation", "cutout")
TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5


def parse_policy(policy: str) -> tuple[str, ...]:
    """`"color,translation"` -> ("color", "translation"); "" -> (); unknown names are a UserError."""
    names = tuple(p.strip() for p in policy.split(",") if p.strip())
    unknown = [p for p in names if p not in POLICIES]
    if unknown:
        raise UserError(f"d_augment: unknown policy {', '.join(unknown)}; "
                        f"use a comma-separated subset of {','.join(POLICIES)} (or empty for none)")
    return names


class DiffAugment:
    """Applies a policy to a batch (N, C, H, W); a no-op when the policy is empty."""

    def __init__(self, policy: str, seed: int = 0) -> None:
        self.policy = parse_policy(policy)
        self.gen = torch.Generator().manual_seed(seed)

    def __bool__(self) -> bool:
        return bool(self.policy)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        steps: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
            "color": self._color, "translation": self._translation, "cutout": self._cutout}
        for name in self.policy:
            x = steps[name](x)
        return x

    def _uniform(self, n: int, low: float, high: float, like: torch.Tensor) -> torch.Tensor:
        # Drawn on the CPU from our own generator (reproducible on any device), then moved.
        u = torch.rand(n, 1, 1, 1, generator=self.gen) * (high - low) + low
        return u.to(device=like.device, dtype=like.dtype)

    def _color(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        x = x + self._uniform(n, -0.5, 0.5, x)  # brightness
        gray = x.mean(dim=1, keepdim=True)
        x = (x - gray) * self._uniform(n, 0.0, 2.0, x) + gray  # saturation
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) * self._uniform(n, 0.5, 1.5, x) + mean  # contrast

    def _offsets(self, n: int, limit: int) -> list[int]:
        return torch.randint(-limit, limit + 1, (n,), generator=self.gen).tolist()

    def _translation(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:]
        ph, pw = int(h * TRANSLATION_RATIO + 0.5), int(w * TRANSLATION_RATIO + 0.5)
        dy, dx = self._offsets(len(x), ph), self._offsets(len(x), pw)
        padded = F.pad(x, (pw, pw, ph, ph))
        # Image i moves by (dy, dx): its window in the padded batch starts at (ph - dy, pw - dx).
        return torch.stack([padded[i, :, ph - dy[i]:ph - dy[i] + h, pw - dx[i]:pw - dx[i] + w]
                            for i in range(len(x))])

    def _cutout(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        ch, cw = int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)
        # The square's centre may sit anywhere, so near the border only part of it lands inside.
        cy = torch.randint(0, h + (1 - ch % 2), (n,), generator=self.gen).tolist()
        cx = torch.randint(0, w + (1 - cw % 2), (n,), generator=self.gen).tolist()
        mask = torch.ones(n, 1, h, w)
        for i in range(n):
            top, left = max(cy[i] - ch // 2, 0), max(cx[i] - cw // 2, 0)
            mask[i, :, top:max(cy[i] - ch // 2 + ch, 0), left:max(cx[i] - cw // 2 + cw, 0)] = 0
        return x * mask.to(device=x.device, dtype=x.dtype)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.gen.set_state(state["gen"])
