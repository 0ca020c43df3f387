"""Calibration prompts for text-to-image models.

``CALIBRATION_PROMPTS`` are 64 short captions shipped in ``assets/prompts/calibration.txt`` (written
for this project: no dataset, no download). OBS-Diff calibrates SD3 on 100 COCO-style captions
(4 for its unstructured runs); a user's own prompts replace them through :func:`check_prompts`.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

PROMPT_FILE = Path(__file__).resolve().parent.parent / "assets" / "prompts" / "calibration.txt"
MAX_PROMPTS = 10_000  # a user list longer than this is a mistake (each prompt is encoded once)
MAX_PROMPT_CHARS = 2_000


def prompt_lines(text: str) -> tuple[str, ...]:
    """Prompts written one a line (the shipped file, a ``--calibration-prompts`` file, the app's
    box): stripped, blank lines and ``#`` comment lines skipped."""
    return tuple(line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))


@lru_cache(maxsize=1)
def calibration_prompts() -> tuple[str, ...]:
    """The shipped captions, one a line (``#`` lines are comments)."""
    return prompt_lines(PROMPT_FILE.read_text(encoding="utf-8"))


def check_prompts(prompts, field: str = "prompts") -> tuple[str, ...]:
    """A non-empty tuple of non-empty strings; ValueError naming ``field`` otherwise."""
    if isinstance(prompts, str):
        prompts = (prompts,)
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError(f"{field} must be a non-empty list of strings, got {prompts!r}")
    if len(prompts) > MAX_PROMPTS:
        raise ValueError(f"{field} holds {len(prompts)} prompts; at most {MAX_PROMPTS}")
    for prompt in prompts:
        if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > MAX_PROMPT_CHARS:
            raise ValueError(f"{field} must hold non-empty strings of at most {MAX_PROMPT_CHARS} characters, got {str(prompt)[:60]!r}")
    return tuple(prompts)


def draw_prompts(count: int, generator: torch.Generator | None = None, prompts=None) -> list[str]:
    """``count`` prompts drawn uniformly (with replacement) from ``prompts`` (default: the shipped
    set) with ``generator``; a list of exactly ``count`` prompts is returned in its own order."""
    pool = check_prompts(prompts) if prompts is not None else calibration_prompts()
    if len(pool) == count and prompts is not None:
        return list(pool)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    return [pool[i] for i in torch.randint(len(pool), (count,), generator=generator).tolist()]


CALIBRATION_PROMPTS = calibration_prompts()
