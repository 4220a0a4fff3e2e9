"""The kNN monitor's cost against the size of its bank.

One validation of the monitor is (a) the backbone's features of the bank and of the test images (the
validation loaders: evaluation transform, batches of ``data.val_batch_size``) and (b) the weighted kNN
vote. (b) is timed for ours (:func:`ssl_zoo.eval.knn.knn_accuracy`, the whole test set in chunks) and for
lightly (``lightly.utils.benchmarking.knn_predict``, called per validation batch as lightly's
``KNNClassifier`` does), alternately, on the same features; (a) is the same network on both sides and
is reported once.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ssl_zoo.bench.lightly_loop import TransformedDataset
from ssl_zoo.eval.knn import knn_accuracy


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def extract(backbone: torch.nn.Module, dataset: Dataset, batch_size: int, workers: int,
            device: torch.device) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Features [N, D] and labels [N] of ``dataset`` and the seconds it took."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda")
    _sync(device)
    start = time.perf_counter()
    feats, labels = [], []
    for images, y in loader:
        feats.append(backbone(images.to(device, non_blocking=True)).float())
        labels.append(y.to(device))
    _sync(device)
    return torch.cat(feats), torch.cat(labels), time.perf_counter() - start


def lightly_knn_top1(bank: torch.Tensor, bank_labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor,
                     num_classes: int, k: int, temperature: float, batch_size: int) -> float:
    """Top-1 in percent as lightly's ``KNNClassifier`` computes it: normalised features, the bank as
    [D, N], ``knn_predict`` per validation batch."""
    import torch.nn.functional as F
    from lightly.utils.benchmarking import knn_predict

    bank_t = F.normalize(bank, dim=1).t().contiguous()
    correct = 0
    for start in range(0, len(test), batch_size):
        pred = knn_predict(F.normalize(test[start:start + batch_size], dim=1), bank_t, bank_labels, num_classes,
                           knn_k=k, knn_t=temperature)
        correct += (pred[:, 0] == test_labels[start:start + batch_size]).sum().item()
    return 100.0 * correct / max(len(test), 1)


def knn_table(bench, device: torch.device, overrides: list[str], log, repeats: int = 3) -> str:
    from ssl_zoo.backbones import build_backbone
    from ssl_zoo.bench.ours import compose_run
    from ssl_zoo.config import typed_group
    from ssl_zoo.data.config import DataConfig
    from ssl_zoo.data.datasets import build_datasets
    from ssl_zoo.transforms import build_eval_transform

    cfg = compose_run(bench.sweep_method, bench, bench.batch_size, bench.image_size, "32-true", device, overrides)
    data = typed_group(cfg, "data", DataConfig)
    splits = build_datasets(data)
    transform = build_eval_transform(data.image_size, data.mean, data.std, data.channels)
    backbone, _ = build_backbone(cfg.backbone, data.image_size, data.channels)
    backbone = backbone.to(device).eval()
    k, temperature = int(cfg.monitor.knn_k), float(cfg.monitor.knn_temperature)
    classes = int(splits.num_classes)
    test_n = min(bench.knn_test_size, len(splits.test))
    test, test_labels, test_s = extract(backbone, Subset(TransformedDataset(splits.test, transform), range(test_n)),
                                        data.val_batch_size, bench.num_workers, device)
    sides = [s for s in ("ours", "lightly") if s in bench.sides]
    lines = [f"test images: {test_n} ({test_s:.1f} s to encode), k={k} (at most the bank), T={temperature}, "
             f"median of {repeats} "
             "alternated repeats",
             "", "| bank images | encode bank s | bank images/s | kNN vote s (ours) | kNN vote s (lightly) | "
             "ours/lightly speed | top-1 ours / lightly |", "|" + "|".join([" --- "] * 7) + "|"]
    for n in bench.knn_sizes:
        n_real = min(n, len(splits.bank))
        bank_set = Subset(TransformedDataset(splits.bank, transform), range(n_real))
        bank, bank_labels, bank_s = extract(backbone, bank_set, data.val_batch_size, bench.num_workers, device)
        k_n = min(k, n_real)  # a bank smaller than k votes with all of it (lightly's knn_predict would fail)
        times: dict[str, list[float]] = {s: [] for s in sides}
        top1: dict[str, float] = {}
        for r in range(repeats):
            for side in sides if r % 2 == 0 else list(reversed(sides)):
                _sync(device)
                start = time.perf_counter()
                if side == "ours":
                    top1[side] = knn_accuracy(bank, bank_labels, test, test_labels, classes, k_n, temperature)[1]
                else:
                    top1[side] = lightly_knn_top1(bank, bank_labels, test, test_labels, classes, k_n, temperature,
                                                  data.val_batch_size)
                _sync(device)
                times[side].append(time.perf_counter() - start)
        med = {s: statistics.median(v) for s, v in times.items()}
        speed = f"{med['lightly'] / med['ours']:.2f}x" if len(med) == 2 and med["ours"] > 0 else ""
        log(f"  kNN bank {n_real}: encode {bank_s:.1f} s, vote {med}")
        lines.append(f"| {n_real}{'' if n_real == n else f' (asked {n})'} | {bank_s:.2f} | {n_real / bank_s:,.0f} | "
                     f"{med.get('ours', float('nan')):.4f} | {med.get('lightly', float('nan')):.4f} | {speed} | "
                     + " / ".join(f"{top1[s]:.1f}" for s in sides) + " |")
    return "\n".join(lines)
