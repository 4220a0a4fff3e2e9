"""Fashion-MNIST straight from its four idx files (Xiao et al. 2017, https://github.com/zalandoresearch/fashion-mnist).

The idx format (LeCun et al., http://yann.lecun.com/exdb/mnist/): a big-endian header, then raw bytes.
Images: int32 magic 2051 (``0x00000803``: unsigned bytes, 3 dimensions), int32 count N, int32 rows,
int32 columns, then N*rows*columns uint8. Labels: int32 magic 2049 (1 dimension), int32 count N,
then N uint8. The files are usually gzipped (``*.gz``); plain files are read as well.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from ssl_zoo.errors import DataError

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
INSTALL_HINT = ("install it with 'sudo apt-get install dataset-fashion-mnist' or set "
                "data.root=<folder with the four idx .gz files>")


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise DataError(f"{path} is not a readable idx file ({type(e).__name__}: {e}): "
                        f"replace it with an intact copy ({INSTALL_HINT})") from None


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """One idx file as uint8: images [N, rows, cols] (magic 2051) or labels [N] (magic 2049).

    Raises :class:`DataError` naming the file when the magic number or the size is not what the
    header promises (a truncated download, a file of the other kind).
    """
    path = Path(path)
    raw = _read_bytes(path)
    ndim = magic & 0xFF
    header = 4 * (1 + ndim)
    if len(raw) < header:
        raise DataError(f"{path} is too short to be an idx file ({len(raw)} bytes): replace it "
                        f"({INSTALL_HINT})")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(f"{path} has idx magic number {found}, expected {magic}: the file is corrupt or of "
                        f"another kind; replace it ({INSTALL_HINT})")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataError(f"{path} holds {len(raw) - header} data bytes, its header {shape} promises "
                        f"{expected}: the file is truncated or corrupt; replace it ({INSTALL_HINT})")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise DataError(f"Fashion-MNIST file {stem}.gz not found in {root}: {INSTALL_HINT}")


def load_fashion_mnist(root: str | Path | None = None, train: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The training (60,000) or test (10,000) split: uint8 images [N, 28, 28] and int64 labels [N]."""
    root = Path(root if root else DEFAULT_ROOT).expanduser()
    if not root.is_dir():
        raise DataError(f"Fashion-MNIST not found in {root}: {INSTALL_HINT}")
    image_stem, label_stem = FILES[train]
    image_path, label_path = _find(root, image_stem), _find(root, label_stem)
    images = read_idx(image_path, IMAGES_MAGIC)
    labels = read_idx(label_path, LABELS_MAGIC).astype(np.int64)
    if len(images) != len(labels):
        raise DataError(f"{image_path} holds {len(images)} images but {label_path} {len(labels)} labels: "
                        f"the files come from different splits or are corrupt; replace them ({INSTALL_HINT})")
    return images, labels
