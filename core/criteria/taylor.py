"""``taylor``: Diff-Pruning (Fang et al., NeurIPS 2023). Denoising loss ``MSE(eps_theta(x_t, t), eps)``,
gradients accumulated over the ``threshold`` schedule with no zero_grad between timesteps (nor
between batches), score ``|w * g|`` (the first-order Taylor term; Torch-Pruning
``TaylorImportance(multivariable=False)`` summed over the group)."""
from __future__ import annotations

from .base import Criterion, register_criterion
from .scores import LayerScores


def taylor_scores(layers, stats, params, seed):
    # Diff-Pruning: gradients accumulated over all timesteps (and batches), then |w * g|, one layer at a time.
    return LayerScores(layers, lambda name, module: module.weight.detach().float().mul(stats.gradients[name]).abs_())


register_criterion(Criterion("taylor", taylor_scores, loss="denoising", default_schedule="threshold",
                             default_calibration_batches=1, default_calibration_batch_size=4,
                             description="Diff-Pruning: |w * g|, denoising loss, threshold schedule"))
