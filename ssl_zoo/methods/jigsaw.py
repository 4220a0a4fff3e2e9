"""Jigsaw: Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles (Noroozi & Favaro
2016).

    P = hamming_permutations(N)                      # N permutations of 9 tiles, far apart (Algorithm 1)
    for x in loader:                                 # one view [B, C, S, S]
        tiles = 3x3 grid of cells; in each cell a tile a little smaller than the cell at a random place
        tiles = standardize(tiles)                   # each tile to zero mean, unit std
        y ~ U{0..N-1};  shuffled = tiles[P[y]]       # position j shows original tile P[y][j]
        h = f(shuffled)                              # shared encoder on every tile: [B, 9, D]
        loss = CE(c(cat(g(h_1), ..., g(h_9))), y)    # per-tile fc, concatenated, classified over N

Recipe (ImageNet, the paper): a 225 px crop cut into 75 px cells, a random 64 px tile in each (the gap
keeps edges from being matched), N = 1000 permutations of maximal Hamming distance, AlexNet per tile up
to a 512-d fc6, concatenated into fc7 (4096) and fc8 (N); SGD, batch 256, lr 0.01, 350k iterations; the
paper also greys 30% of the images and jitters the colour channels by 0-2 px. Deviations: the encoder is
the configured convolutional backbone on tiles at their native size (9 px at 32 px images); the greying
and channel jitter are left to the augmentation config; fc7 is Linear-BN-ReLU where AlexNet's (and the
PyTorch port bbrattoli/JigsawPuzzlePytorch's) fc6 and fc7 are Linear-ReLU-dropout 0.5. The permutation
set is computed once from ``permutation_seed`` and kept as a buffer (it is in the checkpoint). The probe
reads the encoder on the whole view (a second, gradient-free pass), since that is what evaluation feeds
it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssl_zoo.backbones.config import VITS
from ssl_zoo.errors import check
from ssl_zoo.heads import MLP
from ssl_zoo.methods.base import Method, MethodConfig, StepOutput
from ssl_zoo.transforms.patches import crop_patches, hamming_permutations, standardize_patches

GRID = 3
TILES = GRID * GRID


def check_convolutional(cfg, method: str) -> None:
    """Patch-based methods feed the encoder patches smaller than the image, which a ViT built for one image
    size cannot take."""
    backbone = cfg.backbone
    vit = backbone.name in VITS or (backbone.name == "timm" and "vit" in str(backbone.get("model_name") or ""))
    check(not vit, "backbone.name", backbone.name, f"a convolutional backbone (e.g. resnet18) for method={method}",
          "its patches are smaller than the image a ViT is built for")


@dataclass
class JigsawConfig(MethodConfig):
    min_views = 1
    name: str = "jigsaw"
    num_permutations: int = 1000
    permutation_seed: int = 0
    tile_fraction: float = 64 / 75      # tile side / cell side: the rest is the gap and the jitter room
    standardize_tiles: bool = True
    tile_dim: int = 512                 # per-tile fc (the paper's fc6)
    hidden_dim: int = 4096              # fc7 on the concatenation

    def validate(self, prefix: str = "method") -> None:
        check(2 <= self.num_permutations <= 362880, f"{prefix}.num_permutations", self.num_permutations,
              "an integer in [2, 9!=362880]")
        check(self.permutation_seed >= 0, f"{prefix}.permutation_seed", self.permutation_seed, "an integer >= 0")
        check(0.0 < self.tile_fraction <= 1.0, f"{prefix}.tile_fraction", self.tile_fraction,
              "a fraction of the cell side in (0, 1]")
        check(self.tile_dim >= 1, f"{prefix}.tile_dim", self.tile_dim, "an integer >= 1")
        check(self.hidden_dim >= 1, f"{prefix}.hidden_dim", self.hidden_dim, "an integer >= 1")


class Jigsaw(Method):
    name = "jigsaw"
    Config = JigsawConfig

    def __init__(self, cfg, num_train: int | None = None):
        check_convolutional(cfg, self.name)
        super().__init__(cfg, num_train)
        hp, size = self.hp, cfg.data.image_size
        self.cell = size // GRID
        self.tile = max(1, round(self.cell * hp.tile_fraction))
        self.register_buffer("permutations", hamming_permutations(hp.num_permutations, TILES, hp.permutation_seed))
        self.tile_head = nn.Sequential(nn.Linear(self.feature_dim, hp.tile_dim), nn.ReLU(inplace=True))
        self.classifier = MLP(TILES * hp.tile_dim, hp.hidden_dim, hp.num_permutations)

    def tiles(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, S, S] -> the 9 tiles in row-major grid order [B, 9, C, t, t]."""
        b, dev = x.shape[0], x.device
        cell, tile = self.cell, self.tile
        spare = x.shape[-1] - GRID * cell  # the grid sits at a random place when S is not a multiple of 3
        origin = torch.randint(0, spare + 1, (b, 2, 1), device=dev)
        grid = torch.arange(GRID, device=dev) * cell
        top = origin[:, 0] + grid.repeat_interleave(GRID) + torch.randint(0, cell - tile + 1, (b, TILES), device=dev)
        left = origin[:, 1] + grid.repeat(GRID) + torch.randint(0, cell - tile + 1, (b, TILES), device=dev)
        return crop_patches(x, top, left, tile)

    def step(self, views, index) -> StepOutput:
        x = views[0]
        b = x.shape[0]
        tiles = self.tiles(x)
        if self.hp.standardize_tiles:
            tiles = standardize_patches(tiles)
        labels = torch.randint(0, self.hp.num_permutations, (b,), device=x.device)
        order = self.permutations[labels]                                          # [B, 9]
        shuffled = tiles[torch.arange(b, device=x.device)[:, None], order]          # [B, 9, C, t, t]
        h = self.backbone(self._format(shuffled.flatten(0, 1)))                      # [9B, D]
        logits = self.classifier(self.tile_head(h).view(b, -1))
        loss = F.cross_entropy(logits, labels)
        with torch.no_grad():
            features = self.backbone(x)
        accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
        return StepOutput(loss, features=features, logs={"permutation_acc": accuracy})
