"""Our side of the benchmark: a block of steps of the real training run, ``ssl_zoo.train.train``.

The run config is composed as ``ssl-zoo train`` composes it, with the benchmark's settings on top; the
block is one call of :func:`ssl_zoo.train.train` (Lightning Trainer, data module, batched augmentation,
precision, channels_last, online probe, loggers, EMA and queues, checkpoint callbacks) in a throw-away
run directory, with one extra callback that stamps each step. Validation (the kNN monitor) is left out
of the timed steps; its cost is measured on its own (``ssl_zoo.bench.knn_cost``).
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from ssl_zoo.bench.measure import Block, PeakMemory, StepClock


class StepStamps(pl.Callback):
    """Stamps each training step for a :class:`StepClock`: the batch is ready when Lightning calls
    ``on_train_batch_start`` (after the loader, the device copy and the on-device views) and the step is
    done at ``on_train_batch_end`` (after backward, optimizer step, EMA and the step's logging)."""

    def __init__(self, clock: StepClock, peak: PeakMemory):
        self.clock, self.peak, self.peak_bytes = clock, peak, 0

    def on_train_start(self, trainer, pl_module) -> None:
        self.peak.reset()
        self.clock.start()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.clock.batch_ready()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.clock.step_done()

    def on_train_end(self, trainer, pl_module) -> None:
        self.peak_bytes = self.peak.peak_bytes()


def dino_views(cfg: DictConfig, local_views: int) -> None:
    """DINO's bench pipeline: 2 global crops + ``local_views`` local crops whose side is a multiple of the
    ViT's patch (about 96/224 of the image), and a ViT that takes both sizes."""
    size, patch = int(cfg.data.image_size), int(cfg.backbone.get("patch_size", 16))
    local_px = patch * max(1, round(0.4285714 * size / patch))
    with open_dict(cfg):
        crops = cfg.augmentation.crops
        if local_views == 0:
            cfg.augmentation.crops = crops[:2]
        else:
            crops[2].num, crops[2].size = local_views, float(local_px)
        if "vit" in str(cfg.backbone.name):
            kwargs = cfg.backbone.get("kwargs")
            kwargs = OmegaConf.to_container(kwargs) if OmegaConf.is_config(kwargs) else dict(kwargs or {})
            cfg.backbone.kwargs = {**kwargs, "dynamic_img_size": True}


def vit_patch(image_size: int) -> int:
    """The ViT patch of the bench at ``image_size``: 8x8 tokens at 32-96 px, 14x14 at 224 px (ViT/16)."""
    return 16 if image_size >= 224 else max(1, image_size // 8)


def method_overrides_for(method: str, overrides: list[str]) -> list[str]:
    """``overrides`` less the ``method.<key>=...`` ones whose key ``method``'s config does not have: one
    bench run measures several methods, and a head width given for SimCLR means nothing to DINO."""
    from dataclasses import fields

    from ssl_zoo.methods import METHODS

    keys = {f.name for f in fields(METHODS[method].Config)}
    return [o for o in overrides if not o.lstrip("+~").startswith("method.")
            or o.lstrip("+~").partition("=")[0].split(".")[1] in keys]


def check_method_overrides(methods: list[str], overrides: list[str]) -> None:
    """A ``method.<key>`` override that none of the measured methods has is a typo: stop before measuring."""
    from ssl_zoo.errors import ConfigError

    for o in overrides:
        if o.lstrip("+~").startswith("method.") and not any(o in method_overrides_for(m, [o]) for m in methods):
            key, _, value = o.lstrip("+~").partition("=")
            raise ConfigError(key, value, "a field of one of the measured methods: " + ", ".join(methods))


def compose_run(method: str, bench, batch_size: int, image_size: int, precision: str, device: torch.device,
                overrides: list[str], local_views: int | None = None) -> DictConfig:
    """The run config of one row: the method's own yaml (its paper's heads, augmentation, optimizer),
    ResNet-18 (or ViT-tiny for DINO), the bench's data, batch, size, precision and step budget."""
    from ssl_zoo.cli import check_group_choices, compose
    from ssl_zoo.config import validate_config

    base = [f"method={method}", f"data={bench.data}", f"data.image_size={image_size}",
            f"data.batch_size={batch_size}", f"data.num_workers={bench.num_workers}",
            f"trainer.precision={precision}",
            f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}",
            f"trainer.max_steps={bench.warmup + bench.steps}", "trainer.max_epochs=1000000",
            "trainer.check_val_every_n_epoch=1000000", "monitor.knn=false", "monitor.knn_baseline=false",
            "logger=default"]
    if method == "dino":
        base += ["backbone=vit_tiny", f"backbone.patch_size={vit_patch(image_size)}"]
    else:
        base += ["backbone=resnet18", f"backbone.cifar_stem={str(bench.cifar_stem).lower()}"]
    overrides = method_overrides_for(method, overrides)
    check_group_choices([*base, *overrides])
    cfg = compose([*base, *overrides])
    with open_dict(cfg):
        cfg.augmentation.backend = "batched"  # the fast path: views made on the device after the loader
        # Served as RGB on both sides (lightly's transforms expect 3 channels): a grey set's statistics repeat.
        if cfg.data.channels != 3:
            cfg.data.channels = 3
            cfg.data.mean = [cfg.data.mean[0]] * 3 if len(cfg.data.mean) == 1 else cfg.data.mean
            cfg.data.std = [cfg.data.std[0]] * 3 if len(cfg.data.std) == 1 else cfg.data.std
    if method == "dino":
        dino_views(cfg, 6 if local_views is None else local_views)
    validate_config(cfg)
    return cfg


def run_block(cfg: DictConfig, device: torch.device, warmup: int) -> Block:
    """One call of the real training run on ``cfg`` (its ``trainer.max_steps`` steps); the first ``warmup``
    steps are not measured. The console output of the run is swallowed; an error is raised as it is."""
    from ssl_zoo.train import train

    clock, peak = StepClock(device, warmup), PeakMemory(device)
    stamps = StepStamps(clock, peak)
    with tempfile.TemporaryDirectory(prefix="ssl_zoo_bench_") as tmp:
        sink = io.StringIO()
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            train(cfg.copy(), Path(tmp) / "run", extra_callbacks=[stamps])
    return Block(clock.step_s, clock.wait_s, stamps.peak_bytes)
