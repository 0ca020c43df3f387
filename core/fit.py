"""Will it fit? The memory a pipeline and a pruning run need, estimated before any weight is read.

``estimate_fit(source, criterion)`` reads only a pipeline's configs (``model_index.json`` and
each component's ``config.json``; for a hub id those files alone are downloaded) and the
safetensors headers of its weights when they are at hand (``core.dtypes``). A component whose
weights are not at hand is built on the ``meta`` device (no memory) to count its parameters.
Bytes per parameter come from the requested dtype, else the weights' own (the headers), else the
config's or the file names' variant, else float32.

The peak of a pruning run is the loaded pipeline plus an extra that depends on the criterion
(``PEAK_FACTORS``: a multiple of the denoiser's bytes as loaded, plus the activations of one
calibration pass for gradient criteria or the largest layer's Hessian for ``obs``). These are
estimates of the engine's working set, not measurements: they are meant to refuse a run that
cannot fit before minutes of downloading, not to promise that a run just under the line fits.

Available memory is the CUDA device's total memory on a GPU, else the machine's available RAM.
Two environment variables let the owner of a server (a Space) set limits:

* ``DIFFPRUNE_MAX_PARAMS``: the most parameters (all components together) a model may have,
  e.g. ``1.5e9``; a larger one is refused by ``load_pipeline`` before its weights are downloaded.
* ``DIFFPRUNE_MAX_MEMORY_GB``: the memory (GiB) to plan with instead of the detected amount.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .dtypes import (DTYPES, WeightsSummary, bytes_per_element, denoiser_component, dtype_name, folder_weights,
                     hub_weights, model_components, read_model_index, resolve_dtype)
from .registry import CRITERIA

MAX_PARAMS_ENV = "DIFFPRUNE_MAX_PARAMS"
MAX_MEMORY_ENV = "DIFFPRUNE_MAX_MEMORY_GB"
GIB = 2 ** 30

# Extra peak of ``prune`` over the loaded pipeline: (multiple of the denoiser's bytes as loaded,
# what is added on top: None, "activations" or "hessian").
PEAK_FACTORS = {
    "random": (1.25, None),  # the pruned copy, and one layer's scores and masks at a time
    "magnitude": (1.25, None),  # as random
    "taylor": (3.0, "activations"),  # the pruned copy and the accumulated gradient; scores one layer at a time
    "nici": (3.0, "activations"),  # as taylor with one calibration batch (several: a float32 running sum too)
    "l1": (3.0, "activations"),  # as taylor
    "gradflow": (5.0, "activations"),  # the copy, w * m, the soft mask, g with its graph and H g at once
    "obs": (1.25, "hessian"),  # the weights compensated in place (no masks kept), plus the Hessians in flight
}
# Activations kept for one calibration backward pass, as a multiple of the denoiser's bytes: a
# conservative estimate for batch 1 at the model's sample size (activations of a UNet at its own
# resolution are of the order of its weights; larger calibration batches need more).
ACTIVATION_FACTOR = 0.5
# Bytes per entry of the Hessian obs accumulates for a layer (float32, in_width x in_width).
HESSIAN_BYTES = 4


class FitError(ValueError):
    """A model or a run that does not fit (a cap or the memory available); a ValueError."""


@dataclass(frozen=True)
class FitEstimate:
    """What a pipeline needs and what is available.

    ``params`` / ``bytes`` / ``dtypes``: per component (as loaded); ``dtype``: the denoiser's;
    ``extra_bytes``: the peak of the pruning run over the loaded pipeline (0 without a
    criterion); ``peak_bytes`` = ``pipeline_bytes + extra_bytes``; ``available_bytes``: None when
    it cannot be told; ``fits``: within ``DIFFPRUNE_MAX_PARAMS`` and the memory available."""

    source: str
    criterion: str | None
    device: str
    denoiser: str
    dtype: str
    params: dict = field(default_factory=dict)
    bytes: dict = field(default_factory=dict)
    dtypes: dict = field(default_factory=dict)
    pipeline_bytes: int = 0
    denoiser_bytes: int = 0
    extra_bytes: int = 0
    peak_bytes: int = 0
    available_bytes: int | None = None
    available_from: str = ""
    max_params: float | None = None
    fits: bool = True
    message: str = ""

    @property
    def total_params(self) -> int:
        return sum(self.params.values())


# ------------------------------------------------------------------------------------ limits
def max_params() -> float | None:
    """``DIFFPRUNE_MAX_PARAMS`` as a number, None when unset; ValueError for a bad value."""
    return _env_number(MAX_PARAMS_ENV, "a positive number of parameters like 1.5e9")


def _env_number(name: str, allowed: str) -> float | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"environment variable {name} must be {allowed}, got {text!r}")
    return value


def available_memory(device) -> tuple[int | None, str]:
    """(bytes, where from): ``DIFFPRUNE_MAX_MEMORY_GB`` when set; on a GPU the CUDA device's total
    memory; else the machine's available RAM (psutil, else ``/proc/meminfo``); (None, "unknown")
    when none can be read."""
    limit = _env_number(MAX_MEMORY_ENV, "a positive number of GiB like 24")
    if limit is not None:
        return int(limit * GIB), MAX_MEMORY_ENV
    if device.type == "cuda":
        import torch

        _, total = torch.cuda.mem_get_info(device)
        return int(total), "GPU"
    try:
        import psutil

        return int(psutil.virtual_memory().available), "RAM"
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "RAM"
    except (OSError, ValueError, IndexError):
        pass
    return None, "unknown"


def _device(device):
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}") from error
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but no CUDA GPU is available; use 'cpu' or 'auto'")
    return resolved


def check_criterion(criterion) -> str | None:
    """``None`` (loading only) or a criterion name: those of ``PEAK_FACTORS`` and any registered."""
    allowed = sorted(set(PEAK_FACTORS) | set(CRITERIA))
    if criterion is not None and (not isinstance(criterion, str) or criterion not in allowed):
        raise ValueError(f"criterion must be one of {allowed} (or None), got {criterion!r}")
    return criterion


def peak_factor(criterion: str) -> tuple[float, str | None]:
    """The row of ``PEAK_FACTORS``; a registered criterion without one is counted as a gradient
    criterion when it calibrates, else as a weight-only one."""
    if criterion in PEAK_FACTORS:
        return PEAK_FACTORS[criterion]
    calibrates = getattr(CRITERIA.get(criterion), "needs_calibration", True)
    return PEAK_FACTORS["taylor"] if calibrates else PEAK_FACTORS["magnitude"]


# ------------------------------------------------------------------------------- components
@dataclass(frozen=True)
class _Component:
    params: int
    dtype: str
    bytes: int
    widest_input: int


def _model_class(library: str, class_name: str):
    """The ``nn.Module`` class a ``model_index.json`` entry names, None for tokenizers,
    schedulers, processors and unknown classes."""
    import importlib

    import torch

    if library in ("diffusers", "transformers"):
        module_name = library
    else:  # a pipeline-specific module of diffusers, e.g. the SD safety checker
        module_name = f"diffusers.pipelines.{library}"
    try:
        cls = getattr(importlib.import_module(module_name), class_name, None)
    except Exception:  # noqa: BLE001 - an optional library or a name of a newer version
        return None
    return cls if isinstance(cls, type) and issubclass(cls, torch.nn.Module) else None


def meta_model(cls, folder):
    """``cls`` built from ``folder/config.json`` on the ``meta`` device: shapes, no memory."""
    try:
        from accelerate import init_empty_weights

        empty = init_empty_weights()
    except ImportError:
        import torch

        empty = torch.device("meta")
    from diffusers import ModelMixin

    with warnings_off():
        if issubclass(cls, ModelMixin):
            with empty:
                return cls.from_config(cls.load_config(str(folder)))
        config = cls.config_class.from_pretrained(str(folder))
        with empty:
            model = cls._from_config(config) if hasattr(cls, "_from_config") else cls(config)
        if hasattr(model, "tie_weights"):
            # init_empty_weights unties shared embeddings (T5's); tied again outside it, they count once.
            model.tie_weights()
        return model


def warnings_off():
    """Quiet the libraries' notices while a meta model is built (they say nothing useful here)."""
    import contextlib
    import warnings

    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    return stack


def module_summary(module) -> WeightsSummary:
    """Parameters, dtype (most elements), bytes and widest Linear/Conv input of a module."""
    from torch import nn

    elements: dict = {}
    params = size = 0
    for parameter in module.parameters():
        count = parameter.numel()
        params += count
        size += count * parameter.element_size()
        if parameter.is_floating_point():
            name = dtype_name(parameter.dtype)
            elements[name] = elements.get(name, 0) + count
    widest = 0
    for child in module.modules():
        if isinstance(child, nn.Linear):
            widest = max(widest, child.in_features)
        elif isinstance(child, nn.Conv2d):
            kh, kw = child.kernel_size
            widest = max(widest, child.in_channels // child.groups * kh * kw)
    dtype = max(elements, key=elements.get) if elements else None
    return WeightsSummary(dtype=dtype, params=params, bytes=size, widest_input=widest)


def _config_dtype(folder: Path) -> str | None:
    """The dtype a transformers ``config.json`` records (``dtype`` / ``torch_dtype``), if one of DTYPES."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    value = config.get("dtype", config.get("torch_dtype")) if isinstance(config, dict) else None
    return value if value in DTYPES else None


def _component(name: str, library: str, class_name: str, folder: Path, weights: WeightsSummary | None,
               requested) -> _Component | None:
    """One component as loaded: counts from the weights' headers when at hand, else from the meta
    model; bytes from the requested dtype, else the weights', else the config's, else float32."""
    if weights is not None and weights.params:
        params, widest, stored = weights.params, weights.widest_input, weights.dtype
    else:
        cls = _model_class(library, class_name)
        if cls is None:
            return None
        if not (folder / "config.json").is_file():
            raise ValueError(f"{name}/config.json is missing: the component's size cannot be told")
        try:
            summary = module_summary(meta_model(cls, folder))
        except Exception as error:  # noqa: BLE001 - a config the class refuses: one line
            raise ValueError(f"{name}/config.json could not be read as a {class_name}: "
                             f"{str(error).splitlines()[0][:160] if str(error) else type(error).__name__}") from error
        params, widest, stored = summary.params, summary.widest_input, (weights.dtype if weights else None)
    dtype = dtype_name(requested) if requested is not None else stored or _config_dtype(folder) or "float32"
    if dtype not in DTYPES and requested is None and stored is not None:
        dtype = "float32"  # float64 / float8 checkpoints are loaded as diffusers' default
    return _Component(params=params, dtype=dtype, bytes=params * bytes_per_element(dtype), widest_input=widest)


def _local_components(directory: Path, requested) -> dict:
    index = read_model_index(directory)
    out = {}
    for name, (library, class_name) in model_components(index).items():
        folder = directory / name
        component = _component(name, library, class_name, folder, folder_weights(folder), requested)
        if component is not None:
            out[name] = component
    return out


def _hub_components(repo_id: str, requested) -> dict:
    """Components of a hub pipeline: only ``model_index.json`` and the ``config.json`` files are
    downloaded (and weight headers fetched), never a weight file."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as error:
        raise ValueError("reading a hub model's configs needs huggingface_hub (pip install huggingface_hub)") from error

    def fetch(filename: str) -> Path:
        try:
            return Path(hf_hub_download(repo_id, filename))
        except Exception as error:  # noqa: BLE001 - unknown id, offline, gated: one line
            reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
            raise ValueError(f"could not read {filename} of {repo_id!r} from the hub (unknown or private id, "
                             f"or no network): {reason}") from error

    directory = fetch("model_index.json").parent
    out = {}
    for name, (library, class_name) in model_components(read_model_index(directory)).items():
        if _model_class(library, class_name) is None:
            continue
        weights = hub_weights(repo_id, name, library)
        if weights is None or not weights.params:
            fetch(f"{name}/config.json")
        component = _component(name, library, class_name, directory / name, weights, requested)
        if component is not None:
            out[name] = component
    return out


def _pipeline_components(pipeline, requested) -> dict:
    from torch import nn

    out = {}
    for name, module in getattr(pipeline, "components", {}).items():
        if isinstance(module, nn.Module):
            summary = module_summary(module)
            dtype = dtype_name(requested) if requested is not None else summary.dtype or "float32"
            size = summary.params * bytes_per_element(dtype) if requested is not None else summary.bytes
            out[name] = _Component(params=summary.params, dtype=dtype, bytes=size, widest_input=summary.widest_input)
    return out


def _resolve_source(source):
    """(label, local directory or None, hub id or None) of a source ``load_pipeline`` accepts."""
    from .default_model import DEFAULT_MODEL_DIR, EMBEDDED_MODELS

    if source is None:
        return "default model", DEFAULT_MODEL_DIR, None
    if not isinstance(source, (str, Path)) or not str(source).strip():
        raise ValueError(f"source must be None, a directory or a hub id, got {source!r}")
    text = str(source)
    if text in EMBEDDED_MODELS:
        return text, EMBEDDED_MODELS[text][0], None
    path = Path(text).expanduser()
    try:
        is_dir = path.is_dir()
    except OSError:
        is_dir = False
    if is_dir:
        if not (path / "model_index.json").is_file():
            raise ValueError(f"{text!r} is a directory but not a diffusers pipeline (no model_index.json)")
        return text, path, None
    if text.startswith((".", "/", "~")) or text.count("/") > 1 or path.suffix != "":
        raise ValueError(f"model path {text!r} does not exist")
    return text, None, text


# ------------------------------------------------------------------------------------ estimate
def estimate_fit(source, criterion: str | None = None, device=None, dtype=None, *, label: str | None = None
                 ) -> FitEstimate:
    """Estimate what loading ``source`` and pruning it with ``criterion`` need, and whether it fits.

    ``source``: what ``load_pipeline`` takes (None, an embedded model name, a local diffusers
    directory, a pruned checkpoint, a hub id) or an already loaded pipeline. ``criterion``: None
    (loading only) or a criterion name. ``dtype``: None keeps the checkpoint's, else one of
    ``DTYPES``; ``label``: the name messages use (default: the source). Reads configs and
    safetensors headers only; no weight is downloaded or loaded."""
    requested = resolve_dtype(dtype)
    criterion = check_criterion(criterion)
    resolved_device = _device(device)
    cap = max_params()
    if hasattr(source, "components") and not isinstance(source, (str, Path)):
        name, components = "loaded pipeline", _pipeline_components(source, requested)
        loaded = True
    else:
        name, directory, repo_id = _resolve_source(source)
        components = (_local_components(directory, requested) if directory is not None
                      else _hub_components(repo_id, requested))
        loaded = False
    label = label or name
    if not components:
        raise ValueError(f"{label!r}: model_index.json names no network whose size can be counted")
    denoiser = denoiser_component(components) or max(components, key=lambda n: components[n].params)
    main = components[denoiser]
    pipeline_bytes = sum(c.bytes for c in components.values())
    extra, detail = 0, ""
    if criterion is not None:
        factor, addition = peak_factor(criterion)
        extra = int(factor * main.bytes)
        detail = f"{_factor(factor)} x {denoiser} {_gib(main.bytes)}"
        if addition == "activations":
            activations = int(ACTIVATION_FACTOR * main.bytes)
            extra += activations
            detail += f" + activations ~{_gib(activations)}"
        elif addition == "hessian":
            hessian = main.widest_input ** 2 * HESSIAN_BYTES
            extra += hessian
            detail += f" + Hessian {main.widest_input}^2 x {HESSIAN_BYTES} B {_gib(hessian)}"
    peak = pipeline_bytes + extra
    available, available_from = available_memory(resolved_device)
    if loaded and available is not None and available_from == "RAM":
        # The loaded pipeline's CPU-resident weights are already counted as used.
        available += sum(c.bytes for part, c in components.items()
                         if _on_cpu(getattr(source, part, None)))
    total = sum(c.params for c in components.values())
    over_cap = cap is not None and total > cap
    over_memory = available is not None and peak > available
    action = f"pruning with {criterion}" if criterion is not None else "loading"
    parts = f"pipeline {_gib(pipeline_bytes)}" + (f" + {detail}" if detail else "")
    where = f"{_gib(available)} available ({available_from})" if available is not None else "memory available unknown"
    if over_cap:
        message = (f"{label}: {_count(total)} parameters ({_listing(components)}) exceed {MAX_PARAMS_ENV}="
                   f"{cap:g}, the largest model this server loads")
    else:
        message = f"{label}: {action} needs about {_gib(peak)} ({parts}); {where}"
    return FitEstimate(
        source=label, criterion=criterion, device=str(resolved_device), denoiser=denoiser, dtype=main.dtype,
        params={n: c.params for n, c in components.items()}, bytes={n: c.bytes for n, c in components.items()},
        dtypes={n: c.dtype for n, c in components.items()}, pipeline_bytes=pipeline_bytes, denoiser_bytes=main.bytes,
        extra_bytes=extra, peak_bytes=peak, available_bytes=available, available_from=available_from, max_params=cap,
        fits=not over_cap and not over_memory, message=message,
    )


def check_fit(source, criterion: str | None = None, device=None, dtype=None, *, label: str | None = None
              ) -> FitEstimate:
    """``estimate_fit``, refusing (``FitError``, a ValueError) what does not fit, with the estimate
    and the memory available in the message."""
    estimate = estimate_fit(source, criterion, device, dtype, label=label)
    if not estimate.fits:
        raise FitError(estimate.message)
    return estimate


def check_size_cap(source, dtype=None) -> FitEstimate | None:
    """The server's caps alone (``DIFFPRUNE_MAX_PARAMS``, ``DIFFPRUNE_MAX_MEMORY_GB`` for loading):
    None, reading nothing, when neither is set; ``FitError`` when the model exceeds one. Run by
    ``load_pipeline`` before weights are downloaded."""
    memory_cap = _env_number(MAX_MEMORY_ENV, "a positive number of GiB like 24")
    if max_params() is None and memory_cap is None:
        return None
    estimate = estimate_fit(source, None, "cpu", dtype)
    over_cap = estimate.max_params is not None and estimate.total_params > estimate.max_params
    if over_cap or (memory_cap is not None and not estimate.fits):
        raise FitError(estimate.message)
    return estimate


def _on_cpu(module) -> bool:
    try:
        return next(module.parameters()).device.type == "cpu"
    except (AttributeError, StopIteration):
        return False


def _factor(value: float) -> str:
    text = f"{value:g}"
    return text if "." in text else f"{text}.0"


def _gib(size: int) -> str:
    return f"{size / GIB:.1f} GiB" if size >= GIB / 10 else f"{size / 2 ** 20:.1f} MiB"


def _count(params: int) -> str:
    return f"{params / 1e9:.2f} B" if params >= 1e9 else f"{params / 1e6:.1f} M"


def _listing(components: dict) -> str:
    return ", ".join(f"{name} {_count(c.params)}" for name, c in components.items())
