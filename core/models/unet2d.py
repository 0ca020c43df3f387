"""Pixel-space ``UNet2DModel`` pipelines (``DDPMPipeline``, ``DDIMPipeline``), unconditional or
class-conditional (``num_class_embeds``: uniform classes in calibration, sampling and evaluation).

The UNet rules here (layers never pruned, scale/shift pairing, the plain config) are shared by the
latent families in ``latent.py``, whose denoiser is the same network on latents.
"""
from __future__ import annotations

import torch
from torch import nn

from ..registry import ADAPTERS
from . import unet_cuts
from .base import ModelAdapter, _plain_config_by_rebuild, class_labels

# The embedded default model's architecture (``core.default_model``; ``diffprune train-base``
# trains it): 28x28 -> 14x14 -> 7x7, attention at 14x14 and 7x7; attention_head_dim=32 gives
# 2 heads at 64 channels and 4 heads at 128 channels.
DEFAULT_ARCHITECTURE = dict(
    sample_size=28,
    in_channels=1,
    out_channels=1,
    layers_per_block=1,
    block_out_channels=(32, 64, 128),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=32,
    norm_num_groups=8,
)


def is_unet2d(module) -> bool:
    from diffusers import UNet2DModel

    return isinstance(module, UNet2DModel)


def _ddpm_family_scheduler(scheduler) -> bool:
    """Schedulers of the DDPM forward process (``alphas_cumprod`` and ``add_noise``); score-SDE VE
    schedulers have ``add_noise`` with another meaning and are not accepted."""
    return hasattr(scheduler, "add_noise") and hasattr(scheduler, "alphas_cumprod")


class UNet2DAdapter(ModelAdapter):
    """``UNet2DModel`` denoisers: ``unet(sample=x, timestep=t[, class_labels=y]).sample``."""

    name = "pixel-unet"
    description = "DDPMPipeline/DDIMPipeline with a pixel-space UNet2DModel, unconditional or class-conditional"
    denoiser_name = "unet"

    def matches(self, pipeline) -> bool:
        return (
            is_unet2d(getattr(pipeline, "unet", None))
            and _ddpm_family_scheduler(getattr(pipeline, "scheduler", None))
            and getattr(pipeline, "vqvae", None) is None
            and getattr(pipeline, "vae", None) is None
            and self._class_embedding_supported(pipeline.unet)
        )

    def owns(self, module):
        return "unet" if is_unet2d(module) else None

    @staticmethod
    def _is_denoiser(component, module) -> bool:
        return is_unet2d(module)

    @staticmethod
    def _class_embedding_supported(unet) -> bool:
        # num_class_embeds with the default embedding table; "timestep"/"identity" class embeddings
        # take continuous labels that this tool has no way to draw.
        return unet.config.num_class_embeds is None or unet.config.class_embed_type is None

    # ------------------------------------------------------------------ conditioning
    def num_classes(self, pipeline_or_denoiser):
        classes = self._as_denoiser(pipeline_or_denoiser).config.num_class_embeds
        return int(classes) if classes else None

    def sample_conditioning(self, pipeline_or_denoiser, batch_size, generator=None, *, class_label=None):
        classes = self.num_classes(pipeline_or_denoiser)
        if classes is None:
            return super().sample_conditioning(pipeline_or_denoiser, batch_size, generator, class_label=class_label)
        return {"class_labels": class_labels(class_label, batch_size, classes, generator)}

    # ------------------------------------------------------------------ structure
    def example_inputs(self, component, module):
        inputs = super().example_inputs(component, module)
        if self.num_classes(module) is not None:
            inputs["class_labels"] = torch.zeros(1, dtype=torch.long, device=inputs["sample"].device)
        return inputs

    def protected_layers(self, component, module):
        # The image-facing layers: Diff-Pruning leaves conv_out alone, and the input layer of a
        # 1- or 3-channel model has nothing to spare.
        return ("conv_in", "conv_out")

    def channel_kept_layers(self, component, module):
        return ("conv_out",)

    def channel_groups(self, component, module) -> dict:
        """Layer name -> output channel groups that Torch-Pruning must cut evenly.

        With ``resnet_time_scale_shift="scale_shift"`` a ResNet's ``time_emb_proj`` writes
        ``2 * C`` channels split into scale and shift halves, each read by ``norm2``'s C channels.
        Torch-Pruning groups the 2C outputs by ``norm2``'s group count, so a cut could take one
        channel from some GroupNorm groups and none from others (torch then raises "Expected number
        of channels ... divisible by num_groups"); ``2 * num_groups`` groups keep both halves and
        every GroupNorm group cut alike."""
        groups = {}
        for name, child in module.named_modules():
            projection = getattr(child, "time_emb_proj", None)
            if getattr(child, "time_embedding_norm", None) == "scale_shift" and isinstance(projection, nn.Linear):
                groups[f"{name}.time_emb_proj"] = 2 * int(child.norm2.num_groups)
        return groups

    def plain_config(self, component, module, base_config):
        """The UNet2DModel config that rebuilds exactly these shapes, or None."""
        overrides = {"block_out_channels": [block.resnets[0].out_channels for block in module.down_blocks]}
        attentions = list(self.attention_modules(component, module).values())
        if attentions:
            head_dims = {a.inner_dim // a.heads for a in attentions}
            if len(head_dims) != 1:
                return None
            head_dim = head_dims.pop()
            for attention in attentions:
                if attention.inner_dim != attention.query_dim or abs(attention.scale - head_dim ** -0.5) > 1e-12:
                    return None
            if base_config.get("attention_head_dim") is None:
                if any(a.heads != 1 for a in attentions):
                    return None
            else:
                overrides["attention_head_dim"] = head_dim
        return _plain_config_by_rebuild(module, base_config, overrides)

    # ------------------------------------------------------------------ depth: BK-SDM layers (unet_cuts)
    def block_units(self, component, module):
        if not self._is_denoiser(component, module):
            return super().block_units(component, module)
        return unet_cuts.block_units(module)

    def remove_blocks(self, component, module, units):
        if not self._is_denoiser(component, module):
            return super().remove_blocks(component, module, units)
        unet_cuts.remove_block_units(module, units)

    def block_counts(self, component, module):
        if not self._is_denoiser(component, module):
            return super().block_counts(component, module)
        return unet_cuts.block_counts(module)

    # ------------------------------------------------------------------ training from scratch
    def new_denoiser(self, config=None):
        """A freshly initialised ``UNet2DModel`` (default: :data:`DEFAULT_ARCHITECTURE`)."""
        from diffusers import UNet2DModel

        return UNet2DModel(**(DEFAULT_ARCHITECTURE if config is None else config))

    def new_pipeline(self, denoiser, scheduler):
        from diffusers import DDPMPipeline

        return DDPMPipeline(unet=denoiser, scheduler=scheduler)


ADAPTERS.register(UNet2DAdapter)
