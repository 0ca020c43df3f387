"""Depth cuts of diffusers UNets (``UNet2DModel``, ``UNet2DConditionModel``), as BK-SDM removes
blocks: the mid block (``mid_block_type=None``) and resnet(+attention) layers of a down stage
removed together with their mirrored up layer (the one that reads their skip connection).

A layer is offered only where a config with one layer fewer in that stage (``layers_per_block``
per stage) has exactly the remaining shapes, checked one removal at a time on meta tensors; so a
stage loses at most one layer per cut (units of one stage share their ``exclusive`` key). After
the cut the module's config records the new depth, so ``from_config`` rebuilds the same shapes.

Units are the dicts of ``ModelAdapter.block_units``: ``name``, ``modules``, ``kind`` (``"mid"`` or
``"layer"``), ``exclusive``, and for layers ``stage``, ``layer`` and ``mirror``.
"""
from __future__ import annotations

import torch
from torch import nn


def block_units(model) -> list[dict]:
    """Removable depth units of a UNet: the mid block, and (down stage i, layer j) with its
    mirrored up layer ``L_i - 1 - j`` where a config with one layer fewer in that stage has the
    same remaining shapes."""
    if not (hasattr(model, "down_blocks") and hasattr(model, "up_blocks") and hasattr(model.config, "layers_per_block")):
        return []
    units = []
    if getattr(model, "mid_block", None) is not None:
        units.append({"name": "mid_block", "modules": [model.mid_block], "kind": "mid", "exclusive": None})
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
                          "exclusive": f"down_blocks.{stage}", "stage": stage, "layer": layer, "mirror": mirror})
    # keep only the units whose removal a config can express (checked one at a time, on meta tensors)
    expressible = []
    for unit in units:
        if unit["kind"] == "mid":
            expressible.append(unit)
            continue
        trial_layers = list(layers)
        trial_layers[unit["stage"]] -= 1
        shapes = _shapes_without(model, [unit])
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


def _shapes_without(model, units) -> dict:
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


def remove_block_units(model, units) -> None:
    """Remove ``units`` (from :func:`block_units`) in place; ``layers_per_block`` (and
    ``mid_block_type`` when the mid block goes) follow in the config."""
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


def block_counts(model) -> dict:
    """``{"layers": n}``: the down stages' resnet layers plus the mid block (what depth cuts remove)."""
    return {"layers": sum(len(b.resnets) for b in model.down_blocks) + (model.mid_block is not None)}


def down_block_widths(dense_config: dict, shapes: dict) -> dict:
    """``{"block_out_channels": [...]}``: each down block's real output width, read from the cut
    weights' ``shapes`` (key -> shape) for a config that has ``block_out_channels``; ``{}`` otherwise."""
    blocks = len(dense_config.get("block_out_channels") or [])
    if not blocks:
        return {}
    return {"block_out_channels": [shapes.get(f"down_blocks.{i}.resnets.0.conv1.weight", [None])[0]
                                   for i in range(blocks)]}
