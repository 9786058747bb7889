"""Backtests on vnpy's BacktestingEngine with bars loaded once, and what they produce."""

from __future__ import annotations

import bisect
import hashlib
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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


# --- reports ------------------------------------------------------------------------------------------------
