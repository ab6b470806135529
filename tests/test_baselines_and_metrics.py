"""Baselines and metrics against values computed by hand."""

import warnings

import numpy as np
import pytest

from deepstep.tasks.baselines import arima_forecasts, choose_arima, differencing, fit_arima, naive, seasonal_naive
from deepstep.tasks.metrics import (
    classification_metrics,
    forecast_metrics,
    mase_scale,
    metric_notes,
    roc_auc,
    roc_curve,
    save_roc,
)


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


def test_the_roc_curve_steps_through_each_distinct_score_and_its_area_is_the_auc(tmp_path):
    fpr, tpr = roc_curve(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0]))
    assert fpr.tolist() == [0, 0, 0.5, 0.5, 1] and tpr.tolist() == [0, 0.5, 0.5, 1, 1]
    fpr, tpr = roc_curve(np.array([0.5, 0.5]), np.array([1, 0]))  # a tie: one threshold, a straight run
    assert fpr.tolist() == [0, 1] and tpr.tolist() == [0, 1]
    rng = np.random.default_rng(0)
    scores, positive = rng.integers(0, 20, 500) / 20, rng.random(500) < 0.4  # many ties
    fpr, tpr = roc_curve(scores + positive * 0.1, positive)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(roc_auc(scores + positive * 0.1, positive), abs=1e-12)
    probs = np.array([[0.7, 0.3], [0.4, 0.6], [0.2, 0.8], [0.9, 0.1]])
    labels = np.array([0, 0, 1, 1])
    files = save_roc(tmp_path, "test", probs, labels, ["cat", "dog"], roc_auc(probs[:, 1], labels == 1))
    assert files == {"roc_png": str(tmp_path / "roc_test.png")} and (tmp_path / "roc_test.png").stat().st_size > 0
    one = np.array([1, 1, 1, 1])
    assert save_roc(tmp_path, "val", probs, one, ["cat", "dog"], roc_auc(probs[:, 1], one == 1)) == {}  # one class
    three = np.full((4, 3), 1 / 3)
    no_auc = classification_metrics(three, np.array([0, 1, 2, 1]), ["a", "b", "c"]).get("roc_auc")
    assert save_roc(tmp_path, "val", three, np.array([0, 1, 2, 1]), ["a", "b", "c"], no_auc) == {}


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


@pytest.mark.parametrize(
    "order, seasonal_order",
    [((1, 0, 1), (0, 0, 0, 0)), ((2, 1, 1), (0, 0, 0, 0)), ((1, 0, 1), (1, 1, 1, 12))],
    ids=["constant", "differenced", "seasonal"],
)
def test_arima_forecasts_from_one_filter_pass_equal_statsmodels_forecast_from_each_origin(order, seasonal_order):
    from statsmodels.tsa.arima.model import ARIMA

    rng = np.random.default_rng(0)
    t = np.arange(240)
    y = 20 + 0.05 * t + 3 * np.sin(2 * np.pi * t / 12) + np.cumsum(rng.normal(0, 0.5, 240)) + rng.normal(0, 0.3, 240)
    fitted = fit_arima(y[:180], order, seasonal_order)  # a differenced model: fitted on the differences
    origins = np.array([180, 185, 200, 233])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # statsmodels' own, on the levels: filter the data before each origin, then forecast
        levels = ARIMA(y[:180], order=order, seasonal_order=seasonal_order).filter(fitted.params)
        expected = np.stack([levels.apply(y[:t]).forecast(7) for t in origins])
    for result in (fitted, levels):
        np.testing.assert_allclose(arima_forecasts(result, y, origins, horizon=7), expected, rtol=1e-6)
    # and it reads nothing at or after the origin
    changed = y.copy()
    changed[origins[0] :] += 100
    np.testing.assert_allclose(arima_forecasts(fitted, changed, origins[:1], horizon=7), expected[:1], rtol=1e-6)


def test_a_differenced_arima_fitted_on_the_differences_matches_statsmodels_own_fit():
    from statsmodels.tsa.arima.model import ARIMA

    rng = np.random.default_rng(1)
    t = np.arange(300)
    y = 5 * np.sin(2 * np.pi * t / 12) + np.cumsum(rng.normal(0, 1, 300))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        own = ARIMA(y, order=(1, 1, 0), seasonal_order=(0, 1, 1, 12)).fit()
    ours = fit_arima(y, (1, 1, 0), (0, 1, 1, 12))
    assert ours.model.param_names == own.model.param_names
    np.testing.assert_allclose(ours.params, own.params, rtol=0.05, atol=0.02)
    assert ours.aic == pytest.approx(own.aic, rel=1e-3)


def test_differencing_is_the_product_of_the_plain_and_seasonal_differences():
    # (1 - B)(1 - B^4) = 1 - B - B^4 + B^5
    assert differencing((0, 1, 0), (0, 1, 0, 4)).tolist() == [1, -1, 0, 0, -1, 1]
    assert differencing((0, 2, 0), (0, 0, 0, 0)).tolist() == [1, -2, 1]
