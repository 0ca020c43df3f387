"""Sweeps: prune and evaluate a list of specs through the results store (``core.store.ResultStore``).

Each finished row is stored under ``key_for(pipeline_hash(dense pipeline), {"sweep": 1, **eval_settings},
spec)`` before the next spec starts, so a stored row returns instantly (no pruning, no sampling)
and a sweep killed midway resumes where it stopped.
"""
from __future__ import annotations

import json
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
    """
    from .evaluate import evaluate, pipeline_hash
    from .store import ResultStore, key_for

    specs = list(specs)
    for index, spec in enumerate(specs):
        if not isinstance(spec, PruneSpec):
            raise ValueError(f"specs[{index}] must be a PruneSpec, got {type(spec).__name__}")
    if not isinstance(eval_settings, dict):
        raise ValueError(f"eval_settings must be a dict of evaluate() arguments, got {type(eval_settings).__name__}")
    reserved = sorted({"pipeline", "dense_pipeline", "store", "prune_spec", "progress"} & set(eval_settings))
    if reserved:
        raise ValueError(f"eval_settings must not contain {reserved}: sweep sets them")
    recovery = _check_recovery(recovery)
    store = store if store is not None else ResultStore()
    dense_hash = pipeline_hash(pipeline)
    settings_key = {"sweep": SWEEP_ROW_VERSION, **eval_settings}
    if recovery:
        settings_key["recovery"] = recovery
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
        span = (index / len(specs), (index + 1) / len(specs))

        def stage(start, end, label=spec.label):
            if progress is None:
                return None
            return lambda f, m: progress(span[0] + (span[1] - span[0]) * (start + (end - start) * f), f"{label}: {m}")

        tuned_steps, tuned_seconds = 0, None
        if recovery:
            result = prune(pipeline, spec, progress=stage(0.0, 0.3))
            if images is None:
                from .recovery import recovery_images

                images, _ = recovery_images(pipeline, recovery["data"], seed=spec.seed)
            from .finetune import finetune

            tuned = finetune(result, recovery["steps"], lr=recovery["lr"], batch_size=recovery["batch_size"],
                             distill=recovery["distill"], teacher=pipeline if recovery["distill"] else None,
                             images=images, seed=spec.seed, progress=stage(0.3, 0.6))
            evaluated, tuned_steps, tuned_seconds = tuned.pipeline, recovery["steps"], tuned.wall_time_s
        else:
            result = prune(pipeline, spec, progress=stage(0.0, 0.5))
            evaluated = result.pipeline
        metrics = evaluate(evaluated, dense_pipeline=pipeline, prune_spec=spec.to_dict(),
                           progress=stage(0.6 if recovery else 0.5, 1.0), **eval_settings)
        row = {**spec.to_dict(), "label": spec.label, "spec_json": spec.to_json()}
        row.update({f"prune_{name}": result.report.totals.get(name) for name in _TOTALS})
        row.update({name: value for name, value in metrics.items() if name not in ("key", "cached")})
        row["dense_model_hash"] = dense_hash
        row["finetune_steps"], row["finetune_wall_time_s"] = tuned_steps, tuned_seconds
        if recovery:
            row["recovery_json"] = json.dumps(recovery, sort_keys=True)
        store.put(key, row)
        rows.append({**row, "key": key, "cached": False})
    return pd.DataFrame(rows)


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
