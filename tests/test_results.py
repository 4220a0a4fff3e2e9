"""``ssl-zoo results``: the leaderboard of fixture run directories (run.json, summary.json, config.yaml, eval.jsonl)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from ssl_zoo.cli import main
from ssl_zoo.eval.results import leaderboard, over_seeds, to_markdown


def make_run(root: Path, name: str, method: str, knn: float | None, evals: list[dict] = (), wall: float = 60.0,
             finished: bool = True) -> Path:
    run = root / "2026-01-01" / name
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"config_hash": f"hash-{name}", "method": method}))
    (run / "config.yaml").write_text(f"method:\n  name: {method}\nbackbone:\n  name: resnet18\ndata:\n"
                                     "  name: cifar10\n  batch_size: 256\ntrainer:\n  max_epochs: 200\n")
    if finished:
        (run / "summary.json").write_text(json.dumps({
            "method": method, "backbone": "resnet18", "data": "cifar10", "epochs": 200, "batch_size": 512,
            "config_hash": f"hash-{name}", "wall_time_s": wall, "knn_top1": knn, "knn_k": 200}))
    lines = [json.dumps({"protocol": "knn", "data": "cifar10", "top1": 0.0, **e}) if e.get("protocol") is None
             else json.dumps({"data": "cifar10", **e}) for e in evals]
    if lines:
        (run / "eval.jsonl").write_text("\n".join(lines) + "\n{torn line")
    return run


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "outputs"
    make_run(root, "a", "simclr", 80.0, [
        {"protocol": "knn", "k": 20, "temperature": 0.07, "top1": 81.0},
        {"protocol": "knn", "k": 200, "temperature": 0.07, "top1": 82.0},
        {"protocol": "linear", "augment": False, "top1": 85.0},
        {"protocol": "linear", "augment": False, "top1": 86.0},  # re-measured: the latest counts
    ])
    make_run(root, "b", "byol", 84.0, [{"protocol": "knn", "k": 200, "temperature": 0.07, "top1": 83.5},
                                       {"protocol": "fewshot", "fraction": 0.01, "mode": "finetune", "top1": 40.0},
                                       {"protocol": "fewshot", "fraction": 0.1, "mode": "finetune", "top1": 60.0}])
    make_run(root, "c", "moco_v2", 70.0)
    make_run(root, "d", "simsiam", None, finished=False)
    return root


def test_best_gives_one_headline_row_per_run(runs):
    rows = {r.method: r for r in leaderboard(runs, "best")}
    assert set(rows) == {"simclr", "byol", "moco_v2", "simsiam"}
    assert (rows["simclr"].protocol, rows["simclr"].metric) == ("linear", 86.0)
    assert (rows["byol"].protocol, rows["byol"].metric) == ("knn k=200 T=0.07", 83.5)
    assert (rows["moco_v2"].protocol, rows["moco_v2"].metric) == ("monitor knn k=200", 70.0)
    assert rows["simsiam"].metric is None and rows["simsiam"].epochs == 200 and rows["simsiam"].batch == 256
    assert rows["simclr"].batch == 512 and rows["simclr"].wall_time_s == 60.0
    assert rows["simclr"].config_hash == "hash-a"


def test_all_gives_each_protocol_setting_once_and_sorts_best_first(runs):
    rows = leaderboard(runs, "all")
    simclr = sorted(r.protocol for r in rows if r.method == "simclr")
    assert simclr == ["knn k=20 T=0.07", "knn k=200 T=0.07", "linear", "monitor knn k=200"]
    monitor = [r.metric for r in rows if r.protocol == "monitor knn k=200"]
    assert monitor == sorted(monitor, reverse=True)
    fewshot = [r for r in leaderboard(runs, "fewshot")]
    assert {r.protocol for r in fewshot} == {"fewshot 1% (finetune)", "fewshot 10% (finetune)"}


def test_markdown_and_csv_from_the_command(runs, capsys):
    assert main(["results", str(runs), f"csv={runs / 'table.csv'}"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| method | backbone | data |") and "| simclr | resnet18 | cifar10 | 200 | 512 | linear " \
        "| 86.00 | 1.0 min | hash-a |" in out
    with open(runs / "table.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4 and {"method", "protocol", "metric", "wall_time_s", "config_hash"} <= set(table[0])
    assert to_markdown([]).count("\n") == 1  # header only


def test_results_of_a_missing_folder_is_one_line(tmp_path, capsys):
    assert main(["results", str(tmp_path / "nope")]) == 2
    assert main(["results", str(tmp_path), "protocol=top"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("error:") for e in err) and "protocol" in err[1]


def make_seed_run(root: Path, name: str, seed: int, knn: float, random_init: float, lr: float = 0.1) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"config_hash": f"hash-{name}", "method": "swav"}))
    (run / "config.yaml").write_text(f"method:\n  name: swav\noptimizer:\n  lr: {lr}\nseed: {seed}\n"
                                     f"hydra:\n  run:\n    dir: {run}\n")
    (run / "summary.json").write_text(json.dumps({
        "method": "swav", "backbone": "resnet18", "data": "fashion_mnist", "epochs": 2, "batch_size": 256,
        "config_hash": f"hash-{name}", "wall_time_s": 60.0 * seed, "knn_top1": knn,
        "knn_top1_random_init": random_init, "knn_k": 200}))
    return run


@pytest.fixture
def seed_runs(tmp_path):
    root = tmp_path / "sweep"
    make_seed_run(root, "s42", 42, 74.0, 72.0)
    make_seed_run(root, "s1", 1, 73.0, 74.0)
    make_seed_run(root, "s2", 2, 75.0, 73.0)
    make_seed_run(root, "other_lr", 42, 71.0, 72.0, lr=0.2)  # another recipe: its own row
    return root


def test_seeds_mean_folds_the_seeds_of_one_recipe(seed_runs):
    rows = over_seeds(leaderboard(seed_runs, "monitor"))
    assert [(r.seeds, r.runs) for r in rows] == [("1 2 42", 3), ("42", 1)]
    three, one = rows
    assert three.mean == pytest.approx(74.0) and three.std == pytest.approx(1.0)
    # gains against each run's own random init: +2, -1, +2
    assert three.gain_mean == pytest.approx(1.0) and three.gain_min == pytest.approx(-1.0)
    assert three.wall_time_s == pytest.approx(60.0 * 45 / 3)
    assert (one.mean, one.std, one.gain_mean) == (71.0, None, -1.0)
    assert three.recipe != one.recipe


def test_seeds_mean_from_the_command(seed_runs, capsys):
    assert main(["results", str(seed_runs), "seeds=mean", f"csv={seed_runs / 'seeds.csv'}"]) == 0
    out = capsys.readouterr().out
    assert "| swav | resnet18 | fashion_mnist | 2 | 256 | monitor knn k=200 | 1 2 42 | 74.00 | 1.00 | +1.00 | -1.00 |" \
        in out
    with open(seed_runs / "seeds.csv") as f:
        table = list(csv.DictReader(f))
    assert [t["seeds"] for t in table] == ["1 2 42", "42"]
    assert main(["results", str(seed_runs), "seeds=median"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "seeds" in err and "\n" not in err
