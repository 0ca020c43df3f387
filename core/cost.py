"""How long a gradient criterion's calibration will take, before it starts.

The calibration of ``taylor``, ``nici`` and ``l1`` is one forward+backward pass per
(timestep, image) pair -- ``passes = timesteps x images`` -- batched into chunks of
``CALIBRATION_CHUNK_SAMPLES`` samples (``core/criteria/__init__.py``). Its cost is therefore linear
in ``passes``, and the rate at which this machine processes passes is *measured* here by timing
the criteria's own pass -- one chunk of ``calibration_loop`` with the ``GradientCollector`` that
``calibrate`` uses -- at the spec's batch size (after one warm-up pass). For the
``threshold`` schedule the number of timesteps is only known once the walk stops, so the estimate
is an upper bound at ``max_timesteps`` (default: all T); the walk's passes are the first batch's
gradient passes, so it adds none of its own.

The estimate is labelled as one wherever it is shown; the benchmark
(``benchmarks/bench_prune.py --parts cost``) reports it next to the measured wall time.
"""
from __future__ import annotations

import copy
import time

import torch

from .criteria import (CRITERIA, LOSSES, CalibrationStats, GradientCollector, calibration_loop, gradients_of,
                       prunable_layers, timesteps_per_pass)
from .pipeline import adapter_of, pick_device
from .schedules import SCHEDULES
from .spec import PruneSpec

# (model identity, batch size, loss, device) -> measured seconds per forward+backward sample
_RATE_CACHE: dict = {}


def calibration_passes(pipeline, spec: PruneSpec) -> dict:
    """Timesteps, images and passes of ``spec``'s calibration (no computation)."""
    criterion = CRITERIA[spec.criterion]
    if criterion.loss is None:
        return {}
    scheduler = pipeline.scheduler
    num_train_timesteps = int(scheduler.config.num_train_timesteps)
    schedule = SCHEDULES[spec.schedule]
    images = int(spec.calibration_batches) * int(spec.calibration_batch_size)
    if schedule.adaptive:
        limit = spec.schedule_params.get("max_timesteps") or schedule.defaults.get("max_timesteps") or num_train_timesteps
        timesteps, upper_bound = int(min(limit, num_train_timesteps)), True
    else:
        plan = schedule.resolve(num_train_timesteps, dict(spec.schedule_params))
        timesteps, upper_bound = sum(1 for _, w in plan if w > 0), False
    return dict(timesteps=timesteps, images=images, passes=timesteps * images, upper_bound=upper_bound)


def measure_rate(pipeline, spec: PruneSpec, repeats: int = 2) -> float:
    """Measured seconds per forward+backward sample of ``pipeline``'s UNet at ``spec``'s
    calibration batch size (one chunk of timesteps per pass, as the calibration runs)."""
    criterion = CRITERIA[spec.criterion]
    device = pick_device(spec.device)
    batch = int(spec.calibration_batch_size)
    adapter = adapter_of(pipeline)
    denoiser = adapter.denoiser(pipeline)
    key = (id(denoiser), batch, criterion.loss, str(device), torch.get_num_threads())
    if key in _RATE_CACHE:
        return _RATE_CACHE[key]
    model = copy.deepcopy(denoiser).to(device=device, dtype=torch.float32).eval()
    layers = prunable_layers(model, adapter, adapter.denoiser_name)
    # content is irrelevant to the time: noise of the denoiser's input shape stands in for the data
    clean, noise = adapter.noise(model, batch, 0).to(device), adapter.noise(model, batch, 1).to(device)
    conditioning = adapter.sample_conditioning(pipeline, batch, torch.Generator().manual_seed(0))
    count = timesteps_per_pass(batch)
    timesteps = [int(t) for t in torch.linspace(0, int(pipeline.scheduler.config.num_train_timesteps) - 1, count)]
    scheduler = copy.deepcopy(pipeline.scheduler)
    loss_fn = LOSSES[criterion.loss]
    seconds = []
    with gradients_of(model, layers):
        for _ in range(repeats + 1):  # the first pass warms up the allocator and kernels
            collector = GradientCollector(layers, CalibrationStats(), 1, criterion.zero_grad_per_batch)
            started = time.perf_counter()
            calibration_loop(model, scheduler, [clean], [noise], [(t, 1.0) for t in timesteps], loss_fn, collector.add,
                             adapter=adapter, conditionings=[conditioning], group_size=count)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - started)
    rate = min(seconds[1:]) / (count * batch)
    _RATE_CACHE[key] = rate
    return rate


def estimate_cost(pipeline, spec: PruneSpec) -> dict:
    """An estimate of ``spec``'s calibration time on this machine: the passes it needs times the
    measured seconds per pass. Empty for criteria that do not calibrate by gradients (their cost
    is measured by ``benchmarks/bench_prune.py --parts cost``)."""
    if not isinstance(spec, PruneSpec):
        raise ValueError(f"spec must be a PruneSpec, got {type(spec).__name__}")
    plan = calibration_passes(pipeline, spec)
    if not plan:
        return {}
    rate = measure_rate(pipeline, spec)
    seconds = rate * plan["passes"]
    return dict(plan, seconds_per_pass=rate, seconds=seconds)


def describe_estimate(estimate: dict) -> str:
    """One line for people: '~2 min (4 images x 235 timesteps = 940 passes at 21 ms each, measured)'."""
    if not estimate:
        return ""
    seconds = estimate["seconds"]
    when = f"{seconds:.0f} s" if seconds < 120 else (f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h")
    bound = "up to " if estimate["upper_bound"] else "about "
    return (f"estimated calibration: {bound}{when} ({estimate['images']} images x {estimate['timesteps']} timesteps = "
            f"{estimate['passes']:,} passes at {1000 * estimate['seconds_per_pass']:.1f} ms each, rate measured now"
            + ("; the threshold walk usually stops earlier)" if estimate["upper_bound"] else ")"))
