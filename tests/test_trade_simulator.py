"""The strategy's rules simulated: trade for trade equal to vnpy's engine on real bars, and each rule on tiny bars."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from vnpy.trader.constant import Direction, Offset
from vnpy.trader.object import TradeData

import data_collector
from backtesting_module import BacktestingModule, PreloadedBacktestingEngine, replay, set_engine_parameters
from config import CHINA_TZ, ConfigError, DataError, Fees, contract_spec, load_contracts, resolve_home
from data_processor import gap_segments, roll_exit_flags, roll_flat_times
from ml_model import PricePredictionModel
from predictive_trading_strategy import PrecomputedSignal, PredictiveTradingStrategy
from tests.conftest import run_python
from trade_simulator import (
    CLOSE,
    EDGE_NONE,
    EDGE_POSITIVE,
    LONG,
    MIN_DECISION_TRADES,
    OPEN,
    SHORT,
    Simulation,
    SimulationBars,
    SimulationSettings,
    choose_threshold,
    simulate,
)
from trading_calendar import causal_trading_days

VT = "rb0000.SHFE"
Trade = tuple[pd.Timestamp, int, int, float, float]  # bar time, direction, offset, price, volume


# --- vnpy's engine and the simulator on the same real bars ----------------------------------------------------


def synthetic_predictions(close: np.ndarray, seed: int = 15) -> np.ndarray:
    """Deterministic causal predictions of rb-like size: half the last 10-bar return plus noise, 7% missing."""
    rng = np.random.default_rng(seed)
    past = np.r_[np.full(10, np.nan), close[:-10]]
    predictions: np.ndarray = (close / past - 1) * 0.5 + rng.normal(0, 0.0005, len(close))
    predictions[rng.random(len(close)) < 0.07] = np.nan
    return predictions


def engine_rows(trades: Sequence[TradeData]) -> list[Trade]:
    """vnpy's trades as (bar time, direction, offset, price, volume) in the simulator's terms."""
    sides = {Direction.LONG: LONG, Direction.SHORT: SHORT}
    offsets = {Offset.OPEN: OPEN, Offset.CLOSE: CLOSE}
    rows = []
    for trade in trades:
        assert trade.direction is not None and trade.datetime is not None
        rows.append(
            (pd.Timestamp(trade.datetime), sides[trade.direction], offsets[trade.offset], trade.price, trade.volume)
        )
    return rows


def engine_run(
    frame: pd.DataFrame,
    start: pd.Timestamp,
    predictions: np.ndarray,
    settings: SimulationSettings,
    flat_bars: set[int] | None = None,
) -> tuple[list[Trade], dict[str, Any]]:
    """PredictiveTradingStrategy on vnpy's BacktestingEngine from `start` (earlier bars are its warm-up), fed the
    predictions through a PrecomputedSignal as a backtest is (and `flat_bars` as a backtest sets them before rolls);
    its trades and statistics."""
    engine = PreloadedBacktestingEngine(data_collector.frame_to_bars(frame, VT))
    end = frame.index[-1].to_pydatetime()
    set_engine_parameters(engine, VT, "1m", start.to_pydatetime(), end, settings.engine_costs())
    engine.add_strategy(PredictiveTradingStrategy, settings.strategy_setting())
    model = PricePredictionModel("random_forest")  # only its identity is read: the predictions are given
    engine.strategy.signal = PrecomputedSignal(model, pd.DatetimeIndex(frame.index), predictions)
    engine.strategy.flat_bars = flat_bars or set()
    replay(engine)
    engine.calculate_result()
    statistics = engine.calculate_statistics(output=False)
    return engine_rows(sorted(engine.trades.values(), key=lambda trade: int(trade.tradeid))), statistics


def simulated_trades(simulation: Simulation, index: pd.DatetimeIndex) -> list[Trade]:
    return [
        (index[bar], int(side), int(offset), float(price), float(volume))
        for bar, side, offset, price, volume in zip(
            simulation.bar, simulation.direction, simulation.offset, simulation.price, simulation.volume, strict=True
        )
    ]


def assert_same_as_engine(frame: pd.DataFrame, start: str, settings: SimulationSettings) -> Simulation:
    """The simulator on the traded bars gives the engine's trades, and its net P&L, commission and slippage to the
    cent."""
    begin = pd.Timestamp(start, tz=CHINA_TZ)
    predictions = synthetic_predictions(frame["close"].to_numpy())
    traded = frame.loc[begin:]
    engine_trades, statistics = engine_run(frame, begin, predictions, settings)
    bars = SimulationBars.from_frame(traded, causal_trading_days(pd.DatetimeIndex(traded.index)))
    simulation = simulate(bars, predictions[len(frame) - len(traded) :], settings)
    assert simulated_trades(simulation, pd.DatetimeIndex(traded.index)) == engine_trades
    assert simulation.trade_count == statistics["total_trade_count"] > 0
    assert simulation.net_pnl == pytest.approx(statistics["total_net_pnl"], abs=0.005)
    assert simulation.commission == pytest.approx(statistics["total_commission"], abs=0.005)
    assert simulation.slippage == pytest.approx(statistics["total_slippage"], abs=0.005)
    return simulation


def rb_2015(sample_frame: pd.DataFrame, first: str, last: str) -> pd.DataFrame:
    return sample_frame.loc[pd.Timestamp(first, tz=CHINA_TZ) : pd.Timestamp(last, tz=CHINA_TZ)]


RISK_BINDS = SimulationSettings(
    threshold=0.0008,
    fixed_size=4,  # the single-order margin cap (5% of 60,000) allows one lot at rb's 2015 prices
    trailing_percent=0.3,
    slippage_ticks=2,
    capital=60_000,
    max_daily_loss_rate=0.004,  # 240 a day: halts often
)


def test_simulator_equals_the_engine_on_two_weeks_of_real_bars(sample_frame: pd.DataFrame) -> None:
    frame = rb_2015(sample_frame, "2015-03-05", "2015-03-31 23:59")
    simulation = assert_same_as_engine(frame, "2015-03-16", RISK_BINDS)
    assert simulation.trading_days == 13  # 12 weekdays, and the night of the 31st opens 1 April


PER_LOT = Fees(open_per_lot=3.0, close_per_lot=2.0, close_today_per_lot=7.5)  # made up: a DCE-style schedule


def test_simulator_equals_the_engine_with_per_lot_fees_and_a_dearer_close_today(sample_frame: pd.DataFrame) -> None:
    frame = rb_2015(sample_frame, "2015-03-05", "2015-03-31 23:59")
    settings = dataclasses.replace(RISK_BINDS, fees=PER_LOT, capital=1_000_000, max_daily_loss_rate=0.02)
    simulation = assert_same_as_engine(frame, "2015-03-16", settings)
    # by hand: every open 3 a lot; a close pays 7.5 a lot when its position opened the same trading day, else 2
    traded = frame.loc[pd.Timestamp("2015-03-16", tz=CHINA_TZ) :]
    days = causal_trading_days(pd.DatetimeIndex(traded.index))[simulation.bar]
    expected, opened_on, same_day = 0.0, None, 0
    for offset, volume, day in zip(simulation.offset, simulation.volume, days, strict=True):
        if offset == OPEN:
            expected, opened_on = expected + 3.0 * volume, day
        else:
            same_day += int(day == opened_on)
            expected += (7.5 if day == opened_on else 2.0) * volume
    closes = int((simulation.offset == CLOSE).sum())
    assert 0 < same_day < closes  # both kinds of close happen: the fee split is exercised
    assert simulation.commission == pytest.approx(expected, abs=1e-9)


def test_a_close_on_the_opening_day_pays_close_today_and_a_later_one_the_close_fee() -> None:
    settings = dataclasses.replace(PLAIN, fees=Fees(open_per_lot=1.0, close_per_lot=2.0, close_today_per_lot=5.0))
    bars = hand_bars([100] * 6, days=[0, 0, 0, 0, 1, 1])
    same_day = run(bars, [UP, NONE, DOWN, NONE, NONE, NONE], settings)
    assert trades_of(same_day) == [(1, LONG, OPEN, 100, 1), (3, SHORT, CLOSE, 100, 1)]
    assert same_day.commission == 1.0 + 5.0
    overnight = run(bars, [UP, NONE, NONE, DOWN, NONE, NONE], settings)
    assert trades_of(overnight) == [(1, LONG, OPEN, 100, 1), (4, SHORT, CLOSE, 100, 1)]
    assert overnight.commission == 1.0 + 2.0


@pytest.mark.slow
def test_simulator_equals_the_engine_trade_for_trade_on_55k_real_bars_and_three_settings(
    sample_frame: pd.DataFrame,
) -> None:
    frame = rb_2015(sample_frame, "2015-01-20", "2015-09-30 23:59")
    start = "2015-02-02"
    assert len(frame.loc[pd.Timestamp(start, tz=CHINA_TZ) :]) > 55_000
    rb_facts = SimulationSettings(threshold=0.0012)  # the strategy's defaults, rb's costs
    assert_same_as_engine(frame, start, rb_facts)

    risky = assert_same_as_engine(frame, start, RISK_BINDS)
    openings = risky.volume[risky.offset == OPEN]
    assert openings.max() < RISK_BINDS.fixed_size  # every opening order was shrunk by the margin limits
    traded = frame.loc[pd.Timestamp(start, tz=CHINA_TZ) :]
    bars = SimulationBars.from_frame(traded, causal_trading_days(pd.DatetimeIndex(traded.index)))
    unhalted = dataclasses.replace(RISK_BINDS, max_daily_loss_rate=1.0)
    predictions = synthetic_predictions(frame["close"].to_numpy())[len(frame) - len(traded) :]
    assert simulate(bars, predictions, unhalted).trade_count != risky.trade_count  # the daily-loss halt binds

    far = SimulationSettings(threshold=0.002, fixed_size=2, trailing_percent=0.0, slippage_ticks=100)
    deviating = assert_same_as_engine(frame, start, far)
    sent_at = traded["close"].to_numpy()[deviating.bar - 1]
    assert (traded["close"] < 2000).sum() > 5000 and (sent_at >= 2000).all()  # 100 ticks is > 5% below 2,000


def test_simulator_gives_run_backtest_trades_with_a_real_bundle(
    sample_frame: pd.DataFrame, rf_bundle: Path, tmp_path: Path
) -> None:
    frame = rb_2015(sample_frame, "2015-12-20", "2016-01-31 23:59")
    module = BacktestingModule(resolve_home(tmp_path / "home"))
    result = module.run_backtest(VT, "2016-01-04", "2016-01-31", rf_bundle, bars=frame, use_cache=False)
    model = PricePredictionModel().load_model(rf_bundle)
    settings = SimulationSettings.for_contract(module.contract(VT), threshold=model.threshold)
    index = pd.DatetimeIndex(result.bars.index)
    bars = SimulationBars.from_frame(result.bars, causal_trading_days(index))
    simulation = simulate(bars, result.predictions.to_numpy(), settings)
    expected = engine_rows(result.trades)
    assert simulated_trades(simulation, index) == expected and len(expected) > 20
    assert simulation.net_pnl == pytest.approx(result.statistics["total_net_pnl"], abs=0.005)


def test_jit_and_plain_python_kernels_give_identical_results(sample_frame: pd.DataFrame) -> None:
    frame = rb_2015(sample_frame, "2015-06-01", "2015-06-30 23:59")
    bars = SimulationBars.from_frame(frame, causal_trading_days(pd.DatetimeIndex(frame.index)))
    predictions = synthetic_predictions(frame["close"].to_numpy(), seed=3)
    flat = np.zeros(len(frame), dtype=bool)
    flat[::97] = True
    compiled = simulate(bars, predictions, RISK_BINDS, flat=flat)
    plain = simulate(bars, predictions, RISK_BINDS, flat=flat, jit=False)
    assert compiled.trade_count > 50
    for name in ("bar", "direction", "offset", "price", "volume"):
        np.testing.assert_array_equal(getattr(compiled, name), getattr(plain, name))
    assert (compiled.net_pnl, compiled.commission, compiled.slippage) == (
        plain.net_pnl,
        plain.commission,
        plain.slippage,
    )


# --- the rules on hand-made bars --------------------------------------------------------------------------------

UP, DOWN, NONE = 0.01, -0.01, 0.0  # predictions around a threshold of 0.005
PLAIN = SimulationSettings(threshold=0.005, trailing_percent=0.0, fees=Fees(), slippage_cost=0.0, capital=100_000)


def hand_bars(
    closes: Sequence[float],
    candles: dict[int, tuple[float, float, float, float]] | None = None,
    days: Sequence[int] = (),
) -> SimulationBars:
    """One-minute bars with open = high = low = close, except the (open, high, low, close) given for some bars."""
    close = np.asarray(closes, dtype=np.float64)
    open_, high, low = close.copy(), close.copy(), close.copy()
    for at, (o, h, lo, c) in (candles or {}).items():
        open_[at], high[at], low[at], close[at] = o, h, lo, c
    times = np.datetime64("2016-01-04T01:00", "us") + np.arange(len(close)) * np.timedelta64(60, "s")
    day_ids = np.asarray(days if len(days) else np.zeros(len(close)), dtype=np.int64)
    return SimulationBars(open_, high, low, close, times, day_ids)


def trades_of(simulation: Simulation) -> list[tuple[int, int, int, float, float]]:
    return [
        (int(b), int(d), int(o), float(p), float(v))
        for b, d, o, p, v in zip(
            simulation.bar, simulation.direction, simulation.offset, simulation.price, simulation.volume, strict=True
        )
    ]


def run(bars: SimulationBars, predictions: Sequence[float], settings: SimulationSettings, **kwargs: Any) -> Simulation:
    """The plain-Python kernel, and a check that the compiled one agrees."""
    plain = simulate(bars, np.asarray(predictions, dtype=np.float64), settings, jit=False, **kwargs)
    compiled = simulate(bars, np.asarray(predictions, dtype=np.float64), settings, **kwargs)
    assert trades_of(plain) == trades_of(compiled)
    return plain


def test_a_reversal_closes_on_the_next_bar_then_opens_on_the_bar_after() -> None:
    bars = hand_bars([100, 100, 100, 100, 100, 95])
    settings = dataclasses.replace(PLAIN, fees=Fees.of_rate(0.0001), slippage_cost=1.0)
    result = run(bars, [UP, UP, DOWN, DOWN, DOWN, DOWN], settings)
    # orders go out at the close ± 1 tick and fill on the next bar at the better open
    assert trades_of(result) == [(1, LONG, OPEN, 100, 1), (3, SHORT, CLOSE, 100, 1), (4, SHORT, OPEN, 100, 1)]
    assert (result.long_entries, result.short_entries, result.trading_days) == (1, 1, 1)
    assert result.trades_per_day == 3.0
    assert result.commission == pytest.approx(3 * 100 * 10 * 0.0001)
    assert result.slippage == pytest.approx(3 * 10 * 1.0)
    assert result.net_pnl == pytest.approx(5 * 10 - 0.3 - 30)  # the short marked at the last close, less costs


def test_an_order_not_reached_by_the_next_bar_is_cancelled_and_sent_again_at_its_close() -> None:
    bars = hand_bars([100, 103, 103], {1: (103, 104, 102, 103)})
    result = run(bars, [UP, UP, UP], PLAIN)
    assert trades_of(result) == [(2, LONG, OPEN, 103, 1)]  # 101 was above bar 1's low of 102; then 104, filled at 103


def test_trailing_stop_closes_and_blocks_reentry_until_the_signal_resets() -> None:
    closes = [100, 100, 110, 108, 108, 108, 108, 108, 108, 108]
    bars = hand_bars(closes, {2: (100, 110, 100, 110), 3: (109, 109, 108, 108)})
    settings = dataclasses.replace(PLAIN, trailing_percent=1.0)
    predictions = [UP, UP, UP, UP, UP, np.nan, UP, NONE, UP, UP]
    result = run(bars, predictions, settings)
    # bar 3 closes at 108 ≤ 110 × 0.99: sell at 107, filled at bar 4's open; UP and NaN do not lift the block,
    # a prediction inside the threshold at bar 7 does, and bar 8's UP opens again
    assert trades_of(result) == [(1, LONG, OPEN, 100, 1), (4, SHORT, CLOSE, 108, 1), (9, LONG, OPEN, 108, 1)]


def test_flat_bars_force_the_target_to_zero() -> None:
    bars = hand_bars([100] * 8)
    flat = np.array([False, False, True, True, False, False, False, False])
    result = run(bars, [UP] * 8, PLAIN, flat=flat)
    assert trades_of(result) == [(1, LONG, OPEN, 100, 1), (3, SHORT, CLOSE, 100, 1), (5, LONG, OPEN, 100, 1)]


def test_daily_loss_halt_closes_and_stops_opening_until_the_next_trading_day() -> None:
    closes = [1000, 1000, 880, 880, 880, 880, 880, 880]
    days = [0, 0, 0, 0, 0, 1, 1, 1]
    bars = hand_bars(closes, {2: (1000, 1000, 880, 880)}, days)
    settings = dataclasses.replace(PLAIN, max_daily_loss_rate=0.01)  # 1,000 of 100,000
    result = run(bars, [UP] * 8, settings)
    # bar 2 marks a loss of 1,200: halted, the long is sold; no opening on day 0 again, day 1 opens
    assert trades_of(result) == [(1, LONG, OPEN, 1000, 1), (3, SHORT, CLOSE, 880, 1), (6, LONG, OPEN, 880, 1)]
    assert result.trading_days == 2


def test_margin_limits_shrink_an_opening_order_then_refuse_it() -> None:
    bars = hand_bars([2000] * 6)
    settings = dataclasses.replace(PLAIN, fixed_size=5)
    result = run(bars, [UP] * 6, settings)
    # one lot's margin at 2,001 is 2,001: 5% of 100,000 allows two lots an order, 10% four lots in all
    assert trades_of(result) == [(1, LONG, OPEN, 2000, 2), (2, LONG, OPEN, 2000, 2)]


def test_an_order_priced_too_far_from_the_close_is_refused() -> None:
    bars = hand_bars([100] * 4)
    assert run(bars, [UP] * 4, dataclasses.replace(PLAIN, slippage_ticks=6)).trade_count == 0  # 6% > 5%
    assert run(bars, [UP] * 4, dataclasses.replace(PLAIN, slippage_ticks=5)).trade_count == 1


def test_order_prices_land_on_a_decimal_tick_exactly() -> None:
    bars = hand_bars([20.0, 20.4, 20.4], {1: (20.4, 20.4, 20.0, 20.4)})
    result = run(bars, [UP, NONE, NONE], dataclasses.replace(PLAIN, pricetick=0.2))
    assert 101 * 0.2 != 20.2  # the float product misses the decimal price vnpy's round_to gives
    assert trades_of(result) == [(1, LONG, OPEN, 20.2, 1)]


def test_bars_closer_than_a_minute_and_misaligned_predictions_are_refused() -> None:
    bars = hand_bars([100, 100, 100])
    with pytest.raises(DataError, match="differ"):
        simulate(bars, np.zeros(2), PLAIN)
    close = np.full(2, 100.0)
    times = np.array(["2016-01-04T09:00:00", "2016-01-04T09:00:30"], dtype="datetime64[us]")
    with pytest.raises(DataError, match="a minute apart"):
        SimulationBars(close, close, close, close, times, np.zeros(2, dtype=np.int64))
    with pytest.raises(ConfigError):
        SimulationSettings(threshold=0.001, max_single_trade_ratio=0.5, max_position_ratio=0.2)


# --- settings and the module itself -----------------------------------------------------------------------------


def test_settings_for_a_contract_match_the_backtest_costs_and_name_strategy_parameters(tmp_path: Path) -> None:
    module = BacktestingModule(resolve_home(tmp_path / "home"))
    costs = module.costs(VT)
    settings = SimulationSettings.for_contract(contract_spec(VT, load_contracts()), threshold=0.001)
    assert (settings.fees, settings.slippage_cost, settings.size, settings.pricetick) == (
        costs["fees"],
        costs["slippage"],
        costs["size"],
        costs["pricetick"],
    )
    assert set(settings.strategy_setting()) <= set(PredictiveTradingStrategy.parameters)


def test_importing_the_simulator_loads_neither_numba_nor_vnpy(tmp_path: Path) -> None:
    code = "import sys, trade_simulator; print(sorted(m for m in ('numba', 'vnpy', 'pandas') if m in sys.modules))"
    done = run_python(code, tmp_path / "home")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_simulator_equals_the_engine_when_flat_before_real_rolls(sample_frame: pd.DataFrame) -> None:
    frame = sample_frame.loc[pd.Timestamp("2016-02-25", tz=CHINA_TZ) : pd.Timestamp("2016-03-15 23:59", tz=CHINA_TZ)]
    begin = pd.Timestamp("2016-03-01", tz=CHINA_TZ)
    predictions = synthetic_predictions(frame["close"].to_numpy())
    settings = dataclasses.replace(RISK_BINDS, capital=1_000_000, max_daily_loss_rate=0.02)
    flags = roll_exit_flags(gap_segments(frame))
    flat_bars = roll_flat_times(frame)  # what a backtest of these bars sets on the strategy
    assert flat_bars == set(np.asarray(frame.index.as_unit("s").asi8)[flags].tolist())
    engine_trades, _ = engine_run(frame, begin, predictions, settings, flat_bars)
    traded = frame.loc[begin:]
    first = len(frame) - len(traded)
    bars = SimulationBars.from_frame(traded, causal_trading_days(pd.DatetimeIndex(traded.index)))
    simulation = simulate(bars, predictions[first:], settings, flat=flags[first:])
    assert simulated_trades(simulation, pd.DatetimeIndex(traded.index)) == engine_trades
    assert flags[first:].sum() >= 6 and len(engine_trades) > 20  # three rolls in the range, two flat bars each


def test_choose_threshold_keeps_the_best_net_pnl_and_says_none_when_nothing_earns_after_costs() -> None:
    rng = np.random.default_rng(3)
    steps = rng.choice([-4.0, 4.0], size=3000)
    close = 3000 + np.cumsum(steps)
    bars = hand_bars(list(close))
    spec = contract_spec(VT, load_contracts())
    ahead = np.r_[close[2:] - close[1:-1], 0.0, 0.0] / 3000  # tomorrow's move, known today: a perfect model
    foresight = choose_threshold(bars, ahead * rng.uniform(0.5, 1.5, size=len(close)), spec)
    assert foresight.edge == EDGE_POSITIVE and foresight.net_pnl > 0
    eligible = [row for row in foresight.grid if row[2] >= MIN_DECISION_TRADES]
    assert foresight.threshold == max(eligible, key=lambda row: row[1])[0]
    replayed = simulate(bars, ahead * 0, SimulationSettings.for_contract(spec, foresight.threshold))
    assert replayed.trade_count == 0  # sanity: no prediction, no trade
    hindsight = choose_threshold(bars, -ahead, spec)  # always wrong
    assert hindsight.edge == EDGE_NONE and all(row[1] <= 0 for row in hindsight.grid)
    assert foresight.round_trip_cost == pytest.approx(spec.round_trip_return(float(close.mean())))
