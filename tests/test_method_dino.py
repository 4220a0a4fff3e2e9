"""DINO (Caron et al. 2021): the head, the teacher temperature warm-up, the centre buffer, the frozen
last layer and the weight-decay ramp."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import tiny

from ssl_zoo.cli import compose
from ssl_zoo.errors import ConfigError
from ssl_zoo.heads.dino_head import DINOHead
from ssl_zoo.losses.distillation import dino_center_update
from ssl_zoo.methods import METHODS
from ssl_zoo.optim import build_optimizer


def build(*extra: str):
    torch.manual_seed(0)
    cfg = compose(tiny("dino", *extra))
    return cfg, METHODS["dino"](cfg, num_train=64)


def views(batch: int = 8, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, 16, 16, generator=g) for _ in range(2)] + \
           [torch.randn(batch, 3, 7, 7, generator=g) for _ in range(8)]


def test_head_prototypes_have_unit_norm_and_a_frozen_scale_with_norm_last_layer():
    head = DINOHead(12, 20, hidden_dim=16, bottleneck_dim=6, norm_last_layer=True)
    scale = head.last_layer.parametrizations.weight.original0
    assert not scale.requires_grad
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(20))
    free = DINOHead(12, 20, hidden_dim=16, bottleneck_dim=6, norm_last_layer=False)
    assert free.last_layer.parametrizations.weight.original0.requires_grad
    assert head(torch.randn(4, 12)).shape == (4, 20)


@pytest.mark.parametrize("overrides,per_epoch,expected", [
    (["method.warmup_teacher_temp_steps=null", "method.warmup_teacher_temp_epochs=3"], 10,
     {0: 0.04, 15: 0.055, 30: 0.07, 100: 0.07}),
    (["method.warmup_teacher_temp_steps=4"], 10, {0: 0.04, 2: 0.055, 4: 0.07}),
])
def test_teacher_temperature_warms_up_linearly_then_holds(overrides, per_epoch, expected):
    _, model = build(*overrides)
    for step, temperature in expected.items():
        model._step_and_epoch_length = lambda s=step: (s, per_epoch)
        assert model.teacher_temperature() == pytest.approx(temperature)


def test_center_is_a_buffer_moved_towards_the_teachers_batch_mean():
    _, model = build()
    assert "center" in model.state_dict()
    v = views()
    with torch.no_grad():
        teacher = model.teacher(torch.cat(v[:2]))  # same BN batch statistics as inside the step
    model.step(v, torch.arange(8))
    expected = dino_center_update(torch.zeros(1, 16), teacher, momentum=model.hp.center_momentum)
    torch.testing.assert_close(model.center, expected)
    assert model.center.abs().sum() > 0


def test_last_layer_gets_no_gradient_in_the_first_epoch_and_decay_follows_its_cosine():
    cfg, model = build("method.freeze_last_layer_epochs=1", "optimizer.weight_decay=0.04",
                       "method.weight_decay_end=0.4")
    optimizer = build_optimizer(cfg.optimizer, model.param_groups(), 256)
    model._total_steps, model._steps_per_epoch = 20, 10
    last = list(model.head.last_layer.parameters())
    for step, epoch in ((0, 0), (10, 1), (20, 2)):
        model.zero_grad()
        model.step(views(), torch.arange(8)).loss.backward()
        model._trainer = SimpleNamespace(current_epoch=epoch, global_step=step)
        model.on_before_optimizer_step(optimizer)
        trainable = [p for p in last if p.requires_grad]
        assert trainable and all((p.grad is None) == (epoch == 0) for p in trainable), epoch
        assert model.head.mlp[0].weight.grad is not None
        decayed = [g["weight_decay"] for g in optimizer.param_groups if g["layer_adaptation"]]
        excluded = [g["weight_decay"] for g in optimizer.param_groups if not g["layer_adaptation"]]
        assert decayed == [pytest.approx({0: 0.04, 10: 0.22, 20: 0.4}[step])] and excluded == [0.0]


def test_a_vit_without_dynamic_image_size_is_refused_with_multicrop_views():
    with pytest.raises(ConfigError, match="dynamic_img_size"):
        build("backbone=vit_tiny", "backbone.patch_size=4")


@pytest.mark.parametrize("reads", ["teacher", "student"])
def test_evaluation_and_export_read_the_teacher_by_default(reads, tmp_path):
    """The reference evaluates the teacher (``--checkpoint_key teacher``); ``eval_encoder=student`` the student.
    The teacher's BN statistics are the student's (copied at every update)."""
    from omegaconf import OmegaConf

    from ssl_zoo.eval.export import export_to_file

    cfg, model = build(f"method.eval_encoder={reads}")
    model.train()
    model.step(views(), torch.arange(8))                       # both forwards move their BN statistics
    with torch.no_grad():
        for p in model.teacher.encoder[0].parameters():
            p.add_(0.1 * torch.randn_like(p))                  # the two backbones now differ
    model.teacher.update(0, 10)
    teacher_stats, student_stats = (dict(m.named_buffers())["bn1.running_mean"]
                                    for m in (model.teacher.encoder[0], model.backbone))
    torch.testing.assert_close(teacher_stats, student_stats)
    model.eval()
    x = torch.randn(4, 3, 16, 16)
    evaluated = model.teacher.encoder[0] if reads == "teacher" else model.backbone
    torch.testing.assert_close(model(x), evaluated(x))
    other = model.backbone if reads == "teacher" else model.teacher.encoder[0]
    assert not torch.allclose(model(x), other(x))
    ckpt = {"state_dict": model.state_dict(), "hyper_parameters": {"cfg": OmegaConf.to_container(cfg, resolve=True)},
            "global_step": 1, "epoch": 0}
    torch.save(ckpt, tmp_path / "run.ckpt")
    export_to_file(str(tmp_path / "run.ckpt"), str(tmp_path / "backbone.pt"), "timm")
    exported = torch.load(tmp_path / "backbone.pt", weights_only=True)
    for name, value in evaluated.state_dict().items():
        torch.testing.assert_close(exported[name.replace("_orig_mod.", "")], value)


@pytest.mark.parametrize("reads", ["teacher", "student"])
def test_the_online_probe_trains_on_the_encoder_that_evaluation_reads(reads):
    """The probe is validated on ``forward()`` (the teacher by default), so it must learn on that encoder's
    features, not the student's: trained on one and validated on the other it reads chance."""
    _, model = build(f"method.eval_encoder={reads}")
    model.train()
    with torch.no_grad():
        for p in model.teacher.encoder[0].parameters():
            p.add_(0.1 * torch.randn_like(p))                  # the two backbones differ
    v = views()
    out = model.step(v, torch.arange(8))
    with torch.no_grad():
        # one pass over both global crops (BN over both), as the step's
        teacher, student = (encoder(torch.cat(v[:2]))[:8] for encoder in (model.teacher.encoder[0], model.backbone))
    expected, other = (teacher, student) if reads == "teacher" else (student, teacher)
    torch.testing.assert_close(out.features, expected)
    assert not torch.allclose(out.features, other)
