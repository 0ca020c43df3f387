"""Loading diffusion pipelines and sampling from them.

``load_pipeline`` is the single entry point for every model the tool touches: the embedded
default, a local diffusers directory, a hub id (the real path that works on Spaces) and the
checkpoints that ``PruneResult.save`` writes. ``sample_images`` is the one sampler that the UI,
the metrics and the benchmarks use, so a grid cell always compares like with like.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

import torch

from .checkpoint import PRUNED_MARKER, load_pruned_pipeline
from .default_model import DEFAULT_MODEL_DIR, EMBEDDED_MODELS

# Samplers built from a pipeline's own scheduler config: DDIM (eta 0), DDPM (stochastic) and
# DPM-Solver++ (diffusers' ``DPMSolverMultistepScheduler``, second order, the best training-free
# sampler at few steps).
SCHEDULERS = ("ddim", "ddpm", "dpm-solver++")

ProgressFn = Callable[[float, str], None]


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """Explicit argument wins; otherwise CUDA when available, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but no CUDA GPU is available; use 'cpu' or 'auto'")
    return resolved


# Images one ``sample_images`` call may draw (the app, ``diffprune sample`` and ``evaluate``):
# 50,000 is the standard FID sample count, as ``core.evaluate.MAX_NUM_SAMPLES``.
MAX_SAMPLE_IMAGES = 50_000


def check_progress(progress, field: str = "progress"):
    """A progress callback is None or callable ``(fraction, message)``: refused before any work."""
    if progress is not None and not callable(progress):
        raise ValueError(f"{field} must be None or a callable progress(fraction, message), got {type(progress).__name__}")
    return progress


# A hub id: "name" or "owner/name", each part at most 96 characters (the hub's own limit).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[\w.-]{1,96})?$")
MAX_SOURCE_LENGTH = 4096


def adapter_of(pipeline, source: str | None = None):
    """The model-family adapter of ``pipeline`` (``core.models``); ValueError naming the supported
    families when none matches."""
    from .models import adapter_for

    return adapter_for(pipeline, source)


def prunable_components(pipeline) -> tuple:
    """Pipeline attribute names ``PruneSpec.components`` may name for this pipeline (the denoiser
    first; latent models add their autoencoder): the choice list for the app and the CLI."""
    return tuple(adapter_of(pipeline).prunable_components(pipeline))


def load_pipeline(source: str | Path | None = None, device: str | torch.device | None = None, dtype=None):
    """Load a diffusion pipeline on ``device`` (CUDA when available, else CPU).

    ``source`` is ``None`` (the embedded default model), the name of an embedded model
    (``core.default_model.EMBEDDED_MODELS``: ``"ddpm-fashion-mnist"``, ``"dit-fashion-mnist"``), a local diffusers directory, a
    directory written by ``PruneResult.save``, or a Hugging Face hub id. The pipeline must belong to
    a registered model family (``core.models``); anything else is refused with one line naming them.

    ``dtype``: ``None`` / ``"auto"`` keeps each component's dtype as saved (read from its
    safetensors headers, so an fp16 checkpoint stays fp16 instead of being loaded as float32;
    float32 when the headers say nothing); ``"float32"``, ``"float16"``, ``"bfloat16"`` (or the
    torch dtype) loads every component in that dtype. A hub id or a local directory is checked
    against the server's size caps (``core.fit``: ``DIFFPRUNE_MAX_PARAMS``,
    ``DIFFPRUNE_MAX_MEMORY_GB``) from its configs alone, before any weight is downloaded.
    """
    from .dtypes import resolve_dtype
    from .fit import check_size_cap

    torch_device = pick_device(device)
    requested = resolve_dtype(dtype)
    if source is not None and not isinstance(source, (str, Path)):
        raise ValueError(f"source must be None, a directory or a hub id, got {type(source).__name__}")
    if source is not None and (not str(source).strip() or len(str(source)) > MAX_SOURCE_LENGTH):
        raise ValueError(f"source must be a non-empty path or hub id of at most {MAX_SOURCE_LENGTH} characters")
    embedded = None if source is None else EMBEDDED_MODELS.get(str(source))
    try:
        source_path = DEFAULT_MODEL_DIR if source is None else embedded[0] if embedded else Path(str(source)).expanduser()
    except RuntimeError:  # "~user/..." of a user this machine does not know
        raise ValueError(f"model path {str(source)[:80]!r} does not exist (no such user's home folder)") from None
    label = "default model" if source is None else str(source)
    if (source is None or embedded) and not source_path.is_dir():
        raise ValueError(f"the embedded model {label!r} is missing at {source_path}")
    try:
        is_dir, exists = source_path.is_dir(), source_path.exists()
    except OSError as error:  # a name too long for the file system, for example
        raise ValueError(f"source {label[:80]!r} is neither an existing directory nor a hub id: "
                         f"{error.strerror or error}") from error
    if is_dir:
        if (source_path / PRUNED_MARKER).exists():
            if not (source is None or embedded):
                check_size_cap(source_path, requested)
            pipeline = load_pruned_pipeline(source_path, dtype=requested)
        else:
            if not (source_path / "model_index.json").exists():
                raise ValueError(f"{label!r} is a directory but not a diffusers pipeline (no model_index.json)")
            if not (source is None or embedded):
                check_size_cap(source_path, requested)
            pipeline = _from_pretrained(str(source_path), label, local_files_only=True, dtype=requested)
    else:
        text = str(source)
        looks_local = text.startswith((".", "/", "~")) or text.count("/") > 1 or source_path.suffix != ""
        if exists:
            raise ValueError(f"{label!r} is a file, not a diffusers pipeline directory")
        if looks_local:
            raise ValueError(f"model path {label!r} does not exist")
        if not _HUB_ID.match(text):
            raise ValueError(f"source {text[:80]!r} is neither an existing directory nor a hub id ('owner/name', "
                             "letters, digits, '-', '_', '.', at most 96 characters per part)")
        check_size_cap(text, requested)
        pipeline = _from_pretrained(text, label, local_files_only=False, dtype=requested)
    adapter = adapter_of(pipeline, label)
    # diffusers warns that a float16 pipeline cannot run on a CPU; with this torch it does (slowly
    # without fp16 arithmetic in the CPU): the dtype asked for is kept, never silently widened.
    pipeline.to(torch_device, silence_dtype_warnings=True)
    pipeline.set_progress_bar_config(disable=True)
    for name in adapter.prunable_components(pipeline):
        getattr(pipeline, name).eval()
    return pipeline


def loading_dtypes(directory, dtype=None):
    """The ``dtype`` argument of ``DiffusionPipeline.from_pretrained`` for a local pipeline
    directory: ``dtype`` itself when one is asked for; else each component's saved dtype (its
    safetensors headers), components without readable weights in the denoiser's (float32 when
    the denoiser's is unknown too). diffusers' own default would load every diffusers model as
    float32, doubling an fp16 checkpoint's memory."""
    import torch

    from .dtypes import checkpoint_dtypes, denoiser_component, model_components, read_model_index

    if dtype is not None:
        return dtype
    saved = checkpoint_dtypes(directory)
    denoiser = denoiser_component(model_components(read_model_index(directory)))
    return {**saved, "default": saved.get(denoiser, torch.float32)}


def _from_pretrained(name: str, label: str, local_files_only: bool, dtype=None):
    """``DiffusionPipeline.from_pretrained`` in ``dtype`` (None: the saved dtypes). A hub id is
    downloaded first (the files diffusers would fetch itself) so the saved dtypes can be read
    from the local files' headers."""
    from diffusers import DiffusionPipeline

    from .dtypes import enforce_dtypes, from_pretrained_dtype

    try:
        folder = name if local_files_only else DiffusionPipeline.download(name)
        dtypes = loading_dtypes(folder, dtype)
        pipeline = DiffusionPipeline.from_pretrained(str(folder), local_files_only=True, **from_pretrained_dtype(dtypes))
        enforce_dtypes(pipeline.components, dtypes)
    except ValueError as error:
        raise ValueError(f"could not load {label!r}: {str(error).splitlines()[0][:200]}") from error
    except (OSError, EnvironmentError, json.JSONDecodeError, KeyError, AttributeError, TypeError, RuntimeError) as error:
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise ValueError(
            f"could not load {label!r} as a diffusers pipeline (unknown hub id, no network, or not a "
            f"diffusers model): {reason}"
        ) from error
    if not local_files_only:
        pipeline.register_to_config(_name_or_path=name)  # the hub id, as from_pretrained(hub id) records
    return pipeline


def _sampling_scheduler(pipeline, scheduler: str, adapter=None):
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {list(SCHEDULERS)}, got {scheduler!r}")
    adapter = adapter or adapter_of(pipeline)
    return adapter.sampling_scheduler(pipeline, scheduler)


def denoiser_noise(denoiser, num_images: int, seed: int) -> torch.Tensor:
    """Gaussian noise of ``num_images`` inputs of the denoiser ``denoiser``, drawn on the CPU from
    ``seed`` so it is the same on every device."""
    from .models import adapter_for_module

    return adapter_for_module(denoiser)[0].noise(denoiser, num_images, seed)


def initial_noise(pipeline, num_images: int, seed: int) -> torch.Tensor:
    """The starting noise for ``num_images`` samples (latent-shaped for latent models), drawn on the
    CPU so it is the same on every device."""
    return adapter_of(pipeline).noise(pipeline, num_images, seed)


def sampling_conditioning(pipeline, num_images: int, seed: int, class_label: int | None = None,
                          prompt: str | None = None) -> dict:
    """The denoiser's conditioning for ``num_images`` samples: ``{}`` for unconditional models,
    uniformly drawn classes (seeded) or ``class_label`` for class-conditional ones, prompts drawn
    from the shipped captions (seeded) or ``prompt`` for every sample of text-to-image ones."""
    generator = torch.Generator().manual_seed(int(seed) + 2)
    if prompt is not None:
        from .prompts import check_prompts

        check_prompts(prompt, field="prompt")
        if not takes_prompts(pipeline):
            raise ValueError(f"prompt applies to text-to-image models; this {adapter_of(pipeline).name} model takes none")
        return adapter_of(pipeline).sample_conditioning(pipeline, num_images, generator, class_label=class_label,
                                                        prompts=[prompt] * num_images)
    return adapter_of(pipeline).sample_conditioning(pipeline, num_images, generator, class_label=class_label)


def takes_prompts(pipeline) -> bool:
    """Whether the family samples from text prompts (SD, PixArt, SD3): its adapter's conditioning
    takes ``prompts`` and it is not the class-conditional DiT, which refuses them."""
    import inspect

    adapter = adapter_of(pipeline)
    return "prompts" in inspect.signature(adapter.sample_conditioning).parameters and not adapter.num_classes(pipeline)


def check_seed(seed, field: str = "seed") -> int:
    """A seed torch's generators accept: an integer in [0, 2**63)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63:
        raise ValueError(f"{field} must be an integer in [0, 2**63), got {seed!r}")
    return seed


@torch.no_grad()
def sample_images(
    pipeline,
    num_images: int,
    num_inference_steps: int = 50,
    seed: int = 0,
    *,
    batch_size: int = 64,
    scheduler: str = "ddim",
    noise: torch.Tensor | None = None,
    class_label: int | None = None,
    prompt: str | None = None,
    decode: bool = True,
    progress: ProgressFn | None = None,
) -> torch.Tensor:
    """Sample ``num_images`` images; returns float N x C x H x W in [-1, 1] on the CPU.

    The loop runs the denoiser through the family's adapter (keyword call with its conditioning:
    uniform classes for class-conditional models unless ``class_label`` is given; shipped captions
    for text-to-image models unless ``prompt`` is given, then every sample gets it) and a
    ``scheduler`` (one of ``SCHEDULERS``) built from the pipeline's own scheduler config; latent models'
    samples are decoded by their autoencoder (``decode=False`` returns the latents, unclamped).
    Deterministic for a given seed: the initial noise (and DDPM's per-step noise) comes from
    CPU generators seeded with ``seed``; pass ``noise`` to share it between two models.
    """
    if isinstance(num_images, bool) or not isinstance(num_images, int) or not 0 < num_images <= MAX_SAMPLE_IMAGES:
        raise ValueError(f"num_images must be an integer from 1 to {MAX_SAMPLE_IMAGES:,} (the bound for this tool's "
                         f"machines), got {num_images!r}"[:300])
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps <= 0:
        raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    check_seed(seed)
    check_progress(progress)
    adapter = adapter_of(pipeline)
    train_steps = adapter.num_train_timesteps(pipeline)
    if num_inference_steps > train_steps:
        raise ValueError(f"num_inference_steps must be at most {train_steps}, got {num_inference_steps}")
    denoiser = adapter.denoiser(pipeline)
    parameter = next(denoiser.parameters())
    device, dtype = parameter.device, parameter.dtype
    if noise is None:
        noise = adapter.noise(pipeline, num_images, seed)
    else:
        expected = (num_images, *adapter.noise(pipeline, 1, seed).shape[1:])  # one draw: the model's input shape
        if not isinstance(noise, torch.Tensor) or not noise.is_floating_point() or tuple(noise.shape) != expected:
            got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
            raise ValueError(f"noise must be a float tensor of shape {expected} (num_images x the model's input), "
                             f"got {got}")
    conditioning = sampling_conditioning(pipeline, num_images, seed, class_label, prompt)
    sampler = _sampling_scheduler(pipeline, scheduler, adapter)
    step_generator = torch.Generator().manual_seed(int(seed) + 1)
    batches = []
    total = num_images * num_inference_steps
    done = 0
    for start in range(0, num_images, batch_size):
        # Every batch starts the sampler afresh: a multistep solver keeps its earlier predictions.
        sampler.set_timesteps(num_inference_steps)
        sample = noise[start : start + batch_size].to(device=device, dtype=dtype)
        sample = sample * getattr(sampler, "init_noise_sigma", 1.0)
        condition = {key: value[start : start + batch_size] for key, value in conditioning.items()}
        for t in sampler.timesteps:
            model_input = sampler.scale_model_input(sample, t)
            model_output = adapter.guided_prediction(denoiser, model_input, t.to(device), condition)
            if scheduler == "ddpm":
                # DDPM adds fresh noise each step; a CPU generator keeps it device-independent.
                sample = sampler.step(model_output, t, sample, generator=step_generator).prev_sample
            elif scheduler == "ddim":
                sample = sampler.step(model_output, t, sample, eta=0.0).prev_sample
            else:
                sample = sampler.step(model_output, t, sample).prev_sample
            done += sample.shape[0]
            if progress is not None:
                progress(done / total, f"sampling images {start + 1}-{start + sample.shape[0]} of {num_images}")
        if decode:
            sample = adapter.decode(pipeline, sample)
        batches.append(sample.float().cpu())
    images = torch.cat(batches)
    return images.clamp(-1, 1) if decode else images


def to_pil(images: torch.Tensor):
    """float N x C x H x W in [-1, 1] -> list of PIL images."""
    from PIL import Image

    from .data import tensor_to_uint8

    arrays = tensor_to_uint8(images)
    return [Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a) for a in arrays]


def make_grid(images: torch.Tensor, columns: int | None = None, padding: int = 2, scale: int = 1):
    """Tile images into one PIL grid image (for side-by-side dense vs pruned views)."""
    from PIL import Image

    from .data import tensor_to_uint8

    arrays = tensor_to_uint8(images)
    count, height, width, channels = arrays.shape
    columns = columns or max(1, int(round(count ** 0.5)))
    rows = -(-count // columns)
    canvas = torch.full((rows * (height + padding) + padding, columns * (width + padding) + padding, channels), 255, dtype=torch.uint8)
    for index in range(count):
        r, c = divmod(index, columns)
        top, left = padding + r * (height + padding), padding + c * (width + padding)
        canvas[top : top + height, left : left + width] = torch.from_numpy(arrays[index])
    array = canvas.numpy()
    image = Image.fromarray(array[:, :, 0] if channels == 1 else array)
    if scale != 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    return image
