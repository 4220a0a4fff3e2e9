"""MAE's masked loss, patchify/unpatchify and the VAE loss against float64 loop references."""

from __future__ import annotations

import math

import pytest
import torch

from ssl_zoo.losses.generative import mae_loss, patchify, unpatchify, vae_loss


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_patchify_places_each_pixel_where_the_layout_says():
    b, c, h, w, p = 2, 3, 4, 6, 2
    images = torch.randn(b, c, h, w, generator=_gen(0), dtype=torch.float64)
    patches = patchify(images, p)
    assert patches.shape == (b, (h // p) * (w // p), p * p * c)
    grid_w = w // p
    for n in range(b):
        for row in range(h):
            for col in range(w):
                for ch in range(c):
                    index = (row // p) * grid_w + col // p
                    offset = ((row % p) * p + col % p) * c + ch
                    assert patches[n, index, offset] == images[n, ch, row, col]


@pytest.mark.parametrize("shape,grid", [((2, 3, 8, 8), None), ((1, 1, 4, 12), (2, 6))])
def test_unpatchify_inverts_patchify(shape, grid):
    images = torch.randn(*shape, generator=_gen(1))
    p = 2
    restored = unpatchify(patchify(images, p), p, channels=shape[1], grid=grid)
    assert torch.equal(restored, images)


def test_patchify_and_unpatchify_reject_inconsistent_shapes():
    with pytest.raises(ValueError):
        patchify(torch.zeros(1, 3, 5, 4), 2)
    with pytest.raises(ValueError):
        unpatchify(torch.zeros(1, 6, 12), 2, channels=3)  # 6 patches: not a square grid
    with pytest.raises(ValueError):
        unpatchify(torch.zeros(1, 4, 12), 2, channels=1)


def _mae_reference(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool,
                   eps: float) -> float:
    total, masked = 0.0, 0.0
    for n in range(pred.shape[0]):
        for i in range(pred.shape[1]):
            if mask[n, i] == 0:
                continue
            t = target[n, i].tolist()
            if norm_pix:
                m = sum(t) / len(t)
                var = sum((v - m) ** 2 for v in t) / (len(t) - 1)
                t = [(v - m) / math.sqrt(var + eps) for v in t]
            q = pred[n, i].tolist()
            total += sum((a - b) ** 2 for a, b in zip(q, t)) / len(t)
            masked += 1
    return total / masked


def _mae_inputs(seed: int, b: int = 2, n: int = 6, dim: int = 5):
    g = _gen(seed)
    pred = torch.randn(b, n, dim, generator=g, dtype=torch.float64)
    target = 3 * torch.rand(b, n, dim, generator=g, dtype=torch.float64) + 1
    mask = torch.tensor([[1, 0, 1, 1, 0, 0], [0, 1, 1, 0, 0, 1]], dtype=torch.float64)
    return pred, target, mask


@pytest.mark.parametrize("norm_pix", [True, False])
def test_mae_loss_matches_loop_reference(norm_pix):
    pred, target, mask = _mae_inputs(2)
    expected = _mae_reference(pred, target, mask, norm_pix, 1e-6)
    assert mae_loss(pred, target, mask, norm_pix=norm_pix).item() == pytest.approx(expected, rel=1e-12)


def test_mae_loss_ignores_unmasked_patches():
    pred, target, mask = _mae_inputs(3)
    before = mae_loss(pred, target, mask)
    visible = (mask == 0).unsqueeze(-1)
    changed = torch.where(visible, pred + 100 * torch.randn_like(pred), pred)
    assert mae_loss(changed, target, mask).item() == pytest.approx(before.item(), rel=1e-12)
    changed_masked = torch.where(visible, pred, pred + 1.0)
    assert mae_loss(changed_masked, target, mask).item() != pytest.approx(before.item(), rel=1e-6)


def test_mae_loss_accepts_a_boolean_mask():
    pred, target, mask = _mae_inputs(4)
    assert mae_loss(pred, target, mask.bool()).item() == pytest.approx(mae_loss(pred, target, mask).item())


def test_mae_loss_is_zero_not_nan_when_nothing_is_masked():
    pred, target, mask = _mae_inputs(5)
    assert mae_loss(pred, target, torch.zeros_like(mask)).item() == 0.0


def test_mae_loss_is_finite_with_finite_gradient_for_constant_patches():
    pred, target, mask = _mae_inputs(6)
    pred = pred.float().requires_grad_(True)
    target = torch.full_like(pred, 255.0).detach()  # zero variance: only eps keeps the division finite
    value = mae_loss(pred, target, mask.float())
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(pred.grad).all()


def _vae_reference(recon: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, beta: float,
                   reconstruction: str) -> tuple[float, float, float]:
    b = x.shape[0]
    rec_total, kl_total = 0.0, 0.0
    for n in range(b):
        r, t = recon[n].flatten().tolist(), x[n].flatten().tolist()
        if reconstruction == "mse":
            rec_total += sum((a - c) ** 2 for a, c in zip(r, t))
        else:
            rec_total += -sum(c * math.log(a) + (1 - c) * math.log(1 - a) for a, c in zip(r, t))
        pairs = zip(mu[n].tolist(), logvar[n].tolist())
        kl_total += -0.5 * sum(1 + lv - m ** 2 - math.exp(lv) for m, lv in pairs)
    rec, kl = rec_total / b, kl_total / b
    return rec + beta * kl, rec, kl


@pytest.mark.parametrize("reconstruction", ["mse", "bce"])
def test_vae_loss_matches_loop_reference(reconstruction):
    g = _gen(7)
    x = torch.rand(3, 1, 4, 4, generator=g, dtype=torch.float64)
    recon = 0.05 + 0.9 * torch.rand(3, 1, 4, 4, generator=g, dtype=torch.float64)
    mu = torch.randn(3, 5, generator=g, dtype=torch.float64)
    logvar = torch.randn(3, 5, generator=g, dtype=torch.float64)
    expected = _vae_reference(recon, x, mu, logvar, 0.7, reconstruction)
    got = vae_loss(recon, x, mu, logvar, beta=0.7, reconstruction=reconstruction)
    for value, ref in zip(got, expected):
        assert value.item() == pytest.approx(ref, rel=1e-10)


def test_vae_kl_is_zero_for_the_standard_normal_posterior():
    x = torch.rand(4, 8, generator=_gen(8))
    _, _, kl = vae_loss(x, x, torch.zeros(4, 3), torch.zeros(4, 3))
    assert kl.item() == 0.0


def test_vae_kl_is_positive_away_from_the_prior():
    x = torch.rand(4, 8, generator=_gen(9))
    _, _, kl = vae_loss(x, x, torch.full((4, 3), 0.5), torch.full((4, 3), -0.3))
    assert kl.item() > 0


@pytest.mark.parametrize("reconstruction", ["mse", "bce"])
def test_vae_loss_is_finite_with_finite_gradients_at_extreme_inputs(reconstruction):
    x = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    recon = torch.tensor([[1.0, 0.0, 0.0, 1.0]], requires_grad=True)  # saturated, half of it wrong
    mu = torch.tensor([[100.0, -100.0]], requires_grad=True)
    logvar = torch.tensor([[30.0, -30.0]], requires_grad=True)
    total, rec, kl = vae_loss(recon, x, mu, logvar, reconstruction=reconstruction)
    total.backward()
    assert all(torch.isfinite(v) for v in (total, rec, kl))
    assert all(torch.isfinite(t.grad).all() for t in (recon, mu, logvar))


def test_vae_loss_names_the_allowed_reconstructions():
    x = torch.rand(2, 3)
    with pytest.raises(ValueError, match="mse, bce"):
        vae_loss(x, x, torch.zeros(2, 1), torch.zeros(2, 1), reconstruction="l1")
