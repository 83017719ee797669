"""CUT's PatchNCE pieces: patch sampling, the per-layer MLP projection head F, and the InfoNCE loss."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def sample_patch_ids(feats: Sequence[torch.Tensor], num_patches: int) -> list[torch.Tensor]:
    """Per feature map, `num_patches` distinct spatial positions (all of them if the map is smaller).

    Drawn with torch's global CPU generator, so a run's patch choice is saved with its RNG state
    and does not depend on the device. One set per layer, shared by every image of the batch.
    """
    out = []
    for feat in feats:
        positions = feat.shape[2] * feat.shape[3]
        ids = torch.randperm(positions)[: min(num_patches, positions)]
        out.append(ids.to(feat.device, non_blocking=True))
    return out


class PatchHead(nn.Module):
    """F: one small MLP per tapped layer, mapping sampled patch features to unit-length embeddings.

    `forward(feats, patch_ids)` takes feature maps (B, C_l, H_l, W_l) and, per layer, the flat
    positions to keep; it returns per layer a (B * P_l, width) tensor, image-major (all patches
    of image 0, then image 1, ...), each row L2-normalised.
    """

    def __init__(self, channels: Sequence[int], width: int = 256) -> None:
        super().__init__()
        self.channels, self.width = tuple(channels), width
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(c, width), nn.ReLU(), nn.Linear(width, width)) for c in self.channels
        )

    def forward(self, feats: Sequence[torch.Tensor], patch_ids: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if not len(feats) == len(patch_ids) == len(self.mlps):
            raise ValueError(f"PatchHead has {len(self.mlps)} layers; got {len(feats)} feature maps "
                             f"and {len(patch_ids)} id sets")
        out = []
        for feat, ids, mlp in zip(feats, patch_ids, self.mlps):
            b, c, h, w = feat.shape
            # NHWC rows: a view for channels_last maps, one copy otherwise.
            rows = feat.permute(0, 2, 3, 1).reshape(b, h * w, c)[:, ids].reshape(-1, c)
            out.append(F.normalize(mlp(rows), dim=1))
        return out


def patch_nce(query: torch.Tensor, key: torch.Tensor, batch_size: int, tau: float = 0.07) -> torch.Tensor:
    """PatchNCE loss (Park et al. 2020, eq. 2-3) for one layer, averaged over patches.

    `query` and `key` are (B * P, D) embeddings from `PatchHead` at the same patch positions:
    query row i comes from the output image, key row i from the input image at the same place.
    Each query is classified among the P keys of its own image: the key at its position is the
    positive, the other P - 1 are negatives (CUT's default; negatives never come from other images
    of the batch). Loss = mean_i -log(exp(q_i.k_i / tau) / sum_j exp(q_i.k_j / tau)).

    Keys are targets: no gradient flows into them. Computed in float32, as the other losses.
    """
    if query.shape != key.shape or query.shape[0] % batch_size:
        raise ValueError(f"query {tuple(query.shape)} and key {tuple(key.shape)} must match and split "
                         f"into {batch_size} images")
    q = query.float().reshape(batch_size, -1, query.shape[1])
    k = key.detach().float().reshape(batch_size, -1, key.shape[1])
    logits = torch.bmm(q, k.transpose(1, 2)) / tau  # [b, i, j] = q_i . k_j; the positive is j == i
    patches = logits.shape[1]
    target = torch.arange(patches, device=logits.device).repeat(batch_size)
    return F.cross_entropy(logits.reshape(-1, patches), target)
