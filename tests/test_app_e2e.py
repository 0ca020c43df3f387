"""End to end through ``gradio_client`` against the launched app (``python app.py``) on the default model."""
import pytest
from gradio_client import Client

pytestmark = pytest.mark.slow

QUICK_RUN = dict(source="", criterion="magnitude", granularity="channel", sparsity=0.3, schedule="threshold",
                 threshold=0.05, interval_weights="1,1,1,1", num_steps=25, w_min=0.8, w_max=1.2, num_timesteps=10,
                 custom_text="0:1", calibration_batch_size=4, calibration_batches=1, num_samples=4, steps=5, seed=0,
                 quality="KID", recovery_steps=0, recovery_lr=2e-4, recovery_batch=8, distill=False,
                 recovery_data="shipped training images", recovery_files=None, export_oneshot=False,
                 grid_class="all classes (uniform)", grid_prompt="", calibration_prompts="", sampler="ddim")


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
    assert "paired rounds" in rows["speed-up (paired: dense / pruned)"][1]
    assert "±" in rows["KID (± std)"][0] and "±" in rows["KID (± std)"][1]
    assert rows["samples / reference"][1] == "4 / fashion-mnist-test"
    exports = [o for o in outputs if str(o).endswith(".zip")]
    assert len(exports) == 1 and str(exports[0]).endswith("pct.zip")


@pytest.mark.parametrize("change, message", [
    (dict(num_samples=100000), "number of samples must be a whole number from 2 to 256"),
    (dict(num_samples=None), "number of samples must be a whole number"),
    (dict(seed=1.5), "seed must be a whole number"),
    (dict(source="x" * 5000), "model source must be empty, a hub id"),
    (dict(source="no-such-user/no-such-model"), "could not load it from the Hugging Face hub"),
    (dict(calibration_prompts="a red shoe"), "calibration prompts apply to text-to-image models"),
    (dict(sparsity=2), r"sparsity must be a number from 0 to 0\.95, got 2"),
    (dict(sparsity="nan"), r"sparsity must be a number from 0 to 0\.95, got 'nan'"),
    (dict(sampler="euler"), r"euler is not in the list of choices: \['ddim', 'dpm-solver\+\+', 'ddpm'\]"),
])
def test_bad_fields_are_short_errors_through_the_api(client, change, message):
    with pytest.raises(Exception, match=message) as caught:
        client.predict(*dict(QUICK_RUN, **change).values(), api_name="/run_prune")
    assert len(str(caught.value)) < 400


def test_a_file_path_not_uploaded_is_a_field_error(live_app):
    """A server path given as a file (raw HTTP API: gradio_client would upload its own local file)
    is refused by gradio before any handler runs; the answer says which field and why."""
    import json
    import urllib.request

    for path in ("/etc/shadow.png", "/nonexistent/x.png"):
        files = [{"path": path, "meta": {"_type": "gradio.FileData"}}]
        data = list(dict(QUICK_RUN, recovery_data="my images (upload)", recovery_steps=2, recovery_files=files).values())
        request = urllib.request.Request(f"{live_app}gradio_api/call/run_prune", json.dumps({"data": data}).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            event_id = json.loads(response.read())["event_id"]
        with urllib.request.urlopen(f"{live_app}gradio_api/call/run_prune/{event_id}", timeout=120) as response:
            stream = response.read().decode()
        assert "event: error" in stream, stream
        assert "your recovery images: only files uploaded to this app are accepted" in stream, stream
        assert path not in stream and len(stream) < 600


def test_server_paths_all_read_the_same(client):
    messages = set()
    for path in ("/etc/shadow", "/root", "/nonexistent/x"):
        with pytest.raises(Exception) as caught:
            client.predict(*dict(QUICK_RUN, source=path).values(), api_name="/run_prune")
        messages.add(str(caught.value).replace(repr(path), "PATH"))
    assert len(messages) == 1, messages


def test_the_api_lists_each_action_once_and_keeps_serving(client):
    named = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    assert named == {"/run_prune", "/run_compare", "/dense_preview", "/cancel_run", "/calibration_estimate",
                     "/preview_schedule", "/first_screen", "/recovery_estimate"}
    curve = client.predict("log-decrease", 0.05, "1,1,1,1", 25, 0.8, 1.2, 10, "0:1", api_name="/preview_schedule")
    assert curve is not None


QUICK_COMPARE = dict(source="", criteria=["random"], granularity="channel", sparsities="0.5", num_samples=4, steps=2,
                     seed=0, quality="KID", time_latency=False, recovery_steps=0, recovery_lr=2e-4, recovery_batch=8,
                     distill=False, recovery_data="shipped training images", recovery_files=None)


@pytest.mark.parametrize("change, message", [
    (dict(granularity="head"), "sparsity 0.5 cannot be reached with granularity 'head' on this model"),
    (dict(time_latency="x"), "time the latency must be true or false"),
])
def test_compare_refuses_before_any_work_through_the_api(client, change, message):
    with pytest.raises(Exception, match=message) as caught:
        client.predict(*dict(QUICK_COMPARE, **change).values(), api_name="/run_compare")
    assert len(str(caught.value)) < 400
