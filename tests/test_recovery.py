"""``core.recovery``: the data a recovery trains on, its checks, its measured cost, and the
sweep's recovery budget (same recovery for every row, part of the row's key)."""
import numpy as np
import pytest
import torch
from PIL import Image

from core.pipeline import load_pipeline
from core.recovery import (GENERATED_RECOVERY_IMAGES, RECOVERY_DEFAULTS, check_recovery, describe_recovery,
                           estimate_recovery, recovery_images)
from core.spec import PruneSpec
from core.store import ResultStore
from core.sweep import sweep

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dense(tiny_model):
    return load_pipeline(tiny_model, device="cpu")


@pytest.mark.parametrize("args, field", [
    ((-1, 1e-4, 8, "generated"), "recovery steps"), ((1.5, 1e-4, 8, "generated"), "recovery steps"),
    ((10, 0, 8, "generated"), "recovery learning rate"), ((10, 1.0, 8, "generated"), "recovery learning rate"),
    ((10, 1e-4, 0, "generated"), "recovery batch size"), ((10, 1e-4, True, "generated"), "recovery batch size"),
    ((10, 1e-4, 8, "nowhere"), "recovery data must be one of"), ((10, 1e-4, 8, ""), "recovery data must be one of"),
])
def test_check_recovery_names_the_field(args, field):
    with pytest.raises(ValueError, match=field):
        check_recovery(*args)


def test_defaults_are_valid():
    check_recovery(RECOVERY_DEFAULTS["steps"], RECOVERY_DEFAULTS["lr"], RECOVERY_DEFAULTS["batch_size"],
                   "fashion-mnist-train")


def test_recovery_images_from_every_source(dense, tmp_path):
    generated, label = recovery_images(dense, "generated", seed=0)
    assert generated.shape == (GENERATED_RECOVERY_IMAGES, 1, 8, 8) and label.startswith("generated")
    assert float(generated.min()) >= -1 and float(generated.max()) <= 1
    again, _ = recovery_images(dense, "generated", seed=0)
    assert torch.equal(generated, again)  # same seed, same data
    with pytest.raises(ValueError, match="recovery data 'fashion-mnist-train' holds"):
        recovery_images(dense, "fashion-mnist-train")  # 28x28 shipped images, an 8x8 model
    for index in range(2):
        Image.fromarray(np.full((20, 20, 3), 100 * index, dtype=np.uint8)).save(tmp_path / f"{index}.png")
    folder, label = recovery_images(dense, str(tmp_path))
    assert folder.shape == (2, 1, 8, 8) and label == "image folder (2 images)"


def test_shipped_training_images_fit_the_embedded_model():
    images, label = recovery_images(load_pipeline(), "fashion-mnist-train")
    assert images.shape[1:] == (1, 28, 28) and len(images) >= 1000 and "shipped" in label


def test_estimate_is_a_measured_rate_times_the_steps(dense):
    small = estimate_recovery(dense, 10, 4, distill=False)
    large = estimate_recovery(dense, 1000, 4, distill=False)
    assert small["seconds_per_step"] == large["seconds_per_step"] > 0  # measured once, cached
    assert large["seconds"] == pytest.approx(100 * small["seconds"])
    assert "1,000 steps" in describe_recovery(large) and "recovery off" in describe_recovery({})


def test_sweep_applies_the_same_recovery_to_every_row_and_keys_it(dense, tmp_path):
    store = ResultStore(tmp_path / "store")
    specs = [PruneSpec(criterion=c, granularity="channel", sparsity=0.3) for c in ("magnitude", "random")]
    settings = dict(num_samples=4, num_inference_steps=2, seed=0, metrics=("kid",), reference="dense")
    recovery = dict(steps=2, batch_size=4, data="generated")
    tuned = sweep(dense, specs, settings, store=store, recovery=recovery)
    assert list(tuned["finetune_steps"]) == [2, 2] and not tuned["cached"].any()
    assert (tuned["finetune_wall_time_s"] > 0).all()
    oneshot = sweep(dense, specs, settings, store=store)
    assert list(oneshot["finetune_steps"]) == [0, 0] and not oneshot["cached"].any()  # keyed apart
    assert set(oneshot["key"]).isdisjoint(tuned["key"])
    assert list(oneshot["kid"]) != list(tuned["kid"])
    again = sweep(dense, specs, settings, store=store, recovery=recovery)
    assert again["cached"].all() and list(again["kid"]) == list(tuned["kid"])
    with pytest.raises(ValueError, match="recovery has unknown settings"):
        sweep(dense, specs, settings, store=store, recovery=dict(steps=2, epochs=3))


def test_class_conditional_recovery_trains_each_image_with_its_own_class():
    """A class-conditional model's generated recovery images come with their classes (every class
    equally often) and fine-tuning feeds each image's own class to the denoiser, not a random one."""
    import tiny_families
    from core.finetune import finetune, step_batch
    from core.recovery import recovery_data

    dit = tiny_families.build("dit")
    images, labels, description = recovery_data(dit, "generated", seed=0)
    from core.models import adapter_for

    classes = adapter_for(dit).num_classes(dit)
    assert labels is not None and len(labels) == len(images) == GENERATED_RECOVERY_IMAGES
    assert labels.tolist() == [i % classes for i in range(len(labels))] and "classes equally" in description
    # the denoiser sees each step's images' labels
    labels = torch.arange(8) % 3 + 5
    pixels = images[:8]
    seen = []
    original_forward = type(dit.transformer).forward

    def recording_forward(self, *args, **kwargs):
        seen.append(kwargs["class_labels"].clone())
        return original_forward(self, *args, **kwargs)

    type(dit.transformer).forward = recording_forward
    try:
        finetune(dit, 2, batch_size=4, images=pixels, labels=labels, seed=3)
    finally:
        type(dit.transformer).forward = original_forward
    expected = [labels[step_batch(pixels, 4, dit.scheduler.config.num_train_timesteps, 3, step)[0]] for step in range(2)]
    assert len(seen) == 2 and all(torch.equal(got.cpu(), want) for got, want in zip(seen, expected))
    with pytest.raises(ValueError, match="class_label must be one integer or 8 integers"):
        finetune(dit, 1, batch_size=4, images=pixels, labels=torch.full((8,), classes))
    with pytest.raises(ValueError, match="one class per image"):
        finetune(dit, 1, batch_size=4, images=pixels, labels=labels[:3])


def test_labels_are_refused_for_a_model_without_classes(dense):
    from core.finetune import finetune

    config = dense.unet.config
    images = torch.zeros(4, config.in_channels, config.sample_size, config.sample_size)
    with pytest.raises(ValueError, match="labels apply to class-conditional models only"):
        finetune(dense, 1, batch_size=2, images=images, labels=torch.zeros(4, dtype=torch.long))


def test_shipped_training_images_carry_their_classes_for_the_embedded_dit():
    from core.data import CALIBRATION_IMAGES, FASHION_MNIST_DIR, load_fashion_mnist_labels
    from core.recovery import recovery_data

    dit = load_pipeline("dit-fashion-mnist")
    images, labels, description = recovery_data(dit, "fashion-mnist-train")
    assert labels is not None and len(labels) == len(images) == 1000 and "each with its class" in description
    assert sorted(set(labels.tolist())) == list(range(10))
    # the shipped labels are the Debian package's labels of the shipped subset (checked where the
    # package is installed, as on the machine that wrote them; the rest of the test runs everywhere)
    if (FASHION_MNIST_DIR / "train-labels-idx1-ubyte.gz").exists():
        import numpy as np

        index = np.load(CALIBRATION_IMAGES)["index"]
        assert labels.tolist() == load_fashion_mnist_labels("train")[index].tolist()
    # the unconditional default model has no classes
    _, none, _ = recovery_data(load_pipeline(), "fashion-mnist-train")
    assert none is None
