"""``StableDiffusionPipeline`` / ``UNet2DConditionModel``: Stable Diffusion 1.x and 2.x.

* Conditioning: CLIP text embeddings from the pipeline's own ``encode_prompt`` as
  ``encoder_hidden_states``; the empty prompt is the null condition of classifier-free guidance.
* Loss per the scheduler's ``prediction_type``: epsilon (SD 1.x, SD 2 base) or v (SD 2 768-v).
* SDXL's added conditioning (``addition_embed_type="text_time"``: pooled text and size/crop ids)
  and the other added embeddings (image, text-image) are refused with that reason: no family here
  draws them.
* Cuts: Torch-Pruning channels with the engine's fix-ups (cross-attention ``to_k``/``to_v`` read
  the text width, which is a model input and stays); heads (self- and cross-attention); FFN
  neurons of the transformer blocks (GEGLU: both halves); ``conv_in``/``conv_out`` never pruned.
  On reload, LayerNorm ``normalized_shape`` is resynchronised from the weights.
"""
from __future__ import annotations

import torch

from ..registry import ADAPTERS
from . import unet_cuts
from .base import _plain_config_by_rebuild
from .guided import UNCOND, GuidedAdapter


def is_unet2d_condition(module) -> bool:
    from diffusers import UNet2DConditionModel

    return isinstance(module, UNet2DConditionModel)


class StableDiffusionAdapter(GuidedAdapter):
    name = "stable-diffusion"
    description = ("StableDiffusionPipeline: UNet2DConditionModel (SD 1.x/2.x; SDXL's added conditioning is not "
                   "supported) + CLIP + AutoencoderKL")
    denoiser_name = "unet"
    conditioning_names = ("text_encoder", "tokenizer")
    sample_argument = "sample"
    default_guidance_scale = 7.5

    def matches(self, pipeline) -> bool:
        unet = getattr(pipeline, "unet", None)
        return (is_unet2d_condition(unet) and getattr(pipeline, "text_encoder", None) is not None
                and getattr(pipeline, "vae", None) is not None and hasattr(pipeline, "encode_prompt")
                and self.unsupported_conditioning(unet) is None)

    @staticmethod
    def unsupported_conditioning(unet) -> str | None:
        config = unet.config
        if config.addition_embed_type is not None:
            return f"added conditioning addition_embed_type={config.addition_embed_type!r} (SDXL) is not supported"
        if config.class_embed_type is not None or config.num_class_embeds is not None:
            return "class embeddings of a UNet2DConditionModel are not supported"
        if config.encoder_hid_dim_type is not None:
            return f"encoder_hid_dim_type={config.encoder_hid_dim_type!r} is not supported"
        return None

    def owns(self, module):
        return "unet" if is_unet2d_condition(module) else None

    def encode_conditioning(self, pipeline, prompts, device):
        embeds, negative = pipeline.encode_prompt(prompts, device, 1, True, negative_prompt=None)
        return {"encoder_hidden_states": embeds, UNCOND + "encoder_hidden_states": negative}

    def denoiser_example_inputs(self, module):
        device = next(module.parameters()).device
        width = module.config.cross_attention_dim
        width = width if isinstance(width, int) else width[0]
        return {"sample": torch.zeros(1, *self.sample_shape(module), device=device, dtype=next(module.parameters()).dtype),
                "timestep": torch.ones(1, dtype=torch.long, device=device),
                "encoder_hidden_states": torch.zeros(1, 8, int(width), device=device, dtype=next(module.parameters()).dtype)}

    # ------------------------------------------------------------------ structure (a UNet)
    def protected_layers(self, component, module):
        if component != self.denoiser_name:
            return super().protected_layers(component, module)
        return ("conv_in", "conv_out")

    def channel_kept_layers(self, component, module):
        return ("conv_out",) if component == self.denoiser_name else super().channel_kept_layers(component, module)

    def check_cut(self, component, module, granularity):
        return None

    # ------------------------------------------------------------------ depth: BK-SDM layers (unet_cuts)
    def block_units(self, component, module):
        if component != self.denoiser_name:
            return super().block_units(component, module)
        return unet_cuts.block_units(module)

    def max_blocks_removed(self, component, module, units):
        return len(units)

    def remove_blocks(self, component, module, units):
        if component != self.denoiser_name:
            return super().remove_blocks(component, module, units)
        unet_cuts.remove_block_units(module, units)

    def block_counts(self, component, module):
        if component != self.denoiser_name:
            return super().block_counts(component, module)
        return unet_cuts.block_counts(module)

    def plain_config(self, component, module, base_config):
        """The UNet2DConditionModel config of these shapes: ``block_out_channels`` from the down
        blocks, heads per block from the attentions (diffusers names SD's head count
        ``attention_head_dim``); None when no config rebuilds them exactly."""
        if component != self.denoiser_name:
            return super().plain_config(component, module, base_config)
        overrides = {"block_out_channels": [block.resnets[0].out_channels for block in module.down_blocks],
                     # depth cuts (granularity 'block', BK-SDM style) record themselves in the module's config
                     "layers_per_block": [len(block.resnets) for block in module.down_blocks],
                     "mid_block_type": base_config.get("mid_block_type") if module.mid_block is not None else None}
        if len(set(overrides["layers_per_block"])) == 1 and isinstance(base_config.get("layers_per_block"), int):
            overrides["layers_per_block"] = overrides["layers_per_block"][0]
        plain = _plain_config_by_rebuild(module, base_config, overrides)
        if plain is not None:  # the head counts are the original ones
            return plain
        heads = []
        for block in module.down_blocks:
            attentions = getattr(block, "attentions", None)
            if attentions:
                counts = {a.transformer_blocks[0].attn1.heads for a in attentions}
                if len(counts) != 1:
                    return None
                heads.append(counts.pop())
            else:
                heads.append(None)
        known = [h for h in heads if h is not None]
        if known:
            filled = [h if h is not None else known[0] for h in heads]
            key = "num_attention_heads" if base_config.get("num_attention_heads") is not None else "attention_head_dim"
            overrides[key] = filled
        return _plain_config_by_rebuild(module, base_config, overrides)


ADAPTERS.register(StableDiffusionAdapter)
