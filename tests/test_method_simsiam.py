"""SimSiam (Chen & He 2021): the symmetrised stop-gradient loss and the fixed-lr predictor."""

from __future__ import annotations

import torch
from conftest import tiny

from ssl_zoo.cli import compose
from ssl_zoo.config import validate_config
from ssl_zoo.methods import METHODS
from ssl_zoo.optim import build_optimizer, build_scheduler


def build(*extra: str):
    cfg = compose(tiny("simsiam", *extra))
    typed = validate_config(cfg)
    return cfg, METHODS["simsiam"](cfg, num_train=typed["data"].num_samples)


def reference_loss(p1, z1, p2, z2) -> float:
    """½(D(p1, z2) + D(p2, z1)) with D = -cos, one sample at a time in float64."""
    def d(p, z):
        total = 0.0
        for a, b in zip(p.double(), z.double()):
            total += -float(a @ b) / float(a.norm() * b.norm())
        return total / len(p)
    return 0.5 * (d(p1, z2) + d(p2, z1))


def test_step_loss_equals_the_symmetrised_negative_cosine():
    torch.manual_seed(0)
    cfg, model = build()
    model.train()
    views = [torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)]
    out = model.step(views, torch.arange(8))
    # Recomputed in training mode: the same batch gives the same BN batch statistics.
    with torch.no_grad():
        z1, z2 = model.projector(model.backbone(views[0])), model.projector(model.backbone(views[1]))
        p1, p2 = model.predictor(z1), model.predictor(z2)
    assert abs(out.loss.item() - reference_loss(p1, z1, p2, z2)) < 1e-5


def test_fixed_predictor_lr_keeps_the_predictor_at_its_initial_lr_while_the_rest_decays():
    cfg, model = build("method.fixed_predictor_lr=true", "optimizer=sgd", "scheduler=warmup_cosine",
                       "scheduler.warmup_epochs=0")
    groups = model.param_groups()
    predictor_ids = {id(p) for p in model.predictor.parameters()}
    fixed = [g for g in groups if g.get("fixed_lr")]
    assert {id(p) for g in fixed for p in g["params"]} == predictor_ids
    assert all(id(p) not in predictor_ids for g in groups if not g.get("fixed_lr") for p in g["params"])
    opt = build_optimizer(cfg.optimizer, groups, global_batch=256)
    sched = build_scheduler(cfg.scheduler, opt, total_steps=10, steps_per_epoch=5)
    initial = [g["lr"] for g in opt.param_groups]
    for _ in range(5):
        opt.step()
        sched.step()
    for g, lr0 in zip(opt.param_groups, initial):
        if g.get("fixed_lr"):
            assert g["lr"] == lr0 == 0.05
        else:
            assert g["lr"] < 0.6 * lr0


def test_without_fixed_predictor_lr_every_group_follows_the_schedule():
    cfg, model = build("method.fixed_predictor_lr=false")
    assert not any(g.get("fixed_lr") for g in model.param_groups())


def test_pred_lr_scale_multiplies_the_fixed_predictor_lr():
    cfg, model = build("method.fixed_predictor_lr=true", "method.pred_lr_scale=10", "optimizer=sgd")
    opt = build_optimizer(cfg.optimizer, model.param_groups(), global_batch=256)
    lrs = {bool(g.get("fixed_lr")): g["lr"] for g in opt.param_groups}
    assert lrs[True] == 10 * lrs[False]
