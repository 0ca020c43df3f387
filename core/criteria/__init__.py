"""Pruning criteria: each one turns a network (and, for the gradient criteria, calibration
statistics) into one score per prunable weight; low score = pruned first.

Layout: this ``__init__`` holds what the gradient criteria share (the calibration losses, the one
calibration loop ``calibration_loop`` -- also run by ``core/gradflow.py`` and timed by
``core/cost.py`` -- and the gradient criteria's ``calibrate`` on top of it); ``common.py`` what
every criterion and the engine share (the prunable layers, ``CalibrationStats``), re-exported here;
``base.py`` the ``Criterion`` record; one file per method registers it in ``core.registry.CRITERIA``
(``obs/``, OBS-Diff, is a package: its Hessians, its per-layer solver, its structured compensation).

A granularity (``core/granularities/``) then aggregates the per-weight scores into the unit it
prunes (an N:M group, an output channel with its dependency group, an attention head), so that
criteria, schedules and granularities stay orthogonal.

Definitions (references and checks: ``docs/methods.md``):

* ``random``    -- uniform random scores from a generator seeded by ``spec.seed``.
* ``magnitude`` -- ``|w|^p``; summed over a channel's group this is Torch-Pruning's
  ``GroupMagnitudeImportance`` without normaliser; default ``p=1`` (Diff-Pruning's baseline).
* ``taylor``    -- Diff-Pruning (Fang et al., NeurIPS 2023): denoising loss
  ``MSE(eps_theta(x_t, t), eps)``, gradients accumulated over the ``threshold`` schedule with no
  zero_grad between timesteps (nor between batches), score ``|w * g|`` (the first-order Taylor
  term; Torch-Pruning ``TaylorImportance(multivariable=False)`` summed over the group).
* ``nici``      -- NiCI-Pruning (IEEE TIP 2025), following its public code:
  ``L_t = MSE(eps_theta(x0, t), x0)`` (clean image in, compared with the clean image), the
  ``interval`` schedule, zero_grad once per batch, Taylor ``|w * g|`` per batch, summed over batches.
* ``l1``        -- Towards Tiny Diffusion: ``I(w) = alpha |w| + beta |dL/dw|`` with each term
  normalised by its per-layer mean (the paper gives no values: defaults alpha = beta = 1); the
  gradient is that of the denoising loss over the criterion's schedule (default ``uniform``).
* ``obs``       -- OBS-Diff: timestep-aware Hessians of every layer's inputs and SparseGPT's
  (Frantar & Alistarh, ICML 2023) per-layer OBS prune with weight compensation (``obs/``).

Prunable parameters (the same set for every criterion and granularity): the ``weight`` of every
``nn.Conv2d`` and ``nn.Linear`` in the UNet except ``conv_in`` and ``conv_out`` (the image-facing
layers; Diff-Pruning leaves ``conv_out`` alone and the input layer of a 1- or 3-channel image
model has nothing to spare). Time-embedding and attention projections are included. Biases
and normalisation parameters are not prunable.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
from torch import nn

from ..schedules import SCHEDULES
from ..registry import CRITERIA  # noqa: F401 - filled by the method files
from .common import (EXCLUDED_LAYERS, CalibrationStats, _rules, copy_scheduler,  # noqa: F401 - shared names
                     protected_layer_names, prunable_layers, prunable_parameter_count)

# Calibration batches this many samples (timesteps x images) into one forward/backward pass: the
# same accumulated gradient as one pass per timestep, 3-5x faster on a CPU for small batches.
CALIBRATION_CHUNK_SAMPLES = 64


# ----------------------------------------------------------------------------------------------
# Calibration losses: per-sample values (shape N) of one forward pass through the adapter
# ----------------------------------------------------------------------------------------------
def denoising_loss(adapter, denoiser, noise_scheduler, clean, noise, timesteps, conditioning=None) -> torch.Tensor:
    """Standard diffusion loss ``MSE(denoiser(x_t, t), target)`` with the target of the scheduler's
    ``prediction_type`` (epsilon for the DDPMs of Diff-Pruning and Towards Tiny Diffusion)."""
    return adapter.denoising_loss(denoiser, noise_scheduler, clean, noise, timesteps, conditioning)


def clean_image_loss(adapter, denoiser, noise_scheduler, clean, noise, timesteps, conditioning=None) -> torch.Tensor:
    """NiCI-Pruning's loss ``MSE(eps_theta(x0, t), x0)``: the clean image goes in without noise and
    the prediction is compared with it (public code: ``mse_loss(model(clean, t).sample, clean)``)."""
    prediction = adapter.predict(denoiser, clean, adapter.model_timesteps(noise_scheduler, timesteps), conditioning)
    return (adapter.trim_prediction(prediction, clean) - clean).pow(2).flatten(1).mean(1)


def reconstruction_loss(adapter, autoencoder, noise_scheduler, clean, noise, timesteps, conditioning=None) -> torch.Tensor:
    """An autoencoder's own loss ``MSE(decode(encode(x)), x)`` on pixel images (the timestep is
    irrelevant: every scheduled timestep sees the same loss, so the schedule only scales it)."""
    return adapter.autoencoder_loss(autoencoder, clean)


LOSSES = {"denoising": denoising_loss, "clean-image": clean_image_loss, "reconstruction": reconstruction_loss}


# ----------------------------------------------------------------------------------------------
# The one calibration loop (timesteps x batches, chunked, with progress), shared by the gradient
# criteria (``calibrate``), the cost estimate (``core/cost.py``) and ``core/gradflow.py``
# ----------------------------------------------------------------------------------------------
@dataclass
class CalibrationPass:
    """One forward pass of :func:`calibration_loop`: a group of timesteps on one batch."""

    batch_index: int
    group: list  # the plan's (t, weight) entries of this pass, as given
    timesteps: list[int]
    weights: torch.Tensor  # the schedule's weight of each timestep (the batch's dtype and device)
    losses: torch.Tensor  # per timestep: the loss averaged over the batch (with its graph when weighted)
    weighted: bool  # some weight > 0: the pass ran with autograd on, else under no_grad


def timesteps_per_pass(batch_size: int) -> int:
    """Timesteps per forward/backward pass: ``CALIBRATION_CHUNK_SAMPLES`` samples (1 for large batches)."""
    return max(1, CALIBRATION_CHUNK_SAMPLES // max(1, int(batch_size)))


def calibration_noises(batches: list[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
    """One fixed noise tensor per batch (Diff-Pruning), drawn on the CPU from ``generator`` so it
    is the same on every device."""
    return [torch.randn(b.shape, generator=generator).to(b.device, b.dtype) for b in batches]


def per_timestep_losses(loss_fn, denoiser, noise_scheduler, clean, noise, timesteps: list[int], *,
                        adapter=None, conditioning: dict | None = None) -> torch.Tensor:
    """``[loss_fn(..., t) for t in timesteps]`` computed in one batched forward pass.

    The batch and its conditioning (``ModelAdapter.repeat_conditioning``: text embeddings, masks,
    class labels... in the same order) are repeated once per timestep; every sample is independent
    in these networks (GroupNorm, attention within a sample), so each entry equals the
    single-timestep loss (up to float summation order) while the CPU works on one large batch
    instead of many small ones.
    """
    adapter, _ = _rules(denoiser, adapter, "any")
    count, batch = len(timesteps), clean.shape[0]
    clean_all = clean.repeat(count, *([1] * (clean.dim() - 1))) if count > 1 else clean
    noise_all = noise.repeat(count, *([1] * (noise.dim() - 1))) if count > 1 else noise
    conditioning_all = adapter.repeat_conditioning(conditioning, count, batch) if count > 1 else conditioning
    t_all = torch.tensor(timesteps, dtype=torch.long, device=clean.device).repeat_interleave(batch)
    values = loss_fn(adapter, denoiser, noise_scheduler, clean_all, noise_all, t_all, conditioning_all)
    return values.view(count, batch).mean(1)


def _chunks(items: list, size: int) -> list[list]:
    return [items[index : index + size] for index in range(0, len(items), size)]


@dataclass(frozen=True)
class CalibrationLoopSettings:
    """How :func:`calibration_loop` walks the passes: the model family, the grouping of timesteps,
    the batch numbering and the callbacks around the passes."""

    adapter: object  # the model family: its add_noise / model_timesteps / predict / loss
    group_size: int = 1  # timesteps per forward pass (see ``timesteps_per_pass``)
    skip_unweighted: bool = False  # skip groups whose weights are all 0 instead of a no_grad forward
    on_batch_start: Callable[[int], None] | None = None
    on_batch_end: Callable[[int], None] | None = None
    progress: Callable[[float, str], None] | None = None
    progress_span: tuple[float, float] = (0.0, 1.0)
    batch_offset: int = 0  # the index of ``batches[0]`` in the caller's numbering (passes, callbacks)

    def __post_init__(self):
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size < 1:
            raise ValueError(f"group_size must be a positive integer, got {self.group_size!r}")


def calibration_loop(
    denoiser,
    noise_scheduler,
    batches: list[torch.Tensor],
    noises: list[torch.Tensor],
    plan: list,
    loss_fn: Callable,
    on_pass: Callable[[CalibrationPass], None],
    settings: CalibrationLoopSettings,
    *,
    conditionings: list | None = None,  # per batch: the denoiser's conditioning (class labels)
) -> None:
    """Run ``loss_fn`` over the schedule ``plan`` (``[(t, weight)]``) on every batch and hand each
    pass to ``on_pass``: what a pass is *for* (backward and statistics, a Hessian-vector product,
    a timing) is the caller's callback, the iteration is this one loop.

    Batches outer, timesteps inner, ``settings.group_size`` timesteps batched into one forward pass
    (:func:`per_timestep_losses`); ``noises[b]`` is batch ``b``'s fixed noise. A group with some
    positive weight runs with autograd on (the callback backpropagates ``weights * losses``);
    a group of zero weights runs under ``no_grad`` (its losses are still reported) unless
    ``settings.skip_unweighted``. ``denoiser`` is a module or any callable with its keyword
    signature (``torch.func.functional_call`` over substituted weights).
    """
    groups = _chunks(list(plan), settings.group_size)
    conditions = list(conditionings) if conditionings is not None else [None] * len(batches)
    start, end = settings.progress_span
    progress, batch_offset = settings.progress, settings.batch_offset
    for position, (clean, noise, condition) in enumerate(zip(batches, noises, conditions)):
        batch_index = batch_offset + position
        if settings.on_batch_start is not None:
            settings.on_batch_start(batch_index)
        for group_index, group in enumerate(groups):
            timesteps = [t for t, _ in group]
            weights = torch.tensor([w for _, w in group], dtype=clean.dtype, device=clean.device)
            weighted = bool((weights > 0).any())
            if settings.skip_unweighted and not weighted:
                continue
            if progress is not None:
                fraction = (position + group_index / len(groups)) / len(batches)
                label = f"t={timesteps[0]}" if len(group) == 1 else f"t={timesteps[0]}..{timesteps[-1]}"
                progress(start + (end - start) * min(1.0, fraction),
                         f"calibrating {label} (batch {batch_index + 1}/{batch_offset + len(batches)})")
            with contextlib.nullcontext() if weighted else torch.no_grad():
                losses = per_timestep_losses(loss_fn, denoiser, noise_scheduler, clean, noise, timesteps,
                                             adapter=settings.adapter, conditioning=condition)
            on_pass(CalibrationPass(batch_index, list(group), timesteps, weights, losses, weighted))
        if settings.on_batch_end is not None:
            settings.on_batch_end(batch_index)


@contextlib.contextmanager
def gradients_of(model: nn.Module, layers: dict[str, nn.Module]):
    """Autograd on for the prunable weights only, cleared; on exit (even on error) every
    parameter's ``requires_grad`` is restored and its gradient dropped (Torch-Pruning traces the
    graph through autograd afterwards)."""
    flags = {parameter: parameter.requires_grad for parameter in model.parameters()}
    try:
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        for module in layers.values():
            module.weight.requires_grad_(True)
            module.weight.grad = None
        yield
    finally:
        for parameter, flag in flags.items():
            parameter.grad = None
            parameter.requires_grad_(flag)


class GradientCollector:
    """The gradient criteria's work per pass of :func:`calibration_loop` (wanda's ``add_batch``):
    backward of the schedule-weighted loss, the layer x timestep table of first-order saliency
    and, per batch, the Taylor term ``|w * g|``.

    Memory: the accumulated gradient lives in each weight's ``.grad`` (the model's dtype) and
    nothing else the size of the model is kept, except nici's running sum over batches. A pass's
    own gradient increment is read by a tensor hook during its backward (the gradient of that
    backward alone, before it is added to ``.grad``), so no copy of the previous gradient is
    needed to take differences. ``attach``/``detach`` add and remove the hooks (``collecting``).
    """

    def __init__(
        self,
        layers: dict[str, nn.Module],  # name -> module whose ``weight`` gathers gradients
        stats: CalibrationStats,  # filled in place
        num_batches: int,
        zero_grad_per_batch: bool,  # nici: one gradient per batch; taylor/l1: accumulated over all
        first_batch_losses_known: bool = False,  # the threshold walk already recorded batch 0's losses
    ):
        self.layers, self.stats, self.num_batches = layers, stats, num_batches
        self.zero_grad_per_batch, self.first_batch_losses_known = zero_grad_per_batch, first_batch_losses_known
        self.column: int | None = None  # the timestep-table column of the backward in progress
        self._handles: list = []
        for name in layers:
            stats.timestep_contributions.setdefault(name, {})

    def _hook(self, name: str, weight: torch.Tensor):
        table = self.stats.timestep_contributions[name]

        def hook(increment: torch.Tensor) -> None:
            # this backward's own gradient: the group's first-order saliency sum |w * g_t|
            if self.column is not None:
                term = (weight.detach().float() * increment.float()).abs().sum()
                table[self.column] = table.get(self.column, 0.0) + float(term)
        return hook

    def attach(self) -> None:
        for name, module in self.layers.items():
            self._handles.append(module.weight.register_hook(self._hook(name, module.weight)))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def start_batch(self, batch_index: int) -> None:
        if self.zero_grad_per_batch:
            for module in self.layers.values():
                module.weight.grad = None

    def add(self, calibration_pass: CalibrationPass) -> None:
        if calibration_pass.weighted:
            # One column per group of timesteps, keyed by the group's first t.
            self.column = calibration_pass.timesteps[0]
            for name in self.layers:
                table = self.stats.timestep_contributions[name]
                table[self.column] = table.get(self.column, 0.0)
            try:
                (calibration_pass.weights * calibration_pass.losses).sum().backward()
            finally:
                self.column = None
        if not (self.first_batch_losses_known and calibration_pass.batch_index == 0):
            for t, value in zip(calibration_pass.timesteps, calibration_pass.losses.detach().tolist()):
                self.stats.losses.setdefault(t, []).append(value)

    def end_batch(self, batch_index: int) -> None:
        # nici: |w * g_b| summed over batches; each batch's gradient is freed as soon as it is added.
        # With one batch the sum is that batch's term: the gradient is kept and the criterion
        # computes |w * g| one layer at a time (no float32 sum the size of the model).
        if not self.zero_grad_per_batch or self.num_batches == 1:
            return
        with torch.no_grad():
            for name, module in self.layers.items():
                grad = module.weight.grad if module.weight.grad is not None else torch.zeros_like(module.weight)
                term = (module.weight.float() * grad.float()).abs() if module.weight.dtype != torch.float32 \
                    else (module.weight * grad).abs()
                if name in self.stats.taylor_per_batch_sum:
                    self.stats.taylor_per_batch_sum[name] += term
                else:
                    self.stats.taylor_per_batch_sum[name] = term
                module.weight.grad = None

    def gradients(self) -> dict[str, torch.Tensor]:
        """The accumulated gradients, handed over (not copied): taylor and l1 score from them.
        Empty for per-batch gradients over several batches (nici), whose statistics are the running sum."""
        if self.zero_grad_per_batch and self.num_batches > 1:
            return {}
        return {name: module.weight.grad.detach() if module.weight.grad is not None
                else torch.zeros_like(module.weight) for name, module in self.layers.items()}


@contextlib.contextmanager
def collecting(collector: GradientCollector):
    """The collector's gradient hooks, removed on exit even when calibration raises."""
    collector.attach()
    try:
        yield collector
    finally:
        collector.detach()


@dataclass(frozen=True)
class CalibrationSettings:
    """What one gradient calibration computes (:func:`calibrate`): the loss, the timestep schedule,
    whether gradients restart per batch, and the seed of the fixed noise. The engine fills it from
    its ``PruneSpec`` and the criterion (an autoencoder: its reconstruction loss at one timestep)."""

    loss: str  # a key of ``LOSSES``
    schedule: str  # a registered schedule (``core.schedules.SCHEDULES``)
    schedule_params: dict = field(default_factory=dict)
    zero_grad_per_batch: bool = False  # nici: one gradient per batch; taylor/l1: accumulated over all
    seed: int = 0  # the calibration noise is drawn from ``seed + 12345``

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {self.loss!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {self.schedule!r}")
        if not isinstance(self.schedule_params, Mapping):
            raise ValueError(f"schedule_params must be a dict, got {type(self.schedule_params).__name__}")


def calibrate(
    model: nn.Module,
    noise_scheduler,
    batches: list[torch.Tensor],
    settings: CalibrationSettings,
    progress: Callable[[float, str], None] | None = None,
    progress_span: tuple[float, float] = (0.0, 1.0),
    *,
    adapter=None,  # the model family (default: the one that owns ``model``)
    component: str | None = None,  # the pipeline attribute of ``model`` ("unet", "vqvae")
    conditionings: list | None = None,  # per batch: the denoiser's conditioning (class labels)
) -> CalibrationStats:
    """Accumulate weighted gradients of ``settings.loss`` over the schedule's timesteps.

    The gradient criteria's calibration: :func:`calibration_loop` with a :class:`GradientCollector`.
    Each timestep's loss is multiplied by its schedule weight before backward. Timesteps are
    batched ``CALIBRATION_CHUNK_SAMPLES // batch size`` at a time into one backward pass (the
    accumulated gradient is the same sum); per group the gradient increment ``g`` is read off to
    fill the layer x timestep table with ``sum |w * g|`` -- the group's own first-order saliency,
    keyed by its first t (one column per timestep when the batch is large). The ``threshold``
    walk decides where to stop from the first batch's losses, whose passes are that batch's
    gradient passes too.
    One fixed noise tensor per batch (Diff-Pruning), drawn on the CPU from ``settings.seed``.
    ``model`` is the engine's private copy: its gradients and ``requires_grad`` flags are changed.
    """
    adapter, component = _rules(model, adapter, component)
    layers = prunable_layers(model, adapter, component)
    with gradients_of(model, layers):
        return _calibrate(model, noise_scheduler, batches, layers, settings, progress, progress_span, adapter,
                          conditionings)


def _calibrate(model, noise_scheduler, batches, layers, settings: CalibrationSettings, progress, progress_span,
               adapter, conditionings) -> CalibrationStats:
    stats = CalibrationStats(num_images=sum(int(b.shape[0]) for b in batches))
    num_train_timesteps = int(noise_scheduler.config.num_train_timesteps)
    loss_fn = LOSSES[settings.loss]
    schedule, schedule_params = SCHEDULES[settings.schedule], settings.schedule_params
    noises = calibration_noises(batches, torch.Generator().manual_seed(int(settings.seed) + 12345))
    conditions = list(conditionings) if conditionings is not None else [None] * len(batches)
    start, end = progress_span
    chunk = timesteps_per_pass(batches[0].shape[0])

    def report(fraction: float, message: str) -> None:
        if progress is not None:
            progress(start + (end - start) * min(1.0, fraction), message)

    collector = GradientCollector(layers, stats, len(batches), settings.zero_grad_per_batch,
                                  first_batch_losses_known=schedule.adaptive)
    with collecting(collector):
        first_batch = 0
        if schedule.adaptive:
            # Threshold walk on the first batch, ``chunk`` timesteps per pass, decides the plan. Each
            # pass runs with autograd on and becomes batch 0's gradient pass once the walk has gone past
            # it (every visited t has weight 1): the walk costs no forward pass of its own. The pass in
            # which the walk stops is backpropagated with weight 0 for the timesteps after the stop.
            limit = schedule_params.get("max_timesteps") or schedule.defaults.get("max_timesteps") or num_train_timesteps
            lookahead: dict[int, float] = {}
            pending: list = []  # the walk's current pass: (timesteps, losses with their graph)

            def settle(visited: int) -> None:
                if not pending:
                    return
                ahead, losses = pending.pop()
                weights = torch.tensor([1.0] * visited + [0.0] * (len(ahead) - visited), dtype=losses.dtype,
                                       device=losses.device)
                collector.add(CalibrationPass(0, [(t, 1.0) for t in ahead[:visited]], ahead, weights, losses, True))

            def loss_at(t: int) -> float:
                if t not in lookahead:
                    settle(len(pending[0][0]) if pending else 0)  # the walk went past the whole previous pass
                    ahead = list(range(t, min(t + chunk, num_train_timesteps)))
                    report(t / limit / len(batches), f"calibrating t={t}..{ahead[-1]} (batch 1/{len(batches)}, until the threshold stops)")
                    losses = per_timestep_losses(loss_fn, model, noise_scheduler, batches[0], noises[0], ahead,
                                                 adapter=adapter, conditioning=conditions[0])
                    pending.append((ahead, losses))
                    lookahead.update(zip(ahead, losses.detach().tolist()))
                stats.losses.setdefault(t, []).append(lookahead[t])
                return lookahead[t]

            collector.start_batch(0)
            plan = schedule.resolve(num_train_timesteps, schedule_params, loss_at=loss_at)
            if pending:
                settle(plan[-1][0] - pending[0][0][0] + 1)
            collector.end_batch(0)
            stats.stopped_at = plan[-1][0]
            first_batch = 1
        else:
            plan = schedule.resolve(num_train_timesteps, schedule_params)
        loop = CalibrationLoopSettings(
            adapter=adapter, group_size=chunk, on_batch_start=collector.start_batch, on_batch_end=collector.end_batch,
            progress=report, progress_span=(first_batch / len(batches), 1.0), batch_offset=first_batch,
        )
        calibration_loop(model, noise_scheduler, batches[first_batch:], noises[first_batch:], plan, loss_fn,
                         collector.add, loop, conditionings=conditions[first_batch:])
        stats.timestep_weights = list(plan)
        stats.timesteps_per_group = chunk
        stats.gradients = collector.gradients()
        return stats


# ----------------------------------------------------------------------------------------------
# The criteria: one file (or package) per method, each registering itself (random.py,
# magnitude.py, taylor.py, nici.py, l1.py, obs/; gradflow in core/gradflow.py)
# ----------------------------------------------------------------------------------------------
from .base import ALL_GRANULARITIES, Criterion, register_criterion  # noqa: E402,F401
from . import random, magnitude, taylor, nici, l1, obs  # noqa: E402,F401,I001 - registration order = menu order


def compute_scores(criterion: Criterion, model: nn.Module, stats: CalibrationStats | None, params: dict, seed: int,
                   adapter=None, component: str | None = None):
    layers = prunable_layers(model, adapter, component)
    with torch.no_grad():
        return criterion.score(layers, stats, criterion.check_params(params), seed)
