"""Networks and losses: official CycleGAN layout, PatchGAN shapes, GAN loss modes, init."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from imgtrans.nn import GANLoss, PatchDiscriminator, ResnetGenerator, init_weights
from imgtrans.nn.losses import feature_matching, l1, r1_penalty

KEYS = Path(__file__).resolve().parents[1] / "tests" / "official_resnet9_keys.txt"


def official_layout() -> dict[str, tuple[int, ...]]:
    rows = [line.split() for line in KEYS.read_text().splitlines() if line.strip()]
    return {k: tuple(int(x) for x in shape.split("x")) for k, shape in rows}


def test_generator_matches_official_keys_and_shapes() -> None:
    g = ResnetGenerator(ngf=64, n_blocks=9)
    mine = {k: tuple(v.shape) for k, v in g.state_dict().items()}
    assert mine == official_layout()


def test_official_state_dict_loads_strictly_and_is_used() -> None:
    torch.manual_seed(0)
    sd = {k: torch.randn(shape) * 0.02 for k, shape in official_layout().items()}
    g = ResnetGenerator(ngf=64, n_blocks=9)
    g.load_state_dict(sd, strict=True)
    assert torch.equal(g.state_dict()["model.26.weight"], sd["model.26.weight"])
    out = g(torch.zeros(1, 3, 32, 32))
    assert out.shape == (1, 3, 32, 32)


def test_dropout_variant_shifts_second_conv_like_the_reference() -> None:
    keys = ResnetGenerator(ngf=8, n_blocks=1, dropout=True).state_dict().keys()
    assert "model.10.conv_block.6.weight" in keys and "model.10.conv_block.5.weight" not in keys


@pytest.mark.parametrize("size", [(32, 32), (36, 44)])
def test_generator_keeps_size_for_multiples_of_stride(size: tuple[int, int]) -> None:
    g = ResnetGenerator(ngf=8, n_blocks=2, in_channels=4, out_channels=3)
    y = g(torch.randn(2, 4, *size))
    assert y.shape == (2, 3, *size)
    assert y.abs().max() <= 1.0


@pytest.mark.parametrize("norm", ["instance", "batch", "none"])
def test_generator_norms_build_and_run(norm: str) -> None:
    g = ResnetGenerator(ngf=8, n_blocks=1, norm=norm)
    assert g(torch.randn(2, 3, 16, 16)).shape == (2, 3, 16, 16)
    has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in g.modules())
    assert has_bn == (norm == "batch")


def test_unknown_norm_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown norm"):
        ResnetGenerator(ngf=8, norm="group")


def test_patchgan_70px_receptive_layout() -> None:
    d = PatchDiscriminator(ndf=64, n_layers=3)
    assert d(torch.zeros(1, 3, 256, 256)).shape == (1, 1, 30, 30)
    assert d(torch.zeros(1, 3, 128, 128)).shape == (1, 1, 14, 14)


def test_patchgan_spectral_norm_bounds_weights() -> None:
    torch.manual_seed(0)
    d = init_weights(PatchDiscriminator(ndf=8, n_layers=2, norm="none", spectral_norm=True))
    assert any("parametrizations" in k for k in d.state_dict())
    for _ in range(5):  # power iterations converge over forward passes
        d(torch.randn(2, 3, 32, 32))
    d.eval()
    conv = d.model[0]
    sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2).item()
    assert sigma == pytest.approx(1.0, abs=0.1)


def test_init_weights_is_normal_002_with_zero_bias() -> None:
    torch.manual_seed(0)
    g = init_weights(ResnetGenerator(ngf=16, n_blocks=2), gain=0.02)
    w = g.model[1].weight
    assert w.std().item() == pytest.approx(0.02, rel=0.15)
    assert torch.count_nonzero(g.model[1].bias) == 0


def _input_extent(out: torch.Tensor, x: torch.Tensor) -> int:
    """Width in input pixels that the centre logit of a logit map depends on."""
    out[..., out.shape[-2] // 2, out.shape[-1] // 2].sum().backward()
    cols = (x.grad.abs().sum(dim=(0, 1, 2)) > 0).nonzero().flatten()
    x.grad = None
    return int(cols.max() - cols.min() + 1)


def test_multiscale_patchgan_judges_twice_the_context_with_its_own_weights() -> None:
    torch.manual_seed(0)
    # No norm layer: instance norm would make every logit depend on the whole image.
    d = init_weights(PatchDiscriminator(ndf=8, n_layers=3, norm="none", scales=2))
    x = torch.randn(1, 3, 256, 256, requires_grad=True)
    fine, coarse = d(x)
    assert fine.shape == (1, 1, 30, 30) and coarse.shape == (1, 1, 14, 14)
    # 70 px patches at full size; the coarse scale sees the half-size image, so about 2x70 px.
    assert _input_extent(fine, x) == 70
    assert 140 <= _input_extent(d(x)[1], x) <= 142
    assert len(d.coarser) == 1 and d.coarser[0] is not d.model
    assert not torch.equal(d.coarser[0][0].weight, d.model[0].weight)


def test_single_scale_patchgan_keeps_the_reference_keys_and_output() -> None:
    one = PatchDiscriminator(ndf=8, n_layers=2)
    assert all(k.startswith("model.") for k in one.state_dict())
    assert isinstance(one(torch.zeros(1, 3, 32, 32)), torch.Tensor)
    with pytest.raises(ValueError, match="scales"):
        PatchDiscriminator(ndf=8, scales=0)


@pytest.mark.parametrize("scales", [1, 2])
def test_patchgan_features_are_its_hidden_convs_before_their_norms(scales: int) -> None:
    """`features=True` returns the same logits plus every hidden conv's output (not the logit
    conv's), taken before the norm, each scale's in turn, finest first."""
    torch.manual_seed(0)
    d = init_weights(PatchDiscriminator(ndf=8, n_layers=2, scales=scales))
    x = torch.randn(2, 3, 32, 32)
    logits, hidden = d(x, features=True)
    plain = d(x)
    for got, want in zip(logits if scales > 1 else [logits], plain if scales > 1 else [plain], strict=True):
        assert torch.equal(got, want)
    assert [h.shape[1:] for h in hidden] == [(8, 16, 16), (16, 8, 8), (32, 7, 7)] + (
        [(8, 8, 8), (16, 4, 4), (32, 3, 3)] if scales > 1 else [])
    assert torch.equal(hidden[0], d.model[0](x))  # the first conv, before its LeakyReLU
    before_norm = d.model[2](torch.nn.functional.leaky_relu(hidden[0], 0.2))
    assert torch.allclose(hidden[1], before_norm, atol=1e-6)
    assert hidden[1].mean((2, 3)).abs().max() > 1e-3  # not instance-normalized (that would be ~0)


def test_feature_matching_compares_channel_statistics_in_units_of_the_reals_spread() -> None:
    """Per layer: mean over channels of |mean gap| + |std gap| over batch and positions, divided by
    the reals' mean std; the layers averaged. Only the fakes get a gradient."""
    real = torch.tensor([[[[0.0, 2.0], [0.0, 2.0]]], [[[0.0, 2.0], [0.0, 2.0]]]])  # mean 1, std 1
    fake = torch.full((2, 1, 2, 2), 3.0, requires_grad=True)  # mean 3, std 0
    wide = torch.stack([real[:, 0] * 2, real[:, 0] * 2], 1)  # 2 channels, mean 2, std 2
    wide_fake = torch.zeros(2, 2, 2, 2)  # mean 0, std 0
    got = feature_matching([fake, wide_fake], [real, wide])
    # layer 1: (|3-1| + |0-1|) / 1 = 3; layer 2: (|0-2| + |0-2|) / 2 = 2
    assert got.item() == pytest.approx((3.0 + 2.0) / 2, abs=1e-4)
    assert feature_matching([real.clone()], [real]).item() == pytest.approx(0.0, abs=1e-4)
    got.backward()
    assert fake.grad is not None and torch.isfinite(fake.grad).all() and fake.grad.abs().sum() > 0
    real_g = real.clone().requires_grad_(True)
    feature_matching([fake.detach() * 1.0], [real_g])
    assert real_g.grad is None
    with pytest.raises(ValueError, match="same non-empty list"):
        feature_matching([fake], [real, real])


@pytest.mark.parametrize("mode", ["lsgan", "vanilla", "hinge"])
def test_gan_loss_of_several_maps_is_their_mean(mode: str) -> None:
    loss = GANLoss(mode)
    maps = [torch.full((1, 1, 4, 4), 0.5), torch.tensor([[[[-2.0, 3.0]]]])]
    for real, for_d in ((True, True), (False, True), (True, False)):
        want = (loss(maps[0], real, for_d) + loss(maps[1], real, for_d)) / 2
        assert loss(maps, real, for_d).item() == pytest.approx(want.item())


def test_lsgan_loss_values() -> None:
    loss = GANLoss("lsgan")
    pred = torch.full((2, 1, 4, 4), 0.5)
    assert loss(pred, True).item() == pytest.approx(0.25)
    assert loss(pred, False).item() == pytest.approx(0.25)
    assert loss(torch.ones(1, 1, 2, 2), True).item() == 0.0


def test_vanilla_loss_values() -> None:
    loss = GANLoss("vanilla")
    zero = torch.zeros(1, 1, 3, 3)
    assert loss(zero, True).item() == pytest.approx(0.6931, abs=1e-4)
    assert loss(torch.full((1, 1, 1, 1), 20.0), True).item() < 1e-6
    assert loss(torch.full((1, 1, 1, 1), 20.0), False).item() == pytest.approx(20.0, abs=1e-4)


def test_hinge_loss_values() -> None:
    loss = GANLoss("hinge")
    pred = torch.tensor([[-2.0, 0.5, 3.0]])
    # D: real pushes above +1, fake below -1; G: maximise D(fake).
    assert loss(pred, True).item() == pytest.approx((3.0 + 0.5 + 0.0) / 3)
    assert loss(pred, False).item() == pytest.approx((0.0 + 1.5 + 4.0) / 3)
    assert loss(pred, True, for_d=False).item() == pytest.approx(-0.5)


def test_gan_loss_is_float32_under_bf16_inputs() -> None:
    pred = torch.full((1, 1, 2, 2), 0.5, dtype=torch.bfloat16)
    assert GANLoss("lsgan")(pred, True).dtype == torch.float32


def test_ralsgan_scores_each_side_against_the_other_sides_mean() -> None:
    """Relativistic average LSGAN: D wants real - mean(fake) = +1 and fake - mean(real) = -1;
    G wants the reverse, its two terms averaged."""
    loss = GANLoss("ralsgan")
    real = torch.tensor([[[[2.0, 0.0]]]])  # mean 1
    fake = torch.tensor([[[[-1.0, 1.0]]]])  # mean 0
    on_real, on_fake = loss.judge(real, fake)
    assert on_real.item() == pytest.approx(((2 - 0 - 1) ** 2 + (0 - 0 - 1) ** 2) / 2)  # 1.0
    assert on_fake.item() == pytest.approx(((-1 - 1 + 1) ** 2 + (1 - 1 + 1) ** 2) / 2)  # 1.0
    fool_fake = ((-1 - 1 - 1) ** 2 + (1 - 1 - 1) ** 2) / 2  # 5.0
    fool_real = ((2 - 0 + 1) ** 2 + (0 - 0 + 1) ** 2) / 2  # 5.0
    assert loss.fool(fake, real).item() == pytest.approx(0.5 * (fool_fake + fool_real))
    # A judge whose real logits sit exactly 1 above the fakes' mean (and fakes 1 below the reals')
    # has nothing left to learn; the generator's loss is then at its largest mirrored value.
    perfect_real, perfect_fake = torch.full((1, 1, 2, 2), 0.5), torch.full((1, 1, 2, 2), -0.5)
    assert sum(loss.judge(perfect_real, perfect_fake)).item() == 0.0
    assert loss.fool(perfect_fake, perfect_real).item() == pytest.approx(4.0)
    # Only the fakes carry the generator's gradient, through both terms.
    fake_g, real_g = fake.clone().requires_grad_(True), real.clone().requires_grad_(True)
    loss.fool(fake_g, real_g).backward()
    assert real_g.grad is None and fake_g.grad is not None and fake_g.grad.abs().sum() > 0
    assert loss.relativistic and not GANLoss("lsgan").relativistic


def test_ralsgan_pairs_the_maps_of_each_scale_and_needs_both_sides() -> None:
    loss = GANLoss("ralsgan")
    real = [torch.full((1, 1, 4, 4), 0.5), torch.tensor([[[[-2.0, 3.0]]]])]
    fake = [torch.full((1, 1, 4, 4), -0.2), torch.tensor([[[[1.0, 0.0]]]])]
    want = [(loss.judge(r, f), loss.fool(f, r)) for r, f in zip(real, fake)]
    got_real, got_fake = loss.judge(real, fake)
    assert got_real.item() == pytest.approx((want[0][0][0] + want[1][0][0]).item() / 2)
    assert got_fake.item() == pytest.approx((want[0][0][1] + want[1][0][1]).item() / 2)
    assert loss.fool(fake, real).item() == pytest.approx((want[0][1] + want[1][1]).item() / 2)
    with pytest.raises(ValueError, match="logits on real images"):
        loss.fool(fake)
    with pytest.raises(ValueError, match="judge"):
        loss(fake[0], True)


@pytest.mark.parametrize("mode", ["lsgan", "vanilla", "hinge"])
def test_judge_and_fool_are_the_single_sided_losses_in_other_modes(mode: str) -> None:
    loss = GANLoss(mode)
    real, fake = torch.tensor([[0.3, 1.2]]), torch.tensor([[-0.4, 0.9]])
    on_real, on_fake = loss.judge(real, fake)
    assert on_real.item() == loss(real, True).item() and on_fake.item() == loss(fake, False).item()
    assert loss.fool(fake, real).item() == loss(fake, True, for_d=False).item() == loss.fool(fake).item()


def test_unknown_gan_mode() -> None:
    with pytest.raises(ValueError, match="gan_mode"):
        GANLoss("wgan")


def test_r1_penalty_equals_the_analytic_gradient_norm_and_trains_the_judge() -> None:
    """For a 1x1-conv judge the score's input gradient is w_c / (H W) at every pixel, so the
    penalty is sum(w^2) / (H W); a list of maps adds their scores; the graph reaches the weights."""
    conv = nn.Conv2d(3, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -2.0, 3.0]).view(1, 3, 1, 1))
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    got = r1_penalty(conv(x), x)
    assert got.item() == pytest.approx(14.0 / 20, rel=1e-6)
    assert r1_penalty([conv(x), conv(x)], x).item() == pytest.approx(4 * 14.0 / 20, rel=1e-6)
    got.backward()
    assert torch.allclose(conv.weight.grad.flatten(), 2 * torch.tensor([1.0, -2.0, 3.0]) / 20)


def test_l1() -> None:
    assert l1(torch.zeros(2, 3), torch.full((2, 3), -0.5)).item() == pytest.approx(0.5)


def test_residual_generator_starts_as_the_identity_and_learns_an_edit() -> None:
    from imgtrans.nn import ResnetGenerator, init_weights
    from imgtrans.nn.generators import ResnetArch

    torch.manual_seed(0)
    plain = ResnetGenerator(ResnetArch(ngf=8, n_blocks=2))
    net = init_weights(ResnetGenerator(ResnetArch(ngf=8, n_blocks=2, residual=True)))
    assert len(net.model) == len(plain.model)  # same child indices for feature taps
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(net(x), x)  # exactly the input before training
    assert not torch.allclose(init_weights(plain)(x), x, atol=0.1)  # the reference form redraws the photo
    # One gradient step on the edit layer moves the output, with no tanh bounding it.
    loss = (net(x) - 2.0).abs().mean()
    loss.backward()
    with torch.no_grad():
        for p in net.parameters():
            if p.grad is not None:
                p -= 0.5 * p.grad.sign()
    y = net(x)
    assert (y - x).abs().mean() > 0.1 and y.max() > 1.0
    with pytest.raises(ValueError, match="residual"):
        ResnetGenerator(ResnetArch(in_channels=1, out_channels=3, residual=True))


def test_masked_generator_starts_near_the_identity_and_learns_to_replace_a_region() -> None:
    from imgtrans.nn import ResnetGenerator, init_weights
    from imgtrans.nn.generators import MASK_START_LOGIT, ResnetArch

    torch.manual_seed(0)
    plain = ResnetGenerator(ResnetArch(ngf=8, n_blocks=2))
    net = init_weights(ResnetGenerator(ResnetArch(ngf=8, n_blocks=2, mask=True)))
    # The official layout is untouched (legacy loading, CUT's taps); the mask head comes beside it.
    assert len(net.model) == len(plain.model)
    assert set(net.state_dict()) - set(plain.state_dict()) == {"mask_head.1.weight", "mask_head.1.bias"}
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    content = net.model(x)
    start = torch.sigmoid(torch.tensor(MASK_START_LOGIT))
    # Before training the output is the input blended with 5% of the content, everywhere alike.
    assert torch.allclose(net(x), x + start * (content - x), atol=1e-6)
    assert (net(x) - x).abs().max() < 0.1
    # Asked for a flat image, the net opens its mask: training replaces the input instead of editing it.
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(30):
        optimizer.zero_grad()
        (net(x) - 0.5).abs().mean().backward()
        optimizer.step()
    drawn = torch.sigmoid(net.mask_head(net.model[:-3](x)))
    assert drawn.mean() > 0.5 and (net(x) - 0.5).abs().mean() < 0.5 * (x - 0.5).abs().mean()
    with pytest.raises(ValueError, match="mask"):
        ResnetGenerator(ResnetArch(residual=True, mask=True))


def test_resize_upsampling_and_reflect_padding_leave_no_checkerboard_or_edge() -> None:
    from imgtrans.nn.generators import ResnetArch

    # Batch norm in eval mode is a per-channel affine map, so a constant photo stays constant
    # through every layer unless the layers themselves print a pattern.
    def out(**kw: object) -> torch.Tensor:
        torch.manual_seed(0)
        # gain 0.1: large enough that the signal survives the layers without saturating tanh
        net = init_weights(ResnetGenerator(ResnetArch(ngf=8, n_blocks=2, norm="batch", **kw)), 0.1).eval()
        with torch.no_grad():
            return net(torch.full((1, 3, 40, 48), 0.3))

    clean = out(upsample="resize", down_pad="reflect")
    assert clean.shape == (1, 3, 40, 48)
    assert clean.abs().mean() > 0.05  # a real signal ...
    assert (clean - clean[..., :1, :1]).abs().max() < 1e-5  # ... with no pattern and no border
    ref = out()
    inner = ref[..., 8:-8, 8:-8]
    # The strided transposed conv alternates even and odd pixels (the checkerboard) ...
    assert (inner[..., 0::2, :] - inner[..., 1::2, :]).abs().mean() > 0.05
    # ... and zero padding makes the top edge differ from the rows below it.
    assert (ref[..., 0, 8:-8] - ref[..., 8, 8:-8]).abs().mean() > 0.05
    # Same parameter names for the downsampling (padding mode carries no weights).
    keys = set(ResnetGenerator(ResnetArch(ngf=8, n_blocks=2, down_pad="reflect")).state_dict())
    assert keys == set(ResnetGenerator(ResnetArch(ngf=8, n_blocks=2)).state_dict())
    with pytest.raises(ValueError, match="upsample"):
        ResnetArch(upsample="bilinear-ish")


def test_subpixel_upsampling_equals_the_transposed_convolution() -> None:
    from imgtrans.nn.subpixel import SubPixelUpsample, with_subpixel_upsampling

    torch.manual_seed(0)
    for bias in (True, False):
        ct = nn.ConvTranspose2d(6, 5, 3, stride=2, padding=1, output_padding=1, bias=bias)
        x = torch.randn(2, 6, 7, 10)  # odd and non-square sides
        with torch.no_grad():
            assert torch.allclose(SubPixelUpsample(ct)(x), ct(x), atol=1e-5)
    net = init_weights(ResnetGenerator(ngf=8, n_blocks=2)).eval()
    fast = with_subpixel_upsampling(net)
    kinds = [type(m).__name__ for m in fast.modules()]
    assert "ConvTranspose2d" not in kinds and kinds.count("SubPixelUpsample") == 2
    assert any(isinstance(m, nn.ConvTranspose2d) for m in net.modules())  # the original is untouched
    x = torch.rand(1, 3, 36, 52) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(fast(x), net(x), atol=1e-5)
    with pytest.raises(ValueError, match="not a k3 s2"):
        SubPixelUpsample(nn.ConvTranspose2d(4, 4, 4, stride=2, padding=1))
