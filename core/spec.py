"""``PruneSpec``: the frozen, validated description of one pruning run.

Its JSON form is the cache key of a sweep row, the CLI's config file and the metadata saved
beside an exported model. Construction resolves every default (the criterion's schedule and
calibration size, the sparsity implied by an N:M pattern), so two specs that prune the same
way compare and serialise equal.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from . import gradflow as _gradflow  # noqa: F401,I001 - importing registers the criterion (after core.criteria's, obs included)
from .criteria import CRITERIA
from .granularities import GRANULARITIES, parse_granularity
from .schedules import SCHEDULES, check_schedule_params

MAX_SPARSITY = 0.95
# Resource bounds, checked before any work starts. Sized for this tool's machines (a 2-core CPU
# with a few GB of memory, or one GPU): a calibration batch of 1024 images at 256 x 256 RGB with its
# activations already needs tens of GB, and 10,000 batches x timesteps is days of CPU time.
MAX_CALIBRATION_BATCH_SIZE = 1024
MAX_CALIBRATION_BATCHES = 10_000
MAX_CALIBRATION_IMAGES = 100_000
# N:M: M up to 64 (the hardware patterns are 2:4 and 4:8; larger M is accepted for study).
MAX_NM_M = 64
MAX_SEED = 2 ** 63
# schedule_params / criterion_params: JSON-like values nested at most this deep (the deepest
# registered parameter is a list of (t, weight) pairs: 2 levels inside the dict).
MAX_PARAM_DEPTH = 8
# Named calibration sources; anything else must be a directory of the user's images.
CALIBRATION_SOURCES = ("auto", "fashion-mnist-train", "generated")
_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


def _freeze(value):
    """Lists -> tuples, recursively, so that a spec read back from JSON equals the original."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(item) for item in value)
    if isinstance(value, dict):
        return {key: _freeze(item) for key, item in sorted(value.items())}
    return value


def _thaw(value):
    if isinstance(value, tuple):
        return [_thaw(item) for item in value]
    if isinstance(value, dict):
        return {key: _thaw(item) for key, item in value.items()}
    return value


def _is_number(value) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float (10**400)
        return False


def _short(value, limit: int = 60) -> str:
    """``repr`` of a bad value, cut to ``limit`` characters so an error stays one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_folder(text: str) -> bool:
    """Whether ``text`` names an existing folder; False for what no file system resolves (an unknown
    ``~user``, a name too long)."""
    try:
        return Path(text).expanduser().is_dir()
    except (OSError, RuntimeError, ValueError):
        return False


def _too_deep(value, limit: int = MAX_PARAM_DEPTH) -> bool:
    """Whether lists / tuples / dicts in ``value`` nest deeper than ``limit`` (checked without recursion)."""
    pending = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, (list, tuple, dict)):
            if depth >= limit:
                return True
            pending.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


def _check_granularity_text(text) -> None:
    """Refuse (not normalise) a granularity that only parses loosely: ``"2:4\n"``, ``" 2:4"``,
    full-width or other non-ASCII digits; a spec stores its granularity exactly as written."""
    if isinstance(text, str) and (not text.isascii() or text != text.strip()):
        raise ValueError(f"granularity must be written exactly, in ASCII without spaces or newlines (a name such as "
                         f"'channel' or N:M such as '2:4'), got {text!r}; it is refused, not normalised")


@dataclass(frozen=True)
class PruneSpec:
    """One pruning run: criterion x schedule x granularity at a target sparsity.

    ``sparsity`` is the fraction of prunable parameters removed (see ``core.criteria``), the same
    for every granularity. For ``channel``/``head`` the engine searches the structural ratio that
    reaches it; ``channel_ratio`` instead passes that ratio directly (the papers' knob:
    Diff-Pruning's 0.3), and then ``sparsity`` must be left None. For an ``N:M`` granularity such
    as ``"2:4"`` the sparsity is ``1 - N/M`` and may be left None. ``components`` names the
    pipeline networks to prune by attribute (default None: the denoiser); each reaches the
    sparsity on its own, e.g. ``("unet", "vqvae")`` prunes an LDM's autoencoder too.
    """

    criterion: str = "magnitude"  # a name in CRITERIA
    granularity: str = "unstructured"  # a name in GRANULARITIES, or "N:M" like "2:4"
    sparsity: float | None = 0.5  # fraction of prunable parameters removed, [0, 0.95]
    channel_ratio: float | None = None  # channel/head only: explicit structural ratio in [0, 1)
    schedule: str | None = None  # a name in SCHEDULES; None: the criterion's default
    schedule_params: dict = field(default_factory=dict)  # overrides of the schedule's defaults
    criterion_params: dict = field(default_factory=dict)  # e.g. {"p": 2} for magnitude
    calibration_data: str = "auto"  # "auto", "fashion-mnist-train", "generated" or an image folder
    calibration_batches: int | None = None  # None: the criterion's default
    calibration_batch_size: int | None = None  # None: the criterion's default
    seed: int = 0
    device: str = "cpu"  # "cpu", "cuda[:N]", "auto"
    components: tuple | None = None  # pipeline networks to prune by attribute name; None: the denoiser
    calibration_prompts: tuple | None = None  # text-to-image models: calibration prompts; None: the shipped captions

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 - frozen dataclass
        if not isinstance(self.criterion, str) or self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {sorted(CRITERIA)}, got {_short(self.criterion)}")
        criterion = CRITERIA[self.criterion]
        _check_granularity_text(self.granularity)
        name, pattern = parse_granularity(self.granularity)
        if pattern is not None and self.granularity != f"{pattern[0]}:{pattern[1]}":
            raise ValueError(f"granularity N:M must be written as two plain integers such as '2:4', got "
                             f"{self.granularity!r}; it is refused, not normalised")
        if name not in criterion.granularities:
            raise ValueError(
                f"granularity {self.granularity!r} is not supported by criterion {self.criterion!r}; "
                f"allowed: {list(criterion.granularities)}"
            )
        # --- sparsity / channel_ratio
        if self.channel_ratio is not None:
            if name not in ("channel", "head"):
                raise ValueError(f"channel_ratio applies to granularity 'channel' or 'head' only, got granularity {self.granularity!r}")
            if not _is_number(self.channel_ratio) or not 0 <= self.channel_ratio < 1:
                raise ValueError(f"channel_ratio must be a number in [0, 1), got {_short(self.channel_ratio)}")
            if self.sparsity is not None:
                raise ValueError("give either sparsity or channel_ratio, not both (set sparsity=None)")
            set_("channel_ratio", float(self.channel_ratio))
        elif pattern is not None:
            if pattern[1] > MAX_NM_M:
                raise ValueError(f"granularity {self.granularity!r}: N:M needs M <= {MAX_NM_M}, got M={pattern[1]}")
            implied = 1.0 - pattern[0] / pattern[1]
            if implied > MAX_SPARSITY:
                raise ValueError(
                    f"granularity {self.granularity!r} prunes {implied:.1%} of the weights; N:M patterns may prune at "
                    f"most {MAX_SPARSITY:.0%} (1 - N/M <= {MAX_SPARSITY})"
                )
            if self.sparsity is None:
                set_("sparsity", implied)
            elif not _is_number(self.sparsity) or abs(self.sparsity - implied) > 1e-9:
                raise ValueError(
                    f"sparsity for granularity {self.granularity!r} must be {implied:g} (1 - N/M) or None, got {self.sparsity!r}"
                )
        else:
            if self.sparsity is None or not _is_number(self.sparsity) or not 0 <= self.sparsity <= MAX_SPARSITY:
                raise ValueError(f"sparsity must be a number in [0, {MAX_SPARSITY}], got {_short(self.sparsity)}")
        if self.sparsity is not None:
            set_("sparsity", float(self.sparsity))
        # --- schedule
        if not isinstance(self.schedule_params, dict) or not isinstance(self.criterion_params, dict):
            raise ValueError("schedule_params and criterion_params must be dicts")
        for attribute in ("schedule_params", "criterion_params"):
            if _too_deep(getattr(self, attribute)):
                raise ValueError(f"{attribute} nests lists or objects more than {MAX_PARAM_DEPTH} levels deep")
        if criterion.needs_calibration:
            schedule = self.schedule if self.schedule is not None else criterion.default_schedule
            if not isinstance(schedule, str) or schedule not in SCHEDULES:
                raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {_short(schedule)}")
            params = dict(self.schedule_params)
            if self.schedule is None and not params:
                params = dict(criterion.default_schedule_params)
            check_schedule_params(schedule, params)
            set_("schedule", schedule)
            set_("schedule_params", _freeze(params))
            for attribute, default in (("calibration_batches", criterion.default_calibration_batches),
                                       ("calibration_batch_size", criterion.default_calibration_batch_size)):
                value = getattr(self, attribute)
                value = default if value is None else value
                limit = MAX_CALIBRATION_BATCHES if attribute == "calibration_batches" else MAX_CALIBRATION_BATCH_SIZE
                if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= limit:
                    raise ValueError(f"{attribute} must be an integer in [1, {limit}] (the bound for this tool's machines), got {value!r}")
                set_(attribute, value)
            if self.calibration_batches * self.calibration_batch_size > MAX_CALIBRATION_IMAGES:
                raise ValueError(
                    f"calibration_batches x calibration_batch_size must be at most {MAX_CALIBRATION_IMAGES} images, got "
                    f"{self.calibration_batches} x {self.calibration_batch_size}"
                )
        else:
            if self.schedule is not None or self.schedule_params:
                raise ValueError(
                    f"schedule must be None for criterion {self.criterion!r} (it uses no calibration); "
                    f"criteria with a schedule: {sorted(n for n, c in CRITERIA.items() if c.needs_calibration)}"
                )
            for attribute in ("calibration_batches", "calibration_batch_size"):
                if getattr(self, attribute) not in (None, 0):
                    raise ValueError(f"{attribute} must be None for criterion {self.criterion!r} (it uses no calibration)")
                set_(attribute, None)
        set_("criterion_params", _freeze(criterion.check_params(dict(self.criterion_params))))
        # --- calibration data, seed, device
        if not isinstance(self.calibration_data, str) or not self.calibration_data:
            raise ValueError(f"calibration_data must be one of {list(CALIBRATION_SOURCES)} or an image folder, got {self.calibration_data!r}")
        if self.calibration_data not in CALIBRATION_SOURCES and not _is_folder(self.calibration_data):
            raise ValueError(
                f"calibration_data must be one of {list(CALIBRATION_SOURCES)} or an existing image folder, "
                f"got {_short(self.calibration_data)}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < MAX_SEED:
            raise ValueError(f"seed must be an integer in [0, 2**63), got {self.seed!r}")
        if not isinstance(self.device, str) or not _DEVICE_PATTERN.fullmatch(self.device):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]' (exactly, no spaces or newlines), got "
                             f"{_short(self.device)}")
        if self.device == "mps":
            import torch

            if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
                raise ValueError("device 'mps' is not available on this machine; allowed: 'auto', 'cpu' or 'cuda[:N]'")
        # --- components
        if self.components is not None:
            names = (self.components,) if isinstance(self.components, str) else self.components
            if (not isinstance(names, (tuple, list)) or not names
                    or not all(isinstance(n, str) and n.isidentifier() for n in names) or len(set(names)) != len(names)):
                raise ValueError(
                    "components must be None (the denoiser) or a non-empty list of distinct pipeline attribute names "
                    f"such as ['unet', 'vqvae'], got {self.components!r}"
                )
            set_("components", tuple(names))
        # --- calibration prompts (text-to-image families; the engine refuses them for others)
        if self.calibration_prompts is not None:
            from .prompts import check_prompts

            set_("calibration_prompts", check_prompts(self.calibration_prompts, field="calibration_prompts"))

    # ------------------------------------------------------------------ derived
    @property
    def granularity_name(self) -> str:
        """The registry key: ``"N:M"`` for any N:M pattern."""
        return parse_granularity(self.granularity)[0]

    @property
    def nm_pattern(self) -> tuple[int, int] | None:
        return parse_granularity(self.granularity)[1]

    @property
    def label(self) -> str:
        amount = f"ratio {self.channel_ratio:g}" if self.channel_ratio is not None else f"{self.sparsity:.0%}"
        schedule = f" / {self.schedule}" if self.schedule else ""
        return f"{self.criterion}{schedule} / {self.granularity} @ {amount}"

    def replace(self, **changes) -> "PruneSpec":
        data = self.to_dict()
        data.update(changes)
        return PruneSpec.from_dict(data)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        data = {key: _thaw(value) for key, value in asdict(self).items()}
        for optional in ("components", "calibration_prompts"):  # defaults left out: older specs keep their JSON (keys)
            if data.get(optional) is None:
                data.pop(optional, None)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "PruneSpec":
        known = {f.name for f in fields(cls)}
        if not isinstance(data, dict):
            raise ValueError(f"PruneSpec fields must be given as an object (a dict), got {type(data).__name__}")
        unknown = sorted(str(key) for key in set(data) - known)
        if unknown:
            raise ValueError(f"PruneSpec fields are {sorted(known)}, got unknown {_short(unknown)}")
        for key, value in data.items():
            if _too_deep(value):
                raise ValueError(f"{key} nests lists or objects more than {MAX_PARAM_DEPTH} levels deep")
        return cls(**{key: _freeze(value) if key.endswith("_params") else value for key, value in data.items()})

    @classmethod
    def from_json(cls, text: str) -> "PruneSpec":
        if not isinstance(text, (str, bytes)):
            raise ValueError(f"PruneSpec JSON must be text, got {type(text).__name__}")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"PruneSpec JSON is invalid: {error}") from error
        except RecursionError:
            raise ValueError("PruneSpec JSON nests lists or objects too deeply to read") from None
        if not isinstance(data, dict):
            raise ValueError("PruneSpec JSON must be an object")
        return cls.from_dict(data)


def _preset(**kwargs) -> PruneSpec:
    return PruneSpec(**kwargs)


# Each paper's recipe as a named preset. "-paper" presets use the papers' own calibration
# sizes (slow on a CPU: see benchmarks/results/prune.json for the measured cost).
PRESETS: dict[str, PruneSpec] = {
    # The app's quick demo: a one-shot criterion (no calibration) at 30 % of the channels; the app
    # pairs it with a short recovery and a small evaluation (diffprune_ui.app.PRESET_RUN_SETTINGS).
    "quick-demo": _preset(criterion="magnitude", granularity="channel", sparsity=0.3),
    # Diff-Pruning (NeurIPS 2023): Taylor, threshold schedule, channel, 44% of the parameters
    # (what its channel ratio 0.3 removed on ddpm-cifar10-32).
    "diffpruning": _preset(criterion="taylor", granularity="channel", sparsity=0.44),
    "diffpruning-paper": _preset(criterion="taylor", granularity="channel", sparsity=0.44,
                                 calibration_batches=1, calibration_batch_size=128),
    # NiCI-Pruning (TIP 2025): clean-image Taylor, interval schedule, channel at 44%.
    "nici": _preset(criterion="nici", granularity="channel", sparsity=0.44),
    "nici-paper": _preset(criterion="nici", granularity="channel", sparsity=0.44,
                          calibration_batches=10, calibration_batch_size=128),
    # Towards Tiny Diffusion: alpha|w| + beta|g| unstructured (its code: 30% L1 on every conv).
    "tiny-l1": _preset(criterion="l1", granularity="unstructured", sparsity=0.3),
    # OBS-Diff (2025): one-shot OBS/SparseGPT with log-decrease timestep-weighted Hessians, 50% unstructured.
    "obs-diff": _preset(criterion="obs", granularity="unstructured", sparsity=0.5),
    # Gradient-flow iterative pruning (2025): soft masks moved along the gradient flow, 50% unstructured.
    "gradflow": _preset(criterion="gradflow", granularity="unstructured", sparsity=0.5),
    # Where pruning beat sampling with fewer steps on the default model (benchmarks/bench_frontier.py):
    # nici at 40 % of the channels, recovered with distillation, sampled with 4 DPM-Solver++ steps
    # (the app pairs it with that recovery and sampler: diffprune_ui.app.PRESET_RUN_SETTINGS).
    "few-step-win": _preset(criterion="nici", granularity="channel", sparsity=0.4),
    "magnitude-2:4": _preset(criterion="magnitude", granularity="2:4", sparsity=None),
    "random-50": _preset(criterion="random", granularity="unstructured", sparsity=0.5),
}
