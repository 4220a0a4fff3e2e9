"""PIRL: Self-Supervised Learning of Pretext-Invariant Representations (Misra & van der Maaten 2019).

    for x, i in loader:                                   # N images, i their dataset indices
        v = f(φ(aug(x)))                                  # the image: backbone, linear head -> 128-d
        patches = shuffle(jigsaw(aug'(x)))                # 3 x 3 cells, a random patch in each, shuffled
        vt = g([φ(p) for p in patches])                   # each patch encoded, projected, concatenated in
                                                          # the shuffled order, projected -> 128-d
        m = bank[i]                                       # memory of the untransformed images' v
        loss = λ · nce(vt vs m, bank noise) + (1 - λ) · nce(v vs m, bank noise)      # λ = 0.5
        bank[i] ← normalize(0.5 · bank[i] + 0.5 · v)      # after the loss

NCE is InstDisc's (Wu et al. 2018) on cosine similarities / τ: the positive is the image's own bank
row, the negatives m rows drawn uniformly from the bank, log Z of each of the two terms estimated at
the first step and kept (``ssl_zoo.losses.nce``). Deviation: VISSL's PIRL (``NCELossWithMemory``) keeps
one Z for both terms, set by the first term's first batch.

Recipe (ImageNet, ResNet-50): 32,000 negatives, τ = 0.07, bank momentum 0.5, λ = 0.5, heads 2048 -> 128
(image) and 2048 -> 128 per patch, 9 x 128 -> 128 (jigsaw); the jigsaw view cuts a 255 px crop into
3 x 3 cells of 85 px and a random 64 px patch in each (so the patches do not share edges); SGD with
momentum 0.9, wd 1e-4; 63.6% linear top-1. Ours: cells of image_size // 3 px and patches of
``patch_fraction`` (64 / 85) of a cell, cut from the second augmented view of the image (the paper
augments each patch on its own); one shared backbone encodes the image and the patches (a ViT sees
its patches resized to the image size). Evaluation reads the backbone features of the image.
``bank_init=features`` (with ``normaliser_momentum`` below 1, as InstDisc) fills the bank from the
encoder's embeddings before the first step, for short budgets where each row is refreshed once an epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssl_zoo.distributed import gather_no_grad
from ssl_zoo.errors import check
from ssl_zoo.heads.jigsaw import PatchConcatHead
from ssl_zoo.memory.bank import MemoryBank, check_bank_init
from ssl_zoo.methods._clustering import fill_from_training_set
from ssl_zoo.methods.base import Method, MethodConfig, StepOutput

GRID = 3  # the 3 x 3 jigsaw of Noroozi & Favaro (2016), as PIRL


def jigsaw_patches(x: torch.Tensor, grid: int, patch: int) -> torch.Tensor:
    """[N, C, H, W] -> [N, grid², C, patch, patch]: the image cut into grid x grid cells of H // grid px,
    a ``patch`` px square at a random place inside each cell (per image and cell), in row-major order."""
    n, cell = x.shape[0], x.shape[-1] // grid
    slack = cell - patch
    cells = torch.arange(grid, device=x.device) * cell
    tops = cells.repeat_interleave(grid)[None] + torch.randint(slack + 1, (n, grid * grid), device=x.device)
    lefts = cells.repeat(grid)[None] + torch.randint(slack + 1, (n, grid * grid), device=x.device)
    r = torch.arange(patch, device=x.device)
    rows, cols = tops[..., None] + r, lefts[..., None] + r                    # [N, P, patch]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    out = x[batch, :, rows[:, :, :, None], cols[:, :, None, :]]               # [N, P, patch, patch, C]
    return out.permute(0, 1, 4, 2, 3)


def shuffle_patches(patches: torch.Tensor) -> torch.Tensor:
    """Each image's patches [N, P, ...] in their own random order (a uniformly drawn permutation)."""
    n, p = patches.shape[:2]
    perm = torch.argsort(torch.rand(n, p, device=patches.device), dim=1)
    return patches[torch.arange(n, device=patches.device)[:, None], perm]


@dataclass
class PIRLConfig(MethodConfig):
    name: str = "pirl"
    embed_dim: int = 128
    patch_dim: int = 128
    patch_fraction: float = 0.75  # a patch's side as a fraction of its cell's (64 / 85 px in the paper)
    temperature: float = 0.07
    num_negatives: int = 32000
    bank_momentum: float = 0.5
    normaliser_momentum: float = 1.0  # 1: NCE's Z fixed at the first step (the paper); < 1: a running mean
    loss_weight: float = 0.5  # λ: weight of the jigsaw term, 1 - λ that of the image term
    shared_noise: bool = False  # one draw of the m noise rows for the whole batch (MemoryBank.nce_loss)
    bank_init: str = "random"  # or "features" (with normaliser_momentum < 1): the encoder's embeddings first

    def validate(self, prefix: str = "method") -> None:
        check(self.embed_dim >= 1, f"{prefix}.embed_dim", self.embed_dim, "an integer >= 1")
        check(self.patch_dim >= 1, f"{prefix}.patch_dim", self.patch_dim, "an integer >= 1")
        check(0.0 < self.patch_fraction <= 1.0, f"{prefix}.patch_fraction", self.patch_fraction, "a number in (0, 1]")
        check(self.temperature > 0, f"{prefix}.temperature", self.temperature, "a number > 0")
        check(self.num_negatives >= 1, f"{prefix}.num_negatives", self.num_negatives, "an integer >= 1")
        check(0.0 <= self.bank_momentum < 1.0, f"{prefix}.bank_momentum", self.bank_momentum, "a number in [0, 1)")
        check(0.0 <= self.normaliser_momentum <= 1.0, f"{prefix}.normaliser_momentum", self.normaliser_momentum,
              "a number in [0, 1]")
        check(0.0 <= self.loss_weight <= 1.0, f"{prefix}.loss_weight", self.loss_weight, "a number in [0, 1]")
        check_bank_init(prefix, self.bank_init, self.normaliser_momentum)


class PIRL(Method):
    name = "pirl"
    Config = PIRLConfig

    def __init__(self, cfg, num_train: int | None = None):
        super().__init__(cfg, num_train)
        hp, size = self.hp, cfg.data.image_size
        self.patch = max(int(hp.patch_fraction * (size // GRID)), 1)
        check(size // GRID >= 2, "data.image_size", size, f"at least {2 * GRID} px: PIRL cuts a {GRID} x {GRID} jigsaw")
        self.require_num_train("PIRL's memory bank needs one row per training image")
        self.image_head = nn.Linear(self.feature_dim, hp.embed_dim)
        self.jigsaw_head = PatchConcatHead(self.feature_dim, hp.patch_dim, GRID * GRID, hp.embed_dim)
        self.bank = MemoryBank(num_train, hp.embed_dim, hp.bank_momentum, num_normalisers=2,
                               normaliser_momentum=hp.normaliser_momentum)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The image's embedding v [N, E] (normalised): what the bank stores."""
        return F.normalize(self.image_head(self.backbone(x)), dim=1)

    def on_train_start(self) -> None:
        if self.hp.bank_init == "features":
            fill_from_training_set(self, self.embed, self.bank)

    def encode_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """Backbone features [N, P, F] of patches [N, P, C, p, p]."""
        flat = patches.reshape(-1, *patches.shape[2:])
        if hasattr(self.backbone, "patch_embed"):  # a ViT takes its configured image size only
            flat = F.interpolate(flat, size=self.cfg.data.image_size, mode="bilinear", align_corners=False)
        return self.backbone(self._format(flat)).reshape(*patches.shape[:2], -1)

    def contrast(self, z, index, k: int):
        """InstDisc's NCE of ``z`` [N, E] (normalised) against its own bank row and m uniform noise rows."""
        return self.bank.nce_loss(z, index, self.hp.num_negatives, self.hp.temperature, k,
                                  shared_noise=self.hp.shared_noise)

    def step(self, views, index) -> StepOutput:
        image, puzzle = views[0], views[1]
        h = self.backbone(image)
        v = F.normalize(self.image_head(h), dim=1)                                      # embed(image), keeping h
        patches = shuffle_patches(jigsaw_patches(puzzle, GRID, self.patch))
        vt = F.normalize(self.jigsaw_head(self.encode_patches(patches)), dim=1)
        loss_jigsaw, loss_image = self.contrast(vt, index, 0), self.contrast(v, index, 1)
        lam = self.hp.loss_weight
        loss = lam * loss_jigsaw + (1.0 - lam) * loss_image
        self.bank.update(gather_no_grad(index), gather_no_grad(v))  # every rank writes every rank's rows
        return StepOutput(loss, features=h, logs={"loss_jigsaw": loss_jigsaw.detach(),
                                                  "loss_image": loss_image.detach()})
