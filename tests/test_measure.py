"""One parameter/MAC counter: the prune report, ``evaluate``, ``count_macs`` and
``metrics.count_model`` give the same numbers for one model, attention matmuls counted once."""
import pytest
import torch

from core.engine import count_macs, prune
from core.evaluate import evaluate
from core.measure import count_model
from core.metrics import count_model as metrics_count_model
from core.pipeline import load_pipeline
from core.spec import PruneSpec

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_caller_reports_the_same_macs(tiny_model):
    dense = load_pipeline(tiny_model, device="cpu")
    counted = count_model(dense.unet)
    assert metrics_count_model is count_model
    assert counted.attention_macs > 0 and counted.macs == int(counted.layers["macs"].sum())
    attention_rows = counted.layers[counted.layers["type"] == "Attention"]
    assert int(attention_rows["macs"].sum()) == counted.attention_macs  # counted once, as their own rows
    result = prune(dense, PruneSpec(criterion="magnitude", granularity="channel", sparsity=0.3))
    totals = result.report.totals
    assert totals["macs_before"] == counted.macs == count_macs(dense.unet)[0]
    assert totals["params_before"] == counted.params == sum(p.numel() for p in dense.unet.parameters())
    row = evaluate(result.pipeline, 2, num_inference_steps=1, metrics=("macs",))
    assert row["macs"] == totals["macs_after"] == count_model(result.pipeline.unet).macs < counted.macs
    assert row["params"] == totals["params_after"]
    assert torch.isfinite(torch.tensor(float(row["macs"])))
