"""The frontier benchmark's reading: each pruned point against the dense model at equal latency.

``benchmarks/bench_frontier.py`` measures the rows; this module turns them into the verdict, with
no measurement of its own:

* ``frame`` -- the rows of the first seed of each point (repeats with other seeds only give the
  FID's spread, ``fid_spreads``), each pruned point with the dense frontier of its model and sampler
  interpolated at its latency, the gap, the margin (2 sigma: its own spread and the frontier's) and
  the verdict (win / tie / loss), also at the slow end of its timing range and against the best
  sampler's frontier;
* ``budget_table`` -- the best configuration per latency budget; ``budget_curve`` -- the gap after
  each recovery budget fitted against log10(budget); ``verdict_sentence`` -- one sentence per model
  and sampler; ``table_markdown`` -- all of it as markdown (``bench_frontier.py --table``).
"""
from __future__ import annotations

import math
import re
from pathlib import Path

CSV_COLUMNS = ["model", "scheduler", "label", "criterion", "granularity", "sparsity", "measured_sparsity", "finetune_steps", "distill",
               "num_inference_steps", "num_samples", "fid", "kid", "kid_std", "speedup", "speedup_low", "speedup_high",
               "relative_latency", "relative_latency_low", "relative_latency_high", "macs_ratio", "params_ratio"]
VERDICT_COLUMNS = ["speedup_measurements", "frontier_fid", "fid_minus_frontier", "frontier_best_fid", "fid_spread", "margin", "verdict",
                   "verdict_at_slowest", "best_sampler_frontier_fid", "verdict_best_sampler"]
BASE_STEPS = 50  # relative latency 1 = the dense model at the default 50 steps
# Rows measured before the model and sampler were recorded: the default model, DDIM.
ROW_DEFAULTS = {"model": "default", "scheduler": "ddim"}
SAMPLER_NAMES = {"ddim": "DDIM", "dpm-solver++": "DPM-Solver++", "ddpm": "DDPM"}


def _interpolate(points: list[tuple[float, float]], x: float) -> float:
    """Linear interpolation of sorted (x, y) points at x; NaN outside their range."""
    if not points or not math.isfinite(x) or x < points[0][0] - 1e-12 or x > points[-1][0] + 1e-12:
        return float("nan")
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[-1][1]


def with_verdict(table, spreads: dict | None = None):
    """The rows (a DataFrame of CSV_COLUMNS) with the dense frontier's FID at each point's relative
    latency (linear interpolation between the dense points of the same model and sampler), the
    difference (negative: the pruned point beats the dense model at equal latency), the best dense
    FID at any latency no larger, and the verdict with its spreads (``_verdict_of_group``).
    ``spreads``: (model, scheduler) -> the FID's seed-to-seed standard deviation (``fid_spreads``)."""
    import pandas as pd

    table = table.copy()
    if not len(table):
        return table.reindex(columns=list(table.columns) + VERDICT_COLUMNS)
    spreads = spreads or {}
    groups = [_verdict_of_group(group, spreads.get(name, {}).get("fid_spread", float("nan")))
              for name, group in table.groupby(["model", "scheduler"], sort=False, dropna=False)]
    return pd.concat(groups).loc[table.index]


def _verdict_of_group(table, fid_spread: float):
    """One model and sampler. ``fid_spread`` (sigma) is the FID's seed-to-seed standard deviation at
    this sample count, the spread of the pruned point and of the dense frontier alike. A pruned point
    **wins** only when its FID is below the frontier interpolated at its latency by more than the two
    spreads (``margin`` = 2 sigma), **loses** when above by more, and **ties** otherwise.
    ``verdict_at_slowest`` is the same reading at the slow end of the point's paired-timing range
    (``relative_latency_high``, where the frontier is lower): a win there holds for every round timed."""
    import pandas as pd

    table = table.copy()
    dense = table[table["criterion"] == "dense"].dropna(subset=["fid"]).sort_values("relative_latency")
    points = list(zip(dense["relative_latency"].astype(float), dense["fid"].astype(float)))

    def best_at_most(x):
        fids = [fid for lat, fid in points if lat <= x + 1e-12]
        return min(fids) if fids else float("nan")

    frontier = pd.Series([_interpolate(points, float(x)) for x in table["relative_latency"]], index=table.index)
    slowest = pd.Series([_interpolate(points, float(x)) for x in table["relative_latency_high"]], index=table.index)
    table["frontier_fid"] = frontier
    table["fid_minus_frontier"] = table["fid"].astype(float) - frontier
    table["frontier_best_fid"] = [best_at_most(float(x)) for x in table["relative_latency"]]
    table["fid_spread"] = fid_spread
    table["margin"] = 2 * fid_spread
    table["verdict"] = [_verdict(gap, margin) for gap, margin in zip(table["fid_minus_frontier"], table["margin"])]
    table["verdict_at_slowest"] = [_verdict(gap, margin)
                                   for gap, margin in zip(table["fid"].astype(float) - slowest, table["margin"])]
    is_dense = table["criterion"] == "dense"
    table.loc[is_dense, [c for c in VERDICT_COLUMNS if c not in ("fid_spread", "verdict", "verdict_at_slowest")]] = float("nan")
    table.loc[is_dense, ["verdict", "verdict_at_slowest"]] = "frontier"
    return table


def _verdict(gap: float, margin: float) -> str:
    if not math.isfinite(gap):
        return "outside the frontier"
    if not math.isfinite(margin):
        return "spread not measured"
    return "win" if gap < -margin else "loss" if gap > margin else "tie"


def fid_spreads(table) -> dict:
    """(model, scheduler) -> ``fid_spread`` (the pooled seed-to-seed standard deviation of the FID
    over every (label, steps) measured with several seeds, ``--seed 1``, ``--seed 2``, ...),
    ``seeds`` (the most seeds of one point) and ``points`` (the points it pools, as label@steps)."""
    spreads = {}
    for name, group in table.groupby(["model", "scheduler"], sort=False, dropna=False):
        squares, dof, seeds, where = 0.0, 0, 0, []
        for (label, steps), repeats in group.groupby(["label", "num_inference_steps"], sort=True):
            fids = repeats.drop_duplicates("seed")["fid"].astype(float)
            if len(fids) >= 2:
                squares += float(((fids - fids.mean()) ** 2).sum())
                dof += len(fids) - 1
                seeds = max(seeds, len(fids))
                where.append(f"{label}@{int(steps)}")
        if dof:
            spreads[name] = dict(fid_spread=math.sqrt(squares / dof), seeds=seeds, points=where)
    return spreads


def _frame_all(rows: dict):
    """Every row, repeats with other seeds included (``seed`` column)."""
    import pandas as pd

    columns = CSV_COLUMNS + ["seed"]
    return pd.DataFrame([{c: r.get(c, ROW_DEFAULTS.get(c, 0 if c == "seed" else None)) for c in columns}
                         for r in rows.values()], columns=columns)


def frame(rows: dict):
    """The rows of the first seed measured of each point, with the verdict; repeats with other
    seeds only give the FID's spread."""
    table = _frame_all(rows)
    if not len(table):
        return table.drop(columns="seed").reindex(columns=CSV_COLUMNS + VERDICT_COLUMNS)
    spreads = fid_spreads(table)
    table = table.sort_values("seed").drop_duplicates(["model", "scheduler", "label", "num_inference_steps"])
    table["_dense"] = table["criterion"] != "dense"
    table = table.sort_values(["model", "scheduler", "_dense", "criterion", "granularity", "sparsity", "distill",
                               "finetune_steps", "num_inference_steps"])
    table = table.drop(columns=["_dense", "seed"]).reset_index(drop=True)
    return _against_every_sampler(with_verdict(pooled_speedups(table), spreads))


def architecture(label: str) -> str:
    """A candidate's label without its recovery budget: every budget of it has the same network."""
    return re.sub(r" \+\d+ steps", "", str(label))


def pooled_speedups(table):
    """One per-step speed-up per pruned network. Its speed-up per denoiser call does not depend on
    the step count, the sampler or the recovery budget, so every row of it (one paired measurement
    each) samples the same number: each row gets the median of those measurements, with their
    interquartile range as its spread (3 rows: their range; fewer: the per-round range of all), and
    its relative latency follows (``steps / 50 / speed-up``). ``speedup_measurements``: how many
    were pooled. On a shared CPU one measurement can be far off (a 3-block cut of a 6-block DiT
    once timed 2.7x); the median of several is not."""
    import numpy as np

    table = table.copy()
    table["speedup_measurements"] = 1
    pruned = table[table["criterion"] != "dense"]
    for _, rows in pruned.groupby([pruned["model"], pruned["label"].map(architecture)], sort=False):
        medians = rows["speedup"].astype(float)
        speedup = float(np.median(medians))
        if len(rows) >= 4:  # the middle half of the measurements: one busy round of the CPU does not set it
            low, high = float(medians.quantile(0.25)), float(medians.quantile(0.75))
        elif len(rows) == 3:
            low, high = float(medians.min()), float(medians.max())
        else:
            low, high = float(rows["speedup_low"].min()), float(rows["speedup_high"].max())
        steps = rows["num_inference_steps"].astype(float)
        table.loc[rows.index, ["speedup", "speedup_low", "speedup_high", "speedup_measurements"]] = (
            speedup, low, high, len(rows))
        table.loc[rows.index, "relative_latency"] = steps / BASE_STEPS / speedup
        table.loc[rows.index, "relative_latency_low"] = steps / BASE_STEPS / high
        table.loc[rows.index, "relative_latency_high"] = steps / BASE_STEPS / low
    return table


def _against_every_sampler(table):
    """``best_sampler_frontier_fid``: the lowest of the model's dense frontiers (one per sampler)
    at each point's latency; ``verdict_best_sampler``: the verdict against it (same margin). A win
    against DDIM's frontier that the dense model with DPM-Solver++ undoes is no win for a user."""
    table = table.copy()
    dense = table[table["criterion"] == "dense"]
    lines = {model: [sorted(zip(g["relative_latency"].astype(float), g["fid"].astype(float)))
                     for _, g in group.groupby("scheduler")] for model, group in dense.groupby("model")}
    best = []
    for model, latency in zip(table["model"], table["relative_latency"].astype(float)):
        values = [v for v in (_interpolate(line, latency) for line in lines.get(model, [])) if math.isfinite(v)]
        best.append(min(values) if values else float("nan"))
    table["best_sampler_frontier_fid"] = best
    table["verdict_best_sampler"] = [_verdict(fid - at, margin) for fid, at, margin in
                                     zip(table["fid"].astype(float), table["best_sampler_frontier_fid"], table["margin"])]
    is_dense = table["criterion"] == "dense"
    table.loc[is_dense, "best_sampler_frontier_fid"] = float("nan")
    table.loc[is_dense, "verdict_best_sampler"] = "frontier"
    return table


def budget_table(group) -> list[dict]:
    """One model and sampler (``frame``'s rows): for every latency budget (each dense point's
    latency relative to the dense model at 50 steps, and each winning pruned point's), the best dense point and the best pruned
    point within it (lowest FID at a latency no larger), the pruned point's gap to the frontier at
    its own latency with its margin and verdict, and the best configuration: the pruned point only
    where it wins."""
    dense = group[group["criterion"] == "dense"].sort_values("relative_latency")
    pruned = group[group["criterion"] != "dense"]
    budgets = []
    winning = pruned.loc[pruned["verdict"] == "win", "relative_latency"].astype(float)
    for budget in sorted(set(dense["relative_latency"].astype(float)) | set(winning)):
        inside_dense = dense[dense["relative_latency"] <= budget + 1e-12]
        best_dense = inside_dense.loc[inside_dense["fid"].astype(float).idxmin()]
        inside = pruned[pruned["relative_latency"] <= budget + 1e-12]
        best = inside.loc[inside["fid"].astype(float).idxmin()] if len(inside) else None
        wins = best is not None and best["verdict"] == "win" and best["fid"] < best_dense["fid"]
        budgets.append(dict(budget=budget, dense=best_dense, pruned=best,
                            best=f"{best['label']} at {int(best['num_inference_steps'])} steps" if wins
                            else f"dense at {int(best_dense['num_inference_steps'])} steps"))
    return budgets


def verdict_sentence(group, model: str, scheduler: str) -> str:
    """The verdict of one model and sampler in one sentence (against this sampler's dense frontier,
    and for its wins, against the best sampler's)."""
    pruned = group[(group["criterion"] != "dense") & group["fid_minus_frontier"].notna()]
    name = f"{'the default UNet' if model == 'default' else model}, {SAMPLER_NAMES.get(scheduler, scheduler)}"
    if not len(pruned):
        return f"**{name}: not answered** (no pruned point within the dense frontier's latency range)."
    counts = pruned["verdict"].value_counts()
    wins = pruned[pruned["verdict"] == "win"]
    closest = (wins if len(wins) else pruned).sort_values("fid_minus_frontier").iloc[0]
    robust = wins[wins["verdict_best_sampler"] == "win"]
    outcome = ("wins" if len(robust) else f"wins only against {SAMPLER_NAMES.get(scheduler, scheduler)}'s own frontier"
               if len(wins) else "is not settled (FID spread not measured)"
               if counts.get("spread not measured", 0) else "ties" if counts.get("tie", 0) else "loses")
    spread = (f"sigma {closest['fid_spread']:.1f} FID" if math.isfinite(closest["fid_spread"])
              else "spread not measured")
    sentence = (f"**{name}: pruning {outcome}** ({counts.get('win', 0)} wins, {counts.get('tie', 0)} ties, "
                f"{counts.get('loss', 0)} losses of {len(pruned)} pruned points at equal latency). "
                f"{'Best' if len(wins) else 'Closest'}: {closest['label']} at {int(closest['num_inference_steps'])} steps, "
                f"FID {closest['fid']:.1f}, {closest['fid_minus_frontier']:+.1f} ± {closest['margin']:.1f} against the dense "
                f"frontier at its latency ({spread})")
    if len(wins):
        slow = wins[wins["verdict_at_slowest"] == "win"]
        sentence += (f"; {len(slow)} of the {len(wins)} wins hold at the slow end of the timing range, and "
                     f"{len(robust)} against the best sampler's dense frontier (here "
                     f"{closest['best_sampler_frontier_fid']:.1f} at that latency)")
    return sentence + "."


def write_csv(rows: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame(rows).to_csv(path, index=False)


def table_markdown(rows: dict) -> str:
    """One markdown table with its verdict per model and sampler."""
    table = frame(rows)
    if not len(table):
        return "(no rows measured yet)"
    sections, spreads = [], fid_spreads(_frame_all(rows))
    for (model, scheduler), group in table.groupby(["model", "scheduler"], sort=False):
        members = {key: row for key, row in rows.items()
                   if (row.get("model", "default"), row.get("scheduler", "ddim")) == (model, scheduler)}
        sections.append(f"### {model}, {SAMPLER_NAMES.get(scheduler, scheduler)}\n\n"
                        + verdict_sentence(group, model, scheduler) + "\n\n" + _group_markdown(group, members)
                        + "\n\n" + budget_markdown(group, spreads.get((model, scheduler)))
                        + ("\n\nRecovery budget curve:\n\n" + curve if (curve := budget_curve_markdown(group)) else ""))
    return "\n\n".join(sections)


def budget_curve(group) -> list[dict]:
    """One model and sampler: for every candidate measured after several recovery budgets, per
    sampling step count, its gap to the dense frontier after each budget and the least-squares line
    ``gap = intercept + slope * log10(budget)`` through them; ``meets_at``: the budget where that
    line reaches 0 (a measured budget already at or below 0: that budget; a slope >= 0: never)."""
    import numpy as np

    pruned = group[(group["criterion"] != "dense") & group["fid_minus_frontier"].notna()].copy()
    pruned["candidate"] = pruned["label"].map(architecture)
    curves = []
    for (candidate, steps), rows in pruned.groupby(["candidate", "num_inference_steps"], sort=True):
        rows = rows.sort_values("finetune_steps")
        if rows["finetune_steps"].nunique() < 2:
            continue
        budgets, gaps = rows["finetune_steps"].astype(float).to_numpy(), rows["fid_minus_frontier"].astype(float).to_numpy()
        slope, intercept = np.polyfit(np.log10(budgets), gaps, 1)
        reached = budgets[gaps <= 0]
        if len(reached):
            meets_at = float(reached[0])
        elif slope >= 0:
            meets_at = math.inf
        else:
            meets_at = float(10 ** (-intercept / slope))
        curves.append(dict(candidate=candidate, steps=int(steps), budgets=budgets.astype(int).tolist(),
                           gaps=gaps.tolist(), slope=float(slope), intercept=float(intercept), meets_at=meets_at,
                           measured=bool(len(reached))))
    return curves


def budget_curve_markdown(group) -> str:
    """``budget_curve`` as markdown (empty when no candidate has several budgets)."""
    curves = budget_curve(group)
    if not curves:
        return ""
    lines = ["| candidate | steps | FID - dense frontier after each recovery budget | fit: gap = a + b log10(budget) | "
             "meets the frontier at |", "| --- | --- | --- | --- | --- |"]
    for c in curves:
        gaps = ", ".join(f"{b:,}: {g:+.1f}" for b, g in zip(c["budgets"], c["gaps"]))
        meets = ("never (the gap does not shrink)" if math.isinf(c["meets_at"]) else
                 f"{c['meets_at']:,.0f} steps (measured)" if c["measured"] else f"~{c['meets_at']:,.0f} steps (extrapolated)")
        lines.append(f"| {c['candidate']} | {c['steps']} | {gaps} | a = {c['intercept']:+.2f}, b = {c['slope']:+.2f} per "
                     f"tenfold budget | {meets} |")
    return "\n".join(lines)


def budget_markdown(group, spread: dict | None) -> str:
    """``budget_table`` as markdown, with how the FID spread was measured."""
    lines = ["| latency budget (x dense@50) | best dense within it | best pruned within it | its FID - dense frontier at "
             "its latency ± the two spreads | verdict | best configuration |", "| --- | --- | --- | --- | --- | --- |"]
    for b in budget_table(group):
        d, p = b["dense"], b["pruned"]
        dense = f"{int(d['num_inference_steps'])} steps, FID {d['fid']:.1f}"
        if p is None:
            pruned, gap, verdict = "none that fast", "", ""
        else:
            pruned = (f"{p['label']} at {int(p['num_inference_steps'])} steps ({p['relative_latency']:.3f}), "
                      f"FID {p['fid']:.1f}")
            gap = "" if not math.isfinite(p["fid_minus_frontier"]) else f"{p['fid_minus_frontier']:+.1f} ± {p['margin']:.1f}"
            verdict = p["verdict"] + (f" ({p['verdict_at_slowest']} at its slowest timing, "
                                      f"{p['verdict_best_sampler']} against the best sampler)" if p["verdict"] == "win" else "")
        lines.append(f"| {b['budget']:.3f} | {dense} | {pruned} | {gap} | {verdict} | {b['best']} |")
    if spread:
        how = (f"sigma = {spread['fid_spread']:.2f} FID, the pooled seed-to-seed standard deviation over "
               f"{', '.join(spread['points'])} ({spread['seeds']} seeds)")
    else:
        how = "sigma not measured (run a point again with --seed 1, --seed 2): no verdict beyond the sign"
    lines.append("")
    lines.append(f"Spreads: {how}. A pruned point wins only below the dense frontier at its latency by more than the two "
                 "spreads (its own sigma and the frontier's: 2 sigma); the per-point table shows the frontier over the "
                 "point's paired-timing range too.")
    return "\n".join(lines)


def _group_markdown(table, rows: dict) -> str:
    sampler = SAMPLER_NAMES.get(table["scheduler"].iloc[0], table["scheduler"].iloc[0])
    dense_rows = table[table["criterion"] == "dense"].sort_values("relative_latency")
    points = list(zip(dense_rows["relative_latency"].astype(float), dense_rows["fid"].astype(float)))
    lines = [f"| model | {sampler} steps | FID | KID ± std | speed-up per step [range] | latency vs dense@50 [range] | "
             "dense FID at equal latency [over the latency range] | FID - dense ± the two spreads | verdict | "
             "best dense FID at ≤ latency |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for _, r in table.iterrows():
        dense = r["criterion"] == "dense"
        speed = "1 (dense)" if dense else f"{r['speedup']:.2f}x [{r['speedup_low']:.2f}, {r['speedup_high']:.2f}]"
        latency = (f"{r['relative_latency']:.3f}" if dense else
                   f"{r['relative_latency']:.3f} [{r['relative_latency_low']:.3f}, {r['relative_latency_high']:.3f}]")
        if dense:
            verdict = "frontier | | | "
        elif math.isnan(r["frontier_fid"]):
            best = "no dense point that fast" if math.isnan(r["frontier_best_fid"]) else f"{r['frontier_best_fid']:.1f}"
            verdict = f"outside the frontier's range | | | {best}"
        else:
            spread = [_interpolate(points, float(r[c])) for c in ("relative_latency_high", "relative_latency_low")]
            spread = "[" + ", ".join("out of range" if math.isnan(v) else f"{v:.1f}" for v in spread) + "]"
            margin = f" ± {r['margin']:.1f}" if math.isfinite(r["margin"]) else ""
            verdict = (f"{r['frontier_fid']:.1f} {spread} | **{r['fid_minus_frontier']:+.1f}**{margin} | {r['verdict']} | "
                       f"{r['frontier_best_fid']:.1f}")
        lines.append(f"| {r['label']} | {int(r['num_inference_steps'])} | {r['fid']:.1f} | {r['kid']:.4f} ± "
                     f"{r['kid_std']:.4f} | {speed} | {latency} | {verdict} |")
    dense = next((r for r in rows.values() if r["criterion"] == "dense"), None)
    if dense:
        import statistics

        step_ms = sorted(r["dense_step_s"] * 1000 for r in rows.values())
        lines.append("")
        lines.append(f"{dense['num_samples']} {sampler} samples per row (seed {dense['seed']}), FID/KID against the 1,000 "
                     f"shipped Fashion-MNIST test images. Dense one-step latency (batch of {dense['latency_batch_size']}, "
                     f"{dense['threads']} torch thread, {dense['processor']}): median {statistics.median(step_ms):.0f} ms "
                     f"over the {len(step_ms)} rows' paired measurements (range {step_ms[0]:.0f}-{step_ms[-1]:.0f} ms: "
                     "the CPU is shared, which is why every speed-up is paired). Latency relative to the dense model at "
                     "50 steps = steps / 50 / speed-up.")
    return "\n".join(lines)
