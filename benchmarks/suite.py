"""The benchmark suite: every criterion on one model, at the same budget, measured in one run.

    python benchmarks/suite.py --mode quick     # this 2-core CPU, < 30 min (stated sample counts)
    python benchmarks/suite.py --mode full      # a GPU: 1,000 samples, papers' calibration sizes

Rows: every registered criterion x (channel 30/50/70 %, unstructured 50/70 %, 2:4) that the
criterion supports, each without fine-tuning and (all rows in full mode; channel 50 % and 2:4 in
quick mode) after a fixed fine-tuning budget. Each row: parameters, MACs, non-zero weights,
measured latency speed-up against the dense model timed in the same process, FID and KID with
the sample count, pruning wall time and peak memory. Calibration statistics are shared between
the rows of one criterion (the engine reuses them; a row's ``calibration_cached`` says so).

Outputs: ``assets/results/benchmarks.csv`` (read by the app's charts), ``BENCHMARKS.md`` (table,
hardware, versions, command) and two PNG plots under ``assets/results/``. Finished rows are kept
in ``<out-dir>/suite_rows.jsonl`` so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import CRITERIA, PruneSpec, evaluate, load_pipeline, prune, sample_images  # noqa: E402
from core.data import CALIBRATION_IMAGES, load_image_set  # noqa: E402
from core.granularities import parse_granularity  # noqa: E402
from core.run import EvaluationSettings, RecoverySettings, TimingSettings, run as run_workflow  # noqa: E402

SETTINGS = (("channel", 0.3), ("channel", 0.5), ("channel", 0.7), ("unstructured", 0.5), ("unstructured", 0.7),
            ("2:4", None))
MODES = {
    # CPU-sized: small evaluation, every criterion's default (CPU-scaled) calibration.
    "quick": dict(num_samples=48, steps=10, finetune_steps=40, finetune_batch=16,
                  finetune_settings=(("channel", 0.5), ("2:4", None)), calibration={}),
    # GPU: 1,000 samples against the 1,000 test images, the papers' calibration batch sizes.
    "full": dict(num_samples=1000, steps=50, finetune_steps=2000, finetune_batch=64, finetune_settings=SETTINGS,
                 calibration={"taylor": dict(calibration_batch_size=128), "nici": dict(calibration_batch_size=128,
                                                                                          calibration_batches=10),
                              "l1": dict(calibration_batch_size=64), "gradflow": dict(calibration_batch_size=64),
                              "obs": dict(calibration_batch_size=16)}),
}
FINETUNE_LR = 2e-4  # Diff-Pruning's fine-tuning learning rate
GENERATED_FINETUNE_IMAGES = 256
METRICS = ("fid", "kid", "latency", "macs")


def finetune_images(dense, mode, seed):
    """The shipped Fashion-MNIST training images for the default model; for a model of another
    shape (no dataset), the dense model's own samples (data-free recovery from the teacher)."""
    images = load_image_set(CALIBRATION_IMAGES)
    config = dense.unet.config
    if tuple(images.shape[1:]) == (config.in_channels, config.sample_size, config.sample_size):
        return images
    return sample_images(dense, GENERATED_FINETUNE_IMAGES, mode["steps"], seed + 1)


class PeakMemory:
    """Peak resident memory (CPU, sampled every 20 ms) or peak allocated CUDA memory during a block."""

    def __init__(self, device: torch.device):
        self.device, self.peak, self._stop = device, 0, threading.Event()

    def _rss(self) -> int:
        import psutil

        return psutil.Process().memory_info().rss

    def _watch(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak = self._rss()
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """End the watch here (the block's later work is not counted); once only."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._thread.join()
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self.stop()
        return False

    @property
    def mib(self) -> float:
        return round(self.peak / 2**20, 1)


def row_id(criterion: str, granularity: str, sparsity, finetune_steps: int) -> str:
    return f"{criterion}|{granularity}|{sparsity}|ft{finetune_steps}"


def build_specs(mode: dict, criteria, seed: int, device: str) -> list[PruneSpec]:
    specs = []
    for criterion in criteria:
        supported = CRITERIA[criterion].granularities
        for granularity, sparsity in SETTINGS:
            name, _ = parse_granularity(granularity)
            if name not in supported:
                continue
            overrides = mode["calibration"].get(criterion, {}) if CRITERIA[criterion].needs_calibration else {}
            specs.append(PruneSpec(criterion=criterion, granularity=granularity, sparsity=sparsity, seed=seed,
                                   device=device, **overrides))
    return specs


def evaluation_settings(mode, reference, seed, stage: str) -> EvaluationSettings:
    """Every row's evaluation (``core.run``): FID, KID, paired sampler latency and MACs of ``stage`` only."""
    return EvaluationSettings(num_samples=mode["num_samples"], steps=mode["steps"], seed=seed, metrics=METRICS,
                              reference=reference, grid_images=0, stages=(stage,))


def run_row(dense, spec, pruned, evaluation, **options):
    """``core.run.run`` of a held prune result, untimed (the evaluation times the sampler); a failed part raises."""
    outcome = run_workflow(dense, spec, pruned=pruned, evaluation=evaluation, timing=TimingSettings(enabled=False),
                           **options)
    for error in outcome.errors.values():
        raise error
    return outcome


def measure_row(metrics, spec, mode, reference, finetune_steps, prune_totals, prune_seconds, peak_mib) -> dict:
    return dict(
        criterion=spec.criterion if spec else "dense", granularity=spec.granularity if spec else "",
        sparsity=spec.sparsity if spec else 0.0, finetune_steps=finetune_steps,
        measured_sparsity=prune_totals.get("sparsity", 0.0), schedule=spec.schedule if spec else None,
        calibration_images=prune_totals.get("calibration_images"),
        calibration_cached=prune_totals.get("calibration_cached"),
        params=metrics["params"], macs=metrics["macs"], nonzero_params=metrics["nonzero_params"],
        latency_median_s_per_image=metrics["latency_median_s_per_image"], speedup=metrics["speedup"],
        fid=metrics["fid"], kid=metrics["kid"], kid_std=metrics["kid_std"], num_samples=metrics["num_samples"],
        num_inference_steps=mode["steps"], reference=str(reference), prune_wall_time_s=round(prune_seconds, 2),
        peak_memory_mib=peak_mib, spec_json=spec.to_json() if spec else "",
    )


def run(args) -> pd.DataFrame:
    mode = dict(MODES[args.mode])
    if args.num_samples:
        mode["num_samples"] = args.num_samples
    if args.finetune_steps is not None:
        mode["finetune_steps"] = args.finetune_steps
    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows_file = out_dir / f"suite_rows_{args.mode}.jsonl"
    done = {}
    if rows_file.exists() and not args.restart:
        for line in rows_file.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done[row["row_id"]] = row
    log = (lambda message: print(message, flush=True))
    dense = load_pipeline(args.model, device=args.device)
    device = dense.unet.device
    reference = args.reference or ("fashion-mnist-test" if args.model in (None, "default") else "dense")
    criteria = args.criteria.split(",") if args.criteria else list(CRITERIA)
    unknown = sorted(set(criteria) - set(CRITERIA))
    if unknown:
        raise SystemExit(f"suite: error: --criteria must be in {sorted(CRITERIA)}, got {unknown}")
    specs = build_specs(mode, criteria, args.seed, str(device))
    started = time.perf_counter()
    tuning_images = None

    def record(row: dict) -> None:
        done[row["row_id"]] = row
        with rows_file.open("a") as handle:
            handle.write(json.dumps(row) + "\n")

    if "dense" not in done:
        with PeakMemory(device) as peak:
            pass
        log("  evaluating dense")
        # The dense row has no spec to run: evaluated directly with the rows' settings.
        metrics = evaluate(dense, num_samples=mode["num_samples"], num_inference_steps=mode["steps"], seed=args.seed,
                           metrics=METRICS, reference=reference, dense_pipeline=dense)
        record({**measure_row(metrics, None, mode, reference, 0, {}, 0.0, peak.mib), "row_id": "dense"})
    for index, spec in enumerate(specs):
        base_id = row_id(spec.criterion, spec.granularity, spec.sparsity, 0)
        setting = (spec.granularity, None if ":" in spec.granularity else spec.sparsity)  # N:M implies sparsity
        wants_finetune = mode["finetune_steps"] > 0 and setting in mode["finetune_settings"]
        ft_id = row_id(spec.criterion, spec.granularity, spec.sparsity, mode["finetune_steps"])
        if base_id in done and (not wants_finetune or ft_id in done):
            continue
        log(f"[{index + 1}/{len(specs)}] {spec.label} ({time.perf_counter() - started:.0f} s elapsed)")
        with PeakMemory(device) as peak:  # pruned under its own watch, then handed to core.run
            t0 = time.perf_counter()
            result = prune(dense, spec)
            prune_seconds = time.perf_counter() - t0
        totals = result.report.totals
        if base_id not in done:
            log(f"  evaluating {spec.label}")
            outcome = run_row(dense, spec, result, evaluation_settings(mode, reference, args.seed, "one-shot"))
            record({**measure_row(outcome.evaluations["one-shot"], spec, mode, reference, 0, totals, prune_seconds,
                                  peak.mib), "row_id": base_id})
        if wants_finetune and ft_id not in done:
            log(f"  fine-tuning {mode['finetune_steps']} steps, evaluating {spec.label} + fine-tune")
            if tuning_images is None:
                tuning_images = finetune_images(dense, mode, args.seed)
            recovery = RecoverySettings(steps=mode["finetune_steps"], lr=FINETUNE_LR, batch_size=mode["finetune_batch"])
            with PeakMemory(device) as ft_peak:
                # run reports its recovery as "recovery..." messages: the watch ends at the first other
                # one (the evaluation), so the peak stays that of pruning and fine-tuning.
                outcome = run_row(dense, spec, result, evaluation_settings(mode, reference, args.seed, "recovered"),
                                  recovery=recovery, recovery_data=(tuning_images, None, "suite fine-tuning images"),
                                  progress=lambda fraction, message: message.startswith("recovery") or ft_peak.stop())
            row = measure_row(outcome.evaluations["recovered"], spec, mode, reference, mode["finetune_steps"], totals,
                              prune_seconds, max(peak.mib, ft_peak.mib))
            record({**row, "finetune_wall_time_s": round(outcome.recovered.wall_time_s, 2), "row_id": ft_id})
    table = pd.DataFrame([done[key] for key in ["dense"] + [k for k in done if k != "dense"]])
    log(f"suite finished in {time.perf_counter() - started:.0f} s this run")
    return table


def merge_rows(table: pd.DataFrame, args) -> pd.DataFrame:
    """``--merge``: this run's rows of ``--criteria`` replace that file's rows of the same criteria;
    the rest of the published table (its dense row included) is kept as it was measured."""
    previous = pd.read_csv(args.csv)
    criteria = set(table["criterion"]) - {"dense"}
    kept = previous[~previous["criterion"].isin(criteria)]
    fresh = table[table["criterion"].isin(criteria)].assign(source="benchmark", mode=args.mode)
    merged = pd.concat([kept, fresh], ignore_index=True)
    order = {name: index for index, name in enumerate(["dense", *CRITERIA])}
    merged = merged.sort_values("criterion", key=lambda c: c.map(order), kind="stable").reset_index(drop=True)
    dense_now = table[table["criterion"] == "dense"]
    args.merge_note = (
        f"Rows of {', '.join(sorted(criteria))} re-measured on {dt.date.today().isoformat()} by "
        f"`{args.command}` and merged into the earlier table "
        f"(the other rows and the dense row are from the earlier run; this run's dense KID: "
        f"{float(dense_now['kid'].iloc[0]):.4f})." if len(dense_now) else "")
    return merged


def write_outputs(table: pd.DataFrame, args) -> None:
    csv_path = Path(args.csv)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    if getattr(args, "merge", False) and csv_path.exists():
        table = merge_rows(table, args)
    table = table.assign(source="benchmark", mode=args.mode)
    table.to_csv(csv_path, index=False)
    plots = write_plots(table, csv_path.parent)
    write_markdown(table, args, plots)
    print(f"wrote {csv_path}, {args.markdown} and {', '.join(str(p) for p in plots)}")


def write_plots(table: pd.DataFrame, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quality = "kid"
    rows = table[table["criterion"] != "dense"]
    dense = table[table["criterion"] == "dense"].iloc[0]
    palette = plt.get_cmap("tab10")
    colours = {name: palette(index % 10) for index, name in enumerate(sorted(set(rows["criterion"])))}
    paths = []
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=True)
    for axis, granularity in zip(axes, ("channel", "unstructured", "2:4")):
        part = rows[(rows["granularity"] == granularity) & (rows["finetune_steps"] == 0)]
        for criterion, group in part.groupby("criterion"):
            group = group.sort_values("measured_sparsity")
            axis.errorbar(group["measured_sparsity"], group[quality], yerr=group["kid_std"], marker="o", capsize=3,
                          label=criterion, color=colours[criterion])
        axis.axhline(dense[quality], color="black", linestyle="--", linewidth=1, label="dense")
        axis.set_title(f"{granularity} (no fine-tuning)")
        axis.set_xlabel("measured sparsity (prunable params removed)")
    axes[0].set_ylabel(f"KID (n={int(dense['num_samples'])}, lower is better)")
    handles = {label: handle for axis in axes for handle, label in zip(*axis.get_legend_handles_labels())}
    figure.legend(handles.values(), handles.keys(), loc="center right", fontsize=8)
    figure.tight_layout(rect=(0, 0, 0.9, 1))
    paths.append(folder / "quality_vs_sparsity.png")
    figure.savefig(paths[-1], dpi=110)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(8, 5))
    for (criterion, tuned), group in rows.groupby(["criterion", rows["finetune_steps"] > 0]):
        axis.scatter(group["latency_median_s_per_image"] * 1000, group[quality], marker="^" if tuned else "o",
                     label=f"{criterion}{' + ft' if tuned else ''}", s=36, color=colours[criterion])
    axis.scatter([dense["latency_median_s_per_image"] * 1000], [dense[quality]], marker="*", s=200, color="black",
                 label="dense")
    axis.set_xlabel("measured latency per image (ms, median)")
    axis.set_ylabel("KID (lower is better)")
    axis.set_title("Quality vs measured latency (lower-left is better)")
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    paths.append(folder / "quality_vs_latency.png")
    figure.savefig(paths[-1], dpi=110)
    plt.close(figure)
    return paths


def _fmt(value, pattern):
    return "" if value is None or (isinstance(value, float) and pd.isna(value)) else pattern.format(value)


def write_markdown(table: pd.DataFrame, args, plots) -> None:
    import diffusers
    import torch_pruning

    mode = MODES[args.mode]
    dense = table[table["criterion"] == "dense"].iloc[0]
    generated = (f"Generated by `{getattr(args, 'command', 'python benchmarks/suite.py')}` on "
                 f"{dt.date.today().isoformat()}.")
    if getattr(args, "merge_note", "") and Path(args.markdown).exists():  # the earlier run's line stays
        earlier = [line for line in Path(args.markdown).read_text().splitlines() if line.startswith("Generated by")]
        generated = earlier[0] if earlier else generated
    lines = [
        "# Benchmarks", "",
        generated, "",
        f"- Hardware: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"{torch.get_num_threads()} torch threads, "
        f"{'GPU ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}.",
        f"- Versions: Python {platform.python_version()}, torch {torch.__version__}, diffusers {diffusers.__version__}, "
        f"torch-pruning {torch_pruning.__version__}.",
        f"- Model: {args.model or 'the embedded default DDPM (Fashion-MNIST)'}; quality against "
        f"{dense['reference']}; {int(dense['num_samples'])} samples per row, DDIM {int(dense['num_inference_steps'])} "
        "steps, same seed for every row. With so few samples FID is strongly biased upwards: compare KID "
        "(± its std over subsets), and read FID only as a ranking." if args.mode == "quick" else
        f"- Model: {args.model or 'the embedded default DDPM'}; {int(dense['num_samples'])} samples per row.",
        f"- Fine-tuning budget: {mode['finetune_steps']} steps, batch {mode['finetune_batch']}, lr {FINETUNE_LR} "
        f"(rows with `ft` > 0).",
        "- Speed-up = dense median latency / pruned median latency, both timed in the same process "
        "(batch 8); masked (unstructured, N:M) models run dense kernels, so their speed-up is ~1.",
        "- The dense row's speed-up is the dense model timed against itself: it shows the timing noise.",
        "- `prune s` is the wall time of `prune()`. The first row of a calibrated criterion pays its calibration; "
        "the other rows of that criterion reuse it (`calibration_cached` in the CSV), except `obs` and `gradflow`, "
        "which calibrate per row.",
        "- Peak memory: the highest resident set size of the whole benchmark process while the row was pruned (and "
        "fine-tuned), MiB. It includes the Inception network and what earlier rows left allocated, so it is an upper "
        "bound for the row, not its own footprint.", "",
        "| criterion | granularity | target | measured sparsity | ft steps | params | MACs | non-zero | speed-up | "
        "KID ± std | FID | prune s | peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join([
            str(row["criterion"]), str(row["granularity"] or "-"), _fmt(row["sparsity"], "{:.2f}"),
            _fmt(row["measured_sparsity"], "{:.3f}"), str(int(row["finetune_steps"])),
            _fmt(row["params"], "{:,.0f}"), _fmt(row["macs"], "{:,.0f}"), _fmt(row["nonzero_params"], "{:,.0f}"),
            _fmt(row["speedup"], "{:.2f}x"), f"{_fmt(row['kid'], '{:.4f}')} ± {_fmt(row['kid_std'], '{:.4f}')}",
            _fmt(row["fid"], "{:.1f}"), _fmt(row["prune_wall_time_s"], "{:.1f}"),
            _fmt(row["peak_memory_mib"], "{:.0f}"),
        ]) + " |")
    if getattr(args, "merge_note", ""):
        lines.insert(lines.index("| criterion | granularity | target | measured sparsity | ft steps | params | MACs | non-zero | speed-up | "
                                 "KID ± std | FID | prune s | peak MiB |"), f"- {args.merge_note}\n")
    folder = Path(args.markdown).resolve().parent
    lines += ["", *[f"![{p.stem}]({os.path.relpath(p.resolve(), folder)})" for p in plots], ""]
    if Path(args.markdown).resolve() == (ROOT / "BENCHMARKS.md").resolve():  # the project's published table only
        lines += dit_section() + frontier_section()
    Path(args.markdown).write_text("\n".join(lines))


def dit_section() -> list:
    """The embedded DiT's rows (``benchmarks/bench_dit.py``, measured separately), kept in the table."""
    from benchmarks import bench_dit

    if not bench_dit.RESULTS.exists():
        return []
    return ["## Embedded latent DiT (`benchmarks/bench_dit.py`, one-shot and after 40 fine-tuning steps; commands and "
            "reading in [docs/benchmarks.md](docs/benchmarks.md#the-embedded-dit-every-criterion-at-every-granularity))",
            "", bench_dit.table(), ""]


def frontier_section() -> list:
    """The frontier benchmark's verdict per model and sampler (``benchmarks/bench_frontier.py``,
    measured separately): one sentence each, and where its tables are."""
    from benchmarks import bench_frontier, frontier_verdict

    rows = bench_frontier.read_rows(bench_frontier.RESULTS)
    if not rows:
        return []
    table = frontier_verdict.frame(rows)
    sentences = [f"- {frontier_verdict.verdict_sentence(group, model, scheduler)}"
                 for (model, scheduler), group in table.groupby(["model", "scheduler"], sort=False)]
    return ["## Dense frontier vs pruned + recovered (`benchmarks/bench_frontier.py`)", "",
            "Pruned + recovered models against the dense model sampled with fewer steps, at equal measured latency "
            "(256 samples per row; a win must beat the dense frontier by more than two standard deviations of FID). "
            "Every row, latency budget and recovery budget curve: [docs/frontier-tables.md](docs/frontier-tables.md) "
            "(`python benchmarks/bench_frontier.py --table --markdown docs/frontier-tables.md`); the reading: "
            "[docs/benchmarks.md](docs/benchmarks.md#is-pruning-worth-it-the-dense-frontier).", "", *sentences, ""]


OUTPUT_OPTIONS = ("--out-dir", "--csv", "--markdown")


def recorded_command(argv) -> str:
    """The command as the published table records it. Paths inside the repository are written
    relative to it; an output location outside it (``--out-dir``, ``--csv``, ``--markdown`` choose
    where files go, not what is measured) is left out, so no machine's local paths are published."""
    def inside(value: str):
        path = Path(value)
        if not path.is_absolute():
            return value
        try:
            return str(path.resolve().relative_to(ROOT))
        except ValueError:
            return None

    argv, words, index = list(argv), [], 0
    while index < len(argv):
        name, equals, value = argv[index].partition("=")
        if name in OUTPUT_OPTIONS:
            if not equals:
                value = argv[index + 1] if index + 1 < len(argv) else ""
                index += 1
            index += 1
            kept = inside(value)
            if kept is not None:
                words += [name, kept]
            continue
        words.append(inside(argv[index]) or argv[index])
        index += 1
    return " ".join(["python", "benchmarks/suite.py", *words])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=sorted(MODES), default="quick")
    parser.add_argument("--model", default=None, help="pipeline dir or hub id (default: embedded default model)")
    parser.add_argument("--criteria", default=None, help=f"comma list (default: all of {list(CRITERIA)})")
    parser.add_argument("--reference", default=None)
    parser.add_argument("--num-samples", type=int, default=None)
    parser.add_argument("--finetune-steps", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--csv", default=str(ROOT / "assets" / "results" / "benchmarks.csv"))
    parser.add_argument("--markdown", default=str(ROOT / "BENCHMARKS.md"))
    parser.add_argument("--restart", action="store_true", help="ignore finished rows of an earlier run")
    parser.add_argument("--merge", action="store_true",
                        help="replace only the --criteria rows of the existing --csv (the rest of the table is kept)")
    args = parser.parse_args(argv)
    args.command = recorded_command(sys.argv[1:] if argv is None else argv)
    table = run(args)
    write_outputs(table, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
