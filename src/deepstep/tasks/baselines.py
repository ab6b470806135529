"""Classical forecasts to measure a network against, on the same origins and horizon:
naive (the last value), seasonal naive (the value one season back) and ARIMA / SARIMA
(statsmodels; orders given, or chosen by AIC over a small grid on the data before the test span).

Every function takes the target in its own units, `y` (T,), and forecast origins `t` (the first
predicted row), and returns forecasts (N, horizon) that use only y[:t].
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from deepstep.errors import DeepstepError

# ARIMA is fitted on at most this many of the latest steps before the test span: the state-space
# filter costs O(steps) a fit, and a few thousand steps pin the parameters of these small models.
ARIMA_MAX_STEPS = 2000
ORDER_GRID = list(itertools.product(range(3), range(2), range(3)))  # (p, d, q)
SEASONAL_GRID = [(0, 1, 1), (1, 1, 0), (1, 1, 1)]  # (P, D, Q) with the season's period


def naive(y: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
    return np.repeat(y[origins - 1][:, None], horizon, axis=1)


def seasonal_naive(y: np.ndarray, origins: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """y[t + h - season * (h // season + 1)]: the same point of the last season that is known at t."""
    h = np.arange(horizon)
    back = season * (h // season + 1)
    index = origins[:, None] + h[None, :] - back[None, :]
    if index.min() < 0:
        raise DeepstepError(
            f"seasonal naive needs {season} steps of history before the first forecast, which has "
            f"{int(origins.min())}: give a shorter --season, or leave seasonal_naive out of --baselines"
        )
    return y[index]


@dataclass
class ArimaChoice:
    order: tuple[int, int, int]
    seasonal_order: tuple[int, int, int, int]
    aic: float
    tried: int

    def describe(self) -> str:
        name = "SARIMA" if self.seasonal_order[3] else "ARIMA"
        seasonal = f"{self.seasonal_order[:3]}{self.seasonal_order[3]}" if self.seasonal_order[3] else ""
        return f"{name}{self.order}{seasonal}"


def fit_arima(y: np.ndarray, order, seasonal_order):
    """ARIMA(order, seasonal_order) fitted to y by maximum likelihood. A differenced model is
    fitted to the differenced series (SARIMAX's simple differencing): its filter carries no
    differencing states (26 instead of 50 for a season of 24), so the fit runs 3-4x faster, to the
    same parameters and AIC as ARIMA's fit on the levels (tested); `arima_forecasts` integrates its
    forecasts back to levels."""
    from statsmodels.tsa.arima.model import ARIMA
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on grid points that lose anyway
        if not (order[1] or seasonal_order[1]):
            return ARIMA(y, order=order, seasonal_order=seasonal_order).fit()  # with its constant
        model = SARIMAX(y, order=order, seasonal_order=seasonal_order, simple_differencing=True)
        return model.fit(disp=False)


def differencing(order, seasonal_order) -> np.ndarray:
    """(1 - B)^d (1 - B^s)^D as the coefficients of B^0, B^1, ..., B^(d + sD)."""
    poly = np.ones(1)
    for _ in range(order[1]):
        poly = np.convolve(poly, [1.0, -1.0])
    for _ in range(seasonal_order[1]):
        poly = np.convolve(poly, np.r_[1.0, np.zeros(seasonal_order[3] - 1), -1.0])
    return poly


def choose_arima(
    y_fit: np.ndarray,
    season: int,
    order: tuple[int, int, int] | None = None,
    seasonal_order: tuple[int, int, int] | None = None,
    progress: bool = False,
):
    """The ARIMA / SARIMA fitted to `y_fit`: the given orders, or the lowest AIC over the grid
    (a progress bar on stderr with `progress`: with a season of 24 the grid takes about a minute).
    Returns (fitted results, ArimaChoice)."""
    from tqdm import tqdm

    y_fit = y_fit[-ARIMA_MAX_STEPS:]
    seasonal = season > 1 and len(y_fit) >= 3 * season
    orders = [order] if order else ORDER_GRID if not seasonal else list(itertools.product(range(2), range(2), range(2)))
    if seasonal_order is not None:
        seasonals = [(*seasonal_order, season if season > 1 else 0)]
    else:
        seasonals = [(*s, season) for s in SEASONAL_GRID] if seasonal else [(0, 0, 0, 0)]
    best, best_choice, tried = None, None, 0
    candidates = list(itertools.product(orders, seasonals))
    what = f"choosing the {'SARIMA' if seasonal else 'ARIMA'} orders by AIC on {len(y_fit):,} steps"
    for o, s in tqdm(candidates, desc=what, unit="fit", leave=False, disable=not progress):
        tried += 1
        try:
            result = fit_arima(y_fit, o, s)
        except (ValueError, np.linalg.LinAlgError):
            continue
        if np.isfinite(result.aic) and (best is None or result.aic < best.aic):
            best, best_choice = result, ArimaChoice(tuple(o), tuple(s), float(result.aic), 0)
    if best is None:
        raise DeepstepError("no ARIMA order could be fitted to this series; give --order p,d,q")
    best_choice.tried = tried
    return best, best_choice


def arima_forecasts(result, y: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
    """Forecasts from each origin with the fitted parameters, filtered over all the data before it.

    One Kalman filter pass over y (differenced, for a differenced model), up to the last forecast
    step, gives the state each origin starts from, a_t, predicted from y[:t] alone (the filter is
    causal); the forecasts follow the state equation, a <- T a + c, w = Z a + d, and a differenced
    model's w are summed back to levels with the known values before t. These are the numbers of
    statsmodels' `ARIMA(...).apply(y[:t]).forecast(horizon)` (tested), in one pass instead of one
    an origin (a year of hourly origins on a 2-core CPU: 11 minutes -> a few seconds)."""
    stop = int(origins.max()) + horizon if len(origins) else 0
    if stop > len(y):
        raise ValueError(f"forecasts up to step {stop} of a series of {len(y)}")
    from statsmodels.tsa.statespace import kalman_filter as kf

    # Only the predicted states are kept: `result.apply` would also run the smoother and keep every
    # step's covariances (3.1 GB and twice the time for a year of hourly steps).
    memory = (
        kf.MEMORY_NO_FORECAST
        | kf.MEMORY_NO_PREDICTED_COV
        | kf.MEMORY_NO_FILTERED
        | kf.MEMORY_NO_GAIN
        | kf.MEMORY_NO_SMOOTHING
        | kf.MEMORY_NO_STD_FORECAST
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        applied = result.model.clone(y[:stop]).filter(result.params, conserve_memory=memory)
    delta = differencing(applied.model.order, applied.model.seasonal_order)
    lost = stop - applied.model.nobs  # the steps differencing used up: w[k] is y's step k + lost
    if applied.model.nobs and lost not in (0, len(delta) - 1):
        raise ValueError(f"an ARIMA filtered on {applied.model.nobs} of {stop} steps")
    if len(origins) and origins.min() < lost:
        raise DeepstepError(f"this ARIMA's differencing needs {lost} steps of history before the first forecast")
    ssm = applied.model.ssm
    design, transition = ssm["design"], ssm["transition"]  # (1, states), (states, states): ARIMA's do not vary
    # The intercepts are constant, or one a step (statsmodels puts ARIMA's constant there, as exog).
    steps = applied.model.nobs
    obs_intercept = np.broadcast_to(ssm["obs_intercept"][0], (steps,))
    state_intercept = np.broadcast_to(ssm["state_intercept"].reshape(len(transition), -1), (len(transition), steps))
    at = origins - lost
    state = applied.filter_results.predicted_state[:, at].T  # (N, states): a_t from y[:t]
    out = np.empty((len(origins), lost + horizon))
    for step in range(horizon):
        out[:, lost + step] = state @ design[0] + obs_intercept[at + step]
        state = state @ transition.T + state_intercept[:, at + step].T
    if lost:  # y[k] = w[k] - delta_1 y[k - 1] - ... - delta_lost y[k - lost], from the known y before t
        out[:, :lost] = y[origins[:, None] - lost + np.arange(lost)]
        for step in range(horizon):
            out[:, lost + step] -= out[:, step : lost + step] @ delta[:0:-1]
    return out[:, lost:]


Baseline = Callable[[np.ndarray, np.ndarray, int], np.ndarray]
NAMES = ("naive", "seasonal_naive", "sarima")


def run_baselines(
    y: np.ndarray,
    fit_end: int,
    origins: np.ndarray,
    horizon: int,
    season: int,
    *,
    names: tuple[str, ...] = NAMES,
    order: tuple[int, int, int] | None = None,
    seasonal_order: tuple[int, int, int] | None = None,
    progress: bool = False,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Forecasts of each baseline at `origins`; ARIMA is fitted on y[:fit_end] (before the test span).
    Returns ({name: (N, horizon)}, {name: what was used}); seasonal naive is left out without a season."""
    forecasts: dict[str, np.ndarray] = {}
    notes: dict[str, Any] = {}
    if "naive" in names:
        forecasts["naive"] = naive(y, origins, horizon)
        notes["naive"] = "the last observed value"
    if "seasonal_naive" in names:
        if season > 1:
            forecasts["seasonal_naive"] = seasonal_naive(y, origins, horizon, season)
            notes["seasonal_naive"] = f"the value {season} steps back"
        else:
            notes["seasonal_naive"] = "skipped: no season (give --season N)"
    if "sarima" in names:
        result, choice = choose_arima(y[:fit_end], season, order, seasonal_order, progress)
        forecasts["sarima"] = arima_forecasts(result, y, origins, horizon)
        notes["sarima"] = {
            "model": choice.describe(),
            "order": list(choice.order),
            "seasonal_order": list(choice.seasonal_order),
            "aic": choice.aic,
            "orders_tried": choice.tried,
            "fitted_on_steps": min(fit_end, ARIMA_MAX_STEPS),
        }
    return forecasts, notes
