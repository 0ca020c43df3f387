"""The evaluation entry point: one call, every metric, stored results, clear errors."""
import time

import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from core import metrics
from core.evaluate import METRICS, RESULT_KEYS, evaluate
from core.metrics import FeatureCache
from core.pipeline import load_pipeline
from core.store import ResultStore


@pytest.fixture(autouse=True)
def _private_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("DIFFPRUNE_RESULTS_DIR", str(tmp_path / "results"))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # 2 OpenMP threads on 2 shared, loaded cores run tiny models ~20x slower than 1 (measured).
    with metrics.torch_threads(1):
        yield


def _tiny_pipeline(directory, seed=0):
    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(4, 8),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                       attention_head_dim=4, norm_num_groups=2)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(directory)
    return load_pipeline(directory, device="cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _tiny_pipeline(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    return _tiny_pipeline(tmp_path_factory.mktemp("other"), seed=1)


def test_dense_reference_of_a_model_against_itself_is_zero(tiny, tmp_path):
    cache = FeatureCache(tmp_path / "features")
    result = evaluate(tiny, 4, num_inference_steps=2, metrics=("fid", "kid"), reference="dense",
                      dense_pipeline=tiny, feature_cache=cache)
    assert abs(result["fid"]) < 0.05
    # KID's unbiased MMD assumes independent sets; for one set with itself the cross term keeps
    # k(x, x) and the estimate is slightly negative, never a positive distance.
    assert result["kid"] <= 0
    assert result["reference"] == "dense" and result["kid_subset_size"] == 2
    assert len(list((tmp_path / "features").glob("*.safetensors"))) == 1  # dense features cached
    assert set(RESULT_KEYS) <= set(result) and result["cached"] is False
    assert result["latency_median_s_per_image"] is None and result["macs"] is None  # not requested


def test_store_returns_identical_row_instantly(tiny, tmp_path):
    store = ResultStore(tmp_path / "store")
    fractions = []
    first = evaluate(tiny, 4, num_inference_steps=2, metrics=("kid", "macs"), store=store,
                     progress=lambda fraction, message: fractions.append((fraction, message)),
                     prune_spec={"criterion": "magnitude", "sparsity": 0.0})
    assert first["cached"] is False and len(store) == 1
    assert fractions and all(0.0 <= f <= 1.0 for f, _ in fractions) and fractions[-1][0] == 1.0
    assert [f for f, _ in fractions] == sorted(f for f, _ in fractions)
    assert first["reference"] == "fashion-mnist-test" and first["kid_std"] >= 0
    assert first["params"] == sum(p.numel() for p in tiny.unet.parameters()) and first["macs"] > 0
    started = time.perf_counter()
    again = evaluate(tiny, 4, num_inference_steps=2, metrics=("kid", "macs"), store=ResultStore(tmp_path / "store"),
                     prune_spec={"sparsity": 0.0, "criterion": "magnitude"})
    assert time.perf_counter() - started < 5.0
    assert again["cached"] is True
    assert {k: v for k, v in again.items() if k != "cached"} == {k: v for k, v in first.items() if k != "cached"}
    changed = evaluate(tiny, 4, num_inference_steps=2, seed=1, metrics=("kid", "macs"), store=store,
                       prune_spec={"criterion": "magnitude", "sparsity": 0.0})
    assert changed["cached"] is False and changed["key"] != first["key"] and len(store) == 2
    frame = store.to_dataframe()
    assert len(frame) == 2 and "prune_spec.sparsity" in frame.columns and set(frame["seed"]) == {0, 1}


def test_latency_and_counts_with_dense_speedup(tiny, other):
    result = evaluate(other, 2, num_inference_steps=2, metrics=("latency", "macs"), dense_pipeline=tiny,
                      latency_batch_size=2, latency_repeats=5)
    assert result["latency_median_s_per_image"] > 0 and result["dense_latency_median_s_per_image"] > 0
    assert result["latency_min_s_per_image"] <= result["latency_median_s_per_image"] <= result["latency_max_s_per_image"]
    assert result["latency_batch_size"] == 2 and result["threads"] == 1 and result["device"] == "cpu"
    assert 0.5 < result["speedup"] < 2.0  # same architecture, different weights
    assert result["params"] == sum(p.numel() for p in other.unet.parameters())
    assert result["nonzero_params"] == sum(int(torch.count_nonzero(p)) for p in other.unet.parameters())
    assert result["fid"] is None and result["seconds"] > 0


def test_bad_arguments_raise_clear_value_errors(tiny, tmp_path):
    with pytest.raises(ValueError, match=r"metrics must be a non-empty subset of \['fid', 'kid', 'latency', 'macs'\]"):
        evaluate(tiny, 4, metrics=("fid", "ssim"))
    with pytest.raises(ValueError, match="num_samples must be an integer >= 2"):
        evaluate(tiny, 1, metrics=("kid",))
    with pytest.raises(ValueError, match="reference must be one of"):
        evaluate(tiny, 4, reference="imagenet")
    with pytest.raises(ValueError, match="reference must be one of"):
        evaluate(tiny, 4, reference=str(tmp_path / "no-such-folder"))
    with pytest.raises(ValueError, match="reference='dense' needs dense_pipeline"):
        evaluate(tiny, 4, reference="dense")
    with pytest.raises(ValueError, match="kid_subset_size must be at most"):
        evaluate(tiny, 4, metrics=("kid",), kid_subset_size=5)
    with pytest.raises(ValueError, match="scheduler must be one of"):
        evaluate(tiny, 4, scheduler="euler")
    with pytest.raises(ValueError, match="num_inference_steps must be an integer >= 1"):
        evaluate(tiny, 4, num_inference_steps=0)
    assert METRICS == ("fid", "kid", "latency", "macs")


def test_given_samples_are_scored_as_the_sampled_ones(tiny, tmp_path):
    """The app passes its grid as ``images`` when the evaluation would draw the same samples: the
    scores equal those of sampling them again, and a wrong count is refused."""
    from core import sample_images

    sampled = evaluate(tiny, 4, num_inference_steps=2, seed=3, metrics=("fid", "kid"))
    images = sample_images(tiny, 4, num_inference_steps=2, seed=3)
    given = evaluate(tiny, 4, num_inference_steps=2, seed=3, metrics=("fid", "kid"), images=images)
    assert sampled["samples_reused"] is False and given["samples_reused"] is True
    assert given["fid"] == pytest.approx(sampled["fid"], abs=1e-6) and given["kid"] == pytest.approx(sampled["kid"], abs=1e-9)
    with pytest.raises(ValueError, match="images must be the 4 samples"):
        evaluate(tiny, 4, num_inference_steps=2, seed=3, metrics=("kid",), images=images[:3])
