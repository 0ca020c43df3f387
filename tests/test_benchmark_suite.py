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


def test_bench_frontier_quick_rows_verdict_and_resume(tiny_model, tmp_path):
    """bench_frontier's --quick mode (dense at 1 and 2 steps, one pruned + 2-step recovered
    candidate at 2 steps) writes one row per (model, steps), the app's CSV columns and the verdict."""
    from benchmarks import bench_frontier, frontier_verdict

    results, csv = tmp_path / "frontier.jsonl", tmp_path / "frontier.csv"
    args = ["--quick", "--model", tiny_model, "--data", "generated", "--results", str(results), "--csv", str(csv),
            "--runs-dir", str(tmp_path / "runs")]
    assert bench_frontier.main(args) == 0
    table = pd.read_csv(csv)
    assert list(table.columns) == frontier_verdict.CSV_COLUMNS + frontier_verdict.VERDICT_COLUMNS
    assert len(table) == 3 and sorted(table["num_inference_steps"]) == [1, 2, 2]
    dense, pruned = table[table["criterion"] == "dense"], table[table["criterion"] != "dense"]
    assert (dense["speedup"] == 1).all() and (dense["relative_latency"] == dense["num_inference_steps"] / 50).all()
    assert len(pruned) == 1 and (pruned["finetune_steps"] == 2).all() and (pruned["macs_ratio"] < 1).all()
    assert (pruned["speedup_low"] <= pruned["speedup"]).all() and (pruned["speedup"] <= pruned["speedup_high"]).all()
    assert (pruned["relative_latency_low"] <= pruned["relative_latency"]).all()
    numbers = ["frontier_fid", "fid_minus_frontier", "frontier_best_fid", "margin"]
    assert pruned[["fid", "kid", "kid_std"]].notna().all().all() and dense[numbers].isna().all().all()
    assert (dense["verdict"] == "frontier").all() and pruned["verdict"].notna().all()
    # Verdict: the dense FID interpolated at the pruned point's relative latency, where it lies inside the frontier.
    dense_points = sorted(zip(dense["relative_latency"], dense["fid"]))
    for _, row in pruned.iterrows():
        inside = dense_points[0][0] <= row["relative_latency"] <= dense_points[-1][0]
        assert inside == pd.notna(row["frontier_fid"])
        if inside:
            (x0, y0), (x1, y1) = dense_points
            expected = y0 + (y1 - y0) * (row["relative_latency"] - x0) / (x1 - x0)
            assert row["frontier_fid"] == pytest.approx(expected)
            assert row["fid_minus_frontier"] == pytest.approx(row["fid"] - expected)
    assert frontier_verdict._interpolate([(0.1, 10.0), (0.2, 20.0)], 0.15) == pytest.approx(15.0)
    # Resume: a second run measures nothing new; --table prints every row and the verdict.
    lines = results.read_text().splitlines()
    assert bench_frontier.main(args) == 0
    assert results.read_text().splitlines() == lines
    markdown = frontier_verdict.table_markdown(bench_frontier.read_rows(results))
    assert markdown.count("| dense |") == 2 and markdown.count("magnitude channel 20% +2 steps") >= 1


def test_bench_recovery_quick_rows_and_resume(tiny_model, tmp_path, capsys):
    """benchmarks/bench_recovery.py --quick: one row per method and recovery budget plus the
    dense row, finite numbers, cumulative recovery time; a re-run skips the rows already written and
    re-measures only a missing one, resuming its fine-tuning from the checkpoint."""
    import math

    from benchmarks import bench_recovery

    results = tmp_path / "recovery.jsonl"
    args = ["--quick", "--model", tiny_model, "--data", "generated", "--num-samples", "4", "--threads", "1",
            "--results", str(results), "--runs-dir", str(tmp_path / "runs")]
    assert bench_recovery.main(args) == 0
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted((r["method"], r["recovery_steps"]) for r in rows) == sorted(
        [("dense", 0)] + [(m, s) for m in ("taylor", "nici", "obs") for s in (0, 2)])
    assert len({r["key"] for r in rows}) == len(rows)
    for r in rows:
        assert math.isfinite(r["kid"]) and math.isfinite(r["kid_std"]) and r["eval_wall_s"] > 0
        assert r["threads"] == 1 and r["num_samples"] == 4
        if r["method"] != "dense":
            assert 0.3 < r["params_ratio"] < 0.8 and 0.3 < r["macs_ratio"] < 0.8 and r["prune_wall_s"] > 0
            assert r["distill"] == (r["method"] == "nici")
            assert (r["recovery_wall_s"] > 0) == (r["recovery_steps"] > 0)
    assert (tmp_path / "runs" / rows[0]["settings_id"] / "obs" / "checkpoint-2").is_dir()

    # Nothing missing: nothing is recomputed.
    assert bench_recovery.main(args) == 0
    assert results.read_text().splitlines() == [json.dumps(r, sort_keys=True) for r in rows]
    # One row lost: only it is measured again, from checkpoint-2 (no new steps, the same time and KID).
    lost = next(r for r in rows if r["method"] == "obs" and r["recovery_steps"] == 2)
    results.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows if r is not lost))
    assert bench_recovery.main(args) == 0
    again = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(again) == len(rows) and again[-1]["key"] == lost["key"]
    assert again[-1]["resumed_from"] == 2 and again[-1]["recovery_wall_s"] == lost["recovery_wall_s"]
    assert again[-1]["kid"] == pytest.approx(lost["kid"], rel=1e-4)
    capsys.readouterr()
    assert bench_recovery.main(args + ["--table"]) == 0
    markdown = capsys.readouterr().out
    assert markdown.count("| obs |") == 2 and markdown.count("| nici + KD |") == 2 and "| dense (unpruned) |" in markdown


def test_bench_frontier_budget_curve_resumes_and_each_sampler_has_its_own_frontier(tiny_model, tmp_path):
    """--budgets measures a candidate after each recovery budget, the longer one resuming from the
    shorter one's checkpoint; rows of another sampler form their own frontier and verdict."""
    from benchmarks import bench_frontier, frontier_verdict

    results, csv = tmp_path / "frontier.jsonl", tmp_path / "frontier.csv"
    common = ["--quick", "--model", tiny_model, "--data", "generated", "--results", str(results), "--csv", str(csv),
              "--runs-dir", str(tmp_path / "runs")]
    assert bench_frontier.main(common + ["--scheduler", "dpm-solver++", "--budgets", "1,2"]) == 0
    rows = bench_frontier.read_rows(results)
    pruned = sorted((r for r in rows.values() if r["criterion"] != "dense"), key=lambda r: r["finetune_steps"])
    assert [r["finetune_steps"] for r in pruned] == [1, 2]
    assert pruned[0]["finetune_resumed_from"] is None and pruned[1]["finetune_resumed_from"] == 1
    assert {r["scheduler"] for r in rows.values()} == {"dpm-solver++"}
    assert bench_frontier.main(common) == 0  # DDIM: another frontier beside the first
    table = pd.read_csv(csv)
    assert sorted(table["scheduler"].unique()) == ["ddim", "dpm-solver++"]
    for scheduler, group in table.groupby("scheduler"):
        dense = group[group["criterion"] == "dense"]
        assert sorted(dense["num_inference_steps"]) == [1, 2]
        for _, row in group[group["criterion"] != "dense"].iterrows():
            if pd.notna(row["frontier_fid"]):  # interpolated from this sampler's dense points only
                (x0, y0), (x1, y1) = sorted(zip(dense["relative_latency"], dense["fid"]))
                assert row["frontier_fid"] == pytest.approx(y0 + (y1 - y0) * (row["relative_latency"] - x0) / (x1 - x0))
    markdown = frontier_verdict.table_markdown(bench_frontier.read_rows(results))
    assert "DPM-Solver++ steps" in markdown and "DDIM steps" in markdown
