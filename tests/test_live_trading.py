"""Live trading: CTP settings and connect timeout against local fronts, the simulated exchange through the whole
live path, parity with the backtest, the position check after a restart, and the offscreen UI."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest

import live_trading
from config import PROJECT_DIR, AuditLog, BrokerSettings, ConfigError, Home, Secrets, TransientError, resolve_home
from risk_manager import PositionBook

PASSWORD = "Pw-Secret-7f3a9"
AUTH_CODE = "AUTH-0f1e2d3c4b5a6978"
SMTP_PASSWORD = "Smtp-Secret-51c8e2"
SECRETS = (PASSWORD, AUTH_CODE, SMTP_PASSWORD)


# --- settings and connection state (pure) --------------------------------------------------------------------


def test_simnow_preset_gives_documented_fronts_and_ids_and_secrets_come_from_outside() -> None:
    secrets = Secrets({"ctp_user": "123456", "ctp_password": PASSWORD})
    setting = live_trading.ctp_setting(BrokerSettings(environment="simnow_7x24"), secrets)
    assert setting["交易服务器"] == "tcp://182.254.243.31:40001"
    assert setting["行情服务器"] == "tcp://182.254.243.31:40011"
    assert (setting["经纪商代码"], setting["产品名称"], setting["授权编码"]) == (
        "9999",
        "simnow_client_test",
        "0000000000000000",
    )
    assert (setting["用户名"], setting["密码"], setting["柜台环境"]) == ("123456", PASSWORD, "实盘")
    local = live_trading.ctp_setting(BrokerSettings(), secrets, "127.0.0.1:41205", "tcp://127.0.0.1:41206")
    assert (local["交易服务器"], local["行情服务器"]) == ("tcp://127.0.0.1:41205", "tcp://127.0.0.1:41206")


def test_live_environment_needs_every_field_and_names_the_missing_ones() -> None:
    with pytest.raises(ConfigError) as error:
        live_trading.ctp_setting(
            BrokerSettings(environment="live", td_address="tcp://10.0.0.1:41205"), Secrets({"ctp_user": "8001"})
        )
    message = str(error.value)
    for missing in ("密码", "经纪商代码", "行情服务器", "产品名称", "授权编码", "AI_TRADER_CTP_PASSWORD"):
        assert missing in message
    assert "交易服务器" not in message.split("CTP 设置缺少：")[1].split("。")[0]
    with pytest.raises(ConfigError, match="地址"):
        live_trading.ctp_setting(BrokerSettings(), Secrets({"ctp_user": "1", "ctp_password": "2"}), "tcp://host")
    with pytest.raises(ConfigError, match="environment"):
        live_trading.ctp_setting(BrokerSettings(environment="simnow9"), Secrets())


def test_connection_watch_needs_both_logins_and_the_contract_query() -> None:
    changes: list[tuple[bool, str]] = []
    watch = live_trading.ConnectionWatch("CTP", lambda up, detail: changes.append((up, detail)))
    for line in ("交易服务器连接成功", "交易服务器授权验证成功", "交易服务器登录成功", "行情服务器登录成功"):
        watch.update(line)
    with pytest.raises(TransientError, match="已完成：交易登录、行情登录"):
        watch.wait(0.01, "tcp://127.0.0.1:1")
    watch.update("合约信息查询成功")
    watch.wait(0.01, "tcp://127.0.0.1:1")
    watch.update("行情服务器连接断开，原因4097")
    watch.update("行情服务器登录成功")
    assert changes == [(True, "登录成功"), (False, "行情服务器连接断开，原因4097"), (True, "行情重新登录")]


def test_refused_login_is_a_configuration_error_not_a_retry() -> None:
    watch = live_trading.ConnectionWatch("CTP", lambda up, detail: None)
    watch.update("交易服务器登录失败，代码：3，信息：CTP:不合法的登录")
    with pytest.raises(ConfigError, match="不合法的登录"):
        watch.wait(5, "tcp://127.0.0.1:1")


def test_strategies_json_is_validated_and_the_homes_file_wins(home: Home) -> None:
    configs = live_trading.load_strategy_configs(home)
    assert configs["ai_rb"].vt_symbol == "rb0000.SHFE" and configs["ai_rb"].setting["model_path"] == "demo_rf"
    home.settings_dir.mkdir(parents=True)
    path = home.settings_dir / "strategies.json"
    path.write_text(json.dumps({"ai_rb": {"vt_symbol": "rb2605.SHFE", "setting": {"fixed_size": 2}}}), "utf-8")
    assert live_trading.load_strategy_configs(home)["ai_rb"].vt_symbol == "rb2605.SHFE"
    path.write_text(json.dumps({"ai_rb": {"vt_symbol": "rb2605.SHFE", "setting": {"fast_window": 2}}}), "utf-8")
    with pytest.raises(ConfigError, match="fast_window"):
        live_trading.load_strategy_configs(home)


def test_vnpy_strategy_json_is_rewritten_from_ours(home: Home) -> None:
    home.vntrader_dir.mkdir(parents=True)
    path = home.vntrader_dir / "cta_strategy_setting.json"
    path.write_text(
        json.dumps(
            {
                "old": {"class_name": "X", "vt_symbol": "a.SHFE", "setting": {}},
                "ai_rb": {
                    "class_name": "PredictiveTradingStrategy",
                    "vt_symbol": "rb0000.SHFE",
                    "setting": {"fixed_size": 5},
                },
            }
        ),
        "utf-8",
    )
    config = live_trading.StrategyConfig("ai_rb", "PredictiveTradingStrategy", "rb0000.SHFE", {"fixed_size": 1})
    assert live_trading.reconcile_vnpy_setting(home, config) == ["移除 old", "更新 ai_rb"]
    assert json.loads(path.read_text("utf-8")) == {"ai_rb": config.vnpy_entry()}
    assert live_trading.reconcile_vnpy_setting(home, config) == []


# --- the state a restart needs (pure or file-level) ------------------------------------------------------


def test_vnpy_restores_nothing_over_our_state_and_never_the_model_name() -> None:
    theirs = {"pos": 3, "entry_price": 2000.0, "model_name": "stale", "risk_state": "HALTED", "last_price": 1.0}
    assert live_trading.restorable_variables(theirs, have_state=True) == {}
    assert live_trading.restorable_variables(theirs, have_state=False) == {"pos": 3, "entry_price": 2000.0}
    assert live_trading.restorable_variables(None, have_state=False) == {}


def test_state_file_is_readable_json_beside_the_audit_and_sim_states_are_kept_apart(home: Home) -> None:
    audit = AuditLog(home.audit_path)
    path = home.strategy_state_path("ai_rb")
    assert path == home.root / "state" / "ai_rb.json" != home.strategy_state_path("ai_rb", simulated=True)
    store = live_trading.FileStateStore(path, audit)
    assert store.load() is None
    store.save({"pos": 1.0, "risk": {"last_price": math.nan}, "trading_day": "2016-06-01"})
    text = path.read_text(encoding="utf-8")
    assert '\n  "pos": 1.0,' in text and '"last_price": null' in text and '"saved_at": "' in text
    assert store.load() == {**json.loads(text)} and [p.name for p in path.parent.iterdir()] == ["ai_rb.json"]
    store.record("risk_halt", {"strategy": "ai_rb", "trading_day": "2016-06-01"})
    assert audit.read()[-1] | {"time": "", "pid": 0} == {
        "time": "",
        "pid": 0,
        "event": "risk_halt",
        "strategy": "ai_rb",
        "trading_day": "2016-06-01",
    }
    with pytest.raises(ConfigError, match="不能用作文件名"):
        home.strategy_state_path("../ai_rb")


def test_broker_positions_become_a_book_with_today_yesterday_and_the_brokers_price() -> None:
    from vnpy.trader.constant import Direction, Exchange
    from vnpy.trader.object import PositionData

    def held(direction: Direction, volume: float, yd: float, price: float, symbol: str = "rb0000") -> PositionData:
        return PositionData("SIM", symbol, Exchange.SHFE, direction, volume, yd_volume=yd, price=price)

    positions = [
        held(Direction.LONG, 3, 2, 2950.0),
        held(Direction.SHORT, 0, 0, 0.0),
        held(Direction.SHORT, 5, 5, 3000.0, symbol="rb2605"),
    ]
    assert live_trading.broker_book(positions, "rb0000.SHFE") == PositionBook(long_today=1, long_yd=2, long_price=2950)


def test_state_command_shows_a_saved_state_and_only_clear_deletes_it(home: Home, capsys: pytest.CaptureFixture) -> None:
    import ai_trading_system

    store = live_trading.FileStateStore(home.strategy_state_path("ai_rb"), AuditLog(home.audit_path))
    store.save({"trading_day": "2016-06-03", "pos": -1.0, "risk": {"halted": True, "halt_reason": "熔断：测试"}})
    root = ["--home", str(home.root), "state"]
    assert ai_trading_system.main(root) == 0
    shown = capsys.readouterr().out
    assert "ai_rb" in shown and "2016-06-03" in shown and "熔断：测试" in shown
    assert ai_trading_system.main([*root, "--clear"]) == 2  # live states are cleared one named strategy at a time
    assert store.path.exists()
    assert ai_trading_system.main([*root, "--strategy", "ai_rb", "--clear"]) == 0
    assert not store.path.exists()
    assert [event["event"] for event in AuditLog(home.audit_path).read()] == ["state_cleared"]


# --- running the CLI in a fresh process ------------------------------------------------------------------------


def run_cli(
    home: Home, *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`python ai_trading_system.py --home H ...` with a private HOME, offscreen Qt and our secrets."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AI_TRADER_")}
    full_env.update(
        {
            "HOME": str(home.root.parent),
            "XDG_CONFIG_HOME": str(home.root.parent / "xdg"),
            "QT_QPA_PLATFORM": "offscreen",
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "AI_TRADER_CTP_USER": "208866",
            "AI_TRADER_CTP_PASSWORD": PASSWORD,
            "AI_TRADER_CTP_AUTH_CODE": AUTH_CODE,
            "AI_TRADER_SMTP_PASSWORD": SMTP_PASSWORD,
        }
    )
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, str(PROJECT_DIR / "ai_trading_system.py"), "--home", str(home.root), *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=home.root.parent,
        timeout=timeout,
    )


def assert_no_secret_anywhere(home: Home, *outputs: str) -> None:
    """No configured secret appears in any file beside the home (logs, json, reports, databases) or the output."""
    for text in outputs:
        assert not any(secret in text for secret in SECRETS)
    files = [path for path in home.root.parent.rglob("*") if path.is_file()]
    assert files
    for path in files:
        data = path.read_bytes()
        assert not any(secret.encode() in data for secret in SECRETS), path


@pytest.fixture
def dropping_front() -> Iterator[int]:
    """A local TCP front that accepts every connection and closes it at once."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conn.close()

    worker = threading.Thread(target=serve, daemon=True)
    worker.start()
    yield server.getsockname()[1]
    stop.set()
    worker.join(2)
    server.close()


def closed_port() -> int:
    """A loopback port where nothing listens."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port: int = probe.getsockname()[1]
    probe.close()
    return port


@pytest.mark.parametrize("front", ["nothing_listens", "drops_connections"])
@pytest.mark.slow
def test_ctp_that_never_logs_in_exits_3_within_the_timeout_and_leaks_no_secret(
    front: str, tmp_path: Path, rf_bundle: Path, request: pytest.FixtureRequest
) -> None:
    home = resolve_home(tmp_path / "home")
    port = request.getfixturevalue("dropping_front") if front == "drops_connections" else closed_port()
    address = f"tcp://127.0.0.1:{port}"
    started = time.monotonic()
    result = run_cli(
        home,
        "trade",
        "--gateway",
        "ctp",
        "--no-ui",
        "--td-address",
        address,
        "--md-address",
        address,
        "--model",
        str(rf_bundle),
        env={"AI_TRADER_BROKER_CONNECT_TIMEOUT_SECONDS": "3"},
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 3, result.stderr[-3000:]
    assert "3 秒内未完成登录和合约查询" in result.stderr and address in result.stderr
    if front == "drops_connections":
        assert "连接断开" in result.stderr
    assert elapsed < 60  # a hang would run into the subprocess timeout instead
    assert_no_secret_anywhere(home, result.stdout, result.stderr)


# --- the simulated exchange through the whole live path --------------------------------------------------------


def home_with_bars(imported_home: Home, tmp_path: Path) -> Home:
    """A new home holding a consistent copy of the imported sample database."""
    home = resolve_home(tmp_path / "home")
    home.vntrader_dir.mkdir(parents=True)
    source = sqlite3.connect(f"file:{imported_home.vntrader_dir / 'database.db'}?mode=ro", uri=True)
    target = sqlite3.connect(home.vntrader_dir / "database.db")
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()
    return home


def audit_events(home: Home, kind: str) -> list[dict[str, Any]]:
    lines = (home.root / "audit.jsonl").read_text(encoding="utf-8").splitlines()
    return [event for event in map(json.loads, lines) if event["event"] == kind]


SIM_ARGS = (
    "trade",
    "--gateway",
    "sim",
    "--no-ui",
    "--replay-start",
    "2016-06-01",
    "--replay-end",
    "2016-06-10",
    "--speed",
    "max",
)


@pytest.fixture(scope="module")
def sim_run(
    imported_home: Home, rf_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Home, subprocess.CompletedProcess[str]]:
    """The issue's acceptance command on a copy of the sample data: replay 2016-06-01..10 at full speed."""
    home = home_with_bars(imported_home, tmp_path_factory.mktemp("sim"))
    return home, run_cli(home, *SIM_ARGS, "--model", str(rf_bundle))


@pytest.mark.slow
def test_sim_replay_trades_records_and_audits_then_exits_0(sim_run: tuple[Home, Any]) -> None:
    home, result = sim_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(audit_events(home, "strategy_start")) == 1 and len(audit_events(home, "strategy_stop")) == 1
    assert audit_events(home, "model_load") and len(audit_events(home, "trade")) >= 2
    recorded = sqlite3.connect(home.vntrader_dir / live_trading.SIM_RECORDING_DB)
    try:
        ticks = recorded.execute("SELECT COUNT(*) FROM dbtickdata").fetchone()[0]
        bars = recorded.execute("SELECT COUNT(*), MIN(datetime), MAX(datetime) FROM dbbardata").fetchone()
    finally:
        recorded.close()
    research = sqlite3.connect(home.vntrader_dir / "database.db")
    try:
        stored_ticks = research.execute("SELECT COUNT(*) FROM dbtickdata").fetchone()[0]
    finally:
        research.close()
    assert ticks > 4 * 1500 and bars[0] > 1500 and bars[1].startswith("2016-06-01")
    assert stored_ticks == 0  # the rehearsal never writes into the research database
    assert "成交 / trades" in result.stdout
    assert_no_secret_anywhere(home, result.stdout, result.stderr)


PARITY_SCRIPT = """
import json
from config import Secrets, bind_vnpy_home, contract_spec, load_contracts, resolve_home, settings_dirs, settings_for
import live_trading

home = resolve_home()
settings = settings_for(home)
bind_vnpy_home(home, settings.database)
spec = contract_spec("rb0000.SHFE", load_contracts(settings_dirs(home)))
setting = {**live_trading.live_costs(spec, 1_000_000.0, True), **SETTING}
config = live_trading.StrategyConfig("parity", "PredictiveTradingStrategy", "rb0000.SHFE", setting)
system = live_trading.AITradingSystem(home, settings, Secrets())
predictions = []
try:
    system.connect_gateway("SIM", {"vt_symbol": "rb0000.SHFE", "home": str(home.root), "start": START, "end": END,
                                   "speed": "max", "hold": True, "warmup_days": 10}, 30)
    assert system.start_trading(config)
    strategy = system.cta_engine.strategies["parity"]
    online = strategy.signal.update

    def update(bar):
        value = online(bar)
        predictions.append([bar.datetime.isoformat(), value])
        return value

    strategy.signal.update = update  # the replay is held until release: no bar is missed
    assert system.release_replay().wait(300)
    system.drain()
    gateway = system.main_engine.get_gateway("SIM")
    orders = [[o.datetime.isoformat(), o.direction.value, o.offset.value, o.price, o.volume, o.status.value]
              for o in gateway.orders]
    trades = [[t.datetime.isoformat(), t.direction.value, t.price, t.volume] for t in gateway.trades]
    position = strategy.pos
finally:
    system.close()
print("PARITY" + json.dumps({"predictions": predictions, "orders": orders, "trades": trades, "pos": position}))
"""


@pytest.mark.slow
def test_sim_exchange_and_backtest_give_the_same_predictions_orders_and_position(
    imported_home: Home, rf_bundle: Path, tmp_path: Path
) -> None:
    import bisect

    import numpy as np
    import pandas as pd
    from vnpy.trader.constant import Direction, Offset

    from backtesting_module import BacktestingModule
    from tests.conftest import run_python

    home = home_with_bars(imported_home, tmp_path)
    start, end = "2016-03-01", "2016-03-09"
    setting = {"model_path": str(rf_bundle), "fixed_size": 1, "trailing_percent": 0.8, "warmup_days": 10}
    code = f"START, END, SETTING = {start!r}, {end!r}, {setting!r}\n" + PARITY_SCRIPT
    result = run_python(code, home.root, env={"TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    live = json.loads(result.stdout.split("PARITY", 1)[1])

    backtest = BacktestingModule(home).run_backtest(
        "rb0000.SHFE", start, end, rf_bundle, setting=dict(setting), use_cache=False
    )
    live_predictions = pd.Series(
        [value for _, value in live["predictions"]], index=pd.DatetimeIndex([time for time, _ in live["predictions"]])
    )
    assert len(live_predictions) == len(backtest.predictions) > 1500
    assert (live_predictions.index == backtest.predictions.index).all()
    np.testing.assert_allclose(live_predictions.to_numpy(), backtest.predictions.to_numpy(), rtol=0, atol=1e-7)

    # The exchange stamps an order with its replay clock: an order sent when a bar's first tick completed the
    # previous bar is that previous bar's decision (vnpy's backtester stamps it with that bar); an order sent from
    # on_trade after a bar's fills is that bar's. SHFE's CLOSE becomes CLOSETODAY / CLOSEYESTERDAY through vnpy's
    # OffsetConverter on the live path, so offsets are compared as open / close.
    bar_times = list(backtest.bars.index)

    def decided_at(stamp: str) -> pd.Timestamp:
        moment = pd.Timestamp(stamp)
        if moment.second:
            return moment.floor("min")
        return bar_times[bisect.bisect_left(bar_times, moment) - 1]

    def kind(offset: str) -> str:
        return "open" if offset == Offset.OPEN.value else "close"

    live_orders = [(decided_at(t), d, kind(o), p, v) for t, d, o, p, v, _ in live["orders"]]
    expected = [
        (pd.Timestamp(o.datetime), getattr(o.direction, "value", ""), kind(o.offset.value), o.price, o.volume)
        for o in backtest.orders
    ]
    assert len(expected) >= 10
    assert live_orders == expected
    live_trades = [(pd.Timestamp(t), d, p, v) for t, d, p, v in live["trades"]]
    assert live_trades == [
        (pd.Timestamp(t.datetime), getattr(t.direction, "value", ""), t.price, t.volume) for t in backtest.trades
    ]
    final = sum(t.volume if t.direction == Direction.LONG else -t.volume for t in backtest.trades)
    assert live["pos"] == final


@pytest.mark.slow
def test_restart_with_a_position_the_broker_does_not_hold_does_not_trade_and_alerts(
    imported_home: Home, rf_bundle: Path, tmp_path: Path
) -> None:
    home = home_with_bars(imported_home, tmp_path)
    state = home.vntrader_dir / "cta_strategy_data.json"
    state.write_text(json.dumps({"ai_rb": {"pos": 3, "entry_price": 2000.0}}), encoding="utf-8")
    args = (
        "trade",
        "--gateway",
        "sim",
        "--no-ui",
        "--replay-start",
        "2016-06-01",
        "--replay-end",
        "2016-06-01",
        "--model",
        str(rf_bundle),
    )
    refused = run_cli(home, *args)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "记录的持仓 3 与券商持仓 0" in refused.stderr and "--adopt-broker-position" in refused.stderr
    assert "多头昨仓：策略 3，券商 0" in refused.stderr  # which side and bucket differs
    assert audit_events(home, "position_mismatch")[0]["strategy_pos"] == 3
    assert [e["severity"] for e in audit_events(home, "alert")] == ["CRITICAL"]
    assert not audit_events(home, "strategy_start") and not audit_events(home, "order")

    adopted = run_cli(home, *args, "--adopt-broker-position")
    assert adopted.returncode == 0, adopted.stderr[-3000:]
    assert audit_events(home, "position_adopted")[0]["broker_pos"] == 0
    assert len(audit_events(home, "strategy_start")) == 1


# --- crashes: SIGKILL at a halt and at random bars -------------------------------------------------------------

KILL_SCRIPT = """
import os, signal, sys
import config, sim_gateway
import ai_trading_system


def die():
    os.kill(os.getpid(), signal.SIGKILL)


if KILL_AT_HALT:
    write = config.AuditLog.write

    def audit_then_die(self, event, **fields):
        write(self, event, **fields)
        if event == "risk_halt":
            die()

    config.AuditLog.write = audit_then_die
if KILL_AT_BAR:
    match = sim_gateway.SimGateway._match
    bars = [0]

    def match_then_die(self, *args):
        bars[0] += 1
        if bars[0] == KILL_AT_BAR and not AFTER_MATCH:
            die()  # what the strategy sent on the previous bar's close is still working at the exchange
        done = match(self, *args)
        if bars[0] == KILL_AT_BAR:
            self._sync()  # its fills are booked and saved
            die()
        return done

    sim_gateway.SimGateway._match = match_then_die
sys.exit(ai_trading_system.main(ARGV))
"""
CRASH_WINDOW = ("--replay-start", "2016-06-01", "--replay-end", "2016-06-03")


def run_killed(
    home: Home, *args: str, at_halt: bool = False, at_bar: int = 0, after_match: bool = False
) -> subprocess.CompletedProcess[str]:
    """`trade` in a fresh process that SIGKILLs itself right after the first `risk_halt`, or at bar `at_bar` of
    the replay (before that bar's matching, or once its fills are booked)."""
    from tests.conftest import run_python

    argv = ["--home", str(home.root), "trade", "--gateway", "sim", "--no-ui", *CRASH_WINDOW, *args]
    code = f"ARGV, KILL_AT_HALT, KILL_AT_BAR, AFTER_MATCH = {argv!r}, {at_halt}, {at_bar}, {after_match}\n"
    return run_python(code + KILL_SCRIPT, home.root, env={"TF_CPP_MIN_LOG_LEVEL": "3"})


def first_seen_orders(home: Home) -> list[dict[str, Any]]:
    """Each order once, as it was sent (the audit has one line per status)."""
    seen: dict[str, dict[str, Any]] = {}
    for event in audit_events(home, "order"):
        seen.setdefault(event["vt_orderid"], event)
    return list(seen.values())


@pytest.mark.slow
def test_a_halt_survives_sigkill_nothing_opens_for_the_rest_of_that_day_and_opening_resumes_the_next(
    imported_home: Home, rf_bundle: Path, tmp_path: Path
) -> None:
    from vnpy.trader.constant import Offset

    from trading_calendar import causal_trading_day

    home = home_with_bars(imported_home, tmp_path)
    home.settings_dir.mkdir()
    tiny_limit = {"model_path": str(rf_bundle), "fixed_size": 1, "trailing_percent": 0.8, "max_daily_loss_rate": 2e-4}
    strategies = {"ai_rb": {"vt_symbol": "rb0000.SHFE", "setting": tiny_limit}}  # 2e-4 of 1,000,000: a 200 loss
    (home.settings_dir / "strategies.json").write_text(json.dumps(strategies), encoding="utf-8")
    killed = run_killed(home, at_halt=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    [halt] = audit_events(home, "risk_halt")
    saved = json.loads(home.strategy_state_path("ai_rb", simulated=True).read_text(encoding="utf-8"))
    assert saved["risk"]["halted"] and saved["risk"]["halt_reason"] == halt["reason"]
    assert halt["daily_pnl"] < halt["limit"] == pytest.approx(-200, abs=1)

    resumed = run_killed(home)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "已恢复状态" in resumed.stderr and "熔断中" in resumed.stderr
    day, halted_at = date.fromisoformat(halt["trading_day"]), datetime.fromisoformat(halt["time"])
    assert [e for e in audit_events(home, "risk_halt") if e["trading_day"] == halt["trading_day"]] == [halt]
    after = [(datetime.fromisoformat(o["exchange_time"]), o["offset"]) for o in first_seen_orders(home)]
    that_day = [(when, offset) for when, offset in after if when > halted_at and causal_trading_day(when) == day]
    assert that_day and all(offset != Offset.OPEN.value for _, offset in that_day)  # the flatten, nothing opened
    assert halted_at.hour < 14  # ... over the rest of a day session that had bars left
    resume = next(e for e in audit_events(home, "risk_resume") if date.fromisoformat(e["trading_day"]) > day)
    next_day = date.fromisoformat(resume["trading_day"])
    assert any(offset == Offset.OPEN.value and causal_trading_day(when) == next_day for when, offset in after)


@pytest.mark.slow
def test_five_sigkills_at_random_bars_give_the_trades_and_position_of_an_uninterrupted_replay(
    imported_home: Home, rf_bundle: Path, tmp_path: Path
) -> None:
    import pandas as pd

    import data_collector

    whole = home_with_bars(imported_home, tmp_path / "whole")
    model = ("--model", str(rf_bundle))
    assert run_killed(whole, *model).returncode == 0
    times = list(data_collector.load_history_data("rb0000.SHFE", *CRASH_WINDOW[1::2], home=whole).index)
    # an order is stamped with the start of the bar whose matching it waits for: that bar's number in the replay
    sent = [times.index(pd.Timestamp(order["exchange_time"])) + 1 for order in first_seen_orders(whole)]
    rng = random.Random(16)
    in_flight = rng.choice([bar for bar in sent if bar > 30])
    others = rng.sample([bar for bar in range(30, len(times) - 10) if bar != in_flight], 4)
    kills = sorted([(in_flight, False), *((bar, rng.random() < 0.5) for bar in others)])

    home = home_with_bars(imported_home, tmp_path / "killed")
    for number, (bar, after_match) in enumerate(kills):
        result = run_killed(home, *model, at_bar=bar, after_match=after_match)
        assert result.returncode == -signal.SIGKILL, f"kill {number} at bar {bar}: {result.stderr[-3000:]}"
        if number == 0:  # what vnpy saved for itself must not overwrite our state
            stale = {"ai_rb": {"pos": 99, "model_name": "stale", "risk_state": "HALTED", "last_price": 1.0}}
            (home.vntrader_dir / "cta_strategy_data.json").write_text(json.dumps(stale), encoding="utf-8")
    final = run_killed(home, *model)
    assert final.returncode == 0, final.stderr[-3000:]

    def trades(of: Home) -> list[tuple[Any, ...]]:
        keys = ("exchange_time", "direction", "offset", "price", "volume")
        return [tuple(event[key] for key in keys) for event in audit_events(of, "trade")]

    assert len(trades(whole)) >= 10
    assert trades(home) == trades(whole), f"kills (bar, after matching): {kills}"
    assert audit_events(home, "strategy_stop")[-1]["pos"] == audit_events(whole, "strategy_stop")[-1]["pos"]
    assert len(audit_events(home, "strategy_start")) == 6
    assert {event["model"] for event in audit_events(home, "model_load")} == {rf_bundle.name}
    assert audit_events(home, "leftover_order_cancel")  # the order in flight at the first kill
    assert not home.sim_account_path.exists()  # the replay reached its end: nothing left to resume


@pytest.mark.slow
def test_a_simulated_account_smaller_than_capital_binds_the_risk_limits(
    imported_home: Home, rf_bundle: Path, tmp_path: Path
) -> None:
    from tests.conftest import run_python

    home = home_with_bars(imported_home, tmp_path)
    code = f"MODEL = {str(rf_bundle)!r}\n" + ACCOUNT_SCRIPT
    result = run_python(code, home.root, env={"TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads(result.stdout.split("ACCOUNT", 1)[1])
    assert (run["capital"], run["balance"], run["equity"], run["orders"]) == (1_000_000.0, 15_000.0, 15_000.0, 0)
    rejections = [event["message"] for event in audit_events(home, "risk_rejection")]
    assert rejections and all("× 权益 15,000.00" in message for message in rejections)


ACCOUNT_SCRIPT = """
import json
from config import Secrets, bind_vnpy_home, contract_spec, load_contracts, resolve_home, settings_dirs, settings_for
import live_trading

home = resolve_home()
settings = settings_for(home)
bind_vnpy_home(home, settings.database)
spec = contract_spec("rb0000.SHFE", load_contracts(settings_dirs(home)))
setting = {**live_trading.live_costs(spec, 1_000_000.0, True), "model_path": MODEL, "fixed_size": 1}
config = live_trading.StrategyConfig("small", "PredictiveTradingStrategy", "rb0000.SHFE", setting)
system = live_trading.AITradingSystem(home, settings, Secrets())
try:
    system.connect_gateway("SIM", {"vt_symbol": "rb0000.SHFE", "home": str(home.root), "start": "2016-06-01",
                                   "end": "2016-06-01", "speed": "max", "hold": True, "capital": 15000}, 30)
    assert system.start_trading(config)
    strategy = system.cta_engine.strategies["small"]
    assert system.release_replay().wait(300)
    system.drain()
    risk = strategy.risk
    run = {"capital": risk.state.capital, "balance": risk.state.balance, "equity": risk.equity,
           "orders": len(system.main_engine.get_gateway("SIM").orders)}
finally:
    system.close()
print("ACCOUNT" + json.dumps(run))
"""


@pytest.mark.slow
def test_ui_opens_offscreen_with_the_strategy_loaded_and_closes_without_the_exit_dialog(
    imported_home: Home, rf_bundle: Path, tmp_path: Path
) -> None:
    from PySide6.QtGui import QImage

    home = home_with_bars(imported_home, tmp_path)
    shot = tmp_path / "main_window.png"
    result = run_cli(
        home,
        "trade",
        "--gateway",
        "sim",
        "--replay-start",
        "2016-06-01",
        "--replay-end",
        "2016-06-01",
        "--speed",
        "60",
        "--model",
        str(rf_bundle),
        "--screenshot",
        str(shot),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for path in (shot, tmp_path / "main_window_cta.png"):
        image = QImage(str(path))
        assert (image.width(), image.height()) >= (1600, 900)
        colours = {image.pixel(x, y) for x in range(0, image.width(), 40) for y in range(0, image.height(), 40)}
        assert len(colours) > 5  # a rendered window, not a blank image
    assert len(audit_events(home, "strategy_start")) == 1 and len(audit_events(home, "strategy_stop")) == 1


@pytest.mark.slow
def test_full_demo_then_a_simulated_trading_run_leave_no_secret_in_any_file(tmp_path: Path) -> None:
    """The README's main job and a rehearsal on its models, with every secret set in the environment."""
    home = resolve_home(tmp_path / "home")
    demo = run_cli(home, "demo", timeout=900)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert (home.models_dir / "demo_rf" / "fast.onnx").exists() and (home.models_dir / "demo_lstm").is_dir()
    rehearsal = ("trade", "--gateway", "sim", "--no-ui", "--replay-start", "2016-06-01", "--replay-end", "2016-06-03")
    plain = run_cli(home, *rehearsal, "--speed", "max")  # the model of settings/strategies.json: demo_rf
    assert plain.returncode == 0, plain.stderr[-3000:]
    edge = json.loads((home.models_dir / "demo_rf" / "metadata.json").read_text(encoding="utf-8"))["decision"]["edge"]
    if edge == "none":  # the bundle's verdict: it never opens, and the audit says why, once
        assert len(audit_events(home, "model_no_edge")) == 1 and not audit_events(home, "trade")
    trade = run_cli(home, *rehearsal, "--speed", "max", "--threshold", "0.0002")  # an explicit threshold trades
    assert trade.returncode == 0, trade.stderr[-3000:]
    assert audit_events(home, "trade")
    assert_no_secret_anywhere(home, demo.stdout, demo.stderr, trade.stdout, trade.stderr)
