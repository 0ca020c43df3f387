"""The dense model at fewer sampling steps: the baseline frontier of the quality-vs-latency plane.

Every user can trade quality for speed without pruning, by sampling the dense model with fewer
steps. A pruned model is worth something only where it beats that trade at equal latency, so the
app's quality-vs-latency chart and the frontier benchmarks draw these points next to the pruned
ones. :func:`dense_frontier` measures them, the same way for all of them: FID/KID of the dense
model at each step count (``core.evaluate``), and a latency relative to ``base_steps``:

* ``latency="steps"``: ``steps / base_steps``. The sampler's cost is one denoiser call per step
  plus an elementwise update, so this is the latency the sampler has, without timing noise.
* ``latency="sampler"``: the whole sampler timed at every step count, interleaved (one warm-up
  round, then ``repeats`` round-robin rounds over the step counts, so load drifts hit every count
  alike); the median divided by the median at ``base_steps``.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

ProgressFn = Callable[[float, str], None]

# The app's frontier: the dense model at these fractions of the run's sampling steps.
FRONTIER_FRACTIONS = (0.2, 0.4, 0.6, 0.8)
LATENCY_MODES = ("steps", "sampler")
QUALITY_METRICS = ("fid", "kid")
# Bumped when the meaning of a stored frontier row changes.
FRONTIER_VERSION = 1


def fewer_steps(base_steps: int, fractions=FRONTIER_FRACTIONS) -> list[int]:
    """The step counts below ``base_steps`` at ``fractions`` of it (each at least 1, no repeats)."""
    return sorted({max(1, round(base_steps * f)) for f in fractions} - {base_steps})


def _whole(name: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"frontier {name} must be a whole number from {low:,} to {high:,}, got {value!r}")


@dataclass(frozen=True)
class FrontierSettings:
    """How the frontier is measured: ``num_samples`` samples (seed ``seed``) per step count scored
    with ``metrics`` (``fid``, ``kid``) against ``reference`` and sampled with ``scheduler`` (one of
    ``core.pipeline.SCHEDULERS``: DDIM, DDPM or DPM-Solver++; each costs one denoiser call per
    step, so ``latency="steps"`` holds for all of them); latency relative to ``base_steps``
    (``latency``: ``steps`` or ``sampler``, the latter timed over ``repeats`` rounds of
    ``latency_batch_size`` images). ``label`` names the model in the rows kept in a results store
    (None: nothing is kept, every call measures)."""

    num_samples: int
    base_steps: int
    seed: int = 0
    metrics: tuple = QUALITY_METRICS
    reference: str = "fashion-mnist-test"
    latency: str = "steps"
    repeats: int = 5
    latency_batch_size: int = 8
    label: str | None = None
    scheduler: str = "ddim"

    def __post_init__(self):
        _whole("num_samples", self.num_samples, 2, 50_000)
        _whole("base_steps", self.base_steps, 1, 1000)
        _whole("seed", self.seed, 0, 2 ** 63 - 1)
        metrics = self.metrics
        if isinstance(metrics, str) or not isinstance(metrics, (tuple, list)) or not metrics \
                or any(m not in QUALITY_METRICS for m in metrics) or len(set(metrics)) != len(metrics):
            raise ValueError(f"frontier metrics must be distinct names from {list(QUALITY_METRICS)}, got {metrics!r}")
        object.__setattr__(self, "metrics", tuple(metrics))
        if not isinstance(self.reference, str) or not self.reference.strip():
            raise ValueError(f"frontier reference must be 'fashion-mnist-test', 'dense' or an image folder, got {self.reference!r}")
        if self.latency not in LATENCY_MODES:
            raise ValueError(f"frontier latency must be one of {list(LATENCY_MODES)}, got {self.latency!r}")
        _whole("repeats", self.repeats, 1, 1000)
        _whole("latency_batch_size", self.latency_batch_size, 1, 1024)
        from .pipeline import SCHEDULERS

        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"frontier scheduler must be one of {list(SCHEDULERS)}, got {self.scheduler!r}")
        if self.label is not None and (not isinstance(self.label, str) or not self.label):
            raise ValueError(f"frontier label must be None or a model name, got {self.label!r}")


def _steps(steps, settings: FrontierSettings) -> list[int]:
    counts = [steps] if isinstance(steps, int) else list(steps)
    for count in counts:
        _whole("steps", count, 1, 1000)
    if settings.latency == "sampler":  # the unit of the measured latency
        counts.append(settings.base_steps)
    if not counts:
        raise ValueError("frontier steps must list at least one step count")
    return sorted(set(counts))


def _store_key(dense_hash: str, count: int, settings: FrontierSettings) -> str:
    from .store import key_for

    return key_for(dense_hash, {"frontier": FRONTIER_VERSION, "model": settings.label, "samples": settings.num_samples,
                                "steps": count, "base_steps": settings.base_steps, "reference": settings.reference,
                                "metrics": list(settings.metrics),
                                # DDIM rows keep the key they had before the sampler was a setting.
                                **({"scheduler": settings.scheduler} if settings.scheduler != "ddim" else {})})


def _point(pipeline, count: int, settings: FrontierSettings, store) -> dict:
    """The quality of the dense model at ``count`` steps. The row at ``base_steps`` counts MACs too,
    as a run's dense evaluation does, so with a store it is that evaluation's stored row."""
    from .evaluate import evaluate

    metrics = settings.metrics + (("macs",) if count == settings.base_steps else ())
    row = evaluate(pipeline, num_samples=settings.num_samples, num_inference_steps=count, seed=settings.seed,
                   metrics=metrics, reference=settings.reference, dense_pipeline=pipeline, store=store,
                   scheduler=settings.scheduler)
    return dict(frontier_of=settings.label, scheduler=settings.scheduler, num_samples=settings.num_samples,
                num_inference_steps=count,
                base_steps=settings.base_steps, reference=settings.reference, fid=row.get("fid"), kid=row.get("kid"),
                kid_std=row.get("kid_std"), relative_latency=count / settings.base_steps)


def _sampler_latency(pipeline, counts: list[int], settings: FrontierSettings, progress: ProgressFn | None) -> dict:
    """Seconds per image of the whole sampler at every step count, interleaved round-robin."""
    from .pipeline import sample_images

    batch = settings.latency_batch_size

    def time_sampler(count: int) -> float:
        started = time.perf_counter()
        sample_images(pipeline, batch, count, settings.seed, batch_size=batch, scheduler=settings.scheduler)
        return (time.perf_counter() - started) / batch

    if progress is not None:
        progress(0.9, f"timing the sampler at {len(counts)} step counts ({settings.repeats} rounds)")
    for count in counts:  # warm-up round
        time_sampler(count)
    times = {count: [] for count in counts}
    for _ in range(settings.repeats):
        for count in counts:
            times[count].append(time_sampler(count))
    return times


def dense_frontier(pipeline, steps, settings: FrontierSettings, store=None, progress: ProgressFn | None = None):
    """The dense ``pipeline`` at each of ``steps`` sampling steps: a DataFrame, one row per step
    count (sorted), with ``fid``/``kid``/``kid_std`` and ``relative_latency`` (see the module
    docstring) next to the settings; ``latency="sampler"`` adds the timed ``latency_*_s_per_image``.

    With a ``store`` and ``settings.label``, every row is kept and a later call with the same
    model and settings answers it from the store (evaluations are stored by ``core.evaluate`` too)."""
    import pandas as pd

    from .models import adapter_for
    from .store import model_hash

    counts = _steps(steps, settings)
    keep = store is not None and settings.label is not None
    dense_hash = model_hash(adapter_for(pipeline).denoiser(pipeline)) if keep else None
    rows = []
    for index, count in enumerate(counts):
        key = _store_key(dense_hash, count, settings) if keep else None
        stored = store.get(key) if keep else None
        if stored is None:
            if progress is not None:
                progress(0.9 * index / len(counts), f"dense at {count} steps (baseline frontier)")
            stored = _point(pipeline, count, settings, store)
            if keep:
                store.put(key, stored)
        rows.append(dict(stored))
    if settings.latency == "sampler":
        times = _sampler_latency(pipeline, counts, settings, progress)
        base = statistics.median(times[settings.base_steps])
        for row in rows:
            samples = times[row["num_inference_steps"]]
            row.update(latency_median_s_per_image=statistics.median(samples), latency_min_s_per_image=min(samples),
                       latency_max_s_per_image=max(samples), relative_latency=statistics.median(samples) / base)
    table = pd.DataFrame(rows)
    table["seed"] = settings.seed
    return table.sort_values("num_inference_steps").reset_index(drop=True)
