"""Loading diffusion pipelines and sampling from them.

``load_pipeline`` is the single entry point for every model the tool touches: the embedded
default, a local diffusers directory, a hub id (the real path that works on Spaces) and the
checkpoints that ``PruneResult.save`` writes. ``sample_images`` is the one sampler that the UI,
the metrics and the benchmarks use, so a grid cell always compares like with like.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from .default_model import DEFAULT_MODEL_DIR

SCHEDULERS = ("ddim", "ddpm")
# Marker written by PruneResult.save next to a pruned checkpoint (see core/checkpoint.py).
PRUNED_MARKER = "diffprune_checkpoint.json"

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


def _check_pipeline(pipeline, source: str) -> None:
    unet = getattr(pipeline, "unet", None)
    scheduler = getattr(pipeline, "scheduler", None)
    if unet is None or scheduler is None or not hasattr(scheduler, "add_noise"):
        raise ValueError(
            f"{source!r} is a {type(pipeline).__name__}, not an unconditional diffusion pipeline "
            "with a UNet and a noise scheduler (DDPMPipeline or DDIMPipeline)"
        )
    from diffusers import UNet2DModel

    if not isinstance(unet, UNet2DModel):
        raise ValueError(
            f"{source!r}: its unet is a {type(unet).__name__}; only pixel-space UNet2DModel "
            "pipelines are supported"
        )


def load_pipeline(source: str | Path | None = None, device: str | torch.device | None = None):
    """Load a diffusion pipeline on ``device`` (CUDA when available, else CPU).

    ``source`` is ``None`` (the embedded default model), a local diffusers directory, a
    directory written by ``PruneResult.save``, or a Hugging Face hub id.
    """
    torch_device = pick_device(device)
    source_path = DEFAULT_MODEL_DIR if source is None else Path(str(source)).expanduser()
    label = "default model" if source is None else str(source)
    if source is None and not source_path.is_dir():
        raise ValueError(f"the embedded default model is missing at {source_path}; train it with `diffprune train-base`")
    if source_path.is_dir():
        if (source_path / PRUNED_MARKER).exists():
            from .checkpoint import load_pruned_pipeline

            pipeline = load_pruned_pipeline(source_path)
        else:
            if not (source_path / "model_index.json").exists():
                raise ValueError(f"{label!r} is a directory but not a diffusers pipeline (no model_index.json)")
            pipeline = _from_pretrained(str(source_path), label, local_files_only=True)
    else:
        text = str(source)
        looks_local = text.startswith((".", "/", "~")) or text.count("/") > 1 or source_path.suffix != ""
        if source_path.exists():
            raise ValueError(f"{label!r} is a file, not a diffusers pipeline directory")
        if looks_local:
            raise ValueError(f"model path {label!r} does not exist")
        pipeline = _from_pretrained(text, label, local_files_only=False)
    _check_pipeline(pipeline, label)
    pipeline.to(torch_device)
    pipeline.set_progress_bar_config(disable=True)
    pipeline.unet.eval()
    return pipeline


def _from_pretrained(name: str, label: str, local_files_only: bool):
    from diffusers import DiffusionPipeline

    try:
        return DiffusionPipeline.from_pretrained(name, local_files_only=local_files_only)
    except ValueError as error:
        raise ValueError(f"could not load {label!r}: {str(error).splitlines()[0][:200]}") from error
    except (OSError, EnvironmentError, json.JSONDecodeError, KeyError, AttributeError, TypeError) as error:
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise ValueError(
            f"could not load {label!r} as a diffusers pipeline (unknown hub id, no network, or not a "
            f"diffusers model): {reason}"
        ) from error


def _sampling_scheduler(pipeline, scheduler: str):
    from diffusers import DDIMScheduler, DDPMScheduler

    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {list(SCHEDULERS)}, got {scheduler!r}")
    cls = DDIMScheduler if scheduler == "ddim" else DDPMScheduler
    return cls.from_config(pipeline.scheduler.config)


def unet_noise(unet, num_images: int, seed: int) -> torch.Tensor:
    """Gaussian noise of ``num_images`` inputs of ``unet``, drawn on the CPU from ``seed`` so it is
    the same on every device."""
    config = unet.config
    size = config.sample_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randn((num_images, config.in_channels, height, width), generator=generator)


def initial_noise(pipeline, num_images: int, seed: int) -> torch.Tensor:
    """The starting noise for ``num_images`` samples, drawn on the CPU so it is the same on every device."""
    return unet_noise(pipeline.unet, num_images, seed)


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
    progress: ProgressFn | None = None,
) -> torch.Tensor:
    """Sample ``num_images`` images; returns float N x C x H x W in [-1, 1] on the CPU.

    Deterministic for a given seed: the initial noise (and DDPM's per-step noise) comes from
    CPU generators seeded with ``seed``; pass ``noise`` to share it between two models.
    """
    if not isinstance(num_images, int) or num_images <= 0:
        raise ValueError(f"num_images must be a positive integer, got {num_images!r}")
    if not isinstance(num_inference_steps, int) or num_inference_steps <= 0:
        raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    train_steps = pipeline.scheduler.config.num_train_timesteps
    if num_inference_steps > train_steps:
        raise ValueError(f"num_inference_steps must be at most {train_steps}, got {num_inference_steps}")
    unet = pipeline.unet
    device, dtype = unet.device, unet.dtype
    if noise is None:
        noise = initial_noise(pipeline, num_images, seed)
    elif noise.shape[0] != num_images:
        raise ValueError(f"noise holds {noise.shape[0]} images but num_images is {num_images}")
    sampler = _sampling_scheduler(pipeline, scheduler)
    sampler.set_timesteps(num_inference_steps)
    step_generator = torch.Generator().manual_seed(int(seed) + 1)
    batches = []
    total = num_images * num_inference_steps
    done = 0
    for start in range(0, num_images, batch_size):
        image = noise[start : start + batch_size].to(device=device, dtype=dtype)
        for t in sampler.timesteps:
            model_output = unet(image, t).sample
            if scheduler == "ddpm":
                # DDPM adds fresh noise each step; a CPU generator keeps it device-independent.
                image = sampler.step(model_output, t, image, generator=step_generator).prev_sample
            else:
                image = sampler.step(model_output, t, image, eta=0.0).prev_sample
            done += image.shape[0]
            if progress is not None:
                progress(done / total, f"sampling images {start + 1}-{start + image.shape[0]} of {num_images}")
        batches.append(image.float().cpu())
    return torch.cat(batches).clamp(-1, 1)


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
