"""VICReg (Bardes et al. 2021): variance and covariance over the global batch, so 2 ranks of B/2 give
the loss and the (DDP-averaged) gradients of 1 rank of B."""

from __future__ import annotations

from test_method_barlow_twins import assert_two_ranks_match_one_rank


def test_two_ranks_match_one_rank_loss_and_gradients():
    assert_two_ranks_match_one_rank("vicreg")
