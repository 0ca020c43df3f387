"""Benchmark the evaluation layer on the embedded default model.

For each N in ``--num-samples``: the time to sample N images, to extract their Inception
features and to compute FID+KID against the shipped Fashion-MNIST test features (through
``core.evaluate.evaluate``, the same call the app makes); then the dense default model's sampler
latency per image. Prints a summary and merges the figures into ``benchmarks/results/eval.json``
(one entry per N, so the 256 and 1,000 runs can be made separately).

    .venv/bin/python benchmarks/bench_eval.py --num-samples 256
    .venv/bin/python benchmarks/bench_eval.py --num-samples 1000 --skip-latency
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from core.evaluate import evaluate  # noqa: E402
from core.metrics import torch_threads  # noqa: E402
from core.pipeline import load_pipeline  # noqa: E402

DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "eval.json"


def _machine() -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
    }


def _progress(prefix: str):
    last = {"decile": -1}

    def report(fraction: float, message: str) -> None:
        decile = int(fraction * 10)
        if decile != last["decile"]:
            last["decile"] = decile
            print(f"  [{prefix}] {fraction:5.1%} {message}", flush=True)

    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, nargs="+", default=[256], help="sample counts N (e.g. 256 1000)")
    parser.add_argument("--steps", type=int, default=50, help="DDIM sampling steps")
    parser.add_argument("--batch-size", type=int, default=64, help="sampling batch size")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own setting)")
    parser.add_argument("--latency-batch-size", type=int, default=8)
    parser.add_argument("--latency-repeats", type=int, default=3)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--model", default=None, help="model to load (default: the embedded default model)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)

    pipeline = load_pipeline(args.model, device="cpu")
    results = json.loads(args.output.read_text()) if args.output.is_file() else {}
    command = "python benchmarks/bench_eval.py " + " ".join(argv if argv is not None else sys.argv[1:])
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with torch_threads(args.threads):
        for count in args.num_samples:
            print(f"FID+KID for N={count} ({args.steps} DDIM steps, {torch.get_num_threads()} threads)", flush=True)
            row = evaluate(pipeline, count, num_inference_steps=args.steps, metrics=("fid", "kid"),
                           batch_size=args.batch_size, progress=_progress(f"N={count}"))
            entry = {
                "num_samples": count, "num_inference_steps": args.steps, "threads": torch.get_num_threads(),
                "sampling_seconds": row["sampling_seconds"],
                "inception_seconds": row["feature_seconds"],
                "fid_kid_compute_seconds": row["distance_seconds"],
                "fid_kid_seconds_excluding_sampling": row["feature_seconds"] + row["distance_seconds"] + row["reference_seconds"],
                "total_seconds": row["seconds"],
                "fid": row["fid"], "kid": row["kid"], "kid_std": row["kid_std"], "kid_subset_size": row["kid_subset_size"],
                "model_hash": row["model_hash"], "command": command, "measured_at": stamp, "machine": _machine(),
            }
            results[f"fid_kid_n{count}"] = entry
            print(json.dumps({k: v for k, v in entry.items() if k != "machine"}, indent=2), flush=True)
        if not args.skip_latency:
            print("dense default model latency", flush=True)
            row = evaluate(pipeline, 1, num_inference_steps=args.steps, metrics=("latency",),
                           latency_batch_size=args.latency_batch_size, latency_repeats=args.latency_repeats)
            entry = {key: row[key] for key in ("latency_median_s_per_image", "latency_min_s_per_image",
                                               "latency_max_s_per_image", "latency_per_step_s", "latency_batch_size",
                                               "threads", "device", "num_inference_steps", "model_hash")}
            entry.update(command=command, measured_at=stamp, machine=_machine())
            results["latency_dense_default"] = entry
            print(json.dumps({k: v for k, v in entry.items() if k != "machine"}, indent=2), flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
