"""Import and load the real sample, against vnpy's own save_bar_data / load_bar_data on the same bars in this run.

Usage: python bench/bench_data.py [--csv FILE] [--repeat N]
Prints one JSON object; the ratios are vnpy's time divided by ours (higher is better, target ≥ 3).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_common import timed  # noqa: E402

import data_collector  # noqa: E402
from config import CHINA_TZ, SAMPLE_BARS_CSV, bind_vnpy_home, resolve_home, settings_for  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description="数据导入/读取基准 / data import and load benchmark")
    parser.add_argument("--csv", default=str(SAMPLE_BARS_CSV), help="K线 CSV（默认示例数据）")
    parser.add_argument("--repeat", type=int, default=3, help="我们的导入与读取各重复几次取中位数")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        import_times, load_times = [], []
        for run in range(args.repeat):
            ours = resolve_home(Path(folder) / f"ours{run}")
            seconds, result = timed(data_collector.import_csv, args.csv, "rb0000.SHFE", timestamp="end", home=ours)
            import_times.append(seconds)
            seconds, frame = timed(
                data_collector.load_history_data, "rb0000.SHFE", "2000-01-01", "2099-12-31", home=ours
            )
            load_times.append(seconds)

        theirs = resolve_home(Path(folder) / "vnpy")
        bind_vnpy_home(theirs, settings_for(theirs).database)
        from vnpy.trader.constant import Exchange, Interval
        from vnpy.trader.database import get_database
        from vnpy.trader.object import BarData

        bars = [
            BarData(
                symbol="rb0000",
                exchange=Exchange.SHFE,
                interval=Interval.MINUTE,
                datetime=moment.to_pydatetime(),
                open_price=row.open,
                high_price=row.high,
                low_price=row.low,
                close_price=row.close,
                volume=row.volume,
                turnover=row.turnover,
                open_interest=row.open_interest,
                gateway_name="DB",
            )
            for moment, row in zip(frame.index, frame.itertuples(index=False), strict=True)
        ]
        database = get_database()
        vnpy_save, _ = timed(database.save_bar_data, bars)
        vnpy_load, loaded = timed(
            database.load_bar_data,
            "rb0000",
            Exchange.SHFE,
            Interval.MINUTE,
            datetime(2000, 1, 1, tzinfo=CHINA_TZ),
            datetime(2099, 12, 31, tzinfo=CHINA_TZ),
        )
        assert len(loaded) == result.stored
        assert loaded[0].datetime == frame.index[0]

    import_s, load_s = statistics.median(import_times), statistics.median(load_times)
    print(
        json.dumps(
            {
                "bars": result.stored,
                "import_csv_s": round(import_s, 3),
                "vnpy_save_bar_data_s": round(vnpy_save, 3),
                "import_ratio": round(vnpy_save / import_s, 2),
                "load_history_data_s": round(load_s, 3),
                "vnpy_load_bar_data_s": round(vnpy_load, 3),
                "load_ratio": round(vnpy_load / load_s, 2),
                "import_us_per_bar": round(import_s / result.stored * 1e6, 2),
                "load_us_per_bar": round(load_s / result.stored * 1e6, 2),
                "note": "import_csv includes reading, decompressing and validating the file; vnpy's save starts from "
                "ready BarData objects",
            },
            ensure_ascii=False,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
