"""``magnitude``: ``|w|^p``; summed over a channel's group this is Torch-Pruning's
``GroupMagnitudeImportance`` without normaliser; default ``p=1`` (Diff-Pruning's baseline)."""
from __future__ import annotations

import torch

from .base import Criterion, register_criterion
from .scores import LayerScores


def magnitude_scores(layers, stats, params, seed):
    p = params["p"]
    # per layer, upcast one layer at a time (an fp16 model's |w|^p in float32)
    return LayerScores(layers, lambda name, module: _upcast(module.weight).abs_().pow_(p) if p != 1
                       else _upcast(module.weight).abs_())


def _upcast(weight):
    # a float32 copy to work on in place (an fp16 model's weights are upcast one layer at a time)
    return weight.detach().to(dtype=torch.float32, copy=True)


def _check_p(value):
    if value not in (1, 2):
        raise ValueError(f"criterion_params.p of criterion 'magnitude' must be 1 or 2, got {value!r}")


register_criterion(Criterion("magnitude", magnitude_scores, defaults={"p": 1}, checks={"p": _check_p},
                             description="baseline: |w|^p (Diff-Pruning's magnitude baseline: p=1)"))
