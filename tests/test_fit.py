"""Will it fit? (``core.fit``): sizes from configs alone, refusals before any weight is read.

Directories here hold only ``model_index.json`` and the components' ``config.json`` (tiny
pipelines saved and stripped of their weights, and the published config of the Stable
Diffusion 1.5 UNet); nothing is downloaded and no weight file exists to be read.
"""
import json

import pytest
import torch

import tiny_families
from core.fit import (ACTIVATION_FACTOR, HESSIAN_BYTES, MAX_MEMORY_ENV, MAX_PARAMS_ENV, PEAK_FACTORS, FitError,
                      check_fit, check_size_cap, estimate_fit)
from core.pipeline import load_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

# The published config of the Stable Diffusion 1.5 UNet (unet/config.json of the hub repository).
SD15_UNET_CONFIG = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
SD15_UNET_PARAMS = 859_520_964
GIB = 2 ** 30


@pytest.fixture(autouse=True)
def no_caps(monkeypatch):
    """No cap from the environment unless a test sets one."""
    monkeypatch.delenv(MAX_PARAMS_ENV, raising=False)
    monkeypatch.delenv(MAX_MEMORY_ENV, raising=False)


@pytest.fixture(autouse=True)
def no_weight_reads(monkeypatch):
    """Reading a weight file is a test failure (configs and headers only)."""
    import safetensors.torch

    def refuse(*args, **kwargs):
        raise AssertionError("a weight file was read")

    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    monkeypatch.setattr(safetensors, "safe_open", refuse)
    monkeypatch.setattr(torch, "load", refuse)


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    """A config-only Stable Diffusion 1.5 directory: the UNet alone."""
    root = tmp_path_factory.mktemp("sd15") / "stable-diffusion-v1-5"
    (root / "unet").mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                       "unet": ["diffusers", "UNet2DConditionModel"],
                                                       "scheduler": ["diffusers", "PNDMScheduler"],
                                                       "safety_checker": [None, None]}))
    (root / "unet" / "config.json").write_text(json.dumps(SD15_UNET_CONFIG))
    return root


FAMILIES = ("sd", "dit", "pixart", "sd3")


@pytest.fixture(scope="module")
def config_only(tmp_path_factory):
    """family -> (directory holding only configs, {component: real parameter count})."""
    root = tmp_path_factory.mktemp("configs")
    out = {}
    for family in FAMILIES:
        pipeline = tiny_families.build(family)
        path = root / family
        pipeline.save_pretrained(path)
        for weights in list(path.rglob("*.safetensors")) + list(path.rglob("*.bin")):
            weights.unlink()
        counts = {name: sum(p.numel() for p in module.parameters())
                  for name, module in pipeline.components.items() if isinstance(module, torch.nn.Module)}
        out[family] = (path, counts)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_meta_counts_equal_the_real_models_from_configs_alone(config_only, family):
    path, counts = config_only[family]
    assert not list(path.rglob("*.safetensors"))
    estimate = estimate_fit(path, device="cpu")
    assert estimate.params == counts
    assert estimate.dtypes == {name: "float32" for name in counts}  # no weights, no dtype asked: float32
    assert estimate.bytes == {name: 4 * count for name, count in counts.items()}
    half = estimate_fit(path, device="cpu", dtype="float16")
    assert half.bytes == {name: 2 * count for name, count in counts.items()} and half.dtype == "float16"


def test_the_sd15_unet_config_counts_859_million_parameters(sd15):
    estimate = estimate_fit(sd15, device="cpu", dtype="float16")
    assert estimate.params == {"unet": SD15_UNET_PARAMS}
    assert estimate.denoiser == "unet" and estimate.denoiser_bytes == 2 * SD15_UNET_PARAMS
    assert estimate.pipeline_bytes == 2 * SD15_UNET_PARAMS and estimate.peak_bytes == estimate.pipeline_bytes


def test_the_peak_grows_with_the_criterions_factor(sd15, monkeypatch):
    monkeypatch.setenv(MAX_MEMORY_ENV, "1000")
    denoiser = 2 * SD15_UNET_PARAMS
    estimates = {name: estimate_fit(sd15, name, device="cpu", dtype="float16") for name in PEAK_FACTORS}
    for name, estimate in estimates.items():
        factor, addition = PEAK_FACTORS[name]
        extra = int(factor * denoiser)
        if addition == "activations":
            extra += int(ACTIVATION_FACTOR * denoiser)
        if addition == "hessian":
            # The widest input of the SD 1.5 UNet: a 3x3 convolution over 2 x 1280 channels.
            extra += (2 * 1280 * 9) ** 2 * HESSIAN_BYTES
        assert estimate.extra_bytes == extra, name
        assert estimate.peak_bytes == denoiser + extra and estimate.fits
    assert estimates["random"].peak_bytes == estimates["magnitude"].peak_bytes < estimates["obs"].peak_bytes
    assert estimates["obs"].peak_bytes < estimates["taylor"].peak_bytes == estimates["l1"].peak_bytes
    assert estimates["gradflow"].peak_bytes > estimates["taylor"].peak_bytes  # a second-order step holds more


def test_every_registered_criterion_has_a_row_of_the_table():
    from core.registry import CRITERIA

    import core.spec  # noqa: F401 - registers every criterion

    assert set(CRITERIA) <= set(PEAK_FACTORS)


def test_a_run_over_the_memory_is_refused_naming_the_estimate(sd15, monkeypatch):
    monkeypatch.setenv(MAX_MEMORY_ENV, "4")
    with pytest.raises(FitError) as refused:
        check_fit(sd15, "taylor", device="cpu", dtype="float16")
    message = str(refused.value)
    assert message.startswith(str(sd15)) and "pruning with taylor needs about 7.2 GiB" in message
    assert "pipeline 1.6 GiB + 3.0 x unet 1.6 GiB + activations ~0.8 GiB" in message
    assert f"4.0 GiB available ({MAX_MEMORY_ENV})" in message
    assert isinstance(refused.value, ValueError)
    fitting = check_fit(sd15, "magnitude", device="cpu", dtype="float16")  # 1.6 + 1.25 x 1.6 GiB
    assert fitting.fits and "needs about 3.6 GiB" in fitting.message


def test_the_parameter_cap_refuses_before_any_weight_is_loaded(sd15, monkeypatch):
    from diffusers import DiffusionPipeline

    def never(*args, **kwargs):
        raise AssertionError("from_pretrained was called")

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", never)
    monkeypatch.setattr(DiffusionPipeline, "download", never)
    monkeypatch.setenv(MAX_PARAMS_ENV, "5e8")
    with pytest.raises(FitError, match=rf"859.5 M parameters \(unet 859.5 M\) exceed {MAX_PARAMS_ENV}=5e\+08"):
        load_pipeline(sd15, device="cpu")
    with pytest.raises(FitError, match="exceed"):
        check_size_cap(str(sd15))
    monkeypatch.setenv(MAX_PARAMS_ENV, "1e9")
    assert check_size_cap(str(sd15)).total_params == SD15_UNET_PARAMS


def test_no_cap_reads_nothing(monkeypatch, tmp_path):
    assert check_size_cap(tmp_path / "not-even-a-model") is None


def test_the_memory_cap_applies_to_loading(sd15, monkeypatch):
    monkeypatch.setenv(MAX_MEMORY_ENV, "1")
    with pytest.raises(FitError, match=r"loading needs about 1.6 GiB .*1.0 GiB available"):
        check_size_cap(str(sd15), dtype="float16")


def test_an_embedded_model_is_never_capped(monkeypatch):
    monkeypatch.undo()  # the default model's weights are read: lift the read guard
    monkeypatch.delenv(MAX_MEMORY_ENV, raising=False)
    monkeypatch.setenv(MAX_PARAMS_ENV, "10")
    assert load_pipeline(None, device="cpu") is not None


def test_a_fitting_model_passes(monkeypatch):
    monkeypatch.setenv(MAX_MEMORY_ENV, "1")
    estimate = check_fit(None, "taylor", device="cpu")  # the embedded default model: headers only
    assert estimate.fits and estimate.denoiser == "unet" and estimate.dtype == "float32"
    assert estimate.params["unet"] == estimate.bytes["unet"] // 4 > 0
    assert "needs about" in estimate.message and f"available ({MAX_MEMORY_ENV})" in estimate.message


def test_weights_at_hand_give_the_dtype_and_the_stored_shapes(tmp_path):
    """Headers, not configs, when the weights are there: a float16 checkpoint is counted at 2
    bytes a parameter and a channel-pruned one at its cut size."""
    pipeline = tiny_families.stable_diffusion().to(torch.float16)
    pipeline.save_pretrained(tmp_path / "half")
    estimate = estimate_fit(tmp_path / "half", device="cpu")
    assert estimate.dtypes == {"text_encoder": "float16", "unet": "float16", "vae": "float16"}
    assert estimate.bytes["unet"] == 2 * sum(p.numel() for p in pipeline.unet.parameters())
    assert estimate_fit(tmp_path / "half", device="cpu", dtype="float32").bytes["unet"] == 2 * estimate.bytes["unet"]


def test_a_pruned_checkpoint_is_counted_at_its_cut_size(tmp_path, monkeypatch):
    monkeypatch.undo()  # prune and save read and write weights
    from core.engine import prune
    from core.spec import PruneSpec

    dense = tiny_families.stable_diffusion()
    result = prune(dense, PruneSpec(criterion="magnitude", granularity="channel", sparsity=0.3, device="cpu"))
    path = result.save(tmp_path / "pruned")
    estimate = estimate_fit(path, device="cpu")
    assert estimate.params["unet"] == sum(p.numel() for p in result.pipeline.unet.parameters())
    assert estimate.params["unet"] < sum(p.numel() for p in dense.unet.parameters())


def test_a_loaded_pipeline_is_estimated_from_its_modules():
    pipeline = tiny_families.pixart()
    estimate = estimate_fit(pipeline, "obs", device="cpu")
    assert estimate.params == {name: sum(p.numel() for p in module.parameters())
                               for name, module in pipeline.components.items() if isinstance(module, torch.nn.Module)}
    widest = max([m.in_features for m in pipeline.transformer.modules() if isinstance(m, torch.nn.Linear)]
                 + [m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                    for m in pipeline.transformer.modules() if isinstance(m, torch.nn.Conv2d)])
    assert estimate.extra_bytes == int(1.25 * estimate.denoiser_bytes) + widest ** 2 * HESSIAN_BYTES


def test_a_hub_id_downloads_only_configs(config_only, monkeypatch):
    """For a hub id only model_index.json and config.json files are fetched; the weights' dtype
    comes from header requests (here: none answer, as offline)."""
    import huggingface_hub
    from huggingface_hub import HfApi

    path, counts = config_only["sd"]
    fetched = []

    def download(repo_id, filename, **kwargs):
        assert repo_id == "someone/tiny-sd"
        fetched.append(filename)
        target = path / filename
        if not target.is_file():
            raise OSError(f"{filename} not found")
        return str(target)

    def no_header(self, repo_id, filename, **kwargs):
        fetched.append(f"header:{filename}")
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *args, **kwargs: None)
    monkeypatch.setattr(HfApi, "parse_safetensors_file_metadata", no_header)
    estimate = estimate_fit("someone/tiny-sd", "magnitude", device="cpu")
    assert estimate.params == counts and estimate.source == "someone/tiny-sd"
    downloads = [name for name in fetched if not name.startswith("header:")]
    assert downloads and all(name.endswith(".json") for name in downloads), downloads
    assert "model_index.json" in downloads and "unet/config.json" in downloads


def test_a_hub_id_takes_its_dtype_from_the_weight_headers(config_only, monkeypatch):
    import huggingface_hub
    from huggingface_hub import HfApi
    from huggingface_hub.utils import SafetensorsFileMetadata, TensorInfo

    path, counts = config_only["sd"]
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo_id, filename, **kwargs: str(path / filename))
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *args, **kwargs: None)

    def header(self, repo_id, filename, **kwargs):
        count = counts[filename.split("/")[0]]
        return SafetensorsFileMetadata(metadata={}, tensors={
            "x.weight": TensorInfo(dtype="F16", shape=[count], data_offsets=(0, 2 * count))})

    monkeypatch.setattr(HfApi, "parse_safetensors_file_metadata", header)
    estimate = estimate_fit("someone/tiny-sd", device="cpu")
    assert estimate.dtypes == {name: "float16" for name in counts}
    assert estimate.bytes == {name: 2 * count for name, count in counts.items()}


@pytest.mark.parametrize("kwargs, field", [
    (dict(criterion="bogus"), "criterion must be one of"),
    (dict(dtype="fp8"), "dtype must be one of"),
    (dict(device="tpu"), "device must be"),
])
def test_bad_arguments_are_refused_naming_the_field(sd15, kwargs, field):
    with pytest.raises(ValueError, match=field):
        estimate_fit(sd15, **kwargs)


@pytest.mark.parametrize("name, value", [(MAX_PARAMS_ENV, "lots"), (MAX_PARAMS_ENV, "-1"), (MAX_MEMORY_ENV, "0")])
def test_a_bad_environment_value_names_the_variable(sd15, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"environment variable {name} must be a positive number"):
        estimate_fit(sd15, device="cpu")


def test_sources_that_are_not_pipelines_are_refused(tmp_path):
    with pytest.raises(ValueError, match="no model_index.json"):
        estimate_fit(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        estimate_fit(tmp_path / "missing" / "model")


def test_the_cli_refuses_a_prune_that_does_not_fit_before_loading(sd15, tmp_path, monkeypatch, capsys):
    from core.cli import main

    monkeypatch.setenv(MAX_MEMORY_ENV, "2")
    code = main(["prune", "--model", str(sd15), "--output", str(tmp_path / "out"), "--criterion", "taylor",
                 "--dtype", "float16", "--device", "cpu", "--quiet"])
    error = capsys.readouterr().err
    assert code == 2 and "pruning with taylor needs about 7.2 GiB" in error and "2.0 GiB available" in error
    assert not (tmp_path / "out").exists()
    code = main(["sweep", "--model", str(sd15), "--criteria", "magnitude,obs", "--dtype", "float16", "--device", "cpu",
                 "--results-dir", str(tmp_path / "results"), "--quiet"])
    assert code == 2 and "pruning with magnitude needs about 3.6 GiB" in capsys.readouterr().err


def test_the_app_turns_a_cap_into_a_field_error(sd15, monkeypatch):
    import gradio as gr

    from diffprune_ui import handlers

    monkeypatch.setenv(MAX_PARAMS_ENV, "1e8")
    with pytest.raises(gr.Error, match=f"exceed {MAX_PARAMS_ENV}"):
        handlers.check_source(str(sd15))


def test_the_app_checks_the_runs_peak_before_a_run(tiny_model, monkeypatch):
    """validate_run estimates the chosen criterion's peak on the loaded model: a run that cannot
    fit is a field error naming the estimate, before anything on screen changes."""
    import gradio as gr

    from diffprune_ui import handlers
    from test_app_handlers import run_args

    monkeypatch.undo()  # the tiny model's weights are loaded
    handlers.check_run(*run_args(tiny_model, criterion="taylor", granularity="unstructured"))
    monkeypatch.setenv(MAX_MEMORY_ENV, "1e-6")
    with pytest.raises(gr.Error, match=r"model .*: pruning with taylor needs about .* available \(DIFFPRUNE_MAX_MEMORY_GB\)"):
        handlers.check_run(*run_args(tiny_model, criterion="taylor", granularity="unstructured"))
