"""The simulated exchange on vnpy's real engines: bars rebuilt from the replayed ticks, matching equal to vnpy's
backtester (bar and tick mode), SHFE positions through vnpy's OffsetConverter, money, history, speed and settings."""

from __future__ import annotations

import itertools
import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from vnpy.event import Event
from vnpy.trader.constant import Direction, Exchange, Interval, Offset, OrderType, Product, Status
from vnpy.trader.engine import MainEngine
from vnpy.trader.event import EVENT_ACCOUNT, EVENT_LOG, EVENT_ORDER, EVENT_POSITION, EVENT_TICK, EVENT_TRADE
from vnpy.trader.object import (
    AccountData,
    BarData,
    HistoryRequest,
    OrderData,
    OrderRequest,
    PositionData,
    SubscribeRequest,
    TickData,
    TradeData,
)
from vnpy.trader.utility import BarGenerator
from vnpy_ctastrategy import CtaTemplate
from vnpy_ctastrategy.backtesting import BacktestingEngine, BacktestingMode

import bar_store
import data_collector
import data_processor
import sim_gateway
from config import CHINA_TZ, SAMPLE_TICKS_CSV, ConfigError, DataError, Home
from sim_gateway import SimGateway
from tests.conftest import quiet_main_engine

RB = "rb0000.SHFE"
CU = "cu1909.SHFE"
KINDS = (EVENT_TICK, EVENT_ORDER, EVENT_TRADE, EVENT_POSITION, EVENT_ACCOUNT, EVENT_LOG)
NAMES = itertools.count(1)
Spec = tuple[Direction, Offset, float, float, bool]  # direction, offset, price, volume, stop


def china(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=CHINA_TZ)


@pytest.fixture(scope="module")
def engine() -> Iterator[MainEngine]:
    """One real MainEngine for the module (each test adds its own gateway); vnpy's log output is switched off."""
    main_engine: MainEngine = quiet_main_engine()
    yield main_engine
    main_engine.close()


class Replay:
    """A SimGateway on the shared engines, what it publishes, and strategy-like hooks run in the event thread."""

    def __init__(self, main_engine: MainEngine) -> None:
        self.engine = main_engine
        self.name = f"SIM{next(NAMES)}"
        gateway = main_engine.add_gateway(SimGateway, self.name)
        assert isinstance(gateway, SimGateway)
        self.gateway = gateway
        self.ticks: list[TickData] = []
        self.bars: list[BarData] = []
        self.orders: list[OrderData] = []
        self.trades: list[TradeData] = []
        self.positions: list[PositionData] = []
        self.accounts: list[AccountData] = []
        self.logs: list[str] = []
        self.errors: list[str] = []
        self.sent: list[OrderRequest] = []
        self.on_bar: Callable[[BarData], object] | None = None
        self.on_tick: Callable[[TickData], object] | None = None
        self.on_trade: Callable[[TradeData], object] | None = None
        self.generator = BarGenerator(self._bar)
        main_engine.event_engine.register_general(self._on_event)

    def _bar(self, bar: BarData) -> None:
        self.bars.append(bar)
        if self.on_bar:
            self.on_bar(bar)

    def _on_event(self, event: Event) -> None:
        data = event.data
        if event.type not in KINDS or getattr(data, "gateway_name", None) != self.name:
            return
        try:
            if event.type == EVENT_TICK:
                self.ticks.append(data)
                self.generator.update_tick(data)
                if self.on_tick:
                    self.on_tick(data)
            elif event.type == EVENT_TRADE:
                self.trades.append(data)
                if self.on_trade:
                    self.on_trade(data)
            elif event.type == EVENT_LOG:
                self.logs.append(data.msg)
            elif event.type == EVENT_ORDER:
                self.orders.append(data)
            elif event.type == EVENT_POSITION:
                self.positions.append(data)
            else:
                self.accounts.append(data)
        except Exception:
            self.errors.append(traceback.format_exc())

    def connect(self, **setting: Any) -> None:
        self.engine.connect(setting, self.name)

    def start(self) -> None:
        symbol, exchange = data_collector.parse_vt_symbol(self.vt_symbol)
        self.engine.subscribe(SubscribeRequest(symbol, exchange), self.name)

    @property
    def vt_symbol(self) -> str:
        assert self.gateway.settings is not None
        return self.gateway.settings.vt_symbol

    def run(self, **setting: Any) -> None:
        """Connect, subscribe and wait for the end of the replay."""
        self.connect(**setting)
        self.start()
        assert self.gateway.finished.wait(60), "replay did not finish"
        assert not self.errors, self.errors[0]
        assert self.gateway.error is None

    def send(self, spec: Spec, convert: bool = True) -> list[str]:
        """Send like CtaEngine: through vnpy's OffsetConverter (unless told not to), then main_engine.send_order."""
        direction, offset, price, volume, stop = spec
        symbol, exchange = data_collector.parse_vt_symbol(self.vt_symbol)
        request = OrderRequest(
            symbol, exchange, direction, OrderType.STOP if stop else OrderType.LIMIT, volume, price, offset
        )
        requests = self.engine.convert_order_request(request, self.name, False, False) if convert else [request]
        ids = []
        for converted in requests:
            self.sent.append(converted)
            ids.append(self.engine.send_order(converted, self.name))
        return ids

    def drain(self) -> None:
        """Wait until the event engine has handled everything queued so far."""
        done = threading.Event()
        kind = f"eTestDrain.{self.name}"
        self.engine.event_engine.register(kind, lambda _event: done.set())
        self.engine.event_engine.put(Event(kind))
        assert done.wait(10)

    def last_account(self) -> AccountData:
        return self.accounts[-1]

    def close(self) -> None:
        self.gateway.close()
        self.engine.event_engine.unregister_general(self._on_event)


@pytest.fixture
def make_replay(engine: MainEngine) -> Iterator[Callable[[], Replay]]:
    made: list[Replay] = []

    def build() -> Replay:
        made.append(Replay(engine))
        return made[-1]

    yield build
    for replay in made:
        replay.close()


HAND_BARS = [  # datetime (bar start), open, high, low, close, volume, turnover, open_interest
    ("2016-01-04 09:00:00", 2000, 2010, 1990, 2005, 100, 2_001_234.5, 5000),
    ("2016-01-04 09:01:00", 2006, 2015, 2001, 2010, 120, 2_410_000.0, 5010),
    ("2016-01-04 09:02:00", 2010, 2020, 2000, 2002, 90, 1_809_876.25, 5005),
    ("2016-01-04 09:03:00", 1998, 2004, 1995, 2003, 80, 1_600_000.0, 4990),
    ("2016-01-04 09:04:00", 2003, 2008, 2001, 2007, 70, 1_404_000.0, 4999),
]


def write_bars(path: Path, rows: list[tuple[Any, ...]] = HAND_BARS) -> Path:
    """A bar CSV in vnpy's export layout (times mark the bar start)."""
    lines = ["datetime,open,high,low,close,volume,turnover,open_interest"]
    lines += [",".join(str(value) for value in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def bar_values(bars: list[BarData]) -> list[tuple[Any, ...]]:
    return [
        (b.datetime, b.open_price, b.high_price, b.low_price, b.close_price, b.volume, b.turnover, b.open_interest)
        for b in bars
    ]


def trade_values(trades: list[TradeData]) -> list[tuple[Any, ...]]:
    """Trades as (time, direction, offset, price, volume); SHFE's close today/yesterday count as close."""
    closes = (Offset.CLOSETODAY, Offset.CLOSEYESTERDAY)
    return [
        (t.datetime, t.direction, Offset.CLOSE if t.offset in closes else t.offset, t.price, t.volume) for t in trades
    ]


# --- bars rebuilt from the replayed ticks ------------------------------------------------------------------------


@pytest.mark.slow
def test_bar_generator_rebuilds_every_replayed_real_bar_exactly(
    make_replay: Callable[[], Replay], imported_home: Home
) -> None:
    replay = make_replay()
    replay.run(vt_symbol=RB, home=str(imported_home.root), start="2016-03-01", end="2016-03-10", speed="max")
    frame = data_collector.load_history_data(RB, "2016-03-01", "2016-03-10", home=imported_home)
    wanted = bar_values(data_collector.frame_to_bars(frame, RB))
    assert len(wanted) > 2500
    assert bar_values(replay.bars) == wanted  # first and last bar included
    assert replay.gateway.stats.bars == len(wanted) and replay.gateway.stats.ticks == 4 * len(wanted) + 1
    assert any("回放结束" in line and "replay finished" in line for line in replay.logs)
    assert all(
        tick.datetime.minute == bar.datetime.minute for tick, bar in zip(replay.ticks[::4], replay.bars, strict=False)
    )


def test_hand_bars_with_turnover_and_open_interest_are_rebuilt_and_ticks_follow_the_bar(
    make_replay: Callable[[], Replay], home: Home, tmp_path: Path
) -> None:
    replay = make_replay()
    replay.run(
        vt_symbol=RB,
        home=str(home.root),
        csv=str(write_bars(tmp_path / "bars.csv")),
        start="2016-01-04",
        end="2016-01-04",
    )
    wanted = [(china(t), o, h, lo, c, v, tv, oi) for t, o, h, lo, c, v, tv, oi in HAND_BARS]
    assert bar_values(replay.bars) == [
        tuple(float(x) if not isinstance(x, datetime) else x for x in row) for row in wanted
    ]
    prices = [tick.last_price for tick in replay.ticks]
    assert prices[4:8] == [2006, 2001, 2015, 2010]  # an up bar: open, low, high, close
    assert prices[8:12] == [2010, 2020, 2000, 2002]  # a down bar: open, high, low, close
    assert prices[-1] == 2007 and replay.ticks[-1].datetime == china("2016-01-04 09:05:00")  # the closing tick
    assert all(t.bid_price_1 == t.ask_price_1 == t.last_price and t.limit_up == 0 for t in replay.ticks)


def test_bar_ticks_put_the_volume_where_bar_generator_counts_it() -> None:
    bar = BarData(
        gateway_name="DB",
        symbol="rb0000",
        exchange=Exchange.SHFE,
        datetime=china("2016-01-04 09:00:00"),
        interval=Interval.MINUTE,
        open_price=10,
        high_price=12,
        low_price=9,
        close_price=11,
        volume=7,
        turnover=70,
        open_interest=3,
    )
    first, volume, turnover = sim_gateway.bar_ticks(bar, "SIM", 0.0, 0.0, first=True)
    later, _, _ = sim_gateway.bar_ticks(bar, "SIM", 100.0, 1000.0, first=False)
    assert [t.volume for t in first] == [0, 7, 7, 7] and (volume, turnover) == (7, 70)
    assert [t.volume for t in later] == [107, 107, 107, 107] and [t.turnover for t in later] == [1070] * 4
    assert [t.last_price for t in later] == [10, 9, 12, 11]
    assert [t.datetime.second for t in later] == [0, 20, 40, 59]


# --- matching equals vnpy's backtester ---------------------------------------------------------------------------


class ScriptStrategy(CtaTemplate):
    """Sends planned orders on given bars (or after given tick numbers) and on given trade numbers."""

    plan: dict[Any, list[Spec]] = {}
    follow: dict[int, list[Spec]] = {}

    def __init__(self, cta_engine: Any, strategy_name: str, vt_symbol: str, setting: dict) -> None:
        super().__init__(cta_engine, strategy_name, vt_symbol, setting)
        self.seen_ticks = self.seen_trades = 0

    def on_init(self) -> None:
        pass

    def on_bar(self, bar: BarData) -> None:
        for spec in self.plan.get(bar.datetime, []):
            self.place(spec)

    def on_tick(self, tick: TickData) -> None:
        for spec in self.plan.get(self.seen_ticks, []):
            self.place(spec)
        self.seen_ticks += 1

    def on_trade(self, trade: TradeData) -> None:
        self.seen_trades += 1
        for spec in self.follow.get(self.seen_trades, []):
            self.place(spec)

    def place(self, spec: Spec) -> None:
        direction, offset, price, volume, stop = spec
        self.send_order(direction, offset, price, volume, stop)


def vnpy_trades(
    data: list[Any],
    mode: BacktestingMode,
    vt_symbol: str,
    size: float,
    pricetick: float,
    plan: dict[Any, list[Spec]],
    follow: dict[int, list[Spec]],
) -> list[tuple[Any, ...]]:
    """The trades vnpy's own BacktestingEngine makes for the script on the same data."""
    backtest = BacktestingEngine()
    backtest.output = lambda msg: None
    backtest.set_parameters(
        vt_symbol=vt_symbol,
        interval=Interval.MINUTE,
        start=data[0].datetime,
        end=data[-1].datetime,
        rate=0,
        slippage=0,
        size=size,
        pricetick=pricetick,
        capital=1_000_000,
        mode=mode,
    )
    backtest.add_strategy(ScriptStrategy, {})
    strategy: Any = backtest.strategy
    strategy.plan, strategy.follow = plan, follow
    backtest.history_data = list(data)
    backtest.run_backtesting()
    return trade_values(list(backtest.trades.values()))


L, S, OPEN, CLOSE = Direction.LONG, Direction.SHORT, Offset.OPEN, Offset.CLOSE


def test_bar_matching_equals_vnpy_backtester_on_hand_made_bars(
    make_replay: Callable[[], Replay], home: Home, tmp_path: Path
) -> None:
    plan: dict[Any, list[Spec]] = {
        china("2016-01-04 09:00:00"): [
            (L, OPEN, 2000, 1, False),  # below bar 1's low 2001: waits, fills on bar 2 (low 2000) at 2000
            (L, OPEN, 2012, 1, False),  # inside bar 1: fills at min(2012, open 2006)
            (L, OPEN, 1995, 1, False),  # bar 0's own low 1990 would fill it: never on bar 0; bar 3 (low 1995)
            (L, OPEN, 2012, 1, True),  # buy stop: bar 1 high 2015 ≥ 2012, fills at max(2012, 2006)
            (S, OPEN, 2003, 1, True),  # sell stop: bar 1 low 2001 ≤ 2003, fills at min(2003, 2006)
        ],
        china("2016-01-04 09:02:00"): [(S, OPEN, 2004, 1, False), (L, OPEN, 2000, 1, True)],
        china("2016-01-04 09:03:00"): [(L, OPEN, 2001, 1, False)],
        china("2016-01-04 09:04:00"): [(L, OPEN, 2100, 1, False)],  # after the last bar: never matched
    }
    follow: dict[int, list[Spec]] = {
        1: [
            (S, CLOSE, 2001, 1, False),  # sent from on_trade on bar 1: matched on bar 2 at max(2001, open 2010)
            (S, OPEN, 2014, 1, True),  # vnpy matches a stop sent from a limit fill's on_trade on the same bar
        ]
    }
    replay = make_replay()
    replay.on_bar = lambda bar: [replay.send(spec) for spec in plan.get(bar.datetime, [])]
    replay.on_trade = lambda trade: [replay.send(spec) for spec in follow.get(len(replay.trades), [])]
    replay.run(
        vt_symbol=RB,
        home=str(home.root),
        csv=str(write_bars(tmp_path / "bars.csv")),
        start="2016-01-04",
        end="2016-01-04",
    )

    minute = [china(f"2016-01-04 09:0{m}:00") for m in range(5)]
    expected = [
        (minute[1], L, OPEN, 2006, 1),
        (minute[1], L, OPEN, 2012, 1),
        (minute[1], S, OPEN, 2003, 1),
        (minute[1], S, OPEN, 2006, 1),
        (minute[2], L, OPEN, 2000, 1),
        (minute[2], S, CLOSE, 2010, 1),
        (minute[3], L, OPEN, 1995, 1),
        (minute[3], S, OPEN, 2004, 1),
        (minute[3], L, OPEN, 2000, 1),
        (minute[4], L, OPEN, 2001, 1),
    ]
    assert trade_values(replay.trades) == trade_values(replay.gateway.trades) == expected
    bars = data_collector.frame_to_bars(data_collector.read_bar_csv(tmp_path / "bars.csv")[0].set_index("datetime"), RB)
    assert vnpy_trades(bars, BacktestingMode.BAR, RB, 10, 1, plan, follow) == expected
    assert [o.offset for o in replay.sent if o.direction == S and o.type == OrderType.LIMIT][:1] == [Offset.CLOSETODAY]
    last = replay.gateway.orders[-1]
    assert (last.price, last.status) == (2100, Status.NOTTRADED)
    assert replay.gateway.stats.trades == 10 and replay.gateway.stats.orders == 11


def test_tick_matching_equals_vnpy_backtester_on_the_copper_ticks(
    make_replay: Callable[[], Replay], home: Home
) -> None:
    plan: dict[Any, list[Spec]] = {
        0: [(L, OPEN, 47830, 1, False), (S, OPEN, 47790, 1, True)],  # fills at tick 1's ask; stop at tick 6
        18: [(L, OPEN, 47810, 1, False)],  # tick 19's ask drops to 47810
        20: [(S, OPEN, 47800, 1, False)],  # tick 21's bid rises to 47800
        22: [(L, OPEN, 47800, 1, True)],  # last price 47810 at tick 25: max(47800, 47810)
        35: [(L, OPEN, 47800, 1, False)],  # tick 36's ask 47800
        36: [(L, OPEN, 47800, 1, False)],  # tick 36's ask is known: it fills on tick 37, never on tick 36
    }
    follow: dict[int, list[Spec]] = {1: [(S, CLOSE, 47780, 1, False)]}  # from on_trade at tick 1: fills at tick 2
    replay = make_replay()
    replay.on_tick = lambda tick: [replay.send(spec) for spec in plan.get(len(replay.ticks) - 1, [])]
    replay.on_trade = lambda trade: [replay.send(spec) for spec in follow.get(len(replay.trades), [])]
    replay.run(
        vt_symbol=CU, home=str(home.root), mode="tick", csv=str(SAMPLE_TICKS_CSV), start="2019-09-16", end="2019-09-16"
    )

    ticks = data_collector.read_tick_csv(SAMPLE_TICKS_CSV, CU)
    at = [tick.datetime for tick in ticks]
    expected = [
        (at[1], L, OPEN, 47820, 1),
        (at[2], S, CLOSE, 47780, 1),
        (at[6], S, OPEN, 47780, 1),
        (at[19], L, OPEN, 47810, 1),
        (at[21], S, OPEN, 47800, 1),
        (at[25], L, OPEN, 47810, 1),
        (at[36], L, OPEN, 47800, 1),
        (at[37], L, OPEN, 47800, 1),
    ]
    assert trade_values(replay.trades) == expected
    assert vnpy_trades(ticks, BacktestingMode.TICK, CU, 5, 10, plan, follow) == expected
    assert len(replay.ticks) == 200 and replay.gateway.stats.ticks == 200
    assert [t.last_price for t in replay.ticks] == [t.last_price for t in ticks]


def test_tick_mode_replays_the_stored_ticks_as_they_are(make_replay: Callable[[], Replay], home: Home) -> None:
    ticks = data_collector.read_tick_csv(SAMPLE_TICKS_CSV, CU)
    conn = bar_store.connect(data_collector.database_path(home))
    bar_store.save_ticks(conn, ticks)
    conn.close()
    replay = make_replay()
    replay.connect(vt_symbol=CU, home=str(home.root), mode="tick", start="2019-09-16", end="2019-09-16")
    now = datetime.now(CHINA_TZ)
    assert replay.gateway.query_history(HistoryRequest("cu1909", Exchange.SHFE, now - timedelta(days=3), now)) == []
    replay.start()
    assert replay.gateway.finished.wait(30) and not replay.errors
    fields = ("datetime", "last_price", "volume", "turnover", "open_interest", "bid_price_1", "ask_price_5")
    assert [[getattr(t, f) for f in fields] for t in replay.ticks] == [[getattr(t, f) for f in fields] for t in ticks]
    assert {t.gateway_name for t in replay.ticks} == {replay.name}
    assert len(replay.bars) == 50  # 14:01 .. 14:58: no closing tick is added in tick mode


def test_matching_rules_are_vnpys_at_the_edges() -> None:
    bar = BarData(
        gateway_name="DB",
        symbol="rb0000",
        exchange=Exchange.SHFE,
        datetime=china("2016-01-04 09:00:00"),
        open_price=2006,
        high_price=2015,
        low_price=2001,
        close_price=2010,
    )
    assert sim_gateway.cross_bar_limit(L, 2001, bar) == 2001 and sim_gateway.cross_bar_limit(L, 2000, bar) is None
    assert sim_gateway.cross_bar_limit(S, 2015, bar) == 2015 and sim_gateway.cross_bar_limit(S, 2016, bar) is None
    assert sim_gateway.cross_bar_limit(S, 1990, bar) == 2006  # a sell below the open fills at the open
    assert sim_gateway.cross_bar_stop(L, 2000, bar) == 2006 and sim_gateway.cross_bar_stop(L, 2016, bar) is None
    assert sim_gateway.cross_bar_stop(S, 2001, bar) == 2001 and sim_gateway.cross_bar_stop(S, 2000, bar) is None
    tick = TickData(
        gateway_name="T",
        symbol="cu1909",
        exchange=Exchange.SHFE,
        datetime=bar.datetime,
        last_price=100,
        bid_price_1=90,
        ask_price_1=110,
    )
    assert sim_gateway.cross_tick_limit(L, 120, tick) == 110 and sim_gateway.cross_tick_limit(L, 100, tick) is None
    assert sim_gateway.cross_tick_limit(S, 80, tick) == 90 and sim_gateway.cross_tick_limit(S, 95, tick) is None
    assert (
        sim_gateway.cross_tick_limit(
            L, 120, TickData(gateway_name="T", symbol="x", exchange=Exchange.SHFE, datetime=bar.datetime)
        )
        is None
    )  # empty book
    assert sim_gateway.cross_tick_stop(L, 95, tick) == 100 and sim_gateway.cross_tick_stop(S, 99, tick) is None


def test_saved_account_gives_back_cash_positions_working_orders_counters_and_the_trading_day() -> None:
    import json
    from datetime import date

    from vnpy.trader.object import ContractData

    from config import ContractSpec, Fees

    spec = ContractSpec(size=10, pricetick=1, margin_rate=0.1, fees=Fees.of_rate(0.0001))
    book = sim_gateway.SimBook(spec, 500_000.0)
    book.open(L, 3000.0, 2)
    book.roll()
    book.open(L, 3010.0, 1)
    book.realised, book.commission = 120.0, 9.5
    split = book.freeze(L, "yd", 1)
    order = OrderData(
        gateway_name="SIM",
        symbol="rb0000",
        exchange=Exchange.SHFE,
        orderid="7",
        type=OrderType.LIMIT,
        direction=S,
        offset=Offset.CLOSEYESTERDAY,
        price=3020.0,
        volume=1,
        status=Status.NOTTRADED,
        datetime=china("2016-06-01 09:31:00"),
    )
    active = {order.vt_orderid: sim_gateway.SimOrder(order, 5, L, split)}
    saved = json.loads(json.dumps(sim_gateway.account_to_dict(book, active, (7, 4), date(2016, 6, 1))))
    contract = ContractData("SIM", "rb0000", Exchange.SHFE, RB, Product.FUTURES, size=10, pricetick=1)
    again, orders, counts, day = sim_gateway.account_from_dict(saved, spec, contract, "SIM")
    assert (again.capital, again.realised, again.commission, again.sides) == (500_000.0, 120.0, 9.5, book.sides)
    assert (again.sides[L].td, again.sides[L].yd, again.sides[L].frozen_yd) == (1, 2, 1)
    assert (counts, day, list(orders)) == ((7, 4), date(2016, 6, 1), ["SIM.7"])
    restored = orders["SIM.7"]
    assert (restored.held, restored.split, restored.data.offset, restored.data.price) == (
        L,
        split,
        Offset.CLOSEYESTERDAY,
        3020.0,
    )
    assert restored.data.is_active() and restored.data.datetime == order.datetime
    with pytest.raises(ConfigError, match="state --gateway sim --clear"):
        sim_gateway.account_from_dict({**saved, "format": 99}, spec, contract, "SIM")


# --- positions, the account and order checks ---------------------------------------------------------------------


@pytest.mark.slow
def test_shfe_close_after_a_new_trading_day_becomes_close_yesterday_through_vnpys_converter(
    make_replay: Callable[[], Replay], imported_home: Home
) -> None:
    replay = make_replay()
    state: dict[str, Any] = {}

    def on_bar(bar: BarData) -> None:
        if bar.datetime == china("2016-03-01 09:00:00"):
            state["open"] = replay.send((L, OPEN, bar.close_price + 5, 1, False))
        elif replay.trades and "too_many" not in state:
            state["too_many"] = replay.send((S, Offset.CLOSETODAY, bar.close_price, 2, False), convert=False)
        elif bar.datetime.hour == 21 and "close" not in state:  # the night of 03-01 is trading day 03-02
            state["today"] = replay.send((S, Offset.CLOSETODAY, bar.close_price - 5, 1, False), convert=False)
            state["close"] = replay.send((S, CLOSE, bar.close_price - 5, 1, False))

    replay.on_bar = on_bar
    replay.run(vt_symbol=RB, home=str(imported_home.root), start="2016-03-01", end="2016-03-01")

    orders = {order.vt_orderid: order for order in replay.gateway.orders}
    [too_many], [today], [close] = state["too_many"], state["today"], state["close"]
    # sent straight to the gateway: 2 lots when 1 is held, then today's lot after it became yesterday's
    assert orders[too_many].status == orders[today].status == Status.REJECTED
    assert sum("not enough position to close" in line for line in replay.logs) == 2
    # CLOSE through vnpy's OffsetConverter (as CtaEngine sends it) becomes CLOSEYESTERDAY, accepted and filled
    assert (orders[close].offset, orders[close].status) == (Offset.CLOSEYESTERDAY, Status.ALLTRADED)
    rolled = [p for p in replay.positions if p.direction == L and p.volume == 1 and p.yd_volume == 1]
    assert rolled, "the long lot was never published as yesterday's"
    assert [(t.direction, t.offset) for t in replay.trades] == [(L, OPEN), (S, Offset.CLOSEYESTERDAY)]
    final = [p for p in replay.positions if p.direction == L][-1]
    assert (final.volume, final.yd_volume, final.frozen) == (0, 0, 0)


def test_commission_margin_and_balance_to_the_cent(
    make_replay: Callable[[], Replay], home: Home, tmp_path: Path
) -> None:
    replay = make_replay()
    plan = {
        china("2016-01-04 09:00:00"): [(L, OPEN, 2012.0, 2.0, False)],  # fills on bar 1 at its open 2006
        china("2016-01-04 09:01:00"): [(S, CLOSE, 2005.0, 2.0, False)],
    }  # fills on bar 2 at its open 2010
    holding: list[AccountData] = []

    def on_bar(bar: BarData) -> None:
        if bar.datetime == china("2016-01-04 09:01:00"):
            holding.append(replay.last_account())
        for spec in plan.get(bar.datetime, []):
            replay.send(spec)

    replay.on_bar = on_bar
    replay.run(
        vt_symbol=RB,
        home=str(home.root),
        csv=str(write_bars(tmp_path / "bars.csv")),
        start="2016-01-04",
        end="2016-01-04",
        capital=1_000_000,
    )

    assert [(t.price, t.volume) for t in replay.trades] == [(2006, 2), (2010, 2)]
    # while holding 2 lots bought at 2006, marked at bar 1's close 2010
    opened_fee = 2006 * 2 * 10 * 0.0001  # 4.012
    account = holding[0]
    assert account.balance == pytest.approx(1_000_000 - opened_fee + (2010 - 2006) * 2 * 10, abs=0.005)
    assert account.frozen == pytest.approx(2006 * 2 * 10 * 0.1, abs=0.005)  # 4,012.00 margin
    assert account.available == pytest.approx(1_000_075.988 - 4012, abs=0.005)
    fees = opened_fee + 2010 * 2 * 10 * 0.0001  # 8.032
    final = replay.last_account()
    assert final.balance == pytest.approx(1_000_000 + (2010 - 2006) * 2 * 10 - fees, abs=0.005)  # 1,000,071.968
    assert (final.frozen, final.available) == (0, pytest.approx(1_000_071.968, abs=0.005))
    book = replay.gateway.book
    assert book is not None and book.commission == pytest.approx(8.032, abs=1e-9) and book.realised == 80


def test_the_simulated_account_charges_per_lot_fees_and_close_today_on_the_lots_a_close_took() -> None:
    from config import ContractSpec, Fees

    fees = Fees(open_per_lot=3.0, close_per_lot=2.0, close_today_per_lot=7.5)
    book = sim_gateway.SimBook(ContractSpec(size=10, pricetick=1, margin_rate=0.1, fees=fees), 1_000_000.0)
    book.open(L, 3000.0, 2)
    assert book.charge(3000.0, 2) == 6.0
    book.roll()
    book.open(L, 3010.0, 1)
    book.charge(3010.0, 1)
    split = book.freeze(L, "any", 3)  # CFFEX: a close takes today's lots first
    book.close(L, 3020.0, split)
    assert split == (1.0, 2.0) and book.charge(3020.0, 3, split) == 7.5 + 2 * 2.0
    assert book.commission == 6.0 + 3.0 + 11.5
    index = ContractSpec(size=300, pricetick=0.2, margin_rate=0.12, fees=Fees.parse("0.000023 0.000023 0.00023"))
    assert sim_gateway.commission(4000.0, 1, index) == pytest.approx(4000 * 300 * 0.000023)
    assert sim_gateway.commission(4000.0, 1, index, (0.0, 1.0)) == pytest.approx(4000 * 300 * 0.000023)  # yesterday's
    assert sim_gateway.commission(4000.0, 1, index, (1.0, 0.0)) == pytest.approx(4000 * 300 * 0.00023)


DCE_BARS = [  # coke j1609.DCE: trading day 2016-03-01, then its night session (trading day 03-02)
    ("2016-03-01 09:00:00", 1000.0, 1002.0, 999.0, 1001.0, 50, 0.0, 900),
    ("2016-03-01 09:01:00", 1001.0, 1003.0, 1000.0, 1002.0, 50, 0.0, 902),
    ("2016-03-01 09:02:00", 1002.0, 1004.0, 1001.0, 1003.0, 50, 0.0, 902),
    ("2016-03-01 21:00:00", 1010.0, 1012.0, 1009.0, 1011.0, 50, 0.0, 903),
    ("2016-03-01 21:01:00", 1011.0, 1013.0, 1010.0, 1012.0, 50, 0.0, 904),
    ("2016-03-01 21:02:00", 1020.0, 1021.0, 1019.0, 1020.0, 50, 0.0, 902),
    ("2016-03-01 21:03:00", 1020.0, 1021.0, 1019.0, 1020.0, 50, 0.0, 902),
]


def test_a_dce_close_takes_yesterdays_lots_first_and_pays_the_close_fee_not_close_today(
    make_replay: Callable[[], Replay], home: Home, tmp_path: Path
) -> None:
    from config import contract_spec, load_contracts
    from risk_manager import trade_fees

    spec = contract_spec("j1609.DCE", load_contracts())
    assert spec.fees.close_rate != spec.fees.close_today_rate  # coke: close today dearer, so the order matters
    replay = make_replay()
    plan = {
        china("2016-03-01 09:00:00"): (L, OPEN, 1005.0, 2.0, False),  # fills at 09:01's open: yesterday's by night
        china("2016-03-01 21:00:00"): (L, OPEN, 1015.0, 1.0, False),  # fills at 21:01's open: today's
        china("2016-03-01 21:01:00"): (S, CLOSE, 1005.0, 2.0, False),  # a partial close, at 21:02's open 1020
    }
    replay.on_bar = lambda bar: replay.send(plan[bar.datetime], convert=False) if bar.datetime in plan else None
    csv = str(write_bars(tmp_path / "j.csv", DCE_BARS))
    replay.run(vt_symbol="j1609.DCE", home=str(home.root), csv=csv, start="2016-03-01", end="2016-03-02")

    filled = [(t.offset, t.price, t.volume) for t in replay.trades]
    assert filled == [(OPEN, 1001, 2), (OPEN, 1011, 1), (CLOSE, 1020, 2)]
    left = [p for p in replay.positions if p.direction == L][-1]
    assert (left.volume, left.yd_volume) == (1, 0)  # first opened, first closed: the 2 lots of 03-01 went
    book = replay.gateway.book
    assert book is not None and book.realised == pytest.approx((1020 - (1001 * 2 + 1011) / 3) * 2 * 100)
    close_fee = 1020 * 2 * 100 * spec.fees.close_rate  # both lots at the close fee, none at close-today
    opened = (1001 * 2 + 1011) * 100 * spec.fees.open_rate
    assert book.commission == pytest.approx(opened + close_fee)
    assert trade_fees(replay.trades, spec.fees, spec.size)[-1] == pytest.approx(close_fee)  # the risk book agrees
    trades = [replace_exchange(t, Exchange.CFFEX) for t in replay.trades]  # CFFEX would close today's lot first
    cffex = 1020 * 100 * (spec.fees.close_today_rate + spec.fees.close_rate)
    assert trade_fees(trades, spec.fees, spec.size)[-1] == pytest.approx(cffex)
    assert sim_gateway.close_source(Exchange.CFFEX, CLOSE) == "any"
    assert {sim_gateway.close_source(e, CLOSE) for e in (Exchange.DCE, Exchange.CZCE, Exchange.GFEX)} == {"fifo"}


def replace_exchange(trade: TradeData, exchange: Exchange) -> TradeData:
    """The same fill on another exchange."""
    from dataclasses import replace

    return replace(trade, exchange=exchange)


def test_order_checks_reject_with_a_reason_and_cancel_is_an_event(
    make_replay: Callable[[], Replay], home: Home, tmp_path: Path
) -> None:
    replay = make_replay()
    replay.connect(
        vt_symbol=RB,
        home=str(home.root),
        csv=str(write_bars(tmp_path / "bars.csv")),
        start="2016-01-04",
        end="2016-01-04",
        capital=1_000_000,
    )
    cases = [
        ((L, OPEN, 2000, 0, False), "volume must be a positive whole number"),
        ((L, OPEN, 2000, 1.5, False), "volume must be a positive whole number"),
        ((L, OPEN, 2000.5, 1, False), "price off the tick grid"),
        ((L, OPEN, 2000, 1000, False), "not enough margin"),  # 2,000,000 of margin against 1,000,000
        ((S, Offset.CLOSEYESTERDAY, 2000, 1, False), "not enough position to close"),
    ]
    for spec, reason in cases:
        vt_orderid = replay.gateway.send_order(
            OrderRequest("rb0000", Exchange.SHFE, spec[0], OrderType.LIMIT, spec[3], spec[2], spec[1])
        )
        replay.drain()
        assert replay.orders[-1].vt_orderid == vt_orderid and replay.orders[-1].status == Status.REJECTED
        assert reason in replay.logs[-1] and vt_orderid in replay.logs[-1]
    other = replay.gateway.send_order(OrderRequest("hc0000", Exchange.SHFE, L, OrderType.LIMIT, 1, 2000, OPEN))
    market = replay.gateway.send_order(OrderRequest("rb0000", Exchange.SHFE, L, OrderType.MARKET, 1, 2000, OPEN))
    good = replay.gateway.send_order(OrderRequest("rb0000", Exchange.SHFE, L, OrderType.LIMIT, 499, 2000, OPEN))
    replay.drain()
    assert "unknown symbol" in " ".join(replay.logs) and "only limit and stop orders" in " ".join(replay.logs)
    assert [o.status for o in replay.orders if o.vt_orderid in (other, market)] == [Status.REJECTED] * 2
    assert [o.status for o in replay.orders if o.vt_orderid == good] == [Status.SUBMITTING, Status.NOTTRADED]
    assert replay.last_account().frozen == pytest.approx(2000 * 499 * 10 * 0.1)  # the open order's margin
    too_much = replay.gateway.send_order(OrderRequest("rb0000", Exchange.SHFE, L, OrderType.LIMIT, 2, 2000, OPEN))
    order = next(o for o in replay.gateway.orders if o.vt_orderid == good)
    replay.engine.cancel_order(order.create_cancel_request(), replay.name)
    replay.drain()
    statuses = {o.vt_orderid: o.status for o in replay.orders}
    assert statuses[too_much] == Status.REJECTED and statuses[good] == Status.CANCELLED
    assert replay.last_account().frozen == 0
    replay.engine.cancel_order(order.create_cancel_request(), replay.name)  # again: nothing to cancel
    replay.drain()
    assert "nothing to cancel" in replay.logs[-1]
    stats = replay.gateway.stats
    assert (stats.orders, stats.rejected, stats.cancelled, stats.trades, stats.bars) == (9, 8, 1, 0, 0)


# --- history, speed, settings and lifecycle ----------------------------------------------------------------------


@pytest.mark.slow
def test_query_history_serves_the_warm_up_days_before_the_replay_start(
    make_replay: Callable[[], Replay], imported_home: Home
) -> None:
    replay = make_replay()
    replay.connect(vt_symbol=RB, home=str(imported_home.root), start="2016-03-07", end="2016-03-07", warmup_days=10)
    now = datetime.now(CHINA_TZ)  # CtaEngine.load_bar asks for [now - days, now)
    request = HistoryRequest("rb0000", Exchange.SHFE, start=now - timedelta(days=5), end=now, interval=Interval.MINUTE)
    bars = replay.engine.query_history(request, replay.name)
    frame = data_collector.load_history_data(RB, "2016-03-02", china("2016-03-06 23:59:59"), home=imported_home)
    assert bar_values(bars) == bar_values(data_collector.frame_to_bars(frame, RB))
    assert bars[0].datetime >= china("2016-03-02 00:00:00") and bars[-1].datetime < china("2016-03-07 00:00:00")
    assert {bar.gateway_name for bar in bars} == {replay.name}

    longer = replay.gateway.query_history(replace_start(request, now - timedelta(days=20)))
    assert longer[0].datetime >= china("2016-02-26 00:00:00")  # only warmup_days were loaded
    other = replay.gateway.query_history(HistoryRequest("hc0000", Exchange.SHFE, start=now, end=now))
    replay.drain()
    assert other == [] and any("warmup_days" in line for line in replay.logs)


@pytest.mark.slow
def test_a_replay_resumes_at_a_mid_day_minute_with_the_bars_before_it_served_as_history(
    make_replay: Callable[[], Replay], imported_home: Home
) -> None:
    replay = make_replay()
    replay.connect(
        vt_symbol=RB, home=str(imported_home.root), start="2016-03-07 10:37", end="2016-03-07", warmup_days=3
    )
    assert replay.gateway.settings is not None and replay.gateway.settings.start == china("2016-03-07 10:37:00")
    now = datetime.now(CHINA_TZ)  # CtaEngine.load_bar asks for [now - days, now): before the replay, now is the start
    request = HistoryRequest("rb0000", Exchange.SHFE, start=now - timedelta(days=3), end=now, interval=Interval.MINUTE)
    history = replay.engine.query_history(request, replay.name)
    replay.start()
    assert replay.gateway.finished.wait(60), "replay did not finish"
    assert not replay.errors and replay.gateway.error is None

    before = data_collector.load_history_data(
        RB, china("2016-03-04 10:37"), china("2016-03-07 10:36"), home=imported_home
    )
    assert bar_values(history) == bar_values(data_collector.frame_to_bars(before, RB))
    assert history[0].datetime.date().isoformat() == "2016-03-04" and history[-1].datetime == china("2016-03-07 10:36")
    rest = data_collector.load_history_data(RB, china("2016-03-07 10:37"), "2016-03-07", home=imported_home)
    assert replay.bars[0].datetime == china("2016-03-07 10:37")  # the first replayed bar is the start minute's
    assert bar_values(replay.bars) == bar_values(data_collector.frame_to_bars(rest, RB))
    assert replay.ticks[0].datetime == china("2016-03-07 10:37")
    assert any("2016-03-07 10:37" in line for line in replay.logs)


def replace_start(request: HistoryRequest, start: datetime) -> HistoryRequest:
    return HistoryRequest(request.symbol, request.exchange, start=start, end=request.end, interval=request.interval)


@pytest.mark.slow
def test_speed_max_finishes_a_day_and_speed_n_takes_at_least_the_replayed_time_over_n(
    make_replay: Callable[[], Replay], imported_home: Home, home: Home, tmp_path: Path
) -> None:
    fast = make_replay()
    fast.run(vt_symbol=RB, home=str(imported_home.root), start="2016-03-02", end="2016-03-02", speed="max")
    assert fast.gateway.stats.bars == len(
        data_collector.load_history_data(RB, "2016-03-02", "2016-03-02", home=imported_home)
    )
    paced = make_replay()
    paced.connect(
        vt_symbol=RB,
        home=str(home.root),
        csv=str(write_bars(tmp_path / "bars.csv", HAND_BARS[:3])),
        start="2016-01-04",
        end="2016-01-04",
        speed="600",
    )
    started = time.monotonic()
    paced.start()
    assert paced.gateway.finished.wait(30)
    replayed = (paced.ticks[-1].datetime - paced.ticks[0].datetime).total_seconds()  # 09:00:00 .. 09:03:00
    assert replayed == 180 and time.monotonic() - started >= 0.95 * replayed / 600


def test_long_gaps_take_a_few_seconds_of_wall_time_at_most() -> None:
    assert sim_gateway.wall_seconds(60, 60) == 1.0
    assert sim_gateway.wall_seconds(240, 1) == 240.0  # a normal gap keeps its length at real speed
    assert sim_gateway.wall_seconds(7200, 600) == sim_gateway.GAP_WALL_SECONDS  # a night: capped
    assert sim_gateway.wall_seconds(7200, 1e6) == pytest.approx(0.0072)


def test_hold_waits_for_release_after_subscribe(make_replay: Callable[[], Replay], home: Home, tmp_path: Path) -> None:
    replay = make_replay()
    replay.connect(
        vt_symbol=RB,
        home=str(home.root),
        csv=str(write_bars(tmp_path / "bars.csv")),
        start="2016-01-04",
        end="2016-01-04",
        hold=True,
    )
    replay.start()
    assert not replay.gateway.finished.wait(0.3) and replay.gateway.stats.ticks == 0
    replay.gateway.release()
    assert replay.gateway.finished.wait(30) and len(replay.bars) == 5


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"vt_symbol": "xx0000.SHFE"}, ConfigError, "没有品种 xx"),
        ({"vt_symbol": "rb0000"}, DataError, "bad vt_symbol"),
        ({"start": "2016-03-08", "end": "2016-03-07"}, ConfigError, "start is after end"),
        ({"start": "2016/03/07"}, ConfigError, "YYYY-MM-DD"),
        ({"start": "2016-03-07 25:00"}, ConfigError, "YYYY-MM-DD HH:MM"),
        ({"start": "2016-03-07 10:30:15"}, ConfigError, "YYYY-MM-DD HH:MM"),
        ({"start": "2016-03-07T10:30"}, ConfigError, "YYYY-MM-DD HH:MM"),
        ({"start": "2016-03-08 09:00", "end": "2016-03-07"}, ConfigError, "start is after end"),
        ({"start": "2020-01-06", "end": "2020-01-10"}, DataError, "no bars stored"),
        ({"start": "2016-03-05", "end": "2016-03-06"}, DataError, "no data to replay"),  # a weekend
        ({"speed": "fast"}, ConfigError, "bad setting speed"),
        ({"speed": 0}, ConfigError, "bad setting speed"),
        ({"speed": -2}, ConfigError, "bad setting speed"),
        ({"mode": "minute"}, ConfigError, "must be bar or tick"),
        ({"capital": -1}, ConfigError, "bad setting capital"),
        ({"warmup_days": 1.5}, ConfigError, "bad setting warmup_days"),
        ({"hold": "yes"}, ConfigError, "bad setting hold"),
        ({"csv": "/nonexistent/bars.csv"}, ConfigError, "file not found"),
        ({"spead": "max"}, ConfigError, "unknown setting"),
    ],
)
@pytest.mark.slow
def test_bad_settings_are_clear_errors_from_connect(
    make_replay: Callable[[], Replay], imported_home: Home, change: dict[str, Any], error: type[Exception], message: str
) -> None:
    replay = make_replay()
    setting = {"vt_symbol": RB, "home": str(imported_home.root), "start": "2016-03-07", "end": "2016-03-07", **change}
    with pytest.raises(error, match=message):
        replay.connect(**setting)
    assert replay.gateway.settings is None


def test_connect_twice_is_refused_and_close_is_idempotent_and_unregisters(
    make_replay: Callable[[], Replay], home: Home, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    replay = make_replay()
    setting = {
        "vt_symbol": RB,
        "home": str(home.root),
        "csv": str(write_bars(tmp_path / "bars.csv")),
        "start": "2016-01-04",
        "end": "2016-01-04",
    }
    replay.connect(**setting)
    contract = replay.engine.get_contract(RB)  # connect returns once MainEngine knows the contract
    assert contract is not None and contract.gateway_name == replay.name
    assert (contract.size, contract.pricetick, contract.history_data, contract.net_position) == (10, 1, True, False)
    assert replay.engine.get_account(f"{replay.name}.{replay.name}") is not None
    with pytest.raises(ConfigError, match="already connected"):
        replay.connect(**setting)
    handlers: Any = replay.engine.event_engine._handlers  # noqa: SLF001 - checking the registration itself
    private = f"eSimReplay.{replay.name}"
    assert private in handlers
    with caplog.at_level(logging.ERROR, logger="sim_gateway"):
        replay.engine.event_engine.put(Event(private, "not a mark"))  # a broken event is logged, never raised
        replay.drain()
    assert "event handler sim.private failed" in caplog.text
    replay.gateway.close()
    replay.gateway.close()
    assert private not in handlers and replay.gateway.finished.is_set()
    assert replay.gateway.stats.ticks == 0


@pytest.mark.slow
def test_a_replay_knows_the_roll_flat_times_a_backtest_of_the_same_bars_uses(
    make_replay: Callable[[], Replay], imported_home: Home
) -> None:
    replay = make_replay()
    replay.connect(vt_symbol=RB, home=str(imported_home.root), start="2016-03-01", end="2016-03-10", warmup_days=10)
    frame = data_collector.load_history_data(RB, "2016-02-20", "2016-03-10", home=imported_home)
    expected = data_processor.roll_flat_times(frame)
    times = sorted(datetime.fromtimestamp(stamp, CHINA_TZ).strftime("%m-%d %H:%M") for stamp in expected)
    assert times == ["03-07 14:58", "03-07 14:59", "03-08 14:58", "03-08 14:59"]  # before the 21:00 gaps
    assert replay.gateway.roll_flat_times() == expected
