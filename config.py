"""Paths, the home folder, typed settings, errors and exit codes (the bottom of the import graph)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

PROJECT_DIR: Path = Path(__file__).resolve().parent
SETTINGS_DIR: Path = PROJECT_DIR / "settings"
SHARED_DATA_DIR: Path = PROJECT_DIR.parent / "shared" / "data"
SAMPLE_BARS_CSV: Path = SHARED_DATA_DIR / "rb0000_1min_2010_2016.csv.bz2"
SAMPLE_TICKS_CSV: Path = SHARED_DATA_DIR / "SHFE.cu1909_ticks_20190916.csv"
SAMPLE_VT_SYMBOL: str = "rb0000.SHFE"
# the code that turns bars into predictions: part of the prediction cache key
FEATURE_CODE_FILES: tuple[Path, ...] = (PROJECT_DIR / "data_processor.py", PROJECT_DIR / "ml_model.py")

TIMEZONE_NAME: str = "Asia/Shanghai"
CHINA_TZ: ZoneInfo = ZoneInfo(TIMEZONE_NAME)
NIGHT_FROM_HOUR: int = 18  # bars at or after 18:00 open the next trading day's night session
NIGHT_UNTIL_HOUR: int = 6  # bars before 06:00 are the tail of the previous evening's night session

HOME_ENV: str = "AI_TRADER_HOME"
ENV_PREFIX: str = "AI_TRADER_"
VNTRADER_FOLDER: str = ".vntrader"
VT_SETTING_FILENAME: str = "vt_setting.json"
CONTRACTS_FILE: str = "contracts.json"

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


@dataclass(frozen=True)
class DatabaseSettings:
    """Where bars and ticks are stored (vnpy's sqlite adapter, one file in the home's .vntrader)."""

    name: str = "sqlite"
    database: str = "database.db"

    def __post_init__(self) -> None:
        if self.name != "sqlite":
            raise ConfigError(f"database.name 只支持 'sqlite'，收到 {self.name!r} / only sqlite is supported")
        if not self.database or Path(self.database).name != self.database:
            raise ConfigError(
                f"database.database 必须是 .vntrader 下的文件名，收到 {self.database!r} / must be a plain file name"
            )


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


@dataclass(frozen=True)
class ContractSpec:
    """Trading facts of one product: lot size, price tick, fees, margin and the usual slippage."""

    size: float
    pricetick: float
    commission_rate: float  # of turnover, each side
    margin_rate: float
    slippage_ticks: int = 1

    def __post_init__(self) -> None:
        if self.size <= 0 or self.pricetick <= 0:
            raise ConfigError(f"合约乘数和最小变动价位必须 > 0（{self.size}, {self.pricetick}）/ must be positive")
        if not 0 <= self.commission_rate < 0.01:
            raise ConfigError(f"手续费率 {self.commission_rate} 应在 [0, 0.01) / commission rate out of range")
        if not 0 < self.margin_rate <= 1:
            raise ConfigError(f"保证金率 {self.margin_rate} 应在 (0, 1] / margin rate out of range")
        if self.slippage_ticks < 0:
            raise ConfigError(f"滑点跳数 {self.slippage_ticks} 不能为负 / slippage ticks must be ≥ 0")


@dataclass(frozen=True)
class AppSettings:
    """All typed settings of the application."""

    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    risk: RiskSettings = field(default_factory=RiskSettings)


SECTIONS: dict[str, type] = {"database": DatabaseSettings, "model": ModelSettings, "risk": RiskSettings}


def _coerce(section: str, name: str, kind: Any, value: Any, source: str, from_env: bool) -> Any:
    """Check a JSON value, or convert an environment string, to the field's type."""
    where = f"{source}: {section}.{name}"
    if from_env and kind is not str:
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ConfigError(f"{where} 的值 {value!r} 不是数字 / not a number") from None
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
    names = {"int": int, "float": float, "str": str}
    return {f.name: names[f.type] if isinstance(f.type, str) else f.type for f in fields(cls)}


def _apply(section: str, values: dict[str, Any], raw: Mapping[str, Any], source: str, from_env: bool = False) -> None:
    """Merge raw key/values into one section, rejecting unknown keys."""
    types = _field_types(SECTIONS[section])
    for name, value in raw.items():
        if name not in types:
            known = ", ".join(types)
            raise ConfigError(f"{source}: 未知设置 {section}.{name}（可用：{known}）/ unknown setting")
        values[name] = _coerce(section, name, types[name], value, source, from_env)


def _read_settings_file(path: Path) -> dict[str, Any]:
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
                if extra.stem not in SECTIONS and extra.name != CONTRACTS_FILE:
                    choices = ", ".join([*(f"{name}.json" for name in SECTIONS), CONTRACTS_FILE])
                    raise ConfigError(f"{extra}: 未知设置文件（可用：{choices}）/ unknown settings file")
        for section in SECTIONS:
            path = folder / f"{section}.json"
            if path.is_file():
                _apply(section, merged[section], _read_settings_file(path), str(path))
    for section in SECTIONS:
        prefix = f"{ENV_PREFIX}{section.upper()}_"
        raw = {key[len(prefix):].lower(): value for key, value in environ.items() if key.startswith(prefix)}
        _apply(section, merged[section], raw, f"环境变量 {prefix}*", from_env=True)
    parts = {section: cls(**merged[section]) for section, cls in SECTIONS.items()}
    return AppSettings(**parts)


def product_of(vt_symbol: str) -> str:
    """The product code of a vt_symbol: `rb0000.SHFE` -> `rb`, `IF2412.CFFEX` -> `IF`."""
    symbol = vt_symbol.partition(".")[0]
    letters = "".join(ch for ch in symbol if ch.isalpha())
    if not letters:
        raise DataError(f"无法从 {vt_symbol!r} 识别品种代码 / cannot tell the product of this vt_symbol")
    return letters


def _next_weekday(day: date) -> date:
    while day.weekday() >= 5:
        day += timedelta(days=1)
    return day


def anchored_trading_day(anchor: date, night: bool) -> date:
    """`causal_trading_days` for one bar: numpy's busday_offset(anchor, 1 if night else 0, roll="forward")."""
    day = _next_weekday(anchor)
    return _next_weekday(day + timedelta(days=1)) if night else day


def causal_trading_day(when: datetime) -> date:
    """`causal_trading_days` for one time-zone-aware time: a night belongs to the next weekday after its evening."""
    local = when.astimezone(CHINA_TZ)
    after_midnight = local.hour < NIGHT_UNTIL_HOUR
    anchor = local.date() - timedelta(days=1) if after_midnight else local.date()
    return anchored_trading_day(anchor, after_midnight or local.hour >= NIGHT_FROM_HOUR)


def load_contracts(settings_dirs: Sequence[Path] = (SETTINGS_DIR,)) -> dict[str, ContractSpec]:
    """Contract facts by product from `<dir>/contracts.json` (later dirs win, product by product)."""
    specs: dict[str, ContractSpec] = {}
    known = {f.name for f in fields(ContractSpec)}
    for folder in settings_dirs:
        path = folder / CONTRACTS_FILE
        if not path.is_file():
            continue
        for product, raw in _read_settings_file(path).items():
            if not isinstance(raw, dict) or not set(raw) <= known:
                raise ConfigError(f"{path}: {product} 必须是含 {sorted(known)} 的对象 / bad contract entry")
            try:
                specs[product] = ContractSpec(**raw)
            except TypeError as exc:
                raise ConfigError(f"{path}: {product}: {exc} / missing contract fact") from None
    return specs


def contract_spec(vt_symbol: str, specs: Mapping[str, ContractSpec]) -> ContractSpec:
    """The facts of a vt_symbol's product, or a ConfigError that says where to add them."""
    product = product_of(vt_symbol)
    if product not in specs:
        raise ConfigError(
            f"settings/{CONTRACTS_FILE} 中没有品种 {product}（{vt_symbol}）；请添加 size、pricetick、commission_rate、"
            f"margin_rate / no contract facts for this product"
        )
    return specs[product]


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


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file beside `path`, then rename it over `path`."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temp.write_text(json.dumps(data, ensure_ascii=False, indent=4), encoding="utf-8")
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def prepare_home(home: Home, settings: DatabaseSettings) -> None:
    """Create the home's `.vntrader/` and make vt_setting.json use SQLite there in China Standard Time."""
    try:
        home.vntrader_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"无法创建主目录 {home.vntrader_dir}：{exc.strerror} / cannot create home") from None
    current: dict[str, Any] = {}
    if home.vt_setting_path.exists():
        current = _read_settings_file(home.vt_setting_path)
    wanted = {
        "database.name": settings.name,
        "database.database": settings.database,
        "database.timezone": TIMEZONE_NAME,
    }
    if any(current.get(key) != value for key, value in wanted.items()):
        write_json_atomic(home.vt_setting_path, {**current, **wanted})


def use_china_time() -> None:
    """Run the process in China Standard Time: vnpy's sqlite loader reads naive times in the local zone."""
    if os.environ.get("TZ") != TIMEZONE_NAME:
        os.environ["TZ"] = TIMEZONE_NAME
        time.tzset()


def bind_vnpy_home(home: Home, settings: DatabaseSettings) -> None:
    """Make vnpy use this home's `.vntrader/`; vnpy fixes its folder at first import, so do this before any use."""
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
