"""SimGateway: a simulated exchange that replays stored bars or ticks of one contract as live market data and fills
orders by the rules of vnpy's backtester, so a strategy runs through vnpy's live engines on history.

Bar mode: a 1-minute bar becomes 4 ticks at :00, :20, :40 and :59 of its minute: open, high then low if the bar closed
below its open (else low then high), close; bid = ask = last, limit prices and day high/low 0. Cumulative volume and
turnover grow from 0 over the replay; a bar's volume rides on its first tick (the very first bar's on its second, as
BarGenerator skips the change on the first tick it sees) and a closing tick at the minute after the last bar completes
it, so BarGenerator rebuilds every bar exactly (turnover exactly while its running sum stays a whole number).

Matching is BacktestingEngine.cross_limit_order then cross_stop_order. Bar mode: once the event engine has handled bar
k's ticks and before bar k+1 starts, against bar k's OHLC, the orders that arrived before the event engine went past
bar k's first tick (a strategy's reaction to bar k-1, or older, or sent from on_trade); orders that arrived later saw
bar k's prices and wait for bar k+1. As in vnpy, a stop order sent from the on_trade of a limit fill on bar k is
matched on bar k too. Tick mode: the orders that arrived before tick n+1 are matched against it before it is published.
Fills are whole and carry the bar's (tick's) time.

Every price is preceded by a private mark event (the clock, the last price and the order epoch move when the event
engine reaches it), and the replay waits for the event engine (a private sync event) before each match and each new
trading day: runs are deterministic at any speed.
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from copy import copy
from dataclasses import asdict, dataclass, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from vnpy.event import Event, EventEngine
from vnpy.trader.constant import Direction, Exchange, Interval, Offset, OrderType, Product, Status
from vnpy.trader.gateway import BaseGateway
from vnpy.trader.object import (
    AccountData,
    BarData,
    CancelRequest,
    ContractData,
    HistoryRequest,
    OrderData,
    OrderRequest,
    PositionData,
    SubscribeRequest,
    TickData,
    TradeData,
)

import data_collector
from config import (
    CHINA_TZ,
    DEFAULT_CAPITAL,
    ConfigError,
    ContractSpec,
    DataError,
    Home,
    contract_spec,
    guarded,
    load_contracts,
    read_json_object,
    resolve_home,
    settings_dirs,
    write_json_atomic,
)
from contracts import delivery_month, is_continuous, split_symbol
from trading_calendar import causal_trading_day

logger = logging.getLogger(__name__)

SETTING_KEYS: tuple[str, ...] = (
    "vt_symbol",
    "home",
    "mode",
    "csv",
    "start",
    "end",
    "speed",
    "capital",
    "warmup_days",
    "hold",
    "account_file",
)
MODES: tuple[str, ...] = ("bar", "tick")
SPEED_MAX: str = "max"
DEFAULT_WARMUP_DAYS: int = 10
TICK_SECONDS: tuple[float, ...] = (0.0, 20.0, 40.0, 59.0)  # a bar's open, first extreme, second extreme, close
GAP_SECONDS: float = 300.0  # a replay gap longer than this (break, night, weekend) ...
GAP_WALL_SECONDS: float = 3.0  # ... takes at most this much wall time at any speed
POLL_SECONDS: float = 0.1  # how often a waiting replay thread checks for close()
JOIN_SECONDS: float = 10.0
# Which lots a plain CLOSE takes (docs/contracts.md, "平仓顺序"): SHFE/INE have their own close-today and
# close-yesterday orders (CLOSE = yesterday's); DCE, CZCE and GFEX close first opened, first closed, so yesterday's
# lots first (CTP's position detail has a DCE-only "先开先平剩余数量" TimeFirstVolume; brokers' APIs such as
# JoinQuant's order(close_today=False) say "优先平昨仓"); CFFEX closes today's first (平今优先: CTP's CloseStyle
# "先平今再平昨"; https://blog.csdn.net/HJ_xing/article/details/103579998), which is why its close-today fee bites.
CLOSE_YESTERDAY_EXCHANGES: frozenset[Exchange] = frozenset({Exchange.SHFE, Exchange.INE})  # plain CLOSE = yesterday
CLOSE_TODAY_FIRST_EXCHANGES: frozenset[Exchange] = frozenset({Exchange.CFFEX})  # others: yesterday's first
OPPOSITE: dict[Direction, Direction] = {Direction.LONG: Direction.SHORT, Direction.SHORT: Direction.LONG}
SOURCE_NAMES: dict[str, str] = {"td": "今仓", "yd": "昨仓", "any": "持仓", "fifo": "持仓"}

Rule = Callable[[Direction, float, Any], float | None]


# --- settings and data -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimSettings:
    """The validated connect setting."""

    vt_symbol: str
    home: Home
    mode: str
    csv: Path | None
    start: datetime  # the first replayed moment, China time: 00:00 of a start date, or a start minute
    end: datetime  # the last microsecond of the end date
    speed: float | None  # None: as fast as possible
    capital: float
    warmup_days: int
    hold: bool
    account_file: Path | None = None  # where the account survives a restart of the process; None: not kept


def _bad(name: str, value: Any, rule: str, english: str) -> ConfigError:
    """The error for one bad setting value."""
    return ConfigError(f"SIM 设置 {name} = {value!r} 无效：{rule} / bad setting {name}: {english}")


def _day(name: str, value: Any) -> date:
    """A YYYY-MM-DD setting as a date."""
    try:
        if isinstance(value, str) and len(value.strip()) == 10:
            return date.fromisoformat(value.strip())
    except ValueError:
        pass
    raise _bad(name, value, "应为 YYYY-MM-DD 日期", "expected a YYYY-MM-DD date")


def _start(value: Any) -> datetime:
    """The replay start: `YYYY-MM-DD` (00:00 of that day) or `YYYY-MM-DD HH:MM` (that minute), China time."""
    text = value.strip() if isinstance(value, str) else ""
    for pattern in ("%Y-%m-%d", "%Y-%m-%d %H:%M"):
        try:
            return datetime.strptime(text, pattern).replace(tzinfo=CHINA_TZ)
        except ValueError:
            continue
    raise _bad(
        "start",
        value,
        "应为 YYYY-MM-DD 或 YYYY-MM-DD HH:MM（中国时间）",
        "expected a YYYY-MM-DD date or a YYYY-MM-DD HH:MM time (China time)",
    )


def _positive(name: str, value: Any, rule: str = "应为正数", english: str = "must be a positive number") -> float:
    """A finite number > 0 (a number or a numeric string)."""
    try:
        number = math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise _bad(name, value, rule, english)
    return number


def parse_settings(setting: Mapping[str, Any]) -> SimSettings:
    """Validate a connect setting; ConfigError (DataError for a malformed vt_symbol) naming the bad value."""
    unknown = sorted(set(setting) - set(SETTING_KEYS))
    if unknown:
        raise ConfigError(f"SIM 设置中有未知项 {unknown}（可用：{', '.join(SETTING_KEYS)}）/ unknown setting")
    vt_symbol = setting.get("vt_symbol")
    if not isinstance(vt_symbol, str) or not vt_symbol:
        raise _bad("vt_symbol", vt_symbol, "需要合约代码，例如 rb0000.SHFE", "a vt_symbol is required")
    data_collector.parse_vt_symbol(vt_symbol)
    mode = setting.get("mode", "bar")
    if mode not in MODES:
        raise _bad("mode", mode, "应为 bar 或 tick", "must be bar or tick")
    csv_value = setting.get("csv") or ""
    if not isinstance(csv_value, str | Path):
        raise _bad("csv", csv_value, "应为文件路径", "must be a file path")
    if is_continuous(vt_symbol) and (mode != "bar" or csv_value):
        raise _bad(
            "vt_symbol",
            vt_symbol,
            "主力连续代码回放数据库中该品种的全部合约，只支持 bar 模式、不支持 csv",
            "a continuous symbol replays the product's stored contracts: bar mode from the database only",
        )
    csv = Path(csv_value).expanduser() if csv_value else None
    if csv is not None and not csv.is_file():
        raise _bad("csv", str(csv_value), "文件不存在", "file not found")
    if "start" not in setting or "end" not in setting:
        raise ConfigError("SIM 设置需要 start 和 end（YYYY-MM-DD）/ start and end are required")
    start, last = _start(setting["start"]), _day("end", setting["end"])
    end = data_collector.to_china_time(last, end_of_day=True)
    if start > end:
        raise ConfigError(f"SIM 设置 start {start:%Y-%m-%d %H:%M} 晚于 end {last} / start is after end")
    hold = setting.get("hold", False)
    if not isinstance(hold, bool):
        raise _bad("hold", hold, "应为 true 或 false", "must be a boolean")
    warmup = setting.get("warmup_days", DEFAULT_WARMUP_DAYS)
    warmup = int(warmup) if isinstance(warmup, str) and warmup.strip().isdigit() else warmup
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise _bad("warmup_days", warmup, "应为 ≥ 0 的整数天数", "must be a whole number of days ≥ 0")
    speed = setting.get("speed", SPEED_MAX)
    account_file = setting.get("account_file") or ""
    if not isinstance(account_file, str | Path):
        raise _bad("account_file", account_file, "应为文件路径", "must be a file path")
    return SimSettings(
        vt_symbol=vt_symbol,
        home=resolve_home(setting.get("home") or None),
        mode=mode,
        csv=csv,
        start=start,
        end=end,
        speed=None
        if str(speed).strip().lower() == SPEED_MAX
        else _positive(
            "speed", speed, "应为 max 或正数倍速（1 为实时）", "must be max or a positive multiple of real time"
        ),
        capital=_positive("capital", setting.get("capital", DEFAULT_CAPITAL)),
        warmup_days=warmup,
        hold=hold,
        account_file=Path(account_file).expanduser() if account_file else None,
    )


def product_contracts(settings: SimSettings) -> list[str]:
    """The stored 1-minute contracts of a continuous symbol's product and exchange (rb888.SHFE: rb2610.SHFE ...),
    in delivery order; series such as rb0000 that name no delivery month are not contracts."""
    product, exchange = split_symbol(settings.vt_symbol)[0], settings.vt_symbol.partition(".")[2]
    found: dict[date, str] = {}
    for series in data_collector.list_stored(settings.home):
        symbol, _, where = series.vt_symbol.partition(".")
        if series.interval != Interval.MINUTE.value or where != exchange:
            continue
        try:
            if split_symbol(symbol)[0] == product and not is_continuous(symbol):
                found[delivery_month(symbol, settings.start.date())] = series.vt_symbol
        except ConfigError:
            continue
    return [found[month] for month in sorted(found)]


def load_bars(settings: SimSettings) -> list[BarData]:
    """The 1-minute bars from `warmup_days` before start to end: the database's, or the bar CSV's; for a continuous
    symbol every stored contract of its product, merged in time order (contract by contract within a minute)."""
    begin = settings.start - timedelta(days=settings.warmup_days)
    if is_continuous(settings.vt_symbol):
        bars: list[BarData] = []
        for vt_symbol in product_contracts(settings):
            try:
                frame = data_collector.load_history_data(vt_symbol, begin, settings.end, home=settings.home)
            except DataError:
                continue  # no bars of this contract in the range
            bars += data_collector.frame_to_bars(frame, vt_symbol)
        return sorted(bars, key=lambda bar: (bar.datetime, bar.vt_symbol))
    if settings.csv is None:
        frame = data_collector.load_history_data(settings.vt_symbol, begin, settings.end, home=settings.home)
    else:
        frame = data_collector.read_bar_csv(settings.csv)[0].set_index("datetime")
        frame = frame[(frame.index >= begin) & (frame.index <= settings.end)]
    return data_collector.frame_to_bars(frame, settings.vt_symbol)


def load_ticks(settings: SimSettings) -> tuple[list[BarData], list[TickData]]:
    """The ticks from start to end and the stored bars before start (a tick CSV brings no bars)."""
    if settings.csv is not None:
        ticks = data_collector.read_tick_csv(settings.csv, settings.vt_symbol)
        return [], [tick for tick in ticks if settings.start <= tick.datetime <= settings.end]
    ticks = data_collector.load_tick_data(settings.vt_symbol, settings.start, settings.end, home=settings.home)
    try:
        frame = data_collector.load_history_data(
            settings.vt_symbol,
            settings.start - timedelta(days=settings.warmup_days),
            settings.start - timedelta(microseconds=1),
            home=settings.home,
        )
    except DataError:
        return [], ticks
    return data_collector.frame_to_bars(frame, settings.vt_symbol), ticks


# --- pure rules: bar replay, matching, money -------------------------------------------------------------------


def bar_ticks(
    bar: BarData, gateway_name: str, volume: float, turnover: float, first: bool
) -> tuple[list[TickData], float, float]:
    """The 4 ticks that replay a bar and the new cumulative volume and turnover (see SimGateway's docstring)."""
    extremes = (bar.high_price, bar.low_price) if bar.close_price < bar.open_price else (bar.low_price, bar.high_price)
    ticks = []
    for index, (price, second) in enumerate(
        zip((bar.open_price, *extremes, bar.close_price), TICK_SECONDS, strict=True)
    ):
        carries = index == (1 if first else 0)
        if carries:
            volume, turnover = volume + bar.volume, turnover + bar.turnover
        ticks.append(
            TickData(
                gateway_name=gateway_name,
                symbol=bar.symbol,
                exchange=bar.exchange,
                datetime=bar.datetime + timedelta(seconds=second),
                volume=volume,
                turnover=turnover,
                open_interest=bar.open_interest,
                last_price=price,
                last_volume=bar.volume if carries else 0.0,
                bid_price_1=price,
                ask_price_1=price,
            )
        )
    return ticks, volume, turnover


def closing_tick(last: TickData) -> TickData:
    """A tick at the next minute boundary, same price and totals: it makes BarGenerator emit the last bar."""
    minute = last.datetime.replace(second=0, microsecond=0)
    return replace(last, datetime=minute + timedelta(minutes=1), last_volume=0.0)


def snapshot_tick(history: list[BarData], gateway_name: str) -> TickData:
    """What a broker's snapshot on subscribe tells of a contract before the replay: the last stored bar's close and
    open interest, and the volume of that bar's whole trading day (a tick's volume counts the day)."""
    last = history[-1]
    day = causal_trading_day(last.datetime)
    volume = sum(bar.volume for bar in history if causal_trading_day(bar.datetime) == day)
    return TickData(
        gateway_name=gateway_name,
        symbol=last.symbol,
        exchange=last.exchange,
        datetime=last.datetime + timedelta(seconds=TICK_SECONDS[-1]),
        volume=volume,
        open_interest=last.open_interest,
        last_price=last.close_price,
        bid_price_1=last.close_price,
        ask_price_1=last.close_price,
    )


def cross_bar_limit(direction: Direction, price: float, bar: BarData) -> float | None:
    """vnpy's bar rule: a buy fills if low ≤ price at min(price, open); a sell if high ≥ price at max(price, open)."""
    if direction == Direction.LONG:
        return min(price, bar.open_price) if 0 < bar.low_price <= price else None
    return max(price, bar.open_price) if bar.high_price >= price and bar.high_price > 0 else None


def cross_bar_stop(direction: Direction, price: float, bar: BarData) -> float | None:
    """vnpy's bar rule: a buy stop fills if high ≥ price at max(price, open); a sell stop if low ≤ price at min."""
    if direction == Direction.LONG:
        return max(price, bar.open_price) if bar.high_price >= price else None
    return min(price, bar.open_price) if bar.low_price <= price else None


def cross_tick_limit(direction: Direction, price: float, tick: TickData) -> float | None:
    """vnpy's tick rule: a buy fills if price ≥ ask_1 > 0 at min(price, ask_1); a sell if price ≤ bid_1 at max."""
    if direction == Direction.LONG:
        ask = tick.ask_price_1
        return min(price, ask) if 0 < ask <= price else None
    bid = tick.bid_price_1
    return max(price, bid) if bid > 0 and price <= bid else None


def cross_tick_stop(direction: Direction, price: float, tick: TickData) -> float | None:
    """vnpy's tick rule: a buy stop fills if last ≥ price at max(price, last); a sell stop if last ≤ price at min."""
    last = tick.last_price
    if direction == Direction.LONG:
        return max(price, last) if last >= price else None
    return min(price, last) if last <= price else None


def wall_seconds(gap: float, speed: float) -> float:
    """Wall time for `gap` seconds of replay at `speed`× real time; a gap over GAP_SECONDS takes GAP_WALL_SECONDS
    at most."""
    wall = max(gap, 0.0) / speed
    return min(wall, GAP_WALL_SECONDS) if gap > GAP_SECONDS else wall


def commission(price: float, volume: float, spec: ContractSpec, split: tuple[float, float] | None = None) -> float:
    """What the exchange charges a fill (the contract's fees): an open (`split` None), or a close of `split` =
    (today's, yesterday's) lots, today's at the close-today fee."""
    if split is None:
        return spec.fees.open_fee(price, volume, spec.size)
    return spec.fees.close_fee(price, volume, spec.size, split[0])


def margin(price: float, volume: float, spec: ContractSpec) -> float:
    """Margin of a position or an open order: price × volume × size × margin_rate."""
    return price * volume * spec.size * spec.margin_rate


def on_grid(price: float, pricetick: float) -> bool:
    """Whether a price is positive and a whole number of price ticks."""
    if not (math.isfinite(price) and price > 0):
        return False
    steps = price / pricetick
    return abs(steps - round(steps)) < 1e-6


def close_source(exchange: Exchange, offset: Offset) -> str:
    """Which lots a close takes: `td`, `yd` (SHFE/INE: CLOSE is yesterday's), `any` (today's first: CFFEX) or `fifo`
    (yesterday's first: DCE, CZCE, GFEX)."""
    if exchange in CLOSE_YESTERDAY_EXCHANGES:
        return "td" if offset == Offset.CLOSETODAY else "yd"
    return "any" if exchange in CLOSE_TODAY_FIRST_EXCHANGES else "fifo"


@dataclass
class Side:
    """One direction's holding: today's and yesterday's lots, the lots frozen by close orders, the average price."""

    td: float = 0.0
    yd: float = 0.0
    frozen_td: float = 0.0
    frozen_yd: float = 0.0
    price: float = 0.0

    @property
    def volume(self) -> float:
        return self.td + self.yd


class SimBook:
    """Cash and positions of the simulated account: plain arithmetic, no events or locks (the gateway does both)."""

    def __init__(self, spec: ContractSpec, capital: float) -> None:
        self.spec = spec
        self.capital = capital
        self.realised = 0.0
        self.commission = 0.0
        self.sides: dict[Direction, Side] = {Direction.LONG: Side(), Direction.SHORT: Side()}

    def pnl(self, held: Direction, last: float) -> float:
        """Floating P&L of one side marked at `last` (0 before any price)."""
        side = self.sides[held]
        sign = 1.0 if held == Direction.LONG else -1.0
        return (last - side.price) * side.volume * self.spec.size * sign if last > 0 and side.volume else 0.0

    def balance(self, last: float) -> float:
        """Capital + realised P&L − commission + floating P&L."""
        floating = self.pnl(Direction.LONG, last) + self.pnl(Direction.SHORT, last)
        return self.capital + self.realised - self.commission + floating

    def position_margin(self) -> float:
        return sum(margin(side.price, side.volume, self.spec) for side in self.sides.values())

    def closable(self, held: Direction, source: str) -> float:
        """Lots of a side that a new close order from `source` may still take."""
        side = self.sides[held]
        if source == "td":
            return side.td - side.frozen_td
        if source == "yd":
            return side.yd - side.frozen_yd
        return side.volume - side.frozen_td - side.frozen_yd

    def freeze(self, held: Direction, source: str, volume: float) -> tuple[float, float]:
        """Freeze lots for a close order; the (today, yesterday) split."""
        side = self.sides[held]
        today = volume if source == "td" else 0.0 if source == "yd" else min(volume, side.td - side.frozen_td)
        if source == "fifo":
            today = max(volume - (side.yd - side.frozen_yd), 0.0)
        side.frozen_td += today
        side.frozen_yd += volume - today
        return today, volume - today

    def unfreeze(self, held: Direction, split: tuple[float, float]) -> None:
        side = self.sides[held]
        side.frozen_td -= split[0]
        side.frozen_yd -= split[1]

    def open(self, direction: Direction, price: float, volume: float) -> None:
        """Add today's lots at price (average price by volume)."""
        side = self.sides[direction]
        side.price = (side.price * side.volume + price * volume) / (side.volume + volume)
        side.td += volume

    def close(self, held: Direction, price: float, split: tuple[float, float]) -> float:
        """Close the frozen lots of a side at price; the realised P&L."""
        side = self.sides[held]
        pnl = (price - side.price) * sum(split) * self.spec.size * (1.0 if held == Direction.LONG else -1.0)
        self.unfreeze(held, split)
        side.td -= split[0]
        side.yd -= split[1]
        if side.volume <= 0:
            side.price = 0.0
        self.realised += pnl
        return pnl

    def charge(self, price: float, volume: float, split: tuple[float, float] | None = None) -> float:
        """Book the commission of a fill: an open, or a close of `split` (today's, yesterday's) lots."""
        fee = commission(price, volume, self.spec, split)
        self.commission += fee
        return fee

    def roll(self) -> None:
        """A new trading day: today's lots (and their frozen parts) become yesterday's."""
        for side in self.sides.values():
            side.yd, side.td = side.yd + side.td, 0.0
            side.frozen_yd, side.frozen_td = side.frozen_yd + side.frozen_td, 0.0


@dataclass
class SimOrder:
    """An order the simulated exchange holds."""

    data: OrderData
    seq: int  # the epoch the event engine had reached when it arrived: which prices it may trade on
    held: Direction | None = None  # the side a close order reduces; None for an open
    split: tuple[float, float] = (0.0, 0.0)  # today's and yesterday's lots a close order froze
    margin: float = 0.0  # margin an open order froze


ACCOUNT_FORMAT: int = 1  # the layout of the saved simulated account


def account_to_dict(
    book: SimBook, active: Mapping[str, SimOrder], counts: tuple[int, int], trading_day: date | None
) -> dict[str, Any]:
    """The simulated account as plain JSON: capital, P&L, positions, working orders, id counters, trading day."""
    return {
        "format": ACCOUNT_FORMAT,
        "capital": book.capital,
        "realised": book.realised,
        "commission": book.commission,
        "sides": {direction.name: asdict(side) for direction, side in book.sides.items()},
        "orders": [
            {
                "orderid": order.data.orderid,
                "type": order.data.type.name,
                "direction": order.data.direction.name if order.data.direction else "",
                "offset": order.data.offset.name,
                "price": order.data.price,
                "volume": order.data.volume,
                "datetime": order.data.datetime.isoformat() if order.data.datetime else None,
                "held": order.held.name if order.held else None,
                "split": list(order.split),
                "margin": order.margin,
            }
            for order in active.values()
        ],
        "order_count": counts[0],
        "trade_count": counts[1],
        "trading_day": trading_day.isoformat() if trading_day else None,
    }


def account_from_dict(
    saved: Mapping[str, Any], spec: ContractSpec, contract: ContractData, gateway_name: str
) -> tuple[SimBook, dict[str, SimOrder], tuple[int, int], date | None]:
    """Rebuild what `account_to_dict` saved; ConfigError naming the file's problem."""
    try:
        if saved["format"] != ACCOUNT_FORMAT:
            raise ValueError(f"format {saved['format']}")
        book = SimBook(spec, float(saved["capital"]))
        book.realised, book.commission = float(saved["realised"]), float(saved["commission"])
        for name, side in saved["sides"].items():
            book.sides[Direction[name]] = Side(**{key: float(value) for key, value in side.items()})
        active = {}
        for item in saved["orders"]:
            order = OrderData(
                gateway_name=gateway_name,
                symbol=contract.symbol,
                exchange=contract.exchange,
                orderid=str(item["orderid"]),
                type=OrderType[item["type"]],
                direction=Direction[item["direction"]],
                offset=Offset[item["offset"]],
                price=float(item["price"]),
                volume=float(item["volume"]),
                status=Status.NOTTRADED,
                datetime=datetime.fromisoformat(item["datetime"]) if item["datetime"] else None,
            )
            held = Direction[item["held"]] if item["held"] else None
            split = (float(item["split"][0]), float(item["split"][1]))
            active[order.vt_orderid] = SimOrder(order, 0, held, split, float(item["margin"]))
        day = date.fromisoformat(saved["trading_day"]) if saved["trading_day"] else None
        return book, active, (int(saved["order_count"]), int(saved["trade_count"])), day
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(
            f"模拟账户文件无效（{exc!r}）；可用 `ai_trading_system.py state --gateway sim --clear` 清除 "
            "/ the saved simulated account is invalid"
        ) from None


@dataclass
class ReplayStats:
    """What a replay did so far."""

    bars: int = 0
    ticks: int = 0
    orders: int = 0
    rejected: int = 0
    cancelled: int = 0
    trades: int = 0


# --- the gateway -----------------------------------------------------------------------------------------------


class SimGateway(BaseGateway):
    """A simulated exchange for one contract (module docstring: replay and matching).

    Setting keys: vt_symbol, home, mode (bar | tick), csv (a bar or tick CSV instead of the database), start
    (YYYY-MM-DD, or YYYY-MM-DD HH:MM in China time to resume a replay at that minute's bar), end (YYYY-MM-DD,
    inclusive), speed ("max" or N× real time, gaps over 5 minutes shortened to 3 s of wall time), capital,
    warmup_days, hold (true: also wait for `release()`). The replay starts when the contract is subscribed;
    at its end `finished` is set; `stats`, `orders` and `trades` tell what happened.

    History: the replay clock (the time of the last price the event engine has seen) is "now" for `query_history`.
    CtaEngine asks for [now − days, now) and gets the 1-minute bars in [anchor − days, anchor): anchor is the replay
    start before the replay (the warm-up PreloadedBacktestingEngine.load_bar gives) and the start of the minute being
    replayed during it. Only `warmup_days` of bars before start are loaded.

    Account (as vnpy_ctp reports it): balance = capital + realised − commission + floating P&L at the last price;
    frozen = margin of positions (at their average price) and of open orders; available = balance − frozen; each fill
    pays the contract's fees (`commission`: a close's today lots at close-today). SHFE/INE:
    CLOSE and CLOSEYESTERDAY take yesterday's lots, CLOSETODAY today's; CFFEX closes today's first, DCE/CZCE/GFEX
    yesterday's first. At the
    first price of a new trading day (trading_calendar.causal_trading_day) today's lots become yesterday's. Orders
    never expire.

    Several contracts: a continuous vt_symbol (rb888.SHFE, bar mode, from the database) replays every stored contract
    of its product at once, so a strategy can roll from one to the next. Each contract is published with a snapshot
    tick (`snapshot_tick`: the last bar before start and its day's volume) at connect; within a minute the contracts'
    ticks alternate (every open first), an order is matched against its own contract's bar, and every contract has
    its own positions in one account (the capital is counted once). The account is not kept across processes in this
    mode (`account_file` is ignored).
    """

    default_name: str = "SIM"
    default_setting: dict[str, str | int | float | bool] = {
        "vt_symbol": "rb0000.SHFE",
        "home": "",
        "mode": "bar",
        "csv": "",
        "start": "2016-01-04",
        "end": "2016-01-08",
        "speed": SPEED_MAX,
        "capital": DEFAULT_CAPITAL,
        "warmup_days": DEFAULT_WARMUP_DAYS,
        "hold": False,
    }
    exchanges: list[Exchange] = [
        Exchange.SHFE,
        Exchange.INE,
        Exchange.DCE,
        Exchange.CZCE,
        Exchange.CFFEX,
        Exchange.GFEX,
    ]

    def __init__(self, event_engine: EventEngine, gateway_name: str) -> None:
        super().__init__(event_engine, gateway_name)
        self.finished = threading.Event()
        self.completed = False  # the replay reached its end (not stopped or failed)
        self.settings: SimSettings | None = None
        self.contract: ContractData | None = None  # the first contract (the only one unless several are replayed)
        self.book: SimBook | None = None  # the first contract's positions, and the account's cash
        self.contracts: dict[str, ContractData] = {}
        self.books: dict[str, SimBook] = {}  # every replayed contract's positions, by vt_symbol
        self.clock: datetime | None = None
        self.error: BaseException | None = None
        self._lock = threading.RLock()
        self._stop, self._subscribed, self._released = threading.Event(), threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None
        self._private_type = f"eSimReplay.{gateway_name}"
        self._registered = False
        self._private_handler = guarded("sim.private", self._on_private, logger)
        self._puts_lock = threading.Lock()
        self._puts = self._synced_puts = 0
        self._order_count = self._trade_count = 0
        self._epoch = self._epoch_sent = 0  # marks the event engine has reached / the replay has put
        self._active: dict[str, SimOrder] = {}
        self._orders: dict[str, OrderData] = {}
        self._trades: list[TradeData] = []
        self._stats = ReplayStats()
        self._bars: list[BarData] = []  # history (and in bar mode the bars to replay), oldest first
        self._series: dict[str, tuple[list[datetime], list[BarData]]] = {}  # each contract's bar times and bars
        self._first = 0  # index of the first bar to replay
        self._ticks: list[TickData] = []
        self._last_prices: dict[str, float] = {}
        self._trading_day: date | None = None
        self._pace_at: datetime | None = None
        self._pace_due = 0.0

    # -- public state --

    @property
    def stats(self) -> ReplayStats:
        """A snapshot of the counters."""
        with self._lock:
            return replace(self._stats)

    @property
    def orders(self) -> list[OrderData]:
        """Every order received, in arrival order, in its latest state (copies)."""
        with self._lock:
            return [copy(order) for order in self._orders.values()]

    @property
    def trades(self) -> list[TradeData]:
        """Every fill, oldest first (copies)."""
        with self._lock:
            return [copy(trade) for trade in self._trades]

    # -- BaseGateway --

    def connect(self, setting: dict) -> None:
        """Validate the setting, load the data, publish contract, account and positions and (once the event engine
        has handled them) start the replay thread."""
        if self.settings is not None:
            raise ConfigError(f"{self.gateway_name} 已连接，不能重复连接 / already connected")
        settings = parse_settings(setting)
        spec = contract_spec(settings.vt_symbol, load_contracts(settings_dirs(settings.home)))
        self._load(settings)
        contracts = {vt_symbol: self._contract_data(vt_symbol, spec) for vt_symbol in self._series}
        contract = next(iter(contracts.values()))
        several = is_continuous(settings.vt_symbol)
        with self._lock:
            self.settings, self.contracts, self.contract = settings, contracts, contract
            self.books = {vt: SimBook(spec, settings.capital if not n else 0.0) for n, vt in enumerate(contracts)}
            self.book = self.books[contract.vt_symbol]
            resumed = not several and self._restore_account(spec, contract)
        if not settings.hold:
            self._released.set()
        self.event_engine.register(self._private_type, self._private_handler)
        self._registered = True
        for each in contracts.values():
            self.on_contract(copy(each))
        if several:  # a broker's snapshot of every contract, as CTP sends one on subscribe
            for times, bars in self._series.values():
                history = bars[: bisect.bisect_left(times, settings.start)]
                if history:
                    self.on_tick(snapshot_tick(history, self.gateway_name))
            self.write_log(f"SIM 回放 {len(contracts)} 个合约：{', '.join(contracts)} / several contracts")
        self.write_log("合约信息查询成功 / contract ready")
        with self._lock:
            self._publish_book()
            for order in self._active.values():  # the previous process's working orders, for its successor to see
                self.on_order(copy(order.data))
        if resumed:
            self.write_log(
                f"SIM 接续已保存的模拟账户 {settings.account_file}：余额 {self._account_data().balance:,.2f}，"
                f"挂单 {len(self._active)} 笔 / resuming the saved simulated account"
            )
        count = len(self._bars) - self._first if settings.mode == "bar" else len(self._ticks)
        speed = "max" if settings.speed is None else f"{settings.speed:g}x"
        self.write_log(
            f"SIM 连接成功：回放 {settings.vt_symbol} {settings.start:%Y-%m-%d %H:%M} ~ {settings.end:%Y-%m-%d}，"
            f"{count:,} 个{'K线' if settings.mode == 'bar' else ' tick'}，速度 {speed}，"
            f"订阅后{'调用 release() 后' if settings.hold else ''}开始 / connected"
        )
        if getattr(self.event_engine, "_thread", None) is not threading.current_thread():  # return once MainEngine
            self._sync(timeout=JOIN_SECONDS)  # knows the contract: CtaEngine subscribes only to known contracts
        self._thread = threading.Thread(target=self._run, name=f"SimReplay-{self.gateway_name}", daemon=True)
        self._thread.start()

    def _contract_data(self, vt_symbol: str, spec: ContractSpec) -> ContractData:
        """The contract as the gateway publishes it."""
        symbol, exchange = data_collector.parse_vt_symbol(vt_symbol)
        return ContractData(
            gateway_name=self.gateway_name,
            symbol=symbol,
            exchange=exchange,
            name=vt_symbol,
            product=Product.FUTURES,
            size=spec.size,
            pricetick=spec.pricetick,
            min_volume=1,
            stop_supported=True,
            net_position=False,
            history_data=True,
        )

    def roll_flat_times(self) -> set[int]:
        """Bar times before the roll gaps of the replayed series (history included), as a backtest of the same bars
        sets them on the strategy: a replay of a continuous series is flat before each roll as the backtest is. None
        when several contracts are replayed: each one's own series has no roll."""
        import data_processor

        if not self._bars or len(self._series) > 1:
            return set()
        return data_processor.roll_flat_times(data_collector.bars_to_frame(self._bars).set_index("datetime"))

    def close(self) -> None:
        """Stop the replay thread and unregister the sync handler; safe to call twice."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(JOIN_SECONDS)
            if thread.is_alive():
                logger.error("回放线程 %.0f 秒内未结束 / replay thread still running", JOIN_SECONDS)
        if self._registered:
            self.event_engine.unregister(self._private_type, self._private_handler)
            self._registered = False
        self.finished.set()

    def subscribe(self, req: SubscribeRequest) -> None:
        """Subscribing the replayed contract starts the replay (with `hold`, after `release()` too)."""
        settings = self.settings
        if settings is None or req.vt_symbol not in self.contracts:
            replayed = ", ".join(self.contracts) or "无 / none"
            self.write_log(f"订阅失败：{req.vt_symbol} 不在回放中（回放 {replayed}）/ not replayed by this gateway")
            return
        if not self._subscribed.is_set():
            self._subscribed.set()
            waiting = "，等待 release()" if not self._released.is_set() else ""
            self.write_log(f"订阅 {req.vt_symbol} 成功{waiting} / subscribed")

    def release(self) -> None:
        """Let a `hold` replay start (once subscribed); harmless otherwise."""
        self._released.set()

    def send_order(self, req: OrderRequest) -> str:
        """Accept (SUBMITTING → NOTTRADED) or reject (with the reason in the log) an order; its vt_orderid."""
        try:
            with self._lock:
                return self._accept(req)
        except Exception:
            logger.exception("SIM 处理委托失败 / send_order failed")
            self.write_log("委托处理出错，见日志 / send_order failed, see the log")
            return ""

    def cancel_order(self, req: CancelRequest) -> None:
        """Cancel an active order: a CANCELLED order event follows through the event engine."""
        try:
            with self._lock:
                vt_orderid = f"{self.gateway_name}.{req.orderid}"
                order = self._active.pop(vt_orderid, None)
                if order is None:
                    self.write_log(f"撤单失败：委托 {vt_orderid} 不存在或已结束 / nothing to cancel")
                    return
                if order.held is not None:
                    self.books[order.data.vt_symbol].unfreeze(order.held, order.split)
                order.data.status = Status.CANCELLED
                self._stats.cancelled += 1
                self.on_order(copy(order.data))
                self._publish_book()
                self._save_account()
        except Exception:
            logger.exception("SIM 撤单失败 / cancel_order failed")

    def query_account(self) -> None:
        with self._lock:
            if self.book is not None:
                self.on_account(self._account_data())

    def query_position(self) -> None:
        with self._lock:
            if self.book is not None:
                self._publish_positions()

    def query_history(self, req: HistoryRequest) -> list[BarData]:
        """The 1-minute bars in [anchor − (req.end − req.start), anchor): the replay clock is now (class docstring)."""
        try:
            return self._history(req)
        except Exception:
            logger.exception("SIM 查询历史K线失败 / query_history failed")
            self.write_log("查询历史K线出错，见日志 / history query failed, see the log")
            return []

    def on_event(self, type: str, data: object = None) -> None:
        """Count every event this gateway puts, so the replay knows when the event engine has handled them."""
        with self._puts_lock:
            self._puts += 1
        super().on_event(type, data)

    # -- loading and history --

    def _load(self, settings: SimSettings) -> None:
        """Load the history and the data to replay; DataError if nothing lies between start and end."""
        if settings.mode == "bar":
            bars, ticks = load_bars(settings), list[TickData]()
        else:
            bars, ticks = load_ticks(settings)
        times = [bar.datetime for bar in bars]
        first = bisect.bisect_left(times, settings.start)
        if (settings.mode == "bar" and first == len(bars)) or (settings.mode == "tick" and not ticks):
            source = settings.csv or "数据库 / database"
            kind = "K线" if settings.mode == "bar" else " tick"
            raise DataError(
                f"{source} 中没有 {settings.vt_symbol} 在 {settings.start:%Y-%m-%d %H:%M} ~ "
                f"{settings.end:%Y-%m-%d} 可回放的{kind} / no data to replay in this range"
            )
        for tick in ticks:  # our own fresh objects, not yet published
            tick.gateway_name = self.gateway_name
        series: dict[str, tuple[list[datetime], list[BarData]]] = {settings.vt_symbol: ([], [])}
        if is_continuous(settings.vt_symbol):
            series = {bar.vt_symbol: ([], []) for bar in bars[first:]}  # the contracts that trade in the range
        for bar in bars:
            if bar.vt_symbol in series:
                series[bar.vt_symbol][0].append(bar.datetime)
                series[bar.vt_symbol][1].append(bar)
        self._bars = [bar for bar in bars if bar.vt_symbol in series]
        self._first = bisect.bisect_left([bar.datetime for bar in self._bars], settings.start)
        self._series, self._ticks = series, ticks

    def history_anchor(self) -> datetime:
        """The "now" of history requests: the replay start before the replay, then the start of the minute being
        replayed."""
        settings, clock = self.settings, self.clock
        if settings is None:
            raise ConfigError("SIM 未连接 / not connected")
        return settings.start if clock is None or clock < settings.start else clock.replace(second=0, microsecond=0)

    def _history(self, req: HistoryRequest) -> list[BarData]:
        settings = self.settings
        if settings is None or req.vt_symbol not in self._series or req.interval not in (None, Interval.MINUTE):
            interval = req.interval.value if req.interval else ""
            self.write_log(f"没有 {req.vt_symbol} {interval} 的历史K线（只有回放合约的 1m）/ no such history")
            return []
        span = (req.end or datetime.now(CHINA_TZ)) - req.start
        anchor = self.history_anchor()
        times, bars = self._series[req.vt_symbol]
        low = bisect.bisect_left(times, anchor - span)
        high = bisect.bisect_left(times, anchor)
        if span > timedelta(days=settings.warmup_days, seconds=1):
            self.write_log(
                f"请求 {span.days} 天历史，但只加载了 warmup_days={settings.warmup_days} 天；请增大 "
                "warmup_days / history request longer than warmup_days"
            )
        return [replace(bar, gateway_name=self.gateway_name) for bar in bars[low:high]]

    # -- orders and the account (called with the lock held) --

    def _account(self) -> SimBook:
        if self.book is None:
            raise ConfigError("SIM 未连接 / not connected")
        return self.book

    def _accept(self, req: OrderRequest) -> str:
        self._order_count += 1
        order = req.create_order_data(str(self._order_count), self.gateway_name)
        order.datetime = self.clock or (self.settings.start if self.settings else None)
        self._orders[order.vt_orderid] = order
        self._stats.orders += 1
        reason = self._refusal(req)
        if reason:
            order.status = Status.REJECTED
            self._stats.rejected += 1
            self.on_order(copy(order))
            self.write_log(f"委托 {order.vt_orderid} 被拒绝：{reason}")
            self._save_account()
            return order.vt_orderid
        held = None if req.offset == Offset.OPEN else OPPOSITE[req.direction]
        book = self.books[req.vt_symbol]
        held_order = SimOrder(order, self._epoch, held)
        if held is None:
            held_order.margin = margin(req.price, req.volume, book.spec)
        else:
            held_order.split = book.freeze(held, close_source(req.exchange, req.offset), req.volume)
        self._active[order.vt_orderid] = held_order
        self.on_order(copy(order))
        order.status = Status.NOTTRADED
        self.on_order(copy(order))
        self._publish_book()
        self._save_account()
        return order.vt_orderid

    def _refusal(self, req: OrderRequest) -> str:
        """Why an order is rejected, or empty."""
        if self.settings is None or self.book is None:
            return "网关未连接 / not connected"
        if self.finished.is_set():
            return "回放已结束 / the replay has finished"
        book = self.books.get(req.vt_symbol)
        if book is None:
            return f"未知合约 {req.vt_symbol}（回放 {', '.join(self.books)}）/ unknown symbol"
        if req.type not in (OrderType.LIMIT, OrderType.STOP):
            return f"不支持的委托类型 {req.type.value}，只支持限价单和停止单 / only limit and stop orders"
        if req.direction not in OPPOSITE:
            return f"买卖方向 {req.direction} 无效 / direction must be long or short"
        if not (math.isfinite(req.volume) and req.volume > 0 and req.volume == int(req.volume)):
            return f"委托数量 {req.volume} 必须是正整数 / volume must be a positive whole number"
        if not on_grid(req.price, book.spec.pricetick):
            return f"价格 {req.price} 不是最小变动价位 {book.spec.pricetick:g} 的正整数倍 / price off the tick grid"
        if req.offset == Offset.OPEN:
            need, free = margin(req.price, req.volume, book.spec), self._available()
            return (
                ""
                if need <= free + 1e-6
                else (f"可用资金不足：需要保证金 {need:,.2f}，可用 {free:,.2f} / not enough margin")
            )
        if req.offset in (Offset.CLOSE, Offset.CLOSETODAY, Offset.CLOSEYESTERDAY):
            held, source = OPPOSITE[req.direction], close_source(req.exchange, req.offset)
            free = book.closable(held, source)
            return (
                ""
                if req.volume <= free
                else (
                    f"可平仓位不足：{req.offset.value} {req.volume:g} 手，{held.value}{SOURCE_NAMES[source]}"
                    f"可平 {free:g} 手 / not enough position to close"
                )
            )
        return f"开平标志 {req.offset.value!r} 无效，应为开仓或平仓 / offset must open or close"

    def _save_account(self) -> None:
        """Write the account where the setting asks (lock held): a restarted process continues it."""
        settings = self.settings
        if settings is None or settings.account_file is None or self.book is None or len(self.books) > 1:
            return
        counts = (self._order_count, self._trade_count)
        write_json_atomic(settings.account_file, account_to_dict(self.book, self._active, counts, self._trading_day))

    def _restore_account(self, spec: ContractSpec, contract: ContractData) -> bool:
        """Continue a saved account (lock held); False when there is none."""
        settings = self.settings
        if settings is None or settings.account_file is None or not settings.account_file.is_file():
            return False
        saved = read_json_object(settings.account_file)
        self.book, self._active, counts, self._trading_day = account_from_dict(saved, spec, contract, self.gateway_name)
        self.books = {contract.vt_symbol: self.book}
        self._order_count, self._trade_count = counts
        self._orders = {vt_orderid: order.data for vt_orderid, order in self._active.items()}
        return True

    def _order_margin(self) -> float:
        return sum(order.margin for order in self._active.values())

    def _available(self) -> float:
        account = self._account_data()
        return account.balance - account.frozen

    def _fill(self, order: SimOrder, price: float, when: datetime) -> None:
        """Fill an order whole at price: order ALLTRADED, trade, positions and account."""
        data, book = order.data, self.books[order.data.vt_symbol]
        assert data.direction is not None
        del self._active[data.vt_orderid]
        if order.held is None:
            book.open(data.direction, price, data.volume)
            book.charge(price, data.volume)
        else:
            book.close(order.held, price, order.split)
            book.charge(price, data.volume, order.split)
        data.traded, data.status = data.volume, Status.ALLTRADED
        self._trade_count += 1
        trade = TradeData(
            gateway_name=self.gateway_name,
            symbol=data.symbol,
            exchange=data.exchange,
            orderid=data.orderid,
            tradeid=str(self._trade_count),
            direction=data.direction,
            offset=data.offset,
            price=price,
            volume=data.volume,
            datetime=when,
        )
        self._trades.append(trade)
        self._stats.trades += 1
        self.on_order(copy(data))
        self.on_trade(copy(trade))
        self._publish_book()
        self._save_account()

    def _account_data(self) -> AccountData:
        self._account()
        prices = self._last_prices
        return AccountData(
            gateway_name=self.gateway_name,
            accountid=self.gateway_name,
            balance=sum(book.balance(prices.get(vt_symbol, 0.0)) for vt_symbol, book in self.books.items()),
            frozen=sum(book.position_margin() for book in self.books.values()) + self._order_margin(),
        )

    def _publish_positions(self) -> None:
        for vt_symbol, book in self.books.items():
            self._publish_contract_positions(self.contracts[vt_symbol], book, self._last_prices.get(vt_symbol, 0.0))

    def _publish_contract_positions(self, contract: ContractData, book: SimBook, last_price: float) -> None:
        for direction, side in book.sides.items():
            self.on_position(
                PositionData(
                    gateway_name=self.gateway_name,
                    symbol=contract.symbol,
                    exchange=contract.exchange,
                    direction=direction,
                    volume=side.volume,
                    frozen=side.frozen_td + side.frozen_yd,
                    price=side.price,
                    pnl=book.pnl(direction, last_price),
                    yd_volume=side.yd,
                )
            )

    def _publish_book(self) -> None:
        self._publish_positions()
        self.on_account(self._account_data())

    # -- the replay thread --

    def _on_private(self, event: Event) -> None:
        """Event-engine handler (registered guarded) of the replay's private events: a sync point, or a mark."""
        if isinstance(event.data, threading.Event):
            event.data.set()
        else:
            with self._lock:
                self._epoch, self.clock, vt_symbol, self._last_prices[vt_symbol] = event.data

    def _put_mark(self, when: datetime, vt_symbol: str, price: float) -> int:
        """Queue a mark: when the event engine reaches it, the clock, the contract's last price and the epoch move
        on."""
        self._epoch_sent += 1
        self.on_event(self._private_type, (self._epoch_sent, when, vt_symbol, price))
        return self._epoch_sent

    def _sync(self, timeout: float = math.inf) -> bool:
        """Wait until the event engine has handled every event this gateway put; False when the replay must stop."""
        deadline = time.monotonic() + timeout
        while True:
            with self._puts_lock:
                mark = self._puts
            if mark == self._synced_puts:
                return True
            done = threading.Event()
            self.event_engine.put(Event(self._private_type, done))
            while not done.wait(POLL_SECONDS):
                stopped = self._stop.is_set() or not getattr(self.event_engine, "_active", True)
                if stopped or time.monotonic() > deadline:
                    return False
            self._synced_puts = mark  # handlers may have put more since: go round again

    def _run(self) -> None:
        """Replay thread: wait for subscribe (and release), replay, log the end, set `finished`."""
        try:
            while not (self._subscribed.is_set() and self._released.is_set()):
                if self._stop.wait(POLL_SECONDS):
                    return
            bars = self.settings is not None and self.settings.mode == "bar"
            done = self._replay_bars() if bars else self._replay_ticks()
            if done and self._sync():
                self.completed = True
                stats = self.stats
                self.write_log(
                    f"回放结束：{stats.bars:,} 根K线，{stats.ticks:,} 个 tick，{stats.orders} 笔委托，"
                    f"{stats.trades} 笔成交 / replay finished"
                )
                self._sync()
            elif not self._stop.is_set():
                self.write_log("事件引擎已停止，回放中止 / event engine stopped, replay aborted")
        except Exception as exc:
            self.error = exc
            logger.exception("SIM 回放线程出错 / replay thread failed")
            self.write_log(f"回放出错，已停止：{exc!r} / replay failed")
        finally:
            self.finished.set()

    def _replay_bars(self) -> bool:
        """Each bar: its 4 ticks, then (once the event engine has handled them) the match; a closing tick at the end.

        Orders carry the epoch the event engine had reached when they arrived: up to the mark of bar k's first tick
        they may trade on bar k; from its second tick to its close they saw bar k's prices and wait for bar k+1.
        """
        totals: dict[str, tuple[float, float]] = {}  # each contract's cumulative volume and turnover
        last: list[TickData] = []
        index = self._first
        while index < len(self._bars):
            minute = self._bars[index].datetime
            group: dict[str, BarData] = {}
            while index < len(self._bars) and self._bars[index].datetime == minute:
                group[self._bars[index].vt_symbol] = self._bars[index]
                index += 1
            if not self._roll(minute):
                return False
            replayed = []
            for vt_symbol, bar in group.items():
                volume, turnover = totals.get(vt_symbol, (0.0, 0.0))
                ticks, volume, turnover = bar_ticks(bar, self.gateway_name, volume, turnover, vt_symbol not in totals)
                totals[vt_symbol] = (volume, turnover)
                replayed.append(ticks)
            opened = max(self._publish(ticks[0]) for ticks in replayed)  # every contract's open first
            for step in range(1, len(TICK_SECONDS)):
                for ticks in replayed:
                    self._publish(ticks[step])
            after = min(self._put_mark(t[-1].datetime, t[-1].vt_symbol, t[-1].last_price) for t in replayed)
            if not self._sync() or not self._match(cross_bar_limit, cross_bar_stop, group, opened, after):
                return False
            with self._lock:
                self._stats.bars += len(group)
                self._mark()
            last = [ticks[-1] for ticks in replayed]
        for tick in last:
            self._publish(closing_tick(tick))
        return True

    def _replay_ticks(self) -> bool:
        """Each tick: once the event engine has handled the previous one, match every order, then publish it."""
        marked: datetime | None = None
        for tick in self._ticks:
            if not self._roll(tick.datetime) or not self._sync():
                return False
            self._pace(tick.datetime)
            market = {tick.vt_symbol: tick}
            if not self._match(cross_tick_limit, cross_tick_stop, market, self._epoch_sent, self._epoch_sent):
                return False
            self._publish(tick, paced=True)
            minute = tick.datetime.replace(second=0, microsecond=0)
            if minute != marked:
                with self._lock:
                    self._mark()
                marked = minute
        return True

    def _match(self, limit_rule: Rule, stop_rule: Rule, market: Mapping[str, Any], opened: int, after: int) -> bool:
        """Cross the limit orders of epoch ≤ opened, then (once their trades were handled, as vnpy calls on_trade in
        between) the stop orders of epoch ≤ opened or ≥ after; the others saw this market's prices. `market` holds
        each replayed contract's bar (or tick) of this moment: an order is matched against its own contract's."""
        when: datetime = next(iter(market.values())).datetime
        if self._cross(OrderType.LIMIT, limit_rule, market, when, lambda seq: seq <= opened) and not self._sync():
            return False
        self._cross(OrderType.STOP, stop_rule, market, when, lambda seq: seq <= opened or seq >= after)
        return True

    def _cross(
        self, kind: OrderType, rule: Rule, market: Mapping[str, Any], when: datetime, eligible: Callable[[int], bool]
    ) -> int:
        """Fill every eligible active order of a kind that crosses (a snapshot, in arrival order); the fills."""
        filled = 0
        with self._lock:
            for order in [o for o in self._active.values() if o.data.type == kind and eligible(o.seq)]:
                assert order.data.direction is not None
                if order.data.vt_symbol not in market:
                    continue  # its contract has no price this minute
                price = rule(order.data.direction, order.data.price, market[order.data.vt_symbol])
                if price is not None:
                    self._fill(order, price, when)
                    filled += 1
        return filled

    def _roll(self, when: datetime) -> bool:
        """On the first price of a new trading day, today's lots become yesterday's (positions are published)."""
        day = causal_trading_day(when)
        if self._trading_day is not None and day <= self._trading_day:
            return True  # the same day, or a resumed replay going over days the saved account has seen
        if self._trading_day is not None:
            if not self._sync():  # orders reacting to the old day arrive first
                return False
            with self._lock:
                for book in self.books.values():
                    book.roll()
                for order in self._active.values():
                    if order.held is not None:
                        order.split = (0.0, sum(order.split))
                self._publish_positions()
        with self._lock:
            self._trading_day = day
            self._save_account()
        return True

    def _mark(self) -> None:
        """Publish positions and account marked at the last price while something is held (lock held)."""
        if any(side.volume for book in self.books.values() for side in book.sides.values()):
            self._publish_book()

    def _publish(self, tick: TickData, paced: bool = False) -> int:
        """Wait for the tick's moment (unless done), put its mark, then the tick; the mark's epoch."""
        if not paced:
            self._pace(tick.datetime)
        epoch = self._put_mark(tick.datetime, tick.vt_symbol, tick.last_price)
        self.on_tick(tick)
        with self._lock:
            self._stats.ticks += 1
        return epoch

    def _pace(self, when: datetime) -> None:
        """Sleep so replay time runs at `speed`× wall time, long gaps shortened; never catch up in a burst."""
        speed = self.settings.speed if self.settings else None
        if speed is None:
            return
        if self._pace_at is None:
            self._pace_at, self._pace_due = when, time.monotonic()
            return
        due = self._pace_due + wall_seconds((when - self._pace_at).total_seconds(), speed)
        self._pace_at = when
        delay = due - time.monotonic()
        if delay > 0:
            self._stop.wait(delay)
        self._pace_due = due if delay > 0 else time.monotonic()
