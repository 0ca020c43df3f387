"""Gradient-flow iterative pruning: progressive soft masks moved along the gradient flow of an
energy function, ending in a hard mask at the target sparsity.

The method ("iterative pruning based on gradient flow" for diffusion models, 2025) has **no
public code**; this is an implementation from its description (``docs/methods.md``). What is
implemented, exactly:

* **Model.** The prunable weights are used as ``w * m`` with a continuous mask ``m in [0, 1]``
  (initially 1); ``w`` stays fixed while pruning (recovery is :func:`core.finetune.finetune`).
* **Loss.** The denoising loss ``L(m) = sum_t a_t MSE(eps_theta(x_t, t; w * m), eps) / sum_t a_t``
  on a fixed calibration batch, fixed noise and the timesteps / weights ``a_t`` of a registered
  schedule (default ``uniform`` with 4 timesteps).
* **Criterion (gradient-norm preserving; Lubana & Dick, ICLR 2021, "A gradient flow framework
  for analyzing network pruning").** Removing weight ``q`` (``delta = -w_q``) changes the squared
  gradient norm by, to first order, ``Delta ||g||^2 = 2 delta^T H g = -2 w_q (H g)_q``. A weight's
  importance is the size of that change, ``I = |w * (H g)|``, low importance pruned first: the
  pruned model keeps the gradient flow of the dense one, so fine-tuning converges as it did.
  Why not GraSP's signed score ``S = -w * (H g)`` (Wang et al., ICLR 2020, made for networks at
  initialisation)? Pruning the weights whose removal raises the gradient norm most removes, in
  a *trained* model, the weights whose removal raises the loss most: with the signed score the
  2:4 model of the default model scores KID 0.460, and 0.485 after 40 fine-tuning steps, in the
  quick suite (``python benchmarks/suite.py --mode quick``; 0.300 and 0.038 with the score below,
  BENCHMARKS.md); Lubana & Dick show the magnitude
  ``|w * (H g)|`` is the gradient-norm-preserving measure. ``H g`` is a Hessian-vector product by
  double backward (attention runs on PyTorch's math SDPA kernel, whose double backward exists).
  ``g`` and ``H g`` are taken at the current masked weights ``w * m``, so the scores follow the
  progressively sparsified model.
* **Sparsity schedule.** Iteration ``k = 1..K`` targets ``s_k = s (1 - (1 - k/K)^3)`` (``cubic``,
  Zhu & Gupta 2017) or ``s k / K`` (``linear``).
* **Gradient flow of the energy** ``E(m) = L(m) + (rho / 2) ||m - h_k||^2``, where ``h_k`` is
  the hard mask keeping the ``1 - s_k`` most important weights of each layer (per layer, like
  the engine's unstructured granularity; for N:M the N most important of every M). One explicit
  Euler step per iteration, projected onto [0, 1]:
  ``m <- clip(m - eta (dL/dm + rho (m - h_k)), 0, 1)``, with ``dL/dm = w * dL/dw_eff``. The loss
  term lets the data resist (or hasten) the removal of a weight; the quadratic term pulls the
  mask continuously towards the scheduled sparsity, so no weight disappears in one shot.
* **End.** After ``K`` iterations (``s_K = s``) the hard mask keeps, per layer, the
  ``1 - s`` fraction of weights with the largest final soft mask (ties broken by the last
  importance; N:M: the N largest of every M), applied to the original weights. The importance
  uses the full weight, ``I = |w * (H g)|`` evaluated at ``w * m``, so a faded weight is ranked by
  what restoring it would do. The soft mask is also returned as a per-weight score so that any
  granularity can aggregate it.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

ProgressFn = Callable[[float, str], None]
SPARSITY_SCHEDULES = ("cubic", "linear")


@dataclass
class GradflowReport:
    masks: dict = field(default_factory=dict)  # layer -> bool hard mask (True = kept)
    scores: dict = field(default_factory=dict)  # layer -> final soft mask + importance tie-break
    importance: dict = field(default_factory=dict)  # layer -> last |w * (H g)|
    iterations: list = field(default_factory=list)  # per iteration: sparsity, loss, grad_norm, mask_mean
    timestep_weights: list = field(default_factory=list)
    wall_time_s: float = 0.0


def sparsity_at(iteration: int, iterations: int, sparsity: float, schedule: str = "cubic") -> float:
    """Target sparsity of iteration ``1..iterations`` (cubic: Zhu & Gupta 2017)."""
    if schedule not in SPARSITY_SCHEDULES:
        raise ValueError(f"sparsity_schedule must be one of {list(SPARSITY_SCHEDULES)}, got {schedule!r}")
    progress = min(1.0, iteration / iterations)
    if schedule == "cubic":
        return sparsity * (1.0 - (1.0 - progress) ** 3)
    return sparsity * progress


def hard_mask(importance: torch.Tensor, sparsity: float, n: int = 0, m: int = 0) -> torch.Tensor:
    """Keep the most important weights: exactly ``round(sparsity * numel)`` pruned, or for N:M the
    N most important of every M consecutive input columns (conv: ``(out, kh, kw, in)`` layout,
    as ``core/granularities/nm.py`` and ``core/criteria/obs/``). Ties broken by position (deterministic)."""
    if n or m:
        from .granularities import nm_keep_mask  # the one N:M layout helper

        return nm_keep_mask(importance, n, m)
    count = int(round(sparsity * importance.numel()))
    keep = torch.ones(importance.numel(), dtype=torch.bool, device=importance.device)
    if count:
        keep[torch.argsort(importance.flatten(), stable=True)[:count]] = False
    return keep.view_as(importance)


@contextlib.contextmanager
def _math_attention():
    """Double backward needs the math SDPA kernel (the fused CPU/CUDA kernels lack it)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - old torch
        yield
        return
    with sdpa_kernel(SDPBackend.MATH):
        yield


def gradient_flow_importance(denoiser, parameters: dict, effective: dict, batches, noise_scheduler, timestep_weights,
                             noises) -> tuple[float, dict, dict]:
    """Loss, ``g = dL/dw_eff`` and ``H g`` at the effective weights (double backward).

    The loss is built by the criteria's calibration loop (``core.criteria.calibration_loop``:
    the family's denoising loss, one timestep per pass, zero-weight timesteps skipped) run on
    ``denoiser`` with its prunable weights replaced by ``effective``; the callback keeps each pass's
    graph, ``a_t / sum a * L_t / batches``, for the double backward.
    """
    from torch.func import functional_call

    from .criteria import CalibrationLoopSettings, calibration_loop, denoising_loss
    from .models import adapter_for_module

    adapter = adapter_for_module(denoiser)[0]  # the family's forward process, target and keyword call
    names = list(effective)
    total_weight = sum(weight for _, weight in timestep_weights if weight > 0)
    loss = 0.0

    def network(**inputs):
        return functional_call(denoiser, {**parameters, **effective}, (), inputs)

    def add(calibration_pass) -> None:
        nonlocal loss
        ((_, weight),) = calibration_pass.group
        loss = loss + (weight / total_weight) * calibration_pass.losses[0] / len(batches)

    with _math_attention():
        # One timestep per pass, summed in the order (batch, then timestep) with Python-float
        # weights, as gradflow always did: the scores equal the earlier loop's up to the order of
        # the batch mean (per-sample means, then their mean), under 1e-6. Larger groups would
        # change that order further and save no memory: every pass's graph is kept for H g.
        calibration_loop(network, noise_scheduler, batches, noises, timestep_weights, denoising_loss, add,
                         CalibrationLoopSettings(adapter=adapter, group_size=1, skip_unweighted=True))
    gradients = torch.autograd.grad(loss, [effective[n] for n in names], create_graph=True)
    # H g by double backward: d/dw (g . stop_grad(g)) = H g
    inner = sum((g * g.detach()).sum() for g in gradients)
    hessian_gradient = torch.autograd.grad(inner, [effective[n] for n in names])
    grads = {n: g.detach() for n, g in zip(names, gradients)}
    del gradients, inner  # the double-backward graph goes with them
    return float(loss.detach()), grads, {n: hg.detach() for n, hg in zip(names, hessian_gradient)}


@dataclass(frozen=True)
class GradflowSettings:
    """The gradient-flow method's hyper-parameters (see the module docstring), checked on construction."""

    sparsity: float = 0.5  # target fraction of each layer's weights removed
    n: int = 0  # N:M (N kept of every M input columns); 0 = unstructured
    m: int = 0
    iterations: int = 10  # gradient-flow steps K
    sparsity_schedule: str = "cubic"  # "cubic" or "linear" increase of sparsity over K
    step_size: float = 0.5  # eta of the explicit Euler step
    stiffness: float = 1.0  # rho: pull of the mask towards the scheduled hard mask
    schedule: str = "uniform"  # timesteps of the loss (a registered schedule)
    schedule_params: dict | None = None  # None with "uniform": 4 timesteps
    batch_size: int = 8  # calibration images per batch
    num_batches: int = 1
    seed: int = 0  # fixed noise of the calibration batches

    def __post_init__(self):
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 1:
            raise ValueError(f"iterations must be a positive integer, got {self.iterations!r}")
        if self.n or self.m:
            if not (isinstance(self.n, int) and isinstance(self.m, int) and 0 < self.n < self.m):
                raise ValueError(f"N:M pattern needs integers 0 < N < M, got {self.n}:{self.m}")
        if self.sparsity_schedule not in SPARSITY_SCHEDULES:
            raise ValueError(f"sparsity_schedule must be one of {list(SPARSITY_SCHEDULES)}, "
                             f"got {self.sparsity_schedule!r}")


def gradflow_prune(
    denoiser: nn.Module,
    noise_scheduler,
    images: torch.Tensor,
    settings: GradflowSettings = GradflowSettings(),
    *,
    layers: dict | None = None,  # name -> module (default: the engine's prunable layers)
    apply: bool = True,  # write the hard mask into the weights of ``denoiser`` (in place)
    keep_masks: bool = True,  # keep every layer's mask and scores in the report (False: scores computed per layer on access)
    progress: ProgressFn | None = None,
) -> GradflowReport:
    """Progressive soft pruning of ``denoiser`` along the gradient flow (see the module docstring)."""
    if not isinstance(settings, GradflowSettings):
        raise ValueError(f"settings must be a GradflowSettings, got {type(settings).__name__}")
    sparsity, n, m, iterations = settings.sparsity, settings.n, settings.m, settings.iterations
    schedule, schedule_params = settings.schedule, settings.schedule_params
    started = time.perf_counter()
    from .criteria import calibration_noises, prunable_layers

    if layers is None:
        layers = prunable_layers(denoiser)
    if n or m:
        for name, module in layers.items():
            if module.weight.shape[1] % m:
                raise ValueError(f"N:M {n}:{m}: layer {name!r} has {module.weight.shape[1]} input channels, not divisible by M={m}")
    from .criteria.obs.hessians import resolve_timestep_weights

    report = GradflowReport()
    num_train_timesteps = int(noise_scheduler.config.num_train_timesteps)
    params = {"num_timesteps": 4} if schedule == "uniform" and schedule_params is None else (schedule_params or {})
    report.timestep_weights = resolve_timestep_weights(schedule, params, num_train_timesteps)
    device = next(denoiser.parameters()).device
    generator = torch.Generator().manual_seed(int(settings.seed))
    order = torch.randperm(images.shape[0], generator=generator)[: settings.batch_size * settings.num_batches]
    dtype = next(denoiser.parameters()).dtype  # the model's own dtype (an fp16 model calibrates in fp16)
    batches = [b.to(device=device, dtype=dtype) for b in images[order].float().split(settings.batch_size)]
    noises = calibration_noises(batches, generator)

    parameter_names = {f"{name}.weight": name for name in layers}
    base = {name: p.detach() for name, p in denoiser.named_parameters() if name not in parameter_names}
    # the weights themselves (not copies): the flow substitutes w * m through functional_call and
    # leaves the modules' weights alone until ``apply`` writes the result
    weights = {name: module.weight.detach() for name, module in layers.items()}
    soft = {name: torch.ones_like(w) for name, w in weights.items()}
    was_training = denoiser.training
    denoiser.eval()
    target = {}
    importance = {}
    try:
        for iteration in range(1, iterations + 1):
            level = sparsity_at(iteration, iterations, sparsity, settings.sparsity_schedule)
            effective = {f"{name}.weight": (weights[name] * soft[name]).requires_grad_(True) for name in layers}
            importance = {}  # the previous iteration's, no longer needed
            loss, grads, hessian_gradients = gradient_flow_importance(
                denoiser, base, effective, batches, noise_scheduler, report.timestep_weights, noises)
            del effective
            grad_norm = 0.0
            with torch.no_grad():
                # one layer at a time, each layer's g and H g freed once used
                for name in layers:
                    # I = |w * (H g)| with the full weight w: the size of the first-order change of ||g||^2 from
                    # removing (or, for an already faded weight, restoring) it, at the current masked model.
                    importance[name] = (weights[name] * hessian_gradients.pop(f"{name}.weight")).abs()
                    target = hard_mask(importance[name], level)
                    gradient = grads.pop(f"{name}.weight")
                    grad_norm += float(gradient.pow(2).sum())
                    d_loss_d_mask = weights[name] * gradient  # chain rule through w_eff = w * m
                    step = d_loss_d_mask + settings.stiffness * (soft[name] - target.to(soft[name].dtype))
                    soft[name] = (soft[name] - settings.step_size * step).clamp_(0.0, 1.0)
                    del gradient, d_loss_d_mask, step, target
            report.iterations.append(dict(iteration=iteration, sparsity=level, loss=loss, grad_norm=grad_norm ** 0.5,
                                          mask_mean=float(sum(s.sum() for s in soft.values()) /
                                                          sum(s.numel() for s in soft.values()))))
            if progress is not None:
                progress(iteration / iterations, f"gradient flow {iteration}/{iterations}: sparsity {level:.3f}, loss {loss:.4f}")
    finally:
        denoiser.train(was_training)
    def final_scores(name, module=None):
        # The hard mask is read off the soft mask the flow produced (ties broken by the last
        # importance); N:M applies its pattern only here, the intermediate targets are per layer.
        ranks = torch.empty(importance[name].numel(), device=importance[name].device)
        ranks[torch.argsort(importance[name].flatten(), stable=True)] = torch.arange(
            importance[name].numel(), dtype=ranks.dtype, device=ranks.device)
        key = soft[name] + 1e-3 * (ranks / max(1, importance[name].numel())).view_as(importance[name])
        final = hard_mask(key, sparsity, n, m)
        return final, final.to(key.dtype) * 2.0 + key  # kept > pruned; soft mask order within

    report.importance = importance
    if keep_masks or apply:
        for name in layers:
            report.masks[name], report.scores[name] = final_scores(name)
    else:  # one layer at a time, when a granularity asks (the engine's path)
        from .criteria.scores import LayerScores

        report.scores = LayerScores(layers, lambda name, module: final_scores(name)[1])
    if apply:
        with torch.no_grad():
            for name, module in layers.items():
                module.weight.copy_(weights[name] * report.masks[name].to(weights[name].dtype))
    report.wall_time_s = time.perf_counter() - started
    return report


# ----------------------------------------------------------------------------------------------
# Engine adapter (the criteria registry)
# ----------------------------------------------------------------------------------------------
def _check(name, kind, low=None, high=None, choices=None):
    def check(value):
        if choices is not None:
            if value not in choices:
                raise ValueError(f"criterion_params.{name} of criterion 'gradflow' must be one of {list(choices)}, got {value!r}")
            return
        valid = not isinstance(value, bool) and isinstance(value, kind)
        if valid and low is not None and value < low:
            valid = False
        if valid and high is not None and value > high:
            valid = False
        if not valid:
            raise ValueError(f"criterion_params.{name} of criterion 'gradflow' must be a {kind.__name__ if isinstance(kind, type) else 'number'}"
                             f" in [{low}, {high if high is not None else 'inf'}], got {value!r}")
    return check


def engine_reconstruct(denoiser: nn.Module, pipeline, spec, progress: ProgressFn | None = None):
    """Run the gradient flow on the engine's private ``denoiser``; return ``(scores, stats, source)``.

    Calibration images come from the engine (``spec.calibration_data``); the per-weight scores
    (final hard mask > soft mask > importance) are cut by whatever granularity the spec names.
    For ``channel``/``head`` the flow runs unstructured at the target sparsity (0.5 when only a
    channel ratio is given) and the granularity aggregates the scores.
    """
    from .criteria import CalibrationStats, copy_scheduler, prunable_layers
    from .calibration import calibration_images

    params = dict(spec.criterion_params)
    images, source = calibration_images(pipeline, denoiser, spec, progress)
    n, m = spec.nm_pattern if spec.granularity_name == "N:M" else (0, 0)
    sparsity = (1 - n / m) if m else (spec.sparsity if spec.sparsity is not None else 0.5)
    settings = GradflowSettings(
        sparsity=float(sparsity), n=n, m=m, iterations=params["iterations"],
        sparsity_schedule=params["sparsity_schedule"], step_size=float(params["step_size"]),
        stiffness=float(params["stiffness"]), schedule=spec.schedule, schedule_params=dict(spec.schedule_params),
        batch_size=int(spec.calibration_batch_size), num_batches=int(spec.calibration_batches), seed=int(spec.seed),
    )
    report = gradflow_prune(denoiser, copy_scheduler(pipeline.scheduler), images, settings,
                            layers=prunable_layers(denoiser), apply=False, keep_masks=False, progress=progress)
    stats = CalibrationStats(timestep_weights=list(report.timestep_weights), num_images=int(images.shape[0]))
    return report.scores, stats, source


def _scores_by_reconstruction(layers, stats, params, seed):
    raise ValueError("criterion 'gradflow' scores through Criterion.reconstruct")


def register() -> None:
    """Add ``gradflow`` to the engine's ``CRITERIA`` (called where the registry is assembled)."""
    from .criteria import Criterion, register_criterion

    register_criterion(Criterion(
        "gradflow", _scores_by_reconstruction, reconstruct=engine_reconstruct,
        default_schedule="uniform", default_schedule_params={"num_timesteps": 4},
        default_calibration_batches=1, default_calibration_batch_size=8,
        defaults={"iterations": 5, "sparsity_schedule": "cubic", "step_size": 0.5, "stiffness": 1.0},
        checks={"iterations": _check("iterations", int, low=1),
                "sparsity_schedule": _check("sparsity_schedule", None, choices=SPARSITY_SCHEDULES),
                "step_size": _check("step_size", (int, float), low=0.0),
                "stiffness": _check("stiffness", (int, float), low=0.0)},
        description="gradient-flow iterative pruning: soft masks, gradient-norm-preserving score |w * (H g)|, cubic sparsity schedule",
    ))


register()
