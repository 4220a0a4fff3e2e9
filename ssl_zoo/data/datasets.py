"""The images of each ``data.name``: a training split for self-supervised learning, a labelled training
split for the kNN bank, and a test split for validation.

Every base data set returns ``(PIL.Image, label)`` with the image in the mode ``data.channels`` asks
for (``L`` or ``RGB``) and label -1 where there is none. In-memory sets (Fashion-MNIST, CIFAR, STL-10,
synthetic) keep uint8 arrays; folders of files are read on access through :func:`load_image`.

Splits:

* fashion_mnist: train (60,000) / t10k (10,000), read from the idx files (:mod:`.fashion_mnist`).
* cifar10, cifar100: torchvision's pickled batches, train (50,000) / test (10,000).
* stl10: self-supervised training on ``train+unlabeled`` (5,000 labelled + 100,000 unlabelled images,
  labels -1 for the latter, about 2.9 GB of uint8 in memory); the kNN bank is the 5,000 labelled
  training images and validation the 8,000 test images (Coates et al. 2011, https://cs.stanford.edu/~acoates/stl10/).
* imagefolder: ``root`` in torchvision's ImageFolder layout (``root/<class>/<image>``) with ``val_root``
  alike, or, with ``labelled=false``, every image file under ``root`` (recursively) and no evaluation.
* synthetic: :func:`ssl_zoo.data.synthetic.make_synthetic`, train and test drawn from one seed.

Image files of any PIL mode (``1``, ``L``, ``P`` with or without transparency, ``RGB``, ``RGBA``, ``CMYK``,
16-bit grey) and any size are converted to the mode asked for (:func:`to_mode`); the transforms resize.
A file that cannot be decoded (corrupt, truncated, empty, unreadable) never stops an epoch: the next
readable file in path order stands in for it (so a batch is whole and the substitute is the same in every
run and after a resume), and the file is logged once and listed in :class:`UnreadableImages`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ssl_zoo.data.config import IMAGE_EXTENSIONS, DataConfig
from ssl_zoo.data.fashion_mnist import DEFAULT_ROOT as FASHION_MNIST_ROOT
from ssl_zoo.data.fashion_mnist import load_fashion_mnist
from ssl_zoo.data.synthetic import make_synthetic
from ssl_zoo.errors import DataError

log = logging.getLogger(__name__)

DEFAULT_ROOTS = {"fashion_mnist": FASHION_MNIST_ROOT, "cifar10": "data/cifar10", "cifar100": "data/cifar100",
                 "stl10": "data/stl10"}

# name -> (what it is called, the folder torchvision reads inside root, the archive and where it comes from)
_TORCHVISION_SETS = {
    "cifar10": ("CIFAR-10", "cifar-10-batches-py", "cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html"),
    "cifar100": ("CIFAR-100", "cifar-100-python", "cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html"),
    "stl10": ("STL-10", "stl10_binary", "stl10_binary.tar.gz from https://cs.stanford.edu/~acoates/stl10/"),
}


def pil_mode(channels: int) -> str:
    return "L" if channels == 1 else "RGB"


def load_image(path: str | os.PathLike, mode: str = "RGB") -> Image.Image:
    """The image file at ``path`` decoded and converted to ``mode``; every file-backed set reads here."""
    with open(path, "rb") as f:
        image = Image.open(f)
        image.load()  # decode now, while the file is open: a truncated or corrupt file raises here
        return to_mode(image, mode)


def to_mode(image: Image.Image, mode: str) -> Image.Image:
    """``image`` in ``mode`` (``L`` or ``RGB``) whatever its own mode.

    Palette images with a transparent colour go through ``RGBA`` (PIL warns otherwise); 16- and 32-bit
    integer and float images are scaled to 8 bits rather than clipped (a 16-bit PNG would turn white).
    """
    if image.mode == mode:
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    elif image.mode in ("I", "F") or image.mode.startswith("I;"):
        values = np.asarray(image, dtype=np.float64)
        top = values.max(initial=0.0)
        scale = 255.0 if image.mode == "F" and top <= 1.0 else 255.0 / 65535.0 if top > 255 else 1.0
        image = Image.fromarray(np.clip(values * scale, 0, 255).round().astype(np.uint8), "L")
    return image.convert(mode)


class UnreadableImages:
    """Image files that could not be decoded: each logged once (a warning in the run log) and, once
    :meth:`attach`-ed to a file, appended to it as one ``path<TAB>error`` line.

    Data-loader workers are separate processes, so the file is the shared record: appends of one short
    line are atomic, and :meth:`paths` reads it back (without duplicates) to count.
    """

    def __init__(self) -> None:
        self.file: Path | None = None
        self._seen: dict[str, str] = {}

    def attach(self, file: str | os.PathLike) -> None:
        """List in ``file`` from now on; files it already lists (from before a resume) are not repeated."""
        self.file = Path(file)
        listed = self._read()
        for path, reason in self._seen.items():
            if path not in listed:
                self._append(path, reason)
        self._seen = {**listed, **self._seen}

    def record(self, path: str, error: BaseException) -> None:
        if path in self._seen:
            return
        reason = f"{type(error).__name__}: {error}".replace("\t", " ").replace("\n", " ")
        self._seen[path] = reason
        log.warning("skipped unreadable image %s (%s); the next readable image stands in for it", path, reason)
        if self.file is not None:
            self._append(path, reason)

    def paths(self) -> list[str]:
        """Every unreadable file found so far, by this process or (through the file) its workers."""
        return sorted({*self._seen, *self._read()})

    def __len__(self) -> int:
        return len(self.paths())

    def _read(self) -> dict[str, str]:
        if self.file is None or not self.file.is_file():
            return {}
        lines = (line.rsplit("\t", 1) for line in self.file.read_text().splitlines() if line)
        return {parts[0]: parts[-1] for parts in lines}

    def reason(self, path: str) -> str | None:
        return self._seen.get(path) or self._read().get(path)

    def _append(self, path: str, reason: str) -> None:
        with open(self.file, "a") as f:  # one write() of one line: whole even with several writers
            f.write(f"{path}\t{reason}\n")


class ArrayDataset(Dataset):
    """In-memory images: uint8 ``images`` [N, H, W] (grey) or [N, H, W, 3] (RGB) and int64 ``labels`` [N].

    Item ``i`` is ``(PIL.Image in mode, int label)``; the arrays are shared, never copied, by workers.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, mode: str):
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) != len(labels):
            raise ValueError(f"expected uint8 images [N,H,W(,3)] and N labels, got {images.dtype} "
                             f"{images.shape} and {len(labels)} labels")
        self.images, self.labels, self.mode = images, np.asarray(labels, dtype=np.int64), mode

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        image = Image.fromarray(np.ascontiguousarray(self.images[i]))
        return (image if image.mode == self.mode else image.convert(self.mode)), int(self.labels[i])


class FileDataset(Dataset):
    """Image files: item ``i`` is ``(load_image(paths[i], mode), labels[i])``.

    When file ``i`` cannot be decoded, item ``i`` is the next readable file (``i+1``, ``i+2``... wrapping
    around) with its own label, and file ``i`` is recorded in ``unreadable``; a data set without any
    readable file is a :class:`DataError`.
    """

    def __init__(self, paths: list[str], labels: np.ndarray, mode: str,
                 unreadable: UnreadableImages | None = None):
        self.paths, self.labels, self.mode = paths, np.asarray(labels, dtype=np.int64), mode
        self.unreadable = unreadable if unreadable is not None else UnreadableImages()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        for k in range(len(self.paths)):
            j = (i + k) % len(self.paths)
            try:
                image = load_image(self.paths[j], self.mode)
            except Exception as e:  # noqa: BLE001 - any decoder failure of a user's file: skip it, never crash
                self.unreadable.record(self.paths[j], e)
                continue
            return image, int(self.labels[j])
        raise DataError(f"none of the {len(self.paths)} image files under {_common_folder(self.paths)} can be "
                        f"read (e.g. {self.paths[0]}: {self.unreadable.reason(self.paths[0])}): "
                        "check the files or point data.root at readable images")


def _common_folder(paths: list[str]) -> str:
    return os.path.commonpath(paths) if paths else "?"


@dataclass
class Splits:
    """``train``: self-supervised training images (labels may be -1). ``bank``: labelled training images
    for the kNN bank and ``test``: the validation images, both None for unlabelled data."""

    train: Dataset
    bank: Dataset | None
    test: Dataset | None
    num_classes: int | None


def build_datasets(cfg: DataConfig) -> Splits:
    """The three splits of ``cfg.name``; a missing or unreadable data set raises :class:`DataError`."""
    mode = pil_mode(cfg.channels)
    root = cfg.root or DEFAULT_ROOTS.get(cfg.name)
    if cfg.name == "fashion_mnist":
        train = ArrayDataset(*load_fashion_mnist(root, train=True), mode)
        test = ArrayDataset(*load_fashion_mnist(root, train=False), mode)
        return _checked(Splits(train, train, test, cfg.num_classes))
    if cfg.name in ("cifar10", "cifar100"):
        train = ArrayDataset(*_torchvision_arrays(cfg.name, root, "train"), mode)
        test = ArrayDataset(*_torchvision_arrays(cfg.name, root, "test"), mode)
        return _checked(Splits(train, train, test, cfg.num_classes))
    if cfg.name == "stl10":
        images, labels = _torchvision_arrays("stl10", root, "train+unlabeled")
        labelled = int((labels >= 0).sum())  # torchvision puts the labelled images first
        train = ArrayDataset(images, labels, mode)
        bank = ArrayDataset(images[:labelled], labels[:labelled], mode)  # views of the same memory
        test = ArrayDataset(*_torchvision_arrays("stl10", root, "test"), mode)
        return _checked(Splits(train, bank, test, cfg.num_classes))
    if cfg.name == "synthetic":
        make = partial(make_synthetic, num_classes=cfg.num_classes, image_size=cfg.image_size,
                       channels=cfg.channels, seed=cfg.synthetic_seed)
        train = ArrayDataset(*make(cfg.num_samples, split="train"), mode)
        test = ArrayDataset(*make(cfg.num_test_samples, split="test"), mode)
        return _checked(Splits(train, train, test, cfg.num_classes))
    if cfg.name == "imagefolder":
        if not cfg.labelled:
            return Splits(_unlabelled_folder(cfg.root, mode), None, None, None)
        train = _class_folder(cfg.root, mode, "data.root")
        test = _class_folder(cfg.val_root, mode, "data.val_root")
        if test.classes != train.classes:
            raise DataError(f"data.val_root={cfg.val_root} has class folders {test.classes[:5]}... but "
                            f"data.root={cfg.root} has {train.classes[:5]}...: give both the same classes")
        if cfg.num_classes != len(train.classes):
            raise DataError(f"data.root={cfg.root} has {len(train.classes)} class folders but "
                            f"data.num_classes={cfg.num_classes}: set data.num_classes={len(train.classes)}")
        return Splits(train, train, test, cfg.num_classes)
    raise DataError(f"data.name={cfg.name!r} has no loader: choose one of "
                    f"{', '.join(DEFAULT_ROOTS)}, imagefolder, synthetic")


def _checked(splits: Splits) -> Splits:
    # A label outside [0, num_classes) would silently corrupt the kNN vote and the probe.
    for part in (splits.bank, splits.test):
        labels = part.labels[part.labels >= 0]
        if len(labels) and labels.max() >= splits.num_classes:
            raise DataError(f"labels reach {labels.max()} but data.num_classes={splits.num_classes}: "
                            f"set data.num_classes={labels.max() + 1} or check the data files")
    return splits


def _torchvision_arrays(name: str, root: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, H, W, 3] and int64 labels [N] of a torchvision data set read from ``root``
    (``download=False``: this project never downloads)."""
    from torchvision import datasets

    title, folder, archive = _TORCHVISION_SETS[name]
    path = Path(root).expanduser()
    if path.name == folder:  # root names the extracted folder itself
        path = path.parent
    if not (path / folder).is_dir():
        raise DataError(f"{title} not found: expected the folder {path / folder}; download {archive} and "
                        f"extract it into {path}, or set data.root=<folder holding {folder}>")
    try:
        if name == "stl10":
            ds = datasets.STL10(str(path), split=split, download=False)
            # [N, 3, 96, 96] -> [N, 96, 96, 3] as a strided view: a contiguous copy would double 2.9 GB
            return ds.data.transpose(0, 2, 3, 1), np.asarray(ds.labels, dtype=np.int64)
        cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
        ds = cls(str(path), train=split == "train", download=False)
        return ds.data, np.asarray(ds.targets, dtype=np.int64)
    except (RuntimeError, OSError, ValueError) as e:
        raise DataError(f"{title} in {path / folder} cannot be read ({type(e).__name__}: {e}): replace it "
                        f"with a fresh extract of {archive}") from None


class _ClassFolder(FileDataset):
    def __init__(self, paths: list[str], labels: np.ndarray, mode: str, classes: list[str]):
        super().__init__(paths, labels, mode)
        self.classes = classes


def _class_folder(root: str, mode: str, key: str) -> _ClassFolder:
    """``root/<class>/**/<image>`` (torchvision's ImageFolder layout), classes in sorted order."""
    from torchvision.datasets.folder import find_classes, make_dataset

    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"{key}={root} is not a folder: give a folder with one sub-folder of images per "
                        "class")
    try:
        classes, class_to_idx = find_classes(str(path))
        samples = make_dataset(str(path), class_to_idx, extensions=IMAGE_EXTENSIONS)
    except FileNotFoundError as e:
        raise DataError(f"{key}={root} has no images in class sub-folders ({e}): use root/<class>/<image> "
                        f"(extensions {', '.join(IMAGE_EXTENSIONS)}), or data.labelled=false for a plain "
                        "folder") from None
    paths, labels = zip(*samples)
    return _ClassFolder(list(paths), np.array(labels, dtype=np.int64), mode, classes)


def _unlabelled_folder(root: str, mode: str) -> FileDataset:
    """Every image file under ``root``, recursively, in sorted path order, with label -1."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"data.root={root} is not a folder: give a folder that holds image files")
    paths = sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not paths:
        raise DataError(f"data.root={root} holds no image files ({', '.join(IMAGE_EXTENSIONS)}), searched "
                        f"recursively: point data.root at the images")
    return FileDataset(paths, np.full(len(paths), -1, dtype=np.int64), mode)
