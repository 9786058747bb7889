"""Everything that moves market data: CSV import, database load/save, datafeed download, live tick recording."""

from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import io
import json
import logging
import lzma
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from vnpy.trader.constant import Exchange, Interval
from vnpy.trader.object import BarData, SubscribeRequest, TickData

from bar_store import (
    BAR_FIELDS,
    PRICE_FIELDS,
    Connection,
    Progress,
    SaveResult,
    StoredSeries,
    connect,
    load_bar_frame,
    load_tick_rows,
    pg_connect,
    save_bar_frame,
    save_ticks,
    stored_series,
    stored_tick,
)
from config import (
    CHINA_TZ,
    ConfigError,
    DatabaseSettings,
    DataError,
    Home,
    TransientError,
    guarded,
    load_secrets,
    prepare_home,
    resolve_home,
    settings_for,
    write_json_atomic,
)
from contracts import (
    CONTINUOUS_SUFFIX,
    ContractDay,
    WarmupSources,
    build_continuous,
    check_adjustment,
    continuous_symbol,
    contract_column,
    contract_days,
    is_continuous,
    real_prices,
    roll_table,
    split_symbol,
    table_junction_factors,
    table_junction_offsets,
    table_segments,
    warmup_bars,
)

logger = logging.getLogger(__name__)

OPTIONAL_FIELDS: tuple[str, ...] = ("turnover", "open_interest")
INTERVAL_STEPS: dict[Interval, timedelta] = {
    Interval.MINUTE: timedelta(minutes=1),
    Interval.HOUR: timedelta(hours=1),
    Interval.DAILY: timedelta(days=1),
}
SAMPLE_FORMAT: dict[str, str] = {
    "date": "date",
    "time": "time",
    "open": "open",
    "high": "high",
    "low": "low",
    "close": "close",
    "volume": "totalvolume",
}
VNPY_FORMAT: dict[str, str] = {
    "datetime": "datetime",
    "open": "open",
    "high": "high",
    "low": "low",
    "close": "close",
    "volume": "volume",
}
MAX_PROBLEMS_SHOWN: int = 10
SYMBOL_PATTERN = re.compile(r"^[A-Za-z0-9_\-]+$")


# --- symbols, intervals, times -------------------------------------------------------------------


def parse_vt_symbol(vt_symbol: str) -> tuple[str, Exchange]:
    """Split `rb0000.SHFE` into symbol and Exchange, with a clear error."""
    symbol, _, exchange_text = vt_symbol.rpartition(".")
    if not symbol or not SYMBOL_PATTERN.match(symbol):
        raise DataError(f"合约代码 {vt_symbol!r} 格式错误，应为 代码.交易所，例如 rb0000.SHFE / bad vt_symbol")
    try:
        return symbol, Exchange(exchange_text)
    except ValueError:
        known = ", ".join(e.value for e in (Exchange.SHFE, Exchange.DCE, Exchange.CZCE, Exchange.CFFEX, Exchange.INE))
        raise DataError(
            f"合约代码 {vt_symbol!r} 的交易所 {exchange_text!r} 未知（例如 {known}）/ unknown exchange"
        ) from None


def parse_exchange(text: str) -> Exchange:
    """An exchange code such as `SHFE` as vnpy's Exchange, with a clear error."""
    try:
        return Exchange(text)
    except ValueError:
        raise DataError(f"交易所 {text!r} 未知（例如 SHFE, DCE, CZCE, CFFEX, INE, GFEX）/ unknown exchange") from None


def parse_interval(interval: str | Interval) -> Interval:
    """Turn `1m`, `1h` or `d` into vnpy's Interval."""
    try:
        value = Interval(interval)
    except ValueError:
        value = None
    if value not in INTERVAL_STEPS:
        choices = ", ".join(i.value for i in INTERVAL_STEPS)
        raise DataError(f"K线周期 {interval!r} 不支持（可用：{choices}）/ unsupported interval")
    return value


def to_china_time(value: str | date | datetime, end_of_day: bool = False) -> datetime:
    """Read `YYYY-MM-DD[ HH:MM[:SS]]`, a date or a datetime as an aware China Standard Time datetime."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise DataError(f"时间 {value!r} 格式错误，应为 YYYY-MM-DD 或 YYYY-MM-DD HH:MM / bad date") from None
        date_only = len(value.strip()) == 10
    elif isinstance(value, datetime):
        parsed, date_only = value, False
    else:
        parsed, date_only = datetime(value.year, value.month, value.day, tzinfo=CHINA_TZ), True
    if date_only and end_of_day:
        parsed = parsed + timedelta(days=1) - timedelta(microseconds=1)
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=CHINA_TZ)
    return parsed.astimezone(CHINA_TZ)


# --- CSV reading and validation ------------------------------------------------------------------


@dataclass(frozen=True)
class CsvLayout:
    """Which file column holds each bar field, how its times are written, and whether they mark bar end or start."""

    columns: Mapping[str, str]
    datetime_format: str | None = None
    timestamp: str | None = None


@dataclass
class ImportResult:
    """What one CSV import did."""

    path: Path
    vt_symbol: str
    interval: Interval
    rows: int
    duplicates_dropped: int
    inserted: int
    updated: int
    unchanged: int
    stored: int
    first: datetime
    last: datetime
    seconds: float


def _problem_lines(problems: list[tuple[int, str]]) -> list[str]:
    """The first problems of a rejected file, each with its line number, then how many more there are."""
    lines = [f"  第 {line} 行 / line {line}: {text}" for line, text in problems[:MAX_PROBLEMS_SHOWN]]
    if len(problems) > MAX_PROBLEMS_SHOWN:
        lines.append(f"  …… 另有 {len(problems) - MAX_PROBLEMS_SHOWN} 处 / more")
    return lines


def _problem_message(path: Path, problems: list[tuple[int, str]]) -> str:
    """One error text naming the file, the first problem lines and how to fix them."""
    lines = [f"导入失败：{path} 有 {len(problems)} 处问题，未写入任何数据 / import rejected, nothing written:"]
    lines += _problem_lines(problems)
    lines.append("请修正文件后重新导入 / fix the file and import again.")
    return "\n".join(lines)


def read_file_bytes(path: Path) -> bytes:
    """Read a plain, gzip, bz2 or xz file (detected by its first bytes) into memory."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise DataError(f"文件不存在：{path} / file not found") from None
    except OSError as exc:
        raise DataError(f"无法读取 {path}：{exc.strerror} / cannot read") from None
    openers: dict[bytes, Callable[[bytes], bytes]] = {
        b"BZh": bz2.decompress,
        b"\x1f\x8b": gzip.decompress,
        b"\xfd7zXZ": lzma.decompress,
    }
    for magic, decompress in openers.items():
        if raw.startswith(magic):
            try:
                return decompress(raw)
            except (OSError, EOFError, ValueError, lzma.LZMAError) as exc:
                raise DataError(f"{path}: 压缩文件损坏或不完整（{exc}）/ corrupt or truncated archive") from None
    return raw


def decode_text(path: Path, raw: bytes) -> bytes:
    """Check the bytes are UTF-8 text and strip a BOM; the error names the line of the first bad byte."""
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    if b"\x00" in raw[:65536]:
        raise DataError(f"{path}: 不是文本 CSV 文件（含二进制内容）/ binary file, not CSV")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}: 第 {line} 行不是 UTF-8 文本 / line {line} is not UTF-8 text") from None
    if not raw.strip():
        raise DataError(f"{path}: 文件为空 / empty file")
    return raw


def read_header(path: Path, text: bytes) -> list[str]:
    """The header's column names, unquoted and stripped."""
    first_line = text.split(b"\n", 1)[0].decode("utf-8").strip("\r")
    names = [name.strip() for name in next(csv.reader([first_line]))]
    if len(names) < 2:
        raise DataError(f"{path}: 第 1 行应为逗号分隔的表头，收到 {first_line[:80]!r} / header expected")
    return names


def detect_layout(path: Path, header: list[str], layout: CsvLayout | None) -> CsvLayout:
    """Choose the column map: the explicit one, the sample's, or vnpy's DataManager export."""
    lower = {name.lower(): name for name in header}
    if layout is not None:
        missing = [col for col in layout.columns.values() if col not in header and col.lower() not in lower]
        if missing:
            raise DataError(f"{path}: 表头中没有列 {missing}（表头：{header}）/ columns not in header")
        return CsvLayout(
            {key: lower.get(col.lower(), col) for key, col in layout.columns.items()}, layout.datetime_format
        )
    # The sample (a MultiCharts export) stamps the bar end; vnpy's DataManager export stamps the bar start.
    for known, timestamp in ((SAMPLE_FORMAT, "end"), (VNPY_FORMAT, "start")):
        if all(col in lower for col in known.values()):
            columns = {key: lower[col] for key, col in known.items()}
            columns.update({key: lower[key] for key in OPTIONAL_FIELDS if key in lower})
            return CsvLayout(columns, timestamp=timestamp)
    raise DataError(
        f"{path}: 无法识别表头 {header}。支持 Date,Time,Open,High,Low,Close,TotalVolume 与 "
        "datetime,open,high,low,close,volume[,turnover,open_interest]；其他格式请用 --columns 指定列映射，"
        "例如 --columns datetime=trade_time,open=open_price,high=high_price,low=low_price,close=close_price,"
        "volume=vol / unknown header, pass a column map"
    )


def field_count_problems(text: bytes, expected: int) -> list[tuple[int, str]]:
    """(line number, problem) for every non-blank line whose field count differs from the header's."""
    if b'"' in text:
        reader = csv.reader(io.StringIO(text.decode("utf-8")))
        counts = [(reader.line_num, len(row)) for row in reader if any(cell.strip() for cell in row)]
    else:
        data = np.frombuffer(text, dtype=np.uint8)
        newlines = np.flatnonzero(data == ord("\n"))
        lines = len(newlines) + 1
        commas = np.bincount(np.searchsorted(newlines, np.flatnonzero(data == ord(","))), minlength=lines)
        lengths = np.diff(np.concatenate(([-1], newlines, [len(data)]))) - 1
        blanks = np.flatnonzero(np.isin(data, np.array([9, 13, 32], dtype=np.uint8)))
        content = lengths - np.bincount(np.searchsorted(newlines, blanks), minlength=lines)
        counts = [(int(i) + 1, int(commas[i]) + 1) for i in np.flatnonzero((content > 0) & (commas + 1 != expected))]
    return [
        (line, f"有 {count} 个字段，应为 {expected} 个 / {count} fields, header has {expected}")
        for line, count in counts
        if count != expected
    ]


def _tokenize(path: Path, text: bytes, columns: list[str]) -> pd.DataFrame:
    """Parse the CSV body; blank lines become all-NaN rows so the index still maps to line numbers."""
    try:
        return pd.read_csv(
            io.BytesIO(text),
            usecols=columns,
            skip_blank_lines=False,
            skipinitialspace=True,
            encoding="utf-8",
            low_memory=False,
        )
    except pd.errors.ParserError as exc:
        match = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
        if match:
            expected, line, saw = match.groups()
            raise DataError(_problem_message(path, [(int(line), f"有 {saw} 个字段，应为 {expected} 个")])) from None
        raise DataError(f"{path}: CSV 格式错误：{exc} / malformed CSV") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: CSV 格式错误：{exc} / malformed CSV") from None


def _time_text(frame: pd.DataFrame, layout: CsvLayout) -> pd.Series:
    """The time of each row as written in the file (date and time columns joined)."""
    cols = layout.columns
    if "datetime" in cols:
        return frame[cols["datetime"]].astype("str")
    return frame[cols["date"]].astype("str") + " " + frame[cols["time"]].astype("str")


def _parse_times(text: pd.Series, layout: CsvLayout) -> pd.Series:
    """The bar time of each row, aware China time; NaT where unparseable."""
    cols = layout.columns
    fmt = layout.datetime_format or ("ISO8601" if "datetime" in cols else "%Y-%m-%d %H:%M:%S")
    try:
        parsed = pd.to_datetime(text, format=fmt, errors="coerce")
    except (ValueError, TypeError):
        parsed = pd.to_datetime(text, format=fmt, errors="coerce", utc=True)
    if parsed.dt.tz is None:
        return parsed.dt.tz_localize(CHINA_TZ)
    return parsed.dt.tz_convert(CHINA_TZ)


def _numeric(frame: pd.DataFrame, column: str) -> pd.Series:
    """A column as float64; unparseable cells become NaN."""
    series = frame[column]
    if not pd.api.types.is_numeric_dtype(series):
        series = pd.to_numeric(series.astype("str"), errors="coerce")
    return series.astype("float64")


def _where(mask: Any) -> list[int]:
    """Positions where a boolean mask is true."""
    return [int(i) for i in np.flatnonzero(np.asarray(mask))]


def _missing_or_bad(name: str, cell: Any) -> str:
    if pd.isna(cell):
        return f"缺少 {name} 值 / missing {name}"
    return f"{name} 值 {cell!r} 不是有效数字 / not a number"


def bar_value_problems(frame: pd.DataFrame, shown: pd.DataFrame | None = None) -> list[tuple[int, str]]:
    """(position, problem) for bars with missing numbers, prices ≤ 0, high/low outside open/close, or negatives.

    `shown` holds the original cells to quote for unparseable numbers (the raw CSV columns by field name).
    """
    problems: list[tuple[int, str]] = []
    for name in BAR_FIELDS:
        cells = shown[name] if shown is not None and name in shown else frame[name]
        problems += [(i, _missing_or_bad(name, cells.iloc[i])) for i in _where(~np.isfinite(frame[name]))]
    valid = np.isfinite(frame[list(BAR_FIELDS)]).all(axis=1)
    for name in PRICE_FIELDS:
        values = frame[name]
        problems += [
            (i, f"{name} = {values.iloc[i]:g} 不是正数 / price not positive") for i in _where(valid & (values <= 0))
        ]
    high, low = frame["high"], frame["low"]
    body_high = frame[["open", "close"]].max(axis=1)
    body_low = frame[["open", "close"]].min(axis=1)
    problems += [
        (i, f"high {high.iloc[i]:g} 低于 max(open, close) {body_high.iloc[i]:g} / high below open or close")
        for i in _where(valid & (high < body_high))
    ]
    problems += [
        (i, f"low {low.iloc[i]:g} 高于 min(open, close) {body_low.iloc[i]:g} / low above open or close")
        for i in _where(valid & (low > body_low))
    ]
    for name in ("volume", *OPTIONAL_FIELDS):
        values = frame[name]
        problems += [(i, f"{name} = {values.iloc[i]:g} 为负 / negative") for i in _where(valid & (values < 0))]
    return problems


def _time_problems(frame: pd.DataFrame, time_text: pd.Series, step: timedelta) -> list[tuple[int, str]]:
    """(position, problem) for unparseable times and times not on the interval's grid."""
    times = frame["datetime"]
    problems = [(i, f"时间 {time_text.iloc[i]!r} 无法解析 / unparseable time") for i in _where(times.isna())]
    if step < timedelta(days=1):
        step_ns = pd.Timedelta(step).value
        naive_ns = times.dt.tz_localize(None).to_numpy("datetime64[ns]").astype("int64")
        misaligned = times.notna().to_numpy() & (naive_ns % step_ns != 0)
        problems += [
            (i, f"时间 {times.iloc[i]} 不在 {step} 的整点上 / not on the bar grid") for i in _where(misaligned)
        ]
    return problems


def _drop_duplicates(frame: pd.DataFrame) -> tuple[pd.DataFrame, int, list[tuple[int, str]]]:
    """Drop rows repeating an earlier row exactly; report rows whose time repeats with other values."""
    exact = frame.duplicated(subset=["datetime", *BAR_FIELDS], keep="first")
    frame = frame[~exact]
    clash = frame["datetime"].duplicated(keep=False)
    problems: list[tuple[int, str]] = []
    if clash.any():
        for moment, group in frame[clash].groupby("datetime", sort=True):
            lines = ", ".join(str(i + 2) for i in group.index)
            text = f"时间 {moment} 重复且数值不同（第 {lines} 行）/ conflicting duplicate"
            problems.append((int(group.index[1]) + 2, text))
    return frame, int(exact.sum()), problems


def read_bar_csv(
    path: str | Path,
    interval: Interval = Interval.MINUTE,
    timestamp: str | None = None,
    layout: CsvLayout | None = None,
) -> tuple[pd.DataFrame, int]:
    """Read and validate a bar CSV; returns bars (bar-start `datetime`, sorted) and the exact duplicates dropped.

    `timestamp` says whether file times mark the bar `end` or `start`; None takes the known format's convention.
    """
    path = Path(path)
    if timestamp not in ("end", "start", None):
        raise DataError(f"--timestamp 必须是 end 或 start，收到 {timestamp!r} / timestamp must be end or start")
    step = INTERVAL_STEPS[interval]
    text = decode_text(path, read_file_bytes(path))
    header = read_header(path, text)
    layout = detect_layout(path, header, layout)
    timestamp = timestamp or layout.timestamp
    if timestamp is None:
        raise DataError(
            f"{path}: 自定义列映射时必须用 --timestamp end|start 说明时间是K线结束还是开始 / "
            "say whether file times mark the bar end or start"
        )
    if interval == Interval.DAILY and timestamp == "end":
        raise DataError(f"{path}: 日线的时间是交易日，请用 --timestamp start / daily bars are stamped by day")
    required = ("datetime",) if "datetime" in layout.columns else ("date", "time")
    missing = [key for key in (*required, *PRICE_FIELDS, "volume") if key not in layout.columns]
    if missing:
        raise DataError(f"{path}: 列映射缺少 {missing} / column map lacks {missing}")
    wrong_width = field_count_problems(text, len(header))
    if wrong_width:
        raise DataError(_problem_message(path, wrong_width))
    raw = _tokenize(path, text, list(dict.fromkeys(layout.columns.values())))
    raw = raw[raw.notna().any(axis=1)]
    if raw.empty:
        raise DataError(f"{path}: 只有表头，没有数据行 / header only, no rows")
    frame = pd.DataFrame(index=raw.index)
    time_text = _time_text(raw, layout)
    frame["datetime"] = _parse_times(time_text, layout)
    if timestamp == "end":
        frame["datetime"] = frame["datetime"] - step
    for name in BAR_FIELDS:
        frame[name] = _numeric(raw, layout.columns[name]) if name in layout.columns else 0.0
    shown = pd.DataFrame({name: raw[col] for name, col in layout.columns.items() if name in BAR_FIELDS})
    positions = _time_problems(frame, time_text, step) + bar_value_problems(frame, shown)
    problems = [(int(frame.index[i]) + 2, problem) for i, problem in positions]
    frame, duplicates, clashes = _drop_duplicates(frame) if not problems else (frame, 0, [])
    problems += clashes
    if problems:
        raise DataError(_problem_message(path, sorted(problems)))
    return frame.sort_values("datetime", kind="stable").reset_index(drop=True), duplicates


# --- the home's database; bars as vnpy objects ------------------------------------------------------------


def home_database(home: Home | str | Path | None = None) -> tuple[Home, DatabaseSettings]:
    """A home (the argument, `AI_TRADER_HOME`, or the project folder) and its database settings, set up on first use."""
    resolved = home if isinstance(home, Home) else resolve_home(home)
    settings: DatabaseSettings = settings_for(resolved).database
    prepare_home(resolved, settings)
    return resolved, settings


def database_path(home: Home | str | Path | None = None) -> Path:
    """The SQLite file of a home; ConfigError when the home keeps its data on PostgreSQL."""
    resolved, settings = home_database(home)
    if settings.name != "sqlite":
        raise ConfigError(f"主目录 {resolved.root} 使用 {settings.describe()}，没有 SQLite 文件 / no SQLite file")
    return resolved.database_path(settings)


def describe_database(home: Home | str | Path | None = None) -> str:
    """Where a home's bars and ticks live: the SQLite file's path or the PostgreSQL server and database."""
    resolved, settings = home_database(home)
    return str(resolved.database_path(settings)) if settings.name == "sqlite" else settings.describe()


def open_database(home: Home | str | Path | None = None) -> Connection:
    """A connection to a home's database (SQLite file or PostgreSQL server), vnpy's tables created if missing."""
    resolved, settings = home_database(home)
    if settings.name == "postgresql":
        return pg_connect(settings, load_secrets(resolved).get("db_password"))
    return connect(resolved.database_path(settings))


def bars_to_frame(bars: Iterable[BarData]) -> pd.DataFrame:
    """vnpy bars as a frame with `datetime` and BAR_FIELDS."""
    rows = [
        (
            bar.datetime,
            bar.open_price,
            bar.high_price,
            bar.low_price,
            bar.close_price,
            bar.volume,
            bar.turnover,
            bar.open_interest,
        )
        for bar in bars
    ]
    frame = pd.DataFrame(rows, columns=["datetime", *BAR_FIELDS])
    frame["datetime"] = pd.to_datetime(frame["datetime"], utc=True).dt.tz_convert(CHINA_TZ)
    return frame


def frame_to_bars(frame: pd.DataFrame, vt_symbol: str, interval: Interval = Interval.MINUTE) -> list[BarData]:
    """vnpy bars from a frame indexed by bar start (China time) with the OHLCV columns."""
    symbol, exchange = parse_vt_symbol(vt_symbol)
    index = pd.DatetimeIndex(frame.index)
    if index.tz is None:
        raise DataError("K线时间必须带时区（Asia/Shanghai）/ bar times must be time-zone aware")
    times = index.tz_convert(CHINA_TZ).to_pydatetime()
    columns = [frame[name].to_numpy(dtype="float64") if name in frame else np.zeros(len(frame)) for name in BAR_FIELDS]
    return [
        BarData(
            gateway_name="DB",
            symbol=symbol,
            exchange=exchange,
            datetime=when,
            interval=interval,
            open_price=o,
            high_price=h,
            low_price=lo,
            close_price=c,
            volume=v,
            turnover=t,
            open_interest=oi,
        )
        for when, o, h, lo, c, v, t, oi in zip(times, *(column.tolist() for column in columns), strict=True)
    ]


def save_bars(conn: Connection, bars: list[BarData]) -> SaveResult:
    """Upsert vnpy bars of one symbol and interval (the objects are not modified)."""
    if not bars:
        raise DataError("没有要保存的K线 / no bars to save")
    first = bars[0]
    if any((b.symbol, b.exchange, b.interval) != (first.symbol, first.exchange, first.interval) for b in bars):
        raise DataError("一次只能保存同一合约、同一周期的K线 / one symbol and interval per save")
    assert first.interval is not None
    return save_bar_frame(conn, bars_to_frame(bars), first.symbol, first.exchange, first.interval)


# --- the public API: import, load, download ----------------------------------------------------


def import_csv(
    path: str | Path,
    vt_symbol: str,
    interval: str | Interval = "1m",
    timestamp: str | None = None,
    columns: Mapping[str, str] | None = None,
    datetime_format: str | None = None,
    home: Home | str | Path | None = None,
    progress: Progress | None = None,
) -> ImportResult:
    """Validate a whole bar CSV, then store it in one transaction (a file with any bad row stores nothing).

    `timestamp`: `end` if file times mark the bar end (the sample), `start` if the bar start (vnpy's export);
    None takes the detected format's convention and is required with a custom `columns` map.
    """
    started = time.perf_counter()
    symbol, exchange = parse_vt_symbol(vt_symbol)
    bar_interval = parse_interval(interval)
    layout = CsvLayout(dict(columns), datetime_format) if columns else None
    if layout is None and datetime_format:
        raise DataError("--datetime-format 需要与 --columns 一起使用 / datetime format needs a column map")
    if progress:
        progress(f"读取并校验 / reading and validating {path}")
    frame, duplicates = read_bar_csv(path, bar_interval, timestamp, layout)
    conn = open_database(home)
    try:
        saved = save_bar_frame(conn, frame, symbol, exchange, bar_interval, progress)
    finally:
        conn.close()
    return ImportResult(
        path=Path(path),
        vt_symbol=vt_symbol,
        interval=bar_interval,
        rows=len(frame),
        duplicates_dropped=duplicates,
        inserted=saved.inserted,
        updated=saved.updated,
        unchanged=saved.unchanged,
        stored=saved.stored,
        first=frame["datetime"].iloc[0].to_pydatetime(),
        last=frame["datetime"].iloc[-1].to_pydatetime(),
        seconds=time.perf_counter() - started,
    )


def _china_range(start: str | date | datetime, end: str | date | datetime) -> tuple[datetime, datetime]:
    """A requested range in China time (a date `end` includes that whole day); DataError when start is after end."""
    begin, finish = to_china_time(start), to_china_time(end, end_of_day=True)
    if begin > finish:
        raise DataError(f"开始时间 {begin} 晚于结束时间 {finish} / start after end")
    return begin, finish


def _held(stored: list[StoredSeries]) -> str:
    """What is stored of a symbol, for a message about a range without data: each series' span and count."""
    return "; ".join(f"{s.interval} {s.first:%Y-%m-%d} ~ {s.last:%Y-%m-%d} ({s.count:,})" for s in stored) or "无"


def load_history_data(
    vt_symbol: str,
    start: str | date | datetime,
    end: str | date | datetime,
    interval: str | Interval = "1m",
    home: Home | str | Path | None = None,
) -> pd.DataFrame:
    """Stored bars from start to end (a date `end` includes that whole day), indexed by bar start in China time."""
    symbol, exchange = parse_vt_symbol(vt_symbol)
    bar_interval = parse_interval(interval)
    begin, finish = _china_range(start, end)
    conn = open_database(home)
    try:
        frame = load_bar_frame(conn, symbol, exchange, bar_interval, begin, finish)
        stored = [s for s in stored_series(conn) if s.vt_symbol == vt_symbol] if frame.empty else []
    finally:
        conn.close()
    if frame.empty:
        raise DataError(
            f"数据库中没有 {vt_symbol} {bar_interval.value} 在 {begin:%Y-%m-%d %H:%M} ~ {finish:%Y-%m-%d %H:%M} 的K线"
            f"（已有：{_held(stored)}）。请先导入：python ai_trading_system.py import --csv FILE --vt-symbol "
            f"{vt_symbol} / no bars stored for this request"
        )
    frame.attrs["vt_symbol"] = vt_symbol
    return frame


def list_stored(home: Home | str | Path | None = None) -> list[StoredSeries]:
    """What the database holds: one row per symbol and interval (ticks as interval `tick`)."""
    conn = open_database(home)
    try:
        return stored_series(conn)
    finally:
        conn.close()


# --- continuous series: per-contract bars in, the product's main-contract series and its roll table out ----------

CONTINUOUS_DIR: str = "continuous"  # under the home: one roll table per stored continuous series
EARLIEST: datetime = datetime(1990, 1, 1, tzinfo=CHINA_TZ)
LATEST: datetime = datetime(2100, 1, 1, tzinfo=CHINA_TZ)


@dataclass
class ContinuousResult:
    """What `build_continuous_series` stored."""

    vt_symbol: str
    adjust: str
    contracts: list[str]
    source_bars: int
    saved: SaveResult
    table_path: Path
    table: dict[str, Any]
    seconds: float


def roll_table_path(home: Home, vt_symbol: str, interval: Interval = Interval.MINUTE) -> Path:
    """Where the roll table of a stored continuous series lives: `<home>/continuous/rb888.SHFE_1m.json`."""
    return home.root / CONTINUOUS_DIR / f"{vt_symbol}_{interval.value}.json"


def _is_contract_of(symbol: str, product: str) -> bool:
    """Whether a stored symbol is one delivery month of `product` (not its continuous or index series)."""
    try:
        own, digits = split_symbol(symbol)
    except ConfigError:
        return False
    return own == product and digits != CONTINUOUS_SUFFIX and 1 <= int(digits[-2:]) <= 12


def product_contracts(
    conn: Connection, product: str, exchange: Exchange | None, interval: Interval
) -> tuple[Exchange, list[str]]:
    """The exchange and the stored contracts (delivery months) of a product at one interval; ConfigError when
    none is stored or, without `exchange`, when they lie on several exchanges."""
    found = [
        s.vt_symbol.rpartition(".")
        for s in stored_series(conn)
        if s.interval == interval.value and _is_contract_of(s.vt_symbol.rpartition(".")[0], product)
    ]
    exchanges = sorted({ex for _, _, ex in found if exchange is None or ex == exchange.value})
    if not exchanges:
        where = f"（{exchange.value}）" if exchange else ""
        raise DataError(
            f"数据库中没有品种 {product}{where} 的 {interval.value} 分合约K线（如 {product}2605）；先导入各合约："
            f"python ai_trading_system.py import --csv FILE --vt-symbol {product}2605.SHFE / no contracts stored"
        )
    if len(exchanges) > 1:
        raise ConfigError(
            f"品种 {product} 的合约分布在多个交易所 {exchanges}；请用 --exchange 指定 / contracts on several exchanges"
        )
    chosen = Exchange(exchanges[0])
    return chosen, sorted(symbol for symbol, _, ex in found if ex == chosen.value)


def load_contract_frames(
    conn: Connection, product: str, exchange: Exchange | None, interval: Interval, progress: Progress | None = None
) -> tuple[Exchange, dict[str, pd.DataFrame]]:
    """Every stored bar of each of a product's contracts (`product_contracts`), by symbol."""
    chosen, symbols = product_contracts(conn, product, exchange, interval)
    frames = {}
    for symbol in symbols:
        if progress:
            progress(f"读取 / loading {symbol}.{chosen.value}")
        frames[symbol] = load_bar_frame(conn, symbol, chosen, interval, EARLIEST, LATEST)
    return chosen, frames


def stored_contract_days(
    product: str, exchange: str | None = None, interval: str | Interval = "1m", home: Home | str | Path | None = None
) -> list[ContractDay]:
    """Each stored contract's daily figures (contracts.contract_days: volume summed per trading day, open interest
    at the day's last bar), the input of the main-contract rule."""
    conn = open_database(home)
    try:
        wanted = parse_exchange(exchange) if exchange else None
        _, frames = load_contract_frames(conn, product, wanted, parse_interval(interval))
    finally:
        conn.close()
    return contract_days(frames)


def build_continuous_series(
    product: str,
    adjust: str,
    exchange: str | None = None,
    interval: str | Interval = "1m",
    home: Home | str | Path | None = None,
    progress: Progress | None = None,
) -> ContinuousResult:
    """Build `<product>888` from the product's stored contracts (contracts.build_continuous), store its bars in one
    transaction that replaces the old series, then write its roll table under the home atomically."""
    started = time.perf_counter()
    check_adjustment(adjust)
    bar_interval = parse_interval(interval)
    wanted = parse_exchange(exchange) if exchange else None
    resolved, _ = home_database(home)
    conn = open_database(resolved)
    try:
        chosen, frames = load_contract_frames(conn, product, wanted, bar_interval, progress)
        symbols = list(frames)
        series = build_continuous(frames, adjust, product)
        vt_symbol = f"{continuous_symbol(product)}.{chosen.value}"
        frame = series.bars.drop(columns="contract").rename_axis("datetime").reset_index()
        saved = save_bar_frame(conn, frame, continuous_symbol(product), chosen, bar_interval, progress, True)
    finally:
        conn.close()
    table = roll_table(series, vt_symbol, bar_interval.value)
    path = write_json_atomic(roll_table_path(resolved, vt_symbol, bar_interval), table)
    return ContinuousResult(
        vt_symbol,
        adjust,
        symbols,
        sum(len(f) for f in frames.values()),
        saved,
        path,
        table,
        time.perf_counter() - started,
    )


def load_roll_table(
    vt_symbol: str,
    bars: pd.DataFrame | None = None,
    interval: str | Interval = "1m",
    home: Home | str | Path | None = None,
) -> dict[str, Any] | None:
    """The roll table of a stored continuous series (`rb888.SHFE`), or None for another series or when none was
    built; with `bars` (loaded from the database) DataError when a bar lies outside its segments, which means the
    series and the table disagree."""
    try:
        if not is_continuous(vt_symbol):
            return None
    except ConfigError:  # a series that is no contract symbol at all (an index, a spread) has no roll table
        return None
    resolved, _ = home_database(home)
    path = roll_table_path(resolved, vt_symbol, parse_interval(interval))
    if not path.exists():
        return None
    try:
        table: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"无法读取换月表 {path}：{exc}；请重新运行 continuous / unreadable roll table") from None
    if table.get("vt_symbol") != vt_symbol:
        raise DataError(
            f"换月表 {path} 属于 {table.get('vt_symbol')!r}，不是 {vt_symbol} / roll table of another series"
        )
    if bars is not None and not bars.empty:
        real_prices(bars.iloc[[0, -1]], table_segments(table))
    return table


def stored_before(
    vt_symbol: str, start: datetime, end: datetime, own: list[BarData], home: Home | str | Path | None = None
) -> list[BarData]:
    """The database's 1-minute bars of the symbol itself from `start` up to its first `own` bar (or `end`): the
    history a gateway or datafeed did not reach back to (the simulated exchange serves only `warmup_days`)."""
    symbol, exchange = parse_vt_symbol(vt_symbol)
    until = min([end, *(bar.datetime for bar in own[:1])])
    if until <= start:
        return []
    conn = open_database(home)
    try:
        frame = load_bar_frame(conn, symbol, exchange, Interval.MINUTE, start, until)
    finally:
        conn.close()
    frame = frame.loc[frame.index < pd.Timestamp(until)]
    return frame_to_bars(frame, vt_symbol) if not frame.empty else []


def warmup_history(
    vt_symbol: str,
    start: datetime,
    end: datetime,
    own: list[BarData],
    home: Home | str | Path | None = None,
    adjust: str = "ratio",
) -> tuple[list[BarData], WarmupSources] | None:
    """1-minute warm-up bars in [start, end) for a contract (e.g. rb1610.SHFE): its product's stored continuous
    series at real prices put on the contract's level across its junctions as the bundle was trained (`adjust`:
    ratio, difference or none; contracts.warmup_bars), then the contract's `own` bars (they win where both have
    bars); None when the product has no continuous series with a roll table."""
    symbol, exchange = parse_vt_symbol(vt_symbol)
    if is_continuous(symbol):
        return None
    series = continuous_symbol(split_symbol(symbol)[0])
    table = load_roll_table(f"{series}.{exchange.value}", home=home)
    if table is None:
        return None
    conn = open_database(home)
    try:
        stored = load_bar_frame(conn, series, exchange, Interval.MINUTE, start, end)
    finally:
        conn.close()
    real = real_prices(stored.loc[stored.index < pd.Timestamp(end)], table_segments(table))
    mine = bars_to_frame(own).set_index("datetime") if own else pd.DataFrame()
    factors, offsets = table_junction_factors(table), table_junction_offsets(table)
    frame, sources = warmup_bars(real, mine, symbol, factors, adjust, offsets)
    return frame_to_bars(frame, vt_symbol), sources


def download_history(
    vt_symbol: str,
    start: str | date | datetime,
    end: str | date | datetime,
    interval: str | Interval,
    datafeed: Any,
    home: Home | str | Path | None = None,
) -> SaveResult:
    """Query bars from a vnpy datafeed (already built by the caller) and store them."""
    from vnpy.trader.object import HistoryRequest

    symbol, exchange = parse_vt_symbol(vt_symbol)
    bar_interval = parse_interval(interval)
    messages: list[str] = []
    if not datafeed.init(messages.append):
        detail = "; ".join(messages) or "无详细信息"
        raise TransientError(f"数据服务初始化失败（{detail}）；请检查网络与账号后重试 / datafeed init failed")
    request = HistoryRequest(
        symbol=symbol,
        exchange=exchange,
        start=to_china_time(start),
        end=to_china_time(end, end_of_day=True),
        interval=bar_interval,
    )
    bars = datafeed.query_bar_history(request, messages.append) or []
    if not bars:
        detail = "; ".join(messages) or "无数据"
        raise DataError(
            f"数据服务没有返回 {vt_symbol} {bar_interval.value} 的K线（{detail}）/ datafeed returned no bars"
        )
    frame = bars_to_frame(bars).sort_values("datetime", kind="stable")
    frame = frame.drop_duplicates(subset="datetime", keep="last").reset_index(drop=True)
    problems = [(i + 1, f"{frame['datetime'].iloc[i]}: {text}") for i, text in bar_value_problems(frame)]
    if problems:
        raise DataError(_problem_message(Path(f"datafeed:{vt_symbol}"), sorted(problems)))
    conn = open_database(home)
    try:
        return save_bar_frame(conn, frame, symbol, exchange, bar_interval)
    finally:
        conn.close()


# --- tick loading (ticks to replay: a tick CSV or the dbtickdata table; used by sim_gateway) ----------------

# TickData field -> column of the tick CSV layout of the copper sample (tqsdk's recorded ticks); times China time
TICK_CSV_COLUMNS: dict[str, str] = {
    "last_price": "last_price",
    "high_price": "highest",
    "low_price": "lowest",
    "volume": "volume",
    "turnover": "amount",
    "open_interest": "open_interest",
    **{
        f"{side}_{kind}_{level}": f"{side}_{kind}{level}"
        for side in ("bid", "ask")
        for kind in ("price", "volume")
        for level in range(1, 6)
    },
}
TICK_TOTALS: tuple[str, ...] = ("volume", "turnover", "open_interest")


def _tick_problem_message(path: Path, problems: list[tuple[int, str]]) -> str:
    """One error text naming the tick file and its first problem lines."""
    lines = [f"{path}: 有 {len(problems)} 处问题，未读取任何 tick / tick file rejected:", *_problem_lines(problems)]
    return "\n".join(lines)


def _tick_value_problems(times: pd.Series, values: dict[str, pd.Series]) -> list[tuple[int, str]]:
    """(position, problem) for unparseable times, times going backwards, bad prices and negative totals or depth."""
    problems = [(i, "时间无法解析 / unparseable time") for i in _where(times.isna())]
    stamps = times.to_numpy("datetime64[ns]")
    backwards = np.concatenate(([False], stamps[1:] < stamps[:-1])) & times.notna().to_numpy()
    problems += [(i, f"时间 {times.iloc[i]} 早于上一行 / time goes backwards") for i in _where(backwards)]
    last = values["last_price"]
    problems += [
        (i, f"last_price {last.iloc[i]!r} 必须是正数 / price must be positive")
        for i in _where(~(np.isfinite(last) & (last > 0)))
    ]
    for name in TICK_TOTALS:
        column = values[name]
        problems += [
            (i, f"{name} {column.iloc[i]!r} 必须是非负数 / must be a number ≥ 0")
            for i in _where(~(np.isfinite(column) & (column >= 0)))
        ]
    for name, column in values.items():
        if name not in TICK_TOTALS and name != "last_price":  # empty depth levels are 0, as gateways send them
            problems += [(i, f"{name} {column.iloc[i]!r} 为负 / negative") for i in _where(column < 0)]
    return problems


def read_tick_csv(path: str | Path, vt_symbol: str) -> list[TickData]:
    """Read and validate a tick CSV in the copper sample's layout (`datetime,last_price,…,ask_volume5`, China time).

    `highest`/`lowest` are the day's high and low, `volume`/`amount` cumulative; an empty depth level reads as 0.
    """
    path = Path(path)
    symbol, exchange = parse_vt_symbol(vt_symbol)
    text = decode_text(path, read_file_bytes(path))
    header = read_header(path, text)
    wanted = ["datetime", *TICK_CSV_COLUMNS.values()]
    missing = [column for column in wanted if column not in header]
    if missing:
        raise DataError(f"{path}: 表头缺少列 {missing}；需要 {', '.join(wanted)} / not a tick CSV of the known layout")
    wrong_width = field_count_problems(text, len(header))
    if wrong_width:
        raise DataError(_tick_problem_message(path, wrong_width))
    raw = _tokenize(path, text, wanted)
    raw = raw[raw.notna().any(axis=1)]
    if raw.empty:
        raise DataError(f"{path}: 只有表头，没有数据行 / header only, no rows")
    parsed = pd.to_datetime(raw["datetime"].astype("str"), format="ISO8601", errors="coerce")
    times = parsed.dt.tz_localize(CHINA_TZ) if parsed.dt.tz is None else parsed.dt.tz_convert(CHINA_TZ)
    values = {name: _numeric(raw, column) for name, column in TICK_CSV_COLUMNS.items()}
    problems = [(int(raw.index[i]) + 2, text) for i, text in _tick_value_problems(times, values)]
    if problems:
        raise DataError(_tick_problem_message(path, sorted(problems)))
    columns = {name: column.fillna(0.0).tolist() for name, column in values.items()}
    names = list(columns)
    return [
        TickData(
            gateway_name="CSV", symbol=symbol, exchange=exchange, datetime=when, **dict(zip(names, row, strict=True))
        )
        for when, *row in zip(times.dt.to_pydatetime().tolist(), *columns.values(), strict=True)
    ]


def load_tick_data(
    vt_symbol: str,
    start: str | date | datetime,
    end: str | date | datetime,
    home: Home | str | Path | None = None,
) -> list[TickData]:
    """Stored ticks (the `dbtickdata` table `save_ticks` writes) from start to end, oldest first, in China time.

    A date `end` includes that whole day; no stored tick in the range is a DataError naming what is stored.
    """
    symbol, exchange = parse_vt_symbol(vt_symbol)
    begin, finish = _china_range(start, end)
    conn = open_database(home)
    try:
        rows = load_tick_rows(conn, symbol, exchange, begin, finish)
        stored = [s for s in stored_series(conn) if s.vt_symbol == vt_symbol] if not rows else []
    finally:
        conn.close()
    if not rows:
        raise DataError(
            f"数据库中没有 {vt_symbol} 在 {begin:%Y-%m-%d %H:%M} ~ {finish:%Y-%m-%d %H:%M} 的 tick"
            f"（已有：{_held(stored)}）/ no ticks stored for this request"
        )
    return [stored_tick(row, symbol, exchange) for row in rows]


# --- live recording ---------------------------------------------------------------------------------

_STOP = object()
STOP_ATTEMPTS: int = 3  # final flush tries before stop() gives up (logged)


@dataclass
class RecorderStats:
    """Counters of the live recorder."""

    ticks_stored: int = 0
    bars_stored: int = 0
    batches_written: int = 0
    write_errors: int = 0
    ticks_dropped: int = 0


class DataCollector:
    """Record subscribed ticks and their 1-minute bars to the database from one writer thread.

    The writer is a daemon thread: call stop() before the process exits, or the unflushed ticks are lost.
    """

    def __init__(
        self,
        main_engine: Any,
        home: Home | str | Path | None = None,
        batch_size: int = 500,
        flush_interval: float = 1.0,
        max_pending: int = 200_000,
        database: Path | None = None,
    ) -> None:
        if batch_size < 1 or flush_interval <= 0 or max_pending < batch_size:
            raise DataError("batch_size ≥ 1、flush_interval > 0、max_pending ≥ batch_size / bad recorder settings")
        self.main_engine = main_engine
        self.home = home if isinstance(home, Home) else resolve_home(home)
        self.path: Path | None = database  # another SQLite file (a simulation's own); None: the home's database
        self._open().close()  # fail here, not in the writer thread, if the database cannot be opened
        self.batch_size, self.flush_interval, self.max_pending = batch_size, flush_interval, max_pending
        self.vt_symbols: set[str] = set()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.RLock()  # re-entrant: stop() may run in a signal handler
        self._thread: threading.Thread | None = None
        self._stopped = self._registered = False
        self._tick_handler = guarded("recorder.tick", self._on_tick_event, logger)
        self._stats = RecorderStats()
        self._ticks: list[TickData] = []  # writer thread only, from here down; lists are mutated in place
        self._bars: list[BarData] = []
        self._generators: dict[str, Any] = {}
        self._conn: Connection | None = None

    def _open(self) -> Connection:
        """A connection to where this recorder writes."""
        return connect(self.path) if self.path is not None else open_database(self.home)

    @property
    def stats(self) -> RecorderStats:
        """A snapshot of the counters."""
        return replace(self._stats)

    def subscribe_market_data(self, vt_symbols: Iterable[str]) -> None:
        """Subscribe ticks of contracts known to the gateway; an unknown one subscribes nothing."""
        from vnpy.trader.event import EVENT_TICK

        if self._stopped:
            raise DataError("行情记录已停止，不能再订阅 / recorder is stopped")
        requests = []
        for vt_symbol in vt_symbols:
            symbol, exchange = parse_vt_symbol(vt_symbol)
            contract = self.main_engine.get_contract(vt_symbol)
            if contract is None:
                raise DataError(
                    f"未知合约 {vt_symbol}：合约信息在网关登录并完成合约查询后才有，本次未订阅任何合约。"
                    "请确认网关已连接、代码与交易所正确（如 rb2501.SHFE）后重试 / "
                    f"unknown contract {vt_symbol}, nothing subscribed"
                )
            requests.append((vt_symbol, SubscribeRequest(symbol=symbol, exchange=exchange), contract.gateway_name))
        self.vt_symbols.update(vt_symbol for vt_symbol, _, _ in requests)
        if not self._registered:  # before subscribing, so the first tick is not missed
            self.main_engine.event_engine.register(EVENT_TICK, self._tick_handler)
            self._registered = True
        for _, request, gateway_name in requests:
            self.main_engine.subscribe(request, gateway_name)

    def _on_tick_event(self, event: Any) -> None:
        """Event-engine handler (registered guarded): record ticks of subscribed symbols."""
        if not self._stopped and event.data.vt_symbol in self.vt_symbols:
            self.save_tick_data(event.data)

    def save_tick_data(self, tick: TickData) -> None:
        """Queue a tick for the writer thread; never blocks on the database; DataError after stop()."""
        if not isinstance(tick, TickData) or tick.datetime.tzinfo is None:
            raise DataError(f"无效 tick（需要带时区的 TickData）：{tick!r:.200} / invalid tick")
        with self._lock:  # a tick accepted here is always flushed by stop()
            if self._stopped:
                raise DataError(f"行情记录已停止，{tick.vt_symbol} 的 tick 未保存 / recorder is stopped")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="DataCollectorWriter", daemon=True)
                self._thread.start()
            self._queue.put(tick)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop recording: flush every queued tick and each symbol's in-progress bar, then join the writer."""
        from vnpy.trader.event import EVENT_TICK

        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self._queue.put(_STOP)
        if self._registered:
            self.main_engine.event_engine.unregister(EVENT_TICK, self._tick_handler)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.error("行情写入线程 %.0f 秒内未结束，仍在写入 / writer still busy", timeout)

    def _run(self) -> None:
        """Writer thread: store ticks and finished bars every batch_size ticks or flush_interval seconds."""
        healthy = True  # after a failed write, retry on the clock only, not on every tick
        deadline = time.monotonic() + self.flush_interval
        while True:
            try:
                item = self._queue.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                item = None
            if item is _STOP:
                break
            if item is not None:
                self._ticks.append(item)
                self._feed(item)
            if (healthy and len(self._ticks) >= self.batch_size) or time.monotonic() >= deadline:
                healthy = self._flush()
                deadline = time.monotonic() + self.flush_interval
        self._finish()

    def _feed(self, tick: TickData) -> None:
        """Update the symbol's BarGenerator; ticks older than the last one are stored but not built into bars."""
        try:
            generator = self._generators.get(tick.vt_symbol)
            if generator is None:
                from vnpy.trader.utility import BarGenerator

                # BarGenerator emits a fresh BarData each minute and never touches it again: no copy needed.
                generator = self._generators[tick.vt_symbol] = BarGenerator(self._bars.append)  # bars in place
            if generator.last_tick is None or tick.datetime >= generator.last_tick.datetime:
                generator.update_tick(tick)
        except Exception:
            logger.exception("%s 合成K线失败 / bar generation failed", tick.vt_symbol)

    def _flush(self) -> bool:
        """Store buffered ticks (one transaction), then bars per symbol; keep what failed for the next flush."""
        try:
            if self._conn is None:
                self._conn = self._open()
            if self._ticks:
                save_ticks(self._conn, self._ticks)
                self._stats.ticks_stored += len(self._ticks)
                self._stats.batches_written += 1
                self._ticks.clear()
            while self._bars:
                key = (self._bars[0].symbol, self._bars[0].exchange)
                group = [bar for bar in self._bars if (bar.symbol, bar.exchange) == key]
                save_bars(self._conn, group)
                self._stats.bars_stored += len(group)
                self._bars[:] = [bar for bar in self._bars if (bar.symbol, bar.exchange) != key]
            return True
        except Exception:
            self._stats.write_errors += 1
            logger.exception(
                "行情写入失败，%d 条 tick、%d 根K线保留待重试 / write failed, kept for retry",
                len(self._ticks),
                len(self._bars),
            )
            if self._conn is not None:  # transaction() has rolled back; reopen in case the connection itself broke
                self._conn.close()
                self._conn = None
            excess = len(self._ticks) - self.max_pending  # bound the retry buffer: drop the oldest, loudly
            if excess > 0:
                del self._ticks[:excess], self._bars[: -self.max_pending]
                self._stats.ticks_dropped += excess
                logger.error("数据库持续不可写，已丢弃最早的 %d 条 tick / database unwritable, ticks dropped", excess)
            return False

    def _finish(self) -> None:
        """Flush everything on stop, including each symbol's in-progress bar (its minute so far), then close.

        A restart within that minute rebuilds the bar from later ticks only and overwrites it.
        """
        try:
            for generator in self._generators.values():
                if generator.bar is not None:
                    bar = generator.bar
                    self._bars.append(replace(bar, datetime=bar.datetime.replace(second=0, microsecond=0)))
            for attempt in range(STOP_ATTEMPTS):
                if self._flush():
                    break
                time.sleep(0.2 * (attempt + 1))
            else:
                self._stats.ticks_dropped += len(self._ticks)
                logger.error(
                    "停止时写入失败，%d 条 tick、%d 根K线未保存 / not stored on stop", len(self._ticks), len(self._bars)
                )
        finally:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


# --- a stored continuous series as training and backtests read it (its roll table applied) -------------------------


def mark_contracts(
    bars: pd.DataFrame,
    vt_symbol: str,
    interval: str,
    home: Home | str | Path | None = None,
    progress: Progress | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Training bars of a continuous series built by `continuous` get a `contract` column from its roll table, so
    the cleaning puts its roll junctions exactly there (an adjusted series has no gap left to find) and no label spans
    one; also what the bundle records about the prices it was trained on."""
    table = load_roll_table(vt_symbol, bars, interval, home)
    if table is None:
        return bars, {"adjust": "none", "source": "stored series as imported"}
    segments = table_segments(table)
    marked = bars.copy()
    marked["contract"] = contract_column(bars.index, segments)
    marked.attrs = dict(bars.attrs)
    used = [s.symbol for s in segments if s.symbol in set(marked["contract"])]
    if progress:
        progress(
            f"主力连续 / continuous series: 复权 {table['adjust']}，{len(used)} 个合约段，换月处不跨越标签 / "
            "labels never span a junction"
        )
    return marked, {"adjust": table["adjust"], "source": "continuous", "contracts": used}


def continuous_junctions(vt_symbol: str, interval: str, home: Home | str | Path | None = None) -> list[datetime] | None:
    """The first bar of every new contract of a continuous series built by `continuous` (the strategy is flat before
    each, as before a roll gap), or None for any other series (roll gaps by the causal gap rule)."""
    table = load_roll_table(vt_symbol, None, interval, home)
    return None if table is None else [segment.first_bar for segment in table_segments(table)[1:]]


def refuse_adjusted_prices(vt_symbol: str, interval: str, home: Home | str | Path | None, command: str) -> None:
    """ConfigError when a command that backtests from the database (its workers reload the bars) would price trades
    on a continuous series stored back-adjusted: prices nobody could trade."""
    table = load_roll_table(vt_symbol, None, interval, home)
    if table is not None and table["adjust"] != "none":
        product = split_symbol(vt_symbol)[0]
        raise ConfigError(
            f"{vt_symbol} 按 {table['adjust']} 复权存储，{command} 会按复权价成交；请先用真实价格重建："
            f"python ai_trading_system.py continuous --product {product} --adjust none（backtest 会自动还原真实价格）/ "
            "the series is stored adjusted: rebuild it with --adjust none first"
        )


def real_contract_prices(
    bars: pd.DataFrame,
    vt_symbol: str,
    interval: str,
    home: Home | str | Path | None = None,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """A backtest prices its trades on what could be traded: a continuous series stored back-adjusted gets each
    contract's real prices back from its roll table (an adjusted price is not a price anyone paid, and fees and
    ticks apply to real ones)."""
    table = load_roll_table(vt_symbol, bars, interval, home)
    if table is None or table["adjust"] == "none":
        return bars
    if progress:
        progress(
            f"主力连续按 {table['adjust']} 复权存储，回测改用各合约真实价格 / "
            "the backtest uses the contracts' real prices"
        )
    real = real_prices(bars, table_segments(table)).drop(columns="contract")
    real.attrs = dict(bars.attrs)
    return real
