"""Plotly figures built from what ``core`` returns (schedules, reports, result tables).

Nothing here computes a metric: every number plotted comes from ``core`` or from a stored or
shipped result table. Each builder is wrapped by :func:`safe_figure` in the handlers, so a view
that cannot be drawn becomes a one-line note instead of taking the rest of a run with it.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .verdict import no_measured_speedup

_LAYOUT = dict(template="plotly_white", margin=dict(l=50, r=20, t=50, b=45), height=340)
# A fixed colour per criterion and a fixed marker per granularity, so that every chart of a run
# speaks the same language.
CRITERION_COLOURS = {
    "random": "#9e9e9e", "magnitude": "#1f77b4", "taylor": "#d62728", "nici": "#2ca02c",
    "l1": "#ff7f0e", "obs": "#9467bd", "gradflow": "#8c564b", "dense": "#000000",
}
GRANULARITY_MARKERS = {"channel": "circle", "unstructured": "square", "2:4": "diamond", "4:8": "triangle-up",
                       "head": "x", "": "star"}
# The settings a quality figure depends on: results that differ in any of them are not comparable.
SETTINGS = ("model", "num_samples", "num_inference_steps", "reference")


def _colour(name: str) -> str:
    return CRITERION_COLOURS.get(str(name), "#17becf")


def _marker(granularity) -> str:
    return GRANULARITY_MARKERS.get(str(granularity), "circle")


def empty_figure(message: str) -> go.Figure:
    figure = go.Figure()
    figure.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                          font=dict(size=14, color="#777"))
    figure.update_layout(**_LAYOUT, xaxis=dict(visible=False), yaxis=dict(visible=False))
    return figure


def _sampling_axis(num_train_timesteps: int) -> dict:
    """t decreasing from left to right: the order in which the sampler visits the timesteps, so a
    schedule named "decrease" reads as decreasing."""
    return dict(range=[num_train_timesteps + 10, -10], automargin=True,
                title=dict(text=f"timestep t: noisy {num_train_timesteps - 1} → clean 0 (sampling order)", font=dict(size=12)))


def schedule_preview(name: str, params: dict, num_train_timesteps: int = 1000, compare: bool = True) -> go.Figure:
    """Timestep weight curve of the chosen schedule, other schedules as faint comparison lines.

    ``threshold`` is decided during calibration (it depends on the model), so it is drawn after a run
    (:func:`threshold_walk`)."""
    from core.schedules import SCHEDULES

    figure = go.Figure()
    if compare:
        for other, schedule in SCHEDULES.items():
            if other == name or schedule.adaptive or other == "custom":
                continue
            points = schedule.resolve(num_train_timesteps, {})
            figure.add_trace(go.Scatter(
                x=[t for t, _ in points], y=[w for _, w in points], name=other, mode="lines+markers",
                opacity=0.25, line=dict(width=1), marker=dict(size=3), hoverinfo="name+x+y"))
    schedule = SCHEDULES[name]
    title = f"Timestep weights: {name}"
    if schedule.adaptive:
        title += "<br><sup>decided during calibration: drawn after a run</sup>"
    else:
        points = schedule.resolve(num_train_timesteps, params)
        figure.add_trace(go.Scatter(
            x=[t for t, _ in points], y=[w for _, w in points], name=f"{name} ({len(points)} t)",
            mode="lines+markers", line=dict(width=3, color="#d62728"), marker=dict(size=5)))
    # Title, axis and legend sized for a phone too: the legend sits below the plot, not beside it.
    figure.update_layout(**{**_LAYOUT, "height": 380}, title=dict(text=title, font=dict(size=15)),
                         xaxis=_sampling_axis(num_train_timesteps), yaxis=dict(title="weight", automargin=True),
                         legend=dict(font=dict(size=10), orientation="h", yanchor="top", y=-0.22, x=0))
    return figure


def threshold_walk(weights: pd.DataFrame, stopped_at, threshold, num_train_timesteps: int = 1000) -> go.Figure:
    """Where Diff-Pruning's threshold walk went and where it stopped (after a run)."""
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=weights["t"], y=weights["weight"], mode="lines+markers", name="timesteps used",
                                line=dict(width=3, color="#d62728"), marker=dict(size=4)))
    if "loss" in weights and weights["loss"].notna().any():
        figure.add_trace(go.Scatter(x=weights["t"], y=weights["loss"], name="calibration loss", yaxis="y2",
                                    mode="lines", line=dict(color="#1f77b4", dash="dot")))
    if stopped_at is not None:
        figure.add_vline(x=int(stopped_at), line=dict(color="black", dash="dash"),
                         annotation_text=f"stopped at t = {int(stopped_at)}", annotation_position="top")
    figure.update_layout(**_LAYOUT, title=f"Timestep weights: threshold {threshold} (walk from t = 0; stopped at t = {stopped_at})",
                         xaxis=_sampling_axis(num_train_timesteps), yaxis=dict(title="weight"),
                         yaxis2=dict(title="loss", overlaying="y", side="right"), legend=dict(font=dict(size=10)))
    return figure


def timesteps_used(weights: pd.DataFrame, title: str = "Timesteps used in calibration") -> go.Figure:
    """The weights actually used, with the calibration loss per timestep on a second axis.

    ``weights`` has columns ``t``, ``weight`` and optionally ``loss``.
    """
    if weights is None or len(weights) == 0:
        return empty_figure("this criterion uses no calibration timesteps")
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=weights["t"], y=weights["weight"], name="weight", mode="lines+markers",
                                line=dict(color="#d62728")))
    if "loss" in weights and weights["loss"].notna().any():
        figure.add_trace(go.Scatter(x=weights["t"], y=weights["loss"], name="calibration loss", yaxis="y2",
                                    mode="lines", line=dict(color="#1f77b4", dash="dot")))
    figure.update_layout(**_LAYOUT, title=title, xaxis=_sampling_axis(1000),
                         yaxis=dict(title="weight"), yaxis2=dict(title="loss", overlaying="y", side="right"))
    return figure


def _as_vector(values) -> np.ndarray:
    """Per-unit importance as a 1-D vector: 2-D (output x input block, unstructured / N:M) and
    higher arrays are summed over everything but their first axis (one value per output unit)."""
    array = np.asarray(values.detach().cpu().float() if hasattr(values, "detach") else values, dtype=float)
    if array.ndim == 0:
        return array.reshape(1)
    if array.ndim > 1:
        array = array.reshape(array.shape[0], -1).sum(axis=1)
    return array


def importance_heatmap(vectors: dict, bins: int = 32, title: str = "Per-layer importance",
                       pruned: dict | None = None) -> go.Figure:
    """Layers x bins heatmap of importance (per channel / head, or per output unit of a weight
    matrix for unstructured and N:M). Each layer's vector is resampled to ``bins`` columns (order
    kept) and normalised by its maximum, so layers of different widths share one picture.
    ``pruned``: layer -> ``(removed, total, indices)`` of a structural cut: the row's label says
    how many units went, and the bins of removed ``indices`` (when known) carry a red cross."""
    pruned = pruned or {}
    if not vectors:
        return empty_figure("no importance vectors in this report")
    names, rows, crosses = [], [], []
    for name, values in vectors.items():
        vector = _as_vector(values)
        if vector.size == 0:
            continue
        columns = min(bins, vector.size)
        edges = np.linspace(0, vector.size, columns + 1).astype(int)
        resampled = [float(vector[lo:max(hi, lo + 1)].mean()) for lo, hi in zip(edges[:-1], edges[1:])]
        peak = max(abs(v) for v in resampled) or 1.0
        label = name
        if name in pruned:
            removed, total, indices = pruned[name]
            label = f"{name} (-{removed}/{total})"
            hit = sorted({int(np.searchsorted(edges, index, side="right")) - 1 for index in indices or ()})
            crosses.extend((bin_index, label) for bin_index in hit if 0 <= bin_index < columns)
        names.append(label)
        rows.append([v / peak for v in resampled] + [math.nan] * (bins - columns))
    figure = go.Figure(go.Heatmap(z=rows, y=names, x=list(range(bins)), colorscale="Viridis",
                                  colorbar=dict(title="rel. importance"),
                                  hovertemplate="%{y}<br>bin %{x}: %{z:.3f}<extra></extra>"))
    if crosses:
        figure.add_trace(go.Scatter(x=[c[0] for c in crosses], y=[c[1] for c in crosses], mode="markers",
                                    marker=dict(symbol="x", color="#d62728", size=9), name="pruned units",
                                    hovertemplate="%{y}<br>bin %{x}: pruned<extra></extra>"))
    if pruned:
        title += " (-k/N: units pruned" + ("; x: the pruned ones)" if crosses else ")")
    figure.update_layout(**{**_LAYOUT, "height": max(340, 16 * len(names) + 120)}, title=title,
                         xaxis_title="unit bin (output channel / head / output row, in order)",
                         yaxis=dict(autorange="reversed", tickfont=dict(size=9)))
    return figure


def layer_timestep_heatmap(table: pd.DataFrame, group_sizes: dict | None = None,
                           title: str = "Which timesteps drive which layers") -> go.Figure:
    """Layer x timestep-group contribution (rows layers, columns groups keyed by their first t).

    Each column is divided by the number of timesteps in its group (``group_sizes``), so a last
    group of one timestep is not drawn as if it contributed nothing; rows are then normalised."""
    if table is None or len(table) == 0:
        return empty_figure("this criterion has no per-timestep contributions")
    table = table.astype(float)
    if group_sizes:
        sizes = pd.Series({column: max(1, int(group_sizes.get(column, 1))) for column in table.columns})
        table = table.div(sizes, axis=1)
    normalised = table.div(table.abs().max(axis=1).replace(0, 1), axis=0)
    labels = [f"t={c}" + (f" (+{int(group_sizes.get(c, 1)) - 1})" if group_sizes and group_sizes.get(c, 1) > 1 else "")
              for c in normalised.columns]
    figure = go.Figure(go.Heatmap(z=normalised.values, x=labels, y=list(normalised.index), colorscale="Magma",
                                  colorbar=dict(title="share"),
                                  hovertemplate="%{y}<br>%{x}: %{z:.3f}<extra></extra>"))
    figure.update_layout(**{**_LAYOUT, "height": max(340, 16 * len(normalised) + 120)},
                         title=title + " (mean per timestep of each group)", xaxis_title="timestep group (first t)",
                         yaxis=dict(autorange="reversed", tickfont=dict(size=9)))
    return figure


def layer_sparsity_bars(layers: pd.DataFrame) -> go.Figure:
    """Per-layer fraction of parameters kept, horizontal so that every layer name reads."""
    if layers is None or len(layers) == 0:
        return empty_figure("no per-layer table")
    kept = 1.0 - layers["sparsity"].astype(float)
    figure = go.Figure(go.Bar(y=layers["name"], x=kept, orientation="h", marker_color="#2ca02c", name="kept",
                              hovertemplate="%{y}<br>kept %{x:.1%}<extra></extra>"))
    figure.update_layout(**{**_LAYOUT, "height": max(380, 14 * len(layers) + 100), "margin": dict(l=260, r=20, t=50, b=45)},
                         title="Parameters kept per layer", xaxis=dict(range=[0, 1.02], tickformat=".0%", title="kept"),
                         yaxis=dict(autorange="reversed", tickfont=dict(size=9)))
    return figure


# ------------------------------------------------------------------------------ results charts
def _quality_column(results: pd.DataFrame, quality: str) -> str:
    if quality in results and results[quality].notna().any():
        return quality
    for candidate in ("kid", "fid"):
        if candidate in results and results[candidate].notna().any():
            return candidate
    return quality


def settings_of(row) -> tuple:
    return tuple(None if pd.isna(row.get(k)) else (int(row[k]) if k in ("num_samples", "num_inference_steps") else row[k])
                 for k in SETTINGS)


def settings_text(settings: tuple) -> str:
    model, samples, steps, reference = settings
    return f"{model} model, {samples} samples, {steps} sampling steps, vs {reference}"


def comparable(results: pd.DataFrame, settings: tuple) -> tuple[pd.DataFrame, int]:
    """The rows measured under ``settings`` (model, samples, steps, reference) and how many others were hidden."""
    if results is None or len(results) == 0:
        return pd.DataFrame(), 0
    mask = pd.Series(True, index=results.index)
    for key, value in zip(SETTINGS, settings):
        if key not in results:
            return results.iloc[0:0], len(results)
        column = results[key]
        mask &= (column.astype("float") == float(value)) if key in ("num_samples", "num_inference_steps") else (column == value)
    return results[mask], int((~mask).sum())


def _hover(rows: pd.DataFrame, quality: str) -> list[str]:
    texts = []
    for _, r in rows.iterrows():
        tuned = int(r.get("finetune_steps") or 0) if not pd.isna(r.get("finetune_steps")) else 0
        texts.append(
            f"<b>{r.get('criterion')}</b> · {r.get('granularity') or 'dense'} · sparsity {float(r.get('sparsity') or 0):.0%}"
            + (f" · fine-tuned {tuned} steps" if tuned else " · no fine-tuning")
            + f"<br>{int(r['num_samples'])} samples, {int(r['num_inference_steps'])} steps ({r.get('source', '')})"
            + f"<br>{quality.upper()} {float(r[quality]):.4g}"
            + (f" ± {float(r['kid_std']):.3g}" if quality == "kid" and not pd.isna(r.get("kid_std")) else ""))
    return texts


def pareto(results: pd.DataFrame, settings: tuple | None, current: dict | None = None, quality: str = "kid",
           frontier: pd.DataFrame | None = None) -> go.Figure:
    """Quality vs latency relative to the dense model at the same settings (``1 / speed-up``,
    measured paired), with the dense model at fewer sampling steps as the baseline frontier.

    Only results measured under ``settings`` are drawn; a point beats the baseline only if it lies
    below the frontier at its latency."""
    if settings is None:
        return empty_figure("no results yet: run a prune or a sweep")
    rows, hidden = comparable(results, settings)
    quality = _quality_column(rows if len(rows) else results, quality)
    figure = go.Figure()
    if frontier is not None and len(frontier) and quality in frontier:
        line = frontier.dropna(subset=[quality, "relative_latency"]).sort_values("relative_latency")
        figure.add_trace(go.Scatter(
            x=line["relative_latency"], y=line[quality], mode="lines+markers+text", name="dense, fewer steps (baseline)",
            text=[f"{int(k)}" for k in line["num_inference_steps"]], textposition="top right",
            line=dict(color="black", dash="dash"), marker=dict(color="black", size=6),
            hovertemplate="dense at %{text} steps<br>relative latency %{x:.2f}<br>" + quality.upper() + " %{y:.4g}<extra></extra>"))
    points = rows.dropna(subset=["speedup", quality]) if {"speedup", quality} <= set(rows.columns) else rows.iloc[0:0]
    points = points[points.get("criterion", pd.Series(index=points.index, dtype=object)) != "dense"]
    flat = pd.Series([no_measured_speedup(row) for _, row in points.iterrows()], index=points.index, dtype=bool)
    for (criterion, granularity, is_flat), group in points.groupby(["criterion", points["granularity"].fillna(""), flat]):
        tuned = group.get("finetune_steps", pd.Series(0, index=group.index)).fillna(0).astype(float) > 0
        for is_tuned, part in group.groupby(tuned):
            figure.add_trace(go.Scatter(
                x=[1.0] * len(part) if is_flat else 1.0 / part["speedup"].astype(float), y=part[quality], mode="markers",
                name=f"{criterion} · {granularity}" + (" · fine-tuned" if is_tuned else "")
                     + (" · no measured speed-up" if is_flat else ""),
                legendgroup=str(criterion), text=[text + _flat_note(row) if is_flat else text for text, (_, row)
                                                  in zip(_hover(part, quality), part.iterrows())],
                marker=dict(size=10, color=_colour(criterion), line=dict(width=1, color="white"),
                            symbol=_marker(granularity) + ("-open" if is_tuned else "") + ("-dot" if is_flat else "")),
                hovertemplate="%{text}<br>relative latency %{x:.2f}<extra></extra>"))
    for point in _current_points(current):
        if point.get(quality) is None or not point.get("speedup"):
            continue
        flat = no_measured_speedup(point)
        figure.add_trace(_this_run_trace(point, quality, 1.0 if flat else 1.0 / point["speedup"],
                                         "%{hovertext}<br>relative latency %{x:.2f}<extra>this run</extra>", flat))
    if not figure.data:
        return empty_figure(f"no results with latency at these settings ({settings_text(settings)})")
    if _current_points(current):
        _pad_ranges(figure)
    note = f"{settings_text(settings)}" + (f"; {hidden} results at other settings hidden" if hidden else "")
    figure.update_layout(**{**_LAYOUT, "height": 420}, title=dict(text=f"{quality.upper()} vs latency<br><sup>{note}</sup>"),
                         xaxis_title="latency relative to the dense model at these steps (1 / measured speed-up)",
                         yaxis_title=f"{quality.upper()} (lower is better)", legend=dict(font=dict(size=10)))
    return figure


def quality_vs_sparsity(results: pd.DataFrame, settings: tuple | None, current: dict | None = None,
                        quality: str = "kid") -> go.Figure:
    """Quality against measured sparsity, one line per criterion x granularity (colour: criterion,
    marker: granularity), one-shot and recovered rows apart (open markers: recovered, with the
    budget in the legend); N:M patterns sit at their fixed sparsity and say so."""
    if settings is None:
        return empty_figure("no results yet: run a prune or a sweep")
    rows, hidden = comparable(results, settings)
    quality = _quality_column(rows if len(rows) else results, quality)
    figure = go.Figure()
    if quality in rows and len(rows):
        dense = rows[rows["criterion"] == "dense"].dropna(subset=[quality])
        if len(dense):
            figure.add_hline(y=float(dense[quality].iloc[0]), line=dict(color="black", dash="dash"),
                             annotation_text="dense", annotation_position="top left")
        data = rows[(rows["criterion"] != "dense")].dropna(subset=[quality])
        tuned_steps = (data["finetune_steps"].fillna(0).astype(float).astype(int) if "finetune_steps" in data
                       else pd.Series(0, index=data.index))
        x_column = "measured_sparsity" if "measured_sparsity" in data and data["measured_sparsity"].notna().all() else "sparsity"
        for (criterion, granularity, tuned), group in data.groupby([data["criterion"], data["granularity"].fillna(""),
                                                                     tuned_steps]):
            group = group.sort_values(x_column)
            error = group["kid_std"] if quality == "kid" and "kid_std" in group else None
            label = (f"{criterion} · {granularity}" + (" (fixed 1-N/M)" if ":" in str(granularity) else "")
                     + (f" · recovered {tuned:,} steps" if tuned else " · one-shot"))
            figure.add_trace(go.Scatter(
                x=group[x_column], y=group[quality], mode="lines+markers", name=label, legendgroup=str(criterion),
                text=_hover(group, quality), hovertemplate="%{text}<extra></extra>",
                line=dict(color=_colour(criterion), dash="solid" if granularity == "channel" else "dot",
                          width=1 if tuned else 2),
                marker=dict(symbol=_marker(granularity) + ("-open" if tuned else ""), size=9, color=_colour(criterion)),
                error_y=dict(type="data", array=error, visible=error is not None, thickness=1)))
    for point in _current_points(current):
        if point.get(quality) is None:
            continue
        figure.add_trace(_this_run_trace(point, quality, point.get("sparsity"), "%{hovertext}<extra>this run</extra>"))
    if not figure.data:
        return empty_figure(f"no results at these settings ({settings_text(settings)})")
    if _current_points(current):
        _pad_ranges(figure)
    note = settings_text(settings) + "; open markers: recovered (fine-tuned)" + (f"; {hidden} results at other settings hidden" if hidden else "")
    figure.update_layout(**{**_LAYOUT, "height": 420}, title=dict(text=f"{quality.upper()} vs sparsity<br><sup>{note}</sup>"),
                         xaxis_title="sparsity (fraction of prunable parameters removed, measured)",
                         yaxis_title=f"{quality.upper()} (lower is better)", xaxis=dict(tickformat=".0%"),
                         legend=dict(font=dict(size=10)))
    return figure


def _pad_ranges(figure: go.Figure) -> None:
    """Fixed axis ranges around every point with room for the labels of this run's points (text
    below a marker is not part of plotly's automatic range, so it would be clipped at an edge)."""
    xs, ys = [], []
    for trace in figure.data:
        for values, into in ((trace.x, xs), (trace.y, ys)):
            for value in values if values is not None else ():
                try:
                    number = float(value)
                except (TypeError, ValueError):
                    continue
                if math.isfinite(number):
                    into.append(number)
    ys += [float(shape.y0) for shape in figure.layout.shapes or () if shape.y0 is not None and shape.y0 == shape.y1]
    if not xs or not ys:
        return
    x_span = (max(xs) - min(xs)) or max(abs(max(xs)), 0.1)
    y_span = (max(ys) - min(ys)) or max(abs(max(ys)), 1e-3)
    figure.update_xaxes(range=[min(xs) - 0.25 * x_span, max(xs) + 0.25 * x_span])
    figure.update_yaxes(range=[min(ys) - 0.3 * y_span, max(ys) + 0.12 * y_span])


def _flat_note(row) -> str:
    """Hover text of a point drawn at 1.0: why it shows no speed-up."""
    if str(row.get("granularity") or "") == "unstructured" or ":" in str(row.get("granularity") or ""):
        return "<br>no measured speed-up: zeroed weights run at dense speed without sparse kernels"
    return (f"<br>no measured speed-up: the paired range {float(row['speedup_low']):.2f}-"
            f"{float(row['speedup_high']):.2f}x contains 1 (within timing noise)")


def _current_points(current) -> list[dict]:
    """This run's points: none, one (one-shot) or two (one-shot and recovered)."""
    if not current:
        return []
    return [current] if isinstance(current, dict) else [p for p in current if p]


def _tuned(point: dict) -> int:
    value = point.get("finetune_steps") or 0
    return 0 if isinstance(value, float) and math.isnan(value) else int(value)


def _this_run_trace(point: dict, quality: str, x, hovertemplate: str, flat: bool = False) -> go.Scatter:
    """This run's point: the large gold-ringed marker (open when recovered, dotted when it shows no
    measured speed-up), labelled; the label is drawn outside the plot area when it reaches an edge."""
    name = _run_label(point)
    hover = _hover(pd.DataFrame([point]), quality)
    return go.Scatter(
        x=[x], y=[point[quality]], mode="markers+text", name=name, text=[name], textposition="bottom center",
        hovertext=[hover[0] + _flat_note(point)] if flat else hover, hovertemplate=hovertemplate, cliponaxis=False,
        marker=dict(symbol=_marker(point.get("granularity")) + ("-open" if _tuned(point) else "") + ("-dot" if flat else ""),
                    size=18, color=_colour(point.get("criterion")), line=dict(width=3, color="#ffbf00")))


def _run_label(point: dict) -> str:
    steps = _tuned(point)
    return f"this run, recovered {steps:,} steps" if steps else "this run, one-shot"


def recovery_losses(losses: pd.DataFrame, recovery: dict | None = None) -> go.Figure:
    """The recovery loss per step (raw and a moving average), with its parts when distilled."""
    if losses is None or len(losses) == 0:
        return empty_figure("no recovery steps ran")
    window = max(1, len(losses) // 20)
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=losses["step"], y=losses["loss"], mode="lines", name="loss (each step)",
                                line=dict(color="#bbbbbb", width=1)))
    figure.add_trace(go.Scatter(x=losses["step"], y=losses["loss"].rolling(window, min_periods=1).mean(), mode="lines",
                                name=f"loss ({window}-step mean)", line=dict(color="#d62728", width=2)))
    if "distillation" in losses and float(losses["distillation"].abs().sum()) > 0:
        for part, colour in (("denoising", "#1f77b4"), ("distillation", "#2ca02c")):
            figure.add_trace(go.Scatter(x=losses["step"], y=losses[part].rolling(window, min_periods=1).mean(),
                                        mode="lines", name=f"{part} ({window}-step mean)",
                                        line=dict(color=colour, width=1, dash="dot")))
    title = "Recovery loss"
    if recovery:
        title += (f"<br><sup>{recovery['steps']:,} steps, lr {recovery['lr']:g}, batch {recovery['batch_size']}"
                  + (", distilled from the dense model" if recovery.get("distill") else "") + "</sup>")
    figure.update_layout(**_LAYOUT, title=dict(text=title), xaxis_title="recovery step", yaxis_title="training loss",
                         legend=dict(font=dict(size=10)))
    return figure


def recovery_comparison(shipped: list[dict], run: dict | None = None) -> go.Figure:
    """One-shot → recovered quality per method: the shipped 2,000-step comparison (FID) and, after
    a run with recovery, this run's own pair (its metric and sample count), each panel with the
    dense model's value as a dashed line."""
    from plotly.subplots import make_subplots

    panels = [("shipped", shipped)] if shipped else []
    if run:
        panels.append(("run", [run]))
    if not panels:
        return empty_figure("no recovery results yet: set recovery steps above 0 and run")
    titles = []
    for kind, entries in panels:
        first = entries[0]
        if kind == "shipped":
            titles.append(f"shipped: {first['sparsity']:.0%} channel sparsity, {first['steps']:,} steps, "
                          f"FID of {first['samples']} samples")
        else:
            titles.append(f"this run: {first['steps']:,} steps, {first['quality'].upper()} of {first['samples']} samples")
    figure = make_subplots(rows=1, cols=len(panels), subplot_titles=titles)
    for column, (kind, entries) in enumerate(panels, start=1):
        labels = [e["label"] for e in entries]
        figure.add_trace(go.Bar(x=labels, y=[e["before"] for e in entries], name="one-shot", marker_color="#bbbbbb",
                                showlegend=column == 1, legendgroup="one-shot",
                                hovertemplate="%{x}<br>one-shot %{y:.4g}<extra></extra>"), row=1, col=column)
        figure.add_trace(go.Bar(x=labels, y=[e["after"] for e in entries], name="recovered", marker_color="#2ca02c",
                                showlegend=column == 1, legendgroup="recovered",
                                hovertemplate="%{x}<br>recovered %{y:.4g}<extra></extra>"), row=1, col=column)
        dense = entries[0].get("dense")
        if dense is not None:
            figure.add_hline(y=dense, line=dict(color="black", dash="dash"), annotation_text="dense",
                             annotation_position="top left", row=1, col=column)
        figure.update_yaxes(title_text=f"{entries[0]['quality'].upper()} (lower is better)", row=1, col=column)
    figure.update_layout(**{**_LAYOUT, "height": 380}, barmode="group",
                         title=dict(text="What recovery fine-tuning buys: one-shot → recovered"))
    figure.update_annotations(font_size=11)
    return figure


def frontier_plane(table: pd.DataFrame | None, quality: str = "fid") -> go.Figure:
    """Is pruning worth it? The dense model at fewer sampling steps (the free speed-up, a line
    labelled by step count) and pruned + recovered models at several step counts on one
    quality-vs-measured-latency plane (latency relative to the dense model at its most steps,
    with the paired speed-up's range as horizontal error bars). A pruned point is worth shipping
    only if it lies below the dense line at its latency. Rows: ``benchmarks/bench_frontier.py``."""
    if table is None or len(table) == 0 or quality not in table:
        return empty_figure("no frontier measurement shipped yet (benchmarks/bench_frontier.py)")
    table = table.dropna(subset=[quality, "relative_latency"])
    figure = go.Figure()
    dense_rows = table[table["criterion"] == "dense"]
    samplers = list(dense_rows["scheduler"].unique()) if "scheduler" in dense_rows else [None]
    for index, sampler in enumerate(samplers):  # one dense line per sampler (a table may hold several)
        dense = (dense_rows if sampler is None else dense_rows[dense_rows["scheduler"] == sampler]).sort_values(
            "relative_latency")
        figure.add_trace(go.Scatter(
            x=dense["relative_latency"], y=dense[quality], mode="lines+markers+text",
            name="dense, fewer steps (free)" + (f", {sampler}" if index else ""),
            text=[f"{int(k)}" for k in dense["num_inference_steps"]], textposition="top right",
            line=dict(color="black", dash="dash" if not index else "dot"), marker=dict(color="black", size=7),
            hovertemplate="dense at %{text} steps<br>relative latency %{x:.3f}<br>" + quality.upper()
                          + " %{y:.4g}<extra></extra>"))
    pruned = table[table["criterion"] != "dense"]
    for label, group in pruned.groupby("label", sort=False):
        group = group.sort_values("relative_latency")
        first = group.iloc[0]
        low = group["relative_latency"] - group.get("relative_latency_low", group["relative_latency"])
        high = group.get("relative_latency_high", group["relative_latency"]) - group["relative_latency"]
        figure.add_trace(go.Scatter(
            x=group["relative_latency"], y=group[quality], mode="lines+markers+text", name=str(label),
            text=[f"{int(k)}" for k in group["num_inference_steps"]], textposition="bottom left",
            line=dict(color=_colour(first["criterion"]), width=1),
            marker=dict(color=_colour(first["criterion"]), size=10,
                        symbol=_marker(first.get("granularity")) + ("-open" if float(first.get("finetune_steps") or 0) > 0 else "")),
            error_x=dict(type="data", symmetric=False, array=high.abs(), arrayminus=low.abs(), thickness=1),
            hovertemplate=f"{label}" + " at %{text} steps<br>relative latency %{x:.3f}<br>" + quality.upper()
                          + " %{y:.4g}<extra></extra>"))
    if not figure.data:
        return empty_figure("no frontier rows with latency")
    samples = int(table["num_samples"].max()) if "num_samples" in table else None
    model = str(table["model"].iloc[0]) if "model" in table and table["model"].nunique() == 1 else "default"
    sampler = {"ddim": "DDIM", "dpm-solver++": "DPM-Solver++", "ddpm": "DDPM"}.get(
        str(table["scheduler"].iloc[0]), "sampler") if "scheduler" in table and table["scheduler"].nunique() == 1 else "sampler"
    figure.update_layout(
        **{**_LAYOUT, "height": 440},
        title=dict(text=f"Is pruning worth it? {quality.upper()} vs measured latency"
                        f"<br><sup>{'default model' if model == 'default' else model}, {samples} samples; numbers on "
                        f"points: {sampler} steps; below the dashed line = better than the dense model at equal "
                        "latency</sup>"),
        xaxis_title="latency relative to the dense model at 50 steps (measured, paired)",
        yaxis_title=f"{quality.upper()} (lower is better)", legend=dict(font=dict(size=10)))
    return figure
