"""CSV import, database load/save and download, on the real rb0000 sample."""

from __future__ import annotations

import bz2
import gzip
import json
import sqlite3
import textwrap
from datetime import date, datetime
from pathlib import Path

import pandas as pd
import pytest
from vnpy.trader.constant import Exchange, Interval
from vnpy.trader.object import BarData, HistoryRequest

import data_collector
from config import CHINA_TZ, DataError, Home
from tests.conftest import run_python, table_dump

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
def populated(home: Home, small_csv: Path) -> Home:
    """A home that already holds 3,000 real bars, so 'unchanged' is a meaningful check."""
    data_collector.import_csv(small_csv, "rb0000.SHFE", home=home)
    return home


# --- the whole sample --------------------------------------------------------------------------


def test_import_sample_stores_every_bar_at_its_start_time(imported_home: Home) -> None:
    stored = data_collector.list_stored(imported_home)
    assert len(stored) == 1
    series = stored[0]
    assert (series.vt_symbol, series.interval, series.count) == ("rb0000.SHFE", "1m", 409_995)
    assert series.first == china(2010, 7, 20, 9, 0)
    assert series.last == china(2016, 12, 30, 14, 59)


def test_overview_table_matches_the_stored_bars(imported_home: Home) -> None:
    conn = sqlite3.connect(data_collector.database_path(imported_home))
    overview = conn.execute('SELECT "count", "start", "end" FROM dbbaroverview').fetchall()
    actual = conn.execute('SELECT COUNT(*), MIN("datetime"), MAX("datetime") FROM dbbardata').fetchall()
    conn.close()
    assert overview == actual == [(409_995, "2010-07-20 09:00:00", "2016-12-30 14:59:00")]


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


def test_load_history_data_accepts_strings_dates_and_datetimes(imported_home: Home) -> None:
    by_text = data_collector.load_history_data("rb0000.SHFE", "2016-12-01", "2016-12-30", home=imported_home)
    by_time = data_collector.load_history_data(
        "rb0000.SHFE", date(2016, 12, 1), china(2016, 12, 30, 23, 59), interval=Interval.MINUTE,
        home=imported_home,
    )
    pd.testing.assert_frame_equal(by_text, by_time)
    assert by_text.index[0] == pd.Timestamp("2016-12-01 09:00", tz="Asia/Shanghai")
    assert by_text.index[-1] == pd.Timestamp("2016-12-30 14:59", tz="Asia/Shanghai")
    partial = data_collector.load_history_data(
        "rb0000.SHFE", "2016-12-30 10:00", "2016-12-30 10:04", home=imported_home)
    assert list(partial.index.strftime("%H:%M")) == ["10:00", "10:01", "10:02", "10:03", "10:04"]


def test_load_history_data_matches_the_full_sample_file(imported_home: Home, sample_lines: list[str]) -> None:
    frame = data_collector.load_history_data("rb0000.SHFE", "2010-01-01", "2016-12-31", home=imported_home)
    assert len(frame) == len(sample_lines) - 1
    last = sample_lines[-1].split(",")
    assert frame.iloc[-1][["open", "high", "low", "close", "volume"]].tolist() == [float(v) for v in last[2:]]
    total_volume = sum(int(line.rsplit(",", 1)[1]) for line in sample_lines[1:])
    assert frame["volume"].sum() == total_volume


def test_load_history_data_without_bars_names_the_request_and_what_is_stored(imported_home: Home) -> None:
    with pytest.raises(DataError) as error:
        data_collector.load_history_data("rb0000.SHFE", "2020-01-01", "2020-12-31", home=imported_home)
    message = str(error.value)
    assert "rb0000.SHFE" in message and "2020-01-01" in message
    assert "2010-07-20 ~ 2016-12-30" in message
    with pytest.raises(DataError, match="交易所"):
        data_collector.load_history_data("rb0000.XXX", "2016-01-01", "2016-12-31", home=imported_home)


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
    monkeypatch.setattr(data_collector, "WRITE_CHUNK", 1000)
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
    "unparseable number": ((HEADER + "\n" + GOOD[0] + "\n2016-1-4,9:02:00,abc,2004,2001,2002,80\n").encode(),
                           "第 3 行 / line 3: open 值 'abc'"),
    "unparseable date": ((HEADER + "\n2016-13-45,9:01:00,2000,2005,1998,2003,100\n").encode(),
                         "第 2 行 / line 2: 时间 '2016-13-45 9:01:00' 无法解析"),
    "high below close": ((HEADER + "\n" + GOOD[0] + "\n2016-1-4,9:02:00,2003,2001,2001,2002,80\n").encode(),
                         "第 3 行 / line 3: high 2001 低于 max(open, close) 2003"),
    "low above open": ((HEADER + "\n2016-1-4,9:01:00,2000,2005,2001,2003,100\n").encode(),
                       "第 2 行 / line 2: low 2001 高于 min(open, close) 2000"),
    "zero price": ((HEADER + "\n2016-1-4,9:01:00,0,2005,0,2003,100\n").encode(), "open = 0 不是正数"),
    "negative volume": ((HEADER + "\n2016-1-4,9:01:00,2000,2005,1998,2003,-5\n").encode(), "volume = -5 为负"),
    "truncated last line": ((HEADER + "\n" + GOOD[0] + "\n2016-1-4,9:02:00,2003,20").encode(),
                            "第 3 行 / line 3: 有 4 个字段，应为 7 个"),
    "missing cells": ((HEADER + "\n" + GOOD[0] + "\n2016-1-4,9:02:00,2003,,2001,2002,80\n").encode(),
                      "第 3 行 / line 3: 缺少 high 值"),
    "too many fields": ((HEADER + "\n" + GOOD[0] + ",7,8\n").encode(), "第 2 行 / line 2: 有 9 个字段，应为 7 个"),
    "conflicting duplicate": ((HEADER + "\n" + GOOD[0] + "\n2016-1-4,9:01:00,2000,2006,1998,2003,100\n").encode(),
                              "重复且数值不同（第 2, 3 行）"),
    "off the minute grid": ((HEADER + "\n2016-1-4,9:01:30,2000,2005,1998,2003,100\n").encode(),
                            "不在 0:01:00 的整点上"),
    "binary": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), "不是文本"),
    "not utf-8": ((HEADER + "\n" + GOOD[0] + "\n").encode() + "2016-1-4,9:02:00,高".encode("gbk") + b"\n",
                  "第 3 行不是 UTF-8"),
    "corrupt bz2": (b"BZh91AY&SY" + b"\x00garbage" * 20, "压缩文件损坏"),
    "truncated gzip": (gzip.compress((HEADER + "\n" + "\n".join(GOOD * 50)).encode())[:60], "压缩文件损坏"),
}


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
def test_bad_symbol_or_interval_is_rejected(home: Home, small_csv: Path, vt_symbol: str, interval: str,
                                            fragment: str) -> None:
    with pytest.raises(DataError, match=fragment):
        data_collector.import_csv(small_csv, vt_symbol, interval=interval, home=home)


def test_missing_file_is_a_data_error(home: Home, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="文件不存在"):
        data_collector.import_csv(tmp_path / "nope.csv", "rb0000.SHFE", home=home)


# --- valid variations --------------------------------------------------------------------------


def expect_good_bars(home: Home, vt_symbol: str = "rb0000.SHFE") -> None:
    frame = data_collector.load_history_data(vt_symbol, "2016-01-04", "2016-01-04", home=home)
    assert frame.index.tolist() == [pd.Timestamp("2016-01-04 09:00", tz="Asia/Shanghai"),
                                    pd.Timestamp("2016-01-04 09:01", tz="Asia/Shanghai")]
    assert frame[["open", "high", "low", "close", "volume"]].values.tolist() == [
        [2000, 2005, 1998, 2003, 100], [2003, 2004, 2001, 2002, 80]]


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
    path = write_lines(tmp_path / "vnpy.csv", [
        "symbol,exchange,datetime,open,high,low,close,volume,turnover,open_interest",
        "rb1605,SHFE,2016-01-04 09:00:00+08:00,2000,2005,1998,2003,100,2001000,5000",
        "rb1605,SHFE,2016-01-04 01:01:00+00:00,2003,2004,2001,2002,80,1602000,5010",
    ])
    result = data_collector.import_csv(path, "rb1605.SHFE", home=home)
    assert result.stored == 2
    expect_good_bars(home, "rb1605.SHFE")
    frame = data_collector.load_history_data("rb1605.SHFE", "2016-01-04", "2016-01-04", home=home)
    assert frame["turnover"].tolist() == [2001000, 1602000]
    assert frame["open_interest"].tolist() == [5000, 5010]


def test_column_map_reads_other_layouts_newest_first(home: Home, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "other.csv", [
        "trade_time,open_price,high_price,low_price,close_price,vol",
        "20160104 09:02,2003,2004,2001,2002,80",
        "20160104 09:01,2000,2005,1998,2003,100",
    ])
    columns = {"datetime": "trade_time", "open": "open_price", "high": "high_price", "low": "low_price",
               "close": "close_price", "volume": "vol"}
    with pytest.raises(DataError, match="--timestamp"):
        data_collector.import_csv(path, "rb0000.SHFE", columns=columns, datetime_format="%Y%m%d %H:%M", home=home)
    data_collector.import_csv(path, "rb0000.SHFE", timestamp="end", columns=columns,
                              datetime_format="%Y%m%d %H:%M", home=home)
    expect_good_bars(home)


def test_timestamp_start_keeps_file_times(home: Home, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "s.csv", [HEADER, *GOOD])
    data_collector.import_csv(path, "rb0000.SHFE", timestamp="start", home=home)
    frame = data_collector.load_history_data("rb0000.SHFE", "2016-01-04", "2016-01-04", home=home)
    assert frame.index.strftime("%H:%M").tolist() == ["09:01", "09:02"]


# --- saving vnpy objects and downloading -------------------------------------------------------


def bar(minute: int, close: float = 2000.0) -> BarData:
    return BarData(symbol="rb2405", exchange=Exchange.SHFE, interval=Interval.MINUTE, gateway_name="TEST",
                   datetime=china(2024, 1, 2, 9, minute), open_price=close, high_price=close + 2,
                   low_price=close - 2, close_price=close, volume=10, turnover=1e5, open_interest=300)


def test_save_bars_keeps_the_objects_intact(home: Home) -> None:
    bars = [bar(0), bar(1, 2001)]
    conn = data_collector.connect(data_collector.database_path(home))
    saved = data_collector.save_bars(conn, bars)
    conn.close()
    assert (saved.inserted, saved.stored) == (2, 2)
    assert bars[0].exchange is Exchange.SHFE and bars[0].vt_symbol == "rb2405.SHFE"
    assert bars[0].datetime.tzinfo is CHINA_TZ
    frame = data_collector.load_history_data("rb2405.SHFE", "2024-01-02", "2024-01-02", home=home)
    assert frame["close"].tolist() == [2000, 2001]


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


def test_download_history_stores_the_datafeed_bars(home: Home) -> None:
    feed = FakeDatafeed([bar(1, 2001), bar(0)])
    saved = data_collector.download_history("rb2405.SHFE", "2024-01-02", "2024-01-02", "1m", feed, home)
    assert (saved.inserted, saved.stored) == (2, 2)
    request = feed.requests[0]
    assert (request.symbol, request.exchange, request.interval) == ("rb2405", Exchange.SHFE, Interval.MINUTE)
    assert request.start == china(2024, 1, 2, 0, 0)
    assert request.end is not None and request.end.date() == request.start.date()


def test_download_history_failures_are_transient_or_data_errors(home: Home) -> None:
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
    code = ("import sys, ai_trading_system\n"
            "sys.exit(ai_trading_system.main(['download', '--vt-symbol', 'rb2405.SHFE', '--start', '2024-01-02', "
            "'--end', '2024-01-02']))")
    denied = run_python(code, home, extra_path=tmp_path / "feeds")
    assert denied.returncode == 3, denied.stderr
    assert "数据服务初始化失败" in denied.stderr
    done = run_python(code, home, extra_path=tmp_path / "feeds", env={"AI_TRADER_DATAFEED_PASSWORD": "s3cret"})
    assert done.returncode == 0, done.stderr
    assert "新增 3" in done.stdout
    assert "s3cret" not in (home / ".vntrader" / "vt_setting.json").read_text()
    assert [s.count for s in data_collector.list_stored(home)] == [3]


def test_download_command_without_a_datafeed_exits_2_with_advice(tmp_path: Path) -> None:
    code = ("import sys, ai_trading_system\n"
            "sys.exit(ai_trading_system.main(['download', '--vt-symbol', 'rb2405.SHFE', '--start', '2024-01-02', "
            "'--end', '2024-01-03']))")
    result = run_python(code, tmp_path / "home")
    assert result.returncode == 2
    assert "未配置数据服务" in result.stderr and "datafeed.name" in result.stderr
    assert "Traceback" not in result.stderr
