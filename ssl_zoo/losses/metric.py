"""Supervised deep metric-learning losses over a labelled batch: contrastive, triplet, lifted, N-pair.

Every function takes ``embeddings`` [N, D] and ``labels`` [N] and returns a scalar. Embeddings are
used as given (no normalisation here): normalising is the head's choice, and N-pair loss in particular
is defined on unnormalised embeddings. Pairs and triplets are formed inside the batch; a sampler that
draws several samples per class (P classes × K samples, Hermans et al. 2017) gives every loss
positive pairs to work with.

Where a loss has no valid term in a batch (a single sample, no positive pair, no negative), it
returns 0 attached to the graph (``embeddings.sum() * 0``) so that ``backward`` still works and the
step contributes no gradient.

Euclidean distances are computed from coordinate differences (exact at coincident points, memory
O(N²·D)) and their square root is taken as 0 with zero gradient where the squared distance is exactly
0, where sqrt has an infinite derivative: duplicated embeddings give finite gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

TRIPLET_MINING = ("batch_all", "batch_hard")


def _check_batch(embeddings: Tensor, labels: Tensor) -> None:
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must be [N, D], got shape {tuple(embeddings.shape)}")
    if labels.shape != (embeddings.shape[0],):
        raise ValueError(f"labels must be [N] = [{embeddings.shape[0]}], got shape {tuple(labels.shape)}")


def _zero(embeddings: Tensor) -> Tensor:
    """A 0 that keeps ``embeddings`` in the graph, for batches without a valid term."""
    return embeddings.sum() * 0.0


def _squared_distances(x: Tensor) -> Tensor:
    """[N, D] -> [N, N] squared Euclidean distances, exactly 0 on the diagonal and between duplicates."""
    diff = x[:, None, :] - x[None, :, :]
    return diff.pow(2).sum(dim=-1)


def _safe_sqrt(x: Tensor) -> Tensor:
    """sqrt with value and gradient 0 where ``x`` is 0 (instead of an infinite gradient)."""
    positive = x > 0
    root = torch.sqrt(torch.where(positive, x, torch.ones_like(x)))
    return torch.where(positive, root, torch.zeros_like(x))


def _distances(x: Tensor) -> Tensor:
    """[N, D] -> [N, N] Euclidean distances with the safe square root."""
    return _safe_sqrt(_squared_distances(x))


def _pair_masks(labels: Tensor) -> tuple[Tensor, Tensor]:
    """[N] -> (same-label pairs without the diagonal, different-label pairs), both [N, N] bool."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def contrastive(embeddings: Tensor, labels: Tensor, margin: float = 1.0) -> Tensor:
    """Contrastive loss (Hadsell, Chopra & LeCun 2006, eq. 4), mean over all unordered pairs i < j.

    A same-label pair costs ½·d², a different-label pair ½·max(0, margin - d)², with d the Euclidean
    distance; the ½ is the paper's. The mean is over all N(N-1)/2 pairs, so the loss's scale moves with
    the batch's share of positive pairs, as in the paper's sum. Returns 0 for N < 2.

    At d = 0 (duplicated embeddings of different labels) the derivative of d is undefined; it is taken
    as 0, so such a pair gives no gradient until the embeddings differ.
    """
    _check_batch(embeddings, labels)
    n = embeddings.shape[0]
    if n < 2:
        return _zero(embeddings)
    sq = _squared_distances(embeddings)
    i, j = torch.triu_indices(n, n, offset=1, device=embeddings.device)
    sq_pairs = sq[i, j]
    similar = labels[i] == labels[j]
    # Positive pairs use d² directly: no square root, so exact gradients even at d = 0.
    dissimilar_cost = F.relu(margin - _safe_sqrt(sq_pairs)).pow(2)
    return 0.5 * torch.where(similar, sq_pairs, dissimilar_cost).mean()


def triplet(embeddings: Tensor, labels: Tensor, margin: float = 0.2, mining: str = "batch_all",
            squared: bool = False) -> Tensor:
    """Triplet loss (Schroff, Kalenichenko & Philbin 2015, eq. 3) with in-batch mining.

    For an anchor a, a positive p ≠ a with a's label and a negative n with another label, the triplet
    costs max(0, d(a, p) - d(a, n) + margin). ``squared=True`` uses squared Euclidean distances as
    FaceNet does; the default uses Euclidean distances, which Hermans, Beyer & Leibe (2017) found more
    stable.

    ``mining``:
      * ``"batch_all"``: every valid triplet of the batch; the mean over the triplets whose cost is
        > 0 (Hermans et al. 2017's "BA≠0", since averaging in the many easy zeros dilutes the
        gradient). Memory O(N³).
      * ``"batch_hard"`` (Hermans et al. 2017): per anchor, its farthest positive and nearest
        negative; the mean over anchors that have both.

    Returns 0 when no triplet is valid (one class, or no positive pair) or, with ``batch_all``, when
    every triplet already satisfies the margin.
    """
    _check_batch(embeddings, labels)
    if mining not in TRIPLET_MINING:
        raise ValueError(f"mining={mining!r} is not allowed: expected one of {', '.join(TRIPLET_MINING)}")
    sq = _squared_distances(embeddings)
    dist = sq if squared else _safe_sqrt(sq)
    pos_mask, neg_mask = _pair_masks(labels)

    if mining == "batch_all":
        cost = dist[:, :, None] - dist[:, None, :] + margin                  # [a, p, n]
        valid = pos_mask[:, :, None] & neg_mask[:, None, :]
        active = valid & (cost > 0)
        if not bool(active.any()):
            return _zero(embeddings)
        return cost[active].mean()

    has_both = pos_mask.any(dim=1) & neg_mask.any(dim=1)
    if not bool(has_both.any()):
        return _zero(embeddings)
    # Masked entries are excluded with ±inf before max/min; only anchors with both kinds are kept.
    hardest_pos = dist.masked_fill(~pos_mask, float("-inf")).amax(dim=1)
    hardest_neg = dist.masked_fill(~neg_mask, float("inf")).amin(dim=1)
    return F.relu(hardest_pos[has_both] - hardest_neg[has_both] + margin).mean()


def lifted_structured(embeddings: Tensor, labels: Tensor, margin: float = 1.0) -> Tensor:
    """Lifted structured embedding loss, smooth upper bound (Song, Xiang, Jegelka & Savarese 2016, eq. 4).

    For every positive pair (i, j) (same label, i < j),

        J_ij = log( Σ_{k: y_k≠y_i} exp(margin - D_ik) + Σ_{l: y_l≠y_j} exp(margin - D_jl) ) + D_ij

    with D the Euclidean distance, and J = 1/(2|P|) · Σ_{(i,j)∈P} max(0, J_ij)². The log-sum-exp is
    evaluated stably, so large margins do not overflow. Returns 0 when the batch has no positive pair
    or no negative (a single class).
    """
    _check_batch(embeddings, labels)
    pos_mask, neg_mask = _pair_masks(labels)
    pos_pairs = torch.triu(pos_mask, diagonal=1)
    if not bool(pos_pairs.any()) or not bool(neg_mask.any()):
        return _zero(embeddings)
    dist = _distances(embeddings)
    # With two or more classes every sample has a negative, so no row below is all -inf.
    neg_lse = torch.logsumexp((margin - dist).masked_fill(~neg_mask, float("-inf")), dim=1)  # [N]
    i, j = pos_pairs.nonzero(as_tuple=True)
    j_ij = torch.logaddexp(neg_lse[i], neg_lse[j]) + dist[i, j]
    return F.relu(j_ij).pow(2).sum() / (2 * i.numel())


def _first_pair_per_class(labels: Tensor) -> tuple[Tensor, Tensor]:
    """Indices (anchors [P], positives [P]) of the first two samples, in batch order, of each class
    that has at least two; classes in order of first appearance."""
    anchors, positives, seen = [], [], {}
    for idx, lab in enumerate(labels.tolist()):
        first = seen.setdefault(lab, [])
        if len(first) < 2:
            first.append(idx)
            if len(first) == 2:
                anchors.append(first[0])
                positives.append(first[1])
    device = labels.device
    return (torch.tensor(anchors, dtype=torch.long, device=device),
            torch.tensor(positives, dtype=torch.long, device=device))


def n_pair(embeddings: Tensor, labels: Tensor, l2_reg: float = 0.0) -> Tensor:
    """Multi-class N-pair loss (Sohn 2016, eq. 6) with the paper's optional L2 penalty on embeddings.

    From the batch, one (anchor a_i, positive p_i) pair per class with at least two samples: the first
    two samples of that class in batch order (the paper builds batches of N such pairs; here they are
    taken from an arbitrary labelled batch). The other classes' positives are each anchor's negatives:

        loss = mean_i log(1 + Σ_{j≠i} exp(a_i·p_j - a_i·p_i)) = cross_entropy(A·Pᵀ, i)

    plus ``l2_reg`` · mean over the 2P chosen embeddings of ||f||² (Sohn regularises the norms since
    inner products of unnormalised embeddings grow without bound; TensorFlow's ``npairs_loss`` writes
    its penalty as λ/4·(mean ||a||² + mean ||p||²), which is this with l2_reg = λ/2). With a single
    pair the loss term is log 1 = 0; without any pair the result is 0, penalty included.
    """
    _check_batch(embeddings, labels)
    a_idx, p_idx = _first_pair_per_class(labels)
    if a_idx.numel() == 0:
        return _zero(embeddings)
    anchors, positives = embeddings[a_idx], embeddings[p_idx]
    logits = anchors @ positives.T                                               # [P, P]
    loss = F.cross_entropy(logits, torch.arange(a_idx.numel(), device=embeddings.device))
    if l2_reg:
        chosen = torch.cat([anchors, positives], dim=0)
        loss = loss + l2_reg * chosen.pow(2).sum(dim=1).mean()
    return loss
