"""数据检查 / the bar data check against the product's calendar: missing minutes per session and day, holidays told
from holes, vendor truncations, zero-volume runs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING

import numpy as np

from config import CHINA_TZ, DataError, Window
from trading_calendar import (
    MINUTES_PER_DAY,
    SessionEra,
    as_china_index,
    bar_minutes,
    era_position,
    exchange_holidays,
    is_night_window,
    resolve_vt_symbol,
    session_date_and_night,
    session_eras,
    session_mask,
)

if TYPE_CHECKING:
    import pandas as pd

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


SESSION_COLUMNS: tuple[str, ...] = ("trading_day", "window", "expected", "missing", "truncated")  # SessionCount.row()


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

    It applies the calendar (`trading_calendar`); it reads no file but the holiday table, and changes nothing.
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


def check_before_use(
    bars: pd.DataFrame, vt_symbol: str, allow_gaps: bool, progress: Callable[[str], None]
) -> DataCheck:
    """The data check that train and backtest run first, its one line given to `progress`: a hole above the default
    limit refuses (DataError, exit 2) unless `allow_gaps`, which gives a warning to `progress` instead."""
    report = check_bars(bars, vt_symbol)
    if not report.checked:
        progress(f"数据检查 / data check: {report.note}")
        return report
    progress(
        f"数据检查 / data check: {report.trading_days:,} 个交易日，缺 {report.missing_minutes:,} 分钟"
        f"（截断 {len(report.truncations)} 种，缺口 {len(report.holes):,} 个，超过 {report.max_hole_minutes} 分钟的 "
        f"{len(report.long_holes)} 个）/ trading days, missing minutes, truncations, holes"
    )
    if report.passed:
        return report
    shown = "; ".join(hole.describe() for hole in report.long_holes[:5])
    if allow_gaps:
        progress(f"警告 / warning: --allow-gaps：数据有超过 {report.max_hole_minutes} 分钟的缺口：{shown}")
        return report
    first, last = f"{report.first_bar:%Y-%m-%d}", f"{report.last_bar:%Y-%m-%d}"
    raise DataError(
        f"{vt_symbol} 的K线有 {len(report.long_holes)} 个超过 {report.max_hole_minutes} 分钟的缺口：{shown}。"
        f"详情：python ai_trading_system.py data --check --vt-symbol {vt_symbol} --start {first} --end {last}；"
        "补齐数据，或确认后加 --allow-gaps / holes above the limit in the bars"
    )
