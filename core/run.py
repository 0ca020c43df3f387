"""One run, defined once: prune, recover, sample grids, evaluate, time and export.

``run(pipeline, spec, recovery=..., evaluation=..., timing=..., export=..., progress=None) -> RunResult``
is the whole workflow of the app's *Prune* tab and of ``diffprune run``; both map their inputs to
the frozen settings below and their outputs from the one :class:`RunResult`, so the app and the
command line run, measure and export the same thing.

Stages, in order (each reported through ``progress(fraction, message)`` on one 0..1 scale):

1. **prune** a copy of the dense ``pipeline`` (``core.engine.prune``);
2. **recover** (``recovery.steps`` > 0): fine-tune the pruned model (``core.finetune``) on the
   chosen data (``core.recovery.recovery_data``), optionally distilled from the dense model;
3. **grids**: ``evaluation.grid_images`` samples of every stage (dense, one-shot, recovered) from
   the same initial noise and sampler;
4. **evaluate** every stage (``core.evaluate``; MACs and parameters unless turned off, the metrics as asked). When
   the evaluation asks for exactly the grids' samples (same count, noise and steps, uniform classes
   and the shipped captions), the grids are scored instead of being sampled again;
5. **time** dense against the delivered model, paired and interleaved (``core.timing``);
6. **export** (``export.out``): the one export writer (``core.export``).

Every setting is checked before any work: a bad field is one short ValueError naming the field and
what is allowed (fields that depend on the model, such as a class index or recovery images of the
wrong shape, are checked against it first too). An exception raised by the ``progress`` callback
cancels the run, as ``core.engine.prune`` does, with one exception: raised while the recovery
trains, it stops the recovery only, and the run goes on with the one-shot model
(``RunResult.recovery_stopped_at``). Once the model is pruned, a later part that fails (recovery,
grids, evaluation, timing, export) is recorded in ``RunResult.errors`` with its exception and the
other parts still run, so a failure never loses the rest of a finished run.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .export import ExportSettings, recovery_metadata, write_export
from .recovery import MAX_RECOVERY_BATCH, MAX_RECOVERY_STEPS, RECOVERY_DEFAULTS, check_recovery
from .spec import PruneSpec

ProgressFn = Callable[[float, str], None]

GRID_IMAGES = 16
MAX_GRID_IMAGES = 256
MAX_EVALUATION_SAMPLES = 50_000  # core.evaluate's bound
MAX_SAMPLING_STEPS = 1000
QUALITY_METRICS = ("fid", "kid")
EVALUATION_METRICS = QUALITY_METRICS + ("latency", "macs")  # core.evaluate.METRICS
# core.evaluate keyword arguments a run passes through as they are (EvaluationSettings.options); the
# others (samples, steps, seed, metrics, reference, models, store, spec, progress) the run sets itself.
EVALUATE_OPTIONS = ("batch_size", "kid_subset_size", "kid_subsets", "latency_batch_size",
                    "latency_repeats", "latency_warmup", "feature_cache", "class_label")
EVALUATION_REFERENCES = ("fashion-mnist-test", "dense")
STAGES = ("dense", "one-shot", "recovered")
PARTS = ("recovery", "grids", "evaluation", "timing", "export")
MAX_PROMPT_CHARS = 300


def _whole(field_name: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{field_name} must be a whole number from {low:,} to {high:,}, got {value!r}")
    return value


def _number(field_name: str, value, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low < value <= high:
        raise ValueError(f"{field_name} must be a number in ({low:g}, {high:g}], got {value!r}")
    return float(value)


def _flag(field_name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{field_name} must be true or false, got {value!r}")
    return value


# ----------------------------------------------------------------------------------------------
# settings
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RecoverySettings:
    """Recovery fine-tuning after pruning (``steps`` 0: off, the one-shot model is delivered).

    ``data``: ``fashion-mnist-train`` (the shipped training images), ``generated`` (samples of the
    dense model) or a folder of images. ``distill``: NiCI-Pruning's distillation from the dense
    model. ``checkpoint_dir`` / ``checkpoint_every``: fine-tuning checkpoints, resumed from when
    the same run is started again (None: none)."""

    steps: int = 0
    lr: float = RECOVERY_DEFAULTS["lr"]
    batch_size: int = RECOVERY_DEFAULTS["batch_size"]
    distill: bool = False
    data: str = "fashion-mnist-train"
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0

    def __post_init__(self):
        _whole("recovery steps", self.steps, 0, MAX_RECOVERY_STEPS)
        _number("recovery learning rate", self.lr, 0.0, 0.1)
        _whole("recovery batch size", self.batch_size, 1, MAX_RECOVERY_BATCH)
        _flag("recovery distill", self.distill)
        check_recovery(self.steps, self.lr, self.batch_size, self.data)
        if self.checkpoint_dir is not None:
            if not isinstance(self.checkpoint_dir, (str, os.PathLike)) or not str(self.checkpoint_dir).strip():
                raise ValueError(f"recovery checkpoint_dir must be None or a directory path, got {self.checkpoint_dir!r}")
            object.__setattr__(self, "checkpoint_dir", os.fspath(self.checkpoint_dir))
        _whole("recovery checkpoint_every", self.checkpoint_every, 0, MAX_RECOVERY_STEPS)


@dataclass(frozen=True)
class EvaluationSettings:
    """How every stage is sampled and measured.

    ``num_samples`` images per stage at ``steps`` sampling steps of ``scheduler`` (``ddim``, ``ddpm``
    or ``dpm-solver++``; grids and evaluation alike) (seeded by ``seed``; None: the spec's seed), scored with ``metrics`` (any of ``fid``, ``kid``, ``latency``: ``core.evaluate``'s sampler
    latency, ``macs``; empty: MACs and parameters only) against ``reference``
    (``fashion-mnist-test``, ``dense``: the dense model's own samples, or an image folder).
    ``count_macs``: MACs and parameters are counted at every stage (False: exactly ``metrics``).
    ``stages``: the stages evaluated (of ``dense``, ``one-shot``, ``recovered``; a stage the run
    does not produce is skipped). ``options``: further ``core.evaluate`` keyword arguments, passed
    to every stage's evaluation as they are (names from ``EVALUATE_OPTIONS``; kept as sorted pairs;
    their values are checked by ``core.evaluate``). ``grid_images`` samples of each stage are kept
    for viewing (0: none), of one class (``class_label``, class-conditional models) or one prompt
    (``prompt``, text-to-image models); None draws uniform classes / the shipped captions, as the
    evaluation does."""

    num_samples: int = GRID_IMAGES
    steps: int = 25
    metrics: tuple = ("kid",)
    reference: str = "fashion-mnist-test"
    grid_images: int = GRID_IMAGES
    class_label: int | None = None
    prompt: str | None = None
    seed: int | None = None
    count_macs: bool = True
    stages: tuple = STAGES
    options: tuple = ()
    scheduler: str = "ddim"

    def __post_init__(self):
        from .pipeline import SCHEDULERS

        _whole("evaluation num_samples", self.num_samples, 2, MAX_EVALUATION_SAMPLES)
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"evaluation scheduler must be one of {list(SCHEDULERS)}, got {self.scheduler!r}"[:300])
        _whole("evaluation steps", self.steps, 1, MAX_SAMPLING_STEPS)
        metrics = self.metrics
        if isinstance(metrics, str) or not isinstance(metrics, (tuple, list)) \
                or any(m not in EVALUATION_METRICS for m in metrics) or len(set(metrics)) != len(metrics):
            raise ValueError(f"evaluation metrics must be distinct names from {list(EVALUATION_METRICS)} (or none), "
                             f"got {metrics!r}")
        object.__setattr__(self, "metrics", tuple(metrics))
        if not _flag("evaluation count_macs", self.count_macs) and not metrics:
            raise ValueError("evaluation metrics must name at least one metric when count_macs is false, got ()")
        reference = self.reference
        if not isinstance(reference, (str, os.PathLike)) or not str(reference).strip() or (
                str(reference) not in EVALUATION_REFERENCES and not Path(reference).expanduser().is_dir()):
            raise ValueError(f"evaluation reference must be one of {list(EVALUATION_REFERENCES)} or an existing image "
                             f"folder, got {reference!r}")
        object.__setattr__(self, "reference", os.fspath(reference))
        _whole("evaluation grid_images", self.grid_images, 0, MAX_GRID_IMAGES)
        if self.class_label is not None:
            _whole("evaluation class_label", self.class_label, 0, 100_000)
        if self.prompt is not None and (not isinstance(self.prompt, str) or not self.prompt.strip()
                                        or len(self.prompt) > MAX_PROMPT_CHARS):
            raise ValueError(f"evaluation prompt must be None (the shipped captions) or text of 1 to {MAX_PROMPT_CHARS} "
                             f"characters, got {self.prompt!r}"[:300])
        if self.seed is not None:
            _whole("evaluation seed", self.seed, 0, 2 ** 63 - 1)
        stages = self.stages
        if isinstance(stages, str) or not isinstance(stages, (tuple, list)) \
                or any(s not in STAGES for s in stages) or len(set(stages)) != len(stages):
            raise ValueError(f"evaluation stages must be distinct names from {list(STAGES)} (or none), got {stages!r}")
        object.__setattr__(self, "stages", tuple(stages))
        try:
            options = dict(self.options) if isinstance(self.options, (dict, tuple, list)) else None
        except (TypeError, ValueError):  # not name-value pairs
            options = None
        if options is None or any(name not in EVALUATE_OPTIONS for name in options):
            raise ValueError(f"evaluation options must be core.evaluate keyword arguments from "
                             f"{list(EVALUATE_OPTIONS)}, got {self.options!r}"[:300])
        object.__setattr__(self, "options", tuple(sorted(options.items())))

    @property
    def grids_are_samples(self) -> bool:
        """Whether the grids are exactly the evaluation's samples (then scored, not sampled again)."""
        return self.num_samples == self.grid_images and self.class_label is None and self.prompt is None

    def sampling_seed(self, spec: PruneSpec) -> int:
        """The seed of the grids and of the evaluation's samples: ``seed``, else the spec's."""
        return spec.seed if self.seed is None else self.seed


@dataclass(frozen=True)
class TimingSettings:
    """The paired one-step latency of dense and delivered model (``core.timing.paired_step_latency``):
    ``rounds`` interleaved rounds at ``batch_size``, fewer once ``budget_s`` seconds are spent."""

    enabled: bool = True
    batch_size: int = 8
    rounds: int = 9
    budget_s: float = 3.5

    def __post_init__(self):
        _flag("timing enabled", self.enabled)
        _whole("timing batch_size", self.batch_size, 1, 1024)
        _whole("timing rounds", self.rounds, 1, 1000)
        _number("timing budget_s", self.budget_s, 0.0, 3600.0)


# ----------------------------------------------------------------------------------------------
# result
# ----------------------------------------------------------------------------------------------
@dataclass
class RunResult:
    """Everything one run produced.

    * ``pruned``: the ``PruneResult`` (one-shot model, report, spec); ``recovered``: the
      ``FinetuneResult`` of the recovery (None without one, or when it was stopped or failed),
      ``recovery``: what the export records about it, ``recovery_data``: what it trained on, and
      ``recovery_stopped_at``: the step a cancellation stopped it at.
    * ``images``: stage (``dense``, ``one-shot``, ``recovered``) -> grid samples (N x C x H x W in [-1, 1]).
    * ``evaluations``: stage -> the ``core.evaluate`` row.
    * ``timing``: the paired latency (``core.timing``), None when not timed.
    * ``export``: the export directory and ``exported`` the model folders in it (``core.export``).
    * ``errors``: part (``recovery``, ``grids``, ``evaluation``, ``timing``, ``export``) -> the
      exception that part failed with; the other parts are complete.
    * ``seconds``: the wall time of the run.
    """

    spec: PruneSpec
    pruned: object
    recovered: object = None
    recovery: dict | None = None
    recovery_data: str | None = None
    recovery_stopped_at: int | None = None
    images: dict = field(default_factory=dict)
    evaluations: dict = field(default_factory=dict)
    timing: dict | None = None
    export: Path | None = None
    exported: list = field(default_factory=list)
    errors: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def delivered(self):
        """The model the run delivers: the recovered pipeline when there is one, else the one-shot one."""
        return (self.recovered or self.pruned).pipeline

    @property
    def ok(self) -> bool:
        return not self.errors


# ----------------------------------------------------------------------------------------------
# progress
# ----------------------------------------------------------------------------------------------
class _Reporter:
    """The caller's callback on one scale, remembering whether it raised (a cancellation)."""

    def __init__(self, progress: ProgressFn | None):
        self.progress = progress
        self.raised: BaseException | None = None

    def part(self, offset: float, span: float) -> ProgressFn:
        def report(fraction: float, message: str) -> None:
            if self.progress is None:
                return
            try:
                self.progress(offset + span * max(0.0, min(1.0, fraction)), message)
            except BaseException as error:
                self.raised = error
                raise
        return report


def _plan(recovering: bool) -> dict:
    """Shares of the progress bar: prune, recover, evaluate (each stage), grids (each stage)."""
    if recovering:
        return dict(prune=0.25, recover=0.45, evaluate=0.06, grids=0.04)
    return dict(prune=0.45, recover=0.0, evaluate=0.12, grids=0.08)


# ----------------------------------------------------------------------------------------------
# the workflow
# ----------------------------------------------------------------------------------------------
def run(pipeline, spec: PruneSpec, *, recovery: RecoverySettings = RecoverySettings(),
        evaluation: EvaluationSettings = EvaluationSettings(), timing: TimingSettings = TimingSettings(),
        export: ExportSettings = ExportSettings(), progress: ProgressFn | None = None, store=None,
        dense_images=None, pruned=None, recovery_data=None) -> RunResult:
    """Run the whole workflow on a copy of ``pipeline`` (which is not modified); see the module docstring.

    ``store`` (a ``core.store.ResultStore``) answers repeated evaluations from disk;
    ``dense_images`` are the dense model's grid samples when the caller already holds them (same
    count, steps, seed, class and prompt), else they are sampled. ``pruned``: the ``PruneResult``
    of ``pipeline`` under ``spec`` when the caller already holds it (the prune stage is skipped).
    ``recovery_data``: the recovery's ``(images, labels or None, description)`` when the caller
    has loaded them (as ``core.recovery.recovery_data`` returns them), used instead of
    ``recovery.data``."""
    from .engine import prune

    _check_settings(spec, recovery, evaluation, timing, export)
    _check_pruned(pruned, spec)
    shipped_data = _check_against_model(pipeline, recovery, evaluation, recovery_data)
    started = time.perf_counter()
    reporter, plan = _Reporter(progress), _plan(recovery.steps > 0)
    if pruned is None:
        pruned = prune(pipeline, spec, progress=reporter.part(0.0, plan["prune"]))
    result = RunResult(spec=spec, pruned=pruned)
    at = plan["prune"]
    if recovery.steps:
        _attempt(result, reporter, "recovery",
                 lambda: _recover(result, pipeline, recovery, shipped_data, reporter.part(at, plan["recover"]), reporter))
        at += plan["recover"]
    stages = [s for s in STAGES if s != "recovered" or result.recovered is not None]
    if evaluation.grid_images:
        _attempt(result, reporter, "grids", lambda: _grids(result, pipeline, evaluation, dense_images,
                                                           reporter.part(at, plan["grids"] * (len(stages) - 1))))
        at += plan["grids"] * (len(stages) - 1)
    _attempt(result, reporter, "evaluation",
             lambda: _evaluate_stages(result, pipeline, evaluation, store, reporter.part(at, plan["evaluate"] * len(stages))))
    at += plan["evaluate"] * len(stages)
    if timing.enabled:
        reporter.part(at, 0.0)(0.0, "timing dense and pruned (paired)")
        _attempt(result, reporter, "timing", lambda: _time(result, pipeline, evaluation, timing))
    if export.out is not None:
        reporter.part(0.97, 0.02)(0.0, "exporting")
        _attempt(result, reporter, "export", lambda: _export(result, export))
    result.seconds = time.perf_counter() - started
    return result


def _check_settings(spec, recovery, evaluation, timing, export) -> None:
    for name, value, kind in (("spec", spec, PruneSpec), ("recovery", recovery, RecoverySettings),
                              ("evaluation", evaluation, EvaluationSettings), ("timing", timing, TimingSettings),
                              ("export", export, ExportSettings)):
        if not isinstance(value, kind):
            raise ValueError(f"{name} must be a {kind.__name__}, got {type(value).__name__}")
    export.check_target()


def _check_pruned(pruned, spec: PruneSpec) -> None:
    from .engine import PruneResult

    if pruned is not None and (not isinstance(pruned, PruneResult) or pruned.spec != spec):
        raise ValueError(f"pruned must be None or the PruneResult of this spec, got "
                         f"{type(pruned).__name__}{'' if not isinstance(pruned, PruneResult) else ' of another spec'}")


def _check_recovery_data(pipeline, data) -> tuple:
    import torch

    from .pipeline import adapter_of

    shape = adapter_of(pipeline).image_shape(pipeline)
    images, labels, description = data if isinstance(data, tuple) and len(data) == 3 else (None, None, None)
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or len(images) == 0 \
            or tuple(images.shape[1:]) != tuple(shape) or not isinstance(description, str) \
            or not (labels is None or isinstance(labels, torch.Tensor) and labels.shape == (len(images),)):
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(data).__name__
        raise ValueError(f"recovery_data must be None or (images N x {' x '.join(map(str, shape))}, labels of N or "
                         f"None, description), got {got}")
    return data


def _check_against_model(pipeline, recovery: RecoverySettings, evaluation: EvaluationSettings, data=None):
    """The fields that depend on the model, checked before any work; returns the recovery's
    images when they are given (``data``) or read from disk (they are used as they are)."""
    from .pipeline import adapter_of, takes_prompts
    from .recovery import recovery_data

    adapter = adapter_of(pipeline)
    classes = adapter.num_classes(pipeline)
    if evaluation.class_label is not None and (classes is None or evaluation.class_label >= classes):
        allowed = "None (this model has no classes)" if classes is None else f"None or 0 to {classes - 1}"
        raise ValueError(f"evaluation class_label must be {allowed}, got {evaluation.class_label!r}")
    if evaluation.prompt is not None and not takes_prompts(pipeline):
        raise ValueError(f"evaluation prompt must be None for this {adapter.name} model: prompts apply to "
                         "text-to-image models (SD, PixArt, SD3)")
    if data is not None:
        return _check_recovery_data(pipeline, data)
    if recovery.steps and recovery.data != "generated":
        return recovery_data(pipeline, recovery.data, 0)  # the images fit the model, or a ValueError
    return None


def _attempt(result: RunResult, reporter: _Reporter, part: str, work) -> None:
    """``work()``; a failure is recorded under ``part`` unless the progress callback raised it (a cancellation)."""
    try:
        work()
    except Exception as error:  # noqa: BLE001 - one failed part must not lose the finished ones
        if reporter.raised is not None:
            raise reporter.raised from None
        result.errors[part] = error


def _recover(result: RunResult, dense, settings: RecoverySettings, shipped_data, report: ProgressFn,
             reporter: _Reporter) -> None:
    """The recovery stage, with named progress (step, loss, time left). An exception of the
    progress callback while fine-tuning stops the recovery and keeps the one-shot result."""
    from .finetune import finetune
    from .recovery import recovery_data

    seed = result.spec.seed
    data_share = 0.15 if shipped_data is None else 0.0  # generating images is a stage of its own
    if shipped_data is None:
        shipped_data = recovery_data(dense, settings.data, seed, progress=lambda f, m: report(data_share * f, m))
    images, labels, label = shipped_data

    def tell(fraction: float, message: str) -> None:
        report(data_share + (1 - data_share) * max(0.0, min(1.0, fraction)), message)

    started, reached = time.perf_counter(), {"step": 0}

    def recovery_progress(fraction: float, message: str) -> None:
        reached["step"] = round(fraction * settings.steps)
        elapsed = time.perf_counter() - started
        left = f", about {elapsed / fraction * (1 - fraction):.0f} s left" if fraction > 0 else ""
        tell(fraction, message.replace("fine-tuning step", "recovery step") + left)

    tell(0.0, f"recovery: {settings.steps:,} steps on {label}")
    result.recovery_data = label
    try:
        tuned = finetune(result.pruned, settings.steps, lr=settings.lr, batch_size=settings.batch_size,
                         distill=settings.distill, teacher=dense if settings.distill else None, images=images,
                         labels=labels, seed=seed, progress=recovery_progress, output_dir=settings.checkpoint_dir,
                         checkpoint_every=settings.checkpoint_every)
    except Exception:
        if reporter.raised is None:
            raise
        reporter.raised = None  # only the recovery is stopped: the run goes on with the one-shot result
        result.recovery_stopped_at = reached["step"]
        return
    tuned.data_label = label
    result.recovered, result.recovery = tuned, recovery_metadata(tuned, settings)


def _grids(result: RunResult, dense, evaluation: EvaluationSettings, dense_images, report: ProgressFn) -> None:
    """``grid_images`` samples of every stage from the same initial noise and sampler."""
    from .pipeline import initial_noise, sample_images

    count, steps, seed = evaluation.grid_images, evaluation.steps, evaluation.sampling_seed(result.spec)
    options = dict(class_label=evaluation.class_label, prompt=evaluation.prompt, scheduler=evaluation.scheduler)
    pipelines = [("one-shot", result.pruned.pipeline)]
    if result.recovered is not None:
        pipelines.append(("recovered", result.recovered.pipeline))
    if dense_images is None:
        pipelines.insert(0, ("dense", dense))
    else:
        result.images["dense"] = dense_images
    noise = initial_noise(dense, count, seed)
    share = 1.0 / len(pipelines)
    for index, (stage, sampled) in enumerate(pipelines):
        part = (lambda f, m, i=index: report(share * (i + f), m))
        result.images[stage] = sample_images(sampled, count, steps, seed, noise=None if stage == "dense" else noise,
                                             progress=part, **options)


def _evaluate_stages(result: RunResult, dense, evaluation: EvaluationSettings, store, report: ProgressFn) -> None:
    """``core.evaluate`` of every stage asked for; the grids are scored when they are the evaluation's samples."""
    from .evaluate import evaluate

    metrics = evaluation.metrics + (("macs",) if evaluation.count_macs and "macs" not in evaluation.metrics else ())
    settings = dict(num_samples=evaluation.num_samples, num_inference_steps=evaluation.steps,
                    seed=evaluation.sampling_seed(result.spec), metrics=metrics, reference=evaluation.reference,
                    dense_pipeline=dense, store=store, scheduler=evaluation.scheduler, **dict(evaluation.options))
    stages = [("dense", dense, None), ("one-shot", result.pruned.pipeline, result.spec)]
    if result.recovered is not None:
        stages.append(("recovered", result.recovered.pipeline, result.spec))
    stages = [stage for stage in stages if stage[0] in evaluation.stages]
    reuse = evaluation.grids_are_samples
    share = 1.0 / max(1, len(stages))
    for index, (stage, pipeline, spec) in enumerate(stages):
        images = result.images.get(stage) if reuse else None
        part = (lambda f, m, i=index: report(share * (i + f), m))
        extra = {} if spec is None else dict(prune_spec=spec)
        result.evaluations[stage] = evaluate(pipeline, **settings, **extra, images=images, progress=part)


def _time(result: RunResult, dense, evaluation: EvaluationSettings, timing: TimingSettings) -> None:
    from .timing import paired_step_latency

    result.timing = paired_step_latency(dense, result.delivered, num_inference_steps=evaluation.steps,
                                        batch_size=timing.batch_size, rounds=timing.rounds, budget_s=timing.budget_s,
                                        min_rounds=min(4, timing.rounds))


def _export(result: RunResult, export: ExportSettings) -> None:
    result.exported = write_export(result.pruned, export, result.recovered, result.recovery)
    result.export = Path(export.out).expanduser()
