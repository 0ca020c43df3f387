"""Resumable benchmark results: one JSON object per line, keyed by ``key``.

A benchmark appends each row as soon as it is measured and, when restarted, skips the keys already
in the file (``bench_dit``, ``bench_recovery``, ``bench_frontier``)."""
from __future__ import annotations

import json
from pathlib import Path


def read_rows(path: Path) -> dict:
    """``key -> row`` of every row in ``path`` (empty when the file does not exist yet)."""
    rows = {}
    path = Path(path)
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[row["key"]] = row
    return rows


def append_row(path: Path, row: dict) -> None:
    """Append ``row`` as one line (the directory is created when needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(row, sort_keys=True) + "\n")
