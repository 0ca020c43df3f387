"""``block``: whole blocks, scored by the chosen criterion (mean score of a block's prunable weights:
blocks differ in size).

* Transformers (DiT, PixArt, SD3): ``transformer_blocks`` (TinyFusion's depth pruning); SD3's
  ``context_pre_only`` last block is kept. The config's ``num_layers`` (and SD3.5's
  ``dual_attention_layers``) follow, so plain diffusers ``from_pretrained`` reloads the result.
* Stable Diffusion's UNet: the mid block (``mid_block_type=None``) and resnet(+attention) layers of a
  down stage removed with their mirrored up layer (the one that reads its skip connection), as
  BK-SDM does, where a config with one layer fewer in that stage (``layers_per_block`` per stage)
  has exactly the remaining shapes.

The set removed is the least important one (sum of its blocks' scores) whose sparsity is within
half the smallest block's share of the prunable parameters (or ``SPARSITY_TOLERANCE``) of the
target: blocks are coarse units, the report gives the sparsity reached; otherwise a ValueError lists
the reachable sparsities. The kept blocks are renumbered; ``notes["renamed_layers"]`` maps every
new layer name to its name in the dense model.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..criteria import prunable_layers
from ..models.transformer_cuts import remove_blocks, removable_blocks
from .base import SPARSITY_TOLERANCE, Granularity, GranularityOutcome, other_granularities, register_granularity


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
                         f"{other_granularities(model, spec, 'block')}")


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


ENTRY = Granularity("block", apply_block, check_block, True, "whole blocks (transformer blocks; UNet layers with their mirror)")
register_granularity(ENTRY)
