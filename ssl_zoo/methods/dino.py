"""DINO: Emerging Properties in Self-Supervised Vision Transformers (Caron et al. 2021).

    for x in loader:                                   # multi-crop: 2 global + V-2 local crops
        s = h_s(f_s(crops))                            # student: every crop (one pass per crop size)
        with no_grad:
            t = h_t(f_t(global crops))                 # teacher: EMA of the student, global crops only
        loss = mean_{i, v≠i} CE(softmax((t_i - c) / T_t), softmax(s_v / T_s))   # centring + sharpening
        c ← m c + (1 - m) mean(t)                      # over the global batch (all-reduced), m = 0.9
        θ_t ← τ θ_t + (1 - τ) θ_s,  τ: 0.996 -> 1 cosine

Head: 3-layer MLP 2048 wide with GELU to a 256-d bottleneck, L2 normalisation, weight-normalised
linear layer onto 65536 prototypes (its scale frozen at 1 with ``norm_last_layer``), frozen (no
gradient) during the first epoch. Teacher temperature warms up linearly from 0.04 to 0.07 over 30
epochs, student temperature 0.1. AdamW, lr 5e-4 x B/256 with 10 warm-up epochs then cosine to 1e-6,
weight decay cosine from 0.04 to 0.4 on the decayed parameters, gradient clipping at 3.0.
Paper: ViT-S/16 77.0% linear / 74.5% k-NN; the README's 100-epoch ViT-S/16 run 74.0% / 69.3%.

Deviations: the warm-up of the teacher temperature is linear per step (the reference holds one value
per epoch); clipping is Lightning's global gradient norm (``trainer.gradient_clip_val``), where the
reference clips each parameter's gradient on its own; the frozen last layer is left out of that norm.

Evaluation and export read the teacher's backbone (``eval_encoder=teacher``), as the reference's k-NN and
linear evaluations do by default (``--checkpoint_key teacher``; the paper's Fig. 6 finds the teacher
better than the student throughout training); ``eval_encoder=student`` reads the student. The online
probe trains on the same encoder's features (the teacher's of the first global crop, from its own pass),
since it is validated on what evaluation reads. Deviation: the
teacher's BN running statistics are the student's, copied at every update as for every momentum encoder
here, where the reference's teacher gathers its own. Measured on the default budget
(``experiment=fashion_mnist_budget method=dino augmentation=grey method.out_dim=4096
method.freeze_last_layer_epochs=0 method.base_momentum=0.99``, BENCHMARKS.md): kNN 73.13 from the teacher
with the student's statistics, 70.07 from the teacher with its own, 70.54 from the student.
``head_lr_scale`` (1, the paper's, by default) multiplies the student head's learning rate, as BYOL's
``pred_lr_scale`` does its predictor's, and ``last_layer_lr_scale`` that of the head's last layer (the
prototypes) on top, as SwAV's ``prototypes_lr_scale``: options for short schedules, not the paper's recipe.
On the default budget the last layer at 300x (with the paper's 65,536 prototypes, no frozen epoch and 100
warm-up steps) is what lifts the teacher above its random init at three seeds (BENCHMARKS.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ssl_zoo.distributed import all_reduce_sum, is_distributed
from ssl_zoo.errors import check
from ssl_zoo.heads.dino_head import DINOHead
from ssl_zoo.losses.distillation import dino_center_update, dino_loss
from ssl_zoo.memory import MomentumEncoder
from ssl_zoo.methods._multicrop import check_backbone_takes_every_crop_size, encode_by_resolution, num_global_views
from ssl_zoo.methods.base import Method, MethodConfig, StepOutput
from ssl_zoo.optim import cosine_schedule, linear_warmup


@dataclass
class DINOConfig(MethodConfig):
    name: str = "dino"
    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    head_layers: int = 3
    use_bn_in_head: bool = False
    norm_last_layer: bool = True
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: float = 30.0
    warmup_teacher_temp_steps: Optional[int] = None  # noqa: UP045 (set: wins over the epochs)
    center_momentum: float = 0.9
    base_momentum: float = 0.996
    final_momentum: float = 1.0
    freeze_last_layer_epochs: int = 1
    weight_decay_end: Optional[float] = 0.4  # noqa: UP045 (null: optimizer.weight_decay throughout)
    eval_encoder: str = "teacher"           # the backbone evaluation and export read: teacher or student
    head_lr_scale: float = 1.0              # the student head's lr relative to the backbone's (1: the paper's)
    last_layer_lr_scale: float = 1.0        # the head's last layer (prototypes) relative to the rest of the head

    def validate(self, prefix: str = "method") -> None:
        for key in ("out_dim", "hidden_dim", "bottleneck_dim", "head_layers"):
            check(getattr(self, key) >= 1, f"{prefix}.{key}", getattr(self, key), "an integer >= 1")
        for key in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
            check(getattr(self, key) > 0, f"{prefix}.{key}", getattr(self, key), "a number > 0")
        check(self.warmup_teacher_temp_epochs >= 0, f"{prefix}.warmup_teacher_temp_epochs",
              self.warmup_teacher_temp_epochs, "a number >= 0")
        check(self.warmup_teacher_temp_steps is None or self.warmup_teacher_temp_steps >= 0,
              f"{prefix}.warmup_teacher_temp_steps", self.warmup_teacher_temp_steps, "null or an integer >= 0")
        check(0.0 <= self.center_momentum <= 1.0, f"{prefix}.center_momentum", self.center_momentum,
              "a number in [0, 1]")
        check(0.0 <= self.base_momentum <= 1.0, f"{prefix}.base_momentum", self.base_momentum, "a number in [0, 1]")
        check(self.base_momentum <= self.final_momentum <= 1.0, f"{prefix}.final_momentum", self.final_momentum,
              f"a number in [method.base_momentum={self.base_momentum}, 1]")
        check(self.head_lr_scale > 0, f"{prefix}.head_lr_scale", self.head_lr_scale, "a number > 0")
        check(self.last_layer_lr_scale > 0, f"{prefix}.last_layer_lr_scale", self.last_layer_lr_scale, "a number > 0")
        check(self.eval_encoder in ("teacher", "student"), f"{prefix}.eval_encoder", self.eval_encoder,
              "teacher or student")
        check(self.freeze_last_layer_epochs >= 0, f"{prefix}.freeze_last_layer_epochs",
              self.freeze_last_layer_epochs, "an integer >= 0")
        check(self.weight_decay_end is None or self.weight_decay_end >= 0, f"{prefix}.weight_decay_end",
              self.weight_decay_end, "null or a number >= 0")


class DINO(Method):
    name = "dino"
    Config = DINOConfig

    def __init__(self, cfg, num_train: int | None = None):
        super().__init__(cfg, num_train)
        hp = self.hp
        check_backbone_takes_every_crop_size(self.backbone, cfg.augmentation)
        self.num_teacher_views = num_global_views(cfg.augmentation)
        self.head = DINOHead(self.feature_dim, hp.out_dim, hp.hidden_dim, hp.bottleneck_dim, hp.head_layers,
                             use_bn=hp.use_bn_in_head, norm_last_layer=hp.norm_last_layer)
        self.teacher = MomentumEncoder(self.backbone, self.head, base_momentum=hp.base_momentum,
                                       final_momentum=hp.final_momentum)
        self.register_buffer("center", torch.zeros(1, hp.out_dim))

    @classmethod
    def eval_backbone_prefix(cls, method_cfg) -> str:
        return "teacher.encoder.0." if method_cfg.get("eval_encoder", "teacher") == "teacher" else "backbone."

    def param_groups(self) -> list[dict]:
        hp = self.hp
        if hp.last_layer_lr_scale == 1.0:
            return self.param_groups_apart("head", lr_scale=hp.head_lr_scale)
        return self.param_groups_by_module({"head": {"lr_scale": hp.head_lr_scale},
                                            "head.last_layer": {"lr_scale": hp.head_lr_scale * hp.last_layer_lr_scale}})

    # --- schedules (functions of the optimizer step) -------------------------------------------
    def _step_and_epoch_length(self) -> tuple[int, int]:
        if self._trainer is None:  # a bare module (tests, notebooks): the first step
            return 0, 1
        self.total_steps()
        return self.global_step, self._steps_per_epoch

    def teacher_temperature(self) -> float:
        """T_t at the current step: linear from ``warmup_teacher_temp`` to ``teacher_temp``, then held."""
        hp = self.hp
        step, per_epoch = self._step_and_epoch_length()
        warmup = hp.warmup_teacher_temp_steps
        if warmup is None:
            warmup = int(round(hp.warmup_teacher_temp_epochs * per_epoch))
        return linear_warmup(hp.warmup_teacher_temp, hp.teacher_temp, step, warmup)

    def weight_decay_at(self, step: int) -> float:
        """Weight decay of the decayed parameters at ``step``: cosine from optimizer.weight_decay to
        ``weight_decay_end`` over the run."""
        start = float(self.cfg.optimizer.weight_decay)
        end = start if self.hp.weight_decay_end is None else float(self.hp.weight_decay_end)
        return cosine_schedule(start, end, step, self.total_steps())

    def on_before_optimizer_step(self, optimizer) -> None:
        # Per step, as the reference's schedules: only the decayed group follows the ramp (biases, norms
        # and ViT tokens stay at 0 with optimizer.exclude_bias_and_norm).
        if self.hp.weight_decay_end is not None:
            wd = self.weight_decay_at(self.global_step)
            for group in optimizer.param_groups:
                if group.get("layer_adaptation", True):
                    group["weight_decay"] = wd
        # The reference keeps the prototypes still while the rest settles: dropping the gradient skips
        # them in the optimizer entirely (no decay, no moment update).
        if self.current_epoch < self.hp.freeze_last_layer_epochs:
            for p in self.head.last_layer.parameters():
                p.grad = None

    # --- the method ------------------------------------------------------------------------------
    def step(self, views, index) -> StepOutput:
        hp = self.hp
        batch = views[0].shape[0]
        n_teacher = min(self.num_teacher_views, len(views))
        features = encode_by_resolution(self.backbone, views)
        student = self.head(torch.cat(features)).split(batch)
        with torch.no_grad():
            teacher_backbone, teacher_head = self.teacher.encoder
            teacher_features = teacher_backbone(torch.cat(views[:n_teacher]))
            teacher = teacher_head(teacher_features).split(batch)
        temperature = self.teacher_temperature()
        loss = dino_loss(student, teacher, self.center, hp.student_temp, temperature)
        reduce = all_reduce_sum if is_distributed() else None
        self.center.copy_(dino_center_update(self.center, teacher, hp.center_momentum, all_reduce=reduce))
        logs = {"teacher_temp": temperature}
        if self._trainer is not None and hp.weight_decay_end is not None:
            logs["weight_decay"] = self.weight_decay_at(self.global_step)  # what this step's update uses
        # The online probe learns on the encoder that evaluation reads (its validation features come from
        # forward()): the teacher's features of the first global crop, which its pass has already computed.
        probe = teacher_features[:batch] if hp.eval_encoder == "teacher" else features[0]
        return StepOutput(loss, features=probe, logs=logs)
