"""Colorization: Colorful Image Colorization (Zhang, Isola & Efros 2016).

    for x in loader:                              # one view [B, 3, H, W]
        L, ab = lab(x)                            # L: the input (1 channel); ab: what is predicted
        z = g(f(L))                               # encoder's last map -> ConvDecoder -> [B, Q, H/s, W/s]
        Z = soft_encode(ab at H/s)                # 5 nearest of Q ab bins, Gaussian sigma=5
        w = v(nearest bin)                        # class rebalancing: v ∝ ((1-λ) p̃ + λ/Q)^-1, λ = 0.5,
                                                  # p̃ the ab prior smoothed with a Gaussian (sigma=5)
        loss = -mean_pixels w Σ_q Z_q log softmax(z)_q

Recipe (ImageNet, the paper): VGG-style network on 224 px L, output at 1/4 resolution, Adam (beta 0.9,
0.99), lr 3e-5, weight decay 1e-3, batch 40, 450k iterations (lr 1e-5 at 200k, 3e-6 at 375k); the colour
prior is counted over ImageNet's training set. Deviations: the encoder is the configured backbone
(built with 1 input channel) and the decoder a small transposed-convolution stack on its last map;
the bins are the in-gamut cells of a sampled sRGB cube (261 at grid 10, the paper's gamut gives 313,
``ssl_zoo.transforms.color.ab_bins``); the prior is a running count of every pixel seen so far (a
checkpointed buffer) instead of a pass over the data set before training. Evaluation and export read
the encoder on the L channel: ``forward`` converts normalised images to L itself.

Grey data (Fashion-MNIST) is refused by the config check (``needs_colour``): a and b are 0 there, every
pixel's target would be the grey bin and the encoder would learn nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from ssl_zoo.backbones import build_backbone
from ssl_zoo.errors import check
from ssl_zoo.heads.color_bins import ABClassTargets, to_output_size
from ssl_zoo.heads.conv_decoder import ConvDecoder, feature_map, feature_map_shape
from ssl_zoo.methods.base import Method, MethodConfig, StepOutput
from ssl_zoo.transforms.color import normalized_to_lab


@dataclass
class ColorizationConfig(MethodConfig):
    min_views = 1
    needs_colour = True
    name: str = "colorization"
    grid: float = 10.0          # side of an ab bin
    neighbours: int = 5         # soft-encoding: nearest bins per pixel
    sigma: float = 5.0          # soft-encoding and prior smoothing Gaussian width (ab units)
    rebalance: bool = True
    rebalance_lambda: float = 0.5
    output_stride: int = 4      # the decoder predicts at image_size / output_stride
    decoder_width: int = 256

    def validate(self, prefix: str = "method") -> None:
        check(self.grid > 0, f"{prefix}.grid", self.grid, "a number > 0 (ab units; the paper: 10)")
        check(self.neighbours >= 1, f"{prefix}.neighbours", self.neighbours, "an integer >= 1")
        check(self.sigma > 0, f"{prefix}.sigma", self.sigma, "a number > 0")
        check(0.0 <= self.rebalance_lambda <= 1.0, f"{prefix}.rebalance_lambda", self.rebalance_lambda,
              "a number in [0, 1]")
        check(self.output_stride >= 1, f"{prefix}.output_stride", self.output_stride, "an integer >= 1")
        check(self.decoder_width >= 1, f"{prefix}.decoder_width", self.decoder_width, "an integer >= 1")


def lightness(lab):
    """L of a Lab batch [B, 3, H, W], as the encoder's input [B, 1, H, W] in about [-1, 1]."""
    return (lab[:, :1] - 50.0) / 50.0


class Colorization(Method):
    name = "colorization"
    Config = ColorizationConfig

    def __init__(self, cfg, num_train: int | None = None):
        super().__init__(cfg, num_train)
        hp, data = self.hp, cfg.data
        self.backbone, self.feature_dim = build_backbone(cfg.backbone, data.image_size, 1)  # it sees L only
        self.out_size = max(1, data.image_size // hp.output_stride)
        self.targets = ABClassTargets(hp.grid, hp.neighbours, hp.sigma, hp.rebalance_lambda, hp.rebalance)
        c, h, _ = feature_map_shape(self.backbone, 1, data.image_size)
        self.decoder = ConvDecoder(c, self.targets.num_bins, h, self.out_size, hp.decoder_width)

    def lab(self, images):
        return normalized_to_lab(images, self.cfg.data.mean, self.cfg.data.std)

    def forward(self, images):
        return self.backbone(self._format(lightness(self.lab(images))))

    def step(self, views, index) -> StepOutput:
        lab = self.lab(views[0])
        fmap, h = feature_map(self.backbone, self._format(lightness(lab)))
        logits = self.decoder(fmap)
        loss = self.targets.loss(logits, to_output_size(lab[:, 1:], self.out_size))
        return StepOutput(loss, features=h)
