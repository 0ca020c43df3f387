"""The benchmark suite end to end on a tiny model: rows, resume, CSV, markdown and plots."""
import json

import pandas as pd
import pytest

from benchmarks import suite

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def test_suite_rows_outputs_and_resume(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFPRUNE_RESULTS_DIR", str(tmp_path / "store"))
    monkeypatch.setitem(suite.MODES, "quick", dict(suite.MODES["quick"], steps=2))
    args = ["--model", tiny_model, "--criteria", "magnitude,random", "--num-samples", "4", "--finetune-steps", "2",
            "--device", "cpu", "--out-dir", str(tmp_path / "out"), "--csv", str(tmp_path / "bench.csv"),
            "--markdown", str(tmp_path / "BENCH.md")]
    assert suite.main(args) == 0
    table = pd.read_csv(tmp_path / "bench.csv")
    # dense + 2 criteria x 6 settings + 2 criteria x 2 fine-tuned settings
    assert len(table) == 1 + 2 * 6 + 2 * 2
    pruned = table[table["criterion"] != "dense"]
    assert pruned["kid"].notna().all() and pruned["speedup"].gt(0).all() and pruned["peak_memory_mib"].gt(0).all()
    channel = pruned[(pruned["granularity"] == "channel") & (pruned["finetune_steps"] == 0)]
    assert (channel["params"] < table.loc[table["criterion"] == "dense", "params"].iloc[0]).all()
    masked = pruned[pruned["granularity"] == "2:4"]
    assert (masked["nonzero_params"] < masked["params"]).all()
    assert set(pruned["finetune_steps"]) == {0, 2}
    markdown = (tmp_path / "BENCH.md").read_text()
    assert markdown.count("| magnitude |") == 8 and "quality_vs_sparsity" in markdown
    assert (tmp_path / "quality_vs_sparsity.png").stat().st_size > 5000
    assert (tmp_path / "quality_vs_latency.png").stat().st_size > 5000
    # Interrupted run: drop the last rows, rerun, only those are recomputed.
    rows_file = tmp_path / "out" / "suite_rows_quick.jsonl"
    lines = rows_file.read_text().splitlines()
    rows_file.write_text("\n".join(lines[:-3]) + "\n")
    kept = {json.loads(line)["row_id"]: json.loads(line)["kid"] for line in lines[:-3]}
    assert suite.main(args) == 0
    again = pd.read_csv(tmp_path / "bench.csv")
    assert len(again) == len(table)
    rerun = {row["row_id"]: row["kid"] for _, row in again.iterrows()}
    assert all(rerun[key] == value for key, value in kept.items())
    assert len(rows_file.read_text().splitlines()) == len(table)

    # --merge: a run of one criterion replaces only that criterion's rows of the published table.
    merge_args = ["--model", tiny_model, "--criteria", "random", "--num-samples", "4", "--finetune-steps", "2",
                  "--device", "cpu", "--out-dir", str(tmp_path / "out-merge"), "--csv", str(tmp_path / "bench.csv"),
                  "--markdown", str(tmp_path / "BENCH.md"), "--seed", "1", "--merge"]
    assert suite.main(merge_args) == 0
    merged = pd.read_csv(tmp_path / "bench.csv")
    assert len(merged) == len(table) and list(merged["criterion"]).count("random") == 8
    old, new = again.set_index("row_id"), merged.set_index("row_id")
    magnitude_rows = [key for key in old.index if key.startswith("magnitude")]
    assert (new.loc[magnitude_rows, "kid"] == old.loc[magnitude_rows, "kid"]).all()  # kept as measured
    random_rows = [key for key in old.index if key.startswith("random")]
    assert (new.loc[random_rows, "kid"] != old.loc[random_rows, "kid"]).any()  # another seed: re-measured
    merged_markdown = (tmp_path / "BENCH.md").read_text()
    assert "Rows of random re-measured" in merged_markdown and "--merge" in merged_markdown
    assert merged_markdown.count("| magnitude |") == 8
