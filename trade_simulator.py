"""The strategy's trading rules as pure functions, and a fast simulator of them, trade for trade equal to vnpy's engine.

`PredictiveTradingStrategy` calls the rule functions below bar by bar; `simulate` runs the same rules over whole bar
arrays with vnpy's `BacktestingEngine` fill model and the strategy's `RiskManager` decisions folded in, so training can
choose a threshold by simulating the strategy on the validation part instead of running the engine per setting.

Why numba: the strategy is a state machine (position, pending order, trailing stop, blocked side, risk book, halt)
whose every step depends on the previous one, so NumPy cannot vectorise it. The same loop in plain Python runs about
20× faster than the engine, compiled by numba about 1,700× (bench/bench_simulator.py, docs/performance.md): a
threshold search of 50 settings over 100k bars takes a tenth of a second. The kernel stays a plain Python function
(tests run it as is, `jit=False`) and is compiled on first use only (then loaded from numba's disk cache), so
importing this module stays cheap and loads neither numba nor vnpy.
"""

from __future__ import annotations

import functools
import math
import types
from collections.abc import Callable
from dataclasses import dataclass, fields
from decimal import Decimal
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from config import (
    DEFAULT_CAPITAL,
    ConfigError,
    ContractSpec,
    DataError,
    Fees,
    RiskSettings,
    close_fee_amount,
    fee_amount,
)

if TYPE_CHECKING:
    import pandas as pd

LONG: int = 1  # directions in the rule functions and the trade arrays (vnpy's Direction.LONG / SHORT)
SHORT: int = -1
OPEN: int = 1  # offsets in the trade arrays (vnpy's Offset.OPEN / CLOSE)
CLOSE: int = 0
MIN_BAR_SECONDS: int = 60  # the order-flow limits cannot bind on bars at least this far apart (see `risk_check`)


# --- the rules, shared with PredictiveTradingStrategy ---------------------------------------------------------


def target_position(prediction: float, threshold: float, position: float, size: float) -> float:
    """Long above +threshold, short below -threshold, otherwise keep the position."""
    if math.isnan(prediction):
        return position
    if prediction > threshold:
        return size
    if prediction < -threshold:
        return -size
    return position


def allowed_target(
    prediction: float, threshold: float, position: float, size: float, blocked: int
) -> tuple[float, int]:
    """The target and the side still blocked (0: none): after a trailing stop, no re-entry that way until the
    signal stops pointing that way."""
    target = target_position(prediction, threshold, position, size)
    if blocked != 0 and not math.isnan(prediction):
        side = int(prediction > threshold) - int(prediction < -threshold)
        if side != blocked:
            blocked = 0
    if blocked == LONG and target > 0 >= position:
        return position, blocked
    if blocked == SHORT and target < 0 <= position:
        return position, blocked
    return target, blocked


def trailing_stop(
    position: float, best: float, high: float, low: float, close: float, percent: float
) -> tuple[float, float, bool]:
    """(best price since entry, stop price, hit): the close retracing `percent` from the best price hits the stop;
    the stop price is 0 when flat or switched off (`percent` ≤ 0); a best price of 0 starts from this bar."""
    if position == 0 or percent <= 0:
        return best, 0.0, False
    fraction = percent / 100
    if position > 0:
        best = max(best if best != 0 else high, high)
        stop = best * (1 - fraction)
        return best, stop, close <= stop
    best = min(best if best != 0 else low, low)
    stop = best * (1 + fraction)
    return best, stop, close >= stop


def next_order(position: float, target: float) -> tuple[int, int, float]:
    """One step toward the target as (direction, offset, volume): an opposite or larger position is closed first and
    the new one opened on a later bar; volume 0 when the position is already the target."""
    if target == position:
        return 0, OPEN, 0.0
    if position != 0 and (target == 0 or (target > 0) != (position > 0) or abs(target) < abs(position)):
        whole = target == 0 or (target > 0) != (position > 0)
        volume = abs(position) if whole else abs(position) - abs(target)
        return (SHORT if position > 0 else LONG), CLOSE, volume
    return (LONG if target > 0 else SHORT), OPEN, abs(target) - abs(position)


# --- the risk manager's decisions, as they apply to the strategy's orders ------------------------------------


class Rules(NamedTuple):
    """SimulationSettings as the kernel's numbers (numba takes a NamedTuple of floats as it is)."""

    threshold: float
    fixed_size: float
    trailing_percent: float
    slippage_ticks: float
    pricetick: float
    tick_units: float  # pricetick = tick_units / tick_scale, with whole units: the decimal tick exactly
    tick_scale: float
    size: float
    open_rate: float  # the exchange's fees (config.Fees)
    open_per_lot: float
    close_rate: float
    close_per_lot: float
    close_today_rate: float
    close_today_per_lot: float
    slippage_cost: float
    margin_rate: float
    capital: float
    max_daily_loss_rate: float
    max_position_ratio: float
    max_single_trade_ratio: float
    max_price_deviation: float


def equity(
    capital: float, realised: float, costs: float, position: float, average: float, size: float, mark: float
) -> float:
    """AccountState.equity for a book that holds one side: capital + realised − costs + open P&L at `mark`."""
    if position > 0:
        unrealised = (mark - average) * position * size
    elif position < 0:
        unrealised = (average - mark) * -position * size
    else:
        unrealised = 0.0
    return capital + realised - costs + unrealised


def loss_breached(current: float, day_start: float, max_daily_loss_rate: float) -> bool:
    """risk_manager.daily_loss_reason as a flag: the day's loss is past the limit (never before the day's start)."""
    if not math.isfinite(day_start):
        return False
    return current - day_start < -max_daily_loss_rate * day_start


def fits(volume: float, unit: float, held: float, single_cap: float, position_cap: float) -> bool:
    """An opening volume's own margin and the whole position's margin after it are within their caps."""
    return volume * unit <= single_cap and (held + volume) * unit <= position_cap


def largest_volume(guess: float, unit: float, held: float, single_cap: float, position_cap: float) -> float:
    """risk_manager._largest_volume: the largest whole volume that fits, searched from an estimate."""
    volume = max(math.floor(guess), 0) if math.isfinite(guess) else 0
    while volume > 0 and not fits(volume, unit, held, single_cap, position_cap):
        volume -= 1
    while fits(volume + 1, unit, held, single_cap, position_cap):
        volume += 1
    return float(volume)


def risk_check(
    direction: int,
    offset: int,
    volume: float,
    price: float,
    last_price: float,
    position: float,
    halted: bool,
    marked_equity: float,
    rules: Rules,
) -> tuple[bool, float]:
    """risk_manager.check_order for the strategy's orders in a bar backtest: (allowed, largest volume that passes).

    Rules that cannot bind there are left out: the price is on the tick grid (rounded just before); the price band
    is unknown (it comes from ticks only); the strategy sends at most one order per bar and bars are at least
    MIN_BAR_SECONDS apart, so the rate window (now − 60 s, now] holds no earlier order (limit ≥ 1) and the duplicate
    window (`duplicate_order_seconds`, the default 5 s: the strategy does not set it) none either; the daily loss
    test of an opening order repeats, at the same price, the test `mark` has just made (a breach halts, and halted
    means target 0). A close is always for the whole held side, which Offset.CLOSE takes from both the today and
    yesterday buckets, so the buckets are not kept (the kernel counts today's lots for the close-today fee only).
    """
    if not (math.isfinite(volume) and volume > 0 and math.isfinite(price) and price > 0):
        return False, 0.0
    if math.isfinite(last_price) and abs(price - last_price) / last_price > rules.max_price_deviation:
        return False, 0.0
    held = abs(position)
    if offset == CLOSE:  # a SHORT order closes longs, a LONG order shorts
        closable = held if (position > 0 and direction == SHORT) or (position < 0 and direction == LONG) else 0.0
        return volume <= closable, (volume if volume <= closable else closable)
    if halted:
        return False, 0.0
    unit = price * rules.size * rules.margin_rate
    single_cap = rules.max_single_trade_ratio * marked_equity
    position_cap = rules.max_position_ratio * marked_equity
    if fits(volume, unit, held, single_cap, position_cap):
        return True, volume
    guess = min(single_cap / unit, position_cap / unit - held)
    return False, largest_volume(guess, unit, held, single_cap, position_cap)


def filled_price(direction: int, price: float, open_: float, high: float, low: float) -> float:
    """vnpy's bar fill of a limit order sent on the previous bar: its price or the better open; NaN when not crossed."""
    if direction == LONG:
        return min(price, open_) if price >= low and low > 0 else math.nan
    return max(price, open_) if price <= high and high > 0 else math.nan


def order_price(direction: int, close: float, slippage_ticks: float, tick: float, units: float, scale: float) -> float:
    """The close with `slippage_ticks` of allowance toward the other side, on the tick grid: vnpy's round_to, exact
    because tick = units / scale with whole units (a float product n × tick would miss the decimal by one ulp)."""
    offset = slippage_ticks * tick
    raw = close + offset if direction == LONG else close - offset
    return float(np.rint(raw / tick)) * units / scale


# --- the simulator --------------------------------------------------------------------------------------------


def fill_fee(
    opening: bool, price: float, volume: float, held: float, today_lots: float, rules: Rules
) -> tuple[float, float]:
    """risk_manager.fill_fee for the strategy's fills: (fee, lots opened today afterwards). A close takes yesterday's
    lots first; the `today_lots` of the `held` side opened on this trading day pay the close-today fee."""
    if opening:
        return fee_amount(price, volume, rules.size, rules.open_rate, rules.open_per_lot), today_lots + volume
    today = max(min(volume, held) - (held - today_lots), 0.0)
    fee = close_fee_amount(
        price,
        volume,
        rules.size,
        today,
        rules.close_rate,
        rules.close_per_lot,
        rules.close_today_rate,
        rules.close_today_per_lot,
    )
    return fee, today_lots - today


def _kernel(
    open_: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    days: np.ndarray,
    predictions: np.ndarray,
    flat: np.ndarray,
    rules: Rules,
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The engine's bar loop with the strategy's on_trade / on_bar and its risk book: the trades as arrays (and each
    one's fee) and their count. Plain Python; `simulate` runs it compiled."""
    size, capital, max_daily_loss_rate = rules.size, rules.capital, rules.max_daily_loss_rate
    count = len(close)
    bar_of = np.empty(count, dtype=np.int64)
    direction_of = np.empty(count, dtype=np.int64)
    offset_of = np.empty(count, dtype=np.int64)
    price_of = np.empty(count, dtype=np.float64)
    volume_of = np.empty(count, dtype=np.float64)
    fee_of = np.empty(count, dtype=np.float64)
    trades = 0
    position = 0.0  # the strategy's pos and the risk book's one side (long > 0)
    average = 0.0  # the book's average open price
    realised = commission = slippage = 0.0  # the book's money, as RiskManager.update_trade books it
    today_lots = 0.0  # of the held side, opened on `lots_day` (the book's today bucket)
    lots_day = -1
    last_price = math.nan
    day = 0
    started = False  # whether the book has opened a trading day
    day_start = math.nan
    halted = False
    best = 0.0
    blocked = 0
    pending = 0  # direction of the order sent on the previous bar, 0 for none
    pending_offset = OPEN
    pending_price = pending_volume = 0.0
    for t in range(count):
        # BacktestingEngine.cross_limit_order: the previous bar's order fills at this bar's open or its price
        if pending != 0:
            price = filled_price(pending, pending_price, open_[t], high[t], low[t])
            if not math.isnan(price):
                volume = pending_volume
                bar_of[trades], direction_of[trades], offset_of[trades] = t, pending, pending_offset
                price_of[trades], volume_of[trades] = price, volume
                # RiskManager.update_trade: a fill on a new trading day's first bar opens that day first
                if started and days[t] > day:
                    day, halted = days[t], False
                    day_start = equity(capital, realised, commission + slippage, position, average, size, last_price)
                if days[t] != lots_day:  # the book's roll: today's lots become yesterday's
                    today_lots, lots_day = 0.0, days[t]
                held = abs(position)
                fee, today_lots = fill_fee(pending_offset == OPEN, price, volume, held, today_lots, rules)
                fee_of[trades] = fee
                trades += 1
                position += pending * volume
                commission += fee
                slippage += rules.slippage_cost * volume * size
                if pending_offset == OPEN:
                    average = (average * held + price * volume) / (held + volume)
                else:
                    closed = min(volume, held)
                    sign = 1.0 if pending == SHORT else -1.0  # selling closes longs: a gain above the average
                    realised += sign * (price - average) * closed * size
                    if held - closed == 0:
                        average = 0.0
                if not halted:
                    current = equity(capital, realised, commission + slippage, position, average, size, last_price)
                    halted = loss_breached(current, day_start, max_daily_loss_rate)
                # PredictiveTradingStrategy.on_trade
                if position == 0:
                    best = 0.0
                elif pending_offset == OPEN:
                    best = price
            pending = 0  # an order left unfilled is cancelled by the strategy's on_bar below
        # PredictiveTradingStrategy.on_bar: mark the book, trailing stop, target, one order
        if not started or days[t] > day:
            previous = last_price if math.isfinite(last_price) else close[t]
            day, started, halted = days[t], True, False
            day_start = equity(capital, realised, commission + slippage, position, average, size, previous)
        last_price = close[t]
        marked = equity(capital, realised, commission + slippage, position, average, size, last_price)
        if not halted:
            halted = loss_breached(marked, day_start, max_daily_loss_rate)
        best, _, stopped = trailing_stop(position, best, high[t], low[t], close[t], rules.trailing_percent)
        if stopped:
            blocked = LONG if position > 0 else SHORT
        if halted or stopped or flat[t]:
            target = 0.0
        else:
            target, blocked = allowed_target(predictions[t], rules.threshold, position, rules.fixed_size, blocked)
        direction, offset, volume = next_order(position, target)
        if volume == 0:
            continue
        price = order_price(
            direction, close[t], rules.slippage_ticks, rules.pricetick, rules.tick_units, rules.tick_scale
        )
        allowed, most = risk_check(direction, offset, volume, price, last_price, position, halted, marked, rules)
        if not allowed and offset == OPEN and most >= 1:  # the strategy shrinks an opening order to what passes
            volume = float(math.floor(most))
            allowed, most = risk_check(direction, offset, volume, price, last_price, position, halted, marked, rules)
        if allowed:
            pending, pending_offset, pending_price, pending_volume = direction, offset, price, volume
    return trades, bar_of, direction_of, offset_of, price_of, volume_of, fee_of


KERNEL_HELPERS: tuple[Callable[..., Any], ...] = (
    fee_amount,
    close_fee_amount,
    fill_fee,
    target_position,
    allowed_target,
    trailing_stop,
    next_order,
    equity,
    loss_breached,
    fits,
    largest_volume,
    risk_check,
    filled_price,
    order_price,
)


@functools.cache
def compiled_kernel() -> Callable[..., Any]:
    """`_kernel` compiled by numba on first use (cached on disk); the rule functions stay plain Python here.

    numba looks a called function up in the caller's globals when compiling, so the kernel and its helpers are
    compiled as copies whose globals name the compiled helpers.
    """
    import numba

    scope: dict[str, Any] = dict(globals())
    jit = numba.njit(cache=True, nogil=True)
    for function in (*KERNEL_HELPERS, _kernel):
        copy = types.FunctionType(function.__code__, scope, function.__name__, function.__defaults__)
        copy.__qualname__ = function.__qualname__
        scope[function.__name__] = jit(copy)
    return scope["_kernel"]  # type: ignore[no-any-return]


# --- inputs and outputs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimulationSettings:
    """One setting of the strategy and the backtest's costs; the names follow PredictiveTradingStrategy's parameters."""

    threshold: float  # the strategy's prediction_threshold (a strategy given 0 uses its bundle's threshold instead)
    fixed_size: int = 1
    trailing_percent: float = 0.8  # 0 switches the trailing stop off
    slippage_ticks: int = 1  # price allowance of each order, in ticks
    pricetick: float = 1.0
    size: float = 10.0  # contract multiplier
    fees: Fees = Fees.of_rate(0.0001)  # the strategy's `fees` parameter, as text
    slippage_cost: float = 1.0  # the backtest's slippage charge per unit traded, in price units (vnpy's `slippage`)
    margin_rate: float = 0.1
    capital: float = DEFAULT_CAPITAL
    max_daily_loss_rate: float = RiskSettings.max_daily_loss_rate
    max_position_ratio: float = RiskSettings.max_position_ratio
    max_single_trade_ratio: float = RiskSettings.max_single_trade_ratio

    def __post_init__(self) -> None:
        if not (math.isfinite(self.threshold) and self.threshold >= 0):
            raise ConfigError(f"阈值必须 ≥ 0，收到 {self.threshold} / threshold must be ≥ 0")
        if self.fixed_size < 1 or self.slippage_ticks < 0:
            raise ConfigError(
                f"fixed_size 必须 ≥ 1、slippage_ticks ≥ 0，收到 {self.fixed_size}, {self.slippage_ticks} / out of range"
            )
        if not (self.capital > 0 and self.slippage_cost >= 0):
            raise ConfigError(f"资金必须 > 0、滑点不能为负（{self.capital}, {self.slippage_cost}）/ out of range")
        ContractSpec(size=self.size, pricetick=self.pricetick, margin_rate=self.margin_rate, fees=self.fees)  # checks
        self.risk()  # checks the limits

    @classmethod
    def for_contract(cls, spec: ContractSpec, threshold: float, **rules: Any) -> SimulationSettings:
        """A setting with the contract's facts as costs, as BacktestingModule.costs gives them to the engine."""
        facts = {
            "pricetick": spec.pricetick,
            "size": spec.size,
            "fees": spec.fees,
            "slippage_cost": spec.slippage_ticks * spec.pricetick,
            "margin_rate": spec.margin_rate,
        }
        return cls(threshold=threshold, **{**facts, **rules})

    def engine_costs(self) -> dict[str, Any]:
        """The costs backtesting_module.set_engine_parameters gives vnpy's engine for this setting (the reverse of
        `for_contract`)."""
        return {
            "fees": self.fees,
            "slippage": self.slippage_cost,
            "size": self.size,
            "pricetick": self.pricetick,
            "capital": self.capital,
        }

    def risk(self) -> RiskSettings:
        """The limits the strategy's risk manager gets (the order-flow limits keep their defaults, as there)."""
        return RiskSettings(
            max_daily_loss_rate=self.max_daily_loss_rate,
            max_position_ratio=self.max_position_ratio,
            max_single_trade_ratio=self.max_single_trade_ratio,
        )

    def strategy_setting(self) -> dict[str, Any]:
        """The PredictiveTradingStrategy parameters that make vnpy's engine run this setting."""
        names = {f.name for f in fields(self)} - {"threshold", "pricetick", "size", "fees"}
        chosen = {name: getattr(self, name) for name in sorted(names)}
        return {"prediction_threshold": self.threshold, "fees": self.fees.text, **chosen}

    def rules(self) -> Rules:
        """The kernel's numbers."""
        tick = Decimal(str(self.pricetick))
        scale = 10 ** max(0, -int(tick.as_tuple().exponent))
        return Rules(
            threshold=float(self.threshold),
            fixed_size=float(self.fixed_size),
            trailing_percent=float(self.trailing_percent),
            slippage_ticks=float(self.slippage_ticks),
            pricetick=float(self.pricetick),
            tick_units=float(tick * scale),
            tick_scale=float(scale),
            size=float(self.size),
            open_rate=float(self.fees.open_rate),
            open_per_lot=float(self.fees.open_per_lot),
            close_rate=float(self.fees.close_rate),
            close_per_lot=float(self.fees.close_per_lot),
            close_today_rate=float(self.fees.close_today_rate),
            close_today_per_lot=float(self.fees.close_today_per_lot),
            slippage_cost=float(self.slippage_cost),
            margin_rate=float(self.margin_rate),
            capital=float(self.capital),
            max_daily_loss_rate=float(self.max_daily_loss_rate),
            max_position_ratio=float(self.max_position_ratio),
            max_single_trade_ratio=float(self.max_single_trade_ratio),
            max_price_deviation=float(self.risk().max_price_deviation),
        )


@dataclass(frozen=True)
class SimulationBars:
    """The traded bars as arrays (warm-up bars left out: the strategy never trades them) and each bar's trading day."""

    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    times: np.ndarray  # bar start, datetime64
    days: np.ndarray  # trading day of each bar, the one RiskManager uses (trading_calendar.causal_trading_days)

    def __post_init__(self) -> None:
        count = len(self.close)
        if any(len(array) != count for array in (self.open, self.high, self.low, self.times, self.days)):
            raise DataError("K线各列长度不一致 / bar arrays differ in length")
        spacing = np.diff(self.times.astype("datetime64[s]").astype(np.int64))
        if (spacing < MIN_BAR_SECONDS).any():
            raise DataError(f"K线必须按时间递增且间隔至少 {MIN_BAR_SECONDS} 秒 / bars must be at least a minute apart")
        if (np.diff(self.days.astype(np.int64)) < 0).any():
            raise DataError("交易日不能倒退 / trading days must not go back")

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, days: np.ndarray) -> SimulationBars:
        """Bars from a frame indexed by bar start with open/high/low/close columns, and their trading days."""

        def column(name: str) -> np.ndarray:
            return np.ascontiguousarray(frame[name].to_numpy(dtype=np.float64))

        times = np.asarray(frame.index.tz_convert(None).to_numpy(dtype="datetime64[us]"))
        return cls(column("open"), column("high"), column("low"), column("close"), times, np.asarray(days))

    def __len__(self) -> int:
        return len(self.close)


@dataclass(frozen=True)
class Simulation:
    """What the engine would report: the trades, their costs and net P&L, and the figures per trading day."""

    bar: np.ndarray  # index of each trade's bar
    direction: np.ndarray  # LONG or SHORT
    offset: np.ndarray  # OPEN or CLOSE
    price: np.ndarray
    volume: np.ndarray
    commission: float
    slippage: float
    net_pnl: float  # as vnpy's daily results sum it: every trade marked to the last close, less costs
    trading_days: int

    @property
    def trade_count(self) -> int:
        return len(self.bar)

    @property
    def long_entries(self) -> int:
        return int(((self.offset == OPEN) & (self.direction == LONG)).sum())

    @property
    def short_entries(self) -> int:
        return int(((self.offset == OPEN) & (self.direction == SHORT)).sum())

    @property
    def trades_per_day(self) -> float:
        """Fills (openings and closings, as vnpy counts trades) per trading day."""
        return self.trade_count / self.trading_days if self.trading_days else 0.0


def simulate(
    bars: SimulationBars,
    predictions: np.ndarray,
    settings: SimulationSettings,
    flat: np.ndarray | None = None,
    jit: bool = True,
) -> Simulation:
    """Run the strategy's rules over the bars with each bar's prediction (NaN: none, as batch_predictions gives);
    `flat` marks bars at which the target is 0 whatever the prediction (as a halt is: the blocked side stays)."""
    count = len(bars)
    if len(predictions) != count or (flat is not None and len(flat) != count):
        raise DataError("预测或平仓标记与K线数量不一致 / predictions or flat flags differ from the bars in length")
    kernel = compiled_kernel() if jit else _kernel
    flags = np.zeros(count, dtype=np.bool_) if flat is None else np.ascontiguousarray(flat, dtype=np.bool_)
    trades, bar, direction, offset, price, volume, fee = kernel(
        bars.open,
        bars.high,
        bars.low,
        bars.close,
        np.ascontiguousarray(bars.days.astype(np.int64)),
        np.ascontiguousarray(predictions, dtype=np.float64),
        flags,
        settings.rules(),
    )
    bar, direction, offset = bar[:trades], direction[:trades], offset[:trades]
    price, volume = price[:trades], volume[:trades]
    commission = float(fee[:trades].sum())
    slippage = float((volume * settings.size * settings.slippage_cost).sum())
    gross = float((direction * volume * (bars.close[-1] - price) * settings.size).sum()) if trades else 0.0
    return Simulation(
        bar=bar,
        direction=direction,
        offset=offset,
        price=price,
        volume=volume,
        commission=commission,
        slippage=slippage,
        net_pnl=gross - commission - slippage,
        trading_days=len(np.unique(bars.days)),
    )


# --- the decision: a threshold chosen by simulating the strategy on the validation part -----------------------

THRESHOLD_QUANTILES: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998)
MIN_DECISION_TRADES: int = 20  # fewer fills than this (ten round trips) is luck, not an edge
EDGE_POSITIVE: str = "positive"
EDGE_NONE: str = "none"


@dataclass(frozen=True)
class ThresholdChoice:
    """The threshold whose simulated net P&L on the validation part was the largest, and what it would have done."""

    threshold: float
    edge: str  # EDGE_POSITIVE, or EDGE_NONE when no candidate made money after costs: the strategy does not open
    net_pnl: float
    trades: int
    trades_per_day: float
    trading_days: int
    long_entries: int
    short_entries: int
    commission: float
    slippage: float
    round_trip_cost: float  # the contract's round trip as a return at the part's mean close
    grid: tuple[tuple[float, float, int], ...]  # every candidate: (threshold, net P&L, trades)

    def as_dict(self) -> dict[str, Any]:
        """Plain numbers for the bundle's metadata."""
        return {
            "threshold": self.threshold,
            "edge": self.edge,
            "net_pnl": self.net_pnl,
            "trades": self.trades,
            "trades_per_day": self.trades_per_day,
            "trading_days": self.trading_days,
            "long_entries": self.long_entries,
            "short_entries": self.short_entries,
            "commission": self.commission,
            "slippage": self.slippage,
            "round_trip_cost": self.round_trip_cost,
            "grid": [list(row) for row in self.grid],
        }


def candidate_thresholds(predictions: np.ndarray) -> list[float]:
    """Distinct quantiles of |prediction| (the finite ones), smallest first."""
    size = np.abs(predictions[np.isfinite(predictions)])
    if not len(size):
        return []
    return sorted({float(np.quantile(size, q)) for q in THRESHOLD_QUANTILES if np.quantile(size, q) > 0})


def choose_threshold(
    bars: SimulationBars,
    predictions: np.ndarray,
    spec: ContractSpec,
    flat: np.ndarray | None = None,
    **rules: Any,
) -> ThresholdChoice:
    """Simulate the strategy with the contract's real costs at each candidate threshold and keep the one with the
    largest net P&L; `edge` is none when no candidate with at least MIN_DECISION_TRADES fills made money."""
    grid: list[tuple[float, float, int]] = []
    best: tuple[float, Simulation] | None = None
    for threshold in candidate_thresholds(predictions):
        run = simulate(bars, predictions, SimulationSettings.for_contract(spec, threshold, **rules), flat)
        grid.append((threshold, run.net_pnl, run.trade_count))
        if run.trade_count >= MIN_DECISION_TRADES and (best is None or run.net_pnl > best[1].net_pnl):
            best = (threshold, run)
    cost = float(spec.round_trip_return(float(np.mean(bars.close)))) if len(bars) else math.nan
    if best is None:
        threshold = grid[-1][0] if grid else 0.0
        empty = simulate(bars, np.full(len(bars), np.nan), SimulationSettings.for_contract(spec, threshold, **rules))
        best = (threshold, empty)
    threshold, run = best
    return ThresholdChoice(
        threshold=threshold,
        edge=EDGE_POSITIVE if run.net_pnl > 0 and run.trade_count >= MIN_DECISION_TRADES else EDGE_NONE,
        net_pnl=run.net_pnl,
        trades=run.trade_count,
        trades_per_day=run.trades_per_day,
        trading_days=run.trading_days,
        long_entries=run.long_entries,
        short_entries=run.short_entries,
        commission=run.commission,
        slippage=run.slippage,
        round_trip_cost=cost,
        grid=tuple(grid),
    )
