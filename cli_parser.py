"""The command line: every subcommand with its options, their types, defaults and help text; it parses, runs nothing."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TypeAlias

import bar_features
import bar_store
import contracts
import data_check
import data_processor
from config import DEFAULT_CAPITAL, SAMPLE_BARS_CSV, SECRET_ENV, STRATEGIES_FILE
from contracts import ROLL_MODES

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"  # what add_subparsers() returns


# --- option types (argparse `type=`) -----------------------------------------------------------


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
    """A number, else the argparse error."""
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


# --- options shared by several subcommands -----------------------------------------------------


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


def add_symbol_range(parser: argparse.ArgumentParser, example: str = "rb0000.SHFE") -> None:
    """--vt-symbol, --start and --end, all required: the series and the dates a command reads."""
    parser.add_argument("--vt-symbol", required=True, help=f"合约，例如 {example}")
    parser.add_argument("--start", required=True, help="开始日期 YYYY-MM-DD")
    parser.add_argument("--end", required=True, help="结束日期 YYYY-MM-DD（含当日）")


def add_backtest_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by `backtest` and `optimize`: the contract, the range, the model, costs, strategy settings."""
    defaults = BACKTEST_DEFAULTS
    add_symbol_range(parser)
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


# --- the parser: one function a subcommand, in the order --help lists them ---------------------


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
    add_import_parser(commands)
    add_data_parser(commands)
    add_download_parser(commands)
    add_continuous_parser(commands)
    add_audit_parser(commands)
    add_train_parser(commands)
    add_model_parser(commands)
    add_backtest_parser(commands)
    add_optimize_parser(commands)
    add_research_parser(commands)
    add_trade_parser(commands)
    add_contracts_parser(commands)
    add_state_parser(commands)
    add_control_parser(commands)
    add_secrets_parser(commands)
    add_demo_parser(commands)
    return parser


def add_import_parser(commands: Subparsers) -> None:
    """`import`: a bar CSV into the database."""
    parser = commands.add_parser("import", help="导入K线 CSV 到数据库 / import bars from a CSV file")
    parser.add_argument("--csv", required=True, help="CSV 文件（可为 .gz / .bz2 / .xz）")
    parser.add_argument("--vt-symbol", required=True, help="合约，例如 rb0000.SHFE")
    parser.add_argument("--interval", default="1m", help="K线周期 1m / 1h / d（默认 1m）")
    parser.add_argument(
        "--timestamp",
        choices=("end", "start"),
        help="文件时间是K线结束(end)还是开始(start)；默认按识别出的格式：示例格式 end，vnpy 导出格式 start",
    )
    parser.add_argument("--columns", type=_column_map, help="列映射，例如 datetime=trade_time,open=open_price,...")
    parser.add_argument(
        "--datetime-format", help="时间格式（strptime），例如 %%Y%%m%%d %%H:%%M:%%S；需与 --columns 同用"
    )


def add_data_parser(commands: Subparsers) -> None:
    """`data`: what the database holds; `--check` counts one series against the calendar."""
    parser = commands.add_parser("data", help="查看数据库中的数据；--check 检查缺失分钟 / what the database holds")
    parser.add_argument(
        "--check",
        action="store_true",
        help="按交易日历（分时段、节假日、节前无夜盘）检查一个合约的K线：缺失分钟、缺口、截断、零成交量、时段外K线",
    )
    parser.add_argument("--vt-symbol", help="--check 的合约，例如 rb0000.SHFE")
    parser.add_argument("--start", help="--check 开始日期 YYYY-MM-DD（默认库中首条）")
    parser.add_argument("--end", help="--check 结束日期 YYYY-MM-DD（含当日，默认库中末条）")
    parser.add_argument("--interval", default="1m", help="--check 的K线周期（默认 1m；只有 1 分钟K线逐分钟检查）")
    parser.add_argument(
        "--max-hole-minutes",
        type=_positive_int,
        default=data_check.DEFAULT_MAX_HOLE_MINUTES,
        help=f"超过此分钟数的缺口判为不合格，退出码 2（默认 {data_check.DEFAULT_MAX_HOLE_MINUTES}）",
    )
    parser.add_argument("--details", help="把每个交易日每个时段的缺失分钟写到此 CSV 文件 / per-session counts to CSV")


def add_download_parser(commands: Subparsers) -> None:
    """`download`: bars through vnpy's datafeed."""
    parser = commands.add_parser("download", help="从 vnpy 数据服务下载K线 / download bars through vnpy's datafeed")
    add_symbol_range(parser, "rb2405.SHFE")
    parser.add_argument("--interval", default="1m", help="K线周期 1m / 1h / d（默认 1m）")


def add_continuous_parser(commands: Subparsers) -> None:
    """`continuous`: the product's main-contract series stitched from its delivery months."""
    parser = commands.add_parser(
        "continuous", help="由各月合约K线拼接主力连续（复权）/ build the product's main-contract series (rb888)"
    )
    parser.add_argument("--product", required=True, help="品种代码，例如 rb（库中需有 rb2605 等各月合约K线）")
    parser.add_argument(
        "--adjust",
        required=True,
        choices=contracts.ADJUSTMENTS,
        help="复权：ratio 等比（训练用，保留收益率）、difference 等差、none 不复权（真实价格）",
    )
    parser.add_argument("--exchange", help="交易所，例如 SHFE（默认取库中该品种合约所在的交易所）")
    parser.add_argument("--interval", default="1m", help="K线周期（默认 1m）")


def add_audit_parser(commands: Subparsers) -> None:
    """`audit`: the look-ahead audit of cleaning, features and labels."""
    parser = commands.add_parser(
        "audit", help="前视偏差审计：清洗、特征与标签是否用到未来数据 / look-ahead audit of cleaning, features, labels"
    )
    add_symbol_range(parser)
    parser.add_argument("--interval", default="1m", help="K线周期 1m / 1h / d（默认 1m）")
    parser.add_argument(
        "--horizon", type=_positive_int, help="标签的预测周期（K线根数）；默认取模型设置 model.prediction_horizon"
    )
    parser.add_argument("--cuts", type=_positive_int, default=25, help="切点数量（默认 25）/ number of cut points")
    parser.add_argument(
        "--label",
        choices=list(data_processor.LABEL_KINDS),
        default=data_processor.DEFAULT_LABEL_KIND,
        help="标签类型（默认 executable：下一根开盘价进出）/ label kind",
    )
    add_feature_set(parser)


def add_train_parser(commands: Subparsers) -> None:
    """`train` (mode 3): one bundle, several horizons, or a walk-forward."""
    parser = commands.add_parser("train", help="模型训练（模式 3）/ train a price-prediction model (mode 3)")
    add_symbol_range(parser)
    parser.add_argument("--interval", default="1m", help="K线周期（默认 1m）")
    parser.add_argument(
        "--model-type",
        choices=("lstm", "random_forest"),
        help="lstm 或 random_forest（默认取模型设置 model.model_type）",
    )
    parser.add_argument("--name", type=_bundle_name, help="模型包名称，保存在 <home>/models/NAME（默认 代码_类型）")
    parser.add_argument("--epochs", type=_positive_int, help="最多训练轮数（默认取模型设置；有早停）")
    parser.add_argument(
        "--walk-forward",
        type=_positive_int,
        default=1,
        help="滚动训练的折数 N：每折在一段上训练、在下一段上测试（默认 1）",
    )
    parser.add_argument(
        "--horizon",
        type=_horizons,
        help="预测周期（K线根数，默认取模型设置 model.prediction_horizon）；逗号分隔多个时各训练一个模型，"
        "保留验证期模拟净盈亏最好的一个，例如 5,30,120",
    )
    add_allow_gaps(parser)
    parser.add_argument(
        "--label",
        choices=tuple(data_processor.LABEL_KINDS),
        default=data_processor.DEFAULT_LABEL_KIND,
        help="标签：executable（下一根开盘成交、持有 h 根后开盘平仓的收益，默认）、close（收盘到收盘，仅作对比）"
        "或 classify（扣除往返成本后涨 / 跌 / 都不是，模型输出 P(涨) − P(跌)）",
    )
    add_feature_set(parser)


def add_model_parser(commands: Subparsers) -> None:
    """`model`: check and show a bundle."""
    parser = commands.add_parser("model", help="检查并显示模型包 / check and show a model bundle")
    parser.add_argument("--model", required=True, help="模型包路径或名称（<home>/models/NAME）")


def add_backtest_parser(commands: Subparsers) -> None:
    """`backtest` (mode 2): the shared backtest options, the report folder and the data check."""
    parser = commands.add_parser("backtest", help="策略回测（模式 2）/ backtest the predictive strategy (mode 2)")
    add_backtest_arguments(parser)
    parser.add_argument("--report-dir", help="报告目录（默认 <home>/reports/模型_开始_结束）/ where the report goes")
    add_allow_gaps(parser)


def add_optimize_parser(commands: Subparsers) -> None:
    """`optimize`: the backtest options, the parameter grid, the search and its backend."""
    parser = commands.add_parser("optimize", help="参数优化：网格/遗传算法，可滚动 / optimise strategy settings")
    add_backtest_arguments(parser)
    parser.add_argument(
        "--param",
        action="append",
        required=True,
        type=_grid_param,
        metavar="NAME=START:END:STEP",
        help="待优化参数及其网格，可重复，例如 prediction_threshold=0.0005:0.002:0.0005",
    )
    parser.add_argument(
        "--target",
        default="sharpe_ratio",
        help="优化目标（vnpy 统计项，默认 sharpe_ratio；如 total_net_pnl、return_drawdown_ratio）",
    )
    parser.add_argument("--method", choices=("grid", "ga"), default="grid", help="grid 穷举（默认）或 ga 遗传算法")
    parser.add_argument(
        "--walk-forward",
        type=_positive_int,
        default=0,
        help="滚动优化的折数 N：在一段上优化、在下一段上检验，只报告样本外结果（默认 0 关闭）",
    )
    parser.add_argument("--workers", type=_positive_int, help="进程数（默认全部 CPU 核）")
    add_backend_arguments(parser)
    parser.add_argument("--report-dir", help="结果目录（默认 <home>/reports/optimize_模型_开始_结束）")


def add_research_parser(commands: Subparsers) -> None:
    """`research`: the years, models, horizons, labels and feature sets of the research table."""
    parser = commands.add_parser(
        "research",
        help="研究表：逐年滚动训练并回测各模型、周期与标签，对比 vnpy 经典策略与买入持有 / the research table",
    )
    parser.add_argument("--vt-symbol", required=True, help="合约，例如 rb0000.SHFE")
    parser.add_argument(
        "--test-years", required=True, help="测试年份，逗号分隔或区间，例如 2015,2016 或 2014-2016 / test years"
    )
    parser.add_argument(
        "--train-years",
        type=_positive_int,
        default=2,
        help="每个测试年之前用于训练（含验证）的自然年数（默认 2）/ training years before each test year",
    )
    parser.add_argument(
        "--models", default="random_forest,lstm", help="模型类型，逗号分隔（默认 random_forest,lstm）/ model types"
    )
    parser.add_argument(
        "--horizons", type=_horizons, help="预测周期（K线根数），逗号分隔，例如 5,30,120（默认取模型设置）"
    )
    parser.add_argument(
        "--labels",
        default=data_processor.DEFAULT_LABEL_KIND,
        help=f"标签类型，逗号分隔：{' / '.join(data_processor.LABEL_KINDS)}"
        f"（默认 {data_processor.DEFAULT_LABEL_KIND}）/ label kinds",
    )
    parser.add_argument(
        "--feature-sets",
        default=bar_features.DEFAULT_FEATURE_SET,
        help=f"特征集，逗号分隔：{' / '.join(bar_features.FEATURE_SETS)}"
        f"（默认 {bar_features.DEFAULT_FEATURE_SET}；mtf = base + 5/15/60 分钟与日线聚合）/ feature sets",
    )
    parser.add_argument(
        "--classics",
        default="all",
        help="vnpy 经典策略（默认参数）：all（默认）、none 或名称列表，例如 DualThrust,BollChannel "
        "/ classic strategies",
    )
    parser.add_argument("--trees", type=_positive_int, help="随机森林的树数（默认 60）/ trees of the forest")
    parser.add_argument("--epochs", type=_positive_int, help="LSTM 最多训练轮数（默认 3）/ LSTM epochs")
    parser.add_argument("--interval", default="1m", help="K线周期（默认 1m）")
    parser.add_argument(
        "--capital", type=_positive_float, default=DEFAULT_CAPITAL, help=f"初始资金（默认 {DEFAULT_CAPITAL:,.0f}）"
    )
    parser.add_argument("--workers", type=_positive_int, help="进程数（默认全部 CPU 核）/ worker processes")
    add_backend_arguments(parser)
    parser.add_argument(
        "--report-dir", help="研究目录（默认 <home>/reports/research_合约；模型包缓存在其 bundles/ 下）"
    )


def add_trade_parser(commands: Subparsers) -> None:
    """`trade` (mode 1): the gateway, the strategy overrides and the replay of the simulated exchange."""
    parser = commands.add_parser(
        "trade",
        help="实盘/仿真交易（模式 1）：CTP，或用历史数据回放的模拟交易所 / trade live or on the simulator",
        description="选项优先于主目录 settings/，再优先于项目 settings/，最后是默认值 / "
        "command line > <home>/settings > settings/ > defaults",
    )
    parser.add_argument(
        "--gateway",
        choices=("ctp", "sim"),
        default="ctp",
        help="ctp：SimNow 或实盘（settings/broker.json）；sim：本地回放历史数据的模拟交易所",
    )
    parser.add_argument("--no-ui", action="store_true", help="不开图形界面（服务器）；Ctrl-C / SIGTERM 正常停止")
    parser.add_argument("--strategy", help=f"settings/{STRATEGIES_FILE} 中的策略名（只有一个时可省略）")
    parser.add_argument("--vt-symbol", help="覆盖策略的合约，例如 rb2605.SHFE")
    parser.add_argument("--model", help="覆盖策略的模型包路径或名称")
    parser.add_argument("--threshold", type=_positive_float, help="覆盖开仓阈值")
    parser.add_argument(
        "--capital",
        type=_positive_float,
        help="策略资金（风控基数；模拟交易所的初始资金），覆盖策略设置的 capital（默认 1,000,000）",
    )
    parser.add_argument("--td-address", help="交易前置，覆盖 settings/broker.json，例如 tcp://182.254.243.31:30001")
    parser.add_argument("--md-address", help="行情前置，覆盖 settings/broker.json")
    parser.add_argument(
        "--connect-timeout",
        type=_positive_float,
        help="登录与合约查询的超时秒数（默认 settings/broker.json 的 connect_timeout_seconds，30）",
    )
    parser.add_argument(
        "--adopt-broker-position",
        action="store_true",
        help="策略记录的持仓与券商不一致时，以券商持仓为准并开始交易（须先人工核对）",
    )
    parser.add_argument(
        "--replay-start",
        help="sim：回放开始 YYYY-MM-DD，或 YYYY-MM-DD HH:MM（中国时间，从该分钟的K线续放被中断的回放）",
    )
    parser.add_argument("--replay-end", help="sim：回放结束日期 YYYY-MM-DD（含当日）")
    parser.add_argument("--speed", default="max", help="sim：回放速度 max（尽快）或倍速 N（1 为实时），默认 max")
    parser.add_argument("--replay-mode", choices=("bar", "tick"), default="bar", help="sim：回放K线或 tick（默认 bar）")
    parser.add_argument("--replay-csv", help="sim：从 CSV 回放，而不是数据库")
    parser.add_argument(
        "--warmup-days",
        type=_positive_int,
        help="策略开始前载入的历史天数（sim：回放开始前提供的历史），覆盖策略设置的 warmup_days（默认 10）",
    )
    parser.add_argument("--screenshot", help="打开界面、载入策略后保存主窗口截图到此文件并退出 / save a screenshot")
    parser.add_argument(
        "--roll",
        choices=tuple(ROLL_MODES),
        help="主力连续代码（如 rb888.SHFE）的换月方式，覆盖策略设置的 roll：open 开盘平旧开新（默认）、"
        "flat 空仓时才换、alert 只提醒 / how a strategy on a continuous symbol rolls",
    )


def add_contracts_parser(commands: Subparsers) -> None:
    """`contracts`: a product's contracts from CTP or the simulated exchange."""
    parser = commands.add_parser(
        "contracts",
        help="列出品种的在市合约（成交量、持仓量）并标出主力合约 / list a product's contracts and its main one",
    )
    parser.add_argument("--product", required=True, help="品种代码，例如 rb、TA、IF / the product")
    parser.add_argument(
        "--gateway",
        choices=("ctp", "sim"),
        default="ctp",
        help="ctp：SimNow 或实盘（settings/broker.json）；sim：数据库中该品种各合约的K线（模拟交易所）",
    )
    parser.add_argument("--replay-start", help="sim：看这一天开盘前的快照（前一交易日收盘）YYYY-MM-DD")
    parser.add_argument("--replay-end", help="sim：回放结束日期（默认 --replay-start 后 14 天，跨过节假日）")
    parser.add_argument("--td-address", help="ctp：交易前置，覆盖 settings/broker.json")
    parser.add_argument("--md-address", help="ctp：行情前置，覆盖 settings/broker.json")
    parser.add_argument("--connect-timeout", type=_positive_float, help="ctp：登录与合约查询的超时秒数")


def add_state_parser(commands: Subparsers) -> None:
    """`state`: show or clear the strategies' saved live state."""
    parser = commands.add_parser(
        "state",
        help="查看或清除策略的实盘状态（风控账本、熔断、移动止损）/ show or clear a strategy's saved live state",
    )
    parser.add_argument("--strategy", help="策略名（查看时默认全部）/ the strategy")
    parser.add_argument(
        "--gateway",
        choices=("ctp", "sim"),
        default="ctp",
        help="ctp：实盘与 SimNow 的状态（默认）；sim：模拟交易所回放的状态与模拟账户",
    )
    parser.add_argument(
        "--clear",
        action="store_true",
        help="删除状态（先停止交易进程并核对券商持仓）：下次启动时账本为空、不再熔断、持仓以券商为准；"
        "ctp 须同时给 --strategy，sim 不给则清除整个模拟账户",
    )


def add_control_parser(commands: Subparsers) -> None:
    """`control`: a command to the running trade process."""
    parser = commands.add_parser(
        "control",
        help="控制运行中的策略：暂停/恢复开仓、平仓、切换模型 / control a running strategy",
        description="命令经主目录下的 control/ 文件夹送达运行中的 trade 进程（每秒读取），每个操作写入审计日志 / "
        "commands reach the running trade process through <home>/control/, each one audited",
    )
    parser.add_argument("--strategy", help=f"settings/{STRATEGIES_FILE} 中的策略名（只有一个时可省略）")
    parser.add_argument(
        "action",
        choices=("halt", "resume", "flatten", "switch-model"),
        help="halt：暂停开仓（只平不开）；resume：恢复开仓；flatten：立即平仓并暂停开仓；switch-model：下一根K线切换模型",
    )
    parser.add_argument("bundle", nargs="?", help="switch-model：新模型包的路径或名称（同一品种、同一套特征）")
    parser.add_argument(
        "--wait", type=_positive_float, default=15.0, help="等待运行中进程回复的秒数（默认 15）/ seconds to wait"
    )


def add_secrets_parser(commands: Subparsers) -> None:
    """`secrets`: store or list the encrypted secrets."""
    parser = commands.add_parser("secrets", help="加密保存 CTP / SMTP 密钥 / store secrets encrypted")
    parser.add_argument(
        "action", choices=("set", "list"), help="set：保存一个密钥（从终端读入，不回显）；list：列出已保存的名称"
    )
    parser.add_argument("name", nargs="?", choices=tuple(SECRET_ENV), help="密钥名")


def add_demo_parser(commands: Subparsers) -> None:
    """`demo`: the main job on the sample data."""
    parser = commands.add_parser(
        "demo", help="主流程：导入示例数据、训练随机森林与 LSTM、回测 2016 年并写报告 / the main job"
    )
    parser.add_argument(
        "--csv", default=str(SAMPLE_BARS_CSV), help="示例K线文件（默认 ../shared/data 中的螺纹钢 1 分钟线）"
    )
