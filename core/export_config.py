"""An honest ``unet/config.json`` for a structured checkpoint whose shapes no UNet2DModel config expresses.

``PruneResult.save`` writes the dense model's config there (the loader needs it to build the
module tree before resizing every layer to the safetensors shapes), so a reader of the file, or
plain ``diffusers``, would believe the dense widths. :func:`write_shape_config` rewrites it:

* ``_class_name`` becomes ``DiffPrunePrunedUNet2DModel``, so plain diffusers refuses the folder
  instead of building dense shapes that do not match the weights;
* ``block_out_channels`` becomes each block's real output width, ``layer_shapes`` lists the shape
  of every weight, ``attention_heads`` the kept heads per attention module;
* ``dense_config`` keeps the original config, which ``core.checkpoint.rebuild_unet`` builds from.

Checkpoints that plain diffusers loads exactly (unstructured, N:M, or a structured cut that is
expressible) are left as they are: their config already tells the truth.
"""
from __future__ import annotations

import json
from pathlib import Path

CLASS_NAME = "DiffPrunePrunedUNet2DModel"  # the default model's; other classes get the same prefix


def write_shape_config(checkpoint_dir) -> bool:
    """Rewrite ``<component>/config.json`` of every pruned component whose shapes its plain config
    would misstate (UNet, transformer or autoencoder). Returns True when any was rewritten."""
    from .pipeline import PRUNED_MARKER

    checkpoint_dir = Path(checkpoint_dir)
    marker = json.loads((checkpoint_dir / PRUNED_MARKER).read_text())
    if marker.get("plain_diffusers_loadable"):
        return False
    components = marker.get("components") or {"unet": {"plain_diffusers_loadable": False,
                                                       "structure": marker.get("structure")}}
    rewritten = False
    for name, entry in components.items():
        if not entry.get("plain_diffusers_loadable"):
            rewritten |= _rewrite(checkpoint_dir / name, entry.get("structure") or {})
    return rewritten


def _rewrite(directory: Path, structure: dict) -> bool:
    from safetensors import safe_open

    config_path = directory / "config.json"
    weights_path = directory / "diffusion_pytorch_model.safetensors"
    if not config_path.exists() or not weights_path.exists():
        return False
    dense_config = json.loads(config_path.read_text())
    if "dense_config" in dense_config:
        return False
    with safe_open(str(weights_path), "pt") as handle:
        shapes = {key: list(handle.get_slice(key).get_shape()) for key in handle.keys()}
    config = {key: value for key, value in dense_config.items() if key.startswith("_")}
    config.update(
        _class_name="DiffPrunePruned" + str(dense_config.get("_class_name", "Model")),
        note="Pruned by DiffPrune Studio: widths differ per layer. Load with core.load_pipeline; "
             "dense_config is the model the pruned one was cut from.",
        layer_shapes={key: value for key, value in shapes.items() if key.endswith(".weight")},
        dense_config=dense_config,
    )
    blocks = len(dense_config.get("block_out_channels") or [])
    if blocks:  # UNets: each down block's real output width
        config["block_out_channels"] = [shapes.get(f"down_blocks.{i}.resnets.0.conv1.weight", [None])[0]
                                        for i in range(blocks)]
    heads = {n: e["heads"] for n, e in (structure.get("attention") or {}).items() if isinstance(e, dict) and "heads" in e}
    if heads:
        config["attention_heads"] = heads
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
    return True
