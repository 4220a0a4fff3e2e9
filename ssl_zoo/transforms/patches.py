"""Patch-based pretext inputs built on the device from a batch of views: cropping many patches per image,
per-patch standardisation, and the jigsaw permutation set (Noroozi & Favaro 2016).

Randomness comes from torch's global generator (seeded and checkpointed by the training loop), so a
resumed run draws the same patches.
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor


def crop_patches(images: Tensor, top: Tensor, left: Tensor, size: int) -> Tensor:
    """Square patches of side ``size``: images [B, C, H, W], ``top``/``left`` [B, K] (pixel positions of
    each patch's corner, the patch must lie inside the image) -> [B, K, C, size, size]."""
    if top.shape != left.shape or top.dim() != 2 or top.shape[0] != images.shape[0]:
        raise ValueError(f"top and left must be [B, K] with B={images.shape[0]}, got {tuple(top.shape)} "
                         f"and {tuple(left.shape)}")
    h, w = images.shape[-2:]
    if top.min() < 0 or left.min() < 0 or top.max() + size > h or left.max() + size > w:
        raise ValueError(f"patches of side {size} at the given corners leave the {h}x{w} image")
    r = torch.arange(size, device=images.device)
    rows = (top[..., None] + r)[..., :, None]            # [B, K, s, 1]
    cols = (left[..., None] + r)[..., None, :]           # [B, K, 1, s]
    batch = torch.arange(images.shape[0], device=images.device).view(-1, 1, 1, 1)
    patches = images.permute(0, 2, 3, 1)[batch, rows, cols]  # [B, K, s, s, C]
    return patches.permute(0, 1, 4, 2, 3)


def standardize_patches(patches: Tensor, eps: float = 1e-5, per_channel_mean: bool = False) -> Tensor:
    """Each patch [..., C, s, s] to zero mean and unit standard deviation over its own pixels and
    channels, as Noroozi & Favaro (2016) do to each tile, so that tiles cannot be matched by their
    low-level statistics. ``per_channel_mean``: each channel loses its own mean before the patch is
    divided by its RMS, as Doersch et al.'s reference code (``prep_image``) treats each patch."""
    dims = (-3, -2, -1)
    centred = patches - patches.mean(dim=dims[1:] if per_channel_mean else dims, keepdim=True)
    if patches[0].numel() == 1:
        return centred
    return centred / (centred.square().mean(dim=dims, keepdim=True).sqrt() + eps)


def hamming_permutations(count: int, tiles: int = 9, seed: int = 0) -> Tensor:
    """Noroozi & Favaro (2016), Algorithm 1: a set of ``count`` permutations of ``tiles`` elements chosen
    greedily for a large Hamming distance to each other. The first is drawn at random (``seed``); each next
    one is the remaining permutation whose *summed* Hamming distance to the chosen ones is the largest
    (ties: the first in lexicographic order). Returns [count, tiles] (int64, row i is class i).

    Deterministic for a given (count, tiles, seed); computed once per process and cached (a new tensor
    each call). The summed distance to the chosen set is ``tiles · chosen - matches``, and the matches of
    every candidate with a permutation p are ``Σ_i [candidate_i = p_i]``: sums of precomputed indicator
    rows, so a step over all 9! = 362,880 candidates is a few vector additions."""
    return _hamming_permutations(int(count), int(tiles), int(seed)).clone()


@lru_cache(maxsize=8)
def _hamming_permutations(count: int, tiles: int, seed: int) -> Tensor:
    candidates = np.array(list(itertools.permutations(range(tiles))), dtype=np.int8)  # lexicographic
    total = candidates.shape[0]
    if not 1 <= count <= total:
        raise ValueError(f"count={count} must be in [1, {tiles}!={total}]")
    # is_value[i, v, n]: candidate n holds value v at position i
    is_value = candidates.T[:, None, :] == np.arange(tiles, dtype=np.int8)[None, :, None]
    positions = np.arange(tiles)
    first = int(torch.randint(total, (1,), generator=torch.Generator().manual_seed(seed)))
    chosen = [first]
    matches = np.zeros(total, dtype=np.int32)  # summed matches with the chosen set
    taken = np.zeros(total, dtype=bool)
    taken[first] = True
    for _ in range(count - 1):
        matches += is_value[positions, candidates[chosen[-1]]].sum(axis=0, dtype=np.int32)
        # the most summed distance is the fewest summed matches; np.argmin returns the first of ties
        best = int(np.argmin(np.where(taken, np.iinfo(np.int32).max, matches)))
        chosen.append(best)
        taken[best] = True
    return torch.from_numpy(candidates[chosen].astype(np.int64))
