"""Plotly figures built from what ``core`` returns (schedules, reports, result tables).

Nothing here computes a metric: every number plotted comes from ``core``.
"""
from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go

from core.schedules import SCHEDULES

_LAYOUT = dict(template="plotly_white", margin=dict(l=50, r=20, t=50, b=45), height=340)
# A fixed colour per criterion so that every chart of a run speaks the same language.
CRITERION_COLOURS = {
    "random": "#9e9e9e", "magnitude": "#1f77b4", "taylor": "#d62728", "nici": "#2ca02c",
    "l1": "#ff7f0e", "obs": "#9467bd", "gradflow": "#8c564b", "dense": "#000000",
}


def _colour(name: str) -> str:
    return CRITERION_COLOURS.get(str(name), "#17becf")


def empty_figure(message: str) -> go.Figure:
    figure = go.Figure()
    figure.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                          font=dict(size=14, color="#777"))
    figure.update_layout(**_LAYOUT, xaxis=dict(visible=False), yaxis=dict(visible=False))
    return figure


def schedule_preview(name: str, params: dict, num_train_timesteps: int = 1000, compare: bool = True) -> go.Figure:
    """Timestep weight curve of the chosen schedule, other schedules as faint comparison lines.

    ``threshold`` is decided during calibration (it depends on the model), so it is drawn after a run.
    """
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
        title += " (decided during calibration; shown after a run)"
    else:
        points = schedule.resolve(num_train_timesteps, params)
        figure.add_trace(go.Scatter(
            x=[t for t, _ in points], y=[w for _, w in points], name=f"{name} ({len(points)} t)",
            mode="lines+markers", line=dict(width=3, color="#d62728"), marker=dict(size=5)))
    figure.update_layout(**_LAYOUT, title=title, xaxis_title="timestep t (0 = clean)", yaxis_title="weight",
                         xaxis=dict(range=[-10, num_train_timesteps + 10]), legend=dict(font=dict(size=10)))
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
    figure.update_layout(**_LAYOUT, title=title, xaxis_title="timestep t",
                         yaxis=dict(title="weight"), yaxis2=dict(title="loss", overlaying="y", side="right"))
    return figure


def importance_heatmap(vectors: dict, bins: int = 32, title: str = "Per-layer importance") -> go.Figure:
    """Layers x bins heatmap of importance vectors (per channel / head / weight block).

    Each layer's vector is resampled to ``bins`` columns (sorted order kept) and normalised by its
    maximum, so layers of different widths share one picture.
    """
    if not vectors:
        return empty_figure("no importance vectors in this report")
    names, rows = [], []
    for name, vector in vectors.items():
        values = [float(v) for v in vector]
        if not values:
            continue
        width = len(values)
        resampled = []
        for b in range(min(bins, width) if width < bins else bins):
            lo = (b * width) // min(bins, width)
            hi = max(lo + 1, ((b + 1) * width) // min(bins, width))
            chunk = values[lo:hi]
            resampled.append(sum(chunk) / len(chunk))
        peak = max(abs(v) for v in resampled) or 1.0
        resampled = [v / peak for v in resampled] + [math.nan] * (bins - len(resampled))
        names.append(name)
        rows.append(resampled)
    figure = go.Figure(go.Heatmap(z=rows, y=names, x=list(range(bins)), colorscale="Viridis",
                                  colorbar=dict(title="rel. importance")))
    figure.update_layout(**{**_LAYOUT, "height": max(340, 16 * len(names) + 120)}, title=title,
                         xaxis_title="unit bin (channel / head / weight block)", yaxis=dict(autorange="reversed"))
    return figure


def layer_timestep_heatmap(table: pd.DataFrame, title: str = "Which timesteps drive which layers") -> go.Figure:
    """Layer x timestep contribution table (rows layers, columns timesteps) as a heatmap, rows normalised."""
    if table is None or len(table) == 0:
        return empty_figure("this criterion has no per-timestep contributions")
    normalised = table.div(table.abs().max(axis=1).replace(0, 1), axis=0)
    figure = go.Figure(go.Heatmap(z=normalised.values, x=[str(c) for c in normalised.columns],
                                  y=list(normalised.index), colorscale="Magma", colorbar=dict(title="share")))
    figure.update_layout(**{**_LAYOUT, "height": max(340, 16 * len(normalised) + 120)}, title=title,
                         xaxis_title="timestep t", yaxis=dict(autorange="reversed"))
    return figure


def layer_sparsity_bars(layers: pd.DataFrame) -> go.Figure:
    """Per-layer fraction of parameters kept (and sparsity) as bars."""
    if layers is None or len(layers) == 0:
        return empty_figure("no per-layer table")
    kept = 1.0 - layers["sparsity"].astype(float)
    figure = go.Figure(go.Bar(x=layers["name"], y=kept, marker_color="#2ca02c", name="kept",
                              hovertemplate="%{x}<br>kept %{y:.1%}<extra></extra>"))
    figure.update_layout(**{**_LAYOUT, "height": 380}, title="Parameters kept per layer", yaxis=dict(range=[0, 1.02], tickformat=".0%"),
                         xaxis=dict(tickangle=-60, tickfont=dict(size=8)))
    return figure


def _quality_column(results: pd.DataFrame, quality: str) -> str:
    if quality in results and results[quality].notna().any():
        return quality
    for candidate in ("kid", "fid"):
        if candidate in results and results[candidate].notna().any():
            return candidate
    return quality


def pareto(results: pd.DataFrame, current: dict | None = None, quality: str = "kid") -> go.Figure:
    """Quality vs measured latency of every stored result, one colour per criterion, current run starred."""
    needed = {"latency_median_s_per_image"}
    if results is None or len(results) == 0 or not needed <= set(results.columns):
        return empty_figure("no stored results with latency yet: run a prune or a sweep")
    quality = _quality_column(results, quality)
    figure = go.Figure()
    data = results.dropna(subset=["latency_median_s_per_image", quality]) if quality in results else results.iloc[0:0]
    for criterion, rows in data.groupby(data.get("criterion", pd.Series(["?"] * len(data), index=data.index)).fillna("dense")):
        label = rows.apply(lambda r: f"{r.get('criterion', '')} {r.get('granularity', '')} {r.get('sparsity', '')} "
                                     f"(n={r.get('num_samples', '')}, {r.get('source', 'stored')})", axis=1)
        figure.add_trace(go.Scatter(x=rows["latency_median_s_per_image"] * 1000, y=rows[quality], mode="markers",
                                    name=str(criterion), text=label, marker=dict(size=9, color=_colour(criterion)),
                                    hovertemplate="%{text}<br>%{x:.1f} ms/img, " + quality + " %{y:.4g}<extra></extra>"))
    if current and current.get(quality) is not None and current.get("latency_median_s_per_image"):
        figure.add_trace(go.Scatter(x=[current["latency_median_s_per_image"] * 1000], y=[current[quality]],
                                    mode="markers", name="this run",
                                    marker=dict(symbol="star", size=18, color="#ffbf00", line=dict(width=1, color="black"))))
    figure.update_layout(**_LAYOUT, title=f"{quality.upper()} vs measured latency (lower-left is better)",
                         xaxis_title="latency per image (ms, median)", yaxis_title=quality.upper())
    return figure


def quality_vs_sparsity(results: pd.DataFrame, quality: str = "kid") -> go.Figure:
    """One line per criterion x granularity: quality against sparsity."""
    if results is None or len(results) == 0 or "sparsity" not in results:
        return empty_figure("no stored pruning results yet")
    quality = _quality_column(results, quality)
    if quality not in results:
        return empty_figure(f"no {quality} in the stored results")
    data = results.dropna(subset=["sparsity", quality])
    figure = go.Figure()
    keys = [c for c in ("criterion", "granularity") if c in data]
    for key, rows in (data.groupby(keys) if keys else [("all", data)]):
        key = key if isinstance(key, tuple) else (key,)
        rows = rows.sort_values("sparsity")
        error = rows["kid_std"] if quality == "kid" and "kid_std" in rows else None
        figure.add_trace(go.Scatter(x=rows["sparsity"], y=rows[quality], mode="lines+markers",
                                    name=" / ".join(map(str, key)), line=dict(color=_colour(key[0])),
                                    error_y=dict(type="data", array=error, visible=error is not None)))
    figure.update_layout(**_LAYOUT, title=f"{quality.upper()} vs sparsity", xaxis_title="sparsity (fraction of prunable params removed)",
                         yaxis_title=quality.upper(), xaxis=dict(tickformat=".0%"))
    return figure
