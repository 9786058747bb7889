"""Live trading: AITradingSystem wires vnpy's engines, the CTP and simulated gateways, the CTA app, the recorder,
the monitor and the audit log; CTP settings, the connect timeout, strategy settings and the position check."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import data_collector
from config import (
    SECRET_ENV,
    STRATEGIES_FILE,
    AppSettings,
    AuditLog,
    BrokerSettings,
    ConfigError,
    ContractSpec,
    Home,
    ModelError,
    Secrets,
    TransientError,
    bind_vnpy_home,
    guarded,
    read_json_object,
    settings_dirs,
    write_json_atomic,
)

logger = logging.getLogger(__name__)
DRAIN_EVENT: str = "eAiTraderDrain"  # carries a threading.Event that its handler sets


# SimNow's test environment as SimNow documents it: three fronts for trading hours and one 7x24 front
SIMNOW_FRONTS: dict[str, tuple[str, str]] = {
    "simnow": ("tcp://182.254.243.31:30001", "tcp://182.254.243.31:30011"),
    "simnow2": ("tcp://182.254.243.31:30002", "tcp://182.254.243.31:30012"),
    "simnow3": ("tcp://182.254.243.31:30003", "tcp://182.254.243.31:30013"),
    "simnow_7x24": ("tcp://182.254.243.31:40001", "tcp://182.254.243.31:40011"),
}
SIMNOW_BROKER_ID: str = "9999"
SIMNOW_APP_ID: str = "simnow_client_test"
SIMNOW_AUTH_CODE: str = "0000000000000000"
STRATEGY_CLASS_NAME: str = "PredictiveTradingStrategy"
STRATEGY_MODULE: str = "predictive_trading_strategy"
POSITION_SETTLE_SECONDS: float = 5.0  # CTP reports no position event when flat: wait this long after the account
SIM_RECORDING_DB: str = "sim_recording.db"


def _front(address: str, which: str) -> str:
    """A CTP front address `tcp://host:port` (ssl:// and socks too), checked."""
    text = address.strip()
    if "://" not in text:
        text = f"tcp://{text}"
    scheme, _, rest = text.partition("://")
    host, _, port = rest.rpartition(":")
    if scheme not in ("tcp", "ssl", "socks4", "socks5") or not host or not port.isdigit():
        raise ConfigError(f"{which} 地址 {address!r} 无效，应为 tcp://主机:端口 / invalid front address")
    return text


def ctp_setting(
    broker: BrokerSettings, secrets: Secrets, td_address: str | None = None, md_address: str | None = None
) -> dict[str, str]:
    """vnpy_ctp's connect setting: the environment's fronts and ids, the command line's fronts, secrets from
    the environment or the encrypted file. Never written to disk."""
    preset = SIMNOW_FRONTS.get(broker.environment)
    if preset is None and broker.environment != "live":
        choices = ", ".join([*SIMNOW_FRONTS, "live"])
        raise ConfigError(f"broker.environment 未知：{broker.environment!r}（可用：{choices}）/ unknown environment")
    td = td_address or broker.td_address or (preset[0] if preset else "")
    md = md_address or broker.md_address or (preset[1] if preset else "")
    setting = {
        "用户名": secrets.get("ctp_user"),
        "密码": secrets.get("ctp_password"),
        "经纪商代码": broker.broker_id or (SIMNOW_BROKER_ID if preset else ""),
        "交易服务器": _front(td, "交易服务器 / td") if td else "",
        "行情服务器": _front(md, "行情服务器 / md") if md else "",
        "产品名称": broker.app_id or (SIMNOW_APP_ID if preset else ""),
        "授权编码": secrets.get("ctp_auth_code") or (SIMNOW_AUTH_CODE if preset else ""),
        "柜台环境": broker.counter,
    }
    missing = [key for key, value in setting.items() if not value]
    if missing:
        raise ConfigError(
            f"CTP 设置缺少：{'、'.join(missing)}。账号、密码、授权编码请用环境变量 "
            f"{SECRET_ENV['ctp_user']}、{SECRET_ENV['ctp_password']}、{SECRET_ENV['ctp_auth_code']} 或 "
            "`ai_trading_system.py secrets set NAME` 保存；经纪商代码、前置地址、产品名称写在 settings/broker.json / "
            "CTP settings incomplete"
        )
    return setting


@dataclass(frozen=True)
class StrategyConfig:
    """One live strategy from settings/strategies.json: its instance name, class, contract and parameters."""

    name: str
    class_name: str
    vt_symbol: str
    setting: dict[str, Any]

    def vnpy_entry(self) -> dict[str, Any]:
        """The strategy's entry in vnpy's cta_strategy_setting.json."""
        return {"class_name": self.class_name, "vt_symbol": self.vt_symbol, "setting": self.setting}


def load_strategy_configs(home: Home) -> dict[str, StrategyConfig]:
    """The live strategies: settings/strategies.json (the home's file wins over the project's, name by name)."""
    from predictive_trading_strategy import PredictiveTradingStrategy

    raw: dict[str, Any] = {}
    for folder in settings_dirs(home):
        path = folder / STRATEGIES_FILE
        if path.is_file():
            raw.update(read_json_object(path))
    configs = {}
    for name, entry in raw.items():
        where = f"{STRATEGIES_FILE}: {name}"
        if not isinstance(entry, dict) or not isinstance(entry.get("vt_symbol"), str):
            raise ConfigError(f"{where} 需要 vt_symbol 和 setting / needs vt_symbol and setting")
        class_name = entry.get("class_name", STRATEGY_CLASS_NAME)
        if class_name != STRATEGY_CLASS_NAME:
            raise ConfigError(f"{where}: 只支持 {STRATEGY_CLASS_NAME}，收到 {class_name!r} / unknown class")
        setting = entry.get("setting", {})
        unknown = sorted(set(setting) - set(PredictiveTradingStrategy.parameters))
        if not isinstance(setting, dict) or unknown:
            raise ConfigError(
                f"{where}: 未知参数 {unknown}（可用：{', '.join(PredictiveTradingStrategy.parameters)}）"
                " / unknown parameters"
            )
        data_collector.parse_vt_symbol(entry["vt_symbol"])
        configs[name] = StrategyConfig(name, class_name, entry["vt_symbol"], dict(setting))
    return configs


def reconcile_vnpy_setting(home: Home, config: StrategyConfig) -> list[str]:
    """Make vnpy's cta_strategy_setting.json hold exactly this strategy (ours is the source of truth);
    returns what differed, for the log."""
    path = home.vntrader_dir / "cta_strategy_setting.json"
    current: dict[str, Any] = read_json_object(path) if path.exists() else {}
    wanted = {config.name: config.vnpy_entry()}
    changes = [f"移除 {name}" for name in current if name not in wanted]
    if current.get(config.name) != wanted[config.name]:
        changes.append(f"{'更新' if config.name in current else '加入'} {config.name}")
    if changes:
        write_json_atomic(path, wanted)
    return changes


def live_costs(spec: ContractSpec, capital: float, simulated: bool) -> dict[str, Any]:
    """The strategy parameters that make its risk book charge what the account is charged (backtest: the same)."""
    slippage = spec.slippage_ticks * spec.pricetick if simulated else 0.0  # live fills carry their own slippage
    return {
        "capital": capital,
        "commission_rate": spec.commission_rate,
        "margin_rate": spec.margin_rate,
        "slippage_cost": slippage,
    }


class ConnectionWatch:
    """Follows a gateway's log through login and the contract query; CTP itself retries silently forever."""

    def __init__(self, gateway_name: str, on_change: Callable[[bool, str], None]) -> None:
        self.gateway_name = gateway_name
        self.on_change = on_change
        self.steps: dict[str, bool] = {"交易登录": False, "行情登录": False, "合约查询": False}
        self.disconnects = 0
        self.failure = ""
        self.ready = threading.Event()

    def on_log(self, event: Any) -> None:
        """EVENT_LOG handler: mark progress, count drops, catch login failures."""
        log = event.data
        if log.gateway_name == self.gateway_name:
            self.update(str(log.msg))

    def update(self, message: str) -> None:
        """One gateway log line."""
        marks = {"交易服务器登录成功": "交易登录", "行情服务器登录成功": "行情登录", "合约信息查询成功": "合约查询"}
        for text, step in marks.items():
            if text in message:
                self.steps[step] = True
                if step == "行情登录" and self.ready.is_set():
                    logger.info("%s 行情已重新登录 / market data logged in again", self.gateway_name)
                    self.on_change(True, "行情重新登录")
        if "连接断开" in message:
            self.disconnects += 1
            if self.ready.is_set():
                logger.warning("%s %s；vnpy 会自动重连 / disconnected, reconnecting", self.gateway_name, message)
                self.on_change(False, message)
        if "登录失败" in message or "授权验证失败" in message:
            self.failure = message
            self.ready.set()
        if all(self.steps.values()) and not self.ready.is_set():
            self.ready.set()
            self.on_change(True, "登录成功")

    def wait(self, timeout: float, fronts: str) -> None:
        """Block until logged in with contracts; ConfigError on a refused login, TransientError on timeout."""
        self.ready.wait(timeout)
        if self.failure:
            # a wrong password retried in a loop locks the account: exit 2 so the watchdog does not retry
            raise ConfigError(
                f"{self.gateway_name} {self.failure}；请检查账号、密码、授权编码与经纪商代码 / login refused"
            )
        if not self.ready.is_set():
            done = "、".join(step for step, ok in self.steps.items() if ok) or "无"
            raise TransientError(
                f"{self.gateway_name} 在 {timeout:g} 秒内未完成登录和合约查询（已完成：{done}；连接断开 "
                f"{self.disconnects} 次）；请检查前置地址 {fronts} 是否可达、是否在交易时段 / connect timeout"
            )


class AITradingSystem:
    """vnpy's engines with the CTP and simulated gateways, the CTA app, the recorder, the monitor and the audit log."""

    def __init__(self, home: Home, settings: AppSettings, secrets: Secrets, audit: AuditLog | None = None) -> None:
        bind_vnpy_home(home, settings.database)
        from vnpy.event import EventEngine
        from vnpy.trader.engine import MainEngine
        from vnpy.trader.event import EVENT_LOG, EVENT_ORDER, EVENT_TRADE
        from vnpy_ctastrategy import CtaStrategyApp
        from vnpy_ctastrategy.base import EVENT_CTA_LOG
        from vnpy_ctp import CtpGateway

        import monitor
        from sim_gateway import SimGateway

        self.home, self.settings, self.secrets = home, settings, secrets
        self.audit = audit or AuditLog(home.audit_path)
        self.event_engine = EventEngine()
        self.main_engine = MainEngine(self.event_engine)
        self.main_engine.add_gateway(CtpGateway)
        self.main_engine.add_gateway(SimGateway)
        self.cta_engine: Any = self.main_engine.add_app(CtaStrategyApp)
        self.mailer = monitor.AlertMailer(
            settings.email, secrets.get("smtp_password"), settings.monitor.alert_throttle_seconds, self.audit
        )
        self.monitor = monitor.SystemMonitor(settings.monitor, self.mailer, self.audit, home.heartbeat_path, home.root)
        self.collector: data_collector.DataCollector | None = None
        self.strategy_name = self.gateway_name = ""
        self.closed = self.engine_closed = False
        self._order_states: dict[str, str] = {}
        self.event_engine.register(EVENT_ORDER, guarded("audit.order", self._on_order, logger))
        self.event_engine.register(EVENT_TRADE, guarded("audit.trade", self._on_trade, logger))
        self.event_engine.register(EVENT_CTA_LOG, guarded("strategy_log", self._on_strategy_log, logger))
        self.event_engine.register(EVENT_LOG, guarded("log", self._on_log, logger))
        self.event_engine.register(DRAIN_EVENT, guarded("drain", lambda event: event.data.set(), logger))

    # -- audit trail --

    def _on_order(self, event: Any) -> None:
        """Audit each order once per status."""
        order = event.data
        if self._order_states.get(order.vt_orderid) != order.status.value:
            self._order_states[order.vt_orderid] = order.status.value
            self.audit.write(
                "order",
                vt_orderid=order.vt_orderid,
                vt_symbol=order.vt_symbol,
                direction=order.direction.value if order.direction else "",
                offset=order.offset.value,
                price=order.price,
                volume=order.volume,
                traded=order.traded,
                status=order.status.value,
                exchange_time=order.datetime,
            )

    def _on_trade(self, event: Any) -> None:
        trade = event.data
        self.audit.write(
            "trade",
            vt_tradeid=trade.vt_tradeid,
            vt_orderid=trade.vt_orderid,
            vt_symbol=trade.vt_symbol,
            direction=trade.direction.value if trade.direction else "",
            offset=trade.offset.value,
            price=trade.price,
            volume=trade.volume,
            exchange_time=trade.datetime,
        )

    def _on_log(self, event: Any) -> None:
        """Gateway and engine log events into our log (redacted, one stream on stderr)."""
        logger.info("%s | %s", event.data.gateway_name, event.data.msg)

    def _on_strategy_log(self, event: Any) -> None:
        """Strategy log lines to the log; risk rejections and a bundle without an edge to the audit trail too."""
        from predictive_trading_strategy import NO_EDGE, RISK_REJECTION

        message = str(event.data.msg)
        logger.info("%s", message)
        for marker, audited in ((RISK_REJECTION, "risk_rejection"), (NO_EDGE, "model_no_edge")):
            if marker in message:
                self.audit.write(audited, strategy=self.strategy_name, message=message)

    def _connection_changed(self, connected: bool, detail: str) -> None:
        self.monitor.set_gateway_state(connected, detail)
        self.audit.write("login" if connected else "disconnect", detail=detail)
        if not connected:
            self.mailer.send_alert(f"网关断开：{detail} / gateway disconnected", "WARNING", key="gateway_disconnect")

    # -- connecting --

    def connect_gateway(self, name: str, setting: dict[str, Any], timeout: float) -> None:
        """Connect and wait for login and the contract query, or raise TransientError after `timeout` seconds."""
        from vnpy.trader.event import EVENT_LOG

        self.gateway_name = name
        if name != "CTP":  # the simulated exchange has its contract when connect returns (or raises)
            self.main_engine.connect(setting, name)
            self._connection_changed(True, f"{name} 已连接")
            return
        watch = ConnectionWatch(name, self._connection_changed)
        self.event_engine.register(EVENT_LOG, guarded("connection_watch", watch.on_log, logger))
        fronts = f"{setting['交易服务器']} / {setting['行情服务器']}"
        logger.info("连接 %s（%s）/ connecting", name, fronts)
        self.main_engine.connect(setting, name)
        watch.wait(timeout, fronts)
        logger.info("%s 已登录，合约 %d 个 / logged in", name, len(self.main_engine.get_all_contracts()))

    def gateway_position(self, vt_symbol: str, timeout: float) -> float:
        """The broker's net position of a contract (long − short), once the account and positions are queried."""
        from vnpy.trader.constant import Direction

        deadline = time.monotonic() + timeout
        seen_account_at = None
        while time.monotonic() < deadline:
            positions = [p for p in self.main_engine.get_all_positions() if p.vt_symbol == vt_symbol]
            if positions:
                return float(
                    sum(
                        p.volume if p.direction == Direction.LONG else -p.volume
                        for p in positions
                        if p.direction in (Direction.LONG, Direction.SHORT)
                    )
                )
            if self.main_engine.get_all_accounts():
                seen_account_at = seen_account_at or time.monotonic()
                if time.monotonic() - seen_account_at >= POSITION_SETTLE_SECONDS:
                    return 0.0  # CTP sends nothing for a contract that is not held
            time.sleep(0.05)
        raise TransientError(f"{timeout:g} 秒内未收到账户与持仓 / no account or positions from the gateway")

    # -- strategies --

    def start_trading(
        self, config: StrategyConfig, adopt_position: bool = False, position_timeout: float = 30.0
    ) -> bool:
        """Register, init and (if the restored position matches the broker's) start one strategy; False when the
        position check stopped it (logged, audited, alerted)."""
        contract = self.main_engine.get_contract(config.vt_symbol)
        if contract is None:
            raise ConfigError(
                f"网关中没有合约 {config.vt_symbol}；请在 settings/{STRATEGIES_FILE} 或 --vt-symbol "
                "指定可交易的具体合约（如 rb2605.SHFE）/ unknown contract"
            )
        for change in reconcile_vnpy_setting(self.home, config):
            logger.info("vnpy 的策略配置已按 settings/%s 校正：%s / reconciled", STRATEGIES_FILE, change)
        self.cta_engine.load_strategy_class_from_module(STRATEGY_MODULE)  # before init_engine (GUIDE §6)
        self.cta_engine.init_engine()
        self.strategy_name = config.name
        strategy = self.cta_engine.strategies.get(config.name)
        if strategy is None:
            raise ConfigError(f"策略 {config.name} 未能加入 CTA 引擎（见日志）/ strategy was not added")
        self.cta_engine.init_strategy(config.name).result()
        if strategy.signal is None:
            raise ModelError(f"策略 {config.name} 的模型未能加载：{config.setting.get('model_path')} / no model")
        self.monitor.set_model_loaded(config.name, True)
        self.audit.write("model_load", strategy=config.name, model=strategy.model_name)
        broker = self.gateway_position(config.vt_symbol, position_timeout)
        if strategy.pos != broker:
            if not adopt_position:
                self.position_mismatch(config, float(strategy.pos), broker)
                return False
            logger.warning("采用券商持仓 %s（策略记录 %s）/ adopting the broker's position", broker, strategy.pos)
            self.audit.write("position_adopted", strategy=config.name, strategy_pos=strategy.pos, broker_pos=broker)
            strategy.pos = broker
            self.cta_engine.sync_strategy_data(strategy)
        self.cta_engine.start_strategy(config.name)
        self.audit.write("strategy_start", strategy=config.name, vt_symbol=config.vt_symbol, pos=strategy.pos)
        logger.info("策略 %s 已启动，持仓 %s / strategy started", config.name, strategy.pos)
        return True

    def position_mismatch(self, config: StrategyConfig, remembered: float, broker: float) -> None:
        """Refuse to trade on a position the broker does not confirm; say how to fix it."""
        message = (
            f"策略 {config.name} 记录的持仓 {remembered:g} 与券商持仓 {broker:g}（{config.vt_symbol}）不一致，"
            "未启动交易。核对后如以券商为准，请加 --adopt-broker-position 重新运行 trade / "
            "position mismatch, trading not started"
        )
        logger.error("%s", message)
        self.audit.write("position_mismatch", strategy=config.name, strategy_pos=remembered, broker_pos=broker)
        self.mailer.send_alert(message, "CRITICAL", key=f"position_mismatch_{config.name}")

    def record(self, vt_symbols: Sequence[str], database: Path | None = None) -> None:
        """Record the contracts' ticks and 1-minute bars (the simulated exchange records into its own file)."""
        self.collector = data_collector.DataCollector(self.main_engine, self.home, database=database)
        self.collector.subscribe_market_data(vt_symbols)

    # -- running --

    def release_replay(self) -> threading.Event:
        """Let the simulated exchange start replaying (strategies are started); its `finished` event."""
        gateway: Any = self.main_engine.get_gateway("SIM")
        gateway.release()
        finished: threading.Event = gateway.finished
        return finished

    def run_headless(self, stop: threading.Event, finished: threading.Event | None = None) -> None:
        """Block until asked to stop (SIGINT/SIGTERM set `stop`) or the replay has finished."""
        while not stop.wait(0.2):
            if finished is not None and finished.is_set():
                self.drain()
                break

    def drain(self, timeout: float = 10.0) -> None:
        """Wait until the event engine has handled everything queued so far."""
        from vnpy.event import Event

        done = threading.Event()
        self.event_engine.put(Event(DRAIN_EVENT, done))  # handled in order, after everything queued before it
        done.wait(timeout)

    def run_ui(self, screenshot: Path | None = None) -> None:
        """vnpy's MainWindow with the CTA manager; with `screenshot`, save the window and close (no exit dialog)."""
        from vnpy.trader.ui import MainWindow, create_qapp
        from vnpy.trader.ui.qt import QtCore
        from vnpy_ctastrategy.ui import CtaManager

        qapp = create_qapp()
        window = MainWindow(self.main_engine, self.event_engine)
        window.showMaximized()
        # CtaManager calls init_engine() again, which would try to add our running strategy a second time
        self.cta_engine.init_engine = lambda: None
        try:
            window.open_widget(CtaManager, "CtaStrategy")
        finally:
            del self.cta_engine.init_engine
        for strategy in self.cta_engine.strategies.values():  # the widgets only show what arrives after them
            self.cta_engine.put_strategy_event(strategy)
        if self.gateway_name:
            gateway: Any = self.main_engine.get_gateway(self.gateway_name)
            gateway.query_account()
            gateway.query_position()
        if screenshot is not None:

            def capture() -> None:
                window.resize(1600, 1000)
                window.grab().save(str(screenshot))
                cta = window.widgets["CtaStrategy"]
                cta.resize(1600, 900)
                cta.grab().save(str(screenshot.with_name(f"{screenshot.stem}_cta{screenshot.suffix}")))
                logger.info("截图已保存 %s / screenshot saved", screenshot)
                self.close()
                qapp.exit(0)  # not quit(): that asks MainWindow's 确认退出 dialog and hangs offscreen (GUIDE §6)

            QtCore.QTimer.singleShot(1500, capture)
        qapp.exec()
        self.engine_closed = True  # by close() above, or by MainWindow once the user confirmed 确认退出

    def close(self) -> None:
        """Stop strategies (state saved), flush the recorder, stop alerts, close the engines; safe to call twice."""
        if self.closed:
            return
        self.closed = True
        if self.strategy_name:
            if not self.engine_closed:
                self.cta_engine.stop_all_strategies()
                self.drain(5.0)
            self.audit.write("strategy_stop", strategy=self.strategy_name)
        if self.collector is not None:
            self.collector.stop()
        self.monitor.detach()
        self.mailer.stop(5.0)
        if not self.engine_closed:  # MainWindow's exit dialog closes the engines itself
            self.main_engine.close()
        logger.info("交易系统已关闭 / trading system closed")
