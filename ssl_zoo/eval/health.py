"""Representation health: numbers that reveal a collapsing encoder before the kNN accuracy does.

* RankMe (Garrido et al. 2023, eq. 1): the effective rank exp(H(p)) of the embeddings [N, D], with
  p_k = sigma_k / ||sigma||_1 + eps over the singular values sigma. Between 1 (every embedding on one
  line) and min(N, D); the paper finds it tracks downstream accuracy without labels.
* Alignment and uniformity (Wang & Isola 2020, eqs. 4 and 5) of L2-normalised embeddings: the mean
  squared distance of two views of the same image (lower: more invariant) and the log of the mean
  Gaussian potential over pairs (lower: more uniformly spread on the sphere).
* The per-dimension standard deviation of L2-normalised embeddings, averaged over dimensions (SimSiam,
  Chen & He 2021, sec. 4.1): about 1/sqrt(D) when the embeddings spread over the sphere, 0 at collapse.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_zoo.losses.uniformity import align_loss, uniform_loss


@torch.no_grad()
def rankme(embeddings: Tensor, eps: float = 1e-7) -> float:
    """RankMe effective rank of ``embeddings`` [N, D] (no centring, as in the paper)."""
    sigma = torch.linalg.svdvals(embeddings.double())
    if sigma.sum() <= 0:
        return 1.0  # all zeros: one (degenerate) direction
    p = sigma / sigma.sum() + eps
    return math.exp(-(p * p.log()).sum().item())


@torch.no_grad()
def normalised_std(embeddings: Tensor) -> float:
    """Mean over dimensions of the standard deviation over samples of the L2-normalised ``embeddings``."""
    z = F.normalize(embeddings.double(), dim=1)
    return z.std(dim=0, unbiased=False).mean().item()


@torch.no_grad()
def alignment(view1: Tensor, view2: Tensor) -> float:
    """Wang & Isola's alignment (alpha=2) of two views' embeddings [N, D], normalised here."""
    return align_loss(F.normalize(view1.double(), dim=1), F.normalize(view2.double(), dim=1), alpha=2.0).item()


@torch.no_grad()
def uniformity(embeddings: Tensor, max_points: int = 4096) -> float:
    """Wang & Isola's uniformity (t=2) of ``embeddings`` [N, D] (the first ``max_points``), normalised here."""
    return uniform_loss(F.normalize(embeddings[:max_points].double(), dim=1), t=2.0).item()


def second_view(images: Tensor, keep: float = 0.75) -> Tensor:
    """A deterministic second view of evaluation images [B, C, H, W]: the centre ``keep`` x ``keep`` crop,
    resized back to H x W, flipped horizontally. No random draw, so measuring it leaves every generator
    (and hence an exactly resumed run) untouched."""
    h, w = images.shape[-2:]
    ch, cw = max(1, round(h * keep)), max(1, round(w * keep))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = images[..., top:top + ch, left:left + cw]
    return F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False).flip(-1)


def is_collapsed(std: float, rank: float, dim: int, std_ratio: float, min_rank: float) -> bool:
    """Collapse: the normalised std below ``std_ratio / sqrt(dim)`` or the effective rank below ``min_rank``."""
    return std < std_ratio / math.sqrt(dim) or rank < min_rank
