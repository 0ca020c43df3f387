"""``unstructured``: per layer, the ``sparsity`` fraction of the lowest-scored weights is zeroed
(layer-wise, so every prunable layer loses the same fraction and the total is exact)."""
from __future__ import annotations

import torch

from ..criteria import prunable_layers
from .base import Granularity, GranularityOutcome, _block_importance, _no_check, register_granularity


RADIX_CHUNK = 1 << 22  # entries per histogram pass of lowest_mask


def lowest_mask(score: torch.Tensor, count: int) -> torch.Tensor:
    """Bool mask of ``score``'s shape marking its ``count`` lowest entries, ties taken in index
    order: exactly the first ``count`` entries of a stable ascending sort, in linear time and
    with one byte of scratch per entry.

    For non-negative float32 scores (every criterion's) the bit patterns read as int32 sort like
    the values, so the threshold (the ``count``-th smallest value) is found by a two-level radix
    select: a histogram of the high 16 bits finds its bucket, a histogram of the low 16 bits of
    that bucket's entries the value (each pass in chunks, so the scratch stays small).
    ``kthvalue``, which copies the scores and allocates an index per entry, serves the rest."""
    flat = score.reshape(-1)
    if count <= 0:
        return torch.zeros(flat.shape, dtype=torch.bool, device=flat.device).view_as(score)
    if count >= flat.numel():
        return torch.ones(flat.shape, dtype=torch.bool, device=flat.device).view_as(score)
    if flat.dtype == torch.float32 and bool(flat.min() >= 0):
        bits = flat.view(torch.int32)
        chunks = bits.split(RADIX_CHUNK)
        high = sum(torch.bincount(chunk >> 16, minlength=1 << 15) for chunk in chunks)
        below = torch.cumsum(high, 0)
        bucket = int(torch.searchsorted(below, count))  # first bucket whose running count reaches count
        before = int(below[bucket - 1]) if bucket else 0
        low = sum(torch.bincount(chunk[(chunk >> 16) == bucket] & 0xFFFF, minlength=1 << 16) for chunk in chunks)
        value = int(torch.searchsorted(torch.cumsum(low, 0), count - before))
        threshold = (bucket << 16) | value
        lowest = bits < threshold
        ties = bits == threshold
    else:
        threshold = torch.kthvalue(flat, count).values
        lowest = flat < threshold
        ties = flat == threshold
    lowest[torch.nonzero(ties).flatten()[: count - int(torch.count_nonzero(lowest))]] = True
    return lowest.view_as(score)


def apply_unstructured(model, scores, spec, progress=None):
    outcome = GranularityOutcome(model=model)
    for name, module in prunable_layers(model).items():
        score = scores[name]
        count = int(round(spec.sparsity * score.numel()))
        pruned = lowest_mask(score.float(), count).to(module.weight.device)
        with torch.no_grad():
            module.weight.mul_((~pruned).view_as(module.weight).to(module.weight.dtype))  # w * 0, as a mask multiplies
        outcome.importance[name] = _block_importance(score)
        del score, pruned
    return outcome


register_granularity(Granularity("unstructured", apply_unstructured, _no_check, False, "single weights, layer-wise"))
