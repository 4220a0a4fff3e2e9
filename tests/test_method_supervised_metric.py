"""Supervised metric learning: the batch's labels reach the loss, every `method.loss` trains, and an
unlabelled batch stops the run."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny

from ssl_zoo.cli import compose
from ssl_zoo.config import validate_config
from ssl_zoo.errors import ConfigError, DataError
from ssl_zoo.losses.contrastive import supcon
from ssl_zoo.losses.metric import triplet
from ssl_zoo.methods import METHODS
from ssl_zoo.methods.supervised_metric import LOSSES

LABELS = torch.tensor([0, 1, 0, 1, 2, 2, 0, 1])


def build(*extra: str):
    cfg = compose(tiny("supervised_metric", *extra))
    typed = validate_config(cfg)
    return METHODS["supervised_metric"](cfg, num_train=typed["data"].num_samples)


def views_of(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 3, 16, 16, generator=g), torch.randn(8, 3, 16, 16, generator=g)]


def embeddings(model, views):
    """The head's output [N, V, D], recomputed on the same batch (same BN batch statistics)."""
    with torch.no_grad():
        z = model.projector(model.backbone(torch.cat(views)))
    return z.reshape(len(views), views[0].shape[0], -1).transpose(0, 1)


def test_training_step_hands_the_batch_labels_to_the_loss(monkeypatch):
    torch.manual_seed(0)
    model = build()
    monkeypatch.setattr(model, "log", lambda *args, **kwargs: None)
    views, index = views_of(), torch.arange(8)
    out = model.training_step((views, LABELS, index), 0)
    assert torch.equal(model.batch_labels, LABELS)
    z = embeddings(model, views)
    assert out["loss"].item() == pytest.approx(supcon(z, LABELS, 0.1, 0.1).item(), rel=1e-4)
    # Labels matter: the same batch read as eight classes gives another loss.
    assert abs(out["loss"].item() - supcon(z, index, 0.1, 0.1).item()) > 1e-3


def test_triplet_reads_the_views_as_one_labelled_batch():
    torch.manual_seed(0)
    model = build("method.loss=triplet", "method.triplet_mining=batch_all")
    model.batch_labels = LABELS
    views = views_of(1)
    out = model.step(views, torch.arange(8))
    z = torch.nn.functional.normalize(embeddings(model, views).transpose(0, 1).reshape(16, -1), dim=1)
    assert out.loss.item() == pytest.approx(triplet(z, LABELS.repeat(2), 0.2, "batch_all").item(), rel=1e-4)


@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_gives_a_finite_loss_and_gradient(loss):
    torch.manual_seed(0)
    model = build(f"method.loss={loss}")
    model.batch_labels = LABELS
    out = model.step(views_of(2), torch.arange(8))
    out.loss.backward()
    grads = [p.grad for p in model.projector.parameters() if p.grad is not None]
    assert torch.isfinite(out.loss) and out.loss.item() > 0
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_an_unlabelled_batch_stops_the_run():
    model = build()
    model.batch_labels = torch.tensor([0, 1, -1, 1, 2, 2, 0, 1])
    with pytest.raises(DataError, match="label"):
        model.step(views_of(), torch.arange(8))


def test_an_unknown_loss_names_the_key_and_the_choices():
    with pytest.raises(ConfigError, match="method.loss.*supcon, contrastive, triplet, lifted_structured, n_pair"):
        build("method.loss=arcface")
