"""Granularities (one file per granularity, each registering itself): turn per-weight scores (``core.criteria``) into masks or structural cuts.

* ``unstructured`` -- per layer, the ``sparsity`` fraction of the lowest-scored weights is zeroed
  (layer-wise, so every prunable layer loses the same fraction and the total is exact).
* ``N:M``          -- in every group of M consecutive input weights (input channels at a fixed
  output channel and kernel position) the N highest-scored weights are kept ("2:4" keeps 2 of 4,
  the pattern of NVIDIA's sparse tensor cores): sparsity 1 - N/M.
* ``channel``      -- Torch-Pruning's ``BasePruner`` removes output channels with their whole
  dependency group; a channel's score is the sum of its group's per-weight scores (local
  pruning per group, as Diff-Pruning). GroupNorm groups are respected through Torch-Pruning's
  channel groups, attention channels are removed evenly per head (``num_heads``), ``conv_out``
  is never pruned, and the diffusers attributes that cache sizes are re-synchronised.
* ``head``         -- whole heads of every multi-head ``Attention`` (q/k/v rows, ``to_out`` columns);
  a head's score is the sum of its weights' scores; ``Attention.heads``/``inner_dim`` are updated.

Masked granularities multiply the mask into the weight, so an exported checkpoint contains the
zeros. Structural ones return a physically smaller network.
"""
from __future__ import annotations

from ..registry import GRANULARITIES
from .base import (NM_CHOICES, SPARSITY_TOLERANCE, Granularity, GranularityOutcome, attention_modules,
                   parse_granularity, plain_diffusers_config, register_granularity, sync_diffusers_attributes)
from . import unstructured, nm, channel, head, ffn, block  # noqa: E402,F401,I001 - registration order = menu order
from .channel import (ChannelPlanner, ConsumerScores, WeightScoreImportance, apply_channel, example_inputs,
                      max_channel_ratio)
from .head import apply_head, check_head
from .nm import apply_nm, check_nm, nm_keep_mask
from .unstructured import apply_unstructured

# Choice list for the UI: N:M expanded to its supported patterns.
GRANULARITY_CHOICES = ("unstructured", *NM_CHOICES, "channel", "head", "ffn", "block")

__all__ = [
    "GRANULARITIES", "GRANULARITY_CHOICES", "NM_CHOICES", "SPARSITY_TOLERANCE", "ChannelPlanner", "ConsumerScores",
    "Granularity", "GranularityOutcome", "WeightScoreImportance", "apply_channel", "apply_head", "apply_nm",
    "apply_unstructured", "attention_modules", "check_head", "check_nm", "example_inputs", "max_channel_ratio",
    "nm_keep_mask", "parse_granularity", "plain_diffusers_config", "register_granularity", "sync_diffusers_attributes",
]
