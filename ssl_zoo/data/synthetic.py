"""A small procedurally generated labelled image set: fast, offline, and learnable.

Class ``k`` of ``K`` is a sinusoidal grating whose orientation is ``90 * k / (K - 1)`` degrees: the
orientation is the only class cue. Orientations stay in [0, 90] so a horizontal flip (which maps an
angle a to 180 - a) never turns one class into another, and the usual augmentations (crops, flips,
colour jitter, grey, blur) keep it. Every image also carries nuisances that dominate a pixel-space
comparison but that an augmentation-invariant representation learns to ignore: a random colour (with
3 channels), frequency (2.5 to 5.5 cycles per image), phase, contrast and background level, orientation
jitter of a quarter of the class spacing, an occluding disc of random colour, size and position, and
Gaussian pixel noise. So a randomly initialised encoder is far from perfect on kNN while a trained one
can separate the classes. Use K <= 10: RandomResizedCrop's aspect-ratio change bends angles by up to
about 8 degrees.

Everything is a pure function of (seed, split, num_samples, num_classes, image_size, channels).
"""

from __future__ import annotations

import colorsys

import numpy as np

SPLITS = {"train": 0, "test": 1}
_CHUNK = 256  # images generated at once: bounds memory at [256, H, W, C] float32 whatever the size


def make_synthetic(num_samples: int, num_classes: int, image_size: int, channels: int, seed: int = 0,
                   split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, S, S] (channels=1) or [N, S, S, 3] and int64 labels [N], balanced over classes.

    ``split`` ("train" or "test") draws from an independent stream of the same seed, so the test
    images are new samples of the same classes.
    """
    rng = np.random.default_rng([seed, SPLITS[split]])
    labels = rng.permutation(np.arange(num_samples) % num_classes).astype(np.int64)
    spacing = (np.pi / 2) / max(num_classes - 1, 1)
    angle = labels * spacing + rng.uniform(-spacing / 4, spacing / 4, num_samples)
    cycles = rng.uniform(2.5, 5.5, num_samples)
    phase = rng.uniform(0, 2 * np.pi, num_samples)
    contrast = rng.uniform(0.6, 1.0, num_samples)
    background = rng.uniform(0.0, 0.3, num_samples)
    disc_centre = rng.uniform(-0.5, 0.5, (num_samples, 2))
    disc_radius = rng.uniform(0.1, 0.3, num_samples)
    disc_colour = rng.uniform(0.0, 1.0, (num_samples, 3))
    hue = rng.uniform(0.0, 1.0, num_samples)
    noise_seed = int(rng.integers(2**63))

    grid = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size - 0.5  # pixel centres in [-0.5, 0.5]
    y, x = np.meshgrid(grid, grid, indexing="ij")
    colours = np.array([colorsys.hsv_to_rgb(h, 0.7, 1.0) for h in hue], np.float32)  # [N, 3]
    out = np.empty((num_samples, image_size, image_size, 3), dtype=np.uint8)
    noise_rng = np.random.default_rng(noise_seed)
    for start in range(0, num_samples, _CHUNK):
        s = slice(start, min(start + _CHUNK, num_samples))
        n = s.stop - s.start

        def per(v: np.ndarray, s: slice = s) -> np.ndarray:
            return v[s].astype(np.float32)[:, None, None]

        along = x * per(np.cos(angle)) + y * per(np.sin(angle))
        wave = 0.5 + 0.5 * per(contrast) * np.sin(2 * np.pi * per(cycles) * along + per(phase))  # [n, S, S]
        tint = colours[s][:, None, None, :] if channels == 3 else np.ones((n, 1, 1, 3), np.float32)
        bg = per(background)[..., None]
        img = bg + wave[..., None] * (tint - bg)
        inside = (x - per(disc_centre[:, 0])) ** 2 + (y - per(disc_centre[:, 1])) ** 2 < per(disc_radius) ** 2
        disc = disc_colour[s].astype(np.float32)[:, None, None, :]
        if channels == 1:
            disc = disc.mean(-1, keepdims=True).repeat(3, -1)
        img = np.where(inside[..., None], disc, img)
        img = img + noise_rng.normal(0.0, 0.06, img.shape).astype(np.float32)
        out[s] = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    return (out[..., 0].copy() if channels == 1 else out), labels
