"""Image data: the Fashion-MNIST reader (training only), shipped image sets, user folders.

Images are handled as float tensors N x C x H x W in [-1, 1] throughout ``core``.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
# Shipped image sets (uint8 arrays, N x 28 x 28), written by ``scripts/make_assets.py``.
CALIBRATION_IMAGES = ASSETS_DIR / "data" / "fashion_mnist_train_1000.npz"
REFERENCE_IMAGES = ASSETS_DIR / "data" / "fashion_mnist_test_1000.npz"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _read_idx(path: str | Path, magic: int, kind: str) -> bytes:
    """The raw bytes of an idx file (optionally gzipped), checked to hold ``magic``."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    found = int.from_bytes(raw[0:4], "big")
    if found != magic:
        raise ValueError(f"{path}: not an {kind} file (magic {found}, expected {magic})")
    return raw


def read_idx_images(path: str | Path) -> np.ndarray:
    """Read an idx3 (optionally gzipped) image file into a uint8 array N x H x W."""
    raw = _read_idx(path, 2051, "idx3 image")
    count, rows, cols = (int.from_bytes(raw[i : i + 4], "big") for i in (4, 8, 12))
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(count, rows, cols)


def read_idx_labels(path: str | Path) -> np.ndarray:
    """Read an idx1 (optionally gzipped) label file into a uint8 array N."""
    return np.frombuffer(_read_idx(path, 2049, "idx1 label"), dtype=np.uint8, offset=8)


def _fashion_mnist_file(split: str, kind: str, root: str | Path) -> Path:
    prefix = {"train": "train", "test": "t10k"}
    if split not in prefix:
        raise ValueError(f"split must be one of {sorted(prefix)}, got {split!r}")
    path = Path(root) / f"{prefix[split]}-{kind}-idx{3 if kind == 'images' else 1}-ubyte.gz"
    if not path.exists():
        raise ValueError(f"Fashion-MNIST not found at {path}; install it with `apt-get install dataset-fashion-mnist`")
    return path


def load_fashion_mnist(split: str = "train", root: str | Path = FASHION_MNIST_DIR) -> np.ndarray:
    """Fashion-MNIST images (uint8, N x 28 x 28) from the Debian ``dataset-fashion-mnist`` package."""
    return read_idx_images(_fashion_mnist_file(split, "images", root))


def load_fashion_mnist_labels(split: str = "train", root: str | Path = FASHION_MNIST_DIR) -> np.ndarray:
    """Fashion-MNIST classes (0-9, uint8, N) from the Debian ``dataset-fashion-mnist`` package."""
    return read_idx_labels(_fashion_mnist_file(split, "labels", root))


def uint8_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 N x H x W (or N x H x W x C) -> float N x C x H x W in [-1, 1]."""
    array = np.asarray(images)
    if array.ndim == 3:
        array = array[:, :, :, None]
    tensor = torch.from_numpy(np.array(array, copy=True)).permute(0, 3, 1, 2).float()
    return tensor / 127.5 - 1.0


def tensor_to_uint8(images: torch.Tensor) -> np.ndarray:
    """float N x C x H x W in [-1, 1] -> uint8 N x H x W x C."""
    scaled = ((images.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round()
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).numpy()


def load_image_set(path: str | Path) -> torch.Tensor:
    """A shipped ``.npz`` image set (key ``images``) as a float tensor in [-1, 1]."""
    with np.load(path) as archive:
        return uint8_to_tensor(archive["images"])


def load_image_labels(path: str | Path) -> torch.Tensor | None:
    """The classes of a shipped ``.npz`` image set (key ``labels``), None if it has none."""
    with np.load(path) as archive:
        return torch.from_numpy(archive["labels"].astype(np.int64)) if "labels" in archive else None


def load_image_folder(
    folder: str | Path, size: int, channels: int, limit: int | None = None
) -> torch.Tensor:
    """Images from a user folder, resized to ``size`` and converted to ``channels``, in [-1, 1]."""
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"image folder {str(folder)!r} does not exist or is not a directory")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if limit is not None:
        files = files[:limit]
    if not files:
        raise ValueError(f"image folder {str(folder)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    mode = "L" if channels == 1 else "RGB"
    arrays = []
    from PIL import UnidentifiedImageError

    for file in files:
        try:
            with Image.open(file) as image:
                image = image.convert(mode).resize((size, size), Image.BICUBIC)
                arrays.append(np.asarray(image, dtype=np.uint8))
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
            raise ValueError(f"image folder {str(folder)!r}: {file.name!r} is not a readable image "
                             f"({str(error).splitlines()[0][:80] if str(error) else type(error).__name__})") from error
    return uint8_to_tensor(np.stack(arrays))
