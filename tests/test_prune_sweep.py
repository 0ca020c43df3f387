"""sweep(): prune + evaluate through the results store; stored rows return instantly; resumes."""
import sys

import pytest

import core.sweep  # noqa: F401 - loads the module; ``core.sweep`` the attribute is the function
from core.spec import PruneSpec
from core.store import ResultStore
from core.sweep import sweep

from test_prune import tiny_pipeline

sweep_module = sys.modules["core.sweep"]

SETTINGS = {"num_samples": 2, "num_inference_steps": 2, "metrics": ["macs"]}

pytestmark = pytest.mark.usefixtures("one_thread")


def test_sweep_stores_rows_and_resumes(tmp_path, monkeypatch):
    pipeline = tiny_pipeline(attention=False, channels=(8, 16))
    store = ResultStore(tmp_path / "store")
    specs = [PruneSpec(criterion="magnitude", sparsity=0.3), PruneSpec(criterion="random", granularity="channel", sparsity=0.44)]
    real_prune = sweep_module.prune
    calls = []

    def killed_after_first(pipeline, spec, progress=None):
        if calls:
            raise KeyboardInterrupt("killed midway")
        calls.append(spec)
        return real_prune(pipeline, spec, progress=progress)

    monkeypatch.setattr(sweep_module, "prune", killed_after_first)
    with pytest.raises(KeyboardInterrupt):
        sweep(pipeline, specs, SETTINGS, store=store)
    assert len(store) == 1

    resumed = []
    monkeypatch.setattr(sweep_module, "prune", lambda p, s, progress=None: resumed.append(s) or real_prune(p, s, progress=progress))
    table = sweep(pipeline, specs, SETTINGS, store=store)
    assert resumed == [specs[1]]  # the finished row was not recomputed
    assert list(table["cached"]) == [True, False]
    assert table.loc[1, "prune_macs_ratio"] < 1 and abs(table.loc[1, "prune_sparsity"] - 0.44) <= 0.02

    monkeypatch.setattr(sweep_module, "prune", lambda *a, **k: pytest.fail("stored rows must not be pruned again"))
    again = sweep(pipeline, specs, SETTINGS, store=store)
    assert list(again["cached"]) == [True, True]
    assert list(again["label"]) == list(table["label"])


def test_sweep_rejects_bad_input(tmp_path):
    pipeline = tiny_pipeline(attention=False, channels=(8, 16))
    with pytest.raises(ValueError, match="specs"):
        sweep(pipeline, [{"criterion": "magnitude"}], SETTINGS, store=ResultStore(tmp_path))
    with pytest.raises(ValueError, match="eval_settings"):
        sweep(pipeline, [PruneSpec()], {**SETTINGS, "store": None}, store=ResultStore(tmp_path))


def test_a_sweep_row_is_the_run_of_its_spec_and_travels_as_plain_data(tmp_path):
    """One row through ``core.run``: its numbers are those of evaluating the spec's pruned copy
    directly, its inputs pickle (for remote workers), the row is plain JSON data and the dense
    model is not touched."""
    import json
    import pickle

    from core.engine import prune
    from core.evaluate import evaluate, pipeline_hash
    from core.sweep import sweep_row

    pipeline = tiny_pipeline(attention=False, channels=(8, 16))
    before = pipeline_hash(pipeline)
    spec = PruneSpec(criterion="magnitude", granularity="channel", sparsity=0.3, seed=2)
    settings = dict(num_samples=4, num_inference_steps=2, seed=1, metrics=("kid",), reference="dense",
                    kid_subset_size=2)
    assert pickle.loads(pickle.dumps((spec, settings))) == (spec, settings)
    row = sweep_row(pipeline, spec, settings)
    expected = evaluate(prune(pipeline, spec).pipeline, dense_pipeline=pipeline, prune_spec=spec.to_dict(), **settings)
    assert row["kid"] == expected["kid"] and row["kid_subset_size"] == 2 and row["seed"] == 1
    assert row["metrics"] == ["kid"] and row["macs"] is None  # exactly the asked metrics
    assert row["finetune_steps"] == 0 and row["dense_model_hash"] == before == pipeline_hash(pipeline)
    assert json.loads(json.dumps(row)) == row and "key" not in row and "cached" not in row


def test_run_takes_a_held_prune_result_and_evaluates_only_the_stages_asked():
    import torch

    from core.engine import prune
    from core.run import EvaluationSettings, RecoverySettings, TimingSettings, run

    pipeline = tiny_pipeline(attention=False, channels=(8, 16))
    spec = PruneSpec(criterion="magnitude", granularity="channel", sparsity=0.3)
    held = prune(pipeline, spec)
    evaluation = EvaluationSettings(num_samples=2, steps=1, metrics=("macs",), count_macs=False, grid_images=0,
                                    stages=("recovered",), options={"batch_size": 2})
    images = torch.rand(4, 1, 8, 8) * 2 - 1
    outcome = run(pipeline, spec, pruned=held, recovery=RecoverySettings(steps=1, batch_size=2),
                  recovery_data=(images, None, "four given images"), evaluation=evaluation,
                  timing=TimingSettings(enabled=False))
    assert outcome.ok and outcome.pruned is held and outcome.recovery_data == "four given images"
    assert list(outcome.evaluations) == ["recovered"] and outcome.recovered.steps == 1
    totals = held.report.totals
    assert outcome.evaluations["recovered"]["macs"] == totals["macs_after"] < totals["macs_before"]
    other = prune(pipeline, PruneSpec(criterion="random", sparsity=0.3))
    for call, field in (
            (lambda: run(pipeline, spec, pruned=other), "pruned"),
            (lambda: run(pipeline, spec, recovery=RecoverySettings(steps=1), recovery_data=(images[:, :, :4], None, "")),
             "recovery_data"),
            (lambda: EvaluationSettings(stages=("final",)), "evaluation stages"),
            (lambda: EvaluationSettings(options={"num_samples": 4}), "evaluation options"),
            (lambda: EvaluationSettings(metrics=(), count_macs=False), "evaluation metrics"),
            (lambda: EvaluationSettings(seed=-1), "evaluation seed")):
        with pytest.raises(ValueError, match=field):
            call()
