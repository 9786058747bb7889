"""The command line: subcommands, the mode prompt, exit codes and messages."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import ai_trading_system
import bar_features
import cli_parser
import config
import data_collector
import data_processor
import ml_model
from config import PROJECT_DIR, Home, resolve_home
from tests.conftest import resealed_copy, run_python

HEADER = "Date,Time,Open,High,Low,Close,TotalVolume"


def answers(*replies: str) -> Iterator[str]:
    yield from replies
    raise EOFError


def prompt_with(*replies: str) -> Callable[[str], str]:
    stream = answers(*replies)
    return lambda _prompt: next(stream)


@pytest.fixture
def small_csv(tmp_path: Path, sample_lines: list[str]) -> Path:
    path = tmp_path / "rb.csv"
    path.write_text("\n".join(sample_lines[:501]) + "\n", encoding="utf-8")
    return path


def test_import_command_prints_a_summary_of_what_it_stored(
    home: Home, small_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = ai_trading_system.main(
        [
            "--home",
            str(home.root),
            "import",
            "--csv",
            str(small_csv),
            "--vt-symbol",
            "rb0000.SHFE",
            "--timestamp",
            "end",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "新增 / inserted                    500" in out
    assert "2010-07-20 09:00 (Asia/Shanghai)" in out
    assert [s.count for s in data_collector.list_stored(home)] == [500]


@pytest.mark.slow
def test_data_command_lists_symbol_interval_count_first_and_last(
    imported_home: Home, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ai_trading_system.main(["--home", str(imported_home.root), "data"]) == 0
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("rb0000.SHFE")]
    assert row[0].split() == ["rb0000.SHFE", "1m", "409,995", "2010-07-20", "09:00", "2016-12-30", "14:59"]


def test_data_command_on_an_empty_home_says_how_to_import(home: Home, capsys: pytest.CaptureFixture[str]) -> None:
    assert ai_trading_system.main(["--home", str(home.root), "data"]) == 0
    assert "数据库为空" in capsys.readouterr().out


# --- data --check and the check before train / backtest ------------------------------------------------------


@pytest.mark.slow
def test_data_check_of_the_sample_reports_its_known_defects_and_passes(
    imported_home: Home, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--home", str(imported_home.root), "data", "--check", "--vt-symbol", "rb0000.SHFE"]
    assert ai_trading_system.main(argv) == 0
    out = capsys.readouterr().out
    assert "21:00-01:00 在 23:00 截断 315 次（2014-12-26 ~ 2016-04-28），缺 37,800 分钟" in out
    assert "13:30 缺 80 天" in out
    assert "交易日 1,569，完整 1,165；节假日休市 115 个工作日" in out
    assert "超过 60 分钟的 0 个" in out and "通过 / passed" in out


def _holed_csv(sample_lines: list[str], path: Path) -> Path:
    """June .. August 2016 of the sample without 13 trading days (4 July's night to 21 July's close)."""

    def kept(line: str) -> bool:
        day, clock = line.split(",")[:2]
        year, month, date_ = (int(part) for part in day.split("-"))
        if (year, month) != (2016, 7):
            return True
        evening = int(clock.split(":")[0]) >= 21  # stamps mark the bar end: 21:01 .. 23:00
        return not ((date_ == 4 and evening) or 5 <= date_ <= 20 or (date_ == 21 and not evening))

    rows = [line for line in sample_lines[1:] if line.startswith(("2016-6-", "2016-7-", "2016-8-")) and kept(line)]
    path.write_text("\n".join([sample_lines[0], *rows]) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def holed_home(tmp_path_factory: pytest.TempPathFactory, sample_lines: list[str]) -> Home:
    """A home holding June .. August 2016 of the real sample with a 13-trading-day hole in July."""
    root = tmp_path_factory.mktemp("holed")
    csv = _holed_csv(sample_lines, root / "rb_holed.csv")
    home = resolve_home(root / "home")
    assert (
        ai_trading_system.main(["--home", str(home.root), "import", "--csv", str(csv), "--vt-symbol", "rb0000.SHFE"])
        == 0
    )
    return home


HOLE = "2016-07-04 21:00 ~ 2016-07-21 14:59  4,485 分钟 / min（交易日 2016-07-05 ~ 2016-07-21）"


def test_data_check_lists_a_13_day_hole_with_its_dates_and_exits_2(
    holed_home: Home, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    details = tmp_path / "sessions.csv"
    argv = ["--home", str(holed_home.root), "data", "--check", "--vt-symbol", "rb0000.SHFE", "--details", str(details)]
    assert ai_trading_system.main(argv) == 2
    captured = capsys.readouterr()
    assert HOLE in captured.out and "超过 60 分钟的 1 个" in captured.out
    assert "train / backtest 将拒绝" in captured.err
    rows = pd.read_csv(details)
    assert list(rows.columns) == ["trading_day", "window", "expected", "missing", "truncated"]
    assert len(rows) == 13 * 4 and rows["missing"].sum() == 4485 and rows["truncated"].sum() == 0
    assert rows.iloc[0].tolist() == ["2016-07-05", "21:00-23:00", 120, 120, 0]
    assert ai_trading_system.main([*argv[:-2], "--max-hole-minutes", "4485"]) == 0
    assert ai_trading_system.main([*argv[:-2], "--start", "2016-06-01", "--end", "2016-06-30"]) == 0


def test_data_check_needs_a_symbol_that_is_stored(home: Home, capsys: pytest.CaptureFixture[str]) -> None:
    assert ai_trading_system.main(["--home", str(home.root), "data", "--check"]) == 2
    assert ai_trading_system.main(["--home", str(home.root), "data", "--check", "--vt-symbol", "rb0000.SHFE"]) == 2
    err = capsys.readouterr().err
    assert "--check 需要 --vt-symbol" in err and "数据库中没有 rb0000.SHFE" in err and "Traceback" not in err


def test_train_and_backtest_refuse_a_13_day_hole_with_exit_2_naming_it_and_the_fix(
    holed_home: Home, rf_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train = ["--home", str(holed_home.root), "train", "--vt-symbol", "rb0000.SHFE", "--start", "2016-06-01"]
    assert ai_trading_system.main([*train, "--end", "2016-08-31", "--model-type", "random_forest"]) == 2
    backtest = backtest_argv(holed_home, rf_bundle, tmp_path / "report")
    backtest[backtest.index("2016-01-04")], backtest[backtest.index("2016-01-29")] = "2016-07-01", "2016-07-29"
    assert ai_trading_system.main(backtest) == 2
    err = capsys.readouterr().err
    assert err.count(HOLE) == 2 and err.count("--allow-gaps") >= 2 and "Traceback" not in err
    assert "data --check --vt-symbol rb0000.SHFE --start 2016-06-01 --end 2016-08-31" in err
    assert not holed_home.models_dir.exists() or not any(holed_home.models_dir.iterdir())
    assert not (tmp_path / "report").exists()


@pytest.mark.slow
def test_train_with_allow_gaps_records_the_check_in_the_bundle(
    holed_home: Home, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--home", str(holed_home.root), "train", "--vt-symbol", "rb0000.SHFE", "--start", "2016-06-01"]
    argv += ["--end", "2016-08-31", "--model-type", "random_forest", "--name", "gaps", "--allow-gaps"]
    assert ai_trading_system.main(argv) == 0
    assert HOLE in capsys.readouterr().err
    check = ml_model.read_metadata(holed_home.models_dir / "gaps")["data_check"]
    assert check["long_holes"] == [["2016-07-04 21:00", "2016-07-21 14:59", 4485]] and check["passed"] is False
    assert (check["trading_days"], check["complete_days"], check["missing_minutes"]) == (65, 52, 4485)
    assert check["holidays"] == 2  # Dragon Boat, 9-10 June 2016: not holes


def test_bad_file_exits_2_with_one_message_and_no_traceback(
    home: Home, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + "\n2016-1-4,9:01:00,2000,1990,1998,2003,100\n", encoding="utf-8")
    code = ai_trading_system.main(["--home", str(home.root), "import", "--csv", str(bad), "--vt-symbol", "rb0000.SHFE"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{bad}" in err and "第 2 行" in err and "high 1990" in err
    assert "Traceback" not in err
    assert data_collector.list_stored(home) == []


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["import", "--vt-symbol", "rb0000.SHFE"], "--csv"),
        (["import", "--csv", "x.csv", "--vt-symbol", "rb0000.SHFE", "--columns", "open"], "字段=列名"),
        (["import", "--csv", "x.csv", "--vt-symbol", "rb0000.SHFE", "--columns", "foo=bar"], "未知字段"),
        (["import", "--csv", "x.csv", "--vt-symbol", "rb0000.SHFE", "--timestamp", "middle"], "invalid choice"),
        (
            ["audit", "--vt-symbol", "rb0000.SHFE", "--start", "2016-01-04", "--end", "2016-01-08", "--cuts", "0"],
            "正整数",
        ),
        (["audit", "--vt-symbol", "rb0000.SHFE", "--start", "2016-01-04"], "--end"),
        (["teleport"], "invalid choice"),
    ],
)
def test_bad_command_line_exits_2(
    home: Home, argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ai_trading_system.main(["--home", str(home.root), *argv]) == 2
    assert fragment in capsys.readouterr().err


def test_custom_columns_from_the_command_line(home: Home, tmp_path: Path) -> None:
    path = tmp_path / "other.csv"
    path.write_text("t,o,h,l,c,v\n20160104 09:01,2000,2005,1998,2003,100\n", encoding="utf-8")
    code = ai_trading_system.main(
        [
            "--home",
            str(home.root),
            "import",
            "--csv",
            str(path),
            "--vt-symbol",
            "rb1605.SHFE",
            "--timestamp",
            "start",
            "--columns",
            "datetime=t,open=o,high=h,low=l,close=c,volume=v",
            "--datetime-format",
            "%Y%m%d %H:%M",
        ]
    )
    assert code == 0
    frame = data_collector.load_history_data("rb1605.SHFE", "2016-01-04", "2016-01-04", home=home)
    assert frame.index[0].strftime("%H:%M") == "09:01" and frame["close"].iloc[0] == 2003


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert ai_trading_system.main(["--help"]) == 0
    assert "import" in capsys.readouterr().out


def test_a_bug_exits_1_with_the_traceback_logged(
    home: Home, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(home: object) -> list[object]:
        raise RuntimeError("boom")

    monkeypatch.setattr(data_collector, "list_stored", broken)
    assert ai_trading_system.main(["--home", str(home.root), "data"]) == 1
    assert "RuntimeError: boom" in caplog.text


def test_bad_settings_exit_2(home: Home, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AI_TRADER_RISK_MAX_POSITION_RATIO", "3")
    assert ai_trading_system.main(["--home", str(home.root), "data"]) == 2
    assert "max_position_ratio" in capsys.readouterr().err


# --- the look-ahead audit ---------------------------------------------------------------------


AUDIT_JANUARY = ["audit", "--vt-symbol", "rb0000.SHFE", "--start", "2016-01-04", "--end", "2016-01-29", "--cuts", "8"]


def table_rows(out: str) -> dict[str, list[str]]:
    """The audit table's rows by column name (the words of each line)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("列 / column")) + 2
    end = lines.index("", start)
    return {line.split()[0]: line.split() for line in lines[start:end]}


@pytest.mark.slow
def test_audit_prints_the_cleaning_report_and_every_cleaning_column_feature_and_the_label_as_ok(
    imported_home: Home, capsys: pytest.CaptureFixture[str]
) -> None:
    code = ai_trading_system.main(["--home", str(imported_home.root), *AUDIT_JANUARY])
    captured = capsys.readouterr()
    assert code == 0
    frame = data_collector.load_history_data("rb0000.SHFE", "2016-01-04", "2016-01-29", home=imported_home)
    _, report = data_processor.clean_data(frame, "rb0000.SHFE")
    assert report.rows_in == 6900 and report.trading_days == 21
    assert all(line in captured.out.splitlines() for line in report.lines())
    rows = table_rows(captured.out)
    # horizon from the model settings
    assert list(rows) == [*data_processor.CLEANING_COLUMNS, *bar_features.FEATURE_NAMES, "fwd_ret_5"]
    assert rows["rsi_14"] == ["rsi_14", "ok", "0"] and rows["fwd_ret_5"] == ["fwd_ret_5", "ok", "0"]
    assert rows["roll_gap"] == ["roll_gap", "ok", "0"] and rows["spike"] == ["spike", "ok", "0"]
    assert all(row[1] == "ok" for row in rows.values())
    cuts = len(data_processor.default_cut_points(6900, 8))
    assert cuts == 9
    assert f"检查 47 列，{cuts} 个切点，泄漏 0 列" in captured.out
    assert "审计中 / auditing cleaning, features and the executable label (horizon 5)" in captured.err


@pytest.mark.slow
def test_audit_horizon_and_label_options_override_the_defaults(
    imported_home: Home, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "--home",
        str(imported_home.root),
        *AUDIT_JANUARY[:-2],
        "--cuts",
        "3",
        "--horizon",
        "12",
        "--label",
        "close",
    ]
    assert ai_trading_system.main(argv) == 0
    captured = capsys.readouterr()
    rows = table_rows(captured.out)
    assert rows["fwd_ret_12"] == ["fwd_ret_12", "ok", "0"] and "fwd_ret_5" not in rows
    assert "the close label (horizon 12)" in captured.err


@pytest.mark.slow
def test_audit_of_a_range_with_no_stored_bars_exits_2_saying_what_is_stored(
    imported_home: Home, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "--home",
        str(imported_home.root),
        "audit",
        "--vt-symbol",
        "rb0000.SHFE",
        "--start",
        "2020-01-02",
        "--end",
        "2020-01-31",
    ]
    assert ai_trading_system.main(argv) == 2
    captured = capsys.readouterr()
    assert "没有 rb0000.SHFE 1m 在 2020-01-02 00:00 ~ 2020-01-31 23:59 的K线" in captured.err
    assert "已有：1m 2010-07-20 ~ 2016-12-30 (409,995)" in captured.err
    assert "Traceback" not in captured.err and "列 / column" not in captured.out


@pytest.mark.slow
def test_audit_exits_1_and_names_a_feature_that_reads_the_next_bar(
    imported_home: Home, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    honest = bar_features.build_features

    def peeking(
        df: pd.DataFrame, vt_symbol: str | None = None, feature_set: str = data_processor.DEFAULT_FEATURE_SET
    ) -> pd.DataFrame:
        features = honest(df, vt_symbol, feature_set)
        features["next_close"] = df["close"].shift(-1)  # the future: absent on the last row of every prefix
        return features

    monkeypatch.setattr(data_processor, "build_features", peeking)
    code = ai_trading_system.main(["--home", str(imported_home.root), *AUDIT_JANUARY])
    out = capsys.readouterr().out
    assert code == 1
    rows = table_rows(out)
    # every cut but the whole range fails, first at the range's first bar (the cut after one bar)
    assert rows["next_close"][:5] == ["next_close", "LEAK", "8", "2016-01-04", "09:00:00+08:00"]
    assert [name for name, row in rows.items() if row[1] != "ok"] == ["next_close"]
    assert "检查 48 列，9 个切点，泄漏 1 列" in out and "(next_close)" in out


# --- the mode prompt ---------------------------------------------------------------------------


@pytest.mark.slow
def test_prompt_offers_only_working_modes_and_runs_the_choice(
    imported_home: Home, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts: list[str] = []

    def reply(prompt: str) -> str:
        prompts.append(prompt)
        return "5"

    assert ai_trading_system.main(["--home", str(imported_home.root)], input_fn=reply) == 0
    assert "请选择运行模式" in prompts[0]
    assert [m.key for m in ai_trading_system.MODES] == ["1", "2", "3", "4", "5"]
    assert "1. 实盘/仿真交易" in prompts[0]
    assert "3. 模型训练" in prompts[0]
    assert all(f"{m.key}. {m.label}" in prompts[0] for m in ai_trading_system.MODES)
    assert "409,995" in capsys.readouterr().out


def test_prompt_trading_asks_for_the_replay_or_the_gateway() -> None:
    sim = ai_trading_system.ask_trading(prompt_with("", "2016-03-01", "", "max", "rf"))
    assert sim == (
        "trade",
        "--gateway",
        "sim",
        "--replay-start",
        "2016-03-01",
        "--replay-end",
        "2016-06-10",
        "--speed",
        "max",
        "--model",
        "rf",
    )
    assert ai_trading_system.ask_trading(prompt_with("ctp")) == ("trade", "--gateway", "ctp")


def test_prompt_asks_before_connecting_a_live_account_and_stops_without_yes(
    home: Home, capsys: pytest.CaptureFixture[str]
) -> None:
    home.settings_dir.mkdir(parents=True)
    (home.settings_dir / "broker.json").write_text(
        json.dumps(
            {
                "environment": "live",
                "broker_id": "8888",
                "td_address": "tcp://127.0.0.1:1",
                "md_address": "tcp://127.0.0.1:1",
                "app_id": "desk",
            }
        ),
        encoding="utf-8",
    )
    questions: list[str] = []
    answers = iter(["1", "ctp", "yes"])

    def reply(prompt: str) -> str:
        questions.append(prompt)
        return next(answers)

    assert ai_trading_system.main(["--home", str(home.root)], input_fn=reply) == 0
    assert "实盘账户" in questions[-1] and "YES" in questions[-1]
    assert "未确认，已取消" in capsys.readouterr().err
    assert not (home.root / "audit.jsonl").exists()  # nothing was started
    assert ai_trading_system.live_account_confirmed(home, prompt_with("YES"))
    simnow = resolve_home(home.root.parent / "simnow")
    assert ai_trading_system.live_account_confirmed(simnow, prompt_with())  # SimNow needs no confirmation


@pytest.mark.parametrize("replies", [("q",), ()])
def test_prompt_quit_or_end_of_input_exits_0_doing_nothing(home: Home, replies: tuple[str, ...]) -> None:
    assert ai_trading_system.main(["--home", str(home.root)], input_fn=prompt_with(*replies)) == 0
    assert not home.root.exists()


def test_prompt_retries_then_gives_up_with_exit_2(home: Home, capsys: pytest.CaptureFixture[str]) -> None:
    assert ai_trading_system.main(["--home", str(home.root)], input_fn=prompt_with("9", "x", "7")) == 2
    err = capsys.readouterr().err
    assert err.count("无效选择") == 3 and "多次输入无效" in err


def test_demo_without_the_training_years_exits_2_naming_the_missing_bars(
    home: Home, small_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ai_trading_system.main(["--home", str(home.root), "demo", "--csv", str(small_csv)]) == 2
    captured = capsys.readouterr()
    assert "导入完成" in captured.out
    assert "没有 rb0000.SHFE 1m 在 2014-01-01" in captured.err


# --- backtest (mode 2) ---------------------------------------------------------------------------


def backtest_argv(home: Home, bundle: Path, report: Path) -> list[str]:
    return [
        "--home",
        str(home.root),
        "backtest",
        "--vt-symbol",
        "rb0000.SHFE",
        "--start",
        "2016-01-04",
        "--end",
        "2016-01-29",
        "--model",
        str(bundle),
        "--report-dir",
        str(report),
        "--no-cache",
    ]


def test_backtest_and_optimize_defaults_are_the_options_the_demo_uses() -> None:
    required = ["--vt-symbol", "rb0000.SHFE", "--start", "2016-01-01", "--end", "2016-12-31", "--model", "demo_rf"]
    parser = ai_trading_system.build_parser()
    for command in (["backtest"], ["optimize", "--param", "fixed_size=1:2:1"]):
        options = cli_parser.backtest_options(parser.parse_args([*command, *required]))
        assert options == cli_parser.BACKTEST_DEFAULTS
    defaults = cli_parser.BACKTEST_DEFAULTS
    assert (defaults.interval, defaults.capital, defaults.fixed_size, defaults.trailing_percent) == ("1m", 1e6, 1, 0.8)
    assert (defaults.rate, defaults.slippage, defaults.size, defaults.pricetick, defaults.threshold) == (None,) * 5
    assert defaults.use_cache and ai_trading_system.strategy_setting(defaults) == {
        "fixed_size": 1,
        "trailing_percent": 0.8,
    }
    given = cli_parser.backtest_options(
        parser.parse_args(
            ["backtest", *required, "--threshold", "0.002", "--fixed-size", "3", "--no-cache", "--capital", "5e5"]
        )
    )
    assert (given.capital, given.use_cache) == (5e5, False)
    assert ai_trading_system.strategy_setting(given) == {
        "fixed_size": 3,
        "trailing_percent": 0.8,
        "prediction_threshold": 0.002,
    }


@pytest.mark.slow
def test_backtest_writes_every_report_file_and_prints_the_summary(
    imported_home: Home, rf_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "report"
    assert ai_trading_system.main(backtest_argv(imported_home, rf_bundle, report)) == 0
    assert {"report.png", "report.html", "statistics.json", "trades.csv", "daily.csv"} <= {
        p.name for p in report.iterdir()
    }
    statistics = json.loads((report / "statistics.json").read_text(encoding="utf-8"))
    out = capsys.readouterr().out
    assert "净盈亏 / net P&L" in out and f"{statistics['total_net_pnl']:,.2f}" in out
    assert statistics["total_trade_count"] > 0


@pytest.mark.slow
def test_backtest_of_a_strategy_that_raises_exits_1_with_the_traceback_and_no_report(
    imported_home: Home,
    rf_bundle: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from predictive_trading_strategy import PredictiveTradingStrategy

    original = PredictiveTradingStrategy.on_bar

    def failing(self: PredictiveTradingStrategy, bar: Any) -> None:
        if self.trading and bar.datetime.day == 15:
            raise ZeroDivisionError("boom in on_bar")
        original(self, bar)

    monkeypatch.setattr(PredictiveTradingStrategy, "on_bar", failing)
    report = tmp_path / "report"
    assert ai_trading_system.main(backtest_argv(imported_home, rf_bundle, report)) == 1
    assert "ZeroDivisionError: boom in on_bar" in caplog.text and "Traceback" in caplog.text
    assert not report.exists()


@pytest.mark.slow
def test_backtest_with_a_missing_bundle_exits_2(
    imported_home: Home, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = backtest_argv(imported_home, tmp_path / "no_such_bundle", tmp_path / "report")
    assert ai_trading_system.main(argv) == 2
    assert "no_such_bundle" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


# --- trade (mode 1): one precedence for every option ----------------------------------------------------------

# The options of `trade` that exist only on the command line (the others override a setting: TRADE_OVERRIDES).
COMMAND_LINE_ONLY = {
    "gateway",
    "no_ui",
    "strategy",
    "adopt_broker_position",
    "replay_start",
    "replay_end",
    "speed",
    "replay_mode",
    "replay_csv",
    "screenshot",
}
# option dest -> (its command-line text, the value in settings/, in <home>/settings, the default; each as resolved)
LAYER_VALUES: dict[str, tuple[str, Any, Any, Any]] = {
    "vt_symbol": ("rb2610.SHFE", "rb2601.SHFE", "rb2605.SHFE", None),  # required in every entry: no default
    "model": ("cli_model", "project_model", "home_model", None),  # no default: a strategy must name one
    "threshold": ("0.003", 0.001, 0.002, None),  # None: the key is left out, the bundle's threshold applies
    "capital": ("300000", 500000.0, 700000.0, 1_000_000.0),
    "warmup_days": ("3", 5, 7, None),  # None: left out, the strategy's and the simulator's default (10)
    "roll": ("alert", "flat", "alert", "open"),  # beside vt_symbol in the entry; default: roll at the open
    "td_address": ("tcp://10.0.0.1:1", "tcp://10.0.0.2:2", "tcp://10.0.0.3:3", ""),
    "md_address": ("tcp://10.0.0.1:4", "tcp://10.0.0.2:5", "tcp://10.0.0.3:6", ""),
    "connect_timeout": ("5", 10.0, 20.0, 30.0),
}


@pytest.fixture
def project_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for the project's settings/ (the real files but strategies.json and broker.json) to change."""
    folder = tmp_path / "project-settings"
    folder.mkdir()
    for path in (*(PROJECT_DIR / "settings").glob("*.json"), PROJECT_DIR / "settings" / config.CONTRACTS_FILE):
        if path.name not in ("strategies.json", "broker.json"):
            (folder / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.setattr(config, "SETTINGS_DIR", folder)
    return folder


def write_layer(folder: Path, dest: str, value: Any) -> None:
    """Write one settings folder's strategies.json (a whole entry) and broker.json, `dest` set to `value`."""
    folder.mkdir(parents=True, exist_ok=True)
    where, key = ai_trading_system.TRADE_OVERRIDES[dest]
    entry: dict[str, Any] = {"vt_symbol": "rb2609.SHFE", "setting": {"model_path": "m"}}
    broker: dict[str, Any] = {}
    if value is not None:
        if key in ("vt_symbol", "roll"):
            entry[key] = value
        elif where == "strategy":
            entry["setting"][key] = value
        else:
            broker[key] = value
    (folder / "strategies.json").write_text(json.dumps({"ai_rb": entry}), encoding="utf-8")
    (folder / "broker.json").write_text(json.dumps(broker), encoding="utf-8")


def resolved(options: ai_trading_system.TradeOptions, dest: str, home: Home) -> Any:
    """The value `trade` runs with for one option."""
    where, key = ai_trading_system.TRADE_OVERRIDES[dest]
    if key in ("vt_symbol", "roll"):
        return getattr(options.strategy, key)
    if key == "model_path":
        return Path(options.strategy.setting[key]).name
    if where == "strategy":
        return options.strategy.setting.get(key)
    return getattr(options.broker, key)


def resolve_trade(home: Home, *argv: str) -> ai_trading_system.TradeOptions:
    args = ai_trading_system.build_parser().parse_args(["trade", "--gateway", "sim", *argv])
    return ai_trading_system.trade_options(args, home, config.settings_for(home))


def test_layered_lets_a_later_layer_win_and_none_set_nothing() -> None:
    defaults, project, own, command_line = {"a": 1, "b": 2, "c": 3}, {"a": 10, "b": 20}, {"a": 100}, {"a": None}
    assert ai_trading_system.layered(defaults, project, own, command_line) == {"a": 100, "b": 20, "c": 3}
    assert ai_trading_system.layered(defaults, {"c": None, "d": 0}) == {"a": 1, "b": 2, "c": 3, "d": 0}


def test_every_trade_option_is_an_override_or_command_line_only_and_defaults_to_not_given() -> None:
    trade = subcommands(ai_trading_system.build_parser())["trade"][1]
    dests = {action.dest for action in named_arguments(trade)}
    assert dests == set(ai_trading_system.TRADE_OVERRIDES) | COMMAND_LINE_ONLY
    assert set(LAYER_VALUES) == set(ai_trading_system.TRADE_OVERRIDES)
    defaults = trade.parse_args([])
    assert {dest: getattr(defaults, dest) for dest in ai_trading_system.TRADE_OVERRIDES} == dict.fromkeys(
        ai_trading_system.TRADE_OVERRIDES
    )  # an argparse default would hide the settings files


def test_risk_settings_reach_the_live_strategy_unless_its_own_entry_sets_them(
    home: Home, project_settings: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_layer(project_settings, "threshold", None)
    assert resolve_trade(home).strategy.setting["max_daily_loss_rate"] == config.RiskSettings.max_daily_loss_rate
    monkeypatch.setenv("AI_TRADER_RISK_MAX_DAILY_LOSS_RATE", "0.0002")
    chosen = resolve_trade(home).strategy.setting
    assert (chosen["max_daily_loss_rate"], chosen["max_position_ratio"]) == (0.0002, 0.1)
    entry = {"vt_symbol": "rb2609.SHFE", "setting": {"model_path": "m", "max_daily_loss_rate": 0.001}}
    (project_settings / "strategies.json").write_text(json.dumps({"ai_rb": entry}), encoding="utf-8")
    assert resolve_trade(home).strategy.setting["max_daily_loss_rate"] == 0.001  # the strategy's own entry wins


@pytest.mark.parametrize("dest", list(LAYER_VALUES))
def test_trade_option_precedence_is_command_line_then_home_then_project_then_default(
    dest: str, home: Home, project_settings: Path
) -> None:
    text, in_project, in_home, default = LAYER_VALUES[dest]
    option = "--" + dest.replace("_", "-")
    write_layer(project_settings, dest, in_project)
    write_layer(home.settings_dir, dest, in_home)
    from_command_line = resolved(resolve_trade(home, option, text), dest, home)
    assert from_command_line == (text if isinstance(in_project, str) else type(in_project)(text))
    assert resolved(resolve_trade(home), dest, home) == in_home
    (home.settings_dir / "strategies.json").unlink()
    (home.settings_dir / "broker.json").unlink()
    assert resolved(resolve_trade(home), dest, home) == in_project
    write_layer(project_settings, dest, None)
    if default is None and dest in ("vt_symbol", "model"):
        return  # a strategy entry must name them
    assert resolved(resolve_trade(home), dest, home) == default


def test_trade_capital_from_the_command_line_wins_for_the_strategy_and_the_simulated_account(
    home: Home, project_settings: Path
) -> None:
    write_layer(project_settings, "capital", 500000.0)
    write_layer(home.settings_dir, "warmup_days", 7)
    args = ai_trading_system.build_parser().parse_args(
        [
            "trade",
            "--gateway",
            "sim",
            "--capital",
            "300000",
            "--replay-start",
            "2016-06-01",
            "--replay-end",
            "2016-06-02",
        ]
    )
    options = ai_trading_system.trade_options(args, home, config.settings_for(home))
    connect = ai_trading_system.sim_setting(args, home, options.strategy)
    assert options.strategy.setting["capital"] == connect["capital"] == 300000.0
    assert options.strategy.setting["warmup_days"] == connect["warmup_days"] == 7
    assert options.strategy.setting["fees"] == "0.0001 0.0001 0.0001"  # the contract's costs stay underneath
    assert options.strategy.setting["slippage_cost"] == 1.0 and options.strategy.setting["margin_rate"] == 0.1


def test_trade_broker_environment_lies_between_the_home_settings_and_the_command_line(
    home: Home, project_settings: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_layer(home.settings_dir, "connect_timeout", 20.0)
    monkeypatch.setenv("AI_TRADER_BROKER_CONNECT_TIMEOUT_SECONDS", "25")
    assert resolve_trade(home).broker.connect_timeout_seconds == 25.0
    assert resolve_trade(home, "--connect-timeout", "5").broker.connect_timeout_seconds == 5.0


@pytest.mark.parametrize(
    ("start", "accepted"),
    [
        ("2016-06-01", "2016-06-01 00:00"),
        ("2016-06-01 10:37", "2016-06-01 10:37"),
        (" 2016-06-01 21:05 ", "2016-06-01 21:05"),
    ],
)
def test_trade_replay_start_takes_a_date_or_a_china_time(home: Home, start: str, accepted: str) -> None:
    args = ai_trading_system.build_parser().parse_args(
        ["trade", "--gateway", "sim", "--replay-start", start, "--replay-end", "2016-06-02"]
    )
    options = ai_trading_system.trade_options(args, home, config.settings_for(home))
    import sim_gateway

    setting = ai_trading_system.sim_setting(args, home, options.strategy)
    assert f"{sim_gateway.parse_settings(setting).start:%Y-%m-%d %H:%M %Z}" == f"{accepted} CST"


def test_trade_with_a_bad_replay_start_exits_2_with_one_message_before_connecting(home: Home) -> None:
    code = (
        "import sys, ai_trading_system; sys.exit(ai_trading_system.main(['trade', '--gateway', 'sim', "
        "'--no-ui', '--replay-start', '2016-06-01 25:00', '--replay-end', '2016-06-02']))"
    )
    result = run_python(code, home.root)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "YYYY-MM-DD HH:MM" in result.stderr and "2016-06-01 25:00" in result.stderr
    assert "Traceback" not in result.stderr and "SIM 连接" not in result.stderr


def test_backtest_of_an_in_sample_range_exits_2_naming_the_bundles_ranges_and_the_fix(
    home: Home, rf_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = backtest_argv(home, rf_bundle, tmp_path / "report")
    argv[argv.index("2016-01-04")] = "2015-10-08"
    assert ai_trading_system.main(argv) == 2
    err = capsys.readouterr().err
    ranges = ml_model.read_metadata(rf_bundle)["ranges"]
    for part in ("train", "valid", "test"):
        assert f"{part} {ranges[part][0][:16]} ~ {ranges[part][1][:16]}" in err
    assert "2015-10-08 ~ 2016-01-29" in err and f"{ranges['valid'][1][:16]} 之后" in err
    assert "--allow-in-sample" in err and "Traceback" not in err and not (tmp_path / "report").exists()


@pytest.mark.parametrize(
    ("change", "argv_change", "message"),
    [
        ({}, ("--interval", "1h"), "用 1m K线训练，不能用于 1h K线；请改用 --interval 1m"),
        ({"horizon": 10}, (), "horizon=10 与其配置 5 矛盾"),
        ({"sequence_length": 30}, (), "sequence_length=30 与其配置 60 矛盾"),
        ({"threshold": 1e-9, "edited": True}, (), "metadata.json 与 manifest.json 记录的校验和不符"),
    ],
    ids=["interval", "horizon", "window", "edited"],
)
def test_backtest_of_a_bundle_for_other_bars_or_an_edited_one_exits_2(
    change: dict[str, Any],
    argv_change: tuple[str, ...],
    message: str,
    home: Home,
    rf_bundle: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bundle = resealed_copy(rf_bundle, tmp_path / "bundles" / rf_bundle.name, **change) if change else rf_bundle
    if change.get("edited"):  # edited after the seal: the manifest no longer matches
        metadata = json.loads((bundle / "metadata.json").read_text(encoding="utf-8"))
        (bundle / "metadata.json").write_text(json.dumps({**metadata, "threshold": 1e-8}), encoding="utf-8")
    assert ai_trading_system.main([*backtest_argv(home, bundle, tmp_path / "report"), *argv_change]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not (tmp_path / "report").exists()


@pytest.fixture(scope="module")
def late_2015_home(tmp_path_factory: pytest.TempPathFactory, sample_lines: list[str]) -> Home:
    """A home holding 2015-11 and 2015-12 of the real sample: the rf_bundle fixture's valid and test parts."""
    root = tmp_path_factory.mktemp("late2015")
    csv = root / "rb_2015_late.csv"
    rows = [line for line in sample_lines[1:] if line.startswith(("2015-11-", "2015-12-"))]
    csv.write_text("\n".join([sample_lines[0], *rows]) + "\n", encoding="utf-8")
    home = resolve_home(root / "home")
    argv = ["--home", str(home.root), "import", "--csv", str(csv), "--vt-symbol", "rb0000.SHFE"]
    assert ai_trading_system.main(argv) == 0
    return home


def test_allow_in_sample_runs_and_marks_the_summary_statistics_and_both_report_titles(
    late_2015_home: Home, rf_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    report = tmp_path / "report"
    argv = backtest_argv(late_2015_home, rf_bundle, report)
    argv[argv.index("2016-01-04")], argv[argv.index("2016-01-29")] = "2015-12-07", "2015-12-31"
    assert ai_trading_system.main([*argv, "--allow-in-sample"]) == 0
    valid = ml_model.read_metadata(rf_bundle)["ranges"]["valid"]
    overlap = f"valid {valid[0][:16]} ~ {valid[1][:16]}"
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"样本内 / IN-SAMPLE: the range overlaps the bundle's {overlap}"
    statistics = json.loads((report / "statistics.json").read_text(encoding="utf-8"))
    assert (statistics["in_sample"], statistics["in_sample_ranges"]) == (True, [overlap])
    assert f"IN-SAMPLE: the range overlaps the bundle's {overlap}" in (report / "report.html").read_text("utf-8")


def test_optimize_with_allow_in_sample_marks_results_csv_and_the_output(
    late_2015_home: Home, rf_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    argv = [
        "--home",
        str(late_2015_home.root),
        "optimize",
        "--vt-symbol",
        "rb0000.SHFE",
        "--start",
        "2015-12-07",
        "--end",
        "2015-12-31",
        "--model",
        str(rf_bundle),
        "--param",
        "prediction_threshold=0.0004,0.0005",
        "--workers",
        "1",
        "--report-dir",
        str(tmp_path / "opt"),
        "--no-cache",
        "--allow-in-sample",
    ]
    assert ai_trading_system.main(argv) == 0
    assert pd.read_csv(tmp_path / "opt" / "results.csv")["in_sample"].tolist() == [True, True]
    assert capsys.readouterr().out.startswith("样本内 / IN-SAMPLE: the range overlaps the bundle's valid ")


# --- the documentation follows the code -----------------------------------------------------------------------

DOCS_DIR = PROJECT_DIR / "docs"
CLI_DOC = DOCS_DIR / "cli.md"
README = PROJECT_DIR / "README.md"
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")


def doc_sections(text: str) -> dict[str, str]:
    """Level-2 sections of a markdown page keyed by the code span that opens their heading: "## `train`" -> body."""
    sections: dict[str, str] = {}
    for part in re.split(r"^## ", text, flags=re.MULTILINE)[1:]:
        heading, _, body = part.partition("\n")
        match = re.match(r"`([^`]+)`", heading)
        if match:
            sections[match[1]] = body
    return sections


def subcommands(parser: argparse.ArgumentParser) -> dict[str, tuple[str, argparse.ArgumentParser]]:
    """Each subcommand's name -> (its help text, its parser)."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
    return {name: (helps.get(name, ""), sub) for name, sub in action.choices.items()}


def named_arguments(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """A parser's own arguments, without -h/--help and the subcommand action."""
    return [a for a in parser._actions if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)]


def words_to_document(action: argparse.Action) -> list[str]:
    """What a section must name for one argument: its option strings, or a positional's choices (else its name)."""
    if action.option_strings:
        return list(action.option_strings)
    return [str(choice) for choice in action.choices] if action.choices else [str(action.dest)]


def undocumented(parser: argparse.ArgumentParser, section: str) -> list[str]:
    """The arguments of a parser that its section never names as a whole word (`--model` is not `--model-type`)."""
    return [
        word
        for action in named_arguments(parser)
        for word in words_to_document(action)
        if not re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", section)
    ]


def test_every_subcommand_has_help_and_a_section_in_docs_cli() -> None:
    parser = ai_trading_system.build_parser()
    commands = subcommands(parser)
    text = CLI_DOC.read_text(encoding="utf-8")
    sections = doc_sections(text)
    assert {"import", "train", "backtest", "trade", "demo"} <= set(commands)
    for name, (help_text, sub) in commands.items():
        assert help_text.strip(), f"subcommand {name} has no help text"
        assert [a.dest for a in named_arguments(sub) if not (a.help or "").strip()] == [], name
        assert name in sections, f"docs/cli.md has no section headed ## `{name}`"
        assert undocumented(sub, sections[name]) == [], f"docs/cli.md ## `{name}` misses these options"
    assert undocumented(parser, text) == []  # --home, -v/--verbose


def test_watchdog_and_monitor_command_lines_are_in_docs_cli() -> None:
    import monitor
    import restart_script

    sections = doc_sections(CLI_DOC.read_text(encoding="utf-8"))
    for name, parser in (("restart_script.py", restart_script.build_parser()), ("monitor.py", monitor.build_parser())):
        assert name in sections, f"docs/cli.md has no section headed ## `{name}`"
        assert undocumented(parser, sections[name]) == [], name


def test_a_missing_section_or_option_in_docs_cli_is_caught() -> None:
    sub = subcommands(ai_trading_system.build_parser())["train"][1]
    sections = doc_sections(CLI_DOC.read_text(encoding="utf-8"))
    assert "train" in sections and undocumented(sub, sections["train"]) == []
    without = re.sub(
        r"^## `train`\n.*?(?=^## )", "", CLI_DOC.read_text(encoding="utf-8"), flags=re.MULTILINE | re.DOTALL
    )
    assert "train" not in doc_sections(without)
    assert undocumented(sub, sections["train"].replace("--walk-forward", "")) == ["--walk-forward"]
    assert "--walk-forward" in undocumented(sub, "`--walk-forward-days`")  # whole words only


def test_readme_is_the_front_door_under_150_lines_linking_every_docs_page() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) < 150
    linked = set(MARKDOWN_LINK.findall(text))
    assert {f"docs/{page.name}" for page in DOCS_DIR.glob("*.md")} <= linked
    assert {
        "docs/architecture.md",
        "docs/cli.md",
        "docs/settings.md",
        "docs/vnpy-notes.md",
        "docs/performance.md",
        "CHANGELOG.md",
    } <= linked


def test_every_relative_link_in_readme_and_docs_points_to_an_existing_file() -> None:
    pages = [README, PROJECT_DIR / "CHANGELOG.md", *sorted(DOCS_DIR.glob("*.md"))]
    checked, broken = 0, []
    for page in pages:
        for target in MARKDOWN_LINK.findall(page.read_text(encoding="utf-8")):
            if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a web address or an anchor on the same page
            checked += 1
            if not (page.parent / target.partition("#")[0]).exists():
                broken.append(f"{page.relative_to(PROJECT_DIR)}: {target}")
    assert broken == []
    assert checked >= 10


def test_train_refuses_several_horizons_with_walk_forward_and_a_bad_horizon(
    home: Home, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--home", str(home.root), "train", "--vt-symbol", "rb0000.SHFE", "--start", "2016-01-01"]
    argv = [*base, "--end", "2016-03-31", "--horizon", "5,30", "--walk-forward", "2"]
    assert ai_trading_system.main(argv) == 2
    assert "--walk-forward" in capsys.readouterr().err
    assert ai_trading_system.main([*base, "--end", "2016-03-31", "--horizon", "5,zero"]) == 2
    assert "正整数" in capsys.readouterr().err
