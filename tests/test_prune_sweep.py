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
