"""The options that give a method's head its own learning-rate multiple (not the papers' recipes): BYOL's
and SimSiam's predictor, SwAV's prototypes, DINO's student head and its last layer."""

from __future__ import annotations

import pytest
from conftest import tiny

from ssl_zoo.cli import compose
from ssl_zoo.config import validate_config
from ssl_zoo.methods import METHODS
from ssl_zoo.optim import build_optimizer

CASES = [("byol", "pred_lr_scale", "predictor", ()),
         ("simsiam", "pred_lr_scale", "predictor", ("method.fixed_predictor_lr=false",)),
         ("swav", "prototypes_lr_scale", "prototypes", ()),
         ("dino", "head_lr_scale", "head", ())]


@pytest.mark.parametrize("method,option,module,extra", CASES)
def test_lr_scale_multiplies_the_heads_learning_rate_alone(method, option, module, extra):
    cfg = compose(tiny(method, f"method.{option}=10", *extra))
    typed = validate_config(cfg)
    model = METHODS[method](cfg, num_train=typed["data"].num_samples)
    opt = build_optimizer(cfg.optimizer, model.param_groups(), global_batch=256)
    head_ids = {id(p) for p in getattr(model, module).parameters()}
    lrs: dict[bool, set[float]] = {}
    for group in opt.param_groups:
        kinds = {id(p) in head_ids for p in group["params"]}
        assert len(kinds) == 1                                  # a group is all head or all the rest
        lrs.setdefault(kinds.pop(), set()).add(group["lr"])
    assert len(lrs[False]) == len(lrs[True]) == 1
    assert lrs[True].pop() == pytest.approx(10 * lrs[False].pop())
    names = [g.get("name") for g in opt.param_groups if g.get("name")]
    assert len(names) == len(set(names))                        # unique, as Lightning's lr monitor needs
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(len(g["params"]) for g in opt.param_groups) == len(trainable)


@pytest.mark.parametrize("head_scale", [1, 3])
def test_dinos_last_layer_takes_its_own_multiple_on_top_of_the_heads(head_scale):
    cfg = compose(tiny("dino", f"method.head_lr_scale={head_scale}", "method.last_layer_lr_scale=100"))
    typed = validate_config(cfg)
    model = METHODS["dino"](cfg, num_train=typed["data"].num_samples)
    opt = build_optimizer(cfg.optimizer, model.param_groups(), global_batch=256)
    last = {id(p) for p in model.head.last_layer.parameters()}
    head = {id(p) for p in model.head.parameters()} - last
    lr_of: dict[str, set[float]] = {"last": set(), "head": set(), "rest": set()}
    for group in opt.param_groups:
        kinds = {"last" if id(p) in last else "head" if id(p) in head else "rest" for p in group["params"]}
        assert len(kinds) == 1
        lr_of[kinds.pop()].add(group["lr"])
    assert all(len(lrs) == 1 for lrs in lr_of.values())
    base, head_lr, last_lr = (lr_of[k].pop() for k in ("rest", "head", "last"))
    assert head_lr == pytest.approx(head_scale * base) and last_lr == pytest.approx(100 * head_scale * base)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(len(g["params"]) for g in opt.param_groups) == len(trainable)
