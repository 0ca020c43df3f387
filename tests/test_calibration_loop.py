"""The one calibration loop: ``core.criteria.calibration_loop`` is what the gradient
criteria, ``core/gradflow.py`` and the cost estimate all run."""
import pytest
import torch
import torch.nn.functional as F

from core import criteria as criteria_module
from core.criteria import CalibrationLoopSettings, calibration_loop, calibration_noises, denoising_loss
from tiny_families import attention_unet as tiny_unet

pytestmark = pytest.mark.usefixtures("one_thread")


def scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000)


def adapter_of(unet):
    from core.models import adapter_for_module

    return adapter_for_module(unet)[0]


def test_loop_order_groups_grad_mode_and_progress():
    unet = tiny_unet()
    generator = torch.Generator().manual_seed(0)
    batches = [torch.rand(2, 1, 8, 8, generator=generator) * 2 - 1 for _ in range(2)]
    plan = [(1, 1.0), (2, 0.5), (300, 0.0), (400, 0.0), (999, 0.25)]
    passes, events, messages = [], [], []
    calibration_loop(unet, scheduler(), batches, calibration_noises(batches, generator), plan, denoising_loss,
                     passes.append, CalibrationLoopSettings(
                         adapter=adapter_of(unet), group_size=2,
                         on_batch_start=lambda b: events.append(("start", b)),
                         on_batch_end=lambda b: events.append(("end", b)),
                         progress=lambda fraction, message: messages.append((fraction, message)),
                         progress_span=(0.5, 1.0)))
    assert [(p.batch_index, p.timesteps) for p in passes] == [(b, ts) for b in (0, 1) for ts in ([1, 2], [300, 400], [999])]
    assert [p.group for p in passes[:3]] == [[(1, 1.0), (2, 0.5)], [(300, 0.0), (400, 0.0)], [(999, 0.25)]]
    assert [p.weighted for p in passes] == [True, False, True] * 2
    # a weighted pass carries its graph (the callback backpropagates), an unweighted one does not
    assert passes[0].losses.requires_grad and not passes[1].losses.requires_grad
    assert passes[0].losses.shape == (2,) and passes[2].losses.shape == (1,)
    assert events == [("start", 0), ("end", 0), ("start", 1), ("end", 1)]
    fractions = [fraction for fraction, _ in messages]
    assert fractions == sorted(fractions) and 0.5 <= fractions[0] and fractions[-1] <= 1.0
    assert messages[0][1] == "calibrating t=1..2 (batch 1/2)" and messages[2][1] == "calibrating t=999 (batch 1/2)"

    skipped = []
    calibration_loop(unet, scheduler(), batches, calibration_noises(batches, generator), plan, denoising_loss,
                     skipped.append,
                     CalibrationLoopSettings(adapter=adapter_of(unet), group_size=1, skip_unweighted=True))
    assert [p.timesteps for p in skipped] == [[1], [2], [999]] * 2


def test_gradflow_importance_is_the_loop_it_replaced():
    """gradflow's loss, g and H g through the shared loop equal its earlier hand-written loop
    (``sum_b sum_t a_t / sum a * MSE(eps_theta(x_t, t; w_eff), eps) / B``) up to the order of the mean."""
    from torch.func import functional_call

    from core.criteria import prunable_layers
    from core.gradflow import _math_attention, gradient_flow_importance

    unet = tiny_unet()
    generator = torch.Generator().manual_seed(1)
    batches = [torch.rand(3, 1, 8, 8, generator=generator) * 2 - 1 for _ in range(2)]
    noises = calibration_noises(batches, generator)
    plan = [(7, 0.3), (333, 0.0), (999, 0.7)]
    layers = prunable_layers(unet)
    names = {f"{name}.weight" for name in layers}
    base = {name: p.detach() for name, p in unet.named_parameters() if name not in names}

    def effective():
        return {f"{name}.weight": (module.weight.detach() * 0.9).requires_grad_(True) for name, module in layers.items()}

    loss, grads, hessian_gradients = gradient_flow_importance(unet, base, effective(), batches, scheduler(), plan, noises)

    weights = effective()
    expected_loss, total_weight = 0.0, sum(weight for _, weight in plan)
    noise_scheduler = scheduler()
    with _math_attention():  # double backward needs the math attention kernel
        for clean, noise in zip(batches, noises):
            for t, weight in plan:
                if weight <= 0:
                    continue
                timesteps = torch.full((clean.shape[0],), t, dtype=torch.long)
                noisy = noise_scheduler.add_noise(clean, noise, timesteps)
                prediction = functional_call(unet, {**base, **weights}, (noisy, timesteps)).sample
                expected_loss = expected_loss + (weight / total_weight) * F.mse_loss(prediction, noise) / len(batches)
        expected_grads = torch.autograd.grad(expected_loss, list(weights.values()), create_graph=True)
        expected_hg = torch.autograd.grad(sum((g * g.detach()).sum() for g in expected_grads), list(weights.values()))
    assert loss == pytest.approx(float(expected_loss.detach()), rel=1e-6)
    for name, grad, hg in zip(weights, expected_grads, expected_hg):
        assert torch.allclose(grads[name], grad.detach(), rtol=1e-5, atol=1e-9 + 1e-5 * float(grad.detach().abs().max())), name
        assert torch.allclose(hessian_gradients[name], hg, rtol=1e-4, atol=1e-5 * float(hg.abs().max())), name


def test_cost_times_the_calibration_pass(tiny_model, monkeypatch):
    """measure_rate times ``calibration_loop`` with the criteria's ``GradientCollector``, one group of
    ``timesteps_per_pass(batch)`` timesteps, and leaves the pipeline's model untouched."""
    import core.cost as cost
    from core import PruneSpec, load_pipeline

    pipeline = load_pipeline(tiny_model)
    calls = []

    def recording_loop(*args, **kwargs):
        calls.append((args[4], kwargs["settings"].group_size, getattr(args[6], "__self__", None)))
        return calibration_loop(*args, **kwargs)

    monkeypatch.setattr(cost, "calibration_loop", recording_loop)
    monkeypatch.setattr(cost, "_RATE_CACHE", {})
    monkeypatch.setattr(criteria_module, "CALIBRATION_CHUNK_SAMPLES", 8)
    spec = PruneSpec(criterion="taylor", granularity="unstructured", sparsity=0.5, calibration_batch_size=2)
    rate = cost.measure_rate(pipeline, spec, repeats=2)
    assert rate > 0 and len(calls) == 3
    plan, group_size, collector = calls[0]
    assert group_size == 4 and len(plan) == 4 and isinstance(collector, criteria_module.GradientCollector)
    assert all(p.grad is None for p in pipeline.unet.parameters())


def test_threshold_walk_passes_are_the_first_batch_gradient_passes():
    """The threshold walk costs no forward pass of its own: on the first batch each of its passes is
    backpropagated once the walk has gone past it (the stopping pass with zero weight after the
    stop), so calibrate runs ceil(visited / chunk) passes per batch, and the gradients equal those
    of the same timesteps given as an explicit plan."""
    import math

    from core.criteria import CalibrationSettings, calibrate, timesteps_per_pass

    generator = torch.Generator().manual_seed(0)
    batches = [torch.rand(4, 1, 8, 8, generator=generator) * 2 - 1 for _ in range(2)]
    calls = []
    walked_unet = tiny_unet()
    hook = walked_unet.register_forward_pre_hook(lambda module, args, kwargs: calls.append(1), with_kwargs=True)
    # a random network never falls below the threshold: the walk stops at max_timesteps, inside a pass
    walked = calibrate(walked_unet, scheduler(), batches,
                       CalibrationSettings("denoising", "threshold", {"threshold": 0.5, "max_timesteps": 40}, False, 0))
    hook.remove()
    visited = [t for t, _ in walked.timestep_weights]
    assert visited == list(range(40)) and walked.stopped_at == 39 and timesteps_per_pass(4) == 16
    assert len(calls) == 2 * math.ceil(len(visited) / timesteps_per_pass(4))
    explicit = calibrate(tiny_unet(), scheduler(), batches,
                         CalibrationSettings("denoising", "custom", {"timesteps": [[t, 1.0] for t in visited]}, False, 0))
    for name, gradient in explicit.gradients.items():
        torch.testing.assert_close(walked.gradients[name], gradient, rtol=1e-4, atol=1e-6)
    assert walked.losses.keys() == explicit.losses.keys()
