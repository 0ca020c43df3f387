"""Granularities: kept as the import path of earlier code; the implementation is the package
``core.granularities`` (one file per granularity, each registering itself)."""
from __future__ import annotations

from .granularities import *  # noqa: F401,F403
from .granularities import GRANULARITIES, GRANULARITY_CHOICES, __all__  # noqa: F401
from .granularities.base import _block_importance, _no_check  # noqa: F401
from .granularities.channel import max_channel_ratio  # noqa: F401
from .granularities.head import _head_groups, _head_scores, _heads_removed, _multihead  # noqa: F401
from .granularities.nm import _nm_view  # noqa: F401
