"""The verdict card and the "Is pruning worth it?" sentences: pure functions of measured results.

Nothing here measures anything: it turns a run's measured totals, paired timing and evaluations
(``core.run.RunResult``), or a table of stored and shipped results, into sentences. Each sentence
states one thing, so none can contradict another:

* **quality** against the dense model, with the noise of the metric at this sample count (the KID
  standard deviations the evaluation reports, combined);
* **size**: for structured cuts, the parameters and MACs kept; for unstructured and N:M masks, the
  fraction of the prunable weights zeroed (their parameter count and MACs are the dense model's);
* **speed**: "about 1.0x, within timing noise" whenever the paired speed-up range contains 1, and
  for unstructured and N:M masks that zeroed weights run at dense speed without sparse kernels.

The latency charts use :func:`no_measured_speedup` to draw the same points as "no measured speed-up".
"""
from __future__ import annotations

import math

NOISE_SIGMAS = 2.0  # a quality difference within 2 combined standard deviations is called noise


def is_masked(granularity) -> bool:
    """Unstructured and N:M granularities zero weights in place (no structural cut)."""
    text = str(granularity or "")
    return text == "unstructured" or ":" in text


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def no_measured_speedup(row: dict) -> bool:
    """True when a result's latency shows no speed-up: a masked granularity (its zeroed weights run
    at dense speed) or a paired speed-up range that contains 1."""
    if is_masked(row.get("granularity")):
        return True
    low, high = _number(row.get("speedup_low")), _number(row.get("speedup_high"))
    return low is not None and high is not None and low <= 1.0 <= high


def speed_text(timing: dict | None, granularity) -> str:
    """One sentence on speed from ``core.timing.paired_step_latency``'s result."""
    if is_masked(granularity):
        text = "about 1.0x: zeroed weights run at dense speed without sparse kernels"
        if not timing:
            return text + " (not timed)"
        low, high = timing["speedup_low"], timing["speedup_high"]
        if low <= 1.0 <= high:
            return text + f" (paired timing range {low:.2f}-{high:.2f}x, within timing noise)"
        return text + (f" (the paired timing's {low:.2f}-{high:.2f}x is run-to-run drift: both models have the "
                       "same shapes and operations)")
    if not timing:
        return "not timed"
    low, high, median = timing["speedup_low"], timing["speedup_high"], timing["speedup"]
    rounds = f"paired range {low:.2f}-{high:.2f}x over {timing['rounds']} rounds"
    if low <= 1.0 <= high:
        return f"about 1.0x, within timing noise ({rounds})"
    if low > 1.0:
        return f"{median:.2f}x faster than dense ({rounds})"
    return f"{1.0 / median:.2f}x slower than dense ({rounds})"


def size_text(totals: dict, granularity) -> str:
    """One sentence on size from a prune report's totals, with the report's shortfall sentence when
    whole units (``block``) could not reach the asked sparsity."""
    zeroed = totals["sparsity"]
    if is_masked(granularity):
        pattern = f" in a {granularity} pattern" if ":" in str(granularity) else ""
        return (f"{zeroed:.1%} of the prunable weights zeroed{pattern}; the parameter count and MACs are the dense "
                "model's (the zeros are stored)")
    shortfall = totals.get("sparsity_shortfall")
    return (f"{totals['params_ratio']:.1%} of the parameters and {totals['macs_ratio']:.1%} of the MACs kept "
            f"({zeroed:.1%} of the prunable weights removed)" + (f"; not the asked sparsity: {shortfall}" if shortfall else ""))


def quality_text(row: dict | None, dense: dict | None, quality: str = "kid") -> str:
    """One sentence comparing a stage's quality with the dense model's, with the noise at this
    sample count: KID with the standard deviations the evaluation reports; FID has none here, so it
    is compared only as a number (lower is better)."""
    value, reference = _number((row or {}).get(quality)), _number((dense or {}).get(quality))
    if value is None or reference is None:
        return "not evaluated (quality metric: none)"
    samples = (row or {}).get("num_samples")
    at = f" at {int(samples)} samples" if samples else ""
    if quality != "kid":
        word = "lower (better)" if value < reference else ("higher (worse)" if value > reference else "equal")
        return f"FID {value:.1f} vs dense {reference:.1f}: {word}; FID reports no noise estimate{at}"
    noise = math.hypot(_number(row.get("kid_std")) or 0.0, _number(dense.get("kid_std")) or 0.0)
    difference = value - reference
    shown = f"KID {value:.4f} vs dense {reference:.4f} (noise ± {noise:.4f}{at})"
    if abs(difference) <= NOISE_SIGMAS * noise:
        return f"{shown}: as good as dense within noise"
    return f"{shown}: {'worse' if difference > 0 else 'better'} than dense beyond noise"


def verdict(granularity, totals: dict, timing: dict | None, evaluations: dict, quality: str = "kid",
            recovery_steps: int = 0) -> str:
    """The verdict card (markdown) of one run: quality of the final stage (recovered when it ran,
    else one-shot) against dense, size and speed, one line each."""
    dense = evaluations.get("dense")
    stage = "recovered" if evaluations.get("recovered") else "one-shot"
    lines = [f"### Verdict: {stage}" + (f" ({recovery_steps:,} recovery steps)" if stage == "recovered" else ""),
             f"- **Quality:** {quality_text(evaluations.get(stage), dense, quality)}"]
    if stage == "recovered":
        lines.append(f"- **One-shot, before recovery:** {quality_text(evaluations.get('one-shot'), dense, quality)}")
    lines += [f"- **Size:** {size_text(totals, granularity)}", f"- **Speed:** {speed_text(timing, granularity)}"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ is pruning worth it?
def _dense_at(line: list[tuple[float, float, int]], latency: float):
    """The dense line's quality at ``latency`` (linear between its points) and the step counts of
    the two points around it, or None outside the line."""
    for (x0, y0, k0), (x1, y1, k1) in zip(line, line[1:]):
        if x0 <= latency <= x1:
            return (y0 if x1 == x0 else y0 + (y1 - y0) * (latency - x0) / (x1 - x0)), (k0, k1)
    return None


def worth_it(dense, pruned: list[dict], quality: str = "kid") -> dict | None:
    """Compare each pruned point (``relative_latency``, quality, ``label``) with the dense model at
    fewer sampling steps at the same latency (``dense``: rows with ``relative_latency``,
    ``num_inference_steps`` and the quality). Returns the counts, the best pruned point and the dense
    point nearest it in latency; None when no point can be compared."""
    line = sorted((float(r["relative_latency"]), float(r[quality]), int(r["num_inference_steps"])) for r in dense
                  if _number(r.get(quality)) is not None and _number(r.get("relative_latency")) is not None)
    compared = []
    for point in pruned:
        value, latency = _number(point.get(quality)), _number(point.get("relative_latency"))
        if value is None or latency is None:
            continue
        found = _dense_at(line, latency)
        if found is not None:
            baseline, between = found
            compared.append(dict(point, baseline=baseline, between=between, beats=value < baseline,
                                 margin=baseline - value))
    if not compared:
        return None
    best = max(compared, key=lambda p: p["margin"])
    return dict(compared=len(compared), beating=sum(p["beats"] for p in compared), best=best)


def worth_it_sentence(answer: dict | None, quality: str, subject: str) -> str:
    """``worth_it``'s answer in one sentence about ``subject`` ("the shipped results", "your run")."""
    name = quality.upper()
    digits = 4 if quality == "kid" else 1
    if answer is None:
        return (f"**Is pruning worth it?** Not answered for {subject}: no dense measurement at fewer sampling steps "
                "covers its latency at these settings.")
    best = answer["best"]
    low, high = best["between"]
    steps = f"{low} steps" if low == high else f"between {low} and {high} steps"
    shown = (f"{best.get('label', 'pruned')}: {name} {float(best[quality]):.{digits}f} at {float(best['relative_latency']):.2f} "
             f"of the dense latency, vs the dense model at that latency ({steps}): {name} {best['baseline']:.{digits}f}")
    if answer["beating"] == 0:
        every = "every pruned point" if answer["compared"] > 1 else "the pruned model"
        return (f"**Is pruning worth it? No** for {subject}: the dense model at fewer sampling steps beats {every} "
                f"at equal latency ({answer['compared']} compared; closest, {shown}).")
    return (f"**Is pruning worth it? Yes** for {subject}: {answer['beating']} of {answer['compared']} pruned points "
            f"beat the dense model at fewer sampling steps at equal latency (best, {shown}).")
