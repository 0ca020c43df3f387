"""``StableDiffusion3Pipeline`` / ``SD3Transformer2DModel``: SD3 and SD3.5 (MMDiT, Esser et al. 2024).

* Flow matching (rectified flow): ``x_t = (1 - s) x0 + s eps``, target ``eps - x0``, the model
  receives ``s * 1000``; the scheduler (``FlowMatchEulerDiscreteScheduler``) has no ``add_noise``,
  so ``ModelAdapter.prediction_type`` reads it as ``flow``. Sampling uses the pipeline's own flow
  scheduler (Euler; the engine's "ddim"/"ddpm" choice does not apply and is refused for "ddpm").
* Conditioning: the pipeline's ``encode_prompt`` (two CLIPs and T5, or zeros where T5 is absent):
  ``encoder_hidden_states`` and ``pooled_projections``; the empty prompt is the null condition.
* Joint attention: a head is the rows of ``to_q/k/v`` and ``add_q/k/v_proj`` and the columns of
  ``to_out.0`` and ``to_add_out`` (eight projections); the last block is ``context_pre_only``
  (no ``to_add_out``, no ``ff_context``) and is never removed by a block cut; SD3.5's qk-norm
  (``rms_norm`` over ``head_dim``) is shared by the heads and stays whole. Heads are cut directly
  (``transformer_cuts``): Torch-Pruning's head removal crashes on qk-norm and its per-head-width
  pruning silently skips attention. ``channel`` is refused (the residual width is kept).
"""
from __future__ import annotations

import copy

import torch

from ..registry import ADAPTERS
from .guided import UNCOND, FlowSampler, GuidedAdapter

MAX_SEQUENCE_LENGTH = 256  # the pipeline's default T5 length


def is_sd3(module) -> bool:
    from diffusers import SD3Transformer2DModel

    return isinstance(module, SD3Transformer2DModel)


class SD3Adapter(GuidedAdapter):
    name = "sd3"
    description = "StableDiffusion3Pipeline: SD3Transformer2DModel (SD3, SD3.5 with qk-norm) + CLIP/T5 + AutoencoderKL"
    denoiser_name = "transformer"
    conditioning_names = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3")
    default_guidance_scale = 7.0

    def matches(self, pipeline) -> bool:
        return is_sd3(getattr(pipeline, "transformer", None)) and getattr(pipeline, "text_encoder", None) is not None

    def owns(self, module):
        return "transformer" if is_sd3(module) else None

    def prediction_type(self, scheduler) -> str:
        return "flow"

    sampler_label = "flow Euler"

    def sampler_step(self, scheduler, prediction, sample, timestep, next_timestep):
        """One flow Euler step (rectified flow, Esser et al. 2024): along ``x_s = (1 - s) x0 + s eps``
        the model predicts the velocity ``v = dx/ds = eps - x0``, so ``x_{s'} = x_s + (s' - s) v``
        with ``s = t / T`` as in :meth:`add_noise` and ``s' = 0`` (the clean sample) after the last step."""
        total = float(self.num_train_timesteps(scheduler))
        s = float(timestep) / total
        s_next = float(next_timestep) / total if next_timestep is not None else 0.0
        velocity = self.trim_prediction(prediction, sample)
        return sample + (s_next - s) * velocity

    def encode_conditioning(self, pipeline, prompts, device):
        tokenizer = getattr(pipeline, "tokenizer_3", None)
        length = min(MAX_SEQUENCE_LENGTH, int(getattr(tokenizer, "model_max_length", MAX_SEQUENCE_LENGTH) or MAX_SEQUENCE_LENGTH))
        embeds, negative, pooled, negative_pooled = pipeline.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, device=device, do_classifier_free_guidance=True,
            negative_prompt="", max_sequence_length=length,
        )
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled,
                UNCOND + "encoder_hidden_states": negative, UNCOND + "pooled_projections": negative_pooled}

    def sampling_scheduler(self, pipeline, name):
        if name != "ddim":
            raise ValueError(f"scheduler {name!r} does not apply to a flow-matching model (SD3); use 'ddim' "
                             "(deterministic: the pipeline's own flow Euler scheduler)")
        return FlowSampler(copy.deepcopy(self.scheduler(pipeline)))

    def denoiser_example_inputs(self, module):
        device = next(module.parameters()).device
        config = module.config
        return {"hidden_states": torch.zeros(1, *self.sample_shape(module), device=device, dtype=next(module.parameters()).dtype),
                "timestep": torch.ones(1, device=device),
                "encoder_hidden_states": torch.zeros(1, 8, int(config.joint_attention_dim), device=device, dtype=next(module.parameters()).dtype),
                "pooled_projections": torch.zeros(1, int(config.pooled_projection_dim), device=device, dtype=next(module.parameters()).dtype)}


ADAPTERS.register(SD3Adapter)
