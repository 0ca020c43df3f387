"""OBS-Diff (core/criteria/obs/): compensation beats masking, N:M holds, convs work, H is always safe."""
import copy

import pytest
import torch
from torch import nn

from core.criteria import obs
from tiny_families import attention_unet as tiny_unet


def correlated_inputs(count=1024, features=64, seed=0):
    """Inputs with correlated features of different scales (as real activations have)."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.eye(features) + 0.5 * torch.randn(features, features, generator=generator) / features ** 0.5
    scales = torch.exp(0.5 * torch.randn(features, generator=generator))
    return torch.randn(count, features, generator=generator) @ mixing * scales


def output_error(layer_weight, new_weight, inputs):
    return float((inputs @ layer_weight.T - inputs @ new_weight.T).pow(2).sum())


def test_obs_beats_magnitude_and_uncompensated_mask_on_linear():
    inputs = correlated_inputs()
    layer = nn.Linear(64, 32, bias=False)
    original = layer.weight.detach().clone()
    with obs.collect_hessians({"layer": layer}) as collector:
        layer(inputs)
    hessian = collector.hessian("layer")
    assert torch.allclose(hessian, 2 * inputs.double().T @ inputs.double() / inputs.shape[0], rtol=1e-4, atol=1e-4)

    result = obs.prune_layer(layer, hessian, 0.5)
    assert float((~result.mask).float().mean()) == 0.5
    assert torch.equal(layer.weight == 0, ~result.mask)

    magnitude_mask = torch.zeros(original.numel(), dtype=torch.bool)
    magnitude_mask[torch.argsort(original.abs().flatten(), descending=True)[: original.numel() // 2]] = True
    magnitude_mask = magnitude_mask.view_as(original)
    obs_error = output_error(original, layer.weight.detach(), inputs)
    magnitude_error = output_error(original, original * magnitude_mask, inputs)
    same_mask_error = output_error(original, original * result.mask, inputs)
    assert obs_error < magnitude_error
    assert obs_error < same_mask_error
    # the reported error is the Hessian form of the same quantity
    assert result.error == pytest.approx(2 * obs_error / (inputs.shape[0] * 32), rel=1e-3)


@pytest.mark.parametrize("pattern", [(2, 4), (4, 8)])
def test_n_m_pattern_holds_on_linear(pattern):
    n, m = pattern
    inputs = correlated_inputs(features=64)
    weight = torch.randn(16, 64)
    hessian = 2 * inputs.T @ inputs / inputs.shape[0]
    # block rounded to a multiple of M
    result = obs.sparsegpt_prune(weight, hessian, n=n, m=m, settings=obs.SparseGPTSettings(blocksize=20))
    kept_per_group = result.mask.reshape(16, -1, m).sum(-1)
    assert torch.all(kept_per_group == n)
    assert torch.all(result.weight[~result.mask] == 0)
    assert output_error(weight, result.weight, inputs) < output_error(weight, weight * result.mask, inputs)


def test_n_m_refuses_width_not_divisible():
    with pytest.raises(ValueError, match="divisible"):
        obs.sparsegpt_prune(torch.randn(4, 6), torch.eye(6), n=2, m=4)
    with pytest.raises(ValueError, match="N:M"):
        obs.sparsegpt_prune(torch.randn(4, 8), torch.eye(8), n=4, m=4)


def test_conv_unfold_columns_match_the_weight_layout_and_obs_compensates():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 6, 3, padding=1)
    images = torch.randn(4, 8, 10, 10)
    images = images + 0.8 * images.roll(1, dims=1)  # correlated input channels
    with obs.collect_hessians({"conv": conv}) as collector, torch.no_grad():
        expected = conv(images)
    columns = obs.layer_inputs(conv, images)
    flat = columns @ obs.weight_matrix(conv).T + conv.bias
    assert torch.allclose(flat, expected.permute(0, 2, 3, 1).reshape(-1, 6), atol=1e-5)
    assert obs.matrix_to_weight(obs.weight_matrix(conv), conv).equal(conv.weight.detach())

    pruned = copy.deepcopy(conv)
    result = obs.prune_layer(pruned, collector.hessian("conv"), n=2, m=4)
    assert result.mask.shape == conv.weight.shape
    # N:M groups run along the input channels at each kernel position: (out, kh, kw, in)
    assert torch.all(result.mask.permute(0, 2, 3, 1).reshape(-1, 4).sum(-1) == 2)
    with torch.no_grad():
        compensated = float((pruned(images) - expected).pow(2).sum())
        masked = float((nn.functional.conv2d(images, conv.weight * result.mask, conv.bias, padding=1) - expected).pow(2).sum())
    assert compensated < masked


@pytest.mark.parametrize("kind", ["zeros", "rank-one", "indefinite", "nan"])
def test_singular_or_broken_hessian_never_gives_nan(kind):
    torch.manual_seed(0)
    weight = torch.randn(8, 16)
    if kind == "zeros":
        hessian = torch.zeros(16, 16)
    elif kind == "rank-one":
        vector = torch.randn(16, 1)
        hessian = vector @ vector.T
    elif kind == "indefinite":
        hessian = torch.diag(torch.linspace(-1.0, 1.0, 16))
        hessian[0, 1] = hessian[1, 0] = 5.0
    else:
        hessian = torch.eye(16)
        hessian[3, 4] = float("nan")
    result = obs.sparsegpt_prune(weight, hessian, 0.5)
    assert torch.isfinite(result.weight).all()
    assert float((~result.mask).float().mean()) == 0.5
    heads = obs.obs_remove_column_groups(weight, hessian, [list(range(i, i + 4)) for i in range(0, 16, 4)], 2)
    assert torch.isfinite(heads.weight).all()


@pytest.mark.parametrize("pattern", [None, (2, 4)])
def test_dead_input_columns_are_pruned_first_whatever_the_input_scale(pattern):
    """Inputs that are zero for every calibration sample (``H_ii = 0``): as in SparseGPT's
    ``fasterprune`` their weights are set to 0 and spend the pruning budget first (unstructured:
    saliency 0; N:M: the pruned slots of their group), and the damping comes from the live
    columns, so the mask is the same when every input is scaled by 0.05."""
    inputs = correlated_inputs(features=64)
    dead = [3, 4, 17, 40, 41, 63]  # at most 2 per group of 4 consecutive columns
    inputs[:, dead] = 0.0
    weight = torch.randn(16, 64, generator=torch.Generator().manual_seed(5))
    options = dict(n=pattern[0], m=pattern[1]) if pattern else {}
    masks = []
    for scale in (1.0, 0.05):
        layer = nn.Linear(64, 16, bias=False)
        with torch.no_grad():
            layer.weight.copy_(weight)
        with obs.collect_hessians({"layer": layer}) as collector, torch.no_grad():
            layer(inputs * scale)
        hessian = collector.hessian("layer")
        assert torch.all(torch.diagonal(hessian)[dead] == 0)
        result = obs.prune_layer(layer, hessian, 0.5, **options)
        assert torch.all(layer.weight[:, dead] == 0)  # zeroed, as the reference does
        assert not result.mask[:, dead].any()  # and counted as pruned, within the budget
        assert float((~result.mask).float().mean()) == 0.5
        if pattern:
            assert torch.all(result.mask.reshape(16, -1, 4).sum(-1) == 2)
        masks.append(result.mask)
    assert torch.equal(masks[0], masks[1])


def test_damping_is_retried_when_cholesky_fails():
    # positive diagonal but indefinite (eigenvalues 3 and -1): 0.01 * mean(diag) cannot fix it
    hessian = torch.block_diag(*[torch.tensor([[1.0, 2.0], [2.0, 1.0]])] * 3)
    upper, _, info = obs.damped_inverse(hessian, percdamp=0.01)
    assert info.retries == 3 and info.damping == pytest.approx(10.0) and not info.fallback
    assert torch.isfinite(upper).all()
    assert torch.allclose(upper.T @ upper, torch.linalg.inv(hessian.double() + 10.0 * torch.eye(6)), atol=1e-10)


def test_hooks_are_removed_even_on_error():
    layer = nn.Linear(4, 4)
    with pytest.raises(RuntimeError):
        with obs.collect_hessians({"layer": layer}):
            assert len(layer._forward_hooks) == 1
            raise RuntimeError("boom")
    assert len(layer._forward_hooks) == 0


def test_hessian_uses_timestep_weights():
    layer = nn.Linear(3, 2)
    first, second = torch.randn(5, 3), torch.randn(7, 3)
    with obs.collect_hessians({"layer": layer}) as collector:
        collector.timestep_weight = 1.2
        layer(first)
        collector.timestep_weight = 0.8
        layer(second)
        collector.timestep_weight = 0.0  # skipped
        layer(torch.randn(9, 3))
    expected = 2 * (1.2 * first.T.double() @ first.double() + 0.8 * second.T.double() @ second.double())
    expected /= 1.2 * 5 + 0.8 * 7
    assert torch.allclose(collector.hessian("layer"), expected, rtol=1e-5, atol=1e-6)


def test_attention_head_removal_compensates_and_shrinks():
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=4, dim_head=4, residual_connection=True).eval()
    tokens = torch.randn(3, 10, 16)
    with obs.collect_hessians({"out": attn.to_out[0]}) as collector, torch.no_grad():
        dense = attn(tokens)
    uncompensated = copy.deepcopy(attn)
    result = obs.prune_attention_heads(attn, collector.hessian("out"), 2)
    assert attn.heads == 2 and attn.inner_dim == 8
    assert attn.to_q.weight.shape == (8, 16) and attn.to_out[0].weight.shape == (16, 8)
    with torch.no_grad():
        pruned_output = attn(tokens)
        keep = [c for h in range(4) if h not in result.removed for c in range(4 * h, 4 * h + 4)]
        for projection in (uncompensated.to_q, uncompensated.to_k, uncompensated.to_v):
            projection.weight.data = projection.weight.data[keep]
        uncompensated.to_out[0].weight.data = uncompensated.to_out[0].weight.data[:, keep]
        uncompensated.heads, uncompensated.inner_dim = 2, 8
        dropped_output = uncompensated(tokens)
    assert float((pruned_output - dense).pow(2).sum()) < float((dropped_output - dense).pow(2).sum())


def test_joint_attention_heads_compensate_both_output_projections():
    """SD3's joint attention: a head is read by ``to_out.0`` (image tokens) and ``to_add_out``
    (context tokens); with both Hessians OBS ranks heads by their summed error and compensates both."""
    from diffusers.models.attention_processor import Attention, JointAttnProcessor2_0

    from core.models.transformer_cuts import remove_heads

    torch.manual_seed(0)
    attn = Attention(query_dim=16, added_kv_proj_dim=16, dim_head=4, heads=4, out_dim=16, context_pre_only=False,
                     bias=True, processor=JointAttnProcessor2_0()).eval()
    image, context = torch.randn(3, 10, 16), torch.randn(3, 6, 16)
    layers = {"out": attn.to_out[0], "context": attn.to_add_out}
    with obs.collect_hessians(layers) as collector, torch.no_grad():
        dense = attn(hidden_states=image, encoder_hidden_states=context)
    uncompensated = copy.deepcopy(attn)
    result = obs.prune_attention_heads(attn, collector.hessian("out"), 2, context_hessian=collector.hessian("context"))
    assert attn.heads == 2 and attn.to_add_out.in_features == 8 and attn.add_q_proj.out_features == 8
    remove_heads(uncompensated, [h for h in range(4) if h not in result.removed])  # the same cut, no OBS update
    with torch.no_grad():
        pruned = attn(hidden_states=image, encoder_hidden_states=context)
        dropped = uncompensated(hidden_states=image, encoder_hidden_states=context)
    for stream in range(2):  # image and context outputs: each closer to the dense one than the plain cut
        assert float((pruned[stream] - dense[stream]).pow(2).sum()) < float((dropped[stream] - dense[stream]).pow(2).sum())


def test_trajectory_through_the_adapter_is_the_same_ddim_as_before():
    """Exactness: ``sampling_trajectory`` (now ``adapter.sampler_step``) gives bit for bit the DDIM
    (eta = 0) walk OBS wrote by hand before, for each prediction type and with ``clip_sample``."""
    import math

    from diffusers import DDPMScheduler

    from core.models import adapter_for_module

    weights = obs.resolve_timestep_weights("log-decrease", {"num_steps": 4}, 1000)
    for options in (dict(), dict(prediction_type="v_prediction"), dict(prediction_type="sample", clip_sample=True),
                    dict(clip_sample=True)):
        scheduler = DDPMScheduler(num_train_timesteps=1000, **options)
        unet = tiny_unet()
        noise = obs.denoiser_noise(unet, 2, 0)
        trajectory = obs.sampling_trajectory(unet, scheduler, weights, noise)
        adapter, alphas = adapter_for_module(unet)[0], scheduler.alphas_cumprod.to(torch.float64)
        sample = noise.clone()
        for index, (t, weight) in enumerate(weights):  # a hand-written DDIM, step by step
            assert torch.equal(trajectory[index][0], sample) and trajectory[index][1:] == (t, weight)
            with torch.no_grad():
                epsilon = adapter.epsilon_from_prediction(scheduler, unet(sample, torch.full((2,), t)).sample, sample, t)
            alpha = float(alphas[t])
            previous = float(alphas[weights[index + 1][0]]) if index + 1 < len(weights) else 1.0
            clean = (sample - math.sqrt(1 - alpha) * epsilon) / math.sqrt(alpha)
            if scheduler.config.clip_sample:
                clean = clean.clamp(-1, 1)
                epsilon = (sample - math.sqrt(alpha) * clean) / math.sqrt(1 - alpha)
            sample = math.sqrt(previous) * clean + math.sqrt(1 - previous) * epsilon


def test_feedforward_neurons_removed_with_gated_activation():
    from diffusers.models.attention import FeedForward

    torch.manual_seed(0)
    feedforward = FeedForward(8, mult=2, activation_fn="geglu").eval()
    down = feedforward.net[-1]
    with obs.collect_hessians({"down": down}) as collector, torch.no_grad():
        feedforward(torch.randn(4, 5, 8))
    obs.prune_feedforward_neurons(feedforward, collector.hessian("down"), 6, chunk=2)
    assert down.in_features == 10 and feedforward.net[0].proj.out_features == 20
    assert feedforward(torch.randn(2, 3, 8)).shape == (2, 3, 8)


def test_obs_prune_denoiser_unstructured_exact_sparsity_and_groupwise_calibration():
    unet = tiny_unet()
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000)
    layers = {name: module for name, module in unet.named_modules()
              if name.startswith("down_blocks.0.") and isinstance(module, (nn.Conv2d, nn.Linear))}
    options = dict(sparsity=0.5, num_images=2, schedule_params={"num_steps": 3})
    one_group = copy.deepcopy(unet)
    report_one = obs.obs_prune_denoiser(one_group, scheduler, obs.ObsSettings(num_groups=1, **options),
                                        layers={n: dict(one_group.named_modules())[n] for n in layers})
    report = obs.obs_prune_denoiser(unet, scheduler, obs.ObsSettings(num_groups=2, **options), layers=layers)
    assert len(report.groups) == 2 and sum(len(g) for g in report.groups) == len(layers)
    assert [t for t, _ in report.timestep_weights] == [999, 500, 0]
    assert report.timestep_weights[0][1] == pytest.approx(1.2) and report.timestep_weights[-1][1] == pytest.approx(0.8)
    for name, mask in report.masks.items():
        assert float((~mask).float().mean()) == pytest.approx(0.5, abs=1 / mask.numel())
        assert torch.all(layers[name].weight[~mask] == 0)
    modules_one = dict(one_group.named_modules())
    first, last = report.groups[0][0], report.groups[-1][-1]
    # the first group sees the same (dense) inputs either way; the last group sees pruned ones
    assert torch.equal(modules_one[first].weight, layers[first].weight)
    assert not torch.equal(modules_one[last].weight, layers[last].weight)
    with torch.no_grad():
        assert torch.isfinite(unet(torch.randn(2, 1, 8, 8), torch.tensor([5, 700])).sample).all()


def test_obs_prune_denoiser_heads_updates_attention_and_runs():
    from diffusers import DDPMScheduler

    unet = tiny_unet()
    settings = obs.ObsSettings(granularity="head", sparsity=0.5, num_images=1, schedule_params={"num_steps": 2})
    report = obs.obs_prune_denoiser(unet, DDPMScheduler(num_train_timesteps=1000), settings)
    attentions = {n: m for n, m in unet.named_modules() if type(m).__name__ == "Attention"}
    assert set(report.removed_heads) == set(attentions)
    for module in attentions.values():
        assert module.heads == 2 and module.to_q.out_features == 8 and module.to_out[0].in_features == 8
    with torch.no_grad():
        assert torch.isfinite(unet(torch.randn(1, 1, 8, 8), torch.tensor([10])).sample).all()


def test_obs_refuses_adaptive_schedule_and_bad_granularity():
    from diffusers import DDPMScheduler

    with pytest.raises(ValueError, match="schedule"):
        obs.resolve_timestep_weights("threshold", None, 1000)
    with pytest.raises(ValueError, match="granularity"):
        obs.obs_prune_denoiser(tiny_unet(), DDPMScheduler(), obs.ObsSettings(granularity="channel"))


def test_obs_through_the_engine_compensates_kept_weights():
    from diffusers import DDPMPipeline, DDPMScheduler

    from core.criteria import CRITERIA
    from core.engine import prune
    from core.spec import PruneSpec

    assert "obs" in CRITERIA and CRITERIA["obs"].default_schedule == "log-decrease"
    dense = DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=1000))
    spec = PruneSpec(criterion="obs", granularity="2:4", schedule_params={"num_steps": 2}, calibration_batch_size=1)
    result = prune(dense, spec)
    assert result.report.totals["sparsity"] == pytest.approx(0.5, abs=0.005)
    assert list(result.report.timestep_weights["t"]) == [999, 0]
    layer = "down_blocks.0.resnets.0.conv2"
    pruned = dict(result.pipeline.unet.named_modules())[layer].weight
    original = dict(dense.unet.named_modules())[layer].weight
    kept = pruned != 0
    assert torch.all(kept.permute(0, 2, 3, 1).reshape(-1, 4).sum(-1) == 2)
    assert not torch.allclose(pruned[kept], original[kept])  # compensated, not only masked

    heads = prune(dense, PruneSpec(criterion="obs", granularity="head", sparsity=0.05,
                                   schedule_params={"num_steps": 2}, calibration_batch_size=1))
    attentions = [m for m in heads.pipeline.unet.modules() if type(m).__name__ == "Attention"]
    assert any(a.heads < 4 for a in attentions)
    with torch.no_grad():
        assert torch.isfinite(heads.pipeline.unet(torch.randn(1, 1, 8, 8), torch.tensor([3])).sample).all()


def test_least_squares_compensation_beats_dropping_columns():
    inputs = correlated_inputs(features=48)
    weight = torch.randn(16, 48, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    hessian = 2 * inputs.double().T @ inputs.double() / inputs.shape[0]
    kept = torch.tensor([c for c in range(48) if c % 3])  # a third of the columns removed
    compensated = obs._least_squares_columns(weight, hessian, kept, percdamp=1e-8)
    target = inputs.double() @ weight.T
    error_compensated = float((target - inputs.double()[:, kept] @ compensated.T).pow(2).sum())
    error_dropped = float((target - inputs.double()[:, kept] @ weight[:, kept].T).pow(2).sum())
    optimum = torch.linalg.lstsq(inputs.double()[:, kept], target).solution.T  # the best possible kept columns
    error_optimum = float((target - inputs.double()[:, kept] @ optimum.T).pow(2).sum())
    assert compensated.shape == (16, 32)
    assert error_compensated == pytest.approx(error_optimum, rel=1e-6)
    assert error_compensated < 0.9 * error_dropped
    # a singular Hessian is damped, never NaN
    assert torch.isfinite(obs._least_squares_columns(weight, torch.zeros(48, 48, dtype=torch.float64), kept)).all()


def test_obs_channel_granularity_cuts_channels_and_compensates_readers():
    from diffusers import DDPMPipeline, DDPMScheduler

    from core.engine import prune
    from core.spec import PruneSpec

    dense = DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=1000))
    before = copy.deepcopy(dense.unet.state_dict())
    options = dict(criterion="obs", granularity="channel", sparsity=0.3, schedule_params={"num_steps": 4},
                   calibration_batch_size=2)
    result = prune(dense, PruneSpec(**options))
    totals = result.report.totals
    assert abs(totals["sparsity"] - 0.3) <= 0.02 and totals["params_ratio"] < 0.8
    assert all(torch.equal(before[k], v) for k, v in dense.unet.state_dict().items())  # caller untouched
    assert prune(dense, PruneSpec(**options)).pipeline.unet.state_dict()["conv_out.weight"].equal(
        result.pipeline.unet.state_dict()["conv_out.weight"])  # deterministic

    # Compensation: the pruned model's noise prediction on the calibration-like inputs is closer
    # to the dense model's than the same cut without compensation.
    original = obs.obs_channel_scores
    try:
        def without_compensation(*args, **kwargs):
            scores, weights = original(*args, **kwargs)
            scores.compensate = None
            return scores, weights
        obs.obs_channel_scores = without_compensation
        plain = prune(dense, PruneSpec(**options))
    finally:
        obs.obs_channel_scores = original
    assert [p.shape for p in plain.pipeline.unet.parameters()] == [p.shape for p in result.pipeline.unet.parameters()]
    generator = torch.Generator().manual_seed(0)
    sample, t = torch.randn(8, 1, 8, 8, generator=generator), torch.tensor([999] * 4 + [500] * 4)
    with torch.no_grad():
        reference = dense.unet(sample, t).sample
        error_compensated = float((result.pipeline.unet(sample, t).sample - reference).pow(2).mean())
        error_plain = float((plain.pipeline.unet(sample, t).sample - reference).pow(2).mean())
    assert error_compensated < error_plain


def test_obs_head_cut_with_no_head_to_remove_leaves_the_model_dense():
    """A head ratio that removes no head (4 heads x 0.1): obs runs like the other criteria, nothing cut."""
    from diffusers import DDPMPipeline, DDPMScheduler

    from core.engine import prune
    from core.spec import PruneSpec

    dense = DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=1000))
    result = prune(dense, PruneSpec(criterion="obs", granularity="head", sparsity=None, channel_ratio=0.1,
                                    schedule_params={"num_steps": 2}, calibration_batch_size=1))
    assert result.report.totals["sparsity"] == 0.0
    pruned, original = result.pipeline.unet.state_dict(), dense.unet.state_dict()
    assert pruned.keys() == original.keys() and all(torch.equal(pruned[k], original[k]) for k in original)


def test_obs_settings_refuse_bad_values():
    for bad, field in ((dict(num_groups=0), "num_groups"), (dict(num_images=0), "num_images"),
                       (dict(blocksize=0), "blocksize"), (dict(percdamp=-1.0), "percdamp")):
        with pytest.raises(ValueError, match=field):
            obs.ObsSettings(**bad)
    with pytest.raises(ValueError, match="blocksize"):
        obs.SparseGPTSettings(blocksize=0)
