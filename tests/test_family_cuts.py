"""Structural cuts of transformer denoisers (``core/models/transformer_cuts.py``) on the tiny
families: a head / neuron whose output is already zero is removed without changing the output
(so the right rows and columns went), head counts agree with every projection, the pruned
pipeline's own ``__call__`` runs, and block removal reloads with plain ``from_config``."""
import copy

import pytest
import torch

import tiny_families
from core.models import attention_modules
from core.models.transformer_cuts import (
    check_heads_consistent, ffn_layers, head_projections, remove_blocks, remove_ffn_neurons, remove_heads,
    removable_blocks,
)

pytestmark = pytest.mark.usefixtures("one_thread")
TRANSFORMERS = ("dit", "pixart", "sd3", "sd35")


def _denoiser(pipeline):
    return getattr(pipeline, "unet", None) or pipeline.transformer


def _forward(name, model, seed=0):
    """One forward pass with fixed random inputs of the family's conditioning."""
    generator = torch.Generator().manual_seed(seed)
    config = model.config
    sample = torch.randn(2, config.in_channels, config.sample_size, config.sample_size, generator=generator)
    kwargs = dict(timestep=torch.tensor([10, 700]))
    if name == "dit":
        kwargs["class_labels"] = torch.tensor([3, 1000])
    elif name == "pixart":
        kwargs.update(encoder_hidden_states=torch.randn(2, 5, config.caption_channels, generator=generator),
                      encoder_attention_mask=torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]),
                      added_cond_kwargs={"resolution": None, "aspect_ratio": None})
    elif name in ("sd3", "sd35"):
        kwargs.update(encoder_hidden_states=torch.randn(2, 5, config.joint_attention_dim, generator=generator),
                      pooled_projections=torch.randn(2, config.pooled_projection_dim, generator=generator))
    else:
        kwargs["encoder_hidden_states"] = torch.randn(2, 5, config.cross_attention_dim, generator=generator)
    with torch.no_grad():
        return model(sample, **kwargs).sample


def _feed_forwards(model):
    from diffusers.models.attention import FeedForward

    return {n: m for n, m in model.named_modules() if isinstance(m, FeedForward)}


@pytest.mark.parametrize("name", ("sd", "sd2") + TRANSFORMERS)
def test_removing_a_silent_head_keeps_the_output(name):
    model = _denoiser(tiny_families.build(name))
    attentions = attention_modules(model)
    assert attentions
    for attention in attentions.values():  # silence head 1 everywhere: zero the columns that read it
        dim = attention.to_q.out_features // attention.heads
        for linear in head_projections(attention)[1].values():
            linear.weight.data[:, dim:2 * dim] = 0
    before = _forward(name, model)
    for attention in attentions.values():
        heads = attention.heads
        remove_heads(attention, [h for h in range(heads) if h != 1])
        assert attention.heads == heads - 1
        check_heads_consistent(attention)
    torch.testing.assert_close(_forward(name, model), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", TRANSFORMERS)
def test_joint_attention_cuts_all_eight_projections(name):
    model = _denoiser(tiny_families.build(name))
    joint = [a for a in attention_modules(model).values() if getattr(a, "add_q_proj", None) is not None]
    if name in ("sd3", "sd35"):
        assert joint, "SD3 blocks use joint attention"
        last = model.transformer_blocks[-1].attn
        assert last.to_add_out is None  # context_pre_only: seven projections, still cut
        for attention in joint:
            rows, columns = head_projections(attention)
            assert set(rows) == {"to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"}
            expected = {"to_out.0"} if attention is last else {"to_out.0", "to_add_out"}
            assert set(columns) == expected
            remove_heads(attention, [0, 3])
            assert all(l.out_features == 16 for l in rows.values()) and all(l.in_features == 16 for l in columns.values())
        if name == "sd35":  # qk-norm weights are per head_dim and shared: untouched
            assert model.transformer_blocks[0].attn.norm_q.weight.shape == (8,)
            assert model.transformer_blocks[0].attn2 is not None
    else:
        assert not joint
    _forward(name, model)


@pytest.mark.parametrize("name", ("sd",) + TRANSFORMERS)
def test_removing_silent_ffn_neurons_keeps_the_output(name):
    model = _denoiser(tiny_families.build(name))
    ffs = _feed_forwards(model)
    if name in ("sd3",):
        assert any(n.endswith("ff_context") for n in ffs)
    for ff in ffs.values():
        down = ffn_layers(ff)[1]
        down.weight.data[:, ::2] = 0  # every even neuron silent
    before = _forward(name, model)
    for ff in ffs.values():
        up, down, gated = ffn_layers(ff)
        width = down.in_features
        remove_ffn_neurons(ff, range(1, width, 2))
        assert down.in_features == width // 2 and up.out_features == (2 if gated else 1) * (width // 2)
    torch.testing.assert_close(_forward(name, model), before, rtol=1e-5, atol=1e-5)
    assert name != "sd" or ffn_layers(next(iter(ffs.values())))[2], "SD's GEGLU is a gated FFN"


@pytest.mark.parametrize("name", TRANSFORMERS)
def test_block_removal_reloads_with_plain_from_config(name, tmp_path):
    pipeline = tiny_families.build(name)
    model = copy.deepcopy(_denoiser(pipeline))
    allowed = removable_blocks(model)
    assert allowed == ([0, 1] if name.startswith("sd3") else [0, 1, 2])
    remove_blocks(model, [1, 2])
    assert model.config.num_layers == 2 and len(model.transformer_blocks) == 2
    if name == "sd35":
        assert tuple(model.config.dual_attention_layers) == ()  # block 0 (dual) was removed
    out = _forward(name, model)
    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path)
    torch.testing.assert_close(_forward(name, reloaded), out)
    if name.startswith("sd3"):
        with pytest.raises(ValueError, match="context_pre_only"):
            remove_blocks(copy.deepcopy(_denoiser(pipeline)), [0, 1])
    with pytest.raises(ValueError, match="keep"):
        remove_blocks(model, [])


@pytest.mark.parametrize("name", TRANSFORMERS)
def test_pipeline_call_runs_with_every_cut(name):
    pipeline = tiny_families.build(name)
    model = copy.deepcopy(_denoiser(pipeline))
    for attention in attention_modules(model).values():
        remove_heads(attention, [0, 2])
    for ff in _feed_forwards(model).values():
        remove_ffn_neurons(ff, range(0, ffn_layers(ff)[1].in_features, 3))
    remove_blocks(model, removable_blocks(model)[1:] + [len(model.transformer_blocks) - 1] if name.startswith("sd3") else [0, 2])
    components = dict(pipeline.components, transformer=model)
    pruned = type(pipeline)(**components)
    pruned.set_progress_bar_config(disable=True)
    images = tiny_families.call_pipeline(name, pruned)
    assert torch.isfinite(images).all()
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in pipeline.transformer.parameters())


def test_bad_indices_are_refused():
    model = _denoiser(tiny_families.build("dit"))
    attention = model.transformer_blocks[0].attn1
    with pytest.raises(ValueError, match="heads"):
        remove_heads(attention, [])
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        remove_heads(attention, [0, 4])
    with pytest.raises(ValueError, match="FFN"):
        remove_ffn_neurons(model.transformer_blocks[0].ff, [10 ** 6])


def test_block_granularity_records_the_renumbering(monkeypatch):
    from types import SimpleNamespace

    import family_checks
    from core.criteria import prunable_layers

    family_checks.wired_granularities(monkeypatch)  # imports core.granularities.block without registering it for good
    from core.granularities.block import apply_block

    model = copy.deepcopy(_denoiser(tiny_families.build("dit")))
    dense = {name: module.weight.clone() for name, module in prunable_layers(model).items()}
    scores = {name: torch.full_like(w, 5.0) for name, w in dense.items()}
    for name in scores:
        if name.startswith("transformer_blocks.1."):
            scores[name].zero_()  # block 1 is the least important
    outcome = apply_block(model, scores, SimpleNamespace(sparsity=0.3, channel_ratio=None))
    assert outcome.notes["removed_blocks"] == ["transformer_blocks.1"] and len(model.transformer_blocks) == 2
    renamed = outcome.notes["renamed_layers"]
    assert renamed["transformer_blocks.1.attn1.to_q"] == "transformer_blocks.2.attn1.to_q"
    for new, old in renamed.items():
        if new in prunable_layers(model):
            assert torch.equal(dict(model.named_modules())[new].weight, dense[old])


def test_structural_refusals_suggest_only_what_the_model_accepts():
    """``ffn`` on a UNet without FeedForward blocks names the granularities this UNet accepts
    (its family's cuts and the structural checks), not a fixed list."""
    from diffusers import UNet2DModel

    from core.granularities import GRANULARITIES
    from core.spec import PruneSpec

    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(16, 32),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)
    with pytest.raises(ValueError) as caught:
        GRANULARITIES["ffn"].check(unet, PruneSpec(criterion="magnitude", granularity="ffn", sparsity=0.3))
    message = str(caught.value)
    assert "allowed: ['unstructured', 'N:M', 'channel'" in message and "'ffn'" not in message.split("allowed:")[1]
