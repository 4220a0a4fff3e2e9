"""ssl_zoo.data: readers, configs, the resumable sampler and loader, and Lightning mid-epoch resume."""

from __future__ import annotations

import gzip
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from PIL import Image
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DistributedSampler
from torchvision import transforms as T

from ssl_zoo.data import (
    DataConfig,
    ResumableSampler,
    SSLDataModule,
    TrainViewDataset,
    build_datasets,
    collate_views,
    load_fashion_mnist,
    make_synthetic,
)
from ssl_zoo.errors import ConfigError, DataError

CONF = Path(__file__).resolve().parent.parent / "conf" / "data"


# --- helpers ---------------------------------------------------------------------------------------
def write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> None:
    """An idx file as the Fashion-MNIST distribution has it: big-endian int32 magic and dims, uint8 data."""
    magic = (0x0800 | array.ndim) if magic is None else magic
    header = struct.pack(">" + "i" * (1 + array.ndim), magic, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_fashion(root: Path, n_train: int = 6, n_test: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test)}
    root.mkdir(parents=True, exist_ok=True)
    for stem, a in arrays.items():
        write_idx(root / f"{stem}.gz", a)
    return arrays


def two_views(size: int = 8, local: int | None = None):
    """A SimCLR-like multi-view transform: two random crops (+ flip); ``local`` adds a smaller third view."""
    def crop(s: int):
        return T.Compose([T.RandomResizedCrop(s, scale=(0.3, 1.0), antialias=True), T.RandomHorizontalFlip(),
                          T.ToTensor()])
    crops = [crop(size), crop(size)] + ([crop(local)] if local else [])
    return lambda image: [c(image) for c in crops]


def eval_transform(size: int = 8):
    return T.Compose([T.Resize(size, antialias=True), T.ToTensor()])


def synthetic_cfg(**overrides) -> DataConfig:
    base = dict(name="synthetic", image_size=8, channels=1, mean=[0.5], std=[0.25], num_classes=4,
                num_samples=40, num_test_samples=12, batch_size=4, val_batch_size=5, num_workers=0,
                persistent_workers=True)
    cfg = DataConfig(**{**base, **overrides})
    cfg.validate()
    return cfg


def epoch_views(cfg: DataConfig, epoch: int) -> dict[int, list[torch.Tensor]]:
    dm = SSLDataModule(cfg, two_views(), eval_transform(), seed=7)
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    out = {}
    for views, _, index in loader:
        for b, i in enumerate(index.tolist()):
            out[i] = [v[b] for v in views]
    return out


# --- Fashion-MNIST idx reader ---------------------------------------------------------------------
def test_idx_reader_returns_the_written_uint8_images_and_int64_labels(tmp_path):
    arrays = write_fashion(tmp_path)
    images, labels = load_fashion_mnist(tmp_path, train=True)
    assert images.dtype == np.uint8 and images.shape == (6, 28, 28)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(images, arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(labels, arrays["train-labels-idx1-ubyte"])
    test_images, _ = load_fashion_mnist(tmp_path, train=False)
    np.testing.assert_array_equal(test_images, arrays["t10k-images-idx3-ubyte"])


def test_idx_file_with_a_wrong_magic_number_is_a_data_error_naming_the_file(tmp_path):
    write_fashion(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((6, 28, 28)), magic=2049)
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz has idx magic number 2049, expected"):
        load_fashion_mnist(tmp_path, train=True)


def test_truncated_or_non_gzip_idx_files_are_data_errors_naming_the_file(tmp_path):
    write_fashion(tmp_path)
    full = gzip.decompress((tmp_path / "train-images-idx3-ubyte.gz").read_bytes())
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(full[:-100]))
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz holds .* data bytes"):
        load_fashion_mnist(tmp_path, train=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz is not a readable idx file"):
        load_fashion_mnist(tmp_path, train=False)


def test_missing_fashion_mnist_root_is_a_data_error_with_the_fix(tmp_path):
    cfg = DataConfig(root=str(tmp_path / "nowhere"))
    with pytest.raises(DataError) as err:
        build_datasets(cfg)
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "nowhere") in message
    assert "apt-get install dataset-fashion-mnist" in message and "data.root=" in message


@pytest.mark.parametrize("name,folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"),
                                         ("stl10", "stl10_binary")])
def test_missing_torchvision_data_set_says_where_it_was_expected_and_how_to_get_it(tmp_path, name, folder):
    cfg = DataConfig(name=name, root=str(tmp_path), channels=3, mean=[0.5] * 3, std=[0.2] * 3,
                     num_classes=100 if name == "cifar100" else 10)
    cfg.validate()
    with pytest.raises(DataError) as err:
        build_datasets(cfg)
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / folder) in message and ".tar.gz" in message


# --- config ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides,key", [
    ({"batch_size": 0}, "data.batch_size"),
    ({"val_batch_size": 0}, "data.val_batch_size"),
    ({"num_workers": -1}, "data.num_workers"),
    ({"mean": [0.5, 0.5]}, "data.mean"),
    ({"std": [0.0]}, "data.std"),
    ({"image_size": 4}, "data.image_size"),
    ({"name": "mnist"}, "data.name"),
    ({"knn_bank_size": 0}, "data.knn_bank_size"),
    ({"num_classes": 7}, "data.num_classes"),
    ({"name": "imagefolder", "root": None}, "data.root"),
    ({"name": "imagefolder", "root": "/x", "num_classes": 3, "val_root": None}, "data.val_root"),
])
def test_config_validation_errors_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        DataConfig(**overrides).validate()
    assert err.value.key == key and str(err.value).startswith(f"{key}=")


@pytest.mark.parametrize("name", ["fashion_mnist", "cifar10", "cifar100", "stl10", "imagefolder",
                                  "synthetic"])
def test_every_yaml_choice_fits_the_schema_and_validates(name, monkeypatch):
    monkeypatch.setenv("SSL_ZOO_IMAGES", "/some/images")
    node = OmegaConf.merge(OmegaConf.structured(DataConfig), OmegaConf.load(CONF / f"{name}.yaml"))
    cfg = OmegaConf.to_object(node)
    cfg.validate()
    assert cfg.name == name and len(cfg.mean) == cfg.channels


# --- sampler --------------------------------------------------------------------------------------
def test_sampler_splits_an_epoch_over_two_ranks_like_distributed_sampler_without_overlap():
    n, seed = 23, 5
    ranks = [ResumableSampler(n, seed, num_replicas=2, rank=r) for r in (0, 1)]
    for s in ranks:
        s.set_epoch(3)
    parts = [[i for e, i in s] for s in ranks]
    assert all(e == 3 for s in ranks for e, _ in s)
    assert set(parts[0]).isdisjoint(parts[1]) and len(parts[0]) == len(parts[1]) == 11
    for r, part in enumerate(parts):
        reference = DistributedSampler(range(n), num_replicas=2, rank=r, seed=seed, drop_last=True)
        reference.set_epoch(3)
        assert part == list(reference)


def test_sampler_order_is_a_pure_function_of_seed_and_epoch():
    a, b = ResumableSampler(50, seed=1), ResumableSampler(50, seed=1)
    for _ in a:  # iterating or not changes nothing
        pass
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b) and sorted(i for _, i in b) == list(range(50))
    assert list(ResumableSampler(50, seed=2)) != list(ResumableSampler(50, seed=1))


@pytest.mark.parametrize("resume_replicas", [2, 4])
def test_restored_sampler_yields_exactly_the_rest_of_the_epoch_on_every_rank(resume_replicas):
    n, consumed_per_rank = 40, 6
    first = [ResumableSampler(n, 9, num_replicas=2, rank=r) for r in (0, 1)]
    seen = []
    for s in first:
        s.set_epoch(4)
        it = iter(s)
        seen += [next(it)[1] for _ in range(consumed_per_rank)]
    state = first[0].state_dict()
    assert state["epoch"] == 4 and state["consumed"] == 2 * consumed_per_rank
    rest = []
    for r in range(resume_replicas):
        s = ResumableSampler(n, 9, num_replicas=resume_replicas, rank=r)
        s.load_state_dict(state)
        s.set_epoch(4)  # as Lightning does after loading: same epoch keeps the position
        rest += [i for e, i in s if e == 4]
    assert sorted(seen + rest) == list(range(n))  # nothing repeated, nothing lost
    nxt = ResumableSampler(n, 9, num_replicas=2, rank=0)
    nxt.load_state_dict(state)
    nxt.set_epoch(5)  # a new epoch starts from its beginning
    assert len(list(nxt)) == n // 2


# --- training items: views, determinism, collate ----------------------------------------------------
def test_views_are_a_pure_function_of_seed_epoch_and_index_whatever_the_number_of_workers():
    with_0 = epoch_views(synthetic_cfg(num_workers=0), epoch=1)
    with_2 = epoch_views(synthetic_cfg(num_workers=2), epoch=1)
    assert with_0.keys() == with_2.keys() and len(with_0) == 40
    for i in with_0:
        for a, b in zip(with_0[i], with_2[i]):
            assert torch.equal(a, b)
    other_epoch = epoch_views(synthetic_cfg(num_workers=0), epoch=2)
    assert any(not torch.equal(with_0[i][0], other_epoch[i][0]) for i in with_0)
    # the two views of one item are different random crops
    assert any(not torch.equal(v[0], v[1]) for v in with_0.values())


def test_transform_in_the_training_process_leaves_the_global_generators_untouched():
    dm = SSLDataModule(synthetic_cfg(num_workers=0), two_views(), eval_transform(), seed=3)
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    for _ in dm.train_dataloader():
        pass
    for loader in dm.val_dataloader():
        for _ in loader:
            pass
    got = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]


def test_collate_stacks_each_view_position_so_multi_crop_sizes_can_differ():
    images = make_synthetic(6, 3, 16, 3, seed=0)[0]
    items = [(Image.fromarray(im), k % 3) for k, im in enumerate(images)]
    ds = TrainViewDataset(items, two_views(16, local=6), 0)
    views, labels, index = collate_views([ds[(0, i)] for i in (4, 1, 5)])
    assert [tuple(v.shape) for v in views] == [(3, 3, 16, 16), (3, 3, 16, 16), (3, 3, 6, 6)]
    assert labels.dtype == torch.long and labels.tolist() == [1, 1, 2]
    assert index.dtype == torch.long and index.tolist() == [4, 1, 5]


def test_synthetic_data_is_deterministic_balanced_and_differs_between_splits():
    a, la = make_synthetic(60, 5, 12, 3, seed=1)
    b, lb = make_synthetic(60, 5, 12, 3, seed=1)
    assert a.dtype == np.uint8 and a.shape == (60, 12, 12, 3) and la.dtype == np.int64
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert np.bincount(la).tolist() == [12] * 5
    assert not np.array_equal(a, make_synthetic(60, 5, 12, 3, seed=2)[0])
    assert not np.array_equal(a, make_synthetic(60, 5, 12, 3, seed=1, split="test")[0])
    grey, _ = make_synthetic(10, 5, 12, 1, seed=1)
    assert grey.shape == (10, 12, 12)


def test_synthetic_classes_are_separable_by_their_orientation():
    # The class cue is the grating orientation: the angle of the strongest spatial frequency.
    images, labels = make_synthetic(200, 4, 32, 1, seed=0)
    spectrum = np.abs(np.fft.fft2(images.astype(np.float64) - images.mean(axis=(1, 2), keepdims=True)))
    spectrum[:, 0, 0] = 0
    flat = spectrum[:, :, :16].reshape(len(images), -1).argmax(1)  # the half-plane with v >= 0
    u, v = np.unravel_index(flat, (32, 16))
    u = np.where(u > 16, u - 32, u)
    angle = np.degrees(np.arctan2(u, v)) % 180  # the wave vector angle: the class angle 0, 30, 60, 90
    predicted = np.rint(np.minimum(angle, 180 - angle) / 30)
    assert (predicted == labels).mean() > 0.8


# --- image folders --------------------------------------------------------------------------------
def write_images(folder: Path, count: int, size: int = 10) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(folder)))
    for k in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"im{k}.png")


def test_unlabelled_imagefolder_gives_labels_minus_one_and_no_evaluation_loaders(tmp_path):
    write_images(tmp_path / "a", 3)
    write_images(tmp_path / "b" / "deeper", 5)
    (tmp_path / "notes.txt").write_text("not an image")
    cfg = DataConfig(name="imagefolder", root=str(tmp_path), labelled=False, image_size=8, channels=3,
                     mean=[0.5] * 3, std=[0.2] * 3, num_classes=None, batch_size=4, num_workers=0)
    cfg.validate()
    dm = SSLDataModule(cfg, two_views(), eval_transform(), seed=0)
    assert dm.train_size == 8 and not dm.has_labels and dm.num_classes is None
    labels = torch.cat([labels for _, labels, _ in dm.train_dataloader()])
    assert labels.tolist() == [-1] * 8
    assert dm.val_dataloader() == []


def test_labelled_imagefolder_reads_class_folders_and_an_empty_folder_is_a_data_error(tmp_path):
    for split, n in (("train", 4), ("val", 2)):
        for cls in ("cat", "dog"):
            write_images(tmp_path / split / cls, n)
    cfg = DataConfig(name="imagefolder", root=str(tmp_path / "train"), val_root=str(tmp_path / "val"),
                     image_size=8, channels=3, mean=[0.5] * 3, std=[0.2] * 3, num_classes=2)
    cfg.validate()
    splits = build_datasets(cfg)
    assert sorted(splits.train.labels.tolist()) == [0] * 4 + [1] * 4 and len(splits.test) == 4
    image, label = splits.test[3]
    assert image.mode == "RGB" and image.size == (10, 10) and label == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no image files"):
        build_datasets(DataConfig(name="imagefolder", root=str(tmp_path / "empty"), labelled=False))
    with pytest.raises(DataError, match="set data.num_classes=2"):
        build_datasets(DataConfig(**{**cfg.__dict__, "num_classes": 3}))


# --- evaluation loaders ---------------------------------------------------------------------------
def test_val_loaders_are_the_seeded_bank_subset_and_the_capped_test_split():
    dm = SSLDataModule(synthetic_cfg(knn_bank_size=15, val_size=7), two_views(), eval_transform(), seed=0)
    bank, test = dm.val_dataloader()
    images, labels = next(iter(bank))
    assert images.shape == (5, 1, 8, 8) and labels.dtype == torch.long
    assert len(bank.dataset) == 15 and len(test.dataset) == 7
    again = SSLDataModule(synthetic_cfg(knn_bank_size=15, val_size=7), two_views(), eval_transform(), seed=0)
    assert bank.dataset.indices == again.val_dataloader()[0].dataset.indices  # a fixed subset
    assert dm.has_labels and dm.num_classes == 4 and dm.train_size == 40


def test_batch_size_larger_than_the_training_split_is_a_data_error():
    dm = SSLDataModule(synthetic_cfg(batch_size=64), two_views(), eval_transform(), seed=0)
    with pytest.raises(DataError, match="data.batch_size=64 exceeds the 40 training images"):
        dm.train_dataloader()


# --- resumable loader and Lightning mid-epoch resume ------------------------------------------------
def test_loader_state_counts_batches_handed_out_not_batches_prefetched_by_workers():
    dm = SSLDataModule(synthetic_cfg(num_workers=2), two_views(), eval_transform(), seed=0)
    loader = dm.train_dataloader()
    it = iter(loader)
    seen = [next(it)[2] for _ in range(3)]
    assert loader.sampler._yielded > 3 * 4  # the workers have drawn indices ahead ...
    state = loader.state_dict()
    assert state["epoch"] == 0 and state["consumed"] == 12  # ... the state counts what was handed out
    del it
    dm0 = SSLDataModule(synthetic_cfg(num_workers=0), two_views(), eval_transform(), seed=0)
    resumed = dm0.train_dataloader()
    resumed.load_state_dict(state)
    rest = [index for _, _, index in resumed]
    assert len(rest) == 7
    assert sorted(torch.cat(seen + rest).tolist()) == list(range(40))


class TinyModel(pl.LightningModule):
    """A linear layer on the flattened views, recording the data set indices of every step."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(64, 4)
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        views, _, index = batch
        self.seen.append(index.tolist())
        a, b = (self.layer(v.flatten(1)) for v in views)
        return (a - b).pow(2).mean() + (a.mean(0) - 1).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def fit(tmp_path: Path, num_workers: int, ckpt_path: str | None = None, **trainer_kwargs) -> TinyModel:
    """Train TinyModel on 40 synthetic images in batches of 4 (10 steps per epoch)."""
    torch.manual_seed(0)
    model = TinyModel()
    trainer = pl.Trainer(accelerator="cpu", enable_progress_bar=False, logger=False,
                         use_distributed_sampler=False, enable_model_summary=False, default_root_dir=tmp_path,
                         **trainer_kwargs)
    dm = SSLDataModule(synthetic_cfg(num_workers=num_workers), two_views(), eval_transform(), seed=11)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model


def assert_same_parameters(a: nn.Module, b: nn.Module) -> None:
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("num_workers", [0, 2])
def test_lightning_resume_mid_epoch_sees_the_same_indices_and_parameters(tmp_path, num_workers):
    # Checkpoints every 5 steps: step 15 is 5 batches into epoch 1, step 10 the end of epoch 0.
    saver = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=5, save_top_k=-1)
    full = fit(tmp_path, num_workers, max_steps=25, callbacks=[saver])
    assert len(full.seen) == 25 and sorted(sum(full.seen[10:20], [])) == list(range(40))
    mid_epoch = tmp_path / "epoch=1-step=15.ckpt"
    state = torch.load(mid_epoch, weights_only=True)["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert state[0]["epoch"] == 1 and state[0]["consumed"] == 5 * 4

    for step in (15, 10):
        (ckpt,) = tmp_path.glob(f"*-step={step}.ckpt")
        resumed = fit(tmp_path / f"resumed{step}", num_workers, max_steps=25, ckpt_path=str(ckpt))
        assert resumed.seen == full.seen[step:], f"resumed from step {step}"
        assert_same_parameters(full, resumed)


def test_lightning_resume_after_a_finished_epoch_of_epoch_based_training_keeps_the_order(tmp_path):
    # Without max_steps Lightning does not hand the loader its state after a finished epoch, and it
    # creates the iterator before set_epoch: workers that prefetched at iter() would draw epoch 0's order.
    saver = ModelCheckpoint(dirpath=tmp_path, every_n_epochs=1, save_top_k=-1)
    full = fit(tmp_path, 2, max_epochs=3, callbacks=[saver])
    (ckpt,) = tmp_path.glob("epoch=0-*.ckpt")
    resumed = fit(tmp_path / "resumed", 2, max_epochs=3, ckpt_path=str(ckpt))
    assert len(full.seen) == 30 and resumed.seen == full.seen[10:]
    assert_same_parameters(full, resumed)
