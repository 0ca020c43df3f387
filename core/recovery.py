"""Recovery after pruning, as the app and the benchmarks run it: the training data, the default
settings, and a measured estimate of what a budget costs.

The fine-tuning itself is :func:`core.finetune.finetune`; this module only decides *what* it
trains on and *how long* that will take here:

* **Data** (``recovery_images``), from the same sources calibration accepts: the shipped
  Fashion-MNIST training images (``fashion-mnist-train``, the embedded models' own data), a folder
  of the user's images, or ``generated`` -- samples of the dense model (data-free; with
  distillation the student then learns the teacher's own distribution).
* **Defaults** (``RECOVERY_DEFAULTS``): sized so that the app's whole quick path (prune, recover,
  16 samples of each stage, KID) stays within about 3 minutes on a 2-core CPU
  (``benchmarks/bench_recovery.py`` measures what they buy).
* **Cost** (``estimate_recovery``): seconds per optimizer step *measured* on this machine by
  running real fine-tuning steps of the dense model (an upper bound for the smaller pruned one).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from .pipeline import adapter_of

ProgressFn = Callable[[float, str], None]

# The app's default recovery settings (quick path on a 2-core CPU; the paper budgets are 10^4-10^5 steps).
# lr: Diff-Pruning's; measured the best of 2e-4, 1e-3, 3e-3 after 200 steps of taylor at 44 % channel sparsity
# (KID of 64 samples 0.039, 0.097, 0.144; one-shot 0.270; `python benchmarks/recovery_lr.py`).
RECOVERY_DEFAULTS = dict(steps=200, lr=2e-4, batch_size=8)
RECOVERY_SOURCES = ("fashion-mnist-train", "generated")
# Images drawn for recovery: the shipped set is used whole; generated data is this many dense samples.
GENERATED_RECOVERY_IMAGES = 64
GENERATED_RECOVERY_STEPS = 25
MAX_RECOVERY_STEPS = 100_000
MAX_RECOVERY_BATCH = 256


def check_recovery(steps, lr, batch_size, data) -> None:
    """Each recovery field, checked before any work (a ValueError naming the field)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 0 <= steps <= MAX_RECOVERY_STEPS:
        raise ValueError(f"recovery steps must be a whole number from 0 (off) to {MAX_RECOVERY_STEPS:,}, got {steps!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < float(lr) <= 0.1:
        raise ValueError(f"recovery learning rate must be a number in (0, 0.1], got {lr!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_RECOVERY_BATCH:
        raise ValueError(f"recovery batch size must be a whole number from 1 to {MAX_RECOVERY_BATCH}, got {batch_size!r}")
    if not isinstance(data, str) or not data.strip():
        raise ValueError(f"recovery data must be one of {list(RECOVERY_SOURCES)} or an image folder, got {data!r}")
    if data not in RECOVERY_SOURCES and not Path(data).expanduser().is_dir():
        raise ValueError(f"recovery data must be one of {list(RECOVERY_SOURCES)} or an existing image folder, "
                         f"got {data[:80]!r}")


def recovery_images(pipeline, data: str, seed: int = 0, progress: ProgressFn | None = None) -> tuple[torch.Tensor, str]:
    """Pixel images in [-1, 1] to recover on and a label of where they came from (the images of
    :func:`recovery_data` without their classes)."""
    images, _, description = recovery_data(pipeline, data, seed, progress)
    return images, description


def recovery_data(pipeline, data: str, seed: int = 0,
                  progress: ProgressFn | None = None) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """``(images, labels, description)``: pixel images in [-1, 1] to recover on, their classes
    (None where unknown) and where they came from.

    ``data``: ``fashion-mnist-train`` (the shipped training images, with their classes for a
    class-conditional model such as the embedded DiT; only for models of their shape), ``generated`` (``GENERATED_RECOVERY_IMAGES`` samples of the dense ``pipeline``; a
    class-conditional model samples every class equally often and the labels say which, so
    recovery trains each image with its own class) or an image folder (resized to the model's
    resolution; no classes)."""
    from .data import CALIBRATION_IMAGES, load_image_folder, load_image_labels, load_image_set
    from .pipeline import sample_images

    adapter = adapter_of(pipeline)
    channels, height, _ = adapter.image_shape(pipeline)
    if data == "generated":
        classes = adapter.num_classes(pipeline)
        labels = None
        if classes is not None:  # the classes it was trained on (the embedded DiT: 10 of its 1,000 rows)
            labels = torch.arange(GENERATED_RECOVERY_IMAGES) % classes
        images = sample_images(pipeline, GENERATED_RECOVERY_IMAGES, num_inference_steps=GENERATED_RECOVERY_STEPS,
                               seed=seed, class_label=labels,
                               progress=(lambda f, m: progress(f, f"generating recovery images: {m}")) if progress else None)
        per_class = "" if labels is None else f", {len(set(labels.tolist()))} classes equally"
        return images.float().cpu().clamp(-1, 1), labels, (
            f"generated ({GENERATED_RECOVERY_IMAGES} samples of the dense model, {GENERATED_RECOVERY_STEPS} DDIM steps{per_class})")
    if data == "fashion-mnist-train":
        if not CALIBRATION_IMAGES.exists():
            raise ValueError("recovery data 'fashion-mnist-train': the shipped images are missing; use 'generated'")
        images = load_image_set(CALIBRATION_IMAGES)
        if tuple(images.shape[1:]) != (channels, height, height):
            raise ValueError(f"recovery data 'fashion-mnist-train' holds {tuple(images.shape[1:])} images but the model "
                             f"makes {(channels, height, height)}; allowed for this model: 'generated' or an image folder")
        labels = load_image_labels(CALIBRATION_IMAGES) if adapter.num_classes(pipeline) is not None else None
        if labels is not None and int(labels.max()) >= adapter.num_classes(pipeline):
            labels = None  # a model with fewer classes than Fashion-MNIST's ten: its classes are not these
        return images, labels, (f"fashion-mnist-train ({len(images):,} shipped training images"
                                f"{', each with its class' if labels is not None else ''})")
    images = load_image_folder(Path(data).expanduser(), height, channels)
    return images, None, f"image folder ({len(images):,} images)"


def estimate_recovery(pipeline, steps: int, batch_size: int, distill: bool, repeats: int = 2) -> dict:
    """Seconds a recovery of ``steps`` steps will take here: real fine-tuning steps of the dense
    model timed one by one now (``core.cost.recovery_step_seconds``, cached per model, batch size,
    distillation and thread count). The pruned model is smaller, so this is an upper bound."""
    from .cost import recovery_step_seconds

    rate = recovery_step_seconds(pipeline, batch_size, distill, repeats=max(1, int(repeats)))
    return dict(steps=int(steps), seconds_per_step=rate, seconds=rate * int(steps))


def describe_recovery(estimate: dict) -> str:
    """'recovery: 200 steps x 0.22 s = about 44 s here (measured now on the dense model: an upper bound)'."""
    if not estimate or not estimate.get("steps"):
        return "recovery off (0 steps): the one-shot model is evaluated as it is"
    seconds = estimate["seconds"]
    when = f"{seconds:.0f} s" if seconds < 120 else (f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h")
    rate = estimate["seconds_per_step"]
    per_step = f"{rate:.2f} s" if rate >= 0.1 else f"{1000 * rate:.1f} ms"
    return (f"recovery: {estimate['steps']:,} steps x {per_step} = about {when} here "
            "(rate measured now on the dense model, an upper bound; 10x the steps costs 10x the time)")
