"""``N:M``: in every group of M consecutive input weights (input channels at a fixed output channel
and kernel position) the N highest-scored weights are kept ("2:4" keeps 2 of 4, the pattern of
NVIDIA's sparse tensor cores): sparsity 1 - N/M. ``nm_keep_mask`` is the engine's one N:M layout helper."""
from __future__ import annotations

import torch

from ..criteria import prunable_layers
from .base import Granularity, GranularityOutcome, _block_importance, register_granularity


PAIRWISE_MAX_M = 8  # N:M patterns up to this M rank by pairwise comparison (nm_keep_mask)


def _nm_view(tensor: torch.Tensor, m: int) -> torch.Tensor:
    """(out, in, kh, kw) -> (out*kh*kw*in/m, m): groups of m consecutive input channels."""
    if tensor.dim() == 4:
        tensor = tensor.permute(0, 2, 3, 1)
    return tensor.reshape(-1, m)


def nm_keep_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The one N:M layout helper: a bool mask of ``scores``' shape keeping the ``n`` highest-scored
    of every ``m`` consecutive input weights (conv: input channels at a fixed output channel and
    kernel position, the ``(out, kh, kw, in)`` order of OBS's weight matrix). Ties are broken by
    position, so the mask is deterministic."""
    groups = _nm_view(scores.float(), m)
    if m <= PAIRWISE_MAX_M:
        # Rank within each group by pairwise comparison (m*m passes over 1/m of the entries, one
        # byte per entry): a weight's rank counts the higher-scored ones and the equal ones before
        # it, the order of a stable descending sort, without its value copy and int64 indices.
        rank = torch.zeros(groups.shape, dtype=torch.uint8, device=groups.device)
        for i in range(m):
            for j in range(m):
                if i != j:
                    rank[:, i] += (groups[:, j] > groups[:, i]) if j > i else (groups[:, j] >= groups[:, i])
        keep = rank < n
    else:
        order = torch.sort(groups, dim=1, descending=True, stable=True).indices[:, :n]
        keep = torch.zeros_like(groups, dtype=torch.bool)
        keep.scatter_(1, order, True)
    if scores.dim() == 4:
        out, inp, kh, kw = scores.shape
        return keep.reshape(out, kh, kw, inp).permute(0, 3, 1, 2)
    return keep.reshape(scores.shape)


def check_nm(model, spec):
    n, m = spec.nm_pattern
    for name, module in prunable_layers(model).items():
        width = module.weight.shape[1]
        if width % m:
            raise ValueError(
                f"granularity {spec.granularity!r} needs the input width of every prunable layer divisible by M={m}; "
                f"layer {name!r} has {width} input channels"
            )


def apply_nm(model, scores, spec, progress=None):
    n, m = spec.nm_pattern
    check_nm(model, spec)
    outcome = GranularityOutcome(model=model)
    for name, module in prunable_layers(model).items():
        score = scores[name]
        mask = nm_keep_mask(score, n, m)
        with torch.no_grad():
            module.weight.mul_(mask.to(module.weight.dtype).to(module.weight.device))
        outcome.importance[name] = _block_importance(score)
    return outcome


register_granularity(Granularity("N:M", apply_nm, check_nm, False, "N of every M consecutive input weights kept (2:4, 4:8)"))
