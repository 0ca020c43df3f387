"""``core.frontier``: the dense frontier with a choice of sampler (DDIM, DDPM, DPM-Solver++)."""
import pytest
import torch

from core.frontier import FrontierSettings, dense_frontier
from core.pipeline import load_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tiny_model):
    return load_pipeline(tiny_model, device="cpu")


def test_the_sampler_is_a_setting_of_the_frontier_and_of_its_stored_rows(tiny, tmp_path):
    from core.store import ResultStore

    store = ResultStore(tmp_path / "store")
    common = dict(num_samples=4, base_steps=4, metrics=("kid",), reference="dense", label="tiny")
    ddim = dense_frontier(tiny, [2, 4], FrontierSettings(**common), store=store)
    dpm = dense_frontier(tiny, [2, 4], FrontierSettings(**common, scheduler="dpm-solver++"), store=store)
    assert list(ddim["scheduler"]) == ["ddim", "ddim"] and list(dpm["scheduler"]) == ["dpm-solver++"] * 2
    # Different samplers give different samples, so a stored DDIM row must not answer a DPM-Solver++ one.
    assert list(dpm["kid"]) != list(ddim["kid"])
    assert list(dpm["relative_latency"]) == [0.5, 1.0]


def test_an_unknown_sampler_is_refused_with_the_allowed_names():
    with pytest.raises(ValueError, match=r"frontier scheduler must be one of \['ddim', 'ddpm', 'dpm-solver\+\+'\]"):
        FrontierSettings(num_samples=4, base_steps=4, scheduler="euler")


def test_a_run_samples_its_grids_and_evaluations_with_the_chosen_sampler(tiny):
    from core.pipeline import sample_images
    from core.run import EvaluationSettings, TimingSettings, run
    from core.spec import PruneSpec

    with pytest.raises(ValueError, match=r"evaluation scheduler must be one of"):
        EvaluationSettings(scheduler="euler")
    evaluation = EvaluationSettings(num_samples=2, steps=3, metrics=(), grid_images=2, stages=(), scheduler="dpm-solver++")
    result = run(tiny, PruneSpec(criterion="magnitude", granularity="unstructured", sparsity=0.3), evaluation=evaluation,
                 timing=TimingSettings(enabled=False))
    assert not result.errors
    expected = sample_images(tiny, 2, 3, seed=0, scheduler="dpm-solver++")
    assert torch.equal(result.images["dense"], expected)
