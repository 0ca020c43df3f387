"""The pruning facade: ``prune(pipeline, spec, progress=None) -> PruneResult``.

The UI, the CLI, the benchmarks, the sweeps and the tests all prune through this one call.
Stages (reported through ``progress(fraction, message)``): loading calibration images,
``calibrating t=..`` (gradient criteria), ``scoring``, ``pruning``, ``measuring``. An exception
raised by the callback (a cancellation) propagates and leaves nothing behind: the engine works
on deep copies of the networks it prunes and never touches the caller's pipeline.

Everything model-specific comes from the pipeline's family adapter (``core.models``): which
networks exist (``spec.components``, default the denoiser), how the denoiser is called and
trained, how images become latents, which layers are never cut and how a cut is made consistent.
adapter -> copy -> calibrate (``core.criteria.calibrate``) -> score -> cut (``core.granularities``)
-> measure (``core.measure``).
"""
from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from .allocator import release_freed_memory, return_large_allocations
from .calibration import (  # noqa: F401 - calibration_images is re-exported for callers of the engine
    GENERATED_CALIBRATION_STEPS, calibration_images, calibration_pixels, decode_for_autoencoder, encode_samples,
)
from .criteria import CRITERIA, CalibrationSettings, calibrate, compute_scores, copy_scheduler
from .criteria.scores import LayerScores, score_summary
from .granularities import GRANULARITIES
from .measure import count_model
from .pipeline import adapter_of, check_progress, pick_device, takes_prompts
from .spec import PruneSpec

ProgressFn = Callable[[float, str], None]
# Calibration statistics do not depend on the granularity or the sparsity, so a sweep (or the app,
# when the user moves the sparsity slider) reuses them: key = model weights + calibration settings.
# Statistics are as large as the model (a gradient per weight), so only small models' are kept:
# at most this many entries, and none whose tensors exceed CALIBRATION_CACHE_BYTES in all (a
# billion-parameter model's statistics would otherwise stay resident after its run).
CALIBRATION_CACHE_SIZE = 4
CALIBRATION_CACHE_BYTES = 256 * 2**20
_CALIBRATION_CACHE: dict = {}


def _statistics_bytes(stats_by: dict) -> int:
    total = 0
    for stats in stats_by.values():
        for table in (stats.gradients, stats.taylor_per_batch_sum):
            total += sum(t.numel() * t.element_size() for t in table.values())
    return total


def _module_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _calibration_key(denoiser_in, spec: PruneSpec, device) -> str:
    from .store import canonical_json, model_hash

    settings = dict(criterion=spec.criterion, schedule=spec.schedule, schedule_params=spec.schedule_params,
                    calibration_data=spec.calibration_data, calibration_batches=spec.calibration_batches,
                    calibration_batch_size=spec.calibration_batch_size, seed=spec.seed, device=str(device))
    if spec.calibration_prompts is not None:
        settings["calibration_prompts"] = list(spec.calibration_prompts)
    return model_hash(denoiser_in) + canonical_json(settings)


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
    * ``totals``: parameters and MACs before/after, achieved sparsity, structural ratio, wall time;
      ``target_sparsity`` is the requested sparsity, ``sparsity`` the reached one, and
      ``sparsity_shortfall`` a sentence when the granularity's units cannot reach the target
      (``block``: whole blocks), else None.
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

    def save(self, directory, recovery: dict | None = None) -> Path:
        """Write a checkpoint (safetensors, config, spec and report; no pickles) that
        ``core.pipeline.load_pipeline(directory)`` restores; ``recovery`` (settings and outcome of
        a recovery fine-tuning of this result) goes into its metadata."""
        from .checkpoint import save_pruned_pipeline

        return save_pruned_pipeline(self.pipeline, directory, spec=self.spec, report=self.report, recovery=recovery)


# ----------------------------------------------------------------------------------------------
# measuring (one counter: core.measure)
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def measure(model: nn.Module, adapter=None, component: str | None = None) -> tuple[dict[str, dict], int, int]:
    """Per conv/linear layer its type, parameter and weight counts, non-zero weights, MACs and
    shape; the total MACs (conv, linear and attention matmuls) and the total parameter count --
    all from ``core.measure.count_model``, the counter that ``evaluate`` and the app use too."""
    counted = count_model(model, adapter, component)
    macs = dict(zip(counted.layers["name"], counted.layers["macs"]))
    layers = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            layers[name] = dict(
                type=type(module).__name__,
                params=sum(p.numel() for p in module.parameters(recurse=False)),
                weights=module.weight.numel(),
                nonzero=int(torch.count_nonzero(module.weight)),
                macs=int(macs.get(name, 0)),
                shape=tuple(module.weight.shape),
            )
    return layers, counted.macs, counted.params


def count_macs(model: nn.Module) -> tuple[int, int]:
    """(MACs for one input, parameters): conv, linear and attention matmuls (``core.measure``)."""
    counted = count_model(model)
    return counted.macs, counted.params


# ----------------------------------------------------------------------------------------------
# the facade
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def offloaded(pipeline, device, keep=()):
    """On a GPU: the pipeline's other networks (text encoders, autoencoder) moved to the CPU while
    the body runs (they produced the calibration inputs and are not needed until sampling), then
    moved back, also on error. The denoiser being pruned is the engine's copy; the pipeline's own
    denoiser stays where it is. Nothing to do on the CPU."""
    if torch.device(device).type != "cuda":
        yield
        return
    from .models import adapter_for

    adapter = adapter_for(pipeline)
    moved = {}
    for name, component in getattr(pipeline, "components", {}).items():
        if name in keep or name == adapter.denoiser_name or not isinstance(component, nn.Module):
            continue
        parameter = next(component.parameters(), None)
        if parameter is not None and parameter.device.type == "cuda":
            moved[name] = parameter.device
            component.to("cpu")
    if moved:
        torch.cuda.empty_cache()
    try:
        yield
    finally:
        for name, where in moved.items():
            pipeline.components[name].to(where)


def _stage(progress: ProgressFn | None, start: float, end: float) -> ProgressFn | None:
    if progress is None:
        return None
    return lambda fraction, message: progress(start + (end - start) * min(1.0, max(0.0, fraction)), message)


def _check_components(adapter, pipeline, spec, criterion, granularity) -> tuple:
    names = tuple(spec.components) if spec.components else adapter.default_components(pipeline)
    for name in names:
        adapter.component(pipeline, name)  # ValueError naming the allowed components
    others = [name for name in names if name != adapter.denoiser_name]
    if others and criterion.reconstruct is not None:
        raise ValueError(
            f"criterion {spec.criterion!r} calibrates on the denoiser's sampling trajectory and prunes the denoiser only; "
            f"components {others} need a criterion in {sorted(n for n, c in CRITERIA.items() if c.reconstruct is None)}"
        )
    return names


def prune(pipeline, spec: PruneSpec, progress: ProgressFn | None = None) -> PruneResult:
    """Prune copies of ``pipeline``'s components as ``spec`` says; the caller's pipeline is not modified.

    ``spec.components`` names the networks to prune (default: the denoiser); each reaches the
    target sparsity on its own. Deterministic: the same spec (seed included) on the same model
    gives the same masks and weights. Sparsity 0 returns a model whose outputs equal the dense one's.
    """
    if not isinstance(spec, PruneSpec):
        raise ValueError(f"spec must be a PruneSpec, got {type(spec).__name__}")
    check_progress(progress)
    adapter = adapter_of(pipeline)
    started = time.perf_counter()
    device = pick_device(spec.device)
    return_large_allocations()  # per-layer temporaries go back to the system when freed (core.allocator)
    criterion = CRITERIA[spec.criterion]
    granularity = GRANULARITIES[spec.granularity_name]
    names = _check_components(adapter, pipeline, spec, criterion, granularity)
    prompts = {}
    if spec.calibration_prompts is not None:
        if not takes_prompts(pipeline):
            raise ValueError(f"calibration_prompts apply to text-to-image models (SD, PixArt, SD3); this {adapter.name} "
                             "model takes none: leave them None")
        prompts = dict(prompts=list(spec.calibration_prompts))
    denoiser_name = adapter.denoiser_name
    # The private copies keep the caller's dtype (an fp16 model stays fp16: the scores are computed
    # one layer at a time in float32, the stored model is not upcast).
    copies = {name: copy.deepcopy(getattr(pipeline, name)).to(device=device).eval() for name in names}
    for name, module in copies.items():  # refuse before any expensive calibration
        adapter.check_cut(name, module, spec.granularity_name)
        granularity.check(module, spec)
        if granularity.units_to_remove is not None:  # the unit counts refuse a target the structure cannot reach
            granularity.units_to_remove(module, spec)
    base_configs = {name: dict(module.config) for name, module in copies.items()}

    if progress is not None:
        progress(0.0, "measuring the dense model")
    before = {name: measure(module, adapter, name) for name, module in copies.items()}

    stats_by, scores_by, calibration_source, calibration_seconds, calibration_cached = {}, {}, None, 0.0, False
    if criterion.needs_calibration and criterion.reconstruct is None:
        calibration_started = time.perf_counter()
        cacheable = sum(_module_bytes(copies[name]) for name in names) <= CALIBRATION_CACHE_BYTES
        key = _calibration_key(getattr(pipeline, denoiser_name), spec, device) + repr(names) if cacheable else None
        if key in _CALIBRATION_CACHE:
            # read-only from here on: scoring reads the statistics and never changes them
            stats_by, calibration_source = _CALIBRATION_CACHE[key]
            calibration_cached = True
            if progress is not None:
                progress(0.8, "calibration reused (same model and calibration settings)")
        else:
            pixels, samples, calibration_source = calibration_pixels(pipeline, spec, progress)
            span = (0.1, 0.8) if calibration_source.startswith("generated") else (0.0, 0.8)
            share = (span[1] - span[0]) / len(names)
            for index, name in enumerate(names):
                part = (span[0] + index * share, span[0] + (index + 1) * share)
                module = copies[name]
                if name == denoiser_name:
                    if samples is None:
                        samples = encode_samples(pipeline, pixels, spec)
                    dtype = next(module.parameters()).dtype
                    batches = list(samples.to(device=device, dtype=dtype).split(spec.calibration_batch_size))
                    generator = torch.Generator().manual_seed(int(spec.seed) + 3)
                    conditionings = [adapter.sample_conditioning(pipeline, int(b.shape[0]), generator, **prompts)
                                     for b in batches]
                    # the text encoders and the autoencoder have done their part: off the GPU while
                    # the denoiser's passes run
                    with offloaded(pipeline, device, keep=names):
                        settings = CalibrationSettings(criterion.loss, spec.schedule, dict(spec.schedule_params),
                                                       criterion.zero_grad_per_batch, spec.seed)
                        stats_by[name] = calibrate(
                            module, copy_scheduler(pipeline.scheduler), batches, settings, progress, part,
                            adapter=adapter, component=name, conditionings=conditionings,
                        )
                else:  # an autoencoder: its own reconstruction loss on pixel images, one pass per batch
                    images = decode_for_autoencoder(pipeline, pixels, samples, spec).to(
                        device=device, dtype=next(module.parameters()).dtype)
                    batches = list(images.split(spec.calibration_batch_size))
                    settings = CalibrationSettings("reconstruction", "custom", {"timesteps": [[0, 1.0]]},
                                                   criterion.zero_grad_per_batch, spec.seed)
                    stats_by[name] = calibrate(module, copy_scheduler(pipeline.scheduler), batches, settings, progress,
                                               part, adapter=adapter, component=name)
            if key is not None and _statistics_bytes(stats_by) <= CALIBRATION_CACHE_BYTES:
                while len(_CALIBRATION_CACHE) >= CALIBRATION_CACHE_SIZE:
                    _CALIBRATION_CACHE.pop(next(iter(_CALIBRATION_CACHE)))
                _CALIBRATION_CACHE[key] = (stats_by, calibration_source)
        calibration_seconds = time.perf_counter() - calibration_started

    if criterion.reconstruct is not None:  # obs, gradflow: own calibration, may rewrite weights
        calibration_started = time.perf_counter()
        module = copies[denoiser_name]
        generator = torch.Generator().manual_seed(int(spec.seed) + 3)
        conditioning = adapter.sample_conditioning(pipeline, int(spec.calibration_batch_size), generator, **prompts)
        with adapter.conditioned(module, conditioning):
            scores, stats, calibration_source = criterion.reconstruct(module, pipeline, spec, _stage(progress, 0.0, 0.8))
        scores_by[denoiser_name], stats_by[denoiser_name] = scores, stats
        calibration_seconds = time.perf_counter() - calibration_started
    else:
        if progress is not None:
            progress(0.8, "scoring")
        for name, module in copies.items():
            scores_by[name] = compute_scores(criterion, module, stats_by.get(name), dict(spec.criterion_params), spec.seed,
                                             adapter, name)

    release_freed_memory()  # calibration's activations and graphs are gone
    for scores in scores_by.values():  # the report's score summary, read before the cut changes the weights
        if isinstance(scores, LayerScores):
            scores.summarize_all()
    outcomes, plain = {}, True
    share = 0.12 / len(names)
    for index, name in enumerate(names):
        if progress is not None:
            progress(0.85 + index * share, "pruning" + (f" {name}" if len(names) > 1 else ""))
        outcome = granularity.apply(copies[name], scores_by[name], spec, _stage(progress, 0.85 + index * share,
                                                                                0.85 + (index + 1) * share))
        module = outcome.model.eval()
        for parameter in module.parameters():
            parameter.requires_grad_(True)
            parameter.grad = None
        if granularity.structural:
            config = adapter.plain_config(name, module, base_configs[name])
            plain = plain and config is not None
            if config is not None:
                module.register_to_config(**config)
        copies[name], outcomes[name] = module, outcome

    if progress is not None:
        progress(0.97, "measuring the pruned model")
    after = {name: measure(module, adapter, name) for name, module in copies.items()}
    report = _build_report_components(names, denoiser_name, before, after, scores_by, outcomes, stats_by,
                                      granularity.structural)
    per_component, sums = {}, dict(weights_before=0, weights_after=0, params_before=0, params_after=0,
                                   macs_before=0, macs_after=0, effective=0.0)
    kept_key = "weights" if granularity.structural else "nonzero"
    for name in names:
        layers_before, macs_before, params_before = before[name]
        layers_after, macs_after, params_after = after[name]
        # Protected layers by each model's own names: a block cut renumbers the kept blocks, so the
        # dense model's names describe the dense layers and the pruned copy's its own.
        protected_before = set(adapter.protected_layers(name, getattr(pipeline, name)))
        protected_after = set(adapter.protected_layers(name, copies[name]))
        weights_before = sum(layers_before[n]["weights"] for n in layers_before if n not in protected_before)
        weights_after = sum(layers_after[n][kept_key] for n in layers_after if n not in protected_after)
        effective = sum(layers_after[n]["macs"] * (layers_after[n]["nonzero"] / max(1, layers_after[n]["weights"]))
                        for n in layers_after)
        per_component[name] = dict(
            sparsity=1.0 - weights_after / weights_before, params_before=params_before, params_after=params_after,
            macs_before=macs_before, macs_after=macs_after, structural_ratio=outcomes[name].structural_ratio,
        )
        for key, value in (("weights_before", weights_before), ("weights_after", weights_after),
                           ("params_before", params_before), ("params_after", params_after),
                           ("macs_before", macs_before), ("macs_after", macs_after), ("effective", effective)):
            sums[key] += value
    denoiser_stats = stats_by.get(denoiser_name) or (stats_by[names[0]] if stats_by else None)
    report.totals = dict(
        criterion=spec.criterion, granularity=spec.granularity, schedule=spec.schedule,
        target_sparsity=spec.sparsity, channel_ratio=spec.channel_ratio,
        sparsity=1.0 - sums["weights_after"] / sums["weights_before"],
        structural_ratio=outcomes[names[0]].structural_ratio,
        boosted_groups=outcomes[names[0]].notes.get("boosted_groups"),  # channel: groups given the next ratio step
        sparsity_shortfall=_sparsity_shortfall(names, outcomes),
        params_before=sums["params_before"], params_after=sums["params_after"],
        params_ratio=sums["params_after"] / sums["params_before"],
        prunable_params_before=sums["weights_before"], prunable_params_after=sums["weights_after"],
        macs_before=sums["macs_before"], macs_after=sums["macs_after"], macs_ratio=sums["macs_after"] / sums["macs_before"],
        macs_removed_fraction=1.0 - sums["macs_after"] / sums["macs_before"],
        effective_macs_after=int(sums["effective"]),
        schedule_stopped_at=denoiser_stats.stopped_at if denoiser_stats else None,
        calibration_source=calibration_source,
        calibration_images=denoiser_stats.num_images if denoiser_stats else 0,
        calibration_time_s=calibration_seconds,
        calibration_cached=calibration_cached,
        timesteps_per_group=denoiser_stats.timesteps_per_group if denoiser_stats else None,
        plain_diffusers_loadable=plain,
        family=adapter.name,
        components=list(names),
        per_component=per_component,
        device=str(device),
        wall_time_s=time.perf_counter() - started,
    )
    pruned_pipeline = adapter.replace_components(pipeline, {**copies, "scheduler": copy.deepcopy(pipeline.scheduler)})
    if progress is not None:
        progress(1.0, "done")
    return PruneResult(pipeline=pruned_pipeline, report=report, spec=spec)


def _sparsity_shortfall(names, outcomes) -> str | None:
    """The granularities' sentences on a target their units cannot reach (``block``), one per
    component that has one (named when several are pruned); None when every target is reached."""
    said = [(name, outcomes[name].notes.get("sparsity_shortfall")) for name in names]
    return "; ".join(f"{name}: {text}" if len(names) > 1 else text for name, text in said if text) or None


def _build_report_components(names, denoiser_name, before, after, scores_by, outcomes, stats_by,
                             structural) -> PruneReport:
    """One report over every pruned component: the denoiser's layers under their own names, the
    other components' layers prefixed ``"<component>."``, a ``component`` column on every row."""
    frames, importance = [], {}
    for name in names:
        prefix = "" if name == denoiser_name else f"{name}."
        part = _build_report(None, before[name][0], after[name][0], scores_by[name], outcomes[name],
                             stats_by.get(name) if name == denoiser_name else None, structural)
        layers = part.layers
        if prefix:
            layers["name"] = prefix + layers["name"]
        layers.insert(1, "component", name)
        frames.append(layers)
        importance.update({prefix + key: value for key, value in part.importance.items()})
        if name == denoiser_name:
            denoiser_part = part
    report = PruneReport(layers=pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0], importance=importance)
    if denoiser_name in names:
        report.timestep_contributions = denoiser_part.timestep_contributions
        report.timestep_weights = denoiser_part.timestep_weights
        report.calibration_loss = denoiser_part.calibration_loss
    return report


def _build_report(spec, before, after, scores, outcome, stats, structural) -> PruneReport:
    rows = []
    for name, layer in before.items():
        done = after.get(name)
        kept = (done["weights"] if structural else done["nonzero"]) if done else 0
        summary = score_summary(scores, name)
        rows.append(dict(
            name=name, type=layer["type"], prunable=name in scores,
            params_before=layer["params"], params_after=done["params"] if done else 0,
            weights_before=layer["weights"], weights_after=kept,
            macs_before=layer["macs"], macs_after=done["macs"] if done else 0,
            sparsity=1.0 - kept / layer["weights"],
            shape_before=str(layer["shape"]), shape_after=str(done["shape"]) if done else "",
            units_before=outcome.units_before.get(name, layer["shape"][0]),
            units_after=outcome.units_after.get(name, done["shape"][0] if done else 0),
            importance_mean=summary[0] if summary is not None else np.nan,
            importance_min=summary[1] if summary is not None else np.nan,
            importance_max=summary[2] if summary is not None else np.nan,
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
