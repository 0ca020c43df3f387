"""PruneSpec: frozen, validated, JSON round trip, presets."""
import dataclasses

import pytest

from core.criteria import CRITERIA
from core.granularities import GRANULARITIES
from core.spec import PRESETS, PruneSpec


def test_registries_list_the_methods():
    assert {"random", "magnitude", "taylor", "nici", "l1"} <= set(CRITERIA)
    assert set(GRANULARITIES) == {"unstructured", "N:M", "channel", "head", "ffn", "block"}
    assert CRITERIA["taylor"].default_schedule == "threshold"
    assert CRITERIA["nici"].default_schedule == "interval"


def test_defaults_resolved_and_frozen():
    spec = PruneSpec(criterion="taylor", granularity="channel", sparsity=0.44)
    assert spec.schedule == "threshold" and spec.calibration_batches >= 1 and spec.calibration_batch_size >= 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.sparsity = 0.1
    assert PruneSpec(criterion="magnitude").schedule is None


@pytest.mark.parametrize("spec", list(PRESETS.values()) + [
    PruneSpec(criterion="nici", schedule="custom", schedule_params={"timesteps": [[3, 1.0], [7, 0.5]]}),
    PruneSpec(criterion="l1", criterion_params={"alpha": 0.5}, schedule="log-decrease", schedule_params={"num_steps": 5}),
    PruneSpec(criterion="magnitude", granularity="channel", sparsity=None, channel_ratio=0.3),
])
def test_json_round_trip(spec):
    assert PruneSpec.from_json(spec.to_json()) == spec
    assert PruneSpec.from_json(spec.to_json()).to_json() == spec.to_json()


def test_nm_implies_sparsity():
    assert PruneSpec(granularity="2:4", sparsity=None).sparsity == 0.5
    assert PruneSpec(granularity="4:8", sparsity=0.5).nm_pattern == (4, 8)


@pytest.mark.parametrize("kwargs, field", [
    (dict(sparsity=0.96), "sparsity"),
    (dict(sparsity=-0.1), "sparsity"),
    (dict(sparsity=float("nan")), "sparsity"),
    (dict(criterion="obs2"), "criterion"),
    (dict(granularity="blocks"), "granularity"),
    (dict(granularity="4:4", sparsity=None), "N:M"),
    (dict(granularity="N:M", sparsity=None), "granularity"),
    (dict(granularity="2:4", sparsity=0.3), "sparsity"),
    (dict(criterion="taylor", schedule="cosine"), "schedule"),
    (dict(criterion="magnitude", schedule="uniform"), "schedule"),
    (dict(criterion="nici", schedule="custom", schedule_params={"timesteps": []}), "custom"),
    (dict(criterion="nici", schedule="custom", schedule_params={"timesteps": [[5, 0.0]]}), "custom"),
    (dict(granularity="channel", sparsity=None, channel_ratio=1.0), "channel_ratio"),
    (dict(granularity="unstructured", sparsity=None, channel_ratio=0.3), "channel_ratio"),
    (dict(granularity="channel", sparsity=0.3, channel_ratio=0.3), "channel_ratio"),
    (dict(criterion="magnitude", criterion_params={"p": 3}), "p"),
    (dict(criterion="l1", criterion_params={"gamma": 1}), "criterion_params"),
    (dict(calibration_data="/no/such/folder"), "calibration_data"),
    (dict(criterion="taylor", calibration_batches=0), "calibration_batches"),
    (dict(seed=-1), "seed"),
    (dict(device="tpu"), "device"),
])
def test_bad_input_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        PruneSpec(**kwargs)


def test_from_json_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown"):
        PruneSpec.from_dict({"criterion": "magnitude", "ratio": 0.3})


def test_papers_calibration_preset():
    spec = PRESETS["nici-paper"]
    assert (spec.criterion, spec.schedule, spec.calibration_batches, spec.calibration_batch_size) == ("nici", "interval", 10, 128)


@pytest.mark.parametrize("fields, field", [
    (dict(sparsity=10**400), "sparsity"),  # an int too large for a float
    (dict(channel_ratio=10**400, granularity="channel", sparsity=None), "channel_ratio"),
    (dict(criterion=["magnitude"]), "criterion"),
    (dict(criterion="taylor", schedule=["threshold"]), "schedule"),
    (dict(granularity="2:4\n", sparsity=None), "granularity"),
    (dict(granularity="\uff12:\uff14", sparsity=None), "granularity"),  # full-width digits
    (dict(granularity=" 2:4", sparsity=None), "granularity"),
    (dict(granularity="02:04", sparsity=None), "granularity"),
    (dict(device="cpu\n"), "device"),
    (dict(criterion="taylor", calibration_data="~nonexistentuser/x"), "calibration_data"),
    (dict(criterion="taylor", calibration_data="x" * 5000), "calibration_data"),
    (dict(criterion="magnitude", criterion_params={"p": [[[[[[[[[[1]]]]]]]]]]}), "criterion_params"),
])
def test_loose_and_hostile_values_are_refused_naming_the_field(fields, field):
    with pytest.raises(ValueError) as caught:
        PruneSpec(**fields)
    message = str(caught.value)
    assert message.startswith(field) and "\n" not in message and len(message) < 400, message


def test_loose_granularity_is_refused_not_normalised():
    with pytest.raises(ValueError, match="refused, not normalised"):
        PruneSpec(granularity="2:4\n", sparsity=None)
    assert PruneSpec(granularity="2:4", sparsity=None).granularity == "2:4"


@pytest.mark.parametrize("text", ["[" * 100_000, '{"criterion": "magnitude", "criterion_params": {"p": '
                                  + "[" * 5000 + "]" * 5000 + "}}"])
def test_from_json_refuses_deep_nesting_with_a_value_error(text):
    with pytest.raises(ValueError, match="nests lists or objects"):
        PruneSpec.from_json(text)


def test_from_dict_refuses_deep_nesting_before_freezing_it():
    deep = 1
    for _ in range(10_000):  # deeper than Python's recursion limit
        deep = {"a": deep}
    with pytest.raises(ValueError, match="criterion_params nests"):
        PruneSpec.from_dict({"criterion_params": deep})
    with pytest.raises(ValueError, match="must be given as an object"):
        PruneSpec.from_dict(["criterion", "magnitude"])
