"""``ssl-zoo export``: the trained backbone's weights alone, loadable by timm or torchvision.

The file is a plain ``state_dict`` (``torch.save``; load it with ``weights_only=True``) with the keys of
the evaluated backbone module (``backbone.*`` of the checkpoint, or DINO's teacher ``teacher.encoder.0.*``;
:meth:`Method.eval_backbone_prefix`), prefix removed. Loading it:

ResNet, torchvision::

    import torch, torch.nn as nn, torchvision
    model = torchvision.models.resnet18()            # resnet34 / resnet50 alike
    model.fc = nn.Identity()
    # CIFAR stem only (images <= 64 px, or backbone.cifar_stem=true); C = data.channels:
    model.conv1 = nn.Conv2d(C, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    # 1-channel data with the standard stem: model.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    model.load_state_dict(torch.load("backbone.pt", weights_only=True))

ResNet, timm (same key names; the stem is swapped as above for the CIFAR stem)::

    model = timm.create_model("resnet18", num_classes=0, in_chans=C)

ViT (timm)::

    model = timm.create_model("vit_small_patch16_224", num_classes=0, in_chans=C,
                              img_size=data.image_size, patch_size=backbone.patch_size)

The command prints the exact lines for the checkpoint at hand.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from ssl_zoo.backbones import uses_cifar_stem
from ssl_zoo.backbones.config import RESNETS, VITS, BackboneConfig
from ssl_zoo.errors import CheckpointError, ConfigError

FORMATS = ("timm", "torchvision")


def backbone_state_dict(ckpt: dict[str, Any], prefix: str = "backbone.") -> dict[str, Tensor]:
    """The ``prefix*`` tensors of a checkpoint (the evaluated backbone's), prefix removed (and
    ``torch.compile``'s ``_orig_mod.``)."""
    out = {}
    for key, value in ckpt["state_dict"].items():
        if key.startswith(prefix):
            name = key[len(prefix):].replace("_orig_mod.", "")
            out[name] = value.detach().clone().contiguous()  # contiguous: channels_last weights load anywhere
    return out


def _backbone_cfg(cfg: DictConfig) -> BackboneConfig:
    from omegaconf import OmegaConf

    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(BackboneConfig), cfg.backbone))


def timm_name(cfg: DictConfig) -> str:
    bb = _backbone_cfg(cfg)
    return VITS.get(bb.name) or (bb.name if bb.name in RESNETS else bb.model_name)


def loading_snippet(cfg: DictConfig, fmt: str, file: str) -> str:
    """The Python lines that load the exported file for this checkpoint's backbone."""
    bb, data = _backbone_cfg(cfg), cfg.data
    c, lines = int(data.channels), []
    if fmt == "torchvision":
        lines += ["import torch, torch.nn as nn, torchvision",
                  f"model = torchvision.models.{bb.name}()", "model.fc = nn.Identity()"]
    else:
        extra = ""
        if bb.name in VITS or "vit" in (bb.model_name or ""):
            extra = f", img_size={data.image_size}, patch_size={bb.patch_size}"
        extra += "".join(f", {k}={v!r}" for k, v in dict(bb.kwargs).items())
        lines += ["import torch, torch.nn as nn, timm",
                  f"model = timm.create_model({timm_name(cfg)!r}, num_classes=0, in_chans={c}{extra})"]
    if bb.name in RESNETS and uses_cifar_stem(bb, int(data.image_size)):
        lines += [f"model.conv1 = nn.Conv2d({c}, 64, kernel_size=3, stride=1, padding=1, bias=False)",
                  "model.maxpool = nn.Identity()"]
    elif fmt == "torchvision" and c != 3:
        lines += [f"model.conv1 = nn.Conv2d({c}, 64, kernel_size=7, stride=2, padding=3, bias=False)"]
    lines.append(f"model.load_state_dict(torch.load({file!r}, weights_only=True))")
    return "\n".join(lines)


def build_target(cfg: DictConfig, fmt: str) -> nn.Module:
    """The timm or torchvision model the exported weights are meant for, built as :func:`loading_snippet`
    writes it (used to verify an export before it is written)."""
    bb, data = _backbone_cfg(cfg), cfg.data
    c = int(data.channels)
    if fmt == "torchvision":
        import torchvision

        model = getattr(torchvision.models, bb.name)()
        model.fc = nn.Identity()
    else:
        import timm

        kwargs = dict(bb.kwargs)
        if bb.name in VITS or "vit" in (bb.model_name or ""):
            kwargs.update(img_size=int(data.image_size), patch_size=bb.patch_size)
        model = timm.create_model(timm_name(cfg), num_classes=0, in_chans=c, **kwargs)
    if bb.name in RESNETS and uses_cifar_stem(bb, int(data.image_size)):
        model.conv1 = nn.Conv2d(c, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif fmt == "torchvision" and c != 3:
        model.conv1 = nn.Conv2d(c, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def export_backbone(ckpt: dict[str, Any], cfg: DictConfig, fmt: str) -> tuple[dict[str, Tensor], nn.Module]:
    """The backbone weights, checked to load with ``strict=True`` into the ``fmt`` model; returns both."""
    bb = _backbone_cfg(cfg)
    if fmt not in FORMATS:
        raise ConfigError("format", fmt, "one of: " + ", ".join(FORMATS))
    if fmt == "torchvision" and bb.name not in RESNETS:
        raise ConfigError("format", fmt, f"timm for backbone={bb.name}", "torchvision only has the ResNets here")
    from ssl_zoo.methods import METHODS  # here: export's other helpers need no method classes

    method = METHODS.get(cfg.method.name)
    state = backbone_state_dict(ckpt, method.eval_backbone_prefix(cfg.method) if method else "backbone.")
    target = build_target(cfg, fmt)
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ConfigError("format", fmt, "a format whose model has the backbone's keys",
                          str(e).splitlines()[0] + " ...") from None
    return state, target.eval()


def default_format(cfg: DictConfig) -> str:
    """torchvision for the ResNets (the backbone's own key names), timm for everything else."""
    return "torchvision" if _backbone_cfg(cfg).name in RESNETS else "timm"


@torch.no_grad()
def check_same_features(state: dict[str, Tensor], cfg: DictConfig, target: nn.Module) -> float:
    """Largest absolute difference between the trained backbone and ``target`` on a fixed random batch;
    raises unless they agree (both in eval mode, fp32)."""
    from ssl_zoo.backbones import build_backbone

    backbone, _ = build_backbone(cfg.backbone, int(cfg.data.image_size), int(cfg.data.channels))
    backbone.load_state_dict(state, strict=True)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, int(cfg.data.channels), int(cfg.data.image_size), int(cfg.data.image_size),
                    generator=generator)
    ours, theirs = backbone.eval()(x), target.eval()(x)
    diff = (ours - theirs).abs().max().item() if ours.shape == theirs.shape else float("inf")
    if not diff <= 1e-4 * max(1.0, ours.abs().max().item()):
        raise CheckpointError(f"the exported backbone's features differ from the trained one's (max |diff| {diff:.3g}):"
                              " this backbone cannot be exported to that format")
    return diff


def export_to_file(ckpt_path: str, out: str, fmt: str | None = None) -> str:
    """Export the backbone of the checkpoint at ``ckpt_path`` to ``out`` (checked: strict load into the
    ``fmt`` model, same features); returns the Python lines that load it."""
    from ssl_zoo.checkpoint_io import atomic_torch_save
    from ssl_zoo.eval.features import load_checkpoint, run_config

    ckpt = load_checkpoint(ckpt_path)
    cfg = run_config(ckpt)
    fmt = fmt or default_format(cfg)
    state, target = export_backbone(ckpt, cfg, fmt)
    check_same_features(state, cfg, target)
    atomic_torch_save(state, out)
    return loading_snippet(cfg, fmt, str(out))
