"""Building the optimizer and its per-step learning-rate schedule from the config groups.

LARS is ``timm.optim.Lars``. It follows the LARS paper (You et al. 2017, Algorithm 1): the update
direction is ``g + wd·w`` scaled by the trust ratio ``η‖w‖ / (‖g‖ + wd‖w‖ + eps)``, then momentum.
It adapts a group only when that group's ``weight_decay != 0`` or its ``always_adapt`` is set; we set
``always_adapt`` per group from :func:`param_groups`'s ``layer_adaptation`` flag, so weights are
adapted even with ``weight_decay=0`` and the excluded biases/norms (``weight_decay=0``, no
adaptation) get plain SGD with momentum, as in SimCLR and BYOL. Two differences from SimCLR's
TensorFlow LARS, both the PyTorch convention (``torch.optim.SGD``, Barlow Twins, VICReg):

* the learning rate multiplies the momentum buffer (``w -= lr·v``) instead of entering it
  (``v = m·v + lr·λ·g``); identical under a constant lr, slightly different while the lr moves;
* SimCLR's trust ratio divides by ‖g + wd·w‖ where the paper (and timm) divide by ‖g‖ + wd‖w‖; with
  SimCLR's wd of 1e-6 the two agree to about wd‖w‖/‖g‖.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn
from omegaconf import OmegaConf
from torch.optim.lr_scheduler import LambdaLR

from ssl_zoo.errors import ConfigError, check
from ssl_zoo.optim.config import LR_SCALING_RULES, OptimizerConfig, SchedulerConfig
from ssl_zoo.optim.schedules import ConstantFactor, LrFactor, StepFactor, WarmupCosineFactor

# Last name components that are embeddings rather than weights: timm ViTs' ``no_weight_decay()`` set
# (pos_embed, cls_token, dist_token; DeiT, Touvron et al. 2021) plus register and mask tokens. They are
# 3-d, so the ndim rule alone would decay them towards zero (erasing position information).
NO_DECAY_NAMES = frozenset({"pos_embed", "cls_token", "dist_token", "reg_token", "mask_token"})
_RESERVED_EXTRA = frozenset({"params", "weight_decay", "layer_adaptation", "lr", "initial_lr"})


def effective_batch_size(batch_size: int, devices: int, num_nodes: int = 1,
                         accumulate_grad_batches: int = 1) -> int:
    """Samples per optimizer step: per-device batch × devices per node × nodes × accumulated batches."""
    for name, value in (("batch_size", batch_size), ("devices", devices), ("num_nodes", num_nodes),
                        ("accumulate_grad_batches", accumulate_grad_batches)):
        if int(value) < 1:
            raise ValueError(f"effective_batch_size: {name}={value!r} must be an integer >= 1")
    return int(batch_size) * int(devices) * int(num_nodes) * int(accumulate_grad_batches)


def scaled_lr(base_lr: float, global_batch: int, rule: str, reference_batch: int = 256) -> float:
    """The learning rate for ``global_batch`` given ``base_lr`` at ``reference_batch``.

    ``linear``: base × B / ref (Goyal et al. 2017; SimCLR's 0.3 × B/256, MoCo's 0.03 × B/256).
    ``sqrt``: base × sqrt(B / ref) (the LAMB paper, You et al. 2019; SimCLR's small-batch 0.075 × sqrt(B)
    is base 1.2 at ref 256). ``none``: base.
    """
    check(rule in LR_SCALING_RULES, "optimizer.lr_scaling", rule, "one of: " + ", ".join(LR_SCALING_RULES))
    if rule == "none":
        return float(base_lr)
    ratio = global_batch / reference_batch
    return float(base_lr) * (ratio if rule == "linear" else math.sqrt(ratio))


def _is_no_decay(name: str, param: nn.Parameter) -> bool:
    # ndim <= 1: every bias and every BatchNorm/LayerNorm/GroupNorm weight and bias (SimCLR, BYOL, DINO).
    return param.ndim <= 1 or name.endswith(".bias") or name.rsplit(".", 1)[-1] in NO_DECAY_NAMES


def param_groups(named_parameters: Iterable[tuple[str, nn.Parameter]], weight_decay: float,
                 exclude_bias_and_norm: bool = True, **extra: Any) -> list[dict]:
    """Split trainable parameters into a decayed, layer-adapted group and an excluded group.

    Excluded (with ``exclude_bias_and_norm``): parameters with ndim <= 1 (biases, normalisation
    weights and biases), names ending in ``.bias``, and ViT embeddings named in
    :data:`NO_DECAY_NAMES`. The excluded group has ``weight_decay=0`` and ``layer_adaptation=False``
    (no LARS/LAMB trust ratio), as SimCLR and BYOL do. Names are not searched for ``norm``/``bn``:
    normalisation parameters are 1-d anyway, and a 2-d weight in a module merely named so is a weight.
    Frozen parameters are skipped and empty groups dropped. ``extra`` is copied into each group (e.g.
    ``name="predictor", lr_scale=10.0`` or ``fixed_lr=True``); a ``name`` gets ``_no_decay`` appended in
    the excluded group, so that names stay unique.
    """
    reserved = _RESERVED_EXTRA & extra.keys()
    if reserved:
        raise ValueError(f"param_groups: {sorted(reserved)} are set here, not through extra "
                         "(use lr_scale for a group's learning rate)")
    decay, no_decay = [], []
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        (no_decay if exclude_bias_and_norm and _is_no_decay(name, param) else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": float(weight_decay), "layer_adaptation": True, **extra},
        {"params": no_decay, "weight_decay": 0.0, "layer_adaptation": False, **extra},
    ]
    if "name" in extra:  # group names must be unique (Lightning's LearningRateMonitor keys its curves by them)
        groups[1]["name"] = f"{extra['name']}_no_decay"
    return [g for g in groups if g["params"]]


def _typed(cfg: Any, schema: type, prefix: str) -> Any:
    """The dataclass for ``cfg`` (already one, or a DictConfig/dict of the group), validated."""
    if not isinstance(cfg, schema):
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), cfg))
    cfg.validate(prefix)
    return cfg


def _all_cuda(groups: list[dict]) -> bool:
    params = [p for g in groups for p in g["params"]]
    return bool(params) and all(p.is_cuda and p.is_floating_point() for p in params)


def build_optimizer(cfg: OptimizerConfig, groups: list[dict], global_batch: int) -> torch.optim.Optimizer:
    """The optimizer named by ``cfg`` over ``groups`` (from :func:`param_groups`).

    Each group's lr is ``scaled_lr(cfg.lr, global_batch, ...) × group["lr_scale"]`` (default 1), and
    is also stored as ``initial_lr``, the base the lr schedulers multiply. Groups without a
    ``weight_decay`` get ``cfg.weight_decay``; groups without ``layer_adaptation`` are adapted.
    """
    cfg = _typed(cfg, OptimizerConfig, "optimizer")
    if global_batch < 1:
        raise ValueError(f"build_optimizer: global_batch={global_batch!r} must be an integer >= 1")
    lr = scaled_lr(cfg.lr, global_batch, cfg.lr_scaling, cfg.reference_batch)
    built = []
    for i, group in enumerate(groups):
        if "lr" in group:
            raise ValueError(f"build_optimizer: group {i} sets 'lr'; give it an 'lr_scale' instead, so "
                             "that the optimizer.lr scaling rule applies to it too")
        group = dict(group, params=list(group["params"]))
        group.setdefault("weight_decay", cfg.weight_decay)
        group.setdefault("layer_adaptation", True)
        group["lr"] = group["initial_lr"] = lr * float(group.get("lr_scale", 1.0))
        if cfg.name in ("lars", "lamb"):
            # timm adapts a group iff weight_decay != 0 or always_adapt: a decayed group that asks for no
            # adaptation cannot be expressed, and is never what param_groups makes.
            if not group["layer_adaptation"] and group["weight_decay"] != 0:
                raise ValueError(f"build_optimizer: group {i} has layer_adaptation=False but weight_decay="
                                 f"{group['weight_decay']}; {cfg.name} adapts every decayed group")
            group["always_adapt"] = bool(group["layer_adaptation"])
        built.append(group)
    if not built:
        raise ValueError("build_optimizer: no parameter groups (is every parameter frozen?)")

    if cfg.name == "sgd":
        return torch.optim.SGD(built, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        # The fused CUDA kernel is one launch per step instead of one per tensor list; elsewhere torch
        # chooses foreach or the per-tensor loop itself.
        fused = {"fused": True} if _all_cuda(built) else {}
        return torch.optim.AdamW(built, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps,
                                 weight_decay=cfg.weight_decay, **fused)
    if cfg.name == "lars":
        from timm.optim import Lars

        return Lars(built, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay,
                    trust_coeff=cfg.trust_coefficient, eps=cfg.eps)
    if cfg.name == "lamb":
        from timm.optim import Lamb

        # timm clips the global gradient norm at 1 by default (NVIDIA's FusedLAMB); the LAMB paper does
        # not, and clipping belongs to trainer.gradient_clip_val, so it is off here.
        return Lamb(built, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay,
                    max_grad_norm=None)
    raise ConfigError("optimizer.name", cfg.name, "one of: sgd, adamw, lars, lamb")


def warmup_steps_of(cfg: SchedulerConfig, steps_per_epoch: int) -> int:
    """Warm-up length in optimizer steps: ``warmup_steps`` if set, else ``warmup_epochs`` × steps/epoch."""
    if cfg.warmup_steps is not None:
        return int(cfg.warmup_steps)
    return int(round(cfg.warmup_epochs * steps_per_epoch))


def build_scheduler(cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, total_steps: int,
                    steps_per_epoch: int) -> LambdaLR:
    """A ``LambdaLR`` to be stepped once per optimizer step, one factor per parameter group.

    Groups with ``fixed_lr=True`` keep their initial lr throughout (SimSiam's predictor, Chen & He
    2021). Step milestones are given in epochs and converted with ``steps_per_epoch`` (MoCo v1/v2's
    epoch decay, here per step as SimCLR/BYOL/MoCo v3 schedule). A warm-up or milestone beyond the run
    is kept (the run simply ends first) and reported with a warning.
    """
    cfg = _typed(cfg, SchedulerConfig, "scheduler")
    if total_steps < 1 or steps_per_epoch < 1:
        raise ValueError(f"build_scheduler: total_steps={total_steps!r} and "
                         f"steps_per_epoch={steps_per_epoch!r} must be integers >= 1")
    warmup = warmup_steps_of(cfg, steps_per_epoch)
    if warmup > total_steps:
        warnings.warn(f"scheduler: the warm-up ({warmup} steps) is longer than the run ({total_steps} "
                      "steps); the learning rate never reaches optimizer.lr", stacklevel=2)
    milestones = [int(round(epoch * steps_per_epoch)) for epoch in cfg.milestones]
    if cfg.name == "step" and any(m >= total_steps for m in milestones):
        warnings.warn(f"scheduler.milestones={list(cfg.milestones)} reach past the run "
                      f"({total_steps / steps_per_epoch:g} epochs); those decays never happen", stacklevel=2)

    def factor() -> LrFactor:
        # A fresh object per group (not one shared): LambdaLR saves and restores each one's state.
        if cfg.name == "warmup_cosine":
            return WarmupCosineFactor(total_steps, warmup, cfg.warmup_start_factor, cfg.min_lr_factor)
        if cfg.name == "step":
            return StepFactor(milestones, cfg.gamma, warmup, cfg.warmup_start_factor)
        return ConstantFactor(warmup, cfg.warmup_start_factor)

    return LambdaLR(optimizer, [ConstantFactor() if g.get("fixed_lr", False) else factor()
                                for g in optimizer.param_groups])
