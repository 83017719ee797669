"""DiffAugment: each policy's effect on an image, gradients, reproducibility and its settings."""

from __future__ import annotations

import pytest
import torch

from imgtrans.errors import UserError
from imgtrans.nn.diffaug import DiffAugment, parse_policy
from imgtrans.objectives.cyclegan import CycleGANConfig


def batch(n: int = 4, size: int = 32) -> torch.Tensor:
    # Strictly non-zero pixels, so every zero in an output was put there by the augmentation.
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)) * 0.9 + 0.05


def test_policy_parsing_and_typos() -> None:
    assert parse_policy(" color, cutout ") == ("color", "cutout") and parse_policy("") == ()
    with pytest.raises(UserError, match="unknown policy colour"):
        parse_policy("colour,translation")
    with pytest.raises(UserError, match="d_augment: unknown policy"):
        CycleGANConfig(d_augment="flip")


def test_empty_policy_returns_the_input_untouched() -> None:
    aug, x = DiffAugment("", seed=0), batch()
    assert not aug and aug(x) is x


def test_translation_shifts_each_image_by_at_most_an_eighth_with_zeros_shifted_in() -> None:
    x, size = batch(), 32
    y = DiffAugment("translation", seed=3)(x)
    limit = size // 8
    moved = 0
    for xi, yi in zip(x, y):
        matches = []
        for dy in range(-limit, limit + 1):
            for dx in range(-limit, limit + 1):
                expected = torch.zeros_like(xi)
                src = xi[:, max(-dy, 0):size - max(dy, 0), max(-dx, 0):size - max(dx, 0)]
                expected[:, max(dy, 0):size - max(-dy, 0), max(dx, 0):size - max(-dx, 0)] = src
                if torch.equal(expected, yi):
                    matches.append((dy, dx))
        assert len(matches) == 1, matches
        moved += matches[0] != (0, 0)
    assert moved >= 3  # 81 offsets each: four unmoved images would be a broken draw


def test_cutout_zeroes_one_rectangle_of_at_most_a_quarter_and_keeps_the_rest() -> None:
    x = batch(8)
    y = DiffAugment("cutout", seed=1)(x)
    for xi, yi in zip(x, y):
        zero = (yi == 0).all(dim=0)
        assert torch.equal(yi[:, ~zero], xi[:, ~zero])
        rows, cols = zero.any(dim=1).nonzero().flatten(), zero.any(dim=0).nonzero().flatten()
        assert 0 < zero.sum() <= 16 * 16
        # A rectangle: its bounding box is all zeros.
        assert zero[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()


def test_color_changes_each_image_differently_and_passes_gradients() -> None:
    x = batch().requires_grad_(True)
    y = DiffAugment("color", seed=2)(x)
    assert y.shape == x.shape
    shift = (y - x).detach().flatten(1).mean(1)
    assert shift.unique().numel() == len(x)  # per image, not one draw for the batch
    y.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_the_full_policy_is_reproducible_and_resumes_from_its_state() -> None:
    x = batch()
    a, b = DiffAugment("color,translation,cutout", seed=5), DiffAugment("color,translation,cutout", seed=5)
    first = a(x)
    assert torch.equal(first, b(x))
    state = {k: v.clone() for k, v in a.state_dict().items()}
    after = a(x)
    assert not torch.equal(after, first)  # the draws move on
    c = DiffAugment("color,translation,cutout", seed=99)
    c.load_state_dict(state)
    assert torch.equal(c(x), after)
