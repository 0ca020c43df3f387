"""Calibration data: the images (or, for latent models, latents) that calibration runs on.

``calibration_data`` names the source: the shipped Fashion-MNIST training images, a folder of the
user's images, or ``generated`` (data-free, Diff-Pruning's latent-model recipe: samples of the dense
model; latent models keep its latents directly instead of decoding and re-encoding them). Images
are encoded to latents by the family's adapter for latent models.
"""
from __future__ import annotations

from typing import Callable

import torch

from .pipeline import adapter_of

ProgressFn = Callable[[float, str], None]
# Data-free calibration: samples of the dense model with this many DDIM steps.
GENERATED_CALIBRATION_STEPS = 25


def _image_shape(pipeline) -> tuple[int, int]:
    channels, height, _ = adapter_of(pipeline).image_shape(pipeline)
    return int(height), int(channels)


def resolve_calibration_source(pipeline, spec) -> str:
    from .data import CALIBRATION_IMAGES

    if spec.calibration_data != "auto":
        return spec.calibration_data
    size, channels = _image_shape(pipeline)
    if (size, channels) == (28, 1) and CALIBRATION_IMAGES.exists():
        return "fashion-mnist-train"
    return "generated"


def calibration_pixels(pipeline, spec, progress: ProgressFn | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None, str]:
    """``calibration_batches * calibration_batch_size`` calibration inputs and the source used:
    ``(pixels, samples, source)`` -- pixel images in [-1, 1] (None when the dense model generated
    latents directly) and the denoiser's inputs (None when not yet encoded).

    A set smaller than needed is cycled. Images are picked by a permutation seeded by ``spec.seed``.
    Data-free calibration (``generated``) samples the dense model; latent models keep its latents.
    """
    from .data import CALIBRATION_IMAGES, load_image_folder, load_image_set
    from .pipeline import sample_images

    adapter = adapter_of(pipeline)
    count = spec.calibration_batches * spec.calibration_batch_size
    source = resolve_calibration_source(pipeline, spec)
    size, channels = _image_shape(pipeline)
    if source == "generated":
        samples = sample_images(
            pipeline, count, num_inference_steps=GENERATED_CALIBRATION_STEPS, seed=spec.seed, decode=False,
            progress=(lambda f, m: progress(0.1 * f, f"generating calibration images: {m}")) if progress else None,
        )
        label = f"generated ({GENERATED_CALIBRATION_STEPS} DDIM steps by the dense model{', its latents' if adapter.is_latent() else ''})"
        return None, samples, label
    if source == "fashion-mnist-train":
        images = load_image_set(CALIBRATION_IMAGES)
        if tuple(images.shape[1:]) != (channels, size, size):
            raise ValueError(
                f"calibration_data 'fashion-mnist-train' holds {tuple(images.shape[1:])} images but the model takes "
                f"{(channels, size, size)}; allowed for this model: 'generated' or an image folder"
            )
    else:
        images = load_image_folder(source, size, channels, limit=None)
    generator = torch.Generator().manual_seed(int(spec.seed))
    order = torch.randperm(images.shape[0], generator=generator)
    order = order.repeat(-(-count // len(order)))[:count]
    return images[order], None, source


def encode_samples(pipeline, pixels: torch.Tensor, spec) -> torch.Tensor:
    """Pixel images -> the denoiser's inputs: identity for pixel models, the autoencoder's latents
    (sampled with a generator seeded by ``spec.seed``) for latent models."""
    adapter = adapter_of(pipeline)
    if not adapter.is_latent():
        return pixels
    generator = torch.Generator().manual_seed(int(spec.seed) + 7)
    return torch.cat([adapter.encode(pipeline, chunk, generator).float().cpu()
                      for chunk in pixels.split(max(1, spec.calibration_batch_size))])


def calibration_images(pipeline, denoiser, spec, progress: ProgressFn | None = None) -> tuple[torch.Tensor, str]:
    """The denoiser's calibration inputs (images for pixel models, latents for latent models:
    calibration images encoded by the autoencoder) and the source used."""
    pixels, samples, source = calibration_pixels(pipeline, spec, progress)
    if samples is None:
        samples = encode_samples(pipeline, pixels, spec)
    return samples, source


def decode_for_autoencoder(pipeline, pixels, samples, spec):
    """Pixel images for an autoencoder's calibration: the calibration images, or the dense
    model's generated latents decoded."""
    if pixels is not None:
        return pixels
    adapter = adapter_of(pipeline)
    return torch.cat([adapter.decode(pipeline, chunk).float().cpu() for chunk in samples.split(spec.calibration_batch_size)])
