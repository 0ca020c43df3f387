"""Granularities for transformer blocks and UNet depth: ``ffn`` and ``block``, turning per-weight
scores (``core.criteria``) into structural cuts (``head`` is ``core.granularity``'s, through the
adapters' ``head_groups``/``cut_heads`` and ``transformer_cuts.remove_heads``).

* ``ffn``   -- hidden neurons of every ``FeedForward`` (``ff`` and, in SD3's joint blocks,
  ``ff_context``; the GEGLU FFNs of Stable Diffusion's transformer blocks). A neuron's score is
  the sum of its weights' scores (its up-projection row(s) and down-projection column); every FFN
  loses the same fraction of its neurons (local, as Diff-Pruning's channel ratio), the lowest
  scored first, at least one neuron kept.
* ``block`` -- whole blocks. Transformers: ``transformer_blocks`` (TinyFusion's depth pruning;
  SD3's ``context_pre_only`` last block is kept). Stable Diffusion's UNet: the mid block and
  resnet(+attention) layers of a down stage removed with their mirrored up layer, as BK-SDM does,
  where the remaining shapes are those of a config with fewer ``layers_per_block``. A block's
  score is the mean score of its prunable weights (blocks differ in size); the lowest blocks go
  first, and the number removed is the one whose sparsity is closest to the target (within half
  the smallest block's share: blocks are coarse units; the report gives the sparsity reached). The result reloads with plain diffusers ``from_pretrained``
  (``num_layers``, ``layers_per_block``, ``mid_block_type`` in the config).

Sparsity keeps the one meaning: the fraction of prunable parameters (the weights of the prunable
conv/linear layers) removed. Structural units are discrete, so a target is met within
``SPARSITY_TOLERANCE`` or refused with the reachable range.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .criteria import prunable_layers
from .granularity import SPARSITY_TOLERANCE, Granularity, GranularityOutcome, register_granularity
from .models.transformer_cuts import ffn_layers, remove_blocks, remove_ffn_neurons, removable_blocks


def _feed_forwards(model: nn.Module) -> dict:
    from diffusers.models.attention import FeedForward

    return {name: module for name, module in model.named_modules() if isinstance(module, FeedForward)}


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


# ------------------------------------------------------------------------------------------ ffn
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
        raise ValueError(f"granularity 'ffn' needs feed-forward blocks (diffusers FeedForward); this {type(model).__name__} "
                         "has none with prunable layers; allowed: 'unstructured', N:M, 'channel' or 'head'")


def _ffn_scores(model, name, ff, scores) -> torch.Tensor:
    names = {id(m): n for n, m in model.named_modules()}
    up, down, gated = ffn_layers(ff)
    width = down.in_features
    up_score = scores[names[id(up)]].double().cpu().reshape(up.out_features, -1).sum(1)
    neuron = up_score[:width] + up_score[width:] if gated else up_score
    return neuron + scores[names[id(down)]].double().cpu().sum(0)


def apply_ffn(model, scores, spec, progress=None):
    check_ffn(model, spec)
    total = _prunable_total(model)
    ffs = _prunable_ffns(model)
    widths = {n: ffn_layers(ff)[1].in_features for n, ff in ffs.items()}
    per_neuron = {n: (lambda up, down, gated: up.in_features * (2 if gated else 1) + down.out_features)(*ffn_layers(ff))
                  for n, ff in ffs.items()}
    ratio = _choose_ratio(widths, per_neuron, total, spec, "ffn")
    outcome = GranularityOutcome(unet=model, structural_ratio=ratio)
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


# ---------------------------------------------------------------------------------------- block
def _unet_block_units(model) -> list[dict]:
    """Removable depth units of a ``UNet2DConditionModel``: the mid block, and (down stage i,
    layer j) with its mirrored up layer ``L_i - 1 - j`` (the one that reads its skip connection)
    where a config with one layer fewer in that stage has the same remaining shapes."""
    units = []
    if getattr(model, "mid_block", None) is not None:
        units.append({"name": "mid_block", "modules": [model.mid_block], "kind": "mid"})
    layers = model.config.layers_per_block
    layers = [layers] * len(model.down_blocks) if isinstance(layers, int) else list(layers)
    config = dict(model.config)
    for stage, block in enumerate(model.down_blocks):
        count = len(block.resnets)
        if count < 2:
            continue
        up = model.up_blocks[len(model.down_blocks) - 1 - stage]
        for layer in range(count):
            mirror = count - 1 - layer
            modules = [block.resnets[layer], up.resnets[mirror]]
            for owner, index in ((block, layer), (up, mirror)):
                attentions = getattr(owner, "attentions", None)
                if attentions is not None and len(attentions) > index:
                    modules.append(attentions[index])
            units.append({"name": f"down_blocks.{stage}.layer{layer}", "modules": modules, "kind": "layer",
                          "stage": stage, "layer": layer, "mirror": mirror})
    # keep only the units whose removal a config can express (checked one at a time, on meta tensors)
    expressible = []
    for unit in units:
        if unit["kind"] == "mid":
            expressible.append(unit)
            continue
        trial_layers = list(layers)
        trial_layers[unit["stage"]] -= 1
        shapes = _unet_shapes_without(model, [unit])
        candidate = _config_shapes(type(model), config, {"layers_per_block": trial_layers})
        if candidate is not None and candidate == shapes:
            expressible.append(unit)
    return expressible


def _config_shapes(cls, config, overrides):
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(config).items() if not k.startswith("_")}
    config.update(overrides)
    try:
        with torch.device("meta"):
            model = cls.from_config(config)
    except Exception:  # noqa: BLE001 - an inexpressible layout raises anything from a shape check
        return None
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _unet_shapes_without(model, units) -> dict:
    """State-dict shapes (renumbered as a fresh model would name them) after removing ``units``."""
    drop = {id(m) for unit in units for m in unit["modules"]}
    shapes = {}
    for prefix, blocks in (("down_blocks", model.down_blocks), ("up_blocks", model.up_blocks)):
        for b, block in enumerate(blocks):
            for name, child in block.named_children():
                if isinstance(child, nn.ModuleList) and name in ("resnets", "attentions"):
                    kept = [m for m in child if id(m) not in drop]
                    for i, m in enumerate(kept):
                        for key, value in m.state_dict().items():
                            shapes[f"{prefix}.{b}.{name}.{i}.{key}"] = tuple(value.shape)
                else:
                    for key, value in child.state_dict().items():
                        shapes[f"{prefix}.{b}.{name}.{key}"] = tuple(value.shape)
    for name, child in model.named_children():
        if name in ("down_blocks", "up_blocks") or (name == "mid_block" and id(child) in drop):
            continue
        for key, value in child.state_dict().items():
            shapes[f"{name}.{key}"] = tuple(value.shape)
    return shapes


def _block_units(model) -> list[dict]:
    if hasattr(model, "transformer_blocks"):
        blocks = model.transformer_blocks
        return [{"name": f"transformer_blocks.{i}", "modules": [blocks[i]], "kind": "transformer", "index": i}
                for i in removable_blocks(model)]
    if hasattr(model, "down_blocks") and hasattr(model, "up_blocks") and hasattr(model.config, "layers_per_block"):
        return _unet_block_units(model)
    return []


def check_block(model, spec):
    units = _block_units(model)
    if len(units) < 1 or (hasattr(model, "transformer_blocks") and len(model.transformer_blocks) < 2):
        raise ValueError(f"granularity 'block' finds no removable block in this {type(model).__name__} (a transformer needs "
                         "two blocks or more; a UNet a mid block or a stage with two layers or more); allowed: "
                         "'unstructured', N:M, 'channel' or 'head'")


def _unit_weights(unit, prunable_ids) -> int:
    return sum(m.weight.numel() for module in unit["modules"] for m in module.modules() if id(m) in prunable_ids)


def _unit_score(unit, names, scores) -> float:
    values = [scores[names[id(m)]].double().sum().item() / m.weight.numel()
              for module in unit["modules"] for m in module.modules() if id(m) in names and names[id(m)] in scores]
    return float(np.mean(values)) if values else 0.0


def _compatible(chosen: list, unit: dict) -> bool:
    """A UNet stage may lose only one layer per pass (shapes are checked per single removal)."""
    return unit["kind"] != "layer" or all(c.get("stage") != unit["stage"] for c in chosen)


EXHAUSTIVE_BLOCK_UNITS = 12  # up to this many units every compatible subset is tried (2**12 sums)


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
    prunable = prunable_layers(model)
    names = {id(m): n for n, m in prunable.items()}
    total = sum(m.weight.numel() for m in prunable.values())
    units = _block_units(model)
    for unit in units:
        unit["weights"] = _unit_weights(unit, set(names))
        unit["score"] = _unit_score(unit, names, scores)
    # a transformer keeps at least one block
    most = len(model.transformer_blocks) - 1 if hasattr(model, "transformer_blocks") else len(units)
    best, reachable, tolerance = _choose_blocks(units, total, spec.sparsity, most)
    if best is None:
        steps = ", ".join(f"{r:.3f}" for r in reachable)
        raise ValueError(f"sparsity {spec.sparsity:g} cannot be reached with granularity 'block' on this model: whole "
                         f"blocks remove {steps} of the prunable parameters; allowed: a sparsity within {tolerance:.3f} "
                         "of one of those, or a finer granularity ('ffn', 'head', 'unstructured')")
    outcome = GranularityOutcome(unet=model, structural_ratio=len(best) / max(1, len(units)))
    outcome.importance["blocks"] = np.array([u["score"] for u in units], dtype=np.float32)
    outcome.notes["blocks"] = {u["name"]: u["score"] for u in units}
    outcome.notes["removed_blocks"] = [u["name"] for u in best]
    old_names = {id(module): name for name, module in model.named_modules()}
    if hasattr(model, "transformer_blocks"):
        outcome.units_before["transformer_blocks"] = len(model.transformer_blocks)
        gone = {u["index"] for u in best}
        remove_blocks(model, [i for i in range(len(model.transformer_blocks)) if i not in gone])
        outcome.units_after["transformer_blocks"] = len(model.transformer_blocks)
    else:
        outcome.units_before["layers"] = sum(len(b.resnets) for b in model.down_blocks) + (model.mid_block is not None)
        _remove_unet_units(model, best)
        outcome.units_after["layers"] = sum(len(b.resnets) for b in model.down_blocks) + (model.mid_block is not None)
    # the kept blocks are renumbered (a ModuleList has no gaps): new layer name -> name in the dense
    # model, so that per-layer reports compare a layer with itself
    outcome.notes["renamed_layers"] = {name: old_names[id(module)] for name, module in model.named_modules()
                                       if old_names.get(id(module), name) != name}
    return outcome


def _remove_unet_units(model, units) -> None:
    drop = {id(m) for unit in units for m in unit["modules"]}
    for blocks in (model.down_blocks, model.up_blocks):
        for block in blocks:
            for attribute in ("resnets", "attentions"):
                modules = getattr(block, attribute, None)
                if isinstance(modules, nn.ModuleList):
                    setattr(block, attribute, nn.ModuleList([m for m in modules if id(m) not in drop]))
            if hasattr(block, "num_layers"):
                block.num_layers = len(block.resnets)
    updates = {"layers_per_block": [len(block.resnets) for block in model.down_blocks]}
    if any(u["kind"] == "mid" for u in units):
        model.mid_block = None
        updates["mid_block_type"] = None
    model.register_to_config(**updates)


# Registry entries. They are registered where the engine assembles its granularity registry (the
# spec, the criteria's allowed lists and the UI choices read it).
ENTRIES = (
    Granularity("ffn", apply_ffn, check_ffn, True, "hidden neurons of the feed-forward blocks (ff, ff_context)"),
    Granularity("block", apply_block, check_block, True, "whole blocks (transformer blocks; UNet layers with their mirror)"),
)


def register() -> None:
    """Add ``ffn`` and ``block`` to ``core.granularity.GRANULARITIES`` (idempotent)."""
    for entry in ENTRIES:
        register_granularity(entry)
