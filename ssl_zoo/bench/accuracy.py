"""kNN accuracy at equal epochs: our training run against lightly's loop, the same recipe on both sides.

``ssl-zoo bench sweep=accuracy`` trains each method of the bench from scratch on both sides for
``accuracy_epochs`` epochs of the bench's data (Fashion-MNIST served as RGB by default) with the method's
run config: its heads, optimizer, learning rate and warm-up, temperature or momentum, the bench's batch
size, image size and precision, and any training overrides given, on both sides.

- ours: ``ssl_zoo.train.train`` (the real run: Lightning, batched views, the kNN monitor before the first
  step and after the last);
- lightly: the method as lightly's examples write it (``ssl_zoo.bench.lightly_loop``: lightly's heads,
  loss, view transform and loop), its cosine schedule warmed up over our number of warm-up steps.

Both backbones are then read by the same kNN, ``ssl_zoo.eval.knn.knn_accuracy`` with the monitor's k and
temperature, on the same bank and test images; each side's images are normalised as that side trained
(ours with the data set's mean and std, lightly's with ImageNet's, as its examples evaluate). Each side's
random init is read the same way before its first step.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, open_dict

from ssl_zoo.eval.knn import knn_accuracy


@dataclass
class AccuracyRow:
    method: str
    precision: str  # as resolved
    epochs: int
    steps: int
    ours: float
    ours_random: float
    ours_wall_s: float
    lightly: float
    lightly_random: float
    lightly_wall_s: float


def accuracy_config(method: str, bench, precision: str, device: torch.device, overrides: list[str]) -> DictConfig:
    """The bench's run config of ``method`` trained for ``bench.accuracy_epochs`` epochs, the kNN monitor
    before the first step and after the last, no end-of-run plots."""
    from ssl_zoo.bench.ours import compose_run

    cfg = compose_run(method, bench, bench.batch_size, bench.image_size, precision, device, overrides)
    epochs = int(bench.accuracy_epochs)
    with open_dict(cfg):
        cfg.trainer.max_steps, cfg.trainer.max_epochs = -1, epochs
        cfg.trainer.check_val_every_n_epoch = epochs
        cfg.monitor.knn, cfg.monitor.knn_baseline, cfg.monitor.plots = True, True, False
    return cfg


def train_ours(cfg: DictConfig) -> tuple[float, float, float, int]:
    """(kNN top-1 trained, at random init, wall seconds, steps) of our run on ``cfg``."""
    from ssl_zoo.train import train

    with tempfile.TemporaryDirectory(prefix="ssl_zoo_bench_") as tmp:
        sink = io.StringIO()
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            summary = train(cfg.copy(), Path(tmp) / "run")
    return summary["knn_top1"], summary["knn_top1_random_init"], summary["wall_time_s"], summary["steps"]


def lightly_eval_transform(image_size: int):
    """The evaluation transform of lightly's examples: resize, tensor, ImageNet normalisation."""
    import torchvision.transforms as T
    from lightly.transforms.utils import IMAGENET_NORMALIZE

    return T.Compose([T.Resize(image_size), T.ToTensor(), T.Normalize(IMAGENET_NORMALIZE["mean"],
                                                                       IMAGENET_NORMALIZE["std"])])


def knn_top1(backbone: torch.nn.Module, loaders: dict, cfg: DictConfig, device: torch.device, precision: str) -> float:
    """The kNN monitor's top-1 of ``backbone`` on the run's bank and test loaders (``split_loaders``)."""
    from ssl_zoo.bench.lightly_loop import autocast
    from ssl_zoo.eval.features import extract

    with autocast(device, precision):
        (bank, bank_labels), (test, test_labels) = (extract(backbone, loaders[s], device) for s in ("train", "test"))
    return knn_accuracy(bank, bank_labels, test, test_labels, int(cfg.data.num_classes), int(cfg.monitor.knn_k),
                        float(cfg.monitor.knn_temperature))[1]


def eval_backbone(model: torch.nn.Module) -> torch.nn.Module:
    """The backbone a lightly recipe is evaluated on: DINO's teacher (as the reference and ours), else the
    online backbone."""
    return model.teacher_backbone if hasattr(model, "teacher_backbone") else model.backbone


def train_lightly_side(cfg: DictConfig, device: torch.device, precision: str, steps: int,
                       workers: int) -> tuple[float, float, float]:
    """(kNN top-1 trained, at random init, wall seconds) of lightly's loop trained ``steps`` steps."""
    from ssl_zoo.bench.lightly_loop import RECIPES, train_lightly
    from ssl_zoo.config import typed_group
    from ssl_zoo.data.config import DataConfig
    from ssl_zoo.data.datasets import build_datasets
    from ssl_zoo.eval.features import split_loaders
    from ssl_zoo.optim import warmup_steps_of
    from ssl_zoo.optim.config import SchedulerConfig

    data = typed_group(cfg, "data", DataConfig)
    base = build_datasets(data).train
    torch.manual_seed(int(cfg.seed))
    recipe = RECIPES[cfg.method.name](cfg, steps)
    model = recipe.model.to(device)
    started = time.time()  # from here as ours: both kNN readings and the training
    loaders = split_loaders(data, int(cfg.seed), lightly_eval_transform(data.image_size))
    random_init = knn_top1(eval_backbone(model), loaders, cfg, device, precision)
    lr_warmup = warmup_steps_of(typed_group(cfg, "scheduler", SchedulerConfig), len(base) // data.batch_size)
    train_lightly(recipe, cfg, base, device, precision, 0, steps, workers, lr_warmup_steps=lr_warmup)
    trained = knn_top1(eval_backbone(model), loaders, cfg, device, precision)
    return trained, random_init, time.time() - started


def measure_accuracy(method: str, bench, device: torch.device, overrides: list[str], log) -> AccuracyRow:
    from ssl_zoo.precision import resolve_precision

    precision = bench.precision[0]
    resolved = resolve_precision(precision, "gpu" if device.type == "cuda" else "cpu")
    cfg = accuracy_config(method, bench, precision, device, overrides)
    ours, ours_random, ours_wall, steps = train_ours(cfg)
    log(f"  {method} accuracy: ours {ours:.2f} (random init {ours_random:.2f}) in {steps} steps, {ours_wall:.0f} s")
    theirs, theirs_random, theirs_wall = train_lightly_side(cfg, device, resolved, steps, bench.num_workers)
    log(f"  {method} accuracy: lightly {theirs:.2f} (random init {theirs_random:.2f}), {theirs_wall:.0f} s")
    return AccuracyRow(method, resolved, int(bench.accuracy_epochs), steps, ours, ours_random, ours_wall, theirs,
                       theirs_random, theirs_wall)


def accuracy_table(bench, device: torch.device, overrides: list[str], log) -> str:
    rows = [measure_accuracy(m, bench, device, overrides, log) for m in bench.methods]
    lines = ["| method | precision | epochs | steps | kNN ours | kNN lightly | ours - lightly | random init ours "
             "| random init lightly | wall ours | wall lightly |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r.method} | {r.precision} | {r.epochs} | {r.steps} | {r.ours:.2f} | {r.lightly:.2f} | "
                     f"**{r.ours - r.lightly:+.2f}** | {r.ours_random:.2f} | {r.lightly_random:.2f} | "
                     f"{r.ours_wall_s:.0f} s | {r.lightly_wall_s:.0f} s |")
    return "\n".join(lines)
