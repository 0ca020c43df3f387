"""``magnitude``: ``|w|^p``; summed over a channel's group this is Torch-Pruning's
``GroupMagnitudeImportance`` without normaliser; default ``p=1`` (Diff-Pruning's baseline)."""
from __future__ import annotations

from .base import Criterion, register_criterion


def magnitude_scores(layers, stats, params, seed):
    p = params["p"]
    return {name: module.weight.detach().abs().pow(p) for name, module in layers.items()}


def _check_p(value):
    if value not in (1, 2):
        raise ValueError(f"criterion_params.p of criterion 'magnitude' must be 1 or 2, got {value!r}")


register_criterion(Criterion("magnitude", magnitude_scores, defaults={"p": 1}, checks={"p": _check_p},
                             description="baseline: |w|^p (Diff-Pruning's magnitude baseline: p=1)"))
