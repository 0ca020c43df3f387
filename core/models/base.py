"""The model-adapter contract: everything the engine needs to know about one family of pipelines.

The engine (``core.engine``, ``core.criteria``, ``core.granularities``, ``core.evaluate``
...) never names a diffusers model class or attribute. It asks the pipeline's adapter::

    adapter = adapter_for(pipeline)            # core.models: the registered family that matches
    denoiser = adapter.denoiser(pipeline)      # the network that predicts noise / velocity / x0
    cond = adapter.sample_conditioning(pipeline, batch, generator)   # {} or {"class_labels": ...}
    x_t = adapter.add_noise(scheduler, x0, eps, t)                   # or flow interpolation
    loss = mse(adapter.predict(denoiser, x_t, t, cond), adapter.training_target(scheduler, x0, eps, t))
    z = adapter.encode(pipeline, images)       # pixel families: identity; latent: autoencoder
    images = adapter.decode(pipeline, z)       # always float N x C x H x W in [-1, 1]

Writing a new family = one file in ``core/models/`` that subclasses :class:`ModelAdapter`,
overrides what differs and registers itself with ``@ADAPTERS.register`` (``core.models``
imports every module of the package, so nothing else has to change). What to override:

* ``name``, ``description``: registry key and the one-line text shown when a pipeline is refused.
* ``matches(pipeline)``: True for the pipelines of this family (check the denoiser's class and the
  autoencoder's, not only the pipeline class: an ``LDMPipeline`` and a ``DDPMPipeline`` both hold a
  ``UNet2DModel``).
* ``owns(module)``: the pipeline attribute name this family gives a bare network (``"unet"``,
  ``"vqvae"`` ...) or None; used for the helpers that receive only a module
  (``core.criteria.prunable_layers``, the MAC counter, the checkpoint rebuild).
* Components: ``denoiser_name`` (``"unet"``, ``"transformer"``), ``autoencoder_name`` (``"vqvae"``,
  ``"vae"`` or None), ``conditioning_names`` (text encoders, tokenizers: never pruned).
* Conditioning: ``sample_conditioning`` draws the denoiser's extra keyword inputs for a batch
  (class labels, prompt embeddings); ``predict`` calls the denoiser by keyword with them;
  ``guided_prediction`` (sampling only) may add classifier-free guidance; ``repeat_conditioning``
  repeats a batch's conditioning for a forward pass over several timesteps of that batch (every
  per-sample tensor, nested dicts included: override it for batch-free entries).
* Training target: ``training_target`` reads the scheduler's ``prediction_type``
  (``epsilon``, ``v_prediction``, ``sample``) or, for flow-matching schedulers, ``flow``
  (``x_t = (1 - s) x0 + s eps``, target ``eps - x0``, timestep ``s * 1000``; SD3).
* Latents: ``encode`` / ``decode`` with the autoencoder's ``scaling_factor``/``shift_factor``;
  ``sample_shape`` is the denoiser's input (the latent shape), ``image_shape`` the pixels.
* Structure: ``example_inputs(component, module)`` for Torch-Pruning tracing and MAC counting;
  ``protected_layers`` (weights never pruned) and ``channel_kept_layers`` (layers whose output
  channels are never cut: the image / latent interface); ``channel_groups`` (outputs Torch-Pruning
  must cut evenly, e.g. scale/shift halves); ``attention_modules``; ``fix_up`` (make cached sizes
  agree with the cut weights); ``check_cut`` (refuse a cut the model cannot take, with a
  ValueError naming the reason); ``plain_config`` (a diffusers config that reloads the cut
  shapes, or None) and ``structure`` / ``rebuild`` (what the checkpoint needs to rebuild shapes no
  config can express); ``shape_config`` (the widths an honest config of a cut checkpoint states).
* Depth (granularity ``block``): ``block_units`` (removable blocks, or layers with their mirror),
  ``max_blocks_removed``, ``remove_blocks``, ``block_counts``; default: nothing removable.
* Training from scratch (``diffprune train-base``): ``new_denoiser`` (the family's default
  architecture) and ``new_pipeline`` (what the trained denoiser ships in).
* Engine helpers built on the above (rarely overridden): ``denoising_loss`` (per-sample loss of
  the family's target), ``conditioned`` (a context manager whose forward pre-hook feeds the
  conditioning to code that calls the network positionally: OBS, gradflow), ``bind``,
  ``epsilon_from_prediction`` (for samplers written in epsilon form), ``sampler_step`` (one
  deterministic sampler step between training timesteps: DDIM, or flow Euler for SD3; OBS's
  calibration trajectory), ``sampling_scheduler``,
  ``replace_components`` (a new pipeline with pruned networks swapped in). Latent families add
  ``autoencoder_loss`` (the autoencoder's reconstruction error, used when it is pruned too).

Methods that act on one network take ``(component, module)``: ``component`` is the pipeline
attribute name (``"unet"``, ``"vqvae"``), ``module`` the (possibly pruned) network itself.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

# Prediction types a scheduler's ``prediction_type`` may name, plus ``flow`` (rectified flow).
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow")


def _output(result):
    """The tensor of a diffusers model output (``.sample``) or a plain tensor/tuple."""
    if isinstance(result, torch.Tensor):
        return result
    sample = getattr(result, "sample", None)
    if sample is not None:
        return sample
    return result[0]


def attention_modules(module: nn.Module) -> dict:
    """Name -> diffusers ``Attention`` module of ``module`` (the generic attention processor class)."""
    from diffusers.models.attention_processor import Attention

    return {name: child for name, child in module.named_modules() if isinstance(child, Attention)}


def feed_forward_modules(module: nn.Module) -> dict:
    """Name -> diffusers ``FeedForward`` block of ``module`` (transformer MLPs)."""
    from diffusers.models.attention import FeedForward

    return {name: child for name, child in module.named_modules() if isinstance(child, FeedForward)}


def sync_diffusers_sizes(module: nn.Module) -> None:
    """Make every diffusers attribute that caches a size agree with the (pruned) weights.

    Torch-Pruning updates ``nn`` layers only; diffusers also caches ``Downsample2D.channels``,
    ``Upsample2D.channels``/``out_channels``, ``Attention.heads``/``inner_dim`` and the
    ``ResnetBlock2D`` widths, and asserts on some of them in forward.
    Works on any diffusers network built from these blocks (UNets, VQ/KL autoencoders).
    """
    from diffusers.models.downsampling import Downsample2D
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.upsampling import Upsample2D

    for child in module.modules():
        if isinstance(child, ResnetBlock2D):
            child.in_channels = child.conv1.in_channels
            child.out_channels = child.conv2.out_channels
    for block in module.modules():
        resnets = getattr(block, "resnets", None)
        if not isinstance(resnets, nn.ModuleList) or not len(resnets):
            continue
        width = resnets[-1].out_channels
        resamplers = list(getattr(block, "downsamplers", None) or []) + list(getattr(block, "upsamplers", None) or [])
        for resampler in resamplers:
            conv = getattr(resampler, "conv", None)
            if isinstance(conv, nn.Conv2d):
                resampler.channels = conv.in_channels
                resampler.out_channels = conv.out_channels
            else:
                # A pitfall of the reference code: comparing instead of assigning left out_channels stale.
                resampler.channels = width
                resampler.out_channels = width
    for child in module.modules():
        if isinstance(child, (Downsample2D, Upsample2D)) and isinstance(getattr(child, "conv", None), nn.Conv2d):
            child.channels = child.conv.in_channels
            child.out_channels = child.conv.out_channels
    for attention in attention_modules(module).values():
        attention.query_dim = attention.to_q.in_features
        attention.inner_dim = attention.to_q.out_features
        if attention.to_k is not None:
            attention.inner_kv_dim = attention.to_k.out_features
            attention.cross_attention_dim = attention.to_k.in_features
        attention.out_dim = attention.to_out[0].out_features
        attention.out_context_dim = attention.out_dim
        attention.sliceable_head_dim = attention.heads
        if attention.inner_dim % attention.heads:
            raise RuntimeError(f"attention inner_dim {attention.inner_dim} not divisible by heads {attention.heads}")


@dataclass
class HeadGroup:
    """One multi-head attention module as the head granularity sees it: ``rows`` are the
    projections whose output rows are the heads (``to_q/k/v``, joint attention's ``add_*_proj``),
    ``columns`` those whose input columns read them (``to_out.0``, ``to_add_out``), keyed by their
    layer names in the network; a head owns ``head_dim`` consecutive rows / columns of each."""

    module: nn.Module
    heads: int
    head_dim: int
    rows: dict
    columns: dict
    has_key: bool = True

    @property
    def weights_per_head(self) -> int:
        return self.head_dim * (sum(l.in_features for l in self.rows.values()) + sum(l.out_features for l in self.columns.values()))


class ModelAdapter:
    """One family of diffusers pipelines (see the module docstring for the contract).

    The defaults describe an unconditional pixel-space denoiser called
    ``denoiser(sample=x, timestep=t).sample``; subclasses override what differs.
    """

    name: str = ""  # registry key, e.g. "pixel-unet"
    description: str = ""  # one line for the refusal message: pipeline and network classes
    denoiser_name: str = "unet"  # pipeline attribute of the denoising network (pruned by default)
    autoencoder_name: str | None = None  # pipeline attribute of the autoencoder (latent families)
    conditioning_names: tuple = ()  # text encoders, tokenizers, feature extractors: never pruned

    # ------------------------------------------------------------------ matching
    def matches(self, pipeline) -> bool:
        """True when ``pipeline`` belongs to this family."""
        raise NotImplementedError

    def owns(self, module: nn.Module) -> str | None:
        """The pipeline attribute name of ``module`` in this family, or None when it is not one of
        this family's networks."""
        return None

    # ------------------------------------------------------------------ components
    def denoiser(self, pipeline) -> nn.Module:
        return getattr(pipeline, self.denoiser_name)

    def autoencoder_attribute(self, pipeline) -> str | None:
        """The pipeline attribute holding the autoencoder (default ``autoencoder_name``)."""
        return self.autoencoder_name

    def autoencoder(self, pipeline) -> nn.Module | None:
        name = self.autoencoder_attribute(pipeline)
        return getattr(pipeline, name, None) if name else None

    def is_latent(self) -> bool:
        return self.autoencoder_name is not None

    def prunable_components(self, pipeline) -> tuple:
        """Pipeline attribute names of the networks that ``PruneSpec.components`` may name."""
        names = [self.denoiser_name]
        if self.autoencoder(pipeline) is not None:
            names.append(self.autoencoder_attribute(pipeline))
        return tuple(names)

    def default_components(self, pipeline) -> tuple:
        return (self.denoiser_name,)

    def component(self, pipeline, name: str) -> nn.Module:
        if name not in self.prunable_components(pipeline):
            raise ValueError(
                f"components must name networks of this {self.name} pipeline, one of "
                f"{list(self.prunable_components(pipeline))}; got {name!r}"
            )
        return getattr(pipeline, name)

    def replace_components(self, pipeline, replacements: dict):
        """A new pipeline of the same class with ``replacements`` (name -> module) swapped in."""
        components = dict(pipeline.components)
        components.update(replacements)
        rebuilt = type(pipeline)(**components)
        if hasattr(rebuilt, "set_progress_bar_config"):
            rebuilt.set_progress_bar_config(disable=True)
        return rebuilt

    def scheduler(self, pipeline):
        return pipeline.scheduler

    def num_train_timesteps(self, pipeline_or_scheduler) -> int:
        scheduler = getattr(pipeline_or_scheduler, "scheduler", pipeline_or_scheduler)
        return int(scheduler.config.num_train_timesteps)

    # ------------------------------------------------------------------ shapes
    def sample_shape(self, pipeline_or_denoiser) -> tuple:
        """(C, H, W) of one denoiser input (the latent shape for latent families)."""
        module = self._as_denoiser(pipeline_or_denoiser)
        config = module.config
        size = config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return int(config.in_channels), int(height), int(width)

    def image_shape(self, pipeline) -> tuple:
        """(C, H, W) of one decoded image."""
        autoencoder = self.autoencoder(pipeline)
        channels, height, width = self.sample_shape(pipeline)
        if autoencoder is None:
            return channels, height, width
        factor = 2 ** (len(autoencoder.config.block_out_channels) - 1)
        return int(autoencoder.config.in_channels), height * factor, width * factor

    def _as_denoiser(self, pipeline_or_denoiser):
        if isinstance(pipeline_or_denoiser, nn.Module):
            return pipeline_or_denoiser
        return self.denoiser(pipeline_or_denoiser)

    def noise(self, pipeline_or_denoiser, num_samples: int, seed: int) -> torch.Tensor:
        """Gaussian noise of ``num_samples`` denoiser inputs, drawn on the CPU from ``seed`` so it is
        the same on every device."""
        generator = torch.Generator().manual_seed(int(seed))
        return torch.randn((num_samples, *self.sample_shape(pipeline_or_denoiser)), generator=generator)

    # ------------------------------------------------------------------ conditioning and calls
    def sample_conditioning(self, pipeline_or_denoiser, batch_size: int, generator: torch.Generator | None = None,
                            *, class_label: int | None = None) -> dict:
        """Extra keyword inputs of the denoiser for ``batch_size`` samples (CPU tensors); ``{}`` for
        unconditional families. Class-conditional families draw uniform classes from ``generator``
        unless ``class_label`` fixes one."""
        if class_label is not None:
            raise ValueError(f"class_label applies to class-conditional models only; this {self.name} model has no classes")
        return {}

    def num_classes(self, pipeline_or_denoiser) -> int | None:
        """Number of classes of a class-conditional denoiser, None otherwise."""
        return None

    def repeat_conditioning(self, conditioning: dict | None, count: int, batch_size: int | None = None) -> dict | None:
        """``conditioning`` of a batch of ``batch_size`` samples for that batch repeated ``count``
        times, as ``clean.repeat(count, ...)`` repeats it (every sample once, then all again): the
        conditioning of one forward pass over several timesteps of the same batch.

        Every per-sample tensor (``batch_size`` rows; any tensor with a batch dimension when
        ``batch_size`` is None) is repeated along dimension 0, nested dicts of keyword inputs
        (diffusers' ``added_cond_kwargs``) alike; non-tensor values, scalars and tensors of another
        row count are left as they are. Explicit rows, not broadcasting: a conditioning of one
        sample would otherwise meet a batch of ``count`` samples, which a cross-attention or a
        masked attention cannot broadcast. Every family here keeps one row per sample in each
        entry (prompt embeddings, pooled projections, attention masks, class labels, the null
        condition and the guidance scale), so this rule serves them all; a family with shared,
        batch-free entries overrides it."""
        if not conditioning or count == 1:
            return conditioning
        return _repeat_per_sample(conditioning, count, batch_size)

    def predict(self, denoiser: nn.Module, sample: torch.Tensor, timesteps: torch.Tensor, conditioning: dict | None = None):
        """The denoiser's raw prediction, called by keyword. Conditioning tensors of batch B are
        repeated to the sample's batch k * B (the calibration batches repeat images per timestep)."""
        kwargs = _match_batch(conditioning or {}, sample)
        kwargs = {key: value.to(sample.device) if isinstance(value, torch.Tensor) else value for key, value in kwargs.items()}
        if timesteps.dim() == 0:
            timesteps = timesteps.expand(sample.shape[0])
        return _output(denoiser(sample=sample, timestep=timesteps, **kwargs))

    def guided_prediction(self, denoiser, sample, timestep, conditioning: dict | None = None):
        """The prediction used in the sampling loop (families with classifier-free guidance
        override this); default: :meth:`predict`."""
        return self.predict(denoiser, sample, timestep, conditioning)

    @contextlib.contextmanager
    def conditioned(self, denoiser: nn.Module, conditioning: dict | None):
        """Within the block, every call of ``denoiser`` that lacks them receives the conditioning
        keyword inputs (matched to its batch) through a forward pre-hook, removed on exit: code that
        calls the network positionally (OBS's trajectory, gradflow's functional call) then runs a
        conditional model unchanged."""
        if not conditioning:
            yield denoiser
            return

        def inject(module, args, kwargs):
            sample = args[0] if args else kwargs.get("sample")
            for key, value in _match_batch(conditioning, sample).items():
                if key not in kwargs:
                    kwargs[key] = value.to(sample.device) if isinstance(value, torch.Tensor) else value
            return args, kwargs

        handle = denoiser.register_forward_pre_hook(inject, with_kwargs=True)
        try:
            yield denoiser
        finally:
            handle.remove()

    def bind(self, denoiser: nn.Module, conditioning: dict | None = None):
        """``f(sample, timesteps) -> prediction`` with the conditioning fixed: what hooks-based
        calibration (obs, gradflow) calls instead of the network."""
        return lambda sample, timesteps: self.predict(denoiser, sample, timesteps, conditioning)

    # ------------------------------------------------------------------ noise and targets
    def prediction_type(self, scheduler) -> str:
        if not hasattr(scheduler, "add_noise") or "FlowMatch" in type(scheduler).__name__:
            return "flow"
        kind = getattr(scheduler.config, "prediction_type", "epsilon") or "epsilon"
        if kind not in PREDICTION_TYPES:
            raise ValueError(f"scheduler prediction_type must be one of {list(PREDICTION_TYPES[:3])}, got {kind!r}")
        return kind

    def add_noise(self, scheduler, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``x_t``: DDPM forward process ``sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``, or the flow
        interpolation ``(1 - s) x0 + s eps`` with ``s = t / T`` for flow-matching schedulers."""
        if self.prediction_type(scheduler) == "flow":
            s = self._flow_sigma(scheduler, timesteps, clean)
            return (1 - s) * clean + s * noise
        return scheduler.add_noise(clean, noise, timesteps)

    def model_timesteps(self, scheduler, timesteps: torch.Tensor) -> torch.Tensor:
        """The timestep value the denoiser receives for training timestep ``t`` (flow: ``s * 1000``)."""
        if self.prediction_type(scheduler) == "flow":
            return timesteps.float() * (1000.0 / self.num_train_timesteps(scheduler))
        return timesteps

    def training_target(self, scheduler, clean, noise, timesteps) -> torch.Tensor:
        """What the denoiser is trained to predict, from the scheduler's ``prediction_type``:
        epsilon -> eps; v_prediction -> ``sqrt(abar) eps - sqrt(1 - abar) x0`` (Salimans & Ho 2022);
        sample -> x0; flow -> ``eps - x0`` (rectified flow, SD3)."""
        kind = self.prediction_type(scheduler)
        if kind == "epsilon":
            return noise
        if kind == "sample":
            return clean
        if kind == "v_prediction":
            return scheduler.get_velocity(clean, noise, timesteps)
        return noise - clean

    def epsilon_from_prediction(self, scheduler, prediction, sample, timestep: int) -> torch.Tensor:
        """The noise estimate implied by a raw prediction at DDPM timestep ``timestep`` (for
        samplers written in epsilon form, such as OBS's trajectory)."""
        kind = self.prediction_type(scheduler)
        if kind == "flow":
            raise ValueError("epsilon_from_prediction needs a DDPM-family scheduler, not a flow-matching one")
        prediction = prediction[:, : sample.shape[1]] if prediction.shape[1] != sample.shape[1] else prediction
        if kind == "epsilon":
            return prediction
        abar = float(scheduler.alphas_cumprod[int(timestep)])
        if kind == "v_prediction":  # eps = sqrt(abar) v + sqrt(1 - abar) x_t
            return math.sqrt(abar) * prediction + math.sqrt(1 - abar) * sample
        # sample: eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)
        return (sample - math.sqrt(abar) * prediction) / math.sqrt(max(1 - abar, 1e-12))

    # Name of :meth:`sampler_step`'s sampler, for messages ("generated (3-step DDIM trajectories ...)").
    sampler_label: str = "DDIM"

    def sampler_step(self, scheduler, prediction, sample, timestep: int, next_timestep: int | None) -> torch.Tensor:
        """One deterministic sampler step from training timestep ``timestep`` to ``next_timestep``
        (``None``: to the clean sample), given the denoiser's raw ``prediction`` at ``sample``.

        DDIM with eta = 0 (Song et al. 2021, eq. 12) in epsilon form:
        ``x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``, ``x_next = sqrt(abar_next) x0 +
        sqrt(1 - abar_next) eps`` with ``abar`` = 1 at the end; a scheduler with ``clip_sample``
        clamps ``x0`` to [-1, 1] and re-derives ``eps`` from it. Flow families override this.
        """
        epsilon = self.epsilon_from_prediction(scheduler, prediction, sample, int(timestep))
        alphas = scheduler.alphas_cumprod.to(torch.float64)
        alpha = float(alphas[int(timestep)])
        previous = float(alphas[int(next_timestep)]) if next_timestep is not None else 1.0
        clean = (sample - math.sqrt(1 - alpha) * epsilon) / math.sqrt(alpha)
        if bool(getattr(scheduler.config, "clip_sample", False)):
            clean = clean.clamp(-1, 1)
            epsilon = (sample - math.sqrt(alpha) * clean) / math.sqrt(1 - alpha)
        return math.sqrt(previous) * clean + math.sqrt(1 - previous) * epsilon

    def _flow_sigma(self, scheduler, timesteps, like):
        s = timesteps.to(like.device, torch.float32) / float(self.num_train_timesteps(scheduler))
        return s.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))

    def denoising_loss(self, denoiser, scheduler, clean, noise, timesteps, conditioning=None) -> torch.Tensor:
        """Per-sample MSE between the prediction at ``x_t`` and the training target (shape N)."""
        noisy = self.add_noise(scheduler, clean, noise, timesteps)
        prediction = self.predict(denoiser, noisy, self.model_timesteps(scheduler, timesteps), conditioning)
        target = self.training_target(scheduler, clean, noise, timesteps)
        return (self.trim_prediction(prediction, target) - target).pow(2).flatten(1).mean(1)

    def trim_prediction(self, prediction, target):
        """Learned-variance models predict 2C channels; the loss uses the first C (DiT)."""
        if prediction.shape[1] != target.shape[1]:
            return prediction[:, : target.shape[1]]
        return prediction

    # ------------------------------------------------------------------ latents
    @torch.no_grad()
    def encode(self, pipeline, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [-1, 1] -> denoiser inputs (identity for pixel families)."""
        return images

    @torch.no_grad()
    def decode(self, pipeline, latents: torch.Tensor) -> torch.Tensor:
        """Denoiser samples -> images in [-1, 1] (identity for pixel families)."""
        return latents

    # ------------------------------------------------------------------ sampling
    def sampling_scheduler(self, pipeline, name: str):
        """A fresh scheduler for sampling: ``"ddim"``, ``"ddpm"`` or ``"dpm-solver++"`` built from the
        pipeline's own scheduler config (same betas and prediction type)."""
        return sampler_from_config(name, self.scheduler(pipeline).config)

    # ------------------------------------------------------------------ structure
    def example_inputs(self, component: str, module: nn.Module) -> dict:
        """Keyword inputs of one forward pass of ``module`` (batch 1): Torch-Pruning traces the
        graph with them and the MAC counter counts one image."""
        device = next(module.parameters()).device
        sample = torch.zeros(1, *self.sample_shape(module), device=device, dtype=next(module.parameters()).dtype)
        return {"sample": sample, "timestep": torch.ones(1, dtype=torch.long, device=device)}

    def protected_layers(self, component: str, module: nn.Module) -> tuple:
        """Names of conv/linear layers whose weights are never pruned (image/latent interface)."""
        return ()

    def channel_kept_layers(self, component: str, module: nn.Module) -> tuple:
        """Names of layers whose output channels are never cut (Torch-Pruning ``ignored_layers``)."""
        return ()

    def channel_groups(self, component: str, module: nn.Module) -> dict:
        """Layer name -> number of output channel groups Torch-Pruning must cut evenly (beyond the
        GroupNorm and head groups it finds itself)."""
        return {}

    def attention_modules(self, component: str, module: nn.Module) -> dict:
        return attention_modules(module)

    def head_groups(self, component: str, module: nn.Module) -> dict:
        """Name -> :class:`HeadGroup` of every attention module (heads >= 1)."""
        from .transformer_cuts import head_projections

        groups = {}
        for name, attention in self.attention_modules(component, module).items():
            rows, columns = head_projections(attention)
            heads = int(attention.heads)
            groups[name] = HeadGroup(
                module=attention, heads=heads, head_dim=attention.to_q.out_features // heads,
                rows={f"{name}.{key}": linear for key, linear in rows.items()},
                columns={f"{name}.{key}": linear for key, linear in columns.items()},
                has_key=getattr(attention, "to_k", None) is not None,
            )
        return groups

    def cut_heads(self, component: str, module: nn.Module, name: str, keep) -> None:
        """Keep only the heads ``keep`` of attention module ``name``: the engine's one head cut
        (``transformer_cuts.remove_heads``: every producing row, every reading column, head counts)."""
        from .transformer_cuts import remove_heads

        remove_heads(dict(module.named_modules())[name], keep)

    def check_cut(self, component: str, module: nn.Module, granularity: str) -> None:
        """Raise ValueError when ``granularity`` cannot cut this network (checked before calibration)."""
        return None

    def fix_up(self, component: str, module: nn.Module) -> None:
        """After a structural cut: make cached sizes agree with the weights."""
        sync_diffusers_sizes(module)

    def plain_config(self, component: str, module: nn.Module, base_config: dict) -> dict | None:
        """A diffusers config whose ``from_config`` has exactly these shapes, or None."""
        return _plain_config_by_rebuild(module, base_config, {})

    def structure(self, component: str, module: nn.Module) -> dict:
        """What safetensors shapes alone do not say: attention heads and scale, GroupNorm groups."""
        return {
            "attention": {name: {"heads": int(a.heads), "scale": float(a.scale)}
                          for name, a in self.attention_modules(component, module).items()},
            "group_norm": {name: int(m.num_groups) for name, m in module.named_modules() if isinstance(m, nn.GroupNorm)},
        }

    def rebuild(self, component: str, directory, structure: dict) -> nn.Module:
        """The network saved in ``directory`` (its original config and cut safetensors), rebuilt at
        the stored shapes with the recorded head counts and GroupNorm groups."""
        return rebuild_from_safetensors(directory, structure, lambda module: self.fix_up(component, module))

    def shape_config(self, component: str, dense_config: dict, shapes: dict) -> dict:
        """Entries that the honest config of a cut network (``core.export_config``) states instead
        of the dense config's, read from the cut weights' ``shapes`` (safetensors key -> shape).
        Default: diffusers' per-block output widths where the config lists them (UNets), else none."""
        from .unet_cuts import down_block_widths

        return down_block_widths(dense_config, shapes)

    # ------------------------------------------------------------------ depth (granularity "block")
    def block_units(self, component: str, module: nn.Module) -> list:
        """The removable depth units of ``module``, each a dict with ``name`` (unique; reports and
        ties use it), ``modules`` (removed with the unit: their prunable weights are its size and
        score), ``kind`` (a word for reports) and ``exclusive`` (None, or a key: units sharing a key
        are never removed by one cut); other keys are the family's own, read back by
        :meth:`remove_blocks`. Default: none (granularity ``block`` refuses the network)."""
        return []

    def max_blocks_removed(self, component: str, module: nn.Module, units: list) -> int:
        """How many of ``units`` (:meth:`block_units`) one cut may remove; default all of them."""
        return len(units)

    def remove_blocks(self, component: str, module: nn.Module, units: list) -> None:
        """Remove ``units`` (some of :meth:`block_units`) from ``module`` in place, its config
        following so that ``from_config`` rebuilds the new depth."""
        if units:
            raise ValueError(f"the {self.name} family has no removable blocks")

    def block_counts(self, component: str, module: nn.Module) -> dict:
        """``{unit: count}`` of the depth a block cut changes (the report's units before / after)."""
        return {}

    # ------------------------------------------------------------------ training from scratch
    def new_denoiser(self, config: dict | None = None) -> nn.Module:
        """A freshly initialised denoiser of this family from a diffusers ``config`` (None: the
        family's default architecture, where it has one), for training from scratch."""
        raise ValueError(f"the {self.name} family builds no denoiser for training")

    def new_pipeline(self, denoiser: nn.Module, scheduler):
        """A pipeline of this family holding ``denoiser`` and ``scheduler`` (what a trained model is
        saved as)."""
        raise ValueError(f"the {self.name} family assembles no pipeline from a trained denoiser")


def class_labels(class_label, batch_size: int, classes: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The class of each of ``batch_size`` samples of a model with ``classes`` classes: uniform
    draws from ``generator`` (``class_label`` None), one class for all (an int), or one per sample
    (a sequence or 1-D tensor of ``batch_size`` ints, e.g. the labels of training images)."""
    if class_label is None:
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        return torch.randint(classes, (batch_size,), generator=generator)
    if isinstance(class_label, (torch.Tensor, list, tuple)):
        labels = torch.as_tensor(class_label)
        if (labels.dim() != 1 or labels.numel() != batch_size or labels.is_floating_point() or labels.dtype == torch.bool
                or (labels.numel() and not (0 <= int(labels.min()) and int(labels.max()) < classes))):
            raise ValueError(f"class_label must be one integer or {batch_size} integers in [0, {classes}), got "
                             f"{tuple(labels.shape)} values")
        return labels.long().cpu()
    if isinstance(class_label, bool) or not isinstance(class_label, int) or not 0 <= class_label < classes:
        raise ValueError(f"class_label must be an integer in [0, {classes}), got {class_label!r}")
    return torch.full((batch_size,), class_label, dtype=torch.long)


def _repeat_rows(value: torch.Tensor, count: int) -> torch.Tensor:
    """``value`` repeated ``count`` times along dimension 0 (all rows, then all rows again)."""
    return value.repeat(count, *([1] * (value.dim() - 1)))


def _repeat_per_sample(conditioning: dict, count: int, batch_size: int | None) -> dict:
    """:meth:`ModelAdapter.repeat_conditioning`'s generic rule, recursing into nested dicts."""
    out = {}
    for key, value in conditioning.items():
        if isinstance(value, dict):
            value = _repeat_per_sample(value, count, batch_size)
        elif (isinstance(value, torch.Tensor) and value.dim() >= 1
              and (batch_size is None or value.shape[0] == batch_size)):
            value = _repeat_rows(value, count)
        out[key] = value
    return out


def _match_batch(conditioning: dict, sample: torch.Tensor) -> dict:
    """Conditioning rows matched to the sample's batch: as is, repeated (a batch repeated per
    timestep, OBS's trajectories of several calibration batches drawn with one batch's
    conditioning) or the first rows (a shorter probe batch); nested dicts alike. A single row is
    repeated too rather than left to broadcasting, which cross-attention and masked attention
    cannot do."""
    out = {}
    batch = sample.shape[0]
    for key, value in conditioning.items():
        if isinstance(value, dict):
            value = _match_batch(value, sample)
        elif isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] != batch:
            if batch < value.shape[0]:
                value = value[:batch]
            elif batch % value.shape[0]:
                raise ValueError(f"conditioning {key!r} holds {value.shape[0]} rows for a batch of {batch}")
            else:
                value = _repeat_rows(value, batch // value.shape[0])
        out[key] = value
    return out


def _plain_config_by_rebuild(module: nn.Module, config: dict, overrides: dict) -> dict | None:
    """``config`` (with ``overrides``) when building the module's class from it gives exactly the
    same parameter shapes, GroupNorm groups and head counts; None otherwise."""
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(config).items() if not k.startswith("_")}
    config.update(overrides)
    try:
        with torch.device("meta"):
            candidate = type(module).from_config(config)
    except Exception:  # noqa: BLE001 - an inexpressible width raises anything from a shape check
        return None
    own = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    other = {k: tuple(v.shape) for k, v in candidate.state_dict().items()}
    if own != other:
        return None
    for (_, mine), (_, theirs) in zip(module.named_modules(), candidate.named_modules()):
        if isinstance(mine, nn.GroupNorm) and mine.num_groups != theirs.num_groups:
            return None
        if hasattr(mine, "heads") and getattr(theirs, "heads", None) != mine.heads:
            return None
        if hasattr(mine, "scale") and isinstance(mine.scale, float) and abs(getattr(theirs, "scale", math.nan) - mine.scale) > 1e-12:
            return None
    return config


def rebuild_from_safetensors(directory, structure: dict, fix_up) -> nn.Module:
    """A diffusers network from ``directory``'s (original) config, every parameter resized to the
    shape stored in its safetensors file; heads and GroupNorm groups from ``structure``."""
    import json

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    weights_path = directory / "diffusion_pytorch_model.safetensors"
    config_path = directory / "config.json"
    if not config_path.exists():
        raise ValueError(f"pruned checkpoint {str(directory)!r} has no config.json")
    if not weights_path.exists():
        raise ValueError(f"pruned checkpoint {str(directory)!r} holds no diffusion_pytorch_model.safetensors")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"pruned checkpoint {str(directory)!r}: unreadable config.json ({error})") from error
    import diffusers

    # A config rewritten by core.export_config describes the real shapes and keeps the dense one.
    config = config.get("dense_config", config)
    cls = getattr(diffusers, str(config.get("_class_name")), None)
    if cls is None:
        raise ValueError(f"pruned checkpoint {str(directory)!r}: unknown model class {config.get('_class_name')!r}")
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ValueError(f"pruned checkpoint {str(directory)!r}: unreadable safetensors file ({str(error)[:120]})") from error
    module = cls.from_config(config)
    modules = dict(module.named_modules())
    for key, tensor in state.items():
        module_name, _, attribute = key.rpartition(".")
        owner = modules.get(module_name)
        if owner is None or attribute not in owner._parameters:
            continue  # buffers or unexpected keys: load_state_dict(strict=True) reports them
        current = owner._parameters[attribute]
        if current is None or tuple(current.shape) != tuple(tensor.shape):
            owner._parameters[attribute] = nn.Parameter(torch.empty(tensor.shape, dtype=tensor.dtype))
    for name, child in module.named_modules():
        if isinstance(child, nn.Conv2d):
            child.out_channels = child.weight.shape[0]
            child.in_channels = child.weight.shape[1] * child.groups
        elif isinstance(child, nn.Linear):
            child.out_features, child.in_features = child.weight.shape
        elif isinstance(child, nn.GroupNorm) and child.weight is not None:
            child.num_channels = child.weight.shape[0]
            child.num_groups = structure.get("group_norm", {}).get(name, child.num_groups)
        elif isinstance(child, nn.LayerNorm) and child.weight is not None:
            child.normalized_shape = tuple(child.weight.shape)
    for name, attention in attention_modules(module).items():
        recorded = structure.get("attention", {}).get(name)
        if recorded:
            attention.heads = recorded["heads"]
            attention.scale = recorded["scale"]
    fix_up(module)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"pruned checkpoint {str(directory)!r}: weights do not fit the rebuilt model ({str(error)[:160]})") from error
    return module.eval()


def sampler_from_config(name: str, config) -> object:
    """The sampler ``name`` ("ddim", "ddpm", "dpm-solver++") built from a DDPM-family scheduler
    ``config`` (its betas, prediction type and timestep spacing). DPM-Solver++ is diffusers'
    ``DPMSolverMultistepScheduler`` with ``algorithm_type="dpmsolver++"``, second order, lower
    order at the last steps (its defaults)."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    if name == "dpm-solver++":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2)
    return (DDIMScheduler if name == "ddim" else DDPMScheduler).from_config(config)
