"""A memory bank: one L2-normalised feature vector per training image (InstDisc, PIRL, Local Aggregation).

Wu et al. (2018) keep v_i for each of the n training images, contrast a sample's feature against its
own entry (the positive) and entries drawn uniformly (noise), and after the loss move the batch's
entries towards the new features: v_i ← normalize(m·v_i + (1 - m)·f_i), m = 0.5. PIRL (Misra & van der
Maaten 2019) keeps the features of the untransformed images the same way; Local Aggregation (Zhuang
et al. 2019) reads neighbours and clusters off the whole bank (:meth:`MemoryBank.all`).

State (the rows and each NCE objective's log Z) is in registered buffers, so a checkpoint holds it and a
resumed run continues with the same bank. ``bank_init=features`` (InstDisc's full softmax; Local
Aggregation always) starts the rows from the encoder's own embeddings of every training image instead of
random vectors (:func:`ssl_zoo.methods._clustering.fill_from_training_set`): with random rows the first
epoch's positives are noise, which a paper's 200 epochs absorb and a two-epoch budget does not. The bank
does no collective work of its own except the estimate of log Z over the global batch: under data
parallelism the caller passes *gathered* indices and features to :meth:`MemoryBank.update`, so every rank
holds the same bank.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ssl_zoo.distributed import gather_no_grad
from ssl_zoo.errors import check
from ssl_zoo.losses.contrastive import nce

BANK_INITS = ("random", "features")  # the rows a fresh run starts from: random unit vectors, or embeddings


def check_bank_init(prefix: str, bank_init: str, normaliser_momentum: float, uses_nce: bool = True) -> None:
    """The one-line config check of ``bank_init`` for a method whose NCE (``uses_nce``) reads the bank: a filled
    bank needs a normaliser that follows it (``normaliser_momentum`` < 1). Measured on the default budget
    (BENCHMARKS.md): Z estimated once from a filled bank, whose rows are all alike, is so large that no
    positive reaches it and the run collapses (InstDisc: kNN -24 points)."""
    check(bank_init in BANK_INITS, f"{prefix}.bank_init", bank_init, "one of: " + ", ".join(BANK_INITS))
    check(bank_init == "random" or not uses_nce or normaliser_momentum < 1, f"{prefix}.bank_init", bank_init,
          "random with loss=nce and a fixed normaliser (normaliser_momentum=1)",
          "a Z estimated once from a filled bank, whose rows are all alike, is so large that no positive can reach "
          "it and the run collapses: set method.normaliser_momentum below 1 (e.g. 0.9) to let Z follow the bank")


class MemoryBank(nn.Module):
    """``size`` rows of dimension ``dim`` [n, D], one per training image, indexed by dataset index.

    Rows start as random unit vectors (InstDisc's code draws them uniformly; any random unit vectors
    serve). ``momentum``: the weight of the old row in :meth:`update` (0 replaces it). ``num_normalisers``:
    how many NCE objectives keep their own log Z (Wu et al. 2018, eq. 5) against this bank; each is NaN
    until :meth:`normaliser` estimates it at the first step. ``normaliser_momentum`` μ: 1 keeps that first
    estimate (the paper); below 1, Z follows the bank as a running mean, Z ← μ·Z + (1 - μ)·Ẑ with Ẑ each
    step's Monte-Carlo estimate.
    """

    frozen_in_overfit_test = True  # a fixed-batch overfit would write its own positives into the bank

    def __init__(self, size: int, dim: int, momentum: float = 0.5, num_normalisers: int = 1,
                 normaliser_momentum: float = 1.0):
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"a memory bank needs size >= 1 and dim >= 1, got {size} and {dim}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"memory-bank momentum must be in [0, 1), got {momentum}")
        if num_normalisers < 0:
            raise ValueError(f"num_normalisers must be >= 0, got {num_normalisers}")
        if not 0.0 <= normaliser_momentum <= 1.0:
            raise ValueError(f"normaliser_momentum must be in [0, 1], got {normaliser_momentum}")
        self.momentum = momentum
        self.normaliser_momentum = normaliser_momentum
        self.register_buffer("bank", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("log_z", torch.full((num_normalisers,), float("nan")))
        self.register_buffer("filled", torch.tensor(False))  # rows set from embeddings by fill()

    @property
    def size(self) -> int:
        return self.bank.shape[0]

    @property
    def dim(self) -> int:
        return self.bank.shape[1]

    def forward(self, index: Tensor) -> Tensor:
        """The stored rows of ``index`` (any shape S) as [*S, D], detached."""
        return self.bank.detach()[index]

    def all(self) -> Tensor:
        """Every row [n, D], detached: for a full softmax over the data set or a neighbour search."""
        return self.bank.detach()

    def sample(self, rows: int, m: int) -> Tensor:
        """``m`` noise indices per anchor, drawn uniformly with replacement: [rows, m] (P_n = 1/n)."""
        return torch.randint(self.size, (rows, m), device=self.bank.device)

    @torch.no_grad()
    def normaliser(self, k: int, negative_logits: Tensor) -> Tensor:
        """log Z of objective ``k`` after seeing the negative logits [N, m] of this step.

        The first call sets it to the Monte-Carlo estimate log Ẑ = log n + log mean(exp(logits)); later
        calls keep it (``normaliser_momentum`` 1, the paper) or move it, in linear space, towards that
        step's estimate: Z ← μ·Z + (1 - μ)·Ẑ. Wu et al. fix Z because on ImageNet the features soon
        spread out and Z barely moves; when the bank's rows drift together or apart (a short run, a bank
        filled from a fresh encoder) a fixed Z puts every noise row above it or every positive below it.
        Under data parallelism the mean runs over the noise of *every* rank (the per-rank log-sum-exps and
        counts are gathered and combined in linear space), so every rank keeps the same constant, the one
        a single device holding the global batch would estimate."""
        mu = self.normaliser_momentum
        fresh = bool(torch.isnan(self.log_z[k]))
        if fresh or mu < 1.0:
            flat = negative_logits.detach().flatten().to(self.log_z.dtype)
            lse = gather_no_grad(torch.logsumexp(flat, dim=0).reshape(1))
            count = gather_no_grad(torch.tensor([flat.numel()], dtype=self.log_z.dtype, device=flat.device))
            estimate = torch.logsumexp(lse, dim=0) + math.log(self.size) - torch.log(count.sum())
            if fresh or mu == 0.0:
                self.log_z[k] = estimate
            else:
                self.log_z[k] = torch.logaddexp(self.log_z[k] + math.log(mu), estimate + math.log1p(-mu))
        return self.log_z[k].clone()  # a copy: the next objective's update writes log_z in place

    def nce_loss(self, z: Tensor, index: Tensor, num_negatives: int, temperature: float, k: int = 0,
                 shared_noise: bool = False) -> Tensor:
        """InstDisc's NCE (Wu et al. 2018, eq. 4) of anchors ``z`` [N, D] (normalised): the positive is each
        anchor's own row ``index`` [N], the noise ``num_negatives`` uniformly drawn rows, log Z that of
        objective ``k`` (:meth:`normaliser`). InstDisc, CMC (the other view's bank) and PIRL use it.

        ``shared_noise``: one draw of m rows serves every anchor of the batch (each anchor still sees m
        uniform noise rows; the draws are shared, not independent): an [m, D] gather and one matrix product
        instead of an [N, m, D] gather, which at N = 256 and PIRL's m = 32,000 is 4 GB per step."""
        positive = (z * self(index)).sum(dim=1) / temperature                           # [N]
        if shared_noise:
            noise = self.sample(1, num_negatives)[0]                                     # [m]
            negative = z @ self(noise).T / temperature                                   # [N, m]
        else:
            noise = self.sample(z.shape[0], num_negatives)                               # [N, m]
            negative = torch.einsum("nme,ne->nm", self(noise), z) / temperature         # [N, m]
        return nce(positive, negative, self.normaliser(k, negative), self.size)

    @torch.no_grad()
    def fill(self, features: Tensor) -> None:
        """Every row from ``features`` [n, D] (normalised here), marked filled (in the checkpoint)."""
        if features.shape != self.bank.shape:
            raise ValueError(f"fill expects features {tuple(self.bank.shape)}, got {tuple(features.shape)}")
        self.bank.copy_(F.normalize(features.to(self.bank.dtype), dim=1))
        self.filled.fill_(True)

    @torch.no_grad()
    def update(self, index: Tensor, features: Tensor) -> None:
        """v_i ← normalize(m·v_i + (1 - m)·normalize(f_i)) for ``index`` [N] and ``features`` [N, D]
        (gathered over ranks by the caller). An index present twice keeps one of its updates."""
        if index.dim() != 1 or features.dim() != 2 or features.shape != (index.shape[0], self.dim):
            raise ValueError(f"update expects index [N] and features [N, {self.dim}], got "
                             f"{tuple(index.shape)} and {tuple(features.shape)}")
        f = F.normalize(features.detach().to(self.bank.dtype), dim=1)
        mixed = self.momentum * self.bank[index] + (1.0 - self.momentum) * f
        self.bank[index] = F.normalize(mixed, dim=1)
