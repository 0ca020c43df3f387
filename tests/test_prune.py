"""The pruning facade on tiny random diffusers UNets (and the shipped default model).

Properties: every criterion x granularity runs; sparsity reached; N:M pattern in
every group; exported zeros; structured models physically smaller and consistent; save/load
identical; determinism; caller's model untouched; sparsity 0 equals dense; progress/cancel.
"""
import copy

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

import core.criteria as criteria_module
from core.criteria import CRITERIA, prunable_layers
from core.default_model import DEFAULT_MODEL_DIR
from core.engine import clear_calibration_cache, prune
from core.granularities import attention_modules
from core.pipeline import load_pipeline, sample_images
from core.spec import PruneSpec

FAST_SCHEDULE = {"schedule": "custom", "schedule_params": {"timesteps": [[10, 1.0], [400, 0.5]]}}
# The criteria of this engine; obs and gradflow (criteria with their own ``reconstruct``)
# are exercised by their own test files.
ENGINE_CRITERIA = sorted(name for name, c in CRITERIA.items() if getattr(c, "reconstruct", None) is None)
GRANULARITY_CASES = {"unstructured": 0.5, "2:4": None, "4:8": None, "channel": 0.44, "head": 0.05}

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_pipeline(attention: bool, channels=(16, 32), seed=0):
    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=channels,
        down_block_types=("DownBlock2D", "AttnDownBlock2D" if attention else "DownBlock2D"),
        up_block_types=("AttnUpBlock2D" if attention else "UpBlock2D", "UpBlock2D"),
        attention_head_dim=8, norm_num_groups=4, add_attention=attention,
    ).eval()
    pipeline = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def attn_pipeline():
    return tiny_pipeline(attention=True)  # attention_head_dim 8: 2 heads at 16, 4 heads at 32 channels


@pytest.fixture(scope="module")
def conv_pipeline():
    return tiny_pipeline(attention=False, channels=(8, 16))


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("calibration")
    generator = np.random.default_rng(0)
    for index in range(4):
        Image.fromarray(generator.integers(0, 255, (8, 8), dtype=np.uint8)).save(folder / f"{index}.png")
    return str(folder)


def fast_spec(criterion, granularity="unstructured", sparsity=0.5, folder=None, **extra):
    kwargs = dict(criterion=criterion, granularity=granularity, sparsity=sparsity, **extra)
    if CRITERIA[criterion].needs_calibration:
        kwargs = {**FAST_SCHEDULE, "calibration_batch_size": 2, "calibration_data": folder, **kwargs}
    return PruneSpec(**kwargs)


def outputs(unet, seed=0):
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(2, unet.config.in_channels, 8, 8, generator=generator)
    with torch.no_grad():
        return unet(sample, torch.tensor([10, 700])).sample


def state(unet):
    return {k: v.detach().clone() for k, v in unet.state_dict().items()}


@pytest.mark.parametrize("criterion", ENGINE_CRITERIA)
@pytest.mark.parametrize("granularity", list(GRANULARITY_CASES))
def test_every_criterion_with_every_granularity(attn_pipeline, image_folder, criterion, granularity):
    name = "N:M" if ":" in granularity else granularity
    if name not in CRITERIA[criterion].granularities:
        pytest.skip(f"{criterion} does not support {granularity}")
    spec = fast_spec(criterion, granularity, GRANULARITY_CASES[granularity], image_folder)
    result = prune(attn_pipeline, spec)
    totals = result.report.totals
    tolerance = 0.005 if name in ("unstructured", "N:M") else 0.02
    assert abs(totals["sparsity"] - spec.sparsity) <= tolerance
    assert outputs(result.pipeline.unet).shape == (2, 1, 8, 8)
    if name in ("channel", "head"):
        images = sample_images(result.pipeline, 1, num_inference_steps=2)  # runs inside its pipeline
        assert torch.isfinite(images).all()
        assert totals["params_after"] < totals["params_before"]
        assert totals["macs_after"] < totals["macs_before"]
        assert 0 < totals["structural_ratio"] < 1


def test_unstructured_and_nm_zeros_are_exported(attn_pipeline, tmp_path):
    from safetensors.torch import load_file

    for granularity, (n, m) in (("2:4", (2, 4)), ("4:8", (4, 8))):
        result = prune(attn_pipeline, PruneSpec(criterion="magnitude", granularity=granularity, sparsity=None))
        folder = result.save(tmp_path / granularity.replace(":", "-"))
        weights = load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
        for name in prunable_layers(result.pipeline.unet):
            weight = weights[f"{name}.weight"]
            if weight.dim() == 4:
                weight = weight.permute(0, 2, 3, 1)
            nonzero_per_group = (weight.reshape(-1, m) != 0).sum(1)
            assert int(nonzero_per_group.max()) <= n  # the N:M pattern holds in every group
        assert abs(result.report.totals["sparsity"] - (1 - n / m)) <= 0.005
    result = prune(attn_pipeline, PruneSpec(criterion="magnitude", granularity="unstructured", sparsity=0.3))
    folder = result.save(tmp_path / "unstructured")
    weights = load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    total = sum(weights[f"{n}.weight"].numel() for n in prunable_layers(result.pipeline.unet))
    zeros = sum(int((weights[f"{n}.weight"] == 0).sum()) for n in prunable_layers(result.pipeline.unet))
    assert abs(zeros / total - 0.3) <= 0.005


def test_channel_pruning_keeps_diffusers_sizes_consistent(attn_pipeline):
    from diffusers.models.downsampling import Downsample2D
    from diffusers.models.upsampling import Upsample2D

    result = prune(attn_pipeline, PruneSpec(criterion="magnitude", granularity="channel", sparsity=0.44))
    unet = result.pipeline.unet
    assert unet.conv_out.weight.shape[0] == attn_pipeline.unet.conv_out.weight.shape[0]
    for module in unet.modules():
        if isinstance(module, (Downsample2D, Upsample2D)):
            assert module.channels == module.conv.in_channels and module.out_channels == module.conv.out_channels
        if isinstance(module, torch.nn.GroupNorm):
            assert module.num_channels % module.num_groups == 0
    for attention in attention_modules(unet).values():
        assert attention.inner_dim == attention.to_q.out_features
        assert attention.inner_dim % attention.heads == 0
    layers = result.report.layers
    assert {"name", "type", "params_before", "params_after", "macs_before", "macs_after", "sparsity",
            "importance_mean"} <= set(layers.columns)
    assert (layers["params_after"] <= layers["params_before"]).all()
    assert result.report.importance["down_blocks.0.resnets.0.conv1"].shape == (16,)  # per output channel


def test_channel_planner_traces_groups_once_and_plans_as_torch_pruning_does(attn_pipeline):
    """The planner reuses Torch-Pruning's full-index groups across candidate ratios (the model is
    unchanged while it searches): every plan equals the plan of a planner that traces afresh."""
    from core.criteria import compute_scores
    from core.granularities.channel import ChannelPlanner

    unet = copy.deepcopy(attn_pipeline.unet)
    scores = compute_scores(CRITERIA["magnitude"], unet, None, {}, 0)
    cached = ChannelPlanner(unet, scores)
    traced = []
    for ratio, boost in ((0.2, None), (0.4, None), (0.2, (0.4, 3)), (0.4, None)):
        fresh = ChannelPlanner(copy.deepcopy(attn_pipeline.unet), scores)
        fresh.pruner.DG.__dict__.pop("get_all_groups")  # Torch-Pruning's own tracing, every call
        names = {m: n for n, m in fresh.model.named_modules()}
        expected = {names.get(m, repr(m)): e for m, e in fresh.plan(ratio, boost).items()}
        names = {m: n for n, m in unet.named_modules()}
        assert {names.get(m, repr(m)): e for m, e in cached.plan(ratio, boost).items()} == expected
        assert cached.sparsity(ratio, boost) == fresh.sparsity(ratio, boost)
        traced.append(len(cached._full_groups))
    assert traced == [1, 1, 1, 1]  # one trace served every plan
    cached.prune(0.4)  # prunes with groups traced afresh: the model is consistent afterwards
    assert "get_all_groups" not in cached.pruner.DG.__dict__ and not cached._full_groups
    size = unet.config.sample_size
    assert unet(torch.randn(1, unet.config.in_channels, size, size), torch.tensor([1])).sample.shape[1:] == (
        unet.config.out_channels, size, size)


def test_head_pruning_updates_heads(attn_pipeline):
    result = prune(attn_pipeline, PruneSpec(criterion="magnitude", granularity="head", sparsity=0.05))
    before = {n: a.heads for n, a in attention_modules(attn_pipeline.unet).items()}
    after = {n: a.heads for n, a in attention_modules(result.pipeline.unet).items()}
    assert all(after[n] < before[n] for n in before)
    assert all(a.inner_dim == a.heads * 8 for a in attention_modules(result.pipeline.unet).values())
    assert result.report.importance["mid_block.attentions.0"].shape == (4,)  # per head


@pytest.mark.parametrize("granularity, sparsity", [("unstructured", 0.5), ("channel", 0.44), ("head", 0.05)])
def test_save_load_round_trip(attn_pipeline, tmp_path, granularity, sparsity):
    result = prune(attn_pipeline, PruneSpec(criterion="random", granularity=granularity, sparsity=sparsity, seed=3))
    expected = outputs(result.pipeline.unet)
    folder = result.save(tmp_path / "checkpoint")
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt")) and not list(folder.rglob("*.pkl"))
    loaded = load_pipeline(folder, device="cpu")
    assert (outputs(loaded.unet) - expected).abs().max() < 1e-5
    assert (folder / "report" / "layers.csv").exists()
    if result.report.totals["plain_diffusers_loadable"]:
        from diffusers import DiffusionPipeline

        plain = DiffusionPipeline.from_pretrained(str(folder))
        assert (outputs(plain.unet) - expected).abs().max() < 1e-5
    assert result.report.totals["plain_diffusers_loadable"] == (granularity == "unstructured")


def test_determinism_same_masks_and_weights(attn_pipeline, image_folder):
    # one gradient criterion with a structural cut covers both: same scores, same masks, same weights
    for spec in (fast_spec("taylor", "channel", 0.44, image_folder),):
        clear_calibration_cache()
        first = prune(attn_pipeline, spec)
        clear_calibration_cache()  # recompute the calibration, not reuse it
        second = prune(attn_pipeline, spec)
        assert not second.report.totals["calibration_cached"]
        a, b = state(first.pipeline.unet), state(second.pipeline.unet)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_calibration_is_reused_across_sparsities_with_identical_results(attn_pipeline, image_folder):
    clear_calibration_cache()
    fresh = {level: prune(attn_pipeline, fast_spec("taylor", "channel", level, image_folder)) for level in (0.3, 0.5)}
    clear_calibration_cache()
    prune(attn_pipeline, fast_spec("taylor", "unstructured", 0.5, image_folder))  # fills the cache
    for level, expected in fresh.items():
        reused = prune(attn_pipeline, fast_spec("taylor", "channel", level, image_folder))
        assert reused.report.totals["calibration_cached"]
        a, b = state(expected.pipeline.unet), state(reused.pipeline.unet)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other_seed = prune(attn_pipeline, fast_spec("taylor", "channel", 0.3, image_folder, seed=1))
    assert not other_seed.report.totals["calibration_cached"]  # different settings, new calibration


def test_callers_pipeline_untouched(attn_pipeline, image_folder):
    before = state(attn_pipeline.unet)
    config = dict(attn_pipeline.unet.config)
    flags = [p.requires_grad for p in attn_pipeline.unet.parameters()]
    for spec in (fast_spec("nici", "channel", 0.44, image_folder),):
        result = prune(attn_pipeline, spec)
        assert result.pipeline is not attn_pipeline and result.pipeline.unet is not attn_pipeline.unet
    after = state(attn_pipeline.unet)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert dict(attn_pipeline.unet.config) == config
    assert [p.requires_grad for p in attn_pipeline.unet.parameters()] == flags
    assert all(p.grad is None for p in attn_pipeline.unet.parameters())


@pytest.mark.parametrize("granularity", ["unstructured", "channel", "head"])
def test_sparsity_zero_equals_dense(attn_pipeline, granularity):
    result = prune(attn_pipeline, PruneSpec(criterion="magnitude", granularity=granularity, sparsity=0.0))
    assert torch.equal(outputs(result.pipeline.unet), outputs(attn_pipeline.unet))


def test_bad_inputs_raise_value_errors(conv_pipeline, attn_pipeline):
    with pytest.raises(ValueError, match="granularity 'head'.*multi-head"):
        prune(conv_pipeline, PruneSpec(criterion="magnitude", granularity="head", sparsity=0.05))
    with pytest.raises(ValueError, match="sparsity .* 'head'"):
        prune(attn_pipeline, PruneSpec(criterion="magnitude", granularity="head", sparsity=0.5))
    odd = tiny_pipeline(attention=False, channels=(12, 24))
    with pytest.raises(ValueError, match="divisible by M=8"):
        prune(odd, PruneSpec(criterion="magnitude", granularity="4:8", sparsity=None))
    with pytest.raises(ValueError, match="channel_ratio"):
        prune(conv_pipeline, PruneSpec(criterion="magnitude", granularity="channel", sparsity=None, channel_ratio=0.99))
    with pytest.raises(ValueError, match="spec"):
        prune(conv_pipeline, {"criterion": "magnitude"})


def test_channel_ratio_knob_and_plain_config(conv_pipeline, tmp_path):
    result = prune(conv_pipeline, PruneSpec(criterion="magnitude", granularity="channel", sparsity=None, channel_ratio=0.25))
    totals = result.report.totals
    assert totals["structural_ratio"] == 0.25 and 0 < totals["sparsity"] < 0.95
    expected = outputs(result.pipeline.unet)
    folder = result.save(tmp_path / "ratio")
    assert (outputs(load_pipeline(folder, device="cpu").unet) - expected).abs().max() < 1e-5


def test_progress_stages_and_cancellation(attn_pipeline, image_folder):
    seen = []
    clear_calibration_cache()  # a fresh calibration reports its timesteps
    prune(attn_pipeline, fast_spec("taylor", "channel", 0.44, image_folder), progress=lambda f, m: seen.append((f, m)))
    fractions = [f for f, _ in seen]
    assert all(0 <= f <= 1 for f in fractions) and fractions == sorted(fractions) and fractions[-1] == 1.0
    messages = " | ".join(m for _, m in seen)
    assert "calibrating t=10" in messages and "scoring" in messages and "pruning" in messages

    class Cancelled(Exception):
        pass

    def cancel(fraction, message):
        if message.startswith("calibrating"):
            raise Cancelled()

    before = state(attn_pipeline.unet)
    with pytest.raises(Cancelled):
        prune(attn_pipeline, fast_spec("nici", "unstructured", 0.5, image_folder), progress=cancel)
    after = state(attn_pipeline.unet)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in attn_pipeline.unet.parameters())


def test_report_schedule_losses_and_timestep_table(attn_pipeline, image_folder, monkeypatch):
    monkeypatch.setattr(criteria_module, "CALIBRATION_CHUNK_SAMPLES", 2)  # one timestep per backward pass
    clear_calibration_cache()
    result = prune(attn_pipeline, fast_spec("nici", "unstructured", 0.5, image_folder, calibration_batches=2))
    report = result.report
    assert report.timestep_weights.values.tolist() == [[10, 1.0], [400, 0.5]]
    assert list(report.calibration_loss["t"]) == [10, 400]
    table = report.timestep_contributions
    assert report.totals["timesteps_per_group"] == 1
    assert list(table.columns) == [10, 400] and set(table.index) == set(prunable_layers(attn_pipeline.unet))
    assert (table.values >= 0).all() and table.values.sum() > 0
    assert report.totals["calibration_images"] == 4 and report.totals["wall_time_s"] > 0
    threshold = prune(attn_pipeline, fast_spec("taylor", "unstructured", 0.5, image_folder, schedule="threshold",
                                               schedule_params={"max_timesteps": 3}))
    stopped = threshold.report.totals["schedule_stopped_at"]
    assert stopped is not None and list(threshold.report.timestep_weights["t"]) == list(range(stopped + 1))


@pytest.mark.parametrize("criterion, schedule", [("taylor", "threshold"), ("nici", "interval"), ("l1", "uniform")])
def test_batched_timesteps_give_the_per_timestep_result(attn_pipeline, image_folder, monkeypatch, criterion, schedule):
    """Several timesteps per backward pass: same losses, schedule and (up to float order) scores."""
    params = {"threshold": {"max_timesteps": 12}, "interval": {}, "uniform": {"num_timesteps": 6}}[schedule]
    spec = fast_spec(criterion, "unstructured", 0.5, image_folder, schedule=schedule, schedule_params=params)
    if schedule == "interval":
        spec = fast_spec(criterion, "unstructured", 0.5, image_folder, schedule="custom",
                         schedule_params={"timesteps": [[t, 1.0 / s] for t, s in ((0, 2), (2, 2), (250, 4), (900, 16))]})
    runs = {}
    for chunk_samples in (2, 64):  # batch 2: 1 timestep per pass, then 32 per pass
        monkeypatch.setattr(criteria_module, "CALIBRATION_CHUNK_SAMPLES", chunk_samples)
        clear_calibration_cache()
        runs[chunk_samples] = prune(attn_pipeline, spec)
    single, batched = runs[2].report, runs[64].report
    assert batched.totals["timesteps_per_group"] == 32 and single.totals["timesteps_per_group"] == 1
    assert single.timestep_weights.values.tolist() == batched.timestep_weights.values.tolist()
    assert np.allclose(single.calibration_loss["loss"], batched.calibration_loss["loss"], rtol=1e-4, atol=1e-6)
    for name in single.importance:
        assert torch.allclose(torch.as_tensor(single.importance[name]), torch.as_tensor(batched.importance[name]),
                              rtol=1e-3, atol=1e-7), name
    total_single = single.timestep_contributions.values.sum()
    assert batched.timestep_contributions.shape[1] == 1 and total_single > 0


def test_data_free_calibration(conv_pipeline):
    spec = PruneSpec(criterion="taylor", granularity="unstructured", sparsity=0.3, calibration_data="generated",
                     calibration_batch_size=2, schedule="uniform", schedule_params={"num_timesteps": 2})
    result = prune(conv_pipeline, spec)
    assert result.report.totals["calibration_source"].startswith("generated")


@pytest.mark.slow
@pytest.mark.skipif(not (DEFAULT_MODEL_DIR / "model_index.json").exists(), reason="default model not shipped yet")
def test_default_model_channel_and_head():
    pipeline = load_pipeline(None, device="cpu")
    result = prune(pipeline, PruneSpec(criterion="magnitude", granularity="channel", sparsity=0.3))
    assert abs(result.report.totals["sparsity"] - 0.3) <= 0.02
    assert torch.isfinite(sample_images(result.pipeline, 2, num_inference_steps=2)).all()
    heads = prune(pipeline, PruneSpec(criterion="magnitude", granularity="head", sparsity=0.03))
    assert sum(a.heads for a in attention_modules(heads.pipeline.unet).values()) < sum(
        a.heads for a in attention_modules(pipeline.unet).values())
    assert torch.isfinite(sample_images(heads.pipeline, 2, num_inference_steps=2)).all()


def test_nici_scores_are_clean_image_taylor_summed_over_batches(attn_pipeline):
    """nici = sum over batches of |w * g_b|, g_b the gradient of the schedule-weighted
    clean-image loss MSE(eps_theta(x0, t), x0) of batch b alone (zero_grad per batch)."""
    import torch.nn.functional as F

    unet = copy.deepcopy(attn_pipeline.unet)
    generator = torch.Generator().manual_seed(5)
    batches = [torch.rand(2, 1, 8, 8, generator=generator) * 2 - 1 for _ in range(2)]
    plan = [[10, 1.0], [400, 0.5]]
    settings = criteria_module.CalibrationSettings("clean-image", "custom", {"timesteps": plan}, zero_grad_per_batch=True,
                                                   seed=0)
    stats = criteria_module.calibrate(unet, attn_pipeline.scheduler, batches, settings)
    scores = criteria_module.compute_scores(CRITERIA["nici"], unet, stats, {}, 0)

    reference = copy.deepcopy(attn_pipeline.unet)
    layers = prunable_layers(reference)
    expected = {name: torch.zeros_like(module.weight) for name, module in layers.items()}
    for clean in batches:
        reference.zero_grad()
        loss = sum(weight * F.mse_loss(reference(clean, torch.full((2,), t)).sample, clean) for t, weight in plan)
        loss.backward()
        for name, module in layers.items():
            expected[name] += (module.weight * module.weight.grad).abs().detach()
    for name in layers:
        assert torch.allclose(scores[name], expected[name], rtol=1e-4, atol=1e-7), name
