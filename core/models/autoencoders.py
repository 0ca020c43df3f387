"""The autoencoder side of every latent family, in one place: which autoencoders there are, their
latent scaling, the pixel padding of their training images, and encode / decode.

Latents are ``(z - shift_factor) * scaling_factor`` (``shift_factor`` where set, SD3's rule; the
installed ``LDMPipeline`` decodes ``vqvae.decode(z / scaling_factor)``); a KL autoencoder's ``z`` is
a sample of its posterior drawn with a CPU generator (the same latents on every device), a VQ
autoencoder's its pre-quantisation latents. An autoencoder whose training images were padded
(config key ``_image_padding``, kept by diffusers through load, copy and save; the embedded
Fashion-MNIST DiT pads the 28x28 garments to 32x32 with background) has its inputs padded by
``encode`` and its outputs cropped back by ``decode``, so grids, FID and KID see the reference
set's geometry -- for every family, the latent UNets as well as the transformers.
"""
from __future__ import annotations

import torch


def is_vq(module) -> bool:
    from diffusers import VQModel

    return isinstance(module, VQModel)


def is_kl(module) -> bool:
    from diffusers import AutoencoderKL

    return isinstance(module, AutoencoderKL)


def is_autoencoder(module) -> bool:
    return is_vq(module) or is_kl(module)


def image_padding(autoencoder) -> tuple:
    """(left, right, top, bottom) pixels the autoencoder's training images were padded by."""
    padding = autoencoder.config.get("_image_padding") if autoencoder is not None else None
    return tuple(int(p) for p in padding) if padding else (0, 0, 0, 0)


def scaling(autoencoder) -> tuple[float, float]:
    """(scaling_factor, shift_factor) of the autoencoder's latents (1 and 0 where unset)."""
    config = autoencoder.config
    return float(getattr(config, "scaling_factor", None) or 1.0), float(getattr(config, "shift_factor", None) or 0.0)


def image_shape(autoencoder, latent_shape: tuple) -> tuple:
    """(C, H, W) of one decoded image for latents of ``(c, h, w)`` (padding cropped)."""
    _, height, width = latent_shape
    factor = 2 ** (len(autoencoder.config.block_out_channels) - 1)
    left, right, top, bottom = image_padding(autoencoder)
    return int(autoencoder.config.in_channels), height * factor - top - bottom, width * factor - left - right


@torch.no_grad()
def encode(autoencoder, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Scaled latents of pixel images in [-1, 1] (padded with background as the autoencoder was trained)."""
    scale, shift = scaling(autoencoder)
    parameter = next(autoencoder.parameters())
    padding = image_padding(autoencoder)
    if any(padding):
        images = torch.nn.functional.pad(images, padding, value=-1.0)  # background of [-1, 1] images
    images = images.to(device=parameter.device, dtype=parameter.dtype)
    if is_vq(autoencoder):
        latents = autoencoder.encode(images).latents
    else:
        posterior = autoencoder.encode(images).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=generator).to(posterior.mean.device, posterior.mean.dtype) \
            if generator is not None else torch.randn_like(posterior.mean)
        latents = posterior.mean + posterior.std * noise
    return (latents - shift) * scale


@torch.no_grad()
def decode(autoencoder, latents: torch.Tensor) -> torch.Tensor:
    """Pixel images in [-1, 1] of scaled latents (padding cropped)."""
    scale, shift = scaling(autoencoder)
    parameter = next(autoencoder.parameters())
    latents = latents.to(device=parameter.device, dtype=parameter.dtype)
    images = autoencoder.decode(latents / scale + shift).sample.float().clamp(-1, 1)
    left, right, top, bottom = image_padding(autoencoder)
    return images[..., top : images.shape[-2] - bottom, left : images.shape[-1] - right]
