"""Baselines and metrics against values computed by hand."""

import numpy as np
import pytest

from deepstep.tasks.baselines import choose_arima, naive, seasonal_naive
from deepstep.tasks.metrics import classification_metrics, forecast_metrics, mase_scale, metric_notes, roc_auc


def test_naive_repeats_the_last_value_before_each_origin():
    y = np.array([1.0, 2, 3, 4, 5, 6])
    assert naive(y, np.array([3, 5]), 2).tolist() == [[3, 3], [5, 5]]


def test_seasonal_naive_takes_the_same_point_one_season_back_even_past_one_season():
    y = np.arange(10, dtype=float)
    # season 3, origin 6: steps 6, 7, 8, 9 -> rows 3, 4, 5, then 3 again (the last known season)
    assert seasonal_naive(y, np.array([6]), 4, season=3).tolist() == [[3, 4, 5, 3]]


def test_forecast_metrics_match_a_hand_computation():
    truth, pred = np.array([[100.0, 200.0]]), np.array([[110.0, 180.0]])
    m = forecast_metrics(truth, pred, scale=5.0)
    assert m["mae"] == 15 and m["rmse"] == pytest.approx(np.sqrt((100 + 400) / 2))
    assert m["mape"] == pytest.approx(100 * (0.1 + 0.1) / 2)
    assert m["smape"] == pytest.approx(100 * (20 / 210 + 40 / 380) / 2)
    assert m["mase"] == 3


def test_mase_scale_is_the_in_sample_seasonal_naive_error():
    y = np.array([1.0, 2, 4, 7, 11])
    assert mase_scale(y, 1) == pytest.approx(np.mean([1, 2, 3, 4]))
    assert mase_scale(y, 2) == pytest.approx(np.mean([3, 5, 7]))


def test_metrics_that_divide_by_zero_are_not_defined_and_the_notes_say_why():
    periodic = np.tile([1.0, 3, 2, 5], 6)  # the value 4 steps back is exact: MASE's unit is 0
    truth, pred = np.array([[0.0, 2.0]]), np.array([[1.0, 2.0]])
    m = forecast_metrics(truth, pred, mase_scale(periodic, 4))
    assert np.isnan(m["mase"]) and m["mape"] == 0  # the step whose true value is 0 is left out of MAPE
    assert metric_notes(truth, mase_scale(periodic, 4), 4) == [
        "MAPE leaves out the 1 step(s) whose true value is 0 (it divides by them)",
        "MASE n/a: the value 4 steps back forecasts the span before validation exactly, "
        "so MASE's unit (that forecast's error) is 0",
    ]
    assert metric_notes(np.zeros((2, 3)), mase_scale(periodic, 1), 1)[0].startswith("MAPE n/a: every true value is 0")
    assert metric_notes(np.ones(2), mase_scale(periodic, 1), 1) == []  # the last value is not exact: MASE is defined
    too_short = metric_notes(np.ones(2), mase_scale(np.ones(1), 1), 1)
    assert too_short == ["MASE n/a: the span before validation is too short to scale it"]


def test_arima_finds_an_autoregressive_process():
    rng = np.random.default_rng(0)
    y = np.zeros(400)
    for t in range(1, 400):
        y[t] = 0.8 * y[t - 1] + rng.normal()
    result, choice = choose_arima(y, season=0)
    assert choice.order[0] >= 1 and choice.order[1] == 0 and choice.tried == 18
    assert result.params[1] == pytest.approx(0.8, abs=0.15)  # ar.L1 after the constant


def test_roc_auc_counts_ordered_pairs_and_averages_ties():
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert roc_auc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5
    assert roc_auc(np.array([0.2, 0.3]), np.array([1, 1])) is None


def test_binary_classification_metrics_take_the_second_class_as_positive():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 1, 0])
    m = classification_metrics(probs, labels, ["-1", "1"])
    assert m["confusion_matrix"] == [[1, 1], [1, 1]] and m["accuracy"] == 0.5
    assert m["positive_class"] == "1" and m["precision"] == 0.5 and m["recall"] == 0.5 and m["f1"] == 0.5
    assert m["roc_auc"] == 0.75
