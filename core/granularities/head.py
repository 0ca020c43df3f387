"""``head``: whole heads of every multi-head attention module (the adapter's ``head_groups``: producing
rows and reading columns); a head's score is the sum of its weights' scores; the adapter's one head
cut updates the head counts."""
from __future__ import annotations

import math

import torch

from ..criteria import _rules, prunable_parameter_count
from .base import SPARSITY_TOLERANCE, Granularity, GranularityOutcome, other_granularities, register_granularity, sync_diffusers_attributes


def _head_groups(model) -> dict:
    adapter, component = _rules(model)
    return adapter.head_groups(component, model)


def _multihead(model) -> dict:
    return {name: g for name, g in _head_groups(model).items() if g.heads >= 2 and g.has_key}


def _other_granularities(model, spec) -> list:
    return other_granularities(model, spec, "head")


def check_head(model, spec):
    if not _multihead(model):
        found = {name: g.heads for name, g in _head_groups(model).items()}
        raise ValueError(
            "granularity 'head' needs a model with multi-head attention (Attention.heads >= 2); "
            f"this model's attention layers have heads {found or 'none'}; allowed granularities: "
            f"{_other_granularities(model, spec)}"
        )


def _head_scores(group, scores) -> torch.Tensor:
    """A head's score: the sum of its weights' scores over every producing row and reading column."""
    total = torch.zeros(group.heads, dtype=torch.float64)
    for layer in group.rows:
        total += scores[layer].double().cpu().reshape(group.heads, group.head_dim, -1).sum((1, 2))
    for layer in group.columns:
        score = scores[layer].double().cpu()
        total += score.reshape(score.shape[0], group.heads, group.head_dim).sum((0, 2))
    return total


def _heads_removed(heads: int, ratio: float) -> int:
    return min(heads - 1, int(math.floor(ratio * heads + 1e-9)))


def _head_ratio(model, spec) -> float:
    """The fraction of heads every attention module loses for ``spec``: structure only."""
    check_head(model, spec)
    before = prunable_parameter_count(model)
    groups = _multihead(model)

    def sparsity_at(ratio: float) -> float:
        removed = sum(_heads_removed(g.heads, ratio) * g.weights_per_head for g in groups.values())
        return removed / before

    if spec.channel_ratio is not None:
        ratio = spec.channel_ratio
    else:
        # the reachable sparsities are discrete: try every distinct per-layer head count
        candidates = sorted({0.0} | {k / g.heads for g in groups.values() for k in range(1, g.heads)})
        ratio = min(candidates, key=lambda r: (abs(sparsity_at(r) - spec.sparsity), r))
        if abs(sparsity_at(ratio) - spec.sparsity) > SPARSITY_TOLERANCE:
            maximum = sparsity_at(max(candidates))
            raise ValueError(
                f"sparsity {spec.sparsity:g} cannot be reached with granularity 'head' on this model: removing whole "
                f"attention heads reaches at most {maximum:.3f} of the prunable parameters (closest {sparsity_at(ratio):.3f}); "
                f"allowed: sparsity in [0, {maximum + SPARSITY_TOLERANCE:.3f}] or a granularity in "
                f"{_other_granularities(model, spec)}"
            )
    return ratio


def heads_to_remove(model, spec) -> dict:
    """Attention name -> the number of heads ``apply_head`` removes for ``spec`` (the count
    depends on the structure only; which heads go is the scores' choice)."""
    ratio = _head_ratio(model, spec)
    return {name: _heads_removed(group.heads, ratio) for name, group in _multihead(model).items()}


def apply_head(model, scores, spec, progress=None):
    ratio = _head_ratio(model, spec)
    adapter, component = _rules(model)
    groups = _multihead(model)
    head_scores = {name: _head_scores(group, scores) for name, group in groups.items()}
    outcome = GranularityOutcome(model=model, structural_ratio=ratio)
    for name, group in groups.items():
        outcome.importance[name] = head_scores[name].float().numpy()
        outcome.units_before[name] = group.heads
        removed = _heads_removed(group.heads, ratio)
        if removed:
            order = torch.argsort(head_scores[name], stable=True)
            drop = set(order[:removed].tolist())
            adapter.cut_heads(component, model, name, [h for h in range(group.heads) if h not in drop])
        outcome.units_after[name] = int(group.module.heads)
    sync_diffusers_attributes(model)
    return outcome




register_granularity(Granularity("head", apply_head, check_head, True, "whole attention heads",
                                 units_to_remove=heads_to_remove))
