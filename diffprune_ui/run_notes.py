"""Small explanations on the Prune tab: the sparsity slider under an N:M pattern, the cost notes
while an estimate is measured, the summary's warnings (a recovery that made quality worse, a
calibration reused from an earlier run), the pruned units of the importance heatmap, and the
cancel of a closed tab's job. Plain functions of widget values and ``core`` results."""
from __future__ import annotations

import gradio as gr

SPARSITY_INFO = "fraction of prunable parameters removed"
CALIBRATION_PENDING = "*estimating the calibration time (measuring it on this model)...*"
RECOVERY_PENDING = "*estimating the recovery time (measuring it on this model)...*"


def nm_pattern(granularity) -> tuple[int, int] | None:
    """``(n, m)`` of an N:M granularity such as ``"2:4"``; None for any other value."""
    if not isinstance(granularity, str) or granularity.count(":") != 1:
        return None
    n, m = granularity.split(":")
    if not (n.isdigit() and m.isdigit()) or not 0 < int(n) < int(m):
        return None
    return int(n), int(m)


def sparsity_slider(granularity):
    """The sparsity slider for ``granularity``: under N:M fixed at 1 - N/M (not interactive) and
    saying why; otherwise free again."""
    pattern = nm_pattern(granularity)
    if pattern is None:
        return gr.update(interactive=True, info=SPARSITY_INFO)
    n, m = pattern
    return gr.update(value=1 - n / m, interactive=False,
                     info=f"fixed by {n}:{m}: every group of {m} weights keeps {n}, so sparsity = 1 - {n}/{m} = "
                          f"{1 - n / m:.0%}")


def calibration_pending() -> str:
    return CALIBRATION_PENDING


def recovery_pending() -> str:
    return RECOVERY_PENDING


def lower_is_better(quality: str) -> bool:
    return quality in ("kid", "fid")


def recovery_warning(evaluations: dict, quality: str) -> str:
    """A warning line when the recovered model scores worse than the one-shot one ("" otherwise,
    and without a recovery or a quality metric)."""
    oneshot, recovered = (evaluations.get("one-shot") or {}).get(quality), (evaluations.get("recovered") or {}).get(quality)
    if oneshot is None or recovered is None or not lower_is_better(quality) or recovered <= oneshot:
        return ""
    digits = 4 if quality == "kid" else 1
    noise = (evaluations.get("recovered") or {}).get("kid_std") if quality == "kid" else None
    within = f" (KID std {noise:.4f}: the difference may be noise at this sample count)" if noise else ""
    return (f"⚠ Recovery made quality worse: {quality.upper()} {oneshot:.{digits}f} one-shot -> {recovered:.{digits}f} "
            f"recovered{within}. Try a lower learning rate, more steps or other recovery data.")


def calibration_reuse(totals: dict) -> str:
    """The summary's line for a calibration reused from an earlier run of this process ("" when computed)."""
    if not totals.get("calibration_cached"):
        return ""
    return ("reused from an earlier run (same model and calibration settings): not computed again, so the pruning "
            "time leaves it out")


def pruned_units(importance: dict, denoiser, granularity: str) -> dict:
    """Layer -> ``(removed, total, indices)`` of the units a structural cut removed: ``total`` the
    length of the layer's importance vector, ``removed`` what the pruned ``denoiser`` lacks (heads
    of an attention, neurons of an FFN, output channels of a layer); ``indices`` where the
    granularity removes a layer's lowest-ranked units by that very vector (``head``, ``ffn``: a
    stable argsort, as the cut does), else None (``channel`` ranks whole dependency groups)."""
    import numpy as np

    if granularity not in ("channel", "head", "ffn"):
        return {}
    modules = dict(denoiser.named_modules())
    marks = {}
    for name, vector in importance.items():
        values = np.asarray(vector, dtype=float).ravel()
        kept = _units_of(modules.get(name))
        if kept is None or kept >= values.size:
            continue
        removed = values.size - kept
        indices = np.argsort(values, kind="stable")[:removed].tolist() if granularity in ("head", "ffn") else None
        marks[name] = (removed, values.size, indices)
    return marks


def _units_of(module) -> int | None:
    """Heads of an attention module, hidden neurons of a feed-forward block, output units of a layer."""
    if module is None:
        return None
    if hasattr(module, "heads"):
        return int(module.heads)
    weight = getattr(module, "weight", None)
    if weight is not None and weight.dim() >= 2:
        return int(weight.shape[0])
    try:
        from core.models.transformer_cuts import ffn_layers

        return int(ffn_layers(module)[1].in_features)
    except ValueError:  # not a feed-forward block: no unit count
        return None


def cancel_closed_session(request: gr.Request = None) -> None:
    """A closed (or reloaded) tab: its waiting or running job is cancelled as by the Cancel button
    (the run stops at its next progress report and frees the compute slot)."""
    from . import handlers

    handlers.cancel_run(request)
