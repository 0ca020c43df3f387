"""Training of the embedded default model (``diffprune train-base``).

A plain DDPM (Ho et al. 2020) epsilon-prediction objective on Fashion-MNIST, run through
accelerate so the same code uses the CPU here and a GPU when one is present. Keeps an EMA of
the weights (the EMA weights are what ships), logs the loss to CSV, checkpoints every few
minutes and resumes from the last checkpoint.
"""
from __future__ import annotations

import csv
import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .data import load_fashion_mnist, uint8_to_tensor
from .default_model import DEFAULT_FAMILY, DEFAULT_SCHEDULER_CONFIG


@dataclass(frozen=True)
class TrainConfig:
    output_dir: str = "runs/train-base"  # checkpoints, loss log and the exported pipeline
    steps: int = 8000  # optimiser steps in total (a resumed run continues up to this)
    batch_size: int = 64
    learning_rate: float = 1e-3
    warmup_steps: int = 250  # linear learning-rate warm-up
    ema_decay: float = 0.999  # short training: 0.9999 would average too far back
    checkpoint_minutes: float = 5.0  # wall-clock interval between checkpoints
    log_every: int = 25
    seed: int = 0
    num_threads: int | None = None  # torch CPU threads; None leaves torch's default

    def __post_init__(self):
        for name in ("steps", "batch_size", "log_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")


def _export_pipeline(adapter, denoiser, scheduler, directory: Path) -> None:
    adapter.new_pipeline(denoiser, scheduler).save_pretrained(directory, safe_serialization=True)


def train_base(config: TrainConfig, log: Callable[[str], None] = print) -> Path:
    """Train (or resume) the default DDPM; returns the directory of the exported EMA pipeline."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    from .models import ADAPTERS

    adapter = ADAPTERS[DEFAULT_FAMILY]

    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    set_seed(config.seed)

    images = uint8_to_tensor(load_fashion_mnist("train"))
    denoiser = adapter.new_denoiser()
    scheduler = DDPMScheduler(**DEFAULT_SCHEDULER_CONFIG)
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=config.learning_rate, weight_decay=0.0)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / config.warmup_steps)
    )
    ema = EMAModel(denoiser.parameters(), decay=config.ema_decay, use_ema_warmup=True, power=3 / 4)
    denoiser, optimizer, lr_schedule = accelerator.prepare(denoiser, optimizer, lr_schedule)
    ema.to(accelerator.device)

    state_path = out / "checkpoint"
    progress_path = out / "progress.json"
    step = 0
    if progress_path.exists() and state_path.exists():
        accelerator.load_state(str(state_path))
        ema.load_state_dict(torch.load(state_path / "ema.pt", weights_only=True))
        step = json.loads(progress_path.read_text())["step"]
        log(f"resumed from step {step}")
    # One generator for batches and noise, re-seeded from the step so a resumed run draws
    # the same batches an uninterrupted one would.
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
    loss_log = (out / "loss.csv").open("a", newline="")
    writer = csv.writer(loss_log)
    if step == 0:
        writer.writerow(["step", "loss", "lr", "seconds"])
    started = time.time()
    last_checkpoint = time.time()
    running = 0.0

    def checkpoint():
        accelerator.save_state(str(state_path))
        torch.save(ema.state_dict(), state_path / "ema.pt")
        tmp = progress_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"step": step, "config": asdict(config)}))
        tmp.replace(progress_path)
        ema_denoiser = adapter.new_denoiser()
        ema.copy_to(ema_denoiser.parameters())
        _export_pipeline(adapter, ema_denoiser, scheduler, out / "pipeline")
        log(f"checkpoint at step {step}")

    denoiser.train()
    while step < config.steps:
        index = torch.randint(0, len(images), (config.batch_size,), generator=generator)
        clean = images[index]
        flip = torch.rand(config.batch_size, generator=generator) < 0.5
        clean = torch.where(flip[:, None, None, None], clean.flip(-1), clean).to(accelerator.device)
        noise = torch.randn(clean.shape, generator=generator).to(accelerator.device)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (config.batch_size,), generator=generator)
        timesteps = timesteps.to(accelerator.device)
        noisy = scheduler.add_noise(clean, noise, timesteps)
        loss = F.mse_loss(adapter.predict(denoiser, noisy, timesteps), noise)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(denoiser.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(denoiser.parameters())
        step += 1
        running += loss.item()
        if step % config.log_every == 0:
            writer.writerow([step, running / config.log_every, lr_schedule.get_last_lr()[0], round(time.time() - started, 1)])
            loss_log.flush()
            log(f"step {step}/{config.steps} loss {running / config.log_every:.4f} ({time.time() - started:.0f}s)")
            running = 0.0
        if time.time() - last_checkpoint > config.checkpoint_minutes * 60 or step == config.steps:
            checkpoint()
            last_checkpoint = time.time()
    loss_log.close()
    info = {
        "steps": step,
        "hardware": f"{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
        f"device {accelerator.device}",
        "torch": torch.__version__,
    }
    (out / "train_info.json").write_text(json.dumps(info, indent=2))
    return out / "pipeline"
