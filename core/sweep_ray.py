"""``core.sweep.sweep(..., executor="ray")``: the rows missing from the store as Ray tasks.

Each task loads the dense model itself (a ``core.sweep.ModelSource``, on the row's device) or
takes the driver's pipeline from Ray's object store, runs the row function it is given
(``core.sweep.sweep_row``) and returns the row; the driver (one writer) stores each row as it
arrives (``ray.wait``). A task asks for one GPU when its row runs on ``cuda``, else
``cpus_per_row`` CPUs. Imported only by a Ray sweep: ``import core`` and the app never load Ray.
"""
from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import ray

from .spec import PruneSpec

CONNECT_TIMEOUT_S = 5.0  # an address nobody answers fails after this long (Ray itself retries for minutes)
_LOADED: dict = {}  # in a worker process: the dense model it loaded last, reused by its next rows


def check_ray_specs(specs: list[PruneSpec]) -> None:
    """Devices a Ray task can honour: ``cpu``, or ``cuda``/``cuda:0`` (the one GPU Ray gives the task)."""
    for index, spec in enumerate(specs):
        if spec.device not in ("cpu", "cuda", "cuda:0"):
            raise ValueError(f"specs[{index}].device must be 'cpu', 'cuda' or 'cuda:0' with executor='ray' (a task "
                             f"asks for its resources by it and sees only the GPU Ray gives it), got {spec.device!r}")


@dataclass(frozen=True)
class RowSettings:
    """What every row of one sweep shares, sent with each task."""

    row_function: Callable  # core.sweep.sweep_row (pipeline, spec, eval_settings, recovery, images, dense hash)
    eval_settings: dict
    recovery: dict | None  # complete (core.sweep._check_recovery) or None
    dense_hash: str  # pipeline_hash of the driver's dense pipeline: a task's loaded model must match it


@dataclass(frozen=True)
class _Checkpoint:
    """What a task loads as the dense model: ``load_pipeline(source, device=<row's device>, dtype=dtype)``."""

    source: str | None
    dtype: str


def sweep_on_ray(pipeline, specs: list[PruneSpec], keys: list[str], row: RowSettings, store, *,
                 progress: Callable[[float, str], None] | None = None, address: str | None = None,
                 cpus_per_row: float = 1, model_source: tuple[str | None, str] | None = None) -> list[dict]:
    """One row per spec (in ``specs`` order): stored rows from ``store`` (under ``keys``), the others
    computed by Ray tasks (``row.row_function``) and stored by this process as they finish; a failed
    row carries ``error`` and is not stored. ``model_source``: ``(source, dtype)`` each task loads,
    or None (``pipeline`` through the object store)."""
    rows: list = [None] * len(specs)
    for index, key in enumerate(keys):
        stored = store.get(key)
        if stored is not None:
            rows[index] = {**stored, "key": key, "cached": True}
    missing = [index for index, found in enumerate(rows) if found is None]
    counts = dict(stored=len(specs) - len(missing), done=0, running=0, failed=0)

    def tell(note: str = "") -> None:
        if progress is not None:
            finished = counts["stored"] + counts["done"] + counts["failed"]
            progress(finished / max(1, len(specs)),
                     f"{counts['stored'] + counts['done']}/{len(specs)} rows done ({counts['stored']} from the store), "
                     f"{counts['running']} running, {counts['failed']} failed{note}")

    if not missing:  # every row is stored: no cluster is needed
        tell()
        return rows
    owned = _connect(address)
    pending: dict = {}
    try:
        _check_resources([specs[index] for index in missing], missing, cpus_per_row)
        model = ray.put(pipeline) if model_source is None else _portable(*model_source)
        images = None
        if row.recovery:  # one recovery set for every row, as the serial sweep loads it
            from .recovery import recovery_images

            images = ray.put(recovery_images(pipeline, row.recovery["data"], seed=specs[missing[0]].seed)[0])
        for index in missing:
            needs = {"num_gpus": 1} if specs[index].device.startswith("cuda") else {"num_cpus": cpus_per_row}
            reference = _submit(needs, row, model, specs[index], images)
            pending[reference] = index
        counts["running"] = len(pending)
        tell()
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(ready[0])
            spec, counts["running"] = specs[index], len(pending)
            try:
                outcome = ray.get(ready[0])
            except ray.exceptions.RayError as error:  # the worker died (memory, a lost node) or the task was cancelled
                outcome = {"error": f"{type(error).__name__}: {_first_line(error)}"}
            if "error" in outcome:
                counts["failed"] += 1
                rows[index] = {**spec.to_dict(), "label": spec.label, "spec_json": spec.to_json(), "key": keys[index],
                               "cached": False, "error": outcome["error"]}
                tell(f"; {spec.label} failed: {outcome['error']}")
                continue
            store.put(keys[index], outcome["row"])
            rows[index] = {**outcome["row"], "key": keys[index], "cached": False}
            counts["done"] += 1
            tell()
    finally:
        for reference in pending:  # interrupted (Ctrl-C, a progress callback that cancels): stop what is left
            ray.cancel(reference, force=True)
        if owned:
            ray.shutdown()
    return rows


def run_row(row: RowSettings, model, spec: PruneSpec, images) -> dict:
    """The task's body: ``{"row": row.row_function(...)}``, or ``{"error": "<type>: <message>"}``."""
    try:
        pipeline = _dense_model(model, spec.device, row.dense_hash)
        return {"row": row.row_function(pipeline, spec, row.eval_settings, row.recovery, recovery_images=images,
                                        dense_hash=row.dense_hash)}
    except Exception as error:  # reported as the row's error; the sweep goes on
        return {"error": f"{type(error).__name__}: {_first_line(error)}"}


_row_task = ray.remote(run_row)


def _submit(needs: dict, *arguments):
    """Queue one row's task with the resources it asks for."""
    return _row_task.options(**needs).remote(*arguments)


def _dense_model(model, device: str, dense_hash: str):
    """The dense pipeline of a task: the object store's copy, else loaded from ``model`` (once per
    worker process) and checked against the driver's hash."""
    if not isinstance(model, _Checkpoint):
        return model
    from .evaluate import pipeline_hash
    from .pipeline import load_pipeline

    wanted = (model.source, model.dtype, device)
    if wanted not in _LOADED:
        _LOADED.clear()  # one dense model per worker process
        pipeline = load_pipeline(model.source, device=device, dtype=model.dtype)
        _LOADED[wanted] = (pipeline, pipeline_hash(pipeline))
    pipeline, loaded_hash = _LOADED[wanted]
    if loaded_hash != dense_hash:
        raise ValueError(f"the model loaded from {model.source or 'the default model'!r} on {socket.gethostname()} is "
                         f"not the driver's (hash {loaded_hash[:12]} != {dense_hash[:12]}); every node must hold "
                         "the same checkpoint")
    return pipeline


def _portable(source: str | None, dtype: str) -> _Checkpoint:
    """A local directory as an absolute path (workers do not share the driver's working directory)."""
    from .default_model import EMBEDDED_MODELS

    if source is None or source in EMBEDDED_MODELS or not Path(source).expanduser().is_dir():
        return _Checkpoint(source, dtype)
    return _Checkpoint(str(Path(source).expanduser().resolve()), dtype)


def check_address(address: str | None) -> None:
    """Refuse, within ``CONNECT_TIMEOUT_S``, an address where nothing listens (``ray.init`` would
    retry for minutes); None (a local instance) and ``auto`` pass."""
    if address is None or address == "auto":
        return
    host, port = _host_port(address)
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        reason = getattr(error, "strerror", None) or type(error).__name__
        raise ValueError(f"ray_address {address!r}: nothing answers at {host}:{port} within {CONNECT_TIMEOUT_S:g} s "
                         f"({reason}); start a head with 'ray start --head' and pass its <host>:6379") from None


def _connect(address: str | None) -> bool:
    """Connect to the cluster at ``address`` (None: this process's Ray, else a new local instance);
    True when this sweep started the connection (and shuts it down)."""
    check_address(address)
    if ray.is_initialized():
        if address is not None:
            raise ValueError(f"ray_address {address!r}: this process is already connected to a Ray instance; "
                             "pass ray_address=None to use it")
        return False
    quiet = dict(log_to_driver=False, logging_level=logging.ERROR)
    if address is None:
        ray.init(include_dashboard=False, **quiet)  # a local instance with every CPU and GPU Ray finds here
        return True
    try:
        ray.init(address=address, **quiet)
    except ConnectionError as error:
        raise ValueError(f"ray_address {address!r}: {_first_line(error)} (a cluster with token authentication also "
                         "needs RAY_AUTH_MODE=token and its token here)") from None
    return True


def _host_port(address: str) -> tuple[str, int]:
    """``host:port`` (a Ray head's GCS address) as (host, port)."""
    host, _, port = address.strip().rpartition(":")
    host = host.strip("[]")  # an IPv6 literal
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"ray_address must be '<host>:<port>' (a Ray head, port 6379 by default) or 'auto', "
                         f"got {address!r}")
    return host, int(port)


def _check_resources(specs: list[PruneSpec], indices: list[int], cpus_per_row: float) -> None:
    """Refuse, before any task is queued, a row the cluster can never run (Ray would queue it forever)."""
    resources = ray.cluster_resources()
    for spec, index in zip(specs, indices):
        if spec.device.startswith("cuda") and resources.get("GPU", 0) < 1:
            raise ValueError(f"specs[{index}].device is {spec.device!r} but the Ray cluster has no GPU "
                             f"({resources.get('CPU', 0):g} CPUs); allowed there: 'cpu'")
    if any(not spec.device.startswith("cuda") for spec in specs):
        largest = max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")), default=0)
        if cpus_per_row > largest:
            raise ValueError(f"cpus_per_row {cpus_per_row:g} is more than the largest Ray node has "
                             f"({largest:g} CPUs)")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return " ".join(text.splitlines()[0].split()) if text else type(error).__name__
