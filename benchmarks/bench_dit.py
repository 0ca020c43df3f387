"""Benchmarks on the embedded latent DiT (``load_pipeline("dit-fashion-mnist")``).

Parts (``--parts``, comma-separated, run in the order given; rows go to ``benchmarks/results/dit.jsonl``, one JSON row per
measured model, keyed so that a re-run skips what is already measured: the benchmark resumes):

* ``granularities`` -- every ``--criteria`` with ``head``, ``ffn``, ``block``, unstructured and
                       2:4 at ``--sparsities`` (2:4 has its fixed 50 % of the blocks' linear weights),
                       one-shot: FID/KID of class-balanced samples against the 1,000 test images,
                       parameters, MACs and the paired dense-vs-pruned latency speed-up.
* ``obs-structured`` -- OBS-Diff's structured claim: ``obs`` vs ``magnitude`` vs ``taylor`` at 30 %
                       of the heads and then 30 % of the FFN neurons (two cuts, one after the other),
                       one-shot.
* ``vae``           -- Towards Tiny Diffusion's "prune the autoencoder too": 30 % of the VAE's
                       channels pruned as a component (its latent interface never cut), the
                       transformer dense: FID change.
* ``finetune``      -- every ``--criteria`` at each granularity's first setting (head 1/4,
                       ffn / block / unstructured ``--finetune-sparsity``, 2:4) after the suite's
                       fine-tuning budget (``--finetune-steps`` 40, batch 16, lr 2e-4: the quick
                       mode of ``benchmarks/suite.py``) on the 1,000 shipped training images, each
                       with its own class (``core.recovery.recovery_data``).

Usage::

    .venv/bin/python benchmarks/bench_dit.py --parts granularities,obs-structured,vae --num-samples 200

Every figure is measured by this script on this machine; nothing is copied from the papers.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "dit.jsonl"

from benchmarks.rows import append_row, read_rows  # noqa: E402
from core import PruneSpec, evaluate, load_pipeline, prune  # noqa: E402
from core.run import EvaluationSettings, RecoverySettings, TimingSettings, run as run_workflow  # noqa: E402

GRANULARITIES = ("head", "ffn", "block", "unstructured", "2:4")
FINETUNE_LR, FINETUNE_BATCH = 2e-4, 16  # the suite's quick-mode fine-tuning (benchmarks/suite.py)


def _done() -> dict:
    return read_rows(RESULTS)


def _append(row: dict) -> None:
    append_row(RESULTS, row)
    print(json.dumps(row), flush=True)


def _evaluation(args, stage: str) -> EvaluationSettings:
    """Every row's evaluation (``core.run``): FID, KID, MACs and, with ``--latency``, the paired sampler latency."""
    return EvaluationSettings(num_samples=args.num_samples, steps=args.steps, seed=0,
                              metrics=("fid", "kid", "macs") + (("latency",) if args.latency else ()), grid_images=0,
                              stages=(stage,), options={"latency_repeats": args.latency_repeats})


def _measure(pipeline, dense, args) -> dict:
    """The dense row (it has no spec to run): evaluated directly with the rows' settings."""
    evaluation = _evaluation(args, "dense")
    return evaluate(pipeline, num_samples=evaluation.num_samples, num_inference_steps=evaluation.steps,
                    seed=evaluation.seed, metrics=evaluation.metrics, dense_pipeline=dense if args.latency else None,
                    **dict(evaluation.options))


def _row(key: str, part: str, measured: dict, prune_s: float | None, **extra) -> dict:
    keep = ("fid", "kid", "kid_std", "params", "nonzero_params", "macs", "autoencoder_params", "autoencoder_macs",
            "latency_median_s_per_image", "latency_min_s_per_image", "latency_max_s_per_image",
            "dense_latency_median_s_per_image", "speedup")
    return dict(key=key, part=part, **extra, **{k: measured[k] for k in keep if k in measured},
                prune_s=None if prune_s is None else round(prune_s, 1),
                num_samples=measured.get("num_samples"), steps=measured.get("num_inference_steps"),
                date=time.strftime("%Y-%m-%d"), threads=torch.get_num_threads(),
                processor=platform.processor() or platform.machine())


def run(args) -> None:
    done = _done()
    dense = load_pipeline("dit-fashion-mnist")
    settings = f"n{args.num_samples}-s{args.steps}"
    key = f"dense/{settings}"
    if key not in done:
        _append(_row(key, "dense", _measure(dense, None, argparse.Namespace(**{**vars(args), "latency": False})),
                     None, criterion="dense", granularity="-", sparsity=0.0))
    parts = args.parts.split(",")

    def one(key, part, specs, finetune_steps=0, **extra):
        if key in done:
            return
        started = time.perf_counter()
        # pruned here, not by run: the cuts of a row are chained and a refused spec is a row of its own
        try:
            result = None
            for spec in specs:  # dicts: a spec the registries refuse is a refusal row too
                result = prune(dense if result is None else result.pipeline, PruneSpec(**spec))
        except ValueError as error:  # a refusal with its reason is a result too
            _append(dict(key=key, part=part, refused=str(error), **extra))
            return
        prune_s = time.perf_counter() - started
        # the last cut's result, measured against the dense model (its recovery data: the shipped
        # training images with their classes, core.recovery.recovery_data)
        recovery = RecoverySettings(steps=finetune_steps, lr=FINETUNE_LR, batch_size=FINETUNE_BATCH,
                                    data="fashion-mnist-train")
        stage = "recovered" if finetune_steps else "one-shot"
        outcome = run_workflow(dense, result.spec, pruned=result, recovery=recovery,
                               evaluation=_evaluation(args, stage), timing=TimingSettings(enabled=False))
        for error in outcome.errors.values():
            raise error
        tuned = {}
        if finetune_steps:
            tuned = dict(finetune_steps=finetune_steps, finetune_s=round(outcome.recovered.wall_time_s, 1),
                         finetune_data=outcome.recovery_data)
        _append(_row(key, part, outcome.evaluations[stage], prune_s, **extra, **tuned))

    def granularities():
        for granularity in GRANULARITIES:
            # whole heads come in quarters of the attention weights (4 heads): 1/6 and 1/4 of the
            # prunable weights are the reachable cuts, so head rows use those two sparsities.
            sparsities = [0.5] if ":" in granularity else args.head_sparsities if granularity == "head" else args.sparsities
            for sparsity in sparsities:
                for criterion in args.criteria:
                    spec = dict(criterion=criterion, granularity=granularity,
                                sparsity=None if ":" in granularity else sparsity, seed=0)
                    one(f"granularities/{criterion}/{granularity}/{sparsity}/{settings}", "granularities", [spec],
                        criterion=criterion, granularity=granularity, sparsity=sparsity)

    def finetuned():
        for granularity in GRANULARITIES:
            sparsity = 0.5 if ":" in granularity else 0.25 if granularity == "head" else args.finetune_sparsity
            for criterion in args.finetune_criteria or args.criteria:
                spec = dict(criterion=criterion, granularity=granularity,
                            sparsity=None if ":" in granularity else sparsity, seed=0)
                one(f"finetune{args.finetune_steps}/{criterion}/{granularity}/{sparsity}/{settings}", "finetune", [spec],
                    finetune_steps=args.finetune_steps, criterion=criterion, granularity=granularity, sparsity=sparsity)
    def obs_structured():
        # 1 of the 4 heads of every block (the nearest whole-head cut to 30 %), then 30 % of the FFN
        # neurons (FFN weights are 2/3 of a block's prunable weights: sparsity 0.2 of the remaining).
        for criterion in ("obs", "magnitude", "taylor"):
            specs = [dict(criterion=criterion, granularity="head", sparsity=None, channel_ratio=0.25, seed=0),
                     dict(criterion=criterion, granularity="ffn", sparsity=0.2, seed=0)]
            one(f"obs-structured-h25-f30/{criterion}/{settings}", "obs-structured", specs,
                criterion=criterion, granularity="head 25% + ffn 30%", sparsity=None)
    def vae():
        for criterion in ("magnitude", "taylor"):
            spec = dict(criterion=criterion, granularity="channel", sparsity=0.3, components=("vae",), seed=0)
            one(f"vae/{criterion}/{settings}", "vae", [spec], criterion=criterion, granularity="channel (vae)",
                sparsity=0.3)

    steps = {"granularities": granularities, "finetune": finetuned, "obs-structured": obs_structured, "vae": vae}
    unknown = [part for part in parts if part not in steps]
    if unknown:
        raise SystemExit(f"--parts: unknown {unknown}; allowed: {sorted(steps)}")
    for part in parts:  # in the order given
        steps[part]()


def table() -> str:
    """The measured rows as a markdown table (for docs/benchmarks.md and BENCHMARKS.md)."""
    rows = list(_done().values())
    dense = next((r for r in rows if r["part"] == "dense"), None)
    parts = ["dense", "granularities", "finetune", "obs-structured", "vae"]
    criteria = ["magnitude", "taylor", "nici", "l1", "gradflow", "obs"]
    granularities = list(GRANULARITIES)

    def order(r):
        return (parts.index(r["part"]) if r["part"] in parts else len(parts),
                granularities.index(r["granularity"]) if r["granularity"] in granularities else -1,
                float(r.get("sparsity") or 0), criteria.index(r["criterion"]) if r["criterion"] in criteria else -1)

    rows.sort(key=order)
    lines = ["| part | criterion | granularity | sparsity | recovery | FID | KID | params | MACs (transformer) | speed-up (paired) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "refused" in r:
            lines.append(f"| {r['part']} | {r['criterion']} | {r['granularity']} | {r.get('sparsity')} | | refused: "
                         f"{r['refused'][:90]} | | | | |")
            continue
        speed = f"{r['speedup']:.2f}x" if r.get("speedup") else "-"
        recovery = f"{r['finetune_steps']} steps" if r.get("finetune_steps") else "one-shot"
        lines.append(f"| {r['part']} | {r['criterion']} | {r['granularity']} | {r.get('sparsity')} | {recovery} | {r['fid']:.1f} | "
                     f"{r['kid']:.4f} ± {r['kid_std']:.4f} | {r['params'] / 1e6:.2f} M | {r['macs'] / 1e6:.1f} M | {speed} |")
    if dense:
        lines.append(f"\n{dense['num_samples']} class-uniform samples per row, DDIM {dense['steps']} steps, seed 0, "
                     "guidance 1.5, FID/KID against the 1,000 test images (FID is biased high at this n: compare rows, "
                     "not with the 1,000-sample figures).")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="granularities,obs-structured,vae")
    parser.add_argument("--criteria", nargs="+", default=["magnitude", "taylor", "obs"])
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.2, 0.4])
    parser.add_argument("--head-sparsities", nargs="+", type=float, default=[0.167, 0.25])
    parser.add_argument("--finetune-steps", type=int, default=40)
    parser.add_argument("--finetune-sparsity", type=float, default=0.3)
    parser.add_argument("--finetune-criteria", nargs="+", default=None, help="default: --criteria")
    parser.add_argument("--num-samples", type=int, default=200)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--latency", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--latency-repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--table", action="store_true", help="print the measured rows as markdown and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(table())
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
