"""The dtypes a pipeline is loaded in, and a checkpoint's dtype read from its safetensors headers.

A safetensors file starts with an 8-byte little-endian length and a JSON header naming every
tensor's dtype and shape; reading that header costs a few kilobytes whatever the model's size,
so ``core.pipeline.load_pipeline`` learns a checkpoint's dtype (and ``core.fit`` its size) without
loading a weight. For a hub id the same headers come from ``huggingface_hub``, which fetches only
them (an HTTP range request), or from the local cache when the file was downloaded before.

Only the three dtypes a diffusion pipeline is run in are offered (``DTYPES``); ``"auto"`` or
``None`` keeps the checkpoint's own.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

# The dtypes a pipeline may be loaded in ("auto" keeps the checkpoint's).
DTYPES = ("float32", "float16", "bfloat16")
AUTO = "auto"
# safetensors dtype code -> (torch dtype name, bytes per element).
SAFETENSORS_DTYPES = {
    "F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
    "F8_E4M3": ("float8_e4m3fn", 1), "F8_E5M2": ("float8_e5m2", 1),
    "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1), "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
}
_FLOATING = {"float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"}
BYTES_PER_ELEMENT = {name: size for name, size in SAFETENSORS_DTYPES.values()}
# A header larger than this is not a safetensors header (the format caps it at 100 MB).
MAX_HEADER_BYTES = 100_000_000
# Weight file stems: diffusers models, then transformers models.
WEIGHT_STEMS = ("diffusion_pytorch_model", "model")
# Variant markers in weight file names (``diffusion_pytorch_model.fp16.safetensors``).
VARIANT_DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def resolve_dtype(value, field: str = "dtype"):
    """``None`` / ``"auto"`` -> ``None`` (keep the checkpoint's); a name of ``DTYPES`` or the
    matching ``torch.dtype`` -> that ``torch.dtype``. Anything else: ValueError naming ``field``."""
    import torch

    if value is None or value == AUTO:
        return None
    if isinstance(value, torch.dtype) and str(value).removeprefix("torch.") in DTYPES:
        return value
    if isinstance(value, str) and value in DTYPES:
        return getattr(torch, value)
    raise ValueError(f"{field} must be one of {[AUTO, *DTYPES]} (or the torch dtype), got {value!r}")


def dtype_name(dtype) -> str:
    """``torch.float16`` -> ``"float16"``; a name is returned as it is."""
    return str(dtype).removeprefix("torch.")


def bytes_per_element(dtype) -> int:
    name = dtype_name(dtype)
    if name not in BYTES_PER_ELEMENT:
        raise ValueError(f"dtype must be one of {sorted(BYTES_PER_ELEMENT)}, got {name!r}")
    return BYTES_PER_ELEMENT[name]


@dataclass(frozen=True)
class WeightsSummary:
    """What the safetensors headers of one component say, without a weight read.

    ``dtype``: the floating dtype holding most elements (None when no floating tensor);
    ``params``: elements of every tensor; ``bytes``: their size as stored; ``widest_input``: the
    largest input width of a 2-D (Linear) or 4-D (Conv: ``in x kh x kw``) ``.weight``."""

    dtype: str | None
    params: int
    bytes: int
    widest_input: int


def read_safetensors_header(path) -> dict:
    """The JSON header of a safetensors file (tensor name -> dtype, shape, offsets), read from its
    first bytes only. ValueError for a file that is not safetensors."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) != 8:
                raise ValueError(f"{path.name} is not a safetensors file (shorter than its header length)")
            (length,) = struct.unpack("<Q", prefix)
            if not 0 < length <= MAX_HEADER_BYTES:
                raise ValueError(f"{path.name} is not a safetensors file (header length {length})")
            raw = handle.read(length)
    except OSError as error:
        raise ValueError(f"{path.name} cannot be read: {error.strerror or error}") from error
    if len(raw) != length:
        raise ValueError(f"{path.name} is truncated (its header is incomplete)")
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path.name} is not a safetensors file (unreadable header: {error})") from error
    if not isinstance(header, dict):
        raise ValueError(f"{path.name} is not a safetensors file (its header is not an object)")
    return header


def summarise(headers) -> WeightsSummary:
    """One ``WeightsSummary`` over the headers of a component's files (its shards)."""
    elements: dict[str, int] = {}
    params = size = widest = 0
    for header in headers:
        for name, entry in header.items():
            if name == "__metadata__" or not isinstance(entry, dict):
                continue
            code, shape = entry.get("dtype"), [int(d) for d in entry.get("shape", [])]
            dtype, width = SAFETENSORS_DTYPES.get(code, (None, 0))
            count = 1
            for dimension in shape:
                count *= dimension
            params += count
            size += count * width
            if dtype in _FLOATING:
                elements[dtype] = elements.get(dtype, 0) + count
            if name.endswith(".weight") and len(shape) == 2:
                widest = max(widest, shape[1])
            elif name.endswith(".weight") and len(shape) == 4:
                widest = max(widest, shape[1] * shape[2] * shape[3])
    dtype = max(elements, key=elements.get) if elements else None
    return WeightsSummary(dtype=dtype, params=params, bytes=size, widest_input=widest)


def _variant(path: Path) -> str | None:
    """``"fp16"`` for ``diffusion_pytorch_model.fp16.safetensors`` (or a shard of it), else None."""
    parts = path.name.split(".")
    return next((part for part in parts[1:-1] if part in VARIANT_DTYPES), None)


def weight_files(folder) -> list[Path]:
    """The safetensors files diffusers loads from a component folder without a ``variant``: the
    plain files (one, or the shards of an index); only variant files when there is nothing else."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    plain = [p for p in files if _variant(p) is None]
    return plain or files


def folder_weights(folder) -> WeightsSummary | None:
    """The ``WeightsSummary`` of a local component folder, None when it holds no safetensors file.
    A variant-only folder whose headers are unreadable still says its dtype by its file names."""
    files = weight_files(folder)
    if not files:
        return None
    summary = summarise(read_safetensors_header(path) for path in files)
    if summary.dtype is None:
        variant = _variant(files[0])
        if variant is not None:
            return WeightsSummary(VARIANT_DTYPES[variant], summary.params, summary.bytes, summary.widest_input)
    return summary


def model_components(model_index: dict) -> dict:
    """``name -> (library, class name)`` of the entries of a ``model_index.json`` that are set."""
    out = {}
    for name, value in model_index.items():
        if name.startswith("_") or not isinstance(value, (list, tuple)) or len(value) != 2:
            continue
        library, class_name = value
        if library and class_name:
            out[name] = (str(library), str(class_name))
    return out


def read_model_index(directory) -> dict:
    path = Path(directory) / "model_index.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{str(directory)!r}: unreadable model_index.json ({error})") from error
    if not isinstance(data, dict):
        raise ValueError(f"{str(directory)!r}: model_index.json does not hold an object")
    return data


def checkpoint_dtypes(directory) -> dict:
    """``component -> torch.dtype`` of a local diffusers directory, from each component's
    safetensors headers (components without safetensors weights are left out)."""
    import torch

    directory = Path(directory)
    out = {}
    for name in model_components(read_model_index(directory)):
        summary = folder_weights(directory / name)
        if summary is not None and summary.dtype in DTYPES:
            out[name] = getattr(torch, summary.dtype)
    return out


# The pipeline attributes that hold the denoiser in the registered families (``ModelAdapter.denoiser_name``),
# spelled out: this module reads folders before any network is loaded and imports no model code.
# tests/test_import_graph.py checks the list against the adapters.
DENOISER_COMPONENTS = ("transformer", "unet")


def denoiser_component(names) -> str | None:
    """The denoiser among a pipeline's component names: the first of ``DENOISER_COMPONENTS``
    present, else None."""
    names = list(names)
    return next((name for name in DENOISER_COMPONENTS if name in names), None)


def hub_weights(repo_id: str, component: str, library: str | None = None) -> WeightsSummary | None:
    """The ``WeightsSummary`` of ``component`` of a hub repository from its safetensors headers
    only: the local cache when the file is there, else ``huggingface_hub``'s header fetch (an HTTP
    range request, no weights). None when nothing can be read (offline, no safetensors file)."""
    try:
        from huggingface_hub import HfApi, hf_hub_download, try_to_load_from_cache
    except ImportError:
        return None
    stems = WEIGHT_STEMS if library != "transformers" else tuple(reversed(WEIGHT_STEMS))
    for stem in stems:
        single = f"{component}/{stem}.safetensors"
        headers = _hub_headers(repo_id, [single], HfApi, try_to_load_from_cache)
        if headers is None:
            try:
                index_path = hf_hub_download(repo_id, f"{single}.index.json")
                shards = sorted(set(json.loads(Path(index_path).read_text()).get("weight_map", {}).values()))
            except Exception:  # noqa: BLE001 - no index either (or offline): try the next name
                continue
            headers = _hub_headers(repo_id, [f"{component}/{shard}" for shard in shards], HfApi, try_to_load_from_cache)
        if headers is not None:
            return summarise(headers)
    return None


def _hub_headers(repo_id: str, filenames: list, api_class, cached) -> list | None:
    headers = []
    for filename in filenames:
        local = cached(repo_id, filename)
        if isinstance(local, str) and Path(local).is_file():
            headers.append(read_safetensors_header(local))
            continue
        try:
            metadata = api_class().parse_safetensors_file_metadata(repo_id, filename)
        except Exception:  # noqa: BLE001 - missing file, offline, gated: the caller falls back
            return None
        headers.append({name: {"dtype": info.dtype, "shape": list(info.shape)}
                        for name, info in metadata.tensors.items()})
    return headers


def from_pretrained_dtype(dtype) -> dict:
    """The keyword ``DiffusionPipeline.from_pretrained`` takes for ``dtype`` (a torch dtype or a
    ``{component: dtype, "default": dtype}`` dict): ``dtype`` in the diffusers versions that
    renamed it, ``torch_dtype`` before."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401 - present where ``dtype`` is taken
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype}


def cast_module(module, dtype):
    """``module`` in ``dtype``; diffusers' own ``to`` (which keeps its float32 modules) only for
    models that declare such modules (it warns on every cast otherwise)."""
    import torch

    if getattr(module, "_keep_in_fp32_modules", None):
        return module.to(dtype)
    return torch.nn.Module.to(module, dtype)


def enforce_dtypes(components: dict, dtype) -> None:
    """Every ``nn.Module`` of ``components`` (a pipeline's ``components``) in the dtype ``dtype``
    gives it (a torch dtype or the dict above), for diffusers versions that ignore a
    per-component dict; a no-op when the loader already did it. A module is judged by the dtype
    of most of its elements (a library may keep a few layers in float32 on purpose)."""
    import torch

    for name, module in components.items():
        if not isinstance(module, torch.nn.Module):
            continue
        wanted = dtype.get(name, dtype.get("default")) if isinstance(dtype, dict) else dtype
        if wanted is None:
            continue
        counts: dict = {}
        for parameter in module.parameters():
            if parameter.is_floating_point():
                counts[parameter.dtype] = counts.get(parameter.dtype, 0) + parameter.numel()
        if counts and max(counts, key=counts.get) != wanted:
            cast_module(module, wanted)
