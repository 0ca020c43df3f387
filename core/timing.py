"""One paired latency measurement of a dense and a pruned model, cheap enough for every app run.

``paired_step_latency`` times one denoising step (one UNet forward on a batch) of both models,
interleaved in this process: after ``warmup`` untimed rounds, each round times dense then pruned
(or pruned then dense on odd rounds, so neither always runs second), and the speed-up is the
ratio of the medians. The per-round ratios give the spread: a speed-up whose range over the
rounds contains 1 is within the timing noise and is reported as such. The sampler's cost is one
UNet forward per step plus an elementwise scheduler update, so the latency per image at ``N``
steps is ``N x step time / batch``; this is how the figure is labelled wherever it is shown.

Kept separate from ``core.metrics.measure_latency_pair`` (which times the whole sampler several
times: the benchmarks' instrument) because the app must stay within a few seconds.
"""
from __future__ import annotations

import statistics
import time

import torch

from .models import adapter_for


def _step_time(step, sample: torch.Tensor, timestep: torch.Tensor) -> float:
    if sample.device.type == "cuda":
        torch.cuda.synchronize(sample.device)
    started = time.perf_counter()
    step(sample, timestep)
    if sample.device.type == "cuda":
        torch.cuda.synchronize(sample.device)
    return time.perf_counter() - started


def paired_step_latency(dense_pipeline, pruned_pipeline, num_inference_steps: int, batch_size: int = 8,
                        rounds: int = 9, warmup: int = 1, budget_s: float = 3.5, min_rounds: int = 4,
                        seed: int = 0) -> dict:
    """Time one denoising step of both pipelines' denoisers (through the family adapter), interleaved.

    - ``num_inference_steps``: the sampling steps the per-image latency is reported for.
    - ``rounds``: timed rounds (each one dense and one pruned forward); fewer once ``budget_s``
      seconds (warm-up included) are spent, but never fewer than ``min_rounds``.
    - ``warmup``: untimed rounds first (allocator, kernels, caches).

    Returns ``dense_step_s`` / ``pruned_step_s`` (medians), their ``*_min``/``*_max``,
    ``dense_s_per_image`` / ``pruned_s_per_image`` at ``num_inference_steps``, ``speedup``
    (dense median / pruned median), ``speedup_low``/``speedup_high`` (range of the per-round
    ratios), ``within_noise`` (that range contains 1), ``rounds``, ``batch_size``, ``threads``,
    ``device`` and ``seconds`` (wall time of the measurement).
    """
    for name, value, low in (("num_inference_steps", num_inference_steps, 1), ("batch_size", batch_size, 1),
                             ("rounds", rounds, 1), ("warmup", warmup, 0), ("min_rounds", min_rounds, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    started = time.perf_counter()
    adapter = adapter_for(dense_pipeline)
    dense_net, pruned_net = adapter.denoiser(dense_pipeline), adapter.denoiser(pruned_pipeline)
    device = next(dense_net.parameters()).device
    sample = adapter.noise(dense_pipeline, batch_size, seed).to(device)
    # One sampling step as the sampler runs it: the family's guided prediction with its conditioning
    # (classifier-free guidance doubles the batch where the family uses it).
    conditioning = adapter.sample_conditioning(dense_pipeline, batch_size, torch.Generator().manual_seed(seed))

    def stepper(net):
        return lambda x, t: adapter.guided_prediction(net, x, t, conditioning)

    dense, pruned = stepper(dense_net), stepper(pruned_net)
    # A timestep from the middle of the range: the cost of a UNet forward does not depend on t.
    timestep = torch.full((batch_size,), int(dense_pipeline.scheduler.config.num_train_timesteps) // 2,
                          device=device, dtype=torch.long)
    times: dict[str, list[float]] = {"dense": [], "pruned": []}
    with torch.inference_mode():
        for _ in range(warmup):
            _step_time(dense, sample, timestep)
            _step_time(pruned, sample, timestep)
        for index in range(rounds):
            order = (("dense", dense), ("pruned", pruned)) if index % 2 == 0 else (("pruned", pruned), ("dense", dense))
            for name, net in order:
                times[name].append(_step_time(net, sample, timestep))
            if index + 1 >= min_rounds and time.perf_counter() - started > budget_s:
                break
    ratios = [d / p for d, p in zip(times["dense"], times["pruned"])]
    dense_step, pruned_step = statistics.median(times["dense"]), statistics.median(times["pruned"])
    low, high = min(ratios), max(ratios)
    return dict(
        dense_step_s=dense_step, pruned_step_s=pruned_step,
        dense_step_min_s=min(times["dense"]), dense_step_max_s=max(times["dense"]),
        pruned_step_min_s=min(times["pruned"]), pruned_step_max_s=max(times["pruned"]),
        dense_s_per_image=dense_step * num_inference_steps / batch_size,
        pruned_s_per_image=pruned_step * num_inference_steps / batch_size,
        speedup=dense_step / pruned_step, speedup_low=low, speedup_high=high, within_noise=low <= 1.0 <= high,
        rounds=len(ratios), batch_size=batch_size, num_inference_steps=num_inference_steps,
        threads=torch.get_num_threads(), device=str(device), seconds=time.perf_counter() - started,
    )
