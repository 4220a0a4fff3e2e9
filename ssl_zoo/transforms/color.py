"""Colour-space conversion on batches: sRGB to CIE L*a*b* (D65), as CMC splits an image into L and ab;
the quantised colour bins that colorization and split-brain autoencoders classify over.

The formulas are the CIE / IEC 61966-2-1 definitions: sRGB values are linearised
(c / 12.92 below 0.04045, ((c + 0.055) / 1.055)^2.4 above), mapped to XYZ with the sRGB D65 matrix,
divided by the D65 white point, and passed through the CIE f(t) (cube root above (6/29)^3, linear
below). L lies in [0, 100]; a and b in about [-86, 98] and [-108, 95] for sRGB colours.

These are data transforms, not layers: no gradient flows through them.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
from torch import Tensor

# sRGB (linear) -> XYZ, D65 reference white (IEC 61966-2-1).
_RGB_TO_XYZ = ((0.4124564, 0.3575761, 0.1804375),
               (0.2126729, 0.7151522, 0.0721750),
               (0.0193339, 0.1191920, 0.9503041))
D65_WHITE = (0.95047, 1.0, 1.08883)
_DELTA = 6.0 / 29.0

# CMC's normalisation of Lab (Tian et al. 2019, official code): centre and half-range of each channel
# over the sRGB gamut, so every channel lies in about [-1, 1].
LAB_MEAN = (50.0, (-86.183 + 98.233) / 2, (-107.857 + 94.478) / 2)
LAB_STD = (50.0, (86.183 + 98.233) / 2, (107.857 + 94.478) / 2)


def _per_channel(values: Sequence[float], like: Tensor) -> Tensor:
    return torch.as_tensor(list(values), dtype=like.dtype, device=like.device).view(1, -1, 1, 1)


@torch.no_grad()
def denormalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Undo ``(x - mean) / std`` per channel: normalised images [B, C, H, W] back to pixels in [0, 1]."""
    return x * _per_channel(std, x) + _per_channel(mean, x)


@torch.no_grad()
def rgb_to_lab(rgb: Tensor) -> Tensor:
    """sRGB in [0, 1], [B, 3, H, W] -> L*a*b* [B, 3, H, W] (L in [0, 100]); values are clamped to [0, 1]
    first, since a resized or jittered image can step slightly outside."""
    if rgb.dim() != 4 or rgb.shape[1] != 3:
        raise ValueError(f"rgb_to_lab expects [B, 3, H, W] RGB images, got shape {tuple(rgb.shape)}")
    c = rgb.clamp(0.0, 1.0)
    linear = torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    matrix = torch.as_tensor(_RGB_TO_XYZ, dtype=c.dtype, device=c.device)
    xyz = torch.einsum("ij,bjhw->bihw", matrix, linear) / _per_channel(D65_WHITE, c)
    f = torch.where(xyz > _DELTA ** 3, xyz.clamp_min(1e-12) ** (1.0 / 3.0), xyz / (3 * _DELTA ** 2) + 4.0 / 29.0)
    fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)


def scaled_lab(lab: Tensor) -> Tensor:
    """L*a*b* [B, 3, H, W] normalised as CMC does (``LAB_MEAN``/``LAB_STD``): each channel in about [-1, 1]."""
    return (lab - _per_channel(LAB_MEAN, lab)) / _per_channel(LAB_STD, lab)


@torch.no_grad()
def normalized_rgb_to_lab(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Data-normalised RGB batches (``cfg.data.mean``/``std``) -> Lab normalised as CMC does (each channel
    in about [-1, 1]): [B, 3, H, W] -> [B, 3, H, W] in float32 or wider; channel 0 is L, channels 1-2 are ab."""
    return scaled_lab(normalized_to_lab(x, mean, std))


# --- Lab of any data set, and the quantised colour bins of colorization (Zhang et al. 2016, 2017) ---------


@torch.no_grad()
def normalized_to_lab(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Data-normalised RGB images [B, 3, H, W] -> unnormalised L*a*b* [B, 3, H, W] (grey data never gets
    here: the colour methods declare ``needs_colour`` and the config check refuses 1-channel data).
    Computed in float32 (float64 stays float64) even under autocast (bf16 would round a and b by up to
    ~0.5, a twentieth of a colour bin)."""
    with torch.autocast(x.device.type, enabled=False):
        return rgb_to_lab(denormalize(x.to(torch.promote_types(x.dtype, torch.float32)), mean, std))


@lru_cache(maxsize=8)
def _ab_bins(grid: float, levels: int) -> Tensor:
    v = torch.linspace(0.0, 1.0, levels, dtype=torch.float64)
    rgb = torch.stack(torch.meshgrid(v, v, v, indexing="ij")).reshape(1, 3, -1, 1)
    ab = rgb_to_lab(rgb)[0, 1:, :, 0]                     # [2, levels^3]
    cells = torch.unique(torch.round(ab / grid), dim=1)   # sorted by a, then b
    return (cells.t() * grid).float()


def ab_bins(grid: float = 10.0, levels: int = 64) -> Tensor:
    """Centres [Q, 2] of the ab cells of side ``grid`` that hold at least one sRGB colour.

    Zhang et al. (2016) quantise ab with a grid of 10 and keep the Q = 313 in-gamut cells of their own
    gamut test; here the gamut is sampled on a ``levels``^3 grid of the sRGB cube and a cell is kept
    when some colour rounds to its centre (multiples of ``grid``), which gives Q = 261 at grid 10.
    A new tensor each call (the cached one is never handed out)."""
    return _ab_bins(float(grid), int(levels)).clone()


def soft_encode(values: Tensor, centres: Tensor, k: int = 5, sigma: float = 5.0) -> tuple[Tensor, Tensor]:
    """Soft-encoding of Zhang et al. (2016), sec. 2.1: each value's ``k`` nearest bin centres, weighted by a
    Gaussian of the distance (``sigma``) and summing to 1.

    ``values`` [N, D], ``centres`` [Q, D] -> ``(targets [N, Q], nearest [N])``: the soft targets and each
    value's nearest bin (the hard label, used by class rebalancing)."""
    distances = torch.cdist(values.float(), centres.float())           # [N, Q]
    k = min(k, centres.shape[0])
    near_d, near_i = distances.topk(k, dim=1, largest=False)            # ascending distance
    weights = torch.softmax(-near_d.pow(2) / (2 * sigma ** 2), dim=1)
    targets = torch.zeros_like(distances).scatter_(1, near_i, weights)
    return targets, near_i[:, 0]


def quantize(values: Tensor, low: float, high: float, bins: int) -> Tensor:
    """Bin index of each value in ``bins`` equal cells over [low, high] (values outside go to the ends)."""
    index = torch.floor((values - low) / (high - low) * bins).long()
    return index.clamp_(0, bins - 1)
