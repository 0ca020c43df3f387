"""The first screen from shipped files, without importing torch or diffusers.

The embedded models' dense sample grids at the page's default settings are shipped as PNG files
under ``assets/first_screen/`` (written by ``scripts/make_first_screen.py`` with the app's own
sampling: ``handlers.dense_samples`` and ``core.make_grid``, so they equal what the app computes;
``tests/test_first_screen.py`` regenerates one and compares). With them and the shipped result
tables the page shows samples, model card and charts as soon as it is served, while the engine and
the model load in the background; any other seed, step count, class or prompt is sampled as before.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from . import figures, quality_answer

ROOT = Path(__file__).resolve().parent.parent
FIRST_SCREEN_DIR = ROOT / "assets" / "first_screen"
DEFAULT_SEED, DEFAULT_STEPS = 0, 25  # the page's defaults (seed and sampling steps boxes)


def embedded_name(source) -> str | None:
    """The embedded model a source box's text names (empty: the default one), else None."""
    from core.catalog import catalog

    names = list(catalog()["embedded_models"])
    if source is None:
        return names[0]
    if not isinstance(source, str):
        return None
    text = source.strip()
    if text in ("", "default"):
        return names[0]
    return text if text in names else None


def grid_path(name: str, seed: int, steps: int) -> Path:
    return FIRST_SCREEN_DIR / f"{name}-seed{seed}-steps{steps}.png"


def card_path(name: str) -> Path:
    return FIRST_SCREEN_DIR / f"{name}.json"


def _whole(value) -> int | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else None


def shipped_grid(source, seed, steps, class_label=None, prompt=None):
    """The shipped dense grid (a PIL image) of an embedded model at (seed, steps) with uniform
    classes and no prompt, in the checkpoint's own dtype; None when none is shipped for these."""
    from PIL import Image

    name, seed, steps = embedded_name(source), _whole(seed), _whole(steps)
    if name is None or seed is None or steps is None or class_label is not None or prompt:
        return None
    if os.environ.get("DIFFPRUNE_DTYPE", "").strip() not in ("", "auto"):
        return None  # the shipped grids were sampled in each checkpoint's own dtype
    path = grid_path(name, seed, steps)
    if not path.exists():
        return None
    with Image.open(path) as image:
        image.load()
        return image.copy()


def shipped_card(source) -> str | None:
    """The model card text the app shows for an embedded model (written with the grids)."""
    name = embedded_name(source)
    path = card_path(name) if name else None
    if path is None or not path.exists():
        return None
    return json.loads(path.read_text())["card"]


def shipped_charts():
    """The Quality tab's charts and sentence from the shipped result tables only (the results
    store, which needs the engine, is added by ``handlers.first_screen`` once it is loaded)."""
    import pandas as pd

    from . import handlers

    table = (pd.read_csv(handlers.SHIPPED_RESULTS).assign(source="shipped benchmark", model="default")
             if handlers.SHIPPED_RESULTS.exists() else pd.DataFrame())
    settings = handlers.shipped_settings()
    frontier = None
    if settings is not None and handlers.SHIPPED_DENSE_STEPS.exists():
        _, samples, steps, reference = settings
        frontier = pd.read_csv(handlers.SHIPPED_DENSE_STEPS)
        frontier = frontier[(frontier["num_samples"] == samples) & (frontier["base_steps"] == steps)
                            & (frontier["reference"] == reference)].sort_values("num_inference_steps")
    quality = "kid"
    return (handlers.safe_view(figures.pareto, table, settings, None, quality, frontier),
            handlers.safe_view(figures.quality_vs_sparsity, table, settings, None, quality),
            handlers.frontier_figure(quality), quality_answer.shipped_sentence(quality))


def shipped_first_screen(source, seed, steps):
    """What the page shows the moment it is served: the shipped dense grid and model card (left as
    they are when none is shipped for these settings), the shipped charts, the shipped "Is pruning
    worth it?" sentence, the shipped recovery comparison, the Compare tab's empty charts and the
    sentence of the shipped frontier chart (default model, DDIM: the page's first choice)."""
    import gradio as gr

    from . import handlers

    grid, card = shipped_grid(source, seed, steps), shipped_card(source)
    pareto_figure, sparsity_figure, frontier_figure, sentence = shipped_charts()
    compare_note = figures.empty_figure("run a sweep: its quality-vs-latency chart appears here "
                                        "(tick 'time latency' to measure the speed-up)")
    return (grid if grid is not None else gr.skip(), card if card is not None else gr.skip(), pareto_figure,
            sparsity_figure, handlers.safe_view(figures.recovery_comparison, handlers.shipped_recovery("kid")),
            frontier_figure, sentence, compare_note,
            figures.empty_figure("run a sweep: its quality-vs-sparsity chart appears here"),
            quality_answer.shipped_sentence("kid", model="default", scheduler="ddim"))
