"""``DiTPipeline`` / ``DiTTransformer2DModel``: class-conditional latent transformer (Peebles & Xie 2023).

* Conditioning: ``class_labels`` drawn uniformly over the classes the pipeline names (``id2label``),
  else over the ``num_embeds_ada_norm`` rows of the label table (or one chosen class); the null class of classifier-free guidance is ``num_embeds_ada_norm`` (the
  pipeline hard-codes 1000, so its own ``__call__`` guides correctly only when that is 1000).
  Guidance here is applied to all C noise channels; the pipeline's own loop (after the original
  DiT code) guides only the first 3.
* Learned sigma: the model predicts 2C channels; the loss and the sampler use the first C.
* Cuts: heads, FFN neurons and whole blocks (``transformer_cuts``); the residual width is kept
  (``channel`` refused): cutting it breaks ``PatchEmbed.pos_embed`` and, through LayerNorm, loses
  more than it should. Each block's adaLN-Zero embedder (``norm1.emb``) and modulation
  (``norm1.linear``) and ``proj_out_1/2`` are never pruned by default (``guided.py``).
"""
from __future__ import annotations

import torch
from torch import nn

from ..registry import ADAPTERS
from .base import class_labels
from .guided import UNCOND, GuidedAdapter


def is_dit(module) -> bool:
    from diffusers import DiTTransformer2DModel

    return isinstance(module, DiTTransformer2DModel)


class DiTAdapter(GuidedAdapter):
    name = "dit"
    description = "DiTPipeline: class-conditional DiTTransformer2DModel + AutoencoderKL"
    denoiser_name = "transformer"
    default_guidance_scale = 4.0

    def matches(self, pipeline) -> bool:
        return is_dit(getattr(pipeline, "transformer", None)) and getattr(pipeline, "vae", None) is not None

    def owns(self, module):
        return "transformer" if is_dit(module) else None

    def num_classes(self, pipeline_or_denoiser):
        """The classes the model was trained on: those the pipeline names (``id2label``: the
        embedded Fashion-MNIST DiT has 10 in a table of 1000), else every row of the label table."""
        config = self._as_denoiser(pipeline_or_denoiser).config
        table = int(config.num_embeds_ada_norm)
        labels = getattr(pipeline_or_denoiser, "labels", None) if not isinstance(pipeline_or_denoiser, nn.Module) else None
        if labels:
            return min(table, max(int(i) for i in labels.values()) + 1)
        # The transformer's own record (config key ``_num_classes``; kept through copies, cuts and
        # saves, so a bare denoiser in calibration draws only the trained classes too).
        trained = config.get("_num_classes")
        return min(table, int(trained)) if trained else table

    def replace_components(self, pipeline, replacements):
        """Also carries the class names (``DiTPipeline.labels``, not part of its components) to the
        new pipeline and into its config, so a saved pruned pipeline keeps ``id2label``."""
        rebuilt = super().replace_components(pipeline, replacements)
        labels = getattr(pipeline, "labels", None)
        if labels:
            names = {}
            for name, index in labels.items():
                names.setdefault(str(index), []).append(name)
            rebuilt.labels = dict(labels)
            rebuilt.register_to_config(id2label={index: ", ".join(n) for index, n in names.items()})
        return rebuilt

    def null_class(self, pipeline_or_denoiser) -> int:
        """The extra row of the label table that classifier-free guidance uses (the pipeline: 1000)."""
        return int(self._as_denoiser(pipeline_or_denoiser).config.num_embeds_ada_norm)

    def sample_conditioning(self, pipeline_or_denoiser, batch_size, generator=None, *, class_label=None,
                            prompts=None, guidance_scale=None):
        if prompts is not None:
            raise ValueError("prompts apply to text-to-image models; DiT is class-conditional: give class_label")
        classes = self.num_classes(pipeline_or_denoiser)
        labels = class_labels(class_label, batch_size, classes, generator)
        null = torch.full((batch_size,), self.null_class(pipeline_or_denoiser), dtype=torch.long)
        if guidance_scale is None:
            # A model may state the guidance scale it was evaluated at (config key ``_guidance_scale``;
            # the embedded Fashion-MNIST DiT: 1.5, its best FID in assets/dit_model_quality.json).
            guidance_scale = self._as_denoiser(pipeline_or_denoiser).config.get("_guidance_scale")
        return self._with_guidance({"class_labels": labels, UNCOND + "class_labels": null}, batch_size, guidance_scale)

    def denoiser_example_inputs(self, module):
        device = next(module.parameters()).device
        return {"hidden_states": torch.zeros(1, *self.sample_shape(module), device=device, dtype=next(module.parameters()).dtype),
                "timestep": torch.ones(1, dtype=torch.long, device=device),
                "class_labels": torch.zeros(1, dtype=torch.long, device=device)}


ADAPTERS.register(DiTAdapter)
