"""``ssl-zoo export``: the backbone's weights load with strict=True into timm / torchvision models built as
the printed lines say, and give the same features as the trained backbone."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from ssl_zoo.backbones import build_backbone
from ssl_zoo.cli import compose, main
from ssl_zoo.errors import ConfigError
from ssl_zoo.eval.export import export_to_file

BASE = ["method=simclr", "data=synthetic", "data.image_size=16"]


def fake_checkpoint(path, *overrides: str):
    """A checkpoint as ``ssl-zoo train`` writes it, with random weights and batch-norm statistics."""
    cfg = compose([*BASE, *overrides])
    backbone, _ = build_backbone(cfg.backbone, cfg.data.image_size, cfg.data.channels)
    g = torch.Generator().manual_seed(0)
    state = {}
    for key, value in backbone.state_dict().items():
        if value.is_floating_point():
            value = torch.randn(value.shape, generator=g) * 0.1 + (1.0 if key.endswith("running_var") else 0.0)
            value = value.abs() if key.endswith("running_var") else value
        state[key] = value
    backbone.load_state_dict(state)
    ckpt = {"state_dict": {f"backbone.{k}": v for k, v in state.items()},
            "hyper_parameters": {"cfg": OmegaConf.to_container(cfg, resolve=True)}, "global_step": 3, "epoch": 0}
    torch.save(ckpt, path)
    return backbone.eval(), cfg


def load_as_printed(snippet: str) -> torch.nn.Module:
    namespace: dict = {}
    exec(snippet, namespace)  # the lines the command prints, run as they are
    return namespace["model"].eval()


CASES = [
    ("torchvision", []),                                          # CIFAR stem (16 px)
    ("timm", []),
    ("torchvision", ["data.channels=1", "data.mean=[0.5]", "data.std=[0.25]", "backbone.cifar_stem=false"]),
    ("timm", ["data.channels=1", "data.mean=[0.5]", "data.std=[0.25]", "backbone.cifar_stem=false"]),
    ("timm", ["backbone=vit_tiny", "backbone.patch_size=4"]),
]


@pytest.mark.parametrize("fmt,overrides", CASES, ids=["tv-cifar-stem", "timm-cifar-stem", "tv-grey", "timm-grey",
                                                      "timm-vit"])
def test_export_loads_strictly_and_gives_the_same_features(fmt, overrides, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ours, cfg = fake_checkpoint(tmp_path / "run.ckpt", *overrides)
    snippet = export_to_file(str(tmp_path / "run.ckpt"), "backbone.pt", fmt)
    assert "load_state_dict" in snippet
    model = load_as_printed(snippet)  # strict=True is load_state_dict's default
    x = torch.randn(3, cfg.data.channels, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ours(x), rtol=1e-5, atol=1e-5)
    saved = torch.load("backbone.pt", weights_only=True)
    assert not any(k.startswith("backbone.") for k in saved)


def test_vit_cannot_go_to_torchvision(tmp_path):
    fake_checkpoint(tmp_path / "run.ckpt", "backbone=vit_tiny", "backbone.patch_size=4")
    with pytest.raises(ConfigError, match="format"):
        export_to_file(str(tmp_path / "run.ckpt"), str(tmp_path / "b.pt"), "torchvision")


def test_export_command_writes_the_file_and_errors_in_one_line(tmp_path, capsys):
    fake_checkpoint(tmp_path / "run.ckpt")
    assert main(["export", f"ckpt={tmp_path / 'run.ckpt'}", f"out={tmp_path / 'b.pt'}"]) == 0
    assert (tmp_path / "b.pt").is_file() and "torchvision.models.resnet18()" in capsys.readouterr().out
    assert main(["export", f"ckpt={tmp_path / 'missing.ckpt'}", f"out={tmp_path / 'c.pt'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "missing.ckpt" in err[0]
    assert main(["export", f"ckpt={tmp_path / 'run.ckpt'}", f"out={tmp_path / 'c.pt'}", "format=onnx"]) == 2
    assert "format" in capsys.readouterr().err
