"""Optimizers, learning-rate scaling, parameter groups and per-step schedules, against formulas
written out by hand (LARS: You et al. 2017, Algorithm 1; cosine: Loshchilov & Hutter 2017)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn as nn
from conftest import tiny
from omegaconf import OmegaConf

from ssl_zoo.cli import compose
from ssl_zoo.errors import ConfigError
from ssl_zoo.optim import (
    OptimizerConfig,
    SchedulerConfig,
    build_optimizer,
    build_scheduler,
    cosine_schedule,
    effective_batch_size,
    linear_warmup,
    param_groups,
    scaled_lr,
)
from ssl_zoo.train import train

CONF = Path(__file__).resolve().parent.parent / "conf"
ETA, WD, MOM, LR, EPS = 0.001, 0.05, 0.9, 0.7, 1e-8


def _lars_params() -> list[tuple[str, nn.Parameter]]:
    g = torch.Generator().manual_seed(0)
    return [
        ("fc.weight", nn.Parameter(torch.randn(4, 6, generator=g, dtype=torch.float64))),
        ("fc.bias", nn.Parameter(torch.randn(4, generator=g, dtype=torch.float64))),
        ("bn.weight", nn.Parameter(1 + 0.1 * torch.randn(4, generator=g, dtype=torch.float64))),
    ]


def _grads(seed: int, params: list[tuple[str, nn.Parameter]]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: 3.0 * torch.randn(p.shape, generator=g, dtype=torch.float64) for name, p in params}


def _lars(exclude: bool, weight_decay: float = WD, foreach: bool = False):
    """LARS over a weight, a bias and a BN weight; ``foreach`` picks timm's multi-tensor path, the one
    CUDA uses, so the CPU tests cover both."""
    named = _lars_params()
    cfg = OptimizerConfig(name="lars", lr=LR, lr_scaling="none", weight_decay=weight_decay, momentum=MOM,
                          trust_coefficient=ETA, eps=EPS, exclude_bias_and_norm=exclude)
    opt = build_optimizer(cfg, param_groups(named, weight_decay, exclude), global_batch=256)
    for group in opt.param_groups:
        group["foreach"] = foreach
    return opt, dict(named)


def _run_two_steps(opt, params) -> dict[str, tuple[torch.Tensor, ...]]:
    """Two optimizer steps with different gradients; returns (w0, g1, g2, w2) per parameter."""
    w0 = {n: p.detach().clone() for n, p in params.items()}
    g1, g2 = _grads(1, list(params.items())), _grads(2, list(params.items()))
    for grads in (g1, g2):
        for n, p in params.items():
            p.grad = grads[n].clone()
        opt.step()
    return {n: (w0[n], g1[n], g2[n], p.detach().clone()) for n, p in params.items()}


def _lars_reference(w0, g1, g2, wd, adapt):
    """You et al. 2017, Algorithm 1 with the PyTorch placement of lr: λ = η‖w‖/(‖g‖ + wd‖w‖ + eps),
    d = λ(g + wd w) (or g alone when neither adapted nor decayed), v = m v + d, w -= lr v."""

    def direction(w, g):
        if not adapt:
            return g + wd * w
        trust = ETA * w.norm() / (g.norm() + wd * w.norm() + EPS)
        return trust * (g + wd * w)

    v1 = direction(w0, g1)
    w1 = w0 - LR * v1
    v2 = MOM * v1 + direction(w1, g2)
    return w1 - LR * v2


@pytest.mark.parametrize("foreach", [False, True])
def test_lars_two_steps_match_the_paper_formula_for_weights_and_sgd_for_excluded(foreach):
    opt, params = _lars(exclude=True, foreach=foreach)
    out = _run_two_steps(opt, params)
    w0, g1, g2, w2 = out["fc.weight"]
    torch.testing.assert_close(w2, _lars_reference(w0, g1, g2, WD, adapt=True), rtol=1e-12, atol=1e-14)
    for name in ("fc.bias", "bn.weight"):  # plain SGD with momentum: no decay, no trust ratio
        w0, g1, g2, w2 = out[name]
        torch.testing.assert_close(w2, w0 - LR * g1 - LR * (MOM * g1 + g2), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("foreach", [False, True])
def test_lars_without_exclusion_adapts_and_decays_bias_and_norm(foreach):
    opt, params = _lars(exclude=False, foreach=foreach)
    out = _run_two_steps(opt, params)
    for name in ("fc.weight", "fc.bias", "bn.weight"):
        w0, g1, g2, w2 = out[name]
        torch.testing.assert_close(w2, _lars_reference(w0, g1, g2, WD, adapt=True), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("foreach", [False, True])
def test_lars_adapts_weights_even_with_zero_weight_decay(foreach):
    # timm adapts only groups with weight_decay != 0 unless always_adapt; the weights must still get
    # their trust ratio when a user sets optimizer.weight_decay=0.
    opt, params = _lars(exclude=True, weight_decay=0.0, foreach=foreach)
    out = _run_two_steps(opt, params)
    w0, g1, g2, w2 = out["fc.weight"]
    torch.testing.assert_close(w2, _lars_reference(w0, g1, g2, 0.0, adapt=True), rtol=1e-12, atol=1e-14)
    w0, g1, g2, w2 = out["fc.bias"]
    torch.testing.assert_close(w2, _lars_reference(w0, g1, g2, 0.0, adapt=False), rtol=1e-12, atol=1e-14)


def test_lamb_first_step_is_trust_scaled_adam_for_weights_and_plain_adam_for_excluded():
    named = _lars_params()
    params = dict(named)
    cfg = OptimizerConfig(name="lamb", lr=LR, lr_scaling="none", weight_decay=WD, eps=1e-6)
    opt = build_optimizer(cfg, param_groups(named, WD), global_batch=256)
    w0 = {n: p.detach().clone() for n, p in params.items()}
    grads = _grads(1, named)
    for n, p in params.items():
        p.grad = grads[n].clone()
    opt.step()
    # First step: bias-corrected moments are g and g², so Adam's direction is g / (|g| + eps).
    w, g = w0["fc.weight"], grads["fc.weight"]
    u = g / (g.abs() + 1e-6) + WD * w
    expected = w - LR * (w.norm() / u.norm()) * u
    torch.testing.assert_close(params["fc.weight"].detach(), expected, rtol=1e-10, atol=1e-12)
    b, gb = w0["fc.bias"], grads["fc.bias"]
    expected = b - LR * gb / (gb.abs() + 1e-6)
    torch.testing.assert_close(params["fc.bias"].detach(), expected, rtol=1e-10, atol=1e-12)


def test_effective_batch_counts_devices_nodes_and_accumulation():
    b = 32
    assert effective_batch_size(b, 2, 2, 2) == effective_batch_size(8 * b, 1, 1, 1) == 8 * b
    assert effective_batch_size(b, 1, num_nodes=4) == 4 * b
    with pytest.raises(ValueError, match="num_nodes"):
        effective_batch_size(b, 1, num_nodes=0)


def test_effective_lr_is_the_same_for_equal_global_batches_and_differs_when_nodes_are_forgotten():
    cfg = OptimizerConfig(name="sgd", lr=0.03)

    def lr_for(global_batch: int) -> float:
        layer = nn.Linear(3, 2)
        opt = build_optimizer(cfg, param_groups(layer.named_parameters(), cfg.weight_decay), global_batch)
        return opt.param_groups[0]["lr"]

    b = 32
    multi = lr_for(effective_batch_size(b, devices=2, num_nodes=2, accumulate_grad_batches=2))
    single = lr_for(effective_batch_size(8 * b, 1, 1, 1))
    assert multi == pytest.approx(single) == pytest.approx(0.03 * 8 * b / 256)
    forgot_nodes = lr_for(b * 2 * 2)  # batch x devices x accumulation, as a framework without nodes computes
    assert forgot_nodes == pytest.approx(multi / 2)


def test_scaling_rules():
    assert scaled_lr(0.3, 4096, "linear") == pytest.approx(4.8)
    assert scaled_lr(1.2, 1024, "sqrt") == pytest.approx(2.4)  # SimCLR's 0.075 x sqrt(1024)
    assert scaled_lr(5e-3, 8192, "sqrt", reference_batch=2048) == pytest.approx(1e-2)
    assert scaled_lr(0.05, 4096, "none") == 0.05
    with pytest.raises(ConfigError, match=r"^optimizer\.lr_scaling='cubic'"):
        scaled_lr(0.1, 256, "cubic")


def test_group_lr_scale_multiplies_the_scaled_lr_and_is_remembered_as_initial_lr():
    backbone, predictor = nn.Linear(4, 4), nn.Linear(4, 4)
    groups = param_groups(backbone.named_parameters(), 1e-4) + \
        param_groups(predictor.named_parameters(), 1e-4, name="predictor", lr_scale=10.0)
    opt = build_optimizer(OptimizerConfig(name="sgd", lr=0.05), groups, global_batch=512)
    lrs = {(g.get("name"), g["weight_decay"] > 0): (g["lr"], g["initial_lr"]) for g in opt.param_groups}
    assert lrs[(None, True)] == pytest.approx((0.1, 0.1))
    assert lrs[("predictor", True)] == pytest.approx((1.0, 1.0))
    assert lrs[("predictor_no_decay", False)] == pytest.approx((1.0, 1.0))
    with pytest.raises(ValueError, match="lr_scale"):
        build_optimizer(OptimizerConfig(), [{"params": list(backbone.parameters()), "lr": 0.1}], 256)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 5)
        self.ln = nn.LayerNorm(5)
        self.norm_proj = nn.Linear(5, 5, bias=False)  # a 2-d weight in a module merely named "norm..."
        self.pos_embed = nn.Parameter(torch.zeros(1, 3, 5))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 5))
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def test_param_groups_exclude_biases_norms_one_d_params_and_vit_tokens():
    net = _Net()
    decay, no_decay = param_groups(net.named_parameters(), 0.1, tag="x")
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(decay["params"]) == ids([net.conv.weight, net.fc.weight, net.norm_proj.weight])
    assert ids(no_decay["params"]) == ids([net.bn.weight, net.bn.bias, net.fc.bias, net.ln.weight,
                                          net.ln.bias, net.pos_embed, net.cls_token])
    assert (decay["weight_decay"], decay["layer_adaptation"]) == (0.1, True)
    assert (no_decay["weight_decay"], no_decay["layer_adaptation"]) == (0.0, False)
    assert decay["tag"] == no_decay["tag"] == "x"


def test_named_param_groups_keep_unique_names_for_the_learning_rate_monitor():
    decay, no_decay = param_groups(_Net().named_parameters(), 0.1, name="predictor", lr_scale=10.0)
    assert (decay["name"], no_decay["name"]) == ("predictor", "predictor_no_decay")
    assert decay["lr_scale"] == no_decay["lr_scale"] == 10.0


def test_param_groups_without_exclusion_is_one_decayed_group_of_trainable_params():
    net = _Net()
    (group,) = param_groups(net.named_parameters(), 0.1, exclude_bias_and_norm=False)
    assert {id(p) for p in group["params"]} == {id(p) for p in net.parameters() if p.requires_grad}
    assert group["weight_decay"] == 0.1


def test_param_groups_drops_empty_groups_and_refuses_reserved_extra_keys():
    groups = param_groups(nn.LayerNorm(4).named_parameters(), 0.1)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.0
    with pytest.raises(ValueError, match="lr_scale"):
        param_groups(nn.LayerNorm(4).named_parameters(), 0.1, lr=1.0)


def _lr_trace(sched_cfg: SchedulerConfig, total: int, per_epoch: int, n: int, fixed: bool = False):
    """lrs in effect at optimizer steps 0..n-1 of each group (base lr 1 for the first group)."""
    a, b = nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False)
    groups = [{"params": list(a.parameters())}, {"params": list(b.parameters()), "fixed_lr": fixed}]
    opt = build_optimizer(OptimizerConfig(name="sgd", lr=1.0, lr_scaling="none"), groups, 256)
    sched = build_scheduler(sched_cfg, opt, total, per_epoch)
    trace = []
    for _ in range(n):
        trace.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return trace


def test_warmup_cosine_values_at_start_end_of_warmup_middle_and_end():
    start, floor = 0.1, 0.01
    cfg = SchedulerConfig(name="warmup_cosine", warmup_epochs=2, warmup_start_factor=start,
                          min_lr_factor=floor)
    lrs = [row[0] for row in _lr_trace(cfg, total=100, per_epoch=10, n=131)]
    assert lrs[0] == pytest.approx(start)
    assert lrs[10] == pytest.approx(start + (1 - start) * 10 / 20)
    assert lrs[20] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(floor + (1 - floor) * 0.5)  # the cosine's midpoint
    k = 85
    assert lrs[k] == pytest.approx(floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (k - 20) / 80)))
    assert lrs[99] > floor and lrs[100] == pytest.approx(floor) and lrs[130] == pytest.approx(floor)


def test_warmup_steps_take_precedence_over_warmup_epochs():
    cfg = SchedulerConfig(name="constant", warmup_epochs=5, warmup_steps=4)
    lrs = [row[0] for row in _lr_trace(cfg, total=100, per_epoch=10, n=6)]
    assert lrs == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 1.0])


def test_step_decay_multiplies_by_gamma_at_each_milestone_epoch():
    cfg = SchedulerConfig(name="step", milestones=[3, 6], gamma=0.1)
    lrs = [row[0] for row in _lr_trace(cfg, total=100, per_epoch=10, n=100)]
    assert lrs[29] == pytest.approx(1.0) and lrs[30] == pytest.approx(0.1)
    assert lrs[59] == pytest.approx(0.1) and lrs[60] == pytest.approx(0.01) and lrs[99] == pytest.approx(0.01)


def test_fixed_lr_group_keeps_its_lr_while_the_others_follow_the_schedule():
    cfg = SchedulerConfig(name="warmup_cosine", warmup_epochs=1)
    trace = _lr_trace(cfg, total=50, per_epoch=10, n=60, fixed=True)
    assert all(row[1] == 1.0 for row in trace)
    assert trace[0][0] == 0.0 and trace[10][0] == pytest.approx(1.0) and trace[55][0] == 0.0


def test_scheduler_checkpoint_round_trip_mid_schedule_gives_identical_later_lrs():
    def make(total: int, warmup: float):
        layer = nn.Linear(3, 3)
        groups = param_groups(layer.named_parameters(), 1e-6)
        opt = build_optimizer(OptimizerConfig(name="lars", lr=0.3), groups, 512)
        cfg = SchedulerConfig(name="warmup_cosine", warmup_epochs=warmup, warmup_start_factor=0.05,
                              min_lr_factor=0.1)
        return opt, build_scheduler(cfg, opt, total, 10)

    opt, sched = make(total=120, warmup=3)
    for _ in range(37):
        opt.step()
        sched.step()
    buffer = io.BytesIO()
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, buffer)
    expected = []
    for _ in range(100):
        expected.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()

    # A resumed run is rebuilt (here with a different length), then loads the checkpoint: the saved
    # schedule, not the rebuilt one, must continue.
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    opt2, sched2 = make(total=500, warmup=7)
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    resumed = []
    for _ in range(100):
        resumed.append([g["lr"] for g in opt2.param_groups])
        opt2.step()
        sched2.step()
    assert resumed == expected


def test_warmup_longer_than_the_run_warns_and_still_ends_at_the_floor():
    cfg = SchedulerConfig(name="warmup_cosine", warmup_epochs=10, min_lr_factor=0.2)
    with pytest.warns(UserWarning, match="warm-up"):
        lrs = [row[0] for row in _lr_trace(cfg, total=20, per_epoch=10, n=30)]
    assert lrs[19] == pytest.approx(19 / 100)  # still warming up on the last step
    assert lrs[20] == lrs[29] == pytest.approx(0.2)


def test_cosine_schedule_endpoints_midpoint_and_clamp():
    assert cosine_schedule(0.996, 1.0, 0, 1000) == pytest.approx(0.996)
    assert cosine_schedule(0.996, 1.0, 500, 1000) == pytest.approx(0.998)
    assert cosine_schedule(0.996, 1.0, 1000, 1000) == pytest.approx(1.0)
    assert cosine_schedule(0.996, 1.0, 5000, 1000) == pytest.approx(1.0)
    assert cosine_schedule(0.04, 0.4, -3, 10) == pytest.approx(0.04)
    assert cosine_schedule(0.04, 0.4, 0, 0) == 0.4
    assert linear_warmup(0.04, 0.07, 0, 30) == pytest.approx(0.04)
    assert linear_warmup(0.04, 0.07, 15, 30) == pytest.approx(0.055)
    assert linear_warmup(0.04, 0.07, 99, 30) == pytest.approx(0.07)


@pytest.mark.parametrize("field,value,message", [
    ("lr", -0.1, "optimizer.lr=-0.1 is not allowed: expected a number > 0"),
    ("name", "adam", "optimizer.name='adam' is not allowed: expected one of: sgd, adamw, lars, lamb"),
    ("weight_decay", -1e-4, "optimizer.weight_decay=-0.0001 is not allowed"),
    ("momentum", 1.0, "optimizer.momentum=1.0 is not allowed: expected a number in [0, 1)"),
    ("betas", [0.9, 1.0], "optimizer.betas[1]=1.0 is not allowed"),
    ("betas", [0.9], "optimizer.betas=[0.9] is not allowed: expected two numbers"),
    ("eps", 0.0, "optimizer.eps=0.0 is not allowed"),
    ("lr_scaling", "log", "optimizer.lr_scaling='log' is not allowed: expected one of: linear, sqrt, none"),
    ("reference_batch", 0, "optimizer.reference_batch=0 is not allowed"),
    ("trust_coefficient", 0.0, "optimizer.trust_coefficient=0.0 is not allowed"),
])
def test_optimizer_config_errors_name_the_key(field, value, message):
    with pytest.raises(ConfigError) as info:
        OptimizerConfig(**{field: value}).validate("optimizer")
    assert str(info.value).startswith(message)


def test_nesterov_without_momentum_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^optimizer\.nesterov=True"):
        OptimizerConfig(nesterov=True, momentum=0.0).validate("optimizer")


@pytest.mark.parametrize("kwargs,message", [
    ({"name": "poly"},
     "scheduler.name='poly' is not allowed: expected one of: warmup_cosine, step, constant"),
    ({"warmup_epochs": -1.0}, "scheduler.warmup_epochs=-1.0 is not allowed"),
    ({"warmup_steps": -5}, "scheduler.warmup_steps=-5 is not allowed"),
    ({"warmup_start_factor": 1.5}, "scheduler.warmup_start_factor=1.5 is not allowed"),
    ({"min_lr_factor": -0.1}, "scheduler.min_lr_factor=-0.1 is not allowed"),
    ({"gamma": 0.0}, "scheduler.gamma=0.0 is not allowed"),
    ({"milestones": [160.0, 120.0]}, "scheduler.milestones=[160.0, 120.0] is not allowed: expected strictly"),
    ({"milestones": [0.0, 120.0]}, "scheduler.milestones[0]=0.0 is not allowed"),
    ({"name": "step"}, "scheduler.milestones=[] is not allowed"),
])
def test_scheduler_config_errors_name_the_key(kwargs, message):
    with pytest.raises(ConfigError) as info:
        SchedulerConfig(**kwargs).validate("scheduler")
    assert str(info.value).startswith(message)


def test_builders_validate_a_plain_config_node():
    layer = nn.Linear(2, 2)
    node = OmegaConf.create({"name": "lars", "lr": -1.0})
    with pytest.raises(ConfigError, match=r"^optimizer\.lr=-1\.0"):
        build_optimizer(node, param_groups(layer.named_parameters(), 0.0), 256)


@pytest.mark.parametrize("choice", sorted(p.stem for p in (CONF / "optimizer").glob("*.yaml")))
def test_every_optimizer_yaml_validates_builds_and_steps(choice):
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(OptimizerConfig),
                                              OmegaConf.load(CONF / "optimizer" / f"{choice}.yaml")))
    cfg.validate("optimizer")
    assert cfg.name == choice
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    groups = param_groups(net.named_parameters(), cfg.weight_decay, cfg.exclude_bias_and_norm)
    opt = build_optimizer(cfg, groups, global_batch=512)
    assert type(opt).__name__.lower() == choice
    before = [p.detach().clone() for p in net.parameters()]
    net(torch.randn(8, 3)).square().mean().backward()
    opt.step()
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert any(not torch.equal(b, p) for b, p in zip(before, net.parameters()))


@pytest.mark.parametrize("choice", sorted(p.stem for p in (CONF / "scheduler").glob("*.yaml")))
def test_every_scheduler_yaml_validates_and_builds(choice):
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SchedulerConfig),
                                              OmegaConf.load(CONF / "scheduler" / f"{choice}.yaml")))
    cfg.validate("scheduler")
    assert cfg.name == choice
    layer = nn.Linear(2, 2)
    opt = build_optimizer(OptimizerConfig(), param_groups(layer.named_parameters(), 1e-4), 256)
    sched = build_scheduler(cfg, opt, total_steps=200 * 5, steps_per_epoch=5)  # the recipes' 200 epochs
    assert all(f is not None for f in sched.state_dict()["lr_lambdas"])


class _GradsAtBatchStart(pl.Callback):
    """Records, at each training batch's start, whether any parameter of the method holds a gradient."""

    def __init__(self):
        self.held: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.held.append(any(p.grad is not None for p in pl_module.parameters()))


@pytest.mark.parametrize("accumulate, expected", [(1, [False, False]), (2, [False, True, False, True])])
def test_gradients_are_freed_after_each_optimizer_step_and_kept_while_accumulating(in_tmp, accumulate, expected):
    """The next forward must not hold the last step's gradients (Lightning would free them only before the
    next backward); micro-batches of an accumulation window keep theirs."""
    seen = _GradsAtBatchStart()
    overrides = tiny("simclr", "trainer.max_steps=2", f"trainer.accumulate_grad_batches={accumulate}")
    train(compose(overrides), in_tmp / "run", extra_callbacks=[seen])
    assert seen.held[:4] == expected
