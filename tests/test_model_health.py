"""The model-health switch: the training summary, drift, live quality, each trigger holding opening once, and a
healthy real replay that holds nothing."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from vnpy.trader.constant import Offset
from vnpy.trader.object import BarData

import data_collector
import ml_model
from config import CHINA_TZ, ConfigError, HealthSettings, load_settings
from model_health import (
    DISTRIBUTION_KEY,
    DriftWindow,
    HealthView,
    ModelWatch,
    Quality,
    feature_distribution,
    health_problem,
    health_problems,
    psi,
    quality_figures,
    view_dict,
)
from predictive_trading_strategy import OPENING_HELD, MemoryStateStore, ModelSignal, PredictiveTradingStrategy
from risk_manager import RiskManager
from tests.conftest import edit_metadata
from tests.test_predictive_trading_strategy import FakeCtaEngine, bar_at, scripted_strategy

NAMES = ["a", "b"]
START = datetime(2016, 1, 11, 9, 0, tzinfo=CHINA_TZ)
FAULT = 120  # the bar at which run_watched's fault begins
SMALL = HealthSettings(
    nonfinite_bars=3,
    out_of_range_bars=3,
    range_margin=0.5,
    drift_window_bars=60,
    max_drift_psi=1.0,
    quality_window=60,
    min_live_ic=-0.1,
    model_life_days=30,
)


def metadata(edge: str = "positive") -> dict[str, Any]:
    """A bundle's metadata as the watch reads it: standard-normal features, predictions within ±0.05."""
    rows = np.random.default_rng(1).standard_normal((5000, len(NAMES)))
    return {
        "name": "fake",
        "ranges": {"train": ["2015-09-01", "2015-11-30"], "test": ["2015-12-01", "2016-01-01 00:00:00+08:00"]},
        "decision": {"edge": edge, "trades_per_day": 4.0},
        DISTRIBUTION_KEY: {
            "bins": 10,
            "features": feature_distribution(rows, NAMES),
            "predictions": {"low": -0.05, "high": 0.05},
        },
    }


# --- pure parts -----------------------------------------------------------------------------------------------


def test_every_rule_fails_on_its_own_and_a_healthy_view_passes() -> None:
    healthy = HealthView(low=-1, high=1, drift=0.1, quality=Quality(count=100, ic=0.05), age_days=3)
    assert health_problems(healthy, SMALL) == [] and health_problem(healthy, SMALL) == ("", "")
    cases: dict[str, dict[str, Any]] = {
        "edge": {"edge_none": True},
        "nonfinite": {"nonfinite_run": 3},
        "range": {"out_of_range_run": 3},
        "drift": {"drift": 1.2, "worst": (("a", 2.5),)},
        "ic": {"quality": Quality(count=60, ic=-0.2)},
        "age": {"age_days": 31},
    }
    for kind, change in cases.items():
        view = replace(healthy, **change)
        failing = health_problems(view, SMALL)
        assert [k for k, _ in failing] == [kind], kind
        assert failing[0][1]  # a reason a person can read
    # a low IC over too few matured predictions is noise, not a failure
    assert health_problems(replace(healthy, quality=Quality(count=59, ic=-0.9)), SMALL) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"nonfinite_bars": 1}, "health.nonfinite_bars"),
        ({"max_drift_psi": 0.0}, "health.max_drift_psi"),
        ({"range_margin": -0.1}, "health.range_margin"),
        ({"min_live_ic": 1.0}, "health.min_live_ic"),
        ({"model_life_days": -1.0}, "health.model_life_days"),
    ],
)
def test_health_settings_are_checked(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        HealthSettings(**change)


def test_health_settings_load_from_the_settings_folder_and_unknown_keys_are_refused(tmp_path: Path) -> None:
    assert load_settings().health == HealthSettings()  # settings/health.json holds the defaults
    (tmp_path / "health.json").write_text(json.dumps({"max_drift_psi": 2}), encoding="utf-8")
    assert load_settings([tmp_path]).health.max_drift_psi == 2.0
    (tmp_path / "health.json").write_text(json.dumps({"drift": 2}), encoding="utf-8")
    with pytest.raises(ConfigError, match="health.drift"):
        load_settings([tmp_path])


def test_psi_is_zero_for_the_training_distribution_and_large_for_a_shifted_one() -> None:
    rng = np.random.default_rng(7)
    summary = {"features": feature_distribution(rng.standard_normal((20000, 2)), NAMES)}
    same, shifted = DriftWindow(summary, NAMES, 2000), DriftWindow(summary, NAMES, 2000)
    for row in rng.standard_normal((2500, 2)):
        same.push(row)
        shifted.push(row + np.array([2.0, 0.0]))
    assert max(value for _, value in same.values()) < 0.02
    worst = shifted.values()
    assert worst[0][0] == "a" and worst[0][1] > 1.0 and worst[1][1] < 0.02
    # the incremental counts equal counting the window afresh
    fresh = DriftWindow(summary, NAMES, 2000)
    for row in list(shifted.rows)[-2000:]:
        fresh.counts[0][row[0]] += 1
        fresh.counts[1][row[1]] += 1
    assert [c.tolist() for c in fresh.counts] == [c.tolist() for c in shifted.counts]
    assert psi(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0.0


def test_a_discrete_feature_keeps_its_shares() -> None:
    night = np.r_[np.zeros(700), np.ones(300)][:, None]
    summary = feature_distribution(night, ["night"])["night"]
    assert summary["edges"] == [0.0, 1.0] and summary["proportions"] == pytest.approx([0.0, 0.7, 0.3])


def test_matured_predictions_give_the_ic_rank_ic_and_hit_rate_of_their_pairs() -> None:
    watch = ModelWatch(metadata(), NAMES, 2, SMALL, False)
    closes = 3000 * np.exp(np.cumsum(np.random.default_rng(3).normal(0, 0.002, 40)))
    predictions = np.random.default_rng(4).normal(0, 0.01, 40)
    for i in range(40):
        watch.update(START + timedelta(minutes=i), closes[i], np.zeros(2), predictions[i], False)
    watch.refresh()
    outcomes = closes[2:] / closes[:-2] - 1
    expected = quality_figures(predictions[:-2], outcomes)
    quality = watch.view().quality
    assert quality.count == 38
    assert (quality.ic, quality.rank_ic, quality.hit_rate) == pytest.approx(expected)
    watch.update(START + timedelta(minutes=40), closes[-1], None, math.nan, True)  # a roll gap restarts pairing
    assert not watch.pending


def test_the_training_summary_is_sealed_in_the_bundle_and_an_old_bundle_only_loses_the_drift_check(
    rf_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = ml_model.PricePredictionModel().load_model(rf_bundle)
    summary = model.metadata[DISTRIBUTION_KEY]
    assert set(summary["features"]) == set(model.names) and len(model.names) == 30
    assert all(abs(sum(f["proportions"]) - 1) < 1e-9 for f in summary["features"].values())
    assert summary["predictions"]["low"] < 0 < summary["predictions"]["high"]
    old = tmp_path / "old"
    shutil.copytree(rf_bundle, old)
    metadata_file = old / ml_model.METADATA_FILE
    raw = json.loads(metadata_file.read_text(encoding="utf-8"))
    raw.pop(DISTRIBUTION_KEY)
    metadata_file.write_text(json.dumps(raw), encoding="utf-8")
    edit_metadata(old)  # sealed again: a bundle from before the summary existed
    loaded = ml_model.PricePredictionModel().load_model(old)
    assert DISTRIBUTION_KEY not in loaded.metadata
    watch = ModelWatch(loaded.metadata, loaded.names, 5, HealthSettings(), False)
    assert watch.drift is None and math.isnan(watch.view().drift)
    assert "没有训练分布摘要" in caplog.text


# --- the switch in the strategy -------------------------------------------------------------------------------


class WatchedSignal:
    """A scripted model whose features and predictions a test chooses bar by bar."""

    def __init__(self) -> None:
        from types import SimpleNamespace

        self.model = SimpleNamespace(metadata={**metadata(), "metrics": {"valid": {"model": {"ic": 0.05}}}})
        self.features: np.ndarray | None = None
        self.expected_gap = False
        self.next: tuple[np.ndarray | None, float, bool] = (None, math.nan, True)

    def update(self, bar: BarData) -> float:
        self.features, prediction, self.expected_gap = self.next
        return prediction


def run_watched(kind: str, bars: int = 260, start: datetime = START) -> tuple[Any, FakeCtaEngine, list[int]]:
    """A strategy with the health switch on, fed a random walk whose predictions foresee the 2-bar return; from bar
    FAULT on the scripted fault `kind` begins (none for "healthy"). Returns the strategy, its engine and the number
    of orders sent before each bar."""
    strategy, engine = scripted_strategy([], threshold=0.001)
    strategy.store = MemoryStateStore()
    strategy.health = SMALL
    strategy.watch = ModelWatch(metadata("none" if kind == "edge" else "positive"), NAMES, 2, SMALL, kind == "edge")
    signal = WatchedSignal()
    strategy.signal = signal  # type: ignore[assignment]
    rng = np.random.default_rng(11)
    closes = np.round(3000 * np.exp(np.cumsum(rng.normal(0, 0.002, bars + 2))))
    sent = []
    for i in range(bars):
        when = start + timedelta(minutes=i)
        row = rng.standard_normal(2)
        prediction = float(closes[i + 2] / closes[i] - 1)
        if i >= FAULT:
            if kind == "nonfinite":
                row, prediction = np.array([math.nan, 0.0]), math.nan
            elif kind == "range":
                prediction = 0.5
            elif kind == "drift":
                row = row + 4.0
            elif kind == "ic":
                prediction = -prediction
        signal.next = (row, prediction, False)
        sent.append(len(engine.orders))
        strategy.on_bar(bar_at(when, float(closes[i])))
        for vt_orderid in list(engine.active):
            engine.fill(strategy, vt_orderid, when)
    return strategy, engine, sent


def opening_orders_after(engine: FakeCtaEngine, count: int) -> int:
    return sum(order.offset == Offset.OPEN for order in engine.orders[count:])


def holds(strategy: Any) -> list[dict[str, Any]]:
    return [fields for event, fields in strategy.store.events if event == "opening_hold"]


def test_a_healthy_model_is_never_held_and_keeps_opening() -> None:
    strategy, engine, _ = run_watched("healthy")
    assert holds(strategy) == [] and not strategy.risk.held
    assert opening_orders_after(engine, 0) >= 10
    assert not any(OPENING_HELD in line for line in engine.logs)
    figures = view_dict(strategy.health_view())
    assert figures["quality"]["ic"] > 0.5 and figures["quality"]["count"] == SMALL.quality_window


@pytest.mark.parametrize("kind", ["nonfinite", "range", "drift", "ic", "edge"])
def test_each_trigger_holds_opening_once_with_one_alert_line_and_one_audit_record(kind: str) -> None:
    strategy, engine, sent = run_watched(kind)
    events = holds(strategy)
    assert len(events) == 1 and events[0]["kind"] == kind, strategy.store.events
    assert sum(OPENING_HELD in line for line in engine.logs) == 1
    assert strategy.risk.held and strategy.risk.status == "HELD"
    assert strategy.health_state == events[0]["reason"] and events[0]["checksum"] == strategy.model_checksum
    assert events[0]["health"]["edge_none"] == (kind == "edge")
    assert strategy.store.state["risk"]["held"] is True  # saved: a restart keeps the hold
    held_bar = int((datetime.fromisoformat(events[0]["time"]) - START).total_seconds() // 60)
    assert held_bar == 0 if kind == "edge" else held_bar >= FAULT
    assert opening_orders_after(engine, sent[held_bar]) == 0  # from the hold on: closing only
    assert kind == "edge" or opening_orders_after(engine, 0) > 0  # it opened while healthy


def test_after_a_hold_nothing_opens_and_a_resume_is_the_only_way_back() -> None:
    strategy, engine, _ = run_watched("drift", bars=200)
    held_at = datetime.fromisoformat(holds(strategy)[0]["time"])
    count = len(engine.orders)
    # more faulty bars: still held, no second alert, only closing orders
    rng = np.random.default_rng(5)
    signal = strategy.signal
    for i in range(200, 300):
        when = START + timedelta(minutes=i)
        signal.next = (rng.standard_normal(2) + 4.0, 0.01 if i % 20 < 10 else -0.01, False)
        strategy.on_bar(bar_at(when, 3000.0 + (i % 7)))
        for vt_orderid in list(engine.active):
            engine.fill(strategy, vt_orderid, when)
    assert opening_orders_after(engine, count) == 0 and len(holds(strategy)) == 1
    assert held_at >= START + timedelta(minutes=FAULT)
    assert strategy.resume_opening("test") is True and not strategy.risk.held
    assert [event for event, _ in strategy.store.events][-1] == "opening_resume"
    count = len(engine.orders)
    for i in range(300, 340):  # the drift a person resumed over does not hold again while it lasts
        when = START + timedelta(minutes=i)
        signal.next = (rng.standard_normal(2) + 4.0, 0.01 if i % 20 < 10 else -0.01, False)
        strategy.on_bar(bar_at(when, 3000.0 + (i % 7)))
        for vt_orderid in list(engine.active):
            engine.fill(strategy, vt_orderid, when)
    assert opening_orders_after(engine, count) > 0 and len(holds(strategy)) == 1
    assert strategy.resume_opening("test") is False  # nothing held


def test_a_model_past_its_life_is_held_at_the_first_bar() -> None:
    strategy, engine, _ = run_watched("healthy", bars=30, start=datetime(2016, 3, 1, 9, 0, tzinfo=CHINA_TZ))
    events = holds(strategy)
    assert [e["kind"] for e in events] == ["age"] and opening_orders_after(engine, 0) == 0


def test_a_hold_survives_a_new_trading_day_and_a_restart_unlike_the_daily_loss_halt() -> None:
    strategy, _, _ = run_watched("range", bars=150)
    saved = strategy.store.state
    risk = RiskManager(strategy.risk.limits, strategy.risk.spec, strategy.capital)
    risk.restore(saved["risk"])
    assert risk.held and "训练范围" in risk.state.hold_reason
    risk.mark(3000.0, START + timedelta(days=3))  # a new trading day lifts a loss halt, not a hold
    assert risk.held
    old_state = {key: value for key, value in saved["risk"].items() if key not in ("held", "hold_reason", "held_at")}
    risk.restore(old_state)  # a state written before holds existed
    assert not risk.held


def test_without_the_health_switch_a_no_edge_bundle_is_held_from_init_as_before(
    rf_bundle: Path, tmp_path: Path
) -> None:
    from tests.conftest import resealed_copy

    bundle = resealed_copy(rf_bundle, tmp_path / "none", decision={"edge": "none", "trades_per_day": 1.0})
    engine = FakeCtaEngine()
    strategy = PredictiveTradingStrategy(engine, "test", "rb0000.SHFE", {"model_path": str(bundle)})
    strategy.on_init()
    assert strategy.risk is not None and strategy.risk.held and strategy.watch is None
    assert [fields["kind"] for fields in holds(strategy)] == ["edge"]
    assert sum(OPENING_HELD in line for line in engine.logs) == 1


# --- a real replay ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_nothing_holds_on_a_healthy_real_replay(rf_bundle: Path, sample_frame: pd.DataFrame) -> None:
    """Four months after the bundle's data (2016-01 .. 04, ~24,000 bars) with the default limits: no rule fails."""
    model = ml_model.PricePredictionModel().load_model(rf_bundle, vt_symbol="rb0000.SHFE")
    signal = ModelSignal(model, "rb0000.SHFE")
    settings = HealthSettings()
    watch = ModelWatch(model.metadata, model.names, model.config.horizon, settings, False)
    frame = sample_frame.loc[pd.Timestamp("2016-01-01", tz=CHINA_TZ) : pd.Timestamp("2016-04-30", tz=CHINA_TZ)]
    worst_drift, failing = 0.0, []
    for n, bar in enumerate(data_collector.frame_to_bars(frame, "rb0000.SHFE")):
        prediction = signal.update(bar)
        watch.update(bar.datetime, bar.close_price, signal.features, prediction, signal.expected_gap)
        if n % 50 == 0:
            view = watch.view()
            failing += health_problems(view, settings)
            worst_drift = max(worst_drift, view.drift if math.isfinite(view.drift) else 0.0)
    view = watch.view()
    assert failing == []
    assert view.quality.count == settings.quality_window and view.drift_rows == settings.drift_window_bars
    assert 0 < worst_drift < settings.max_drift_psi and view.nonfinite_run == 0


def test_the_live_root_sends_one_critical_alert_per_hold_line() -> None:
    from types import SimpleNamespace

    import live_trading

    sent: list[tuple[str, str, str | None]] = []
    audited: list[str] = []
    root: Any = SimpleNamespace(
        strategy_name="ai_rb",
        mailer=SimpleNamespace(send_alert=lambda text, level, key=None: sent.append((text, level, key))),
        audit=SimpleNamespace(write=lambda event, **fields: audited.append(event)),
    )
    line = f"[ai_rb]  {OPENING_HELD}：特征分布漂移；只允许平仓"
    live_trading.AITradingSystem._on_strategy_log(root, SimpleNamespace(data=SimpleNamespace(msg=line)))
    live_trading.AITradingSystem._on_strategy_log(root, SimpleNamespace(data=SimpleNamespace(msg="[ai_rb]  下单")))
    assert [(level, key) for _, level, key in sent] == [("CRITICAL", "hold_ai_rb")] and "漂移" in sent[0][0]


def test_the_heartbeat_and_the_daily_summary_carry_the_same_health_figures(home: Any) -> None:
    from config import EmailSettings, MonitorSettings
    from monitor import AlertMailer, SystemMonitor

    strategy, _, _ = run_watched("drift")
    mailer = AlertMailer(EmailSettings(), "", 600.0)
    watcher = SystemMonitor(MonitorSettings(daily_summary_time=""), mailer, heartbeat_path=home.heartbeat_path)
    watcher.set_model_figures(lambda: {"ai_rb": strategy.health_figures()})
    watcher.write_heartbeat()
    beat = json.loads(home.heartbeat_path.read_text(encoding="utf-8"))
    figures = beat["models"]["ai_rb"]
    view = view_dict(strategy.health_view())
    assert figures["health"] == json.loads(json.dumps(view)) and figures["held"] is True
    assert figures["hold_reason"] == strategy.risk.state.hold_reason and figures["checksum"] == strategy.model_checksum
    assert {"pid", "time", "unix"} <= set(beat) and figures["valid_ic"] == 0.05
    text = watcher._summary_text(datetime(2016, 1, 11, 15, 30, tzinfo=CHINA_TZ), mailer.take_digest(), 0)
    assert "模型健康 / model health:" in text and strategy.risk.state.hold_reason in text
    assert f"实盘 / live IC {view['quality']['ic']:.4f}" in text
    assert f"漂移 / drift PSI {view['drift_psi']:.3f}" in text
    watcher.set_model_figures(lambda: 1 / 0)  # type: ignore[arg-type,return-value]
    watcher.write_heartbeat()  # a broken provider never stops the heartbeat
    assert "models" not in json.loads(home.heartbeat_path.read_text(encoding="utf-8"))
    mailer.stop(1.0)


def test_a_resumed_failure_and_a_flatten_are_remembered_across_a_restart() -> None:
    strategy, _, _ = run_watched("drift", bars=200)
    assert strategy.resume_opening("test")
    saved = strategy.store.state
    assert "drift" in saved["health"]["acknowledged"]
    restarted, _ = scripted_strategy([], threshold=0.001)
    restarted.restore_state(saved)
    assert restarted.acknowledged == set(saved["health"]["acknowledged"]) and not restarted.flattening
    strategy.flatten("test")
    again, _ = scripted_strategy([], threshold=0.001)
    again.restore_state(strategy.store.state)
    assert again.flattening and again.risk is not None and again.risk.held
