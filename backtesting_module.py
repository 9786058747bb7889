"""Backtests on vnpy's BacktestingEngine with bars loaded once, and what they produce."""

from __future__ import annotations

import bisect
import functools
import hashlib
import logging
import math
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from vnpy.trader.constant import Direction, Interval
from vnpy.trader.object import BarData, TradeData
from vnpy_ctastrategy.backtesting import BacktestingEngine

import data_collector
import data_processor
from config import (
    FEATURE_CODE_FILES,
    ContractSpec,
    DataError,
    Home,
    contract_spec,
    load_contracts,
    settings_dirs,
)
from ml_model import PricePredictionModel, find_bundle
from predictive_trading_strategy import PrecomputedSignal, PredictiveTradingStrategy, batch_predictions

logger = logging.getLogger(__name__)

DEFAULT_CAPITAL: float = 1_000_000.0
WARMUP_DAYS: int = 10


class StrategyFailed(RuntimeError):
    """The strategy raised during the run; vnpy stops the replay and would return a partial result."""


class PreloadedBacktestingEngine(BacktestingEngine):
    """vnpy's BacktestingEngine fed from bars in memory: the run and the strategy's warm-up never read the database."""

    def __init__(self, bars: Sequence[BarData]) -> None:
        super().__init__()
        times = [bar.datetime for bar in bars]
        if any(later <= earlier for earlier, later in zip(times, times[1:], strict=False)):
            raise DataError("回测K线必须按时间严格递增 / backtest bars must be strictly increasing in time")
        self.preloaded = list(bars)
        self.times = times
        self.messages: list[str] = []

    def _between(self, start: datetime, end: datetime, include_end: bool) -> list[BarData]:
        first = bisect.bisect_left(self.times, start)
        last = bisect.bisect_right(self.times, end) if include_end else bisect.bisect_left(self.times, end)
        return self.preloaded[first:last]

    def load_data(self) -> None:
        """The bars from start to end (inclusive) out of memory."""
        if self.end is None or self.start >= self.end:
            raise DataError(f"回测起止时间无效：{self.start} ~ {self.end} / start must be before end")
        self.history_data = list(self._between(self.start, self.end, include_end=True))
        self.output(f"历史数据加载完成，数据量：{len(self.history_data)}")

    def load_bar(self, vt_symbol: str, days: int, interval: Interval, callback: Callable,
                 use_database: bool) -> list[BarData]:
        """The warm-up bars: the `days` calendar days before start."""
        self.callback = callback
        return self._between(self.start - timedelta(days=days), self.start, include_end=False)

    def output(self, msg: str) -> None:
        """Keep vnpy's messages (they carry a strategy's traceback) and log them instead of printing."""
        self.messages.append(msg)
        logger.debug("%s", msg)

    def failure(self) -> str | None:
        """The traceback vnpy caught during the replay, if any."""
        return next((msg for msg in self.messages if "Traceback (most recent call last)" in msg), None)


@dataclass
class BacktestResult:
    """One backtest: vnpy's daily results and statistics, the trades, and what the strategy saw."""

    vt_symbol: str
    start: datetime
    end: datetime
    setting: dict[str, Any]
    daily: pd.DataFrame
    statistics: dict[str, Any]
    trades: list[TradeData]
    bars: pd.DataFrame  # the traded range's bars (datetime index)
    predictions: pd.Series  # the prediction at each traded bar's close
    benchmark: pd.Series  # buy-and-hold balance at each day's close
    messages: list[str] = field(default_factory=list)


def json_safe(value: Any) -> Any:
    """Plain JSON: numpy scalars to Python numbers, dates to ISO text, NaN and inf to null."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def as_china_time(value: str | date | datetime, end_of_day: bool = False) -> datetime:
    """A start or end given as text, date or datetime, in China time."""
    return data_collector.to_china_time(value, end_of_day=end_of_day)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prediction_key(model: PricePredictionModel, frame: pd.DataFrame) -> str:
    """Fingerprint of model + bars + feature code: any change gives another cache entry."""
    digest = hashlib.sha256()
    digest.update(repr(sorted((model.metadata.get("files") or {}).items())).encode())
    digest.update(np.asarray(frame.index.as_unit("us").asi8).tobytes())
    digest.update(np.ascontiguousarray(frame[list(data_processor.OHLCV)].to_numpy(dtype="float64")).tobytes())
    for path in FEATURE_CODE_FILES:
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()[:32]


def cached_predictions(model: PricePredictionModel, frame: pd.DataFrame, vt_symbol: str,
                       cache_dir: Path | None) -> tuple[np.ndarray, bool]:
    """`batch_predictions` for the frame, read from or written to `cache_dir` (atomically); and whether it was a hit."""
    if cache_dir is None:
        return batch_predictions(model, frame, vt_symbol), False
    path = cache_dir / f"{prediction_key(model, frame)}.npy"
    if path.exists():
        cached = np.load(path, allow_pickle=False)
        if cached.shape == (len(frame),):
            return cached, True
    predictions = batch_predictions(model, frame, vt_symbol)
    cache_dir.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temp.open("wb") as handle:
            np.save(handle, predictions, allow_pickle=False)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return predictions, False


def buy_and_hold(bars: pd.DataFrame, capital: float, size: float, volume: float, rate: float,
                 slippage: float) -> pd.Series:
    """Balance at each day's last bar of holding `volume` lots bought at the first bar's close."""
    if bars.empty:
        return pd.Series(dtype="float64")
    close = bars["close"].to_numpy(dtype="float64")
    entry = close[0] + slippage
    cost = entry * volume * size * rate + slippage * volume * size
    balance = capital - cost + (close - entry) * volume * size
    days = data_processor.trading_days(pd.DatetimeIndex(bars.index))
    series = pd.Series(balance, index=pd.DatetimeIndex(days))
    return series.groupby(level=0).last()


class BacktestingModule:
    """Runs the predictive strategy on vnpy's BacktestingEngine for one home (its database, settings and cache)."""

    def __init__(self, home: Home) -> None:
        self.home = home
        self.contracts = load_contracts(settings_dirs(home))

    @property
    def cache_dir(self) -> Path:
        return self.home.root / "cache" / "predictions"

    def contract(self, vt_symbol: str) -> ContractSpec:
        return contract_spec(vt_symbol, self.contracts)

    def load_bars(self, vt_symbol: str, start: datetime, end: datetime, interval: str = "1m",
                  warmup_days: int = WARMUP_DAYS) -> pd.DataFrame:
        """The bars of the run plus the warm-up days before it, read once from the database."""
        return data_collector.load_history_data(vt_symbol, start - timedelta(days=warmup_days), end, interval,
                                                self.home)

    def run_backtest(
        self,
        vt_symbol: str,
        start: str | date | datetime,
        end: str | date | datetime,
        model_path: str | Path,
        setting: dict[str, Any] | None = None,
        interval: str = "1m",
        capital: float = DEFAULT_CAPITAL,
        rate: float | None = None,
        slippage: float | None = None,
        size: float | None = None,
        pricetick: float | None = None,
        bars: pd.DataFrame | None = None,
        use_cache: bool = True,
    ) -> BacktestResult:
        """Backtest the predictive strategy; costs default from the contract's facts in settings/contracts.json."""
        begin, finish = as_china_time(start), as_china_time(end, end_of_day=True)
        if begin >= finish:
            raise DataError(f"回测开始 {begin:%Y-%m-%d} 不早于结束 {finish:%Y-%m-%d} / start must be before end")
        spec = self.contract(vt_symbol)
        size = spec.size if size is None else size
        pricetick = spec.pricetick if pricetick is None else pricetick
        rate = spec.commission_rate if rate is None else rate
        slippage = spec.slippage_ticks * pricetick if slippage is None else slippage
        chosen = dict(setting or {})
        warmup_days = int(chosen.get("warmup_days", WARMUP_DAYS))
        if bars is None:
            bars = self.load_bars(vt_symbol, begin, finish, interval, warmup_days)
        bars = bars.loc[(bars.index >= pd.Timestamp(begin - timedelta(days=warmup_days)))
                        & (bars.index <= pd.Timestamp(finish))]
        traded = bars.loc[bars.index >= pd.Timestamp(begin)]
        if traded.empty:
            raise DataError(f"{vt_symbol} 在 {begin:%Y-%m-%d} ~ {finish:%Y-%m-%d} 没有K线 / no bars in the range")

        model = PricePredictionModel().load_model(find_bundle(str(model_path), self.home.models_dir))
        predictions, _ = cached_predictions(model, bars, vt_symbol, self.cache_dir if use_cache else None)
        chosen = {"model_path": str(model.path), "capital": capital, "commission_rate": rate,
                  "margin_rate": spec.margin_rate, "slippage_cost": slippage, **chosen}

        engine = PreloadedBacktestingEngine(data_collector.frame_to_bars(bars, vt_symbol,
                                                                         data_collector.parse_interval(interval)))
        engine.set_parameters(vt_symbol=vt_symbol, interval=data_collector.parse_interval(interval), start=begin,
                              end=finish, rate=rate, slippage=slippage, size=size, pricetick=pricetick,
                              capital=int(capital))
        engine.add_strategy(PredictiveTradingStrategy, chosen)
        engine.strategy.signal = PrecomputedSignal(model, pd.DatetimeIndex(bars.index), predictions)
        engine.load_data()
        engine.run_backtesting()
        failure = engine.failure()
        if failure is not None:
            logger.error("策略运行出错，回测中止 / the strategy raised, backtest aborted\n%s", failure)
            raise StrategyFailed(f"策略在回测中抛出异常，没有写出报告 / the strategy raised during the run:\n{failure}")
        daily = engine.calculate_result()
        statistics = json_safe(engine.calculate_statistics(output=False))
        volume = float(chosen.get("fixed_size", PredictiveTradingStrategy.fixed_size))
        benchmark = buy_and_hold(traded, capital, size, volume, rate, slippage)
        statistics["buy_and_hold_end_balance"] = float(benchmark.iloc[-1])
        statistics["buy_and_hold_return"] = float((benchmark.iloc[-1] / capital - 1) * 100)
        trades = sorted(engine.trades.values(), key=lambda t: (t.datetime, int(t.tradeid)))
        statistics["long_trades"] = sum(1 for t in trades if t.direction == Direction.LONG)
        statistics["short_trades"] = len(trades) - statistics["long_trades"]
        first = len(bars) - len(traded)
        return BacktestResult(
            vt_symbol=vt_symbol, start=begin, end=finish, setting=json_safe(chosen), daily=daily,
            statistics=statistics, trades=trades, bars=traded,
            predictions=pd.Series(predictions[first:], index=traded.index, name="prediction"),
            benchmark=benchmark, messages=engine.messages,
        )


# --- optimisation ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OptimizationJob:
    """What every optimisation worker needs, written once to disk: bars and predictions are never recomputed."""

    vt_symbol: str
    interval: str
    start: datetime
    end: datetime
    model_path: str
    bars: pd.DataFrame
    predictions: np.ndarray
    costs: dict[str, float]  # rate, slippage, size, pricetick, capital
    base_setting: dict[str, Any]
    target: str


@functools.lru_cache(maxsize=4)
def _worker_state(job_path: str) -> tuple[OptimizationJob, list[BarData], PricePredictionModel]:
    """One load per worker process of the job, its vnpy bars and the model (ONNX only: no TensorFlow)."""
    with open(job_path, "rb") as handle:
        job: OptimizationJob = pickle.load(handle)
    bars = data_collector.frame_to_bars(job.bars, job.vt_symbol, data_collector.parse_interval(job.interval))
    model = PricePredictionModel().load_model(job.model_path)
    return job, bars, model


def run_on_bars(job: OptimizationJob, bars: list[BarData], model: PricePredictionModel, setting: dict[str, Any],
                start: datetime, end: datetime) -> dict[str, Any]:
    """One backtest of the strategy on ready bars and predictions; JSON-safe statistics."""
    costs = job.costs
    engine = PreloadedBacktestingEngine(bars)
    interval = data_collector.parse_interval(job.interval)
    engine.set_parameters(vt_symbol=job.vt_symbol, interval=interval, start=start, end=end, rate=costs["rate"],
                          slippage=costs["slippage"], size=costs["size"], pricetick=costs["pricetick"],
                          capital=int(costs["capital"]))
    engine.add_strategy(PredictiveTradingStrategy, {**job.base_setting, **setting})
    engine.strategy.signal = PrecomputedSignal(model, pd.DatetimeIndex(job.bars.index), job.predictions)
    engine.load_data()
    engine.run_backtesting()
    failure = engine.failure()
    if failure is not None:
        raise StrategyFailed(f"策略在回测中抛出异常 / the strategy raised:\n{failure}")
    engine.calculate_result()
    return dict(json_safe(engine.calculate_statistics(output=False)))


def evaluate_setting(job_path: str, setting: dict[str, Any]) -> tuple[str, float, dict[str, Any]]:
    """vnpy's optimisation contract: (setting as text, target value, statistics) for one setting."""
    job, bars, model = _worker_state(job_path)
    statistics = run_on_bars(job, bars, model, setting, job.start, job.end)
    value = statistics.get(job.target)
    return str(setting), float(value) if value is not None else -math.inf, statistics


def _target_of(result: tuple[str, float, dict[str, Any]]) -> float:
    return result[1]


@dataclass
class OptimizationResult:
    """All settings tried, best first, and warnings such as a best value on the edge of the grid."""

    target: str
    table: pd.DataFrame
    best: dict[str, Any]
    warnings: list[str]


def grid_edges(best: dict[str, Any], grid: dict[str, list[float]]) -> list[str]:
    """A warning for every parameter whose best value is the smallest or largest of three or more tried."""
    warnings = []
    for name, values in grid.items():
        if len(values) >= 3 and best.get(name) in (min(values), max(values)):
            warnings.append(f"最优参数 {name}={best[name]} 位于网格边缘 [{min(values)}, {max(values)}]，"
                            "请扩大范围再试 / best value on the edge of the grid")
    return warnings


def results_table(results: list[tuple[str, float, dict[str, Any]]], names: list[str],
                  target: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The results as a table sorted by the target (best first), and the best setting."""
    import ast

    rows = []
    for text, value, statistics in results:
        setting = ast.literal_eval(text)
        rows.append({**{name: setting.get(name) for name in names}, target: value,
                     **{key: statistics.get(key) for key in ("total_net_pnl", "total_return", "max_ddpercent",
                                                             "sharpe_ratio", "total_trade_count")
                        if key != target}})
    table = pd.DataFrame(rows).sort_values(target, ascending=False, kind="stable").reset_index(drop=True)
    best = {name: table.loc[0, name] for name in names} if len(table) else {}
    return table, {k: v.item() if isinstance(v, np.generic) else v for k, v in best.items()}


class Optimizer:
    """Grid and genetic search of strategy settings on all cores, and walk-forward optimisation."""

    def __init__(self, module: BacktestingModule, workers: int | None = None) -> None:
        self.module = module
        self.workers = workers or os.cpu_count() or 1

    def prepare(self, vt_symbol: str, start: datetime, end: datetime, model_path: str | Path, interval: str,
                base_setting: dict[str, Any], target: str, capital: float, folder: Path) -> Path:
        """Load bars and predictions once and write the job every worker reads."""
        module = self.module
        spec = module.contract(vt_symbol)
        warmup = int(base_setting.get("warmup_days", WARMUP_DAYS))
        bars = module.load_bars(vt_symbol, start, end, interval, warmup)
        model = PricePredictionModel().load_model(find_bundle(str(model_path), module.home.models_dir))
        predictions, _ = cached_predictions(model, bars, vt_symbol, module.cache_dir)
        costs = {"rate": spec.commission_rate, "slippage": spec.slippage_ticks * spec.pricetick,
                 "size": spec.size, "pricetick": spec.pricetick, "capital": capital}
        setting = {"model_path": str(model.path), "capital": capital, "commission_rate": spec.commission_rate,
                   "margin_rate": spec.margin_rate, "slippage_cost": costs["slippage"], **base_setting}
        job = OptimizationJob(vt_symbol, interval, start, end, str(model.path), bars, predictions, costs, setting,
                              target)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "job.pkl"
        with path.open("wb") as handle:
            pickle.dump(job, handle, protocol=pickle.HIGHEST_PROTOCOL)
        return path

    def search(self, job_path: Path, grid: dict[str, list[float]], method: str = "grid",
               output: Callable[[str], None] = logger.info) -> OptimizationResult:
        """Every grid point (or a genetic search over the grid) in worker processes."""
        from vnpy.trader.optimize import OptimizationSetting, run_bf_optimization, run_ga_optimization

        with job_path.open("rb") as handle:
            target = pickle.load(handle).target
        setting = OptimizationSetting()
        for name, values in grid.items():
            setting.params[name] = list(values)
        setting.set_target(target)
        evaluate: Any = functools.partial(evaluate_setting, str(job_path))  # vnpy hints a dict; it uses the tuple
        if method == "ga":
            size = len(setting.generate_settings())
            results = run_ga_optimization(evaluate, setting, _target_of, max_workers=self.workers,
                                          pop_size=min(40, max(4, size // 2)), ngen=10, output=output)
        else:
            results = run_bf_optimization(evaluate, setting, _target_of, max_workers=self.workers, output=output)
        table, best = results_table(results, list(grid), target)
        return OptimizationResult(target, table, best, grid_edges(best, grid))

    def walk_forward(self, job_path: Path, grid: dict[str, list[float]], folds: int,
                     method: str = "grid") -> pd.DataFrame:
        """Optimise on each window, test the best settings on the next one; only out-of-sample rows are returned."""
        with job_path.open("rb") as handle:
            job: OptimizationJob = pickle.load(handle)
        edges = pd.date_range(job.start, job.end, periods=folds + 2)
        rows = []
        for fold in range(folds):
            train = (edges[fold].to_pydatetime(), edges[fold + 1].to_pydatetime())
            test = (edges[fold + 1].to_pydatetime(), edges[fold + 2].to_pydatetime())
            fold_job = replace(job, start=train[0], end=train[1])
            fold_path = job_path.with_name(f"job_fold{fold + 1}.pkl")
            with fold_path.open("wb") as handle:
                pickle.dump(fold_job, handle, protocol=pickle.HIGHEST_PROTOCOL)
            found = self.search(fold_path, grid, method)
            _, bars, model = _worker_state(str(job_path))
            statistics = run_on_bars(job, bars, model, found.best, test[0], test[1])
            rows.append({"fold": fold + 1, "optimised_from": train[0].date(), "optimised_to": train[1].date(),
                         "tested_from": test[0].date(), "tested_to": test[1].date(), **found.best,
                         **{key: statistics.get(key) for key in (job.target, "total_net_pnl", "total_return",
                                                                 "max_ddpercent", "total_trade_count")}})
        return pd.DataFrame(rows)


def write_csv_atomic(frame: pd.DataFrame, path: Path) -> Path:
    """A CSV written to a temporary name, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        frame.to_csv(temp, index=False)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path


# --- reports ------------------------------------------------------------------------------------------------
