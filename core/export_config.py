"""An honest ``<component>/config.json`` for a structured checkpoint whose shapes no diffusers config expresses.

``PruneResult.save`` writes the dense model's config there (the loader needs it to build the
module tree before resizing every layer to the safetensors shapes), so a reader of the file, or
plain ``diffusers``, would believe the dense widths. :func:`write_shape_config` rewrites it:

* ``README`` says in a sentence that plain diffusers cannot build it and what loads it (upper case
  sorts first, so diffusers' warning about the config keys it ignores starts with it);
* ``_class_name`` gets the ``DiffPrunePruned`` prefix (the default model's UNet becomes
  ``DiffPrunePrunedUNet2DModel``), so the file does not claim to be a plain diffusers class (plain
  ``from_pretrained`` still refuses the folder, on the widths it reads: the stated per-block widths
  do not match the dense block layout);
* the family's adapter states the real widths it knows how to read from the weights
  (``ModelAdapter.shape_config``: a UNet's per-block output widths), ``layer_shapes`` lists the
  shape of every weight, ``attention_heads`` the kept heads per attention module;
* ``dense_config`` keeps the original config, which the family's ``ModelAdapter.rebuild`` builds from.

Checkpoints that plain diffusers loads exactly (unstructured, N:M, or a structured cut that is
expressible) are left as they are: their config already tells the truth.
"""
from __future__ import annotations

import json
from pathlib import Path

PRUNED_CLASS_PREFIX = "DiffPrunePruned"  # prefixed to the dense class name
PRUNED_NOTE = ("Pruned by DiffPrune Studio: widths differ per layer, so plain diffusers cannot build this model "
               "from its config. Load the folder with core.load_pipeline (see USAGE.md); dense_config is the model "
               "the pruned one was cut from.")
# A marker written before families were recorded describes the one family there was then.
LEGACY_FAMILY = "pixel-unet"


def write_shape_config(checkpoint_dir) -> bool:
    """Rewrite ``<component>/config.json`` of every pruned component whose shapes its plain config
    would misstate (denoiser or autoencoder). Returns True when any was rewritten."""
    from .models import ADAPTERS, ModelAdapter
    from .pipeline import PRUNED_MARKER

    checkpoint_dir = Path(checkpoint_dir)
    marker = json.loads((checkpoint_dir / PRUNED_MARKER).read_text())
    if marker.get("plain_diffusers_loadable"):
        return False
    family = marker.get("family") or LEGACY_FAMILY
    adapter = ADAPTERS[family] if family in ADAPTERS else ModelAdapter()
    components = marker.get("components") or {adapter.denoiser_name: {"plain_diffusers_loadable": False,
                                                                      "structure": marker.get("structure")}}
    rewritten = False
    for name, entry in components.items():
        if not entry.get("plain_diffusers_loadable"):
            rewritten |= _rewrite(checkpoint_dir / name, entry.get("structure") or {}, adapter, name)
    return rewritten


def _rewrite(directory: Path, structure: dict, adapter, component: str) -> bool:
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
        _class_name=PRUNED_CLASS_PREFIX + str(dense_config.get("_class_name", "Model")),
        # Upper case sorts before every diffusers key, so diffusers' "config attributes ... will be
        # ignored" warning, printed just before plain diffusers fails on these widths, starts with it.
        README=PRUNED_NOTE,
        layer_shapes={key: value for key, value in shapes.items() if key.endswith(".weight")},
        dense_config=dense_config,
    )
    config.update(adapter.shape_config(component, dense_config, shapes))  # e.g. a UNet's real block widths
    heads = {n: e["heads"] for n, e in (structure.get("attention") or {}).items() if isinstance(e, dict) and "heads" in e}
    if heads:
        config["attention_heads"] = heads
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
    return True
