"""The AI desk: the control spool, the commands carried out on a strategy, and switching models while trading."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from vnpy.trader.constant import Direction, Offset

import ai_panel
import ai_trading_system
import data_collector
import data_processor
import live_trading
import ml_model
from config import CHINA_TZ, AuditLog, ConfigError, Home
from predictive_trading_strategy import MemoryStateStore, ModelSignal, PredictiveTradingStrategy
from tests.test_predictive_trading_strategy import FRIDAY, FakeCtaEngine, bar_at, scripted_strategy

VT = "rb0000.SHFE"


def audit_events(home: Home, event: str) -> list[dict[str, Any]]:
    if not home.audit_path.exists():
        return []
    lines = home.audit_path.read_text(encoding="utf-8").splitlines()
    return [record for record in map(json.loads, lines) if record["event"] == event]


def desk(home: Home, strategies: dict[str, Any]) -> ai_panel.AiEngine:
    """The app's engine without vnpy's engines around it: the spool of `home`, these strategies."""
    engine = ai_panel.AiEngine.__new__(ai_panel.AiEngine)
    engine.home, engine.audit, engine.strategies = home, AuditLog(home.audit_path), lambda: strategies
    return engine


# --- the spool ------------------------------------------------------------------------------------------------


def test_a_command_is_written_whole_claimed_once_and_cannot_be_withdrawn_after(home: Home) -> None:
    command = live_trading.new_command("ai_rb", "halt")
    path = live_trading.send_command(home, command)
    assert json.loads(path.read_text(encoding="utf-8"))["action"] == "halt"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left beside it
    assert live_trading.claim_commands(home, "ai_rb") == [command]
    assert live_trading.claim_commands(home, "ai_rb") == [] and not live_trading.withdraw(path)
    other = live_trading.send_command(home, live_trading.new_command("ai_rb", "resume"))
    assert live_trading.withdraw(other) and live_trading.claim_commands(home, "ai_rb") == []


def test_a_malformed_command_file_is_dropped_and_bad_commands_are_refused(home: Home) -> None:
    folder = live_trading.inbox(home, "ai_rb")
    folder.mkdir(parents=True)
    (folder / "1-bad.json").write_text("{not json", encoding="utf-8")
    (folder / "2-bad.json").write_text(json.dumps({"action": "explode"}), encoding="utf-8")
    assert live_trading.claim_commands(home, "ai_rb") == [] and list(folder.iterdir()) == []
    with pytest.raises(ConfigError, match="未知操作"):
        live_trading.new_command("ai_rb", "explode")
    with pytest.raises(ConfigError, match="switch-model"):
        live_trading.new_command("ai_rb", "switch-model")
    with pytest.raises(ConfigError, match="策略名无效"):
        live_trading.new_command("../x", "halt")


# --- commands on a strategy -----------------------------------------------------------------------------------


def test_halt_resume_and_flatten_reach_the_strategy_and_each_is_audited_and_answered(home: Home) -> None:
    strategy, engine = scripted_strategy([0.002] * 6, threshold=0.001)
    engine_desk = desk(home, {"ai_rb": strategy})
    strategy.on_bar(bar_at(FRIDAY, 3000))
    engine.fill(strategy, engine.orders[0].vt_orderid, FRIDAY)
    assert strategy.pos == 1

    def run(action: str) -> live_trading.Reply:
        command = live_trading.new_command("ai_rb", action, by="test")
        live_trading.send_command(home, command)
        assert engine_desk.poll() == 1
        reply = live_trading.await_reply(home, command, 1.0)
        assert reply is not None
        return reply

    assert run("halt").ok and strategy.risk is not None and strategy.risk.held
    assert "人工暂停开仓" in strategy.risk.state.hold_reason
    assert run("resume").ok and not strategy.risk.held
    assert not run("resume").ok  # nothing held: refused, still audited
    count = len(engine.orders)
    assert run("flatten").ok and strategy.risk.held and strategy.flattening
    assert [(o.direction, o.offset) for o in engine.orders[count:]] == [(Direction.SHORT, Offset.CLOSE)]
    engine.fill(strategy, engine.orders[-1].vt_orderid, FRIDAY + timedelta(minutes=1))
    for n in range(2, 5):  # a strong signal opens nothing while flattened
        strategy.on_bar(bar_at(FRIDAY + timedelta(minutes=n), 3000))
    assert strategy.pos == 0 and len(engine.orders) == count + 1
    controls = audit_events(home, "control")
    assert [(c["action"], c["ok"], c["by"]) for c in controls] == [
        ("halt", True, "test"),
        ("resume", True, "test"),
        ("resume", False, "test"),
        ("flatten", True, "test"),
    ]


def test_a_stale_command_or_one_for_a_strategy_not_running_is_refused(home: Home) -> None:
    engine_desk = desk(home, {"ai_rb": PredictiveTradingStrategy(FakeCtaEngine(), "ai_rb", VT, {})})
    old = live_trading.Command("1-old", "ai_rb", "halt", "", "test", time.time() - 3600)
    live_trading.send_command(home, old)
    engine_desk.poll()
    reply = live_trading.await_reply(home, old, 1.0)
    assert reply is not None and not reply.ok and "过期" in reply.message
    fresh = live_trading.new_command("ai_rb", "halt", by="test")
    live_trading.send_command(home, fresh)
    engine_desk.poll()
    reply = live_trading.await_reply(home, fresh, 1.0)
    assert reply is not None and not reply.ok and "未运行" in reply.message


def test_control_command_line_waits_for_the_answer_and_withdraws_what_nobody_takes(
    home: Home, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--home", str(home.root), "control", "--strategy", "ai_rb", "halt", "--wait", "0.3"]
    assert ai_trading_system.main(argv) == 3  # no trading process: transient, and nothing left queued
    assert list(live_trading.inbox(home, "ai_rb").iterdir()) == []
    assert "没有运行中的 trade 进程" in capsys.readouterr().err

    strategy, _ = scripted_strategy([], threshold=0.001)
    engine_desk = desk(home, {"ai_rb": strategy})
    stop = threading.Event()

    def serve() -> None:
        while not stop.wait(0.05):
            engine_desk.poll()

    worker = threading.Thread(target=serve, daemon=True)
    worker.start()
    try:
        argv[-1] = "5"
        assert ai_trading_system.main(argv) == 0
        assert "已暂停开仓" in capsys.readouterr().out and strategy.risk is not None and strategy.risk.held
        assert ai_trading_system.main([*argv[:4], "--strategy", "nobody", "halt"]) == 2
    finally:
        stop.set()
        worker.join(2)


# --- switching models -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_bundles(sample_frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two more RandomForests on rf_bundle's months: `same` (the same features, other trees) and `fewer` (20
    features)."""
    bars = sample_frame.loc[pd.Timestamp("2015-09-01", tz=CHINA_TZ) : pd.Timestamp("2015-12-31 23:59", tz=CHINA_TZ)]
    folder = tmp_path_factory.mktemp("switch")
    made = {}
    for name, count, trees in (("same", 30, 8), ("fewer", 20, 8)):
        data = data_processor.prepare_training_data(
            bars.copy(), VT, horizon=5, sequence_length=60, features_count=count
        )
        config = ml_model.ModelConfig(model_type="random_forest", trees=trees, max_depth=4, seed=7)
        model = ml_model.PricePredictionModel("random_forest", config)
        model.train(data)
        model.threshold = 0.0004
        extra = {
            "vt_symbol": VT,
            "interval": "1m",
            "ranges": data.split.ranges(data.index),
            "label_kind": data.label_kind,
        }
        made[name] = model.save_model(folder / name, extra=extra)
    return made


def replay_bars(sample_frame: pd.DataFrame, start: str, end: str) -> list[Any]:
    frame = sample_frame.loc[pd.Timestamp(start, tz=CHINA_TZ) : pd.Timestamp(end, tz=CHINA_TZ)]
    return data_collector.frame_to_bars(frame, VT)


def test_a_switch_keeps_the_position_and_changes_the_predictions_from_the_next_bar(
    rf_bundle: Path, other_bundles: dict[str, Path], sample_frame: pd.DataFrame
) -> None:
    bars = replay_bars(sample_frame, "2016-03-01", "2016-03-04 15:00")
    engine = FakeCtaEngine()
    strategy = PredictiveTradingStrategy(engine, "ai_rb", VT, {"model_path": str(rf_bundle), "fixed_size": 1})
    strategy.store = MemoryStateStore()
    strategy.on_init()
    strategy.inited = strategy.trading = True
    old_checksum = strategy.model_checksum
    predictions, positions = [], []
    replies: list[tuple[bool, str]] = []
    switch_at = 600
    for n, bar in enumerate(bars):
        strategy.on_bar(bar)
        for vt_orderid in list(engine.active):
            engine.fill(strategy, vt_orderid, bar.datetime)
        predictions.append(strategy.prediction_value)
        positions.append(strategy.pos)
        if n == switch_at:
            strategy.request_switch(str(other_bundles["same"]), "test", lambda ok, text: replies.append((ok, text)))
            deadline = time.monotonic() + 30
            while not replies and time.monotonic() < deadline:
                time.sleep(0.01)
    assert replies and replies[0][0], replies
    assert strategy.model_name == "same" and positions[switch_at] != 0  # it held a position when switching
    event = [fields for name, fields in strategy.store.events if name == "model_switch"][0]
    assert (event["from_checksum"], event["to_checksum"]) == (old_checksum, strategy.model_checksum)
    assert event["pos"] == positions[switch_at] and event["time"] == bars[switch_at + 1].datetime.isoformat()

    def alone(bundle: Path) -> np.ndarray:
        signal = ModelSignal(ml_model.PricePredictionModel().load_model(bundle, vt_symbol=VT), VT)
        return np.array([signal.update(bar) for bar in bars])

    old, new = alone(rf_bundle), alone(other_bundles["same"])
    live = np.array(predictions)
    np.testing.assert_allclose(live[: switch_at + 1], old[: switch_at + 1], atol=1e-9)
    np.testing.assert_allclose(live[switch_at + 1 :], new[switch_at + 1 :], atol=1e-9)  # warmed: no gap
    assert np.mean(np.abs(old[switch_at + 1 :] - new[switch_at + 1 :]) > 1e-9) > 0.9


def test_a_switch_to_other_features_another_product_or_the_same_model_is_refused(
    rf_bundle: Path, other_bundles: dict[str, Path], tmp_path: Path
) -> None:
    from tests.conftest import resealed_copy

    strategy = PredictiveTradingStrategy(FakeCtaEngine(), "ai_rb", VT, {"model_path": str(rf_bundle)})
    strategy.store = MemoryStateStore()
    strategy.on_init()
    copper = resealed_copy(other_bundles["same"], tmp_path / "cu", vt_symbol="cu0000.SHFE")
    cases = {
        str(other_bundles["fewer"]): "特征与正在运行的模型不同",
        str(copper): "rb0000.SHFE",
        str(rf_bundle): "就是",
    }
    for bundle, message in cases.items():
        replies: list[tuple[bool, str]] = []
        strategy.request_switch(bundle, "test", lambda ok, text: replies.append((ok, text)))  # noqa: B023
        deadline = time.monotonic() + 30
        while not replies and time.monotonic() < deadline:
            time.sleep(0.01)
        assert replies and not replies[0][0] and message in replies[0][1], (bundle, replies)
        assert strategy.pending_switch is None and strategy.model_name == rf_bundle.name
    refused = [fields for name, fields in strategy.store.events if name == "model_switch_refused"]
    assert len(refused) == 3


SWITCH_SCRIPT = """
import json, time
import numpy as np
from config import Secrets, bind_vnpy_home, contract_spec, load_contracts, resolve_home, settings_dirs, settings_for
import live_trading

home = resolve_home()
settings = settings_for(home)
bind_vnpy_home(home, settings.database)
import ml_model
from predictive_trading_strategy import ModelSignal

spec = contract_spec("rb0000.SHFE", load_contracts(settings_dirs(home)))
setting = {**live_trading.live_costs(spec, 1_000_000.0, True), **SETTING}
config = live_trading.StrategyConfig("ai_rb", "PredictiveTradingStrategy", "rb0000.SHFE", setting)
system = live_trading.AITradingSystem(home, settings, Secrets())
seen = []
state = {"trading": 0, "sent": False}
try:
    system.connect_gateway("SIM", {"vt_symbol": "rb0000.SHFE", "home": str(home.root), "start": START, "end": END,
                                   "speed": "max", "hold": True, "warmup_days": 10}, 30)
    assert system.start_trading(config)
    strategy = system.cta_engine.strategies["ai_rb"]
    history = list(strategy.recent_bars)  # the warm-up bars it has seen
    on_bar = strategy.on_bar

    def record(bar):
        on_bar(bar)
        seen.append((bar, strategy.prediction_value, strategy.model_name, strategy.pos))
        state["trading"] += 1
        if state["trading"] >= AT and strategy.pos and not state["sent"]:
            state["sent"] = True
            command = live_trading.new_command("ai_rb", "switch-model", NEW, by="test")
            live_trading.send_command(home, command)
            assert system.ai_engine.poll() == 1  # what vnpy's timer does each second
            deadline = time.monotonic() + 60
            while strategy.pending_switch is None and time.monotonic() < deadline:
                time.sleep(0.01)

    strategy.bg.on_bar = record  # vnpy's BarGenerator calls the strategy's on_bar
    assert system.release_replay().wait(300)
    system.drain()
finally:
    system.close()
bars = [bar for bar, *_ in seen]
names = [name for _, _, name, _ in seen]
first_new = names.index("same")
def alone(path):  # from the start of the warm-up the strategy kept: its features have converged by the replay
    signal = ModelSignal(ml_model.PricePredictionModel().load_model(path, vt_symbol="rb0000.SHFE"), "rb0000.SHFE")
    return np.array([signal.update(bar) for bar in history + bars])[len(history):]
old, new = alone(OLD), alone(NEW)
live = np.array([value for _, value, _, _ in seen])
print("SWITCH" + json.dumps({
    "first_new": first_new, "bars": len(bars),
    "before": float(np.nanmax(np.abs(live[:first_new] - old[:first_new]))),
    "after": float(np.nanmax(np.abs(live[first_new:] - new[first_new:]))),
    "nan_match": bool((np.isnan(live[first_new:]) == np.isnan(new[first_new:])).all()),
    "differs": float(np.mean(np.abs(old[first_new:] - new[first_new:]) > 1e-9)),
    "pos": [seen[first_new - 1][3], seen[first_new][3]],
}))
"""


@pytest.mark.slow
def test_a_model_switch_in_the_middle_of_a_sim_replay_keeps_the_position_and_changes_the_next_predictions(
    imported_home: Home, rf_bundle: Path, other_bundles: dict[str, Path], tmp_path: Path
) -> None:
    from tests.conftest import run_python
    from tests.test_live_trading import audit_events as audited
    from tests.test_live_trading import home_with_bars

    home = home_with_bars(imported_home, tmp_path)
    setting = {"model_path": str(rf_bundle), "fixed_size": 1, "trailing_percent": 0.8, "warmup_days": 10}
    code = (
        f"START, END, SETTING, AT = '2016-03-01', '2016-03-04', {setting!r}, 300\n"
        f"OLD, NEW = {str(rf_bundle)!r}, {str(other_bundles['same'])!r}\n" + SWITCH_SCRIPT
    )
    result = run_python(code, home.root, env={"TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.split("SWITCH", 1)[1])
    assert figures["before"] < 1e-9 and figures["after"] < 1e-9 and figures["nan_match"]
    assert figures["differs"] > 0.9  # the new model's predictions from the switch bar on
    assert figures["pos"][0] == figures["pos"][1] != 0  # the position was kept over the switch
    switch = audited(home, "model_switch")
    assert len(switch) == 1 and switch[0]["to"] == "same" and switch[0]["from_checksum"] != switch[0]["to_checksum"]
    controls = audited(home, "control")
    assert [(c["action"], c["ok"]) for c in controls] == [("switch-model", True)]


def test_the_last_report_is_the_newest_backtest_or_research_page(home: Home) -> None:
    import os

    assert ai_panel.last_report(home) is None
    older = home.reports_dir / "rb_bt" / "report.html"
    newer = home.reports_dir / "research_rb" / "research.html"
    for n, path in enumerate((older, newer)):
        path.parent.mkdir(parents=True)
        path.write_text("<html></html>", encoding="utf-8")
        os.utime(path, (1_700_000_000 + n, 1_700_000_000 + n))
    (home.reports_dir / "rb_bt" / "trades.csv").write_text("", encoding="utf-8")
    assert ai_panel.last_report(home) == newer
