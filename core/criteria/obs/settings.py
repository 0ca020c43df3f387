"""OBS-Diff's settings, frozen and checked on construction: the whole-network method's
hyper-parameters (:class:`ObsSettings`, OBS-Diff 2025) and the per-layer solver's numerical
options (:class:`SparseGPTSettings`, SparseGPT's ``fasterprune``, Frantar & Alistarh, ICML 2023)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from .hessians import DEFAULT_MAX_RETRIES, DEFAULT_PERCDAMP

DEFAULT_BLOCKSIZE = 128  # SparseGPT's column block
DEFAULT_NUM_GROUPS = 4  # OBS-Diff group-wise sequential pruning
DENOISER_GRANULARITIES = ("unstructured", "N:M", "head")  # what obs_prune_denoiser cuts itself


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _non_negative(name: str, value, kind=(int, float)) -> None:
    if isinstance(value, bool) or not isinstance(value, kind) or value < 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")


@dataclass(frozen=True)
class SparseGPTSettings:
    """The per-layer OBS solver's numerical options (:func:`~.reconstruction.sparsegpt_prune`)."""

    blocksize: int = DEFAULT_BLOCKSIZE  # columns per lazy-update block
    percdamp: float = DEFAULT_PERCDAMP  # lambda = percdamp * mean(diag H)
    max_retries: int = DEFAULT_MAX_RETRIES  # damping retries (x10 each)
    compensate: bool = True  # False: same mask choice, no weight update (ablation)

    def __post_init__(self):
        _positive_int("blocksize", self.blocksize)
        _non_negative("percdamp", self.percdamp)
        _non_negative("max_retries", self.max_retries, int)


@dataclass(frozen=True)
class ObsSettings:
    """OBS-Diff's hyper-parameters for a whole network (:func:`~.sequential.obs_prune_denoiser`;
    :func:`~.compensation.obs_channel_scores` reads the calibration and the damping)."""

    sparsity: float = 0.5  # unstructured: fraction of each layer's weights removed
    granularity: str = "unstructured"  # "unstructured", "N:M" or "head"
    n: int = 2  # N:M pattern
    m: int = 4
    head_ratio: float | None = None  # "head": fraction of each attention module's heads removed (default: sparsity)
    ffn_ratio: float | None = None  # "head": fraction of FFN neurons removed (default: head ratio)
    schedule: str = "log-decrease"  # timestep weights of the Hessian (OBS-Diff default)
    schedule_params: dict | None = None
    num_images: int = 4  # calibration trajectories sampled from the dense model (cost ~ linear in it)
    seed: int = 0  # initial noise of the calibration trajectories
    num_groups: int = DEFAULT_NUM_GROUPS  # sequential layer groups
    blocksize: int = DEFAULT_BLOCKSIZE  # the solver's column block
    percdamp: float = DEFAULT_PERCDAMP  # the solver's damping

    def __post_init__(self):
        if self.granularity not in DENOISER_GRANULARITIES:
            raise ValueError(f"obs granularity must be 'unstructured', 'N:M' or 'head' (channel: through core.prune), "
                             f"got {self.granularity!r}")
        if self.schedule_params is not None and not isinstance(self.schedule_params, Mapping):
            raise ValueError(f"schedule_params must be a dict or None, got {type(self.schedule_params).__name__}")
        _positive_int("num_images", self.num_images)
        _positive_int("num_groups", self.num_groups)
        SparseGPTSettings(self.blocksize, self.percdamp)  # the solver's own checks

    @property
    def solver(self) -> SparseGPTSettings:
        """The per-layer solver's options (unstructured and N:M)."""
        return SparseGPTSettings(blocksize=self.blocksize, percdamp=self.percdamp)
