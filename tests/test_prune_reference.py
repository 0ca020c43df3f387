"""Pruning keeps its results while its memory use changes: every criterion x granularity on the
tiny pipeline of each family gives the masks and kept shapes recorded in
``tests/data/prune_structure.json`` (the zero pattern and shape of every weight of the pruned
denoiser, hashed; refusals by their message). The file was written by the engine that held a
float32 score per weight and sorted each layer in full; the engine that scores one layer at a time
(``core.criteria.scores.LayerScores``), reduces channel scores per layer and selects by radix must
reproduce it. Regenerate only for a deliberate change of results: ``python tests/test_prune_reference.py``.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch

import family_checks
import tiny_families

REFERENCE = Path(__file__).parent / "data" / "prune_structure.json"
CRITERIA = ("random", "magnitude", "taylor", "nici", "l1", "gradflow", "obs")
GRANULARITIES = {
    "ddpm": [("unstructured", 0.5), ("2:4", None), ("channel", 0.3)],
    "sd": [("unstructured", 0.5), ("channel", 0.3), ("head", 0.3)],
    "dit": [("unstructured", 0.5), ("2:4", None), ("head", 0.3), ("ffn", 0.3), ("block", 0.5)],
    "pixart": [("unstructured", 0.5), ("head", 0.3), ("ffn", 0.3)],
    "sd3": [("unstructured", 0.5), ("ffn", 0.3)],
}

pytestmark = pytest.mark.usefixtures("one_thread")


def build(family: str):
    if family == "ddpm":
        from diffusers import DDPMPipeline, DDPMScheduler

        return DDPMPipeline(unet=tiny_families.attention_unet(), scheduler=DDPMScheduler(num_train_timesteps=1000))
    return tiny_families.build(family)


def structure(module) -> str:
    """Shapes and zero pattern of every weight: the masks and the kept channels, not float rounding."""
    digest = hashlib.sha256()
    for key, tensor in module.state_dict().items():
        digest.update(f"{key}{tuple(tensor.shape)}".encode())
        if key.endswith("weight"):
            digest.update((tensor.detach().cpu() != 0).contiguous().view(-1).numpy().tobytes())
    return digest.hexdigest()[:16]


def outcomes(family: str) -> dict:
    from core.engine import clear_calibration_cache, prune

    found = {}
    for criterion in CRITERIA:
        for granularity, sparsity in GRANULARITIES[family]:
            clear_calibration_cache()
            key = f"{family}|{criterion}|{granularity}"
            try:
                spec = family_checks.spec_for(criterion, granularity, sparsity=sparsity)
                result = prune(build(family), spec)
            except ValueError as error:
                found[key] = "refused: " + str(error)[:80]
                continue
            found[key] = structure(family_checks.denoiser_of(result.pipeline))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("family", list(GRANULARITIES))
def test_masks_and_kept_shapes_equal_the_reference(family):
    expected = {key: value for key, value in json.loads(REFERENCE.read_text()).items() if key.startswith(family + "|")}
    assert len(expected) == len(CRITERIA) * len(GRANULARITIES[family])
    found = outcomes(family)
    assert {k: v for k, v in found.items() if v != expected[k]} == {}
    assert sum(not v.startswith("refused") for v in found.values()) >= len(found) // 2  # most cases really prune


if __name__ == "__main__":  # regenerate the reference (a deliberate change of results)
    torch.set_num_threads(1)
    table = {}
    for name in GRANULARITIES:
        table.update(outcomes(name))
    REFERENCE.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(table)} cases to {REFERENCE}", file=sys.stderr)
