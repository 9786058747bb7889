"""Pre-trade risk checks and the account book, with rb's contract facts."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace
from datetime import date, datetime, timedelta
from itertools import count

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from vnpy.trader.constant import Direction, Exchange, Offset, OrderType
from vnpy.trader.object import OrderRequest, TradeData

from config import CHINA_TZ, ConfigError, ContractSpec, DataError, Fees, RiskSettings
from risk_manager import (
    AWAITING_ACCOUNT,
    AccountState,
    PositionBook,
    RiskDecision,
    RiskManager,
    check_order,
    position_differences,
    same_holdings,
    trade_fees,
    with_broker_split,
)

RB = ContractSpec(size=10, pricetick=1, margin_rate=0.1, fees=Fees.of_rate(0.0001))
LIMITS = RiskSettings()
CAPITAL = 1_000_000.0
FRIDAY = datetime(2016, 1, 8, 9, 0, tzinfo=CHINA_TZ)
LONG, SHORT = Direction.LONG, Direction.SHORT
OPEN, CLOSE = Offset.OPEN, Offset.CLOSE
TODAY, YESTERDAY = Offset.CLOSETODAY, Offset.CLOSEYESTERDAY
_trade_ids = count(1)


def at(day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    """A time in January 2016, China time."""
    return datetime(2016, 1, day, hour, minute, second, tzinfo=CHINA_TZ)


def order(direction: Direction, offset: Offset, volume: float, price: float = 3000) -> OrderRequest:
    return OrderRequest("rb1605", Exchange.SHFE, direction, OrderType.LIMIT, volume, price, offset)


def trade(direction: Direction, offset: Offset, volume: float, price: float = 3000) -> TradeData:
    number = str(next(_trade_ids))
    return TradeData("SIM", "rb1605", Exchange.SHFE, number, number, direction, offset, price, volume, FRIDAY)


def account(**values: object) -> AccountState:
    """rb account state with a mark at 3000, positions given as PositionBook keywords."""
    book = PositionBook(**{key: value for key, value in values.items() if hasattr(PositionBook, key)})  # type: ignore[arg-type]
    rest = {key: value for key, value in values.items() if not hasattr(PositionBook, key)}
    return AccountState(**{"capital": CAPITAL, "positions": book, "last_price": 3000.0, **rest})  # type: ignore[arg-type]


def check(request: OrderRequest, state: AccountState, now: datetime = FRIDAY) -> RiskDecision:
    return check_order(request, state, LIMITS, RB, now)


def manager(slippage: float = 0.0) -> RiskManager:
    return RiskManager(LIMITS, RB, CAPITAL, slippage)


# --- pure checks: each rule, its reason and max_volume --------------------------------------------------


def test_order_within_every_limit_is_allowed_with_its_own_volume() -> None:
    assert check(order(LONG, OPEN, 16), account()) == RiskDecision(True, "", 16)


@pytest.mark.parametrize(
    ("request_", "fragment"),
    [
        (order(LONG, OPEN, 0), "委托数量必须 > 0"),
        (order(LONG, OPEN, -1), "委托数量必须 > 0"),
        (order(LONG, OPEN, 1, price=0), "委托价格必须是正数"),
        (order(LONG, OPEN, 1, price=math.nan), "委托价格必须是正数"),
        (order(LONG, OPEN, 1, price=math.inf), "委托价格必须是正数"),
        (order(Direction.NET, OPEN, 1), "委托方向必须是多或空"),
        (order(LONG, Offset.NONE, 1), "委托必须指明开平"),
    ],
)
def test_malformed_order_is_refused_outright(request_: OrderRequest, fragment: str) -> None:
    decision = check(request_, account())
    assert (decision.allowed, decision.max_volume) == (False, 0)
    assert decision.reason.startswith(fragment)


def test_price_off_the_tick_grid_is_refused() -> None:
    decision = check(order(LONG, OPEN, 1, price=3000.5), account())
    assert decision == RiskDecision(False, "价格 3000.5 不是最小变动价位 1 的整数倍 / price is off the tick grid", 0)
    assert check(order(LONG, OPEN, 1, price=3000 + 1e-9), account()).allowed


def test_price_outside_the_known_limit_band_is_refused_and_an_unknown_band_is_ignored() -> None:
    banded = account(limit_up=3100.0, limit_down=2900.0)
    decision = check(order(LONG, OPEN, 1, price=3101), banded)
    assert decision == RiskDecision(False, "价格 3101 超出涨跌停板 [2900, 3100] / price outside the daily band", 0)
    assert not check(order(SHORT, OPEN, 1, price=2899), banded).allowed
    assert check(order(LONG, OPEN, 1, price=3100), banded).allowed
    assert check(order(LONG, OPEN, 1, price=3101), account()).allowed


def test_price_too_far_from_the_last_price_is_refused() -> None:
    decision = check(order(LONG, OPEN, 1, price=3151), account())
    assert decision == RiskDecision(
        False, "价格 3151 偏离最新价 3000 达 5.03%，超过上限 5.00% / price too far from the last price", 0
    )
    assert check(order(LONG, OPEN, 1, price=3150), account()).allowed
    assert check(order(LONG, OPEN, 1, price=2850), account()).allowed
    assert check(order(LONG, OPEN, 1, price=5000), account(last_price=math.nan)).allowed  # no mark yet


def test_twenty_first_order_within_sixty_seconds_is_refused_until_the_first_leaves_the_window() -> None:
    state = account()
    for i in range(20):
        state.orders.append((FRIDAY + timedelta(seconds=2 * i), LONG, OPEN, 3000.0, float(i + 1)))
    decision = check(order(SHORT, OPEN, 1), state, FRIDAY + timedelta(seconds=59))
    assert decision == RiskDecision(
        False, "委托频率超限：最近 60 秒已发 20 笔，上限 20 笔/分钟 / order rate limit reached", 0
    )
    assert check(order(SHORT, OPEN, 1), state, FRIDAY + timedelta(seconds=60)).allowed  # (now - 60 s, now]


def test_identical_order_within_the_duplicate_window_is_refused() -> None:
    state = account()
    state.orders.append((FRIDAY, LONG, OPEN, 3000.0, 2.0))
    decision = check(order(LONG, OPEN, 2), state, FRIDAY + timedelta(seconds=3))
    assert decision == RiskDecision(
        False, "重复委托：3 秒前已发出相同的委托（多开 3000 × 2），5 秒内不得重复 / duplicate order", 0
    )
    assert check(order(LONG, OPEN, 2), state, FRIDAY + timedelta(seconds=5)).allowed
    assert check(order(LONG, OPEN, 3), state, FRIDAY + timedelta(seconds=3)).allowed
    assert check(order(LONG, OPEN, 2, price=3001), state, FRIDAY + timedelta(seconds=3)).allowed
    assert check(order(SHORT, OPEN, 2), state, FRIDAY + timedelta(seconds=3)).allowed


def test_closing_more_than_held_is_refused_with_the_closable_volume() -> None:
    state = account(long_today=2.0, long_yd=3.0, long_price=3000.0, short_yd=4.0, short_price=3000.0)
    decision = check(order(SHORT, CLOSE, 6), state)
    assert decision == RiskDecision(
        False, "可平仓位不足：平多 6 手，只可平 5 手 / cannot close more than held (Close)", 5
    )
    assert check(order(SHORT, TODAY, 3), state).max_volume == 2
    assert check(order(SHORT, YESTERDAY, 4), state).max_volume == 3
    assert check(order(LONG, CLOSE, 5), state).max_volume == 4
    assert check(order(LONG, TODAY, 1), state) == RiskDecision(
        False, "可平仓位不足：平空今仓 1 手，只可平 0 手 / cannot close more than held (Close Today)", 0
    )
    assert check(order(SHORT, CLOSE, 5), state) == RiskDecision(True, "", 5)


def test_closing_is_allowed_while_halted_and_opening_is_not() -> None:
    state = account(long_yd=10.0, long_price=3000.0, halted=True, halt_reason="熔断：测试 / test halt")
    assert check(order(SHORT, CLOSE, 10), state) == RiskDecision(True, "", 10)
    assert check(order(LONG, OPEN, 1), state) == RiskDecision(False, "熔断：测试 / test halt", 0)
    assert check(order(SHORT, OPEN, 1), state) == RiskDecision(False, "熔断：测试 / test halt", 0)


def test_opening_is_refused_when_the_daily_loss_is_breached_before_any_halt_is_set() -> None:
    state = account(long_yd=10.0, long_price=3000.0, day_start_equity=CAPITAL, last_price=2799.0)  # loss 20,100
    decision = check(order(LONG, OPEN, 1, price=2799), state)
    assert decision == RiskDecision(
        False,
        "熔断：今日亏损超限，只允许平仓（今日盈亏 -20,100.00 < -2.00% × 日初权益 1,000,000.00 = -20,000.00）"
        "/ daily loss limit breached: closing only",
        0,
    )
    assert check(order(SHORT, CLOSE, 10, price=2799), state).allowed


def test_opening_order_above_single_trade_margin_is_refused_with_max_volume() -> None:
    # one lot at 3000 margins 3000 × 10 × 0.1 = 3,000; 5% of 1,000,000 = 50,000 → 16 lots
    decision = check(order(LONG, OPEN, 17), account())
    assert decision == RiskDecision(
        False,
        "单笔保证金超限：17 手 × 3,000.00 = 51,000.00 > 5.00% × 权益 1,000,000.00 = 50,000.00，最多 16 手 "
        "/ single-order margin limit",
        16,
    )


def test_opening_order_above_position_margin_is_refused_with_max_volume() -> None:
    # 10% of 1,000,000 = 100,000 → 33 lots in all, both sides margined: 20 long + 10 short leave 3
    state = account(long_yd=20.0, long_price=3000.0, short_today=10.0, short_price=3000.0)
    decision = check(order(SHORT, OPEN, 5), state)
    assert decision == RiskDecision(
        False,
        "持仓保证金超限：(30 + 5) 手 × 3,000.00 = 105,000.00 > 10.00% × 权益 1,000,000.00 = 100,000.00，"
        "最多再开 3 手 / position margin limit",
        3,
    )
    assert check(order(SHORT, OPEN, 3), state).allowed


def test_margin_limits_use_equity_at_the_last_price_including_open_losses() -> None:
    # long 10 bought at 3200, marked at 3000: equity 980,000, 5% = 49,000 → 16 lots; position cap 98,000 → 32 in all
    state = account(long_yd=10.0, long_price=3200.0, last_price=3000.0)
    assert check(order(LONG, OPEN, 17), state).max_volume == 16
    assert check(order(LONG, OPEN, 23), state).max_volume == 16
    full = account(long_yd=10.0, long_price=3200.0, short_yd=10.0, short_price=3000.0, last_price=3000.0)
    assert check(order(LONG, OPEN, 13), full).max_volume == 12


def test_opening_with_no_equity_left_is_refused_with_zero_volume() -> None:
    decision = check(order(LONG, OPEN, 1), account(realised=-CAPITAL))
    assert (decision.allowed, decision.max_volume) == (False, 0)


def test_first_failing_rule_wins() -> None:
    state = account(halted=True, halt_reason="熔断 / halt")
    state.orders.append((FRIDAY, LONG, OPEN, 3200.0, 100.0))
    assert check(order(LONG, OPEN, 100, price=3200.5), state).reason.startswith("价格 3200.5 不是最小变动价位")
    assert check(order(LONG, OPEN, 100, price=3200), state).reason.startswith("价格 3200 偏离最新价")
    state.last_price = 3200.0
    assert check(order(LONG, OPEN, 100, price=3200), state).reason.startswith("重复委托")
    assert check(order(LONG, OPEN, 99, price=3200), state).reason == "熔断 / halt"


def test_check_order_does_not_change_the_state() -> None:
    state = account(long_today=3.0, long_price=3000.0, day_start_equity=CAPITAL)
    state.orders.append((FRIDAY, LONG, OPEN, 3000.0, 1.0))
    before = repr(state)
    for request in (order(LONG, OPEN, 50), order(SHORT, CLOSE, 9), order(LONG, OPEN, 1), order(SHORT, TODAY, 1)):
        check(request, state, FRIDAY + timedelta(seconds=1))
    assert repr(state) == before


def test_naive_time_is_rejected() -> None:
    with pytest.raises(ValueError, match="时区"):
        check(order(LONG, OPEN, 1), account(), datetime(2016, 1, 8, 9))  # noqa: DTZ001 - the naive time under test


# --- the account book -----------------------------------------------------------------------------------


def test_capital_must_be_positive() -> None:
    for capital in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ConfigError, match="初始资金"):
            RiskManager(LIMITS, RB, capital)
    with pytest.raises(ConfigError, match="滑点"):
        RiskManager(LIMITS, RB, CAPITAL, slippage=-1)


def test_round_trip_realised_pnl_commission_and_slippage_are_exact() -> None:
    book = manager(slippage=1.0)
    book.mark(3000, FRIDAY)
    book.update_trade(trade(LONG, OPEN, 10, 3000))
    book.update_trade(trade(SHORT, CLOSE, 10, 3050))
    state = book.state
    assert state.realised == 50 * 10 * 10
    assert state.commission == pytest.approx(3000 * 100 * 0.0001 + 3050 * 100 * 0.0001)  # 30 + 30.5
    assert state.slippage_cost == 2 * 1.0 * 10 * 10
    assert book.equity == pytest.approx(1_000_000 + 5_000 - 60.5 - 200)
    assert (state.positions, book.net_position) == (PositionBook(), 0)


def test_short_round_trip_with_average_price_realises_against_the_average() -> None:
    book = manager()
    book.update_trade(trade(SHORT, OPEN, 2, 3100))
    book.update_trade(trade(SHORT, OPEN, 2, 3120))  # average 3110
    assert (book.state.positions.short_price, book.net_position) == (3110, -4)
    assert book.state.last_price == 3100  # no mark yet: the first fill's price
    book.update_trade(trade(LONG, CLOSE, 1, 3080))
    assert book.state.realised == 30 * 1 * 10
    assert book.state.positions.short_price == 3110  # closing leaves the average alone
    book.update_trade(trade(LONG, CLOSE, 3, 3130))
    assert book.state.realised == 300 - 20 * 3 * 10
    assert book.state.positions == PositionBook()


def test_unrealised_and_daily_pnl_follow_the_mark() -> None:
    book = manager()
    book.mark(3000, FRIDAY)
    book.update_trade(trade(LONG, OPEN, 4, 3000))
    book.update_trade(trade(SHORT, OPEN, 1, 3010))
    book.mark(3020, FRIDAY + timedelta(minutes=5))
    commission = (3000 * 4 + 3010) * 10 * 0.0001
    assert book.state.unrealised(RB.size) == 20 * 4 * 10 - 10 * 1 * 10
    assert book.equity == pytest.approx(CAPITAL + 700 - commission)
    assert book.daily_pnl == pytest.approx(700 - commission)
    assert book.status == "OK"


def test_partial_fills_give_the_same_book_as_one_fill() -> None:
    whole, parts = manager(slippage=1.0), manager(slippage=1.0)
    whole.update_trade(trade(LONG, OPEN, 10, 3000))
    whole.update_trade(trade(SHORT, CLOSE, 7, 3040))
    for volume in (3, 3, 4):
        parts.update_trade(trade(LONG, OPEN, volume, 3000))
    for volume in (1, 6):
        parts.update_trade(trade(SHORT, CLOSE, volume, 3040))
    assert parts.state.positions == whole.state.positions == PositionBook(long_today=3, long_price=3000)
    assert parts.state.realised == whole.state.realised == 40 * 7 * 10
    assert parts.state.commission == pytest.approx(whole.state.commission)
    assert parts.state.slippage_cost == whole.state.slippage_cost == 170


def test_night_mark_rolls_today_into_yesterday_for_closetoday_and_closeyesterday() -> None:
    book = manager()
    book.mark(3000, at(8, 9))
    book.update_trade(trade(LONG, OPEN, 5, 3000))
    assert book.state.positions.long_today == 5
    book.mark(3000, at(8, 21, 5))  # Friday night belongs to Monday
    book.update_trade(trade(LONG, OPEN, 3, 3000))
    assert (book.state.positions.long_yd, book.state.positions.long_today) == (5, 3)
    now = at(8, 21, 6)
    assert book.check(order(SHORT, TODAY, 4), now).max_volume == 3
    assert book.check(order(SHORT, YESTERDAY, 6), now).max_volume == 5
    assert book.check(order(SHORT, CLOSE, 9), now).max_volume == 8
    book.update_trade(trade(SHORT, CLOSE, 6, 3000))  # yesterday first
    assert (book.state.positions.long_yd, book.state.positions.long_today) == (0, 2)
    assert book.check(order(SHORT, YESTERDAY, 1), now) == RiskDecision(
        False, "可平仓位不足：平多昨仓 1 手，只可平 0 手 / cannot close more than held (Close Yesterday)", 0
    )
    book.update_trade(trade(SHORT, TODAY, 2, 3000))
    assert book.state.positions == PositionBook()


def test_closetoday_and_closeyesterday_fills_take_only_their_bucket() -> None:
    book = manager()
    book.sync_positions(PositionBook(short_today=2, short_yd=3, short_price=3000))
    book.update_trade(trade(LONG, TODAY, 2, 3000))
    assert (book.state.positions.short_today, book.state.positions.short_yd) == (0, 3)
    book.update_trade(trade(LONG, YESTERDAY, 1, 3000))
    assert (book.state.positions.short_today, book.state.positions.short_yd) == (0, 2)
    assert not book.halted


def test_daily_loss_halts_opening_allows_closing_and_resets_at_the_friday_night_session() -> None:
    book = manager()
    book.mark(3000, at(8, 9))  # Friday 2016-01-08, day session
    assert (book.state.trading_day, book.state.day_start_equity) == (date(2016, 1, 8), CAPITAL)
    book.update_trade(trade(LONG, OPEN, 10, 3000))  # commission 30
    book.mark(2800, at(8, 10))  # loss 20,000 + 30 > 2% of 1,000,000
    assert (book.halted, book.status) == (True, "HALTED")
    assert book.state.halt_reason.startswith("熔断：今日亏损超限，只允许平仓（今日盈亏 -20,030.00")
    assert not book.check(order(LONG, OPEN, 1, price=2800), at(8, 10, 1)).allowed
    assert book.check(order(SHORT, CLOSE, 5, price=2800), at(8, 10, 1)).allowed

    book.mark(2850, at(8, 21, 5))  # Friday night belongs to trading day Monday 2016-01-11
    assert book.state.trading_day == date(2016, 1, 11)
    assert (book.halted, book.state.halt_reason) == (False, "")
    assert book.state.day_start_equity == pytest.approx(CAPITAL - 20_030)  # at the previous mark, 2800
    assert book.daily_pnl == pytest.approx(5_000)
    assert book.state.positions.long_yd == 10
    assert book.check(order(LONG, OPEN, 1, price=2850), at(8, 21, 6)).allowed

    book.mark(2590, at(8, 22))  # 260 down from 2850: 26,000 > 2% of 979,970
    assert book.halted
    book.mark(2590, at(11, 9))  # Monday's day session: the same trading day, no second reset
    assert book.halted
    assert book.state.trading_day == date(2016, 1, 11)
    assert book.state.day_start_equity == pytest.approx(CAPITAL - 20_030)
    assert not book.check(order(LONG, OPEN, 1, price=2590), at(11, 9, 1)).allowed
    book.mark(2590, at(11, 21))  # Monday night: trading day Tuesday
    assert (book.halted, book.state.trading_day) == (False, date(2016, 1, 12))


def test_daily_loss_breach_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    book = manager()
    book.mark(3000, at(8, 9))
    book.update_trade(trade(LONG, OPEN, 10, 3000))
    with caplog.at_level(logging.WARNING, logger="risk_manager"):
        for minute in range(1, 4):
            book.mark(2790 - minute, at(8, 9, minute))
    assert [record.levelno for record in caplog.records].count(logging.WARNING) == 1
    assert "熔断" in caplog.records[0].getMessage()


def test_first_mark_sets_the_day_start_at_its_own_price_and_a_late_mark_never_rolls_back() -> None:
    book = manager()
    book.update_trade(trade(LONG, OPEN, 1, 3000))  # before any mark
    book.mark(3100, at(8, 9))
    assert book.state.day_start_equity == pytest.approx(CAPITAL - 3)  # at the fill's price, 3000
    book.mark(3100, at(8, 21))
    book.mark(3100, at(8, 14))  # a late mark from Friday's day session
    assert book.state.trading_day == date(2016, 1, 11)
    assert book.state.positions.long_yd == 1


# --- what survives a restart, and the account's balance ---------------------------------------------------


def halted_book() -> RiskManager:
    """Long 10 at 3000 (yesterday's 4, today's 6) on Friday 2016-01-08, halted at 2800 after a 20,030 loss."""
    book = manager(slippage=1.0)
    book.mark(3000, at(8, 9))
    book.sync_positions(PositionBook(long_yd=4, long_price=3000))
    book.update_trade(trade(LONG, OPEN, 6, 3000))
    book.mark(2790, at(8, 10, 30))
    assert book.halted
    return book


def test_snapshot_restores_positions_pnl_costs_day_start_and_the_halt_with_its_time() -> None:
    book = halted_book()
    saved = book.snapshot()
    assert saved["halted"] and saved["trading_day"] == "2016-01-08" and saved["halted_at"] == at(8, 10, 30).isoformat()
    assert saved["positions"] == {
        "long_today": 6.0,
        "long_yd": 4.0,
        "short_today": 0.0,
        "short_yd": 0.0,
        "long_price": 3000.0,
        "short_price": 0.0,
    }
    again = manager(slippage=1.0)
    again.restore(json.loads(json.dumps(saved)))  # through plain JSON, as the state file holds it
    for name in ("positions", "realised", "commission", "slippage_cost", "last_price", "trading_day"):
        assert getattr(again.state, name) == getattr(book.state, name), name
    assert (again.state.day_start_equity, again.state.halt_reason) == (CAPITAL, book.state.halt_reason)
    assert (again.halted, again.state.halted_at, again.daily_pnl) == (True, at(8, 10, 30), book.daily_pnl)
    assert not again.check(order(LONG, OPEN, 1, price=2790), at(8, 10, 31)).allowed  # the same day: still halted
    assert again.check(order(SHORT, CLOSE, 10, price=2790), at(8, 10, 31)).allowed


def test_a_restored_earlier_trading_day_resets_the_daily_pnl_and_the_halt_but_keeps_positions() -> None:
    again = manager(slippage=1.0)
    again.restore(halted_book().snapshot())
    again.mark(2795, at(8, 21, 1))  # Friday night: trading day Monday 2016-01-11
    assert again.state.trading_day == date(2016, 1, 11)
    assert (again.halted, again.status, again.state.halted_at) == (False, "OK", None)
    assert again.daily_pnl == pytest.approx(5 * 10 * 10)  # only the move since the last mark, 2790
    assert again.state.positions == PositionBook(long_yd=10, long_price=3000)
    assert again.check(order(LONG, OPEN, 1, price=2795), at(8, 21, 2)).allowed


@pytest.mark.parametrize(
    ("key", "value"),
    [("realised", "1,000"), ("trading_day", "Friday"), ("halted", "yes"), ("halted_at", "2016-01-08T10:30:00")],
)
def test_a_damaged_saved_account_is_refused_naming_what_is_wrong(key: str, value: object) -> None:
    saved = {**halted_book().snapshot(), key: value}
    with pytest.raises(DataError, match="状态中的"):
        manager().restore(saved)
    with pytest.raises(DataError, match="持仓"):
        manager().restore({**halted_book().snapshot(), "positions": {"long_today": -1}})


def test_an_account_smaller_than_capital_binds_the_margin_limits() -> None:
    book = manager()
    book.mark(3000, at(8, 9))
    assert book.check(order(LONG, OPEN, 16), at(8, 9, 1)).allowed  # 16 × 3,000 ≤ 5% of 1,000,000
    book.set_balance(200_000.0)
    assert book.equity == 200_000.0
    decision = book.check(order(LONG, OPEN, 16), at(8, 9, 1))
    assert (decision.allowed, decision.max_volume) == (False, 3)  # 3 × 3,000 ≤ 5% of 200,000 = 10,000
    assert "权益 200,000.00" in decision.reason
    book.set_balance(5_000_000.0)
    assert book.equity == CAPITAL  # a larger account is capped by the configured capital


def test_nothing_opens_until_the_account_balance_arrives_but_closing_does() -> None:
    book = RiskManager(LIMITS, RB, CAPITAL, account_required=True)
    book.mark(3000, at(8, 9))
    book.sync_positions(PositionBook(long_yd=2, long_price=3000))
    assert book.awaiting_account
    assert book.check(order(LONG, OPEN, 1), at(8, 9, 1)) == RiskDecision(False, AWAITING_ACCOUNT, 0.0)
    assert book.check(order(SHORT, CLOSE, 2), at(8, 9, 1)).allowed
    book.set_balance(900_000.0)
    assert not book.awaiting_account and book.check(order(LONG, OPEN, 1), at(8, 9, 1)).allowed
    with pytest.raises(DataError):
        book.set_balance(math.nan)


def test_the_daily_loss_limit_is_a_fraction_of_the_day_start_balance_when_that_is_smaller() -> None:
    book = manager()
    book.set_balance(100_000.0)  # the account holds a tenth of the configured capital
    book.mark(3000, at(8, 9))
    assert (book.state.day_start_balance, book.loss_limit) == (100_000.0, -2_000.0)
    book.update_trade(trade(LONG, OPEN, 1, 3000))
    book.mark(2850, at(8, 9, 5))  # 1,500 + 3 lost: inside 2% of 100,000
    assert not book.halted
    book.mark(2790, at(8, 9, 6))  # 2,100 + 3 lost
    assert book.halted and "日初账户权益 100,000.00" in book.state.halt_reason
    late = manager()
    late.mark(3000, at(8, 9))
    late.set_balance(50_000.0)  # the first balance of a day that began without one
    assert late.loss_limit == -1_000.0


def test_position_differences_name_each_side_and_bucket_and_the_split_can_come_from_the_broker() -> None:
    ours = PositionBook(long_today=2, long_yd=1, short_yd=1, long_price=3000, short_price=3100)
    broker = PositionBook(long_yd=3, short_yd=1, long_price=2990, short_price=3090)
    assert position_differences(ours, ours) == []
    assert position_differences(ours, broker) == ["多头今仓：策略 2，券商 0", "多头昨仓：策略 1，券商 3"]
    assert same_holdings(ours, broker)
    assert with_broker_split(ours, broker) == PositionBook(long_yd=3, short_yd=1, long_price=3000, short_price=3100)
    assert with_broker_split(PositionBook(long_yd=3), broker).long_price == 2990  # ours had no price
    assert not same_holdings(ours, PositionBook(long_yd=2, short_yd=1))


def test_price_band_is_used_then_forgotten_at_the_next_trading_day() -> None:
    book = manager()
    book.mark(3000, at(8, 9))
    book.set_price_band(3100, 2900)
    assert book.check(order(LONG, OPEN, 1, price=3101), at(8, 9, 1)).reason.startswith("价格 3101 超出涨跌停板")
    book.set_price_band(0, math.nan)
    assert book.check(order(LONG, OPEN, 1, price=3101), at(8, 9, 2)).allowed
    book.set_price_band(3100, 2900)
    book.mark(3000, at(8, 21))
    assert math.isnan(book.state.limit_up) and math.isnan(book.state.limit_down)


def test_recorded_orders_feed_the_duplicate_limit() -> None:
    book = manager()
    book.mark(3000, at(8, 9))
    request = order(LONG, OPEN, 1)
    assert book.check(request, at(8, 9, 0, 1)).allowed
    book.record_order(request, at(8, 9, 0, 1))
    assert book.check(request, at(8, 9, 0, 2)).reason.startswith("重复委托")


def test_closing_more_than_held_closes_what_is_held_and_halts(caplog: pytest.LogCaptureFixture) -> None:
    book = manager()
    book.mark(3000, at(8, 9))
    book.update_trade(trade(LONG, OPEN, 2, 3000))
    with caplog.at_level(logging.ERROR, logger="risk_manager"):
        book.update_trade(trade(SHORT, CLOSE, 5, 3010))
    assert book.state.positions == PositionBook()
    assert book.state.realised == 10 * 2 * 10
    assert book.state.commission == pytest.approx((3000 * 2 + 3010 * 5) * 10 * 0.0001)  # the broker charged 5 lots
    assert book.halted
    assert "持仓与成交不一致" in book.state.halt_reason
    assert book.state.halt_reason.endswith("/ position book out of sync")
    assert any(record.levelno == logging.ERROR for record in caplog.records)
    assert not book.check(order(LONG, OPEN, 1, price=3010), at(8, 9, 1)).allowed


def test_out_of_sync_halt_survives_the_next_trading_day_until_positions_are_synchronised() -> None:
    book = manager()
    book.mark(3000, at(8, 9))
    book.update_trade(trade(LONG, CLOSE, 1, 3000))
    book.mark(3000, at(8, 21))
    assert book.halted
    book.sync_positions(PositionBook(short_yd=1, short_price=3000))
    assert (book.halted, book.net_position) == (False, -1)
    assert book.check(order(LONG, OPEN, 1), at(8, 21, 1)).allowed


def test_trade_without_offset_halts_and_invalid_trade_numbers_are_rejected() -> None:
    book = manager()
    book.update_trade(trade(LONG, Offset.NONE, 1, 3000))
    assert book.halted and book.state.positions == PositionBook()
    with pytest.raises(DataError, match="成交"):
        book.update_trade(trade(LONG, OPEN, 0, 3000))
    with pytest.raises(DataError, match="行情价格"):
        book.mark(math.nan, FRIDAY)


# --- properties -----------------------------------------------------------------------------------------

marks_and_orders = st.lists(
    st.one_of(
        st.tuples(st.just("mark"), st.integers(0, 3 * 3600), st.integers(-60, 60)),
        st.tuples(
            st.sampled_from(
                [(LONG, OPEN), (SHORT, OPEN)] * 3 + [(LONG, CLOSE), (SHORT, CLOSE), (LONG, TODAY), (SHORT, YESTERDAY)]
            ),
            st.integers(0, 600),
            st.integers(-160, 160),
            st.integers(1, 20),
        ),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(steps=marks_and_orders, loss_rate=st.sampled_from([0.005, 0.02]))
def test_every_allowed_order_filled_in_full_stays_within_margin_limits(steps: list[tuple], loss_rate: float) -> None:
    limits = replace(LIMITS, max_daily_loss_rate=loss_rate)
    book = RiskManager(limits, RB, CAPITAL)
    now, price = FRIDAY, 3000
    book.mark(price, now)
    for step in steps:
        if step[0] == "mark":
            now += timedelta(seconds=step[1])
            price = max(price + step[2], 100)
            book.mark(price, now)
            continue
        (direction, offset), seconds, ticks, volume = step
        now += timedelta(seconds=seconds)
        request = order(direction, offset, volume, price + ticks)
        equity, halted, book_before = book.equity, book.halted, replace(book.state.positions)
        decision = book.check(request, now)
        if decision.allowed:
            assert offset != OPEN or not halted
            book.record_order(request, now)
            book.update_trade(trade(direction, offset, volume, request.price))
            positions = book.state.positions
            if offset == OPEN:
                margin = request.price * RB.size * RB.margin_rate
                assert volume * margin <= limits.max_single_trade_ratio * equity * (1 + 1e-12)
                assert (positions.long + positions.short) * margin <= limits.max_position_ratio * equity * (1 + 1e-12)
            else:
                assert positions.long + positions.short == book_before.long + book_before.short - volume
            assert "持仓与成交不一致" not in book.state.halt_reason
        elif decision.max_volume > 0:  # the volume offered instead passes the same check
            assert decision.max_volume < volume
            assert book.check(replace(request, volume=decision.max_volume), now).allowed


fills = st.lists(
    st.tuples(
        st.sampled_from(
            [
                (LONG, OPEN),
                (SHORT, OPEN),
                (SHORT, CLOSE),
                (LONG, CLOSE),
                (SHORT, TODAY),
                (LONG, YESTERDAY),
                (SHORT, YESTERDAY),
                (LONG, TODAY),
                ("mark", None),
            ]
        ),
        st.integers(1, 12),
        st.integers(2000, 4000),
    ),
    max_size=50,
)


@settings(max_examples=200, deadline=None)
@given(steps=fills)
def test_realised_pnl_back_to_flat_equals_sell_minus_buy_turnover(steps: list[tuple]) -> None:
    book = RiskManager(LIMITS, RB, CAPITAL, slippage=1.0)
    now, bought, sold, traded = FRIDAY, 0.0, 0.0, 0.0

    def fill(direction: Direction, offset: Offset, volume: float, price: float) -> None:
        nonlocal bought, sold, traded
        book.update_trade(trade(direction, offset, volume, price))
        bought += price * volume if direction == LONG else 0.0
        sold += price * volume if direction == SHORT else 0.0
        traded += volume

    for (direction, offset), volume, price in steps:
        if direction == "mark":
            now += timedelta(hours=7)  # crosses day and night sessions, so today's lots become yesterday's
            book.mark(price, now)
            continue
        if offset != OPEN:
            volume = min(volume, book.state.positions.closable(direction, offset))
        if volume:
            fill(direction, offset, volume, price)
    positions = book.state.positions
    if positions.long:
        fill(SHORT, CLOSE, positions.long, 3000)
    if positions.short:
        fill(LONG, CLOSE, positions.short, 3000)
    assert book.state.positions == PositionBook()
    assert book.state.realised == pytest.approx((sold - bought) * RB.size, abs=1e-6)
    assert book.state.commission == pytest.approx((sold + bought) * RB.size * RB.fees.open_rate)
    assert book.state.slippage_cost == traded * RB.size
    assert "持仓与成交不一致" not in book.state.halt_reason


def test_a_fill_on_the_night_sessions_first_bar_is_todays_and_rolls_the_day_before_it() -> None:
    book = manager()
    book.mark(3000, at(5, 14, 0))  # Tuesday's day session
    book.update_trade(replace(trade(SHORT, OPEN, 1, 3000), datetime=at(5, 14, 59)))
    # the order decided on 14:59 fills on the 21:00 bar, before the strategy marks that bar: Wednesday's trading day
    book.update_trade(replace(trade(SHORT, OPEN, 2, 3010), datetime=at(5, 21, 0)))
    assert (book.state.positions.short_yd, book.state.positions.short_today) == (1, 2)
    book.mark(3005, at(5, 21, 0))
    book.update_trade(replace(trade(LONG, TODAY, 2, 3000), datetime=at(5, 22, 30)))
    assert (book.state.positions.short_yd, book.state.positions.short_today) == (1, 0)
    assert not book.halted


# --- fees as the exchange charges them ----------------------------------------------------------------------------

LOT_FEES = Fees(open_per_lot=3.0, close_per_lot=2.0, close_today_per_lot=7.5)


def test_the_book_charges_per_lot_fees_and_close_today_for_lots_opened_the_same_trading_day() -> None:
    book = RiskManager(LIMITS, replace(RB, fees=LOT_FEES), CAPITAL)
    book.mark(3000, at(5, 14, 0))
    book.update_trade(replace(trade(LONG, OPEN, 2, 3000), datetime=at(5, 14, 0)))  # Tuesday: 2 × 3
    book.update_trade(replace(trade(LONG, OPEN, 1, 3010), datetime=at(5, 21, 0)))  # Wednesday's night: 1 × 3
    assert book.state.commission == 9.0
    # Wednesday: CLOSE takes yesterday's 2 lots first (2 × 2), then the lot opened today (1 × 7.5)
    book.update_trade(replace(trade(SHORT, CLOSE, 3, 3020), datetime=at(6, 9, 0)))
    assert book.state.commission == 9.0 + 4.0 + 7.5
    assert book.state.positions == PositionBook()


def test_trade_fees_of_a_run_split_each_close_between_yesterdays_and_todays_lots() -> None:
    index = Fees(open_rate=0.000023, close_rate=0.000023, close_today_rate=0.00023)
    fills = [
        replace(trade(SHORT, OPEN, 2, 4000), datetime=at(4, 10, 0)),  # Monday
        replace(trade(SHORT, OPEN, 1, 4010), datetime=at(5, 10, 0)),  # Tuesday
        replace(trade(LONG, CLOSE, 2, 3990), datetime=at(5, 14, 0)),  # Monday's 2 lots: close
        replace(trade(LONG, CLOSE, 1, 3980), datetime=at(5, 14, 30)),  # Tuesday's lot: close-today
        replace(trade(SHORT, OPEN, 1, 3970), datetime=at(5, 14, 45)),
        replace(trade(LONG, TODAY, 1, 3960), datetime=at(5, 14, 50)),  # CLOSETODAY: close-today whatever the book
    ]
    size = 300
    charged = trade_fees(fills, index, size)
    assert charged == pytest.approx(
        [
            2 * size * 4000 * 0.000023,
            1 * size * 4010 * 0.000023,
            2 * size * 3990 * 0.000023,
            1 * size * 3980 * 0.00023,
            1 * size * 3970 * 0.000023,
            1 * size * 3960 * 0.00023,
        ]
    )
    one_rate = trade_fees(fills, Fees.of_rate(0.0001), size)  # a one-rate product: vnpy's turnover × rate, exactly
    assert one_rate == [fill.volume * size * fill.price * 0.0001 for fill in fills]


def test_a_cffex_close_takes_todays_lots_first_in_the_fees_and_the_book() -> None:
    index = Fees(open_rate=0.000023, close_rate=0.000023, close_today_rate=0.00023)
    fills = [
        replace(trade(SHORT, OPEN, 2, 4000), datetime=at(4, 10, 0), exchange=Exchange.CFFEX),  # Monday
        replace(trade(SHORT, OPEN, 1, 4010), datetime=at(5, 10, 0), exchange=Exchange.CFFEX),  # Tuesday
        replace(trade(LONG, CLOSE, 2, 3990), datetime=at(5, 14, 0), exchange=Exchange.CFFEX),  # today's 1, then 1
    ]
    charged = trade_fees(fills, index, 300)
    assert charged[2] == pytest.approx(300 * 3990 * (0.00023 + 0.000023))
    book = RiskManager(LIMITS, replace(RB, fees=index, size=300), CAPITAL)
    book.mark(4000, at(4, 10, 0))
    for fill in fills:
        book.update_trade(fill)
    assert (book.state.positions.short_today, book.state.positions.short_yd) == (0, 1)
    assert book.state.commission == pytest.approx(sum(charged))
