"""PixArt-alpha (``PixArtAlphaPipeline`` / ``PixArtTransformer2DModel``) on a tiny random pipeline:
T5 text with its attention mask and ``added_cond_kwargs`` by keyword, learned sigma, every criterion
x granularity through the ``prune`` facade (run or refused with a reason), save/load identical."""
import pytest
import torch

import family_checks as checks
import tiny_families
from core.models import adapter_for

pytestmark = pytest.mark.usefixtures("one_thread")
GRANULARITIES = {
    "unstructured": dict(sparsity=0.3), "2:4": dict(), "channel": dict(sparsity=0.3),
    "head": dict(sparsity=None, channel_ratio=0.25), "ffn": dict(sparsity=0.2), "block": dict(sparsity=0.35),
}
CRITERIA = ("random", "magnitude", "taylor", "nici", "l1", "gradflow", "obs")


@pytest.fixture(scope="module")
def pixart():
    return tiny_families.build("pixart")


def test_text_conditioning_with_mask_by_keyword(pixart):
    adapter = adapter_for(pixart)
    assert adapter.name == "pixart"
    conditioning = adapter.sample_conditioning(pixart, 2, torch.Generator().manual_seed(0))
    mask = conditioning["encoder_attention_mask"]
    assert mask.shape == conditioning["encoder_hidden_states"].shape[:2] and 0 < mask.sum() < mask.numel()
    seen = {}
    handle = pixart.transformer.register_forward_pre_hook(lambda m, a, k: seen.update(k) or None, with_kwargs=True)
    try:
        adapter.predict(pixart.transformer, torch.zeros(2, 4, 8, 8), torch.tensor([3, 4]), conditioning)
    finally:
        handle.remove()
    assert set(seen) == {"hidden_states", "timestep", "encoder_hidden_states", "encoder_attention_mask", "added_cond_kwargs"}
    # the mask matters: masking every caption token but the first changes the prediction
    masked = dict(conditioning, encoder_attention_mask=torch.zeros_like(mask).index_fill_(1, torch.tensor([0]), 1))
    with torch.no_grad():
        one = adapter.predict(pixart.transformer, torch.zeros(2, 4, 8, 8), torch.tensor([3, 4]), conditioning)
        two = adapter.predict(pixart.transformer, torch.zeros(2, 4, 8, 8), torch.tensor([3, 4]), masked)
    assert not torch.allclose(one, two)


@pytest.mark.parametrize("granularity", sorted(GRANULARITIES))
@pytest.mark.parametrize("criterion", CRITERIA)
def test_every_criterion_and_granularity_runs_or_is_refused(pixart, criterion, granularity, monkeypatch):
    checks.wired_granularities(monkeypatch)
    try:
        spec = checks.spec_for(criterion, granularity, **GRANULARITIES[granularity])
    except ValueError as error:
        assert criterion == "obs" and granularity == "block", error  # OBS-Diff removes heads and neurons, not blocks
        return
    outcome, value = checks.prune_or_refuse(pixart, spec)
    if granularity == "channel":
        assert outcome == "refused" and "residual width" in value
        return
    assert outcome == "ran", value
    checks.check_pruned("pixart", pixart, value, granularity)


@pytest.mark.parametrize("granularity, plain", [("unstructured", True), ("head", False), ("block", True)])
def test_save_load_gives_identical_samples(pixart, granularity, plain, tmp_path, monkeypatch):
    checks.wired_granularities(monkeypatch)
    outcome, result = checks.prune_or_refuse(pixart, checks.spec_for("magnitude", granularity, **GRANULARITIES[granularity]))
    assert outcome == "ran", result
    checks.check_save_load(pixart, result, tmp_path, expect_plain=plain)
    assert (tmp_path / "checkpoint" / "tokenizer").is_dir() and (tmp_path / "checkpoint" / "text_encoder").is_dir()


def test_callers_pipeline_is_untouched(pixart, monkeypatch):
    checks.wired_granularities(monkeypatch)
    before = checks.fingerprint(pixart)
    assert checks.prune_or_refuse(pixart, checks.spec_for("taylor", "head", **GRANULARITIES["head"]))[0] == "ran"
    assert checks.fingerprint(pixart) == before
