"""Event handlers of the Gradio app: read controls, call the ``core`` facade, return figures.

Four rules hold for every handler a user can trigger:

* **Validate first.** ``validate_run`` / ``validate_compare`` check every field (and load the
  model) before anything on screen changes; a bad field is one short ``gr.Error`` naming the
  field and what is allowed. The page runs them as a separate step with no outputs, so an error
  leaves every pane as it was; the API endpoints run them too.
* **A finished run is never lost.** Once the compute is done, every view is built by
  :func:`safe_view`: a view that cannot be drawn becomes a one-line note in its place. A failure
  after validation keeps every pane (``gr.skip()``) and says what happened in the status line.
* **Every figure is measured.** Latency comes from one paired, interleaved timing
  (``core.timing``), quality from ``core.evaluate``; nothing shown is a cached guess.
* **One run, defined in core.** A run is ``core.run.run`` (prune, recover, grids, evaluations,
  timing, export through ``core.export``), the dense frontier ``core.frontier.dense_frontier``:
  the same calls as ``diffprune run`` and the benchmarks. Handlers only map widgets to their
  settings and their results to views; the many widget values of an event are collected into one
  namespace at the boundary (``collect_controls``; the page passes them by name).

Handlers are plain functions, tested without a browser (``tests/test_app_handlers.py``).
"""
from __future__ import annotations

import atexit
import json
import math
import os
import re
import shutil
import sys
import tempfile
import threading
from pathlib import Path

import gradio as gr

from . import figures, run_notes, verdict
from .first_screen import shipped_grid

ROOT = Path(__file__).resolve().parent.parent
ASSETS_DIR = ROOT / "assets"
DEFAULT_MODEL_DIR = ASSETS_DIR / "ddpm-fashion-mnist"
SHIPPED_RESULTS = ASSETS_DIR / "results" / "benchmarks.csv"
SHIPPED_DENSE_STEPS = ASSETS_DIR / "results" / "dense_steps.csv"
SHIPPED_RECOVERY = ROOT / "benchmarks" / "results" / "obs.json"
SHIPPED_FRONTIER = ASSETS_DIR / "results" / "frontier.csv"  # benchmarks/bench_frontier.py
MAX_SAMPLES = 256  # per run in the app; larger evaluations belong to the CLI / benchmarks
MAX_STEPS = 200
MAX_SEED = 2**31 - 1
MAX_CALIBRATION_BATCH_SIZE = 256
MAX_CALIBRATION_BATCHES = 64
MAX_SOURCE_LENGTH = 200
GRID_IMAGES = 16

# The Prune tab's controls, in the order the page passes them (and the API endpoint /run_prune
# lists them). Handlers collect them into one namespace at the boundary (``collect_controls``),
# so that no function takes them one parameter each.
SPEC_CONTROLS = ("criterion", "granularity", "sparsity", "schedule", "threshold", "interval_weights", "num_steps",
                 "w_min", "w_max", "num_timesteps", "custom_text", "calibration_batch_size", "calibration_batches",
                 "seed")
ESTIMATE_CONTROLS = ("source", *SPEC_CONTROLS)
RUN_CONTROLS = ("source", *SPEC_CONTROLS[:-1], "num_samples", "steps", "seed", "quality", "recovery_steps",
                "recovery_lr", "recovery_batch", "distill", "recovery_data", "recovery_files", "export_oneshot",
                "grid_class", "grid_prompt", "calibration_prompts", "sampler")
RECOVERY_CONTROL_DEFAULTS = dict(recovery_steps=0, recovery_lr=None, recovery_batch=None, distill=False,
                                 recovery_data="shipped training images", recovery_files=None)
RUN_DEFAULTS = dict(RECOVERY_CONTROL_DEFAULTS, export_oneshot=False, grid_class=None, grid_prompt="",
                    calibration_prompts="", sampler="ddim")
# The samplers a run is evaluated with (``core.pipeline.SCHEDULERS``): name -> shown label.
SAMPLERS = {"DDIM": "ddim", "DPM-Solver++": "dpm-solver++", "DDPM": "ddpm"}
# The Compare tab's controls, in the page's order (the API endpoint /run_compare).
COMPARE_CONTROLS = ("source", "criteria", "granularity", "sparsities", "num_samples", "steps", "seed", "quality",
                    "time_latency", "recovery_steps", "recovery_lr", "recovery_batch", "distill", "recovery_data",
                    "recovery_files")
COMPARE_DEFAULTS = dict(RECOVERY_CONTROL_DEFAULTS, quality="KID", time_latency=False)

# Seconds of GPU lease per recovery step asked of ZeroGPU (a generous bound for the small models here).
GPU_SECONDS_PER_RECOVERY_STEP = 0.1


def collect_controls(names: tuple, values: tuple, named: dict, defaults: dict | None = None):
    """The controls of one event as a namespace: ``values`` in the order of ``names`` (the page's),
    then ``named`` ones; a missing control takes its entry in ``defaults`` (else a TypeError, as a
    call missing an argument)."""
    from types import SimpleNamespace

    if len(values) > len(names):
        raise TypeError(f"expected at most {len(names)} controls ({', '.join(names)}), got {len(values)}")
    controls = dict(zip(names, values))
    for name, value in named.items():
        if name not in names or name in controls:
            raise TypeError(f"control {name!r} is unknown or given twice; controls: {', '.join(names)}")
        controls[name] = value
    missing = [name for name in names if name not in controls and name not in (defaults or {})]
    if missing:
        raise TypeError(f"missing controls: {', '.join(missing)}")
    return SimpleNamespace(**{name: controls[name] if name in controls else defaults[name] for name in names})


def run_gpu_duration(*args, **kwargs) -> int:
    """The ZeroGPU lease of one run: 300 s for prune + evaluation, plus the recovery budget (the
    ``recovery_steps`` control, by name or at its place in ``RUN_CONTROLS``) at
    ``GPU_SECONDS_PER_RECOVERY_STEP``; at most 1 h."""
    index = RUN_CONTROLS.index("recovery_steps")
    steps = kwargs.get("recovery_steps", args[index] if len(args) > index else 0)
    try:
        steps = max(0, int(steps))
    except (TypeError, ValueError):
        steps = 0
    return int(min(3600, 300 + GPU_SECONDS_PER_RECOVERY_STEP * steps))


try:  # Hugging Face ZeroGPU Spaces: run the compute handlers on a GPU lease; a no-op elsewhere.
    import spaces

    gpu_task = spaces.GPU(duration=300)
    gpu_run_task = spaces.GPU(duration=run_gpu_duration)
except ImportError:  # local machines and CPU Spaces
    def gpu_task(function):
        return function

    gpu_run_task = gpu_task

_PIPELINES: dict = {}
_PIPELINE_LOCK = threading.Lock()
_CANCELLED: set = set()
_QUEUE_LOCK = threading.Lock()
_WAITING: list = []  # sessions whose compute job was announced and has not started
_RUNNING: set = set()
# One folder per process for exports; inside it, each session keeps only its latest export.
_EXPORT_ROOT = Path(tempfile.mkdtemp(prefix="diffprune-exports-"))
atexit.register(shutil.rmtree, _EXPORT_ROOT, True)  # nothing of this process's exports outlives it
_LATEST_EXPORT: dict = {}


_ENGINE_LOCK = threading.Lock()


def load_engine() -> None:
    """Import the engine (torch, diffusers, ``core``) once, from whichever thread asks first.

    The page is served before this (``app.py`` warms it up in the background); serialising the
    first import avoids two threads importing ``core``'s modules at once. Applies
    ``DIFFPRUNE_THREADS`` (torch intra-op threads) when set."""
    if "core.spec" in sys.modules and "core.engine" in sys.modules:
        return
    with _ENGINE_LOCK:
        import torch

        if os.environ.get("DIFFPRUNE_THREADS"):
            torch.set_num_threads(int(os.environ["DIFFPRUNE_THREADS"]))
        import core

        for name in core.__all__:  # the facade is lazy: its public names import every engine module
            getattr(core, name)


class RunCancelled(Exception):
    """Raised from the progress callback when the user pressed Cancel."""


def _user_error(error: Exception) -> gr.Error:
    return gr.Error(str(error).splitlines()[0][:300], print_exception=False)


def _short(value, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------------------ field checks
def _number(field: str, value, low, high, whole: bool):
    """A numeric field from the page or the API: ``None``, ``True``, ``'abc'``, NaN, out of range
    and (``whole``) ``1.5`` are refused with a ValueError naming the field (never truncated)."""
    allowed = (f"{field} must be a whole number from {low:,} to {high:,}" if whole
               else f"{field} must be a number from {low:g} to {high:g}")
    typed = _typed(value)
    if isinstance(value, bool) or value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"{allowed}, got {typed}")
    try:
        number = float(value.strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{allowed}, got {typed}") from None
    if not math.isfinite(number) or (whole and number != int(number)) or not low <= number <= high:
        raise ValueError(f"{allowed}, got {typed}")
    return int(number) if whole else number


def _typed(value) -> str:
    """What the user typed, for an error message: an empty box arrives as None or blank text."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return "an empty field"
    if isinstance(value, str):
        return _short(value)  # the text as typed, quoted: 'abc'
    return _short(value) if isinstance(value, (bool, int, float)) else f"a {type(value).__name__} {_short(value)}"


def whole_number(field: str, value, low: int, high: int) -> int:
    """An integer field: ``1.5``, ``None``, ``'abc'``, ``True`` are refused (never truncated)."""
    return _number(field, value, low, high, whole=True)


def real_number(field: str, value, low: float, high: float) -> float:
    return _number(field, value, low, high, whole=False)


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")


def normalise_source(source) -> str | None:
    """``None`` for the embedded default model, else the stripped text; refuses what is neither a
    hub id nor a path (type, length, control characters)."""
    if source is None:
        return None
    if not isinstance(source, str):
        raise ValueError(f"model source must be text: empty, a hub id or a local folder, got {type(source).__name__}")
    text = source.strip()
    if len(text) > MAX_SOURCE_LENGTH or any(ord(c) < 32 for c in text):
        raise ValueError(f"model source must be empty, a hub id (owner/name) or a local diffusers folder, "
                         f"at most {MAX_SOURCE_LENGTH} characters on one line")
    return None if text in ("", "default", str(DEFAULT_MODEL_DIR)) else text


def _looks_local(text: str) -> bool:
    return text.startswith((".", "/", "~", "\\")) or not _HUB_ID.match(text)


def source_error(text: str) -> ValueError:
    """One message per kind of source, whatever the cause: a path that does not exist, cannot be
    read or is not a pipeline all read the same, so the message reveals nothing about the server."""
    if _looks_local(text):
        return ValueError(f"model source {_short(text, 60)}: no supported diffusers pipeline can be loaded from this "
                          "path (allowed: empty, an embedded model name, a hub id, or a readable local folder with "
                          "model_index.json of a supported family)")
    return ValueError(f"model source {_short(text, 60)}: could not load it from the Hugging Face hub (unknown or "
                      "private id, no network, or not a supported model family)")


def _denoiser(pipeline):
    from core.models import adapter_for

    return adapter_for(pipeline).denoiser(pipeline)


def load_dtype() -> str:
    """The dtype the app loads models in: ``DIFFPRUNE_DTYPE`` (``auto``, the default, keeps each
    checkpoint's own; ``float32``, ``float16`` or ``bfloat16``), set by the server's owner."""
    from core.dtypes import AUTO, DTYPES

    value = os.environ.get("DIFFPRUNE_DTYPE", "").strip() or AUTO
    if value not in (AUTO, *DTYPES):
        raise ValueError(f"environment variable DIFFPRUNE_DTYPE must be one of {[AUTO, *DTYPES]}, got {_short(value)}")
    return value


def cached_pipeline(source):
    """The dense pipeline of ``source``, loaded once per process in the dtype :func:`load_dtype`
    names (part of the cache key); runs prune a copy, never this one. A model over the server's size caps (``core.fit``) is refused
    with the estimate in the message, before its weights are downloaded."""
    key = normalise_source(source)
    load_engine()
    dtype = load_dtype()
    with _PIPELINE_LOCK:
        if (key, dtype) not in _PIPELINES:
            from core import load_pipeline
            from core.fit import FitError

            try:
                _PIPELINES[key, dtype] = load_pipeline(key, dtype=dtype)
            except FitError:
                raise  # names the model's size and the cap: nothing about the server's files
            except Exception as error:  # noqa: BLE001 - any loading failure: one message, no internals
                if key is None:
                    raise ValueError(f"the embedded default model could not be loaded: {str(error)[:120]}") from error
                raise source_error(key) from None
        return _PIPELINES[key, dtype]


def get_store():
    load_engine()
    from core.store import ResultStore

    return ResultStore()


# ------------------------------------------------------------------------------ controls -> spec
def parse_custom_schedule(text: str) -> list:
    """``"0:1, 50:0.5"`` or JSON ``[[0, 1], [50, 0.5]]`` -> list of (t, weight)."""
    text = (text or "").strip() if isinstance(text, str) else ""
    if not text:
        raise ValueError("custom schedule is empty: give pairs like '0:1, 100:0.5, 500:0.2' (t:weight)")
    if len(text) > 20_000:
        raise ValueError("custom schedule must be at most 20,000 characters of t:weight pairs")
    if text.startswith("["):
        try:
            pairs = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"custom schedule is not valid JSON: {error.msg}") from error
        except RecursionError:
            raise ValueError("custom schedule nests lists too deeply: give pairs like [[0, 1], [50, 0.5]]") from None
    else:
        pairs = []
        for item in text.replace(";", ",").split(","):
            item = item.strip()
            if not item:
                continue
            if ":" not in item:
                raise ValueError(f"custom schedule entry {_short(item)} must look like t:weight, e.g. '10:0.5'")
            t_text, weight_text = item.split(":", 1)
            try:
                pairs.append((int(t_text), float(weight_text)))
            except ValueError as error:
                raise ValueError(f"custom schedule entry {_short(item)}: t must be an integer and weight a number") from error
    return [tuple(p) if isinstance(p, list) else p for p in pairs]


RAMP_SCHEDULES = ("log-decrease", "linear-decrease", "log-increase", "linear-increase")


def schedule_params_from_controls(schedule: str, threshold, interval_weights, num_steps, w_min, w_max,
                                  num_timesteps, custom_text) -> dict:
    """Only the parameters the chosen schedule takes (the UI shows only those), without the ones
    equal to the schedule's defaults, so a preset's spec and the controls it fills compare equal."""
    load_engine()
    from core.schedules import SCHEDULES

    if schedule == "threshold":
        params = {"threshold": real_number("threshold", threshold, 0.0, 1.0)}
    elif schedule == "interval":
        try:
            weights = tuple(float(w) for w in str(interval_weights).replace(" ", "").split(",") if w)
        except ValueError as error:
            raise ValueError("interval weights must be 4 comma-separated numbers, e.g. '1,1,1,1'") from error
        params = {"interval_weights": weights}
    elif schedule in RAMP_SCHEDULES:
        params = {"num_steps": whole_number("K steps", num_steps, 1, 1000), "w_min": real_number("w_min", w_min, 0, 100),
                  "w_max": real_number("w_max", w_max, 0, 100)}
    elif schedule == "uniform":
        params = {"num_timesteps": whole_number("number of timesteps", num_timesteps, 1, 1000)}
    elif schedule == "custom":
        return {"timesteps": parse_custom_schedule(custom_text)}
    else:
        raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {_short(schedule)}")
    defaults = SCHEDULES[schedule].defaults
    return {key: value for key, value in params.items()
            if not (key in defaults and _same(value, defaults[key]))}


def _same(value, default) -> bool:
    if isinstance(default, (tuple, list)):
        return isinstance(value, (tuple, list)) and len(value) == len(default) and all(
            float(a) == float(b) for a, b in zip(value, default))
    return default is not None and not isinstance(default, str) and float(value) == float(default)


def spec_from_controls(*values, **named):
    """The ``PruneSpec`` of the spec controls (``SPEC_CONTROLS``: in the page's order, or by name);
    a ValueError names the bad field."""
    load_engine()
    from core.criteria import CRITERIA
    from core.spec import MAX_SPARSITY, PruneSpec

    c = collect_controls(SPEC_CONTROLS, values, named)
    if not isinstance(c.criterion, str) or c.criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {sorted(CRITERIA)}, got {_short(c.criterion)}")
    if not isinstance(c.granularity, str):
        raise ValueError(f"granularity must be one of {granularity_choices(CRITERIA[c.criterion].granularities)}, "
                         f"got {_short(c.granularity)}")
    kwargs = dict(criterion=c.criterion, granularity=c.granularity, seed=whole_number("seed", c.seed, 0, MAX_SEED))
    if ":" in c.granularity:
        kwargs["sparsity"] = None  # N:M implies it
    else:
        kwargs["sparsity"] = real_number("sparsity", c.sparsity, 0.0, MAX_SPARSITY)
    if CRITERIA[c.criterion].needs_calibration:
        kwargs["schedule"] = c.schedule
        kwargs["schedule_params"] = schedule_params_from_controls(
            c.schedule, c.threshold, c.interval_weights, c.num_steps, c.w_min, c.w_max, c.num_timesteps, c.custom_text)
        kwargs["calibration_batch_size"] = whole_number("calibration batch size", c.calibration_batch_size, 1,
                                                        MAX_CALIBRATION_BATCH_SIZE)
        kwargs["calibration_batches"] = whole_number("calibration batches", c.calibration_batches, 1,
                                                     MAX_CALIBRATION_BATCHES)
    return PruneSpec(**kwargs)


# ------------------------------------------------------------------------------ controls
def preview_schedule(schedule, threshold, interval_weights, num_steps, w_min, w_max, num_timesteps, custom_text):
    """Live timestep weight curve; invalid parameters show a message in the plot, not an error."""
    try:
        params = schedule_params_from_controls(schedule, threshold, interval_weights, num_steps, w_min, w_max,
                                               num_timesteps, custom_text)
        return figures.schedule_preview(schedule, params)
    except (ValueError, TypeError, KeyError) as error:
        return figures.empty_figure(f"invalid schedule: {str(error)[:120]}")


def schedule_visibility(schedule):
    """Show only the parameters of the chosen schedule."""
    return (gr.update(visible=schedule == "threshold"), gr.update(visible=schedule == "interval"),
            gr.update(visible=schedule in RAMP_SCHEDULES), gr.update(visible=schedule == "uniform"),
            gr.update(visible=schedule == "custom"))


def criterion_changed(criterion, granularity=None, source=None):
    """Granularities the criterion supports (the current one kept when it is among them), its
    default schedule, and whether it calibrates. Wired to the user's own change of the dropdown
    only (``.input``), so a preset's settings are never overwritten by it."""
    load_engine()
    from core.criteria import CRITERIA

    entry = CRITERIA[criterion]
    choices = granularity_choices(entry.granularities)
    if source is not None:  # only what the loaded model's family can cut
        try:
            choices = model_granularity_choices(cached_pipeline(source), entry.granularities) or choices
        except ValueError:
            pass
    keep = granularity if granularity in choices else (choices[0] if choices else None)
    schedule = entry.default_schedule or "uniform"
    return (gr.update(choices=choices, value=keep),
            gr.update(value=schedule, interactive=entry.needs_calibration),
            gr.update(visible=entry.needs_calibration), f"*{entry.description}*",
            gr.update(value=distill_default(criterion)))


def distill_default(criterion) -> bool:
    """Distillation from the dense model is on by default for ``nici``, as its paper recovers."""
    return criterion == "nici"


def calibration_estimate(*values, **named) -> str:
    """Before a run: how long the calibration will take here (passes x a per-pass time measured
    once per model and batch size, then cached). Takes ``ESTIMATE_CONTROLS`` (the model source and
    the spec controls). Invalid settings show why instead (the run button raises the same error
    as gr.Error)."""
    load_engine()
    from core.criteria import CRITERIA

    c = collect_controls(ESTIMATE_CONTROLS, values, named)
    if c.criterion in CRITERIA and not CRITERIA[c.criterion].needs_calibration:
        return f"*{c.criterion} needs no calibration: pruning takes seconds.*"
    from core.cost import describe_estimate, estimate_cost

    try:
        spec = spec_from_controls(**{name: getattr(c, name) for name in SPEC_CONTROLS})
        text = describe_estimate(estimate_cost(cached_pipeline(c.source), spec))
    except (ValueError, TypeError) as error:
        return f"*cannot estimate: {str(error)[:160]}*"
    if not text:
        return f"*{c.criterion}: no calibration estimate for this criterion.*"
    return f"*{text}*"


def recovery_estimate(source, recovery_steps, recovery_batch, distill) -> str:
    """Before a run: what the recovery budget costs here (steps x seconds per step, measured now
    by real fine-tuning steps of the dense model, cached per model and batch size)."""
    load_engine()
    from core.recovery import MAX_RECOVERY_BATCH, MAX_RECOVERY_STEPS, describe_recovery, estimate_recovery

    try:
        steps = whole_number("recovery steps", recovery_steps, 0, MAX_RECOVERY_STEPS)
        batch = whole_number("recovery batch size", recovery_batch, 1, MAX_RECOVERY_BATCH)
        if steps == 0:
            return f"*{describe_recovery({})}.*"
        estimate = estimate_recovery(cached_pipeline(source), steps, batch, bool(distill))
    except (ValueError, TypeError) as error:
        return f"*cannot estimate the recovery: {str(error)[:160]}*"
    return f"*{describe_recovery(estimate)}.*"


def granularity_choices(granularities) -> list[str]:
    """Registry names, with the N:M family expanded to the patterns the app offers."""
    choices = []
    for name in granularities:
        if name in ("N:M", "nm"):
            choices += ["2:4", "4:8"]
        else:
            choices.append(name)
    return choices


def model_granularity_choices(pipeline, granularities) -> list[str]:
    """``granularity_choices`` narrowed to those this model's family can cut (its adapter's
    ``check_cut`` and the granularity's own check), e.g. no ``channel`` on a DiT."""
    from core.granularities import GRANULARITIES
    from core.models import adapter_for
    from core.spec import PruneSpec

    adapter = adapter_for(pipeline)
    denoiser = adapter.denoiser(pipeline)
    kept = []
    for choice in granularity_choices(granularities):
        try:
            spec = PruneSpec(criterion="magnitude", granularity=choice, sparsity=None if ":" in choice else 0.3)
            adapter.check_cut(adapter.denoiser_name, denoiser, spec.granularity_name)
            GRANULARITIES[spec.granularity_name].check(denoiser, spec)
        except ValueError:
            continue
        kept.append(choice)
    return kept


def granularities_for_model(source, criterion, granularity):
    """After a model is loaded: the criterion's granularities this model accepts (the current one
    kept when accepted)."""
    load_engine()
    from core.criteria import CRITERIA

    try:
        pipeline = cached_pipeline(source)
        entry = CRITERIA.get_entry(criterion)
    except ValueError:
        return gr.skip()
    choices = model_granularity_choices(pipeline, entry.granularities) or granularity_choices(entry.granularities)
    return gr.update(choices=choices, value=granularity if granularity in choices else choices[0])


_DENSE_SAMPLES: dict = {}


ALL_CLASSES = "all classes (uniform)"


def class_choices(pipeline) -> list[str]:
    """The grid's class picker: all classes (uniform, as evaluation samples them) and, for a
    class-conditional model, each class by index and name (``DiTPipeline.labels``)."""
    from core.models import adapter_for

    classes = adapter_for(pipeline).num_classes(pipeline)
    if not classes:
        return [ALL_CLASSES]
    names = {}
    for name, index in (getattr(pipeline, "labels", None) or {}).items():
        names.setdefault(int(index), name)
    return [ALL_CLASSES] + [f"{index}: {names.get(index, 'class ' + str(index))}" for index in range(int(classes))][:1000]


def class_label_of(pipeline, choice, strict: bool = True) -> int | None:
    """The class index the grids show (None: uniform). ``strict``: a choice the model does not
    offer is a ValueError naming the field; else it falls back to uniform (the model changed)."""
    choices = class_choices(pipeline)
    if choice in (None, "", ALL_CLASSES):
        return None
    if not isinstance(choice, str) or choice not in choices:
        if not strict:
            return None
        shown = choices if len(choices) <= 12 else choices[:11] + ["..."]
        raise ValueError(f"class shown in the grids must be one of {shown} for this model, got {_short(choice)}")
    return int(choice.split(":", 1)[0])


def class_update(pipeline, choice):
    """The class picker for ``pipeline``: its choices, the current class kept when the model offers it."""
    choices = class_choices(pipeline)
    return gr.update(choices=choices, value=choice if choice in choices else ALL_CLASSES, visible=len(choices) > 1)


MAX_PROMPT_CHARS = 300


def grid_prompt_of(pipeline, prompt) -> str | None:
    """The prompt every grid image gets (None: the shipped captions, drawn per image). Only
    text-to-image models take one; a ValueError names the field otherwise."""
    from core.pipeline import takes_prompts

    if prompt is None or (isinstance(prompt, str) and not prompt.strip()):
        return None
    if not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"prompt for the grids must be text of at most {MAX_PROMPT_CHARS} characters, got {_short(prompt)}")
    if not takes_prompts(pipeline):
        raise ValueError("prompt for the grids applies to text-to-image models (SD, PixArt, SD3); leave it empty for this model")
    return prompt.strip()


def prompt_update(pipeline, prompt):
    """The prompt box: shown for text-to-image models (its text kept), hidden and emptied otherwise."""
    from core.pipeline import takes_prompts

    if takes_prompts(pipeline):
        return gr.update(visible=True, value=prompt or "")
    return gr.update(visible=False, value="")


MAX_CALIBRATION_PROMPTS_TEXT = 200_000  # characters in the box: thousands of captions


def shipped_caption_count() -> int:
    """How many calibration captions ship (``core.prompts.CALIBRATION_PROMPTS``), for the box's label:
    from the page's catalog, so that torch is not imported before the page is served."""
    from core.catalog import catalog

    return catalog()["shipped_captions"]


def calibration_prompts_of(pipeline, text) -> tuple[str, ...] | None:
    """The run's calibration prompts: the box's lines (blank and ``#`` lines skipped, as in a
    ``--calibration-prompts`` file); None (the shipped captions) when it holds none. Only
    text-to-image models take them; a ValueError names the field otherwise, and for a list past the
    engine's bounds (``core.prompts``: prompts per list, characters per prompt)."""
    from core.pipeline import takes_prompts
    from core.prompts import MAX_PROMPT_CHARS as MAX_CALIBRATION_PROMPT_CHARS
    from core.prompts import MAX_PROMPTS, prompt_lines

    if text is None:
        return None
    if not isinstance(text, str) or len(text) > MAX_CALIBRATION_PROMPTS_TEXT:
        raise ValueError(f"calibration prompts must be text of at most {MAX_CALIBRATION_PROMPTS_TEXT:,} characters, "
                         f"one prompt per line, got {_short(text)}")
    prompts = prompt_lines(text)
    if not prompts:
        return None
    if not takes_prompts(pipeline):
        raise ValueError("calibration prompts apply to text-to-image models (SD, PixArt, SD3) only; leave the box "
                         "empty for this model")
    if len(prompts) > MAX_PROMPTS:
        raise ValueError(f"calibration prompts: at most {MAX_PROMPTS:,} prompts (one per line), got {len(prompts):,}")
    for prompt in prompts:
        if len(prompt) > MAX_CALIBRATION_PROMPT_CHARS:
            raise ValueError(f"calibration prompts: each line at most {MAX_CALIBRATION_PROMPT_CHARS:,} characters, "
                             f"got {len(prompt):,} in {_short(prompt)}")
    return prompts


def calibration_prompts_update(source, text):
    """The calibration prompts box after a model is shown: visible for a text-to-image model (its
    text kept), hidden and emptied otherwise, as the grids' prompt box. Only an already loaded model
    is looked at (this runs outside the queue); otherwise the box is left as it is."""
    try:
        key = normalise_source(source), load_dtype()
    except ValueError:
        return gr.skip()
    with _PIPELINE_LOCK:
        pipeline = _PIPELINES.get(key)
    if pipeline is None:
        return gr.skip()
    from core.pipeline import takes_prompts

    if takes_prompts(pipeline):
        return gr.update(visible=True, value=text or "")
    return gr.update(visible=False, value="")


def dense_samples(source, steps: int, seed: int, class_label: int | None = None, prompt: str | None = None,
                  scheduler: str = "ddim"):
    """The dense model's ``GRID_IMAGES`` samples at (steps, seed) with ``scheduler``, sampled once
    per process: the first screen and every run's dense grid show the same images, so they are not
    sampled again."""
    from core import sample_images

    key = (normalise_source(source), steps, seed, class_label, prompt, scheduler)
    if key not in _DENSE_SAMPLES:
        while len(_DENSE_SAMPLES) >= 8:
            _DENSE_SAMPLES.pop(next(iter(_DENSE_SAMPLES)))
        _DENSE_SAMPLES[key] = sample_images(cached_pipeline(source), GRID_IMAGES, steps, seed, class_label=class_label,
                                            prompt=prompt, scheduler=scheduler)
    return _DENSE_SAMPLES[key]


def dense_preview(source, seed=0, steps=25, grid_class=ALL_CLASSES, grid_prompt=""):
    """The model's dense samples (of the chosen class, for a class-conditional model; of the
    prompt, for a text-to-image one; a class or prompt the newly loaded model does not take falls
    back to uniform classes / the shipped captions), its card, its class picker and prompt box."""
    from core import make_grid

    try:
        seed = whole_number("seed", seed, 0, MAX_SEED)
        steps = whole_number("sampling steps", steps, 1, MAX_STEPS)
        pipeline = cached_pipeline(source)
        class_label = class_label_of(pipeline, grid_class, strict=False)
        from core.pipeline import takes_prompts

        prompt = grid_prompt_of(pipeline, grid_prompt) if takes_prompts(pipeline) else None
        grid = shipped_grid(source, seed, steps, class_label, prompt)  # the embedded models at the defaults
        if grid is None:
            grid = make_grid(dense_samples(source, steps, seed, class_label, prompt), columns=4, scale=4)
    except ValueError as error:
        raise _user_error(error) from error
    return (grid, model_card(source, pipeline), class_update(pipeline, grid_class),
            prompt_update(pipeline, prompt))


def pick_embedded(name):
    """The model picker: the source box's text for an embedded model (empty for the default)."""
    from core.default_model import EMBEDDED_MODELS

    if name not in EMBEDDED_MODELS:
        raise gr.Error(f"embedded model must be one of {list(EMBEDDED_MODELS)}, got {_short(name)}")
    return "" if name == next(iter(EMBEDDED_MODELS)) else name


def model_card(source, pipeline) -> str:
    from core.models import adapter_for

    adapter = adapter_for(pipeline)
    denoiser = adapter.denoiser(pipeline)
    params = sum(p.numel() for p in denoiser.parameters())
    channels, height, width = adapter.image_shape(pipeline)
    name = normalise_source(source) or "embedded default (DDPM, Fashion-MNIST)"
    classes = adapter.num_classes(pipeline)
    return (f"**Model:** {name} ({adapter.name}: {type(denoiser).__name__})  \n{params / 1e6:.2f} M denoiser parameters, "
            f"images {height}x{width} x {channels} ch" + (f", {classes} classes (uniform in samples)" if classes else ""))


# ------------------------------------------------------------------------------ results tables
def model_label(source) -> str:
    key = normalise_source(source)
    return "default" if key is None else key


def chart_label(source, sampler: str = "ddim") -> str:
    """The model as the results charts name a run's rows: its label, with the sampler when it is
    not DDIM (so runs with different samplers are never drawn as comparable)."""
    name = next((label for label, value in SAMPLERS.items() if value == sampler), sampler)
    return model_label(source) + ("" if sampler == "ddim" else f", {name}")


def results_table():
    """The app's stored runs and sweeps on this machine plus the shipped benchmark table, with the
    settings columns (model, samples, steps, reference) the charts facet by."""
    import pandas as pd

    frames = []
    try:
        stored = get_store().to_dataframe()
        if len(stored) and "criterion" in stored and "model" in stored:
            frames.append(stored[stored["criterion"].notna() & stored["model"].notna()].assign(source="this machine"))
    except ValueError:
        pass
    if SHIPPED_RESULTS.exists():
        frames.append(pd.read_csv(SHIPPED_RESULTS).assign(source="shipped benchmark", model="default"))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def shipped_settings() -> tuple | None:
    """The shipped benchmark's settings (the charts' first facet before any run)."""
    import pandas as pd

    if not SHIPPED_RESULTS.exists():
        return None
    dense = pd.read_csv(SHIPPED_RESULTS).iloc[0]
    return ("default", int(dense["num_samples"]), int(dense["num_inference_steps"]), dense["reference"])


def frontier_table(settings: tuple | None, scheduler: str = "ddim"):
    """The dense model at fewer sampling steps under ``settings`` and ``scheduler``: the shipped
    measurement (``benchmarks/dense_frontier.py``, DDIM) or the rows this app measured
    (``dense_frontier``; rows without a sampler are DDIM)."""
    import pandas as pd

    if settings is None:
        return None
    model, samples, steps, reference = settings
    frames = []
    if model == "default" and scheduler == "ddim" and SHIPPED_DENSE_STEPS.exists():
        shipped = pd.read_csv(SHIPPED_DENSE_STEPS)
        shipped = shipped[(shipped["num_samples"] == samples) & (shipped["base_steps"] == steps)
                          & (shipped["reference"] == reference)]
        frames.append(shipped)
    try:
        stored = get_store().to_dataframe()
        if len(stored) and "frontier_of" in stored:
            rows = stored[(stored["frontier_of"] == model) & (stored["num_samples"] == samples)
                          & (stored["base_steps"] == steps) & (stored["reference"] == reference)]
            if "scheduler" in rows:
                rows = rows[rows["scheduler"].fillna("ddim") == scheduler]
            elif scheduler != "ddim":
                rows = rows.iloc[0:0]
            frames.append(rows)
    except ValueError:
        pass
    frames = [f for f in frames if len(f)]
    if not frames:
        return None
    table = pd.concat(frames, ignore_index=True).drop_duplicates(subset=["num_inference_steps"], keep="last")
    return table.sort_values("num_inference_steps")


def results_charts(settings=None, current: dict | None = None, quality: str = "kid", scheduler: str = "ddim"):
    table = results_table()
    settings = settings or shipped_settings()
    frontier = frontier_table(settings, scheduler)
    return (safe_view(figures.pareto, table, settings, current, quality, frontier),
            safe_view(figures.quality_vs_sparsity, table, settings, current, quality))


def safe_view(builder, *args, **kwargs):
    """``builder(*args)``, or a one-line note in its place when it cannot be drawn."""
    try:
        return builder(*args, **kwargs)
    except Exception as error:  # noqa: BLE001 - one broken view must not take the run with it
        name = getattr(builder, "__name__", "view").replace("_", " ")
        return figures.empty_figure(f"{name} could not be drawn: {type(error).__name__}: {str(error)[:80]}")


# ------------------------------------------------------------------------------ queue and cancel
def cancel_run(request: gr.Request = None):
    session = getattr(request, "session_hash", None) or "local"
    with _QUEUE_LOCK:
        active = session in _RUNNING or session in _WAITING
        if session in _WAITING:
            _WAITING.remove(session)
    if not active:  # nothing to cancel: a stale mark would stop this user's next run
        return "No run of yours is waiting or running."
    _CANCELLED.add(session)
    return "Cancelling: the run stops at its next stage; the previous results stay."


def announce_run(request: gr.Request = None) -> str:
    """A plain sentence for the status line while the run waits for the one compute slot."""
    session = getattr(request, "session_hash", None) or "local"
    with _QUEUE_LOCK:
        ahead = len(_RUNNING) + len([s for s in _WAITING if s != session])
        if session not in _WAITING:
            _WAITING.append(session)
    if ahead == 0:
        return "Starting your run now."
    runs = "run is" if ahead == 1 else "runs are"
    return (f"Your run is waiting: you are number {ahead + 1} in line ({ahead} {runs} ahead of yours; this machine "
            "computes one run at a time). It starts by itself; the progress bar appears here when it does.")


def _start_compute(session: str) -> None:
    with _QUEUE_LOCK:
        if session in _WAITING:
            _WAITING.remove(session)
        _RUNNING.add(session)


def _end_compute(session: str) -> None:
    with _QUEUE_LOCK:
        _RUNNING.discard(session)
    _CANCELLED.discard(session)


def _progress_callback(progress, session):
    """``core``'s ``progress(fraction, message)`` onto the page's bar. After the user pressed
    Cancel it raises ``RunCancelled`` once (the mark is used up): ``core.run`` then stops the run,
    or, while the recovery trains, only the recovery."""
    def callback(fraction: float, message: str) -> None:
        if session in _CANCELLED:
            _CANCELLED.discard(session)
            raise RunCancelled("run cancelled")
        if progress is not None:
            progress(max(0.0, min(1.0, fraction)), desc=message)
    return callback


# ------------------------------------------------------------------------------ run
QUALITY_METRICS = {"KID": ("kid",), "FID + KID": ("fid", "kid"), "none": ()}


def check_counts(num_samples, steps):
    num_samples = whole_number("number of samples", num_samples, 2, MAX_SAMPLES)
    steps = whole_number("sampling steps", steps, 1, MAX_STEPS)
    return num_samples, steps


def check_sampler(sampler) -> str:
    if not isinstance(sampler, str) or sampler not in SAMPLERS.values():
        raise ValueError(f"sampler must be one of {list(SAMPLERS.values())}, got {_short(sampler)}")
    return sampler


def check_quality(quality) -> tuple:
    if not isinstance(quality, str) or quality not in QUALITY_METRICS:
        raise ValueError(f"quality metric must be one of {list(QUALITY_METRICS)}, got {_short(quality)}")
    return QUALITY_METRICS[quality]


def evaluation_reference(source) -> str:
    """The embedded models (trained on Fashion-MNIST) are measured against the shipped Fashion-MNIST
    test images; any other model against its own dense samples (distance from the teacher), since
    hub models come with no dataset."""
    from core.catalog import catalog

    key = normalise_source(source)
    return "fashion-mnist-test" if key is None or key in catalog()["embedded_models"] else "dense"


RECOVERY_DATA = {"shipped training images": "fashion-mnist-train", "generated by the dense model": "generated",
                 "my images (upload)": None}
MAX_UPLOADED_IMAGES = 5000


def recovery_from_controls(recovery_steps, recovery_lr, recovery_batch, distill, recovery_data, recovery_files) -> dict:
    """The recovery stage's settings from its controls (``steps`` 0 = off); a ValueError names the field."""
    from core.recovery import MAX_RECOVERY_BATCH, MAX_RECOVERY_STEPS, check_recovery

    steps = whole_number("recovery steps", recovery_steps, 0, MAX_RECOVERY_STEPS)
    lr = real_number("recovery learning rate", recovery_lr, 1e-7, 0.1)
    batch = whole_number("recovery batch size", recovery_batch, 1, MAX_RECOVERY_BATCH)
    if not isinstance(distill, bool):
        raise ValueError(f"distill from the dense model must be true or false, got {_short(distill)}")
    if not isinstance(recovery_data, str) or recovery_data not in RECOVERY_DATA:
        raise ValueError(f"recovery data must be one of {list(RECOVERY_DATA)}, got {_short(recovery_data)}")
    data = RECOVERY_DATA[recovery_data]
    if data is None and steps > 0:
        data = _uploaded_folder(recovery_files)
    check_recovery(steps, lr, batch, data or "generated")
    return dict(steps=steps, lr=lr, batch_size=batch, distill=distill, data=data or "generated")


def _uploaded_folder(files) -> str:
    """The uploaded recovery images gathered in one folder (links to gradio's uploaded copies)."""
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    paths = [Path(getattr(f, "name", f)) for f in (files or []) if f]
    if not paths:
        raise ValueError("recovery images: upload at least one image (recovery data is 'my images (upload)')")
    if len(paths) > MAX_UPLOADED_IMAGES:
        raise ValueError(f"recovery images: at most {MAX_UPLOADED_IMAGES:,} images, got {len(paths):,}")
    folder = Path(tempfile.mkdtemp(prefix="recovery-images-", dir=_EXPORT_ROOT))
    for index, path in enumerate(paths):
        if not path.is_file():
            raise ValueError(f"recovery images: {path.name!r} is not an uploaded file")
        target = folder / f"{index:05d}{path.suffix.lower()}"
        try:
            target.symlink_to(path.resolve())
        except OSError:
            shutil.copyfile(path, target)
    return str(folder)


def check_spec_on_model(dense, spec) -> None:
    """What the spec asks of this model, checked from its structure alone (before any work): the
    family can take the granularity, the target sparsity is reachable (whole heads / FFN neurons)
    and the schedule's timesteps lie within the model's training timesteps."""
    from core.granularities import GRANULARITIES
    from core.pipeline import adapter_of
    from core.schedules import check_schedule_params

    adapter, denoiser = adapter_of(dense), _denoiser(dense)
    adapter.check_cut(adapter.denoiser_name, denoiser, spec.granularity_name)
    granularity = GRANULARITIES[spec.granularity_name]
    granularity.check(denoiser, spec)
    if granularity.units_to_remove is not None:
        granularity.units_to_remove(denoiser, spec)  # refuses a sparsity the cut cannot reach
    if spec.schedule is not None:
        check_schedule_params(spec.schedule, dict(spec.schedule_params), adapter.num_train_timesteps(dense))


def validate_run(*values, **named) -> dict:
    """Every field of a run, checked before anything changes on screen (the model is loaded: a
    source that cannot be loaded, a granularity the model cannot take and recovery data that do
    not fit the model are field errors too). Takes the Prune tab's controls (``RUN_CONTROLS``: in
    the page's order, or by name); returns the spec, the dense model and the ``core.run``
    settings. Raises ``gr.Error`` naming the field and what is allowed."""
    from core.criteria import CRITERIA
    from core.fit import check_fit
    from core.recovery import RECOVERY_DEFAULTS, recovery_images
    from core.run import EvaluationSettings, RecoverySettings

    c = collect_controls(RUN_CONTROLS, values, named, RUN_DEFAULTS)
    try:
        normalise_source(c.source)
        num_samples, steps = check_counts(c.num_samples, c.steps)
        metrics, sampler = check_quality(c.quality), check_sampler(c.sampler)
        spec = spec_from_controls(**{name: getattr(c, name) for name in SPEC_CONTROLS})
        recovery = recovery_from_controls(
            c.recovery_steps, RECOVERY_DEFAULTS["lr"] if c.recovery_lr is None else c.recovery_lr,
            RECOVERY_DEFAULTS["batch_size"] if c.recovery_batch is None else c.recovery_batch, c.distill,
            c.recovery_data, c.recovery_files)
        if not isinstance(c.export_oneshot, bool):
            raise ValueError(f"export the one-shot model too must be true or false, got {_short(c.export_oneshot)}")
        dense = cached_pipeline(c.source)
        check_fit(dense, spec.criterion, device=next(_denoiser(dense).parameters()).device,
                  label=f"model {model_label(c.source)}")
        check_spec_on_model(dense, spec)
        class_label, prompt = class_label_of(dense, c.grid_class), grid_prompt_of(dense, c.grid_prompt)
        prompts = calibration_prompts_of(dense, c.calibration_prompts)
        if prompts is not None and CRITERIA[spec.criterion].needs_calibration:  # else ignored, as the batch sizes
            spec = spec.replace(calibration_prompts=list(prompts))
        if recovery["steps"] and recovery["data"] != "generated":
            recovery_images(dense, recovery["data"])  # the data fit the model: checked before any work
        evaluation = EvaluationSettings(num_samples=num_samples, steps=steps, metrics=metrics, grid_images=GRID_IMAGES,
                                        reference=evaluation_reference(c.source), class_label=class_label,
                                        prompt=prompt, scheduler=sampler)
    except ValueError as error:
        raise _user_error(error) from error
    return dict(source=c.source, spec=spec, dense=dense, metrics=metrics, evaluation=evaluation,
                recovery=RecoverySettings(**recovery), export_oneshot=c.export_oneshot)


def check_run(*values, **named) -> None:
    """The page's validation step (no outputs): raises the field's ``gr.Error`` or returns."""
    validate_run(*values, **named)


def summary_table(run):
    """One column per stage of a ``core.run.RunResult``: dense, one-shot (the pruned model as it
    left the pruner) and, after a recovery, recovered (same architecture and zeros as one-shot:
    same parameters, MACs, latency)."""
    import pandas as pd

    result, tuned, recovery, timing = run.pruned, run.recovered, run.recovery, run.timing
    totals = result.report.totals
    stages = ["dense", "one-shot"] + (["recovered"] if tuned is not None else [])
    rows_of = [run.evaluations.get(stage) or {} for stage in stages]

    def fmt(value, pattern="{:,.0f}"):
        return "" if value is None else pattern.format(value)

    def same(dense_value, pruned_value):  # the recovered model shares the one-shot architecture
        return [dense_value, pruned_value] + ([pruned_value] if tuned is not None else [])

    def latency(kind):
        steps, batch = timing["num_inference_steps"], timing["batch_size"]
        return (f"{timing[f'{kind}_s_per_image']:.4f} s ({timing[f'{kind}_step_min_s'] * steps / batch:.4f}-"
                f"{timing[f'{kind}_step_max_s'] * steps / batch:.4f})")

    only_pruned = [""] if tuned is not None else []
    rows = [
        ["spec", "dense", result.spec.label] + ([f"{result.spec.label} + {recovery['steps']:,} recovery steps"]
                                               if tuned is not None else []),
        ["parameters", *same(fmt(totals["params_before"]), fmt(totals["params_after"]))],
        ["MACs per forward", *same(fmt(totals["macs_before"]), fmt(totals["macs_after"]))],
        ["non-zero weights", *[fmt(r.get("nonzero_params")) for r in rows_of]],
        ["sparsity of prunable weights", *same("0%", fmt(totals["sparsity"], "{:.1%}"))],
        *([["sparsity shortfall", *same("", totals["sparsity_shortfall"])]] if totals.get("sparsity_shortfall") else []),
        ["structural ratio", *same("", fmt(totals.get("structural_ratio"), "{:.3f}"))],
    ]
    if timing:
        rows += [[f"latency / image at {timing['num_inference_steps']} steps (median; range)",
                  *same(latency("dense"), latency("pruned"))],
                 ["speed-up (paired: dense / pruned)", *same("1.00x", speedup_text(timing, result.spec.granularity))]]
    else:
        rows.append(["latency", *same("not timed", "not timed")])
    rows += [
        ["FID", *[fmt(r.get("fid"), "{:.2f}") for r in rows_of]],
        ["KID (± std)", *[kid_text(r) for r in rows_of]],
        ["samples / reference", *[f"{r.get('num_samples')} / {r.get('reference')}" for r in rows_of]],
        ["pruning wall time", "", fmt(totals.get("wall_time_s"), "{:.1f} s")] + only_pruned,
        ["timesteps used", "", timesteps_text(result)] + only_pruned,
    ]
    prompts = calibration_prompts_text(result)
    if prompts:
        rows.append(["calibration prompts", "", prompts] + only_pruned)
    if run_notes.calibration_reuse(totals):
        rows.append(["calibration", "", run_notes.calibration_reuse(totals)] + only_pruned)
    if tuned is not None:
        rows += _recovery_rows(tuned, recovery)
        warning = next((run_notes.recovery_warning(run.evaluations, q) for q in ("kid", "fid")
                        if run_notes.recovery_warning(run.evaluations, q)), "")
        if warning:
            rows.append(["warning", "", "", warning])
    return pd.DataFrame(rows, columns=["", *stages])


def _recovery_rows(tuned, recovery: dict) -> list:
    """The summary's recovery rows (the recovered column only)."""
    losses = tuned.losses
    return [
        ["recovery", "", "", f"{recovery['steps']:,} steps, lr {recovery['lr']:g}, batch {recovery['batch_size']}, "
                             + ("distilled from the dense model" if recovery["distill_from_dense"] else "no distillation")],
        ["recovery data", "", "", recovery["data"]],
        ["recovery wall time", "", "", f"{tuned.wall_time_s:.1f} s"],
        ["recovery loss (first 10 -> last 10 steps)", "", "",
         f"{losses['loss'].head(10).mean():.4f} -> {losses['loss'].tail(10).mean():.4f}" if len(losses) else ""],
    ]


def speedup_text(timing: dict, granularity=None) -> str:
    """The summary's speed-up cell: "about 1.0x" whenever the paired range contains 1 or the
    weights are only zeroed (unstructured, N:M), else the median."""
    measured = (f"range {timing['speedup_low']:.2f}-{timing['speedup_high']:.2f}x over {timing['rounds']} paired "
                f"rounds, timed in {timing['seconds']:.1f} s")
    if verdict.is_masked(granularity):
        return f"about 1.0x: zeroed weights run at dense speed ({measured})"
    if timing["within_noise"]:
        return f"about 1.0x, within timing noise ({measured})"
    return f"{timing['speedup']:.2f}x ({measured})"


def latency_sentence(timing: dict | None, granularity=None) -> str:
    """The speed in one sentence (``verdict.speed_text``)."""
    return verdict.speed_text(timing, granularity) if timing or verdict.is_masked(granularity) else "latency not timed"


def kid_text(row: dict) -> str:
    if row.get("kid") is None:
        return ""
    return f"{row['kid']:.4f} ± {row.get('kid_std') or 0:.4f}"


def timesteps_text(result) -> str:
    weights = result.report.timestep_weights
    if weights is None or len(weights) == 0:
        return "none"
    text = f"{len(weights)} (t = {int(weights['t'].min())} .. {int(weights['t'].max())})"
    stopped = result.report.totals.get("schedule_stopped_at")
    return text + (f", threshold stopped at t = {stopped}" if stopped is not None else "")


def calibration_prompts_text(result) -> str:
    """The summary's line on what a text-to-image calibration ran on ("" for other models and for
    criteria without calibration)."""
    from core.criteria import CRITERIA
    from core.pipeline import takes_prompts
    from core.prompts import CALIBRATION_PROMPTS

    if not CRITERIA[result.spec.criterion].needs_calibration or not takes_prompts(result.pipeline):
        return ""
    mine = result.spec.calibration_prompts
    if mine is None:
        return f"the {len(CALIBRATION_PROMPTS)} shipped captions"
    return f"{len(mine):,} of yours (first: {_short(mine[0], 60)})"


def recovery_note(result, tuned=None, cancel_note: str = "") -> str:
    """Next to the grids: which stages are shown and, for a one-shot structured result, that such
    models need recovery (with the shipped 2,000-step comparison, docs/benchmarks.md *The same
    2,000-step budget for every method*)."""
    from core.granularities import GRANULARITIES

    if tuned is not None:
        return (f"**Dense | one-shot | recovered**, all from the same noise: the recovered model is the one-shot "
                f"model after {tuned.steps:,} fine-tuning steps ({tuned.wall_time_s:.0f} s; loss curve in the "
                "*Recovery* tab). The export holds the recovered model.")
    if not GRANULARITIES[result.spec.granularity_name].structural or result.report.totals.get("sparsity", 0) <= 0.001:
        return cancel_note
    text = ((cancel_note + " ") if cancel_note else "") + (
        f"**One-shot structured pruning ({result.spec.granularity}, no fine-tuning).** Removing whole "
        "channels or heads without retraining usually damages samples badly; such models need recovery "
        "fine-tuning before they are judged: set *recovery steps* above 0.")
    entries = shipped_recovery()
    if entries:
        parts = [f"{e['label']} {e['before']:.1f} → {e['after']:.1f}" for e in entries]
        first = entries[0]
        text += (f" Shipped results on the default model ({first['sparsity']:.0%} channel sparsity, {first['steps']:,} "
                 f"fine-tuning steps, FID of {first['samples']} samples): " + "; ".join(parts)
                 + f"; dense {first['dense']:.1f} (chart in the *Recovery* tab).")
    return text


def _export_zip(run, work: Path, session: str) -> str:
    """The run's export (``core.export``, written by ``core.run`` into ``work/models``) zipped in
    ``work``: the recovered model when there is one (``pruned-model/``) and, on request, the
    one-shot model (``one-shot-model/``); the zip name carries criterion, granularity, sparsity and
    recovery steps. The session's previous export is deleted (each user keeps only the latest)."""
    from core.export import archive_name, zip_folders

    steps = run.recovery["steps"] if run.recovered is not None else 0
    archive = zip_folders(run.exported, work / archive_name(run.spec, run.pruned.report.totals, steps))
    shutil.rmtree(run.export, ignore_errors=True)
    previous = _LATEST_EXPORT.get(session)
    _LATEST_EXPORT[session] = work
    if previous is not None and previous != work:
        shutil.rmtree(previous, ignore_errors=True)
    return str(archive)


def export_folders() -> list[Path]:
    """The export folders that exist now (one per session at most)."""
    return sorted(p for p in _EXPORT_ROOT.iterdir() if p.is_dir()) if _EXPORT_ROOT.exists() else []


def app_row(spec, settings: tuple, pruned_row: dict, timing: dict | None, totals: dict, finetune_steps: int = 0) -> dict:
    """A row this run adds to the results charts (stored in the results store): the one-shot
    result, or (``finetune_steps`` > 0) the recovered one."""
    model, samples, steps, reference = settings
    return dict(
        kind="app-run", criterion=spec.criterion, granularity=spec.granularity, sparsity=spec.sparsity,
        measured_sparsity=totals["sparsity"], finetune_steps=finetune_steps, model=model, num_samples=samples,
        num_inference_steps=steps, reference=reference, fid=pruned_row.get("fid"), kid=pruned_row.get("kid"),
        kid_std=pruned_row.get("kid_std"), speedup=timing["speedup"] if timing else None,
        speedup_low=timing["speedup_low"] if timing else None, speedup_high=timing["speedup_high"] if timing else None,
        params=totals["params_after"], macs=totals["macs_after"], spec_json=spec.to_json(),
    )


def _failure_text(error: Exception) -> str:
    """The status line of a run that did not finish (every pane keeps its previous content)."""
    if isinstance(error, RunCancelled):
        return "Run cancelled; the previous results are kept."
    first = str(error).splitlines()[0] if str(error) else ""
    if isinstance(error, ValueError):  # a model-dependent refusal the checks could not foresee
        return f"**Failed:** {first[:300]} The previous results are kept."
    return f"**Failed** ({type(error).__name__}: {first[:200]}). The previous results are kept."


def run_prune(*values, request=None, progress=None, **named):
    """Prune a copy of the cached dense model, optionally recover it by fine-tuning, evaluate every
    stage, time dense and pruned paired and export: one ``core.run.run``; then build every view.
    Takes the Prune tab's controls (``RUN_CONTROLS``: in the page's order, or by name);
    ``progress`` is a ``gr.Progress``-like callable, ``request`` names the session."""
    from core.export import ExportSettings
    from core.run import TimingSettings, run

    checked = validate_run(*values, **named)  # raises gr.Error before anything changes
    evaluation = checked["evaluation"]
    session = getattr(request, "session_hash", None) or "local"
    work = Path(tempfile.mkdtemp(prefix="export-", dir=_EXPORT_ROOT))
    export = ExportSettings(out=str(work / "models"), include_oneshot=checked["export_oneshot"],
                            dense_label=normalise_source(checked["source"]) or "embedded default model")
    _start_compute(session)
    try:
        dense_images = dense_samples(checked["source"], evaluation.steps, checked["spec"].seed, evaluation.class_label,
                                     evaluation.prompt, evaluation.scheduler)
        outcome = run(checked["dense"], checked["spec"], recovery=checked["recovery"], evaluation=evaluation,
                      timing=TimingSettings(), export=export, progress=_progress_callback(progress, session),
                      store=get_store(), dense_images=dense_images)
        if outcome.errors:  # the app shows a run whole or not at all
            raise next(iter(outcome.errors.values()))
        archive = _export_zip(outcome, work, session)
    except Exception as error:  # noqa: BLE001 - keep the server and the screen
        shutil.rmtree(work, ignore_errors=True)
        return _kept(_failure_text(error))
    finally:
        _end_compute(session)
    return build_outputs(checked, outcome, archive)


@gpu_run_task
def run_prune_event(request: gr.Request = None, progress=gr.Progress(), **controls):
    """:func:`run_prune` as the page and the API endpoint ``/run_prune`` call it: the controls by
    name (gradio's ``inputs_kwargs``), the session and the progress bar from gradio."""
    return run_prune(request=request, progress=progress, **controls)


RUN_OUTPUTS = 21
PAIR_KINDS = ("dense | one-shot", "dense | recovered", "one-shot | recovered")


def _kept(message: str):
    """Every output left as it is, the status line saying why."""
    return (message,) + tuple(gr.skip() for _ in range(RUN_OUTPUTS - 1))


def _store_app_rows(checked: dict, run, settings: tuple) -> list[dict]:
    """This run's rows of the results charts (one-shot and, after a recovery, recovered), kept in
    the results store under the run's settings."""
    from core.store import key_for, model_hash

    spec, totals, timing = run.spec, run.pruned.report.totals, run.timing
    recovery = _recovery_key(checked["recovery"])
    rows = [app_row(spec, settings, run.evaluations["one-shot"], timing, totals)]
    if run.recovered is not None:
        rows.append(app_row(spec, settings, run.evaluations["recovered"], timing, totals,
                            finetune_steps=recovery["steps"]))
    dense_hash = model_hash(_denoiser(checked["dense"]))
    for entry in rows:
        try:
            get_store().put(key_for(dense_hash, {"app_run": 1, "settings": list(settings),
                                                 "metrics": list(checked["metrics"]),
                                                 "finetune_steps": entry["finetune_steps"],
                                                 "recovery": recovery if entry["finetune_steps"] else None}, spec), entry)
        except (OSError, ValueError):
            pass  # the charts then lack this run's stored copy; "this run" is still drawn
    return rows


def _recovery_key(settings) -> dict:
    """The recovery settings as stored rows and charts name them."""
    return dict(steps=settings.steps, lr=settings.lr, batch_size=settings.batch_size, distill=settings.distill,
                data=settings.data)


def _pairs(run) -> tuple[dict, list]:
    """The slider's state (every stage's grid images and the pair shown first) and the pairs offered."""
    images = {stage: _to_pil(run.images[stage]) for stage in ("dense", "one-shot", "recovered") if stage in run.images}
    kinds = [kind for kind in PAIR_KINDS if all(stage in images for stage in kind.split(" | "))]
    return dict(images=images, kind=kinds[-1] if run.recovered is not None else kinds[0]), kinds


def _status(run, quality_key: str, cancel_note: str) -> str:
    spec, totals, rows = run.spec, run.pruned.report.totals, run.evaluations
    stage_text = ""
    if run.recovered is not None:
        stage_text = (f" Recovered with {run.recovery['steps']:,} steps in {run.recovered.wall_time_s:.1f} s: "
                      f"{quality_key.upper()} {_quality_text(rows['one-shot'], quality_key)} one-shot → "
                      f"{_quality_text(rows['recovered'], quality_key)} recovered (dense "
                      f"{_quality_text(rows['dense'], quality_key)}).")
    return (f"**Done** in {run.seconds:.1f} s ({totals['wall_time_s']:.1f} s pruning): {spec.label}. "
            f"Size: {verdict.size_text(totals, spec.granularity)}; speed: {verdict.speed_text(run.timing, spec.granularity)}."
            + stage_text + (f" {cancel_note}" if cancel_note else "") + _warnings(run, quality_key))


def _warnings(run, quality_key: str) -> str:
    """The status line's extra lines: a recovery that made quality worse, a reused calibration."""
    lines = [run_notes.recovery_warning(run.evaluations, quality_key)]
    reused = run_notes.calibration_reuse(run.pruned.report.totals)
    lines.append(f"Calibration {reused}." if reused else "")
    return "".join(f"  \n{line}" for line in lines if line)


def verdict_card(run, quality_key: str) -> str:
    """The verdict card beside the controls (``verdict.verdict``)."""
    steps = run.recovery["steps"] if run.recovered is not None else 0
    return verdict.verdict(run.spec.granularity, run.pruned.report.totals, run.timing, run.evaluations, quality_key,
                           steps)


def build_outputs(checked: dict, run, archive: str):
    """The run's views; each one that cannot be drawn becomes a note, the others and the export stay."""
    from core import make_grid

    spec, report, rows, tuned = run.spec, run.pruned.report, run.evaluations, run.recovered
    recovery = _recovery_key(checked["recovery"])
    settings = (chart_label(checked["source"], checked["evaluation"].scheduler), rows["one-shot"]["num_samples"],
                rows["one-shot"]["num_inference_steps"], rows["one-shot"]["reference"])
    current = [dict(entry, sparsity=report.totals["sparsity"]) for entry in _store_app_rows(checked, run, settings)]
    metrics = checked["metrics"]
    quality_key = "kid" if "kid" in metrics else ("fid" if "fid" in metrics else "kid")
    pareto_figure, sparsity_figure = results_charts(settings, current, quality_key, checked["evaluation"].scheduler)
    timesteps = report.timestep_weights.merge(report.calibration_loss, on="t", how="left")
    cancel_note = "" if run.recovery_stopped_at is None else (
        f"Recovery cancelled at step {run.recovery_stopped_at:,} of {recovery['steps']:,}: the one-shot result is shown.")
    pairs, kinds = _pairs(run)
    schedule_figure = gr.skip() if spec.schedule != "threshold" else safe_view(
        figures.threshold_walk, timesteps, report.totals.get("schedule_stopped_at"),
        spec.schedule_params.get("threshold", 0.05))
    return (
        _status(run, quality_key, cancel_note),
        safe_view(summary_table, run),
        make_grid(run.images["dense"], columns=4, scale=4),
        make_grid(run.images["one-shot"], columns=4, scale=4),
        select_pair(0, pairs["kind"], pairs),
        gr.update(maximum=max(1, len(pairs["images"]["dense"]) - 1), value=0),
        pairs,
        safe_view(figures.importance_heatmap, report.importance,
                  pruned=run_notes.pruned_units(report.importance, _denoiser(run.pruned.pipeline), spec.granularity)),
        safe_view(figures.layer_timestep_heatmap, report.timestep_contributions, _group_sizes(report)),
        safe_view(figures.layer_sparsity_bars, report.layers[report.layers["prunable"]]),
        safe_view(figures.timesteps_used, timesteps, title=_timesteps_title(report)),
        pareto_figure,
        sparsity_figure,
        archive,
        recovery_note(run.pruned, tuned, cancel_note),
        schedule_figure,
        make_grid(run.images["recovered"], columns=4, scale=4) if tuned is not None else None,
        safe_view(figures.recovery_losses, tuned.losses, recovery) if tuned is not None else
        figures.empty_figure(cancel_note or "no recovery in this run (recovery steps = 0)"),
        gr.update(choices=kinds, value=pairs["kind"]),
        safe_view(figures.recovery_comparison, shipped_recovery(quality_key), _run_recovery(spec, rows, recovery, quality_key)),
        safe_view(verdict_card, run, quality_key),
    )


def _quality_text(row: dict | None, quality: str) -> str:
    value = (row or {}).get(quality)
    return "n/a" if value is None else (f"{value:.4f}" if quality == "kid" else f"{value:.1f}")


def _run_recovery(spec, rows: dict, recovery: dict, quality: str) -> dict | None:
    """This run's one-shot → recovered pair for the recovery chart (None without recovery)."""
    pruned_row, recovered_row = rows["one-shot"], rows.get("recovered")
    if recovered_row is None or pruned_row.get(quality) is None:
        return None
    return dict(label=f"this run: {spec.criterion} · {spec.granularity}", quality=quality,
                before=pruned_row.get(quality), after=recovered_row.get(quality), dense=rows["dense"].get(quality),
                steps=recovery["steps"], samples=pruned_row.get("num_samples"))


def shipped_recovery(quality: str = "fid") -> list[dict]:
    """The shipped 2,000-step recovery comparison (docs/benchmarks.md; ``benchmarks/results/obs.json``): one
    entry per method with ``quality`` (``fid`` or ``kid``) one-shot and recovered, and the dense model's."""
    try:
        shipped = json.loads(SHIPPED_RECOVERY.read_text())["finetune"]
    except (OSError, KeyError, ValueError):
        return []
    results, settings = shipped["results"], shipped["settings"]
    entries = []
    for key, label in (("taylor/channel", "taylor"), ("nici/channel", "nici + distillation"), ("obs/channel", "obs")):
        row = results.get(key)
        if not row:
            continue
        entries.append(dict(label=label, quality=quality, before=row["before_finetune"][quality],
                            after=row["after_finetune"][quality], dense=results["dense"][quality], steps=settings["steps"],
                            samples=settings["num_samples"], sparsity=row.get("sparsity"),
                            inference_steps=settings.get("inference_steps")))
    return entries


def _group_sizes(report) -> dict:
    """Timesteps in each column group of ``timestep_contributions`` (the last may be smaller)."""
    table, weights = report.timestep_contributions, report.timestep_weights
    if table is None or len(table) == 0 or weights is None or len(weights) == 0:
        return {}
    starts = sorted(int(c) for c in table.columns)
    visited = sorted(int(t) for t in weights["t"])
    sizes = {}
    for index, start in enumerate(starts):
        end = starts[index + 1] if index + 1 < len(starts) else math.inf
        sizes[start] = max(1, sum(1 for t in visited if start <= t < end))
    return {column: sizes[int(column)] for column in table.columns}


def _timesteps_title(report) -> str:
    stopped = report.totals.get("schedule_stopped_at")
    title = f"Timesteps used: {report.totals.get('schedule') or 'none'}"
    return title + (f" (threshold stopped at t = {stopped})" if stopped is not None else "")


def _to_pil(images):
    from core import to_pil

    return [image.resize((image.width * 8, image.height * 8)) for image in to_pil(images)]


def select_pair(index, kind, pairs=None):
    """The slider's pair: image ``index`` of the two stages named by ``kind`` (``PAIR_KINDS``)."""
    if pairs is None:  # the former two-argument form: (index, pairs)
        kind, pairs = None, kind
    if not pairs or not isinstance(pairs, dict) or not pairs.get("images"):
        raise gr.Error("run a prune first: the slider compares one pair of images of the last run")
    images = pairs["images"]
    kind = kind or pairs.get("kind") or PAIR_KINDS[0]
    if kind not in PAIR_KINDS or not all(stage in images for stage in kind.split(" | ")):
        available = [k for k in PAIR_KINDS if all(stage in images for stage in k.split(" | "))]
        raise gr.Error(f"pair to compare must be one of {available} for this run, got {_short(kind)}")
    try:
        index = whole_number("pair index", index, 0, len(images["dense"]) - 1)
    except ValueError as error:
        raise _user_error(error) from error
    left, right = kind.split(" | ")
    return images[left][index], images[right][index]


@gpu_task
def dense_frontier(source, num_samples, steps, seed, quality, sampler="ddim", progress=gr.Progress()):
    """After a run: the dense model at fewer sampling steps under the run's settings and sampler
    (``core.frontier``; stored, so measured once per model and settings), then the
    quality-vs-latency chart redrawn with it."""
    try:
        num_samples, steps = check_counts(num_samples, steps)
        seed = whole_number("seed", seed, 0, MAX_SEED)
        metrics, sampler = check_quality(quality), check_sampler(sampler)
        dense = cached_pipeline(source)
    except ValueError:
        return gr.skip()
    if not metrics:
        return gr.skip()
    from core.frontier import FrontierSettings, fewer_steps
    from core.frontier import dense_frontier as measure_frontier

    model, reference = chart_label(source, sampler), evaluation_reference(source)
    try:
        measure_frontier(dense, fewer_steps(steps) + [steps],
                         FrontierSettings(num_samples=num_samples, base_steps=steps, seed=seed, metrics=metrics,
                                          reference=reference, label=model, scheduler=sampler),
                         store=get_store(), progress=lambda fraction, message: progress(fraction, desc=message))
    except Exception:  # noqa: BLE001 - the frontier is an extra; the run's chart stays as it is
        return gr.skip()
    settings = (model, num_samples, steps, reference)
    quality_key = "kid" if "kid" in metrics else "fid"
    table = results_table()
    rows, _ = figures.comparable(table, settings)
    current = None
    if len(rows) and "kind" in rows:
        mine = rows[rows["kind"] == "app-run"]
        if len(mine):
            current = mine.iloc[-1].to_dict()
    return safe_view(figures.pareto, table, settings, current, quality_key, frontier_table(settings, sampler))


def shipped_frontier_rows(model: str = "default", scheduler: str = "ddim"):
    """The shipped frontier benchmark's rows (``frontier.csv``) of ``model`` (``"default"`` or an
    embedded model's folder, ``assets/<name>``) sampled with ``scheduler``; None when none is shipped."""
    import pandas as pd

    if not SHIPPED_FRONTIER.exists():
        return None
    table = pd.read_csv(SHIPPED_FRONTIER)
    if "model" in table:
        table = table[table["model"] == model]
    if "scheduler" in table:
        table = table[table["scheduler"] == scheduler]
    return table


def frontier_figure(quality: str = "kid", model: str = "default", scheduler: str = "ddim"):
    """The shipped dense-frontier benchmark as the "Is pruning worth it?" chart, in the Quality
    tab's metric, for ``model`` and ``scheduler`` (``shipped_frontier_rows``)."""
    table = shipped_frontier_rows(model, scheduler)
    if table is not None and not len(table):
        name = next((label for label, value in SAMPLERS.items() if value == scheduler), scheduler)
        return figures.empty_figure(f"no shipped frontier measurement of {model} with {name} "
                                    "(benchmarks/bench_frontier.py)")
    return safe_view(figures.frontier_plane, table, quality)


def first_screen(source, seed, steps, *schedule_controls):
    """What the page shows before any run: dense samples, the schedule curve, the stored and
    shipped charts (one-shot and recovered rows) and the shipped recovery comparison."""
    load_engine()
    grid, card, classes, prompt = dense_preview(source, seed, steps)
    pareto_figure, sparsity_figure = results_charts()
    return (grid, card, preview_schedule(*schedule_controls), pareto_figure, sparsity_figure,
            safe_view(figures.recovery_comparison, shipped_recovery("kid")), classes, prompt, frontier_figure())


# ------------------------------------------------------------------------------ compare
def parse_sparsities(text) -> list[float]:
    from core.spec import MAX_SPARSITY

    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"sparsities must be a comma-separated list of numbers from 0 to {MAX_SPARSITY}, e.g. '0.3, 0.5'")
    values = []
    for item in text.replace(";", ",").split(","):
        if item.strip():
            values.append(real_number("each sparsity", item, 0.0, MAX_SPARSITY))
    if not values or len(values) > 12:
        raise ValueError("sparsities must list 1 to 12 numbers, e.g. '0.3, 0.5, 0.7'")
    return sorted(set(values))


def validate_compare(*values, **named) -> dict:
    """Every field of a sweep (``COMPARE_CONTROLS``: in the page's order, or by name), checked
    before any work; ``recovery_steps`` > 0 applies the same recovery (the Prune tab's recovery
    settings) to every row."""
    from core.criteria import CRITERIA
    from core.recovery import RECOVERY_DEFAULTS, recovery_images
    from core.spec import PruneSpec

    c = collect_controls(COMPARE_CONTROLS, values, named, COMPARE_DEFAULTS)
    try:
        recovery = recovery_from_controls(
            c.recovery_steps, RECOVERY_DEFAULTS["lr"] if c.recovery_lr is None else c.recovery_lr,
            RECOVERY_DEFAULTS["batch_size"] if c.recovery_batch is None else c.recovery_batch, c.distill,
            c.recovery_data, c.recovery_files)
        normalise_source(c.source)
        num_samples, steps = check_counts(c.num_samples, c.steps)
        seed = whole_number("seed", c.seed, 0, MAX_SEED)
        metrics = check_quality(c.quality)
        if not c.criteria or not isinstance(c.criteria, (list, tuple)):
            raise ValueError(f"pick at least one criterion to compare (allowed: {sorted(CRITERIA)})")
        if not isinstance(c.time_latency, bool):
            raise ValueError(f"time the latency must be true or false, got {_typed(c.time_latency)}")
        levels = [None] if ":" in str(c.granularity) else parse_sparsities(c.sparsities)
        specs = [PruneSpec(criterion=criterion, granularity=c.granularity, sparsity=level, seed=seed)
                 for criterion in c.criteria for level in levels]
        if len(specs) > 24:
            raise ValueError(f"a sweep may hold at most 24 runs (criteria x sparsities), got {len(specs)}")
        dense = cached_pipeline(c.source)
        for spec in specs:  # every row of the sweep reachable on this model, before the dense evaluation
            check_spec_on_model(dense, spec)
        if recovery["steps"] and recovery["data"] != "generated":
            recovery_images(dense, recovery["data"])
    except ValueError as error:
        raise _user_error(error) from error
    return dict(source=c.source, specs=specs, num_samples=num_samples, steps=steps, seed=seed, metrics=metrics,
                dense=dense, time_latency=bool(c.time_latency), recovery=recovery if recovery["steps"] else None)


def check_compare(*values, **named) -> None:
    validate_compare(*values, **named)


def format_sweep(table, dense_row: dict | None):
    """The sweep as people read it: rounded, with units, the dense model as the first row."""
    import pandas as pd

    def number(value, pattern):
        return "" if value is None or (isinstance(value, float) and math.isnan(value)) else pattern.format(value)

    rows = []
    if dense_row is not None:
        rows.append(dict(criterion="dense", granularity="", sparsity="0%", recovery="", FID=number(dense_row.get("fid"), "{:.1f}"),
                         KID=kid_text(dense_row), **{"speed-up": "1.00x"},
                         parameters=number(dense_row.get("params"), "{:,.0f}"), MACs=number(dense_row.get("macs"), "{:,.0f}"),
                         **{"non-zero weights": number(dense_row.get("nonzero_params"), "{:,.0f}"), "stored": ""}))
    for _, r in table.iterrows():
        measured = r.get("prune_sparsity")
        rows.append(dict(
            criterion=r["criterion"], granularity=r["granularity"],
            sparsity=number(measured if measured is not None else r.get("sparsity"), "{:.1%}"),
            recovery=(f"{int(r.get('finetune_steps')):,} steps" if (r.get("finetune_steps") or 0) > 0 else "one-shot"),
            FID=number(r.get("fid"), "{:.1f}"), KID=kid_text(r.to_dict()),
            **{"speed-up": number(r.get("speedup"), "{:.2f}x") or "not timed"},
            parameters=number(r.get("params"), "{:,.0f}"), MACs=number(r.get("macs"), "{:,.0f}"),
            **{"non-zero weights": number(r.get("nonzero_params"), "{:,.0f}"), "stored": "yes" if r.get("cached") else ""}))
    return pd.DataFrame(rows)


def run_compare(*values, request=None, progress=None, **named):
    """A sweep over criteria x sparsities through the results store (stored rows return instantly),
    every row recovered with the same budget when ``recovery_steps`` > 0 (part of each row's key).
    Takes the Compare tab's controls (``COMPARE_CONTROLS``: in the page's order, or by name)."""
    from core.evaluate import evaluate
    from core.sweep import sweep

    checked = validate_compare(*values, **named)
    session = getattr(request, "session_hash", None) or "local"
    _start_compute(session)
    metrics = checked["metrics"] + (("latency",) if checked["time_latency"] else ()) + ("macs",)
    settings = dict(num_samples=checked["num_samples"], num_inference_steps=checked["steps"], seed=checked["seed"],
                    metrics=metrics, reference=evaluation_reference(checked["source"]))
    try:
        dense_metrics = tuple(m for m in metrics if m != "latency")
        dense_row = evaluate(checked["dense"], **{**settings, "metrics": dense_metrics}, store=get_store(),
                             dense_pipeline=checked["dense"])
        table = sweep(checked["dense"], checked["specs"], settings, store=get_store(),
                      progress=(lambda f, m: progress(f, desc=m)) if progress is not None else None,
                      recovery=checked["recovery"])
    except Exception as error:  # noqa: BLE001 - keep the previous sweep on screen
        message = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        gr.Warning(f"The sweep failed: {message}")
        return gr.skip(), gr.skip(), gr.skip()
    finally:
        _end_compute(session)
    model = model_label(checked["source"])
    chart_rows = table.assign(model=model, kid=table.get("kid"), measured_sparsity=table.get("prune_sparsity"),
                              source="this sweep")
    chart_rows = chart_rows.assign(num_samples=checked["num_samples"], num_inference_steps=checked["steps"],
                                   reference=settings["reference"])
    view_settings = (model, checked["num_samples"], checked["steps"], settings["reference"])
    quality_key = "kid" if "kid" in metrics else "fid"
    frontier = frontier_table(view_settings)
    latency_view = (safe_view(figures.pareto, chart_rows, view_settings, None, quality_key, frontier)
                    if checked["time_latency"] else
                    figures.empty_figure("latency not timed in this sweep: tick 'time latency' to draw quality vs latency"))
    return (format_sweep(table, dense_row), latency_view,
            safe_view(figures.quality_vs_sparsity, chart_rows, view_settings, None, quality_key))


@gpu_task
def run_compare_event(request: gr.Request = None, progress=gr.Progress(), **controls):
    """:func:`run_compare` as the page and the API endpoint ``/run_compare`` call it: the controls
    by name (gradio's ``inputs_kwargs``), the session and the progress bar from gradio."""
    return run_compare(request=request, progress=progress, **controls)


def check_source(source, seed=0, steps=25) -> None:
    """The load button's validation step (no outputs)."""
    try:
        normalise_source(source)
        whole_number("seed", seed, 0, MAX_SEED)
        whole_number("sampling steps", steps, 1, MAX_STEPS)
        cached_pipeline(source)
    except ValueError as error:
        raise _user_error(error) from error
