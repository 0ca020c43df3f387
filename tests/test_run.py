"""``core.run``: the one workflow (prune, recover, grids, evaluate, time, export) shared by the app
and ``diffprune run``, its settings' validation, the one export writer and the dense frontier."""
import json
import math
import os
import zipfile
from pathlib import Path

import pytest
import torch

from core.export import ExportSettings
from core.frontier import FrontierSettings, dense_frontier, fewer_steps
from core.pipeline import load_pipeline
from core.run import EvaluationSettings, RecoverySettings, RunResult, TimingSettings, run
from core.spec import PruneSpec

pytestmark = pytest.mark.usefixtures("one_thread")

QUICK_TIMING = TimingSettings(batch_size=2, rounds=2, budget_s=0.2)
CHANNEL = PruneSpec(criterion="magnitude", granularity="channel", sparsity=0.3)


@pytest.fixture(autouse=True)
def results_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFPRUNE_RESULTS_DIR", str(tmp_path / "results"))
    return tmp_path / "results"


@pytest.fixture(scope="module")
def tiny(tiny_model):
    return load_pipeline(tiny_model, device="cpu")


def _parameters(pipeline) -> int:
    return sum(p.numel() for p in pipeline.unet.parameters())


# ------------------------------------------------------------------------------ the workflow
def test_run_on_the_embedded_default_model_end_to_end(tmp_path):
    dense = load_pipeline(None, device="cpu")
    before = _parameters(dense)
    calls = []
    result = run(dense, CHANNEL, recovery=RecoverySettings(steps=2, batch_size=4),
                 evaluation=EvaluationSettings(num_samples=4, steps=2, grid_images=4), timing=QUICK_TIMING,
                 export=ExportSettings(out=str(tmp_path / "export"), include_oneshot=True),
                 progress=lambda fraction, message: calls.append((fraction, message)))
    assert isinstance(result, RunResult) and result.ok, result.errors
    assert _parameters(dense) == before  # the caller's pipeline is not modified
    assert set(result.images) == {"dense", "one-shot", "recovered"}
    assert all(tuple(images.shape) == (4, 1, 28, 28) for images in result.images.values())
    rows = result.evaluations
    assert set(rows) == {"dense", "one-shot", "recovered"} and all(row["kid"] is not None for row in rows.values())
    assert rows["one-shot"]["macs"] == rows["recovered"]["macs"] < rows["dense"]["macs"]
    assert rows["one-shot"]["samples_reused"] is True  # the grids are the evaluation's samples
    assert result.recovered is not None and result.recovery["steps"] == 2 and len(result.recovered.losses) == 2
    assert result.delivered is result.recovered.pipeline
    assert result.timing["rounds"] >= 1 and result.timing["speedup"] > 0
    assert [path.name for path in result.exported] == ["pruned-model", "one-shot-model"]
    recovered = load_pipeline(str(result.exported[0]), device="cpu")
    assert _parameters(recovered) == result.pruned.report.totals["params_after"]
    fractions = [fraction for fraction, _ in calls]
    assert 0 <= min(fractions) and max(fractions) <= 1
    text = " ".join(message for _, message in calls)
    for stage in ("measuring the dense model", "recovery step 2/2", "sampling", "timing dense and pruned", "exporting"):
        assert stage in text, stage


def test_a_cancel_before_recovery_stops_the_run_and_during_recovery_only_the_recovery(tiny):
    class Stop(Exception):
        pass

    def stop_at_scoring(fraction, message):
        if "scoring" in message or "pruning" in message:
            raise Stop
    with pytest.raises(Stop):
        run(tiny, CHANNEL, evaluation=EvaluationSettings(num_samples=2, steps=1, grid_images=0, metrics=()),
            progress=stop_at_scoring)

    raised = []

    def stop_at_step_3(fraction, message):
        if "recovery step 3/" in message and not raised:
            raised.append(message)
            raise Stop
    result = run(tiny, CHANNEL, recovery=RecoverySettings(steps=50, batch_size=2, data="generated"),
                 evaluation=EvaluationSettings(num_samples=2, steps=1, grid_images=2, metrics=()),
                 timing=TimingSettings(enabled=False), progress=stop_at_step_3)
    assert raised and result.recovery_stopped_at == 3 and result.recovered is None and result.ok
    assert set(result.images) == {"dense", "one-shot"} and set(result.evaluations) == {"dense", "one-shot"}


def test_a_failed_part_is_recorded_and_the_rest_of_the_run_kept(tiny, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("timer broke")

    monkeypatch.setattr("core.timing.paired_step_latency", broken)
    result = run(tiny, CHANNEL, evaluation=EvaluationSettings(num_samples=2, steps=1, grid_images=2),
                 export=ExportSettings(out=str(tmp_path / "out")))
    assert set(result.errors) == {"timing"} and "timer broke" in str(result.errors["timing"])
    assert result.timing is None and set(result.evaluations) == {"dense", "one-shot"}
    assert (tmp_path / "out" / "pruned-model" / "diffprune_checkpoint.json").exists()


# ------------------------------------------------------------------------------ settings
@pytest.mark.parametrize("make, field", [
    (lambda: RecoverySettings(steps=-1), "recovery steps"),
    (lambda: RecoverySettings(steps=2.5), "recovery steps"),
    (lambda: RecoverySettings(lr=0), "recovery learning rate"),
    (lambda: RecoverySettings(lr=float("nan")), "recovery learning rate"),
    (lambda: RecoverySettings(batch_size=0), "recovery batch size"),
    (lambda: RecoverySettings(distill="yes"), "recovery distill"),
    (lambda: RecoverySettings(data="the internet"), "recovery data"),
    (lambda: RecoverySettings(checkpoint_every=-1), "recovery checkpoint_every"),
    (lambda: EvaluationSettings(num_samples=1), "evaluation num_samples"),
    (lambda: EvaluationSettings(steps=0), "evaluation steps"),
    (lambda: EvaluationSettings(metrics=("psnr",)), "evaluation metrics"),
    (lambda: EvaluationSettings(metrics="kid"), "evaluation metrics"),
    (lambda: EvaluationSettings(reference="nowhere"), "evaluation reference"),
    (lambda: EvaluationSettings(grid_images=-1), "evaluation grid_images"),
    (lambda: EvaluationSettings(class_label=True), "evaluation class_label"),
    (lambda: EvaluationSettings(prompt=""), "evaluation prompt"),
    (lambda: TimingSettings(enabled="yes"), "timing enabled"),
    (lambda: TimingSettings(rounds=0), "timing rounds"),
    (lambda: TimingSettings(budget_s=math.inf), "timing budget_s"),
    (lambda: ExportSettings(out=5), "export out"),
    (lambda: ExportSettings(include_oneshot="no"), "export include_oneshot"),
    (lambda: FrontierSettings(num_samples=4, base_steps=0), "frontier base_steps"),
    (lambda: FrontierSettings(num_samples=4, base_steps=5, latency="wall"), "frontier latency"),
    (lambda: FrontierSettings(num_samples=4, base_steps=5, metrics=()), "frontier metrics"),
])
def test_a_bad_setting_is_one_short_error_naming_the_field_and_the_allowed_values(make, field):
    with pytest.raises(ValueError) as caught:
        make()
    message = str(caught.value)
    assert message.startswith(field) and ("must" in message) and len(message) < 300 and "\n" not in message


@pytest.mark.parametrize("change, field", [
    (dict(spec="magnitude"), "spec must be a PruneSpec"),
    (dict(recovery=dict(steps=2)), "recovery must be a RecoverySettings"),
    (dict(evaluation=EvaluationSettings(class_label=3)), "evaluation class_label must be None (this model has no classes)"),
    (dict(evaluation=EvaluationSettings(prompt="a red shoe")), "evaluation prompt must be None"),
    (dict(recovery=RecoverySettings(steps=2)), "recovery data 'fashion-mnist-train' holds"),  # 28x28 images, 8x8 model
    (dict(export="file"), "export out"),
    (dict(export="full"), "export out"),
])
def test_settings_that_do_not_fit_the_model_are_refused_before_any_work(tiny, tmp_path, monkeypatch, change, field):
    def no_work(*args, **kwargs):
        raise AssertionError("work started before the settings were checked")

    monkeypatch.setattr("core.engine.prune", no_work)
    (tmp_path / "file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.txt").write_text("x")
    if change.get("export") in ("file", "full"):
        change = dict(export=ExportSettings(out=str(tmp_path / change["export"])))
    arguments = dict(dict(spec=CHANNEL), **change)
    spec = arguments.pop("spec")
    with pytest.raises(ValueError, match=field.replace("(", r"\(").replace(")", r"\)")):
        run(tiny, spec, **arguments)


# ------------------------------------------------------------------------------ one export: app zip = CLI export
def _volatile(key: str) -> bool:
    return key.endswith("_s") or "seconds" in key or key.startswith("wall_time")


def _stable(value):
    """A JSON config without the measured times (which differ between two runs of the same settings)."""
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if not _volatile(k)}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def _files(folder: Path) -> dict:
    return {str(path.relative_to(folder)): path for path in sorted(folder.rglob("*")) if path.is_file()}


def test_the_app_zip_and_the_cli_export_of_one_run_hold_the_same_files_and_configs(tiny_model, tmp_path, capsys):
    from core.cli import main
    from diffprune_ui import handlers
    from test_app_handlers import FakeRequest, RecordingProgress, run_args

    outputs = handlers.run_prune(*run_args(tiny_model, recovery_steps=2, recovery_data="generated by the dense model",
                                           export_oneshot=True), request=FakeRequest(), progress=RecordingProgress())
    assert outputs[0].startswith("**Done**"), outputs[0]
    with zipfile.ZipFile(outputs[13]) as handle:
        handle.extractall(tmp_path / "app")
    code = main(["run", "--model", tiny_model, "--out", str(tmp_path / "cli"), "--criterion", "magnitude",
                 "--granularity", "channel", "--sparsity", "0.3", "--recovery-steps", "2", "--recovery-lr", "1e-3",
                 "--recovery-batch-size", "4", "--recovery-data", "generated", "--export-oneshot", "--num-samples", "4",
                 "--steps", "3", "--device", "cpu", "--quiet", "--no-store"])
    out = capsys.readouterr().out
    assert code == 0 and "exported" in out and "recovery    2 steps" in out, out
    app, cli = _files(tmp_path / "app"), _files(tmp_path / "cli")
    assert sorted(app) == sorted(cli)
    assert {"pruned-model/USAGE.md", "pruned-model/recovery_losses.csv", "one-shot-model/report/layers.csv"} <= set(app)
    for name in (n for n in app if n.endswith(".json")):
        assert _stable(json.loads(app[name].read_text())) == _stable(json.loads(cli[name].read_text())), name
    # the one-shot weights are the same pruning of the same model
    from safetensors.torch import load_file

    weights = "one-shot-model/unet/diffusion_pytorch_model.safetensors"
    mine, theirs = load_file(str(app[weights])), load_file(str(cli[weights]))
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    # each report is written once, and no config names a local path
    for folder in ("pruned-model", "one-shot-model"):
        tables = [n.rsplit("/", 1)[-1] for n in app if n.startswith(folder) and n.endswith(".csv")]
        assert len(tables) == len(set(tables)) and not any(t.startswith("report_") for t in tables), tables
    local = (str(tmp_path), tiny_model, os.path.expanduser("~"))
    for files in (app, cli):
        for name, path in files.items():
            if name.endswith(".json"):
                text = path.read_text()
                assert not any(prefix in text for prefix in local), (name, text[:200])


def test_an_export_records_a_local_calibration_folder_by_its_name(tiny, tmp_path):
    import numpy as np
    from PIL import Image

    folder = tmp_path / "my-images"
    folder.mkdir()
    for index in range(4):
        Image.fromarray(np.full((8, 8), 60 * index, dtype=np.uint8)).save(folder / f"{index}.png")
    spec = PruneSpec(criterion="taylor", granularity="unstructured", sparsity=0.3, calibration_data=str(folder),
                     calibration_batches=1, calibration_batch_size=2, schedule="custom",
                     schedule_params={"timesteps": [[5, 1.0]]})
    result = run(tiny, spec, evaluation=EvaluationSettings(num_samples=2, steps=1, grid_images=0, metrics=()),
                 timing=TimingSettings(enabled=False), export=ExportSettings(out=str(tmp_path / "out")))
    assert result.ok, result.errors
    marker = json.loads((tmp_path / "out" / "pruned-model" / "diffprune_checkpoint.json").read_text())
    assert marker["spec"]["calibration_data"] == "my-images"
    for path in (tmp_path / "out").rglob("*.json"):
        assert str(tmp_path) not in path.read_text(), path


def test_the_cli_run_refuses_bad_settings_with_exit_2(tiny_model, tmp_path, capsys):
    from core.cli import main

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    for argv, message in ((["--recovery-lr", "0"], "recovery learning rate must be"),
                          (["--out", str(tmp_path / "taken")], "already holds files"),
                          (["--num-samples", "1"], "evaluation num_samples must be")):
        code = main(["run", "--model", tiny_model, "--device", "cpu", "--quiet", *argv])
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, err


def test_the_cli_run_help_lists_its_settings_without_importing_torch():
    import subprocess
    import sys

    code = ("import contextlib, io, sys\nfrom core.cli import main\nout = io.StringIO()\n"
            "try:\n    with contextlib.redirect_stdout(out):\n        main(['run', '--help'])\n"
            "except SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'diffusers', 'gradio') if m in sys.modules))\nprint(out.getvalue())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    heavy, text = done.stdout.split("\n", 1)
    assert heavy == "[]"
    for flag in ("--out", "--recovery-steps", "--distill", "--num-samples", "--metrics", "--no-timing",
                 "--export-oneshot", "--preset", "--grid-out"):
        assert flag in text, flag


# ------------------------------------------------------------------------------ the dense frontier
def test_dense_frontier_relative_latency_and_the_store(tiny, tmp_path, monkeypatch):
    from core.store import ResultStore

    assert fewer_steps(25) == [5, 10, 15, 20] and fewer_steps(5) == [1, 2, 3, 4] and fewer_steps(1) == []
    settings = FrontierSettings(num_samples=4, base_steps=4, metrics=("kid",), reference="dense", label="tiny")
    store = ResultStore(tmp_path / "store")
    table = dense_frontier(tiny, [1, 2, 4], settings, store=store)
    assert list(table["num_inference_steps"]) == [1, 2, 4]
    assert list(table["relative_latency"]) == [0.25, 0.5, 1.0] and table["kid"].notna().all()

    def no_evaluation(*args, **kwargs):
        raise AssertionError("the stored frontier was measured again")

    import importlib

    monkeypatch.setattr(importlib.import_module("core.evaluate"), "evaluate", no_evaluation)
    again = dense_frontier(tiny, [1, 2, 4], settings, store=store)
    assert list(again["kid"]) == list(table["kid"])


def test_dense_frontier_timed_sampler_is_relative_to_the_base_steps(tiny):
    settings = FrontierSettings(num_samples=2, base_steps=2, metrics=("kid",), reference="dense", latency="sampler",
                                repeats=1, latency_batch_size=2)
    table = dense_frontier(tiny, [1], settings)
    assert list(table["num_inference_steps"]) == [1, 2]  # the base is measured: it is the latency's unit
    base = table.set_index("num_inference_steps").loc[2]
    assert base["relative_latency"] == pytest.approx(1.0)
    assert (table["latency_min_s_per_image"] <= table["latency_median_s_per_image"]).all()


def test_the_dense_frontier_benchmark_writes_the_table_the_app_reads(tmp_path):
    import pandas as pd

    from benchmarks import dense_frontier as bench

    out = tmp_path / "dense_steps.csv"
    assert bench.main(["--steps", "1", "--base-steps", "2", "--num-samples", "4", "--repeats", "1",
                       "--latency-batch-size", "1", "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == bench.COLUMNS and list(table["num_inference_steps"]) == [1, 2]
    assert table.set_index("num_inference_steps").loc[2, "relative_latency"] == pytest.approx(1.0)
    assert table[["fid", "kid"]].notna().all().all()
