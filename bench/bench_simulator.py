"""The strategy simulator against vnpy's BacktestingEngine running PredictiveTradingStrategy, same bars and predictions.

Usage: python bench/bench_simulator.py [--csv FILE] [--bars N] [--end DATE] [--repeat N] [--settings N]
Prints one JSON object: the engine's seconds for one setting (frame to statistics, median of --repeat runs), the
simulator's (median of many runs, compiled), their ratio (target ≥ 100×), the first call's compile or cache-load time,
the plain-Python kernel's time, the time for --settings settings, and whether the trades were the engine's.
Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_common import library_versions, sample_bars, timed  # noqa: E402

import data_collector  # noqa: E402
from config import SAMPLE_BARS_CSV, bind_vnpy_home, resolve_home, settings_for  # noqa: E402
from trade_simulator import Simulation, SimulationBars, SimulationSettings, simulate  # noqa: E402
from trading_calendar import causal_trading_days  # noqa: E402

VT_SYMBOL = "rb0000.SHFE"
WARMUP_DAYS = 10  # the strategy's default warmup_days: bars the engine replays untraded before the start
SPEEDUP_TARGET = 100.0
SETTING = SimulationSettings(threshold=0.0012)  # the strategy's defaults with rb's costs (settings/contracts.toml)


def progress(message: str) -> None:
    """One progress line on stderr."""
    print(f"[bench_simulator] {message}", file=sys.stderr, flush=True)


def predictions_for(close: np.ndarray) -> np.ndarray:
    """Deterministic causal stand-ins for a model's predictions: half the last 10-bar return plus noise, 7% missing
    (speed depends on how often the strategy trades, not on where the numbers come from)."""
    rng = np.random.default_rng(15)
    past = np.r_[np.full(10, np.nan), close[:-10]]
    predictions: np.ndarray = (close / past - 1) * 0.5 + rng.normal(0, 0.0005, len(close))
    predictions[rng.random(len(close)) < 0.07] = np.nan
    return predictions


def run_engine(frame: pd.DataFrame, start: pd.Timestamp, predictions: np.ndarray) -> tuple[list[tuple], float]:
    """PredictiveTradingStrategy on vnpy's engine, frame to statistics; its trades and net P&L."""
    from backtesting_module import PreloadedBacktestingEngine, replay, set_engine_parameters
    from ml_model import PricePredictionModel
    from predictive_trading_strategy import PrecomputedSignal, PredictiveTradingStrategy

    engine = PreloadedBacktestingEngine(data_collector.frame_to_bars(frame, VT_SYMBOL))
    end = frame.index[-1].to_pydatetime()
    set_engine_parameters(engine, VT_SYMBOL, "1m", start.to_pydatetime(), end, SETTING.engine_costs())
    engine.add_strategy(PredictiveTradingStrategy, SETTING.strategy_setting())
    model = PricePredictionModel("random_forest")  # only its identity is read: the predictions are given
    engine.strategy.signal = PrecomputedSignal(model, pd.DatetimeIndex(frame.index), predictions)
    replay(engine)
    engine.calculate_result()
    net = float(engine.calculate_statistics(output=False)["total_net_pnl"])
    trades = sorted(engine.trades.values(), key=lambda trade: int(trade.tradeid))
    return [(pd.Timestamp(t.datetime), t.direction.name, t.offset.name, t.price, t.volume) for t in trades], net


def simulated_trades(simulation: Simulation, index: pd.DatetimeIndex) -> list[tuple]:
    """The simulator's trades in the engine's terms."""
    sides, offsets = {1: "LONG", -1: "SHORT"}, {1: "OPEN", 0: "CLOSE"}
    return [
        (index[b], sides[int(d)], offsets[int(o)], float(p), float(v))
        for b, d, o, p, v in zip(
            simulation.bar, simulation.direction, simulation.offset, simulation.price, simulation.volume, strict=True
        )
    ]


def grid(count: int) -> list[SimulationSettings]:
    """`count` settings: thresholds × trailing stops × sizes, as an optimisation or a threshold search tries them."""
    thresholds = np.linspace(0.0004, 0.003, 10)
    others = [(trailing, size) for size in (1, 2) for trailing in (0.0, 0.4, 0.8, 1.2, 1.6)]
    settings = [
        SimulationSettings(threshold=float(t), trailing_percent=trailing, fixed_size=size)
        for trailing, size in others
        for t in thresholds
    ]
    return (settings * (count // len(settings) + 1))[:count]


def main(argv: list[str] | None = None) -> int:
    """Run the simulator benchmark and print its JSON object."""
    parser = argparse.ArgumentParser(description="策略模拟器速度基准 / strategy simulator benchmark")
    parser.add_argument("--csv", default=str(SAMPLE_BARS_CSV), help="K线 CSV（默认示例数据）/ bar CSV")
    parser.add_argument("--bars", type=int, default=100_000, help="--end 之前的最后几根K线 / traded bars")
    parser.add_argument("--end", default="2016-06-30", help="最后交易日（含）/ last traded date (inclusive)")
    parser.add_argument("--repeat", type=int, default=3, help="引擎回测次数取中位数 / engine runs (median)")
    parser.add_argument("--settings", type=int, default=50, help="参数组数 / settings in the sweep")
    args = parser.parse_args(argv)
    if min(args.bars, args.repeat, args.settings) < 1:
        parser.error("--bars, --repeat and --settings must be ≥ 1")
    began = time.perf_counter()
    load_before = os.getloadavg()

    progress(f"loading {args.csv}")
    everything = sample_bars(args.csv)
    finish = pd.Timestamp(data_collector.to_china_time(args.end, end_of_day=True))
    traded = everything.loc[everything.index <= finish].iloc[-args.bars :]
    start = pd.Timestamp(traded.index[0])
    frame = everything.loc[(everything.index >= start - timedelta(days=WARMUP_DAYS)) & (everything.index <= finish)]
    del everything
    predictions = predictions_for(frame["close"].to_numpy())
    first = len(frame) - len(traded)
    progress(f"{len(traded)} traded bars {start} .. {traded.index[-1]}, {first} warm-up bars before them")

    with tempfile.TemporaryDirectory(prefix="bench_simulator_") as folder:
        home = resolve_home(Path(folder) / "home")
        bind_vnpy_home(home, settings_for(home).database)  # before vnpy's first import: its folder is the temp home
        progress("untimed first engine run over 3 days (imports, first calls)")
        short = frame.loc[frame.index <= start + timedelta(days=3)]
        run_engine(short, start, predictions[: len(short)])
        engine_seconds = []
        for run in range(args.repeat):
            progress(f"engine run {run + 1}/{args.repeat}")
            seconds, (engine_trades, engine_net) = timed(run_engine, frame, start, predictions)
            engine_seconds.append(seconds)

    prepare_seconds, bars = timed(
        lambda: SimulationBars.from_frame(traded, causal_trading_days(pd.DatetimeIndex(traded.index)))
    )
    ours = predictions[first:]
    first_call, simulation = timed(simulate, bars, ours, SETTING)
    equal = simulated_trades(simulation, pd.DatetimeIndex(traded.index)) == engine_trades
    equal = equal and abs(simulation.net_pnl - engine_net) < 0.005
    simulator_seconds = [timed(simulate, bars, ours, SETTING)[0] for _ in range(50)]
    plain_seconds, _ = timed(simulate, bars, ours, SETTING, jit=False)
    sweep = grid(args.settings)
    sweep_seconds, results = timed(lambda: [simulate(bars, ours, setting) for setting in sweep])
    best = max(range(len(sweep)), key=lambda i: results[i].net_pnl)
    load_after = os.getloadavg()

    engine_median = statistics.median(engine_seconds)
    simulator_median = statistics.median(simulator_seconds)
    speedup = engine_median / simulator_median
    figures: dict[str, Any] = {
        "bars": len(traded),
        "warmup_bars": first,
        "first_bar": start.isoformat(),
        "last_bar": traded.index[-1].isoformat(),
        "cpu_count": os.cpu_count(),
        "load_average_1min_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "versions": library_versions("vnpy", "vnpy_ctastrategy", "numba", "llvmlite"),
        "setting": SETTING.strategy_setting(),
        "trades": simulation.trade_count,
        "trades_equal_to_engine": equal,
        "engine_seconds": round(engine_median, 3),
        "engine_seconds_each_run": [round(s, 3) for s in engine_seconds],
        "engine_bars_per_s": round(len(traded) / engine_median),
        "simulator_seconds": round(simulator_median, 5),
        "simulator_bars_per_s": round(len(traded) / simulator_median),
        "simulator_over_engine_speedup": round(speedup, 1),
        "simulator_first_call_seconds": round(first_call, 3),
        "simulator_prepare_bars_seconds": round(prepare_seconds, 3),
        "plain_python_kernel_seconds": round(plain_seconds, 3),
        "plain_python_over_engine_speedup": round(engine_median / plain_seconds, 1),
        "sweep_settings": len(sweep),
        "sweep_seconds": round(sweep_seconds, 3),
        "sweep_best": {**sweep[best].strategy_setting(), "net_pnl": round(results[best].net_pnl, 2)},
        "target": {"simulator_over_engine_speedup_min": SPEEDUP_TARGET},
        "target_met": speedup >= SPEEDUP_TARGET and equal,
        "bench_seconds": round(time.perf_counter() - began, 1),
        "note": "one process, the same bars and predictions for every run; the engine is timed from the bars frame "
        "to vnpy's statistics (frame_to_bars, engine, the strategy's warm-up over the "
        f"{WARMUP_DAYS} days before the start, replay, calculate_result, calculate_statistics(output=False)) with "
        "the predictions handed in as a PrecomputedSignal, so neither side runs a model; the simulator is timed "
        "per simulate() call on prepared arrays (median of 50; preparing them once is "
        "simulator_prepare_bars_seconds), after a first call that compiles the kernel or loads it from numba's "
        "disk cache (simulator_first_call_seconds); the predictions are causal stand-ins (half the last 10-bar "
        "return plus noise): speed depends on how often the strategy trades, not on the model; the sweep runs "
        "the settings one after another in this process",
    }
    print(json.dumps(figures, ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
