"""The main contract live and the roll: the start mapping, the day-by-day watch, the legs and their risk checks, the
simulated exchange replaying two contracts, `contracts`, and a SIM run across a real roll of the sample."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from vnpy.event import Event
from vnpy.trader.constant import Direction, Exchange, Interval, Offset, OrderType
from vnpy.trader.engine import MainEngine
from vnpy.trader.event import EVENT_ACCOUNT, EVENT_POSITION, EVENT_TICK, EVENT_TRADE
from vnpy.trader.object import (
    AccountData,
    HistoryRequest,
    OrderRequest,
    PositionData,
    SubscribeRequest,
    TickData,
    TradeData,
)

import ai_trading_system
import bar_store
import data_collector
import rollover
import trading_calendar
from config import CHINA_TZ, ConfigError, ContractSpec, Fees, Home, RiskSettings
from contracts import ContractDay
from risk_manager import PositionBook, RiskManager
from sim_gateway import SimGateway
from tests.conftest import at, quiet_main_engine

OLD, NEW = "rb1610.SHFE", "rb1701.SHFE"
SHORT = Direction.SHORT
PRICES = ["open", "high", "low", "close"]
RB_SPEC = ContractSpec(size=10, pricetick=1, margin_rate=0.1, fees=Fees.parse("0.0001 0.0001 0.0001"))


def china(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=CHINA_TZ)


def tick(vt_symbol: str, when: str, price: float, open_interest: float, volume: float = 0.0) -> TickData:
    symbol, exchange = vt_symbol.split(".")
    return TickData(
        gateway_name="T",
        symbol=symbol,
        exchange=Exchange(exchange),
        datetime=china(when),
        volume=volume,
        open_interest=open_interest,
        last_price=price,
        bid_price_1=price,
        ask_price_1=price,
    )


# --- the rule at start and day by day --------------------------------------------------------------------------


def test_the_start_maps_to_the_largest_open_interest_but_never_before_the_saved_contract() -> None:
    day = date(2016, 8, 16)
    days = [
        ContractDay("rb1610.SHFE", day, 900.0, 700_000.0),
        ContractDay("rb1701.SHFE", day, 800.0, 650_000.0),
        ContractDay("rb1705.SHFE", day, 10.0, 20_000.0),
    ]
    assert rollover.main_from_days(days) == "rb1610.SHFE"
    assert rollover.main_from_days(days, floor="rb1701.SHFE") == "rb1701.SHFE"  # never back to an earlier one
    assert rollover.main_from_days(days, floor="rb1605.SHFE") == "rb1610.SHFE"
    with pytest.raises(Exception, match="快照"):
        rollover.main_from_days([])


def test_the_watch_decides_after_a_days_close_from_each_contracts_last_tick_and_never_switches_back() -> None:
    watch = rollover.MainWatch(
        OLD, [tick(OLD, "2016-08-16 14:59:59", 2600, 800_000), tick(NEW, "2016-08-16 14:59:59", 2540, 700_000)]
    )
    assert watch.day == date(2016, 8, 16)
    # during 08-17 the new contract overtakes; nothing changes before that day has closed
    assert watch.update(tick(OLD, "2016-08-16 21:00:00", 2601, 780_000)) is None
    assert watch.update(tick(NEW, "2016-08-17 14:59:59", 2541, 810_000)) is None
    assert watch.update(tick(OLD, "2016-08-17 14:59:59", 2599, 760_000)) is None and watch.main == OLD
    # the night session opens trading day 08-18: decided from 08-17's closing open interest
    assert watch.update(tick(OLD, "2016-08-17 21:00:00", 2590, 760_000)) == (OLD, date(2016, 8, 17))
    assert watch.main == NEW and watch.day == date(2016, 8, 18)
    assert watch.fresh(OLD) is not None and watch.fresh(NEW) is None  # the new main's first tick is still to come
    watch.update(tick(OLD, "2016-08-18 14:59:59", 2590, 900_000))  # the old one leads again: never back
    assert watch.update(tick(NEW, "2016-08-18 21:00:00", 2530, 700_000)) is None and watch.main == NEW


def test_the_legs_close_the_old_contract_and_open_the_same_on_the_new_paying_up_five_ticks() -> None:
    old, new = tick(OLD, "2016-08-17 21:00:00", 2600, 1), tick(NEW, "2016-08-17 21:00:00", 2540, 1)
    long_legs = rollover.roll_legs(2.0, old, new, 1.0)
    assert [(g.vt_symbol, g.direction, g.offset, g.volume, g.price) for g in long_legs] == [
        (OLD, Direction.SHORT, Offset.CLOSE, 2.0, 2595.0),
        (NEW, Direction.LONG, Offset.OPEN, 2.0, 2545.0),
    ]
    short_legs = rollover.roll_legs(-1.0, old, new, 1.0)
    assert [(g.direction, g.price) for g in short_legs] == [(Direction.LONG, 2605.0), (Direction.SHORT, 2535.0)]
    assert rollover.roll_legs(0.0, old, new, 1.0) == []


def risk_with_long(lots: float, limits: RiskSettings | None = None) -> RiskManager:
    risk = RiskManager(limits or RiskSettings(), RB_SPEC, 1_000_000.0)
    risk.sync_positions(PositionBook(long_yd=lots, long_price=2600.0))
    risk.mark(2600.0, china("2016-08-17 14:59:00"))
    return risk


def test_both_legs_are_risk_checked_the_open_as_the_book_stands_after_the_close() -> None:
    old, new = tick(OLD, "2016-08-17 21:00:00", 2600, 1), tick(NEW, "2016-08-17 21:00:00", 2540, 1)
    now = china("2016-08-17 21:00:00")
    legs = rollover.roll_legs(3.0, old, new, 1.0)
    # 3 lots of 2,545 margin each: 3 held + 3 more pass 1% of equity (10,000), the 3 left after the close do not
    tight = RiskSettings(max_position_ratio=0.01, max_single_trade_ratio=0.01)
    risk = risk_with_long(3.0, tight)
    symbol, exchange = data_collector.parse_vt_symbol(NEW)
    request = OrderRequest(symbol, exchange, Direction.LONG, OrderType.LIMIT, 3, 2545.0, Offset.OPEN)
    assert not risk.check(request, now).allowed  # against the book before the close
    assert rollover.leg_refusal(risk, legs, now) == ""
    assert risk.state.positions.long == 3.0  # the check changed nothing
    tighter = RiskSettings(max_position_ratio=0.005, max_single_trade_ratio=0.005)
    assert "保证金超限" in rollover.leg_refusal(risk_with_long(3.0, tighter), legs, now)
    halted = risk_with_long(3.0)
    halted.mark(2600.0, now)  # halted on the roll's own trading day (a new day lifts a halt)
    halted.state.halted, halted.state.halt_reason = True, "熔断 / halted"
    assert "熔断" in rollover.leg_refusal(halted, legs, now)  # the open leg is refused while halted
    assert "可平仓位不足" in rollover.leg_refusal(risk_with_long(1.0), legs, now)


# --- the simulated exchange with two contracts -----------------------------------------------------------------

TWO_CONTRACT_BARS = {  # datetime (bar start), open, high, low, close, volume, open_interest
    OLD: [
        ("2016-08-15 14:58:00", 2600, 2602, 2598, 2601, 30, 800_000),
        ("2016-08-15 14:59:00", 2601, 2603, 2599, 2602, 40, 790_000),
        ("2016-08-16 09:00:00", 2604, 2610, 2600, 2608, 50, 790_500),
        ("2016-08-16 09:01:00", 2608, 2612, 2605, 2606, 60, 791_000),
        ("2016-08-16 09:02:00", 2606, 2607, 2590, 2595, 70, 789_000),
    ],
    NEW: [
        ("2016-08-15 14:59:00", 2541, 2544, 2539, 2543, 20, 700_000),
        ("2016-08-16 09:00:00", 2545, 2551, 2540, 2549, 25, 701_000),
        ("2016-08-16 09:02:00", 2547, 2550, 2530, 2535, 35, 702_000),
        ("2016-08-16 09:03:00", 2536, 2540, 2533, 2538, 45, 703_000),
    ],
}


def store_bars(home: Home, frames: dict[str, pd.DataFrame]) -> None:
    """Save each contract's bars (index: bar start) in the home's database."""
    conn = data_collector.open_database(home)
    try:
        for vt_symbol, frame in frames.items():
            symbol, exchange = data_collector.parse_vt_symbol(vt_symbol)
            bar_store.save_bar_frame(conn, frame.reset_index(), symbol, exchange, Interval.MINUTE)
    finally:
        conn.close()


def hand_frames() -> dict[str, pd.DataFrame]:
    frames = {}
    for vt_symbol, rows in TWO_CONTRACT_BARS.items():
        frame = pd.DataFrame(rows, columns=["datetime", *PRICES, "volume", "open_interest"])
        frame["datetime"] = pd.to_datetime(frame["datetime"]).dt.tz_localize(CHINA_TZ)
        frame["turnover"] = 0.0
        frames[vt_symbol] = frame.set_index("datetime")
    return frames


@dataclass
class Seen:
    """What a gateway published, by kind (collected in the event thread)."""

    ticks: list[TickData] = field(default_factory=list)
    trades: list[TradeData] = field(default_factory=list)
    positions: list[PositionData] = field(default_factory=list)
    accounts: list[AccountData] = field(default_factory=list)


@pytest.fixture
def main_engine() -> Iterator[MainEngine]:
    engine: MainEngine = quiet_main_engine()
    yield engine
    engine.close()


def drain(engine: MainEngine) -> None:
    done = threading.Event()
    engine.event_engine.register("eTestDrain", lambda _event: done.set())
    engine.event_engine.put(Event("eTestDrain"))
    assert done.wait(10)


def test_the_simulated_exchange_replays_two_contracts_each_order_on_its_own_bar_in_one_account(
    main_engine: MainEngine, home: Home
) -> None:
    store_bars(home, hand_frames())
    store_bars(home, {"rb0000.SHFE": hand_frames()[OLD]})  # a continuous series is not a contract: left out
    seen = Seen()
    kinds: dict[str, list[Any]] = {EVENT_TICK: seen.ticks, EVENT_TRADE: seen.trades, EVENT_POSITION: seen.positions}
    kinds[EVENT_ACCOUNT] = seen.accounts
    main_engine.event_engine.register_general(lambda e: kinds[e.type].append(e.data) if e.type in kinds else None)
    gateway = main_engine.add_gateway(SimGateway, "SIMR")
    assert isinstance(gateway, SimGateway)
    setting = {"vt_symbol": "rb888.SHFE", "home": str(home.root), "start": "2016-08-16", "end": "2016-08-16"}
    main_engine.connect({**setting, "warmup_days": 3, "hold": True}, "SIMR")

    assert sorted(c.vt_symbol for c in main_engine.get_all_contracts()) == [OLD, NEW]
    snapshot = {t.vt_symbol: (t.datetime, t.last_price, t.open_interest, t.volume) for t in seen.ticks}
    assert snapshot == {
        OLD: (china("2016-08-15 14:59:59"), 2602, 790_000, 70),  # the day's volume: 30 + 40
        NEW: (china("2016-08-15 14:59:59"), 2543, 700_000, 20),
    }
    history = gateway.query_history(
        HistoryRequest("rb1701", Exchange.SHFE, china("2016-08-13"), china("2016-08-16"), Interval.MINUTE)
    )
    assert [bar.close_price for bar in history] == [2543]  # its own bars only

    def send(vt_symbol: str, direction: Direction, price: float, offset: Offset = Offset.OPEN) -> str:
        symbol, exchange = data_collector.parse_vt_symbol(vt_symbol)
        request = OrderRequest(symbol, exchange, direction, OrderType.LIMIT, 2, price, offset)
        return main_engine.send_order(request, "SIMR")

    send(OLD, Direction.LONG, 2620)  # fills on its first bar at its own open 2604
    send(NEW, Direction.SHORT, 2500)  # at 2545, not at the old contract's price
    main_engine.subscribe(SubscribeRequest("rb1610", Exchange.SHFE), "SIMR")
    gateway.release()
    assert gateway.finished.wait(30) and gateway.error is None
    drain(main_engine)
    assert [(t.vt_symbol, t.price, t.datetime) for t in seen.trades] == [
        (OLD, 2604, china("2016-08-16 09:00:00")),
        (NEW, 2545, china("2016-08-16 09:00:00")),
    ]
    replayed = [t for t in seen.ticks if t.datetime >= china("2016-08-16 09:00:00")]
    assert [t.vt_symbol for t in replayed[:4]] == [OLD, NEW, OLD, NEW]  # the opens first, then by turns
    assert {t.datetime.minute for t in replayed if t.vt_symbol == NEW} == {0, 2, 3, 4}  # its own minutes only
    fees = (2604 + 2545) * 2 * 10 * 0.0001
    floating = (2595 - 2604) * 2 * 10 + (2545 - 2538) * 2 * 10  # each marked at its own last close
    assert seen.accounts[-1].balance == pytest.approx(1_000_000 + floating - fees, abs=0.005)
    final = {(p.vt_symbol, p.direction): p.volume for p in seen.positions[-4:]}
    assert final == {(OLD, Direction.LONG): 2, (OLD, Direction.SHORT): 0, (NEW, Direction.LONG): 0, (NEW, SHORT): 2}


def test_a_continuous_symbol_replays_bars_from_the_database_only(home: Home) -> None:
    import sim_gateway

    base = {"vt_symbol": "rb888.SHFE", "home": str(home.root), "start": "2016-08-16", "end": "2016-08-16"}
    with pytest.raises(ConfigError, match="bar"):
        sim_gateway.parse_settings({**base, "mode": "tick"})


# --- a SIM run across a real roll of the sample ----------------------------------------------------------------

ROLL_AT = "2016-08-17 21:00"  # a roll gap of the sample (-58): rb1610 before it, rb1701 from it
DECIDED = date(2016, 8, 17)  # the new contract's open interest overtakes at this day's close


def real_pair(sample_frame: pd.DataFrame, start: str, end: str) -> dict[str, pd.DataFrame]:
    """Two contracts from the continuous sample around its roll gap at ROLL_AT: the old one is the series before the
    gap and the series shifted back by the gap after it; the new one the series shifted by the gap before it and the
    series after; open interest falls on the old and rises on the new, which leads from DECIDED's close on."""
    frame = sample_frame.loc[at(start) : at(end)].copy()
    before = frame.index < at(ROLL_AT)
    gap = frame["open"][~before].iloc[0] - frame["close"][before].iloc[-1]
    old, new = frame.copy(), frame.copy()
    old.loc[~before, PRICES] -= gap
    new.loc[before, PRICES] += gap
    days = trading_calendar.causal_trading_days(frame.index)
    number = {day: n for n, day in enumerate(sorted(set(days.tolist())))}
    n = np.array([number[day] for day in days.tolist()]) - number[DECIDED]
    old["open_interest"] = 1_000_000.0 - 30_000.0 * n
    new["open_interest"] = old["open_interest"] + 60_000.0 * n + 30_000.0
    return {OLD: old, NEW: new}


@pytest.mark.slow
def test_the_built_pair_keeps_the_real_prices_and_the_new_contract_overtakes_on_the_decided_day(
    sample_frame: pd.DataFrame,
) -> None:
    pair = real_pair(sample_frame, "2016-08-10", "2016-08-19 23:59")
    old, new = pair[OLD], pair[NEW]
    assert old.loc[at("2016-08-17 14:59"), "close"] == 2589 and new.loc[at(ROLL_AT), "open"] == 2531  # the sample's
    assert new.loc[at("2016-08-17 14:59"), "close"] == 2589 - 58 and old.loc[at(ROLL_AT), "open"] == 2531 + 58
    closing = {
        when: (old.loc[at(when), "open_interest"], new.loc[at(when), "open_interest"])
        for when in ("2016-08-16 14:59", "2016-08-17 14:59")
    }
    assert closing["2016-08-16 14:59"][0] > closing["2016-08-16 14:59"][1]
    assert closing["2016-08-17 14:59"][1] > closing["2016-08-17 14:59"][0]


@pytest.mark.slow
def test_contracts_lists_the_replays_contracts_and_marks_the_main_one_and_refuses_an_unknown_product(
    sample_frame: pd.DataFrame, home: Home, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.test_live_trading import run_cli

    assert ai_trading_system.main(["--home", str(home.root), "contracts", "--product", "zz"]) == 2
    error = capsys.readouterr().err
    assert "品种 zz" in error and "contracts.toml" in error  # what is wrong and where to add the product
    store_bars(home, real_pair(sample_frame, "2016-08-10", "2016-08-19 23:59"))
    listed = {}
    for day in ("2016-08-16", "2016-08-17"):  # snapshots of each day's close, before its night session
        result = run_cli(home, "contracts", "--product", "rb", "--gateway", "sim", "--replay-start", f"{day} 21:00")
        assert result.returncode == 0, result.stderr[-3000:]
        rows = [line.split() for line in result.stdout.splitlines() if line.startswith("rb1")]
        listed[day] = {row[0]: (row[2], "★" in row) for row in rows}
    assert listed["2016-08-16"] == {OLD: ("1,030,000", True), NEW: ("1,000,000", False)}
    assert listed["2016-08-17"] == {OLD: ("1,000,000", False), NEW: ("1,030,000", True)}


def summary_value(stdout: str, label: str) -> float:
    line = next(line for line in stdout.splitlines() if line.startswith(label))
    return float(line.split()[-1])


def run_across_the_roll(
    sample_frame: pd.DataFrame, rf_bundle: Path, home: Home, *options: str
) -> tuple[dict[str, pd.DataFrame], Any]:
    """`trade --gateway sim` on rb888.SHFE over 2016-08-15 .. 19 with the pair stored, always in the market."""
    from tests.test_live_trading import run_cli

    pair = real_pair(sample_frame, "2016-08-01", "2016-08-19 23:59")
    store_bars(home, pair)
    home.settings_dir.mkdir(parents=True, exist_ok=True)
    setting = {"model_path": str(rf_bundle), "fixed_size": 1, "trailing_percent": 0.0, "warmup_days": 10}
    setting["prediction_threshold"] = 1e-9  # always in the market: the roll has a position to move
    strategies = {"ai_rb": {"vt_symbol": "rb888.SHFE", "setting": setting}}
    (home.settings_dir / "strategies.json").write_text(json.dumps(strategies), encoding="utf-8")
    replay = ("--replay-start", "2016-08-15", "--replay-end", "2016-08-19")
    result = run_cli(home, "trade", "--gateway", "sim", "--no-ui", *replay, *options)
    assert result.returncode == 0, result.stderr[-3000:]
    return pair, result


@pytest.mark.slow
def test_a_sim_replay_across_a_roll_moves_the_position_continues_on_the_new_contract_and_the_pnl_adds_up(
    sample_frame: pd.DataFrame, rf_bundle: Path, home: Home
) -> None:
    from tests.test_live_trading import audit_events

    pair, result = run_across_the_roll(sample_frame, rf_bundle, home)

    mapped = audit_events(home, "main_contract")
    assert [(e["continuous"], e["vt_symbol"], e["main"]) for e in mapped] == [("rb888.SHFE", OLD, OLD)]
    assert mapped[0]["trading_day"] == "2016-08-15"  # the snapshot: Friday night's session belongs to Monday
    changes = audit_events(home, "main_change")
    assert [(e["old"], e["new"], e["decided_day"], e["effective_day"]) for e in changes] == [
        (OLD, NEW, "2016-08-17", "2016-08-18")
    ]
    (roll,) = audit_events(home, "roll")
    close, open_ = roll["legs"]
    assert (close["vt_symbol"], open_["vt_symbol"]) == (OLD, NEW) and roll["pos"] != 0
    assert close["volume"] == open_["volume"] == abs(roll["pos"])
    assert close["direction"] != open_["direction"] and open_["direction"] == ("Long" if roll["pos"] > 0 else "Short")
    trades = audit_events(home, "trade")
    legs = {vt_orderid: leg["vt_symbol"] for leg in (close, open_) for vt_orderid in leg["vt_orderids"]}
    for trade in (t for t in trades if t["vt_orderid"] in legs):
        bar = pair[trade["vt_symbol"]].loc[pd.Timestamp(trade["exchange_time"])]
        assert trade["price"] == bar["open"]  # paid up five ticks: filled at the bar's open
        assert pd.Timestamp(trade["exchange_time"]) >= at(ROLL_AT) and trade["vt_symbol"] == legs[trade["vt_orderid"]]
    assert close["price"] == pair[OLD].loc[at(ROLL_AT), "open"] and open_["price"] == pair[NEW].loc[at(ROLL_AT), "open"]
    after = [t for t in trades if pd.Timestamp(t["exchange_time"]) > at(ROLL_AT) and t["vt_orderid"] not in legs]
    assert after and {t["vt_symbol"] for t in after} == {NEW}  # it trades on, on the new contract only
    starts = audit_events(home, "strategy_start")
    assert [e["vt_symbol"] for e in starts] == [OLD, NEW] and starts[1]["pos"] == roll["pos"]

    # the final P&L by hand: every fill's cash, the positions left at each contract's last close, the fees
    cash = fees = 0.0
    held = {OLD: 0.0, NEW: 0.0}
    for trade in trades:
        sign = 1.0 if trade["direction"] == "Long" else -1.0
        cash -= sign * trade["price"] * trade["volume"] * 10
        fees += trade["price"] * trade["volume"] * 10 * 0.0001
        held[trade["vt_symbol"]] += sign * trade["volume"]
    assert held[OLD] == 0
    last_close = pair[NEW].loc[: at("2016-08-19 23:59"), "close"].iloc[-1]
    by_hand = cash + held[NEW] * last_close * 10 - fees
    account = summary_value(result.stdout, "账户权益") - 1_000_000
    assert account == pytest.approx(by_hand, abs=0.01)
    # the strategy's own book went through the roll: it matches the account but for the slippage it charges itself
    book = summary_value(result.stdout, "策略账本盈亏") + summary_value(result.stdout, "其中滑点")
    assert book == pytest.approx(by_hand, abs=0.01)
    assert f"合约 / contract           {NEW}" in result.stdout or NEW in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["flat", "alert"])
def test_roll_only_when_flat_switches_without_orders_and_alert_only_stays_on_the_old_contract(
    mode: str, sample_frame: pd.DataFrame, rf_bundle: Path, home: Home
) -> None:
    from tests.test_live_trading import audit_events

    _, result = run_across_the_roll(sample_frame, rf_bundle, home, "--roll", mode)
    (change,) = audit_events(home, "main_change")
    assert (change["new"], change["mode"]) == (NEW, mode)
    trades = audit_events(home, "trade")
    starts = [event["vt_symbol"] for event in audit_events(home, "strategy_start")]
    if mode == "alert":
        assert not audit_events(home, "roll") and starts == [OLD]
        assert {t["vt_symbol"] for t in trades} == {OLD}  # it goes on trading the old contract
        return
    (roll,) = audit_events(home, "roll")
    assert roll["legs"] == [] and roll["pos"] == 0 and starts == [OLD, NEW]
    first_new = min(pd.Timestamp(t["exchange_time"]) for t in trades if t["vt_symbol"] == NEW)
    assert first_new >= at(ROLL_AT)  # not before the main contract changed
    old = [t for t in trades if t["vt_symbol"] == OLD]
    assert all(pd.Timestamp(t["exchange_time"]) <= first_new for t in old)  # nothing on the old one after
    assert sum(t["volume"] if t["direction"] == "Long" else -t["volume"] for t in old) == 0  # left flat


FED_SCRIPT = """
import json, os
os.chdir(HOME)  # vnpy binds to the home's folder at its first import, which the recording below makes
import bar_features

fed = {}
update = bar_features.FeatureState.update


def recording(self, bar):
    row = update(self, bar)
    entry = fed.setdefault(id(self), {"names": list(self.names), "bars": [], "row": None})
    values = [bar.open_price, bar.high_price, bar.low_price, bar.close_price, bar.volume]
    entry["bars"].append([bar.vt_symbol, bar.datetime.isoformat(), *values])
    entry["row"] = None if row is None else [float(value) for value in row]
    return row


bar_features.FeatureState.update = recording
import ai_trading_system

code = ai_trading_system.main(ARGV)
print("FED" + json.dumps({"code": code, "states": list(fed.values())}))
"""


@pytest.mark.slow
def test_after_the_roll_the_new_strategys_features_hold_every_bar_of_the_new_contract_the_roll_minute_included(
    sample_frame: pd.DataFrame, rf_bundle: Path, home: Home
) -> None:
    import bar_features
    from tests.conftest import run_python

    pair = real_pair(sample_frame, "2016-08-01", "2016-08-19 23:59")
    store_bars(home, pair)
    home.settings_dir.mkdir(parents=True, exist_ok=True)
    setting = {"model_path": str(rf_bundle), "fixed_size": 1, "trailing_percent": 0.0, "warmup_days": 10}
    strategies = {"ai_rb": {"vt_symbol": "rb888.SHFE", "setting": {**setting, "prediction_threshold": 1e-9}}}
    (home.settings_dir / "strategies.json").write_text(json.dumps(strategies), encoding="utf-8")
    argv = ["--home", str(home.root), "trade", "--gateway", "sim", "--no-ui"]
    argv += ["--replay-start", "2016-08-15", "--replay-end", "2016-08-19"]
    code = f"HOME, ARGV = {str(home.root)!r}, {argv!r}\n" + FED_SCRIPT
    result = run_python(code, home.root, env={"TF_CPP_MIN_LOG_LEVEL": "3", "QT_QPA_PLATFORM": "offscreen"})
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.rsplit("FED", 1)[1])
    assert out["code"] == 0
    (state,) = [s for s in out["states"] if {row[0] for row in s["bars"]} == {NEW}]  # the strategy after the roll
    fed = pd.DataFrame([row[2:] for row in state["bars"]], columns=[*PRICES, "volume"])
    fed.index = pd.DatetimeIndex([pd.Timestamp(row[1]) for row in state["bars"]], name="datetime")
    real = pair[NEW].loc[fed.index[0] : fed.index[-1]]
    # every bar once, in order (the warm-up fed once), the roll minute's whole bar among them, as the contract traded
    assert list(fed.index) == list(real.index) and at(ROLL_AT) in fed.index
    pd.testing.assert_frame_equal(fed, real[[*PRICES, "volume"]], check_freq=False, check_index_type=False)
    batch = bar_features.build_features(real, NEW)[state["names"]].iloc[-1].to_numpy()
    np.testing.assert_allclose(np.array(state["row"], dtype=float), batch, rtol=1e-9, atol=1e-12)


# --- the roller against small fakes of vnpy's engines ----------------------------------------------------------


@dataclass
class FakeStrategy:
    """What the roller reads and changes of the strategy."""

    risk: RiskManager
    strategy_name: str = "ai_rb"
    vt_symbol: str = OLD
    pos: float = 1.0
    trading: bool = True
    active_orderids: set[str] = field(default_factory=set)
    entry_price: float = 2600.0
    best_price: float = 2600.0
    trailing_stop_price: float = 2580.0
    store: Any = None

    def state_snapshot(self, reason: str) -> dict[str, Any]:
        return {"vt_symbol": self.vt_symbol, "pos": self.pos, "saved_for": reason, "entry_price": self.entry_price}


class FakeCta:
    def __init__(self, strategy: FakeStrategy) -> None:
        self.strategies = {strategy.strategy_name: strategy}
        self.calls: list[str] = []

    def stop_strategy(self, name: str) -> None:
        self.calls.append("stop")
        self.strategies[name].trading = False

    def start_strategy(self, name: str) -> None:
        self.calls.append("start")
        self.strategies[name].trading = True


class FakeMain:
    def __init__(self) -> None:
        from vnpy.trader.constant import Product
        from vnpy.trader.object import ContractData

        self.contracts = {
            vt: ContractData("SIM", vt.split(".")[0], Exchange.SHFE, vt, Product.FUTURES, 10, 1) for vt in (OLD, NEW)
        }
        self.sent: list[OrderRequest] = []

    def get_all_contracts(self) -> list[Any]:
        return list(self.contracts.values())

    def get_contract(self, vt_symbol: str) -> Any:
        return self.contracts.get(vt_symbol)

    def get_gateway(self, name: str) -> None:
        return None

    def convert_order_request(self, request: OrderRequest, *_: Any) -> list[OrderRequest]:
        return [request]

    def send_order(self, request: OrderRequest, gateway_name: str) -> str:
        self.sent.append(request)
        return f"SIM.{len(self.sent)}"

    def update_order_request(self, *_: Any) -> None:
        return None


@dataclass
class FakeSystem:
    """The parts of AITradingSystem the roller uses; `recreate_strategy` records the contract."""

    main_engine: FakeMain
    cta_engine: FakeCta
    audit: Any
    alerts: list[tuple[str, str]] = field(default_factory=list)
    recreated: list[str] = field(default_factory=list)
    gateway_name: str = "SIM"

    @property
    def mailer(self) -> Any:
        return self

    def send_alert(self, message: str, severity: str = "WARNING", key: str | None = None) -> bool:
        self.alerts.append((severity, message))
        return True

    def recreate_strategy(self, old: Any, vt_symbol: str) -> None:
        self.recreated.append(vt_symbol)


def fake_roller(home: Home, mode: str = "open", risk: RiskManager | None = None) -> tuple[Any, FakeSystem]:
    from config import AuditLog
    from predictive_trading_strategy import MemoryStateStore

    strategy = FakeStrategy(risk or risk_with_long(1.0), store=MemoryStateStore())
    system = FakeSystem(FakeMain(), FakeCta(strategy), AuditLog(home.audit_path))
    snapshot = [tick(OLD, "2016-08-17 14:59:59", 2600, 800_000), tick(NEW, "2016-08-17 14:59:59", 2541, 900_000)]
    watch = rollover.MainWatch(OLD, snapshot)
    roller = rollover.Roller(system, "ai_rb", "rb888.SHFE", mode, watch)  # type: ignore[arg-type]
    return roller, system


def feed(roller: Any, *ticks: TickData) -> None:
    for each in ticks:
        roller.on_tick(Event(EVENT_TICK, each))


def fill(roller: Any, request: OrderRequest, vt_orderid: str, price: float, when: str) -> None:
    trade = TradeData(
        "SIM",
        request.symbol,
        request.exchange,
        vt_orderid.split(".")[1],
        vt_orderid,
        request.direction,
        request.offset,
        price,
        request.volume,
        china(when),
    )
    roller.on_trade(Event(EVENT_TRADE, trade))


def events(home: Home, kind: str) -> list[dict[str, Any]]:
    from config import AuditLog

    return [event for event in AuditLog(home.audit_path).read() if event["event"] == kind]


def test_the_roller_sends_both_legs_at_the_new_mains_first_price_then_books_them_and_moves_the_strategy(
    home: Home,
) -> None:
    roller, system = fake_roller(home)
    strategy = system.cta_engine.strategies["ai_rb"]
    feed(roller, tick(OLD, "2016-08-17 21:00:00", 2590, 800_000))
    assert roller.watch.main == NEW and system.main_engine.sent == []  # no price of the new main yet today
    feed(roller, tick(NEW, "2016-08-17 21:00:00", 2531, 900_000))
    close, open_ = system.main_engine.sent
    assert system.cta_engine.calls == ["stop"]
    assert (close.vt_symbol, close.direction, close.offset, close.volume, close.price) == (
        OLD,
        Direction.SHORT,
        Offset.CLOSE,
        1.0,
        2585.0,
    )
    assert (open_.vt_symbol, open_.direction, open_.offset, open_.volume, open_.price) == (
        NEW,
        Direction.LONG,
        Offset.OPEN,
        1.0,
        2536.0,
    )
    fill(roller, close, "SIM.1", 2590.0, "2016-08-17 21:00:00")
    assert system.recreated == []  # one leg is not a roll
    fill(roller, open_, "SIM.2", 2531.0, "2016-08-17 21:00:00")
    assert system.recreated == [NEW]
    book = strategy.risk.state
    assert book.realised == (2590 - 2600) * 10 and book.positions.long == 1 and book.positions.long_price == 2531
    assert strategy.store.state["vt_symbol"] == NEW and strategy.store.state["entry_price"] == 2531
    (roll,) = events(home, "roll")
    assert [(leg["vt_symbol"], leg["price"], leg["vt_orderids"]) for leg in roll["legs"]] == [
        (OLD, 2590.0, ["SIM.1"]),
        (NEW, 2531.0, ["SIM.2"]),
    ]
    assert [(e["old"], e["new"], e["decided_day"]) for e in events(home, "main_change")] == [(OLD, NEW, "2016-08-17")]


def test_a_refused_roll_sends_nothing_alerts_restarts_the_strategy_and_retries_the_next_day(home: Home) -> None:
    risk = risk_with_long(1.0)
    risk.mark(2590.0, china("2016-08-17 21:00:00"))
    risk.state.halted, risk.state.halt_reason = True, "熔断 / halted"
    roller, system = fake_roller(home, risk=risk)
    feed(roller, tick(OLD, "2016-08-17 21:00:00", 2590, 1), tick(NEW, "2016-08-17 21:00:00", 2531, 1))
    feed(roller, tick(NEW, "2016-08-17 21:01:00", 2532, 1))
    assert system.main_engine.sent == [] and system.cta_engine.calls == ["stop", "start"]  # once that day
    (refused,) = events(home, "roll_refused")
    assert "熔断" in refused["reason"] and system.alerts[0][0] == "CRITICAL"
    feed(roller, tick(OLD, "2016-08-18 21:00:00", 2580, 1), tick(NEW, "2016-08-18 21:00:00", 2520, 1))
    assert [request.vt_symbol for request in system.main_engine.sent] == [OLD, NEW]  # a new day lifts the halt


def test_a_leg_that_ends_unfilled_fails_the_roll_and_leaves_the_strategy_stopped(home: Home) -> None:
    from vnpy.trader.constant import Status
    from vnpy.trader.event import EVENT_ORDER

    roller, system = fake_roller(home)
    feed(roller, tick(OLD, "2016-08-17 21:00:00", 2590, 1), tick(NEW, "2016-08-17 21:00:00", 2531, 1))
    close, open_ = system.main_engine.sent
    rejected = open_.create_order_data("2", "SIM")
    rejected.status = Status.REJECTED
    roller.on_order(Event(EVENT_ORDER, rejected))
    fill(roller, close, "SIM.1", 2590.0, "2016-08-17 21:00:00")
    assert system.recreated == [] and system.cta_engine.calls == ["stop"]
    (failed,) = events(home, "roll_failed")
    assert "SIM.2" in failed["detail"] and system.alerts[-1][0] == "CRITICAL"


def test_the_roller_waits_for_the_strategys_own_orders_and_leaves_a_stopped_strategy_alone(home: Home) -> None:
    from vnpy.trader.event import EVENT_ORDER

    roller, system = fake_roller(home)
    strategy = system.cta_engine.strategies["ai_rb"]
    strategy.active_orderids = {"SIM.9"}
    feed(roller, tick(OLD, "2016-08-17 21:00:00", 2590, 1), tick(NEW, "2016-08-17 21:00:00", 2531, 1))
    assert system.cta_engine.calls == ["stop"] and system.main_engine.sent == []  # its cancel is not confirmed yet
    strategy.active_orderids.clear()  # the strategy's on_order saw the cancel
    symbol, exchange = data_collector.parse_vt_symbol(OLD)
    cancelled = OrderRequest(symbol, exchange, Direction.LONG, OrderType.LIMIT, 1, 2600).create_order_data("9", "SIM")
    roller.on_order(Event(EVENT_ORDER, cancelled))
    assert len(system.main_engine.sent) == 2

    roller, system = fake_roller(home)
    system.cta_engine.strategies["ai_rb"].trading = False  # a person stopped it
    feed(roller, tick(OLD, "2016-08-17 21:00:00", 2590, 1), tick(NEW, "2016-08-17 21:00:00", 2531, 1))
    assert system.cta_engine.calls == [] and system.main_engine.sent == []


class SnapshotMain(FakeMain):
    """A gateway whose snapshot has each contract's tick at 08-16's close."""

    def __init__(self, open_interest: dict[str, float]) -> None:
        super().__init__()
        self.ticks = {vt: tick(vt, "2016-08-16 14:59:59", 2600, oi) for vt, oi in open_interest.items()}
        self.subscribed: list[str] = []

    def subscribe(self, request: SubscribeRequest, gateway_name: str) -> None:
        self.subscribed.append(request.vt_symbol)

    def get_tick(self, vt_symbol: str) -> TickData | None:
        return self.ticks.get(vt_symbol)


@pytest.mark.parametrize(
    ("saved", "leader", "starts_on", "main"),
    [
        (None, NEW, NEW, NEW),  # no saved state: the largest open interest
        (OLD, NEW, OLD, NEW),  # the main moved on while the process was down: start where the state is, then roll
        (NEW, OLD, NEW, NEW),  # never back to an earlier delivery than the saved state's
    ],
)
def test_a_continuous_symbol_starts_on_the_main_contract_or_where_its_saved_state_is(
    home: Home, saved: str | None, leader: str, starts_on: str, main: str
) -> None:
    from types import SimpleNamespace

    import live_trading
    from config import AuditLog

    open_interest = {OLD: 500_000.0, NEW: 500_000.0}
    open_interest[leader] = 900_000.0
    engine = SnapshotMain(open_interest)
    audit = AuditLog(home.audit_path)
    if saved:
        live_trading.FileStateStore(home.strategy_state_path("ai_rb"), audit).save({"vt_symbol": saved})
    system = SimpleNamespace(
        home=home,
        gateway_name="CTP",
        audit=audit,
        main_engine=engine,
        main_contract="",
        _same_product=live_trading.AITradingSystem._same_product,
    )
    config = live_trading.StrategyConfig("ai_rb", "PredictiveTradingStrategy", "rb888.SHFE", {}, "open")
    mapped = live_trading.AITradingSystem.main_contract_config(system, config)  # type: ignore[arg-type]
    assert (mapped.vt_symbol, mapped.continuous, system.main_contract) == (starts_on, "rb888.SHFE", main)
    assert sorted(engine.subscribed) == [OLD, NEW]
    (event,) = events(home, "main_contract")
    assert (event["vt_symbol"], event["main"], event["saved_contract"]) == (starts_on, main, saved)
    assert event["open_interest"] == open_interest and event["trading_day"] == "2016-08-16"


def test_a_saved_state_on_a_contract_the_gateway_does_not_list_stops_the_start(home: Home) -> None:
    from types import SimpleNamespace

    import live_trading
    from config import AuditLog

    audit = AuditLog(home.audit_path)
    live_trading.FileStateStore(home.strategy_state_path("ai_rb"), audit).save({"vt_symbol": "rb1605.SHFE"})
    system = SimpleNamespace(
        home=home,
        gateway_name="CTP",
        audit=audit,
        main_engine=SnapshotMain({OLD: 1.0, NEW: 2.0}),
        main_contract="",
        _same_product=live_trading.AITradingSystem._same_product,
    )
    config = live_trading.StrategyConfig("ai_rb", "PredictiveTradingStrategy", "rb888.SHFE", {}, "open")
    with pytest.raises(ConfigError, match="state --strategy ai_rb --clear"):
        live_trading.AITradingSystem.main_contract_config(system, config)  # type: ignore[arg-type]
