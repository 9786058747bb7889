"""Pre-trade risk: a pure check of (order, account state, now) with a reason, and the account book it reads."""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import date, datetime, timedelta
from typing import Any

from vnpy.trader.constant import Direction, Exchange, Offset
from vnpy.trader.object import OrderRequest, TradeData

from config import ConfigError, ContractSpec, DataError, Fees, RiskSettings
from trading_calendar import causal_trading_day

logger = logging.getLogger(__name__)

ORDER_HISTORY: int = 1000  # orders remembered for the rate and duplicate limits
RATE_WINDOW: timedelta = timedelta(seconds=60)
TICK_TOLERANCE: float = 1e-6  # of one price tick
CLOSING: frozenset[Offset] = frozenset({Offset.CLOSE, Offset.CLOSETODAY, Offset.CLOSEYESTERDAY})
SIDES: tuple[Direction, Direction] = (Direction.LONG, Direction.SHORT)
DIRECTION_NAMES: dict[Direction, str] = {Direction.LONG: "多", Direction.SHORT: "空"}
OFFSET_NAMES: dict[Offset, str] = {
    Offset.OPEN: "开",
    Offset.CLOSE: "平",
    Offset.CLOSETODAY: "平今",
    Offset.CLOSEYESTERDAY: "平昨",
}
BUCKET_NAMES: dict[Offset, str] = {Offset.CLOSE: "", Offset.CLOSETODAY: "今仓", Offset.CLOSEYESTERDAY: "昨仓"}
POSITION_FIELDS: dict[str, str] = {
    "long_today": "多头今仓",
    "long_yd": "多头昨仓",
    "short_today": "空头今仓",
    "short_yd": "空头昨仓",
}
AWAITING_ACCOUNT: str = "尚未收到账户资金（AccountData），暂不开仓 / no account balance yet: no opening"

SentOrder = tuple[datetime, Direction, Offset, float, float]  # time, direction, offset, price, volume


@dataclass(frozen=True)
class RiskDecision:
    """The verdict on one order: allowed, or why not and the largest volume of it that would pass."""

    allowed: bool
    reason: str  # why refused (Chinese first); "" when allowed
    max_volume: float  # largest volume of this same order that would pass; == volume when allowed

    @classmethod
    def allow(cls, volume: float) -> RiskDecision:
        """The order passes as it is."""
        return cls(True, "", volume)

    @classmethod
    def refuse(cls, reason: str, max_volume: float = 0.0) -> RiskDecision:
        """The order is refused; `max_volume` of it would pass (0 when no volume would)."""
        return cls(False, reason, max_volume)


@dataclass
class PositionBook:
    """Long and short positions kept apart, each split into today and yesterday (SHFE closes them separately)."""

    long_today: float = 0.0
    long_yd: float = 0.0
    short_today: float = 0.0
    short_yd: float = 0.0
    long_price: float = 0.0  # average open price of the long side, 0 when flat
    short_price: float = 0.0

    @property
    def long(self) -> float:
        return self.long_today + self.long_yd

    @property
    def short(self) -> float:
        return self.short_today + self.short_yd

    @property
    def net(self) -> float:
        return self.long - self.short

    def closable(self, direction: Direction, offset: Offset) -> float:
        """How much an order of `direction` with a closing `offset` can close (a SHORT order closes longs)."""
        side = _closed_side(direction)
        today, yd = getattr(self, f"{side}_today"), getattr(self, f"{side}_yd")
        if offset == Offset.CLOSETODAY:
            return float(today)
        if offset == Offset.CLOSEYESTERDAY:
            return float(yd)
        return float(today + yd)

    def average_price(self, direction: Direction) -> float:
        """Average open price of the side that an order of `direction` closes."""
        return float(getattr(self, f"{_closed_side(direction)}_price"))

    def add(self, direction: Direction, volume: float, price: float) -> None:
        """Open `volume` at `price` on the side of `direction`, into today's bucket, updating its average price."""
        side = "long" if direction == Direction.LONG else "short"
        held = self.long if side == "long" else self.short
        average = getattr(self, f"{side}_price")
        setattr(self, f"{side}_price", (average * held + price * volume) / (held + volume))
        setattr(self, f"{side}_today", getattr(self, f"{side}_today") + volume)

    def close_split(
        self, direction: Direction, offset: Offset, volume: float, today_first: bool = False
    ) -> tuple[float, float]:
        """The (today, yesterday) lots a close of up to `volume` takes from the side `direction` closes: CLOSE takes
        yesterday's first (first opened, first closed, as DCE, CZCE and GFEX match it) or with `today_first`
        today's first (CFFEX), CLOSETODAY only today's."""
        side = _closed_side(direction)
        today, yd = getattr(self, f"{side}_today"), getattr(self, f"{side}_yd")
        if today_first and offset == Offset.CLOSE:
            from_today = min(volume, today)
            return float(from_today), float(min(volume - from_today, yd))
        from_yd = 0.0 if offset == Offset.CLOSETODAY else min(volume, yd)
        from_today = 0.0 if offset == Offset.CLOSEYESTERDAY else min(volume - from_yd, today)
        return float(from_today), float(from_yd)

    def remove(self, direction: Direction, offset: Offset, volume: float, today_first: bool = False) -> float:
        """Close up to `volume` of the side `direction` closes (`close_split`); returns what closed."""
        side = _closed_side(direction)
        today, yd = getattr(self, f"{side}_today"), getattr(self, f"{side}_yd")
        from_today, from_yd = self.close_split(direction, offset, volume, today_first)
        setattr(self, f"{side}_today", today - from_today)
        setattr(self, f"{side}_yd", yd - from_yd)
        if getattr(self, f"{side}_today") + getattr(self, f"{side}_yd") == 0:
            setattr(self, f"{side}_price", 0.0)
        return float(from_today + from_yd)

    def roll(self) -> None:
        """A new trading day: today's positions become yesterday's."""
        self.long_yd, self.long_today = self.long_yd + self.long_today, 0.0
        self.short_yd, self.short_today = self.short_yd + self.short_today, 0.0


def closes_today_first(exchange: Exchange | None) -> bool:
    """Whether a plain CLOSE on `exchange` takes today's lots first (CFFEX; sim_gateway.close_source cites why)."""
    return exchange == Exchange.CFFEX


def fill_fee(positions: PositionBook, trade: TradeData, fees: Fees, size: float) -> float:
    """What the exchange charges a fill against the book before it: the open fee, or the close fee with the lots
    opened on the current trading day (`close_split`) at the close-today fee (a CLOSETODAY order: all of them)."""
    if trade.offset == Offset.OPEN:
        return fees.open_fee(trade.price, trade.volume, size)
    assert trade.direction is not None
    if trade.offset == Offset.CLOSETODAY:
        today = trade.volume
    else:
        first = closes_today_first(trade.exchange)
        today, _ = positions.close_split(trade.direction, trade.offset, trade.volume, first)
    return fees.close_fee(trade.price, trade.volume, size, today)


def trade_fees(trades: Sequence[TradeData], fees: Fees, size: float) -> list[float]:
    """The fee of each fill of a run, in order, booked as the risk book books them: positions roll to yesterday's at
    each new trading day (trading_calendar.causal_trading_day of the fill), a close takes yesterday's lots first
    (CFFEX: today's first)."""
    book = PositionBook()
    day: date | None = None
    charged = []
    for trade in trades:
        assert trade.datetime is not None and trade.direction is not None
        when = causal_trading_day(_aware(trade.datetime))
        if day is not None and when > day:
            book.roll()
        day = when if day is None else max(day, when)
        charged.append(fill_fee(book, trade, fees, size))
        if trade.offset == Offset.OPEN:
            book.add(trade.direction, trade.volume, trade.price)
        else:
            book.remove(trade.direction, trade.offset, trade.volume, closes_today_first(trade.exchange))
    return charged


def position_differences(ours: PositionBook, broker: PositionBook) -> list[str]:
    """Which of long / short × today / yesterday differ between the strategy's book and the broker's, for a person."""
    return [
        f"{name}：策略 {getattr(ours, key):g}，券商 {getattr(broker, key):g}"
        for key, name in POSITION_FIELDS.items()
        if getattr(ours, key) != getattr(broker, key)
    ]


def same_holdings(ours: PositionBook, broker: PositionBook) -> bool:
    """Whether the long and the short totals agree (the today / yesterday split may still differ)."""
    return ours.long == broker.long and ours.short == broker.short


def with_broker_split(ours: PositionBook, broker: PositionBook) -> PositionBook:
    """The broker's today / yesterday split with our average prices where we know them (the broker's else)."""
    return replace(
        broker,
        long_price=ours.long_price if ours.long and ours.long_price else broker.long_price,
        short_price=ours.short_price if ours.short and ours.short_price else broker.short_price,
    )


@dataclass
class AccountState:
    """Everything the pre-trade check reads: money, positions, the day's reference equity, halts and sent orders."""

    capital: float  # the configured capital: equity at the start, and the cap on the account's balance
    positions: PositionBook
    realised: float = 0.0  # cumulative realised P&L in money (contract size applied)
    commission: float = 0.0
    slippage_cost: float = 0.0  # see RiskManager(slippage=...)
    last_price: float = math.nan
    trading_day: date | None = None
    day_start_equity: float = math.nan  # the book's equity when the trading day began (set at its first mark)
    balance: float = math.nan  # the broker's account balance (live), nan until it arrives and in backtests
    day_start_balance: float = math.nan  # the balance when the trading day began, or when it first arrived that day
    account_required: bool = False  # live: nothing opens until the broker's balance has arrived
    halted: bool = False
    halt_reason: str = ""
    halted_at: datetime | None = None  # when the current halt began
    book_out_of_sync: bool = False  # a fill closed more than the book held; only sync_positions lifts this halt
    held: bool = False  # opening held by the model-health switch or a person: lifted only by `release`
    hold_reason: str = ""
    held_at: datetime | None = None
    limit_up: float = math.nan  # the day's price band when known, else nan
    limit_down: float = math.nan
    orders: deque[SentOrder] = field(default_factory=lambda: deque(maxlen=ORDER_HISTORY))

    def unrealised(self, size: float, price: float | None = None) -> float:
        """Open P&L in money at `price` (default the last mark); a flat side contributes 0 even without a mark."""
        mark = self.last_price if price is None else price
        book = self.positions
        longs = (mark - book.long_price) * book.long * size if book.long else 0.0
        shorts = (book.short_price - mark) * book.short * size if book.short else 0.0
        return longs + shorts

    def book_equity(self, size: float, price: float | None = None) -> float:
        """Capital plus realised minus costs plus open P&L at `price` (default the last mark): the strategy's own."""
        costs = self.commission + self.slippage_cost
        return self.capital + self.realised - costs + self.unrealised(size, price)

    def equity(self, size: float, price: float | None = None) -> float:
        """The book's equity, capped by the broker's balance once it is known (an account may hold less)."""
        own = self.book_equity(size, price)
        return min(own, self.balance) if math.isfinite(self.balance) else own

    def daily_pnl(self, size: float, price: float | None = None) -> float:
        """The book's equity change since the trading day began (nan before the first mark)."""
        return self.book_equity(size, price) - self.day_start_equity

    def loss_base(self) -> float:
        """What the daily loss limit is a fraction of: the day-start equity, capped by the day-start balance."""
        start = self.day_start_equity
        return min(start, self.day_start_balance) if math.isfinite(self.day_start_balance) else start


def account_to_dict(state: AccountState) -> dict[str, Any]:
    """What of the account must survive a restart, as plain JSON values (nan as null); sent orders are not kept."""
    return {
        "positions": asdict(state.positions),
        "realised": state.realised,
        "commission": state.commission,
        "slippage_cost": state.slippage_cost,
        "last_price": _plain(state.last_price),
        "trading_day": state.trading_day.isoformat() if state.trading_day else None,
        "day_start_equity": _plain(state.day_start_equity),
        "day_start_balance": _plain(state.day_start_balance),
        "halted": state.halted,
        "halt_reason": state.halt_reason,
        "halted_at": state.halted_at.isoformat() if state.halted_at else None,
        "book_out_of_sync": state.book_out_of_sync,
        "held": state.held,
        "hold_reason": state.hold_reason,
        "held_at": state.held_at.isoformat() if state.held_at else None,
    }


def restore_account(state: AccountState, saved: Mapping[str, Any]) -> None:
    """Put a saved account (`account_to_dict`) back into `state`; DataError naming the first bad value."""
    positions = saved.get("positions")
    if not isinstance(positions, Mapping) or set(positions) != {f.name for f in fields(PositionBook)}:
        raise DataError(f"状态中的持仓无效：{positions!r} / saved positions are invalid")
    book = PositionBook(**{key: _saved_number(positions, key, allow_nan=False) for key in positions})
    if min(book.long_today, book.long_yd, book.short_today, book.short_yd) < 0:
        raise DataError(f"状态中的持仓为负：{positions!r} / saved positions are negative")
    day = saved.get("trading_day")
    halted_at = saved.get("halted_at")
    try:
        trading_day = date.fromisoformat(day) if day is not None else None
        halt_time = _aware(datetime.fromisoformat(halted_at)) if halted_at is not None else None
    except (TypeError, ValueError):
        raise DataError(f"状态中的交易日或熔断时间无效：{day!r}, {halted_at!r} / saved dates are invalid") from None
    halted, out_of_sync, reason = saved.get("halted"), saved.get("book_out_of_sync"), saved.get("halt_reason", "")
    if not isinstance(halted, bool) or not isinstance(out_of_sync, bool) or not isinstance(reason, str):
        raise DataError(f"状态中的熔断标志无效：{halted!r}, {out_of_sync!r} / saved halt flags are invalid")
    state.positions = book
    state.realised = _saved_number(saved, "realised", allow_nan=False)
    state.commission = _saved_number(saved, "commission", allow_nan=False)
    state.slippage_cost = _saved_number(saved, "slippage_cost", allow_nan=False)
    state.last_price = _saved_number(saved, "last_price")
    state.trading_day = trading_day
    state.day_start_equity = _saved_number(saved, "day_start_equity")
    state.day_start_balance = _saved_number(saved, "day_start_balance")
    state.halted, state.book_out_of_sync = halted, out_of_sync
    state.halt_reason, state.halted_at = reason, halt_time
    restore_hold(state, saved)


def restore_hold(state: AccountState, saved: Mapping[str, Any]) -> None:
    """Put back a saved opening hold; a state from before holds existed has none."""
    held, reason, held_at = saved.get("held", False), saved.get("hold_reason", ""), saved.get("held_at")
    if not isinstance(held, bool) or not isinstance(reason, str):
        raise DataError(f"状态中的暂停开仓标志无效：{held!r}, {reason!r} / saved opening hold is invalid")
    try:
        state.held_at = _aware(datetime.fromisoformat(held_at)) if held_at is not None else None
    except (TypeError, ValueError):
        raise DataError(f"状态中的暂停开仓时间无效：{held_at!r} / saved hold time is invalid") from None
    state.held, state.hold_reason = held, reason


def _plain(value: float) -> float | None:
    """A number for JSON: nan (unknown) as None."""
    return value if math.isfinite(value) else None


def _saved_number(saved: Mapping[str, Any], key: str, allow_nan: bool = True) -> float:
    """A saved number (null is nan where allowed); DataError otherwise."""
    value = saved.get(key)
    if value is None and allow_nan:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DataError(f"状态中的 {key} 无效：{value!r} / saved {key} is not a number")
    return float(value)


def _closed_side(direction: Direction) -> str:
    """The side an order of `direction` closes: selling closes longs, buying closes shorts."""
    return "long" if direction == Direction.SHORT else "short"


def _aware(now: datetime) -> datetime:
    """`now` itself, refused when it carries no time zone (a naive time would shift the trading day)."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"时间必须带时区，收到 {now!r} / now must be time-zone aware")
    return now


def _known(price: float) -> float:
    """A band price from a tick, or nan when the tick does not know it (0 or nan)."""
    return float(price) if math.isfinite(price) and price > 0 else math.nan


def daily_loss_reason(state: AccountState, limits: RiskSettings, size: float, price: float | None = None) -> str:
    """Why the daily loss limit is breached at `price` (default the last mark), or "" when it is not."""
    base = state.loss_base()
    if not math.isfinite(base):
        return ""
    pnl = state.daily_pnl(size, price)
    floor = -limits.max_daily_loss_rate * base
    if not pnl < floor:
        return ""
    what = "日初权益" if base == state.day_start_equity else "日初账户权益"
    return (
        f"熔断：今日亏损超限，只允许平仓（今日盈亏 {pnl:,.2f} < -{limits.max_daily_loss_rate:.2%} × {what} "
        f"{base:,.2f} = {floor:,.2f}）/ daily loss limit breached: closing only"
    )


def _shape_problem(request: OrderRequest) -> str:
    """What makes the order malformed: volume, price, direction or offset; "" when none."""
    if not (math.isfinite(request.volume) and request.volume > 0):
        return f"委托数量必须 > 0，收到 {request.volume} / volume must be positive"
    if not (math.isfinite(request.price) and request.price > 0):
        return f"委托价格必须是正数，收到 {request.price} / price must be a positive number"
    if request.direction not in SIDES:
        return f"委托方向必须是多或空，收到 {request.direction} / direction must be LONG or SHORT"
    if request.offset != Offset.OPEN and request.offset not in CLOSING:
        return f"委托必须指明开平，收到 {request.offset} / offset must be OPEN or a CLOSE"
    return ""


def _price_problem(request: OrderRequest, state: AccountState, limits: RiskSettings, spec: ContractSpec) -> str:
    """Tick grid, the day's price band and the distance from the last price; "" when the price is fine."""
    price = request.price
    ticks = price / spec.pricetick
    if abs(ticks - round(ticks)) > TICK_TOLERANCE:
        return f"价格 {price:g} 不是最小变动价位 {spec.pricetick:g} 的整数倍 / price is off the tick grid"
    if price > state.limit_up or price < state.limit_down:  # False against nan: an unknown band passes
        return f"价格 {price:g} 超出涨跌停板 [{state.limit_down:g}, {state.limit_up:g}] / price outside the daily band"
    last = state.last_price
    if math.isfinite(last):
        deviation = abs(price - last) / last
        if deviation > limits.max_price_deviation:
            return (
                f"价格 {price:g} 偏离最新价 {last:g} 达 {deviation:.2%}，超过上限 {limits.max_price_deviation:.2%} "
                "/ price too far from the last price"
            )
    return ""


def _flow_problem(
    request: OrderRequest, state: AccountState, limits: RiskSettings, spec: ContractSpec, now: datetime
) -> str:
    """Order rate and duplicate limits over the orders already sent; "" when neither is hit."""
    recent = sum(1 for sent, *_ in state.orders if now - RATE_WINDOW < sent <= now)
    if recent >= limits.max_orders_per_minute:
        return (
            f"委托频率超限：最近 60 秒已发 {recent} 笔，上限 {limits.max_orders_per_minute} 笔/分钟 "
            "/ order rate limit reached"
        )
    for sent, direction, offset, price, volume in reversed(state.orders):
        age = (now - sent).total_seconds()
        same = (direction, offset, volume) == (request.direction, request.offset, request.volume)
        if (
            0 <= age < limits.duplicate_order_seconds
            and same
            and abs(price - request.price) <= (spec.pricetick * TICK_TOLERANCE)
        ):
            return (
                f"重复委托：{age:g} 秒前已发出相同的委托（{DIRECTION_NAMES[direction]}{OFFSET_NAMES[offset]} "
                f"{price:g} × {volume:g}），"
                f"{limits.duplicate_order_seconds:g} 秒内不得重复 / duplicate order"
            )
    return ""


def _check_close(request: OrderRequest, positions: PositionBook) -> RiskDecision:
    """A closing order passes up to what it can close."""
    closable = positions.closable(request.direction, request.offset)
    if request.volume <= closable:
        return RiskDecision.allow(request.volume)
    action = "平多" if request.direction == Direction.SHORT else "平空"
    return RiskDecision.refuse(
        f"可平仓位不足：{action}{BUCKET_NAMES[request.offset]} {request.volume:g} 手，只可平 {closable:g} 手 "
        f"/ cannot close more than held ({request.offset.value})",
        closable,
    )


def _largest_volume(fits: Callable[[float], bool], guess: float) -> float:
    """The largest whole volume ≥ 0 that `fits`, starting from an estimate (float rounding may put it off by one)."""
    volume = max(math.floor(guess), 0) if math.isfinite(guess) else 0
    while volume > 0 and not fits(volume):
        volume -= 1
    while fits(volume + 1):
        volume += 1
    return float(volume)


def _check_margin(
    request: OrderRequest, positions: PositionBook, limits: RiskSettings, spec: ContractSpec, equity: float
) -> RiskDecision:
    """An opening order's own margin and the whole position's margin after it, against fractions of equity."""
    unit = request.price * spec.size * spec.margin_rate  # margin of one lot at the order price
    held = positions.long + positions.short  # both sides are margined
    single_cap = limits.max_single_trade_ratio * equity
    position_cap = limits.max_position_ratio * equity

    def fits(volume: float) -> bool:
        return volume * unit <= single_cap and (held + volume) * unit <= position_cap

    volume = request.volume
    if fits(volume):
        return RiskDecision.allow(volume)
    best = _largest_volume(fits, min(single_cap / unit, position_cap / unit - held))
    if volume * unit > single_cap:
        return RiskDecision.refuse(
            f"单笔保证金超限：{volume:g} 手 × {unit:,.2f} = {volume * unit:,.2f} > "
            f"{limits.max_single_trade_ratio:.2%} × 权益 {equity:,.2f} = {single_cap:,.2f}，最多 {best:g} 手 "
            "/ single-order margin limit",
            best,
        )
    return RiskDecision.refuse(
        f"持仓保证金超限：({held:g} + {volume:g}) 手 × {unit:,.2f} = {(held + volume) * unit:,.2f} > "
        f"{limits.max_position_ratio:.2%} × 权益 {equity:,.2f} = {position_cap:,.2f}，最多再开 {best:g} 手 "
        "/ position margin limit",
        best,
    )


def _check_open(request: OrderRequest, state: AccountState, limits: RiskSettings, spec: ContractSpec) -> RiskDecision:
    """An opening order: refused while halted or past the daily loss limit, else sized by margin."""
    if state.halted:
        return RiskDecision.refuse(state.halt_reason or "已暂停开仓，只允许平仓 / halted: closing only")
    if state.held:
        return RiskDecision.refuse(state.hold_reason or "已暂停开仓，只允许平仓 / opening held: closing only")
    if state.account_required and not math.isfinite(state.balance):
        return RiskDecision.refuse(AWAITING_ACCOUNT)
    mark = state.last_price if math.isfinite(state.last_price) else request.price
    breach = daily_loss_reason(state, limits, spec.size, mark)
    if breach:
        return RiskDecision.refuse(breach)
    return _check_margin(request, state.positions, limits, spec, state.equity(spec.size, mark))


def check_order(
    request: OrderRequest, state: AccountState, limits: RiskSettings, spec: ContractSpec, now: datetime
) -> RiskDecision:
    """Check one order against the account at `now`; the first failing rule gives the reason; `state` is not changed."""
    _aware(now)
    problem = (
        _shape_problem(request)
        or _price_problem(request, state, limits, spec)
        or _flow_problem(request, state, limits, spec, now)
    )
    if problem:
        return RiskDecision.refuse(problem)
    if request.offset in CLOSING:
        return _check_close(request, state.positions)  # reducing risk is allowed even while halted
    return _check_open(request, state, limits, spec)


class RiskManager:
    """The account book and its limits for one contract: the only risk object the strategy talks to."""

    def __init__(
        self,
        limits: RiskSettings,
        spec: ContractSpec,
        capital: float,
        slippage: float = 0.0,
        account_required: bool = False,
    ) -> None:
        """`slippage` is charged in price units per unit traded on every fill, as vnpy's backtester does (0 live);
        `account_required` (live): nothing opens until `set_balance` has given the broker's balance."""
        if not (math.isfinite(capital) and capital > 0):
            raise ConfigError(f"初始资金必须 > 0，收到 {capital} / capital must be positive")
        if not (math.isfinite(slippage) and slippage >= 0):
            raise ConfigError(f"滑点不能为负，收到 {slippage} / slippage must be ≥ 0")
        self.limits = limits
        self.spec = spec
        self.slippage = slippage
        history: deque[SentOrder] = deque(maxlen=max(ORDER_HISTORY, limits.max_orders_per_minute))
        self._state = AccountState(
            capital=capital, positions=PositionBook(), orders=history, account_required=account_required
        )

    @property
    def state(self) -> AccountState:
        return self._state

    @property
    def equity(self) -> float:
        return self._state.equity(self.spec.size)

    @property
    def daily_pnl(self) -> float:
        return self._state.daily_pnl(self.spec.size)

    @property
    def halted(self) -> bool:
        return self._state.halted

    @property
    def held(self) -> bool:
        """Opening held by the model-health switch or a person (until `release`)."""
        return self._state.held

    @property
    def status(self) -> str:
        return "HALTED" if self._state.halted else ("HELD" if self._state.held else "OK")

    def hold(self, reason: str, now: datetime | None) -> bool:
        """Stop opening until `release` (a new trading day does not lift it); False when already held."""
        state = self._state
        if state.held:
            return False
        state.held, state.hold_reason, state.held_at = True, reason, now
        logger.warning("暂停开仓：%s / opening held", reason)
        return True

    def release(self) -> bool:
        """Lift an opening hold (an explicit action); False when none was held."""
        state = self._state
        if not state.held:
            return False
        state.held, state.hold_reason, state.held_at = False, "", None
        return True

    @property
    def net_position(self) -> float:
        return self._state.positions.net

    @property
    def awaiting_account(self) -> bool:
        """Live, before the broker's balance has arrived: opening is refused."""
        return self._state.account_required and not math.isfinite(self._state.balance)

    @property
    def loss_limit(self) -> float:
        """Today's daily P&L floor in money (negative; nan before the first mark)."""
        return -self.limits.max_daily_loss_rate * self._state.loss_base()

    def set_balance(self, balance: float) -> None:
        """The broker's account balance (live): equity for the limits is the book's, capped by it."""
        if not math.isfinite(balance):
            raise DataError(f"账户资金无效：{balance} / account balance must be a number")
        state = self._state
        state.balance = balance
        if state.trading_day is not None and not math.isfinite(state.day_start_balance):
            state.day_start_balance = balance  # the first balance of a day that began without one

    def snapshot(self) -> dict[str, Any]:
        """The account as plain JSON values, for the strategy's state file."""
        return account_to_dict(self._state)

    def restore(self, saved: Mapping[str, Any]) -> None:
        """Put back a `snapshot` (the configured capital, limits and the broker's balance stay as they are now)."""
        restore_account(self._state, saved)

    def mark(self, price: float, now: datetime) -> None:
        """Mark the account at `price`; the first mark of a new trading day rolls positions and resets the day."""
        if not (math.isfinite(price) and price > 0):
            raise DataError(f"行情价格必须是正数，收到 {price} / mark price must be positive")
        day = causal_trading_day(_aware(now))
        state = self._state
        if state.trading_day is None or day > state.trading_day:  # a clock going back never rolls positions
            self._start_day(day, price)
        state.last_price = price
        self._check_daily_loss(now)

    def set_price_band(self, limit_up: float, limit_down: float) -> None:
        """The day's limit prices from a tick; 0 or nan means unknown."""
        self._state.limit_up, self._state.limit_down = _known(limit_up), _known(limit_down)

    def check(self, request: OrderRequest, now: datetime) -> RiskDecision:
        """Pre-trade check of `request` against the current book."""
        return check_order(request, self._state, self.limits, self.spec, now)

    def record_order(self, request: OrderRequest, now: datetime) -> None:
        """Remember an order that was actually sent, for the rate and duplicate limits."""
        entry = (_aware(now), request.direction, request.offset, float(request.price), float(request.volume))
        self._state.orders.append(entry)

    def update_trade(self, trade: TradeData) -> None:
        """Book one fill (a partial fill arrives as one of several trades): positions, P&L, costs, halts."""
        if not (math.isfinite(trade.price) and trade.price > 0 and math.isfinite(trade.volume) and trade.volume > 0):
            raise DataError(
                f"成交 {trade.vt_tradeid} 的价格或数量无效（{trade.price}, {trade.volume}）"
                "/ invalid trade price or volume"
            )
        if trade.direction not in SIDES or (trade.offset != Offset.OPEN and trade.offset not in CLOSING):
            self._out_of_sync(f"成交 {trade.vt_tradeid} 方向或开平未知：{trade.direction}, {trade.offset}")
            return
        state, size = self._state, self.spec.size
        if trade.datetime is not None and state.trading_day is not None:
            day = causal_trading_day(_aware(trade.datetime))
            if day > state.trading_day:  # a fill on a session's first bar (21:00) belongs to the new trading day
                self._start_day(day, trade.price)
        if not math.isfinite(state.last_price):
            state.last_price = trade.price
        state.commission += fill_fee(state.positions, trade, self.spec.fees, size)
        state.slippage_cost += self.slippage * trade.volume * size
        if trade.offset == Offset.OPEN:
            state.positions.add(trade.direction, trade.volume, trade.price)
        else:
            self._book_close(trade)
        self._check_daily_loss(trade.datetime)

    def sync_positions(self, positions: PositionBook) -> None:
        """Replace the book with the broker's positions (at start-up, or to lift an out-of-sync halt)."""
        state = self._state
        state.positions = replace(positions)
        if state.book_out_of_sync:
            state.book_out_of_sync, state.halted, state.halt_reason, state.halted_at = False, False, "", None
            logger.warning("持仓已与柜台同步，解除暂停 / position book synchronised, halt lifted")
        self._check_daily_loss()

    def _book_close(self, trade: TradeData) -> None:
        """Take a closing fill off the book and realise its P&L against the side's average price."""
        state = self._state
        assert trade.direction is not None  # checked by update_trade
        average = state.positions.average_price(trade.direction)
        closed = state.positions.remove(trade.direction, trade.offset, trade.volume, closes_today_first(trade.exchange))
        sign = 1.0 if trade.direction == Direction.SHORT else -1.0  # selling closes longs: a gain above the average
        state.realised += sign * (trade.price - average) * closed * self.spec.size
        if closed < trade.volume:
            self._out_of_sync(
                f"成交 {trade.vt_tradeid} 平仓 {trade.volume:g} 手（{trade.offset.value}），账本只有 {closed:g} 手"
            )

    def _start_day(self, day: date, price: float) -> None:
        """Open a trading day: roll positions, take the reference equity at the previous mark, lift a loss halt."""
        state = self._state
        previous = state.last_price if math.isfinite(state.last_price) else price
        state.positions.roll()
        state.trading_day = day
        state.day_start_equity = state.book_equity(self.spec.size, previous)
        state.day_start_balance = state.balance
        if not state.book_out_of_sync:
            state.halted, state.halt_reason, state.halted_at = False, "", None
        state.limit_up = state.limit_down = math.nan
        logger.debug("交易日 %s 开始，日初权益 %.2f / trading day started", day, state.day_start_equity)

    def _check_daily_loss(self, now: datetime | None = None) -> None:
        """Halt opening once the day's loss passes the limit (logged the first time)."""
        state = self._state
        if state.halted:
            return
        reason = daily_loss_reason(state, self.limits, self.spec.size)
        if reason:
            state.halted, state.halt_reason, state.halted_at = True, reason, now
            logger.warning(reason)

    def _out_of_sync(self, detail: str) -> None:
        """The book disagrees with the broker's fills: halt opening until the positions are synchronised."""
        state = self._state
        state.halted, state.book_out_of_sync = True, True
        state.halt_reason = f"持仓与成交不一致（{detail}），只允许平仓 / position book out of sync"
        logger.error(state.halt_reason)
