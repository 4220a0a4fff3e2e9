"""``ssl-zoo bench`` arguments: ``key=value`` pairs with one-line errors, plus training overrides.

Unprefixed keys are the benchmark's own (:class:`BenchConfig`); a key under a training config group
(``method.proj_hidden_dim=512``, ``data.num_samples=64``) is a training override applied to both sides:
ours composes it into its run config, and the lightly side reads its head sizes, temperatures,
queue length and optimizer from that same composed config.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Optional

from ssl_zoo.errors import ConfigError, check

SIDES = ("ours", "lightly")
SWEEPS = ("batch", "size", "views", "knn", "accuracy")
TRAINING_GROUPS = ("method", "backbone", "augmentation", "optimizer", "scheduler", "data", "trainer", "monitor",
                   "logger", "seed")
DEFAULT_METHODS = ("simclr", "byol", "moco_v2", "dino")


@dataclass
class BenchConfig:
    """What one ``ssl-zoo bench`` run measures.

    Every row alternates the two sides ``rounds`` times; each round runs ``warmup`` + ``steps`` training
    steps per side, and a row's figures are medians over the ``rounds x steps`` measured steps.
    """

    device: str = "auto"                  # auto (cuda when available), cpu or cuda
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))  # see default_methods
    batch_size: int = 256
    image_size: int = 32
    steps: int = 5
    rounds: int = 2
    warmup: int = 1
    precision: list[str] = field(default_factory=lambda: ["auto", "32-true"])
    workers: Optional[int] = None         # loader workers of both sides; None: min(8, CPU cores)
    data: str = "fashion_mnist"           # fashion_mnist (served as RGB) or synthetic
    cifar_stem: bool = False              # ResNets: the ImageNet stem of torchvision's resnet18, as lightly's examples
    sides: list[str] = field(default_factory=lambda: list(SIDES))
    sweep: list[str] = field(default_factory=list)  # any of batch, size, views, knn, accuracy; or all
    sweep_method: str = "simclr"
    batch_sizes: list[int] = field(default_factory=lambda: [64, 128, 256, 512, 1024])
    image_sizes: list[int] = field(default_factory=lambda: [32, 64, 96, 224])
    knn_sizes: list[int] = field(default_factory=lambda: [1000, 10000, 60000])
    knn_test_size: int = 1000
    accuracy_epochs: int = 2              # sweep=accuracy: epochs each side trains each method before its kNN
    out: Optional[str] = None             # also write the Markdown tables to this file

    def validate(self) -> None:
        check(self.device in ("auto", "cpu", "cuda"), "device", self.device, "one of: auto, cpu, cuda")
        for key in ("batch_size", "image_size", "steps", "rounds"):
            check(getattr(self, key) >= 1, key, getattr(self, key), "an integer >= 1")
        check(self.warmup >= 0, "warmup", self.warmup, "an integer >= 0")
        check(self.workers is None or self.workers >= 0, "workers", self.workers, "an integer >= 0")
        check(len(self.precision) >= 1 and all(p in ("auto", "32-true", "bf16-mixed", "16-mixed")
                                                for p in self.precision),
              "precision", self.precision, "a list of: auto, 32-true, bf16-mixed, 16-mixed")
        check(self.data in ("fashion_mnist", "synthetic"), "data", self.data, "one of: fashion_mnist, synthetic")
        check(len(self.sides) >= 1 and all(s in SIDES for s in self.sides), "sides", self.sides,
              "a list of: " + ", ".join(SIDES))
        check(all(s in SWEEPS for s in self.sweep), "sweep", self.sweep, "a list of: " + ", ".join(SWEEPS) + " or all")
        for key in ("batch_sizes", "image_sizes", "knn_sizes"):
            check(all(v >= 1 for v in getattr(self, key)), key, getattr(self, key), "a list of integers >= 1")
        check(self.knn_test_size >= 1, "knn_test_size", self.knn_test_size, "an integer >= 1")
        check(self.accuracy_epochs >= 1, "accuracy_epochs", self.accuracy_epochs, "an integer >= 1")
        check("accuracy" not in self.sweep or set(self.sides) == set(SIDES), "sides", self.sides,
              "both sides (the default) with sweep=accuracy: it compares them")
        check(len(self.methods) >= 1, "methods", self.methods, "a list of registered methods")
        from ssl_zoo.bench.lightly_loop import RECIPES
        from ssl_zoo.methods import METHODS

        usable = [m for m in RECIPES if m in METHODS]
        for name in [*self.methods, self.sweep_method]:
            check(name in usable, "methods" if name in self.methods else "sweep_method", name,
                  "one of: " + ", ".join(usable), "registered methods with a lightly counterpart")

    @property
    def num_workers(self) -> int:
        return min(8, os.cpu_count() or 1) if self.workers is None else self.workers


def default_methods(device: str) -> list[str]:
    """SimCLR, BYOL and MoCo v2, plus DINO where it is registered and a GPU runs the bench: a DINO step
    (ViT-tiny, 2+6 crops, 65536 prototypes) costs ~20 ResNet-18 steps at 32 px, more than the default run's
    budget on a CPU, where ``methods=simclr,byol,moco_v2,dino`` asks for it."""
    import torch

    from ssl_zoo.methods import METHODS

    on_gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return [m for m in DEFAULT_METHODS if m in METHODS and (m != "dino" or on_gpu)]


def _parse(name: str, kind: str, text: str):
    try:
        if kind.startswith("list"):
            items = [t.strip() for t in text.strip("[]").split(",") if t.strip()]
            return [int(t) for t in items] if "int" in kind else items
        if kind == "bool":
            if text.lower() not in ("true", "false"):
                raise ValueError(text)
            return text.lower() == "true"
        if kind in ("int", "optional_int"):
            return None if kind == "optional_int" and text in ("null", "none", "") else int(text)
        if kind == "optional_str":
            return None if text in ("null", "none", "") else text
        return text
    except ValueError:
        expected = {"int": "an integer", "optional_int": "an integer or null", "bool": "true or false",
                    "list_int": "comma-separated integers"}.get(kind, "a value")
        raise ConfigError(name, text, expected) from None


_KINDS = {"methods": "list", "precision": "list", "sides": "list", "sweep": "list", "batch_sizes": "list_int",
          "image_sizes": "list_int", "knn_sizes": "list_int", "workers": "optional_int", "cifar_stem": "bool",
          "out": "optional_str", "batch_size": "int", "image_size": "int", "steps": "int", "rounds": "int",
          "warmup": "int", "knn_test_size": "int", "accuracy_epochs": "int"}


def parse_bench_args(args: list[str]) -> tuple[BenchConfig, list[str]]:
    """``key=value`` arguments -> (validated :class:`BenchConfig`, training overrides)."""
    cfg, overrides = BenchConfig(), []
    known = [f.name for f in fields(BenchConfig)]
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+~").split(".")[0] in TRAINING_GROUPS and key not in known:
            overrides.append(arg)
            continue
        if not sep or key not in known:
            raise ConfigError(key if sep else arg, value if sep else None, "a bench argument: " + ", ".join(known),
                              "or a training override such as method.proj_hidden_dim=512")
        setattr(cfg, key, _parse(key, _KINDS.get(key, "str"), value))
    if not any(a.startswith("methods=") for a in args):
        cfg.methods = default_methods(cfg.device)
    if "all" in cfg.sweep:
        cfg.sweep = list(SWEEPS)
    cfg.validate()
    return cfg, overrides
