"""Cleaning, causal features, labels, chronological splits, scaling, windows, online features."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd
from vnpy.trader.object import BarData

from config import CHINA_TZ, ContractSpec, DataError
from trading_calendar import (
    MINUTES_PER_DAY,
    BarCalendar,
    BarClock,
    SessionEra,
    add_calendar,
    anchored_trading_day,
    as_china_index,
    bar_minutes,
    causal_trading_days,
    known_eras,
    progress_since_open,
    resolve_vt_symbol,
    session_date_and_night,
    session_eras,
    session_mask,
)

OHLCV: tuple[str, ...] = ("open", "high", "low", "close", "volume")


# --- cleaning ----------------------------------------------------------------------------------------


@dataclass
class CleaningReport:
    """What clean_data removed or flagged, and why."""

    rows_in: int = 0
    rows_out: int = 0
    was_unsorted: bool = False
    exact_duplicates: int = 0
    conflicting_duplicates: int = 0
    outside_session: int = 0
    outside_examples: list[str] = field(default_factory=list)
    spikes: list[tuple[str, float, float]] = field(default_factory=list)  # time, return, robust z
    roll_gaps: list[tuple[str, float]] = field(default_factory=list)  # time, opening gap
    roll_rule: str = ""
    trading_days: int = 0

    def lines(self) -> list[str]:
        """Human-readable lines, Chinese first."""
        lines = [
            f"输入 {self.rows_in:,} 根K线，保留 {self.rows_out:,} 根，{self.trading_days:,} 个交易日 / "
            f"{self.rows_in:,} bars in, {self.rows_out:,} kept",
            f"乱序：{'是，已排序' if self.was_unsorted else '否'} / out of order: {self.was_unsorted}",
            f"完全重复（已删除）：{self.exact_duplicates:,} / exact duplicates dropped",
            f"同一时间不同数值（保留最后一条）：{self.conflicting_duplicates:,} / conflicting duplicates, last kept",
            f"交易时段外（已删除）：{self.outside_session:,}"
            + (f"，例如 {', '.join(self.outside_examples)}" if self.outside_examples else "")
            + " / outside the product's sessions, dropped",
            f"价格跳变（已标记 spike，未删除）：{len(self.spikes):,} / spikes flagged, kept",
        ]
        lines += [f"  {when}  收益 {ret:+.4f}  稳健 z={z:.1f}" for when, ret, z in self.spikes[:10]]
        lines.append(
            f"换月跳空（已标记 roll_gap，标签不跨越）：{len(self.roll_gaps):,}，规则 {self.roll_rule} / roll gaps"
        )
        lines += [f"  {when}  跳空 {gap:+.4f}" for when, gap in self.roll_gaps[:20]]
        return lines


def _checked_bars(df: pd.DataFrame) -> pd.DataFrame:
    missing = [name for name in OHLCV if name not in df.columns]
    if missing:
        raise DataError(f"K线数据缺少列 {missing}（需要 {list(OHLCV)}）/ bars lack columns {missing}")
    frame = df.set_index("datetime") if "datetime" in df.columns else df
    if not isinstance(frame.index, pd.DatetimeIndex):
        raise DataError("K线数据必须以 datetime 为索引或包含 datetime 列 / bars need a datetime index")
    frame = frame.copy()
    frame.index = as_china_index(frame.index).rename("datetime")
    for name in OHLCV:
        frame[name] = pd.to_numeric(frame[name], errors="coerce").astype("float64")
    prices = frame[list(OHLCV[:4])]
    bad = ~np.isfinite(frame[list(OHLCV)]).all(axis=1) | (prices <= 0).any(axis=1) | (frame["volume"] < 0)
    bad |= frame["high"] < frame[["open", "close", "low"]].max(axis=1)
    bad |= frame["low"] > frame[["open", "close"]].min(axis=1)
    if bad.any():
        shown = ", ".join(f"{t:%Y-%m-%d %H:%M}" for t in frame.index[bad.to_numpy()][:5])
        raise DataError(
            f"{int(bad.sum())} 根K线的价格或成交量无效（缺失、≤0、最高价低于开/收/最低价等），例如 {shown}；"
            "请修正数据源后重新导入 / bars with missing, non-positive or inconsistent prices"
        )
    return frame


def robust_return_z(close: np.ndarray, skip: np.ndarray, window: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """1-bar log returns and their size in units of the trailing median absolute return (past bars only)."""
    returns = np.r_[np.nan, np.diff(np.log(close))]
    usable = pd.Series(np.where(skip, np.nan, np.abs(returns)))
    scale = usable.rolling(window, min_periods=100).median().shift(1).to_numpy() * 1.4826
    z = np.abs(returns) / np.maximum(np.nan_to_num(scale, nan=np.inf), 1e-6)
    return returns, z


ROLL_MIN_GAP: float = 0.02  # an opening gap below this is never a roll
ROLL_SIGMAS: float = 6.0
ROLL_HISTORY: int = 250  # past opening gaps (about a year of trading days) behind the roll threshold
ROLL_MIN_HISTORY: int = 20  # a robust sigma of fewer opening gaps is noise: until then the threshold is min_gap


def roll_threshold(past_gaps: np.ndarray, min_gap: float = ROLL_MIN_GAP, sigmas: float = ROLL_SIGMAS) -> float:
    """max(min_gap, sigmas × the robust sigma (1.4826 × MAD) of the past opening gaps); min_gap with few of them."""
    if len(past_gaps) < ROLL_MIN_HISTORY:
        return min_gap
    sigma = 1.4826 * float(np.median(np.abs(past_gaps - np.median(past_gaps))))
    return max(min_gap, sigmas * sigma)


def causal_roll_gaps(
    day_open: np.ndarray,
    open_: np.ndarray,
    close: np.ndarray,
    min_gap: float = ROLL_MIN_GAP,
    sigmas: float = ROLL_SIGMAS,
    history: int = ROLL_HISTORY,
) -> np.ndarray:
    """Trading-day opens whose gap over the last close exceeds `roll_threshold` of the `history` opening gaps
    before it (the first bar has no gap). `RollDetector` gives the same bar by bar."""
    rows = np.flatnonzero(np.asarray(day_open, dtype=bool))
    rows = rows[rows > 0]
    # math.log, as RollDetector computes it, so both paths see bit-identical gaps
    gaps = np.array([math.log(open_[i] / close[i - 1]) for i in rows.tolist()], dtype="float64")
    marked = np.zeros(len(open_), dtype=bool)
    for n, row in enumerate(rows.tolist()):
        marked[row] = abs(gaps[n]) > roll_threshold(gaps[max(n - history, 0) : n], min_gap, sigmas)
    return marked


def find_roll_gaps(df: pd.DataFrame, day_open: np.ndarray, min_gap: float, sigmas: float) -> tuple[np.ndarray, str]:
    """Probable contract changes: an exact change of a `contract` column, else a roll-sized gap at a trading day's
    open by `causal_roll_gaps` (past opening gaps only, so a prefix of the data marks the same rolls).

    Without a contract column a roll cannot be told from a news gap; both break a label that spans them,
    so every opening gap above the rule is marked.
    """
    if "contract" in df.columns:
        contract = df["contract"].astype(str).to_numpy()
        changed = np.r_[False, contract[1:] != contract[:-1]]
        return changed, "contract 列变化 / contract column changes"
    marked = causal_roll_gaps(
        day_open, df["open"].to_numpy(dtype="float64"), df["close"].to_numpy(dtype="float64"), min_gap, sigmas
    )
    rule = (
        f"|开盘跳空| > max({min_gap:.3f}, {sigmas:g}× 此前至多 {ROLL_HISTORY} 个开盘跳空的稳健 σ) / "
        f"|opening gap| above max({min_gap:.3f}, {sigmas:g} robust sigmas of up to {ROLL_HISTORY} earlier opening "
        f"gaps, from {ROLL_MIN_HISTORY} on)"
    )
    return marked, rule


def roll_exit_flags(segment: np.ndarray) -> np.ndarray:
    """Bars at which a position must be flat before a known roll: the last two bars of every segment that another
    follows (an order sent on the next-to-last bar fills at the last bar's open, before the jump to the new
    contract; nothing may open on the last bar, whose order would fill after it)."""
    values = np.asarray(segment)
    flags = np.zeros(len(values), dtype=bool)
    last = np.flatnonzero(values[1:] != values[:-1])  # the last bar of each segment but the final one
    flags[last] = True
    flags[last[last > 0] - 1] = True
    return flags


def roll_flat_times(frame: pd.DataFrame, segment: np.ndarray | None = None) -> set[int]:
    """Bar start times (epoch seconds) at which the strategy must be flat because a roll gap follows, by the causal
    gap rule of inference (a trader knows the roll calendar ahead): the strategy's `flat_bars` in a backtest and in
    a replay of the same continuous series. `segment`: the frame's `gap_segments`, when the caller has them."""
    flags = roll_exit_flags(gap_segments(frame) if segment is None else segment)
    stamps = np.asarray(pd.DatetimeIndex(frame.index).as_unit("s").asi8)
    return set(stamps[flags].tolist())


def gap_segments(df: pd.DataFrame) -> np.ndarray:
    """Segment number of every bar, a new one at each roll gap by the causal rule (the bars as traded, no
    contract column): what batch inference uses, equal to `RollDetector` bar by bar."""
    index = as_china_index(df.index)
    days = causal_trading_days(index)
    day_open = np.r_[True, days[1:] != days[:-1]] if len(days) else np.zeros(0, dtype=bool)
    rolls = causal_roll_gaps(day_open, df["open"].to_numpy(dtype="float64"), df["close"].to_numpy(dtype="float64"))
    segment: np.ndarray = np.cumsum(rolls)
    return segment


class RollDetector:
    """`causal_roll_gaps` one bar at a time (one median of at most ROLL_HISTORY numbers per trading day)."""

    def __init__(self, min_gap: float = ROLL_MIN_GAP, sigmas: float = ROLL_SIGMAS, history: int = ROLL_HISTORY) -> None:
        self.min_gap, self.sigmas = min_gap, sigmas
        self._gaps: deque[float] = deque(maxlen=history)
        self._session: tuple[date, bool] | None = None
        self._day: date | None = None
        self._prev_close = math.nan

    def update(self, when: datetime, o: float, c: float) -> bool:
        """Feed one bar (start time, open, close); True when it opens a trading day across a roll-sized gap."""
        if when.tzinfo is not CHINA_TZ:
            when = when.astimezone(CHINA_TZ)
        session = session_date_and_night(when)
        day = self._day
        if session != self._session:
            self._session = session
            day = anchored_trading_day(*session)
        rolled = False
        if day != self._day and self._day is not None:
            gap = math.log(o / self._prev_close)
            rolled = abs(gap) > roll_threshold(np.array(self._gaps, dtype="float64"), self.min_gap, self.sigmas)
            self._gaps.append(gap)
        self._day = day
        self._prev_close = c
        return rolled


CLEANING_LOOKAHEAD: dict[str, int] = {"spike": 1}  # bars after t that a cleaning column at t reads


def clean_data(
    df: pd.DataFrame,
    vt_symbol: str | None = None,
    spike_z: float = 10.0,
    spike_revert: float = 0.5,
    roll_min_gap: float = ROLL_MIN_GAP,
    roll_sigmas: float = ROLL_SIGMAS,
) -> tuple[pd.DataFrame, CleaningReport]:
    """Sort, drop duplicates and off-session bars, flag spikes and roll gaps; add the trading calendar.

    A spike is a 1-bar return above `spike_z` trailing robust sigmas that the next bar takes back by at least
    `spike_revert` of its size (a bad print goes out and back; a real jump stays).

    Adds columns `trading_day`, `night`, `day_open`, `spike`, `roll_gap` and `segment` (a new segment starts at
    every roll gap; labels and windows never cross one). Causal: every column at bar t uses bars ≤ t, except
    `spike`, which the bar after confirms (`CLEANING_LOOKAHEAD`); only labels, which look forward anyway, read it.
    """
    vt_symbol = resolve_vt_symbol(df, vt_symbol)
    frame = _checked_bars(df)
    report = CleaningReport(rows_in=len(frame))
    report.was_unsorted = not frame.index.is_monotonic_increasing
    if report.was_unsorted:
        frame = frame.sort_index(kind="stable")
    with_time = frame.reset_index()
    exact = with_time.duplicated(keep="first").to_numpy()
    report.exact_duplicates = int(exact.sum())
    frame = frame[~exact]
    clash = frame.index.duplicated(keep="last")
    report.conflicting_duplicates = int(clash.sum())
    frame = frame[~clash]

    minutes = bar_minutes(frame.index)
    if minutes >= MINUTES_PER_DAY:  # daily bars are stamped by trading day, not by session time
        inside = np.ones(len(frame), dtype=bool)
    else:
        inside = session_mask(session_eras(vt_symbol, frame.index), frame.index, minutes)
    report.outside_session = int((~inside).sum())
    report.outside_examples = [f"{t:%Y-%m-%d %H:%M}" for t in frame.index[~inside][:5]]
    frame = frame[inside]
    if frame.empty:
        raise DataError("清洗后没有K线（全部在交易时段外？）/ no bars left after cleaning")

    frame = add_calendar(frame)
    day_open = frame["day_open"].to_numpy()
    roll, report.roll_rule = find_roll_gaps(frame, day_open, roll_min_gap, roll_sigmas)
    returns, z = robust_return_z(frame["close"].to_numpy(), day_open)
    following = np.r_[returns[1:], np.nan]
    reverts = (np.sign(following) == -np.sign(returns)) & (np.abs(following) >= spike_revert * np.abs(returns))
    spike = (z > spike_z) & reverts & ~day_open
    frame["spike"] = spike
    frame["roll_gap"] = roll
    frame["segment"] = np.cumsum(roll)
    gaps = np.r_[0.0, np.log(frame["open"].to_numpy()[1:] / frame["close"].to_numpy()[:-1])]
    report.spikes = [
        (f"{t:%Y-%m-%d %H:%M}", float(r), float(s))
        for t, r, s in zip(frame.index[spike], returns[spike], z[spike], strict=True)
    ]
    report.roll_gaps = [(f"{t:%Y-%m-%d %H:%M}", float(g)) for t, g in zip(frame.index[roll], gaps[roll], strict=True)]
    report.rows_out = len(frame)
    report.trading_days = int(day_open.sum())
    frame.attrs["vt_symbol"] = vt_symbol
    return frame, report


# --- labels ------------------------------------------------------------------------------------------


LABEL_KINDS: dict[str, str] = {
    "executable": "open[t+1+h] / open[t+1] - 1: decided at bar t's close, entered at the next bar's open, left h bars "
    "later at the open; NaN past the data, across a roll gap, or when the entry or exit bar is a flagged spike",
    "close": "close[t+h] / close[t] - 1 over h bars; NaN past the data or across a roll gap",
    "classify": "1 / -1 / 0: the executable move beyond the contract's round-trip cost at the entry price up, down, "
    "or neither; NaN where the executable label is",
}
DEFAULT_LABEL_KIND: str = "executable"
CLASSIFY: str = "classify"
CLASSES: tuple[int, ...] = (-1, 0, 1)  # down, neither, up


def label_name(horizon: int) -> str:
    return f"fwd_ret_{horizon}"


def _checked_kind(kind: str) -> str:
    if kind not in LABEL_KINDS:
        raise DataError(f"标签类型必须是 {' / '.join(LABEL_KINDS)}，收到 {kind!r} / unknown label kind")
    return kind


def label_reach(horizon: int, kind: str = DEFAULT_LABEL_KIND) -> int:
    """How many bars after t the label at t reads: h for close-to-close; h+2 for the executable label, whose exit
    bar t+1+h is known not to be a spike only at t+2+h (a spike is confirmed by the bar after it)."""
    return horizon if _checked_kind(kind) == "close" else horizon + 2


def make_labels(
    df: pd.DataFrame, horizon: int, kind: str = DEFAULT_LABEL_KIND, spec: ContractSpec | None = None
) -> pd.Series:
    """The forward return of `LABEL_KINDS[kind]` at every bar; NaN where it would read past the data, cross a roll
    gap (bars t .. t+1+h not in one `segment`) or, for the executable label, trade at a `spike` bar. The classify
    label needs the contract (`spec`) whose costs it compares the move with (`make_class_labels`)."""
    if horizon < 1:
        raise DataError(f"预测周期必须 ≥ 1，收到 {horizon} / horizon must be at least 1")
    if _checked_kind(kind) == CLASSIFY:
        if spec is None:
            raise DataError("classify 标签需要合约成本（spec）/ the classify label needs the contract's costs")
        return make_class_labels(df, horizon, spec)
    reach = label_reach(horizon, kind)
    rows = len(df)
    segment = df["segment"].to_numpy() if "segment" in df.columns else np.zeros(rows, dtype=np.int64)
    label = np.full(rows, np.nan)
    if rows > reach:
        if kind == "close":
            close = df["close"].to_numpy(dtype="float64")
            same = segment[horizon:] == segment[:-horizon]
            label[:-horizon] = np.where(same, close[horizon:] / close[:-horizon] - 1.0, np.nan)
        else:
            last = rows - reach  # labels at rows 0 .. last-1; entry bar t+1, exit bar t+1+h
            opens = df["open"].to_numpy(dtype="float64")
            entry, exit_ = opens[1 : last + 1], opens[horizon + 1 : last + horizon + 1]
            usable = segment[:last] == segment[horizon + 1 : last + horizon + 1]
            if "spike" in df.columns:
                spike = df["spike"].to_numpy(dtype=bool)
                usable &= ~spike[1 : last + 1] & ~spike[horizon + 1 : last + horizon + 1]
            label[:last] = np.where(usable, exit_ / entry - 1.0, np.nan)
    return pd.Series(label, index=df.index, name=label_name(horizon))


def entry_prices(df: pd.DataFrame, kind: str = DEFAULT_LABEL_KIND) -> np.ndarray:
    """The price each label's trade enters at: the next bar's open (executable; NaN at the last bar) or the close."""
    if _checked_kind(kind) == "close":
        return np.asarray(df["close"], dtype="float64")
    opens = np.asarray(df["open"], dtype="float64")
    return np.append(opens[1:], np.nan)


def make_class_labels(df: pd.DataFrame, horizon: int, spec: ContractSpec) -> pd.Series:
    """1 where the executable move over `horizon` beats the contract's round-trip cost at its entry price long, -1
    where it does short, 0 where neither; NaN where the executable label is (past the data, a roll, a spike)."""
    gross = make_labels(df, horizon, "executable").to_numpy()
    cost = spec.round_trip_return(entry_prices(df, "executable"))
    with np.errstate(invalid="ignore"):
        classes = np.where(gross > cost, 1.0, np.where(-gross > cost, -1.0, 0.0))
    return pd.Series(np.where(np.isnan(gross), np.nan, classes), index=df.index, name=label_name(horizon))


def make_net_labels(
    df: pd.DataFrame, horizon: int, spec: ContractSpec, kind: str = DEFAULT_LABEL_KIND, direction: int = 1
) -> pd.Series:
    """What a long (direction 1) or short (-1) trade nets after the contract's round-trip cost at its entry price."""
    if direction not in (1, -1):
        raise DataError(f"方向必须是 1（多）或 -1（空），收到 {direction} / direction must be 1 or -1")
    gross = make_labels(df, horizon, kind)
    cost = spec.round_trip_return(entry_prices(df, kind))
    return pd.Series(direction * gross.to_numpy() - cost, index=df.index, name=f"net_{gross.name}")


# --- the feature set (batch) -------------------------------------------------------------------------

RETURN_HORIZONS: tuple[int, ...] = (1, 5, 15, 30, 60)
FEATURE_WARMUP: int = 60  # rows 0..59 are NaN; row 60 on is complete
FEATURE_VERSION: int = 1  # bump when any feature's definition changes: saved models then refuse to load
FEATURE_NAMES: tuple[str, ...] = (
    *(f"ret_{n}" for n in RETURN_HORIZONS),
    "vol_15",
    "vol_60",
    "range_hl",
    "park_vol_30",
    "atr_14",
    "gap_open",
    "body",
    "upper_wick",
    "lower_wick",
    "sma_ratio_10",
    "sma_ratio_30",
    "sma_ratio_60",
    "sma_cross_10_60",
    "ema_ratio_20",
    "macd",
    "macd_signal",
    "macd_diff",
    "efficiency_20",
    "rsi_6",
    "rsi_14",
    "stoch_k_14",
    "stoch_d_14",
    "tsi",
    "bb_pband_20",
    "bb_width_20",
    "volume_dev_30",
    "volume_z_60",
    "cmf_20",
    "mfi_14",
    "flow_imbalance_20",
    "tod_sin",
    "tod_cos",
    "night",
    "session_progress",
    "day_return",
    "day_range_pos",
)


MTF_TIMEFRAMES: tuple[int, ...] = (5, 15, 60)  # minutes per aggregate bar
MTF_PERIODS: int = 20  # aggregate bars per look-back: 100, 300 and 1,200 one-minute bars
MTF_DAYS: int = 5  # completed trading days in the daily look-back (the daily return std needs one day more)
MTF_VERSION: int = 1  # bump when a multi-timeframe column's definition changes
MTF_STEMS: tuple[str, ...] = ("mtf_ret", "mtf_vol", "mtf_eff", "mtf_pos", "mtf_range", "mtf_vratio")
DAILY_NAMES: tuple[str, ...] = (
    "d_prev_ret",
    "d_ret_1",
    f"d_ret_{MTF_DAYS}",
    f"d_vol_{MTF_DAYS}",
    f"d_pos_{MTF_DAYS}",
    f"d_range_{MTF_DAYS}",
    "d_range_rel",
    "d_volume_ratio",
)
MTF_NAMES: tuple[str, ...] = (*(f"{stem}_{m}m" for m in MTF_TIMEFRAMES for stem in MTF_STEMS), *DAILY_NAMES)
MTF_DEFINITIONS: str = (
    f"per timeframe m of {MTF_TIMEFRAMES} minutes, over the last {MTF_PERIODS} m-minute steps (L = {MTF_PERIODS}·m "
    "one-minute bars): mtf_ret log return over L; mtf_vol std of the m-bar log returns / √m; mtf_eff |their sum| / "
    "the sum of their sizes; mtf_pos the close's place in the L bars' high-low range; mtf_range log(high / low) "
    "over L; mtf_vratio log((volume of the last m bars + 1) / (mean volume per m bars over L + 1)). Daily, from "
    f"completed trading days (the calendar's rule) and the current day so far: the last completed day's return, "
    f"the return since the last completed close and since the close {MTF_DAYS} days back, the std of the last "
    f"{MTF_DAYS} daily returns, the close's place in and log size of the range of the last {MTF_DAYS} days plus "
    f"today, today's range over the mean daily range of the last {MTF_DAYS} days, and log((today's volume + 1) / "
    f"(mean daily volume of the last {MTF_DAYS} days + 1))"
)
BASE_SET, MTF_SET = "base", "mtf"
FEATURE_SETS: dict[str, tuple[str, ...]] = {BASE_SET: FEATURE_NAMES, MTF_SET: (*FEATURE_NAMES, *MTF_NAMES)}
FEATURE_SET_VERSIONS: dict[str, int] = {BASE_SET: FEATURE_VERSION, MTF_SET: MTF_VERSION}
DEFAULT_FEATURE_SET: str = BASE_SET
ALL_FEATURE_NAMES: tuple[str, ...] = FEATURE_SETS[MTF_SET]
_BASE_COLUMNS: frozenset[str] = frozenset(FEATURE_NAMES)


def checked_feature_set(name: str) -> str:
    """`name` when it is a known feature set, else DataError."""
    if name not in FEATURE_SETS:
        raise DataError(f"特征集必须是 {' / '.join(FEATURE_SETS)}，收到 {name!r} / unknown feature set")
    return name


def _safe_ratio(num: np.ndarray, den: np.ndarray, default: float) -> np.ndarray:
    """num / den, with `default` where den is 0 (and NaN kept where either is NaN)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out: np.ndarray = num / den
    out[den == 0] = default
    return out


def _lagged(values: np.ndarray, lag: int) -> np.ndarray:
    """values[t - lag] at every t (NaN before the data)."""
    out = np.full(len(values), np.nan)
    if lag == 0:
        return values.astype("float64", copy=True)
    if lag < len(values):
        out[lag:] = values[:-lag]
    return out


def _window_sum(values: np.ndarray, window: int) -> np.ndarray:
    """The sum of each bar's last `window` values taken oldest first, as the online state's `sum` takes it (NaN until
    there are `window`, and where one is NaN); for whole numbers (lots, prices in whole ticks) the difference of one
    running sum, which is then exact and so the same."""
    rows = len(values)
    out = np.full(rows, np.nan)
    if rows < window:
        return out
    count = rows - window + 1
    sums = out[window - 1 :]
    whole = bool((values == np.trunc(values)).all())  # False where a value is NaN
    if whole and window > 8 and float(np.abs(values).max()) * rows < 2.0**53:
        total = np.cumsum(values)
        sums[0] = total[window - 1]
        np.subtract(total[window:], total[:-window], out=sums[1:])
        return out
    sums[:] = values[:count]
    for k in range(1, window):
        np.add(sums, values[k : k + count], out=sums)
    return out


def _window_mean(values: np.ndarray, window: int) -> np.ndarray:
    """The mean of each bar's last `window` values (`_window_sum` / window)."""
    return _window_sum(values, window) / window


def _window_std(values: np.ndarray, window: int, total: np.ndarray | None = None) -> np.ndarray:
    """Sample std (ddof 1) of each bar's last `window` values from their sum (`total`, when the caller has it) and
    their sum of squares, as the online state's `_sample_std` takes them; NaN until there are `window`."""
    total = _window_sum(values, window) if total is None else total
    squares = _window_sum(values * values, window)
    with np.errstate(invalid="ignore"):
        std: np.ndarray = np.sqrt(np.maximum((squares - total * total / window) / (window - 1), 0.0))
    return std


def _window_spread(values: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std of each bar's last `window` values (NaN before); the std in two passes, the squared
    deviations from the window's own mean summed oldest first, as the online state sums them."""
    rows = len(values)
    mean, std = _window_mean(values, window), np.full(rows, np.nan)
    if rows >= window:
        count = rows - window + 1
        centre, squares, work = mean[window - 1 :], np.zeros(count), np.empty(count)
        for k in range(window):
            np.subtract(values[k : k + count], centre, out=work)
            np.add(squares, np.multiply(work, work, out=work), out=squares)
        std[window - 1 :] = np.sqrt(squares / window)
    return mean, std


def _window_extremes(values: np.ndarray, windows: Sequence[int], largest: bool) -> dict[int, np.ndarray]:
    """The max (`largest`) or min of each bar's last w values for each w in `windows`, NaN until there are w or where
    one is NaN; exact: spans doubled by one comparison each, then two overlapping spans per window."""
    pick = np.maximum if largest else np.minimum
    rows = len(values)
    spans, span = {1: values}, 1
    while span * 2 <= max(windows):
        part, wider = spans[span], np.empty(rows)
        wider[:span] = part[:span]  # rows before a full span: never read below
        pick(part[span:], part[:-span], out=wider[span:])
        span *= 2
        spans[span] = wider
    out: dict[int, np.ndarray] = {}
    for window in windows:
        result = np.full(rows, np.nan)
        if rows >= window:
            span = 1 << (window.bit_length() - 1)  # the widest doubled span within the window: two of them cover it
            part = spans[span]
            pick(part[window - 1 :], part[span - 1 : rows - window + span], out=result[window - 1 :])
        out[window] = result
    return out


def _ewm(values: np.ndarray, min_periods: int, span: float | None = None, alpha: float | None = None) -> np.ndarray:
    """pandas' `ewm(..., adjust=False).mean()` (what `ta` calls for its EMA, MACD, RSI and TSI)."""
    mean: np.ndarray = (
        pd.Series(values, copy=False).ewm(span=span, alpha=alpha, min_periods=min_periods, adjust=False).mean()
    ).to_numpy()
    return mean


def _rsi(change: np.ndarray, window: int) -> np.ndarray:
    """`ta`'s RSI from the close's changes (the first, NaN, counts as no move), its arithmetic step by step."""
    up = _ewm(np.fmax(change, 0.0), window, alpha=1 / window)
    down = _ewm(-np.fmin(change, 0.0), window, alpha=1 / window)
    with np.errstate(divide="ignore", invalid="ignore"):
        rsi: np.ndarray = np.where(down == 0, 100, 100 - (100 / (1 + up / down)))
    return rsi


@dataclass(frozen=True)
class _Bars:
    """What every batch feature reads, computed once: the prices, the China clock and the causal trading days."""

    o: np.ndarray
    h: np.ndarray
    lo: np.ndarray
    c: np.ndarray
    v: np.ndarray
    log_c: np.ndarray
    index: pd.DatetimeIndex  # in China time
    clock: BarClock
    day: np.ndarray  # each bar's trading day number: 0, 1, ... (`causal_trading_days`)
    starts: np.ndarray  # each day's first row
    day_high: np.ndarray  # the day's high so far
    day_low: np.ndarray  # the day's low so far

    @classmethod
    def of(cls, df: pd.DataFrame) -> _Bars:
        """The arrays of `df`'s bars."""
        o, h, lo, c, v = (df[name].to_numpy(dtype="float64") for name in OHLCV)
        index = as_china_index(df.index)
        clock = BarClock.of(index)
        days = clock.causal_trading_days()
        new_day = np.r_[True, days[1:] != days[:-1]] if len(days) else np.zeros(0, dtype=bool)
        day = np.cumsum(new_day) - 1
        high = pd.Series(h, copy=False).groupby(day).cummax().to_numpy()
        low = pd.Series(lo, copy=False).groupby(day).cummin().to_numpy()
        return cls(o, h, lo, c, v, np.log(c), index, clock, day, np.flatnonzero(new_day), high, low)


def build_features(
    df: pd.DataFrame, vt_symbol: str | None = None, feature_set: str = DEFAULT_FEATURE_SET
) -> pd.DataFrame:
    """The columns of `FEATURE_SETS[feature_set]` for every bar, causal: the base set, NaN only in the first
    FEATURE_WARMUP rows; the multi-timeframe set adds `build_mtf_features`, NaN until their look-backs fill."""
    names = FEATURE_SETS[checked_feature_set(feature_set)]
    bars = _Bars.of(df)
    columns = _base_columns(bars, resolve_vt_symbol(df, vt_symbol))
    if feature_set == MTF_SET:
        columns.update(_mtf_columns(bars))
    return _frame(columns, names, df.index)


def build_mtf_features(df: pd.DataFrame) -> pd.DataFrame:
    """The multi-timeframe columns (`MTF_DEFINITIONS`) for every bar, causal; NaN until their look-back is full."""
    return _frame(_mtf_columns(_Bars.of(df)), MTF_NAMES, df.index)


def _frame(columns: Mapping[str, np.ndarray], names: Sequence[str], index: pd.Index) -> pd.DataFrame:
    """The named columns as one frame; the base set's warm-up rows NaN."""
    block = np.empty((len(names), len(index)))  # one row per column: its transpose is pandas' own block layout
    for row, name in enumerate(names):
        block[row] = columns[name]
        if name in _BASE_COLUMNS:
            block[row, :FEATURE_WARMUP] = np.nan
    return pd.DataFrame(block.T, index=index, columns=list(names), copy=False)


def _base_columns(bars: _Bars, vt_symbol: str | None) -> dict[str, np.ndarray]:
    """The curated causal base feature set (`FEATURE_NAMES`) for every bar, warm-up rows not yet blanked."""
    o, h, lo, c, v, log_c = bars.o, bars.h, bars.lo, bars.c, bars.v, bars.log_c
    prev_c = _lagged(c, 1)
    change = c - prev_c
    ret_1 = log_c - _lagged(log_c, 1)
    out: dict[str, np.ndarray] = {}
    for n in RETURN_HORIZONS:
        out[f"ret_{n}"] = log_c - _lagged(log_c, n)
    out["vol_15"] = _window_std(ret_1, 15)
    out["vol_60"] = _window_std(ret_1, 60)
    range_hl = np.log(h / lo)
    out["range_hl"] = range_hl
    out["park_vol_30"] = np.sqrt(_window_mean(range_hl**2, 30) / (4 * math.log(2)))
    true_range = np.fmax(h, prev_c) - np.fmin(lo, prev_c)
    out["atr_14"] = _ewm(true_range, 14, alpha=1 / 14) / c
    out["gap_open"] = np.log(o / prev_c)
    out["body"] = np.log(c / o)
    out["upper_wick"] = (h - np.maximum(o, c)) / c
    out["lower_wick"] = (np.minimum(o, c) - lo) / c

    sma = {n: _window_mean(c, n) for n in (10, 30, 60)}
    for n in (10, 30, 60):
        out[f"sma_ratio_{n}"] = c / sma[n] - 1
    out["sma_cross_10_60"] = sma[10] / sma[60] - 1
    out["ema_ratio_20"] = c / _ewm(c, 20, span=20) - 1
    macd = _ewm(c, 12, span=12) - _ewm(c, 26, span=26)
    signal = _ewm(macd, 9, span=9)
    out["macd"] = macd / c
    out["macd_signal"] = signal / c
    out["macd_diff"] = (macd - signal) / c
    path = _window_sum(np.abs(change), 20)
    move = np.abs(c - _lagged(c, 20))
    out["efficiency_20"] = _safe_ratio(move, path, 0.0)

    out["rsi_6"] = _rsi(change, 6)
    out["rsi_14"] = _rsi(change, 14)
    extremes_high = _window_extremes(h, (14,), largest=True)
    extremes_low = _window_extremes(lo, (14,), largest=False)
    highest, lowest = extremes_high[14], extremes_low[14]
    stoch_k = _safe_ratio(100 * (c - lowest), highest - lowest, 50.0)
    out["stoch_k_14"] = stoch_k
    out["stoch_d_14"] = _window_mean(stoch_k, 3)
    smooth = _ewm(_ewm(change, 25, span=25), 13, span=13)
    smooth_abs = _ewm(_ewm(np.abs(change), 25, span=25), 13, span=13)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["tsi"] = np.nan_to_num(smooth / smooth_abs, nan=0.0)
    mavg, std = _window_spread(c, 20)
    flat = std <= 1e-9 * np.abs(mavg)
    with np.errstate(divide="ignore", invalid="ignore"):
        pband, width = (c - (mavg - 2 * std)) / (4 * std), 4 * std / mavg
    pband[flat], width[flat] = 0.5, 0.0
    out["bb_pband_20"], out["bb_width_20"] = pband, width

    log_v = np.log1p(v)
    out["volume_dev_30"] = log_v - _window_mean(log_v, 30)
    total_60 = _window_sum(log_v, 60)
    std_60 = _window_std(log_v, 60, total_60)
    with np.errstate(divide="ignore", invalid="ignore"):
        volume_z = (log_v - total_60 / 60) / std_60
    volume_z[std_60 < ZERO_STD] = 0.0
    out["volume_z_60"] = volume_z
    spread = h - lo
    with np.errstate(divide="ignore", invalid="ignore"):
        money_flow = np.where(spread == 0, 0.0, ((c - lo) - (h - c)) / spread) * v
    volume_20 = _window_sum(v, 20)
    out["cmf_20"] = _safe_ratio(_window_sum(money_flow, 20), volume_20, 0.0)
    typical = (h + lo + c) / 3
    direction = np.sign(typical - _lagged(typical, 1))
    flow = typical * v
    positive = _window_sum(np.where(direction > 0, flow, 0.0), 14)
    negative = _window_sum(np.where(direction < 0, flow, 0.0), 14)
    positive[:14] = np.nan  # the first typical-price change is at row 1
    out["mfi_14"] = _safe_ratio(100 * positive, positive + negative, 50.0)
    signed = np.sign(change) * v
    out["flow_imbalance_20"] = _safe_ratio(_window_sum(signed, 20), volume_20, 0.0)

    angle = 2 * math.pi * np.arange(MINUTES_PER_DAY, dtype="float64") / MINUTES_PER_DAY  # one per minute of the day
    out["tod_sin"] = np.sin(angle)[bars.clock.minutes]
    out["tod_cos"] = np.cos(angle)[bars.clock.minutes]
    out["night"] = bars.clock.night().astype("float64")
    eras = known_eras(vt_symbol)
    if eras is None:
        out["session_progress"] = progress_since_open(bars.index)
    else:  # off-session bars (uncleaned data) sit at the window's end
        out["session_progress"] = np.nan_to_num(bars.clock.session_progress(eras), nan=1.0)
    out["day_return"] = np.log(c / o[bars.starts][bars.day])
    out["day_range_pos"] = _safe_ratio(c - bars.day_low, bars.day_high - bars.day_low, 0.5)
    return out


# --- the multi-timeframe feature set (batch) ---------------------------------------------------------


def _steps_stats(
    steps: Sequence[np.ndarray], root: float, sizes_of: Sequence[np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Std (ddof 1) of the steps / root, and |sum| / sum of |step| (`sizes_of`: the steps' sizes, when the caller
    has them); summed oldest first, as the online state does."""
    total, sizes, squares, work = (np.zeros(len(steps[0])) for _ in range(4))
    for k, step in enumerate(steps):
        np.add(total, step, out=total)
        np.add(sizes, np.abs(step, out=work) if sizes_of is None else sizes_of[k], out=sizes)
    mean = total / len(steps)
    for step in steps:
        np.subtract(step, mean, out=work)
        np.add(squares, np.multiply(work, work, out=work), out=squares)
    std = np.sqrt(squares / (len(steps) - 1)) / root
    return std, _safe_ratio(np.abs(total), sizes, 0.0)


def _every_mth(returns: np.ndarray, m: int) -> list[np.ndarray]:
    """The MTF_PERIODS m-bar returns ending at each bar, every m-th one back, oldest first: views of one padded
    array (returns[t - (MTF_PERIODS - 1 - k) m] for k = 0 ..)."""
    rows = len(returns)
    padded = np.concatenate([np.full((MTF_PERIODS - 1) * m, np.nan), returns])
    return [padded[k * m : k * m + rows] for k in range(MTF_PERIODS)]


def _range_place(c: np.ndarray, high: np.ndarray, low: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The close's place in [low, high] (0.5 on a flat range) and log(high / low)."""
    return _safe_ratio(c - low, high - low, 0.5), np.log(high / low)


def _mtf_columns(bars: _Bars) -> dict[str, np.ndarray]:
    """The multi-timeframe columns (`MTF_NAMES`) for every bar, NaN until their look-back is full."""
    h, lo, c, v, log_c = bars.h, bars.lo, bars.c, bars.v, bars.log_c
    cum_v = np.r_[0.0, np.cumsum(v)]  # volume before bar t: cum_v[t]; through bar t: cum_v[t + 1]
    through = cum_v[1:]
    spans = [m * MTF_PERIODS for m in MTF_TIMEFRAMES]
    highs = _window_extremes(h, spans, largest=True)
    lows = _window_extremes(lo, spans, largest=False)
    out: dict[str, np.ndarray] = {}
    for m, span in zip(MTF_TIMEFRAMES, spans, strict=True):
        returns = log_c - _lagged(log_c, m)
        vol, efficiency = _steps_stats(_every_mth(returns, m), math.sqrt(m), _every_mth(np.abs(returns), m))
        place, width = _range_place(c, highs[span], lows[span])
        recent = through - _lagged(cum_v, m)[1:]
        mean = (through - _lagged(cum_v, span)[1:]) / MTF_PERIODS
        columns = {
            "mtf_ret": log_c - _lagged(log_c, span),
            "mtf_vol": vol,
            "mtf_eff": efficiency,
            "mtf_pos": place,
            "mtf_range": width,
            "mtf_vratio": np.log((recent + 1) / (mean + 1)),
        }
        for stem, values in columns.items():  # each a fresh array: the rows before a full look-back become NaN
            values[:span] = np.nan
            out[f"{stem}_{m}m"] = values
    out.update(_daily_columns(bars, cum_v))
    return out


def _daily_columns(bars: _Bars, cum_v: np.ndarray) -> dict[str, np.ndarray]:
    """The daily columns: per trading day (the calendar's rule), from completed days and the day so far."""
    c, log_c, n = bars.c, bars.log_c, MTF_DAYS
    if len(c) == 0:
        return {name: np.zeros(0) for name in DAILY_NAMES}
    day_of, starts = bars.day, bars.starts
    ends = np.r_[starts[1:] - 1, len(c) - 1]
    high_so_far, low_so_far = bars.day_high, bars.day_low
    day_log_close = log_c[ends]
    day_high, day_low = high_so_far[ends], low_so_far[ends]
    day_range = np.log(day_high / day_low)
    start_volume = cum_v[starts]  # volume before each day

    # per day: values of the days before it (_lagged by days), NaN where there are too few
    close_back = {k: _lagged(day_log_close, k) for k in range(1, n + 2)}
    prev_ret = close_back[1] - close_back[2]
    steps = [close_back[n - k] - close_back[n + 1 - k] for k in range(n)]  # the last n daily returns, oldest first
    day_vol, _ = _steps_stats(steps, 1.0)
    range_total = np.zeros(len(starts))
    for k in range(n, 0, -1):
        range_total = range_total + _lagged(day_range, k)
    past_high = _lagged(_window_extremes(day_high, (n,), largest=True)[n], 1)
    past_low = _lagged(_window_extremes(day_low, (n,), largest=False)[n], 1)
    past_volume = (start_volume - _lagged(start_volume, n)) / n

    high = np.fmax(past_high[day_of], high_so_far)
    low = np.fmin(past_low[day_of], low_so_far)
    known = ~np.isnan(past_high[day_of])
    place, width = _range_place(c, high, low)
    today = cum_v[1:] - start_volume[day_of]
    return {
        "d_prev_ret": prev_ret[day_of],
        "d_ret_1": log_c - close_back[1][day_of],
        f"d_ret_{n}": log_c - close_back[n][day_of],
        f"d_vol_{n}": day_vol[day_of],
        f"d_pos_{n}": np.where(known, place, np.nan),
        f"d_range_{n}": np.where(known, width, np.nan),
        "d_range_rel": _safe_ratio(np.log(high_so_far / low_so_far), (range_total / n)[day_of], 0.0),
        "d_volume_ratio": np.log((today + 1) / (past_volume[day_of] + 1)),
    }


# --- feature selection, scaling ----------------------------------------------------------------------


def select_features(features: pd.DataFrame, labels: pd.Series, count: int, max_correlation: float = 0.95) -> list[str]:
    """Pick `count` features by absolute rank IC with the label, skipping near-duplicates; fit on training rows only."""
    usable = features.notna().all(axis=1) & labels.notna()
    if int(usable.sum()) < 100:
        raise DataError(f"训练样本太少（{int(usable.sum())} 行）无法选择特征 / too few rows to select features")
    if count > features.shape[1]:
        raise DataError(f"features_count={count} 超过可用特征数 {features.shape[1]} / more features asked than exist")
    ranks = features[usable].rank().to_numpy()
    target = labels[usable].rank().to_numpy()
    stds = ranks.std(axis=0)
    live = stds > 0
    ic = np.zeros(ranks.shape[1])
    correlation = np.eye(ranks.shape[1])
    if live.any():
        both = np.corrcoef(np.column_stack([ranks[:, live], target]), rowvar=False)
        ic[live] = both[-1, :-1]
        correlation[np.ix_(live, live)] = both[:-1, :-1]
    order = np.argsort(-np.abs(ic), kind="stable")
    chosen: list[int] = []
    for position in order:
        if not live[position]:
            continue
        if chosen and np.any(np.abs(correlation[position, chosen]) > max_correlation):
            continue
        chosen.append(int(position))
        if len(chosen) == count:
            break
    for position in order:  # top up with the best-ranked skipped ones if the correlation rule left too few
        if len(chosen) == count:
            break
        if int(position) not in chosen:
            chosen.append(int(position))
    columns = list(features.columns)
    return [columns[i] for i in sorted(chosen)]


@dataclass(frozen=True)
class Scaler:
    """Standardisation fitted on the training rows only; saved with the model as plain JSON."""

    names: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]

    @classmethod
    def fit(cls, train: pd.DataFrame) -> Scaler:
        values = train.to_numpy(dtype="float64")
        if not np.isfinite(values).all():
            raise DataError("拟合标准化的训练数据含 NaN/inf（先去掉预热行）/ scaler input has NaN or inf")
        std = values.std(axis=0)
        std = np.where(std > 0, std, 1.0)
        return cls(tuple(train.columns), tuple(values.mean(axis=0).tolist()), tuple(std.tolist()))

    def transform(self, values: np.ndarray) -> np.ndarray:
        """Scaled float32 copy of rows (…, features) in `names` order."""
        mean = np.asarray(self.mean)
        scale = np.asarray(self.scale)
        # row-major: windows are gathered by rows, and a column-major matrix makes every batch copy 4x slower
        return np.ascontiguousarray((np.asarray(values, dtype="float64") - mean) / scale, dtype=np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "mean": list(self.mean), "scale": list(self.scale)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scaler:
        names, mean, scale = data["names"], data["mean"], data["scale"]
        if not (len(names) == len(mean) == len(scale)) or any(s <= 0 for s in scale):
            raise DataError("标准化参数不一致 / inconsistent scaler data")
        return cls(tuple(names), tuple(float(x) for x in mean), tuple(float(x) for x in scale))


# --- chronological splits and windows ----------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """Row ranges [start, stop) of train, validation and test, with `gap` purged rows between them."""

    train: tuple[int, int]
    valid: tuple[int, int]
    test: tuple[int, int]
    gap: int

    def parts(self) -> dict[str, tuple[int, int]]:
        return {"train": self.train, "valid": self.valid, "test": self.test}

    def ranges(self, index: pd.Index) -> dict[str, tuple[str, str]]:
        """First and last time of each part, for the model's metadata."""
        return {name: (str(index[a]), str(index[b - 1])) for name, (a, b) in self.parts().items() if b > a}


def split_chronological(
    df: pd.DataFrame | int,
    train: float = 0.7,
    valid: float = 0.15,
    test: float = 0.15,
    gap: int = 0,
    horizon: int = 1,
) -> Split:
    """Consecutive train / validation / test parts in time order, `gap` ≥ `horizon` rows purged between parts."""
    rows = df if isinstance(df, int) else len(df)
    if min(train, valid, test) < 0 or train <= 0 or train + valid + test > 1 + 1e-9:
        raise DataError(f"划分比例无效 train={train} valid={valid} test={test}（非负且和 ≤ 1）/ bad split fractions")
    gap = max(gap, horizon)
    usable = rows - 2 * gap
    n_train, n_valid = int(usable * train), int(usable * valid)
    n_test = int(usable * test)
    if min(n_train, n_valid if valid else 1, n_test if test else 1) < 1:
        raise DataError(f"{rows} 行数据不够划分（间隔 {gap}）/ too few rows to split with a gap of {gap}")
    a = (0, n_train)
    b = (a[1] + gap, a[1] + gap + n_valid)
    t = (b[1] + gap, b[1] + gap + n_test)
    return Split(a, b, t, gap)


def fold_slices(rows: int, folds: int, test_share: float) -> list[tuple[int, int]]:
    """Row ranges [start, stop) of rolling walk-forward folds, each the same length and one test share later than
    the one before, so that the test parts of their chronological splits follow each other without overlap."""
    length = int(rows / (1 + test_share * (folds - 1)))
    step = int(length * test_share)
    return [(i * step, min(i * step + length, rows)) for i in range(folds)]


@dataclass
class Windows:
    """LSTM inputs as a read-only view: `view[i]` is rows i .. i+L-1; `starts` are the usable windows."""

    view: np.ndarray  # (rows - L + 1, L, features), shares memory with the feature matrix
    starts: np.ndarray  # window start rows that are complete, within one segment and labelled
    labels: np.ndarray  # label of each usable window (the label of its last row)
    sequence_length: int

    def __len__(self) -> int:
        return len(self.starts)

    def take(self, positions: np.ndarray | slice) -> np.ndarray:
        """A batch copy (batch, L, features) of the usable windows at `positions`."""
        return np.ascontiguousarray(self.view[self.starts[positions]])

    def end_rows(self) -> np.ndarray:
        return self.starts + self.sequence_length - 1


def make_windows(
    features: np.ndarray,
    labels: np.ndarray | None,
    sequence_length: int,
    segment: np.ndarray | None = None,
    rows: tuple[int, int] | None = None,
) -> Windows:
    """Windows of `sequence_length` rows ending inside `rows`, never crossing a roll segment or a NaN."""
    values = np.asarray(features)
    count = len(values)
    if sequence_length < 1 or count < sequence_length:
        raise DataError(f"数据 {count} 行不足一个长度为 {sequence_length} 的窗口 / too few rows for one window")
    view = np.lib.stride_tricks.sliding_window_view(values, sequence_length, axis=0).transpose(0, 2, 1)
    view.flags.writeable = False
    first_end = sequence_length - 1
    ends = np.arange(first_end, count)
    ok = np.isfinite(values).all(axis=1)
    bad_before = np.cumsum(~ok)
    clean = bad_before[ends] - np.r_[0, bad_before][ends - first_end] == 0
    if segment is not None:
        seg = np.asarray(segment)
        clean &= seg[ends] == seg[ends - first_end]
    if labels is not None:
        clean &= np.isfinite(np.asarray(labels, dtype="float64")[ends])
    if rows is not None:
        clean &= (ends >= rows[0]) & (ends < rows[1])
    starts = ends[clean] - first_end
    label_values = (
        np.asarray(labels, dtype="float64")[starts + first_end] if labels is not None else np.full(len(starts), np.nan)
    )
    return Windows(view, starts, label_values, sequence_length)


# --- the whole preparation for training -------------------------------------------------------------


@dataclass
class TrainingData:
    """Everything a model trains on, with every statistic fitted on the training part only."""

    index: pd.DatetimeIndex
    names: list[str]  # selected features, in FEATURE_NAMES order
    features: pd.DataFrame  # selected, unscaled
    labels: pd.Series  # demeaned: the raw label less `label_mean`
    scaled: np.ndarray  # float32 (rows, names), NaN in the warm-up rows
    scaler: Scaler
    split: Split
    segment: np.ndarray
    horizon: int
    sequence_length: int
    report: CleaningReport
    close: np.ndarray  # cleaned closes, for baselines that need the last return
    prices: pd.DataFrame  # cleaned open / high / low / close: what the strategy simulator trades on validation
    label_kind: str = DEFAULT_LABEL_KIND
    label_mean: float = 0.0  # the training part's mean raw label, subtracted from every label
    label_means: dict[str, float] = field(default_factory=dict)  # mean raw label of train, valid and test

    def windows(self, part: str) -> Windows:
        """LSTM windows whose last row lies in `part` (train, valid or test)."""
        return make_windows(
            self.scaled, self.labels.to_numpy(), self.sequence_length, self.segment, self.split.parts()[part]
        )


def part_means(labels: pd.Series, split: Split) -> dict[str, float]:
    """Mean of the finite labels in each part of the split (NaN for an empty part)."""
    values = labels.to_numpy(dtype="float64")
    means = {}
    for part, (start, stop) in split.parts().items():
        chosen = values[start:stop]
        chosen = chosen[np.isfinite(chosen)]
        means[part] = float(chosen.mean()) if len(chosen) else math.nan
    return means


def prepare_training_data(
    df: pd.DataFrame,
    vt_symbol: str | None = None,
    horizon: int = 5,
    sequence_length: int = 60,
    features_count: int = 30,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    label_kind: str = DEFAULT_LABEL_KIND,
    feature_set: str = DEFAULT_FEATURE_SET,
    spec: ContractSpec | None = None,
) -> TrainingData:
    """Clean, build the feature set's features and the labels, split in time with a purge, select features and fit
    the scaler on train; return labels are demeaned by the training part's mean label, classes are kept as they
    are (`spec`: the contract whose costs the classify label uses)."""
    cleaned, report = clean_data(df, vt_symbol)
    features = build_features(cleaned, feature_set=feature_set)
    raw = make_labels(cleaned, horizon, label_kind, spec)
    reach = label_reach(horizon, label_kind)
    split = split_chronological(len(cleaned), *fractions, gap=reach, horizon=reach)
    start, stop = split.train
    means = part_means(raw, split)
    # A model must not learn the training years' drift as a constant (a falling market makes it short everything
    # later); subtracting the training mean keeps every ranking between bars, so the signal's information is intact.
    label_mean = 0.0 if label_kind == CLASSIFY else means["train"]
    labels = raw - label_mean
    names = select_features(features.iloc[start:stop], labels.iloc[start:stop], features_count)
    chosen = features[names]
    train = chosen.iloc[start:stop]
    scaler = Scaler.fit(train[train.notna().all(axis=1)])
    scaled = scaler.transform(chosen.to_numpy())
    return TrainingData(
        pd.DatetimeIndex(cleaned.index),
        names,
        chosen,
        labels,
        scaled,
        scaler,
        split,
        cleaned["segment"].to_numpy(),
        horizon,
        sequence_length,
        report,
        cleaned["close"].to_numpy(dtype="float64"),
        cleaned[["open", "high", "low", "close"]],
        label_kind,
        label_mean,
        means,
    )


# --- online features (live trading and the strategy) -------------------------------------------------


class _Ewm:
    """pandas `ewm(alpha, adjust=False, min_periods)` one value at a time, same arithmetic."""

    __slots__ = ("alpha", "old", "total", "min_periods", "value", "count")

    def __init__(self, alpha: float, min_periods: int) -> None:
        self.alpha = alpha
        self.old = 1.0 - alpha
        self.total = self.old + alpha  # pandas divides by this sum of weights, which may differ from 1 by an ulp
        self.min_periods = min_periods
        self.value = math.nan
        self.count = 0

    def update(self, x: float) -> float:
        if x != x:  # NaN: pandas skips it
            return self.value if self.count >= self.min_periods else math.nan
        self.count += 1
        if self.count == 1:
            self.value = x
        elif self.value != x:
            self.value = (self.old * self.value + self.alpha * x) / self.total
        return self.value if self.count >= self.min_periods else math.nan


def _span(n: int) -> float:
    return 2.0 / (n + 1.0)


ZERO_STD: float = 1e-6  # a rolling std below this (log volume) counts as zero in both the batch and online paths


def _sample_std(total: float, squares: float, n: int) -> float:
    """Sample std (ddof=1) from a window's sum and sum of squares; fine for values near zero or of unit size."""
    return math.sqrt(max((squares - total * total / n) / (n - 1), 0.0))


class _Window:
    """The last `size` values with their sum and sum of squares recomputed exactly each bar (C-speed `sum`)."""

    __slots__ = ("size", "values", "squares")

    def __init__(self, size: int) -> None:
        self.size = size
        self.values: deque[float] = deque(maxlen=size)
        self.squares: deque[float] = deque(maxlen=size)

    def push(self, x: float) -> None:
        self.values.append(x)
        self.squares.append(x * x)

    @property
    def full(self) -> bool:
        return len(self.values) == self.size

    def mean(self) -> float:
        return sum(self.values) / self.size if len(self.values) == self.size else math.nan

    def std(self) -> float:
        if len(self.values) < self.size:
            return math.nan
        return _sample_std(sum(self.values), sum(self.squares), self.size)


class FeatureState:
    """The feature vector of the latest bar, updated per bar in constant time; equal to `build_features`."""

    def __init__(
        self, vt_symbol: str, names: Sequence[str] | None = None, eras: Sequence[SessionEra] | None = None
    ) -> None:
        self.eras = tuple(eras) if eras is not None else known_eras(vt_symbol)
        self._calendar = BarCalendar(self.eras)
        self.names = tuple(names) if names is not None else FEATURE_NAMES
        unknown = [name for name in self.names if name not in ALL_FEATURE_NAMES]
        if unknown:
            raise DataError(f"未知特征 {unknown} / unknown features")
        self._pick = [ALL_FEATURE_NAMES.index(name) for name in self.names]
        self._all = self.names == FEATURE_NAMES
        self._mtf = _MtfState() if any(name in MTF_NAMES for name in self.names) else None
        self.bars = 0
        self._log_c: deque[float] = deque(maxlen=61)
        self._c10: deque[float] = deque(maxlen=10)
        self._c30: deque[float] = deque(maxlen=30)
        self._c60: deque[float] = deque(maxlen=60)
        self._c20: deque[float] = deque(maxlen=20)
        self._ret15, self._ret60 = _Window(15), _Window(60)
        self._hl2: deque[float] = deque(maxlen=30)
        self._abs_dc: deque[float] = deque(maxlen=20)
        self._h14: deque[float] = deque(maxlen=14)
        self._lo14: deque[float] = deque(maxlen=14)
        self._k: deque[float] = deque(maxlen=3)
        self._log_v30: deque[float] = deque(maxlen=30)
        self._log_v60 = _Window(60)
        self._v: deque[float] = deque(maxlen=20)
        self._mfv: deque[float] = deque(maxlen=20)
        self._pos_flow: deque[float] = deque(maxlen=14)
        self._neg_flow: deque[float] = deque(maxlen=14)
        self._signed: deque[float] = deque(maxlen=20)
        self._atr = _Ewm(1 / 14, 14)
        self._ema20 = _Ewm(_span(20), 20)
        self._ema12 = _Ewm(_span(12), 12)
        self._ema26 = _Ewm(_span(26), 26)
        self._signal = _Ewm(_span(9), 9)
        self._rsi = [(_Ewm(1 / n, n), _Ewm(1 / n, n)) for n in (6, 14)]
        self._tsi = (_Ewm(_span(25), 25), _Ewm(_span(13), 13), _Ewm(_span(25), 25), _Ewm(_span(13), 13))
        self._prev_c = math.nan
        self._prev_tp = math.nan
        self._day: date | None = None
        self._day_open = self._day_high = self._day_low = math.nan

    def update(self, bar: BarData) -> np.ndarray | None:
        """Feed one finished bar; the feature vector (in `names` order), or None while warming up."""
        return self.update_values(
            bar.datetime, bar.open_price, bar.high_price, bar.low_price, bar.close_price, bar.volume
        )

    def update_values(self, when: datetime, o: float, h: float, lo: float, c: float, v: float) -> np.ndarray | None:
        """`update` for plain numbers; `when` is the bar start, time-zone aware."""
        if when.tzinfo is not CHINA_TZ:
            when = when.astimezone(CHINA_TZ)
        row = self._compute(when, float(o), float(h), float(lo), float(c), float(v))
        if self._mtf is not None and self._day is not None:  # _compute has set the bar's trading day
            row += self._mtf.update(self._day, float(h), float(lo), float(c), float(v))
        self.bars += 1
        if self.bars <= FEATURE_WARMUP:
            return None
        return np.array(row if self._all else [row[i] for i in self._pick])

    def _compute(self, when: datetime, o: float, h: float, lo: float, c: float, v: float) -> list[float]:
        nan = math.nan
        prev_c = self._prev_c
        first = math.isnan(prev_c)
        log_c = math.log(c)
        logs = self._log_c
        ret_1 = nan if first else log_c - logs[-1]
        logs.append(log_c)
        seen = len(logs)
        rets = [log_c - logs[-1 - n] if seen > n else nan for n in RETURN_HORIZONS]
        self._ret15.push(ret_1)
        self._ret60.push(ret_1)
        vol_15 = self._ret15.std() if seen > 15 else nan
        vol_60 = self._ret60.std() if seen > 60 else nan
        range_hl = math.log(h / lo)
        hl2 = self._hl2
        hl2.append(range_hl * range_hl)
        park = math.sqrt(sum(hl2) / 30 / (4 * math.log(2))) if len(hl2) == 30 else nan
        true_range = h - lo if first else max(h, prev_c) - min(lo, prev_c)
        atr = self._atr.update(true_range) / c

        for buffer in (self._c10, self._c30, self._c60, self._c20):
            buffer.append(c)
        sma10 = sum(self._c10) / 10 if len(self._c10) == 10 else nan
        sma30 = sum(self._c30) / 30 if len(self._c30) == 30 else nan
        sma60 = sum(self._c60) / 60 if len(self._c60) == 60 else nan
        ema20 = self._ema20.update(c)
        macd = self._ema12.update(c) - self._ema26.update(c)
        signal = self._signal.update(macd)
        dc = c - prev_c
        self._abs_dc.append(abs(dc))
        path = sum(self._abs_dc) if seen > 20 else nan
        move = abs(c - self._c60[-21]) if seen > 20 else nan
        efficiency = 0.0 if path == 0 else move / path

        up_move = dc if dc > 0 else 0.0  # ta turns the first (NaN) change into 0
        down_move = -dc if dc < 0 else 0.0
        rsis = []
        for up_ewm, down_ewm in self._rsi:
            up, down = up_ewm.update(up_move), down_ewm.update(down_move)
            rsis.append(nan if down != down or up != up else (100.0 if down == 0 else 100 - 100 / (1 + up / down)))
        self._h14.append(h)
        self._lo14.append(lo)
        if len(self._h14) == 14:
            highest, lowest = max(self._h14), min(self._lo14)
            stoch_k = 50.0 if highest == lowest else 100 * (c - lowest) / (highest - lowest)
        else:
            stoch_k = nan
        self._k.append(stoch_k)
        stoch_d = sum(self._k) / 3 if len(self._k) == 3 else nan
        r1, r2, a1, a2 = self._tsi
        smooth = r2.update(r1.update(dc))
        smooth_abs = a2.update(a1.update(abs(dc)))
        tsi = nan if smooth != smooth or smooth_abs != smooth_abs else (0.0 if smooth_abs == 0 else smooth / smooth_abs)
        if len(self._c20) == 20:
            window = self._c20
            mavg = sum(window) / 20
            std = math.sqrt(sum([(x - mavg) * (x - mavg) for x in window]) / 20)
            pband, width = bollinger(c, mavg, std)
        else:
            pband = width = nan

        log_v = math.log1p(v)
        self._log_v30.append(log_v)
        self._log_v60.push(log_v)
        volume_dev = log_v - sum(self._log_v30) / 30 if len(self._log_v30) == 30 else nan
        if self._log_v60.full:
            std_60 = self._log_v60.std()
            volume_z = 0.0 if std_60 < ZERO_STD else (log_v - self._log_v60.mean()) / std_60
        else:
            volume_z = nan
        self._v.append(v)
        spread = h - lo
        self._mfv.append(0.0 if spread == 0 else ((c - lo) - (h - c)) / spread * v)
        volume_20 = sum(self._v) if len(self._v) == 20 else nan
        cmf = nan if len(self._v) < 20 else (0.0 if volume_20 == 0 else sum(self._mfv) / volume_20)
        typical = (h + lo + c) / 3
        flow = typical * v
        self._pos_flow.append(flow if typical > self._prev_tp else 0.0)
        self._neg_flow.append(flow if typical < self._prev_tp else 0.0)
        if seen > 14:
            positive, negative = sum(self._pos_flow), sum(self._neg_flow)
            mfi = 50.0 if positive + negative == 0 else 100 * positive / (positive + negative)
        else:
            mfi = nan
        self._signed.append(nan if first else (1.0 if dc > 0 else -1.0 if dc < 0 else 0.0) * v)
        imbalance = (0.0 if volume_20 == 0 else sum(self._signed) / volume_20) if seen > 20 else nan

        hour = when.hour
        minute = hour * 60 + when.minute
        angle = 2 * math.pi * minute / MINUTES_PER_DAY
        night, progress, day = self._calendar.update(when)
        progress = 1.0 if progress != progress else progress  # off-session bars sit at the window's end
        if day != self._day:
            self._day, self._day_open, self._day_high, self._day_low = day, o, h, lo
        else:
            self._day_high, self._day_low = max(self._day_high, h), min(self._day_low, lo)
        day_range = self._day_high - self._day_low
        day_pos = 0.5 if day_range == 0 else (c - self._day_low) / day_range

        self._prev_c = c
        self._prev_tp = typical
        return [
            *rets,
            vol_15,
            vol_60,
            range_hl,
            park,
            atr,
            nan if first else math.log(o / prev_c),
            math.log(c / o),
            (h - max(o, c)) / c,
            (min(o, c) - lo) / c,
            c / sma10 - 1,
            c / sma30 - 1,
            c / sma60 - 1,
            sma10 / sma60 - 1,
            c / ema20 - 1,
            macd / c,
            signal / c,
            (macd - signal) / c,
            efficiency,
            rsis[0],
            rsis[1],
            stoch_k,
            stoch_d,
            tsi,
            pband,
            width,
            volume_dev,
            volume_z,
            cmf,
            mfi,
            imbalance,
            math.sin(angle),
            math.cos(angle),
            float(night),
            progress,
            math.log(c / self._day_open),
            day_pos,
        ]


class _Extreme:
    """The max (or min) of the last `size` values in amortised constant time: a monotonic deque."""

    __slots__ = ("size", "sign", "items", "count")

    def __init__(self, size: int, largest: bool) -> None:
        self.size = size
        self.sign = 1.0 if largest else -1.0
        self.items: deque[tuple[int, float]] = deque()
        self.count = 0

    def push(self, x: float) -> float:
        key = self.sign * x
        items = self.items
        while items and self.sign * items[-1][1] <= key:
            items.pop()
        items.append((self.count, x))
        self.count += 1
        if items[0][0] <= self.count - 1 - self.size:
            items.popleft()
        return items[0][1]


class _MtfState:
    """`build_mtf_features` one bar at a time, same arithmetic (sums taken oldest first); constant time per bar."""

    def __init__(self) -> None:
        longest = max(MTF_TIMEFRAMES) * MTF_PERIODS
        self._log_c: deque[float] = deque(maxlen=longest + 1)
        self._cum: deque[float] = deque([0.0], maxlen=longest + 1)  # volume before the bar, then through it
        self._high = {m: _Extreme(m * MTF_PERIODS, True) for m in MTF_TIMEFRAMES}
        self._low = {m: _Extreme(m * MTF_PERIODS, False) for m in MTF_TIMEFRAMES}
        self._roots = {m: math.sqrt(m) for m in MTF_TIMEFRAMES}
        self._bars = 0
        self._day: date | None = None
        self._days: deque[tuple[float, float, float, float]] = deque(maxlen=MTF_DAYS + 1)  # log close, high, low, range
        self._starts: deque[float] = deque(maxlen=MTF_DAYS + 1)  # volume before each of the last days
        self._day_high = self._day_low = self._last_log_c = math.nan

    def update(self, day: date, h: float, lo: float, c: float, v: float) -> list[float]:
        """Feed one bar of trading day `day`; the values in `MTF_NAMES` order."""
        nan = math.nan
        log_c = math.log(c)
        logs, cum = self._log_c, self._cum
        before = cum[-1]
        if day != self._day:
            if self._day is not None:
                high, low = self._day_high, self._day_low
                self._days.append((self._last_log_c, high, low, math.log(high / low)))
            self._starts.append(before)
            self._day, self._day_high, self._day_low = day, h, lo
        else:
            self._day_high, self._day_low = max(self._day_high, h), min(self._day_low, lo)
        logs.append(log_c)
        cum.append(before + v)
        self._bars += 1
        self._last_log_c = log_c
        row: list[float] = []
        for m in MTF_TIMEFRAMES:
            span = m * MTF_PERIODS
            high, low = self._high[m].push(h), self._low[m].push(lo)
            if self._bars <= span:
                row += [nan] * len(MTF_STEMS)
                continue
            end = len(logs) - 1
            first = end - span
            steps = [logs[first + (k + 1) * m] - logs[first + k * m] for k in range(MTF_PERIODS)]
            total = sizes = 0.0
            for step in steps:
                total = total + step
                sizes = sizes + abs(step)
            mean = total / MTF_PERIODS
            squares = 0.0
            for step in steps:
                squares = squares + (step - mean) * (step - mean)
            vol = math.sqrt(squares / (MTF_PERIODS - 1)) / self._roots[m]
            recent = cum[-1] - cum[-1 - m]
            per_step = (cum[-1] - cum[-1 - span]) / MTF_PERIODS
            row += [
                log_c - logs[first],
                vol,
                0.0 if sizes == 0 else abs(total) / sizes,
                0.5 if high == low else (c - low) / (high - low),
                math.log(high / low),
                math.log((recent + 1) / (per_step + 1)),
            ]
        return row + self._daily(h, lo, c, log_c, cum[-1])

    def _daily(self, h: float, lo: float, c: float, log_c: float, through: float) -> list[float]:
        nan, n = math.nan, MTF_DAYS
        days = self._days
        done = len(days)
        closes = [day[0] for day in days]
        prev_ret = closes[-1] - closes[-2] if done >= 2 else nan
        ret_1 = log_c - closes[-1] if done >= 1 else nan
        ret_n = log_c - closes[-n] if done >= n else nan
        if done > n:
            steps = [closes[k + 1] - closes[k] for k in range(n)]
            total = 0.0
            for step in steps:
                total = total + step
            mean = total / n
            squares = 0.0
            for step in steps:
                squares = squares + (step - mean) * (step - mean)
            day_vol = math.sqrt(squares / (n - 1))
        else:
            day_vol = nan
        today_range = math.log(self._day_high / self._day_low)
        if done < n:
            return [prev_ret, ret_1, ret_n, day_vol, nan, nan, nan, nan]
        last = list(days)[-n:]
        high = max(max(day[1] for day in last), self._day_high)
        low = min(min(day[2] for day in last), self._day_low)
        range_total = 0.0
        for day in last:
            range_total = range_total + day[3]
        range_mean = range_total / n
        starts = self._starts
        past_volume = (starts[-1] - starts[-1 - n]) / n
        today = through - starts[-1]
        return [
            prev_ret,
            ret_1,
            ret_n,
            day_vol,
            0.5 if high == low else (c - low) / (high - low),
            math.log(high / low),
            0.0 if range_mean == 0 else today_range / range_mean,
            math.log((today + 1) / (past_volume + 1)),
        ]


def bollinger(c: float, mavg: float, std: float) -> tuple[float, float]:
    """%B and width of 2-sigma bands; a band narrower than 1e-9 of the price counts as zero (then %B = 0.5)."""
    if std <= 1e-9 * abs(mavg):
        return 0.5, 0.0
    return (c - (mavg - 2 * std)) / (4 * std), 4 * std / mavg


# --- the look-ahead audit ----------------------------------------------------------------------------


@dataclass
class ColumnLeak:
    """A column whose values on a prefix of the data differ from the same rows computed on all of it."""

    column: str
    cuts_failed: int
    first_time: str
    max_difference: float


ROWS_COLUMN: str = "(rows)"  # the audit's name for rows that a prefix keeps or drops differently from the full run


@dataclass
class AuditResult:
    columns: list[str]
    cut_points: list[int]
    leaks: list[ColumnLeak]
    allowed_lookahead: dict[str, int] = field(default_factory=dict)  # rows after t each column may read

    @property
    def ok(self) -> bool:
        return not self.leaks

    @property
    def leaking_columns(self) -> list[str]:
        return [leak.column for leak in self.leaks]

    def rows(self) -> list[tuple[str, str, int, str, str]]:
        """One table row per column: name, verdict, cuts failed, first bad time, max difference."""
        by_name = {leak.column: leak for leak in self.leaks}
        table = []
        for name in self.columns:
            leak = by_name.get(name)
            if leak is None:
                table.append((name, "ok", 0, "", ""))
            else:
                table.append((name, "LEAK", leak.cuts_failed, leak.first_time, f"{leak.max_difference:.3g}"))
        return table


def _as_frame(result: pd.DataFrame | pd.Series) -> pd.DataFrame:
    return result.to_frame() if isinstance(result, pd.Series) else result


def audit_lookahead(
    feature_fn: Callable[[pd.DataFrame], pd.DataFrame | pd.Series],
    df: pd.DataFrame,
    cut_points: Sequence[int],
    allowed_lookahead: int | Mapping[str, int] = 0,
    rtol: float = 1e-9,
    atol: float = 1e-12,
) -> AuditResult:
    """Compare every column computed on df[:k] with the same rows computed on all of df, for each k.

    A row counts only if it lies `allowed_lookahead` rows before the prefix's end (a label over h bars legitimately
    needs h more rows): one number for every column, or one per column name (others 0). A value that appears,
    disappears or changes is a leak. When `feature_fn` drops rows (cleaning), the prefix's rows must be the first
    rows of the full run, else `ROWS_COLUMN` leaks.
    """
    full = _as_frame(feature_fn(df))
    columns = [str(name) for name in full.columns]
    if isinstance(allowed_lookahead, int):
        ahead = {name: allowed_lookahead for name in columns}
    else:
        ahead = {name: int(allowed_lookahead.get(name, 0)) for name in columns}
    reach = np.array([ahead[name] for name in columns])
    failed: dict[str, list[tuple[int, float, int]]] = {}
    for k in sorted(set(int(k) for k in cut_points)):
        if not 0 < k <= len(df):
            raise DataError(f"切点 {k} 超出数据范围 1..{len(df)} / cut point out of range")
        part = _as_frame(feature_fn(df.iloc[:k]))
        if list(map(str, part.columns)) != columns:
            raise DataError("特征函数在不同长度数据上返回的列不同 / the feature function returned other columns")
        kept = len(part)
        if not part.index.equals(full.index[:kept]):
            shared = min(kept, len(full))
            differs = np.flatnonzero(np.asarray(part.index[:shared] != full.index[:shared]))
            failed.setdefault(ROWS_COLUMN, []).append((k, math.inf, int(differs[0]) if len(differs) else shared - 1))
            continue
        a = part.to_numpy(dtype="float64")
        b = full.iloc[:kept].to_numpy(dtype="float64")
        same = np.isclose(a, b, rtol=rtol, atol=atol, equal_nan=True)
        same |= np.arange(kept)[:, None] >= kept - reach[None, :]  # rows whose look-ahead runs past the prefix
        for j in np.flatnonzero(~same.all(axis=0)):
            bad = np.flatnonzero(~same[:, j])
            with np.errstate(invalid="ignore"):
                diff = np.abs(a[bad, j] - b[bad, j])
            biggest = float(np.nanmax(diff)) if np.isfinite(diff).any() else math.inf
            failed.setdefault(columns[j], []).append((k, biggest, int(bad[0])))
    leaks = [
        ColumnLeak(name, len(hits), str(full.index[min(row for _, _, row in hits)]), max(d for _, d, _ in hits))
        for name, hits in failed.items()
    ]
    if ROWS_COLUMN in failed:
        columns = [ROWS_COLUMN, *columns]
    return AuditResult(columns, sorted(set(int(k) for k in cut_points)), leaks, ahead)


# the columns clean_data adds, but `night`, which is also a feature
CLEANING_COLUMNS: tuple[str, ...] = ("trading_day", "day_open", "spike", "roll_gap", "segment")


def pipeline_frame(
    bars: pd.DataFrame,
    vt_symbol: str | None,
    horizon: int,
    kind: str = DEFAULT_LABEL_KIND,
    feature_set: str = DEFAULT_FEATURE_SET,
    spec: ContractSpec | None = None,
) -> pd.DataFrame:
    """Cleaning columns, features and the label computed from raw bars, as numbers: what the audit checks together."""
    cleaned, _ = clean_data(bars, vt_symbol)
    columns = {name: cleaned[name].to_numpy() for name in CLEANING_COLUMNS}
    columns["trading_day"] = columns["trading_day"].astype("datetime64[D]").astype("int64")  # days since 1970
    calendar = pd.DataFrame(columns, index=cleaned.index).astype("float64")
    features = build_features(cleaned, vt_symbol, feature_set)
    return pd.concat([calendar, features, make_labels(cleaned, horizon, kind, spec)], axis=1)


def pipeline_lookahead(horizon: int, kind: str = DEFAULT_LABEL_KIND) -> dict[str, int]:
    """Rows after t that each column of `pipeline_frame` may read: the spike flag 1, the label its reach, others 0."""
    return {**CLEANING_LOOKAHEAD, label_name(horizon): label_reach(horizon, kind)}


def audit_pipeline(
    bars: pd.DataFrame,
    vt_symbol: str | None,
    horizon: int,
    cut_points: Sequence[int],
    kind: str = DEFAULT_LABEL_KIND,
    feature_set: str = DEFAULT_FEATURE_SET,
    spec: ContractSpec | None = None,
) -> AuditResult:
    """The look-ahead audit of cleaning, features and labels together: all of it on bars[:k] against all bars."""
    return audit_lookahead(
        lambda part: pipeline_frame(part, vt_symbol, horizon, kind, feature_set, spec),
        bars,
        cut_points,
        pipeline_lookahead(horizon, kind),
    )


def default_cut_points(rows: int, count: int = 25, seed: int = 7) -> list[int]:
    """Cut points spread over the data, including very short prefixes where warm-up rules bite."""
    rng = np.random.default_rng(seed)
    fixed = [k for k in (1, 2, 10, 30, 61, 100, 200) if k < rows]
    drawn = rng.integers(1, rows, size=max(count - len(fixed), 0)).tolist() if rows > 1 else []
    return sorted(set(fixed + drawn + [rows]))
