"""The main contract live: a strategy on a continuous symbol (rb888.SHFE) trades the product's main contract, chosen
from the gateway's snapshot at start, and its position rolls to the next main contract at the open after the main
changes (contracts.main_contract_changes is the rule)."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from vnpy.trader.constant import Direction, Offset, OrderType, Product
from vnpy.trader.object import ContractData, OrderRequest, SubscribeRequest, TickData, TradeData
from vnpy.trader.utility import BarGenerator, round_to

import data_collector
from config import CHINA_TZ, AppError, ConfigError, DataError, TransientError, guarded
from contracts import (
    ContractDay,
    delivery_month,
    is_continuous,
    main_contract_changes,
    split_symbol,
)
from trading_calendar import causal_trading_day

if TYPE_CHECKING:
    from live_trading import AITradingSystem
    from risk_manager import RiskManager

logger = logging.getLogger(__name__)

ROLL_PAYUP_TICKS: int = 5  # price allowance of each leg, in ticks: the smallest vnpy's rollover tool offers
SNAPSHOT_SECONDS: float = 5.0  # how long to wait for every contract's snapshot tick after subscribing
LONG_SHORT: dict[Direction, float] = {Direction.LONG: 1.0, Direction.SHORT: -1.0}


def product_contracts(contracts: Iterable[ContractData], continuous: str, on: date) -> list[ContractData]:
    """The futures contracts of a continuous symbol's product on its exchange, in delivery order as seen on `on`."""
    product, exchange = split_symbol(continuous)[0], continuous.partition(".")[2]
    found = []
    for contract in contracts:
        if contract.exchange.value != exchange or contract.product not in (Product.FUTURES, None):
            continue
        try:
            if split_symbol(contract.symbol)[0] == product and not is_continuous(contract.symbol):
                found.append((delivery_month(contract.symbol, on), contract))
        except ConfigError:
            continue  # an option, a spread or a series such as rb0000 that names no delivery month
    return [contract for _, contract in sorted(found, key=lambda item: item[0])]


def snapshot_days(ticks: Iterable[TickData]) -> list[ContractDay]:
    """Each contract's latest tick as its figures for the latest trading day among them: a contract that has not
    traded yet today still has its open interest."""
    chosen = list(ticks)
    if not chosen:
        return []
    day = max(causal_trading_day(tick.datetime) for tick in chosen if tick.datetime is not None)
    return [ContractDay(tick.vt_symbol, day, float(tick.volume), float(tick.open_interest)) for tick in chosen]


def main_from_days(days: Sequence[ContractDay], floor: str = "") -> str:
    """The main contract after the last day of `days` by contracts.main_contract_changes, with `floor` (the
    contract the strategy last traded) as the main before them: the main never goes back to an earlier delivery."""
    if not days:
        raise DataError("没有任何合约的行情快照，无法判断主力合约 / no snapshot to choose the main contract from")
    first = min(day.trading_day for day in days)
    seed = [ContractDay(floor, first - timedelta(days=1), 0.0, 0.0)] if floor else []
    changes = main_contract_changes([*seed, *days])
    return changes[-1].new_symbol


def gateway_day(system: AITradingSystem) -> date:
    """Today for the connected gateway: the replay's start on the simulated exchange, else the calendar's."""
    settings = getattr(system.main_engine.get_gateway(system.gateway_name), "settings", None)
    start = getattr(settings, "start", None)
    return start.date() if isinstance(start, datetime) else datetime.now(CHINA_TZ).date()


def gateway_snapshot(system: AITradingSystem, continuous: str, wait: float = SNAPSHOT_SECONDS) -> list[TickData]:
    """Subscribe every contract of the product and return their snapshot ticks (contracts without one after `wait`
    seconds are left out); ConfigError when the gateway lists none of the product's contracts."""
    engine = system.main_engine
    contracts = product_contracts(engine.get_all_contracts(), continuous, gateway_day(system))
    if not contracts:
        raise ConfigError(
            f"网关 {system.gateway_name} 中没有 {split_symbol(continuous)[0]} 的合约（{continuous}）；请确认品种代码与"
            "交易所，SIM 回放请先导入该品种各合约的K线 / the gateway lists no contract of this product"
        )
    for contract in contracts:
        engine.subscribe(SubscribeRequest(contract.symbol, contract.exchange), contract.gateway_name)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and any(engine.get_tick(c.vt_symbol) is None for c in contracts):
        time.sleep(0.05)
    ticks = [tick for tick in (engine.get_tick(contract.vt_symbol) for contract in contracts) if tick is not None]
    if not ticks:
        raise TransientError(
            f"{wait:g} 秒内没有收到 {', '.join(c.vt_symbol for c in contracts)} 的任何行情快照，无法判断主力合约；"
            "请确认行情前置可用 / no snapshot tick arrived"
        )
    return ticks


class MainWatch:
    """Follows the ticks of a product's contracts: after each trading day's close (seen at the next day's first
    tick) the main contract by the rule, from each contract's last tick of that day."""

    def __init__(self, main: str, ticks: Iterable[TickData] = ()) -> None:
        self.main = main
        self.last: dict[str, TickData] = {tick.vt_symbol: tick for tick in ticks}
        days = [causal_trading_day(tick.datetime) for tick in self.last.values()]
        self.day: date | None = max(days) if days else None

    def update(self, tick: TickData) -> tuple[str, date] | None:
        """Take one tick; (the old main, the day it was decided after) when the main contract just changed."""
        day = causal_trading_day(tick.datetime)
        change = None
        if self.day is not None and day > self.day:
            closed = [replace(d, trading_day=self.day) for d in snapshot_days(self.last.values())]
            main = main_from_days(closed, self.main)
            if main != self.main:
                change, self.main = (self.main, self.day), main
        if self.day is None or day > self.day:
            self.day = day
        self.last[tick.vt_symbol] = tick
        return change

    def fresh(self, vt_symbol: str) -> TickData | None:
        """The contract's last tick if it belongs to the current trading day."""
        tick = self.last.get(vt_symbol)
        return tick if tick is not None and causal_trading_day(tick.datetime) == self.day else None


@dataclass
class Leg:
    """One side of a roll: an order (split by vnpy's offset converter into one or more) and its fills."""

    vt_symbol: str
    direction: Direction
    offset: Offset
    volume: float
    price: float
    vt_orderids: list[str] = field(default_factory=list)
    trades: list[TradeData] = field(default_factory=list)

    @property
    def filled(self) -> float:
        return sum(trade.volume for trade in self.trades)

    @property
    def average_price(self) -> float:
        """The volume-weighted fill price (nan before any fill)."""
        return sum(t.price * t.volume for t in self.trades) / self.filled if self.trades else math.nan

    def fields(self) -> dict[str, Any]:
        """What the audit records of the leg."""
        return {
            "vt_symbol": self.vt_symbol,
            "direction": self.direction.value,
            "offset": self.offset.value,
            "volume": self.volume,
            "order_price": self.price,
            "price": self.average_price,
            "vt_orderids": self.vt_orderids,
        }


def roll_legs(pos: float, old: TickData, new: TickData, pricetick: float, payup: int = ROLL_PAYUP_TICKS) -> list[Leg]:
    """Close `pos` on the old contract and open the same on the new, each priced `payup` ticks through the
    contract's quote (vnpy's rollover tool); none when flat."""
    if not pos:
        return []
    closing = Direction.SHORT if pos > 0 else Direction.LONG
    opening = Direction.LONG if pos > 0 else Direction.SHORT

    def price(tick: TickData, direction: Direction) -> float:
        quote = tick.ask_price_1 if direction == Direction.LONG else tick.bid_price_1
        quote = quote if quote > 0 else tick.last_price
        return float(round_to(quote + LONG_SHORT[direction] * payup * pricetick, pricetick))

    return [
        Leg(old.vt_symbol, closing, Offset.CLOSE, abs(pos), price(old, closing)),
        Leg(new.vt_symbol, opening, Offset.OPEN, abs(pos), price(new, opening)),
    ]


def leg_refusal(risk: RiskManager, legs: Sequence[Leg], now: datetime) -> str:
    """Why the strategy's risk manager refuses the roll, or empty: the close as the book stands, the open as the
    book will stand once the close has filled at its price (the old contract's price band does not bind the new)."""
    trial = copy.deepcopy(risk)
    for leg in legs:
        symbol, exchange = data_collector.parse_vt_symbol(leg.vt_symbol)
        request = OrderRequest(symbol, exchange, leg.direction, OrderType.LIMIT, leg.volume, leg.price, leg.offset)
        decision = trial.check(request, now)
        if not decision.allowed:
            order = f"{leg.direction.value}{leg.offset.value} {leg.vt_symbol} {leg.volume:g}@{leg.price:g}"
            return f"{order}：{decision.reason}"
        fill = request.create_order_data("roll", "check")
        trial.update_trade(
            TradeData(
                gateway_name="check",
                symbol=symbol,
                exchange=exchange,
                orderid=fill.orderid,
                tradeid="check",
                direction=leg.direction,
                offset=leg.offset,
                price=leg.price,
                volume=leg.volume,
                datetime=now,
            )
        )
        trial.state.limit_up = trial.state.limit_down = math.nan
    return ""


class Roller:
    """Moves one strategy on a continuous symbol to each new main contract (the composition root's helper, as
    vnpy's RolloverTool is the CTA window's): watches the product's ticks, and when the strategy's contract is no
    longer the main one, by `mode`: `open` closes the old contract's position and opens the same on the new at the
    first prices of the new main's first trading day (both legs risk-checked, then the strategy is recreated on the
    new contract with its state); `flat` recreates it there once it is flat; `alert` only tells."""

    def __init__(self, system: AITradingSystem, strategy_name: str, continuous: str, mode: str, watch: MainWatch):
        self.system, self.strategy_name, self.continuous, self.mode = system, strategy_name, continuous, mode
        self.watch = watch
        listed = product_contracts(system.main_engine.get_all_contracts(), continuous, gateway_day(system))
        self.symbols = {contract.vt_symbol for contract in listed}
        self.legs: list[Leg] = []
        self.stopping = False  # stopped for a roll, waiting for the strategy's own orders to end
        self.failed = ""  # a leg that did not fill: a person must look
        self.refused_day: date | None = None  # the roll was refused this trading day: retried the next
        self.alerted = ""  # the main contract already alerted in alert mode
        self.rolls = 0
        # each contract's minute bar as a strategy's bar generator builds it: the roll minute's goes to the new one
        self.minute_bars = {symbol: BarGenerator(lambda bar: None) for symbol in self.symbols}

    def attach(self) -> None:
        """Register the tick, order and trade handlers (guarded)."""
        from vnpy.trader.event import EVENT_ORDER, EVENT_TICK, EVENT_TRADE

        engine = self.system.event_engine
        engine.register(EVENT_TICK, guarded("roll.tick", self.on_tick, logger))
        engine.register(EVENT_ORDER, guarded("roll.order", self.on_order, logger))
        engine.register(EVENT_TRADE, guarded("roll.trade", self.on_trade, logger))

    @property
    def strategy(self) -> Any:
        return self.system.cta_engine.strategies.get(self.strategy_name)

    def on_tick(self, event: Any) -> None:
        """A product tick: follow the main contract, roll when due."""
        tick: TickData = event.data
        if tick.vt_symbol not in self.symbols:
            return
        self.minute_bars[tick.vt_symbol].update_tick(tick)
        change = self.watch.update(tick)
        if change is not None:
            self.announce(*change)
        self.advance()

    def on_order(self, event: Any) -> None:
        """A leg that ended unfilled fails the roll; a strategy order ending may let a roll go on."""
        order = event.data
        for leg in self.legs:
            if order.vt_orderid in leg.vt_orderids and not order.is_active() and order.traded < order.volume:
                self.fail(
                    f"{leg.vt_symbol} {order.vt_orderid} {order.status.value}，成交 {order.traded:g}/{order.volume:g}"
                )
        self.advance()

    def on_trade(self, event: Any) -> None:
        """Collect the legs' fills; switch the strategy once both legs are filled."""
        trade: TradeData = event.data
        for leg in self.legs:
            if trade.vt_orderid in leg.vt_orderids:
                leg.trades.append(trade)
        if self.legs and all(leg.filled >= leg.volume for leg in self.legs):
            self.switch()
        else:
            self.advance()  # a fill may have left the strategy flat (flat mode)

    def announce(self, old: str, decided: date) -> None:
        """The main contract changed after `decided`'s close: log and audit it (alert mode: alert too)."""
        main, strategy = self.watch.main, self.strategy
        held = strategy.vt_symbol if strategy is not None else ""
        message = (
            f"主力合约由 {old} 换为 {main}（{decided} 收盘持仓量），策略 {self.strategy_name} 持有 {held} "
            f"{getattr(strategy, 'pos', 0):g} 手，换月方式 {self.mode} / the main contract changed"
        )
        logger.warning("%s", message)
        self.system.audit.write(
            "main_change",
            strategy=self.strategy_name,
            continuous=self.continuous,
            old=old,
            new=main,
            decided_day=decided,
            effective_day=self.watch.day,
            mode=self.mode,
        )
        if self.mode == "alert" and self.alerted != main:
            self.alerted = main
            self.system.mailer.send_alert(message, "WARNING", key=f"roll_{self.strategy_name}")

    def advance(self) -> None:
        """Roll now if the strategy is not on the main contract and the mode allows it."""
        strategy = self.strategy
        if strategy is None or self.failed or self.legs or self.mode == "alert":
            return
        old, new = strategy.vt_symbol, self.watch.main
        if old == new or self.refused_day == self.watch.day or not (strategy.trading or self.stopping):
            return  # on the main contract, refused today, or stopped by a person (not to be started again here)
        old_tick, new_tick = self.watch.fresh(old), self.watch.fresh(new)
        if old_tick is None or new_tick is None:
            return  # the new main's first prices of the day have not come yet
        if self.mode == "flat" and (strategy.pos or strategy.active_orderids):
            return
        if not self.stopping:
            self.stopping = True
            self.system.cta_engine.stop_strategy(self.strategy_name)  # cancels its orders
        if strategy.active_orderids:
            return  # the cancels are confirmed by order events, which call back here
        self.stopping = False
        legs = roll_legs(strategy.pos, old_tick, new_tick, strategy.risk.spec.pricetick)
        refusal = leg_refusal(strategy.risk, legs, new_tick.datetime)
        if refusal:
            self.refuse(refusal)
            return
        if not legs:
            self.switch()
            return
        self.legs = legs
        for leg in legs:
            self.send(leg, strategy, new_tick.datetime)

    def send(self, leg: Leg, strategy: Any, now: datetime) -> None:
        """Send one leg through vnpy's offset converter (SHFE: close yesterday's or today's lots), as vnpy's
        rollover tool does; book it in the strategy's order memory."""
        engine = self.system.main_engine
        contract = engine.get_contract(leg.vt_symbol)
        if contract is None:
            self.fail(f"网关中没有合约 {leg.vt_symbol} / unknown contract")
            return
        symbol, exchange = data_collector.parse_vt_symbol(leg.vt_symbol)
        request = OrderRequest(
            symbol, exchange, leg.direction, OrderType.LIMIT, leg.volume, leg.price, leg.offset, reference="roll"
        )
        for part in engine.convert_order_request(request, contract.gateway_name, False, False):
            vt_orderid = engine.send_order(part, contract.gateway_name)
            if vt_orderid:
                leg.vt_orderids.append(vt_orderid)
                engine.update_order_request(part, vt_orderid, contract.gateway_name)
        strategy.risk.record_order(request, now)
        logger.info(
            "移仓委托 %s %s%s %g@%g：%s / roll leg sent",
            leg.vt_symbol,
            leg.direction.value,
            leg.offset.value,
            leg.volume,
            leg.price,
            ", ".join(leg.vt_orderids) or "未发出 / not sent",
        )
        if not leg.vt_orderids:
            self.fail(f"{leg.vt_symbol} 委托未发出 / not sent")

    def hand_over_minute(self, strategy: Any, vt_symbol: str) -> None:
        """The new strategy's history ends before the roll minute and its bar generator starts empty: give it the
        roll minute's bar so far and the tick before (for the volume), so that minute's bar reaches its features
        whole when the minute ends, as if it had been running."""
        generator, mine = self.minute_bars.get(vt_symbol), getattr(strategy, "bg", None)
        if generator is None or generator.bar is None or not isinstance(mine, BarGenerator):
            return
        last = getattr(strategy, "last_bar", None)  # the history's last bar: the handed minute must come after it
        if last is not None and generator.bar.datetime.replace(second=0, microsecond=0) <= last.datetime:
            return
        mine.bar, mine.last_tick = copy.copy(generator.bar), copy.copy(generator.last_tick)

    def refuse(self, reason: str) -> None:
        """Risk refused a leg: nothing was sent; the strategy goes on with the old contract until the next day."""
        self.refused_day = self.watch.day
        message = f"风控拒绝移仓 {self.strategy_name} → {self.watch.main}：{reason}；明天再试 / roll refused"
        logger.error("%s", message)
        self.system.audit.write("roll_refused", strategy=self.strategy_name, new=self.watch.main, reason=reason)
        self.system.mailer.send_alert(message, "CRITICAL", key=f"roll_{self.strategy_name}")
        self.system.cta_engine.start_strategy(self.strategy_name)

    def fail(self, detail: str) -> None:
        """A leg did not fill: the strategy stays stopped until a person has checked the positions."""
        if self.failed:
            return
        self.failed = detail
        message = (
            f"移仓未完成，策略 {self.strategy_name} 已停止：{detail}；请核对两个合约的持仓后处理（state --clear / "
            "--adopt-broker-position）/ roll failed, strategy stopped"
        )
        logger.error("%s", message)
        self.system.audit.write(
            "roll_failed", strategy=self.strategy_name, detail=detail, legs=[leg.fields() for leg in self.legs]
        )
        self.system.mailer.send_alert(message, "CRITICAL", key=f"roll_{self.strategy_name}")

    def switch(self) -> None:
        """Book the legs into the strategy's risk book, save its state under the new contract, recreate the strategy
        there (vnpy's way: remove, add, init, start) and audit `roll`."""
        old_strategy, legs = self.strategy, self.legs
        self.legs = []
        old, new = old_strategy.vt_symbol, self.watch.main
        for leg in legs:
            for trade in leg.trades:
                old_strategy.risk.update_trade(trade)
        old_strategy.pos = old_strategy.risk.net_position
        if legs:
            price = legs[-1].average_price
            old_strategy.entry_price = old_strategy.best_price = price
            old_strategy.trailing_stop_price = 0.0
        state = old_strategy.state_snapshot("roll")
        old_strategy.store.save({**state, "vt_symbol": new})
        self.system.audit.write(
            "roll",
            strategy=self.strategy_name,
            continuous=self.continuous,
            old=old,
            new=new,
            mode=self.mode,
            pos=old_strategy.pos,
            legs=[leg.fields() for leg in legs],
        )
        try:
            strategy = self.system.recreate_strategy(old_strategy, new)
        except AppError as exc:
            self.fail(f"策略在 {new} 上未能启动：{exc}")
            return
        self.hand_over_minute(strategy, new)
        self.rolls += 1
        logger.info("策略 %s 已移仓 %s → %s，持仓 %g / rolled", self.strategy_name, old, new, old_strategy.pos)
