"""数据库存取 / vnpy's bar and tick tables read and written directly on SQLite and PostgreSQL: the fast paths behind
data_collector's import, load and recorder."""

from __future__ import annotations

import csv
import io
import logging
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from vnpy.trader.constant import Exchange, Interval
from vnpy.trader.object import TickData

from config import (
    CHINA_TZ,
    SECRET_ENV,
    AppError,
    ConfigError,
    DatabaseSettings,
    DataError,
    TransientError,
)

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]

BAR_FIELDS: tuple[str, ...] = ("open", "high", "low", "close", "volume", "turnover", "open_interest")
PRICE_FIELDS: tuple[str, ...] = ("open", "high", "low", "close")
WRITE_CHUNK: int = 50_000


# --- times as vnpy's tables hold them: naive China time ------------------------------------------------------


def _naive_china(value: datetime) -> datetime:
    """A datetime as the naive China time vnpy's tables hold (a naive input is taken as China time)."""
    return value if value.tzinfo is None else value.astimezone(CHINA_TZ).replace(tzinfo=None)


def db_time(value: datetime) -> str:
    """Format a datetime the way vnpy's sqlite adapter stores it: naive China time, `str()` of the datetime.

    A naive datetime is taken as China time (vnpy's convention), never as the process's local zone.
    """
    return str(_naive_china(value))


def stored_time(value: str | datetime) -> datetime:
    """A time read back from vnpy's tables (SQLite text or a naive datetime, China time) as an aware datetime."""
    parsed = datetime.fromisoformat(value) if isinstance(value, str) else value
    return parsed.replace(tzinfo=CHINA_TZ) if parsed.tzinfo is None else parsed.astimezone(CHINA_TZ)


# --- the SQLite store (vnpy_sqlite's tables, written and read directly); each function also takes a PgConnection --

SCHEMA: tuple[str, ...] = (
    'CREATE TABLE IF NOT EXISTS "dbbardata" ("id" INTEGER NOT NULL PRIMARY KEY, "symbol" VARCHAR(255) NOT NULL, '
    '"exchange" VARCHAR(255) NOT NULL, "datetime" DATETIME NOT NULL, "interval" VARCHAR(255) NOT NULL, '
    '"volume" REAL NOT NULL, "turnover" REAL NOT NULL, "open_interest" REAL NOT NULL, "open_price" REAL NOT NULL, '
    '"high_price" REAL NOT NULL, "low_price" REAL NOT NULL, "close_price" REAL NOT NULL)',
    'CREATE UNIQUE INDEX IF NOT EXISTS "dbbardata_symbol_exchange_interval_datetime" ON "dbbardata" '
    '("symbol", "exchange", "interval", "datetime")',
    'CREATE TABLE IF NOT EXISTS "dbtickdata" ("id" INTEGER NOT NULL PRIMARY KEY, "symbol" VARCHAR(255) NOT NULL, '
    '"exchange" VARCHAR(255) NOT NULL, "datetime" DATETIME NOT NULL, "name" VARCHAR(255) NOT NULL, '
    '"volume" REAL NOT NULL, "turnover" REAL NOT NULL, "open_interest" REAL NOT NULL, "last_price" REAL NOT NULL, '
    '"last_volume" REAL NOT NULL, "limit_up" REAL NOT NULL, "limit_down" REAL NOT NULL, "open_price" REAL NOT NULL, '
    '"high_price" REAL NOT NULL, "low_price" REAL NOT NULL, "pre_close" REAL NOT NULL, '
    '"bid_price_1" REAL NOT NULL, "bid_price_2" REAL, "bid_price_3" REAL, "bid_price_4" REAL, "bid_price_5" REAL, '
    '"ask_price_1" REAL NOT NULL, "ask_price_2" REAL, "ask_price_3" REAL, "ask_price_4" REAL, "ask_price_5" REAL, '
    '"bid_volume_1" REAL NOT NULL, "bid_volume_2" REAL, "bid_volume_3" REAL, "bid_volume_4" REAL, '
    '"bid_volume_5" REAL, "ask_volume_1" REAL NOT NULL, "ask_volume_2" REAL, "ask_volume_3" REAL, '
    '"ask_volume_4" REAL, "ask_volume_5" REAL, "localtime" DATETIME)',
    'CREATE UNIQUE INDEX IF NOT EXISTS "dbtickdata_symbol_exchange_datetime" ON "dbtickdata" '
    '("symbol", "exchange", "datetime")',
    'CREATE TABLE IF NOT EXISTS "dbbaroverview" ("id" INTEGER NOT NULL PRIMARY KEY, "symbol" VARCHAR(255) NOT NULL, '
    '"exchange" VARCHAR(255) NOT NULL, "interval" VARCHAR(255) NOT NULL, "count" INTEGER NOT NULL, '
    '"start" DATETIME NOT NULL, "end" DATETIME NOT NULL)',
    'CREATE UNIQUE INDEX IF NOT EXISTS "dbbaroverview_symbol_exchange_interval" ON "dbbaroverview" '
    '("symbol", "exchange", "interval")',
    'CREATE TABLE IF NOT EXISTS "dbtickoverview" ("id" INTEGER NOT NULL PRIMARY KEY, "symbol" VARCHAR(255) NOT NULL, '
    '"exchange" VARCHAR(255) NOT NULL, "count" INTEGER NOT NULL, "start" DATETIME NOT NULL, '
    '"end" DATETIME NOT NULL)',
    'CREATE UNIQUE INDEX IF NOT EXISTS "dbtickoverview_symbol_exchange" ON "dbtickoverview" ("symbol", "exchange")',
)

BAR_COLUMNS: tuple[str, ...] = (
    "volume",
    "turnover",
    "open_interest",
    "open_price",
    "high_price",
    "low_price",
    "close_price",
)
TICK_COLUMNS: tuple[str, ...] = (
    "name",
    "volume",
    "turnover",
    "open_interest",
    "last_price",
    "last_volume",
    "limit_up",
    "limit_down",
    "open_price",
    "high_price",
    "low_price",
    "pre_close",
    *(
        f"{side}_{kind}_{level}"
        for side, kind in (("bid", "price"), ("ask", "price"), ("bid", "volume"), ("ask", "volume"))
        for level in range(1, 6)
    ),
    "localtime",
)


def _upsert_sql(table: str, keys: tuple[str, ...], values: tuple[str, ...]) -> str:
    """Insert rows; on a key clash update only rows whose values differ, so re-saving the same data changes nothing."""
    cols = ", ".join(f'"{c}"' for c in (*keys, *values))
    marks = ", ".join("?" for _ in (*keys, *values))
    key_cols = ", ".join(f'"{c}"' for c in keys)
    assign = ", ".join(f'"{c}" = excluded."{c}"' for c in values)
    old = ", ".join(f'"{c}"' for c in values)
    new = ", ".join(f'excluded."{c}"' for c in values)
    return (
        f'INSERT INTO "{table}" ({cols}) VALUES ({marks}) ON CONFLICT ({key_cols}) DO UPDATE SET {assign} '
        f"WHERE ({old}) IS NOT ({new})"
    )


BAR_UPSERT: str = _upsert_sql("dbbardata", ("symbol", "exchange", "interval", "datetime"), BAR_COLUMNS)
TICK_UPSERT: str = _upsert_sql("dbtickdata", ("symbol", "exchange", "datetime"), TICK_COLUMNS)

BAR_OVERVIEW_REFRESH: str = """
INSERT INTO "dbbaroverview" ("symbol", "exchange", "interval", "count", "start", "end")
SELECT "symbol", "exchange", "interval", COUNT(*), MIN("datetime"), MAX("datetime") FROM "dbbardata"
WHERE "symbol" = ? AND "exchange" = ? AND "interval" = ? GROUP BY "symbol", "exchange", "interval"
ON CONFLICT ("symbol", "exchange", "interval") DO UPDATE SET
"count" = excluded."count", "start" = excluded."start", "end" = excluded."end"
WHERE ("count", "start", "end") IS NOT (excluded."count", excluded."start", excluded."end")
"""
TICK_OVERVIEW_REFRESH: str = """
INSERT INTO "dbtickoverview" ("symbol", "exchange", "count", "start", "end")
SELECT "symbol", "exchange", COUNT(*), MIN("datetime"), MAX("datetime") FROM "dbtickdata"
WHERE "symbol" = ? AND "exchange" = ? GROUP BY "symbol", "exchange"
ON CONFLICT ("symbol", "exchange") DO UPDATE SET
"count" = excluded."count", "start" = excluded."start", "end" = excluded."end"
WHERE ("count", "start", "end") IS NOT (excluded."count", excluded."start", excluded."end")
"""


def connect(path: Path) -> sqlite3.Connection:
    """Open the database in autocommit mode (transactions are explicit) with vnpy's tables present."""
    try:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        for statement in SCHEMA:
            conn.execute(statement)
    except sqlite3.DatabaseError as exc:
        raise DataError(f"无法打开数据库 {path}：{exc} / cannot open database") from None
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """All or nothing: commit on success, roll back on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # also after a failed COMMIT, so the connection stays usable
            conn.execute("ROLLBACK")
        raise


@dataclass
class SaveResult:
    """Rows written by one save."""

    inserted: int
    updated: int
    unchanged: int
    stored: int


BAR_DELETE: str = 'DELETE FROM "dbbardata" WHERE "symbol" = ? AND "exchange" = ? AND "interval" = ?'
BAR_COUNT: str = 'SELECT COUNT(*) FROM "dbbardata" WHERE "symbol" = ? AND "exchange" = ? AND "interval" = ?'


def _count_bars(conn: sqlite3.Connection, key: tuple[str, str, str]) -> int:
    return int(conn.execute(BAR_COUNT, key).fetchone()[0])


def format_db_times(times: pd.Series) -> list[str]:
    """Aware datetimes as vnpy's sqlite text (`YYYY-MM-DD HH:MM:SS`, China time); whole seconds only."""
    naive = times.dt.tz_convert(CHINA_TZ).dt.tz_localize(None).to_numpy("datetime64[s]")
    days = naive.astype("datetime64[D]")
    day_codes, unique_days = pd.factorize(days)
    second_codes, unique_seconds = pd.factorize((naive - days).astype("int64"))
    day_text = np.array([str(d) for d in unique_days.astype("datetime64[D]")], dtype=object)
    second_text = np.array([f" {s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}" for s in unique_seconds], dtype=object)
    texts: list[str] = (day_text[day_codes] + second_text[second_codes]).tolist()
    return texts


def _bar_rows(frame: pd.DataFrame, key: tuple[str, str, str]) -> Iterator[tuple[Any, ...]]:
    """Rows for BAR_UPSERT from a bar frame (columns `datetime` and BAR_FIELDS)."""
    columns = [frame[name].tolist() for name in ("volume", "turnover", "open_interest", *PRICE_FIELDS)]
    return zip(*(repeat(part) for part in key), format_db_times(frame["datetime"]), *columns, strict=False)


def _chunks(frame: pd.DataFrame, progress: Progress | None) -> Iterator[pd.DataFrame]:
    """The frame WRITE_CHUNK rows at a time; after each chunk is written, `progress` hears how many are."""
    for start in range(0, len(frame), WRITE_CHUNK):
        yield frame.iloc[start : start + WRITE_CHUNK]
        if progress:
            progress(f"写入 / writing {min(start + WRITE_CHUNK, len(frame)):,}/{len(frame):,}")


def save_bar_frame(
    conn: Connection,
    frame: pd.DataFrame,
    symbol: str,
    exchange: Exchange,
    interval: Interval,
    progress: Progress | None = None,
    replace_all: bool = False,
) -> SaveResult:
    """Upsert bars and refresh vnpy's bar overview in one transaction; `replace_all` first deletes every stored bar of
    the symbol and interval in the same transaction (a rebuilt series replaces the old one, or nothing changes)."""
    if isinstance(conn, PgConnection):
        return _pg_save_bar_frame(conn, frame, symbol, exchange, interval, progress, replace_all)
    key = (symbol, exchange.value, interval.value)
    with transaction(conn):
        if replace_all:
            conn.execute(BAR_DELETE, key)
        before = _count_bars(conn, key)
        changes = conn.total_changes
        for chunk in _chunks(frame, progress):
            conn.executemany(BAR_UPSERT, _bar_rows(chunk, key))
        written = conn.total_changes - changes
        stored = _count_bars(conn, key)
        conn.execute(BAR_OVERVIEW_REFRESH, key)
    inserted = stored - before
    return SaveResult(inserted, written - inserted, len(frame) - written, stored)


def _tick_row(tick: TickData) -> tuple[Any, ...]:
    """A row for TICK_UPSERT."""
    values = [getattr(tick, name) for name in TICK_COLUMNS]
    values[-1] = db_time(tick.localtime) if tick.localtime else None
    return (tick.symbol, tick.exchange.value, db_time(tick.datetime), *values)


def save_ticks(conn: Connection, ticks: list[TickData]) -> int:
    """Upsert ticks (any symbols) and refresh vnpy's tick overview in one transaction; returns rows written."""
    if isinstance(conn, PgConnection):
        return _pg_save_ticks(conn, ticks)
    with transaction(conn):
        changes = conn.total_changes
        conn.executemany(TICK_UPSERT, map(_tick_row, ticks))
        written = conn.total_changes - changes
        for key in sorted({(t.symbol, t.exchange.value) for t in ticks}):
            conn.execute(TICK_OVERVIEW_REFRESH, key)
    return written


def _frame_from_rows(rows: list[tuple[Any, ...]]) -> pd.DataFrame:
    """Bars fetched as (datetime text, open, high, low, close, volume, turnover, open_interest)."""
    frame = pd.DataFrame.from_records(rows, columns=["datetime", *BAR_FIELDS], coerce_float=True)
    times = pd.to_datetime(frame.pop("datetime"), format="ISO8601")
    frame.index = pd.DatetimeIndex(times.dt.tz_localize(CHINA_TZ), name="datetime")
    return frame.astype("float64")


def load_bar_frame(
    conn: Connection, symbol: str, exchange: Exchange, interval: Interval, start: datetime, end: datetime
) -> pd.DataFrame:
    """Bars in [start, end] ordered by time, indexed by bar start (China time)."""
    if isinstance(conn, PgConnection):
        return _pg_load_bar_frame(conn, symbol, exchange, interval, start, end)
    rows = conn.execute(
        'SELECT "datetime", "open_price", "high_price", "low_price", "close_price", "volume", "turnover", '
        '"open_interest" FROM "dbbardata" WHERE "symbol" = ? AND "exchange" = ? AND "interval" = ? '
        'AND "datetime" >= ? AND "datetime" <= ? ORDER BY "datetime"',
        (symbol, exchange.value, interval.value, db_time(start), db_time(end)),
    ).fetchall()
    return _frame_from_rows(rows)


@dataclass
class StoredSeries:
    """One row of what the database holds (from vnpy's overview tables)."""

    vt_symbol: str
    interval: str
    count: int
    first: datetime
    last: datetime


OVERVIEW_SELECT: str = (
    'SELECT "symbol", "exchange", "interval", "count", "start", "end" FROM "dbbaroverview" '
    'UNION ALL SELECT "symbol", "exchange", \'tick\', "count", "start", "end" FROM "dbtickoverview" ORDER BY 1, 2, 3'
)


def stored_series(conn: Connection) -> list[StoredSeries]:
    """Every stored bar series and tick series, as vnpy's overview tables record them."""
    rows = _pg_overview_rows(conn) if isinstance(conn, PgConnection) else conn.execute(OVERVIEW_SELECT).fetchall()
    return [
        StoredSeries(f"{symbol}.{exchange}", interval, int(count), stored_time(start), stored_time(end))
        for symbol, exchange, interval, count, start, end in rows
    ]


def load_tick_rows(conn: Connection, symbol: str, exchange: Exchange, start: datetime, end: datetime) -> list[Any]:
    """Stored tick rows ("datetime", then TICK_COLUMNS) in [start, end], oldest first."""
    if isinstance(conn, PgConnection):
        return _pg_tick_rows(conn, symbol, exchange, start, end)
    return conn.execute(
        f'SELECT "datetime", {_columns(TICK_COLUMNS)} FROM "dbtickdata" WHERE "symbol" = ? AND "exchange" = ? '
        'AND "datetime" >= ? AND "datetime" <= ? ORDER BY "datetime"',
        (symbol, exchange.value, db_time(start), db_time(end)),
    ).fetchall()


def stored_tick(row: tuple[Any, ...], symbol: str, exchange: Exchange) -> TickData:
    """A TickData from one dbtickdata row ("datetime", then TICK_COLUMNS); NULL numbers read as 0."""
    moment, *values = row
    fields = dict(zip(TICK_COLUMNS, values, strict=True))
    localtime = fields.pop("localtime")
    name = fields.pop("name") or ""
    numbers = {key: float(value) if value is not None else 0.0 for key, value in fields.items()}
    return TickData(
        gateway_name="DB",
        symbol=symbol,
        exchange=exchange,
        datetime=stored_time(moment),
        name=name,
        localtime=stored_time(localtime) if localtime else None,
        **numbers,
    )


# --- the PostgreSQL store (vnpy_postgresql's tables: COPY into a stage, one merge; COPY out for loads) -------

PG_EPOCH_US: int = 946_684_800_000_000  # 2000-01-01, the origin of PostgreSQL's binary timestamps, in Unix µs
PG_COPY_SIGNATURE: bytes = b"PGCOPY\n\xff\r\n\x00"
PG_COPY_HEADER: bytes = PG_COPY_SIGNATURE + bytes(8)  # no flags, no header extension
PG_COPY_TRAILER: bytes = b"\xff\xff"
PG_CONNECT_TIMEOUT: int = 10  # seconds before an unreachable server is a TransientError
PG_SCHEMA_LOCK: int = 7_341_020  # advisory lock: one process at a time creates or widens the tables
# connection failures where the server answered and refused us (a human must act), unless it is only busy
PG_REFUSED: tuple[str, ...] = ("FATAL", "致命错误", "no password supplied", "authentication failed")
PG_BUSY: tuple[str, ...] = ("starting up", "shutting down", "recovery mode", "too many clients", "connection slots")


def _postgresql_ddl(statement: str) -> str:
    """vnpy_postgresql's table from vnpy_sqlite's DDL (same names, keys and indexes): SERIAL ids, TIMESTAMP times,
    and DOUBLE PRECISION numbers where peewee makes REAL (float4: 7 digits, which rounds prices such as 4567.2)."""
    return (
        statement.replace('"id" INTEGER NOT NULL PRIMARY KEY', '"id" SERIAL PRIMARY KEY')
        .replace(" REAL", " DOUBLE PRECISION")
        .replace(" DATETIME", " TIMESTAMP")
    )


PG_SCHEMA: tuple[str, ...] = tuple(_postgresql_ddl(statement) for statement in SCHEMA)
PG_REAL_COLUMNS: str = (
    "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema() "
    "AND table_name IN ('dbbardata', 'dbtickdata') AND data_type = 'real' ORDER BY table_name, ordinal_position"
)
# per-connection stage tables, emptied at each commit or rollback
PG_BAR_STAGE: str = (
    'CREATE TEMP TABLE IF NOT EXISTS "bar_stage" ("datetime" TIMESTAMP NOT NULL, '
    + ", ".join(f'"{column}" DOUBLE PRECISION NOT NULL' for column in BAR_COLUMNS)
    + ") ON COMMIT DELETE ROWS"
)
PG_TICK_STAGE: str = (
    'CREATE TEMP TABLE IF NOT EXISTS "tick_stage" ("symbol" VARCHAR(255) NOT NULL, "exchange" VARCHAR(255) NOT NULL, '
    '"datetime" TIMESTAMP NOT NULL, "name" VARCHAR(255) NOT NULL, '
    + ", ".join(f'"{column}" DOUBLE PRECISION' for column in TICK_COLUMNS[1:-1])
    + ', "localtime" TIMESTAMP) ON COMMIT DELETE ROWS'
)


def _columns(names: Iterable[str], alias: str = "") -> str:
    """Quoted column names, each prefixed by a table alias if given, comma-separated."""
    prefix = f"{alias}." if alias else ""
    return ", ".join(f'{prefix}"{name}"' for name in names)


def _binary_record(names: Iterable[str]) -> np.dtype:
    """One COPY binary tuple of a timestamp and float8 columns: field count, then (byte length, value) per field."""
    items = [("fields", ">i2"), ("datetime_size", ">i4"), ("datetime", ">i8")]
    for name in names:
        items += [(f"{name}_size", ">i4"), (name, ">f8")]
    return np.dtype(items)


BAR_STAGE_RECORD: np.dtype = _binary_record(BAR_COLUMNS)  # what import writes into bar_stage
BAR_LOAD_RECORD: np.dtype = _binary_record(BAR_FIELDS)  # what PG_BAR_SELECT sends back
PG_BAR_SELECT: str = (
    'SELECT "datetime", "open_price"::float8, "high_price"::float8, "low_price"::float8, "close_price"::float8, '
    '"volume"::float8, "turnover"::float8, "open_interest"::float8 FROM "dbbardata" WHERE "symbol" = %s '
    'AND "exchange" = %s AND "interval" = %s AND "datetime" >= %s AND "datetime" <= %s ORDER BY "datetime"'
)
PG_TICK_SELECT: str = (
    f'SELECT "datetime", {_columns(TICK_COLUMNS)} FROM "dbtickdata" '
    'WHERE "symbol" = %s AND "exchange" = %s AND "datetime" >= %s AND "datetime" <= %s ORDER BY "datetime"'
)


def _pg_merge_sql(
    table: str, stage: str, fixed: tuple[str, ...], keys: tuple[str, ...], values: tuple[str, ...]
) -> tuple[str, str]:
    """The UPDATE of rows whose values differ and the INSERT of new rows (in time order) from a stage table.

    `fixed` key columns come as %(name)s parameters (a bar stage holds one series). Existing rows never reach the
    INSERT, so saving the same data again changes neither the rows nor the id sequence.
    """
    match = " AND ".join([f't."{key}" = %({key})s' for key in fixed] + [f't."{key}" = s."{key}"' for key in keys])
    assign = ", ".join(f'"{name}" = s."{name}"' for name in values)
    update = (
        f'UPDATE "{table}" t SET {assign} FROM "{stage}" s WHERE {match} '
        f"AND ({_columns(values, 't')}) IS DISTINCT FROM ({_columns(values, 's')})"
    )
    chosen = ", ".join([f"%({key})s" for key in fixed] + [_columns((*keys, *values), "s")])
    insert = (
        f'INSERT INTO "{table}" ({_columns((*fixed, *keys, *values))}) SELECT {chosen} FROM "{stage}" s '
        f'WHERE NOT EXISTS (SELECT 1 FROM "{table}" t WHERE {match}) ORDER BY s."datetime"'
    )
    return update, insert


PG_BAR_UPDATE, PG_BAR_INSERT = _pg_merge_sql(
    "dbbardata", "bar_stage", ("symbol", "exchange", "interval"), ("datetime",), BAR_COLUMNS
)
PG_TICK_UPDATE, PG_TICK_INSERT = _pg_merge_sql(
    "dbtickdata", "tick_stage", (), ("symbol", "exchange", "datetime"), TICK_COLUMNS
)


def _pg_overview_sql(statement: str, table: str) -> str:
    """An overview refresh in PostgreSQL's dialect: %s parameters, IS DISTINCT FROM, the old row's columns named."""
    old = '("count", "start", "end") IS NOT'
    assert old in statement
    named = ", ".join(f'"{table}"."{column}"' for column in ("count", "start", "end"))
    return statement.replace("?", "%s").replace(old, f"({named}) IS DISTINCT FROM")


PG_BAR_OVERVIEW_REFRESH: str = _pg_overview_sql(BAR_OVERVIEW_REFRESH, "dbbaroverview")
PG_TICK_OVERVIEW_REFRESH: str = _pg_overview_sql(TICK_OVERVIEW_REFRESH, "dbtickoverview")


class PgConnection:
    """A psycopg2 connection (`raw`) to a server holding vnpy_postgresql's tables; `where` names it in messages."""

    def __init__(self, raw: Any, where: str) -> None:
        self.raw = raw
        self.where = where

    def close(self) -> None:
        self.raw.close()


Connection = sqlite3.Connection | PgConnection


def _connect_error(where: str, exc: Exception) -> AppError:
    """A refused login is a ConfigError (exit 2); an unreachable or restarting server a TransientError (exit 3)."""
    text = " ".join(str(exc).split())
    if any(mark in text for mark in PG_REFUSED) and not any(mark in text for mark in PG_BUSY):
        return ConfigError(
            f"PostgreSQL {where} 拒绝登录：{text}。请检查 database.user、database.database 与密码 "
            f"（{SECRET_ENV['db_password']} 或 secrets set db_password）/ login refused"
        )
    return TransientError(f"无法连接 PostgreSQL {where}：{text}。服务器未启动或网络不通，稍后重试 / server unreachable")


@contextmanager
def _pg_errors(where: str) -> Iterator[None]:
    """Driver errors as ours: a lost connection is transient (exit 3), a missing privilege a ConfigError."""
    import psycopg2
    from psycopg2 import errors

    try:
        yield
    except errors.InsufficientPrivilege as exc:
        raise ConfigError(f"PostgreSQL {where} 权限不足：{exc.pgerror or exc} / permission denied") from None
    except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
        raise TransientError(f"PostgreSQL {where} 连接中断：{' '.join(str(exc).split())} / connection lost") from None


@contextmanager
def _pg_transaction(conn: PgConnection) -> Iterator[Any]:
    """A cursor inside one transaction: commit on success, roll back on any exception."""
    with _pg_errors(conn.where), conn.raw, conn.raw.cursor() as cursor:
        yield cursor


def pg_connect(settings: DatabaseSettings, password: str) -> PgConnection:
    """Log in to the configured server and create vnpy_postgresql's tables if missing (REAL columns widened)."""
    try:
        import psycopg2
    except ImportError:
        raise ConfigError(
            "未安装 psycopg2；请执行 pip install -r requirements.txt / PostgreSQL driver missing"
        ) from None
    where = settings.describe()
    try:
        raw = psycopg2.connect(
            host=settings.host,
            port=settings.port,
            dbname=settings.database,
            user=settings.user,
            password=password or None,
            connect_timeout=PG_CONNECT_TIMEOUT,
            application_name="ai_trader",
        )
    except psycopg2.OperationalError as exc:
        raise _connect_error(where, exc) from None
    conn = PgConnection(raw, where)
    try:
        with _pg_transaction(conn) as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", (PG_SCHEMA_LOCK,))
            for statement in PG_SCHEMA:
                cursor.execute(statement)
            cursor.execute(PG_REAL_COLUMNS)
            narrow: dict[str, list[str]] = {}
            for table, column in cursor.fetchall():
                narrow.setdefault(table, []).append(column)
            for table, names in narrow.items():  # tables vnpy_postgresql created first: float4 to float8, lossless
                logger.info("把 %s 的 REAL 列改为 DOUBLE PRECISION / widening %s to float8", table, table)
                changes = ", ".join(f'ALTER COLUMN "{name}" TYPE DOUBLE PRECISION' for name in names)
                cursor.execute(f'ALTER TABLE "{table}" {changes}')
    except BaseException:
        raw.close()
        raise
    return conn


def _copy_in(cursor: Any, table: str, records: np.ndarray) -> None:
    """COPY binary tuples into a table."""
    payload = io.BytesIO(PG_COPY_HEADER + records.tobytes() + PG_COPY_TRAILER)
    cursor.copy_expert(f'COPY "{table}" FROM STDIN (FORMAT binary)', payload)


def _bar_records(frame: pd.DataFrame) -> np.ndarray:
    """A bar frame (`datetime` and BAR_FIELDS) as bar_stage's COPY binary tuples."""
    records = np.empty(len(frame), dtype=BAR_STAGE_RECORD)
    naive = frame["datetime"].dt.tz_convert(CHINA_TZ).dt.tz_localize(None).to_numpy("datetime64[us]")
    records["fields"] = 1 + len(BAR_COLUMNS)
    records["datetime_size"] = 8
    records["datetime"] = naive.astype("int64") - PG_EPOCH_US
    for column, name in zip(BAR_COLUMNS, ("volume", "turnover", "open_interest", *PRICE_FIELDS), strict=True):
        records[f"{column}_size"] = 8
        records[column] = frame[name].to_numpy("float64")
    return records


def _pg_save_bar_frame(
    conn: PgConnection,
    frame: pd.DataFrame,
    symbol: str,
    exchange: Exchange,
    interval: Interval,
    progress: Progress | None,
    replace_all: bool = False,
) -> SaveResult:
    """Stage the bars with COPY, merge them and refresh the overview, all in one transaction (`replace_all`: delete
    the symbol's stored bars of this interval first, in the same transaction)."""
    key = {"symbol": symbol, "exchange": exchange.value, "interval": interval.value}
    with _pg_transaction(conn) as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"dbbardata {symbol} {key['exchange']}",))
        if replace_all:
            cursor.execute(BAR_DELETE.replace("?", "%s"), tuple(key.values()))
        cursor.execute(PG_BAR_STAGE)
        for chunk in _chunks(frame, progress):
            _copy_in(cursor, "bar_stage", _bar_records(chunk))
        cursor.execute(PG_BAR_UPDATE, key)
        updated = cursor.rowcount
        cursor.execute(PG_BAR_INSERT, key)
        inserted = cursor.rowcount
        cursor.execute(BAR_COUNT.replace("?", "%s"), tuple(key.values()))
        stored = int(cursor.fetchone()[0])
        cursor.execute(PG_BAR_OVERVIEW_REFRESH, tuple(key.values()))
    return SaveResult(inserted, updated, len(frame) - inserted - updated, stored)


def _pg_save_ticks(conn: PgConnection, ticks: list[TickData]) -> int:
    """Stage ticks (the last one of each key wins) as CSV with COPY, merge them and refresh the overview."""
    latest = {(tick.symbol, tick.exchange.value, tick.datetime): tick for tick in ticks}
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(map(_tick_row, latest.values()))
    text.seek(0)
    with _pg_transaction(conn) as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext('dbtickdata'))")
        cursor.execute(PG_TICK_STAGE)
        cursor.copy_expert('COPY "tick_stage" FROM STDIN (FORMAT csv, FORCE_NOT_NULL ("name"))', text)
        cursor.execute(PG_TICK_UPDATE)
        written = cursor.rowcount
        cursor.execute(PG_TICK_INSERT)
        written += cursor.rowcount
        for key in sorted({(symbol, exchange) for symbol, exchange, _ in latest}):
            cursor.execute(PG_TICK_OVERVIEW_REFRESH, key)
    return int(written)


def _bars_from_copy(data: bytes) -> pd.DataFrame:
    """Bars from COPY binary output of PG_BAR_SELECT, as _frame_from_rows makes them."""
    if not data.startswith(PG_COPY_SIGNATURE) or not data.endswith(PG_COPY_TRAILER):
        raise DataError("PostgreSQL 返回的 COPY 数据格式异常 / unexpected COPY output")
    body_start = len(PG_COPY_HEADER) + int.from_bytes(data[15:19], "big")
    records = np.frombuffer(data[body_start : -len(PG_COPY_TRAILER)], dtype=BAR_LOAD_RECORD)
    if (records["fields"] != 1 + len(BAR_FIELDS)).any():
        raise DataError("PostgreSQL 返回的K线列数异常 / unexpected COPY output")
    times = (records["datetime"] + PG_EPOCH_US).astype("datetime64[us]")
    frame = pd.DataFrame({name: records[name].astype("float64") for name in BAR_FIELDS})
    frame.index = pd.DatetimeIndex(times, name="datetime").tz_localize(CHINA_TZ)
    return frame


def _pg_load_bar_frame(
    conn: PgConnection, symbol: str, exchange: Exchange, interval: Interval, start: datetime, end: datetime
) -> pd.DataFrame:
    """Bars in [start, end] with COPY out in binary: no per-row Python objects."""
    output = io.BytesIO()
    with _pg_transaction(conn) as cursor:
        params = (symbol, exchange.value, interval.value, _naive_china(start), _naive_china(end))
        query = cursor.mogrify(PG_BAR_SELECT, params).decode("utf-8")
        cursor.copy_expert(f"COPY ({query}) TO STDOUT (FORMAT binary)", output)
    return _bars_from_copy(output.getvalue())


def _pg_tick_rows(conn: PgConnection, symbol: str, exchange: Exchange, start: datetime, end: datetime) -> list[Any]:
    """Tick rows ("datetime", then TICK_COLUMNS) from a server-side cursor, fetched in batches."""
    with _pg_errors(conn.where), conn.raw, conn.raw.cursor(name="ai_trader_ticks") as cursor:
        cursor.itersize = 20_000
        cursor.execute(PG_TICK_SELECT, (symbol, exchange.value, _naive_china(start), _naive_china(end)))
        return list(cursor)


def _pg_overview_rows(conn: PgConnection) -> list[Any]:
    """vnpy's two overview tables, as stored_series reads them."""
    with _pg_transaction(conn) as cursor:
        cursor.execute(OVERVIEW_SELECT)
        return list(cursor.fetchall())
