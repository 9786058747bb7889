"""Scaling of an optimisation grid: runs per minute with 1 worker, the local process pool, and Ray on this machine.

Usage: python bench/bench_scale.py [--csv FILE] [--model BUNDLE] [--start DATE] [--end DATE] [--workers N]
                                   [--thresholds N] [--trailing N]
Prints one JSON object: each backend's seconds and runs per minute over the same grid and job (real rb 1-minute bars,
a RandomForest bundle's predictions), the ratios against the 1-worker run of this same command, whether every
backend's results table is identical, the job's pickled size (what Ray's object store carries once) and the seconds
per run, from which docs/scaling.md projects N machines. Ray is started here on loopback (its start is not timed:
on a cluster it is already running; its workers' start and the job's transfer are). Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_backtest import VT_SYMBOL, WARMUP_DAYS, train_bundle  # noqa: E402
from bench_common import add_input_arguments, library_versions, sample_bars  # noqa: E402

import data_collector  # noqa: E402
from config import bind_vnpy_home, resolve_home, settings_for  # noqa: E402


def progress(message: str) -> None:
    """One progress line on stderr."""
    print(f"[bench_scale] {message}", file=sys.stderr, flush=True)


def search(optimizer: Any, job_path: Path, grid: dict[str, list[float]]) -> tuple[float, pd.DataFrame]:
    """Seconds of one grid search and its results table."""
    began = time.perf_counter()
    found = optimizer.search(job_path, grid, "grid", output=lambda message: None)
    return time.perf_counter() - began, found.table


def main(argv: Sequence[str] | None = None) -> int:
    """Run the scaling benchmark and print its JSON object."""
    parser = argparse.ArgumentParser(description="优化网格的扩展基准 / optimisation grid scaling benchmark")
    add_input_arguments(parser)
    parser.add_argument("--start", default="2015-07-01", help="回测开始日期 / first traded date")
    parser.add_argument("--end", default="2016-06-30", help="回测结束日期（含）/ last traded date")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="进程池与 Ray 的 CPU 数")
    parser.add_argument("--thresholds", type=int, default=4, help="prediction_threshold 的取值个数")
    parser.add_argument("--trailing", type=int, default=4, help="trailing_percent 的取值个数")
    args = parser.parse_args(argv)
    import ray

    progress(f"loading {args.csv}")
    everything = sample_bars(args.csv)
    start = data_collector.to_china_time(args.start)
    end = data_collector.to_china_time(args.end, end_of_day=True)
    frame = everything.loc[
        (everything.index >= pd.Timestamp(start - timedelta(days=WARMUP_DAYS)))
        & (everything.index <= pd.Timestamp(end))
    ]
    before = everything.loc[everything.index < frame.index[0]].iloc[-60_000:]
    del everything
    grid = {
        "prediction_threshold": [round(float(v), 6) for v in np.linspace(0.0003, 0.0015, args.thresholds)],
        "trailing_percent": [round(float(v), 3) for v in np.linspace(0.5, 1.5, args.trailing)],
    }
    runs = args.thresholds * args.trailing
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as folder:
        home = resolve_home(Path(folder) / "home")
        bind_vnpy_home(home, settings_for(home).database)
        import backtesting_module

        bundle = Path(args.model[0]) if args.model else train_bundle("random_forest", before, Path(folder), 1, 20)[0]
        module = backtesting_module.BacktestingModule(home)
        model = backtesting_module.load_checked(bundle, VT_SYMBOL, "1m")
        predictions, _ = backtesting_module.cached_predictions(model, frame, VT_SYMBOL, None)
        costs = module.costs(VT_SYMBOL, 1_000_000)
        setting = {**backtesting_module.strategy_costs(str(model.path), costs), **module.risk_parameters}
        job = backtesting_module.OptimizationJob(
            VT_SYMBOL, "1m", start, end, str(model.path), frame, predictions, costs, setting, "total_net_pnl"
        )
        job_path = Path(folder) / "job.pkl"
        job_path.write_bytes(pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL))
        progress(f"{runs} settings over {len(frame)} bars; job {job_path.stat().st_size / 1e6:.1f} MB")

        timings: dict[str, float] = {}
        tables: dict[str, pd.DataFrame] = {}
        for name, workers in (("one_worker", 1), ("local_pool", args.workers)):
            progress(f"{name}: {workers} process(es)")
            timings[name], tables[name] = search(backtesting_module.Optimizer(module, workers), job_path, grid)
        ray.init(num_cpus=args.workers, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
        try:
            progress(f"ray: {args.workers} CPUs on this machine")
            timings["ray"], tables["ray"] = search(backtesting_module.Optimizer(module, backend="ray"), job_path, grid)
        finally:
            ray.shutdown()

    baseline = timings["one_worker"]
    print(
        json.dumps(
            {
                "bench": "scale",
                "grid_runs": runs,
                "bars_per_run": len(frame),
                "workers": args.workers,
                "cpu_count": os.cpu_count(),
                "job_bytes": len(pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)),
                "seconds_per_run_one_worker": round(baseline / runs, 3),
                "backends": {
                    name: {
                        "seconds": round(seconds, 2),
                        "runs_per_minute": round(runs / seconds * 60, 1),
                        "speedup_over_one_worker": round(baseline / seconds, 2),
                    }
                    for name, seconds in timings.items()
                },
                "identical_tables": all(table.equals(tables["one_worker"]) for table in tables.values()),
                "load_average_after": [round(v, 2) for v in os.getloadavg()],
                "versions": library_versions("ray"),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
