"""Calibration batches several timesteps of one batch into a single forward pass
(``core.criteria.per_timestep_losses``): the images, the noise *and the conditioning* are repeated
once per timestep. These checks run every model family with every calibrated criterion at the
batch sizes users of large models pick (two batches of one image; two batches of two) and require

* the run completes and reaches the target sparsity;
* the gradient criteria's statistics equal those of one timestep per pass
  (``CALIBRATION_CHUNK_SAMPLES = 1``): batching is a speed-up, never a different result;
* ``ModelAdapter.repeat_conditioning`` repeats rows in ``clean.repeat(count, ...)`` order, so a
  repeated batch predicts exactly what its parts predict one by one.

The conditional families (text embeddings with masks, pooled projections, class labels) are the
ones where a conditioning of one batch meets a batch of several timesteps.
"""
import pytest
import torch

import tiny_families
from core import criteria as criteria_module
from core import engine as engine_module
from core.engine import clear_calibration_cache, prune
from core.models import adapter_for
from core.spec import PruneSpec

pytestmark = pytest.mark.usefixtures("one_thread")

TIMESTEPS = 3  # all in one pass when batched (64 timesteps per pass at batch 1, 32 at batch 2)
GRADIENT_CRITERIA = ("taylor", "nici", "l1")
OWN_CALIBRATION = {  # obs and gradflow calibrate themselves (trajectories; one timestep per pass)
    "gradflow": dict(schedule="uniform", schedule_params={"num_timesteps": 2}, criterion_params={"iterations": 1}),
    "obs": dict(schedule="log-decrease", schedule_params={"num_steps": 2}),
}
SHAPES = {"2x1": (2, 1), "2x2": (2, 2)}  # calibration_batches x calibration_batch_size
SPARSITY = 0.5


def _pixel_pipeline():
    from diffusers import DDPMPipeline, DDPMScheduler

    return DDPMPipeline(unet=tiny_families.attention_unet(), scheduler=DDPMScheduler(num_train_timesteps=1000))


def _latent_models(kind):
    from test_latent_models import build

    return build(kind)


BUILDERS = {
    "pixel": _pixel_pipeline,
    "pixel-class": lambda: _latent_models("class-conditional"),  # class_labels into a UNet2DModel
    "latent": lambda: _latent_models("ldm-kl"),
    "sd": lambda: tiny_families.build("sd"),
    "dit": lambda: tiny_families.build("dit"),
    "pixart": lambda: tiny_families.build("pixart"),
    "sd3": lambda: tiny_families.build("sd3"),
}
FAMILIES = list(BUILDERS)
CONDITIONAL = ("pixel-class", "sd", "dit", "pixart", "sd3")


def _cases(criteria, fast):
    """(family, criterion, shape) for every combination; those for which ``fast(...)`` is False
    are marked slow. The fast ones cover every conditioning at batch size 1 and every criterion's
    own statistic; the slow ones repeat a check on statistics already compared (l1 accumulates
    taylor's gradient), on a family without conditioning, or on a batch whose conditioning rows
    already matched it (obs and gradflow at batch size 2)."""
    return [pytest.param(family, criterion, shape, marks=() if fast(family, criterion, shape) else pytest.mark.slow)
            for family in FAMILIES for criterion in criteria for shape in SHAPES]


@pytest.fixture(scope="module")
def pipelines():
    return {}


def pipeline_of(pipelines, family):
    if family not in pipelines:
        pipelines[family] = BUILDERS[family]()
    return pipelines[family]


@pytest.fixture(autouse=True)
def fresh_calibration(monkeypatch):
    """Each run calibrates (a cached calibration would hide the chunk size under test), on data
    generated in 2 sampling steps: the images' quality is irrelevant here, their batching is not."""
    import core.calibration

    monkeypatch.setattr(core.calibration, "GENERATED_CALIBRATION_STEPS", 2)
    clear_calibration_cache()
    yield
    clear_calibration_cache()


def spec_for(criterion, shape, **extra):
    batches, batch_size = SHAPES[shape]
    settings = OWN_CALIBRATION.get(criterion, dict(schedule="uniform", schedule_params={"num_timesteps": TIMESTEPS}))
    return PruneSpec(criterion=criterion, granularity="unstructured", sparsity=SPARSITY, calibration_data="generated",
                     calibration_batches=batches, calibration_batch_size=batch_size, **{**settings, **extra})


def recorded_prune(monkeypatch, pipeline, spec):
    """``prune`` and the calibration statistics it computed (one ``CalibrationStats`` per network)."""
    calls = []
    calibrate = engine_module.calibrate

    def recording(*args, **kwargs):
        stats = calibrate(*args, **kwargs)
        calls.append(stats)
        return stats

    monkeypatch.setattr(engine_module, "calibrate", recording)
    result = prune(pipeline, spec)
    monkeypatch.setattr(engine_module, "calibrate", calibrate)
    return result, calls


def assert_pruned(result):
    assert result.report.totals["sparsity"] == pytest.approx(SPARSITY, abs=0.02)


def assert_same_tensors(batched: dict, single: dict, what: str):
    assert batched.keys() == single.keys(), what
    for name, tensor in single.items():
        scale = float(tensor.abs().max()) or 1.0
        assert torch.allclose(batched[name], tensor, rtol=1e-5, atol=1e-5 * scale), f"{what} {name}"


@pytest.mark.parametrize("family, criterion, shape", _cases(GRADIENT_CRITERIA, lambda family, criterion, shape: (
    (family in CONDITIONAL and (shape == "2x1" or criterion != "l1")) or (criterion, shape) == ("taylor", "2x1"))))
def test_batched_timesteps_give_the_statistics_of_one_timestep_per_pass(pipelines, monkeypatch, family, criterion, shape):
    pipeline = pipeline_of(pipelines, family)
    spec = spec_for(criterion, shape)
    assert criteria_module.timesteps_per_pass(spec.calibration_batch_size) >= TIMESTEPS  # all in one pass
    batched, batched_stats = recorded_prune(monkeypatch, pipeline, spec)
    assert_pruned(batched)
    assert len(batched_stats) == 1 and batched_stats[0].timesteps_per_group >= TIMESTEPS

    clear_calibration_cache()
    monkeypatch.setattr(criteria_module, "CALIBRATION_CHUNK_SAMPLES", 1)
    single, single_stats = recorded_prune(monkeypatch, pipeline, spec)
    assert_pruned(single)
    assert single_stats[0].timesteps_per_group == 1

    got, expected = batched_stats[0], single_stats[0]
    assert expected.gradients or expected.taylor_per_batch_sum  # something to compare
    assert_same_tensors(got.gradients, expected.gradients, "gradient")
    assert_same_tensors(got.taylor_per_batch_sum, expected.taylor_per_batch_sum, "taylor term")
    assert got.losses.keys() == expected.losses.keys()
    for t, values in expected.losses.items():
        assert got.losses[t] == pytest.approx(values, rel=1e-5, abs=1e-7), t


@pytest.mark.parametrize("family", ["sd", "pixart"])
def test_threshold_walk_batches_the_conditioning_too(pipelines, monkeypatch, family):
    """Diff-Pruning's threshold walk runs its own batched passes on the first batch."""
    pipeline = pipeline_of(pipelines, family)
    spec = spec_for("taylor", "2x1", schedule="threshold", schedule_params={"threshold": 0.5, "max_timesteps": 3})
    batched, batched_stats = recorded_prune(monkeypatch, pipeline, spec)
    assert_pruned(batched)
    clear_calibration_cache()
    monkeypatch.setattr(criteria_module, "CALIBRATION_CHUNK_SAMPLES", 1)
    _, single_stats = recorded_prune(monkeypatch, pipeline, spec)
    assert batched_stats[0].stopped_at == single_stats[0].stopped_at
    assert_same_tensors(batched_stats[0].gradients, single_stats[0].gradients, "gradient")


@pytest.mark.parametrize("family, criterion, shape", _cases(OWN_CALIBRATION, lambda family, criterion, shape: (
    family in CONDITIONAL and shape == "2x1")))
def test_obs_and_gradflow_run_at_small_batches(pipelines, family, criterion, shape):
    """OBS samples ``batches x batch size`` trajectories with one batch's conditioning; gradflow
    calls the network through the conditioning hook: both meet a conditioning of other rows."""
    assert_pruned(prune(pipeline_of(pipelines, family), spec_for(criterion, shape)))


def _timesteps(adapter, pipeline, values, rows):
    scheduler = adapter.scheduler(pipeline)
    t = torch.tensor(values, dtype=torch.long).repeat_interleave(rows)
    return adapter.model_timesteps(scheduler, t)


@pytest.mark.parametrize("batch_size", [1, 2])
@pytest.mark.parametrize("family", CONDITIONAL)
def test_a_repeated_batch_predicts_what_its_parts_predict(pipelines, family, batch_size):
    """``repeat_conditioning`` + one forward pass == one forward pass per timestep; and a
    conditioning of fewer rows fed through the ``conditioned`` hook (OBS, gradflow) == explicit rows."""
    pipeline = pipeline_of(pipelines, family)
    adapter = adapter_for(pipeline)
    denoiser = adapter.denoiser(pipeline)
    conditioning = adapter.sample_conditioning(pipeline, batch_size, torch.Generator().manual_seed(0))
    count = 3
    sample = adapter.noise(pipeline, count * batch_size, 1)
    timesteps = _timesteps(adapter, pipeline, [10, 500, 990], batch_size)
    with torch.no_grad():
        batched = adapter.predict(denoiser, sample, timesteps, adapter.repeat_conditioning(conditioning, count, batch_size))
        parts = torch.cat([adapter.predict(denoiser, rows, t, conditioning)
                           for rows, t in zip(sample.split(batch_size), timesteps.split(batch_size))])
        with adapter.conditioned(denoiser, conditioning):
            hooked = adapter.predict(denoiser, sample, timesteps)
    assert batched.shape == parts.shape
    assert torch.allclose(batched, parts, rtol=1e-5, atol=1e-5)
    assert torch.allclose(hooked, batched, rtol=1e-5, atol=1e-5)


def test_repeat_conditioning_repeats_per_sample_rows_in_clean_repeat_order():
    from core.models.base import ModelAdapter

    labels = torch.tensor([3, 5])
    conditioning = {
        "class_labels": labels,
        "encoder_hidden_states": torch.arange(12.0).view(2, 3, 2),
        "added_cond_kwargs": {"resolution": torch.tensor([[8.0, 8.0], [16.0, 16.0]]), "aspect_ratio": None},
        "shared_table": torch.zeros(5, 2),  # not one row per sample: left alone
        "scale": torch.tensor(4.0),  # a scalar: left alone
        "name": "not a tensor",
    }
    repeated = ModelAdapter().repeat_conditioning(conditioning, 3, 2)
    assert repeated["class_labels"].tolist() == [3, 5, 3, 5, 3, 5]  # repeat, not repeat_interleave
    assert torch.equal(repeated["encoder_hidden_states"], conditioning["encoder_hidden_states"].repeat(3, 1, 1))
    assert repeated["added_cond_kwargs"]["resolution"][:, 0].tolist() == [8.0, 16.0] * 3
    assert repeated["added_cond_kwargs"]["aspect_ratio"] is None
    assert repeated["shared_table"] is conditioning["shared_table"] and repeated["scale"] is conditioning["scale"]
    assert repeated["name"] == "not a tensor"
    assert torch.equal(conditioning["class_labels"], labels)  # the caller's dict is not changed
    assert ModelAdapter().repeat_conditioning(conditioning, 1, 2) is conditioning
    assert ModelAdapter().repeat_conditioning(None, 3, 2) is None
    assert ModelAdapter().repeat_conditioning({}, 3, 2) == {}


@pytest.mark.parametrize("family", ["sd", "pixart"])
def test_cost_estimate_times_a_batched_pass_at_batch_one(pipelines, monkeypatch, family):
    """The cost estimate times one pass of ``timesteps_per_pass(batch)`` timesteps on a drawn conditioning."""
    import core.cost as cost

    monkeypatch.setattr(cost, "_RATE_CACHE", {})
    monkeypatch.setattr(criteria_module, "CALIBRATION_CHUNK_SAMPLES", 4)  # 4 timesteps per pass, kept small
    rate = cost.measure_rate(pipeline_of(pipelines, family), spec_for("taylor", "2x1"), repeats=1)
    assert rate > 0
