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
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from vnpy.trader.constant import Direction, Interval, Offset
from vnpy.trader.object import BarData, OrderData, TradeData
from vnpy_ctastrategy.backtesting import BacktestingEngine

import bar_features
import data_collector
import data_processor
from config import (
    DEFAULT_CAPITAL,
    FEATURE_CODE_FILES,
    ConfigError,
    ContractSpec,
    DataError,
    Fees,
    Home,
    atomic_path,
    contract_spec,
    file_sha256,
    json_safe,
    load_contracts,
    settings_dirs,
    settings_for,
    temporary_path,
)
from ml_model import PricePredictionModel, find_bundle, refuse_in_sample
from predictive_trading_strategy import PrecomputedSignal, PredictiveTradingStrategy, batch_predictions
from risk_manager import trade_fees

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

WARMUP_DAYS: int = 10


class StrategyFailed(RuntimeError):
    """The strategy raised during the run; vnpy stops the replay and would return a partial result."""


class FeeBacktestingEngine(BacktestingEngine):
    """vnpy's BacktestingEngine charging what the exchange charges (`fees`: per lot or a rate; open, close and
    close-today), the thin subclass vnpy leaves to its users.

    vnpy charges every fill `rate` of its turnover. When `fees` is more than one rate for every side, each fill's
    commission is replaced, after vnpy's daily results, by risk_manager.trade_fees: lots opened on the same trading
    day as the close pay close-today (vnpy books only CLOSE; a close takes yesterday's lots first), and each day's net
    P&L follows. A one-rate schedule equal to `rate` is vnpy's own arithmetic and its results are left untouched.
    """

    fees: Fees | None = None

    def calculate_result(self) -> pd.DataFrame:
        daily = super().calculate_result()
        fees = self.fees
        if fees is None or not self.trades or (fees.rate_only and fees.open_rate == self.rate):
            return daily
        trades = sorted(self.trades.values(), key=lambda trade: (trade.datetime, int(trade.tradeid)))
        charged = dict(zip((t.vt_tradeid for t in trades), trade_fees(trades, fees, self.size), strict=True))
        results: dict[str, list[Any]] = {}
        for result in self.daily_results.values():
            result.commission = sum(charged[trade.vt_tradeid] for trade in result.trades)
            result.net_pnl = result.total_pnl - result.commission - result.slippage
            for key, value in result.__dict__.items():
                results.setdefault(key, []).append(value)
        self.daily_df = pd.DataFrame.from_dict(results).set_index("date")
        return self.daily_df


class PreloadedBacktestingEngine(FeeBacktestingEngine):
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

    def load_bar(
        self, vt_symbol: str, days: int, interval: Interval, callback: Callable, use_database: bool
    ) -> list[BarData]:
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


def replay(engine: PreloadedBacktestingEngine) -> None:
    """Load the bars and run the replay; a strategy exception (which vnpy swallows) raises StrategyFailed."""
    engine.load_data()
    engine.run_backtesting()
    failure = engine.failure()
    if failure is not None:
        logger.error("策略运行出错，回测中止 / the strategy raised, backtest aborted\n%s", failure)
        raise StrategyFailed(f"策略在回测中抛出异常，没有写出报告 / the strategy raised during the run:\n{failure}")


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
    logs: list[str] = field(default_factory=list)  # the strategy's own log lines (write_log), with bar times
    orders: list[OrderData] = field(default_factory=list)  # every order the strategy sent, in sending order
    in_sample: list[str] = field(default_factory=list)  # the bundle's train / valid parts the range overlaps


def prediction_key(model: PricePredictionModel, frame: pd.DataFrame) -> str:
    """Fingerprint of model + bars + feature code: any change gives another cache entry."""
    digest = hashlib.sha256()
    digest.update(model.seal.encode())
    digest.update(np.asarray(frame.index.as_unit("us").asi8).tobytes())
    digest.update(np.ascontiguousarray(frame[list(bar_features.OHLCV)].to_numpy(dtype="float64")).tobytes())
    for path in FEATURE_CODE_FILES:
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()[:32]


def cached_predictions(
    model: PricePredictionModel, frame: pd.DataFrame, vt_symbol: str, cache_dir: Path | None
) -> tuple[np.ndarray, bool]:
    """`batch_predictions` for the frame, read from or written to `cache_dir` (atomically); and whether it was a hit."""
    if cache_dir is None:
        return batch_predictions(model, frame, vt_symbol), False
    path = cache_dir / f"{prediction_key(model, frame)}.npy"
    if path.exists():
        cached = np.load(path, allow_pickle=False)
        if cached.shape == (len(frame),):
            return cached, True
    predictions = batch_predictions(model, frame, vt_symbol)
    with atomic_path(path) as temp, temp.open("wb") as handle:
        np.save(handle, predictions, allow_pickle=False)
    return predictions, False


def buy_and_hold(
    bars: pd.DataFrame, capital: float, size: float, volume: float, fees: Fees, slippage: float
) -> pd.Series:
    """Balance at each day's last bar of holding `volume` lots bought at the first bar's close (the open fee paid)."""
    if bars.empty:
        return pd.Series(dtype="float64")
    close = bars["close"].to_numpy(dtype="float64")
    entry = close[0] + slippage
    cost = fees.open_fee(entry, volume, size) + slippage * volume * size
    balance = capital - cost + (close - entry) * volume * size
    # by calendar date, as vnpy's daily results are, so the two line up day by day
    days = pd.DatetimeIndex(bars.index).tz_localize(None).normalize()
    series = pd.Series(balance, index=days)
    return series.groupby(level=0).last()


def strategy_costs(model_path: str, costs: dict[str, Any]) -> dict[str, Any]:
    """The strategy parameters that make its risk book charge what the engine charges."""
    return {
        "model_path": model_path,
        "capital": costs["capital"],
        "fees": costs["fees"].text,
        "margin_rate": costs["margin_rate"],
        "slippage_cost": costs["slippage"],
    }


def set_engine_parameters(
    engine: FeeBacktestingEngine, vt_symbol: str, interval: str, start: datetime, end: datetime, costs: dict[str, Any]
) -> None:
    """vnpy's set_parameters with our costs (capital must be given: vnpy's default 0 zeroes every statistic); vnpy's
    `rate` is the open rate, and the engine charges the exchange's `fees` (FeeBacktestingEngine)."""
    fees: Fees = costs["fees"]
    engine.fees = fees
    engine.set_parameters(
        vt_symbol=vt_symbol,
        interval=data_collector.parse_interval(interval),
        start=start,
        end=end,
        rate=fees.open_rate,
        slippage=costs["slippage"],
        size=costs["size"],
        pricetick=costs["pricetick"],
        capital=int(costs["capital"]),
    )


def load_checked(path: str | Path, vt_symbol: str, interval: str) -> PricePredictionModel:
    """A bundle loaded with every check, against the product and bar interval it will trade."""
    return PricePredictionModel().load_model(
        path, vt_symbol=vt_symbol, interval=data_collector.parse_interval(interval).value
    )


class BacktestingModule:
    """Runs the predictive strategy on vnpy's BacktestingEngine for one home (its database, settings and cache)."""

    def __init__(self, home: Home) -> None:
        self.home = home
        self.contracts = load_contracts(settings_dirs(home))
        self.risk_parameters = settings_for(home).risk.strategy_parameters()  # risk.json, as the live strategy gets

    @property
    def cache_dir(self) -> Path:
        return self.home.root / "cache" / "predictions"

    def contract(self, vt_symbol: str) -> ContractSpec:
        return contract_spec(vt_symbol, self.contracts)

    def costs(
        self,
        vt_symbol: str,
        capital: float = DEFAULT_CAPITAL,
        rate: float | None = None,
        slippage: float | None = None,
        size: float | None = None,
        pricetick: float | None = None,
    ) -> dict[str, Any]:
        """The engine's costs and the margin rate: each given value, else the contract's facts (`rate`: one rate of
        turnover for every side instead of the contract's fees)."""
        spec = self.contract(vt_symbol)
        pricetick = spec.pricetick if pricetick is None else pricetick
        return {
            "fees": spec.fees if rate is None else Fees.of_rate(rate),
            "slippage": spec.slippage_ticks * pricetick if slippage is None else slippage,
            "size": spec.size if size is None else size,
            "pricetick": pricetick,
            "margin_rate": spec.margin_rate,
            "capital": capital,
        }

    def load_bars(
        self, vt_symbol: str, start: datetime, end: datetime, interval: str = "1m", warmup_days: int = WARMUP_DAYS
    ) -> pd.DataFrame:
        """The bars of the run plus the warm-up days before it, read once from the database."""
        return data_collector.load_history_data(
            vt_symbol, start - timedelta(days=warmup_days), end, interval, self.home
        )

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
        allow_in_sample: bool = False,
        junctions: Sequence[datetime] | None = None,
    ) -> BacktestResult:
        """Backtest the predictive strategy; costs default from the contract's facts in settings/contracts.toml.
        A range overlapping the bundle's train or valid part is refused unless `allow_in_sample` (the result then
        says which parts it overlaps, and every report marks it IN-SAMPLE). `junctions`: the first bars of a new
        contract when they are known (a continuous series' roll table), else roll gaps by the causal gap rule."""
        begin = data_collector.to_china_time(start)
        finish = data_collector.to_china_time(end, end_of_day=True)
        if begin >= finish:
            raise DataError(f"回测开始 {begin:%Y-%m-%d} 不早于结束 {finish:%Y-%m-%d} / start must be before end")
        model = load_checked(find_bundle(str(model_path), self.home.models_dir), vt_symbol, interval)
        overlaps = refuse_in_sample(model.metadata, begin, finish, allow_in_sample)
        costs = self.costs(vt_symbol, capital, rate, slippage, size, pricetick)
        chosen = dict(setting or {})
        warmup_days = int(chosen.get("warmup_days", WARMUP_DAYS))
        if bars is None:
            bars = self.load_bars(vt_symbol, begin, finish, interval, warmup_days)
        bars = bars.loc[
            (bars.index >= pd.Timestamp(begin - timedelta(days=warmup_days))) & (bars.index <= pd.Timestamp(finish))
        ]
        traded = bars.loc[bars.index >= pd.Timestamp(begin)]
        if traded.empty:
            raise DataError(f"{vt_symbol} 在 {begin:%Y-%m-%d} ~ {finish:%Y-%m-%d} 没有K线 / no bars in the range")

        predictions, _ = cached_predictions(model, bars, vt_symbol, self.cache_dir if use_cache else None)
        chosen = {**strategy_costs(str(model.path), costs), **self.risk_parameters, **chosen}

        engine = PreloadedBacktestingEngine(
            data_collector.frame_to_bars(bars, vt_symbol, data_collector.parse_interval(interval))
        )
        set_engine_parameters(engine, vt_symbol, interval, begin, finish, costs)
        engine.add_strategy(PredictiveTradingStrategy, chosen)
        engine.strategy.signal = PrecomputedSignal(model, pd.DatetimeIndex(bars.index), predictions)
        segment = data_processor.gap_segments(bars) if junctions is None else junction_segments(bars, junctions)
        engine.strategy.flat_bars = data_processor.roll_flat_times(bars, segment)
        replay(engine)
        daily = engine.calculate_result()
        statistics = json_safe(engine.calculate_statistics(output=False))
        volume = float(chosen.get("fixed_size", PredictiveTradingStrategy.fixed_size))
        benchmark = buy_and_hold(traded, capital, costs["size"], volume, costs["fees"], costs["slippage"])
        statistics["buy_and_hold_end_balance"] = float(benchmark.iloc[-1])
        statistics["buy_and_hold_return"] = float((benchmark.iloc[-1] / capital - 1) * 100)
        trades = sorted(engine.trades.values(), key=lambda t: (t.datetime, int(t.tradeid)))
        statistics["long_trades"] = sum(1 for t in trades if t.direction == Direction.LONG)
        statistics["short_trades"] = len(trades) - statistics["long_trades"]
        statistics.update(entries(trades))
        days = int(statistics.get("total_days") or 0)
        statistics["trades_per_day"] = len(trades) / days if days else 0.0
        decision = model.metadata.get("decision") or {}
        statistics["edge"] = decision.get("edge", "")
        statistics["expected_trades_per_day"] = decision.get("trades_per_day")
        statistics["rolls"] = rolls_stepped_over(bars, segment, begin)
        first = len(bars) - len(traded)
        return BacktestResult(
            vt_symbol=vt_symbol,
            start=begin,
            end=finish,
            setting=json_safe(chosen),
            daily=daily,
            statistics=statistics,
            trades=trades,
            bars=traded,
            predictions=pd.Series(predictions[first:], index=traded.index, name="prediction"),
            benchmark=benchmark,
            messages=engine.messages,
            logs=list(engine.logs),
            orders=sorted(engine.limit_orders.values(), key=lambda o: int(o.orderid)),
            in_sample=overlaps,
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
    costs: dict[str, Any]  # fees, slippage, size, pricetick, margin_rate, capital (BacktestingModule.costs)
    base_setting: dict[str, Any]
    target: str
    allow_in_sample: bool = False
    in_sample: tuple[str, ...] = ()  # the bundle's train / valid parts start..end overlaps (allowed only when asked)


def read_job(path: Path | str) -> OptimizationJob:
    """An optimisation job as `Optimizer.prepare` wrote it."""
    with open(path, "rb") as handle:
        job: OptimizationJob = pickle.load(handle)
    return job


@functools.lru_cache(maxsize=4)
def _worker_state(job_path: str) -> tuple[OptimizationJob, list[BarData], PricePredictionModel]:
    """One load per worker process of the job, its vnpy bars and the model (ONNX only: no TensorFlow)."""
    job = read_job(job_path)
    bars = data_collector.frame_to_bars(job.bars, job.vt_symbol, data_collector.parse_interval(job.interval))
    model = load_checked(job.model_path, job.vt_symbol, job.interval)
    return job, bars, model


def junction_segments(frame: pd.DataFrame, junctions: Sequence[datetime]) -> np.ndarray:
    """Segment number of every bar, a new one at each junction (a new contract's first bar)."""
    times = pd.DatetimeIndex(sorted(junctions)).as_unit("us").asi8
    segment: np.ndarray = np.searchsorted(times, pd.DatetimeIndex(frame.index).as_unit("us").asi8, side="right")
    return segment


def rolls_stepped_over(frame: pd.DataFrame, segment: np.ndarray, start: datetime) -> list[str]:
    """The first bar of every new segment (a roll gap; `segment` is the frame's gap_segments) at or after `start`."""
    opens = np.r_[False, segment[1:] != segment[:-1]] & (frame.index >= pd.Timestamp(start))
    return [str(stamp) for stamp in frame.index[opens]]


def entries(trades: Sequence[TradeData]) -> dict[str, int]:
    """Opening fills by direction."""
    opened = [trade for trade in trades if trade.offset == Offset.OPEN]
    longs = sum(1 for trade in opened if trade.direction == Direction.LONG)
    return {"long_entries": longs, "short_entries": len(opened) - longs}


def run_on_bars(
    job: OptimizationJob,
    bars: list[BarData],
    model: PricePredictionModel,
    setting: dict[str, Any],
    start: datetime,
    end: datetime,
) -> dict[str, Any]:
    """One backtest of the strategy on ready bars and predictions; JSON-safe statistics."""
    engine = PreloadedBacktestingEngine(bars)
    set_engine_parameters(engine, job.vt_symbol, job.interval, start, end, job.costs)
    engine.add_strategy(PredictiveTradingStrategy, {**job.base_setting, **setting})
    engine.strategy.signal = PrecomputedSignal(model, pd.DatetimeIndex(job.bars.index), job.predictions)
    engine.strategy.flat_bars = data_processor.roll_flat_times(job.bars)
    replay(engine)
    engine.calculate_result()
    return dict(json_safe(engine.calculate_statistics(output=False)))


def evaluate_setting(job_path: str, setting: dict[str, Any]) -> tuple[str, float, dict[str, Any]]:
    """vnpy's optimisation contract: (setting as text, target value, statistics) for one setting."""
    job, bars, model = _worker_state(job_path)
    statistics = run_on_bars(job, bars, model, setting, job.start, job.end)
    value = statistics.get(job.target)
    return str(setting), float(value) if value is not None else -math.inf, statistics


def job_state(job: OptimizationJob) -> tuple[OptimizationJob, list[BarData], PricePredictionModel]:
    """`_worker_state` of a job received from Ray's object store instead of a file."""
    bars = data_collector.frame_to_bars(job.bars, job.vt_symbol, data_collector.parse_interval(job.interval))
    return job, bars, load_checked(job.model_path, job.vt_symbol, job.interval)


def evaluate_state(
    state: tuple[OptimizationJob, list[BarData], PricePredictionModel], setting: dict[str, Any]
) -> tuple[str, float, dict[str, Any]]:
    """`evaluate_setting` on a prepared job (a Ray task's, cluster.ray_map)."""
    job, bars, model = state
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
            warnings.append(
                f"最优参数 {name}={best[name]} 位于网格边缘 [{min(values)}, {max(values)}]，"
                "请扩大范围再试 / best value on the edge of the grid"
            )
    return warnings


def results_table(
    results: list[tuple[str, float, dict[str, Any]]], names: list[str], target: str
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The results as a table sorted by the target (best first), and the best setting."""
    import ast

    rows = []
    for text, value, statistics in results:
        setting = ast.literal_eval(text)
        rows.append(
            {
                **{name: setting.get(name) for name in names},
                target: value,
                **{
                    key: statistics.get(key)
                    for key in ("total_net_pnl", "total_return", "max_ddpercent", "sharpe_ratio", "total_trade_count")
                    if key != target
                },
            }
        )
    table = pd.DataFrame(rows).sort_values(target, ascending=False, kind="stable").reset_index(drop=True)
    best = {name: table.loc[0, name] for name in names} if len(table) else {}
    return table, {k: v.item() if isinstance(v, np.generic) else v for k, v in best.items()}


def ray_grid(
    job: OptimizationJob, settings: list[dict[str, Any]], output: Callable[[str], None]
) -> list[tuple[str, float, dict[str, Any]]]:
    """run_bf_optimization's results on Ray: the job in the object store once, each setting a task, sorted as vnpy
    sorts (stable, best first), so the table equals the local backend's."""
    import cluster

    step = max(1, len(settings) // 20)

    def done(index: int, result: tuple[str, float, dict[str, Any]]) -> None:
        finished[0] += 1
        if finished[0] % step == 0 or finished[0] == len(settings):
            output(f"[{finished[0]}/{len(settings)}] {result[0]}: {job.target} = {result[1]:.4f}")

    finished = [0]
    output(f"Ray 穷举优化 / grid on Ray: {len(settings)} 组参数 / settings")
    results = cluster.ray_map(evaluate_state, job, settings, done, job_state)
    results.sort(reverse=True, key=_target_of)
    return results


class Optimizer:
    """Grid and genetic search of strategy settings on all cores, and walk-forward optimisation."""

    def __init__(self, module: BacktestingModule, workers: int | None = None, backend: str = "local") -> None:
        self.module = module
        self.workers = workers or os.cpu_count() or 1
        self.backend = backend  # local: a process pool; ray: Ray tasks (cluster.py, connected by the caller)

    def prepare(
        self,
        vt_symbol: str,
        start: datetime,
        end: datetime,
        model_path: str | Path,
        interval: str,
        base_setting: dict[str, Any],
        target: str,
        costs: dict[str, Any],
        folder: Path,
        use_cache: bool = True,
        allow_in_sample: bool = False,
    ) -> Path:
        """Load bars and predictions once and write the job every worker reads; `costs` from module.costs().
        A range overlapping the bundle's train or valid part is refused unless `allow_in_sample`."""
        module = self.module
        model = load_checked(find_bundle(str(model_path), module.home.models_dir), vt_symbol, interval)
        overlaps = refuse_in_sample(model.metadata, start, end, allow_in_sample)
        warmup = int(base_setting.get("warmup_days", WARMUP_DAYS))
        bars = module.load_bars(vt_symbol, start, end, interval, warmup)
        predictions, _ = cached_predictions(model, bars, vt_symbol, module.cache_dir if use_cache else None)
        setting = {**strategy_costs(str(model.path), costs), **module.risk_parameters, **base_setting}
        job = OptimizationJob(
            vt_symbol,
            interval,
            start,
            end,
            str(model.path),
            bars,
            predictions,
            costs,
            setting,
            target,
            allow_in_sample,
            tuple(overlaps),
        )
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "job.pkl"
        with path.open("wb") as handle:
            pickle.dump(job, handle, protocol=pickle.HIGHEST_PROTOCOL)
        return path

    def check_method(self, method: str) -> None:
        """ConfigError when the backend cannot run `method`: Ray runs the grid only."""
        if self.backend == "ray" and method == "ga":
            raise ConfigError("--backend ray 只支持 --method grid / the genetic search runs on the local backend only")

    def search(
        self,
        job_path: Path,
        grid: dict[str, list[float]],
        method: str = "grid",
        output: Callable[[str], None] = logger.info,
    ) -> OptimizationResult:
        """Every grid point (or a genetic search over the grid) in worker processes."""
        from vnpy.trader.optimize import OptimizationSetting, run_bf_optimization, run_ga_optimization

        job = read_job(job_path)
        target = job.target
        setting = OptimizationSetting()
        for name, values in grid.items():
            setting.params[name] = list(values)
        setting.set_target(target)
        evaluate: Any = functools.partial(evaluate_setting, str(job_path))  # vnpy hints a dict; it uses the tuple
        self.check_method(method)
        if self.backend == "ray":
            results = ray_grid(job, setting.generate_settings(), output)
        elif method == "ga":
            size = len(setting.generate_settings())
            results = run_ga_optimization(
                evaluate,
                setting,
                _target_of,
                max_workers=self.workers,
                pop_size=min(40, max(4, size // 2)),
                ngen=10,
                output=output,
            )
        else:
            results = run_bf_optimization(evaluate, setting, _target_of, max_workers=self.workers, output=output)
        table, best = results_table(results, list(grid), target)
        table["in_sample"] = bool(job.in_sample)
        return OptimizationResult(target, table, best, grid_edges(best, grid))

    def walk_forward(
        self, job_path: Path, grid: dict[str, list[float]], folds: int, method: str = "grid"
    ) -> pd.DataFrame:
        """Optimise on each window, test the best settings on the next one; only out-of-sample rows are returned."""
        job = read_job(job_path)
        edges = pd.date_range(job.start, job.end, periods=folds + 2)
        rows = []
        for fold in range(folds):
            train = (edges[fold].to_pydatetime(), edges[fold + 1].to_pydatetime())
            test = (edges[fold + 1].to_pydatetime(), edges[fold + 2].to_pydatetime())
            fold_job = replace(job, start=train[0], end=train[1])
            _, bars, model = _worker_state(str(job_path))
            overlaps = refuse_in_sample(model.metadata, train[0], test[1], job.allow_in_sample)
            fold_path = job_path.with_name(f"job_fold{fold + 1}.pkl")
            with fold_path.open("wb") as handle:
                pickle.dump(fold_job, handle, protocol=pickle.HIGHEST_PROTOCOL)
            found = self.search(fold_path, grid, method)
            statistics = run_on_bars(job, bars, model, found.best, test[0], test[1])
            rows.append(
                {
                    "fold": fold + 1,
                    "optimised_from": train[0].date(),
                    "optimised_to": train[1].date(),
                    "tested_from": test[0].date(),
                    "tested_to": test[1].date(),
                    **found.best,
                    **{
                        key: statistics.get(key)
                        for key in (job.target, "total_net_pnl", "total_return", "max_ddpercent", "total_trade_count")
                    },
                    "in_sample": bool(overlaps),
                }
            )
        return pd.DataFrame(rows)


# --- reports ------------------------------------------------------------------------------------------------

REPORT_FILES: tuple[str, ...] = ("statistics.json", "trades.csv", "daily.csv", "report.png", "report.html")
REPORT_SIZE: tuple[float, float] = (14.0, 13.0)  # inches: at REPORT_DPI the PNG is 1540 x 1430 pixels
REPORT_DPI: int = 110
TRADE_COLUMNS: tuple[str, ...] = ("datetime", "direction", "offset", "price", "volume", "tradeid", "orderid")


def report_capital(result: BacktestResult) -> float:
    """The capital the run started with."""
    return float(result.setting.get("capital") or result.statistics.get("capital") or DEFAULT_CAPITAL)


def daily_dates(daily: pd.DataFrame) -> pd.DatetimeIndex:
    """vnpy's daily index (calendar dates) as timestamps at midnight, without a time zone."""
    return pd.DatetimeIndex(pd.to_datetime(pd.Index(daily.index)), name="date")


def wall_clock(index: pd.DatetimeIndex) -> pd.DatetimeIndex:
    """Times as China wall-clock time without a time zone, on the same axis as `daily_dates`."""
    from config import CHINA_TZ

    index = pd.DatetimeIndex(index)
    return index.tz_convert(CHINA_TZ).tz_localize(None) if index.tz is not None else index


def day_close_times(result: BacktestResult) -> pd.DatetimeIndex:
    """When each vnpy day closed: the time of its last bar (vnpy marks a day's balance there), else its midnight."""
    dates = daily_dates(result.daily)
    times = wall_clock(pd.DatetimeIndex(result.bars.index))
    last = pd.Series(times, index=times.normalize()).groupby(level=0).max()
    return pd.DatetimeIndex(last.reindex(dates).fillna(pd.Series(dates, index=dates)), name="close_time")


def benchmark_by_date(result: BacktestResult) -> pd.Series:
    """The buy-and-hold balance on vnpy's daily dates; NaN on a date the benchmark has no trading day for."""
    days = wall_clock(pd.DatetimeIndex(result.benchmark.index)).normalize()
    benchmark = pd.Series(result.benchmark.to_numpy(dtype="float64"), index=days)
    return benchmark.reindex(daily_dates(result.daily)).rename("buy_and_hold_balance")


def equity_curves(result: BacktestResult) -> pd.DataFrame:
    """Per vnpy day: balances, cumulative returns in % of capital, drawdown (money and %) and net P&L."""
    capital = report_capital(result)
    daily = result.daily
    net_pnl = daily["net_pnl"].to_numpy(dtype="float64")
    balance = daily["balance"].to_numpy(dtype="float64") if "balance" in daily else capital + np.cumsum(net_pnl)
    peak = np.maximum.accumulate(balance) if len(balance) else balance
    drawdown = daily["drawdown"].to_numpy(dtype="float64") if "drawdown" in daily else balance - peak
    ddpercent = daily["ddpercent"].to_numpy(dtype="float64") if "ddpercent" in daily else drawdown / peak * 100
    benchmark = benchmark_by_date(result).to_numpy()
    return pd.DataFrame(
        {
            "balance": balance,
            "buy_and_hold": benchmark,
            "return_pct": (balance / capital - 1) * 100,
            "buy_and_hold_return_pct": (benchmark / capital - 1) * 100,
            "drawdown": drawdown,
            "drawdown_pct": ddpercent,
            "net_pnl": net_pnl,
        },
        index=daily_dates(daily),
    )


def report_statistics(result: BacktestResult) -> dict[str, Any]:
    """vnpy's statistics with what was run, as plain JSON (NaN and inf as null)."""
    statistics: dict[str, Any] = json_safe(
        {
            "vt_symbol": result.vt_symbol,
            "start": result.start,
            "end": result.end,
            **result.statistics,
            "in_sample": bool(result.in_sample),
            "in_sample_ranges": result.in_sample,
            "setting": result.setting,
        }
    )
    return statistics


def trades_frame(trades: Sequence[TradeData]) -> pd.DataFrame:
    """One row per trade: time in ISO form with its offset, vnpy's enums as their values."""
    rows = [
        (
            trade.datetime.isoformat() if trade.datetime else None,
            getattr(trade.direction, "value", None),
            getattr(trade.offset, "value", None),
            trade.price,
            trade.volume,
            trade.tradeid,
            trade.orderid,
        )
        for trade in trades
    ]
    return pd.DataFrame(rows, columns=list(TRADE_COLUMNS))


def daily_frame(result: BacktestResult) -> pd.DataFrame:
    """vnpy's daily results with the date as a column and the buy-and-hold balance; the per-day trade lists are
    left out (trades.csv holds the trades)."""
    frame = result.daily.drop(columns="trades", errors="ignore").rename_axis("date").reset_index()
    frame["buy_and_hold_balance"] = benchmark_by_date(result).to_numpy()
    return frame


def _statistic(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, int | float) and math.isfinite(value) else "n/a"


def in_sample_note(overlaps: Sequence[str]) -> str:
    """The line that marks an in-sample run's outputs (which of the bundle's parts it overlaps); empty if none."""
    return f"IN-SAMPLE: the range overlaps the bundle's {'; '.join(overlaps)}" if overlaps else ""


def report_title(result: BacktestResult) -> str:
    """Symbol, range and the key statistics on two lines, after an IN-SAMPLE line when the run is in sample."""
    stats = result.statistics
    note = in_sample_note(result.in_sample)
    return (f"{note}\n" if note else "") + (
        f"{result.vt_symbol}   {result.start:%Y-%m-%d} to {result.end:%Y-%m-%d}\n"
        f"net P&L {_statistic(stats.get('total_net_pnl'), ',.0f')}   "
        f"return {_statistic(stats.get('total_return'), '.2f')}%   "
        f"max drawdown {_statistic(stats.get('max_ddpercent'), '.2f')}%   "
        f"Sharpe {_statistic(stats.get('sharpe_ratio'), '.2f')}   trades {len(result.trades)}   "
        f"entries long {stats.get('long_entries', '-')} / short {stats.get('short_entries', '-')}   "
        f"rolls flat {len(stats.get('rolls') or [])}   edge {stats.get('edge') or '-'}"
    )


def _plot_trades(ax: Axes, trades: Sequence[TradeData]) -> None:
    """Long entries as triangles up, short entries as triangles down, exits as crosses."""
    from vnpy.trader.constant import Offset

    opened = [t for t in trades if t.offset == Offset.OPEN]
    groups = (
        ("long entry", "^", "tab:green", [t for t in opened if t.direction == Direction.LONG]),
        ("short entry", "v", "tab:red", [t for t in opened if t.direction != Direction.LONG]),
        ("exit", "x", "black", [t for t in trades if t.offset != Offset.OPEN]),
    )
    for label, marker, color, chosen in groups:
        if chosen:
            times = wall_clock(pd.DatetimeIndex([t.datetime for t in chosen]))
            ax.scatter(
                times,
                [t.price for t in chosen],
                marker=marker,
                color=color,
                s=45,
                zorder=3,
                label=f"{label} ({len(chosen)})",
            )
    if not trades:
        ax.text(0.5, 0.9, "no trades", ha="center", va="center", fontsize=12, transform=ax.transAxes)


def results_figure(result: BacktestResult) -> Figure:
    """Four panels on one time axis: balance, cumulative return, drawdown, and price with trades and predictions."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import StrMethodFormatter

    capital = report_capital(result)
    curves = equity_curves(result)
    figure = Figure(figsize=REPORT_SIZE, dpi=REPORT_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    figure.suptitle(report_title(result), fontsize=13)
    balance_ax, return_ax, drawdown_ax, price_ax = figure.subplots(4, 1, sharex=True, height_ratios=[3, 2, 2, 3])

    closes = day_close_times(result)
    balance_ax.set_title("Balance at each day's close (vnpy daily results)")
    balance_ax.plot(closes, curves["balance"], marker="o", markersize=3, label="strategy")
    balance_ax.plot(closes, curves["buy_and_hold"], marker="o", markersize=3, label="buy and hold")
    balance_ax.axhline(capital, color="grey", linewidth=0.8, linestyle="--", label="capital")
    balance_ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    balance_ax.set_ylabel("balance")

    return_ax.set_title("Cumulative return")
    return_ax.plot(closes, curves["return_pct"], marker="o", markersize=3, label="strategy")
    return_ax.plot(closes, curves["buy_and_hold_return_pct"], marker="o", markersize=3, label="buy and hold")
    return_ax.axhline(0, color="grey", linewidth=0.8)
    return_ax.set_ylabel("return (% of capital)")

    drawdown_ax.set_title("Drawdown from the running peak")
    drawdown_ax.fill_between(closes, curves["drawdown_pct"], 0, color="tab:red", alpha=0.3)
    drawdown_ax.plot(closes, curves["drawdown_pct"], color="tab:red", label="strategy drawdown")
    drawdown_ax.set_ylabel("drawdown (%)")

    price_ax.set_title("Close price, trades and the model's prediction")
    price_ax.plot(
        wall_clock(pd.DatetimeIndex(result.bars.index)),
        result.bars["close"].to_numpy(dtype="float64"),
        color="tab:blue",
        linewidth=0.8,
        label="close",
    )
    _plot_trades(price_ax, result.trades)
    price_ax.set_ylabel("price")
    price_ax.set_xlabel("date (China time)")
    signal_ax = price_ax.twinx()
    predictions = result.predictions.to_numpy(dtype="float64") * 1e4
    finite = int(np.isfinite(predictions).sum())
    signal_ax.plot(
        wall_clock(pd.DatetimeIndex(result.predictions.index)),
        predictions,
        color="tab:purple",
        linewidth=0.6,
        alpha=0.4,
        label=f"prediction ({finite:,} of {len(predictions):,} bars)",
    )
    signal_ax.axhline(0, color="tab:purple", linewidth=0.6, linestyle=":")
    signal_ax.set_ylabel("predicted return (bp)")
    price_ax.set_zorder(signal_ax.get_zorder() + 1)  # price and trades over the prediction line
    price_ax.patch.set_visible(False)

    for ax in (balance_ax, return_ax, drawdown_ax):
        ax.legend(loc="upper left")
        ax.grid(alpha=0.3)
    handles, labels = price_ax.get_legend_handles_labels()
    signal_handles, signal_labels = signal_ax.get_legend_handles_labels()
    price_ax.legend(handles + signal_handles, labels + signal_labels, loc="upper left", fontsize=9)
    price_ax.grid(alpha=0.3)
    return figure


def plot_results(result: BacktestResult, path: Path) -> Path:
    """The four-panel PNG report at `path`, written under a temporary name and renamed."""
    figure = results_figure(result)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=REPORT_DPI)
    return path


def results_chart(result: BacktestResult) -> Any:
    """The plotly figure of vnpy's `show_chart()` (balance, drawdown, daily P&L, P&L distribution) plus buy and hold."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    curves = equity_curves(result)
    chart = make_subplots(
        rows=4, cols=1, subplot_titles=["Balance", "Drawdown", "Daily Pnl", "Pnl Distribution"], vertical_spacing=0.06
    )
    chart.add_trace(go.Scatter(x=curves.index, y=curves["balance"], mode="lines", name="Balance"), row=1, col=1)
    chart.add_trace(
        go.Scatter(x=curves.index, y=curves["buy_and_hold"], mode="lines", name="Buy and hold"), row=1, col=1
    )
    chart.add_trace(
        go.Scatter(
            x=curves.index, y=curves["drawdown"], fillcolor="red", fill="tozeroy", mode="lines", name="Drawdown"
        ),
        row=2,
        col=1,
    )
    chart.add_trace(go.Bar(x=curves.index, y=curves["net_pnl"], name="Daily Pnl"), row=3, col=1)
    chart.add_trace(go.Histogram(x=curves["net_pnl"], nbinsx=100, name="Days"), row=4, col=1)
    chart.update_layout(
        height=1000,
        width=1000,
        title_text=report_title(result).replace("\n", "<br>"),
        margin={"t": 150 if result.in_sample else 120},
    )
    return chart


def write_report(result: BacktestResult, folder: Path, engine_chart: Any | None = None) -> dict[str, Path]:
    """statistics.json, trades.csv, daily.csv, report.png and report.html in `folder`: all are rendered under
    temporary names first and renamed only when every one succeeded, so a failure leaves the previous report.
    An in-sample run says IN-SAMPLE in statistics.json and both titles (an `engine_chart`'s included)."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / name for name in REPORT_FILES}
    staged = {name: temporary_path(path) for name, path in paths.items()}
    try:
        staged["statistics.json"].write_text(
            json.dumps(report_statistics(result), ensure_ascii=False, indent=4, allow_nan=False), encoding="utf-8"
        )
        trades_frame(result.trades).to_csv(staged["trades.csv"], index=False)
        daily_frame(result).to_csv(staged["daily.csv"], index=False)
        plot_results(result, staged["report.png"])
        chart = results_chart(result) if engine_chart is None else engine_chart
        if engine_chart is not None and result.in_sample:  # our own chart's title carries the line already
            title = engine_chart.layout.title.text or ""
            chart.update_layout(title_text=f"{in_sample_note(result.in_sample)}<br>{title}")
        chart.write_html(staged["report.html"], include_plotlyjs=True)
        for name, path in paths.items():
            os.replace(staged[name], path)
    finally:
        for temporary in staged.values():
            temporary.unlink(missing_ok=True)
    return paths
