"""``ssl-zoo results``: a leaderboard of every run under a folder.

A run directory is any folder holding ``run.json`` (written when a run starts); ``summary.json`` (at
its end) gives the training-time kNN monitor's figure, wall time and epochs, ``config.yaml`` the batch
size and epochs asked for, and ``eval.jsonl`` the offline evaluations (``ssl-zoo eval``).

``protocol=best`` (default) gives one row per run: its headline result, the first found of linear probe,
fine-tune, offline kNN (k=200 if measured, else the largest k), few-shot (largest fraction) and the
training-time kNN monitor; a run without any result still gets a row. ``protocol=all`` gives one row
per run and protocol setting (the latest measurement of each); ``protocol=<name>`` only that protocol.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

PROTOCOL_CHOICES = ("best", "all", "monitor", "knn", "linear", "finetune", "fewshot")
_HEADLINE_ORDER = ("linear", "finetune", "knn", "fewshot", "monitor")


@dataclass
class Row:
    method: str
    backbone: str
    data: str
    epochs: int | None
    batch: int | None
    protocol: str
    metric: float | None  # top-1 accuracy in percent
    wall_time_s: float | None
    config_hash: str
    run: str


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
            "config_hash": summary.get("config_hash") or run.get("config_hash") or "?", "run": str(run_dir)}

    results: dict[str, dict[str, Any]] = {}  # label -> latest line
    if summary.get("knn_top1") is not None:
        results[f"monitor knn k={summary.get('knn_k')}"] = {"protocol": "monitor", "top1": summary["knn_top1"],
                                                          "data": train_data}
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
    rows = [Row(data=line.get("data") or train_data, protocol=label, metric=float(line["top1"]), **base)
            for label, line in items]
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
        wall = "-" if r.wall_time_s is None else f"{r.wall_time_s / 60:.1f} min"
        cells = [_cell(c) for c in (r.method, r.backbone, r.data, r.epochs, r.batch, r.protocol, r.metric)]
        lines.append("| " + " | ".join([*cells, wall, r.config_hash, r.run]) + " |")
    return "\n".join(lines)


def write_csv(rows: list[Row], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[fl.name for fl in fields(Row)])
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))
