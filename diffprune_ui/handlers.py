"""Event handlers of the Gradio app: read controls, call the ``core`` facade, return figures.

Every handler turns a core ``ValueError`` into a short ``gr.Error`` so the server keeps running
and the previous results stay on screen. Handlers are plain functions, tested without a browser.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import threading
import zipfile
from pathlib import Path

import gradio as gr
import pandas as pd

from core.default_model import DEFAULT_MODEL_DIR
from core.schedules import SCHEDULES
from core.spec import PruneSpec

from . import figures

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
SHIPPED_RESULTS = ASSETS_DIR / "results" / "benchmarks.csv"
MAX_SAMPLES = 256  # per run in the app; larger evaluations belong to the CLI / benchmarks
MAX_STEPS = 200
GRID_IMAGES = 16

try:  # Hugging Face ZeroGPU Spaces: run the compute handlers on a GPU lease; a no-op elsewhere.
    import spaces

    gpu_task = spaces.GPU(duration=300)
except ImportError:  # local machines and CPU Spaces
    def gpu_task(function):
        return function

_PIPELINES: dict = {}
_PIPELINE_LOCK = threading.Lock()
_CANCELLED: set = set()


class RunCancelled(Exception):
    """Raised from the progress callback when the user pressed Cancel."""


def _user_error(error: Exception) -> gr.Error:
    return gr.Error(str(error).splitlines()[0][:400])


def normalise_source(source: str | None) -> str | None:
    text = (source or "").strip()
    return None if text in ("", "default", str(DEFAULT_MODEL_DIR)) else text


def cached_pipeline(source: str | None):
    """The dense pipeline of ``source``, loaded once per process; runs prune a copy, never this one."""
    from core import load_pipeline

    key = normalise_source(source)
    with _PIPELINE_LOCK:
        if key not in _PIPELINES:
            _PIPELINES[key] = load_pipeline(key)
        return _PIPELINES[key]


def get_store():
    from core.store import ResultStore

    return ResultStore()


# ------------------------------------------------------------------------------ controls -> spec
def parse_custom_schedule(text: str) -> list:
    """``"0:1, 50:0.5"`` or JSON ``[[0, 1], [50, 0.5]]`` -> list of (t, weight)."""
    text = (text or "").strip()
    if not text:
        raise ValueError("custom schedule is empty: give pairs like '0:1, 100:0.5, 500:0.2' (t:weight)")
    if text.startswith("["):
        try:
            pairs = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"custom schedule is not valid JSON: {error.msg}") from error
    else:
        pairs = []
        for item in text.replace(";", ",").split(","):
            item = item.strip()
            if not item:
                continue
            if ":" not in item:
                raise ValueError(f"custom schedule entry {item!r} must look like t:weight, e.g. '10:0.5'")
            t_text, weight_text = item.split(":", 1)
            try:
                pairs.append((int(t_text), float(weight_text)))
            except ValueError as error:
                raise ValueError(f"custom schedule entry {item!r}: t must be an integer and weight a number") from error
    return [tuple(p) if isinstance(p, list) else p for p in pairs]


def schedule_params_from_controls(schedule: str, threshold, interval_weights, num_steps, w_min, w_max,
                                  num_timesteps, custom_text) -> dict:
    """Only the parameters the chosen schedule takes (the UI shows only those)."""
    if schedule == "threshold":
        return {"threshold": float(threshold)}
    if schedule == "interval":
        try:
            weights = tuple(float(w) for w in str(interval_weights).replace(" ", "").split(",") if w)
        except ValueError as error:
            raise ValueError("interval weights must be 4 comma-separated numbers, e.g. '1,1,1,1'") from error
        return {"interval_weights": weights}
    if schedule in ("log-decrease", "linear-decrease", "log-increase", "linear-increase"):
        return {"num_steps": int(num_steps), "w_min": float(w_min), "w_max": float(w_max)}
    if schedule == "uniform":
        return {"num_timesteps": int(num_timesteps)}
    if schedule == "custom":
        return {"timesteps": parse_custom_schedule(custom_text)}
    raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {schedule!r}")


def spec_from_controls(criterion, granularity, sparsity, schedule, threshold, interval_weights, num_steps, w_min,
                       w_max, num_timesteps, custom_text, calibration_batch_size, calibration_batches, seed) -> PruneSpec:
    from core.criteria import CRITERIA

    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {sorted(CRITERIA)}, got {criterion!r}")
    kwargs = dict(criterion=criterion, granularity=granularity, seed=int(seed or 0))
    if ":" in str(granularity):
        kwargs["sparsity"] = None  # N:M implies it
    else:
        kwargs["sparsity"] = float(sparsity)
    if CRITERIA[criterion].needs_calibration:
        kwargs["schedule"] = schedule
        kwargs["schedule_params"] = schedule_params_from_controls(
            schedule, threshold, interval_weights, num_steps, w_min, w_max, num_timesteps, custom_text)
        kwargs["calibration_batch_size"] = int(calibration_batch_size)
        kwargs["calibration_batches"] = int(calibration_batches)
    return PruneSpec(**kwargs)


# ------------------------------------------------------------------------------ handlers
def preview_schedule(schedule, threshold, interval_weights, num_steps, w_min, w_max, num_timesteps, custom_text):
    """Live timestep weight curve; invalid parameters show a message in the plot, not an error."""
    try:
        params = schedule_params_from_controls(schedule, threshold, interval_weights, num_steps, w_min, w_max,
                                               num_timesteps, custom_text)
        return figures.schedule_preview(schedule, params)
    except (ValueError, TypeError) as error:
        return figures.empty_figure(f"invalid schedule: {str(error)[:120]}")


def schedule_visibility(schedule):
    """Show only the parameters of the chosen schedule."""
    ramp = schedule in ("log-decrease", "linear-decrease", "log-increase", "linear-increase")
    return (gr.update(visible=schedule == "threshold"), gr.update(visible=schedule == "interval"),
            gr.update(visible=ramp), gr.update(visible=schedule == "uniform"), gr.update(visible=schedule == "custom"))


def criterion_changed(criterion):
    """Granularities the criterion supports, its default schedule, and whether it calibrates."""
    from core.criteria import CRITERIA

    entry = CRITERIA[criterion]
    choices = granularity_choices(entry.granularities)
    schedule = entry.default_schedule or "uniform"
    return (gr.update(choices=choices, value=choices[0] if choices else None),
            gr.update(value=schedule, interactive=entry.needs_calibration),
            gr.update(visible=entry.needs_calibration), f"*{entry.description}*")


def calibration_estimate(source, criterion, granularity, sparsity, schedule, threshold, interval_weights, num_steps,
                         w_min, w_max, num_timesteps, custom_text, calibration_batch_size, calibration_batches,
                         seed) -> str:
    """Before a run: how long the calibration will take here (passes x a measured per-pass time).
    Invalid settings show why instead (the run button raises the same error as gr.Error)."""
    from core.cost import describe_estimate, estimate_cost

    try:
        spec = spec_from_controls(criterion, granularity, sparsity, schedule, threshold, interval_weights, num_steps,
                                  w_min, w_max, num_timesteps, custom_text, calibration_batch_size,
                                  calibration_batches, seed)
        text = describe_estimate(estimate_cost(cached_pipeline(source), spec))
    except (ValueError, TypeError) as error:
        return f"*cannot estimate: {str(error)[:160]}*"
    return f"*{text}*" if text else ""


def granularity_choices(granularities) -> list[str]:
    """Registry names, with the N:M family expanded to the patterns the app offers."""
    choices = []
    for name in granularities:
        if name in ("N:M", "nm"):
            choices += ["2:4", "4:8"]
        else:
            choices.append(name)
    return choices


def dense_preview(source, seed=0, steps=25):
    from core import make_grid, sample_images

    try:
        pipeline = cached_pipeline(source)
        images = sample_images(pipeline, GRID_IMAGES, int(steps), int(seed or 0))
    except ValueError as error:
        raise _user_error(error) from error
    return make_grid(images, columns=4, scale=4), model_card(source, pipeline)


def model_card(source, pipeline) -> str:
    config = pipeline.unet.config
    params = sum(p.numel() for p in pipeline.unet.parameters())
    name = normalise_source(source) or "embedded default (DDPM, Fashion-MNIST)"
    return (f"**Model:** {name}  \n{params / 1e6:.2f} M parameters, {config.sample_size}px x {config.in_channels} ch, "
            f"channels {tuple(config.block_out_channels)}")


def results_table() -> pd.DataFrame:
    """Stored results of this machine's runs plus the shipped benchmark table."""
    frames = []
    try:
        stored = get_store().to_dataframe()
        if len(stored):
            frames.append(stored.assign(source="stored"))
    except ValueError:
        pass
    if SHIPPED_RESULTS.exists():
        frames.append(pd.read_csv(SHIPPED_RESULTS).assign(source="shipped"))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def results_charts(current: dict | None = None, quality: str = "kid"):
    table = results_table()
    return figures.pareto(table, current, quality), figures.quality_vs_sparsity(table, quality)


def cancel_run(request: gr.Request = None):
    if request is not None:
        _CANCELLED.add(request.session_hash)
    return "Cancelling..."


def _progress_callback(progress, session, stage_offset: float, stage_span: float):
    def callback(fraction: float, message: str) -> None:
        if session in _CANCELLED:
            raise RunCancelled("run cancelled")
        if progress is not None:
            progress(stage_offset + stage_span * max(0.0, min(1.0, fraction)), desc=message)
    return callback


# ------------------------------------------------------------------------------ run
QUALITY_METRICS = {"KID": ("kid",), "FID + KID": ("fid", "kid"), "none": ()}


def _check_counts(num_samples, steps):
    num_samples, steps = int(num_samples), int(steps)
    if not 2 <= num_samples <= MAX_SAMPLES:
        raise ValueError(f"number of samples must be between 2 and {MAX_SAMPLES} in the app "
                         f"(use `diffprune eval` for more), got {num_samples}")
    if not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"sampling steps must be between 1 and {MAX_STEPS}, got {steps}")
    return num_samples, steps


def evaluation_reference(source) -> str:
    """The default model is measured against Fashion-MNIST test images; any other model against
    its own dense samples (distance from the teacher), since hub models come with no dataset."""
    return "fashion-mnist-test" if normalise_source(source) is None else "dense"


def summary_table(result, dense_row: dict, pruned_row: dict) -> pd.DataFrame:
    totals = result.report.totals
    def fmt(value, pattern="{:,.0f}"):
        return "" if value is None else pattern.format(value)
    speedup = pruned_row.get("speedup")
    rows = [
        ("spec", "dense", result.spec.label),
        ("parameters", fmt(totals["params_before"]), fmt(totals["params_after"])),
        ("MACs per forward", fmt(totals["macs_before"]), fmt(totals["macs_after"])),
        ("non-zero weights", fmt(dense_row.get("nonzero_params")), fmt(pruned_row.get("nonzero_params"))),
        ("sparsity of prunable weights", "0%", fmt(totals["sparsity"], "{:.1%}")),
        ("structural ratio", "", fmt(totals.get("structural_ratio"), "{:.3f}")),
        ("latency / image (median, measured)", fmt(dense_row.get("latency_median_s_per_image"), "{:.4f} s"),
         fmt(pruned_row.get("latency_median_s_per_image"), "{:.4f} s")),
        ("speed-up (dense median / pruned median)", "1.00x", fmt(speedup, "{:.2f}x")),
        ("FID", fmt(dense_row.get("fid"), "{:.2f}"), fmt(pruned_row.get("fid"), "{:.2f}")),
        ("KID (± std)", _kid_text(dense_row), _kid_text(pruned_row)),
        ("samples / reference", f"{dense_row.get('num_samples')} / {dense_row.get('reference')}",
         f"{pruned_row.get('num_samples')} / {pruned_row.get('reference')}"),
        ("pruning wall time", "", fmt(totals.get("wall_time_s"), "{:.1f} s")),
        ("timesteps used", "", _timesteps_text(result)),
    ]
    return pd.DataFrame(rows, columns=["", "dense", "pruned"])


def _kid_text(row: dict) -> str:
    if row.get("kid") is None:
        return ""
    return f"{row['kid']:.4f} ± {row.get('kid_std') or 0:.4f}"


def _timesteps_text(result) -> str:
    weights = result.report.timestep_weights
    if weights is None or len(weights) == 0:
        return "none"
    text = f"{len(weights)} (t = {int(weights['t'].min())} .. {int(weights['t'].max())})"
    stopped = result.report.totals.get("schedule_stopped_at")
    return text + (f", threshold stopped at t = {stopped}" if stopped is not None else "")


def export_zip(result, usage_source: str) -> str:
    """Save the checkpoint with ``PruneResult.save`` and zip it with the report CSVs and a usage note."""
    work = Path(tempfile.mkdtemp(prefix="diffprune-export-"))
    checkpoint = result.save(work / "pruned-model")
    report = result.report
    report.layers.to_csv(checkpoint / "report_layers.csv", index=False)
    if len(report.timestep_contributions):
        report.timestep_contributions.to_csv(checkpoint / "report_timestep_contributions.csv")
    report.timestep_weights.merge(report.calibration_loss, on="t", how="left").to_csv(
        checkpoint / "report_timesteps.csv", index=False)
    pd.DataFrame([report.totals]).to_csv(checkpoint / "report_totals.csv", index=False)
    plain = report.totals.get("plain_diffusers_loadable")
    (checkpoint / "USAGE.md").write_text(
        "# Pruned model exported by DiffPrune Studio\n\n"
        f"Spec: `{result.spec.to_json()}`\nDense model: {usage_source}\n\n"
        "```python\nfrom core import load_pipeline, sample_images\n"
        "pipe = load_pipeline('pruned-model')\nimages = sample_images(pipe, 16, num_inference_steps=25, seed=0)\n```\n\n"
        + ("Also loads with plain diffusers:\n\n```python\nfrom diffusers import DDPMPipeline\n"
           "pipe = DDPMPipeline.from_pretrained('pruned-model')\n```\n" if plain else
           "Its pruned shapes are not expressible as a plain diffusers config: load it with `core.load_pipeline`.\n"))
    archive = work / f"pruned-{result.spec.criterion}-{result.spec.granularity.replace(':', 'of')}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as handle:
        for file in sorted(checkpoint.rglob("*")):
            if file.is_file():
                handle.write(file, Path("pruned-model") / file.relative_to(checkpoint))
    shutil.rmtree(checkpoint)
    return str(archive)


@gpu_task
def run_prune(source, criterion, granularity, sparsity, schedule, threshold, interval_weights, num_steps, w_min,
              w_max, num_timesteps, custom_text, calibration_batch_size, calibration_batches, num_samples, steps,
              seed, quality, request: gr.Request = None, progress=gr.Progress()):
    """Prune a copy of the cached dense model, evaluate both, and build every result view."""
    from core.engine import prune
    from core.evaluate import evaluate
    from core.metrics import compare_grid

    session = getattr(request, "session_hash", None) or "local"
    _CANCELLED.discard(session)
    try:
        num_samples, steps = _check_counts(num_samples, steps)
        if quality not in QUALITY_METRICS:
            raise ValueError(f"quality metric must be one of {list(QUALITY_METRICS)}, got {quality!r}")
        spec = spec_from_controls(criterion, granularity, sparsity, schedule, threshold, interval_weights, num_steps,
                                  w_min, w_max, num_timesteps, custom_text, calibration_batch_size,
                                  calibration_batches, seed)
        dense = cached_pipeline(source)
        result = prune(dense, spec, progress=_progress_callback(progress, session, 0.0, 0.5))
        metrics = QUALITY_METRICS[quality] + ("latency", "macs")
        reference = evaluation_reference(source)
        store = get_store()
        common = dict(num_samples=num_samples, num_inference_steps=steps, seed=spec.seed, metrics=metrics,
                      reference=reference, dense_pipeline=dense, store=store)
        dense_row = evaluate(dense, **common, progress=_progress_callback(progress, session, 0.5, 0.15))
        pruned_row = evaluate(result.pipeline, **common, prune_spec=spec,
                              progress=_progress_callback(progress, session, 0.65, 0.2))
        comparison = compare_grid(dense, result.pipeline, GRID_IMAGES, steps, spec.seed, columns=4, scale=4,
                                  progress=_progress_callback(progress, session, 0.85, 0.1))
        progress(0.96, desc="exporting")
        archive = export_zip(result, normalise_source(source) or "embedded default model")
    except RunCancelled:
        raise gr.Error("Run cancelled; the previous results are kept.") from None
    except ValueError as error:
        raise _user_error(error) from error
    finally:
        _CANCELLED.discard(session)
    report = result.report
    pairs = [(d, p) for d, p in zip(_to_pil(comparison.dense_images), _to_pil(comparison.pruned_images))]
    current = dict(pruned_row, criterion=spec.criterion, granularity=spec.granularity, sparsity=report.totals["sparsity"])
    quality_key = "kid" if "kid" in metrics else ("fid" if "fid" in metrics else "kid")
    pareto_figure, sparsity_figure = results_charts(current, quality_key)
    timesteps = report.timestep_weights.merge(report.calibration_loss, on="t", how="left")
    status = (f"**Done** in {report.totals['wall_time_s']:.1f} s pruning: {spec.label}. "
              f"Kept {report.totals['params_ratio']:.1%} of the parameters and {report.totals['macs_ratio']:.1%} of the MACs; "
              f"measured speed-up {pruned_row.get('speedup') or float('nan'):.2f}x.")
    return (
        status,
        summary_table(result, dense_row, pruned_row),
        comparison.dense_grid,
        comparison.pruned_grid,
        pairs[0],
        gr.update(maximum=len(pairs) - 1, value=0),
        pairs,
        figures.importance_heatmap(report.importance),
        figures.layer_timestep_heatmap(report.timestep_contributions),
        figures.layer_sparsity_bars(report.layers[report.layers["prunable"]]),
        figures.timesteps_used(timesteps, title=_timesteps_title(report)),
        pareto_figure,
        sparsity_figure,
        archive,
    )


def _timesteps_title(report) -> str:
    stopped = report.totals.get("schedule_stopped_at")
    title = f"Timesteps used: {report.totals.get('schedule') or 'none'}"
    return title + (f" (threshold stopped at t = {stopped})" if stopped is not None else "")


def _to_pil(images):
    from core import to_pil

    return [image.resize((image.width * 8, image.height * 8)) for image in to_pil(images)]


def select_pair(index, pairs):
    if not pairs:
        raise gr.Error("run a prune first: the slider compares one dense/pruned pair of the last run")
    index = int(index)
    if not 0 <= index < len(pairs):
        raise gr.Error(f"pair index must be between 0 and {len(pairs) - 1}, got {index}")
    return pairs[index]


def first_screen(source, seed, steps, *schedule_controls):
    """What the page shows before any run: dense samples, the schedule curve, the stored charts."""
    grid, card = dense_preview(source, seed, steps)
    pareto_figure, sparsity_figure = results_charts()
    return grid, card, preview_schedule(*schedule_controls), pareto_figure, sparsity_figure


@gpu_task
def run_compare(source, criteria, granularity, sparsities, num_samples, steps, seed, progress=gr.Progress()):
    """A sweep over criteria x sparsities through the results store (stored rows return instantly)."""
    from core.sweep import sweep

    try:
        num_samples, steps = _check_counts(num_samples, steps)
        if not criteria:
            raise ValueError("pick at least one criterion to compare")
        levels = [None] if ":" in str(granularity) else [float(s) for s in (sparsities or [])]
        if not levels:
            raise ValueError("pick at least one sparsity to compare")
        specs = []
        for criterion in criteria:
            for level in levels:
                specs.append(PruneSpec(criterion=criterion, granularity=granularity, sparsity=level, seed=int(seed or 0)))
        dense = cached_pipeline(source)
        eval_settings = dict(num_samples=num_samples, num_inference_steps=steps, seed=int(seed or 0),
                             metrics=("kid", "latency", "macs"), reference=evaluation_reference(source))
        table = sweep(dense, specs, eval_settings, store=get_store(),
                      progress=lambda f, m: progress(f, desc=m))
    except ValueError as error:
        raise _user_error(error) from error
    shown = [c for c in ("criterion", "granularity", "sparsity", "kid", "kid_std", "fid", "speedup",
                         "latency_median_s_per_image", "params", "macs", "nonzero_params", "cached") if c in table]
    return table[shown], figures.pareto(table, None, "kid"), figures.quality_vs_sparsity(table, "kid")
