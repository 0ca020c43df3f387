"""Every event handler of the Gradio app, called as a plain function on real (tiny) diffusers models.

The browser and ``gradio_client`` tests (test_app_e2e.py, test_app_browser.py) cover the wiring;
these cover what each handler returns and how it fails: a ``gr.Error`` naming the field, never a
crash, and the dense cached model untouched.
"""
import zipfile

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
             custom="5:1, 300:0.5", num_samples=4, steps=3, quality="KID"):
    _, threshold, interval, k, w_min, w_max, uniform_count, _ = SCHEDULE_DEFAULTS
    return [source, criterion, granularity, sparsity, schedule, threshold, interval, k, w_min, w_max, uniform_count,
            custom, 2, 1, num_samples, steps, 0, quality]


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
    granularity, schedule, group, note = handlers.criterion_changed(criterion)
    entry = CRITERIA[criterion]
    assert granularity["choices"] and granularity["value"] == granularity["choices"][0]
    assert group["visible"] == entry.needs_calibration
    assert schedule["value"] in SCHEDULES
    assert entry.description in note


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_fill_the_controls(name):
    criterion, granularity, sparsity, schedule, threshold, batch_size, batches = ui_app.preset_values(name)
    spec = PRESETS[name]
    assert criterion["value"] == spec.criterion
    assert granularity["value"] == spec.granularity and spec.granularity in granularity["choices"]
    assert schedule["value"] in SCHEDULES
    assert batch_size["value"] >= 1 and batches["value"] >= 1


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
    assert handlers.calibration_estimate(tiny_model, "magnitude", "channel", 0.3, *SCHEDULE_DEFAULTS, 2, 1, 0) == ""
    bad = handlers.calibration_estimate(tiny_model, "nici", "channel", 0.3, *interval, 0, 1, 0)
    assert bad.startswith("*cannot estimate") and "calibration_batch_size" in bad


def test_dense_preview_and_model_card(tiny_model):
    grid, card = handlers.dense_preview(tiny_model, seed=1, steps=2)
    assert isinstance(grid, Image.Image) and grid.width >= 4 * 8 * 4  # 4 columns of 8 px, scaled 4x, plus padding
    assert "parameters" in card
    again, _ = handlers.dense_preview(tiny_model, seed=1, steps=2)
    assert np.array_equal(np.asarray(grid), np.asarray(again))  # same seed, same samples


@pytest.mark.parametrize("source, message", [
    ("/nonexistent/model-dir", "nonexistent"),
    ("no-such-user/no-such-model", "no-such-user/no-such-model"),
])
def test_bad_model_source_is_a_short_error(source, message):
    with pytest.raises(gr.Error) as caught:
        handlers.dense_preview(source, 0, 2)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_first_screen_shows_samples_curve_and_charts(tiny_model):
    grid, card, curve, pareto, by_sparsity = handlers.first_screen(tiny_model, 0, 2, *SCHEDULE_DEFAULTS)
    assert isinstance(grid, Image.Image)
    assert all(isinstance(f, go.Figure) for f in (curve, pareto, by_sparsity))
    assert len(curve.data) >= 1


# ------------------------------------------------------------------------------ run
def test_run_prune_returns_every_view(tiny_model):
    progress = RecordingProgress()
    outputs = handlers.run_prune(*run_args(tiny_model), request=FakeRequest(), progress=progress)
    (status, summary, dense_grid, pruned_grid, slider_pair, pair_update, pairs, importance, timestep_heatmap,
     layers, used, pareto, by_sparsity, archive) = outputs
    assert status.startswith("**Done**")
    assert isinstance(summary, pd.DataFrame)
    row = dict(zip(summary[""], zip(summary["dense"], summary["pruned"])))
    assert int(row["parameters"][1].replace(",", "")) < int(row["parameters"][0].replace(",", ""))
    assert row["speed-up (dense median / pruned median)"][1].endswith("x")
    assert "±" in row["KID (± std)"][1]
    assert dense_grid.size == pruned_grid.size
    assert len(pairs) == handlers.GRID_IMAGES and pair_update["maximum"] == handlers.GRID_IMAGES - 1
    assert slider_pair == pairs[0]
    assert all(isinstance(f, go.Figure) for f in (importance, timestep_heatmap, layers, used, pareto, by_sparsity))
    assert len(importance.data) == 1 and importance.data[0].type == "heatmap"
    descriptions = " ".join(desc or "" for _, desc in progress.calls)
    for stage in ("scoring", "sampling", "exporting"):
        assert stage in descriptions, descriptions
    fractions = [f for f, _ in progress.calls]
    assert 0 <= min(fractions) and max(fractions) <= 1
    # The export is the checkpoint PruneResult.save writes, plus report CSVs and a usage note.
    with zipfile.ZipFile(archive) as handle:
        names = handle.namelist()
        assert "pruned-model/USAGE.md" in names and "pruned-model/report_layers.csv" in names
        handle.extractall(archive + ".d")
    pruned = load_pipeline(archive + ".d/pruned-model", device="cpu")
    assert sum(p.numel() for p in pruned.unet.parameters()) == int(row["parameters"][1].replace(",", ""))
    # The cached dense model is untouched by the run.
    dense = handlers.cached_pipeline(tiny_model)
    assert sum(p.numel() for p in dense.unet.parameters()) == int(row["parameters"][0].replace(",", ""))
    # The run is stored: the results charts now have the point.
    assert len(handlers.results_table()) >= 2


def test_run_prune_calibrated_criterion_reports_timesteps(tiny_model):
    outputs = handlers.run_prune(*run_args(tiny_model, criterion="taylor", schedule="custom", custom="3:1, 200:0.5"),
                                 request=FakeRequest(), progress=RecordingProgress())
    summary, used, heatmap = outputs[1], outputs[10], outputs[8]
    assert "2 (t = 3 .. 200)" in summary.set_index("").loc["timesteps used", "pruned"]
    assert any(trace.type == "bar" or trace.type == "scatter" for trace in used.data)
    assert heatmap.data and heatmap.data[0].type == "heatmap"


@pytest.mark.parametrize("change, field", [
    (dict(num_samples=100000), "number of samples"),
    (dict(steps=0), "sampling steps"),
    (dict(schedule="custom", custom="0:x", criterion="taylor"), "custom schedule"),
    (dict(criterion="magnitude", granularity="head-of-lettuce"), "granularity"),
    (dict(criterion="random", granularity="channel", sparsity=3.0), "sparsity"),
    (dict(quality="PSNR"), "quality metric"),
])
def test_run_prune_bad_input_is_a_short_error_and_next_run_works(tiny_model, change, field):
    with pytest.raises(gr.Error) as caught:
        handlers.run_prune(*run_args(tiny_model, **change), request=FakeRequest(), progress=RecordingProgress())
    assert field in str(caught.value)
    assert len(str(caught.value)) < 400


def test_cancel_stops_the_run_and_keeps_nothing_half_done(tiny_model):
    request = FakeRequest()
    progress = RecordingProgress(on_call=lambda n: handlers.cancel_run(request) if n == 2 else None)
    with pytest.raises(gr.Error, match="cancelled"):
        handlers.run_prune(*run_args(tiny_model), request=request, progress=progress)
    assert request.session_hash not in handlers._CANCELLED
    outputs = handlers.run_prune(*run_args(tiny_model), request=request, progress=RecordingProgress())
    assert outputs[0].startswith("**Done**")


def test_select_pair():
    pairs = [("a", "b"), ("c", "d")]
    assert handlers.select_pair(1, pairs) == ("c", "d")
    with pytest.raises(gr.Error, match="pair index"):
        handlers.select_pair(5, pairs)
    with pytest.raises(gr.Error, match="run a prune first"):
        handlers.select_pair(0, [])


def test_run_compare_sweeps_and_reuses_stored_rows(tiny_model):
    args = (tiny_model, ["random", "magnitude"], "unstructured", ["0.5"], 4, 2, 0)
    table, pareto, by_sparsity = handlers.run_compare(*args, progress=RecordingProgress())
    assert list(table["criterion"]) == ["random", "magnitude"]
    assert not table["cached"].any() and table["kid"].notna().all()
    again, _, _ = handlers.run_compare(*args, progress=RecordingProgress())
    assert again["cached"].all()
    assert again["kid"].tolist() == table["kid"].tolist()
    assert isinstance(pareto, go.Figure) and len(by_sparsity.data) >= 1


def test_run_compare_bad_input(tiny_model):
    with pytest.raises(gr.Error, match="at least one criterion"):
        handlers.run_compare(tiny_model, [], "unstructured", ["0.5"], 4, 2, 0, progress=RecordingProgress())
    with pytest.raises(gr.Error, match="at least one sparsity"):
        handlers.run_compare(tiny_model, ["random"], "channel", [], 4, 2, 0, progress=RecordingProgress())


def test_build_demo_wires_every_registry_choice():
    demo = ui_app.build_demo()
    config = demo.get_config_file()
    dropdown_choices = [
        [c[0] if isinstance(c, (list, tuple)) else c for c in component["props"].get("choices", [])]
        for component in config["components"] if component.get("type") == "dropdown"
    ]
    assert any(set(CRITERIA) <= set(choices) for choices in dropdown_choices)
    assert any(set(SCHEDULES) <= set(choices) for choices in dropdown_choices)
