"""Cleaning, labels, feature selection, scaling, chronological splits, windows, the training data and the
look-ahead audit; the features themselves are in `bar_features`."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd

from bar_features import DEFAULT_FEATURE_SET, OHLCV, build_features
from config import CHINA_TZ, ContractSpec, DataError
from trading_calendar import (
    MINUTES_PER_DAY,
    add_calendar,
    anchored_trading_day,
    as_china_index,
    bar_minutes,
    causal_trading_days,
    resolve_vt_symbol,
    session_date_and_night,
    session_eras,
    session_mask,
)

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
