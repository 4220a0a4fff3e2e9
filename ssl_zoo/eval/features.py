"""Frozen features of a trained checkpoint, cached on disk next to it.

A checkpoint (``outputs/<date>/<time>/checkpoints/*.ckpt``) holds the resolved run config under
``hyper_parameters["cfg"]`` and the method's modules under ``state_dict``; :func:`load_trained` rebuilds
the method from them (strict load) and :func:`split_features` runs its ``forward`` (what evaluation
uses, backbone features by default) over a labelled split with the deterministic evaluation transform.

Splits are those of the training-time monitor, in the order of :meth:`SSLDataModule.val_dataloader`:
``train`` = the labelled training images (the kNN bank; a seeded subset of ``data.knn_bank_size`` when
set), ``test`` = the test images (a seeded subset of ``data.val_size`` when set), both drawn with the
run's seed. Features are cached in ``<checkpoint dir>/features/<key>.pt``, ``key`` hashing the
checkpoint's bytes, the data config and the split, so a changed checkpoint or data set never reuses them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torch.utils.data import DataLoader

from ssl_zoo.checkpoint_io import atomic_torch_save, safe_torch_load
from ssl_zoo.data import SSLDataModule
from ssl_zoo.data.config import DataConfig
from ssl_zoo.data.datasets import build_datasets
from ssl_zoo.errors import CheckpointError, ConfigError, DataError
from ssl_zoo.transforms import build_eval_transform

SPLITS = ("train", "test")


@dataclass
class Features:
    """``features`` [N, D] float32, ``labels`` [N] and ``indices`` [N] (positions in the split's data set)."""

    features: Tensor
    labels: Tensor
    indices: Tensor


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint as data (``weights_only``); one :class:`CheckpointError` line unless it is ssl_zoo's."""
    ckpt = safe_torch_load(path)
    cfg = ckpt.get("hyper_parameters", {}).get("cfg") if isinstance(ckpt, dict) else None
    if not isinstance(cfg, dict) or "state_dict" not in ckpt or "method" not in cfg:
        raise CheckpointError(f"ckpt={str(path)!r} is not an ssl_zoo checkpoint (no run config in it): "
                              "give a .ckpt written by ssl-zoo train")
    return ckpt


def run_config(ckpt: dict[str, Any]) -> DictConfig:
    return OmegaConf.create(ckpt["hyper_parameters"]["cfg"])


def typed_data(node: Any) -> DataConfig:
    """``node`` (a data config) merged into :class:`DataConfig` and validated."""
    from ssl_zoo.config import typed_group

    data = typed_group(OmegaConf.create({"data": OmegaConf.to_container(OmegaConf.create(node), resolve=True)}),
                       "data", DataConfig)
    data.validate("data")
    return data


def checkpoint_hash(path: str | Path) -> str:
    """sha256 of the checkpoint file's bytes (first 16 hex digits)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def load_trained(ckpt: dict[str, Any], num_train: int | None = None):
    """The method of ``ckpt`` rebuilt from its config with every weight loaded (strict), in eval mode.

    ``num_train`` (training-set size) sizes the memory banks of methods that keep one; None reads it
    from the checkpoint's own data set.
    """
    from ssl_zoo.methods import METHODS

    cfg = run_config(ckpt)
    if cfg.method.name not in METHODS:
        raise CheckpointError(f"the checkpoint holds method={cfg.method.name}, which this ssl_zoo does not know: "
                              "evaluate it with the version that trained it")
    if num_train is None:
        num_train = len(build_datasets(typed_data(cfg.data)).train)
    method = METHODS[cfg.method.name](cfg, num_train=num_train)
    try:
        method.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise CheckpointError(f"the checkpoint's weights do not fit method={cfg.method.name}: {first}") from None
    return method.eval()


def check_compatible(train_cfg: DictConfig, data: DataConfig) -> None:
    """The evaluation data must feed the trained backbone: same channels (and size for a ViT)."""
    trained = train_cfg.data
    if data.channels != trained.channels:
        raise ConfigError("data.channels", data.channels, f"{trained.channels}, the channels the backbone was "
                          "trained on", f"set data.channels={trained.channels}")
    if "vit" in str(train_cfg.backbone.name) + str(train_cfg.backbone.get("model_name") or ""):
        if data.image_size != trained.image_size:
            raise ConfigError("data.image_size", data.image_size, f"{trained.image_size} for this ViT checkpoint",
                              "its position embedding is fixed to the training size")


def split_loaders(data: DataConfig, seed: int, transform=None) -> dict[str, DataLoader]:
    """``{"train": kNN-bank loader, "test": test loader}``: the training monitor's loaders, in its order."""
    if transform is None:
        transform = build_eval_transform(data.image_size, data.mean, data.std, data.channels)
    module = SSLDataModule(data, transform, transform, seed=seed)
    if not module.has_labels:
        raise DataError(f"data={data.name} has no labelled training and test split: evaluation needs labels "
                        "(set data.labelled=true with data.val_root, or choose a labelled data set)")
    return dict(zip(SPLITS, module.val_dataloader()))


@torch.no_grad()
def extract(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> tuple[Tensor, Tensor]:
    """``model(images)`` over ``loader``: features [N, D] (float32, CPU) and labels [N]."""
    model.to(device).eval()
    feats, labels = [], []
    for images, y in loader:
        feats.append(model(images.to(device)).float().cpu())
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)


def cache_key(ckpt_hash: str, data: DataConfig, split: str) -> str:
    blob = json.dumps({"ckpt": ckpt_hash, "data": asdict(data), "split": split}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def split_features(ckpt_path: str | Path, data: DataConfig | None, splits: tuple[str, ...] = SPLITS,
                   device: str | torch.device = "cpu", cache: bool = True) -> dict[str, Features]:
    """Features of ``splits`` of ``data`` (None: the checkpoint's data config) from the checkpoint at
    ``ckpt_path``, read from the cache when there; the model is rebuilt only on a miss."""
    path = Path(ckpt_path)
    ckpt = load_checkpoint(path)
    cfg = run_config(ckpt)
    data = data or typed_data(cfg.data)
    check_compatible(cfg, data)
    cache_dir, digest = path.parent / "features", checkpoint_hash(path)
    out: dict[str, Features] = {}
    missing = []
    for split in splits:
        file = cache_dir / f"{cache_key(digest, data, split)}.pt"
        if cache and file.is_file():
            stored = torch.load(file, map_location="cpu", weights_only=True)
            out[split] = Features(stored["features"], stored["labels"], stored["indices"])
        else:
            missing.append((split, file))
    if missing:
        loaders = split_loaders(data, int(cfg.seed))
        same_data = typed_data(cfg.data) == data
        num_train = len(loaders["train"].dataset.base) if same_data and data.name != "stl10" else None
        method = load_trained(ckpt, num_train)
        for split, file in missing:
            feats, labels = extract(method, loaders[split], torch.device(device))
            indices = torch.tensor(loaders[split].dataset.indices, dtype=torch.long)
            out[split] = Features(feats, labels, indices)
            if cache:
                atomic_torch_save({"features": feats, "labels": labels, "indices": indices}, file)
    return out
