"""The bar data check: missing minutes against the product's calendar, holes, truncations, stray bars."""

from __future__ import annotations

import json
from datetime import date, time, timedelta
from pathlib import Path

import pandas as pd
import pytest

import data_check
import trading_calendar as tc
from tests.conftest import at, bars, run_python

VT = "rb0000.SHFE"


def test_importing_data_check_prints_nothing_creates_no_file_and_loads_neither_pandas_nor_vnpy(
    tmp_path: Path,
) -> None:
    result = run_python(
        "import sys, data_check\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'vnpy', 'pandas', 'data_processor'}))",
        tmp_path / "home",
    )
    assert result.returncode == 0, result.stderr
    assert (result.stdout, result.stderr) == ("[]\n", "")
    assert list(tmp_path.iterdir()) == []


def _without(frame: pd.DataFrame, first: str, last: str) -> pd.DataFrame:
    """The frame without the bars from `first` to `last` (inclusive)."""
    out = frame.loc[(frame.index < at(first)) | (frame.index > at(last))].copy()
    out.attrs["vt_symbol"] = VT
    return out


def test_a_complete_day_has_no_hole(sample_frame: pd.DataFrame) -> None:
    report = data_check.check_bars(bars(sample_frame, "2016-06-13 21:00", "2016-06-14 14:59"))
    assert (report.trading_days, report.complete_days, report.expected_minutes) == (1, 1, 120 + 225)
    assert (report.missing_minutes, report.holes, report.truncations, report.sessions) == (0, (), (), ())
    assert report.passed and report.outside_sessions == report.on_closed_days == 0


def test_a_holiday_and_the_missing_night_before_it_are_not_holes(sample_frame: pd.DataFrame) -> None:
    report = data_check.check_bars(bars(sample_frame, "2016-06-06 09:00", "2016-06-17 14:59"))  # Dragon Boat: 9-10 June
    assert report.holidays == (date(2016, 6, 9), date(2016, 6, 10)) and report.nights_skipped == 1
    assert report.holes == () and report.missing_minutes == 0 and report.trading_days == 8


def test_a_13_day_hole_is_listed_with_its_dates_and_fails_the_check(sample_frame: pd.DataFrame) -> None:
    frame = _without(bars(sample_frame, "2016-06-01 09:00", "2016-08-31 14:59"), "2016-07-04 21:00", "2016-07-21 14:59")
    report = data_check.check_bars(frame)
    assert not report.passed and len(report.long_holes) == 1
    hole = report.long_holes[0]
    assert (hole.first, hole.last, hole.minutes) == (at("2016-07-04 21:00"), at("2016-07-21 14:59"), 13 * 345)
    assert (hole.first_day, hole.last_day) == (date(2016, 7, 5), date(2016, 7, 21))
    assert len(tc.exchange_trading_days(hole.first_day, hole.last_day)) == 13
    assert "2016-07-04 21:00 ~ 2016-07-21 14:59  4,485 分钟" in "\n".join(report.lines())
    first_two = [(row.trading_day, row.window[0], row.missing) for row in report.sessions[:2]]
    assert first_two == [(date(2016, 7, 5), time(21, 0), 120), (date(2016, 7, 5), time(9, 0), 75)]
    assert len(report.sessions) == 13 * 4


def test_short_holes_pass_and_the_threshold_decides(sample_frame: pd.DataFrame) -> None:
    frame = _without(bars(sample_frame, "2016-06-13 21:00", "2016-06-14 14:59"), "2016-06-14 10:00", "2016-06-14 10:14")
    report = data_check.check_bars(frame)
    assert [(h.first, h.minutes) for h in report.holes] == [(at("2016-06-14 10:00"), 15)] and report.passed
    assert not data_check.check_bars(frame, max_hole_minutes=14).passed


def test_a_hole_across_the_lunch_break_counts_only_session_minutes(sample_frame: pd.DataFrame) -> None:
    frame = _without(bars(sample_frame, "2016-06-13 21:00", "2016-06-14 14:59"), "2016-06-14 11:00", "2016-06-14 13:39")
    assert [(h.first, h.last, h.minutes) for h in data_check.check_bars(frame).holes] == [
        (at("2016-06-14 11:00"), at("2016-06-14 13:39"), 40)
    ]


def test_nights_cut_at_the_later_eras_close_are_a_vendor_truncation_even_in_a_short_range(
    sample_frame: pd.DataFrame,
) -> None:
    for first, last in (("2015-03-02", "2015-04-30"), ("2015-12-07", "2015-12-09")):
        report = data_check.check_bars(bars(sample_frame, f"{first} 09:00", f"{last} 14:59"))  # 21:00-01:00 era
        nights = _nights(first, last)
        assert [(t.window, t.cut_at, t.sessions, t.minutes, t.other_era) for t in report.truncations] == [
            ((time(21, 0), time(1, 0)), time(23, 0), nights, 120 * nights, True)  # 21:00-23:00 is rb's later era
        ]
        assert report.passed and report.missing_minutes == 120 * nights + sum(h.minutes for h in report.holes)


def _nights(first: str, last: str) -> int:
    """Evenings with a night session from `first` to the day before `last`."""
    start, end = date.fromisoformat(first), date.fromisoformat(last)
    return sum(tc.has_night_session(start + timedelta(days=n)) for n in range((end - start).days))


def _cut_nights(frame: pd.DataFrame, at_minute: str) -> pd.DataFrame:
    """The frame without the night bars from `at_minute` (HH:MM) to 23:00."""
    clock = frame.index.strftime("%H:%M")
    out = frame.loc[~((clock >= at_minute) & (clock < "23:00"))].copy()
    out.attrs["vt_symbol"] = VT
    return out


def test_nights_cut_at_the_same_minute_for_weeks_are_a_truncation_but_a_few_are_holes(
    sample_frame: pd.DataFrame,
) -> None:
    weeks = _cut_nights(bars(sample_frame, "2016-06-01 09:00", "2016-07-29 14:59"), "22:30")  # 21:00-23:00 era
    (cut,) = data_check.check_bars(weeks).truncations
    assert (cut.cut_at, cut.sessions, cut.other_era) == (time(22, 30), _nights("2016-06-01", "2016-07-29"), False)
    assert cut.sessions >= data_check.TRUNCATION_MIN_SESSIONS and data_check.check_bars(weeks).holes == ()
    few = _cut_nights(bars(sample_frame, "2016-06-13 09:00", "2016-06-15 14:59"), "21:30")
    report = data_check.check_bars(few)
    assert report.truncations == () and [(h.first, h.minutes) for h in report.long_holes] == [
        (at("2016-06-13 21:30"), 90),
        (at("2016-06-14 21:30"), 90),
    ]


def test_bars_on_a_holiday_off_hours_and_zero_volume_runs_are_flagged(sample_frame: pd.DataFrame) -> None:
    frame = bars(sample_frame, "2016-06-06 09:00", "2016-06-14 14:59")
    stray = frame.iloc[:2].copy()
    stray.index = pd.DatetimeIndex([at("2016-06-09 10:00"), at("2016-06-13 12:00")], name=frame.index.name)
    frame = pd.concat([frame, stray]).sort_index()
    frame.loc[at("2016-06-13 09:00") : at("2016-06-13 09:05"), "volume"] = 0
    report = data_check.check_bars(frame, VT)
    assert (report.on_closed_days, report.outside_sessions) == (1, 1)
    assert report.examples == ("2016-06-09 10:00", "2016-06-13 12:00")
    assert report.zero_volume_bars == 6
    assert [(r.first, r.bars) for r in report.zero_volume_runs] == [(at("2016-06-13 09:00"), 6)]


def test_hour_bars_are_not_counted_minute_by_minute(sample_frame: pd.DataFrame) -> None:
    frame = bars(sample_frame, "2016-06-13 09:00", "2016-06-14 14:59")
    hourly = frame.resample("1h").agg({"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"})
    report = data_check.check_bars(hourly.dropna(), VT)
    assert not report.checked and report.passed and "1 分钟" in report.lines()[0]


@pytest.mark.slow
def test_the_sample_check_reports_its_known_defects_and_passes(sample_frame: pd.DataFrame) -> None:
    report = data_check.check_bars(sample_frame)
    index = sample_frame.index
    without_1330 = set(index[index.hour < 16].date) - set(index[(index.hour == 13) & (index.minute == 30)].date)
    assert report.recurring[0] == (time(13, 30), len(without_1330)) and len(without_1330) == 80
    (cut,) = report.truncations
    assert (cut.window, cut.cut_at, cut.first_day, cut.last_day) == (
        (time(21, 0), time(1, 0)),
        time(23, 0),
        date(2014, 12, 26),
        date(2016, 4, 28),  # the 21:00-01:00 era ends 2016-05-02; 29 April's night was before Labour Day
    )
    assert (cut.sessions, cut.minutes, cut.other_era) == (315, 315 * 120, True)
    assert report.passed and max(h.minutes for h in report.holes) == 13
    stray = (report.outside_sessions, report.on_closed_days, report.zero_volume_bars)
    assert (report.trading_days, len(report.holidays), *stray) == (1569, 115, 0, 0, 0)
    summary = json.loads(json.dumps(report.summary()))
    assert summary["truncations"] == [["21:00-01:00", "23:00", 315, "2014-12-26", "2016-04-28", "other_era"]]
