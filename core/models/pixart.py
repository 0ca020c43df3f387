"""``PixArtAlphaPipeline`` / ``PixArtTransformer2DModel`` (PixArt-alpha, Chen et al. 2023).

* Conditioning: T5 text embeddings with their attention mask (``encoder_hidden_states``,
  ``encoder_attention_mask``), encoded by the pipeline's own ``encode_prompt`` with
  ``clean_caption=False`` (caption cleaning needs packages this tool does not ship); the null
  condition is the empty prompt. ``added_cond_kwargs`` carries the resolution and aspect ratio
  when the model uses them (PixArt-alpha 1024), else ``None``.
* Learned sigma (2C outputs): the loss and the sampler use the first C.
* Cuts: heads (self- and cross-attention; cross-attention ``to_k``/``to_v`` read the caption width,
  which stays), FFN neurons, whole blocks. ``channel`` is refused: Torch-Pruning crashes when the
  residual width is cut (the shared adaLN-single output, the bare ``scale_shift_table``).
"""
from __future__ import annotations

import torch

from ..registry import ADAPTERS
from .guided import UNCOND, GuidedAdapter

MAX_SEQUENCE_LENGTH = 120  # the pipeline's default T5 length


def is_pixart(module) -> bool:
    from diffusers import PixArtTransformer2DModel

    return isinstance(module, PixArtTransformer2DModel)


class PixArtAdapter(GuidedAdapter):
    name = "pixart"
    description = "PixArtAlphaPipeline: PixArtTransformer2DModel + T5 text encoder + AutoencoderKL"
    denoiser_name = "transformer"
    conditioning_names = ("text_encoder", "tokenizer")
    default_guidance_scale = 4.5

    def matches(self, pipeline) -> bool:
        return is_pixart(getattr(pipeline, "transformer", None)) and getattr(pipeline, "text_encoder", None) is not None

    def owns(self, module):
        return "transformer" if is_pixart(module) else None

    def encode_conditioning(self, pipeline, prompts, device):
        length = min(MAX_SEQUENCE_LENGTH, int(getattr(pipeline.tokenizer, "model_max_length", MAX_SEQUENCE_LENGTH)))
        embeds, mask, negative, negative_mask = pipeline.encode_prompt(
            prompts, do_classifier_free_guidance=True, negative_prompt="", device=device,
            clean_caption=False, max_sequence_length=length,
        )
        return {"encoder_hidden_states": embeds, "encoder_attention_mask": mask,
                UNCOND + "encoder_hidden_states": negative, UNCOND + "encoder_attention_mask": negative_mask}

    def extra_inputs(self, denoiser, sample):
        """``added_cond_kwargs``: the image resolution and aspect ratio when the model uses them
        (``use_additional_conditions``, PixArt-alpha 1024; pixels = 8 x latents), else None."""
        if isinstance(denoiser, torch.nn.parallel.DistributedDataParallel):  # data-parallel recovery
            denoiser = denoiser.module
        uses = getattr(denoiser, "use_additional_conditions", None)
        if uses is None:  # a functional wrapper (gradflow): the conditioned() hook on the model adds them
            return {}
        if not uses:
            return {"added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}
        height, width = sample.shape[-2] * 8, sample.shape[-1] * 8
        rows = sample.shape[0]
        return {"added_cond_kwargs": {
            "resolution": torch.tensor([[height, width]], dtype=sample.dtype, device=sample.device).repeat(rows, 1),
            "aspect_ratio": torch.tensor([[height / width]], dtype=sample.dtype, device=sample.device).repeat(rows, 1)}}

    def denoiser_example_inputs(self, module):
        device = next(module.parameters()).device
        sample = torch.zeros(1, *self.sample_shape(module), device=device, dtype=next(module.parameters()).dtype)
        return {"hidden_states": sample, "timestep": torch.ones(1, dtype=torch.long, device=device),
                "encoder_hidden_states": torch.zeros(1, 8, int(module.config.caption_channels), device=device, dtype=next(module.parameters()).dtype),
                "encoder_attention_mask": torch.ones(1, 8, dtype=torch.long, device=device),
                **self.extra_inputs(module, sample)}


ADAPTERS.register(PixArtAdapter)
