"""Denoising autoencoder: Extracting and Composing Robust Features with Denoising Autoencoders
(Vincent, Larochelle, Bengio & Manzagol 2008).

    for x in loader:                          # one view [B, C, H, W]
        x_tilde = corrupt(x, noise_level)     # masking noise: a random fraction of pixels set to black
        m = f(x_tilde)                        # encoder's last feature map [B, C', h, w]
        loss = mse(g(m), x)                   # reconstruct the *clean* view

``corruption="mask"`` is the paper's masking noise (a fraction ``noise_level`` of the pixels, all
channels together, set to 0 in pixel space, i.e. ``-mean/std`` after normalisation); ``"gaussian"`` adds
isotropic noise of standard deviation ``noise_level`` in normalised units (the paper's other corruption,
Vincent et al. 2010). The paper stacks fully connected sigmoid layers trained layer by layer on 28 px
digits with a cross-entropy loss; here the encoder is the run's backbone trained end to end, the decoder
a small transposed-convolution stack (``ConvDecoder``) and the loss the mean squared error on normalised
pixels. The probe features are those of the corrupted view (no second encoder pass).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssl_zoo.errors import check
from ssl_zoo.heads.conv_decoder import ConvDecoder, feature_map, feature_map_shape, save_reconstructions
from ssl_zoo.methods.base import Method, MethodConfig, StepOutput

CORRUPTIONS = ("mask", "gaussian")


@dataclass
class DenoisingAEConfig(MethodConfig):
    min_views = 1
    name: str = "denoising_ae"
    corruption: str = "mask"
    noise_level: float = 0.25  # masking: fraction of pixels zeroed (the paper tries 0.1-0.4); gaussian: sigma
    decoder_width: int = 256

    def validate(self, prefix: str = "method") -> None:
        check(self.corruption in CORRUPTIONS, f"{prefix}.corruption", self.corruption,
              "one of: " + ", ".join(CORRUPTIONS))
        if self.corruption == "mask":
            check(0.0 <= self.noise_level < 1.0, f"{prefix}.noise_level", self.noise_level, "a fraction in [0, 1)")
        else:
            check(self.noise_level >= 0, f"{prefix}.noise_level", self.noise_level, "a standard deviation >= 0")
        check(self.decoder_width >= 1, f"{prefix}.decoder_width", self.decoder_width, "an integer >= 1")


class DenoisingAE(Method):
    name = "denoising_ae"
    Config = DenoisingAEConfig

    def __init__(self, cfg, num_train: int | None = None):
        super().__init__(cfg, num_train)
        data = cfg.data
        c, h, _ = feature_map_shape(self.backbone, data.channels, data.image_size)
        self.decoder = ConvDecoder(c, data.channels, h, data.image_size, self.hp.decoder_width)
        # black (pixel value 0) after the data set's normalisation, per channel: [1, C, 1, 1]
        black = -torch.tensor(list(data.mean)) / torch.tensor(list(data.std))
        self.register_buffer("black", black.view(1, -1, 1, 1), persistent=False)
        self._last: tuple[torch.Tensor, ...] | None = None

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> the same shape, corrupted; the random draws come from torch's global generator."""
        if self.hp.corruption == "mask":
            drop = torch.rand(x.shape[0], 1, *x.shape[2:], device=x.device) < self.hp.noise_level
            return torch.where(drop, self.black.to(x.dtype), x)
        return x + self.hp.noise_level * torch.randn_like(x)

    def step(self, views, index) -> StepOutput:
        x = views[0]
        noisy = self.corrupt(x)
        fmap, h = feature_map(self.backbone, noisy)
        recon = self.decoder(fmap)
        loss = F.mse_loss(recon, x)
        self._last = (x.detach(), noisy.detach(), recon.detach())
        return StepOutput(loss, features=h)

    def on_train_end(self) -> None:
        if self._last is not None:
            save_reconstructions(self, self._last)
