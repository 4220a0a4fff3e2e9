"""MAE: Masked Autoencoders Are Scalable Vision Learners (He, Chen, Xie, Li, Dollár & Girshick 2021).

    for x in loader:                                   # one view [B, C, H, W]
        tokens = patch_embed(x) + pos                  # [B, L, D], L = (H/p)^2
        keep = random 25% of the L patches per image   # argsort of uniform noise
        latent = vit_blocks([cls, tokens[keep]])       # the encoder never sees a masked patch
        y = decoder([latent, mask tokens] unshuffled + pos_dec)   # a few narrow Transformer blocks
        loss = mse(y, normalise_per_patch(patchify(x)))  on the masked patches only

Recipe (ImageNet, the paper): mask ratio 0.75, decoder of 8 blocks of width 512 (16 heads), targets
normalised per patch, fixed 2-D sine-cosine position embeddings, AdamW (0.9, 0.95) base lr 1.5e-4 x B/256,
wd 0.05, batch 4096, 40 warm-up epochs then cosine, 800-1600 epochs; views: random resized crop (area
0.2-1, bicubic) and flip. Deviations: the encoder is a timm ViT (``backbone=vit_tiny|vit_small|
vit_base`` or ``backbone=timm`` with a ViT); its class token is kept, as MAE's code does; with
``sincos_pos_embed`` its position embedding is set to the fixed 2-D sine-cosine table and frozen (the
paper), otherwise timm's learned one is trained. ``forward`` (evaluation, export) runs the encoder on
the whole image; the probe reads the pooled output of the masked pass (no second pass).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ssl_zoo.backbones.config import VITS
from ssl_zoo.errors import check
from ssl_zoo.losses.generative import mae_loss, patchify
from ssl_zoo.methods.base import Method, MethodConfig, StepOutput


def sincos_pos_embed(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding [grid·grid, dim] (MAE, after Vaswani et al. 2017): half the
    channels encode the row, half the column, each as sin/cos at geometric frequencies 1/10000^(k/(dim/4))."""
    if dim % 4:
        raise ValueError(f"a 2-D sine-cosine embedding needs a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                indexing="ij")

    def encode(pos):
        angles = pos.reshape(-1, 1) * omega[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(rows), encode(cols)], dim=1).float()


def random_masking(batch: int, length: int, ratio: float,
                   device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(keep [B, K] indices of the visible patches, mask [B, L] 1 = removed, restore [B, L]: the inverse of
    the shuffle). K = round(L·(1 - ratio)), at least 1; per-sample random subsets, as MAE's argsort of noise."""
    keep_n = max(1, int(round(length * (1 - ratio))))
    shuffle = torch.rand(batch, length, device=device).argsort(dim=1)
    restore = shuffle.argsort(dim=1)
    mask = torch.ones(batch, length, device=device)
    mask[:, :keep_n] = 0
    return shuffle[:, :keep_n], torch.gather(mask, 1, restore), restore


@dataclass
class MAEConfig(MethodConfig):
    min_views = 1
    name: str = "mae"
    mask_ratio: float = 0.75
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    norm_pix_loss: bool = True
    sincos_pos_embed: bool = True

    def validate(self, prefix: str = "method") -> None:
        check(0.0 <= self.mask_ratio < 1.0, f"{prefix}.mask_ratio", self.mask_ratio, "a fraction in [0, 1)")
        check(self.decoder_depth >= 1, f"{prefix}.decoder_depth", self.decoder_depth, "an integer >= 1")
        check(self.decoder_heads >= 1, f"{prefix}.decoder_heads", self.decoder_heads, "an integer >= 1")
        check(self.decoder_dim % 4 == 0 and self.decoder_dim % self.decoder_heads == 0, f"{prefix}.decoder_dim",
              self.decoder_dim, f"a multiple of 4 and of method.decoder_heads={self.decoder_heads}")


class MAE(Method):
    name = "mae"
    Config = MAEConfig

    def __init__(self, cfg, num_train: int | None = None):
        backbone = cfg.backbone
        vit = backbone.name in VITS or (backbone.name == "timm" and "vit" in str(backbone.get("model_name") or ""))
        check(vit, "backbone.name", backbone.name, "a ViT for method=mae: vit_tiny, vit_small, vit_base, or timm "
              "with a ViT model_name", "MAE drops the masked patches from the encoder's token sequence")
        super().__init__(cfg, num_train)
        from timm.models.vision_transformer import Block

        hp, vit_model = self.hp, self.backbone
        self.patch_size = vit_model.patch_embed.patch_size[0]
        grid = vit_model.patch_embed.grid_size
        check(grid[0] == grid[1], "data.image_size", cfg.data.image_size, "a square patch grid")
        length, dim = grid[0] * grid[1], self.feature_dim
        if hp.sincos_pos_embed and vit_model.pos_embed is not None:
            prefix = 0 if getattr(vit_model, "no_embed_class", False) else vit_model.num_prefix_tokens
            with torch.no_grad():
                vit_model.pos_embed.zero_()
                vit_model.pos_embed[0, prefix:] = sincos_pos_embed(dim, grid[0])
            vit_model.pos_embed.requires_grad_(False)
        self.decoder_embed = nn.Linear(dim, hp.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, hp.decoder_dim))
        nn.init.normal_(self.mask_token, std=0.02)
        # the decoder's position embedding is fixed (MAE): a constant of the patch grid, not learned state
        self.register_buffer("decoder_pos", sincos_pos_embed(hp.decoder_dim, grid[0])[None], persistent=False)
        self.decoder_blocks = nn.Sequential(*[Block(hp.decoder_dim, hp.decoder_heads, mlp_ratio=4.0, qkv_bias=True)
                                              for _ in range(hp.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(hp.decoder_dim)
        self.decoder_pred = nn.Linear(hp.decoder_dim, self.patch_size ** 2 * cfg.data.channels)
        self.num_patches = length

    def encode_visible(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """The ViT on the visible patches only: [B, C, H, W], keep [B, K] -> tokens [B, prefix + K, D]."""
        vit = self.backbone
        tokens = vit._pos_embed(vit.patch_embed(x))          # prefix tokens first, position embedded
        prefix = vit.num_prefix_tokens
        patches = tokens[:, prefix:]
        visible = torch.gather(patches, 1, keep[..., None].expand(-1, -1, patches.shape[-1]))
        tokens = torch.cat([tokens[:, :prefix], visible], dim=1)
        return vit.norm(vit.blocks(vit.norm_pre(vit.patch_drop(tokens))))

    def decode(self, tokens: torch.Tensor, restore: torch.Tensor) -> torch.Tensor:
        """Encoder tokens [B, prefix + K, D] -> a prediction for every patch [B, L, p·p·C]."""
        prefix = self.backbone.num_prefix_tokens
        y = self.decoder_embed(tokens[:, prefix:])
        b, k, d = y.shape
        y = torch.cat([y, self.mask_token.expand(b, self.num_patches - k, -1)], dim=1)
        y = torch.gather(y, 1, restore[..., None].expand(-1, -1, d)) + self.decoder_pos   # unshuffle
        y = torch.cat([self.decoder_embed(tokens[:, :prefix]), y], dim=1)                 # prefix tokens too
        y = self.decoder_norm(self.decoder_blocks(y))
        return self.decoder_pred(y[:, prefix:])

    def step(self, views, index) -> StepOutput:
        x = views[0]
        keep, mask, restore = random_masking(x.shape[0], self.num_patches, self.hp.mask_ratio, x.device)
        tokens = self.encode_visible(x, keep)
        pred = self.decode(tokens, restore)
        loss = mae_loss(pred.float(), patchify(x, self.patch_size).float(), mask, norm_pix=self.hp.norm_pix_loss)
        features = self.backbone.forward_head(tokens, pre_logits=True)
        return StepOutput(loss, features=features)
