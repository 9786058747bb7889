"""The command line: subcommands, the mode prompt, exit codes and messages."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import ai_trading_system
import data_collector
import data_processor
from config import Home, resolve_home

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
    code = ai_trading_system.main(["--home", str(home.root), "import", "--csv", str(small_csv),
                                   "--vt-symbol", "rb0000.SHFE", "--timestamp", "end"])
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
        (["audit", "--vt-symbol", "rb0000.SHFE", "--start", "2016-01-04", "--end", "2016-01-08", "--cuts", "0"],
         "正整数"),
        (["audit", "--vt-symbol", "rb0000.SHFE", "--start", "2016-01-04"], "--end"),
        (["teleport"], "invalid choice"),
    ],
)
def test_bad_command_line_exits_2(home: Home, argv: list[str], fragment: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert ai_trading_system.main(["--home", str(home.root), *argv]) == 2
    assert fragment in capsys.readouterr().err


def test_custom_columns_from_the_command_line(home: Home, tmp_path: Path) -> None:
    path = tmp_path / "other.csv"
    path.write_text("t,o,h,l,c,v\n20160104 09:01,2000,2005,1998,2003,100\n", encoding="utf-8")
    code = ai_trading_system.main([
        "--home", str(home.root), "import", "--csv", str(path), "--vt-symbol", "rb1605.SHFE", "--timestamp", "start",
        "--columns", "datetime=t,open=o,high=h,low=l,close=c,volume=v", "--datetime-format", "%Y%m%d %H:%M"])
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
def test_audit_prints_the_cleaning_report_and_every_feature_and_the_label_as_ok(
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
    assert list(rows) == [*data_processor.FEATURE_NAMES, "fwd_ret_5"]  # horizon from the model settings
    assert rows["rsi_14"] == ["rsi_14", "ok", "0"] and rows["fwd_ret_5"] == ["fwd_ret_5", "ok", "0"]
    assert all(row[1] == "ok" for row in rows.values())
    cuts = len(data_processor.default_cut_points(6900, 8))
    assert cuts == 9
    assert f"检查 42 列，{cuts} 个切点，泄漏 0 列" in captured.out
    assert "审计中 / auditing features" in captured.err


@pytest.mark.slow
def test_audit_horizon_option_overrides_the_settings(
    imported_home: Home, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--home", str(imported_home.root), *AUDIT_JANUARY[:-2], "--cuts", "3", "--horizon", "12"]
    assert ai_trading_system.main(argv) == 0
    rows = table_rows(capsys.readouterr().out)
    assert rows["fwd_ret_12"] == ["fwd_ret_12", "ok", "0"] and "fwd_ret_5" not in rows


@pytest.mark.slow
def test_audit_of_a_range_with_no_stored_bars_exits_2_saying_what_is_stored(
    imported_home: Home, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--home", str(imported_home.root), "audit", "--vt-symbol", "rb0000.SHFE",
            "--start", "2020-01-02", "--end", "2020-01-31"]
    assert ai_trading_system.main(argv) == 2
    captured = capsys.readouterr()
    assert "没有 rb0000.SHFE 1m 在 2020-01-02 00:00 ~ 2020-01-31 23:59 的K线" in captured.err
    assert "已有：1m 2010-07-20 ~ 2016-12-30 (409,995)" in captured.err
    assert "Traceback" not in captured.err and "列 / column" not in captured.out


@pytest.mark.slow
def test_audit_exits_1_and_names_a_feature_that_reads_the_next_bar(
    imported_home: Home, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    honest = data_processor.build_features

    def peeking(df: pd.DataFrame, vt_symbol: str | None = None) -> pd.DataFrame:
        features = honest(df, vt_symbol)
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
    assert "检查 43 列，9 个切点，泄漏 1 列" in out and "(next_close)" in out


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
    assert sim == ("trade", "--gateway", "sim", "--replay-start", "2016-03-01", "--replay-end", "2016-06-10",
                   "--speed", "max", "--model", "rf")
    assert ai_trading_system.ask_trading(prompt_with("ctp")) == ("trade", "--gateway", "ctp")


def test_prompt_asks_before_connecting_a_live_account_and_stops_without_yes(
    home: Home, capsys: pytest.CaptureFixture[str]
) -> None:
    home.settings_dir.mkdir(parents=True)
    (home.settings_dir / "broker.json").write_text(json.dumps(
        {"environment": "live", "broker_id": "8888", "td_address": "tcp://127.0.0.1:1",
         "md_address": "tcp://127.0.0.1:1", "app_id": "desk"}), encoding="utf-8")
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
    return ["--home", str(home.root), "backtest", "--vt-symbol", "rb0000.SHFE", "--start", "2016-01-04", "--end",
            "2016-01-29", "--model", str(bundle), "--report-dir", str(report), "--no-cache"]


@pytest.mark.slow
def test_backtest_writes_every_report_file_and_prints_the_summary(
    imported_home: Home, rf_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "report"
    assert ai_trading_system.main(backtest_argv(imported_home, rf_bundle, report)) == 0
    assert {"report.png", "report.html", "statistics.json", "trades.csv", "daily.csv"} <= {
        p.name for p in report.iterdir()}
    statistics = json.loads((report / "statistics.json").read_text(encoding="utf-8"))
    out = capsys.readouterr().out
    assert "净盈亏 / net P&L" in out and f"{statistics['total_net_pnl']:,.2f}" in out
    assert statistics["total_trade_count"] > 0


@pytest.mark.slow
def test_backtest_of_a_strategy_that_raises_exits_1_with_the_traceback_and_no_report(
    imported_home: Home, rf_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
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
def test_backtest_with_a_missing_bundle_exits_2(imported_home: Home, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    argv = backtest_argv(imported_home, tmp_path / "no_such_bundle", tmp_path / "report")
    assert ai_trading_system.main(argv) == 2
    assert "no_such_bundle" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()
