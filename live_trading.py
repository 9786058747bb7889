"""Live trading: AITradingSystem wires vnpy's engines, the CTP and simulated gateways, the CTA app, the recorder,
the monitor and the audit log; CTP settings, the connect timeout, strategy settings and the position check."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import data_collector
from config import (
    CHINA_TZ,
    SECRET_ENV,
    STRATEGIES_FILE,
    AppError,
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
    json_safe,
    read_json_object,
    settings_dirs,
    write_json_atomic,
)
from contracts import DEFAULT_ROLL_MODE, is_continuous, roll_mode, split_symbol

if TYPE_CHECKING:
    from vnpy.trader.object import PositionData

    from risk_manager import PositionBook

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
LEFTOVER_CANCEL_SECONDS: float = 10.0  # how long the broker may take to confirm the cancel of a leftover order
LEGACY_VARIABLES: tuple[str, ...] = ("pos", "entry_price")  # what vnpy's json may restore when we have no state
SIM_RECORDING_DB: str = "sim_recording.db"
MAX_WARMUP_DAYS: int = 64  # the furthest back a warm-up looks for a bundle's need: the longest closure is 31 days


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
    """One live strategy from settings/strategies.json: its instance name, class, contract and parameters; on a
    continuous symbol (rb888.SHFE) also how it rolls, and once mapped the continuous symbol it came from."""

    name: str
    class_name: str
    vt_symbol: str
    setting: dict[str, Any]
    roll: str = DEFAULT_ROLL_MODE  # contracts.ROLL_MODES
    continuous: str = ""  # set by main_contract_config: vt_symbol is then that product's main contract

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
        roll = roll_mode(entry.get("roll", DEFAULT_ROLL_MODE), f"{where}: roll")
        configs[name] = StrategyConfig(name, class_name, entry["vt_symbol"], dict(setting), roll)
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
        "fees": spec.fees.text,
        "margin_rate": spec.margin_rate,
        "slippage_cost": slippage,
    }


def order_fields(order: Any) -> dict[str, Any]:
    """What the audit log records of an order (OrderData)."""
    return {
        "vt_orderid": order.vt_orderid,
        "vt_symbol": order.vt_symbol,
        "direction": order.direction.value if order.direction else "",
        "offset": order.offset.value,
        "price": order.price,
        "volume": order.volume,
        "traded": order.traded,
    }


class FileStateStore:
    """A strategy's state as one readable JSON file under the home, written atomically, and its risk events in the
    audit log: the strategy's StateStore live (the strategy itself opens no file)."""

    def __init__(self, path: Path, audit: AuditLog) -> None:
        self.path = path
        self.audit = audit

    def load(self) -> dict[str, Any] | None:
        return read_json_object(self.path) if self.path.exists() else None

    def save(self, state: dict[str, Any]) -> None:
        saved_at = datetime.now(CHINA_TZ).isoformat(timespec="milliseconds")
        write_json_atomic(self.path, json_safe({**state, "saved_at": saved_at}), indent=2)

    def record(self, event: str, fields: dict[str, Any]) -> None:
        self.audit.write(event, **fields)


def saved_states(home: Home, simulated: bool = False) -> dict[str, dict[str, Any]]:
    """The saved strategy states (live, or of SIM runs), by strategy name."""
    folder = home.sim_state_dir if simulated else home.state_dir
    paths = sorted(path for path in folder.glob("*.json") if path != home.sim_account_path)
    return {path.stem: read_json_object(path) for path in paths}


def clear_states(home: Home, simulated: bool = False, name: str | None = None) -> list[Path]:
    """Delete one strategy's saved state, or (SIM, no name) every SIM state and the simulated account; the files
    removed. Nothing else ever deletes a live state."""
    if name:
        paths = [home.strategy_state_path(name, simulated)]
    elif simulated:
        paths = sorted(home.sim_state_dir.glob("*.json"))
    else:
        raise ConfigError("清除实盘状态须用 --strategy 指明策略 / name the strategy whose live state to clear")
    removed = [path for path in paths if path.exists()]
    for path in removed:
        path.unlink()
    return removed


def restorable_variables(saved: Mapping[str, Any] | None, have_state: bool) -> dict[str, Any]:
    """What vnpy's cta_strategy_data.json may still put back after on_init: nothing when our state file exists (it
    wins), else only the position fields it always kept; never the model name or risk state just set by on_init."""
    if not saved or have_state:
        return {}
    return {name: saved[name] for name in LEGACY_VARIABLES if name in saved}


def broker_book(positions: Sequence[PositionData], vt_symbol: str) -> PositionBook:
    """The broker's positions of one contract as a PositionBook: today = volume − yesterday, at the broker's price."""
    from vnpy.trader.constant import Direction

    from risk_manager import PositionBook

    book = PositionBook()
    for position in positions:
        if position.vt_symbol != vt_symbol or not position.volume:
            continue
        today, yd = position.volume - position.yd_volume, position.yd_volume
        if position.direction == Direction.LONG:
            book.long_today, book.long_yd, book.long_price = today, yd, position.price
        elif position.direction == Direction.SHORT:
            book.short_today, book.short_yd, book.short_price = today, yd, position.price
    return book


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
        from ai_panel import AiDeskApp, AiEngine

        self.ai_engine: AiEngine = cast(AiEngine, self.main_engine.add_app(AiDeskApp))  # control spool, figures
        self.ai_engine.attach(home, self.audit, lambda: self.cta_engine.strategies)
        self.mailer = monitor.AlertMailer(
            settings.email, secrets.get("smtp_password"), settings.monitor.alert_throttle_seconds, self.audit
        )
        self.monitor = monitor.SystemMonitor(settings.monitor, self.mailer, self.audit, home.heartbeat_path, home.root)
        self.monitor.set_model_figures(  # a headless desk is watched as well as the panel watches it
            lambda: {
                name: strategy.health_figures()
                for name, strategy in list(self.cta_engine.strategies.items())
                if getattr(strategy, "risk", None) is not None
            }
        )
        self.collector: data_collector.DataCollector | None = None
        self.roller: Any = None  # rollover.Roller of a strategy on a continuous symbol
        self.strategy_name = self.gateway_name = self.main_contract = ""
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
            self.audit.write("order", **order_fields(order), status=order.status.value, exchange_time=order.datetime)

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
        from predictive_trading_strategy import NO_EDGE, OPENING_HELD, RISK_REJECTION

        message = str(event.data.msg)
        logger.info("%s", message)
        if OPENING_HELD in message:  # the strategy audited it; a person must look and resume
            self.mailer.send_alert(
                f"策略 {self.strategy_name}：{message}", "CRITICAL", key=f"hold_{self.strategy_name}"
            )
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
            # the simulated account outlives a killed process, as a broker's does
            self.main_engine.connect({"account_file": str(self.home.sim_account_path), **setting}, name)
            self._connection_changed(True, f"{name} 已连接")
            return
        watch = ConnectionWatch(name, self._connection_changed)
        self.event_engine.register(EVENT_LOG, guarded("connection_watch", watch.on_log, logger))
        fronts = f"{setting['交易服务器']} / {setting['行情服务器']}"
        logger.info("连接 %s（%s）/ connecting", name, fronts)
        self.main_engine.connect(setting, name)
        watch.wait(timeout, fronts)
        logger.info("%s 已登录，合约 %d 个 / logged in", name, len(self.main_engine.get_all_contracts()))

    def gateway_positions(self, vt_symbol: str, timeout: float) -> PositionBook:
        """The broker's positions of a contract, once the account and positions are queried."""
        from risk_manager import PositionBook

        deadline = time.monotonic() + timeout
        seen_account_at = None
        while time.monotonic() < deadline:
            positions = [p for p in self.main_engine.get_all_positions() if p.vt_symbol == vt_symbol]
            if positions:
                return broker_book(positions, vt_symbol)
            if self.main_engine.get_all_accounts():
                seen_account_at = seen_account_at or time.monotonic()
                if time.monotonic() - seen_account_at >= POSITION_SETTLE_SECONDS:
                    return PositionBook()  # CTP sends nothing for a contract that is not held
            time.sleep(0.05)
        raise TransientError(f"{timeout:g} 秒内未收到账户与持仓 / no account or positions from the gateway")

    def cancel_leftovers(self, vt_symbol: str, timeout: float = LEFTOVER_CANCEL_SECONDS) -> int:
        """Cancel (and audit) the working orders of a contract that a previous process left, and wait until the
        broker confirms; TransientError when it does not in time. Returns how many there were."""
        leftovers = [order for order in self.main_engine.get_all_active_orders() if order.vt_symbol == vt_symbol]
        for order in leftovers:
            logger.warning("撤销上一进程留下的委托 %s / cancelling a leftover order", order.vt_orderid)
            self.audit.write("leftover_order_cancel", **order_fields(order))
            self.main_engine.cancel_order(order.create_cancel_request(), order.gateway_name)
        deadline = time.monotonic() + timeout
        while True:
            working = [o.vt_orderid for o in leftovers if (self.main_engine.get_order(o.vt_orderid) or o).is_active()]
            if not working:
                return len(leftovers)
            if time.monotonic() > deadline:
                raise TransientError(
                    f"{timeout:g} 秒内未确认撤单：{', '.join(working)}；未开始交易 / leftover orders not cancelled"
                )
            time.sleep(0.05)

    # -- strategies --

    def start_trading(
        self, config: StrategyConfig, adopt_position: bool = False, position_timeout: float = 30.0
    ) -> bool:
        """Register and init one strategy (its state restored from the home), cancel the orders a previous process
        left, check its positions against the broker's, feed it the account, start it; False when the position
        check stopped it (logged, audited, alerted)."""
        from sim_gateway import SimGateway

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
        gateway = self.main_engine.get_gateway(self.gateway_name)
        if isinstance(gateway, SimGateway):
            strategy.flat_bars = gateway.roll_flat_times()
        store = FileStateStore(self.home.strategy_state_path(config.name, self.gateway_name == "SIM"), self.audit)
        strategy.store, strategy.account_required = store, True
        strategy.health = self.settings.health  # live models are watched: the health switch holds opening
        # vnpy puts its saved variables back after on_init: ours win, and the model just loaded keeps its name
        saved = self.cta_engine.strategy_data.get(config.name)
        self.cta_engine.strategy_data[config.name] = restorable_variables(saved, store.path.exists())
        self.install_warmup()
        self.cta_engine.init_strategy(config.name).result()
        if strategy.signal is None:
            raise ModelError(f"策略 {config.name} 的模型未能加载：{config.setting.get('model_path')} / no model")
        self.monitor.set_model_loaded(config.name, True)
        self.audit.write("model_load", strategy=config.name, model=strategy.model_name)
        broker = self.gateway_positions(config.vt_symbol, position_timeout)  # the broker has answered: orders too
        if self.cancel_leftovers(config.vt_symbol):
            time.sleep(POSITION_SETTLE_SECONDS)  # a leftover may have traded before its cancel: positions follow
            broker = self.gateway_positions(config.vt_symbol, position_timeout)
        logger.info(
            "本地停止单不跨进程保留；移动止损由状态恢复（最优价 %s，止损价 %s）/ local stop orders are not kept",
            strategy.best_price,
            strategy.trailing_stop_price,
        )
        if not self.check_positions(config, strategy, broker, adopt_position):
            return False
        self.follow_account(strategy)
        self.cta_engine.start_strategy(config.name)
        self.audit.write("strategy_start", strategy=config.name, vt_symbol=config.vt_symbol, pos=strategy.pos)
        logger.info("策略 %s 已启动，持仓 %s / strategy started", config.name, strategy.pos)
        if config.continuous:
            self.attach_roller(config)
        return True

    def install_warmup(self) -> None:
        """Extend CtaEngine.load_bar: a contract's 1-minute history is its own bars (gateway, datafeed or database, as
        vnpy finds them) after its product's continuous series on its price level (data_collector.warmup_history),
        so a contract nothing was recorded for predicts on its first live bar; a strategy that states its bundle's
        `warmup_need` gets as many days as that needs (its `warmup_days` doubled until met, at most
        MAX_WARMUP_DAYS: long holidays); logs how many bars came from where and whether the need is met."""
        from vnpy.trader.constant import Interval

        engine = self.cta_engine
        if getattr(engine.load_bar, "warmup", False):
            return
        vnpy_load_bar = engine.load_bar

        def load_bar(
            vt_symbol: str, days: int, interval: Interval, callback: Callable[[Any], None], use_database: bool
        ) -> list[Any]:
            need = getattr(getattr(callback, "__self__", None), "warmup_need", None)
            asked, bars, message = days, [], ""
            while True:
                own: list[Any] = vnpy_load_bar(vt_symbol, days, interval, lambda bar: None, use_database)
                if interval != Interval.MINUTE:
                    bars = own
                    break
                bars, message = self.warmup_history(vt_symbol, days, own, need)
                if need is None or need.met([bar.datetime for bar in bars]) or days >= MAX_WARMUP_DAYS:
                    break
                days = min(max(2 * days, 1), MAX_WARMUP_DAYS)
            if message:
                if need is not None:
                    met = "已满足" if need.met([bar.datetime for bar in bars]) else "不足：首根实盘K线可能没有预测"
                    message += f"；{days} 天（策略设 {asked} 天），模型需要 {need.describe()}，{met}"
                self.cta_engine.write_log(message)  # the CTA log, which _on_strategy_log puts in the process log
            return bars  # CtaTemplate.load_bar feeds them to the callback: feeding them here too fed them twice

        load_bar.warmup = True  # type: ignore[attr-defined]
        engine.load_bar = load_bar

    def history_now(self) -> datetime:
        """The time history ends at: the replay's clock on the simulated exchange, else now."""
        from sim_gateway import SimGateway

        gateway = self.main_engine.get_gateway(self.gateway_name)
        return gateway.history_anchor() if isinstance(gateway, SimGateway) else datetime.now(CHINA_TZ)

    def warmup_history(self, vt_symbol: str, days: int, own: list[Any], need: Any = None) -> tuple[list[Any], str]:
        """The warm-up bars of `install_warmup` over `days` before now, the continuous part adjusted as the bundle
        was trained (`need.adjust`, ratio without a need), and the log line saying where they came from."""
        end = self.history_now()
        adjust = getattr(need, "adjust", "ratio")
        try:
            own = data_collector.stored_before(vt_symbol, end - timedelta(days=days), end, own, self.home) + own
        except AppError as exc:
            logger.warning("读取库中的本合约K线失败：%s / stored bars unreadable", exc)
        try:
            found = data_collector.warmup_history(
                vt_symbol, end - timedelta(days=days), end, list(own), self.home, adjust
            )
        except AppError as exc:  # a warm-up problem must not keep the strategy from starting: it warms up live
            found = None
            logger.warning("主力连续预热失败，只用本合约K线：%s / continuous warm-up failed", exc)
        if found is None:
            message = (
                f"{vt_symbol} 预热K线：本合约 {len(own):,} 根（库中没有该品种的主力连续；可运行 continuous 生成）/ "
                f"warm-up bars: {len(own):,} own, no continuous series"
            )
            return list(own), message
        bars, sources = found
        return bars, sources.describe(vt_symbol)

    # -- the main contract and the roll --

    def main_contract_config(self, config: StrategyConfig) -> StrategyConfig:
        """A strategy on a continuous symbol trades its product's main contract (call after connecting): the
        largest open interest in the gateway's snapshot (before the open: yesterday's close), never an earlier
        delivery than the contract its saved state last traded; it starts on that saved contract when the main has
        moved on since, and rolls at the first prices. Logged and audited (`main_contract`)."""
        import rollover

        if not is_continuous(config.vt_symbol):
            return config
        saved = FileStateStore(self.home.strategy_state_path(config.name, self.gateway_name == "SIM"), self.audit)
        held = str((saved.load() or {}).get("vt_symbol") or "")
        ticks = rollover.gateway_snapshot(self, config.vt_symbol)
        days = rollover.snapshot_days(ticks)
        floor = held if self._same_product(held, config.vt_symbol) else ""
        if floor and floor not in {day.symbol for day in days}:
            raise ConfigError(
                f"策略 {config.name} 的已存状态在合约 {floor} 上，但网关没有该合约的行情；核对持仓后用 "
                f"`ai_trading_system.py state --strategy {config.name} --clear` 清除 / the saved contract is not listed"
            )
        self.main_contract = rollover.main_from_days(days, floor)
        vt_symbol = floor or self.main_contract
        logger.info(
            "%s 的主力合约为 %s（%s 持仓量：%s）；策略 %s 在 %s 上启动 / main contract",
            config.vt_symbol,
            self.main_contract,
            days[0].trading_day,
            "，".join(f"{day.symbol} {day.open_interest:,.0f}" for day in days),
            config.name,
            vt_symbol,
        )
        self.audit.write(
            "main_contract",
            strategy=config.name,
            continuous=config.vt_symbol,
            main=self.main_contract,
            vt_symbol=vt_symbol,
            saved_contract=held or None,
            trading_day=days[0].trading_day,
            open_interest={day.symbol: day.open_interest for day in days},
            roll=config.roll,
        )
        return replace(config, vt_symbol=vt_symbol, continuous=config.vt_symbol)

    @staticmethod
    def _same_product(vt_symbol: str, continuous: str) -> bool:
        """Whether a vt_symbol is a contract (not a continuous series) of a continuous symbol's product and exchange."""
        try:
            same = split_symbol(vt_symbol)[0] == split_symbol(continuous)[0] and not is_continuous(vt_symbol)
        except ConfigError:
            return False
        return same and vt_symbol.partition(".")[2] == continuous.partition(".")[2]

    def market_symbols(self, config: StrategyConfig) -> list[str]:
        """What to record for a strategy: its contract, and on a continuous symbol every contract of the product,
        so the next main contract has recorded bars to warm up from when the strategy rolls onto it."""
        import rollover

        if not config.continuous:
            return [config.vt_symbol]
        listed = rollover.product_contracts(
            self.main_engine.get_all_contracts(), config.continuous, rollover.gateway_day(self)
        )
        return [config.vt_symbol, *(c.vt_symbol for c in listed if c.vt_symbol != config.vt_symbol)]

    def attach_roller(self, config: StrategyConfig) -> None:
        """Follow the product's ticks and roll the strategy to each new main contract (rollover.Roller)."""
        import rollover

        listed = self.main_engine.get_all_contracts()
        contracts = rollover.product_contracts(listed, config.continuous, rollover.gateway_day(self))
        ticks = [tick for tick in (self.main_engine.get_tick(c.vt_symbol) for c in contracts) if tick is not None]
        watch = rollover.MainWatch(self.main_contract or config.vt_symbol, ticks)
        self.roller = rollover.Roller(self, config.name, config.continuous, config.roll, watch)
        self.roller.attach()

    def recreate_strategy(self, old: Any, vt_symbol: str) -> Any:
        """The stopped strategy again on another contract, as vnpy's rollover tool does it (remove, add, init,
        start): its state comes back from the store (saved under the new contract), the loaded model is reused and
        warms up on the new contract's history."""
        from predictive_trading_strategy import ModelSignal

        name = old.strategy_name
        self.cta_engine.remove_strategy(name)
        self.cta_engine.add_strategy(old.__class__.__name__, name, vt_symbol, old.get_parameters())
        strategy = self.cta_engine.strategies[name]
        strategy.store, strategy.account_required = old.store, old.account_required
        if isinstance(old.signal, ModelSignal):
            strategy.signal = ModelSignal(old.signal.model, vt_symbol)
        self.cta_engine.init_strategy(name).result()
        if strategy.signal is None or strategy.risk is None:
            raise ModelError(f"策略 {name} 在 {vt_symbol} 上未能初始化（见日志）/ not initialised after the roll")
        for account in self.main_engine.get_all_accounts():
            if account.gateway_name == self.gateway_name:
                strategy.on_account(account)
        self.cta_engine.start_strategy(name)
        if self.collector is not None:
            self.collector.subscribe_market_data([vt_symbol])
        self.audit.write("strategy_start", strategy=name, vt_symbol=vt_symbol, pos=strategy.pos)
        return strategy

    def check_positions(self, config: StrategyConfig, strategy: Any, broker: PositionBook, adopt: bool) -> bool:
        """Compare the strategy's long and short, today and yesterday, with the broker's: equal totals take the
        broker's split; different ones stop here unless `adopt`, which books the broker's at its prices."""
        from risk_manager import PositionBook, position_differences, same_holdings, with_broker_split

        ours: PositionBook = strategy.risk.state.positions
        if strategy.risk.net_position != strategy.pos:  # only vnpy's own json remembered a position
            ours = PositionBook(long_yd=max(strategy.pos, 0.0), short_yd=max(-strategy.pos, 0.0))
        differences = position_differences(ours, broker)
        if not differences:
            strategy.adopt_positions(with_broker_split(ours, broker))  # the broker's prices where ours are unknown
            return True
        if same_holdings(ours, broker):
            logger.info(
                "今昨仓划分按券商校正：%s / today-yesterday split taken from the broker", "；".join(differences)
            )
            strategy.adopt_positions(with_broker_split(ours, broker))
            return True
        if not adopt:
            self.position_mismatch(config, float(strategy.pos), broker.net, differences)
            return False
        logger.warning("采用券商持仓：%s / adopting the broker's positions", "；".join(differences))
        self.audit.write(
            "position_adopted",
            strategy=config.name,
            strategy_pos=strategy.pos,
            broker_pos=broker.net,
            differences=differences,
            long_price=broker.long_price,
            short_price=broker.short_price,
        )
        strategy.adopt_positions(broker)
        self.cta_engine.sync_strategy_data(strategy)
        return True

    def follow_account(self, strategy: Any) -> None:
        """Feed the gateway's account events (and the latest one) to the strategy: its equity for the limits."""
        from vnpy.trader.event import EVENT_ACCOUNT

        def forward(event: Any) -> None:
            current = self.cta_engine.strategies.get(strategy.strategy_name)  # a roll recreates the strategy
            if event.data.gateway_name == self.gateway_name and current is not None:
                current.on_account(event.data)

        self.event_engine.register(EVENT_ACCOUNT, guarded("strategy.account", forward, logger))
        for account in self.main_engine.get_all_accounts():
            if account.gateway_name == self.gateway_name:
                strategy.on_account(account)

    def position_mismatch(
        self, config: StrategyConfig, remembered: float, broker: float, differences: Sequence[str] = ()
    ) -> None:
        """Refuse to trade on a position the broker does not confirm; say what differs and how to fix it."""
        detail = f"（{'；'.join(differences)}）" if differences else ""
        message = (
            f"策略 {config.name} 记录的持仓 {remembered:g} 与券商持仓 {broker:g}（{config.vt_symbol}）不一致{detail}，"
            "未启动交易。核对后如以券商为准，请加 --adopt-broker-position 重新运行 trade / "
            "position mismatch, trading not started"
        )
        logger.error("%s", message)
        self.audit.write(
            "position_mismatch",
            strategy=config.name,
            strategy_pos=remembered,
            broker_pos=broker,
            differences=list(differences),
        )
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

        import ai_panel

        ai_panel.register_ui_module()  # MainWindow's app menu imports the panel from `ai_panel.ui`
        qapp = create_qapp()
        window = MainWindow(self.main_engine, self.event_engine)
        window.showMaximized()
        # CtaManager calls init_engine() again, which would try to add our running strategy a second time
        self.cta_engine.init_engine = lambda: None
        try:
            window.open_widget(CtaManager, "CtaStrategy")
        finally:
            del self.cta_engine.init_engine
        window.open_widget(ai_panel.AiPanel, ai_panel.APP_NAME)  # mode 1 opens the AI desk by default
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
                panel = cast(ai_panel.AiPanel, window.widgets[ai_panel.APP_NAME])
                panel.resize(1800, 1000)
                qapp.processEvents()  # the new size reaches the chart's view boxes before it is drawn
                panel.refresh(force=True)
                qapp.processEvents()
                panel.grab().save(str(screenshot.with_name(f"{screenshot.stem}_ai{screenshot.suffix}")))
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
            strategy = self.cta_engine.strategies.get(self.strategy_name)
            self.audit.write("strategy_stop", strategy=self.strategy_name, pos=strategy.pos if strategy else None)
        if self.collector is not None:
            self.collector.stop()
        self.monitor.detach()
        self.mailer.stop(5.0)
        if not self.engine_closed:  # MainWindow's exit dialog closes the engines itself
            self.main_engine.close()
        self.end_sim_world()
        logger.info("交易系统已关闭 / trading system closed")

    def end_sim_world(self) -> None:
        """A replay that reached its end leaves nothing to resume: remove the simulated account and SIM states
        (a killed or stopped one keeps them, and the next SIM run in this home continues it)."""
        if self.gateway_name != "SIM" or not getattr(self.main_engine.get_gateway("SIM"), "completed", False):
            return
        clear_states(self.home, simulated=True)
        logger.info("回放已完成，模拟账户与 SIM 策略状态已清除 / replay complete, simulated state removed")


# --- the control spool: commands to a running strategy from the command line or the AI panel -------------------

CONTROL_DIR: str = "control"  # under the home: <strategy>/inbox/*.json, <strategy>/replies/<id>.json
ACTIONS: tuple[str, ...] = ("halt", "resume", "flatten", "switch-model")
COMMAND_TTL_SECONDS: float = 60.0  # an older command is answered "expired", never carried out
CLAIMED: str = ".claimed"


@dataclass(frozen=True)
class Command:
    """One request to a running strategy, as a JSON file in its inbox."""

    id: str
    strategy: str
    action: str
    bundle: str  # switch-model only
    by: str  # who asked: cli:<user> or panel:<user>
    created: float  # epoch seconds

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ConfigError(f"未知操作 {self.action!r}（可用：{', '.join(ACTIONS)}）/ unknown action")
        if (self.action == "switch-model") != bool(self.bundle):
            raise ConfigError("switch-model 需要模型包，其他操作不需要 / switch-model takes a bundle, others none")
        if not self.strategy or "/" in self.strategy or self.strategy.startswith("."):
            raise ConfigError(f"策略名无效：{self.strategy!r} / invalid strategy name")


@dataclass(frozen=True)
class Reply:
    """The running process's answer to one command."""

    id: str
    ok: bool
    message: str


def inbox(home: Home, strategy: str) -> Path:
    return home.root / CONTROL_DIR / strategy / "inbox"


def reply_path(home: Home, strategy: str, command_id: str) -> Path:
    return home.root / CONTROL_DIR / strategy / "replies" / f"{command_id}.json"


def new_command(strategy: str, action: str, bundle: str = "", by: str = "") -> Command:
    """A command with a fresh id, stamped now."""
    user = by or f"cli:{os.environ.get('USER', '?')}"
    return Command(f"{time.time_ns()}-{uuid.uuid4().hex[:8]}", strategy, action, bundle, user, time.time())


def send_command(home: Home, command: Command) -> Path:
    """Drop a command into the strategy's inbox, written atomically (the process never reads half a file)."""
    path = inbox(home, command.strategy) / f"{command.id}.json"
    write_json_atomic(path, asdict(command))
    return path


def withdraw(path: Path) -> bool:
    """Take back a command nobody claimed; False when the running process has claimed it already."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def await_reply(home: Home, command: Command, timeout: float) -> Reply | None:
    """The process's reply, or None after `timeout` seconds."""
    path = reply_path(home, command.strategy, command.id)
    deadline = time.monotonic() + timeout
    while True:  # looked at once at least, so a timeout of 0 asks without waiting
        if path.exists():
            raw = read_json_object(path)
            path.unlink(missing_ok=True)
            return Reply(command.id, bool(raw.get("ok")), str(raw.get("message", "")))
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.1)


def claim_commands(home: Home, strategy: str) -> list[Command]:
    """Claim (rename) and read every command waiting in a strategy's inbox, oldest first; a file that cannot be
    read as a command is claimed, logged and dropped."""
    folder = inbox(home, strategy)
    if not folder.is_dir():
        return []
    commands = []
    for path in sorted(folder.glob("*.json")):
        claimed = path.with_name(path.name + CLAIMED)
        try:
            path.rename(claimed)  # the sender can no longer withdraw it
        except FileNotFoundError:
            continue
        try:
            raw = json.loads(claimed.read_text(encoding="utf-8"))
            commands.append(Command(**raw))
        except (AppError, TypeError, ValueError) as exc:
            logger.warning("无法读取控制命令 %s（%s），已丢弃 / unreadable control command dropped", path.name, exc)
        finally:
            claimed.unlink(missing_ok=True)
    return commands


def answer(home: Home, command: Command, ok: bool, message: str) -> None:
    """Write the reply the sender waits for."""
    write_json_atomic(reply_path(home, command.strategy, command.id), asdict(Reply(command.id, ok, message)))


def configured_strategies(home: Home) -> list[str]:
    """The strategy names of settings/strategies.json (project's and home's), unchecked, without importing vnpy."""
    names: dict[str, None] = {}
    for folder in settings_dirs(home):
        path = folder / STRATEGIES_FILE
        if path.is_file():
            names.update(dict.fromkeys(read_json_object(path)))
    return list(names)
