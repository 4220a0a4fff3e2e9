"""SwAV (Caron et al. 2020): normalised prototypes, codes over queue and batch on one and two ranks,
the queue's start and first use, and the prototypes' frozen first steps."""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from conftest import tiny
from dist_utils import run_on_ranks

from ssl_zoo.cli import compose
from ssl_zoo.losses.clustering import sinkhorn
from ssl_zoo.methods import METHODS
from ssl_zoo.methods.swav import swav_codes


def build(*extra: str):
    torch.manual_seed(0)
    return METHODS["swav"](compose(tiny("swav", *extra)), num_train=64)


def views(batch: int = 8, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, 16, 16, generator=g) for _ in range(2)] + \
           [torch.randn(batch, 3, 7, 7, generator=g) for _ in range(6)]


def test_prototypes_are_unit_vectors_after_a_step():
    model = build()
    with torch.no_grad():
        model.prototypes.weight.mul_(3.0)
    model.step(views(), torch.arange(8))
    torch.testing.assert_close(model.prototypes.weight.norm(dim=1), torch.ones(10))


def _inputs(seed: int = 1, b: int = 6, q: int = 12, d: int = 5, k: int = 4):
    g = torch.Generator().manual_seed(seed)
    protos = F.normalize(torch.randn(k, d, generator=g, dtype=torch.float64), dim=1)
    batch = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    queue = F.normalize(torch.randn(q, d, generator=g, dtype=torch.float64), dim=1)
    return protos, batch, queue


def test_codes_with_a_queue_are_sinkhorn_over_queue_and_batch_keeping_the_batch_rows():
    protos, batch, queue = _inputs()
    codes = swav_codes(batch @ protos.T, queue, protos, 0.05, 3)
    expected = sinkhorn(torch.cat([queue, batch]) @ protos.T, 0.05, 3)[-6:]
    torch.testing.assert_close(codes, expected, rtol=1e-12, atol=1e-12)
    # The queue changes the codes: it takes part in the prototypes' equal share of the mass.
    assert (codes - sinkhorn(batch @ protos.T, 0.05, 3)).abs().max() > 1e-3


def _codes_on_rank(rank: int, world_size: int) -> torch.Tensor:
    protos, batch, queue = _inputs()
    local = batch.chunk(world_size)[rank]
    return swav_codes(local @ protos.T, queue, protos, 0.05, 3)


def test_two_ranks_sharing_one_queue_give_the_codes_of_one_rank_with_the_whole_batch():
    protos, batch, queue = _inputs()
    full = swav_codes(batch @ protos.T, queue, protos, 0.05, 3)
    parts = run_on_ranks(_codes_on_rank, 2)
    torch.testing.assert_close(torch.cat(parts), full, rtol=1e-10, atol=1e-12)


def test_queue_fills_from_its_start_epoch_and_is_used_once_full():
    model = build("method.queue_start_epoch=1")  # queue of 16 = 2 batches of 8
    model._trainer = SimpleNamespace(current_epoch=0, global_step=0)
    model.step(views(), torch.arange(8))
    assert int(model.queues[0].filled) == 0
    model._trainer.current_epoch = 1
    used = [model.step(views(seed=s), torch.arange(8)).logs["queue_in_use"] for s in range(3)]
    assert used == [0.0, 0.0, 1.0]
    assert all(int(q.filled) == 16 for q in model.queues)
    # The queue holds normalised embeddings of both global crops, not the random initial rows.
    torch.testing.assert_close(model.queues[1]().norm(dim=1), torch.ones(16))


def test_prototypes_get_no_gradient_during_the_first_steps():
    model = build("method.freeze_prototypes_steps=3")
    for step, frozen in ((0, True), (2, True), (3, False)):
        model.zero_grad()
        model.step(views(), torch.arange(8)).loss.backward()
        model._trainer = SimpleNamespace(current_epoch=0, global_step=step)
        model.on_before_optimizer_step(None)
        assert (model.prototypes.weight.grad is None) == frozen, step
        assert model.projector.net[0].weight.grad is not None
