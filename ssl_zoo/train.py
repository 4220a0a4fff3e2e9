"""One training run: config -> data, method, trainer -> checkpoints, metrics and a summary."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, RichProgressBar

from ssl_zoo.callbacks import KNNMonitor, NonFiniteGuard, OnlineLinearProbe, ProgressLines, RNGState
from ssl_zoo.callbacks.checkpoint import checkpoint_callbacks
from ssl_zoo.callbacks.health import RepresentationHealth
from ssl_zoo.callbacks.plots import EndOfRunPlots
from ssl_zoo.checkpoint_io import AtomicCheckpointIO, safe_torch_load
from ssl_zoo.config import validate_config
from ssl_zoo.data import SSLDataModule
from ssl_zoo.errors import CheckpointError, check
from ssl_zoo.methods import METHODS
from ssl_zoo.precision import resolve_precision
from ssl_zoo.run_dir import config_hash
from ssl_zoo.transforms import build_eval_transform, build_view_transform
from ssl_zoo.transforms.batched import BatchedViews, RawImage

_TRAINER_KEYS = ("max_epochs", "max_steps", "accelerator", "devices", "num_nodes", "strategy", "precision",
                 "accumulate_grad_batches", "sync_batchnorm", "gradient_clip_val", "deterministic", "benchmark",
                 "log_every_n_steps", "check_val_every_n_epoch", "val_check_interval", "limit_train_batches",
                 "num_sanity_val_steps")


def quiet_third_party_noise() -> None:
    """Keep the console to what a user acts on: Lightning's tips and known-harmless warnings go."""
    import logging
    import warnings

    for name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (".*exists and is not empty.*", ".*isinstance\\(treespec, LeafSpec\\).*",
                    ".*could not find the monitored key.*", ".*does not have many workers.*",
                    ".*Total length of `.*` across ranks is zero.*", ".*The number of training batches.*"):
        warnings.filterwarnings("ignore", message=pattern)


def build_loggers(cfg: DictConfig, run_dir: Path) -> list:
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    log = cfg.logger
    loggers: list = []
    if log.csv:
        loggers.append(CSVLogger(save_dir=str(run_dir), name="", version=""))
    if log.tensorboard:
        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="",
                                         default_hp_metric=False))
    if log.wandb:
        from pytorch_lightning.loggers import WandbLogger

        loggers.append(WandbLogger(project=log.project, entity=log.entity, group=log.group, tags=list(log.tags),
                                   mode=log.mode, save_dir=str(run_dir), name=run_dir.name,
                                   config=OmegaConf.to_container(cfg, resolve=True)))
    return loggers


def resolve_checkpoint(resume: str | None, run_dir: Path, method_name: str) -> str | None:
    """The checkpoint to continue from: None (fresh), ``auto`` (this run directory's last.ckpt, if any)
    or an explicit path, which must exist and come from the same method."""
    if resume in (None, "", "null"):
        return None
    path = run_dir / "checkpoints" / "last.ckpt" if resume == "auto" else Path(resume)
    if resume == "auto" and not path.exists():
        return None
    if not path.is_file():
        raise CheckpointError(f"resume={resume!r}: no such checkpoint file; give the path of a .ckpt "
                              "(e.g. outputs/<date>/<time>/checkpoints/last.ckpt) or resume=auto")
    ckpt = safe_torch_load(path)  # weights_only: a crafted pickle is refused, never run
    try:
        trained = ckpt["hyper_parameters"]["cfg"]["method"]["name"]
    except (KeyError, TypeError):
        raise CheckpointError(f"resume={resume!r} is not an ssl_zoo checkpoint (no method config in it): "
                              "give a .ckpt written by ssl-zoo train or start a fresh run") from None
    if trained != method_name:
        raise CheckpointError(f"resume={resume!r} holds a method={trained} run, not method={method_name}: "
                              f"resume it with method={trained} or start a fresh run")
    return str(path)


def build_trainer(cfg: DictConfig, run_dir: Path, callbacks: list, loggers: list) -> pl.Trainer:
    kwargs: dict[str, Any] = {k: cfg.trainer[k] for k in _TRAINER_KEYS if cfg.trainer.get(k) is not None}
    if OmegaConf.is_list(cfg.trainer.devices):
        kwargs["devices"] = list(cfg.trainer.devices)
    kwargs["precision"] = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    interactive = sys.stdout.isatty()
    callbacks = [*callbacks, RichProgressBar() if interactive else ProgressLines()]
    # Our sampler splits data across ranks itself (and resumes mid-epoch), so Lightning must not swap it.
    # Atomic, fsync-ed checkpoint writes (a kill leaves the previous one whole) and weights_only loads.
    return pl.Trainer(**kwargs, default_root_dir=str(run_dir), callbacks=callbacks, logger=loggers or False,
                      plugins=[AtomicCheckpointIO()], use_distributed_sampler=False, enable_model_summary=False,
                      enable_progress_bar=interactive)


def train(cfg: DictConfig, run_dir: Path, extra_callbacks: list | None = None) -> dict[str, Any]:
    """Train ``cfg`` writing into ``run_dir``; returns the summary also written to ``summary.json``."""
    started = time.time()
    quiet_third_party_noise()
    typed = validate_config(cfg)
    ckpt_path = resolve_checkpoint(cfg.resume, run_dir, cfg.method.name)  # before anything is written
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_hash = config_hash(cfg)
    (run_dir / "run.json").write_text(json.dumps({"config_hash": cfg_hash, "method": cfg.method.name,
                                                  "argv": sys.argv[1:]}, indent=2))
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    data = typed["data"]
    aug = typed["augmentation"]
    eval_transform = build_eval_transform(data.image_size, data.mean, data.std, data.channels)
    if aug.backend == "batched":
        check(data.name != "imagefolder", "augmentation.backend", aug.backend,
              "pil for data=imagefolder", "the batched backend needs same-size images held in memory")
        datamodule = SSLDataModule(data, RawImage(data.channels), eval_transform, seed=cfg.seed,
                                   batch_transform=BatchedViews(aug, data.image_size, data.mean, data.std,
                                                                data.channels))
    else:
        views = build_view_transform(aug, data.image_size, data.mean, data.std, data.channels)
        datamodule = SSLDataModule(data, views, eval_transform, seed=cfg.seed)
    datamodule.setup("fit")  # the data sets are built once; methods with memory banks need their size
    method = METHODS[cfg.method.name](cfg, num_train=datamodule.train_size)
    if cfg.trainer.compile:
        method.backbone.compile()

    monitor, labelled = typed["monitor"], data.num_classes is not None and data.labelled
    knn = KNNMonitor(data.num_classes, monitor.knn_k, monitor.knn_temperature) if labelled and monitor.knn else None
    callbacks: list = [RNGState(), LearningRateMonitor(logging_interval="step"),
                       NonFiniteGuard(cfg.trainer.skip_nonfinite, run_dir / "checkpoints" / "last.ckpt")]
    callbacks += checkpoint_callbacks(run_dir / "checkpoints", cfg.trainer.checkpoint_every_n_steps,
                                      best_by_knn=bool(knn))
    if knn:
        callbacks.append(knn)
    if labelled and monitor.probe:
        callbacks.append(OnlineLinearProbe(method.feature_dim, data.num_classes, monitor.probe_lr,
                                           weight_decay=monitor.probe_weight_decay))
    if labelled and monitor.health:
        callbacks.append(RepresentationHealth(monitor.health_samples, monitor.collapse_std, monitor.collapse_rank,
                                              rank_fraction=monitor.collapse_rank_fraction))
    plots = EndOfRunPlots(run_dir, monitor.tsne_samples, title=f"{cfg.method.name} on {data.name}") \
        if monitor.plots else None
    if plots and labelled:
        callbacks.append(plots)
    callbacks += extra_callbacks or []
    trainer = build_trainer(cfg, run_dir, callbacks, build_loggers(cfg, run_dir))

    if knn and monitor.knn_baseline and ckpt_path is None:
        knn.measuring_baseline = True
        trainer.validate(method, datamodule=datamodule, verbose=False)
        knn.measuring_baseline = False
    trainer.fit(method, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    if knn and knn.last_step != trainer.global_step:
        trainer.validate(method, datamodule=datamodule, verbose=False)
    if plots:
        plots.write(trainer)

    summary = {
        "method": cfg.method.name, "backbone": cfg.backbone.name, "data": cfg.data.name,
        "epochs": trainer.current_epoch, "steps": trainer.global_step, "batch_size": cfg.data.batch_size,
        "config_hash": cfg_hash, "wall_time_s": round(time.time() - started, 1),
        "knn_top1": knn.last_top1 if knn else None, "knn_top1_random_init": knn.baseline_top1 if knn else None,
        "knn_k": monitor.knn_k, "run_dir": str(run_dir),
    }
    if trainer.is_global_zero:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        print_summary(summary)
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    print(f"run directory: {summary['run_dir']}  ({summary['steps']} steps, {summary['wall_time_s']:.0f} s)")
    if summary["knn_top1"] is not None:
        line = (f"kNN top-1 on the {summary['data']} test split (k={summary['knn_k']}): "
                f"trained {summary['knn_top1']:.2f}%")
        if summary["knn_top1_random_init"] is not None:
            base = summary["knn_top1_random_init"]
            line += f" | random init {base:.2f}% | {summary['knn_top1'] - base:+.2f} points"
        print(line)
