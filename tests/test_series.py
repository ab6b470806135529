"""Forecasting data: reading and cleaning CSVs, chronological spans, windows, and no leakage."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepstep.config import resolve_config
from deepstep.data.series import (
    Scaler,
    evaluation_origins,
    future_index,
    load_series,
    origins,
    season_of,
    split_spans,
    windows,
)
from deepstep.errors import DeepstepError
from deepstep.tasks.forecasting import prepare


def write_monthly(path: Path, values, column="Sales", extra: dict | None = None) -> Path:
    months = [f"{2000 + i // 12}-{i % 12 + 1:02d}" for i in range(len(values))]
    lines = ["Month," + ",".join([column, *(extra or {})])]
    for i, (m, v) in enumerate(zip(months, values, strict=True)):
        cells = ["" if v is None else str(v), *(str(col[i]) for col in (extra or {}).values())]
        lines.append(f"{m}," + ",".join(cells))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_monthly_csv_gets_its_time_index_frequency_and_season(tmp_path):
    series = load_series(str(write_monthly(tmp_path / "s.csv", range(30))), target=None)
    assert series.columns == ["Sales"] and series.freq == "MS" and season_of(series.freq) == 12
    assert series.values[:3, 0].tolist() == [0, 1, 2]


def test_missing_values_are_an_error_that_names_the_column_and_the_choices(tmp_path):
    path = write_monthly(tmp_path / "s.csv", [1, 2, None, 4, 5])
    with pytest.raises(
        DeepstepError, match=r"1 missing value\(s\) \(Sales: 1, first at 2000-03-01.*--fill interpolate, ffill or drop"
    ):
        load_series(str(path), target="Sales")


@pytest.mark.parametrize(
    ("fill", "expected"), [("interpolate", [1, 2, 3, 4, 5]), ("ffill", [1, 2, 2, 4, 5]), ("drop", [1, 2, 4, 5])]
)
def test_each_fill_choice_does_what_it_says_and_is_reported(tmp_path, fill, expected):
    series = load_series(str(write_monthly(tmp_path / "s.csv", [1, 2, None, 4, 5])), target="Sales", fill=fill)
    assert series.values[:, 0].tolist() == expected
    assert series.report["missing"] == {"Sales": 1} and series.report["fill"]["method"] == fill


def test_categorical_features_are_one_hot_encoded(tmp_path):
    path = write_monthly(tmp_path / "s.csv", range(6), extra={"wind": ["N", "S", "N", "E", "S", "N"], "temp": range(6)})
    series = load_series(str(path), target="Sales", features=["wind", "temp"])
    assert series.columns == ["Sales", "temp", "wind=E", "wind=N", "wind=S"]
    assert series.values[:, 2:].tolist()[:2] == [[0, 1, 0], [0, 0, 1]]


def test_year_month_day_hour_columns_make_an_hourly_index(tmp_path):
    rows = ["year,month,day,hour,pm"] + [f"2010,1,{1 + h // 24},{h % 24},{h}" for h in range(48)]
    (tmp_path / "p.csv").write_text("\n".join(rows) + "\n")
    series = load_series(str(tmp_path / "p.csv"), target="pm")
    assert series.freq == "h" and season_of(series.freq) == 24 and len(series) == 48


def test_a_semicolon_csv_with_decimal_commas_reads_as_numbers_and_says_so(tmp_path):
    (tmp_path / "eu.csv").write_text("Monat;Umsatz;Preis\n2000-01;1,5;10\n2000-02;2,25;11\n2000-03;-3,0;12\n")
    series = load_series(str(tmp_path / "eu.csv"), target="Umsatz", features=["Preis"])
    assert series.values.tolist() == [[1.5, 10.0], [2.25, 11.0], [-3.0, 12.0]]
    assert series.report["read_as"] == "';'-separated, with decimal commas"
    (tmp_path / "points.csv").write_text("Month;y\n2000-01;1.5\n2000-02;2.5\n2000-03;3.5\n")
    series = load_series(str(tmp_path / "points.csv"), target="y")
    assert series.values[:, 0].tolist() == [1.5, 2.5, 3.5] and series.freq == "MS"
    assert series.report["read_as"] == "';'-separated"
    assert "read_as" not in load_series(str(write_monthly(tmp_path / "s.csv", range(5))), target=None).report
    (tmp_path / "excel.csv").write_bytes("Month,Température\n2000-01,1\n2000-02,2\n".encode("cp1252"))
    series = load_series(str(tmp_path / "excel.csv"), target="Température")
    assert series.values[:, 0].tolist() == [1, 2] and series.report["read_as"] == "Windows-1252 text (not UTF-8)"


def test_thousands_grouped_as_spreadsheets_export_them_read_as_numbers_and_say_so(tmp_path):
    (tmp_path / "us.csv").write_text('Month,Sales\n2000-01,"1,234"\n2000-02,"12,345.5"\n2000-03,999\n')
    series = load_series(str(tmp_path / "us.csv"), target="Sales")
    assert series.values[:, 0].tolist() == [1234.0, 12345.5, 999.0]
    assert series.report["read_as"] == "thousands grouped by commas"
    (tmp_path / "eu.csv").write_text("Monat;Umsatz\n2000-01;1.234,5\n2000-02;12,5\n2000-03;1.000.000\n")
    series = load_series(str(tmp_path / "eu.csv"), target="Umsatz")
    assert series.values[:, 0].tolist() == [1234.5, 12.5, 1_000_000.0]
    assert series.report["read_as"] == "';'-separated, with decimal commas, thousands grouped by points"


def test_day_first_dates_are_read_with_one_format_for_every_row_not_guessed_row_by_row(tmp_path):
    import datetime as dt

    days = [dt.date(2020, 1, 1) + dt.timedelta(days=i) for i in range(40)]
    (tmp_path / "de.csv").write_text("Date,y\n" + "".join(f"{d:%d.%m.%Y},{i}\n" for i, d in enumerate(days)))
    series = load_series(str(tmp_path / "de.csv"), target="y")
    assert [t.date() for t in series.index] == days and series.freq == "D"
    assert series.values[:, 0].tolist() == list(range(40)) and "sorted" not in series.report
    assert series.report["date_format"] == "%d.%m.%Y"
    # no day above 12 and both orders increase: month first, as usual for dates written with /
    (tmp_path / "us.csv").write_text("Date,y\n01/05/2020,1\n02/05/2020,2\n03/05/2020,3\n")
    series = load_series(str(tmp_path / "us.csv"), target="y")
    assert [str(t.date()) for t in series.index] == ["2020-01-05", "2020-02-05", "2020-03-05"]
    assert "date_format" not in series.report


def test_times_with_no_frequency_say_which_step_breaks_it(tmp_path):
    import datetime as dt

    from deepstep.tasks.forecasting import data_notes

    days = [dt.date(2020, 1, 1) + dt.timedelta(days=i) for i in range(30) if i != 12]  # January 13th is missing
    (tmp_path / "d.csv").write_text("Date,y\n" + "".join(f"{d},{i}\n" for i, d in enumerate(days)))
    series = load_series(str(tmp_path / "d.csv"), target="y")
    assert series.freq is None and len(series) == 29
    assert data_notes(series.report) == [
        "the times are not evenly spaced: 27 of 28 steps are 1 day, 1 is not (the first: 2020-01-12 to 2020-01-14); "
        "so no season is assumed (give --season N to set one)"
    ]
    hours = ["2020-01-01 00:00", "2020-01-01 06:00", "2020-01-02 00:00", "2020-01-05 00:00"]
    (tmp_path / "h.csv").write_text("Time,y\n" + "".join(f"{t},{i}\n" for i, t in enumerate(hours)))
    report = load_series(str(tmp_path / "h.csv"), target="y").report
    assert report["uneven"] == "the times are not evenly spaced (steps from 6 hours to 3 days)"
    assert "uneven" not in load_series(str(write_monthly(tmp_path / "m.csv", range(30))), target=None).report


def test_the_times_after_an_hourly_series_all_read_as_date_and_time_midnight_too(tmp_path):
    hours = [f"2020-01-01 {h:02d}:00" for h in range(23)]  # ends at 22:00: the forecast crosses midnight
    (tmp_path / "h.csv").write_text("Time,y\n" + "".join(f"{t},{i}\n" for i, t in enumerate(hours)))
    series = load_series(str(tmp_path / "h.csv"), target="y")
    assert future_index(series, 3) == ["2020-01-01 23:00:00", "2020-01-02 00:00:00", "2020-01-02 01:00:00"]
    assert future_index(load_series(str(write_monthly(tmp_path / "m.csv", range(30))), target=None), 2) == [
        "2002-07-01",
        "2002-08-01",
    ]


def test_a_csv_with_no_header_row_is_said_to_have_lost_its_first_row_to_the_column_names(tmp_path):
    from deepstep.tasks.forecasting import data_notes

    (tmp_path / "bare.csv").write_text("".join(f"{t},{20 + t % 7}.5\n" for t in range(40)))  # 0,20.5 / 1,21.5 / ...
    series = load_series(str(tmp_path / "bare.csv"), target=None)  # the other column only numbers the rows
    assert series.target == "20.5" and len(series) == 39
    assert data_notes(series.report) == [
        f"{tmp_path / 'bare.csv'}: its first row (0, 20.5) is all numbers, and a CSV's first row is read as the "
        "column names; if it is data, add a header row naming the columns"
    ]
    (tmp_path / "two.csv").write_text("".join(f"{t % 5}.25,{20 + t % 7}.5\n" for t in range(40)))
    with pytest.raises(
        DeepstepError, match=r"\(numeric columns: 0.25, 20.5\); its first row is all numbers: if it is data"
    ):
        load_series(str(tmp_path / "two.csv"), target=None)
    assert "numeric_header" not in load_series(str(write_monthly(tmp_path / "m.csv", range(30))), target=None).report


def test_a_time_column_of_plain_numbers_is_not_read_as_nanoseconds_after_1970(tmp_path):
    (tmp_path / "t.csv").write_text("time,y\n" + "".join(f"{t},{t * 2}\n" for t in (5, 6, 7, 8)))
    series = load_series(str(tmp_path / "t.csv"), target="y")
    assert (
        series.freq is None and list(series.index) == [0, 1, 2, 3] and series.values[:, 0].tolist() == [10, 12, 14, 16]
    )
    assert series.report["not_dates"] == "time"
    with pytest.raises(DeepstepError, match=r"--time column 'time' holds numbers, not dates: leave --time out"):
        load_series(str(tmp_path / "t.csv"), target="y", time="time")
    (tmp_path / "years.csv").write_text("year,y\n1990,1\n1991,2\n1992,3\n")
    assert str(load_series(str(tmp_path / "years.csv"), target="y").index[0].date()) == "1990-01-01"


def test_a_blank_line_in_a_one_column_csv_is_a_missing_value_not_a_step_less(tmp_path):
    (tmp_path / "gap.csv").write_text("y\n1\n2\n\n4\n5\n\n\n")  # blank lines at the end are no rows
    with pytest.raises(DeepstepError, match=r"1 missing value\(s\) \(y: 1, first at row 4\); choose --fill"):
        load_series(str(tmp_path / "gap.csv"), target="y")
    assert load_series(str(tmp_path / "gap.csv"), target="y", fill="interpolate").values[:, 0].tolist() == [
        1,
        2,
        3,
        4,
        5,
    ]
    (tmp_path / "dated.csv").write_text("Month,y\n2000-01,1\n\n2000-02,2\n2000-03,3\n")  # the times place each row
    assert load_series(str(tmp_path / "dated.csv"), target="y").values[:, 0].tolist() == [1, 2, 3]


def test_duplicated_timestamps_are_refused(tmp_path):
    (tmp_path / "d.csv").write_text("Month,y\n2000-01,1\n2000-02,2\n2000-02,3\n")
    with pytest.raises(DeepstepError, match=r"1 duplicated timestamp\(s\) \(first 2000-02-01"):
        load_series(str(tmp_path / "d.csv"), target="y")


def test_a_non_numeric_target_names_the_row(tmp_path):
    (tmp_path / "n.csv").write_text("Month,y\n2000-01,1\n2000-02,abc\n2000-03,3\n")
    with pytest.raises(DeepstepError, match=r"--target y holds non-numbers \(first at row 3: 'abc'\)"):
        load_series(str(tmp_path / "n.csv"), target="y")


def test_an_unknown_target_suggests_the_close_column(tmp_path):
    with pytest.raises(DeepstepError, match=r"--target 'Sale' is not a column \(did you mean 'Sales'\?\)"):
        load_series(str(write_monthly(tmp_path / "s.csv", range(5))), target="Sale")


def test_a_folder_given_as_a_series_is_named_as_a_folder_not_as_missing(tmp_path):
    (tmp_path / "folder").mkdir()  # as `train --data photos/ --task forecasting` gives it
    with pytest.raises(DeepstepError, match=r"^\S+/folder is a folder, not a CSV file; give a CSV file or a built-in"):
        load_series(str(tmp_path / "folder"), target=None)
    with pytest.raises(DeepstepError, match=r"^\S+/missing.csv does not exist; give a CSV file or a built-in"):
        load_series(str(tmp_path / "missing.csv"), target=None)


def test_a_built_in_series_loads_offline():
    series = load_series("nile", target=None)
    assert series.target == "volume" and len(series) == 100 and series.values[0, 0] == 1120


def test_spans_are_consecutive_and_take_steps_or_fractions():
    spans = split_spans(144, test_size=24, val_size=0.1, lookback=24, horizon=12)
    assert (spans.val_start, spans.test_start, spans.n) == (106, 120, 144)


def test_a_series_too_short_for_the_lookback_is_refused_with_the_numbers():
    with pytest.raises(DeepstepError, match=r"train span \(10 steps\) is shorter than --lookback 24 \+ --horizon 1"):
        split_spans(20, test_size=5, val_size=5, lookback=24, horizon=1)


@pytest.mark.parametrize("test_size", [0, 0.001])
def test_a_test_size_of_no_steps_is_refused_not_left_untested(test_size):
    # 0.001 of 144 steps rounds to none; with no test span the run's first log line raised an IndexError
    with pytest.raises(DeepstepError, match=f"--test-size {test_size:g} leaves no test span of the 144 steps"):
        split_spans(144, test_size=test_size, val_size=0.1, lookback=24, horizon=1)


def test_windows_pair_each_lookback_with_the_targets_that_follow_it():
    values = np.arange(20, dtype=float)[:, None] * [1, 10]  # (20, 2): target, a feature
    x, y = windows(values, np.array([5, 9]), lookback=3, horizon=2)
    assert x.shape == (2, 3, 2) and y.tolist() == [[5, 6], [9, 10]]
    assert x[0, :, 0].tolist() == [2, 3, 4] and x[0, :, 1].tolist() == [20, 30, 40]


def test_test_origins_tile_the_span_in_blocks_or_step_through_it_for_a_backtest():
    spans = split_spans(144, test_size=24, val_size=12, lookback=24, horizon=12)
    assert evaluation_origins(spans, lookback=24, horizon=12, backtest=False).tolist() == [120, 132]
    assert evaluation_origins(spans, lookback=24, horizon=12, backtest=True).tolist() == list(range(120, 133))


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(10, 400),
    lookback=st.integers(1, 30),
    horizon=st.integers(1, 12),
    stride=st.integers(1, 5),
    test=st.floats(0.05, 0.4),
    val=st.floats(0.0, 0.3),
)
def test_no_window_straddles_a_span_and_every_index_is_in_range(n, lookback, horizon, stride, test, val):
    try:
        spans = split_spans(n, test_size=test, val_size=val, lookback=lookback, horizon=horizon)
    except DeepstepError:
        return  # too short: refused with a message, which is the behaviour we want
    train = origins(0, spans.val_start, lookback=lookback, horizon=horizon, stride=stride)
    val_ = origins(spans.val_start, spans.test_start, lookback=lookback, horizon=horizon, stride=1)
    tests = evaluation_origins(spans, lookback=lookback, horizon=horizon, backtest=False)
    assert len(train) >= 1
    assert (train - lookback >= 0).all() and (train + horizon <= spans.val_start).all()
    assert len(val_) == 0 or ((val_ >= spans.val_start) & (val_ + horizon <= spans.test_start)).all()
    assert ((tests >= spans.test_start) & (tests + horizon <= n)).all()
    covered = np.zeros(n, bool)
    for t in tests:
        covered[t : t + horizon] = True
    assert covered[spans.test_start :].all()  # every test step is forecast


def test_changing_the_test_span_changes_neither_the_scaler_nor_the_training_windows(tmp_path):
    rng = np.random.default_rng(0)
    values = list(np.round(100 + np.cumsum(rng.normal(size=60)), 3))
    original = write_monthly(tmp_path / "a.csv", values)
    tampered_values = values[:-12] + [v * 50 + 1000 for v in values[-12:]]  # only the test span differs
    tampered = write_monthly(tmp_path / "b.csv", tampered_values)
    flags = {"target": "Sales", "lookback": 6, "horizon": 3, "test_size": 12, "val_size": 6}
    a = prepare(resolve_config({}, {"data": str(original), **flags}, task="forecasting"))
    b = prepare(resolve_config({}, {"data": str(tampered), **flags}, task="forecasting"))
    assert a.scaler.to_dict() == b.scaler.to_dict()
    starts = origins(0, a.spans.val_start, lookback=6, horizon=3, stride=1)
    xa, ya = windows(a.scaled, starts, lookback=6, horizon=3)
    xb, yb = windows(b.scaled, starts, lookback=6, horizon=3)
    assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    assert not np.array_equal(a.scaled[-12:], b.scaled[-12:])  # the tampering is real


def test_the_scaler_inverts_the_target_exactly():
    values = np.array([[1.0, 5], [3, 7], [5, 9]])
    scaler = Scaler.fit(values)
    assert np.allclose(scaler.inverse_target(scaler.transform(values)[:, 0]), values[:, 0])


def test_values_too_large_to_standardise_are_refused_by_column():
    # their squares overflowed: std inf scaled the column to zeros, then the run's JSON held no std
    values = np.array([[1.0, 2e300], [2.0, 3e300], [3.0, 1e300]])
    with pytest.raises(DeepstepError, match=r"^wind holds values too large to standardise \(up to 3e\+300\)"):
        Scaler.fit(values, ["sales", "wind"])


def test_an_infinite_value_is_refused_with_its_place(tmp_path):
    (tmp_path / "i.csv").write_text("Month,y\n2000-01,1\n2000-02,inf\n2000-03,3\n")
    with pytest.raises(DeepstepError, match=r"1 infinite value\(s\) \(y first at 2000-02-01"):
        load_series(str(tmp_path / "i.csv"), target="y")


def test_a_column_that_numbers_the_rows_is_no_feature_of_all_nor_the_target_picked(tmp_path):
    n = 8
    path = write_monthly(tmp_path / "s.csv", [5, 3, 8, 1, 9, 2, 7, 4], extra={"No": range(1, n + 1), "temp": [2] * n})
    series = load_series(str(path), target="Sales", features=["all"])
    assert series.columns == ["Sales", "temp"] and "No" in series.report["left_out"]
    assert load_series(str(path), target="Sales", features=["No"]).columns == ["Sales", "No"]  # named: used
    with pytest.raises(DeepstepError, match=r"numeric columns: Sales, temp\)"):
        load_series(str(path), target=None)
