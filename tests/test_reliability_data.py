"""Bad data never crashes an epoch: unreadable image files are skipped, counted and listed; images of any
PIL mode and size are served in the mode asked for; empty and label-less folders are one clear line."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny
from PIL import Image
from torchvision import transforms as T

from ssl_zoo.cli import main
from ssl_zoo.data import UNREADABLE_FILE, DataConfig, SSLDataModule, build_datasets, load_image
from ssl_zoo.errors import DataError

MONITOR_OFF = ("monitor.knn=false", "monitor.probe=false", "monitor.health=false", "monitor.plots=false")


def folder_run(root: Path, *extra: str) -> list[str]:
    """A tiny simclr run on the unlabelled image folder ``root`` (the PIL view backend reads files)."""
    synthetic_only = ("data=", "data.num_samples=", "data.num_test_samples=")
    return [*(o for o in tiny("simclr") if not o.startswith(synthetic_only)), "data=imagefolder",
            f"data.root={root}", "data.labelled=false", "data.num_classes=null", *extra]


def good_image(seed: int, size: tuple[int, int] = (12, 10), mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def write_bad_files(folder: Path) -> list[Path]:
    """Four kinds of undecodable file, named so that they sort between good ones."""
    folder.mkdir(parents=True, exist_ok=True)
    whole = png_bytes(good_image(99, (32, 32)))
    bad = {"b1_random.png": np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8).tobytes(),
           "b2_truncated.png": whole[: len(whole) // 2],
           "b3_empty.jpg": b"",
           "b4_text.jpeg": b"this is not an image\n"}
    for name, content in bad.items():
        (folder / name).write_bytes(content)
    return sorted(folder / name for name in bad)


def write_good_files(folder: Path, count: int, prefix: str = "a") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(count):
        path = folder / f"{prefix}{k}.png"
        good_image(k, (10 + k, 8 + 2 * k)).save(path)  # sizes differ on purpose
        paths.append(path)
    return paths


def views(size: int = 8):
    crop = T.Compose([T.RandomResizedCrop(size, scale=(0.3, 1.0), antialias=True), T.ToTensor()])
    return lambda image: [crop(image), crop(image)]


def eval_view(size: int = 8):
    return T.Compose([T.Resize(size, antialias=True), T.CenterCrop(size), T.ToTensor()])


def unlabelled(root: Path, channels: int = 3, **kw) -> DataConfig:
    settings = {"batch_size": 4, "num_workers": 0, **kw}
    cfg = DataConfig(name="imagefolder", root=str(root), labelled=False, image_size=8, channels=channels,
                     mean=[0.5] * channels, std=[0.25] * channels, num_classes=None, **settings)
    cfg.validate()
    return cfg


# --- modes and sizes ---------------------------------------------------------------------------------
def write_mixed_modes(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    base = good_image(3, (14, 9))
    palette = base.convert("P")
    transparent = palette.copy()
    transparent.info["transparency"] = 0
    grey16 = Image.fromarray(np.full((7, 11), 32768, dtype=np.uint16))  # mid grey at 16 bits
    files = {"1": (base.convert("1"), "png"), "L": (base.convert("L"), "png"), "LA": (base.convert("LA"), "png"),
             "P": (palette, "png"), "P_transparent": (transparent, "png"), "RGB": (base, "jpg"),
             "RGBA": (base.convert("RGBA"), "png"), "CMYK": (base.convert("CMYK"), "jpg"),
             "I16": (grey16, "png"), "big": (good_image(4, (300, 40)), "bmp")}
    out = {}
    for name, (image, ext) in files.items():
        path = folder / f"{name}.{ext}"
        image.save(path, transparency=0) if name == "P_transparent" else image.save(path)
        out[name] = path
    return out


@pytest.mark.parametrize("channels", [1, 3])
def test_images_of_every_mode_and_size_are_served_in_the_mode_asked_for(channels, tmp_path):
    files = write_mixed_modes(tmp_path / "mixed")
    mode = "L" if channels == 1 else "RGB"
    for name, path in files.items():
        image = load_image(path, mode)
        assert image.mode == mode, name
    grey = np.asarray(load_image(files["I16"], "L"))
    assert abs(int(grey.mean()) - 128) <= 1  # 16-bit mid grey scaled to 8 bits, not clipped to white
    dm = SSLDataModule(unlabelled(tmp_path / "mixed", channels, batch_size=5), views(), eval_view(), seed=0)
    batches = list(dm.train_dataloader())
    assert len(batches) == 2 and len(dm.unreadable) == 0
    for (v1, v2), labels, _ in batches:
        assert v1.shape == v2.shape == (5, channels, 8, 8) and labels.tolist() == [-1] * 5


# --- unreadable files ------------------------------------------------------------------------------
@pytest.mark.parametrize("num_workers", [0, 2])
def test_unreadable_files_are_replaced_by_the_next_readable_one_counted_and_listed(num_workers, tmp_path):
    good = write_good_files(tmp_path / "images", 6)
    bad = write_bad_files(tmp_path / "images")
    cfg = unlabelled(tmp_path / "images", num_workers=num_workers, persistent_workers=False)
    dm = SSLDataModule(cfg, views(), eval_view(), seed=0)
    listing = tmp_path / "run" / UNREADABLE_FILE
    listing.parent.mkdir()
    dm.unreadable.attach(listing)
    assert dm.train_size == 10  # bad files are found by decoding, not by their names
    paths = dm.splits.train.paths
    readable = {str(p) for p in good}
    for i in range(len(paths)):  # the stand-in is the next readable file in path order, with its label
        image, label = dm.splits.train[i]
        j = next(k % len(paths) for k in range(i, i + len(paths)) if paths[k % len(paths)] in readable)
        assert np.array_equal(np.asarray(image), np.asarray(load_image(paths[j], "RGB"))) and label == -1

    epochs = []
    for epoch in range(2):
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == 10 // 4 and all(b[0][0].shape == (4, 3, 8, 8) for b in batches)
        epochs.append(torch.cat([b[0][0] for b in batches]))
    again = dm.train_dataloader()
    again.sampler.set_epoch(1)
    assert torch.equal(torch.cat([b[0][0] for b in again]), epochs[1])  # replacements are deterministic

    assert dm.unreadable.paths() == [str(p) for p in bad]  # counted once each, whichever process met them
    lines = listing.read_text().splitlines()
    assert {line.split("\t")[0] for line in lines} == {str(p) for p in bad}
    assert all("\t" in line and line.split("\t")[1] for line in lines)  # each with its error


def test_a_folder_whose_files_are_all_unreadable_is_one_data_error_at_setup(tmp_path):
    write_bad_files(tmp_path / "broken")
    dm = SSLDataModule(unlabelled(tmp_path / "broken"), views(), eval_view(), seed=0)
    with pytest.raises(DataError, match="none of the 4 image files") as info:
        dm.setup("fit")
    assert "\n" not in str(info.value)


def test_labelled_folders_skip_unreadable_files_in_the_evaluation_splits_too(tmp_path):
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            write_good_files(tmp_path / split / cls, 3)
    (bad,) = write_bad_files(tmp_path / "val" / "dog")[:1]
    cfg = DataConfig(name="imagefolder", root=str(tmp_path / "train"), val_root=str(tmp_path / "val"), image_size=8,
                     channels=3, mean=[0.5] * 3, std=[0.25] * 3, num_classes=2, batch_size=4, num_workers=0)
    cfg.validate()
    dm = SSLDataModule(cfg, views(), eval_view(), seed=0)
    bank, test = dm.val_dataloader()
    labels = torch.cat([y for _, y in test])
    assert len(labels) == len(build_datasets(cfg).test) and str(bad) in dm.unreadable.paths()
    assert labels.tolist().count(1) >= 3  # the stand-ins of dog's broken files are dogs (their own labels)


# --- whole runs from the command line ------------------------------------------------------------------
@pytest.fixture(scope="module")
def unlabelled_run(tmp_path_factory):
    """A 4-step run on an unlabelled folder holding four broken files; returns (cwd, run dir)."""
    cwd = tmp_path_factory.mktemp("unlabelled")
    write_good_files(cwd / "images", 8)
    write_bad_files(cwd / "images")
    overrides = folder_run(cwd / "images", "data.batch_size=4", "trainer.max_steps=4", *MONITOR_OFF)
    result = subprocess.run([sys.executable, "-m", "ssl_zoo.cli", "train", *overrides], cwd=cwd,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = [p.parent for p in cwd.glob("outputs/*/*/summary.json")]
    return cwd, run_dir, result


@pytest.mark.slow
def test_a_run_over_broken_files_finishes_and_lists_them_in_the_run_directory_and_log(unlabelled_run):
    cwd, run_dir, result = unlabelled_run
    listed = {line.split("\t")[0] for line in (run_dir / UNREADABLE_FILE).read_text().splitlines()}
    assert listed == {str(p) for p in sorted((cwd / "images").glob("b*"))}
    log = (run_dir / "cli.log").read_text()
    assert log.count("skipped unreadable image") >= 1 and "unreadable image file(s) were skipped" in log
    assert "the kNN monitor, the online probe and the representation health checks are off" in log
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4


@pytest.mark.slow
def test_eval_of_an_unlabelled_run_needs_labels_and_says_so_in_one_line(unlabelled_run, capsys):
    _, run_dir, _ = unlabelled_run
    assert main(["eval", "knn", f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "evaluation needs labels" in err[0], err
    assert "data.labelled=true" in err[0]


def test_an_empty_or_missing_image_folder_is_one_line_before_any_run_directory(in_tmp, capsys):
    (in_tmp / "empty" / "sub").mkdir(parents=True)
    (in_tmp / "empty" / "notes.txt").write_text("no images here")
    for root in ("empty", "missing"):
        code = main(["train", *folder_run(in_tmp / root)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and "data.root=" in err[0], err
    assert not (in_tmp / "outputs").exists()
