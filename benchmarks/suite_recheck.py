"""Re-measure one quick-suite row per criterion and compare it with the published table.

    python benchmarks/suite_recheck.py --threads 1                 # unstructured 50 %, no fine-tuning
    python benchmarks/suite_recheck.py --setting channel:0.3

Each row is pruned through the facade and evaluated exactly as ``benchmarks/suite.py --mode quick``
does it (48 samples, DDIM 10 steps, seed 0, against fashion-mnist-test; latency left out), then
compared with the row of ``assets/results/benchmarks.csv``: a row matches when its KID differs by
less than the published KID std (the noise over KID subsets). Writes
``benchmarks/results/suite_recheck.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.suite import MODES  # noqa: E402
from core import CRITERIA, PruneSpec, evaluate, load_pipeline, prune  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", default="unstructured:0.5", help="granularity:sparsity (default unstructured:0.5)")
    parser.add_argument("--criteria", default=None, help=f"comma list (default all of {list(CRITERIA)})")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--table", default=str(ROOT / "assets" / "results" / "benchmarks.csv"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "suite_recheck.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    granularity, _, sparsity = args.setting.partition(":")
    sparsity = float(sparsity) if sparsity else None
    mode = MODES["quick"]
    published = pd.read_csv(args.table)
    dense = load_pipeline(None, device="cpu")
    rows = []
    for criterion in (args.criteria.split(",") if args.criteria else list(CRITERIA)):
        spec = PruneSpec(criterion=criterion, granularity=granularity, sparsity=sparsity, seed=0, device="cpu")
        started = time.perf_counter()
        result = prune(dense, spec)
        seconds = time.perf_counter() - started
        metrics = evaluate(result.pipeline, num_samples=mode["num_samples"], num_inference_steps=mode["steps"], seed=0,
                           metrics=("fid", "kid", "macs"), reference="fashion-mnist-test")
        match = published[(published.criterion == criterion) & (published.granularity == granularity)
                           & (published.finetune_steps == 0) & ((published.sparsity - (spec.sparsity or 0)).abs() < 1e-9)]
        old = match.iloc[0] if len(match) else None
        row = dict(criterion=criterion, granularity=granularity, sparsity=spec.sparsity,
                   measured_sparsity=result.report.totals["sparsity"], kid=metrics["kid"], kid_std=metrics["kid_std"],
                   fid=metrics["fid"], params=metrics["params"], nonzero_params=metrics["nonzero_params"],
                   macs=metrics["macs"], prune_wall_time_s=round(seconds, 2))
        if old is not None:
            row.update(published_kid=float(old.kid), published_kid_std=float(old.kid_std), published_fid=float(old.fid),
                       published_nonzero_params=int(old.nonzero_params),
                       kid_difference=metrics["kid"] - float(old.kid),
                       within_noise=abs(metrics["kid"] - float(old.kid)) < float(old.kid_std))
        rows.append(row)
        print(json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps(dict(command=" ".join(["python"] + sys.argv), threads=torch.get_num_threads(),
                                              rows=rows), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
