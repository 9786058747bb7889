"""Backtest reports from a real run: the five files, the four-panel figure, and nothing half-written on failure."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from vnpy.trader.constant import Direction, Offset

import backtesting_module
from backtesting_module import (
    REPORT_DPI,
    REPORT_FILES,
    REPORT_SIZE,
    BacktestingModule,
    BacktestResult,
    daily_dates,
    report_capital,
    results_figure,
    write_report,
)
from config import CHINA_TZ, resolve_home

VT = "rb0000.SHFE"


@pytest.fixture(scope="module")
def result(sample_frame: pd.DataFrame, rf_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> BacktestResult:
    """January 2016 on real rb bars (warm-up from 2015-12-20), run once for the module."""
    module = BacktestingModule(resolve_home(tmp_path_factory.mktemp("reports") / "home"))
    bars = sample_frame.loc[pd.Timestamp("2015-12-20", tz=CHINA_TZ) : pd.Timestamp("2016-01-31 23:59", tz=CHINA_TZ)]
    return module.run_backtest(
        VT, "2016-01-04", "2016-01-31", rf_bundle, setting={"fixed_size": 1}, bars=bars, use_cache=False
    )


@pytest.fixture(scope="module")
def report(result: BacktestResult, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_report(result, tmp_path_factory.mktemp("report") / "out" / "january")


@pytest.fixture(scope="module")
def figure(result: BacktestResult) -> Figure:
    return results_figure(result)


def line(ax: Any, label: str) -> Any:
    """The one line labelled `label` in a panel."""
    (found,) = [artist for artist in ax.get_lines() if artist.get_label() == label]
    return found


def reject_constant(name: str) -> None:
    raise AssertionError(f"{name} in statistics.json")


def test_the_backtest_behind_the_report_traded(result: BacktestResult) -> None:
    assert len(result.trades) > 10 and len(result.daily) > 10  # the report tests below need trades to check


def test_write_report_creates_the_folder_and_the_five_files(report: dict[str, Path]) -> None:
    assert sorted(report) == sorted(REPORT_FILES)
    folder = report["statistics.json"].parent
    assert sorted(path.name for path in folder.iterdir()) == sorted(REPORT_FILES)  # no temporary left behind
    assert all(report[name] == folder / name and report[name].stat().st_size > 0 for name in REPORT_FILES)


def test_statistics_json_is_plain_json_with_vnpy_totals_and_the_run(
    report: dict[str, Path], result: BacktestResult
) -> None:
    with report["statistics.json"].open(encoding="utf-8") as handle:
        loaded = json.load(handle, parse_constant=reject_constant)
    assert loaded["total_net_pnl"] == result.statistics["total_net_pnl"]
    assert loaded["total_trade_count"] == len(result.trades)
    assert loaded["vt_symbol"] == VT
    assert loaded["start"] == result.start.isoformat() and loaded["end"] == result.end.isoformat()
    assert loaded["start"].startswith("2016-01-04T00:00:00+08:00")
    assert loaded["setting"]["fixed_size"] == 1 and loaded["setting"]["capital"] == report_capital(result)


def test_trades_csv_has_one_row_per_trade_with_enum_values(report: dict[str, Path], result: BacktestResult) -> None:
    with report["trades.csv"].open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["datetime", "direction", "offset", "price", "volume", "tradeid", "orderid"]
    assert len(rows) == len(result.trades)
    assert [float(row["price"]) for row in rows] == [trade.price for trade in result.trades]
    assert [row["direction"] for row in rows] == [trade.direction.value for trade in result.trades if trade.direction]
    assert [row["offset"] for row in rows] == [trade.offset.value for trade in result.trades]
    assert [row["tradeid"] for row in rows] == [trade.tradeid for trade in result.trades]
    assert pd.Timestamp(rows[0]["datetime"]) == result.trades[0].datetime


def test_daily_csv_is_vnpy_daily_results_with_buy_and_hold_on_the_same_dates(
    report: dict[str, Path], result: BacktestResult
) -> None:
    daily = pd.read_csv(report["daily.csv"], parse_dates=["date"])
    vnpy_columns = [column for column in result.daily.columns if column != "trades"]
    assert list(daily.columns) == ["date", *vnpy_columns, "buy_and_hold_balance"]
    assert list(daily["date"]) == list(daily_dates(result.daily))
    np.testing.assert_allclose(daily["balance"], result.daily["balance"])
    np.testing.assert_array_equal(daily["trade_count"], result.daily["trade_count"])
    expected = result.benchmark.reindex(pd.DatetimeIndex(daily["date"])).to_numpy()
    assert np.isfinite(expected).all()  # every vnpy day of this run is also a trading day of the benchmark
    np.testing.assert_allclose(daily["buy_and_hold_balance"], expected)


def test_report_png_is_a_png_of_the_size_set_for_the_figure(report: dict[str, Path]) -> None:
    head = report["report.png"].read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    assert struct.unpack(">II", head[16:24]) == (round(REPORT_SIZE[0] * REPORT_DPI), round(REPORT_SIZE[1] * REPORT_DPI))


def test_report_html_is_a_self_contained_plotly_chart(report: dict[str, Path]) -> None:
    html = report["report.html"].read_text(encoding="utf-8")
    assert "plotly" in html and "Buy and hold" in html and "Pnl Distribution" in html
    assert not re.search(r"<script[^>]*\bsrc=", html)  # plotly.js is inline, so it opens offline


def test_figure_has_four_labelled_panels_on_one_time_axis_and_the_key_statistics(
    figure: Figure, result: BacktestResult
) -> None:
    panels = [ax for ax in figure.axes if ax.get_ylabel() != "predicted return (bp)"]
    assert len(panels) == 4 and len(figure.axes) == 5  # the fifth is the prediction's twin y axis on the price panel
    assert all(ax.get_ylabel() and ax.get_title() for ax in panels)
    assert all(panels[0].get_shared_x_axes().joined(panels[0], ax) for ax in panels[1:])
    title = figure.get_suptitle()
    assert VT in title and "2016-01-04 to 2016-01-31" in title and f"trades {len(result.trades)}" in title
    assert f"{result.statistics['total_net_pnl']:,.0f}" in title and f"{result.statistics['sharpe_ratio']:.2f}" in title


def test_cumulative_return_panel_is_balance_and_buy_and_hold_over_capital_on_the_same_days(
    figure: Figure, result: BacktestResult
) -> None:
    capital = report_capital(result)
    return_ax = figure.axes[1]
    strategy, benchmark = line(return_ax, "strategy"), line(return_ax, "buy and hold")
    assert strategy.get_ydata()[-1] == pytest.approx((result.daily["balance"].iloc[-1] / capital - 1) * 100)
    np.testing.assert_array_equal(strategy.get_xdata(), benchmark.get_xdata())
    expected = (result.benchmark.reindex(daily_dates(result.daily)) / capital - 1) * 100
    np.testing.assert_allclose(benchmark.get_ydata(), expected.to_numpy())
    assert len(result.benchmark) == len(result.daily)  # both by calendar date, as vnpy groups its daily results


def test_drawdown_panel_is_vnpy_ddpercent(figure: Figure, result: BacktestResult) -> None:
    np.testing.assert_allclose(line(figure.axes[2], "strategy drawdown").get_ydata(), result.daily["ddpercent"])


def test_price_panel_marks_entries_and_exits_of_every_trade(figure: Figure, result: BacktestResult) -> None:
    markers = {
        str(collection.get_label()).split(" (")[0]: len(np.asarray(collection.get_offsets()))
        for collection in figure.axes[3].collections
    }
    opens = [t for t in result.trades if t.offset == Offset.OPEN]
    assert markers == {
        "long entry": sum(1 for t in opens if t.direction == Direction.LONG),
        "short entry": sum(1 for t in opens if t.direction == Direction.SHORT),
        "exit": len(result.trades) - len(opens),
    }
    assert sum(markers.values()) == len(result.trades) and min(markers.values()) > 0


def test_figure_without_trades_or_predictions_still_draws(result: BacktestResult) -> None:
    quiet = dataclasses.replace(result, trades=[], predictions=pd.Series(np.nan, index=result.predictions.index))
    figure = results_figure(quiet)
    assert len(figure.axes) == 5 and not figure.axes[3].collections
    assert "trades 0" in figure.get_suptitle()
    assert any(text.get_text() == "no trades" for text in figure.axes[3].texts)
    assert any("0 of" in str(artist.get_label()) for artist in figure.axes[4].get_lines())


def test_failed_report_leaves_no_partial_or_temporary_file(
    result: BacktestResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any) -> Path:
        raise OSError("disk full")

    monkeypatch.setattr(backtesting_module, "plot_results", broken)
    with pytest.raises(OSError, match="disk full"):
        write_report(result, tmp_path / "report")
    assert list((tmp_path / "report").iterdir()) == []


def test_failed_rewrite_keeps_the_previous_report_whole(
    report: dict[str, Path], result: BacktestResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "report"
    shutil.copytree(report["report.png"].parent, folder)
    before = {path.name: path.read_bytes() for path in folder.iterdir()}

    def broken(*args: Any) -> Any:
        raise RuntimeError("plotly failed")

    monkeypatch.setattr(backtesting_module, "results_chart", broken)  # after report.png has been rendered
    with pytest.raises(RuntimeError, match="plotly failed"):
        write_report(dataclasses.replace(result, trades=[]), folder)
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before


def test_engine_chart_is_written_as_given(result: BacktestResult, tmp_path: Path) -> None:
    import plotly.graph_objects as go

    chart = go.Figure(layout_title_text="chart from engine.show_chart")
    paths = write_report(result, tmp_path, engine_chart=chart)
    assert "chart from engine.show_chart" in paths["report.html"].read_text(encoding="utf-8")


def test_an_out_of_sample_report_says_so_in_statistics_json(report: dict[str, Path], figure: Figure) -> None:
    loaded = json.loads(report["statistics.json"].read_text(encoding="utf-8"))
    assert (loaded["in_sample"], loaded["in_sample_ranges"]) == (False, [])
    assert "IN-SAMPLE" not in figure.get_suptitle() and "IN-SAMPLE" not in report["report.html"].read_text("utf-8")


def test_an_in_sample_run_says_in_sample_in_statistics_json_and_both_titles(
    result: BacktestResult, tmp_path: Path
) -> None:
    overlaps = ["valid 2015-11-23 09:05 ~ 2015-12-10 14:59"]
    marked = dataclasses.replace(result, in_sample=overlaps)
    paths = write_report(marked, tmp_path / "marked")
    loaded = json.loads(paths["statistics.json"].read_text(encoding="utf-8"))
    assert (loaded["in_sample"], loaded["in_sample_ranges"]) == (True, overlaps)
    note = "IN-SAMPLE: the range overlaps the bundle's valid 2015-11-23 09:05 ~ 2015-12-10 14:59"
    assert results_figure(marked).get_suptitle().splitlines()[0] == note  # report.png's title
    assert note in paths["report.html"].read_text(encoding="utf-8")

    import plotly.graph_objects as go

    chart = go.Figure(layout_title_text="chart from engine.show_chart")
    engine = write_report(marked, tmp_path / "engine", engine_chart=chart)
    html = engine["report.html"].read_text(encoding="utf-8")
    assert note in html and "chart from engine.show_chart" in html
