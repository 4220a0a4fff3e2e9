"""What every method shares, and nothing else: building the encoder, the optimizer and its per-step
schedule, running a multi-view batch, stepping momentum encoders, and logging.

A method subclasses :class:`Method`, declares its ``Config`` dataclass (the schema of
``conf/method/<name>.yaml``) and writes :meth:`Method.step`: views in, :class:`StepOutput` out.
Probes, the kNN monitor, checkpoint state and RNG live in callbacks (``ssl_zoo.callbacks``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from ssl_zoo.backbones import build_backbone
from ssl_zoo.errors import ConfigError
from ssl_zoo.memory import MomentumEncoder
from ssl_zoo.optim import build_optimizer, build_scheduler, effective_batch_size, param_groups


@dataclass
class MethodConfig:
    """Fields every method has; a method's own ``Config`` subclasses this.

    ``min_views`` (a class variable, not a config field): how many views the method's ``step`` needs;
    the config check stops a run whose augmentation yields fewer. ``needs_colour``: the method learns
    from the Lab colour channels (a and b), which are 0 on grey data; the config check stops it there.
    """

    min_views: ClassVar[int] = 2
    needs_colour: ClassVar[bool] = False
    name: str = ""


@dataclass
class StepOutput:
    """What :meth:`Method.step` returns.

    ``loss``: the scalar to minimise. ``features``: backbone features [B, D] of one view, reused by the
    online probe (so it costs no second forward pass). ``logs``: extra scalars to log under ``train/``.
    """

    loss: Tensor
    features: Tensor
    logs: dict[str, Any] = field(default_factory=dict)


class Method(pl.LightningModule):
    """Base LightningModule of every method. ``cfg`` is the whole validated run config."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig

    def __init__(self, cfg: DictConfig, num_train: int | None = None):
        """``cfg``: the validated run config. ``num_train``: training-set size, for methods that keep one
        entry per training image (memory banks, cluster assignments); ``None`` where unknown."""
        super().__init__()
        self.num_train = num_train
        self.save_hyperparameters({"cfg": OmegaConf.to_container(cfg, resolve=True)})
        self.cfg = cfg
        self.hp = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(self.Config), cfg.method))
        self.backbone, self.feature_dim = build_backbone(cfg.backbone, cfg.data.image_size, cfg.data.channels)
        self.channels_last = bool(cfg.trainer.get("channels_last", False))
        self._total_steps: int | None = None
        self._steps_per_epoch = 1
        self.batch_labels: Tensor | None = None

    def require_num_train(self, why: str) -> int:
        """The training-set size, for methods that keep one entry per training image; a one-line config
        error naming ``why`` when it is unknown."""
        if not self.num_train:
            raise ConfigError("method", self.name, "a data set of known size", why)
        return self.num_train

    # --- what a method writes -------------------------------------------------------------------
    def step(self, views: list[Tensor], index: Tensor) -> StepOutput:
        raise NotImplementedError(f"{type(self).__name__} must implement step(views, index)")

    def param_groups(self) -> list[dict]:
        """Optimizer groups; the default puts biases and norms in a no-decay group. Override to give a
        head its own learning rate (e.g. SimSiam's fixed-lr predictor)."""
        return param_groups(self.named_parameters(), self.cfg.optimizer.weight_decay,
                            self.cfg.optimizer.get("exclude_bias_and_norm", True))

    def param_groups_apart(self, module: str, lr_scale: float = 1.0, fixed_lr: bool = False) -> list[dict]:
        """The default groups for every parameter outside sub-module ``module``, then the same split of that
        sub-module's parameters at ``lr_scale`` times the lr, kept at its initial lr with ``fixed_lr``;
        with neither, simply the default groups (:meth:`Method.param_groups`)."""
        if lr_scale == 1.0 and not fixed_lr:
            return Method.param_groups(self)
        return self.param_groups_by_module({module: {"lr_scale": lr_scale, "fixed_lr": fixed_lr}})

    def param_groups_by_module(self, modules: dict[str, dict]) -> list[dict]:
        """The default groups for every parameter outside the sub-modules named (dotted) in ``modules``, then
        for each the same split of its parameters with that entry's ``lr_scale`` and ``fixed_lr``. A parameter
        belongs to the longest name that holds it, so ``head.last_layer`` can sit apart from the rest of ``head``."""
        wd = self.cfg.optimizer.weight_decay
        exclude = self.cfg.optimizer.get("exclude_bias_and_norm", True)
        longest_first = sorted(modules, key=len, reverse=True)
        owned: dict[str, list] = {name: [] for name in modules}
        rest = []
        for n, p in self.named_parameters():
            owner = next((m for m in longest_first if n.startswith(m + ".")), None)
            (owned[owner] if owner else rest).append((n, p))
        groups = param_groups(rest, wd, exclude)
        for name, options in modules.items():
            extra = {"lr_scale": options["lr_scale"]} if options.get("lr_scale", 1.0) != 1.0 else {}
            extra.update({"fixed_lr": True} if options.get("fixed_lr") else {})
            groups += param_groups(owned[name], wd, exclude, name=name, **extra)
        return groups

    # --- the shared loop ------------------------------------------------------------------------
    def forward(self, images: Tensor) -> Tensor:
        """Backbone features [B, D]: what evaluation and export use, from the backbone that
        :meth:`eval_backbone_prefix` names (the online ``backbone`` unless the method says otherwise)."""
        backbone = self.get_submodule(type(self).eval_backbone_prefix(self.cfg.method).rstrip("."))
        return backbone(self._format(images))

    @classmethod
    def eval_backbone_prefix(cls, method_cfg) -> str:
        """The checkpoint's state-dict prefix of the backbone that :meth:`forward` (evaluation) runs and
        ``ssl-zoo export`` writes: the online ``backbone.``, unless the method evaluates another copy."""
        return "backbone."

    def _format(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x

    def on_fit_start(self) -> None:
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def training_step(self, batch, batch_idx: int):
        views, labels, index = batch
        self.batch_labels = labels  # the batch's labels (-1 where unlabelled), for supervised methods' step()
        out = self.step([self._format(v) for v in views], index)
        self.log("train/loss", out.loss.detach(), prog_bar=True)
        for key, value in out.logs.items():
            self.log(f"train/{key}", value)
        return {"loss": out.loss, "features": out.features.detach(), "labels": labels}

    def total_steps(self) -> int:
        """Optimizer steps of the whole run, computed from the data module rather than with
        ``trainer.estimated_stepping_batches``: that builds the train loader before Lightning restores
        the checkpoint's loop state, and the loader would then restart a resumed epoch from its start."""
        trainer = self.trainer
        if self._total_steps is None:
            per_epoch = trainer.datamodule.train_batches_per_epoch(trainer.world_size)
            if trainer.limit_train_batches is not None and trainer.limit_train_batches != 1.0:
                limit = trainer.limit_train_batches
                per_epoch = int(limit) if isinstance(limit, int) or limit > 1 else int(per_epoch * limit)
            steps = max(per_epoch // trainer.accumulate_grad_batches, 1)
            total = steps * trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
            if trainer.max_steps != -1:
                total = trainer.max_steps if total is None else min(total, trainer.max_steps)
            self._total_steps, self._steps_per_epoch = max(int(total or 1), 1), steps
        return self._total_steps

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # Free the gradients now: Lightning zeroes them only between the next forward and its backward, so
        # the stale ones (4 bytes per parameter) would be held through the next forward's activation peak.
        optimizer.zero_grad(set_to_none=True)
        # EMA right after each optimizer step (not per accumulated micro-batch), and before any callback's
        # on_train_batch_end, so a checkpoint written at this step already holds the updated target.
        step, total = self.global_step, self.total_steps()
        for i, encoder in enumerate(m for m in self.modules() if isinstance(m, MomentumEncoder)):
            tau = encoder.update(step - 1, total)
            self.log(f"train/momentum{'' if i == 0 else i}", tau)

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0):
        images, labels = batch
        return {"features": self(images), "labels": labels}

    def configure_optimizers(self):
        trainer, cfg = self.trainer, self.cfg
        global_batch = effective_batch_size(cfg.data.batch_size, trainer.num_devices, trainer.num_nodes,
                                            trainer.accumulate_grad_batches)
        optimizer = build_optimizer(cfg.optimizer, self.param_groups(), global_batch)
        total_steps = self.total_steps()
        scheduler = build_scheduler(cfg.scheduler, optimizer, total_steps, self._steps_per_epoch)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
