"""``nici``: NiCI-Pruning (IEEE TIP 2025), following its public code. ``L_t = MSE(eps_theta(x0, t), x0)``
(clean image in, compared with the clean image), the ``interval`` schedule, zero_grad once per
batch, Taylor ``|w * g|`` per batch, summed over batches."""
from __future__ import annotations

from .base import Criterion, register_criterion
from .scores import LayerScores


def nici_scores(layers, stats, params, seed):
    # NiCI-Pruning: Taylor importance per batch, summed over batches (the sums calibration kept);
    # one batch: that batch's |w * g|, computed one layer at a time from its gradient.
    if not stats.taylor_per_batch_sum:
        return LayerScores(layers, lambda name, module: module.weight.detach().float().mul(stats.gradients[name]).abs_())
    return LayerScores(layers, lambda name, module: stats.taylor_per_batch_sum[name].clone())


register_criterion(Criterion("nici", nici_scores, loss="clean-image", default_schedule="interval", zero_grad_per_batch=True,
                             default_calibration_batches=1, default_calibration_batch_size=4,
                             description="NiCI-Pruning: clean-image loss, interval schedule, |w * g| summed over batches"))
