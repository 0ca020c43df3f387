"""Latent ``UNet2DModel`` pipelines: ``LDMPipeline`` (``UNet2DModel`` + ``VQModel``) and UNets on the
latents of an ``AutoencoderKL``.

* Encoding follows the installed ``LDMPipeline``, which decodes ``vqvae.decode(z / scaling_factor)``:
  latents are ``vqvae.encode(x).latents * scaling_factor``; for a KL autoencoder
  ``(latent_dist.sample() - shift_factor) * scaling_factor`` (``shift_factor`` where set, SD3's rule).
* The autoencoder is a prunable component (Towards Tiny Diffusion prunes the UNet *and* the VQ-VAE
  of CompVis/ldm-celebahq-256). Its latent interface is never cut: ``encoder.conv_out``,
  ``quant_conv``, ``post_quant_conv``, ``decoder.conv_out`` keep their weights and output channels,
  and the codebook (``quantize.embedding``) is left whole. Its calibration loss is its own
  reconstruction error ``MSE(decode(encode(x)), x)``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..registry import ADAPTERS
from . import autoencoders
from .autoencoders import is_autoencoder, is_kl, is_vq
from .base import ModelAdapter, _plain_config_by_rebuild
from .unet2d import UNet2DAdapter, _ddpm_family_scheduler, is_unet2d

# The latent interface of an autoencoder: weights and output channels never cut.
AUTOENCODER_INTERFACE = ("encoder.conv_out", "quant_conv", "post_quant_conv", "decoder.conv_out")


class _LatentUNetAdapter(UNet2DAdapter):
    """Shared by the VQ and KL families: the UNet rules of the pixel family on latents, plus the
    autoencoder's encode/decode and its pruning rules."""

    autoencoder_candidates: tuple = ()  # pipeline attributes that may hold the autoencoder
    is_family_autoencoder = staticmethod(is_autoencoder)

    def autoencoder_attribute(self, pipeline):
        for name in self.autoencoder_candidates:
            if self.is_family_autoencoder(getattr(pipeline, name, None)):
                return name
        return None

    def matches(self, pipeline) -> bool:
        return (
            is_unet2d(getattr(pipeline, "unet", None))
            and _ddpm_family_scheduler(getattr(pipeline, "scheduler", None))
            and self.autoencoder_attribute(pipeline) is not None
            and self._class_embedding_supported(pipeline.unet)
        )

    def owns(self, module):
        if is_unet2d(module):
            return "unet"
        if self.is_family_autoencoder(module):
            return self.autoencoder_candidates[0]
        return None

    # The pixel family's default architecture and DDPMPipeline do not apply to latents.
    new_denoiser = ModelAdapter.new_denoiser
    new_pipeline = ModelAdapter.new_pipeline

    # ------------------------------------------------------------------ latents
    def image_shape(self, pipeline) -> tuple:
        return autoencoders.image_shape(self.autoencoder(pipeline), self.sample_shape(pipeline))

    def encode(self, pipeline, images, generator=None):
        return autoencoders.encode(self.autoencoder(pipeline), images, generator)

    def decode(self, pipeline, latents):
        return autoencoders.decode(self.autoencoder(pipeline), latents)

    def autoencoder_loss(self, autoencoder: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Per-image reconstruction error ``MSE(decode(encode(x)), x)`` (the autoencoder's own loss)."""
        reconstruction = autoencoder(images).sample
        return (reconstruction - images).pow(2).flatten(1).mean(1)

    # ------------------------------------------------------------------ structure
    def example_inputs(self, component, module):
        if self._is_denoiser(component, module):
            return super().example_inputs(component, module)
        device = next(module.parameters()).device
        size = module.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return {"sample": torch.zeros(1, int(module.config.in_channels), int(height), int(width), device=device, dtype=next(module.parameters()).dtype)}

    def _interface(self, module) -> tuple:
        modules = dict(module.named_modules())
        return tuple(name for name in AUTOENCODER_INTERFACE if isinstance(modules.get(name), (nn.Conv2d, nn.Linear)))

    def protected_layers(self, component, module):
        if self._is_denoiser(component, module):
            return super().protected_layers(component, module)
        return self._interface(module)

    def channel_kept_layers(self, component, module):
        if self._is_denoiser(component, module):
            return super().channel_kept_layers(component, module)
        codebook = ("quantize.embedding",) if "quantize.embedding" in dict(module.named_modules()) else ()
        return self._interface(module) + codebook

    def plain_config(self, component, module, base_config):
        if self._is_denoiser(component, module):
            return super().plain_config(component, module, base_config)
        widths = [block.resnets[-1].out_channels for block in module.encoder.down_blocks]
        return _plain_config_by_rebuild(module, base_config, {"block_out_channels": widths})


class VQLatentAdapter(_LatentUNetAdapter):
    name = "latent-vq"
    description = "LDMPipeline: latent UNet2DModel + VQModel (vqvae)"
    autoencoder_name = "vqvae"
    autoencoder_candidates = ("vqvae",)
    is_family_autoencoder = staticmethod(is_vq)


class KLLatentAdapter(_LatentUNetAdapter):
    name = "latent-kl"
    description = "a latent UNet2DModel + AutoencoderKL (vae, or vqvae in an LDMPipeline)"
    autoencoder_name = "vae"
    autoencoder_candidates = ("vae", "vqvae")
    is_family_autoencoder = staticmethod(is_kl)


ADAPTERS.register(VQLatentAdapter)
ADAPTERS.register(KLLatentAdapter)
