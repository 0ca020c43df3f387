"""Bad inputs found by sending a few hundred of them to the API: each is a short
``ValueError`` naming the field, raised before any work starts, and the CLI prints one line and
no traceback for them."""
import json
import time

import pytest
import torch

from core.cli import main
from core.engine import prune
from core.evaluate import evaluate
from core.pipeline import load_pipeline
from core.spec import PruneSpec

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tiny_model):
    return load_pipeline(tiny_model, device="cpu")


@pytest.mark.parametrize("kwargs, field", [
    (dict(criterion="taylor", calibration_batch_size=10**9), "calibration_batch_size"),
    (dict(criterion="taylor", calibration_batches=10**6), "calibration_batches"),
    (dict(criterion="taylor", calibration_batches=1000, calibration_batch_size=1000), "calibration_batches x"),
    (dict(seed=2**64), "seed"),
    (dict(seed=True), "seed"),
    (dict(criterion="nici", schedule_params={"interval_weights": 5}), "interval_weights"),
    (dict(criterion="nici", schedule_params={"interval_weights": [0, 0, 0, 0]}), "interval_weights"),
    (dict(criterion="obs", schedule_params={"w_min": 0, "w_max": 0}), "w_max and w_min"),
    (dict(criterion="l1", criterion_params={"alpha": 0, "beta": 0}), "alpha and beta"),
    (dict(granularity="1:32", sparsity=None), "1:32"),
    (dict(granularity="1:1000", sparsity=None), "M <= 64"),
    (dict(granularity="31:32", sparsity=None, criterion="magnitude", components=[]), "components"),
    (dict(components=("unet", "unet")), "components"),
    (dict(components=("",)), "components"),
])
def test_spec_refuses_before_any_work(kwargs, field):
    started = time.perf_counter()
    with pytest.raises(ValueError, match=field) as error:
        PruneSpec(**kwargs)
    assert time.perf_counter() - started < 1.0 and "\n" not in str(error.value) and len(str(error.value)) < 300


def test_mps_refused_where_unsupported():
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    with pytest.raises(ValueError, match="device 'mps'"):
        PruneSpec(device="mps")


@pytest.mark.parametrize("call, field", [
    (lambda p: evaluate(p, 10**9, metrics=("macs",)), "num_samples"),
    (lambda p: evaluate(p, 2, metrics=("latency",), latency_batch_size=10**9), "latency_batch_size"),
    (lambda p: evaluate(p, 4, metrics=("kid",), kid_subsets=10**9), "kid_subsets"),
    (lambda p: evaluate(p, 4, metrics=("kid",), reference=""), "reference"),
    (lambda p: evaluate(p, 4, metrics=None), "metrics"),
    (lambda p: evaluate(None, 4, metrics=("macs",)), "pipeline"),
    (lambda p: evaluate(p, 4, metrics=("latency",), dense_pipeline="x"), "dense_pipeline"),
    (lambda p: evaluate(p, 4, metrics=("macs",), seed=2**64), "seed"),
    (lambda p: evaluate(p, 4, num_inference_steps=5000, metrics=("macs",)), "num_inference_steps"),
])
def test_evaluate_refuses_before_any_work(tiny, call, field):
    started = time.perf_counter()
    with pytest.raises(ValueError, match=field) as error:
        call(tiny)
    assert time.perf_counter() - started < 2.0 and "\n" not in str(error.value)


@pytest.mark.parametrize("source, message", [
    ("a" * 300, "neither an existing directory nor a hub id"),
    ("", "non-empty"),
    ("x" * 5000, "at most"),
])
def test_load_pipeline_refuses_bad_sources(source, message):
    with pytest.raises(ValueError, match=message):
        load_pipeline(source, device="cpu")


def test_corrupt_images_are_refused_naming_the_file(tiny, tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("L", (8, 8)).save(folder / "good.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    spec = PruneSpec(criterion="taylor", calibration_data=str(folder), calibration_batch_size=2,
                     schedule="custom", schedule_params={"timesteps": [[5, 1.0]]})
    with pytest.raises(ValueError, match="broken.png"):
        prune(tiny, spec)
    with pytest.raises(ValueError, match="broken.png"):
        evaluate(tiny, 4, num_inference_steps=1, metrics=("kid",), reference=str(folder))


def test_damaged_checkpoints_are_refused(tiny, tmp_path):
    result = prune(tiny, PruneSpec(criterion="magnitude", granularity="channel", sparsity=0.3))
    folder = result.save(tmp_path / "pruned")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="safetensors"):
        load_pipeline(str(folder), device="cpu")
    folder = result.save(tmp_path / "pruned-2")
    (folder / "unet" / "config.json").unlink()
    with pytest.raises(ValueError, match="config.json"):
        load_pipeline(str(folder), device="cpu")


def test_save_refuses_an_existing_file_and_an_unwritable_path(tiny, tmp_path):
    result = prune(tiny, PruneSpec(criterion="magnitude", sparsity=0.2))
    target = tmp_path / "file.txt"
    target.write_text("keep me")
    with pytest.raises(ValueError, match="existing file"):
        result.save(target)
    assert target.read_text() == "keep me"
    with pytest.raises(ValueError, match="cannot be written"):
        result.save(target / "below-a-file")
    with pytest.raises(ValueError, match="cannot be written"):
        result.save("/proc/diffprune-cannot-write-here")


@pytest.mark.parametrize("argv, message", [
    (["prune", "--granularity", "1:32"], "1:32"),
    (["prune", "--criterion", "nici", "--schedule-params", json.dumps({"interval_weights": 5})], "interval_weights"),
    (["prune", "--criterion", "taylor", "--calibration-batch-size", str(10**9)], "calibration_batch_size"),
    (["prune", "--seed", str(2**64)], "seed"),
    (["prune", "--components", "unet,unet"], "components"),
    (["eval", "--metrics", "macs", "--num-samples", str(10**9)], "num_samples"),
])
def test_cli_prints_one_line_and_no_traceback(tiny_model, tmp_path, capsys, argv, message):
    full = argv[:1] + ["--model", tiny_model] + argv[1:]
    if argv[0] == "prune":
        full += ["--output", str(tmp_path / "out")]
    code = main(full)
    captured = capsys.readouterr()
    assert code != 0 and message in captured.err
    errors = [line for line in captured.err.splitlines() if "error" in line]
    assert "Traceback" not in captured.err and len(errors) == 1 and errors[0].startswith("diffprune: error: ")
