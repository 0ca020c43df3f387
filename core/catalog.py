"""The names and defaults of the engine's registries as light data, for the UI and the CLI.

Drawing the page's controls and building ``diffprune``'s argument parser (``--help``, choice
lists, defaults) needs only the names and defaults held by ``CRITERIA``, ``SCHEDULES``,
``GRANULARITIES``, ``PRESETS``, the model families and a few constants; the modules that fill those
registries import torch and diffusers (several seconds). So both read ``catalog.json``, a JSON copy
of exactly those fields written from the live registries by :func:`build_catalog`, and the engine is
imported only when something runs. This module imports nothing but the standard library.

The copy cannot drift: ``tests/test_light_import.py`` asserts it equals :func:`build_catalog`, and
:func:`catalog` rebuilds it from the live registries when the engine is already imported (tests, a
plug-in registered in the same process). Regenerate with ``python -m core.catalog``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

CATALOG_FILE = Path(__file__).with_name("catalog.json")


def build_catalog() -> dict:
    """The registry fields the UI and the CLI use, read from the live registries (imports the engine)."""
    from .default_model import EMBEDDED_MODELS
    from .evaluate import METRICS
    from .finetune import NICI_ALPHA, NICI_TAU
    from .granularities import GRANULARITY_CHOICES
    from .models import ADAPTERS  # importing the package registers every family
    from .prompts import CALIBRATION_PROMPTS
    from .recovery import RECOVERY_DEFAULTS
    from .spec import CRITERIA, GRANULARITIES, PRESETS, SCHEDULES  # core.spec registers every criterion

    return json.loads(json.dumps({
        "criteria": {name: dict(granularities=list(c.granularities), default_schedule=c.default_schedule,
                                default_calibration_batches=c.default_calibration_batches,
                                default_calibration_batch_size=c.default_calibration_batch_size,
                                needs_calibration=c.needs_calibration, description=c.description)
                     for name, c in CRITERIA.items()},
        "schedules": {name: dict(defaults=dict(s.defaults), adaptive=s.adaptive) for name, s in SCHEDULES.items()},
        "presets": sorted(PRESETS),
        "recovery_defaults": dict(RECOVERY_DEFAULTS),
        "embedded_models": {name: description for name, (_, description) in EMBEDDED_MODELS.items()},
        "shipped_captions": len(CALIBRATION_PROMPTS),  # the calibration prompts box's label
        "granularities": {name: dict(structural=g.structural, description=g.description)
                          for name, g in GRANULARITIES.items()},
        "granularity_choices": list(GRANULARITY_CHOICES),  # N:M expanded to its shipped patterns
        "families": {name: adapter.description for name, adapter in ADAPTERS.items()},
        "metrics": list(METRICS),
        "finetune_defaults": {"distill_alpha": NICI_ALPHA, "distill_tau": NICI_TAU},
    }))


def catalog() -> dict:
    """The live registries when the engine is already imported, else the shipped copy."""
    if "core.spec" in sys.modules or not CATALOG_FILE.exists():
        return build_catalog()
    return json.loads(CATALOG_FILE.read_text())


if __name__ == "__main__":
    CATALOG_FILE.write_text(json.dumps(build_catalog(), indent=1) + "\n")
    print(f"wrote {CATALOG_FILE}")
