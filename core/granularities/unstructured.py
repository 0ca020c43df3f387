"""``unstructured``: per layer, the ``sparsity`` fraction of the lowest-scored weights is zeroed
(layer-wise, so every prunable layer loses the same fraction and the total is exact)."""
from __future__ import annotations

import torch

from ..criteria import prunable_layers
from .base import Granularity, GranularityOutcome, _block_importance, _no_check, register_granularity


def apply_unstructured(unet, scores, spec, progress=None):
    outcome = GranularityOutcome(unet=unet)
    for name, module in prunable_layers(unet).items():
        score = scores[name]
        count = int(round(spec.sparsity * score.numel()))
        mask = torch.ones(score.numel(), dtype=module.weight.dtype, device=module.weight.device)
        if count:
            order = torch.argsort(score.flatten().float().cpu(), stable=True)[:count]
            mask[order.to(mask.device)] = 0
        with torch.no_grad():
            module.weight.mul_(mask.view_as(module.weight))
        outcome.importance[name] = _block_importance(score)
    return outcome


register_granularity(Granularity("unstructured", apply_unstructured, _no_check, False, "single weights, layer-wise"))
