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

``obs`` and ``gradflow`` run their own calibration (``Criterion.reconstruct``); their estimates
are built the same way, from their own work measured here:

* ``obs`` (OBS-Diff): the dense model samples ``images`` trajectories through the schedule's
  steps with Hessian hooks on every layer, later layer groups re-run the recorded steps up to
  their last layer (group ``g`` of ``G`` runs about ``g / G`` of the network, the last one all of
  it), and every layer is solved once. Measured: one hooked sampling step at the spec's image
  count, one plain forward, and SparseGPT's per-layer solve (``prune_layer``) once per distinct
  layer shape on a synthetic Hessian. For ``channel``, ``head`` and ``ffn`` fewer layers are
  hooked and solved, so the same measurement is an upper bound.
* ``gradflow``: ``iterations`` x (weighted timesteps x batches) passes of loss, gradient and
  Hessian-vector product (``gradient_flow_importance``), one pass measured at the spec's batch
  size.

The estimate is labelled as one wherever it is shown; the benchmark
(``benchmarks/bench_prune.py --parts cost``) reports it next to the measured wall time.
"""
from __future__ import annotations

import copy
import time

import torch

from .criteria import (CRITERIA, LOSSES, CalibrationLoopSettings, CalibrationStats, GradientCollector, calibration_loop,
                       gradients_of, prunable_layers, timesteps_per_pass)
from .pipeline import adapter_of, pick_device
from .schedules import SCHEDULES
from .spec import PruneSpec

# measured rates, keyed by what they depend on (model identity, batch size, device, threads, ...)
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
                             settings=CalibrationLoopSettings(adapter=adapter, group_size=count),
                             conditionings=[conditioning])
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - started)
    rate = min(seconds[1:]) / (count * batch)
    _RATE_CACHE[key] = rate
    return rate


def estimate_cost(pipeline, spec: PruneSpec) -> dict:
    """An estimate of ``spec``'s calibration time on this machine: the work it needs times rates
    measured now (see the module docstring). Empty for criteria without calibration."""
    if not isinstance(spec, PruneSpec):
        raise ValueError(f"spec must be a PruneSpec, got {type(spec).__name__}")
    if spec.criterion in RECONSTRUCTION_ESTIMATES:
        return RECONSTRUCTION_ESTIMATES[spec.criterion](pipeline, spec)
    plan = calibration_passes(pipeline, spec)
    if not plan:
        return {}
    rate = measure_rate(pipeline, spec)
    seconds = rate * plan["passes"]
    return dict(plan, kind="gradient", seconds_per_pass=rate, seconds=seconds)


def _float32_denoiser(pipeline, spec: PruneSpec):
    """A float32 copy of ``pipeline``'s denoiser on the spec's device, in eval mode, and its adapter."""
    adapter = adapter_of(pipeline)
    model = copy.deepcopy(adapter.denoiser(pipeline)).to(device=pick_device(spec.device), dtype=torch.float32)
    return model.eval(), adapter


def _timed(function, repeats: int, device) -> float:
    """Fastest of ``repeats`` timed calls of ``function`` after one warm-up call (``repeats`` 0:
    one call, timed)."""
    seconds = []
    for _ in range(max(1, repeats + 1)):
        started = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    return min(seconds[1:] or seconds)


def _obs_rates(pipeline, spec: PruneSpec, images: int, repeats: int = 1) -> dict:
    """obs's measured parts on ``pipeline``: seconds of one sampling step with Hessian hooks on
    every layer and of one plain forward (both at ``images`` trajectories), and of SparseGPT's
    solve of every prunable layer (once per distinct shape, synthetic Hessian)."""
    from .criteria.obs import collect_hessians, prune_layer, sampling_trajectory, supported_layer, weight_matrix
    from .pipeline import denoiser_noise

    key = ("obs", id(adapter_of(pipeline).denoiser(pipeline)), images, spec.granularity_name, spec.nm_pattern,
           str(pick_device(spec.device)), torch.get_num_threads())
    if key in _RATE_CACHE:
        return _RATE_CACHE[key]
    model, adapter = _float32_denoiser(pipeline, spec)
    device = next(model.parameters()).device
    layers = {name: module for name, module in prunable_layers(model, adapter, adapter.denoiser_name).items()
              if supported_layer(module)}
    scheduler = copy.deepcopy(pipeline.scheduler)
    noise = denoiser_noise(model, images, int(spec.seed)).to(device)
    middle = int(scheduler.config.num_train_timesteps) // 2
    with torch.no_grad():
        with collect_hessians(layers):
            hooked = _timed(lambda: sampling_trajectory(model, scheduler, [(middle, 1.0)], noise), repeats, device)
        plain = _timed(lambda: sampling_trajectory(model, scheduler, [(middle, 1.0)], noise), repeats, device)
    options = dict(n=spec.nm_pattern[0], m=spec.nm_pattern[1]) if spec.granularity_name == "N:M" else {}
    sparsity = 0.5 if spec.sparsity is None else float(spec.sparsity)
    shapes: dict = {}
    for module in layers.values():
        shapes.setdefault((type(module), tuple(module.weight.shape)), [module, 0])[1] += 1
    solve = 0.0
    for module, count in shapes.values():
        columns = weight_matrix(module).shape[1]
        hessian = torch.eye(columns, dtype=torch.float64, device=device) + 0.01  # positive definite
        layer = copy.deepcopy(module)
        solve += count * _timed(lambda: prune_layer(layer, hessian, sparsity, **options), 0, device)
    rates = dict(hooked_step=hooked, forward=plain, solve=solve, layers=len(layers))
    _RATE_CACHE[key] = rates
    return rates


def _obs_estimate(pipeline, spec: PruneSpec) -> dict:
    """obs: steps x (hooked step + the later groups' partial forwards) + every layer's solve."""
    from .criteria.obs import resolve_timestep_weights

    params = CRITERIA[spec.criterion].check_params(dict(spec.criterion_params))
    images = int(spec.calibration_batches) * int(spec.calibration_batch_size)
    steps = len(resolve_timestep_weights(spec.schedule, dict(spec.schedule_params),
                                         int(pipeline.scheduler.config.num_train_timesteps)))
    groups = 1 if spec.granularity_name == "channel" else int(params.get("num_groups", 4))
    # group g (2..G) re-runs the recorded steps up to its last layer: about g / G of a forward, the last one all
    reruns = sum(g / groups for g in range(2, groups)) + (1 if groups > 1 else 0)
    rates = _obs_rates(pipeline, spec, images)
    calibration = steps * (rates["hooked_step"] + reruns * rates["forward"])
    return dict(kind="obs", images=images, timesteps=steps, layers=rates["layers"], groups=groups,
                seconds_per_step=rates["hooked_step"], calibration_seconds=calibration,
                solve_seconds=rates["solve"], seconds=calibration + rates["solve"],
                upper_bound=spec.granularity_name not in ("unstructured", "N:M"))


def _gradflow_estimate(pipeline, spec: PruneSpec, repeats: int = 1) -> dict:
    """gradflow: iterations x weighted timesteps x batches passes of loss, g and H g, one measured."""
    from .criteria.obs import resolve_timestep_weights
    from .gradflow import gradient_flow_importance

    params = CRITERIA[spec.criterion].check_params(dict(spec.criterion_params))
    plan = resolve_timestep_weights(spec.schedule, dict(spec.schedule_params),
                                    int(pipeline.scheduler.config.num_train_timesteps))
    timesteps = sum(1 for _, weight in plan if weight > 0)
    batch, batches = int(spec.calibration_batch_size), int(spec.calibration_batches)
    passes = int(params["iterations"]) * timesteps * batches
    key = ("gradflow", id(adapter_of(pipeline).denoiser(pipeline)), batch, str(pick_device(spec.device)),
           torch.get_num_threads())
    if key not in _RATE_CACHE:
        model, adapter = _float32_denoiser(pipeline, spec)
        device = next(model.parameters()).device
        layers = prunable_layers(model, adapter, adapter.denoiser_name)
        names = {f"{name}.weight" for name in layers}
        base = {name: p.detach() for name, p in model.named_parameters() if name not in names}
        # content is irrelevant to the time: noise of the denoiser's input shape stands in for the data
        clean, noise = adapter.noise(model, batch, 0).to(device), adapter.noise(model, batch, 1).to(device)
        scheduler = copy.deepcopy(pipeline.scheduler)
        middle = int(scheduler.config.num_train_timesteps) // 2

        def one_pass():
            effective = {f"{name}.weight": module.weight.detach().clone().requires_grad_(True)
                         for name, module in layers.items()}
            gradient_flow_importance(model, base, effective, [clean], scheduler, [(middle, 1.0)], [noise])

        _RATE_CACHE[key] = _timed(one_pass, repeats, device)
    rate = _RATE_CACHE[key]
    return dict(kind="gradflow", iterations=int(params["iterations"]), timesteps=timesteps, images=batch * batches,
                batches=batches, passes=passes, seconds_per_pass=rate, seconds=rate * passes, upper_bound=False)


# criteria that calibrate themselves (Criterion.reconstruct) -> their estimate
RECONSTRUCTION_ESTIMATES = {"obs": _obs_estimate, "gradflow": _gradflow_estimate}


def recovery_step_seconds(pipeline, batch_size: int, distill: bool, repeats: int = 3) -> float:
    """Measured seconds per recovery (fine-tuning) step of ``pipeline``'s dense model: a real
    :func:`core.finetune.finetune` of ``1 + repeats`` steps whose progress callback stamps the end
    of every step; the median gap between consecutive stamps (the first step, which warms up the
    allocator and kernels, is not counted). Cached per model, batch size, distillation and threads."""
    from .finetune import finetune

    adapter = adapter_of(pipeline)
    denoiser = adapter.denoiser(pipeline)
    key = ("recovery", id(denoiser), type(denoiser).__name__, sum(p.numel() for p in denoiser.parameters()),
           int(batch_size), bool(distill), torch.get_num_threads())
    if key not in _RATE_CACHE:
        channels, height, width = adapter.image_shape(pipeline)
        # content is irrelevant to the time: uniform noise in [-1, 1] stands in for the images
        images = torch.rand(max(4, batch_size), channels, height, width, generator=torch.Generator().manual_seed(0)) * 2 - 1
        stamps = []
        finetune(pipeline, 1 + repeats, batch_size=int(batch_size), images=images, distill=bool(distill),
                 teacher=pipeline if distill else None, progress=lambda fraction, message: stamps.append(time.perf_counter()))
        gaps = sorted(later - earlier for earlier, later in zip(stamps, stamps[1:]))
        _RATE_CACHE[key] = gaps[len(gaps) // 2]
    return _RATE_CACHE[key]


def describe_estimate(estimate: dict) -> str:
    """One line for people: '~2 min (4 images x 235 timesteps = 940 passes at 21 ms each, measured)'."""
    if not estimate:
        return ""
    seconds = estimate["seconds"]
    when = f"{seconds:.0f} s" if seconds < 120 else (f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h")
    bound = "up to " if estimate["upper_bound"] else "about "
    if estimate.get("kind") == "obs":
        return (f"estimated calibration: {bound}{when} ({estimate['images']} trajectories x {estimate['timesteps']} "
                f"sampling steps with Hessian hooks at {1000 * estimate['seconds_per_step']:.0f} ms each, "
                f"{estimate['groups']} layer group(s), then {estimate['layers']} layer solves "
                f"{estimate['solve_seconds']:.1f} s; rates measured now)")
    if estimate.get("kind") == "gradflow":
        return (f"estimated calibration: {bound}{when} ({estimate['iterations']} iterations x "
                f"{estimate['timesteps']} timesteps x {estimate['batches']} batch(es) of "
                f"{estimate['images'] // estimate['batches']} images = {estimate['passes']:,} gradient-flow passes "
                f"(loss, gradient, Hessian-vector product) at {1000 * estimate['seconds_per_pass']:.0f} ms each, "
                "rate measured now)")
    return (f"estimated calibration: {bound}{when} ({estimate['images']} images x {estimate['timesteps']} timesteps = "
            f"{estimate['passes']:,} passes at {1000 * estimate['seconds_per_pass']:.1f} ms each, rate measured now"
            + ("; the threshold walk usually stops earlier)" if estimate["upper_bound"] else ")"))
