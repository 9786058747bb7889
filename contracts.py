"""Which contract to trade: a product's contract symbols, the main-contract rule and the schedule of main changes."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from config import ConfigError

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
