"""The second embedded model (``assets/dit-fashion-mnist``): a class-conditional latent DiT.

Loads offline by name, samples every class deterministically at the reference geometry (28x28,
the 32x32 padding of its training images cropped back), and prunes with every granularity it
supports (small settings); channel is refused with its reason (the residual width).
"""
import json

import pytest
import torch

from core import PruneSpec, load_pipeline, prune, sample_images
from core.default_model import EMBEDDED_MODELS

pytestmark = pytest.mark.usefixtures("one_thread")
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@pytest.fixture(scope="module")
def dit():
    return load_pipeline("dit-fashion-mnist", device="cpu")


def test_loads_by_name_with_its_classes_and_shape(dit):
    assert type(dit).__name__ == "DiTPipeline"
    config = dit.transformer.config
    assert config.num_layers >= 6 and config.num_attention_heads >= 4
    assert config.num_embeds_ada_norm == 1000  # the pipeline's hard-coded null class
    assert dit.labels == {name: index for index, name in enumerate(CLASS_NAMES)} or \
        sorted(dit.labels.values()) == list(range(10))
    training = json.loads((EMBEDDED_MODELS["dit-fashion-mnist"][0] / "TRAINING.json").read_text())
    assert training["dit"]["steps"] > 0 and training["vae"]["steps"] > 0
    # the default model is unchanged by the registry
    assert type(load_pipeline(device="cpu")).__name__ == "DDPMPipeline"


def test_samples_each_class_deterministically_at_the_reference_geometry(dit):
    per_class = []
    for label in range(10):
        first = sample_images(dit, 2, 4, seed=3, class_label=label)
        again = sample_images(dit, 2, 4, seed=3, class_label=label)
        assert first.shape == (2, 1, 28, 28)
        assert torch.equal(first, again)
        assert first.min() >= -1 and first.max() <= 1
        per_class.append(first)
    # different classes from the same noise give different images
    assert not torch.allclose(per_class[1], per_class[7])


def test_the_pipelines_own_call_gives_the_training_geometry(dit):
    out = dit(class_labels=[1], num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert out.shape == (1, 32, 32, 1)  # diffusers' own __call__ is untouched: 32x32 with the padding


@pytest.mark.parametrize("granularity, sparsity", [
    ("unstructured", 0.3), ("2:4", None), ("head", 0.25), ("ffn", 0.3), ("block", 0.3),
])
def test_prunes_with_every_supported_granularity(dit, granularity, sparsity):
    before = {name: tensor.clone() for name, tensor in dit.transformer.state_dict().items()}
    result = prune(dit, PruneSpec(criterion="magnitude", granularity=granularity, sparsity=sparsity, seed=0))
    totals = result.report.totals
    assert totals["sparsity"] > 0.1
    if granularity in ("head", "ffn", "block"):
        assert totals["params_after"] < totals["params_before"]
    images = sample_images(result.pipeline, 2, 3, seed=0, class_label=0)
    assert images.shape == (2, 1, 28, 28) and torch.isfinite(images).all()
    after = dit.transformer.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)  # the caller's model untouched


def test_pruned_and_reloaded_pipelines_keep_the_ten_trained_classes(dit, tmp_path):
    from core.models import adapter_for

    adapter = adapter_for(dit)
    assert adapter.num_classes(dit) == adapter.num_classes(dit.transformer) == 10
    result = prune(dit, PruneSpec(criterion="magnitude", granularity="unstructured", sparsity=0.3))
    assert adapter.num_classes(result.pipeline) == 10  # not the 1000 rows of the label table
    reloaded = load_pipeline(str(result.save(tmp_path / "pruned")), device="cpu")
    assert adapter.num_classes(reloaded) == 10 and reloaded.labels["Trouser"] == 1
    conditioning = adapter.sample_conditioning(result.pipeline.transformer, 256, torch.Generator().manual_seed(0))
    assert int(conditioning["class_labels"].max()) < 10


def test_channel_is_refused_with_its_reason(dit):
    with pytest.raises(ValueError, match="residual"):
        prune(dit, PruneSpec(criterion="magnitude", granularity="channel", sparsity=0.3))
