"""Results store: keys, model hashes, persistence, DataFrame, surviving a killed writer."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DModel

from core.store import STORE_FILENAME, ResultStore, default_results_dir, key_for, model_hash

REPO = Path(__file__).resolve().parent.parent


def _tiny_unet(seed=0):
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(4, 8),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=2)


SETTINGS = {"num_samples": 64, "num_inference_steps": 25, "seed": 0, "metrics": ["fid", "kid"]}


def test_key_is_canonical_and_covers_every_input():
    base = key_for("abc", SETTINGS, {"criterion": "taylor", "sparsity": 0.3})
    reordered = {k: SETTINGS[k] for k in reversed(list(SETTINGS))}
    assert key_for("abc", reordered, {"sparsity": 0.3, "criterion": "taylor"}) == base
    assert key_for("abc", {**SETTINGS, "metrics": ("fid", "kid")}, {"criterion": "taylor", "sparsity": 0.3}) == base
    assert key_for("abd", SETTINGS, {"criterion": "taylor", "sparsity": 0.3}) != base
    assert key_for("abc", {**SETTINGS, "seed": 1}, {"criterion": "taylor", "sparsity": 0.3}) != base
    assert key_for("abc", SETTINGS, {"criterion": "taylor", "sparsity": 0.31}) != base
    assert key_for("abc", SETTINGS, None) != base
    assert len(base) == 64 and int(base, 16) >= 0


def test_model_hash_tracks_weights_and_config_not_location(tmp_path):
    first, same = _tiny_unet(0), _tiny_unet(0)
    assert model_hash(first) == model_hash(same)
    first.save_pretrained(tmp_path / "saved")
    reloaded = UNet2DModel.from_pretrained(tmp_path / "saved")
    assert model_hash(reloaded) == model_hash(first)  # _name_or_path differs, weights do not
    with torch.no_grad():
        same.conv_in.weight[0, 0, 0, 0] += 1e-3
    assert model_hash(same) != model_hash(first)
    assert model_hash(_tiny_unet(1)) != model_hash(first)


def test_put_get_identical_rows_and_persistence(tmp_path):
    store = ResultStore(tmp_path)
    key = key_for("abc", SETTINGS, {"criterion": "magnitude", "sparsity": 0.5})
    row = {"fid": 12.5, "kid": 0.01, "kid_std": 0.002, "params": 1234, "model_hash": "abc",
           "prune_spec": {"criterion": "magnitude", "sparsity": 0.5}, "metrics": ["fid", "kid"]}
    assert store.get(key) is None
    store.put(key, row)
    assert store.get(key) == row
    again = key_for("abc", dict(SETTINGS), {"sparsity": 0.5, "criterion": "magnitude"})
    assert again == key and store.get(again) == row
    reopened = ResultStore(tmp_path)
    assert reopened.get(key) == row and len(reopened) == 1 and key in reopened
    store.put(key, {**row, "fid": 11.0})  # replacing keeps one row per key
    assert reopened.get(key)["fid"] == 11.0 and len(reopened) == 1
    assert (tmp_path / STORE_FILENAME).is_file()


def test_dataframe_has_one_flattened_row_per_result(tmp_path):
    store = ResultStore(tmp_path)
    for sparsity in (0.1, 0.2, 0.3):
        spec = {"criterion": "taylor", "sparsity": sparsity}
        store.put(key_for("abc", SETTINGS, spec), {"fid": 10 + sparsity, "prune_spec": spec, "model_hash": "abc"})
    frame = store.to_dataframe()
    assert len(frame) == 3
    assert {"key", "created_at", "fid", "prune_spec.sparsity", "prune_spec.criterion", "model_hash"} <= set(frame.columns)
    assert sorted(frame["prune_spec.sparsity"]) == [0.1, 0.2, 0.3]
    assert ResultStore(tmp_path / "empty").to_dataframe().empty


def test_default_directory_comes_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFPRUNE_RESULTS_DIR", str(tmp_path / "results"))
    assert default_results_dir() == tmp_path / "results"
    assert ResultStore().path == tmp_path / "results" / STORE_FILENAME
    monkeypatch.delenv("DIFFPRUNE_RESULTS_DIR")
    assert default_results_dir() == Path.home() / ".cache" / "diffprune" / "results"


def test_bad_arguments_raise_value_error(tmp_path):
    store = ResultStore(tmp_path)
    with pytest.raises(ValueError, match="row must be a dict"):
        store.put("k", [1, 2])
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        store.put("k", {"model": object()})
    with pytest.raises(ValueError, match="key must be a non-empty string"):
        store.put("", {"fid": 1.0})
    with pytest.raises(ValueError, match="model_hash must be a non-empty string"):
        key_for("", SETTINGS)
    with pytest.raises(ValueError, match="eval_settings must be a dict"):
        key_for("abc", [1])
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        ResultStore(tmp_path / "afile")
    assert len(store) == 0  # failed puts wrote nothing


WRITER = textwrap.dedent(
    """
    import importlib.util
    # Load core/store.py alone (no torch import via core/__init__), so the writer starts fast.
    spec = importlib.util.spec_from_file_location("store", {store_file!r})
    store_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(store_module)
    ResultStore = store_module.ResultStore
    store = ResultStore({directory!r})
    payload = "x" * 200_000  # large rows: many pages per transaction, so the kill lands mid-write
    for index in range(100_000):
        store.put(f"row-{{index}}", {{"index": index, "payload": payload, "values": list(range(50))}})
        print(index, flush=True)
    """
)


def test_store_survives_writer_killed_mid_write(tmp_path):
    directory = tmp_path / "store"
    process = subprocess.Popen([sys.executable, "-c", WRITER.format(store_file=str(REPO / "core" / "store.py"), directory=str(directory))],
                               stdout=subprocess.PIPE, text=True)
    committed = -1
    try:
        deadline = time.monotonic() + 60
        while committed < 30 and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            committed = int(line)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert committed >= 30, "writer did not commit rows before the deadline"
    with sqlite3.connect(str(directory / STORE_FILENAME)) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store = ResultStore(directory)
    for index in range(committed + 1):  # every row reported as committed is intact
        row = store.get(f"row-{index}")
        assert row is not None and row["index"] == index and len(row["payload"]) == 200_000
    assert len(store) in (committed + 1, committed + 2)  # at most the row after the last print
    store.put("after-crash", {"ok": True})  # still writable
    assert store.get("after-crash") == {"ok": True}
    assert json.loads(json.dumps(store.to_dataframe()["key"].tolist()))
