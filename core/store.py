"""Results store: evaluation (and sweep) results persisted in one SQLite file.

A row is a JSON-serialisable dict, stored as JSON text beside a few indexed columns. Rows are
keyed by :func:`key_for` (a SHA-256 of the model hash, the full evaluation settings and the
prune spec), so a repeated request is answered from disk. Every write is one SQLite
transaction in WAL mode with ``synchronous=FULL``: a process killed mid-write loses at most
the row it was writing, never a committed one, and never leaves the file unreadable
(https://www.sqlite.org/atomiccommit.html, https://www.sqlite.org/wal.html).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sqlite3
import sys
import time
from contextlib import closing, contextmanager
from pathlib import Path

STORE_FILENAME = "results.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY,
    model_hash TEXT,
    created_at REAL NOT NULL,
    row TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS results_model_hash ON results (model_hash);
CREATE INDEX IF NOT EXISTS results_created_at ON results (created_at);
"""
# Config entries that name where or with which library version a model was saved, not what it computes.
_VOLATILE_CONFIG_KEYS = ("_name_or_path", "_diffusers_version", "_use_default_values")


def default_results_dir() -> Path:
    """``$DIFFPRUNE_RESULTS_DIR`` if set, else ``~/.cache/diffprune/results``."""
    configured = os.environ.get("DIFFPRUNE_RESULTS_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "diffprune" / "results"


def jsonable(value):
    """JSON-able form of specs and settings: dataclasses, tuples, paths, dtypes, numpy/torch scalars."""
    if hasattr(value, "to_dict") and callable(value.to_dict) and not isinstance(value, type):
        return jsonable(value.to_dict())  # e.g. PruneSpec: its own canonical form
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, Path):
        return str(value)
    torch = sys.modules.get("torch")  # torch objects can only exist once torch is imported
    if torch is not None and isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    if torch is not None and isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    raise ValueError(f"value of type {type(value).__name__} is not JSON-serialisable: {value!r:.80}")


def canonical_json(value) -> str:
    """Canonical JSON (sorted keys, no whitespace, tuples as lists): equal settings give equal text."""
    return json.dumps(jsonable(value), sort_keys=True, separators=(",", ":"), allow_nan=True)


def key_for(model_hash: str, eval_settings: dict, prune_spec=None) -> str:
    """Store key: SHA-256 of the canonical JSON of ``{model_hash, eval_settings, prune_spec}``.

    ``prune_spec`` is a dict, a dataclass (e.g. ``PruneSpec``) or ``None`` (a model that was not
    pruned by this tool, or an evaluation of a saved model whose hash already covers the pruning).
    """
    if not isinstance(model_hash, str) or not model_hash:
        raise ValueError(f"model_hash must be a non-empty string, got {model_hash!r}")
    if not isinstance(eval_settings, dict):
        raise ValueError(f"eval_settings must be a dict, got {type(eval_settings).__name__}")
    payload = {"model_hash": model_hash, "eval_settings": eval_settings, "prune_spec": prune_spec}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def model_hash(model) -> str:
    """SHA-256 over the model's config JSON and every state_dict tensor (name, dtype, shape, bytes).

    Deterministic across processes and devices; independent of where the model was loaded from
    (``_name_or_path``) and of the diffusers version that saved it.
    """
    import torch
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    config_dict = {k: v for k, v in dict(config or {}).items() if k not in _VOLATILE_CONFIG_KEYS}
    digest.update(json.dumps(jsonable(config_dict), sort_keys=True).encode())
    digest.update(type(model).__name__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class ResultStore:
    """Evaluation results in ``<directory>/results.sqlite`` (default :func:`default_results_dir`).

    ``get(key)`` / ``put(key, row)`` / ``to_dataframe()``; safe to share between processes.
    """

    key_for = staticmethod(key_for)
    model_hash = staticmethod(model_hash)

    def __init__(self, directory: str | Path | None = None):
        self.directory = Path(directory).expanduser() if directory is not None else default_results_dir()
        if self.directory.exists() and not self.directory.is_dir():
            raise ValueError(f"results directory {str(self.directory)!r} exists and is not a directory")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / STORE_FILENAME
        with self._connect() as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(_SCHEMA)

    def __repr__(self) -> str:
        return f"ResultStore({str(self.directory)!r})"

    @contextmanager
    def _connect(self):
        # One short-lived connection per operation: nothing is shared across threads or forks.
        with closing(sqlite3.connect(str(self.path), timeout=60.0)) as connection:
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute("PRAGMA busy_timeout=60000")
            yield connection

    def get(self, key: str) -> dict | None:
        """The stored row for ``key``, or ``None``."""
        with self._connect() as connection:
            found = connection.execute("SELECT row FROM results WHERE key = ?", (key,)).fetchone()
        return None if found is None else json.loads(found[0])

    def put(self, key: str, row: dict) -> None:
        """Store ``row`` (a JSON-serialisable dict) under ``key``, replacing any earlier row; one atomic transaction."""
        if not isinstance(key, str) or not key:
            raise ValueError(f"key must be a non-empty string, got {key!r}")
        if not isinstance(row, dict):
            raise ValueError(f"row must be a dict, got {type(row).__name__}")
        text = canonical_json(row)
        model = row.get("model_hash")
        with self._connect() as connection:
            with connection:  # BEGIN ... COMMIT, or ROLLBACK on error
                connection.execute(
                    "INSERT OR REPLACE INTO results (key, model_hash, created_at, row) VALUES (?, ?, ?, ?)",
                    (key, model if isinstance(model, str) else None, time.time(), text),
                )

    def delete(self, key: str) -> bool:
        """Remove one row; True if it existed."""
        with self._connect() as connection:
            with connection:
                return connection.execute("DELETE FROM results WHERE key = ?", (key,)).rowcount > 0

    def keys(self) -> list[str]:
        """All keys, oldest first."""
        with self._connect() as connection:
            return [k for (k,) in connection.execute("SELECT key FROM results ORDER BY created_at, key")]

    def __len__(self) -> int:
        with self._connect() as connection:
            return int(connection.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def to_dataframe(self):
        """All rows as one pandas DataFrame, oldest first: ``key``, ``created_at`` and the row's fields,
        nested dicts flattened to dotted columns (``prune_spec.ratio``)."""
        import pandas as pd

        with self._connect() as connection:
            found = connection.execute("SELECT key, created_at, row FROM results ORDER BY created_at, key").fetchall()
        records = []
        for key, created_at, text in found:
            row = json.loads(text)
            records.append({"key": key, "created_at": created_at, **{k: v for k, v in row.items() if k not in ("key", "created_at")}})
        if not records:
            return pd.DataFrame(columns=["key", "created_at"])
        return pd.json_normalize(records, sep=".")

