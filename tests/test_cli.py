"""The ``diffprune`` command line (core/cli.py) on tiny saved diffusers models, run in-process.

Each command's real outcome is checked: checkpoints load with ``load_pipeline`` at the sparsity
asked for, eval/sweep rows are sane and a rerun sweep is served from the store, fine-tuning
writes a loadable pipeline, and bad input ends with exit code 2 and one error line.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from core.cli import build_parser, main, spec_from_args
from core.criteria import prunable_layers
from core.pipeline import PRUNED_MARKER, load_pipeline

REPO = Path(__file__).resolve().parent.parent
CHEAP_EVAL = ["--num-samples", "2", "--steps", "2", "--metrics", "macs"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def private_dirs(tmp_path, monkeypatch):
    """Results store and feature cache inside tmp_path, never in the home directory."""
    monkeypatch.setenv("DIFFPRUNE_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setenv("DIFFPRUNE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def pruned_model(tiny_model, tmp_path_factory) -> str:
    """magnitude / unstructured 50 % of the tiny model, written by ``diffprune prune``."""
    output = tmp_path_factory.mktemp("pruned") / "magnitude-50"
    assert main(["prune", "--model", tiny_model, "--output", str(output), "--criterion", "magnitude",
                 "--sparsity", "0.5", "--device", "cpu", "--quiet"]) == 0
    return str(output)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> str:
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    generator = np.random.default_rng(0)
    for index in range(6):
        Image.fromarray(generator.integers(0, 255, (8, 8), dtype=np.uint8)).save(folder / f"{index}.png")
    return str(folder)


def run(argv, capsys):
    """``main(argv)`` -> (exit code, stdout, stderr); argparse's own exits are caught too."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def prunable_zero_fraction(unet) -> float:
    layers = prunable_layers(unet)
    zeros = sum(int((m.weight == 0).sum()) for m in layers.values())
    return zeros / sum(m.weight.numel() for m in layers.values())


# ----------------------------------------------------------------------------------------------
# help
# ----------------------------------------------------------------------------------------------
def test_help_of_the_installed_command_lists_every_command():
    script = Path(sys.executable).parent / "diffprune"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "core.cli"]
    done = subprocess.run([*command, "--help"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    for name in ("prune", "eval", "sample", "sweep", "finetune", "train-base"):
        assert name in done.stdout


@pytest.mark.parametrize("command, flag", [("prune", "--preset"), ("eval", "--dense-model"), ("sweep", "--criteria"),
                                           ("finetune", "--distill"), ("train-base", "--checkpoint-minutes"),
                                           ("sample", "--prompt")])
def test_every_command_has_help_and_the_common_options(command, flag, capsys):
    code, out, _ = run([command, "--help"], capsys)
    assert code == 0
    for option in (flag, "--device", "--seed", "--threads"):
        assert option in out


# ----------------------------------------------------------------------------------------------
# prune
# ----------------------------------------------------------------------------------------------
def test_prune_unstructured_writes_a_loadable_checkpoint_at_the_sparsity(pruned_model, tiny_model):
    pipeline = load_pipeline(pruned_model, device="cpu")
    assert abs(prunable_zero_fraction(pipeline.unet) - 0.5) < 0.01
    dense = load_pipeline(tiny_model, device="cpu")
    assert prunable_zero_fraction(dense.unet) < 0.01
    marker = json.loads((Path(pruned_model) / PRUNED_MARKER).read_text())
    assert marker["spec"]["criterion"] == "magnitude" and marker["spec"]["device"] == "cpu"
    assert marker["totals"]["sparsity"] == pytest.approx(0.5, abs=0.01)


def test_prune_channel_shrinks_the_model_and_prints_a_summary(tiny_model, tmp_path, capsys):
    output = tmp_path / "channel"
    code, out, err = run(["prune", "--model", tiny_model, "--output", output, "--criterion", "random",
                          "--granularity", "channel", "--sparsity", "0.44", "--seed", "1", "--device", "cpu"], capsys)
    assert code == 0, err
    assert "100%" in err  # the progress bar reached the end
    assert "parameters" in out and "MACs" in out and str(output) in out
    dense = load_pipeline(tiny_model, device="cpu").unet
    pruned = load_pipeline(output, device="cpu").unet
    count = lambda unet: sum(p.numel() for p in unet.parameters())  # noqa: E731
    assert count(pruned) < 0.75 * count(dense)
    assert pruned(torch.randn(1, 1, 8, 8), 10).sample.shape == (1, 1, 8, 8)
    assert json.loads((output / PRUNED_MARKER).read_text())["spec"]["seed"] == 1


def test_prune_spec_file_with_flags_overriding_it(tiny_model, tmp_path, capsys):
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({"criterion": "random", "granularity": "unstructured", "sparsity": 0.3, "seed": 3}))
    output = tmp_path / "from-file"
    code, _, err = run(["prune", "--model", tiny_model, "--output", output, "--spec", spec_file,
                        "--sparsity", "0.6", "--device", "cpu", "--quiet"], capsys)
    assert code == 0, err
    spec = json.loads((output / PRUNED_MARKER).read_text())["spec"]
    assert (spec["criterion"], spec["sparsity"], spec["seed"]) == ("random", 0.6, 3)
    assert abs(prunable_zero_fraction(load_pipeline(output, device="cpu").unet) - 0.6) < 0.01


def test_spec_merging_rules_of_presets_and_files(tmp_path):
    parse = lambda *argv: spec_from_args(build_parser().parse_args(["prune", "--output", "x", *argv]), "cpu")  # noqa: E731
    # a new criterion drops the preset's criterion-specific fields (taylor's schedule)
    spec = parse("--preset", "diffpruning", "--criterion", "magnitude")
    assert (spec.criterion, spec.granularity, spec.sparsity, spec.schedule) == ("magnitude", "channel", 0.44, None)
    # an N:M granularity implies its sparsity; a channel ratio replaces the sparsity
    assert parse("--preset", "random-50", "--granularity", "1:4").sparsity == 0.75
    assert parse("--granularity", "channel", "--channel-ratio", "0.3").channel_ratio == 0.3
    # YAML spec file (PyYAML is installed here) and a checkpoint marker as spec file
    yaml_file = tmp_path / "spec.yaml"
    yaml_file.write_text("criterion: l1\nsparsity: 0.2\ncalibration_batches: 2\n")
    spec = parse("--spec", str(yaml_file), "--seed", "4")
    assert (spec.criterion, spec.sparsity, spec.calibration_batches, spec.seed) == ("l1", 0.2, 2, 4)
    marker = tmp_path / PRUNED_MARKER
    marker.write_text(json.dumps({"format": "diffprune-checkpoint", "version": 1, "spec": spec.to_dict()}))
    assert parse("--spec", str(marker)) == spec


# ----------------------------------------------------------------------------------------------
# eval
# ----------------------------------------------------------------------------------------------
def test_eval_latency_and_macs_writes_a_sane_json_row(tiny_model, tmp_path, capsys):
    json_out = tmp_path / "row.json"
    code, out, err = run(["eval", "--model", tiny_model, "--metrics", "latency,macs", "--num-samples", "2",
                          "--steps", "2", "--device", "cpu", "--results-dir", tmp_path / "store",
                          "--json-out", json_out], capsys)
    assert code == 0, err
    row = json.loads(json_out.read_text())
    dense = load_pipeline(tiny_model, device="cpu").unet
    assert row["params"] == sum(p.numel() for p in dense.parameters())
    assert row["macs"] > 0 and row["latency_median_s_per_image"] > 0
    assert row["fid"] is None and row["kid"] is None and row["speedup"] is None
    assert row["cached"] is False and "latency_median_s_per_image" in out
    assert (tmp_path / "store" / "results.sqlite").exists()
    code, _, _ = run(["eval", "--model", tiny_model, "--metrics", "latency,macs", "--num-samples", "2", "--steps", "2",
                      "--device", "cpu", "--results-dir", tmp_path / "store", "--json-out", json_out, "--quiet"], capsys)
    assert code == 0 and json.loads(json_out.read_text())["cached"] is True


def test_eval_kid_of_a_pruned_checkpoint_against_its_dense_model(pruned_model, tiny_model, tmp_path, capsys):
    json_out = tmp_path / "kid.json"
    code, _, err = run(["eval", "--model", pruned_model, "--dense-model", tiny_model, "--reference", "dense",
                        "--metrics", "kid,macs", "--num-samples", "4", "--steps", "2", "--device", "cpu",
                        "--json-out", json_out, "--quiet"], capsys)
    assert code == 0, err
    row = json.loads(json_out.read_text())
    assert row["reference"] == "dense" and row["num_samples"] == 4 and row["kid_subset_size"] == 2
    assert np.isfinite(row["kid"]) and row["kid_std"] >= 0
    assert row["nonzero_params"] < row["params"]  # the zeros of the pruned checkpoint
    assert row["prune_spec"]["criterion"] == "magnitude"  # read from the checkpoint's marker


# ----------------------------------------------------------------------------------------------
# sweep
# ----------------------------------------------------------------------------------------------
def test_sweep_writes_csv_and_a_rerun_resumes_from_the_store(tiny_model, tmp_path, capsys):
    common = ["sweep", "--model", tiny_model, "--sparsities", "0.5", "--device", "cpu", "--quiet",
              "--results-dir", tmp_path / "store", *CHEAP_EVAL]
    # "interrupted" sweep: only the first spec finished
    code, _, err = run([*common, "--criteria", "magnitude", "--csv-out", tmp_path / "first.csv"], capsys)
    assert code == 0, err
    assert list(pd.read_csv(tmp_path / "first.csv")["cached"]) == [False]

    code, out, err = run([*common, "--criteria", "magnitude,random", "--csv-out", tmp_path / "sweep.csv"], capsys)
    assert code == 0, err
    table = pd.read_csv(tmp_path / "sweep.csv")
    assert list(table["criterion"]) == ["magnitude", "random"]
    assert list(table["cached"]) == [True, False]  # the finished row was not recomputed
    assert (table["prune_sparsity"] - 0.5).abs().max() < 0.01 and (table["macs"] > 0).all()
    assert "1 from the store" in out

    code, _, _ = run([*common, "--criteria", "magnitude,random", "--csv-out", tmp_path / "again.csv"], capsys)
    again = pd.read_csv(tmp_path / "again.csv")
    assert code == 0 and list(again["cached"]) == [True, True]
    assert list(again["key"]) == list(table["key"])


def test_sweep_killed_midway_exits_130_and_the_rerun_completes(tiny_model, tmp_path, capsys, monkeypatch):
    import sys

    sweep_module = sys.modules["core.sweep"]  # ``core.sweep`` the attribute is the function
    real_prune, pruned = sweep_module.prune, []

    def ctrl_c_on_second_spec(pipeline, spec, progress=None):
        if pruned:
            raise KeyboardInterrupt
        pruned.append(spec.criterion)
        return real_prune(pipeline, spec, progress=progress)

    monkeypatch.setattr(sweep_module, "prune", ctrl_c_on_second_spec)
    argv = ["sweep", "--model", tiny_model, "--criteria", "magnitude,random", "--device", "cpu", "--quiet",
            "--csv-out", tmp_path / "sweep.csv", *CHEAP_EVAL]
    code, _, err = run(argv, capsys)
    assert code == 130 and "rerun the same command to resume" in err
    assert not (tmp_path / "sweep.csv").exists()

    monkeypatch.setattr(sweep_module, "prune", lambda p, s, progress=None: pruned.append(s.criterion)
                        or real_prune(p, s, progress=progress))
    code, _, err = run(argv, capsys)
    assert code == 0, err
    assert pruned == ["magnitude", "random"]  # magnitude was pruned once, before the interruption
    assert list(pd.read_csv(tmp_path / "sweep.csv")["cached"]) == [True, False]


def test_sweep_nm_granularity_ignores_sparsities_and_bad_pairs_fail_fast(tiny_model, tmp_path, capsys):
    code, out, err = run(["sweep", "--model", tiny_model, "--criteria", "magnitude", "--granularities", "2:4",
                          "--sparsities", "0.3,0.5", "--device", "cpu", "--quiet", "--csv-out", tmp_path / "nm.csv",
                          *CHEAP_EVAL], capsys)
    assert code == 0, err
    table = pd.read_csv(tmp_path / "nm.csv")
    assert len(table) == 1 and table.loc[0, "sparsity"] == 0.5
    # an unknown granularity is refused before any model is loaded
    code, _, err = run(["sweep", "--model", tmp_path / "missing", "--criteria", "obs", "--granularities", "blocks",
                        *CHEAP_EVAL], capsys)
    assert code == 2 and "granularity must be one of" in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------------------------
# finetune
# ----------------------------------------------------------------------------------------------
def test_finetune_a_pruned_checkpoint_gives_a_loadable_pipeline(pruned_model, image_folder, tmp_path, capsys):
    output = tmp_path / "tuned"
    argv = ["finetune", "--model", pruned_model, "--output", output, "--steps", "3", "--batch-size", "4",
            "--lr", "1e-2", "--images", image_folder, "--device", "cpu"]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert "fine-tuned 3 steps" in out and "100%" in err
    before = load_pipeline(pruned_model, device="cpu").unet
    tuned = load_pipeline(output, device="cpu").unet
    assert tuned(torch.randn(1, 1, 8, 8), 10).sample.shape == (1, 1, 8, 8)
    changed = [n for n, v in tuned.state_dict().items() if not torch.equal(v, before.state_dict()[n])]
    assert changed
    # the zeros of the unstructured result stay zero (the spec in the marker says unstructured)
    assert abs(prunable_zero_fraction(tuned) - prunable_zero_fraction(before)) < 1e-6
    assert len(pd.read_csv(output / "finetune_losses.csv")) == 3
    assert (output / "checkpoints" / "checkpoint-3").is_dir()
    # a rerun finds the finished checkpoint and resumes from it: no step is recomputed
    code, out, _ = run([*argv, "--quiet"], capsys)
    assert code == 0 and "resumed from step 3" in out


# ----------------------------------------------------------------------------------------------
# bad input: exit 2, one line
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, expected", [
    (["prune", "--criterion", "nope"], "invalid choice"),
    (["prune", "--sparsity", "1.5"], "sparsity must be a number in [0, 0.95]"),
    (["prune", "--model", "{missing}"], "does not exist"),
    (["prune", "--criterion", "taylor", "--schedule-params", "{{not json"], "invalid JSON"),
    (["prune", "--spec", "{missing}.json"], "does not exist"),
    (["prune", "--spec", "{bad_json}"], "invalid JSON"),
    (["prune", "--granularity", "3:2"], "N:M needs 0 < N < M"),
    (["eval", "--model", "{missing}", "--metrics", "macs"], "does not exist"),
    (["eval", "--metrics", "fid,psnr"], "unknown ['psnr']"),
    (["eval", "--reference", "dense", "--metrics", "kid"], "--dense-model"),
    (["sweep", "--criteria", "magnitude", "--sparsities", "half"], "list of numbers"),
    (["finetune", "--model", "{missing}", "--output", "{tmp}/out"], "does not exist"),
    (["prune", "--device", "tpu"], "'auto', 'cpu' or 'cuda[:N]'"),
    (["compress"], "invalid choice"),
])
def test_bad_input_exits_2_with_one_line(argv, expected, tmp_path, capsys):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{criterion: magnitude")
    names = dict(missing=tmp_path / "missing", bad_json=bad_json, tmp=tmp_path)
    argv = [item.format(**names) for item in argv]
    if argv[0] in ("prune",) and "--output" not in argv:
        argv += ["--output", str(tmp_path / "out")]
    code, out, err = run(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffprune: error: ") and expected in lines[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, expected", [
    (["prune", "--criterion-params", "[" * 60_000 + "]" * 60_000], "nests lists or objects too deeply"),
    (["prune", "--criterion-params", '{"a":' * 60_000 + "1" + "}" * 60_000], "nests lists or objects too deeply"),
    (["prune", "--model", "~nonexistentuser/x"], "--model '~nonexistentuser/x': no such user's home folder"),
    (["eval", "--model", "~nonexistentuser/x", "--metrics", "macs"], "no such user's home folder"),
    (["prune", "--output", "{existing}"], "--output '{existing}' is an existing file"),
    (["sample", "--output", "{tmp}/grid.txt"], "--output must end in .png, .jpg, .jpeg or .webp"),
    (["sample", "--output", "{tmp}/folder.png"], "is a folder"),
    (["sample", "--output", "{tmp}/grid.png", "--num-images", "1000000"], "--num-images must be at most 50,000"),
    (["sample", "--output", "{tmp}/grid.png", "--num-images", str(10**9)], "--num-images must be at most 50,000"),
    (["prune", "--granularity", "2:4\n"], "refused, not normalised"),
    (["prune", "--granularity", "\uff12:\uff14"], "refused, not normalised"),
    (["prune", "--device", "cpu\n"], "'auto', 'cpu' or 'cuda[:N]'"),
    (["prune", "--sparsity", "2"], "sparsity must be a number in [0, 0.95], got 2.0"),
])
def test_usage_errors_end_before_any_work_with_one_line(argv, expected, tmp_path, capsys, monkeypatch):
    """Refused before a model is loaded or any work starts: exit 2, one line, no traceback."""
    import core.cli

    def no_work(*args, **kwargs):
        raise AssertionError("a usage error must end the command before any model is loaded")

    monkeypatch.setattr(core.cli, "_load", no_work)
    existing = tmp_path / "existing.txt"
    existing.write_text("keep me")
    (tmp_path / "folder.png").mkdir()
    argv = [item.format(existing=existing, tmp=tmp_path) if len(item) < 1000 else item for item in argv]
    if argv[0] == "prune" and "--output" not in argv:
        argv += ["--output", str(tmp_path / "out")]
    code, out, err = run(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("diffprune: error: "), err[:500]
    assert expected.format(existing=existing) in lines[0] and len(lines[0]) < 400, lines[0]
    assert existing.read_text() == "keep me" and not (tmp_path / "out").exists()


def test_finetune_refuses_a_non_finite_rate_or_clipping_before_training(pruned_model, tmp_path, capsys):
    for flags, expected in ((["--lr", "inf"], "lr must be a finite number > 0"),
                            (["--max-grad-norm", "nan"], "max_grad_norm must be None (no clipping) or a finite")):
        output = tmp_path / flags[0].strip("-")
        code, out, err = run(["finetune", "--model", pruned_model, "--output", str(output), "--steps", "2", *flags],
                             capsys)
        assert code == 2 and expected in err and "Traceback" not in err, err
        assert not (output / "checkpoints").exists()


# ----------------------------------------------------------------------------------------------
# sample: a grid of one class (class-conditional) or one prompt (text-to-image)
# ----------------------------------------------------------------------------------------------
def test_sample_writes_a_grid_of_one_class_or_one_prompt(tmp_path, capsys):
    from PIL import Image

    import tiny_families

    sd = tmp_path / "sd"
    tiny_families.build("sd").save_pretrained(sd)
    code, out, _ = run(["sample", "--model", str(sd), "--output", str(tmp_path / "shoe.png"), "--num-images", "2",
                        "--steps", "2", "--prompt", "a red shoe", "--quiet", "--threads", "1"], capsys)
    assert code == 0 and "prompt 'a red shoe'" in out
    assert Image.open(tmp_path / "shoe.png").size[0] > 0
    code, out, _ = run(["sample", "--model", "dit-fashion-mnist", "--output", str(tmp_path / "trousers.png"),
                        "--num-images", "2", "--steps", "2", "--class", "1", "--quiet", "--threads", "1"], capsys)
    assert code == 0 and "class 1" in out
    code, _, err = run(["sample", "--model", "dit-fashion-mnist", "--output", str(tmp_path / "x.png"),
                        "--num-images", "2", "--steps", "2", "--prompt", "a shoe", "--quiet"], capsys)
    assert code == 2 and "prompt applies to text-to-image models" in err


def test_every_sampling_command_takes_the_engines_samplers(tmp_path, capsys):
    """``--scheduler`` of sample, eval, sweep and run offers exactly ``core.pipeline.SCHEDULERS``;
    DPM-Solver++ samples what ``sample_images`` samples with it."""
    from PIL import Image

    from core.cli import SAMPLERS
    from core.pipeline import SCHEDULERS, make_grid, sample_images

    assert SAMPLERS == SCHEDULERS
    parser = build_parser()
    for command in (["sample", "--output", "x.png"], ["eval"], ["sweep", "--criteria", "magnitude"], ["run"]):
        assert parser.parse_args([*command, "--scheduler", "dpm-solver++"]).scheduler == "dpm-solver++"
        assert parser.parse_args(command).scheduler == "ddim"
    code, _, err = run(["sample", "--output", str(tmp_path / "x.png"), "--scheduler", "euler"], capsys)
    assert code == 2 and "dpm-solver++" in err
    code, out, _ = run(["sample", "--output", str(tmp_path / "dpm.png"), "--num-images", "4", "--steps", "4",
                        "--scheduler", "dpm-solver++", "--columns", "2", "--scale", "1", "--quiet", "--threads", "1"],
                       capsys)
    assert code == 0
    expected = make_grid(sample_images(load_pipeline(None), 4, 4, seed=0, scheduler="dpm-solver++"), columns=2)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "dpm.png")), np.asarray(expected))
    from core.cli import _run_settings

    settings = _run_settings(parser.parse_args(["run", "--scheduler", "dpm-solver++"]))
    assert settings["evaluation"].scheduler == "dpm-solver++"


def test_prune_takes_calibration_prompts_from_a_file(tmp_path, capsys):
    import tiny_families

    sd = tmp_path / "sd"
    tiny_families.build("sd").save_pretrained(sd)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# my captions\na red shoe\n\na blue bag\n")
    code, out, err = run(["prune", "--model", str(sd), "--criterion", "taylor", "--sparsity", "0.3",
                          "--schedule", "uniform", "--schedule-params", '{"num_timesteps": 2}',
                          "--calibration-batch-size", "2", "--calibration-prompts", str(prompts),
                          "--output", str(tmp_path / "out"), "--quiet", "--threads", "1"], capsys)
    assert code == 0, err
    marker = json.loads((tmp_path / "out" / "diffprune_checkpoint.json").read_text())
    assert marker["spec"]["calibration_prompts"] == ["a red shoe", "a blue bag"]
    (tmp_path / "empty.txt").write_text("# nothing\n")
    code, _, err = run(["prune", "--model", str(sd), "--calibration-prompts", str(tmp_path / "empty.txt"),
                        "--output", str(tmp_path / "x")], capsys)
    assert code == 2 and "holds no prompt" in err
