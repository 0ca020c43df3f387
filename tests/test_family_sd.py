"""Stable Diffusion 1.x / 2.x (``StableDiffusionPipeline`` / ``UNet2DConditionModel``) on tiny random
pipelines: CLIP text conditioning by keyword, epsilon and v losses, SDXL refused with its reason,
every criterion x granularity through the ``prune`` facade (run or refused with a reason),
BK-SDM-style block removal reloading with plain diffusers, save/load identical, caller untouched."""
import pytest
import torch

import family_checks as checks
import tiny_families
from core.models import adapter_for

pytestmark = pytest.mark.usefixtures("one_thread")
GRANULARITIES = {
    # channel: the ratio directly (the sparsity search traces the UNet once per candidate: slow on a CPU)
    "unstructured": dict(sparsity=0.3), "2:4": dict(), "channel": dict(sparsity=None, channel_ratio=0.25),
    "head": dict(sparsity=None, channel_ratio=0.5), "ffn": dict(sparsity=0.05), "block": dict(sparsity=0.2),
}
CRITERIA = ("random", "magnitude", "taylor", "nici", "l1", "gradflow", "obs")


@pytest.fixture(scope="module")
def sd():
    return tiny_families.build("sd")


@pytest.fixture(scope="module")
def sd2():
    return tiny_families.build("sd2")


@pytest.mark.parametrize("family", ["sd", "sd2"])
def test_text_conditioning_and_loss_per_prediction_type(family, sd, sd2):
    pipeline = sd if family == "sd" else sd2
    adapter = adapter_for(pipeline)
    assert adapter.name == "stable-diffusion"
    kind = adapter.prediction_type(pipeline.scheduler)
    assert kind == ("epsilon" if family == "sd" else "v_prediction")
    conditioning = adapter.sample_conditioning(pipeline, 2, torch.Generator().manual_seed(0))
    assert conditioning["encoder_hidden_states"].shape[-1] == pipeline.unet.config.cross_attention_dim
    generator = torch.Generator().manual_seed(1)
    clean, noise = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    timesteps = torch.tensor([20, 700])
    loss = adapter.denoising_loss(pipeline.unet, pipeline.scheduler, clean, noise, timesteps, conditioning)
    with torch.no_grad():
        noisy = pipeline.scheduler.add_noise(clean, noise, timesteps)
        output = pipeline.unet(sample=noisy, timestep=timesteps,
                               encoder_hidden_states=conditioning["encoder_hidden_states"]).sample
    target = noise if kind == "epsilon" else pipeline.scheduler.get_velocity(clean, noise, timesteps)
    torch.testing.assert_close(loss, (output - target).pow(2).flatten(1).mean(1))


def test_sdxl_added_conditioning_is_refused_with_its_reason():
    from diffusers import UNet2DConditionModel

    from core.models import adapter_for_module
    from core.models.unet2d_condition import StableDiffusionAdapter

    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=4, cross_attention_dim=32,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=80,
    )
    assert "SDXL" in StableDiffusionAdapter.unsupported_conditioning(unet)
    pipeline = tiny_families.build("sd")
    components = dict(pipeline.components, unet=unet)
    with pytest.raises(ValueError, match="UNet2DConditionModel.*SDXL"):
        adapter_for(type(pipeline)(**components))
    assert adapter_for_module(pipeline.unet)[0].name == "stable-diffusion"


@pytest.mark.parametrize("granularity", sorted(GRANULARITIES))
@pytest.mark.parametrize("criterion", CRITERIA)
def test_every_criterion_and_granularity_runs_or_is_refused(sd, criterion, granularity, monkeypatch):
    checks.wired_granularities(monkeypatch)
    try:
        spec = checks.spec_for(criterion, granularity, **GRANULARITIES[granularity])
    except ValueError as error:
        assert criterion == "obs" and granularity == "block", error  # OBS-Diff removes heads and neurons, not blocks
        return
    outcome, value = checks.prune_or_refuse(sd, spec)
    assert outcome == "ran", value
    checks.check_pruned("sd", sd, value, granularity)
    unet = value.pipeline.unet
    for attention in (m for n, m in unet.named_modules() if n.endswith("attn2")):
        assert attention.to_k.in_features == 32  # cross-attention keys read the text width: never cut


def test_block_removal_is_bk_sdm_style_and_reloads_with_plain_diffusers(sd, tmp_path, monkeypatch):
    checks.wired_granularities(monkeypatch)
    outcome, result = checks.prune_or_refuse(sd, checks.spec_for("magnitude", "block", sparsity=0.4))
    assert outcome == "ran", result
    unet = result.pipeline.unet
    layers = [len(block.resnets) for block in unet.down_blocks]
    ups = [len(block.resnets) for block in unet.up_blocks]
    assert sum(layers) < 4 or unet.mid_block is None
    assert ups == [n + 1 for n in reversed(layers)]  # each removed down layer took its mirrored up layer
    assert result.report.totals["plain_diffusers_loadable"]
    checks.check_save_load(sd, result, tmp_path, expect_plain=True)
    from diffusers import UNet2DConditionModel

    plain = UNet2DConditionModel.from_pretrained(tmp_path / "checkpoint" / "unet")
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in unet.state_dict().items()}


@pytest.mark.parametrize("family, granularity", [("sd", "channel"), ("sd", "head"), ("sd", "ffn"), ("sd2", "channel"),
                                                ("sd2", "unstructured")])
def test_save_load_gives_identical_samples(family, granularity, sd, sd2, tmp_path, monkeypatch):
    checks.wired_granularities(monkeypatch)
    pipeline = sd if family == "sd" else sd2
    outcome, result = checks.prune_or_refuse(pipeline, checks.spec_for("magnitude", granularity, **GRANULARITIES[granularity]))
    assert outcome == "ran", result
    checks.check_save_load(pipeline, result, tmp_path, expect_plain=granularity == "unstructured")


def test_callers_pipeline_is_untouched(sd2, monkeypatch):
    checks.wired_granularities(monkeypatch)
    before = checks.fingerprint(sd2)
    for granularity in ("channel", "head", "ffn"):
        assert checks.prune_or_refuse(sd2, checks.spec_for("taylor", granularity, **GRANULARITIES[granularity]))[0] == "ran"
    assert checks.fingerprint(sd2) == before


def test_sample_images_takes_one_prompt_for_every_image():
    import tiny_families
    from core.pipeline import sample_images, takes_prompts

    pipeline = tiny_families.build("sd")
    assert takes_prompts(pipeline)
    shoe = sample_images(pipeline, 2, 2, 0, prompt="a red shoe")
    assert torch.equal(shoe, sample_images(pipeline, 2, 2, 0, prompt="a red shoe"))  # same prompt and seed
    assert not torch.equal(shoe, sample_images(pipeline, 2, 2, 0, prompt="a blue bag"))
    with pytest.raises(ValueError, match="prompt must hold non-empty strings"):
        sample_images(pipeline, 2, 2, 0, prompt="   ")
    dit = tiny_families.build("dit")
    assert not takes_prompts(dit)
    with pytest.raises(ValueError, match="prompt applies to text-to-image models"):
        sample_images(dit, 2, 2, 0, prompt="a red shoe")


def test_calibration_prompts_in_the_spec_drive_the_calibration():
    import tiny_families
    from core.engine import prune
    from core.spec import PruneSpec

    pipeline = tiny_families.build("sd")
    mine = PruneSpec(criterion="taylor", granularity="unstructured", sparsity=0.5, schedule="uniform",
                     schedule_params={"num_timesteps": 2}, calibration_batches=1, calibration_batch_size=2,
                     calibration_prompts=["a red shoe", "a blue bag"])
    assert PruneSpec.from_json(mine.to_json()) == mine and mine.calibration_prompts == ("a red shoe", "a blue bag")
    assert "calibration_prompts" not in PruneSpec().to_dict()  # the default keeps older specs' JSON (cache keys)
    first = prune(pipeline, mine).pipeline.unet.state_dict()
    again = prune(pipeline, mine).pipeline.unet.state_dict()
    shipped = prune(pipeline, mine.replace(calibration_prompts=None)).pipeline.unet.state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)  # same spec and seed, same result
    assert any(not torch.equal(first[k], shipped[k]) for k in first)  # the prompts changed the scores
    with pytest.raises(ValueError, match="calibration_prompts must hold non-empty strings"):
        PruneSpec(calibration_prompts=["ok", ""])
    with pytest.raises(ValueError, match="calibration_prompts apply to text-to-image models"):
        prune(tiny_families.build("dit"), PruneSpec(calibration_prompts=["a shoe"]))
