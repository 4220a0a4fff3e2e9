"""Context encoder: Context Encoders: Feature Learning by Inpainting (Pathak, Krähenbühl, Donahue,
Darrell & Efros 2016).

    for x in loader:                                    # one view [B, C, H, W]
        region = square of side H/2 (1/4 of the area)   # the centre, or a random place per image
        hole = region shrunk by `overlap` px per side   # what the encoder does not see
        x_hat = g(f(x with hole set to the mean))       # encoder's last map -> ConvDecoder -> [B, C, H, W]
        loss = sum_region w (x_hat - x)^2 / sum_region w,   w = 10 on the region's border outside the
                                                            # hole ("overlap"), 1 inside the hole

The hole is filled with the data set's mean (0 after normalisation), as the paper. The overlap border
is 4 px at 128 px in the paper; here ``overlap`` is that fraction of the image side (1/32), rounded, so
it vanishes below 16 px. Deviations: the adversarial term (weight 0.001 in the paper) is left out, so
this is the paper's L2-only context encoder; the decoder reconstructs the whole image and the loss reads
the region only (the paper's decoder outputs the region); the paper's random-block and random-region
masks become one randomly placed square (``mask=random``). The probe features are those of the masked
input (no second encoder pass).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssl_zoo.errors import check
from ssl_zoo.heads.conv_decoder import ConvDecoder, feature_map, feature_map_shape, save_reconstructions
from ssl_zoo.methods.base import Method, MethodConfig, StepOutput

MASKS = ("center", "random")


def region_masks(batch: int, size: int, overlap: int, random: bool, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(region, hole)``, each a bool [B, 1, size, size]: the square of side ``size // 2`` to reconstruct
    and the hole inside it (``overlap`` px less per side) that the encoder does not see."""
    side = size // 2
    if random:
        top = torch.randint(0, size - side + 1, (batch,), device=device)
        left = torch.randint(0, size - side + 1, (batch,), device=device)
    else:
        top = left = torch.full((batch,), (size - side) // 2, device=device)
    r = torch.arange(size, device=device)
    rows = (r[None, :] - top[:, None])  # [B, size], position inside the square along each axis
    cols = (r[None, :] - left[:, None])
    in_rows, in_cols = (rows >= 0) & (rows < side), (cols >= 0) & (cols < side)
    hole_rows = (rows >= overlap) & (rows < side - overlap)
    hole_cols = (cols >= overlap) & (cols < side - overlap)
    region = in_rows[:, :, None] & in_cols[:, None, :]
    hole = hole_rows[:, :, None] & hole_cols[:, None, :]
    return region[:, None], hole[:, None]


@dataclass
class ContextEncoderConfig(MethodConfig):
    min_views = 1
    name: str = "context_encoder"
    mask: str = "center"
    overlap: float = 0.03125  # border of the region the encoder sees, as a fraction of the side (4 / 128)
    overlap_weight: float = 10.0
    decoder_width: int = 256

    def validate(self, prefix: str = "method") -> None:
        check(self.mask in MASKS, f"{prefix}.mask", self.mask, "one of: " + ", ".join(MASKS))
        check(0.0 <= self.overlap < 0.25, f"{prefix}.overlap", self.overlap,
              "a fraction of the image side in [0, 0.25)")
        check(self.overlap_weight > 0, f"{prefix}.overlap_weight", self.overlap_weight, "a number > 0")
        check(self.decoder_width >= 1, f"{prefix}.decoder_width", self.decoder_width, "an integer >= 1")


class ContextEncoder(Method):
    name = "context_encoder"
    Config = ContextEncoderConfig

    def __init__(self, cfg, num_train: int | None = None):
        super().__init__(cfg, num_train)
        data = cfg.data
        c, h, _ = feature_map_shape(self.backbone, data.channels, data.image_size)
        self.decoder = ConvDecoder(c, data.channels, h, data.image_size, self.hp.decoder_width)
        self._last: tuple[torch.Tensor, ...] | None = None

    def step(self, views, index) -> StepOutput:
        x = views[0]
        size = x.shape[-1]
        region, hole = region_masks(x.shape[0], size, round(self.hp.overlap * size), self.hp.mask == "random",
                                    device=x.device)
        masked = x.masked_fill(hole, 0.0)  # 0 = the data set's mean after normalisation
        fmap, h = feature_map(self.backbone, masked)
        recon = self.decoder(fmap)
        weight = region.to(x.dtype) * torch.where(hole, 1.0, self.hp.overlap_weight)
        per_pixel = (recon - x).pow(2).mean(dim=1, keepdim=True)  # channels averaged
        loss = (weight * per_pixel).sum() / weight.sum()
        self._last = (x.detach(), masked.detach(), torch.where(hole, recon, x).detach())
        return StepOutput(loss, features=h)

    def on_train_end(self) -> None:
        if self._last is not None:
            save_reconstructions(self, self._last)
