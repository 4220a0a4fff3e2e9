"""Barlow Twins (Zbontar et al. 2021): the cross-correlation over the global batch, so 2 ranks of B/2
give the loss and the (DDP-averaged) gradients of 1 rank of B; the biases' own learning rate."""

from __future__ import annotations

import torch
import torch.distributed as dist
from conftest import tiny
from dist_utils import run_on_ranks

from ssl_zoo.cli import compose
from ssl_zoo.methods import METHODS

B = 8


def shard_loss_and_grads(rank: int, world_size: int, method: str) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and parameter gradients of ``method`` on this rank's share of one fixed batch, the gradients
    averaged over ranks as DDP does. Float64, BN in eval mode (running statistics: per sample, so the
    split of the batch cannot change them)."""
    torch.manual_seed(0)
    model = METHODS[method](compose(tiny(method)), num_train=64).double().eval()
    g = torch.Generator().manual_seed(1)
    batch = [torch.randn(B, 3, 16, 16, generator=g, dtype=torch.float64) for _ in range(2)]
    rows = slice(rank * B // world_size, (rank + 1) * B // world_size)
    out = model.step([v[rows] for v in batch], torch.arange(B)[rows])
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    if world_size > 1:
        for grad in grads.values():
            dist.all_reduce(grad)
            grad /= world_size
    return out.loss.item(), grads


def assert_two_ranks_match_one_rank(method: str) -> None:
    loss, grads = shard_loss_and_grads(0, 1, method)
    assert len(grads) > 10 and all(g.abs().sum() > 0 for g in grads.values())
    # Each rank imports the package and builds the model: generous on a shared, loaded machine.
    for rank_loss, rank_grads in run_on_ranks(shard_loss_and_grads, 2, method, timeout=300):
        assert abs(rank_loss - loss) < 1e-5
        assert rank_grads.keys() == grads.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(rank_grads[name], grad, rtol=1e-5, atol=1e-5, msg=name)


def test_two_ranks_match_one_rank_loss_and_gradients():
    assert_two_ranks_match_one_rank("barlow_twins")


def test_biases_and_norms_get_the_reference_learning_rate_ratio():
    model = METHODS["barlow_twins"](compose(tiny("barlow_twins")), num_train=64)
    groups = model.param_groups()
    scales = {g["layer_adaptation"]: g.get("lr_scale", 1.0) for g in groups}
    assert scales == {True: 1.0, False: 0.024}
    excluded = {id(p) for g in groups if not g["layer_adaptation"] for p in g["params"]}
    assert all(id(p) in excluded for p in model.parameters() if p.ndim == 1)
