"""The dense model at fewer sampling steps: the baseline frontier of the quality-vs-latency plane.

Every user can trade quality for speed without pruning by sampling the dense model with fewer
steps. A pruned model is worth something only if it beats that trade at equal latency, so the
app's quality-vs-latency chart draws these points next to the pruned results.

    python benchmarks/dense_frontier.py [--num-samples 48] [--base-steps 10] [--threads 1]

Measures, on the embedded default model and with the benchmark suite's quick-mode settings
(48 samples, seed 0, DDIM, against the 1,000 Fashion-MNIST test images), FID and KID at every
step count in ``--steps``, and the sampler's latency at each step count, timed interleaved
(round-robin over the step counts, one warm-up round, median of ``--repeats`` rounds) so that
load drifts hit every step count alike: ``core.frontier.dense_frontier`` with ``latency="sampler"``,
the app's frontier function. ``relative_latency`` is the median latency divided by the median
latency at ``--base-steps`` (the suite's 10), i.e. on the same axis as ``1 / speedup`` of the
suite's pruned rows. Writes ``assets/results/dense_steps.csv`` (read by the app's charts).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
COLUMNS = ["num_inference_steps", "fid", "kid", "kid_std", "latency_median_s_per_image", "latency_min_s_per_image",
           "latency_max_s_per_image", "relative_latency", "base_steps", "num_samples", "seed", "reference", "threads"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default="2,3,4,5,6,8,10,12,25,50")
    parser.add_argument("--num-samples", type=int, default=48)
    parser.add_argument("--base-steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--latency-batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "assets" / "results" / "dense_steps.csv"))
    args = parser.parse_args(argv)

    import torch

    from core.frontier import FrontierSettings, dense_frontier
    from core.pipeline import load_pipeline

    torch.set_num_threads(args.threads)
    steps = sorted({int(s) for s in args.steps.split(",")} | {args.base_steps})
    dense = load_pipeline(None, device="cpu")
    started = time.perf_counter()
    settings = FrontierSettings(num_samples=args.num_samples, base_steps=args.base_steps, seed=args.seed,
                                metrics=("fid", "kid"), reference="fashion-mnist-test", latency="sampler",
                                repeats=args.repeats, latency_batch_size=args.latency_batch_size)
    table = dense_frontier(dense, steps, settings, progress=lambda fraction, message: print(message, flush=True))
    table["threads"] = args.threads
    table = table[COLUMNS]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    print(table.to_string(index=False))
    print(f"command: python benchmarks/dense_frontier.py {' '.join(argv or sys.argv[1:])}; "
          f"{time.perf_counter() - started:.0f} s; load average {os.getloadavg()[0]:.1f}; {time.strftime('%Y-%m-%d %H:%M')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
