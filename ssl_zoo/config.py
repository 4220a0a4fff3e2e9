"""Typed schemas of the run config and its validation.

Every Hydra group has a dataclass schema (the group's module owns it); ``validate_config`` merges each
group with its schema, so an unknown key or a wrong type stops the run, then calls each schema's
``validate`` for impossible values. Every failure is a :class:`ssl_zoo.errors.ConfigError` that names
the dotted key, the value and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from ssl_zoo.backbones.config import BackboneConfig
from ssl_zoo.data.config import DataConfig
from ssl_zoo.errors import ConfigError, check
from ssl_zoo.optim.config import OptimizerConfig, SchedulerConfig
from ssl_zoo.transforms.config import AugmentationConfig

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("method", "backbone", "augmentation", "optimizer", "scheduler", "data", "trainer", "logger")
PRECISIONS = ("auto", "32-true", "32", "64-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true",
              "transformer-engine")


@dataclass
class TrainerConfig:
    """Passed to ``pytorch_lightning.Trainer`` (its DDP engine, precision, accumulation), plus ours."""

    max_epochs: int = 100
    max_steps: int = -1
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    accumulate_grad_batches: int = 1
    sync_batchnorm: bool = False
    gradient_clip_val: Optional[float] = None
    deterministic: bool = False
    benchmark: bool = False
    log_every_n_steps: int = 10
    check_val_every_n_epoch: int = 1
    val_check_interval: Any = None  # a fraction of an epoch (float) or a number of steps (int)
    limit_train_batches: Any = None  # a fraction of the training set (float) or a number of batches (int)
    num_sanity_val_steps: int = 0
    # ours
    channels_last: bool = True
    compile: bool = False
    checkpoint_every_n_steps: Optional[int] = None
    skip_nonfinite: bool = False  # skip (and count) steps with a NaN/Inf loss or gradient instead of stopping

    def validate(self, prefix: str = "trainer") -> None:
        check(self.max_epochs >= 1 or self.max_steps >= 1, f"{prefix}.max_epochs", self.max_epochs,
              "an integer >= 1 (or set trainer.max_steps >= 1)")
        check(self.max_steps == -1 or self.max_steps >= 1, f"{prefix}.max_steps", self.max_steps,
              "-1 (no limit) or an integer >= 1")
        check(self.num_nodes >= 1, f"{prefix}.num_nodes", self.num_nodes, "an integer >= 1")
        check(self.precision in PRECISIONS, f"{prefix}.precision", self.precision, "one of: " + ", ".join(PRECISIONS))
        check(self.accumulate_grad_batches >= 1, f"{prefix}.accumulate_grad_batches",
              self.accumulate_grad_batches, "an integer >= 1")
        check(self.accelerator in ("auto", "cpu", "gpu", "cuda", "mps", "tpu"), f"{prefix}.accelerator",
              self.accelerator, "one of: auto, cpu, gpu, cuda, mps, tpu")
        devices_ok = self.devices in ("auto", -1) or (isinstance(self.devices, int) and self.devices >= 1) \
            or (isinstance(self.devices, (list, tuple)) and len(self.devices) > 0)
        check(devices_ok, f"{prefix}.devices", self.devices, "an integer >= 1, a list of device ids, -1 or auto")
        check(self.check_val_every_n_epoch >= 1, f"{prefix}.check_val_every_n_epoch",
              self.check_val_every_n_epoch, "an integer >= 1")
        check(self.gradient_clip_val is None or self.gradient_clip_val > 0, f"{prefix}.gradient_clip_val",
              self.gradient_clip_val, "null or a number > 0")
        for key in ("val_check_interval", "limit_train_batches"):
            value = getattr(self, key)
            ok = value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1) \
                or (isinstance(value, float) and 0.0 < value <= 1.0)
            check(ok, f"{prefix}.{key}", value, "null, a fraction in (0, 1] or an integer number of batches >= 1")
        check(self.checkpoint_every_n_steps is None or self.checkpoint_every_n_steps >= 1,
              f"{prefix}.checkpoint_every_n_steps", self.checkpoint_every_n_steps, "null or an integer >= 1")


@dataclass
class LoggerConfig:
    """Dashboards: CSV (``metrics.csv``) always, TensorBoard and wandb by choice. wandb runs offline
    unless ``mode=online``; the API key comes from the environment (``WANDB_API_KEY``), never a config."""

    name: str = "default"
    csv: bool = True
    tensorboard: bool = True
    wandb: bool = False
    project: str = "ssl_zoo"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    mode: str = "offline"

    def validate(self, prefix: str = "logger") -> None:
        check(self.mode in ("offline", "online", "disabled"), f"{prefix}.mode", self.mode,
              "one of: offline, online, disabled")


@dataclass
class MonitorConfig:
    """Evaluation during training: the weighted kNN monitor, the online linear probe, representation health
    and the end-of-run plots."""

    knn: bool = True
    knn_k: int = 200
    knn_temperature: float = 0.1
    knn_baseline: bool = True  # kNN of the randomly initialised encoder, once before training
    probe: bool = True
    probe_lr: float = 0.1
    probe_weight_decay: float = 0.0
    # Representation health at every validation (ssl_zoo/callbacks/health.py): RankMe, alignment,
    # uniformity and the normalised per-dimension std on up to health_samples validation images; the
    # run is flagged collapsed (val/collapsed=1 and a warning) when that std falls below
    # collapse_std / sqrt(feature dim) or RankMe below collapse_rank; partial collapse is warned of when
    # RankMe falls below collapse_rank_fraction of the first validation's (logged as val/rank_kept).
    health: bool = True
    health_samples: int = 2048
    collapse_std: float = 0.1
    collapse_rank: float = 2.0
    collapse_rank_fraction: float = 0.4
    # End of run: plots/tsne.png (up to tsne_samples validation embeddings) and plots/curves.png.
    plots: bool = True
    tsne_samples: int = 1000

    def validate(self, prefix: str = "monitor") -> None:
        check(self.knn_k >= 1, f"{prefix}.knn_k", self.knn_k, "an integer >= 1")
        check(self.health_samples >= 2, f"{prefix}.health_samples", self.health_samples, "an integer >= 2")
        check(self.collapse_std >= 0, f"{prefix}.collapse_std", self.collapse_std, "a number >= 0")
        check(self.collapse_rank >= 0, f"{prefix}.collapse_rank", self.collapse_rank, "a number >= 0")
        check(0 <= self.collapse_rank_fraction <= 1, f"{prefix}.collapse_rank_fraction",
              self.collapse_rank_fraction, "a number in [0, 1]")
        check(self.tsne_samples >= 3, f"{prefix}.tsne_samples", self.tsne_samples, "an integer >= 3")
        check(self.knn_temperature > 0, f"{prefix}.knn_temperature", self.knn_temperature, "a number > 0")
        check(self.probe_lr > 0, f"{prefix}.probe_lr", self.probe_lr, "a number > 0")


TOP_LEVEL = {"seed", "resume", "monitor", "hydra", "experiment", *GROUPS}


def group_schemas(cfg: DictConfig) -> dict[str, type]:
    from ssl_zoo.methods import METHODS

    method_name = cfg.method.get("name") if isinstance(cfg.get("method"), DictConfig) else None
    check(method_name in METHODS, "method.name", method_name, "one of: " + ", ".join(sorted(METHODS)))
    return {"method": METHODS[method_name].Config, "backbone": BackboneConfig, "augmentation": AugmentationConfig,
            "optimizer": OptimizerConfig, "scheduler": SchedulerConfig, "data": DataConfig,
            "trainer": TrainerConfig, "logger": LoggerConfig, "monitor": MonitorConfig}


def _allowed_keys(schema: type) -> str:
    return "one of: " + ", ".join(f.name for f in fields(schema)) if is_dataclass(schema) else "a known key"


def _declared_type(schema: type, dotted: str) -> str | None:
    """The annotation of ``dotted`` (``lr``, ``crops[0].size``) in the dataclass ``schema``, as written."""
    field_type: Any = schema
    for name in dotted.replace("[", ".[").split("."):
        if name.startswith("["):
            continue
        if not is_dataclass(field_type):
            return None  # inside a list or a string annotation: no simple answer
        match = next((f for f in fields(field_type) if f.name == name), None)
        if match is None:
            return None
        field_type = match.type
    return field_type if isinstance(field_type, str) else getattr(field_type, "__name__", None)


def typed_group(cfg: DictConfig, group: str, schema: type) -> Any:
    """``cfg[group]`` merged into ``schema`` and converted to the dataclass; errors name the key."""
    node = cfg.get(group)
    if node is None:
        raise ConfigError(group, None, f"a '{group}' section", f"choose one with {group}=<name>")
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), node))
    except ConfigKeyError as e:
        key = f"{group}.{e.full_key or e.key}"
        raise ConfigError(key, OmegaConf.select(cfg, key, default=None), f"a known key ({_allowed_keys(schema)})",
                          "this key does not exist: check its spelling") from None
    except ValidationError as e:
        key = f"{group}.{e.full_key or e.key}"
        expected = _declared_type(schema, str(e.full_key or e.key)) or "the declared type"
        reason = str(e).splitlines()[0]
        raise ConfigError(key, OmegaConf.select(cfg, key, default=None), f"a value of type {expected}",
                          reason) from None
    except OmegaConfBaseException as e:
        raise ConfigError(group, "...", "a valid section", str(e).splitlines()[0]) from None


def validate_config(cfg: DictConfig) -> dict[str, Any]:
    """Check every group of a composed run config; return the typed group objects."""
    for key in cfg.keys():
        check(key in TOP_LEVEL, str(key), cfg.get(key), "a known top-level key (" + ", ".join(sorted(TOP_LEVEL)) + ")",
              "this key does not exist: check its spelling")
    seed = cfg.get("seed")
    check(isinstance(seed, int) and seed >= 0, "seed", seed, "an integer >= 0")
    typed = {}
    for group, schema in group_schemas(cfg).items():
        obj = typed_group(cfg, group, schema)
        if hasattr(obj, "validate"):
            obj.validate(group)
        typed[group] = obj
    _check_across_groups(typed)
    _check_devices(typed["trainer"])
    typed["data"].check_paths("data")
    return typed


def _check_devices(trainer: TrainerConfig) -> None:
    """Asking for more GPUs than the machine has stops here, with the key, not in Lightning's launcher.
    (CPU "devices" are processes, as many as asked for.)"""
    import torch

    gpus = torch.cuda.device_count()
    on_gpu = trainer.accelerator in ("gpu", "cuda") or (trainer.accelerator == "auto" and gpus > 0)
    # torch's SyncBatchNorm has no CPU kernel: the first forward would fail after the ranks started
    check(on_gpu or not trainer.sync_batchnorm, "trainer.sync_batchnorm", trainer.sync_batchnorm,
          "false on CPU (global BN needs CUDA devices)", "set trainer.sync_batchnorm=false or run on GPUs")
    if not on_gpu or trainer.devices in ("auto", -1):
        return
    ids = list(trainer.devices) if isinstance(trainer.devices, (list, tuple)) else None
    wanted = len(ids) if ids is not None else trainer.devices
    hint = "use trainer.accelerator=cpu" if gpus == 0 else "or trainer.devices=auto for all of them"
    check(wanted <= gpus, "trainer.devices", trainer.devices,
          f"at most {gpus}, the CUDA devices on this machine (trainer.accelerator={trainer.accelerator})", hint)
    if ids is not None:
        check(all(isinstance(i, int) and 0 <= i < gpus for i in ids), "trainer.devices", trainer.devices,
              f"CUDA device ids in 0..{gpus - 1}")


def _check_across_groups(typed: dict[str, Any]) -> None:
    data, backbone, aug = typed["data"], typed["backbone"], typed["augmentation"]
    if backbone.name.startswith("vit"):
        check(data.image_size % backbone.patch_size == 0, "backbone.patch_size", backbone.patch_size,
              f"a divisor of data.image_size={data.image_size}", "set backbone.patch_size or data.image_size")
    method = typed["method"]
    min_views = getattr(method, "min_views", 2)
    num_views = sum(group.num for group in aug.crops)
    check(num_views >= min_views, "augmentation.crops", f"{num_views} view(s)",
          f"at least {min_views} views for method={method.name}")
    if method.needs_colour:
        check(data.channels == 3, "data.channels", data.channels,
              f"3 (RGB) for method={method.name}: it learns from the a and b colour channels, 0 in grey images",
              "choose an RGB data set, e.g. data=cifar10, data=imagefolder or data=synthetic")
    sizes = [group.resolve_size(data.image_size) for group in aug.crops]
    for i, size in enumerate(sizes[1:], start=1):
        # multi-crop methods take the leading groups of the first group's size as the global views
        check(size <= sizes[0], f"augmentation.crops[{i}].size", aug.crops[i].size,
              f"at most the first group's size ({sizes[0]} px): the global, largest crops come first",
              "reorder augmentation.crops from the largest size to the smallest")
