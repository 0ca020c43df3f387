"""Structured OBS-Diff: whole units removed with the OBS compensation of the layers that read them.

* **Attention heads** (diffusers ``Attention``): the heads are the output rows of ``to_q/k/v``
  and the input columns of the output projections that read them; OBS removes the heads whose
  block error is smallest and compensates the remaining head columns of those readers.
* **FFN neurons** (diffusers ``FeedForward``): the up-projection produces them, the
  down-projection reads them; the same greedy block OBS on the down-projection's columns.
* **Conv channels**: a channel scores the OBS error of removing its input columns from every
  layer that reads it, ``sum_rows sum_columns W^2 / [Hinv]_cc``, so the dependency group that is
  cheapest to reconstruct goes first; after the engine's cut every reading layer (``conv_out``
  included) gets the least-squares solution for its kept columns,
  ``W' = W H_:R (H_RR + lambda I)^-1`` (the block OBS update of removing all the cut columns at
  once). The norms between a producer and its readers (GroupNorm) see fewer channels after the
  cut, which compensation cannot model: channel obs is calibrated on the dense trajectory in one
  pass and its quality is measured, not assumed.

The error of removing a column set ``S`` is the exact block OBS error
``tr(W_S [Hinv_SS]^-1 W_S^T)`` with ``Hinv = (H + lambda I)^-1`` (Optimal Brain Surgeon; block
form as in Frantar et al.'s OBC and Kurtic et al.'s ZipLM), which reduces to
``sum_rows W^2 / [Hinv]_cc`` for a single column. OBS-Diff (2025) prunes heads and neurons with
it; the per-layer solver of its unstructured path is SparseGPT's (Frantar & Alistarh, ICML 2023).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...models.transformer_cuts import ffn_layers, head_projections, remove_heads
from ...pipeline import denoiser_noise
from ..scores import ConsumerScores
from .hessians import (DEFAULT_MAX_RETRIES, DEFAULT_PERCDAMP, DampingInfo, ProgressFn, _prepare_hessian, collect_hessians,
                       damped_inverse, matrix_to_weight, resolve_timestep_weights, sampling_trajectory, supported_layer,
                       weight_matrix)
from .settings import ObsSettings


# ----------------------------------------------------------------------------------------------
# Greedy block OBS over groups of input columns
# ----------------------------------------------------------------------------------------------
@dataclass
class ColumnGroupResult:
    weight: torch.Tensor  # out x columns, removed columns zero
    removed: list  # indices (into ``groups``) of the removed groups, in removal order
    errors: list  # OBS error of each removal when it was made
    damping: DampingInfo


def obs_remove_column_groups(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    groups: list,
    num_remove: int,
    *,
    chunk: int = 1,  # groups removed per round before the errors are recomputed
    percdamp: float = DEFAULT_PERCDAMP,
    max_retries: int = DEFAULT_MAX_RETRIES,
) -> ColumnGroupResult:
    """Greedy structured OBS: remove ``num_remove`` groups of columns (heads, neurons).

    The error of removing column set ``S`` is the exact block OBS error
    ``tr(W_S [Hinv_SS]^-1 W_S^T)`` (``Hinv = (H + lambda I)^-1``); it reduces to
    ``sum_rows W^2 / diag(Hinv)`` for a single column. After each removal the remaining columns
    are compensated, ``W -= W_S [Hinv_SS]^-1 Hinv_S:``, and ``Hinv`` is downdated to the inverse
    of ``H`` restricted to the remaining columns, ``Hinv -= Hinv_:S [Hinv_SS]^-1 Hinv_S:``
    (OBS; Kurtic et al. ZipLM / Frantar et al. OBC). ``chunk`` > 1 removes that many lowest-error
    groups per round (cheaper for thousands of FFN neurons).
    """
    if not 0 <= num_remove < len(groups):
        raise ValueError(f"can remove between 0 and {len(groups) - 1} of {len(groups)} groups, got {num_remove}")
    inverse, dead, info = damped_inverse(hessian, percdamp, max_retries, cholesky_upper=False)
    work = weight.detach().to(torch.float64).clone()
    inverse = inverse.to(work.device)
    remaining = list(range(len(groups)))
    removed, errors = [], []
    while len(removed) < num_remove:
        scores = []
        for index in remaining:
            columns = torch.as_tensor(groups[index], device=work.device)
            block = inverse[columns][:, columns]
            part = work[:, columns]
            solved = torch.linalg.solve(block, part.T)  # [Hinv_SS]^-1 W_S^T
            scores.append(float((part.T * solved).sum()))
        order = sorted(range(len(remaining)), key=lambda j: scores[j])
        take = order[: min(chunk, num_remove - len(removed))]
        columns = torch.as_tensor([c for j in take for c in groups[remaining[j]]], device=work.device)
        block = inverse[columns][:, columns]
        coefficients = torch.linalg.solve(block, inverse[columns])  # [Hinv_SS]^-1 Hinv_S:
        work -= work[:, columns] @ coefficients
        inverse -= inverse[:, columns] @ coefficients
        work[:, columns] = 0.0
        for j in take:
            removed.append(remaining[j])
            errors.append(scores[j])
        remaining = [g for g in remaining if g not in set(removed)]
    if not torch.isfinite(work).all():
        work = weight.detach().to(torch.float64).clone()
        for index in removed:
            work[:, groups[index]] = 0.0
        info.fallback = (info.fallback + "+" if info.fallback else "") + "no-compensation"
    return ColumnGroupResult(work.to(weight.dtype), removed, errors, info)


# ----------------------------------------------------------------------------------------------
# Attention heads and FFN neurons
# ----------------------------------------------------------------------------------------------
def prune_attention_heads(attn: nn.Module, hessian: torch.Tensor, num_remove: int, shrink: bool = True,
                          context_hessian: torch.Tensor | None = None, *, readers=None, **options) -> ColumnGroupResult:
    """Remove ``num_remove`` heads of a diffusers ``Attention`` with OBS compensation, in place.

    ``readers`` are the output projections whose input columns read the heads, the image
    stream's first: the model adapter's ``HeadGroup.columns`` (``ModelAdapter.head_groups``); by
    default those the engine's head cut knows (``core.models.transformer_cuts.head_projections``).
    ``hessian`` is that of the first reader's input (``inner_dim`` columns, head ``h`` owning
    columns ``h*head_dim .. (h+1)*head_dim-1``). The compensated reader loses the removed
    columns, the projections that produce the heads lose the matching rows (the engine's one head
    cut, ``core.models.transformer_cuts.remove_heads``), and ``heads``, ``inner_dim`` are updated.
    ``shrink=False`` only writes the compensated readers (removed head columns zero) and leaves the
    cut to the caller (the engine's ``head`` granularity).

    Joint attention (SD3's MMDiT: a second reader, the context stream's output projection, reads
    the same heads): with ``context_hessian`` (that of the second reader's input) a head's error
    is the sum of its OBS errors in both readers, and both are compensated. This is the exact
    block OBS of the block-diagonal pair ``diag(W_out, W_context)``, ``diag(H, H_context)`` (the
    two projections read different tokens), where OBS-Diff's code fuses the two rankings by
    reciprocal rank.
    """
    heads = int(attn.heads)
    projections = list(readers) if readers is not None else list(head_projections(attn)[1].values())
    out_proj = projections[0]
    context_proj = None
    if context_hessian is not None:
        if len(projections) < 2:
            raise ValueError("a context_hessian needs a second output projection reading the heads (joint attention)")
        context_proj = projections[1]
    inner = out_proj.in_features
    if inner % heads:
        raise ValueError(f"attention inner dim {inner} is not divisible by its {heads} heads")
    if getattr(attn, "inner_kv_dim", inner) != inner:
        raise ValueError("head pruning supports attention with equal q/k/v widths only")
    head_dim = inner // heads
    groups = [list(range(h * head_dim, (h + 1) * head_dim)) for h in range(heads)]
    if context_proj is None:
        result = obs_remove_column_groups(out_proj.weight.detach(), hessian, groups, num_remove, **options)
    else:
        weight = torch.block_diag(out_proj.weight.detach(), context_proj.weight.detach().to(out_proj.weight.dtype))
        joint_hessian = torch.block_diag(hessian.to(torch.float64), context_hessian.to(torch.float64))
        joint_groups = [columns + [inner + c for c in columns] for columns in groups]
        result = obs_remove_column_groups(weight, joint_hessian, joint_groups, num_remove, **options)
    if not result.removed:
        return result
    with torch.no_grad():
        rows = out_proj.out_features
        out_proj.weight.copy_(result.weight[:rows, :inner].to(out_proj.weight.dtype))
        if context_proj is not None:
            context_proj.weight.copy_(result.weight[rows:, inner:].to(context_proj.weight.dtype))
    if not shrink:
        return result
    removed = set(result.removed)
    remove_heads(attn, [h for h in range(heads) if h not in removed])
    return result


def prune_feedforward_neurons(ff: nn.Module, hessian: torch.Tensor, num_remove: int, chunk: int = 8,
                              shrink: bool = True, **options) -> ColumnGroupResult:
    """Remove ``num_remove`` hidden neurons of a diffusers ``FeedForward`` with OBS compensation.

    ``hessian`` is that of the down-projection's input. The down-projection loses the columns,
    the up-projection the rows (both halves for gated activations). ``shrink=False`` only writes
    the compensated down-projection (removed columns zero) and leaves the cut to the caller (the
    engine's ``ffn`` granularity).
    """
    import torch_pruning as tp

    up, down, gated = ffn_layers(ff)
    hidden = down.in_features
    groups = [[c] for c in range(hidden)]
    result = obs_remove_column_groups(down.weight.detach(), hessian, groups, num_remove, chunk=chunk, **options)
    if not result.removed:
        return result
    removed = sorted(result.removed)
    with torch.no_grad():
        down.weight.copy_(result.weight.to(down.weight.dtype))
    if not shrink:
        return result
    tp.prune_linear_in_channels(down, removed)
    tp.prune_linear_out_channels(up, removed + ([r + hidden for r in removed] if gated else []))
    return result


# ----------------------------------------------------------------------------------------------
# Conv channels: input-side OBS errors, least-squares compensation after the engine's cut
# ----------------------------------------------------------------------------------------------
def obs_channel_scores(denoiser: nn.Module, noise_scheduler, layers: dict, settings: ObsSettings = ObsSettings(), *,
                       progress: ProgressFn | None = None):
    """Channel OBS (see the module docstring): ``ConsumerScores`` for the engine's channel cut,
    with a ``compensate`` step that re-solves every reading layer's kept columns afterwards.

    Hessians of all ``layers`` and of ``conv_out`` (which reads the last channels but is never
    cut itself) are collected in one pass over the dense model's own sampling trajectories
    (``settings``: schedule, its parameters, number of trajectories and seed; ``percdamp`` damps
    the inverses). Returns ``(scores, timestep_weights)``.
    """
    if not isinstance(settings, ObsSettings):
        raise ValueError(f"settings must be an ObsSettings, got {type(settings).__name__}")
    percdamp = settings.percdamp
    num_train_timesteps = int(noise_scheduler.config.num_train_timesteps)
    timestep_weights = resolve_timestep_weights(settings.schedule, settings.schedule_params, num_train_timesteps)
    noise = denoiser_noise(denoiser, settings.num_images, settings.seed)
    readers = {name: module for name, module in layers.items() if supported_layer(module)}
    # Layers whose outputs are never cut (the pixel UNet's conv_out) still read cut channels:
    # they are compensated too (the adapter names them).
    from ...models import adapter_for_module

    adapter, component = adapter_for_module(denoiser)
    modules = dict(denoiser.named_modules())
    for name in adapter.channel_kept_layers(component, denoiser):
        if name in modules and supported_layer(modules[name]):
            readers[name] = modules[name]
    if progress is not None:
        progress(0.0, "obs: sampling the dense calibration trajectory, collecting Hessians")
    with collect_hessians(readers) as collector, torch.no_grad():
        sampling_trajectory(denoiser, noise_scheduler, timestep_weights, noise,
                            before_step=lambda weight: setattr(collector, "timestep_weight", weight))
    originals, hessians = {}, {}
    scores = ConsumerScores()
    for index, (name, module) in enumerate(readers.items()):
        if progress is not None:
            progress(0.8 + 0.2 * index / len(readers), f"obs: channel errors of {name}")
        hessian = collector.hessian(name)
        matrix = weight_matrix(module).to(torch.float64)
        inverse, _, _ = damped_inverse(hessian, percdamp, cholesky_upper=False)
        saliency = matrix.pow(2) / torch.diagonal(inverse).clamp_min(1e-12)
        originals[name], hessians[name] = matrix.to(torch.float32).cpu(), hessian.to(torch.float32).cpu()
        if name in layers:  # conv_out is no prunable layer: it is only compensated
            scores[name] = matrix_to_weight(saliency.to(module.weight.dtype), module).to(module.weight.device)
    del collector

    def compensate(pruned: nn.Module, removed: dict) -> None:
        modules = dict(pruned.named_modules())
        for name, original in originals.items():
            entry = removed.get(name, {})
            if not entry.get("in"):
                continue  # no input removed: the kept rows are the dense ones
            module = modules[name]
            positions = module.weight[0].numel() // module.weight.shape[1]  # kernel positions (1 for Linear)
            in_channels = original.shape[1] // positions
            dropped_in, dropped_out = set(entry["in"]), set(entry.get("out", ()))
            kept_in = [c for c in range(in_channels) if c not in dropped_in]
            kept_rows = [o for o in range(original.shape[0]) if o not in dropped_out]
            columns = torch.tensor([p * in_channels + c for p in range(positions) for c in kept_in])
            updated = _least_squares_columns(original[kept_rows].to(torch.float64),
                                             hessians[name].to(torch.float64), columns, percdamp)
            with torch.no_grad():
                module.weight.copy_(matrix_to_weight(updated.to(module.weight.dtype), module).to(module.weight.device))

    scores.compensate = compensate
    return scores, timestep_weights


def _least_squares_columns(matrix: torch.Tensor, hessian: torch.Tensor, columns: torch.Tensor,
                           percdamp: float = DEFAULT_PERCDAMP) -> torch.Tensor:
    """``W' = W H_:R (H_RR + lambda I)^-1``: the kept columns ``R`` that best reproduce ``W X``
    (``H ~ X X^T``), i.e. the block OBS compensation for removing all other columns at once.
    Falls back to the uncompensated columns if the solution is not finite."""
    prepared, _ = _prepare_hessian(hessian)
    kept = prepared[columns][:, columns]
    damping = percdamp * float(torch.diagonal(kept).abs().mean()) if kept.numel() else 0.0
    identity = torch.eye(kept.shape[0], dtype=kept.dtype)
    for _ in range(DEFAULT_MAX_RETRIES + 1):
        try:
            solution = torch.linalg.solve(kept + max(damping, 1e-8) * identity, prepared[columns] @ matrix.T).T
        except RuntimeError:  # singular even after damping: damp more
            solution = None
        if solution is not None and torch.isfinite(solution).all():
            return solution
        damping = max(damping, 1e-8) * 10.0
    return matrix[:, columns]
