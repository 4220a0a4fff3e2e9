"""``ssl-zoo results``: a leaderboard of every run under a folder.

A run directory is any folder holding ``run.json`` (written when a run starts); ``summary.json`` (at
its end) gives the training-time kNN monitor's figure, wall time and epochs, ``config.yaml`` the batch
size and epochs asked for, and ``eval.jsonl`` the offline evaluations (``ssl-zoo eval``).

``protocol=best`` (default) gives one row per run: its headline result, the first found of linear probe,
fine-tune, offline kNN (k=200 if measured, else the largest k), few-shot (largest fraction) and the
training-time kNN monitor; a run without any result still gets a row. ``protocol=all`` gives one row
per run and protocol setting (the latest measurement of each); ``protocol=<name>`` only that protocol.

``seeds=mean`` folds the runs of one recipe (the same config but for ``seed``) into one row per protocol:
the seeds, the mean and sample standard deviation of top-1, and for the kNN monitor the gain over each
run's own random-init kNN (mean and the smallest). On a short budget one seed moves a row by a point or
two, so a recipe's claim to beat its random init reads better as a mean over seeds than as one draw.
"""

from __future__ import annotations

import csv
import json
import statistics
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ssl_zoo.run_dir import container_hash

PROTOCOL_CHOICES = ("best", "all", "monitor", "knn", "linear", "finetune", "fewshot")
SEEDS_CHOICES = ("each", "mean")
_HEADLINE_ORDER = ("linear", "finetune", "knn", "fewshot", "monitor")


@dataclass
class Described:
    """What a leaderboard row describes: the first columns of every table."""

    method: str
    backbone: str
    data: str
    epochs: int | None
    batch: int | None
    protocol: str


@dataclass
class Row(Described):
    metric: float | None  # top-1 accuracy in percent
    wall_time_s: float | None
    config_hash: str
    run: str
    seed: int | None = None
    random_init: float | None = None  # the kNN monitor's figure before training (monitor rows only)
    recipe: str = ""  # the config's hash without its seed: runs that differ only in seed share it


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(OmegaConf.load(path)) or {}
    except Exception:  # noqa: BLE001 - a damaged config only costs the columns it would fill
        return {}


def read_eval_lines(path: Path) -> list[dict[str, Any]]:
    """The parseable result lines of an ``eval.jsonl`` (a torn last line of a killed write is skipped)."""
    if not path.is_file():
        return []
    lines = []
    for text in path.read_text().splitlines():
        try:
            line = json.loads(text)
        except ValueError:
            continue
        if isinstance(line, dict) and "protocol" in line and "top1" in line:
            lines.append(line)
    return lines


def protocol_label(line: dict[str, Any]) -> str:
    """``linear``, ``linear (augmented)``, ``knn k=20 T=0.07``, ``fewshot 1% (finetune)``, ``finetune``."""
    protocol = line["protocol"]
    if protocol == "knn":
        return f"knn k={line.get('k')} T={line.get('temperature')}"
    if protocol == "linear" and line.get("augment"):
        return "linear (augmented)"
    if protocol == "fewshot":
        return f"fewshot {100 * float(line.get('fraction', 0)):g}% ({line.get('mode', 'finetune')})"
    return protocol


def _headline(results: list[tuple[str, dict[str, Any]]]) -> tuple[str, dict[str, Any]] | None:
    for family in _HEADLINE_ORDER:
        found = [(label, line) for label, line in results if line["protocol"] == family]
        if not found:
            continue
        if family == "knn":
            return max(found, key=lambda r: (r[1].get("k") == 200, r[1].get("k") or 0))
        if family == "fewshot":
            return max(found, key=lambda r: float(r[1].get("fraction", 0)))
        return found[-1]
    return None


def run_rows(run_dir: Path, protocol: str = "best") -> list[Row]:
    """The leaderboard rows of one run directory."""
    run, summary = _read_json(run_dir / "run.json"), _read_json(run_dir / "summary.json")
    config = _read_config(run_dir / "config.yaml")

    def pick(key: str, group: str, field: str) -> Any:
        value = summary.get(key)
        return value if value is not None else (config.get(group) or {}).get(field)

    method = summary.get("method") or run.get("method") or pick("method", "method", "name") or "?"
    train_data = pick("data", "data", "name") or "?"
    base = {"method": method, "backbone": pick("backbone", "backbone", "name") or "?",
            "epochs": pick("epochs", "trainer", "max_epochs"), "batch": pick("batch_size", "data", "batch_size"),
            "wall_time_s": summary.get("wall_time_s"),
            "config_hash": summary.get("config_hash") or run.get("config_hash") or "?", "run": str(run_dir),
            "seed": config.get("seed")}
    base["recipe"] = container_hash(config, ("seed",)) if config else base["config_hash"]

    results: dict[str, dict[str, Any]] = {}  # label -> latest line
    if summary.get("knn_top1") is not None:
        results[f"monitor knn k={summary.get('knn_k')}"] = {"protocol": "monitor", "top1": summary["knn_top1"],
                                                          "data": train_data,
                                                          "random_init": summary.get("knn_top1_random_init")}
    for line in read_eval_lines(run_dir / "eval.jsonl"):
        label = protocol_label(line)
        results.pop(label, None)  # the latest measurement of a setting wins, in file order
        results[label] = line
    items = list(results.items())
    if protocol == "best":
        best = _headline(items)
        items = [best] if best else []
    elif protocol != "all":
        items = [(label, line) for label, line in items if line["protocol"] == protocol]
    rows = [Row(data=line.get("data") or train_data, protocol=label, metric=float(line["top1"]),
                random_init=line.get("random_init"), **base) for label, line in items]
    if not rows and protocol in ("best", "all"):
        rows = [Row(data=train_data, protocol="-", metric=None, **base)]
    return rows


def find_runs(root: Path) -> list[Path]:
    """Every folder under ``root`` (itself included) holding a ``run.json``, in path order."""
    return sorted(p.parent for p in Path(root).glob("**/run.json"))


def leaderboard(root: Path, protocol: str = "best") -> list[Row]:
    """Rows of every run under ``root``, best first within each (data set, protocol)."""
    rows = [row for run_dir in find_runs(root) for row in run_rows(run_dir, protocol)]
    return sorted(rows, key=lambda r: (r.data, r.protocol, -(r.metric if r.metric is not None else -1.0), r.run))


@dataclass
class SeedRow(Described):
    """The runs of one recipe (same config but for the seed) and one protocol, folded together."""

    seeds: str  # space-separated, as run ("?" for a run whose config is missing)
    runs: int
    mean: float | None  # top-1 % over the runs that have a figure
    std: float | None  # sample standard deviation; None for fewer than two figures
    gain_mean: float | None  # top-1 minus the same run's random-init kNN, averaged (monitor rows)
    gain_min: float | None
    wall_time_s: float | None  # mean
    recipe: str


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def over_seeds(rows: list[Row]) -> list[SeedRow]:
    """One :class:`SeedRow` per (recipe, data set, protocol) of ``rows``, best mean first within each
    (data set, protocol)."""
    groups: dict[tuple[str, str, str], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.recipe, row.data, row.protocol), []).append(row)
    out = []
    for (recipe, data, protocol), group in groups.items():
        first = group[0]
        metrics = [r.metric for r in group if r.metric is not None]
        gains = [r.metric - r.random_init for r in group if r.metric is not None and r.random_init is not None]
        walls = [r.wall_time_s for r in group if r.wall_time_s is not None]
        seeds = sorted(group, key=lambda r: (r.seed is None, r.seed if r.seed is not None else 0))
        out.append(SeedRow(method=first.method, backbone=first.backbone, data=data, epochs=first.epochs,
                           batch=first.batch, protocol=protocol,
                           seeds=" ".join("?" if r.seed is None else str(r.seed) for r in seeds), runs=len(group),
                           mean=_mean(metrics), std=statistics.stdev(metrics) if len(metrics) > 1 else None,
                           gain_mean=_mean(gains), gain_min=min(gains) if gains else None,
                           wall_time_s=_mean(walls), recipe=recipe))
    return sorted(out, key=lambda r: (r.data, r.protocol, -(r.mean if r.mean is not None else -1.0), r.recipe))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def to_markdown(rows: list[Row]) -> str:
    header = ["method", "backbone", "data", "epochs", "batch", "protocol", "top-1 %", "wall time", "config",
              "run"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for r in rows:
        cells = [_cell(c) for c in (r.method, r.backbone, r.data, r.epochs, r.batch, r.protocol, r.metric)]
        lines.append("| " + " | ".join([*cells, _wall(r.wall_time_s), r.config_hash, r.run]) + " |")
    return "\n".join(lines)


def _wall(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f} min"


def seeds_to_markdown(rows: list[SeedRow]) -> str:
    header = ["method", "backbone", "data", "epochs", "batch", "protocol", "seeds", "top-1 % (mean)", "std",
              "gain over random init (mean)", "gain (smallest)", "wall time", "recipe"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for r in rows:
        gain_mean = "-" if r.gain_mean is None else f"{r.gain_mean:+.2f}"
        gain_min = "-" if r.gain_min is None else f"{r.gain_min:+.2f}"
        cells = [_cell(c) for c in (r.method, r.backbone, r.data, r.epochs, r.batch, r.protocol, r.seeds, r.mean,
                                    r.std)]
        lines.append("| " + " | ".join([*cells, gain_mean, gain_min, _wall(r.wall_time_s), r.recipe]) + " |")
    return "\n".join(lines)


def write_csv(rows: list[Row] | list[SeedRow], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    kind = type(rows[0]) if rows else Row
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[fl.name for fl in fields(kind)])
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))
