"""bench_frontier's verdict at equal latency: the FID spread from repeated seeds, win / tie / loss
beyond the two spreads, the best configuration per latency budget, and chained candidates."""
import math

import pandas as pd
import pytest

from benchmarks import bench_frontier, frontier_verdict

DENSE = dict(label="dense", criterion="dense", granularity="-", sparsity=0.0, measured_sparsity=0.0, finetune_steps=0,
             distill=False, kid=0.01, kid_std=0.001, speedup=1.0, speedup_low=1.0, speedup_high=1.0,
             macs_ratio=1.0, params_ratio=1.0, num_samples=256)


def _dense(steps, fid, seed=0, scheduler="dpm-solver++"):
    return dict(DENSE, key=f"dense|{steps}|{seed}|{scheduler}", model="m", scheduler=scheduler, seed=seed,
                num_inference_steps=steps, fid=fid, relative_latency=steps / 50, relative_latency_low=steps / 50,
                relative_latency_high=steps / 50)


def _pruned(label, steps, fid, speedup, low=None, high=None, scheduler="dpm-solver++"):
    low, high = low or speedup, high or speedup
    return dict(DENSE, key=f"{label}|{steps}|{scheduler}", model="m", scheduler=scheduler, seed=0, label=label,
                criterion="nici", granularity="block", sparsity=0.33, finetune_steps=1000, distill=True,
                num_inference_steps=steps, fid=fid, speedup=speedup, speedup_low=low, speedup_high=high,
                relative_latency=steps / 50 / speedup, relative_latency_low=steps / 50 / high,
                relative_latency_high=steps / 50 / low, macs_ratio=0.6, params_ratio=0.7)


def _rows(*rows):
    return {row["key"]: row for row in rows}


def test_fid_spread_pools_the_repeated_seeds_and_repeats_stay_out_of_the_table():
    rows = _rows(_dense(4, 70.0), _dense(6, 60.0), _dense(6, 61.0, seed=1), _dense(6, 59.0, seed=2),
                 _dense(4, 71.0, seed=1))
    spreads = frontier_verdict.fid_spreads(frontier_verdict._frame_all(rows))
    # pooled: (6 steps: 60, 61, 59 -> squares 2, dof 2) + (4 steps: 70, 71 -> squares 0.5, dof 1)
    assert spreads[("m", "dpm-solver++")]["fid_spread"] == pytest.approx(math.sqrt(2.5 / 3))
    assert spreads[("m", "dpm-solver++")]["seeds"] == 3
    table = frontier_verdict.frame(rows)
    assert sorted(table["num_inference_steps"]) == [4, 6]  # seed 0 only
    assert set(table.loc[table["num_inference_steps"] == 6, "fid"]) == {60.0}
    assert table["fid_spread"].tolist() == pytest.approx([math.sqrt(2.5 / 3)] * 2)
    assert list(table.columns) == frontier_verdict.CSV_COLUMNS + frontier_verdict.VERDICT_COLUMNS


def test_a_win_needs_more_than_the_two_spreads():
    # Dense: 4 steps FID 80, 8 steps FID 60 (sigma 1 from seeds 60/62 -> sqrt(2)); pruned points at
    # 1.5x and 6 steps lie at latency 0.08 = the dense 4-step point (frontier 80).
    rows = _rows(_dense(4, 80.0), _dense(8, 60.0), _dense(8, 62.0, seed=1),
                 _pruned("win", 6, 76.0, 1.5), _pruned("tie", 6, 78.0, 1.5, scheduler="dpm-solver++") | {"key": "t"},
                 _pruned("loss", 6, 84.0, 1.5) | {"key": "l"}, _pruned("fast", 2, 90.0, 1.5) | {"key": "f"})
    table = frontier_verdict.frame(rows).set_index("label")
    sigma = math.sqrt(2.0)
    assert table.loc["win", "frontier_fid"] == pytest.approx(80.0)
    assert table.loc["win", "margin"] == pytest.approx(2 * sigma)
    assert table.loc["win", "verdict"] == "win"  # -4.0 < -2.83
    assert table.loc["tie", "verdict"] == "tie"  # -2.0: within the spreads
    assert table.loc["loss", "verdict"] == "loss"
    assert table.loc["fast", "verdict"] == "outside the frontier"
    assert table.loc["dense", "verdict"].tolist() == ["frontier", "frontier"]
    group = frontier_verdict.frame(rows)
    sentence = frontier_verdict.verdict_sentence(group, "m", "dpm-solver++")
    assert "pruning wins" in sentence and "1 wins, 1 ties, 1 losses of 3" in sentence


def test_a_timing_range_that_reaches_the_slow_side_is_reported():
    rows = _rows(_dense(4, 80.0), _dense(8, 60.0), _dense(8, 61.0, seed=1),
                 _pruned("win", 6, 76.0, 1.5, low=1.0, high=2.0))
    table = frontier_verdict.frame(rows).set_index("label")
    assert table.loc["win", "verdict"] == "win"
    # at its slowest round (1.0x: latency 0.12, frontier 70) the same point loses
    assert table.loc["win", "verdict_at_slowest"] == "loss"


def test_without_repeated_seeds_there_is_no_verdict_beyond_the_sign():
    rows = _rows(_dense(4, 80.0), _dense(8, 60.0), _pruned("p", 6, 70.0, 1.5))
    table = frontier_verdict.frame(rows).set_index("label")
    assert math.isnan(table.loc["p", "fid_spread"]) and table.loc["p", "verdict"] == "spread not measured"
    assert table.loc["p", "fid_minus_frontier"] == pytest.approx(-10.0)
    assert "not settled" in frontier_verdict.verdict_sentence(frontier_verdict.frame(rows), "m", "dpm-solver++")


def test_best_configuration_per_latency_budget():
    rows = _rows(_dense(2, 120.0), _dense(4, 80.0), _dense(8, 60.0), _dense(8, 60.5, seed=1),
                 _pruned("win", 6, 70.0, 2.0), _pruned("other", 3, 85.0, 1.0) | {"key": "o"})
    budgets = frontier_verdict.budget_table(frontier_verdict.frame(rows))
    by_budget = {round(b["budget"], 3): b for b in budgets}
    assert sorted(by_budget) == [0.04, 0.06, 0.08, 0.16]  # the dense latencies and the winning point's
    assert by_budget[0.04]["pruned"] is None and by_budget[0.04]["best"] == "dense at 2 steps"
    # latency 0.06: the "win" point (6 steps / 2x); frontier there 100, FID 70: a win
    assert by_budget[0.06]["pruned"]["label"] == "win" and by_budget[0.06]["best"] == "win at 6 steps"
    assert by_budget[0.08]["pruned"]["label"] == "win" and by_budget[0.08]["best"] == "win at 6 steps"
    # within 0.16 the dense model at 8 steps (60) is better than the pruned point (70)
    assert by_budget[0.16]["best"] == "dense at 8 steps"
    markdown = frontier_verdict.budget_markdown(frontier_verdict.frame(rows), None)
    assert markdown.count("\n| 0.") == 4 and "sigma not measured" in markdown  # its note follows the spread given


def test_chained_candidates_parse_label_and_folder(tmp_path):
    (chain,) = bench_frontier.parse_candidates("nici:head:0.25+nici:ffn:0.3:kd")
    assert chain["distill"] and chain["granularity"] == "head+ffn" and chain["sparsity"] == 0.3
    assert [c["granularity"] for c in chain["cuts"]] == ["head", "ffn"]
    assert bench_frontier._label(chain, 1000) == "nici head 25% then ffn 30% +1000 steps KD"

    class Args:
        model, runs_dir, seed = "assets/dit", str(tmp_path), 0
    assert bench_frontier._training_dir(chain, Args).name == "dit_nici_head_25pct+nici_ffn_30pct_kd_seed0"
    single = bench_frontier.parse_candidates("obs:0.5")[0]
    assert bench_frontier._label(single, 1000) == "obs channel 50% +1000 steps"
    with pytest.raises(SystemExit, match="criterion\\[:granularity\\]:sparsity"):
        bench_frontier.parse_candidates("nici:head:0.25+ffn")


@pytest.mark.slow
def test_a_chained_candidate_prunes_each_cut_and_counts_against_the_dense_model(tiny_model, tmp_path):
    from core import PruneSpec, prune
    from core.pipeline import load_pipeline

    dense = load_pipeline(tiny_model, device="cpu")
    (spec,) = bench_frontier.parse_candidates("magnitude:channel:0.2+taylor:channel:0.3")
    held, totals = bench_frontier._prune_chain(dense, spec, seed=0)
    first = prune(dense, PruneSpec(criterion="magnitude", granularity="channel", sparsity=0.2, seed=0))
    second = prune(first.pipeline, PruneSpec(criterion="taylor", granularity="channel", sparsity=0.3, seed=0))
    count = lambda pipeline: sum(p.numel() for p in pipeline.unet.parameters())  # noqa: E731
    assert count(held.pipeline) == count(second.pipeline) < count(first.pipeline) < count(dense)
    assert totals["params_ratio"] == pytest.approx(count(held.pipeline) / count(dense), rel=0.02)
    assert totals["macs_ratio"] < first.report.totals["macs_ratio"]
    assert totals["sparsity"] == pytest.approx(
        1 - (1 - first.report.totals["sparsity"]) * (1 - second.report.totals["sparsity"]))
    assert held.spec == second.spec
    assert bench_frontier._prune_chain(dense, bench_frontier.parse_candidates("magnitude:0.2")[0], 0) == (None, {})


@pytest.mark.slow
def test_bench_frontier_measures_a_chained_candidate_after_each_budget(tiny_model, tmp_path):
    """A chained candidate goes through the benchmark like any other: recovered for each budget (the
    longer resuming from the shorter's checkpoint), its ratios against the dense model in its rows."""
    results, csv = tmp_path / "frontier.jsonl", tmp_path / "frontier.csv"
    args = ["--quick", "--model", tiny_model, "--data", "generated", "--results", str(results), "--csv", str(csv),
            "--runs-dir", str(tmp_path / "runs"), "--candidates", "magnitude:channel:0.2+taylor:channel:0.3:kd",
            "--budgets", "1,2"]
    assert bench_frontier.main(args) == 0
    rows = sorted((r for r in bench_frontier.read_rows(results).values() if r["criterion"] != "dense"),
                  key=lambda r: r["finetune_steps"])
    assert [r["label"] for r in rows] == ["magnitude channel 20% then taylor channel 30% +1 steps KD",
                                          "magnitude channel 20% then taylor channel 30% +2 steps KD"]
    assert rows[1]["finetune_resumed_from"] == 1 and rows[0]["distill"]
    assert rows[0]["macs_ratio"] == rows[1]["macs_ratio"] < 0.8 and 0.4 < rows[0]["measured_sparsity"] < 0.6
    table = pd.read_csv(csv)
    assert set(table["granularity"]) == {"-", "channel+channel"} and table["verdict"].notna().all()
    # --table rewrites the CSV from the rows and, with --markdown, writes the tables with their command
    csv.unlink()
    markdown = tmp_path / "tables.md"
    assert bench_frontier.main(["--table", "--results", str(results), "--csv", str(csv), "--markdown", str(markdown)]) == 0
    assert len(pd.read_csv(csv)) == len(table)
    text = markdown.read_text()
    assert f"--table --markdown {markdown}" in text and text.count("\n## ") == 1 and "then taylor channel 30%" in text


def test_the_recovery_budget_curve_is_fitted_against_log10_of_the_budget():
    # frontier at latency 0.08 (6 steps at 1.5x): 80. Gaps +6 after 1k, +4 after 10k: slope -2 per
    # tenfold budget, zero at 10 ** (12 / 2) = 1e6 steps.
    rows = _rows(_dense(4, 80.0), _dense(8, 60.0),
                 _pruned("cut +1000 steps KD", 6, 86.0, 1.5), _pruned("cut +10000 steps KD", 6, 84.0, 1.5) | {"key": "b"},
                 _pruned("other +1000 steps KD", 6, 90.0, 1.5) | {"key": "c"})
    group = frontier_verdict.frame(rows)
    group.loc[group["label"] == "cut +10000 steps KD", "finetune_steps"] = 10000
    (curve,) = frontier_verdict.budget_curve(group)  # "other" has one budget: no curve
    assert curve["candidate"] == "cut KD" and curve["steps"] == 6 and curve["budgets"] == [1000, 10000]
    assert curve["slope"] == pytest.approx(-2.0) and curve["intercept"] == pytest.approx(12.0)
    assert curve["meets_at"] == pytest.approx(1e6) and not curve["measured"]
    assert "~1,000,000 steps (extrapolated)" in frontier_verdict.budget_curve_markdown(group)
    group.loc[group["label"] == "cut +10000 steps KD", "fid_minus_frontier"] = -0.5  # met at a measured budget
    (curve,) = frontier_verdict.budget_curve(group)
    assert curve["meets_at"] == 10000 and curve["measured"]
    group.loc[group["label"] == "cut +10000 steps KD", "fid_minus_frontier"] = 7.0  # growing gap
    assert math.isinf(frontier_verdict.budget_curve(group)[0]["meets_at"])


def test_a_win_against_one_samplers_frontier_is_checked_against_the_best_samplers():
    # DDIM's dense frontier: 4 steps 80, 8 steps 60; DPM-Solver++'s: 4 steps 66, 8 steps 58.
    rows = _rows(_dense(4, 80.0, scheduler="ddim"), _dense(8, 60.0, scheduler="ddim"),
                 _dense(8, 61.0, seed=1, scheduler="ddim"),
                 _dense(4, 66.0), _dense(8, 58.0), _dense(8, 59.0, seed=1),
                 _pruned("cut", 6, 70.0, 1.5, scheduler="ddim"))  # latency 0.08: DDIM 80, DPM-Solver++ 66
    table = frontier_verdict.frame(rows)
    point = table[table["label"] == "cut"].iloc[0]
    assert point["verdict"] == "win" and point["best_sampler_frontier_fid"] == pytest.approx(66.0)
    assert point["verdict_best_sampler"] == "loss"
    ddim = table[table["scheduler"] == "ddim"]
    sentence = frontier_verdict.verdict_sentence(ddim, "m", "ddim")
    assert "pruning wins only against DDIM's own frontier" in sentence
    assert "0 against the best sampler's dense frontier (here 66.0" in sentence
    # the winning point's own latency is a budget of its own, where it is the best configuration
    budgets = {round(b["budget"], 3): b["best"] for b in frontier_verdict.budget_table(ddim)}
    assert budgets == {0.08: "cut at 6 steps", 0.16: "dense at 8 steps"}


def test_one_speed_up_per_pruned_network_pooled_over_its_rows():
    """Every budget, step count and sampler of one pruned network measures the same per-step
    speed-up: the rows share the median of their measurements, and their latencies follow."""
    rows = _rows(_dense(4, 80.0), _dense(8, 60.0),
                 _pruned("cut +1000 steps KD", 4, 75.0, 1.4, low=1.2, high=1.6),
                 _pruned("cut +1000 steps KD", 6, 70.0, 2.7, low=1.0, high=3.0) | {"key": "b"},
                 _pruned("cut +3000 steps KD", 8, 65.0, 1.5, low=1.4, high=1.7) | {"key": "c"},
                 _pruned("other +1000 steps", 6, 70.0, 1.1, low=1.0, high=1.3) | {"key": "d"})
    table = frontier_verdict.frame(rows)
    cut = table[table["label"].str.startswith("cut")]
    assert (cut["speedup"] == 1.5).all() and (cut["speedup_measurements"] == 3).all()
    assert (cut["speedup_low"] == 1.4).all() and (cut["speedup_high"] == 2.7).all()  # the range of the medians
    assert cut["relative_latency"].tolist() == pytest.approx([4 / 50 / 1.5, 6 / 50 / 1.5, 8 / 50 / 1.5])
    assert cut["relative_latency_high"].tolist() == pytest.approx([4 / 50 / 1.4, 6 / 50 / 1.4, 8 / 50 / 1.4])
    other = table[table["label"] == "other +1000 steps"].iloc[0]  # one measurement: its own per-round range
    assert (other["speedup"], other["speedup_low"], other["speedup_high"], other["speedup_measurements"]) == (1.1, 1.0, 1.3, 1)
    assert frontier_verdict.architecture("nici block 33% +10000 steps KD") == "nici block 33% KD"
    # from 4 measurements on, the spread is their interquartile range: one busy round does not set it
    more = dict(rows, **{f"e{i}": _pruned("cut +10000 steps KD", steps, 60.0, s) | {"key": f"e{i}"}
                         for i, (steps, s) in enumerate(((10, 1.45), (12, 1.55), (16, 4.0)))})
    cut = frontier_verdict.frame(more).query("label.str.startswith('cut')")
    speeds = pd.Series([1.4, 2.7, 1.5, 1.45, 1.55, 4.0])
    assert (cut["speedup"] == speeds.median()).all()
    assert (cut["speedup_low"] == speeds.quantile(0.25)).all() and (cut["speedup_high"] == speeds.quantile(0.75)).all()


def test_the_published_tables_frontier_section_has_one_verdict_per_model_and_sampler():
    from benchmarks import suite

    table = frontier_verdict.frame(bench_frontier.read_rows(bench_frontier.RESULTS))
    lines = suite.frontier_section()
    assert lines[0].startswith("## Dense frontier vs pruned + recovered") and "docs/frontier-tables.md" in lines[2]
    verdicts = [line for line in lines if line.startswith("- **")]
    assert len(verdicts) == table.groupby(["model", "scheduler"]).ngroups
    assert any("the default UNet, DPM-Solver++: pruning" in line for line in verdicts)
