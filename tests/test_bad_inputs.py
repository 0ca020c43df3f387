"""Bad inputs found by sending a few hundred of them to the API: each is a short
``ValueError`` naming the field, raised before any work starts, and the CLI prints one line and
no traceback for them."""
import json
import time
from pathlib import Path

import pytest
import torch

from core.cli import main
from core.engine import prune
from core.evaluate import evaluate
from core.pipeline import MAX_SAMPLE_IMAGES, load_pipeline, sample_images
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


@pytest.mark.parametrize("call, field", [
    (lambda p: sample_images(p, 10**6, 1), "num_images must be an integer from 1 to 50,000"),
    (lambda p: sample_images(p, 10**9, 1), "num_images"),
    (lambda p: sample_images(p, 2, 1, noise=torch.zeros(2, 1, 4, 4)), "noise must be a float tensor of shape"),
    (lambda p: sample_images(p, 2, 1, noise=torch.zeros(3, 1, 8, 8)), "noise"),
    (lambda p: sample_images(p, 2, 1, noise=[[0.0]]), "noise"),
    (lambda p: sample_images(p, 2, 1, progress=5), "progress must be None or a callable"),
    (lambda p: prune(p, PruneSpec(), progress=5), "progress must be None or a callable"),
])
def test_sampling_and_pruning_refuse_before_any_work(tiny, call, field):
    started = time.perf_counter()
    with pytest.raises(ValueError, match=field) as error:
        call(tiny)
    assert time.perf_counter() - started < 2.0 and "\n" not in str(error.value)


def test_the_sample_bound_is_the_evaluation_bound():
    from core.evaluate import MAX_NUM_SAMPLES

    assert MAX_SAMPLE_IMAGES == MAX_NUM_SAMPLES == 50_000


@pytest.mark.parametrize("kwargs, field", [
    (dict(lr=float("inf")), "lr must be a finite number > 0"),
    (dict(lr=float("nan")), "lr"),
    (dict(lr=0.0), "lr"),
    (dict(max_grad_norm=float("nan")), "max_grad_norm"),
    (dict(max_grad_norm=float("inf")), "max_grad_norm"),
    (dict(max_grad_norm=-1.0), "max_grad_norm"),
    (dict(distill_tau=0.0), "distill_tau"),
    (dict(l1_penalty=float("nan")), "l1_penalty"),
])
def test_finetune_refuses_non_finite_settings_before_training(tiny, kwargs, field):
    from core.finetune import finetune

    before = {name: value.clone() for name, value in tiny.unet.state_dict().items()}
    started = time.perf_counter()
    with pytest.raises(ValueError, match=field):
        finetune(tiny, 2, **{"lr": 1e-3, "batch_size": 2, **kwargs})
    assert time.perf_counter() - started < 2.0
    assert all(torch.equal(before[name], value) for name, value in tiny.unet.state_dict().items())


@pytest.fixture(scope="module")
def structured_export(tiny, tmp_path_factory):
    from core.export import ExportSettings, write_export

    out = tmp_path_factory.mktemp("export") / "out"
    result = prune(tiny, PruneSpec(criterion="magnitude", granularity="channel", sparsity=0.3))
    local_label = str(tmp_path_factory.getbasetemp() / "my-models" / "dense-model")
    (folder,) = write_export(result, ExportSettings(out=str(out), dense_label=local_label))
    return folder


def test_export_usage_says_how_to_install_and_whether_plain_diffusers_loads_it(structured_export):
    usage = (structured_export / "USAGE.md").read_text()
    first = usage.split("\n\n")[1]
    assert first.startswith("**Plain diffusers cannot load this folder**") and "core.load_pipeline" in first
    assert "## Install what loads it" in usage and "pip install ." in usage
    assert "Dense model: dense-model" in usage  # a local path is written as its folder name


def test_plain_diffusers_refusal_of_a_structured_export_explains_itself(structured_export):
    """Plain diffusers cannot build the cut widths; the warning it prints just before failing
    starts with the config's README note that names the loader."""
    import logging

    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    from core.export_config import PRUNED_NOTE

    config = json.loads((structured_export / "unet" / "config.json").read_text())
    assert config["README"] == PRUNED_NOTE and "core.load_pipeline" in PRUNED_NOTE
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = diffusers_logging.get_logger("diffusers")
    previous = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_warning()
    logger.addHandler(handler)
    try:
        with pytest.raises(Exception):
            DiffusionPipeline.from_pretrained(str(structured_export))
    finally:
        logger.removeHandler(handler)
        diffusers_logging.set_verbosity(previous)
    ignored = [r.getMessage() for r in records if "were passed to UNet2DModel" in r.getMessage()]
    assert ignored and ignored[0].startswith(f"The config attributes {{'README': {PRUNED_NOTE!r}")
    assert load_pipeline(str(structured_export), device="cpu").unet is not None  # the loader it names works


def test_export_writes_each_report_once_and_no_local_path(structured_export, tmp_path_factory):
    files = [path for path in structured_export.rglob("*") if path.is_file()]
    names = [str(path.relative_to(structured_export)) for path in files]
    assert sum(name.endswith("totals.json") for name in names) == 1
    assert sum(name.endswith("layers.csv") for name in names) == 1
    assert not [name for name in names if name.endswith(".csv") and not name.startswith("report/")]
    local = (str(tmp_path_factory.getbasetemp()), str(Path.home()), str(Path.cwd()))
    for path in files:
        if path.suffix in (".json", ".md", ".csv"):
            text = path.read_text()
            assert not any(prefix in text for prefix in local), path.name
