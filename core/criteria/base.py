"""The ``Criterion`` record every criterion registers (``core.registry.CRITERIA``).

Torch-Pruning's importance classes are the model: a criterion is a small record whose ``score``
turns layers (and calibration statistics) into per-weight scores; its variants are parameters.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..registry import CRITERIA

ALL_GRANULARITIES = ("unstructured", "N:M", "channel", "head", "ffn", "block")


@dataclass(frozen=True)
class Criterion:
    """A registered criterion.

    ``score(layers, stats, params, seed) -> {name: per-weight scores}``; ``loss`` names the
    calibration loss (None: no calibration, no schedule); ``default_schedule`` and the default
    calibration size are the paper's recipe scaled to run on a CPU (presets hold the papers' own).
    """

    name: str
    score: Callable
    granularities: tuple = ALL_GRANULARITIES
    loss: str | None = None
    default_schedule: str | None = None
    default_schedule_params: dict = field(default_factory=dict)
    zero_grad_per_batch: bool = False
    default_calibration_batches: int = 0
    default_calibration_batch_size: int = 0
    defaults: dict = field(default_factory=dict)  # criterion_params and their defaults
    checks: dict = field(default_factory=dict)  # param name -> validator
    description: str = ""
    # (denoiser, pipeline, spec, progress) -> (scores, stats, calibration_source): criteria that run
    # their own calibration and may rewrite weights (obs, gradflow; core/criteria/obs/, core/gradflow.py)
    reconstruct: Callable | None = None
    check_all: Callable | None = None  # validates the merged params together (e.g. not every weight 0)

    @property
    def needs_calibration(self) -> bool:
        return self.loss is not None or self.reconstruct is not None

    def check_params(self, params: dict) -> dict:
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise ValueError(f"criterion_params for criterion {self.name!r} accepts {sorted(self.defaults)}, got unknown {unknown}")
        merged = {**self.defaults, **params}
        for key, check in self.checks.items():
            check(merged[key])
        if self.check_all is not None:
            self.check_all(merged)
        return merged


def register_criterion(criterion: Criterion) -> Criterion:
    CRITERIA[criterion.name] = criterion
    return criterion
