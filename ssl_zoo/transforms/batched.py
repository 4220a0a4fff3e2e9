"""Batched view generation on the device: a whole uint8 batch becomes its views in a few tensor ops.

The per-image PIL pipeline costs ~3 ms per view on a CPU core, as much as a small ResNet's step on
32 px images; here the crops of the whole batch are one ``roi_align`` resampling, and jitter, grey,
blur and solarize are vectorised with per-sample random parameters. It runs wherever the batch is
(CPU or GPU), after the loader, so workers only copy uint8 arrays.

Each sample's parameters come from a generator seeded with its item seed (a hash of seed, epoch and
dataset index), so views stay a pure function of (seed, epoch, index) as with the PIL path.

Deviations from torchvision's transforms, all small and documented here: the colour-jitter operations
run in a fixed order (brightness, contrast, saturation, hue) instead of a random permutation; hue is a
rotation in YIQ space instead of an HSV shift; equalize is not available (a one-line error says so).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

from ssl_zoo.errors import check
from ssl_zoo.transforms.config import AugmentationConfig, CropGroupConfig
from ssl_zoo.transforms.views import blur_kernel_size

_GREY = (0.299, 0.587, 0.114)
_ATTEMPTS = 10
# uniforms per view: crop (3 x attempts), flip, jitter gate + 4 factors, grey, blur gate + sigma, solarize
_NUM_UNIFORMS = 3 * _ATTEMPTS + 10


def per_sample_uniforms(seeds: Sequence[int], num: int) -> Tensor:
    """[B, num] uniforms in [0, 1), row i drawn from a generator seeded with ``seeds[i]``."""
    g = torch.Generator()
    rows = []
    for s in seeds:
        g.manual_seed(int(s))
        rows.append(torch.rand(num, generator=g, dtype=torch.float64))
    return torch.stack(rows)


def crop_boxes(u: Tensor, height: int, width: int, scale: Sequence[float], ratio: Sequence[float]) -> Tensor:
    """RandomResizedCrop's boxes [B, 4] (x1, y1, x2, y2) from uniforms ``u`` [B, 3 * attempts].

    As torchvision: up to ten (area, aspect) draws, the first crop that fits wins; when none fits, the
    whole image cropped to the nearest allowed aspect ratio, centred.
    """
    area = height * width
    u_area, u_ratio, u_pos = u[:, :_ATTEMPTS], u[:, _ATTEMPTS:2 * _ATTEMPTS], u[:, 2 * _ATTEMPTS:]
    target = area * (scale[0] + (scale[1] - scale[0]) * u_area)
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u_ratio
    aspect = torch.exp(log_r)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = torch.where(fits.any(1), fits.float().argmax(1), torch.full_like(fits[:, 0], -1, dtype=torch.long))
    rows = torch.arange(len(u))
    w_sel, h_sel, u_sel = w[rows, first.clamp(min=0)], h[rows, first.clamp(min=0)], u_pos[rows, first.clamp(min=0)]
    left = torch.floor(u_sel * (width - w_sel + 1))
    # the second positional draw uses the next attempt's slot, so top and left are independent
    u_top = u_pos[rows, (first.clamp(min=0) + 1) % _ATTEMPTS]
    top = torch.floor(u_top * (height - h_sel + 1))
    # fallback: centre crop with the aspect ratio clamped to the allowed range
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fw, fh = round(height * max(ratio)), height
    else:
        fw, fh = width, height
    none = first < 0
    w_sel = torch.where(none, torch.full_like(w_sel, fw), w_sel)
    h_sel = torch.where(none, torch.full_like(h_sel, fh), h_sel)
    left = torch.where(none, torch.full_like(left, (width - fw) // 2), left)
    top = torch.where(none, torch.full_like(top, (height - fh) // 2), top)
    return torch.stack([left, top, left + w_sel, top + h_sel], dim=1)


def _grey(x: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    w = torch.tensor(_GREY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    return (other + factor.view(-1, 1, 1, 1) * (x - other)).clamp(0, 1)


def _rotate_hue(x: Tensor, turns: Tensor) -> Tensor:
    """Hue rotation by ``turns`` (in [-0.5, 0.5]) of a full circle, as a rotation of the IQ plane of YIQ."""
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                          device=x.device, dtype=x.dtype)
    yiq = torch.einsum("ij,bjhw->bihw", to_yiq, x)
    angle = 2 * math.pi * turns.view(-1, 1, 1)
    cos, sin = torch.cos(angle), torch.sin(angle)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], dim=1)
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(to_yiq), yiq).clamp(0, 1)


def _gaussian_blur(x: Tensor, sigma: Tensor, apply: Tensor, kernel_size: int) -> Tensor:
    """Per-sample Gaussian blur (separable, reflect padding); samples with ``apply`` False stay as they are."""
    b, c, h, w = x.shape
    radius = kernel_size // 2
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-(t.view(1, -1) ** 2) / (2 * sigma.view(-1, 1) ** 2))
    kernel = kernel / kernel.sum(1, keepdim=True)
    identity = (t == 0).to(x.dtype).expand_as(kernel)
    kernel = torch.where(apply.view(-1, 1), kernel, identity).repeat_interleave(c, dim=0)  # [B*C, k]
    y = F.pad(x.reshape(1, b * c, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, kernel.view(b * c, 1, kernel_size, 1), groups=b * c)
    y = F.conv2d(y, kernel.view(b * c, 1, 1, kernel_size), groups=b * c)
    return y.view(b, c, h, w)


class BatchedViews:
    """The views of a whole batch: uint8 images [B, C, H, W] and item seeds [B] -> list of [B, C, S, S]."""

    def __init__(self, cfg: AugmentationConfig, image_size: int, mean: Sequence[float], std: Sequence[float],
                 channels: int = 3):
        for i, group in enumerate(cfg.crops):
            check(group.equalize_prob == 0, f"augmentation.crops[{i}].equalize_prob", group.equalize_prob,
                  "0 with augmentation.backend=batched", "or use augmentation.backend=pil")
        self.groups: list[tuple[CropGroupConfig, int]] = [(g, g.resolve_size(image_size)) for g in cfg.crops]
        self.mean, self.std, self.channels = list(mean), list(std), channels

    @property
    def num_views(self) -> int:
        return sum(g.num for g, _ in self.groups)

    def __call__(self, images: Tensor, seeds: Sequence[int]) -> list[Tensor]:
        x = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
        u_all = per_sample_uniforms(seeds, _NUM_UNIFORMS * self.num_views).to(x.device)
        views, v = [], 0
        for group, size in self.groups:
            for _ in range(group.num):
                u = u_all[:, v * _NUM_UNIFORMS:(v + 1) * _NUM_UNIFORMS]
                views.append(self.view(x, u, group, size))
                v += 1
        return views

    def view(self, x: Tensor, u: Tensor, g: CropGroupConfig, size: int) -> Tensor:
        b, c, h, w = x.shape
        boxes = crop_boxes(u[:, :3 * _ATTEMPTS].cpu(), h, w, g.scale, g.ratio).to(x.device, x.dtype)
        rois = torch.cat([torch.arange(b, device=x.device, dtype=x.dtype).view(-1, 1), boxes], dim=1)
        # adaptive sampling: ceil(box / output) points per output pixel, so 1:1 crops are exact and
        # downscaled ones are averaged (antialiased)
        y = roi_align(x, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
        u = u[:, 3 * _ATTEMPTS:].to(x.dtype)
        flip = u[:, 0] < g.hflip_prob
        y = torch.where(flip.view(-1, 1, 1, 1), y.flip(-1), y)
        jitter = u[:, 1] < g.color_jitter_prob
        ones = torch.ones_like(u[:, 0])

        def factor(value: float, uniform: Tensor) -> Tensor:
            return torch.where(jitter, 1 - value + 2 * value * uniform, ones).clamp(min=0)

        if g.color_jitter_prob > 0:
            y = _blend(y, torch.zeros_like(y), factor(g.brightness, u[:, 2]))
            y = _blend(y, _grey(y).mean(dim=(1, 2, 3), keepdim=True), factor(g.contrast, u[:, 3]))
            if c == 3 and g.saturation > 0:
                y = _blend(y, _grey(y), factor(g.saturation, u[:, 4]))
            if c == 3 and g.hue > 0:
                y = _rotate_hue(y, torch.where(jitter, g.hue * (2 * u[:, 5] - 1), torch.zeros_like(ones)))
        if c == 3 and g.grayscale_prob > 0:
            y = torch.where((u[:, 6] < g.grayscale_prob).view(-1, 1, 1, 1), _grey(y).expand_as(y), y)
        if g.blur_prob > 0:
            k = min(blur_kernel_size(size, g.blur_kernel_frac), size - 1 if size % 2 == 0 else size)
            sigma = g.blur_sigma[0] + (g.blur_sigma[1] - g.blur_sigma[0]) * u[:, 8]
            y = _gaussian_blur(y, sigma, u[:, 7] < g.blur_prob, k)
        if g.solarize_prob > 0:
            sol = (u[:, 9] < g.solarize_prob).view(-1, 1, 1, 1) & (y >= g.solarize_threshold)
            y = torch.where(sol, 1 - y, y)
        mean = torch.tensor(self.mean, device=y.device, dtype=y.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=y.device, dtype=y.dtype).view(1, -1, 1, 1)
        return (y - mean) / std


class RawImage:
    """The loader side of the batched path: PIL image -> [uint8 tensor [C, H, W]] (one "view")."""

    def __init__(self, channels: int):
        self.mode = "L" if channels == 1 else "RGB"

    def __call__(self, img) -> list[Tensor]:
        img = img.convert(self.mode) if img.mode != self.mode else img
        array = np.array(img, dtype=np.uint8)  # a writable copy: torch refuses to wrap read-only buffers
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        return [torch.from_numpy(np.ascontiguousarray(array))]
