"""Clustering losses: SwAV's Sinkhorn-Knopp codes and swapped prediction (Caron et al. 2020), and the
Local Aggregation objective (Zhuang et al. 2019)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

Reduce = Callable[[Tensor], Tensor]


def _logsumexp_over_samples(logq: Tensor, all_reduce: Reduce | None, all_max: Reduce | None,
                            n_global: Tensor | None) -> Tensor:
    """log Σ_j exp(logq_kj) over every sample j of every rank, per prototype k: [K, B] -> [K, 1].

    The shift that keeps exp finite must be the same on every rank (a per-rank shift would weight the
    ranks' samples differently), so across ranks it is the global per-prototype maximum when ``all_max``
    is given, else the global per-prototype mean (computable with a sum only).
    """
    if all_reduce is None:
        shift = logq.max(dim=1, keepdim=True).values
    elif all_max is not None:
        shift = all_max(logq.max(dim=1, keepdim=True).values)
    else:
        shift = all_reduce(logq.sum(dim=1, keepdim=True)) / n_global
    partial = torch.exp(logq - shift).sum(dim=1, keepdim=True)
    total = partial if all_reduce is None else all_reduce(partial)
    return shift + torch.log(total)


@torch.no_grad()
def sinkhorn(scores: Tensor, epsilon: float = 0.05, iterations: int = 3, all_reduce: Reduce | None = None,
             all_max: Reduce | None = None, log_domain: bool = False) -> Tensor:
    """SwAV's Sinkhorn-Knopp codes (Caron et al. 2020, sec. 3.1 and appendix A.1).

    ``scores``: [B, K] prototype scores of this rank's samples. Returns codes [B, K] without gradient:
    each sample's code sums to 1 and, as ``iterations`` grows, each prototype receives B/K of the mass
    (B_global/K over all ranks).

    The reference computes Q = exp(scores/ε)ᵀ, divides by its total, then alternates ``iterations``
    times: each prototype row divided by its (all-reduced) sum and by K, each sample column divided by
    its sum and by B_global; finally Q·B_global. Here the same iteration runs in the log domain: the
    scalar factors (total, 1/K, 1/B_global) cancel in the next normalisation and the final ·B_global
    makes each column sum to 1, so the result equals the reference's, while exp never sees
    scores/ε unshifted (stable for large scores and small ε, where the reference overflows). After the
    first step the loop runs in the exp domain unless a sample's column would underflow (or
    ``log_domain`` asks for every step in the log domain, ~3x slower on a CPU at B=4096, K=3000).

    Across ranks, pass ``all_reduce`` (sum over ranks, e.g. ``dist.all_reduce`` wrapped to return its
    input) and preferably ``all_max`` (element-wise max over ranks); every rank must call this with the
    same K. Without ``all_max`` the row normalisation is shifted by the global per-prototype mean of
    scores/ε, exact in value and finite while a prototype's scores/ε spread less than ~80 above their
    mean (true for SwAV's cosine scores with ε ≥ 0.025). Work is done in at least float32.

    With a queue of past scores, the caller passes ``torch.cat([queue_scores, scores])`` and keeps the
    last B rows, as the reference does.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be [B, K], got shape {tuple(scores.shape)}")
    if epsilon <= 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    dtype = torch.promote_types(scores.dtype, torch.float32)
    logq = scores.detach().to(dtype).t() / epsilon  # [K, B]
    n_global = None
    if all_reduce is not None and all_max is None:
        n_global = all_reduce(torch.tensor(float(logq.shape[1]), dtype=dtype, device=logq.device))
    # The first row normalisation in the log domain: afterwards every entry is <= 1, so one exp cannot
    # overflow, and the remaining steps are sums and divisions (the reference's own loop, ~3x faster on a
    # CPU than a logsumexp per step). A sample whose every score lies ~87 (float32) below each prototype's
    # best would underflow to a zero column: then, on every rank alike, the whole loop runs in the log
    # domain instead.
    log_rows = logq - _logsumexp_over_samples(logq, all_reduce, all_max, n_global)
    if not log_domain:
        q = log_rows.exp()
        columns = q.sum(dim=0, keepdim=True)
        underflow = (columns.min() <= torch.finfo(dtype).tiny / torch.finfo(dtype).eps).to(dtype)
        log_domain = bool(underflow if all_reduce is None else all_reduce(underflow))
    if not log_domain:
        q.div_(columns)  # in place: q is this function's own; the divisions are most of the time left
        for _ in range(iterations - 1):
            rows = q.sum(dim=1, keepdim=True)
            q.div_(rows if all_reduce is None else all_reduce(rows))
            q.div_(q.sum(dim=0, keepdim=True))
        return q.t().to(scores.dtype)
    logq = log_rows - torch.logsumexp(log_rows, dim=0, keepdim=True)
    for _ in range(iterations - 1):
        # Each prototype's total mass equal (the 1/K factor cancels in the next step).
        logq = logq - _logsumexp_over_samples(logq, all_reduce, all_max, n_global)
        # Each sample's code sums to 1 (the reference's 1/B_global, undone by its final ·B_global).
        logq = logq - torch.logsumexp(logq, dim=0, keepdim=True)
    return torch.exp(logq).t().to(scores.dtype)


def swav_loss(logits: Sequence[Tensor], codes: Sequence[Tensor], temperature: float = 0.1) -> Tensor:
    """SwAV's swapped prediction loss (Caron et al. 2020, eq. 1 and 2).

    ``logits``: one [B, K] tensor of raw prototype scores per view (global views first, then local
    crops); the temperature is applied here. ``codes``: [B, K] codes (from :func:`sinkhorn`) of the
    first ``len(codes)`` views. For each code view i, the loss averages over every other view v ≠ i the
    cross-entropy -Σ_k q_ik log softmax(p_v / T)_k (mean over the batch), then averages over the code
    views. The codes are targets: they are detached here.
    """
    n_views, n_codes = len(logits), len(codes)
    if n_views < 2:
        raise ValueError(f"swav_loss needs at least 2 views, got {n_views}")
    if not 1 <= n_codes <= n_views:
        raise ValueError(f"codes must cover between 1 and {n_views} views, got {n_codes}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_probs = [F.log_softmax(p / temperature, dim=-1) for p in logits]
    total = logits[0].new_zeros(())
    for i, q in enumerate(codes):
        q = q.detach()
        per_view = [-(q * log_probs[v]).sum(dim=-1).mean() for v in range(n_views) if v != i]
        total = total + torch.stack(per_view).mean()
    return total / n_codes



def local_aggregation_loss(similarities: Tensor, close: Tensor, temperature: float = 0.07) -> Tensor:
    """Local Aggregation's objective (Zhuang et al. 2019, eq. 3 and 4): -log P(C ∩ B | v) / P(B | v).

    ``similarities``: [N, K] cosine similarities v·v_j between each embedding and its K background
    neighbours B (memory-bank entries); ``close``: [N, K] bool, whether neighbour j is also a close
    neighbour (j ∈ C). With P(A | v) = Σ_{j ∈ A} exp(v·v_j / T) / Z, the normaliser Z cancels:

        loss_i = logsumexp_{j ∈ B_i} (s_ij / T) - logsumexp_{j ∈ C_i ∩ B_i} (s_ij / T)

    averaged over the rows whose C ∩ B is not empty (the others have no gradient in the reference
    either, whose ratio is 0 there). Instance recognition is the special case C_i = {i}.
    """
    if similarities.dim() != 2 or close.shape != similarities.shape:
        raise ValueError(f"similarities [N, K] and close [N, K] must match, got {tuple(similarities.shape)} "
                         f"and {tuple(close.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = similarities / temperature
    close = close.bool()
    log_background = torch.logsumexp(logits, dim=1)
    log_close = torch.logsumexp(logits.masked_fill(~close, float("-inf")), dim=1)
    valid = close.any(dim=1)
    if not valid.any():
        return logits.sum() * 0.0
    return (log_background - log_close)[valid].mean()
