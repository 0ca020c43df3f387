"""The pruning facade: ``prune(pipeline, spec, progress=None) -> PruneResult``.

The UI, the CLI, the benchmarks, the sweeps and the tests all prune through this one call.
Stages (reported through ``progress(fraction, message)``): loading calibration images,
``calibrating t=..`` (gradient criteria), ``scoring``, ``pruning``, ``measuring``. An exception
raised by the callback (a cancellation) propagates and leaves nothing behind: the engine works
on a deep copy of the UNet and never touches the caller's pipeline.
"""
from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from .criteria import CRITERIA, EXCLUDED_LAYERS, calibrate, compute_scores, copy_scheduler, prunable_layers
from .granularity import GRANULARITIES, example_inputs, plain_diffusers_config
from .pipeline import pick_device
from .spec import PruneSpec

ProgressFn = Callable[[float, str], None]
# Data-free calibration (Diff-Pruning's latent-model recipe): images sampled by the dense model
# with this many DDIM steps.
GENERATED_CALIBRATION_STEPS = 25
# Calibration statistics do not depend on the granularity or the sparsity, so a sweep (or the app,
# when the user moves the sparsity slider) reuses them: key = model weights + calibration settings.
CALIBRATION_CACHE_SIZE = 4
_CALIBRATION_CACHE: dict = {}


def _calibration_key(unet_in, spec: PruneSpec, device) -> str:
    from .store import canonical_json, model_hash

    settings = dict(criterion=spec.criterion, schedule=spec.schedule, schedule_params=spec.schedule_params,
                    calibration_data=spec.calibration_data, calibration_batches=spec.calibration_batches,
                    calibration_batch_size=spec.calibration_batch_size, seed=spec.seed, device=str(device))
    return model_hash(unet_in) + canonical_json(settings)


def clear_calibration_cache() -> None:
    _CALIBRATION_CACHE.clear()


@dataclass
class PruneReport:
    """Everything measured about one pruning run: plain pandas tables and values, no plotting.

    * ``layers``: one row per conv/linear layer -- name, type, prunable, params/weights/MACs before
      and after, sparsity, units (channels or heads) before/after, importance summary.
    * ``importance``: layer -> importance vector for heatmaps (per output channel for ``channel``,
      per head for ``head`` (keyed by the attention module), output x input block for
      ``unstructured``/``N:M``).
    * ``timestep_contributions``: layers x timesteps, each timestep group's own first-order saliency
      ``sum |w * g|``, one column per group of ``totals["timesteps_per_group"]`` consecutive
      scheduled timesteps keyed by its first t (empty for criteria without calibration).
    * ``timestep_weights``: the schedule actually used (t, weight); ``calibration_loss``: (t, loss).
    * ``totals``: parameters and MACs before/after, achieved sparsity, structural ratio, wall time.
    """

    layers: pd.DataFrame
    importance: dict = field(default_factory=dict)
    timestep_contributions: pd.DataFrame = field(default_factory=pd.DataFrame)
    timestep_weights: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["t", "weight"]))
    calibration_loss: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["t", "loss"]))
    totals: dict = field(default_factory=dict)


@dataclass
class PruneResult:
    """The pruned pipeline (a new object), its report and the spec that produced it."""

    pipeline: object
    report: PruneReport
    spec: PruneSpec

    def save(self, directory) -> Path:
        """Write a checkpoint (safetensors, config, spec and report; no pickles) that
        ``core.pipeline.load_pipeline(directory)`` restores."""
        from .checkpoint import save_pruned_pipeline

        return save_pruned_pipeline(self.pipeline, directory, spec=self.spec, report=self.report)


# ----------------------------------------------------------------------------------------------
# measuring
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def record_layer_macs(unet: nn.Module):
    """Forward hooks counting multiply-accumulates per conv/linear layer and per attention
    module (its two matmuls, ``Q K^T`` and ``A V``); the hooks are always removed."""
    from .granularity import attention_modules

    macs: dict[str, int] = {}
    handles = []

    def layer_hook(name):
        def count(module, inputs, output):
            per_output = module.weight[0].numel()  # in/groups * kh * kw, or in_features
            macs[name] = macs.get(name, 0) + int(output.numel() // output.shape[0]) * int(per_output)
        return count

    def attention_hook(name):
        def count(module, inputs, output):
            hidden = inputs[0]
            tokens = hidden.numel() // (hidden.shape[0] * hidden.shape[1]) if hidden.dim() == 4 else hidden.shape[1]
            macs[name] = macs.get(name, 0) + 2 * tokens * tokens * int(module.inner_dim)
        return count

    try:
        for name, module in unet.named_modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                handles.append(module.register_forward_hook(layer_hook(name)))
        for name, module in attention_modules(unet).items():
            handles.append(module.register_forward_hook(attention_hook(name)))
        yield macs
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def measure(unet: nn.Module) -> tuple[dict[str, dict], int, int]:
    """Count, from one forward pass on one image: per conv/linear layer its type, parameter and
    weight counts, non-zero weights and MACs; the total MACs (conv, linear and attention matmuls)
    and the total parameter count."""
    with record_layer_macs(unet) as macs:
        unet(**example_inputs(unet))
    layers = {}
    for name, module in unet.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            layers[name] = dict(
                type=type(module).__name__,
                params=sum(p.numel() for p in module.parameters(recurse=False)),
                weights=module.weight.numel(),
                nonzero=int(torch.count_nonzero(module.weight)),
                macs=macs.get(name, 0),
                shape=tuple(module.weight.shape),
            )
    return layers, int(sum(macs.values())), sum(p.numel() for p in unet.parameters())


def count_macs(unet: nn.Module) -> tuple[int, int]:
    """(MACs for one image, parameters): conv, linear and attention matmuls, counted by hooks."""
    _, macs, params = measure(unet)
    return macs, params


# ----------------------------------------------------------------------------------------------
# calibration data
# ----------------------------------------------------------------------------------------------
def _model_shape(unet) -> tuple[int, int]:
    size = unet.config.sample_size
    return (size if isinstance(size, int) else size[0]), int(unet.config.in_channels)


def resolve_calibration_source(unet, spec: PruneSpec) -> str:
    from .data import CALIBRATION_IMAGES

    if spec.calibration_data != "auto":
        return spec.calibration_data
    size, channels = _model_shape(unet)
    if (size, channels) == (28, 1) and CALIBRATION_IMAGES.exists():
        return "fashion-mnist-train"
    return "generated"


def calibration_images(pipeline, unet, spec: PruneSpec, progress: ProgressFn | None = None) -> tuple[torch.Tensor, str]:
    """``calibration_batches * calibration_batch_size`` images in [-1, 1] and the source used.

    A set smaller than needed is cycled. Images are picked by a permutation seeded by ``spec.seed``.
    """
    from .data import CALIBRATION_IMAGES, load_image_folder, load_image_set
    from .pipeline import sample_images

    count = spec.calibration_batches * spec.calibration_batch_size
    source = resolve_calibration_source(unet, spec)
    size, channels = _model_shape(unet)
    if source == "fashion-mnist-train":
        images = load_image_set(CALIBRATION_IMAGES)
        if tuple(images.shape[1:]) != (channels, size, size):
            raise ValueError(
                f"calibration_data 'fashion-mnist-train' holds {tuple(images.shape[1:])} images but the model takes "
                f"{(channels, size, size)}; allowed for this model: 'generated' or an image folder"
            )
    elif source == "generated":
        dense = SimpleNamespace(unet=unet, scheduler=pipeline.scheduler)
        images = sample_images(
            dense, count, num_inference_steps=GENERATED_CALIBRATION_STEPS, seed=spec.seed,
            progress=(lambda f, m: progress(0.1 * f, f"generating calibration images: {m}")) if progress else None,
        )
        source = f"generated ({GENERATED_CALIBRATION_STEPS} DDIM steps by the dense model)"
    else:
        images = load_image_folder(source, size, channels, limit=None)
    generator = torch.Generator().manual_seed(int(spec.seed))
    order = torch.randperm(images.shape[0], generator=generator)
    order = order.repeat(-(-count // len(order)))[:count]
    return images[order], source


# ----------------------------------------------------------------------------------------------
# the facade
# ----------------------------------------------------------------------------------------------
def _stage(progress: ProgressFn | None, start: float, end: float) -> ProgressFn | None:
    if progress is None:
        return None
    return lambda fraction, message: progress(start + (end - start) * min(1.0, max(0.0, fraction)), message)


def prune(pipeline, spec: PruneSpec, progress: ProgressFn | None = None) -> PruneResult:
    """Prune a copy of ``pipeline``'s UNet as ``spec`` says; the caller's pipeline is not modified.

    Deterministic: the same spec (seed included) on the same model gives the same masks and
    weights. Sparsity 0 returns a model whose outputs equal the dense model's.
    """
    if not isinstance(spec, PruneSpec):
        raise ValueError(f"spec must be a PruneSpec, got {type(spec).__name__}")
    unet_in = getattr(pipeline, "unet", None)
    if unet_in is None or not hasattr(getattr(pipeline, "scheduler", None), "add_noise"):
        raise ValueError("pipeline must be a diffusion pipeline with a unet and a noise scheduler")
    started = time.perf_counter()
    device = pick_device(spec.device)
    criterion = CRITERIA[spec.criterion]
    granularity = GRANULARITIES[spec.granularity_name]
    unet = copy.deepcopy(unet_in).to(device=device, dtype=torch.float32).eval()
    granularity.check(unet, spec)  # refuse before any expensive calibration
    base_config = dict(unet.config)

    if progress is not None:
        progress(0.0, "measuring the dense model")
    before, macs_before, params_before = measure(unet)

    stats, calibration_source, calibration_seconds, calibration_cached = None, None, 0.0, False
    if criterion.needs_calibration and criterion.reconstruct is None:
        calibration_started = time.perf_counter()
        key = _calibration_key(unet_in, spec, device)
        if key in _CALIBRATION_CACHE:
            stats, calibration_source = copy.deepcopy(_CALIBRATION_CACHE[key])
            calibration_cached = True
            if progress is not None:
                progress(0.8, "calibration reused (same model and calibration settings)")
        else:
            images, calibration_source = calibration_images(pipeline, unet, spec, progress)
            images = images.to(device)
            batches = list(images.split(spec.calibration_batch_size))
            span = (0.1, 0.8) if calibration_source.startswith("generated") else (0.0, 0.8)
            stats = calibrate(
                unet, copy_scheduler(pipeline.scheduler), batches, criterion.loss, spec.schedule,
                dict(spec.schedule_params), criterion.zero_grad_per_batch, spec.seed, progress, span,
            )
            while len(_CALIBRATION_CACHE) >= CALIBRATION_CACHE_SIZE:
                _CALIBRATION_CACHE.pop(next(iter(_CALIBRATION_CACHE)))
            _CALIBRATION_CACHE[key] = copy.deepcopy((stats, calibration_source))
        calibration_seconds = time.perf_counter() - calibration_started

    if criterion.reconstruct is not None:  # obs, gradflow: own calibration, may rewrite weights
        calibration_started = time.perf_counter()
        scores, stats, calibration_source = criterion.reconstruct(unet, pipeline, spec, _stage(progress, 0.0, 0.8))
        calibration_seconds = time.perf_counter() - calibration_started
    else:
        if progress is not None:
            progress(0.8, "scoring")
        scores = compute_scores(criterion, unet, stats, dict(spec.criterion_params), spec.seed)

    if progress is not None:
        progress(0.85, "pruning")
    outcome = granularity.apply(unet, scores, spec, _stage(progress, 0.85, 0.97))
    unet = outcome.unet.eval()
    for parameter in unet.parameters():
        parameter.requires_grad_(True)
        parameter.grad = None
    plain = True
    if granularity.structural:
        config = plain_diffusers_config(unet, base_config)
        plain = config is not None
        if plain:
            unet.register_to_config(**config)

    if progress is not None:
        progress(0.97, "measuring the pruned model")
    after, macs_after, params_after = measure(unet)
    report = _build_report(spec, before, after, scores, outcome, stats, granularity.structural)
    prunable = [name for name in before if name not in EXCLUDED_LAYERS]
    weights_before = sum(before[n]["weights"] for n in prunable)
    kept_key = "weights" if granularity.structural else "nonzero"
    weights_after = sum(after[n][kept_key] for n in prunable)
    effective_macs_after = sum(
        after[n]["macs"] * (after[n]["nonzero"] / max(1, after[n]["weights"])) for n in after
    )
    report.totals = dict(
        criterion=spec.criterion, granularity=spec.granularity, schedule=spec.schedule,
        target_sparsity=spec.sparsity, channel_ratio=spec.channel_ratio,
        sparsity=1.0 - weights_after / weights_before,
        structural_ratio=outcome.structural_ratio,
        boosted_groups=outcome.notes.get("boosted_groups"),  # channel: groups given the next ratio step
        params_before=params_before, params_after=params_after, params_ratio=params_after / params_before,
        prunable_params_before=weights_before, prunable_params_after=weights_after,
        macs_before=macs_before, macs_after=macs_after, macs_ratio=macs_after / macs_before,
        macs_removed_fraction=1.0 - macs_after / macs_before,
        effective_macs_after=int(effective_macs_after),
        schedule_stopped_at=stats.stopped_at if stats else None,
        calibration_source=calibration_source,
        calibration_images=stats.num_images if stats else 0,
        calibration_time_s=calibration_seconds,
        calibration_cached=calibration_cached,
        timesteps_per_group=stats.timesteps_per_group if stats else None,
        plain_diffusers_loadable=plain,
        device=str(device),
        wall_time_s=time.perf_counter() - started,
    )
    components = dict(pipeline.components)
    components["unet"] = unet
    components["scheduler"] = copy.deepcopy(pipeline.scheduler)
    pruned_pipeline = type(pipeline)(**components)
    if hasattr(pruned_pipeline, "set_progress_bar_config"):
        pruned_pipeline.set_progress_bar_config(disable=True)
    if progress is not None:
        progress(1.0, "done")
    return PruneResult(pipeline=pruned_pipeline, report=report, spec=spec)


def _build_report(spec, before, after, scores, outcome, stats, structural) -> PruneReport:
    rows = []
    for name, layer in before.items():
        done = after.get(name)
        kept = (done["weights"] if structural else done["nonzero"]) if done else 0
        score = scores.get(name)
        rows.append(dict(
            name=name, type=layer["type"], prunable=name in scores,
            params_before=layer["params"], params_after=done["params"] if done else 0,
            weights_before=layer["weights"], weights_after=kept,
            macs_before=layer["macs"], macs_after=done["macs"] if done else 0,
            sparsity=1.0 - kept / layer["weights"],
            shape_before=str(layer["shape"]), shape_after=str(done["shape"]) if done else "",
            units_before=outcome.units_before.get(name, layer["shape"][0]),
            units_after=outcome.units_after.get(name, done["shape"][0] if done else 0),
            importance_mean=float(score.float().mean()) if score is not None else np.nan,
            importance_min=float(score.min()) if score is not None else np.nan,
            importance_max=float(score.max()) if score is not None else np.nan,
        ))
    report = PruneReport(layers=pd.DataFrame(rows), importance=dict(outcome.importance))
    if stats is not None:
        table = pd.DataFrame.from_dict(stats.timestep_contributions, orient="index")
        table = table.reindex(sorted(table.columns), axis=1)
        table.index.name = "layer"
        table.columns.name = "t"
        report.timestep_contributions = table
        report.timestep_weights = pd.DataFrame(stats.timestep_weights, columns=["t", "weight"])
        report.calibration_loss = pd.DataFrame(
            [(t, float(np.mean(values))) for t, values in sorted(stats.losses.items())], columns=["t", "loss"]
        )
    return report
