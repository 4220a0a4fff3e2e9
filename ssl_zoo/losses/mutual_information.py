"""Mutual-information bounds over spatial features: CPC's InfoNCE over a grid of patch latents and
DIM / AMDIM's local-global estimators (InfoNCE and Jensen-Shannon).

Pure functions like the rest of ``ssl_zoo.losses``: whatever must be global over data-parallel ranks
(the candidate latents, the other images' local features) is gathered by the caller and passed in,
together with where this rank's own rows sit among them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

ESTIMATORS = ("nce", "jsd")


def cpc_info_nce(predictions: Sequence[Tensor], latents: Tensor, first_step: int = 1,
                 candidates: Tensor | None = None, offset: int = 0) -> Tensor:
    """CPC's InfoNCE over a grid of patch latents (Oord et al. 2018, eq. 4; Hénaff et al. 2019, eq. 3).

    ``latents`` z [N, G, G, D], indexed (image, row, column). ``predictions[s]`` [N, G, G, D] is
    W_k c for the step k = ``first_step`` + s: the prediction, made from the context at row i, of the
    latent k rows below, z[n, i + k, j]; rows with i + k >= G have no target and are ignored.

    Each prediction scores every candidate latent by a dot product (no normalisation, no temperature,
    as in CPC) and is a softmax classification of its target among them. ``candidates`` [M, D]
    defaults to every latent of the batch (``latents`` flattened in (n, i, j) order), so the negatives
    are the other patches of the same image and of every other image; with data parallelism the
    caller passes the gathered latents of all ranks and ``offset``, the row of this rank's first
    latent among them. The loss is the mean over the steps of each step's mean over its predictions.
    """
    if latents.dim() != 4 or latents.shape[1] != latents.shape[2]:
        raise ValueError(f"latents must be [N, G, G, D], got shape {tuple(latents.shape)}")
    n, g, _, d = latents.shape
    if not predictions:
        raise ValueError("predictions must hold at least one step")
    if first_step < 1 or first_step + len(predictions) - 1 >= g:
        raise ValueError(f"steps {first_step}..{first_step + len(predictions) - 1} do not fit a grid of {g} rows")
    if candidates is None:
        candidates = latents.reshape(n * g * g, d)
    flat_index = torch.arange(n * g * g, device=latents.device).reshape(n, g, g) + offset
    losses = []
    for s, pred in enumerate(predictions):
        if pred.shape != latents.shape:
            raise ValueError(f"predictions[{s}] must have the shape of latents {tuple(latents.shape)}, "
                             f"got {tuple(pred.shape)}")
        k = first_step + s
        queries = pred[:, : g - k].reshape(-1, d)               # contexts of rows 0 .. G-k-1
        targets = flat_index[:, k:].reshape(-1)                  # their latents k rows below
        logits = queries @ candidates.to(queries.dtype).T        # [N (G-k) G, M]
        losses.append(F.cross_entropy(logits, targets))
    return torch.stack(losses).mean()


def _local_global_scores(global_features: Tensor, local_features: Tensor, clip: float | None,
                         penalty: float, scale: float) -> tuple[Tensor, Tensor]:
    """Scores [N, M, L] of every global vector against every location of every candidate image, scaled
    and soft clipped; and the squared-score penalty computed on the scaled scores before the clip."""
    if global_features.dim() != 2 or local_features.dim() != 3 or global_features.shape[1] != local_features.shape[2]:
        raise ValueError("global_features must be [N, D] and local_features [M, L, D], got "
                         f"{tuple(global_features.shape)} and {tuple(local_features.shape)}")
    raw = torch.einsum("nd,mld->nml", global_features, local_features.to(global_features.dtype))
    if scale != 1.0:
        raw = raw * scale
    reg = penalty * raw.pow(2).mean() if penalty else raw.new_zeros(())
    scores = clip * torch.tanh(raw / clip) if clip else raw
    return scores, reg


def _positive_mask(positive: Tensor | None, n: int, m: int, device) -> Tensor:
    if positive is None:
        if n != m:
            raise ValueError(f"with {n} global and {m} local rows, give `positive`: the local row of each global")
        positive = torch.arange(n, device=device)
    if positive.shape != (n,):
        raise ValueError(f"positive must be [N] = [{n}], got shape {tuple(positive.shape)}")
    return torch.arange(m, device=device)[None, :] == positive.to(device)[:, None]  # [N, M]


def local_global_nce(global_features: Tensor, local_features: Tensor, positive: Tensor | None = None,
                     clip: float | None = 20.0, penalty: float = 0.0, scale: float = 1.0) -> Tensor:
    """AMDIM's local-global InfoNCE (Bachman, Hjelm & Buchwalter 2019, sec. 3.1 and 3.4).

    ``global_features`` [N, D]: one vector per image of one view; ``local_features`` [M, L, D]: the
    L locations of the feature map of the other view of M candidate images; ``positive`` [N]: the
    candidate row holding image n's own locals (default ``arange(N)``, M = N). Scores are scaled dot
    products s(n, m, l) = ``scale`` · g_n · l_{m,l} (AMDIM's code scales by 1/sqrt(D)); the penalty
    ``penalty`` · mean(s²) over all of them keeps them small, then s is soft-clipped to
    ``clip`` · tanh(s / ``clip``) (AMDIM: weight 4e-2, clip 20; ``clip=None`` or 0 leaves the scores
    as they are).

    Every location l of image n's own map is one positive: it is classified against every location
    of every other candidate image,

        -log exp(s(n, n, l)) / (exp(s(n, n, l)) + Σ_{m≠n} Σ_{l'} exp(s(n, m, l'))),

    averaged over n and l. Returned: that mean plus the penalty.
    """
    n, m, length = global_features.shape[0], local_features.shape[0], local_features.shape[1]
    scores, reg = _local_global_scores(global_features, local_features, clip, penalty, scale)
    pos_mask = _positive_mask(positive, n, m, scores.device)
    pos = scores[pos_mask]                                                          # [N, L]
    if m == 1:  # no negative: every positive is the only candidate, log 1 = 0
        return (pos - pos).mean() + reg
    neg = scores.masked_fill(pos_mask[:, :, None], float("-inf")).reshape(n, m * length)
    neg_lse = torch.logsumexp(neg, dim=1, keepdim=True)                             # [N, 1]
    loss = torch.logaddexp(pos, neg_lse.expand_as(pos)) - pos
    return loss.mean() + reg


def local_global_jsd(global_features: Tensor, local_features: Tensor, positive: Tensor | None = None,
                     clip: float | None = 20.0, penalty: float = 0.0, scale: float = 1.0) -> Tensor:
    """DIM's Jensen-Shannon local-global estimator (Hjelm et al. 2018, eq. 4), as a loss.

    Shapes, scores, ``positive``, ``clip``, ``penalty`` and ``scale`` as :func:`local_global_nce`. Pairs of an
    image's global vector with its own locations are drawn from the joint, pairs with other images'
    locations from the product of marginals; the loss is the negated JSD bound,

        mean_{pos} softplus(-s) + mean_{neg} softplus(s),

    the first mean over the N·L positive scores, the second over the N·(M-1)·L negative ones (0 when
    M = 1), plus the penalty.
    """
    n, m = global_features.shape[0], local_features.shape[0]
    scores, reg = _local_global_scores(global_features, local_features, clip, penalty, scale)
    pos_mask = _positive_mask(positive, n, m, scores.device)[:, :, None].expand_as(scores)
    loss = F.softplus(-scores[pos_mask]).mean()
    if m > 1:
        loss = loss + F.softplus(scores[~pos_mask]).mean()
    return loss + reg
