"""Live recording: ticks queued without blocking, stored in batches by one writer thread, 1-minute bars built."""

from __future__ import annotations

import csv
import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from vnpy.trader.constant import Exchange
from vnpy.trader.object import SubscribeRequest, TickData

import config
import data_collector
from config import CHINA_TZ, DataError
from data_collector import DataCollector, database_path

Factory = Callable[..., DataCollector]


@pytest.fixture
def make_collector(tmp_path: Path) -> Iterator[Factory]:
    """Build collectors on the temporary home and always stop them, so no writer thread outlives a test."""
    made: list[DataCollector] = []

    def build(main_engine: Any = None, **kwargs: Any) -> DataCollector:
        collector = DataCollector(main_engine, home=tmp_path, **kwargs)
        made.append(collector)
        return collector

    yield build
    for collector in made:
        collector.stop()


def query(tmp_path: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows from the home's database, read with plain sqlite3."""
    conn = sqlite3.connect(database_path(tmp_path))
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


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
    return TickData(symbol=symbol, exchange=Exchange.SHFE, datetime=moment, gateway_name="CTP",
                    last_price=price, volume=volume, bid_price_1=price - 1, ask_price_1=price + 1)


def number(text: str) -> float:
    """A CSV cell as float; an empty depth level is 0, as vnpy gateways send it."""
    return float(text) if text else 0.0


def read_copper_ticks() -> list[tuple[str, TickData]]:
    """The 200 real cu1909 ticks as (CSV time text, TickData)."""
    if not config.SAMPLE_TICKS_CSV.exists():
        pytest.skip(f"sample tick file {config.SAMPLE_TICKS_CSV} is absent")
    ticks = []
    with open(config.SAMPLE_TICKS_CSV, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            depth: dict[str, Any] = {
                f"{side}_{kind}_{level}": number(row[f"{side}_{kind}{level}"])
                for side in ("bid", "ask") for kind in ("price", "volume") for level in range(1, 6)
            }
            tick = TickData(
                symbol="cu1909", exchange=Exchange.SHFE, gateway_name="CTP",
                datetime=datetime.fromisoformat(row["datetime"]).replace(tzinfo=CHINA_TZ),
                last_price=number(row["last_price"]), high_price=number(row["highest"]),
                low_price=number(row["lowest"]), volume=number(row["volume"]), turnover=number(row["amount"]),
                open_interest=number(row["open_interest"]), **depth,
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


def test_records_real_copper_ticks_and_their_one_minute_bars(make_collector: Factory, tmp_path: Path) -> None:
    rows = read_copper_ticks()
    ticks = [tick for _, tick in rows]
    before = [vars(tick).copy() for tick in ticks]
    collector = make_collector(batch_size=64, flush_interval=0.05)
    for tick in ticks:
        collector.save_tick_data(tick)
    collector.stop()

    assert [vars(tick) for tick in ticks] == before  # the recorder does not modify ticks
    stored = query(tmp_path, 'SELECT "datetime", "last_price", "volume", "bid_price_1", "ask_volume_1" FROM '
                             '"dbtickdata" WHERE "symbol" = ? AND "exchange" = ? ORDER BY "datetime"', "cu1909", "SHFE")
    assert len(stored) == 200
    assert stored[0] == ("2019-09-16 14:01:33", 47800.0, 7360.0, 47780.0, 10.0)
    assert stored[-1][:3] == ("2019-09-16 14:59:59.999500", 47580.0, 9020.0)
    assert [row[1] for row in stored] == [tick.last_price for tick in ticks]
    assert query(tmp_path, 'SELECT "count", "start", "end" FROM "dbtickoverview" WHERE "symbol" = ?', "cu1909") == [
        (200, "2019-09-16 14:01:33", "2019-09-16 14:59:59.999500")
    ]

    bars = query(tmp_path, 'SELECT "datetime", "open_price", "high_price", "low_price", "close_price", "volume", '
                           '"turnover", "open_interest" FROM "dbbardata" WHERE "symbol" = ? AND "interval" = ? '
                           'ORDER BY "datetime"', "cu1909", "1m")
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
            want["high"], want["low"], want["volume"], want["turnover"], want["oi"])
    assert bars[0][5] == sum(max(b.volume - a.volume, 0) for a, b in zip(ticks, ticks[1:], strict=False)
                             if b.datetime.minute == ticks[0].datetime.minute)
    assert sum(bar[5] for bar in bars) == ticks[-1].volume - ticks[0].volume  # cumulative volume never falls here
    assert query(tmp_path, 'SELECT "count", "start", "end" FROM "dbbaroverview" WHERE "symbol" = ?', "cu1909") == [
        (51, "2019-09-16 14:01:00", "2019-09-16 14:59:00")
    ]
    stats = collector.stats
    assert (stats.ticks_stored, stats.bars_stored, stats.write_errors, stats.ticks_dropped) == (200, 51, 0, 0)


def test_vnpy_database_reads_the_recorded_ticks_and_bars(make_collector: Factory, tmp_path: Path) -> None:
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
    env = {**os.environ, config.HOME_ENV: str(tmp_path), "TZ": "Asia/Shanghai", "PYTHONPATH": str(config.PROJECT_DIR)}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [
        200, "2019-09-16T14:01:33+08:00", 47800.0, 47570.0, 51, "2019-09-16T14:01:00+08:00", 47580.0
    ]


def test_burst_from_two_producers_is_queued_without_waiting_for_the_writer(
    make_collector: Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate, entered = threading.Event(), threading.Event()
    real_save = data_collector.save_ticks

    def blocked_save(conn: sqlite3.Connection, ticks: list[TickData]) -> int:
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

    counts = dict(query(tmp_path, 'SELECT "symbol", COUNT(*) FROM "dbtickdata" GROUP BY "symbol"'))
    assert counts == {"rb2405": per_symbol, "hc2405": per_symbol}
    for symbol in streams:
        bars = query(tmp_path, 'SELECT "datetime", "volume" FROM "dbbardata" WHERE "symbol" = ? ORDER BY "datetime"',
                     symbol)
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
    make_collector: Factory, tmp_path: Path, caplog: pytest.LogCaptureFixture
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
        ("rb2405", Exchange.SHFE, "rb2405.SHFE", "CTP"), ("IF2403", Exchange.CFFEX, "IF2403.CFFEX", "CTP")
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
    assert query(tmp_path, 'SELECT "symbol", "datetime", "last_price" FROM "dbtickdata"') == [
        ("rb2405", "2024-01-02 09:00:01", 3900.0)
    ]
    with pytest.raises(DataError, match="stopped"):
        collector.subscribe_market_data(["rb2405.SHFE"])


def test_stop_flushes_everything_and_later_ticks_are_refused(make_collector: Factory, tmp_path: Path) -> None:
    collector = make_collector(batch_size=10_000, flush_interval=3600)
    start = datetime(2024, 1, 2, 21, 0, 59, tzinfo=CHINA_TZ)
    for i in range(30):
        collector.save_tick_data(make_tick("rb2405", start + timedelta(milliseconds=500 * i), 3900.0 + i, volume=i))
    collector.stop()
    collector.stop()

    assert query(tmp_path, 'SELECT COUNT(*) FROM "dbtickdata"') == [(30,)]
    assert query(tmp_path, 'SELECT "datetime", "open_price", "close_price", "volume" FROM "dbbardata" '
                           'ORDER BY "datetime"') == [
        ("2024-01-02 21:00:00", 3900.0, 3901.0, 1.0),
        ("2024-01-02 21:01:00", 3902.0, 3929.0, 28.0),  # the in-progress minute, stored at stop
    ]
    with pytest.raises(DataError, match="stopped"):
        collector.save_tick_data(make_tick("rb2405", start, 3900.0))


def test_failed_write_is_logged_and_retried_without_losing_ticks(
    make_collector: Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_save = data_collector.save_ticks
    failures = [sqlite3.OperationalError("database is locked")]

    def flaky_save(conn: sqlite3.Connection, ticks: list[TickData]) -> int:
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
    assert query(tmp_path, 'SELECT COUNT(*), MIN("last_price"), MAX("last_price") FROM "dbtickdata"') == [
        (50, 3900.0, 3949.0)
    ]
    assert query(tmp_path, "PRAGMA integrity_check") == [("ok",)]
