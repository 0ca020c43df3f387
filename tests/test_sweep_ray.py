"""sweep(..., executor="ray") and ``diffprune sweep --executor ray`` on a real local Ray instance
(2 CPUs) and the embedded default model: Ray rows equal the serial rows, a rerun is answered from
the store without a task, a failing row is reported while the others are stored, and bad input
(an unreachable address, a GPU row on a cluster without a GPU, an unknown executor) is refused
before any task is queued."""
import logging
import math
import socket
import time

import pandas as pd
import pytest
import ray

import core.sweep_ray as sweep_ray
from core.default_model import DEFAULT_MODEL_DIR
from core.pipeline import load_pipeline
from core.spec import PruneSpec
from core.store import ResultStore
from core.sweep import ModelSource, RaySettings, sweep
from test_cli import run as run_cli

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

# A tiny evaluation: KID of 4 samples (2 DDIM steps) against the dense model's, plus counted MACs.
SETTINGS = dict(num_samples=4, num_inference_steps=2, seed=0, metrics=("kid", "macs"), reference="dense",
                kid_subset_size=2)
SPECS = [PruneSpec(criterion=criterion, granularity="channel", sparsity=sparsity, seed=1)
         for criterion in ("magnitude", "random") for sparsity in (0.2, 0.3)]
CHEAP = ["--num-samples", "2", "--steps", "2", "--metrics", "macs"]


@pytest.fixture(autouse=True)
def private_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFPRUNE_RESULTS_DIR", str(tmp_path / "results"))


@pytest.fixture(scope="module")
def dense():
    return load_pipeline(None, device="cpu")


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """One local Ray instance with 2 CPUs for the module; its workers get a private feature cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DIFFPRUNE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        yield
        ray.shutdown()


@pytest.fixture
def submitted(monkeypatch):
    """The specs of every task the sweep queues (the real ``_submit`` still queues them)."""
    real, specs = sweep_ray._submit, []

    def counting(needs, row, model, spec, images):
        specs.append(spec)
        return real(needs, row, model, spec, images)

    monkeypatch.setattr(sweep_ray, "_submit", counting)
    return specs


def closed_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]  # closed when the socket is: nothing listens there


def timing(column: str) -> bool:
    return column == "seconds" or column.endswith("_seconds") or "wall_time" in column


def assert_same_rows(serial: pd.DataFrame, on_ray: pd.DataFrame) -> None:
    """Every column but the wall-clock ones and ``cached``: counts exactly, floats within 1e-6.
    The rows run the same code on the same CPU with one thread each (Ray gives a 1-CPU task
    OMP_NUM_THREADS=1, the test runs with one torch thread), so they are expected bit-identical;
    the relative 1e-6 only leaves room for a float32 kernel picked differently in the worker."""
    assert sorted(serial.columns) == sorted(on_ray.columns)  # a stored row's keys come back sorted
    for column in serial.columns:
        if timing(column) or column == "cached":
            continue
        for left, right in zip(serial[column], on_ray[column]):
            if isinstance(left, float) and isinstance(right, float):
                assert (math.isnan(left) and math.isnan(right)) or math.isclose(left, right, rel_tol=1e-6), column
            else:
                assert left == right or (pd.isna(left) and pd.isna(right)), column


# ----------------------------------------------------------------------------------------------
# refused before any work (no Ray instance needed, or one the CLI starts itself)
# ----------------------------------------------------------------------------------------------
def test_an_unreachable_ray_address_fails_within_seconds_with_one_line(tmp_path, capsys):
    address = f"127.0.0.1:{closed_port()}"
    started = time.monotonic()
    code, _, err = run_cli(["sweep", "--criteria", "magnitude", "--executor", "ray", "--ray-address", address,
                            "--device", "cpu", "--quiet", "--results-dir", tmp_path, *CHEAP], capsys)
    assert time.monotonic() - started < sweep_ray.CONNECT_TIMEOUT_S + 5
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("diffprune: error: ray_address") and address in err and "ray start --head" in err


@pytest.mark.parametrize("argv, message", [
    (["--executor", "dask"], "invalid choice: 'dask'"),
    (["--ray-address", "127.0.0.1:6379"], "--executor ray only"),
    (["--executor", "ray", "--ray-address", "no-port"], "ray_address must be '<host>:<port>'"),
    (["--executor", "ray", "--ray-cpus-per-row", "0"], "positive integer"),
])
def test_bad_executor_flags_are_usage_errors(argv, message, tmp_path, capsys):
    code, _, err = run_cli(["sweep", "--criteria", "magnitude", "--results-dir", tmp_path, *CHEAP, *argv], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_bad_ray_settings_are_refused_naming_the_field(dense, tmp_path):
    store = ResultStore(tmp_path)
    for call, field in (
            (lambda: sweep(dense, SPECS, SETTINGS, store=store, executor="dask"), "executor"),
            (lambda: sweep(dense, SPECS, SETTINGS, store=store, ray_address="127.0.0.1:6379"), "ray_address"),
            (lambda: RaySettings(cpus_per_row=0), "cpus_per_row"),
            (lambda: RaySettings(model_source="assets/ddpm-fashion-mnist"), "model_source"),
            (lambda: ModelSource(dtype="float64"), "dtype"),
            (lambda: sweep(dense, [PruneSpec(device="auto")], SETTINGS, store=store, executor="ray"),
             r"specs\[0\].device"),
    ):
        with pytest.raises(ValueError, match=field):
            call()
    assert len(store) == 0


def test_a_gpu_row_on_a_cluster_without_a_gpu_is_refused_before_any_task(tmp_path, capsys, submitted):
    """``--device cuda`` on this CPU-only machine: the driver loads the model on its CPU, starts a
    local Ray instance (none is running yet) and refuses the row from the cluster's resources."""
    already = ray.is_initialized()
    code, _, err = run_cli(["sweep", "--criteria", "magnitude", "--granularities", "channel", "--sparsities", "0.2",
                            "--executor", "ray", "--device", "cuda", "--quiet", "--results-dir", tmp_path / "store",
                            *CHEAP], capsys)
    assert code == 2 and "specs[0].device is 'cuda' but the Ray cluster has no GPU" in err, err
    assert err.strip().splitlines()[-1].startswith("diffprune: error:")
    assert submitted == [] and len(ResultStore(tmp_path / "store")) == 0
    assert ray.is_initialized() == already  # the sweep's own local instance is shut down


# ----------------------------------------------------------------------------------------------
# rows on a local Ray instance with 2 CPUs
# ----------------------------------------------------------------------------------------------
def test_ray_rows_equal_the_serial_rows_and_a_rerun_queues_no_task(dense, local_ray, tmp_path, submitted):
    serial = sweep(dense, SPECS, SETTINGS, store=ResultStore(tmp_path / "serial"))
    messages = []
    store = ResultStore(tmp_path / "ray")
    on_ray = sweep(dense, SPECS, SETTINGS, store=store, executor="ray",
                   progress=lambda fraction, message: messages.append((fraction, message)))
    assert submitted == SPECS and len(store) == 4 and not on_ray["cached"].any()
    assert "error" not in on_ray and (on_ray["kid"] > 0).all() and (on_ray["macs"] > 0).all()
    assert_same_rows(serial, on_ray)
    assert messages[0] == (0.0, "0/4 rows done (0 from the store), 4 running, 0 failed")
    assert messages[-1] == (1.0, "4/4 rows done (0 from the store), 0 running, 0 failed")

    submitted.clear()
    again = sweep(dense, SPECS, SETTINGS, store=store, executor="ray", progress=lambda f, m: messages.append((f, m)))
    assert submitted == [] and again["cached"].all() and list(again["key"]) == list(on_ray["key"])
    assert messages[-1] == (1.0, "4/4 rows done (4 from the store), 0 running, 0 failed")
    assert_same_rows(on_ray, again)
    assert sweep(dense, SPECS, SETTINGS, store=store)["cached"].all()  # the serial sweep reads the same rows


def test_a_failing_row_is_reported_and_the_others_are_stored(dense, local_ray, tmp_path, tiny_model, submitted):
    """A spec that passes every check of the driver but fails in its task (a component the
    pixel UNet does not have); the tasks load the model from its directory themselves."""
    settings = dict(num_samples=2, num_inference_steps=2, seed=0, metrics=("macs",))
    good = PruneSpec(criterion="magnitude", granularity="channel", sparsity=0.2)
    bad = PruneSpec(criterion="magnitude", granularity="channel", sparsity=0.2, components=("vqvae",))
    store, messages = ResultStore(tmp_path), []
    executor = RaySettings(model_source=ModelSource(str(DEFAULT_MODEL_DIR)))
    table = sweep(dense, [bad, good], settings, store=store, executor=executor,
                  progress=lambda fraction, message: messages.append(message))
    assert submitted == [bad, good] and len(store) == 1
    assert table.loc[0, "error"].startswith("ValueError: components must name networks") and table.loc[0, "components"]
    assert pd.isna(table.loc[1, "error"]) and table.loc[1, "macs"] > 0 and not table["cached"].any()
    assert any(f"{bad.label} failed: ValueError: components" in message for message in messages)
    assert messages[-1] == "1/2 rows done (0 from the store), 0 running, 1 failed"

    submitted.clear()  # a rerun answers the stored row and tries the failed one again
    again = sweep(dense, [bad, good], settings, store=store, executor=executor)
    assert submitted == [bad] and list(again["cached"]) == [False, True] and again.loc[0, "error"]

    other = RaySettings(model_source=ModelSource(tiny_model))  # not the driver's model: refused in the task
    mismatch = sweep(dense, [good], {**settings, "seed": 1}, store=store, executor=other)
    assert "is not the driver's" in mismatch.loc[0, "error"] and len(store) == 1


def test_the_cli_runs_a_sweep_on_ray_and_refuses_more_cpus_than_a_node_has(local_ray, tmp_path, capsys):
    common = ["sweep", "--criteria", "magnitude", "--granularities", "channel", "--sparsities", "0.2", "--device",
              "cpu", "--quiet", "--results-dir", tmp_path / "store", "--executor", "ray", *CHEAP]
    code, out, err = run_cli([*common, "--ray-cpus-per-row", "3"], capsys)
    assert code == 2 and "cpus_per_row 3 is more than the largest Ray node has (2 CPUs)" in err, err
    code, out, err = run_cli([*common, "--csv-out", tmp_path / "sweep.csv"], capsys)
    assert code == 0, err
    table = pd.read_csv(tmp_path / "sweep.csv")
    assert list(table["cached"]) == [False] and table.loc[0, "macs"] > 0 and "error" not in table
    assert "1 rows (0 from the store" in out and "1 computed" in out
