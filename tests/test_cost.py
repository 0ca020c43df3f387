"""core.cost: the calibration estimate shown before a run (passes x a measured per-pass time)."""
import pytest

from core import PruneSpec, estimate_cost, load_pipeline
from core.cost import calibration_passes, describe_estimate

pytestmark = pytest.mark.usefixtures("one_thread")


def test_passes_follow_the_schedule_and_the_calibration_size(tiny_model):
    pipeline = load_pipeline(tiny_model)
    nici = calibration_passes(pipeline, PruneSpec(criterion="nici", granularity="channel", sparsity=0.3,
                                                  calibration_batches=10, calibration_batch_size=128))
    assert nici == dict(timesteps=235, images=1280, passes=300_800, upper_bound=False)
    capped = calibration_passes(pipeline, PruneSpec(criterion="taylor", granularity="channel", sparsity=0.3,
                                                    schedule_params={"max_timesteps": 50}))
    # the threshold walk's passes are the first batch's gradient passes: no extra forward passes
    assert capped["upper_bound"] and capped["timesteps"] == 50 and capped["passes"] == 50 * capped["images"]
    assert calibration_passes(pipeline, PruneSpec(criterion="magnitude", granularity="channel", sparsity=0.3)) == {}


def test_estimate_uses_a_measured_rate_and_scales_with_passes(tiny_model):
    pipeline = load_pipeline(tiny_model)
    small = estimate_cost(pipeline, PruneSpec(criterion="l1", granularity="unstructured", sparsity=0.5,
                                              calibration_batch_size=2))
    large = estimate_cost(pipeline, PruneSpec(criterion="l1", granularity="unstructured", sparsity=0.5,
                                              calibration_batch_size=2, calibration_batches=3))
    assert small["seconds_per_pass"] > 0
    assert large["seconds_per_pass"] == small["seconds_per_pass"]  # one measurement per model and batch size
    assert large["seconds"] == pytest.approx(3 * small["seconds"])
    assert "about" in describe_estimate(small) and "20 passes" in describe_estimate(small)
    with pytest.raises(ValueError, match="spec must be a PruneSpec"):
        estimate_cost(pipeline, {"criterion": "l1"})


def test_obs_and_gradflow_estimates_are_measured_and_scale_with_their_work(tiny_model):
    pipeline = load_pipeline(tiny_model)
    short = estimate_cost(pipeline, PruneSpec(criterion="gradflow", granularity="unstructured", sparsity=0.5,
                                              criterion_params={"iterations": 2}))
    long = estimate_cost(pipeline, PruneSpec(criterion="gradflow", granularity="unstructured", sparsity=0.5,
                                             criterion_params={"iterations": 6}))
    assert short["seconds_per_pass"] > 0 and long["passes"] == 3 * short["passes"]
    assert long["seconds"] == pytest.approx(3 * short["seconds"])  # one measured rate per model and batch
    assert "gradient-flow passes" in describe_estimate(long) and "measured now" in describe_estimate(long)
    few = estimate_cost(pipeline, PruneSpec(criterion="obs", granularity="unstructured", sparsity=0.5,
                                            schedule_params={"num_steps": 10}))
    many = estimate_cost(pipeline, PruneSpec(criterion="obs", granularity="unstructured", sparsity=0.5,
                                             schedule_params={"num_steps": 30}))
    assert few["seconds_per_step"] > 0 and few["solve_seconds"] > 0 and not few["upper_bound"]
    assert many["timesteps"] == 3 * few["timesteps"]
    assert many["calibration_seconds"] == pytest.approx(3 * few["calibration_seconds"])
    assert many["solve_seconds"] == few["solve_seconds"]  # every layer is solved once, whatever the steps
    assert "Hessian hooks" in describe_estimate(many)
    channel = estimate_cost(pipeline, PruneSpec(criterion="obs", granularity="channel", sparsity=0.3))
    assert channel["upper_bound"] and describe_estimate(channel).startswith("estimated calibration: up to")
