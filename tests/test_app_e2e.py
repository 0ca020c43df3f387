"""End to end through ``gradio_client`` against the launched app (``python app.py``) on the default model."""
import pytest
from gradio_client import Client

pytestmark = pytest.mark.slow

QUICK_RUN = dict(source="", criterion="magnitude", granularity="channel", sparsity=0.3, schedule="threshold",
                 threshold=0.05, interval_weights="1,1,1,1", num_steps=25, w_min=0.8, w_max=1.2, num_timesteps=10,
                 custom_text="0:1", calibration_batch_size=4, calibration_batches=1, num_samples=4, steps=5, seed=0,
                 quality="KID")


@pytest.fixture(scope="module")
def client(live_app):
    return Client(live_app, verbose=False)


def test_quick_prune_returns_a_measured_summary(client):
    outputs = client.predict(*QUICK_RUN.values(), api_name="/run_prune")
    status, summary = outputs[0], outputs[1]
    assert status.startswith("**Done**"), status
    rows = {row[0]: row[1:] for row in summary["data"]}
    dense_params, pruned_params = (int(v.replace(",", "")) for v in rows["parameters"])
    assert pruned_params < 0.9 * dense_params
    assert rows["speed-up (dense median / pruned median)"][1].endswith("x")
    assert "±" in rows["KID (± std)"][0] and "±" in rows["KID (± std)"][1]
    assert rows["samples / reference"][1] == "4 / fashion-mnist-test"
    export = outputs[-1]
    assert str(export).endswith(".zip")


def test_bad_input_is_an_error_and_the_server_keeps_serving(client):
    bad = dict(QUICK_RUN, num_samples=100000)
    with pytest.raises(Exception, match="number of samples"):
        client.predict(*bad.values(), api_name="/run_prune")
    curve = client.predict("log-decrease", 0.05, "1,1,1,1", 25, 0.8, 1.2, 10, "0:1", api_name="/preview_schedule")
    assert curve is not None
