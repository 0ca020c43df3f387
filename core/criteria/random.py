"""``random``: the baseline, uniform random scores from a generator seeded by ``spec.seed``."""
from __future__ import annotations

import torch

from .base import Criterion, register_criterion


def random_scores(layers, stats, params, seed):
    generator = torch.Generator().manual_seed(int(seed))
    return {name: torch.rand(module.weight.shape, generator=generator).to(module.weight.device)
            for name, module in sorted(layers.items())}


register_criterion(Criterion("random", random_scores, description="baseline: uniform random scores"))
