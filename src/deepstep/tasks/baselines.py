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

# ARIMA fits on at most this many of the latest steps before each origin: the state-space filter
# costs O(steps) per fit, and a few thousand steps pin the parameters of these small models.
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
        raise DeepstepError(f"seasonal naive needs {season} steps of history before the first forecast")
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


def _fit(y: np.ndarray, order, seasonal_order):
    from statsmodels.tsa.arima.model import ARIMA

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on grid points that lose anyway
        return ARIMA(y, order=order, seasonal_order=seasonal_order).fit()


def choose_arima(
    y_fit: np.ndarray,
    season: int,
    order: tuple[int, int, int] | None = None,
    seasonal_order: tuple[int, int, int] | None = None,
    progress: bool = False,
):
    """The ARIMA / SARIMA fitted to `y_fit`: the given orders, or the lowest AIC over the grid
    (a progress bar on stderr with `progress`: with a season of 24 the grid takes minutes).
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
            result = _fit(y_fit, o, s)
        except (ValueError, np.linalg.LinAlgError):
            continue
        if np.isfinite(result.aic) and (best is None or result.aic < best.aic):
            best, best_choice = result, ArimaChoice(tuple(o), tuple(s), float(result.aic), 0)
    if best is None:
        raise DeepstepError("no ARIMA order could be fitted to this series; give --order p,d,q")
    best_choice.tried = tried
    return best, best_choice


def arima_forecasts(
    result, y: np.ndarray, origins: np.ndarray, horizon: int, progress: bool = False, name: str = "ARIMA"
) -> np.ndarray:
    """Forecasts from each origin with the fitted parameters, filtered over the data before it."""
    from tqdm import tqdm

    out = np.empty((len(origins), horizon))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bar = tqdm(origins, desc=f"{name} forecasts", unit="origin", leave=False, disable=not progress)
        for i, t in enumerate(bar):
            history = y[max(0, t - ARIMA_MAX_STEPS) : t]
            out[i] = result.apply(history).forecast(horizon)
    return out


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
        forecasts["sarima"] = arima_forecasts(result, y, origins, horizon, progress, choice.describe())
        notes["sarima"] = {
            "model": choice.describe(),
            "order": list(choice.order),
            "seasonal_order": list(choice.seasonal_order),
            "aic": choice.aic,
            "orders_tried": choice.tried,
            "fitted_on_steps": min(fit_end, ARIMA_MAX_STEPS),
        }
    return forecasts, notes
