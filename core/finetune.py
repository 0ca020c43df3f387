"""Recovery fine-tuning of a pruned diffusion model, on accelerate.

Every paper recovers quality with fine-tuning after pruning, so methods are compared under an
identical fine-tuning budget. One function, :func:`finetune`, used by the CLI, the UI,
the benchmarks and the tests:

* **Loss.** The standard DDPM objective ``MSE(eps_theta(x_t, t), eps)`` (Ho et al. 2020; the
  loss Diff-Pruning fine-tunes with). Optional **knowledge distillation** from the dense teacher
  as NiCI-Pruning defines it:
  ``alpha * tau^2 * KL(log_softmax(student / tau) || log_softmax(teacher / tau))`` where the
  softmax runs over each flattened spatial map (one distribution per image and channel over its
  ``H * W`` positions), written in PyTorch's ``F.kl_div(student_log, teacher_log,
  log_target=True)`` argument order (the divergence of the student from the teacher's
  distribution), averaged over maps; ``alpha = 50``, ``tau = 1``. Student and teacher see the same
  noisy input.
* **Masks.** Unstructured and N:M results keep their zeros: the masks (``weight != 0`` of every
  prunable layer at the start, or the caller's) are re-applied after each optimizer step, and the
  EMA weights are masked too. A structural result (its granularity registered ``structural``:
  ``channel``, ``head``, ``ffn``, ``block``) gets no masks: the removed units are gone, and a weight
  that happens to be exactly zero in what is left is trained like any other.
* **``l1`` recovery** (Towards Tiny Diffusion): optional ``l1_penalty * sum |w|`` over the prunable
  weights, and ``regrowth`` -- the probability per step that a pruned weight is revived (its mask
  bit set; it restarts from 0). The paper gives no values; both default to 0.
* **Determinism and resume.** Which images, timesteps and noise a step uses are drawn from a
  generator seeded by ``(seed, step)`` only, so a run that is interrupted and resumed from its
  last checkpoint ends with the same weights as an uninterrupted run of the same length.
  Checkpoints (``output_dir/checkpoint-<step>/``) are diffusers pipelines written by
  ``core.checkpoint.save_pruned_pipeline`` (safetensors, loadable with
  ``core.pipeline.load_pipeline``; the EMA weights when ``ema`` is set) plus
  ``training_state.safetensors`` / ``training_state.json`` (raw training weights, optimizer
  moments, EMA, masks, step, loss log): no pickles.
* **Devices.** Built on ``accelerate``: the same code runs on the CPU, one GPU, or as N
  data-parallel processes (DDP) under ``accelerate launch`` or ``torchrun``, on GPUs or on CPUs
  (``ACCELERATE_USE_CPU=1``, the gloo backend). ``batch_size`` is the global batch: each process
  takes its slice of the same ``(seed, step)`` batch and the gradients are averaged, so N processes
  follow the one-process run up to floating-point rounding. The logged loss is the global batch's;
  only the main process calls ``progress`` and writes checkpoints (``FinetuneResult.is_main_process``
  tells a caller whether to write its outputs); ``output_dir`` must be one directory every process
  reads (a shared file system across nodes). See ``docs/recovery-at-scale.md``.
"""
from __future__ import annotations

import copy
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

ProgressFn = Callable[[float, str], None]

NICI_ALPHA = 50.0  # NiCI-Pruning's distillation weight
NICI_TAU = 1.0  # NiCI-Pruning's softmax temperature
STATE_JSON = "training_state.json"
STATE_TENSORS = "training_state.safetensors"


@dataclass
class FinetuneResult:
    """The fine-tuned pipeline (a new object; EMA weights when ``ema`` was set) and its log."""

    pipeline: object
    losses: pd.DataFrame  # step, loss, denoising, distillation, l1
    steps: int
    masks: dict = field(default_factory=dict)  # layer -> bool mask (True = kept), final
    resumed_from: int | None = None  # step of the checkpoint this run resumed from
    output_dir: str | None = None
    wall_time_s: float = 0.0
    num_processes: int = 1  # data-parallel processes that trained together (accelerate launch / torchrun)
    is_main_process: bool = True  # False on the other processes: only the main one writes outputs


# ----------------------------------------------------------------------------------------------
# Pieces (pure functions)
# ----------------------------------------------------------------------------------------------
def nici_distillation_loss(student: torch.Tensor, teacher: torch.Tensor, alpha: float = NICI_ALPHA,
                           tau: float = NICI_TAU) -> torch.Tensor:
    """NiCI-Pruning KD: ``alpha * tau^2 * KL(log_softmax(s/tau) || log_softmax(t/tau))`` over
    flattened spatial maps (softmax over ``H*W`` per image and channel), mean over maps."""
    maps_student = student.reshape(student.shape[0] * student.shape[1], -1).float()
    maps_teacher = teacher.reshape(teacher.shape[0] * teacher.shape[1], -1).float().detach()
    divergence = F.kl_div(
        F.log_softmax(maps_student / tau, dim=-1), F.log_softmax(maps_teacher / tau, dim=-1),
        reduction="batchmean", log_target=True,
    )
    return alpha * tau * tau * divergence


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator determined by ``(seed, step, stream)`` only: data order, timesteps, noise
    and regrowth of a step never depend on what ran before it (exact resume)."""
    mixed = (int(seed) * 1_000_003 + int(step)) * 7 + int(stream)
    return torch.Generator().manual_seed(mixed % (2**63 - 1))


def step_batch(images: torch.Tensor, batch_size: int, num_train_timesteps: int, seed: int, step: int):
    """(indices, timesteps, noise) of one global training batch, from ``(seed, step)``."""
    generator = step_generator(seed, step)
    indices = torch.randint(0, images.shape[0], (batch_size,), generator=generator)
    timesteps = torch.randint(0, num_train_timesteps, (batch_size,), generator=generator)
    noise = torch.randn((batch_size, *images.shape[1:]), generator=generator)
    return indices, timesteps, noise


def masks_from_zeros(denoiser: nn.Module, layers: dict | None = None) -> dict:
    """``weight != 0`` for every prunable layer holding exact zeros (an unstructured / N:M result);
    dense layers get no mask."""
    if layers is None:
        layers = _prunable(denoiser)
    masks = {}
    for name, module in layers.items():
        mask = module.weight.detach() != 0
        if not bool(mask.all()):
            masks[name] = mask
    return masks


def apply_masks(denoiser: nn.Module, masks: dict) -> None:
    modules = dict(denoiser.named_modules())
    with torch.no_grad():
        for name, mask in masks.items():
            weight = modules[name].weight
            weight.mul_(mask.to(device=weight.device, dtype=weight.dtype))


def _prunable(denoiser: nn.Module) -> dict:
    from .criteria import prunable_layers  # one definition of "prunable" for the whole engine

    return prunable_layers(denoiser)


def _default_images(pipeline) -> torch.Tensor:
    from .data import CALIBRATION_IMAGES, load_image_set
    from .pipeline import adapter_of

    images = load_image_set(CALIBRATION_IMAGES)
    shape = tuple(adapter_of(pipeline).image_shape(pipeline))
    if tuple(images.shape[1:]) != shape:
        raise ValueError(f"finetune needs images= for a model of {'x'.join(map(str, shape))} "
                         f"images (the shipped set is {tuple(images.shape[1:])})")
    return images


def _split(result_or_pipeline):
    """(pipeline, spec or None) from a PruneResult or a pipeline."""
    pipeline = getattr(result_or_pipeline, "pipeline", None)
    if pipeline is not None and hasattr(pipeline, "components"):
        return pipeline, getattr(result_or_pipeline, "spec", None)
    if hasattr(result_or_pipeline, "components") and hasattr(result_or_pipeline, "scheduler"):
        return result_or_pipeline, None
    raise ValueError(f"finetune needs a PruneResult or a diffusion pipeline, got {type(result_or_pipeline).__name__}")


def _resolve_masks(masks, denoiser, spec) -> dict:
    if masks is None:
        return {}
    if isinstance(masks, dict):
        return {name: mask.detach().bool().clone() for name, mask in masks.items()}
    if masks != "auto":
        raise ValueError(f"masks must be 'auto', None or a dict of layer -> bool tensor, got {masks!r}")
    if _structural(spec):
        return {}  # the removed weights are gone, nothing to keep at zero
    return masks_from_zeros(denoiser)


def _structural(spec) -> bool:
    """Whether ``spec``'s granularity cuts whole units (the registry's ``structural`` flag; an N:M
    pattern is looked up as ``"N:M"``). No spec, or a granularity not registered here: False, so the
    zeros found in the weights are kept."""
    if spec is None:
        return False
    from .granularities import GRANULARITIES, parse_granularity  # the package registers every granularity

    try:
        name, _ = parse_granularity(getattr(spec, "granularity", None))
    except ValueError:
        return False
    return bool(GRANULARITIES[name].structural)


def _teacher_denoiser(distill, teacher):
    if distill is None or distill is False:
        return None
    source = teacher if distill is True else distill
    if source is None:
        raise ValueError("distill=True needs teacher= (the dense pipeline or UNet); or pass the teacher as distill=")
    if not isinstance(source, nn.Module) and hasattr(source, "components"):
        from .pipeline import adapter_of

        source = adapter_of(source).denoiser(source)
    denoiser = source
    if not isinstance(denoiser, nn.Module):
        raise ValueError(f"the distillation teacher must be a pipeline or a UNet, got {type(source).__name__}")
    return denoiser


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------
def _checkpoints(output_dir: Path) -> list:
    found = []
    for path in output_dir.glob("checkpoint-*"):
        if (path / STATE_JSON).exists() and path.name.split("-")[-1].isdigit():
            found.append((int(path.name.split("-")[-1]), path))
    return sorted(found)


def _save_checkpoint(output_dir: Path, step: int, pipeline, denoiser, optimizer, ema_shadow, masks, losses, spec,
                     settings):
    """``checkpoint-<step>``: the pipeline as it would be exported (with the EMA weights when an EMA
    is kept) and the training state to resume from (raw weights, optimizer, EMA, masks, losses)."""
    from safetensors.torch import save_file

    final = output_dir / f"checkpoint-{step}"
    staging = output_dir / f".tmp-checkpoint-{step}"
    if staging.exists():
        shutil.rmtree(staging)
    export = _ema_copy(denoiser, ema_shadow) if ema_shadow is not None else denoiser
    _save_pipeline(pipeline, export, staging, spec)
    del export
    tensors, groups = {}, []
    names = [name for name, _ in denoiser.named_parameters()]
    state = optimizer.state_dict()
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{names[int(index)]}.{key}"] = value.detach().cpu().contiguous()
    for group in state["param_groups"]:
        groups.append({k: v for k, v in group.items() if k != "params"})
    for name, value in denoiser.state_dict().items():  # the raw training weights (the pipeline may hold the EMA)
        tensors[f"model.{name}"] = value.detach().cpu().contiguous()
    for name, value in (ema_shadow or {}).items():
        tensors[f"ema.{name}"] = value.detach().cpu().contiguous()
    for name, mask in masks.items():
        tensors[f"mask.{name}"] = mask.detach().cpu().to(torch.uint8).contiguous()
    save_file(tensors, str(staging / STATE_TENSORS))
    (staging / STATE_JSON).write_text(json.dumps(
        {"step": step, "param_groups": groups, "losses": losses, "settings": settings}, indent=1))
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)  # a checkpoint exists only once it is complete


def _save_pipeline(pipeline, denoiser, directory: Path, spec) -> None:
    from .checkpoint import save_pruned_pipeline
    from .pipeline import adapter_of

    adapter = adapter_of(pipeline)
    snapshot = adapter.replace_components(pipeline, {adapter.denoiser_name: denoiser})
    save_pruned_pipeline(snapshot, directory, spec=spec)


def _load_checkpoint(path: Path, denoiser, optimizer, ema_shadow, masks) -> tuple[int, list]:
    from safetensors.torch import load_file

    state_json = json.loads((path / STATE_JSON).read_text())
    tensors = load_file(str(path / STATE_TENSORS))
    weights = {key[len("model."):]: value for key, value in tensors.items() if key.startswith("model.")}
    missing, unexpected = denoiser.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not match the model being fine-tuned "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    names = [name for name, _ in denoiser.named_parameters()]
    optimizer_state = {"state": {}, "param_groups": []}
    for index, name in enumerate(names):
        entry = {key.split(".")[-1]: value for key, value in tensors.items()
                 if key.startswith(f"optimizer.{name}.") and key.count(".") == name.count(".") + 2}
        if entry:
            optimizer_state["state"][index] = entry
    for group, saved in zip(optimizer.state_dict()["param_groups"], state_json["param_groups"]):
        optimizer_state["param_groups"].append({**saved, "params": group["params"]})
    optimizer.load_state_dict(optimizer_state)
    if ema_shadow is not None:
        for name in ema_shadow:
            ema_shadow[name].copy_(tensors[f"ema.{name}"])
    masks.clear()
    for key, value in tensors.items():
        if key.startswith("mask."):
            masks[key[len("mask."):]] = value.bool()
    return int(state_json["step"]), list(state_json["losses"])


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------
def finetune(
    result_or_pipeline,
    steps: int,
    lr: float = 2e-4,  # Diff-Pruning's fine-tuning learning rate
    batch_size: int = 16,  # global batch (split over processes under accelerate launch)
    *,
    ema: float | None = None,  # EMA decay (Diff-Pruning: 0.9999 over 100k steps); None: no EMA
    distill=False,  # NiCI KD: True (with teacher=) or the teacher pipeline / UNet itself
    teacher=None,  # the dense pipeline or UNet to distil from
    distill_alpha: float = NICI_ALPHA,
    distill_tau: float = NICI_TAU,
    images: torch.Tensor | None = None,  # training images N x C x H x W in [-1, 1] (default: shipped set)
    labels: torch.Tensor | None = None,  # class-conditional models: the class of each image (None: uniform draws)
    masks="auto",  # "auto": zeros of a non-structural (unstructured / N:M) result stay zero; None; or layer -> bool
    l1_penalty: float = 0.0,  # l1 recovery: lambda * sum |w| over prunable weights
    regrowth: float = 0.0,  # l1 recovery: per-step probability that a pruned weight is revived
    warmup_steps: int = 0,  # linear learning-rate warm-up
    max_grad_norm: float | None = 1.0,  # gradient clipping (diffusers' training examples)
    seed: int = 0,  # data order, timesteps and noise of step s come from (seed, s)
    output_dir: str | Path | None = None,  # where checkpoints go; None: no checkpoints
    checkpoint_every: int = 0,  # steps between checkpoints (0: only at the end, when output_dir is set)
    resume: bool = True,  # continue from the last checkpoint in output_dir
    progress: ProgressFn | None = None,  # progress(fraction, message); raising in it cancels the run
    mixed_precision: str = "no",  # accelerate's setting ("no", "fp16", "bf16")
) -> FinetuneResult:
    """Fine-tune a pruned pipeline (or a ``PruneResult``) for ``steps`` optimizer steps.

    Returns a new pipeline (the caller's is not modified); ``losses`` logs every step. See the
    module docstring for the loss, masks, ``l1`` options and the exact-resume guarantee.
    """
    from accelerate import Accelerator

    def _finite(value) -> bool:  # a real number (not a bool), neither infinite nor NaN
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    if not _finite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if max_grad_norm is not None and (not _finite(max_grad_norm) or max_grad_norm <= 0):
        raise ValueError(f"max_grad_norm must be None (no clipping) or a finite number > 0, got {max_grad_norm!r}")
    for name, value in (("distill_alpha", distill_alpha), ("l1_penalty", l1_penalty), ("regrowth", regrowth)):
        if not _finite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not _finite(distill_tau) or distill_tau <= 0:
        raise ValueError(f"distill_tau must be a finite number > 0, got {distill_tau!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if ema is not None and not 0.0 < ema < 1.0:
        raise ValueError(f"ema must be None or a decay in (0, 1), got {ema!r}")
    if l1_penalty < 0 or not 0.0 <= regrowth <= 1.0:
        raise ValueError(f"l1_penalty must be >= 0 and regrowth in [0, 1], got {l1_penalty}, {regrowth}")
    if checkpoint_every < 0:
        raise ValueError(f"checkpoint_every must be >= 0, got {checkpoint_every}")
    if labels is not None and images is None:
        raise ValueError("labels need images: they give the class of each training image")
    started = time.perf_counter()
    pipeline, spec = _split(result_or_pipeline)
    from .pipeline import adapter_of

    adapter = adapter_of(pipeline)
    teacher_source = _teacher_denoiser(distill, teacher)
    accelerator = Accelerator(mixed_precision=mixed_precision)
    launched = int(os.environ.get("WORLD_SIZE", "1"))  # processes started by accelerate launch / torchrun
    if launched > 1 and accelerator.num_processes == 1:  # each would train alone on the whole batch, all writing
        raise ValueError(f"finetune was launched as {launched} processes but accelerate joined "
                         f"{accelerator.num_processes}: on CPUs set ACCELERATE_USE_CPU=1 (the gloo backend)")
    device = accelerator.device
    if batch_size % accelerator.num_processes:
        raise ValueError(f"batch_size {batch_size} must be divisible by the {accelerator.num_processes} processes")
    local_batch = batch_size // accelerator.num_processes

    denoiser = _float32(copy.deepcopy(adapter.denoiser(pipeline)).to(device)).train()
    for parameter in denoiser.parameters():
        parameter.requires_grad_(True)
    layer_masks = {name: mask.to(device) for name, mask in _resolve_masks(masks, denoiser, spec).items()}
    apply_masks(denoiser, layer_masks)
    teacher_denoiser = None
    if teacher_source is not None:
        teacher_denoiser = _float32(copy.deepcopy(teacher_source).to(device)).eval()
        teacher_denoiser.requires_grad_(False)
    scheduler = pipeline.scheduler
    num_train_timesteps = int(scheduler.config.num_train_timesteps)
    images = (_default_images(pipeline) if images is None else images).float().cpu()
    if labels is not None:
        if adapter.num_classes(pipeline) is None:
            raise ValueError(f"labels apply to class-conditional models only; this {adapter.name} model has no classes")
        labels = torch.as_tensor(labels).long().cpu()
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must hold one class per image ({images.shape[0]}), got shape {tuple(labels.shape)}")
        adapter.sample_conditioning(pipeline, len(labels), class_label=labels)  # ValueError for a class out of range
    if adapter.is_latent():  # latent models train on the autoencoder's latents of the images
        encoder_generator = torch.Generator().manual_seed(int(seed) + 7)
        images = torch.cat([adapter.encode(pipeline, chunk, encoder_generator).float().cpu() for chunk in images.split(64)])
    prunable_names = list(_prunable(denoiser))

    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=lr, weight_decay=0.0)
    ema_shadow = {name: p.detach().clone() for name, p in denoiser.named_parameters()} if ema else None
    losses: list = []
    start_step, resumed_from = 0, None
    out_path = Path(output_dir) if output_dir is not None else None
    if out_path is not None:
        if accelerator.is_main_process:  # one writer; the others only read the checkpoints to resume from
            out_path.mkdir(parents=True, exist_ok=True)
        found = _checkpoints(out_path) if out_path.is_dir() else []
        if resume and found:
            done, path = max((entry for entry in found if entry[0] <= steps), default=(None, None))
            if path is not None:
                start_step, losses = _load_checkpoint(path, denoiser, optimizer, ema_shadow, layer_masks)
                layer_masks = {name: mask.to(device) for name, mask in layer_masks.items()}
                losses = losses[:start_step]
                resumed_from = start_step
    if accelerator.num_processes > 1:  # every process must resume from the same step (a shared output_dir)
        starts = accelerator.gather(torch.tensor([start_step], device=device)).tolist()
        if len(set(starts)) > 1:
            raise ValueError(f"the processes found different checkpoints to resume from (steps {starts}): "
                             "output_dir must be one directory that every process reads")
    lr_lambda = (lambda step: min(1.0, (step + 1) / warmup_steps)) if warmup_steps else (lambda step: 1.0)
    model, optimizer = accelerator.prepare(denoiser, optimizer)
    for group in optimizer.param_groups:
        group["lr"] = lr * lr_lambda(start_step)
    noise_scheduler = copy.deepcopy(scheduler)  # add_noise moves its tables to the sample's device
    modules = dict(denoiser.named_modules())
    settings = dict(steps=steps, lr=lr, batch_size=batch_size, ema=ema, distill=teacher_denoiser is not None,
                    distill_alpha=distill_alpha, distill_tau=distill_tau, l1_penalty=l1_penalty,
                    regrowth=regrowth, warmup_steps=warmup_steps, seed=seed)

    def save(step: int) -> None:
        if out_path is None:
            return
        if accelerator.is_main_process:  # the weights are the same on every process: one writes them
            _save_checkpoint(out_path, step, pipeline, denoiser, optimizer, ema_shadow, layer_masks, losses, spec,
                             settings)
        accelerator.wait_for_everyone()  # no process goes on (or returns) before the checkpoint is complete

    for step in range(start_step, steps):
        indices, timesteps, noise = step_batch(images, batch_size, num_train_timesteps, seed, step)
        part = slice(accelerator.process_index * local_batch, (accelerator.process_index + 1) * local_batch)
        clean = images[indices[part]].to(device)
        noise, timesteps = noise[part].to(device), timesteps[part].to(device)
        # the family's forward process and target (epsilon, v or x0 from prediction_type)
        noisy = adapter.add_noise(noise_scheduler, clean, noise, timesteps)
        target = adapter.training_target(noise_scheduler, clean, noise, timesteps)
        model_timesteps = adapter.model_timesteps(noise_scheduler, timesteps)
        # the images' own classes when known (unlabelled images of a class-conditional model get
        # uniformly drawn classes, as the samples the model is evaluated on do)
        conditioning = adapter.sample_conditioning(pipeline, batch_size, step_generator(seed, step, stream=2),
                                                   **({} if labels is None else {"class_label": labels[indices]}))
        conditioning = {key: value[part] for key, value in conditioning.items()}
        with accelerator.autocast():
            prediction = adapter.trim_prediction(adapter.predict(model, noisy, model_timesteps, conditioning), target)
            denoising = F.mse_loss(prediction.float(), target)
            loss = denoising
            distillation = torch.zeros((), device=device)
            if teacher_denoiser is not None:
                with torch.no_grad():
                    target = adapter.trim_prediction(
                        adapter.predict(teacher_denoiser, noisy, model_timesteps, conditioning), target)
                distillation = nici_distillation_loss(prediction, target, distill_alpha, distill_tau)
                loss = loss + distillation
            l1_term = torch.zeros((), device=device)
            if l1_penalty > 0:
                l1_term = l1_penalty * sum(modules[name].weight.abs().sum() for name in prunable_names)
                loss = loss + l1_term
        for group in optimizer.param_groups:
            group["lr"] = lr * lr_lambda(step)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if max_grad_norm is not None:
            accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        if regrowth > 0 and layer_masks:
            generator = step_generator(seed, step, stream=1)
            for name in sorted(layer_masks):
                revive = torch.rand(layer_masks[name].shape, generator=generator) < regrowth
                layer_masks[name] = layer_masks[name] | revive.to(layer_masks[name].device)
        apply_masks(denoiser, layer_masks)
        if ema_shadow is not None:
            with torch.no_grad():
                for name, parameter in denoiser.named_parameters():
                    ema_shadow[name].mul_(ema).add_(parameter.detach(), alpha=1 - ema)
                for name, mask in layer_masks.items():
                    ema_shadow[f"{name}.weight"].mul_(mask.to(ema_shadow[f"{name}.weight"].dtype))
        # the global batch's loss: the mean over the processes of the means over their equal slices
        logged = accelerator.reduce(torch.stack([loss.detach(), denoising.detach(), distillation.detach(),
                                                 l1_term.detach()]).float(), reduction="mean").tolist()
        losses.append({"step": step + 1, **dict(zip(("loss", "denoising", "distillation", "l1"), logged))})
        if checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            save(step + 1)
        if progress is not None and accelerator.is_main_process:  # one process reports (and can cancel)
            progress((step + 1) / steps, f"fine-tuning step {step + 1}/{steps}, loss {losses[-1]['loss']:.4f}")
    if out_path is not None and steps > (resumed_from or 0):
        save(steps)

    final = accelerator.unwrap_model(model)
    if ema_shadow is not None:
        final = _ema_copy(final, ema_shadow)
    final = final.eval()
    for parameter in final.parameters():
        parameter.requires_grad_(False)
    tuned = adapter.replace_components(pipeline, {adapter.denoiser_name: final,
                                                  "scheduler": copy.deepcopy(pipeline.scheduler)})
    return FinetuneResult(
        pipeline=tuned, losses=pd.DataFrame(losses, columns=["step", "loss", "denoising", "distillation", "l1"]),
        steps=steps, masks={name: mask.cpu() for name, mask in layer_masks.items()}, resumed_from=resumed_from,
        output_dir=str(out_path) if out_path is not None else None, wall_time_s=time.perf_counter() - started,
        num_processes=accelerator.num_processes, is_main_process=accelerator.is_main_process,
    )


def _float32(module: nn.Module) -> nn.Module:
    return module if all(p.dtype == torch.float32 for p in module.parameters()) else module.float()


def _ema_copy(denoiser: nn.Module, ema_shadow: dict) -> nn.Module:
    """A copy of ``denoiser`` holding the EMA weights."""
    copied = copy.deepcopy(denoiser)
    with torch.no_grad():
        for name, parameter in copied.named_parameters():
            parameter.copy_(ema_shadow[name])
    return copied
