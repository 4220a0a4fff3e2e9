"""Colour-space conversion on batches: sRGB to CIE L*a*b* (D65), as CMC splits an image into L and ab.

The formulas are the CIE / IEC 61966-2-1 definitions: sRGB values are linearised
(c / 12.92 below 0.04045, ((c + 0.055) / 1.055)^2.4 above), mapped to XYZ with the sRGB D65 matrix,
divided by the D65 white point, and passed through the CIE f(t) (cube root above (6/29)^3, linear
below). L lies in [0, 100]; a and b in about [-86, 98] and [-108, 95] for sRGB colours.

These are data transforms, not layers: no gradient flows through them.
"""

from __future__ import annotations

from collections.abc import Sequence

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


@torch.no_grad()
def normalized_rgb_to_lab(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Data-normalised RGB batches (``cfg.data.mean``/``std``) -> Lab normalised as CMC does (each channel
    in about [-1, 1]): [B, 3, H, W] -> [B, 3, H, W]; channel 0 is L, channels 1-2 are ab."""
    lab = rgb_to_lab(denormalize(x, mean, std))
    return (lab - _per_channel(LAB_MEAN, lab)) / _per_channel(LAB_STD, lab)
