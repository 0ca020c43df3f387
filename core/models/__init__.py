"""Model families: one :class:`~core.models.base.ModelAdapter` per family, registered by name.

Every module of this package is imported here, so a new family is one new file that registers
its adapter with ``@ADAPTERS.register`` (see ``base.py`` for the contract).
"""
from __future__ import annotations

import importlib
import pkgutil

from torch import nn

from ..registry import ADAPTERS
from .base import ModelAdapter, attention_modules, feed_forward_modules, sync_diffusers_sizes

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module != "base":
        importlib.import_module(f"{__name__}.{_module}")


def supported_families() -> str:
    """One line naming every registered family (for refusals)."""
    return "; ".join(f"{name} ({adapter.description})" for name, adapter in ADAPTERS.items())


def adapter_for(pipeline, source: str | None = None) -> ModelAdapter:
    """The registered adapter whose ``matches(pipeline)`` is true; a one-line ValueError naming the
    supported families otherwise."""
    for adapter in ADAPTERS.values():
        try:
            if adapter.matches(pipeline):
                return adapter
        except Exception:  # noqa: BLE001 - a malformed pipeline matches no family
            continue
    label = f"{source!r} is a" if source is not None else "pipeline is a"
    denoiser = getattr(pipeline, "unet", None) or getattr(pipeline, "transformer", None)
    held = f" holding a {type(denoiser).__name__}" if denoiser is not None else ""
    raise ValueError(f"{label} {type(pipeline).__name__}{held}, which no model family supports; supported: {supported_families()}")


def adapter_for_module(module: nn.Module) -> tuple[ModelAdapter, str]:
    """(adapter, component name) for a bare network (``UNet2DModel`` -> the pixel UNet adapter,
    ``"unet"``); ValueError when no family owns it."""
    for adapter in ADAPTERS.values():
        component = adapter.owns(module)
        if component is not None:
            return adapter, component
    raise ValueError(f"no model family owns a {type(module).__name__}; supported: {supported_families()}")


__all__ = ["ADAPTERS", "ModelAdapter", "adapter_for", "adapter_for_module", "attention_modules", "feed_forward_modules",
           "supported_families", "sync_diffusers_sizes"]
