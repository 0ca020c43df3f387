"""The verdict card and the "Is pruning worth it?" answer: pure functions of measured numbers."""
import pandas as pd
import pytest

from diffprune_ui.verdict import (no_measured_speedup, quality_text, size_text, speed_text, verdict, worth_it,
                                  worth_it_sentence)

STRUCTURED = dict(sparsity=0.3, params_ratio=0.7, macs_ratio=0.62)
MASKED = dict(sparsity=0.5, params_ratio=1.0, macs_ratio=1.0)
DENSE = dict(kid=0.010, kid_std=0.004, num_samples=16)


def timing(median, low, high):
    return dict(speedup=median, speedup_low=low, speedup_high=high, rounds=5, within_noise=low <= 1 <= high)


def test_structured_and_faster():
    text = speed_text(timing(1.45, 1.30, 1.60), "channel")
    assert text.startswith("1.45x faster than dense") and "1.30-1.60x" in text and "noise" not in text


@pytest.mark.parametrize("median", [1.29, 1.63, 0.66])
def test_a_range_that_contains_one_is_about_one_within_noise_whatever_the_median(median):
    text = speed_text(timing(median, 0.6, 1.7), "channel")
    assert text.startswith("about 1.0x, within timing noise")
    assert f"{median:.2f}" not in text and "faster" not in text and "slower" not in text


def test_structured_and_slower():
    text = speed_text(timing(0.8, 0.7, 0.9), "head")
    assert text.startswith("1.25x slower than dense") and "faster" not in text


@pytest.mark.parametrize("granularity", ["unstructured", "2:4", "4:8"])
def test_masked_granularities_zero_weights_and_run_at_dense_speed(granularity):
    size = size_text(MASKED, granularity)
    assert size.startswith("50.0% of the prunable weights zeroed") and "kept" not in size
    assert ("2:4 pattern" in size) == (granularity == "2:4")
    for measured in (timing(1.02, 0.95, 1.08), timing(0.66, 0.6, 0.7), None):
        speed = speed_text(measured, granularity)
        assert speed.startswith("about 1.0x: zeroed weights run at dense speed without sparse kernels")
        assert "faster" not in speed and "slower" not in speed


def test_structured_size_names_parameters_and_macs_kept():
    assert size_text(STRUCTURED, "channel") == ("70.0% of the parameters and 62.0% of the MACs kept "
                                                "(30.0% of the prunable weights removed)")


def test_quality_against_dense_with_its_noise():
    near = quality_text(dict(kid=0.014, kid_std=0.004, num_samples=16), DENSE)
    assert "noise ± 0.0057 at 16 samples" in near and near.endswith("as good as dense within noise")
    far = quality_text(dict(kid=0.08, kid_std=0.01, num_samples=16), DENSE)
    assert far.endswith("worse than dense beyond noise")
    assert quality_text(dict(fid=80.0), dict(fid=60.0), "fid").startswith("FID 80.0 vs dense 60.0: higher (worse)")
    assert quality_text({}, DENSE).startswith("not evaluated")


def test_the_card_leads_with_the_final_stage():
    evaluations = {"dense": DENSE, "one-shot": dict(kid=0.3, kid_std=0.02, num_samples=16),
                   "recovered": dict(kid=0.02, kid_std=0.005, num_samples=16)}
    card = verdict("channel", STRUCTURED, timing(1.3, 0.9, 1.5), evaluations, "kid", 20)
    lines = card.splitlines()
    assert lines[0] == "### Verdict: recovered (20 recovery steps)"
    assert lines[1].startswith("- **Quality:** KID 0.0200") and lines[2].startswith("- **One-shot, before recovery:** KID 0.3000")
    assert "**Speed:** about 1.0x, within timing noise" in card
    one_shot = verdict("2:4", MASKED, timing(1.0, 0.9, 1.1), {"dense": DENSE, "one-shot": DENSE}, "kid")
    assert one_shot.startswith("### Verdict: one-shot") and "kept" not in one_shot


def test_chart_points_without_a_measured_speed_up():
    assert no_measured_speedup(dict(granularity="unstructured", speedup=0.66))
    assert no_measured_speedup(dict(granularity="2:4", speedup=1.3))
    assert no_measured_speedup(dict(granularity="channel", speedup=1.29, speedup_low=0.9, speedup_high=1.6))
    assert not no_measured_speedup(dict(granularity="channel", speedup=1.5, speedup_low=1.2, speedup_high=1.7))
    assert not no_measured_speedup(dict(granularity="channel", speedup=1.5))  # no range: drawn as measured
    assert not no_measured_speedup(dict(granularity="channel", speedup=1.5, speedup_low=float("nan"), speedup_high=2))


def test_the_latency_chart_draws_no_measured_speed_up_at_one():
    import pandas as pd

    from diffprune_ui import figures

    rows = pd.DataFrame([
        dict(criterion="obs", granularity="unstructured", sparsity=0.5, speedup=0.66, kid=0.02, num_samples=16,
             num_inference_steps=25, model="m", reference="r", finetune_steps=0),
        dict(criterion="taylor", granularity="channel", sparsity=0.3, speedup=1.5, speedup_low=1.3, speedup_high=1.7,
             kid=0.03, num_samples=16, num_inference_steps=25, model="m", reference="r", finetune_steps=0)])
    figure = figures.pareto(rows, ("m", 16, 25, "r"), None, "kid")
    flat = next(trace for trace in figure.data if trace.name.startswith("obs"))
    assert list(flat.x) == [1.0] and flat.marker.symbol.endswith("-dot") and "no measured speed-up" in flat.name
    assert "zeroed weights run at dense speed" in flat.text[0]
    faster = next(trace for trace in figure.data if trace.name.startswith("taylor"))
    assert list(faster.x) == [pytest.approx(1 / 1.5)] and not faster.marker.symbol.endswith("-dot")
    current = dict(rows.iloc[1], speedup_low=0.9)  # this run, within noise: drawn at 1.0 with its label unclipped
    figure = figures.pareto(rows, ("m", 16, 25, "r"), current, "kid")
    this_run = next(trace for trace in figure.data if trace.name == "this run, one-shot")
    assert list(this_run.x) == [1.0] and this_run.cliponaxis is False and "within timing noise" in this_run.hovertext[0]
    assert figure.layout.yaxis.range[0] < 0.02 and figure.layout.yaxis.range[1] > 0.03  # room for the labels


DENSE_LINE = [dict(relative_latency=k / 50, kid=v, num_inference_steps=k) for k, v in ((8, 0.010), (12, 0.008), (50, 0.008))]


def test_worth_it_compares_each_point_with_the_dense_line_at_its_latency():
    worse = [dict(label="a", relative_latency=0.20, kid=0.02), dict(label="b", relative_latency=0.9, kid=0.012)]
    answer = worth_it(DENSE_LINE, worse, "kid")
    assert (answer["compared"], answer["beating"]) == (2, 0) and answer["best"]["label"] == "b"
    sentence = worth_it_sentence(answer, "kid", "the shipped results")
    assert "**Is pruning worth it? No** for the shipped results" in sentence and "between 12 and 50 steps" in sentence
    better = worth_it(DENSE_LINE, worse + [dict(label="c", relative_latency=0.2, kid=0.005)], "kid")
    assert better["beating"] == 1 and better["best"]["label"] == "c"
    assert worth_it_sentence(better, "kid", "your run").startswith("**Is pruning worth it? Yes** for your run: 1 of 3")
    # a point faster than the fastest dense measurement cannot be compared
    assert worth_it(DENSE_LINE, [dict(label="d", relative_latency=0.05, kid=0.5)], "kid") is None
    assert "Not answered" in worth_it_sentence(None, "kid", "your run")


def test_a_block_shortfall_is_part_of_the_size_line():
    totals = dict(sparsity=0.667, params_ratio=0.4, macs_ratio=0.45,
                  sparsity_shortfall="block: asked for 50 % of the prunable parameters, removing whole blocks reaches 66.7 %")
    assert size_text(totals, "block").endswith("; not the asked sparsity: block: asked for 50 % of the prunable "
                                               "parameters, removing whole blocks reaches 66.7 %")
    assert "not the asked" not in size_text(dict(totals, sparsity_shortfall=None), "block")


def test_the_shipped_sentence_uses_the_benchmarks_verdict_beyond_the_two_spreads(tmp_path):
    from diffprune_ui import quality_answer

    def row(label, criterion, steps, latency, fid, gap, margin, verdict, scheduler="ddim"):
        return dict(model="default", scheduler=scheduler, label=label, criterion=criterion, num_inference_steps=steps,
                    num_samples=256, relative_latency=latency, fid=fid, kid=0.01, fid_minus_frontier=gap,
                    margin=margin, verdict=verdict)

    dense = [row("dense", "dense", 4, 0.08, 80.0, None, None, "frontier"),
             row("dense", "dense", 8, 0.16, 60.0, None, None, "frontier")]
    cases = {"No": ["loss", "loss"], "Not beyond the noise": ["loss", "tie"], "Yes": ["tie", "win"]}
    for word, verdicts in cases.items():
        pruned = [row("a +1000 steps", "nici", 6, 0.1, 78.0, 3.0, 1.2, verdicts[0]),
                  row("b +1000 steps", "nici", 6, 0.1, 74.0, -1.0 if verdicts[1] != "win" else -2.0, 1.2, verdicts[1])]
        path = tmp_path / f"{word}.csv"
        pd.DataFrame(dense + pruned).to_csv(path, index=False)
        sentence = quality_answer.shipped_sentence("kid", path=path, model="default", scheduler="ddim")
        assert sentence.startswith(f"**Is pruning worth it? {word}** for the shipped results (default model, DDIM, 256")
        assert "b +1000 steps at 6 steps" in sentence and "± 1.2" in sentence  # the closest point, with its margin
    # the win undone by the dense model with another sampler at the same latency
    frame = pd.DataFrame(dense + pruned).assign(verdict_best_sampler=["frontier", "frontier", "loss", "loss"],
                                                best_sampler_frontier_fid=[None, None, 70.5, 70.5])
    frame.to_csv(path, index=False)
    sentence = quality_answer.shipped_sentence("kid", path=path, model="default", scheduler="ddim")
    assert sentence.startswith("**Is pruning worth it? Not against the best sampler**") and "(FID 70.5)" in sentence
    frame.assign(verdict_best_sampler=["frontier", "frontier", "loss", "win"]).to_csv(path, index=False)
    assert "**Is pruning worth it? Yes**" in quality_answer.shipped_sentence("kid", path=path, model="default",
                                                                            scheduler="ddim")
    # a table without the benchmark's verdict falls back to the KID comparison
    path = tmp_path / "old.csv"
    pd.DataFrame(dense + pruned).drop(columns=["verdict", "margin"]).to_csv(path, index=False)
    assert "(2 sigma" not in quality_answer.shipped_sentence("kid", path=path, model="default", scheduler="ddim")
    # a point compared without a measured spread: the benchmark's verdict is not used for part of the table
    partial = pd.DataFrame(dense + pruned).assign(verdict=["frontier", "frontier", "loss", "spread not measured"])
    partial.to_csv(path, index=False)
    assert "(2 sigma" not in quality_answer.shipped_sentence("kid", path=path, model="default", scheduler="ddim")
