"""benchmarks/bench_scale.py: one row of the scale benchmark on a tiny SD 1.5-shaped pipeline, in process.

The row function is the one the benchmark runs in a fresh process per row: it loads the saved fp16
pipeline, prunes it and records memory and time. Here the tiny config stands in for the published one.
"""
import json

import pytest

from benchmarks import bench_scale, scale_models

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale-models")
    scale_models.save_family("sd15", root, tiny=True)
    return root


@pytest.mark.parametrize("criterion", ["magnitude", "taylor"])
def test_row_on_a_tiny_sd15(tiny_sd, criterion):
    row = bench_scale.run_row("sd15", criterion, "unstructured", device="cpu", cache_dir=tiny_sd, tiny=True)
    assert row["status"] == "ok", (row["status"], row.get("where"))
    missing = [name for name in bench_scale.ROW_FIELDS if name not in row]
    assert not missing, missing
    assert row["key"] == "sd15-tiny/" + criterion + "/unstructured/s0.5/cpu"
    assert row["dtype_built"] == "torch.float16"  # built in fp16, recorded as built
    assert row["dtype_loaded"].startswith("torch.") and row["dtype_pruned"].startswith("torch.")
    assert row["params"] == scale_models.read_marker(tiny_sd / "sd15")["denoiser_params"] > 1_000_000
    assert row["denoiser_bytes"] > 0 and row["denoiser_bytes_fp16"] == 2 * row["params"]
    assert row["extra_peak_bytes"] > 0 and row["ratio"] > 0 and row["ratio_fp16"] > 0
    assert row["prune_s"] > 0 and row["s_per_billion_params"] > 0
    assert abs(row["achieved_sparsity"] - 0.5) < 0.01
    assert row["memory_method"] in ("VmHWM (clear_refs reset)", "RSS sampled every 5 ms")
    json.dumps(row)  # one JSON line of the results file
    if criterion == "taylor":
        assert row["spec"]["schedule"] == "custom" and row["spec"]["calibration_batch_size"] == 1


def test_plans_and_table():
    cpu = bench_scale.plan_rows("cpu")
    assert ("sd15", "magnitude", "channel") in cpu and ("pixart-alpha", "obs", "unstructured") in cpu
    assert all(family in ("sd15", "pixart-alpha") for family, _, _ in cpu)
    gpu = bench_scale.plan_rows("gpu", include_large=True)
    assert {f for f, _, _ in gpu} == set(scale_models.FAMILIES)
    assert ("sd3-medium", "obs", "block") not in gpu and ("sd3-medium", "taylor", "block") in gpu
    assert "sd35-large" not in {f for f, _, _ in bench_scale.plan_rows("gpu", families=["sd35-large"])}
    rows = [dict(key="k", family="sd15", criterion="magnitude", granularity="unstructured", sparsity=0.5, device="cpu",
                 status="error: RuntimeError: x")]
    assert "error: RuntimeError: x" in bench_scale.markdown_table(rows)
