"""Variational autoencoder: Auto-Encoding Variational Bayes (Kingma & Welling 2014), β-VAE weighting
(Higgins et al. 2017); the encoder's posterior mean is the representation.

    for x in loader:                               # one view [B, C, H, W]
        mu, logvar = W_mu f(x), W_logvar f(x)      # [B, Z], Z = latent_dim (128)
        z = mu + exp(logvar / 2) * eps             # reparameterisation, eps ~ N(0, I)
        recon = g(reshape(W_dec z))                # linear to the encoder's map size, then ConvDecoder
        loss = sum (recon - x)^2 + beta * KL(N(mu, sigma^2) || N(0, I))    # per sample, batch mean

``forward`` returns ``mu`` [B, Z] and ``feature_dim`` is Z, so the kNN monitor, the online probe (whose
features are the same ``mu``) and exports all read the posterior mean. Deviations: the paper's MLP
encoder and decoder on 28 px digits with a Bernoulli likelihood become the run's backbone and a
transposed-convolution decoder with a unit-variance Gaussian likelihood (squared error) on normalised
pixels; ``reconstruction=bce`` is not offered because normalised pixels are not probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ssl_zoo.errors import check
from ssl_zoo.heads.conv_decoder import ConvDecoder, feature_map_shape, save_reconstructions
from ssl_zoo.losses.generative import vae_loss
from ssl_zoo.methods.base import Method, MethodConfig, StepOutput


@dataclass
class VAEConfig(MethodConfig):
    min_views = 1
    name: str = "vae"
    latent_dim: int = 128
    beta: float = 1.0
    decoder_channels: int = 512  # channels of the map the latent is projected to (ResNet-18's layer4 width)
    decoder_width: int = 256

    def validate(self, prefix: str = "method") -> None:
        check(self.latent_dim >= 1, f"{prefix}.latent_dim", self.latent_dim, "an integer >= 1")
        check(self.beta >= 0, f"{prefix}.beta", self.beta, "a number >= 0")
        check(self.decoder_channels >= 1, f"{prefix}.decoder_channels", self.decoder_channels, "an integer >= 1")
        check(self.decoder_width >= 1, f"{prefix}.decoder_width", self.decoder_width, "an integer >= 1")


class VAE(Method):
    name = "vae"
    Config = VAEConfig

    def __init__(self, cfg, num_train: int | None = None):
        super().__init__(cfg, num_train)
        hp, data = self.hp, cfg.data
        _, h, w = feature_map_shape(self.backbone, data.channels, data.image_size)
        self.posterior = nn.Linear(self.feature_dim, 2 * hp.latent_dim)
        self.map_shape = (hp.decoder_channels, h, w)
        self.from_latent = nn.Linear(hp.latent_dim, hp.decoder_channels * h * w)
        self.decoder = ConvDecoder(hp.decoder_channels, data.channels, h, data.image_size, hp.decoder_width)
        self.feature_dim = hp.latent_dim
        self._last: tuple[torch.Tensor, ...] | None = None

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, C, H, W] -> (mu, logvar), each [B, Z]."""
        return self.posterior(self.backbone(x)).chunk(2, dim=1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """[B, Z] -> reconstructed normalised images [B, C, H, W]."""
        return self.decoder(self.from_latent(z).view(z.shape[0], *self.map_shape))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(self._format(images))[0]

    def step(self, views, index) -> StepOutput:
        x = views[0]
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        recon = self.decode(z)
        loss, rec, kl = vae_loss(recon, x, mu, logvar, beta=self.hp.beta, reconstruction="mse")
        self._last = (x.detach(), recon.detach())
        return StepOutput(loss, features=mu, logs={"reconstruction": rec.detach(), "kl": kl.detach()})

    def on_train_end(self) -> None:
        if self._last is not None:
            save_reconstructions(self, self._last)
