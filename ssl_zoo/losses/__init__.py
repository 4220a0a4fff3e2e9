"""Losses of the zoo: pure functions of tensors, each citing its paper.

Nothing here keeps state or talks to other ranks: negatives from all ranks, Sinkhorn sums or DINO's
centre are gathered or reduced by the caller and passed in, so every loss can be checked against its
formula on one process.
"""

from ssl_zoo.losses.clustering import sinkhorn, swav_loss
from ssl_zoo.losses.contrastive import estimate_nce_normaliser, info_nce, nce, nt_xent, supcon
from ssl_zoo.losses.distillation import dino_center_update, dino_loss
from ssl_zoo.losses.generative import mae_loss, patchify, unpatchify, vae_loss
from ssl_zoo.losses.metric import contrastive, lifted_structured, n_pair, triplet
from ssl_zoo.losses.negative_free import (
    barlow_twins_loss,
    barlow_twins_terms,
    byol_loss,
    simsiam_loss,
    vicreg_loss,
    vicreg_terms,
)
from ssl_zoo.losses.uniformity import align_loss, uniform_loss

__all__ = [
    "align_loss", "barlow_twins_loss", "barlow_twins_terms", "byol_loss", "contrastive", "dino_center_update",
    "dino_loss", "estimate_nce_normaliser", "info_nce", "lifted_structured", "mae_loss", "n_pair", "nce",
    "nt_xent", "patchify", "simsiam_loss", "sinkhorn", "supcon", "swav_loss", "triplet", "uniform_loss",
    "unpatchify", "vae_loss", "vicreg_loss", "vicreg_terms",
]
