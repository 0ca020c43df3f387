"""Timestep schedules: which timesteps a criterion calibrates on, and with what weight.

A schedule is a plain function ``(num_train_timesteps, **params) -> list[(t, weight)]``
(``docs/methods.md``, "Timestep schedules"). Criteria accumulate their statistic as
``sum_t weight_t * stat_t``: the weight multiplies each timestep's loss before backward.

``threshold`` (Diff-Pruning) is adaptive: it depends on the model and data, so its function
also takes ``loss_at(t) -> float``, a callback that evaluates (and accumulates the gradient of)
the calibration loss at ``t``; the visited timesteps are returned and reported.

The registry ``SCHEDULES`` maps a name to a :class:`Schedule` (function, defaults, whether
it is adaptive); the UI and CLI read their choice lists from it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable
from .registry import SCHEDULES

TimestepWeights = list  # list[tuple[int, float]]


def _check_positive_int(name: str, value, schedule: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"schedule_params.{name} of schedule {schedule!r} must be a positive integer, got {value!r}")
    return value


def _check_number(name: str, value, schedule: str, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < minimum:
        raise ValueError(f"schedule_params.{name} of schedule {schedule!r} must be a number >= {minimum}, got {value!r}")
    return float(value)


def uniform(num_train_timesteps: int, num_timesteps: int = 10) -> TimestepWeights:
    """``num_timesteps`` evenly spaced t over [0, T), weight 1 (baseline); at most T of them."""
    _check_positive_int("num_timesteps", num_timesteps, "uniform")
    if num_timesteps > num_train_timesteps:  # refused, not clamped: T distinct timesteps exist
        raise ValueError(f"schedule_params.num_timesteps of schedule 'uniform' must be at most {num_train_timesteps} "
                         f"(the model's training timesteps), got {num_timesteps}")
    return [((index * num_train_timesteps) // num_timesteps, 1.0) for index in range(num_timesteps)]


def interval(num_train_timesteps: int, interval_weights=(1.0, 1.0, 1.0, 1.0)) -> TimestepWeights:
    """NiCI-Pruning's interval walk: from t=0 step +2 below T/4, +4 below T/2, +8 below 3T/4, +16 above.

    The stride is chosen by the current t, so for T=1000 the walk visits 235 timesteps. The public
    code gives every visited t weight 1 (default ``interval_weights``); the paper's
    "timestep-weighted scheme" is exposed as one weight per quarter.
    """
    if not isinstance(interval_weights, (list, tuple)) or len(interval_weights) != 4:
        raise ValueError(f"schedule_params.interval_weights of schedule 'interval' must be a list of 4 weights >= 0, got {interval_weights!r}")
    weights = [_check_number("interval_weights", w, "interval") for w in interval_weights]
    if not any(w > 0 for w in weights):
        raise ValueError("schedule_params.interval_weights of schedule 'interval' needs at least one positive weight "
                         "(all zero: every timestep would be ignored)")
    strides = (2, 4, 8, 16)
    result, t = [], 0
    while t < num_train_timesteps:
        quarter = min(3, (4 * t) // num_train_timesteps)
        result.append((t, weights[quarter]))
        t += strides[quarter]
    return result


def _sampling_timesteps(num_train_timesteps: int, num_steps: int) -> list[int]:
    """Timesteps of K sampling steps, noisiest first (k=0 -> T-1, k=K-1 -> 0), "linspace" spacing."""
    if num_steps == 1:
        return [num_train_timesteps - 1]
    return [round((num_train_timesteps - 1) * (num_steps - 1 - k) / (num_steps - 1)) for k in range(num_steps)]


def _ramp(num_train_timesteps: int, num_steps: int, w_max: float, w_min: float, shape: str, decrease: bool, name: str):
    _check_positive_int("num_steps", num_steps, name)
    w_max = _check_number("w_max", w_max, name)
    w_min = _check_number("w_min", w_min, name)
    if w_max == 0 and w_min == 0:
        raise ValueError(f"schedule_params.w_max and w_min of schedule {name!r} are both 0: every timestep would get "
                         "weight 0; allowed: at least one of them > 0")
    if num_steps > num_train_timesteps:
        raise ValueError(f"schedule_params.num_steps of schedule {name!r} must be at most {num_train_timesteps}, got {num_steps}")
    if num_steps == 1:
        ramp = [1.0]
    elif shape == "log":
        # OBS-Diff: w_k = w_min + (w_max - w_min) * ln(1 + k) / ln(K)
        ramp = [math.log(1 + k) / math.log(num_steps) for k in range(num_steps)]
    else:
        ramp = [k / (num_steps - 1) for k in range(num_steps)]
    weights = [w_min + (w_max - w_min) * r for r in ramp]
    if decrease:  # reversed: the first (noisiest) sampling step gets w_max
        weights = weights[::-1]
    return list(zip(_sampling_timesteps(num_train_timesteps, num_steps), weights))


def log_decrease(num_train_timesteps: int, num_steps: int = 25, w_max: float = 1.2, w_min: float = 0.8):
    """OBS-Diff: logarithmic weights over K sampling steps, w_max at the noisiest step, w_min at the last."""
    return _ramp(num_train_timesteps, num_steps, w_max, w_min, "log", True, "log-decrease")


def linear_decrease(num_train_timesteps: int, num_steps: int = 25, w_max: float = 1.2, w_min: float = 0.8):
    """OBS-Diff ablation: linear ramp, w_max at the noisiest step, w_min at the last."""
    return _ramp(num_train_timesteps, num_steps, w_max, w_min, "linear", True, "linear-decrease")


def log_increase(num_train_timesteps: int, num_steps: int = 25, w_max: float = 1.2, w_min: float = 0.8):
    """OBS-Diff ablation: the log ramp without reversal (w_min at the noisiest step)."""
    return _ramp(num_train_timesteps, num_steps, w_max, w_min, "log", False, "log-increase")


def linear_increase(num_train_timesteps: int, num_steps: int = 25, w_max: float = 1.2, w_min: float = 0.8):
    """OBS-Diff ablation: linear ramp without reversal (w_min at the noisiest step)."""
    return _ramp(num_train_timesteps, num_steps, w_max, w_min, "linear", False, "linear-increase")


def custom(num_train_timesteps: int, timesteps=()) -> TimestepWeights:
    """A user-given list of (t, weight): integer t in [0, T), weight >= 0, at least one positive."""
    return validate_custom(timesteps, num_train_timesteps)


def validate_custom(timesteps, num_train_timesteps: int | None = None) -> TimestepWeights:
    """Check a custom schedule; ``num_train_timesteps`` None checks only the form (t >= 0)."""
    allowed = f"[0, {num_train_timesteps})" if num_train_timesteps else "[0, T)"
    if not isinstance(timesteps, (list, tuple)) or len(timesteps) == 0:
        raise ValueError("schedule_params.timesteps of schedule 'custom' must be a non-empty list of (t, weight) pairs")
    result = []
    for pair in timesteps:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError(f"schedule_params.timesteps of schedule 'custom': each entry must be a (t, weight) pair, got {pair!r}")
        t, weight = pair
        if isinstance(t, bool) or not isinstance(t, int) or t < 0 or (num_train_timesteps and t >= num_train_timesteps):
            raise ValueError(f"schedule_params.timesteps of schedule 'custom': t must be an integer in {allowed}, got {t!r}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"schedule_params.timesteps of schedule 'custom': weight must be a number >= 0, got {weight!r}")
        result.append((t, float(weight)))
    if not any(weight > 0 for _, weight in result):
        raise ValueError("schedule_params.timesteps of schedule 'custom' needs at least one positive weight")
    return result


def threshold(num_train_timesteps: int, loss_at: Callable[[int], float], threshold: float = 0.05,
              max_timesteps: int | None = None) -> TimestepWeights:
    """Diff-Pruning's threshold walk: visit t = 0, 1, 2, ... (low noise first), keep L_max, stop at
    the first t with ``L_t < threshold * L_max``; every visited t (the stopping one included, as in
    the public code where ``loss.backward()`` precedes the check) has weight 1.

    ``threshold`` is 0.05 for pixel DDPMs and 0.1 for latent models (Diff-Pruning);
    ``max_timesteps`` caps the walk (None: T).
    """
    threshold_value = _check_number("threshold", threshold, "threshold")
    if not 0 < threshold_value < 1:
        raise ValueError(f"schedule_params.threshold of schedule 'threshold' must be in (0, 1), got {threshold!r}")
    limit = num_train_timesteps if max_timesteps is None else min(
        _check_positive_int("max_timesteps", max_timesteps, "threshold"), num_train_timesteps)
    visited, max_loss = [], 0.0
    for t in range(limit):
        loss = float(loss_at(t))
        visited.append((t, 1.0))
        max_loss = max(max_loss, loss)
        if loss < threshold_value * max_loss:
            break
    return visited


@dataclass(frozen=True)
class Schedule:
    """A registered schedule: ``function(num_train_timesteps, **params)``; ``adaptive`` schedules
    also take ``loss_at`` and are decided during calibration."""

    name: str
    function: Callable
    defaults: dict = field(default_factory=dict)
    adaptive: bool = False
    description: str = ""

    def resolve(self, num_train_timesteps: int, params: dict | None = None, loss_at=None) -> TimestepWeights:
        merged = {**self.defaults, **(params or {})}
        if self.adaptive:
            if loss_at is None:
                raise ValueError(f"schedule {self.name!r} is decided during calibration and needs loss_at")
            return self.function(num_train_timesteps, loss_at, **merged)
        return self.function(num_train_timesteps, **merged)


# SCHEDULES lives in core.registry (name -> entry; imports nothing of the engine)


def register_schedule(schedule: Schedule) -> Schedule:
    SCHEDULES[schedule.name] = schedule
    return schedule


for _schedule in (
    Schedule("uniform", uniform, {"num_timesteps": 10}, description="k evenly spaced t, weight 1"),
    Schedule("threshold", threshold, {"threshold": 0.05, "max_timesteps": None}, adaptive=True,
             description="Diff-Pruning: t = 0, 1, ... until L_t < thr * L_max"),
    Schedule("interval", interval, {"interval_weights": (1.0, 1.0, 1.0, 1.0)},
             description="NiCI-Pruning: strides 2/4/8/16 per quarter (235 t for T=1000)"),
    Schedule("log-decrease", log_decrease, {"num_steps": 25, "w_max": 1.2, "w_min": 0.8},
             description="OBS-Diff: log ramp, 1.2 at the noisiest step to 0.8 at the last"),
    Schedule("linear-decrease", linear_decrease, {"num_steps": 25, "w_max": 1.2, "w_min": 0.8},
             description="OBS-Diff ablation: linear ramp, decreasing"),
    Schedule("log-increase", log_increase, {"num_steps": 25, "w_max": 1.2, "w_min": 0.8},
             description="OBS-Diff ablation: log ramp, increasing"),
    Schedule("linear-increase", linear_increase, {"num_steps": 25, "w_max": 1.2, "w_min": 0.8},
             description="OBS-Diff ablation: linear ramp, increasing"),
    Schedule("custom", custom, {"timesteps": ()}, description="user-given (t, weight) pairs"),
):
    register_schedule(_schedule)


# T of the check without a model (``PruneSpec``): the usual DDPM / latent / flow-matching training length.
DEFAULT_TRAIN_TIMESTEPS = 1000


def check_schedule_params(name: str, params: dict, num_train_timesteps: int | None = None) -> None:
    """Validate schedule parameters: without a model (``PruneSpec``; a custom schedule's form only,
    the others against T = 1000), or, given the model's ``num_train_timesteps``, against that T (a
    custom t must lie in [0, T)), so a front end refuses them before any work starts."""
    if not isinstance(name, str) or name not in SCHEDULES:
        raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {name!r}"[:300])
    if not isinstance(params, dict):
        raise ValueError(f"schedule_params must be a dict, got {type(params).__name__}")
    schedule = SCHEDULES[name]
    unknown = sorted(set(params) - set(schedule.defaults))
    if unknown:
        raise ValueError(f"schedule_params for schedule {name!r} accepts {sorted(schedule.defaults)}, got unknown {unknown}")
    if name == "custom":
        validate_custom(params.get("timesteps", ()), num_train_timesteps)
    elif schedule.adaptive:
        threshold(1000, lambda t: 1.0, **{**schedule.defaults, **params, "max_timesteps": 1})
        if params.get("max_timesteps") is not None:
            _check_positive_int("max_timesteps", params["max_timesteps"], name)
    else:
        schedule.resolve(num_train_timesteps or DEFAULT_TRAIN_TIMESTEPS, params)
