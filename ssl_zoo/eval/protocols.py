"""``ssl-zoo eval <protocol>`` and ``ssl-zoo embed``: one evaluation protocol on one checkpoint.

Every result is appended as one JSON line to ``eval.jsonl`` in the checkpoint's run directory (or the
file ``results=`` names) with what identifies it: the protocol and its settings (and their hash), the
data set, the checkpoint (path and content hash), the training run's config hash, method, backbone,
training step and the seed. ``ssl-zoo results`` reads these lines back into the leaderboard.

Protocols (settings in ``conf/eval/<protocol>.yaml``, fields under ``eval.``):

* ``knn``: weighted kNN (Wu et al. 2018) on frozen, cached features at k in {10, 20, 100, 200}, T=0.07;
  by default on the training-time monitor's bank and test subsets, so that ``eval.match_monitor=true``
  (the run's ``monitor.knn_k`` and ``monitor.knn_temperature``) recomputes the monitor's figure.
* ``linear``: a linear classifier on frozen features (:mod:`ssl_zoo.eval.linear`).
* ``finetune``: the whole network with a new head (:mod:`ssl_zoo.eval.finetune`).
* ``fewshot``: SimCLR v2's 1% / 10% labels protocol (:mod:`ssl_zoo.eval.fewshot`).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssl_zoo.data.config import DataConfig
from ssl_zoo.errors import ConfigError, DataError, check
from ssl_zoo.eval.features import (
    Features,
    checkpoint_hash,
    load_checkpoint,
    load_trained,
    run_config,
    split_features,
    split_loaders,
    typed_data,
)
from ssl_zoo.eval.fewshot import FewshotConfig, stratified_subset
from ssl_zoo.eval.finetune import FinetuneConfig, finetune
from ssl_zoo.eval.knn import KNNConfig, knn_accuracy
from ssl_zoo.eval.linear import (
    AugmentedSplit,
    LinearConfig,
    check_subsets,
    crop_flip_transform,
    linear_augmented,
    linear_on_features,
)
from ssl_zoo.run_dir import config_hash

EMBED_FORMATS = (".pt", ".npy", ".npz")


@dataclass
class EmbedConfig:
    """``ssl-zoo embed``: which split's features to write (train: the labelled training images)."""

    split: str = "test"
    subsets: str = "full"

    def validate(self, prefix: str = "eval") -> None:
        check(self.split in ("train", "test"), f"{prefix}.split", self.split, "one of: train, test")
        check_subsets(self.subsets, prefix)


PROTOCOLS: dict[str, type] = {"knn": KNNConfig, "linear": LinearConfig, "finetune": FinetuneConfig,
                              "fewshot": FewshotConfig, "embed": EmbedConfig}


@dataclass
class EvalJob:
    """What every protocol needs: the checkpoint, the data to evaluate on and where results go."""

    ckpt_path: Path
    ckpt: dict[str, Any]
    data: DataConfig
    seed: int
    device: torch.device
    cache: bool = True
    results: Path | None = None

    @cached_property
    def checkpoint_sha256(self) -> str:
        return checkpoint_hash(self.ckpt_path)

    @property
    def run_seed(self) -> int:
        """The training run's seed: it fixes the monitor's subsets."""
        return int(run_config(self.ckpt).seed)

    @property
    def results_file(self) -> Path:
        if self.results is not None:
            return self.results
        parent = self.ckpt_path.parent
        return (parent.parent if parent.name == "checkpoints" else parent) / "eval.jsonl"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError("device", name, "auto, cpu, cuda or cuda:<index>") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", name, "auto or cpu on this machine", "no CUDA device is available")
    return device


def make_job(ckpt: str, data_node: Any | None, data_overrides: dict[str, Any], seed: int, device: str,
             cache: bool, results: str | None) -> EvalJob:
    """The job of ``ckpt`` on ``data_node`` (None: the checkpoint's own data config), with the
    ``data.<key>`` overrides applied on top."""
    from omegaconf import OmegaConf

    path = Path(ckpt)
    loaded = load_checkpoint(path)
    node = OmegaConf.create(data_node if data_node is not None else run_config(loaded).data)
    node = OmegaConf.merge(node, OmegaConf.create(data_overrides))
    data = typed_data(node)
    check(isinstance(seed, int) and seed >= 0, "seed", seed, "an integer >= 0")
    return EvalJob(path, loaded, data, seed, resolve_device(device), cache, Path(results) if results else None)


def data_for(job: EvalJob, subsets: str) -> DataConfig:
    """The job's data, with the monitor's subsets or (``full``) the whole training and test splits."""
    return job.data if subsets == "monitor" else replace(job.data, knn_bank_size=None, val_size=None)


def labelled(features: Features) -> Features:
    keep = features.labels >= 0
    return Features(features.features[keep], features.labels[keep], features.indices[keep])


def _settings_hash(settings: Any) -> str:
    return hashlib.sha256(json.dumps(asdict(settings), sort_keys=True, default=str).encode()).hexdigest()[:12]


def record(job: EvalJob, protocol: str, settings: Any, data: DataConfig, metrics: dict[str, float],
           top1: float, **extra: Any) -> dict[str, Any]:
    """One result line: what was measured, on what, from which checkpoint and run."""
    cfg = run_config(job.ckpt)
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "protocol": protocol, "top1": round(top1, 4),
        "metrics": {k: round(v, 4) for k, v in metrics.items()}, **extra,
        "data": data.name, "num_train": None, "num_test": None,
        "checkpoint": str(job.ckpt_path.resolve()), "checkpoint_sha256": job.checkpoint_sha256,
        "config_hash": config_hash(cfg), "method": cfg.method.name, "backbone": cfg.backbone.name,
        "step": job.ckpt.get("global_step"), "epoch": job.ckpt.get("epoch"), "seed": job.seed,
        "eval_config": asdict(settings), "eval_config_hash": _settings_hash(settings),
    }


def append_result(job: EvalJob, line: dict[str, Any]) -> None:
    """Append ``line`` to the job's JSON-lines file (one ``write`` call: concurrent appends stay whole)."""
    file = job.results_file
    file.parent.mkdir(parents=True, exist_ok=True)
    with open(file, "a") as f:
        f.write(json.dumps(line, sort_keys=False) + "\n")


def _features(job: EvalJob, data: DataConfig, splits: tuple[str, ...] = ("train", "test")) -> dict[str, Features]:
    feats = split_features(job.ckpt_path, data, splits, device=job.device, cache=job.cache)
    return {split: labelled(f) for split, f in feats.items()}


def _sizes(line: dict[str, Any], num_train: int | None, num_test: int) -> dict[str, Any]:
    line["num_train"], line["num_test"] = num_train, num_test
    return line


def run_knn(job: EvalJob, cfg: KNNConfig) -> list[dict[str, Any]]:
    """Weighted kNN at every k; one result line per k (the monitor's k and T with ``match_monitor``)."""
    if cfg.match_monitor:
        monitor = run_config(job.ckpt).get("monitor") or {}
        cfg = replace(cfg, k=[int(monitor.get("knn_k", 200))], temperature=float(monitor.get("knn_temperature", 0.1)))
    data = data_for(job, cfg.subsets)
    feats = _features(job, data)
    train, test = feats["train"], feats["test"]
    lines = []
    for k in cfg.k:
        acc = knn_accuracy(train.features.to(job.device), train.labels.to(job.device), test.features.to(job.device),
                           test.labels, data.num_classes, k, cfg.temperature)
        line = record(job, "knn", cfg, data, {"top1": acc[1], "top5": acc[5]}, acc[1], k=k,
                      temperature=cfg.temperature)
        lines.append(_sizes(line, len(train.labels), len(test.labels)))
    return lines


def run_linear(job: EvalJob, cfg: LinearConfig) -> list[dict[str, Any]]:
    data = data_for(job, cfg.subsets)
    if not cfg.augment:  # fast path: the cached features of the evaluation view
        feats = _features(job, data)
        train, test = feats["train"], feats["test"]
        acc = linear_on_features(train.features, train.labels, test.features, test.labels, data.num_classes, cfg,
                                 job.seed, job.device)
        num_train = len(train.labels)
    else:  # paper protocol: new crop + flip views every epoch through the frozen encoder
        test = _features(job, data, ("test",))["test"]
        method, bank = _method_and_bank(job, data)
        train_set = AugmentedSplit(bank.base, _labelled_indices(bank),
                                   crop_flip_transform(data.image_size, data.mean, data.std, cfg.crop_scale))
        acc = linear_augmented(method, method.feature_dim, train_set, test.features, test.labels, data.num_classes,
                               cfg, job.seed, job.device, data.num_workers)
        num_train = len(train_set)
    line = record(job, "linear", cfg, data, acc, acc["top1"], augment=cfg.augment)
    return [_sizes(line, num_train, len(test.labels))]


def _method_and_bank(job: EvalJob, data: DataConfig):
    """The trained method (fresh weights) and the labelled training split's evaluation data set."""
    loaders = split_loaders(data, job.run_seed)
    return load_trained(job.ckpt), loaders["train"].dataset


def _labelled_indices(bank) -> list[int]:
    labels = np.asarray(bank.base.labels)
    return [i for i in bank.indices if labels[i] >= 0]


def run_finetune(job: EvalJob, cfg: FinetuneConfig) -> list[dict[str, Any]]:
    data = data_for(job, cfg.subsets)
    loaders = split_loaders(data, job.run_seed)
    bank, test_loader = loaders["train"].dataset, loaders["test"]
    train_set = AugmentedSplit(bank.base, _labelled_indices(bank),
                               crop_flip_transform(data.image_size, data.mean, data.std, cfg.crop_scale))
    method = load_trained(job.ckpt)
    acc = finetune(method, method.feature_dim, train_set, test_loader, data.num_classes, cfg, job.seed, job.device,
                   data.num_workers)
    line = record(job, "finetune", cfg, data, acc, acc["top1"])
    return [_sizes(line, len(train_set), len(test_loader.dataset))]


def run_fewshot(job: EvalJob, cfg: FewshotConfig) -> list[dict[str, Any]]:
    """One result line per label fraction; the subsets are stratified and drawn with ``seed``."""
    data = data_for(job, cfg.subsets)
    loaders = split_loaders(data, job.run_seed)
    bank, test_loader = loaders["train"].dataset, loaders["test"]
    indices = _labelled_indices(bank)
    labels = torch.as_tensor(np.asarray(bank.base.labels)[indices])
    feats = _features(job, data) if cfg.mode == "linear" else None
    lines = []
    for fraction in cfg.fractions:
        chosen = stratified_subset(labels, fraction, job.seed)
        if cfg.mode == "linear":
            train, test = feats["train"], feats["test"]
            position = {int(i): p for p, i in enumerate(train.indices.tolist())}
            rows = torch.tensor([position[indices[c]] for c in chosen.tolist()], dtype=torch.long)
            linear = LinearConfig(lr=cfg.lr, epochs=cfg.epochs, batch_size=cfg.batch_size,
                                  weight_decay=cfg.weight_decay, momentum=cfg.momentum)
            acc = linear_on_features(train.features[rows], train.labels[rows], test.features, test.labels,
                                     data.num_classes, linear, job.seed, job.device)
        else:
            train_set = AugmentedSplit(bank.base, [indices[c] for c in chosen.tolist()],
                                       crop_flip_transform(data.image_size, data.mean, data.std, cfg.crop_scale))
            method = load_trained(job.ckpt)  # every fraction starts from the pre-trained weights
            tune = FinetuneConfig(optimizer=cfg.optimizer, lr=cfg.lr, epochs=cfg.epochs, batch_size=cfg.batch_size,
                                  weight_decay=cfg.weight_decay, momentum=cfg.momentum, crop_scale=cfg.crop_scale)
            acc = finetune(method, method.feature_dim, train_set, test_loader, data.num_classes, tune, job.seed,
                           job.device, data.num_workers)
        line = record(job, "fewshot", cfg, data, acc, acc["top1"], fraction=fraction, mode=cfg.mode)
        lines.append(_sizes(line, len(chosen), len(test_loader.dataset)))
    return lines


def run_embed(job: EvalJob, cfg: EmbedConfig, out: str | None) -> Path:
    """Write the features of ``cfg.split`` with their labels and data-set indices to ``out``.

    ``.pt``: ``{"features", "labels", "indices"}`` tensors; ``.npz``: the same three arrays; ``.npy``: the
    features, with ``<name>.labels.npy`` and ``<name>.indices.npy`` next to it.
    """
    check(bool(out), "out", out, "a file path ending in " + ", ".join(EMBED_FORMATS), "e.g. out=features.pt")
    path = Path(out)
    check(path.suffix in EMBED_FORMATS, "out", out, "a file path ending in " + ", ".join(EMBED_FORMATS))
    data = data_for(job, cfg.subsets)
    feats = split_features(job.ckpt_path, data, (cfg.split,), device=job.device, cache=job.cache)[cfg.split]
    if len(feats.labels) == 0:
        raise DataError(f"data={data.name} split {cfg.split} has no images to embed")
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"features": feats.features, "labels": feats.labels, "indices": feats.indices}
    if path.suffix == ".pt":
        torch.save(arrays, path)
    elif path.suffix == ".npz":
        np.savez(path, **{k: v.numpy() for k, v in arrays.items()})
    else:
        np.save(path, feats.features.numpy())
        for key in ("labels", "indices"):
            np.save(path.with_name(f"{path.stem}.{key}.npy"), arrays[key].numpy())
    return path


RUNNERS = {"knn": run_knn, "linear": run_linear, "finetune": run_finetune, "fewshot": run_fewshot}


def describe(line: dict[str, Any]) -> str:
    """One human line for a result, as the CLI prints it."""
    what = {"knn": lambda: f"kNN k={line['k']} T={line['temperature']}",
            "linear": lambda: "linear probe" + (" (augmented)" if line.get("augment") else ""),
            "finetune": lambda: "fine-tune",
            "fewshot": lambda: f"few-shot {100 * line['fraction']:g}% labels ({line['mode']})"}[line["protocol"]]
    metrics = line["metrics"]
    top5 = f"  top-5 {metrics['top5']:.2f}%" if "top5" in metrics else ""
    return (f"{what()} on {line['data']} ({line['num_train']} train / {line['num_test']} test): "
            f"top-1 {metrics['top1']:.2f}%{top5}")
