"""OBS-Diff: one-shot, training-free pruning with Optimal-Brain-Surgeon weight compensation.

Follows ``../shared/METHODS.md`` (section ``obs``) and the OBS-Diff paper (2025), whose
per-layer solver is SparseGPT's (Frantar & Alistarh, ICML 2023, ``sparsegpt.py::fasterprune``):

1. **Timestep-aware Hessian.** For every prunable layer, forward hooks collect
   ``H = (2 / sum_t w_t n_t) * sum_t w_t X_t X_t^T`` while the dense model samples
   (``X_t`` the layer's inputs at sampling step ``t`` with tokens / pixels as columns, the steps
   walked by the family adapter's ``sampler_step``: DDIM, or flow Euler for SD3; ``n_t``
   their number, ``w_t`` from a timestep schedule, default ``log-decrease``: 1.2 at the noisiest
   step down to 0.8 at the last). ``nn.Conv2d`` inputs are unfolded (``F.unfold``) into columns of
   length ``in_channels * kh * kw``. Hooks are registered in a context manager and always removed.
2. **Unstructured and N:M.** SparseGPT's column-blockwise OBS: damping
   ``lambda = 0.01 * mean(diag H)``, dead input columns get diagonal 1, ``Hinv`` = upper Cholesky
   factor of ``H^-1``, blocks of 128 columns, mask chosen by ``w^2 / [Hinv]_ii^2`` (N:M: the N
   smallest of every M consecutive input columns), and after each pruned column
   ``W[:, i:] -= (w_i / [Hinv]_ii) * Hinv[i, i:]`` -- the compensation that makes it training-free.
3. **Structured.** Attention heads (``diffusers`` ``Attention``: ``to_q``/``to_k``/``to_v`` produce
   the heads, ``to_out[0]`` consumes them; OBS compensates the head columns of ``to_out[0]``) and
   FFN neurons (``diffusers`` ``FeedForward``: the up-projection produces them, the
   down-projection consumes them; granularity ``ffn``, and heads + neurons together in
   ``obs_prune_unet(granularity="head")`` as OBS-Diff's code does). ``UNet2DModel`` has no FFN (its attention blocks are
   self-attention only), so on the default model only heads are prunable this way.
   **Conv channels** (``channel`` granularity, through the engine's Torch-Pruning cut): a channel's
   score is the OBS error of removing its input columns from every layer that reads it,
   ``sum_rows sum_columns W^2 / [Hinv]_cc`` (the unit error above with the diagonal of ``Hinv``),
   so the dependency group that is cheapest to reconstruct goes first; after the cut every
   reading layer (``conv_out`` included) is compensated by the least-squares solution for its
   kept columns, ``W' = W H_:R (H_RR + lambda I)^-1`` (the block OBS update of removing all the
   cut columns at once). The norms between a producer and its readers (GroupNorm) see fewer
   channels after the cut, which compensation cannot model: channel obs is calibrated on the
   dense trajectory in one pass (no sequential groups) and its quality is measured, not assumed.
4. **Group-wise sequential calibration.** The prunable layers, in forward order, are split into
   ``num_groups`` (default 4) contiguous groups; group ``g``'s Hessians are collected by running
   the recorded dense sampling trajectory through the model in which groups ``< g`` are already
   pruned, so each group is calibrated on the outputs of the pruned earlier groups.

Numerical safety: a singular, indefinite or non-finite ``H`` is damped by 10x more and retried
(up to ``max_retries``); if that still fails the diagonal of ``H`` is used (OBS without
cross-column compensation); weights are checked finite before they are written back.

Layout conventions:

* a layer's weight is handled as a matrix ``out x columns``; for ``nn.Linear`` the columns are
  the input features; for ``nn.Conv2d`` the weight ``(out, in, kh, kw)`` is permuted to
  ``(out, kh, kw, in)`` and flattened, so **column ``(r * kw + s) * in + c`` is input channel
  ``c`` at kernel position ``(r, s)``** and N:M groups of M consecutive columns are M
  consecutive *input channels* at one kernel position (NVIDIA's sparse-tensor-core layout for
  convolutions, ``K x RSC``, and the engine's ``core/granularity.py::apply_nm``);
  ``in_channels`` must therefore be divisible by M.
* N:M means N weights *kept* in every group of M (NVIDIA's and the engine's convention; for
  2:4 and 4:8 it coincides with SparseGPT's ``prunen:prunem``).
* masks are boolean tensors of the weight's shape, ``True`` = weight kept.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .pipeline import unet_noise

ProgressFn = Callable[[float, str], None]

DEFAULT_BLOCKSIZE = 128  # SparseGPT's column block
DEFAULT_PERCDAMP = 0.01  # SparseGPT / OBS-Diff: lambda = 0.01 * mean(diag H)
DEFAULT_NUM_GROUPS = 4  # OBS-Diff group-wise sequential pruning
DEFAULT_MAX_RETRIES = 8  # damping x10 per retry: 0.01 -> 1e6 * mean(diag H)
OBS_GRANULARITIES = ("unstructured", "N:M", "head", "ffn", "channel")


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


def _prepare_hessian(hessian: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetrised float64 copy with non-finite entries zeroed and dead columns set to diagonal 1."""
    matrix = hessian.detach().to(torch.float64).clone()
    matrix = torch.where(torch.isfinite(matrix), matrix, torch.zeros_like(matrix))
    matrix = 0.5 * (matrix + matrix.T)
    diagonal = torch.diagonal(matrix)
    dead = diagonal <= 0  # an input that is always zero (or a broken statistic): nothing to compensate
    matrix[dead, :] = 0
    matrix[:, dead] = 0
    matrix[dead, dead] = 1.0
    return matrix, dead


def damped_inverse(hessian: torch.Tensor, percdamp: float = DEFAULT_PERCDAMP,
                   max_retries: int = DEFAULT_MAX_RETRIES, cholesky_upper: bool = True):
    """``cholesky(inverse(H + lambda I))`` upper factor (SparseGPT) or the plain inverse.

    ``lambda = percdamp * mean(diag H)``; when a Cholesky factorisation fails or yields
    non-finite values, ``lambda`` is multiplied by 10 and the factorisation retried. If all
    retries fail, the diagonal of ``H`` alone is used. Returns ``(matrix, dead, DampingInfo)``.
    """
    matrix, dead = _prepare_hessian(hessian)
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
# Unstructured / N:M: SparseGPT column-blockwise OBS
# ----------------------------------------------------------------------------------------------
@dataclass
class LayerPruneResult:
    weight: torch.Tensor  # new weight matrix, out x columns
    mask: torch.Tensor  # bool, True = kept
    damping: DampingInfo
    error: float  # trace((W - W') H (W - W')^T) / out: the layer's reconstruction error


def reconstruction_error(original: torch.Tensor, pruned: torch.Tensor, hessian: torch.Tensor) -> float:
    """``tr((W - W') H (W - W')^T) / rows``: with ``H = 2 X X^T / n`` this is ``2 ||WX - W'X||^2 / (n rows)``."""
    delta = (original.to(torch.float64) - pruned.to(torch.float64))
    hessian = torch.where(torch.isfinite(hessian), hessian, torch.zeros_like(hessian)).to(torch.float64)
    return float(((delta @ hessian) * delta).sum() / max(1, delta.shape[0]))


def check_n_m(n: int, m: int) -> None:
    if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m):
        raise ValueError(f"N:M pattern needs integers 0 < N < M, got {n}:{m}")


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float = 0.5,
    *,
    n: int = 0,  # N:M: keep N of every M consecutive columns (0 = unstructured)
    m: int = 0,
    blocksize: int = DEFAULT_BLOCKSIZE,  # columns per lazy-update block
    percdamp: float = DEFAULT_PERCDAMP,  # lambda = percdamp * mean(diag H)
    max_retries: int = DEFAULT_MAX_RETRIES,  # damping retries (x10 each)
    compensate: bool = True,  # False: same mask choice, no weight update (ablation)
) -> LayerPruneResult:
    """Prune one ``out x columns`` weight matrix with SparseGPT's OBS procedure.

    Unstructured: in each block of ``blocksize`` columns the weights with the smallest
    ``w^2 / [Hinv]_ii^2`` are pruned (SparseGPT's per-block mask selection), block counts rounded
    cumulatively so that the layer prunes exactly ``round(sparsity * out * columns)`` weights. N:M: in each row, the M - N
    smallest of every M consecutive columns are pruned (N kept). Dead columns keep their weights (their input is
    always zero, so they do not affect the calibration output; SparseGPT zeroes them, which would
    push the sparsity above the target).
    """
    rows, columns = weight.shape
    if n or m:
        check_n_m(n, m)
        if columns % m:
            raise ValueError(f"N:M {n}:{m}: the layer has {columns} input columns, not divisible by M={m}")
    elif not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    original = weight.detach()
    work = original.to(torch.float32).clone()
    upper, dead, info = damped_inverse(hessian, percdamp, max_retries, cholesky_upper=True)
    upper = upper.to(torch.float32).to(work.device)
    mask = torch.ones(rows, columns, dtype=torch.bool, device=work.device)
    if not (n or m) and sparsity == 0.0:
        return LayerPruneResult(original.clone(), mask, info, 0.0)
    if n or m:
        blocksize = max(m, (blocksize // m) * m)  # blocks must not split an N:M group
    for start in range(0, columns, blocksize):
        end = min(start + blocksize, columns)
        count = end - start
        block = work[:, start:end].clone()
        block_inverse = upper[start:end, start:end]
        diagonal = torch.diagonal(block_inverse)
        errors = torch.zeros_like(block)
        pruned = torch.zeros_like(block, dtype=torch.bool)
        if not (n or m):
            # OBS saliency w^2 / [Hinv]_ii^2 (SparseGPT eq. 3 with the Cholesky diagonal).
            saliency = block.pow(2) / diagonal.pow(2).unsqueeze(0)
            # cumulative rounding: the layer prunes exactly round(sparsity * rows * columns) weights
            k = int(round(sparsity * rows * end)) - int(round(sparsity * rows * start))
            if k:
                index = torch.argsort(saliency.flatten(), stable=True)[:k]
                pruned.view(-1)[index] = True
        for i in range(count):
            if (n or m) and i % m == 0:
                saliency = block[:, i:i + m].pow(2) / diagonal[i:i + m].pow(2).unsqueeze(0)
                smallest = torch.topk(saliency, m - n, dim=1, largest=False, sorted=False).indices
                pruned.scatter_(1, i + smallest, True)
            column = block[:, i]
            quantized = torch.where(pruned[:, i], torch.zeros_like(column), column)
            error = (column - quantized) / block_inverse[i, i]
            if compensate:
                # OBS update: W[:, i:] -= (w_i - 0) / [Hinv]_ii * Hinv[i, i:]
                block[:, i:] -= error.unsqueeze(1) * block_inverse[i, i:].unsqueeze(0)
            block[:, i] = quantized
            errors[:, i] = error
        work[:, start:end] = block
        mask[:, start:end] = ~pruned
        if compensate and end < columns:
            work[:, end:] -= errors @ upper[start:end, end:]
    work = work * mask  # exact zeros where pruned
    if not torch.isfinite(work).all():
        # Never write NaN/Inf: keep the chosen mask without compensation.
        work = original.to(torch.float32) * mask
        info.fallback = (info.fallback + "+" if info.fallback else "") + "no-compensation"
    return LayerPruneResult(work.to(original.dtype), mask, info, reconstruction_error(original, work, hessian))


def prune_layer(module: nn.Module, hessian: torch.Tensor, sparsity: float = 0.5, **options) -> LayerPruneResult:
    """:func:`sparsegpt_prune` on an ``nn.Linear`` / ``nn.Conv2d`` in place; returns the result
    with ``mask`` reshaped to the module's weight shape."""
    result = sparsegpt_prune(weight_matrix(module), hessian, sparsity, **options)
    with torch.no_grad():
        module.weight.copy_(matrix_to_weight(result.weight, module))
    result.mask = matrix_to_weight(result.mask, module)
    return result


# ----------------------------------------------------------------------------------------------
# Structured: remove groups of input columns with OBS compensation
# ----------------------------------------------------------------------------------------------
@dataclass
class ColumnGroupResult:
    weight: torch.Tensor  # out x columns, removed columns zero
    removed: list  # indices (into ``groups``) of the removed groups, in removal order
    errors: list  # OBS error of each removal when it was made
    damping: DampingInfo


def obs_remove_column_groups(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    groups: list,
    num_remove: int,
    *,
    chunk: int = 1,  # groups removed per round before the errors are recomputed
    percdamp: float = DEFAULT_PERCDAMP,
    max_retries: int = DEFAULT_MAX_RETRIES,
) -> ColumnGroupResult:
    """Greedy structured OBS: remove ``num_remove`` groups of columns (heads, neurons).

    The error of removing column set ``S`` is the exact block OBS error
    ``tr(W_S [Hinv_SS]^-1 W_S^T)`` (``Hinv = (H + lambda I)^-1``); it reduces to METHODS.md's
    ``sum_rows W^2 / diag(Hinv)`` for a single column. After each removal the remaining columns
    are compensated, ``W -= W_S [Hinv_SS]^-1 Hinv_S:``, and ``Hinv`` is downdated to the inverse
    of ``H`` restricted to the remaining columns, ``Hinv -= Hinv_:S [Hinv_SS]^-1 Hinv_S:``
    (OBS; Kurtic et al. ZipLM / Frantar et al. OBC). ``chunk`` > 1 removes that many lowest-error
    groups per round (cheaper for thousands of FFN neurons).
    """
    if not 0 <= num_remove < len(groups):
        raise ValueError(f"can remove between 0 and {len(groups) - 1} of {len(groups)} groups, got {num_remove}")
    inverse, dead, info = damped_inverse(hessian, percdamp, max_retries, cholesky_upper=False)
    work = weight.detach().to(torch.float64).clone()
    inverse = inverse.to(work.device)
    remaining = list(range(len(groups)))
    removed, errors = [], []
    while len(removed) < num_remove:
        scores = []
        for index in remaining:
            columns = torch.as_tensor(groups[index], device=work.device)
            block = inverse[columns][:, columns]
            part = work[:, columns]
            solved = torch.linalg.solve(block, part.T)  # [Hinv_SS]^-1 W_S^T
            scores.append(float((part.T * solved).sum()))
        order = sorted(range(len(remaining)), key=lambda j: scores[j])
        take = order[: min(chunk, num_remove - len(removed))]
        columns = torch.as_tensor([c for j in take for c in groups[remaining[j]]], device=work.device)
        block = inverse[columns][:, columns]
        coefficients = torch.linalg.solve(block, inverse[columns])  # [Hinv_SS]^-1 Hinv_S:
        work -= work[:, columns] @ coefficients
        inverse -= inverse[:, columns] @ coefficients
        work[:, columns] = 0.0
        for j in take:
            removed.append(remaining[j])
            errors.append(scores[j])
        remaining = [g for g in remaining if g not in set(removed)]
    if not torch.isfinite(work).all():
        work = weight.detach().to(torch.float64).clone()
        for index in removed:
            work[:, groups[index]] = 0.0
        info.fallback = (info.fallback + "+" if info.fallback else "") + "no-compensation"
    return ColumnGroupResult(work.to(weight.dtype), removed, errors, info)


def _keep_index(size: int, removed_rows: Iterable[int]) -> list:
    removed = set(int(r) for r in removed_rows)
    return [i for i in range(size) if i not in removed]


def prune_attention_heads(attn: nn.Module, hessian: torch.Tensor, num_remove: int, shrink: bool = True,
                          context_hessian: torch.Tensor | None = None, **options) -> ColumnGroupResult:
    """Remove ``num_remove`` heads of a diffusers ``Attention`` with OBS compensation, in place.

    ``hessian`` is that of ``attn.to_out[0]``'s input (``inner_dim`` columns, head ``h`` owning
    columns ``h*head_dim .. (h+1)*head_dim-1``). The compensated ``to_out[0]`` loses the removed
    columns, ``to_q``/``to_k``/``to_v`` lose the matching rows (the engine's one head cut,
    ``core.models.transformer_cuts.remove_heads``), and ``heads``, ``inner_dim`` are updated. ``shrink=False`` only
    writes the compensated ``to_out[0]`` (removed head columns zero) and leaves the cut to the
    caller (the engine's ``head`` granularity).

    Joint attention (SD3's MMDiT: the context stream's ``to_add_out`` reads the same heads):
    with ``context_hessian`` (that of ``to_add_out``'s input) a head's error is the sum of its OBS
    errors in both output projections, and both are compensated. This is the exact block OBS of
    the block-diagonal pair ``diag(W_out, W_add)``, ``diag(H, H_context)`` (the two projections
    read different tokens), where OBS-Diff's code fuses the two rankings by reciprocal rank.
    """
    heads = int(attn.heads)
    out_proj = attn.to_out[0]
    inner = out_proj.in_features
    if inner % heads:
        raise ValueError(f"attention inner dim {inner} is not divisible by its {heads} heads")
    if getattr(attn, "inner_kv_dim", inner) != inner:
        raise ValueError("head pruning supports attention with equal q/k/v widths only")
    head_dim = inner // heads
    groups = [list(range(h * head_dim, (h + 1) * head_dim)) for h in range(heads)]
    context_proj = getattr(attn, "to_add_out", None) if context_hessian is not None else None
    if context_proj is None:
        result = obs_remove_column_groups(out_proj.weight.detach(), hessian, groups, num_remove, **options)
    else:
        weight = torch.block_diag(out_proj.weight.detach(), context_proj.weight.detach().to(out_proj.weight.dtype))
        joint_hessian = torch.block_diag(hessian.to(torch.float64), context_hessian.to(torch.float64))
        joint_groups = [columns + [inner + c for c in columns] for columns in groups]
        result = obs_remove_column_groups(weight, joint_hessian, joint_groups, num_remove, **options)
    if not result.removed:
        return result
    with torch.no_grad():
        rows = out_proj.out_features
        out_proj.weight.copy_(result.weight[:rows, :inner].to(out_proj.weight.dtype))
        if context_proj is not None:
            context_proj.weight.copy_(result.weight[rows:, inner:].to(context_proj.weight.dtype))
    if not shrink:
        return result
    from .models.transformer_cuts import remove_heads  # the one head cut of the engine

    removed = set(result.removed)
    remove_heads(attn, [h for h in range(heads) if h not in removed])
    return result


def _feedforward_layers(ff: nn.Module):
    """(up-projection, down-projection, gated) of a diffusers ``FeedForward`` (the engine's one
    definition, ``core.models.transformer_cuts.ffn_layers``)."""
    from .models.transformer_cuts import ffn_layers

    return ffn_layers(ff)


def prune_feedforward_neurons(ff: nn.Module, hessian: torch.Tensor, num_remove: int, chunk: int = 8,
                              shrink: bool = True, **options) -> ColumnGroupResult:
    """Remove ``num_remove`` hidden neurons of a diffusers ``FeedForward`` with OBS compensation.

    ``hessian`` is that of the down-projection's input. The down-projection loses the columns,
    the up-projection the rows (both halves for gated activations). ``shrink=False`` only writes
    the compensated down-projection (removed columns zero) and leaves the cut to the caller (the
    engine's ``ffn`` granularity).
    """
    import torch_pruning as tp

    up, down, gated = _feedforward_layers(ff)
    hidden = down.in_features
    groups = [[c] for c in range(hidden)]
    result = obs_remove_column_groups(down.weight.detach(), hessian, groups, num_remove, chunk=chunk, **options)
    if not result.removed:
        return result
    removed = sorted(result.removed)
    with torch.no_grad():
        down.weight.copy_(result.weight.to(down.weight.dtype))
    if not shrink:
        return result
    tp.prune_linear_in_channels(down, removed)
    tp.prune_linear_out_channels(up, removed + ([r + hidden for r in removed] if gated else []))
    return result


# ----------------------------------------------------------------------------------------------
# Model level: calibration trajectory, group-wise sequential pruning
# ----------------------------------------------------------------------------------------------
@dataclass
class ObsReport:
    """What :func:`obs_prune_unet` did."""

    masks: dict = field(default_factory=dict)  # layer -> bool mask (True = kept); unstructured / N:M
    layer_errors: dict = field(default_factory=dict)  # layer -> reconstruction error after OBS
    dampings: dict = field(default_factory=dict)  # layer -> DampingInfo
    removed_heads: dict = field(default_factory=dict)  # attention module -> removed head indices
    removed_neurons: dict = field(default_factory=dict)  # FeedForward module -> removed neuron indices
    groups: list = field(default_factory=list)  # the sequential layer groups, in order
    timestep_weights: list = field(default_factory=list)  # [(t, weight)] used for the Hessians
    calibration_seconds: float = 0.0
    prune_seconds: float = 0.0


def resolve_timestep_weights(schedule: str, schedule_params: dict | None, num_train_timesteps: int) -> list:
    """(t, weight) pairs from a registered schedule, sorted noisiest first, duplicates merged."""
    from .schedules import SCHEDULES

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
def sampling_trajectory(unet: nn.Module, noise_scheduler, timestep_weights: list, noise: torch.Tensor,
                        before_step: Callable[[float], None] | None = None) -> list:
    """Deterministic sampling of ``unet`` through the given training timesteps (noisiest first)
    with its family's sampler step (``ModelAdapter.sampler_step``: DDIM with eta = 0, or flow Euler
    for SD3); returns ``[(x_t, t, weight)]``, the model inputs at each step (OBS-Diff calibrates on
    the dense model's own sampling trajectory). The network is called through the adapter
    (``predict`` at ``model_timesteps(t)``), so any prediction type and timestep convention works.
    ``before_step(weight)`` is called before each model call (to weight the Hessians of layers
    hooked during sampling)."""
    from .models import adapter_for_module

    adapter = adapter_for_module(unet)[0]
    device, dtype = unet.device, unet.dtype
    sample = noise.to(device=device, dtype=dtype)
    steps = []
    for index, (t, weight) in enumerate(timestep_weights):
        steps.append((sample.clone(), int(t), float(weight)))
        if before_step is not None:
            before_step(float(weight))
        prediction = adapter.predict(unet, sample, _model_timesteps(adapter, noise_scheduler, sample, int(t)))
        next_t = int(timestep_weights[index + 1][0]) if index + 1 < len(timestep_weights) else None
        sample = adapter.sampler_step(noise_scheduler, prediction, sample, int(t), next_t)
    return steps


def _model_timesteps(adapter, noise_scheduler, sample: torch.Tensor, t: int) -> torch.Tensor:
    """Training timestep ``t`` for every sample of the batch, as the denoiser receives it
    (DDPM families: ``t`` itself; flow matching: ``s * 1000``)."""
    timesteps = torch.full((sample.shape[0],), int(t), device=sample.device, dtype=torch.long)
    return adapter.model_timesteps(noise_scheduler, timesteps)


def forward_order(unet: nn.Module, layers: dict[str, nn.Module], example: torch.Tensor, t: int,
                  noise_scheduler=None) -> list:
    """Layer names in the order the forward pass first calls them (``t`` a training timestep,
    given to the network as its family's model timestep when ``noise_scheduler`` is given)."""
    order: list = []
    timesteps = torch.tensor([t], device=example.device)
    if noise_scheduler is not None:
        from .models import adapter_for_module

        timesteps = _model_timesteps(adapter_for_module(unet)[0], noise_scheduler, example[:1], t)
    handles = [module.register_forward_hook(lambda mod, a, o, name=name: order.append(name) if name not in order else None)
               for name, module in layers.items()]
    try:
        with torch.no_grad():
            unet(example[:1], timesteps)
    finally:
        for handle in handles:
            handle.remove()
    return order + [name for name in layers if name not in order]


def split_groups(names: list, num_groups: int) -> list:
    """``names`` split into ``num_groups`` contiguous, near-equal groups (fewer if there are fewer names)."""
    if num_groups < 1:
        raise ValueError(f"num_groups must be >= 1, got {num_groups}")
    count = min(num_groups, len(names))
    bounds = [round(i * len(names) / count) for i in range(count + 1)] if count else [0]
    return [names[bounds[i]:bounds[i + 1]] for i in range(count)]


def _default_layers(unet: nn.Module) -> dict:
    from .criteria import prunable_layers  # one definition of "prunable" for the whole engine

    return prunable_layers(unet)


def obs_prune_unet(
    unet: nn.Module,
    noise_scheduler,
    *,
    sparsity: float = 0.5,  # unstructured: fraction of each layer's weights removed
    granularity: str = "unstructured",  # "unstructured", "N:M" or "head"
    n: int = 2,  # N:M pattern
    m: int = 4,
    head_ratio: float | None = None,  # "head": fraction of each attention module's heads removed (default: sparsity)
    ffn_ratio: float | None = None,  # "head": fraction of FFN neurons removed (default: head ratio)
    schedule: str = "log-decrease",  # timestep weights of the Hessian (OBS-Diff default)
    schedule_params: dict | None = None,
    num_images: int = 4,  # calibration trajectories sampled from the dense model (cost ~ linear in it)
    seed: int = 0,  # initial noise of the calibration trajectories
    num_groups: int = DEFAULT_NUM_GROUPS,  # sequential layer groups
    layers: dict | None = None,  # name -> module to prune (default: the engine's prunable layers)
    blocksize: int = DEFAULT_BLOCKSIZE,
    percdamp: float = DEFAULT_PERCDAMP,
    heads_to_remove: dict | None = None,  # "head": attention name -> number of heads (overrides head_ratio)
    neurons_to_remove: dict | None = None,  # "head": FeedForward name -> number of neurons (overrides ffn_ratio)
    shrink: bool = True,  # "head": physically remove heads / neurons (False: compensate and zero only)
    keep_masks: bool = True,  # keep each layer's boolean mask in the report (False: the weights' zeros say it)
    progress: ProgressFn | None = None,
) -> ObsReport:
    """Prune ``unet`` in place with OBS-Diff; the caller passes a copy if it keeps the dense model.

    Calibration: ``num_images`` trajectories sampled by the model itself with its family's
    deterministic sampler step (DDIM; flow Euler on SD3: ``ModelAdapter.sampler_step``) through the
    schedule's timesteps (seeded noise), each step weighted by its schedule weight. The
    trajectory is recorded once from the dense model (the first group's Hessians are collected
    during that pass); then for each later layer group in forward order, Hessians are collected
    by running the recorded inputs through the current (partly pruned) model, each pass stopped
    after the group's last layer, and the group is pruned before the next one is calibrated.
    """
    if granularity not in ("unstructured", "N:M", "head"):
        raise ValueError(f"obs granularity must be 'unstructured', 'N:M' or 'head' (channel: through core.prune), got {granularity!r}")
    report = ObsReport()
    started = time.perf_counter()

    def tell(fraction: float, message: str) -> None:
        if progress is not None:
            progress(min(1.0, fraction), message)

    num_train_timesteps = int(noise_scheduler.config.num_train_timesteps)
    report.timestep_weights = resolve_timestep_weights(schedule, schedule_params, num_train_timesteps)
    noise = unet_noise(unet, num_images, seed)
    device = next(unet.parameters()).device
    first_t = report.timestep_weights[0][0]
    first_input = noise[:1].to(device=device, dtype=next(unet.parameters()).dtype)

    if granularity == "head":
        targets = _structured_targets(unet)
        if heads_to_remove is not None or neurons_to_remove is not None:
            # the engine's cuts say how many units each module loses: its 'head' granularity
            # removes heads only, its 'ffn' granularity FFN neurons only (pruning the other kind
            # here removed more than the spec asked)
            counts = {"attention": heads_to_remove or {}, "feedforward": neurons_to_remove or {}}
            targets = {name: target for name, target in targets.items() if counts[target[0]].get(name, 0) > 0}
            if not targets:  # no head to remove: the model stays as it is
                report.prune_seconds = time.perf_counter() - started
                return report
        if not targets:
            raise ValueError("granularity 'head' needs a model with multi-head attention or FFN blocks")
        consumer = {name: (module.to_out[0] if kind == "attention" else _feedforward_layers(module)[1])
                    for name, (kind, module) in targets.items()}
        # joint attention (SD3): the context stream's output projection reads the same heads
        context_consumer = {name: module.to_add_out for name, (kind, module) in targets.items()
                            if kind == "attention" and isinstance(getattr(module, "to_add_out", None), nn.Linear)}
        order = forward_order(unet, consumer, first_input, first_t, noise_scheduler)
        hook_layers = consumer
    else:
        context_consumer = {}
        hook_layers = layers if layers is not None else _default_layers(unet)
        hook_layers = {name: module for name, module in hook_layers.items() if supported_layer(module)}
        order = forward_order(unet, hook_layers, first_input, first_t, noise_scheduler)
    report.groups = split_groups(order, num_groups)
    head_ratio = sparsity if head_ratio is None else head_ratio
    ffn_ratio = head_ratio if ffn_ratio is None else ffn_ratio

    trajectory = None
    for group_index, group in enumerate(report.groups):
        base = group_index / len(report.groups)
        calibration_start = time.perf_counter()
        hooked = {name: hook_layers[name] for name in group}
        hooked.update({_context_key(name): context_consumer[name] for name in group if name in context_consumer})
        with collect_hessians(hooked) as collector, torch.no_grad():
            if trajectory is None:
                # the first group sees the dense model: calibrate it while sampling the trajectory
                tell(0.0, f"sampling the dense calibration trajectory, calibrating group 1/{len(report.groups)}")
                trajectory = sampling_trajectory(unet, noise_scheduler, report.timestep_weights, noise,
                                                 before_step=lambda weight: setattr(collector, "timestep_weight", weight))
            else:
                tell(base, f"calibrating group {group_index + 1}/{len(report.groups)} ({len(group)} layers)")
                # stop each forward pass once the group's last layer has run (later layers are not needed);
                # for heads, once its whole attention / FeedForward module has (joint attention's two
                # output projections run in either order)
                last = targets[group[-1]][1] if granularity == "head" else hook_layers[group[-1]]
                stopper = last.register_forward_hook(_stop_forward) if group_index < len(report.groups) - 1 else None
                from .models import adapter_for_module

                adapter = adapter_for_module(unet)[0]
                try:
                    for sample, t, weight in trajectory:
                        collector.timestep_weight = weight
                        try:
                            unet(sample, _model_timesteps(adapter, noise_scheduler, sample, t))
                        except _StopForward:
                            pass
                finally:
                    if stopper is not None:
                        stopper.remove()
        report.calibration_seconds += time.perf_counter() - calibration_start
        for layer_index, name in enumerate(group):
            tell(base + (layer_index + 1) / (len(group) * len(report.groups)), f"pruning {name}")
            hessian = collector.hessian(name)
            if granularity == "head":
                kind, module = targets[name]
                if kind == "attention":
                    remove = min(int(module.heads) - 1, int(round(head_ratio * int(module.heads))))
                    if heads_to_remove is not None:
                        remove = int(heads_to_remove.get(name, 0))
                    context = collector.hessian(_context_key(name)) if name in context_consumer else None
                    result = prune_attention_heads(module, hessian, remove, shrink=shrink, percdamp=percdamp,
                                                   context_hessian=context)
                    report.removed_heads[name] = sorted(result.removed)
                else:
                    hidden = _feedforward_layers(module)[1].in_features
                    remove = min(hidden - 1, int(round(ffn_ratio * hidden)))
                    if neurons_to_remove is not None:
                        remove = int(neurons_to_remove.get(name, 0))
                    result = prune_feedforward_neurons(module, hessian, remove, shrink=shrink, percdamp=percdamp)
                    report.removed_neurons[name] = sorted(result.removed)
                report.layer_errors[name] = float(sum(result.errors))
                report.dampings[name] = result.damping
            else:
                options = dict(blocksize=blocksize, percdamp=percdamp)
                if granularity == "N:M":
                    options.update(n=n, m=m)
                result = prune_layer(hook_layers[name], hessian.to(hook_layers[name].weight.device), sparsity, **options)
                if keep_masks:
                    report.masks[name] = result.mask
                report.layer_errors[name] = result.error
                report.dampings[name] = result.damping
            del hessian
        del collector
    report.prune_seconds = time.perf_counter() - started
    tell(1.0, "obs done")
    return report


def _context_key(name: str) -> str:
    """Collector key of a joint attention's context output projection."""
    return f"{name}.to_add_out"


class _StopForward(Exception):
    """Raised by a forward hook to end a calibration pass early."""


def _stop_forward(module, args, output):
    raise _StopForward


def _structured_targets(unet: nn.Module) -> dict:
    """Attention modules with 2+ heads and diffusers FeedForward blocks, by name -> (kind, module)."""
    from .models import attention_modules, feed_forward_modules

    attentions = {name: m for name, m in attention_modules(unet).items() if int(getattr(m, "heads", 1)) > 1}
    feed_forwards = feed_forward_modules(unet)
    targets = {}
    for name, module in unet.named_modules():  # forward-definition order, as before
        if name in attentions:
            targets[name] = ("attention", module)
        elif name in feed_forwards:
            targets[name] = ("feedforward", module)
    return targets


def head_prune_modules(unet: nn.Module) -> dict:
    """Public view of what ``granularity='head'`` acts on: name -> 'attention' | 'feedforward'."""
    return {name: kind for name, (kind, _) in _structured_targets(unet).items()}


# ----------------------------------------------------------------------------------------------
# Engine adapter (issue 4's registry): obs prunes by reconstruction, then the granularity cuts
# ----------------------------------------------------------------------------------------------
def _check_positive_int(name):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"criterion_params.{name} of criterion 'obs' must be a positive integer, got {value!r}")
    return check


def _check_percdamp(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"criterion_params.percdamp of criterion 'obs' must be in (0, 1), got {value!r}")


def engine_reconstruct(unet: nn.Module, pipeline, spec, progress: ProgressFn | None = None):
    """Run OBS-Diff on the engine's private ``unet`` as ``spec`` says; return
    ``(scores, stats, calibration_source)``.

    The weights are compensated here; the scores make the engine's granularity cut exactly what
    OBS chose: kept weights score ``1 + |w'| / max|w'|``, pruned weights 0 (unstructured: the
    same per-layer count, N:M: the same N per group); for ``head`` and ``ffn``, the engine's own
    unit-count rule is asked first (on a copy), OBS removes that many heads (FFN neurons) per
    module with compensation of the reading layer, and their producing rows and reading columns
    score 0, so the engine's cut removes exactly those units. ``block`` is refused: OBS-Diff
    removes heads and neurons, not whole blocks.
    Calibration trajectories: ``calibration_batches * calibration_batch_size`` images.
    """
    from .criteria import CalibrationStats, copy_scheduler, prunable_layers

    params = dict(spec.criterion_params)
    granularity = spec.granularity_name
    options = dict(schedule=spec.schedule, schedule_params=dict(spec.schedule_params),
                   num_images=int(spec.calibration_batches) * int(spec.calibration_batch_size), seed=int(spec.seed),
                   num_groups=params["num_groups"], blocksize=params["blocksize"], percdamp=params["percdamp"],
                   progress=progress)
    scheduler = copy_scheduler(pipeline.scheduler)
    layers = prunable_layers(unet)
    if granularity == "unstructured":
        report = obs_prune_unet(unet, scheduler, sparsity=float(spec.sparsity), layers=layers, keep_masks=False,
                                **options)
    elif granularity == "N:M":
        n, m = spec.nm_pattern
        report = obs_prune_unet(unet, scheduler, granularity="N:M", n=n, m=m, layers=layers, keep_masks=False,
                                **options)
    elif granularity in ("head", "ffn"):
        from .granularities.ffn import neurons_to_remove
        from .granularities.head import heads_to_remove

        # the engine's own rule says how many units each module loses (structure only, no copy of
        # the model); OBS chooses which and compensates
        remove = (heads_to_remove if granularity == "head" else neurons_to_remove)(unet, spec)
        counts = dict(heads_to_remove=remove) if granularity == "head" else dict(neurons_to_remove=remove)
        report = obs_prune_unet(unet, scheduler, granularity="head", shrink=False, **counts, **options)
    elif granularity == "channel":
        scores, timestep_weights = obs_channel_scores(
            unet, scheduler, layers, schedule=spec.schedule, schedule_params=dict(spec.schedule_params),
            num_images=options["num_images"], seed=int(spec.seed), percdamp=params["percdamp"], progress=progress)
        stats = CalibrationStats(timestep_weights=list(timestep_weights), num_images=options["num_images"])
        return scores, stats, _trajectory_source(unet, len(timestep_weights))
    else:
        raise ValueError(f"criterion 'obs' supports granularities {list(OBS_GRANULARITIES)}, got {granularity!r}")
    from .criteria.scores import LayerScores
    from .models import adapter_for_module

    # Rows and columns of the heads / FFN neurons OBS removed, per layer: they score 0.
    zero_rows: dict = {}
    zero_columns: dict = {}
    adapter, component = adapter_for_module(unet)
    groups = adapter.head_groups(component, unet)
    for name, heads in report.removed_heads.items():
        group = groups[name]
        for head in heads:
            rows = list(range(head * group.head_dim, (head + 1) * group.head_dim))
            for layer in group.rows:
                zero_rows.setdefault(layer, []).extend(rows)
            for layer in group.columns:
                zero_columns.setdefault(layer, []).extend(rows)
    if report.removed_neurons:
        from .models.transformer_cuts import ffn_layers

        names = {id(module): name for name, module in unet.named_modules()}
        modules = dict(unet.named_modules())
        for name, neurons in report.removed_neurons.items():
            up, down, gated = ffn_layers(modules[name])
            hidden = down.in_features
            zero_rows.setdefault(names[id(up)], []).extend(list(neurons) + ([n + hidden for n in neurons] if gated else []))
            zero_columns.setdefault(names[id(down)], []).extend(list(neurons))
    masked = granularity in ("unstructured", "N:M")

    def score_layer(name, module):
        # kept weights score 1 + |w'| / max|w'| (w' compensated), pruned ones 0. OBS has already
        # zeroed the weights it pruned (unstructured, N:M), so the mask is read off the weights;
        # a kept weight that happens to be exactly 0 scores 0 too, which leaves the cut weights
        # the same (every weight scoring 0 is 0), and no mask the size of the model is kept.
        weight = module.weight.detach().float().abs()
        score = 1.0 + weight / weight.max().clamp_min(1e-12)
        if masked:
            score = score * (weight != 0).to(score.dtype)
        if name in zero_rows:
            score[zero_rows[name]] = 0.0
        if name in zero_columns:
            score[:, zero_columns[name]] = 0.0
        return score

    scores = LayerScores(layers, score_layer)
    stats = CalibrationStats(timestep_weights=list(report.timestep_weights), num_images=options["num_images"])
    return scores, stats, _trajectory_source(unet, len(report.timestep_weights))


def _trajectory_source(unet: nn.Module, num_steps: int) -> str:
    """The calibration source line: which sampler walked the dense model's trajectories."""
    from .models import adapter_for_module

    return f"generated ({num_steps}-step {adapter_for_module(unet)[0].sampler_label} trajectories of the dense model)"


def obs_channel_scores(unet: nn.Module, noise_scheduler, layers: dict, *, schedule: str = "log-decrease",
                       schedule_params: dict | None = None, num_images: int = 4, seed: int = 0,
                       percdamp: float = DEFAULT_PERCDAMP, progress: ProgressFn | None = None):
    """Channel OBS (see the module docstring): ``ConsumerScores`` for the engine's channel cut,
    with a ``compensate`` step that re-solves every reading layer's kept columns afterwards.

    Hessians of all ``layers`` and of ``conv_out`` (which reads the last channels but is never
    cut itself) are collected in one pass over the dense model's own sampling trajectories.
    Returns ``(scores, timestep_weights)``.
    """
    from .granularities import ConsumerScores

    num_train_timesteps = int(noise_scheduler.config.num_train_timesteps)
    timestep_weights = resolve_timestep_weights(schedule, schedule_params, num_train_timesteps)
    noise = unet_noise(unet, num_images, seed)
    readers = {name: module for name, module in layers.items() if supported_layer(module)}
    # Layers whose outputs are never cut (the pixel UNet's conv_out) still read cut channels:
    # they are compensated too (the adapter names them).
    from .models import adapter_for_module

    adapter, component = adapter_for_module(unet)
    modules = dict(unet.named_modules())
    for name in adapter.channel_kept_layers(component, unet):
        if name in modules and supported_layer(modules[name]):
            readers[name] = modules[name]
    if progress is not None:
        progress(0.0, "obs: sampling the dense calibration trajectory, collecting Hessians")
    with collect_hessians(readers) as collector, torch.no_grad():
        sampling_trajectory(unet, noise_scheduler, timestep_weights, noise,
                            before_step=lambda weight: setattr(collector, "timestep_weight", weight))
    originals, hessians = {}, {}
    scores = ConsumerScores()
    for index, (name, module) in enumerate(readers.items()):
        if progress is not None:
            progress(0.8 + 0.2 * index / len(readers), f"obs: channel errors of {name}")
        hessian = collector.hessian(name)
        matrix = weight_matrix(module).to(torch.float64)
        inverse, _, _ = damped_inverse(hessian, percdamp, cholesky_upper=False)
        saliency = matrix.pow(2) / torch.diagonal(inverse).clamp_min(1e-12)
        originals[name], hessians[name] = matrix.to(torch.float32).cpu(), hessian.to(torch.float32).cpu()
        if name in layers:  # conv_out is no prunable layer: it is only compensated
            scores[name] = matrix_to_weight(saliency.to(module.weight.dtype), module).to(module.weight.device)
    del collector

    def compensate(pruned_unet: nn.Module, removed: dict) -> None:
        modules = dict(pruned_unet.named_modules())
        for name, original in originals.items():
            entry = removed.get(name, {})
            if not entry.get("in"):
                continue  # no input removed: the kept rows are exactly as before
            module = modules[name]
            positions = module.weight[0].numel() // module.weight.shape[1]  # kernel positions (1 for Linear)
            in_channels = original.shape[1] // positions
            dropped_in, dropped_out = set(entry["in"]), set(entry.get("out", ()))
            kept_in = [c for c in range(in_channels) if c not in dropped_in]
            kept_rows = [o for o in range(original.shape[0]) if o not in dropped_out]
            columns = torch.tensor([p * in_channels + c for p in range(positions) for c in kept_in])
            updated = _least_squares_columns(original[kept_rows].to(torch.float64),
                                             hessians[name].to(torch.float64), columns, percdamp)
            with torch.no_grad():
                module.weight.copy_(matrix_to_weight(updated.to(module.weight.dtype), module).to(module.weight.device))

    scores.compensate = compensate
    return scores, timestep_weights


def _least_squares_columns(matrix: torch.Tensor, hessian: torch.Tensor, columns: torch.Tensor,
                           percdamp: float = DEFAULT_PERCDAMP) -> torch.Tensor:
    """``W' = W H_:R (H_RR + lambda I)^-1``: the kept columns ``R`` that best reproduce ``W X``
    (``H ~ X X^T``), i.e. the block OBS compensation for removing all other columns at once.
    Falls back to the uncompensated columns if the solution is not finite."""
    prepared, _ = _prepare_hessian(hessian)
    kept = prepared[columns][:, columns]
    damping = percdamp * float(torch.diagonal(kept).abs().mean()) if kept.numel() else 0.0
    identity = torch.eye(kept.shape[0], dtype=kept.dtype)
    for _ in range(DEFAULT_MAX_RETRIES + 1):
        try:
            solution = torch.linalg.solve(kept + max(damping, 1e-8) * identity, prepared[columns] @ matrix.T).T
        except RuntimeError:  # singular even after damping: damp more
            solution = None
        if solution is not None and torch.isfinite(solution).all():
            return solution
        damping = max(damping, 1e-8) * 10.0
    return matrix[:, columns]


def _scores_by_reconstruction(layers, stats, params, seed):
    raise ValueError("criterion 'obs' prunes by reconstruction (Criterion.reconstruct), not from scores")


def register() -> None:
    """Add ``obs`` to the engine's ``CRITERIA`` (called where the registry is assembled)."""
    from .criteria import Criterion, register_criterion

    register_criterion(Criterion(
        "obs", _scores_by_reconstruction, granularities=OBS_GRANULARITIES,
        reconstruct=engine_reconstruct, default_schedule="log-decrease",
        # 4 trajectories x 25 steps: the X^T X products dominate the cost (about 350 G
        # multiply-adds on the default model), linear in the number of trajectories
        default_calibration_batches=1, default_calibration_batch_size=4,
        defaults={"num_groups": DEFAULT_NUM_GROUPS, "blocksize": DEFAULT_BLOCKSIZE, "percdamp": DEFAULT_PERCDAMP},
        checks={"num_groups": _check_positive_int("num_groups"), "blocksize": _check_positive_int("blocksize"),
                "percdamp": _check_percdamp},
        description="OBS-Diff: timestep-aware Hessian (log-decrease), SparseGPT OBS with weight compensation",
    ))


register()
