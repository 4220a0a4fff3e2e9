"""CPC v2: Data-Efficient Image Recognition with Contrastive Predictive Coding (Hénaff et al. 2019), on
top of CPC (Oord, Li & Vinyals 2018).

    for x in loader:                                      # one view [N, C, H, W]
        patches = grid(x)                                 # G x G patches of P px, 50% overlap: [N, G, G, C, P, P]
        z = mean_pool(f(patches))                         # the backbone on every patch: latents [N, G, G, D]
        for each of the four directions (z rotated by 0, 90, 180, 270 degrees):
            c = g_ar(z)                                   # masked (PixelCNN) context net, causal over rows
            t = T z                                       # targets: a 1x1 conv of the latents to 64-d
            for k in first_step .. prediction_steps:      # CPC v2: k = 3 only (rows 1 and 2 skipped)
                ẑ[i + k, j] = 0.1 · W_k c[i, j]           # scaled linear prediction of the target k rows below
                loss += info_nce(ẑ, t[i + k, j], negatives = every other patch target of the batch)

Evaluation (``forward``) cuts the same grid from an image, encodes every patch and returns the mean of
the patch latents over the grid [N, D], the spatially pooled latents the paper's linear classifier reads.

Recipe (ImageNet): images cut into a 7 x 7 grid of 64 px patches with a 32 px stride (50% overlap);
ResNet-161 patch encoder with layer normalisation instead of batch normalisation (batch statistics
link the patches of an image and let the encoder solve the task trivially); predictions in all four
directions; patch-wise augmentation (colour dropping, flips, random crops); Adam; 71.5% linear top-1.
The paper's pseudo-code (appendix A.2) scores predictions against targets, not the latents themselves:
a 1x1 convolution maps the latents to 64-d targets, the predictions (also 64-d) are scaled by 0.1
before the dot product, and only the latents 3 rows below are predicted (``steps_to_ignore=2,
steps_to_predict=3``): with 50% overlap the patches 1 and 2 rows below share pixels with the context's
own rows. CPC v1 predicts up to 5 rows below from the raw latents: ``target_dim=0 emb_scale=1
first_step=1 prediction_steps=5``. Ours: the grid is ``grid_size`` x ``grid_size`` patches of
``patch_size`` px (default: 50% overlap, 2H / (G + 1) px, e.g. 8 px at 32 px and G = 7); the patch
encoder is the configured backbone with ``encoder_norm=layer`` replacing every BatchNorm2d by a
GroupNorm with one group (layer norm over C, H, W); one context network and one set of predictors
per direction; the augmentation acts on the whole image before the grid is cut, not on each patch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from ssl_zoo.backbones import build_backbone
from ssl_zoo.distributed import gather_sizes, gather_with_grad, rank
from ssl_zoo.errors import check
from ssl_zoo.heads.masked_context import MaskedContextNetwork
from ssl_zoo.losses.mutual_information import cpc_info_nce
from ssl_zoo.methods.base import Method, MethodConfig, StepOutput

NORMS = ("layer", "batch")


def batchnorm_to_layernorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d of ``module`` (in place) by GroupNorm(1, C): layer norm over (C, H, W)
    with a per-channel affine, which never mixes statistics across the samples of a batch."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.GroupNorm(1, child.num_features, eps=child.eps, affine=child.affine))
        else:
            batchnorm_to_layernorm(child)
    return module


def patch_grid(x: torch.Tensor, grid: int, patch: int) -> torch.Tensor:
    """[N, C, H, H] -> [N, G, G, C, P, P]: ``grid`` x ``grid`` patches of ``patch`` px at an equal stride
    (row-major: patch (i, j) starts at row i·s, column j·s)."""
    size = x.shape[-1]
    stride = (size - patch) // (grid - 1) if grid > 1 else patch
    p = x.unfold(2, patch, stride).unfold(3, patch, stride)  # [N, C, G, G, P, P]
    return p.permute(0, 2, 3, 1, 4, 5)


@dataclass
class CPCv2Config(MethodConfig):
    min_views = 1
    name: str = "cpc_v2"
    grid_size: int = 7
    patch_size: Optional[int] = None  # px; null: 50% overlap, 2 * image_size / (grid_size + 1)
    prediction_steps: int = 3         # K: predict rows i + first_step .. i + K
    first_step: int = 3
    directions: int = 4               # 1: top to bottom only; 4: also bottom-up, left-right, right-left
    target_dim: int = 64              # a 1x1 conv maps the latents to targets of this width; 0: the latents
    emb_scale: float = 0.1            # predictions are multiplied by this before the dot product
    context_dim: int = 512
    context_blocks: int = 5
    encoder_norm: str = "layer"

    def validate(self, prefix: str = "method") -> None:
        check(self.grid_size >= 2, f"{prefix}.grid_size", self.grid_size, "an integer >= 2")
        check(self.patch_size is None or self.patch_size >= 2, f"{prefix}.patch_size", self.patch_size,
              "null (50% overlap) or an integer >= 2 px")
        check(self.first_step >= 1, f"{prefix}.first_step", self.first_step, "an integer >= 1")
        check(self.first_step <= self.prediction_steps < self.grid_size, f"{prefix}.prediction_steps",
              self.prediction_steps, f"an integer in [method.first_step={self.first_step}, "
              f"method.grid_size - 1={self.grid_size - 1}]")
        check(self.directions in (1, 4), f"{prefix}.directions", self.directions, "1 or 4")
        check(self.target_dim >= 0, f"{prefix}.target_dim", self.target_dim, "an integer >= 0 (0: the latents)")
        check(self.emb_scale > 0, f"{prefix}.emb_scale", self.emb_scale, "a number > 0")
        check(self.context_dim >= 1, f"{prefix}.context_dim", self.context_dim, "an integer >= 1")
        check(self.context_blocks >= 0, f"{prefix}.context_blocks", self.context_blocks, "an integer >= 0")
        check(self.encoder_norm in NORMS, f"{prefix}.encoder_norm", self.encoder_norm, "one of: " + ", ".join(NORMS))

    def patch_px(self, image_size: int) -> int:
        """Patch side in px for ``image_size`` px images; checked to tile the image at an integer stride."""
        g = self.grid_size
        if self.patch_size is None:
            check(image_size % (g + 1) == 0, "method.grid_size", g,
                  f"a grid whose size + 1 divides data.image_size={image_size} (50% overlap)",
                  "or set method.patch_size")
            return 2 * image_size // (g + 1)
        p = self.patch_size
        check(p <= image_size and (image_size - p) % (g - 1) == 0, "method.patch_size", p,
              f"a patch size <= data.image_size={image_size} with (image_size - patch_size) divisible by "
              f"method.grid_size - 1={g - 1}")
        return p


class CPCv2(Method):
    name = "cpc_v2"
    Config = CPCv2Config

    def __init__(self, cfg, num_train: int | None = None):
        super().__init__(cfg, num_train)
        hp = self.hp
        self.patch = hp.patch_px(cfg.data.image_size)
        # The base class built the encoder for whole images; CPC encodes patches.
        self.backbone, self.feature_dim = build_backbone(cfg.backbone, self.patch, cfg.data.channels)
        if hp.encoder_norm == "layer":
            batchnorm_to_layernorm(self.backbone)
        self.steps = hp.prediction_steps - hp.first_step + 1
        self.context = nn.ModuleList(MaskedContextNetwork(self.feature_dim, hp.context_dim, hp.context_blocks)
                                     for _ in range(hp.directions))
        # T: latents to targets, one 1x1 convolution per direction (the latents as they are with target_dim=0)
        self.target_dim = hp.target_dim or self.feature_dim
        self.targets = nn.ModuleList(nn.Conv2d(self.feature_dim, hp.target_dim, 1) if hp.target_dim else nn.Identity()
                                     for _ in range(hp.directions))
        # W_k for every step, as one 1x1 convolution per direction: [B, ctx, G, G] -> [B, steps * T, G, G]
        self.predictors = nn.ModuleList(nn.Conv2d(hp.context_dim, self.steps * self.target_dim, 1)
                                        for _ in range(hp.directions))

    def latents(self, x: torch.Tensor) -> torch.Tensor:
        """Patch latents z [N, G, G, D] of images x [N, C, H, H]."""
        g = self.hp.grid_size
        patches = patch_grid(x, g, self.patch)
        flat = patches.reshape(-1, *patches.shape[3:])
        return self.backbone(self._format(flat)).reshape(x.shape[0], g, g, -1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The mean over the grid of the patch latents [N, D]: what evaluation and export read."""
        return self.latents(images).mean(dim=(1, 2))

    def direction_loss(self, d: int, z: torch.Tensor) -> torch.Tensor:
        """InfoNCE of direction ``d``: the grid rotated by d·90°, so "rows below" become that direction."""
        z = torch.rot90(z, d, dims=(1, 2)).permute(0, 3, 1, 2)  # [N, D, G, G]
        n, _, g, _ = z.shape
        t = self.targets[d](z).permute(0, 2, 3, 1)              # targets [N, G, G, T]
        context = self.context[d](z)
        preds = self.predictors[d](context).reshape(n, self.steps, self.target_dim, g, g).permute(1, 0, 3, 4, 2)
        preds = preds * self.hp.emb_scale
        flat = t.reshape(-1, self.target_dim)
        sizes = gather_sizes(flat)  # negatives: every patch of every rank; this rank's rows start at offset
        candidates = gather_with_grad(flat)
        return cpc_info_nce(list(preds), t, self.hp.first_step, candidates, offset=sum(sizes[:rank()]))

    def step(self, views, index) -> StepOutput:
        z = self.latents(views[0])
        losses = [self.direction_loss(d, z) for d in range(self.hp.directions)]
        logs = {f"loss_dir{d}": loss.detach() for d, loss in enumerate(losses)} if len(losses) > 1 else {}
        return StepOutput(torch.stack(losses).mean(), features=z.mean(dim=(1, 2)), logs=logs)
