"""Cross-rank operations on 2 gloo CPU processes against single-process references on the global batch.

The central property: DDP's objective is the mean over ranks of the per-rank losses, so a loss computed
from gathered tensors on 2 ranks of B/2 samples must give, after DDP's gradient averaging, exactly the
gradient one process gets on B samples (float64, 1e-6 tolerance is generous: the sums match to rounding).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from dist_utils import run_on_ranks
from torch import Tensor, nn

from ssl_zoo.distributed import (
    SplitBatchNorm2d,
    all_reduce_mean,
    all_reduce_sum,
    all_reduce_sum_with_grad,
    batch_shuffle,
    batch_unshuffle,
    convert_split_batchnorm,
    gather_no_grad,
    gather_sizes,
    gather_with_grad,
    is_distributed,
    rank,
    world_size,
)

WORLD = 2
TOL = dict(rtol=1e-6, atol=1e-6)


def _inputs(sizes: list[int], seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """The global batch [sum(sizes), 3] and two projection matrices [3, 4] (the "model"), float64."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(sizes), 3, generator=g, dtype=torch.float64)
    w1, w2 = (torch.randn(3, 4, generator=g, dtype=torch.float64) for _ in range(2))
    return x, w1, w2


def _own_rows(x: Tensor, sizes: list[int], r: int) -> Tensor:
    start = sum(sizes[:r])
    return x[start: start + sizes[r]]


def _global_batch_loss(z: Tensor) -> Tensor:
    """A loss over the whole batch that couples every pair of samples (as NT-Xent does), plus a cubic term."""
    return torch.logsumexp(z @ z.T, dim=1).mean() + (z ** 3).mean()


def _local_anchor_loss(q: Tensor, k_all: Tensor, first_label: int) -> Tensor:
    """InfoNCE of local anchors [b, E] against all keys [N, E]; anchor i's positive is key first_label + i."""
    labels = torch.arange(q.shape[0]) + first_label
    return F.cross_entropy(q @ k_all.T / 0.5, labels)


# ---------------------------------------------------------------- functions run on every rank (picklable)


def _same_loss_on_gathered_batch(r: int, world: int, sizes: list[int]) -> dict:
    x_all, w, _ = _inputs(sizes)
    x = _own_rows(x_all, sizes, r).clone().requires_grad_(True)
    w = w.clone().requires_grad_(True)
    z_all = gather_with_grad(x @ w)
    _global_batch_loss(z_all).backward()
    return {"z_all": z_all.detach(), "x_grad": x.grad, "w_grad": w.grad}


def _local_anchors_vs_gathered_keys(r: int, world: int, sizes: list[int]) -> dict:
    x_all, wq, wk = _inputs(sizes)
    x = _own_rows(x_all, sizes, r).clone().requires_grad_(True)
    wq, wk = wq.clone().requires_grad_(True), wk.clone().requires_grad_(True)
    loss = _local_anchor_loss(x @ wq, gather_with_grad(x @ wk), first_label=sum(sizes[:r]))
    loss.backward()
    return {"loss": loss.detach(), "x_grad": x.grad, "wq_grad": wq.grad, "wk_grad": wk.grad}


def _gather_mismatched_widths(r: int, world: int) -> str:
    try:
        gather_no_grad(torch.zeros(2, 3 + r))
    except ValueError as e:
        return str(e)
    return "no error"


def _gather_no_grad_unequal(r: int, world: int) -> dict:
    x = torch.full((r + 1, 2), float(r), requires_grad=True)
    out = gather_no_grad(x)
    return {"out": out, "requires_grad": out.requires_grad, "sizes": gather_sizes(x)}


def _all_reduces(r: int, world: int) -> dict:
    x = torch.tensor([r + 1.0, 10.0 * (r + 1)], requires_grad=True)
    s, m = all_reduce_sum(x), all_reduce_mean(x)
    return {"sum": s, "mean": m, "x_after": x.detach().clone(),
            "int_mean": all_reduce_mean(torch.tensor([r])),
            "requires_grad": (s.requires_grad, m.requires_grad),
            "group": (is_distributed(), world_size(), rank())}


def _rank_weighted_cubic(y: Tensor, r: int) -> Tensor:
    """A per-rank loss that differs between ranks, so only the sum of both ranks' gradients is right."""
    return ((r + 1) * y.T.pow(3)).sum() + torch.sin(y).sum()


def _all_reduce_sum_with_grad_run(r: int, world: int) -> dict:
    x_all = torch.randn(world, 2, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = x_all[r].clone().requires_grad_(True)
    y = all_reduce_sum_with_grad(x)
    _rank_weighted_cubic(y, r).backward()
    return {"y": y.detach(), "x_grad": x.grad}


def _shuffle_round_trip(r: int, world: int, sizes: list[int], seeds: list[int]) -> dict:
    n = sizes[r]
    # Column 0 identifies the sample globally, column 1 the rank it started on.
    x = torch.stack([torch.arange(n, dtype=torch.float64) + 100 * r,
                     torch.full((n,), float(r), dtype=torch.float64)], dim=1)
    shuffled, unshuffle_index = batch_shuffle(x, torch.Generator().manual_seed(seeds[r]))
    return {"x": x, "shuffled": shuffled, "restored": batch_unshuffle(shuffled, unshuffle_index),
            "affine": batch_unshuffle(shuffled * 2 + 1, unshuffle_index)}


# ---------------------------------------------------------------- gather_with_grad


def test_gather_with_grad_sums_gradients_across_ranks():
    sizes = [3, 3]
    per_rank = run_on_ranks(_same_loss_on_gathered_batch, WORLD, sizes)

    x, w, _ = _inputs(sizes)
    x.requires_grad_(True)
    w.requires_grad_(True)
    _global_batch_loss(x @ w).backward()

    for res in per_rank:
        torch.testing.assert_close(res["z_all"], (x @ w).detach(), **TOL)
    # DDP averages the parameter gradients of the ranks.
    torch.testing.assert_close(sum(res["w_grad"] for res in per_rank) / WORLD, w.grad, **TOL)
    # The same averaging, seen from an input: its rank's gradient divided by the world size.
    torch.testing.assert_close(torch.cat([res["x_grad"] for res in per_rank]) / WORLD, x.grad, **TOL)


def test_gather_with_grad_local_anchors_against_global_keys_match_full_batch():
    sizes = [3, 3]
    per_rank = run_on_ranks(_local_anchors_vs_gathered_keys, WORLD, sizes)

    x, wq, wk = (t.requires_grad_(True) for t in _inputs(sizes))
    loss = _local_anchor_loss(x @ wq, x @ wk, first_label=0)
    loss.backward()

    torch.testing.assert_close(sum(res["loss"] for res in per_rank) / WORLD, loss.detach(), **TOL)
    for name, ref in (("wq_grad", wq.grad), ("wk_grad", wk.grad)):
        torch.testing.assert_close(sum(res[name] for res in per_rank) / WORLD, ref, **TOL)
    torch.testing.assert_close(torch.cat([res["x_grad"] for res in per_rank]) / WORLD, x.grad, **TOL)


def test_gather_with_grad_handles_unequal_batch_sizes_across_ranks():
    sizes = [2, 3]
    per_rank = run_on_ranks(_same_loss_on_gathered_batch, WORLD, sizes)

    x, w, _ = _inputs(sizes)
    x.requires_grad_(True)
    w.requires_grad_(True)
    _global_batch_loss(x @ w).backward()

    assert [res["x_grad"].shape[0] for res in per_rank] == sizes
    for res in per_rank:
        torch.testing.assert_close(res["z_all"], (x @ w).detach(), **TOL)
    torch.testing.assert_close(sum(res["w_grad"] for res in per_rank) / WORLD, w.grad, **TOL)
    torch.testing.assert_close(torch.cat([res["x_grad"] for res in per_rank]) / WORLD, x.grad, **TOL)


def test_gather_rejects_tensors_whose_trailing_dims_differ_across_ranks():
    messages = run_on_ranks(_gather_mismatched_widths, WORLD)
    for msg in messages:
        assert "(2, 3)" in msg and "(2, 4)" in msg, msg


# ---------------------------------------------------------------- gather_no_grad, all_reduce_*


def test_gather_no_grad_concatenates_in_rank_order_without_autograd():
    per_rank = run_on_ranks(_gather_no_grad_unequal, WORLD)
    expected = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    for res in per_rank:
        assert torch.equal(res["out"], expected)
        assert res["requires_grad"] is False
        assert res["sizes"] == [1, 2]


def test_all_reduce_sum_and_mean_return_new_tensors_with_global_values():
    per_rank = run_on_ranks(_all_reduces, WORLD)
    for r, res in enumerate(per_rank):
        assert res["group"] == (True, WORLD, r)
        assert torch.equal(res["sum"], torch.tensor([3.0, 30.0]))
        assert torch.equal(res["mean"], torch.tensor([1.5, 15.0]))
        # The caller's tensor is untouched.
        assert torch.equal(res["x_after"], torch.tensor([r + 1.0, 10.0 * (r + 1)]))
        assert torch.equal(res["int_mean"], torch.tensor([0.5]))
        assert res["requires_grad"] == (False, False)


def test_all_reduce_sum_with_grad_gives_each_rank_the_gradient_of_the_summed_losses():
    per_rank = run_on_ranks(_all_reduce_sum_with_grad_run, WORLD)

    x_all = torch.randn(WORLD, 2, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x_all.requires_grad_(True)
    y = x_all.sum(0)
    sum(_rank_weighted_cubic(y, r) for r in range(WORLD)).backward()

    for r, res in enumerate(per_rank):
        torch.testing.assert_close(res["y"], y.detach(), **TOL)
        torch.testing.assert_close(res["x_grad"], x_all.grad[r], **TOL)


# ---------------------------------------------------------------- shuffle BN


@pytest.fixture(scope="module")
def shuffled_equal_batches() -> list[dict]:
    return run_on_ranks(_shuffle_round_trip, WORLD, [6, 6], [7, 7])


def test_batch_unshuffle_returns_every_rank_its_inputs_in_order(shuffled_equal_batches):
    for res in shuffled_equal_batches:
        assert torch.equal(res["restored"], res["x"])


def test_batch_shuffle_moves_samples_between_ranks(shuffled_equal_batches):
    for r, res in enumerate(shuffled_equal_batches):
        assert res["shuffled"].shape == res["x"].shape
        assert (res["shuffled"][:, 1] != r).any(), f"rank {r} kept only its own samples"
    # Together the ranks hold each sample of the global batch exactly once.
    everything = torch.cat([res["x"] for res in shuffled_equal_batches])
    shuffled = torch.cat([res["shuffled"] for res in shuffled_equal_batches])
    assert torch.equal(shuffled[shuffled[:, 0].argsort()], everything[everything[:, 0].argsort()])


def test_per_sample_function_through_shuffle_equals_unshuffled_application(shuffled_equal_batches):
    for res in shuffled_equal_batches:
        assert torch.equal(res["affine"], res["x"] * 2 + 1)


def test_batch_shuffle_round_trip_holds_for_unequal_batches_and_disagreeing_generators():
    per_rank = run_on_ranks(_shuffle_round_trip, WORLD, [3, 5], [1, 2])
    for res in per_rank:
        assert res["shuffled"].shape == res["x"].shape
        assert torch.equal(res["restored"], res["x"])
    # Rank 0's permutation is used everywhere: no sample lost or duplicated despite different seeds.
    ids = torch.cat([res["shuffled"][:, 0] for res in per_rank]).sort().values
    assert torch.equal(ids, torch.tensor([0.0, 1, 2, 100, 101, 102, 103, 104], dtype=torch.float64))


# ---------------------------------------------------------------- single process: identity behaviour


def test_single_process_is_rank_zero_of_a_world_of_one():
    assert not dist.is_initialized()
    assert (is_distributed(), world_size(), rank()) == (False, 1, 0)


def test_gather_with_grad_is_identity_on_one_process():
    x = torch.randn(4, 3, requires_grad=True)
    out = gather_with_grad(x)
    assert out is x
    assert gather_sizes(x) == [4]


def test_gather_no_grad_is_a_detached_identity_on_one_process():
    x = torch.randn(4, 3, requires_grad=True)
    out = gather_no_grad(x)
    assert torch.equal(out, x) and not out.requires_grad


def test_all_reduces_return_detached_copies_on_one_process():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    for fn in (all_reduce_sum, all_reduce_mean):
        out = fn(x)
        assert torch.equal(out, x.detach()) and not out.requires_grad
        out.add_(5)
        assert torch.equal(x.detach(), torch.tensor([1.0, 2.0])), f"{fn.__name__} aliased its input"
    assert all_reduce_mean(torch.tensor([3])).dtype == torch.get_default_dtype()


def test_all_reduce_sum_with_grad_is_identity_on_one_process():
    x = torch.randn(3, requires_grad=True)
    y = all_reduce_sum_with_grad(x)
    assert y is x


def test_batch_shuffle_on_one_process_permutes_the_local_batch_and_unshuffle_restores_it():
    x = torch.arange(8.0).unsqueeze(1)
    shuffled, index = batch_shuffle(x, torch.Generator().manual_seed(0))
    again, _ = batch_shuffle(x, torch.Generator().manual_seed(0))
    assert torch.equal(shuffled, again)  # the generator fully determines the permutation
    assert torch.equal(shuffled.sort(0).values, x)
    # Samples change halves, so 2-way split BN in the key encoder sees sub-batches the query's does not.
    assert (shuffled[:4] >= 4).any()
    assert torch.equal(batch_unshuffle(shuffled, index), x)
    assert torch.equal(batch_unshuffle(shuffled * 2 + 1, index), x * 2 + 1)


def test_batch_unshuffle_rejects_an_index_of_the_wrong_length():
    with pytest.raises(ValueError, match=r"\(3, 2\).*\(4,\)"):
        batch_unshuffle(torch.zeros(3, 2), torch.arange(4))


# ---------------------------------------------------------------- split BN


def _bn_with_state(c: int, seed: int, **bn_kwargs) -> nn.BatchNorm2d:
    """A BatchNorm2d with non-trivial affine parameters and running statistics, float64."""
    bn = nn.BatchNorm2d(c, dtype=torch.float64, **bn_kwargs)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if bn.affine:
            bn.weight.copy_(torch.randn(c, generator=g, dtype=torch.float64))
            bn.bias.copy_(torch.randn(c, generator=g, dtype=torch.float64))
        if bn.track_running_stats:
            bn.running_mean.copy_(torch.randn(c, generator=g, dtype=torch.float64))
            bn.running_var.copy_(torch.rand(c, generator=g, dtype=torch.float64) + 0.5)
            bn.num_batches_tracked.fill_(3)
    return bn


@pytest.mark.parametrize("bn_kwargs", [dict(momentum=0.1), dict(momentum=None),
                                       dict(affine=False, track_running_stats=False)],
                         ids=["momentum", "cumulative", "stateless"])
def test_split_batchnorm_train_equals_a_fresh_batchnorm_per_sub_batch(bn_kwargs):
    splits, m, c = 4, 3, 2
    bn = _bn_with_state(c, seed=1, **bn_kwargs)
    split = SplitBatchNorm2d(c, splits, dtype=torch.float64, **bn_kwargs)
    split.load_state_dict(bn.state_dict())
    g = torch.Generator().manual_seed(2)
    x = torch.randn(splits * m, c, 3, 3, generator=g, dtype=torch.float64)
    upstream = torch.randn(x.shape, generator=g, dtype=torch.float64)

    x_split = x.clone().requires_grad_(True)
    out = split(x_split)
    (out * upstream).sum().backward()

    refs = [copy.deepcopy(bn) for _ in range(splits)]
    x_ref = x.clone().requires_grad_(True)
    ref_out = torch.cat([ref(x_ref[k * m:(k + 1) * m]) for k, ref in enumerate(refs)])
    (ref_out * upstream).sum().backward()

    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x_split.grad, x_ref.grad, rtol=1e-12, atol=1e-12)
    # Splitting matters: one BN over the whole batch normalises differently.
    assert not torch.allclose(out, copy.deepcopy(bn)(x), atol=1e-3)
    if bn.affine:
        for name in ("weight", "bias"):
            expected = sum(getattr(ref, name).grad for ref in refs)
            torch.testing.assert_close(getattr(split, name).grad, expected, rtol=1e-12, atol=1e-12)
    if bn.track_running_stats:
        for name in ("running_mean", "running_var"):
            expected = torch.stack([getattr(ref, name) for ref in refs]).mean(0)
            torch.testing.assert_close(getattr(split, name), expected, rtol=1e-12, atol=1e-12)
        assert split.num_batches_tracked.item() == refs[0].num_batches_tracked.item() == 4


def test_split_batchnorm_in_eval_mode_equals_plain_batchnorm():
    bn = _bn_with_state(3, seed=4)
    split = SplitBatchNorm2d(3, 2, dtype=torch.float64)
    split.load_state_dict(bn.state_dict())
    x = torch.randn(5, 3, 2, 2, dtype=torch.float64)  # any batch size: eval does not split
    bn.eval()
    split.eval()
    assert torch.equal(split(x), bn(x))


def test_split_batchnorm_rejects_a_batch_not_divisible_by_the_splits():
    split = SplitBatchNorm2d(3, 4)
    with pytest.raises(ValueError, match=r"batch size 6 .*num_splits=4"):
        split(torch.randn(6, 3, 2, 2))


def _small_convnet() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(),
                        nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2)),
                        nn.Flatten(), nn.Linear(2 * 4 * 4, 3), nn.BatchNorm1d(3))
    for bn in (net[1], net[3][1]):
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_()
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 1.5)
    return net


def test_convert_split_batchnorm_replaces_every_bn2d_keeping_weights_and_buffers():
    net = _small_convnet()
    x = torch.randn(4, 1, 4, 4)
    old = {name: (bn.weight, bn.bias, bn.running_mean.clone(), bn.running_var.clone())
           for name, bn in net.named_modules() if type(bn) is nn.BatchNorm2d}
    net.eval()
    before = net(x)
    net[3][1].train()  # a per-layer mode the conversion must keep

    assert convert_split_batchnorm(net, 2) is net
    converted = {name: m for name, m in net.named_modules() if isinstance(m, SplitBatchNorm2d)}
    assert set(converted) == set(old) == {"1", "3.1"}
    for name, (weight, bias, mean, var) in old.items():
        bn = converted[name]
        assert bn.num_splits == 2
        assert bn.weight is weight and bn.bias is bias  # the optimizer's parameters stay the model's
        assert torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var)
    assert not net[1].training and net[3][1].training
    assert type(net[6]) is nn.BatchNorm1d
    net.eval()
    assert torch.equal(net(x), before)


def test_convert_split_batchnorm_replaces_a_root_bn_and_leaves_sync_bn_alone():
    bn = _bn_with_state(2, seed=5)
    new = convert_split_batchnorm(bn, 3)
    assert isinstance(new, SplitBatchNorm2d) and new.num_splits == 3 and new.running_mean is bn.running_mean
    assert convert_split_batchnorm(new, 2).num_splits == 2
    sync = nn.Sequential(nn.SyncBatchNorm(2))
    assert type(convert_split_batchnorm(sync, 2)[0]) is nn.SyncBatchNorm


def test_convert_split_batchnorm_refuses_bn2d_subclasses_it_would_mangle():
    class BatchNormAct2d(nn.BatchNorm2d):
        def forward(self, x):
            return torch.relu(super().forward(x))

    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Sequential(BatchNormAct2d(2)))
    with pytest.raises(TypeError, match=r"1\.0 of type BatchNormAct2d"):
        convert_split_batchnorm(net, 2)
