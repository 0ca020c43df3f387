"""Pruning-engine benchmarks against the engine's targets (measured, not timed tests).

Parts (``--parts``, default all):

* ``structure`` -- ``channel`` granularity at 44% parameter sparsity on a UNet2DModel with the
  architecture of google/ddpm-cifar10-32 (random weights, built from its public config):
  parameter and MAC ratios (targets 0.54-0.58x params, <= 0.58x MACs) and the measured CPU
  latency speed-up against the MAC reduction factor (target >= 0.85x of it).
* ``cost``      -- wall time of ``prune`` per criterion with its default calibration on the
  embedded default model (target: taylor and nici under 60 s on a 2-core CPU), each with the
  estimate the app shows before a run (``core.cost``: passes x measured seconds per pass);
  ``--paper`` also times the papers' own calibration presets (hours on a CPU),
  ``--paper-estimate`` only estimates them.
* ``kid``       -- KID (``--kid-samples``, default 256) at 50% unstructured sparsity, no fine-tuning,
  for taylor, nici, magnitude and random on the default model (through ``core.evaluate``).
* ``nici-ablation`` -- why ``nici`` fails that check: KID (``--ablation-samples``, default 64) with
  one ingredient swapped at a time (schedule, calibration size, loss).

Results are merged into ``benchmarks/results/prune.json`` (one entry per part, with the command,
the machine and the time). Example::

    .venv/bin/python benchmarks/bench_prune.py --parts structure --latency-repeats 5
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from core.engine import count_macs, prune  # noqa: E402
from core.spec import PRESETS, PruneSpec  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "prune.json"

# google/ddpm-cifar10-32 unet/config.json (public): 35.7 M parameters, 6.1 GMACs at 32x32.
DDPM_CIFAR10_CONFIG = dict(
    sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
    block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=None, norm_num_groups=32, norm_eps=1e-6, act_fn="silu",
    center_input_sample=False, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
    mid_block_scale_factor=1, time_embedding_type="positional",
)


def machine() -> dict:
    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "torch": torch.__version__, "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}


@torch.no_grad()
def latency(unet, batch_size: int, repeats: int, warmup: int = 2) -> float:
    """Median seconds of one UNet forward pass on a ``batch_size`` batch, after warm-up."""
    size = unet.config.sample_size
    sample = torch.randn(batch_size, unet.config.in_channels, size, size, generator=torch.Generator().manual_seed(0))
    timestep = torch.full((batch_size,), 500, dtype=torch.long)
    for _ in range(warmup):
        unet(sample, timestep)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        unet(sample, timestep)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bench_structure(args) -> dict:
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(**DDPM_CIFAR10_CONFIG).eval()
    pipeline = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000))
    spec = PruneSpec(criterion="magnitude", granularity="channel", sparsity=0.44)
    result = prune(pipeline, spec)
    totals = result.report.totals
    entry = {
        "spec": spec.to_dict(),
        "params_before": totals["params_before"], "params_after": totals["params_after"],
        "params_ratio": totals["params_ratio"], "macs_before": totals["macs_before"],
        "macs_after": totals["macs_after"], "macs_ratio": totals["macs_ratio"],
        "prunable_sparsity": totals["sparsity"], "structural_ratio": totals["structural_ratio"],
        "boosted_groups": totals["boosted_groups"], "prune_wall_time_s": totals["wall_time_s"],
        "targets": {"params_ratio": [0.54, 0.58], "macs_ratio_max": 0.58, "speedup_over_mac_factor_min": 0.85},
    }
    entry["params_ok"] = 0.54 <= entry["params_ratio"] <= 0.58
    entry["macs_ok"] = entry["macs_ratio"] <= 0.58
    if args.latency_repeats > 0:
        pruned = result.pipeline.unet.eval()
        dense_s, pruned_s = [], []
        for _ in range(args.latency_rounds):  # interleaved rounds: both models see the same load
            dense_s.append(latency(unet, args.latency_batch, args.latency_repeats))
            pruned_s.append(latency(pruned, args.latency_batch, args.latency_repeats))
        speedup = statistics.median(dense_s) / statistics.median(pruned_s)
        mac_factor = 1.0 / entry["macs_ratio"]
        entry.update(latency_batch=args.latency_batch, dense_latency_s=statistics.median(dense_s),
                     pruned_latency_s=statistics.median(pruned_s), speedup=speedup, mac_reduction_factor=mac_factor,
                     speedup_over_mac_factor=speedup / mac_factor,
                     speedup_ok=speedup / mac_factor >= 0.85)
    return entry


def bench_cost(args) -> dict:
    from core.pipeline import load_pipeline

    pipeline = load_pipeline(None, device="cpu")
    specs = {name: PruneSpec(criterion=name, granularity="unstructured", sparsity=0.5) for name in args.criteria}
    if not args.skip_presets:
        specs["preset:diffpruning"] = PRESETS["diffpruning"]
        specs["preset:nici"] = PRESETS["nici"]
    paper = {}
    if args.paper is not None or args.paper_estimate:
        names = args.paper or ["diffpruning-paper", "nici-paper"]
        paper = {f"preset:{name}": PRESETS[name] for name in names}
        specs.update(paper)
    entry = {}
    from core.cost import estimate_cost
    from core.engine import clear_calibration_cache

    for label, spec in specs.items():
        estimate = estimate_cost(pipeline, spec)  # measured rate x passes: printed before the run, as the app shows it
        if estimate:
            print(f"estimate {label}: {'up to ' if estimate['upper_bound'] else ''}{estimate['seconds']:.1f} s "
                  f"({estimate['passes']} passes at {1000 * estimate['seconds_per_pass']:.1f} ms)", flush=True)
        if label in paper and args.paper is None:
            entry[label] = {"estimate": estimate, "measured": False, "threads": torch.get_num_threads(),
                            "spec": spec.to_dict()}
            continue
        clear_calibration_cache()  # time a full calibration, never a reused one
        started = time.perf_counter()
        result = prune(pipeline, spec)
        totals = result.report.totals
        entry[label] = {
            "seconds": time.perf_counter() - started, "calibration_s": totals["calibration_time_s"],
            "calibration_images": totals["calibration_images"], "timesteps": len(result.report.timestep_weights),
            "schedule": spec.schedule, "schedule_stopped_at": totals["schedule_stopped_at"], "spec": spec.to_dict(),
            "timesteps_per_group": totals.get("timesteps_per_group"), "threads": torch.get_num_threads(),
            "estimate": estimate, "measured": True,
        }
        print(f"cost {label}: {entry[label]['seconds']:.1f} s", flush=True)
    return entry


NICI_ABLATION = {  # label -> PruneSpec options at 50% unstructured: which ingredient of nici fails
    "nici (clean-image loss, interval, 1 x 4 images)": dict(criterion="nici"),
    "nici with the threshold schedule": dict(criterion="nici", schedule="threshold"),
    "nici with 1 x 32 calibration images": dict(criterion="nici", calibration_batch_size=32),
    "taylor (denoising loss) with the interval schedule": dict(criterion="taylor", schedule="interval"),
    "taylor (denoising loss, threshold)": dict(criterion="taylor"),
    "random": dict(criterion="random"),
}


def bench_nici_ablation(args) -> dict:
    """KID at 50% unstructured, no fine-tuning, when one ingredient of nici is swapped at a time:
    its schedule (interval -> threshold), its calibration size (4 -> 32 images) or its loss
    (clean-image -> denoising, i.e. taylor with nici's interval schedule)."""
    from core.evaluate import evaluate
    from core.pipeline import load_pipeline

    pipeline = load_pipeline(None, device="cpu")
    entry = {"settings": {"num_samples": args.ablation_samples, "num_inference_steps": args.kid_steps, "sparsity": 0.5}}
    for label, options in NICI_ABLATION.items():
        result = prune(pipeline, PruneSpec(granularity="unstructured", sparsity=0.5, **options))
        row = evaluate(result.pipeline, args.ablation_samples, num_inference_steps=args.kid_steps, seed=0, metrics=("kid",))
        entry[label] = {"kid": row["kid"], "kid_std": row["kid_std"], "spec": result.spec.to_dict()}
        print(f"nici ablation {label}: KID {row['kid']:.4f} ± {row['kid_std']:.4f}", flush=True)
    return entry


def bench_kid(args) -> dict:
    from core.evaluate import evaluate
    from core.pipeline import load_pipeline

    pipeline = load_pipeline(None, device="cpu")
    entry = {}
    dense = evaluate(pipeline, args.kid_samples, num_inference_steps=args.kid_steps, seed=0, metrics=("kid",))
    entry["dense"] = {k: dense.get(k) for k in ("kid", "kid_std")}
    for name in ("taylor", "nici", "magnitude", "random"):
        result = prune(pipeline, PruneSpec(criterion=name, granularity="unstructured", sparsity=0.5))
        row = evaluate(result.pipeline, args.kid_samples, num_inference_steps=args.kid_steps, seed=0, metrics=("kid",))
        entry[name] = {k: row.get(k) for k in ("kid", "kid_std")}
        print(f"kid {name}: {entry[name]}", flush=True)
    entry["settings"] = {"num_samples": args.kid_samples, "num_inference_steps": args.kid_steps, "sparsity": 0.5}
    return entry


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["structure", "cost", "kid"],
                        choices=["structure", "cost", "kid", "nici-ablation"])
    parser.add_argument("--latency-repeats", type=int, default=5, help="timed forwards per round (0: skip latency)")
    parser.add_argument("--latency-rounds", type=int, default=3)
    parser.add_argument("--latency-batch", type=int, default=8)
    parser.add_argument("--criteria", nargs="+", default=["random", "magnitude", "taylor", "nici", "l1"])
    parser.add_argument("--skip-presets", action="store_true", help="cost: time only --criteria (no channel presets)")
    parser.add_argument("--paper", nargs="*", default=None, choices=["diffpruning-paper", "nici-paper"],
                        help="also time the papers' calibration presets (slow; no names: both)")
    parser.add_argument("--paper-estimate", action="store_true",
                        help="estimate the papers' presets from the measured per-pass rate without running them")
    parser.add_argument("--kid-samples", type=int, default=256)
    parser.add_argument("--kid-steps", type=int, default=50)
    parser.add_argument("--ablation-samples", type=int, default=64, help="nici-ablation: samples per KID")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    output = Path(args.output)
    results = json.loads(output.read_text()) if output.exists() else {}
    for part in args.parts:
        started = time.perf_counter()
        entry = {"structure": bench_structure, "cost": bench_cost, "kid": bench_kid,
                 "nici-ablation": bench_nici_ablation}[part](args)
        results[part] = {"result": entry, "command": " ".join([Path(sys.executable).name, *sys.argv]),
                         "machine": machine(), "seconds": time.perf_counter() - started,
                         "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2, default=str))
        print(json.dumps({part: entry}, indent=2, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
