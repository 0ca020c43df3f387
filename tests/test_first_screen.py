"""The shipped first-screen grid equals what the app samples (``scripts/make_first_screen.py``)."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

pytestmark = pytest.mark.usefixtures("one_thread")


def test_regenerating_the_default_models_grid_matches_the_shipped_file(tmp_path):
    import make_first_screen

    from diffprune_ui.first_screen import DEFAULT_SEED, DEFAULT_STEPS, card_path, grid_path

    make_first_screen.main(["--models", "ddpm-fashion-mnist", "--out", str(tmp_path)])
    name = f"ddpm-fashion-mnist-seed{DEFAULT_SEED}-steps{DEFAULT_STEPS}.png"
    fresh = np.asarray(Image.open(tmp_path / name), dtype=np.int16)
    shipped = np.asarray(Image.open(grid_path("ddpm-fashion-mnist", DEFAULT_SEED, DEFAULT_STEPS)), dtype=np.int16)
    assert fresh.shape == shipped.shape
    difference = np.abs(fresh - shipped)
    # Same seed and steps: equal up to floating-point differences between CPUs (a few grey levels at most).
    assert difference.mean() < 0.5 and np.percentile(difference, 99.9) <= 8, (difference.mean(), difference.max())
    card = json.loads((tmp_path / "ddpm-fashion-mnist.json").read_text())["card"]
    assert card == json.loads(card_path("ddpm-fashion-mnist").read_text())["card"]
