"""Pruning at the sizes users prune, measured: memory and time of ``prune`` on billion-parameter-class
denoisers (SD 1.5 UNet, PixArt-alpha XL-2-1024-MS, DiT-XL/2-256, SD3-medium, SD3.5-Large) with random
fp16 weights built from their published configs (``benchmarks/scale_models.py``; no download).

What is measured, per row (one fresh Python process per row):

* ``load_pipeline(path, device=...)`` with nothing else passed; the dtype the denoiser arrives in is
  recorded (``dtype_loaded``), never converted here; the pruned denoiser's dtype too.
* the extra peak memory of ``prune`` above what was held before it: on the CPU the peak resident set
  during ``prune`` minus the resident set before (every page of the loaded weights read first, so
  that memory-mapped safetensors count in the baseline; the kernel's high-water mark ``VmHWM`` reset through
  ``/proc/self/clear_refs``; where that reset does not work, a thread sampling the resident set every
  5 ms; ``memory_method`` says which); on CUDA ``torch.cuda.max_memory_allocated()`` after
  ``reset_peak_memory_stats()`` minus ``memory_allocated()`` before (plus the host's resident-set
  peak in ``host_extra_peak_bytes``).
* ``ratio`` = extra peak / the denoiser's bytes as loaded (parameters + buffers); ``ratio_fp16`` =
  extra peak / the denoiser's fp16 bytes as built. **Text encoders, tokenizers and the VAE are tiny
  stand-ins**: the ratio's denominator is the denoiser's bytes only, and what is measured is what
  pruning the denoiser costs.
* wall time of ``prune`` and seconds per billion denoiser parameters.

Calibration is cut to what fits on a CPU: 1 batch of 1 image, a ``custom`` schedule of two timesteps
(t = 750 and 250, weight 1), calibration images from a folder of two random images at the model's
pixel size (64 x 64: the tiny VAE maps them to the 32 x 32 latents the benchmark configs use), so no
criterion samples the dense model for its data (``obs`` walks its own two-step trajectory from noise);
``gradflow`` runs 1 iteration; ``obs`` keeps its default groups, block size and damping.

Plans: ``--plan cpu`` (SD 1.5 and PixArt-alpha: every criterion at unstructured 50 %, and magnitude
at every granularity of the family); ``--plan gpu`` (adds DiT-XL/2 and SD3-medium, with
``--include-large`` SD3.5-Large: every criterion x every granularity of the family). Rows are
appended to ``benchmarks/results/scale.jsonl``; a rerun skips rows already done ``ok`` (``--force``
reruns them). A failed or timed-out row is recorded with its error and the plan goes on.

Usage::

    .venv/bin/python benchmarks/bench_scale.py --check-configs          # parameter counts vs published
    .venv/bin/python benchmarks/bench_scale.py --plan cpu --dry-run     # the rows it would run
    nice -n 10 .venv/bin/python benchmarks/bench_scale.py --plan cpu --timeout 7200
    .venv/bin/python benchmarks/bench_scale.py --families sd15 --criteria magnitude --granularities unstructured
    .venv/bin/python benchmarks/bench_scale.py --plan gpu --device cuda --include-large   # a GPU host
    .venv/bin/python benchmarks/bench_scale.py --table                  # the tables from the results file
    .venv/bin/python benchmarks/bench_scale.py --tiny --families sd15   # tiny configs, end to end in seconds
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import scale_models  # noqa: E402
from benchmarks.rows import append_row, read_rows  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "scale.jsonl"
CACHE = ROOT / "runs" / "scale-models"
TINY_RESULTS = ROOT / "runs" / "scale-tiny" / "scale.jsonl"
TINY_CACHE = ROOT / "runs" / "scale-tiny" / "models"

CRITERIA = ("random", "magnitude", "taylor", "nici", "l1", "gradflow", "obs")
UNET_GRANULARITIES = ("unstructured", "2:4", "channel")
TRANSFORMER_GRANULARITIES = ("unstructured", "2:4", "head", "ffn", "block")
# The amount each granularity prunes (spec keywords): unstructured 50 %; N:M its own 50 %; channel and
# head by the structural ratio directly (the sparsity search traces the model once per candidate);
# ffn and block by a parameter sparsity they can reach on these models.
AMOUNTS = {
    "unstructured": dict(sparsity=0.5),
    "2:4": dict(sparsity=None),
    "channel": dict(sparsity=None, channel_ratio=0.25),
    "head": dict(sparsity=None, channel_ratio=0.25),
    "ffn": dict(sparsity=0.2),
    "block": dict(sparsity=0.25),
}
CALIBRATION_TIMESTEPS = [[750, 1.0], [250, 1.0]]
GRADIENT_CRITERIA = ("taylor", "nici", "l1", "gradflow")
UNSUPPORTED = {("obs", "block")}  # OBS-Diff removes heads and neurons, not whole blocks (refused by the engine)
BUDGETS_GIB = (16, 24, 80)
GIB = 1024 ** 3

ROW_FIELDS = (
    "key", "family", "label", "hub_id", "criterion", "granularity", "sparsity", "channel_ratio", "achieved_sparsity",
    "params", "params_published", "dtype_built", "dtype_loaded", "dtype_pruned", "denoiser_bytes", "denoiser_bytes_fp16",
    "pipeline_bytes", "baseline_bytes", "extra_peak_bytes", "ratio", "ratio_fp16", "prune_s", "s_per_billion_params",
    "calibration_s", "memory_method", "device", "device_name", "torch", "threads", "status", "date", "tiny",
)


# ---------------------------------------------------------------------------------------------- plan
def family_granularities(family: str) -> tuple:
    return UNET_GRANULARITIES if scale_models.FAMILIES[family]["denoiser_attribute"] == "unet" else TRANSFORMER_GRANULARITIES


def amount_label(granularity: str) -> str:
    amount = AMOUNTS[granularity]
    if amount.get("channel_ratio") is not None:
        return f"ratio{amount['channel_ratio']:g}"
    return "nm" if amount.get("sparsity") is None else f"s{amount['sparsity']:g}"


def row_key(family: str, criterion: str, granularity: str, device_kind: str, tiny: bool = False,
            load_dtype: str = "auto") -> str:
    parts = [family + ("-tiny" if tiny else ""), criterion, granularity, amount_label(granularity), device_kind]
    return "/".join(parts + ([f"as-{load_dtype}"] if load_dtype != "auto" else []))


def plan_rows(plan: str, families=None, criteria=None, granularities=None, include_large: bool = False) -> list[tuple]:
    """``[(family, criterion, granularity)]`` of a plan, filtered by the given subsets."""
    if plan == "cpu":
        chosen = ["sd15", "pixart-alpha"]
    else:
        chosen = ["sd15", "pixart-alpha", "dit-xl-2", "sd3-medium"] + (["sd35-large"] if include_large else [])
    if families:
        chosen = [f for f in families if f in scale_models.FAMILIES]
    chosen = [f for f in chosen if include_large or not scale_models.FAMILIES[f].get("large")]  # --include-large only
    rows = []
    for family in chosen:
        allowed = family_granularities(family)
        for criterion in CRITERIA:
            if plan == "cpu" and not (criteria or granularities):  # subsets pick from the family's whole grid
                pairs = [(criterion, "unstructured")] + ([(criterion, g) for g in allowed if g != "unstructured"]
                                                         if criterion == "magnitude" else [])
            else:
                pairs = [(criterion, g) for g in allowed]
            for crit, granularity in pairs:
                if criteria and crit not in criteria:
                    continue
                if granularities and granularity not in granularities:
                    continue
                if (crit, granularity) in UNSUPPORTED:
                    continue
                rows.append((family, crit, granularity))
    return rows


def breadth_first(rows: list[tuple]) -> list[tuple]:
    """Rows ordered granularity by granularity, criterion by criterion (magnitude first), each over
    every family, so a run cut short by its budget has measured every family at the first settings."""
    granularity_order = ("unstructured", "2:4", "head", "channel", "ffn", "block")
    criterion_order = ("magnitude",) + tuple(c for c in CRITERIA if c != "magnitude")
    families = list(dict.fromkeys(family for family, _, _ in rows))
    return sorted(rows, key=lambda r: (granularity_order.index(r[2]), criterion_order.index(r[1]), families.index(r[0])))


def spec_kwargs(criterion: str, granularity: str, device: str, calibration_dir: str) -> dict:
    """PruneSpec keywords of one row: the granularity's amount and the cut-down calibration."""
    kwargs = dict(criterion=criterion, granularity=granularity, device=device, **AMOUNTS[granularity])
    if criterion in GRADIENT_CRITERIA or criterion == "obs":
        kwargs.update(schedule="custom", schedule_params={"timesteps": CALIBRATION_TIMESTEPS}, calibration_batches=1,
                      calibration_batch_size=1, calibration_data=str(calibration_dir))
    if criterion == "gradflow":
        kwargs["criterion_params"] = {"iterations": 1}
    return kwargs


# --------------------------------------------------------------------------------------- memory probes
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def rss_bytes() -> int:
    return _status_kib("VmRSS") * 1024


def reset_hwm() -> bool:
    """Reset the kernel's resident-set high-water mark; True when the reset took effect."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return abs(_status_kib("VmHWM") - _status_kib("VmRSS")) <= 4096  # within 4 MiB of the current RSS
    except OSError:
        return False


class RssSampler:
    """Fallback: the peak resident set seen by a thread reading ``/proc/self/statm`` every 5 ms."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.peak, self._stop = interval, rss_bytes(), threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        with open("/proc/self/statm") as handle:
            while not self._stop.is_set():
                handle.seek(0)
                self.peak = max(self.peak, int(handle.read().split()[1]) * self._page)
                time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


class PeakMemory:
    """Extra peak bytes of the block above the bytes held at its start (CPU: resident set; CUDA:
    allocated device memory, with the host's resident set alongside)."""

    def __init__(self, device):
        self.device = device
        self.cuda = getattr(device, "type", str(device)) == "cuda"

    def __enter__(self):
        import torch

        gc.collect()
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            self.before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.host_before = rss_bytes()
        self.sampler = None
        if reset_hwm():
            self.host_method = "VmHWM (clear_refs reset)"
        else:
            self.sampler = RssSampler().__enter__()
            self.host_method = "RSS sampled every 5 ms"
        self.method = "torch.cuda.max_memory_allocated" if self.cuda else self.host_method
        return self

    def __exit__(self, *exc):
        import torch

        if self.sampler is not None:
            self.sampler.__exit__(*exc)
            host_peak = self.sampler.peak
        else:
            host_peak = _status_kib("VmHWM") * 1024
        self.host_extra = host_peak - self.host_before
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.baseline = self.before
            self.extra = torch.cuda.max_memory_allocated(self.device) - self.before
        else:
            self.baseline = self.host_before
            self.extra = self.host_extra
        return False


def touch(pipeline) -> None:
    """Read one element of every memory page of every CPU tensor of the pipeline's networks."""
    import torch

    with torch.no_grad():
        for component in pipeline.components.values():
            if isinstance(component, torch.nn.Module):
                for tensor in list(component.parameters()) + list(component.buffers()):
                    if tensor.device.type == "cpu" and tensor.numel():
                        float(tensor.detach().reshape(-1)[::512].float().sum())


# ------------------------------------------------------------------------------------------- one row
def _quiet() -> None:
    import warnings

    warnings.filterwarnings("ignore")
    try:
        import diffusers
        import transformers

        diffusers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # noqa: BLE001 - logging knobs only
        pass


def run_row(family: str, criterion: str, granularity: str, device: str = "cpu", cache_dir=CACHE, tiny: bool = False,
            threads: int | None = None, load_dtype: str = "auto") -> dict:
    """Load the family's saved pipeline, prune it with the row's spec and measure; returns the row
    (``status`` ``ok`` or ``error: ...``; exceptions of ``prune`` are recorded, not raised).
    The model must have been saved (``scale_models.save_family``) by the caller."""
    import torch

    _quiet()
    if threads:
        torch.set_num_threads(int(threads))
    import diffusers

    from core.engine import prune
    from core.pipeline import adapter_of, load_pipeline, pick_device
    from core.spec import PruneSpec

    entry = scale_models.FAMILIES[family]
    directory = Path(cache_dir) / family
    built = scale_models.read_marker(directory)
    torch_device = pick_device(device)
    kind = torch_device.type
    spec_args = spec_kwargs(criterion, granularity, str(torch_device), str(directory / "calibration"))
    row = dict(
        key=row_key(family, criterion, granularity, kind, tiny, load_dtype), family=family, label=entry["label"], hub_id=entry["hub_id"],
        criterion=criterion, granularity=granularity, sparsity=spec_args.get("sparsity"),
        channel_ratio=spec_args.get("channel_ratio"), params=built["denoiser_params"],
        params_published=entry["published_params_text"], dtype_built=built["dtype"],
        denoiser_bytes_fp16=built["denoiser_bytes"] if built["dtype"] == "torch.float16" else None,
        device=str(torch_device), device_name=(torch.cuda.get_device_name(torch_device) if kind == "cuda"
                                               else platform.processor() or platform.machine()),
        torch=torch.__version__, diffusers=diffusers.__version__, threads=torch.get_num_threads(),
        date=time.strftime("%Y-%m-%d"), tiny=tiny, latent_size=built["denoiser_config"]["sample_size"],
        calibration=("none" if "schedule" not in spec_args else
                     f"1 batch x 1 image, timesteps {[t for t, _ in CALIBRATION_TIMESTEPS]}, random-image folder"),
        spec=None, status="error: not started",
    )
    try:
        started = time.perf_counter()
        pipeline = load_pipeline(directory, device=str(torch_device), dtype=load_dtype)
        row["load_s"] = round(time.perf_counter() - started, 2)
        adapter = adapter_of(pipeline)
        denoiser = adapter.denoiser(pipeline)
        row["dtype_loaded"] = str(next(denoiser.parameters()).dtype)
        row["denoiser_bytes"] = scale_models.module_bytes(denoiser)
        row["pipeline_bytes"] = sum(scale_models.module_bytes(m) for m in pipeline.components.values()
                                    if isinstance(m, torch.nn.Module))
        spec = PruneSpec(**spec_args)
        row["spec"] = spec.to_dict()
        del denoiser
        # Weights loaded from safetensors may still be file pages mapped but not yet read (not in the
        # resident set): read every page once so that the baseline holds the whole loaded pipeline
        # and the extra peak is what prune adds, not the first touch of the caller's weights.
        row["rss_after_load_bytes"] = rss_bytes()
        touch(pipeline)
        row["rss_file_bytes"], row["rss_anon_bytes"] = _status_kib("RssFile") * 1024, _status_kib("RssAnon") * 1024
        with PeakMemory(torch_device) as memory:
            started = time.perf_counter()
            result = prune(pipeline, spec)
            if kind == "cuda":
                torch.cuda.synchronize(torch_device)
            row["prune_s"] = round(time.perf_counter() - started, 2)
        totals = result.report.totals
        pruned = adapter.denoiser(result.pipeline)
        row.update(
            dtype_pruned=str(next(pruned.parameters()).dtype), achieved_sparsity=round(float(totals["sparsity"]), 4),
            calibration_s=round(float(totals.get("calibration_time_s") or 0.0), 2),
            baseline_bytes=int(memory.baseline), extra_peak_bytes=int(memory.extra), memory_method=memory.method,
            host_extra_peak_bytes=int(memory.host_extra), host_memory_method=memory.host_method,
            ratio=round(memory.extra / row["denoiser_bytes"], 3),
            ratio_fp16=round(memory.extra / row["denoiser_bytes_fp16"], 3) if row["denoiser_bytes_fp16"] else None,
            s_per_billion_params=round(row["prune_s"] / (row["params"] / 1e9), 2),
            status="ok",
        )
    except Exception as error:  # noqa: BLE001 - a failed row is recorded and the plan goes on
        import traceback

        traceback.print_exc()  # the row's log file
        message = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        row["status"] = f"error: {type(error).__name__}: {message}"
        row["where"] = _where(error)
    return row


def _where(error: BaseException, frames: int = 3) -> str:
    """Where the error came from: the last ``frames`` frames in this repository's code and the frame
    that raised, as ``file:line in function``, paths relative to the repository or to site-packages
    (no machine paths in the results file)."""
    import traceback

    def place(frame) -> tuple[str, bool]:
        path = frame.filename
        if "site-packages" + os.sep in path:
            return path.split("site-packages" + os.sep, 1)[1], False
        if path.startswith(str(ROOT) + os.sep):
            return os.path.relpath(path, ROOT), True
        return os.path.basename(path), False

    stack = traceback.extract_tb(error.__traceback__)
    if not stack:
        return ""
    ours = [frame for frame in stack if place(frame)[1]][-frames:]
    chosen = ours + ([stack[-1]] if stack[-1] not in ours else [])
    return " -> ".join(f"{place(frame)[0]}:{frame.lineno} in {frame.name}" for frame in chosen)


# ------------------------------------------------------------------------------------- orchestration
def _meminfo_bytes(field: str) -> int:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _child_rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _run_child(arguments: list[str], log_path: Path, timeout: float | None, memory_limit: int | None) -> tuple[int | None, str]:
    """Run ``this script <arguments>`` in a fresh process; (exit code or None, reason) where the
    reason names a timeout or the memory limit when the parent stopped it."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *arguments], cwd=ROOT,
                                   stdout=log, stderr=subprocess.STDOUT)
        started = time.monotonic()
        while True:
            try:
                return process.wait(timeout=0.5), ""
            except subprocess.TimeoutExpired:
                pass
            if timeout and time.monotonic() - started > timeout:
                process.kill()
                process.wait()
                return None, f"timeout after {timeout:g} s"
            if memory_limit and _child_rss(process.pid) > memory_limit:
                process.kill()
                process.wait()
                return None, f"error: stopped at the memory limit ({memory_limit / GIB:.1f} GiB resident)"


def _log_tail(path: Path, lines: int = 5) -> str:
    try:
        text = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    tail = " | ".join(text[-lines:])
    tail = re.sub(r"\S*site-packages" + re.escape(os.sep), "", tail).replace(str(ROOT) + os.sep, "")
    return tail[-400:]  # no machine paths in the results file


def ensure_built(family: str, args) -> str | None:
    """Build and save the family in a separate process unless present; None or an error line."""
    directory = Path(args.cache_dir) / family
    if (directory / scale_models.MARKER).exists():
        return None
    print(f"building {family} (random fp16 weights) into {directory} ...", flush=True)
    log = Path(args.log_dir) / f"build-{family}.log"
    timeout = args.build_timeout
    if args.deadline:
        timeout = min(timeout or float("inf"), max(1.0, args.deadline - time.monotonic()))
    code, reason = _run_child(["--build", family, "--build-device", args.build_device, *_common(args)], log, timeout, None)
    if code == 0 and (directory / scale_models.MARKER).exists():
        info = scale_models.read_marker(directory)
        print(f"  built {family}: {info['denoiser_params']:,} parameters, {info['dtype']}, "
              f"{info['denoiser_bytes'] / GIB:.2f} GiB, build {info['build_s']} s, save {info['save_s']} s", flush=True)
        return None
    return reason or f"error: build failed (exit {code}): {_log_tail(log)}"


def _common(args) -> list[str]:
    common = ["--cache-dir", str(args.cache_dir)]
    if args.tiny:
        common.append("--tiny")
    if args.threads:
        common += ["--threads", str(args.threads)]
    if args.load_dtype != "auto":
        common += ["--load-dtype", args.load_dtype]
    return common


def run_plan(args) -> list[dict]:
    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is available here")
    kind = "cuda" if device.startswith("cuda") else "cpu"
    rows = plan_rows(args.plan, args.families, args.criteria, args.granularities, args.include_large)
    done = read_rows(args.results)
    todo = [r for r in rows if args.force or done.get(row_key(*r, kind, args.tiny, args.load_dtype), {}).get("status") != "ok"]
    if (args.order or ("breadth" if args.plan == "gpu" else "family")) == "breadth":
        todo = breadth_first(todo)
    print(f"plan {args.plan}: {len(rows)} rows on {device}, {len(rows) - len(todo)} already done ok; "
          f"results: {args.results}", flush=True)
    print("Text encoders, tokenizers and VAEs are tiny stand-ins; the ratio's denominator is the denoiser's bytes.",
          flush=True)
    if args.dry_run:
        for family, criterion, granularity in todo:
            print("  would run", row_key(family, criterion, granularity, kind, args.tiny))
        return []
    deadline = args.deadline = time.monotonic() + args.budget if args.budget else None
    finished, build_errors = [], {}
    for family, criterion, granularity in todo:
        if deadline and time.monotonic() > deadline:
            print(f"time budget of {args.budget:g} s spent: {len(todo) - len(finished)} rows left for a rerun", flush=True)
            break
        key = row_key(family, criterion, granularity, kind, args.tiny, args.load_dtype)
        if family not in build_errors:
            build_errors[family] = ensure_built(family, args)
        if build_errors[family]:
            row = dict(key=key, family=family, criterion=criterion, granularity=granularity, device=device,
                       status=build_errors[family], date=time.strftime("%Y-%m-%d"), tiny=args.tiny)
        else:
            out = Path(args.log_dir) / (key.replace("/", "_").replace(":", "-") + ".json")
            out.unlink(missing_ok=True)
            available = _meminfo_bytes("MemAvailable") if kind == "cpu" else 0
            limit = int(args.memory_limit_gb * GIB) if args.memory_limit_gb else (int(0.9 * available) or None)
            timeout = args.timeout
            if deadline:
                timeout = min(timeout or float("inf"), max(1.0, deadline - time.monotonic()))
            print(f"row {key} ...", flush=True)
            code, reason = _run_child(["--row", json.dumps([family, criterion, granularity]), "--device", device,
                                       "--row-out", str(out), *_common(args)], out.with_suffix(".log"), timeout, limit)
            if out.exists():
                row = json.loads(out.read_text())
            else:
                row = dict(key=key, family=family, criterion=criterion, granularity=granularity, device=device,
                           date=time.strftime("%Y-%m-%d"), tiny=args.tiny)
                row["status"] = reason or f"error: the row process exited with {code}: {_log_tail(out.with_suffix('.log'))}"
        append_row(args.results, row)
        finished.append(row)
        print("  " + _summary(row), flush=True)
    if finished:
        print()
        print(markdown_table(finished))
    return finished


def _summary(row: dict) -> str:
    if row.get("status") != "ok":
        return f"{row['key']}: {row.get('status')}"
    return (f"{row['key']}: extra peak {row['extra_peak_bytes'] / GIB:.2f} GiB = {row['ratio']:.2f} x the denoiser "
            f"({row['dtype_loaded']}, {row['denoiser_bytes'] / GIB:.2f} GiB; {row['ratio_fp16']} x its fp16 bytes), "
            f"prune {row['prune_s']:.1f} s ({row['s_per_billion_params']:.1f} s per B params), pruned {row['dtype_pruned']}")


# -------------------------------------------------------------------------------------------- tables
def _gib(value) -> str:
    return "" if value is None else f"{value / GIB:.2f}"


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| family | criterion | granularity | amount | denoiser params | dtype loaded -> pruned | denoiser GiB (loaded) "
        "| extra peak GiB | ratio (loaded) | ratio (fp16) | prune s | s / B params | device | status |",
        "| --- | --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for row in rows:
        amount = (f"ratio {row['channel_ratio']:g}" if row.get("channel_ratio") is not None
                  else f"{row['sparsity']:.0%}" if row.get("sparsity") is not None else "N:M")
        ok = row.get("status") == "ok"
        params = f"{row['params']:,}" if row.get("params") else ""
        dtypes = (f"{row.get('dtype_loaded', '').replace('torch.', '')} -> {row.get('dtype_pruned', '').replace('torch.', '')}"
                  if ok else "")
        lines.append(" | ".join([
            f"| {row.get('family', '')}", row.get("criterion", ""), row.get("granularity", ""),
            amount if "sparsity" in row else "", params, dtypes,
            _gib(row.get("denoiser_bytes")) if ok else "", _gib(row.get("extra_peak_bytes")) if ok else "",
            f"{row['ratio']:.2f}" if ok else "", f"{row['ratio_fp16']:.2f}" if ok and row.get("ratio_fp16") else "",
            f"{row['prune_s']:.1f}" if ok else "", f"{row['s_per_billion_params']:.1f}" if ok else "",
            row.get("device", ""), str(row.get("status", "")).replace("|", "/")[:120] + " |",
        ]))
    return "\n".join(lines)


def capacity(rows: list[dict]) -> tuple[str, dict, list[dict]]:
    """Which benchmark family each criterion could prune within 16, 24 and 80 GiB.

    Accounting (simple on purpose): memory needed = the pipeline as users load it (the denoiser's
    bytes + the real text encoders and VAE at 2 bytes per parameter, counted from their published
    configs) + the criterion's extra peak, taken as its largest measured ratio (over every family
    and granularity on this device) times that family's denoiser bytes. A family without a row of
    its own gets its denoiser bytes from its parameter count at the dtype the measured rows were
    loaded in (marked extrapolated). CUDA context, allocator fragmentation and larger calibration
    batches or resolutions are not included.
    """
    ok = [r for r in rows if r.get("status") == "ok" and not r.get("tiny")]
    kinds = {("cuda" if str(r["device"]).startswith("cuda") else "cpu") for r in ok}
    kind = "cuda" if "cuda" in kinds else "cpu"
    ok = [r for r in ok if str(r["device"]).startswith(kind)]
    if not ok:
        return kind, {}, []
    measured = {}
    for row in ok:
        measured[row["family"]] = max(measured.get(row["family"], 0), row["denoiser_bytes"])
    element = max(1, round(sum(r["denoiser_bytes"] / r["params"] for r in ok) / len(ok)))  # bytes per parameter as loaded
    sizes = {}
    for family in scale_models.FAMILIES:
        if family in measured:
            sizes[family] = dict(bytes=measured[family], measured=True)
        else:
            params = scale_models.count_on_meta(scale_models.FAMILIES[family]["denoiser_class"],
                                                scale_models.denoiser_config(family))
            sizes[family] = dict(bytes=params * element, measured=False)
        sizes[family]["others"] = 2 * scale_models.real_other_params(family)
    ratios = {}
    for row in ok:
        ratios[row["criterion"]] = max(ratios.get(row["criterion"], 0.0), row["ratio"])
    result = []
    for criterion in [c for c in CRITERIA if c in ratios]:
        needs = {family: size["bytes"] * (1 + ratios[criterion]) + size["others"] for family, size in sizes.items()}
        entry = dict(criterion=criterion, ratio=ratios[criterion], needs_gib={f: n / GIB for f, n in needs.items()})
        for budget in BUDGETS_GIB:
            fitting = [f for f, n in needs.items() if n <= budget * GIB]
            entry[f"{budget}"] = max(fitting, key=lambda f: sizes[f]["bytes"]) if fitting else "none"
        result.append(entry)
    return kind, sizes, result


def capacity_table(rows: list[dict]) -> str:
    kind, sizes, entries = capacity(rows)
    if not entries:
        return "(no ok rows yet: no capacity table)"
    families = list(sizes)
    label = {f: f + ("" if sizes[f]["measured"] else "*") for f in families}
    lines = [f"Largest family each criterion could prune, by the accounting below ({kind} rows; * = no row of its "
             "own, the criterion's ratio applied to its size):", "",
             "| criterion | largest ratio measured | " + " | ".join(f"needs {label[f]} (GiB)" for f in families)
             + " | " + " | ".join(f"in {b} GiB" for b in BUDGETS_GIB) + " |",
             "| --- | ---: | " + " | ".join("---:" for _ in families) + " | " + " | ".join("---" for _ in BUDGETS_GIB) + " |"]
    for entry in entries:
        lines.append(f"| {entry['criterion']} | {entry['ratio']:.2f} | "
                     + " | ".join(f"{entry['needs_gib'][f]:.1f}" for f in families) + " | "
                     + " | ".join(label.get(entry[str(b)], entry[str(b)]) for b in BUDGETS_GIB) + " |")
    lines += ["", "needs = denoiser bytes (as loaded in the rows) x (1 + ratio) + the real text encoders and VAE at "
              "2 bytes per parameter (published configs, counted on the meta device); the ratio is the criterion's "
              "largest measured over every family and granularity here. CUDA context, fragmentation and larger "
              "calibration batches or resolutions are not included."]
    return "\n".join(lines)


def print_param_check() -> None:
    print("| family | hub repo | published | published config builds | benchmark config (sample_size 32) | difference |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for row in scale_models.check_param_counts():
        print(f"| {row['family']} | {row['hub_id']} | {row['published']} | {row['params_published_config']:,} | "
              f"{row['params_bench_config']:,} | {row['relative_difference']:+.1%} |")
    print()
    print("DiT: diffusers' DiT-XL/2 keeps a copy of the timestep and class embedder in each of its 28 blocks "
          "(27 x 2,777,472 parameters more than the paper's shared one: 674,834,720 without them).")


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--families", type=lambda s: [x for x in s.split(",") if x], default=None,
                        help=f"comma-separated subset of {list(scale_models.FAMILIES)}")
    parser.add_argument("--criteria", type=lambda s: [x for x in s.split(",") if x], default=None)
    parser.add_argument("--granularities", type=lambda s: [x for x in s.split(",") if x], default=None)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    parser.add_argument("--include-large", action="store_true", help="add SD3.5-Large (about 8 B parameters; GPU hosts)")
    parser.add_argument("--force", action="store_true", help="rerun rows already done ok")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per row (default: none)")
    parser.add_argument("--build-timeout", type=float, default=None, help="seconds per model build (default: none)")
    parser.add_argument("--budget", type=float, default=None, help="total seconds for the plan; rows left over wait for a rerun")
    parser.add_argument("--memory-limit-gb", type=float, default=None,
                        help="stop a row whose resident set passes this (default: 90%% of MemAvailable at the row's start)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in each row process")
    parser.add_argument("--load-dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"),
                        help="load_pipeline's dtype (auto: the checkpoint's fp16). bfloat16 on a CPU without fp16 "
                             "arithmetic: same bytes per weight, calibration passes 10-30x faster")
    parser.add_argument("--tiny", action="store_true", help="tiny configs of each family (seconds; for checks and tests)")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--log-dir", type=Path, default=None)
    parser.add_argument("--dry-run", action="store_true", help="print the rows that would run")
    parser.add_argument("--order", choices=("family", "breadth"), default=None,
                        help="family: each family's rows together (default for --plan cpu); breadth: every family at "
                             "one criterion x granularity before the next (default for --plan gpu: a cut-short run "
                             "still covers every family)")
    parser.add_argument("--build-device", default="cpu",
                        help="where the random weights are created before saving (cuda is faster for the large models)")
    parser.add_argument("--table", action="store_true", help="print the tables from the results file and exit")
    parser.add_argument("--check-configs", action="store_true", help="print parameter counts against the published ones")
    parser.add_argument("--build", default=None, help=argparse.SUPPRESS)  # internal: build one family
    parser.add_argument("--row", default=None, help=argparse.SUPPRESS)  # internal: [family, criterion, granularity]
    parser.add_argument("--row-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.cache_dir = args.cache_dir or (TINY_CACHE if args.tiny else CACHE)
    args.results = args.results or (TINY_RESULTS if args.tiny else RESULTS)
    args.log_dir = args.log_dir or Path(args.cache_dir).parent / ("scale-tiny-logs" if args.tiny else "scale-logs")
    for name, allowed in (("families", scale_models.FAMILIES), ("criteria", CRITERIA), ("granularities", AMOUNTS)):
        unknown = [x for x in (getattr(args, name) or []) if x not in allowed]
        if unknown:
            parser.error(f"--{name}: unknown {unknown}; allowed: {list(allowed)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.build:
        _quiet()
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        scale_models.save_family(args.build, args.cache_dir, tiny=args.tiny, device=args.build_device)
        return 0
    if args.row:
        family, criterion, granularity = json.loads(args.row)
        row = run_row(family, criterion, granularity, args.device, args.cache_dir, args.tiny, args.threads,
                      load_dtype=args.load_dtype)
        text = json.dumps(row, sort_keys=True)
        if args.row_out:
            args.row_out.write_text(text + "\n")
        print(text)
        return 0
    if args.check_configs:
        print_param_check()
        return 0
    if args.table:
        rows = list(read_rows(args.results).values())
        print(markdown_table(rows))
        print()
        print(capacity_table(rows))
        return 0
    run_plan(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
