"""``method.bank_init=features``: InstDisc's, PIRL's and CMC's memory banks start from the encoder's own
embeddings of every training image, once per run (a resumed run keeps the bank it had); with NCE's fixed
normaliser the option is refused."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from conftest import tiny
from test_resume import KillAfter, Killed, last_state

from ssl_zoo.cli import compose
from ssl_zoo.config import validate_config
from ssl_zoo.errors import ConfigError
from ssl_zoo.methods._clustering import eval_mode, training_set_features
from ssl_zoo.train import train

QUIET = ("monitor.knn=false", "monitor.probe=false", "monitor.health=false", "data.num_samples=48")
SOFTMAX = ("method.loss=softmax", *QUIET)


class FirstBatch(pl.Callback):
    """Each named bank at the first training batch (its rows and its filled flag), and the embeddings its
    paired embedding function gives every training image then, computed independently."""

    def __init__(self, pairs=(("bank", "embed"),)):
        self.pairs = pairs
        self.banks: list[torch.Tensor] = []
        self.expected: list[torch.Tensor] = []
        self.filled: list[bool] = []

    def on_train_batch_start(self, trainer, model, batch, batch_idx):
        if self.banks:
            return
        banks = [getattr(model, bank) for bank, _ in self.pairs]
        self.banks, self.filled = [b.all().clone() for b in banks], [bool(b.filled) for b in banks]
        with eval_mode(model):
            self.expected = [training_set_features(getattr(model, embed), trainer.datamodule, model.device)
                             for _, embed in self.pairs]


@pytest.mark.parametrize("method,extra", [("instdisc", SOFTMAX), ("pirl", ("method.normaliser_momentum=0.9", *QUIET))])
def test_the_bank_starts_from_the_encoders_embeddings_of_every_training_image(in_tmp, method, extra):
    seen = FirstBatch()
    train(compose(tiny(method, "method.bank_init=features", "trainer.max_steps=1", *extra)), in_tmp / "run",
          extra_callbacks=[seen])
    assert seen.filled[0] and seen.banks[0].shape[0] == 48
    torch.testing.assert_close(seen.banks[0], F.normalize(seen.expected[0], dim=1), rtol=1e-5, atol=1e-6)


def test_random_rows_are_kept_when_the_bank_init_is_random(in_tmp):
    seen = FirstBatch()
    train(compose(tiny("instdisc", "trainer.max_steps=1", *SOFTMAX)), in_tmp / "run", extra_callbacks=[seen])
    assert not seen.filled[0]
    assert (seen.banks[0] @ F.normalize(seen.expected[0], dim=1).T).diagonal().abs().max() < 0.99


def test_a_resumed_run_keeps_its_bank_instead_of_refilling_it(in_tmp):
    overrides = tiny("instdisc", "method.bank_init=features", "trainer.max_steps=3",
                     "trainer.checkpoint_every_n_steps=1", *SOFTMAX)
    with pytest.raises(Killed):
        train(compose(overrides), in_tmp / "run", extra_callbacks=[KillAfter(2)])
    saved = last_state(in_tmp / "run")["state_dict"]
    assert bool(saved["bank.filled"])
    seen = FirstBatch()
    train(compose([*overrides, "resume=auto"]), in_tmp / "run", extra_callbacks=[seen])
    assert torch.equal(seen.banks[0], saved["bank.bank"])  # the checkpoint's rows, not a fresh pass


def test_a_filled_bank_with_nces_fixed_normaliser_is_refused_in_one_line_and_a_running_one_accepted():
    with pytest.raises(ConfigError, match="method.bank_init.*loss=nce.*normaliser_momentum") as err:
        validate_config(compose(tiny("instdisc", "method.bank_init=features")))
    assert "\n" not in str(err.value)
    validate_config(compose(tiny("instdisc", "method.bank_init=features", "method.normaliser_momentum=0.9")))
    with pytest.raises(ConfigError, match="method.bank_init"):
        validate_config(compose(tiny("pirl", "method.bank_init=features")))


def test_cmc_starts_each_views_bank_from_that_views_embeddings(in_tmp):
    seen = FirstBatch(pairs=(("bank_l", "embed_l"), ("bank_ab", "embed_ab")))
    train(compose(tiny("cmc", "method.bank_init=features", "method.normaliser_momentum=0.9", "trainer.max_steps=1",
                       *QUIET)), in_tmp / "run", extra_callbacks=[seen])
    for bank, filled, expected in zip(seen.banks, seen.filled, seen.expected):
        assert filled and bank.shape[0] == 48
        torch.testing.assert_close(bank, F.normalize(expected, dim=1), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(seen.banks[0], seen.banks[1])


def test_cmc_refuses_a_filled_bank_without_banks_or_with_a_fixed_normaliser():
    with pytest.raises(ConfigError, match="method.bank_init.*objective=infonce"):
        validate_config(compose(tiny("cmc", "method.bank_init=features", "method.objective=infonce")))
    with pytest.raises(ConfigError, match="method.bank_init.*normaliser_momentum"):
        validate_config(compose(tiny("cmc", "method.bank_init=features")))
    validate_config(compose(tiny("cmc", "method.bank_init=features", "method.normaliser_momentum=0.9")))
