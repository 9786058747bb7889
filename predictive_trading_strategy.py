"""The CTA strategy that trades a model's forward-return predictions through the risk manager, live and in backtests."""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import numpy as np
import pandas as pd
from vnpy.trader.constant import Direction, Offset, OrderType
from vnpy.trader.object import AccountData, BarData, OrderData, OrderRequest, TickData, TradeData
from vnpy.trader.utility import BarGenerator, extract_vt_symbol, round_to
from vnpy_ctastrategy import CtaTemplate

from bar_features import FeatureState, build_features, feature_lookback
from config import (
    DEFAULT_CAPITAL,
    AppError,
    ConfigError,
    ContractSpec,
    DataError,
    Fees,
    HealthSettings,
    ModelError,
    RiskSettings,
    resolve_home,
)
from data_processor import RollDetector, gap_segments, make_windows
from ml_model import PricePredictionModel, find_bundle, has_no_edge
from model_health import KINDS, HealthView, ModelWatch, health_problems, view_dict
from risk_manager import PositionBook, RiskManager
from trade_simulator import CLOSE, LONG, OPEN, SHORT, allowed_target, next_order, trailing_stop
from trading_calendar import causal_trading_day

NO_PREDICTION: float = math.nan
RISK_REJECTION: str = "风控拒绝"  # how `send` starts a vetoed order's log line (live_trading audits these lines)
NO_EDGE: str = "无验证优势"  # how on_init starts the log line of a bundle whose validation showed no net edge
OPENING_HELD: str = "暂停开仓（模型健康或人工）"  # starts the log line of an opening hold (live: a CRITICAL alert)
FLATTEN_HOLD: str = "人工平仓"  # starts the hold reason of a flatten: the target stays 0 until resumed, restarts too
DIRECTIONS: dict[int, Direction] = {LONG: Direction.LONG, SHORT: Direction.SHORT}  # trade_simulator's sides
OFFSETS: dict[int, Offset] = {OPEN: Offset.OPEN, CLOSE: Offset.CLOSE}

STATE_FORMAT: int = 1  # the layout of the saved strategy state
RECENT_BARS: int = 3000  # finished bars kept to warm a switched-in model's features
SwitchReply = Callable[[bool, str], None]  # told whether a requested model switch was accepted, and why


class StateStore(Protocol):
    """Where the strategy keeps what it knows across a restart and reports its halts; the composition root gives it
    one (live: a file under the home and the audit log), else it keeps them in memory."""

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is none."""
        ...

    def save(self, state: dict[str, Any]) -> None:
        """Keep this state (plain JSON values) in place of the previous one."""
        ...

    def record(self, event: str, fields: dict[str, Any]) -> None:
        """Report a risk event (`risk_halt`, `risk_resume`) with its fields."""
        ...


class MemoryStateStore:
    """The default store: the latest state and the events in memory (backtests, tests)."""

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self.state = state
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.saves = 0

    def load(self) -> dict[str, Any] | None:
        return self.state

    def save(self, state: dict[str, Any]) -> None:
        self.state = state
        self.saves += 1

    def record(self, event: str, fields: dict[str, Any]) -> None:
        self.events.append((event, fields))


class WindowBuffer:
    """The last `length` scaled feature rows as one contiguous array, in constant time per row."""

    def __init__(self, length: int, width: int) -> None:
        self.length = length
        self.rows = np.zeros((2 * length, width), dtype=np.float32)  # each row written twice: any window is a slice
        self.count = 0

    def push(self, row: np.ndarray) -> None:
        at = self.count % self.length
        self.rows[at] = row
        self.rows[at + self.length] = row
        self.count += 1

    def window(self) -> np.ndarray | None:
        """The window ending at the latest row, or None until `length` rows have arrived."""
        if self.count < self.length:
            return None
        start = self.count % self.length
        return self.rows[start : start + self.length]


@dataclass(frozen=True)
class WarmupNeed:
    """What a bundle needs before its first prediction: `bars` bars (its features' look-back plus one window of
    `window` rows) and `days` completed trading days before the day of the window's first bar (its daily features);
    `adjust` is how its training prices were adjusted across rolls (metadata `price_adjustment`, ratio if none)."""

    bars: int
    days: int
    window: int
    adjust: str = "ratio"

    def met(self, times: Sequence[datetime]) -> bool:
        """Whether history bars starting at `times` (oldest first) let the next bar be predicted with every
        feature as on a complete history: enough bars, and `days` whole trading days before the window's first bar
        (the history's first day may be partial and does not count)."""
        if len(times) < self.bars - 1:
            return False
        if not self.days:
            return True
        first_row = times[len(times) - (self.window - 1)] if self.window > 1 else times[-1]
        day = causal_trading_day(first_row)
        before = sorted({causal_trading_day(when) for when in times} - {day})
        return len([d for d in before[1:] if d < day]) >= self.days

    def describe(self) -> str:
        """The need in words, Chinese first."""
        days = f"及窗口前 {self.days} 个完整交易日" if self.days else ""
        return f"{self.bars:,} 根K线{days}（含 {self.window} 根窗口）/ {self.bars:,} bars, {self.days} whole days"


def bundle_adjustment(metadata: dict[str, Any]) -> str:
    """How a bundle's training prices were adjusted across rolls (`price_adjustment.adjust`), ratio when none is
    recorded (bundles trained before it was, or on a series with no roll table: ratio keeps every return)."""
    recorded = metadata.get("price_adjustment")
    adjust = recorded.get("adjust") if isinstance(recorded, dict) else None
    return adjust if adjust in ("ratio", "difference", "none") else "ratio"


def model_need(model: PricePredictionModel) -> WarmupNeed:
    """What a loaded bundle's features and window need before its first prediction."""
    bars, days = feature_lookback(model.names)
    length = model.config.sequence_length
    return WarmupNeed(bars + length, days, length, bundle_adjustment(model.metadata))


class ModelSignal:
    """Online features → scaler → window → prediction: the live inference path, one bar at a time.

    No prediction from a window that spans a roll gap (found by the causal rule of `data_processor.RollDetector`):
    training never builds one, and on a continuous series its prices mix two contracts.
    """

    def __init__(self, model: PricePredictionModel, vt_symbol: str) -> None:
        if model.scaler is None:
            raise ModelError("模型包缺少标准化参数 / the bundle has no scaler")
        self.model = model
        self.scaler = model.scaler
        self.state = FeatureState(vt_symbol, model.names)
        self.buffer = WindowBuffer(model.config.sequence_length, len(model.names))
        self.rolls = RollDetector()
        self.since_roll = self.buffer.length  # bars since the last roll gap; no roll seen counts as long ago
        self.features: np.ndarray | None = None  # the latest scaled feature row (None while warming up)
        self.expected_gap = True  # the latest NaN prediction was expected: warming up, or a window over a roll gap

    @property
    def need(self) -> WarmupNeed:
        """What the bundle's features and window need before the first prediction."""
        return model_need(self.model)

    @property
    def bars_needed(self) -> int:
        """Bars before the first prediction: the features' look-back plus one window."""
        return self.need.bars

    def update(self, bar: BarData) -> float:
        """Feed one finished bar; its prediction, or NaN while warming up, when a feature is undefined or when the
        window spans a roll gap."""
        rolled = self.rolls.update(bar.datetime, bar.open_price, bar.close_price)
        self.since_roll = 0 if rolled else min(self.since_roll + 1, self.buffer.length)
        features = self.state.update(bar)
        self.features = None if features is None else self.scaler.transform(features)
        if self.features is None:
            self.expected_gap = True
            return NO_PREDICTION
        self.buffer.push(self.features)
        window = self.buffer.window()
        self.expected_gap = window is None or self.since_roll < self.buffer.length - 1
        if self.expected_gap or window is None or not np.isfinite(window).all():
            return NO_PREDICTION
        return self.model.predict_one(window)


def batch_predictions(model: PricePredictionModel, frame: pd.DataFrame, vt_symbol: str) -> np.ndarray:
    """Every bar's prediction in one batch, equal to what ModelSignal gives bar by bar (NaN while warming up and
    where the window spans a roll gap)."""
    if model.scaler is None:
        raise ModelError("模型包缺少标准化参数 / the bundle has no scaler")
    features = build_features(frame, vt_symbol, model.config.feature_set)[model.names].to_numpy()
    length = model.config.sequence_length
    windows = make_windows(model.scaler.transform(features), None, length, gap_segments(frame))
    predictions = np.full(len(frame), NO_PREDICTION)
    predictions[windows.starts + length - 1] = model.predict(windows)
    return predictions


class PrecomputedSignal:
    """Predictions from `batch_predictions`, looked up by bar time: the backtest's fast path, same numbers as live."""

    def __init__(self, model: PricePredictionModel, times: pd.DatetimeIndex, predictions: np.ndarray) -> None:
        if len(times) != len(predictions):
            raise ModelError("预测与K线数量不一致 / predictions and bars differ in length")
        self.model = model
        self.table: dict[int, float] = dict(
            zip((stamp // 1_000_000 for stamp in times.as_unit("us").asi8.tolist()), predictions.tolist(), strict=True)
        )
        self.bars_needed = model_need(model).bars

    def update(self, bar: BarData) -> float:
        """The prediction made at this bar's close, NaN for a bar outside the batch."""
        return self.table.get(int(bar.datetime.timestamp()), NO_PREDICTION)


def load_signal(model_path: str, vt_symbol: str, interval: str = "1m") -> ModelSignal:
    """Load a bundle by path or by name under the home's models/, checked against the traded product and the bar
    interval (the strategy's BarGenerator makes 1-minute bars)."""
    bundle = find_bundle(model_path, resolve_home().models_dir)
    return ModelSignal(PricePredictionModel().load_model(bundle, vt_symbol=vt_symbol, interval=interval), vt_symbol)


def bundle_checksum(model: PricePredictionModel) -> str:
    """The bundle's identity: the seal of its manifest (ml_model.manifest_of), which covers every file."""
    return model.seal


def _saved_time(value: Any, what: str) -> datetime | None:
    """A saved time-zone-aware ISO time, or None; DataError when it is something else."""
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        when = None
    if when is None or when.utcoffset() is None:
        raise DataError(f"状态中的 {what} 无效：{value!r} / saved {what} is not an aware ISO time")
    return when


class PredictiveTradingStrategy(CtaTemplate):
    """Trades the model's prediction per bar: long above the threshold, short below, trailing stop, risk-checked."""

    author = "AI Trading Desk"

    model_path: str = ""
    prediction_threshold: float = 0.0  # 0: the bundle's threshold, derived from its validation predictions
    fixed_size: int = 1
    trailing_percent: float = 0.8  # 0 switches the trailing stop off
    slippage_ticks: int = 1  # price allowance of each order, in ticks
    warmup_days: int = 10
    capital: float = DEFAULT_CAPITAL
    margin_rate: float = 0.1  # the composition root fills these from settings/contracts.toml
    fees: str = "0.0001 0.0001 0.0001"  # open, close, close-today: a rate, or N/lot (config.Fees)
    slippage_cost: float = 0.0  # per unit traded, charged by the risk book as a backtest charges it; 0 live
    max_daily_loss_rate: float = RiskSettings.max_daily_loss_rate
    max_position_ratio: float = RiskSettings.max_position_ratio
    max_single_trade_ratio: float = RiskSettings.max_single_trade_ratio

    prediction_value: float = 0.0
    last_price: float = 0.0
    model_name: str = ""
    risk_state: str = ""
    health_state: str = ""
    entry_price: float = 0.0
    trailing_stop_price: float = 0.0

    parameters = [
        "model_path",
        "prediction_threshold",
        "fixed_size",
        "trailing_percent",
        "slippage_ticks",
        "warmup_days",
        "capital",
        "margin_rate",
        "fees",
        "slippage_cost",
        "max_daily_loss_rate",
        "max_position_ratio",
        "max_single_trade_ratio",
    ]
    variables = [
        "prediction_value",
        "last_price",
        "model_name",
        "risk_state",
        "health_state",
        "entry_price",
        "trailing_stop_price",
    ]

    def __init__(self, cta_engine: Any, strategy_name: str, vt_symbol: str, setting: dict) -> None:
        super().__init__(cta_engine, strategy_name, vt_symbol, setting)
        self.bg = BarGenerator(self.on_bar)
        self.signal: ModelSignal | PrecomputedSignal | None = None
        self.risk: RiskManager | None = None
        self.store: StateStore = MemoryStateStore()  # the live composition root hands in the home's file
        self.account_required = False  # live: set by the composition root; nothing opens before the balance
        self.threshold = 0.0
        self.best_price = 0.0
        self.blocked = 0  # after a trailing stop, the side (LONG / SHORT) not re-entered until the signal resets
        self.health: HealthSettings | None = None  # live: the composition root hands in the health switch's limits
        self.watch: ModelWatch | None = None  # follows the model's live health and quality when `health` is given
        self.acknowledged: set[str] = set()  # health failures a person resumed over: not held again until they clear
        self.flattening = False  # a person asked to flatten: the target is 0 until opening is resumed
        self.last_bar: BarData | None = None
        self.recent_bars: deque[BarData] = deque(maxlen=RECENT_BARS)
        self.recent_predictions: deque[float] = deque(maxlen=RECENT_BARS)  # one per recent bar, for the AI panel
        self.pending_switch: tuple[ModelSignal, str] | None = None  # checked in the background, swapped at a bar
        self.flat_bars: set[int] = set()  # bar start times (epoch seconds) to be flat at: before a known roll
        self.active_orderids: set[str] = set()
        self.symbol, self.exchange = extract_vt_symbol(vt_symbol)
        self.model_checksum = ""
        self.decided_bar: datetime | None = None  # the bar of the latest decision
        self.settled_bar: datetime | None = None  # the latest bar whose decision has no order left in flight
        self.resume_after: datetime | None = None  # after a restart: bars up to this one were acted on already
        self.saved_key: tuple[Any, ...] = ()
        self.halt_seen = False
        self.account_warned = False

    # -- lifecycle --

    def on_init(self) -> None:
        """Load the model and the risk manager, restore the saved state, then warm the features with history;
        no model means no trading."""
        try:
            if self.signal is None:  # a backtest may hand in a PrecomputedSignal of the same model
                self.signal = load_signal(self.model_path, self.vt_symbol)
            self.risk = self.build_risk_manager()
            model = self.signal.model
            self.model_name = model.path.name if model.path else ""
            self.model_checksum = bundle_checksum(model)
            saved = self.store.load()
            if saved is not None:
                self.restore_state(saved)
        except AppError as exc:
            self.signal = self.risk = None
            self.write_log(f"初始化失败，策略不会交易：{exc}")
            raise  # the engine then leaves the strategy uninitialised
        self.threshold = self.prediction_threshold if self.prediction_threshold > 0 else model.threshold
        self.risk_state = self.risk.status
        self.saved_key = self.state_key()
        self.write_log(
            f"模型 {self.model_name}（{model.model_type}）已加载，阈值 {self.threshold:.6f}，"
            f"预热需要 {model_need(model).describe()}"
        )
        no_edge = has_no_edge(model.metadata)
        holds = no_edge and self.prediction_threshold <= 0
        if no_edge:
            self.write_log(
                f"{NO_EDGE}：模型包 {self.model_name} 在验证期按真实成本模拟没有净收益（edge: none），"
                + ("策略不会开仓" if holds else "按显式阈值仍会开仓，请谨慎 / an explicit threshold overrides it")
            )
        if self.health is not None:
            self.watch = ModelWatch(model.metadata, model.names, model.config.horizon, self.health, holds)
        elif holds:
            self.hold_opening("edge", f"{KINDS['edge']}：模型包 {self.model_name}", None)
        self.health_state = self.risk.state.hold_reason
        self.load_bar(self.warmup_days)

    @property
    def warmup_need(self) -> WarmupNeed | None:
        """What the loaded bundle needs before its first prediction (the live history loader reads it to load enough
        trading days, whatever `warmup_days` asked for); None without a model."""
        return None if self.signal is None else model_need(self.signal.model)

    def on_start(self) -> None:
        """Book a position that only vnpy's own variables remembered (no state of ours) into the risk book."""
        if self.signal is None or self.risk is None:
            # vnpy marks a strategy inited even when on_init raised; on_bar still refuses to trade without a model
            self.write_log("没有可用的模型，策略不会下单；请检查 model_path 后重新初始化")
            return
        if self.pos and self.risk.net_position != self.pos:  # the live root books the broker's positions first
            price = self.entry_price or self.last_price
            book = (
                PositionBook(long_yd=self.pos, long_price=price)
                if self.pos > 0
                else PositionBook(short_yd=-self.pos, short_price=price)
            )
            self.risk.sync_positions(book)
            self.write_log(f"沿用已有持仓 {self.pos}（开仓价 {price}）")
            self.save_state("start")
        self.put_event()

    def on_stop(self) -> None:
        self.put_event()

    def build_risk_manager(self) -> RiskManager:
        """Limits and costs from the parameters, lot size and price tick from the engine's contract."""
        size, pricetick = self.get_size(), self.get_pricetick()
        if not size or not pricetick:
            raise ConfigError(
                f"找不到合约 {self.vt_symbol} 的乘数或最小变动价位；请先连接并查询合约 / unknown contract"
            )
        spec = ContractSpec(
            size=float(size),
            pricetick=float(pricetick),
            fees=Fees.parse(self.fees, "fees"),
            margin_rate=self.margin_rate,
        )
        limits = RiskSettings(
            max_daily_loss_rate=self.max_daily_loss_rate,
            max_position_ratio=self.max_position_ratio,
            max_single_trade_ratio=self.max_single_trade_ratio,
        )
        return RiskManager(
            limits, spec, self.capital, slippage=self.slippage_cost, account_required=self.account_required
        )

    # -- the state that survives a restart --

    def state_snapshot(self, reason: str) -> dict[str, Any]:
        """What a restart needs, as plain JSON values: the risk book, the trailing stop, the model, the last bar."""
        assert self.risk is not None
        state = self.risk.state
        return {
            "format": STATE_FORMAT,
            "strategy": self.strategy_name,
            "vt_symbol": self.vt_symbol,
            "trading_day": state.trading_day.isoformat() if state.trading_day else None,
            "saved_for": reason,
            "last_bar": self.settled_bar.isoformat() if self.settled_bar else None,
            "model": {"name": self.model_name, "checksum": self.model_checksum},
            "pos": float(self.pos),
            "entry_price": self.entry_price,
            "trailing": {
                "best_price": self.best_price,
                "stop_price": self.trailing_stop_price,
                "blocked": DIRECTIONS[self.blocked].name if self.blocked else None,
            },
            "risk": self.risk.snapshot(),
            "health": {"acknowledged": sorted(self.acknowledged)},
        }

    def state_key(self) -> tuple[Any, ...]:
        """The few values whose change on a bar is worth a save (fills and halts always save)."""
        if self.risk is None:
            return ()
        state = self.risk.state
        return self.pos, self.best_price, self.blocked, state.halted, state.held, state.trading_day

    def save_state(self, reason: str) -> None:
        """Hand the current state to the store."""
        if self.risk is None:
            return
        self.store.save(self.state_snapshot(reason))
        self.saved_key = self.state_key()

    def restore_state(self, saved: dict[str, Any]) -> None:
        """Put a saved state back (in on_init); an earlier trading day's is rolled by the first bar's mark."""
        assert self.risk is not None
        if saved.get("format") != STATE_FORMAT or saved.get("vt_symbol") != self.vt_symbol:
            raise ConfigError(
                f"策略 {self.strategy_name} 的已存状态属于 {saved.get('vt_symbol')!r}（格式 {saved.get('format')!r}），"
                f"与现在的 {self.vt_symbol} 不符；核对持仓后用 `ai_trading_system.py state --strategy "
                f"{self.strategy_name} --clear` 清除 / the saved state belongs to another contract"
            )
        trailing = saved.get("trailing")
        if not isinstance(trailing, dict) or not isinstance(saved.get("risk"), dict):
            raise DataError("状态缺少 trailing 或 risk / the saved state is incomplete")
        self.risk.restore(saved["risk"])
        blocked = trailing.get("blocked")
        if blocked not in (None, Direction.LONG.name, Direction.SHORT.name):
            raise DataError(f"状态中的 blocked 无效：{blocked!r} / saved blocked direction is invalid")
        try:
            self.pos = float(saved["pos"])
            self.entry_price = float(saved["entry_price"])
            self.best_price = float(trailing["best_price"])
            self.trailing_stop_price = float(trailing["stop_price"])
        except (KeyError, TypeError, ValueError):
            raise DataError("状态中的持仓或止损价无效 / saved position or stop prices are invalid") from None
        self.blocked = (LONG if blocked == Direction.LONG.name else SHORT) if blocked else 0
        self.settled_bar = self.decided_bar = self.resume_after = _saved_time(saved.get("last_bar"), "last_bar")
        self.halt_seen = self.risk.halted
        self.risk_state = self.risk.status
        health = saved.get("health") or {}  # a state from before the health switch has none
        self.acknowledged = {str(kind) for kind in health.get("acknowledged") or []}
        self.flattening = self.risk.held and self.risk.state.hold_reason.startswith(FLATTEN_HOLD)
        account = self.risk.state
        if math.isfinite(account.last_price):
            self.last_price = account.last_price
        model = saved.get("model") or {}
        if model.get("checksum") != self.model_checksum:
            self.write_log(
                f"模型已更换：状态中为 {model.get('name')}，现在加载 {self.model_name}；账本与熔断照常恢复 "
                "/ the model changed since the state was saved"
            )
        self.write_log(
            f"已恢复状态：交易日 {account.trading_day}，持仓 {self.pos:g}，已实现盈亏 {account.realised:,.2f}，"
            f"手续费 {account.commission:,.2f}，{'熔断中：' + account.halt_reason if account.halted else '未熔断'}，"
            f"最后处理K线 {self.resume_after} / state restored"
        )

    def note_halt(self, when: datetime | None) -> None:
        """Report a halt, or its lift on a new trading day, once: the log, the store's events and the state."""
        assert self.risk is not None
        halted = self.risk.halted
        if halted == self.halt_seen:
            return
        self.halt_seen = halted
        state = self.risk.state
        fields: dict[str, Any] = {
            "strategy": self.strategy_name,
            "trading_day": state.trading_day.isoformat() if state.trading_day else None,
            "time": when.isoformat() if when else None,
        }
        self.save_state("halt" if halted else "resume")  # saved before it is reported: a crash keeps the halt
        if halted:
            fields.update(
                reason=state.halt_reason, daily_pnl=round(self.risk.daily_pnl, 2), limit=round(self.risk.loss_limit, 2)
            )
            self.store.record("risk_halt", fields)
            self.write_log(f"暂停开仓：{state.halt_reason}")
        else:
            self.store.record("risk_resume", fields)
            self.write_log(f"交易日 {fields['trading_day']} 开始，恢复开仓 / trading resumes")

    # -- the model-health switch and the opening hold --

    def health_view(self) -> HealthView | None:
        """The live model's health and quality figures (None when no health switch was handed in)."""
        return self.watch.view() if self.watch is not None else None

    def health_figures(self) -> dict[str, Any]:
        """The model, its hold and its live health and quality as plain values (heartbeat, daily summary)."""
        view = self.health_view()
        metrics = self.signal.model.metadata.get("metrics") or {} if self.signal is not None else {}
        state = self.risk.state if self.risk is not None else None
        return {
            "model": self.model_name,
            "checksum": self.model_checksum,
            "held": bool(state and state.held),
            "hold_reason": state.hold_reason if state else "",
            "halted": bool(state and state.halted),
            "halt_reason": state.halt_reason if state else "",
            "valid_ic": ((metrics.get("valid") or {}).get("model") or {}).get("ic"),
            "health": view_dict(view) if view is not None else None,
        }

    def check_health(self, when: datetime | None) -> None:
        """Hold opening on the first health failure a person has not resumed over (once: a held book stays held)."""
        if self.watch is None or self.risk is None:
            return
        assert self.health is not None
        failing = health_problems(self.watch.view(), self.health)
        self.acknowledged &= {kind for kind, _ in failing}  # a failure that cleared may hold again later
        fresh = [(kind, reason) for kind, reason in failing if kind not in self.acknowledged]
        if fresh and not self.risk.held:
            self.hold_opening(*fresh[0], when)

    def hold_opening(self, kind: str, reason: str, when: datetime | None) -> None:
        """Stop opening (reduce-only) until `resume_opening`: the risk book's hold, one log line (live: a CRITICAL
        alert), one audit record and the state saved."""
        assert self.risk is not None
        if not self.risk.hold(reason, when):
            return
        view = self.health_view()
        fields: dict[str, Any] = {
            "strategy": self.strategy_name,
            "kind": kind,
            "reason": reason,
            "time": when.isoformat() if when else None,
            "model": self.model_name,
            "checksum": self.model_checksum,
            "health": view_dict(view) if view is not None else None,
        }
        self.health_state = reason
        self.save_state("hold")
        self.store.record("opening_hold", fields)
        self.write_log(f"{OPENING_HELD}：{reason}；只允许平仓，需人工恢复 / opening held until resumed")

    def resume_opening(self, who: str) -> bool:
        """Lift an opening hold (an explicit action by `who`); today's failures are not held again until they
        clear. False when nothing was held."""
        if self.risk is None or not self.risk.held:
            return False
        reason = self.risk.state.hold_reason
        self.risk.release()
        if self.watch is not None and self.health is not None:
            self.acknowledged |= {kind for kind, _ in health_problems(self.watch.view(), self.health)}
            self.watch.acknowledge()
        self.health_state = ""
        self.flattening = False
        self.risk_state = self.risk.status
        self.save_state("resume")
        self.store.record("opening_resume", {"strategy": self.strategy_name, "by": who, "was": reason})
        self.write_log(f"恢复开仓（{who}），此前：{reason} / opening resumed")
        self.put_event()
        return True

    def flatten(self, who: str) -> None:
        """Hold opening and close the whole position now at the last bar's price, then stay flat until resumed."""
        if self.risk is None:
            return
        when = self.last_bar.datetime if self.last_bar else None
        self.hold_opening("manual", f"{FLATTEN_HOLD}（{who}）/ flatten requested", when)
        self.flattening = True
        if self.trading and self.last_bar is not None and self.pos:
            self.move_to(0.0, self.last_bar, "人工平仓 / flatten")
        self.put_event()

    # -- switching models while trading --

    def request_switch(self, bundle: str, who: str, reply: SwitchReply) -> None:
        """Load and check a bundle in a background thread; once accepted it replaces the model at the next bar
        (`swap_model`). `reply` hears the verdict, from that thread."""

        def load() -> None:
            try:
                signal = self.checked_switch(bundle)
            except AppError as exc:
                self.store.record(
                    "model_switch_refused",
                    {"strategy": self.strategy_name, "bundle": bundle, "by": who, "reason": str(exc)},
                )
                self.write_log(f"拒绝切换模型 {bundle}：{exc}")
                reply(False, str(exc))
                return
            self.pending_switch = (signal, who)
            reply(True, f"模型包 {signal.model.path} 已加载并检查，下一根K线切换 / switching at the next bar")

        threading.Thread(target=load, name=f"switch-{self.strategy_name}", daemon=True).start()

    def checked_switch(self, bundle: str) -> ModelSignal:
        """The bundle's signal when it may replace the running model: same product and bar interval (checked by
        the loader), the same features in the same order, and not the model already running; ModelError else."""
        if self.signal is None:
            raise ModelError("策略没有正在运行的模型，无法切换 / no running model to switch from")
        signal = load_signal(bundle, self.vt_symbol)
        running = self.signal.model
        if signal.model.names != running.names:
            extra = sorted(set(signal.model.names) - set(running.names))
            missing = sorted(set(running.names) - set(signal.model.names))
            raise ModelError(
                f"模型包 {bundle} 的特征与正在运行的模型不同（多 {extra or '无'}，少 {missing or '无'}，或顺序不同）；"
                "切换只接受同一套特征，请用相同特征重新训练，或修改 strategies.json 后重启 / features differ"
            )
        if bundle_checksum(signal.model) == self.model_checksum:
            raise ModelError(f"模型包 {bundle} 就是正在运行的模型（校验和相同）/ that model is already running")
        return signal

    def swap_model(self, when: datetime) -> None:
        """Put the pending model in: its features warmed from the recent bars, the position and the risk book
        kept, the change audited with both checksums and the state saved."""
        assert self.pending_switch is not None and self.signal is not None
        signal, who = self.pending_switch
        self.pending_switch = None
        for bar in self.recent_bars:
            signal.update(bar)
        before = {"model": self.model_name, "checksum": self.model_checksum}
        model = signal.model
        self.signal = signal
        self.model_name = model.path.name if model.path else ""
        self.model_checksum = bundle_checksum(model)
        self.threshold = self.prediction_threshold if self.prediction_threshold > 0 else model.threshold
        holds = has_no_edge(model.metadata) and self.prediction_threshold <= 0
        if self.health is not None:
            self.watch = ModelWatch(model.metadata, model.names, model.config.horizon, self.health, holds)
            self.acknowledged.clear()
        elif holds:
            self.hold_opening("edge", f"{KINDS['edge']}：模型包 {self.model_name}", when)
        self.store.record(
            "model_switch",
            {
                "strategy": self.strategy_name,
                "time": when.isoformat(),
                "by": who,
                "from": before["model"],
                "from_checksum": before["checksum"],
                "to": self.model_name,
                "to_checksum": self.model_checksum,
                "pos": float(self.pos),
                "warmed_bars": len(self.recent_bars),
            },
        )
        self.write_log(
            f"模型已切换：{before['model']} → {self.model_name}（阈值 {self.threshold:.6f}，持仓 {self.pos:g} 不变，"
            f"用最近 {len(self.recent_bars)} 根K线预热）/ model switched"
        )
        self.save_state("switch")

    def adopt_positions(self, book: PositionBook) -> None:
        """Take the broker's positions (with its prices) as the book and `pos` (the live root, before start)."""
        assert self.risk is not None
        self.risk.sync_positions(book)
        self.pos = book.net
        if not self.pos:
            self.entry_price = self.best_price = self.trailing_stop_price = 0.0
        self.note_halt(None)
        self.save_state("adopt")

    def on_account(self, account: AccountData) -> None:
        """The broker's account (live): the risk limits use its balance, capped by `capital`."""
        if self.risk is not None:
            self.risk.set_balance(account.balance)

    # -- market data --

    def on_tick(self, tick: TickData) -> None:
        if self.risk is not None and tick.limit_up and tick.limit_down:
            self.risk.set_price_band(tick.limit_up, tick.limit_down)
        self.bg.update_tick(tick)

    def on_bar(self, bar: BarData) -> None:
        """Features → prediction → target → risk check → orders, once per finished bar."""
        if self.signal is None or self.risk is None:
            return
        if self.pending_switch is not None:
            self.swap_model(bar.datetime)  # at the bar boundary: this bar is the new model's first
        self.recent_bars.append(bar)
        self.last_bar = bar
        self.last_price = bar.close_price
        self.prediction_value = self.signal.update(bar)
        self.recent_predictions.append(self.prediction_value)
        if self.watch is not None:
            features = getattr(self.signal, "features", None)
            gap = bool(getattr(self.signal, "expected_gap", False))
            self.watch.update(bar.datetime, bar.close_price, features, self.prediction_value, gap, self.trading)
        if not self.trading or (self.resume_after is not None and bar.datetime <= self.resume_after):
            return  # warming up, or a bar the previous process already acted on
        self.risk.mark(bar.close_price, bar.datetime)
        self.note_halt(bar.datetime)
        self.check_health(bar.datetime)
        self.risk_state = self.risk.status
        stopped = self.check_trailing_stop(bar)
        before_roll = int(bar.datetime.timestamp()) in self.flat_bars
        if self.risk.halted or stopped or before_roll or self.flattening:
            target = 0.0
        else:
            target = self.allowed_target(self.prediction_value)
            if self.risk.held and abs(target) > abs(self.pos):
                target = self.pos  # reduce-only: the opening hold lets positions close, never grow
        why = "熔断 / daily loss halt" if self.risk.halted else ("止损 / trailing stop" if stopped else "")
        why = why or ("人工平仓 / flatten" if self.flattening else "")
        why = why or ("换月前平仓 / flat before a roll" if before_roll else "")
        self.move_to(target, bar, why)
        self.decided_bar = bar.datetime
        if not self.active_orderids:
            self.settled_bar = bar.datetime
        if self.state_key() != self.saved_key:
            self.save_state("bar")
        self.put_event()

    def allowed_target(self, prediction: float) -> float:
        """The target position; after a trailing stop, no re-entry that way until the signal resets."""
        target, self.blocked = allowed_target(prediction, self.threshold, self.pos, self.fixed_size, self.blocked)
        return target

    def check_trailing_stop(self, bar: BarData) -> bool:
        """Follow the best price since entry; True when the close has retraced `trailing_percent` from it."""
        self.best_price, self.trailing_stop_price, hit = trailing_stop(
            self.pos, self.best_price, bar.high_price, bar.low_price, bar.close_price, self.trailing_percent
        )
        if hit:
            self.blocked = LONG if self.pos > 0 else SHORT
        return hit

    # -- orders --

    def move_to(self, target: float, bar: BarData, why: str) -> None:
        """One step toward the target: close an opposite position first, then open; never two orders in flight."""
        if self.active_orderids:
            self.cancel_all()
            if self.active_orderids:  # live cancels are confirmed later: wait for them before anything new
                return
        direction, offset, volume = next_order(self.pos, target)
        if not volume:
            return
        if offset == OPEN and self.risk is not None and self.risk.awaiting_account:
            if not self.account_warned:
                self.write_log("尚未收到账户资金，暂不开仓 / waiting for the account balance before opening")
                self.account_warned = True
            return
        self.send(DIRECTIONS[direction], OFFSETS[offset], volume, bar, target, why)

    def order_price(self, direction: Direction, bar: BarData) -> float:
        """The bar's close with `slippage_ticks` of allowance toward the other side, on the tick grid."""
        tick = self.risk.spec.pricetick if self.risk else 1.0
        offset = self.slippage_ticks * tick
        price = bar.close_price + offset if direction == Direction.LONG else bar.close_price - offset
        return float(round_to(price, tick))

    def send(self, direction: Direction, offset: Offset, volume: float, bar: BarData, target: float, why: str) -> None:
        """Check one order with the risk manager, shrink it to what is allowed, send it and log the decision once."""
        assert self.risk is not None
        price = self.order_price(direction, bar)
        now: datetime = bar.datetime
        request = OrderRequest(self.symbol, self.exchange, direction, OrderType.LIMIT, volume, price, offset)
        decision = self.risk.check(request, now)
        if not decision.allowed and offset == Offset.OPEN and decision.max_volume >= 1:
            request.volume = volume = math.floor(decision.max_volume)
            decision = self.risk.check(request, now)
        inputs = (
            f"预测 {self.prediction_value:+.6f} 阈值 {self.threshold:.6f} 持仓 {self.pos} 目标 {target}"
            f"{' ' + why if why else ''}"
        )
        if not decision.allowed:
            self.risk_state = f"{self.risk.status}: {decision.reason}"
            order = f"{direction.value}{offset.value} {volume}@{price}"
            self.write_log(f"{RISK_REJECTION} {order}：{decision.reason}；{inputs}")
            return
        if direction == Direction.LONG:
            orderids = self.buy(price, volume) if offset == Offset.OPEN else self.cover(price, volume)
        else:
            orderids = self.short(price, volume) if offset == Offset.OPEN else self.sell(price, volume)
        self.risk.record_order(request, now)
        self.active_orderids.update(orderids)
        self.write_log(f"下单 {direction.value}{offset.value} {volume}@{price}；{inputs}；风控通过")

    def on_order(self, order: OrderData) -> None:
        """Forget an order once it is done; the decision that sent it is settled when none is left."""
        if not order.is_active():
            self.active_orderids.discard(order.vt_orderid)
            if not self.active_orderids:
                self.settled_bar = self.decided_bar

    def on_trade(self, trade: TradeData) -> None:
        """Keep the risk manager's book and the entry / best prices in step with fills; save the state."""
        if self.watch is not None:
            self.watch.record_fill()
        if self.risk is not None:
            self.risk.update_trade(trade)
            self.note_halt(trade.datetime)
            self.risk_state = self.risk.status
        if not self.pos:
            self.entry_price = self.best_price = self.trailing_stop_price = 0.0
        elif trade.offset == Offset.OPEN:
            self.entry_price = trade.price
            self.best_price = trade.price
        if not self.active_orderids:
            self.settled_bar = self.decided_bar
        self.save_state("fill")
        self.put_event()
