"""Saving and loading pruned pipelines: safetensors weights, JSON metadata, no pickles.

Layout of a checkpoint directory (``PruneResult.save``)::

    model_index.json, scheduler/, unet/config.json, unet/diffusion_pytorch_model.safetensors
                                   -- the diffusers layout written by ``save_pretrained``
    diffprune_checkpoint.json      -- marker: format, spec, totals, whether plain diffusers can load
                                      it, and the structure needed to rebuild pruned shapes
    report/                        -- layers.csv, timestep_*.csv, calibration_loss.csv,
                                      importance.safetensors

Plain ``DiffusionPipeline.from_pretrained`` loads the directory whenever the pruned shapes are
expressible as a ``UNet2DModel`` config: always for ``unstructured`` and ``N:M`` (the zeros are in
the weights, the config is the original one), and for ``channel``/``head`` results that happen
to match a config (``plain_diffusers_loadable`` in the marker). Otherwise ``unet/config.json``
keeps the original config and the loader here rebuilds every layer at the shape stored in the
safetensors file, then restores the attention head counts and scales recorded in the marker.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .granularity import attention_modules, plain_diffusers_config, sync_diffusers_attributes
from .pipeline import PRUNED_MARKER

FORMAT = "diffprune-checkpoint"
VERSION = 1


def _structure(unet) -> dict:
    """What safetensors shapes alone do not say: attention heads and scale, GroupNorm groups."""
    return {
        "attention": {name: {"heads": int(a.heads), "scale": float(a.scale)} for name, a in attention_modules(unet).items()},
        "group_norm": {name: int(m.num_groups) for name, m in unet.named_modules() if isinstance(m, nn.GroupNorm)},
    }


def save_pruned_pipeline(pipeline, directory, spec=None, report=None) -> Path:
    """Write ``pipeline`` (pruned or not) and its metadata to ``directory``; returns the path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    unet = pipeline.unet
    plain = plain_diffusers_config(unet, dict(unet.config)) is not None
    pipeline.save_pretrained(str(directory), safe_serialization=True)
    marker = {
        "format": FORMAT,
        "version": VERSION,
        "plain_diffusers_loadable": plain,
        "spec": spec.to_dict() if spec is not None else None,
        "totals": _jsonable(report.totals) if report is not None else None,
        "structure": _structure(unet),
    }
    (directory / PRUNED_MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True))
    if report is not None:
        _save_report(report, directory / "report")
    return directory


def _jsonable(values: dict) -> dict:
    out = {}
    for key, value in values.items():
        if hasattr(value, "item"):
            value = value.item()
        out[key] = value
    return out


def _save_report(report, folder: Path) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    report.layers.to_csv(folder / "layers.csv", index=False)
    report.timestep_contributions.to_csv(folder / "timestep_contributions.csv")
    report.timestep_weights.to_csv(folder / "timestep_weights.csv", index=False)
    report.calibration_loss.to_csv(folder / "calibration_loss.csv", index=False)
    (folder / "totals.json").write_text(json.dumps(_jsonable(report.totals), indent=2, sort_keys=True))
    if report.importance:
        tensors = {name: torch.as_tensor(values).float().contiguous() for name, values in report.importance.items()}
        save_file(tensors, str(folder / "importance.safetensors"))


def read_marker(directory) -> dict:
    path = Path(directory) / PRUNED_MARKER
    try:
        marker = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{str(directory)!r}: unreadable pruned-checkpoint marker {PRUNED_MARKER}: {error}") from error
    if marker.get("format") != FORMAT or marker.get("version") != VERSION:
        raise ValueError(f"{str(directory)!r}: not a {FORMAT} v{VERSION} checkpoint")
    return marker


def rebuild_unet(unet_directory, structure: dict):
    """A ``UNet2DModel`` from its (original) config, resized to the shapes in its safetensors file."""
    from diffusers import UNet2DModel
    from safetensors.torch import load_file

    unet_directory = Path(unet_directory)
    weights_path = unet_directory / "diffusion_pytorch_model.safetensors"
    if not weights_path.exists():
        raise ValueError(f"{str(unet_directory)!r} holds no diffusion_pytorch_model.safetensors")
    config = UNet2DModel.load_config(str(unet_directory))
    # A config rewritten by core.export_config describes the real shapes and keeps the dense one.
    config = config.get("dense_config", config)
    unet = UNet2DModel.from_config(config)
    state = load_file(str(weights_path))
    modules = dict(unet.named_modules())
    for key, tensor in state.items():
        module_name, _, attribute = key.rpartition(".")
        module = modules.get(module_name)
        if module is None or attribute not in module._parameters:
            continue  # buffers or unexpected keys: load_state_dict(strict=True) reports them
        current = module._parameters[attribute]
        if current is None or tuple(current.shape) != tuple(tensor.shape):
            module._parameters[attribute] = nn.Parameter(torch.empty(tensor.shape, dtype=tensor.dtype))
    for name, module in unet.named_modules():
        if isinstance(module, nn.Conv2d):
            module.out_channels = module.weight.shape[0]
            module.in_channels = module.weight.shape[1] * module.groups
        elif isinstance(module, nn.Linear):
            module.out_features, module.in_features = module.weight.shape
        elif isinstance(module, nn.GroupNorm) and module.weight is not None:
            module.num_channels = module.weight.shape[0]
            module.num_groups = structure.get("group_norm", {}).get(name, module.num_groups)
    for name, attention in attention_modules(unet).items():
        recorded = structure.get("attention", {}).get(name)
        if recorded:
            attention.heads = recorded["heads"]
            attention.scale = recorded["scale"]
    sync_diffusers_attributes(unet)
    unet.load_state_dict(state, strict=True)
    return unet


def load_pruned_pipeline(directory):
    """Load a directory written by ``PruneResult.save`` (used by ``core.pipeline.load_pipeline``)."""
    from diffusers import DiffusionPipeline

    directory = Path(directory)
    marker = read_marker(directory)
    if marker.get("plain_diffusers_loadable"):
        return DiffusionPipeline.from_pretrained(str(directory), local_files_only=True)
    unet = rebuild_unet(directory / "unet", marker.get("structure") or {})
    return DiffusionPipeline.from_pretrained(str(directory), unet=unet, local_files_only=True)


def load_report_totals(directory) -> dict | None:
    return read_marker(directory).get("totals")
