"""The AI desk app for VeighNa Trader: its engine carries out the control commands (halt, resume, flatten, switch
model) that the command line or the panel drop into the home's control spool (live_trading)."""

from __future__ import annotations

import bisect
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pyqtgraph as pg
from vnpy.chart import CandleItem, ChartWidget
from vnpy.chart.item import ChartItem
from vnpy.chart.manager import BarManager
from vnpy.event import Event, EventEngine
from vnpy.trader.app import BaseApp
from vnpy.trader.constant import Direction, Offset
from vnpy.trader.engine import BaseEngine, MainEngine
from vnpy.trader.object import BarData
from vnpy.trader.ui import QtCore, QtGui, QtWidgets

from config import CHINA_TZ, AuditLog, Home, guarded
from live_trading import (
    COMMAND_TTL_SECONDS,
    Command,
    Reply,
    answer,
    await_reply,
    claim_commands,
    new_command,
    send_command,
)
from model_health import HealthView, health_problems

logger = logging.getLogger(__name__)

APP_NAME: str = "AiDesk"
CHART_BARS: int = 240  # bars in the panel's live chart
REFRESH_MS: int = 1000
UI_MODULE: str = f"{__name__}.ui"  # where vnpy's MainWindow looks for the widget (app_module + ".ui")


class AiEngine(BaseEngine):
    """The app's engine: carries out control commands on the running strategies, on the event engine's thread (the
    thread their bars arrive on), each one audited."""

    def __init__(self, main_engine: MainEngine, event_engine: EventEngine) -> None:
        super().__init__(main_engine, event_engine, APP_NAME)
        self.home: Home | None = None
        self.audit: AuditLog | None = None
        self.strategies: Callable[[], dict[str, Any]] = dict

    def attach(self, home: Home, audit: AuditLog, strategies: Callable[[], dict[str, Any]]) -> None:
        """Start polling the home's control spool once a second (vnpy's timer) for these strategies."""
        from vnpy.trader.event import EVENT_TIMER

        self.home, self.audit, self.strategies = home, audit, strategies
        self.event_engine.register(EVENT_TIMER, guarded("ai_desk.control", self.on_timer, logger))

    def on_timer(self, event: Event) -> None:
        self.poll()

    def poll(self) -> int:
        """Carry out what waits in each strategy's inbox; how many commands were taken."""
        if self.home is None:
            return 0
        taken = 0
        for name in list(self.strategies()):
            for command in claim_commands(self.home, name):
                taken += 1
                self.carry_out(command)
        return taken

    def carry_out(self, command: Command) -> None:
        """One command: refused when stale or for an unknown strategy, else done (switch-model: answered when the
        bundle has been checked in the background)."""
        strategy = self.strategies().get(command.strategy)
        age = time.time() - command.created
        if age > COMMAND_TTL_SECONDS:
            self.finish(command, False, f"命令已过期（{age:.0f} 秒前发出）/ command expired")
        elif strategy is None or getattr(strategy, "risk", None) is None:
            self.finish(command, False, f"策略 {command.strategy} 未运行或模型未加载 / strategy not running")
        elif command.action == "halt":
            held = strategy.risk.held
            strategy.hold_opening(
                "manual", f"人工暂停开仓（{command.by}）/ opening halted by hand", self.bar_time(strategy)
            )
            self.finish(command, True, "已在暂停中 / already held" if held else "已暂停开仓 / opening held")
        elif command.action == "resume":
            resumed = strategy.resume_opening(command.by)
            self.finish(command, resumed, "已恢复开仓 / resumed" if resumed else "没有暂停可恢复 / nothing held")
        elif command.action == "flatten":
            strategy.flatten(command.by)
            self.finish(command, True, f"平仓中，持仓 {strategy.pos:g}，暂停开仓 / flattening, opening held")
        else:
            strategy.request_switch(command.bundle, command.by, lambda ok, text: self.finish(command, ok, text))

    def snapshot(self, name: str) -> PanelData | None:
        """What the panel shows of one strategy, read from the strategy and the main engine (None before its model
        and risk book exist)."""
        strategy = self.strategies().get(name)
        if strategy is None or strategy.signal is None or strategy.risk is None:
            return None
        bars = list(strategy.recent_bars)[-CHART_BARS:]
        predictions = list(strategy.recent_predictions)[-len(bars) :] if bars else []
        trades = [trade for trade in self.main_engine.get_all_trades() if trade.vt_symbol == strategy.vt_symbol]
        view: HealthView | None = strategy.health_view()
        failing = [kind for kind, _ in health_problems(view, strategy.health)] if view and strategy.health else []
        return PanelData(
            strategy=name,
            card=model_card(strategy),
            bars=bars,
            predictions=predictions,
            threshold=float(strategy.threshold),
            marks=trade_marks(bars, trades),
            quality=quality_rows(strategy, view),
            drift=view.drift if view else math.nan,
            drift_limit=strategy.health.max_drift_psi if strategy.health else math.nan,
            drift_rows=view.drift_rows if view else 0,
            worst=list(view.worst) if view else [],
            drift_alert="drift" in failing,
            risk=risk_figures(strategy, self.main_engine),
        )

    @staticmethod
    def bar_time(strategy: Any) -> datetime | None:
        bar = getattr(strategy, "last_bar", None)
        return bar.datetime if bar is not None else None

    def finish(self, command: Command, ok: bool, message: str) -> None:
        """Audit the command and its outcome, and answer the sender."""
        assert self.home is not None and self.audit is not None
        self.audit.write(
            "control",
            strategy=command.strategy,
            action=command.action,
            bundle=command.bundle or None,
            by=command.by,
            id=command.id,
            ok=ok,
            message=message,
            at=datetime.now(CHINA_TZ).isoformat(timespec="seconds"),
        )
        (logger.info if ok else logger.warning)("控制命令 %s %s：%s", command.action, command.strategy, message)
        answer(self.home, command, ok, message)


class AiDeskApp(BaseApp):
    """The AI desk as a VeighNa Trader app (its engine; the panel widget opens from the app menu)."""

    app_name: str = APP_NAME
    app_module: str = __name__
    app_path: Path = Path(__file__).parent
    display_name: str = "AI 交易台"
    engine_class: type[BaseEngine] = AiEngine
    widget_name: str = "AiPanel"
    icon_name: str = ""


# --- what the panel shows -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RiskFigures:
    """The risk part of the panel."""

    daily_pnl: float
    loss_limit: float  # negative: the daily P&L floor
    margin_used: float
    margin_cap: float
    positions: list[tuple[str, str, float]]  # (vt_symbol, 多/空, volume)
    halted: str  # the daily-loss halt's reason, "" when none
    held: str  # the opening hold's reason, "" when none


@dataclass(frozen=True)
class PanelData:
    """Everything the AI panel shows of one strategy at one moment."""

    strategy: str
    card: list[tuple[str, str]]
    bars: list[BarData]
    predictions: list[float]  # one per bar (nan where none)
    threshold: float
    marks: dict[int, list[tuple[float, str]]]  # bar index -> (price, "long" | "short" | "exit")
    quality: list[tuple[str, str, str]]  # (figure, live, validation)
    drift: float
    drift_limit: float
    drift_rows: int
    worst: list[tuple[str, float]]
    drift_alert: bool
    risk: RiskFigures
    notes: list[str] = field(default_factory=list)


def _number(value: Any, pattern: str = "{:.4f}") -> str:
    """A figure for a person: `-` when missing or not finite."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "-"
    return pattern.format(value)


def _metric(metrics: Mapping[str, Any], part: str, row: str, key: str) -> Any:
    return ((metrics.get(part) or {}).get(row) or {}).get(key)


def model_card(strategy: Any) -> list[tuple[str, str]]:
    """The bundle as a trader reads it: what, trained on what, how good beside the naive baselines, its edge."""
    model = strategy.signal.model
    meta: Mapping[str, Any] = model.metadata
    metrics: Mapping[str, Any] = meta.get("metrics") or {}
    decision: Mapping[str, Any] = meta.get("decision") or {}
    ranges: Mapping[str, Any] = meta.get("ranges") or {}
    rows = [
        ("模型包 / bundle", f"{strategy.model_name}（{meta.get('model_type', '')}）"),
        ("合约 / product", str(meta.get("vt_symbol", strategy.vt_symbol))),
        ("标签 / label", f"{meta.get('label_kind', '')}，{meta.get('horizon', '')} 根K线 / bars"),
    ]
    for part in ("train", "valid", "test"):
        span = ranges.get(part) or ["", ""]
        rows.append((f"{part} 区间 / range", f"{str(span[0])[:16]} ~ {str(span[1])[:16]}"))
    for part in ("valid", "test"):
        ic = _metric(metrics, part, "model", "ic")
        naive = _metric(metrics, part, "last_return_sign", "ic")
        hit = _metric(metrics, part, "model", "directional_accuracy")
        naive_hit = _metric(metrics, part, "last_return_sign", "directional_accuracy")
        rows.append((f"{part} IC（基线 / naive）", f"{_number(ic)}（{_number(naive)}）"))
        rows.append((f"{part} 方向准确率（基线）", f"{_number(hit, '{:.2%}')}（{_number(naive_hit, '{:.2%}')}）"))
    rows += [
        ("验证期日均成交 / expected trades per day", _number(decision.get("trades_per_day"), "{:.2f}")),
        ("验证期净收益 / net edge", _number(decision.get("net_pnl"), "{:,.0f}")),
        ("阈值 / threshold", _number(strategy.threshold, "{:.6f}")),
        ("验证期结论 / edge", str(decision.get("edge", "-"))),
        ("创建于 / created", str(meta.get("created_at", "-"))),
        ("校验和 / checksum", str(strategy.model_checksum)[:16]),
    ]
    return rows


def quality_rows(strategy: Any, view: HealthView | None) -> list[tuple[str, str, str]]:
    """Live quality beside the validation figures."""
    metrics: Mapping[str, Any] = strategy.signal.model.metadata.get("metrics") or {}
    expected = (strategy.signal.model.metadata.get("decision") or {}).get("trades_per_day")
    if view is None:
        return [("实盘质量 / live quality", "未启用 / off", "-")]
    quality = view.quality
    return [
        ("IC", _number(quality.ic), _number(_metric(metrics, "valid", "model", "ic"))),
        ("rank IC", _number(quality.rank_ic), _number(_metric(metrics, "valid", "model", "rank_ic"))),
        (
            "命中率 / hit rate",
            _number(quality.hit_rate, "{:.2%}"),
            _number(_metric(metrics, "valid", "model", "directional_accuracy"), "{:.2%}"),
        ),
        ("成熟预测 / matured", str(quality.count), "-"),
        ("日均成交 / trades per day", _number(quality.trades_per_day, "{:.2f}"), _number(expected, "{:.2f}")),
    ]


def risk_figures(strategy: Any, main_engine: Any) -> RiskFigures:
    """Daily P&L against its limit, the margin in use against its cap, positions by contract, halts."""
    risk = strategy.risk
    state = risk.state
    spec = risk.spec
    price = state.last_price if math.isfinite(state.last_price) else 0.0
    held_lots = state.positions.long + state.positions.short
    positions = [
        (p.vt_symbol, "多" if p.direction == Direction.LONG else "空", float(p.volume))
        for p in main_engine.get_all_positions()
        if p.volume
    ]
    if not positions and risk.net_position:
        positions = [(strategy.vt_symbol, "多" if risk.net_position > 0 else "空", abs(risk.net_position))]
    return RiskFigures(
        daily_pnl=risk.daily_pnl,
        loss_limit=risk.loss_limit,
        margin_used=held_lots * price * spec.size * spec.margin_rate,
        margin_cap=risk.limits.max_position_ratio * risk.equity,
        positions=positions,
        halted=state.halt_reason if state.halted else "",
        held=state.hold_reason if state.held else "",
    )


def trade_marks(bars: list[BarData], trades: list[Any]) -> dict[int, list[tuple[float, str]]]:
    """Each fill on the bar it happened in: entries by side, exits."""
    times = [bar.datetime for bar in bars]
    marks: dict[int, list[tuple[float, str]]] = {}
    for trade in trades:
        if trade.datetime is None or not times:
            continue
        ix = bisect.bisect_right(times, trade.datetime) - 1
        if ix < 0 or trade.datetime - times[ix] > (
            times[1] - times[0] if len(times) > 1 else trade.datetime - times[ix]
        ):
            continue
        kind = ("long" if trade.direction == Direction.LONG else "short") if trade.offset == Offset.OPEN else "exit"
        marks.setdefault(ix, []).append((float(trade.price), kind))
    return marks


# --- the widget -----------------------------------------------------------------------------------------------


class SignalItem(ChartItem):
    """The prediction line over the ±threshold band, one segment per bar."""

    def __init__(self, manager: BarManager) -> None:
        super().__init__(manager)
        self.values: list[float] = []
        self.threshold = 0.0
        self.band_brush = pg.mkBrush(color=(70, 70, 110, 140))
        self.line_pen = pg.mkPen(color=(255, 200, 0), width=1.5)

    def set_values(self, values: list[float], threshold: float) -> None:
        self.values, self.threshold = values, threshold

    def _value(self, ix: int) -> float:
        return self.values[ix] if 0 <= ix < len(self.values) else math.nan

    def _draw_bar_picture(self, ix: int, bar: BarData) -> QtGui.QPicture:
        picture = QtGui.QPicture()
        painter = QtGui.QPainter(picture)
        painter.setPen(QtCore.Qt.PenStyle.NoPen)
        painter.setBrush(self.band_brush)
        painter.drawRect(QtCore.QRectF(ix - 0.5, -self.threshold, 1.0, 2 * self.threshold))
        now, before = self._value(ix), self._value(ix - 1)
        painter.setPen(self.line_pen)
        if math.isfinite(now) and math.isfinite(before):
            painter.drawLine(QtCore.QPointF(ix - 1, before), QtCore.QPointF(ix, now))
        elif math.isfinite(now):
            painter.drawPoint(QtCore.QPointF(ix, now))
        painter.end()
        return picture

    def boundingRect(self) -> QtCore.QRectF:
        low, high = self.get_y_range()
        return QtCore.QRectF(0, low, len(self._bar_picutures), high - low)

    def get_y_range(self, min_ix: int | None = None, max_ix: int | None = None) -> tuple[float, float]:
        chosen = self.values[min_ix or 0 : (max_ix + 1) if max_ix is not None else None]
        finite = [value for value in chosen if math.isfinite(value)] + [-self.threshold, self.threshold]
        low, high = min(finite), max(finite)
        return (low, high) if high > low else (low - 1e-6, high + 1e-6)

    def get_info_text(self, ix: int) -> str:
        return f"预测 / prediction\n{_number(self._value(ix), '{:+.6f}')}\n阈值 ±{self.threshold:.6f}"


class TradeItem(ChartItem):
    """Entries (▲ long, ▼ short) and exits (●) on the candles."""

    COLOURS: dict[str, tuple[int, int, int]] = {"long": (255, 75, 75), "short": (0, 220, 255), "exit": (255, 255, 255)}

    def __init__(self, manager: BarManager) -> None:
        super().__init__(manager)
        self.marks: dict[int, list[tuple[float, str]]] = {}

    def _draw_bar_picture(self, ix: int, bar: BarData) -> QtGui.QPicture:
        picture = QtGui.QPicture()
        painter = QtGui.QPainter(picture)
        span = max(bar.high_price - bar.low_price, bar.close_price * 5e-4)
        for price, kind in self.marks.get(ix, []):
            painter.setPen(pg.mkPen(color=(255, 255, 255), width=1))  # outlined: apart from the candles' colours
            painter.setBrush(pg.mkBrush(color=self.COLOURS[kind]))
            if kind == "exit":
                painter.drawEllipse(QtCore.QPointF(ix, price), 0.6, span * 0.5)
            else:
                tip = bar.low_price - span if kind == "long" else bar.high_price + span
                base = tip - span if kind == "long" else tip + span
                painter.drawPolygon(
                    QtGui.QPolygonF(
                        [QtCore.QPointF(ix, tip), QtCore.QPointF(ix - 0.9, base), QtCore.QPointF(ix + 0.9, base)]
                    )
                )
        painter.end()
        return picture

    def boundingRect(self) -> QtCore.QRectF:
        low, high = self._manager.get_price_range()
        return QtCore.QRectF(0, low, len(self._bar_picutures), high - low)

    def get_y_range(self, min_ix: int | None = None, max_ix: int | None = None) -> tuple[float, float]:
        low, high = self._manager.get_price_range(min_ix, max_ix)
        return float(low), float(high)

    def get_info_text(self, ix: int) -> str:
        names = {"long": "开多", "short": "开空", "exit": "平仓"}
        return "\n".join(f"{names[kind]} {price:g}" for price, kind in self.marks.get(ix, []))


def _table(headers: list[str]) -> QtWidgets.QTableWidget:
    table = QtWidgets.QTableWidget(0, len(headers))
    table.setHorizontalHeaderLabels(headers)
    table.verticalHeader().setVisible(False)
    table.horizontalHeader().setSectionResizeMode(QtWidgets.QHeaderView.ResizeMode.Stretch)
    table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
    return table


def _fill(table: QtWidgets.QTableWidget, rows: Sequence[Sequence[str]]) -> None:
    table.setRowCount(len(rows))
    for r, row in enumerate(rows):
        for c, value in enumerate(row):
            table.setItem(r, c, QtWidgets.QTableWidgetItem(value))


class AiPanel(QtWidgets.QWidget):
    """The AI desk: model card, live chart, live quality, drift, risk and the actions of one strategy."""

    def __init__(self, main_engine: MainEngine, event_engine: EventEngine) -> None:
        super().__init__()
        self.engine: AiEngine = main_engine.get_engine(APP_NAME)  # type: ignore[assignment]
        self.pending: list[Command] = []
        self.shown_bar: datetime | None = None
        self.data: PanelData | None = None
        self.setWindowTitle("AI 交易台 / AI desk")
        self.build()
        self.timer = QtCore.QTimer(self)
        self.timer.timeout.connect(self.refresh)
        self.timer.start(REFRESH_MS)
        self.refresh()

    # -- layout --

    def build(self) -> None:
        self.chooser = QtWidgets.QComboBox()
        self.chooser.currentTextChanged.connect(lambda _: self.refresh(force=True))
        self.status = QtWidgets.QLabel("")
        self.card = _table(["模型 / model", "值 / value"])
        self.quality = _table(["实盘质量 / live quality", "实盘 / live", "验证期 / validation"])
        self.drift_label = QtWidgets.QLabel("")
        self.drift_alert = QtWidgets.QLabel("")
        self.drift_alert.setStyleSheet("color: white; background: #b00020; padding: 4px; font-weight: bold")
        self.drift = _table(["漂移最大的特征 / worst features", "PSI"])
        self.risk_label = QtWidgets.QLabel("")
        self.loss_bar = QtWidgets.QProgressBar()
        self.loss_bar.setRange(0, 1000)
        self.margin_bar = QtWidgets.QProgressBar()
        self.margin_bar.setRange(0, 1000)
        self.positions = _table(["合约 / contract", "方向 / side", "数量 / volume"])
        self.halt_label = QtWidgets.QLabel("")
        self.halt_label.setWordWrap(True)
        self.chart = ChartWidget()
        self.chart.add_plot("candle", hide_x_axis=True)
        self.chart.add_plot("signal", maximum_height=220)
        self.chart.add_item(CandleItem, "candle", "candle")
        self.chart.add_item(TradeItem, "trades", "candle")
        self.chart.add_item(SignalItem, "prediction", "signal")
        self.chart.add_cursor()
        buttons = QtWidgets.QHBoxLayout()
        self.buttons: dict[str, QtWidgets.QPushButton] = {}
        for action, text in (
            ("halt", "暂停开仓 / halt"),
            ("resume", "恢复开仓 / resume"),
            ("flatten", "立即平仓 / flatten"),
            ("switch-model", "切换模型… / switch model"),
            ("report", "打开最近报告 / last report"),
        ):
            button = QtWidgets.QPushButton(text)
            button.clicked.connect(lambda _=False, chosen=action: self.act(chosen))
            buttons.addWidget(button)
            self.buttons[action] = button
        left = QtWidgets.QVBoxLayout()
        left.addWidget(self.card, 3)
        left.addWidget(self.quality, 2)
        right = QtWidgets.QVBoxLayout()
        for widget in (self.drift_label, self.drift_alert, self.drift):
            right.addWidget(widget)
        right.addWidget(self.risk_label)
        right.addWidget(QtWidgets.QLabel("当日盈亏 / 亏损上限  daily P&L vs limit"))
        right.addWidget(self.loss_bar)
        right.addWidget(QtWidgets.QLabel("保证金 / 上限  margin vs cap"))
        right.addWidget(self.margin_bar)
        right.addWidget(self.positions)
        right.addWidget(self.halt_label)
        top = QtWidgets.QHBoxLayout()
        top.addWidget(QtWidgets.QLabel("策略 / strategy"))
        top.addWidget(self.chooser)
        top.addWidget(self.status, 1)
        middle = QtWidgets.QHBoxLayout()
        middle.addLayout(left, 3)
        middle.addWidget(self.chart, 6)
        middle.addLayout(right, 3)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(top)
        layout.addLayout(middle, 1)
        layout.addLayout(buttons)

    # -- refreshing --

    def refresh(self, force: bool = False) -> None:
        """Show the chosen strategy as the engine sees it now, and the answers to the actions sent."""
        names = list(self.engine.strategies())
        if [self.chooser.itemText(i) for i in range(self.chooser.count())] != names:
            self.chooser.blockSignals(True)
            self.chooser.clear()
            self.chooser.addItems(names)
            self.chooser.blockSignals(False)
        self.collect_replies()
        data = self.engine.snapshot(self.chooser.currentText()) if names else None
        self.data = data
        if data is None:
            self.status.setText("没有已加载模型的策略 / no strategy with a model yet")
            return
        _fill(self.card, data.card)
        _fill(self.quality, data.quality)
        self.show_drift(data)
        self.show_risk(data.risk)
        last = data.bars[-1].datetime if data.bars else None
        if force or last != self.shown_bar:
            self.show_chart(data)
            self.shown_bar = last

    def show_chart(self, data: PanelData) -> None:
        signal: Any = self.chart._items["prediction"]
        signal.set_values(data.predictions, data.threshold)
        trades: Any = self.chart._items["trades"]
        trades.marks = data.marks
        self.chart.clear_all()
        self.chart.update_history(data.bars)
        # vnpy refits the y range only when the x range changes, and 240 new bars keep the same x range
        self.chart._update_y_range()

    def show_drift(self, data: PanelData) -> None:
        self.drift_label.setText(
            f"特征漂移 / drift：PSI 中位数 {_number(data.drift, '{:.3f}')}（上限 {_number(data.drift_limit, '{:g}')}，"
            f"窗口 {data.drift_rows} 根K线）"
        )
        self.drift_alert.setText("漂移警报：今日特征分布偏离训练分布 / DRIFT ALERT" if data.drift_alert else "")
        self.drift_alert.setVisible(data.drift_alert)
        _fill(self.drift, [(name, f"{value:.3f}") for name, value in data.worst])

    def show_risk(self, risk: RiskFigures) -> None:
        used = -risk.daily_pnl / -risk.loss_limit if risk.loss_limit < 0 and risk.daily_pnl < 0 else 0.0
        self.loss_bar.setValue(int(min(max(used, 0.0), 1.0) * 1000))
        self.loss_bar.setFormat(f"{risk.daily_pnl:,.0f} / {risk.loss_limit:,.0f}")
        share = risk.margin_used / risk.margin_cap if risk.margin_cap > 0 else 0.0
        self.margin_bar.setValue(int(min(max(share, 0.0), 1.0) * 1000))
        self.margin_bar.setFormat(f"{risk.margin_used:,.0f} / {risk.margin_cap:,.0f}")
        self.risk_label.setText(f"风控 / risk：当日盈亏 {risk.daily_pnl:,.2f}，上限 {risk.loss_limit:,.2f}")
        _fill(self.positions, [(symbol, side, f"{volume:g}") for symbol, side, volume in risk.positions])
        why = [f"熔断 / halted：{risk.halted}"] if risk.halted else []
        why += [f"暂停开仓 / held：{risk.held}"] if risk.held else []
        self.halt_label.setText("\n".join(why) or "正常交易 / trading normally")
        self.halt_label.setStyleSheet("color: #ff6060" if why else "color: #60ff60")

    # -- actions --

    def confirm(self, question: str) -> bool:
        """Ask before acting (tests replace this)."""
        answer_ = QtWidgets.QMessageBox.question(self, "确认 / confirm", question)
        return bool(answer_ == QtWidgets.QMessageBox.StandardButton.Yes)

    def choose_bundle(self) -> str:
        """A bundle folder picked by the trader ("" when cancelled; tests replace this)."""
        start = str(self.engine.home.models_dir) if self.engine.home else ""
        return QtWidgets.QFileDialog.getExistingDirectory(self, "选择模型包 / choose a bundle", start)

    def act(self, action: str) -> None:
        """One action, confirmed first, sent through the control spool (the same path as the command line)."""
        name = self.chooser.currentText()
        if not name or self.engine.home is None:
            return
        if action == "report":
            report = last_report(self.engine.home)
            if report is None:
                self.status.setText("没有报告 / no report yet")
            elif self.confirm(f"打开报告 {report}？"):
                QtGui.QDesktopServices.openUrl(QtCore.QUrl.fromLocalFile(str(report)))
            return
        bundle = self.choose_bundle() if action == "switch-model" else ""
        if action == "switch-model" and not bundle:
            return
        if not self.confirm(f"对策略 {name} 执行 {self.buttons[action].text()}{' ' + bundle if bundle else ''}？"):
            return
        command = new_command(name, action, bundle, by=f"panel:{os.environ.get('USER', '?')}")
        send_command(self.engine.home, command)
        self.pending.append(command)
        self.status.setText(f"已发送 / sent：{action}")

    def collect_replies(self) -> list[Reply]:
        """Answers that arrived for the actions sent, shown in the status line."""
        if self.engine.home is None:
            return []
        replies = []
        for command in list(self.pending):
            reply = await_reply(self.engine.home, command, 0.0)
            if reply is None and time.time() - command.created < 2 * COMMAND_TTL_SECONDS:
                continue
            self.pending.remove(command)
            if reply is not None:
                replies.append(reply)
                self.status.setText(f"{command.action}：{'完成' if reply.ok else '未执行'} {reply.message}")
        return replies


def last_report(home: Home) -> Path | None:
    """The newest backtest or research report under the home."""
    reports = [path for path in home.reports_dir.rglob("*.html") if path.is_file()] if home.reports_dir.exists() else []
    return max(reports, key=lambda path: path.stat().st_mtime) if reports else None


def register_ui_module() -> None:
    """vnpy's MainWindow imports `<app_module>.ui` for an app's widget: this flat module is that too (called by
    the composition root before the window is built)."""
    sys.modules.setdefault(UI_MODULE, sys.modules[__name__])
