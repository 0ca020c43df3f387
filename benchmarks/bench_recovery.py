"""Recovery in the app: what the default recovery budget buys.

On the embedded default model (``load_pipeline()``: a pixel DDPM on Fashion-MNIST 28x28) pruned
to 44 % of its channels (``PruneSpec(criterion, granularity="channel", sparsity=0.44)``), KID and
FID of 256 samples (DDIM 25 steps, seed 0, against the shipped Fashion-MNIST test features) after
0, 50, 200 and 1,000 steps of the app's default recovery (``core.recovery.RECOVERY_DEFAULTS``:
lr, batch size; on the shipped training images), for

* ``taylor`` -- Diff-Pruning's criterion, recovery without distillation,
* ``nici``   -- NiCI-Pruning's criterion, recovery with its distillation from the dense model,
* ``obs``    -- OBS-Diff (channel granularity), recovery without distillation,

and the dense model under the same evaluation.

One trajectory per method, each point one ``core.run.run`` of the method's pruned model: recover
to N steps (``core.finetune.finetune``), evaluate; recover again to a larger N in the same
checkpoint folder (it resumes from the largest checkpoint not beyond N: the same weights as an
uninterrupted run, ``core/finetune.py``), evaluate; and so on. Checkpoints are written only at the measured points
(``checkpoint_every=0``), so the recovery wall time of a point is exactly the sum of the
``FinetuneResult.wall_time_s`` of the segments that reached it (kept per method in
``<runs-dir>/<settings>/<method>/wall_time.json``, so a restarted run keeps the time of the
segments it does not redo). The points are measured step budget first, method second, in the
order ``--steps`` gives (default ``0 200 50 1000``: every method's one-shot model, then the app's
default budget, then 50 -- a fresh 50-step run, as no checkpoint <= 50 exists yet; same weights as
a stop at 50 on the way -- and last the 1,000-step segments, resumed from ``checkpoint-200``).

Rows go to ``benchmarks/results/recovery.jsonl`` (one JSON object per line) as soon as they are
measured; a re-run skips rows already there (key: method + steps + settings) and resumes the
fine-tuning from the checkpoints under ``runs/bench_recovery/`` (git-ignored).

Usage::

    .venv/bin/python benchmarks/bench_recovery.py --threads 1            # the full benchmark (about an hour)
    .venv/bin/python benchmarks/bench_recovery.py --table                # the measured rows as markdown
    .venv/bin/python benchmarks/bench_recovery.py --quick --model PATH --data generated   # smoke test

``--quick``: 8 samples, DDIM 2 steps, steps 0 2, batch 2, one calibration batch of 2 images, KID
only (FID's 2048-dimensional eigen-decomposition alone costs ~13 s per evaluation on one thread),
rows to ``runs/bench_recovery_quick/recovery.jsonl`` unless ``--results`` says otherwise. On a tiny
model (``--model``) it takes about a minute; on the default model several minutes (each
prune and each FID/KID evaluation there takes 20-40 s even at these settings).

Every figure is measured by this script on this machine; nothing is copied from the papers.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.rows import append_row, read_rows  # noqa: E402
RESULTS = ROOT / "benchmarks" / "results" / "recovery.jsonl"
RUNS = ROOT / "runs" / "bench_recovery"
QUICK_RESULTS = ROOT / "runs" / "bench_recovery_quick" / "recovery.jsonl"
QUICK_RUNS = ROOT / "runs" / "bench_recovery_quick"

METHODS = ("taylor", "nici", "obs")
DISTILL = {"taylor": False, "nici": True, "obs": False}  # NiCI's recipe distils from the dense model
WALL_FILE = "wall_time.json"


# ----------------------------------------------------------------------------------------------
# Rows (resumable jsonl)
# ----------------------------------------------------------------------------------------------
_done = read_rows


def _append(path: Path, row: dict) -> None:
    append_row(path, row)
    print(json.dumps(row), flush=True)


def _settings(args) -> dict:
    from core.recovery import RECOVERY_DEFAULTS

    return dict(model=args.model or "default", sparsity=args.sparsity, granularity="channel",
                num_samples=args.num_samples, inference_steps=args.inference_steps, seed=0,
                reference="fashion-mnist-test", metrics=list(args.metrics),
                lr=args.lr if args.lr is not None else RECOVERY_DEFAULTS["lr"],
                batch_size=args.batch_size if args.batch_size is not None else RECOVERY_DEFAULTS["batch_size"],
                data=args.data, calibration_batches=args.calibration_batches,
                calibration_batch_size=args.calibration_batch_size)


def _settings_id(settings: dict) -> str:
    """A short readable id of the settings (part of every row key and of the checkpoint folder)."""
    model = Path(settings["model"]).name if settings["model"] != "default" else "default"
    calibration = ("" if settings["calibration_batches"] is None and settings["calibration_batch_size"] is None
                   else f"-c{settings['calibration_batches']}x{settings['calibration_batch_size']}")
    return (f"{model}-channel{settings['sparsity']}-n{settings['num_samples']}-i{settings['inference_steps']}"
            f"-{'+'.join(settings['metrics'])}-lr{settings['lr']:g}-b{settings['batch_size']}-{settings['data']}"
            f"{calibration}-seed0")


def _key(method: str, steps: int, settings_id: str) -> str:
    return f"{method}/{steps}/{settings_id}"


def _finite(value) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------
def _evaluation(args, stage: str):
    """Every row's evaluation (``core.run``): exactly ``--metrics`` of ``stage``, seed 0, no grids."""
    from core.run import EvaluationSettings

    return EvaluationSettings(num_samples=args.num_samples, steps=args.inference_steps, seed=0,
                              metrics=tuple(args.metrics), count_macs=False, reference="fashion-mnist-test",
                              grid_images=0, stages=(stage,))


def _evaluate(pipeline, args) -> tuple[dict, float]:
    """The dense row (it has no spec to run): evaluated directly with the rows' settings."""
    from core import evaluate

    evaluation = _evaluation(args, "dense")
    measured = evaluate(pipeline, num_samples=evaluation.num_samples, num_inference_steps=evaluation.steps,
                        seed=evaluation.seed, metrics=evaluation.metrics, reference=evaluation.reference)
    return measured, measured["seconds"]


def _row(key, settings, settings_id, measured, eval_s, **extra) -> dict:
    return dict(key=key, settings_id=settings_id, **extra,
                kid=_finite(measured.get("kid")), kid_std=_finite(measured.get("kid_std")),
                kid_subset_size=measured.get("kid_subset_size"), fid=_finite(measured.get("fid")),
                params=measured.get("params"), eval_wall_s=round(eval_s, 2),
                num_samples=measured.get("num_samples"), inference_steps=measured.get("num_inference_steps"),
                settings=settings, threads=torch.get_num_threads(), date=time.strftime("%Y-%m-%d %H:%M"),
                processor=platform.processor() or platform.machine(), machine=platform.node())


def _wall_log(run_dir: Path) -> dict:
    path = run_dir / WALL_FILE
    return {int(k): v for k, v in json.loads(path.read_text()).items()} if path.exists() else {}


def _log_wall(run_dir: Path, steps: int, seconds: float) -> None:
    log = _wall_log(run_dir)
    log[int(steps)] = seconds
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / WALL_FILE).write_text(json.dumps({str(k): v for k, v in sorted(log.items())}, indent=1))


def run(args) -> int:
    from core import PruneSpec, load_pipeline, prune
    from core.recovery import recovery_images
    from core.run import RecoverySettings, TimingSettings
    from core.run import run as run_workflow

    results, runs = Path(args.results), Path(args.runs_dir)
    settings = _settings(args)
    settings_id = _settings_id(settings)
    steps_list = list(dict.fromkeys(int(s) for s in args.steps))  # measured in the order given
    done = _done(results)
    todo = {m: [s for s in steps_list if _key(m, s, settings_id) not in done] for m in args.methods}
    dense_key = _key("dense", 0, settings_id)
    if dense_key in done and not any(todo.values()):
        print(f"all rows of {settings_id} are in {results}: nothing to do", flush=True)
        return 0

    dense = load_pipeline(args.model) if args.model else load_pipeline()
    if dense_key not in done:
        measured, eval_s = _evaluate(dense, args)
        _append(results, _row(dense_key, settings, settings_id, measured, eval_s, method="dense", recovery_steps=0,
                              distill=False, params_ratio=1.0, macs_ratio=1.0, prune_wall_s=None,
                              recovery_wall_s=None))
    if not any(todo.values()):
        return 0
    images, data_label = recovery_images(dense, args.data, seed=0)
    print(f"recovery data: {data_label}", flush=True)

    pruned = {}  # method -> PruneResult (kept: the trajectories are interleaved, step budget first)
    prune_s = {}
    for method in args.methods:
        if not todo[method]:
            continue
        spec = PruneSpec(criterion=method, granularity="channel", sparsity=args.sparsity, seed=0,
                         calibration_batches=args.calibration_batches,
                         calibration_batch_size=args.calibration_batch_size)
        started = time.perf_counter()
        pruned[method] = prune(dense, spec)  # once per method: every point of its trajectory recovers this model
        prune_s[method] = time.perf_counter() - started
        print(f"{method}: pruned in {prune_s[method]:.1f} s (params ratio "
              f"{pruned[method].report.totals['params_ratio']:.3f})", flush=True)

    for steps in steps_list:
        for method in args.methods:
            if steps not in todo[method]:
                continue
            result, totals = pruned[method], pruned[method].report.totals
            run_dir = runs / settings_id / method
            distill = DISTILL[method]
            segment_s, resumed_from, loss = 0.0, None, None
            recovery = RecoverySettings(steps=steps, lr=settings["lr"], batch_size=settings["batch_size"],
                                        distill=distill, data=args.data, checkpoint_dir=str(run_dir),
                                        checkpoint_every=0)
            stage = "recovered" if steps else "one-shot"
            outcome = run_workflow(dense, result.spec, pruned=result, recovery=recovery,
                                   recovery_data=(images, None, data_label), evaluation=_evaluation(args, stage),
                                   timing=TimingSettings(enabled=False))
            for error in outcome.errors.values():
                raise error
            measured = outcome.evaluations[stage]
            if steps == 0:
                recovery_s = 0.0
            else:  # run times one recovery segment; the trajectory's time over resumed segments is kept here
                log = _wall_log(run_dir)
                tuned = outcome.recovered
                segment_s, resumed_from = tuned.wall_time_s, tuned.resumed_from
                start = resumed_from or 0
                if start and start not in log:
                    raise RuntimeError(f"{run_dir}: checkpoint-{start} has no recorded wall time in {WALL_FILE}; "
                                       "delete the folder to redo this trajectory")
                if start == steps and steps in log:  # the checkpoint was there already (row lost): its time
                    recovery_s = log[steps]
                else:
                    recovery_s = (log.get(start, 0.0) if start else 0.0) + segment_s
                    _log_wall(run_dir, steps, recovery_s)
                loss = float(tuned.losses["loss"].tail(20).mean()) if len(tuned.losses) else None
            _append(results, _row(
                _key(method, steps, settings_id), settings, settings_id, measured, measured["seconds"], method=method,
                recovery_steps=steps, distill=distill, params_ratio=totals["params_ratio"],
                macs_ratio=totals["macs_ratio"], achieved_sparsity=totals["sparsity"],
                prune_wall_s=round(prune_s[method], 2), recovery_wall_s=round(recovery_s, 2),
                segment_wall_s=round(segment_s, 2), resumed_from=resumed_from,
                final_loss_last20=loss, data=data_label))
    return 0


# ----------------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------------
def _seconds(value) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0 s"
    if value < 10:
        return f"{value:.1f} s"
    return f"{value:.0f} s" if value < 120 else f"{value / 60:.1f} min"


def table(args) -> str:
    """The rows of the current settings as a markdown table (for docs/benchmarks.md)."""
    settings_id = _settings_id(_settings(args))
    rows = [r for r in _done(Path(args.results)).values() if r.get("settings_id") == settings_id]
    if not rows:
        return f"(no rows of {settings_id} in {args.results})"
    order = {m: i for i, m in enumerate(("dense",) + METHODS)}
    rows.sort(key=lambda r: (order.get(r["method"], 99), r["recovery_steps"]))
    dense = next((r for r in rows if r["method"] == "dense"), None)
    lines = ["| method | recovery steps | KID ± std | FID | recovery wall time |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        fid = "-" if r.get("fid") is None else f"{r['fid']:.1f}"
        kid = "-" if r.get("kid") is None else f"{r['kid']:.4f} ± {r['kid_std']:.4f}"
        if r["method"] == "dense":
            lines.append(f"| dense (unpruned) | - | {kid} | {fid} | - |")
            continue
        label = r["method"] + (" + KD" if r.get("distill") else "")
        lines.append(f"| {label} | {r['recovery_steps']:,} | {kid} | {fid} | {_seconds(r['recovery_wall_s'])} |")
    notes = []
    for method in METHODS:
        first = next((r for r in rows if r["method"] == method), None)
        if first:
            notes.append(f"{method}: params x{first['params_ratio']:.3f}, MACs x{first['macs_ratio']:.3f}, "
                         f"pruned in {_seconds(first['prune_wall_s'])}")
    sample = dense or rows[0]
    evals = [r["eval_wall_s"] for r in rows if r.get("eval_wall_s")]
    lines.append("")
    lines.append(f"{sample['num_samples']} samples per row, DDIM {sample['inference_steps']} steps, seed 0, KID/FID "
                 f"against the shipped Fashion-MNIST test features (1,000 images; KID subsets of "
                 f"{sample.get('kid_subset_size')}; FID is biased high at this n: compare rows). Recovery: "
                 f"lr {sample['settings']['lr']:g}, batch {sample['settings']['batch_size']}, data "
                 f"{sample['settings']['data']}; wall time cumulative over the resumed segments; "
                 f"{sample['threads']} torch thread(s). " + "; ".join(notes)
                 + (f"; one evaluation {_seconds(min(evals))}-{_seconds(max(evals))}." if evals else "."))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--steps", nargs="+", type=int, default=None, help="recovery step budgets, measured in this order (default 0 200 50 1000)")
    parser.add_argument("--num-samples", type=int, default=None, help="samples per evaluation (default 256)")
    parser.add_argument("--inference-steps", type=int, default=None, help="DDIM steps of the samples (default 25)")
    parser.add_argument("--metrics", nargs="+", default=None, choices=["fid", "kid"], help="default: fid kid")
    parser.add_argument("--sparsity", type=float, default=0.44)
    parser.add_argument("--lr", type=float, default=None, help="default: RECOVERY_DEFAULTS['lr']")
    parser.add_argument("--batch-size", type=int, default=None, help="default: RECOVERY_DEFAULTS['batch_size']")
    parser.add_argument("--data", default="fashion-mnist-train", help="recovery data (core.recovery.recovery_images)")
    parser.add_argument("--calibration-batches", type=int, default=None, help="default: the criterion's")
    parser.add_argument("--calibration-batch-size", type=int, default=None, help="default: the criterion's")
    parser.add_argument("--model", default=None, help="a model path or hub id (default: the embedded default model)")
    parser.add_argument("--results", default=None, help=f"jsonl of rows (default {RESULTS.relative_to(ROOT)})")
    parser.add_argument("--runs-dir", default=None, help=f"fine-tuning checkpoints (default {RUNS.relative_to(ROOT)})")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke test (see the module doc)")
    parser.add_argument("--table", action="store_true", help="print the measured rows as markdown and exit")
    args = parser.parse_args(argv)
    quick = dict(steps=[0, 2], num_samples=8, inference_steps=2, metrics=["kid"], batch_size=2,
                 calibration_batches=1, calibration_batch_size=2, results=QUICK_RESULTS, runs_dir=QUICK_RUNS)
    full = dict(steps=[0, 200, 50, 1000], num_samples=256, inference_steps=25, metrics=["fid", "kid"],
                results=RESULTS, runs_dir=RUNS)
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.table:
        print(table(args))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
