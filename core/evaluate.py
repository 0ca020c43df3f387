"""One evaluation entry point: ``evaluate(pipeline, num_samples, ...) -> dict``.

The app, the CLI, the benchmarks and the pruning sweeps all measure a model through this call,
so every figure they show is computed the same way (see ``core/metrics.py`` for the instruments)
and, when a ``ResultStore`` is given, stored once and answered from disk on a repeated request.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import torch

from . import metrics as instruments
from .metrics import FID_METRICS, FeatureCache, ProgressFn
from .measure import count_model
from .pipeline import SCHEDULERS, adapter_of, sample_images
from .store import ResultStore, jsonable, key_for, model_hash

METRICS = ("fid", "kid", "latency", "macs")
DENSE_REFERENCE = "dense"
# Bumped when the meaning of a stored row changes, so old rows are not served for new requests.
EVALUATION_VERSION = 1
# Bounds checked before any work (sized for this tool's machines: a 2-core CPU or one GPU). 50,000
# samples is the standard FID sample count; a latency batch of 1024 images already needs GBs.
MAX_NUM_SAMPLES = 50_000
MAX_BATCH_SIZE = 1024
MAX_KID_SUBSETS = 10_000
MAX_LATENCY_REPEATS = 1000

# Every row carries all of these keys (None where a metric was not requested), so rows of
# different requests stack into one DataFrame.
RESULT_KEYS = (
    "fid", "kid", "kid_std", "kid_subset_size",
    "latency_median_s_per_image", "latency_min_s_per_image", "latency_max_s_per_image",
    "latency_per_step_s", "latency_batch_size", "threads", "device",
    "dense_latency_median_s_per_image", "speedup",
    "params", "macs", "nonzero_params", "attention_macs", "autoencoder_params", "autoencoder_macs", "class_label",
    "num_samples", "num_inference_steps", "seed", "scheduler", "reference", "metrics",
    "model_hash", "prune_spec", "seconds", "reference_seconds", "sampling_seconds", "samples_reused", "feature_seconds",
    "distance_seconds",
)


class _Progress:
    """Maps the progress of successive phases onto one 0..1 scale for the caller's callback."""

    def __init__(self, callback: ProgressFn | None, plan: dict[str, float]):
        self.callback = callback
        total = sum(plan.values()) or 1.0
        self.start: dict[str, float] = {}
        self.width: dict[str, float] = {}
        position = 0.0
        for name, weight in plan.items():
            self.start[name], self.width[name] = position / total, weight / total
            position += weight

    def phase(self, name: str) -> ProgressFn | None:
        if self.callback is None:
            return None
        start, width = self.start[name], self.width[name]
        return lambda fraction, message: self.callback(min(1.0, start + width * fraction), message)

    def report(self, name: str, fraction: float, message: str) -> None:
        report = self.phase(name)
        if report is not None:
            report(fraction, message)


def _check_int(name: str, value, low: int, high: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        bound = f" and <= {high} (the bound for this tool's machines)" if high is not None else ""
        raise ValueError(f"{name} must be an integer >= {low}{bound}, got {value!r}")


def _resolve_metrics(metrics: Sequence[str] | str) -> tuple[str, ...]:
    if metrics is None or not isinstance(metrics, (str, list, tuple, set, frozenset)):
        raise ValueError(f"metrics must be a non-empty subset of {list(METRICS)}, got {metrics!r}")
    requested = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    unknown = [m for m in requested if m not in METRICS]
    if unknown or not requested:
        raise ValueError(f"metrics must be a non-empty subset of {list(METRICS)}, got unknown {unknown or requested!r}")
    return tuple(m for m in METRICS if m in requested)


def _reference_identity(reference, dense_pipeline, image_size: int, channels: int) -> dict:
    if reference == DENSE_REFERENCE:
        if dense_pipeline is None:
            raise ValueError("reference='dense' needs dense_pipeline (the unpruned model to compare against)")
        return {"reference": DENSE_REFERENCE, "model_hash": pipeline_hash(dense_pipeline)}
    if not isinstance(reference, (str, Path)):
        raise ValueError(f"reference must be a string or a folder path, got {type(reference).__name__}")
    if not str(reference).strip():
        raise ValueError(f"reference must be one of {sorted(instruments.REFERENCE_SETS) + [DENSE_REFERENCE]} or an "
                         "existing image folder, got '' (an empty path would read the current directory)")
    return instruments.reference_identity(reference, image_size, channels)


def _device(adapter, pipeline):
    return next(adapter.denoiser(pipeline).parameters()).device


def pipeline_hash(pipeline) -> str:
    """Hash of what decides a pipeline's samples: the denoiser, plus the autoencoder of a latent
    model (a pruned autoencoder changes the images). Pixel models keep their denoiser-only hash."""
    adapter = adapter_of(pipeline)
    digest = model_hash(adapter.denoiser(pipeline))
    autoencoder = adapter.autoencoder(pipeline)
    return digest if autoencoder is None else digest + "+" + model_hash(autoencoder)[:16]


def _check_pipeline(name: str, pipeline, optional: bool = False):
    if pipeline is None and optional:
        return None
    if pipeline is None or not hasattr(pipeline, "components"):
        raise ValueError(f"{name} must be a diffusion pipeline (load_pipeline(...)){' or None' if optional else ''}, "
                         f"got {type(pipeline).__name__}")
    return adapter_of(pipeline)


def evaluate(
    pipeline,
    num_samples: int,
    num_inference_steps: int = 50,
    seed: int = 0,
    metrics: Sequence[str] = METRICS,
    reference: str | Path = "fashion-mnist-test",
    dense_pipeline=None,
    progress: ProgressFn | None = None,
    store: ResultStore | None = None,
    prune_spec=None,
    batch_size: int = 64,
    *,
    scheduler: str = "ddim",
    kid_subset_size: int | None = None,
    kid_subsets: int = instruments.KID_SUBSETS,
    latency_batch_size: int = 8,
    latency_repeats: int = 3,
    latency_warmup: int = 1,
    feature_cache: FeatureCache | None = None,
    class_label: int | None = None,
    images: torch.Tensor | None = None,
) -> dict:
    """Measure ``pipeline``: FID/KID against ``reference``, sampler latency, parameters and MACs.

    - ``metrics``: any of ``("fid", "kid", "latency", "macs")``.
    - ``reference``: ``"fashion-mnist-test"`` (shipped features of the 1,000 test images), a folder
      of images, or ``"dense"``: ``num_samples`` samples of ``dense_pipeline`` from the same noise
      and settings (distance of a pruned model from its dense teacher; cached on disk).
    - ``dense_pipeline``: when given with ``"latency"``, both models are timed interleaved and the
      row gets ``speedup`` = dense median / pruned median.
    - ``store``: a :class:`~core.store.ResultStore`; a stored row for the same model hash,
      settings and ``prune_spec`` is returned at once with ``cached=True``, else the new row is
      stored (``cached=False``).
    - ``progress``: ``callable(fraction, message)``.
    - ``class_label``: class-conditional models sample this class (default: uniformly drawn classes).
    - ``images``: the ``num_samples`` samples this call would draw (same pipeline, steps, seed,
      sampler, class), when the caller has already drawn them (the app's grid): they are scored
      instead of being sampled again (``samples_reused`` in the row).
    - Latent models are sampled and decoded to images by their autoencoder; ``params``/``macs`` are
      the denoiser's (one call), ``autoencoder_params``/``autoencoder_macs`` the autoencoder's.

    Returns a dict with every key of :data:`RESULT_KEYS` (``None`` for metrics not requested)
    plus ``key`` and ``cached``. Latency keys are per image (and ``latency_per_step_s`` per
    denoising step of a ``latency_batch_size`` batch) in seconds.
    """
    started = time.perf_counter()
    adapter = _check_pipeline("pipeline", pipeline)
    _check_pipeline("dense_pipeline", dense_pipeline, optional=True)
    requested = _resolve_metrics(metrics)
    wants_fid = any(m in FID_METRICS for m in requested)
    _check_int("num_samples", num_samples, 2 if wants_fid else 1, MAX_NUM_SAMPLES)
    _check_int("num_inference_steps", num_inference_steps, 1, adapter.num_train_timesteps(pipeline))
    _check_int("seed", seed, 0, 2 ** 63 - 1)
    _check_int("batch_size", batch_size, 1, MAX_BATCH_SIZE)
    _check_int("kid_subsets", kid_subsets, 1, MAX_KID_SUBSETS)
    _check_int("latency_batch_size", latency_batch_size, 1, MAX_BATCH_SIZE)
    _check_int("latency_repeats", latency_repeats, 1, MAX_LATENCY_REPEATS)
    if images is not None and (not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[0] != num_samples):
        raise ValueError(f"images must be the {num_samples} samples to score (N x C x H x W), got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    _check_int("latency_warmup", latency_warmup, 0, MAX_LATENCY_REPEATS)
    if class_label is not None:
        adapter.sample_conditioning(pipeline, 1, class_label=class_label)  # ValueError when not a valid class
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {list(SCHEDULERS)}, got {scheduler!r}")
    if store is not None and not isinstance(store, ResultStore):
        raise ValueError(f"store must be a ResultStore or None, got {type(store).__name__}")
    if "kid" in requested and kid_subset_size is not None:
        instruments.resolve_kid_subset_size(num_samples, num_samples, kid_subset_size)
    channels, size, _ = adapter.image_shape(pipeline)
    identity = _reference_identity(reference, dense_pipeline, size, channels) if wants_fid else None
    if wants_fid and reference == DENSE_REFERENCE:
        dense_shape = adapter_of(dense_pipeline).image_shape(dense_pipeline)
        if dense_shape != (channels, size, _):
            raise ValueError(f"dense_pipeline differs in its image shape ({dense_shape} vs {(channels, size, _)})")

    pipeline_digest = pipeline_hash(pipeline)
    dense_hash = pipeline_hash(dense_pipeline) if dense_pipeline is not None and "latency" in requested else None
    settings = {
        "version": EVALUATION_VERSION, "metrics": list(requested), "num_samples": num_samples,
        "num_inference_steps": num_inference_steps, "seed": seed, "scheduler": scheduler,
    }
    if class_label is not None:
        settings["class_label"] = class_label
    if wants_fid:
        settings.update(reference=identity, batch_size=batch_size, kid_subset_size=kid_subset_size,
                        kid_subsets=kid_subsets, feature_recipe=instruments.FEATURE_RECIPE)
    if "latency" in requested:
        settings.update(latency={"batch_size": latency_batch_size, "repeats": latency_repeats, "warmup": latency_warmup},
                        device=str(_device(adapter, pipeline)), threads=torch.get_num_threads(), dense_model_hash=dense_hash)
    key = key_for(pipeline_digest, settings, prune_spec)
    if store is not None:
        stored = store.get(key)
        if stored is not None:
            if progress is not None:
                progress(1.0, "loaded stored result")
            return {**stored, "key": key, "cached": True}

    plan = {}
    if wants_fid:
        plan["reference"] = 3.0 if reference == DENSE_REFERENCE else 0.5
        plan.update(sampling=3.0, features=2.0, distances=0.5)
    if "latency" in requested:
        plan["latency"] = 2.0 if dense_pipeline is not None else 1.0
    if "macs" in requested:
        plan["macs"] = 0.2
    phases = _Progress(progress, plan)
    row: dict = dict.fromkeys(RESULT_KEYS)
    row.update(num_samples=num_samples, num_inference_steps=num_inference_steps, seed=seed, scheduler=scheduler,
               metrics=list(requested), model_hash=pipeline_digest, prune_spec=jsonable(prune_spec), class_label=class_label)

    if wants_fid:
        feature_device = _device(adapter, pipeline)
        cache = feature_cache or FeatureCache()
        reference_start = time.perf_counter()
        if reference == DENSE_REFERENCE:
            row["reference"] = DENSE_REFERENCE
            dense_key = {"reference": DENSE_REFERENCE, "model_hash": identity["model_hash"], "num_samples": num_samples,
                         "num_inference_steps": num_inference_steps, "seed": seed, "scheduler": scheduler,
                         "batch_size": batch_size}
            report = phases.phase("reference")

            def dense_features() -> torch.Tensor:
                images = sample_images(dense_pipeline, num_samples, num_inference_steps, seed, batch_size=batch_size,
                                       scheduler=scheduler, class_label=class_label,
                                       progress=None if report is None else lambda f, m: report(0.7 * f, f"dense {m}"))
                return instruments.inception_features(
                    images, progress=None if report is None else lambda f, m: report(0.7 + 0.3 * f, f"dense {m}"),
                    device=feature_device)

            real = cache.get_or_compute(dense_key, dense_features)
        else:
            row["reference"] = reference if isinstance(reference, str) and reference in instruments.REFERENCE_SETS else identity["path"]
            real = instruments.reference_features(reference, image_size=size, channels=channels, cache=cache,
                                                  progress=phases.phase("reference"))
        phases.report("reference", 1.0, "reference features ready")
        sampling_start = time.perf_counter()
        row["samples_reused"] = images is not None
        if images is None:
            images = sample_images(pipeline, num_samples, num_inference_steps, seed, batch_size=batch_size,
                                   scheduler=scheduler, class_label=class_label, progress=phases.phase("sampling"))
        features_start = time.perf_counter()
        fake = instruments.inception_features(images, progress=phases.phase("features"), device=feature_device)
        features_end = time.perf_counter()
        phases.report("distances", 0.0, "computing " + " and ".join(m.upper() for m in requested if m in FID_METRICS))
        distances = instruments.fid_kid(real, fake, metrics=[m for m in FID_METRICS if m in requested],
                                        kid_subset_size=kid_subset_size, kid_subsets=kid_subsets, seed=seed)
        row.update(distances, distance_seconds=time.perf_counter() - features_end)
        row.update(reference_seconds=sampling_start - reference_start, sampling_seconds=features_start - sampling_start,
                   feature_seconds=features_end - features_start)
        phases.report("distances", 1.0, "distances computed")

    if "latency" in requested:
        latency_args = dict(batch_size=latency_batch_size, num_inference_steps=num_inference_steps,
                            repeats=latency_repeats, warmup=latency_warmup, scheduler=scheduler, seed=seed)
        phases.report("latency", 0.0, "timing the sampler")
        if dense_pipeline is not None:
            pair = instruments.measure_latency_pair(dense_pipeline, pipeline, **latency_args)
            latency = pair["pruned"]
            row.update(dense_latency_median_s_per_image=pair["dense"]["median_s_per_image"], speedup=pair["speedup"])
        else:
            latency = instruments.measure_latency(pipeline, **latency_args)
        row.update(
            latency_median_s_per_image=latency["median_s_per_image"],
            latency_min_s_per_image=latency["min_s_per_image"],
            latency_max_s_per_image=latency["max_s_per_image"],
            latency_per_step_s=latency["per_step_s"],
            latency_batch_size=latency["batch_size"],
            threads=latency["threads"],
            device=latency["device"],
        )
        phases.report("latency", 1.0, "latency measured")

    if "macs" in requested:
        row.update(count_model(adapter.denoiser(pipeline), adapter, adapter.denoiser_name).to_dict())
        autoencoder = adapter.autoencoder(pipeline)
        if autoencoder is not None:  # counted apart: one encode + decode per image, not per step
            counted = count_model(autoencoder, adapter, adapter.autoencoder_attribute(pipeline))
            row.update(autoencoder_params=counted.params, autoencoder_macs=counted.macs)
        phases.report("macs", 1.0, "parameters and MACs counted")

    row["seconds"] = time.perf_counter() - started
    if store is not None:
        store.put(key, row)
    if progress is not None:
        progress(1.0, "evaluation done")
    return {**row, "key": key, "cached": False}
