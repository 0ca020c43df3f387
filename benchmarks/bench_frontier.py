"""Is pruning worth it? Pruned + recovered models against the dense model sampled with fewer steps.

Every user already has one speed-up for free: fewer DDIM steps. A pruned model is worth shipping
only if, at its best step count, it has a lower FID than the dense model *at equal measured
latency*. This benchmark puts both on one quality-vs-latency plane:

* **Dense frontier** -- the dense model at ``--dense-steps`` (4, 6, 8, 12, 25, 50) steps of
  ``--scheduler`` (DDIM or DPM-Solver++; each sampler is a frontier of its own)
  (``core.frontier.dense_frontier``, the app's frontier function).
* **Candidates** -- ``--candidates`` (``criterion[:granularity]:sparsity[:kd]``, comma-separated,
  granularity channel unless given; cuts applied one after the other joined by ``+``, e.g.
  ``nici:head:0.25+nici:ffn:0.3:kd``; default obs 20 %, obs 30 %, nici 20 % with NiCI's
  distillation from the dense teacher, taylor 20 %, then nici 30 %, taylor 30 %): pruning, then
  recovery with the app's defaults (``core.recovery.RECOVERY_DEFAULTS``: lr 2e-4, batch 8) on the
  shipped Fashion-MNIST training images for ``--finetune-steps``, or for each of ``--budgets``
  (1000,3000,10000: the recovery budget curve, a longer budget resuming from the shorter one's
  checkpoint) -- the app's workflow, ``core.run.run`` -- evaluated at ``--pruned-steps`` (8, 12, 50).
* Every row: FID and KID (with its std) of ``--num-samples`` samples (``--seed``, 0) against the
  1,000 shipped test images, and the paired one-step speed-up against the dense model
  (``core.timing.paired_step_latency``, dense and pruned interleaved, median and range of the
  per-round ratios). The sampler's cost is one denoiser call per step, so the latency per image at
  K steps is ``dense step latency x K / speed-up``; ``relative_latency = K / 50 / speedup`` puts every
  point relative to the dense model at 50 steps, and the speed-up's range gives its spread.
  Dense rows have speed-up 1 by definition; their ``dense_self_ratio_*`` fields (dense timed against
  itself, interleaved) show the instrument's noise.
* **FID spread** -- a point measured again with ``--seed 1``, ``--seed 2``, ... (e.g. the dense model
  at 6 steps) gives the FID's seed-to-seed standard deviation sigma at this sample count, pooled per
  model and sampler (``fid_spreads``); the tables keep the first seed's rows.
* **Verdict** -- for every pruned point, the dense frontier's FID at the same relative latency
  (linear interpolation between the dense points), the difference, and the best dense FID at
  any latency no larger (the Pareto reading, harder to beat). A point **wins** only where its FID is
  below the frontier by more than the two spreads (2 sigma), **loses** above by more, **ties**
  otherwise. Per latency budget (each dense point's latency), the best configuration within it:
  the dense model at k steps, or a pruned point where it wins (``budget_table``). One sentence per
  model and sampler states the verdict (``verdict_sentence``).

Order of work (so that an interrupted run has the informative points first): dense rows at up to
``--late-steps`` excluded, every candidate at its cheap step counts, then the ``--late-steps``
(50: the slowest evaluations) rows. Rows go to ``benchmarks/results/frontier.jsonl`` as soon as they
are measured, keyed by model and settings: a re-run skips what is there (recovery resumes from its
checkpoints in ``runs/bench_frontier/``). ``assets/results/frontier.csv`` (read by the app) is
rewritten after every row.

Usage::

    .venv/bin/python benchmarks/bench_frontier.py --threads 1            # the measurement (hours on 2 CPU cores)
    .venv/bin/python benchmarks/bench_frontier.py --table                # markdown tables + verdicts (and the CSV)
    .venv/bin/python benchmarks/bench_frontier.py --quick --results runs/f.jsonl --csv runs/f.csv

Every figure is measured by this script on this machine; nothing is copied from the papers.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.rows import append_row, read_rows  # noqa: E402,F401 - read_rows is part of this module's API
RESULTS = ROOT / "benchmarks" / "results" / "frontier.jsonl"
CSV = ROOT / "assets" / "results" / "frontier.csv"
RUNS = ROOT / "runs" / "bench_frontier"

CSV_COLUMNS = ["model", "scheduler", "label", "criterion", "granularity", "sparsity", "measured_sparsity", "finetune_steps", "distill",
               "num_inference_steps", "num_samples", "fid", "kid", "kid_std", "speedup", "speedup_low", "speedup_high",
               "relative_latency", "relative_latency_low", "relative_latency_high", "macs_ratio", "params_ratio"]
VERDICT_COLUMNS = ["frontier_fid", "fid_minus_frontier", "frontier_best_fid", "fid_spread", "margin", "verdict",
                   "verdict_at_slowest", "best_sampler_frontier_fid", "verdict_best_sampler"]
# Rows measured before the model and sampler were recorded: the default model, DDIM.
ROW_DEFAULTS = {"model": "default", "scheduler": "ddim"}
DEFAULT_CANDIDATES = "obs:0.2,obs:0.3,nici:0.2:kd,taylor:0.2,nici:0.3:kd,taylor:0.3"
REFERENCE = "fashion-mnist-test"
BASE_STEPS = 50  # relative latency 1 = the dense model at the default 50 DDIM steps
QUICK = dict(num_samples=4, dense_steps="1,2", pruned_steps="2", late_steps="", finetune_steps=2,
             candidates="magnitude:0.2", latency_rounds=2, latency_budget_s=0.5)


# ----------------------------------------------------------------------------------------------
# Results file
# ----------------------------------------------------------------------------------------------
def _append(path: Path, row: dict) -> None:
    append_row(path, row)
    print(json.dumps({k: row[k] for k in ("label", "num_inference_steps", "fid", "kid", "speedup", "relative_latency")}),
          flush=True)


def _cut(item: str, text: str) -> dict:
    fields = text.split(":")
    if len(fields) == 2:
        fields = [fields[0], "channel", fields[1]]
    if len(fields) != 3:
        raise SystemExit(f"--candidates: {item!r} must be criterion[:granularity]:sparsity with an optional :kd "
                         "(cuts applied one after the other joined by '+')")
    try:
        sparsity = float(fields[2])
    except ValueError:
        raise SystemExit(f"--candidates: {item!r}: the sparsity {fields[2]!r} is not a number") from None
    return dict(criterion=fields[0], granularity=fields[1], sparsity=sparsity)


def parse_candidates(text: str) -> list[dict]:
    """``criterion[:granularity]:sparsity[:kd]`` items, comma-separated (granularity default channel).
    An item of several cuts applied one after the other joins them with ``+``
    (``nici:head:0.25+nici:ffn:0.5:kd``: a quarter of the heads, then FFN neurons up to 50 % of
    the prunable weights; each cut's sparsity is of the whole model, as ``PruneSpec`` counts it)."""
    candidates = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        distill = item.endswith(":kd")
        cuts = [_cut(item, part.strip()) for part in (item[:-3] if distill else item).split("+")]
        first, last = cuts[0], cuts[-1]
        candidates.append(dict(criterion=first["criterion"], granularity="+".join(c["granularity"] for c in cuts),
                               sparsity=last["sparsity"], distill=distill, cuts=cuts))
    return candidates


def _cuts(spec: dict) -> list[dict]:
    return spec.get("cuts") or [dict(criterion=spec["criterion"], granularity=spec.get("granularity", "channel"),
                                     sparsity=spec["sparsity"])]


def candidate_label(criterion: str, sparsity: float, finetune_steps: int, distill: bool, granularity: str = "channel") -> str:
    return f"{criterion} {granularity} {round(sparsity * 100)}% +{finetune_steps} steps{' KD' if distill else ''}"


def _label(spec: dict, steps: int) -> str:
    cuts = _cuts(spec)
    if len(cuts) == 1:
        return candidate_label(spec["criterion"], spec["sparsity"], steps, spec["distill"], spec.get("granularity", "channel"))
    parts = [f"{c['criterion'] + ' ' if i == 0 or c['criterion'] != cuts[i - 1]['criterion'] else ''}"
             f"{c['granularity']} {round(c['sparsity'] * 100)}%" for i, c in enumerate(cuts)]
    return f"{' then '.join(parts)} +{steps} steps{' KD' if spec['distill'] else ''}"


def _training_dir(spec: dict, args) -> Path:
    """One recovery folder per candidate for every budget: a longer budget resumes from the last
    checkpoint of a shorter one (``core.finetune`` draws each step's data from (seed, step) only,
    so the result equals one uninterrupted run of the longer budget)."""
    model = Path(args.model).name if args.model else "default"
    name = model + "_" + "+".join(f"{c['criterion']}_{c['granularity']}_{round(c['sparsity'] * 100)}pct"
                                  for c in _cuts(spec))
    return Path(args.runs_dir) / (name + ("_kd" if spec["distill"] else "") + f"_seed{args.seed}")


def _steps(text: str) -> list[int]:
    return sorted({int(s) for s in text.split(",") if s.strip()})


# ----------------------------------------------------------------------------------------------
# Verdict
# ----------------------------------------------------------------------------------------------
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
    return _against_every_sampler(with_verdict(table, spreads))


def _against_every_sampler(table):
    """``best_sampler_frontier_fid``: the lowest of the model's dense frontiers (one per sampler)
    at each point's latency; ``verdict_best_sampler``: the verdict against it (same margin). A win
    against DDIM's frontier that the dense model with DPM-Solver++ undoes is no win for a user."""
    table = table.copy()
    best = []
    for _, row in table.iterrows():
        same = table[(table["model"] == row["model"]) & (table["criterion"] == "dense")]
        lines = [sorted(zip(g["relative_latency"].astype(float), g["fid"].astype(float)))
                 for _, g in same.groupby("scheduler")]
        values = [v for v in (_interpolate(line, float(row["relative_latency"])) for line in lines) if math.isfinite(v)]
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
    outcome = ("wins" if len(wins) else "is not settled (FID spread not measured)"
               if counts.get("spread not measured", 0) else "ties" if counts.get("tie", 0) else "loses")
    spread = (f"sigma {closest['fid_spread']:.1f} FID" if math.isfinite(closest["fid_spread"])
              else "spread not measured")
    sentence = (f"**{name}: pruning {outcome}** ({counts.get('win', 0)} wins, {counts.get('tie', 0)} ties, "
                f"{counts.get('loss', 0)} losses of {len(pruned)} pruned points at equal latency). "
                f"{'Best' if len(wins) else 'Closest'}: {closest['label']} at {int(closest['num_inference_steps'])} steps, "
                f"FID {closest['fid']:.1f}, {closest['fid_minus_frontier']:+.1f} ± {closest['margin']:.1f} against the dense "
                f"frontier at its latency ({spread})")
    if len(wins):
        held = wins[wins["verdict_best_sampler"] == "win"]
        slow = wins[wins["verdict_at_slowest"] == "win"]
        sentence += (f"; {len(slow)} of the {len(wins)} wins hold at the slow end of the timing range, and "
                     f"{len(held)} against the best sampler's dense frontier (here "
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
    sections = []
    for (model, scheduler), group in table.groupby(["model", "scheduler"], sort=False):
        members = {key: row for key, row in rows.items()
                   if (row.get("model", "default"), row.get("scheduler", "ddim")) == (model, scheduler)}
        sections.append(f"### {model}, {SAMPLER_NAMES.get(scheduler, scheduler)}\n\n"
                        + verdict_sentence(group, model, scheduler) + "\n\n" + _group_markdown(group, members)
                        + "\n\n" + budget_markdown(group, fid_spreads(_frame_all(members)).get((model, scheduler)))
                        + ("\n\nRecovery budget curve:\n\n" + curve if (curve := budget_curve_markdown(group)) else ""))
    return "\n\n".join(sections)


def budget_curve(group) -> list[dict]:
    """One model and sampler: for every candidate measured after several recovery budgets, per
    sampling step count, its gap to the dense frontier after each budget and the least-squares line
    ``gap = intercept + slope * log10(budget)`` through them; ``meets_at``: the budget where that
    line reaches 0 (a measured budget already at or below 0: that budget; a slope >= 0: never)."""
    import numpy as np

    pruned = group[(group["criterion"] != "dense") & group["fid_minus_frontier"].notna()].copy()
    pruned["candidate"] = [re.sub(r" \+\d+ steps", "", label) for label in pruned["label"]]
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


SAMPLER_NAMES = {"ddim": "DDIM", "dpm-solver++": "DPM-Solver++", "ddpm": "DDPM"}


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


# ----------------------------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------------------------
def _latency(dense, pipeline, steps: int, args) -> dict:
    from core.timing import paired_step_latency

    return paired_step_latency(dense, pipeline, num_inference_steps=steps, batch_size=args.latency_batch_size,
                               rounds=args.latency_rounds, budget_s=args.latency_budget_s,
                               min_rounds=min(4, args.latency_rounds), seed=args.seed)


def _quality(pipeline, steps: int, args, is_dense: bool) -> dict:
    """FID and KID at ``steps``: the dense model's through the frontier function the app uses."""
    from core.evaluate import evaluate
    from core.frontier import FrontierSettings, dense_frontier

    if is_dense:
        settings = FrontierSettings(num_samples=args.num_samples, base_steps=BASE_STEPS, seed=args.seed,
                                    metrics=("fid", "kid"), reference=REFERENCE, scheduler=args.scheduler)
        return dense_frontier(pipeline, [steps], settings).iloc[0].to_dict()
    return evaluate(pipeline, num_samples=args.num_samples, num_inference_steps=steps, seed=args.seed,
                    metrics=("fid", "kid"), reference=REFERENCE, scheduler=args.scheduler)


def _measure(pipeline, dense, steps: int, args, base: dict, is_dense: bool) -> dict:
    import torch

    started = time.perf_counter()
    metrics = _quality(pipeline, steps, args, is_dense)
    eval_s = time.perf_counter() - started
    timing = _latency(dense, pipeline, steps, args)
    row = dict(base, model=args.model or "default", scheduler=args.scheduler, num_inference_steps=steps,
               num_samples=args.num_samples, seed=args.seed, reference=REFERENCE,
               fid=float(metrics["fid"]), kid=float(metrics["kid"]), kid_std=float(metrics["kid_std"]),
               dense_step_s=timing["dense_step_s"], latency_batch_size=timing["batch_size"],
               latency_rounds=timing["rounds"], eval_s=round(eval_s, 1), threads=torch.get_num_threads(),
               processor=platform.processor() or platform.machine(), load_average_1_min=round(os.getloadavg()[0], 2),
               date=time.strftime("%Y-%m-%d %H:%M"), command=" ".join(["benchmarks/bench_frontier.py", *args.argv]))
    if is_dense:
        row.update(speedup=1.0, speedup_low=1.0, speedup_high=1.0, dense_self_ratio_low=timing["speedup_low"],
                   dense_self_ratio_high=timing["speedup_high"], pruned_step_s=timing["dense_step_s"])
    else:
        row.update(speedup=timing["speedup"], speedup_low=timing["speedup_low"], speedup_high=timing["speedup_high"],
                   pruned_step_s=timing["pruned_step_s"])
    row["relative_latency"] = steps / BASE_STEPS / row["speedup"]
    row["relative_latency_low"] = steps / BASE_STEPS / row["speedup_high"]
    row["relative_latency_high"] = steps / BASE_STEPS / row["speedup_low"]
    row["latency_s_per_image"] = row["dense_step_s"] * steps / row["latency_batch_size"] / row["speedup"]
    return row


def _spec_of(cut: dict, seed: int):
    from core.spec import PruneSpec

    return PruneSpec(criterion=cut["criterion"], granularity=cut["granularity"], sparsity=cut["sparsity"], seed=seed)


def _prune_chain(dense, spec: dict, seed: int):
    """A candidate of several cuts, each pruning the previous cut's model: (the last cut's
    ``PruneResult``, its totals against the dense model: time of every cut, MACs and parameter
    ratios, sparsity ``1 - prod(1 - s)`` of the cuts' sparsities, each of its input's prunable
    weights). One cut: (None, {}), ``core.run`` prunes it."""
    from core.engine import prune

    cuts = _cuts(spec)
    if len(cuts) == 1:
        return None, {}
    held, first, seconds, kept = None, None, 0.0, 1.0
    for cut in cuts:
        started = time.perf_counter()
        held = prune(dense if held is None else held.pipeline, _spec_of(cut, seed))
        seconds += time.perf_counter() - started
        first = first or held.report.totals
        kept *= 1.0 - held.report.totals["sparsity"]
    last = held.report.totals
    return held, dict(wall_time_s=seconds, macs_ratio=last["macs_after"] / first["macs_before"],
                      params_ratio=last["params_after"] / first["params_before"], sparsity=1.0 - kept)


def _key(label: str, steps: int, args) -> str:
    # DDIM rows keep the key they had before the sampler was an option.
    sampler = f"|scheduler={args.scheduler}" if args.scheduler != "ddim" else ""
    return f"{label}|steps={steps}|n={args.num_samples}|seed={args.seed}|model={args.model or 'default'}{sampler}"


def run(args) -> None:
    import torch

    from core.pipeline import load_pipeline
    from core.recovery import RECOVERY_DEFAULTS
    from core.run import EvaluationSettings, RecoverySettings, TimingSettings
    from core.run import run as run_workflow

    results, csv_path = Path(args.results), Path(args.csv)
    done = read_rows(results)
    dense = load_pipeline(args.model, device="cpu")
    dense_base = dict(label="dense", criterion="dense", granularity="-", sparsity=0.0, measured_sparsity=0.0,
                      finetune_steps=0, distill=False, macs_ratio=1.0, params_ratio=1.0)
    late = set(_steps(args.late_steps))
    candidates = parse_candidates(args.candidates)
    recovered: dict = {}  # label -> (pipeline, base row), kept between the early and the late phase

    def measure(label, pipeline, steps, base, is_dense):
        key = _key(label, steps, args)
        if key in done:
            return
        row = dict(_measure(pipeline, dense, steps, args, base, is_dense), key=key)
        _append(results, row)
        done[key] = row
        write_csv(done, csv_path)

    def candidate(spec: dict, budget: int):
        """Prune and recover one candidate for ``budget`` steps: the app's workflow (``core.run``),
        without its grids, quality evaluation and timing (measured per step count below)."""
        label = _label(spec, budget)
        if label in recovered:
            return label, *recovered[label]
        granularity = spec.get("granularity", "channel")
        held, chain = _prune_chain(dense, spec, args.seed)
        recovery = RecoverySettings(
            steps=budget, lr=RECOVERY_DEFAULTS["lr"], batch_size=RECOVERY_DEFAULTS["batch_size"],
            distill=spec["distill"], data=args.data, checkpoint_every=max(1, min(budget // 4, 1000)),
            checkpoint_dir=str(_training_dir(spec, args)))
        outcome = run_workflow(dense, _spec_of(_cuts(spec)[-1], args.seed), pruned=held, recovery=recovery,
                               evaluation=EvaluationSettings(metrics=(), grid_images=0), timing=TimingSettings(enabled=False))
        if outcome.errors:
            raise next(iter(outcome.errors.values()))
        totals, tuned = dict(outcome.pruned.report.totals, **chain), outcome.recovered
        losses = tuned.losses if tuned is not None else None
        base = dict(label=label, criterion=spec["criterion"], granularity=granularity, sparsity=spec["sparsity"],
                    measured_sparsity=totals["sparsity"], finetune_steps=budget, distill=spec["distill"],
                    macs_ratio=totals["macs_ratio"], params_ratio=totals["params_ratio"],
                    prune_s=round(totals["wall_time_s"], 1),
                    finetune_s=round(tuned.wall_time_s, 1) if tuned is not None else 0.0,
                    finetune_resumed_from=tuned.resumed_from if tuned is not None else None,
                    finetune_lr=RECOVERY_DEFAULTS["lr"], finetune_batch_size=RECOVERY_DEFAULTS["batch_size"],
                    final_loss=float(losses["loss"].tail(100).mean()) if losses is not None and len(losses) else None,
                    recovery_data=args.data)
        recovered.clear()  # one recovered model in memory at a time
        recovered[label] = (outcome.delivered, base)
        print(f"{label}: pruned in {base['prune_s']:.0f} s, recovered in {base['finetune_s']:.0f} s "
              f"(MACs x{totals['macs_ratio']:.3f}, params x{totals['params_ratio']:.3f})", flush=True)
        return label, outcome.delivered, base

    def pending(spec, budget, steps):
        return [k for k in steps if _key(_label(spec, budget), k, args) not in done]

    dense_steps, pruned_steps = _steps(args.dense_steps), _steps(args.pruned_steps)
    for steps in [k for k in dense_steps if k not in late]:
        measure("dense", dense, steps, dense_base, True)
    budgets = _steps(args.budgets) if args.budgets else [args.finetune_steps]
    for spec in candidates:
        for budget in budgets:
            todo = pending(spec, budget, [k for k in pruned_steps if k not in late])
            if todo:
                label, pipeline, base = candidate(spec, budget)
                for steps in todo:
                    measure(label, pipeline, steps, base, False)
    for steps in [k for k in dense_steps if k in late]:
        measure("dense", dense, steps, dense_base, True)
    for spec in candidates:
        for budget in budgets:
            todo = pending(spec, budget, [k for k in pruned_steps if k in late])
            if todo:
                label, pipeline, base = candidate(spec, budget)
                for steps in todo:
                    measure(label, pipeline, steps, base, False)
    write_csv(done, csv_path)
    print(f"done: {len(done)} rows in {results}; {torch.get_num_threads()} thread(s)", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model to prune (default: the embedded default model)")
    parser.add_argument("--candidates", default=DEFAULT_CANDIDATES,
                        help="criterion:sparsity[:kd], comma-separated, measured in this order")
    parser.add_argument("--dense-steps", default="4,6,8,12,25,50")
    parser.add_argument("--pruned-steps", default="8,12,50")
    parser.add_argument("--late-steps", default="50", help="step counts measured after every other row (slowest)")
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--finetune-steps", type=int, default=1000)
    parser.add_argument("--budgets", default="",
                        help="recovery budgets, comma-separated (e.g. 1000,3000,10000): each candidate is measured "
                             "after each, a longer one resuming from the shorter one's checkpoints "
                             "(default: --finetune-steps only)")
    parser.add_argument("--data", default="fashion-mnist-train", help="recovery data (core.recovery.recovery_images)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scheduler", default="ddim", choices=("ddim", "dpm-solver++"),
                        help="sampler of every row (DPM-Solver++: diffusers' DPMSolverMultistepScheduler)")
    parser.add_argument("--latency-batch-size", type=int, default=8)
    parser.add_argument("--latency-rounds", type=int, default=15)
    parser.add_argument("--latency-budget-s", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--csv", default=str(CSV))
    parser.add_argument("--runs-dir", default=str(RUNS))
    # every FID costs one 2048 x 2048 eigendecomposition (~10 s on one thread): --quick makes three
    parser.add_argument("--quick", action="store_true",
                        help=f"tiny settings for the tests: {', '.join(f'{k}={v}' for k, v in QUICK.items())}")
    parser.add_argument("--markdown", default=None, help="with --table: also write the tables to this file")
    parser.add_argument("--table", action="store_true", help="rewrite --csv from --results, print the markdown tables and verdicts, and exit")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    if args.table:
        rows = read_rows(Path(args.results))
        write_csv(rows, Path(args.csv))  # derived from the rows: rewritten with the current verdict
        markdown = table_markdown(rows)
        if args.markdown:
            Path(args.markdown).write_text(
                "# The frontier at equal latency, every row\n\nWritten by `python benchmarks/bench_frontier.py --table "
                f"--markdown {args.markdown}` from `benchmarks/results/frontier.jsonl`; how it is measured and what "
                "it means: [benchmarks.md](benchmarks.md).\n\n" + re.sub("^### ", "## ", markdown, flags=re.M) + "\n")
        print(markdown)
        return 0
    if args.quick:
        for name, value in QUICK.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    import torch

    torch.set_num_threads(args.threads)
    run(args)
    print(table_markdown(read_rows(Path(args.results))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
