"""The evaluation commands end to end on a tiny trained run: eval knn|linear|finetune|fewshot, embed,
export and results, the kNN monitor's figure recomputed offline, health metrics and end-of-run plots."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from conftest import tiny

from ssl_zoo.cli import main

# 48 images / batch 8 = 6 steps an epoch: the epoch-end validation at step 6 writes best.ckpt, the run
# goes on to step 8 and validates once more at its end.
STEPS = ("trainer.max_steps=8", "data.num_samples=48", "logger=default", "monitor.tsne_samples=20",
         "monitor.plots=true")  # tiny runs turn the plots off; this run checks them


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_cli")
    run = root / "run"
    assert main(["train", *tiny("simclr", *STEPS), f"hydra.run.dir={run}"]) == 0
    return run


def metrics_at(run, step: int, key: str) -> float:
    with open(run / "metrics.csv") as f:
        values = [float(r[key]) for r in csv.DictReader(f) if r.get(key) and int(r["step"]) == step]
    assert values, f"{key} not logged at step {step}"
    return values[-1]


def eval_lines(run) -> list[dict]:
    return [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_eval_knn_on_best_ckpt_reproduces_the_monitor(run_dir, capsys):
    best = run_dir / "checkpoints" / "best.ckpt"
    ckpt = torch.load(best, weights_only=True, map_location="cpu")
    step = ckpt["global_step"]
    (logged,) = [float(state["current_score"]) for key, state in ckpt["callbacks"].items()
                 if "'monitor': 'val/knn_top1'" in key]  # the kNN monitor's figure that made it the best
    with open(run_dir / "metrics.csv") as f:
        assert logged in [float(r["val/knn_top1"]) for r in csv.DictReader(f) if r["val/knn_top1"]]
    assert main(["eval", "knn", f"ckpt={best}", "eval.match_monitor=true"]) == 0
    line = eval_lines(run_dir)[-1]
    assert line["protocol"] == "knn" and line["k"] == 5 and line["temperature"] == 0.1
    assert abs(line["top1"] - logged) <= 0.5
    run_json = json.loads((run_dir / "run.json").read_text())
    assert line["config_hash"] == run_json["config_hash"] and line["step"] == step and line["seed"] == 0
    assert line["data"] == "synthetic" and line["checkpoint"] == str(best.resolve())
    assert "kNN k=5" in capsys.readouterr().out


@pytest.mark.slow
def test_every_protocol_appends_its_result(run_dir):
    ckpt = str(run_dir / "checkpoints" / "last.ckpt")
    before = len(eval_lines(run_dir)) if (run_dir / "eval.jsonl").exists() else 0
    assert main(["eval", "knn", f"ckpt={ckpt}", "eval.k=[3,10]"]) == 0
    assert main(["eval", "linear", f"ckpt={ckpt}", "eval.epochs=2", "seed=1"]) == 0
    assert main(["eval", "linear", f"ckpt={ckpt}", "eval.epochs=1", "eval.augment=true"]) == 0
    assert main(["eval", "finetune", f"ckpt={ckpt}", "eval.epochs=1", "eval.batch_size=16"]) == 0
    assert main(["eval", "fewshot", f"ckpt={ckpt}", "eval.epochs=1", "eval.mode=linear"]) == 0
    assert main(["eval", "fewshot", f"ckpt={ckpt}", "eval.epochs=1", "eval.fractions=[0.25]"]) == 0
    lines = eval_lines(run_dir)[before:]
    assert [(r["protocol"], r.get("k"), r.get("fraction")) for r in lines] == [
        ("knn", 3, None), ("knn", 10, None), ("linear", None, None), ("linear", None, None),
        ("finetune", None, None), ("fewshot", None, 0.01), ("fewshot", None, 0.1), ("fewshot", None, 0.25)]
    for line in lines:
        assert 0.0 <= line["top1"] <= 100.0 and line["method"] == "simclr" and line["eval_config_hash"]
    assert lines[2]["seed"] == 1 and lines[2]["num_train"] == 48 and lines[2]["num_test"] == 32
    assert lines[5]["num_train"] == 6  # one image of each of the 6 classes at 1%


@pytest.mark.slow
def test_embed_writes_features_labels_and_indices(run_dir, tmp_path):
    ckpt = str(run_dir / "checkpoints" / "last.ckpt")
    assert main(["embed", f"ckpt={ckpt}", f"out={tmp_path / 'test.pt'}"]) == 0
    saved = torch.load(tmp_path / "test.pt", weights_only=True)
    assert saved["features"].shape == (32, 512) and saved["labels"].shape == (32,)
    assert torch.equal(saved["indices"], torch.arange(32))
    assert main(["embed", f"ckpt={ckpt}", f"out={tmp_path / 'train.npz'}", "eval.split=train"]) == 0
    arrays = np.load(tmp_path / "train.npz")
    assert arrays["features"].shape == (48, 512) and len(arrays["labels"]) == 48
    assert main(["embed", f"ckpt={ckpt}", f"out={tmp_path / 'f.npy'}", "data.num_test_samples=12"]) == 0
    assert np.load(tmp_path / "f.npy").shape == (12, 512) and len(np.load(tmp_path / "f.labels.npy")) == 12
    assert np.array_equal(np.load(tmp_path / "f.indices.npy"), np.arange(12))


@pytest.mark.slow
def test_run_logs_health_and_draws_plots(run_dir):
    for key in ("val/rankme", "val/alignment", "val/uniformity", "val/feature_std", "val/collapsed"):
        assert 0 <= abs(metrics_at(run_dir, 8, key)) < 1e6
    assert metrics_at(run_dir, 8, "val/collapsed") in (0.0, 1.0)
    for name in ("tsne", "curves"):
        png = run_dir / "plots" / f"{name}.png"
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert {"plots/tsne", "plots/curves"} <= set(events.Tags()["images"])


@pytest.mark.slow
def test_results_lists_the_run(run_dir, capsys):
    assert main(["results", str(run_dir.parent)]) == 0
    out = capsys.readouterr().out
    assert "| simclr | resnet18 | synthetic |" in out and (run_dir.parent / "results.csv").is_file()


BAD = [
    (["eval"], "protocol"),
    (["eval", "nope", "ckpt=x"], "protocol"),
    (["eval", "knn"], "ckpt"),
    (["eval", "knn", "ckpt=/no/such.ckpt"], "/no/such.ckpt"),
    (["eval", "knn", "ckpt=x", "eval.k=[0]"], "eval.k"),
    (["eval", "linear", "ckpt=x", "eval.lrr=1"], "eval.lrr"),
    (["eval", "knn", "ckpt=x", "data=nope"], "data='nope'"),
    (["embed", "ckpt=x"], "ckpt"),
]


@pytest.mark.parametrize("args,key", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_eval_input_is_one_line_naming_the_key(args, key, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and key in err[0], err


def test_embed_needs_an_output_file(run_dir, capsys):
    assert main(["embed", f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}"]) == 2
    assert "out=" in capsys.readouterr().err
