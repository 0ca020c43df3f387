"""``l1``: Towards Tiny Diffusion. ``I(w) = alpha |w| + beta |dL/dw|`` with each term normalised by its
per-layer mean (the paper gives no values: defaults alpha = beta = 1); the gradient is that of the
denoising loss over the criterion's schedule (default ``uniform``)."""
from __future__ import annotations

import math

from .base import Criterion, register_criterion
from .scores import LayerScores


def l1_scores(layers, stats, params, seed):
    # Towards Tiny Diffusion: I(w) = alpha |w| + beta |dL/dw|, each term normalised per layer.
    alpha, beta = params["alpha"], params["beta"]

    def score_layer(name, module):
        weight = module.weight.detach().float().abs()
        grad = stats.gradients[name].float().abs()
        return alpha * weight / weight.mean().clamp_min(1e-12) + beta * grad / grad.mean().clamp_min(1e-12)

    return LayerScores(layers, score_layer)


def _check_l1_not_all_zero(params):
    if params["alpha"] == 0 and params["beta"] == 0:
        raise ValueError("criterion_params.alpha and beta of criterion 'l1' are both 0: every score would tie; "
                         "allowed: alpha >= 0 and beta >= 0, not both 0")


def _check_nonnegative(name):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"criterion_params.{name} of criterion 'l1' must be a number >= 0, got {value!r}")
    return check


register_criterion(Criterion("l1", l1_scores, loss="denoising", default_schedule="uniform",
                             default_calibration_batches=1, default_calibration_batch_size=8,
                             defaults={"alpha": 1.0, "beta": 1.0},
                             checks={"alpha": _check_nonnegative("alpha"), "beta": _check_nonnegative("beta")},
                             check_all=_check_l1_not_all_zero,
                             description="Towards Tiny Diffusion: alpha|w| + beta|dL/dw|, per-layer normalised"))
