"""DiT (``DiTPipeline`` / ``DiTTransformer2DModel``) on a tiny random pipeline: class conditioning
and its null class, learned sigma (loss on the first C channels), every criterion x granularity
through the ``prune`` facade (run or refused with a reason), save/load identical, caller untouched."""
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
def dit():
    return tiny_families.build("dit")


def test_classes_null_class_and_learned_sigma_loss(dit):
    adapter = adapter_for(dit)
    assert adapter.name == "dit" and adapter.num_classes(dit) == 1000
    conditioning = adapter.sample_conditioning(dit, 64, torch.Generator().manual_seed(0))
    labels = conditioning["class_labels"]
    assert labels.min() >= 0 and labels.max() < 1000 and len(set(labels.tolist())) > 50  # uniform draws
    assert (conditioning["uncond_class_labels"] == 1000).all()  # the pipeline's null class
    fixed = adapter.sample_conditioning(dit, 3, class_label=7)
    assert (fixed["class_labels"] == 7).all()
    with pytest.raises(ValueError, match="class_label"):
        adapter.sample_conditioning(dit, 3, class_label=1000)
    transformer = dit.transformer
    generator = torch.Generator().manual_seed(1)
    clean, noise = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    timesteps = torch.tensor([10, 900])
    small = {k: v[:2] for k, v in conditioning.items()}
    loss = adapter.denoising_loss(transformer, dit.scheduler, clean, noise, timesteps, small)
    with torch.no_grad():
        noisy = dit.scheduler.add_noise(clean, noise, timesteps)
        output = transformer(hidden_states=noisy, timestep=timesteps, class_labels=small["class_labels"]).sample
    assert output.shape[1] == 8  # learned sigma: 2C outputs
    torch.testing.assert_close(loss, (output[:, :4] - noise).pow(2).flatten(1).mean(1))


@pytest.mark.parametrize("granularity", sorted(GRANULARITIES))
@pytest.mark.parametrize("criterion", CRITERIA)
def test_every_criterion_and_granularity_runs_or_is_refused(dit, criterion, granularity, monkeypatch):
    checks.wired_granularities(monkeypatch)
    try:
        spec = checks.spec_for(criterion, granularity, **GRANULARITIES[granularity])
    except ValueError as error:
        assert criterion == "obs" and granularity == "block", error  # OBS-Diff removes heads and neurons, not blocks
        return
    outcome, value = checks.prune_or_refuse(dit, spec)
    if granularity == "channel":
        assert outcome == "refused" and "residual width" in value
        return
    assert outcome == "ran", value
    checks.check_pruned("dit", dit, value, granularity)


@pytest.mark.parametrize("granularity, plain", [("unstructured", True), ("head", False), ("ffn", False), ("block", True)])
def test_save_load_gives_identical_samples(dit, granularity, plain, tmp_path, monkeypatch):
    checks.wired_granularities(monkeypatch)
    outcome, result = checks.prune_or_refuse(dit, checks.spec_for("magnitude", granularity, **GRANULARITIES[granularity]))
    assert outcome == "ran", result
    checks.check_save_load(dit, result, tmp_path, expect_plain=plain)


def test_callers_pipeline_is_untouched(dit, monkeypatch):
    checks.wired_granularities(monkeypatch)
    before = checks.fingerprint(dit)
    for granularity in ("head", "ffn", "block"):
        assert checks.prune_or_refuse(dit, checks.spec_for("taylor", granularity, **GRANULARITIES[granularity]))[0] == "ran"
    assert checks.fingerprint(dit) == before


def test_classes_come_from_the_pipelines_labels():
    from diffusers import DiTPipeline

    dense = tiny_families.build("dit")
    ten = DiTPipeline(transformer=dense.transformer, vae=dense.vae, scheduler=dense.scheduler,
                      id2label={i: f"class {i}" for i in range(10)})
    adapter = adapter_for(ten)
    assert adapter.num_classes(ten) == 10 and adapter.null_class(ten) == 1000
    labels = adapter.sample_conditioning(ten, 200, torch.Generator().manual_seed(0))["class_labels"]
    assert set(labels.tolist()) == set(range(10))
    assert adapter.num_classes(ten.transformer) == 1000  # a bare network: every row of its label table


def test_block_sparsity_in_the_report_counts_prunable_parameters_only(dit, monkeypatch):
    from core.criteria import prunable_layers

    checks.wired_granularities(monkeypatch)
    outcome, result = checks.prune_or_refuse(dit, checks.spec_for("magnitude", "block", sparsity=0.35))
    assert outcome == "ran", result
    count = lambda model: sum(m.weight.numel() for m in prunable_layers(model).values())  # noqa: E731
    expected = 1 - count(result.pipeline.transformer) / count(dit.transformer)
    assert abs(expected - 1 / 3) < 1e-9  # one of three equal blocks
    assert result.report.totals["sparsity"] == pytest.approx(expected)


def test_unreachable_head_sparsity_suggests_only_granularities_dit_accepts(dit, monkeypatch):
    """DiT refuses ``channel`` (its residual width is kept), so the head refusal must not offer it."""
    checks.wired_granularities(monkeypatch)
    outcome, message = checks.prune_or_refuse(dit, checks.spec_for("magnitude", "head", sparsity=0.9))
    assert outcome == "refused" and "cannot be reached with granularity 'head'" in message
    assert "['unstructured', 'N:M', 'ffn', 'block']" in message and "channel" not in message


def test_obs_head_cut_removes_heads_only_as_other_criteria_do(dit, monkeypatch):
    """``obs`` at granularity ``head`` removes the heads the spec asks for and no FFN neuron: the same
    parameter count as magnitude's head cut (a head cut must not shrink the FFNs too)."""
    checks.wired_granularities(monkeypatch)
    results = {}
    for criterion in ("magnitude", "obs"):
        outcome, results[criterion] = checks.prune_or_refuse(dit, checks.spec_for(criterion, "head", **GRANULARITIES["head"]))
        assert outcome == "ran", results[criterion]
    dense_widths = [block.ff.net[2].in_features for block in dit.transformer.transformer_blocks]
    for result in results.values():
        blocks = result.pipeline.transformer.transformer_blocks
        assert [block.ff.net[2].in_features for block in blocks] == dense_widths
        assert {block.attn1.heads for block in blocks} == {3}  # 4 heads, ratio 0.25
    assert results["obs"].report.totals["params_after"] == results["magnitude"].report.totals["params_after"]


def test_obs_ffn_cut_removes_the_neurons_obs_chose_and_compensates(dit, monkeypatch):
    """``obs`` at granularity ``ffn``: the same neuron count per FFN as magnitude's cut, no head
    removed, and the kept down-projection columns rewritten by OBS compensation (not just cut)."""
    checks.wired_granularities(monkeypatch)
    results = {}
    for criterion in ("magnitude", "obs"):
        outcome, results[criterion] = checks.prune_or_refuse(dit, checks.spec_for(criterion, "ffn", **GRANULARITIES["ffn"]))
        assert outcome == "ran", results[criterion]
    dense_blocks = dit.transformer.transformer_blocks
    obs_blocks = results["obs"].pipeline.transformer.transformer_blocks
    mag_blocks = results["magnitude"].pipeline.transformer.transformer_blocks
    assert [b.ff.net[2].in_features for b in obs_blocks] == [b.ff.net[2].in_features for b in mag_blocks]
    assert all(b.ff.net[2].in_features < d.ff.net[2].in_features for b, d in zip(obs_blocks, dense_blocks))
    assert {b.attn1.heads for b in obs_blocks} == {d.attn1.heads for d in dense_blocks}
    assert results["obs"].report.totals["params_after"] == results["magnitude"].report.totals["params_after"]
    for pruned, dense in zip(obs_blocks, dense_blocks):
        up, down = pruned.ff.net[0].proj.weight, pruned.ff.net[2].weight
        dense_up, dense_down = dense.ff.net[0].proj.weight, dense.ff.net[2].weight
        # each kept neuron's up-projection row is the dense one, unchanged; find which were kept
        kept = [int((dense_up - row).abs().sum(1).argmin()) for row in up]
        assert len(set(kept)) == len(kept)
        torch.testing.assert_close(up, dense_up[kept])
        assert not torch.allclose(down, dense_down[:, kept])  # compensated, not only cut


def test_a_marker_without_component_entries_rebuilds_the_familys_denoiser(dit, tmp_path, monkeypatch):
    """Checkpoints whose marker has only the top-level ``structure`` (no ``components``) load through
    the family's own denoiser attribute (here ``transformer``), not a fixed name."""
    import json

    from core.checkpoint import PRUNED_MARKER
    from core.pipeline import load_pipeline

    checks.wired_granularities(monkeypatch)
    outcome, result = checks.prune_or_refuse(dit, checks.spec_for("magnitude", "head", **GRANULARITIES["head"]))
    assert outcome == "ran", result
    result.save(tmp_path)
    marker_path = tmp_path / PRUNED_MARKER
    marker = json.loads(marker_path.read_text())
    assert marker["family"] == "dit" and "transformer" in marker["components"]
    del marker["components"]
    marker_path.write_text(json.dumps(marker))
    loaded = load_pipeline(str(tmp_path))
    expected = result.pipeline.transformer.state_dict()
    got = loaded.transformer.state_dict()
    assert set(got) == set(expected)
    assert all(torch.equal(got[name], expected[name]) for name in expected)


def test_an_unreachable_head_sparsity_is_refused_before_calibration(dit, monkeypatch):
    """A calibrated criterion refuses an unreachable head target from the structure alone, before
    it spends a calibration pass."""
    import core.engine

    checks.wired_granularities(monkeypatch)

    def no_calibration(*args, **kwargs):
        raise AssertionError("calibration ran before the unreachable target was refused")

    monkeypatch.setattr(core.engine, "calibrate", no_calibration)
    outcome, message = checks.prune_or_refuse(dit, checks.spec_for("taylor", "head", sparsity=0.9))
    assert outcome == "refused" and "cannot be reached with granularity 'head'" in message
