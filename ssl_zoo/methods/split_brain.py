"""Split-brain autoencoders: Unsupervised Learning by Cross-Channel Prediction (Zhang, Isola & Efros 2017).

    for x in loader:                              # one view [B, 3, H, W]
        L, ab = lab(x)
        z_ab = g1(f1(L))                          # L -> ab: Q ab bins (as colorization, rebalanced)
        z_L  = g2(f2(ab))                         # ab -> L: L quantised into 50 bins
        loss = CE(z_ab, soft_encode(ab)) + CE(z_L, bin(L))
        representation = cat(f1(L), f2(ab))       # the two halves together see the whole input

Recipe (ImageNet, the paper): an AlexNet split into two half-width sub-networks, one per direction,
classification losses (better than regression in the paper's ablation), ab at grid 10 (Q = 313), L in
50 bins. Optimiser here: colorization's Adam settings. Deviations: each sub-network is the configured
backbone (1 and 2 input channels) with a small transposed-convolution decoder on its last map, so the
representation has twice the backbone's width (``feature_dim`` = both); the ab bins are
``ssl_zoo.transforms.color.ab_bins`` (261 at grid 10); predictions are at 1/``output_stride`` of the
image; the ab prior of the rebalancing is a running count (checkpointed buffer).

Grey data (Fashion-MNIST) is refused by the config check (``needs_colour``): ab is 0 there, so the
L -> ab half would have nothing to predict and the ab -> L half nothing to read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssl_zoo.backbones import build_backbone
from ssl_zoo.errors import check
from ssl_zoo.heads.color_bins import ABClassTargets, to_output_size
from ssl_zoo.heads.conv_decoder import ConvDecoder, feature_map, feature_map_shape
from ssl_zoo.methods.base import Method, StepOutput
from ssl_zoo.methods.colorization import ColorizationConfig, lightness
from ssl_zoo.transforms.color import normalized_to_lab, quantize, scaled_lab


@dataclass
class SplitBrainConfig(ColorizationConfig):
    """Colorization's ab bins, soft-encoding, rebalancing (of the ab half) and decoder, plus the L bins."""

    name: str = "split_brain"
    l_bins: int = 50            # L in [0, 100] cut into this many bins

    def validate(self, prefix: str = "method") -> None:
        super().validate(prefix)
        check(self.l_bins >= 2, f"{prefix}.l_bins", self.l_bins, "an integer >= 2")


def chroma(lab):
    """ab of a Lab batch [B, 3, H, W] as the ab -> L encoder's input [B, 2, H, W], each in about [-1, 1]."""
    return scaled_lab(lab)[:, 1:]


class SplitBrain(Method):
    name = "split_brain"
    Config = SplitBrainConfig

    def __init__(self, cfg, num_train: int | None = None):
        super().__init__(cfg, num_train)
        hp, size = self.hp, cfg.data.image_size
        # self.backbone is the L -> ab half (what a 1-channel export holds); the ab -> L half is its own net.
        self.backbone, dim_l = build_backbone(cfg.backbone, size, 1)
        self.encoder_ab, dim_ab = build_backbone(cfg.backbone, size, 2)
        self.feature_dim = dim_l + dim_ab
        self.out_size = max(1, size // hp.output_stride)
        self.ab_targets = ABClassTargets(hp.grid, hp.neighbours, hp.sigma, hp.rebalance_lambda, hp.rebalance)
        c, h, _ = feature_map_shape(self.backbone, 1, size)
        self.decoder_ab = ConvDecoder(c, self.ab_targets.num_bins, h, self.out_size, hp.decoder_width)
        c, h, _ = feature_map_shape(self.encoder_ab, 2, size)
        self.decoder_l = ConvDecoder(c, hp.l_bins, h, self.out_size, hp.decoder_width)

    def inputs(self, images):
        lab = normalized_to_lab(images, self.cfg.data.mean, self.cfg.data.std)
        return lab, self._format(lightness(lab)), self._format(chroma(lab))

    def forward(self, images):
        _, lum, ab = self.inputs(images)
        return torch.cat([self.backbone(lum), self.encoder_ab(ab)], dim=1)

    def step(self, views, index) -> StepOutput:
        lab, lum, ab = self.inputs(views[0])
        map_l, h_l = feature_map(self.backbone, lum)
        map_ab, h_ab = feature_map(self.encoder_ab, ab)
        target = to_output_size(lab, self.out_size)
        loss_ab = self.ab_targets.loss(self.decoder_ab(map_l), target[:, 1:])        # L -> ab
        l_labels = quantize(target[:, 0], 0.0, 100.0, self.hp.l_bins)                  # [B, h, w]
        loss_l = F.cross_entropy(self.decoder_l(map_ab).float(), l_labels)            # ab -> L
        logs = {"loss_ab": loss_ab.detach(), "loss_l": loss_l.detach()}
        return StepOutput(loss_ab + loss_l, features=torch.cat([h_l, h_ab], dim=1), logs=logs)
