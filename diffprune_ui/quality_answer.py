""""Is pruning worth it?" in one sentence, computed from result tables (``verdict.worth_it``).

For the shipped results: ``assets/results/frontier.csv`` (pruned + recovered models at several
sampling step counts and the dense model at fewer steps, latency relative to the dense model at 50
steps; ``benchmarks/bench_frontier.py``), judged by the benchmark's own verdict (FID against the
dense model at equal latency beyond two standard deviations of FID) where it has one. For a run: its one-shot and recovered points (latency 1 /
measured speed-up; 1.0 where no speed-up was measured) against the dense model at fewer steps under
the run's settings (``handlers.frontier_table``: ``dense_steps.csv`` or the app's own measurement).
"""
from __future__ import annotations

from pathlib import Path

from .verdict import no_measured_speedup, worth_it, worth_it_sentence

SHIPPED_FRONTIER = Path(__file__).resolve().parent.parent / "assets" / "results" / "frontier.csv"


def shipped_answer(quality: str = "kid", path: Path = SHIPPED_FRONTIER, model: str = "default",
                   scheduler: str | None = None) -> dict | None:
    """The shipped results' answer for ``model`` (``"default"``, ``assets/<name>``) with
    ``scheduler`` (None: each sampler's points against its own dense line, together)."""
    table = _shipped_rows(path, model, scheduler)
    if table is None or quality not in table:
        return None
    # Each sampler's pruned points against the dense line of the same sampler (when the table has several).
    groups = table.groupby("scheduler", sort=False) if "scheduler" in table else [(None, table)]
    answers = []
    for name, group in groups:
        dense = group[group["criterion"] == "dense"].to_dict("records")
        sampler = f" ({name})" if name is not None and table["scheduler"].nunique() > 1 else ""
        pruned = [dict(row, label=f"{row['label']} at {int(row['num_inference_steps'])} steps{sampler}")
                  for row in group[group["criterion"] != "dense"].to_dict("records")]
        answer = worth_it(dense, pruned, quality)
        if answer is not None:
            answers.append(answer)
    if not answers:
        return None
    return dict(compared=sum(a["compared"] for a in answers), beating=sum(a["beating"] for a in answers),
                best=max((a["best"] for a in answers), key=lambda point: point["margin"]))


def _shipped_rows(path: Path, model: str, scheduler: str | None):
    import pandas as pd

    if not path.exists():
        return None
    table = pd.read_csv(path)
    if "model" in table:
        table = table[table["model"] == model]
    if scheduler is not None and "scheduler" in table:
        table = table[table["scheduler"] == scheduler]
    return table


SAMPLER_NAMES = {"ddim": "DDIM", "dpm-solver++": "DPM-Solver++", "ddpm": "DDPM"}


def shipped_sentence(quality: str = "kid", path: Path = SHIPPED_FRONTIER, model: str = "default",
                     scheduler: str | None = None) -> str:
    """The shipped results' answer in one sentence, naming the model, the sampler and the sample count."""
    table = _shipped_rows(path, model, scheduler)
    samples = f", {int(table['num_samples'].max())} samples" if table is not None and len(table) else ""
    sampler = f", {SAMPLER_NAMES.get(scheduler, scheduler)}" if scheduler is not None else ""
    name = "default model" if model == "default" else model
    if table is None or "criterion" not in table or not (table["criterion"] != "dense").any():
        return (f"**Is pruning worth it?** Not answered for the shipped results ({name}{sampler}): no pruned model "
                "was measured with these settings.")
    subject = f"the shipped results ({name}{sampler}{samples}, pruned + recovered)"
    judged = _judged(table)
    if judged is not None:
        return _verdict_sentence(judged, subject, several_samplers=scheduler is None)
    return worth_it_sentence(shipped_answer(quality, path, model, scheduler), quality, subject)


VERDICTS = ("win", "tie", "loss")


def _judged(table):
    """The pruned rows the benchmark judged against the dense frontier at equal latency (its
    ``verdict``: FID beyond the two spreads), or None unless it judged every point it compared."""
    if "verdict" not in table or "margin" not in table:
        return None
    compared = table[(table["criterion"] != "dense") & table["fid_minus_frontier"].notna()]
    if not len(compared) or not compared["verdict"].isin(VERDICTS).all():  # a spread not measured somewhere
        return None
    return compared


def _verdict_sentence(judged, subject: str, several_samplers: bool) -> str:
    """The benchmark's verdict in one sentence: a win needs an FID below the dense model at equal
    latency by more than the two spreads (2 sigma of FID at this sample count)."""
    import pandas as pd

    counts = judged["verdict"].value_counts()
    wins, ties, total = int(counts.get("win", 0)), int(counts.get("tie", 0)), len(judged)
    closest = judged.loc[judged["fid_minus_frontier"].astype(float).idxmin()]
    sampler = (f", {SAMPLER_NAMES.get(closest['scheduler'], closest['scheduler'])}"
               if several_samplers and "scheduler" in judged and judged["scheduler"].nunique() > 1 else "")
    point = (f"{closest['label']} at {int(closest['num_inference_steps'])} steps{sampler}: FID "
             f"{float(closest['fid_minus_frontier']):+.1f} ± {float(closest['margin']):.1f} against the dense model at "
             f"{float(closest['relative_latency']):.2f} of the dense latency")
    robust = (int((judged["verdict_best_sampler"] == "win").sum()) if "verdict_best_sampler" in judged else wins)
    if wins and not robust:
        best = closest.get("best_sampler_frontier_fid")
        return (f"**Is pruning worth it? Not against the best sampler** for {subject}: {wins} of {total} pruned points "
                f"beat the dense model at fewer steps of this sampler at equal latency by more than the noise (2 sigma "
                f"of FID), but the dense model with the best sampler is better at the same latency"
                + (f" (FID {float(best):.1f})" if pd.notna(best) else "") + f"; best, {point}.")
    if wins:
        return (f"**Is pruning worth it? Yes** for {subject}: {wins} of {total} pruned points beat the dense model at "
                f"fewer sampling steps at equal latency by more than the noise (2 sigma of FID), {robust} of them "
                f"against the best sampler too; best, {point}.")
    if ties:
        return (f"**Is pruning worth it? Not beyond the noise** for {subject}: {ties} of {total} pruned points tie the "
                f"dense model at fewer sampling steps at equal latency (within 2 sigma of FID), none beats it; "
                f"closest, {point}.")
    return (f"**Is pruning worth it? No** for {subject}: the dense model at fewer sampling steps beats every one of "
            f"the {total} pruned points at equal latency by more than the noise (2 sigma of FID); closest, {point}.")


def shipped_model(source) -> str:
    """The model name of the shipped results' rows for the model on screen: ``"default"`` for the
    embedded default model, ``assets/<name>`` for another embedded one, else the source as typed."""
    from .first_screen import embedded_name

    try:
        name = embedded_name(source)
    except ValueError:
        name = None
    if name is None:
        return str(source).strip()[:200] if isinstance(source, str) else "default"
    from core.catalog import catalog

    return "default" if name == next(iter(catalog()["embedded_models"])) else f"assets/{name}"


def shipped_frontier(source, sampler="ddim"):
    """The shipped "Is pruning worth it?" chart and its sentence for the model on screen and the
    chosen sampler (the Quality tab's sampler choice)."""
    import gradio as gr

    from . import handlers

    try:
        sampler = handlers.check_sampler(sampler)
    except ValueError as error:
        raise gr.Error(str(error), print_exception=False) from None
    model = shipped_model(source)
    return handlers.frontier_figure("kid", model, sampler), shipped_sentence("kid", model=model, scheduler=sampler)


def run_points(current: list[dict]) -> list[dict]:
    """A run's one-shot and recovered rows as points on the relative-latency axis."""
    points = []
    for row in current or []:
        speedup = row.get("speedup")
        if not speedup:
            continue
        steps = int(row.get("finetune_steps") or 0)
        latency = 1.0 if no_measured_speedup(row) else 1.0 / float(speedup)
        points.append(dict(row, relative_latency=latency,
                           label=f"your run, recovered {steps:,} steps" if steps else "your run, one-shot"))
    return points


def run_sentence(current: list[dict], frontier, quality: str = "kid") -> str:
    """The sentence for a run; ``frontier`` is the dense model at fewer steps under its settings."""
    points = run_points(current)
    if not points:
        return "**Is pruning worth it?** Not answered for your run: its latency was not timed."
    if frontier is None or len(frontier) == 0 or quality not in frontier:
        return ("**Is pruning worth it?** For your run: measuring the dense model at fewer sampling steps under "
                "your settings (the chart above updates when it is done).")
    return worth_it_sentence(worth_it(frontier.to_dict("records"), points, quality), quality, "your run")


def latest_run_rows(rows) -> list[dict]:
    """The latest app run among stored rows (oldest first): its recovered row and the one-shot row
    of the same spec, or its one-shot row alone."""
    if rows is None or len(rows) == 0 or "kind" not in rows:
        return []
    mine = rows[rows["kind"] == "app-run"]
    if not len(mine):
        return []
    last = mine.iloc[-1].to_dict()
    if not int(last.get("finetune_steps") or 0):
        return [last]
    one_shot = mine[(mine["spec_json"] == last["spec_json"]) & (mine["finetune_steps"].fillna(0) == 0)]
    return ([one_shot.iloc[-1].to_dict()] if len(one_shot) else []) + [last]


def after_run(source, num_samples, steps, quality, sampler="ddim"):
    """The Quality tab's sentences after a run (and after the dense model at fewer steps was
    measured under its settings and sampler): the run's answer, then the shipped results' one."""
    import gradio as gr

    from . import figures, handlers

    try:
        num_samples, steps = handlers.check_counts(num_samples, steps)
        metrics, sampler = handlers.check_quality(quality), handlers.check_sampler(sampler)
    except ValueError:
        return gr.skip()
    quality_key = "kid" if "kid" in metrics or not metrics else "fid"
    settings = (handlers.chart_label(source, sampler), num_samples, steps, handlers.evaluation_reference(source))
    if not metrics:
        first = "**Is pruning worth it?** Not answered for your run: it was not evaluated (quality metric: none)."
    else:
        rows, _ = figures.comparable(handlers.results_table(), settings)
        first = run_sentence(latest_run_rows(rows), handlers.frontier_table(settings, sampler), quality_key)
    return first + "\n\n" + shipped_sentence("kid")


def measured_win(spec, recovery_steps: int, steps: int, sampler: str, model: str = "default",
                 path: Path = SHIPPED_FRONTIER) -> str:
    """A preset's measured numbers: the shipped frontier row of ``spec`` (criterion, granularity,
    sparsity) recovered for ``recovery_steps`` and sampled with ``steps`` steps of ``sampler`` on
    ``model``, against the dense model at equal latency; says so when it is not shipped."""
    table = _shipped_rows(path, model, sampler)
    name = SAMPLER_NAMES.get(sampler, sampler)
    missing = (f"**Measured:** not in the shipped frontier results ({spec.criterion} {spec.granularity} "
               f"{spec.sparsity:g}, {recovery_steps:,} recovery steps, {steps} {name} steps).")
    if table is None or "verdict" not in table:
        return missing
    rows = table[(table["criterion"] == spec.criterion) & (table["granularity"] == spec.granularity)
                 & ((table["sparsity"] - float(spec.sparsity or 0)).abs() < 1e-6)
                 & (table["finetune_steps"] == recovery_steps) & (table["num_inference_steps"] == steps)]
    if not len(rows):
        return missing
    row = rows.iloc[0]
    samples = int(row["num_samples"])
    return (f"**Measured** ({'default model' if model == 'default' else model}, {samples} samples, "
            "`benchmarks/bench_frontier.py`): after "
            f"{recovery_steps:,} recovery steps{' with distillation' if bool(row['distill']) else ''}, FID "
            f"{float(row['fid']):.1f} at {steps} {name} steps, {float(row['speedup']):.2f}x per step: "
            f"{float(row['relative_latency']):.3f} of the dense model's 50-step latency, where the dense model at fewer "
            f"steps has FID {float(row['frontier_fid']):.1f} ({float(row['fid_minus_frontier']):+.1f} ± "
            f"{float(row['margin']):.1f}: **{row['verdict']}**; against the best sampler: "
            f"**{row['verdict_best_sampler']}**). The recovery is the slow part: about half a second per step on "
            "a 2-core CPU in that benchmark.")
