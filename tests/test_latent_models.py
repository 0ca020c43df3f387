"""Model adapters on tiny random pipelines built here: an LDM with a VQModel, a latent
UNet with an AutoencoderKL, a class-conditional UNet and a ``scale_shift`` UNet.

Each is saved with ``save_pretrained`` and loaded through ``load_pipeline``; samples are decoded
images; every criterion x granularity runs or is refused with a reason; save/load gives identical
samples; the caller's model is untouched; ``components`` prunes the autoencoder.
"""
import copy

import numpy as np
import pytest
import torch
from diffusers import (AutoencoderKL, DDIMScheduler, DDPMPipeline, DDPMScheduler, LDMPipeline, UNet2DModel,
                       VQModel)

from core.calibration import calibration_images
from core.criteria import CRITERIA, prunable_layers
from core.engine import clear_calibration_cache, prune
from core.models import ADAPTERS, adapter_for
from core.pipeline import initial_noise, load_pipeline, sample_images
from core.spec import PruneSpec

pytestmark = pytest.mark.usefixtures("one_thread")

LATENT_SIZE, IMAGE_SIZE = 8, 16
INTERFACE = ("encoder.conv_out", "quant_conv", "post_quant_conv", "decoder.conv_out")


def tiny_latent_unet(latent_channels: int, **extra) -> UNet2DModel:
    return UNet2DModel(
        sample_size=LATENT_SIZE, in_channels=latent_channels, out_channels=latent_channels, layers_per_block=1,
        block_out_channels=(16, 32), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8, norm_num_groups=4, **extra,
    ).eval()


def autoencoder_kwargs(latent_channels: int) -> dict:
    return dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=latent_channels,
                norm_num_groups=4, sample_size=IMAGE_SIZE)


def build(kind: str):
    torch.manual_seed(0)
    if kind == "ldm-vq":
        vqvae = VQModel(**autoencoder_kwargs(3), num_vq_embeddings=16).eval()
        return LDMPipeline(vqvae=vqvae, unet=tiny_latent_unet(3), scheduler=DDIMScheduler(num_train_timesteps=1000))
    if kind == "ldm-kl":
        vae = AutoencoderKL(**autoencoder_kwargs(4)).eval()
        return LDMPipeline(vqvae=vae, unet=tiny_latent_unet(4), scheduler=DDIMScheduler(num_train_timesteps=1000))
    if kind == "class-conditional":
        unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(16, 32),
                           down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                           attention_head_dim=8, norm_num_groups=4, num_class_embeds=3).eval()
        return DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000))
    if kind == "scale-shift":
        unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(16, 32),
                           down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                           attention_head_dim=8, norm_num_groups=4, resnet_time_scale_shift="scale_shift").eval()
        return DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000))
    raise KeyError(kind)


FAMILY_OF = {"ldm-vq": "latent-vq", "ldm-kl": "latent-kl", "class-conditional": "pixel-unet", "scale-shift": "pixel-unet"}
KINDS = list(FAMILY_OF)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """kind -> directory of the tiny pipeline saved with save_pretrained (loaded like any local model)."""
    root = tmp_path_factory.mktemp("families")
    paths = {}
    for kind in KINDS:
        paths[kind] = str(root / kind)
        build(kind).save_pretrained(paths[kind])
    return paths


@pytest.fixture(scope="module")
def pipelines(saved):
    return {kind: load_pipeline(path, device="cpu") for kind, path in saved.items()}


@pytest.fixture(scope="module")
def rgb_folder(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("rgb")
    generator = np.random.default_rng(0)
    for index in range(4):
        Image.fromarray(generator.integers(0, 255, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    return str(folder)


def fast_spec(criterion, granularity="unstructured", sparsity=0.5, data="generated", **extra):
    kwargs = dict(criterion=criterion, granularity=granularity, sparsity=sparsity)
    if granularity in ("2:4", "4:8"):
        kwargs["sparsity"] = None
    if CRITERIA[criterion].needs_calibration:
        kwargs.update(calibration_batch_size=2, calibration_data=data)
        if criterion == "obs":
            kwargs.update(schedule_params={"num_steps": 2})
        elif criterion == "gradflow":
            kwargs.update(schedule_params={"num_timesteps": 1}, criterion_params={"iterations": 1})
        else:
            kwargs.update(schedule="custom", schedule_params={"timesteps": [[10, 1.0], [400, 0.5]]})
    kwargs.update(extra)
    return PruneSpec(**kwargs)


def state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ------------------------------------------------------------------------------------------ loading
@pytest.mark.parametrize("kind", KINDS)
def test_load_picks_the_family_and_samples_decoded_images(pipelines, kind):
    pipeline = pipelines[kind]
    adapter = adapter_for(pipeline)
    assert adapter.name == FAMILY_OF[kind]
    images = sample_images(pipeline, 2, num_inference_steps=2, seed=0)
    channels, height, width = adapter.image_shape(pipeline)
    assert images.shape == (2, channels, height, width) and torch.isfinite(images).all()
    assert images.min() >= -1 and images.max() <= 1
    assert torch.equal(images, sample_images(pipeline, 2, num_inference_steps=2, seed=0))  # deterministic
    if adapter.is_latent():
        assert (height, width) == (IMAGE_SIZE, IMAGE_SIZE)
        assert initial_noise(pipeline, 3, 0).shape == (3, *adapter.sample_shape(pipeline))  # latent-shaped noise
        latents = sample_images(pipeline, 2, num_inference_steps=2, seed=0, decode=False)
        assert latents.shape == (2, *adapter.sample_shape(pipeline))
        assert torch.allclose(adapter.decode(pipeline, latents), images, atol=1e-5)


def test_unsupported_pipelines_are_refused_naming_the_families(tmp_path):
    from diffusers import ScoreSdeVePipeline, ScoreSdeVeScheduler

    pipeline = ScoreSdeVePipeline(unet=build("scale-shift").unet, scheduler=ScoreSdeVeScheduler())
    pipeline.save_pretrained(tmp_path / "sde")
    with pytest.raises(ValueError, match="no model family supports") as error:
        load_pipeline(str(tmp_path / "sde"), device="cpu")
    assert all(name in str(error.value) for name in ADAPTERS) and "\n" not in str(error.value)
    with pytest.raises(ValueError, match="supported"):
        prune(pipeline, PruneSpec())


def test_latent_calibration_encodes_images_to_latents(pipelines, rgb_folder):
    pipeline = pipelines["ldm-vq"]
    adapter = adapter_for(pipeline)
    spec = fast_spec("taylor", data=rgb_folder)
    samples, source = calibration_images(pipeline, None, spec)
    assert samples.shape == (2, *adapter.sample_shape(pipeline)) and source == rgb_folder
    expected = adapter.encode(pipeline, __import__("core.data", fromlist=["x"]).load_image_folder(rgb_folder, IMAGE_SIZE, 3))
    assert any(torch.allclose(row, candidate, atol=1e-5) for row in samples for candidate in expected)
    generated, source = calibration_images(pipeline, None, fast_spec("taylor"))
    assert generated.shape == samples.shape and source.startswith("generated") and "latents" in source


def test_training_target_follows_prediction_type():
    adapter = ADAPTERS["pixel-unet"]
    clean, noise = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    t = torch.tensor([10, 700])
    for kind, expected in (("epsilon", noise), ("sample", clean)):
        assert torch.equal(adapter.training_target(DDPMScheduler(prediction_type=kind), clean, noise, t), expected)
    v_scheduler = DDPMScheduler(prediction_type="v_prediction")
    assert torch.allclose(adapter.training_target(v_scheduler, clean, noise, t), v_scheduler.get_velocity(clean, noise, t))


# ------------------------------------------------------------------------------------------ pruning matrix
GRANULARITIES = {"unstructured": 0.5, "2:4": None, "channel": 0.3, "head": 0.05}


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_every_criterion_and_granularity_runs_or_is_refused(pipelines, kind):
    pipeline = pipelines[kind]
    before = state(pipeline.unet)
    outcomes = {}
    for criterion in sorted(CRITERIA):
        for granularity, sparsity in GRANULARITIES.items():
            try:
                spec = fast_spec(criterion, granularity, sparsity)
            except ValueError as error:  # the spec itself refuses (e.g. obs has no such granularity)
                outcomes[(criterion, granularity)] = f"spec: {error}"
                continue
            try:
                result = prune(pipeline, spec)
            except ValueError as error:
                assert str(error) and "\n" not in str(error)
                outcomes[(criterion, granularity)] = f"refused: {error}"
                continue
            images = sample_images(result.pipeline, 1, num_inference_steps=2, seed=0)
            assert torch.isfinite(images).all(), (criterion, granularity)
            if granularity != "head":
                assert abs(result.report.totals["sparsity"] - (spec.sparsity or 0.5)) <= 0.03, (criterion, granularity)
            outcomes[(criterion, granularity)] = "ran"
    ran = [key for key, value in outcomes.items() if value == "ran"]
    assert len(ran) >= 20, outcomes  # most combinations run; the refusals carry their reason
    after = state(pipeline.unet)
    assert all(torch.equal(before[k], after[k]) for k in before)


# ------------------------------------------------------------------------------------------ components
@pytest.mark.parametrize("kind, granularity", [("ldm-vq", "channel"), ("ldm-vq", "unstructured"), ("ldm-kl", "channel")])
def test_components_prune_the_autoencoder_too(pipelines, tmp_path, rgb_folder, kind, granularity):
    pipeline = pipelines[kind]
    adapter = adapter_for(pipeline)
    name = adapter.autoencoder_attribute(pipeline)
    autoencoder_before = state(getattr(pipeline, name))
    unet_before = state(pipeline.unet)
    spec = fast_spec("taylor", granularity, 0.3, data=rgb_folder, components=("unet", name))
    result = prune(pipeline, spec)
    totals = result.report.totals
    assert totals["components"] == ["unet", name]
    for component in ("unet", name):  # the sparsity is met per component
        assert abs(totals["per_component"][component]["sparsity"] - 0.3) <= 0.02, component
    pruned = getattr(result.pipeline, name)
    layers = result.report.layers
    assert set(layers["component"]) == {"unet", name}
    assert {f"{name}.{layer}" for layer in prunable_layers(getattr(pipeline, name))} <= set(layers["name"])
    modules, original = dict(pruned.named_modules()), dict(getattr(pipeline, name).named_modules())
    for layer in INTERFACE:  # the latent interface: never masked, its output channels never cut
        if original.get(layer) is None:
            continue
        assert modules[layer].weight.shape[0] == original[layer].weight.shape[0], layer
        if granularity == "unstructured" or layer in ("quant_conv", "post_quant_conv"):
            assert torch.equal(modules[layer].weight, original[layer].weight), layer
        else:  # conv_out layers read cut channels: their kept input columns are unchanged
            assert torch.count_nonzero(modules[layer].weight) == modules[layer].weight.numel(), layer
    if "quantize.embedding" in original:  # the codebook stays whole
        assert torch.equal(modules["quantize.embedding"].weight, original["quantize.embedding"].weight)
    if granularity == "channel":
        assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in getattr(pipeline, name).parameters())
        assert totals["params_after"] < totals["params_before"]
    # the caller's models are untouched
    assert all(torch.equal(v, state(getattr(pipeline, name))[k]) for k, v in autoencoder_before.items())
    assert all(torch.equal(v, state(pipeline.unet)[k]) for k, v in unet_before.items())
    # save/load keeps every component: identical samples
    images = sample_images(result.pipeline, 2, num_inference_steps=2, seed=3)
    folder = result.save(tmp_path / f"{kind}-{granularity}")
    loaded = load_pipeline(str(folder), device="cpu")
    assert adapter_for(loaded).name == adapter.name
    assert torch.equal(sample_images(loaded, 2, num_inference_steps=2, seed=3), images)
    # deterministic
    clear_calibration_cache()
    again = prune(pipeline, spec)
    assert torch.equal(sample_images(again.pipeline, 2, num_inference_steps=2, seed=3), images)


def test_components_refusals(pipelines):
    with pytest.raises(ValueError, match="components"):
        prune(pipelines["ldm-vq"], PruneSpec(components=("unet", "text_encoder")))
    with pytest.raises(ValueError, match="components"):
        prune(pipelines["class-conditional"], PruneSpec(components=("vqvae",)))
    with pytest.raises(ValueError, match="prunes the denoiser only"):
        prune(pipelines["ldm-vq"], fast_spec("obs", components=("unet", "vqvae")))


def test_denoiser_only_by_default_shares_the_autoencoder(pipelines):
    pipeline = pipelines["ldm-vq"]
    result = prune(pipeline, PruneSpec(criterion="magnitude", sparsity=0.5))
    assert result.pipeline.vqvae is pipeline.vqvae and result.report.totals["components"] == ["unet"]
    assert set(result.report.layers["component"]) == {"unet"}


# ------------------------------------------------------------------------------------------ class-conditional
def test_class_conditional_calibrates_samples_and_evaluates_by_class(pipelines, tmp_path):
    from core.evaluate import evaluate

    pipeline = pipelines["class-conditional"]
    adapter = adapter_for(pipeline)
    assert adapter.num_classes(pipeline) == 3
    labels = adapter.sample_conditioning(pipeline, 300, torch.Generator().manual_seed(0))["class_labels"]
    assert set(labels.tolist()) == {0, 1, 2} and min(np.bincount(labels.numpy())) > 70  # uniform classes
    per_class = [sample_images(pipeline, 2, num_inference_steps=2, seed=0, class_label=c) for c in range(3)]
    assert not torch.equal(per_class[0], per_class[1])
    with pytest.raises(ValueError, match="class_label"):
        sample_images(pipeline, 1, num_inference_steps=2, class_label=3)
    with pytest.raises(ValueError, match="class_label"):
        sample_images(pipelines["scale-shift"], 1, num_inference_steps=2, class_label=0)
    for criterion in ("taylor", "nici", "obs", "gradflow"):
        result = prune(pipeline, fast_spec(criterion, "unstructured", 0.5))
        assert abs(result.report.totals["sparsity"] - 0.5) <= 0.01
        assert torch.isfinite(sample_images(result.pipeline, 2, num_inference_steps=2, class_label=1)).all()
    channel = prune(pipeline, fast_spec("taylor", "channel", 0.3))
    folder = channel.save(tmp_path / "class-channel")
    assert torch.equal(sample_images(load_pipeline(str(folder), device="cpu"), 2, 2, seed=1, class_label=2),
                       sample_images(channel.pipeline, 2, 2, seed=1, class_label=2))
    row = evaluate(pipeline, 2, num_inference_steps=2, metrics=("macs",), class_label=1)
    assert row["class_label"] == 1 and row["macs"] > 0
    with pytest.raises(ValueError, match="class_label"):
        evaluate(pipeline, 2, num_inference_steps=2, metrics=("macs",), class_label=7)


# ------------------------------------------------------------------------------------------ scale/shift
@pytest.mark.parametrize("sparsity", [0.1, 0.3, 0.5, 0.9])
def test_scale_shift_channel_pruning_keeps_the_halves_paired(pipelines, sparsity):
    """Channel pruning of a ``scale_shift`` UNet at any sparsity: each cut keeps the scale
    and shift halves of every time_emb_proj paired with norm2 and its groups whole, or is refused."""
    pipeline = pipelines["scale-shift"]
    try:
        result = prune(pipeline, PruneSpec(criterion="magnitude", granularity="channel", sparsity=sparsity))
    except ValueError as error:
        assert "sparsity" in str(error)
        return
    unet = result.pipeline.unet
    for module in unet.modules():
        if getattr(module, "time_embedding_norm", None) == "scale_shift":
            assert module.time_emb_proj.out_features == 2 * module.norm2.num_channels
            assert module.norm2.num_channels % module.norm2.num_groups == 0
        if isinstance(module, torch.nn.GroupNorm):
            assert module.num_channels % module.num_groups == 0
    assert abs(result.report.totals["sparsity"] - sparsity) <= 0.02
    assert torch.isfinite(sample_images(result.pipeline, 2, num_inference_steps=2)).all()


# ------------------------------------------------------------------------------------------ fine-tuning
def test_finetune_trains_latent_and_class_conditional_denoisers(pipelines, rgb_folder):
    from core.data import load_image_folder
    from core.finetune import finetune

    pipeline = pipelines["ldm-vq"]
    before = state(pipeline.unet)
    tuned = finetune(pipeline, 2, lr=1e-3, batch_size=2, images=load_image_folder(rgb_folder, IMAGE_SIZE, 3), ema=None)
    assert len(tuned.losses) == 2 and np.isfinite(tuned.losses["loss"]).all()
    assert any(not torch.equal(v, before[k]) for k, v in state(tuned.pipeline.unet).items())  # trained on latents
    assert all(torch.equal(v, before[k]) for k, v in state(pipeline.unet).items())  # caller untouched
    assert sample_images(tuned.pipeline, 1, num_inference_steps=2).shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    conditional = pipelines["class-conditional"]
    images = torch.rand(4, 1, 8, 8) * 2 - 1
    tuned = finetune(conditional, 2, lr=1e-3, batch_size=2, images=images)
    assert np.isfinite(tuned.losses["loss"]).all()
    assert torch.isfinite(sample_images(tuned.pipeline, 2, num_inference_steps=2, class_label=0)).all()


@pytest.mark.parametrize("kind", ["ldm-vq", "ldm-kl"])
def test_autoencoder_image_padding_applies_to_latent_unets_too(kind):
    """An autoencoder trained on padded images (config ``_image_padding``, as the embedded DiT's VAE)
    is padded on encode and cropped on decode by the latent UNet families as by the transformers:
    one autoencoder module serves them all."""
    pipeline = build(kind)
    adapter = adapter_for(pipeline)
    autoencoder = adapter.autoencoder(pipeline)
    autoencoder.register_to_config(_image_padding=[1, 1, 2, 2])
    channels, height, width = adapter.image_shape(pipeline)
    assert (height, width) == (IMAGE_SIZE - 4, IMAGE_SIZE - 2)
    images = sample_images(pipeline, 2, num_inference_steps=2, seed=0)
    assert images.shape == (2, channels, height, width)
    latents = adapter.encode(pipeline, images, torch.Generator().manual_seed(0))
    assert latents.shape == (2, *adapter.sample_shape(pipeline))
    assert adapter.decode(pipeline, latents).shape == images.shape
