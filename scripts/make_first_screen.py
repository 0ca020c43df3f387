"""Write the first screen's shipped files: each embedded model's dense sample grid at the page's
default settings (seed 0, 25 sampling steps, uniform classes) and its model card.

The grid is what the app computes (``diffprune_ui.handlers.dense_samples`` and ``core.make_grid``,
on the CPU, in the checkpoint's own dtype), so the page can show it the moment it is served
(``diffprune_ui.first_screen``); ``tests/test_first_screen.py`` regenerates one and compares.
Usage: .venv/bin/python scripts/make_first_screen.py [--models ddpm-fashion-mnist ...] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def render(name: str, seed: int, steps: int):
    """The app's dense grid and model card of embedded model ``name`` at (seed, steps)."""
    import torch

    from core import make_grid
    from core.default_model import EMBEDDED_MODELS
    from diffprune_ui import handlers

    torch.set_num_threads(1)  # the shipped grids are sampled with one intra-op thread
    source = "" if name == next(iter(EMBEDDED_MODELS)) else name
    images = handlers.dense_samples(source, steps, seed)
    return make_grid(images, columns=4, scale=4), handlers.model_card(source, handlers.cached_pipeline(source))


def main(argv=None) -> int:
    from core.default_model import EMBEDDED_MODELS
    from diffprune_ui.first_screen import DEFAULT_SEED, DEFAULT_STEPS, FIRST_SCREEN_DIR

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(EMBEDDED_MODELS), choices=list(EMBEDDED_MODELS))
    parser.add_argument("--out", default=str(FIRST_SCREEN_DIR))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        grid, card = render(name, DEFAULT_SEED, DEFAULT_STEPS)
        path = out / f"{name}-seed{DEFAULT_SEED}-steps{DEFAULT_STEPS}.png"
        grid.save(path, optimize=True)
        (out / f"{name}.json").write_text(json.dumps(dict(model=name, card=card), indent=1) + "\n")
        print(f"wrote {path} ({path.stat().st_size // 1024} KiB) and its card")
    return 0


if __name__ == "__main__":
    sys.exit(main())
