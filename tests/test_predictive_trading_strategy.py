"""The predictive strategy: decisions on a fake engine, and real runs through vnpy's BacktestingEngine."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from vnpy.trader.constant import Direction, Exchange, Interval, Offset, Status
from vnpy.trader.object import AccountData, BarData, OrderData, TradeData
from vnpy_ctastrategy.base import EngineType

import data_collector
from backtesting_module import PreloadedBacktestingEngine
from bar_features import FEATURE_WARMUP
from config import CHINA_TZ, ConfigError, ContractSpec, Fees, ModelError, RiskSettings, contract_spec, load_contracts
from ml_model import PricePredictionModel
from predictive_trading_strategy import (
    RISK_REJECTION,
    MemoryStateStore,
    ModelSignal,
    PredictiveTradingStrategy,
    WindowBuffer,
    batch_predictions,
    load_signal,
)
from risk_manager import PositionBook, RiskManager

VT = "rb0000.SHFE"


@dataclass
class SentOrder:
    vt_orderid: str
    direction: Direction
    offset: Offset
    price: float
    volume: float


class FakeCtaEngine:
    """Records what the strategy asks for (GUIDE §9.3); fills only when a test says so, like a live engine."""

    def __init__(self, history: list[BarData] | None = None, async_cancel: bool = False) -> None:
        self.history = history or []
        self.async_cancel = async_cancel
        self.orders: list[SentOrder] = []
        self.active: dict[str, SentOrder] = {}
        self.cancel_requests: list[str] = []
        self.logs: list[str] = []
        self.events = 0

    def send_order(
        self,
        strategy: Any,
        direction: Direction,
        offset: Offset,
        price: float,
        volume: float,
        stop: bool,
        lock: bool,
        net: bool,
    ) -> list[str]:
        order = SentOrder(f"FAKE.{len(self.orders) + 1}", direction, offset, price, volume)
        self.orders.append(order)
        self.active[order.vt_orderid] = order
        return [order.vt_orderid]

    def cancel_order(self, strategy: Any, vt_orderid: str) -> None:
        self.cancel_requests.append(vt_orderid)
        if not self.async_cancel:
            self.confirm_cancel(strategy, vt_orderid)

    def cancel_all(self, strategy: Any) -> None:
        for vt_orderid in list(self.active):
            self.cancel_order(strategy, vt_orderid)

    def confirm_cancel(self, strategy: Any, vt_orderid: str) -> None:
        order = self.active.pop(vt_orderid)
        strategy.on_order(self._order_data(order, Status.CANCELLED))

    def fill(self, strategy: Any, vt_orderid: str, when: datetime) -> None:
        """Fill one order in full at its price, as the CtaEngine reports it: pos first, then on_order, on_trade."""
        order = self.active.pop(vt_orderid)
        strategy.pos += order.volume if order.direction == Direction.LONG else -order.volume
        strategy.on_order(self._order_data(order, Status.ALLTRADED))
        strategy.on_trade(
            TradeData(
                gateway_name="FAKE",
                symbol="rb0000",
                exchange=Exchange.SHFE,
                orderid=vt_orderid.split(".")[1],
                tradeid=vt_orderid,
                direction=order.direction,
                offset=order.offset,
                price=order.price,
                volume=order.volume,
                datetime=when,
            )
        )

    @staticmethod
    def _order_data(order: SentOrder, status: Status) -> OrderData:
        return OrderData(
            gateway_name="FAKE",
            symbol="rb0000",
            exchange=Exchange.SHFE,
            orderid=order.vt_orderid.split(".")[1],
            direction=order.direction,
            offset=order.offset,
            price=order.price,
            volume=order.volume,
            status=status,
        )

    def write_log(self, msg: str, strategy: Any = None) -> None:
        self.logs.append(msg)

    def get_engine_type(self) -> EngineType:
        return EngineType.LIVE

    def get_pricetick(self, strategy: Any) -> float:
        return 1.0

    def get_size(self, strategy: Any) -> int:
        return 10

    def load_bar(
        self, vt_symbol: str, days: int, interval: Interval, callback: Any, use_database: bool
    ) -> list[BarData]:
        return self.history

    def put_strategy_event(self, strategy: Any) -> None:
        self.events += 1


class ScriptedSignal:
    """The model's place in decision tests: returns the predictions a test scripts, one per bar."""

    def __init__(self, predictions: Iterator[float]) -> None:
        self.predictions = predictions

    def update(self, bar: BarData) -> float:
        return next(self.predictions)


def bar_at(when: datetime, close: float, high: float | None = None, low: float | None = None) -> BarData:
    high = close if high is None else high
    low = close if low is None else low
    return BarData(
        gateway_name="TEST",
        symbol="rb0000",
        exchange=Exchange.SHFE,
        datetime=when,
        interval=Interval.MINUTE,
        open_price=close,
        high_price=high,
        low_price=low,
        close_price=close,
        volume=100.0,
    )


def minutes(start: datetime, count: int) -> list[datetime]:
    return [start + timedelta(minutes=i) for i in range(count)]


def scripted_strategy(
    predictions: list[float],
    threshold: float = 0.001,
    **setting: Any,
) -> tuple[PredictiveTradingStrategy, FakeCtaEngine]:
    """A started strategy on the fake engine whose prediction per bar comes from `predictions`."""
    engine = FakeCtaEngine(async_cancel=setting.pop("async_cancel", False))
    strategy = PredictiveTradingStrategy(engine, "test", VT, {"prediction_threshold": threshold, **setting})
    spec = contract_spec(VT, load_contracts())
    strategy.risk = RiskManager(
        RiskSettings(
            max_daily_loss_rate=strategy.max_daily_loss_rate,
            max_position_ratio=strategy.max_position_ratio,
            max_single_trade_ratio=strategy.max_single_trade_ratio,
        ),
        spec,
        strategy.capital,
    )
    strategy.signal = ScriptedSignal(iter(predictions))  # type: ignore[assignment]
    strategy.threshold = threshold
    strategy.inited = strategy.trading = True
    return strategy, engine


FRIDAY = datetime(2016, 1, 8, 9, 30, tzinfo=CHINA_TZ)


def test_prediction_above_threshold_buys_at_close_plus_one_tick() -> None:
    strategy, engine = scripted_strategy([0.0005, 0.002])
    times = minutes(FRIDAY, 2)
    strategy.on_bar(bar_at(times[0], 3000))
    assert engine.orders == []  # inside the threshold: keep the (flat) position
    strategy.on_bar(bar_at(times[1], 3000))
    assert [(o.direction, o.offset, o.price, o.volume) for o in engine.orders] == [
        (Direction.LONG, Offset.OPEN, 3001.0, 1)
    ]
    assert any("预测 +0.002000" in line and "风控通过" in line for line in engine.logs)


def test_prediction_below_minus_threshold_shorts_at_close_minus_one_tick() -> None:
    strategy, engine = scripted_strategy([-0.002])
    strategy.on_bar(bar_at(FRIDAY, 3000))
    assert [(o.direction, o.offset, o.price) for o in engine.orders] == [(Direction.SHORT, Offset.OPEN, 2999.0)]


def test_missing_model_logs_the_error_and_never_trades(tmp_path: Path) -> None:
    engine = FakeCtaEngine()
    strategy = PredictiveTradingStrategy(engine, "test", VT, {"model_path": str(tmp_path / "nothing")})
    with pytest.raises(ModelError):
        strategy.on_init()
    assert any("初始化失败" in line for line in engine.logs)
    strategy.trading = True  # vnpy lets a user start it anyway
    strategy.on_start()
    for when in minutes(FRIDAY, 5):
        strategy.on_bar(bar_at(when, 3000))
    assert engine.orders == []


def test_bundle_of_another_product_is_refused(rf_bundle: Path) -> None:
    with pytest.raises(ModelError, match="rb0000.SHFE"):
        load_signal(str(rf_bundle), "cu1909.SHFE")


def test_bundle_for_bars_of_another_interval_is_refused(rf_bundle: Path) -> None:
    assert load_signal(str(rf_bundle), "rb2605.SHFE").model.metadata["interval"] == "1m"  # the strategy's bars
    with pytest.raises(ModelError, match="用 1m K线训练，不能用于 1h K线"):
        load_signal(str(rf_bundle), VT, "1h")


def test_an_order_above_the_single_trade_margin_shrinks_to_the_largest_allowed_volume() -> None:
    # 30 lots of rb at 3001 need 90,030 of margin: more than 5% of 1,000,000 for one order
    strategy, engine = scripted_strategy([0.002], fixed_size=30)
    strategy.on_bar(bar_at(FRIDAY, 3000))
    assert [o.volume for o in engine.orders] == [16]  # 16 lots: 48,016 ≤ 50,000


def test_risk_veto_sends_nothing_and_logs_the_reason() -> None:
    strategy, engine = scripted_strategy([0.002], capital=50_000.0)
    strategy.on_bar(bar_at(FRIDAY, 3000))  # one lot needs 3,000 > 5% of 50,000
    assert engine.orders == []
    assert any(RISK_REJECTION in line and "预测 +0.002000" in line for line in engine.logs)  # audited


def test_reversal_closes_first_and_opens_only_after_the_close_traded() -> None:
    strategy, engine = scripted_strategy([0.002, -0.002, -0.002, -0.002], async_cancel=True)
    times = minutes(FRIDAY, 4)
    strategy.on_bar(bar_at(times[0], 3000))
    engine.fill(strategy, engine.orders[0].vt_orderid, times[0])
    assert strategy.pos == 1
    strategy.on_bar(bar_at(times[1], 3010))
    assert [(o.direction, o.offset, o.volume) for o in engine.orders[1:]] == [(Direction.SHORT, Offset.CLOSE, 1)]
    strategy.on_bar(bar_at(times[2], 3008))  # the close has not traded: cancel it, send nothing until confirmed
    assert len(engine.orders) == 2 and engine.cancel_requests == [engine.orders[1].vt_orderid]
    engine.confirm_cancel(strategy, engine.orders[1].vt_orderid)
    strategy.on_bar(bar_at(times[3], 3006))
    close = engine.orders[2]
    assert (close.direction, close.offset, close.price) == (Direction.SHORT, Offset.CLOSE, 3005.0)
    engine.fill(strategy, close.vt_orderid, times[3])
    assert strategy.pos == 0
    strategy.signal = ScriptedSignal(iter([-0.002]))  # type: ignore[assignment]
    strategy.on_bar(bar_at(times[3] + timedelta(minutes=1), 3004))
    assert [(o.direction, o.offset) for o in engine.orders[3:]] == [(Direction.SHORT, Offset.OPEN)]


def test_trailing_stop_exits_and_blocks_reentry_until_the_signal_resets() -> None:
    strategy, engine = scripted_strategy([0.002] * 5 + [0.0, 0.002], trailing_percent=1.0)
    times = minutes(FRIDAY, 7)
    strategy.on_bar(bar_at(times[0], 3000))
    engine.fill(strategy, engine.orders[0].vt_orderid, times[0])  # long 1 at 3001
    strategy.on_bar(bar_at(times[1], 3090, high=3100))
    assert strategy.trailing_stop_price == pytest.approx(3100 * 0.99)
    assert len(engine.orders) == 1
    strategy.on_bar(bar_at(times[2], 3068))  # 3068 ≤ 3069: retraced 1% from the best price
    assert [(o.direction, o.offset, o.price) for o in engine.orders[1:]] == [(Direction.SHORT, Offset.CLOSE, 3067.0)]
    engine.fill(strategy, engine.orders[1].vt_orderid, times[2])
    strategy.on_bar(bar_at(times[3], 3070))
    strategy.on_bar(bar_at(times[4], 3075))
    assert len(engine.orders) == 2  # the prediction is still long, but the stop blocks re-entry
    strategy.on_bar(bar_at(times[5], 3075))  # the signal resets
    strategy.on_bar(bar_at(times[6], 3076))
    assert [(o.direction, o.offset) for o in engine.orders[2:]] == [(Direction.LONG, Offset.OPEN)]


def test_daily_loss_halts_flattens_and_resets_on_the_night_of_the_next_trading_day() -> None:
    # 10 lots long at 3001: a fall to 2790 loses 2,110 × 10 ≈ 21,100 > 2% of 1,000,000
    strategy, engine = scripted_strategy([0.002] * 6, fixed_size=10, trailing_percent=0.0)
    strategy.on_bar(bar_at(FRIDAY, 3000))
    engine.fill(strategy, engine.orders[0].vt_orderid, FRIDAY)
    assert strategy.pos == 10
    strategy.on_bar(bar_at(FRIDAY + timedelta(hours=5), 2790))  # Friday 14:30
    assert strategy.risk_state.startswith("HALTED")
    assert [(o.direction, o.offset, o.volume) for o in engine.orders[1:]] == [(Direction.SHORT, Offset.CLOSE, 10)]
    assert "熔断" in engine.logs[-1]
    engine.fill(strategy, engine.orders[1].vt_orderid, FRIDAY + timedelta(hours=5))
    strategy.on_bar(bar_at(FRIDAY + timedelta(hours=5, minutes=1), 2795))  # still Friday: no new position
    assert len(engine.orders) == 2 and strategy.risk_state.startswith("HALTED")
    night = datetime(2016, 1, 8, 21, 1, tzinfo=CHINA_TZ)  # Friday night trades for Monday 2016-01-11
    strategy.on_bar(bar_at(night, 2795))
    assert strategy.risk_state == "OK"
    assert [(o.direction, o.offset) for o in engine.orders[2:]] == [(Direction.LONG, Offset.OPEN)]


# --- the state that survives a restart ---------------------------------------------------------------------


def saved(strategy: PredictiveTradingStrategy) -> dict[str, Any]:
    assert isinstance(strategy.store, MemoryStateStore) and strategy.store.state is not None
    return strategy.store.state


def test_state_is_saved_after_each_fill_and_only_on_bars_that_change_it() -> None:
    strategy, engine = scripted_strategy([0.0005, 0.0005, 0.002, 0.002, 0.002])
    store = strategy.store
    assert isinstance(store, MemoryStateStore)
    times = minutes(FRIDAY, 5)
    strategy.on_bar(bar_at(times[0], 3000))  # the first mark opens trading day 2016-01-08
    strategy.on_bar(bar_at(times[1], 3000))  # nothing changed
    assert store.saves == 1 and saved(strategy)["trading_day"] == "2016-01-08"
    strategy.on_bar(bar_at(times[2], 3000))
    assert store.saves == 1  # an order in flight is not yet worth a save
    engine.fill(strategy, engine.orders[0].vt_orderid, times[2])
    state = saved(strategy)
    assert (store.saves, state["saved_for"], state["pos"], state["last_bar"]) == (2, "fill", 1.0, times[2].isoformat())
    assert state["risk"]["positions"]["long_today"] == 1.0 and state["entry_price"] == 3001.0
    strategy.on_bar(bar_at(times[3], 3005, high=3010))  # a new best price moves the trailing stop
    assert (store.saves, saved(strategy)["trailing"]["best_price"]) == (3, 3010.0)
    strategy.on_bar(bar_at(times[4], 3005, high=3008))
    assert store.saves == 3


def test_a_restart_keeps_the_halt_for_the_rest_of_the_day_and_opening_resumes_the_next_trading_day() -> None:
    first, engine = scripted_strategy([0.002] * 2, fixed_size=10, trailing_percent=0.0)
    first.on_bar(bar_at(FRIDAY, 3000))
    engine.fill(first, engine.orders[0].vt_orderid, FRIDAY)
    halt_time = FRIDAY + timedelta(hours=5)  # Friday 14:30
    first.on_bar(bar_at(halt_time, 2790))  # 21,100 lost > 2% of 1,000,000: halt and flatten
    store = first.store
    assert isinstance(store, MemoryStateStore)
    [(event, fields)] = store.events
    assert (event, fields["trading_day"], fields["daily_pnl"], fields["limit"]) == (
        "risk_halt",
        "2016-01-08",
        pytest.approx(-21_100 - 30.01, abs=0.01),
        -20_000.0,
    )
    assert fields["reason"].startswith("熔断") and fields["time"] == halt_time.isoformat()
    state = saved(first)  # the process dies here: the close order was sent, never filled
    assert state["risk"]["halted"] and state["last_bar"] == FRIDAY.isoformat()

    second, engine = scripted_strategy([0.002] * 5, fixed_size=10, trailing_percent=0.0)
    second.store = MemoryStateStore(state)
    second.restore_state(state)
    assert (second.pos, second.risk_state, second.resume_after) == (10, "HALTED", FRIDAY)
    second.on_bar(bar_at(FRIDAY, 3000))  # acted on before the crash: only the features see it
    assert engine.orders == []
    second.on_bar(bar_at(halt_time, 2790))
    assert [(o.direction, o.offset, o.volume) for o in engine.orders] == [(Direction.SHORT, Offset.CLOSE, 10)]
    engine.fill(second, engine.orders[0].vt_orderid, halt_time)
    second.on_bar(bar_at(halt_time + timedelta(minutes=1), 2800))
    assert len(engine.orders) == 1 and second.risk_state.startswith("HALTED")  # no opening for the rest of Friday
    night = datetime(2016, 1, 8, 21, 1, tzinfo=CHINA_TZ)  # trading day Monday 2016-01-11
    second.on_bar(bar_at(night, 2800))
    assert [(o.direction, o.offset) for o in engine.orders[1:]] == [(Direction.LONG, Offset.OPEN)]
    assert isinstance(second.store, MemoryStateStore)
    assert [(event, fields["trading_day"]) for event, fields in second.store.events] == [("risk_resume", "2016-01-11")]


def test_adopted_broker_positions_are_booked_at_the_brokers_price() -> None:
    strategy, _ = scripted_strategy([])
    strategy.adopt_positions(PositionBook(long_today=1, long_yd=2, long_price=2950.0))
    assert strategy.pos == 3 and strategy.risk is not None
    assert strategy.risk.state.positions == PositionBook(long_today=1, long_yd=2, long_price=2950.0)
    assert strategy.risk.state.unrealised(10, 3000.0) == 50 * 3 * 10
    assert (saved(strategy)["saved_for"], saved(strategy)["pos"]) == ("adopt", 3.0)


def test_live_nothing_opens_until_the_account_arrives_and_its_balance_binds() -> None:
    strategy, engine = scripted_strategy([0.002] * 4, fixed_size=10)
    strategy.account_required = True
    strategy.risk = strategy.build_risk_manager()
    for when in minutes(FRIDAY, 2):
        strategy.on_bar(bar_at(when, 3000))
    assert engine.orders == []
    assert sum("尚未收到账户资金" in line for line in engine.logs) == 1
    strategy.on_account(AccountData(gateway_name="SIM", accountid="SIM", balance=200_000.0))
    strategy.on_bar(bar_at(FRIDAY + timedelta(minutes=2), 3000))
    assert [o.volume for o in engine.orders] == [3]  # 3 lots × 3,001 ≤ 5% of 200,000, not of capital 1,000,000


def test_on_init_restores_the_state_and_keeps_the_name_of_the_model_it_loaded(rf_bundle: Path) -> None:
    earlier, engine = scripted_strategy([0.002])
    earlier.on_bar(bar_at(FRIDAY, 3000))
    engine.fill(earlier, engine.orders[0].vt_orderid, FRIDAY)
    state = {**saved(earlier), "model": {"name": "old_model", "checksum": "0" * 64}}
    engine = FakeCtaEngine()
    strategy = PredictiveTradingStrategy(engine, "test", VT, {"model_path": str(rf_bundle)})
    strategy.store = MemoryStateStore(state)
    strategy.on_init()
    assert (strategy.model_name, strategy.pos, strategy.entry_price) == (rf_bundle.name, 1.0, 3001.0)
    assert strategy.risk is not None and strategy.risk.state.positions.long_today == 1
    assert any("模型已更换" in line and "old_model" in line for line in engine.logs)
    assert any("已恢复状态" in line for line in engine.logs)

    other = PredictiveTradingStrategy(FakeCtaEngine(), "test", VT, {"model_path": str(rf_bundle)})
    other.store = MemoryStateStore({**state, "vt_symbol": "rb2605.SHFE"})
    with pytest.raises(ConfigError, match="state --strategy test --clear"):
        other.on_init()


def test_window_buffer_gives_the_last_rows_in_order() -> None:
    buffer = WindowBuffer(3, 2)
    for value in range(5):
        buffer.push(np.array([value, -value], dtype=np.float32))
    window = buffer.window()
    assert window is not None and window[:, 0].tolist() == [2.0, 3.0, 4.0]


# --- real bars through vnpy's BacktestingEngine ---------------------------------------------------------------


@pytest.fixture(scope="module")
def jan_2016(sample_frame: pd.DataFrame) -> pd.DataFrame:
    """Real rb bars from 2015-12-20 (warm-up) to 2016-01-31."""
    return sample_frame.loc[pd.Timestamp("2015-12-20", tz=CHINA_TZ) : pd.Timestamp("2016-01-31 23:59", tz=CHINA_TZ)]


@pytest.fixture(scope="module")
def backtest(jan_2016: pd.DataFrame, rf_bundle: Path) -> tuple[PreloadedBacktestingEngine, list[float]]:
    """The strategy with the real bundle on January 2016, and its online prediction for every traded bar."""
    engine = PreloadedBacktestingEngine(data_collector.frame_to_bars(jan_2016, VT))
    engine.set_parameters(
        vt_symbol=VT,
        interval=Interval.MINUTE,
        start=datetime(2016, 1, 4, tzinfo=CHINA_TZ),
        end=datetime(2016, 1, 31, 23, 59, tzinfo=CHINA_TZ),
        rate=0.0001,
        slippage=1,
        size=10,
        pricetick=1,
        capital=1_000_000,
    )
    # margin caps tight enough to bind: rb at 1,707 .. 1,870 needs about 1,800 of margin a lot, so 0.25% of
    # ~1,000,000 (2,500) allows one lot an order and 0.4% (4,000) two lots in all, well below fixed_size
    setting = {
        "model_path": str(rf_bundle),
        "fixed_size": 5,
        "trailing_percent": 0.5,
        "warmup_days": 14,
        "fees": "0.0001 0.0001 0.0001",
        "margin_rate": 0.1,
        "slippage_cost": 1.0,
        "max_single_trade_ratio": 0.0025,
        "max_position_ratio": 0.004,
    }
    engine.add_strategy(PredictiveTradingStrategy, setting)
    seen: list[float] = []
    strategy = engine.strategy
    original = strategy.on_bar

    def recording(bar: BarData) -> None:
        original(bar)
        if strategy.trading:
            seen.append(strategy.prediction_value)

    strategy.on_bar = recording
    engine.load_data()
    engine.run_backtesting()
    return engine, seen


def test_backtest_on_real_bars_trades_within_every_limit(
    backtest: tuple[PreloadedBacktestingEngine, list[float]],
) -> None:
    engine, _ = backtest
    trades = sorted(engine.trades.values(), key=lambda t: (t.datetime, int(t.tradeid)))
    assert len(trades) >= 10
    position, peak = 0.0, 0.0
    for trade in trades:
        signed = trade.volume if trade.direction == Direction.LONG else -trade.volume
        if trade.offset == Offset.OPEN:
            assert position == 0 or (position > 0) == (signed > 0)  # never opens against a held position
        else:
            assert position != 0 and abs(signed) <= abs(position) and (position > 0) != (signed > 0)
        position += signed
        peak = max(peak, abs(position))
    assert peak == 2  # the position margin cap, not fixed_size 5, limits the position
    opens = [order for order in engine.limit_orders.values() if order.offset == Offset.OPEN]
    assert {order.volume for order in opens} == {1}  # each open shrunk to the single-order cap
    third_lot = re.compile(r"风控拒绝 (Long|Short)Open 3@.*最多 0 手 .*持仓 -?2 目标 -?5")
    assert any(third_lot.search(line) for line in engine.logs)  # one lot more than two is refused
    assert engine.strategy.risk is not None and engine.strategy.risk.net_position == position


def test_risk_manager_pnl_equals_vnpy_net_pnl(backtest: tuple[PreloadedBacktestingEngine, list[float]]) -> None:
    engine, _ = backtest
    engine.calculate_result()
    stats = engine.calculate_statistics(output=False)
    book = RiskManager(
        RiskSettings(),
        ContractSpec(size=10, pricetick=1, margin_rate=0.1, fees=Fees.of_rate(0.0001)),
        1_000_000,
        slippage=1,
    )
    for trade in sorted(engine.trades.values(), key=lambda t: (t.datetime, int(t.tradeid))):
        book.update_trade(trade)
    book.mark(engine.history_data[-1].close_price, engine.history_data[-1].datetime)
    assert book.equity - 1_000_000 == pytest.approx(float(stats["total_net_pnl"]), abs=1e-6)
    assert engine.strategy.risk.equity == pytest.approx(book.equity, abs=1e-6)


def test_online_predictions_equal_the_batch_path_and_skip_the_window_after_a_real_roll(
    backtest: tuple[PreloadedBacktestingEngine, list[float]], jan_2016: pd.DataFrame, rf_bundle: Path
) -> None:
    engine, seen = backtest
    model = PricePredictionModel().load_model(rf_bundle)
    batch = batch_predictions(model, jan_2016, VT)
    first = jan_2016.index.searchsorted(pd.Timestamp(engine.start))
    online = np.array(seen)
    assert len(online) == len(jan_2016) - first
    roll = jan_2016.index.get_loc(pd.Timestamp("2016-01-04 09:00", tz=CHINA_TZ))  # rb1601 -> rb1605, +2.1%
    assert roll == first
    window = model.config.sequence_length
    missing = np.flatnonzero(np.isnan(batch)).tolist()
    assert missing == [*range(FEATURE_WARMUP + window - 1), *range(roll, roll + window - 1)]
    np.testing.assert_array_equal(np.isnan(online), np.isnan(batch[first:]))
    finite = np.isfinite(online)
    np.testing.assert_allclose(online[finite], batch[first:][finite], rtol=0, atol=1e-7)


def test_model_signal_and_batch_skip_the_same_bars_across_real_rolls(
    sample_frame: pd.DataFrame, rf_bundle: Path
) -> None:
    frame = sample_frame.loc[pd.Timestamp("2016-02-25", tz=CHINA_TZ) : pd.Timestamp("2016-03-20 23:59", tz=CHINA_TZ)]
    model = PricePredictionModel().load_model(rf_bundle)
    batch = batch_predictions(model, frame, VT)
    signal = ModelSignal(model, VT)
    online = np.array([signal.update(bar) for bar in data_collector.frame_to_bars(frame, VT)])
    np.testing.assert_array_equal(np.isnan(online), np.isnan(batch))
    finite = np.isfinite(batch)
    np.testing.assert_allclose(online[finite], batch[finite], rtol=0, atol=1e-7)
    for when in ("2016-03-07 21:00", "2016-03-08 21:00", "2016-03-11 21:00"):  # the sample's March roll gaps
        roll = frame.index.get_loc(pd.Timestamp(when, tz=CHINA_TZ))
        assert np.isnan(batch[roll : roll + 59]).all() and np.isfinite(batch[roll + 59])
        assert np.isfinite(batch[roll - 1])  # the window ending before the gap is whole
