"""``ffn``: hidden neurons of every diffusers ``FeedForward`` (``ff`` and, in SD3's joint blocks,
``ff_context``; the GEGLU FFNs of Stable Diffusion's transformer blocks, both halves together).

A neuron's score is the sum of its weights' scores (its up-projection row(s) and its
down-projection column); every FFN loses the same fraction of its neurons (local, as Diff-Pruning's
channel ratio), the lowest scored first, at least one kept. The cut itself is
``core.models.transformer_cuts.remove_ffn_neurons``. No diffusers config expresses a narrower FFN
(``4 x dim``): such checkpoints reload through ``load_pipeline``. Sparsity is the fraction of
prunable parameters removed, met within ``SPARSITY_TOLERANCE`` or refused with the reachable range.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..criteria import prunable_layers
from ..models.transformer_cuts import ffn_layers, remove_ffn_neurons
from .base import SPARSITY_TOLERANCE, Granularity, GranularityOutcome, other_granularities, register_granularity


def _feed_forwards(model: nn.Module) -> dict:
    from ..models.base import feed_forward_modules  # the adapters' one definition of a transformer MLP

    return feed_forward_modules(model)


def _prunable_total(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in prunable_layers(model).values())


def _fraction_removed(width: int, ratio: float) -> int:
    """Units removed from ``width`` at ``ratio``; at least one unit is always kept."""
    return min(width - 1, int(math.floor(ratio * width + 1e-9)))


def _choose_ratio(widths: dict, weight_per_unit: dict, total: int, spec, granularity: str) -> float:
    """The local ratio whose removed weights come closest to ``spec.sparsity`` (explicit
    ``spec.channel_ratio`` wins); ValueError naming the reachable range when none is close enough."""
    if spec.channel_ratio is not None:
        return float(spec.channel_ratio)

    def sparsity_at(ratio):
        return sum(_fraction_removed(widths[n], ratio) * weight_per_unit[n] for n in widths) / total

    candidates = sorted({0.0} | {k / w for w in widths.values() for k in range(1, w)})
    ratio = min(candidates, key=lambda r: (abs(sparsity_at(r) - spec.sparsity), r))
    if abs(sparsity_at(ratio) - spec.sparsity) > SPARSITY_TOLERANCE:
        maximum = sparsity_at(max(candidates))
        raise ValueError(
            f"sparsity {spec.sparsity:g} cannot be reached with granularity {granularity!r} on this model: it removes at "
            f"most {maximum:.3f} of the prunable parameters (closest {sparsity_at(ratio):.3f}); allowed: sparsity in "
            f"[0, {maximum + SPARSITY_TOLERANCE:.3f}] or granularity 'unstructured'"
        )
    return ratio


def _prunable_ffns(model: nn.Module) -> dict:
    layers = {id(m) for m in prunable_layers(model).values()}
    out = {}
    for name, ff in _feed_forwards(model).items():
        up, down, _ = ffn_layers(ff)
        if id(up) in layers and id(down) in layers and down.in_features >= 2:
            out[name] = ff
    return out


def check_ffn(model, spec):
    if not _prunable_ffns(model):
        raise ValueError(f"granularity 'ffn' needs feed-forward blocks (transformer MLPs); this {type(model).__name__} "
                         f"has none with prunable layers; allowed: {other_granularities(model, spec, 'ffn')}")


def _ffn_scores(model, name, ff, scores) -> torch.Tensor:
    names = {id(m): n for n, m in model.named_modules()}
    up, down, gated = ffn_layers(ff)
    width = down.in_features
    up_score = scores[names[id(up)]].double().cpu().reshape(up.out_features, -1).sum(1)
    neuron = up_score[:width] + up_score[width:] if gated else up_score
    return neuron + scores[names[id(down)]].double().cpu().sum(0)


def _ffn_plan(model, spec) -> tuple[dict, dict, float]:
    """(FeedForward modules, their widths, the local ratio that reaches ``spec``): structure only."""
    check_ffn(model, spec)
    total = _prunable_total(model)
    ffs = _prunable_ffns(model)
    widths = {n: ffn_layers(ff)[1].in_features for n, ff in ffs.items()}
    per_neuron = {n: (lambda up, down, gated: up.in_features * (2 if gated else 1) + down.out_features)(*ffn_layers(ff))
                  for n, ff in ffs.items()}
    return ffs, widths, _choose_ratio(widths, per_neuron, total, spec, "ffn")


def neurons_to_remove(model, spec) -> dict:
    """FeedForward name -> the number of hidden neurons ``apply_ffn`` removes for ``spec`` (the
    count depends on the structure only; which neurons go is the scores' choice)."""
    _, widths, ratio = _ffn_plan(model, spec)
    return {name: _fraction_removed(width, ratio) for name, width in widths.items()}


def apply_ffn(model, scores, spec, progress=None):
    ffs, widths, ratio = _ffn_plan(model, spec)
    outcome = GranularityOutcome(model=model, structural_ratio=ratio)
    for name, ff in ffs.items():
        neuron_scores = _ffn_scores(model, name, ff, scores)
        outcome.importance[name] = neuron_scores.float().numpy()
        outcome.units_before[name] = widths[name]
        removed = _fraction_removed(widths[name], ratio)
        if removed:
            drop = set(torch.argsort(neuron_scores, stable=True)[:removed].tolist())
            remove_ffn_neurons(ff, [i for i in range(widths[name]) if i not in drop])
        outcome.units_after[name] = ffn_layers(ff)[1].in_features
    return outcome


ENTRY = Granularity("ffn", apply_ffn, check_ffn, True, "hidden neurons of the feed-forward blocks (ff, ff_context)",
                    units_to_remove=neurons_to_remove)
register_granularity(ENTRY)
