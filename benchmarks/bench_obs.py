"""OBS-Diff benchmarks: OBS-Diff against magnitude / taylor, its cost, and fine-tuned recovery.

Parts (``--parts``, comma-separated; each writes its section of ``benchmarks/results/obs.json``):

* ``cost``      -- ``obs`` at 50% unstructured on the default model: wall time (target < 3 min
                   on the 2-core CPU) and peak memory (peak RSS of this process above the RSS
                   after loading the model; run this part alone for a clean figure).
* ``proxy``     -- the same six pruned models as ``oneshot`` measured cheaply against the dense
                   model (noise-prediction MSE on noised held-out test images at t = 50..950,
                   and sample MSE from shared initial noise): minutes instead of an hour.
* ``oneshot``   -- 50% unstructured and 2:4, no fine-tuning: FID/KID of ``obs``, ``magnitude``,
                   ``taylor`` (``--num-samples`` samples, DDIM ``--inference-steps`` steps, against
                   the shipped Fashion-MNIST test features).
* ``channel``   -- ``obs`` on conv channels at 44% parameter sparsity with and without the
                   least-squares compensation of the reading layers, and ``taylor``'s cut: KID.
* ``finetune``  -- the same fine-tuning budget (``--finetune-steps``, default 2000) for
                   ``--plans`` (default ``taylor``, ``nici`` with NiCI's distillation, ``obs``,
                   all on conv channels at 44% parameter sparsity; the default model has no FFN
                   and its heads alone cannot reach 44%), FID/KID before and after, and NiCI's
                   improvement in FID increase over Diff-Pruning:
                   ``1 - (FID_nici - FID_dense) / (FID_taylor - FID_dense)`` (paper: 30.4%).

Usage::

    .venv/bin/python benchmarks/bench_obs.py --parts cost
    .venv/bin/python benchmarks/bench_obs.py --parts proxy
    .venv/bin/python benchmarks/bench_obs.py --parts oneshot --num-samples 256
    .venv/bin/python benchmarks/bench_obs.py --parts finetune --finetune-steps 2000 --batch-size 32 --threads 1
    .venv/bin/python benchmarks/bench_obs.py --parts channel --num-samples 64

Every figure is measured by this script; nothing is copied from the papers.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "obs.json"


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _write(section: str, payload: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[section] = payload
    data.setdefault("machine", {})
    data["machine"].update(python=platform.python_version(), processor=platform.processor() or platform.machine())
    RESULTS.write_text(json.dumps(data, indent=2, sort_keys=True))
    print(json.dumps({section: payload}, indent=2))


def prune_with(pipeline, criterion: str, granularity: str, sparsity, seed: int = 0, **spec_options):
    """Prune through the engine's facade (every criterion, obs included, is registered there)."""
    from core.engine import prune
    from core.spec import PruneSpec

    spec = PruneSpec(criterion=criterion, granularity=granularity, sparsity=sparsity, seed=seed, **spec_options)
    result = prune(pipeline, spec)
    return result.pipeline, dict(result.report.totals)


def part_cost(args) -> None:
    from core.engine import prune
    from core.pipeline import load_pipeline
    from core.spec import PruneSpec

    pipeline = load_pipeline(device="cpu")
    baseline = _peak_rss_mib()
    started = time.perf_counter()
    spec = PruneSpec(criterion="obs", granularity="unstructured", sparsity=0.5, seed=args.seed,
                     calibration_batches=1, calibration_batch_size=args.obs_images)
    result = prune(pipeline, spec)  # through the facade, as every other benchmark
    wall = time.perf_counter() - started
    totals = result.report.totals
    import torch

    _write("cost", dict(
        command=" ".join(sys.argv), sparsity=0.5, granularity="unstructured", num_images=args.obs_images,
        schedule="log-decrease (25 steps)", groups=dict(spec.criterion_params)["num_groups"],
        layers=int(result.report.layers["prunable"].sum()),
        wall_time_s=round(wall, 2), calibration_s=round(totals["calibration_time_s"], 2),
        peak_rss_mib=round(_peak_rss_mib(), 1), rss_after_load_mib=round(baseline, 1),
        peak_rss_above_load_mib=round(_peak_rss_mib() - baseline, 1),
        threads=torch.get_num_threads(), target_s=180, meets_target=wall < 180,
        load_average_1_5_15_min_at_end=[round(x, 2) for x in os.getloadavg()],
        note="the 2-core CPU was shared with other jobs; wall time is inflated by the load average",
    ))


def _evaluate(pipeline, args) -> dict:
    from core.evaluate import evaluate

    row = evaluate(pipeline, args.num_samples, num_inference_steps=args.inference_steps, seed=args.seed,
                   metrics=("fid", "kid"))
    return {key: row[key] for key in ("fid", "kid", "kid_std", "num_samples", "num_inference_steps")}


def part_oneshot(args) -> None:
    from core.pipeline import load_pipeline

    pipeline = load_pipeline(device="cpu")
    rows = {"dense": _evaluate(pipeline, args)}
    for granularity, sparsity in (("unstructured", 0.5), ("2:4", None)):
        for criterion in ("obs", "magnitude", "taylor"):
            pruned, totals = prune_with(pipeline, criterion, granularity, sparsity, args.seed)
            metrics = _evaluate(pruned, args)
            rows[f"{criterion}/{granularity}"] = {**metrics, "prune_time_s": totals.get("wall_time_s"),
                                                  "sparsity": totals.get("sparsity")}
            print(criterion, granularity, rows[f"{criterion}/{granularity}"], flush=True)
    _write("oneshot", dict(command=" ".join(sys.argv), results=rows))


def _proxy_metrics(pruned, dense, args) -> dict:
    """Cheap distance of a pruned model from its dense teacher (no FID network needed):
    the MSE of the noise predictions on noised held-out test images at five timesteps, and the
    MSE between pruned and dense DDIM samples drawn from the same initial noise."""
    import torch

    from core.data import REFERENCE_IMAGES, load_image_set
    from core.pipeline import sample_images

    images = load_image_set(REFERENCE_IMAGES)[: args.proxy_images]
    generator = torch.Generator().manual_seed(args.seed + 7)
    noise = torch.randn(images.shape, generator=generator)
    errors = {}
    with torch.no_grad():
        for t in (50, 250, 500, 750, 950):
            timesteps = torch.full((images.shape[0],), t, dtype=torch.long)
            noisy = dense.scheduler.add_noise(images, noise, timesteps)
            errors[t] = float((pruned.unet(noisy, timesteps).sample - dense.unet(noisy, timesteps).sample).pow(2).mean())
    samples = sample_images(pruned, args.proxy_samples, num_inference_steps=25, seed=args.seed)
    reference = sample_images(dense, args.proxy_samples, num_inference_steps=25, seed=args.seed)
    return {"eps_mse_vs_dense_by_t": errors, "eps_mse_vs_dense_mean": sum(errors.values()) / len(errors),
            "sample_mse_vs_dense": float((samples - reference).pow(2).mean())}


def part_channel(args) -> None:
    """obs on conv channels at 44% parameter sparsity, with and without the least-squares
    compensation of the reading layers (same cut), against taylor's channel cut: KID, no fine-tuning."""
    from core.criteria import obs  # engine_reconstruct looks obs_channel_scores up here
    from core.engine import prune
    from core.pipeline import load_pipeline
    from core.spec import PruneSpec

    pipeline = load_pipeline(device="cpu")
    rows = {}
    original = obs.obs_channel_scores

    def without_compensation(*a, **k):
        scores, weights = original(*a, **k)
        scores.compensate = None
        return scores, weights

    for label, criterion, patch in (("obs", "obs", None), ("obs without compensation", "obs", without_compensation),
                                    ("taylor", "taylor", None)):
        obs.obs_channel_scores = patch or original
        try:
            result = prune(pipeline, PruneSpec(criterion=criterion, granularity="channel", sparsity=0.44, seed=args.seed))
        finally:
            obs.obs_channel_scores = original
        totals = result.report.totals
        rows[label] = {**_evaluate(result.pipeline, args), "sparsity": totals["sparsity"],
                       "params_ratio": totals["params_ratio"], "macs_ratio": totals["macs_ratio"],
                       "prune_time_s": totals["wall_time_s"]}
        print(label, rows[label], flush=True)
    _write("channel", dict(command=" ".join(sys.argv), results=rows))


def part_proxy(args) -> None:
    from core.pipeline import load_pipeline

    pipeline = load_pipeline(device="cpu")
    previous = json.loads(RESULTS.read_text()).get("proxy", {}) if RESULTS.exists() else {}
    rows = dict(previous.get("results", {}))  # rows of earlier runs are kept; each row says how it was made
    for granularity in args.granularities.split(","):
        sparsity = 0.5 if granularity == "unstructured" else None
        for criterion in args.criteria.split(","):
            extra = {}
            if criterion == "taylor" and args.taylor_max_timesteps:
                extra = {"schedule_params": {"max_timesteps": args.taylor_max_timesteps}}
            pruned, totals = prune_with(pipeline, criterion, granularity, sparsity, args.seed, **extra)
            rows[f"{criterion}/{granularity}"] = {**_proxy_metrics(pruned, pipeline, args),
                                                  "prune_time_s": totals.get("wall_time_s"),
                                                  "sparsity": totals.get("sparsity"), "command": " ".join(sys.argv),
                                                  "load_average_1_min": round(os.getloadavg()[0], 2), **extra}
            print(criterion, granularity, rows[f"{criterion}/{granularity}"], flush=True)
            _write("proxy", dict(proxy_images=args.proxy_images, proxy_samples=args.proxy_samples, results=rows))


def part_finetune(args) -> None:
    """Rows of earlier runs are kept (each says how it was made), so the plans can run apart."""
    from core.finetune import finetune
    from core.pipeline import load_pipeline

    plans = []  # (label, criterion, granularity, distill), checked before anything runs
    for plan in args.plans.split(","):
        criterion, granularity, *recipe = plan.split("/")
        if recipe not in ([], ["kd"], ["nokd"]):
            raise SystemExit(f"--plans: {plan!r} must be criterion/granularity with an optional /kd or /nokd")
        # NiCI's recipe: noise loss + KD from the dense teacher; "/kd" or "/nokd" swaps it
        plans.append((plan, criterion, granularity, recipe == ["kd"] if recipe else criterion == "nici"))
    pipeline = load_pipeline(device=args.device)
    settings = dict(steps=args.finetune_steps, lr=args.lr, batch_size=args.batch_size, ema=args.ema,
                    num_samples=args.num_samples, inference_steps=args.inference_steps, seed=args.seed)

    def stored_rows() -> dict:
        """Rows already in the results file for the same budget (another budget: not comparable).
        Read again before every write: another run may have added rows since this one started."""
        previous = json.loads(RESULTS.read_text()).get("finetune", {}) if RESULTS.exists() else {}
        return dict(previous.get("results", {})) if previous.get("settings") == settings else {}

    rows = stored_rows()
    if "dense" not in rows:
        rows["dense"] = _evaluate(pipeline, args)
    for plan, criterion, granularity, distill in plans:
        try:
            pruned, totals = prune_with(pipeline, criterion, granularity, 0.44, args.seed)
        except ValueError as error:  # e.g. 44% is out of reach by removing attention heads only
            rows = {**stored_rows(), **rows, plan: {"refused": str(error)}}
            _write("finetune", dict(settings=settings, results=rows))
            continue
        before = _evaluate(pruned, args)
        started = time.perf_counter()
        tuned = finetune(pruned, args.finetune_steps, args.lr, args.batch_size, ema=args.ema,
                         distill=pipeline if distill else False, seed=args.seed,
                         output_dir=ROOT / "runs" / "bench_obs" / plan.replace("/", "-"),
                         checkpoint_every=max(1, args.finetune_steps // 4))
        finetune_wall = time.perf_counter() - started
        after = _evaluate(tuned.pipeline, args)
        rows = {**stored_rows(), **rows}
        rows[plan] = {
            "before_finetune": before, "after_finetune": after, "sparsity": totals.get("sparsity"),
            "params_ratio": totals.get("params_ratio"), "macs_ratio": totals.get("macs_ratio"),
            "prune_time_s": totals.get("wall_time_s"), "distill": distill,
            "finetune_time_s": round(finetune_wall, 1), "final_loss": float(tuned.losses["loss"].tail(100).mean()) if len(tuned.losses) else None,
            "command": " ".join(sys.argv), "threads": _threads(),
        }
        print(plan, rows[plan], flush=True)
        _write("finetune", dict(settings=settings, results=rows, **_improvement(rows)))


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _improvement(rows: dict) -> dict:
    """NiCI's claim: its FID increase over the dense model is 30.4% smaller than Diff-Pruning's."""
    taylor, nici, dense = rows.get("taylor/channel"), rows.get("nici/channel"), rows.get("dense")
    if not (taylor and nici and "after_finetune" in taylor and "after_finetune" in nici):
        return {}
    increase_taylor = taylor["after_finetune"]["fid"] - dense["fid"]
    increase_nici = nici["after_finetune"]["fid"] - dense["fid"]
    extra = {}
    ablation = rows.get("nici/channel/nokd")  # NiCI's importance with Diff-Pruning's fine-tuning (no KD)
    if ablation and "after_finetune" in ablation and increase_taylor:
        increase = ablation["after_finetune"]["fid"] - dense["fid"]
        extra = dict(fid_increase_nici_without_distillation=increase,
                     nici_without_distillation_improvement_in_fid_increase=1 - increase / increase_taylor)
    return dict(fid_increase_taylor=increase_taylor, fid_increase_nici=increase_nici,
                nici_improvement_in_fid_increase=1 - increase_nici / increase_taylor if increase_taylor else None,
                paper_claim=0.304, **extra)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="cost", help="comma-separated: cost, proxy, oneshot, finetune, channel")
    parser.add_argument("--criteria", default="obs,magnitude,taylor", help="proxy: criteria to compare")
    parser.add_argument("--granularities", default="unstructured,2:4", help="proxy: granularities")
    parser.add_argument("--taylor-max-timesteps", type=int, default=None,
                        help="proxy: cap taylor's threshold walk (None: the engine's default, uncapped)")
    parser.add_argument("--proxy-images", type=int, default=64, help="proxy: held-out images for the eps MSE")
    parser.add_argument("--proxy-samples", type=int, default=16, help="proxy: DDIM samples compared with dense")
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--inference-steps", type=int, default=50)
    parser.add_argument("--obs-images", type=int, default=4, help="calibration trajectories for obs")
    parser.add_argument("--finetune-steps", type=int, default=2000)
    parser.add_argument("--plans", default="taylor/channel,nici/channel,obs/channel",
                        help="finetune: criterion/granularity pairs pruned to 44%% parameter sparsity; a third "
                             "part /kd or /nokd turns the distillation on or off (default: on for nici only)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default=None, help="JSON file the parts are merged into (default: "
                        "benchmarks/results/obs.json; use another file for smoke runs)")
    args = parser.parse_args(argv)
    if args.results:
        globals()["RESULTS"] = Path(args.results)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    parts = {"cost": part_cost, "proxy": part_proxy, "oneshot": part_oneshot, "finetune": part_finetune,
             "channel": part_channel}
    for name in args.parts.split(","):
        if name not in parts:
            raise SystemExit(f"unknown part {name!r}; choose from {sorted(parts)}")
        parts[name](args)


if __name__ == "__main__":
    main()
