"""Timestep schedules match their definitions (docs/methods.md) on known values."""
import math

import pytest

from core.schedules import SCHEDULES, check_schedule_params


def resolve(name, **params):
    return SCHEDULES[name].resolve(1000, params)


def test_registry_names():
    assert set(SCHEDULES) == {
        "uniform", "threshold", "interval", "log-decrease", "linear-decrease", "log-increase",
        "linear-increase", "custom",
    }


def test_uniform_evenly_spaced_weight_one():
    assert resolve("uniform", num_timesteps=4) == [(0, 1.0), (250, 1.0), (500, 1.0), (750, 1.0)]


def test_interval_235_timesteps_with_nici_strides():
    plan = resolve("interval")
    timesteps = [t for t, _ in plan]
    assert len(plan) == 235
    assert timesteps[:3] == [0, 2, 4] and timesteps[-1] == 990
    assert all(w == 1.0 for _, w in plan)
    strides = {b - a for a, b in zip(timesteps, timesteps[1:]) if a >= 750}
    assert strides == {16}
    assert timesteps[125] == 250 and timesteps[126] == 254  # stride 4 from t = 250
    weighted = resolve("interval", interval_weights=(4, 3, 2, 1))
    assert weighted[0][1] == 4.0 and weighted[-1][1] == 1.0


def test_log_decrease_endpoints_and_formula():
    plan = resolve("log-decrease", num_steps=10)
    assert plan[0] == (999, pytest.approx(1.2)) and plan[-1] == (0, pytest.approx(0.8))
    # k-th sampling step (0 = noisiest) gets w_min + (w_max - w_min) ln(1 + K-1-k) / ln K
    k = 3
    assert plan[k][1] == pytest.approx(0.8 + 0.4 * math.log(1 + 9 - k) / math.log(10))
    weights = [w for _, w in plan]
    assert weights == sorted(weights, reverse=True)


def test_increase_and_linear_variants():
    assert resolve("log-increase", num_steps=10)[0][1] == pytest.approx(0.8)
    assert resolve("log-increase", num_steps=10)[-1][1] == pytest.approx(1.2)
    linear = resolve("linear-decrease", num_steps=5)
    assert [w for _, w in linear] == pytest.approx([1.2, 1.1, 1.0, 0.9, 0.8])
    assert [w for _, w in resolve("linear-increase", num_steps=5)] == pytest.approx([0.8, 0.9, 1.0, 1.1, 1.2])
    assert [t for t, _ in linear] == [999, 749, 500, 250, 0]


def test_threshold_stops_below_fraction_of_max_loss():
    losses = {0: 1.0, 1: 2.0, 2: 0.5, 3: 0.09, 4: 0.01}
    plan = SCHEDULES["threshold"].resolve(1000, {"threshold": 0.05}, loss_at=lambda t: losses.get(t, 0.0))
    # L_max = 2.0; the first t with L_t < 0.1 is t = 3, which is visited (weight 1) and ends the walk
    assert plan == [(0, 1.0), (1, 1.0), (2, 1.0), (3, 1.0)]
    capped = SCHEDULES["threshold"].resolve(1000, {"max_timesteps": 2}, loss_at=lambda t: 1.0)
    assert capped == [(0, 1.0), (1, 1.0)]


def test_custom_schedule_validated():
    assert resolve("custom", timesteps=((5, 2.0), (10, 0))) == [(5, 2.0), (10, 0.0)]
    with pytest.raises(ValueError, match="custom"):  # t must lie in [0, T): checked once T is known
        resolve("custom", timesteps=((1000, 1.0),))
    for bad in ((), ((-1, 1.0),), ((5, -1.0),), ((5, 0.0),), ((1.5, 1.0),), ((1, 2, 3),)):
        with pytest.raises(ValueError, match="custom"):
            check_schedule_params("custom", {"timesteps": bad})


def test_unknown_schedule_and_params():
    with pytest.raises(ValueError, match="schedule must be one of"):
        check_schedule_params("cosine", {})
    with pytest.raises(ValueError, match="num_timesteps"):
        check_schedule_params("uniform", {"num_timesteps": 0})
    with pytest.raises(ValueError, match="accepts"):
        check_schedule_params("uniform", {"steps": 3})
    with pytest.raises(ValueError, match="threshold"):
        check_schedule_params("threshold", {"threshold": 1.5})


def test_uniform_refuses_more_timesteps_than_the_model_has():
    with pytest.raises(ValueError, match="num_timesteps of schedule 'uniform' must be at most 1000"):
        check_schedule_params("uniform", {"num_timesteps": 10**12})
    with pytest.raises(ValueError, match="at most 100 "):
        SCHEDULES["uniform"].resolve(100, {"num_timesteps": 101})
    assert len(SCHEDULES["uniform"].resolve(100, {"num_timesteps": 100})) == 100


def test_schedule_checked_against_the_models_timesteps():
    check_schedule_params("custom", {"timesteps": [[5000, 1.0]]})  # the form alone, without a model
    with pytest.raises(ValueError, match=r"t must be an integer in \[0, 1000\), got 5000"):
        check_schedule_params("custom", {"timesteps": [[5000, 1.0]]}, num_train_timesteps=1000)
    with pytest.raises(ValueError, match="num_steps .* must be at most 50"):
        check_schedule_params("log-decrease", {"num_steps": 60}, num_train_timesteps=50)
    check_schedule_params("log-decrease", {"num_steps": 25}, num_train_timesteps=50)
