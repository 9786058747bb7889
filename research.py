"""The research table: every model, horizon and label kind trained walk-forward and backtested year by year, beside
vnpy's classic CTA strategies and buy-and-hold on the same bars and costs."""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import importlib
import io
import json
import math
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

import bar_features
import data_collector
import data_processor
import ml_model
from config import (
    DEFAULT_CAPITAL,
    FEATURE_CODE_FILES,
    HOME_ENV,
    PROJECT_DIR,
    ConfigError,
    ContractSpec,
    DataError,
    Home,
    ModelError,
    atomic_path,
    bind_vnpy_home,
    file_sha256,
    json_safe,
    resolve_home,
    settings_for,
    write_csv_atomic,
    write_json_atomic,
    write_text_atomic,
)
from trade_simulator import EDGE_NONE

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# vnpy_ctastrategy's sample strategies, run with their default parameters
CLASSICS: dict[str, str] = {
    "AtrRsiStrategy": "vnpy_ctastrategy.strategies.atr_rsi_strategy",
    "BollChannelStrategy": "vnpy_ctastrategy.strategies.boll_channel_strategy",
    "DoubleMaStrategy": "vnpy_ctastrategy.strategies.double_ma_strategy",
    "DualThrustStrategy": "vnpy_ctastrategy.strategies.dual_thrust_strategy",
    "KingKeltnerStrategy": "vnpy_ctastrategy.strategies.king_keltner_strategy",
    "TurtleSignalStrategy": "vnpy_ctastrategy.strategies.turtle_signal_strategy",
}
# The bars preloaded before a test year: the samples ask for 10 days of history, TurtleSignal for 20, and the engine
# hands each strategy exactly the days it asks for, so preloading more changes no result.
PRELOAD_DAYS: int = 30
MODEL = "model"
CLASSIC = "classic"
REFERENCE = "reference"
SELECTED = "selected"  # a row chosen year by year before the test year (ai_selected, classic_selected)
KINDS: tuple[str, ...] = (SELECTED, MODEL, CLASSIC, REFERENCE)  # the table's kinds, in its order
CLASSIC_TRAINING = "classic_training"  # a classic backtested on a test year's training years, to choose among them
RUN_KINDS: tuple[str, ...] = (MODEL, CLASSIC, CLASSIC_TRAINING, REFERENCE)
AI_SELECTED = "ai_selected"
CLASSIC_SELECTED = "classic_selected"
BUY_AND_HOLD = "buy_and_hold"
MEAN_YEAR = "mean"
FILES: tuple[str, ...] = ("research.csv", "research.json", "research.html")
IC_SOURCE = (
    "ic / rank_ic: the model's predictions on the test year's bars against its own label (kind and horizon) on "
    "those bars, cleaned; not the bundle's test part, which lies inside the training years"
)
COLUMNS: tuple[str, ...] = tuple(
    "strategy kind year model_type horizon label features net_pnl return_pct sharpe max_ddpercent trades costs "
    "long_entries short_entries ic rank_ic edge threshold bundle top_features valid_pnl valid_trades chosen "
    "choice_score".split()
)
TOP_FEATURES: int = 8  # a model row's most used features (validation permutation importance), largest first
DIGITS: dict[str, int] = {"net_pnl": 2, "return_pct": 4, "sharpe": 4, "max_ddpercent": 4, "costs": 2, "ic": 6}
DIGITS.update({"rank_ic": 6, "threshold": 8, "trades": 2, "long_entries": 2, "short_entries": 2})  # counts: mean rows
DIGITS.update({"valid_pnl": 2, "valid_trades": 2, "choice_score": 4})
NOT_AVERAGED: frozenset[str] = frozenset({"threshold", "choice_score"})  # a mean row leaves these empty
# how long a run takes relative to a classic backtest, for the estimate of the time left
RUN_WEIGHTS: dict[str, float] = {"lstm": 40.0, "random_forest": 20.0, CLASSIC: 1.0, CLASSIC_TRAINING: 2.0}
RUN_WEIGHTS[REFERENCE] = 0.1
FIRST_YEAR, LAST_YEAR = 1990, 2100


# --- the plan --------------------------------------------------------------------------------------------------


def _items(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_years(text: str) -> tuple[int, ...]:
    """`2015,2016` (or `2014-2016`) as sorted distinct years."""
    years: set[int] = set()
    try:
        for part in _items(text):
            first, _, last = part.partition("-")
            span = range(int(first), int(last or first) + 1)
            if not span:
                raise ValueError
            years.update(span)
    except ValueError:
        years = set()
    if not years or min(years) < FIRST_YEAR or max(years) > LAST_YEAR:
        raise ConfigError(
            f"测试年份 {text!r} 无效：应为逗号分隔的年份（{FIRST_YEAR}-{LAST_YEAR}），例如 2015,2016 或 2014-2016 / "
            "bad test years: give comma-separated years such as 2015,2016"
        )
    return tuple(sorted(years))


def parse_models(text: str) -> tuple[str, ...]:
    """`random_forest,lstm` as distinct model types in the given order."""
    models = tuple(dict.fromkeys(_items(text)))
    unknown = [name for name in models if name not in ml_model.MODEL_FILES]
    if not models or unknown:
        raise ConfigError(
            f"模型类型 {text!r} 无效，可用：{', '.join(ml_model.MODEL_FILES)} / unknown model type {unknown or text!r}"
        )
    return models


def parse_labels(text: str) -> tuple[str, ...]:
    """`executable,close` as distinct label kinds."""
    labels = tuple(dict.fromkeys(_items(text)))
    unknown = [name for name in labels if name not in data_processor.LABEL_KINDS]
    if not labels or unknown:
        raise ConfigError(f"标签类型 {text!r} 无效，可用：{', '.join(data_processor.LABEL_KINDS)} / unknown label kind")
    return labels


def parse_feature_sets(text: str) -> tuple[str, ...]:
    """`base,mtf` as distinct feature sets."""
    sets = tuple(dict.fromkeys(_items(text)))
    unknown = [name for name in sets if name not in bar_features.FEATURE_SETS]
    if not sets or unknown:
        raise ConfigError(f"特征集 {text!r} 无效，可用：{', '.join(bar_features.FEATURE_SETS)} / unknown feature set")
    return sets


def parse_classics(text: str) -> tuple[str, ...]:
    """`all`, `none` or names such as `DualThrust,BollChannelStrategy` (case and the Strategy suffix optional)."""
    if text.strip().lower() == "all":
        return tuple(CLASSICS)
    if text.strip().lower() == "none":
        return ()
    known = {name.lower().removesuffix("strategy"): name for name in CLASSICS}
    chosen, unknown = [], []
    for part in _items(text):
        name = known.get(part.lower().removesuffix("strategy"))
        if name is None:
            unknown.append(part)
        elif name not in chosen:
            chosen.append(name)
    if unknown or not chosen:
        raise ConfigError(
            f"经典策略 {unknown or text!r} 未知，可用：all、none 或 {', '.join(CLASSICS)} / unknown classic strategy"
        )
    return tuple(sorted(chosen))


@dataclass(frozen=True)
class ResearchPlan:
    """What one research runs: test years, training years before each, models × horizons × labels, classics."""

    vt_symbol: str
    test_years: tuple[int, ...]
    train_years: int = 2
    models: tuple[str, ...] = ("random_forest", "lstm")
    horizons: tuple[int, ...] = ()  # empty: settings/model.json's prediction_horizon
    labels: tuple[str, ...] = (data_processor.DEFAULT_LABEL_KIND,)
    classics: tuple[str, ...] = tuple(CLASSICS)
    interval: str = "1m"
    capital: float = DEFAULT_CAPITAL
    trees: int | None = None  # None: ml_model.SMALL_MODELS
    epochs: int | None = None
    feature_sets: tuple[str, ...] = (bar_features.DEFAULT_FEATURE_SET,)

    def __post_init__(self) -> None:
        data_collector.parse_vt_symbol(self.vt_symbol)
        data_collector.parse_interval(self.interval)
        if not self.test_years or self.train_years < 1:
            raise ConfigError("至少一个测试年，训练年数 ≥ 1 / one test year and one training year at least")
        if any(h < 1 for h in self.horizons) or not self.capital > 0:
            raise ConfigError("预测周期与资金必须为正 / horizons and capital must be positive")
        parse_models(",".join(self.models))
        parse_labels(",".join(self.labels))
        parse_feature_sets(",".join(self.feature_sets))
        for name in self.classics:
            if name not in CLASSICS:
                raise ConfigError(f"经典策略 {name!r} 未知 / unknown classic strategy")

    def model_configs(self, settings: ml_model.ModelSettings, n_jobs: int) -> list[tuple[ml_model.ModelConfig, str]]:
        """Every (model config, label kind) the plan trains for each test year, in table order."""
        horizons = self.horizons or (settings.prediction_horizon,)
        runs = []
        for model_type in sorted(self.models):
            given = {"trees": self.trees, "epochs": self.epochs}
            overrides = {**ml_model.SMALL_MODELS[model_type], **{k: v for k, v in given.items() if v is not None}}
            base = ml_model.ModelConfig.from_settings(settings, model_type=model_type, **overrides)
            for label in sorted(self.labels):
                for feature_set in sorted(self.feature_sets):
                    for horizon in sorted(set(horizons)):
                        config = replace(base, horizon=horizon, n_jobs=n_jobs, feature_set=feature_set)
                        runs.append((config, label))
        return runs


def model_name(config: ml_model.ModelConfig, label: str) -> str:
    """A model row's strategy name, e.g. random_forest_h5_executable (base features) or ..._executable_mtf."""
    suffix = "" if config.feature_set == bar_features.DEFAULT_FEATURE_SET else f"_{config.feature_set}"
    return f"{config.model_type}_h{config.horizon}_{label}{suffix}"


# --- the runs ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    """One row of the table to compute; self-contained (paths, not objects), so any worker process can run it."""

    kind: str  # model | classic | reference
    name: str  # the row's strategy name
    year: int
    vt_symbol: str
    interval: str
    home: str  # the home's root folder
    bars_path: str  # the pickled bars every run reads (write_bars)
    folder: str  # the research folder: bundles go under its bundles/
    capital: float = DEFAULT_CAPITAL
    train_years: int = 0
    config: ml_model.ModelConfig | None = None
    label: str = data_processor.DEFAULT_LABEL_KIND
    verbose: bool = True  # step lines on stderr

    @property
    def weight(self) -> float:
        """The run's expected cost relative to one classic backtest."""
        return RUN_WEIGHTS.get(self.config.model_type if self.config else self.kind, 1.0)


@dataclass(frozen=True)
class RunResult:
    """A run's row of the table, how long it took, and whether its bundle came from the cache."""

    row: dict[str, Any]
    seconds: float
    cached: bool = False


def year_start(year: int) -> datetime:
    return data_collector.to_china_time(date(year, 1, 1))


def year_end(year: int) -> datetime:
    return data_collector.to_china_time(date(year, 12, 31), end_of_day=True)


def training_bars(bars: pd.DataFrame, year: int, train_years: int) -> pd.DataFrame:
    """The bars of the `train_years` calendar years before `year`."""
    index = bars.index
    return bars.loc[(index >= pd.Timestamp(year_start(year - train_years))) & (index < pd.Timestamp(year_start(year)))]


def backtest_bars(
    bars: pd.DataFrame, year: int, preload_days: int = PRELOAD_DAYS, last_year: int | None = None
) -> pd.DataFrame:
    """The bars of `year` (through `last_year` if given), after the days before it that strategies warm up on."""
    index = bars.index
    first = pd.Timestamp(year_start(year) - timedelta(days=preload_days))
    return bars.loc[(index >= first) & (index <= pd.Timestamp(year_end(last_year or year)))]


def backtest_years(spec: RunSpec) -> tuple[int, int]:
    """The first and last year a classic run backtests: its test year, or for a training run the `train_years`
    years before it (the years the models of that test year are trained on)."""
    if spec.kind == CLASSIC_TRAINING:
        return spec.year - spec.train_years, spec.year - 1
    return spec.year, spec.year


@functools.lru_cache(maxsize=2)
def read_bars(path: str) -> pd.DataFrame:
    """The research's bars, read once per process; callers must not modify them."""
    frame: pd.DataFrame = pd.read_pickle(path)
    return frame


def write_bars(bars: pd.DataFrame, folder: Path) -> Path:
    """The bars every run reads, written once (as the optimiser writes its job): workers never query the database."""
    path = folder / "work" / "bars.pkl"
    with atomic_path(path) as temp:
        bars.to_pickle(temp)
    return path


def _say(spec: RunSpec, text: str) -> None:
    if spec.verbose:
        print(f"[{spec.year} {spec.name}] {text}", file=sys.stderr, flush=True)


def bundle_key(
    train: pd.DataFrame, config: ml_model.ModelConfig, label: str, vt_symbol: str, interval: str, spec: ContractSpec
) -> str:
    """Fingerprint of what a bundle is trained from: bars, configuration (threads aside), label, product, costs and
    the code that prepares, trains and decides; the same key means the same bundle, so it is trained once."""
    digest = hashlib.sha256()
    digest.update(np.asarray(pd.DatetimeIndex(train.index).as_unit("us").asi8).tobytes())
    digest.update(np.ascontiguousarray(train[list(bar_features.OHLCV)].to_numpy(dtype="float64")).tobytes())
    shape = {k: v for k, v in asdict(config).items() if k != "n_jobs"}
    facts = {"config": shape, "label": label, "vt_symbol": vt_symbol, "interval": interval, "spec": asdict(spec)}
    digest.update(json.dumps(facts, sort_keys=True, default=str).encode())
    for path in (*FEATURE_CODE_FILES, PROJECT_DIR / "trade_simulator.py"):
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def cached_bundle(path: Path, key: str, vt_symbol: str, interval: str) -> bool:
    """Whether `path` holds a sound bundle trained for `key`."""
    if not path.is_dir():
        return False
    try:
        model = ml_model.PricePredictionModel().load_model(path, vt_symbol=vt_symbol, interval=interval)
    except ModelError:
        return False
    return bool((model.metadata.get("research") or {}).get("key") == key)


def statistics_row(statistics: dict[str, Any]) -> dict[str, Any]:
    """The table's figures from vnpy's statistics (plus long / short entries)."""
    return {
        "net_pnl": float(statistics.get("total_net_pnl") or 0.0),
        "return_pct": float(statistics.get("total_return") or 0.0),
        "sharpe": float(statistics.get("sharpe_ratio") or 0.0),
        "max_ddpercent": float(statistics.get("max_ddpercent") or 0.0),
        "trades": int(statistics.get("total_trade_count") or 0),
        "costs": float(statistics.get("total_commission") or 0.0) + float(statistics.get("total_slippage") or 0.0),
        "long_entries": int(statistics.get("long_entries") or 0),
        "short_entries": int(statistics.get("short_entries") or 0),
    }


def year_ic(
    predictions: pd.Series,
    frame: pd.DataFrame,
    vt_symbol: str,
    horizon: int,
    label: str,
    spec: ContractSpec | None = None,
) -> dict[str, float]:
    """IC and rank IC of the predictions against the label they were trained for, on the same (cleaned) bars
    (`spec`: the contract whose costs the classify label uses)."""
    cleaned, _ = data_processor.clean_data(frame.copy(), vt_symbol)
    labels = data_processor.make_labels(cleaned, horizon, label, spec).reindex(predictions.index).to_numpy()
    values = predictions.to_numpy(dtype="float64")
    both = np.isfinite(values) & np.isfinite(labels)
    scores = ml_model.score(values[both], labels[both]) if both.sum() > 1 else {"ic": math.nan, "rank_ic": math.nan}
    return {"ic": scores["ic"], "rank_ic": scores["rank_ic"]}


def run_model(spec: RunSpec, bars: pd.DataFrame) -> tuple[dict[str, Any], bool]:
    """Train on the years before (unless the bundle is cached), then backtest the test year with run_backtest."""
    import backtesting_module

    config = spec.config
    if config is None:
        raise ModelError("模型运行缺少配置 / a model run needs its configuration")
    home = resolve_home(spec.home)
    module = backtesting_module.BacktestingModule(home)
    contract = module.contract(spec.vt_symbol)
    train = training_bars(bars, spec.year, spec.train_years)
    if train.empty:
        raise DataError(
            f"{spec.vt_symbol} 在 {spec.year} 之前的 {spec.train_years} 年没有K线，无法训练 / no bars to train on"
        )
    key = bundle_key(train, config, spec.label, spec.vt_symbol, spec.interval, contract)
    path = Path(spec.folder) / "bundles" / f"{spec.year}_{spec.name}_{key[:12]}"
    cached = cached_bundle(path, key, spec.vt_symbol, spec.interval)
    if cached:
        _say(spec, f"使用已训练的模型包 / cached bundle {path.name}")
    else:
        first, last = train.index[0], train.index[-1]
        _say(spec, f"训练 / training on {first:%Y-%m-%d} ~ {last:%Y-%m-%d} ({len(train):,} bars)")
        extra = {"research": {"key": key, "test_year": spec.year, "train_years": spec.train_years}}
        ml_model.train_bundle(
            train.copy(),
            spec.vt_symbol,
            spec.interval,
            config,
            path,
            extra=extra,
            progress=functools.partial(_say, spec) if spec.verbose else None,
            label_kind=spec.label,
            spec=contract,
        )
    _say(spec, f"回测 / backtest {spec.year}")
    frame = backtest_bars(bars, spec.year)
    result = module.run_backtest(
        spec.vt_symbol,
        year_start(spec.year),
        year_end(spec.year),
        path,
        interval=spec.interval,
        capital=spec.capital,
        bars=frame,
    )
    metadata = ml_model.read_metadata(path)
    row = {
        "model_type": config.model_type,
        "horizon": config.horizon,
        "label": spec.label,
        "features": config.feature_set,
        **statistics_row(result.statistics),
        **year_ic(result.predictions, frame, spec.vt_symbol, config.horizon, spec.label, contract),
        "edge": str(result.statistics.get("edge") or ""),
        "threshold": float(metadata["threshold"]),
        "bundle": f"bundles/{path.name}",
        "top_features": ml_model.top_features(metadata["importance"], TOP_FEATURES),
        **validation_figures(metadata),
    }
    return row, cached


def validation_figures(metadata: dict[str, Any]) -> dict[str, Any]:
    """The bundle's validation simulation at its chosen threshold (net P&L and fills), what ai_selected ranks by."""
    decision = metadata.get("decision") or {}
    pnl, trades = decision.get("net_pnl"), decision.get("trades")
    return {
        "valid_pnl": float(pnl) if pnl is not None else None,
        "valid_trades": int(trades) if trades is not None else None,
    }


def classic_class(name: str) -> type:
    """A vnpy_ctastrategy sample strategy class by name."""
    strategy: type = getattr(importlib.import_module(CLASSICS[name]), name)
    return strategy


def run_classic(spec: RunSpec, bars: pd.DataFrame) -> dict[str, Any]:
    """A sample strategy with its default parameters on the test year (a training run: on the training years before
    it), through the engine run_backtest uses."""
    import backtesting_module

    module = backtesting_module.BacktestingModule(resolve_home(spec.home))
    costs = module.costs(spec.vt_symbol, spec.capital)
    first, last = backtest_years(spec)
    frame = backtest_bars(bars, first, last_year=last)
    engine = backtesting_module.PreloadedBacktestingEngine(
        data_collector.frame_to_bars(frame, spec.vt_symbol, data_collector.parse_interval(spec.interval))
    )
    backtesting_module.set_engine_parameters(
        engine, spec.vt_symbol, spec.interval, year_start(first), year_end(last), costs
    )
    engine.add_strategy(classic_class(spec.name), {})
    _say(spec, f"回测 / backtest {first}" + (f"-{last}（训练年 / training years）" if last != first else ""))
    backtesting_module.replay(engine)
    engine.calculate_result()
    statistics = dict(json_safe(engine.calculate_statistics(output=False)))
    statistics.update(backtesting_module.entries(list(engine.trades.values())))
    return statistics_row(statistics)


def run_reference(spec: RunSpec, bars: pd.DataFrame) -> dict[str, Any]:
    """Buy-and-hold of one lot over the test year, scored by vnpy's own statistics on its daily balance."""
    import backtesting_module

    module = backtesting_module.BacktestingModule(resolve_home(spec.home))
    costs = module.costs(spec.vt_symbol, spec.capital)
    traded = backtest_bars(bars, spec.year, preload_days=0)
    if traded.empty:
        raise DataError(f"{spec.vt_symbol} 在 {spec.year} 年没有K线 / no bars in the test year")
    volume = 1.0
    balance = backtesting_module.buy_and_hold(
        traded, spec.capital, costs["size"], volume, costs["fees"], costs["slippage"]
    )
    entry = float(traded["close"].iloc[0]) + costs["slippage"]  # as buy_and_hold enters
    first = np.zeros(len(balance))
    first[0] = 1.0
    daily = pd.DataFrame(
        {
            "net_pnl": np.diff(balance.to_numpy(dtype="float64"), prepend=spec.capital),
            "commission": first * costs["fees"].open_fee(entry, volume, costs["size"]),
            "slippage": first * costs["slippage"] * volume * costs["size"],
            "turnover": first * entry * volume * costs["size"],
            "trade_count": first,
        },
        index=[stamp.date() for stamp in pd.DatetimeIndex(balance.index)],
    )
    engine = backtesting_module.PreloadedBacktestingEngine([])
    engine.capital = spec.capital
    statistics = dict(json_safe(engine.calculate_statistics(daily, output=False)))
    statistics.update({"long_entries": 1, "short_entries": 0})
    return statistics_row(statistics)


def run_one(spec: RunSpec, bars: pd.DataFrame | None = None) -> RunResult:
    """Compute one row of the table (in whichever process runs it), on `bars` or those at the spec's bars_path."""
    if spec.kind not in RUN_KINDS:
        raise ConfigError(f"未知的运行类型 {spec.kind!r} / unknown run kind")
    began = time.monotonic()
    bars = read_bars(spec.bars_path) if bars is None else bars
    cached = False
    if spec.kind == MODEL:
        figures, cached = run_model(spec, bars)
    else:
        figures = (run_reference if spec.kind == REFERENCE else run_classic)(spec, bars)
    row: dict[str, Any] = {column: None for column in COLUMNS}
    row.update({"strategy": spec.name, "kind": spec.kind, "year": spec.year, "edge": "", "bundle": ""})
    row.update(figures)
    return RunResult(row, time.monotonic() - began, cached)


def run_indexed(item: tuple[int, RunSpec]) -> tuple[int, RunResult]:
    """`run_one` keeping the spec's place, for results that arrive out of order."""
    return item[0], run_one(item[1])


def start_worker(home: str) -> None:
    """A worker process binds vnpy to the research's home before anything imports vnpy's engine."""
    bound = resolve_home(home)
    bind_vnpy_home(bound, settings_for(bound).database)


Done = Callable[[int, RunResult], None]
Runner = Callable[[Sequence[RunSpec], Done], list[RunResult]]


def run_specs(specs: Sequence[RunSpec], done: Done | None = None, workers: int = 1) -> list[RunResult]:
    """Every run, on `workers` spawned processes (1: this process), results in the order of `specs`; `done(i, result)`
    as each finishes. The same call is all a distributed backend (Ray) has to offer."""
    notify = done or (lambda index, result: None)
    if workers <= 1 or len(specs) <= 1:
        results = []
        for index, spec in enumerate(specs):
            results.append(run_one(spec))
            notify(index, results[-1])
        return results
    found: dict[int, RunResult] = {}
    order = sorted(range(len(specs)), key=lambda i: -specs[i].weight)  # the longest first keeps every worker busy
    context = multiprocessing.get_context("spawn")  # as vnpy's optimisation: no fork of a process holding threads
    # a Pool, not a ProcessPoolExecutor: leaving the block on an error or Ctrl-C terminates the workers, where an
    # executor would let them run every queued training first
    with context.Pool(min(workers, len(specs)), initializer=start_worker, initargs=(specs[0].home,)) as pool:
        for index, result in pool.imap_unordered(run_indexed, [(i, specs[i]) for i in order]):
            found[index] = result  # a run's exception is raised here
            notify(index, result)
    return [found[index] for index in range(len(specs))]


def run_with_bars(bars: pd.DataFrame, spec: RunSpec) -> RunResult:
    """`run_one` in cluster.ray_map's argument order."""
    return run_one(spec, bars)


def bound_bars(home: str, bars: pd.DataFrame) -> pd.DataFrame:
    """A Ray worker's preparation of the research's bars: bind vnpy to the home first (start_worker)."""
    start_worker(home)
    return bars


def run_specs_ray(specs: Sequence[RunSpec], done: Done | None = None) -> list[RunResult]:
    """`run_specs` on Ray (cluster.ray_map): the bars in the object store once, each run a task, the longest first.
    The home and the research folder (bundles) must be the same path on every machine (a shared file system); the
    runs go to workers of their own for the home, since a process binds vnpy to one home for good."""
    import cluster

    home = specs[0].home
    order = sorted(range(len(specs)), key=lambda i: -specs[i].weight)
    setup = functools.partial(bound_bars, home)
    bars = read_bars(specs[0].bars_path)
    return cluster.ray_map(run_with_bars, bars, specs, done, setup, order, {HOME_ENV: home})


class ProgressReport:
    """A line per finished run with the time spent and an estimate of the time left (by the runs' weights)."""

    def __init__(self, specs: Sequence[RunSpec], say: Callable[[str], None]) -> None:
        self.specs = list(specs)
        self.say = say
        self.total = sum(spec.weight for spec in specs)
        self.finished = 0.0
        self.count = 0
        self.began = time.monotonic()

    def __call__(self, index: int, result: RunResult) -> None:
        spec = self.specs[index]
        self.count += 1
        self.finished += spec.weight
        elapsed = time.monotonic() - self.began
        left = elapsed / self.finished * (self.total - self.finished) if self.finished else math.nan
        row = result.row
        figures = f"net P&L {row['net_pnl']:,.0f}, Sharpe {row['sharpe']:.2f}, trades {row['trades']}"
        if spec.kind == CLASSIC_TRAINING:
            figures += f", 训练年 / training years {spec.year - spec.train_years}-{spec.year - 1}"
        if row.get("edge"):
            figures += f", edge {row['edge']}"
        self.say(
            f"[{self.count}/{len(self.specs)}] {spec.year} {spec.name}: {figures} "
            f"({result.seconds:.1f} s{', 缓存 / cached' if result.cached else ''}); "
            f"已用 / elapsed {elapsed:.0f} s，预计剩余 / about {left:.0f} s left"
        )


def plan_runs(plan: ResearchPlan, home: Home, bars_path: Path, folder: Path, n_jobs: int) -> list[RunSpec]:
    """The runs of a plan, in table order: models, classics, buy-and-hold; year by year within each."""
    settings = settings_for(home).model
    base = RunSpec(
        kind=REFERENCE,
        name=BUY_AND_HOLD,
        year=0,
        vt_symbol=plan.vt_symbol,
        interval=plan.interval,
        home=str(home.root),
        bars_path=str(bars_path),
        folder=str(folder),
        capital=plan.capital,
        train_years=plan.train_years,
    )
    specs = []
    for config, label in plan.model_configs(settings, n_jobs):
        for year in plan.test_years:
            specs.append(
                replace(base, kind=MODEL, name=model_name(config, label), year=year, config=config, label=label)
            )
    for name in plan.classics:
        specs.extend(replace(base, kind=CLASSIC, name=name, year=year) for year in plan.test_years)
    for name in plan.classics:
        specs.extend(replace(base, kind=CLASSIC_TRAINING, name=name, year=year) for year in plan.test_years)
    specs.extend(replace(base, year=year) for year in plan.test_years)
    return specs


# --- the table ---------------------------------------------------------------------------------------------------


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    """Figures rounded to the table's digits (NaN kept as None), so every file shows the same numbers."""
    out = dict(row)
    for column, digits in DIGITS.items():
        value = out.get(column)
        if isinstance(value, float):  # numpy's rounding, as vnpy's figures are usually quoted (8421.615 -> 8421.62)
            out[column] = float(np.round(value, digits)) if math.isfinite(value) else None
    return out


def edge_summary(edges: Sequence[str]) -> str:
    """The mean row's verdict: the one all years share, else how many years had an edge."""
    if not any(edges):
        return ""
    if len(set(edges)) == 1:
        return edges[0]
    positive = sum(1 for edge in edges if edge and edge != "none")
    return f"mixed: {positive}/{len(edges)} positive"


def mean_row(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A strategy's mean over its years: figures averaged (NaN-aware), descriptions kept."""
    first = rows[0]
    mean = {column: first.get(column) for column in ("strategy", "kind", "model_type", "horizon", "label", "features")}
    mean.update({"year": MEAN_YEAR, "bundle": ""})
    for column in DIGITS:
        if column in NOT_AVERAGED:
            continue
        values = np.array([np.nan if r.get(column) is None else float(r[column]) for r in rows], dtype="float64")
        mean[column] = float(np.mean(values[np.isfinite(values)])) if np.isfinite(values).any() else None
    mean["edge"] = edge_summary([str(r.get("edge") or "") for r in rows])
    mean["top_features"] = common_features([r.get("top_features") or [] for r in rows])
    if any(r.get("chosen") is not None for r in rows):
        mean["chosen"] = "; ".join(f"{r['year']}: {r.get('chosen') or '-'}" for r in rows)
    return {column: mean.get(column) for column in COLUMNS}


def common_features(tops: Sequence[Sequence[str]], count: int = TOP_FEATURES) -> list[str] | None:
    """The mean row's top features: those in most years' lists, then by their best place in any year (None for a
    strategy without them)."""
    if not any(tops):
        return None
    years: dict[str, int] = {}
    place: dict[str, int] = {}
    for top in tops:
        for k, name in enumerate(top):
            years[name] = years.get(name, 0) + 1
            place[name] = min(place.get(name, k), k)
    return sorted(years, key=lambda name: (-years[name], place[name], name))[:count]


def _order(row: dict[str, Any]) -> tuple[Any, ...]:
    return (
        KINDS.index(row["kind"]),
        row.get("model_type") or "",
        row.get("label") or "",
        row.get("features") or "",
        row.get("horizon") or 0,
        row["strategy"],
    )


def build_table(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Year rows sorted (models, classics, reference; then by name and year), each strategy followed by its mean."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in sorted(rows, key=lambda r: (*_order(r), r["year"])):
        groups.setdefault(row["strategy"], []).append({column: row.get(column) for column in COLUMNS})
    table: list[dict[str, Any]] = []
    for group in groups.values():
        table.extend(_rounded(row) for row in group)
        table.append(_rounded(mean_row(group)))
    return table


def best_of(table: Sequence[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    """The mean row of `kind` with the highest mean Sharpe (the first by name on a tie)."""
    means = [row for row in table if row["kind"] == kind and row["year"] == MEAN_YEAR and row["sharpe"] is not None]
    return max(means, key=lambda row: row["sharpe"]) if means else None


def mean_of(table: Sequence[dict[str, Any]], strategy: str) -> dict[str, Any] | None:
    """A strategy's mean row (None when the table has none or its Sharpe is empty)."""
    means = [row for row in table if row["strategy"] == strategy and row["year"] == MEAN_YEAR]
    return means[0] if means and means[0]["sharpe"] is not None else None


def verdict(table: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The issue's goal, honestly: the AI chosen on validation against the classic chosen on the training years
    (both ex ante, mean Sharpe); beside them the best rows after the fact, which carry selection bias."""
    model, classic = best_of(table, MODEL), best_of(table, CLASSIC)
    ai, rule = mean_of(table, AI_SELECTED), mean_of(table, CLASSIC_SELECTED)
    return {
        "ai_selected_sharpe": ai["sharpe"] if ai else None,
        "classic_selected_sharpe": rule["sharpe"] if rule else None,
        "ai_selected_chosen": ai["chosen"] if ai else None,
        "classic_selected_chosen": rule["chosen"] if rule else None,
        "selected_ahead": bool(ai and rule and ai["sharpe"] > rule["sharpe"]),
        "best_model": model["strategy"] if model else None,
        "best_model_sharpe": model["sharpe"] if model else None,
        "best_classic": classic["strategy"] if classic else None,
        "best_classic_sharpe": classic["sharpe"] if classic else None,
        "model_ahead": bool(model and classic and model["sharpe"] > classic["sharpe"]),
    }


# --- choosing before each test year ----------------------------------------------------------------------------

FIGURE_COLUMNS: tuple[str, ...] = tuple(
    "net_pnl return_pct sharpe max_ddpercent trades costs long_entries short_entries".split()
)
CHOSEN_COLUMNS: tuple[str, ...] = (*FIGURE_COLUMNS, *"ic rank_ic edge threshold bundle valid_pnl valid_trades".split())
NO_TRADES: dict[str, Any] = {column: 0 if column.endswith(("trades", "entries")) else 0.0 for column in FIGURE_COLUMNS}
AI_RULE = (
    "ai_selected: for each test year, among its model rows with an edge, the one whose validation simulation "
    "(inside the training years, at the bundle's threshold) earned the largest net P&L; a tie goes to the first "
    "name; no trades when no row has an edge"
)
CLASSIC_RULE = (
    "classic_selected: for each test year, the classic with the largest Sharpe ratio backtested on that year's "
    "training years (default parameters, same bars and costs); a tie goes to the first name"
)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def ai_pick(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Among one test year's model rows, the one whose validation simulation earned the most net P&L; rows with
    edge none (they do not trade) or without a validation figure cannot be chosen; a tie goes to the first name."""
    eligible = [
        row
        for row in rows
        if row.get("kind") == MODEL and row.get("edge") not in (EDGE_NONE, "", None) and _finite(row.get("valid_pnl"))
    ]
    return min(eligible, key=lambda row: (-float(row["valid_pnl"]), row["strategy"])) if eligible else None


def classic_pick(scores: dict[str, float]) -> str | None:
    """The classic with the largest Sharpe over a test year's training years (a tie: the first name)."""
    finite = {name: float(score) for name, score in scores.items() if _finite(score)}
    return min(finite, key=lambda name: (-finite[name], name)) if finite else None


def selected_row(strategy: str, year: int, chosen: dict[str, Any] | None, score: float | None) -> dict[str, Any]:
    """A selected year row: the chosen row's figures and name, or no trades when nothing could be chosen."""
    row: dict[str, Any] = {column: None for column in COLUMNS}
    row.update({"strategy": strategy, "kind": SELECTED, "year": year, "edge": "", "bundle": ""})
    if chosen is None:
        row.update({**NO_TRADES, "edge": EDGE_NONE, "chosen": ""})
    else:
        row.update({column: chosen.get(column) for column in CHOSEN_COLUMNS})
        row.update({"chosen": chosen["strategy"], "choice_score": score})
    return row


def _candidate(row: dict[str, Any], columns: Sequence[str]) -> dict[str, Any]:
    return {column: _rounded({column: row.get(column)})[column] for column in columns}


def selected_rows(
    rows: Sequence[dict[str, Any]], training: Sequence[dict[str, Any]]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The ai_selected and classic_selected year rows (from the test years' model and classic rows and the classics'
    training-years rows), and per test year the candidates each rule saw and what it chose."""
    years = sorted({int(row["year"]) for row in rows if row["kind"] in (MODEL, CLASSIC)})
    chosen: list[dict[str, Any]] = []
    record: dict[str, Any] = {}
    for year in years:
        entry: dict[str, Any] = {}
        models = sorted((row for row in rows if row["kind"] == MODEL and row["year"] == year), key=_order)
        if models:
            pick = ai_pick(models)
            chosen.append(selected_row(AI_SELECTED, year, pick, pick["valid_pnl"] if pick else None))
            columns = ("edge", "valid_pnl", "valid_trades")
            entry[AI_SELECTED] = {
                "chosen": pick["strategy"] if pick else None,
                "candidates": {row["strategy"]: _candidate(row, columns) for row in models},
            }
        scores = {row["strategy"]: row for row in training if row["year"] == year}
        if scores:
            name = classic_pick({strategy: row["sharpe"] for strategy, row in sorted(scores.items())})
            tested = {row["strategy"]: row for row in rows if row["kind"] == CLASSIC and row["year"] == year}
            score = scores[name]["sharpe"] if name else None
            chosen.append(selected_row(CLASSIC_SELECTED, year, tested[name] if name else None, score))
            columns = ("sharpe", "net_pnl", "trades")
            entry[CLASSIC_SELECTED] = {
                "chosen": name,
                "candidates": {strategy: _candidate(row, columns) for strategy, row in sorted(scores.items())},
            }
        record[str(year)] = entry
    return chosen, record


HEADERS: tuple[tuple[str, str], ...] = (
    ("strategy", "策略 / strategy"),
    ("kind", "类别 / kind"),
    ("year", "年 / year"),
    ("net_pnl", "净盈亏 / net P&L"),
    ("return_pct", "收益率 / return %"),
    ("sharpe", "夏普 / Sharpe"),
    ("max_ddpercent", "最大回撤 / max DD %"),
    ("trades", "成交 / trades"),
    ("costs", "手续费+滑点 / costs"),
    ("long_entries", "开多 / long"),
    ("short_entries", "开空 / short"),
    ("ic", "IC"),
    ("rank_ic", "rank IC"),
    ("edge", "edge"),
)
HTML_HEADERS: tuple[tuple[str, str], ...] = (
    *HEADERS,
    ("chosen", "选中 / chosen"),
    ("choice_score", "选择依据 / chosen by"),
    ("valid_pnl", "验证期净盈亏 / validation P&L"),
    ("features", "特征集 / features"),
    ("top_features", "主要特征 / top features"),
)
FORMATS: dict[str, str] = {"net_pnl": "{:,.2f}", "return_pct": "{:.2f}", "sharpe": "{:.2f}", "max_ddpercent": "{:.2f}"}
FORMATS.update({"costs": "{:,.2f}", "ic": "{:.4f}", "rank_ic": "{:.4f}", "valid_pnl": "{:,.2f}"})
FORMATS.update({"choice_score": "{:,.4f}"})


def cell(column: str, value: Any) -> str:
    """One table cell as shown (counts of a mean row with one decimal)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if column in FORMATS:
        return FORMATS[column].format(value)
    if isinstance(value, float):
        return f"{value:,.0f}" if value.is_integer() else f"{value:,.1f}"
    if isinstance(value, int) and column != "year":
        return f"{value:,}"
    if column == "edge" and value == "none":
        return "none (no trades)"
    if column == "top_features":
        return ", ".join(value)
    return str(value)


def feature_list(names: Sequence[str] | None) -> str:
    """A row's top features as one cell ("" for none)."""
    return " ".join(names or ())


def summary_rows(
    table: Sequence[dict[str, Any]], headers: Sequence[tuple[str, str]] = HEADERS
) -> tuple[list[str], list[tuple[str, ...]]]:
    """The printed summary: headers and formatted cells."""
    titles = [title for _, title in headers]
    return titles, [tuple(cell(column, row.get(column)) for column, _ in headers) for row in table]


def verdict_line(found: dict[str, Any]) -> str:
    """The goal in one line: the AI chosen on validation against the classic chosen on the training years (mean
    Sharpe, both chosen before each test year), then the best rows after the fact, marked as such."""
    parts = []
    ai, rule = found.get("ai_selected_sharpe"), found.get("classic_selected_sharpe")
    if ai is not None and rule is not None:
        where = "高于 / above" if found["selected_ahead"] else "未超过 / not above"
        parts.append(
            f"事前选择 / chosen before each test year: AI（按验证期 / on validation）{AI_SELECTED} 平均夏普 / "
            f"mean Sharpe {ai:.2f} {where} 经典（按训练年 / on the training years）{CLASSIC_SELECTED} {rule:.2f} "
            f"(AI: {found.get('ai_selected_chosen')}; classic: {found.get('classic_selected_chosen')})"
        )
    if found["best_model"] is not None and found["best_classic"] is not None:
        where = "高于 / above" if found["model_ahead"] else "未超过 / not above"
        parts.append(
            f"事后最佳（看过测试年，有选择偏差）/ best after the fact (selection bias): "
            f"最佳模型 / best model {found['best_model']} 平均夏普 / mean Sharpe {found['best_model_sharpe']:.2f} "
            f"{where} 最佳经典策略 / best classic {found['best_classic']} {found['best_classic_sharpe']:.2f}"
        )
    return "；".join(parts)


# --- files ---------------------------------------------------------------------------------------------------------


def pnl_figure(table: Sequence[dict[str, Any]]) -> Figure:
    """Yearly net P&L per strategy: one horizontal bar per strategy and year (symmetric log scale: the classics'
    losses can be a hundred times the models' figures)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    rows = [row for row in table if row["year"] != MEAN_YEAR]
    strategies = list(dict.fromkeys(row["strategy"] for row in rows))
    years = sorted({int(row["year"]) for row in rows})
    height = 0.8 / max(len(years), 1)
    figure = Figure(
        figsize=(11, 1.2 + 0.45 * len(strategies) * max(len(years), 1) ** 0.5), dpi=100, layout="constrained"
    )
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    values = {(row["strategy"], int(row["year"])): float(row["net_pnl"] or 0.0) for row in rows}
    for k, year in enumerate(years):
        ys = [i + (k - (len(years) - 1) / 2) * height for i in range(len(strategies))]
        bars = ax.barh(ys, [values.get((name, year), 0.0) for name in strategies], height=height, label=str(year))
        ax.bar_label(bars, labels=[f"{values.get((name, year), 0.0):,.0f}" for name in strategies], fontsize=8)
    ax.set_yticks(range(len(strategies)), strategies)
    ax.invert_yaxis()
    ax.set_xscale("symlog", linthresh=10_000)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("net P&L per test year (symmetric log scale)")
    ax.set_title("Research table: yearly net P&L out of sample")
    ax.grid(axis="x", alpha=0.3)
    ax.margins(x=0.15)
    ax.legend(title="test year", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return figure


def figure_png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def research_html(table: Sequence[dict[str, Any]], facts: dict[str, Any], chart: bytes) -> str:
    """A self-contained page: what was run, the chart and the table (no timestamp: reruns give the same page)."""
    headers, rows = summary_rows(table, HTML_HEADERS)
    head = "".join(f"<th>{html.escape(title)}</th>" for title in headers)
    body = "\n".join(
        f"<tr class='{'mean' if row['year'] == MEAN_YEAR else row['kind']}'>"
        + "".join(f"<td>{html.escape(value)}</td>" for value in cells)
        + "</tr>"
        for row, cells in zip(table, rows, strict=True)
    )
    plan = facts["plan"]
    found = verdict_line(facts["verdict"])
    return f"""<!DOCTYPE html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>研究表 / research {html.escape(plan["vt_symbol"])}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
td:first-child, td:nth-child(2), td:last-child {{ text-align: left; }}
tr.mean {{ font-weight: bold; background: #f3f3f3; }}
tr.classic td:first-child {{ color: #225; }}
tr.selected {{ background: #eef5ff; }}
</style></head><body>
<h1>研究表 / research table: {html.escape(plan["vt_symbol"])}</h1>
<p>测试年 / test years {html.escape(", ".join(str(y) for y in plan["test_years"]))}; each trained on the
{plan["train_years"]} calendar year(s) before it (validation inside them, the threshold chosen there by simulating the
strategy with the contract's costs) and backtested on vnpy's BacktestingEngine out of sample. Classics: vnpy_ctastrategy
samples with default parameters on the same bars and costs; reference: buy and hold of one lot. Costs:
fees {html.escape(facts["costs"]["fees"])} (open, close, close-today; a number is a rate of turnover),
slippage {facts["costs"]["slippage"]} per side, size {facts["costs"]["size"]}.
{html.escape(facts["ic"])}. A model whose validation simulation found no edge (edge: none) does not trade.
Feature sets: base (the desk's 1-minute features), mtf (base plus 5-, 15-, 60-minute and daily aggregates computed
causally from the 1-minute bars). Top features: the bundle's validation permutation importance, largest first; a mean
row lists those in most years' lists. Label classify: up / down / neither beyond the round-trip cost, traded on the
score P(up) − P(down).</p>
<p>Chosen before each test year (kind selected): {html.escape(AI_RULE)} (chosen by: that validation net P&amp;L);
{html.escape(CLASSIC_RULE)} (chosen by: that Sharpe). The best model and classic rows by mean Sharpe are picked after
seeing the test years: selection bias on both sides.</p>
<p><b>{html.escape(found)}</b></p>
<img alt="yearly net P&amp;L" src="data:image/png;base64,{base64.b64encode(chart).decode("ascii")}">
<table><thead><tr>{head}</tr></thead><tbody>
{body}
</tbody></table>
</body></html>
"""


def write_table(table: Sequence[dict[str, Any]], facts: dict[str, Any], folder: Path) -> dict[str, Path]:
    """research.csv, research.json and research.html in `folder` (each written atomically)."""
    folder.mkdir(parents=True, exist_ok=True)
    flat = [{**row, "top_features": feature_list(row.get("top_features"))} for row in table]
    frame = pd.DataFrame(flat, columns=list(COLUMNS), dtype=object)
    paths = {
        "research.csv": write_csv_atomic(frame, folder / "research.csv"),
        "research.json": write_json_atomic(folder / "research.json", json_safe({**facts, "rows": list(table)})),
        "research.html": write_text_atomic(
            folder / "research.html", research_html(table, facts, figure_png(pnl_figure(table)))
        ),
    }
    return paths


# --- the research --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResearchResult:
    """The finished table (year rows and mean rows), what it was run with, and where the files are."""

    table: list[dict[str, Any]]
    facts: dict[str, Any]
    paths: dict[str, Path]


def default_folder(home: Home, vt_symbol: str) -> Path:
    """Where a product's research goes unless told: one folder per product, so reruns reuse its bundles."""
    return home.reports_dir / f"research_{vt_symbol}"


def load_research_bars(home: Home, plan: ResearchPlan) -> pd.DataFrame:
    """The bars from the first training year to the last test year, checked: every test year must have bars."""
    first, last = min(plan.test_years) - plan.train_years, max(plan.test_years)
    begin = date(first, 1, 1) - timedelta(days=PRELOAD_DAYS)  # the classics' training runs warm up before it
    bars = data_collector.load_history_data(plan.vt_symbol, begin, date(last, 12, 31), plan.interval, home)
    years = set(pd.DatetimeIndex(bars.index).year)
    missing = [year for year in plan.test_years if year not in years]
    untrained = [year for year in plan.test_years if not years & set(range(year - plan.train_years, year))]
    if missing or ((plan.models or plan.classics) and untrained):  # classics are chosen on the training years
        held = f"{bars.index[0]:%Y-%m-%d} ~ {bars.index[-1]:%Y-%m-%d}"
        raise DataError(
            f"{plan.vt_symbol} 的K线（{held}）不覆盖测试年 {missing or untrained}"
            f"{'' if missing else ' 之前的训练年'}；请换年份或先导入数据 / the stored bars do not cover "
            f"{'the test years' if missing else 'the training years before'} {missing or untrained}"
        )
    return bars


def run_research(
    home: Home,
    plan: ResearchPlan,
    folder: Path | None = None,
    workers: int | None = None,
    progress: Callable[[str], None] | None = None,
    runner: Runner | None = None,
) -> ResearchResult:
    """The whole research: load the bars once, run every model, classic and reference row (on `workers` processes,
    or through `runner`), and write research.csv, research.json and research.html. The caller binds vnpy to `home`
    first (ai_trading_system's bind_vnpy_for_backtest); worker processes bind themselves."""
    folder = folder or default_folder(home, plan.vt_symbol)
    workers = workers or os.cpu_count() or 1
    say = progress or (lambda message: None)
    say(f"读取K线 / loading bars: {plan.vt_symbol} {plan.interval} for {', '.join(map(str, plan.test_years))}")
    bars = load_research_bars(home, plan)
    bars_path = write_bars(bars, folder)
    n_jobs = max(1, (os.cpu_count() or 1) // workers)
    specs = plan_runs(plan, home, bars_path, folder, n_jobs)
    specs = [replace(spec, verbose=progress is not None) for spec in specs]
    say(f"共 {len(specs)} 个运行，{workers} 个进程 / {len(specs)} runs on {workers} worker(s)")
    report = ProgressReport(specs, say)
    try:
        results = (runner or functools.partial(run_specs, workers=workers))(specs, report)
    finally:
        shutil.rmtree(bars_path.parent, ignore_errors=True)
    rows = [result.row for result in results if result.row["kind"] != CLASSIC_TRAINING]
    training = [result.row for result in results if result.row["kind"] == CLASSIC_TRAINING]
    chosen, selection = selected_rows(rows, training)
    table = build_table([*rows, *chosen])
    backtests = home_costs(home, plan)
    facts = {
        "plan": {
            "vt_symbol": plan.vt_symbol,
            "interval": plan.interval,
            "test_years": list(plan.test_years),
            "train_years": plan.train_years,
            "models": sorted(plan.models),
            "horizons": sorted({spec.config.horizon for spec in specs if spec.config}),
            "labels": sorted(plan.labels),
            "feature_sets": sorted(plan.feature_sets),
            "classics": list(plan.classics),
            "capital": plan.capital,
        },
        "configs": {spec.name: _config_facts(spec.config) for spec in specs if spec.config},
        "costs": backtests,
        "ic": IC_SOURCE,
        "verdict": verdict(table),
        "selection": {"rules": [AI_RULE, CLASSIC_RULE], "years": selection},
        "columns": list(COLUMNS),
    }
    paths = write_table(table, facts, folder)
    return ResearchResult(table, facts, paths)


def _config_facts(config: ml_model.ModelConfig | None) -> dict[str, Any]:
    return {k: v for k, v in asdict(config).items() if k != "n_jobs"} if config else {}


def home_costs(home: Home, plan: ResearchPlan) -> dict[str, Any]:
    """The costs every backtest of the research used (the contract table's), as plain JSON values."""
    import backtesting_module

    costs = backtesting_module.BacktestingModule(home).costs(plan.vt_symbol, plan.capital)
    return {**costs, "fees": costs["fees"].text}
