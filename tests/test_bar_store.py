"""vnpy's bar and tick tables read and written directly: times, transactions, PostgreSQL's widened columns."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from vnpy.trader.constant import Exchange, Interval

import bar_store
import data_collector
from config import CHINA_TZ, SECRET_ENV, Home
from tests.conftest import PgServer, run_python, use_postgresql


def test_db_time_reads_naive_times_as_china_time_whatever_the_process_zone() -> None:
    naive = datetime(2024, 1, 2, 9, 0)  # noqa: DTZ001 - the naive input is what this test is about
    assert bar_store.db_time(naive) == "2024-01-02 09:00:00"
    assert bar_store.db_time(datetime(2024, 1, 2, 1, 0, tzinfo=UTC)) == "2024-01-02 09:00:00"
    moment = datetime(2024, 1, 2, 9, 0, 0, 500000, tzinfo=CHINA_TZ)
    assert bar_store.db_time(moment) == "2024-01-02 09:00:00.500000"


def test_stored_time_reads_sqlite_text_and_naive_server_times_as_china_time() -> None:
    moment = datetime(2024, 1, 2, 21, 5, 0, 500000, tzinfo=CHINA_TZ)
    assert bar_store.stored_time(bar_store.db_time(moment)) == moment
    assert bar_store.stored_time("2024-01-02 21:05:00").utcoffset() == CHINA_TZ.utcoffset(moment)
    naive = datetime(2024, 1, 2, 21, 5)  # noqa: DTZ001 - what PostgreSQL's TIMESTAMP columns give back
    assert bar_store.stored_time(naive) == datetime(2024, 1, 2, 13, 5, tzinfo=UTC)


def test_a_failed_commit_is_rolled_back_and_the_connection_stays_usable(home: Home) -> None:
    conn = bar_store.connect(data_collector.database_path(home))
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    conn.execute("CREATE TABLE child (pid INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)")
    with pytest.raises(sqlite3.IntegrityError):
        with bar_store.transaction(conn):
            conn.execute("INSERT INTO child VALUES (7)")
    assert not conn.in_transaction
    frame = pd.DataFrame({"datetime": [pd.Timestamp("2024-01-02 09:00", tz=CHINA_TZ)]})
    for name in bar_store.BAR_FIELDS:
        frame[name] = 2000.0
    saved = bar_store.save_bar_frame(conn, frame, "rb2405", Exchange.SHFE, Interval.MINUTE)
    conn.close()
    assert saved.stored == 1


def pg_rows(server: PgServer, database: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows of one statement, run in its own transaction on one of the test server's databases."""
    import psycopg2

    conn = psycopg2.connect(
        host=server.host, port=server.port, user=server.user, password=server.password, dbname=database
    )
    try:
        with conn, conn.cursor() as cursor:
            cursor.execute(sql)
            return list(cursor.fetchall()) if cursor.description else []
    finally:
        conn.close()


def test_tables_vnpy_postgresql_created_are_widened_so_prices_keep_every_digit(
    home: Home, tmp_path: Path, postgresql_server: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = postgresql_server.create_database()
    use_postgresql(home, postgresql_server, name, monkeypatch)
    created = run_python(
        "import config\n"
        "home = config.resolve_home(); config.bind_vnpy_home(home, config.settings_for(home).database)\n"
        "from vnpy.trader.database import get_database\n"
        "print(type(get_database()).__name__)\n",
        home.root,
        env={SECRET_ENV["db_password"]: postgresql_server.password},
    )
    assert created.stdout.strip() == "PostgresqlDatabase", created.stderr
    types = (
        "SELECT data_type FROM information_schema.columns WHERE table_name = 'dbbardata' AND column_name = 'turnover'"
    )
    assert pg_rows(postgresql_server, name, types) == [("real",)]  # peewee's FloatField: float4

    path = tmp_path / "if.csv"
    path.write_text(
        "datetime,open,high,low,close,volume,turnover\n"
        "2016-01-04 09:30:00,3456.2,3460.8,3455.4,3458.6,12,123456789.5\n",
        encoding="utf-8",
    )
    data_collector.import_csv(path, "IF1601.CFFEX", home=home)
    assert pg_rows(postgresql_server, name, types) == [("double precision",)]
    frame = data_collector.load_history_data("IF1601.CFFEX", "2016-01-04", "2016-01-04", home=home)
    assert frame.iloc[0].tolist() == [3456.2, 3460.8, 3455.4, 3458.6, 12.0, 123456789.5, 0.0]
