"""CUT / FastCUT: PatchNCE loss values, generator feature taps, F's shapes, presets, training, resume, export."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY
from imgtrans.cli import run_cli
from imgtrans.config import merge
from imgtrans.errors import UserError
from imgtrans.eval.translate import load_directions
from imgtrans.nn import PatchHead, ResnetGenerator, patch_nce
from imgtrans.nn.generators import ResnetArch
from imgtrans.nn.patchnce import sample_patch_ids
from imgtrans.objectives.cut import CUT, CUTConfig, tap_channels
from imgtrans.train.checkpoint import latest_checkpoint, load_checkpoint, load_export
from imgtrans.train.launch import RunRequest, default_sections, run
from imgtrans.weights import load_generator

LAYERS = (0, 4, 7, 10, 11)  # pad, both downsampling convs, both blocks of a 2-block generator
TINY_CUT = {**TINY, "model.nce_layers": ",".join(map(str, LAYERS)), "model.num_patches": 16, "model.f_width": 16}


# ----- PatchNCE loss ------------------------------------------------------------------------
def test_patch_nce_equals_hand_computation_on_two_patches() -> None:
    q = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    k = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    # Row i: logits (q_i . k_0, q_i . k_1) / tau, positive at i.  q0: (0.8, 0); q1: (0.96, 0.8).
    # -log softmax of the positive = log(1 + exp((negative - positive) / tau)).
    tau = 0.5
    expected = 0.5 * (math.log(1 + math.exp((0.0 - 0.8) / tau)) + math.log(1 + math.exp((0.96 - 0.8) / tau)))
    assert patch_nce(q, k, batch_size=1, tau=tau).item() == pytest.approx(expected, rel=1e-6)


def test_patch_nce_takes_negatives_from_the_same_image_only() -> None:
    torch.manual_seed(0)
    q, k = F.normalize(torch.randn(2 * 5, 8), dim=1), F.normalize(torch.randn(2 * 5, 8), dim=1)
    per_image = [patch_nce(q[i * 5:(i + 1) * 5], k[i * 5:(i + 1) * 5], 1) for i in range(2)]
    assert patch_nce(q, k, batch_size=2).item() == pytest.approx(torch.stack(per_image).mean().item(), rel=1e-6)


def test_patch_nce_matching_features_score_far_below_random() -> None:
    torch.manual_seed(0)
    q = F.normalize(torch.randn(64, 32), dim=1)
    same = patch_nce(q, q.clone(), batch_size=1).item()
    random = patch_nce(q, F.normalize(torch.randn(64, 32), dim=1), batch_size=1).item()
    assert same < 0.05 and random > math.log(64) and same < random / 50


def test_patch_nce_trains_queries_not_keys() -> None:
    q = F.normalize(torch.randn(6, 4), dim=1).requires_grad_()
    k = F.normalize(torch.randn(6, 4), dim=1).requires_grad_()
    patch_nce(q, k, batch_size=2).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0 and k.grad is None


# ----- generator taps and F -------------------------------------------------------------------
def test_taps_have_the_expected_shapes_and_plain_forward_is_unchanged() -> None:
    torch.manual_seed(0)
    g = ResnetGenerator(ngf=8, n_blocks=2).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = g(x, LAYERS)
        assert [tuple(f.shape) for f in feats] == [(2, 3, 38, 38), (2, 16, 16, 16), (2, 32, 8, 8),
                                                   (2, 32, 8, 8), (2, 32, 8, 8)]
        for i, f in zip(LAYERS, feats):
            assert torch.equal(f, g.model[: i + 1](x))
        assert torch.equal(g(x), g.model(x)) and torch.equal(g(x, ()), g.model(x))
        assert g(x).shape == x.shape
        # A norm output followed by an in-place ReLU is kept as the norm produced it.
        norm_out = g(x, (2, 4))[0]
        assert torch.equal(norm_out, g.model[:3](x)) and (norm_out < 0).any()
    with pytest.raises(ValueError, match="out of range"):
        g(x, (len(g.model),))


@pytest.mark.parametrize("arch", [ResnetArch(ngf=8, n_blocks=2), ResnetArch(in_channels=4, ngf=6, n_blocks=3),
                                  ResnetArch(ngf=8, n_blocks=2, mask=True)])
def test_f_channels_match_the_taps(arch: ResnetArch) -> None:
    layers = tuple(range(10 + arch.n_blocks))  # every encoder child
    g = ResnetGenerator(arch)
    with torch.no_grad():
        feats = g(torch.randn(1, arch.in_channels, 16, 16), layers)
    assert tap_channels(arch, layers) == [f.shape[1] for f in feats]
    head = PatchHead(tap_channels(arch, layers), width=8)
    assert [mlp[0].in_features for mlp in head.mlps] == [f.shape[1] for f in feats]
    with pytest.raises(UserError, match="not an encoder layer"):
        tap_channels(arch, (10 + arch.n_blocks,))


def test_cut_builds_f_eagerly_from_its_config() -> None:
    cut = CUT(CUTConfig(ngf=8, n_blocks=2, nce_layers=LAYERS, f_width=16))
    head = cut.networks()["F"]
    assert [mlp[0].in_features for mlp in head.mlps] == [3, 16, 32, 32, 32]
    assert sum(p.numel() for p in head.parameters()) > 0
    assert sorted(cut.networks()) == ["D_B", "F", "G_AB"]
    assert [(p.name, p.nets) for p in cut.phases()] == [("G", ("G_AB", "F")), ("D", ("D_B",))]
    with pytest.raises(UserError, match="not an encoder layer"):
        CUT(CUTConfig(ngf=8, n_blocks=2))  # the default taps reach block 5


def test_two_scale_discriminator_scores_both_scales_in_cut() -> None:
    """With `d_scales=2` the GAN terms average D_B's full- and half-size maps."""
    torch.manual_seed(0)
    cut = CUT(CUTConfig(ngf=8, ndf=8, n_blocks=2, n_layers_d=2, nce_layers=LAYERS, f_width=16,
                        crop_size=32, d_scales=2))
    d = cut.networks()["D_B"]
    gen = torch.Generator().manual_seed(0)
    batch = {k: torch.rand(1, 3, 32, 32, generator=gen) * 2 - 1 for k in ("A", "B")}
    _, g_terms = cut.loss("G", batch)
    _, d_terms = cut.loss("D", batch)
    fine, coarse = d(batch["B"])
    assert coarse.shape[-1] < fine.shape[-1]
    want = 0.5 * (cut.gan(fine, True) + cut.gan(coarse, True)) / 2
    assert d_terms["D_real"].item() == pytest.approx(want.item(), rel=1e-5)
    assert g_terms["G_GAN"].item() > 0


def test_relativistic_gan_terms_in_cut() -> None:
    """With `gan_mode=ralsgan` G_GAN scores the translation against D_B's logits on the real B
    images, and the judge's two terms pair real B with that translation."""
    from imgtrans.nn import GANLoss

    torch.manual_seed(0)
    cut = CUT(CUTConfig(ngf=8, ndf=8, n_blocks=2, n_layers_d=2, nce_layers=LAYERS, f_width=16,
                        crop_size=32, gan_mode="ralsgan", nce_idt=False, flip_equivariance=False))
    gen = torch.Generator().manual_seed(0)
    batch = {k: torch.rand(1, 3, 32, 32, generator=gen) * 2 - 1 for k in ("A", "B")}
    _, g_terms = cut.loss("G", batch)
    _, d_terms = cut.loss("D", batch)
    n, gan = cut.networks(), GANLoss("ralsgan")
    with torch.no_grad():
        fake, real = n["D_B"](n["G_AB"](batch["A"])), n["D_B"](batch["B"])
    assert g_terms["G_GAN"].item() == pytest.approx(gan.fool(fake, real).item(), rel=1e-5)
    on_real, on_fake = gan.judge(real, fake)
    assert d_terms["D_real"].item() == pytest.approx(0.5 * on_real.item(), rel=1e-5)
    assert d_terms["D_fake"].item() == pytest.approx(0.5 * on_fake.item(), rel=1e-5)


def test_feature_matching_term_in_cut() -> None:
    """With `lambda_fm` G gains G_FM: lambda_fm x feature_matching of D_B's hidden features of the
    translation against those of the real B images; G_GAN is unchanged."""
    from imgtrans.nn import GANLoss
    from imgtrans.nn.losses import feature_matching

    torch.manual_seed(0)
    cut = CUT(CUTConfig(ngf=8, ndf=8, n_blocks=2, n_layers_d=2, nce_layers=LAYERS, f_width=16,
                        crop_size=32, lambda_fm=2.0, nce_idt=False, flip_equivariance=False))
    gen = torch.Generator().manual_seed(0)
    batch = {k: torch.rand(1, 3, 32, 32, generator=gen) * 2 - 1 for k in ("A", "B")}
    total, g_terms = cut.loss("G", batch)
    n = cut.networks()
    with torch.no_grad():
        pred, fake = n["D_B"](n["G_AB"](batch["A"]), features=True)
        want = 2.0 * feature_matching(fake, n["D_B"](batch["B"], features=True)[1])
    assert want.item() > 0 and g_terms["G_FM"].item() == pytest.approx(want.item(), rel=1e-5)
    assert g_terms["G_GAN"].item() == pytest.approx(GANLoss("lsgan")(pred, True).item(), rel=1e-5)
    assert total.item() == pytest.approx(sum(v.item() for v in g_terms.values()), rel=1e-5)


def test_r1_penalty_joins_the_judges_loss_in_cut() -> None:
    """With `r1_gamma` D_B's loss gains gamma / 2 * R1 on the real B images, and its gradient."""
    from imgtrans.nn.losses import r1_penalty

    gen = torch.Generator().manual_seed(0)
    batch = {k: torch.rand(1, 3, 32, 32, generator=gen) * 2 - 1 for k in ("A", "B")}
    grads = {}
    for gamma in (0.0, 6.0):
        torch.manual_seed(0)
        cut = CUT(CUTConfig(ngf=8, ndf=8, n_blocks=2, n_layers_d=2, nce_layers=LAYERS, f_width=16,
                            crop_size=32, r1_gamma=gamma))
        cut.loss("G", batch)
        total, terms = cut.loss("D", batch)
        total.backward()
        grads[gamma] = cut.networks()["D_B"].model[0].weight.grad.clone()
    real = batch["B"].clone().requires_grad_(True)
    want = 3.0 * r1_penalty(cut.networks()["D_B"](real), real)
    assert terms["r1"].item() == pytest.approx(want.item(), rel=1e-5) and want.item() > 0
    assert total.item() == pytest.approx(sum(v.item() for v in terms.values()), rel=1e-5)
    assert not torch.allclose(grads[0.0], grads[6.0])


def test_patch_head_samples_shared_positions_as_unit_vectors() -> None:
    torch.manual_seed(0)
    feats = [torch.randn(2, 3, 6, 6), torch.randn(2, 5, 2, 2)]
    ids = sample_patch_ids(feats, 10)
    assert [len(i) for i in ids] == [10, 4] and len(set(ids[0].tolist())) == 10
    head = PatchHead([3, 5], width=7)
    out = head(feats, ids)
    assert [tuple(o.shape) for o in out] == [(20, 7), (8, 7)]
    assert torch.allclose(out[0].norm(dim=1), torch.ones(20))
    # Row (image b, patch p) is F of the feature vector at position ids[p] of image b.
    b, p = 1, 3
    pos = int(ids[0][p])
    vec = feats[0][b, :, pos // 6, pos % 6]
    assert torch.allclose(out[0][b * 10 + p], F.normalize(head.mlps[0](vec), dim=0), atol=1e-6)


# ----- config -------------------------------------------------------------------------------
def test_fast_preset_is_written_into_the_config() -> None:
    sections = merge(default_sections("cut"), {"fast": "true", "n_blocks": 6})
    model = sections["model"]
    assert (model.fast, model.lambda_nce, model.nce_idt, model.flip_equivariance) == (True, 10.0, False, True)
    assert (CUTConfig().lambda_nce, CUTConfig().nce_idt, CUTConfig().flip_equivariance) == (1.0, True, False)
    # Resuming a FastCUT run re-reads the saved values unchanged.
    again = merge(default_sections("cut"), {"model": json.loads(json.dumps(sections["model"].__dict__))})
    assert again["model"] == model
    with pytest.raises(UserError, match="fast=true sets lambda_nce=10"):
        merge(sections, {"lambda_nce": 5})


# ----- training -----------------------------------------------------------------------------
def request(a: Path, b: Path, out: Path, **values: Any) -> RunRequest:
    merged = {**TINY_CUT, "model.a": str(a), "model.b": str(b), **values}
    return RunRequest(objective="cut", values=merged, out=str(out), quiet=True)


def test_cli_trains_and_its_export_translates(domains: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = domains
    sets = [x for k, v in TINY_CUT.items() for x in ("--set", f"{k}={v}")]
    code = run_cli(["train", "cut", "--a", str(a), "--b", str(b), "--out", str(tmp_path / "runs"),
                    "--steps", "4", *sets, "-q"])
    assert code == 0
    run_dir = next((tmp_path / "runs").iterdir())
    assert run_dir.name == "00000-cut-data"
    stats = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    losses = {k: v for k, v in stats[-1].items() if k.startswith("loss/")}
    assert set(losses) == {"loss/G_GAN", "loss/NCE", "loss/NCE_Y", "loss/D_real", "loss/D_fake"}
    assert all(math.isfinite(v) for s in stats for k, v in s.items() if k.startswith("loss/"))
    assert sorted(p.name for p in (run_dir / "export").iterdir()) == ["AtoB.json", "AtoB.safetensors"]
    state, meta = load_export(run_dir / "export" / "AtoB.safetensors")
    assert (meta["objective"], meta["network"], meta["direction"], meta["train_size"]) == \
        ("cut", "resnet_generator", "AtoB", 36)
    assert meta["arch"]["ngf"] == 8 and meta["data"] == {"a": str(a), "b": str(b)}
    ckpt = load_checkpoint(latest_checkpoint(run_dir))["nets"]["G_AB"]
    assert all(torch.equal(state[k], ckpt[k]) for k in state)

    out = tmp_path / "translated"
    assert run_cli(["translate", str(a), str(out), "--weights", str(run_dir), "-q"]) == 0
    assert len(list(out.iterdir())) == len(list(a.iterdir()))
    # The export file, a checkpoint and eval's direction discovery all see the one generator.
    assert load_generator(run_dir / "export" / "AtoB.safetensors").meta["objective"] == "cut"
    assert load_generator(latest_checkpoint(run_dir)).meta["objective"] == "cut"
    found, missing = load_directions(run_dir, None)
    assert list(found) == ["AtoB"] and "BtoA" in missing


def final_nets(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    return load_checkpoint(latest_checkpoint(run_dir))["nets"]


@pytest.mark.parametrize(("fast", "d_augment"), [(False, ""), (True, ""), (False, "color,translation,cutout")])
def test_resume_matches_uninterrupted_run(domains: tuple[Path, Path], tmp_path: Path, fast: bool,
                                          d_augment: str) -> None:
    """4 steps straight == 2, stop, resume, 2 (patch ids, flips and DiffAugment draws restored)."""
    a, b = domains
    cfg = {"train.steps": 4, "train.deterministic": True, "model.fast": fast, "model.d_augment": d_augment}
    straight = run(request(a, b, tmp_path / "one", **cfg))
    first = run(RunRequest(**{**request(a, b, tmp_path / "two", **cfg).__dict__, "until": 2}))
    resumed = run(RunRequest(objective="cut", values={}, resume=str(first), quiet=True))
    x, y = final_nets(straight), final_nets(resumed)
    assert x.keys() == y.keys() == {"G_AB", "D_B", "F"}
    for net in x:
        for k in x[net]:
            assert (x[net][k] - y[net][k]).abs().max().item() <= 1e-6, f"{net}.{k}"
    s1 = [json.loads(line) for line in (straight / "stats.jsonl").read_text().splitlines()]
    s2 = [json.loads(line) for line in (resumed / "stats.jsonl").read_text().splitlines()]
    assert [s["loss/NCE"] for s in s1] == pytest.approx([s["loss/NCE"] for s in s2])
    assert ("loss/NCE_Y" in s1[-1]) == (not fast)
