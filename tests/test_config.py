"""Settings, the home folder and import hygiene."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import config
from config import ConfigError, load_settings, prepare_home, resolve_home
from tests.conftest import run_python


def write(folder: Path, name: str, data: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data, encoding="utf-8")
    return path


def test_defaults_are_the_seed_values() -> None:
    settings = load_settings([], environ={})
    assert (settings.model.sequence_length, settings.model.features_count, settings.model.prediction_horizon) == (
        60, 30, 5)
    assert (settings.model.model_type, settings.model.epochs, settings.model.batch_size) == ("lstm", 100, 256)
    assert (settings.risk.max_daily_loss_rate, settings.risk.max_position_ratio,
            settings.risk.max_single_trade_ratio) == (0.02, 0.1, 0.05)
    assert (settings.database.name, settings.database.database) == ("sqlite", "database.db")


def test_project_settings_files_hold_the_defaults() -> None:
    assert load_settings([config.SETTINGS_DIR], environ={}) == load_settings([], environ={})


def test_later_settings_folder_and_environment_override_earlier(tmp_path: Path) -> None:
    write(tmp_path / "a", "model.json", {"epochs": 7, "model_type": "random_forest"})
    write(tmp_path / "b", "model.json", {"epochs": 9})
    env = {"AI_TRADER_MODEL_BATCH_SIZE": "64", "AI_TRADER_RISK_MAX_POSITION_RATIO": "0.2"}
    settings = load_settings([tmp_path / "a", tmp_path / "b"], environ=env)
    assert settings.model.epochs == 9
    assert settings.model.model_type == "random_forest"
    assert settings.model.batch_size == 64
    assert settings.risk.max_position_ratio == 0.2


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("model.json", {"epoch": 5}, "model.epoch"),
        ("risk.json", {"max_position_ratio": 1.5}, "max_position_ratio"),
        ("risk.json", {"max_single_trade_ratio": 0.5}, "max_single_trade_ratio"),
        ("model.json", {"epochs": 0}, "model.epochs"),
        ("model.json", {"epochs": True}, "整数"),
        ("model.json", {"epochs": 2.5}, "整数"),
        ("risk.json", {"max_daily_loss_rate": "0.02"}, "数字"),
        ("model.json", {"model_type": "xgboost"}, "model_type"),
        ("database.json", {"name": "mysql"}, "sqlite"),
        ("database.json", {"database": "../elsewhere.db"}, "文件名"),
        ("model.json", "{not json", "JSON"),
        ("model.json", [1, 2], "JSON 对象"),
        ("strategy.json", {"x": 1}, "未知设置文件"),
    ],
)
def test_invalid_settings_file_is_rejected_with_a_clear_error(
    tmp_path: Path, name: str, content: object, fragment: str
) -> None:
    write(tmp_path, name, content)
    with pytest.raises(ConfigError) as error:
        load_settings([tmp_path], environ={})
    assert fragment in str(error.value)
    assert error.value.exit_code == 2


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"AI_TRADER_MODEL_EPOCHZ": "3"}, "model.epochz"),
        ({"AI_TRADER_MODEL_EPOCHS": "many"}, "不是数字"),
        ({"AI_TRADER_RISK_MAX_DAILY_LOSS_RATE": "-0.1"}, "max_daily_loss_rate"),
    ],
)
def test_invalid_environment_override_is_rejected(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_settings([], environ=env)


def test_settings_are_frozen() -> None:
    settings = load_settings([], environ={})
    with pytest.raises(AttributeError):
        settings.model.epochs = 1  # type: ignore[misc]


def test_home_comes_from_argument_then_environment_then_project(tmp_path: Path) -> None:
    env = {"AI_TRADER_HOME": str(tmp_path / "env_home")}
    assert resolve_home(tmp_path / "arg", env).root == (tmp_path / "arg").resolve()
    assert resolve_home(None, env).root == (tmp_path / "env_home").resolve()
    assert resolve_home(None, {}).root == config.PROJECT_DIR


def test_home_that_is_a_file_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="不是文件夹"):
        resolve_home(tmp_path / "file", {})


def test_prepare_home_writes_china_time_sqlite_settings_and_keeps_user_keys(tmp_path: Path) -> None:
    home = resolve_home(tmp_path / "h", {})
    home.vntrader_dir.mkdir(parents=True)
    home.vt_setting_path.write_text(json.dumps({"font.size": 16, "database.timezone": "UTC"}), encoding="utf-8")
    prepare_home(home, load_settings([], environ={}).database)
    written = json.loads(home.vt_setting_path.read_text(encoding="utf-8"))
    assert written == {"font.size": 16, "database.timezone": "Asia/Shanghai", "database.name": "sqlite",
                       "database.database": "database.db"}
    assert sorted(p.name for p in home.vntrader_dir.iterdir()) == ["vt_setting.json"]


def test_prepare_home_rejects_a_broken_vt_setting_file(tmp_path: Path) -> None:
    home = resolve_home(tmp_path / "h", {})
    home.vntrader_dir.mkdir(parents=True)
    home.vt_setting_path.write_text("{broken", encoding="utf-8")
    with pytest.raises(ConfigError, match="vt_setting.json"):
        prepare_home(home, load_settings([], environ={}).database)
    assert home.vt_setting_path.read_text(encoding="utf-8") == "{broken"


def test_importing_modules_creates_no_folder_and_keeps_the_working_directory(tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = run_python(
        "import os, sys; before = os.getcwd()\n"
        "import config, data_collector, ai_trading_system\n"
        "assert os.getcwd() == before\n"
        "print(sorted(m for m in sys.modules if m.startswith('vnpy.trader.') and m.endswith(('utility', 'setting'))))",
        home,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert list(tmp_path.iterdir()) == []


def test_bind_vnpy_home_points_vnpy_at_the_home_in_china_time(tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = run_python(
        "import os, config\n"
        "cwd = os.getcwd(); home = config.resolve_home()\n"
        "config.bind_vnpy_home(home, config.settings_for(home).database)\n"
        "from vnpy.trader.utility import TRADER_DIR\n"
        "from vnpy.trader.database import DB_TZ\n"
        "from vnpy.trader.setting import SETTINGS\n"
        "print(TRADER_DIR, DB_TZ, SETTINGS['database.name'], os.getcwd() == cwd, os.environ['TZ'])\n"
        "other = config.resolve_home(str(home.root) + '_other')\n"
        "try:\n"
        "    config.bind_vnpy_home(other, config.settings_for(other).database)\n"
        "except config.ConfigError as exc:\n"
        "    print('refused', 'vnpy' in str(exc))\n",
        home,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    assert lines[0] == f"{home} Asia/Shanghai sqlite True Asia/Shanghai"
    assert lines[1] == "refused True"
    assert not (tmp_path / ".vntrader").exists()
