"""``method.bank_init=features``: the memory banks of InstDisc, PIRL and CMC start from the encoder's own
embeddings of every training image, once per run (a resumed run keeps the bank it had)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from conftest import tiny
from test_resume import KillAfter, Killed, last_state

from ssl_zoo.cli import compose
from ssl_zoo.methods._clustering import eval_mode, training_set_features
from ssl_zoo.train import train

BANKS = {"instdisc": ("bank",), "pirl": ("bank",), "cmc": ("bank_l", "bank_ab")}
QUIET = ("monitor.knn=false", "monitor.probe=false", "monitor.health=false", "data.num_samples=48")


class FirstBatch(pl.Callback):
    """The banks at the first training batch, and the embeddings computed independently then."""

    def __init__(self):
        self.banks: list[torch.Tensor] = []
        self.expected: torch.Tensor | None = None
        self.filled: list[bool] = []

    def on_train_batch_start(self, trainer, model, batch, batch_idx):
        if self.expected is not None:
            return
        banks = [getattr(model, name) for name in BANKS[model.name]]
        self.banks = [bank.all().clone() for bank in banks]
        self.filled = [bool(bank.filled) for bank in banks]
        with eval_mode(model):
            self.expected = training_set_features(model.embed, trainer.datamodule, model.device)


@pytest.mark.parametrize("method", sorted(BANKS))
def test_banks_start_from_the_encoders_embeddings_of_every_training_image(method, in_tmp):
    seen = FirstBatch()
    train(compose(tiny(method, "method.bank_init=features", "trainer.max_steps=1", *QUIET)), in_tmp / "run",
          extra_callbacks=[seen])
    assert all(seen.filled)
    expected = seen.expected.split([bank.shape[1] for bank in seen.banks], dim=1)
    for bank, rows in zip(seen.banks, expected, strict=True):
        assert bank.shape[0] == 48
        torch.testing.assert_close(bank, F.normalize(rows, dim=1), rtol=1e-5, atol=1e-6)


def test_random_rows_are_kept_when_the_bank_init_is_random(in_tmp):
    seen = FirstBatch()
    train(compose(tiny("instdisc", "trainer.max_steps=1", *QUIET)), in_tmp / "run", extra_callbacks=[seen])
    assert seen.filled == [False]
    assert (seen.banks[0] @ F.normalize(seen.expected, dim=1).T).diagonal().abs().max() < 0.99


def test_a_resumed_run_keeps_its_bank_instead_of_refilling_it(in_tmp):
    overrides = tiny("instdisc", "method.bank_init=features", "trainer.max_steps=3",
                     "trainer.checkpoint_every_n_steps=1", *QUIET)
    with pytest.raises(Killed):
        train(compose(overrides), in_tmp / "run", extra_callbacks=[KillAfter(2)])
    saved = last_state(in_tmp / "run")["state_dict"]
    assert bool(saved["bank.filled"])
    seen = FirstBatch()
    train(compose([*overrides, "resume=auto"]), in_tmp / "run", extra_callbacks=[seen])
    assert torch.equal(seen.banks[0], saved["bank.bank"])  # the checkpoint's rows, not a fresh pass
