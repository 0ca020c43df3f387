"""Every event handler of the Gradio app, called as a plain function on real (tiny) diffusers models.

The browser and ``gradio_client`` tests (test_app_e2e.py, test_app_browser.py) cover the wiring;
these cover what each handler returns and how it fails: a ``gr.Error`` naming the field, never a
crash, and the dense cached model untouched.
"""
import re
import zipfile
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from PIL import Image

from core.criteria import CRITERIA
from core.pipeline import load_pipeline
from core.schedules import SCHEDULES
from core.spec import PRESETS
from diffprune_ui import app as ui_app
from diffprune_ui import handlers

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def results_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFPRUNE_RESULTS_DIR", str(tmp_path / "results"))
    return tmp_path / "results"


class RecordingProgress:
    """Stands in for gr.Progress: records (fraction, description) pairs."""

    def __init__(self, on_call=None):
        self.calls = []
        self.on_call = on_call

    def __call__(self, fraction, desc=None):
        self.calls.append((fraction, desc))
        if self.on_call is not None:
            self.on_call(len(self.calls))


class FakeRequest:
    session_hash = "test-session"


SCHEDULE_DEFAULTS = ("threshold", 0.05, "1,1,1,1", 25, 0.8, 1.2, 10, "0:1, 100:0.5")


def run_args(source, criterion="magnitude", granularity="channel", sparsity=0.3, schedule="custom",
             custom="5:1, 300:0.5", num_samples=4, steps=3, quality="KID", recovery_steps=0, recovery_lr=1e-3,
             recovery_batch=4, distill=False, recovery_data="shipped training images", recovery_files=None,
             export_oneshot=False):
    _, threshold, interval, k, w_min, w_max, uniform_count, _ = SCHEDULE_DEFAULTS
    return [source, criterion, granularity, sparsity, schedule, threshold, interval, k, w_min, w_max, uniform_count,
            custom, 2, 1, num_samples, steps, 0, quality, recovery_steps, recovery_lr, recovery_batch, distill,
            recovery_data, recovery_files, export_oneshot]


# ------------------------------------------------------------------------------ controls
def test_parse_custom_schedule_forms():
    assert handlers.parse_custom_schedule("0:1, 100:0.5") == [(0, 1.0), (100, 0.5)]
    assert handlers.parse_custom_schedule("[[3, 2.0]]") == [(3, 2.0)]
    for bad in ("", "10", "a:b", "[[1, 2]"):
        with pytest.raises(ValueError, match="custom schedule"):
            handlers.parse_custom_schedule(bad)


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_preview_schedule_every_schedule(schedule):
    figure = handlers.preview_schedule(schedule, *SCHEDULE_DEFAULTS[1:])
    assert isinstance(figure, go.Figure)
    names = [trace.name for trace in figure.data]
    if schedule != "threshold":  # adaptive: decided during calibration, shown as a note
        assert any(schedule in (name or "") for name in names), names
        chosen = next(trace for trace in figure.data if schedule in (trace.name or ""))
        assert len(chosen.x) > 0 and max(chosen.y) > 0


def test_preview_schedule_invalid_shows_message_not_error():
    figure = handlers.preview_schedule("custom", *SCHEDULE_DEFAULTS[1:-1], "0:-1")
    assert "invalid schedule" in figure.layout.annotations[0].text


def test_schedule_visibility_shows_only_relevant_parameters():
    for schedule, visible_index in (("threshold", 0), ("interval", 1), ("log-decrease", 2), ("uniform", 3),
                                    ("custom", 4)):
        updates = handlers.schedule_visibility(schedule)
        assert [u["visible"] for u in updates] == [i == visible_index for i in range(5)]


@pytest.mark.parametrize("criterion", sorted(CRITERIA))
def test_criterion_changed_offers_its_granularities(criterion):
    granularity, schedule, group, note, distill = handlers.criterion_changed(criterion)
    entry = CRITERIA[criterion]
    assert distill["value"] == (criterion == "nici")  # NiCI-Pruning recovers with distillation
    assert granularity["choices"] and granularity["value"] == granularity["choices"][0]
    assert group["visible"] == entry.needs_calibration
    assert schedule["value"] in SCHEDULES
    assert entry.description in note


def test_spec_from_controls_names_the_bad_field():
    with pytest.raises(ValueError, match="criterion must be one of"):
        handlers.spec_from_controls("nope", "channel", 0.3, *SCHEDULE_DEFAULTS, 2, 1, 0)
    with pytest.raises(ValueError, match="interval weights"):
        handlers.spec_from_controls("nici", "channel", 0.3, "interval", 0.05, "1,x", 25, 0.8, 1.2, 10, "", 2, 1, 0)
    spec = handlers.spec_from_controls("magnitude", "2:4", 0.9, *SCHEDULE_DEFAULTS, 2, 1, 0)
    assert spec.sparsity == pytest.approx(0.5)  # N:M implies it; the slider is ignored


# ------------------------------------------------------------------------------ model + first screen
def test_calibration_estimate_before_a_run(tiny_model):
    interval = ("interval",) + SCHEDULE_DEFAULTS[1:]
    text = handlers.calibration_estimate(tiny_model, "nici", "channel", 0.3, *interval, 2, 3, 0)
    assert "6 images x 235 timesteps = 1,410 passes" in text and "measured" in text
    threshold = handlers.calibration_estimate(tiny_model, "taylor", "channel", 0.3, *SCHEDULE_DEFAULTS, 2, 1, 0)
    assert "up to" in threshold and "1000 timesteps" in threshold
    no_calibration = handlers.calibration_estimate(tiny_model, "magnitude", "channel", 0.3, *SCHEDULE_DEFAULTS, 2, 1, 0)
    assert "needs no calibration" in no_calibration
    bad = handlers.calibration_estimate(tiny_model, "nici", "channel", 0.3, *interval, 0, 1, 0)
    assert bad.startswith("*cannot estimate") and "calibration batch size" in bad


def test_dense_preview_and_model_card(tiny_model):
    grid, card, classes, prompt = handlers.dense_preview(tiny_model, seed=1, steps=2)
    assert classes["visible"] is False and prompt["visible"] is False  # unconditional: no class picker, no prompt
    assert isinstance(grid, Image.Image) and grid.width >= 4 * 8 * 4  # 4 columns of 8 px, scaled 4x, plus padding
    assert "parameters" in card
    again, _, _, _ = handlers.dense_preview(tiny_model, seed=1, steps=2)
    assert np.array_equal(np.asarray(grid), np.asarray(again))  # same seed, same samples


def test_bad_hub_id_is_a_short_error_without_hub_internals():
    with pytest.raises(gr.Error) as caught:
        handlers.dense_preview("no-such-user/no-such-model", 0, 2)
    message = str(caught.value)
    assert "'no-such-user/no-such-model'" in message and "Hugging Face hub" in message
    assert "\n" not in message and len(message) < 260 and "http" not in message


def test_first_screen_shows_samples_curve_and_charts(tiny_model):
    grid, card, curve, pareto, by_sparsity, recovery, classes, prompt, frontier = handlers.first_screen(
        tiny_model, 0, 2, *SCHEDULE_DEFAULTS)
    # the shipped dense frontier (the dense model at fewer steps) as a line labelled by steps
    line = next(trace for trace in frontier.data if trace.name == "dense, fewer steps (free)")
    shipped = pd.read_csv(handlers.SHIPPED_FRONTIER)
    dense = shipped[shipped["criterion"] == "dense"]
    dense = dense[(dense["model"] == "default") & (dense["scheduler"] == "ddim")]  # the page's first choice
    assert [int(t) for t in line.text] == sorted(dense["num_inference_steps"]) and list(line.x) == sorted(line.x)
    assert isinstance(grid, Image.Image)
    assert all(isinstance(f, go.Figure) for f in (curve, pareto, by_sparsity, recovery))
    # The shipped 2,000-step recovery comparison is on the first screen: one-shot and recovered KID per
    # method (the metric of the other charts), with the dense model's KID.
    bars = {trace.name: list(trace.y) for trace in recovery.data if trace.type == "bar"}
    assert set(bars) == {"one-shot", "recovered"} and len(bars["one-shot"]) == 3
    assert [round(v, 4) for v in bars["recovered"]] == [0.0478, 0.0356, 0.0205]
    assert recovery.layout.yaxis.title.text.startswith("KID") and frontier.layout.yaxis.title.text.startswith("KID")
    assert len(curve.data) >= 1


# ------------------------------------------------------------------------------ run
RUN_FIELDS = ("status", "summary", "dense_grid", "pruned_grid", "slider_pair", "pair_update", "pairs", "importance",
              "timestep_heatmap", "layers", "used", "pareto", "by_sparsity", "archive", "recovery", "schedule_plot",
              "recovered_grid", "loss_plot", "pair_kind", "recovery_chart", "verdict")


def run(source, progress=None, request=None, **change) -> dict:
    outputs = handlers.run_prune(*run_args(source, **change), request=request or FakeRequest(),
                                 progress=progress or RecordingProgress())
    assert len(outputs) == len(RUN_FIELDS) == handlers.RUN_OUTPUTS
    return dict(zip(RUN_FIELDS, outputs))


def is_note(figure) -> bool:
    """A view replaced by its one-line note (safe_view) has no traces, only an annotation."""
    return isinstance(figure, go.Figure) and not figure.data and "could not be drawn" in (
        figure.layout.annotations[0].text if figure.layout.annotations else "")


def test_run_prune_returns_every_view(tiny_model):
    progress = RecordingProgress()
    out = run(tiny_model, progress=progress)
    assert out["status"].startswith("**Done**")
    assert isinstance(out["summary"], pd.DataFrame)
    row = dict(zip(out["summary"][""], zip(out["summary"]["dense"], out["summary"]["one-shot"])))
    assert int(row["parameters"][1].replace(",", "")) < int(row["parameters"][0].replace(",", ""))
    assert "paired rounds, timed in" in row["speed-up (paired: dense / pruned)"][1]
    assert "±" in row["KID (± std)"][1]
    assert out["dense_grid"].size == out["pruned_grid"].size
    images = out["pairs"]["images"]
    assert set(images) == {"dense", "one-shot"} and out["recovered_grid"] is None
    assert len(images["dense"]) == handlers.GRID_IMAGES and out["pair_update"]["maximum"] == handlers.GRID_IMAGES - 1
    assert out["slider_pair"] == (images["dense"][0], images["one-shot"][0])
    assert out["pair_kind"]["choices"] == ["dense | one-shot"]
    for name in ("importance", "timestep_heatmap", "layers", "used", "pareto", "by_sparsity"):
        assert isinstance(out[name], go.Figure) and not is_note(out[name]), name
    assert out["importance"].data[0].type == "heatmap"
    # The verdict card leads the results: quality with its noise, size kept (structured), speed.
    assert out["verdict"].startswith("### Verdict: one-shot")
    assert "noise ± " in out["verdict"] and "of the MACs kept" in out["verdict"] and "**Speed:**" in out["verdict"]
    assert "Kept 100" not in out["status"] and "of the MACs kept" in out["status"]
    descriptions = " ".join(desc or "" for _, desc in progress.calls)
    for stage in ("scoring", "sampling", "timing dense and pruned", "exporting"):
        assert stage in descriptions, descriptions
    fractions = [f for f, _ in progress.calls]
    assert 0 <= min(fractions) and max(fractions) <= 1
    # One-shot channel pruning says it needs recovery and cites the shipped fine-tuning results.
    assert "needs recovery" in out["recovery"] or "need recovery" in out["recovery"]
    assert "249.7" in out["recovery"] and "74.3" in out["recovery"] and "58.0" in out["recovery"]
    # The export is the checkpoint PruneResult.save writes (its report written once, in report/) and a usage note.
    archive = out["archive"]
    measured = float(row["sparsity of prunable weights"][1].rstrip("%"))
    named = re.fullmatch(r"pruned-magnitude-channel-(\d+)pct\.zip", Path(archive).name)
    assert named and abs(int(named.group(1)) - measured) <= 0.5  # the measured sparsity
    with zipfile.ZipFile(archive) as handle:
        names = handle.namelist()
        assert "pruned-model/USAGE.md" in names and "pruned-model/report/layers.csv" in names
        handle.extractall(archive + ".d")
    pruned = load_pipeline(archive + ".d/pruned-model", device="cpu")
    assert sum(p.numel() for p in pruned.unet.parameters()) == int(row["parameters"][1].replace(",", ""))
    # The cached dense model is untouched by the run.
    dense = handlers.cached_pipeline(tiny_model)
    assert sum(p.numel() for p in dense.unet.parameters()) == int(row["parameters"][0].replace(",", ""))
    # The run is stored: the results charts of its settings now have it.
    table = handlers.results_table()
    assert (table["kind"] == "app-run").sum() >= 1


def test_a_run_with_grid_sized_evaluation_scores_its_grid_as_fresh_samples_would_be(tiny_model, tmp_path):
    """With as many evaluation samples as the grid shows, the run scores the grid's samples instead
    of sampling them again: its KID equals a fresh evaluation of the exported pruned model."""
    from core import evaluate

    out = run(tiny_model, num_samples=handlers.GRID_IMAGES, steps=2)
    assert out["status"].startswith("**Done**"), out["status"]
    with zipfile.ZipFile(out["archive"]) as handle:
        handle.extractall(tmp_path)
    pruned = load_pipeline(str(tmp_path / "pruned-model"), device="cpu")
    dense = load_pipeline(tiny_model, device="cpu")
    fresh = evaluate(pruned, handlers.GRID_IMAGES, num_inference_steps=2, seed=0, metrics=("kid",),
                     reference=handlers.evaluation_reference(tiny_model), dense_pipeline=dense)
    assert fresh["samples_reused"] is False
    shown = out["summary"].set_index("").loc["KID (± std)", "one-shot"]
    assert shown.startswith(f"{fresh['kid']:.4f}"), (shown, fresh["kid"])


@pytest.mark.parametrize("granularity", ["unstructured", "2:4", "4:8", "channel", "head"])
def test_run_prune_every_granularity_completes(tiny_model, granularity):
    # whole heads are about 9 % of the tiny model's prunable weights
    out = run(tiny_model, granularity=granularity, sparsity=0.05 if granularity == "head" else 0.5)
    assert out["status"].startswith("**Done**"), out["status"]
    assert out["importance"].data and out["importance"].data[0].type == "heatmap"
    assert not any(is_note(out[name]) for name in ("importance", "timestep_heatmap", "layers", "used", "pareto"))
    assert Path(out["archive"]).exists() and "pct.zip" in out["archive"]
    assert bool(out["recovery"]) == (granularity in ("channel", "head"))
    if granularity in ("unstructured", "2:4"):  # zeroed weights: never "kept 100 % of the parameters"
        assert "of the prunable weights zeroed" in out["verdict"] and "kept" not in out["verdict"]
        assert "zeroed weights run at dense speed without sparse kernels" in out["verdict"]
        assert "of the prunable weights zeroed" in out["status"] and "Kept" not in out["status"]


@pytest.mark.parametrize("granularity, sparsity", [("head", 0.25), ("ffn", 0.3), ("block", 0.3), ("2:4", 0.5)])
def test_run_prune_on_the_embedded_dit_completes(granularity, sparsity):
    # The second embedded model by name in the source box: a class-conditional latent transformer.
    out = run("dit-fashion-mnist", granularity=granularity, sparsity=sparsity, num_samples=4, steps=2)
    assert out["status"].startswith("**Done**"), out["status"]
    assert out["dense_grid"].size == out["pruned_grid"].size
    row = dict(zip(out["summary"][""], zip(out["summary"]["dense"], out["summary"]["one-shot"])))
    if granularity != "2:4":
        assert int(row["parameters"][1].replace(",", "")) < int(row["parameters"][0].replace(",", ""))
    assert "paired rounds, timed in" in row["speed-up (paired: dense / pruned)"][1]
    assert Path(out["archive"]).exists()
    assert "dit" in handlers.model_card("dit-fashion-mnist", handlers.cached_pipeline("dit-fashion-mnist"))


def test_recovery_of_the_embedded_dit_trains_on_labelled_images():
    """The DiT recovers on the shipped training images, each with its own class (not random ones)."""
    out = run("dit-fashion-mnist", granularity="head", sparsity=0.25, num_samples=4, steps=2, recovery_steps=2)
    assert out["status"].startswith("**Done**") and "Recovered with 2 steps" in out["status"], out["status"]
    data = out["summary"].set_index("").loc["recovery data", "recovered"]
    assert "shipped training images, each with its class" in data, data


def test_importance_heatmap_takes_one_and_two_dimensional_vectors():
    import numpy as np
    from diffprune_ui import figures

    figure = figures.importance_heatmap({"a": np.arange(10.0), "b": np.ones((8, 36)), "c": np.array(3.0)})
    assert figure.data[0].type == "heatmap" and list(figure.data[0].y) == ["a", "b", "c"]


PRESET_NAMES = sorted(name for name in PRESETS if not name.endswith("-paper"))


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_run_prune_every_preset_completes(tiny_model, name):
    values = ui_app.preset_values(name)
    args = [tiny_model] + [values[f] for f in ui_app.PRESET_FIELDS[:11]] + [
        values["calibration_batch_size"], values["calibration_batches"], 4, 2, 0, "KID", 0, 1e-3, 4, values["distill"]]
    outputs = handlers.run_prune(*args, request=FakeRequest(), progress=RecordingProgress())
    assert outputs[0].startswith("**Done**"), outputs[0]
    assert PRESETS[name].label in outputs[0]  # the run used exactly the preset's spec
    assert Path(outputs[13]).exists()


def _controls_after(clicks) -> dict:
    """The controls after clicking presets in this order (criterion.input does not fire on a preset)."""
    state = dict(criterion="taylor", granularity="channel", sparsity=0.3)
    for name in clicks:
        state.update(ui_app.preset_values(name))
    return state


@pytest.mark.parametrize("first", sorted(PRESETS))
def test_presets_set_exactly_their_spec_in_any_order(first):
    for second in sorted(PRESETS):
        state = _controls_after([first, second])
        spec = handlers.spec_from_controls(*(state[f] for f in ui_app.PRESET_FIELDS if f != "distill"), seed=0)
        assert spec == PRESETS[second], (first, second, spec.to_json(), PRESETS[second].to_json())
        assert state["distill"] == (PRESETS[second].criterion == "nici")  # NiCI-Pruning recovers with distillation
        updates = ui_app.preset_updates(second)
        assert updates[1]["value"] == PRESETS[second].granularity and PRESETS[second].granularity in updates[1]["choices"]


def test_the_few_step_preset_is_the_shipped_winning_configuration_with_its_measured_numbers():
    """The preset that beat sampling with fewer steps: its spec, recovery, sampler and step count
    are a row of the shipped frontier results that wins against every sampler's dense frontier,
    and its note gives that row's numbers."""
    from diffprune_ui import quality_answer

    values, spec = ui_app.preset_values("few-step-win"), PRESETS["few-step-win"]
    assert (values["sampler"], values["steps"], values["distill"]) == ("dpm-solver++", 4, True)
    table = pd.read_csv(handlers.SHIPPED_FRONTIER)
    row = table[(table["model"] == "default") & (table["scheduler"] == values["sampler"])
                & (table["criterion"] == spec.criterion) & (table["granularity"] == spec.granularity)
                & (table["sparsity"] == spec.sparsity) & (table["finetune_steps"] == values["recovery_steps"])
                & (table["num_inference_steps"] == values["steps"]) & table["distill"]]
    assert len(row) == 1 and row.iloc[0]["verdict"] == "win" and row.iloc[0]["verdict_best_sampler"] == "win"
    note = ui_app.preset_updates("few-step-win")[-1]
    assert f"FID {row.iloc[0]['fid']:.1f} at 4 DPM-Solver++ steps" in note and "**win**" in note
    assert f"{row.iloc[0]['relative_latency']:.3f} of the dense model's 50-step latency" in note
    assert ui_app.preset_note("quick-demo") == ""
    other = PRESETS["diffpruning"]  # a configuration the benchmark never measured says so
    assert quality_answer.measured_win(other, 1000, 4, "ddim").startswith("**Measured:** not in the shipped")
    assert ui_app.preset_values("quick-demo")["sampler"] == "ddim"  # every other preset samples with DDIM


def test_presets_set_recovery_and_evaluation_and_the_page_opens_with_the_quick_demo():
    from core.recovery import RECOVERY_DEFAULTS

    quick = ui_app.preset_values("quick-demo")
    assert PRESETS["quick-demo"].criterion in {name for name, c in CRITERIA.items() if not c.needs_calibration}
    assert (quick["recovery_steps"], quick["num_samples"], quick["steps"], quick["quality"]) == (20, 16, 25, "KID")
    assert ui_app.preset_values("diffpruning")["recovery_steps"] == RECOVERY_DEFAULTS["steps"]
    assert ui_app.preset_values("obs-diff")["recovery_steps"] == 0  # OBS-Diff is one-shot
    updates = ui_app.preset_updates("quick-demo")
    fields = ui_app.PRESET_FIELDS + ui_app.RUN_PRESET_FIELDS
    assert [u["value"] for u in updates[:len(fields)]] == [quick[f] for f in fields]
    # The page's own defaults are the quick demo's spec (readable without the engine).
    spec = handlers.spec_from_controls(**ui_app.QUICK_DEMO, schedule="uniform", threshold=0.05, interval_weights="1,1,1,1",
                                       num_steps=25, w_min=0.8, w_max=1.2, num_timesteps=10, custom_text="0:1",
                                       calibration_batch_size=4, calibration_batches=1, seed=0)
    assert spec == PRESETS["quick-demo"]
    demo = ui_app.build_demo()
    components = {c.get("props", {}).get("elem_id"): c for c in demo.get_config_file()["components"]}
    assert components["recovery-steps"]["props"]["value"] == 20
    for accordion in ("calibration-settings", "recovery-settings", "evaluation-settings", "model-source"):
        assert components[accordion]["props"]["open"] is False, accordion


def test_the_first_screen_comes_from_shipped_files_without_the_engine():
    """Served before torch is imported: the shipped grid, card, charts and sentence."""
    import subprocess
    import sys

    code = ("import sys; from diffprune_ui import first_screen as f; out = f.shipped_first_screen('', 0, 25); "
            "assert 'torch' not in sys.modules, 'torch imported'; print(type(out[0]).__name__, out[6][:40])")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                           cwd=Path(__file__).resolve().parent.parent)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "Image" in shown.stdout and "Is pruning worth it?" in shown.stdout


def test_dense_preview_shows_the_shipped_grid_at_the_defaults_and_samples_otherwise():
    from diffprune_ui import first_screen

    handlers._DENSE_SAMPLES.clear()
    grid, card, *_ = handlers.dense_preview("", 0, first_screen.DEFAULT_STEPS)
    shipped = first_screen.shipped_grid("", 0, first_screen.DEFAULT_STEPS)
    assert np.array_equal(np.asarray(grid), np.asarray(shipped)) and not handlers._DENSE_SAMPLES  # nothing sampled
    assert card == first_screen.shipped_card("")  # the shipped card is the one the app writes
    other, *_ = handlers.dense_preview("", 0, 2)  # another step count: sampled as before
    assert len(handlers._DENSE_SAMPLES) == 1 and not np.array_equal(np.asarray(other), np.asarray(shipped))
    assert first_screen.shipped_grid("", 0, 25, class_label=3) is None
    assert first_screen.shipped_grid("no-such/model", 0, 25) is None


def test_the_quality_tab_answers_is_pruning_worth_it_for_the_shipped_results_and_a_run(tiny_model):
    from diffprune_ui import quality_answer

    shipped = quality_answer.shipped_answer("kid")
    table = pd.read_csv(quality_answer.SHIPPED_FRONTIER)
    assert 0 < shipped["compared"] <= (table["criterion"] != "dense").sum()  # points within the dense line's latencies
    # the sentence says what the benchmark's verdict (FID beyond two spreads) found
    judged = table[(table["model"] == "default") & (table["criterion"] != "dense")]
    wins, robust = (judged["verdict"] == "win").any(), (judged["verdict_best_sampler"] == "win").any()
    verdict_word = ("Yes" if robust else "Not against the best sampler" if wins else "Not beyond the noise"
                    if (judged["verdict"] == "tie").any() else "No")
    assert f"**Is pruning worth it? {verdict_word}** for the shipped results" in quality_answer.shipped_sentence("kid")
    out = run(tiny_model, steps=5)
    handlers.dense_frontier(tiny_model, 4, 5, 0, "KID", progress=RecordingProgress())
    sentence = quality_answer.after_run(tiny_model, 4, 5, "KID")
    assert "for your run" in sentence and "for the shipped results" in sentence and "KID" in sentence
    assert out["status"].startswith("**Done**")


def test_criterion_change_keeps_a_supported_granularity():
    granularity, *_ = handlers.criterion_changed("nici", "channel")
    assert granularity["value"] == "channel"
    granularity, *_ = handlers.criterion_changed("taylor", "2:4")
    assert granularity["value"] == "2:4"


def test_threshold_run_shows_where_it_stopped(tiny_model):
    out = run(tiny_model, criterion="taylor", schedule="threshold")
    stopped = out["summary"].set_index("").loc["timesteps used", "one-shot"]
    assert "threshold stopped at t =" in stopped
    figure = out["schedule_plot"]
    assert "stopped at t =" in figure.layout.title.text and figure.data[0].x is not None


def test_run_prune_calibrated_criterion_reports_timesteps(tiny_model):
    out = run(tiny_model, criterion="taylor", schedule="custom", custom="3:1, 200:0.5")
    assert "2 (t = 3 .. 200)" in out["summary"].set_index("").loc["timesteps used", "one-shot"]
    assert any(trace.type in ("bar", "scatter") for trace in out["used"].data)
    assert out["timestep_heatmap"].data and out["timestep_heatmap"].data[0].type == "heatmap"


@pytest.mark.parametrize("change, field", [
    (dict(num_samples=100000), "number of samples"),
    (dict(num_samples=None), "number of samples"),
    (dict(num_samples="abc"), "number of samples"),
    (dict(steps=0), "sampling steps"),
    (dict(steps=2.5), "sampling steps"),
    (dict(sparsity="abc"), "sparsity"),
    (dict(sparsity=None), "sparsity"),
    (dict(schedule="custom", custom="0:x", criterion="taylor"), "custom schedule"),
    (dict(criterion="magnitude", granularity="head-of-lettuce"), "granularity"),
    (dict(criterion="random", granularity="channel", sparsity=3.0), "sparsity"),
    (dict(quality="PSNR"), "quality metric"),
])
def test_run_prune_bad_field_is_one_short_error(tiny_model, change, field):
    with pytest.raises(gr.Error) as caught:
        run(tiny_model, **change)
    message = str(caught.value)
    assert message.startswith(field) or field in message[:60], message
    assert len(message) < 300 and "\n" not in message


def test_seed_must_be_whole_not_truncated(tiny_model):
    args = run_args(tiny_model)
    args[16] = 1.5
    with pytest.raises(gr.Error, match=r"seed must be a whole number from 0 to 2,147,483,647, got 1.5"):
        handlers.run_prune(*args, request=FakeRequest(), progress=RecordingProgress())
    with pytest.raises(gr.Error, match="model source must be empty, a hub id"):
        run("x" * 5000)


def test_unusable_paths_give_one_and_the_same_message(tmp_path):
    (tmp_path / "file.txt").write_text("not a model")
    (tmp_path / "folder").mkdir()
    unreadable = tmp_path / "locked"
    unreadable.mkdir()
    (unreadable / "model_index.json").write_text("{}")
    unreadable.chmod(0)
    messages = set()
    try:
        for path in ("/etc/shadow", "/root", "/nonexistent/x", str(tmp_path / "file.txt"), str(tmp_path / "folder"),
                     str(unreadable)):
            with pytest.raises(gr.Error) as caught:
                handlers.check_source(path)
            message = str(caught.value)
            assert path[:20] in message  # names the user's own input, nothing else
            messages.add(message.split(": ", 1)[1])
    finally:
        unreadable.chmod(0o755)
    assert len(messages) == 1, messages
    assert "no supported diffusers pipeline can be loaded from this path" in messages.pop()


def test_failure_after_validation_keeps_every_output(tiny_model, monkeypatch):
    first = run(tiny_model)
    assert first["status"].startswith("**Done**")

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr("core.engine.prune", broken)
    outputs = handlers.run_prune(*run_args(tiny_model), request=FakeRequest(), progress=RecordingProgress())
    assert outputs[0].startswith("**Failed**") and "previous results are kept" in outputs[0]
    assert all(isinstance(o, type(gr.skip())) and o == gr.skip() for o in outputs[1:])
    assert Path(first["archive"]).exists()  # the last export stays downloadable


def test_error_after_success_changes_no_output(tiny_model):
    """The page runs check_run (no outputs) before the run: a bad field after a success raises
    there, so grids, summary and export keep their values."""
    first = run(tiny_model)
    with pytest.raises(gr.Error):
        handlers.check_run(*run_args("no-such-user/no-such-model"))
    with pytest.raises(gr.Error):
        handlers.check_run(*run_args(tiny_model, num_samples=None))
    assert Path(first["archive"]).exists()


def test_only_each_sessions_latest_export_is_kept(tiny_model):
    class Other:
        session_hash = "another-user"

    mine = run(tiny_model, sparsity=0.3)["archive"]
    theirs = run(tiny_model, sparsity=0.3, request=Other())["archive"]
    newer = run(tiny_model, sparsity=0.5)["archive"]
    assert re.fullmatch(r"pruned-magnitude-channel-(49|50|51)pct\.zip", Path(newer).name) and Path(newer).name != Path(mine).name
    assert not Path(mine).exists() and Path(newer).exists() and Path(theirs).exists()
    folders = handlers.export_folders()
    assert Path(newer).parent in folders and Path(theirs).parent in folders and Path(mine).parent not in folders


def test_structured_export_has_a_config_of_its_real_shapes(tiny_model, tmp_path):
    import json

    from diffusers import DiffusionPipeline

    archive = run(tiny_model, granularity="channel", sparsity=0.5)["archive"]
    with zipfile.ZipFile(archive) as handle:
        handle.extractall(tmp_path)
        kinds = {info.filename: info.compress_type for info in handle.infolist()}
    # weights stored as they are (float weights hardly deflate), text deflated
    assert {kinds[n] for n in kinds if n.endswith(".safetensors")} == {zipfile.ZIP_STORED}
    assert kinds["pruned-model/unet/config.json"] == zipfile.ZIP_DEFLATED
    folder = tmp_path / "pruned-model"
    config = json.loads((folder / "unet" / "config.json").read_text())
    pruned = load_pipeline(str(folder), device="cpu")
    real = [block.resnets[0].out_channels for block in pruned.unet.down_blocks]
    dense_widths = config["dense_config"]["block_out_channels"]
    if config.get("_class_name") == "DiffPrunePrunedUNet2DModel":
        assert config["block_out_channels"] == real != dense_widths
        assert config["layer_shapes"]["conv_in.weight"] == list(pruned.unet.conv_in.weight.shape)
        with pytest.raises(Exception):  # plain diffusers refuses instead of building dense shapes
            DiffusionPipeline.from_pretrained(str(folder))
    else:  # expressible: the plain config is the real one
        assert config["block_out_channels"] == real


def test_paired_latency_of_the_same_model_is_within_noise(tiny_model):
    from core.engine import prune
    from core.spec import PruneSpec
    from core.timing import paired_step_latency

    dense = handlers.cached_pipeline(tiny_model)
    same = prune(dense, PruneSpec(criterion="magnitude", granularity="unstructured", sparsity=0.0))
    timing = paired_step_latency(dense, same.pipeline, num_inference_steps=25, batch_size=4, rounds=9)
    assert timing["rounds"] >= 4 and timing["speedup_low"] <= timing["speedup"] <= timing["speedup_high"]
    assert timing["within_noise"], timing
    assert timing["dense_s_per_image"] == pytest.approx(timing["dense_step_s"] * 25 / 4)
    assert "within timing noise" in handlers.latency_sentence(timing)


def test_announce_run_says_the_queue_position_in_a_sentence():
    class A:
        session_hash = "a"

    class B:
        session_hash = "b"

    handlers._start_compute("running-user")
    try:
        first = handlers.announce_run(A())
        second = handlers.announce_run(B())
    finally:
        handlers._end_compute("running-user")
        handlers.cancel_run(A())
        handlers.cancel_run(B())
    assert "number 2 in line" in first and "1 run is ahead" in first
    assert "number 3 in line" in second and "2 runs are ahead" in second
    assert handlers.announce_run(A()).startswith("Starting your run now")
    handlers.cancel_run(A())


def test_cancel_keeps_the_previous_results(tiny_model):
    request = FakeRequest()
    assert handlers.cancel_run(request).startswith("No run of yours")  # nothing running: no stale mark
    assert request.session_hash not in handlers._CANCELLED
    progress = RecordingProgress(on_call=lambda n: handlers.cancel_run(request) if n == 2 else None)
    outputs = handlers.run_prune(*run_args(tiny_model), request=request, progress=progress)
    assert outputs[0].startswith("Run cancelled") and all(o == gr.skip() for o in outputs[1:])
    assert request.session_hash not in handlers._CANCELLED
    assert run(tiny_model, request=request)["status"].startswith("**Done**")


def test_schedule_curve_reads_like_its_name():
    figure = handlers.preview_schedule("log-decrease", *SCHEDULE_DEFAULTS[1:])
    axis = figure.layout.xaxis
    assert axis.range[0] > axis.range[1]  # t runs from noisy (left) to clean (right): the sampling order
    assert "noisy" in axis.title.text and "clean" in axis.title.text
    chosen = next(trace for trace in figure.data if "log-decrease" in (trace.name or ""))
    ordered = [w for _, w in sorted(zip(chosen.x, chosen.y), reverse=True)]  # in sampling order
    assert ordered[0] > ordered[-1]  # decreasing as drawn, left to right


def test_select_pair():
    pairs = {"images": {"dense": ["a", "c"], "one-shot": ["b", "d"]}, "kind": "dense | one-shot"}
    assert handlers.select_pair(1, "dense | one-shot", pairs) == ("c", "d")
    with pytest.raises(gr.Error, match="pair to compare must be one of"):
        handlers.select_pair(1, "dense | recovered", pairs)  # no recovered stage in this run
    with pytest.raises(gr.Error, match="pair index"):
        handlers.select_pair(5, pairs)
    with pytest.raises(gr.Error, match="pair index"):
        handlers.select_pair(0.5, pairs)
    with pytest.raises(gr.Error, match="run a prune first"):
        handlers.select_pair(0, [])


def test_run_compare_formats_numbers_has_dense_row_and_reuses_stored_rows(tiny_model):
    args = (tiny_model, ["random", "magnitude"], "unstructured", "0.25, 0.5", 4, 2, 0, "FID + KID", False)
    table, pareto, by_sparsity = handlers.run_compare(*args, request=FakeRequest(), progress=RecordingProgress())
    assert list(table["criterion"]) == ["dense", "random", "random", "magnitude", "magnitude"]
    assert list(table["sparsity"][1:3]) == ["25.0%", "50.0%"]
    assert all(text and "." in text and len(text) < 10 for text in table["FID"])  # filled, rounded
    assert all("±" in text for text in table["KID"])
    assert set(table["speed-up"][1:]) == {"not timed"}
    again, _, _ = handlers.run_compare(*args, request=FakeRequest(), progress=RecordingProgress())
    assert set(again["stored"][1:]) == {"yes"} and again["KID"].tolist() == table["KID"].tolist()
    assert isinstance(pareto, go.Figure) and len(by_sparsity.data) >= 1


def test_run_compare_times_latency_when_asked(tiny_model):
    table, _, _ = handlers.run_compare(tiny_model, ["magnitude"], "2:4", "", 4, 2, 0, "KID", True,
                                       request=FakeRequest(), progress=RecordingProgress())
    assert table["speed-up"].iloc[1].endswith("x")


def test_run_compare_bad_input(tiny_model):
    with pytest.raises(gr.Error, match="at least one criterion"):
        handlers.run_compare(tiny_model, [], "unstructured", "0.5", 4, 2, 0, progress=RecordingProgress())
    with pytest.raises(gr.Error, match="sparsities must"):
        handlers.run_compare(tiny_model, ["random"], "channel", "", 4, 2, 0, progress=RecordingProgress())
    with pytest.raises(gr.Error, match="each sparsity must be a number from 0 to 0.95"):
        handlers.run_compare(tiny_model, ["random"], "channel", "0.3, abc", 4, 2, 0, progress=RecordingProgress())


def _named_run(source, **change) -> dict:
    """The Prune tab's controls by name (as the page sends them), with ``change`` applied."""
    return dict(zip(handlers.RUN_CONTROLS, run_args(source)), **change)


@pytest.mark.parametrize("change, message", [
    (dict(criterion="taylor", schedule="custom", custom_text="5000:1"),
     "t must be an integer in [0, 1000), got 5000"),
    (dict(granularity="head", sparsity=0.9), "sparsity 0.9 cannot be reached with granularity 'head' on this model"),
    (dict(num_samples=None), "number of samples must be a whole number from 2 to 256, got an empty field"),
    (dict(num_samples=""), "number of samples must be a whole number from 2 to 256, got an empty field"),
    (dict(seed="abc"), "seed must be a whole number from 0 to 2,147,483,647, got 'abc'"),
    (dict(seed="9" * 100_000), "seed must be a whole number"),
    (dict(criterion=["magnitude"]), "criterion must be one of"),
    (dict(sparsity="nan"), "sparsity must be a number from 0 to 0.95, got 'nan'"),
    (dict(sparsity=2), "sparsity must be a number from 0 to 0.95, got 2"),
    (dict(criterion="taylor", schedule="custom", custom_text="[" * 5000 + "]" * 5000), "custom schedule nests"),
    (dict(criterion="taylor", schedule="custom", custom_text="0:" + "1" * 100_000), "custom schedule must be at most"),
])
def test_check_run_refuses_on_the_default_model_before_any_work(change, message):
    """Checked in validation (the model is loaded; nothing runs): what used to pass the check and
    fail after the run had started, or fail with gradio's generic message."""
    with pytest.raises(gr.Error) as caught:
        handlers.check_run(**_named_run("", **change))
    text = caught.value.message
    assert message in text and len(text) < 320 and "\n" not in text, text


def test_check_compare_refuses_a_sweep_the_model_cannot_reach_before_the_dense_evaluation(results_dir):
    controls = dict(zip(handlers.COMPARE_CONTROLS, ("", ["random"], "head", "0.5", 4, 2, 0, "KID", False)))
    with pytest.raises(gr.Error, match="sparsity 0.5 cannot be reached with granularity 'head'"):
        handlers.run_compare(**controls, request=FakeRequest(), progress=RecordingProgress())
    assert not results_dir.exists() or not any(results_dir.rglob("*.json"))  # nothing was evaluated
    with pytest.raises(gr.Error, match="time the latency must be true or false, got 'x'"):
        handlers.check_compare(**dict(controls, granularity="channel", time_latency="x"))
    handlers.check_compare(**dict(controls, granularity="channel"))  # the same sweep at a reachable cut passes


def test_every_user_action_is_one_named_endpoint():
    demo = ui_app.build_demo()
    named = set(demo.get_api_info()["named_endpoints"])
    assert named == {"/run_prune", "/run_compare", "/dense_preview", "/cancel_run", "/calibration_estimate",
                     "/preview_schedule", "/first_screen", "/recovery_estimate"}


def test_build_demo_wires_every_registry_choice():
    demo = ui_app.build_demo()
    config = demo.get_config_file()
    dropdown_choices = [
        [c[0] if isinstance(c, (list, tuple)) else c for c in component["props"].get("choices", [])]
        for component in config["components"] if component.get("type") == "dropdown"
    ]
    assert any(set(CRITERIA) <= set(choices) for choices in dropdown_choices)
    assert any(set(SCHEDULES) <= set(choices) for choices in dropdown_choices)


def test_dense_model_at_fewer_steps_is_the_baseline_frontier(tiny_model):
    out = run(tiny_model, steps=5)
    figure = handlers.dense_frontier(tiny_model, 4, 5, 0, "KID", progress=RecordingProgress())
    frontier = next(trace for trace in figure.data if trace.name == "dense, fewer steps (baseline)")
    assert sorted(int(k) for k in frontier.text) == [1, 2, 3, 4, 5]
    assert list(frontier.x) == sorted(frontier.x) and frontier.x[-1] == pytest.approx(1.0)
    this_run = next(trace for trace in figure.data if trace.name == "this run, one-shot")
    assert "magnitude" in this_run.hovertext[0] and "4 samples, 5 steps" in this_run.hovertext[0]
    assert "4 samples, 5 sampling steps" in figure.layout.title.text  # the settings drawn, others hidden
    assert out["status"].startswith("**Done**")


def test_shipped_charts_label_points_and_draw_the_frontier():
    pareto, by_sparsity = handlers.results_charts()
    names = [trace.name for trace in pareto.data]
    assert names[0] == "dense, fewer steps (baseline)" and len(pareto.data[0].x) >= 5
    hover = " ".join(" ".join(trace.text) for trace in pareto.data[1:] if trace.text is not None)
    for part in ("channel", "sparsity", "48 samples, 10 steps", "fine-tuned 40 steps"):
        assert part in hover
    symbols = {trace.marker.symbol for trace in pareto.data[1:]}
    assert {"circle", "square", "diamond"} <= {s.replace("-open", "").replace("-dot", "") for s in symbols}
    # unstructured and N:M rows show no measured speed-up: drawn at 1.0 with a dotted marker, never as slower
    flat = [trace for trace in pareto.data[1:] if "unstructured" in trace.name or "2:4" in trace.name]
    assert flat and all(set(trace.x) == {1.0} and trace.marker.symbol.endswith("-dot") for trace in flat)
    assert any("(fixed 1-N/M)" in (trace.name or "") for trace in by_sparsity.data)


def test_layer_timestep_heatmap_normalises_a_short_last_group():
    """The last group of a threshold walk may hold one timestep: drawn as a mean per timestep it is
    not black when each timestep contributes alike."""
    from diffprune_ui import figures

    table = pd.DataFrame({0: [4.0, 8.0], 4: [4.0, 8.0], 8: [1.0, 2.0]}, index=["a", "b"])
    figure = figures.layer_timestep_heatmap(table, {0: 4, 4: 4, 8: 1})
    assert np.allclose(np.asarray(figure.data[0].z, dtype=float), 1.0)
    assert list(figure.data[0].x) == ["t=0 (+3)", "t=4 (+3)", "t=8"]


# ------------------------------------------------------------------------------ recovery
def _marker(folder) -> dict:
    import json

    return json.loads((Path(folder) / "diffprune_checkpoint.json").read_text())


def test_run_prune_with_recovery_shows_every_stage_and_exports_the_recovered_model(tiny_model):
    progress = RecordingProgress()
    out = run(tiny_model, progress=progress, recovery_steps=3, recovery_data="generated by the dense model",
              export_oneshot=True)
    assert out["status"].startswith("**Done**") and "Recovered with 3 steps" in out["status"], out["status"]
    # dense | one-shot | recovered grids from the same noise, and the slider on any pair of them
    assert isinstance(out["recovered_grid"], Image.Image) and out["recovered_grid"].size == out["pruned_grid"].size
    assert not np.array_equal(np.asarray(out["recovered_grid"]), np.asarray(out["pruned_grid"]))
    assert out["pair_kind"]["choices"] == list(handlers.PAIR_KINDS) and out["pair_kind"]["value"] == "one-shot | recovered"
    images = out["pairs"]["images"]
    assert out["slider_pair"] == (images["one-shot"][0], images["recovered"][0])
    assert handlers.select_pair(3, "dense | recovered", out["pairs"]) == (images["dense"][3], images["recovered"][3])
    # named progress: step, loss and time left
    descriptions = [desc or "" for _, desc in progress.calls]
    assert any(re.search(r"recovery step \d+/3, loss [0-9.]+, about \d+ s left", d) for d in descriptions), descriptions
    # the summary has one column per stage
    summary = out["summary"].set_index("")
    assert list(summary.columns) == ["dense", "one-shot", "recovered"]
    assert summary.loc["parameters", "recovered"] == summary.loc["parameters", "one-shot"]
    assert "±" in summary.loc["KID (± std)", "recovered"] and "3 steps" in summary.loc["recovery", "recovered"]
    # loss curve and the recovery chart with this run's pair next to the shipped comparison
    assert out["loss_plot"].data and len(out["loss_plot"].data[0].x) == 3
    assert not is_note(out["recovery_chart"]) and len(out["recovery_chart"].data) == 4  # 2 panels x 2 stages
    # both stages go into the results charts, the recovered one marked as such
    names = [trace.name for trace in out["by_sparsity"].data]
    assert "this run, one-shot" in names and "this run, recovered 3 steps" in names
    # export: the recovered model (settings in its metadata) and, on request, the one-shot model
    archive = out["archive"]
    assert Path(archive).name.endswith("-recovered3.zip")
    with zipfile.ZipFile(archive) as handle:
        handle.extractall(archive + ".d")
    recovered, oneshot = Path(archive + ".d/pruned-model"), Path(archive + ".d/one-shot-model")
    marker = _marker(recovered)
    assert marker["recovery"]["steps"] == 3 and marker["recovery"]["distill_from_dense"] is False
    assert marker["recovery"]["data"].startswith("generated") and _marker(oneshot)["recovery"] is None
    assert (recovered / "recovery_losses.csv").exists()
    tuned, plain = load_pipeline(str(recovered), device="cpu"), load_pipeline(str(oneshot), device="cpu")
    pairs = list(zip(tuned.unet.parameters(), plain.unet.parameters()))
    assert all(a.shape == b.shape for a, b in pairs)
    assert any(not torch_equal(a, b) for a, b in pairs)  # recovery changed the weights


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_recovery_keeps_the_zeros_of_an_unstructured_result(tiny_model):
    out = run(tiny_model, granularity="unstructured", sparsity=0.5, recovery_steps=3, distill=True,
              recovery_data="generated by the dense model", export_oneshot=True)
    assert out["status"].startswith("**Done**"), out["status"]
    with zipfile.ZipFile(out["archive"]) as handle:
        handle.extractall(out["archive"] + ".d")
    tuned = load_pipeline(out["archive"] + ".d/pruned-model", device="cpu")
    plain = load_pipeline(out["archive"] + ".d/one-shot-model", device="cpu")
    assert _marker(out["archive"] + ".d/pruned-model")["recovery"]["distill_from_dense"] is True
    checked = changed = 0
    for (name, a), (_, b) in zip(tuned.unet.named_parameters(), plain.unet.named_parameters()):
        zeros = b == 0
        if name.endswith("weight") and a.dim() > 1 and bool(zeros.any()):
            assert bool((a[zeros] == 0).all()), name  # every pruned weight stays pruned
            checked += 1
            changed += int(not torch_equal(a[~zeros], b[~zeros]))
    assert checked > 0 and changed > 0


def test_cancel_during_recovery_keeps_the_one_shot_result(tiny_model):
    request = FakeRequest()

    def cancel_in_recovery(n):
        if any("recovery step 2/" in (desc or "") for _, desc in progress.calls[-1:]):
            handlers.cancel_run(request)

    progress = RecordingProgress(on_call=cancel_in_recovery)
    out = run(tiny_model, progress=progress, request=request, recovery_steps=50,
              recovery_data="generated by the dense model")
    # pressed after step 2 was reported: the recovery stops when step 3 reports (the next progress call)
    assert out["status"].startswith("**Done**") and "Recovery cancelled at step 3 of 50" in out["status"], out["status"]
    assert out["recovered_grid"] is None and isinstance(out["pruned_grid"], Image.Image)
    assert list(out["summary"].columns) == ["", "dense", "one-shot"]
    assert set(out["pairs"]["images"]) == {"dense", "one-shot"}
    with zipfile.ZipFile(out["archive"]) as handle:
        assert not any(name.startswith("one-shot-model/") for name in handle.namelist())
        handle.extractall(out["archive"] + ".d")
    assert _marker(out["archive"] + ".d/pruned-model")["recovery"] is None  # the one-shot model is exported
    assert request.session_hash not in handlers._CANCELLED


@pytest.mark.parametrize("change, field", [
    (dict(recovery_steps=-1), "recovery steps"), (dict(recovery_steps=2.5), "recovery steps"),
    (dict(recovery_steps=5, recovery_lr=0), "recovery learning rate"),
    (dict(recovery_steps=5, recovery_batch=0), "recovery batch size"),
    (dict(recovery_steps=5, recovery_data="my images (upload)"), "recovery images: upload at least one image"),
    (dict(recovery_steps=5, recovery_data="the internet"), "recovery data must be one of"),
    (dict(recovery_steps=5), "recovery data 'fashion-mnist-train' holds"),  # 28x28 images, an 8x8 model
    (dict(recovery_steps=5, distill="yes"), "distill from the dense model"),
])
def test_bad_recovery_fields_are_refused_before_any_work(tiny_model, change, field):
    with pytest.raises(gr.Error, match=re.escape(field)):
        handlers.run_prune(*run_args(tiny_model, **change), request=FakeRequest(), progress=RecordingProgress())
    with pytest.raises(gr.Error, match=re.escape(field)):
        handlers.check_run(*run_args(tiny_model, **change))


def test_recovery_on_uploaded_images(tiny_model, tmp_path):
    files = []
    for index in range(3):
        path = tmp_path / f"upload-{index}.png"
        Image.fromarray(np.full((12, 12), 40 * index, dtype=np.uint8)).save(path)
        files.append(str(path))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(gr.Error, match="not a readable image"):
        handlers.check_run(*run_args(tiny_model, recovery_steps=2, recovery_data="my images (upload)",
                                     recovery_files=files + [str(tmp_path / "broken.png")]))
    out = run(tiny_model, recovery_steps=2, recovery_data="my images (upload)", recovery_files=files)
    assert out["status"].startswith("**Done**"), out["status"]
    assert "image folder (3 images)" in out["summary"].set_index("").loc["recovery data", "recovered"]


def test_recovery_estimate_is_measured_and_scales_with_the_budget(tiny_model):
    assert "recovery off" in handlers.recovery_estimate(tiny_model, 0, 4, False)
    small = handlers.recovery_estimate(tiny_model, 100, 4, False)
    large = handlers.recovery_estimate(tiny_model, 1000, 4, False)
    assert "100 steps x" in small and "1,000 steps x" in large and "measured now" in small
    rate = re.search(r"x ([0-9.]+) m?s", small).group(1)
    assert rate == re.search(r"x ([0-9.]+) m?s", large).group(1) and float(rate) > 0
    assert "cannot estimate the recovery" in handlers.recovery_estimate(tiny_model, -1, 4, False)


def test_compare_with_a_recovery_budget_is_stored_apart(tiny_model):
    base = (tiny_model, ["magnitude"], "channel", "0.3", 4, 2, 0, "KID", False)
    recovered, _, _ = handlers.run_compare(*base, 2, 1e-3, 4, False, "generated by the dense model",
                                           request=FakeRequest(), progress=RecordingProgress())
    assert list(recovered["recovery"]) == ["", "2 steps"]
    oneshot, _, _ = handlers.run_compare(*base, request=FakeRequest(), progress=RecordingProgress())
    assert list(oneshot["recovery"]) == ["", "one-shot"] and oneshot["stored"].iloc[1] == ""  # not the recovered row
    again, _, _ = handlers.run_compare(*base, 2, 1e-3, 4, False, "generated by the dense model",
                                       request=FakeRequest(), progress=RecordingProgress())
    assert again["stored"].iloc[1] == "yes" and again["KID"].iloc[1] == recovered["KID"].iloc[1]
    assert recovered["KID"].iloc[1] != oneshot["KID"].iloc[1]


def test_the_gpu_lease_is_sized_from_the_recovery_budget(tiny_model):
    args = run_args(tiny_model)
    assert handlers.run_gpu_duration(*args) == 300  # no recovery: prune + evaluation
    assert handlers.run_gpu_duration(*run_args(tiny_model, recovery_steps=2000)) == 300 + 200
    assert handlers.run_gpu_duration(*args[:18], recovery_steps=10**6) == 3600  # capped at one hour
    assert handlers.run_gpu_duration(*run_args(tiny_model, recovery_steps="x")) == 300


def test_model_picker_and_class_picker_on_the_embedded_dit():
    assert handlers.pick_embedded("ddpm-fashion-mnist") == "" and handlers.pick_embedded("dit-fashion-mnist") == "dit-fashion-mnist"
    with pytest.raises(gr.Error, match="embedded model must be one of"):
        handlers.pick_embedded("nope")
    uniform, card, classes, _ = handlers.dense_preview("dit-fashion-mnist", 0, 2)
    assert classes["visible"] and classes["choices"][0] == handlers.ALL_CLASSES and "1: Trouser" in classes["choices"]
    assert "dit" in card
    trousers, _, picked, _ = handlers.dense_preview("dit-fashion-mnist", 0, 2, "1: Trouser")
    assert picked["value"] == "1: Trouser" and not np.array_equal(np.asarray(trousers), np.asarray(uniform))
    # the run's grids show the chosen class: the dense grid is exactly the preview's
    out = run("dit-fashion-mnist", granularity="head", sparsity=0.25, num_samples=4, steps=2)
    assert out["status"].startswith("**Done**"), out["status"]
    args = run_args("dit-fashion-mnist", granularity="head", sparsity=0.25, num_samples=4, steps=2) + ["1: Trouser"]
    chosen = dict(zip(RUN_FIELDS, handlers.run_prune(*args, request=FakeRequest(), progress=RecordingProgress())))
    assert np.array_equal(np.asarray(chosen["dense_grid"]), np.asarray(trousers))
    with pytest.raises(gr.Error, match="class shown in the grids must be one of"):
        handlers.check_run(*run_args("dit-fashion-mnist", granularity="head", sparsity=0.25) + ["42: Spaceship"])
    # a model without classes falls back to uniform in the preview, refuses a class in a run
    assert handlers.dense_preview("", 0, 2, "1: Trouser")[2]["value"] == handlers.ALL_CLASSES


def test_granularity_choices_follow_the_loaded_model_family():
    dit = handlers.granularities_for_model("dit-fashion-mnist", "magnitude", "channel")
    assert "channel" not in dit["choices"] and {"head", "ffn", "block", "unstructured", "2:4"} <= set(dit["choices"])
    assert dit["value"] == dit["choices"][0]  # channel was chosen: replaced by one the DiT accepts
    assert handlers.granularities_for_model("dit-fashion-mnist", "magnitude", "ffn")["value"] == "ffn"
    pixel = handlers.granularities_for_model("", "magnitude", "channel")
    assert "channel" in pixel["choices"] and "ffn" not in pixel["choices"] and pixel["value"] == "channel"
    granularity, *_ = handlers.criterion_changed("taylor", "channel", "dit-fashion-mnist")
    assert "channel" not in granularity["choices"]
    with pytest.raises(gr.Error, match="residual width"):  # refused before any work, naming what is allowed
        handlers.check_run(*run_args("dit-fashion-mnist", granularity="channel"))


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> str:
    import tiny_families

    directory = tmp_path_factory.mktemp("tiny-sd") / "model"
    tiny_families.build("sd").save_pretrained(directory)
    return str(directory)


def test_prompt_box_for_a_text_to_image_model(tiny_sd, tiny_model):
    captions, card, classes, prompt = handlers.dense_preview(tiny_sd, 0, 2)
    assert prompt["visible"] and prompt["value"] == "" and classes["visible"] is False
    shoe, _, _, kept = handlers.dense_preview(tiny_sd, 0, 2, handlers.ALL_CLASSES, "a red shoe")
    assert kept["value"] == "a red shoe" and not np.array_equal(np.asarray(shoe), np.asarray(captions))
    args = run_args(tiny_sd, granularity="unstructured", sparsity=0.3, num_samples=2, steps=2, quality="none")
    out = dict(zip(RUN_FIELDS, handlers.run_prune(*args, handlers.ALL_CLASSES, "a red shoe", request=FakeRequest(),
                                                  progress=RecordingProgress())))
    assert out["status"].startswith("**Done**"), out["status"]
    assert np.array_equal(np.asarray(out["dense_grid"]), np.asarray(shoe))  # the grids show the prompt
    with pytest.raises(gr.Error, match="prompt for the grids applies to text-to-image models"):
        handlers.check_run(*run_args(tiny_model), handlers.ALL_CLASSES, "a red shoe")
    assert handlers.dense_preview(tiny_model, 0, 2, handlers.ALL_CLASSES, "stale text")[3]["value"] == ""


def _run_with(args, grid_prompt="", calibration_prompts="", progress=None) -> dict:
    return dict(zip(RUN_FIELDS, handlers.run_prune(*args, handlers.ALL_CLASSES, grid_prompt, calibration_prompts,
                                                   request=FakeRequest(), progress=progress or RecordingProgress())))


def test_calibration_prompts_box_reaches_the_spec(tiny_sd, tiny_model):
    from core.prompts import CALIBRATION_PROMPTS

    assert handlers.shipped_caption_count() == len(CALIBRATION_PROMPTS)
    handlers.cached_pipeline(tiny_sd), handlers.cached_pipeline(tiny_model)
    shown = handlers.calibration_prompts_update(tiny_sd, "a red shoe")
    assert shown["visible"] and shown["value"] == "a red shoe"  # a text-to-image model: shown, text kept
    hidden = handlers.calibration_prompts_update(tiny_model, "stale text")
    assert hidden["visible"] is False and hidden["value"] == ""  # other models: hidden and emptied
    args = run_args(tiny_sd, criterion="taylor", granularity="unstructured", sparsity=0.3, schedule="custom",
                    custom="5:1, 300:0.5", num_samples=2, steps=2, quality="none")
    out = _run_with(args, calibration_prompts="a red shoe\n\n   a blue bag  \n# a comment\n")
    assert out["status"].startswith("**Done**"), out["status"]
    summary = out["summary"].set_index("")
    assert summary.loc["calibration prompts", "one-shot"] == "2 of yours (first: 'a red shoe')"
    with zipfile.ZipFile(out["archive"]) as handle:
        handle.extractall(out["archive"] + ".d")
    assert _marker(out["archive"] + ".d/pruned-model")["spec"]["calibration_prompts"] == ["a red shoe", "a blue bag"]
    # Blank lines only: the shipped captions, and a calibration of its own (the reuse key tells the sets apart).
    progress = RecordingProgress()
    out = _run_with(args, calibration_prompts=" \n\n", progress=progress)
    assert out["status"].startswith("**Done**"), out["status"]
    summary = out["summary"].set_index("")
    assert summary.loc["calibration prompts", "one-shot"] == f"the {len(CALIBRATION_PROMPTS)} shipped captions"
    assert not any("calibration reused" in (desc or "") for _, desc in progress.calls)
    with zipfile.ZipFile(out["archive"]) as handle:
        handle.extractall(out["archive"] + ".d")
    assert "calibration_prompts" not in _marker(out["archive"] + ".d/pruned-model")["spec"]
    again = RecordingProgress()
    assert _run_with(args, calibration_prompts="a red shoe\na blue bag", progress=again)["status"].startswith("**Done**")
    assert any("calibration reused" in (desc or "") for _, desc in again.calls)  # the same set: reused


@pytest.mark.parametrize("model, text, message", [
    ("ddpm", "a red shoe", "calibration prompts apply to text-to-image models (SD, PixArt, SD3) only"),
    ("sd", "ok\n" + "x" * 2001, "calibration prompts: each line at most 2,000 characters"),
    ("sd", "a shoe\n" * 10_001, "calibration prompts: at most 10,000 prompts"),
    ("sd", "x" * 200_001, "calibration prompts must be text of at most 200,000 characters"),
    ("sd", 42, "calibration prompts must be text"),
])
def test_bad_calibration_prompts_are_refused_before_any_work(tiny_sd, tiny_model, model, text, message):
    source = tiny_sd if model == "sd" else tiny_model
    with pytest.raises(gr.Error) as caught:
        handlers.check_run(*run_args(source, criterion="taylor"), handlers.ALL_CLASSES, "", text)
    text = str(caught.value)
    assert message in text[:len(message) + 2] and len(text) < 300 and "\n" not in text, text
    handlers.check_run(*run_args(tiny_model, criterion="taylor"), handlers.ALL_CLASSES, "", "\n  \n")  # empty: fine


def test_the_calibration_prompts_box_is_on_the_page_and_a_run_prune_parameter():
    demo = ui_app.build_demo()
    boxes = [c["props"] for c in demo.get_config_file()["components"]
             if c["props"].get("elem_id") == "calibration-prompts"]
    assert len(boxes) == 1 and boxes[0]["visible"] is False
    assert boxes[0]["label"] == f"Calibration prompts (one per line; empty = the {handlers.shipped_caption_count()} shipped captions)"
    parameters = demo.get_api_info()["named_endpoints"]["/run_prune"]["parameters"]
    assert parameters[-1]["label"] == "Sampler"
    assert parameters[-2]["label"] == boxes[0]["label"] and parameters[-3]["label"].startswith("prompt for the sample grids")


def test_frontier_plane_draws_the_dense_line_and_each_pruned_model_with_its_latency_range():
    from diffprune_ui import figures

    table = pd.DataFrame([
        dict(label="dense", criterion="dense", granularity="-", finetune_steps=0, num_inference_steps=k, num_samples=256,
             fid=f, relative_latency=k / 50, relative_latency_low=k / 50, relative_latency_high=k / 50)
        for k, f in ((8, 62.0), (12, 58.0), (50, 59.0))] + [
        dict(label="obs 20% + 1000 steps", criterion="obs", granularity="channel", finetune_steps=1000,
             num_inference_steps=k, num_samples=256, fid=f, relative_latency=k / 50 / 1.2,
             relative_latency_low=k / 50 / 1.3, relative_latency_high=k / 50 / 1.1) for k, f in ((8, 70.0), (12, 66.0))])
    figure = figures.frontier_plane(table)
    names = [trace.name for trace in figure.data]
    assert names == ["dense, fewer steps (free)", "obs 20% + 1000 steps"]
    pruned = figure.data[1]
    assert pruned.marker.symbol == "circle-open" and list(pruned.text) == ["8", "12"]
    assert pruned.error_x.array[0] == pytest.approx(8 / 50 / 1.1 - 8 / 50 / 1.2)
    assert "no frontier" in figures.frontier_plane(None).layout.annotations[0].text


# ------------------------------------------------------------------------------ newcomer defects
def _listeners(demo, fn) -> list:
    """(component, event) pairs that trigger ``fn`` on the page."""
    return [(demo.blocks[target].elem_id if target in demo.blocks else target, event)
            for block_fn in demo.fns.values() if block_fn.fn is fn for target, event in block_fn.targets]


def test_nm_fixes_the_sparsity_slider_at_one_minus_n_over_m_and_says_why():
    from diffprune_ui import run_notes

    for pattern, expected in (("2:4", 0.5), ("1:4", 0.75), ("4:8", 0.5)):
        update = run_notes.sparsity_slider(pattern)
        assert update["value"] == pytest.approx(expected) and update["interactive"] is False
        assert f"1 - {pattern.replace(':', '/')}" in update["info"]
    free = run_notes.sparsity_slider("channel")
    assert free["interactive"] is True and "value" not in free  # the user's value stays
    demo = ui_app.build_demo()
    assert ("change" in {event for _, event in _listeners(demo, run_notes.sparsity_slider)})


def test_embedded_models_are_scored_against_the_shipped_test_images(tiny_model):
    for source in ("", "dit-fashion-mnist", "ddpm-fashion-mnist"):
        assert handlers.evaluation_reference(source) == "fashion-mnist-test", source
    assert handlers.evaluation_reference(tiny_model) == "dense"  # no dataset: distance from the teacher
    checked = handlers.validate_run(*run_args("dit-fashion-mnist", granularity="head", sparsity=0.25))
    assert checked["evaluation"].reference == "fashion-mnist-test"


def test_a_recovery_that_makes_quality_worse_is_flagged_in_the_summary(tiny_model):
    from core.run import TimingSettings
    from core.run import run as core_run

    checked = handlers.validate_run(*run_args(tiny_model, recovery_steps=3, recovery_data="generated by the dense model"))

    result = core_run(checked["dense"], checked["spec"], recovery=checked["recovery"], evaluation=checked["evaluation"],
                      timing=TimingSettings())
    oneshot, recovered = result.evaluations["one-shot"]["kid"], result.evaluations["recovered"]["kid"]
    # the same measured run read both ways: worse after recovery is flagged, better is not
    result.evaluations["recovered"]["kid"], result.evaluations["one-shot"]["kid"] = max(oneshot, recovered) + 0.01, min(
        oneshot, recovered)
    table = handlers.summary_table(result)
    warning = dict(zip(table[""], table["recovered"]))["warning"]
    assert warning.startswith("⚠ Recovery made quality worse: KID")
    assert "Recovery made quality worse" in handlers._status(result, "kid", "")
    result.evaluations["recovered"]["kid"] = min(oneshot, recovered) - 0.01
    assert "warning" not in list(handlers.summary_table(result)[""])
    assert "Recovery made quality worse" not in handlers._status(result, "kid", "")


def test_recovery_estimate_is_measured_per_model_and_follows_a_model_switch(tiny_model):
    from core.cost import recovery_step_seconds
    from diffprune_ui import run_notes

    texts = {}
    for source in (tiny_model, "dit-fashion-mnist"):
        texts[source] = handlers.recovery_estimate(source, 20, 4, False)
        rate = recovery_step_seconds(handlers.cached_pipeline(source), 4, False)
        assert rate > 0 and "x 0.00 s" not in texts[source]
        shown = float(re.search(r"x ([0-9.]+) (m?s)", texts[source]).group(1))
        unit = re.search(r"x ([0-9.]+) (m?s)", texts[source]).group(2)
        assert shown == pytest.approx(rate * (1000 if unit == "ms" else 1), abs=0.051)
    assert texts[tiny_model] != texts["dit-fashion-mnist"]
    demo = ui_app.build_demo()
    # a newly shown model (its card changes) re-estimates both costs, each first saying it is estimating
    for pending in (run_notes.recovery_pending, run_notes.calibration_pending):
        assert any(event == "change" and target is not None and "estimating" in pending()
                   for target, event in _listeners(demo, pending))


def test_obs_and_gradflow_get_a_measured_estimate_and_presets_show_it_is_updating(tiny_model):
    from diffprune_ui import run_notes

    for criterion, preset_words in (("obs", "Hessian hooks"), ("gradflow", "gradient-flow passes")):
        args = dict(zip(handlers.ESTIMATE_CONTROLS, [tiny_model, criterion, "unstructured", 0.5, "log-decrease",
                                                     0.05, "1,1,1,1", 5, 0.8, 1.2, 4, "0:1", 2, 1, 0]))
        if criterion == "gradflow":
            args["schedule"] = "uniform"
        text = handlers.calibration_estimate(**args)
        assert "estimated calibration" in text and preset_words in text and "measured now" in text, text
        assert "benchmarks/" not in text and "bench_prune" not in text
    demo = ui_app.build_demo()
    triggers = {event for _, event in _listeners(demo, run_notes.calibration_pending)}
    assert {"load", "change"} <= triggers  # a preset changes the criterion: the note first says "estimating"
    assert "estimating" in run_notes.calibration_pending()


def test_a_closed_tab_cancels_its_waiting_or_running_job():
    from diffprune_ui import run_notes

    class Closed:
        session_hash = "closed-tab"

    handlers.announce_run(Closed())  # waiting for the compute slot
    run_notes.cancel_closed_session(Closed())
    assert "closed-tab" not in handlers._WAITING and "closed-tab" in handlers._CANCELLED
    callback = handlers._progress_callback(None, "closed-tab")
    with pytest.raises(handlers.RunCancelled):
        callback(0.1, "sampling")  # the job stops at its first progress report
    run_notes.cancel_closed_session(Closed())  # nothing left to cancel: no stale mark
    assert "closed-tab" not in handlers._CANCELLED
    demo = ui_app.build_demo()
    assert [event for _, event in _listeners(demo, run_notes.cancel_closed_session)] == ["unload"]


def test_a_reused_calibration_is_said_in_the_summary(tiny_model):
    first = run(tiny_model, criterion="taylor", granularity="channel", sparsity=0.3)
    second = run(tiny_model, criterion="taylor", granularity="channel", sparsity=0.4)
    rows = [dict(zip(out["summary"][""], out["summary"]["one-shot"])) for out in (first, second)]
    assert "calibration" not in rows[0] or "reused" not in rows[0]["calibration"]
    assert rows[1]["calibration"].startswith("reused from an earlier run")
    assert "Calibration reused" in second["status"]


@pytest.mark.parametrize("granularity", ["head", "channel"])
def test_the_importance_heatmap_marks_the_pruned_units(tiny_model, granularity):
    out = run(tiny_model, granularity=granularity, sparsity=0.07 if granularity == "head" else 0.3)
    figure = out["importance"]
    labels = list(figure.data[0].y)
    marked = [label for label in labels if re.search(r" \(-\d+/\d+\)$", label)]
    assert marked, labels
    if granularity == "head":  # which heads went is known: a red cross on each of their bins
        crosses = [trace for trace in figure.data if trace.name == "pruned units"]
        assert crosses and set(crosses[0].y) <= set(marked)
        removed = sum(int(re.search(r"\(-(\d+)/", label).group(1)) for label in marked)
        assert len(crosses[0].x) == removed  # one head per bin at this width


# ------------------------------------------------------------------------------ sparsity field, shortfall, sampler
def test_the_sparsity_box_passes_every_typed_value_to_the_check():
    """A number box without bounds or rounding: 2 and "nan" reach the handlers' check as typed
    (a slider would clamp 2 to 0.95; gradio's own bounds check would answer first)."""
    demo = ui_app.build_demo()
    box = next(block for block in demo.blocks.values() if getattr(block, "elem_id", None) == "sparsity")
    assert isinstance(box, gr.Number) and box.precision is None and box.minimum is None and box.maximum is None
    for typed in (2, "nan", "abc", 0.3):
        assert box.preprocess(typed) == typed
    for typed, shown in ((2, "got 2"), ("nan", "got 'nan'"), (None, "got an empty field")):
        with pytest.raises(gr.Error, match=re.escape(f"sparsity must be a number from 0 to 0.95, {shown}")):
            handlers.check_run(**_named_run("", sparsity=typed))
    from diffprune_ui import run_notes

    update = run_notes.sparsity_slider("2:4")  # the N:M lock applies to the box
    assert update["value"] == pytest.approx(0.5) and update["interactive"] is False


def test_a_block_cut_that_misses_the_asked_sparsity_says_so_on_the_embedded_dit():
    out = run("dit-fashion-mnist", granularity="block", sparsity=0.45, num_samples=4, steps=2)
    assert out["status"].startswith("**Done**"), out["status"]
    row = dict(zip(out["summary"][""], out["summary"]["one-shot"]))
    shortfall = row["sparsity shortfall"]
    assert shortfall.startswith("block: asked for 45") and "removing whole blocks reaches" in shortfall
    assert f"not the asked sparsity: {shortfall}" in out["verdict"]
    assert shortfall in out["status"]
    reached = float(row["sparsity of prunable weights"].rstrip("%"))
    assert abs(reached - 45) > 1  # the shortfall is real: the measured sparsity differs


def test_the_sampler_reaches_the_evaluation_the_grids_and_the_dense_frontier(tiny_model):
    from core import make_grid, sample_images

    with pytest.raises(gr.Error, match=re.escape("sampler must be one of ['ddim', 'dpm-solver++', 'ddpm'], got 'euler'")):
        handlers.check_run(*run_args(tiny_model), sampler="euler")
    checked = handlers.validate_run(*run_args(tiny_model), sampler="dpm-solver++")
    assert checked["evaluation"].scheduler == "dpm-solver++"
    outputs = handlers.run_prune(*run_args(tiny_model, num_samples=4, steps=3), sampler="dpm-solver++",
                                 request=FakeRequest(), progress=RecordingProgress())
    out = dict(zip(RUN_FIELDS, outputs))
    assert out["status"].startswith("**Done**"), out["status"]
    dense = handlers.cached_pipeline(tiny_model)
    expected = make_grid(sample_images(dense, handlers.GRID_IMAGES, 3, 0, scheduler="dpm-solver++"), columns=4, scale=4)
    ddim = make_grid(sample_images(dense, handlers.GRID_IMAGES, 3, 0, scheduler="ddim"), columns=4, scale=4)
    assert np.array_equal(np.asarray(out["dense_grid"]), np.asarray(expected))
    assert not np.array_equal(np.asarray(expected), np.asarray(ddim))
    handlers.dense_frontier(tiny_model, 4, 3, 0, "KID", "dpm-solver++", progress=RecordingProgress())
    settings = (handlers.chart_label(tiny_model, "dpm-solver++"), 4, 3, "dense")
    measured = handlers.frontier_table(settings, "dpm-solver++")
    assert 3 in list(measured["num_inference_steps"]) and set(measured["scheduler"]) == {"dpm-solver++"}
    assert handlers.frontier_table(settings, "ddim") is None  # a DDIM chart never shows these rows
    demo = ui_app.build_demo()
    box = next(block for block in demo.blocks.values() if getattr(block, "elem_id", None) == "sampler")
    assert box.value == "ddim" and [value for _, value in box.choices] == ["ddim", "dpm-solver++", "ddpm"]


def test_the_shipped_frontier_chart_follows_the_sampler_and_the_model_on_screen():
    from diffprune_ui import quality_answer

    table = pd.read_csv(handlers.SHIPPED_FRONTIER)
    for source, model in (("", "default"), ("dit-fashion-mnist", "assets/dit-fashion-mnist")):
        assert quality_answer.shipped_model(source) == model
        for sampler, name in (("ddim", "DDIM"), ("dpm-solver++", "DPM-Solver++")):
            rows = table[(table["model"] == model) & (table["scheduler"] == sampler)]
            figure, sentence = quality_answer.shipped_frontier(source, sampler)
            assert sentence.startswith("**Is pruning worth it?") and name in sentence
            if len(rows):
                shown = sorted(float(y) for trace in figure.data for y in trace.y)
                assert shown == sorted(float(v) for v in rows["kid"].dropna())  # exactly this model and sampler
                assert f"{name} steps" in figure.layout.title.text
            else:
                assert "no shipped frontier measurement" in figure.layout.annotations[0].text
    ddim = quality_answer.shipped_frontier("", "ddim")[1]
    assert any(f"**Is pruning worth it? {word}**" in ddim
               for word in ("No", "Yes", "Not beyond the noise", "Not against the best sampler"))
    assert "DDIM" in ddim
    demo = ui_app.build_demo()
    assert {event for _, event in _listeners(demo, quality_answer.shipped_frontier)} == {"change"}
    assert {target for target, _ in _listeners(demo, quality_answer.shipped_frontier)} >= {"frontier-sampler",
                                                                                            "model-info"}
