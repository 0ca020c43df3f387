"""The embedded default model: a small DDPM on Fashion-MNIST shipped under ``assets/``.

Architecture (``core.models.unet2d.DEFAULT_ARCHITECTURE``, the pixel family's default denoiser)
chosen so that every granularity has something real to act on (GroupNorm, multi-head attention
in both the down and the up path) while a 2-core CPU still samples 16 images x 25 steps in a few
seconds.
"""
from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_MODEL_DIR = ASSETS_DIR / "ddpm-fashion-mnist"

# The embedded models, loadable offline by name: ``load_pipeline("dit-fashion-mnist")``.
# name -> (directory, one line for pickers and help texts). The first is the default.
EMBEDDED_MODELS = {
    "ddpm-fashion-mnist": (DEFAULT_MODEL_DIR, "pixel UNet2DModel DDPM, unconditional, 28x28 (trained on this CPU)"),
    "dit-fashion-mnist": (ASSETS_DIR / "dit-fashion-mnist",
                          "latent DiT (6 blocks x 4 heads) + AutoencoderKL, class-conditional, 10 classes (trained on a GPU)"),
}

# The model family of the embedded default model; its architecture is that family's default
# (``ModelAdapter.new_denoiser``), which ``diffprune train-base`` trains.
DEFAULT_FAMILY = "pixel-unet"

# DDPM training noise schedule (Ho et al. 2020: T=1000, linear betas 1e-4 .. 0.02).
DEFAULT_SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_schedule="linear")
