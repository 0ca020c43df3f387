"""What every granularity shares: the ``Granularity`` record, its outcome, parsing of names and
N:M patterns, and the adapter look-ups (attention modules, fix-ups, plain configs, example inputs).
One file per granularity in this package registers itself in ``core.registry.GRANULARITIES``."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..criteria import _rules
from ..registry import GRANULARITIES

NM_CHOICES = ("2:4", "4:8")
_NM_PATTERN = re.compile(r"^(\d+):(\d+)$")
SPARSITY_TOLERANCE = 0.02  # channel/head: reached parameter sparsity within 2 percentage points


def parse_granularity(text) -> tuple[str, tuple[int, int] | None]:
    """``"channel"`` -> ("channel", None); ``"2:4"`` -> ("N:M", (2, 4)). Raises ValueError."""
    allowed = f"{sorted(n for n in GRANULARITIES if n != 'N:M')} or an N:M pattern such as {list(NM_CHOICES)}"
    if not isinstance(text, str):
        raise ValueError(f"granularity must be one of {allowed}, got {text!r}")
    match = _NM_PATTERN.match(text)
    if match:
        n, m = int(match.group(1)), int(match.group(2))
        if not 0 < n < m:
            raise ValueError(f"granularity {text!r}: N:M needs 0 < N < M (for example {list(NM_CHOICES)}), got N={n}, M={m}")
        return "N:M", (n, m)
    if text in GRANULARITIES and text != "N:M":
        return text, None
    raise ValueError(f"granularity must be one of {allowed}, got {text!r}")


def attention_modules(model: nn.Module) -> dict:
    """Name -> attention module of ``model`` (the adapter's definition)."""
    adapter, component = _rules(model)
    return adapter.attention_modules(component, model)


def sync_diffusers_attributes(model: nn.Module, adapter=None, component: str | None = None) -> None:
    """After a structural cut: the family's fix-ups (cached sizes made consistent with the weights)."""
    adapter, component = _rules(model, adapter, component)
    adapter.fix_up(component, model)


def plain_diffusers_config(model: nn.Module, base_config: dict, adapter=None, component: str | None = None) -> dict | None:
    """The diffusers config that rebuilds exactly these shapes, or None when none exists."""
    adapter, component = _rules(model, adapter, component)
    return adapter.plain_config(component, model, base_config)


# ----------------------------------------------------------------------------------------------
# Outcomes and the registry
# ----------------------------------------------------------------------------------------------
@dataclass
class GranularityOutcome:
    """What a granularity did: the (pruned) network and what the report needs."""

    model: nn.Module
    importance: dict = field(default_factory=dict)  # layer -> np.ndarray (per channel / head / weight block)
    structural_ratio: float | None = None
    units_before: dict = field(default_factory=dict)  # layer -> number of units (channels, heads)
    units_after: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Granularity:
    """A registered granularity. ``apply(model, scores, spec, progress) -> GranularityOutcome``;
    ``check(model, spec)`` raises ValueError before any calibration when the model cannot take it.
    ``units_to_remove(model, spec) -> {module name: count}``, where the count of units a cut removes
    depends on the structure only (heads, FFN neurons): a criterion that chooses the units itself
    (``obs``) removes exactly that many."""

    name: str
    apply: Callable
    check: Callable
    structural: bool
    description: str = ""
    units_to_remove: Callable | None = None


# Heatmaps show one value per output unit; the input axis of a block importance is summed into at
# most this many bins, so a large model's report does not hold a float32 copy of its linear layers.
IMPORTANCE_INPUT_BINS = 64


def _block_importance(score: torch.Tensor) -> np.ndarray:
    """Per weight-block importance for heatmaps: output x input channel (kernel summed); wider
    inputs are summed in ``IMPORTANCE_INPUT_BINS`` contiguous bins."""
    blocks = score.reshape(score.shape[0], score.shape[1], -1)
    blocks = blocks[..., 0] if blocks.shape[-1] == 1 else blocks.sum(-1)  # a view for linear layers
    blocks = blocks.float()
    width = blocks.shape[1]
    if width > IMPORTANCE_INPUT_BINS:
        bins = torch.arange(width, device=blocks.device) * IMPORTANCE_INPUT_BINS // width  # contiguous, equal-sized
        blocks = blocks.new_zeros(blocks.shape[0], IMPORTANCE_INPUT_BINS).index_add_(1, bins, blocks)
    return blocks.cpu().numpy()


def other_granularities(model: nn.Module, spec, excluded: str) -> list:
    """The registered granularities other than ``excluded`` that this model accepts (for refusals):
    its family's ``check_cut`` (DiT, PixArt, SD3 refuse ``channel``) and each structural
    granularity's own check (``ffn`` needs FeedForward blocks, ``block`` removable blocks).
    The checks it runs may refuse in turn: their own messages are then not needed (no recursion)."""
    if _EXPLAINING:
        return []
    adapter, component = _rules(model)
    allowed = []
    _EXPLAINING.append(excluded)
    try:
        for name, entry in GRANULARITIES.items():
            if name == excluded:
                continue
            try:
                adapter.check_cut(component, model, name)
                if entry.structural:
                    entry.check(model, spec)
            except ValueError:
                continue
            allowed.append(name)
    finally:
        _EXPLAINING.pop()
    return allowed


_EXPLAINING: list = []  # granularities whose refusal is being explained (other_granularities)


def _no_check(model, spec):
    return None


def register_granularity(granularity: Granularity) -> Granularity:
    GRANULARITIES[granularity.name] = granularity
    return granularity
