"""OBS-Diff's timestep-aware Hessians: what every layer's inputs look like along the dense model's
own sampling trajectories, and the damped inverse the OBS updates need.

For every hooked layer, forward hooks collect ``H = (2 / sum_t w_t n_t) * sum_t w_t X_t X_t^T``
while the model samples (OBS-Diff, 2025): ``X_t`` the layer's inputs at sampling step ``t`` with
tokens / pixels as columns, the steps walked by the family adapter's ``sampler_step`` (DDIM, or
flow Euler for SD3), ``n_t`` their number and ``w_t`` a timestep schedule's weight (OBS-Diff's
``log-decrease``: 1.2 at the noisiest step down to 0.8 at the last). The inverse is SparseGPT's
(Frantar & Alistarh, ICML 2023, ``fasterprune``): damping ``lambda = percdamp * mean(diag H)``
and the upper Cholesky factor of ``(H + lambda I)^-1``; a singular, indefinite or non-finite ``H``
is damped 10x more and retried, then its diagonal alone is used.

Layout: a layer's weight is handled as a matrix ``out x columns``. For ``nn.Linear`` the columns
are the input features; for ``nn.Conv2d`` the inputs are unfolded (``F.unfold``) and the weight
``(out, in, kh, kw)`` is permuted to ``(out, kh, kw, in)`` and flattened, so **column
``(r * kw + s) * in + c`` is input channel ``c`` at kernel position ``(r, s)``**: N:M groups of M
consecutive columns are M consecutive input channels at one kernel position (NVIDIA's
sparse-tensor-core layout for convolutions, ``K x RSC``, and the engine's ``N:M`` granularity).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

ProgressFn = Callable[[float, str], None]

DEFAULT_PERCDAMP = 0.01  # SparseGPT / OBS-Diff: lambda = 0.01 * mean(diag H)
DEFAULT_MAX_RETRIES = 8  # damping x10 per retry: 0.01 -> 1e6 * mean(diag H)


# ----------------------------------------------------------------------------------------------
# Weight <-> matrix layout
# ----------------------------------------------------------------------------------------------
def supported_layer(module: nn.Module) -> bool:
    """``nn.Linear`` and ungrouped, zero-padded ``nn.Conv2d`` (what the unfold hook handles)."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros"


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The weight as ``out x columns`` in the column order of :func:`layer_inputs` (see module doc)."""
    weight = module.weight.detach()
    if isinstance(module, nn.Conv2d):
        return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)
    return weight


def matrix_to_weight(matrix: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """Inverse of :func:`weight_matrix`."""
    if isinstance(module, nn.Conv2d):
        out_channels, in_channels, kh, kw = module.weight.shape
        return matrix.reshape(out_channels, kh, kw, in_channels).permute(0, 3, 1, 2).contiguous()
    return matrix


def layer_inputs(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """A layer's input as ``n x columns`` (columns ordered as in :func:`weight_matrix`)."""
    if isinstance(module, nn.Linear):
        return inputs.reshape(-1, inputs.shape[-1])
    in_channels = inputs.shape[1]
    kh, kw = module.kernel_size
    if (kh, kw) == (1, 1) and module.stride == (1, 1) and module.padding in ((0, 0), "valid"):
        return inputs.permute(0, 2, 3, 1).reshape(-1, in_channels)
    padding = module.padding
    if isinstance(padding, str):  # "same" with stride 1
        padding = tuple((module.dilation[i] * (module.kernel_size[i] - 1)) // 2 for i in range(2))
    columns = F.unfold(inputs, module.kernel_size, dilation=module.dilation, padding=padding, stride=module.stride)
    # unfold orders a column as (c, r, s); reorder to (r, s, c) to match weight_matrix.
    batch, _, positions = columns.shape
    columns = columns.reshape(batch, in_channels, kh * kw, positions).permute(0, 3, 2, 1)
    return columns.reshape(-1, kh * kw * in_channels)


# ----------------------------------------------------------------------------------------------
# Hessian collection
# ----------------------------------------------------------------------------------------------
class HessianCollector:
    """Accumulates ``H = (2 / sum_t w_t n_t) sum_t w_t X_t X_t^T`` per layer from forward hooks.

    Set :attr:`timestep_weight` before each forward pass (the weight ``w_t`` of the sampling
    step being run); a weight of 0 skips the pass. Sums are accumulated in float32 (as SparseGPT
    does; float64 doubles the cost of the dominant ``X^T X`` products) and returned in float64.
    """

    def __init__(self, layers: dict[str, nn.Module]):
        for name, module in layers.items():
            if not supported_layer(module):
                raise ValueError(f"layer {name!r} ({type(module).__name__}) is not supported by obs: "
                                 "only nn.Linear and ungrouped, zero-padded nn.Conv2d")
        self.layers = dict(layers)
        self.timestep_weight = 1.0
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, float] = {name: 0.0 for name in layers}
        self._handles: list = []

    def _hook(self, name: str):
        def hook(module, args, output):
            weight = float(self.timestep_weight)
            if weight <= 0:
                return
            columns = layer_inputs(module, args[0].detach()).to(torch.float32)
            if name not in self.sums:
                self.sums[name] = torch.zeros(columns.shape[1], columns.shape[1], dtype=torch.float32,
                                              device=columns.device)
            self.sums[name].addmm_(columns.T, columns, alpha=weight)
            self.counts[name] += weight * columns.shape[0]
        return hook

    def attach(self) -> None:
        for name, module in self.layers.items():
            self._handles.append(module.register_forward_hook(self._hook(name)))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def hessian(self, name: str) -> torch.Tensor:
        """``H`` of one layer (float64); zeros if the layer never ran."""
        module = self.layers[name]
        if name not in self.sums or self.counts[name] <= 0:
            columns = weight_matrix(module).shape[1]
            return torch.zeros(columns, columns, dtype=torch.float64)
        return self.sums[name].to(torch.float64) * (2.0 / self.counts[name])


@contextlib.contextmanager
def collect_hessians(layers: dict[str, nn.Module]):
    """Context manager yielding a :class:`HessianCollector` whose hooks are removed on exit,
    also when the body raises (wanda / SparseGPT ``add_batch`` pattern)."""
    collector = HessianCollector(layers)
    collector.attach()
    try:
        yield collector
    finally:
        collector.detach()


# ----------------------------------------------------------------------------------------------
# Damped inverse with retries
# ----------------------------------------------------------------------------------------------
@dataclass
class DampingInfo:
    damping: float  # lambda actually added to the diagonal
    retries: int  # how many times lambda was multiplied by 10
    fallback: str = ""  # "" or "diagonal" when the full H could not be factored


def _prepare_hessian(hessian: torch.Tensor, dead_like_live: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetrised float64 copy with non-finite entries zeroed and dead columns (diagonal <= 0)
    cut off from the others. A dead column's diagonal is set to 1 (SparseGPT's choice), or with
    ``dead_like_live`` to the mean diagonal of the live columns."""
    matrix = hessian.detach().to(torch.float64).clone()
    matrix = torch.where(torch.isfinite(matrix), matrix, torch.zeros_like(matrix))
    matrix = 0.5 * (matrix + matrix.T)
    diagonal = torch.diagonal(matrix)
    dead = diagonal <= 0  # an input that is always zero (or a broken statistic): nothing to compensate
    matrix[dead, :] = 0
    matrix[:, dead] = 0
    fill = 1.0
    if dead_like_live and bool(dead.any()) and not bool(dead.all()):
        # The damping is percdamp * mean(diag H): a fixed 1 among entries that scale with the
        # squared inputs would make the live columns' damping, hence their OBS saliencies, depend
        # on the activations' scale (and could make the factorisation look ill-conditioned).
        fill = float(diagonal[~dead].mean())
    matrix[dead, dead] = fill
    return matrix, dead


def damped_inverse(hessian: torch.Tensor, percdamp: float = DEFAULT_PERCDAMP,
                   max_retries: int = DEFAULT_MAX_RETRIES, cholesky_upper: bool = True, dead_like_live: bool = False):
    """``cholesky(inverse(H + lambda I))`` upper factor (SparseGPT) or the plain inverse.

    ``lambda = percdamp * mean(diag H)``; when a Cholesky factorisation fails or yields
    non-finite values, ``lambda`` is multiplied by 10 and the factorisation retried. If all
    retries fail, the diagonal of ``H`` alone is used. Dead columns (diagonal <= 0) are cut off
    from the others with diagonal 1, or the live columns' mean diagonal with ``dead_like_live``
    (then ``lambda`` scales with the inputs). Returns ``(matrix, dead, DampingInfo)``.
    """
    matrix, dead = _prepare_hessian(hessian, dead_like_live)
    size = matrix.shape[0]
    identity = torch.eye(size, dtype=matrix.dtype, device=matrix.device)
    base = percdamp * float(torch.diagonal(matrix).abs().mean()) if size else 0.0
    damping = base if base > 0 else 1e-8
    for retry in range(max_retries + 1):
        damped = matrix + damping * identity
        # Upper Cholesky factor of H^-1 without forming H^-1 (torch.cholesky_inverse is very slow
        # on MKL CPUs): with J the reversal permutation and J H J = L' L'^T,
        # H^-1 = (J L'^-1 J)^T (J L'^-1 J), and J L'^-1 J is upper triangular.
        if cholesky_upper:
            damped = damped.flip(0, 1)
        lower, info = torch.linalg.cholesky_ex(damped)
        pivots = torch.diagonal(lower)
        # a PSD H damped by lambda has pivots^2 >= lambda, i.e. a ratio >= percdamp / size; a far
        # smaller one means H was indefinite and H + lambda I is (nearly) singular: retry
        conditioned = size == 0 or float((pivots.min() / pivots.max()) ** 2) > 1e-10
        if int(info) == 0 and torch.isfinite(lower).all() and conditioned:
            lower_inverse = torch.linalg.solve_triangular(lower, identity, upper=False)
            result = lower_inverse.flip(0, 1) if cholesky_upper else lower_inverse.T @ lower_inverse
            if torch.isfinite(result).all():
                return result, dead, DampingInfo(damping, retry)
        damping *= 10.0
    # Last resort: a diagonal Hessian (always factorable) -- OBS without cross-column terms.
    diagonal = torch.diagonal(matrix).clamp_min(0) + max(base, 1e-8)
    if cholesky_upper:
        result = torch.diag(diagonal.rsqrt())
    else:
        result = torch.diag(1.0 / diagonal)
    return result, dead, DampingInfo(max(base, 1e-8), max_retries, "diagonal")


# ----------------------------------------------------------------------------------------------
# The calibration trajectory: timestep weights and the dense model's own sampling steps
# ----------------------------------------------------------------------------------------------
def resolve_timestep_weights(schedule: str, schedule_params: dict | None, num_train_timesteps: int) -> list:
    """(t, weight) pairs from a registered schedule, sorted noisiest first, duplicates merged."""
    from ...schedules import SCHEDULES

    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {schedule!r}")
    if SCHEDULES[schedule].adaptive:
        raise ValueError(f"schedule {schedule!r} is decided from training losses; obs needs a fixed "
                         "schedule such as 'log-decrease'")
    merged: dict[int, float] = {}
    for t, weight in SCHEDULES[schedule].resolve(num_train_timesteps, schedule_params or {}):
        merged[int(t)] = merged.get(int(t), 0.0) + float(weight)
    return sorted(merged.items(), key=lambda pair: -pair[0])


@torch.no_grad()
def sampling_trajectory(denoiser: nn.Module, noise_scheduler, timestep_weights: list, noise: torch.Tensor,
                        before_step: Callable[[float], None] | None = None) -> list:
    """Deterministic sampling of ``denoiser`` through the given training timesteps (noisiest first)
    with its family's sampler step (``ModelAdapter.sampler_step``: DDIM with eta = 0, or flow Euler
    for SD3); returns ``[(x_t, t, weight)]``, the model inputs at each step (OBS-Diff calibrates on
    the dense model's own sampling trajectory). The network is called through the adapter
    (``predict`` at ``model_timesteps(t)``), so any prediction type and timestep convention works.
    ``before_step(weight)`` is called before each model call (to weight the Hessians of layers
    hooked during sampling)."""
    from ...models import adapter_for_module

    adapter = adapter_for_module(denoiser)[0]
    device, dtype = denoiser.device, denoiser.dtype
    sample = noise.to(device=device, dtype=dtype)
    steps = []
    for index, (t, weight) in enumerate(timestep_weights):
        steps.append((sample.clone(), int(t), float(weight)))
        if before_step is not None:
            before_step(float(weight))
        prediction = adapter.predict(denoiser, sample, _model_timesteps(adapter, noise_scheduler, sample, int(t)))
        next_t = int(timestep_weights[index + 1][0]) if index + 1 < len(timestep_weights) else None
        sample = adapter.sampler_step(noise_scheduler, prediction, sample, int(t), next_t)
    return steps


def _model_timesteps(adapter, noise_scheduler, sample: torch.Tensor, t: int) -> torch.Tensor:
    """Training timestep ``t`` for every sample of the batch, as the denoiser receives it
    (DDPM families: ``t`` itself; flow matching: ``s * 1000``)."""
    timesteps = torch.full((sample.shape[0],), int(t), device=sample.device, dtype=torch.long)
    return adapter.model_timesteps(noise_scheduler, timesteps)
