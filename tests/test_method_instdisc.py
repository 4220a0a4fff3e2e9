"""InstDisc (Wu et al. 2018): NCE against a memory bank with a fixed normaliser, the full-softmax variant,
the proximal term, the momentum update of the batch's rows, and one bank on every rank."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny
from dist_utils import run_on_ranks

from ssl_zoo.cli import compose
from ssl_zoo.config import validate_config
from ssl_zoo.errors import ConfigError
from ssl_zoo.losses.contrastive import nce
from ssl_zoo.methods import METHODS


def build(*extra: str):
    cfg = compose(tiny("instdisc", *extra))
    typed = validate_config(cfg)
    return METHODS["instdisc"](cfg, num_train=typed["data"].num_samples)


def batch(seed: int = 0, n: int = 8):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, 16, 16, generator=g)], torch.randperm(64, generator=g)[:n]


def test_nce_step_uses_the_bank_rows_of_the_batch_and_fixes_log_z_at_the_first_step():
    torch.manual_seed(0)
    model = build().train()
    views, index = batch()
    bank_before = model.bank.all().clone()
    torch.manual_seed(1)
    out = model.step(views, index)
    log_z = model.bank.log_z[0].clone()
    assert torch.isfinite(log_z)
    with torch.no_grad():
        v = F.normalize(model.head(model.backbone(views[0])), dim=1)
    torch.manual_seed(1)
    noise = torch.randint(64, (8, 16))  # the same draw the step made
    t = model.hp.temperature
    expected = nce((v * bank_before[index]).sum(1) / t, torch.einsum("nme,ne->nm", bank_before[noise], v) / t,
                   log_z, 64)
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)
    # The batch's rows moved halfway to the new features; the others stayed; log Z stays fixed.
    mixed = F.normalize(0.5 * bank_before[index] + 0.5 * v, dim=1)
    torch.testing.assert_close(model.bank.bank[index], mixed, rtol=1e-5, atol=1e-6)
    others = torch.ones(64, dtype=torch.bool)
    others[index] = False
    assert torch.equal(model.bank.bank[others], bank_before[others])
    model.step(*batch(1))
    assert torch.equal(model.bank.log_z[0], log_z)


@pytest.mark.parametrize("method", ["instdisc", "pirl"])
def test_a_running_normaliser_moves_log_z_with_each_steps_noise(method):
    cfg = compose(tiny(method, "method.normaliser_momentum=0.5"))
    typed = validate_config(cfg)
    torch.manual_seed(0)
    model = METHODS[method](cfg, num_train=typed["data"].num_samples).train()
    assert model.bank.normaliser_momentum == 0.5
    views, index = batch(0)
    model.step(views * 2, index)  # PIRL reads a second view (InstDisc ignores it)
    first = model.bank.log_z.clone()
    views, index = batch(1)
    model.step(views * 2, index)
    assert torch.isfinite(model.bank.log_z).all() and not torch.equal(model.bank.log_z, first)


def test_softmax_variant_is_cross_entropy_over_every_bank_row_and_proximal_term_adds_its_penalty():
    torch.manual_seed(0)
    model = build("method.loss=softmax", "method.proximal_lambda=3.0").train()
    views, index = batch()
    bank_before = model.bank.all().clone()
    out = model.step(views, index)
    with torch.no_grad():
        v = F.normalize(model.head(model.backbone(views[0])), dim=1)
    softmax = F.cross_entropy(v @ bank_before.T / model.hp.temperature, index)
    proximal = ((v - bank_before[index]) ** 2).sum(1).mean()
    torch.testing.assert_close(out.loss, softmax + 3.0 * proximal, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.logs["proximal"], proximal, rtol=1e-5, atol=1e-6)


def test_softmax_variant_keeps_no_normaliser_and_its_run_checkpoints(in_tmp):
    from ssl_zoo.train import train

    assert build("method.loss=softmax").bank.log_z.numel() == 0  # an unestimated log Z is NaN
    cfg = compose(tiny("instdisc", "method.loss=softmax", "trainer.max_steps=2", "monitor.knn=false"))
    train(cfg, in_tmp / "run")
    state = torch.load(in_tmp / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 2


def test_unknown_loss_and_unknown_training_set_size_are_config_errors():
    with pytest.raises(ConfigError, match="method.loss"):
        validate_config(compose(tiny("instdisc", "method.loss=hinge")))
    with pytest.raises(ConfigError, match="memory bank"):
        METHODS["instdisc"](compose(tiny("instdisc")), num_train=None)


def _step_on_rank(rank: int, world: int) -> dict:
    torch.manual_seed(0)
    model = build().train()
    views, _ = batch(seed=rank, n=4)
    index = torch.arange(4) + 4 * rank
    before = model.bank.all().clone()
    model.step(views, index)
    return {"bank": model.bank.all(), "before": before, "log_z": model.bank.log_z.clone()}


def test_two_ranks_update_each_others_rows_and_keep_one_bank():
    a, b = run_on_ranks(_step_on_rank, 2, timeout=180.0)
    assert torch.equal(a["before"], b["before"])
    assert torch.equal(a["bank"], b["bank"]) and torch.equal(a["log_z"], b["log_z"])
    changed = (a["bank"] != a["before"]).any(dim=1)
    assert changed[:8].all() and not changed[8:].any()
