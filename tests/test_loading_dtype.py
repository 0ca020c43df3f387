"""Pipelines load in the dtype they were saved in (``load_pipeline(dtype=None)``), or convert to
the dtype asked for; float16 and bfloat16 models run forward and backward on this CPU.

Every family is built tiny and offline (``tests/tiny_families.py``, plus a pixel DDPM and a
latent LDM), converted to float16 / bfloat16 and written with ``save_pretrained``. Without a
``dtype`` diffusers itself would load every diffusers model as float32 (an fp16 checkpoint at
twice its size); ``load_pipeline`` reads the dtypes from the safetensors headers instead.
"""
import json

import pytest
import torch
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, LDMPipeline, UNet2DModel

import tiny_families
from core.dtypes import checkpoint_dtypes, read_safetensors_header, resolve_dtype
from core.pipeline import load_pipeline, sample_images

pytestmark = pytest.mark.usefixtures("one_thread")

HALF = (torch.float16, torch.bfloat16)


def pixel_ddpm():
    return DDPMPipeline(unet=tiny_families.attention_unet(), scheduler=DDPMScheduler(num_train_timesteps=1000))


def latent_ldm():
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=tiny_families.LATENT_SIZE, in_channels=4, out_channels=4, layers_per_block=1,
                       block_out_channels=(16, 32), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8, norm_num_groups=4).eval()
    return LDMPipeline(vqvae=tiny_families.tiny_vae(), unet=unet, scheduler=DDIMScheduler(num_train_timesteps=1000))


BUILDERS = {"pixel": pixel_ddpm, "latent": latent_ldm, **{name: tiny_families.FAMILIES[name]
                                                         for name in ("sd", "dit", "pixart", "sd3")}}


def modules(pipeline) -> dict:
    return {name: module for name, module in pipeline.components.items() if isinstance(module, torch.nn.Module)}


def kept_in_float32(module, name: str) -> bool:
    """A parameter of a module transformers keeps in float32 when loading float16 (T5's ``wo``)."""
    return any(part in name.split(".") for part in getattr(module, "_keep_in_fp32_modules", None) or ())


def dtypes(pipeline) -> dict:
    """component -> the set of floating dtypes of its parameters (one per component when kept),
    leaving out the few a library keeps in float32 on purpose."""
    return {name: {p.dtype for key, p in module.named_parameters() if p.is_floating_point()
                   and not kept_in_float32(module, key)}
            for name, module in modules(pipeline).items()}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(family, dtype) -> directory of the tiny pipeline converted to dtype and saved."""
    root = tmp_path_factory.mktemp("dtypes")
    paths = {}
    for family, builder in BUILDERS.items():
        pipeline = builder()
        for dtype in HALF:
            pipeline.to(dtype)
            path = root / f"{family}-{str(dtype).removeprefix('torch.')}"
            pipeline.save_pretrained(path)
            paths[family, dtype] = path
    return paths


@pytest.mark.parametrize("dtype", HALF, ids=["float16", "bfloat16"])
@pytest.mark.parametrize("family", list(BUILDERS))
def test_a_half_precision_checkpoint_loads_in_its_own_dtype(saved, family, dtype):
    path = saved[family, dtype]
    denoiser = "unet" if (path / "unet").is_dir() else "transformer"
    header = read_safetensors_header(path / denoiser / "diffusion_pytorch_model.safetensors")
    assert {entry["dtype"] for key, entry in header.items() if key != "__metadata__"} == {
        {torch.float16: "F16", torch.bfloat16: "BF16"}[dtype]}, "save_pretrained writes the model's dtype"
    pipeline = load_pipeline(path, device="cpu")
    assert dtypes(pipeline) == {name: {dtype} for name in modules(pipeline)}
    assert set(checkpoint_dtypes(path).values()) == {dtype}


@pytest.mark.parametrize("family", list(BUILDERS))
def test_a_dtype_asked_for_converts_every_component(saved, family):
    path = saved[family, torch.float16]
    widened = load_pipeline(path, device="cpu", dtype="float32")
    assert dtypes(widened) == {name: {torch.float32} for name in modules(widened)}
    other = load_pipeline(path, device="cpu", dtype=torch.bfloat16)
    assert dtypes(other) == {name: {torch.bfloat16} for name in modules(other)}
    # The values are the saved ones, widened exactly.
    kept = load_pipeline(path, device="cpu")
    denoiser = "unet" if "unet" in modules(kept) else "transformer"
    for (name, half), wide in zip(modules(kept)[denoiser].state_dict().items(),
                                  modules(widened)[denoiser].state_dict().values()):
        assert torch.equal(half.float(), wide.float()), name


def test_a_loader_that_ignores_the_dtype_is_corrected_after_loading(saved, monkeypatch):
    """diffusers versions that take no per-component dtype load float32: the components are
    brought back to their saved dtype rather than left wide."""
    import core.dtypes

    monkeypatch.setattr(core.dtypes, "from_pretrained_dtype", lambda dtype: {})
    pipeline = load_pipeline(saved["sd", torch.bfloat16], device="cpu")
    assert dtypes(pipeline) == {name: {torch.bfloat16} for name in modules(pipeline)}


def test_a_float32_checkpoint_stays_float32(tiny_model):
    assert dtypes(load_pipeline(tiny_model, device="cpu")) == {"unet": {torch.float32}}
    assert dtypes(load_pipeline(tiny_model, device="cpu", dtype="auto")) == {"unet": {torch.float32}}


def test_a_hub_id_is_downloaded_then_loaded_in_its_saved_dtype(saved, monkeypatch):
    """A hub id: the snapshot diffusers would fetch is downloaded first, so the dtypes are read
    from its local headers (here the download is a local float16 directory: no network)."""
    from diffusers import DiffusionPipeline

    asked = []

    def download(name, **kwargs):
        asked.append(name)
        return str(saved["sd", torch.float16])

    monkeypatch.setattr(DiffusionPipeline, "download", download)
    pipeline = load_pipeline("someone/tiny-sd", device="cpu")
    assert asked == ["someone/tiny-sd"]
    assert dtypes(pipeline) == {name: {torch.float16} for name in modules(pipeline)}
    assert pipeline.config._name_or_path == "someone/tiny-sd"


@pytest.mark.parametrize("bad", ["fp16", "half", "float64", "int8", 16, torch.float64, ""])
def test_a_bad_dtype_is_refused_naming_the_field_and_the_choices(tiny_model, bad):
    with pytest.raises(ValueError, match=r"dtype must be one of \['auto', 'float32', 'float16', 'bfloat16'\]"):
        load_pipeline(tiny_model, device="cpu", dtype=bad)
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype(bad)


def test_components_saved_in_different_dtypes_keep_each_their_own(tmp_path):
    pipeline = tiny_families.stable_diffusion()
    pipeline.unet.to(torch.float16)
    pipeline.text_encoder.to(torch.bfloat16)
    pipeline.save_pretrained(tmp_path)
    loaded = load_pipeline(tmp_path, device="cpu")
    assert dtypes(loaded) == {"unet": {torch.float16}, "text_encoder": {torch.bfloat16}, "vae": {torch.float32}}


def test_a_truncated_weights_file_is_one_line_naming_it(saved, tmp_path):
    import shutil

    path = tmp_path / "broken"
    shutil.copytree(saved["sd", torch.float16], path)
    weights = path / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:20])
    with pytest.raises(ValueError, match="could not load .*diffusion_pytorch_model.safetensors"):
        load_pipeline(path, device="cpu")


def _half_inputs(value, dtype):
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, dict):
        return {key: _half_inputs(item, dtype) for key, item in value.items()}
    return value


@pytest.mark.parametrize("dtype", HALF, ids=["float16", "bfloat16"])
@pytest.mark.parametrize("family", list(BUILDERS))
def test_half_precision_denoisers_run_forward_and_backward_on_the_cpu(saved, family, dtype):
    """The installed torch computes float16 and bfloat16 convolutions, attention and their
    gradients on a CPU: no upcast is needed to calibrate or sample a half-precision model."""
    from core.models import adapter_for

    pipeline = load_pipeline(saved[family, dtype], device="cpu")
    adapter = adapter_for(pipeline)
    denoiser = adapter.denoiser(pipeline)
    inputs = _half_inputs(adapter.example_inputs(adapter.denoiser_name, denoiser), dtype)
    output = denoiser(**inputs, return_dict=False)[0]
    assert output.dtype == dtype and torch.isfinite(output).all()
    output.float().square().mean().backward()
    gradients = [p.grad for p in denoiser.parameters() if p.grad is not None]
    assert gradients and all(g.dtype == dtype and torch.isfinite(g).all() for g in gradients)


@pytest.mark.parametrize("family", ["pixel", "sd"])
def test_a_half_precision_pipeline_samples_on_the_cpu(saved, family):
    pipeline = load_pipeline(saved[family, torch.bfloat16], device="cpu")
    images = sample_images(pipeline, 2, num_inference_steps=2, seed=0)
    assert images.dtype == torch.float32 and torch.isfinite(images).all()


# ------------------------------------------------------------------------- pruned checkpoints
def test_a_pruned_checkpoint_keeps_the_dtype_it_was_saved_in(tmp_path):
    """Save writes the weights in the model's dtype; load rebuilds the cut shapes without widening
    them (the rebuild starts from float32 tensors and must come back to the saved dtype)."""
    from core.engine import prune
    from core.spec import PruneSpec

    result = prune(tiny_families.stable_diffusion(), PruneSpec(criterion="magnitude", granularity="channel",
                                                               sparsity=0.3, device="cpu"))
    result.pipeline.to(torch.float16)
    path = result.save(tmp_path / "pruned")
    header = read_safetensors_header(path / "unet" / "diffusion_pytorch_model.safetensors")
    assert {entry["dtype"] for key, entry in header.items() if key != "__metadata__"} == {"F16"}
    loaded = load_pipeline(path, device="cpu")
    assert dtypes(loaded) == {name: {torch.float16} for name in modules(loaded)}
    expected = result.pipeline.unet.state_dict()
    for name, tensor in loaded.unet.state_dict().items():
        assert tensor.dtype == expected[name].dtype and torch.equal(tensor, expected[name]), name
    converted = load_pipeline(path, device="cpu", dtype="float32")
    assert dtypes(converted) == {name: {torch.float32} for name in modules(converted)}


def test_prune_then_save_round_trip_keeps_float16(saved, tmp_path):
    """``prune`` of a float16 pipeline, ``PruneResult.save``, ``load_pipeline``: float16 all along."""
    from core.engine import prune
    from core.spec import PruneSpec

    dense = load_pipeline(saved["pixel", torch.float16], device="cpu")
    result = prune(dense, PruneSpec(criterion="magnitude", granularity="unstructured", sparsity=0.5, device="cpu"))
    assert dtypes(result.pipeline)["unet"] == {torch.float16}
    assert dtypes(dense)["unet"] == {torch.float16}  # the caller's model untouched
    loaded = load_pipeline(result.save(tmp_path / "pruned"), device="cpu")
    assert dtypes(loaded) == {"unet": {torch.float16}}
    marker = json.loads((tmp_path / "pruned" / "diffprune_checkpoint.json").read_text())
    assert marker["family"] == "pixel-unet"


# ------------------------------------------------------------------------------------ the CLI
def test_the_cli_passes_its_dtype_to_the_loader(saved, tmp_path, monkeypatch, capsys):
    import core.pipeline
    from core.cli import build_parser, main

    asked = []
    real = core.pipeline.load_pipeline

    def recording(source, device=None, dtype=None):
        asked.append(dtype)
        return real(source, device=device, dtype=dtype)

    monkeypatch.setattr(core.pipeline, "load_pipeline", recording)
    grid = tmp_path / "grid.png"
    assert main(["sample", "--model", str(saved["pixel", torch.float16]), "--dtype", "bfloat16", "--output",
                 str(grid), "--num-images", "1", "--steps", "1", "--device", "cpu", "--quiet"]) == 0
    assert asked == ["bfloat16"] and grid.is_file()
    for command in (["prune", "--output", "x"], ["eval"], ["sample", "--output", "x.png"],
                    ["sweep", "--criteria", "random"], ["finetune", "--model", "m", "--output", "x"]):
        assert build_parser().parse_args(command).dtype == "auto"
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["sample", "--output", "x.png", "--dtype", "fp16"])
    assert stop.value.code == 2 and "--dtype" in capsys.readouterr().err
