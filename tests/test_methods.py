"""Each method learns: its loss falls when it fits one fixed tiny batch."""

from __future__ import annotations

import pytest
import torch
from conftest import HEADS, TINY

from ssl_zoo.cli import compose
from ssl_zoo.config import validate_config
from ssl_zoo.methods import METHODS


def build(method: str, extra=()):
    cfg = compose([f"method={method}", *TINY, *HEADS[method], "optimizer=adamw", "optimizer.lr=1e-3",
                   "optimizer.lr_scaling=none", "scheduler=constant", *extra])
    validate_config(cfg)
    return cfg, METHODS[method](cfg)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_overfits_a_fixed_tiny_batch(method):
    torch.manual_seed(0)
    cfg, model = build(method)
    views = [torch.randn(8, 3, 16, 16) for _ in range(2)]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    losses = []
    model.train()
    # A queue would fill with this very batch's keys and turn positives into negatives: keep its
    # negatives fixed, so what is measured is that queries learn to match their keys.
    queue = getattr(model, "queue", None)
    negatives = queue().clone() if queue is not None else None
    for step in range(25):
        if queue is not None:
            queue.queue.copy_(negatives)
        out = model.step(views, torch.arange(8))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        for m in model.modules():
            if type(m).__name__ == "MomentumEncoder":
                m.update(step, 25)
        losses.append(out.loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses


@pytest.mark.parametrize("method", sorted(METHODS))
def test_step_returns_detachable_backbone_features(method):
    cfg, model = build(method)
    out = model.step([torch.randn(8, 3, 16, 16) for _ in range(2)], torch.arange(8))
    assert out.loss.ndim == 0 and out.features.shape == (8, model.feature_dim)


def test_moco_v2_enqueues_the_keys_after_the_loss():
    cfg, model = build("moco_v2")
    before = model.queue().clone()
    model.step([torch.randn(8, 3, 16, 16) for _ in range(2)], torch.arange(8))
    after = model.queue()
    changed = (before != after).any(dim=1)
    assert changed.sum() == 8 and changed[:8].all()
    torch.testing.assert_close(after[:8].norm(dim=1), torch.ones(8))
