"""``block``: whole blocks, scored by the chosen criterion (mean score of a block's prunable weights:
blocks differ in size). The removable units, the cut and the config update come from the
family's adapter (``ModelAdapter.block_units`` / ``remove_blocks``, ``core.models``):

* Transformers (DiT, PixArt, SD3): ``transformer_blocks`` (TinyFusion's depth pruning); SD3's
  ``context_pre_only`` last block is kept. The config's ``num_layers`` (and SD3.5's
  ``dual_attention_layers``) follow, so plain diffusers ``from_pretrained`` reloads the result.
* Stable Diffusion's UNet: the mid block (``mid_block_type=None``) and resnet(+attention) layers of a
  down stage removed with their mirrored up layer (the one that reads its skip connection), as
  BK-SDM does, where a config with one layer fewer in that stage (``layers_per_block`` per stage)
  has exactly the remaining shapes.

The set removed is the least important one (sum of its blocks' scores) whose sparsity is within
half the smallest block's share of the prunable parameters (or ``SPARSITY_TOLERANCE``) of the
target: blocks are coarse units, so the outcome's notes carry the requested and the reached
sparsity and, when they differ (by ``SHORTFALL_SHOWN`` or more), a sentence saying so
(``notes["sparsity_shortfall"]``, shown in the report's totals); otherwise a ValueError lists the
reachable sparsities. The kept blocks are renumbered; ``notes["renamed_layers"]`` maps every new
layer name to its name in the dense model.
"""
from __future__ import annotations

import numpy as np

from ..criteria import _rules, prunable_layers
from .base import SPARSITY_TOLERANCE, Granularity, GranularityOutcome, other_granularities, register_granularity


def check_block(model, spec):
    adapter, component = _rules(model)
    units = adapter.block_units(component, model)
    if len(units) < 1 or adapter.max_blocks_removed(component, model, units) < 1:
        raise ValueError(f"granularity 'block' finds no removable block in this {type(model).__name__} (a transformer needs "
                         "two blocks or more; a UNet a mid block or a stage with two layers or more); allowed: "
                         f"{other_granularities(model, spec, 'block')}")


def _unit_weights(unit, prunable_ids) -> int:
    return sum(m.weight.numel() for module in unit["modules"] for m in module.modules() if id(m) in prunable_ids)


def _unit_score(unit, names, scores) -> float:
    values = [scores[names[id(m)]].double().sum().item() / m.weight.numel()
              for module in unit["modules"] for m in module.modules() if id(m) in names and names[id(m)] in scores]
    return float(np.mean(values)) if values else 0.0


def _compatible(chosen: list, unit: dict) -> bool:
    """Units that share an ``exclusive`` key are never removed together (a UNet stage loses one
    layer per pass: its shapes are checked per single removal)."""
    key = unit.get("exclusive")
    return key is None or all(c.get("exclusive") != key for c in chosen)


EXHAUSTIVE_BLOCK_UNITS = 12  # up to this many units every compatible subset is tried (2**12 sums)
SHORTFALL_SHOWN = 0.0005  # half the 0.1 % the sentence shows: a smaller difference reads as the target


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.1f}".rstrip("0").rstrip(".")


def shortfall_sentence(requested: float, reached: float) -> str | None:
    """The sentence the report carries when whole blocks cannot reach the requested sparsity (None when they do)."""
    if abs(reached - requested) < SHORTFALL_SHOWN:
        return None
    return (f"block: asked for {_percent(requested)} % of the prunable parameters, removing whole blocks reaches "
            f"{_percent(reached)} % (the nearest whole number of blocks)")


def _choose_blocks(units, total, target, most):
    """(blocks to remove, reachable sparsities, tolerance). Blocks are coarse units: a sparsity
    within half the smallest block's share of the prunable parameters (or SPARSITY_TOLERANCE) of
    the target is accepted. Among the sets that reach it, the one removing the least importance
    (sum of its blocks' scores) wins; with many units (transformers, equal blocks) the lowest
    scored blocks are taken in order instead. None when nothing reaches the target."""
    import itertools

    tolerance = max(SPARSITY_TOLERANCE, 0.5 * min(u["weights"] for u in units) / total) if units else SPARSITY_TOLERANCE
    order = sorted(units, key=lambda u: (u["score"], u["name"]))
    if len(units) <= EXHAUSTIVE_BLOCK_UNITS:
        subsets = []
        for size in range(0, min(most, len(order)) + 1):
            for subset in itertools.combinations(order, size):
                if all(_compatible(list(subset[:i]), unit) for i, unit in enumerate(subset)):
                    subsets.append(list(subset))
    else:
        subsets = [order[:size] for size in range(0, min(most, len(order)) + 1)]
    share = lambda subset: sum(u["weights"] for u in subset) / total  # noqa: E731
    reachable = sorted({round(share(s), 3) for s in subsets})
    fitting = [s for s in subsets if abs(share(s) - target) <= tolerance and (s or target == 0)]
    if not fitting:
        return None, reachable, tolerance
    importance = lambda subset: sum(u["score"] * u["weights"] for u in subset)  # noqa: E731
    best = min(fitting, key=lambda s: (importance(s), abs(share(s) - target), [u["name"] for u in s]))
    return best, reachable, tolerance


def apply_block(model, scores, spec, progress=None):
    check_block(model, spec)
    if spec.channel_ratio is not None:
        raise ValueError("channel_ratio does not apply to granularity 'block'; give sparsity")
    adapter, component = _rules(model)
    prunable = prunable_layers(model)
    names = {id(m): n for n, m in prunable.items()}
    total = sum(m.weight.numel() for m in prunable.values())
    units = adapter.block_units(component, model)
    for unit in units:
        unit["weights"] = _unit_weights(unit, set(names))
        unit["score"] = _unit_score(unit, names, scores)
    most = adapter.max_blocks_removed(component, model, units)  # e.g. a transformer keeps one block
    best, reachable, tolerance = _choose_blocks(units, total, spec.sparsity, most)
    if best is None:
        steps = ", ".join(f"{r:.3f}" for r in reachable)
        raise ValueError(f"sparsity {spec.sparsity:g} cannot be reached with granularity 'block' on this model: whole "
                         f"blocks remove {steps} of the prunable parameters; allowed: a sparsity within {tolerance:.3f} "
                         "of one of those, or a finer granularity ('ffn', 'head', 'unstructured')")
    outcome = GranularityOutcome(model=model, structural_ratio=len(best) / max(1, len(units)))
    reached = sum(u["weights"] for u in best) / total
    outcome.notes["requested_sparsity"] = float(spec.sparsity)
    outcome.notes["reached_sparsity"] = reached
    outcome.notes["sparsity_shortfall"] = shortfall_sentence(float(spec.sparsity), reached)
    outcome.importance["blocks"] = np.array([u["score"] for u in units], dtype=np.float32)
    outcome.notes["blocks"] = {u["name"]: u["score"] for u in units}
    outcome.notes["removed_blocks"] = [u["name"] for u in best]
    old_names = {id(module): name for name, module in model.named_modules()}
    outcome.units_before.update(adapter.block_counts(component, model))
    adapter.remove_blocks(component, model, best)
    outcome.units_after.update(adapter.block_counts(component, model))
    # the kept blocks are renumbered (a ModuleList has no gaps): new layer name -> name in the dense
    # model, so that per-layer reports compare a layer with itself
    outcome.notes["renamed_layers"] = {name: old_names[id(module)] for name, module in model.named_modules()
                                       if old_names.get(id(module), name) != name}
    return outcome


# Registry entries. They are registered where the engine assembles its granularity registry (the
# spec, the criteria's allowed lists and the UI choices read it).


ENTRY = Granularity("block", apply_block, check_block, True, "whole blocks (transformer blocks; UNet layers with their mirror)")
register_granularity(ENTRY)
