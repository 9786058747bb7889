"""The AI panel driven offscreen with pytest-qt on a replay of real bars: the figures it shows are the engine's,
its actions reach the strategy through the control spool, and shifted bars raise the drift alert."""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

pytest.importorskip("pytestqt")  # requirements-dev.txt: pytest-qt
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before pytest-qt makes its QApplication

import data_collector
import live_trading
from config import CHINA_TZ, AuditLog, HealthSettings, Home
from model_health import health_problems
from predictive_trading_strategy import MemoryStateStore, PredictiveTradingStrategy
from tests.test_predictive_trading_strategy import FakeCtaEngine

VT = "rb0000.SHFE"
PANEL_HEALTH = HealthSettings(
    drift_window_bars=300, quality_window=300, max_drift_psi=1.5, min_live_ic=-0.5
)  # short windows


@dataclass
class FakeMainEngine:
    """What the panel and its engine read of vnpy's MainEngine."""

    engines: dict[str, Any] = field(default_factory=dict)
    trades: list[Any] = field(default_factory=list)

    def get_engine(self, name: str) -> Any:
        return self.engines[name]

    def get_all_trades(self) -> list[Any]:
        return self.trades

    def get_all_positions(self) -> list[Any]:
        return []


def replayed_strategy(rf_bundle: Path, bars: list[Any]) -> tuple[PredictiveTradingStrategy, FakeCtaEngine]:
    """The strategy with the health switch on, fed these real bars as a live replay (every order filled)."""
    engine = FakeCtaEngine()
    strategy = PredictiveTradingStrategy(engine, "ai_rb", VT, {"model_path": str(rf_bundle), "fixed_size": 1})
    strategy.store = MemoryStateStore()
    strategy.health = PANEL_HEALTH
    strategy.on_init()
    strategy.inited = strategy.trading = True
    feed(strategy, engine, bars)
    return strategy, engine


def feed(strategy: PredictiveTradingStrategy, engine: FakeCtaEngine, bars: list[Any]) -> None:
    for bar in bars:
        strategy.on_bar(bar)
        for vt_orderid in list(engine.active):
            engine.fill(strategy, vt_orderid, bar.datetime)


@pytest.fixture
def panel(qtbot: Any, home: Home, rf_bundle: Path, sample_frame: pd.DataFrame) -> Any:
    """The panel over a replay of 2016-03-01 .. 03 (about 1,000 bars) through the app's engine."""
    import ai_panel

    frame = sample_frame.loc[pd.Timestamp("2016-03-01", tz=CHINA_TZ) : pd.Timestamp("2016-03-03 15:00", tz=CHINA_TZ)]
    strategy, _ = replayed_strategy(rf_bundle, data_collector.frame_to_bars(frame, VT))
    main = FakeMainEngine()
    desk = ai_panel.AiEngine.__new__(ai_panel.AiEngine)
    desk.main_engine = main  # type: ignore[assignment]
    desk.home, desk.audit, desk.strategies = home, AuditLog(home.audit_path), lambda: {"ai_rb": strategy}
    main.engines[ai_panel.APP_NAME] = desk
    widget = ai_panel.AiPanel(main, None)  # type: ignore[arg-type]
    widget.timer.stop()  # the test refreshes by hand
    qtbot.addWidget(widget)
    widget.resize(1600, 900)
    widget.refresh(force=True)
    return widget


def cells(table: Any) -> list[tuple[str, ...]]:
    return [tuple(table.item(r, c).text() for c in range(table.columnCount())) for r in range(table.rowCount())]


def test_the_panel_shows_the_engines_figures(panel: Any) -> None:
    data = panel.engine.snapshot("ai_rb")
    strategy = panel.engine.strategies()["ai_rb"]
    assert cells(panel.card) == data.card and cells(panel.quality) == data.quality
    card = dict(data.card)
    assert (
        card["模型包 / bundle"].startswith(strategy.model_name)
        and card["阈值 / threshold"] == f"{strategy.threshold:.6f}"
    )
    assert card["校验和 / checksum"] == strategy.model_checksum[:16]
    view = strategy.health_view()
    quality = dict((row[0], row[1]) for row in data.quality)
    assert quality["IC"] == f"{view.quality.ic:.4f}" and quality["成熟预测 / matured"] == str(view.quality.count)
    assert view.quality.count == PANEL_HEALTH.quality_window
    assert cells(panel.drift) == [(name, f"{value:.3f}") for name, value in view.worst]
    assert f"{view.drift:.3f}" in panel.drift_label.text() and panel.drift_alert.isHidden()
    risk = data.risk
    assert risk.daily_pnl == pytest.approx(strategy.risk.daily_pnl)
    assert panel.loss_bar.text() == f"{risk.daily_pnl:,.0f} / {risk.loss_limit:,.0f}"
    assert panel.halt_label.text() == "正常交易 / trading normally"
    manager = panel.chart._manager
    assert manager.get_count() == len(data.bars) == 240
    assert manager.get_bar(239).datetime == strategy.recent_bars[-1].datetime
    signal = panel.chart._items["prediction"]
    assert signal.values == data.predictions and signal.threshold == strategy.threshold
    finite = [value for value in data.predictions if math.isfinite(value)]
    assert len(finite) > 200 and finite[-1] == pytest.approx(list(strategy.recent_predictions)[-1])


def test_the_chart_follows_new_bars_and_keeps_them_in_view(panel: Any, sample_frame: pd.DataFrame) -> None:
    strategy = panel.engine.strategies()["ai_rb"]
    night = pd.Timestamp("2016-03-03 21:00", tz=CHINA_TZ)
    frame = sample_frame.loc[night : night + pd.Timedelta(hours=18)]
    feed(strategy, strategy.cta_engine, data_collector.frame_to_bars(frame, VT))
    panel.refresh()
    (left, right), (low, high) = panel.chart.get_plot("candle").getViewBox().viewRange()
    shown = list(strategy.recent_bars)[-240:][max(0, int(left)) : int(right) + 1]
    assert panel.chart._manager.get_bar(239).datetime == strategy.recent_bars[-1].datetime
    assert low <= min(bar.low_price for bar in shown) and max(bar.high_price for bar in shown) <= high


def test_actions_ask_first_then_reach_the_strategy_through_the_control_spool(
    panel: Any, qtbot: Any, monkeypatch: pytest.MonkeyPatch, other_bundle: Path
) -> None:
    strategy = panel.engine.strategies()["ai_rb"]
    asked: list[str] = []

    def confirm(question: str) -> bool:
        asked.append(question)
        return len(asked) > 1

    monkeypatch.setattr(panel, "confirm", confirm)
    panel.buttons["halt"].click()  # the first question is answered no: nothing is sent
    assert panel.engine.poll() == 0 and not strategy.risk.held
    panel.buttons["halt"].click()
    assert panel.engine.poll() == 1 and strategy.risk.held and "panel:" in strategy.risk.state.hold_reason
    panel.refresh()
    assert "完成" in panel.status.text() and "暂停开仓" in panel.halt_label.text()
    panel.buttons["resume"].click()
    assert panel.engine.poll() == 1 and not strategy.risk.held
    monkeypatch.setattr(panel, "choose_bundle", lambda: str(other_bundle))
    panel.buttons["switch-model"].click()
    assert panel.engine.poll() == 1
    qtbot.waitUntil(lambda: strategy.pending_switch is not None, timeout=30_000)
    qtbot.waitUntil(lambda: panel.refresh() is None and "switch-model：完成" in panel.status.text(), timeout=5_000)
    controls = [record["action"] for record in audit_lines(panel.engine.home)]
    assert controls == ["halt", "resume", "switch-model"]


def audit_lines(home: Home) -> list[dict[str, Any]]:
    import json

    lines = home.audit_path.read_text(encoding="utf-8").splitlines()
    return [record for record in map(json.loads, lines) if record["event"] == "control"]


@pytest.fixture
def other_bundle(rf_bundle: Path, tmp_path: Path) -> Path:
    """A copy of the bundle with another threshold: the same features, another checksum."""
    from tests.conftest import edit_metadata

    copy = tmp_path / "rf_copy"
    shutil.copytree(rf_bundle, copy)
    edit_metadata(copy, threshold=0.0009)
    return copy


def test_shifted_bars_raise_the_drift_alert(panel: Any) -> None:
    strategy = panel.engine.strategies()["ai_rb"]
    last = strategy.recent_bars[-1]
    shifted = []
    price = last.close_price
    for n in range(PANEL_HEALTH.drift_window_bars + 50):  # a market the training months never saw
        step = 0.004 if (n // 40) % 2 == 0 else -0.003
        new = price * (1 + step)
        bar = data_collector.frame_to_bars(
            pd.DataFrame(
                {
                    "open": [price],
                    "high": [max(price, new) * 1.006],
                    "low": [min(price, new) * 0.994],
                    "close": [new],
                    "volume": [last.volume * 20],
                },
                index=pd.DatetimeIndex([last.datetime + timedelta(minutes=n + 1)]),
            ),
            VT,
        )[0]
        shifted.append(bar)
        price = new
    engine: Any = strategy.cta_engine
    feed(strategy, engine, shifted)
    panel.refresh()
    assert not panel.drift_alert.isHidden() and "漂移警报" in panel.drift_alert.text()
    assert "drift" in [kind for kind, _ in health_problems(strategy.health_view(), PANEL_HEALTH)]
    assert strategy.risk.held and strategy.risk.state.hold_reason in panel.halt_label.text()  # held, and why


def test_the_panel_is_registered_as_a_vnpy_app_for_the_main_windows_menu() -> None:
    import importlib
    import sys

    import ai_panel

    ai_panel.register_ui_module()
    app = ai_panel.AiDeskApp()
    ui = importlib.import_module(app.app_module + ".ui")  # what MainWindow.init_menu does
    assert getattr(ui, app.widget_name) is ai_panel.AiPanel and app.engine_class is ai_panel.AiEngine
    assert sys.modules[ai_panel.UI_MODULE] is ai_panel
    assert live_trading.COMMAND_TTL_SECONDS > 0


@pytest.mark.slow
def test_trade_screenshot_also_saves_the_ai_panel_filled_from_a_real_replay(
    imported_home: Home, rf_bundle: Path, tmp_path: Path
) -> None:
    """The acceptance command: a SIM replay with the UI writes the main window, the CTA manager and the AI panel."""
    from PySide6.QtGui import QImage

    from tests.test_live_trading import home_with_bars, run_cli

    home = home_with_bars(imported_home, tmp_path)
    shot = tmp_path / "shot.png"
    args = ("trade", "--gateway", "sim", "--replay-start", "2016-06-01", "--replay-end", "2016-06-03")
    result = run_cli(home, *args, "--speed", "max", "--model", str(rf_bundle), "--screenshot", str(shot), timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    panel = QImage(str(tmp_path / "shot_ai.png"))
    assert (panel.width(), panel.height()) == (1800, 1000)
    colours = {panel.pixel(x, y) for x in range(0, panel.width(), 10) for y in range(0, panel.height(), 10)}
    assert len(colours) > 50  # candles, the prediction line and its band, tables: not an empty window
    falling = sum(panel.pixel(x, y) & 0xFFFFFF == 0x00FFFF for x in range(panel.width()) for y in range(0, 700, 2))
    assert falling > 100  # vnpy's falling candles are drawn in view (a stale y range once left the chart empty)
    for other in ("shot.png", "shot_cta.png"):
        assert (tmp_path / other).exists()
    keep = os.environ.get("AI_PANEL_SHOT")  # where to keep a copy (docs/ai-panel.png is made this way)
    if keep:
        shutil.copy(tmp_path / "shot_ai.png", keep)
