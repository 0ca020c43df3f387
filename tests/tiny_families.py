"""Tiny random pipelines of every text-to-image / transformer family, built fully offline.

No vocabulary files and no hub: a ``CLIPTokenizer`` is built from an in-memory byte-level
vocabulary with ``merges=[]`` (every byte its own token, so any caption tokenizes), a
``T5Tokenizer`` from a list of ``(piece, score)`` pairs. The networks are random, a few
thousand to a few hundred thousand parameters, so each pipeline's ``__call__`` runs on a CPU in
well under a second per step.

``FAMILIES`` maps a family name to its builder; ``call_pipeline(name, pipeline)`` runs the
pipeline's own ``__call__`` with settings every family accepts (latent output, 2 steps).
Builders are seeded and deterministic: two calls give equal weights.
"""
from __future__ import annotations

import torch

# Every tokenizer pads to this many tokens (the text encoders' position tables are this long).
MAX_TOKENS = 64
# Latent side of every denoiser: 8 x 8 latents (64 x 64 pixels with the two-level VAE below).
LATENT_SIZE = 8
PROMPTS = ("a red fox in the snow", "a small boat on a calm lake")


# ---------------------------------------------------------------------------------- tokenizers
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
    """A Unigram tokenizer: specials, the word-start marker, and every printable ASCII character
    alone and after the marker (so every ASCII caption tokenizes without ``<unk>``)."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    for code in range(ord("!"), ord("~") + 1):
        pieces.append((chr(code), -3.0))
        pieces.append(("\u2581" + chr(code), -2.5))
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=MAX_TOKENS)


def clip_text_encoder(hidden_size: int = 32, projection_dim: int | None = None, seed: int = 0):
    """``CLIPTextModel`` (SD 1.x/2.x) or, with ``projection_dim``, ``CLIPTextModelWithProjection`` (SD3)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(_byte_level_vocab()), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=MAX_TOKENS,
        projection_dim=projection_dim or hidden_size, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = CLIPTextModelWithProjection(config) if projection_dim else CLIPTextModel(config)
    return model.eval()


def t5_text_encoder(d_model: int = 32, seed: int = 0):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=4 + 2 * (ord("~") - ord("!") + 1), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2,
        num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16, pad_token_id=0,
        eos_token_id=1, decoder_start_token_id=0,
    )
    torch.manual_seed(seed)
    return T5EncoderModel(config).eval()


def attention_unet(seed: int = 0):
    """A two-level pixel ``UNet2DModel`` with self-attention (8 x 8, 1 channel, 2 heads of 4), eval mode."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=4, norm_num_groups=4,
    ).eval()


def tiny_vae(latent_channels: int = 4, seed: int = 0, **extra):
    """A two-level ``AutoencoderKL``: 8 x 8 latents <-> 16 x 16 images (factor 2)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
        sample_size=2 * LATENT_SIZE, **extra,
    ).eval()


# ------------------------------------------------------------------------------------ families
def stable_diffusion(sd2: bool = False, seed: int = 0):
    """``StableDiffusionPipeline`` with a tiny ``UNet2DConditionModel``. ``sd2``: SD 2.x shapes
    (``use_linear_projection``, per-block head counts, v-prediction)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=LATENT_SIZE, in_channels=4, out_channels=4,
        layers_per_block=1 if sd2 else 2,  # SD 1.x: two layers per stage, as the real model (block cuts)
        block_out_channels=(16, 32), norm_num_groups=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4) if sd2 else 8,  # SD 2.x: per-block head counts (diffusers' naming)
        use_linear_projection=sd2,
    ).eval()
    scheduler = DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, prediction_type="v_prediction" if sd2 else "epsilon",
    )
    pipeline = StableDiffusionPipeline(
        vae=tiny_vae(seed=seed), text_encoder=clip_text_encoder(32, seed=seed), tokenizer=clip_tokenizer(),
        unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def stable_diffusion_2(seed: int = 0):
    return stable_diffusion(sd2=True, seed=seed)


def dit(seed: int = 0):
    """``DiTPipeline``: class-conditional, learned sigma (2C outputs), null class 1000."""
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(seed)
    transformer = DiTTransformer2DModel(
        num_attention_heads=4, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=3,
        sample_size=LATENT_SIZE, patch_size=2, num_embeds_ada_norm=1000,  # the pipeline's null class is 1000
        norm_type="ada_norm_zero", norm_num_groups=4,
    ).eval()
    _wake_zero_init(transformer, seed)
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)
    pipeline = DiTPipeline(transformer=transformer, vae=tiny_vae(seed=seed), scheduler=scheduler,
                           id2label={i: f"class {i}" for i in range(1000)})
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def pixart(seed: int = 0):
    """``PixArtAlphaPipeline``: T5 text with an attention mask, adaLN-single (call with ``clean_caption=False``)."""
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel

    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(
        num_attention_heads=4, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=3,
        sample_size=LATENT_SIZE, patch_size=2, cross_attention_dim=32, caption_channels=32,
        norm_num_groups=4, use_additional_conditions=False,
    ).eval()
    _wake_zero_init(transformer, seed)
    pipeline = PixArtAlphaPipeline(
        tokenizer=t5_tokenizer(), text_encoder=t5_text_encoder(32, seed=seed), vae=tiny_vae(seed=seed),
        transformer=transformer, scheduler=DPMSolverMultistepScheduler(),
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def stable_diffusion_3(qk_norm: str | None = None, dual_attention_layers: tuple = (), seed: int = 0):
    """``StableDiffusion3Pipeline`` (flow matching, joint attention, two CLIPs with projection and a
    T5). SD3.5: ``qk_norm="rms_norm"``; SD3.5-medium (MMDiT-X) also has ``dual_attention_layers``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=LATENT_SIZE, patch_size=2, in_channels=4, out_channels=4, num_layers=3,
        attention_head_dim=8, num_attention_heads=4, joint_attention_dim=32, caption_projection_dim=32,
        pooled_projection_dim=32, pos_embed_max_size=8, qk_norm=qk_norm, dual_attention_layers=dual_attention_layers,
    ).eval()
    _wake_zero_init(transformer, seed)
    pipeline = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_vae(seed=seed, scaling_factor=1.5305, shift_factor=0.0609),
        text_encoder=clip_text_encoder(16, projection_dim=16, seed=seed), tokenizer=clip_tokenizer(),
        text_encoder_2=clip_text_encoder(16, projection_dim=16, seed=seed + 1), tokenizer_2=clip_tokenizer(),
        text_encoder_3=t5_text_encoder(32, seed=seed), tokenizer_3=t5_tokenizer(),
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def stable_diffusion_35(seed: int = 0):
    """SD3.5-shaped: qk-norm (``rms_norm``) and one MMDiT-X dual-attention block."""
    return stable_diffusion_3(qk_norm="rms_norm", dual_attention_layers=(0,), seed=seed)


def _wake_zero_init(model, seed: int) -> None:
    """DiT-style models zero-initialise their adaLN modulation and output projection, so a random
    model predicts exactly 0 and every gradient criterion ties. Give those weights small random
    values (as training would) so the tiny model behaves like a trained one structurally."""
    generator = torch.Generator().manual_seed(seed + 12345)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 1 and not parameter.any():
                parameter.copy_(0.02 * torch.randn(parameter.shape, generator=generator))


FAMILIES = {
    "sd": stable_diffusion,
    "sd2": stable_diffusion_2,
    "dit": dit,
    "pixart": pixart,
    "sd3": stable_diffusion_3,
    "sd35": stable_diffusion_35,
}


def build(name: str, seed: int = 0):
    return FAMILIES[name](seed=seed)


def call_pipeline(name: str, pipeline, steps: int = 2, seed: int = 0, output_type: str = "latent"):
    """Run the pipeline's own ``__call__`` (2 steps, batch 2, latent output); returns its images/latents."""
    generator = torch.Generator().manual_seed(seed)
    if name == "dit":
        images = pipeline(class_labels=[1, 7], num_inference_steps=steps, guidance_scale=4.0,
                          generator=generator, output_type=output_type).images
        return torch.as_tensor(images)
    kwargs = dict(num_inference_steps=steps, generator=generator, output_type=output_type,
                  height=2 * LATENT_SIZE, width=2 * LATENT_SIZE, guidance_scale=3.0)
    if name == "pixart":
        kwargs.update(clean_caption=False, use_resolution_binning=False, max_sequence_length=MAX_TOKENS)
    if name in ("sd3", "sd35"):
        kwargs.update(max_sequence_length=MAX_TOKENS)
    return pipeline(prompt=list(PROMPTS), **kwargs).images
