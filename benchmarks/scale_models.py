"""Billion-parameter-class denoisers with random weights, built offline from their published configs.

Used by ``benchmarks/bench_scale.py``. Each family names its hub repository, the denoiser class and
the denoiser's published config (written out literally below from the repository's
``transformer/config.json`` or ``unet/config.json``; nothing is downloaded), and its published
parameter count, which ``check_param_counts`` compares with what the config builds.

What is real and what is a stand-in:

* The **denoiser** is the published architecture at full size, weights random (seeded), fp16.
  One setting differs from the published config: ``sample_size`` (the latent side) is 32, so that
  the calibration pass (one image, two timesteps) runs on 32 x 32 latents. It changes no parameter
  count: for PixArt and DiT it only sizes the positional-embedding buffer, and PixArt's
  ``use_additional_conditions`` (which the published 1024 model gets implicitly from its
  ``sample_size`` of 128) is written out as ``True`` so the resolution embedders stay.
* **Text encoders, tokenizers and the VAE are tiny stand-ins** with the interface widths the
  denoiser needs (CLIP hidden 768 for SD 1.5's cross-attention, T5 ``d_model`` 4096 for PixArt's
  captions and SD3's joint attention, CLIP-L/G projections 768 + 1280 = 2048 for SD3's pooled
  input, VAEs with 4 or 16 latent channels). The VAE has two levels (factor 2), so 32 x 32 latents
  are 64 x 64 pixel images. Tokenizers come from in-memory vocabularies, as in
  ``tests/tiny_families.py``.
* For the memory accounting, the parameter counts of the real text encoders and VAE are counted
  from their published configs on the ``meta`` device (``real_other_params``).

``build_pipeline(family, tiny=False)`` returns the pipeline; ``save_family(family, root)`` writes it
with ``save_pretrained`` (skipped when present) plus a folder of two calibration images at the
model's pixel size. ``tiny=True`` swaps in a tiny denoiser config of the same family (tests).
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

# Latent side used for every family (see the module docstring); published values are in the configs.
BENCH_SAMPLE_SIZE = 32
TINY_SAMPLE_SIZE = 8
MAX_TOKENS = 64  # tokenizer length and the tiny text encoders' position tables
CALIBRATION_IMAGES = 2
MARKER = "scale_model.json"  # written last: a directory without it is rebuilt

# ------------------------------------------------------------------------------------- families
FAMILIES: dict[str, dict] = {
    "sd15": dict(
        label="Stable Diffusion 1.5 UNet",
        hub_id="stable-diffusion-v1-5/stable-diffusion-v1-5",  # unet/config.json (was runwayml/stable-diffusion-v1-5)
        denoiser_class="UNet2DConditionModel",
        denoiser_attribute="unet",
        published_params=859_520_964,
        published_params_text="859,520,964",
        config={
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
        },
        tiny_config={
            "attention_head_dim": 8,
            "block_out_channels": [64, 128],
            "cross_attention_dim": 32,
            "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
            "in_channels": 4,
            "layers_per_block": 2,
            "norm_num_groups": 8,
            "out_channels": 4,
            "sample_size": 8,
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        },
        latent_channels=4,
    ),
    "pixart-alpha": dict(
        label="PixArt-alpha XL-2-1024-MS",
        hub_id="PixArt-alpha/PixArt-XL-2-1024-MS",  # transformer/config.json
        denoiser_class="PixArtTransformer2DModel",
        denoiser_attribute="transformer",
        published_params=610_000_000,
        published_params_text="~0.61 B",
        config={  # the published keys PixArtTransformer2DModel takes (the file was written for Transformer2DModel)
            "activation_fn": "gelu-approximate",
            "attention_bias": True,
            "attention_head_dim": 72,
            "attention_type": "default",
            "caption_channels": 4096,
            "cross_attention_dim": 1152,
            "dropout": 0.0,
            "in_channels": 4,
            "norm_elementwise_affine": False,
            "norm_eps": 1e-06,
            "norm_num_groups": 32,
            "norm_type": "ada_norm_single",
            "num_attention_heads": 16,
            "num_embeds_ada_norm": 1000,
            "num_layers": 28,
            "out_channels": 8,
            "patch_size": 2,
            "sample_size": 128,
            "upcast_attention": False,
            "use_additional_conditions": True,  # implicit in the published file (sample_size 128)
        },
        tiny_config={
            # width 4 x 24 = 96: the resolution / aspect-ratio embedders take a third of it each
            "attention_head_dim": 24, "caption_channels": 32, "cross_attention_dim": 96, "in_channels": 4,
            "norm_num_groups": 4, "num_attention_heads": 4, "num_layers": 4, "out_channels": 8, "patch_size": 2,
            "sample_size": 8, "use_additional_conditions": True,
        },
        latent_channels=4,
    ),
    "dit-xl-2": dict(
        label="DiT-XL/2-256",
        hub_id="facebook/DiT-XL-2-256",  # transformer/config.json (a Transformer2DModel; DiTPipeline's class here)
        denoiser_class="DiTTransformer2DModel",
        denoiser_attribute="transformer",
        published_params=675_000_000,
        published_params_text="~0.675 B",
        config={
            "activation_fn": "gelu-approximate",
            "attention_bias": True,
            "attention_head_dim": 72,
            "dropout": 0.0,
            "in_channels": 4,
            "norm_elementwise_affine": False,
            "norm_num_groups": 32,
            "norm_type": "ada_norm_zero",
            "num_attention_heads": 16,
            "num_embeds_ada_norm": 1000,
            "num_layers": 28,
            "out_channels": 8,
            "patch_size": 2,
            "sample_size": 32,
            "upcast_attention": False,
        },
        tiny_config={
            "attention_head_dim": 16, "in_channels": 4, "norm_num_groups": 4, "num_attention_heads": 4, "num_layers": 4,
            "out_channels": 8, "patch_size": 2, "sample_size": 8,
        },
        latent_channels=4,
    ),
    "sd3-medium": dict(
        label="SD3-medium",
        hub_id="stabilityai/stable-diffusion-3-medium-diffusers",  # transformer/config.json
        denoiser_class="SD3Transformer2DModel",
        denoiser_attribute="transformer",
        published_params=2_030_000_000,
        published_params_text="~2.03 B",
        config={
            "attention_head_dim": 64,
            "caption_projection_dim": 1536,
            "in_channels": 16,
            "joint_attention_dim": 4096,
            "num_attention_heads": 24,
            "num_layers": 24,
            "out_channels": 16,
            "patch_size": 2,
            "pooled_projection_dim": 2048,
            "pos_embed_max_size": 192,
            "sample_size": 128,
        },
        tiny_config={
            "attention_head_dim": 16, "caption_projection_dim": 64, "in_channels": 16, "joint_attention_dim": 64,
            "num_attention_heads": 4, "num_layers": 4, "out_channels": 16, "patch_size": 2, "pooled_projection_dim": 32,
            "pos_embed_max_size": 16, "sample_size": 8,
        },
        latent_channels=16,
    ),
    "sd35-large": dict(
        label="SD3.5-Large",
        hub_id="stabilityai/stable-diffusion-3.5-large",  # transformer/config.json
        denoiser_class="SD3Transformer2DModel",
        denoiser_attribute="transformer",
        published_params=8_100_000_000,
        published_params_text="~8.1 B",
        large=True,  # GPU hosts only (bench_scale --include-large)
        config={
            "attention_head_dim": 64,
            "caption_projection_dim": 2432,
            "in_channels": 16,
            "joint_attention_dim": 4096,
            "num_attention_heads": 38,
            "num_layers": 38,
            "out_channels": 16,
            "patch_size": 2,
            "pooled_projection_dim": 2048,
            "pos_embed_max_size": 192,
            "qk_norm": "rms_norm",
            "sample_size": 128,
        },
        tiny_config={
            "attention_head_dim": 16, "caption_projection_dim": 64, "in_channels": 16, "joint_attention_dim": 64,
            "num_attention_heads": 4, "num_layers": 4, "out_channels": 16, "patch_size": 2, "pooled_projection_dim": 32,
            "pos_embed_max_size": 16, "qk_norm": "rms_norm", "sample_size": 8,
        },
        latent_channels=16,
    ),
}

# The real pipeline's other components, from their published configs, counted on the meta device
# (for the memory accounting of bench_scale --table). Keys: transformers / diffusers class names.
_CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
               max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu", projection_dim=768)
_CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
               max_position_embeddings=77, vocab_size=49408, hidden_act="gelu", projection_dim=1280)
_T5_XXL = dict(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24, vocab_size=32128,
               feed_forward_proj="gated-gelu", relative_attention_num_buckets=32)
_SD_VAE = dict(block_out_channels=[128, 256, 512, 512], latent_channels=4, layers_per_block=2, norm_num_groups=32,
               down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)
_SD3_VAE = dict(_SD_VAE, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False)
REAL_OTHERS = {
    # stable-diffusion-v1-5: text_encoder (CLIP ViT-L/14 text tower), vae
    "sd15": [("CLIPTextModel", _CLIP_L), ("AutoencoderKL", _SD_VAE)],
    # PixArt-alpha: text_encoder (T5-v1.1-XXL encoder), vae (sd-vae-ft-ema)
    "pixart-alpha": [("T5EncoderModel", _T5_XXL), ("AutoencoderKL", _SD_VAE)],
    # DiT: vae only (class labels, no text encoder)
    "dit-xl-2": [("AutoencoderKL", _SD_VAE)],
    # SD3 / SD3.5: CLIP-L and CLIP-G with projection, T5-v1.1-XXL encoder, 16-channel VAE
    "sd3-medium": [("CLIPTextModelWithProjection", _CLIP_L), ("CLIPTextModelWithProjection", _CLIP_G),
                   ("T5EncoderModel", _T5_XXL), ("AutoencoderKL", _SD3_VAE)],
    "sd35-large": [("CLIPTextModelWithProjection", _CLIP_L), ("CLIPTextModelWithProjection", _CLIP_G),
                   ("T5EncoderModel", _T5_XXL), ("AutoencoderKL", _SD3_VAE)],
}


def family_names(include_large: bool = True) -> list[str]:
    return [name for name, family in FAMILIES.items() if include_large or not family.get("large")]


def denoiser_config(family: str, tiny: bool = False) -> dict:
    """The config the benchmark builds: the published one with ``sample_size`` set to
    ``BENCH_SAMPLE_SIZE`` (or the tiny config)."""
    entry = FAMILIES[family]
    if tiny:
        return dict(entry["tiny_config"])
    return dict(entry["config"], sample_size=BENCH_SAMPLE_SIZE)


# ------------------------------------------------------------------------------------ counting
def _diffusers_class(name: str):
    import diffusers

    return getattr(diffusers, name)


def count_on_meta(class_name: str, config: dict) -> int:
    """Parameters of ``class_name(**config)`` (diffusers or transformers) built without memory."""
    import diffusers
    import transformers

    with torch.device("meta"):
        if hasattr(diffusers, class_name):
            model = getattr(diffusers, class_name)(**config)
        else:
            config_class = {"CLIPTextModel": "CLIPTextConfig", "CLIPTextModelWithProjection": "CLIPTextConfig",
                            "T5EncoderModel": "T5Config"}[class_name]
            model = getattr(transformers, class_name)(getattr(transformers, config_class)(**config))
    return sum(p.numel() for p in model.parameters())


def published_denoiser_params(family: str) -> int:
    """Parameters of the published config (its own ``sample_size``), counted on meta."""
    entry = FAMILIES[family]
    return count_on_meta(entry["denoiser_class"], entry["config"])


def real_other_params(family: str) -> int:
    """Parameters of the real pipeline's text encoders and VAE (published configs, counted on meta)."""
    return sum(count_on_meta(name, config) for name, config in REAL_OTHERS[family])


def check_param_counts(families=None) -> list[dict]:
    """Per family: parameters of the published config, of the config the benchmark builds
    (``sample_size`` 32) and the published number, with the relative difference."""
    rows = []
    for family in families or FAMILIES:
        entry = FAMILIES[family]
        built = count_on_meta(entry["denoiser_class"], denoiser_config(family))
        published_config = published_denoiser_params(family)
        rows.append(dict(family=family, label=entry["label"], hub_id=entry["hub_id"],
                         params_published_config=published_config, params_bench_config=built,
                         published=entry["published_params_text"],
                         relative_difference=published_config / entry["published_params"] - 1.0))
    return rows


# ------------------------------------------------------------------------------------ building
@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _wake_zero_init(model, seed: int) -> None:
    """Weights a random model would have all zero (zero-initialised layers) get small random values,
    as training would give them, so no gradient criterion sees an exactly-zero branch."""
    generator = torch.Generator().manual_seed(seed + 12345)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 1 and not parameter.any():
                parameter.copy_((0.02 * torch.randn(parameter.shape, generator=generator)).to(parameter.dtype))


def build_denoiser(family: str, tiny: bool = False, seed: int = 0, dtype: torch.dtype = torch.float16,
                   device: str | torch.device = "cpu"):
    """The denoiser with random weights, constructed directly in ``dtype`` (no float32 copy of the
    whole model is ever made: the default dtype is switched while the modules are created)."""
    entry = FAMILIES[family]
    cls = _diffusers_class(entry["denoiser_class"])
    torch.manual_seed(seed)
    with default_dtype(dtype), torch.device(device):
        model = cls(**denoiser_config(family, tiny))
    model.to(dtype)  # float32 buffers made from numpy (positional embeddings) follow
    _wake_zero_init(model, seed)
    return model.eval()


def _byte_level_vocab() -> dict:
    """CLIP's byte-to-unicode alphabet, each symbol alone and as a word end (``</w>``)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    symbols = [chr(b) for b in printable]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            symbols.append(chr(256 + extra))
            extra += 1
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in symbols:
        vocab.setdefault(symbol, len(vocab))
        vocab.setdefault(symbol + "</w>", len(vocab))
    return vocab


def clip_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=_byte_level_vocab(), merges=[], model_max_length=MAX_TOKENS)


def t5_tokenizer():
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    for code in range(ord("!"), ord("~") + 1):
        pieces.append((chr(code), -3.0))
        pieces.append(("\u2581" + chr(code), -2.5))
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=MAX_TOKENS)


def clip_text_encoder(hidden_size: int, projection_dim: int | None = None, seed: int = 0):
    """One-layer CLIP text model of width ``hidden_size`` (a stand-in: only its width matters)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(_byte_level_vocab()), hidden_size=hidden_size, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=MAX_TOKENS, projection_dim=projection_dim or hidden_size,
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = CLIPTextModelWithProjection(config) if projection_dim else CLIPTextModel(config)
    return model.eval()


def t5_text_encoder(d_model: int, seed: int = 0):
    """One-layer T5 encoder of width ``d_model`` with a tiny vocabulary (a stand-in)."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=4 + 2 * (ord("~") - ord("!") + 1), d_model=d_model, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
        relative_attention_num_buckets=8, relative_attention_max_distance=16, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(seed)
    return T5EncoderModel(config).eval()


def tiny_vae(latent_channels: int, sample_size: int, seed: int = 0, **extra):
    """A two-level ``AutoencoderKL`` (factor 2) with ``latent_channels`` latent channels."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, sample_size=2 * sample_size, **extra,
    ).eval()


def build_pipeline(family: str, tiny: bool = False, seed: int = 0, dtype: torch.dtype = torch.float16,
                   device: str | torch.device = "cpu"):
    """The family's diffusers pipeline: the full-size random denoiser (or the tiny one) and tiny
    stand-ins for the text encoders, tokenizers and VAE, every network in ``dtype``."""
    import diffusers

    entry = FAMILIES[family]
    config = denoiser_config(family, tiny)
    denoiser = build_denoiser(family, tiny, seed, dtype, device)
    size = int(config["sample_size"])
    if family == "sd15":
        scheduler = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                            beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                                            steps_offset=1)
        pipeline = diffusers.StableDiffusionPipeline(
            vae=tiny_vae(entry["latent_channels"], size, seed, scaling_factor=0.18215),
            text_encoder=clip_text_encoder(int(config["cross_attention_dim"]), seed=seed), tokenizer=clip_tokenizer(),
            unet=denoiser, scheduler=scheduler, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False)
    elif family == "pixart-alpha":
        pipeline = diffusers.PixArtAlphaPipeline(
            tokenizer=t5_tokenizer(), text_encoder=t5_text_encoder(int(config["caption_channels"]), seed=seed),
            vae=tiny_vae(entry["latent_channels"], size, seed, scaling_factor=0.18215), transformer=denoiser,
            scheduler=diffusers.DPMSolverMultistepScheduler())
    elif family == "dit-xl-2":
        scheduler = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)
        pipeline = diffusers.DiTPipeline(transformer=denoiser, vae=tiny_vae(entry["latent_channels"], size, seed,
                                                                            scaling_factor=0.18215),
                                         scheduler=scheduler, id2label={i: f"class {i}" for i in range(1000)})
    elif family in ("sd3-medium", "sd35-large"):
        pooled = int(config["pooled_projection_dim"])
        widths = (768, 1280) if pooled == 2048 else (pooled // 2, pooled - pooled // 2)  # CLIP-L + CLIP-G
        pipeline = diffusers.StableDiffusion3Pipeline(
            transformer=denoiser, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=tiny_vae(entry["latent_channels"], size, seed, scaling_factor=1.5305, shift_factor=0.0609,
                         use_quant_conv=False, use_post_quant_conv=False),
            text_encoder=clip_text_encoder(widths[0], projection_dim=widths[0], seed=seed), tokenizer=clip_tokenizer(),
            text_encoder_2=clip_text_encoder(widths[1], projection_dim=widths[1], seed=seed + 1),
            tokenizer_2=clip_tokenizer(),
            text_encoder_3=t5_text_encoder(int(config["joint_attention_dim"]), seed=seed), tokenizer_3=t5_tokenizer())
    else:
        raise ValueError(f"family must be one of {list(FAMILIES)}, got {family!r}")
    for name, component in pipeline.components.items():  # the stand-ins in the same dtype
        if isinstance(component, torch.nn.Module) and name != entry["denoiser_attribute"]:
            component.to(device=device, dtype=dtype)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes of a network's parameters and buffers as held in memory."""
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


def pixel_size(family: str, tiny: bool = False) -> int:
    """Side of the pixel images the tiny VAE maps to the benchmark's latents (factor 2)."""
    return 2 * int(denoiser_config(family, tiny)["sample_size"])


def write_calibration_images(directory: Path, size: int, count: int = CALIBRATION_IMAGES, seed: int = 0) -> Path:
    """``count`` random RGB PNG images of ``size`` x ``size`` (calibration_data is this folder:
    the engine resizes and encodes them with the pipeline's VAE; no dense sampling needed)."""
    import numpy as np
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        array = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        Image.fromarray(array).save(directory / f"random-{index}.png")
    return directory


def save_family(family: str, root: Path, tiny: bool = False, seed: int = 0, device: str = "cpu",
                force: bool = False) -> Path:
    """Build and ``save_pretrained`` the family's fp16 pipeline under ``root/<family>`` (skipped when
    its marker file is there), with ``calibration/`` images; returns the directory."""
    directory = Path(root) / family
    marker = directory / MARKER
    if marker.exists() and not force:
        return directory
    import shutil
    import time

    if directory.exists():
        shutil.rmtree(directory)
    started = time.perf_counter()
    pipeline = build_pipeline(family, tiny=tiny, seed=seed, device=device)
    built_s = time.perf_counter() - started
    denoiser = getattr(pipeline, FAMILIES[family]["denoiser_attribute"])
    info = dict(family=family, tiny=tiny, seed=seed, hub_id=FAMILIES[family]["hub_id"],
                denoiser_class=type(denoiser).__name__, denoiser_params=sum(p.numel() for p in denoiser.parameters()),
                denoiser_bytes=module_bytes(denoiser), dtype=str(next(denoiser.parameters()).dtype),
                denoiser_config=denoiser_config(family, tiny), build_s=round(built_s, 1),
                pixel_size=pixel_size(family, tiny), calibration_images=CALIBRATION_IMAGES,
                torch=torch.__version__)
    pipeline.save_pretrained(directory, safe_serialization=True)
    del pipeline, denoiser
    write_calibration_images(directory / "calibration", info["pixel_size"], seed=seed)
    info["save_s"] = round(time.perf_counter() - started - built_s, 1)
    marker.write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    return directory


def read_marker(directory: Path) -> dict:
    return json.loads((Path(directory) / MARKER).read_text())
