"""Representation health at every validation: RankMe, alignment, uniformity, normalised std, collapse flag.

Measured on the backbone features (what the kNN monitor and the probes see) of the validation split
(the second validation loader; at most ``max_samples`` images per rank, in the loader's fixed order).
Alignment needs two views of each image: the evaluation view and a deterministic second view of it
(:func:`ssl_zoo.eval.health.second_view`: centre crop of 3/4 side, resized back, flipped), one extra
forward pass of those images without gradients, in eval mode, drawing no random numbers -- so the
measurement changes nothing a resumed run depends on. Logged as ``val/rankme``, ``val/alignment``,
``val/uniformity``, ``val/feature_std`` and ``val/collapsed`` (1.0 when the normalised std falls below
``collapse_std / sqrt(D)`` or RankMe below ``collapse_rank``; a warning is logged then too).

Partial (dimensional) collapse: from the second validation on, ``val/rank_kept`` is RankMe over the first
validation's RankMe (the random init's when the run validates before its first step, as the default run
does), and a warning is logged when it falls below ``rank_fraction``. Measured on the default budget: runs
whose kNN beat the random init kept 0.68-2.06 of the random init's rank (SimCLR, SimCLR v2, MoCo v1, SupCon
0.68-0.73; InvaSpread and InstDisc's softmax about 2); BYOL and MoCo v3 with SimCLR's settings kept 0.22
and 0.29 and lost 10.6 and 6.6 kNN points, InstDisc with NCE 0.09 (BENCHMARKS.md).
The first RankMe is in the checkpoint (``state_dict``), so a resumed run compares against the same value.
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
                 loader_index: int = 1, rank_fraction: float = 0.4):
        self.max_samples, self.collapse_std, self.collapse_rank = max_samples, collapse_std, collapse_rank
        self.loader_index, self.rank_fraction = loader_index, rank_fraction
        self.first_rank: float | None = None
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
        if self.first_rank is None:
            self.first_rank = rank
        elif self.first_rank > 0:
            self.last["rank_kept"] = rank / self.first_rank
        for key, value in self.last.items():
            pl_module.log(f"val/{key}", value)
        if collapsed and trainer.is_global_zero:
            log.warning("representation collapse at step %d: RankMe %.2f (threshold %.2f), normalised std %.4f "
                        "(threshold %.4f = monitor.collapse_std / sqrt(%d))", trainer.global_step, rank,
                        self.collapse_rank, std, self.collapse_std / view1.shape[1] ** 0.5, view1.shape[1])
        elif self.last.get("rank_kept", 1.0) < self.rank_fraction and trainer.is_global_zero:
            log.warning("partial collapse at step %d: RankMe %.1f is %.2f of the first validation's %.1f "
                        "(threshold monitor.collapse_rank_fraction=%.2f): the representation lost dimensions; "
                        "a lower learning rate or a faster-moving target usually helps", trainer.global_step,
                        rank, self.last["rank_kept"], self.first_rank, self.rank_fraction)

    def state_dict(self) -> dict:
        return {"first_rank": self.first_rank}

    def load_state_dict(self, state_dict: dict) -> None:
        self.first_rank = state_dict.get("first_rank")
