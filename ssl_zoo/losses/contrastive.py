"""Contrastive losses over positives and negatives: NT-Xent, InfoNCE, InstDisc's NCE, SupCon.

All functions are pure: tensors in, a scalar out, no state and no collective calls. Whatever must be
global over data-parallel ranks (the 2N views of SimCLR's global batch, MoCo v3's in-batch negative
keys) is gathered by the caller and passed in; a memory bank or queue of negatives is passed in as a
tensor, too.

Every similarity is divided by a temperature and fed to ``logsumexp``/``cross_entropy`` (or
``logsigmoid`` for NCE) rather than exponentiated raw, and excluded entries (an anchor's similarity
with itself) are set to ``-inf`` before the log-sum-exp, so the losses stay finite for temperatures
from 1e-3 to 1e3.

InstDisc's full-softmax variant (Wu et al. 2018, eq. 2) needs no function of its own: with a memory
bank ``V`` [n, D] of normalised features, it is ``F.cross_entropy(f @ V.T / T, index)``, the bank
entry of each sample's own index being its positive. :func:`nce` is the paper's approximation of that
softmax for large n (eqs. 3 to 6).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _check_rows(t: Tensor, name: str, dim: int | None = None) -> None:
    if t.dim() != 2:
        raise ValueError(f"{name} must be a 2-D [rows, D] tensor, got shape {tuple(t.shape)}")
    if dim is not None and t.shape[1] != dim:
        raise ValueError(f"{name} must have feature dimension {dim}, got shape {tuple(t.shape)}")


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5,
            extra_negatives: Tensor | None = None) -> Tensor:
    """SimCLR's normalised temperature-scaled cross-entropy (Chen et al. 2020, eq. 1).

    ``z1``, ``z2``: [N, D] projections of two views of the same N images, row i of each from image i;
    they are L2-normalised here. Over the 2N views, every view is an anchor: its positive is the other
    view of its image, its negatives the other 2N-2 views and, when given, every row of
    ``extra_negatives`` [M, D] (also normalised here; a bank or queue of negatives as SimCLR v2's
    optional memory, Chen et al. 2020b). Logits are cosine similarities / ``temperature``; the loss is
    the cross-entropy of each anchor's positive, averaged over the 2N anchors.

    Data-parallel training passes the gathered global batch (with a gradient-carrying all-gather), so
    that the negatives come from every rank. ``extra_negatives`` is used as given: detach it when it is
    a stored bank. With N = 1 and no extra negatives the positive is the only candidate and the loss
    is 0.
    """
    _check_temperature(temperature)
    _check_rows(z1, "z1")
    if z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2], dim=0), dim=1)                      # [2N, D]
    candidates = z
    if extra_negatives is not None:
        _check_rows(extra_negatives, "extra_negatives", z.shape[1])
        candidates = torch.cat([z, F.normalize(extra_negatives.to(z.dtype), dim=1)], dim=0)
    logits = z @ candidates.T / temperature                                  # [2N, 2N + M]
    # An anchor is not its own negative; -inf removes it from the log-sum-exp with zero gradient.
    self_mask = torch.eye(*logits.shape, dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    idx = torch.arange(n, device=z.device)
    targets = torch.cat([idx + n, idx])                                      # each view's other view
    return F.cross_entropy(logits, targets)


def info_nce(query: Tensor, key: Tensor, queue: Tensor | None = None, temperature: float = 0.07) -> Tensor:
    """InfoNCE (Oord et al. 2018) as used by MoCo (He et al. 2019, eq. 1); mean over the N queries.

    ``query``, ``key``: [N, D], row i of ``key`` the positive of row i of ``query``; ``queue``: [K, D]
    or None. All three are L2-normalised here.

    With a queue (MoCo v1/v2): logits = [q·k₊ (N, 1), q·queueᵀ (N, K)] / T and the positive is at
    index 0; the queue's keys are the only negatives. Without one (CPC, MoCo v3): logits = q·keyᵀ / T
    [N, N] and row i's label is i, so the other keys of the batch are the negatives.

    Whatever the negatives are, they are used as passed: in data-parallel training the caller gathers
    the keys over ranks (for the in-batch form, ``key`` holds the global keys and the query rows map
    to their own key rows only when both are the global batch). Keys from a momentum encoder and the
    stored queue should carry no gradient; the caller detaches them. MoCo v3 multiplies this loss by
    2T (He et al.'s code); that scaling is the method's choice and is not applied here.
    """
    _check_temperature(temperature)
    _check_rows(query, "query")
    if query.shape != key.shape:
        raise ValueError(f"query and key must have the same shape, got {tuple(query.shape)} "
                         f"and {tuple(key.shape)}")
    q = F.normalize(query, dim=1) / temperature  # 1/T on the [N, D] queries, not on the [N, 1 + K] logits
    k = F.normalize(key, dim=1)
    if queue is not None:
        _check_rows(queue, "queue", q.shape[1])
        if queue.shape[0] == 0:
            raise ValueError("queue must hold at least one key (shape [K >= 1, D]), got an empty one")
        return _PositiveFirstCrossEntropy.apply(q, k, F.normalize(queue.to(q.dtype), dim=1))
    return F.cross_entropy(q @ k.T, torch.arange(q.shape[0], device=q.device))         # [N, N], own key i


class _PositiveFirstCrossEntropy(torch.autograd.Function):
    """``F.cross_entropy(cat([q·k₊, q·negativesᵀ], 1), zeros)`` for MoCo's queue, without the [N, 1 + K] logits.

    ``q`` (already divided by T), ``k``: [N, D]; ``negatives``: [K, D]. The plain form concatenates the
    positive to the [N, K] products, up-casts them for the softmax, stores the log-softmax and, in the
    backward pass, builds a zero-filled gradient of the same size and the softmax from it: a chain of
    passes over N·(1 + K) floats around the two products. Here the products are overwritten in place by
    exp(l - max l), their row sums taken in float32, and the backward pass is the product of those stored
    exponentials with the negatives, scaled per row: no element-wise pass over [N, K] in the backward
    pass at all. Measured by ``python -m ssl_zoo.bench.queue_loss``.

    The products run in the autocast dtype when autocast is on (as the plain form's ``@`` would), the
    positive, the normalisers and the small gradient terms in float32 (or float64 for float64 inputs).
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, negatives: Tensor) -> Tensor:
        device = q.device.type
        low = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else q.dtype
        acc = torch.promote_types(q.dtype, torch.float32)
        with torch.autocast(device, enabled=False):
            q_low, n_low = q.to(low), negatives.to(low)
            positive = (q.to(acc) * k.to(acc)).sum(dim=1)                          # [N]
            e = q_low @ n_low.T                                                  # [N, K] logits, then
            row_max = e.amax(dim=1, keepdim=True)
            e.sub_(row_max).exp_()                                               # exp(l - max l) in place
            row_sum = e.sum(dim=1, dtype=acc)
            lse_negatives = row_max.squeeze(1).to(acc) + row_sum.log()
            lse = torch.logaddexp(positive, lse_negatives)                      # log Σ over all 1 + K
            p_positive = torch.exp(positive - lse)
            # softmax over negative j = e_ij · exp(max_i - lse_i) = e_ij · w_i
            w = torch.exp(lse_negatives - lse) / row_sum
        ctx.save_for_backward(q, k, q_low, n_low, e, p_positive, w)
        ctx.negatives_dtype = negatives.dtype
        return (lse - positive).mean()

    @staticmethod
    def backward(ctx, grad: Tensor):
        q, k, q_low, n_low, e, p_positive, w = ctx.saved_tensors
        scale = grad.to(w.dtype) / q.shape[0]
        coef = ((p_positive - 1) * scale)[:, None]                               # d loss / d positive
        w = (w * scale)[:, None]
        grad_q = grad_k = grad_n = None
        with torch.autocast(q.device.type, enabled=False):
            if ctx.needs_input_grad[0]:
                grad_q = (coef * k.to(w.dtype) + w * (e @ n_low).to(w.dtype)).to(q.dtype)
            if ctx.needs_input_grad[1]:
                grad_k = (coef * q.to(w.dtype)).to(k.dtype)
            if ctx.needs_input_grad[2]:
                grad_n = (e.T @ (q_low * w.to(q_low.dtype))).to(ctx.negatives_dtype)
        return grad_q, grad_k, grad_n


def nce(positive_logits: Tensor, negative_logits: Tensor, log_normaliser: Tensor | float,
        num_data: int) -> Tensor:
    """Noise-contrastive estimation of InstDisc's non-parametric softmax (Wu et al. 2018, eqs. 3-6).

    ``positive_logits`` [N]: v_i·f_i / T, the sample's feature against its own memory-bank entry;
    ``negative_logits`` [N, m]: v_i·f_j / T against m noise entries drawn uniformly from the n =
    ``num_data`` bank entries (P_n = 1/n). ``log_normaliser``: log Z of P(i|v) = exp(v·f_i/T) / Z,
    a constant the caller estimates once with :func:`estimate_nce_normaliser` and keeps.

    With h(i, v) = P(i|v) / (P(i|v) + m·P_n), the loss is the mean over the N samples of
    -log h(positive) - Σ_j log(1 - h(negative_j)). Writing s = logit - log Z - log(m/n), h = σ(s)
    and 1 - h = σ(-s), so the loss is computed as -logsigmoid(s₊) - Σ_j logsigmoid(-s_j), finite for
    any logits. The paper's code adds ε = 1e-7 inside its divisions; here no ε is needed.
    """
    if num_data < 1:
        raise ValueError(f"num_data must be >= 1, got {num_data}")
    if positive_logits.dim() != 1 or negative_logits.dim() != 2 or \
            negative_logits.shape[0] != positive_logits.shape[0]:
        raise ValueError("positive_logits must be [N] and negative_logits [N, m], got "
                         f"{tuple(positive_logits.shape)} and {tuple(negative_logits.shape)}")
    m = negative_logits.shape[1]
    if m < 1:
        raise ValueError("negative_logits must hold at least one noise sample per row (m >= 1)")
    log_noise = math.log(m / num_data)                                        # log(m·P_n)
    shift = torch.as_tensor(log_normaliser, dtype=positive_logits.dtype,
                            device=positive_logits.device) + log_noise
    s_pos = positive_logits - shift
    s_neg = negative_logits - shift
    per_sample = -F.logsigmoid(s_pos) - F.logsigmoid(-s_neg).sum(dim=1)
    return per_sample.mean()


@torch.no_grad()
def estimate_nce_normaliser(negative_logits: Tensor, num_data: int) -> Tensor:
    """Monte-Carlo estimate of InstDisc's normaliser (Wu et al. 2018, eq. 5), returned as log Z.

    Z = Σ_j exp(v_j·f/T) over all n = ``num_data`` bank entries is estimated from uniformly drawn
    noise entries as Z ≈ n · mean(exp(``negative_logits``)), the mean over every element of the
    [N, m] tensor. Computed as log n + logsumexp(logits) - log(N·m), so it does not overflow for small
    temperatures. The paper estimates Z once, in the first iteration(s), and keeps it fixed; the result
    is therefore a constant without gradient (a 0-d tensor).
    """
    if num_data < 1:
        raise ValueError(f"num_data must be >= 1, got {num_data}")
    if negative_logits.numel() == 0:
        raise ValueError("negative_logits is empty: Z needs at least one noise sample")
    flat = negative_logits.detach().flatten()
    return torch.logsumexp(flat, dim=0) + math.log(num_data) - math.log(flat.numel())


def supcon(features: Tensor, labels: Tensor | None = None, temperature: float = 0.07,
           base_temperature: float = 0.07) -> Tensor:
    """Supervised contrastive loss, L_out (Khosla et al. 2020, eq. 2).

    ``features``: [N, V, D], V views of each of N samples (L2-normalised here); ``labels``: [N] or
    None. Each of the N·V views is an anchor i; its positives P(i) are the other views with i's label
    (with ``labels=None``, only the other views of the same sample, which is SimCLR's loss over N·V
    anchors); A(i) is every view but i. Per anchor

        L_i = -(T / T_base) · 1/|P(i)| · Σ_{p∈P(i)} log( exp(z_i·z_p/T) / Σ_{a∈A(i)} exp(z_i·z_a/T) )

    and the loss is the mean of L_i over the anchors with |P(i)| > 0. An anchor without positives
    (V = 1 and a label no other sample has) has no defined L_i and is left out of the mean rather than
    counted as 0 as in the authors' code; the two agree whenever every anchor has a positive, which
    V ≥ 2 guarantees. Returns 0 (attached to the graph) when no anchor has a positive.
    With V = 2, ``labels=None`` and ``base_temperature == temperature`` this equals
    :func:`nt_xent` (``nt_xent(f[:, 0], f[:, 1], T)``).
    """
    _check_temperature(temperature)
    if features.dim() != 3:
        raise ValueError(f"features must be [N, V, D], got shape {tuple(features.shape)}")
    n, v, _ = features.shape
    if labels is not None and labels.shape != (n,):
        raise ValueError(f"labels must be [N] = [{n}], got shape {tuple(labels.shape)}")
    # View-major order: row k·N + i is view k of sample i.
    z = F.normalize(features, dim=2).transpose(0, 1).reshape(n * v, -1)     # [NV, D]
    sample = torch.arange(n, device=z.device).repeat(v)                       # [NV]
    group = sample if labels is None else labels.to(z.device)[sample]
    is_self = torch.eye(n * v, dtype=torch.bool, device=z.device)
    positive = (group[:, None] == group[None, :]) & ~is_self                  # [NV, NV]

    logits = (z @ z.T / temperature).masked_fill(is_self, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    # where(), not a product with the mask: the diagonal is -inf and 0·(-inf) is NaN.
    pos_log_prob = torch.where(positive, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
    num_pos = positive.sum(dim=1)
    has_pos = num_pos > 0
    if not bool(has_pos.any()):
        return features.sum() * 0.0
    per_anchor = -(temperature / base_temperature) * pos_log_prob[has_pos] / num_pos[has_pos]
    return per_anchor.mean()


def _log_one_minus_softmax(logits: Tensor) -> Tensor:
    """log(1 - softmax(logits)_j) for every entry of each row of ``logits`` [R, C] (entries may be -inf).

    Exact for any spread of logits: 1 - p_j is the softmax mass of the other entries, so the result is
    logsumexp over k != j minus logsumexp over all k. Relative to the row maximum m1 that mass is
    S - exp(s_j - m1) >= 1 for every j but the arg-max; for the arg-max it is summed afresh relative to
    the second largest logit. No cancellation, no log of 0, and finite gradients where the value is.
    """
    top = logits.topk(min(2, logits.shape[1]), dim=1)
    m1 = top.values[:, :1]
    m2 = top.values[:, 1:2] if logits.shape[1] > 1 else torch.full_like(m1, float("-inf"))
    m2 = m2.clamp_min(torch.finfo(logits.dtype).min)  # a row with one finite entry: its mass is 0 anyway
    is_max = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, top.indices[:, :1], True)
    scaled = torch.exp(logits - m1)                                               # [R, C], the max is 1
    log_total = m1 + torch.log(scaled.sum(dim=1, keepdim=True))
    rest = (scaled.sum(dim=1, keepdim=True) - scaled).masked_fill(is_max, 1.0)    # >= 1 off the arg-max
    others_of_max = torch.exp(logits.masked_fill(is_max, float("-inf")) - m2).sum(dim=1, keepdim=True)
    log_others = torch.where(is_max, m2 + torch.log(others_of_max.clamp_min(torch.finfo(logits.dtype).tiny)),
                             m1 + torch.log(rest))
    return log_others - log_total


def invaspread_loss(z1: Tensor, z2: Tensor, temperature: float = 0.1, detach_weights: bool = True) -> Tensor:
    """Invariant and spreading instance feature loss (Ye, Zhang, Yuen & Chang 2019, eqs. 2-5).

    ``z1``, ``z2``: [N, D], two augmentations of the same N images (L2-normalised here). Each of the
    2N features f_a acts as the classifier weight of its instance; every feature x is classified
    among the 2N - 1 *other* features with P(a | x) = exp(f_aᵀx / T) / Σ_{k≠x} exp(f_kᵀx / T). The loss
    is the negative log-likelihood that x is recognised as its own instance (its other view, the
    positive) plus, for every other feature a of another image, that it is *not* recognised as a:

        L = -1/(2N) Σ_x [ log P(x' | x) + Σ_{a ∉ {x, x'}} log(1 - P(a | x)) ]

    summed over all 2N features x (both views as anchors, as the authors' code does). It differs from
    :func:`nt_xent` by the second, "spreading" term over the negatives.

    ``detach_weights`` (the authors' code): gradients flow through each anchor x only, not through
    the features in their role of classifier weights f_a (as with a memory bank, their origin).
    ``log(1 - P)`` is computed without cancellation, so the loss stays finite for temperatures from
    1e-3 to 1e3. In data-parallel training the caller passes the gathered global batch.
    """
    _check_temperature(temperature)
    _check_rows(z1, "z1")
    if z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    n = z1.shape[0]
    x = F.normalize(torch.cat([z1, z2], dim=0), dim=1)                        # [2N, D] anchors
    weights = x.detach() if detach_weights else x
    logits = x @ weights.T / temperature                                      # [2N, 2N]: row x, column a
    is_self = torch.eye(2 * n, dtype=torch.bool, device=x.device)
    logits = logits.masked_fill(is_self, float("-inf"))                       # a feature is not its own weight
    idx = torch.arange(n, device=x.device)
    positive = torch.cat([idx + n, idx])                                      # each view's other view
    rows = torch.arange(2 * n, device=x.device)
    log_p_positive = logits[rows, positive] - torch.logsumexp(logits, dim=1)
    is_negative = ~is_self
    is_negative[rows, positive] = False
    log_not = _log_one_minus_softmax(logits)
    spread = torch.where(is_negative, log_not, torch.zeros_like(log_not)).sum(dim=1)
    return -(log_p_positive + spread).mean()
