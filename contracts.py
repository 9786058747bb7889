"""Which contract to trade: a product's contract symbols, the main-contract rule and the schedule of main changes."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from config import ConfigError, DataError

if TYPE_CHECKING:  # pandas and numpy are imported where the series is built, not when contracts is imported
    import numpy as np
    import pandas as pd

CONTINUOUS_SUFFIX: str = "888"  # vnpy's convention for a product's main-contract series: rb888.SHFE
MAX_LISTED_YEARS: int = 5  # no Chinese future lists a delivery month further ahead than this

_SYMBOL = re.compile(r"([A-Za-z]{1,3})(\d{3,4}|888)")


@dataclass(frozen=True)
class ContractDay:
    """One contract's figures for one trading day: its volume and its open interest at the close."""

    symbol: str
    trading_day: date
    volume: float
    open_interest: float


@dataclass(frozen=True)
class MainChange:
    """The main contract changed: decided after `decided_day`'s close, traded from `effective_day`'s first session
    (None while that day is not yet in the data); the first main of a series has `old_symbol` ""."""

    decided_day: date
    effective_day: date | None
    old_symbol: str
    new_symbol: str


def split_symbol(symbol: str) -> tuple[str, str]:
    """A contract symbol's product and delivery digits: `rb2605` -> (`rb`, `2605`), `TA605` -> (`TA`, `605`)."""
    match = _SYMBOL.fullmatch(symbol.partition(".")[0])
    if match is None:
        raise ConfigError(
            f"合约代码 {symbol!r} 无法识别：应为品种代码加交割月，例如 rb2605、TA605 或主力连续 rb888 / "
            "not a contract symbol: a product code and its delivery month, e.g. rb2605, TA605, or rb888"
        )
    return match[1], match[2]


def continuous_symbol(product: str) -> str:
    """The symbol of a product's main-contract series: `rb` -> `rb888`."""
    return f"{product}{CONTINUOUS_SUFFIX}"


def is_continuous(symbol: str) -> bool:
    """Whether a symbol (or vt_symbol) names a product's main-contract series rather than one contract."""
    return split_symbol(symbol)[1] == CONTINUOUS_SUFFIX


def delivery_month(symbol: str, on: date) -> date:
    """The first day of a contract's delivery month as seen on trading day `on`; CZCE's three digits (TA605) name
    the year's last digit, read as the first such year not older than a year before `on`."""
    _, digits = split_symbol(symbol)
    if digits == CONTINUOUS_SUFFIX:
        raise ConfigError(f"{symbol} 是主力连续代码，没有交割月 / a continuous symbol has no delivery month")
    month = int(digits[-2:])
    if not 1 <= month <= 12:
        raise ConfigError(f"合约代码 {symbol!r} 的交割月 {month} 无效 / invalid delivery month")
    if len(digits) == 4:
        return date(2000 + int(digits[:2]), month, 1)
    year = on.year - on.year % 10 + int(digits[0])
    if date(year, month, 1) < date(on.year - 1, on.month, 1):
        year += 10
    return date(year, month, 1)


def main_contract_changes(days: Iterable[ContractDay]) -> list[MainChange]:
    """Every change of the main contract: after each trading day's close the contract with the largest open interest
    becomes the main one from the next trading day, but only if it delivers later than the current one (the main
    contract never switches back); ties go to the larger volume, then the later delivery."""
    by_day: dict[date, list[ContractDay]] = {}
    for day in days:
        by_day.setdefault(day.trading_day, []).append(day)
    trading_days = sorted(by_day)
    changes: list[MainChange] = []
    main = ""
    for position, trading_day in enumerate(trading_days):
        leader = max(
            by_day[trading_day],
            key=lambda d: (d.open_interest, d.volume, delivery_month(d.symbol, trading_day)),
        )
        if leader.symbol == main:
            continue
        if main and delivery_month(leader.symbol, trading_day) <= delivery_month(main, trading_day):
            continue
        effective = trading_days[position + 1] if position + 1 < len(trading_days) else None
        changes.append(MainChange(trading_day, effective, main, leader.symbol))
        main = leader.symbol
    return changes


def main_contract_on(changes: Iterable[MainChange], trading_day: date) -> str:
    """The main contract traded on `trading_day` by a schedule of changes (a change decided on the data's last day
    applies to any later day), or "" before the first one takes effect."""
    main = ""
    for change in changes:
        first_day = change.effective_day
        if (first_day is not None and first_day <= trading_day) or (
            first_day is None and change.decided_day < trading_day
        ):
            main = change.new_symbol
    return main


# --- the continuous series: contracts stitched by the main-contract rule, back-adjusted (pandas imported lazily) ---

ADJUSTMENTS: tuple[str, ...] = ("ratio", "difference", "none")
SERIES_PRICES: tuple[str, ...] = ("open", "high", "low", "close")  # what an adjustment moves; volume etc. stay


@dataclass(frozen=True)
class Junction:
    """One row of a continuous series' roll table: the series passes from `old_symbol` to `new_symbol` at
    `effective_day`'s first session; `old_price` and `new_price` are the two contracts' closes of the old contract's
    last bar in the series, `factor` (new ÷ old) and `offset` (new − old) carry older prices onto the new level."""

    decided_day: date
    effective_day: date
    old_symbol: str
    new_symbol: str
    old_last_bar: datetime
    old_price: float
    new_price: float
    factor: float
    offset: float


@dataclass(frozen=True)
class Segment:
    """One contract's stretch of a continuous series and what was done to its real prices:
    adjusted = real × factor + offset (ratio: offset 0; difference: factor 1; none: neither)."""

    symbol: str
    first_bar: datetime
    last_bar: datetime
    bars: int
    factor: float
    offset: float


@dataclass(frozen=True)
class ContinuousSeries:
    """A product's main-contract series: bars indexed by bar start (OHLC adjusted, volume, turnover and open interest
    the contract's own, `contract` the symbol traded), its roll table and its segments."""

    product: str
    adjust: str
    bars: pd.DataFrame
    junctions: tuple[Junction, ...]
    segments: tuple[Segment, ...]


def check_adjustment(adjust: str) -> str:
    """`adjust` if it is one of ADJUSTMENTS, else ConfigError."""
    if adjust not in ADJUSTMENTS:
        raise ConfigError(
            f"复权方式 {adjust!r} 未知，可用 {', '.join(ADJUSTMENTS)} / unknown adjustment (ratio, difference, none)"
        )
    return adjust


def bar_trading_days(index: pd.DatetimeIndex) -> np.ndarray:
    """The trading day (numpy datetime64[D]) of every bar, by the project's calendar."""
    from trading_calendar import trading_days

    return trading_days(index)


def contract_days(frames: Mapping[str, pd.DataFrame]) -> list[ContractDay]:
    """Each contract's daily figures from its bars: volume summed per trading day, open interest of the day's last
    bar."""
    days: list[ContractDay] = []
    for symbol, frame in frames.items():
        if frame.empty:
            continue
        grouped = frame.groupby(bar_trading_days(frame.index), sort=True)
        volume, interest = grouped["volume"].sum(), grouped["open_interest"].last()
        days += [
            ContractDay(symbol, day.date(), float(v), float(oi))
            for day, v, oi in zip(volume.index, volume.tolist(), interest.tolist(), strict=True)
        ]
    return days


def _pieces(frames: Mapping[str, pd.DataFrame], changes: Sequence[MainChange]) -> list[tuple[MainChange, pd.DataFrame]]:
    """Each effective change with the new main contract's bars from its effective day to the next change's."""
    import numpy as np

    effective = [change for change in changes if change.effective_day is not None]
    pieces = []
    for position, change in enumerate(effective):
        frame = frames[change.new_symbol]
        days = bar_trading_days(frame.index)
        keep = days >= np.datetime64(change.effective_day)
        if position + 1 < len(effective):
            keep &= days < np.datetime64(effective[position + 1].effective_day)
        if keep.any():
            pieces.append((change, frame.loc[keep]))
    return pieces


def _junction(change: MainChange, old_symbol: str, old: pd.DataFrame, new: pd.DataFrame) -> Junction:
    """The junction from the `old` piece to the contract whose whole bars are `new`: both closes at the old piece's
    last bar (the new contract's last close at or before it)."""
    last = old.index[-1]
    known = new["close"].loc[:last]
    if known.empty:
        raise DataError(
            f"换月 {old_symbol} → {change.new_symbol}：{change.new_symbol} 在 {last:%Y-%m-%d %H:%M} 之前没有K线，"
            "无法计算接缝价差 / the new contract has no bar at or before the junction"
        )
    old_price, new_price = float(old["close"].iloc[-1]), float(known.iloc[-1])
    assert change.effective_day is not None
    return Junction(
        change.decided_day,
        change.effective_day,
        old_symbol,
        change.new_symbol,
        last.to_pydatetime(),
        old_price,
        new_price,
        new_price / old_price,
        new_price - old_price,
    )


def build_continuous(frames: Mapping[str, pd.DataFrame], adjust: str, product: str = "") -> ContinuousSeries:
    """The main-contract series of a product's contracts (`frames`: symbol → bars indexed by bar start): the main
    contract by `main_contract_changes`, each change traded from its effective day's first session, older prices
    back-adjusted (`ratio` or `difference`) so the latest contract keeps its real prices, or left as they are."""
    import pandas as pd

    check_adjustment(adjust)
    pieces = _pieces(frames, main_contract_changes(contract_days(frames)))
    if not pieces:
        raise DataError(
            "合约K线不足两个交易日，无法决定主力合约（收盘后决定，次一交易日生效）/ "
            "the main contract needs at least two trading days of bars"
        )
    junctions = tuple(
        _junction(change, pieces[k][0].new_symbol, pieces[k][1], frames[change.new_symbol])
        for k, (change, _) in enumerate(pieces[1:])
    )
    segments, parts = [], []
    for k, (change, piece) in enumerate(pieces):
        later = junctions[k:]
        factor = math.prod(j.factor for j in later) if adjust == "ratio" else 1.0
        offset = sum(j.offset for j in later) if adjust == "difference" else 0.0
        part = piece.copy()
        for name in SERIES_PRICES:
            part[name] = part[name] * factor + offset
        part["contract"] = change.new_symbol
        parts.append(part)
        first, last = piece.index[0].to_pydatetime(), piece.index[-1].to_pydatetime()
        segments.append(Segment(change.new_symbol, first, last, len(piece), factor, offset))
    bars = pd.concat(parts)
    if not bars.index.is_monotonic_increasing or bars.index.has_duplicates:
        raise DataError("连续合约的K线时间不是严格递增（合约K线的交易日有误？）/ stitched bars out of order")
    product = product or split_symbol(pieces[0][0].new_symbol)[0]
    return ContinuousSeries(product, adjust, bars, junctions, tuple(segments))


def segment_positions(index: pd.DatetimeIndex, segments: Sequence[Segment]) -> np.ndarray:
    """The position in `segments` of every bar time (-1 for a time outside every segment)."""
    import numpy as np
    import pandas as pd

    starts = pd.DatetimeIndex([s.first_bar for s in segments]).as_unit("us").asi8
    ends = pd.DatetimeIndex([s.last_bar for s in segments]).as_unit("us").asi8
    times = pd.DatetimeIndex(index).as_unit("us").asi8
    position = np.searchsorted(starts, times, side="right") - 1
    inside = (position >= 0) & (times <= ends[np.maximum(position, 0)])
    result: np.ndarray = np.where(inside, position, -1)
    return result


def contract_column(index: pd.DatetimeIndex, segments: Sequence[Segment]) -> np.ndarray:
    """The contract traded at every bar of a continuous series ("" outside every segment)."""
    import numpy as np

    position = segment_positions(index, segments)
    symbols = np.array([s.symbol for s in segments] + [""], dtype=object)
    result: np.ndarray = symbols[position]  # -1 picks the trailing ""
    return result


def real_prices(bars: pd.DataFrame, segments: Sequence[Segment]) -> pd.DataFrame:
    """A stored continuous series with each segment's real prices back, `(adjusted − offset) ÷ factor`, and its
    `contract` column; DataError for a bar outside the roll table's segments."""
    import numpy as np

    position = segment_positions(bars.index, segments)
    if (position < 0).any():
        shown = bars.index[position < 0][0]
        raise DataError(
            f"连续合约K线 {shown:%Y-%m-%d %H:%M} 不在换月表的任何合约段内；请重新运行 continuous / "
            "a bar outside the roll table: rebuild the series"
        )
    factor = np.array([s.factor for s in segments])[position]
    offset = np.array([s.offset for s in segments])[position]
    real = bars.copy()
    for name in SERIES_PRICES:
        real[name] = (real[name].to_numpy(dtype="float64") - offset) / factor
    real["contract"] = contract_column(bars.index, segments)
    return real


def roll_table(series: ContinuousSeries, vt_symbol: str, interval: str) -> dict[str, Any]:
    """A continuous series' roll table as plain JSON data, with what identifies the stored bars it describes."""
    bars = series.bars
    return {
        "vt_symbol": vt_symbol,
        "product": series.product,
        "interval": interval,
        "adjust": series.adjust,
        "bars": len(bars),
        "first_bar": bars.index[0].isoformat(),
        "last_bar": bars.index[-1].isoformat(),
        "rolls": [
            {
                **{key: str(value) if isinstance(value, date) else value for key, value in asdict(j).items()},
                "old_last_bar": j.old_last_bar.isoformat(),
            }
            for j in series.junctions
        ],
        "segments": [
            {**asdict(s), "first_bar": s.first_bar.isoformat(), "last_bar": s.last_bar.isoformat()}
            for s in series.segments
        ],
    }


def table_segments(table: Mapping[str, Any]) -> tuple[Segment, ...]:
    """The segments of a roll table read back from JSON; DataError when the table is malformed."""
    try:
        return tuple(
            Segment(
                str(s["symbol"]),
                datetime.fromisoformat(s["first_bar"]),
                datetime.fromisoformat(s["last_bar"]),
                int(s["bars"]),
                float(s["factor"]),
                float(s["offset"]),
            )
            for s in table["segments"]
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"换月表格式错误（{exc!r}）；请重新运行 continuous / malformed roll table") from None


def table_junction_factors(table: Mapping[str, Any]) -> dict[tuple[str, str], float]:
    """(old, new) symbol → the junction's ratio (new ÷ old) from a roll table read back from JSON."""
    try:
        return {(str(r["old_symbol"]), str(r["new_symbol"])): float(r["factor"]) for r in table["rolls"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"换月表格式错误（{exc!r}）；请重新运行 continuous / malformed roll table") from None


def table_junction_offsets(table: Mapping[str, Any]) -> dict[tuple[str, str], float]:
    """(old, new) symbol → the junction's difference (new − old) from a roll table read back from JSON."""
    try:
        return {(str(r["old_symbol"]), str(r["new_symbol"])): float(r["offset"]) for r in table["rolls"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"换月表格式错误（{exc!r}）；请重新运行 continuous / malformed roll table") from None


WARMUP_ADJUST_WORDS: dict[str, str] = {
    "ratio": "按比例复权",
    "difference": "按价差复权",
    "none": "不复权（接缝保留为跳空）",
}


@dataclass(frozen=True)
class WarmupSources:
    """Where a warm-up's bars came from: the traded contract's own, the continuous series' (which contracts), and
    how the continuous part was put on the traded contract's price level (`adjust`: as the bundle was trained)."""

    own: int
    continuous: int
    contracts: tuple[str, ...]
    level: str  # "same": the series' last contract is the traded one; "own": matched to its own bars; "unknown";
    # "none": the series has no bar in the window before the own bars
    factor: float  # what the series' last contract's prices were multiplied by to reach the traded contract
    adjust: str = "ratio"  # how junctions were bridged: ratio, difference (offsets added) or none (left as gaps)
    offset: float = 0.0  # difference: what was added to the series' last contract's prices

    def describe(self, vt_symbol: str) -> str:
        """One log line, Chinese first."""
        match = f"×{self.factor:.6f}" if self.adjust == "ratio" else f"{self.offset:+.4f}"
        level = {
            "same": "主力即本合约，价位一致",
            "own": f"按本合约K线接缝 {match} 调到本合约价位",
            "unknown": "本合约价位未知（无本合约K线），保持主力价位：首根实盘K线可能显示为换月跳空",
            "none": "主力连续在此窗口内没有K线",
        }[self.level]
        if self.adjust == "none" and self.level == "own":
            level = "未调价位：本合约K线前保留换月跳空"
        via = "、".join(self.contracts) or "无"
        return (
            f"{vt_symbol} 预热K线：本合约 {self.own:,} 根，主力连续 {self.continuous:,} 根（{via}；{level}；"
            f"{WARMUP_ADJUST_WORDS[self.adjust]}，与模型包一致）/ warm-up bars: {self.own:,} own, "
            f"{self.continuous:,} from the continuous series ({self.level} level, {self.adjust} adjustment)"
        )


def warmup_bars(
    continuous: pd.DataFrame,
    own: pd.DataFrame,
    symbol: str,
    factors: Mapping[tuple[str, str], float],
    adjust: str = "ratio",
    offsets: Mapping[tuple[str, str], float] | None = None,
) -> tuple[pd.DataFrame, WarmupSources]:
    """History for a strategy on contract `symbol`: the continuous series' bars (real prices with a `contract`
    column) before the first bar of the contract's `own`, adjusted across the series' junctions inside the window
    and onto the contract's level at the junction, as the bundle's training prices were (`adjust`: `ratio` by the
    roll table's `factors`, `difference` by its `offsets`, `none` left at real prices with their gaps), then the own
    bars (they win where both have bars). Columns: OHLCV, turnover and open interest."""
    import pandas as pd

    check_adjustment(adjust)
    own = own.sort_index()
    before = continuous.loc[continuous.index < own.index[0]] if not own.empty else continuous
    if before.empty:
        return own, WarmupSources(len(own), 0, (), "none", 1.0, adjust)
    labels = before["contract"].to_numpy()
    runs = [0, *(k for k in range(1, len(labels)) if labels[k] != labels[k - 1])]
    contracts = tuple(str(labels[k]) for k in runs)
    level, factor, offset = _warmup_level(continuous, before, own, symbol)
    if adjust != "ratio":
        factor = 1.0
    if adjust != "difference":
        offset = 0.0
    multipliers, additions = [factor], [offset]
    for old, new in reversed(list(zip(contracts, contracts[1:], strict=False))):
        if (old, new) not in factors:
            raise DataError(f"换月表中没有 {old} → {new} 的接缝；请重新运行 continuous / junction missing from table")
        step = factors[(old, new)] if adjust == "ratio" else 1.0
        shift = (offsets or {}).get((old, new), math.nan) if adjust == "difference" else 0.0
        if math.isnan(shift):
            raise DataError(f"换月表中没有 {old} → {new} 的价差；请重新运行 continuous / junction offset missing")
        multipliers.append(multipliers[-1] * step)
        additions.append(additions[-1] + shift)
    multipliers.reverse()
    additions.reverse()
    ends = [*runs[1:], len(labels)]
    scale, add = pd.Series(0.0, index=before.index), pd.Series(0.0, index=before.index)
    for start, end, multiplier, addition in zip(runs, ends, multipliers, additions, strict=True):
        scale.iloc[start:end] = multiplier
        add.iloc[start:end] = addition
    adjusted = before.drop(columns="contract")
    for name in SERIES_PRICES:
        adjusted[name] = adjusted[name] * scale + add
    bars = pd.concat([adjusted, own[adjusted.columns.intersection(own.columns)]]) if not own.empty else adjusted
    return bars, WarmupSources(len(own), len(before), contracts, level, factor, adjust, offset)


def _warmup_level(
    continuous: pd.DataFrame, before: pd.DataFrame, own: pd.DataFrame, symbol: str
) -> tuple[str, float, float]:
    """How the series' last contract before the own bars reaches `symbol`'s level, as a ratio and a difference:
    the same contract; the two closes at the first own bar's time when the series has that bar of the same
    contract, else the first own open against the series' last close before it; or unknown without own bars."""
    last = str(before["contract"].iloc[-1])
    if last == symbol:
        return "same", 1.0, 0.0
    if own.empty:
        return "unknown", 1.0, 0.0
    first = own.index[0]
    if first in continuous.index and str(continuous.at[first, "contract"]) == last:
        mine, theirs = float(own["close"].iloc[0]), float(continuous.at[first, "close"])
    else:
        mine, theirs = float(own["open"].iloc[0]), float(before["close"].iloc[-1])
    return "own", mine / theirs, mine - theirs


# --- rolling a live strategy on a continuous symbol (rollover.py does it) ---

ROLL_MODES: dict[str, str] = {
    "open": "开盘移仓：主力切换后的下一个交易时段开盘时平旧开新 / roll at the next session's open",
    "flat": "空仓换月：策略空仓时才换到新主力 / switch only when flat",
    "alert": "只提醒：记录并告警，不移仓 / alert only",
}
DEFAULT_ROLL_MODE: str = "open"


def roll_mode(value: object, where: str) -> str:
    """A checked roll mode (ROLL_MODES)."""
    if not isinstance(value, str) or value not in ROLL_MODES:
        raise ConfigError(f"{where}: 换月方式 {value!r} 无效（可用：{', '.join(ROLL_MODES)}）/ unknown roll mode")
    return value
