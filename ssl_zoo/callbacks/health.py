"""Representation health at every validation: RankMe, alignment, uniformity, normalised std, collapse flag.

Measured on the backbone features (what the kNN monitor and the probes see) of the validation split
(the second validation loader; at most ``max_samples`` images per rank, in the loader's fixed order).
Alignment needs two views of each image: the evaluation view and a deterministic second view of it
(:func:`ssl_zoo.eval.health.second_view`: centre crop of 3/4 side, resized back, flipped), one extra
forward pass of those images without gradients, in eval mode, drawing no random numbers -- so the
measurement changes nothing a resumed run depends on. Logged as ``val/rankme``, ``val/alignment``,
``val/uniformity``, ``val/feature_std`` and ``val/collapsed`` (1.0 when the normalised std falls below
``collapse_std / sqrt(D)`` or RankMe below ``collapse_rank``; a warning is logged then too).
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch

from ssl_zoo.distributed import gather_no_grad
from ssl_zoo.eval.health import alignment, is_collapsed, normalised_std, rankme, second_view, uniformity

log = logging.getLogger(__name__)


class RepresentationHealth(pl.Callback):
    def __init__(self, max_samples: int = 2048, collapse_std: float = 0.1, collapse_rank: float = 2.0,
                 loader_index: int = 1):
        self.max_samples, self.collapse_std, self.collapse_rank = max_samples, collapse_std, collapse_rank
        self.loader_index = loader_index
        self.last: dict[str, float] = {}
        self._view1: list[torch.Tensor] = []
        self._view2: list[torch.Tensor] = []
        self._seen = 0

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._view1, self._view2, self._seen = [], [], 0

    @torch.no_grad()
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if dataloader_idx != self.loader_index or self._seen >= self.max_samples:
            return
        take = min(self.max_samples - self._seen, len(outputs["features"]))
        images = batch[0][:take]
        self._view1.append(outputs["features"][:take].detach().float())
        self._view2.append(pl_module(second_view(images)).detach().float())
        self._seen += take

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not self._view1 or trainer.sanity_checking:
            return
        view1 = gather_no_grad(torch.cat(self._view1))
        view2 = gather_no_grad(torch.cat(self._view2))
        self._view1, self._view2 = [], []
        std, rank = normalised_std(view1), rankme(view1)
        collapsed = is_collapsed(std, rank, view1.shape[1], self.collapse_std, self.collapse_rank)
        self.last = {"rankme": rank, "alignment": alignment(view1, view2), "feature_std": std,
                     "collapsed": float(collapsed)}
        if len(view1) >= 2:
            self.last["uniformity"] = uniformity(view1)
        for key, value in self.last.items():
            pl_module.log(f"val/{key}", value)
        if collapsed and trainer.is_global_zero:
            log.warning("representation collapse at step %d: RankMe %.2f (threshold %.2f), normalised std %.4f "
                        "(threshold %.4f = monitor.collapse_std / sqrt(%d))", trainer.global_step, rank,
                        self.collapse_rank, std, self.collapse_std / view1.shape[1] ** 0.5, view1.shape[1])
