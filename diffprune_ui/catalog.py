"""What the interface needs from the engine's registries to draw its controls, without importing the engine.

Building the page needs the names and defaults of ``CRITERIA``, ``SCHEDULES``, ``PRESETS``, the
recovery defaults (``core.recovery.RECOVERY_DEFAULTS``) and the number of shipped calibration captions;
importing ``core`` pulls in torch and diffusers (several seconds), which would delay the page.
So the page is built from ``catalog.json``, a JSON copy of exactly those fields, and the engine is
imported in the background while the page loads. The copy cannot drift: ``tests/test_app_handlers.py``
asserts it equals :func:`build_catalog`, and the app rebuilds it from the live registries when the
engine is already imported (tests, or a second ``build_demo``). Regenerate with
``python -m diffprune_ui.catalog``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

CATALOG_FILE = Path(__file__).with_name("catalog.json")


def build_catalog() -> dict:
    """The registry fields the page uses, read from the live registries (imports ``core``)."""
    from core.criteria import CRITERIA
    from core.default_model import EMBEDDED_MODELS
    from core.prompts import CALIBRATION_PROMPTS
    from core.recovery import RECOVERY_DEFAULTS
    from core.schedules import SCHEDULES
    from core.spec import PRESETS

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
    }))


def catalog() -> dict:
    """The live registries when the engine is already imported, else the shipped copy."""
    if "core.spec" in sys.modules or not CATALOG_FILE.exists():
        return build_catalog()
    return json.loads(CATALOG_FILE.read_text())


if __name__ == "__main__":
    CATALOG_FILE.write_text(json.dumps(build_catalog(), indent=1) + "\n")
    print(f"wrote {CATALOG_FILE}")
