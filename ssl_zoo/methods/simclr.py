"""SimCLR: A Simple Framework for Contrastive Learning of Visual Representations (Chen et al. 2020).

    for x in loader:                       # N images
        x1, x2 = aug(x), aug(x)            # two views
        h = f(cat(x1, x2))                 # one encoder pass over 2N views (BN over 2N, as the paper)
        z1, z2 = g(h).chunk(2)             # 2-layer MLP projection head
        loss = nt_xent(z1, z2, T)          # over the 2N views of the *global* batch

Recipe (ImageNet): LARS, base lr 0.3 x B/256, wd 1e-6, batch 4096, T=0.1, 100-800 epochs, head
2048-2048-128. The CIFAR-10 appendix uses T=0.5. Deviation: the hidden width of the head follows the
config (2048 by default), not the backbone's feature width.

``grad_cache_chunk=c`` encodes the batch c images (2c views) at a time with GradCache (Gao et al. 2021,
``ssl_zoo.distributed.gradcache``): the gradient of the loss over the whole batch, in the memory of c
images' activations, so batch 4096 trains where only 256 fit at once. BN statistics are then per chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ssl_zoo.distributed import gather_with_grad
from ssl_zoo.distributed.gradcache import grad_cache
from ssl_zoo.errors import check
from ssl_zoo.heads import MLP
from ssl_zoo.losses.contrastive import nt_xent
from ssl_zoo.methods.base import Method, MethodConfig, StepOutput


@dataclass
class SimCLRConfig(MethodConfig):
    name: str = "simclr"
    proj_hidden_dim: int = 2048
    proj_output_dim: int = 128
    temperature: float = 0.1
    global_negatives: bool = True  # negatives from all ranks (the paper); False: this rank's batch only
    grad_cache_chunk: Optional[int] = None  # images per GradCache chunk; None: the whole batch at once

    def validate(self, prefix: str = "method") -> None:
        check(self.temperature > 0, f"{prefix}.temperature", self.temperature, "a number > 0")
        check(self.proj_hidden_dim >= 1, f"{prefix}.proj_hidden_dim", self.proj_hidden_dim, "an integer >= 1")
        check(self.proj_output_dim >= 1, f"{prefix}.proj_output_dim", self.proj_output_dim, "an integer >= 1")
        check(self.grad_cache_chunk is None or self.grad_cache_chunk >= 1, f"{prefix}.grad_cache_chunk",
              self.grad_cache_chunk, "null (no GradCache) or an integer >= 1")


class SimCLR(Method):
    name = "simclr"
    Config = SimCLRConfig

    def __init__(self, cfg, num_train: int | None = None):
        super().__init__(cfg, num_train)
        self.projector = MLP(self.feature_dim, self.hp.proj_hidden_dim, self.hp.proj_output_dim, num_layers=2)

    def encode(self, x1, x2):
        """Both views of the same images in one pass (BN over both): (h1 [b, D], z1 [b, E], z2 [b, E])."""
        h = self.backbone(torch.cat([x1, x2]))
        z1, z2 = self.projector(h).chunk(2)
        return h[: x1.shape[0]], z1, z2

    def step(self, views, index) -> StepOutput:
        h1, z1, z2 = grad_cache(self.encode, views[:2], self.hp.grad_cache_chunk, (self.backbone, self.projector))
        if self.hp.global_negatives:
            z1, z2 = gather_with_grad(z1), gather_with_grad(z2)
        loss = nt_xent(z1, z2, self.hp.temperature)
        return StepOutput(loss, features=h1)
