"""``diffprune`` command line: thin wrappers over the ``core`` facade.

Commands: ``prune`` (``core.engine.prune`` + ``PruneResult.save``), ``eval``
(``core.evaluate.evaluate``), ``sweep`` (``core.sweep.sweep`` through a ``ResultStore``, so a
rerun reuses every stored row; ``--executor ray`` runs the rows as Ray tasks), ``finetune``
(``core.finetune.finetune``), ``train-base`` and ``run`` (``core.run.run``: the app's whole
workflow, prune to export, with the app's export).
Every command takes ``--device``, ``--seed``, ``--threads`` and ``--quiet``; long steps draw the
facade's ``progress(fraction, message)`` callbacks as a text bar on stderr. Bad input ends with
exit code 2 and one line ``diffprune: error: ...``; Ctrl-C with 130.

``--model``, ``--dense-model`` and ``--teacher`` take a local diffusers directory, a directory
written by ``diffprune prune``/``finetune``, a hub id, or ``default`` (the embedded model).
Commands that load a model take ``--dtype`` (``auto``, the default, keeps the checkpoint's dtype);
``prune`` and ``sweep`` refuse a model whose run would not fit in memory (``core.fit``) before
loading it.

The parser is built from ``core.catalog`` (the registries' names and defaults as JSON), so
``diffprune --help`` and usage errors answer without importing torch; a command imports the engine
when it runs.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from pathlib import Path

DEFAULT_MODEL = "default"  # --model value naming the embedded default model
# PruneSpec fields that follow the criterion: a flag that changes the criterion of a preset or
# spec file drops them from that base (taylor's "threshold" schedule is an error for magnitude).
_CRITERION_FIELDS = ("schedule", "schedule_params", "criterion_params", "calibration_batches", "calibration_batch_size")
# PruneSpec fields set by the ``prune`` flags of the same name.
_SPEC_FLAGS = ("criterion", "granularity", "sparsity", "channel_ratio", "schedule", "schedule_params",
               "criterion_params", "calibration_data", "calibration_batches", "calibration_batch_size", "components",
               "calibration_prompts")
# Sweep table columns printed to the terminal (the CSV holds every column).
_SWEEP_COLUMNS = ("criterion", "granularity", "sparsity", "prune_sparsity", "prune_macs_ratio", "fid", "kid",
                  "speedup", "latency_median_s_per_image", "params", "macs", "nonzero_params", "cached")


class _Parser(argparse.ArgumentParser):
    """argparse exits with code 2 and a one-line message on bad flags."""

    def error(self, message):  # noqa: D401 - argparse API
        self.exit(2, f"diffprune: error: {message}\n")


# ----------------------------------------------------------------------------------------------
# progress
# ----------------------------------------------------------------------------------------------
class _ProgressBar:
    """The facade's ``progress(fraction, message)`` drawn as a tqdm bar on stderr."""

    STEPS = 1000  # bar resolution: fractions are rounded to 0.1 %

    def __init__(self, label: str, quiet: bool = False):
        from tqdm import tqdm

        self.bar = tqdm(total=self.STEPS, desc=label, file=sys.stderr, disable=quiet, leave=True,
                        bar_format="{desc}: {percentage:3.0f}%|{bar:24}| {elapsed}<{remaining}{postfix}")

    def __call__(self, fraction: float, message: str) -> None:
        self.bar.set_postfix_str(str(message)[:70], refresh=False)
        target = int(round(self.STEPS * min(1.0, max(0.0, float(fraction)))))
        if target > self.bar.n:  # phases restart their own fractions; the bar only moves forward
            self.bar.update(target - self.bar.n)

    def __enter__(self) -> "_ProgressBar":
        return self

    def __exit__(self, *exc_info) -> None:
        self.bar.close()


# ----------------------------------------------------------------------------------------------
# argument types (argparse turns their ArgumentTypeError into exit 2 and one line)
# ----------------------------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _json_object(text: str) -> dict:
    shown = text if len(text) <= 60 else text[:57] + "..."
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"invalid JSON {shown!r}: {error}") from None
    except RecursionError:
        raise argparse.ArgumentTypeError(f"JSON {shown!r} nests lists or objects too deeply") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"key\": 1}}', got {shown!r}")
    return value


def _comma_list(allowed=None, convert=str):
    """``"a,b"`` -> ``[a, b]``, each converted and (when ``allowed`` is given) checked."""

    def parse(text: str) -> list:
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        if allowed is not None:
            unknown = [item for item in items if item not in allowed]
            if unknown:
                raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {list(allowed)}")
        try:
            return [convert(item) for item in items]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of numbers, got {text!r}") from None

    return parse


def _device(text: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"expected 'auto', 'cpu' or 'cuda[:N]', got {text!r}")
    return text


# ----------------------------------------------------------------------------------------------
# helpers shared by the commands
# ----------------------------------------------------------------------------------------------
def _setup(args) -> str:
    """Apply ``--threads``; return the concrete device (``auto`` resolved, CUDA checked)."""
    import torch

    from .pipeline import pick_device

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    # "cpu" / "cuda" rather than "auto": the device is part of a spec's JSON (the store key).
    return str(device) if device.index is not None else device.type


def _model_source(text: str | None):
    """``None`` / ``"default"`` -> ``None`` (the embedded model for ``load_pipeline``); a ``~`` path
    is expanded here, so an unknown user's home is one line, not a traceback."""
    if text in (None, DEFAULT_MODEL):
        return None
    return str(_user_path(text, "--model")) if text.startswith("~") else text


def _user_path(text: str, flag: str) -> Path:
    """``Path(text).expanduser()``, with ``~user`` of an unknown user refused naming ``flag``."""
    try:
        return Path(text).expanduser()
    except RuntimeError:
        raise ValueError(f"{flag} {text[:80]!r}: no such user's home folder") from None


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def _check_image_output(text: str, flag: str) -> Path:
    """An image file to write (checked before any work): a known image suffix, not a folder."""
    output = _user_path(text, flag)
    if output.suffix.lower() not in _IMAGE_SUFFIXES:
        raise ValueError(f"{flag} must end in .png, .jpg, .jpeg or .webp, got {text[:80]!r}")
    if output.is_dir():
        raise ValueError(f"{flag} {text[:80]!r} is a folder; allowed: an image file to write")
    return output


def _load(text: str | None, device: str, dtype: str = "auto"):
    from .pipeline import load_pipeline

    return load_pipeline(_model_source(text), device=device, dtype=dtype)


def _check_fit(text: str | None, criteria, device: str, dtype: str = "auto") -> None:
    """Refuse (``core.fit.FitError``, exit 2) a model whose pruning with any of ``criteria`` would
    not fit in memory or that exceeds the server's caps, from its configs alone: before loading."""
    from .fit import check_fit

    for criterion in dict.fromkeys(criteria):
        check_fit(_model_source(text), criterion, device, dtype)


def _marker_spec(text: str | None) -> dict | None:
    """The spec stored in a pruned checkpoint's marker (``PruneResult.save``), else None."""
    from .checkpoint import read_marker
    from .pipeline import PRUNED_MARKER

    source = _model_source(text)
    if source is None or not (Path(source) / PRUNED_MARKER).is_file():
        return None
    return read_marker(Path(source)).get("spec")


def _read_spec_file(path: str) -> dict:
    """A PruneSpec dict from a JSON or (with PyYAML) YAML file, or from a checkpoint's marker JSON."""
    from .checkpoint import FORMAT

    file = _user_path(path, "--spec")
    if not file.is_file():
        raise ValueError(f"spec file {path!r} does not exist")
    text = file.read_text()
    if file.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ValueError(f"spec file {path!r}: YAML needs PyYAML (pip install pyyaml); or write JSON") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ValueError(f"spec file {path!r}: invalid YAML: {error}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"spec file {path!r}: invalid JSON: {error}") from None
    if isinstance(data, dict) and data.get("format") == FORMAT and isinstance(data.get("spec"), dict):
        data = data["spec"]  # diffprune_checkpoint.json: reproduce that checkpoint's pruning
    if not isinstance(data, dict):
        raise ValueError(f"spec file {path!r} must hold an object of PruneSpec fields")
    return data


def _prompt_file(path: str) -> tuple:
    """``--calibration-prompts``: one prompt a line (blank and ``#`` lines skipped)."""
    from .prompts import prompt_lines

    try:
        prompts = prompt_lines(Path(path).expanduser().read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise argparse.ArgumentTypeError(f"cannot read prompts file {path!r}: {error}") from None
    if not prompts:
        raise argparse.ArgumentTypeError(f"prompts file {path!r} holds no prompt (one a line)")
    return prompts


def spec_from_args(args, device: str):
    """The ``PruneSpec`` of ``diffprune prune``: ``--spec`` file or ``--preset``, then explicit flags.

    A flag overrides the base value of its field. Changing the criterion drops the base's
    criterion-specific fields (schedule, criterion params, calibration sizes) unless they are given
    too; ``--channel-ratio`` clears the base sparsity, ``--sparsity`` the base channel ratio, and an
    ``N:M`` ``--granularity`` the base sparsity (it is implied).
    """
    from .granularities import parse_granularity
    from .spec import PRESETS, PruneSpec

    if args.spec is not None:
        base = _read_spec_file(args.spec)
    elif args.preset is not None:
        base = PRESETS[args.preset].to_dict()
    else:
        base = {}
    given = {name: getattr(args, name) for name in _SPEC_FLAGS if getattr(args, name, None) is not None}
    if "criterion" in given and given["criterion"] != base.get("criterion", given["criterion"]):
        base = {key: value for key, value in base.items() if key not in _CRITERION_FIELDS}
    if "granularity" in given:
        name, pattern = parse_granularity(given["granularity"])
        if pattern is not None and "sparsity" not in given:
            base["sparsity"] = None
        if name not in ("channel", "head"):
            base.pop("channel_ratio", None)
    if "channel_ratio" in given and "sparsity" not in given:
        base["sparsity"] = None
    if "sparsity" in given and "channel_ratio" not in given:
        base.pop("channel_ratio", None)
    data = {**base, **given, "device": device}
    if args.seed is not None:
        data["seed"] = args.seed
    return PruneSpec.from_dict(data)


@contextlib.contextmanager
def _accelerate_on(device: str):
    """accelerate picks CUDA by itself; ``--device cpu`` must tell it not to."""
    previous = os.environ.get("ACCELERATE_USE_CPU")
    if device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"
    try:
        yield
    finally:
        if device == "cpu":
            if previous is None:
                os.environ.pop("ACCELERATE_USE_CPU", None)
            else:
                os.environ["ACCELERATE_USE_CPU"] = previous


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


# ----------------------------------------------------------------------------------------------
# commands
# ----------------------------------------------------------------------------------------------
def _cmd_prune(args) -> int:
    from .engine import prune

    from .checkpoint import check_save_directory

    device = _setup(args)
    spec = spec_from_args(args, device)  # validated before the model is loaded
    check_save_directory(_user_path(args.output, "--output"), "--output")
    _check_fit(args.model, [spec.criterion], device, args.dtype)
    pipeline = _load(args.model, device, args.dtype)
    with _ProgressBar(f"pruning ({spec.label})", args.quiet) as bar:
        result = prune(pipeline, spec, progress=bar)
    from .export import DEFAULT_DENSE_LABEL, write_model

    path = write_model(result, args.output, dense_label=str(args.model) if args.model else DEFAULT_DENSE_LABEL)  # as the app exports
    totals = result.report.totals
    print(f"pruned {spec.label} in {totals['wall_time_s']:.1f} s")
    print(f"  parameters  {totals['params_before']:,} -> {totals['params_after']:,} "
          f"(ratio {totals['params_ratio']:.3f})")
    print(f"  MACs        {totals['macs_before']:,} -> {totals['macs_after']:,} (ratio {totals['macs_ratio']:.3f}; "
          f"{totals['effective_macs_after']:,} counting only non-zero weights)")
    target = "" if spec.sparsity is None else f" (target {spec.sparsity:.1%})"
    print(f"  sparsity    {totals['sparsity']:.1%} of prunable weights{target}")
    if len(totals.get("components", [])) > 1:
        for name, part in totals["per_component"].items():
            print(f"  {name:<11} sparsity {part['sparsity']:.1%}, parameters {part['params_before']:,} -> "
                  f"{part['params_after']:,}, MACs {part['macs_before']:,} -> {part['macs_after']:,}")
    print(f"  saved to    {path}")
    return 0


def _cmd_eval(args) -> int:
    from .evaluate import DENSE_REFERENCE, evaluate
    from .store import ResultStore, jsonable

    device = _setup(args)
    if args.reference == DENSE_REFERENCE and args.dense_model is None and any(m in ("fid", "kid") for m in args.metrics):
        raise ValueError("--reference dense needs --dense-model (the unpruned model to compare against)")
    store = None if args.no_store else ResultStore(args.results_dir)
    pipeline = _load(args.model, device, args.dtype)
    dense = _load(args.dense_model, device, args.dtype) if args.dense_model is not None else None
    with _ProgressBar("evaluating", args.quiet) as bar:
        row = evaluate(pipeline, args.num_samples, args.steps, seed=args.seed or 0, metrics=args.metrics,
                       reference=args.reference, dense_pipeline=dense, progress=bar, store=store,
                       prune_spec=_marker_spec(args.model), batch_size=args.batch_size, scheduler=args.scheduler)
    for name, value in row.items():
        if value is not None and name not in ("prune_spec", "metrics"):
            print(f"{name:34s} {_format(value)}")
    if args.json_out is not None:
        Path(args.json_out).expanduser().write_text(json.dumps(jsonable(row), indent=2, sort_keys=True))
        print(f"wrote {args.json_out}")
    return 0


def _cmd_sample(args) -> int:
    from .pipeline import MAX_SAMPLE_IMAGES, make_grid, sample_images

    if args.num_images > MAX_SAMPLE_IMAGES:
        raise ValueError(f"--num-images must be at most {MAX_SAMPLE_IMAGES:,} (the bound for this tool's machines), "
                         f"got {args.num_images:,}")
    output = _check_image_output(args.output, "--output")  # before any work
    device = _setup(args)
    pipeline = _load(args.model, device, args.dtype)
    with _ProgressBar("sampling", args.quiet) as bar:
        images = sample_images(pipeline, args.num_images, args.steps, seed=args.seed or 0, scheduler=args.scheduler,
                               class_label=args.class_label, prompt=args.prompt, progress=bar)
    output.parent.mkdir(parents=True, exist_ok=True)
    make_grid(images, columns=args.columns, scale=args.scale).save(output)
    print(f"wrote {output} ({args.num_images} samples, {args.steps} steps, seed {args.seed or 0}"
          + (f", class {args.class_label}" if args.class_label is not None else "")
          + (f", prompt {args.prompt!r}" if args.prompt else "") + ")")
    return 0


def sweep_specs(args, device: str) -> list:
    """criteria x granularities x sparsities as PruneSpecs (an N:M granularity: one spec, its implied
    sparsity). Every spec is validated before anything runs, so an unsupported combination fails at
    once with the criterion's allowed granularities."""
    from .criteria import CRITERIA
    from .granularities import parse_granularity
    from .spec import PruneSpec

    calibration = {name: getattr(args, name) for name in ("schedule", "schedule_params", "calibration_data",
                                                          "calibration_batches", "calibration_batch_size")
                   if getattr(args, name) is not None}
    specs = []
    for criterion in args.criteria:
        for granularity in args.granularities:
            levels = [None] if parse_granularity(granularity)[1] is not None else args.sparsities
            for sparsity in levels:
                fields = dict(criterion=criterion, granularity=granularity, sparsity=sparsity,
                              seed=args.seed or 0, device=device)
                if CRITERIA[criterion].needs_calibration:
                    fields.update(calibration)
                specs.append(PruneSpec(**fields))
    return specs


def _cmd_sweep(args) -> int:
    from .evaluate import METRICS
    from .store import ResultStore
    from .sweep import ModelSource, RaySettings, sweep

    on_ray = args.executor == "ray"
    if not on_ray and (args.ray_address is not None or args.ray_cpus_per_row != 1):
        raise ValueError("--ray-address and --ray-cpus-per-row apply to --executor ray only")
    if on_ray:  # a wrong address fails here, within seconds, before the model is loaded
        from .sweep import ray_executor

        ray_executor().check_address(args.ray_address)
    if on_ray and args.device.startswith("cuda"):  # the rows' GPUs are the cluster's, not this machine's
        _setup(argparse.Namespace(threads=args.threads, device="cpu"))
        device = args.device
    else:
        device = _setup(args)
    specs = sweep_specs(args, device)
    store = ResultStore(args.results_dir)
    executor = {}
    if on_ray:  # each task loads the model itself; this process only hashes it (on the CPU) and stores the rows
        executor = dict(executor=RaySettings(args.ray_cpus_per_row, ModelSource(_model_source(args.model), args.dtype)),
                        ray_address=args.ray_address)
        pipeline = _load(args.model, "cpu", args.dtype)
    else:
        _check_fit(args.model, [spec.criterion for spec in specs], device, args.dtype)
        pipeline = _load(args.model, device, args.dtype)
    # Exactly the settings the UI's sweep passes (metrics in METRICS order), so both share stored rows.
    eval_settings = dict(num_samples=args.num_samples, num_inference_steps=args.steps, seed=args.seed or 0,
                         metrics=tuple(m for m in METRICS if m in args.metrics), reference=args.reference)
    if args.scheduler != "ddim":  # DDIM rows keep the settings (and stored rows) the app's sweep uses
        eval_settings["scheduler"] = args.scheduler
    with _ProgressBar(f"sweep of {len(specs)} specs", args.quiet) as bar:
        table = sweep(pipeline, specs, eval_settings, store=store, progress=bar, **executor)
    if args.csv_out is not None:
        table.to_csv(Path(args.csv_out).expanduser(), index=False)
    shown = [column for column in _SWEEP_COLUMNS if column in table and table[column].notna().any()]
    print(table[shown].to_string(index=False))
    errors = table["error"] if "error" in table else [None] * len(table)  # rows a Ray task could not compute
    failed = [(label, error) for label, error in zip(table["label"], errors) if isinstance(error, str)]
    for label, error in failed:
        print(f"failed: {label}: {error}")
    stored = int(table["cached"].sum())
    print(f"{len(table)} rows ({stored} from the store {store.directory}, {len(table) - stored - len(failed)} computed"
          + (f", {len(failed)} failed: rerun to retry them" if len(failed) else "") + ")"
          + (f"; wrote {args.csv_out}" if args.csv_out is not None else ""))
    return 1 if len(failed) else 0


def _cmd_finetune(args) -> int:
    import pandas as pd

    from .checkpoint import save_pruned_pipeline
    from .data import load_image_folder
    from .engine import PruneReport, PruneResult
    from .finetune import finetune
    from .spec import PruneSpec

    device = _setup(args)
    if args.teacher is not None and not args.distill:
        raise ValueError("--teacher applies only with --distill")
    pipeline = _load(args.model, device, args.dtype)
    spec_fields, spec = _marker_spec(args.model), None
    if spec_fields is not None:
        try:
            spec = PruneSpec.from_dict(spec_fields)
        except ValueError as error:  # e.g. its calibration folder is gone: masks then come from the zeros
            print(f"note: the checkpoint's spec is not usable here ({error}); fine-tuning without it", file=sys.stderr)
    # A PruneResult lets finetune keep unstructured / N:M zeros at zero and record the spec.
    source = PruneResult(pipeline=pipeline, report=PruneReport(layers=pd.DataFrame()), spec=spec) if spec else pipeline
    from .pipeline import adapter_of

    channels, size, _ = adapter_of(pipeline).image_shape(pipeline)
    images = load_image_folder(args.images, size, channels) if args.images is not None else None
    teacher = _load(args.teacher, device, args.dtype) if args.distill else None
    output = Path(args.output).expanduser()
    with _accelerate_on(device), _ProgressBar("fine-tuning", args.quiet) as bar:
        result = finetune(
            source, args.steps, args.lr, args.batch_size, ema=args.ema, distill=teacher is not None, teacher=teacher,
            distill_alpha=args.distill_alpha, distill_tau=args.distill_tau, images=images,
            l1_penalty=args.l1_penalty, regrowth=args.regrowth, warmup_steps=args.warmup_steps,
            max_grad_norm=args.max_grad_norm or None, seed=args.seed or 0, output_dir=output / "checkpoints",
            checkpoint_every=args.checkpoint_every, resume=not args.no_resume, progress=bar,
            mixed_precision=args.mixed_precision,
        )
    if not result.is_main_process:  # data-parallel: the main process writes the one result
        return 0
    save_pruned_pipeline(result.pipeline, output, spec=spec)
    result.losses.to_csv(output / "finetune_losses.csv", index=False)
    resumed = f", resumed from step {result.resumed_from}" if result.resumed_from else ""
    last = f", final loss {result.losses.loss.iloc[-1]:.4f}" if len(result.losses) else ""
    print(f"fine-tuned {result.steps} steps in {result.wall_time_s:.1f} s{resumed}{last}")
    print(f"  saved to    {output} (checkpoints in {output / 'checkpoints'})")
    return 0


def _cmd_train_base(args) -> int:
    from .training import TrainConfig, train_base

    config = TrainConfig(
        output_dir=args.output_dir, steps=args.steps, batch_size=args.batch_size,
        learning_rate=args.lr, seed=args.seed or 0, checkpoint_minutes=args.checkpoint_minutes,
        num_threads=args.threads,
    )
    with _accelerate_on(_setup(args)):
        path = train_base(config, log=lambda line: print(line, flush=True))
    print(f"exported EMA pipeline to {path}")
    return 0


def _run_settings(args) -> dict:
    """The ``core.run`` settings of ``diffprune run``'s flags (each validated, before any work)."""
    from .export import DEFAULT_DENSE_LABEL, ExportSettings
    from .run import EvaluationSettings, RecoverySettings, TimingSettings

    source = _model_source(args.model)
    metrics = tuple(m for m in args.metrics if m != "none")
    reference = args.reference or ("fashion-mnist-test" if source is None else "dense")
    grid_images = args.grid_images if args.grid_out is not None else 0
    return dict(
        recovery=RecoverySettings(steps=args.recovery_steps, lr=args.recovery_lr, batch_size=args.recovery_batch_size,
                                  distill=args.distill, data=args.recovery_data),
        evaluation=EvaluationSettings(num_samples=args.num_samples, steps=args.steps, metrics=metrics,
                                      reference=reference, grid_images=grid_images, class_label=args.class_label,
                                      prompt=args.prompt, scheduler=args.scheduler),
        timing=TimingSettings(enabled=not args.no_timing, batch_size=args.latency_batch_size),
        export=ExportSettings(out=args.out, include_oneshot=args.export_oneshot,
                              dense_label=source or DEFAULT_DENSE_LABEL),
    )


def _print_run(result) -> None:
    totals = result.pruned.report.totals
    print(f"ran {result.spec.label} in {result.seconds:.1f} s ({totals['wall_time_s']:.1f} s pruning)")
    print(f"  parameters  {totals['params_before']:,} -> {totals['params_after']:,} (ratio {totals['params_ratio']:.3f})")
    print(f"  MACs        {totals['macs_before']:,} -> {totals['macs_after']:,} (ratio {totals['macs_ratio']:.3f})")
    print(f"  sparsity    {totals['sparsity']:.1%} of prunable weights")
    if result.recovered is not None:
        loss = result.recovery.get("final_loss")
        print(f"  recovery    {result.recovery['steps']:,} steps in {result.recovered.wall_time_s:.1f} s on "
              f"{result.recovery['data']}" + (f", final loss {loss:.4f}" if loss is not None else ""))
    elif result.recovery_stopped_at is not None:
        print(f"  recovery    stopped at step {result.recovery_stopped_at:,}: the one-shot model is delivered")
    for stage, row in result.evaluations.items():
        quality = ", ".join(f"{name.upper()} {_format(row[name])}" for name in ("fid", "kid") if row.get(name) is not None)
        print(f"  {stage:<11} {quality or 'no FID/KID asked'} ({row['num_samples']} samples, "
              f"{row['num_inference_steps']} steps, reference {row['reference']}); non-zero weights "
              f"{_format(row.get('nonzero_params'))}")
    timing = result.timing
    if timing:
        noise = ", within timing noise" if timing["within_noise"] else ""
        print(f"  speed-up    {timing['speedup']:.2f}x (range {timing['speedup_low']:.2f}-{timing['speedup_high']:.2f}x "
              f"over {timing['rounds']} paired rounds{noise})")
    if result.exported:
        print(f"  exported    {result.export} ({', '.join(path.name + '/' for path in result.exported)})")


def _cmd_run(args) -> int:
    """``diffprune run``: prune, recover, evaluate, time and export in one ``core.run.run``, the
    workflow of the app's Prune tab (its export holds the same files as the app's zip)."""
    from .run import STAGES, run
    from .store import ResultStore

    device = _setup(args)
    spec = spec_from_args(args, device)  # every flag validated before the model is loaded
    settings = _run_settings(args)
    if args.grid_out is not None:
        _check_image_output(args.grid_out, "--grid-out")
    settings["export"].check_target()
    store = None if args.no_store else ResultStore(args.results_dir)
    _check_fit(args.model, [spec.criterion], device, args.dtype)
    pipeline = _load(args.model, device, args.dtype)
    with _accelerate_on(device), _ProgressBar(f"run ({spec.label})", args.quiet) as bar:
        result = run(pipeline, spec, **settings, progress=bar, store=store)
    _print_run(result)
    if args.grid_out is not None and result.images:
        import torch

        from .pipeline import make_grid

        images = torch.cat([result.images[stage] for stage in STAGES if stage in result.images])
        make_grid(images, columns=settings["evaluation"].grid_images, scale=2).save(Path(args.grid_out).expanduser())
        print(f"  grids       {args.grid_out} (rows: {', '.join(s for s in STAGES if s in result.images)})")
    for part, error in result.errors.items():
        print(f"diffprune: run: {part} failed: {' '.join(str(error).split()) or type(error).__name__}", file=sys.stderr)
    return 1 if result.errors else 0


# ----------------------------------------------------------------------------------------------
# parser
# ----------------------------------------------------------------------------------------------
def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("common options")
    group.add_argument("--device", type=_device, default="auto", help="auto (CUDA when present), cpu or cuda[:N]")
    group.add_argument("--seed", type=_non_negative_int, default=None, help="random seed (default 0)")
    group.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads (default: torch's)")
    group.add_argument("--quiet", action="store_true", help="no progress bar")
    return common


def _add_dtype_option(parser) -> None:
    from .dtypes import AUTO, DTYPES

    parser.add_argument("--dtype", choices=(AUTO, *DTYPES), default=AUTO,
                        help="dtype the model is loaded in (default auto: the checkpoint's own, e.g. fp16 stays fp16); "
                             "on a CPU without fp16 arithmetic float16 runs much slower than float32 or bfloat16")


def _add_calibration_options(parser, with_criterion_params: bool, registry: dict | None = None) -> None:
    from .catalog import catalog

    schedules = (registry or catalog())["schedules"]
    parser.add_argument("--schedule", choices=sorted(schedules), default=None,
                        help="timestep schedule of gradient criteria (default: the criterion's)")
    parser.add_argument("--schedule-params", type=_json_object, default=None,
                        help='JSON overrides of the schedule, e.g. \'{"threshold": 200}\'')
    if with_criterion_params:
        parser.add_argument("--criterion-params", type=_json_object, default=None, help='JSON, e.g. \'{"p": 2}\'')
    parser.add_argument("--calibration-batches", type=_positive_int, default=None)
    parser.add_argument("--calibration-batch-size", type=_positive_int, default=None)
    parser.add_argument("--calibration-data", default=None,
                        help="auto, fashion-mnist-train, generated or an image folder (default auto)")


# The samplers of ``core.pipeline.SCHEDULERS``, spelled here so that ``--help`` imports no torch
# (tests/test_cli.py checks that the two lists agree).
SAMPLERS = ("ddim", "ddpm", "dpm-solver++")


def _add_sampler_option(parser) -> None:
    parser.add_argument("--scheduler", choices=SAMPLERS, default="ddim",
                        help="sampler: ddim (default), ddpm, or dpm-solver++ (second order, best at few steps)")


def _add_eval_options(parser, registry: dict | None = None) -> None:
    from .catalog import catalog

    metrics = tuple((registry or catalog())["metrics"])
    parser.add_argument("--num-samples", type=_positive_int, default=64, help="images sampled per model (default 64)")
    parser.add_argument("--steps", type=_positive_int, default=50, help="sampling steps (default 50)")
    _add_sampler_option(parser)
    parser.add_argument("--metrics", type=_comma_list(metrics), default=list(metrics),
                        help=f"comma list of {','.join(metrics)} (default all)")
    parser.add_argument("--reference", default="fashion-mnist-test",
                        help="FID/KID reference: fashion-mnist-test, dense, or an image folder")
    parser.add_argument("--results-dir", default=None,
                        help="results store directory (default $DIFFPRUNE_RESULTS_DIR or ~/.cache/diffprune/results)")


def _add_run_command(commands, common, registry: dict, model_help: str) -> None:
    """``diffprune run``: its flags map one to one to ``PruneSpec`` and the ``core.run`` settings."""
    recovery = registry["recovery_defaults"]
    run = commands.add_parser(
        "run", parents=[common], help="prune, recover, evaluate, time and export in one run (the app's workflow)",
        description="The app's whole workflow on --model: prune, optionally recover (--recovery-steps), evaluate "
                    "dense, one-shot and recovered, time dense against pruned (paired) and, with --out, export the "
                    "same folders as the app's zip.")
    run.add_argument("--model", default=None, help=model_help)
    run.add_argument("--out", default=None, help="export directory (new or empty): pruned-model/ and, with "
                                                 "--export-oneshot after a recovery, one-shot-model/")
    base = run.add_mutually_exclusive_group()
    base.add_argument("--spec", default=None, help="PruneSpec JSON (or YAML) file; flags given override its values")
    base.add_argument("--preset", choices=sorted(registry["presets"]), default=None,
                      help="a paper's recipe; flags override it")
    run.add_argument("--criterion", choices=sorted(registry["criteria"]), default=None, help="default magnitude")
    run.add_argument("--granularity", default=None, help="unstructured (default), channel, head, or N:M like 2:4")
    run.add_argument("--sparsity", type=float, default=None, help="fraction of prunable weights removed (default 0.5)")
    run.add_argument("--channel-ratio", type=float, default=None, help="channel/head: explicit structural ratio")
    run.add_argument("--components", type=_comma_list(), default=None,
                     help="pipeline networks to prune, comma list of attribute names (default: the denoiser)")
    _add_calibration_options(run, with_criterion_params=True, registry=registry)
    run.add_argument("--calibration-prompts", type=_prompt_file, default=None, metavar="FILE",
                     help="text-to-image models: a text file of calibration prompts, one a line")
    group = run.add_argument_group("recovery")
    group.add_argument("--recovery-steps", type=_non_negative_int, default=0, help="fine-tuning steps (default 0: off)")
    group.add_argument("--recovery-lr", type=float, default=recovery["lr"], help=f"default {recovery['lr']:g}")
    group.add_argument("--recovery-batch-size", type=_positive_int, default=recovery["batch_size"],
                       help=f"default {recovery['batch_size']}")
    group.add_argument("--distill", action="store_true", help="NiCI-Pruning distillation from the dense model")
    group.add_argument("--recovery-data", default="fashion-mnist-train",
                       help="fashion-mnist-train (default), generated, or an image folder")
    group = run.add_argument_group("evaluation")
    group.add_argument("--num-samples", type=_positive_int, default=16, help="images per stage (default 16)")
    group.add_argument("--steps", type=_positive_int, default=25, help="sampling steps (default 25)")
    _add_sampler_option(group)
    group.add_argument("--metrics", type=_comma_list(("fid", "kid", "none")), default=["kid"],
                       help="comma list of fid,kid, or none (default kid); MACs and parameters are always counted")
    group.add_argument("--reference", default=None, help="FID/KID reference: fashion-mnist-test, dense or an image "
                                                         "folder (default: fashion-mnist-test for the default model, "
                                                         "else dense)")
    group.add_argument("--results-dir", default=None, help="results store directory (default $DIFFPRUNE_RESULTS_DIR "
                                                           "or ~/.cache/diffprune/results)")
    group.add_argument("--no-store", action="store_true", help="neither read nor write the results store")
    group.add_argument("--grid-out", default=None, help="write every stage's sample grid (one row each) to this image")
    group.add_argument("--grid-images", type=_positive_int, default=16, help="images per grid row (default 16)")
    group.add_argument("--class", dest="class_label", type=_non_negative_int, default=None,
                       help="class-conditional models: the class the grids show (default: uniform)")
    group.add_argument("--prompt", default=None, help="text-to-image models: the prompt the grids show")
    group = run.add_argument_group("timing and export")
    group.add_argument("--no-timing", action="store_true", help="skip the paired latency measurement")
    group.add_argument("--latency-batch-size", type=_positive_int, default=8, help="batch of the timed step (default 8)")
    group.add_argument("--export-oneshot", action="store_true",
                       help="with a recovery: export the one-shot model too (one-shot-model/)")
    _add_dtype_option(run)
    run.set_defaults(handler=_cmd_run)


def build_parser() -> argparse.ArgumentParser:
    """The parser, built from the registries' catalog (``core.catalog``): ``--help`` and bad flags
    answer without importing torch; a command imports the engine when it runs."""
    from .catalog import catalog

    registry = catalog()
    criteria, presets, tuning = registry["criteria"], registry["presets"], registry["finetune_defaults"]
    common = _common_options()
    parser = _Parser(prog="diffprune", description="DiffPrune Studio: prune diffusion models and measure the result.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    model_help = "local diffusers dir, pruned checkpoint dir, hub id, or 'default' (the embedded model; the default)"

    prune = commands.add_parser("prune", parents=[common], help="prune a model and save the checkpoint",
                                description="Prune a copy of --model as a spec says and save it to --output.")
    prune.add_argument("--model", default=None, help=model_help)
    prune.add_argument("--output", required=True, help="checkpoint directory to write (loadable with load_pipeline)")
    base = prune.add_mutually_exclusive_group()
    base.add_argument("--spec", default=None, help="PruneSpec JSON (or YAML) file; flags given override its values")
    base.add_argument("--preset", choices=sorted(presets), default=None, help="a paper's recipe; flags override it")
    prune.add_argument("--criterion", choices=sorted(criteria), default=None, help="default magnitude")
    prune.add_argument("--granularity", default=None, help="unstructured (default), channel, head, or N:M like 2:4")
    prune.add_argument("--sparsity", type=float, default=None, help="fraction of prunable weights removed (default 0.5)")
    prune.add_argument("--channel-ratio", type=float, default=None, help="channel/head: explicit structural ratio")
    prune.add_argument("--components", type=_comma_list(), default=None,
                       help="pipeline networks to prune, comma list of attribute names (default: the denoiser; "
                            "e.g. unet,vqvae prunes an LDM's autoencoder too, its latent interface kept)")
    _add_calibration_options(prune, with_criterion_params=True, registry=registry)
    prune.add_argument("--calibration-prompts", type=_prompt_file, default=None, metavar="FILE",
                       help="text-to-image models: a text file of calibration prompts, one a line "
                            "(default: the shipped captions)")
    _add_dtype_option(prune)
    prune.set_defaults(handler=_cmd_prune)

    evaluation = commands.add_parser("eval", parents=[common], help="measure FID/KID, latency, parameters and MACs",
                                     description="Evaluate --model through core.evaluate (stored results are reused).")
    evaluation.add_argument("--model", default=None, help=model_help)
    evaluation.add_argument("--dense-model", default=None,
                            help="the unpruned model: speed-up for latency, and the reference for --reference dense")
    _add_eval_options(evaluation, registry)
    evaluation.add_argument("--batch-size", type=_positive_int, default=64, help="sampling batch size (default 64)")
    evaluation.add_argument("--no-store", action="store_true", help="neither read nor write the results store")
    evaluation.add_argument("--json-out", default=None, help="write the result row as JSON to this file")
    _add_dtype_option(evaluation)
    evaluation.set_defaults(handler=_cmd_eval)

    sample = commands.add_parser("sample", parents=[common], help="sample a grid of images from a model",
                                 description="Sample --num-images images and save them as one grid image; "
                                             "--class for class-conditional models, --prompt for text-to-image ones.")
    sample.add_argument("--model", default=None, help=model_help)
    sample.add_argument("--output", required=True, help="grid image to write (.png, .jpg, .webp)")
    sample.add_argument("--num-images", type=_positive_int, default=16, help="images in the grid (default 16, at most 50,000)")
    sample.add_argument("--steps", type=_positive_int, default=25, help="sampling steps (default 25)")
    _add_sampler_option(sample)
    sample.add_argument("--class", dest="class_label", type=_non_negative_int, default=None,
                        help="class index for class-conditional models (default: uniform over the classes)")
    sample.add_argument("--prompt", default=None, help="one prompt for every image of a text-to-image model "
                                                       "(default: the shipped captions)")
    sample.add_argument("--columns", type=_positive_int, default=4, help="grid columns (default 4)")
    sample.add_argument("--scale", type=_positive_int, default=4, help="pixel upscaling of the grid (default 4)")
    _add_dtype_option(sample)
    sample.set_defaults(handler=_cmd_sample)

    sweep = commands.add_parser(
        "sweep", parents=[common], help="prune + evaluate criteria x granularities x sparsities (resumable)",
        description="Every finished row is stored before the next starts: rerun the same command after an "
                    "interruption and stored rows are reused. A criterion/granularity pair the criterion does not "
                    "support fails at once (exit 2) with the allowed granularities.")
    sweep.add_argument("--model", default=None, help=model_help)
    sweep.add_argument("--criteria", type=_comma_list(sorted(criteria)), required=True, help="comma list of criteria")
    sweep.add_argument("--granularities", type=_comma_list(), default=["unstructured"],
                       help="comma list (default unstructured); N:M patterns ignore --sparsities")
    sweep.add_argument("--sparsities", type=_comma_list(convert=float), default=[0.5], help="comma list (default 0.5)")
    _add_eval_options(sweep, registry)
    _add_calibration_options(sweep, with_criterion_params=False, registry=registry)
    sweep.add_argument("--csv-out", default=None, help="write the sweep table (every column) as CSV")
    _add_dtype_option(sweep)
    group = sweep.add_argument_group("executor")
    group.add_argument("--executor", choices=("serial", "ray"), default="serial",
                       help="serial (default): rows one after another here; ray: each missing row as a Ray task "
                            "(needs the cluster extra: pip install 'diffprune-studio[cluster]')")
    group.add_argument("--ray-address", default=None,
                       help="with --executor ray: a running cluster's <head>:6379 (default: a local Ray instance)")
    group.add_argument("--ray-cpus-per-row", type=_positive_int, default=1,
                       help="with --executor ray: CPUs each CPU row asks for (default 1; a cuda row asks for one GPU)")
    sweep.set_defaults(handler=_cmd_sweep)

    tune = commands.add_parser("finetune", parents=[common], help="recovery fine-tuning of a pruned checkpoint",
                               description="Fine-tune --model (e.g. a `diffprune prune` checkpoint); the result is "
                                           "saved to --output, checkpoints to --output/checkpoints (resumed "
                                           "automatically).")
    tune.add_argument("--model", required=True, help=model_help)
    tune.add_argument("--output", required=True, help="directory for the fine-tuned pipeline")
    tune.add_argument("--steps", type=_non_negative_int, default=1000, help="optimizer steps (default 1000)")
    tune.add_argument("--batch-size", type=_positive_int, default=16)
    tune.add_argument("--lr", type=float, default=2e-4, help="learning rate (default 2e-4, Diff-Pruning's)")
    tune.add_argument("--images", default=None, help="training image folder (default: the shipped Fashion-MNIST set)")
    tune.add_argument("--ema", type=float, default=None, help="EMA decay in (0, 1); default no EMA")
    tune.add_argument("--distill", action="store_true", help="NiCI-Pruning knowledge distillation from --teacher")
    tune.add_argument("--teacher", default=None, help="dense teacher for --distill (default: the embedded model)")
    tune.add_argument("--distill-alpha", type=float, default=tuning["distill_alpha"])
    tune.add_argument("--distill-tau", type=float, default=tuning["distill_tau"])
    tune.add_argument("--l1-penalty", type=float, default=0.0, help="lambda * sum |w| over prunable weights")
    tune.add_argument("--regrowth", type=float, default=0.0, help="per-step probability a pruned weight revives")
    tune.add_argument("--warmup-steps", type=_non_negative_int, default=0)
    tune.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping; 0 turns it off")
    tune.add_argument("--checkpoint-every", type=_non_negative_int, default=0,
                      help="steps between checkpoints (0: only at the end)")
    tune.add_argument("--no-resume", action="store_true", help="ignore checkpoints already in --output/checkpoints")
    tune.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    _add_dtype_option(tune)
    tune.set_defaults(handler=_cmd_finetune)

    train = commands.add_parser("train-base", parents=[common], help="train the embedded default DDPM on Fashion-MNIST")
    train.add_argument("--output-dir", default="runs/train-base")
    train.add_argument("--steps", type=int, default=8000)
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--checkpoint-minutes", type=float, default=5.0)
    train.set_defaults(handler=_cmd_train_base)
    _add_run_command(commands, common, registry, model_help)
    return parser


def _quiet_diffusers() -> None:
    """The CLI's own bar reports progress; diffusers' loading bars and notices only add noise."""
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_diffusers()
    try:
        for flag in ("model", "dense_model", "teacher"):  # a "~user" path: refused before any work
            if isinstance(getattr(args, flag, None), str):
                _model_source(getattr(args, flag))
        return args.handler(args)
    except (ValueError, OSError) as error:  # bad input, missing or unreadable files: one line, no traceback
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"diffprune: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("diffprune: interrupted (a sweep keeps its finished rows: rerun the same command to resume)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
