"""Write the small image sets that ship under assets/data (needs `apt-get install dataset-fashion-mnist`).

- fashion_mnist_train_1000.npz: 1,000 training images (seeded random subset) and their classes, the calibration
  and recovery set.
- fashion_mnist_test_1000.npz: 1,000 test images (seeded random subset), the FID/KID reference set (its
  Inception features, shipped beside it, are keyed to this file's bytes).
Usage: .venv/bin/python scripts/make_assets.py
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from core.data import CALIBRATION_IMAGES, REFERENCE_IMAGES, load_fashion_mnist, load_fashion_mnist_labels  # noqa: E402


def main(seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    CALIBRATION_IMAGES.parent.mkdir(parents=True, exist_ok=True)
    for split, path in (("train", CALIBRATION_IMAGES), ("test", REFERENCE_IMAGES)):
        images = load_fashion_mnist(split)
        index = np.sort(rng.choice(len(images), size=1000, replace=False))
        # the training classes: class-conditional recovery trains each image with its own class
        extra = dict(labels=load_fashion_mnist_labels(split)[index]) if split == "train" else {}
        np.savez_compressed(path, images=images[index], index=index, **extra)
        print(f"wrote {path} ({path.stat().st_size // 1024} KiB) from the {split} split")


if __name__ == "__main__":
    main()
