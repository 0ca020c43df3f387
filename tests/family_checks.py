"""Checks shared by the family tests (``tests/test_family_*.py``): the criterion x granularity
matrix through the ``prune`` facade, save/load, the caller's pipeline untouched, the pipeline's own
``__call__`` with the pruned denoiser.

``wired_granularities(monkeypatch)`` puts the ``ffn`` and ``block`` granularities
(``core/granularities/ffn.py``, ``block.py``) into the engine's registry and every criterion's
allowed list for one test, the way the engine will once ``core.granularities`` imports them.
"""
from __future__ import annotations

import dataclasses
import hashlib

import torch

import tiny_families

# Small calibration settings that every calibrated criterion accepts (seconds on a CPU).
CALIBRATED = {
    "taylor": dict(schedule="uniform", schedule_params={"num_timesteps": 2}),
    "nici": dict(schedule="uniform", schedule_params={"num_timesteps": 2}),
    "l1": dict(schedule="uniform", schedule_params={"num_timesteps": 2}),
    "gradflow": dict(schedule="uniform", schedule_params={"num_timesteps": 2}, criterion_params={"iterations": 2}),
    "obs": dict(schedule="log-decrease", schedule_params={"num_steps": 3}),
}


def wired_granularities(monkeypatch) -> None:
    import importlib

    import core.granularities  # noqa: F401 - the registry complete (ffn and block register on import)
    from core.criteria import ALL_GRANULARITIES, CRITERIA
    from core.registry import GRANULARITIES

    listed = set(GRANULARITIES)
    entries = [importlib.import_module(f"core.granularities.{name}").ENTRY for name in ("ffn", "block")]
    for entry in entries:
        if entry.name not in listed:  # registered by its import, not by the engine: undone after the test
            GRANULARITIES.pop(entry.name, None)
        monkeypatch.setitem(GRANULARITIES, entry.name, entry)
    for name, criterion in list(CRITERIA.items()):
        if tuple(criterion.granularities) == tuple(ALL_GRANULARITIES):
            monkeypatch.setitem(CRITERIA, name, dataclasses.replace(
                criterion, granularities=tuple(criterion.granularities) + tuple(e.name for e in entries)))


def spec_for(criterion: str, granularity: str, sparsity=None, channel_ratio=None, **extra):
    from core.spec import PruneSpec

    kwargs = dict(criterion=criterion, granularity=granularity, sparsity=sparsity, channel_ratio=channel_ratio)
    if criterion in CALIBRATED:
        kwargs.update(CALIBRATED[criterion], calibration_batches=1, calibration_batch_size=2, calibration_data="generated")
    kwargs.update(extra)
    return PruneSpec(**kwargs)


def denoiser_of(pipeline):
    return getattr(pipeline, "unet", None) or pipeline.transformer


def fingerprint(pipeline) -> str:
    """A hash of every tensor of every network in the pipeline (weights and buffers)."""
    digest = hashlib.sha256()
    for name, component in sorted(pipeline.components.items()):
        if isinstance(component, torch.nn.Module):
            for key, tensor in component.state_dict().items():
                digest.update(f"{name}.{key}{tuple(tensor.shape)}".encode())
                digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def prune_or_refuse(pipeline, spec):
    """``("ran", result)`` or ``("refused", message)``; any other exception propagates (a crash)."""
    from core.engine import prune

    try:
        return "ran", prune(pipeline, spec)
    except ValueError as error:
        message = str(error)
        assert message and len(message) < 600 and "\n" not in message.strip(), message
        return "refused", message


def check_pruned(name: str, pipeline, result, granularity: str) -> None:
    """The pruned pipeline is a new object whose denoiser runs in the pipeline's own ``__call__``;
    structural cuts have fewer parameters and head counts consistent with every projection."""
    from core.models import attention_modules
    from core.models.transformer_cuts import check_heads_consistent

    pruned = result.pipeline
    assert pruned is not pipeline and denoiser_of(pruned) is not denoiser_of(pipeline)
    totals = result.report.totals
    assert 0 <= totals["sparsity"] <= 0.95
    if granularity in ("channel", "head", "ffn", "block") and totals["sparsity"] > 0:
        assert totals["params_after"] < totals["params_before"]
    for attention in attention_modules(denoiser_of(pruned)).values():
        check_heads_consistent(attention)
    images = tiny_families.call_pipeline(name, pruned)
    assert torch.isfinite(images).all()


def check_save_load(pipeline, result, directory, expect_plain: bool | None = None) -> None:
    """``PruneResult.save`` + ``load_pipeline`` gives identical samples; tokenizers and text
    encoders travel with it; plain ``from_pretrained`` works where the marker says so."""
    import json

    from core.pipeline import PRUNED_MARKER, load_pipeline, sample_images

    path = result.save(directory / "checkpoint")
    for component, value in pipeline.components.items():
        if value is not None and hasattr(value, "save_pretrained"):
            assert (path / component).is_dir(), component
    assert not list(path.rglob("*.bin")) and not list(path.rglob("*.pt")) and not list(path.rglob("*.pkl"))
    reloaded = load_pipeline(path, device="cpu")
    assert type(reloaded) is type(pipeline)
    before = sample_images(result.pipeline, 2, num_inference_steps=3, seed=5)
    after = sample_images(reloaded, 2, num_inference_steps=3, seed=5)
    assert torch.equal(before, after)
    marker = json.loads((path / PRUNED_MARKER).read_text())
    if expect_plain is not None:
        assert marker["plain_diffusers_loadable"] is expect_plain
    if marker["plain_diffusers_loadable"]:
        from diffusers import DiffusionPipeline

        plain = DiffusionPipeline.from_pretrained(path, local_files_only=True)
        plain.set_progress_bar_config(disable=True)
        assert torch.equal(sample_images(plain, 2, num_inference_steps=3, seed=5), before)
