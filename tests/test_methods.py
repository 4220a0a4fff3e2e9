"""Every registered method learns: its loss falls when it fits one fixed tiny batch of its own views.

The views come from the method's own augmentation config, so multi-crop and pretext methods are
covered by the same test; a new method in ``METHODS`` is tested without writing anything here.
"""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_DIR, tiny

from ssl_zoo.cli import compose
from ssl_zoo.config import validate_config
from ssl_zoo.data.datamodule import collate_views
from ssl_zoo.data.synthetic import make_synthetic
from ssl_zoo.memory import FeatureQueue, MomentumEncoder
from ssl_zoo.methods import METHODS
from ssl_zoo.transforms import build_view_transform


def build(method: str, *extra: str):
    cfg = compose(tiny(method, "optimizer=adamw", "optimizer.lr=1e-3", "optimizer.lr_scaling=none",
                       "scheduler=constant", *extra))
    typed = validate_config(cfg)
    return cfg, typed, METHODS[method](cfg, num_train=typed["data"].num_samples)


def fixed_batch(typed, n: int = 8):
    from PIL import Image

    data = typed["data"]
    images, labels = make_synthetic(n, data.num_classes, data.image_size, data.channels, seed=0)
    images, labels = images[:n], labels[:n]
    transform = build_view_transform(typed["augmentation"], data.image_size, data.mean, data.std, data.channels)
    torch.manual_seed(0)
    items = [(transform(Image.fromarray(img)), int(y), i) for i, (img, y) in enumerate(zip(images, labels))]
    return collate_views(items)


def test_every_method_has_tiny_settings():
    missing = [name for name in METHODS if not (TINY_DIR / f"{name}.txt").exists()]
    assert not missing, f"add tests/tiny/<method>.txt for: {missing}"


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_overfits_a_fixed_tiny_batch(method):
    torch.manual_seed(0)
    cfg, typed, model = build(method)
    views, labels, index = fixed_batch(typed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    # Queues and banks would fill with this very batch and turn positives into negatives: keep their
    # contents fixed, so what is measured is that the model learns to match its targets.
    stores = [(m, {k: v.clone() for k, v in m.state_dict().items()}) for m in model.modules()
              if isinstance(m, FeatureQueue) or getattr(m, "frozen_in_overfit_test", False)]
    model.train()
    losses = []
    for step in range(25):
        for module, state in stores:
            module.load_state_dict(state)
        out = model.step(views, index)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        for m in model.modules():
            if isinstance(m, MomentumEncoder):
                m.update(step, 25)
        losses.append(out.loss.item())
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses


@pytest.mark.parametrize("method", sorted(METHODS))
def test_step_returns_backbone_features_for_the_probe(method):
    cfg, typed, model = build(method)
    views, labels, index = fixed_batch(typed)
    out = model.step(views, index)
    assert out.loss.ndim == 0 and out.features.shape == (8, model.feature_dim)


def test_moco_v2_enqueues_normalised_keys_after_the_loss():
    cfg, typed, model = build("moco_v2")
    before = model.queue().clone()
    model.step(*fixed_batch(typed)[::2])
    after = model.queue()
    changed = (before != after).any(dim=1)
    assert changed.sum() == 8 and changed[:8].all()
    torch.testing.assert_close(after[:8].norm(dim=1), torch.ones(8))
