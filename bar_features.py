"""The feature set: its columns and definitions, the causal batch builders (base and multi-timeframe) and the online
state that gives the same numbers one bar at a time."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime

import numpy as np
import pandas as pd
from vnpy.trader.object import BarData

from config import CHINA_TZ, DataError
from trading_calendar import (
    MINUTES_PER_DAY,
    BarCalendar,
    BarClock,
    SessionEra,
    as_china_index,
    known_eras,
    progress_since_open,
    resolve_vt_symbol,
)

OHLCV: tuple[str, ...] = ("open", "high", "low", "close", "volume")  # the bar columns features (and cleaning) read


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


DAILY_LOOKBACK: dict[str, int] = {  # completed trading days a daily column needs before its bar's day
    "d_prev_ret": 2,
    "d_ret_1": 1,
    f"d_ret_{MTF_DAYS}": MTF_DAYS,
    f"d_vol_{MTF_DAYS}": MTF_DAYS + 1,
    f"d_pos_{MTF_DAYS}": MTF_DAYS,
    f"d_range_{MTF_DAYS}": MTF_DAYS,
    "d_range_rel": MTF_DAYS,
    "d_volume_ratio": MTF_DAYS,
}


def feature_lookback(names: Sequence[str]) -> tuple[int, int]:
    """What the columns `names` need before their first complete row: the bars before it (FEATURE_WARMUP, or an
    m-minute column's MTF_PERIODS·m) and the completed trading days before the row's own day (daily columns)."""
    bars = max(
        [FEATURE_WARMUP] + [m * MTF_PERIODS for m in MTF_TIMEFRAMES for stem in MTF_STEMS if f"{stem}_{m}m" in names]
    )
    return bars, max([0] + [DAILY_LOOKBACK[name] for name in names if name in DAILY_LOOKBACK])


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
    block = _Block(FEATURE_SETS[checked_feature_set(feature_set)], len(df))
    bars = _Bars.of(df)
    _base_columns(bars, resolve_vt_symbol(df, vt_symbol), block)
    if feature_set == MTF_SET:
        _mtf_columns(bars, block)
    return block.frame(df.index)


def build_mtf_features(df: pd.DataFrame) -> pd.DataFrame:
    """The multi-timeframe columns (`MTF_DEFINITIONS`) for every bar, causal; NaN until their look-back is full."""
    block = _Block(MTF_NAMES, len(df))
    _mtf_columns(_Bars.of(df), block)
    return block.frame(df.index)


class _Block:
    """The frame's values, one row per column (its transpose is pandas' own block layout), filled as each column is
    computed so that the column's own array can go at once."""

    def __init__(self, names: Sequence[str], rows: int) -> None:
        self.names = tuple(names)
        self.values = np.empty((len(self.names), rows))
        self._rows = {name: row for row, name in enumerate(self.names)}

    def __setitem__(self, name: str, values: np.ndarray) -> None:
        self.values[self._rows[name]] = values

    def update(self, columns: Mapping[str, np.ndarray]) -> None:
        for name, values in columns.items():
            self[name] = values

    def frame(self, index: pd.Index) -> pd.DataFrame:
        """The columns as one frame, the base set's warm-up rows NaN."""
        self.values[[row for row, name in enumerate(self.names) if name in _BASE_COLUMNS], :FEATURE_WARMUP] = np.nan
        return pd.DataFrame(self.values.T, index=index, columns=list(self.names), copy=False)


def _base_columns(bars: _Bars, vt_symbol: str | None, out: _Block) -> None:
    """The curated causal base feature set (`FEATURE_NAMES`) for every bar into `out`, warm-up rows not yet blanked."""
    o, h, lo, c, v, log_c = bars.o, bars.h, bars.lo, bars.c, bars.v, bars.log_c
    prev_c = _lagged(c, 1)
    change = c - prev_c
    ret_1 = log_c - _lagged(log_c, 1)
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


def _mtf_columns(bars: _Bars, out: _Block) -> None:
    """The multi-timeframe columns (`MTF_NAMES`) for every bar into `out`, NaN until their look-back is full."""
    h, lo, c, v, log_c = bars.h, bars.lo, bars.c, bars.v, bars.log_c
    cum_v = np.r_[0.0, np.cumsum(v)]  # volume before bar t: cum_v[t]; through bar t: cum_v[t + 1]
    through = cum_v[1:]
    spans = [m * MTF_PERIODS for m in MTF_TIMEFRAMES]
    highs = _window_extremes(h, spans, largest=True)
    lows = _window_extremes(lo, spans, largest=False)
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
