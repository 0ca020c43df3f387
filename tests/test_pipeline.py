"""Loading and sampling: the default model, local save_pretrained models, bad input."""
import json

import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from core.default_model import DEFAULT_FAMILY, DEFAULT_MODEL_DIR
from core.pipeline import load_pipeline, pick_device, sample_images


def _tiny_unet(**overrides):
    config = dict(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=8, norm_num_groups=4,
    )
    config.update(overrides)
    torch.manual_seed(0)
    return UNet2DModel(**config)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-ddpm")
    DDPMPipeline(unet=_tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def default_pipeline():
    return load_pipeline(None, device="cpu")


def test_default_model_is_shipped_in_diffusers_format():
    assert (DEFAULT_MODEL_DIR / "model_index.json").exists()
    assert (DEFAULT_MODEL_DIR / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert (DEFAULT_MODEL_DIR / "scheduler" / "scheduler_config.json").exists()
    config = json.loads((DEFAULT_MODEL_DIR / "unet" / "config.json").read_text())
    from core.models import ADAPTERS

    trained = ADAPTERS[DEFAULT_FAMILY].new_denoiser()  # what ``diffprune train-base`` trains
    assert list(config["block_out_channels"]) == list(trained.config.block_out_channels)
    assert type(trained).__name__ == config["_class_name"]


def test_default_model_architecture(default_pipeline):
    unet = default_pipeline.unet
    params = sum(p.numel() for p in unet.parameters())
    assert 1e6 <= params <= 5e6
    heads_down = [m.heads for m in unet.down_blocks.modules() if type(m).__name__ == "Attention"]
    heads_up = [m.heads for m in unet.up_blocks.modules() if type(m).__name__ == "Attention"]
    assert heads_down and heads_up and min(heads_down + heads_up) >= 2
    assert any(isinstance(m, torch.nn.GroupNorm) for m in unet.modules())


def test_default_model_samples_deterministically(default_pipeline):
    first = sample_images(default_pipeline, 4, 5, seed=3)
    again = sample_images(default_pipeline, 4, 5, seed=3)
    other = sample_images(default_pipeline, 4, 5, seed=4)
    assert first.shape == (4, 1, 28, 28)
    assert first.min() >= -1 and first.max() <= 1
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 0.1


def test_batching_does_not_change_samples(default_pipeline):
    whole = sample_images(default_pipeline, 4, 3, seed=7, batch_size=4)
    split = sample_images(default_pipeline, 4, 3, seed=7, batch_size=3)
    assert torch.allclose(whole, split, atol=1e-5)


def test_dpm_solver_samples_are_batch_independent_and_follow_their_own_trajectory(default_pipeline):
    """DPM-Solver++ keeps earlier predictions between steps; every batch restarts it, so splitting
    the images differently gives the same samples. Its second-order steps differ from DDIM's."""
    whole = sample_images(default_pipeline, 4, 5, seed=3, scheduler="dpm-solver++", batch_size=4)
    split = sample_images(default_pipeline, 4, 5, seed=3, scheduler="dpm-solver++", batch_size=3)
    assert torch.allclose(whole, split, atol=1e-5)
    assert torch.equal(whole, sample_images(default_pipeline, 4, 5, seed=3, scheduler="dpm-solver++", batch_size=4))
    ddim = sample_images(default_pipeline, 4, 5, seed=3, scheduler="ddim", batch_size=4)
    assert (whole - ddim).abs().max() > 0.05
    from diffusers import DPMSolverMultistepScheduler

    from core.pipeline import _sampling_scheduler

    sampler = _sampling_scheduler(default_pipeline, "dpm-solver++")
    assert isinstance(sampler, DPMSolverMultistepScheduler)
    assert sampler.config.algorithm_type == "dpmsolver++" and sampler.config.solver_order == 2
    assert sampler.config.beta_schedule == default_pipeline.scheduler.config.beta_schedule


def test_local_save_pretrained_pipeline_loads(tiny_dir):
    pipeline = load_pipeline(tiny_dir, device="cpu")
    assert isinstance(pipeline.unet, UNet2DModel)
    images = sample_images(pipeline, 2, 3, seed=0)
    assert images.shape == (2, 1, 8, 8)
    ddpm = sample_images(pipeline, 2, 3, seed=0, scheduler="ddpm")
    assert torch.equal(ddpm, sample_images(pipeline, 2, 3, seed=0, scheduler="ddpm"))


def test_device_selection():
    assert pick_device("cpu").type == "cpu"
    assert pick_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device"):
        pick_device("tpu-9000")


def test_missing_path(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_pipeline(tmp_path / "nope" / "model")


def test_directory_that_is_not_a_pipeline(tmp_path):
    with pytest.raises(ValueError, match="not a diffusers pipeline"):
        load_pipeline(tmp_path)


def test_model_directory_without_pipeline(tmp_path):
    _tiny_unet().save_pretrained(tmp_path / "unet-only")
    with pytest.raises(ValueError, match="model_index.json"):
        load_pipeline(tmp_path / "unet-only")


def test_unknown_hub_id_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="could not load"):
        load_pipeline("nobody-here/not-a-real-model")


def test_non_diffusion_pipeline(tmp_path):
    from diffusers import DanceDiffusionPipeline, IPNDMScheduler, UNet1DModel

    unet = UNet1DModel(
        sample_size=64, in_channels=2, out_channels=2, extra_in_channels=16, block_out_channels=(8, 8, 16),
        down_block_types=("DownBlock1DNoSkip", "DownBlock1D", "AttnDownBlock1D"),
        up_block_types=("AttnUpBlock1D", "UpBlock1D", "UpBlock1DNoSkip"), mid_block_type="UNetMidBlock1D",
        use_timestep_embedding=False, flip_sin_to_cos=True, time_embedding_type="fourier",
    )
    DanceDiffusionPipeline(unet=unet, scheduler=IPNDMScheduler()).save_pretrained(tmp_path / "audio")
    with pytest.raises(ValueError, match="UNet2DModel|not an unconditional"):
        load_pipeline(tmp_path / "audio")


@pytest.mark.parametrize("field,kwargs", [
    ("num_images", dict(num_images=0)),
    ("num_images", dict(num_images=-3)),
    ("num_inference_steps", dict(num_inference_steps=0)),
    ("num_inference_steps", dict(num_inference_steps=5000)),
    ("scheduler", dict(scheduler="euler-magic")),
])
def test_bad_sampling_arguments(tiny_dir, field, kwargs):
    pipeline = load_pipeline(tiny_dir, device="cpu")
    arguments = dict(num_images=2, num_inference_steps=2, seed=0)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=field):
        sample_images(pipeline, **arguments)
