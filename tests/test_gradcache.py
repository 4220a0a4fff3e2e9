"""GradCache (Gao et al. 2021): chunked encoding gives the full-batch loss and gradients, replays each chunk's
randomness, steps BN's running statistics once per chunk, and its first pass keeps the inputs, no activations."""

from __future__ import annotations

import pytest
import torch
from test_methods import build, fixed_batch
from torch import nn

from ssl_zoo.distributed.gradcache import grad_cache
from ssl_zoo.losses.contrastive import nt_xent

TOL = dict(rtol=1e-5, atol=1e-5)


class Encoder(nn.Module):
    """A conv, BN, dropout and an MLP: every kind of layer whose chunking matters."""

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(8 * 4 * 4, 16), nn.ReLU(),
                                  nn.Linear(16, 8))

    def forward(self, x1, x2):
        z = self.head(torch.relu(self.bn(self.conv(torch.cat([x1, x2])))))
        return tuple(z.chunk(2))


def _setup(dropout: float = 0.0, batch: int = 12):
    torch.manual_seed(0)
    model = Encoder(dropout).double()
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(batch, 3, 4, 4, generator=g, dtype=torch.float64) for _ in range(2)]
    return model, views


def _grads(model: nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def _in_memory_chunks(model, views, chunk):
    """The same chunked computation with every chunk's graph kept: the reference for per-chunk BN and RNG."""
    outs = [model(*c) for c in zip(*(v.split(chunk) for v in views))]
    return tuple(torch.cat(parts) for parts in zip(*outs))


@pytest.mark.parametrize("chunk", [1, 4, 5, 12])
def test_gradcache_gradients_equal_full_batch_gradients(chunk):
    model, views = _setup()
    model.eval()  # BN with running statistics: per sample, so chunking cannot change the result
    full_loss = nt_xent(*model(*views), 0.2)
    full = _grads(model, full_loss)
    cached_loss = nt_xent(*grad_cache(model, views, chunk, [model]), 0.2)
    cached = _grads(model, cached_loss)
    torch.testing.assert_close(cached_loss, full_loss, **TOL)
    for name, grad in full.items():
        torch.testing.assert_close(cached[name], grad, **TOL, msg=lambda m, n=name: f"{n}: {m}")


def test_gradcache_replays_each_chunks_dropout_draws():
    model, views = _setup(dropout=0.5)
    model.train()
    model.bn.eval()
    torch.manual_seed(3)
    reference = _grads(model, nt_xent(*_in_memory_chunks(model, views, 4), 0.2))
    torch.manual_seed(3)
    cached = _grads(model, nt_xent(*grad_cache(model, views, 4, [model]), 0.2))
    for name, grad in reference.items():
        torch.testing.assert_close(cached[name], grad, **TOL, msg=lambda m, n=name: f"{n}: {m}")
    # The recomputation consumed no fresh randomness: the generator is where the first pass left it.
    torch.manual_seed(3)
    _in_memory_chunks(model, views, 4)
    expected_next = torch.rand(1)
    torch.manual_seed(3)
    out = grad_cache(model, views, 4, [model])
    nt_xent(*out, 0.2).backward()
    assert torch.equal(torch.rand(1), expected_next)


def test_gradcache_bn_uses_chunk_statistics_and_steps_running_stats_once_per_chunk():
    model, views = _setup()
    model.train()
    start = {k: v.clone() for k, v in model.bn.state_dict().items()}
    reference = _grads(model, nt_xent(*_in_memory_chunks(model, views, 4), 0.2))
    expected_stats = {k: v.clone() for k, v in model.bn.state_dict().items()}
    model.bn.load_state_dict(start)
    cached = _grads(model, nt_xent(*grad_cache(model, views, 4, [model]), 0.2))
    for name, grad in reference.items():
        torch.testing.assert_close(cached[name], grad, **TOL, msg=lambda m, n=name: f"{n}: {m}")
    for name, value in expected_stats.items():
        torch.testing.assert_close(model.bn.state_dict()[name], value, rtol=0, atol=0)
    assert int(model.bn.num_batches_tracked) == int(start["num_batches_tracked"]) + 3  # 12 images / 4


def test_gradcache_first_pass_keeps_only_its_inputs():
    model, views = _setup(batch=16)
    model.eval()
    saved_bytes = {"full": 0, "cached": 0}

    def count(key):
        def pack(t):
            saved_bytes[key] += t.numel() * t.element_size()
            return t
        return pack

    with torch.autograd.graph.saved_tensors_hooks(count("full"), lambda t: t):
        model(*views)
    with torch.autograd.graph.saved_tensors_hooks(count("cached"), lambda t: t):
        grad_cache(model, views, 4, [model])
    # Kept for the backward pass: everything the layers save in a plain forward; under GradCache only the
    # input images, which each chunk's recomputation starts from.
    inputs = sum(v.numel() * v.element_size() for v in views)
    assert saved_bytes["full"] > 5 * inputs and saved_bytes["cached"] == inputs, saved_bytes


def test_gradcache_rejects_a_bad_chunk_size_and_mismatched_inputs():
    model, views = _setup()
    with pytest.raises(ValueError, match="chunk_size"):
        grad_cache(model, views, 0)
    with pytest.raises(ValueError, match="first dimension"):
        grad_cache(model, [views[0], views[1][:5]], 4)


def test_simclr_with_grad_cache_matches_the_whole_batch():
    grads, losses = {}, {}
    for chunk in ("null", "3"):
        torch.manual_seed(0)
        cfg, typed, model = build("simclr", f"method.grad_cache_chunk={chunk}")
        views, _, index = fixed_batch(typed)
        model = model.double().eval()  # eval: BN statistics per chunk would differ from the whole batch's
        out = model.step([v.double() for v in views], index)
        assert out.features.shape == (8, model.feature_dim)
        losses[chunk], grads[chunk] = out.loss.detach(), _grads(model, out.loss)
    torch.testing.assert_close(losses["3"], losses["null"], **TOL)
    for name, grad in grads["null"].items():
        torch.testing.assert_close(grads["3"][name], grad, **TOL, msg=lambda m, n=name: f"{n}: {m}")


def test_simclr_grad_cache_chunk_is_validated():
    from ssl_zoo.cli import compose
    from ssl_zoo.config import validate_config
    from ssl_zoo.errors import ConfigError

    with pytest.raises(ConfigError, match="method.grad_cache_chunk"):
        validate_config(compose(["method=simclr", "method.grad_cache_chunk=0"]))
