"""Generative losses: MAE masked patch regression (He et al. 2021), VAE ELBO (Kingma & Welling 2014)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

RECONSTRUCTIONS = ("mse", "bce")


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """Cut images into non-overlapping patches: [B, C, H, W] -> [B, L, p·p·C] with L = (H/p)·(W/p).

    Patches are in row-major order over the grid; inside a patch the values are ordered (row, column,
    channel), channel fastest, as in the MAE reference, so checkpoints' decoders agree on the layout.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be [B, C, H, W], got shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    p = patch_size
    if p < 1 or h % p or w % p:
        raise ValueError(f"patch_size={p} must divide the image height {h} and width {w}")
    x = images.reshape(b, c, h // p, p, w // p, p)
    x = x.permute(0, 2, 4, 3, 5, 1)  # [B, h, w, p, p, C]
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: Tensor, patch_size: int, channels: int,
               grid: tuple[int, int] | None = None) -> Tensor:
    """Inverse of :func:`patchify`: [B, L, p·p·C] -> [B, C, h·p, w·p].

    ``grid`` = (h, w) patches per column and row; when None the grid is square (h = w = √L), as for
    MAE's square images.
    """
    if patches.dim() != 3:
        raise ValueError(f"patches must be [B, L, p*p*C], got shape {tuple(patches.shape)}")
    b, n, dim = patches.shape
    p, c = patch_size, channels
    if dim != p * p * c:
        raise ValueError(f"patch dimension {dim} is not patch_size² · channels = {p * p * c}")
    if grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"{n} patches do not form a square grid: pass grid=(rows, columns)")
        grid = (side, side)
    gh, gw = grid
    if gh * gw != n:
        raise ValueError(f"grid {grid} holds {gh * gw} patches, got {n}")
    x = patches.reshape(b, gh, gw, p, p, c).permute(0, 5, 1, 3, 2, 4)  # [B, C, h, p, w, p]
    return x.reshape(b, c, gh * p, gw * p)


def mae_loss(pred: Tensor, target: Tensor, mask: Tensor, norm_pix: bool = True, eps: float = 1e-6) -> Tensor:
    """MAE reconstruction loss (He et al. 2021, sec. 3): mean squared error on the masked patches only.

    ``pred``, ``target``: [B, L, P] patch predictions and patchified pixels (:func:`patchify`); ``mask``:
    [B, L] with 1 for a masked (removed) patch and 0 for a visible one. With ``norm_pix`` each target
    patch is normalised by its own mean and variance over its P values (unbiased variance, with ``eps``
    added, as in the reference code; P must be ≥ 2). The per-patch mean squared error is averaged over
    the masked patches. The reference divides by the mask's sum and returns NaN when nothing is masked;
    here that case returns 0.
    """
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(f"pred and target must be [B, L, P] of the same shape, got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")
    if mask.shape != pred.shape[:2]:
        raise ValueError(f"mask must be [B, L] = {tuple(pred.shape[:2])}, got {tuple(mask.shape)}")
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / torch.sqrt(var + eps)
    per_patch = (pred - target).pow(2).mean(dim=-1)  # [B, L]
    mask = mask.to(per_patch.dtype)
    return (per_patch * mask).sum() / mask.sum().clamp_min(torch.finfo(per_patch.dtype).tiny)


def vae_loss(recon: Tensor, x: Tensor, mu: Tensor, logvar: Tensor, beta: float = 1.0,
             reconstruction: str = "mse") -> tuple[Tensor, Tensor, Tensor]:
    """Negative ELBO of a VAE (Kingma & Welling 2014, eq. 10), β-weighted KL (Higgins et al. 2017).

    ``recon``, ``x``: [B, ...] decoder output and input; ``mu``, ``logvar``: [B, Z] the encoder's
    Gaussian posterior. Per sample, KL(N(mu, σ²) || N(0, I)) = -½ Σ_z (1 + logvar - mu² - exp(logvar)),
    and the reconstruction term is

    - ``"mse"``: Σ (recon - x)², a Gaussian decoder's negative log-likelihood up to constants (unit
      variance, halving dropped);
    - ``"bce"``: Σ binary cross-entropy of probabilities ``recon`` ∈ [0, 1] against ``x`` ∈ [0, 1]
      (Bernoulli decoder); logs are clamped at -100 as ``F.binary_cross_entropy`` does, so 0 and 1 stay
      finite.

    Returns (total, reconstruction, kl), each summed per sample then averaged over the batch, with
    total = reconstruction + β·kl.
    """
    if reconstruction not in RECONSTRUCTIONS:
        raise ValueError(f"reconstruction={reconstruction!r} is not allowed: expected one of: "
                         f"{', '.join(RECONSTRUCTIONS)}")
    if recon.shape != x.shape:
        raise ValueError(f"recon and x must have the same shape, got {tuple(recon.shape)} "
                         f"and {tuple(x.shape)}")
    if mu.shape != logvar.shape or mu.dim() != 2 or mu.shape[0] != x.shape[0]:
        raise ValueError(f"mu and logvar must be [B, Z] with B={x.shape[0]}, got {tuple(mu.shape)} "
                         f"and {tuple(logvar.shape)}")
    if reconstruction == "mse":
        per_element = (recon - x).pow(2)
    else:
        per_element = F.binary_cross_entropy(recon, x, reduction="none")
    rec = per_element.flatten(1).sum(dim=1).mean()
    kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()
    return rec + beta * kl, rec, kl
