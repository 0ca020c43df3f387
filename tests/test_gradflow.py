"""Gradient-flow iterative pruning (core/gradflow.py)."""
import pytest
import torch

from core.gradflow import GradflowSettings, gradflow_prune, hard_mask, sparsity_at
from tiny_families import attention_unet as tiny_unet


def test_sparsity_schedules():
    assert sparsity_at(10, 10, 0.5) == pytest.approx(0.5)
    assert sparsity_at(1, 10, 0.5) == pytest.approx(0.5 * (1 - 0.9 ** 3))
    assert sparsity_at(5, 10, 0.4, "linear") == pytest.approx(0.2)
    values = [sparsity_at(k, 8, 0.6) for k in range(1, 9)]
    assert values == sorted(values)
    with pytest.raises(ValueError, match="sparsity_schedule"):
        sparsity_at(1, 2, 0.5, "exp")


def test_hard_mask_exact_count_and_n_m():
    scores = torch.randn(6, 8, 3, 3)
    assert int((~hard_mask(scores, 0.3)).sum()) == round(0.3 * scores.numel())
    mask = hard_mask(scores, 0.5, n=2, m=4)
    assert torch.all(mask.permute(0, 2, 3, 1).reshape(-1, 4).sum(-1) == 2)


def test_hessian_vector_product_matches_autograd_on_a_quadratic():
    # The score uses H g from double backward; check the identity d/dw (g . sg(g)) = H g.
    torch.manual_seed(0)
    matrix = torch.randn(5, 5)
    hessian = matrix @ matrix.T
    w = torch.randn(5, requires_grad=True)
    loss = 0.5 * w @ hessian @ w
    (gradient,) = torch.autograd.grad(loss, w, create_graph=True)
    (hessian_gradient,) = torch.autograd.grad((gradient * gradient.detach()).sum(), w)
    assert torch.allclose(hessian_gradient, hessian @ (hessian @ w.detach()), atol=1e-4)


def test_gradflow_reaches_target_sparsity_progressively():
    from diffusers import DDPMScheduler

    unet = tiny_unet()
    images = torch.rand(8, 1, 8, 8) * 2 - 1
    settings = GradflowSettings(sparsity=0.5, iterations=3, batch_size=4, schedule_params={"num_timesteps": 2})
    report = gradflow_prune(unet, DDPMScheduler(num_train_timesteps=1000), images, settings)
    levels = [row["sparsity"] for row in report.iterations]
    assert levels == sorted(levels) and levels[-1] == pytest.approx(0.5)
    means = [row["mask_mean"] for row in report.iterations]
    assert means == sorted(means, reverse=True) and 0.0 < means[-1] < 1.0  # soft, decreasing
    modules = dict(unet.named_modules())
    for name, mask in report.masks.items():
        assert int((~mask).sum()) == round(0.5 * mask.numel())
        assert torch.all(modules[name].weight[~mask] == 0)
        # the returned score ranks kept weights above pruned ones (granularities can aggregate it)
        assert float(report.scores[name][mask].min()) > float(report.scores[name][~mask].max())
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in report.iterations)


def test_gradflow_n_m_pattern_and_determinism():
    from diffusers import DDPMScheduler

    images = torch.rand(4, 1, 8, 8) * 2 - 1
    settings = GradflowSettings(sparsity=0.5, n=2, m=4, iterations=1, batch_size=4,
                                schedule_params={"num_timesteps": 1})
    first = gradflow_prune(tiny_unet(), DDPMScheduler(num_train_timesteps=1000), images, settings, apply=False)
    second = gradflow_prune(tiny_unet(), DDPMScheduler(num_train_timesteps=1000), images, settings, apply=False)
    for name, mask in first.masks.items():
        grouped = mask.permute(0, 2, 3, 1) if mask.dim() == 4 else mask
        assert torch.all(grouped.reshape(-1, 4).sum(-1) == 2)
        assert torch.equal(mask, second.masks[name])


def test_gradflow_through_the_engine():
    from diffusers import DDPMPipeline, DDPMScheduler

    from core.engine import prune
    from core.spec import PruneSpec

    dense = DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=1000))
    spec = PruneSpec(criterion="gradflow", granularity="unstructured", sparsity=0.3, calibration_data="generated",
                     schedule_params={"num_timesteps": 1}, calibration_batch_size=2,
                     criterion_params={"iterations": 2})
    result = prune(dense, spec)
    assert result.report.totals["sparsity"] == pytest.approx(0.3, abs=0.005)
    with pytest.raises(ValueError, match="sparsity_schedule"):
        PruneSpec(criterion="gradflow", criterion_params={"sparsity_schedule": "exp"})


def test_gradflow_settings_refuse_bad_values_before_any_work():
    for bad, field in ((dict(sparsity=1.0), "sparsity"), (dict(iterations=0), "iterations"),
                       (dict(n=4, m=4), "N:M"), (dict(sparsity_schedule="exp"), "sparsity_schedule")):
        with pytest.raises(ValueError, match=field):
            GradflowSettings(**bad)
    with pytest.raises(ValueError, match="GradflowSettings"):
        gradflow_prune(tiny_unet(), None, torch.zeros(1, 1, 8, 8), {"sparsity": 0.5})
