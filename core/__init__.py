"""DiffPrune Studio engine. Never imports gradio; the UI, CLI, benchmarks and tests use this facade.

    from core import load_pipeline, PruneSpec, prune, evaluate
    dense = load_pipeline()                      # the embedded default model (or a path / hub id)
    result = prune(dense, PruneSpec(criterion="taylor", granularity="channel", sparsity=0.3))
    row = evaluate(result.pipeline, num_samples=256, num_inference_steps=25, dense_pipeline=dense)
    result.save("runs/taylor-30")

The facade is lazy (PEP 562): ``import core`` imports no submodule (no torch, no diffusers), and
each public name imports its submodule on first use. So ``diffprune --help``, the UI's page and
``core.catalog`` stay light, and an import inside a function really waits until it is needed.
"""
from __future__ import annotations

import importlib
import sys
import types

# Public name -> the submodule of ``core`` that defines it. The registries come from ``core.spec``,
# which imports every module that registers a criterion, granularity or schedule, so they are
# complete when the facade hands them out.
_SUBMODULES = {
    "load_pipeline": "pipeline", "sample_images": "pipeline", "make_grid": "pipeline", "to_pil": "pipeline",
    "pick_device": "pipeline",
    "PruneSpec": "spec", "PRESETS": "spec", "CRITERIA": "spec", "SCHEDULES": "spec", "GRANULARITIES": "spec",
    "prune": "engine", "PruneResult": "engine", "PruneReport": "engine",
    "evaluate": "evaluate",
    "compare_grid": "metrics",
    "sweep": "sweep",
    "ResultStore": "store",
    "finetune": "finetune",
    "estimate_cost": "cost",
    "RECOVERY_DEFAULTS": "recovery", "recovery_images": "recovery", "recovery_data": "recovery",
    "estimate_recovery": "recovery",
}

__all__ = [
    "load_pipeline", "sample_images", "make_grid", "to_pil", "pick_device",
    "PruneSpec", "PRESETS", "CRITERIA", "SCHEDULES", "GRANULARITIES",
    "prune", "PruneResult", "PruneReport", "evaluate", "compare_grid", "sweep", "ResultStore", "finetune",
    "estimate_cost", "RECOVERY_DEFAULTS", "recovery_images", "recovery_data", "estimate_recovery",
]


def __getattr__(name: str):
    """Import the submodule that defines the public ``name`` and keep the value (PEP 562)."""
    module = _SUBMODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Facade(types.ModuleType):
    """``core`` itself. Importing a submodule binds it as an attribute of its package; three
    submodules share their name with the facade's function (``evaluate``, ``finetune``, ``sweep``),
    and ``from core import evaluate`` must give the function whichever was imported first. So that
    binding is skipped and the name stays with :func:`__getattr__` (or the function it cached)."""

    def __setattr__(self, name: str, value) -> None:
        if (isinstance(value, types.ModuleType) and _SUBMODULES.get(name) == name
                and value.__name__ == f"{__name__}.{name}"):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Facade
