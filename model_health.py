"""Model health: the training distribution a bundle keeps, live quality once predictions mature, drift, and the
switch that stops a live model opening (pure functions and one per-strategy tracker; no I/O, no clock)."""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd

from config import CHINA_TZ, HealthSettings
from trading_calendar import causal_trading_day

logger = logging.getLogger(__name__)

DISTRIBUTION_KEY: str = "training_distribution"  # where a bundle's metadata keeps the summary
BINS: int = 10  # quantile bins per feature
PSI_FLOOR: float = 1e-4  # a bin's share is at least this in the PSI (an empty bin would be infinite)
PREDICTION_SAMPLE: int = 20_000  # training windows predicted for the prediction range
QUALITY_EVERY: int = 30  # bars between two computations of the live IC and the drift (both move slowly)
WORST_SHOWN: int = 3
KINDS: dict[str, str] = {
    "nonfinite": "特征或预测非有限值 / non-finite features or predictions",
    "range": "预测超出训练范围 / predictions outside the training range",
    "drift": "特征分布漂移 / feature drift",
    "ic": "实盘 IC 过低 / live IC below the floor",
    "age": "模型过期 / model past its life",
    "edge": "验证期无优势 / no validation edge",
}


# --- the summary a bundle keeps -------------------------------------------------------------------------------


def feature_distribution(rows: np.ndarray, names: Sequence[str], bins: int = BINS) -> dict[str, Any]:
    """Per feature: inner quantile bin edges of the finite training rows and the share of rows in each bin."""
    summary: dict[str, Any] = {}
    for column, name in enumerate(names):
        values = np.asarray(rows[:, column], dtype="float64")
        values = values[np.isfinite(values)]
        if not len(values):
            continue
        edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1], method="lower"))  # data values
        counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
        summary[name] = {"edges": edges.tolist(), "proportions": (counts / len(values)).tolist()}
    return summary


def prediction_range(predictions: np.ndarray) -> dict[str, float]:
    """The range of the model's own predictions on training windows."""
    finite = np.asarray(predictions, dtype="float64")
    finite = finite[np.isfinite(finite)]
    if not len(finite):
        return {}
    return {"low": float(finite.min()), "high": float(finite.max()), "std": float(finite.std())}


def training_summary(rows: np.ndarray, names: Sequence[str], predictions: np.ndarray) -> dict[str, Any]:
    """What a bundle's metadata keeps under DISTRIBUTION_KEY: the features' bins and the predictions' range."""
    return {"bins": BINS, "features": feature_distribution(rows, names), "predictions": prediction_range(predictions)}


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two bin shares (each floored at PSI_FLOOR)."""
    e = np.maximum(np.asarray(expected, dtype="float64"), PSI_FLOOR)
    a = np.maximum(np.asarray(actual, dtype="float64"), PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def data_end(metadata: Mapping[str, Any]) -> pd.Timestamp | None:
    """The end of the latest of the bundle's train / valid / test ranges (when its data ends), or None."""
    ranges = metadata.get("ranges")
    if not isinstance(ranges, Mapping):
        return None
    ends = [_china(span[1]) for span in ranges.values() if isinstance(span, list | tuple) and len(span) == 2]
    return max(ends) if ends else None


def _china(text: Any) -> pd.Timestamp:
    """A time in China time (a naive one is taken as China time)."""
    stamp = pd.Timestamp(text)
    return stamp.tz_localize(CHINA_TZ) if stamp.tzinfo is None else stamp.tz_convert(CHINA_TZ)


# --- what the switch reads ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Quality:
    """Matured live predictions against the forward close return over the horizon, and the live fill rate."""

    count: int = 0  # matured predictions in the window
    ic: float = math.nan
    rank_ic: float = math.nan
    hit_rate: float = math.nan  # sign agreement where both are non-zero
    fills: int = 0
    trading_days: int = 0
    trades_per_day: float = math.nan
    expected_trades_per_day: float = math.nan  # the validation simulation's


@dataclass(frozen=True)
class HealthView:
    """Everything the health switch and the panel read about a live model at one bar."""

    nonfinite_run: int = 0  # bars in a row with non-finite features or a non-finite prediction of a finite window
    out_of_range_run: int = 0
    low: float = math.nan  # the allowed prediction range (nan: unknown, the range check is off)
    high: float = math.nan
    drift: float = math.nan  # the median feature PSI over a full drift window (nan until full, or no summary)
    drift_rows: int = 0
    worst: tuple[tuple[str, float], ...] = ()  # the features of largest PSI, largest first
    quality: Quality = Quality()
    age_days: float = math.nan  # days since the bundle's data ended (nan: unknown)
    edge_none: bool = False


def quality_figures(predictions: np.ndarray, outcomes: np.ndarray) -> tuple[float, float, float]:
    """IC, rank IC and hit rate of predictions against realised returns (nan where undefined)."""
    p = np.asarray(predictions, dtype="float64")
    r = np.asarray(outcomes, dtype="float64")
    if len(p) < 2:
        return math.nan, math.nan, math.nan
    both = (np.sign(p) != 0) & (np.sign(r) != 0)
    hit = float(np.mean(np.sign(p[both]) == np.sign(r[both]))) if both.any() else math.nan
    return _corr(p, r), _corr(_ranks(p), _ranks(r)), hit


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    if np.std(a) == 0 or np.std(b) == 0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (ties share theirs), as pandas' rank."""
    from scipy.stats import rankdata

    return np.asarray(rankdata(values), dtype="float64")


def health_problems(view: HealthView, settings: HealthSettings) -> list[tuple[str, str]]:
    """Every failing rule as (kind, reason for a person), in the order they are judged; empty when healthy."""
    failing: list[tuple[str, str]] = []
    if view.edge_none:
        failing.append(("edge", f"{KINDS['edge']}：模型包验证期按真实成本模拟没有净收益（edge: none）"))
    if view.nonfinite_run >= settings.nonfinite_bars:
        failing.append(
            ("nonfinite", f"{KINDS['nonfinite']}：连续 {view.nonfinite_run} 根K线（上限 {settings.nonfinite_bars}）")
        )
    if view.out_of_range_run >= settings.out_of_range_bars:
        failing.append(
            (
                "range",
                f"{KINDS['range']}：连续 {view.out_of_range_run} 根K线超出 [{view.low:.6f}, {view.high:.6f}]"
                f"（上限 {settings.out_of_range_bars}）",
            )
        )
    if view.drift > settings.max_drift_psi:
        worst = "、".join(f"{name} {value:.2f}" for name, value in view.worst)
        failing.append(
            (
                "drift",
                f"{KINDS['drift']}：特征 PSI 中位数 {view.drift:.2f} > {settings.max_drift_psi:g}（最大：{worst}）",
            )
        )
    quality = view.quality
    if quality.count >= settings.quality_window and quality.ic < settings.min_live_ic:
        failing.append(
            ("ic", f"{KINDS['ic']}：最近 {quality.count} 个预测 IC {quality.ic:+.3f} < {settings.min_live_ic:+.3f}")
        )
    if view.age_days > settings.model_life_days:
        failing.append(("age", f"{KINDS['age']}：数据结束后 {view.age_days:.0f} 天 > {settings.model_life_days:g} 天"))
    return failing


def health_problem(view: HealthView, settings: HealthSettings) -> tuple[str, str]:
    """The first failing rule as (kind, reason), or ("", "") when the model is healthy."""
    failing = health_problems(view, settings)
    return failing[0] if failing else ("", "")


# --- the per-strategy tracker ---------------------------------------------------------------------------------


class DriftWindow:
    """Bin counts of the last `length` live feature rows against the training bins, kept incrementally (one numpy
    comparison per row: a row's bin is how many of its feature's edges lie at or below it)."""

    def __init__(self, summary: Mapping[str, Any], names: Sequence[str], length: int) -> None:
        features = summary.get("features") or {}
        self.columns = np.array([i for i, name in enumerate(names) if name in features], dtype=np.int64)
        self.names = [names[i] for i in self.columns]
        edges = [np.asarray(features[name]["edges"], dtype="float64") for name in self.names]
        expected = [np.asarray(features[name]["proportions"], dtype="float64") for name in self.names]
        width = max((len(e) for e in edges), default=0)
        self.edges = np.full((len(edges), width), np.inf)  # padded with +inf: never at or below a value
        self.expected = np.zeros((len(expected), width + 1))
        self.used = np.zeros((len(expected), width + 1), dtype=bool)  # the real bins of each feature
        for i, (e, p) in enumerate(zip(edges, expected, strict=True)):
            self.edges[i, : len(e)] = e
            self.expected[i, : len(p)] = p
            self.used[i, : len(p)] = True
        self.counts = np.zeros((len(expected), width + 1), dtype=np.int64)
        self.rows: deque[np.ndarray] = deque()
        self.length = length
        self._features = np.arange(len(self.names))

    def push(self, row: np.ndarray) -> None:
        """Add one finite feature row; the oldest leaves once the window is full."""
        values = np.asarray(row, dtype="float64")[self.columns]
        picked = (self.edges <= values[:, None]).sum(axis=1)  # == searchsorted(edges, value, side="right")
        self.counts[self._features, picked] += 1
        self.rows.append(picked)
        if len(self.rows) > self.length:
            self.counts[self._features, self.rows.popleft()] -= 1

    def values(self) -> list[tuple[str, float]]:
        """Each feature's PSI over the window, largest first (empty until the window is full)."""
        if len(self.rows) < self.length or not self.names:
            return []
        expected = np.maximum(self.expected, PSI_FLOOR)
        actual = np.maximum(self.counts / len(self.rows), PSI_FLOOR)
        scores = np.where(self.used, (actual - expected) * np.log(actual / expected), 0.0).sum(axis=1)
        return sorted(zip(self.names, scores.tolist(), strict=True), key=lambda pair: -pair[1])


class ModelWatch:
    """Follows one live model bar by bar: non-finite and out-of-range runs, drift, matured predictions, fills."""

    def __init__(
        self, metadata: Mapping[str, Any], names: Sequence[str], horizon: int, settings: HealthSettings, edge_none: bool
    ) -> None:
        self.settings = settings
        self.horizon = horizon
        self.edge_none = edge_none
        summary = metadata.get(DISTRIBUTION_KEY)
        self.drift: DriftWindow | None = None
        self.low = self.high = math.nan
        if isinstance(summary, Mapping):
            self.drift = DriftWindow(summary, names, settings.drift_window_bars)
            span = summary.get("predictions") or {}
            if "low" in span and "high" in span:
                width = float(span["high"]) - float(span["low"])
                self.low = float(span["low"]) - settings.range_margin * width
                self.high = float(span["high"]) + settings.range_margin * width
        else:
            logger.warning(
                "模型包 %s 没有训练分布摘要（较早的模型包），漂移与预测范围检查关闭；重新训练可启用 "
                "/ no training distribution in the bundle: drift and range checks are off",
                metadata.get("name", ""),
            )
        end = data_end(metadata)
        self.end: datetime | None = end.to_pydatetime() if end is not None else None
        self.expected_trades = float((metadata.get("decision") or {}).get("trades_per_day", math.nan))
        self.nonfinite_run = self.out_of_range_run = 0
        self.pending: deque[tuple[float, float]] = deque()  # (prediction, close) waiting `horizon` bars
        self.made: deque[float] = deque(maxlen=settings.quality_window)  # matured predictions ...
        self.outcomes: deque[float] = deque(maxlen=settings.quality_window)  # ... and what followed them
        self.days: set[date] = set()
        self.fills = 0
        self.last_time: datetime | None = None
        self.bars = 0
        self.quality = Quality(expected_trades_per_day=self.expected_trades)
        self.worst: list[tuple[str, float]] = []
        self.drift_median = math.nan

    def update(
        self,
        when: datetime,
        close: float,
        features: np.ndarray | None,
        prediction: float,
        expected_gap: bool,
        trading: bool = True,
    ) -> None:
        """One finished bar: its scaled feature row (None while warming up), its prediction, whether a missing
        prediction is expected (warm-up, or a window that spans a roll gap: the matured queue restarts there), and
        whether the strategy trades on it (history bars fill the windows but are no trading days)."""
        self.last_time = when
        if trading:
            self.days.add(causal_trading_day(when))
        self.bars += 1
        bad_row = features is not None and not bool(np.isfinite(features).all())
        bad_prediction = not math.isfinite(prediction) and not expected_gap
        self.nonfinite_run = self.nonfinite_run + 1 if (bad_row or bad_prediction) else 0
        if features is not None and not bad_row and self.drift is not None:
            self.drift.push(features)
        outside = math.isfinite(prediction) and not (self.low <= prediction <= self.high)
        self.out_of_range_run = self.out_of_range_run + 1 if outside and math.isfinite(self.low) else 0
        self.mature(close, prediction, expected_gap)
        if self.bars % QUALITY_EVERY == 0:
            self.refresh()

    def mature(self, close: float, prediction: float, expected_gap: bool) -> None:
        """Pair each prediction with the close `horizon` bars later; a roll gap drops what is pending."""
        if expected_gap:
            self.pending.clear()
            return
        self.pending.append((prediction, close))
        if len(self.pending) > self.horizon:
            made, then = self.pending.popleft()
            if math.isfinite(made) and then > 0:
                self.made.append(made)
                self.outcomes.append(close / then - 1)

    def record_fill(self) -> None:
        """One fill of the strategy (openings and closings, as the validation simulation counts them)."""
        self.fills += 1

    def refresh(self) -> None:
        """Recompute the live quality and the drift figures."""
        count = len(self.made)
        made = np.fromiter(self.made, dtype="float64", count=count)
        ic, rank_ic, hit = quality_figures(made, np.fromiter(self.outcomes, dtype="float64", count=count))
        days = len(self.days)
        self.quality = Quality(
            count=count,
            ic=ic,
            rank_ic=rank_ic,
            hit_rate=hit,
            fills=self.fills,
            trading_days=days,
            trades_per_day=self.fills / days if days else math.nan,
            expected_trades_per_day=self.expected_trades,
        )
        self.worst = self.drift.values() if self.drift is not None else []
        self.drift_median = float(np.median([value for _, value in self.worst])) if self.worst else math.nan

    def view(self) -> HealthView:
        """The figures at the latest bar."""
        age = math.nan
        if self.end is not None and self.last_time is not None:
            age = (self.last_time - self.end).total_seconds() / 86400
        return HealthView(
            nonfinite_run=self.nonfinite_run,
            out_of_range_run=self.out_of_range_run,
            low=self.low,
            high=self.high,
            drift=self.drift_median,
            drift_rows=len(self.drift.rows) if self.drift is not None else 0,
            worst=tuple((name, round(value, 4)) for name, value in self.worst[:WORST_SHOWN]),
            quality=self.quality,
            age_days=age,
            edge_none=self.edge_none,
        )

    def acknowledge(self) -> None:
        """After a person resumed opening: the runs start again (drift, IC and age are judged as they stand)."""
        self.nonfinite_run = self.out_of_range_run = 0


def view_dict(view: HealthView) -> dict[str, Any]:
    """A view as plain JSON values (nan as None), for the heartbeat, the audit and the panel."""
    quality = view.quality

    def plain(value: float) -> float | None:
        return round(value, 6) if math.isfinite(value) else None

    return {
        "nonfinite_run": view.nonfinite_run,
        "out_of_range_run": view.out_of_range_run,
        "range": [plain(view.low), plain(view.high)],
        "drift_psi": plain(view.drift),
        "drift_rows": view.drift_rows,
        "worst_features": [list(pair) for pair in view.worst],
        "quality": {
            "count": quality.count,
            "ic": plain(quality.ic),
            "rank_ic": plain(quality.rank_ic),
            "hit_rate": plain(quality.hit_rate),
            "fills": quality.fills,
            "trading_days": quality.trading_days,
            "trades_per_day": plain(quality.trades_per_day),
            "expected_trades_per_day": plain(quality.expected_trades_per_day),
        },
        "age_days": plain(view.age_days),
        "edge_none": view.edge_none,
    }
