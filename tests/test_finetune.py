"""Recovery fine-tuning (core/finetune.py): masks kept, exact resume, NiCI distillation, l1."""
import pytest
import torch
import torch.nn.functional as F

from core.finetune import finetune, masks_from_zeros, nici_distillation_loss, step_batch


def tiny_pipeline():
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=4, norm_num_groups=4,
    ).eval()
    return DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000))


def sparse_pipeline():
    """Half of the weights of two layers zeroed, like an unstructured pruning result."""
    pipeline = tiny_pipeline()
    unet = pipeline.unet
    with torch.no_grad():
        unet.down_blocks[0].resnets[0].conv1.weight[:, ::2] = 0
        attention = unet.down_blocks[1].attentions[0].to_q.weight
        attention.view(-1)[::2] = 0
    return pipeline


IMAGES = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_distillation_loss_matches_nici_formula():
    student = torch.randn(2, 3, 4, 4)
    teacher = torch.randn(2, 3, 4, 4)
    assert float(nici_distillation_loss(teacher, teacher)) == pytest.approx(0.0, abs=1e-6)
    log_s = F.log_softmax(student.reshape(6, 16) / 2.0, dim=-1)
    log_t = F.log_softmax(teacher.reshape(6, 16) / 2.0, dim=-1)
    expected = 50 * 4 * (log_t.exp() * (log_t - log_s)).sum() / 6
    assert float(nici_distillation_loss(student, teacher, alpha=50, tau=2.0)) == pytest.approx(float(expected), rel=1e-5)


def test_step_batches_depend_only_on_seed_and_step():
    first = step_batch(IMAGES, 4, 1000, seed=3, step=7)
    again = step_batch(IMAGES, 4, 1000, seed=3, step=7)
    other = step_batch(IMAGES, 4, 1000, seed=3, step=8)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[2], other[2])


def test_finetune_keeps_masks_and_does_not_touch_the_input():
    pipeline = sparse_pipeline()
    masks = masks_from_zeros(pipeline.unet)
    assert set(masks) == {"down_blocks.0.resnets.0.conv1", "down_blocks.1.attentions.0.to_q"}
    before = {k: v.clone() for k, v in pipeline.unet.state_dict().items()}
    result = finetune(pipeline, 3, 1e-2, 4, images=IMAGES, ema=0.5, l1_penalty=1e-4)
    modules = dict(result.pipeline.unet.named_modules())
    for name, mask in masks.items():
        weight = modules[name].weight
        assert torch.all(weight[~mask] == 0)
        assert torch.all(weight[mask] != 0)
    assert all(torch.equal(before[k], v) for k, v in pipeline.unet.state_dict().items())
    changed = [k for k, v in result.pipeline.unet.state_dict().items() if not torch.equal(before[k], v)]
    assert changed
    assert list(result.losses.step) == [1, 2, 3] and (result.losses.l1 > 0).all()


def test_regrowth_revives_pruned_weights():
    pipeline = sparse_pipeline()
    result = finetune(pipeline, 2, 1e-2, 4, images=IMAGES, regrowth=0.2, seed=1)
    mask = result.masks["down_blocks.0.resnets.0.conv1"]
    revived = mask[:, ::2]
    assert 0 < float(revived.float().mean()) < 1


def test_resume_after_interruption_gives_the_uninterrupted_weights(tmp_path):
    pipeline = sparse_pipeline()
    options = dict(images=IMAGES, ema=0.9, distill=True, teacher=tiny_pipeline(), seed=5)
    uninterrupted = finetune(pipeline, 4, 1e-3, 4, **options)

    class Interrupt(Exception):
        pass

    def stop_after_three(fraction, message):
        if fraction >= 0.75:
            raise Interrupt

    with pytest.raises(Interrupt):
        finetune(pipeline, 4, 1e-3, 4, output_dir=tmp_path, checkpoint_every=2, progress=stop_after_three, **options)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2"]
    resumed = finetune(pipeline, 4, 1e-3, 4, output_dir=tmp_path, checkpoint_every=2, **options)
    assert resumed.resumed_from == 2
    expected = uninterrupted.pipeline.unet.state_dict()
    for name, value in resumed.pipeline.unet.state_dict().items():
        assert torch.equal(value, expected[name]), name
    assert resumed.losses.equals(uninterrupted.losses)
    assert (resumed.losses.distillation.iloc[1:] > 0).all()

    # the checkpoint is a loadable pipeline holding the EMA weights
    from core.pipeline import load_pipeline

    loaded = load_pipeline(tmp_path / "checkpoint-4", device="cpu")
    for name, value in loaded.unet.state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_bad_arguments_are_refused():
    pipeline = tiny_pipeline()
    with pytest.raises(ValueError, match="teacher"):
        finetune(pipeline, 1, 1e-3, 2, images=IMAGES, distill=True)
    with pytest.raises(ValueError, match="ema"):
        finetune(pipeline, 1, 1e-3, 2, images=IMAGES, ema=1.5)
    with pytest.raises(ValueError, match="steps"):
        finetune(pipeline, -1, 1e-3, 2, images=IMAGES)
    with pytest.raises(ValueError, match="PruneResult"):
        finetune(object(), 1, 1e-3, 2)


# ----------------------------------------------------------------------------------------------
# masks="auto" follows the granularity registry's structural flag
# ----------------------------------------------------------------------------------------------
def pruned_dit(granularity: str, sparsity: float):
    """The tiny DiT (tests/tiny_families.py) cut by magnitude at ``granularity``, with its pixels."""
    import tiny_families

    from core.engine import prune
    from core.pipeline import adapter_of
    from core.spec import PruneSpec

    dit = tiny_families.build("dit")
    result = prune(dit, PruneSpec(criterion="magnitude", granularity=granularity, sparsity=sparsity, device="cpu"))
    channels, size, _ = adapter_of(dit).image_shape(dit)
    pixels = torch.rand(4, channels, size, size, generator=torch.Generator().manual_seed(2)) * 2 - 1
    return result, pixels, torch.arange(4)


@pytest.mark.parametrize("granularity, sparsity", [("ffn", 0.2), ("block", 0.35)])
def test_auto_masks_freeze_nothing_after_a_structural_cut(granularity, sparsity):
    """After an ``ffn`` or ``block`` cut the removed units are gone: a weight that is exactly zero in
    what is left is an ordinary weight, and a fine-tuning step updates it."""
    from core.criteria import prunable_layers
    from core.granularities import GRANULARITIES

    assert GRANULARITIES[granularity].structural
    result, pixels, labels = pruned_dit(granularity, sparsity)
    layers = prunable_layers(result.pipeline.transformer)
    name = next(iter(layers))
    with torch.no_grad():
        layers[name].weight[:2, :4] = 0
    tuned = finetune(result, 1, 1e-2, 2, images=pixels, labels=labels, seed=0)
    assert tuned.masks == {}
    updated = dict(tuned.pipeline.transformer.named_modules())[name].weight[:2, :4]
    assert bool((updated != 0).all()), updated


def test_auto_masks_keep_the_zeros_of_an_unstructured_cut():
    result, pixels, labels = pruned_dit("unstructured", 0.5)
    zeros = masks_from_zeros(result.pipeline.transformer)
    assert zeros
    before = {name: weight.clone() for name, weight in result.pipeline.transformer.state_dict().items()}
    tuned = finetune(result, 1, 1e-2, 2, images=pixels, labels=labels, seed=0)
    assert set(tuned.masks) == set(zeros)
    modules = dict(tuned.pipeline.transformer.named_modules())
    for name, mask in zeros.items():
        weight = modules[name].weight
        assert bool((weight[~mask] == 0).all()), name
        assert not torch.equal(weight, before[f"{name}.weight"]), name  # the kept weights did train
