"""Saving and loading pruned pipelines: safetensors weights, JSON metadata, no pickles.

Layout of a checkpoint directory (``PruneResult.save``)::

    model_index.json, scheduler/, unet/config.json, unet/diffusion_pytorch_model.safetensors
                                   -- the diffusers layout written by ``save_pretrained``
    diffprune_checkpoint.json      -- marker: format, spec, totals, whether plain diffusers can load
                                      it, and the structure needed to rebuild pruned shapes
    report/                        -- layers.csv, timestep_*.csv, calibration_loss.csv, totals.json,
                                      importance.safetensors: the run's one report (an export,
                                      ``core.export``, adds no copy of it)

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

from .models import adapter_for as adapter_of

# Marker written next to a pruned checkpoint; ``core.pipeline.load_pipeline`` looks for it.
PRUNED_MARKER = "diffprune_checkpoint.json"
FORMAT = "diffprune-checkpoint"
VERSION = 1


def save_pruned_pipeline(pipeline, directory, spec=None, report=None, recovery: dict | None = None) -> Path:
    """Write ``pipeline`` (pruned or not) and its metadata to ``directory``; returns the path.
    ``recovery``: the recovery fine-tuning settings and outcome (kept in the marker's ``recovery``).

    Refuses (ValueError, before writing anything) a ``directory`` that is an existing file or a
    location that cannot be written."""
    directory = Path(directory)
    check_save_directory(directory)
    adapter = adapter_of(pipeline)
    components = {}
    for name in adapter.prunable_components(pipeline):
        module = getattr(pipeline, name)
        components[name] = {
            "plain_diffusers_loadable": adapter.plain_config(name, module, dict(module.config)) is not None,
            "structure": adapter.structure(name, module),
        }
    plain = all(entry["plain_diffusers_loadable"] for entry in components.values())
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".diffprune-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ValueError(f"save directory {str(directory)!r} cannot be written: {error.strerror or error}") from error
    pipeline.save_pretrained(str(directory), safe_serialization=True)
    marker = {
        "format": FORMAT,
        "version": VERSION,
        "family": adapter.name,
        "plain_diffusers_loadable": plain,
        "spec": spec.to_dict() if spec is not None else None,
        "totals": _jsonable(report.totals) if report is not None else None,
        "structure": components[adapter.denoiser_name]["structure"],
        "components": components,
        "recovery": _jsonable(recovery) if recovery is not None else None,
    }
    (directory / PRUNED_MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True))
    if report is not None:
        _save_report(report, directory / "report")
    return directory


def check_save_directory(directory, field: str = "save directory") -> None:
    """Refuse (ValueError naming ``field``) a checkpoint directory that is an existing file or lies
    where nothing can be written: callers check it before any work starts."""
    import os

    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{field} {str(directory)!r} is an existing file; give a new or empty directory")
    parent = directory if directory.is_dir() else next((p for p in directory.parents if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{field} {str(directory)!r} cannot be written (no write permission on {str(parent)!r})")


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


def rebuild_component(directory, structure: dict, component: str | None = None, family: str | None = None):
    """A network from its (original) config, resized to the shapes in its safetensors file and the
    head counts / GroupNorm groups recorded in ``structure`` (the family's adapter rebuilds it);
    ``component`` None: the family's denoiser."""
    from .models.base import ModelAdapter
    from .registry import ADAPTERS

    adapter = ADAPTERS[family] if family in ADAPTERS else ModelAdapter()
    return adapter.rebuild(component or adapter.denoiser_name, directory, structure)


def load_pruned_pipeline(directory, dtype=None):
    """Load a directory written by ``PruneResult.save`` (used by ``core.pipeline.load_pipeline``).

    ``dtype`` None keeps every tensor in the dtype it was saved in (``save_pretrained`` writes the
    model's own dtype, so an fp16 pruned model stays fp16); a torch dtype converts every component."""
    from diffusers import DiffusionPipeline

    from .dtypes import (cast_module, checkpoint_dtypes, denoiser_component, enforce_dtypes, from_pretrained_dtype,
                         read_safetensors_header)

    directory = Path(directory)
    marker = read_marker(directory)
    family = marker.get("family") or "pixel-unet"
    components = marker.get("components")
    if not components:
        # A marker without per-component entries describes the family's denoiser alone.
        from .models import ADAPTERS

        if family not in ADAPTERS:
            raise ValueError(f"pruned checkpoint {str(directory)!r}: unknown model family {family!r}; "
                             f"known: {', '.join(sorted(ADAPTERS))}")
        components = {ADAPTERS[family].denoiser_name: {"plain_diffusers_loadable": marker.get("plain_diffusers_loadable"),
                                                        "structure": marker.get("structure") or {}}}
    rebuilt = {}
    for name, entry in components.items():
        folder = directory / name
        if not (folder / "config.json").exists():
            raise ValueError(f"pruned checkpoint {str(directory)!r}: {name}/config.json is missing")
        weights = folder / "diffusion_pytorch_model.safetensors"
        if not weights.exists():
            raise ValueError(f"pruned checkpoint {str(directory)!r}: {name}/diffusion_pytorch_model.safetensors is missing")
        # Always rebuilt through the adapter: it validates the safetensors file (a truncated file
        # is a ValueError, not a crash inside diffusers) and restores shapes no config can express.
        module = rebuild_component(folder, entry.get("structure") or {}, name, family)
        if dtype is not None:
            rebuilt[name] = cast_module(module, dtype)
        else:
            rebuilt[name] = _saved_dtypes(module, read_safetensors_header(weights))
    if dtype is None:
        saved = checkpoint_dtypes(directory)
        denoiser = denoiser_component(saved) or next(iter(components))
        dtype = {**saved, "default": saved.get(denoiser, torch.float32)}
    try:
        pipeline = DiffusionPipeline.from_pretrained(str(directory), local_files_only=True, **rebuilt,
                                                     **from_pretrained_dtype(dtype))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, json.JSONDecodeError) as error:
        raise ValueError(f"pruned checkpoint {str(directory)!r} could not be loaded: {str(error).splitlines()[0][:160]}") from error
    # The rebuilt networks hold their saved dtypes already; the others as asked.
    enforce_dtypes({name: module for name, module in pipeline.components.items() if name not in rebuilt}, dtype)
    return pipeline


def _saved_dtypes(module, header: dict):
    """Every parameter and buffer of a rebuilt ``module`` back in the dtype its safetensors
    ``header`` records (the rebuild creates float32 tensors and copies the saved values in)."""
    from .dtypes import SAFETENSORS_DTYPES

    tensors = dict(module.named_parameters())
    tensors.update(module.named_buffers())
    for name, tensor in tensors.items():
        entry = header.get(name)
        saved = SAFETENSORS_DTYPES.get(entry.get("dtype"), (None,))[0] if isinstance(entry, dict) else None
        if saved is not None and tensor.is_floating_point() and str(tensor.dtype) != f"torch.{saved}":
            tensor.data = tensor.data.to(getattr(torch, saved))
    return module


def load_report_totals(directory) -> dict | None:
    return read_marker(directory).get("totals")
