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
from datetime import date, timedelta
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

import cli_output
import data_check
import data_collector
import data_processor
import live_trading
import ml_model
from cli_parser import BACKTEST_DEFAULTS, BacktestOptions, backtest_options, build_parser
from config import (
    DEFAULT_CAPITAL,
    EXIT_BAD_INPUT,
    EXIT_BUG,
    EXIT_OK,
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
    Secrets,
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
from contracts import continuous_symbol, split_symbol

if TYPE_CHECKING:  # imported in the commands, after vnpy is bound to the home
    from backtesting_module import BacktestingModule

logger = logging.getLogger("ai_trading_system")  # not __name__: run as a script, that would be "__main__"

Handler = Callable[[argparse.Namespace, Home], int]


def _stderr_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def resolve_bundle(home: Home, text: str) -> Path:
    """`--model` as a bundle folder path, else a name under <home>/models."""
    return ml_model.find_bundle(text, home.models_dir)


# --- market data: import, data, download, continuous, audit ------------------------------------


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
    cli_output.print_import(result)
    return EXIT_OK


def cmd_data(args: argparse.Namespace, home: Home) -> int:
    """List what the database holds, or with --check count one series' bars against the trading calendar."""
    if args.check:
        return cmd_data_check(args, home)
    series = data_collector.list_stored(home)
    print(f"数据库 / database: {data_collector.describe_database(home)}")
    if not series:
        print("数据库为空。导入数据：python ai_trading_system.py import --csv FILE --vt-symbol rb0000.SHFE")
        return EXIT_OK
    cli_output.print_stored(series)
    return EXIT_OK


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
    cli_output.print_data_check(report)
    if args.details:
        frame = pd.DataFrame([row.row() for row in report.sessions], columns=list(data_check.SESSION_COLUMNS))
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


def cmd_continuous(args: argparse.Namespace, home: Home) -> int:
    """Build and store the product's main-contract series and its roll table; print the table."""
    result = data_collector.build_continuous_series(
        args.product, args.adjust, args.exchange, args.interval, home=home, progress=_stderr_progress
    )
    cli_output.print_continuous(result, args.interval)
    return EXIT_OK


def cmd_audit(args: argparse.Namespace, home: Home) -> int:
    """Prove that cleaning, features and labels use no future bars (GUIDE §4); exit 1 when any column leaks."""
    horizon = args.horizon if args.horizon is not None else settings_for(home).model.prediction_horizon
    vt_symbol = args.vt_symbol
    _stderr_progress(f"读取K线 / loading bars: {vt_symbol} {args.interval} {args.start} ~ {args.end}")
    frame = data_collector.load_history_data(vt_symbol, args.start, args.end, args.interval, home=home)
    # rb888: the roll table's junctions, as train
    frame, _ = data_collector.mark_contracts(frame, vt_symbol, args.interval, home, _stderr_progress)
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

    cli_output.print_audit(result, len(cuts))
    return EXIT_LEAK if result.leaking_columns else EXIT_OK


# --- models: train, model ----------------------------------------------------------------------


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
    extra = {
        "data_check": data_check.check_before_use(bars, args.vt_symbol, args.allow_gaps, _stderr_progress).summary()
    }
    bars, extra["price_adjustment"] = data_collector.mark_contracts(
        bars, args.vt_symbol, args.interval, home, _stderr_progress
    )
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
        cli_output.print_horizon_search(decisions, model.config.horizon)
        cli_output.print_test_part(model)
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
        cli_output.print_test_part(model)
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
    cli_output.print_walk_forward(folds)
    print(f"当前模型（最后一折）/ current bundle (last fold): {home.models_dir / name}")
    return EXIT_OK


def cmd_model(args: argparse.Namespace, home: Home) -> int:
    """Load a bundle with every check a load applies (seal, files, features, window, horizon, label kind, versions),
    then show what it is and how it scored."""
    model = ml_model.PricePredictionModel().load_model(resolve_bundle(home, args.model))
    cli_output.print_model(model)
    return EXIT_OK


# --- backtests: backtest, optimize, research, demo ---------------------------------------------


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
        data_check.check_before_use(traded, vt_symbol, allow_gaps, _stderr_progress)
    return data_collector.real_contract_prices(bars, vt_symbol, interval, backtests.home, _stderr_progress)


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
        junctions=data_collector.continuous_junctions(vt_symbol, options.interval, home),
    )
    files = backtesting_module.write_report(result, folder)
    cli_output.print_backtest_summary(result.statistics, backtesting_module.in_sample_note(result.in_sample))
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


def report_folder(args: argparse.Namespace, home: Home, prefix: str = "") -> Path:
    """--report-dir, else <home>/reports/[prefix]MODEL_START_END."""
    if args.report_dir:
        return Path(args.report_dir)
    return home.reports_dir / f"{prefix}{Path(args.model).name}_{args.start}_{args.end}"


def cmd_backtest(args: argparse.Namespace, home: Home) -> int:
    """Mode 2: backtest the predictive strategy with a bundle and write the report."""
    folder = report_folder(args, home)
    options = backtest_options(args)
    run_and_report(home, args.vt_symbol, args.start, args.end, args.model, options, folder, args.allow_gaps)
    return EXIT_OK


def connect_backend(args: argparse.Namespace) -> None:
    """Connect to Ray when `--backend ray` asks for it (a ConfigError, exit 2, when Ray is missing)."""
    if args.ray_address and args.backend != "ray":
        raise ConfigError("--ray-address 需要 --backend ray / --ray-address needs --backend ray")
    if args.backend == "ray":
        import cluster

        cluster.connect(args.ray_address)


def cmd_optimize(args: argparse.Namespace, home: Home) -> int:
    """Grid or genetic search of strategy settings on all cores; walk-forward reports out-of-sample results only."""
    data_collector.refuse_adjusted_prices(args.vt_symbol, args.interval, home, "optimize")
    bind_vnpy_for_backtest(home)
    import backtesting_module

    options = backtest_options(args)
    grid = dict(args.param)
    folder = report_folder(args, home, "optimize_")
    backtests = backtesting_module.BacktestingModule(home)
    optimizer = backtesting_module.Optimizer(backtests, args.workers, args.backend)
    optimizer.check_method(args.method)  # before connecting and preparing the job
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
        cli_output.print_in_sample(note)
        cli_output.print_frame(table)
        print(f"样本外结果 / out-of-sample results: {path}")
        return EXIT_OK
    found = optimizer.search(job, grid, args.method, output=_stderr_progress)
    path = write_csv_atomic(found.table, folder / "results.csv")
    cli_output.print_in_sample(note)
    cli_output.print_frame(found.table.head(10))
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
    data_collector.refuse_adjusted_prices(args.vt_symbol, args.interval, home, "research")
    folder = Path(args.report_dir) if args.report_dir else research.default_folder(home, args.vt_symbol)
    bind_vnpy_for_backtest(home)
    connect_backend(args)
    runner = research.run_specs_ray if args.backend == "ray" else None
    found = research.run_research(home, plan, folder, args.workers, progress=_stderr_progress, runner=runner)
    headers, rows = research.summary_rows(found.table)
    print()
    cli_output.print_table(rows, headers)
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


def cmd_demo(args: argparse.Namespace, home: Home) -> int:
    """The main job: import the sample, train a RandomForest and a small LSTM on 2014-2015, backtest both on 2016."""
    result = data_collector.import_csv(
        args.csv, SAMPLE_VT_SYMBOL, timestamp="end", home=home, progress=_stderr_progress
    )
    cli_output.print_import(result)
    settings = settings_for(home)
    bars = data_collector.load_history_data(SAMPLE_VT_SYMBOL, *DEMO_TRAIN, home=home)
    extra = {"data_check": data_check.check_before_use(bars, SAMPLE_VT_SYMBOL, False, _stderr_progress).summary()}
    spec = contract_spec(SAMPLE_VT_SYMBOL, load_contracts(settings_dirs(home)))
    summaries: dict[str, dict[str, Any]] = {}
    for name, overrides in DEMO_MODELS.items():
        config = ml_model.ModelConfig.from_settings(settings.model, **overrides)
        print(f"\n== 训练 / training {name} ({config.model_type}) on {DEMO_TRAIN[0]} ~ {DEMO_TRAIN[1]} ==")
        model = ml_model.train_bundle(
            bars, SAMPLE_VT_SYMBOL, "1m", config, home.models_dir / name, extra, _stderr_progress, spec=spec
        )
        cli_output.print_test_part(model)
        print(f"\n== 回测 / backtest {name} on {DEMO_TEST[0]} ~ {DEMO_TEST[1]} ==")
        summaries[name] = run_and_report(
            home, SAMPLE_VT_SYMBOL, *DEMO_TEST, name, BACKTEST_DEFAULTS, home.reports_dir / name
        )
    cli_output.print_demo_summary(summaries)
    print(f"模型 / bundles: {home.models_dir}\n报告 / reports: {home.reports_dir}")
    return EXIT_OK


# --- live trading (mode 1) ---------------------------------------------------------------------


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


def broker_settings(args: argparse.Namespace, settings: AppSettings) -> BrokerSettings:
    """broker.json as settings_for merged it (environment included), under the command line's --td-address,
    --md-address and --connect-timeout."""
    return BrokerSettings(**layered(asdict(settings.broker), command_line_layer(args, "broker")))


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
    return TradeOptions(strategy, broker_settings(args, settings))


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


def prepare_live(home: Home) -> tuple[AppSettings, Secrets]:
    """What a command that connects a gateway does first: the settings and secrets, log redaction of the secrets,
    and vnpy bound to the home before anything imports vnpy's engines (GUIDE §6)."""
    settings = settings_for(home)
    secrets = load_secrets(home)
    install_redaction()
    bind_vnpy_home(home, settings.database)
    return settings, secrets


def cmd_trade(args: argparse.Namespace, home: Home) -> int:
    """Mode 1: trade live through CTP, or rehearse the whole live path on the simulated exchange."""
    settings, secrets = prepare_live(home)
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
    cli_output.print_trade_summary(system, config)
    return EXIT_OK


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
    settings, secrets = prepare_live(home)
    broker = broker_settings(args, settings)
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
    cli_output.print_contract_days(continuous, args.product, days, main)
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
    cli_output.print_states(folder, states)
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
        cli_output.print_table(rows, ("名称 / name", "环境变量 / variable", "状态 / state"))
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


# what modes 3, 2 and 1 (sim) ask: (option, question, default), in order; the answers become the options
TRAINING_QUESTIONS: tuple[tuple[str, str, str], ...] = (
    ("--vt-symbol", "合约 / vt_symbol", SAMPLE_VT_SYMBOL),
    ("--start", "开始日期 / start", "2015-01-01"),
    ("--end", "结束日期 / end", "2016-06-30"),
    ("--model-type", "模型类型 / model type (lstm | random_forest)", "lstm"),
)
BACKTEST_QUESTIONS: tuple[tuple[str, str, str], ...] = (
    ("--vt-symbol", "合约 / vt_symbol", SAMPLE_VT_SYMBOL),
    ("--start", "开始日期 / start", "2016-01-01"),
    ("--end", "结束日期 / end", "2016-12-31"),
    ("--model", "模型包 / model bundle (models/NAME)", "demo_rf"),
)
REPLAY_QUESTIONS: tuple[tuple[str, str, str], ...] = (
    ("--replay-start", "回放开始 / replay start (YYYY-MM-DD [HH:MM])", "2016-06-01"),
    ("--replay-end", "回放结束 / replay end", "2016-06-10"),
    ("--speed", "速度 / speed (max | 倍速 N)", "60"),
    ("--model", "模型包 / model bundle (models/NAME)", "demo_rf"),
)


def _answers(input_fn: Callable[[str], str], questions: Sequence[tuple[str, str, str]]) -> tuple[str, ...]:
    """Each question's option followed by its answer, asked in order."""
    return tuple(
        part for option, question, default in questions for part in (option, _ask(input_fn, question, default))
    )


def ask_training(input_fn: Callable[[str], str]) -> tuple[str, ...]:
    """Mode 3's questions; the answers become the `train` subcommand's options."""
    return ("train", *_answers(input_fn, TRAINING_QUESTIONS))


def ask_backtest(input_fn: Callable[[str], str]) -> tuple[str, ...]:
    """Mode 2's questions; the answers become the `backtest` subcommand's options."""
    return ("backtest", *_answers(input_fn, BACKTEST_QUESTIONS))


def ask_trading(input_fn: Callable[[str], str]) -> tuple[str, ...]:
    """Mode 1's questions: the simulated exchange (replaying history) or CTP (SimNow or live, settings/broker.json)."""
    gateway = _ask(input_fn, "网关 / gateway (sim 历史回放模拟 | ctp SimNow或实盘)", "sim")
    if gateway != "sim":
        return ("trade", "--gateway", gateway)
    return ("trade", "--gateway", "sim", *_answers(input_fn, REPLAY_QUESTIONS))


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
