"""Unstructured and N:M OBS-Diff: SparseGPT's column-blockwise OBS prune of one layer.

The per-layer solver OBS-Diff uses is SparseGPT's (Frantar & Alistarh, ICML 2023,
``fasterprune``): with ``Hinv`` the upper Cholesky factor of ``(H + lambda I)^-1``
(:func:`~.hessians.damped_inverse`), the columns are visited in blocks of 128; in each block the
mask is chosen by the OBS saliency ``w^2 / [Hinv]_ii^2`` (N:M: the M - N smallest of every M
consecutive columns of a row), and after each pruned column the later columns are compensated,
``W[:, i:] -= (w_i / [Hinv]_ii) * Hinv[i, i:]`` -- the update that makes the prune training-free.

Weights on dead columns (an input that is zero for every calibration sample, ``H_ii = 0``) are
set to 0 first, as ``fasterprune`` does: their saliency is then 0, so they are pruned first and
count against the layer's budget (N:M: they take their group's pruned slots first). Their
Hessian diagonal is the live columns' mean rather than ``fasterprune``'s 1, so that the damping
scales with the inputs and the mask does not depend on their scale.

N:M means N weights *kept* in every group of M (NVIDIA's and the engine's convention; for 2:4
and 4:8 it coincides with SparseGPT's ``prunen:prunem``). Masks are boolean tensors of the
weight's shape, ``True`` = weight kept.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .hessians import DampingInfo, damped_inverse, matrix_to_weight, weight_matrix
from .settings import DEFAULT_BLOCKSIZE, SparseGPTSettings  # noqa: F401 - DEFAULT_BLOCKSIZE re-exported


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
    settings: SparseGPTSettings = SparseGPTSettings(),  # block size, damping, retries, compensation
) -> LayerPruneResult:
    """Prune one ``out x columns`` weight matrix with SparseGPT's OBS procedure.

    Unstructured: in each block of ``settings.blocksize`` columns the weights with the smallest
    ``w^2 / [Hinv]_ii^2`` are pruned (SparseGPT's per-block mask selection), block counts rounded
    cumulatively so that the layer prunes exactly ``round(sparsity * out * columns)`` weights.
    N:M: in each row, the M - N smallest of every M consecutive columns are pruned (N kept).
    Dead columns (``H_ii = 0``: an input that is zero for every calibration sample) have their
    weights set to 0 first, as SparseGPT's ``fasterprune`` does (``W[:, dead] = 0``): saliency 0,
    so they are pruned first and count against the budget. Their Hessian diagonal is set to the
    live columns' mean (SparseGPT sets 1), so that the damping ``settings.percdamp * mean(diag H)``, and
    with it the mask, does not depend on the scale of the inputs. Sparsity 0 (unstructured)
    returns the weights unchanged.
    """
    if not isinstance(settings, SparseGPTSettings):
        raise ValueError(f"settings must be a SparseGPTSettings, got {type(settings).__name__}")
    rows, columns = weight.shape
    if n or m:
        check_n_m(n, m)
        if columns % m:
            raise ValueError(f"N:M {n}:{m}: the layer has {columns} input columns, not divisible by M={m}")
    elif not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    original = weight.detach()
    work = original.to(torch.float32).clone()
    blocksize, compensate = settings.blocksize, settings.compensate
    upper, _, info = damped_inverse(hessian, settings.percdamp, settings.max_retries, cholesky_upper=True,
                                    dead_like_live=True)
    upper = upper.to(torch.float32).to(work.device)
    mask = torch.ones(rows, columns, dtype=torch.bool, device=work.device)
    if not (n or m) and sparsity == 0.0:
        return LayerPruneResult(original.clone(), mask, info, 0.0)
    # Inputs that are zero for every calibration sample: their weights change nothing the
    # calibration sees, so they are zeroed first (fasterprune's W[:, dead] = 0) and their
    # saliency 0 spends the pruning budget on them before any live weight.
    zero_input = (torch.diagonal(hessian) == 0).to(work.device)
    work[:, zero_input] = 0.0
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
        work[:, zero_input] = 0.0
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
