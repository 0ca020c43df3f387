"""Giving freed memory back to the operating system on Linux (glibc).

Pruning works layer by layer: a layer's scores, masks and sums are made and freed, then the next
layer's. glibc serves allocations below its (adaptive, up to 32 MiB) mmap threshold from its
heap and keeps freed chunks there, so with layers of many sizes the resident set can grow by
about the model's size in memory that is free but never returned. A fixed 1 MiB threshold makes every tensor of
1 MiB or more its own mapping, returned when freed, so the resident set follows what is alive.
Elsewhere (macOS, musl, Windows) these calls do nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)
MMAP_THRESHOLD_BYTES = 1 << 20
_STATE: dict = {}


def _libc():
    if "libc" not in _STATE:
        library = None
        if sys.platform.startswith("linux"):
            try:
                library = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                library.mallopt, library.malloc_trim  # glibc only
            except (OSError, AttributeError):
                library = None
        _STATE["libc"] = library
    return _STATE["libc"]


def return_large_allocations() -> bool:
    """Once per process: tensors of ``MMAP_THRESHOLD_BYTES`` or more are mapped on their own and
    given back to the system when freed. True when the setting applies (glibc)."""
    library = _libc()
    if library is None:
        return False
    if not _STATE.get("configured"):
        _STATE["configured"] = bool(library.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    return _STATE["configured"]


def release_freed_memory() -> None:
    """Hand the heap's free pages back to the system (``malloc_trim``), after a stage that freed a lot."""
    library = _libc()
    if library is not None:
        library.malloc_trim(0)
