"""Sessions by product and era, trading days, session masks and the per-bar calendar."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import trading_calendar as tc
from config import CHINA_TZ, ConfigError, project_contracts
from tests.conftest import at, bars, run_python

VT = "rb0000.SHFE"


def _cst(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=CHINA_TZ)


def test_importing_trading_calendar_prints_nothing_and_creates_no_file(tmp_path: Path) -> None:
    result = run_python("import trading_calendar", tmp_path / "home")
    assert result.returncode == 0, result.stderr
    assert (result.stdout, result.stderr) == ("", "")
    assert list(tmp_path.iterdir()) == []


def test_importing_trading_calendar_loads_neither_pandas_nor_vnpy(tmp_path: Path) -> None:
    result = run_python(
        "import sys, trading_calendar\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'vnpy', 'pandas', 'data_processor'}))",
        tmp_path / "home",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --- the session table ------------------------------------------------------------------------------------------


def _old_config_sessions(product: str) -> tuple[tuple[time, time], ...]:
    """What config.sessions_of answered before the one table (issue 14), written out by hand."""
    day = ((time(9, 0), time(10, 15)), (time(10, 30), time(11, 30)), (time(13, 30), time(15, 0)))
    index_day = ((time(9, 30), time(11, 30)), (time(13, 0), time(15, 0)))
    night_ends = {"rb": time(23, 0), "hc": time(23, 0), "cu": time(1, 0), "au": time(2, 30), "ag": time(2, 30)}
    hours = index_day if product in ("IF", "IH", "IC", "IM") else day
    return ((time(21, 0), night_ends[product]), *hours) if product in night_ends else hours


OLD_PRODUCTS = ("rb", "hc", "cu", "au", "ag", "IF", "IH", "IC", "IM")


def test_the_table_gives_the_old_config_sessions_on_a_2026_date() -> None:
    for product in OLD_PRODUCTS:
        assert tc.sessions_on(product, date(2026, 11, 24)) == _old_config_sessions(product), product


def test_the_table_gives_the_old_config_sessions_on_every_date_since_2016_05_03() -> None:
    day = date(2016, 5, 3)
    while day <= date(2027, 12, 31):
        for product in OLD_PRODUCTS:
            assert tc.sessions_on(product, day) == _old_config_sessions(product), (product, day)
        day += timedelta(days=1)


def _hours(*pairs: str) -> tuple[tuple[time, time], ...]:
    return tuple((time.fromisoformat(a), time.fromisoformat(b)) for a, b in (pair.split("-") for pair in pairs))


def test_the_table_keeps_the_session_eras_trading_calendar_held_before_the_contract_table() -> None:
    day = _hours("09:00-10:15", "10:30-11:30", "13:30-15:00")
    index_2010, index_2016 = _hours("09:15-11:30", "13:00-15:15"), _hours("09:30-11:30", "13:00-15:00")
    black = (  # rb and hc: night to 01:00 from 2014-12-26, to 23:00 from 2016-05-03
        tc.SessionEra(date(2014, 12, 26), _hours("21:00-01:00") + day),
        tc.SessionEra(date(2016, 5, 3), _hours("21:00-23:00") + day),
    )
    old = {  # trading_calendar.SESSION_TABLE as it was written out by hand (issue 14)
        "rb": (tc.SessionEra(date(2009, 3, 27), day), *black),
        "hc": (tc.SessionEra(date(2014, 3, 21), day), *black),
        "cu": (tc.SessionEra(date(1993, 3, 1), day), tc.SessionEra(date(2013, 12, 20), _hours("21:00-01:00") + day)),
        "au": (tc.SessionEra(date(2008, 1, 9), day), tc.SessionEra(date(2013, 7, 5), _hours("21:00-02:30") + day)),
        "ag": (tc.SessionEra(date(2012, 5, 10), day), tc.SessionEra(date(2013, 7, 5), _hours("21:00-02:30") + day)),
        "IF": (tc.SessionEra(date(2010, 4, 16), index_2010), tc.SessionEra(date(2016, 1, 1), index_2016)),
        "IH": (tc.SessionEra(date(2015, 4, 16), index_2010), tc.SessionEra(date(2016, 1, 1), index_2016)),
        "IC": (tc.SessionEra(date(2015, 4, 16), index_2010), tc.SessionEra(date(2016, 1, 1), index_2016)),
        "IM": (tc.SessionEra(date(2022, 7, 22), index_2016),),
    }
    table = tc.session_table()
    for product, eras in old.items():
        assert table[product] == eras, product


def test_the_calendar_reads_every_products_hours_from_the_contract_table() -> None:
    contracts = project_contracts()
    assert len(contracts) >= 70
    assert tc.session_table() == {
        product: tuple(tc.SessionEra(since, windows) for since, windows in spec.sessions)
        for product, spec in contracts.items()
    }
    assert tc.sessions_on("m", date(2026, 11, 24))[0] == (time(21, 0), time(23, 0))  # DCE soybean meal's night
    assert tc.sessions_on("m", date(2015, 3, 2))[0] == (time(21, 0), time(2, 30))
    assert tc.sessions_on("si", date(2026, 11, 24)) == _hours("09:00-10:15", "10:30-11:30", "13:30-15:00")


def test_sessions_follow_the_era_in_force_on_the_session_date() -> None:
    assert tc.sessions_on("rb", date(2016, 5, 2))[0] == (time(21, 0), time(1, 0))
    assert tc.sessions_on("rb", date(2016, 5, 3))[0] == (time(21, 0), time(23, 0))
    assert tc.sessions_on("IC", date(2015, 12, 31))[0] == (time(9, 15), time(11, 30))
    assert tc.is_trading_time(_cst(2016, 4, 29, 0, 30), "rb")  # Thursday's 21:00-01:00 night, after midnight
    assert not tc.is_trading_time(_cst(2016, 6, 3, 0, 30), "rb")
    assert tc.is_trading_time(_cst(2015, 12, 31, 9, 20), "IF") and not tc.is_trading_time(_cst(2016, 1, 4, 9, 20), "IF")


def test_a_product_not_in_the_table_has_shfe_day_hours_and_no_night() -> None:
    assert tc.sessions_on("zz", date(2026, 11, 24)) == _old_config_sessions("zz")
    assert tc.is_trading_time(_cst(2026, 11, 24, 9, 0), "zz")
    assert not tc.is_trading_time(_cst(2026, 11, 24, 21, 0), "zz")


def test_session_table_follows_the_products_eras() -> None:
    index = pd.DatetimeIndex(
        [
            at("2014-06-03 21:30"),
            at("2015-06-03 23:30"),
            at("2016-06-03 23:30"),
            at("2016-06-03 22:59"),
            at("2016-06-03 10:20"),
            at("2016-06-03 13:30"),
        ]
    )
    assert tc.session_mask(tc.session_eras(VT), index).tolist() == [False, True, False, True, False, True]
    copper = tc.session_mask(tc.session_eras("cu1909.SHFE"), pd.DatetimeIndex([at("2019-09-17 00:30")]))
    assert copper.tolist() == [True]


def test_unknown_products_get_sessions_inferred_from_their_bars(sample_frame: pd.DataFrame) -> None:
    day_only = bars(sample_frame, "2013-01-01", "2013-03-31")
    eras = tc.session_eras("xx0000.SHFE", day_only.index)
    assert eras[0].windows[0][0].isoformat() == "09:00:00"
    assert eras[0].windows[-1][1].isoformat() == "15:00:00"


# --- exchange holidays ------------------------------------------------------------------------------------------


def test_the_holiday_table_lists_every_festival_of_every_year_from_2010_to_2026() -> None:
    table = tc.exchange_holidays()
    assert table.years == (2010, 2026)
    festivals = ("元旦", "春节", "清明节", "劳动节", "端午节", "中秋节", "国庆节")
    for year in range(2010, 2027):
        names = " ".join(
            row.name for row in table.closures if row.kind == tc.CLOSED and year in (row.first.year, row.last.year)
        )
        assert [name for name in festivals if name not in names] == [], year


def test_announced_and_unscheduled_closures_are_holidays() -> None:
    assert tc.is_exchange_holiday(date(2020, 1, 31))  # the 2020 Spring Festival extension
    assert tc.is_exchange_trading_day(date(2020, 2, 3)) and not tc.is_exchange_trading_day(date(2020, 1, 31))
    assert tc.is_exchange_holiday(date(2015, 9, 3)) and tc.is_exchange_holiday(date(2015, 9, 4))  # Victory Day
    assert tc.is_exchange_holiday(date(2024, 2, 9))  # Spring Festival eve, closed by the 2024 notice
    assert tc.is_exchange_holiday(date(2015, 9, 26))  # a weekend inside a holiday is part of it
    assert not tc.is_exchange_holiday(date(2016, 6, 18))  # a plain Saturday is no holiday, just no trading day
    assert not tc.is_exchange_trading_day(date(2016, 6, 18))
    assert tc.next_exchange_trading_day(date(2024, 2, 8)) == date(2024, 2, 19)


def test_a_year_has_the_trading_days_the_exchanges_counted() -> None:
    counts = {year: len(tc.exchange_trading_days(date(year, 1, 1), date(year, 12, 31))) for year in (2016, 2019, 2020)}
    assert counts == {2016: 244, 2019: 244, 2020: 243}


@pytest.mark.parametrize(
    ("evening", "held"),
    [
        (date(2016, 6, 8), False),  # Wednesday before the Dragon Boat holiday (9-10 June)
        (date(2016, 6, 7), True),
        (date(2016, 6, 17), True),  # a plain Friday: its night belongs to Monday
        (date(2015, 9, 25), False),  # Friday before a weekend-only Mid-Autumn holiday (上期发〔2015〕133号)
        (date(2021, 6, 11), False),  # Friday before a weekend and a Monday holiday
        (date(2020, 2, 3), False),  # night trading suspended from 3 Feb 2020 ...
        (date(2020, 5, 6), True),  # ... until the evening of 6 May 2020
        (date(2016, 6, 18), False),  # Saturday
        (date(2024, 10, 8), True),  # the first day after a holiday holds its night
    ],
)
def test_the_evening_before_a_holiday_has_no_night_session(evening: date, held: bool) -> None:
    assert tc.has_night_session(evening) is held
    assert (tc.sessions_held("rb", evening)[:1] == tc.sessions_on("rb", evening)[:1]) is held


def test_sessions_held_are_none_on_holidays_and_the_day_windows_before_one() -> None:
    assert tc.sessions_held("rb", date(2024, 10, 1)) == ()
    assert tc.sessions_held("rb", date(2024, 9, 30)) == tc.SHFE_DAY
    assert tc.sessions_held("IF", date(2024, 9, 30)) == tc.sessions_on("IF", date(2024, 9, 30))
    assert tc.sessions_on("IF", date(2024, 9, 30))[0][0] == time(9, 30)


def test_a_bad_holiday_row_is_a_config_error_naming_its_line(tmp_path: Path) -> None:
    path = tmp_path / "holidays.csv"
    path.write_text("# note\nkind,first,last,name\nclosed,2030-01-01,2030-01-01,元旦\nclosed,2030-02-30,x,春节\n")
    with pytest.raises(ConfigError, match="holidays.csv:4"):
        tc.read_holiday_table(path)
    path.write_text("kind,first,last,name\nopen,2030-01-01,2030-01-01,元旦\n")
    with pytest.raises(ConfigError, match="holidays.csv:2"):
        tc.read_holiday_table(path)
    path.write_text("kind,first,last,name\nclosed,2030-01-01,2030-01-02,元旦, New Year\n")
    table = tc.read_holiday_table(path)
    assert table.closed == {date(2030, 1, 1), date(2030, 1, 2)} and table.closures[0].name == "元旦, New Year"


@pytest.mark.slow
def test_the_sample_trades_on_exactly_the_days_and_nights_the_holiday_table_allows(sample_frame: pd.DataFrame) -> None:
    index = sample_frame.index
    day_bars = set(index[index.hour < 16].date)
    night_bars = set(index[index.hour >= 20].date)
    days = [date(2010, 7, 20) + timedelta(days=n) for n in range((date(2016, 12, 30) - date(2010, 7, 20)).days + 1)]
    assert [d for d in days if tc.is_exchange_trading_day(d) != (d in day_bars)] == []
    nights = [d for d in days if d >= date(2014, 12, 26)]  # rb's night session began on 26 Dec 2014
    assert [d for d in nights if tc.has_night_session(d) != (d in night_bars)] == []


def test_features_keep_the_weekday_rule_across_holidays() -> None:
    index = pd.DatetimeIndex([at("2020-01-23 21:00"), at("2020-01-31 09:00"), at("2024-02-08 21:00")])
    assert tc.causal_trading_days(index).tolist() == [date(2020, 1, 24), date(2020, 1, 31), date(2024, 2, 9)]


# --- one moment: sessions and trading day -----------------------------------------------------------------------


def test_sessions_know_lunch_nights_and_weekends() -> None:
    tuesday = (2026, 11, 24)
    assert tc.is_trading_time(_cst(*tuesday, 10, 0), "rb")
    assert not tc.is_trading_time(_cst(*tuesday, 10, 20), "rb")  # the 10:15-10:30 break
    assert not tc.is_trading_time(_cst(*tuesday, 12, 0), "rb")
    assert tc.is_trading_time(_cst(*tuesday, 22, 30), "rb") and not tc.is_trading_time(_cst(*tuesday, 23, 30), "rb")
    assert tc.is_trading_time(_cst(*tuesday, 23, 30), "cu")
    assert tc.is_trading_time(_cst(2026, 11, 28, 0, 30), "cu")  # Friday night runs past midnight into Saturday
    assert not tc.is_trading_time(_cst(2026, 11, 29, 0, 30), "cu")  # no session on Saturday night
    assert not tc.is_trading_time(_cst(2026, 11, 28, 10, 0), "rb")
    assert not tc.is_trading_time(_cst(*tuesday, 9, 15), "IF") and tc.is_trading_time(_cst(*tuesday, 13, 10), "IF")


def test_no_session_runs_on_a_holiday_or_on_the_night_before_one() -> None:
    assert tc.is_trading_time(_cst(2024, 9, 30, 10, 0), "rb")
    assert not tc.is_trading_time(_cst(2024, 9, 30, 21, 30), "rb")  # the evening before National Day
    assert not tc.is_trading_time(_cst(2024, 10, 1, 0, 30), "cu")  # its after-midnight part
    assert not tc.is_trading_time(_cst(2024, 10, 1, 10, 0), "rb") and not tc.is_trading_time(
        _cst(2024, 10, 7, 10, 0), "IF"
    )
    assert tc.is_trading_time(_cst(2024, 10, 8, 9, 0), "rb") and tc.is_trading_time(_cst(2024, 10, 8, 21, 0), "rb")
    assert not tc.is_trading_time(_cst(2020, 3, 2, 21, 30), "rb")  # night trading suspended in spring 2020


def test_next_session_start_skips_holidays() -> None:
    assert tc.next_session_start(_cst(2024, 9, 30, 15, 30), "rb") == _cst(2024, 10, 8, 9, 0)
    assert tc.next_session_start(_cst(2024, 2, 8, 15, 30), "cu") == _cst(2024, 2, 19, 9, 0)
    assert tc.next_session_start(_cst(2024, 10, 8, 15, 30), "rb") == _cst(2024, 10, 8, 21, 0)
    assert tc.next_session_start(_cst(2020, 1, 23, 16, 0), "IF") == _cst(2020, 2, 3, 9, 30)


def test_next_session_start_skips_breaks_and_weekends() -> None:
    assert tc.next_session_start(_cst(2026, 11, 24, 11, 40), "rb") == _cst(2026, 11, 24, 13, 30)
    assert tc.next_session_start(_cst(2026, 11, 27, 23, 30), "rb") == _cst(2026, 11, 30, 9, 0)
    assert tc.next_session_start(_cst(2026, 11, 28, 12, 0), "cu") == _cst(2026, 11, 30, 9, 0)
    assert tc.next_session_start(_cst(2026, 11, 24, 15, 30), "au") == _cst(2026, 11, 24, 21, 0)
    running = _cst(2026, 11, 24, 10, 0)
    assert tc.next_session_start(running, "rb") == running


@given(day=st.dates(date(2005, 1, 1), date(2035, 12, 31)), minute=st.integers(0, 24 * 60 - 1))
@settings(max_examples=300, deadline=None)
def test_the_scalar_trading_day_equals_the_vectorised_one(day: date, minute: int) -> None:
    when = datetime(day.year, day.month, day.day, minute // 60, minute % 60, tzinfo=CHINA_TZ)
    assert tc.causal_trading_day(when) == tc.causal_trading_days(pd.DatetimeIndex([when]))[0].astype(date)


# --- every bar: trading days and session bounds -----------------------------------------------------------------


def test_friday_night_bars_belong_to_monday(sample_frame: pd.DataFrame) -> None:
    frame = bars(sample_frame, "2016-06-17 09:00", "2016-06-20 15:00")  # Friday .. Monday
    days = pd.Series(tc.trading_days(frame.index), index=frame.index)
    assert days[at("2016-06-17 14:59")] == np.datetime64("2016-06-17")
    assert days[at("2016-06-17 21:00")] == np.datetime64("2016-06-20")
    assert days[at("2016-06-20 09:00")] == np.datetime64("2016-06-20")


def test_a_night_before_a_holiday_belongs_to_the_next_day_with_trading() -> None:
    index = pd.DatetimeIndex([at("2016-06-08 21:00"), at("2016-06-08 22:59"), at("2016-06-13 09:00")])
    assert tc.trading_days(index).tolist() == [date(2016, 6, 13)] * 3  # 9-10 June: Dragon Boat holiday
    assert tc.causal_trading_days(index).tolist()[0] == date(2016, 6, 9)  # a weekday guess without the data


def test_session_bounds_list_each_window_of_a_trading_day(spring_2016: pd.DataFrame) -> None:
    bounds = tc.session_bounds(spring_2016)
    day = bounds[bounds["trading_day"] == np.datetime64("2016-06-14")]
    assert [(f"{a:%H:%M}", f"{b:%H:%M}") for a, b in zip(day["first"], day["last"], strict=True)] == [
        ("21:00", "22:59"),
        ("09:00", "10:14"),
        ("10:30", "11:29"),
        ("13:30", "14:59"),
    ]
    assert day["bars"].tolist() == [120, 75, 60, 90]


night_minutes = st.one_of(st.integers(21 * 60, 24 * 60 - 1), st.integers(0, 2 * 60 + 29))


@given(
    day=st.dates(date(2005, 1, 1), date(2035, 12, 31)),
    minute=night_minutes,
    trading=st.sets(st.dates(date(2005, 1, 1), date(2036, 1, 31)).filter(lambda d: d.weekday() < 5), max_size=30),
)
@settings(max_examples=200, deadline=None)
def test_every_night_bar_maps_to_a_later_weekday(day: date, minute: int, trading: set[date]) -> None:
    when = datetime(day.year, day.month, day.day, minute // 60, minute % 60, tzinfo=CHINA_TZ)
    day_bars = [datetime(d.year, d.month, d.day, 9, 0, tzinfo=CHINA_TZ) for d in sorted(trading)]
    index = pd.DatetimeIndex([when, *day_bars])
    result = tc.trading_days(index)[0].astype(date)
    evening = day - timedelta(days=1) if minute < 6 * 60 else day
    assert result.weekday() < 5
    assert result > evening and result >= day
    assert (result - evening).days <= 14 + 3
    later = [d for d in trading if d > evening]
    if later and (min(later) - evening).days <= 14:
        assert result == min(later)  # the data's next trading day wins over the weekday guess


@given(
    day=st.dates(date(2005, 1, 1), date(2035, 12, 31)).filter(lambda d: d.weekday() < 5),
    minute=st.integers(9 * 60, 15 * 60 - 1),
)
@settings(max_examples=100, deadline=None)
def test_day_bars_belong_to_their_own_date(day: date, minute: int) -> None:
    when = datetime(day.year, day.month, day.day, minute // 60, minute % 60, tzinfo=CHINA_TZ)
    assert tc.trading_days(pd.DatetimeIndex([when]))[0].astype(date) == day


def test_the_bar_calendar_equals_the_vectorised_calendar_on_real_bars(spring_2016: pd.DataFrame) -> None:
    index = spring_2016.index
    for eras in (tc.known_eras(VT), None):
        calendar = tc.BarCalendar(eras)
        online = [calendar.update(when) for when in index.to_pydatetime()]
        progress = tc.progress_since_open(index) if eras is None else tc.session_progress(eras, index)
        assert [night for night, _, _ in online] == tc.is_night(index).tolist()
        np.testing.assert_array_equal(np.array([p for _, p, _ in online]), progress)
        assert [day for _, _, day in online] == tc.causal_trading_days(index).tolist()


def test_the_bar_clock_reads_the_hours_and_dates_pandas_reads_in_any_zone(sample_frame: pd.DataFrame) -> None:
    china = pd.DatetimeIndex(sample_frame.index[::7])
    for index in (china, china.tz_convert("UTC"), china.tz_localize(None), china.as_unit("ns")):
        clock = tc.BarClock.of(index)
        hours = np.asarray(index.hour)
        assert np.array_equal(clock.minutes, hours * 60 + np.asarray(index.minute))
        assert np.array_equal(clock.dates, np.array(index.date, dtype="datetime64[D]"))
        night = (hours >= tc.NIGHT_FROM_HOUR) | (hours < tc.NIGHT_UNTIL_HOUR)
        assert np.array_equal(clock.night(), night)
        anchor = np.where(hours < tc.NIGHT_UNTIL_HOUR, clock.dates - np.timedelta64(1, "D"), clock.dates)
        assert np.array_equal(clock.session_dates(), anchor)
        rule = np.where(night, np.busday_offset(anchor, 1, roll="forward"), np.busday_offset(anchor, 0, roll="forward"))
        assert np.array_equal(clock.causal_trading_days(), rule)
    assert np.array_equal(tc.causal_trading_days(china), tc.BarClock.of(china).causal_trading_days())
