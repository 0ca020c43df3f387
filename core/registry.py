"""Name -> entry registries. Imports nothing else of ``core``, so every module may import it.

A registry is a plain ordered dict with a ``register`` helper and a ``get`` that refuses an
unknown name with one line naming the field and the allowed names. Plug-ins (model adapters,
criteria, granularities, schedules) register themselves at import time::

    from core.registry import ADAPTERS

    @ADAPTERS.register
    class MyFamily(ModelAdapter):
        name = "my-family"
"""
from __future__ import annotations


class Registry(dict):
    """Ordered ``name -> entry``. ``kind`` names the field in error messages ("criterion")."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, entry=None, *, name: str | None = None):
        """Register ``entry`` under ``name`` (default: ``entry.name``); usable as a decorator.
        A class is registered as one instance of itself."""
        def add(item):
            instance = item() if isinstance(item, type) else item
            key = name or getattr(instance, "name", None)
            if not isinstance(key, str) or not key:
                raise ValueError(f"a {self.kind} needs a non-empty name to be registered")
            self[key] = instance
            return item

        return add if entry is None else add(entry)

    def get_entry(self, name):
        """The entry called ``name``; ValueError naming the allowed names otherwise."""
        if not isinstance(name, str) or name not in self:
            raise ValueError(f"{self.kind} must be one of {sorted(self)}, got {name!r}")
        return self[name]


# Model families (core/models/): one ModelAdapter per family of diffusers pipelines.
ADAPTERS = Registry("model family")
# Pruning methods: criteria (core/criteria/, obs included, and core/gradflow.py), granularities
# (core/granularities/, one file each) and timestep schedules (core/schedules.py).
CRITERIA = Registry("criterion")
GRANULARITIES = Registry("granularity")
SCHEDULES = Registry("schedule")
