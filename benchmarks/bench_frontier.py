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
  itself, interleaved) show the instrument's noise. A pruned network's per-step speed-up does not
  depend on the step count, sampler or recovery budget: the tables and the CSV give each of its
  rows the median of all its rows' measurements (``frontier_verdict.pooled_speedups``).
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
import os
import platform
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.frontier_verdict import BASE_STEPS, table_markdown, write_csv  # noqa: E402
from benchmarks.rows import append_row, read_rows  # noqa: E402,F401 - read_rows is part of this module's API
RESULTS = ROOT / "benchmarks" / "results" / "frontier.jsonl"
CSV = ROOT / "assets" / "results" / "frontier.csv"
RUNS = ROOT / "runs" / "bench_frontier"

DEFAULT_CANDIDATES = "obs:0.2,obs:0.3,nici:0.2:kd,taylor:0.2,nici:0.3:kd,taylor:0.3"
REFERENCE = "fashion-mnist-test"
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
