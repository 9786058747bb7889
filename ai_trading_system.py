"""Entry point: the mode prompt and the subcommands; wires settings, home folder, logging and the modules."""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import date, datetime, timedelta
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

import bar_features
import bar_store
import contracts
import data_check
import data_collector
import data_processor
import live_trading
import ml_model
from config import (
    DEFAULT_CAPITAL,
    EXIT_BAD_INPUT,
    EXIT_BUG,
    EXIT_OK,
    SAMPLE_BARS_CSV,
    SAMPLE_VT_SYMBOL,
    SECRET_ENV,
    STRATEGIES_FILE,
    AppError,
    AppSettings,
    AuditLog,
    BrokerSettings,
    ConfigError,
    DataError,
    Home,
    TransientError,
    bind_vnpy_home,
    contract_spec,
    install_redaction,
    load_contracts,
    load_secrets,
    product_of,
    resolve_home,
    save_secret,
    settings_dirs,
    settings_for,
    write_csv_atomic,
)
from contracts import ROLL_MODES, continuous_symbol, split_symbol
from trade_simulator import ThresholdChoice

if TYPE_CHECKING:  # imported in the commands, after vnpy is bound to the home
    from backtesting_module import BacktestingModule

logger = logging.getLogger("ai_trading_system")  # not __name__: run as a script, that would be "__main__"

Handler = Callable[[argparse.Namespace, Home], int]


def _column_map(text: str) -> dict[str, str]:
    """Parse `datetime=trade_time,open=open_price,...`."""
    pairs = [part.split("=", 1) for part in text.split(",") if part.strip()]
    if not pairs or any(len(pair) != 2 or not pair[0].strip() or not pair[1].strip() for pair in pairs):
        raise argparse.ArgumentTypeError("格式应为 字段=列名,... 例如 datetime=trade_time,open=open_price")
    fields = ("datetime", "date", "time", *bar_store.BAR_FIELDS)
    unknown = [key.strip() for key, _ in pairs if key.strip() not in fields]
    if unknown:
        raise argparse.ArgumentTypeError(f"未知字段 {unknown}，可用：{', '.join(fields)}")
    return {key.strip(): value.strip() for key, value in pairs}


def _horizons(text: str) -> list[int]:
    """One horizon or a comma-separated list, each a positive number of bars."""
    return [_positive_int(part.strip()) for part in text.split(",")]


def _positive_int(text: str) -> int:
    """An integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"应为正整数，收到 {text!r} / expected a positive integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"应为正整数，收到 {value} / expected a positive integer")
    return value


def _bundle_name(text: str) -> str:
    """A model bundle name: letters, digits, dot, dash, underscore."""
    if not text or not all(ch.isalnum() or ch in "._-" for ch in text) or text.startswith("."):
        raise argparse.ArgumentTypeError(f"模型名 {text!r} 只能含字母、数字、. _ - / bad model name")
    return text


def _parse_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} 不是数字 / not a number") from None


def _positive_float(text: str) -> float:
    """An argparse type: a number above zero."""
    value = _parse_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} 必须大于 0 / must be positive")
    return value


def _non_negative_float(text: str) -> float:
    """An argparse type: a number of zero or more."""
    value = _parse_float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} 不能为负 / must not be negative")
    return value


OPTIMIZABLE: tuple[str, ...] = ("prediction_threshold", "trailing_percent", "fixed_size", "slippage_ticks")


def _grid_param(text: str) -> tuple[str, list[float]]:
    """An argparse type: NAME=START:END:STEP (inclusive) or NAME=V1,V2,... for one strategy parameter."""
    name, _, spec = text.partition("=")
    if name not in OPTIMIZABLE or not spec:
        raise argparse.ArgumentTypeError(
            f"{text!r} 应为 NAME=START:END:STEP，NAME 为 {', '.join(OPTIMIZABLE)} 之一 / bad grid parameter"
        )
    try:
        if ":" in spec:
            start, end, step = (float(part) for part in spec.split(":"))
            if step <= 0 or end < start:
                raise ValueError
            count = int(round((end - start) / step)) + 1
            values = [round(start + i * step, 10) for i in range(count)]
        else:
            values = [float(part) for part in spec.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} 的网格无效（START ≤ END，STEP > 0）/ bad grid") from None
    if name in ("fixed_size", "slippage_ticks"):
        values = [int(v) for v in values]
    return name, values


@dataclass(frozen=True)
class BacktestOptions:
    """How `backtest`, `optimize` and `demo` run a backtest; the defaults are the command line's defaults."""

    interval: str = "1m"
    capital: float = DEFAULT_CAPITAL
    rate: float | None = None  # None: the contract's fees in settings/contracts.toml
    slippage: float | None = None
    size: float | None = None
    pricetick: float | None = None
    threshold: float | None = None  # None: the bundle's threshold
    fixed_size: int = 1
    trailing_percent: float = 0.8
    use_cache: bool = True
    allow_in_sample: bool = False  # a range overlapping the bundle's train / valid part runs, marked IN-SAMPLE


BACKTEST_DEFAULTS: BacktestOptions = BacktestOptions()


def add_backtest_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by `backtest` and `optimize`: the contract, the range, the model, costs, strategy settings."""
    defaults = BACKTEST_DEFAULTS
    parser.add_argument("--vt-symbol", required=True, help="合约，例如 rb0000.SHFE")
    parser.add_argument("--start", required=True, help="开始日期 YYYY-MM-DD")
    parser.add_argument("--end", required=True, help="结束日期 YYYY-MM-DD（含当日）")
    parser.add_argument("--model", required=True, help="模型包路径或名称（<home>/models/NAME）")
    parser.add_argument("--interval", default=defaults.interval, help=f"K线周期（默认 {defaults.interval}）")
    parser.add_argument(
        "--capital", type=_positive_float, default=defaults.capital, help=f"初始资金（默认 {defaults.capital:,.0f}）"
    )
    parser.add_argument(
        "--rate",
        type=_non_negative_float,
        help="各边统一的手续费率，替代合约表的手续费（默认取 settings/contracts.toml）",
    )
    parser.add_argument("--slippage", type=_non_negative_float, help="滑点（价格单位，默认 滑点跳数 × 最小变动价位）")
    parser.add_argument("--size", type=_positive_float, help="合约乘数（默认取 settings/contracts.toml）")
    parser.add_argument("--pricetick", type=_positive_float, help="最小变动价位（默认取 settings/contracts.toml）")
    parser.add_argument("--threshold", type=_positive_float, help="开仓阈值（默认取模型包中由验证集得出的阈值）")
    parser.add_argument(
        "--fixed-size",
        type=_positive_int,
        default=defaults.fixed_size,
        help=f"每次开仓手数（默认 {defaults.fixed_size}）",
    )
    parser.add_argument(
        "--trailing-percent",
        type=_non_negative_float,
        default=defaults.trailing_percent,
        help=f"移动止损百分比（默认 {defaults.trailing_percent:g}，0 为关闭）",
    )
    parser.add_argument("--no-cache", action="store_true", help="不使用预测缓存 / recompute the predictions")
    parser.add_argument(
        "--allow-in-sample",
        action="store_true",
        help="允许区间与模型包的训练/验证部分重叠（样本内），所有输出标明 IN-SAMPLE / allow an in-sample range",
    )


def backtest_options(args: argparse.Namespace) -> BacktestOptions:
    """The backtest options given to `backtest` or `optimize`."""
    return BacktestOptions(
        interval=args.interval,
        capital=args.capital,
        rate=args.rate,
        slippage=args.slippage,
        size=args.size,
        pricetick=args.pricetick,
        threshold=args.threshold,
        fixed_size=args.fixed_size,
        trailing_percent=args.trailing_percent,
        use_cache=not args.no_cache,
        allow_in_sample=args.allow_in_sample,
    )


def add_feature_set(parser: argparse.ArgumentParser) -> None:
    """--feature-set: the named feature set (bar_features.FEATURE_SETS)."""
    parser.add_argument(
        "--feature-set",
        choices=tuple(bar_features.FEATURE_SETS),
        default=bar_features.DEFAULT_FEATURE_SET,
        help="特征集：base（默认，1 分钟特征）或 mtf（base 加 5/15/60 分钟与日线聚合，因果计算）/ feature set",
    )


def add_allow_gaps(parser: argparse.ArgumentParser) -> None:
    """`--allow-gaps` of train and backtest."""
    parser.add_argument(
        "--allow-gaps",
        action="store_true",
        help=f"数据检查发现超过 {data_check.DEFAULT_MAX_HOLE_MINUTES} 分钟的缺口时仍继续（默认退出码 2）/ "
        "go on despite long holes in the bars",
    )


def build_parser() -> argparse.ArgumentParser:
    """The command line of GUIDE §2."""
    parser = argparse.ArgumentParser(
        prog="ai_trading_system.py",
        description="AI 期货交易台（VeighNa）。不带子命令时显示模式菜单。/ AI futures trading desk on vnpy.",
    )
    parser.add_argument(
        "--home", help="主目录：存放 .vntrader（数据库、日志）、模型与报告；默认 AI_TRADER_HOME 或项目目录"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="输出调试日志 / debug logging")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    imp = commands.add_parser("import", help="导入K线 CSV 到数据库 / import bars from a CSV file")
    imp.add_argument("--csv", required=True, help="CSV 文件（可为 .gz / .bz2 / .xz）")
    imp.add_argument("--vt-symbol", required=True, help="合约，例如 rb0000.SHFE")
    imp.add_argument("--interval", default="1m", help="K线周期 1m / 1h / d（默认 1m）")
    imp.add_argument(
        "--timestamp",
        choices=("end", "start"),
        help="文件时间是K线结束(end)还是开始(start)；默认按识别出的格式：示例格式 end，vnpy 导出格式 start",
    )
    imp.add_argument("--columns", type=_column_map, help="列映射，例如 datetime=trade_time,open=open_price,...")
    imp.add_argument("--datetime-format", help="时间格式（strptime），例如 %%Y%%m%%d %%H:%%M:%%S；需与 --columns 同用")

    data = commands.add_parser("data", help="查看数据库中的数据；--check 检查缺失分钟 / what the database holds")
    data.add_argument(
        "--check",
        action="store_true",
        help="按交易日历（分时段、节假日、节前无夜盘）检查一个合约的K线：缺失分钟、缺口、截断、零成交量、时段外K线",
    )
    data.add_argument("--vt-symbol", help="--check 的合约，例如 rb0000.SHFE")
    data.add_argument("--start", help="--check 开始日期 YYYY-MM-DD（默认库中首条）")
    data.add_argument("--end", help="--check 结束日期 YYYY-MM-DD（含当日，默认库中末条）")
    data.add_argument("--interval", default="1m", help="--check 的K线周期（默认 1m；只有 1 分钟K线逐分钟检查）")
    data.add_argument(
        "--max-hole-minutes",
        type=_positive_int,
        default=data_check.DEFAULT_MAX_HOLE_MINUTES,
        help=f"超过此分钟数的缺口判为不合格，退出码 2（默认 {data_check.DEFAULT_MAX_HOLE_MINUTES}）",
    )
    data.add_argument("--details", help="把每个交易日每个时段的缺失分钟写到此 CSV 文件 / per-session counts to CSV")

    down = commands.add_parser("download", help="从 vnpy 数据服务下载K线 / download bars through vnpy's datafeed")
    down.add_argument("--vt-symbol", required=True, help="合约，例如 rb2405.SHFE")
    down.add_argument("--start", required=True, help="开始日期 YYYY-MM-DD")
    down.add_argument("--end", required=True, help="结束日期 YYYY-MM-DD（含当日）")
    down.add_argument("--interval", default="1m", help="K线周期 1m / 1h / d（默认 1m）")

    stitch = commands.add_parser(
        "continuous", help="由各月合约K线拼接主力连续（复权）/ build the product's main-contract series (rb888)"
    )
    stitch.add_argument("--product", required=True, help="品种代码，例如 rb（库中需有 rb2605 等各月合约K线）")
    stitch.add_argument(
        "--adjust",
        required=True,
        choices=contracts.ADJUSTMENTS,
        help="复权：ratio 等比（训练用，保留收益率）、difference 等差、none 不复权（真实价格）",
    )
    stitch.add_argument("--exchange", help="交易所，例如 SHFE（默认取库中该品种合约所在的交易所）")
    stitch.add_argument("--interval", default="1m", help="K线周期（默认 1m）")

    audit = commands.add_parser(
        "audit", help="前视偏差审计：清洗、特征与标签是否用到未来数据 / look-ahead audit of cleaning, features, labels"
    )
    audit.add_argument("--vt-symbol", required=True, help="合约，例如 rb0000.SHFE")
    audit.add_argument("--start", required=True, help="开始日期 YYYY-MM-DD")
    audit.add_argument("--end", required=True, help="结束日期 YYYY-MM-DD（含当日）")
    audit.add_argument("--interval", default="1m", help="K线周期 1m / 1h / d（默认 1m）")
    audit.add_argument(
        "--horizon", type=_positive_int, help="标签的预测周期（K线根数）；默认取模型设置 model.prediction_horizon"
    )
    audit.add_argument("--cuts", type=_positive_int, default=25, help="切点数量（默认 25）/ number of cut points")
    audit.add_argument(
        "--label",
        choices=list(data_processor.LABEL_KINDS),
        default=data_processor.DEFAULT_LABEL_KIND,
        help="标签类型（默认 executable：下一根开盘价进出）/ label kind",
    )
    add_feature_set(audit)

    train = commands.add_parser("train", help="模型训练（模式 3）/ train a price-prediction model (mode 3)")
    train.add_argument("--vt-symbol", required=True, help="合约，例如 rb0000.SHFE")
    train.add_argument("--start", required=True, help="开始日期 YYYY-MM-DD")
    train.add_argument("--end", required=True, help="结束日期 YYYY-MM-DD（含当日）")
    train.add_argument("--interval", default="1m", help="K线周期（默认 1m）")
    train.add_argument(
        "--model-type",
        choices=("lstm", "random_forest"),
        help="lstm 或 random_forest（默认取模型设置 model.model_type）",
    )
    train.add_argument("--name", type=_bundle_name, help="模型包名称，保存在 <home>/models/NAME（默认 代码_类型）")
    train.add_argument("--epochs", type=_positive_int, help="最多训练轮数（默认取模型设置；有早停）")
    train.add_argument(
        "--walk-forward",
        type=_positive_int,
        default=1,
        help="滚动训练的折数 N：每折在一段上训练、在下一段上测试（默认 1）",
    )
    train.add_argument(
        "--horizon",
        type=_horizons,
        help="预测周期（K线根数，默认取模型设置 model.prediction_horizon）；逗号分隔多个时各训练一个模型，"
        "保留验证期模拟净盈亏最好的一个，例如 5,30,120",
    )
    add_allow_gaps(train)
    train.add_argument(
        "--label",
        choices=tuple(data_processor.LABEL_KINDS),
        default=data_processor.DEFAULT_LABEL_KIND,
        help="标签：executable（下一根开盘成交、持有 h 根后开盘平仓的收益，默认）、close（收盘到收盘，仅作对比）"
        "或 classify（扣除往返成本后涨 / 跌 / 都不是，模型输出 P(涨) − P(跌)）",
    )
    add_feature_set(train)

    show = commands.add_parser("model", help="检查并显示模型包 / check and show a model bundle")
    show.add_argument("--model", required=True, help="模型包路径或名称（<home>/models/NAME）")

    test = commands.add_parser("backtest", help="策略回测（模式 2）/ backtest the predictive strategy (mode 2)")
    add_backtest_arguments(test)
    test.add_argument("--report-dir", help="报告目录（默认 <home>/reports/模型_开始_结束）/ where the report goes")
    add_allow_gaps(test)

    opt = commands.add_parser("optimize", help="参数优化：网格/遗传算法，可滚动 / optimise strategy settings")
    add_backtest_arguments(opt)
    opt.add_argument(
        "--param",
        action="append",
        required=True,
        type=_grid_param,
        metavar="NAME=START:END:STEP",
        help="待优化参数及其网格，可重复，例如 prediction_threshold=0.0005:0.002:0.0005",
    )
    opt.add_argument(
        "--target",
        default="sharpe_ratio",
        help="优化目标（vnpy 统计项，默认 sharpe_ratio；如 total_net_pnl、return_drawdown_ratio）",
    )
    opt.add_argument("--method", choices=("grid", "ga"), default="grid", help="grid 穷举（默认）或 ga 遗传算法")
    opt.add_argument(
        "--walk-forward",
        type=_positive_int,
        default=0,
        help="滚动优化的折数 N：在一段上优化、在下一段上检验，只报告样本外结果（默认 0 关闭）",
    )
    opt.add_argument("--workers", type=_positive_int, help="进程数（默认全部 CPU 核）")
    add_backend_arguments(opt)
    opt.add_argument("--report-dir", help="结果目录（默认 <home>/reports/optimize_模型_开始_结束）")

    study = commands.add_parser(
        "research",
        help="研究表：逐年滚动训练并回测各模型、周期与标签，对比 vnpy 经典策略与买入持有 / the research table",
    )
    study.add_argument("--vt-symbol", required=True, help="合约，例如 rb0000.SHFE")
    study.add_argument(
        "--test-years", required=True, help="测试年份，逗号分隔或区间，例如 2015,2016 或 2014-2016 / test years"
    )
    study.add_argument(
        "--train-years",
        type=_positive_int,
        default=2,
        help="每个测试年之前用于训练（含验证）的自然年数（默认 2）/ training years before each test year",
    )
    study.add_argument(
        "--models", default="random_forest,lstm", help="模型类型，逗号分隔（默认 random_forest,lstm）/ model types"
    )
    study.add_argument(
        "--horizons", type=_horizons, help="预测周期（K线根数），逗号分隔，例如 5,30,120（默认取模型设置）"
    )
    study.add_argument(
        "--labels",
        default=data_processor.DEFAULT_LABEL_KIND,
        help=f"标签类型，逗号分隔：{' / '.join(data_processor.LABEL_KINDS)}"
        f"（默认 {data_processor.DEFAULT_LABEL_KIND}）/ label kinds",
    )
    study.add_argument(
        "--feature-sets",
        default=bar_features.DEFAULT_FEATURE_SET,
        help=f"特征集，逗号分隔：{' / '.join(bar_features.FEATURE_SETS)}"
        f"（默认 {bar_features.DEFAULT_FEATURE_SET}；mtf = base + 5/15/60 分钟与日线聚合）/ feature sets",
    )
    study.add_argument(
        "--classics",
        default="all",
        help="vnpy 经典策略（默认参数）：all（默认）、none 或名称列表，例如 DualThrust,BollChannel "
        "/ classic strategies",
    )
    study.add_argument("--trees", type=_positive_int, help="随机森林的树数（默认 60）/ trees of the forest")
    study.add_argument("--epochs", type=_positive_int, help="LSTM 最多训练轮数（默认 3）/ LSTM epochs")
    study.add_argument("--interval", default="1m", help="K线周期（默认 1m）")
    study.add_argument(
        "--capital", type=_positive_float, default=DEFAULT_CAPITAL, help=f"初始资金（默认 {DEFAULT_CAPITAL:,.0f}）"
    )
    study.add_argument("--workers", type=_positive_int, help="进程数（默认全部 CPU 核）/ worker processes")
    add_backend_arguments(study)
    study.add_argument("--report-dir", help="研究目录（默认 <home>/reports/research_合约；模型包缓存在其 bundles/ 下）")

    trade = commands.add_parser(
        "trade",
        help="实盘/仿真交易（模式 1）：CTP，或用历史数据回放的模拟交易所 / trade live or on the simulator",
        description="选项优先于主目录 settings/，再优先于项目 settings/，最后是默认值 / "
        "command line > <home>/settings > settings/ > defaults",
    )
    trade.add_argument(
        "--gateway",
        choices=("ctp", "sim"),
        default="ctp",
        help="ctp：SimNow 或实盘（settings/broker.json）；sim：本地回放历史数据的模拟交易所",
    )
    trade.add_argument("--no-ui", action="store_true", help="不开图形界面（服务器）；Ctrl-C / SIGTERM 正常停止")
    trade.add_argument("--strategy", help=f"settings/{STRATEGIES_FILE} 中的策略名（只有一个时可省略）")
    trade.add_argument("--vt-symbol", help="覆盖策略的合约，例如 rb2605.SHFE")
    trade.add_argument("--model", help="覆盖策略的模型包路径或名称")
    trade.add_argument("--threshold", type=_positive_float, help="覆盖开仓阈值")
    trade.add_argument(
        "--capital",
        type=_positive_float,
        help="策略资金（风控基数；模拟交易所的初始资金），覆盖策略设置的 capital（默认 1,000,000）",
    )
    trade.add_argument("--td-address", help="交易前置，覆盖 settings/broker.json，例如 tcp://182.254.243.31:30001")
    trade.add_argument("--md-address", help="行情前置，覆盖 settings/broker.json")
    trade.add_argument(
        "--connect-timeout",
        type=_positive_float,
        help="登录与合约查询的超时秒数（默认 settings/broker.json 的 connect_timeout_seconds，30）",
    )
    trade.add_argument(
        "--adopt-broker-position",
        action="store_true",
        help="策略记录的持仓与券商不一致时，以券商持仓为准并开始交易（须先人工核对）",
    )
    trade.add_argument(
        "--replay-start",
        help="sim：回放开始 YYYY-MM-DD，或 YYYY-MM-DD HH:MM（中国时间，从该分钟的K线续放被中断的回放）",
    )
    trade.add_argument("--replay-end", help="sim：回放结束日期 YYYY-MM-DD（含当日）")
    trade.add_argument("--speed", default="max", help="sim：回放速度 max（尽快）或倍速 N（1 为实时），默认 max")
    trade.add_argument("--replay-mode", choices=("bar", "tick"), default="bar", help="sim：回放K线或 tick（默认 bar）")
    trade.add_argument("--replay-csv", help="sim：从 CSV 回放，而不是数据库")
    trade.add_argument(
        "--warmup-days",
        type=_positive_int,
        help="策略开始前载入的历史天数（sim：回放开始前提供的历史），覆盖策略设置的 warmup_days（默认 10）",
    )
    trade.add_argument("--screenshot", help="打开界面、载入策略后保存主窗口截图到此文件并退出 / save a screenshot")
    trade.add_argument(
        "--roll",
        choices=tuple(ROLL_MODES),
        help="主力连续代码（如 rb888.SHFE）的换月方式，覆盖策略设置的 roll：open 开盘平旧开新（默认）、"
        "flat 空仓时才换、alert 只提醒 / how a strategy on a continuous symbol rolls",
    )

    listing = commands.add_parser(
        "contracts",
        help="列出品种的在市合约（成交量、持仓量）并标出主力合约 / list a product's contracts and its main one",
    )
    listing.add_argument("--product", required=True, help="品种代码，例如 rb、TA、IF / the product")
    listing.add_argument(
        "--gateway",
        choices=("ctp", "sim"),
        default="ctp",
        help="ctp：SimNow 或实盘（settings/broker.json）；sim：数据库中该品种各合约的K线（模拟交易所）",
    )
    listing.add_argument("--replay-start", help="sim：看这一天开盘前的快照（前一交易日收盘）YYYY-MM-DD")
    listing.add_argument("--replay-end", help="sim：回放结束日期（默认 --replay-start 后 14 天，跨过节假日）")
    listing.add_argument("--td-address", help="ctp：交易前置，覆盖 settings/broker.json")
    listing.add_argument("--md-address", help="ctp：行情前置，覆盖 settings/broker.json")
    listing.add_argument("--connect-timeout", type=_positive_float, help="ctp：登录与合约查询的超时秒数")

    state = commands.add_parser(
        "state",
        help="查看或清除策略的实盘状态（风控账本、熔断、移动止损）/ show or clear a strategy's saved live state",
    )
    state.add_argument("--strategy", help="策略名（查看时默认全部）/ the strategy")
    state.add_argument(
        "--gateway",
        choices=("ctp", "sim"),
        default="ctp",
        help="ctp：实盘与 SimNow 的状态（默认）；sim：模拟交易所回放的状态与模拟账户",
    )
    state.add_argument(
        "--clear",
        action="store_true",
        help="删除状态（先停止交易进程并核对券商持仓）：下次启动时账本为空、不再熔断、持仓以券商为准；"
        "ctp 须同时给 --strategy，sim 不给则清除整个模拟账户",
    )

    control = commands.add_parser(
        "control",
        help="控制运行中的策略：暂停/恢复开仓、平仓、切换模型 / control a running strategy",
        description="命令经主目录下的 control/ 文件夹送达运行中的 trade 进程（每秒读取），每个操作写入审计日志 / "
        "commands reach the running trade process through <home>/control/, each one audited",
    )
    control.add_argument("--strategy", help=f"settings/{STRATEGIES_FILE} 中的策略名（只有一个时可省略）")
    control.add_argument(
        "action",
        choices=("halt", "resume", "flatten", "switch-model"),
        help="halt：暂停开仓（只平不开）；resume：恢复开仓；flatten：立即平仓并暂停开仓；switch-model：下一根K线切换模型",
    )
    control.add_argument("bundle", nargs="?", help="switch-model：新模型包的路径或名称（同一品种、同一套特征）")
    control.add_argument(
        "--wait", type=_positive_float, default=15.0, help="等待运行中进程回复的秒数（默认 15）/ seconds to wait"
    )

    keep = commands.add_parser("secrets", help="加密保存 CTP / SMTP 密钥 / store secrets encrypted")
    keep.add_argument(
        "action", choices=("set", "list"), help="set：保存一个密钥（从终端读入，不回显）；list：列出已保存的名称"
    )
    keep.add_argument("name", nargs="?", choices=tuple(SECRET_ENV), help="密钥名")

    demo = commands.add_parser(
        "demo", help="主流程：导入示例数据、训练随机森林与 LSTM、回测 2016 年并写报告 / the main job"
    )
    demo.add_argument(
        "--csv", default=str(SAMPLE_BARS_CSV), help="示例K线文件（默认 ../shared/data 中的螺纹钢 1 分钟线）"
    )
    return parser


# --- output ------------------------------------------------------------------------------------


def print_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    """Print a plain aligned table to stdout."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(_width(row[i]) for row in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        print("  ".join(cell + " " * (widths[i] - _width(cell)) for i, cell in enumerate(row)).rstrip())
        if index == 0:
            print("  ".join("-" * w for w in widths))


def _width(text: str) -> int:
    """Display width: CJK characters take two columns."""
    return sum(2 if ord(ch) > 0x2E80 else 1 for ch in text)


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """--backend and --ray-address, shared by `optimize` and `research`."""
    parser.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="local：本机进程池（默认）；ray：Ray 任务（需 requirements-cluster.txt）/ where the runs go",
    )
    parser.add_argument(
        "--ray-address",
        metavar="auto|HOST:PORT",
        help="Ray 集群地址（auto 或 HOST:PORT；默认在本机回环地址上启动 Ray）/ the Ray cluster to join",
    )


def connect_backend(args: argparse.Namespace) -> None:
    """Connect to Ray when `--backend ray` asks for it (a ConfigError, exit 2, when Ray is missing)."""
    if args.ray_address and args.backend != "ray":
        raise ConfigError("--ray-address 需要 --backend ray / --ray-address needs --backend ray")
    if args.backend == "ray":
        import cluster

        cluster.connect(args.ray_address)


def _stderr_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- commands ----------------------------------------------------------------------------------


def cmd_import(args: argparse.Namespace, home: Home) -> int:
    """Import one bar CSV."""
    result = data_collector.import_csv(
        args.csv,
        args.vt_symbol,
        interval=args.interval,
        timestamp=args.timestamp,
        columns=args.columns,
        datetime_format=args.datetime_format,
        home=home,
        progress=_stderr_progress,
    )
    print_import(result)
    return EXIT_OK


def print_import(result: data_collector.ImportResult) -> None:
    """The summary table of one import."""
    print(f"导入完成 / imported: {result.vt_symbol} {result.interval.value}  ({result.path})")
    print_table(
        [
            ("文件行数 / rows", f"{result.rows + result.duplicates_dropped:,}"),
            ("重复行 / exact duplicates dropped", f"{result.duplicates_dropped:,}"),
            ("新增 / inserted", f"{result.inserted:,}"),
            ("更新 / updated", f"{result.updated:,}"),
            ("未变 / unchanged", f"{result.unchanged:,}"),
            ("库中共有 / stored", f"{result.stored:,}"),
            ("首根K线开始 / first bar start", f"{result.first:%Y-%m-%d %H:%M} (Asia/Shanghai)"),
            ("末根K线开始 / last bar start", f"{result.last:%Y-%m-%d %H:%M} (Asia/Shanghai)"),
            ("用时 / seconds", f"{result.seconds:.1f}"),
        ],
        ("项目 / item", "值 / value"),
    )


def cmd_data(args: argparse.Namespace, home: Home) -> int:
    """List what the database holds, or with --check count one series' bars against the trading calendar."""
    if args.check:
        return cmd_data_check(args, home)
    series = data_collector.list_stored(home)
    print(f"数据库 / database: {data_collector.describe_database(home)}")
    if not series:
        print("数据库为空。导入数据：python ai_trading_system.py import --csv FILE --vt-symbol rb0000.SHFE")
        return EXIT_OK
    print_table(
        [
            (s.vt_symbol, s.interval, f"{s.count:,}", f"{s.first:%Y-%m-%d %H:%M}", f"{s.last:%Y-%m-%d %H:%M}")
            for s in series
        ],
        ("合约 / vt_symbol", "周期 / interval", "数量 / count", "首条 / first", "末条 / last"),
    )
    return EXIT_OK


WINDOW_HEADERS: tuple[str, ...] = (
    "时段 / window",
    "时段数 / sessions",
    "不完整 / incomplete",
    "应有分钟 / expected",
    "缺失分钟 / missing",
)


def print_data_check(report: data_check.DataCheck) -> None:
    """The check's lines and its table of windows."""
    for line in report.lines():
        print(line)
    if report.windows:
        print()
        print_table(
            [
                (
                    f"{w.window[0]:%H:%M}-{w.window[1]:%H:%M}",
                    f"{w.sessions:,}",
                    f"{w.incomplete:,}",
                    f"{w.expected:,}",
                    f"{w.missing:,}",
                )
                for w in report.windows
            ],
            WINDOW_HEADERS,
        )


def cmd_data_check(args: argparse.Namespace, home: Home) -> int:
    """`data --check`: the stored bars of one series against the calendar; exit 2 when a hole is above the limit."""
    if not args.vt_symbol:
        raise ConfigError("data --check 需要 --vt-symbol，例如 rb0000.SHFE / --check needs --vt-symbol")
    stored = [s for s in data_collector.list_stored(home) if s.vt_symbol == args.vt_symbol]
    if not stored:
        raise DataError(
            f"数据库中没有 {args.vt_symbol}；先导入：python ai_trading_system.py import --csv FILE --vt-symbol "
            f"{args.vt_symbol} / nothing stored for this symbol"
        )
    start = args.start or min(s.first for s in stored)
    end = args.end or max(s.last for s in stored)
    bars = data_collector.load_history_data(args.vt_symbol, start, end, args.interval, home=home)
    report = data_check.check_bars(bars, args.vt_symbol, args.max_hole_minutes)
    print(f"数据检查 / data check: {args.vt_symbol} {args.interval}")
    print_data_check(report)
    if args.details:
        columns = ["trading_day", "window", "expected", "missing", "truncated"]
        frame = pd.DataFrame([row.row() for row in report.sessions], columns=columns)
        print(f"逐时段明细 / per-session counts: {write_csv_atomic(frame, Path(args.details))}")
    if report.passed:
        print("结论 / verdict: 通过 / passed")
        return EXIT_OK
    print(
        f"结论 / verdict: 有 {len(report.long_holes)} 个超过 {report.max_hole_minutes} 分钟的缺口；"
        "train / backtest 将拒绝这些数据，除非加 --allow-gaps / holes above the limit",
        file=sys.stderr,
    )
    return EXIT_BAD_INPUT


def check_before_use(bars: pd.DataFrame, vt_symbol: str, allow_gaps: bool) -> data_check.DataCheck:
    """The data check that train and backtest run first: one line on stderr; a hole above the default limit
    refuses (DataError, exit 2) unless `allow_gaps`."""
    report = data_check.check_bars(bars, vt_symbol)
    if not report.checked:
        _stderr_progress(f"数据检查 / data check: {report.note}")
        return report
    _stderr_progress(
        f"数据检查 / data check: {report.trading_days:,} 个交易日，缺 {report.missing_minutes:,} 分钟"
        f"（截断 {len(report.truncations)} 种，缺口 {len(report.holes):,} 个，超过 {report.max_hole_minutes} 分钟的 "
        f"{len(report.long_holes)} 个）/ trading days, missing minutes, truncations, holes"
    )
    if report.passed:
        return report
    shown = "; ".join(hole.describe() for hole in report.long_holes[:5])
    if allow_gaps:
        print(
            f"警告 / warning: --allow-gaps：数据有超过 {report.max_hole_minutes} 分钟的缺口：{shown}", file=sys.stderr
        )
        return report
    first, last = f"{report.first_bar:%Y-%m-%d}", f"{report.last_bar:%Y-%m-%d}"
    raise DataError(
        f"{vt_symbol} 的K线有 {len(report.long_holes)} 个超过 {report.max_hole_minutes} 分钟的缺口：{shown}。"
        f"详情：python ai_trading_system.py data --check --vt-symbol {vt_symbol} --start {first} --end {last}；"
        "补齐数据，或确认后加 --allow-gaps / holes above the limit in the bars"
    )


def _load_datafeed(home: Home) -> Any:
    """Build vnpy's configured datafeed; credentials come from the environment, never from vt_setting.json."""
    bind_vnpy_home(home, settings_for(home).database)
    from vnpy.trader.setting import SETTINGS

    name = str(SETTINGS.get("datafeed.name") or "")
    if not name:
        raise ConfigError(
            f'未配置数据服务：请在 {home.vt_setting_path} 中设置 "datafeed.name"（如 rqdata、tushare），'
            "账号与密码用环境变量 AI_TRADER_DATAFEED_USERNAME / AI_TRADER_DATAFEED_PASSWORD 提供 / "
            "no datafeed configured"
        )
    if SETTINGS.get("datafeed.password"):
        logger.warning("vt_setting.json 中保存了 datafeed.password，建议删除并改用环境变量 AI_TRADER_DATAFEED_PASSWORD")
    for key in ("username", "password"):
        value = os.environ.get(f"AI_TRADER_DATAFEED_{key.upper()}")
        if value:
            SETTINGS[f"datafeed.{key}"] = value
    try:
        module = import_module(f"vnpy_{name}")
    except ModuleNotFoundError:
        raise ConfigError(
            f"找不到数据服务模块 vnpy_{name}：请运行 pip install vnpy_{name} / datafeed not installed"
        ) from None
    return module.Datafeed()


def cmd_download(args: argparse.Namespace, home: Home) -> int:
    """Download bars through vnpy's datafeed and store them."""
    datafeed = _load_datafeed(home)
    saved = data_collector.download_history(args.vt_symbol, args.start, args.end, args.interval, datafeed, home)
    print(
        f"下载完成 / downloaded {args.vt_symbol}: 新增 {saved.inserted:,}，更新 {saved.updated:,}，"
        f"未变 {saved.unchanged:,}，库中共有 {saved.stored:,}"
    )
    return EXIT_OK


EXIT_LEAK: int = EXIT_BUG  # a column that sees the future is a bug in the feature or label code
AUDIT_HEADERS: tuple[str, ...] = (
    "列 / column",
    "结论 / verdict",
    "失败切点 / cuts failed",
    "首个不一致 / first time",
    "最大差异 / max difference",
)


def cmd_continuous(args: argparse.Namespace, home: Home) -> int:
    """Build and store the product's main-contract series and its roll table; print the table."""
    result = data_collector.build_continuous_series(
        args.product, args.adjust, args.exchange, args.interval, home=home, progress=_stderr_progress
    )
    table = result.table
    print(f"主力连续已保存 / series stored: {result.vt_symbol} {args.interval}，复权 / adjust {result.adjust}")
    print_table(
        [
            ("各月合约 / contracts read", f"{len(result.contracts)}：{', '.join(result.contracts)}"),
            ("合约K线 / contract bars read", f"{result.source_bars:,}"),
            ("连续K线 / series bars", f"{table['bars']:,}（替换旧序列 / old series replaced）"),
            ("首根 / first bar", table["first_bar"][:16]),
            ("末根 / last bar", table["last_bar"][:16]),
            ("换月 / rolls", f"{len(table['rolls'])}"),
            ("换月表 / roll table", str(result.table_path)),
            ("用时 / seconds", f"{result.seconds:.1f}"),
        ],
        ("项目 / item", "值 / value"),
    )
    if table["rolls"]:
        print()
        print_table(
            [
                (
                    r["decided_day"],
                    r["effective_day"],
                    f"{r['old_symbol']} → {r['new_symbol']}",
                    f"{r['old_price']:g}",
                    f"{r['new_price']:g}",
                    f"{r['factor']:.6f}",
                    f"{r['offset']:+g}",
                )
                for r in table["rolls"]
            ],
            (
                "决定日 / decided",
                "生效日 / effective",
                "换月 / roll",
                "旧合约价 / old",
                "新合约价 / new",
                "比例 / factor",
                "价差 / offset",
            ),
        )
    return EXIT_OK


def cmd_audit(args: argparse.Namespace, home: Home) -> int:
    """Prove that cleaning, features and labels use no future bars (GUIDE §4); exit 1 when any column leaks."""
    horizon = args.horizon if args.horizon is not None else settings_for(home).model.prediction_horizon
    vt_symbol = args.vt_symbol
    _stderr_progress(f"读取K线 / loading bars: {vt_symbol} {args.interval} {args.start} ~ {args.end}")
    frame = data_collector.load_history_data(vt_symbol, args.start, args.end, args.interval, home=home)
    frame, _ = mark_contracts(frame, vt_symbol, args.interval, home)  # rb888: the roll table's junctions, as train
    _, report = data_processor.clean_data(frame, vt_symbol)
    print(f"清洗报告 / cleaning report: {vt_symbol} {args.interval} {args.start} ~ {args.end}")
    for line in report.lines():
        print(line)
    print()

    cuts = data_processor.default_cut_points(len(frame), args.cuts)
    _stderr_progress(
        f"审计中 / auditing cleaning, features and the {args.label} label (horizon {horizon}): "
        f"{len(frame):,} 根K线，{len(cuts)} 个切点 ..."
    )
    spec = contract_spec(vt_symbol, load_contracts(settings_dirs(home)))
    result = data_processor.audit_pipeline(frame, vt_symbol, horizon, cuts, args.label, args.feature_set, spec)

    print_table(result.rows(), AUDIT_HEADERS)
    checked = len(result.columns)
    leaking = result.leaking_columns
    print()
    print(
        f"检查 {checked} 列，{len(cuts)} 个切点，泄漏 {len(leaking)} 列 / "
        f"checked {checked} columns at {len(cuts)} cut points: {len(leaking)} leaking"
        + (f" ({', '.join(leaking)})" if leaking else "")
    )
    return EXIT_LEAK if leaking else EXIT_OK


METRIC_NAMES: tuple[str, ...] = ("mse", "mae", "directional_accuracy", "ic", "rank_ic")
METRIC_HEADERS: tuple[str, ...] = ("指标 / metric", "模型 / model", "零预测 / zero", "上期方向 / last-return sign")


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.4f}"


def print_metrics(metrics: dict[str, Any]) -> None:
    """The test metrics beside the naive baselines."""
    rows = [
        (name, *(_number(metrics[column][name]) for column in ("model", "zero", "last_return_sign")))
        for name in METRIC_NAMES
    ]
    print_table(rows, METRIC_HEADERS)


def print_test_part(model: ml_model.PricePredictionModel) -> None:
    """A trained bundle's decision (chosen on validation), its drift figures and the test metrics."""
    print_decision(model.metadata)
    metrics = model.metrics["test"]
    print(f"\n测试集 / test part: {metrics['samples']:,} 个样本，阈值 / threshold {model.threshold:.6f}")
    print_metrics(metrics)


def print_horizon_search(decisions: dict[int, ThresholdChoice], chosen: int) -> None:
    """Each horizon's validation simulation, the kept one marked."""
    rows = [
        (
            f"{horizon}{' *' if horizon == chosen else ''}",
            f"{d.threshold:.6f}",
            f"{d.net_pnl:,.2f}",
            d.trades,
            f"{d.trades_per_day:.2f}",
            d.edge,
        )
        for horizon, d in decisions.items()
    ]
    print()
    print_table(
        rows,
        ("周期 / horizon", "阈值 / threshold", "验证净盈亏 / valid net P&L", "成交 / fills", "日均 / per day", "edge"),
    )


def print_decision(metadata: dict[str, Any]) -> None:
    """What the strategy simulation on the validation part chose, with the real costs, and the drift check."""
    decision = metadata.get("decision") or {}
    if not decision:
        return
    print(
        f"\n验证期策略模拟 / validation simulation (round-trip cost {decision['round_trip_cost'] * 1e4:.1f} bp): "
        f"阈值 / threshold {decision['threshold']:.6f}，净盈亏 / net P&L {decision['net_pnl']:,.2f}，"
        f"成交 / trades {decision['trades']}（{decision['trades_per_day']:.2f}/日 / per day），"
        f"开多 / long entries {decision['long_entries']}，开空 / short entries {decision['short_entries']}"
    )
    if decision["edge"] == "none":
        print(
            "结论 / verdict: edge: none —— 扣除真实成本后验证期没有任何阈值赚钱，策略不会用此模型开仓；"
            "--threshold 可强制覆盖（不建议）/ no threshold made money on validation after costs: the strategy "
            "will not open with this bundle"
        )
    else:
        print("结论 / verdict: edge: positive —— 验证期扣除成本后为正 / net positive on validation after costs")
    drift = metadata.get("drift") or {}
    if drift:
        rows = [
            (
                part,
                _number(values["mean_label"]),
                _number(values["mean_prediction"]),
                f"{values['long_share']:.1%}",
                f"{values['short_share']:.1%}",
            )
            for part, values in drift.items()
        ]
        print_table(
            rows,
            (
                "部分 / part",
                "平均标签 / mean label",
                "平均预测 / mean prediction",
                "做多信号 / long",
                "做空信号 / short",
            ),
        )


def cmd_train(args: argparse.Namespace, home: Home) -> int:
    """Mode 3: load, clean, build features, split with a purge, train, evaluate, save the bundle(s)."""
    settings = settings_for(home)
    config = ml_model.ModelConfig.from_settings(
        settings.model, model_type=args.model_type, epochs=args.epochs, feature_set=args.feature_set
    )
    symbol = args.vt_symbol.partition(".")[0]
    name = args.name or f"{symbol}_{config.model_type}"
    if args.horizon and len(args.horizon) > 1 and args.walk_forward != 1:
        raise ConfigError("--horizon 给出多个周期时不能与 --walk-forward 同用 / several horizons need one fold")
    _stderr_progress(f"读取K线 / loading bars: {args.vt_symbol} {args.interval} {args.start} ~ {args.end}")
    bars = data_collector.load_history_data(args.vt_symbol, args.start, args.end, args.interval, home=home)
    extra = {"data_check": check_before_use(bars, args.vt_symbol, args.allow_gaps).summary()}
    bars, extra["price_adjustment"] = mark_contracts(bars, args.vt_symbol, args.interval, home)
    spec = contract_spec(args.vt_symbol, load_contracts(settings_dirs(home)))
    horizons = args.horizon or [config.horizon]
    if len(horizons) > 1:
        model, decisions = ml_model.train_best_horizon(
            bars,
            args.vt_symbol,
            args.interval,
            config,
            home.models_dir / name,
            horizons,
            extra=extra,
            progress=_stderr_progress,
            label_kind=args.label,
            spec=spec,
        )
        print_horizon_search(decisions, model.config.horizon)
        print_test_part(model)
        print(f"模型包已保存 / bundle saved: {model.path}")
        return EXIT_OK
    config = replace(config, horizon=horizons[0])
    if args.walk_forward == 1:
        model = ml_model.train_bundle(
            bars,
            args.vt_symbol,
            args.interval,
            config,
            home.models_dir / name,
            extra=extra,
            progress=_stderr_progress,
            label_kind=args.label,
            spec=spec,
        )
        print_test_part(model)
        print(f"模型包已保存 / bundle saved: {model.path}")
        return EXIT_OK
    folds = ml_model.train_walk_forward(
        bars,
        args.vt_symbol,
        args.interval,
        config,
        home.models_dir,
        name,
        args.walk_forward,
        extra=extra,
        progress=_stderr_progress,
        label_kind=args.label,
        spec=spec,
    )
    rows = []
    for fold in folds:
        print_test_part(fold.model)
        test = fold.model.metrics["test"]
        tested = fold.model.metadata["ranges"]["test"]
        scores = [_number(test["model"][m]) for m in ("directional_accuracy", "ic", "rank_ic")]
        ratio = _number(test["zero"]["mse"] / test["model"]["mse"] if test["model"]["mse"] else None)
        rows.append((fold.fold, fold.path.name, tested[0][:10], tested[1][:10], test["samples"], *scores, ratio))
    print()
    print_table(
        rows,
        (
            "折 / fold",
            "模型包 / bundle",
            "测试起 / test from",
            "测试止 / to",
            "样本 / samples",
            "方向准确率 / dir. acc.",
            "IC",
            "rank IC",
            "零预测MSE/模型MSE",
        ),
    )
    print(f"当前模型（最后一折）/ current bundle (last fold): {home.models_dir / name}")
    return EXIT_OK


def mark_contracts(
    bars: pd.DataFrame, vt_symbol: str, interval: str, home: Home
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Training bars of a continuous series built by `continuous` get a `contract` column from its roll table, so
    the cleaning puts its roll junctions exactly there (an adjusted series has no gap left to find) and no label spans
    one; also what the bundle records about the prices it was trained on."""
    table = data_collector.load_roll_table(vt_symbol, bars, interval, home)
    if table is None:
        return bars, {"adjust": "none", "source": "stored series as imported"}
    segments = contracts.table_segments(table)
    marked = bars.copy()
    marked["contract"] = contracts.contract_column(bars.index, segments)
    marked.attrs = dict(bars.attrs)
    used = [s.symbol for s in segments if s.symbol in set(marked["contract"])]
    _stderr_progress(
        f"主力连续 / continuous series: 复权 {table['adjust']}，{len(used)} 个合约段，换月处不跨越标签 / "
        "labels never span a junction"
    )
    return marked, {"adjust": table["adjust"], "source": "continuous", "contracts": used}


def resolve_bundle(home: Home, text: str) -> Path:
    """`--model` as a bundle folder path, else a name under <home>/models."""
    return ml_model.find_bundle(text, home.models_dir)


def cmd_model(args: argparse.Namespace, home: Home) -> int:
    """Load a bundle with every check a load applies (seal, files, features, window, horizon, label kind, versions),
    then show what it is and how it scored."""
    model = ml_model.PricePredictionModel().load_model(resolve_bundle(home, args.model))
    meta = model.metadata
    ranges = meta.get("ranges", {})
    rows = [
        ("模型包 / bundle", str(model.path)),
        ("封印 / seal", model.seal[:16]),
        ("类型 / type", model.model_type),
        ("合约 / vt_symbol", meta["vt_symbol"]),
        ("K线周期 / interval", meta["interval"]),
        ("窗口 × 特征 / window × features", f"{meta['sequence_length']} × {len(model.names)}"),
        ("预测周期 / horizon", meta["horizon"]),
        ("标签 / label kind", meta["label_kind"]),
        ("特征集 / feature set", model.config.feature_set),
        ("阈值 / threshold", f"{model.threshold:.6f}"),
        ("验证期结论 / edge", (meta.get("decision") or {}).get("edge", "-")),
        *((f"{part} / range", f"{a[:16]} ~ {b[:16]}") for part, (a, b) in ranges.items()),
        ("创建于 / created", meta.get("created_at", "")),
    ]
    print_table(rows, ("项目 / item", "值 / value"))
    print_decision(meta)
    if "test" in model.metrics:
        print()
        print_metrics(model.metrics["test"])
    print_importance(meta.get("importance"))
    return EXIT_OK


IMPORTANCE_HEADERS: tuple[str, ...] = (
    "特征 / feature",
    "置换 IC 降幅 / permutation IC drop",
    "置换 MSE 增幅 / MSE rise",
    "森林重要性 / forest",
    "训练期秩 IC / train rank IC",
)


def print_importance(importance: dict[str, Any] | None, count: int = 10) -> None:
    """The features the model uses most: shuffling each on validation (ml_model.feature_importance), largest first."""
    if not importance:
        return
    names = list(importance["features"])
    forest = importance.get("forest") or [None] * len(names)
    columns = {name: k for k, name in enumerate(names)}
    rows = []
    for name in ml_model.top_features(importance, count):
        k = columns[name]
        values = (importance["permutation_ic_drop"][k], importance["permutation_mse_rise"][k], forest[k])
        rows.append((name, *(_number(v) for v in values), _number(importance["train_rank_ic"][k])))
    print(
        f"\n最重要的 {len(rows)} 个特征 / top features: 验证期 {importance['validation_windows']:,} 个窗口逐一打乱 "
        f"/ each shuffled across validation windows (seed {importance['seed']})"
    )
    print_table(rows, IMPORTANCE_HEADERS)


SUMMARY_ROWS: tuple[tuple[str, str, str], ...] = (
    ("total_net_pnl", "净盈亏 / net P&L", "{:,.2f}"),
    ("total_return", "总收益率 / return %", "{:.2f}"),
    ("annual_return", "年化收益率 / annual return %", "{:.2f}"),
    ("max_ddpercent", "最大回撤 / max drawdown %", "{:.2f}"),
    ("sharpe_ratio", "夏普比率 / Sharpe", "{:.2f}"),
    ("total_trade_count", "成交笔数 / trades", "{:,}"),
    ("long_entries", "开多次数 / long entries", "{:,}"),
    ("short_entries", "开空次数 / short entries", "{:,}"),
    ("trades_per_day", "日均成交 / trades per day", "{:.2f}"),
    ("expected_trades_per_day", "验证期日均成交 / expected per day", "{:.2f}"),
    ("edge", "验证期结论 / edge", "{}"),
    ("total_commission", "手续费 / commission", "{:,.2f}"),
    ("total_slippage", "滑点成本 / slippage", "{:,.2f}"),
    ("buy_and_hold_return", "买入持有收益率 / buy & hold %", "{:.2f}"),
)


def print_in_sample(note: str) -> None:
    """The IN-SAMPLE line (backtesting_module.in_sample_note) that opens an in-sample run's summary."""
    if note:
        print(f"样本内 / {note}")


def print_backtest_summary(statistics: dict[str, Any], in_sample_note: str = "") -> None:
    """The key statistics of one backtest, after the IN-SAMPLE line when it ran in sample."""
    print_in_sample(in_sample_note)
    rows = []
    for key, label, pattern in SUMMARY_ROWS:
        value = statistics.get(key)
        rows.append((label, "-" if value is None else pattern.format(value)))
    print_table(rows, ("项目 / item", "值 / value"))


def strategy_setting(options: BacktestOptions) -> dict[str, Any]:
    """The strategy parameters among the backtest options."""
    setting: dict[str, Any] = {"fixed_size": options.fixed_size, "trailing_percent": options.trailing_percent}
    if options.threshold is not None:
        setting["prediction_threshold"] = options.threshold
    return setting


def bind_vnpy_for_backtest(home: Home) -> None:
    """Bind vnpy to the home unless something imported it already (vnpy picks its folder at first import); call it
    before the first `import backtesting_module`. A backtest reads bars through data_collector, never vnpy's folder."""
    if "vnpy.trader.utility" not in sys.modules:
        bind_vnpy_home(home, settings_for(home).database)


def backtest_bars(
    backtests: BacktestingModule, vt_symbol: str, start: str, end: str, interval: str, allow_gaps: bool
) -> pd.DataFrame | None:
    """The backtest's bars (with the warm-up days), the range from `start` checked first; None when the database
    has none, so that the module's own checks of the bundle and the range say what is wrong."""
    begin = data_collector.to_china_time(start)
    try:
        bars = backtests.load_bars(vt_symbol, begin, data_collector.to_china_time(end, end_of_day=True), interval)
    except DataError:
        return None
    traded = bars.loc[bars.index >= pd.Timestamp(begin)]
    if not traded.empty:
        check_before_use(traded, vt_symbol, allow_gaps)
    return real_contract_prices(bars, vt_symbol, interval, backtests.home)


def continuous_junctions(vt_symbol: str, interval: str, home: Home) -> list[datetime] | None:
    """The first bar of every new contract of a continuous series built by `continuous` (the strategy is flat before
    each, as before a roll gap), or None for any other series (roll gaps by the causal gap rule)."""
    table = data_collector.load_roll_table(vt_symbol, None, interval, home)
    return None if table is None else [segment.first_bar for segment in contracts.table_segments(table)[1:]]


def refuse_adjusted_prices(vt_symbol: str, interval: str, home: Home, command: str) -> None:
    """ConfigError when a command that backtests from the database (its workers reload the bars) would price trades
    on a continuous series stored back-adjusted: prices nobody could trade."""
    table = data_collector.load_roll_table(vt_symbol, None, interval, home)
    if table is not None and table["adjust"] != "none":
        product = contracts.split_symbol(vt_symbol)[0]
        raise ConfigError(
            f"{vt_symbol} 按 {table['adjust']} 复权存储，{command} 会按复权价成交；请先用真实价格重建："
            f"python ai_trading_system.py continuous --product {product} --adjust none（backtest 会自动还原真实价格）/ "
            "the series is stored adjusted: rebuild it with --adjust none first"
        )


def real_contract_prices(bars: pd.DataFrame, vt_symbol: str, interval: str, home: Home) -> pd.DataFrame:
    """A backtest prices its trades on what could be traded: a continuous series stored back-adjusted gets each
    contract's real prices back from its roll table (an adjusted price is not a price anyone paid, and fees and
    ticks apply to real ones)."""
    table = data_collector.load_roll_table(vt_symbol, bars, interval, home)
    if table is None or table["adjust"] == "none":
        return bars
    _stderr_progress(
        f"主力连续按 {table['adjust']} 复权存储，回测改用各合约真实价格 / the backtest uses the contracts' real prices"
    )
    real = contracts.real_prices(bars, contracts.table_segments(table)).drop(columns="contract")
    real.attrs = dict(bars.attrs)
    return real


def run_and_report(
    home: Home,
    vt_symbol: str,
    start: str,
    end: str,
    model: str,
    options: BacktestOptions,
    folder: Path,
    allow_gaps: bool = False,
) -> dict[str, Any]:
    """One backtest through the module after the data check of its range, its report files, and the summary."""
    bind_vnpy_for_backtest(home)
    import backtesting_module

    _stderr_progress(f"回测 / backtest: {vt_symbol} {start} ~ {end} 模型 / model {model}")
    backtests = backtesting_module.BacktestingModule(home)
    bars = backtest_bars(backtests, vt_symbol, start, end, options.interval, allow_gaps)
    result = backtests.run_backtest(
        vt_symbol,
        start,
        end,
        resolve_bundle(home, model),
        setting=strategy_setting(options),
        interval=options.interval,
        capital=options.capital,
        rate=options.rate,
        slippage=options.slippage,
        size=options.size,
        pricetick=options.pricetick,
        bars=bars,
        use_cache=options.use_cache,
        allow_in_sample=options.allow_in_sample,
        junctions=continuous_junctions(vt_symbol, options.interval, home),
    )
    files = backtesting_module.write_report(result, folder)
    print_backtest_summary(result.statistics, backtesting_module.in_sample_note(result.in_sample))
    rolls = result.statistics.get("rolls") or []
    if rolls:
        shown = ", ".join(roll[:16] for roll in rolls)
        print(f"换月跳空 {len(rolls)} 次，跳空前已平仓 / {len(rolls)} roll gaps, flat before each: {shown}")
    if options.threshold is not None and result.statistics.get("edge") == "none":
        print(
            "警告 / warning: 模型包验证期 edge: none，--threshold 强制开仓 / the bundle showed no validation edge; "
            "--threshold forces it to trade",
            file=sys.stderr,
        )
    print(f"报告 / report: {folder}  ({', '.join(sorted(files))})")
    return dict(result.statistics)


def cmd_backtest(args: argparse.Namespace, home: Home) -> int:
    """Mode 2: backtest the predictive strategy with a bundle and write the report."""
    folder = (
        Path(args.report_dir)
        if args.report_dir
        else (home.reports_dir / f"{Path(args.model).name}_{args.start}_{args.end}")
    )
    options = backtest_options(args)
    run_and_report(home, args.vt_symbol, args.start, args.end, args.model, options, folder, args.allow_gaps)
    return EXIT_OK


def cmd_optimize(args: argparse.Namespace, home: Home) -> int:
    """Grid or genetic search of strategy settings on all cores; walk-forward reports out-of-sample results only."""
    refuse_adjusted_prices(args.vt_symbol, args.interval, home, "optimize")
    bind_vnpy_for_backtest(home)
    import backtesting_module

    options = backtest_options(args)
    grid = dict(args.param)
    folder = (
        Path(args.report_dir)
        if args.report_dir
        else (home.reports_dir / f"optimize_{Path(args.model).name}_{args.start}_{args.end}")
    )
    backtests = backtesting_module.BacktestingModule(home)
    optimizer = backtesting_module.Optimizer(backtests, args.workers, args.backend)
    if args.backend == "ray" and args.method == "ga":
        raise ConfigError("--backend ray 只支持 --method grid / the genetic search runs on the local backend only")
    connect_backend(args)
    start = data_collector.to_china_time(args.start)
    end = data_collector.to_china_time(args.end, end_of_day=True)
    costs = backtests.costs(
        args.vt_symbol, options.capital, options.rate, options.slippage, options.size, options.pricetick
    )
    _stderr_progress(f"准备数据与预测 / loading bars and predictions: {args.vt_symbol} {args.start} ~ {args.end}")
    job = optimizer.prepare(
        args.vt_symbol,
        start,
        end,
        resolve_bundle(home, args.model),
        options.interval,
        strategy_setting(options),
        args.target,
        costs,
        folder / "work",
        use_cache=options.use_cache,
        allow_in_sample=options.allow_in_sample,
    )
    note = backtesting_module.in_sample_note(backtesting_module.read_job(job).in_sample)
    if args.walk_forward:
        table = optimizer.walk_forward(job, grid, args.walk_forward, args.method)
        path = write_csv_atomic(table, folder / "walk_forward.csv")
        print_in_sample(note)
        print_table([tuple(str(v) for v in row) for row in table.itertuples(index=False)], list(table.columns))
        print(f"样本外结果 / out-of-sample results: {path}")
        return EXIT_OK
    found = optimizer.search(job, grid, args.method, output=_stderr_progress)
    path = write_csv_atomic(found.table, folder / "results.csv")
    print_in_sample(note)
    top = found.table.head(10)
    print_table([tuple(str(v) for v in row) for row in top.itertuples(index=False)], list(top.columns))
    print(f"最优参数 / best settings ({args.target}): {found.best}")
    for warning in found.warnings:
        print(f"警告 / warning: {warning}", file=sys.stderr)
    print(f"全部结果 / all results: {path}")
    return EXIT_OK


def cmd_research(args: argparse.Namespace, home: Home) -> int:
    """The research table: models trained walk-forward year by year beside vnpy's classic strategies."""
    import research  # imports no vnpy engine: the plan is checked before vnpy is bound to the home

    plan = research.ResearchPlan(
        vt_symbol=args.vt_symbol,
        test_years=research.parse_years(args.test_years),
        train_years=args.train_years,
        models=research.parse_models(args.models),
        horizons=tuple(args.horizons or ()),
        labels=research.parse_labels(args.labels),
        feature_sets=research.parse_feature_sets(args.feature_sets),
        classics=research.parse_classics(args.classics),
        interval=args.interval,
        capital=args.capital,
        trees=args.trees,
        epochs=args.epochs,
    )
    refuse_adjusted_prices(args.vt_symbol, args.interval, home, "research")
    folder = Path(args.report_dir) if args.report_dir else research.default_folder(home, args.vt_symbol)
    bind_vnpy_for_backtest(home)
    connect_backend(args)
    runner = research.run_specs_ray if args.backend == "ray" else None
    found = research.run_research(home, plan, folder, args.workers, progress=_stderr_progress, runner=runner)
    headers, rows = research.summary_rows(found.table)
    print()
    print_table(rows, headers)
    line = research.verdict_line(found.facts["verdict"])
    if line:
        print(line)
    print(f"研究表 / research table: {folder}  ({', '.join(sorted(found.paths))})")
    return EXIT_OK


DEMO_TRAIN: tuple[str, str] = ("2014-01-01", "2015-12-31")
DEMO_TEST: tuple[str, str] = ("2016-01-01", "2016-12-31")
DEMO_MODELS: dict[str, dict[str, Any]] = {
    "demo_rf": {"model_type": "random_forest", **ml_model.SMALL_MODELS["random_forest"]},
    "demo_lstm": {"model_type": "lstm", **ml_model.SMALL_MODELS["lstm"]},
}


DEMO_COLUMNS: tuple[str, ...] = (
    "total_net_pnl",
    "total_return",
    "max_ddpercent",
    "sharpe_ratio",
    "total_trade_count",
    "long_entries",
    "short_entries",
    "trades_per_day",
    "expected_trades_per_day",
    "edge",
)


def cmd_demo(args: argparse.Namespace, home: Home) -> int:
    """The main job: import the sample, train a RandomForest and a small LSTM on 2014-2015, backtest both on 2016."""
    result = data_collector.import_csv(
        args.csv, SAMPLE_VT_SYMBOL, timestamp="end", home=home, progress=_stderr_progress
    )
    print_import(result)
    settings = settings_for(home)
    bars = data_collector.load_history_data(SAMPLE_VT_SYMBOL, *DEMO_TRAIN, home=home)
    extra = {"data_check": check_before_use(bars, SAMPLE_VT_SYMBOL, allow_gaps=False).summary()}
    spec = contract_spec(SAMPLE_VT_SYMBOL, load_contracts(settings_dirs(home)))
    shown = [row for row in SUMMARY_ROWS if row[0] in DEMO_COLUMNS]
    summaries = []
    for name, overrides in DEMO_MODELS.items():
        config = ml_model.ModelConfig.from_settings(settings.model, **overrides)
        print(f"\n== 训练 / training {name} ({config.model_type}) on {DEMO_TRAIN[0]} ~ {DEMO_TRAIN[1]} ==")
        model = ml_model.train_bundle(
            bars, SAMPLE_VT_SYMBOL, "1m", config, home.models_dir / name, extra, _stderr_progress, spec=spec
        )
        print_test_part(model)
        print(f"\n== 回测 / backtest {name} on {DEMO_TEST[0]} ~ {DEMO_TEST[1]} ==")
        statistics = run_and_report(
            home, SAMPLE_VT_SYMBOL, *DEMO_TEST, name, BACKTEST_DEFAULTS, home.reports_dir / name
        )
        summaries.append(
            (
                name,
                *(
                    pattern.format(statistics[key]) if statistics.get(key) is not None else "-"
                    for key, _, pattern in shown
                ),
            )
        )
    print()
    print_table(summaries, ("模型 / model", *(label for _, label, _ in shown)))
    print(f"模型 / bundles: {home.models_dir}\n报告 / reports: {home.reports_dir}")
    return EXIT_OK


# --- live trading (mode 1) ------------------------------------------------------------------


# trade options that override a setting: option dest -> (where, key). "strategy": the strategy's entry in
# strategies.json (its vt_symbol or a parameter of its `setting`); "broker": broker.json. Every other trade option
# exists only on the command line.
TRADE_OVERRIDES: dict[str, tuple[str, str]] = {
    "vt_symbol": ("strategy", "vt_symbol"),
    "model": ("strategy", "model_path"),
    "threshold": ("strategy", "prediction_threshold"),
    "capital": ("strategy", "capital"),
    "warmup_days": ("strategy", "warmup_days"),
    "roll": ("strategy", "roll"),
    "td_address": ("broker", "td_address"),
    "md_address": ("broker", "md_address"),
    "connect_timeout": ("broker", "connect_timeout_seconds"),
}


def layered(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """The one precedence rule of option values (GUIDE §5), layers given lowest first: defaults, settings/,
    <home>/settings, the command line. A later layer's value wins; None means "not set in this layer"."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update((key, value) for key, value in layer.items() if value is not None)
    return merged


def command_line_layer(args: argparse.Namespace, where: str) -> dict[str, Any]:
    """The values the command line gives for one settings source (None where an option was left out)."""
    return {key: getattr(args, dest) for dest, (source, key) in TRADE_OVERRIDES.items() if source == where}


@dataclass(frozen=True)
class TradeOptions:
    """What `trade` runs, each value resolved once by `layered`: the strategy and the broker settings."""

    strategy: live_trading.StrategyConfig
    broker: BrokerSettings


def strategy_name(configs: Collection[str], requested: str | None) -> str:
    """The strategy asked for, or strategies.json's only one; ConfigError naming the choices otherwise."""
    if not configs:
        raise ConfigError(f"settings/{STRATEGIES_FILE} 中没有策略 / no strategy configured")
    name = requested or (next(iter(configs)) if len(configs) == 1 else "")
    if name not in configs:
        raise ConfigError(f"请用 --strategy 选择策略（可用：{', '.join(configs)}）/ choose a strategy")
    return name


def trade_options(args: argparse.Namespace, home: Home, settings: AppSettings) -> TradeOptions:
    """The strategy (strategies.json's only entry, or --strategy) and the broker settings, by `layered`: the
    command line, then the strategy's entry (the home's strategies.json replaces the project's entry by name) over
    the contract's costs and the default capital; broker.json as settings_for merged it (environment included)."""
    configs = live_trading.load_strategy_configs(home)
    config = configs[strategy_name(configs, args.strategy)]
    name = config.name
    entry = {"vt_symbol": config.vt_symbol, "roll": config.roll, **config.setting}
    chosen = layered(entry, command_line_layer(args, "strategy"))
    vt_symbol, roll = str(chosen.pop("vt_symbol")), str(chosen.pop("roll"))
    if not chosen.get("model_path"):
        raise ConfigError(f"策略 {name} 没有 model_path；请用 --model 指定模型包 / no model")
    chosen["model_path"] = str(resolve_bundle(home, str(chosen["model_path"])))
    spec = contract_spec(vt_symbol, load_contracts(settings_dirs(home)))
    defaults = {
        **live_trading.live_costs(spec, DEFAULT_CAPITAL, args.gateway == "sim"),
        **settings.risk.strategy_parameters(),
    }
    strategy = live_trading.StrategyConfig(name, config.class_name, vt_symbol, layered(defaults, chosen), roll)
    broker = BrokerSettings(**layered(asdict(settings.broker), command_line_layer(args, "broker")))
    return TradeOptions(strategy, broker)


def sim_setting(args: argparse.Namespace, home: Home, config: live_trading.StrategyConfig) -> dict[str, Any]:
    """The simulated exchange's connect setting, checked before any engine starts: the replay options, and the
    strategy's contract, capital and warm-up days (so the account and the history served agree with the strategy's).
    Call after bind_vnpy_home (it imports sim_gateway)."""
    from sim_gateway import parse_settings

    if not args.replay_start or not args.replay_end:
        raise ConfigError("--gateway sim 需要 --replay-start 和 --replay-end（YYYY-MM-DD）/ replay range needed")
    setting = {
        "vt_symbol": config.vt_symbol,
        "home": str(home.root),
        "mode": args.replay_mode,
        "csv": str(Path(args.replay_csv).resolve()) if args.replay_csv else "",
        "start": args.replay_start,
        "end": args.replay_end,
        "speed": args.speed,
        "capital": config.setting["capital"],
        "hold": True,  # replay once the strategy has started
    }
    if "warmup_days" in config.setting:  # else the strategy's default and the simulator's agree (10)
        setting["warmup_days"] = config.setting["warmup_days"]
    parse_settings(setting)
    return setting


def install_stop_signals(stop: threading.Event) -> None:
    """SIGINT and SIGTERM end a headless run cleanly (strategies stopped, recorder flushed, engines closed)."""

    def handler(signum: int, _frame: Any) -> None:
        logger.info("收到信号 %s，正在停止 / stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    threading.excepthook = log_thread_exception


def log_thread_exception(hook: Any) -> None:
    """Headless runs log an uncaught exception in any thread instead of printing it (GUIDE §7)."""
    name = hook.thread.name if hook.thread is not None else "?"
    logger.error(
        "线程 %s 未捕获异常 / uncaught exception in a thread: %s",
        name,
        hook.exc_value,
        exc_info=(hook.exc_type, hook.exc_value, hook.exc_traceback) if hook.exc_value else None,
    )


def cmd_trade(args: argparse.Namespace, home: Home) -> int:
    """Mode 1: trade live through CTP, or rehearse the whole live path on the simulated exchange."""
    settings = settings_for(home)
    secrets = load_secrets(home)
    install_redaction()
    bind_vnpy_home(home, settings.database)  # before anything imports vnpy's engines (GUIDE §6)
    options = trade_options(args, home, settings)
    config = options.strategy
    simulated = args.gateway == "sim"
    if simulated:
        gateway, connect = "SIM", sim_setting(args, home, config)
    else:
        gateway, connect = "CTP", live_trading.ctp_setting(options.broker, secrets)
    screenshot = Path(args.screenshot).resolve() if args.screenshot else None  # MainEngine changes the directory
    stop = threading.Event()
    if args.no_ui:
        install_stop_signals(stop)
    system = live_trading.AITradingSystem(home, settings, secrets)
    try:
        system.monitor.attach(system.event_engine, product_of(config.vt_symbol))
        system.connect_gateway(gateway, connect, options.broker.connect_timeout_seconds)
        config = system.main_contract_config(config)  # rb888.SHFE: the main contract (else unchanged)
        recording = home.vntrader_dir / live_trading.SIM_RECORDING_DB if simulated else None
        system.record(system.market_symbols(config), recording)
        if not system.start_trading(config, adopt_position=args.adopt_broker_position):
            return EXIT_BAD_INPUT  # a human must reconcile the position first
        finished = system.release_replay() if simulated else None
        if args.no_ui:
            system.run_headless(stop, finished)
        else:
            system.run_ui(screenshot)
    finally:
        system.close()
    print_trade_summary(system, config)
    return EXIT_OK


def print_trade_summary(system: live_trading.AITradingSystem, config: live_trading.StrategyConfig) -> None:
    """Orders, trades and the final position of the run."""
    strategy = system.cta_engine.strategies.get(config.name)
    orders = system.main_engine.get_all_orders()
    trades = system.main_engine.get_all_trades()
    rows = [
        ("策略 / strategy", config.name),
        ("合约 / contract", strategy.vt_symbol if strategy else config.vt_symbol),
        ("委托 / orders", len(orders)),
        ("成交 / trades", len(trades)),
        ("持仓 / position", strategy.pos if strategy else "-"),
        ("审计日志 / audit log", system.audit.path),
    ]
    accounts = [a for a in system.main_engine.get_all_accounts() if a.gateway_name == system.gateway_name]
    if accounts:
        rows.append(("账户权益 / balance", f"{accounts[-1].balance:.2f}"))
    if strategy is not None and strategy.risk is not None:
        book = strategy.risk.state
        pnl = book.book_equity(strategy.risk.spec.size) - book.capital
        rows.append(("策略账本盈亏 / book P&L", f"{pnl:.2f}"))
        rows.append(("其中滑点 / of which slippage", f"{book.slippage_cost:.2f}"))
    if system.collector is not None:
        stats = system.collector.stats
        rows += [("记录 tick / ticks recorded", stats.ticks_stored), ("记录K线 / bars recorded", stats.bars_stored)]
    print_table(rows, ("项目 / item", "值 / value"))


def _snapshot_replay_end(start: str) -> str:
    """contracts --gateway sim: the replay must hold a bar after the snapshot, which a holiday's eve (no night
    session) or a long holiday would not give on the start's own day; 14 days cover the longest closure."""
    return f"{date.fromisoformat(start) + timedelta(days=14):%Y-%m-%d}"


def cmd_contracts(args: argparse.Namespace, home: Home) -> int:
    """The product's contracts in the gateway with their volume and open interest, the main one marked by the rule
    of contracts.main_contract_changes."""
    specs = load_contracts(settings_dirs(home))
    split_symbol(continuous_symbol(args.product))  # a product code: one to three letters
    spec = contract_spec(continuous_symbol(args.product), specs)  # an unknown product: ConfigError with the fix
    if not spec.exchange:
        raise ConfigError(f"合约表中品种 {args.product} 没有 exchange / the product's exchange is not set")
    continuous = f"{continuous_symbol(args.product)}.{spec.exchange}"
    settings = settings_for(home)
    secrets = load_secrets(home)
    install_redaction()
    bind_vnpy_home(home, settings.database)
    broker = BrokerSettings(**layered(asdict(settings.broker), command_line_layer(args, "broker")))
    if args.gateway == "sim":
        if not args.replay_start:
            raise ConfigError("--gateway sim 需要 --replay-start（YYYY-MM-DD）/ the replay day is needed")
        end = args.replay_end or _snapshot_replay_end(args.replay_start[:10])
        setting = {"vt_symbol": continuous, "home": str(home.root), "start": args.replay_start, "end": end}
        gateway, connect = "SIM", {**setting, "hold": True}
    else:
        gateway, connect = "CTP", live_trading.ctp_setting(broker, secrets)
    system = live_trading.AITradingSystem(home, settings, secrets)
    try:
        system.connect_gateway(gateway, connect, broker.connect_timeout_seconds)
        import rollover

        days = rollover.snapshot_days(rollover.gateway_snapshot(system, continuous))
        main = rollover.main_from_days(days)
    finally:
        system.close()
    print(f"{continuous} 的合约（{days[0].trading_day} 的行情快照）/ contracts of {args.product}")
    rows = [
        (day.symbol, f"{day.volume:,.0f}", f"{day.open_interest:,.0f}", "★ 主力 / main" if day.symbol == main else "")
        for day in days
    ]
    print_table(rows, ("合约 / contract", "成交量 / volume", "持仓量 / open interest", "主力 / main"))
    return EXIT_OK


def cmd_state(args: argparse.Namespace, home: Home) -> int:
    """Show the strategies' saved live state, or clear one (the only way it is ever deleted)."""
    simulated = args.gateway == "sim"
    if args.clear:
        removed = live_trading.clear_states(home, simulated, args.strategy)
        AuditLog(home.audit_path).write(
            "state_cleared", strategy=args.strategy, gateway=args.gateway, files=[str(path) for path in removed]
        )
        for path in removed:
            print(f"已删除 / removed {path}")
        if not removed:
            print("没有可删除的状态 / no saved state")
        return EXIT_OK
    states = live_trading.saved_states(home, simulated)
    if args.strategy:
        states = {name: state for name, state in states.items() if name == args.strategy}
    folder = home.sim_state_dir if simulated else home.state_dir
    if not states:
        print(f"{folder} 中没有已保存的状态 / no saved state")
        return EXIT_OK
    rows = []
    for name, state in states.items():
        risk = state.get("risk") or {}
        halt = f"是 / yes：{risk.get('halt_reason', '')}" if risk.get("halted") else "否 / no"
        held = f"是 / yes：{risk.get('hold_reason', '')}" if risk.get("held") else "否 / no"
        model = state.get("model") or {}
        rows += [
            (name, "交易日 / trading day", state.get("trading_day")),
            ("", "持仓 / position", state.get("pos")),
            ("", "已实现盈亏 / realised", risk.get("realised")),
            ("", "手续费 / commission", risk.get("commission")),
            ("", "日初权益 / day-start equity", risk.get("day_start_equity")),
            ("", "熔断 / halted", halt),
            ("", "暂停开仓 / opening held", held),
            ("", "最后K线 / last bar", state.get("last_bar")),
            ("", "模型 / model", model.get("name")),
            ("", "保存于 / saved at", state.get("saved_at")),
        ]
    print(f"状态目录 / folder: {folder}")
    print_table(rows, ("策略 / strategy", "项目 / item", "值 / value"))
    return EXIT_OK


def cmd_control(args: argparse.Namespace, home: Home) -> int:
    """Send one command to the running trade process and print its answer; a command nobody takes is withdrawn."""
    name = strategy_name(live_trading.configured_strategies(home), args.strategy)
    bundle = str(Path(args.bundle).resolve()) if args.bundle and Path(args.bundle).exists() else (args.bundle or "")
    command = live_trading.new_command(name, args.action, bundle)
    path = live_trading.send_command(home, command)
    reply = live_trading.await_reply(home, command, args.wait)
    if reply is None and live_trading.withdraw(path):
        raise TransientError(
            f"{args.wait:g} 秒内没有运行中的 trade 进程接收策略 {name} 的命令，已撤回；请确认交易进程在运行 "
            "/ no running trade process took the command; withdrawn"
        )
    if reply is None:
        reply = live_trading.await_reply(home, command, live_trading.COMMAND_TTL_SECONDS)
    if reply is None:
        raise TransientError("交易进程已接收命令但未回复；请查看审计日志 / taken but not answered: see the audit log")
    print(f"{'完成' if reply.ok else '未执行'} / {'done' if reply.ok else 'refused'}：{reply.message}")
    if reply.ok and args.action == "switch-model":
        print(
            f"提示：重启后仍按 settings/{STRATEGIES_FILE} 的 model_path 加载模型；要长期使用新模型请修改它 "
            "/ a restart loads strategies.json's model_path"
        )
    return EXIT_OK if reply.ok else EXIT_BAD_INPUT


def cmd_secrets(args: argparse.Namespace, home: Home) -> int:
    """Store a secret in the home's encrypted file (key outside the repository), or list the stored names."""
    if args.action == "list":
        secrets = load_secrets(home)
        rows = [(name, SECRET_ENV[name], "已设置 / set" if secrets.get(name) else "-") for name in SECRET_ENV]
        print_table(rows, ("名称 / name", "环境变量 / variable", "状态 / state"))
        return EXIT_OK
    if not args.name:
        raise ConfigError(f"请指定密钥名（{', '.join(SECRET_ENV)}）/ name needed")
    value = getpass.getpass(f"{args.name}（不回显 / hidden）: ")
    path = save_secret(home, args.name, value)
    print(f"已加密保存 {args.name} 到 {path} / stored")
    return EXIT_OK


COMMANDS: dict[str, Handler] = {
    "import": cmd_import,
    "data": cmd_data,
    "download": cmd_download,
    "continuous": cmd_continuous,
    "audit": cmd_audit,
    "train": cmd_train,
    "model": cmd_model,
    "backtest": cmd_backtest,
    "optimize": cmd_optimize,
    "research": cmd_research,
    "demo": cmd_demo,
    "trade": cmd_trade,
    "state": cmd_state,
    "contracts": cmd_contracts,
    "control": cmd_control,
    "secrets": cmd_secrets,
}


# --- the mode prompt ---------------------------------------------------------------------------


def _ask(input_fn: Callable[[str], str], question: str, default: str) -> str:
    """One question with a default (Enter keeps it)."""
    answer = input_fn(f"{question} [{default}]: ").strip()
    return answer or default


def ask_training(input_fn: Callable[[str], str]) -> tuple[str, ...]:
    """Mode 3's questions; the answers become the `train` subcommand's options."""
    return (
        "train",
        "--vt-symbol",
        _ask(input_fn, "合约 / vt_symbol", SAMPLE_VT_SYMBOL),
        "--start",
        _ask(input_fn, "开始日期 / start", "2015-01-01"),
        "--end",
        _ask(input_fn, "结束日期 / end", "2016-06-30"),
        "--model-type",
        _ask(input_fn, "模型类型 / model type (lstm | random_forest)", "lstm"),
    )


def ask_backtest(input_fn: Callable[[str], str]) -> tuple[str, ...]:
    """Mode 2's questions; the answers become the `backtest` subcommand's options."""
    return (
        "backtest",
        "--vt-symbol",
        _ask(input_fn, "合约 / vt_symbol", SAMPLE_VT_SYMBOL),
        "--start",
        _ask(input_fn, "开始日期 / start", "2016-01-01"),
        "--end",
        _ask(input_fn, "结束日期 / end", "2016-12-31"),
        "--model",
        _ask(input_fn, "模型包 / model bundle (models/NAME)", "demo_rf"),
    )


def ask_trading(input_fn: Callable[[str], str]) -> tuple[str, ...]:
    """Mode 1's questions: the simulated exchange (replaying history) or CTP (SimNow or live, settings/broker.json)."""
    gateway = _ask(input_fn, "网关 / gateway (sim 历史回放模拟 | ctp SimNow或实盘)", "sim")
    if gateway != "sim":
        return ("trade", "--gateway", gateway)
    return (
        "trade",
        "--gateway",
        "sim",
        "--replay-start",
        _ask(input_fn, "回放开始 / replay start (YYYY-MM-DD [HH:MM])", "2016-06-01"),
        "--replay-end",
        _ask(input_fn, "回放结束 / replay end", "2016-06-10"),
        "--speed",
        _ask(input_fn, "速度 / speed (max | 倍速 N)", "60"),
        "--model",
        _ask(input_fn, "模型包 / model bundle (models/NAME)", "demo_rf"),
    )


def live_account_confirmed(home: Home, input_fn: Callable[[str], str]) -> bool:
    """Before the prompt connects to a live (non-simulation) CTP account, the user must type YES."""
    broker = settings_for(home).broker
    if broker.environment != "live":
        return True
    answer = input_fn(
        f"即将连接实盘账户（真实资金，交易前置 {broker.td_address or '见 settings/broker.json'}）。"
        "确认请输入 YES / type YES to connect to a LIVE account: "
    )
    return answer.strip() == "YES"


@dataclass(frozen=True)
class Mode:
    """One entry of the mode prompt: a key, a label, the argv it runs, or questions that build the argv."""

    key: str
    label: str
    argv: tuple[str, ...] = ()
    ask: Callable[[Callable[[str], str]], tuple[str, ...]] | None = None

    def command(self, input_fn: Callable[[str], str]) -> tuple[str, ...]:
        return self.ask(input_fn) if self.ask is not None else self.argv


MODES: tuple[Mode, ...] = (
    Mode("1", "实盘/仿真交易 / trade (CTP, or the simulated exchange)", ask=ask_trading),
    Mode("2", "策略回测 / backtest the predictive strategy", ask=ask_backtest),
    Mode("3", "模型训练 / train a price-prediction model", ask=ask_training),
    Mode("4", "导入示例数据并查看 / import the sample data", ("demo",)),
    Mode("5", "查看数据库 / what the database holds", ("data",)),
)


def prompt_mode(input_fn: Callable[[str], str]) -> tuple[str, ...] | None:
    """Ask for a mode until a valid choice (three tries); None when the user quits."""
    menu = "\n".join(f"  {mode.key}. {mode.label}" for mode in MODES)
    for _ in range(3):
        try:
            answer = input_fn(f"请选择运行模式 / choose a mode:\n{menu}\n  q. 退出 / quit\n> ").strip().lower()
        except EOFError:
            return None
        if answer in ("q", "quit", "exit", ""):
            return None
        for mode in MODES:
            if answer == mode.key:
                try:
                    return mode.command(input_fn)
                except EOFError:
                    return None
        print(f"无效选择 {answer!r}，请输入 {'/'.join(m.key for m in MODES)} 或 q", file=sys.stderr)
    raise ConfigError("多次输入无效，已退出 / too many invalid choices")


# --- main --------------------------------------------------------------------------------------


def setup_logging(verbose: bool) -> None:
    """Log to stderr; only main() calls this."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None, input_fn: Callable[[str], str] = input) -> int:
    """Run one command (or the mode prompt) and return the exit code."""
    parser = build_parser()
    arguments = list(sys.argv[1:] if argv is None else argv)
    chosen: tuple[str, ...] | None = None
    try:
        args = parser.parse_args(arguments)
        if args.command is None:
            chosen = prompt_mode(input_fn)
            if chosen is None:
                return EXIT_OK
            args = parser.parse_args([*arguments, *chosen])
        setup_logging(args.verbose)
        home = resolve_home(args.home)
        settings_for(home)
        if chosen is not None and args.command == "trade" and args.gateway == "ctp":
            if not live_account_confirmed(home, input_fn):
                print("未确认，已取消 / not confirmed, nothing was connected", file=sys.stderr)
                return EXIT_OK
        return COMMANDS[args.command](args, home)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    except AppError as exc:
        print(f"错误 / error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("已中断 / interrupted", file=sys.stderr)
        return 130
    except Exception:
        logger.exception("内部错误，请报告此问题 / internal error, please report it")
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
