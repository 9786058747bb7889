"""CSV import, database load/save, datafeed download and live tick recording, on the real sample data."""

from __future__ import annotations

import bz2
import csv
import gzip
import json
import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
from vnpy.trader.constant import Exchange, Interval
from vnpy.trader.object import BarData, HistoryRequest, SubscribeRequest, TickData

import bar_store
import config
import data_collector
from config import CHINA_TZ, SECRET_ENV, DataError, Home
from data_collector import DataCollector
from tests.conftest import PgServer, free_port, home_rows, require, run_python, table_dump, use_postgresql

HEADER = "Date,Time,Open,High,Low,Close,TotalVolume"


def write_lines(path: Path, lines: list[str], newline: str = "\n") -> Path:
    path.write_text(newline.join(lines) + newline, encoding="utf-8", newline="")
    return path


def china(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=CHINA_TZ)


@pytest.fixture
def small_csv(tmp_path: Path, sample_lines: list[str]) -> Path:
    """The first 3,000 real bars of the sample."""
    return write_lines(tmp_path / "rb_small.csv", sample_lines[:3001])


@pytest.fixture
def populated(home: Home, database: str, small_csv: Path) -> Home:
    """A home that already holds 3,000 real bars, so 'unchanged' is a meaningful check (on SQLite and PostgreSQL)."""
    data_collector.import_csv(small_csv, "rb0000.SHFE", home=home)
    return home


# --- the whole sample --------------------------------------------------------------------------


@pytest.mark.slow
def test_import_sample_stores_every_bar_at_its_start_time(imported_home: Home) -> None:
    stored = data_collector.list_stored(imported_home)
    assert len(stored) == 1
    series = stored[0]
    assert (series.vt_symbol, series.interval, series.count) == ("rb0000.SHFE", "1m", 409_995)
    assert series.first == china(2010, 7, 20, 9, 0)
    assert series.last == china(2016, 12, 30, 14, 59)


@pytest.mark.slow
def test_overview_table_matches_the_stored_bars(imported_home: Home) -> None:
    conn = sqlite3.connect(data_collector.database_path(imported_home))
    overview = conn.execute('SELECT "count", "start", "end" FROM dbbaroverview').fetchall()
    actual = conn.execute('SELECT COUNT(*), MIN("datetime"), MAX("datetime") FROM dbbardata').fetchall()
    conn.close()
    assert overview == actual == [(409_995, "2010-07-20 09:00:00", "2016-12-30 14:59:00")]


@pytest.mark.slow
def test_load_history_data_returns_the_csv_values_indexed_by_bar_start(imported_home: Home) -> None:
    frame = data_collector.load_history_data("rb0000.SHFE", "2010-07-20", "2010-07-20", home=imported_home)
    assert list(frame.columns) == ["open", "high", "low", "close", "volume", "turnover", "open_interest"]
    assert str(frame.index.tz) == "Asia/Shanghai"
    assert frame.index.name == "datetime"
    assert len(frame) == 224  # the 225-bar day session, less the 13:31 bar this day lacks in the file
    first = frame.iloc[0]
    assert frame.index[0] == pd.Timestamp("2010-07-20 09:00", tz="Asia/Shanghai")
    assert (first.open, first.high, first.low, first.close, first.volume) == (4138, 4146, 4138, 4142, 33938)
    assert frame.index[-1] == pd.Timestamp("2010-07-20 14:59", tz="Asia/Shanghai")
    assert frame.index.is_monotonic_increasing


@pytest.mark.slow
def test_load_history_data_accepts_strings_dates_and_datetimes(imported_home: Home) -> None:
    by_text = data_collector.load_history_data("rb0000.SHFE", "2016-12-01", "2016-12-30", home=imported_home)
    by_time = data_collector.load_history_data(
        "rb0000.SHFE",
        date(2016, 12, 1),
        china(2016, 12, 30, 23, 59),
        interval=Interval.MINUTE,
        home=imported_home,
    )
    pd.testing.assert_frame_equal(by_text, by_time)
    assert by_text.index[0] == pd.Timestamp("2016-12-01 09:00", tz="Asia/Shanghai")
    assert by_text.index[-1] == pd.Timestamp("2016-12-30 14:59", tz="Asia/Shanghai")
    partial = data_collector.load_history_data(
        "rb0000.SHFE", "2016-12-30 10:00", "2016-12-30 10:04", home=imported_home
    )
    assert list(partial.index.strftime("%H:%M")) == ["10:00", "10:01", "10:02", "10:03", "10:04"]


@pytest.mark.slow
def test_load_history_data_matches_the_full_sample_file(imported_home: Home, sample_lines: list[str]) -> None:
    frame = data_collector.load_history_data("rb0000.SHFE", "2010-01-01", "2016-12-31", home=imported_home)
    assert len(frame) == len(sample_lines) - 1
    last = sample_lines[-1].split(",")
    assert frame.iloc[-1][["open", "high", "low", "close", "volume"]].tolist() == [float(v) for v in last[2:]]
    total_volume = sum(int(line.rsplit(",", 1)[1]) for line in sample_lines[1:])
    assert frame["volume"].sum() == total_volume


@pytest.mark.slow
def test_load_history_data_without_bars_names_the_request_and_what_is_stored(imported_home: Home) -> None:
    with pytest.raises(DataError) as error:
        data_collector.load_history_data("rb0000.SHFE", "2020-01-01", "2020-12-31", home=imported_home)
    message = str(error.value)
    assert "rb0000.SHFE" in message and "2020-01-01" in message
    assert "2010-07-20 ~ 2016-12-30" in message
    with pytest.raises(DataError, match="交易所"):
        data_collector.load_history_data("rb0000.XXX", "2016-01-01", "2016-12-31", home=imported_home)


@pytest.mark.slow
def test_vnpy_own_database_calls_read_the_imported_bars(imported_home: Home) -> None:
    result = run_python(
        "import config\n"
        "home = config.resolve_home(); config.bind_vnpy_home(home, config.settings_for(home).database)\n"
        "from datetime import datetime\n"
        "from vnpy.trader.constant import Exchange, Interval\n"
        "from vnpy.trader.database import get_database\n"
        "db = get_database()\n"
        "bars = db.load_bar_data('rb0000', Exchange.SHFE, Interval.MINUTE, datetime(2016, 12, 1), "
        "datetime(2016, 12, 31))\n"
        "print(len(bars), bars[0].datetime.isoformat(), bars[-1].datetime.isoformat())\n"
        "print(sum(b.close_price for b in bars), sum(b.volume for b in bars))\n"
        "o = db.get_bar_overview()[0]\n"
        "print(o.symbol, o.exchange.value, o.interval.value, o.count, o.start, o.end)\n",
        imported_home.root,
    )
    assert result.returncode == 0, result.stderr
    ours = data_collector.load_history_data("rb0000.SHFE", "2016-12-01", "2016-12-30", home=imported_home)
    count, first, last, closes, volumes, overview = result.stdout.replace("\n", " ", 2).split(" ", 5)
    assert int(count) == len(ours)
    assert first == ours.index[0].isoformat() == "2016-12-01T09:00:00+08:00"
    assert last == ours.index[-1].isoformat()
    assert float(closes) == ours["close"].sum()
    assert float(volumes) == ours["volume"].sum()
    assert overview.strip() == "rb0000 SHFE 1m 409995 2010-07-20 09:00:00 2016-12-30 14:59:00"


# --- idempotence and transactions --------------------------------------------------------------


def test_reimporting_the_same_file_changes_nothing(populated: Home, small_csv: Path) -> None:
    before = table_dump(populated)
    result = data_collector.import_csv(small_csv, "rb0000.SHFE", home=populated)
    assert (result.inserted, result.updated, result.unchanged, result.stored) == (0, 0, 3000, 3000)
    assert table_dump(populated) == before


def test_reimport_with_a_corrected_bar_updates_only_that_bar(
    populated: Home, tmp_path: Path, sample_lines: list[str]
) -> None:
    lines = sample_lines[:3001]
    date, time_, open_, high, low, close, volume = lines[10].split(",")
    lines[10] = ",".join([date, time_, open_, high, low, close, str(int(volume) + 1)])
    result = data_collector.import_csv(write_lines(tmp_path / "fixed.csv", lines), "rb0000.SHFE", home=populated)
    assert (result.inserted, result.updated, result.unchanged) == (0, 1, 2999)
    frame = data_collector.load_history_data("rb0000.SHFE", "2010-07-20", "2010-07-20", home=populated)
    assert frame["volume"].iloc[9] == int(volume) + 1


def test_a_failure_while_writing_rolls_back_everything(
    populated: Home, tmp_path: Path, sample_lines: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = table_dump(populated)
    monkeypatch.setattr(bar_store, "WRITE_CHUNK", 1000)
    calls = []

    def fail_on_third(chunk: str) -> None:
        calls.append(chunk)
        if len(calls) == 3:
            raise OSError("disk full")

    more = write_lines(tmp_path / "more.csv", [HEADER, *sample_lines[3001:8001]])
    with pytest.raises(OSError):
        data_collector.import_csv(more, "rb0000.SHFE", home=populated, progress=fail_on_third)
    assert table_dump(populated) == before


# --- invalid files -----------------------------------------------------------------------------

GOOD = ["2016-1-4,9:01:00,2000,2005,1998,2003,100", "2016-1-4,9:02:00,2003,2004,2001,2002,80"]
INVALID_FILES: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "文件为空"),
    "blank": (b"\n\n  \n", "文件为空"),
    "header only": ((HEADER + "\n").encode(), "没有数据行"),
    "wrong columns": (b"a,b,c\n1,2,3\n", "无法识别表头"),
    "unparseable number": (
        (HEADER + "\n" + GOOD[0] + "\n2016-1-4,9:02:00,abc,2004,2001,2002,80\n").encode(),
        "第 3 行 / line 3: open 值 'abc'",
    ),
    "unparseable date": (
        (HEADER + "\n2016-13-45,9:01:00,2000,2005,1998,2003,100\n").encode(),
        "第 2 行 / line 2: 时间 '2016-13-45 9:01:00' 无法解析",
    ),
    "high below close": (
        (HEADER + "\n" + GOOD[0] + "\n2016-1-4,9:02:00,2003,2001,2001,2002,80\n").encode(),
        "第 3 行 / line 3: high 2001 低于 max(open, close) 2003",
    ),
    "low above open": (
        (HEADER + "\n2016-1-4,9:01:00,2000,2005,2001,2003,100\n").encode(),
        "第 2 行 / line 2: low 2001 高于 min(open, close) 2000",
    ),
    "zero price": ((HEADER + "\n2016-1-4,9:01:00,0,2005,0,2003,100\n").encode(), "open = 0 不是正数"),
    "negative volume": ((HEADER + "\n2016-1-4,9:01:00,2000,2005,1998,2003,-5\n").encode(), "volume = -5 为负"),
    "truncated last line": (
        (HEADER + "\n" + GOOD[0] + "\n2016-1-4,9:02:00,2003,20").encode(),
        "第 3 行 / line 3: 有 4 个字段，应为 7 个",
    ),
    "missing cells": (
        (HEADER + "\n" + GOOD[0] + "\n2016-1-4,9:02:00,2003,,2001,2002,80\n").encode(),
        "第 3 行 / line 3: 缺少 high 值",
    ),
    "too many fields": ((HEADER + "\n" + GOOD[0] + ",7,8\n").encode(), "第 2 行 / line 2: 有 9 个字段，应为 7 个"),
    "conflicting duplicate": (
        (HEADER + "\n" + GOOD[0] + "\n2016-1-4,9:01:00,2000,2006,1998,2003,100\n").encode(),
        "重复且数值不同（第 2, 3 行）",
    ),
    "off the minute grid": (
        (HEADER + "\n2016-1-4,9:01:30,2000,2005,1998,2003,100\n").encode(),
        "不在 0:01:00 的整点上",
    ),
    "binary": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), "不是文本"),
    "not utf-8": (
        (HEADER + "\n" + GOOD[0] + "\n").encode() + "2016-1-4,9:02:00,高".encode("gbk") + b"\n",
        "第 3 行不是 UTF-8",
    ),
    "corrupt bz2": (b"BZh91AY&SY" + b"\x00garbage" * 20, "压缩文件损坏"),
    "truncated gzip": (gzip.compress((HEADER + "\n" + "\n".join(GOOD * 50)).encode())[:60], "压缩文件损坏"),
}


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)  # validation happens before any database work
@pytest.mark.parametrize("case", sorted(INVALID_FILES))
def test_invalid_file_is_rejected_naming_the_problem_and_changes_nothing(
    populated: Home, tmp_path: Path, case: str
) -> None:
    content, fragment = INVALID_FILES[case]
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    before = table_dump(populated)
    with pytest.raises(DataError) as error:
        data_collector.import_csv(path, "rb0000.SHFE", home=populated)
    assert str(path) in str(error.value)
    assert fragment in str(error.value)
    assert table_dump(populated) == before


def test_many_bad_rows_are_counted_and_the_first_ones_listed(home: Home, tmp_path: Path) -> None:
    rows = [f"2016-1-4,9:{m:02d}:00,2000,1990,1998,2003,100" for m in range(1, 41)]
    with pytest.raises(DataError) as error:
        data_collector.import_csv(write_lines(tmp_path / "bad.csv", [HEADER, *rows]), "rb0000.SHFE", home=home)
    message = str(error.value)
    assert "有 40 处问题" in message
    assert "第 2 行" in message and "第 11 行" in message and "第 12 行" not in message
    assert "另有 30 处" in message


@pytest.mark.parametrize(
    ("vt_symbol", "interval", "fragment"),
    [("rb0000", "1m", "格式错误"), ("rb0000.NOPE", "1m", "交易所"), ("rb0000.SHFE", "7m", "周期")],
)
def test_bad_symbol_or_interval_is_rejected(
    home: Home, small_csv: Path, vt_symbol: str, interval: str, fragment: str
) -> None:
    with pytest.raises(DataError, match=fragment):
        data_collector.import_csv(small_csv, vt_symbol, interval=interval, home=home)


def test_missing_file_is_a_data_error(home: Home, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="文件不存在"):
        data_collector.import_csv(tmp_path / "nope.csv", "rb0000.SHFE", home=home)


# --- valid variations --------------------------------------------------------------------------


def expect_good_bars(home: Home, vt_symbol: str = "rb0000.SHFE") -> None:
    frame = data_collector.load_history_data(vt_symbol, "2016-01-04", "2016-01-04", home=home)
    assert frame.index.tolist() == [
        pd.Timestamp("2016-01-04 09:00", tz="Asia/Shanghai"),
        pd.Timestamp("2016-01-04 09:01", tz="Asia/Shanghai"),
    ]
    assert frame[["open", "high", "low", "close", "volume"]].values.tolist() == [
        [2000, 2005, 1998, 2003, 100],
        [2003, 2004, 2001, 2002, 80],
    ]


@pytest.mark.parametrize(
    "variant",
    ["crlf", "bom", "quoted", "padded dates", "blank lines", "exact duplicate", "gzip", "bz2", "unsorted"],
)
def test_valid_variations_import_the_same_bars(home: Home, tmp_path: Path, variant: str) -> None:
    lines, newline = [HEADER, *GOOD], "\n"
    if variant == "crlf":
        newline = "\r\n"
    if variant == "quoted":
        lines = [",".join(f'"{cell}"' for cell in line.split(",")) for line in lines]
    if variant == "padded dates":
        lines = [lines[0]] + [line.replace("2016-1-4,9:", "2016-01-04,09:") for line in GOOD]
    if variant == "blank lines":
        lines = [HEADER, "", GOOD[0], "", GOOD[1], ""]
    if variant == "exact duplicate":
        lines = [HEADER, GOOD[0], GOOD[1], GOOD[0]]
    if variant == "unsorted":
        lines = [HEADER, GOOD[1], GOOD[0]]
    data = newline.join(lines).encode() + newline.encode()
    if variant == "bom":
        data = b"\xef\xbb\xbf" + data
    if variant == "gzip":
        data = gzip.compress(data)
    if variant == "bz2":
        data = bz2.compress(data)
    path = tmp_path / "good.csv"
    path.write_bytes(data)
    result = data_collector.import_csv(path, "rb0000.SHFE", home=home)
    assert result.stored == 2
    assert result.duplicates_dropped == (1 if variant == "exact duplicate" else 0)
    expect_good_bars(home)


def test_vnpy_export_format_with_offsets_is_read_as_bar_start(home: Home, tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "vnpy.csv",
        [
            "symbol,exchange,datetime,open,high,low,close,volume,turnover,open_interest",
            "rb1605,SHFE,2016-01-04 09:00:00+08:00,2000,2005,1998,2003,100,2001000,5000",
            "rb1605,SHFE,2016-01-04 01:01:00+00:00,2003,2004,2001,2002,80,1602000,5010",
        ],
    )
    result = data_collector.import_csv(path, "rb1605.SHFE", home=home)
    assert result.stored == 2
    expect_good_bars(home, "rb1605.SHFE")
    frame = data_collector.load_history_data("rb1605.SHFE", "2016-01-04", "2016-01-04", home=home)
    assert frame["turnover"].tolist() == [2001000, 1602000]
    assert frame["open_interest"].tolist() == [5000, 5010]


def test_column_map_reads_other_layouts_newest_first(home: Home, tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "other.csv",
        [
            "trade_time,open_price,high_price,low_price,close_price,vol",
            "20160104 09:02,2003,2004,2001,2002,80",
            "20160104 09:01,2000,2005,1998,2003,100",
        ],
    )
    columns = {
        "datetime": "trade_time",
        "open": "open_price",
        "high": "high_price",
        "low": "low_price",
        "close": "close_price",
        "volume": "vol",
    }
    with pytest.raises(DataError, match="--timestamp"):
        data_collector.import_csv(path, "rb0000.SHFE", columns=columns, datetime_format="%Y%m%d %H:%M", home=home)
    data_collector.import_csv(
        path, "rb0000.SHFE", timestamp="end", columns=columns, datetime_format="%Y%m%d %H:%M", home=home
    )
    expect_good_bars(home)


def test_timestamp_start_keeps_file_times(home: Home, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "s.csv", [HEADER, *GOOD])
    data_collector.import_csv(path, "rb0000.SHFE", timestamp="start", home=home)
    frame = data_collector.load_history_data("rb0000.SHFE", "2016-01-04", "2016-01-04", home=home)
    assert frame.index.strftime("%H:%M").tolist() == ["09:01", "09:02"]


# --- saving vnpy objects and downloading -------------------------------------------------------


def bar(minute: int, close: float = 2000.0) -> BarData:
    return BarData(
        symbol="rb2405",
        exchange=Exchange.SHFE,
        interval=Interval.MINUTE,
        gateway_name="TEST",
        datetime=china(2024, 1, 2, 9, minute),
        open_price=close,
        high_price=close + 2,
        low_price=close - 2,
        close_price=close,
        volume=10,
        turnover=1e5,
        open_interest=300,
    )


def test_save_bars_keeps_the_objects_intact(home: Home, database: str) -> None:
    bars = [bar(0), bar(1, 2001)]
    conn = data_collector.open_database(home)
    saved = data_collector.save_bars(conn, bars)
    conn.close()
    assert (saved.inserted, saved.stored) == (2, 2)
    assert bars[0].exchange is Exchange.SHFE and bars[0].vt_symbol == "rb2405.SHFE"
    assert bars[0].datetime.tzinfo is CHINA_TZ
    frame = data_collector.load_history_data("rb2405.SHFE", "2024-01-02", "2024-01-02", home=home)
    assert frame["close"].tolist() == [2000, 2001]


def test_saving_no_bars_is_a_clear_error(home: Home) -> None:
    conn = data_collector.open_database(home)
    with pytest.raises(DataError, match="没有要保存的K线"):
        data_collector.save_bars(conn, [])
    conn.close()


class FakeDatafeed:
    """Stands in for a vnpy datafeed: records the request, returns the given bars."""

    def __init__(self, bars: list[BarData], ready: bool = True) -> None:
        self.bars, self.ready = bars, ready
        self.requests: list[HistoryRequest] = []

    def init(self, output: object) -> bool:
        return self.ready

    def query_bar_history(self, req: HistoryRequest, output: object) -> list[BarData]:
        self.requests.append(req)
        return self.bars


def test_download_history_stores_the_datafeed_bars(home: Home, database: str) -> None:
    feed = FakeDatafeed([bar(1, 2001), bar(0)])
    saved = data_collector.download_history("rb2405.SHFE", "2024-01-02", "2024-01-02", "1m", feed, home)
    assert (saved.inserted, saved.stored) == (2, 2)
    request = feed.requests[0]
    assert (request.symbol, request.exchange, request.interval) == ("rb2405", Exchange.SHFE, Interval.MINUTE)
    assert request.start == china(2024, 1, 2, 0, 0)
    assert request.end is not None and request.end.date() == request.start.date()


def test_download_history_failures_are_transient_or_data_errors(home: Home, database: str) -> None:
    with pytest.raises(data_collector.TransientError):
        data_collector.download_history("rb2405.SHFE", "2024-01-02", "2024-01-02", "1m", FakeDatafeed([], False), home)
    with pytest.raises(DataError, match="没有返回"):
        data_collector.download_history("rb2405.SHFE", "2024-01-02", "2024-01-02", "1m", FakeDatafeed([]), home)
    broken = bar(0)
    broken.high_price = 1
    with pytest.raises(DataError, match="high"):
        data_collector.download_history("rb2405.SHFE", "2024-01-02", "2024-01-02", "1m", FakeDatafeed([broken]), home)
    assert data_collector.list_stored(home) == []


FEED_MODULE = textwrap.dedent("""
    from datetime import date, datetime
    from zoneinfo import ZoneInfo
    from vnpy.trader.object import BarData, HistoryRequest
    from vnpy.trader.setting import SETTINGS

    class Datafeed:
        def init(self, output=print):
            return SETTINGS["datafeed.password"] == "s3cret"

        def query_bar_history(self, req, output=print):
            tz = ZoneInfo("Asia/Shanghai")
            return [BarData(symbol=req.symbol, exchange=req.exchange, interval=req.interval, gateway_name="F",
                            datetime=datetime(2024, 1, 2, 9, m, tzinfo=tz), open_price=10, high_price=11,
                            low_price=9, close_price=10, volume=1) for m in range(3)]
""")


def test_download_command_uses_the_configured_datafeed_with_secrets_from_the_environment(tmp_path: Path) -> None:
    (tmp_path / "feeds").mkdir()
    (tmp_path / "feeds" / "vnpy_localfeed.py").write_text(FEED_MODULE, encoding="utf-8")
    home = tmp_path / "home"
    (home / ".vntrader").mkdir(parents=True)
    (home / ".vntrader" / "vt_setting.json").write_text(json.dumps({"datafeed.name": "localfeed"}))
    code = (
        "import sys, ai_trading_system\n"
        "sys.exit(ai_trading_system.main(['download', '--vt-symbol', 'rb2405.SHFE', '--start', '2024-01-02', "
        "'--end', '2024-01-02']))"
    )
    denied = run_python(code, home, extra_path=tmp_path / "feeds")
    assert denied.returncode == 3, denied.stderr
    assert "数据服务初始化失败" in denied.stderr
    done = run_python(code, home, extra_path=tmp_path / "feeds", env={"AI_TRADER_DATAFEED_PASSWORD": "s3cret"})
    assert done.returncode == 0, done.stderr
    assert "新增 3" in done.stdout
    assert "s3cret" not in (home / ".vntrader" / "vt_setting.json").read_text()
    assert [s.count for s in data_collector.list_stored(home)] == [3]


def test_download_command_without_a_datafeed_exits_2_with_advice(tmp_path: Path) -> None:
    code = (
        "import sys, ai_trading_system\n"
        "sys.exit(ai_trading_system.main(['download', '--vt-symbol', 'rb2405.SHFE', '--start', '2024-01-02', "
        "'--end', '2024-01-03']))"
    )
    result = run_python(code, tmp_path / "home")
    assert result.returncode == 2
    assert "未配置数据服务" in result.stderr and "datafeed.name" in result.stderr
    assert "Traceback" not in result.stderr


# --- live recording ----------------------------------------------------------------------------

Factory = Callable[..., DataCollector]


@pytest.fixture
def make_collector(home: Home, database: str) -> Iterator[Factory]:
    """Build collectors on the temporary home (SQLite or PostgreSQL) and always stop them, so no writer thread
    outlives a test."""
    made: list[DataCollector] = []

    def build(main_engine: Any = None, **kwargs: Any) -> DataCollector:
        collector = DataCollector(main_engine, home=home, **kwargs)
        made.append(collector)
        return collector

    yield build
    for collector in made:
        collector.stop()


def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    """Poll until condition() holds or the time is up."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def make_tick(symbol: str, moment: datetime, price: float, volume: float = 0.0) -> TickData:
    """A synthetic SHFE tick."""
    return TickData(
        symbol=symbol,
        exchange=Exchange.SHFE,
        datetime=moment,
        gateway_name="CTP",
        last_price=price,
        volume=volume,
        bid_price_1=price - 1,
        ask_price_1=price + 1,
    )


def number(text: str) -> float:
    """A CSV cell as float; an empty depth level is 0, as vnpy gateways send it."""
    return float(text) if text else 0.0


def read_copper_ticks() -> list[tuple[str, TickData]]:
    """The 200 real cu1909 ticks as (CSV time text, TickData)."""
    ticks = []
    with open(require(config.SAMPLE_TICKS_CSV), newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            depth: dict[str, Any] = {
                f"{side}_{kind}_{level}": number(row[f"{side}_{kind}{level}"])
                for side in ("bid", "ask")
                for kind in ("price", "volume")
                for level in range(1, 6)
            }
            tick = TickData(
                symbol="cu1909",
                exchange=Exchange.SHFE,
                gateway_name="CTP",
                datetime=datetime.fromisoformat(row["datetime"]).replace(tzinfo=CHINA_TZ),
                last_price=number(row["last_price"]),
                high_price=number(row["highest"]),
                low_price=number(row["lowest"]),
                volume=number(row["volume"]),
                turnover=number(row["amount"]),
                open_interest=number(row["open_interest"]),
                **depth,
            )
            ticks.append((row["datetime"], tick))
    return ticks


def expected_bars(ticks: list[TickData]) -> dict[str, dict[str, float]]:
    """1-minute bars keyed by minute text, built the way vnpy's BarGenerator does (written out independently)."""
    bars: dict[str, dict[str, float]] = {}
    previous: TickData | None = None
    for tick in ticks:
        key = tick.datetime.strftime("%Y-%m-%d %H:%M:00")
        price = tick.last_price
        if key not in bars:
            bars[key] = {"open": price, "high": price, "low": price, "volume": 0.0, "turnover": 0.0}
        bar = bars[key]
        bar.update(high=max(bar["high"], price), low=min(bar["low"], price), close=price, oi=tick.open_interest)
        if previous is not None:
            if tick.high_price > previous.high_price:  # a new day high since the last tick
                bar["high"] = max(bar["high"], tick.high_price)
            if tick.low_price < previous.low_price:
                bar["low"] = min(bar["low"], tick.low_price)
            bar["volume"] += max(tick.volume - previous.volume, 0)
            bar["turnover"] += max(tick.turnover - previous.turnover, 0)
        previous = tick
    return bars


def test_records_real_copper_ticks_and_their_one_minute_bars(make_collector: Factory, home: Home) -> None:
    rows = read_copper_ticks()
    ticks = [tick for _, tick in rows]
    before = [vars(tick).copy() for tick in ticks]
    collector = make_collector(batch_size=64, flush_interval=0.05)
    for tick in ticks:
        collector.save_tick_data(tick)
    collector.stop()

    assert [vars(tick) for tick in ticks] == before  # the recorder does not modify ticks
    stored = home_rows(
        home,
        'SELECT "datetime", "last_price", "volume", "bid_price_1", "ask_volume_1" FROM '
        '"dbtickdata" WHERE "symbol" = ? AND "exchange" = ? ORDER BY "datetime"',
        "cu1909",
        "SHFE",
    )
    assert len(stored) == 200
    assert stored[0] == ("2019-09-16 14:01:33", 47800.0, 7360.0, 47780.0, 10.0)
    assert stored[-1][:3] == ("2019-09-16 14:59:59.999500", 47580.0, 9020.0)
    assert [row[1] for row in stored] == [tick.last_price for tick in ticks]
    assert home_rows(home, 'SELECT "count", "start", "end" FROM "dbtickoverview" WHERE "symbol" = ?', "cu1909") == [
        (200, "2019-09-16 14:01:33", "2019-09-16 14:59:59.999500")
    ]

    bars = home_rows(
        home,
        'SELECT "datetime", "open_price", "high_price", "low_price", "close_price", "volume", '
        '"turnover", "open_interest" FROM "dbbardata" WHERE "symbol" = ? AND "interval" = ? '
        'ORDER BY "datetime"',
        "cu1909",
        "1m",
    )
    wanted = expected_bars(ticks)
    minutes = sorted({text[:16] + ":00" for text, _ in rows})
    assert len(minutes) == 51
    assert [bar[0] for bar in bars] == minutes  # one bar per minute, stamped at the minute start, 14:59 included
    for moment, open_, high, low, close, volume, turnover, open_interest in bars:
        prices = [tick.last_price for text, tick in rows if text.startswith(moment[:16])]
        assert (open_, close) == (prices[0], prices[-1])
        assert high >= max(prices) and low <= min(prices)
        want = wanted[moment]
        assert (high, low, volume, turnover, open_interest) == (
            want["high"],
            want["low"],
            want["volume"],
            want["turnover"],
            want["oi"],
        )
    assert bars[0][5] == sum(
        max(b.volume - a.volume, 0)
        for a, b in zip(ticks, ticks[1:], strict=False)
        if b.datetime.minute == ticks[0].datetime.minute
    )
    assert sum(bar[5] for bar in bars) == ticks[-1].volume - ticks[0].volume  # cumulative volume never falls here
    assert home_rows(home, 'SELECT "count", "start", "end" FROM "dbbaroverview" WHERE "symbol" = ?', "cu1909") == [
        (51, "2019-09-16 14:01:00", "2019-09-16 14:59:00")
    ]
    stats = collector.stats
    assert (stats.ticks_stored, stats.bars_stored, stats.write_errors, stats.ticks_dropped) == (200, 51, 0, 0)


def test_vnpy_database_reads_the_recorded_ticks_and_bars(make_collector: Factory, home: Home) -> None:
    ticks = [tick for _, tick in read_copper_ticks()]
    collector = make_collector()
    for tick in ticks:
        collector.save_tick_data(tick)
    collector.stop()

    script = (
        "import json, config\n"
        "from datetime import datetime\n"
        "home = config.resolve_home()\n"
        "config.bind_vnpy_home(home, config.settings_for(home).database)\n"
        "from vnpy.trader.constant import Exchange, Interval\n"
        "from vnpy.trader.database import get_database\n"
        "db = get_database()\n"
        "start, end = datetime(2019, 9, 16, tzinfo=config.CHINA_TZ), datetime(2019, 9, 17, tzinfo=config.CHINA_TZ)\n"
        "ticks = db.load_tick_data('cu1909', Exchange.SHFE, start, end)\n"
        "bars = db.load_bar_data('cu1909', Exchange.SHFE, Interval.MINUTE, start, end)\n"
        "print(json.dumps([len(ticks), ticks[0].datetime.isoformat(), ticks[0].last_price, ticks[-1].bid_price_1,\n"
        "                  len(bars), bars[0].datetime.isoformat(), bars[-1].close_price]))\n"
    )
    env = {**os.environ, config.HOME_ENV: str(home.root), "TZ": "Asia/Shanghai", "PYTHONPATH": str(config.PROJECT_DIR)}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=home.root, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [
        200,
        "2019-09-16T14:01:33+08:00",
        47800.0,
        47570.0,
        51,
        "2019-09-16T14:01:00+08:00",
        47580.0,
    ]


def test_burst_from_two_producers_is_queued_without_waiting_for_the_writer(
    make_collector: Factory, home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate, entered = threading.Event(), threading.Event()
    real_save = bar_store.save_ticks

    def blocked_save(conn: bar_store.Connection, ticks: list[TickData]) -> int:
        entered.set()
        assert gate.wait(30), "test never opened the gate"
        return real_save(conn, ticks)

    monkeypatch.setattr(data_collector, "save_ticks", blocked_save)
    start = datetime(2024, 1, 2, 9, 0, tzinfo=CHINA_TZ)
    per_symbol, step = 10_000, timedelta(milliseconds=30)  # 300 s: minutes 09:00 to 09:04
    streams = {
        symbol: [make_tick(symbol, start + i * step, base + i % 7, volume=i) for i in range(per_symbol)]
        for symbol, base in (("rb2405", 3900.0), ("hc2405", 3800.0))
    }
    collector = make_collector(batch_size=500, flush_interval=0.05)
    errors: list[BaseException] = []

    def produce(ticks: list[TickData]) -> None:
        try:
            for tick in ticks:
                collector.save_tick_data(tick)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    producers = [threading.Thread(target=produce, args=(ticks,)) for ticks in streams.values()]
    for thread in producers:
        thread.start()
    for thread in producers:
        thread.join(60)
    # Every call has returned while the writer is still stuck in its first database write.
    assert not errors and not any(thread.is_alive() for thread in producers)
    assert entered.wait(10) and not gate.is_set()
    assert collector.stats.ticks_stored == 0
    gate.set()
    collector.stop()

    counts = dict(home_rows(home, 'SELECT "symbol", COUNT(*) FROM "dbtickdata" GROUP BY "symbol"'))
    assert counts == {"rb2405": per_symbol, "hc2405": per_symbol}
    for symbol in streams:
        bars = home_rows(
            home, 'SELECT "datetime", "volume" FROM "dbbardata" WHERE "symbol" = ? ORDER BY "datetime"', symbol
        )
        # 2,000 ticks a minute, volume +1 a tick; the stream's first tick adds nothing.
        assert bars == [(f"2024-01-02 09:0{m}:00", 2000.0 - (m == 0)) for m in range(5)]
    assert collector.stats.ticks_stored == 2 * per_symbol and collector.stats.write_errors == 0


class FakeEventEngine:
    """Records handler registration like vnpy's EventEngine."""

    def __init__(self) -> None:
        self.handlers: dict[str, list[Callable[[Any], None]]] = {}

    def register(self, kind: str, handler: Callable[[Any], None]) -> None:
        self.handlers.setdefault(kind, []).append(handler)

    def unregister(self, kind: str, handler: Callable[[Any], None]) -> None:
        self.handlers[kind].remove(handler)


class FakeMainEngine:
    """Knows some contracts and records subscriptions, like vnpy's MainEngine after login."""

    def __init__(self, known: dict[str, str]) -> None:
        self.known = known
        self.event_engine = FakeEventEngine()
        self.subscribed: list[tuple[SubscribeRequest, str]] = []

    def get_contract(self, vt_symbol: str) -> Any:
        gateway = self.known.get(vt_symbol)
        return SimpleNamespace(vt_symbol=vt_symbol, gateway_name=gateway) if gateway else None

    def subscribe(self, request: SubscribeRequest, gateway_name: str) -> None:
        self.subscribed.append((request, gateway_name))


def test_subscribe_checks_contracts_and_records_only_subscribed_ticks(
    make_collector: Factory, home: Home, caplog: pytest.LogCaptureFixture
) -> None:
    from vnpy.event import Event
    from vnpy.trader.event import EVENT_TICK

    engine = FakeMainEngine({"rb2405.SHFE": "CTP", "IF2403.CFFEX": "CTP"})
    collector = make_collector(engine, flush_interval=3600)
    with pytest.raises(DataError, match=r"未知合约 cu2405\.SHFE.*unknown contract"):
        collector.subscribe_market_data(["rb2405.SHFE", "cu2405.SHFE"])
    assert engine.subscribed == [] and engine.event_engine.handlers == {}
    with pytest.raises(DataError, match="bad vt_symbol"):
        collector.subscribe_market_data(["rb2405"])

    collector.subscribe_market_data(["rb2405.SHFE", "IF2403.CFFEX"])
    assert [(r.symbol, r.exchange, r.vt_symbol, gateway) for r, gateway in engine.subscribed] == [
        ("rb2405", Exchange.SHFE, "rb2405.SHFE", "CTP"),
        ("IF2403", Exchange.CFFEX, "IF2403.CFFEX", "CTP"),
    ]
    collector.subscribe_market_data(["rb2405.SHFE"])
    [handler] = engine.event_engine.handlers[EVENT_TICK]  # registered once

    moment = datetime(2024, 1, 2, 9, 0, 1, tzinfo=CHINA_TZ)
    handler(Event(EVENT_TICK, make_tick("rb2405", moment, 3900.0)))
    handler(Event(EVENT_TICK, make_tick("cu2405", moment, 68000.0)))  # not subscribed
    with caplog.at_level(logging.ERROR, logger="data_collector"):
        handler(Event(EVENT_TICK, "not a tick"))
        handler(Event(EVENT_TICK, make_tick("rb2405", moment.replace(tzinfo=None), 3901.0)))  # naive time
        handler(object())
    assert len([r for r in caplog.records if r.name == "data_collector"]) == 3  # each bad event, logged
    collector.stop()

    assert engine.event_engine.handlers[EVENT_TICK] == []
    assert home_rows(home, 'SELECT "symbol", "datetime", "last_price" FROM "dbtickdata"') == [
        ("rb2405", "2024-01-02 09:00:01", 3900.0)
    ]
    with pytest.raises(DataError, match="stopped"):
        collector.subscribe_market_data(["rb2405.SHFE"])


def test_stop_flushes_everything_and_later_ticks_are_refused(make_collector: Factory, home: Home) -> None:
    collector = make_collector(batch_size=10_000, flush_interval=3600)
    start = datetime(2024, 1, 2, 21, 0, 59, tzinfo=CHINA_TZ)
    for i in range(30):
        collector.save_tick_data(make_tick("rb2405", start + timedelta(milliseconds=500 * i), 3900.0 + i, volume=i))
    collector.stop()
    collector.stop()

    assert home_rows(home, 'SELECT COUNT(*) FROM "dbtickdata"') == [(30,)]
    assert home_rows(
        home, 'SELECT "datetime", "open_price", "close_price", "volume" FROM "dbbardata" ORDER BY "datetime"'
    ) == [
        ("2024-01-02 21:00:00", 3900.0, 3901.0, 1.0),
        ("2024-01-02 21:01:00", 3902.0, 3929.0, 28.0),  # the in-progress minute, stored at stop
    ]
    with pytest.raises(DataError, match="stopped"):
        collector.save_tick_data(make_tick("rb2405", start, 3900.0))


def test_failed_write_is_logged_and_retried_without_losing_ticks(
    make_collector: Factory,
    home: Home,
    database: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    real_save = bar_store.save_ticks
    failures = [sqlite3.OperationalError("database is locked")]

    def flaky_save(conn: bar_store.Connection, ticks: list[TickData]) -> int:
        if failures:
            raise failures.pop()
        return real_save(conn, ticks)

    monkeypatch.setattr(data_collector, "save_ticks", flaky_save)
    collector = make_collector(batch_size=20, flush_interval=0.05)
    start = datetime(2024, 1, 2, 9, 30, tzinfo=CHINA_TZ)
    with caplog.at_level(logging.ERROR, logger="data_collector"):
        for i in range(50):
            collector.save_tick_data(make_tick("rb2405", start + timedelta(seconds=i), 3900.0 + i))
        assert wait_for(lambda: collector.stats.ticks_stored == 50), collector.stats  # before stop, by a retry
    assert "database is locked" in caplog.text and "write failed" in caplog.text
    collector.stop()

    stats = collector.stats
    assert (stats.write_errors, stats.ticks_stored, stats.ticks_dropped) == (1, 50, 0)
    assert home_rows(home, 'SELECT COUNT(*), MIN("last_price"), MAX("last_price") FROM "dbtickdata"') == [
        (50, 3900.0, 3949.0)
    ]
    if database == "sqlite":
        assert home_rows(home, "PRAGMA integrity_check") == [("ok",)]


# --- tick loading ------------------------------------------------------------------------------


def tick_fields(tick: TickData) -> dict[str, Any]:
    """A tick's values without the gateway it came from."""
    return {key: value for key, value in vars(tick).items() if key != "gateway_name"}


def test_read_tick_csv_reads_every_field_of_the_copper_sample(sample_ticks_csv: Path) -> None:
    expected = [tick for _, tick in read_copper_ticks()]
    ticks = data_collector.read_tick_csv(sample_ticks_csv, "cu1909.SHFE")
    assert [tick_fields(t) for t in ticks] == [tick_fields(t) for t in expected]
    assert ticks[-1].datetime == datetime(2019, 9, 16, 14, 59, 59, 999500, tzinfo=CHINA_TZ)
    assert (ticks[-1].ask_price_5, ticks[-1].ask_volume_5) == (0.0, 0.0)  # an empty depth level


def test_read_tick_csv_rejects_bad_rows_naming_their_lines(tmp_path: Path, sample_ticks_csv: Path) -> None:
    header, *rows = sample_ticks_csv.read_text(encoding="utf-8").splitlines()[:6]
    bad = [
        rows[0],
        rows[2],
        rows[1],  # line 4 goes back in time
        rows[3].replace("47800.0", "abc", 1),  # line 5: last_price
        rows[4].replace(",7370,", ",-5,", 1),  # line 6: volume
        "2019-09-16 25:61:00," + rows[4].split(",", 1)[1],
    ]  # line 7: time
    path = write_lines(tmp_path / "ticks.csv", [header, *bad])
    with pytest.raises(DataError) as error:
        data_collector.read_tick_csv(path, "cu1909.SHFE")
    message = str(error.value)
    for line, reason in (
        (4, "time goes backwards"),
        (5, "price must be positive"),
        (6, "must be a number ≥ 0"),
        (7, "unparseable time"),
    ):
        assert f"第 {line} 行 / line {line}: " in message and reason in message
    assert "第 2 行" not in message and "第 3 行" not in message
    bars = write_lines(tmp_path / "bars.csv", [HEADER, "2016-1-4,9:01:00,1,2,1,2,3"])
    with pytest.raises(DataError, match="not a tick CSV"):
        data_collector.read_tick_csv(bars, "cu1909.SHFE")


def test_load_tick_data_returns_the_stored_ticks_in_range(home: Home, database: str, sample_ticks_csv: Path) -> None:
    ticks = data_collector.read_tick_csv(sample_ticks_csv, "cu1909.SHFE")
    conn = data_collector.open_database(home)
    assert bar_store.save_ticks(conn, ticks) == 200
    assert bar_store.save_ticks(conn, ticks) == 0  # the same ticks again change nothing
    conn.close()

    loaded = data_collector.load_tick_data("cu1909.SHFE", "2019-09-16", "2019-09-16", home=home)
    assert [tick_fields(t) for t in loaded] == [tick_fields(t) for t in ticks]
    assert {t.gateway_name for t in loaded} == {"DB"}
    start, end = china(2019, 9, 16, 14, 10), china(2019, 9, 16, 14, 20)
    part = data_collector.load_tick_data("cu1909.SHFE", start, end, home=home)
    assert [t.datetime for t in part] == [t.datetime for t in ticks if start <= t.datetime <= end] and part
    with pytest.raises(DataError, match=r"没有 cu1909\.SHFE.*tick 2019-09-16 ~ 2019-09-16 \(200\)"):
        data_collector.load_tick_data("cu1909.SHFE", "2019-09-17", "2019-09-17", home=home)
    with pytest.raises(DataError, match="start after end"):
        data_collector.load_tick_data("cu1909.SHFE", "2019-09-17", "2019-09-16", home=home)


# --- PostgreSQL: one setting, vnpy's own tables, clear failures ------------------------------------------------


@pytest.mark.slow
def test_full_sample_on_postgresql_loads_the_same_bars_as_sqlite_and_vnpy_reads_them(
    imported_home: Home, home: Home, sample_bars_csv: Path, postgresql_server: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_postgresql(home, postgresql_server, postgresql_server.create_database(), monkeypatch)
    result = data_collector.import_csv(sample_bars_csv, "rb0000.SHFE", timestamp="end", home=home)
    assert (result.inserted, result.stored) == (409_995, 409_995)
    ours = data_collector.load_history_data("rb0000.SHFE", "2010-01-01", "2016-12-31", home=home)
    theirs = data_collector.load_history_data("rb0000.SHFE", "2010-01-01", "2016-12-31", home=imported_home)
    # DataFrame.equals, not assert_frame_equal: the same check in milliseconds instead of 12 s on 410k bars
    assert ours.equals(theirs) and ours.index.dtype == theirs.index.dtype and ours.index.name == theirs.index.name
    assert data_collector.list_stored(home) == data_collector.list_stored(imported_home)
    again = data_collector.import_csv(sample_bars_csv, "rb0000.SHFE", timestamp="end", home=home)
    assert (again.inserted, again.updated, again.unchanged, again.stored) == (0, 0, 409_995, 409_995)

    result_vnpy = run_python(
        "import config\n"
        "home = config.resolve_home(); config.bind_vnpy_home(home, config.settings_for(home).database)\n"
        "from datetime import datetime\n"
        "from vnpy.trader.constant import Exchange, Interval\n"
        "from vnpy.trader.database import get_database\n"
        "db = get_database()\n"
        "bars = db.load_bar_data('rb0000', Exchange.SHFE, Interval.MINUTE, datetime(2016, 12, 1), "
        "datetime(2016, 12, 31))\n"
        "print(type(db).__name__, len(bars), bars[0].datetime.isoformat(), sum(b.close_price for b in bars))\n"
        "o = db.get_bar_overview()[0]\n"
        "print(o.symbol, o.exchange.value, o.interval.value, o.count, o.start, o.end)\n",
        home.root,
        env={SECRET_ENV["db_password"]: postgresql_server.password},
    )
    assert result_vnpy.returncode == 0, result_vnpy.stderr
    december = ours.loc["2016-12-01":"2016-12-30"]
    assert result_vnpy.stdout.splitlines() == [
        f"PostgresqlDatabase {len(december)} 2016-12-01T09:00:00+08:00 {december['close'].sum()}",
        "rb0000 SHFE 1m 409995 2010-07-20 09:00:00 2016-12-30 14:59:00",
    ]
    assert "database.password" not in json.loads(home.vt_setting_path.read_text(encoding="utf-8"))


def test_the_same_import_gives_the_same_backtest_on_both_databases(
    home: Home, database: str, tmp_path: Path, sample_frame: pd.DataFrame, rf_bundle: Path
) -> None:
    from backtesting_module import BacktestingModule

    january = sample_frame.loc["2015-12-20":"2016-01-31"]
    path = tmp_path / "january.csv"
    january.reset_index().to_csv(path, index=False)  # vnpy's export layout: datetime (bar start), OHLCV, ...
    data_collector.import_csv(path, "rb0000.SHFE", home=home)
    module = BacktestingModule(home)
    setting = {"fixed_size": 1}
    stored = module.run_backtest("rb0000.SHFE", "2016-01-04", "2016-01-31", rf_bundle, setting, use_cache=False)
    given = module.run_backtest(
        "rb0000.SHFE", "2016-01-04", "2016-01-31", rf_bundle, setting, bars=january, use_cache=False
    )
    assert stored.statistics == given.statistics
    assert stored.statistics["total_trade_count"] > 0


def test_postgresql_login_refused_exits_2_and_an_unreachable_server_exits_3(
    home: Home, postgresql_server: PgServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import ai_trading_system

    use_postgresql(home, postgresql_server, postgresql_server.create_database(), monkeypatch)
    assert ai_trading_system.main(["--home", str(home.root), "data"]) == 0
    assert f"postgresql://trader@127.0.0.1:{postgresql_server.port}/" in capsys.readouterr().out

    monkeypatch.setenv(SECRET_ENV["db_password"], "wrong-password")
    assert ai_trading_system.main(["--home", str(home.root), "data"]) == 2
    error = capsys.readouterr().err
    assert "拒绝登录" in error and "password authentication failed" in error and "wrong-password" not in error
    with pytest.raises(config.ConfigError, match="login refused"):
        data_collector.open_database(home)

    closed = free_port()
    settings = {**postgresql_server.settings("any"), "port": closed}
    (home.settings_dir / "database.json").write_text(json.dumps(settings), encoding="utf-8")
    assert ai_trading_system.main(["--home", str(home.root), "data"]) == 3
    assert "无法连接 PostgreSQL" in capsys.readouterr().err
    with pytest.raises(data_collector.TransientError, match="server unreachable"):
        DataCollector(None, home=home)


def test_a_postgresql_home_has_no_sqlite_file_and_a_password_in_vt_setting_is_refused(
    home: Home, postgresql_server: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_postgresql(home, postgresql_server, postgresql_server.create_database(), monkeypatch)
    with pytest.raises(config.ConfigError, match="no SQLite file"):
        data_collector.database_path(home)
    data_collector.list_stored(home)  # writes vt_setting.json
    written = json.loads(home.vt_setting_path.read_text(encoding="utf-8"))
    assert written["database.name"] == "postgresql" and written["database.port"] == postgresql_server.port
    assert "database.password" not in written
    home.vt_setting_path.write_text(json.dumps({**written, "database.password": "x"}), encoding="utf-8")
    with pytest.raises(config.ConfigError, match="must not live in vt_setting.json"):
        data_collector.list_stored(home)
