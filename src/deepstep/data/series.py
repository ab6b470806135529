"""Time series for forecasting: a CSV or a built-in series -> a regular, numeric table ->
chronological train / validation / test spans -> windows of `lookback` inputs and `horizon` targets.

The discipline that keeps the test span honest:
- the spans are consecutive: train, then validation, then test, in time order;
- a window belongs to the span that holds all of its targets, and its inputs lie before them,
  so no training window sees a validation or test value, as input or as target;
- the scaler is fitted on the train span only, and every reported number is scaled back.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepstep.errors import DeepstepError, did_you_mean, reason_of

TIME_NAMES = ("date", "time", "datetime", "timestamp", "month", "week", "day", "year", "period", "ds")


@dataclass
class Series:
    """A regular table of numeric columns: the target, then the model's other inputs."""

    name: str
    values: np.ndarray  # (T, F) float64; column 0 is the target
    columns: list[str]
    index: Any  # a pandas DatetimeIndex, or a RangeIndex of steps
    freq: str | None
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def target(self) -> str:
        return self.columns[0]

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(np.ascontiguousarray(self.values).tobytes()).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.values)


# ---- built-in series (shipped inside statsmodels, so offline) ----------------------------------


def _statsmodels_frame(name: str):
    import pandas as pd
    import statsmodels.api as sm

    data = getattr(sm.datasets, name).load_pandas().data
    if name == "co2":  # weekly, Saturdays, 1958-2001
        return data.rename_axis("date").reset_index()
    if name == "elnino":  # one row a year, one column a month -> one monthly series
        long = data.melt(id_vars="YEAR", var_name="month", value_name="temperature")
        months = {m: i for i, m in enumerate(data.columns[1:], start=1)}
        long["date"] = pd.to_datetime({"year": long["YEAR"].astype(int), "month": long["month"].map(months), "day": 1})
        return long.sort_values("date")[["date", "temperature"]].reset_index(drop=True)
    year = next(c for c in data.columns if c.lower() == "year")
    data = data.copy()
    data[year] = pd.to_datetime(data[year].astype(int).astype(str), format="%Y")
    return data


BUILTIN_SERIES: dict[str, tuple[str, str]] = {
    "co2": ("Mauna Loa CO2, weekly 1958-2001 (statsmodels; has missing weeks)", "co2"),
    "sunspots": ("yearly sunspot activity 1700-2008 (statsmodels)", "SUNACTIVITY"),
    "nile": ("yearly Nile flow at Aswan 1871-1970 (statsmodels)", "volume"),
    "elnino": ("monthly Pacific sea-surface temperature 1950-2010 (statsmodels)", "temperature"),
}


def is_series_spec(spec: str) -> bool:
    return spec in BUILTIN_SERIES or Path(spec).suffix.lower() in (".csv", ".tsv")


# ---- reading and cleaning ----------------------------------------------------------------------


def csv_dialect(path: Path) -> tuple[str, str, str | None, bool]:
    """(separator, decimal mark, thousands separator, one column?) of a CSV, from its first lines:
    a .tsv is tab-separated; a header split by ';' (or tabs) and no commas is read with that
    separator, and then with decimal commas if its numbers have them ("12,5"), as spreadsheets in
    much of Europe write them. Thousands are grouped by commas in quoted numbers of a comma-separated
    file ("1,234.5", as a spreadsheet exports a formatted cell), by points beside decimal commas."""
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            lines = list(itertools.islice(f, 20))
    except OSError:
        lines = []
    header = lines[0] if lines else ""
    if path.suffix.lower() == ".tsv":
        sep = "\t"
    else:
        sep = next((s for s in (";", "\t") if s in header and "," not in header), ",")
    decimal = "," if sep != "," and any(re.search(r"\d,\d", line) for line in lines[1:]) else "."
    grouped = r'"-?\d{1,3}(,\d{3})+(\.\d+)?"' if decimal == "." else r"(?<![\d.])\d{1,3}(\.\d{3})+(,\d+)?(?![\d.])"
    thousands = ("," if decimal == "." else ".") if any(re.search(grouped, line) for line in lines[1:]) else None
    if thousands == "," and sep != ",":
        thousands = None  # "1,234" beside semicolons is a decimal comma
    return sep, decimal, thousands, sep not in header


def _read_table(spec: str):
    """(the table, its name, how it was read when not plain UTF-8 commas: "';'-separated, with
    decimal commas", "Windows-1252 text (not UTF-8)")."""
    import pandas as pd

    if spec in BUILTIN_SERIES:
        return _statsmodels_frame(spec), spec, None
    path = Path(spec)
    if not path.is_file():
        what = "is a folder, not a CSV file" if path.is_dir() else "does not exist"
        raise DeepstepError(f"{spec} {what}; give a CSV file or a built-in series ({', '.join(BUILTIN_SERIES)})")
    sep, decimal, thousands, one_column = csv_dialect(path)
    try:
        path.read_bytes().decode("utf-8")
        encoding = "utf-8"
    except UnicodeDecodeError:  # Excel on Windows saves "CSV" in its code page: 'Temp\xe9rature'
        encoding = "cp1252"
    try:
        # index_col=False and the warning as an error: a row with more cells than the header is
        # refused, rather than read as a made-up index or cut short with a warning
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            # in a one-column file a blank line is an empty cell, a missing value: skipping it
            # would pull the later values one step earlier
            frame = pd.read_csv(
                path,
                sep=sep,
                decimal=decimal,
                thousands=thousands,
                encoding=encoding,
                skipinitialspace=True,
                index_col=False,
                skip_blank_lines=not one_column,
            )
    except pd.errors.ParserWarning:
        raise DeepstepError(f"{path}: some rows have more cells than the header has columns; fix those rows") from None
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as err:
        first = reason_of(err)
        raise DeepstepError(f"{path} is not a readable CSV: {first}") from None
    if one_column:
        filled = np.flatnonzero(frame.notna().any(axis=1).to_numpy())
        frame = frame.iloc[: filled[-1] + 1 if len(filled) else 0]  # blank lines at the end are no rows
    if frame.empty:
        raise DeepstepError(f"{path} has no rows")
    read_as = []
    if sep != "," and path.suffix.lower() != ".tsv":
        read_as.append(f"{'tab' if sep == chr(9) else repr(sep)}-separated")
    if decimal == ",":
        read_as.append("with decimal commas")
    if thousands:
        read_as.append(f"thousands grouped by {'commas' if thousands == ',' else 'points'}")
    if encoding != "utf-8":
        read_as.append("Windows-1252 text (not UTF-8)")
    return frame, path.stem, ", ".join(read_as) or None


def is_number(value: Any) -> bool:
    """True for what float() reads: 3, '2.5', ' -1e3 ', 'nan'."""
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _numbers_not_dates(frame, column) -> bool:
    """A column of plain numbers (step 0, 1, 2, ... or seconds) that pandas would read as
    nanoseconds after 1970; a whole-number `year` column is a date."""
    kind = frame[column].dtype.kind
    return kind in "iuf" and not (kind in "iu" and str(column).lower() == "year")


def _time_columns(frame, time: str | None, source: str) -> list[str]:
    """The columns that make the timestamp: given, or year/month/day[/hour], or the first date-like one."""
    if time:
        names = [c.strip() for c in time.split(",")]
        for name in names:
            if name not in frame.columns:
                raise DeepstepError(
                    f"{source}: --time column {name!r} not found{did_you_mean(name, map(str, frame.columns))}; "
                    f"columns: {', '.join(map(str, frame.columns))}"
                )
        if len(names) == 1 and _numbers_not_dates(frame, names[0]):
            raise DeepstepError(
                f"{source}: --time column {names[0]!r} holds numbers, not dates: leave --time out to take the "
                "rows in file order, one step each, or write the times as dates (2024-01-31 or 2024-01-31 13:00)"
            )
        return names
    lower = {str(c).lower(): c for c in frame.columns}
    if {"year", "month", "day"} <= set(lower):
        return [lower[k] for k in ("year", "month", "day", "hour") if k in lower]
    for column in frame.columns:
        dates = frame[column].dtype.kind == "M"
        if dates or (str(column).lower() in TIME_NAMES and not _numbers_not_dates(frame, column)):
            return [column]
    return []


def _one_date_format(texts) -> tuple[Any, str | None]:
    """(timestamps, the format used) for a column of date texts read with one format for every row,
    or (None, None) when no single format fits. Guessing row by row would read 02.01.2020 as
    February 1st and 13.01.2020 as January 13th in the same column, reordering the series.
    Where day-first and month-first both fit every row (no day above 12), the one whose times
    increase is taken, and on a tie day-first for '.'-dated files, month-first otherwise."""
    import pandas as pd
    from pandas.tseries.api import guess_datetime_format

    first = next((str(t) for t in texts if isinstance(t, str) and t.strip()), None)
    if first is None:
        return None, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas notes a guess that contradicts dayfirst
        guesses = [guess_datetime_format(first, dayfirst=dayfirst) for dayfirst in (False, True)]
    fits = {}
    for fmt in dict.fromkeys(g for g in guesses if g):
        if fmt.startswith("%Y") and fmt.find("%d") < fmt.find("%m"):
            continue  # year-day-month is nobody's way of writing dates
        with contextlib.suppress(ValueError, TypeError):  # this format does not fit every row
            fits[fmt] = pd.to_datetime(texts, format=fmt, errors="raise")
    if not fits:
        return None, None
    if len(fits) > 1:
        increasing = [fmt for fmt, stamps in fits.items() if pd.DatetimeIndex(stamps).is_monotonic_increasing]
        day_first = [fmt for fmt in fits if fmt.find("%d") < fmt.find("%m")]
        pick = (
            increasing
            if len(increasing) == 1
            else (day_first if "." in first else [f for f in fits if f not in day_first])
        )
        fits = {pick[0]: fits[pick[0]]}
    fmt, stamps = next(iter(fits.items()))
    return stamps, fmt


def _parse_time(frame, columns: list[str], source: str, report: dict[str, Any] | None = None):
    import pandas as pd

    try:
        if len(columns) > 1:
            parts = frame[columns].rename(columns=lambda c: str(c).lower())
            stamps = pd.to_datetime(parts, errors="raise")
        elif frame[columns[0]].dtype.kind in "iu" and str(columns[0]).lower() == "year":
            stamps = pd.to_datetime(frame[columns[0]].astype(str), format="%Y")
        else:
            column = frame[columns[0]]
            stamps, fmt = _one_date_format(column) if column.dtype.kind not in "iufbM" else (None, None)
            if stamps is None:  # several formats in one column, or not text: row by row
                stamps = pd.to_datetime(column, errors="coerce", format="mixed")
            elif report is not None and fmt.find("%d") < fmt.find("%m"):
                report["date_format"] = fmt
    except (ValueError, TypeError) as err:
        raise DeepstepError(
            f"{source}: the time column(s) {', '.join(map(str, columns))} are not dates: {err}"
        ) from None
    bad = np.flatnonzero(pd.isna(stamps))
    if len(bad):
        raise DeepstepError(
            f"{source}: {len(bad)} timestamp(s) in {', '.join(map(str, columns))} are missing or not dates "
            f"(first at {_place(frame.index[bad[0]])}: {frame[columns[0]].iloc[bad[0]]!r}); fix or remove those rows"
        )
    return pd.DatetimeIndex(stamps)


def _place(label: Any) -> str:
    """Where a cell is, for a message: its time, or its row as a spreadsheet numbers it (the header is row 1)."""
    return time_label(label) if hasattr(label, "normalize") else f"row {int(label) + 2}"


def _uneven_steps(index: Any) -> str:
    """Why the times have no frequency, for the log: the usual step and the first time it is broken
    (a daily series missing two days, say), or the range of the steps when no step is usual."""
    import pandas as pd

    steps = pd.Series(index[1:] - index[:-1])
    usual = usual_step(index)
    count = int((steps == usual).sum())
    if count < len(steps) / 2:
        return f"the times are not evenly spaced (steps from {_duration(steps.min())} to {_duration(steps.max())})"
    first = int(np.flatnonzero((steps != usual).to_numpy())[0])
    return (
        f"the times are not evenly spaced: {count} of {len(steps)} steps are {_duration(usual)}, "
        f"{len(steps) - count} {'is' if len(steps) - count == 1 else 'are'} not "
        f"(the first: {time_label(index[first])} to {time_label(index[first + 1])})"
    )


def usual_step(index: Any) -> Any:
    """The most common step between consecutive times (the smallest, on a tie)."""
    import pandas as pd

    return pd.Series(index[1:] - index[:-1]).mode()[0]


def _duration(step: Any) -> str:
    """A pandas Timedelta in words: 1 day, 6 hours, 90 seconds."""
    seconds = int(step.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds % size == 0 and seconds:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return str(step)


def _fill(frame, how: str, source: str, report: dict[str, Any]):
    """Missing values: an error unless --fill says what to do; reported either way."""
    missing = {str(c): int(n) for c, n in frame.isna().sum().items() if n}
    report["missing"] = missing
    if not missing:
        return frame
    if how == "none":
        column, count = next(iter(missing.items()))
        first = frame.index[frame[column].isna().to_numpy()][0]
        raise DeepstepError(
            f"{source}: {sum(missing.values())} missing value(s) ({column}: {count}, first at {_place(first)}); "
            "choose --fill interpolate, ffill or drop"
        )
    # interpolate: linear between the neighbours, by position (the index is regular). Leading gaps
    # have nothing before them to fill from, so interpolate and ffill drop them too.
    fills = {
        "drop": frame.dropna,
        "interpolate": lambda: frame.interpolate(method="linear", limit_area="inside").dropna(),
        "ffill": lambda: frame.ffill().dropna(),
    }
    filled = fills[how]()
    report["fill"] = {"method": how, "rows_before": len(frame), "rows_after": len(filled)}
    if filled.empty:
        raise DeepstepError(f"{source}: no rows are left after --fill {how}")
    return filled


def _counts_rows(column) -> bool:
    """An integer column that goes up by exactly 1 from row to row: a row number, not a measurement
    (pollution.csv's 'No'); it would tell the model only where in the file a window is."""
    if column.dtype.kind not in "iu" or len(column) < 3:
        return False
    steps = np.diff(column.to_numpy())
    return bool((steps == 1).all())


def read_columns(spec: str, time: str | None = None):
    """The table as it is, for looking at: (name, its numeric columns indexed by time where it has
    one, the names of the columns of text left out), gaps kept as NaN, a column that only numbers
    the rows left out quietly."""
    frame, name, _ = _read_table(spec)
    frame.columns = [str(c) for c in frame.columns]
    time_columns = [str(c) for c in _time_columns(frame, time, spec)]
    others = [c for c in frame.columns if c not in time_columns]
    numeric = [c for c in others if frame[c].dtype.kind in "iuf" and not _counts_rows(frame[c])]
    if not numeric:
        raise DeepstepError(f"{spec} has no numeric columns to show")
    table = frame[numeric]
    if time_columns:
        table.index = _parse_time(frame, time_columns, spec)
        table = table.sort_index()
    return name, table, [c for c in others if frame[c].dtype.kind not in "iuf"]


def load_series(
    spec: str,
    *,
    target: str | None,
    features: list[str] | None = None,
    time: str | None = None,
    fill: str = "none",
) -> Series:
    """Read a CSV (or built-in series) into a regular numeric table with the target first.

    Categorical feature columns are one-hot encoded; missing values need an explicit `fill`;
    duplicated or unparseable timestamps are errors; rows are put in time order.
    """
    import pandas as pd

    frame, name, dialect = _read_table(spec)
    source = spec
    report: dict[str, Any] = {"source": spec, "rows": len(frame)}
    if dialect:
        report["read_as"] = dialect
    if all(is_number(c) for c in frame.columns):  # 1,2 / 3,4: a file with no header row lost its first row
        report["numeric_header"] = [str(c) for c in frame.columns]
    time_columns = _time_columns(frame, time, source)
    if not time_columns:  # a column named like a time, of plain numbers: said in the log
        numbered = [str(c) for c in frame.columns if str(c).lower() in TIME_NAMES and _numbers_not_dates(frame, c)]
        if numbered:
            report["not_dates"] = numbered[0]
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    time_columns = [str(c) for c in time_columns]
    candidates = [c for c in columns if c not in time_columns]
    counters = [c for c in candidates if c != target and _counts_rows(frame[c])]
    if target is None:
        numeric = [c for c in candidates if frame[c].dtype.kind in "iuf"]
        numeric = [c for c in numeric if c not in counters] or numeric  # a row number is no target
        if len(numeric) != 1:
            headless = (
                "; its first row is all numbers: if it is data, add a header row" if "numeric_header" in report else ""
            )
            raise DeepstepError(
                f"{source}: say which column to forecast with --target (numeric columns: {', '.join(numeric) or 'none'})"
                + headless
            )
        target = numeric[0]
    if target not in candidates:
        raise DeepstepError(
            f"{source}: --target {target!r} is not a column{did_you_mean(target, candidates)}; columns: {', '.join(candidates)}"
        )
    if features is None or features == []:
        inputs = []
    elif features == ["all"]:
        inputs = [c for c in candidates if c != target and c not in counters]  # a named target stays
        if counters:
            report["left_out"] = {
                c: "numbers the rows (1, 2, 3, ...); name it in --features to use it" for c in counters
            }
    else:
        for f in features:
            if f not in candidates:
                raise DeepstepError(
                    f"{source}: --features column {f!r} not found{did_you_mean(f, candidates)}; columns: {', '.join(candidates)}"
                )
        inputs = [f for f in features if f != target]
    table = frame[[target, *inputs]].copy()
    if table[target].dtype.kind not in "iuf":
        converted = pd.to_numeric(table[target], errors="coerce")
        bad = np.flatnonzero((converted.isna() & table[target].notna()).to_numpy())
        if len(bad):
            raise DeepstepError(
                f"{source}: --target {target} holds non-numbers (first at {_place(table.index[bad[0]])}: {table[target].iloc[bad[0]]!r})"
            )
        table[target] = converted
    categorical = [c for c in inputs if table[c].dtype.kind not in "iufb"]
    if categorical:
        table = pd.get_dummies(table, columns=categorical, prefix_sep="=", dtype=float)
        report["one_hot"] = {c: sorted(str(v) for v in frame[c].dropna().unique()) for c in categorical}
    if time_columns:
        table.index = _parse_time(frame, time_columns, source, report)
        duplicated = table.index[table.index.duplicated()]
        if len(duplicated):
            raise DeepstepError(
                f"{source}: {len(duplicated)} duplicated timestamp(s) (first {_place(duplicated[0])}); "
                "aggregate or remove them so that each time appears once"
            )
        if not table.index.is_monotonic_increasing:
            table = table.sort_index()
            report["sorted"] = True
    table = table.astype(float)
    infinite = np.isinf(table.to_numpy())
    if infinite.any():
        row, column = np.argwhere(infinite)[0]
        raise DeepstepError(
            f"{source}: {int(infinite.sum())} infinite value(s) ({table.columns[column]} first at {_place(table.index[row])}); "
            "replace them with numbers or leave the cells empty and choose a --fill"
        )
    table = _fill(table, fill, source, report)
    freq = None
    if time_columns and len(table) >= 3:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pandas 3 announces infer_freq returning an offset
            freq = pd.infer_freq(table.index)
        freq = getattr(freq, "freqstr", freq)
        if freq is None:
            report["regular"] = False
            report["uneven"] = _uneven_steps(table.index)
    if not time_columns:
        table.index = pd.RangeIndex(len(table))
    report.update({"target": target, "inputs": list(table.columns[1:]), "freq": freq, "steps": len(table)})
    return Series(name, table.to_numpy(np.float64), list(table.columns), table.index, freq, report)


def season_of(freq: str | None) -> int:
    """The usual season of a frequency: 12 for monthly, 4 quarterly, 7 daily, 24 hourly, 52 weekly; else 0."""
    if not freq:
        return 0
    base = freq.split("-")[0].lstrip("0123456789").upper()
    table = {"MS": 12, "ME": 12, "M": 12, "QS": 4, "QE": 4, "Q": 4, "D": 7, "B": 5, "H": 24, "h": 24, "W": 52}
    return table.get(base, table.get(base.rstrip("S"), 0))


# ---- spans, windows, scaling -------------------------------------------------------------------


@dataclass(frozen=True)
class Spans:
    """Consecutive row ranges: train [0, val_start), validation [val_start, test_start), test [test_start, n)."""

    val_start: int
    test_start: int
    n: int

    def to_dict(self) -> dict[str, int]:
        return {
            "train": self.val_start,
            "val": self.test_start - self.val_start,
            "test": self.n - self.test_start,
            "val_start": self.val_start,
            "test_start": self.test_start,
        }


def _steps(size: float, n: int) -> int:
    return int(size) if size >= 1 else int(round(size * n))


def split_spans(n: int, *, test_size: float, val_size: float, lookback: int, horizon: int) -> Spans:
    """Chronological spans; sizes are step counts (>= 1) or fractions of the whole series."""
    n_test, n_val = _steps(test_size, n), _steps(val_size, n)
    test_start = n - n_test
    val_start = test_start - n_val
    if n_test == 0:  # as an image folder without test/ and --test-split 0: no run goes untested
        raise DeepstepError(
            f"--test-size {test_size:g} leaves no test span of the {n} steps: the test part is measured once, "
            f"at the end; give a fraction such as 0.2 or a number of steps >= --horizon {horizon}"
        )
    if n_test < horizon:
        raise DeepstepError(f"the test span ({n_test} steps) is shorter than --horizon {horizon}; raise --test-size")
    if n_val and n_val < horizon:
        raise DeepstepError(
            f"the validation span ({n_val} steps) is shorter than --horizon {horizon}; raise --val-size or use 0"
        )
    if val_start < lookback + horizon:
        raise DeepstepError(
            f"the series has {n} steps: after {n_test} for test and {n_val} for validation, the train span "
            f"({max(val_start, 0)} steps) is shorter than --lookback {lookback} + --horizon {horizon}; "
            "shorten the lookback or the test/validation sizes"
        )
    return Spans(val_start, test_start, n)


def origins(start: int, stop: int, *, lookback: int, horizon: int, stride: int) -> np.ndarray:
    """First target rows t of the windows whose targets [t, t + horizon) all lie in [start, stop)
    and whose inputs [t - lookback, t) lie in the series."""
    first = max(start, lookback)
    return np.arange(first, stop - horizon + 1, stride, dtype=np.int64)


def evaluation_origins(spans: Spans, *, lookback: int, horizon: int, backtest: bool) -> np.ndarray:
    """Forecast origins in the test span: every step (backtest), or blocks of `horizon` that cover it."""
    if backtest:
        return origins(spans.test_start, spans.n, lookback=lookback, horizon=horizon, stride=1)
    blocks = origins(spans.test_start, spans.n, lookback=lookback, horizon=horizon, stride=horizon)
    last = spans.n - horizon
    if len(blocks) and blocks[-1] != last:
        blocks = np.append(blocks, last)  # the tail, overlapping the block before it
    return blocks


def windows(values: np.ndarray, starts: np.ndarray, *, lookback: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (N, lookback, F) and the target column's next steps (N, horizon), by index arithmetic."""
    x_index = starts[:, None] + np.arange(-lookback, 0)[None, :]  # (N, lookback)
    y_index = starts[:, None] + np.arange(horizon)[None, :]  # (N, horizon)
    return values[x_index], values[y_index, 0]


@dataclass(frozen=True)
class Scaler:
    """Per-column standardisation fitted on the train span: (x - mean) / std."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray, columns: Sequence[str] | None = None) -> Scaler:
        with np.errstate(over="ignore", invalid="ignore"):
            mean, std = values.mean(axis=0), values.std(axis=0)
        bad = np.flatnonzero(~(np.isfinite(mean) & np.isfinite(std)))
        if len(bad):  # squares past 1.8e308: the scaled series would be all zeros, then nan
            column = columns[bad[0]] if columns is not None else f"column {bad[0]}"
            largest = np.abs(values[:, bad[0]]).max()
            raise DeepstepError(
                f"{column} holds values too large to standardise (up to {largest:.3g}); divide it by a power of ten"
            )
        return cls(mean, np.where(std > 0, std, 1.0))

    def transform(self, values: np.ndarray) -> np.ndarray:
        return (values - self.mean) / self.std

    def inverse_target(self, scaled: np.ndarray) -> np.ndarray:
        return scaled * self.std[0] + self.mean[0]

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, list[float]]) -> Scaler:
        return cls(np.asarray(d["mean"]), np.asarray(d["std"]))


def future_times(series: Series, horizon: int) -> list[Any]:
    """The times (or step numbers) of the `horizon` steps after the end of the series."""
    import pandas as pd

    if not isinstance(series.index, pd.DatetimeIndex):
        return list(range(len(series), len(series) + horizon))
    if series.freq:
        return list(pd.date_range(series.index[-1], periods=horizon + 1, freq=series.freq)[1:])
    # uneven times (a daily series missing a few days): go on by the usual step; future_note says so
    step = usual_step(series.index)
    return [series.index[-1] + k * step for k in range(1, horizon + 1)]


def future_note(series: Series) -> str | None:
    """Why the forecast's times are a guess, when they are: the data's own times are uneven."""
    import pandas as pd

    if series.freq or not isinstance(series.index, pd.DatetimeIndex):
        return None
    return f"the data's times are uneven, so the forecast's times go on by its usual step, {_duration(usual_step(series.index))}"


def future_index(series: Series, horizon: int) -> list[str]:
    """Labels of the `horizon` steps after the end of the series."""
    return time_labels(future_times(series, horizon))


def time_labels(times: Sequence[Any]) -> list[str]:
    """Labels of consecutive times: dates, or date and time for every one when any falls off
    midnight (an hourly forecast reads 00:00:00, 01:00:00, not a bare date first)."""
    if any(hasattr(t, "normalize") and t != t.normalize() for t in times):
        return [str(t) for t in times]
    return [time_label(t) for t in times]


def time_label(t: Any) -> str:
    if hasattr(t, "normalize"):
        return str(t.date()) if t == t.normalize() else str(t)
    return str(t)


Describe = Callable[[int], str]


def describe_row(series: Series) -> Describe:
    """row number -> its timestamp (or step) as text, for messages and tables."""
    import pandas as pd

    if isinstance(series.index, pd.DatetimeIndex):
        return lambda i: time_label(series.index[i])
    return lambda i: f"step {i}"
