"""AMDIM: Learning Representations by Maximizing Mutual Information Across Views (Bachman, Hjelm &
Buchwalter 2019), on top of DIM: Deep InfoMax (Hjelm et al. 2018).

    for x in loader:
        x1, x2 = aug(x), aug(x)                            # two views
        m1, h1 = f(x1)                                     # a stage's map [N, C, h, w]; last map pooled
        m2, h2 = f(x2)
        g1, g2 = emb_g(h1), emb_g(h2)                      # global embeddings [N, D]     (1x1 conv heads)
        l1, l2 = emb_l(m1), emb_l(m2)                      # local embeddings [N, h·w, D]
        s = g · l / sqrt(D)                                # scores of every global against every location
        loss = est(g1, l2) + est(g2, l1)                   # estimator: nce (AMDIM) or jsd (DIM), averaged
               + 4e-2 · mean(s²)                           # inside est: squared-score penalty on scaled scores,
                                                           # then soft clip s ← 20 · tanh(s / 20)

Recipe (AMDIM, ImageNet): its own wide ResNet encoder, 1024-d embeddings (n_rkhs), NCE with the other
images' locations as negatives, score penalty 4e-2 and tanh clip at 20, Adam at lr 2e-4, 150 epochs;
68.1% linear top-1. It maximises mutual information between several pairs of scales (1-5, 1-7, 5-5).
Ours: one local scale, the map of ResNet stage ``local_stage`` (4, the last, by default; a ViT's patch
tokens), against the global average pool of the last map (local-global "1-to-h·w" across views); AdamW
without weight decay. As in AMDIM's code (amdim-public, ``costs.py``), the dot products are divided by
sqrt(D) before the penalty and the clip (``scale_scores``): unscaled, 1024-d scores sit far out on the
tanh clip, whose gradient vanishes there. At 32 px with the ImageNet stem the last map is 1x1, which
makes the objective a global-global one; ``local_stage=2`` gives a 4x4 map there, the nearest to the
paper's 1-5. DIM's JSD estimator is ``estimator=jsd`` (same scores, penalty and clip). Evaluation
reads the pooled backbone features. With data parallelism the local embeddings of every rank are the
negatives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssl_zoo.distributed import gather_sizes, gather_with_grad, rank
from ssl_zoo.errors import ConfigError, check
from ssl_zoo.heads.conv_decoder import feature_map, feature_map_shape
from ssl_zoo.heads.local_global import Conv1x1Embedding
from ssl_zoo.losses.mutual_information import ESTIMATORS, local_global_jsd, local_global_nce
from ssl_zoo.methods.base import Method, MethodConfig, StepOutput


@dataclass
class AMDIMConfig(MethodConfig):
    name: str = "amdim"
    estimator: str = "nce"
    embed_dim: int = 1024
    hidden_dim: int = 1024
    score_penalty: float = 4e-2
    score_clip: float = 20.0  # 0: no clipping
    scale_scores: bool = True  # scores divided by sqrt(embed_dim) before penalty and clip (AMDIM's code)
    local_stage: int = 4  # the ResNet stage (1-4) whose map gives the local features; 4 (the last) for a ViT

    def validate(self, prefix: str = "method") -> None:
        check(self.estimator in ESTIMATORS, f"{prefix}.estimator", self.estimator, "one of: " + ", ".join(ESTIMATORS))
        check(self.embed_dim >= 1, f"{prefix}.embed_dim", self.embed_dim, "an integer >= 1")
        check(self.hidden_dim >= 1, f"{prefix}.hidden_dim", self.hidden_dim, "an integer >= 1")
        check(self.score_penalty >= 0, f"{prefix}.score_penalty", self.score_penalty, "a number >= 0")
        check(self.score_clip >= 0, f"{prefix}.score_clip", self.score_clip, "a number >= 0 (0: no clipping)")
        check(self.local_stage in (1, 2, 3, 4), f"{prefix}.local_stage", self.local_stage,
              "a ResNet stage: 1, 2, 3 or 4")


class AMDIM(Method):
    name = "amdim"
    Config = AMDIMConfig

    def __init__(self, cfg, num_train: int | None = None):
        super().__init__(cfg, num_train)
        hp = self.hp
        if hp.local_stage != 4 and not hasattr(self.backbone, "layer4"):
            raise ConfigError("method.local_stage", hp.local_stage, "4 with a ViT backbone",
                              "a ViT has one map, its last block's patch tokens")
        channels, _, _ = feature_map_shape(self.backbone, cfg.data.channels, cfg.data.image_size, hp.local_stage)
        self.global_head = Conv1x1Embedding(self.feature_dim, hp.hidden_dim, hp.embed_dim)
        self.local_head = Conv1x1Embedding(channels, hp.hidden_dim, hp.embed_dim)
        self.estimator = local_global_nce if hp.estimator == "nce" else local_global_jsd

    def embed(self, x):
        """(global [N, D], local [N, h·w, D], pooled backbone features [N, F]) of images x."""
        fmap, h = feature_map(self.backbone, x, self.hp.local_stage)
        g = self.global_head(h[:, :, None, None]).flatten(1)
        local = self.local_head(fmap).flatten(2).transpose(1, 2)
        return g, local, h

    def contrast(self, g, local):
        """The estimator of globals ``g`` against the locals of every rank; image n's own at offset + n."""
        offset = sum(gather_sizes(local)[:rank()])
        positive = torch.arange(g.shape[0], device=g.device) + offset
        scale = self.hp.embed_dim ** -0.5 if self.hp.scale_scores else 1.0
        return self.estimator(g, gather_with_grad(local), positive, clip=self.hp.score_clip or None,
                              penalty=self.hp.score_penalty, scale=scale)

    def step(self, views, index) -> StepOutput:
        g1, l1, h1 = self.embed(views[0])
        g2, l2, _ = self.embed(views[1])
        loss_12, loss_21 = self.contrast(g1, l2), self.contrast(g2, l1)
        logs = {"loss_12": loss_12.detach(), "loss_21": loss_21.detach()}
        return StepOutput((loss_12 + loss_21) / 2, features=h1, logs=logs)
