"""Trading sessions by product and era, exchange holidays, trading days and session masks (China time)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class BarClock:
    """Each bar's wall-clock date and minute of the day, read from one time-zone conversion: the vectorised
    helpers below share it, so a caller that needs several of them converts the index once."""

    dates: np.ndarray  # datetime64[D]: the wall-clock date
    minutes: np.ndarray  # int64: minutes since that date's midnight

    @classmethod
    def of(cls, index: pd.DatetimeIndex) -> BarClock:
        """The clock of `index`'s wall times in its own zone (as `DatetimeIndex.hour` reads them)."""
        wall = np.asarray((index.tz_localize(None) if index.tz is not None else index).values)
        dates = wall.astype("datetime64[D]")
        return cls(dates, (wall.astype("datetime64[m]") - dates).astype("int64"))

    def night(self) -> np.ndarray:
        """Bars of a night session (evening or after midnight)."""
        return (self.minutes >= NIGHT_FROM_HOUR * 60) | (self.minutes < NIGHT_UNTIL_HOUR * 60)

    def session_dates(self) -> np.ndarray:
        """The date whose hours a bar trades under: the evening's date for night bars after midnight."""
        after_midnight = self.minutes < NIGHT_UNTIL_HOUR * 60
        return (self.dates.view("int64") - after_midnight).view("datetime64[D]")

    def causal_trading_days(self) -> np.ndarray:
        """Trading day known at the bar's time: night bars belong to the next weekday, day bars to their date."""
        offsets = self.night().astype(np.int64)
        return np.busday_offset(self.session_dates(), offsets, roll="forward").astype("datetime64[D]")

    def era_positions(self, eras: Sequence[SessionEra]) -> np.ndarray:
        """Which era each bar falls in (by its session date)."""
        starts = np.array([np.datetime64(era.since, "D") for era in eras])
        return np.maximum(np.searchsorted(starts, self.session_dates(), side="right") - 1, 0)

    def session_progress(self, eras: Sequence[SessionEra]) -> np.ndarray:
        """How far each bar is into its trading window (0 at the open), NaN outside the product's sessions."""
        tables = np.stack([era.minute_table() for era in eras])
        progress: np.ndarray = tables[self.era_positions(eras), self.minutes]
        return progress


def session_dates(index: pd.DatetimeIndex) -> np.ndarray:
    """The date whose hours a bar trades under: the evening's date for night bars after midnight."""
    return BarClock.of(index).session_dates()


def is_night(index: pd.DatetimeIndex) -> np.ndarray:
    """Bars of a night session (evening or after midnight)."""
    return BarClock.of(index).night()


def causal_trading_days(index: pd.DatetimeIndex) -> np.ndarray:
    """Trading day known at the bar's time: night bars belong to the next weekday, day bars to their date."""
    return BarClock.of(as_china_index(index)).causal_trading_days()


def trading_days(index: pd.DatetimeIndex, max_skip_days: int = 14) -> np.ndarray:
    """Trading day of every bar: a night belongs to the next date that has day bars in the data (holidays
    included), or to the next weekday when the data has none within `max_skip_days`."""
    clock = BarClock.of(as_china_index(index))
    night = clock.night()
    anchor = clock.session_dates()
    result = clock.causal_trading_days()
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
    return BarClock.of(index).era_positions(eras)


def session_progress(eras: Sequence[SessionEra], index: pd.DatetimeIndex) -> np.ndarray:
    """How far each bar is into its trading window (0 at the open), NaN outside the product's sessions."""
    return BarClock.of(index).session_progress(eras)


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
    clock = BarClock.of(index)
    start = clock.minutes
    era = clock.era_positions(eras)
    span = min(max(minutes, 1), MINUTES_PER_DAY)
    overlaps = cumulative[era, start + span] - cumulative[era, start] > 0
    weekday = (clock.session_dates().astype("datetime64[D]").view("int64") + 3) % 7  # 1970-01-01: Thursday
    mask: np.ndarray = overlaps & (weekday < 5)
    return mask


def add_calendar(df: pd.DataFrame, vt_symbol: str | None = None) -> pd.DataFrame:
    """A copy with `trading_day` (the causal weekday rule), `night` and `day_open` (each trading day's first bar).

    Cleaning must not look ahead, so this uses `causal_trading_days`, not `trading_days` (which reads later day
    bars): China's exchanges hold no night session before a holiday, so the two differ only on unscheduled closures.
    """
    out = df.copy()
    clock = BarClock.of(as_china_index(out.index))
    days = clock.causal_trading_days()
    out["trading_day"] = days.astype("datetime64[s]")
    out["night"] = clock.night()
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
