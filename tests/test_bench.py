"""The speed benchmark's pieces: its statistics, its arguments, the alternation of the two sides, the
lightly recipes, and a 2-step run of both sides. No assertion here depends on how fast anything ran."""

from __future__ import annotations

import math

import pytest
import torch

from ssl_zoo.bench import measure
from ssl_zoo.bench.config import parse_bench_args
from ssl_zoo.bench.measure import Block, SideResult, StepClock
from ssl_zoo.cli import main
from ssl_zoo.errors import ConfigError

TINY_BENCH = ["data=synthetic", "image_size=16", "batch_size=8", "steps=2", "rounds=1", "warmup=0", "workers=0",
              "precision=32-true", "data.num_samples=32", "data.num_test_samples=16", "data.val_batch_size=16"]


def test_side_result_rates_are_views_times_batch_over_the_median_step():
    res = SideResult(batch_size=8, views=2, blocks=[Block([1.0, 3.0], [0.5, 0.5], 100), Block([2.0], [1.0], 300)])
    assert res.num_steps == 3 and res.median_step_s == 2.0
    assert res.samples_per_s == 4.0 and res.images_per_s == 8.0
    assert res.data_wait == pytest.approx(2.0 / 6.0)
    assert res.peak_bytes == 300


def test_side_result_without_steps_reads_nan_not_zero():
    res = SideResult(batch_size=8, views=2)
    assert math.isnan(res.images_per_s) and math.isnan(res.data_wait)
    assert math.isnan(measure.ratio(1.0, float("nan")))


def test_step_clock_drops_warmup_and_splits_the_wait_from_the_step(monkeypatch):
    ticks = iter([0.0,            # start
                  1.0, 3.0,       # step 0 (warm-up): ready at 1, done at 3
                  3.5, 6.0,       # step 1: waited 0.5 s, took 3 s
                  7.0, 8.0])      # step 2: waited 1 s, took 2 s
    monkeypatch.setattr(measure.time, "perf_counter", lambda: next(ticks))
    clock = StepClock(torch.device("cpu"), warmup=1)
    clock.start()
    for _ in range(3):
        clock.batch_ready()
        clock.step_done()
    assert clock.step_s == [3.0, 2.0]
    assert clock.wait_s == [0.5, 1.0]


def test_rss_peak_is_a_positive_byte_count():
    peak = measure.PeakMemory(torch.device("cpu"))
    peak.reset()
    assert peak.peak_bytes() > 1 << 20


def test_arguments_are_typed_and_training_overrides_pass_through():
    bench, overrides = parse_bench_args(["batch_size=64", "precision=auto,32-true", "sweep=all", "workers=null",
                                         "cifar_stem=true", "methods=simclr", "method.temperature=0.5"])
    assert bench.batch_size == 64 and bench.precision == ["auto", "32-true"] and bench.workers is None
    assert bench.sweep == ["batch", "size", "views", "knn", "accuracy"] and bench.cifar_stem is True
    assert overrides == ["method.temperature=0.5"]


def test_method_overrides_reach_only_the_methods_that_have_the_key():
    from ssl_zoo.bench.ours import check_method_overrides, method_overrides_for

    overrides = ["method.proj_hidden_dim=32", "method.queue_size=64", "data.num_samples=32"]
    assert method_overrides_for("simclr", overrides) == ["method.proj_hidden_dim=32", "data.num_samples=32"]
    assert method_overrides_for("moco_v2", overrides) == overrides
    check_method_overrides(["simclr", "moco_v2"], overrides)
    with pytest.raises(ConfigError) as e:
        check_method_overrides(["simclr", "byol"], ["method.proj_hiden_dim=32"])
    assert e.value.key == "method.proj_hiden_dim"


@pytest.mark.parametrize("arg,key", [("steps=0", "steps"), ("batch_size=abc", "batch_size"), ("devic=cpu", "devic"),
                                     ("methods=nope", "methods"), ("sweep=speed", "sweep"), ("device=tpu", "device"),
                                     ("accuracy_epochs=0", "accuracy_epochs"), ("sides=ours sweep=accuracy", "sides")])
def test_bad_argument_names_its_key(arg, key):
    with pytest.raises(ConfigError) as e:
        parse_bench_args(arg.split())
    assert e.value.key == key


def test_bench_cli_error_is_one_line_with_exit_2(capsys):
    assert main(["bench", "stepz=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "stepz" in err[0]


def test_rows_alternate_the_sides_and_auto_is_measured_once_where_it_is_fp32(monkeypatch):
    from ssl_zoo.bench import lightly_loop, ours, runner

    order = []
    monkeypatch.setattr(ours, "run_block", lambda cfg, device, warmup: order.append("ours") or
                        Block([2.0, 2.0], [0.0, 0.0], 1))
    monkeypatch.setattr(lightly_loop, "run_block", lambda *a: order.append("lightly") or
                        Block([1.0, 1.0], [0.5, 0.5], 1))
    monkeypatch.setattr("ssl_zoo.precision.cpu_has_native_bf16", lambda: False)
    bench, overrides = parse_bench_args(["methods=simclr", "rounds=3", "precision=auto,32-true", "data=synthetic",
                                         "image_size=16", "batch_size=8", "data.num_samples=32",
                                         "data.num_test_samples=16", "device=cpu"])
    report = runner.run_bench(bench, overrides, log=lambda m: None)
    assert order == ["ours", "lightly", "lightly", "ours", "ours", "lightly"]
    rows = [line for line in report.splitlines() if line.startswith("| simclr")]
    assert len(rows) == 2  # one row per side: auto resolved to 32-true, measured once
    assert "auto (32-true)" in rows[0] and "**0.50x**" in rows[0]


# --- the lightly side -----------------------------------------------------------------------------


def _tiny_cfg(method: str, *extra: str):
    from ssl_zoo.bench.ours import compose_run

    bench, overrides = parse_bench_args([*TINY_BENCH, f"methods={method}", *extra])
    return compose_run(method, bench, 8, 16, "32-true", torch.device("cpu"), overrides)


HEADS = {"simclr": ["method.proj_hidden_dim=32", "method.proj_output_dim=16"],
         "byol": ["method.proj_hidden_dim=32", "method.proj_output_dim=16", "method.pred_hidden_dim=32"],
         "moco_v2": ["method.proj_hidden_dim=32", "method.proj_output_dim=16", "method.queue_size=64"],
         "dino": ["method.out_dim=32", "method.hidden_dim=32", "method.bottleneck_dim=16"]}


@pytest.mark.parametrize("method", list(HEADS))
def test_lightly_recipe_matches_our_views_and_trains_a_step(method):
    pytest.importorskip("lightly")
    from PIL import Image

    from ssl_zoo.bench.lightly_loop import RECIPES, build_optimizer
    from ssl_zoo.methods import METHODS

    if method not in METHODS:
        pytest.skip(f"{method} is not registered")
    cfg = _tiny_cfg(method, *HEADS[method])
    recipe = RECIPES[method](cfg, 4)
    ours_views = [int(g.num) for g in cfg.augmentation.crops]
    views = recipe.transform(Image.new("RGB", (28, 28), (120, 60, 30)))
    assert len(views) == sum(ours_views)
    assert views[0].shape == (3, 16, 16)
    batch = [torch.stack([v] * 4) for v in views]
    optimizer = build_optimizer(cfg, recipe.model)
    before = [p.detach().clone() for p in recipe.model.parameters() if p.requires_grad]
    loss = recipe.loss(batch, 0)
    loss.backward()
    recipe.after_backward(0)
    optimizer.step()
    assert torch.isfinite(loss)
    after = [p for p in recipe.model.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(after, before))


def test_lightly_knn_vote_agrees_with_ours_on_separated_clusters():
    pytest.importorskip("lightly")
    from ssl_zoo.bench.knn_cost import lightly_knn_top1
    from ssl_zoo.eval.knn import knn_accuracy

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 16, generator=g)
    bank_labels = torch.arange(200) % 5
    test_labels = torch.randint(0, 5, (60,), generator=g)
    bank = centres[bank_labels] + torch.randn(200, 16, generator=g)
    test = centres[test_labels] + torch.randn(60, 16, generator=g)
    ours = knn_accuracy(bank, bank_labels, test, test_labels, 5, k=20, temperature=0.1)[1]
    theirs = lightly_knn_top1(bank, bank_labels, test, test_labels, 5, k=20, temperature=0.1, batch_size=16)
    assert ours == pytest.approx(theirs, abs=1e-4)
    assert 0 < ours < 100  # the noise makes some test points ambiguous, so the comparison means something


@pytest.mark.slow
def test_two_step_run_of_both_sides_prints_a_table(tmp_path, monkeypatch):
    pytest.importorskip("lightly")
    from ssl_zoo.bench import run_bench

    monkeypatch.chdir(tmp_path)
    bench, overrides = parse_bench_args([*TINY_BENCH, "methods=simclr", f"out={tmp_path / 'speed.md'}",
                                         *HEADS["simclr"]])
    report = run_bench(bench, overrides, log=lambda m: None)
    rows = [line.split("|") for line in report.splitlines() if line.startswith("| simclr")]
    assert [r[7].strip() for r in rows] == ["ours", "lightly"]
    for r in rows:
        assert int(r[8]) == 2 and float(r[9].replace(",", "")) > 0  # 2 measured steps, a finite rate
    for r in rows:  # both sides train the same networks: one FLOP count, an MFU each
        assert r[13] == rows[0][13] and float(r[13]) > 0 and 0 < float(r[14].strip().rstrip("%")) < 100
    assert rows[0][15].strip().startswith("**") and (tmp_path / "speed.md").read_text() == report
    assert "measured matmul peaks: float32" in report
    assert not (tmp_path / "outputs").exists()  # the run directories were temporary


def test_memory_bench_extrapolates_each_kind_from_its_own_largest_measured_batch():
    from ssl_zoo.bench.memory import predicted_step_mib

    rows = [{"batch": 256, "chunk": None, "step_mib": 100.0}, {"batch": 1024, "chunk": None, "step_mib": 380.0},
            {"batch": 1024, "chunk": 256, "step_mib": 50.0}, {"batch": 2048, "chunk": None, "error": "killed"}]
    assert predicted_step_mib(rows, 4096, None) == pytest.approx(380.0 * 4)
    assert predicted_step_mib(rows, 4096, 256) == pytest.approx(50.0 * 4)
    assert predicted_step_mib(rows, 4096, 128) is None  # never measured: run it


def test_small_maps_benchmark_times_both_encoders_at_each_precision(monkeypatch):
    from ssl_zoo.bench import small_maps

    monkeypatch.setattr(small_maps, "cpu_has_native_bf16", lambda: True)
    rates = small_maps.measure(batch=4, rounds=1)
    assert set(rates) == {"torch fp32", "small maps fp32", "torch bf16", "small maps bf16"}
    assert all(rate > 0 for rate in rates.values())


def test_sinkhorn_benchmark_times_both_domains_and_they_agree():
    from ssl_zoo.bench import sinkhorn

    result = sinkhorn.measure(rows=64, rounds=1, prototypes=30)
    assert result["exp domain"] > 0 and result["log domain"] > 0
    assert result["max difference"] < 1e-5


def test_queue_loss_benchmark_times_both_forms_and_they_agree():
    from ssl_zoo.bench import queue_loss

    result = queue_loss.measure(batch=8, queue_size=64, rounds=1)
    for precision, tol in (("fp32", 1e-5), ("bf16", 5e-2)):
        assert result[f"plain {precision}"] > 0 and result[f"info_nce {precision}"] > 0
        assert result[f"plain {precision} error"] < tol and result[f"info_nce {precision} error"] < tol


def test_time_alternated_warms_each_call_up_then_alternates_them():
    from ssl_zoo.bench.measure import time_alternated

    order: list[str] = []
    seconds = time_alternated({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, rounds=2)
    assert order == ["a", "b"] * 3 and set(seconds) == {"a", "b"}
    order.clear()
    time_alternated({"a": lambda: order.append("a")}, rounds=2, warmup=False)
    assert order == ["a", "a"]


@pytest.mark.slow
def test_accuracy_sweep_trains_both_sides_for_the_same_steps_and_reads_their_knn(monkeypatch):
    pytest.importorskip("lightly")
    from ssl_zoo.bench import accuracy, lightly_loop

    warmups = []
    train_lightly = lightly_loop.train_lightly
    monkeypatch.setattr(lightly_loop, "train_lightly", lambda *a, **kw: warmups.append((a[6], kw)) or
                        train_lightly(*a, **kw))
    bench, overrides = parse_bench_args([*TINY_BENCH, "methods=simclr", "sweep=accuracy", "accuracy_epochs=2",
                                         "scheduler.warmup_steps=3", "monitor.knn_k=5", *HEADS["simclr"]])
    table = accuracy.accuracy_table(bench, torch.device("cpu"), overrides, log=lambda m: None)
    row = [c.strip() for c in table.splitlines()[2].split("|")[1:-1]]
    assert row[:4] == ["simclr", "32-true", "2", "8"]  # 2 epochs of 32 images in batches of 8
    assert warmups == [(8, {"lr_warmup_steps": 3})]  # lightly trained as many steps, warmed up as ours
    for cell in row[4:6] + row[7:9]:
        assert 0.0 <= float(cell) <= 100.0
    assert row[6] == f"**{float(row[4]) - float(row[5]):+.2f}**"


# --- MFU ------------------------------------------------------------------------------------------


def test_convolutions_count_only_the_taps_that_read_the_input():
    """A tap on the zero padding multiplies nothing: a 3x3 convolution (padding 1) of a 1 x 1 map reads 1
    tap of 9, of a 2 x 2 map 16 of 36; larger maps lose only their border's."""
    from ssl_zoo.bench.flops import valid_taps

    assert valid_taps(1, 3, 1, 1) == (1, 3)
    assert valid_taps(2, 3, 1, 1) == (4, 6)
    assert valid_taps(2, 3, 2, 1) == (2, 3)              # stride 2: one output, reading pixels 0 and 1
    assert valid_taps(32, 7, 2, 3) == (16 * 7 - 3 - 1 - 2, 16 * 7)  # the ImageNet stem at 32 px: 3, 1 and 2 taps off
    assert valid_taps(8, 1, 1, 0) == (8, 8)              # no padding, nothing skipped


def test_step_flops_leave_the_padding_taps_out_of_the_convolutions():
    from torch.utils.flop_counter import FlopCounterMode

    from ssl_zoo.bench.flops import plain_convolutions, step_flops
    from ssl_zoo.bench.ours import compose_run
    from ssl_zoo.methods import METHODS

    bench, overrides = parse_bench_args([*TINY_BENCH, "methods=simclr", *HEADS["simclr"]])
    cfg = compose_run("simclr", bench, 8, 16, "32-true", torch.device("cpu"), overrides)
    torch.manual_seed(0)
    model = METHODS["simclr"](cfg, num_train=65536).train()
    counter = FlopCounterMode(display=False)
    with counter, plain_convolutions():
        model.step([torch.randn(8, 3, 16, 16) for _ in range(2)], torch.arange(8)).loss.backward()
    every_tap = counter.get_total_flops()
    counted = step_flops(cfg, torch.device("cpu"))
    # a 16 px ResNet-18 reaches 1 x 1 maps in layer3: most of its later taps are padding (28.7% kept)
    assert 0.2 * every_tap < counted < 0.4 * every_tap


def test_step_flops_grow_with_the_batch_and_mfu_is_flops_per_second_over_the_peak():
    from ssl_zoo.bench.flops import matmul_peak_flops, mfu, row_dtype, step_flops
    from ssl_zoo.bench.ours import compose_run

    bench, overrides = parse_bench_args([*TINY_BENCH, "methods=simclr", *HEADS["simclr"]])
    flops = {b: step_flops(compose_run("simclr", bench, b, 16, "32-true", torch.device("cpu"), overrides),
                           torch.device("cpu")) for b in (8, 16)}
    assert flops[8] > 0 and 1.9 < flops[16] / flops[8] < 2.1  # per-sample networks; the B x B loss is small
    assert mfu(10**9, 0.5, 4e9) == 0.5
    assert math.isnan(mfu(10**9, float("nan"), 4e9)) and math.isnan(mfu(0, 0.5, 4e9))
    assert row_dtype("bf16-mixed") == torch.bfloat16 and row_dtype("32-true") == torch.float32
    peak = matmul_peak_flops(torch.device("cpu"), torch.float32, n=64, repeats=2)
    assert math.isfinite(peak) and peak > 0
