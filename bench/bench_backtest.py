"""Backtests: our predictive strategy (RandomForest, LSTM) against vnpy's DoubleMaStrategy on the same bars in this run.

Usage: python bench/bench_backtest.py [--model BUNDLE ...] [--bars N] [--start DATE] [--end DATE] [--repeat N]
                                      [--skip-lstm] [--skip-forest]
Prints one JSON object: each backtest's seconds and bars/s over the same real rb 1-minute bars (plus 10 warm-up days),
from engine creation to statistics; `*_over_double_ma` is our cold-cache run (batch inference included) divided by
the double-MA run (targets: RandomForest ≤ 1.5×, LSTM ≤ 5×), beside a warm-cache run and where our time goes.
Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_common import add_input_arguments, library_versions, sample_bars, train_briefly  # noqa: E402

import data_collector  # noqa: E402
import data_processor  # noqa: E402
from config import bind_vnpy_home, resolve_home, settings_for  # noqa: E402

VT_SYMBOL = "rb0000.SHFE"
MODEL_TYPES: tuple[str, ...] = ("random_forest", "lstm")
RATIO_TARGET: dict[str, float] = {"random_forest": 1.5, "lstm": 5.0}
WARMUP_DAYS = 10  # DoubleMaStrategy loads 10 days; the predictive strategy's default warmup_days is 10 as well
WARMUP_RUN_DAYS = 3  # the untimed first run of each backtest covers this many days
GUIDE_DOUBLE_MA_SECONDS_PER_100K = 0.62
# rb's facts (settings/contracts.toml): the yardstick gets them by hand, ours reads them from the contracts file
RB_FACTS: dict[str, float] = {"rate": 0.0001, "slippage": 1.0, "size": 10.0, "pricetick": 1.0}
CAPITAL = 1_000_000


def progress(message: str) -> None:
    """One progress line on stderr."""
    print(f"[bench_backtest] {message}", file=sys.stderr, flush=True)


class Stopwatch:
    """Seconds spent inside chosen functions while it is entered: each is wrapped, then the original put back."""

    def __init__(self, targets: dict[str, tuple[Any, str]]) -> None:
        self.targets = targets
        self.seconds: dict[str, float] = dict.fromkeys(targets, 0.0)
        self.saved: list[tuple[Any, str, bool, Any]] = []

    def wrap(self, label: str, original: Callable[..., Any]) -> Callable[..., Any]:
        seconds = self.seconds

        def timed_call(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                seconds[label] += time.perf_counter() - started

        return timed_call

    def __enter__(self) -> Stopwatch:
        self.seconds.update(dict.fromkeys(self.targets, 0.0))
        for label, (owner, name) in self.targets.items():
            original = getattr(owner, name)
            self.saved.append((owner, name, name in vars(owner), original))
            setattr(owner, name, self.wrap(label, original))
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        for owner, name, own, original in reversed(self.saved):
            if own:
                setattr(owner, name, original)
            else:  # inherited: drop the wrapper so the base class's method shows through again
                delattr(owner, name)
        self.saved.clear()


def stopwatch() -> Stopwatch:
    """The parts of a backtest, timed inside the very run that is timed as a whole.

    Top level: load_model, predictions (cached_predictions: cache lookup or batch_predictions), frame_to_bars,
    run_backtesting (the strategy's on_init warm-up and the bar replay), calculate_result, calculate_statistics.
    Inside predictions: batch_predictions, and inside that features (build_features) and inference (model.predict).
    """
    import backtesting_module
    import ml_model
    import predictive_trading_strategy
    from backtesting_module import PreloadedBacktestingEngine

    return Stopwatch(
        {
            "load_model": (ml_model.PricePredictionModel, "load_model"),
            "predictions": (backtesting_module, "cached_predictions"),
            "batch_predictions": (backtesting_module, "batch_predictions"),
            "features": (predictive_trading_strategy, "build_features"),
            "inference": (ml_model.PricePredictionModel, "predict"),
            "frame_to_bars": (data_collector, "frame_to_bars"),
            "run_backtesting": (PreloadedBacktestingEngine, "run_backtesting"),
            "calculate_result": (PreloadedBacktestingEngine, "calculate_result"),
            "calculate_statistics": (PreloadedBacktestingEngine, "calculate_statistics"),
        }
    )


TOP_LEVEL = (
    "load_model",
    "predictions",
    "frame_to_bars",
    "run_backtesting",
    "calculate_result",
    "calculate_statistics",
)


def timed_cpu(action: Callable[..., Any], *args: Any) -> tuple[float, float, Any]:
    """Wall seconds, this process's CPU seconds (all threads) and the result of one call."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = action(*args)
    return time.perf_counter() - wall, time.process_time() - cpu, result


def run_double_ma(frame: pd.DataFrame, start: datetime, end: datetime) -> tuple[int, int]:
    """vnpy's DoubleMaStrategy on the bars in memory, engine creation to statistics; bars replayed and trades."""
    from vnpy.trader.constant import Interval
    from vnpy_ctastrategy.strategies.double_ma_strategy import DoubleMaStrategy

    from backtesting_module import PreloadedBacktestingEngine

    engine = PreloadedBacktestingEngine(data_collector.frame_to_bars(frame, VT_SYMBOL))
    engine.set_parameters(
        vt_symbol=VT_SYMBOL,
        interval=Interval.MINUTE,
        start=start,
        end=end,
        rate=RB_FACTS["rate"],
        slippage=RB_FACTS["slippage"],
        size=RB_FACTS["size"],
        pricetick=RB_FACTS["pricetick"],
        capital=CAPITAL,
    )
    engine.add_strategy(DoubleMaStrategy, {})
    engine.load_data()
    engine.run_backtesting()
    failure = engine.failure()
    if failure is not None:
        raise SystemExit(f"DoubleMaStrategy raised during the run:\n{failure}")
    engine.calculate_result()
    engine.calculate_statistics(output=False)
    return len(engine.history_data), len(engine.trades)


def run_ours(
    module: Any, frame: pd.DataFrame, start: datetime, end: datetime, bundle: Path, use_cache: bool
) -> tuple[int, int]:
    """BacktestingModule.run_backtest with the bars passed in; bars replayed and trades."""
    result = module.run_backtest(VT_SYMBOL, start, end, bundle, bars=frame, use_cache=use_cache)
    return len(result.bars), len(result.trades)


def train_bundle(model_type: str, bars: pd.DataFrame, folder: Path, epochs: int, train_stride: int) -> tuple[Path, str]:
    """Train a bundle in this process on bars before the backtest and save it; the LSTM only briefly."""

    def data_for(config: Any) -> Any:
        progress(f"prepare_training_data on {len(bars)} bars {bars.index[0]} .. {bars.index[-1]}")
        return data_processor.prepare_training_data(
            bars,
            VT_SYMBOL,
            horizon=config.horizon,
            sequence_length=config.sequence_length,
            features_count=config.features_count,
        )

    model, data, source, seconds = train_briefly(model_type, epochs, train_stride, data_for, progress)
    model.evaluate(data, "test")
    extra = {"vt_symbol": VT_SYMBOL, "interval": "1m", "ranges": data.split.ranges(data.index)}
    path = model.save_model(folder / model_type, extra=extra)
    return path, f"{source}, {seconds:.1f} s, on {len(bars)} bars {bars.index[0]:%Y-%m-%d} .. {bars.index[-1]:%Y-%m-%d}"


def bundle_type(path: str) -> str:
    """The model type a saved bundle declares."""
    from ml_model import read_metadata

    return str(read_metadata(Path(path))["model_type"])


def choose_bars(bars: pd.DataFrame, start: str | None, end: str, count: int) -> pd.DataFrame:
    """The traded bars: start..end (inclusive dates), or without --start the last `count` bars up to end."""
    finish = data_collector.to_china_time(end, end_of_day=True)
    if start is not None:
        return bars.loc[
            (bars.index >= pd.Timestamp(data_collector.to_china_time(start))) & (bars.index <= pd.Timestamp(finish))
        ]
    return bars.loc[bars.index <= pd.Timestamp(finish)].iloc[-count:]


@dataclass
class Runs:
    """The timed runs of one backtest: wall and CPU seconds, the parts' seconds, and bars replayed and trades."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    parts: list[dict[str, float]] = field(default_factory=list)
    counts: tuple[int, int] = (0, 0)

    def time(self, watch: Stopwatch, action: Callable[..., tuple[int, int]], *args: Any) -> None:
        with watch:
            wall, cpu, self.counts = timed_cpu(action, *args)
        self.wall.append(wall)
        self.cpu.append(cpu)
        self.parts.append(dict(watch.seconds))

    def figures(self, bars: int) -> dict[str, Any]:
        """Median seconds, bars/s and CPU seconds of the runs, and the median of each timed part."""
        median = statistics.median(self.wall)
        parts = {label: statistics.median(p[label] for p in self.parts) for label in self.parts[0]}
        breakdown = {label: round(value, 3) for label, value in parts.items()}
        breakdown["other"] = round(max(0.0, median - sum(parts[label] for label in TOP_LEVEL)), 3)
        return {
            "seconds": round(median, 3),
            "bars_per_s": round(bars / median),
            "seconds_each_run": [round(s, 3) for s in self.wall],
            "cpu_seconds": round(statistics.median(self.cpu), 3),
            "breakdown_seconds": {label: value for label, value in breakdown.items() if value > 0},
        }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the backtest benchmark and print its JSON object."""
    parser = argparse.ArgumentParser(description="回测速度基准 / backtest speed benchmark")
    add_input_arguments(parser)
    parser.add_argument(
        "--bars",
        type=int,
        default=100_000,
        help="未给 --start 时回测 --end 之前的最后几根K线 / traded bars when --start is not given",
    )
    parser.add_argument("--start", default=None, help="回测开始日期（可选）/ first traded date (optional)")
    parser.add_argument("--end", default="2016-06-30", help="回测结束日期（含）/ last traded date (inclusive)")
    parser.add_argument(
        "--repeat", type=int, default=1, help="每个回测重复次数取中位数 / runs of each backtest (median)"
    )
    parser.add_argument(
        "--train-bars",
        type=int,
        default=60_000,
        help="进程内训练用回测之前的几根K线 / bars before the backtest for in-process training",
    )
    parser.add_argument("--epochs", type=int, default=1, help="进程内 LSTM 训练轮数 / in-process LSTM epochs")
    parser.add_argument(
        "--train-stride",
        type=int,
        default=20,
        help="进程内 LSTM 每隔几个训练窗口取一个 / in-process LSTM training stride",
    )
    parser.add_argument("--skip-lstm", action="store_true", help="跳过 LSTM / skip the LSTM")
    parser.add_argument("--skip-forest", action="store_true", help="跳过随机森林 / skip the random forest")
    args = parser.parse_args(argv)
    if min(args.bars, args.repeat, args.train_bars, args.epochs, args.train_stride) < 1:
        parser.error("--bars, --repeat, --train-bars, --epochs and --train-stride must be ≥ 1")
    skips = {"random_forest": args.skip_forest, "lstm": args.skip_lstm}
    wanted = [t for t in MODEL_TYPES if not skips[t]]
    if not wanted:
        parser.error("nothing to do: both --skip-lstm and --skip-forest")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before Keras / TensorFlow are first imported
    began = time.perf_counter()
    load_before = os.getloadavg()

    progress(f"loading {args.csv}")
    everything = sample_bars(args.csv)
    traded = choose_bars(everything, args.start, args.end, args.bars)
    if len(traded) < 2:
        parser.error("fewer than 2 bars in the chosen range")
    start, end = traded.index[0].to_pydatetime(), traded.index[-1].to_pydatetime()
    frame = everything.loc[
        (everything.index >= pd.Timestamp(start - timedelta(days=WARMUP_DAYS)))
        & (everything.index <= pd.Timestamp(end))
    ]
    before = everything.loc[everything.index < frame.index[0]].iloc[-args.train_bars :]
    short_end = min(end, start + timedelta(days=WARMUP_RUN_DAYS))
    del everything
    progress(f"{len(traded)} traded bars {start} .. {end}, {len(frame) - len(traded)} warm-up bars before them")

    with tempfile.TemporaryDirectory(prefix="bench_backtest_") as folder:
        home = resolve_home(Path(folder) / "home")
        bind_vnpy_home(home, settings_for(home).database)  # before vnpy's first import: its folder is the temp home
        from backtesting_module import BacktestingModule

        bundles: dict[str, tuple[Path, str]] = {}
        for path in args.model:
            model_type = bundle_type(path)
            if model_type in bundles:
                parser.error(f"two --model bundles of type {model_type}")
            bundles[model_type] = (Path(path), f"bundle {path}")
        for model_type in wanted:
            if model_type not in bundles:
                if len(before) == 0:
                    parser.error("no bars before the backtest to train on: pass --model or a later range")
                bundles[model_type] = train_bundle(
                    model_type, before, Path(folder) / "bundles", args.epochs, args.train_stride
                )
        module = BacktestingModule(home)
        # What setup left alive (libraries, a Keras model trained here: ~350k objects with TensorFlow) would be
        # rescanned by every collection the timed runs trigger, doubling frame_to_bars; a backtest process holds none
        gc.collect()
        gc.freeze()

        progress(f"untimed first runs over {WARMUP_RUN_DAYS} days (imports, first calls)")
        run_double_ma(frame, start, short_end)
        for model_type in wanted:
            run_ours(module, frame, start, short_end, bundles[model_type][0], use_cache=False)

        watch = stopwatch()
        double_ma = Runs()
        cold = {t: Runs() for t in wanted}
        warm = {t: Runs() for t in wanted}
        for run in range(args.repeat):  # interleaved, so a slow spell of the machine hits every subject alike
            progress(f"double-MA backtest, run {run + 1}/{args.repeat}")
            double_ma.time(watch, run_double_ma, frame, start, end)
            for model_type in wanted:
                progress(f"{model_type} backtest, cache cold, run {run + 1}/{args.repeat}")
                cold[model_type].time(watch, run_ours, module, frame, start, end, bundles[model_type][0], False)

        fill: dict[str, float] = {}
        for model_type in wanted:
            progress(f"{model_type} backtest filling the prediction cache")
            fill[model_type], _, _ = timed_cpu(run_ours, module, frame, start, end, bundles[model_type][0], True)
        for run in range(args.repeat):
            for model_type in wanted:
                progress(f"{model_type} backtest, cache warm, run {run + 1}/{args.repeat}")
                warm[model_type].time(watch, run_ours, module, frame, start, end, bundles[model_type][0], True)
    gc.unfreeze()
    load_after = os.getloadavg()

    bars, double_ma_trades = double_ma.counts
    yardstick = {**double_ma.figures(bars), "trades": double_ma_trades}
    ours: dict[str, dict[str, Any]] = {}
    ratios: dict[str, float] = {}
    for model_type in wanted:
        replayed, trades = cold[model_type].counts
        if replayed != bars:
            raise SystemExit(f"{model_type} replayed {replayed} bars, the double-MA run {bars}: not the same bars")
        cold_figures = cold[model_type].figures(bars)
        warm_figures = warm[model_type].figures(bars)
        ratios[f"{model_type}_over_double_ma"] = round(cold_figures["seconds"] / yardstick["seconds"], 2)
        ours[model_type] = {
            "source": bundles[model_type][1],
            "trades": trades,
            "cache_cold": cold_figures,
            "cache_fill_seconds": round(fill[model_type], 3),
            "cache_warm": warm_figures,
            "cache_warm_over_double_ma": round(warm_figures["seconds"] / yardstick["seconds"], 2),
        }

    print(
        json.dumps(
            {
                "bars": bars,
                "warmup_bars": len(frame) - len(traded),
                "first_bar": start.isoformat(),
                "last_bar": end.isoformat(),
                "runs": args.repeat,
                "cpu_count": os.cpu_count(),
                "load_average_1min_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
                "versions": library_versions("vnpy", "vnpy_ctastrategy", "ta-lib"),
                "double_ma": yardstick,
                "double_ma_seconds_per_100k": round(yardstick["seconds"] * 100_000 / bars, 3),
                **ours,
                **ratios,
                "targets": {f"{t}_over_double_ma_max": RATIO_TARGET[t] for t in wanted},
                "targets_met": {
                    f"{t}_over_double_ma": ratios[f"{t}_over_double_ma"] <= RATIO_TARGET[t] for t in wanted
                },
                "bench_seconds": round(time.perf_counter() - began, 1),
                "note": "one process, the same bars for every run; each run is timed from the bars frame to vnpy's "
                "statistics "
                "(frame_to_bars, engine, warm-up, replay, calculate_result, calculate_statistics(output=False)); "
                "ours is BacktestingModule.run_backtest(bars=frame) and also loads the bundle and, with the cache "
                "cold (use_cache=False), builds every bar's features and runs batch inference; the ratios use the "
                "cold runs; cache_warm reads the predictions saved by cache_fill; breakdown_seconds are times inside "
                "the same runs (features and inference are inside batch_predictions, which is inside predictions; "
                "run_backtesting includes the strategy's on_init warm-up); cpu_seconds is this process's CPU time over "
                "all threads (batch inference runs one ONNX Runtime session per core), so a single-threaded run whose "
                "cpu_seconds falls well short of its seconds waited for a core, as does a high load average on this "
                "shared 2-core machine; objects alive after setup are moved out of the collector's reach (gc.freeze), "
                "so a Keras model trained here does not slow the runs' garbage collections; an untimed run over "
                f"the first {WARMUP_RUN_DAYS} days of each comes first; runs interleave and the figures are medians; "
                "an in-process LSTM is trained briefly because inference speed does not depend on how well trained "
                "its weights are; GUIDE §8 measured the double-MA run at "
                f"{GUIDE_DOUBLE_MA_SECONDS_PER_100K} s per 100k bars on this kind of machine",
            },
            ensure_ascii=False,
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
