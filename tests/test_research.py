"""The research table: its arithmetic, its command line, and a small research checked against vnpy's own engine."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import ai_trading_system
import research
from config import CHINA_TZ, ConfigError, Home, ModelSettings
from tests.conftest import run_python

VT = "rb0000.SHFE"
SELECTED = (research.AI_SELECTED, research.CLASSIC_SELECTED)


def year_row(strategy: str, kind: str, year: int, **figures: Any) -> dict[str, Any]:
    """A row as a run returns it, with the figures given and zeros elsewhere."""
    row: dict[str, Any] = {column: None for column in research.COLUMNS}
    row.update({"strategy": strategy, "kind": kind, "year": year, "edge": "", "bundle": ""})
    row.update({"net_pnl": 0.0, "return_pct": 0.0, "sharpe": 0.0, "max_ddpercent": 0.0, "trades": 0, "costs": 0.0})
    row.update({"long_entries": 0, "short_entries": 0})
    row.update(figures)
    return row


def test_each_strategy_is_followed_by_its_mean_over_the_years_in_a_fixed_order() -> None:
    model = {"kind": "model", "model_type": "random_forest", "label": "executable"}
    rows = [
        year_row("buy_and_hold", "reference", 2016, net_pnl=10.0),
        year_row("DualThrustStrategy", "classic", 2016, net_pnl=8421.615, sharpe=1.7756, trades=310),
        year_row("DualThrustStrategy", "classic", 2015, net_pnl=-1000.0, sharpe=-0.5, trades=200),
        year_row("random_forest_h30_executable", **model, year=2016, horizon=30, ic=0.02, edge="positive"),
        year_row("random_forest_h5_executable", **model, year=2016, horizon=5, ic=math.nan, trades=4, edge="none"),
        year_row("random_forest_h5_executable", **model, year=2015, horizon=5, ic=0.01, trades=9, edge="positive"),
        year_row("buy_and_hold", "reference", 2015, net_pnl=-30.0),
    ]
    table = research.build_table(rows)
    assert [(row["strategy"], row["year"]) for row in table] == [
        ("random_forest_h5_executable", 2015),
        ("random_forest_h5_executable", 2016),
        ("random_forest_h5_executable", "mean"),
        ("random_forest_h30_executable", 2016),
        ("random_forest_h30_executable", "mean"),
        ("DualThrustStrategy", 2015),
        ("DualThrustStrategy", 2016),
        ("DualThrustStrategy", "mean"),
        ("buy_and_hold", 2015),
        ("buy_and_hold", 2016),
        ("buy_and_hold", "mean"),
    ]
    h5 = table[2]
    assert h5["trades"] == 6.5 and h5["ic"] == 0.01  # a missing IC is left out of the mean, not counted as zero
    assert h5["edge"] == "mixed: 1/2 positive" and h5["horizon"] == 5 and h5["bundle"] == ""
    assert table[4]["edge"] == "positive" and table[4]["ic"] == 0.02
    assert table[6]["net_pnl"] == 8421.62  # numpy's rounding of 8421.615, as the figure is quoted
    assert table[7]["net_pnl"] == pytest.approx((8421.615 - 1000.0) / 2, abs=0.005)
    assert table[7]["sharpe"] == pytest.approx((1.7756 - 0.5) / 2) and table[7]["trades"] == 255.0
    assert table[10]["net_pnl"] == -10.0 and table[1]["ic"] is None
    found = research.verdict(table)
    assert found["best_classic"] == "DualThrustStrategy" and found["best_model"] == "random_forest_h5_executable"
    assert found["model_ahead"] is False


def model_row(name: str, year: int, edge: str, valid_pnl: float | None, **figures: Any) -> dict[str, Any]:
    """A model year row with its validation verdict and simulated validation net P&L."""
    return year_row(name, "model", year, model_type="random_forest", edge=edge, valid_pnl=valid_pnl, **figures)


def test_the_ai_is_chosen_by_its_validation_pnl_with_ties_to_the_first_name_and_no_edge_never_chosen() -> None:
    rows = [
        model_row("rf_h5", 2016, "positive", 120.0),
        model_row("rf_h30", 2016, "positive", 480.5),
        model_row("rf_h120", 2016, "none", 9_999.0),  # the largest figure, but the strategy would not trade
        model_row("lstm_h5", 2016, "positive", None),  # no validation figure: cannot be ranked
    ]
    assert research.ai_pick(rows)["strategy"] == "rf_h30"  # type: ignore[index]
    tie = [model_row("rf_b", 2016, "positive", 480.5), model_row("rf_a", 2016, "positive", 480.5)]
    assert research.ai_pick([*rows, *tie])["strategy"] == "rf_a"  # type: ignore[index]
    assert research.ai_pick([model_row("rf_h5", 2016, "none", 50.0), model_row("x", 2016, "", 9.0)]) is None
    assert research.ai_pick([year_row("DualThrustStrategy", "classic", 2016, valid_pnl=1e6, edge="x")]) is None
    assert research.ai_pick([]) is None


def test_the_classic_is_chosen_by_its_training_years_sharpe_with_ties_to_the_first_name() -> None:
    assert research.classic_pick({"DualThrustStrategy": 0.4, "BollChannelStrategy": 1.2, "AtrRsiStrategy": -3}) == (
        "BollChannelStrategy"
    )
    assert research.classic_pick({"KingKeltnerStrategy": 0.5, "DualThrustStrategy": 0.5}) == "DualThrustStrategy"
    assert research.classic_pick({"DoubleMaStrategy": math.nan, "TurtleSignalStrategy": -9.0}) == (
        "TurtleSignalStrategy"
    )
    assert research.classic_pick({}) is None


def test_selected_rows_take_the_chosen_rows_test_figures_year_by_year_and_the_verdict_compares_them() -> None:
    classic = {"kind": "classic"}
    rows = [
        model_row("rf_h5", 2015, "positive", 300.0, net_pnl=-50.0, sharpe=-0.5, trades=40, ic=0.03),
        model_row("rf_h30", 2015, "positive", 100.0, net_pnl=900.0, sharpe=2.5, trades=60),  # best after the fact
        model_row("rf_h5", 2016, "none", None),
        model_row("rf_h30", 2016, "none", None),
        year_row("BollChannelStrategy", **classic, year=2015, net_pnl=-2029.0, sharpe=-0.61, trades=171),
        year_row("BollChannelStrategy", **classic, year=2016, net_pnl=11704.0, sharpe=1.39, trades=143),
        year_row("DualThrustStrategy", **classic, year=2015, net_pnl=-3070.0, sharpe=-1.67, trades=318),
        year_row("DualThrustStrategy", **classic, year=2016, net_pnl=8422.0, sharpe=1.78, trades=310),
        year_row("buy_and_hold", "reference", 2015, net_pnl=-7722.0, sharpe=-2.0),
    ]
    training = [
        year_row("BollChannelStrategy", "classic_training", 2015, sharpe=0.2),
        year_row("DualThrustStrategy", "classic_training", 2015, sharpe=0.9),
        year_row("BollChannelStrategy", "classic_training", 2016, sharpe=1.1),
        year_row("DualThrustStrategy", "classic_training", 2016, sharpe=-0.3),
    ]
    chosen, record = research.selected_rows(rows, training)
    assert [(row["strategy"], row["year"], row["chosen"]) for row in chosen] == [
        ("ai_selected", 2015, "rf_h5"),  # chosen on validation, not on its test year's figures
        ("classic_selected", 2015, "DualThrustStrategy"),
        ("ai_selected", 2016, ""),  # no row with an edge: no trades
        ("classic_selected", 2016, "BollChannelStrategy"),
    ]
    assert (chosen[0]["net_pnl"], chosen[0]["sharpe"], chosen[0]["ic"], chosen[0]["choice_score"]) == (
        -50.0,
        -0.5,
        0.03,
        300.0,
    )
    assert (chosen[2]["trades"], chosen[2]["sharpe"], chosen[2]["edge"]) == (0, 0.0, "none")
    assert (chosen[3]["net_pnl"], chosen[3]["choice_score"], chosen[3]["kind"]) == (11704.0, 1.1, "selected")
    assert record["2016"]["ai_selected"]["chosen"] is None
    assert record["2015"]["classic_selected"]["candidates"]["DualThrustStrategy"]["sharpe"] == 0.9
    assert record["2015"]["ai_selected"]["candidates"]["rf_h30"] == {
        "edge": "positive",
        "valid_pnl": 100.0,
        "valid_trades": None,
    }

    table = research.build_table([*rows, *chosen])
    assert [row["strategy"] for row in table[:6]] == ["ai_selected"] * 3 + ["classic_selected"] * 3
    assert table[2]["chosen"] == "2015: rf_h5; 2016: -" and table[2]["sharpe"] == pytest.approx(-0.25)
    assert table[5]["chosen"] == "2015: DualThrustStrategy; 2016: BollChannelStrategy"
    assert table[5]["sharpe"] == pytest.approx((-1.67 + 1.39) / 2) and table[5]["choice_score"] is None
    found = research.verdict(table)
    assert found["ai_selected_sharpe"] == pytest.approx(-0.25) and found["selected_ahead"] is False
    assert found["best_model"] == "rf_h30" and found["best_classic"] == "BollChannelStrategy"
    assert found["model_ahead"] is True  # after the fact the model looks ahead; chosen before, it is not
    line = research.verdict_line(found)
    assert line.index("ai_selected 平均夏普 / mean Sharpe -0.25 未超过 / not above") < line.index("事后最佳")
    assert "(AI: 2015: rf_h5; 2016: -; classic: 2015: DualThrustStrategy; 2016: BollChannelStrategy)" in line
    assert "best model rf_h30 平均夏普 / mean Sharpe 1.25 高于 / above" in line


def test_without_model_or_classic_rows_nothing_is_selected() -> None:
    rows = [year_row("buy_and_hold", "reference", 2016, net_pnl=10.0)]
    assert research.selected_rows(rows, []) == ([], {})
    classics = [year_row("DualThrustStrategy", "classic", 2016, sharpe=1.78)]
    chosen, _ = research.selected_rows(classics, [])  # no training-years runs: no classic pick
    assert chosen == []
    found = research.verdict(research.build_table(classics))
    assert found["ai_selected_sharpe"] is None and found["selected_ahead"] is False
    assert research.verdict_line(found) == ""


def test_the_printed_summary_says_a_model_without_edge_does_not_trade() -> None:
    table = research.build_table([year_row("lstm_h5_executable", "model", 2016, model_type="lstm", edge="none")])
    headers, rows = research.summary_rows(table)
    assert headers[0] == "策略 / strategy" and rows[0][0] == "lstm_h5_executable"
    assert rows[0][-1] == "none (no trades)" and rows[0][headers.index("IC")] == "-"


def test_years_models_labels_and_classics_are_parsed_or_refused() -> None:
    assert research.parse_years("2016, 2014-2015,2016") == (2014, 2015, 2016)
    assert research.parse_models("lstm,random_forest,lstm") == ("lstm", "random_forest")
    assert research.parse_labels("close,executable") == ("close", "executable")
    assert research.parse_classics("dualthrust,BollChannelStrategy") == ("BollChannelStrategy", "DualThrustStrategy")
    assert research.parse_classics("all") == tuple(research.CLASSICS) and research.parse_classics("none") == ()
    for bad in ("20x6", "2016-2014", "", "1850"):
        with pytest.raises(ConfigError, match="测试年份"):
            research.parse_years(bad)
    with pytest.raises(ConfigError, match="xgboost"):
        research.parse_models("xgboost")
    with pytest.raises(ConfigError, match="Foo"):
        research.parse_classics("DualThrust,Foo")


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--test-years", "20x6", "测试年份 '20x6' 无效"),
        ("--models", "xgboost", "模型类型 'xgboost' 无效"),
        ("--classics", "Foo", "经典策略 ['Foo'] 未知"),
        ("--labels", "future", "标签类型 'future' 无效"),
        ("--train-years", "0", "应为正整数"),
    ],
)
def test_research_refuses_bad_arguments_with_exit_2_and_a_clear_message(
    home: Home, capsys: pytest.CaptureFixture[str], option: str, value: str, says: str
) -> None:
    argv = ["--home", str(home.root), "research", "--vt-symbol", VT, "--test-years", "2016", option, value]
    assert ai_trading_system.main(argv) == 2
    error = capsys.readouterr().err
    assert says in error and "Traceback" not in error
    assert not home.reports_dir.exists()  # refused before anything ran


# --- a small research on the real sample, checked against vnpy's engine -------------------------------------------

DIRECT_RUN = """
import json, sys
from config import bind_vnpy_home, contract_spec, load_contracts, resolve_home, settings_dirs, settings_for
import data_collector
home = resolve_home(None)
bind_vnpy_home(home, settings_for(home).database)
from vnpy.trader.constant import Direction, Interval, Offset
from vnpy_ctastrategy.backtesting import BacktestingEngine
from vnpy_ctastrategy.strategies.boll_channel_strategy import BollChannelStrategy
from vnpy_ctastrategy.strategies.dual_thrust_strategy import DualThrustStrategy

spec = contract_spec("rb0000.SHFE", load_contracts(settings_dirs(home)))
found = {}
for strategy, year in [(s, y) for s in (DualThrustStrategy, BollChannelStrategy) for y in (2015, 2016)]:
    engine = BacktestingEngine()
    engine.set_parameters(
        vt_symbol="rb0000.SHFE", interval=Interval.MINUTE,
        start=data_collector.to_china_time(f"{year}-01-01"),
        end=data_collector.to_china_time(f"{year}-12-31", end_of_day=True),
        rate=spec.fees.open_rate, slippage=spec.slippage_ticks * spec.pricetick, size=spec.size,
        pricetick=spec.pricetick, capital=1_000_000,
    )
    engine.add_strategy(strategy, {})
    engine.load_data()  # from vnpy's own database, through vnpy_sqlite
    engine.run_backtesting()
    engine.calculate_result()
    statistics = engine.calculate_statistics(output=False)
    opened = [t for t in engine.trades.values() if t.offset == Offset.OPEN]
    found[f"{strategy.__name__} {year}"] = {
        "bars": len(engine.history_data),
        "net_pnl": float(statistics["total_net_pnl"]),
        "return_pct": float(statistics["total_return"]),
        "sharpe": float(statistics["sharpe_ratio"]),
        "max_ddpercent": float(statistics["max_ddpercent"]),
        "trades": int(statistics["total_trade_count"]),
        "costs": float(statistics["total_commission"] + statistics["total_slippage"]),
        "long_entries": sum(1 for t in opened if t.direction == Direction.LONG),
        "short_entries": sum(1 for t in opened if t.direction != Direction.LONG),
    }
open(sys.argv[-1] if len(sys.argv) > 1 else "direct.json", "w").write(json.dumps(found))
"""

FIGURES: tuple[str, ...] = (
    "net_pnl",
    "return_pct",
    "sharpe",
    "max_ddpercent",
    "trades",
    "costs",
    "long_entries",
    "short_entries",
)


def assert_figures(row: dict[str, Any], expected: dict[str, Any]) -> None:
    """Every figure of a row equals the independent run's, to the digits the table keeps."""
    for column in FIGURES:
        digits = research.DIGITS.get(column, 0)
        assert row[column] == pytest.approx(float(np.round(expected[column], digits)), abs=10**-digits / 2), column


@pytest.mark.slow
def test_a_small_research_matches_vnpys_engine_and_run_backtest_and_reruns_identically(
    imported_home: Home, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "research"
    argv = ["--home", str(imported_home.root), "research", "--vt-symbol", VT, "--test-years", "2016"]
    argv += ["--train-years", "1", "--models", "random_forest", "--trees", "8", "--horizons", "30"]
    argv += ["--classics", "DualThrust,BollChannel", "--report-dir", str(folder)]
    assert ai_trading_system.main([*argv, "--workers", "1"]) == 0
    out, err = capsys.readouterr()
    assert "DualThrustStrategy" in out and "about" in err and "[2016 random_forest_h30_executable] 训练" in err
    files = {name: (folder / name).read_bytes() for name in ("research.csv", "research.json")}
    facts = json.loads(files["research.json"])
    rows = {(row["strategy"], row["year"]): row for row in facts["rows"]}
    names = ("random_forest_h30_executable", "BollChannelStrategy", "DualThrustStrategy", "buy_and_hold")
    assert set(rows) == {(name, year) for name in (*names, *SELECTED) for year in (2016, "mean")}
    assert (folder / "research.html").read_text(encoding="utf-8").count("<tr class=") == 12
    assert pd.read_csv(folder / "research.csv")["strategy"].tolist()[:5] == [
        *("ai_selected", "ai_selected", "classic_selected", "classic_selected"),
        "random_forest_h30_executable",
    ]

    # the classics: vnpy's engine reading vnpy's database in a fresh process, nothing of ours in between
    result = run_python(DIRECT_RUN + "", imported_home.root)
    assert result.returncode == 0, result.stderr
    direct = json.loads((imported_home.root.parent / "direct.json").read_text())
    (imported_home.root.parent / "direct.json").unlink()
    for name in ("DualThrustStrategy", "BollChannelStrategy"):
        assert_figures(rows[(name, 2016)], direct[f"{name} 2016"])
        assert {k: v for k, v in rows[(name, "mean")].items() if k not in ("year",)} == {
            k: v for k, v in rows[(name, 2016)].items() if k not in ("year",)
        }
    assert (
        rows[("DualThrustStrategy", 2016)]["net_pnl"] == 8421.62 and rows[("DualThrustStrategy", 2016)]["trades"] == 310
    )
    assert (
        rows[("BollChannelStrategy", 2016)]["net_pnl"] == 11704.44
        and rows[("BollChannelStrategy", 2016)]["trades"] == 143
    )
    assert round(rows[("DualThrustStrategy", 2016)]["sharpe"], 2) == 1.78

    # the classic chosen on the training year (2015): each classic's Sharpe there is vnpy's own, the pick the larger
    chosen = facts["selection"]["years"]["2016"]
    training = chosen["classic_selected"]["candidates"]
    for name in ("DualThrustStrategy", "BollChannelStrategy"):
        assert training[name]["sharpe"] == pytest.approx(direct[f"{name} 2015"]["sharpe"], abs=5e-5)
        assert training[name]["trades"] == direct[f"{name} 2015"]["trades"]
    pick = max(sorted(training), key=lambda name: training[name]["sharpe"])
    classic_row = rows[("classic_selected", 2016)]
    assert chosen["classic_selected"]["chosen"] == pick and classic_row["chosen"] == pick
    assert classic_row["choice_score"] == training[pick]["sharpe"] and classic_row["kind"] == "selected"
    assert_figures(classic_row, direct[f"{pick} 2016"])
    assert rows[("classic_selected", "mean")]["chosen"] == f"2016: {pick}"

    # the model: the saved bundle backtested by run_backtest; trained on 2015 only
    import backtesting_module
    import data_collector
    import data_processor
    from ml_model import read_metadata

    model_row = rows[("random_forest_h30_executable", 2016)]
    bundle = folder / model_row["bundle"]
    metadata = read_metadata(bundle)
    assert metadata["research"]["test_year"] == 2016 and metadata["config"]["trees"] == 8
    assert metadata["ranges"]["train"][0] >= "2015-01-01" and metadata["ranges"]["test"][1] < "2016-01-01"
    again = backtesting_module.BacktestingModule(imported_home).run_backtest(VT, "2016-01-01", "2016-12-31", bundle)
    statistics = dict(again.statistics)
    assert_figures(
        model_row,
        {
            "net_pnl": statistics["total_net_pnl"],
            "return_pct": statistics["total_return"],
            "sharpe": statistics["sharpe_ratio"],
            "max_ddpercent": statistics["max_ddpercent"],
            "trades": statistics["total_trade_count"],
            "costs": statistics["total_commission"] + statistics["total_slippage"],
            "long_entries": statistics["long_entries"],
            "short_entries": statistics["short_entries"],
        },
    )
    assert model_row["edge"] == metadata["decision"]["edge"] and model_row["threshold"] == pytest.approx(
        metadata["threshold"], abs=1e-8
    )
    if model_row["edge"] == "none":
        assert model_row["trades"] == 0
    assert model_row["valid_pnl"] == pytest.approx(metadata["decision"]["net_pnl"], abs=0.005)
    assert model_row["valid_trades"] == metadata["decision"]["trades"]

    # the AI chosen on validation: the only model, if its validation found an edge; else no trades
    ai_row = rows[("ai_selected", 2016)]
    if model_row["edge"] == "none":
        assert ai_row["chosen"] == "" and ai_row["trades"] == 0 and ai_row["sharpe"] == 0.0 and ai_row["edge"] == "none"
        assert chosen["ai_selected"]["chosen"] is None
    else:
        assert ai_row["chosen"] == "random_forest_h30_executable" == chosen["ai_selected"]["chosen"]
        assert {column: ai_row[column] for column in FIGURES} == {column: model_row[column] for column in FIGURES}
        assert ai_row["choice_score"] == pytest.approx(model_row["valid_pnl"], abs=0.005)
    ai_mean, classic_mean = rows[("ai_selected", "mean")]["sharpe"], rows[("classic_selected", "mean")]["sharpe"]
    found = facts["verdict"]
    assert (found["ai_selected_sharpe"], found["classic_selected_sharpe"]) == (ai_mean, classic_mean)
    assert found["selected_ahead"] is (ai_mean > classic_mean)
    bars = data_collector.load_history_data(VT, "2015-12-01", "2016-12-31", home=imported_home)
    cleaned, _ = data_processor.clean_data(bars, VT)
    labels = data_processor.make_labels(cleaned, 30, "executable").reindex(again.predictions.index)
    both = again.predictions.notna() & labels.notna()
    ic = np.corrcoef(again.predictions[both], labels[both])[0, 1]
    rank_ic = np.corrcoef(again.predictions[both].rank(), labels[both].rank())[0, 1]
    assert model_row["ic"] == pytest.approx(ic, abs=5e-7) and model_row["rank_ic"] == pytest.approx(rank_ic, abs=5e-7)

    # buy and hold of one lot: the price change of the year less the entry's costs
    traded = bars.loc[pd.Timestamp("2016-01-01", tz=CHINA_TZ) :]
    entry = traded["close"].iloc[0] + 1
    expected = (traded["close"].iloc[-1] - entry) * 10 - entry * 10 * 0.0001 - 10
    assert rows[("buy_and_hold", 2016)]["net_pnl"] == pytest.approx(expected, abs=0.005)

    # a rerun on two worker processes reuses the bundle and writes the same bytes
    assert ai_trading_system.main([*argv, "--workers", "2"]) == 0
    assert "缓存 / cached" in capsys.readouterr().err
    assert {name: (folder / name).read_bytes() for name in files} == files
    assert not (folder / "work").exists()

    # a year the database does not hold is refused before any run
    assert ai_trading_system.main([*argv[:6], "2030", *argv[7:], "--workers", "1"]) == 2
    assert "2030" in capsys.readouterr().err


def test_the_models_keep_the_small_presets_unless_trees_or_epochs_are_given() -> None:
    plan = research.ResearchPlan(VT, (2016,), models=("lstm", "random_forest"), horizons=(30, 5))
    configs = plan.model_configs(ModelSettings(), n_jobs=1)
    assert [research.model_name(config, label) for config, label in configs] == [
        "lstm_h5_executable",
        "lstm_h30_executable",
        "random_forest_h5_executable",
        "random_forest_h30_executable",
    ]
    lstm, forest = configs[0][0], configs[2][0]
    assert (lstm.epochs, lstm.lstm_units, lstm.train_stride, forest.trees) == (3, (32, 32), 4, 60)
    given = research.ResearchPlan(VT, (2016,), models=("lstm", "random_forest"), trees=8, epochs=5)
    lstm, forest = (config for config, _ in given.model_configs(ModelSettings(), n_jobs=1))
    assert (lstm.epochs, lstm.lstm_units, forest.trees) == (5, (32, 32), 8)
    assert forest.horizon == ModelSettings().prediction_horizon


def test_a_failing_run_in_a_worker_process_raises_its_error_in_the_caller(home: Home) -> None:
    bad = research.RunSpec("bogus", "x", 2016, VT, "1m", str(home.root), "missing.pkl", str(home.root), verbose=False)
    with pytest.raises(ConfigError, match="bogus"):
        research.run_specs([bad, bad], workers=2)


def test_feature_sets_and_labels_are_parsed_named_and_refused() -> None:
    assert research.parse_feature_sets("mtf, base,mtf") == ("mtf", "base")
    assert research.parse_labels("classify,executable") == ("classify", "executable")
    with pytest.raises(ConfigError, match="特征集 'hourly' 无效"):
        research.parse_feature_sets("hourly")
    plan = research.ResearchPlan(
        VT,
        (2016,),
        models=("random_forest",),
        horizons=(5,),
        labels=("classify", "executable"),
        feature_sets=("mtf", "base"),
    )
    names = [research.model_name(config, label) for config, label in plan.model_configs(ModelSettings(), n_jobs=1)]
    assert names == [
        "random_forest_h5_classify",
        "random_forest_h5_classify_mtf",
        "random_forest_h5_executable",
        "random_forest_h5_executable_mtf",
    ]
    both = research.ResearchPlan(VT, (2016,), models=("lstm",), horizons=(5,), labels=("classify",))
    assert [research.model_name(c, label) for c, label in both.model_configs(ModelSettings(), 1)] == [
        "lstm_h5_classify"
    ]


def test_a_model_row_carries_its_feature_set_and_top_features_into_every_file(tmp_path: Path) -> None:
    model: dict[str, Any] = {"model_type": "random_forest", "label": "classify", "features": "mtf", "horizon": 30}
    rows = [
        year_row(
            "random_forest_h30_classify_mtf", "model", 2015, **model, top_features=["d_ret_5", "mtf_pos_60m", "rsi_6"]
        ),
        year_row(
            "random_forest_h30_classify_mtf", "model", 2016, **model, top_features=["mtf_pos_60m", "tsi", "d_ret_5"]
        ),
        year_row("DualThrustStrategy", "classic", 2016, net_pnl=8421.615),
    ]
    table = research.build_table(rows)
    assert table[2]["year"] == "mean" and table[2]["features"] == "mtf" and table[2]["label"] == "classify"
    assert table[2]["top_features"] == ["d_ret_5", "mtf_pos_60m", "tsi", "rsi_6"]  # both years first, then by place
    assert table[4]["top_features"] is None and table[4]["features"] is None
    facts = {
        "plan": {"vt_symbol": VT, "test_years": [2015, 2016], "train_years": 2},
        "verdict": research.verdict(table),
        "costs": {"fees": "0.0001", "slippage": 1.0, "size": 10},
        "ic": research.IC_SOURCE,
    }
    research.write_table(table, facts, tmp_path)
    saved = json.loads((tmp_path / "research.json").read_text(encoding="utf-8"))["rows"]
    assert saved[0]["top_features"] == ["d_ret_5", "mtf_pos_60m", "rsi_6"] and saved[0]["features"] == "mtf"
    csv = pd.read_csv(tmp_path / "research.csv", keep_default_na=False)
    assert csv["top_features"].tolist()[:3] == [
        "d_ret_5 mtf_pos_60m rsi_6",
        "mtf_pos_60m tsi d_ret_5",
        table_cell(table[2]),
    ]
    page = (tmp_path / "research.html").read_text(encoding="utf-8")
    assert "主要特征 / top features" in page and "<td>mtf</td>" in page and "d_ret_5, mtf_pos_60m, rsi_6</td>" in page


def table_cell(row: dict[str, Any]) -> str:
    return research.feature_list(row["top_features"])


@pytest.mark.slow
def test_a_classifier_on_mtf_features_runs_as_a_research_row(
    sample_frame: pd.DataFrame, home: Home, tmp_path: Path
) -> None:
    import ml_model

    config = ml_model.ModelConfig(model_type="random_forest", trees=8, max_depth=6, horizon=30, feature_set="mtf")
    name = research.model_name(config, "classify")
    spec = research.RunSpec(
        research.MODEL,
        name,
        2016,
        VT,
        "1m",
        str(home.root),
        "unused.pkl",
        str(tmp_path),
        train_years=1,
        config=config,
        label="classify",
        verbose=False,
    )
    bars = sample_frame.loc[pd.Timestamp("2015-10-01", tz=CHINA_TZ) : pd.Timestamp("2016-02-29 23:59", tz=CHINA_TZ)]
    row = research.run_one(spec, bars.copy()).row
    assert (row["strategy"], row["label"], row["features"], row["horizon"]) == (name, "classify", "mtf", 30)
    metadata = ml_model.read_metadata(tmp_path / row["bundle"])
    assert metadata["label_kind"] == "classify" and metadata["feature_set"] == "mtf"
    assert row["top_features"] == ml_model.top_features(metadata["importance"], research.TOP_FEATURES)
    assert len(row["top_features"]) == research.TOP_FEATURES and set(row["top_features"]) <= set(metadata["features"])
    assert row["ic"] is not None and math.isfinite(row["ic"])  # the scores against the year's class labels
    if row["edge"] == "none":
        assert row["trades"] == 0
