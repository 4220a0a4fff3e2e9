"""CMC: Contrastive Multiview Coding (Tian, Krishnan & Isola 2019), the L / ab split of Lab colour.

    for x, i in loader:                                 # N RGB images, i their dataset indices
        l, ab = lab(x).split([1, 2])                     # two views: luminance and chrominance
        z_l  = normalize(W_l  f_l(l))                    # one encoder per view, 128-d embeddings
        z_ab = normalize(W_ab f_ab(ab))
        # objective=nce (the paper): contrast each view with the *other* view's memory bank
        loss = nce(z_l · V_ab[i] / T, z_l · V_ab[noise] / T) + nce(z_ab · V_l[i] / T, z_ab · V_l[noise] / T)
        V_l[i]  ← normalize(m V_l[i]  + (1 - m) z_l)     # after the loss, m = 0.5
        V_ab[i] ← normalize(m V_ab[i] + (1 - m) z_ab)
        # objective=infonce: in-batch InfoNCE in both directions, info_nce(z_l, z_ab) + info_nce(z_ab, z_l)

Shapes: x [N, 3, H, W] -> l [N, 1, H, W], ab [N, 2, H, W] -> z [N, 128]; banks [n_train, 128]. The
evaluated representation is the concatenation [f_l(l), f_ab(ab)] (the paper), so ``feature_dim`` is
the sum of the two encoders' widths.

Recipe (ImageNet, the official code): T = 0.07, bank momentum 0.5, 128-d, SGD lr 0.03, momentum 0.9, wd 1e-4,
lr x0.1 steps; crop (area 0.2-1) and flip only, no colour jitter (colour *is* a view); m = 4096 noise
samples per anchor. Deviations: both encoders are the configured backbone (``in_chans`` 1 and 2), with a
linear head to 128-d; the NCE normaliser Z of each direction is estimated at the first step and kept, as
InstDisc does. ``objective=infonce`` (in-batch negatives, no banks) is the softmax variant of CMC.
``bank_init=features`` (with ``normaliser_momentum`` below 1, as InstDisc and PIRL) starts each bank from
its encoder's embeddings of every training image instead of random rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssl_zoo.backbones import build_backbone
from ssl_zoo.distributed import gather_no_grad, gather_with_grad
from ssl_zoo.errors import ConfigError, check
from ssl_zoo.losses.contrastive import info_nce
from ssl_zoo.memory.bank import MemoryBank, check_bank_init
from ssl_zoo.methods._clustering import fill_from_training_set
from ssl_zoo.methods.base import Method, MethodConfig, StepOutput
from ssl_zoo.transforms.color import normalized_rgb_to_lab

OBJECTIVES = ("nce", "infonce")


@dataclass
class CMCConfig(MethodConfig):
    min_views = 1
    needs_colour = True
    name: str = "cmc"
    objective: str = "nce"
    embed_dim: int = 128
    temperature: float = 0.07
    num_negatives: int = 4096  # m noise samples per anchor (objective=nce)
    bank_momentum: float = 0.5
    normaliser_momentum: float = 1.0  # 1: NCE's Z fixed at the first step (the paper); < 1: a running mean
    shared_noise: bool = False  # one draw of the m noise rows for the whole batch (MemoryBank.nce_loss)
    bank_init: str = "random"  # or "features" (objective=nce, normaliser_momentum < 1): the encoders' embeddings

    def validate(self, prefix: str = "method") -> None:
        check(self.objective in OBJECTIVES, f"{prefix}.objective", self.objective, "one of: " + ", ".join(OBJECTIVES))
        check(self.embed_dim >= 1, f"{prefix}.embed_dim", self.embed_dim, "an integer >= 1")
        check(self.temperature > 0, f"{prefix}.temperature", self.temperature, "a number > 0")
        check(self.num_negatives >= 1, f"{prefix}.num_negatives", self.num_negatives, "an integer >= 1")
        check(0.0 <= self.bank_momentum < 1.0, f"{prefix}.bank_momentum", self.bank_momentum, "a number in [0, 1)")
        check(0.0 <= self.normaliser_momentum <= 1.0, f"{prefix}.normaliser_momentum", self.normaliser_momentum,
              "a number in [0, 1]")
        check_bank_init(prefix, self.bank_init, self.normaliser_momentum, uses_nce=self.objective == "nce")
        check(self.bank_init == "random" or self.objective == "nce", f"{prefix}.bank_init", self.bank_init,
              "random with objective=infonce, which keeps no memory banks")


class CMC(Method):
    name = "cmc"
    Config = CMCConfig

    def __init__(self, cfg, num_train: int | None = None):
        super().__init__(cfg, num_train)
        hp, size = self.hp, cfg.data.image_size
        # The base class built an RGB backbone; CMC needs one encoder per view instead.
        self.backbone, dim_l = build_backbone(cfg.backbone, size, 1)
        self.encoder_ab, dim_ab = build_backbone(cfg.backbone, size, 2)
        self.feature_dim = dim_l + dim_ab
        self.head_l, self.head_ab = nn.Linear(dim_l, hp.embed_dim), nn.Linear(dim_ab, hp.embed_dim)
        if hp.objective == "nce":
            if not num_train:
                raise ConfigError("method.objective", hp.objective, "infonce when the training-set size is unknown",
                                  "the NCE memory banks need one row per training image")
            self.bank_l = MemoryBank(num_train, hp.embed_dim, hp.bank_momentum,
                                     normaliser_momentum=hp.normaliser_momentum)
            self.bank_ab = MemoryBank(num_train, hp.embed_dim, hp.bank_momentum,
                                      normaliser_momentum=hp.normaliser_momentum)

    def split_views(self, x):
        lab = normalized_rgb_to_lab(x, self.cfg.data.mean, self.cfg.data.std)
        return lab[:, :1].contiguous(), lab[:, 1:].contiguous()

    def encode(self, x):
        """Backbone features of both views: ([N, D_l], [N, D_ab])."""
        lightness, ab = self.split_views(x)
        return self.backbone(lightness), self.encoder_ab(ab)

    def forward(self, images):
        return torch.cat(self.encode(images), dim=1)

    def embed_l(self, x):
        """The luminance view's embedding z_l [N, E] (normalised): what ``bank_l`` stores."""
        return F.normalize(self.head_l(self.backbone(self.split_views(x)[0])), dim=1)

    def embed_ab(self, x):
        """The chrominance view's embedding z_ab [N, E] (normalised): what ``bank_ab`` stores."""
        return F.normalize(self.head_ab(self.encoder_ab(self.split_views(x)[1])), dim=1)

    def on_train_start(self) -> None:
        if self.hp.objective == "nce" and self.hp.bank_init == "features":
            fill_from_training_set(self, self.embed_l, self.bank_l)
            fill_from_training_set(self, self.embed_ab, self.bank_ab)

    def contrast(self, z, bank: MemoryBank, index):
        """NCE of anchors z [N, E] against the other view's bank: positive its own row, m noise rows."""
        return bank.nce_loss(z, index, self.hp.num_negatives, self.hp.temperature,
                             shared_noise=self.hp.shared_noise)

    def step(self, views, index) -> StepOutput:
        h_l, h_ab = self.encode(views[0])
        z_l, z_ab = F.normalize(self.head_l(h_l), dim=1), F.normalize(self.head_ab(h_ab), dim=1)
        t = self.hp.temperature
        if self.hp.objective == "infonce":
            z_l, z_ab = gather_with_grad(z_l), gather_with_grad(z_ab)  # negatives from every rank
            loss_l, loss_ab = info_nce(z_l, z_ab, temperature=t), info_nce(z_ab, z_l, temperature=t)
        else:
            loss_l, loss_ab = self.contrast(z_l, self.bank_ab, index), self.contrast(z_ab, self.bank_l, index)
            all_index = gather_no_grad(index)  # every rank writes every rank's rows: the banks stay equal
            self.bank_l.update(all_index, gather_no_grad(z_l))
            self.bank_ab.update(all_index, gather_no_grad(z_ab))
        logs = {"loss_l": loss_l.detach(), "loss_ab": loss_ab.detach()}
        return StepOutput(loss_l + loss_ab, features=torch.cat([h_l, h_ab], dim=1), logs=logs)
