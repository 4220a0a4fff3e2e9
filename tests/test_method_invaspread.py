"""InvaSpread (Ye et al. 2019): one encoder pass over both views, the invariant + spreading loss."""

from __future__ import annotations

import torch
from conftest import tiny

from ssl_zoo.cli import compose
from ssl_zoo.config import validate_config
from ssl_zoo.losses.contrastive import invaspread_loss, nt_xent
from ssl_zoo.methods import METHODS


def test_step_loss_is_the_invaspread_loss_of_the_embeddings_and_exceeds_nt_xent():
    torch.manual_seed(0)
    cfg = compose(tiny("invaspread"))
    model = METHODS["invaspread"](cfg, num_train=validate_config(cfg)["data"].num_samples).train()
    views = [torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)]
    out = model.step(views, torch.arange(8))
    with torch.no_grad():
        h = model.backbone(torch.cat(views))  # the same 2N batch: the same BN statistics
        z1, z2 = model.head(h).chunk(2)
    torch.testing.assert_close(out.loss, invaspread_loss(z1, z2, 0.1), rtol=1e-5, atol=1e-6)
    assert out.loss > nt_xent(z1, z2, 0.1)
    torch.testing.assert_close(out.features, h[:8], rtol=1e-5, atol=1e-6)
