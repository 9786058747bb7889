"""Trading sessions by product and era, exchange holidays, trading days, session masks and the bar data check
(China time)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from config import CHINA_TZ, SETTINGS_DIR, ConfigError, DataError, Window, parse_hours, product_of, project_contracts

if TYPE_CHECKING:  # pandas is imported where it is used: the watchdog and the monitor import this module
    import pandas as pd

MINUTES_PER_DAY: int = 1440
NIGHT_FROM_HOUR: int = 18  # bars at or after 18:00 open the next trading day's night session
NIGHT_UNTIL_HOUR: int = 6  # bars before 06:00 are the tail of the previous evening's night session
SESSION_GAP_MINUTES: int = 15  # a pause this long opens a new session when the product's hours are unknown
SESSION_SPAN_MINUTES: float = 240.0

# --- the session table by product and era ---------------------------------------------------------------------


@dataclass(frozen=True)
class SessionEra:
    """A product's trading windows from `since` on; each window is [open, close) of bar START times."""

    since: date
    windows: tuple[Window, ...]

    def minute_table(self) -> np.ndarray:
        """Position of each minute of the day in its window (0..1), NaN outside every window."""
        table = np.full(MINUTES_PER_DAY, np.nan)
        for start, end in self.windows:
            first, last = start.hour * 60 + start.minute, end.hour * 60 + end.minute
            length = (last - first) % MINUTES_PER_DAY
            for offset in range(length):
                table[(first + offset) % MINUTES_PER_DAY] = offset / length
        return table


SHFE_DAY: tuple[Window, ...] = parse_hours("09:00-10:15 10:30-11:30 13:30-15:00", "SHFE_DAY")


@functools.cache
def session_table() -> dict[str, tuple[SessionEra, ...]]:
    """Published exchange hours by product and era (night windows first: they open the trading day), from the
    project's settings/contracts.toml, read once per process on first use."""
    return {
        product: tuple(SessionEra(since, windows) for since, windows in spec.sessions)
        for product, spec in project_contracts().items()
        if spec.sessions
    }


def era_position(eras: Sequence[SessionEra], day: date) -> int:
    """Which era is in force on a session date (the first era for a date before all of them)."""
    return max(sum(1 for era in eras if era.since <= day) - 1, 0)


def sessions_on(product: str, day: date) -> tuple[Window, ...]:
    """The product's windows on a session date, night first (SHFE day hours for a product not in the table)."""
    eras = session_table().get(product)
    return SHFE_DAY if eras is None else eras[era_position(eras, day)].windows


def infer_session_era(index: pd.DatetimeIndex, min_share: float = 0.2) -> SessionEra:
    """Windows of a product missing from the table: minutes of day traded on at least `min_share` of days."""
    minutes = np.asarray(index.hour * 60 + index.minute)
    days = max(len(np.unique(np.asarray(index.normalize()))), 1)
    counts = np.bincount(minutes, minlength=MINUTES_PER_DAY)
    traded = counts >= max(1.0, min_share * days)
    windows: list[Window] = []
    start: int | None = None
    for minute in range(MINUTES_PER_DAY + 1):
        on = minute < MINUTES_PER_DAY and bool(traded[minute])
        if on and start is None:
            start = minute
        elif not on and start is not None:
            windows.append((time(start // 60, start % 60), time((minute // 60) % 24, minute % 60)))
            start = None
    if not windows:
        raise DataError("数据太少，无法推断交易时段 / too few bars to infer the trading sessions")
    first_day = index.min().date() if len(index) else date(1990, 1, 1)
    return SessionEra(first_day, tuple(windows))


def session_eras(vt_symbol: str | None, index: pd.DatetimeIndex | None = None) -> tuple[SessionEra, ...]:
    """The product's eras from the session table, or inferred from the bars when the product is not in it."""
    if vt_symbol is not None:
        eras = session_table().get(product_of(vt_symbol))
        if eras is not None:
            return eras
    if index is None or len(index) == 0:
        raise DataError(
            f"品种 {vt_symbol!r} 不在交易时段表中，且没有数据可推断；请在 settings/contracts.toml 中添加 / "
            "unknown product and no bars to infer its sessions from"
        )
    return (infer_session_era(index),)


def known_eras(vt_symbol: str | None) -> tuple[SessionEra, ...] | None:
    """The product's eras from the session table, or None for a product not in it."""
    return session_table().get(product_of(vt_symbol)) if vt_symbol is not None else None


# --- exchange holidays ------------------------------------------------------------------------------------------

HOLIDAYS_FILE: Path = SETTINGS_DIR / "exchange_holidays.csv"
CLOSED, NO_NIGHT = "closed", "no_night"
MAX_CLOSURE_DAYS: int = 31  # no announced closure is this long: a search for the next trading day stops here


@dataclass(frozen=True)
class Closure:
    """One row of the holiday table: the exchanges `closed` from first to last, or `no_night` on those evenings."""

    kind: str
    first: date
    last: date
    name: str

    def days(self) -> list[date]:
        """Every calendar date from first to last."""
        return [self.first + timedelta(days=n) for n in range((self.last - self.first).days + 1)]


@dataclass(frozen=True)
class HolidayTable:
    """The announced closures and the years they cover; outside those years every weekday counts as trading."""

    closures: tuple[Closure, ...]
    closed: frozenset[date]
    no_night: frozenset[date]
    years: tuple[int, int]

    @classmethod
    def of(cls, closures: Sequence[Closure]) -> HolidayTable:
        """The table of these rows."""
        closed = frozenset(day for row in closures if row.kind == CLOSED for day in row.days())
        no_night = frozenset(day for row in closures if row.kind == NO_NIGHT for day in row.days())
        years = (
            (min(row.first.year for row in closures), max(row.last.year for row in closures)) if closures else (0, 0)
        )
        return cls(tuple(closures), closed, no_night, years)

    def covers(self, day: date) -> bool:
        """Whether the table lists the closures of the day's year."""
        return self.years[0] <= day.year <= self.years[1]

    def is_trading_day(self, day: date) -> bool:
        """A weekday on which the exchanges open."""
        return day.weekday() < 5 and day not in self.closed

    def next_trading_day(self, day: date) -> date:
        """The first trading day after `day`."""
        for offset in range(1, MAX_CLOSURE_DAYS + 3):
            following = day + timedelta(days=offset)
            if self.is_trading_day(following):
                return following
        raise ConfigError(f"{day} 之后 {MAX_CLOSURE_DAYS} 天内没有交易日，节假日表有误 / holiday table closes too long")

    def has_night_session(self, evening: date) -> bool:
        """Whether a trading day's evening holds the night session: not when a closed day (a weekend day inside a
        holiday included) comes before the next trading day, nor on a `no_night` evening."""
        if not self.is_trading_day(evening) or evening in self.no_night:
            return False
        following = self.next_trading_day(evening)
        return not any(evening + timedelta(days=n) in self.closed for n in range(1, (following - evening).days))


def read_holiday_table(path: Path) -> HolidayTable:
    """The holiday table in `path` (CSV `kind,first,last,name`, `#` comments), or ConfigError naming the bad line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: 无法读取节假日表：{exc.strerror} / cannot read the holiday table") from None
    rows: list[Closure] = []
    lines = [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1)]
    for number, line in [(n, line) for n, line in lines if line and not line.startswith("#")][1:]:  # after the header
        parts = [part.strip() for part in line.split(",", 3)]
        try:
            kind, first, last, name = parts
            row = Closure(kind, date.fromisoformat(first), date.fromisoformat(last), name)
        except ValueError:
            raise ConfigError(
                f"{path}:{number}: 需要 kind,first,last,name（日期 YYYY-MM-DD），收到 {line!r} / bad holiday row"
            ) from None
        too_long = kind == CLOSED and (row.last - row.first).days >= MAX_CLOSURE_DAYS
        if kind not in (CLOSED, NO_NIGHT) or row.last < row.first or too_long:
            raise ConfigError(
                f"{path}:{number}: kind 须为 {CLOSED} 或 {NO_NIGHT}，first ≤ last，休市不超过 {MAX_CLOSURE_DAYS} 天；"
                f"收到 {line!r} / bad holiday row"
            )
        rows.append(row)
    return HolidayTable.of(rows)


@functools.cache
def exchange_holidays() -> HolidayTable:
    """The project's holiday table (settings/exchange_holidays.csv), read once on first use."""
    return read_holiday_table(HOLIDAYS_FILE)


def is_exchange_holiday(day: date) -> bool:
    """Whether the exchanges announced a closure covering the date (weekend days inside a holiday included)."""
    return day in exchange_holidays().closed


def is_exchange_trading_day(day: date) -> bool:
    """A weekday that no announced closure covers."""
    return exchange_holidays().is_trading_day(day)


def next_exchange_trading_day(day: date) -> date:
    """The first trading day after `day`: the trading day of that evening's night session."""
    return exchange_holidays().next_trading_day(day)


def exchange_trading_days(start: date, end: date) -> list[date]:
    """The trading days from start to end inclusive."""
    table = exchange_holidays()
    days = (start + timedelta(days=n) for n in range((end - start).days + 1))
    return [day for day in days if table.is_trading_day(day)]


def has_night_session(evening: date) -> bool:
    """Whether a trading day's evening holds a night session (none before a holiday, even a weekend-only one)."""
    return exchange_holidays().has_night_session(evening)


def is_night_window(window: Window) -> bool:
    """A window that opens in the evening (its trading day is the next trading day)."""
    return window[0].hour >= NIGHT_FROM_HOUR


def sessions_held(product: str, day: date) -> tuple[Window, ...]:
    """The product's windows that open on a date: none on a weekend or holiday, no night before a holiday.

    The live calendar (`is_trading_time`, `next_session_start`, the watchdog's run windows) uses this; features keep
    the weekday rule of `causal_trading_days`, which saved bundles depend on.
    """
    table = exchange_holidays()
    if not table.is_trading_day(day):
        return ()
    windows = sessions_on(product, day)
    return windows if table.has_night_session(day) else tuple(w for w in windows if not is_night_window(w))


# --- one moment: trading day and sessions -----------------------------------------------------------------------


def session_date_and_night(when: datetime) -> tuple[date, bool]:
    """`session_dates` and `is_night` for one bar start in China time (after midnight: the evening's date)."""
    hour = when.hour
    after_midnight = hour < NIGHT_UNTIL_HOUR
    anchor = when.date() - timedelta(days=1) if after_midnight else when.date()
    return anchor, after_midnight or hour >= NIGHT_FROM_HOUR


def _next_weekday(day: date) -> date:
    while day.weekday() >= 5:
        day += timedelta(days=1)
    return day


def anchored_trading_day(anchor: date, night: bool) -> date:
    """`causal_trading_days` for one bar: numpy's busday_offset(anchor, 1 if night else 0, roll="forward")."""
    day = _next_weekday(anchor)
    return _next_weekday(day + timedelta(days=1)) if night else day


def causal_trading_day(when: datetime) -> date:
    """`causal_trading_days` for one time-zone-aware time: a night belongs to the next weekday after its evening."""
    return anchored_trading_day(*session_date_and_night(when.astimezone(CHINA_TZ)))


def is_trading_time(when: datetime, product: str) -> bool:
    """Whether a time-zone-aware time falls inside one of the product's sessions (`sessions_held`: no session on a
    weekend or an exchange holiday, no night before a holiday); the after-midnight part of a night counts too (a
    Friday night's tail is on Saturday)."""
    local = when.astimezone(CHINA_TZ)
    moment, today = local.time(), local.date()
    for start, end in sessions_held(product, today):
        if start <= moment < end or end <= start <= moment:  # a window, or the evening part of a night
            return True
    return any(moment < end <= start for start, end in sessions_held(product, today - timedelta(days=1)))


def next_session_start(when: datetime, product: str) -> datetime:
    """The start of the product's next session at or after `when` (a session already running counts as now)."""
    local = when.astimezone(CHINA_TZ)
    if is_trading_time(local, product):
        return local
    floor = local.replace(second=0, microsecond=0)
    for offset in range(MAX_CLOSURE_DAYS + 9):  # the longest closure and a week always hold a session
        day = floor.date() + timedelta(days=offset)
        for start in sorted(start for start, _ in sessions_held(product, day)):
            opens = datetime.combine(day, start, tzinfo=CHINA_TZ)
            if opens > floor:
                return opens
    raise ConfigError(f"品种 {product} 没有交易时段 / product has no sessions")  # pragma: no cover - a week has one


# --- every bar of a series (vectorised) -------------------------------------------------------------------------


def as_china_index(times: pd.DatetimeIndex | pd.Series | Sequence[datetime]) -> pd.DatetimeIndex:
    """The times as a DatetimeIndex in China time, or DataError when they carry no time zone."""
    import pandas as pd

    index = pd.DatetimeIndex(times)
    if index.tz is None:
        raise DataError("时间必须带时区（Asia/Shanghai）/ datetimes must be time-zone aware")
    return index.tz_convert(CHINA_TZ)


def resolve_vt_symbol(df: pd.DataFrame, vt_symbol: str | None) -> str | None:
    """The explicit vt_symbol, else the one `load_history_data` recorded in `df.attrs`."""
    return vt_symbol if vt_symbol is not None else df.attrs.get("vt_symbol")


def session_dates(index: pd.DatetimeIndex) -> np.ndarray:
    """The date whose hours a bar trades under: the evening's date for night bars after midnight."""
    days = np.asarray(index.tz_localize(None).normalize().values.astype("datetime64[D]"))
    after_midnight = np.asarray(index.hour < NIGHT_UNTIL_HOUR)
    return np.where(after_midnight, days - np.timedelta64(1, "D"), days)


def is_night(index: pd.DatetimeIndex) -> np.ndarray:
    """Bars of a night session (evening or after midnight)."""
    hours = np.asarray(index.hour)
    return (hours >= NIGHT_FROM_HOUR) | (hours < NIGHT_UNTIL_HOUR)


def causal_trading_days(index: pd.DatetimeIndex) -> np.ndarray:
    """Trading day known at the bar's time: night bars belong to the next weekday, day bars to their date."""
    index = as_china_index(index)
    anchor = session_dates(index)
    night = is_night(index)
    following = np.busday_offset(anchor, 1, roll="forward")
    own = np.busday_offset(anchor, 0, roll="forward")
    return np.where(night, following, own).astype("datetime64[D]")


def trading_days(index: pd.DatetimeIndex, max_skip_days: int = 14) -> np.ndarray:
    """Trading day of every bar: a night belongs to the next date that has day bars in the data (holidays
    included), or to the next weekday when the data has none within `max_skip_days`."""
    index = as_china_index(index)
    night = is_night(index)
    anchor = session_dates(index)
    result = causal_trading_days(index)
    day_dates = np.unique(anchor[~night])
    if night.any() and len(day_dates):
        position = np.searchsorted(day_dates, anchor[night], side="right")
        found = position < len(day_dates)
        candidate = day_dates[np.minimum(position, len(day_dates) - 1)]
        close_enough = found & (candidate - anchor[night] <= np.timedelta64(max_skip_days, "D"))
        night_days = result[night]
        night_days[close_enough] = candidate[close_enough]
        result[night] = night_days
    return result


def era_positions(eras: Sequence[SessionEra], index: pd.DatetimeIndex) -> np.ndarray:
    """Which era each bar falls in (by its session date)."""
    starts = np.array([np.datetime64(era.since, "D") for era in eras])
    return np.maximum(np.searchsorted(starts, session_dates(index), side="right") - 1, 0)


def session_progress(eras: Sequence[SessionEra], index: pd.DatetimeIndex) -> np.ndarray:
    """How far each bar is into its trading window (0 at the open), NaN outside the product's sessions."""
    tables = np.stack([era.minute_table() for era in eras])
    minutes = np.asarray(index.hour * 60 + index.minute)
    progress: np.ndarray = tables[era_positions(eras, index), minutes]
    return progress


def progress_since_open(index: pd.DatetimeIndex) -> np.ndarray:
    """Session progress for a product missing from the table: minutes since the last pause, over 240, capped at 1.

    Inferring the windows from the bars themselves would let later bars change earlier features (a leak).
    """
    stamps = np.asarray(index.as_unit("us").asi8) // 10**6  # seconds
    opens = np.r_[True, np.diff(stamps) >= SESSION_GAP_MINUTES * 60] if len(stamps) else np.zeros(0, dtype=bool)
    opened_at = np.maximum.accumulate(np.where(opens, stamps, np.iinfo(np.int64).min)) if len(stamps) else stamps
    return np.minimum((stamps - opened_at) / 60.0 / SESSION_SPAN_MINUTES, 1.0)


def bar_minutes(index: pd.DatetimeIndex) -> int:
    """The bar interval in minutes: the most common step between consecutive bars (1 when unknown)."""
    if len(index) < 2:
        return 1
    steps = np.diff(index.as_unit("us").asi8) // (60 * 10**6)
    steps = steps[steps > 0]
    return int(np.bincount(steps).argmax()) if len(steps) else 1


def session_mask(eras: Sequence[SessionEra], index: pd.DatetimeIndex, minutes: int = 1) -> np.ndarray:
    """Bars that overlap the product's trading windows on a weekday session (no weekend day or evening bars).

    A bar of `minutes` counts when any of its minutes is traded (a 13:00 hour bar holds 13:30-13:59).
    """
    traded = np.stack([~np.isnan(era.minute_table()) for era in eras]).astype(np.int64)
    doubled = np.concatenate([traded, traded], axis=1)  # bars that run past midnight
    cumulative = np.concatenate([np.zeros((len(eras), 1), dtype=np.int64), np.cumsum(doubled, axis=1)], axis=1)
    start = np.asarray(index.hour * 60 + index.minute)
    era = era_positions(eras, index)
    span = min(max(minutes, 1), MINUTES_PER_DAY)
    overlaps = cumulative[era, start + span] - cumulative[era, start] > 0
    weekday = (session_dates(index).astype("datetime64[D]").view("int64") + 3) % 7  # 1970-01-01: Thursday
    mask: np.ndarray = overlaps & (weekday < 5)
    return mask


def add_calendar(df: pd.DataFrame, vt_symbol: str | None = None) -> pd.DataFrame:
    """A copy with `trading_day` (the causal weekday rule), `night` and `day_open` (each trading day's first bar).

    Cleaning must not look ahead, so this uses `causal_trading_days`, not `trading_days` (which reads later day
    bars): China's exchanges hold no night session before a holiday, so the two differ only on unscheduled closures.
    """
    out = df.copy()
    index = as_china_index(out.index)
    days = causal_trading_days(index)
    out["trading_day"] = days.astype("datetime64[s]")
    out["night"] = is_night(index)
    out["day_open"] = np.r_[True, days[1:] != days[:-1]] if len(days) else np.zeros(0, dtype=bool)
    return out


def session_bounds(df: pd.DataFrame, vt_symbol: str | None = None) -> pd.DataFrame:
    """Per trading day and window: first bar, last bar and bar count, as found in the data."""
    import pandas as pd

    vt_symbol = resolve_vt_symbol(df, vt_symbol)
    index = as_china_index(df.index)
    eras = session_eras(vt_symbol, index)
    progress = session_progress(eras, index)
    long_pause = np.diff(index.as_unit("us").asi8) > 60 * 60 * 10**6
    new_window = np.r_[True, np.diff(progress) <= 0] | np.r_[True, long_pause]
    frame = pd.DataFrame({"trading_day": trading_days(index), "window": np.cumsum(new_window), "time": index})
    grouped = frame.groupby(["trading_day", "window"], sort=True)["time"]
    bounds = grouped.agg(first="min", last="max", bars="count").reset_index()
    return bounds.drop(columns="window")


# --- one bar at a time (the online feature state) ---------------------------------------------------------------


class BarCalendar:
    """The calendar of each new bar in constant time, equal to the vectorised helpers on the whole series."""

    def __init__(self, eras: Sequence[SessionEra] | None) -> None:
        self._eras = tuple(eras or ())
        self._tables = [era.minute_table().tolist() for era in self._eras]
        self._last_stamp: int | None = None
        self._opened_at = 0
        self._day: tuple[date, bool, int, date] | None = None  # session date, night -> era, causal trading day

    def update(self, when: datetime) -> tuple[bool, float, date]:
        """Night flag, session progress and causal trading day of the bar starting at `when` (China time).

        Progress is `session_progress` (NaN off-session) for a product with eras, else `progress_since_open`.
        """
        anchor, night = session_date_and_night(when)
        day = self._day
        if day is None or day[0] != anchor or day[1] != night:
            day = self._day = (anchor, night, era_position(self._eras, anchor), anchored_trading_day(anchor, night))
        if self._tables:
            return night, self._tables[day[2]][when.hour * 60 + when.minute], day[3]
        return night, self._progress_since_open(when), day[3]

    def _progress_since_open(self, when: datetime) -> float:
        stamp = int(when.timestamp())
        if self._last_stamp is None or stamp - self._last_stamp >= SESSION_GAP_MINUTES * 60:
            self._opened_at = stamp
        self._last_stamp = stamp
        return min((stamp - self._opened_at) / 60.0 / SESSION_SPAN_MINUTES, 1.0)


# --- the bar data check: missing minutes against the calendar ---------------------------------------------------

DEFAULT_MAX_HOLE_MINUTES: int = 60  # a run of missing session minutes longer than this refuses train / backtest
TRUNCATION_MIN_SESSIONS: int = 20  # a window cut at the same minute this often is a vendor's export limit
ZERO_VOLUME_MIN_BARS: int = 5  # zero-volume runs this long are listed
SHOWN: int = 10  # items of each list a report's lines show


@dataclass(frozen=True)
class Hole:
    """Consecutive expected minutes without bars (sessions' breaks skipped), with their trading days."""

    first: datetime  # the first missing bar start
    last: datetime
    minutes: int
    first_day: date
    last_day: date

    def describe(self) -> str:
        """`2016-03-01 09:00 ~ 2016-03-17 14:59  4,485 min (trading days 2016-03-01 ~ 2016-03-17)`."""
        days = f"{self.first_day}" if self.first_day == self.last_day else f"{self.first_day} ~ {self.last_day}"
        return f"{self.first:%Y-%m-%d %H:%M} ~ {self.last:%Y-%m-%d %H:%M}  {self.minutes:,} 分钟 / min（交易日 {days}）"


@dataclass(frozen=True)
class Truncation:
    """A window whose bars stop early the same way on many dates: a data vendor's cut, not lost bars. Either the bars
    end at another era's close of the same window (an export that applies today's hours to history, like the sample's
    nights cut at 23:00 before 2016-05-03), or they stop at the same minute on TRUNCATION_MIN_SESSIONS dates or more."""

    window: Window
    cut_at: time  # the first missing bar start
    sessions: int
    minutes: int
    first_day: date  # session dates (the evening's date for a night)
    last_day: date
    other_era: bool  # the cut is another era's close of this window

    def describe(self) -> str:
        """`21:00-01:00 在 23:00 截断 315 次（...）` and why it counts as a truncation."""
        span, cut = f"{self.window[0]:%H:%M}-{self.window[1]:%H:%M}", f"{self.cut_at:%H:%M}"
        why = ("另一时期的收盘时间", "another era's close") if self.other_era else ("同一分钟", "the same minute")
        return (
            f"{span} 在 {cut} 截断 {self.sessions:,} 次（{self.first_day} ~ {self.last_day}），缺 {self.minutes:,} 分钟"
            f"（{why[0]}）/ cut at {cut} on {self.sessions:,} sessions ({why[1]})"
        )


@dataclass(frozen=True)
class WindowCount:
    """Expected and missing minutes of one trading window over the checked span (truncations included)."""

    window: Window
    sessions: int
    incomplete: int
    expected: int
    missing: int


@dataclass(frozen=True)
class SessionCount:
    """One session of one trading day with missing minutes (a night under the trading day it belongs to)."""

    trading_day: date
    window: Window
    expected: int
    missing: int
    truncated: int  # of the missing minutes, those of a vendor truncation

    def row(self) -> tuple[str, str, int, int, int]:
        """The CSV row: trading day, window, expected, missing, truncated."""
        window = f"{self.window[0]:%H:%M}-{self.window[1]:%H:%M}"
        return (str(self.trading_day), window, self.expected, self.missing, self.truncated)


@dataclass(frozen=True)
class BarRun:
    """Consecutive bars sharing a flaw (zero volume)."""

    first: datetime
    last: datetime
    bars: int


@dataclass(frozen=True)
class DataCheck:
    """What `check_bars` found: missing minutes against the product's calendar (holidays known), holes, vendor
    truncations, zero-volume runs and bars outside the sessions."""

    vt_symbol: str | None
    bars: int
    first_bar: datetime
    last_bar: datetime
    max_hole_minutes: int
    holidays_known: bool  # the holiday table covers every year of the span
    zero_volume_bars: int
    zero_volume_runs: tuple[BarRun, ...]
    checked: bool = True  # False for bars that are not 1-minute (no minutes counted)
    note: str = ""
    trading_days: int = 0
    complete_days: int = 0
    holidays: tuple[date, ...] = ()  # weekday closures inside the span
    nights_skipped: int = 0  # trading-day evenings without the product's night session (before holidays)
    expected_minutes: int = 0
    missing_minutes: int = 0
    windows: tuple[WindowCount, ...] = ()
    sessions: tuple[SessionCount, ...] = ()  # every session with missing minutes, in time order
    holes: tuple[Hole, ...] = ()
    truncations: tuple[Truncation, ...] = ()
    recurring: tuple[tuple[time, int], ...] = ()  # minutes of day missing (in short holes) on 5+ days, most first
    outside_sessions: int = 0  # bars outside every window of the product (or on a weekend)
    on_closed_days: int = 0  # bars inside a window on a holiday or on an evening without a night session
    examples: tuple[str, ...] = ()  # of both kinds of stray bars

    @property
    def long_holes(self) -> tuple[Hole, ...]:
        """Holes longer than the threshold: these refuse train and backtest unless gaps are allowed."""
        return tuple(hole for hole in self.holes if hole.minutes > self.max_hole_minutes)

    @property
    def passed(self) -> bool:
        """No hole above the threshold."""
        return not self.long_holes

    def summary(self) -> dict[str, object]:
        """Plain JSON facts for a bundle's metadata."""
        return {
            "checked": self.checked,
            "note": self.note,
            "bars": self.bars,
            "first_bar": self.first_bar.isoformat(),
            "last_bar": self.last_bar.isoformat(),
            "trading_days": self.trading_days,
            "complete_days": self.complete_days,
            "holidays": len(self.holidays),
            "nights_skipped": self.nights_skipped,
            "expected_minutes": self.expected_minutes,
            "missing_minutes": self.missing_minutes,
            "holes": len(self.holes),
            "max_hole_minutes": self.max_hole_minutes,
            "long_holes": [
                [f"{h.first:%Y-%m-%d %H:%M}", f"{h.last:%Y-%m-%d %H:%M}", h.minutes] for h in self.long_holes
            ],
            "truncations": [
                [
                    f"{t.window[0]:%H:%M}-{t.window[1]:%H:%M}",
                    f"{t.cut_at:%H:%M}",
                    t.sessions,
                    str(t.first_day),
                    str(t.last_day),
                    "other_era" if t.other_era else "same_minute",
                ]
                for t in self.truncations
            ],
            "recurring": [[f"{minute:%H:%M}", days] for minute, days in self.recurring],
            "zero_volume_bars": self.zero_volume_bars,
            "outside_sessions": self.outside_sessions,
            "on_closed_days": self.on_closed_days,
            "holidays_known": self.holidays_known,
            "passed": self.passed,
        }

    def lines(self) -> list[str]:
        """Human-readable lines, Chinese first."""
        if not self.checked:
            return [f"未检查 / not checked: {self.note}"]
        share = self.missing_minutes / self.expected_minutes if self.expected_minutes else 0.0
        lines = [
            f"K线 {self.bars:,} 根，{self.first_bar:%Y-%m-%d %H:%M} ~ {self.last_bar:%Y-%m-%d %H:%M} / bars",
            f"交易日 {self.trading_days:,}，完整 {self.complete_days:,}；节假日休市 {len(self.holidays):,} 个工作日，"
            f"节前无夜盘 {self.nights_skipped:,} 晚 / trading days, complete; holiday weekdays; nights skipped",
            f"应有 {self.expected_minutes:,} 分钟，缺 {self.missing_minutes:,}（{share:.2%}）/ minutes expected, "
            "missing",
        ]
        if not self.holidays_known:
            lines.append("注意：节假日表未覆盖全部年份，这些年份只按周末判断 / the holiday table misses some years")
        lines += [f"截断（数据商导出限制，不算缺口）/ truncations: {len(self.truncations)}"]
        lines += [f"  {t.describe()}" for t in self.truncations]
        lines.append(
            "经常缺的分钟 / minutes often missing: "
            + ("，".join(f"{minute:%H:%M} 缺 {days} 天" for minute, days in self.recurring[:SHOWN]) or "无 / none")
        )
        long_holes = self.long_holes
        lines.append(
            f"缺口 {len(self.holes):,} 个，超过 {self.max_hole_minutes} 分钟的 {len(long_holes)} 个 / "
            f"holes, {len(long_holes)} longer than {self.max_hole_minutes} min"
        )
        lines += [f"  {hole.describe()}" for hole in long_holes[:SHOWN]]
        if len(long_holes) > SHOWN:
            lines.append(f"  ……另有 {len(long_holes) - SHOWN} 个 / more")
        lines.append(f"零成交量K线 {self.zero_volume_bars:,} 根 / zero-volume bars")
        lines += [
            f"  {run.first:%Y-%m-%d %H:%M} ~ {run.last:%Y-%m-%d %H:%M}  {run.bars} 根连续 / in a row"
            for run in self.zero_volume_runs[:SHOWN]
        ]
        lines.append(
            f"交易时段外 {self.outside_sessions:,} 根，休市日或无夜盘晚上 {self.on_closed_days:,} 根 / bars outside "
            "the sessions, on closed days" + (f"，例如 {', '.join(self.examples)}" if self.examples else "")
        )
        return lines


def _runs(flags: np.ndarray, breaks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Start and stop (exclusive) positions of the runs of True; a run also ends where `breaks` is True."""
    if breaks is None:
        breaks = np.zeros(len(flags), dtype=bool)
    opens = flags & (np.r_[True, ~flags[:-1]] | breaks) if len(flags) else flags
    closes = flags & (np.r_[~flags[1:], True] | np.r_[breaks[1:], True]) if len(flags) else flags
    return np.flatnonzero(opens), np.flatnonzero(closes) + 1


@dataclass(frozen=True)
class _Expected:
    """Every expected bar start (minutes since 1970 on the China clock) and where it belongs."""

    minute: np.ndarray  # int64
    instance: np.ndarray  # running number of the window on its session date
    window: np.ndarray  # position in `windows`
    trading_day: np.ndarray  # datetime64[D]
    windows: list[Window]
    instance_dates: list[date]  # the session date of every instance
    nights_skipped: int

    def within(self, first: int, last: int) -> _Expected:
        """The expected minutes from `first` to `last` (the data's first and last bar)."""
        keep = (self.minute >= first) & (self.minute <= last)
        return replace(
            self,
            minute=self.minute[keep],
            instance=self.instance[keep],
            window=self.window[keep],
            trading_day=self.trading_day[keep],
        )


def _expected_minutes(eras: Sequence[SessionEra], first: date, last: date) -> _Expected:
    """The minutes the product trades on the session dates first..last, holidays and skipped nights left out."""
    table = exchange_holidays()
    windows: list[Window] = []
    parts: list[tuple[np.ndarray, int, int, date]] = []
    dates: list[date] = []
    skipped = 0
    day = first
    while day <= last:
        held: tuple[Window, ...] = ()
        era_windows = eras[era_position(eras, day)].windows
        if table.is_trading_day(day):
            night = table.has_night_session(day)
            skipped += int(not night and any(is_night_window(w) for w in era_windows))
            held = era_windows if night else tuple(w for w in era_windows if not is_night_window(w))
        for window in held:
            if window not in windows:
                windows.append(window)
            opens, closes = (moment.hour * 60 + moment.minute for moment in window)
            start = (day - date(1970, 1, 1)).days * MINUTES_PER_DAY + opens
            length = (closes - opens) % MINUTES_PER_DAY
            belongs = table.next_trading_day(day) if is_night_window(window) else day
            parts.append((np.arange(start, start + length, dtype=np.int64), windows.index(window), len(dates), belongs))
            dates.append(day)
        day += timedelta(days=1)
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return _Expected(empty, empty, empty, empty.astype("datetime64[D]"), windows, dates, skipped)
    sizes = [len(minutes) for minutes, *_ in parts]
    minute = np.concatenate([minutes for minutes, *_ in parts])
    order = np.argsort(minute, kind="stable")
    return _Expected(
        minute[order],
        np.repeat([instance for _, _, instance, _ in parts], sizes)[order],
        np.repeat([window for _, window, _, _ in parts], sizes)[order],
        np.repeat(np.array([belongs for *_, belongs in parts], dtype="datetime64[D]"), sizes)[order],
        windows,
        dates,
        skipped,
    )


def _china_minute(minute: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=CHINA_TZ) + timedelta(minutes=minute)


def _truncations(
    eras: Sequence[SessionEra], expected: _Expected, missing: np.ndarray
) -> tuple[np.ndarray, tuple[Truncation, ...]]:
    """Missing tails of windows cut at another era's close of the same window, or at the same minute on at least
    TRUNCATION_MIN_SESSIONS session dates (`Truncation`)."""
    instance = expected.instance
    new_instance = np.r_[True, instance[1:] != instance[:-1]] if len(instance) else np.zeros(0, dtype=bool)
    last_of_instance = np.r_[new_instance[1:], True] if len(instance) else new_instance
    starts, stops = _runs(missing, new_instance)
    tails = last_of_instance[stops - 1] & ~new_instance[starts]
    keys = expected.window[starts] * MINUTES_PER_DAY + expected.minute[starts] % MINUTES_PER_DAY
    values, counts = np.unique(keys[tails], return_counts=True)
    era_windows = {window for era in eras for window in era.windows}
    truncated = np.zeros(len(missing), dtype=bool)
    found: list[Truncation] = []
    for key, count in zip(values.tolist(), counts.tolist(), strict=True):
        minute = key % MINUTES_PER_DAY
        window, cut = expected.windows[key // MINUTES_PER_DAY], time(minute // 60, minute % 60)
        other_era = (window[0], cut) in era_windows
        if not other_era and count < TRUNCATION_MIN_SESSIONS:
            continue
        chosen = np.flatnonzero(tails & (keys == key))
        for run in chosen.tolist():
            truncated[starts[run] : stops[run]] = True
        dates = [expected.instance_dates[int(instance[starts[run]])] for run in chosen.tolist()]
        minutes = int((stops[chosen] - starts[chosen]).sum())
        found.append(Truncation(window, cut, count, minutes, min(dates), max(dates), other_era))
    return truncated, tuple(found)


def _recurring(expected: _Expected, short: np.ndarray) -> tuple[tuple[time, int], ...]:
    """Minutes of day missing on at least 5 trading days (within short holes), most days first."""
    if not short.any():
        return ()
    clock = expected.minute[short] % MINUTES_PER_DAY
    pairs = np.unique(np.stack([clock, expected.trading_day[short].view("int64")]), axis=1)
    minutes, days = np.unique(pairs[0], return_counts=True)
    order = np.lexsort((minutes, -days))
    return tuple(
        (time(int(m) // 60, int(m) % 60), int(d)) for m, d in zip(minutes[order], days[order], strict=True) if d >= 5
    )[:20]


def _window_counts(expected: _Expected, missing: np.ndarray) -> tuple[WindowCount, ...]:
    counts = []
    for position, window in enumerate(expected.windows):
        mine = expected.window == position
        instances = expected.instance[mine]
        counts.append(
            WindowCount(
                window,
                len(np.unique(instances)),
                len(np.unique(instances[missing[mine]])),
                int(mine.sum()),
                int(missing[mine].sum()),
            )
        )
    return tuple(sorted(counts, key=lambda count: (not is_night_window(count.window), count.window[0])))


def _session_counts(expected: _Expected, missing: np.ndarray, truncated: np.ndarray) -> tuple[SessionCount, ...]:
    """Expected, missing and truncated minutes of every session instance that misses any."""
    instances = len(expected.instance_dates)
    total = np.bincount(expected.instance, minlength=instances)
    lost = np.bincount(expected.instance[missing], minlength=instances)
    cut = np.bincount(expected.instance[truncated], minlength=instances)
    first = np.zeros(instances, dtype=np.int64)
    present, positions = np.unique(expected.instance, return_index=True)
    first[present] = positions
    rows = [
        SessionCount(
            expected.trading_day[first[instance]].astype(date),
            expected.windows[int(expected.window[first[instance]])],
            int(total[instance]),
            int(lost[instance]),
            int(cut[instance]),
        )
        for instance in np.flatnonzero(lost).tolist()
    ]
    return tuple(sorted(rows, key=lambda row: (row.trading_day, not is_night_window(row.window), row.window[0])))


def _zero_volume(index: pd.DatetimeIndex, volume: np.ndarray) -> tuple[int, tuple[BarRun, ...]]:
    zero = volume == 0
    starts, stops = _runs(zero)
    long_runs = stops - starts >= ZERO_VOLUME_MIN_BARS
    runs = tuple(
        BarRun(index[a].to_pydatetime(), index[b - 1].to_pydatetime(), int(b - a))
        for a, b in zip(starts[long_runs].tolist(), stops[long_runs].tolist(), strict=True)
    )
    return int(zero.sum()), runs


def check_bars(
    df: pd.DataFrame, vt_symbol: str | None = None, max_hole_minutes: int = DEFAULT_MAX_HOLE_MINUTES
) -> DataCheck:
    """Count 1-minute bars against the product's calendar (sessions by era, exchange holidays, no night before a
    holiday): missing minutes per window and session, holes (runs of missing minutes across breaks, with their
    trading days), vendor truncations (`Truncation`: not holes), minutes often missing, zero-volume runs and bars
    outside the sessions. Only the span from the first to the last bar is checked.

    It lives beside the calendar it applies; it reads no file but the holiday table, and changes nothing.
    """
    vt_symbol = resolve_vt_symbol(df, vt_symbol)
    if len(df) == 0:
        raise DataError("没有K线可检查 / no bars to check")
    order = np.argsort(np.asarray(as_china_index(df.index).as_unit("s").asi8), kind="stable")
    frame = df.iloc[order]
    index = as_china_index(frame.index)
    first_bar, last_bar = index[0].to_pydatetime(), index[-1].to_pydatetime()
    step = bar_minutes(index)
    volume = frame["volume"].to_numpy(dtype="float64") if "volume" in frame.columns else np.ones(len(frame))
    table = exchange_holidays()
    unchecked = DataCheck(
        vt_symbol,
        len(frame),
        first_bar,
        last_bar,
        max_hole_minutes,
        table.covers(first_bar.date()) and table.covers(last_bar.date()),
        *_zero_volume(index, volume),
    )
    if step != 1:
        return replace(
            unchecked, checked=False, note=f"{step} 分钟K线：只检查 1 分钟K线 / only 1-minute bars are checked"
        )
    eras = session_eras(vt_symbol, index)
    stamps = np.asarray(index.tz_localize(None).as_unit("s").asi8) // 60
    first_day = session_date_and_night(first_bar)[0]
    last_day = session_date_and_night(last_bar)[0]
    expected = _expected_minutes(eras, first_day, last_day).within(int(stamps[0]), int(stamps[-1]))
    missing = ~np.isin(expected.minute, stamps)
    truncated, truncations = _truncations(eras, expected, missing)
    lost = missing & ~truncated
    starts, stops = _runs(lost)
    holes = tuple(
        Hole(
            _china_minute(int(expected.minute[a])),
            _china_minute(int(expected.minute[b - 1])),
            int(b - a),
            expected.trading_day[a].astype(date),
            expected.trading_day[b - 1].astype(date),
        )
        for a, b in zip(starts.tolist(), stops.tolist(), strict=True)
    )
    short = np.zeros(len(lost), dtype=bool)
    for a, b in zip(starts.tolist(), stops.tolist(), strict=True):
        short[a:b] = b - a <= max_hole_minutes
    stray = ~np.isin(stamps, expected.minute)
    in_window = session_mask(eras, index[stray]) if stray.any() else np.zeros(0, dtype=bool)
    days = np.unique(expected.trading_day)
    incomplete = np.unique(expected.trading_day[missing])
    span = (first_day + timedelta(days=n) for n in range((last_day - first_day).days + 1))
    return replace(
        unchecked,
        trading_days=len(days),
        complete_days=len(days) - len(incomplete),
        holidays=tuple(day for day in span if day.weekday() < 5 and day in table.closed),
        nights_skipped=expected.nights_skipped,
        expected_minutes=len(expected.minute),
        missing_minutes=int(missing.sum()),
        windows=_window_counts(expected, missing),
        sessions=_session_counts(expected, missing, truncated),
        holes=holes,
        truncations=truncations,
        recurring=_recurring(expected, short),
        outside_sessions=int((~in_window).sum()),
        on_closed_days=int(in_window.sum()),
        examples=tuple(f"{t:%Y-%m-%d %H:%M}" for t in index[stray][:5]),
    )
