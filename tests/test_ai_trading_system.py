"""The command line: subcommands, the mode prompt, exit codes and messages."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import ai_trading_system
import data_collector
from config import Home

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


# --- the mode prompt ---------------------------------------------------------------------------


def test_prompt_offers_only_working_modes_and_runs_the_choice(
    imported_home: Home, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts: list[str] = []

    def reply(prompt: str) -> str:
        prompts.append(prompt)
        return "5"

    assert ai_trading_system.main(["--home", str(imported_home.root)], input_fn=reply) == 0
    assert "请选择运行模式" in prompts[0]
    assert [m.argv[0] for m in ai_trading_system.MODES] == ["demo", "data"]
    assert all(f"{m.key}. {m.label}" in prompts[0] for m in ai_trading_system.MODES)
    assert "409,995" in capsys.readouterr().out


@pytest.mark.parametrize("replies", [("q",), ()])
def test_prompt_quit_or_end_of_input_exits_0_doing_nothing(home: Home, replies: tuple[str, ...]) -> None:
    assert ai_trading_system.main(["--home", str(home.root)], input_fn=prompt_with(*replies)) == 0
    assert not home.root.exists()


def test_prompt_retries_then_gives_up_with_exit_2(home: Home, capsys: pytest.CaptureFixture[str]) -> None:
    assert ai_trading_system.main(["--home", str(home.root)], input_fn=prompt_with("9", "x", "1")) == 2
    err = capsys.readouterr().err
    assert err.count("无效选择") == 3 and "多次输入无效" in err


def test_demo_imports_the_sample_and_lists_the_database(
    home: Home, small_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ai_trading_system.main(["--home", str(home.root), "demo", "--csv", str(small_csv)]) == 0
    out = capsys.readouterr().out
    assert "导入完成" in out and "rb0000.SHFE       1m               500" in out
