"""``obs``: OBS-Diff, one-shot training-free pruning with Optimal-Brain-Surgeon weight compensation.

OBS-Diff (2025) prunes a diffusion model layer by layer with the Optimal Brain Surgeon update,
calibrated on the dense model's own sampling trajectories; its per-layer solver is SparseGPT's
(Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot",
ICML 2023). The parts:

* ``hessians.py``       -- the timestep-aware Hessian ``H = (2 / sum_t w_t n_t) sum_t w_t X_t X_t^T``
  of every layer's inputs along the sampling trajectory (forward hooks, always removed), the
  weight <-> matrix layout (conv inputs unfolded) and the damped inverse with retries.
* ``reconstruction.py`` -- unstructured and N:M: SparseGPT's column-blockwise OBS prune of one layer.
* ``compensation.py``   -- structured: attention heads and FFN neurons removed by greedy block OBS
  with compensation of the layer that reads them; conv channels scored by the OBS error of their
  readers and compensated by least squares after the engine's cut.
* ``sequential.py``     -- a whole network: the layers in forward order, split into groups, each
  group calibrated on the outputs of the already pruned groups before it.

This module registers the criterion. Like every criterion it hands the engine per-weight scores
and the engine's granularity makes the cut; unlike the gradient criteria it runs its own
calibration and rewrites the weights first (``Criterion.reconstruct``): :func:`engine_reconstruct`
prunes with OBS as the spec's granularity says and scores what OBS kept above what it removed,
so that the granularity's cut removes exactly OBS's choice.
"""
from __future__ import annotations

from dataclasses import replace

from torch import nn

from ...models import adapter_for_module
from ...models.transformer_cuts import ffn_layers
from ...pipeline import denoiser_noise  # noqa: F401 - the seeded noise of the calibration trajectories
from ...registry import GRANULARITIES
from ..base import Criterion, register_criterion
from ..common import CalibrationStats, copy_scheduler, prunable_layers
from ..scores import LayerScores
from .compensation import (ColumnGroupResult, obs_channel_scores, obs_remove_column_groups, prune_attention_heads,
                           prune_feedforward_neurons)
from .compensation import _least_squares_columns  # noqa: F401 - tested through the package
from .hessians import (DEFAULT_MAX_RETRIES, DEFAULT_PERCDAMP, DampingInfo, HessianCollector, ProgressFn, collect_hessians,
                       damped_inverse, layer_inputs, matrix_to_weight, resolve_timestep_weights, sampling_trajectory,
                       supported_layer, weight_matrix)
from .reconstruction import DEFAULT_BLOCKSIZE, LayerPruneResult, check_n_m, prune_layer, reconstruction_error, sparsegpt_prune
from .sequential import DEFAULT_NUM_GROUPS, ObsReport, forward_order, head_prune_modules, obs_prune_denoiser, split_groups
from .settings import ObsSettings, SparseGPTSettings

__all__ = [
    "OBS_GRANULARITIES", "engine_reconstruct",
    # hessians
    "DEFAULT_MAX_RETRIES", "DEFAULT_PERCDAMP", "DampingInfo", "HessianCollector", "collect_hessians", "damped_inverse",
    "layer_inputs", "matrix_to_weight", "resolve_timestep_weights", "sampling_trajectory", "supported_layer",
    "weight_matrix",
    # reconstruction
    "DEFAULT_BLOCKSIZE", "LayerPruneResult", "check_n_m", "prune_layer", "reconstruction_error", "sparsegpt_prune",
    # compensation
    "ColumnGroupResult", "obs_channel_scores", "obs_remove_column_groups", "prune_attention_heads",
    "prune_feedforward_neurons",
    # sequential
    "DEFAULT_NUM_GROUPS", "ObsReport", "forward_order", "head_prune_modules", "obs_prune_denoiser", "split_groups",
    # settings
    "ObsSettings", "SparseGPTSettings",
]

OBS_GRANULARITIES = ("unstructured", "N:M", "head", "ffn", "channel")


# ----------------------------------------------------------------------------------------------
# The engine's entry (Criterion.reconstruct): prune with OBS, then score what OBS kept
# ----------------------------------------------------------------------------------------------
def _check_positive_int(name):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"criterion_params.{name} of criterion 'obs' must be a positive integer, got {value!r}")
    return check


def _check_percdamp(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"criterion_params.percdamp of criterion 'obs' must be in (0, 1), got {value!r}")


def engine_reconstruct(denoiser: nn.Module, pipeline, spec, progress: ProgressFn | None = None):
    """Run OBS-Diff on the engine's private ``denoiser`` as ``spec`` says; return
    ``(scores, stats, calibration_source)``.

    The weights are compensated here; the scores make the engine's granularity cut exactly what
    OBS chose: kept weights score ``1 + |w'| / max|w'|``, pruned weights 0 (unstructured: the
    same per-layer count, N:M: the same N per group); for ``head`` and ``ffn``, the registered
    granularity's unit count (``Granularity.units_to_remove``) is asked first, OBS removes that
    many heads (FFN neurons) per module with compensation of the reading layers, and their
    producing rows and reading columns score 0, so the engine's cut removes exactly those units;
    for ``channel`` the scores are the readers' OBS errors (``compensation.obs_channel_scores``).
    ``block`` is refused: OBS-Diff removes heads and neurons, not whole blocks.
    Memory: no per-layer mask is kept (``keep_masks=False``: the zeros OBS wrote are the mask) and
    the scores are a ``LayerScores``, computed one layer at a time when the cut asks for them.
    Calibration trajectories: ``calibration_batches * calibration_batch_size`` images.
    """
    params = dict(spec.criterion_params)
    granularity = spec.granularity_name
    settings = ObsSettings(schedule=spec.schedule, schedule_params=dict(spec.schedule_params),
                           num_images=int(spec.calibration_batches) * int(spec.calibration_batch_size), seed=int(spec.seed),
                           num_groups=params["num_groups"], blocksize=params["blocksize"], percdamp=params["percdamp"])
    scheduler = copy_scheduler(pipeline.scheduler)
    layers = prunable_layers(denoiser)
    if granularity == "unstructured":
        report = obs_prune_denoiser(denoiser, scheduler, replace(settings, sparsity=float(spec.sparsity)), layers=layers,
                                    keep_masks=False, progress=progress)
    elif granularity == "N:M":
        n, m = spec.nm_pattern
        report = obs_prune_denoiser(denoiser, scheduler, replace(settings, granularity="N:M", n=n, m=m), layers=layers,
                                    keep_masks=False, progress=progress)
    elif granularity in ("head", "ffn"):
        # the registered granularity's own rule says how many units each module loses (structure
        # only, no copy of the model); OBS chooses which and compensates
        remove = GRANULARITIES[granularity].units_to_remove(denoiser, spec)
        counts = dict(heads_to_remove=remove) if granularity == "head" else dict(neurons_to_remove=remove)
        report = obs_prune_denoiser(denoiser, scheduler, replace(settings, granularity="head"), shrink=False,
                                    progress=progress, **counts)
    elif granularity == "channel":
        scores, timestep_weights = obs_channel_scores(denoiser, scheduler, layers, settings, progress=progress)
        stats = CalibrationStats(timestep_weights=list(timestep_weights), num_images=settings.num_images)
        return scores, stats, _trajectory_source(denoiser, len(timestep_weights))
    else:
        raise ValueError(f"criterion 'obs' supports granularities {list(OBS_GRANULARITIES)}, got {granularity!r}")
    # Rows and columns of the heads / FFN neurons OBS removed, per layer: they score 0.
    zero_rows: dict = {}
    zero_columns: dict = {}
    adapter, component = adapter_for_module(denoiser)
    groups = adapter.head_groups(component, denoiser)
    for name, heads in report.removed_heads.items():
        group = groups[name]
        for head in heads:
            rows = list(range(head * group.head_dim, (head + 1) * group.head_dim))
            for layer in group.rows:
                zero_rows.setdefault(layer, []).extend(rows)
            for layer in group.columns:
                zero_columns.setdefault(layer, []).extend(rows)
    if report.removed_neurons:
        names = {id(module): name for name, module in denoiser.named_modules()}
        modules = dict(denoiser.named_modules())
        for name, neurons in report.removed_neurons.items():
            up, down, gated = ffn_layers(modules[name])
            hidden = down.in_features
            zero_rows.setdefault(names[id(up)], []).extend(list(neurons) + ([n + hidden for n in neurons] if gated else []))
            zero_columns.setdefault(names[id(down)], []).extend(list(neurons))
    masked = granularity in ("unstructured", "N:M")

    def score_layer(name, module):
        # kept weights score 1 + |w'| / max|w'| (w' compensated), pruned ones 0. OBS has already
        # zeroed the weights it pruned (unstructured, N:M), so the mask is read off the weights;
        # a kept weight that happens to be exactly 0 scores 0 too, which leaves the cut weights
        # the same (every weight scoring 0 is 0), and no mask the size of the model is kept.
        weight = module.weight.detach().float().abs()
        score = 1.0 + weight / weight.max().clamp_min(1e-12)
        if masked:
            score = score * (weight != 0).to(score.dtype)
        if name in zero_rows:
            score[zero_rows[name]] = 0.0
        if name in zero_columns:
            score[:, zero_columns[name]] = 0.0
        return score

    scores = LayerScores(layers, score_layer)
    stats = CalibrationStats(timestep_weights=list(report.timestep_weights), num_images=settings.num_images)
    return scores, stats, _trajectory_source(denoiser, len(report.timestep_weights))


def _trajectory_source(denoiser: nn.Module, num_steps: int) -> str:
    """The calibration source line: which sampler walked the dense model's trajectories."""
    return f"generated ({num_steps}-step {adapter_for_module(denoiser)[0].sampler_label} trajectories of the dense model)"


def _scores_by_reconstruction(layers, stats, params, seed):
    raise ValueError("criterion 'obs' prunes by reconstruction (Criterion.reconstruct), not from scores")


register_criterion(Criterion(
    "obs", _scores_by_reconstruction, granularities=OBS_GRANULARITIES,
    reconstruct=engine_reconstruct, default_schedule="log-decrease",
    # 4 trajectories x 25 steps: the X^T X products dominate the cost (about 350 G
    # multiply-adds on the default model), linear in the number of trajectories
    default_calibration_batches=1, default_calibration_batch_size=4,
    defaults={"num_groups": DEFAULT_NUM_GROUPS, "blocksize": DEFAULT_BLOCKSIZE, "percdamp": DEFAULT_PERCDAMP},
    checks={"num_groups": _check_positive_int("num_groups"), "blocksize": _check_positive_int("blocksize"),
            "percdamp": _check_percdamp},
    description="OBS-Diff: timestep-aware Hessian (log-decrease), SparseGPT OBS with weight compensation",
))
