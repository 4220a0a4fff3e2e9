"""BYOL (Grill et al. 2020): the predictor's optional learning-rate scale."""

from __future__ import annotations

from conftest import tiny

from ssl_zoo.cli import compose
from ssl_zoo.config import validate_config
from ssl_zoo.methods import METHODS
from ssl_zoo.optim import build_optimizer


def test_byol_pred_lr_scale_multiplies_the_predictors_learning_rate_alone():
    cfg = compose(tiny("byol", "method.pred_lr_scale=10"))
    typed = validate_config(cfg)
    model = METHODS["byol"](cfg, num_train=typed["data"].num_samples)
    groups = model.param_groups()
    predictor_ids = {id(p) for p in model.predictor.parameters()}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for g in groups for p in g["params"]} == trainable
    opt = build_optimizer(cfg.optimizer, groups, global_batch=256)
    base = {g["lr"] for g in opt.param_groups if not str(g.get("name")).startswith("predictor")}
    assert len(base) == 1
    for g in opt.param_groups:
        in_predictor = {id(p) in predictor_ids for p in g["params"]}
        assert len(in_predictor) == 1
        expected = 10 * next(iter(base)) if in_predictor == {True} else next(iter(base))
        assert abs(g["lr"] - expected) < 1e-12
