"""SD3 and SD3.5 (``StableDiffusion3Pipeline`` / ``SD3Transformer2DModel``) on tiny random pipelines:
flow-matching loss, full conditioning by keyword, guidance, every criterion x granularity through
the ``prune`` facade (run or refused with a reason), save/load identical, caller untouched."""
import pytest
import torch

import family_checks as checks
import tiny_families
from core.models import adapter_for

pytestmark = pytest.mark.usefixtures("one_thread")
GRANULARITIES = {  # granularity -> spec keywords reaching a sparsity these tiny models allow
    "unstructured": dict(sparsity=0.3), "2:4": dict(), "channel": dict(sparsity=0.3),
    "head": dict(sparsity=None, channel_ratio=0.25), "ffn": dict(sparsity=0.2), "block": dict(sparsity=0.35),
}
CRITERIA = ("random", "magnitude", "taylor", "nici", "l1", "gradflow", "obs")


@pytest.fixture(scope="module")
def sd3():
    return tiny_families.build("sd3")


@pytest.fixture(scope="module")
def sd35():
    return tiny_families.build("sd35")


def test_flow_matching_loss_with_full_conditioning(sd3):
    adapter = adapter_for(sd3)
    assert adapter.name == "sd3" and adapter.prediction_type(sd3.scheduler) == "flow"
    assert not hasattr(sd3.scheduler, "add_noise")
    transformer = sd3.transformer
    generator = torch.Generator().manual_seed(0)
    conditioning = adapter.sample_conditioning(sd3, 2, generator)
    assert conditioning["encoder_hidden_states"].shape[-1] == transformer.config.joint_attention_dim
    assert conditioning["pooled_projections"].shape == (2, transformer.config.pooled_projection_dim)
    clean, noise = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    timesteps = torch.tensor([100, 800])
    seen = {}
    handle = transformer.register_forward_pre_hook(lambda m, a, k: seen.update(k) or None, with_kwargs=True)
    try:
        loss = adapter.denoising_loss(transformer, sd3.scheduler, clean, noise, timesteps, conditioning)
    finally:
        handle.remove()
    s = (timesteps.float() / 1000).view(-1, 1, 1, 1)
    torch.testing.assert_close(seen["hidden_states"], (1 - s) * clean + s * noise)  # x_t = (1 - s) x0 + s eps
    torch.testing.assert_close(seen["timestep"].float(), timesteps.float())  # s * 1000
    assert set(seen) >= {"encoder_hidden_states", "pooled_projections"} and not any(k.startswith("uncond") for k in seen)
    with torch.no_grad():
        prediction = transformer(**seen).sample
    torch.testing.assert_close(loss, (prediction - (noise - clean)).pow(2).flatten(1).mean(1))  # target eps - x0


def test_guidance_mixes_the_null_and_the_prompt(sd3):
    adapter = adapter_for(sd3)
    sample, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor(500.0)
    conditioning = adapter.sample_conditioning(sd3, 2, torch.Generator().manual_seed(0), guidance_scale=1.0)
    null = {k.removeprefix("uncond_"): v for k, v in conditioning.items() if k.startswith("uncond_")}
    with torch.no_grad():
        cond = adapter.predict(sd3.transformer, sample, t, conditioning)
        uncond = adapter.predict(sd3.transformer, sample, t, null)
        for scale in (0.0, 1.0, 7.0):
            conditioning["guidance_scale"] = torch.full((2,), scale)
            guided = adapter.guided_prediction(sd3.transformer, sample, t, conditioning)
            torch.testing.assert_close(guided, uncond + scale * (cond - uncond), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(cond, uncond)


def test_user_prompts_and_bad_conditioning_inputs(sd3):
    adapter = adapter_for(sd3)
    own = adapter.sample_conditioning(sd3, 2, prompts=["a blue bird", "a green field"])
    again = adapter.sample_conditioning(sd3, 2, prompts=["a blue bird", "a green field"])
    assert torch.equal(own["encoder_hidden_states"], again["encoder_hidden_states"])
    with pytest.raises(ValueError, match="prompts"):
        adapter.sample_conditioning(sd3, 2, prompts=[""])
    with pytest.raises(ValueError, match="guidance_scale"):
        adapter.sample_conditioning(sd3, 2, guidance_scale=-1)
    with pytest.raises(ValueError, match="class_label"):
        adapter.sample_conditioning(sd3, 2, class_label=3)
    with pytest.raises(ValueError, match="ddpm"):
        adapter.sampling_scheduler(sd3, "ddpm")
    with pytest.raises(ValueError, match="dpm-solver"):
        adapter.sampling_scheduler(sd3, "dpm-solver++")


@pytest.mark.parametrize("granularity", sorted(GRANULARITIES))
@pytest.mark.parametrize("criterion", CRITERIA)
def test_every_criterion_and_granularity_runs_or_is_refused(sd3, criterion, granularity, monkeypatch):
    checks.wired_granularities(monkeypatch)
    try:
        spec = checks.spec_for(criterion, granularity, **GRANULARITIES[granularity])
    except ValueError as error:  # refused by the spec: the criterion does not offer this granularity
        assert criterion == "obs" and granularity == "block", error  # OBS-Diff removes heads and neurons, not blocks
        assert "not supported by criterion 'obs'" in str(error)
        return
    outcome, value = checks.prune_or_refuse(sd3, spec)
    if granularity == "channel":
        assert outcome == "refused" and "residual width" in value
        return
    assert outcome == "ran", value
    checks.check_pruned("sd3", sd3, value, granularity)
    if granularity == "head":
        heads = {a.heads for a in checks.denoiser_of(value.pipeline).modules() if hasattr(a, "add_q_proj") and a.to_q is not None}
        assert heads == {3}  # 4 heads, ratio 0.25


def test_obs_calibrates_on_the_flow_euler_trajectory(sd3):
    """OBS's trajectory walks the adapter's flow Euler step: the model sees ``x_s`` at ``s * 1000`` and
    predicts ``v = eps - x0``; ``x_{s'} = x_s + (s' - s) v``, ending at the clean sample (s' = 0)."""
    from core.criteria import obs

    adapter = adapter_for(sd3)
    assert adapter.sampler_label == "flow Euler"
    weights = obs.resolve_timestep_weights("log-decrease", {"num_steps": 3}, 1000)
    assert [t for t, _ in weights] == [999, 500, 0]
    noise = obs.denoiser_noise(sd3.transformer, 2, 0)
    conditioning = adapter.sample_conditioning(sd3, 2, torch.Generator().manual_seed(0))
    seen = []
    handle = sd3.transformer.register_forward_pre_hook(lambda m, a, k: seen.append(k["timestep"].clone()), with_kwargs=True)
    try:
        with adapter.conditioned(sd3.transformer, conditioning), torch.no_grad():
            trajectory = obs.sampling_trajectory(sd3.transformer, sd3.scheduler, weights, noise)
            velocities = [adapter.predict(sd3.transformer, x, torch.full((2,), float(t)), conditioning)
                          for x, t, _ in trajectory]
    finally:
        handle.remove()
    assert torch.equal(trajectory[0][0], noise) and [t for _, t, _ in trajectory] == [999, 500, 0]
    assert [float(t[0]) for t in seen[:3]] == [999.0, 500.0, 0.0] and all(t.is_floating_point() for t in seen)
    for (x, t, _), (x_next, t_next, _), velocity in zip(trajectory, trajectory[1:], velocities):
        torch.testing.assert_close(x_next, x + (t_next - t) / 1000 * velocity)
    last, t_last, _ = trajectory[-1]
    torch.testing.assert_close(adapter.sampler_step(sd3.scheduler, velocities[-1], last, t_last, None),
                               last - t_last / 1000 * velocities[-1])


def test_obs_on_sd3_is_deterministic_compensates_and_leaves_the_caller_untouched(sd3, monkeypatch):
    checks.wired_granularities(monkeypatch)
    before = checks.fingerprint(sd3)
    spec = checks.spec_for("obs", "unstructured", sparsity=0.3)
    first, again = checks.prune_or_refuse(sd3, spec), checks.prune_or_refuse(sd3, spec)
    assert first[0] == again[0] == "ran", first[1]
    first, again = first[1], again[1]
    assert first.report.totals["calibration_source"].endswith("flow Euler trajectories of the dense model)")
    assert first.report.totals["sparsity"] == pytest.approx(0.3, abs=0.01)
    pruned, repeated = first.pipeline.transformer.state_dict(), again.pipeline.transformer.state_dict()
    assert all(torch.equal(pruned[key], repeated[key]) for key in pruned)  # same spec and seed, same weights
    dense = sd3.transformer.state_dict()
    layer = "transformer_blocks.0.attn.to_out.0.weight"
    kept = pruned[layer] != 0
    assert not torch.allclose(pruned[layer][kept], dense[layer][kept])  # OBS compensated, not only masked
    heads = checks.prune_or_refuse(sd3, checks.spec_for("obs", "head", **GRANULARITIES["head"]))
    assert heads[0] == "ran", heads[1]
    block = heads[1].pipeline.transformer.transformer_blocks[0].attn
    assert block.heads == 3 and block.to_add_out.in_features == 3 * 8
    # the context stream's output projection is compensated too (joint attention): its kept head
    # columns differ from every choice of 3 of the dense heads' columns
    original = sd3.transformer.transformer_blocks[0].attn.to_add_out.weight.detach().view(-1, 4, 8)
    cut = block.to_add_out.weight.detach().view(-1, 3, 8)
    assert not any(torch.equal(cut, original[:, list(keep)]) for keep in ([0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]))
    assert checks.fingerprint(sd3) == before


@pytest.mark.parametrize("granularity", ["unstructured", "head", "ffn", "block"])
def test_sd35_qk_norm_and_dual_attention(sd35, granularity, monkeypatch):
    checks.wired_granularities(monkeypatch)
    outcome, result = checks.prune_or_refuse(sd35, checks.spec_for("magnitude", granularity, **GRANULARITIES[granularity]))
    assert outcome == "ran", result
    checks.check_pruned("sd35", sd35, result, granularity)
    first = checks.denoiser_of(result.pipeline).transformer_blocks[0]
    assert first.attn.norm_q.weight.shape == (8,)  # qk-norm over head_dim: untouched by any cut


@pytest.mark.parametrize("granularity, plain", [("unstructured", True), ("head", False), ("ffn", False), ("block", True)])
def test_save_load_gives_identical_samples(sd3, granularity, plain, tmp_path, monkeypatch):
    checks.wired_granularities(monkeypatch)
    outcome, result = checks.prune_or_refuse(sd3, checks.spec_for("magnitude", granularity, **GRANULARITIES[granularity]))
    assert outcome == "ran", result
    checks.check_save_load(sd3, result, tmp_path, expect_plain=plain)
    if granularity == "block":
        assert result.pipeline.transformer.config.num_layers == 2


def test_callers_pipeline_is_untouched(sd3, monkeypatch):
    checks.wired_granularities(monkeypatch)
    before = checks.fingerprint(sd3)
    transformer = sd3.transformer
    for granularity in ("head", "ffn", "block"):
        outcome, _ = checks.prune_or_refuse(sd3, checks.spec_for("taylor", granularity, **GRANULARITIES[granularity]))
        assert outcome == "ran"
    assert sd3.transformer is transformer and checks.fingerprint(sd3) == before
    assert all(not p.requires_grad or p.grad is None for p in transformer.parameters())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["sd", "dit", "pixart", "sd3", "sd35"])
def test_families_prune_and_sample_on_cuda(name, tmp_path, monkeypatch):
    from core.pipeline import load_pipeline, sample_images

    checks.wired_granularities(monkeypatch)
    pipeline = tiny_families.build(name).to("cuda")
    # the SD UNet reaches other sparsities with its few FFNs and blocks than the transformers
    amounts = dict(GRANULARITIES, ffn=dict(sparsity=0.05), block=dict(sparsity=0.2)) if name == "sd" else GRANULARITIES
    for granularity in ("unstructured", "head", "ffn", "block"):
        spec = checks.spec_for("taylor", granularity, device="cuda", **amounts[granularity])
        outcome, result = checks.prune_or_refuse(pipeline, spec)
        assert outcome == "ran", result
        assert next(checks.denoiser_of(result.pipeline).parameters()).is_cuda
        images = sample_images(result.pipeline, 2, num_inference_steps=3, seed=1)
        assert torch.isfinite(images).all()
    saved = result.save(tmp_path / "cuda")
    reloaded = load_pipeline(saved, device="cuda")
    torch.testing.assert_close(sample_images(reloaded, 2, num_inference_steps=3, seed=1),
                               sample_images(result.pipeline, 2, num_inference_steps=3, seed=1))


@pytest.mark.slow
def test_evaluation_samples_dense_and_pruned_from_the_same_prompts_and_seeds(sd3):
    """``evaluate(reference="dense")``: the dense model measured against itself is at distance 0,
    so pruned and dense are compared on the same prompts, noise and seeds (fidelity to the dense
    model, not to real images)."""
    from core.evaluate import evaluate

    row = evaluate(sd3, 8, num_inference_steps=2, metrics=("fid", "macs"), reference="dense", dense_pipeline=sd3,
                   batch_size=4)
    assert abs(row["fid"]) < 1e-3 and row["params"] == sum(p.numel() for p in sd3.transformer.parameters())
    assert row["macs"] > 0


def test_layer_policy_keeps_the_interface_and_the_modulation_dense(sd3):
    from core.criteria import prunable_layers
    from core.models.sd3 import SD3Adapter

    protected = set(adapter_for(sd3).protected_layers("transformer", sd3.transformer))
    assert {"pos_embed.proj", "context_embedder", "proj_out", "norm_out.linear", "time_text_embed.timestep_embedder.linear_1",
            "transformer_blocks.0.norm1.linear", "transformer_blocks.2.norm1_context.linear"} <= protected
    prunable = set(prunable_layers(sd3.transformer))
    assert prunable and all(".attn." in name or ".ff" in name for name in prunable)  # the blocks' attention and FFNs
    outcome, result = checks.prune_or_refuse(sd3, checks.spec_for("magnitude", "unstructured", sparsity=0.5))
    assert outcome == "ran", result
    modules = dict(result.pipeline.transformer.named_modules())
    assert all(bool(modules[name].weight.all()) for name in protected)  # no zero written into them
    assert abs(result.report.totals["sparsity"] - 0.5) < 0.01
    with_adaln = set(SD3Adapter(prune_adaln=True).protected_layers("transformer", sd3.transformer))
    assert "transformer_blocks.0.norm1.linear" not in with_adaln and "pos_embed.proj" in with_adaln
