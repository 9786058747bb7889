"""Import and load the real sample, against vnpy's own save_bar_data / load_bar_data on the same bars in this run.

Usage: python bench/bench_data.py [--csv FILE] [--repeat N] [--database sqlite|postgresql] [--home HOME]
Prints one JSON object; the ratios are vnpy's time divided by ours (higher is better; targets: SQLite ≥ 10,
PostgreSQL ≥ 5 on import).

With `--database postgresql` the server is the one HOME's settings/database.json names (password from
AI_TRADER_DB_PASSWORD or HOME's secrets file): the bench creates a database `ai_trader_bench` there (the user needs
CREATEDB), empties its tables before each import, runs ours and vnpy_postgresql's on it, and drops it at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_common import timed  # noqa: E402

import data_collector  # noqa: E402
from config import (  # noqa: E402
    CHINA_TZ,
    SAMPLE_BARS_CSV,
    DatabaseSettings,
    Home,
    bind_vnpy_home,
    load_secrets,
    resolve_home,
    settings_for,
)

BENCH_DATABASE: str = "ai_trader_bench"
VNPY_TABLES: str = '"dbbardata", "dbbaroverview", "dbtickdata", "dbtickoverview"'

Prepare = Callable[[Home], None]  # makes a fresh home use the benched database, with empty tables


def sqlite_homes() -> Prepare:
    """Each home keeps the default: a new SQLite file of its own."""
    return lambda home: None


@contextmanager
def postgresql_homes(server: DatabaseSettings, password: str) -> Iterator[Prepare]:
    """Homes on a scratch database of the configured server, emptied for each; the database is dropped at the end."""
    import psycopg2

    def admin(statement: str, database: str) -> None:
        conn = psycopg2.connect(
            host=server.host, port=server.port, user=server.user, password=password or None, dbname=database
        )
        try:
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(statement)
        finally:
            conn.close()

    def prepare(home: Home) -> None:
        home.settings_dir.mkdir(parents=True, exist_ok=True)
        settings = asdict(replace(server, database=BENCH_DATABASE))
        (home.settings_dir / "database.json").write_text(json.dumps(settings), encoding="utf-8")
        admin(f"DROP TABLE IF EXISTS {VNPY_TABLES}", BENCH_DATABASE)

    admin(f'DROP DATABASE IF EXISTS "{BENCH_DATABASE}" WITH (FORCE)', server.database)
    admin(f'CREATE DATABASE "{BENCH_DATABASE}"', server.database)
    try:
        yield prepare
    finally:
        admin(f'DROP DATABASE IF EXISTS "{BENCH_DATABASE}" WITH (FORCE)', server.database)


def run(args: argparse.Namespace, folder: Path, prepare: Prepare) -> dict[str, Any]:
    """Our import and load `repeat` times, then vnpy's own save and load of the same bars once."""
    import_times, load_times = [], []
    for attempt in range(args.repeat):
        ours = resolve_home(folder / f"ours{attempt}")
        prepare(ours)
        seconds, result = timed(data_collector.import_csv, args.csv, "rb0000.SHFE", timestamp="end", home=ours)
        import_times.append(seconds)
        seconds, frame = timed(data_collector.load_history_data, "rb0000.SHFE", "2000-01-01", "2099-12-31", home=ours)
        load_times.append(seconds)

    theirs = resolve_home(folder / "vnpy")
    prepare(theirs)
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
    close = getattr(getattr(database, "db", None), "close", None)
    if close is not None:  # vnpy_postgresql's connection, before its database is dropped
        close()

    import_s, load_s = statistics.median(import_times), statistics.median(load_times)
    return {
        "database": args.database,
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
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="数据导入/读取基准 / data import and load benchmark")
    parser.add_argument("--csv", default=str(SAMPLE_BARS_CSV), help="K线 CSV（默认示例数据）")
    parser.add_argument("--repeat", type=int, default=3, help="我们的导入与读取各重复几次取中位数")
    parser.add_argument(
        "--database", choices=("sqlite", "postgresql"), default="sqlite", help="sqlite（临时文件）或 postgresql"
    )
    parser.add_argument("--home", default=None, help="postgresql：其 settings/database.json 指向的服务器")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        if args.database == "sqlite":
            figures = run(args, Path(folder), sqlite_homes())
        else:
            home = resolve_home(args.home)
            server = settings_for(home).database
            if server.name != "postgresql":
                parser.error(f"{home.root} 的 database.json 不是 postgresql / the home does not name a server")
            with postgresql_homes(server, load_secrets(home).get("db_password")) as prepare:
                figures = run(args, Path(folder), prepare)
    print(json.dumps(figures, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
