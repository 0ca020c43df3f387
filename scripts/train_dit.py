"""Train the second embedded model: a class-conditional latent DiT on Fashion-MNIST.

    python scripts/train_dit.py --output-dir runs/train-dit --vae-steps 4000 --dit-steps 20000
    python scripts/train_dit.py --output-dir runs/train-dit --export assets/dit-fashion-mnist

Two stages, each resumable (a re-run with the same output dir continues from its last
checkpoint) and deterministic from ``--seed`` (batches and noise are drawn from generators
re-seeded from the step, so an interrupted run draws the batches an uninterrupted one would):

1. ``AutoencoderKL`` 32x32x1 -> 4x8x8 (channels 32, 64, 64): MSE + L1 reconstruction and a small
   KL term (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models",
   the KL-regularised autoencoder, without the perceptual and GAN losses). Images are the
   28x28 Fashion-MNIST garments padded to 32x32 with background (-1); samples are cropped back.
   Its ``scaling_factor`` is set to 1 / std of the training latents (LDM section 3.1 / 4.3.2).
2. ``DiTTransformer2DModel`` (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers")
   on the 4x8x8 latents: patch 2 (16 tokens), hidden 128, 6 blocks, 4 heads, adaLN-Zero, DDPM
   epsilon objective with the linear beta schedule, EMA weights shipped. ``num_embeds_ada_norm``
   is 1000 because ``DiTPipeline`` hard-codes class 1000 as the null class of classifier-free
   guidance; only the ten Fashion-MNIST classes are used, and the label embedding's dropout
   (p = 0.1, to class 1000) trains the unconditional branch. ``out_channels`` = 4 (epsilon only,
   no learned sigma: the DDIM sampler used here never reads a variance).

Uses only torch, numpy, diffusers and accelerate (not the rest of ``core``) so that it runs on a
bare GPU host. The GPU is used when present (the shipped model was trained on one; see
TRAINING.json), else the CPU.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
NULL_CLASS = 1000  # DiTPipeline's hard-coded unconditional class

VAE_CONFIG = dict(
    in_channels=1,
    out_channels=1,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=16,
    sample_size=32,
)
DIT_CONFIG = dict(
    num_attention_heads=4,
    attention_head_dim=32,
    in_channels=4,
    out_channels=4,
    num_layers=6,
    sample_size=8,
    patch_size=2,
    num_embeds_ada_norm=NULL_CLASS,
    norm_type="ada_norm_zero",
    norm_elementwise_affine=False,
    activation_fn="gelu-approximate",
)
# DDPM noise schedule of the first embedded model (Ho et al. 2020: T = 1000, linear betas).
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)


@dataclass(frozen=True)
class DiTTrainConfig:
    output_dir: str = "runs/train-dit"  # checkpoints, loss logs and the exported pipeline
    vae_steps: int = 4000  # optimiser steps of the autoencoder
    dit_steps: int = 20000  # optimiser steps of the transformer
    vae_batch_size: int = 128
    dit_batch_size: int = 256
    vae_learning_rate: float = 1e-3
    dit_learning_rate: float = 5e-4
    warmup_steps: int = 500
    kl_weight: float = 1e-6  # LDM's KL weight: keeps the latents near N(0, I) scale without blurring
    ema_decay: float = 0.9995
    time_limit_s: float = 0.0  # stop a stage (checkpointing) after this many seconds; 0 = no limit
    checkpoint_minutes: float = 5.0
    log_every: int = 100
    seed: int = 0

    def __post_init__(self):
        for name in ("vae_steps", "dit_steps", "vae_batch_size", "dit_batch_size", "warmup_steps", "log_every"):
            if getattr(self, name) < 0 or (name != "vae_steps" and name != "dit_steps" and getattr(self, name) == 0):
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        for name in ("vae_learning_rate", "dit_learning_rate"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    magic = int.from_bytes(raw[0:4], "big")
    dims = magic & 0xFF
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_training_set(root: Path = FASHION_MNIST_DIR) -> tuple[torch.Tensor, torch.Tensor]:
    """The 60,000 training garments as float N x 1 x 32 x 32 in [-1, 1] (padded) and labels."""
    images_file = root / "train-images-idx3-ubyte.gz"
    if not images_file.exists():
        raise SystemExit(f"Fashion-MNIST not found at {root}; `apt-get install dataset-fashion-mnist`")
    images = torch.from_numpy(read_idx(images_file).copy()).float()[:, None] / 127.5 - 1.0
    labels = torch.from_numpy(read_idx(root / "train-labels-idx1-ubyte.gz").astype(np.int64))
    return pad_to_32(images), labels


def pad_to_32(images: torch.Tensor) -> torch.Tensor:
    return F.pad(images, (2, 2, 2, 2), value=-1.0)


def crop_to_28(images: torch.Tensor) -> torch.Tensor:
    return images[..., 2:30, 2:30]


class Stage:
    """Shared loop machinery of a stage: resume, log, checkpoint, time limit."""

    def __init__(self, name: str, config: DiTTrainConfig, directory: Path, log):
        self.name, self.config, self.log = name, config, log
        self.dir = directory / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.progress_path = self.dir / "progress.json"
        self.state_path = self.dir / "state.pt"
        self.step = 0
        self.seconds = 0.0  # wall time of earlier segments

    def resume(self, objects: dict) -> None:
        if self.progress_path.exists() and self.state_path.exists():
            state = torch.load(self.state_path, weights_only=True, map_location="cpu")
            for key, obj in objects.items():
                obj.load_state_dict(state[key])
            progress = json.loads(self.progress_path.read_text())
            self.step, self.seconds = progress["step"], progress["seconds"]
            self.log(f"{self.name}: resumed at step {self.step}")

    def save(self, objects: dict, elapsed: float, extra: dict | None = None) -> None:
        torch.save({key: obj.state_dict() for key, obj in objects.items()}, self.state_path)
        tmp = self.progress_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"step": self.step, "seconds": round(self.seconds + elapsed, 1),
                                   "config": asdict(self.config), **(extra or {})}))
        tmp.replace(self.progress_path)

    def generator(self, offset: int) -> torch.Generator:
        # Re-seeded from the step: a resumed run draws the same batches as an uninterrupted one.
        return torch.Generator().manual_seed(self.config.seed * 1_000_003 + offset * 7919 + self.step)


def _lr_lambda(warmup: int):
    return lambda step: min(1.0, (step + 1) / max(1, warmup))


def train_vae(config: DiTTrainConfig, images: torch.Tensor, device: torch.device, log) -> "AutoencoderKL":
    from diffusers import AutoencoderKL

    stage = Stage("vae", config, Path(config.output_dir), log)
    torch.manual_seed(config.seed)
    vae = AutoencoderKL(**VAE_CONFIG).to(device)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config.warmup_steps))
    objects = {"vae": vae, "optimizer": optimizer, "schedule": schedule}
    stage.resume(objects)
    data = images.to(device)
    loss_file = (stage.dir / "loss.csv").open("a", newline="")
    writer = csv.writer(loss_file)
    if stage.step == 0:
        writer.writerow(["step", "loss", "reconstruction_mse", "kl", "seconds"])
    started = last_checkpoint = time.time()
    running = np.zeros(3)
    vae.train()
    while stage.step < config.vae_steps:
        generator = stage.generator(1)
        index = torch.randint(0, len(data), (config.vae_batch_size,), generator=generator).to(device)
        flip = (torch.rand(config.vae_batch_size, generator=generator) < 0.5).to(device)
        batch = data[index]
        batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
        posterior = vae.encode(batch).latent_dist
        eps = torch.randn(posterior.mean.shape, generator=generator).to(device)
        latents = posterior.mean + posterior.std * eps
        reconstruction = vae.decode(latents).sample
        mse = F.mse_loss(reconstruction, batch)
        l1 = F.l1_loss(reconstruction, batch)
        kl = posterior.kl().mean() / latents[0].numel()
        loss = mse + l1 + config.kl_weight * kl * latents[0].numel()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        stage.step += 1
        running += [loss.item(), mse.item(), kl.item()]
        elapsed = time.time() - started
        if stage.step % config.log_every == 0:
            mean = running / config.log_every
            writer.writerow([stage.step, *np.round(mean, 6), round(stage.seconds + elapsed, 1)])
            loss_file.flush()
            log(f"vae step {stage.step}/{config.vae_steps} loss {mean[0]:.4f} mse {mean[1]:.4f} ({elapsed:.0f}s)")
            running[:] = 0
        out_of_time = config.time_limit_s and elapsed > config.time_limit_s
        if out_of_time or stage.step == config.vae_steps or time.time() - last_checkpoint > config.checkpoint_minutes * 60:
            stage.save(objects, elapsed)
            last_checkpoint = time.time()
        if out_of_time:
            log(f"vae: time limit reached at step {stage.step}")
            break
    loss_file.close()
    vae.eval()
    return vae, stage


@torch.no_grad()
def encode_training_set(vae, images: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every training image and its mirror image."""
    means, stds = [], []
    for flip in (False, True):
        for chunk in images.split(2048):
            chunk = chunk.to(device)
            posterior = vae.encode(chunk.flip(-1) if flip else chunk).latent_dist
            means.append(posterior.mean)
            stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


def train_dit(config: DiTTrainConfig, vae, images, labels, device: torch.device, log):
    from diffusers import DDPMScheduler, DiTTransformer2DModel
    from diffusers.training_utils import EMAModel

    stage = Stage("dit", config, Path(config.output_dir), log)
    latent_mean, latent_std = encode_training_set(vae, images, device)
    all_labels = torch.cat([labels, labels]).to(device)
    # Scale from the measured std of sampled latents (LDM's rescaling of the latent space).
    draw = torch.randn(latent_mean.shape, generator=torch.Generator().manual_seed(config.seed)).to(device)
    scaling_factor = float(1.0 / (latent_mean + latent_std * draw).std())
    log(f"latent std {1 / scaling_factor:.4f} -> scaling_factor {scaling_factor:.4f}")
    torch.manual_seed(config.seed + 1)
    model = DiTTransformer2DModel(**DIT_CONFIG).to(device)
    scheduler = DDPMScheduler(**SCHEDULER_CONFIG)
    alphas = scheduler.alphas_cumprod.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.dit_learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config.warmup_steps))
    ema = EMAModel(model.parameters(), decay=config.ema_decay, use_ema_warmup=True, power=3 / 4)
    ema.to(device)
    objects = {"model": model, "optimizer": optimizer, "schedule": schedule, "ema": ema}
    stage.resume(objects)
    ema.to(device)  # a resumed EMA state is loaded onto the CPU
    loss_file = (stage.dir / "loss.csv").open("a", newline="")
    writer = csv.writer(loss_file)
    if stage.step == 0:
        writer.writerow(["step", "loss", "lr", "seconds"])
    started = last_checkpoint = time.time()
    running = 0.0
    model.train()  # train mode also enables the label dropout to the null class (p = 0.1)
    while stage.step < config.dit_steps:
        generator = stage.generator(2)
        n = config.dit_batch_size
        index = torch.randint(0, len(latent_mean), (n,), generator=generator).to(device)
        eps_latent = torch.randn((n, *latent_mean.shape[1:]), generator=generator).to(device)
        clean = (latent_mean[index] + latent_std[index] * eps_latent) * scaling_factor
        noise = torch.randn(clean.shape, generator=generator).to(device)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=generator).to(device)
        a = alphas[timesteps].view(-1, 1, 1, 1)
        noisy = a.sqrt() * clean + (1 - a).sqrt() * noise
        prediction = model(noisy, timestep=timesteps, class_labels=all_labels[index]).sample
        loss = F.mse_loss(prediction[:, : clean.shape[1]], noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(model.parameters())
        stage.step += 1
        running += loss.item()
        elapsed = time.time() - started
        if stage.step % config.log_every == 0:
            writer.writerow([stage.step, round(running / config.log_every, 6), schedule.get_last_lr()[0],
                             round(stage.seconds + elapsed, 1)])
            loss_file.flush()
            log(f"dit step {stage.step}/{config.dit_steps} loss {running / config.log_every:.4f} ({elapsed:.0f}s)")
            running = 0.0
        out_of_time = config.time_limit_s and elapsed > config.time_limit_s
        if out_of_time or stage.step == config.dit_steps or time.time() - last_checkpoint > config.checkpoint_minutes * 60:
            stage.save(objects, elapsed, {"scaling_factor": scaling_factor})
            last_checkpoint = time.time()
        if out_of_time:
            log(f"dit: time limit reached at step {stage.step}")
            break
    loss_file.close()
    ema_model = DiTTransformer2DModel(**DIT_CONFIG)
    ema.copy_to(ema_model.parameters())
    return ema_model.eval(), scheduler, scaling_factor, stage


def export(vae, transformer, scaling_factor: float, directory: Path) -> None:
    from diffusers import DDIMScheduler, DiTPipeline

    vae = vae.to("cpu")
    vae.register_to_config(scaling_factor=scaling_factor)
    scheduler = DDIMScheduler(**SCHEDULER_CONFIG)
    id2label = {str(i): name for i, name in enumerate(CLASS_NAMES)}
    pipeline = DiTPipeline(transformer=transformer.to("cpu"), vae=vae, scheduler=scheduler, id2label=id2label)
    pipeline.register_to_config(id2label=id2label)  # kept in model_index.json, passed back on load
    pipeline.save_pretrained(directory, safe_serialization=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = DiTTrainConfig()
    for field, value in asdict(defaults).items():
        parser.add_argument("--" + field.replace("_", "-"), type=type(value), default=value)
    parser.add_argument("--export", default=None, help="write the DiTPipeline here when both stages finish")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data-dir", default=str(FASHION_MNIST_DIR), help="Fashion-MNIST idx .gz files")
    parser.add_argument("--limit-images", type=int, default=None, help="use the first N images (smoke tests)")
    args = vars(parser.parse_args(argv))
    export_dir, threads, data_dir = args.pop("export"), args.pop("threads"), args.pop("data_dir")
    limit = args.pop("limit_images")
    config = DiTTrainConfig(**args)
    if threads:
        torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    log = lambda message: print(message, flush=True)  # noqa: E731
    images, labels = load_training_set(Path(data_dir))
    if limit:
        images, labels = images[:limit], labels[:limit]
    vae, vae_stage = train_vae(config, images, device, log)
    transformer, _, scaling_factor, dit_stage = train_dit(config, vae, images, labels, device, log)
    summary = {
        "vae_steps": vae_stage.step, "dit_steps": dit_stage.step,
        "vae_seconds": json.loads(vae_stage.progress_path.read_text())["seconds"],
        "dit_seconds": json.loads(dit_stage.progress_path.read_text())["seconds"],
        "scaling_factor": scaling_factor,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"CPU {platform.machine()}",
        "torch": torch.__version__,
        "config": asdict(config),
    }
    Path(config.output_dir, "summary.json").write_text(json.dumps(summary, indent=2))
    log(json.dumps(summary))
    if export_dir:
        export(vae, transformer, scaling_factor, Path(export_dir))
        log(f"exported to {export_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
