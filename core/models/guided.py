"""Shared rules of the conditional latent families (Stable Diffusion, DiT, PixArt, SD3): the
``AutoencoderKL`` latents, classifier-free guidance, prompts, and the transformer layer policy.

Conditioning is a dict of per-sample CPU tensors (the engine slices it by batch): the denoiser's
own keyword inputs (``encoder_hidden_states``, ``pooled_projections``, ``class_labels`` ...), the
same inputs of the null condition under ``uncond_<name>`` and a per-sample ``guidance_scale``.
:meth:`GuidedAdapter.predict` (calibration losses, tracing) sends only the conditional inputs;
:meth:`GuidedAdapter.guided_prediction` (sampling, and so data-free calibration on the dense
model's own guided samples, as OBS-Diff builds its Hessians) evaluates both halves in one batch and
returns ``uncond + g * (cond - uncond)`` (Ho & Salimans 2022), on the first C channels of a
learned-sigma model.

Layers never pruned in transformer families (``protected_layers``): the patch embedding, the final
projection(s), the time / text / class / caption embedders and, by default, the adaLN modulation
linears (``norm1.linear``, ``norm1_context.linear``, ``norm_out.linear``, PixArt's ``adaln_single``
and ``scale_shift_table``): they are the interface to the latents and the conditioning, small next
to the blocks, and every block reads them. ``prune_adaln=True`` (an adapter built by hand,
``SD3Adapter(prune_adaln=True)``) makes the modulation linears prunable.
"""
from __future__ import annotations

import contextlib
import re

import torch
from torch import nn

from . import autoencoders, transformer_cuts
from .base import ModelAdapter, _match_batch, _output

UNCOND = "uncond_"
GUIDANCE = "guidance_scale"
# Transformer layers of the image / conditioning interface (regular expressions on layer names).
TRANSFORMER_INTERFACE = (
    r"pos_embed\..*", r"proj_out.*", r"time_text_embed\..*", r"context_embedder", r"caption_projection\..*",
    r"adaln_single\..*", r".*\.emb\..*",  # DiT: each block's CombinedTimestepLabelEmbeddings
)
ADALN_MODULATION = (r".*norm1\.linear", r".*norm1_context\.linear", r"norm_out\.linear", r".*norm1\.linear_1")


class GuidedAdapter(ModelAdapter):
    """Base of the conditional latent families; subclasses say how to encode the conditioning."""

    autoencoder_name = "vae"
    default_guidance_scale: float = 4.0
    sample_argument: str = "hidden_states"  # the denoiser's keyword for its noisy input

    def __init__(self, prune_adaln: bool = False):
        self.prune_adaln = prune_adaln  # adaLN modulation linears prunable (default: protected)

    def prunable_components(self, pipeline) -> tuple:
        # Text encoders and tokenizers are never pruned; the autoencoder only when named.
        return super().prunable_components(pipeline)

    # ------------------------------------------------------------------ latents (AutoencoderKL)
    def sample_shape(self, pipeline_or_denoiser) -> tuple:
        config = self._as_denoiser(pipeline_or_denoiser).config
        size = config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return int(config.in_channels), int(height), int(width)

    def image_shape(self, pipeline) -> tuple:
        return autoencoders.image_shape(self.autoencoder(pipeline), self.sample_shape(pipeline))

    def encode(self, pipeline, images, generator=None):
        return autoencoders.encode(self.autoencoder(pipeline), images, generator)

    def decode(self, pipeline, latents):
        return autoencoders.decode(self.autoencoder(pipeline), latents)

    def sampling_scheduler(self, pipeline, name):
        """DDIM, DDPM or DPM-Solver++ from the pipeline scheduler's config. diffusers' ``_use_default_values``
        (present in a scheduler built in memory, absent once saved) would make ``from_config``
        fall back to DDIM's own defaults (``timestep_spacing``...) before a save and not after, so
        it is dropped: a pipeline and its saved copy sample alike."""
        from .base import sampler_from_config

        config = {k: v for k, v in dict(self.scheduler(pipeline).config).items() if k != "_use_default_values"}
        return sampler_from_config(name, config)

    # ------------------------------------------------------------------ conditioning
    def encode_conditioning(self, pipeline, prompts: list, device) -> dict:
        """``{input: tensor}`` for the conditional and (``uncond_`` prefixed) null inputs of
        ``prompts``; text families override this."""
        raise NotImplementedError

    def sample_conditioning(self, pipeline_or_denoiser, batch_size, generator=None, *, class_label=None,
                            prompts=None, guidance_scale: float | None = None):
        """Conditioning for ``batch_size`` samples: prompts drawn uniformly from ``prompts`` (default:
        the shipped calibration captions, ``core/prompts.py``), encoded by the pipeline's own text
        encoders, with the empty prompt as the null condition."""
        from ..prompts import draw_prompts

        if class_label is not None:
            raise ValueError(f"class_label applies to class-conditional models only; this {self.name} model takes prompts")
        if isinstance(pipeline_or_denoiser, nn.Module):
            raise ValueError(f"the {self.name} family needs its pipeline (text encoders) to draw conditioning, got a bare network")
        chosen = draw_prompts(batch_size, generator, prompts)
        encoder = self._text_device(pipeline_or_denoiser)
        with torch.no_grad():
            conditioning = self.encode_conditioning(pipeline_or_denoiser, chosen, encoder)
        return self._with_guidance(conditioning, batch_size, guidance_scale)

    def _with_guidance(self, conditioning: dict, batch_size: int, guidance_scale) -> dict:
        scale = self.default_guidance_scale if guidance_scale is None else guidance_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 <= scale <= 50:
            raise ValueError(f"guidance_scale must be a number in [0, 50], got {guidance_scale!r}")
        out = {key: value.detach().float().cpu() if value.is_floating_point() else value.detach().cpu()
               for key, value in conditioning.items()}
        out[GUIDANCE] = torch.full((batch_size,), float(scale))
        return out

    def _text_device(self, pipeline):
        for name in ("text_encoder", "text_encoder_3", "text_encoder_2"):
            module = getattr(pipeline, name, None)
            if isinstance(module, nn.Module):
                return next(module.parameters()).device
        return torch.device("cpu")

    def model_inputs(self, conditioning: dict, sample: torch.Tensor) -> dict:
        """The denoiser's keyword inputs from a conditioning dict (no null condition, no scale)."""
        inputs = {k: v for k, v in conditioning.items() if not k.startswith(UNCOND) and k != GUIDANCE}
        inputs = _match_batch(inputs, sample)
        return {k: v.to(sample.device, sample.dtype if v.is_floating_point() else v.dtype) if isinstance(v, torch.Tensor) else v
                for k, v in inputs.items()}

    def extra_inputs(self, denoiser: nn.Module, sample: torch.Tensor) -> dict:
        """Keyword inputs the denoiser always takes besides the conditioning (PixArt: added_cond_kwargs)."""
        return {}

    def predict(self, denoiser, sample, timesteps, conditioning=None):
        kwargs = self.model_inputs(conditioning or {}, sample)
        kwargs.update(self.extra_inputs(denoiser, sample))
        if not isinstance(timesteps, torch.Tensor):
            timesteps = torch.tensor(timesteps)
        if timesteps.dim() == 0:
            timesteps = timesteps.expand(sample.shape[0])
        kwargs[self.sample_argument] = sample
        return _output(denoiser(timestep=timesteps.to(sample.device), **kwargs))

    @contextlib.contextmanager
    def conditioned(self, denoiser, conditioning):
        """Within the block, a call ``denoiser(x, t)`` (positional, as OBS's trajectory and gradflow
        make it) becomes the keyword call ``denoiser(<sample_argument>=x, timestep=t, **inputs)``
        with the conditional inputs of ``conditioning`` matched to the batch (never the null
        condition or the guidance scale); the pre-hook is removed on exit, even on error."""
        conditioning = conditioning or {}

        def inject(module, args, kwargs):
            args = list(args)
            if args and self.sample_argument not in kwargs:
                kwargs[self.sample_argument] = args.pop(0)
            if args and "timestep" not in kwargs:
                kwargs["timestep"] = args.pop(0)
            sample = kwargs.get(self.sample_argument)
            if sample is None:
                return tuple(args), kwargs
            for key, value in self.model_inputs(conditioning, sample).items():
                kwargs.setdefault(key, value)
            for key, value in self.extra_inputs(module, sample).items():
                kwargs.setdefault(key, value)
            timestep = kwargs.get("timestep")
            if isinstance(timestep, torch.Tensor) and timestep.dim() == 0:
                kwargs["timestep"] = timestep.expand(sample.shape[0])
            return tuple(args), kwargs

        handle = denoiser.register_forward_pre_hook(inject, with_kwargs=True)
        try:
            yield denoiser
        finally:
            handle.remove()

    def guided_prediction(self, denoiser, sample, timestep, conditioning=None):
        """Classifier-free guidance: ``uncond + g (cond - uncond)`` with the per-sample scale; the
        first C channels of a learned-sigma model (the sampler's noise prediction)."""
        conditioning = conditioning or {}
        scale = conditioning.get(GUIDANCE)
        null = {k[len(UNCOND):]: v for k, v in conditioning.items() if k.startswith(UNCOND)}
        channels = sample.shape[1]
        if scale is None or not null or bool((scale == 1).all()):
            return self.predict(denoiser, sample, timestep, conditioning)[:, :channels]
        cond = self.model_inputs(conditioning, sample)
        both = {}
        for key, value in cond.items():
            other = self.model_inputs({key: null[key]}, sample)[key] if key in null else value
            both[key] = torch.cat([other, value]) if isinstance(value, torch.Tensor) else value
        doubled = torch.cat([sample, sample])
        timestep = timestep if isinstance(timestep, torch.Tensor) else torch.tensor(timestep)
        timestep = timestep.expand(doubled.shape[0]) if timestep.dim() == 0 else torch.cat([timestep, timestep])
        kwargs = dict(both, **self.extra_inputs(denoiser, doubled))
        kwargs[self.sample_argument] = doubled
        output = _output(denoiser(timestep=timestep.to(sample.device), **kwargs))[:, :channels]
        uncond, cond_out = output.chunk(2)
        g = _match_batch({"g": scale}, sample)["g"].to(sample.device, output.dtype).view(-1, *([1] * (sample.dim() - 1)))
        return uncond + g * (cond_out - uncond)

    def example_inputs(self, component, module):
        """Keyword inputs of one forward pass (batch 1): the denoiser's with zero conditioning, or
        an image for the autoencoder (MAC counting and tracing of every component)."""
        if component == self.denoiser_name or self.owns(module) == self.denoiser_name:
            return self.denoiser_example_inputs(module)
        parameter = next(module.parameters())
        size = module.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return {"sample": torch.zeros(1, int(module.config.in_channels), int(height), int(width),
                                      device=parameter.device, dtype=parameter.dtype)}

    def denoiser_example_inputs(self, module) -> dict:
        raise NotImplementedError

    # ------------------------------------------------------------------ structure (transformers)
    def protected_layers(self, component, module):
        if component != self.denoiser_name:
            return self._autoencoder_interface(module)
        patterns = TRANSFORMER_INTERFACE + (() if self.prune_adaln else ADALN_MODULATION)
        compiled = [re.compile(p + r"$") for p in patterns]
        return tuple(name for name, child in module.named_modules()
                     if isinstance(child, (nn.Linear, nn.Conv2d)) and any(p.match(name) for p in compiled))

    def channel_kept_layers(self, component, module):
        return self.protected_layers(component, module)

    # ------------------------------------------------------------------ depth: whole transformer blocks
    def block_units(self, component, module):
        if component != self.denoiser_name:
            return super().block_units(component, module)
        return transformer_cuts.block_units(module)

    def max_blocks_removed(self, component, module, units):
        """A transformer keeps at least one block."""
        if component != self.denoiser_name:
            return super().max_blocks_removed(component, module, units)
        return transformer_cuts.block_counts(module)["transformer_blocks"] - 1

    def remove_blocks(self, component, module, units):
        if component != self.denoiser_name:
            return super().remove_blocks(component, module, units)
        transformer_cuts.remove_block_units(module, units)

    def block_counts(self, component, module):
        if component != self.denoiser_name:
            return super().block_counts(component, module)
        return transformer_cuts.block_counts(module)

    # ------------------------------------------------------------------ the autoencoder, when named in components
    @staticmethod
    def _autoencoder_interface(module) -> tuple:
        from .latent import AUTOENCODER_INTERFACE

        modules = dict(module.named_modules())
        return tuple(name for name in AUTOENCODER_INTERFACE if isinstance(modules.get(name), (nn.Conv2d, nn.Linear)))

    def autoencoder_loss(self, autoencoder, images):
        """Per-image reconstruction error ``MSE(decode(encode(x)), x)`` (the autoencoder's own loss)."""
        return (autoencoder(images).sample - images).pow(2).flatten(1).mean(1)

    def check_cut(self, component, module, granularity):
        if component == self.denoiser_name and granularity == "channel":
            raise ValueError(self.channel_refusal)
        return super().check_cut(component, module, granularity)

    channel_refusal = ("granularity 'channel' cannot cut this transformer: its residual width is shared by the patch "
                       "embedding's pos_embed buffer, every LayerNorm and the adaLN modulation, which Torch-Pruning "
                       "does not cut correctly; allowed: 'head', 'ffn', 'block', 'unstructured' or N:M")

    def fix_up(self, component, module):
        from .transformer_cuts import check_heads_consistent

        super().fix_up(component, module)
        for attention in self.attention_modules(component, module).values():
            check_heads_consistent(attention)

    def plain_config(self, component, module, base_config):
        """Transformer configs express the depth (``num_layers``) only: plain diffusers reloads a
        cut that kept every block's width (unstructured, N:M, block), nothing else."""
        from .base import _plain_config_by_rebuild

        if component != self.denoiser_name:  # the AutoencoderKL: its widths are block_out_channels
            widths = [block.resnets[-1].out_channels for block in module.encoder.down_blocks]
            return _plain_config_by_rebuild(module, base_config, {"block_out_channels": widths})
        overrides = {}
        if "num_layers" in base_config and hasattr(module, "transformer_blocks"):
            overrides["num_layers"] = len(module.transformer_blocks)
            if base_config.get("dual_attention_layers") is not None:
                overrides["dual_attention_layers"] = list(getattr(module.config, "dual_attention_layers", ()) or ())
        return _plain_config_by_rebuild(module, base_config, overrides)


class FlowSampler:
    """The pipeline's own flow-matching scheduler behind the DDIM-style ``step(output, t, x, eta=...)``
    call of the engine's sampling loop (a flow Euler step takes no ``eta``: the sampler is
    deterministic; with ``generator`` it stays so)."""

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def __getattr__(self, name):
        return getattr(self.scheduler, name)

    def set_timesteps(self, num_inference_steps, device=None):
        self.scheduler.set_timesteps(num_inference_steps, device=device)

    @property
    def init_noise_sigma(self):
        return 1.0

    def scale_model_input(self, sample, timestep):
        return sample

    def step(self, model_output, timestep, sample, eta=None, generator=None, return_dict=True):
        # the index is found from the timestep on every call: the engine restarts the timesteps for
        # each batch, and a flow scheduler otherwise keeps counting from the previous batch
        self.scheduler._step_index = None
        return self.scheduler.step(model_output, timestep, sample, return_dict=return_dict)
