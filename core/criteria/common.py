"""What the engine and every criterion share: the prunable layers, the calibration statistics
record and a private scheduler copy.

A leaf of the package (it imports no method file), so that a criterion package such as ``obs``
can use it: the package ``__init__`` imports the method files, which therefore cannot import the
package itself without an import cycle. ``core.criteria`` re-exports every name.

Prunable parameters (the same set for every criterion and granularity): the ``weight`` of every
``nn.Conv2d`` and ``nn.Linear`` of the network except the layers its family's adapter protects
(``ModelAdapter.protected_layers``; the pixel UNet's ``conv_in`` and ``conv_out``). Biases and
normalisation parameters are not prunable.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

# The pixel UNet's never-pruned layers; other families name theirs in their adapter
# (``ModelAdapter.protected_layers``). Kept for callers that read the constant.
EXCLUDED_LAYERS = ("conv_in", "conv_out")


def _rules(module: nn.Module, adapter=None, component: str | None = None):
    from ..models import adapter_for_module

    if adapter is None or component is None:
        found, owned = adapter_for_module(module)
        adapter, component = adapter or found, component or owned
    return adapter, component


def protected_layer_names(module: nn.Module, adapter=None, component: str | None = None) -> tuple:
    """Conv/linear layers of ``module`` whose weights are never pruned (its family's adapter says which)."""
    adapter, component = _rules(module, adapter, component)
    return tuple(adapter.protected_layers(component, module))


def prunable_layers(model: nn.Module, adapter=None, component: str | None = None) -> dict[str, nn.Module]:
    """Name -> module of the layers whose ``weight`` is prunable (see module docstring): every
    ``nn.Conv2d`` and ``nn.Linear`` except the family's protected layers."""
    protected = set(protected_layer_names(model, adapter, component))
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear)) and name not in protected
    }


def prunable_parameter_count(model: nn.Module) -> int:
    return sum(module.weight.numel() for module in prunable_layers(model).values())


@dataclass
class CalibrationStats:
    """What the calibration pass measured, per prunable layer (names as in ``prunable_layers``)."""

    gradients: dict[str, torch.Tensor] = field(default_factory=dict)  # accumulated dL/dw (last reset)
    taylor_per_batch_sum: dict[str, torch.Tensor] = field(default_factory=dict)  # sum_b |w * g_b|
    timestep_contributions: dict[str, dict[int, float]] = field(default_factory=dict)  # layer -> t -> sum|w * g_t|
    timestep_weights: list = field(default_factory=list)  # [(t, weight)] actually used
    losses: dict[int, list] = field(default_factory=dict)  # t -> loss per batch
    stopped_at: int | None = None  # threshold schedule: the last visited t
    num_images: int = 0
    timesteps_per_group: int = 1  # timesteps per backward pass (columns of timestep_contributions)


def copy_scheduler(scheduler):
    """A private copy: ``add_noise`` moves its tables to the sample's device (a mutation)."""
    return copy.deepcopy(scheduler)
