"""End-of-run pictures: ``plots/tsne.png`` (validation embeddings coloured by label) and
``plots/curves.png`` (training curves from ``metrics.csv``) in the run directory, also logged to
TensorBoard (``plots/tsne``, ``plots/curves``) when it is on.

The callback keeps the validation-split features of the latest validation (at most ``max_points``,
in the loader's fixed order); ``train`` calls :meth:`EndOfRunPlots.write` once training and its final
validation are over. A drawing failure is logged and never fails the run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
import torch

from ssl_zoo.distributed import gather_no_grad

log = logging.getLogger(__name__)


class EndOfRunPlots(pl.Callback):
    def __init__(self, run_dir: Path, max_points: int = 1000, loader_index: int = 1, title: str = ""):
        self.run_dir, self.max_points, self.loader_index, self.title = Path(run_dir), max_points, loader_index, title
        self._features: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        self._collecting: list[torch.Tensor] = []
        self._collecting_labels: list[torch.Tensor] = []
        self._seen = 0

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._collecting, self._collecting_labels, self._seen = [], [], 0

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if dataloader_idx != self.loader_index or self._seen >= self.max_points:
            return
        take = min(self.max_points - self._seen, len(outputs["features"]))
        self._collecting.append(outputs["features"][:take].detach().float())
        self._collecting_labels.append(outputs["labels"][:take].detach())
        self._seen += take

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._collecting and not trainer.sanity_checking:
            self._features = [gather_no_grad(torch.cat(self._collecting)).cpu()]
            self._labels = [gather_no_grad(torch.cat(self._collecting_labels)).cpu()]
        self._collecting, self._collecting_labels = [], []

    def write(self, trainer: pl.Trainer) -> list[Path]:
        """Draw, save and log the pictures (global rank zero only); returns the files written."""
        if not trainer.is_global_zero:
            return []
        from ssl_zoo.eval import plots

        written: list[Path] = []
        for logger in trainer.loggers:
            logger.save()  # metrics.csv on disk before it is read
        figures = {}
        try:
            metrics = self.run_dir / "metrics.csv"
            if metrics.is_file():
                figures["curves"] = plots.curves_figure(plots.read_metrics(metrics), self.title)
            if self._features and len(self._features[0]) >= 3:
                features, labels = self._features[0].numpy(), self._labels[0].numpy()
                figures["tsne"] = plots.tsne_figure(features, labels, self.title)
        except Exception as e:  # noqa: BLE001 - a picture is never worth a failed run
            log.warning("could not draw the end-of-run plots: %s: %s", type(e).__name__, e)
        import matplotlib.pyplot as plt

        for name, fig in figures.items():
            path = self.run_dir / "plots" / f"{name}.png"
            plots.save_figure(fig, path)
            written.append(path)
            for logger in trainer.loggers:
                if hasattr(logger, "log_image"):  # wandb
                    logger.log_image(key=f"plots/{name}", images=[str(path)], step=trainer.global_step)
                elif hasattr(logger.experiment, "add_figure"):  # TensorBoard's SummaryWriter
                    logger.experiment.add_figure(f"plots/{name}", fig, global_step=trainer.global_step, close=False)
            plt.close(fig)
        return written
