"""Paths, the home folder, typed settings, errors and exit codes (the bottom of the import graph)."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import re
import shutil
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import date, datetime
from datetime import time as clock_time
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload
from zoneinfo import ZoneInfo

if TYPE_CHECKING:  # numpy only types the vectorised cost; config imports nothing heavy
    import numpy as np

PROJECT_DIR: Path = Path(__file__).resolve().parent
SETTINGS_DIR: Path = PROJECT_DIR / "settings"
SHARED_DATA_DIR: Path = PROJECT_DIR.parent / "shared" / "data"
SAMPLE_BARS_CSV: Path = SHARED_DATA_DIR / "rb0000_1min_2010_2016.csv.bz2"
SAMPLE_TICKS_CSV: Path = SHARED_DATA_DIR / "SHFE.cu1909_ticks_20190916.csv"
SAMPLE_VT_SYMBOL: str = "rb0000.SHFE"
# the code that turns bars into predictions: part of the prediction cache key
FEATURE_CODE_FILES: tuple[Path, ...] = (
    PROJECT_DIR / "trading_calendar.py",
    PROJECT_DIR / "bar_features.py",
    PROJECT_DIR / "data_processor.py",
    PROJECT_DIR / "ml_model.py",
    PROJECT_DIR / "predictive_trading_strategy.py",  # batch_predictions
    SETTINGS_DIR / "contracts.toml",  # the trading hours the calendar features read
)

TIMEZONE_NAME: str = "Asia/Shanghai"
CHINA_TZ: ZoneInfo = ZoneInfo(TIMEZONE_NAME)

HOME_ENV: str = "AI_TRADER_HOME"
ENV_PREFIX: str = "AI_TRADER_"
VNTRADER_FOLDER: str = ".vntrader"
VT_SETTING_FILENAME: str = "vt_setting.json"
CONTRACTS_FILE: str = "contracts.toml"  # every product's facts: size, tick, margin, fees, hours
LEGACY_CONTRACTS_FILE: str = "contracts.json"  # the table before issue 18: refused with a hint
LEGACY_CONTRACTS_MESSAGE: str = (
    "{path}: 合约表已改为 contracts.toml（每个品种一行，手续费分开仓/平仓/平今，见 docs/settings.md）；"
    "请把其中的品种移到同目录 contracts.toml 的 [products] 中并删除此文件 / contracts.json is now contracts.toml"
)
EXCHANGES: tuple[str, ...] = ("SHFE", "INE", "DCE", "CZCE", "CFFEX", "GFEX")
STRATEGIES_FILE: str = "strategies.json"  # the live strategies: name -> class, vt_symbol and parameters
AUDIT_FILENAME: str = "audit.jsonl"
SECRETS_FILENAME: str = "secrets.enc"
DEFAULT_CAPITAL: float = 1_000_000.0  # the account size a backtest, the simulated exchange and the strategy assume
# secrets are read from these variables (or the encrypted secrets file), never from settings/
SECRET_ENV: dict[str, str] = {
    "ctp_user": "AI_TRADER_CTP_USER",
    "ctp_password": "AI_TRADER_CTP_PASSWORD",
    "ctp_auth_code": "AI_TRADER_CTP_AUTH_CODE",
    "smtp_password": "AI_TRADER_SMTP_PASSWORD",
    "db_password": "AI_TRADER_DB_PASSWORD",  # the PostgreSQL login (database.name = postgresql)
}
SECRET_KEY_ENV: str = "AI_TRADER_SECRET_KEY_FILE"  # where the secrets file's key lives (outside the repository)
DEFAULT_SECRET_KEY: Path = Path("~/.config/ai_trader/secret.key")

EXIT_OK: int = 0
EXIT_BUG: int = 1
EXIT_BAD_INPUT: int = 2
EXIT_TRANSIENT: int = 3


class AppError(Exception):
    """An error a user can act on; its exit code tells the watchdog what to do."""

    exit_code: int = EXIT_BAD_INPUT


class ConfigError(AppError):
    """Settings, home folder or command line are wrong: a human must fix them."""


class DataError(AppError):
    """Market data is missing or invalid."""


class ModelError(AppError):
    """A model bundle is missing, invalid or does not match the running code."""


class TransientError(AppError):
    """A network or gateway failure that may go away on retry."""

    exit_code = EXIT_TRANSIENT


DATABASE_NAMES: tuple[str, ...] = ("sqlite", "postgresql")
PG_DATABASE_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]{0,62}")


@dataclass(frozen=True)
class DatabaseSettings:
    """Where bars and ticks are stored: vnpy's sqlite adapter (one file in the home's .vntrader) or a PostgreSQL
    server through vnpy_postgresql; its password is a secret (`db_password`), never a setting."""

    name: str = "sqlite"  # sqlite | postgresql
    database: str = "database.db"  # sqlite: the file name in .vntrader; postgresql: the database on the server
    host: str = "localhost"  # postgresql only, as are port and user
    port: int = 5432
    user: str = ""

    def __post_init__(self) -> None:
        if self.name not in DATABASE_NAMES:
            raise ConfigError(
                f"database.name 必须是 sqlite 或 postgresql，收到 {self.name!r} / must be sqlite or postgresql"
            )
        if self.name == "sqlite":
            if not self.database or Path(self.database).name != self.database:
                raise ConfigError(
                    f"database.database 必须是 .vntrader 下的文件名，收到 {self.database!r} / must be a plain file name"
                )
            return
        if not PG_DATABASE_PATTERN.fullmatch(self.database):
            raise ConfigError(
                f"database.database 必须是 PostgreSQL 数据库名（字母、数字、_、-，如 vnpy），收到 {self.database!r} / "
                "must name a PostgreSQL database"
            )
        if not self.host.strip():
            raise ConfigError("database.host 不能为空 / host is empty")
        if not 0 < self.port < 65536:
            raise ConfigError(f"database.port 必须在 1-65535，收到 {self.port} / bad port")
        if not self.user.strip():
            raise ConfigError("database.name 为 postgresql 时必须设置 database.user / user is required")

    def vt_settings(self) -> dict[str, Any]:
        """The `database.*` keys of vnpy's vt_setting.json; never the password."""
        keys: dict[str, Any] = {
            "database.name": self.name,
            "database.database": self.database,
            "database.timezone": TIMEZONE_NAME,
        }
        if self.name == "postgresql":
            keys.update({"database.host": self.host, "database.port": self.port, "database.user": self.user})
        return keys

    def describe(self) -> str:
        """Where the data lives, for messages: the SQLite file name or `postgresql://user@host:port/database`."""
        if self.name == "sqlite":
            return self.database
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"


@dataclass(frozen=True)
class ModelSettings:
    """Shape and training settings of the prediction model."""

    sequence_length: int = 60
    features_count: int = 30
    prediction_horizon: int = 5
    model_type: str = "lstm"
    epochs: int = 100
    batch_size: int = 256  # throughput on a 2-core CPU; the seed used 32

    def __post_init__(self) -> None:
        for name in ("sequence_length", "features_count", "prediction_horizon", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} 必须 ≥ 1，收到 {getattr(self, name)} / must be at least 1")
        if self.model_type not in ("lstm", "random_forest"):
            raise ConfigError(
                f"model.model_type 必须是 lstm 或 random_forest，收到 {self.model_type!r} / unknown model type"
            )


@dataclass(frozen=True)
class RiskSettings:
    """Account-level risk limits (fractions of equity) and order-flow limits."""

    max_daily_loss_rate: float = 0.02
    max_position_ratio: float = 0.1
    max_single_trade_ratio: float = 0.05
    max_orders_per_minute: int = 20
    duplicate_order_seconds: float = 5.0  # an identical order within this many seconds is refused
    max_price_deviation: float = 0.05  # an order priced further than this fraction from the last price is refused

    def __post_init__(self) -> None:
        for name in ("max_daily_loss_rate", "max_position_ratio", "max_single_trade_ratio", "max_price_deviation"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ConfigError(f"risk.{name} 必须在 (0, 1] 之间，收到 {value} / must be in (0, 1]")
        if self.max_single_trade_ratio > self.max_position_ratio:
            raise ConfigError(
                "risk.max_single_trade_ratio 不能大于 risk.max_position_ratio "
                f"({self.max_single_trade_ratio} > {self.max_position_ratio}) / single trade exceeds position limit"
            )
        if self.max_orders_per_minute < 1:
            raise ConfigError(f"risk.max_orders_per_minute 必须 ≥ 1，收到 {self.max_orders_per_minute} / must be ≥ 1")
        if self.duplicate_order_seconds < 0:
            raise ConfigError(
                f"risk.duplicate_order_seconds 不能为负，收到 {self.duplicate_order_seconds} / must be ≥ 0"
            )

    def strategy_parameters(self) -> dict[str, float]:
        """The limits as PredictiveTradingStrategy's parameters (what a strategy's own setting may override)."""
        return {
            "max_daily_loss_rate": self.max_daily_loss_rate,
            "max_position_ratio": self.max_position_ratio,
            "max_single_trade_ratio": self.max_single_trade_ratio,
        }


# --- contract facts: fees, trading hours, the product table -----------------------------------------------------

Window = tuple[clock_time, clock_time]  # [open, close) of bar START times; a close before the open runs past midnight
Era = tuple[date, tuple[Window, ...]]  # the windows in force from a session date on
FEE_SIDES: tuple[str, ...] = ("open", "close", "close_today")
MAX_FEE_RATE: float = 0.01  # of turnover: a larger rate is a typo (the dearest exchange rate is a few parts in 10,000)
MAX_FEE_PER_LOT: float = 1000.0  # money per lot


def fee_amount(price: float, volume: float, size: float, rate: float, per_lot: float) -> float:
    """Money charged for `volume` lots at `price`: turnover × rate + volume × per_lot (turnover multiplied in vnpy's
    order, so a rate-only fee is vnpy's commission to the last bit)."""
    return volume * size * price * rate + volume * per_lot


def close_fee_amount(
    price: float,
    volume: float,
    size: float,
    today: float,
    close_rate: float,
    close_per_lot: float,
    today_rate: float,
    today_per_lot: float,
) -> float:
    """Money charged for closing `volume` lots of which `today` were opened on the same trading day (close-today)."""
    if today <= 0 or (close_rate == today_rate and close_per_lot == today_per_lot):
        return fee_amount(price, volume, size, close_rate, close_per_lot)
    if today >= volume:
        return fee_amount(price, volume, size, today_rate, today_per_lot)
    earlier = fee_amount(price, volume - today, size, close_rate, close_per_lot)
    return earlier + fee_amount(price, today, size, today_rate, today_per_lot)


@dataclass(frozen=True)
class Fees:
    """What the exchange charges each side of a trade: a rate of turnover or money per lot (one kind a side) to open,
    to close a position opened on an earlier trading day (close) and to close one opened the same day (close-today).

    As text (the table's `fees`, the strategy's `fees` parameter): three items, open, close and close-today; a number
    is a rate of turnover, `N/lot` is N per lot: "0.0001 0.0001 0.0001", "1.5/lot 1.5/lot 0/lot".
    """

    open_rate: float = 0.0
    open_per_lot: float = 0.0
    close_rate: float = 0.0
    close_per_lot: float = 0.0
    close_today_rate: float = 0.0
    close_today_per_lot: float = 0.0

    def __post_init__(self) -> None:
        for side in FEE_SIDES:
            rate, per_lot = getattr(self, f"{side}_rate"), getattr(self, f"{side}_per_lot")
            if not (math.isfinite(rate) and 0 <= rate < MAX_FEE_RATE):
                raise ConfigError(f"{side} 手续费率 {rate} 应在 [0, {MAX_FEE_RATE}) / fee rate out of range")
            if not (math.isfinite(per_lot) and 0 <= per_lot < MAX_FEE_PER_LOT):
                raise ConfigError(
                    f"{side} 每手手续费 {per_lot} 应在 [0, {MAX_FEE_PER_LOT:g}) / fee per lot out of range"
                )
            if rate and per_lot:
                raise ConfigError(
                    f"{side} 手续费只能按金额或按手其中一种（{rate}, {per_lot}/lot）/ one kind of fee per side"
                )

    @classmethod
    def of_rate(cls, rate: float) -> Fees:
        """One rate of turnover for every side (vnpy's BacktestingEngine `rate`)."""
        return cls(open_rate=rate, close_rate=rate, close_today_rate=rate)

    @classmethod
    def parse(cls, text: str, where: str = "fees") -> Fees:
        """Fees from their text (class docstring); ConfigError naming `where` when it is not three fees."""
        items = text.split()
        if len(items) != len(FEE_SIDES):
            raise ConfigError(
                f'{where} 应为开仓、平仓、平今三项（如 "0.0001 0.0001 0.0001" 或 "1.5/lot 1.5/lot 0/lot"），'
                f"收到 {text!r} / fees are three items: open, close, close-today"
            )
        values: dict[str, float] = {}
        for side, item in zip(FEE_SIDES, items, strict=True):
            number, per_lot, unit = item.partition("/")
            try:
                amount = float(number)
            except ValueError:
                amount = math.nan
            if (per_lot and unit != "lot") or not math.isfinite(amount):
                raise ConfigError(f"{where}: {side} 手续费 {item!r} 应为费率或 N/lot / a fee is a rate or N/lot")
            values[f"{side}_per_lot" if per_lot else f"{side}_rate"] = amount
        return cls(**values)

    @property
    def text(self) -> str:
        """The fees as text, the form `parse` reads."""
        items = []
        for side in FEE_SIDES:
            per_lot = getattr(self, f"{side}_per_lot")
            items.append(f"{per_lot!r}/lot" if per_lot else repr(getattr(self, f"{side}_rate")))
        return " ".join(items)

    @property
    def rate_only(self) -> bool:
        """One rate for every side and nothing per lot: what vnpy's engine charges by itself."""
        no_lot = not (self.open_per_lot or self.close_per_lot or self.close_today_per_lot)
        return no_lot and self.open_rate == self.close_rate == self.close_today_rate

    def open_fee(self, price: float, volume: float, size: float) -> float:
        """Money charged for opening `volume` lots at `price`."""
        return fee_amount(price, volume, size, self.open_rate, self.open_per_lot)

    def close_fee(self, price: float, volume: float, size: float, today: float = 0.0) -> float:
        """Money charged for closing `volume` lots at `price`, `today` of them opened on the same trading day."""
        return close_fee_amount(
            price,
            volume,
            size,
            today,
            self.close_rate,
            self.close_per_lot,
            self.close_today_rate,
            self.close_today_per_lot,
        )


def parse_hours(text: str, where: str) -> tuple[Window, ...]:
    """Trading windows from "21:00-23:00 09:00-10:15 ..." (bar start times, [open, close)); ConfigError naming `where`
    unless each window is two HH:MM times that differ and no two windows overlap."""
    windows: list[Window] = []
    covered: set[int] = set()
    for item in text.split():
        start_text, dash, end_text = item.partition("-")
        if not dash:
            raise ConfigError(f"{where}: 交易时段 {item!r} 应为 HH:MM-HH:MM / a window is HH:MM-HH:MM")
        start, end = parse_clock(start_text, where), parse_clock(end_text, where)
        first, last = start.hour * 60 + start.minute, end.hour * 60 + end.minute
        minutes = {(first + offset) % 1440 for offset in range((last - first) % 1440)}
        if not minutes or minutes & covered:
            raise ConfigError(f"{where}: 交易时段 {item!r} 为空或与其他时段重叠 / an empty or overlapping window")
        covered |= minutes
        windows.append((start, end))
    if not windows:
        raise ConfigError(f"{where}: 没有交易时段 / no trading windows")
    return tuple(windows)


@dataclass(frozen=True)
class ContractSpec:
    """Trading facts of one product: lot size, price tick, margin, the exchange's fees, the usual slippage and the
    trading hours by era (settings/contracts.toml)."""

    size: float
    pricetick: float
    margin_rate: float
    fees: Fees
    slippage_ticks: int = 1
    exchange: str = ""
    name: str = ""
    sessions: tuple[Era, ...] = field(default=(), repr=False)  # oldest first; empty: unknown (inferred from bars)

    def __post_init__(self) -> None:
        if not (self.size > 0 and self.pricetick > 0 and math.isfinite(self.size) and math.isfinite(self.pricetick)):
            raise ConfigError(f"合约乘数和最小变动价位必须 > 0（{self.size}, {self.pricetick}）/ must be positive")
        if not 0 < self.margin_rate <= 1:
            raise ConfigError(f"保证金率 {self.margin_rate} 应在 (0, 1] / margin rate out of range")
        if self.slippage_ticks < 0:
            raise ConfigError(f"滑点跳数 {self.slippage_ticks} 不能为负 / slippage ticks must be ≥ 0")
        if self.exchange and self.exchange not in EXCHANGES:
            raise ConfigError(f"交易所 {self.exchange!r} 未知（可用：{', '.join(EXCHANGES)}）/ unknown exchange")
        since = [era[0] for era in self.sessions]
        if any(later <= earlier for earlier, later in zip(since, since[1:], strict=False)):
            raise ConfigError(f"交易时段的起始日期必须递增：{since} / session eras must be in date order")

    @overload
    def round_trip_return(self, price: float) -> float: ...
    @overload
    def round_trip_return(self, price: np.ndarray) -> np.ndarray: ...
    def round_trip_return(self, price: float | np.ndarray) -> float | np.ndarray:
        """Round-trip cost as a return at `price` (number or array): opening and closing on the same trading day
        (close-today: a label's trade lasts minutes) and slippage ticks each side."""
        fees = self.fees
        cost = fees.open_rate + fees.close_today_rate + 2 * self.slippage_ticks * self.pricetick / price
        per_lot = fees.open_per_lot + fees.close_today_per_lot
        return cost + per_lot / (price * self.size) if per_lot else cost


def _require_positive(section: str, owner: Any, names: Sequence[str]) -> None:
    """ConfigError unless each named numeric field is > 0."""
    for name in names:
        value = getattr(owner, name)
        if not value > 0:
            raise ConfigError(f"{section}.{name} 必须 > 0，收到 {value} / must be positive")


@dataclass(frozen=True)
class MonitorSettings:
    """Thresholds of the resource and health monitor, and how alerts are paced."""

    cpu_percent: float = 90.0
    memory_percent: float = 90.0
    disk_percent: float = 90.0
    check_interval_seconds: float = 30.0
    stale_data_seconds: float = 180.0  # no tick for this long inside a trading session is an alert
    heartbeat_interval_seconds: float = 5.0  # how often the trading process touches its heartbeat file
    strategy_silence_seconds: float = 300.0  # a trading strategy with no bar for this long in a session is stuck
    alert_throttle_seconds: float = 600.0  # the same alert is sent at most once per window; repeats are counted
    daily_summary_time: str = "15:30"  # HH:MM China time; empty turns the daily summary off

    def __post_init__(self) -> None:
        for name in ("cpu_percent", "memory_percent", "disk_percent"):
            if not 0 < getattr(self, name) <= 100:
                raise ConfigError(f"monitor.{name} 必须在 (0, 100]，收到 {getattr(self, name)} / must be a percentage")
        _require_positive(
            "monitor",
            self,
            ("check_interval_seconds", "stale_data_seconds", "heartbeat_interval_seconds", "strategy_silence_seconds"),
        )
        if self.alert_throttle_seconds < 0:
            raise ConfigError(
                f"monitor.alert_throttle_seconds 不能为负，收到 {self.alert_throttle_seconds} / must be ≥ 0"
            )
        if self.daily_summary_time:
            parse_clock(self.daily_summary_time, "monitor.daily_summary_time")


@dataclass(frozen=True)
class HealthSettings:
    """The model-health switch: when a live model stops opening (reduce-only) until a person resumes it."""

    nonfinite_bars: int = 30  # this many bars in a row with non-finite features or predictions (warm-up excepted)
    out_of_range_bars: int = 30  # this many predictions in a row outside the training range (widened by the margin)
    range_margin: float = 0.5  # the training predictions' [min, max] widened by this fraction of its width each side
    drift_window_bars: int = 2760  # recent live feature rows compared with the training distribution (~8 days)
    max_drift_psi: float = 1.5  # the features' median population stability index above this is drift
    quality_window: int = 4000  # matured predictions behind the live IC, rank IC and hit rate
    min_live_ic: float = -0.1  # a live IC below this over a full quality window stops opening
    model_life_days: float = 365.0  # days after the end of the bundle's data (its last range) the model may trade

    def __post_init__(self) -> None:
        for name in ("nonfinite_bars", "out_of_range_bars", "drift_window_bars", "quality_window"):
            if getattr(self, name) < 2:
                raise ConfigError(f"health.{name} 必须 ≥ 2，收到 {getattr(self, name)} / must be at least 2")
        _require_positive("health", self, ("max_drift_psi", "model_life_days"))
        if self.range_margin < 0:
            raise ConfigError(f"health.range_margin 不能为负，收到 {self.range_margin} / must be ≥ 0")
        if not -1 <= self.min_live_ic < 1:
            raise ConfigError(f"health.min_live_ic 必须在 [-1, 1)，收到 {self.min_live_ic} / must be in [-1, 1)")


@dataclass(frozen=True)
class EmailSettings:
    """The SMTP account alerts are sent from; the password comes from the environment or the secrets file."""

    host: str = ""  # empty: alerts are logged and audited but not mailed
    port: int = 465
    security: str = "ssl"  # ssl | starttls | none (none only for a server on this machine)
    username: str = ""
    sender: str = ""
    recipients: str = ""  # comma-separated addresses
    timeout_seconds: float = 10.0

    def __post_init__(self) -> None:
        if self.security not in ("ssl", "starttls", "none"):
            raise ConfigError(f"email.security 必须是 ssl、starttls 或 none，收到 {self.security!r} / unknown security")
        if not 0 < self.port < 65536:
            raise ConfigError(f"email.port 必须在 1-65535，收到 {self.port} / bad port")
        _require_positive("email", self, ("timeout_seconds",))
        if self.host and not (self.sender and self.recipient_list):
            raise ConfigError(
                "email.host 已设置，但 email.sender 或 email.recipients 为空 / sender and recipients are needed"
            )

    @property
    def recipient_list(self) -> list[str]:
        return [address.strip() for address in self.recipients.split(",") if address.strip()]


@dataclass(frozen=True)
class BrokerSettings:
    """Which CTP environment to trade on: a SimNow preset by name, or `live` with the fronts given here."""

    environment: str = "simnow"  # simnow, simnow2, simnow3, simnow_7x24 or live
    broker_id: str = ""  # empty: the preset's
    td_address: str = ""
    md_address: str = ""
    app_id: str = ""  # 产品名称
    counter: str = "实盘"  # 柜台环境: 实盘 or 测试
    connect_timeout_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.counter not in ("实盘", "测试"):
            raise ConfigError(f"broker.counter（柜台环境）必须是 实盘 或 测试，收到 {self.counter!r} / unknown counter")
        _require_positive("broker", self, ("connect_timeout_seconds",))


@dataclass(frozen=True)
class WatchdogSettings:
    """How restart_script supervises the trading process."""

    command: str = "{python} ai_trading_system.py trade --gateway ctp --no-ui"  # {python}: this interpreter
    heartbeat_timeout_seconds: float = 120.0  # a child whose heartbeat file is older than this is hung
    startup_grace_seconds: float = 90.0  # time a new child has before its first heartbeat is due
    backoff_initial_seconds: float = 1.0
    backoff_max_seconds: float = 300.0
    max_crashes: int = 5  # this many crashes within crash_window_seconds: give up and alert
    crash_window_seconds: float = 900.0
    outage_alert_seconds: float = 300.0  # exits 3 (transient) in a row for this long: one alert, then one "recovered"
    stop_timeout_seconds: float = 30.0  # SIGTERM, then SIGKILL after this long
    follow_calendar: bool = False  # run only around trading sessions
    lead_minutes: int = 10  # with follow_calendar: start this long before a session, stop this long after

    def __post_init__(self) -> None:
        if not self.command.strip():
            raise ConfigError("watchdog.command 不能为空 / command is empty")
        _require_positive(
            "watchdog",
            self,
            (
                "heartbeat_timeout_seconds",
                "startup_grace_seconds",
                "backoff_initial_seconds",
                "backoff_max_seconds",
                "max_crashes",
                "crash_window_seconds",
                "outage_alert_seconds",
                "stop_timeout_seconds",
            ),
        )
        if self.backoff_max_seconds < self.backoff_initial_seconds:
            raise ConfigError("watchdog.backoff_max_seconds 不能小于 backoff_initial_seconds / max below initial")
        if self.lead_minutes < 0:
            raise ConfigError(f"watchdog.lead_minutes 不能为负，收到 {self.lead_minutes} / must be ≥ 0")


@dataclass(frozen=True)
class AppSettings:
    """All typed settings of the application."""

    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    risk: RiskSettings = field(default_factory=RiskSettings)
    monitor: MonitorSettings = field(default_factory=MonitorSettings)
    email: EmailSettings = field(default_factory=EmailSettings)
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    watchdog: WatchdogSettings = field(default_factory=WatchdogSettings)
    health: HealthSettings = field(default_factory=HealthSettings)


SECTIONS: dict[str, type] = {
    "database": DatabaseSettings,
    "model": ModelSettings,
    "risk": RiskSettings,
    "monitor": MonitorSettings,
    "email": EmailSettings,
    "broker": BrokerSettings,
    "watchdog": WatchdogSettings,
    "health": HealthSettings,
}


def _coerce(section: str, name: str, kind: Any, value: Any, source: str, from_env: bool) -> Any:
    """Check a JSON value, or convert an environment string, to the field's type."""
    where = f"{source}: {section}.{name}"
    if from_env and kind is not str:
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ConfigError(f"{where} 的值 {value!r} 不是数字 / not a number") from None
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(f"{where} 必须是 true 或 false，收到 {value!r} / must be a boolean")
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where} 必须是整数，收到 {value!r} / must be an integer")
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} 必须是数字，收到 {value!r} / must be a number")
        value = float(value)
    if kind is str and not isinstance(value, str):
        raise ConfigError(f"{where} 必须是字符串，收到 {value!r} / must be a string")
    return value


def _field_types(cls: type) -> dict[str, Any]:
    """Map a settings dataclass's field names to their runtime types."""
    names = {"int": int, "float": float, "str": str, "bool": bool}
    return {f.name: names[f.type] if isinstance(f.type, str) else f.type for f in fields(cls)}


def _apply(section: str, values: dict[str, Any], raw: Mapping[str, Any], source: str, from_env: bool = False) -> None:
    """Merge raw key/values into one section, rejecting unknown keys."""
    types = _field_types(SECTIONS[section])
    for name, value in raw.items():
        if name not in types:
            known = ", ".join(types)
            raise ConfigError(f"{source}: 未知设置 {section}.{name}（可用：{known}）/ unknown setting")
        values[name] = _coerce(section, name, types[name], value, source, from_env)


def read_json_object(path: Path) -> dict[str, Any]:
    """Read one settings JSON object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: 第 {exc.lineno} 行 JSON 格式错误：{exc.msg} / invalid JSON") from None
    except OSError as exc:
        raise ConfigError(f"{path}: 无法读取：{exc.strerror} / cannot read") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: 必须是 JSON 对象 / must be a JSON object")
    return data


def load_settings(
    settings_dirs: Sequence[Path] = (SETTINGS_DIR,), environ: Mapping[str, str] | None = None
) -> AppSettings:
    """Load settings from `<dir>/<section>.json` (later dirs win) and `AI_TRADER_<SECTION>_<KEY>` variables."""
    environ = os.environ if environ is None else environ
    merged: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    for folder in settings_dirs:
        if folder.is_dir():
            for extra in sorted(folder.glob("*.json")):
                if extra.name == LEGACY_CONTRACTS_FILE:
                    raise ConfigError(LEGACY_CONTRACTS_MESSAGE.format(path=extra))
                if extra.stem not in SECTIONS and extra.name != STRATEGIES_FILE:
                    choices = ", ".join([*(f"{name}.json" for name in SECTIONS), STRATEGIES_FILE])
                    raise ConfigError(f"{extra}: 未知设置文件（可用：{choices}）/ unknown settings file")
        for section in SECTIONS:
            path = folder / f"{section}.json"
            if path.is_file():
                _apply(section, merged[section], read_json_object(path), str(path))
    for section in SECTIONS:
        prefix = f"{ENV_PREFIX}{section.upper()}_"
        raw = {key[len(prefix) :].lower(): value for key, value in environ.items() if key.startswith(prefix)}
        _apply(section, merged[section], raw, f"环境变量 {prefix}*", from_env=True)
    parts = {section: cls(**merged[section]) for section, cls in SECTIONS.items()}
    return AppSettings(**parts)


def parse_clock(text: str, where: str) -> clock_time:
    """An `HH:MM` time of day, or ConfigError naming where it came from."""
    match = re.fullmatch(r"(\d{2}):(\d{2})", text)
    if match is None or int(match[1]) > 23 or int(match[2]) > 59:
        raise ConfigError(f"{where} 必须是 HH:MM 格式的时间，收到 {text!r} / must be HH:MM")
    return clock_time(int(match[1]), int(match[2]))


def product_of(vt_symbol: str) -> str:
    """The product code of a vt_symbol: `rb0000.SHFE` -> `rb`, `IF2412.CFFEX` -> `IF`."""
    symbol = vt_symbol.partition(".")[0]
    letters = "".join(ch for ch in symbol if ch.isalpha())
    if not letters:
        raise DataError(f"无法从 {vt_symbol!r} 识别品种代码 / cannot tell the product of this vt_symbol")
    return letters


def read_toml(path: Path) -> dict[str, Any]:
    """Read one TOML settings file."""
    import tomllib

    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML 格式错误：{exc} / invalid TOML") from None
    except OSError as exc:
        raise ConfigError(f"{path}: 无法读取：{exc.strerror} / cannot read") from None


PRODUCT_KEYS: dict[str, type] = {
    "exchange": str,
    "name": str,
    "listed": date,
    "size": float,
    "pricetick": float,
    "margin_rate": float,
    "fees": str,
    "slippage_ticks": int,
    "sessions": str,
}
REQUIRED_PRODUCT_KEYS: tuple[str, ...] = ("exchange", "size", "pricetick", "margin_rate", "fees")
ADD_PRODUCT_HINT: str = (
    '请在 settings/{file}（或 <home>/settings/{file}）的 [products] 中添加一行，例如 {product} = {{ exchange = "SHFE", '
    'size = 10, pricetick = 1, margin_rate = 0.1, fees = "0.0001 0.0001 0.0001", sessions = "shfe_day" }}'
)


def _product_value(where: str, key: str, value: Any) -> Any:
    """One value of a product entry, checked against its type (an integer is a number too)."""
    kind = PRODUCT_KEYS[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is date and isinstance(value, datetime):
        kind = type(None)  # a date and time is not a date
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ConfigError(f"{where}.{key} 应为 {kind.__name__}，收到 {value!r} / wrong type")
    return value


def _eras(where: str, raw: Any) -> tuple[Era, ...]:
    """A named session history: a list of { since = DATE, hours = "HH:MM-HH:MM ..." }, oldest first."""
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f'{where} 应为 [{{ since = 日期, hours = "..." }}, ...] / a list of eras')
    eras: list[Era] = []
    for item in raw:
        if not isinstance(item, dict) or set(item) != {"since", "hours"}:
            raise ConfigError(f'{where}: 每个时段应为 {{ since = 日期, hours = "..." }} / an era is since and hours')
        since, hours = item["since"], item["hours"]
        if not isinstance(since, date) or isinstance(since, datetime) or not isinstance(hours, str):
            raise ConfigError(f"{where}: since 应为日期（如 2016-05-03），hours 为文字 / since is a date")
        eras.append((since, parse_hours(hours, where)))
    return tuple(eras)


def product_eras(history: Sequence[Era], listed: date | None) -> tuple[Era, ...]:
    """A product's eras: the named history from the listing date on (the era in force then starts at listing)."""
    if listed is None:
        return tuple(history)
    kept = [era for era in history if era[0] > listed]
    before = [era for era in history if era[0] <= listed]
    first = before[-1][1] if before else history[0][1]
    return ((listed, first), *kept)


def _contract(
    where: str, product: str, raw: Mapping[str, Any], histories: Mapping[str, tuple[Era, ...]]
) -> ContractSpec:
    """One product's ContractSpec from its merged entry."""
    missing = [key for key in REQUIRED_PRODUCT_KEYS if key not in raw]
    if missing:
        hint = ADD_PRODUCT_HINT.format(file=CONTRACTS_FILE, product=product)
        raise ConfigError(f"{where}: 品种 {product} 缺少 {', '.join(missing)}；{hint} / missing contract facts")
    eras: tuple[Era, ...] = ()
    if "sessions" in raw:
        if raw["sessions"] not in histories:
            known = ", ".join(sorted(histories))
            raise ConfigError(
                f"{where}: 品种 {product} 的交易时段 {raw['sessions']!r} 未在 [sessions] 中定义（可用：{known}）"
                " / unknown session history"
            )
        eras = product_eras(histories[raw["sessions"]], raw.get("listed"))
    try:
        return ContractSpec(
            size=raw["size"],
            pricetick=raw["pricetick"],
            margin_rate=raw["margin_rate"],
            fees=Fees.parse(raw["fees"], f"{where}: {product}.fees"),
            slippage_ticks=raw.get("slippage_ticks", 1),
            exchange=raw["exchange"],
            name=raw.get("name", ""),
            sessions=eras,
        )
    except ConfigError as exc:
        raise ConfigError(f"{where}: 品种 {product}: {exc}") from None


def load_contracts(settings_dirs: Sequence[Path] = (SETTINGS_DIR,)) -> dict[str, ContractSpec]:
    """Contract facts by product from `<dir>/contracts.toml`: the first folder's table (the project's) holds the
    session histories; each later folder (a home's) overrides products key by key and may add products, but not
    trading hours (they are the exchange's, kept in one table)."""
    histories: dict[str, tuple[Era, ...]] = {}
    entries: dict[str, dict[str, Any]] = {}
    sources: dict[str, str] = {}
    for position, folder in enumerate(settings_dirs):
        if (folder / LEGACY_CONTRACTS_FILE).is_file():
            raise ConfigError(LEGACY_CONTRACTS_MESSAGE.format(path=folder / LEGACY_CONTRACTS_FILE))
        path = folder / CONTRACTS_FILE
        if not path.is_file():
            continue
        data = read_toml(path)
        if not set(data) <= {"sessions", "products"}:
            raise ConfigError(f"{path}: 只能有 [sessions] 和 [products]，收到 {sorted(data)} / unknown table")
        sessions, products = data.get("sessions", {}), data.get("products", {})
        if position and sessions:
            raise ConfigError(f"{path}: 交易时段只在项目的 settings/{CONTRACTS_FILE} 中维护 / hours live in one table")
        if not isinstance(sessions, dict) or not isinstance(products, dict):
            raise ConfigError(f"{path}: [sessions] 和 [products] 必须是表 / must be tables")
        for name, raw in sessions.items():
            histories[name] = _eras(f"{path}: sessions.{name}", raw)
        for product, raw in products.items():
            where = f"{path}: {product}"
            if not isinstance(raw, dict) or not set(raw) <= set(PRODUCT_KEYS):
                raise ConfigError(f"{where} 必须是含 {', '.join(PRODUCT_KEYS)} 的表 / bad contract entry")
            if position and "sessions" in raw:
                raise ConfigError(
                    f"{where}: 交易时段只在项目的 settings/{CONTRACTS_FILE} 中维护 / hours live in one table"
                )
            checked = {key: _product_value(where, key, value) for key, value in raw.items()}
            entries[product] = {**entries.get(product, {}), **checked}
            sources[product] = str(path)
    return {product: _contract(sources[product], product, raw, histories) for product, raw in entries.items()}


def contract_spec(vt_symbol: str, specs: Mapping[str, ContractSpec]) -> ContractSpec:
    """The facts of a vt_symbol's product, or a ConfigError that names the product and how to add it."""
    product = product_of(vt_symbol)
    if product not in specs:
        hint = ADD_PRODUCT_HINT.format(file=CONTRACTS_FILE, product=product)
        raise ConfigError(
            f"合约表中没有品种 {product}（{vt_symbol}）；{hint}（字段见 docs/settings.md）/ no contract facts for "
            f"product {product}: add it to the [products] table of settings/{CONTRACTS_FILE}"
        )
    return specs[product]


@functools.cache
def project_contracts() -> Mapping[str, ContractSpec]:
    """The project's own table (settings/contracts.toml), read once per process: the trading calendar's hours."""
    return load_contracts((SETTINGS_DIR,))


@dataclass(frozen=True)
class Home:
    """The folder that holds vnpy's `.vntrader/` (database, vt_setting.json, logs), model bundles and reports."""

    root: Path

    @property
    def vntrader_dir(self) -> Path:
        return self.root / VNTRADER_FOLDER

    @property
    def vt_setting_path(self) -> Path:
        return self.vntrader_dir / VT_SETTING_FILENAME

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def settings_dir(self) -> Path:
        return self.root / "settings"

    @property
    def audit_path(self) -> Path:
        return self.root / AUDIT_FILENAME

    @property
    def secrets_path(self) -> Path:
        return self.root / SECRETS_FILENAME

    @property
    def run_dir(self) -> Path:
        """Heartbeat and lock files of the running trading process and its watchdog."""
        return self.root / "run"

    @property
    def heartbeat_path(self) -> Path:
        return self.run_dir / "trading.heartbeat"

    @property
    def state_dir(self) -> Path:
        """What live strategies remember across a restart, one JSON per strategy; `sim/` for the simulator."""
        return self.root / "state"

    @property
    def sim_state_dir(self) -> Path:
        """The simulated exchange's account and the strategies' states of SIM runs (kept apart from live ones)."""
        return self.state_dir / "sim"

    def strategy_state_path(self, name: str, simulated: bool = False) -> Path:
        """The state file of strategy `name` (live, or of SIM runs)."""
        if not name or name.startswith(".") or any(sep in name for sep in "/\\"):
            raise ConfigError(f"策略名 {name!r} 不能用作文件名 / the strategy name cannot name a file")
        return (self.sim_state_dir if simulated else self.state_dir) / f"{name}.json"

    @property
    def sim_account_path(self) -> Path:
        return self.sim_state_dir / "exchange.json"

    def database_path(self, settings: DatabaseSettings) -> Path:
        return self.vntrader_dir / settings.database


def resolve_home(home: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Home:
    """Pick the home: the argument, else `AI_TRADER_HOME`, else the project folder."""
    environ = os.environ if environ is None else environ
    chosen = home if home not in (None, "") else environ.get(HOME_ENV) or PROJECT_DIR
    root = Path(chosen).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise ConfigError(f"主目录 {root} 不是文件夹 / home is not a folder; 请用 --home 或 {HOME_ENV} 指定文件夹")
    return Home(root)


def settings_dirs(home: Home) -> list[Path]:
    """The project's settings, then the home's own `settings/` (which wins)."""
    return [SETTINGS_DIR] if home.settings_dir == SETTINGS_DIR else [SETTINGS_DIR, home.settings_dir]


def settings_for(home: Home, environ: Mapping[str, str] | None = None) -> AppSettings:
    """Load settings for a home: project defaults, then the home's own `settings/`, then the environment."""
    return load_settings(settings_dirs(home), environ)


def prepare_home(home: Home, settings: DatabaseSettings) -> None:
    """Create the home's `.vntrader/` and make vt_setting.json use the configured database in China Standard Time."""
    try:
        home.vntrader_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"无法创建主目录 {home.vntrader_dir}：{exc.strerror} / cannot create home") from None
    current: dict[str, Any] = {}
    if home.vt_setting_path.exists():
        current = read_json_object(home.vt_setting_path)
    if current.get("database.password"):
        raise ConfigError(
            f"{home.vt_setting_path} 含有 database.password：密码不能写在 vnpy 的设置文件里。请删除该项，改用环境变量 "
            f"{SECRET_ENV['db_password']} 或加密密钥文件（secrets set db_password）/ "
            "a password must not live in vt_setting.json"
        )
    wanted = {
        **settings.vt_settings(),
        "log.console": False,  # vnpy's loguru would print to stdout; the trading system forwards its log events
    }
    if any(current.get(key) != value for key, value in wanted.items()):
        write_json_atomic(home.vt_setting_path, {**current, **wanted})


def use_china_time() -> None:
    """Run the process in China Standard Time: vnpy's sqlite loader reads naive times in the local zone."""
    if os.environ.get("TZ") != TIMEZONE_NAME:
        os.environ["TZ"] = TIMEZONE_NAME
        time.tzset()


def bind_vnpy_home(home: Home, settings: DatabaseSettings) -> None:
    """Make vnpy use this home's `.vntrader/` and database; vnpy fixes its folder at first import, so do this before
    any use. A PostgreSQL password goes into vnpy's in-memory SETTINGS only (vnpy_postgresql reads it there)."""
    prepare_home(home, settings)
    use_china_time()
    if "vnpy.trader.utility" not in sys.modules:
        cwd = Path.cwd()
        os.chdir(home.root)
        try:
            import vnpy.trader.utility  # noqa: F401 - the first import picks ./.vntrader of the working directory
        finally:
            os.chdir(cwd)
    from vnpy.trader.utility import TRADER_DIR

    bound = Path(TRADER_DIR).resolve()
    if bound != home.root:
        raise ConfigError(
            f"本进程的 vnpy 已绑定到 {bound}，无法切换到 {home.root}；请在新进程中使用 --home / "
            "vnpy is already bound to another home in this process"
        )
    if settings.name == "postgresql":
        from importlib.util import find_spec

        missing = [module for module in ("vnpy_postgresql", "psycopg2") if find_spec(module) is None]
        if missing:  # vnpy's get_database() would silently fall back to SQLite
            raise ConfigError(
                f"database.name 为 postgresql，但未安装 {', '.join(missing)}；请执行 pip install -r requirements.txt / "
                "the PostgreSQL driver is not installed"
            )
    from vnpy.trader.setting import SETTINGS

    SETTINGS.update(settings.vt_settings())
    if settings.name == "postgresql":  # in this process's memory only: vt_setting.json never holds the password
        SETTINGS["database.password"] = load_secrets(home).get("db_password")


# --- files, JSON and event handlers: one home for the small helpers every module uses -------------------


def temporary_path(path: Path) -> Path:
    """A hidden name beside `path` to write it under before the rename."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary name to write to; renamed over `path` when the block succeeds, removed whatever happens."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = temporary_path(path)
    try:
        yield temp
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> Path:
    """Write UTF-8 text to a temporary file beside `path`, then rename it over `path`."""
    with atomic_path(path) as temp:
        temp.write_text(text, encoding="utf-8")
    return path


def write_json_atomic(path: Path, data: Any, indent: int = 4) -> Path:
    """Write JSON (non-ASCII kept readable) atomically."""
    return write_text_atomic(path, json.dumps(data, ensure_ascii=False, indent=indent))


def write_csv_atomic(frame: Any, path: Path) -> Path:
    """Write a pandas DataFrame as CSV (without its index) atomically."""
    with atomic_path(path) as temp:
        frame.to_csv(temp, index=False)
    return path


@contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """A fresh temporary folder beside `path`; when the block succeeds it replaces `path` (and any old folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir()
    try:
        yield temp
        if path.exists():
            os.replace(path, old)
        os.replace(temp, path)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def file_sha256(path: Path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def json_safe(value: Any) -> Any:
    """Plain JSON: numpy scalars to Python numbers, dates to ISO text, enums to their values, NaN and inf to null,
    anything else JSON cannot hold to its text."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    numpy = sys.modules.get("numpy")  # a numpy scalar can only exist once numpy is imported
    if numpy is not None and isinstance(value, numpy.generic):
        value = value.item()
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


HANDLER_LOG_SECONDS: float = 60.0  # a failing handler logs its traceback at most this often, a one-line error otherwise


class GuardedHandler:
    """An event handler that logs and counts its exceptions and never raises: an exception would otherwise stop
    vnpy's event engine thread's handler loop for that event, or a live strategy."""

    def __init__(self, name: str, handler: Callable[[Any], None], log: logging.Logger) -> None:
        self.name = name
        self.handler = handler
        self.log = log
        self.errors = 0
        self._traceback_at = -HANDLER_LOG_SECONDS

    def __call__(self, event: Any) -> None:
        try:
            self.handler(event)
        except Exception as exc:
            try:
                self.errors += 1
                now = time.monotonic()
                if now - self._traceback_at >= HANDLER_LOG_SECONDS:
                    self._traceback_at = now
                    self.log.exception("事件处理器 %s 出错（已忽略）/ event handler %s failed", self.name, self.name)
                else:
                    self.log.error(
                        "事件处理器 %s 又出错（第 %d 次，已忽略）/ event handler %s failed again: %r",
                        self.name,
                        self.errors,
                        self.name,
                        exc,
                    )
            except Exception:  # nothing may escape into the event engine
                pass


def guarded(name: str, handler: Callable[[Any], None], log: logging.Logger) -> GuardedHandler:
    """Wrap an event handler we register: each exception is counted and logged (the traceback at most once a
    minute), never raised."""
    return GuardedHandler(name, handler, log)


# --- secrets: environment or an encrypted file, redacted everywhere -----------------------------------------

_REDACTED: set[str] = set()
_REDACT_LOCK = threading.Lock()
_REDACT_PATTERN: re.Pattern[str] | None = None
MIN_SECRET_LENGTH: int = 4  # shorter values would redact ordinary numbers in logs


@dataclass(frozen=True)
class Secrets:
    """Named secrets (ctp_user, ctp_password, ctp_auth_code, smtp_password, db_password); the repr hides values."""

    values: Mapping[str, str] = field(default_factory=dict)

    def get(self, name: str) -> str:
        return self.values.get(name, "")

    def __repr__(self) -> str:
        return f"Secrets(names={sorted(self.values)})"


def register_secrets(values: Iterable[str]) -> None:
    """Add values to what `redact` and the logging filter replace with ***."""
    global _REDACT_PATTERN
    with _REDACT_LOCK:
        _REDACTED.update(value for value in values if len(value) >= MIN_SECRET_LENGTH)
        if _REDACTED:
            ordered = sorted(_REDACTED, key=len, reverse=True)  # longest first: a secret may contain another
            _REDACT_PATTERN = re.compile("|".join(re.escape(value) for value in ordered))


def redact(text: str) -> str:
    """The text with every registered secret replaced by ***."""
    pattern = _REDACT_PATTERN
    return text if pattern is None else pattern.sub("***", text)


class RedactingFilter(logging.Filter):
    """A logging filter that renders each record's message with secrets replaced by ***."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _REDACT_PATTERN is not None:
            message = record.getMessage()
            cleaned = redact(message)
            if cleaned != message:
                record.msg, record.args = cleaned, None
            if record.exc_info and record.exc_info[1] is not None:
                record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


def install_redaction(logger_: logging.Logger | None = None) -> RedactingFilter:
    """Attach the redacting filter to every handler of a logger (the root logger by default)."""
    target = logger_ or logging.getLogger()
    chosen = RedactingFilter()
    for handler in target.handlers:
        if not any(isinstance(item, RedactingFilter) for item in handler.filters):
            handler.addFilter(chosen)
    return chosen


def check_private(path: Path) -> None:
    """ConfigError unless a file holding secrets is readable and writable by its owner only."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{path} 含有密钥，但其他用户也能读取（权限 {stat.S_IMODE(mode):o}）；请执行 chmod 600 {path} / "
            "secret file is readable by others"
        )


def secret_key_path(environ: Mapping[str, str] | None = None) -> Path:
    """Where the secrets file's key is kept: `AI_TRADER_SECRET_KEY_FILE`, else ~/.config/ai_trader/secret.key."""
    environ = os.environ if environ is None else environ
    return Path(environ.get(SECRET_KEY_ENV) or DEFAULT_SECRET_KEY).expanduser()


def _fernet(key_path: Path, create: bool) -> Any:
    """The Fernet cipher of the key file; a new key (mode 600) when `create` and none exists."""
    from cryptography.fernet import Fernet

    if not key_path.exists():
        if not create:
            raise ConfigError(f"找不到密钥文件 {key_path}；请设置 {SECRET_KEY_ENV} 或重新保存密钥 / key file missing")
        if key_path.resolve().is_relative_to(PROJECT_DIR):
            raise ConfigError(f"密钥文件 {key_path} 不能放在项目目录中 / the key must live outside the repository")
        key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(Fernet.generate_key())
    check_private(key_path)
    return Fernet(key_path.read_bytes().strip())


def read_secrets_file(path: Path, key_path: Path) -> dict[str, str]:
    """Decrypt the secrets file into a name -> value mapping."""
    from cryptography.fernet import InvalidToken

    check_private(path)
    try:
        data = json.loads(_fernet(key_path, create=False).decrypt(path.read_bytes()))
    except InvalidToken:
        raise ConfigError(f"{path} 无法用 {key_path} 解密：密钥不匹配或文件已损坏 / cannot decrypt") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ConfigError(f"{path} 内容格式错误 / secrets file is malformed")
    return data


def load_secrets(home: Home, environ: Mapping[str, str] | None = None) -> Secrets:
    """Secrets from the home's encrypted file, overridden by environment variables; registered for redaction."""
    environ = os.environ if environ is None else environ
    values: dict[str, str] = {}
    if home.secrets_path.exists():
        values.update(read_secrets_file(home.secrets_path, secret_key_path(environ)))
    for name, variable in SECRET_ENV.items():
        if environ.get(variable):
            values[name] = environ[variable]
    register_secrets(values.values())
    return Secrets(values)


def save_secret(home: Home, name: str, value: str, environ: Mapping[str, str] | None = None) -> Path:
    """Store one secret in the home's encrypted file (mode 600), creating the key outside the repository if needed."""
    if name not in SECRET_ENV:
        raise ConfigError(f"未知密钥名 {name!r}（可用：{', '.join(SECRET_ENV)}）/ unknown secret name")
    if not value:
        raise ConfigError(f"密钥 {name} 不能为空 / empty secret")
    key_path = secret_key_path(environ)
    cipher = _fernet(key_path, create=True)
    current = read_secrets_file(home.secrets_path, key_path) if home.secrets_path.exists() else {}
    current[name] = value
    with atomic_path(home.secrets_path) as temp:
        descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(cipher.encrypt(json.dumps(current).encode("utf-8")))
    register_secrets([value])
    return home.secrets_path


# --- audit log ----------------------------------------------------------------------------------------------


class AuditLog:
    """Append-only JSON lines (logins, strategy start/stop, orders, trades, rejections, model loads, alerts,
    restarts), one flushed line per event, secrets redacted; safe from several threads and processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def write(self, event: str, **fields_: Any) -> None:
        """Append one event with the time (China, ISO) and process id."""
        record = {
            "time": datetime.now(CHINA_TZ).isoformat(timespec="milliseconds"),
            "event": event,
            "pid": os.getpid(),
            **fields_,
        }
        line = redact(json.dumps(record, ensure_ascii=False, default=str)) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # O_APPEND: each line lands whole at the end even with the watchdog writing too
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(line)
                handle.flush()

    def read(self) -> list[dict[str, Any]]:
        """Every event written so far (for tests and the status command)."""
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]
