"""Backtests on vnpy's BacktestingEngine with bars loaded once, and what they produce."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from vnpy.trader.constant import Interval
from vnpy.trader.object import BarData
from vnpy_ctastrategy.backtesting import BacktestingEngine

from config import DataError


class PreloadedBacktestingEngine(BacktestingEngine):
    """vnpy's BacktestingEngine fed from bars in memory: the run and the strategy's warm-up never read the database."""

    def __init__(self, bars: Sequence[BarData]) -> None:
        super().__init__()
        times = [bar.datetime for bar in bars]
        if any(later <= earlier for earlier, later in zip(times, times[1:], strict=False)):
            raise DataError("回测K线必须按时间严格递增 / backtest bars must be strictly increasing in time")
        self.preloaded = list(bars)
        self.times = times

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
