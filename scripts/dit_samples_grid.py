"""Samples per class of the embedded DiT for docs/embedded-models.md: one row per class, 8 samples each.

    .venv/bin/python scripts/dit_samples_grid.py [--guidance 1.5] [--steps 50]

Drawn through the engine (``core.sample_images``: the DiT adapter's guided sampling, DDIM, seed 0,
decoded and cropped to 28x28); writes ``assets/screenshots/dit-samples-per-class.png``.
"""
import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from core import load_pipeline, make_grid, sample_images  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--per-class", type=int, default=8)
    parser.add_argument("--out", default=str(ROOT / "assets" / "screenshots" / "dit-samples-per-class.png"))
    args = parser.parse_args(argv)
    pipeline = load_pipeline("dit-fashion-mnist", device="cpu")
    rows = [sample_images(pipeline, args.per_class, args.steps, seed=0, class_label=label) for label in range(10)]
    grid = make_grid(torch.cat(rows), columns=args.per_class, scale=3)
    grid.save(args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
