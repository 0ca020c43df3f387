"""``random``: the baseline, uniform random scores from a generator seeded by ``spec.seed``."""
from __future__ import annotations

import torch

from .base import Criterion, register_criterion
from .scores import seeded_layer_scores


def _uniform(shape, generator):
    return torch.rand(shape, generator=generator)


def random_scores(layers, stats, params, seed):
    # One generator over the layers in sorted order, drawn one layer at a time (never all resident).
    return seeded_layer_scores(layers, seed, _uniform)


register_criterion(Criterion("random", random_scores, description="baseline: uniform random scores"))
