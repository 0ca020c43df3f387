"""Sweeps: prune and evaluate a list of specs through the results store (``core.store.ResultStore``).

Each row is one ``core.run.run`` (:func:`sweep_row`: the spec's copy of the dense model, its
recovery when asked, the evaluation of the delivered model), so a sweep measures what the app's
*Prune* tab and ``diffprune run`` measure.

Each finished row is stored under ``key_for(pipeline_hash(dense pipeline), {"sweep": 1, **eval_settings},
spec)`` before the next spec starts, so a stored row returns instantly (no pruning, no sampling)
and a sweep killed midway resumes where it stopped.

``executor="ray"`` runs the missing rows as Ray tasks on a local Ray instance or a cluster
(``core.sweep_ray``, imported only then); the driver still writes every row to the store.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Iterable

import pandas as pd

from .engine import prune
from .spec import PruneSpec

SWEEP_ROW_VERSION = 1
# Prune-report totals copied into each sweep row (prefixed "prune_").
_TOTALS = ("sparsity", "structural_ratio", "params_before", "params_after", "params_ratio", "macs_before",
           "macs_after", "macs_ratio", "macs_removed_fraction", "schedule_stopped_at", "calibration_source",
           "wall_time_s", "plain_diffusers_loadable")


def sweep(
    pipeline,
    specs: Iterable[PruneSpec],
    eval_settings: dict,
    store=None,
    progress: Callable[[float, str], None] | None = None,
    recovery: dict | None = None,
    *,
    executor: str | RaySettings = "serial",
    ray_address: str | None = None,
) -> pd.DataFrame:
    """Prune ``pipeline`` with every spec, evaluate each result, return one row per spec.

    ``eval_settings`` are keyword arguments of ``core.evaluate.evaluate`` (``num_samples``,
    ``num_inference_steps``, ``seed``, ``metrics``, ``reference``, ...); the dense pipeline is
    passed as ``dense_pipeline`` so latency rows carry a measured speed-up. ``store`` is a
    ``core.store.ResultStore`` (None: a store in the default results directory).
    Rows have the spec's fields, ``prune_*`` totals, the evaluation's metrics, ``key`` and
    ``cached`` (True when the row came from the store).

    ``recovery``: the same recovery fine-tuning applied to every row before it is evaluated (the
    fair comparison every paper makes): ``core.finetune.finetune`` keyword arguments ``steps``,
    ``lr``, ``batch_size``, ``distill`` (True: from the dense model) and ``data``
    (``core.recovery.recovery_images`` source). It is part of each row's key; rows carry
    ``finetune_steps`` and ``finetune_wall_time_s``.

    ``executor``: ``"serial"`` (the default) runs the rows one after another in this process;
    ``"ray"`` (or a :class:`RaySettings`) runs every row missing from the store as a Ray task
    (``core.sweep_ray``) that asks for one GPU when its spec's device is ``cuda``, else
    ``RaySettings.cpus_per_row`` CPUs, while this process answers stored rows and writes each
    finished row to the store as it arrives. A row that fails there is reported (its ``error``
    column, and through ``progress``) and not stored; the other rows go on. ``ray_address``: a
    running cluster's ``<head>:6379`` (or ``auto``: the cluster started on this machine); None
    uses the Ray instance this process is connected to, else starts a local one for this sweep.
    """
    from .evaluate import pipeline_hash
    from .store import ResultStore, key_for

    specs = list(specs)
    for index, spec in enumerate(specs):
        if not isinstance(spec, PruneSpec):
            raise ValueError(f"specs[{index}] must be a PruneSpec, got {type(spec).__name__}")
    _evaluation(eval_settings, recovery=False)  # the settings, checked before any work
    recovery = _check_recovery(recovery)
    ray_settings = _check_executor(executor, ray_address)
    on_ray = ray_executor() if ray_settings is not None else None
    if on_ray is not None:  # before any work too: the rows' devices and the cluster's address
        on_ray.check_ray_specs(specs)
        on_ray.check_address(ray_address)
    store = store if store is not None else ResultStore()
    dense_hash = pipeline_hash(pipeline)
    settings_key = {"sweep": SWEEP_ROW_VERSION, **eval_settings}
    if recovery:
        settings_key["recovery"] = recovery
    if on_ray is not None:
        keys = [key_for(dense_hash, settings_key, spec.to_dict()) for spec in specs]
        source = ray_settings.model_source
        shared = on_ray.RowSettings(sweep_row, eval_settings, recovery, dense_hash)
        rows = on_ray.sweep_on_ray(pipeline, specs, keys, shared, store, progress=progress, address=ray_address,
                                   cpus_per_row=ray_settings.cpus_per_row,
                                   model_source=None if source is None else (source.source, source.dtype))
        return pd.DataFrame(rows)
    images = None
    rows = []
    for index, spec in enumerate(specs):
        key = key_for(dense_hash, settings_key, spec.to_dict())
        stored = store.get(key)
        if stored is not None:
            rows.append({**stored, "key": key, "cached": True})
            if progress is not None:
                progress((index + 1) / len(specs), f"{spec.label}: stored")
            continue
        if recovery and images is None:  # one recovery set for every row
            from .recovery import recovery_images

            images, _ = recovery_images(pipeline, recovery["data"], seed=spec.seed)
        span = (index / len(specs), (index + 1) / len(specs))
        row_progress = None if progress is None else (
            lambda f, m, label=spec.label, span=span: progress(span[0] + (span[1] - span[0]) * f, f"{label}: {m}"))
        row = sweep_row(pipeline, spec, eval_settings, recovery, recovery_images=images, dense_hash=dense_hash,
                        progress=row_progress)
        store.put(key, row)
        rows.append({**row, "key": key, "cached": False})
    return pd.DataFrame(rows)


def sweep_row(pipeline, spec: PruneSpec, eval_settings: dict, recovery: dict | None = None, *,
              recovery_images=None, dense_hash: str | None = None,
              progress: Callable[[float, str], None] | None = None) -> dict:
    """One sweep row (a plain dict, without ``key`` and ``cached``): ``spec`` applied to a copy of
    the dense ``pipeline`` and measured through ``core.run.run``.

    ``eval_settings`` and ``recovery`` are :func:`sweep`'s (``recovery`` complete, as
    ``_check_recovery`` returns it, or None); ``recovery_images`` the recovery's images when the
    caller has loaded them (else read from ``recovery["data"]`` with the spec's seed);
    ``dense_hash`` the dense pipeline's ``pipeline_hash`` when known. Every input but the pipeline
    and ``progress`` is picklable."""
    from .evaluate import pipeline_hash
    from .run import RecoverySettings, TimingSettings, run

    recovery = _check_recovery(recovery)
    evaluation = _evaluation(eval_settings, recovery=bool(recovery))
    if recovery and recovery_images is None:
        from .recovery import recovery_images as load_recovery_images

        recovery_images, _ = load_recovery_images(pipeline, recovery["data"], seed=spec.seed)
    raised = []  # an exception of the caller's progress cancels the row (run would go on without its recovery)

    def report(start: float, end: float):
        if progress is None:
            return None

        def tell(fraction: float, message: str) -> None:
            try:
                progress(start + (end - start) * fraction, message)
            except BaseException as error:
                raised.append(error)
                raise
        return tell

    share = 0.3 if recovery else 0.5
    # pruned through this module's ``prune`` and handed to run: the prune reports on its own share of the row
    pruned = prune(pipeline, spec, progress=report(0.0, share))
    settings = RecoverySettings()
    if recovery:
        settings = RecoverySettings(steps=recovery["steps"], lr=recovery["lr"], batch_size=recovery["batch_size"],
                                    distill=recovery["distill"], data=recovery["data"])
    outcome = run(pipeline, spec, recovery=settings, evaluation=evaluation, timing=TimingSettings(enabled=False),
                  progress=report(share, 1.0), pruned=pruned,
                  recovery_data=(recovery_images, None, recovery["data"]) if recovery else None)
    if raised:
        raise raised[0]
    for error in outcome.errors.values():
        raise error
    stage = evaluation.stages[0]
    metrics = outcome.evaluations[stage]
    row = {**spec.to_dict(), "label": spec.label, "spec_json": spec.to_json()}
    row.update({f"prune_{name}": pruned.report.totals.get(name) for name in _TOTALS})
    row.update({name: value for name, value in metrics.items() if name not in ("key", "cached")})
    row["dense_model_hash"] = dense_hash if dense_hash is not None else pipeline_hash(pipeline)
    row["finetune_steps"] = recovery["steps"] if recovery else 0
    row["finetune_wall_time_s"] = outcome.recovered.wall_time_s if recovery else None
    if recovery:
        row["recovery_json"] = json.dumps(recovery, sort_keys=True)
    return row


@dataclass(frozen=True)
class ModelSource:
    """What a Ray task of ``sweep(..., executor="ray")`` loads as the dense model:
    ``core.pipeline.load_pipeline(source, device=<the row's device>, dtype=dtype)``."""

    source: str | None = None  # a local diffusers directory, a hub id, an embedded model's name; None: the default
    dtype: str = "auto"  # load_pipeline's dtype: "auto" keeps the checkpoint's, else float32 / float16 / bfloat16

    def __post_init__(self):
        if self.source is not None and (not isinstance(self.source, str) or not self.source.strip()):
            raise ValueError(f"model_source source must be None (the default model), a directory or a hub id, "
                             f"got {self.source!r}")
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise ValueError(f"model_source dtype must be 'auto', 'float32', 'float16' or 'bfloat16', "
                             f"got {self.dtype!r}")


@dataclass(frozen=True)
class RaySettings:
    """How ``sweep(..., executor=RaySettings(...))`` runs its rows on Ray (``executor="ray"``: the defaults)."""

    cpus_per_row: float = 1  # CPUs the task of a CPU row asks for (a cuda row asks for one GPU)
    model_source: ModelSource | None = None  # what each task loads; None: the pipeline, once through Ray's object store

    def __post_init__(self):
        if isinstance(self.cpus_per_row, bool) or not isinstance(self.cpus_per_row, (int, float)) \
                or not self.cpus_per_row > 0:
            raise ValueError(f"cpus_per_row must be a number > 0, got {self.cpus_per_row!r}")
        if self.model_source is not None and not isinstance(self.model_source, ModelSource):
            raise ValueError(f"model_source must be a core.sweep.ModelSource or None, "
                             f"got {type(self.model_source).__name__}")


EXECUTORS = ("serial", "ray")


def ray_executor():
    """The module ``core.sweep_ray`` (imported here only: ``import core`` loads no Ray)."""
    try:
        from . import sweep_ray
    except ModuleNotFoundError as error:
        if error.name != "ray":
            raise
        raise ValueError("executor 'ray' needs the ray package: pip install 'diffprune-studio[cluster]' "
                         "(allowed without it: executor 'serial')") from None
    return sweep_ray


def _check_executor(executor, ray_address) -> RaySettings | None:
    """The executor's Ray settings (None: serial), checked before any work."""
    if not isinstance(executor, RaySettings) and executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {list(EXECUTORS)} or a core.sweep.RaySettings, got {executor!r}")
    if ray_address is not None and (not isinstance(ray_address, str) or not ray_address.strip()):
        raise ValueError(f"ray_address must be None (a local Ray instance) or '<host>:<port>', got {ray_address!r}")
    if executor == "serial":
        if ray_address is not None:
            raise ValueError("ray_address applies to executor 'ray' only; executor is 'serial'")
        return None
    return executor if isinstance(executor, RaySettings) else RaySettings()


def _evaluation(eval_settings: dict, recovery: bool):
    """The sweep's ``core.evaluate`` arguments as the run's settings: exactly these metrics (no
    MACs added), no grids, only the delivered stage (the recovered model, else the one-shot one)."""
    from .evaluate import METRICS
    from .run import EVALUATE_OPTIONS, EvaluationSettings

    if not isinstance(eval_settings, dict):
        raise ValueError(f"eval_settings must be a dict of evaluate() arguments, got {type(eval_settings).__name__}")
    reserved = sorted({"pipeline", "dense_pipeline", "store", "prune_spec", "progress", "images"} & set(eval_settings))
    if reserved:
        raise ValueError(f"eval_settings must not contain {reserved}: sweep sets them")
    named = ("num_samples", "num_inference_steps", "seed", "metrics", "reference", "scheduler")
    unknown = sorted(set(eval_settings) - set(named) - set(EVALUATE_OPTIONS))
    if unknown or "num_samples" not in eval_settings:
        raise ValueError(f"eval_settings must hold num_samples and evaluate() arguments from "
                         f"{list(named[1:] + EVALUATE_OPTIONS)}, got {sorted(eval_settings)}")
    return EvaluationSettings(  # the defaults are core.evaluate's
        num_samples=eval_settings["num_samples"], steps=eval_settings.get("num_inference_steps", 50),
        seed=eval_settings.get("seed", 0), metrics=_names(eval_settings.get("metrics", METRICS)),
        reference=eval_settings.get("reference", "fashion-mnist-test"), count_macs=False, grid_images=0,
        scheduler=eval_settings.get("scheduler", "ddim"),
        stages=("recovered",) if recovery else ("one-shot",),
        options={name: value for name, value in eval_settings.items() if name in EVALUATE_OPTIONS})


def _names(metrics):
    """A metric name or a list of them as a tuple (anything else is left for the settings to refuse)."""
    if isinstance(metrics, str):
        return (metrics,)
    return tuple(dict.fromkeys(metrics)) if isinstance(metrics, (list, tuple, set, frozenset)) else metrics


def _check_recovery(recovery: dict | None) -> dict | None:
    """The sweep's recovery settings, complete and checked (None or 0 steps: no recovery)."""
    if recovery is None:
        return None
    if not isinstance(recovery, dict):
        raise ValueError(f"recovery must be a dict of finetune settings or None, got {type(recovery).__name__}")
    from .recovery import RECOVERY_DEFAULTS, check_recovery

    unknown = sorted(set(recovery) - {"steps", "lr", "batch_size", "distill", "data"})
    if unknown:
        raise ValueError(f"recovery has unknown settings {unknown}; allowed: steps, lr, batch_size, distill, data")
    full = {**RECOVERY_DEFAULTS, "distill": False, "data": "fashion-mnist-train", **recovery}
    check_recovery(full["steps"], full["lr"], full["batch_size"], full["data"])
    if not isinstance(full["distill"], bool):
        raise ValueError(f"recovery distill must be True or False, got {full['distill']!r}")
    return full if full["steps"] > 0 else None
