"""Issue 18 end to end through the command line, as a user runs it on the real sample: import, per-contract bars,
`continuous`, `train` and `backtest` on rb888, `contracts` and `trade --gateway sim` across a roll."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from config import Home
from tests.conftest import at, bars
from tests.test_continuous import SPAN, split_contracts
from tests.test_live_trading import audit_events, run_cli


def write_contract_csvs(sample_frame: pd.DataFrame, folder: Path) -> dict[str, Path]:
    """The sample's SPAN split at its roll gaps into per-contract CSVs (bar START stamps, with open interest), the
    files a user would have from a datafeed or a vendor (docs/contracts.md)."""
    original = bars(sample_frame, *SPAN)
    original["turnover"] = 0.0
    original["open_interest"] = 0.0
    files = {}
    for symbol, frame in split_contracts(original).items():
        table = frame[["open", "high", "low", "close", "volume", "turnover", "open_interest"]].copy()
        table.index = table.index.tz_localize(None)
        files[symbol] = folder / f"{symbol}.csv"
        table.rename_axis("datetime").to_csv(files[symbol])
    return files


@pytest.mark.slow
def test_a_user_builds_rb888_trains_backtests_lists_contracts_and_trades_across_a_roll(
    sample_frame: pd.DataFrame, sample_bars_csv: Path, home: Home, tmp_path: Path
) -> None:
    def cli(*args: str) -> str:
        result = run_cli(home, *args)
        assert result.returncode == 0, f"{args[0]}: {result.stderr[-3000:]}"
        return result.stdout + result.stderr

    cli("import", "--csv", str(sample_bars_csv), "--vt-symbol", "rb0000.SHFE", "--timestamp", "end")
    for symbol, csv in write_contract_csvs(sample_frame, tmp_path).items():
        cli("import", "--csv", str(csv), "--vt-symbol", f"{symbol}.SHFE", "--timestamp", "start")
    built = cli("continuous", "--product", "rb", "--adjust", "ratio")
    assert "rb1510 → rb1601" in built and "rb1601 → rb1605" in built
    train = ("train", "--vt-symbol", "rb888.SHFE", "--start", "2015-06-15", "--end", "2015-11-30")
    cli(*train, "--model-type", "random_forest", "--name", "rb888_rf")
    audit = cli("audit", "--vt-symbol", "rb888.SHFE", "--start", "2015-12-01", "--end", "2016-01-22", "--cuts", "5")
    assert "规则 contract 列变化" in audit and "2016-01-04 09:00" in audit  # the roll table's junction, as train
    report = tmp_path / "report"
    backtest = ("backtest", "--vt-symbol", "rb888.SHFE", "--start", "2015-12-14", "--end", "2016-01-22")
    assert "回测改用各合约真实价格" in cli(*backtest, "--model", "rb888_rf", "--report-dir", str(report))
    statistics = json.loads((report / "statistics.json").read_text(encoding="utf-8"))
    assert [text[:16] for text in statistics["rolls"]] == ["2016-01-04 09:00"]

    listed = cli("contracts", "--product", "rb", "--gateway", "sim", "--replay-start", "2015-12-31 21:00")
    rows = {line.split()[0]: "★" in line for line in listed.splitlines() if line.startswith("rb1")}
    assert rows == {"rb1601.SHFE": False, "rb1605.SHFE": True}  # decided after 12-31's close; rb1510 expired

    trade = ("trade", "--gateway", "sim", "--no-ui", "--vt-symbol", "rb888.SHFE", "--model", "rb888_rf")
    logged = cli(*trade, "--threshold", "1e-9", "--replay-start", "2015-12-30", "--replay-end", "2016-01-05")
    (mapped,) = audit_events(home, "main_contract")
    assert (mapped["vt_symbol"], mapped["main"]) == ("rb1601.SHFE", "rb1601.SHFE")
    (change,) = audit_events(home, "main_change")
    assert (change["old"], change["new"], change["effective_day"]) == ("rb1601.SHFE", "rb1605.SHFE", "2016-01-04")
    (roll,) = audit_events(home, "roll")
    legs = {vt_orderid for leg in roll["legs"] for vt_orderid in leg["vt_orderids"]}
    starts = audit_events(home, "strategy_start")
    assert [e["vt_symbol"] for e in starts] == ["rb1601.SHFE", "rb1605.SHFE"]
    after = [t for t in audit_events(home, "trade") if pd.Timestamp(t["exchange_time"]) > at("2016-01-04 09:00")]
    assert after and {t["vt_symbol"] for t in after} == {"rb1605.SHFE"}
    # after the roll the new strategy warms up from rb1605's bars and rb888 before them, and trades on its first bar
    (warmed,) = [line for line in logged.splitlines() if "rb1605.SHFE 预热K线" in line]
    assert "主力连续 0 根" not in warmed and "rb1601" in warmed
    orders = [e for e in audit_events(home, "order") if e["status"] == "提交中" or e["status"] == "Submitting"]
    first = min(e["exchange_time"] for e in orders if e["vt_symbol"] == "rb1605.SHFE" and e["vt_orderid"] not in legs)
    # it predicts from the roll minute's bar on (tests/test_rollover.py checks those bars and features); held short by
    # the roll, its first order comes when the prediction first turns up: 09:32's bar, the order on 09:33's
    assert first == "2016-01-04 09:33:00+08:00"


def test_an_independent_count_of_the_sample_csv_finds_the_1330_bar_missing_on_80_days(sample_bars_csv: Path) -> None:
    raw = pd.read_csv(sample_bars_csv)  # Date,Time,...: bar END stamps, read without the project's loader
    start = pd.to_datetime(raw["Date"] + " " + raw["Time"], format="%Y-%m-%d %H:%M:%S") - pd.Timedelta(minutes=1)
    day_session = start[(start.dt.hour >= 9) & (start.dt.hour < 15)]
    days = set(day_session.dt.date)
    missing = sorted(days - set(start[(start.dt.hour == 13) & (start.dt.minute == 30)].dt.date))
    assert len(missing) == 80 and str(missing[0]) == "2010-07-20" and str(missing[-1]) == "2011-02-11"
    assert not start.duplicated().any() and days == set(start[start.dt.hour == 13].dt.date)  # no 81st day hides
