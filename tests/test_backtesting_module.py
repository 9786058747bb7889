"""Backtests on real bars: the prediction cache, buy-and-hold, optimisation, and a golden run."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from vnpy.trader.constant import Direction, Offset

import ai_trading_system
import data_collector
from backtesting_module import (
    BacktestingModule,
    OptimizationJob,
    PreloadedBacktestingEngine,
    buy_and_hold,
    cached_predictions,
    grid_edges,
    prediction_key,
    run_on_bars,
)
from config import CHINA_TZ, CONTRACTS_FILE, DataError, Fees, Home, ModelError, resolve_home
from ml_model import PricePredictionModel, read_metadata
from predictive_trading_strategy import NO_EDGE
from tests.conftest import resealed_copy
from trading_calendar import causal_trading_day

VT = "rb0000.SHFE"


def read_job(path: Path) -> OptimizationJob:
    """An optimisation job as the optimiser pickled it for its workers."""
    with path.open("rb") as handle:
        job: OptimizationJob = pickle.load(handle)
    return job


@pytest.fixture(scope="module")
def january(sample_frame: pd.DataFrame) -> pd.DataFrame:
    """Real rb bars from 2015-12-20 (warm-up) to 2016-01-31."""
    return sample_frame.loc[pd.Timestamp("2015-12-20", tz=CHINA_TZ) : pd.Timestamp("2016-01-31 23:59", tz=CHINA_TZ)]


def test_engine_refuses_bars_out_of_time_order(january: pd.DataFrame) -> None:
    bars = data_collector.frame_to_bars(january.iloc[:10], VT)
    with pytest.raises(DataError, match="严格递增"):
        PreloadedBacktestingEngine([bars[1], bars[0], *bars[2:]])


def test_prediction_cache_hits_on_the_same_bars_and_misses_when_a_bar_changes(
    january: pd.DataFrame, rf_bundle: Path, tmp_path: Path
) -> None:
    model = PricePredictionModel().load_model(rf_bundle)
    first, hit = cached_predictions(model, january, VT, tmp_path)
    assert not hit and len(list(tmp_path.glob("*.npy"))) == 1
    again, hit = cached_predictions(model, january, VT, tmp_path)
    assert hit
    np.testing.assert_array_equal(first, again)
    changed = january.copy()
    changed.iloc[-1, changed.columns.get_loc("close")] += 1
    assert prediction_key(model, changed) != prediction_key(model, january)
    _, hit = cached_predictions(model, changed, VT, tmp_path)
    assert not hit and len(list(tmp_path.glob("*.npy"))) == 2
    assert not list(tmp_path.glob(".*.tmp"))


def test_buy_and_hold_is_the_price_change_of_the_lots_less_costs(january: pd.DataFrame) -> None:
    bars = january.loc[january.index >= pd.Timestamp("2016-01-04", tz=CHINA_TZ)]
    series = buy_and_hold(bars, 1_000_000, 10, 2, Fees.of_rate(0.0001), 1.0)
    entry = bars["close"].iloc[0] + 1
    expected = 1_000_000 - entry * 2 * 10 * 0.0001 - 1.0 * 2 * 10 + (bars["close"].iloc[-1] - entry) * 2 * 10
    assert series.iloc[-1] == pytest.approx(expected)
    assert series.index[0] == pd.Timestamp("2016-01-04") and series.index.is_monotonic_increasing


def test_best_value_on_the_edge_of_the_grid_is_warned() -> None:
    grid = {"prediction_threshold": [0.0005, 0.001, 0.0015], "trailing_percent": [0.5, 1.0]}
    warnings = grid_edges({"prediction_threshold": 0.0015, "trailing_percent": 0.5}, grid)
    assert len(warnings) == 1 and "prediction_threshold=0.0015" in warnings[0]
    assert grid_edges({"prediction_threshold": 0.001, "trailing_percent": 1.0}, grid) == []


def run_january(module: BacktestingModule, january: pd.DataFrame, bundle: Path) -> tuple[dict, list]:
    result = module.run_backtest(
        VT, "2016-01-04", "2016-01-31", bundle, setting={"fixed_size": 1}, bars=january, use_cache=False
    )
    return result.statistics, [(t.datetime, t.direction, t.offset, t.price, t.volume) for t in result.trades]


def test_golden_backtest_on_real_bars_is_pinned_and_repeatable(
    january: pd.DataFrame, rf_bundle: Path, tmp_path: Path
) -> None:
    module = BacktestingModule(resolve_home(tmp_path / "home"))
    statistics, trades = run_january(module, january, rf_bundle)
    again, trades_again = run_january(module, january, rf_bundle)
    assert trades == trades_again and statistics == again  # bit for bit on one machine
    # pinned outcome of the fixed bundle (RF, 20 trees, depth 6, trained on 2015-09..12) on January 2016
    assert statistics["total_trade_count"] == GOLDEN_TRADES
    assert statistics["total_net_pnl"] == pytest.approx(GOLDEN_NET_PNL, abs=0.01)


GOLDEN_TRADES = 111
GOLDEN_NET_PNL = -1719.895


def test_per_lot_and_close_today_fees_replace_vnpys_commission_and_nothing_else(
    january: pd.DataFrame, rf_bundle: Path, tmp_path: Path
) -> None:
    plain = BacktestingModule(resolve_home(tmp_path / "plain"))
    home = resolve_home(tmp_path / "per_lot")
    home.settings_dir.mkdir(parents=True)
    (home.settings_dir / CONTRACTS_FILE).write_text('[products]\nrb = { fees = "3/lot 2/lot 7.5/lot" }\n', "utf-8")
    per_lot = BacktestingModule(home)
    statistics, trades = run_january(plain, january, rf_bundle)
    charged, charged_trades = run_january(per_lot, january, rf_bundle)
    assert charged_trades == trades  # the fees move no decision here: the same fills, only their cost differs
    # by hand: 3 a lot to open; a close 7.5 a lot when its position opened the same trading day, else 2
    expected, opened_on, same_day = 0.0, None, 0
    for when, _, offset, _, volume in trades:
        day = causal_trading_day(when)
        if offset == Offset.OPEN:
            expected, opened_on = expected + 3.0 * volume, day
        else:
            same_day += int(day == opened_on)
            expected += (7.5 if day == opened_on else 2.0) * volume
    assert 0 < same_day < sum(offset != Offset.OPEN for _, _, offset, _, _ in trades)
    assert charged["total_commission"] == pytest.approx(expected, abs=1e-9)
    assert charged["total_slippage"] == statistics["total_slippage"]
    net = statistics["total_net_pnl"] + statistics["total_commission"] - charged["total_commission"]
    assert charged["total_net_pnl"] == pytest.approx(net, abs=1e-6)


def with_decision(bundle: Path, tmp_path: Path, edge: str) -> Path:
    """A copy of a bundle whose metadata records a validation verdict, sealed again as `train` would seal it."""
    threshold = read_metadata(bundle)["threshold"]
    decision = {"edge": edge, "trades_per_day": 1.5, "threshold": threshold}
    return resealed_copy(bundle, tmp_path / f"{bundle.name}_{edge}", decision=decision)


def test_a_bundle_without_a_validation_edge_never_opens_unless_a_threshold_is_given(
    january: pd.DataFrame, rf_bundle: Path, tmp_path: Path
) -> None:
    module = BacktestingModule(resolve_home(tmp_path / "home"))
    none = with_decision(rf_bundle, tmp_path, "none")
    result = module.run_backtest(VT, "2016-01-04", "2016-01-31", none, bars=january, use_cache=False)
    assert result.trades == [] and result.statistics["edge"] == "none"
    assert sum(NO_EDGE in line for line in result.logs) == 1  # said once, at init
    forced = module.run_backtest(
        VT, "2016-01-04", "2016-01-31", none, setting={"prediction_threshold": 0.0003}, bars=january, use_cache=False
    )
    assert len(forced.trades) > 0 and any("显式阈值" in line for line in forced.logs)
    positive = module.run_backtest(
        VT, "2016-01-04", "2016-01-31", with_decision(rf_bundle, tmp_path, "positive"), bars=january, use_cache=False
    )
    assert positive.statistics["total_trade_count"] == GOLDEN_TRADES  # the verdict alone changes nothing
    assert positive.statistics["expected_trades_per_day"] == 1.5
    opened = [t for t in positive.trades if t.offset == Offset.OPEN]
    assert positive.statistics["long_entries"] + positive.statistics["short_entries"] == len(opened)


def test_a_backtest_is_flat_before_every_roll_gap_it_steps_over(
    sample_frame: pd.DataFrame, rf_bundle: Path, tmp_path: Path
) -> None:
    bars = sample_frame.loc[pd.Timestamp("2016-02-20", tz=CHINA_TZ) : pd.Timestamp("2016-03-31 23:59", tz=CHINA_TZ)]
    module = BacktestingModule(resolve_home(tmp_path / "home"))
    result = module.run_backtest(VT, "2016-03-01", "2016-03-31", rf_bundle, bars=bars, use_cache=False)
    rolls = [pd.Timestamp(text) for text in result.statistics["rolls"]]
    assert [r.strftime("%m-%d %H:%M") for r in rolls] == ["03-07 21:00", "03-08 21:00", "03-11 21:00"]
    assert len(result.trades) > 10
    for roll in rolls:  # the position held when each roll bar opens: every fill before it, summed
        held = sum((1 if t.direction == Direction.LONG else -1) * t.volume for t in result.trades if t.datetime < roll)
        assert held == 0, roll


def bundle_ranges(bundle: Path) -> dict[str, list[str]]:
    ranges: dict[str, list[str]] = read_metadata(bundle)["ranges"]
    return ranges


def test_a_backtest_overlapping_the_bundles_train_or_valid_part_is_refused_before_any_bar_is_read(
    rf_bundle: Path, tmp_path: Path
) -> None:
    module = BacktestingModule(resolve_home(tmp_path / "home"))  # an empty database: the refusal comes first
    valid = bundle_ranges(rf_bundle)["valid"]
    with pytest.raises(ModelError) as refused:
        module.run_backtest(VT, "2015-11-02", "2015-12-31", rf_bundle)
    message = str(refused.value)
    assert "2015-11-02 ~ 2015-12-31" in message and f"valid {valid[0][:16]} ~ {valid[1][:16]}" in message
    assert "--allow-in-sample" in message and "allow_in_sample=True" in message
    with pytest.raises(ModelError, match="1m K线训练，不能用于 1h K线"):
        module.run_backtest(VT, "2016-01-04", "2016-01-29", rf_bundle, interval="1h")
    with pytest.raises(ModelError, match="不能交易 cu2001.SHFE"):
        module.run_backtest("cu2001.SHFE", "2016-01-04", "2016-01-29", rf_bundle)


def test_the_test_part_is_out_of_sample_and_allow_in_sample_marks_the_result(
    sample_frame: pd.DataFrame, rf_bundle: Path, tmp_path: Path
) -> None:
    ranges = bundle_ranges(rf_bundle)
    first_test_day = (pd.Timestamp(ranges["test"][0]) + pd.Timedelta(days=1)).strftime("%Y-%m-%d")
    bars = sample_frame.loc[pd.Timestamp("2015-11-20", tz=CHINA_TZ) : pd.Timestamp("2015-12-31 23:59", tz=CHINA_TZ)]
    module = BacktestingModule(resolve_home(tmp_path / "home"))
    tested = module.run_backtest(VT, first_test_day, "2015-12-31", rf_bundle, bars=bars, use_cache=False)
    assert tested.in_sample == [] and len(tested.bars) > 1000
    valid_end = pd.Timestamp(ranges["valid"][1]).strftime("%Y-%m-%d")
    marked = module.run_backtest(
        VT, valid_end, "2015-12-31", rf_bundle, bars=bars, use_cache=False, allow_in_sample=True
    )
    assert marked.in_sample == [f"valid {ranges['valid'][0][:16]} ~ {ranges['valid'][1][:16]}"]


def optimize_argv(home: Home, bundle: Path, report: Path, start: str, end: str, *more: str) -> list[str]:
    return [
        "--home",
        str(home.root),
        "optimize",
        "--vt-symbol",
        VT,
        "--start",
        start,
        "--end",
        end,
        "--model",
        str(bundle),
        "--param",
        "prediction_threshold=0.0004,0.0005",
        "--workers",
        "2",
        "--report-dir",
        str(report),
        "--no-cache",
        *more,
    ]


@pytest.mark.parametrize("walk_forward", [[], ["--walk-forward", "2"]])
def test_optimize_refuses_an_in_sample_range_with_exit_2_naming_the_ranges(
    walk_forward: list[str], rf_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = resolve_home(tmp_path / "home")
    argv = optimize_argv(home, rf_bundle, tmp_path / "opt", "2015-10-01", "2016-01-29", *walk_forward)
    assert ai_trading_system.main(argv) == 2
    err = capsys.readouterr().err
    train = bundle_ranges(rf_bundle)["train"]
    assert f"train {train[0][:16]} ~ {train[1][:16]}" in err and "--allow-in-sample" in err
    assert "Traceback" not in err and not (tmp_path / "opt").exists()


@pytest.mark.slow
def test_optimize_grid_writes_sorted_results_and_names_the_best(
    imported_home: Home, rf_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "opt"
    argv = [
        "--home",
        str(imported_home.root),
        "optimize",
        "--vt-symbol",
        VT,
        "--start",
        "2016-01-04",
        "--end",
        "2016-01-29",
        "--model",
        str(rf_bundle),
        "--param",
        "prediction_threshold=0.0005:0.0015:0.0005",
        "--param",
        "trailing_percent=0.5,1.0",
        "--target",
        "total_net_pnl",
        "--workers",
        "2",
        "--report-dir",
        str(report),
        "--no-cache",
    ]
    assert ai_trading_system.main(argv) == 0
    table = pd.read_csv(report / "results.csv")
    assert len(table) == 6
    assert table["total_net_pnl"].is_monotonic_decreasing
    assert set(table["prediction_threshold"]) == {0.0005, 0.001, 0.0015}
    assert not table["in_sample"].any()
    best = table.iloc[0]
    assert f"'prediction_threshold': {best['prediction_threshold']}" in capsys.readouterr().out


@pytest.mark.slow
def test_walk_forward_reports_only_out_of_sample_windows(imported_home: Home, rf_bundle: Path, tmp_path: Path) -> None:
    report = tmp_path / "wf"
    argv = [
        "--home",
        str(imported_home.root),
        "optimize",
        "--vt-symbol",
        VT,
        "--start",
        "2016-01-04",
        "--end",
        "2016-02-26",
        "--model",
        str(rf_bundle),
        "--param",
        "prediction_threshold=0.0004,0.0005",
        "--walk-forward",
        "2",
        "--workers",
        "2",
        "--report-dir",
        str(report),
        "--no-cache",
    ]
    assert ai_trading_system.main(argv) == 0
    table = pd.read_csv(report / "walk_forward.csv")
    assert not table["in_sample"].any()
    # 2016-01-04 .. 2016-02-26 in four equal windows: optimise on one, test on the next, then roll on by one
    windows = ["2016-01-04", "2016-01-21", "2016-02-08", "2016-02-26"]
    assert table[["fold", "optimised_from", "optimised_to", "tested_from", "tested_to"]].values.tolist() == [
        [1, *windows[0:2], *windows[1:3]],
        [2, *windows[1:3], *windows[2:4]],
    ]
    job = read_job(report / "work" / "job.pkl")
    folds = [read_job(report / "work" / f"job_fold{fold}.pkl") for fold in (1, 2)]
    assert folds[0].start == job.start and folds[0].end == folds[1].start
    out_of_sample = [(folds[0].end, folds[1].end), (folds[1].end, job.end)]  # the last ends with the range
    bars = data_collector.frame_to_bars(job.bars, VT)
    model = PricePredictionModel().load_model(job.model_path)
    for fold, row in enumerate(table.to_dict("records")):
        in_sample = {
            threshold: run_on_bars(
                job, bars, model, {"prediction_threshold": threshold}, folds[fold].start, folds[fold].end
            )["sharpe_ratio"]
            for threshold in (0.0004, 0.0005)
        }
        assert in_sample[row["prediction_threshold"]] == max(in_sample.values())  # the fold's best setting
        tested = run_on_bars(
            job, bars, model, {"prediction_threshold": row["prediction_threshold"]}, *out_of_sample[fold]
        )
        assert tested["total_trade_count"] > 0
        for key in ("sharpe_ratio", "total_net_pnl", "total_trade_count"):
            assert row[key] == pytest.approx(tested[key], rel=1e-9, abs=1e-9)  # the out-of-sample run, nothing else
        assert row["sharpe_ratio"] != pytest.approx(in_sample[row["prediction_threshold"]])


def test_costs_take_each_given_value_else_the_contract_facts(tmp_path: Path) -> None:
    module = BacktestingModule(resolve_home(tmp_path / "home"))
    assert module.costs(VT) == {
        "fees": Fees.of_rate(0.0001),
        "slippage": 1.0,
        "size": 10,
        "pricetick": 1,
        "margin_rate": 0.1,
        "capital": 1_000_000.0,
    }
    given = module.costs(VT, capital=500_000, rate=0.0002, slippage=0.0, pricetick=2.0)
    assert given == {
        "fees": Fees.of_rate(0.0002),  # --rate: one rate of turnover for every side
        "slippage": 0.0,
        "size": 10,
        "pricetick": 2.0,
        "margin_rate": 0.1,
        "capital": 500_000,
    }
    assert module.costs(VT, pricetick=2.0)["slippage"] == 2.0  # one tick of the given price tick
