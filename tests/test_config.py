"""Settings, the home folder and import hygiene."""

from __future__ import annotations

import io
import json
import logging
import threading
from datetime import datetime
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
        60,
        30,
        5,
    )
    assert (settings.model.model_type, settings.model.epochs, settings.model.batch_size) == ("lstm", 100, 256)
    assert (
        settings.risk.max_daily_loss_rate,
        settings.risk.max_position_ratio,
        settings.risk.max_single_trade_ratio,
    ) == (0.02, 0.1, 0.05)
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
        ("database.json", {"name": "postgresql", "user": "trader"}, "PostgreSQL 数据库名"),
        ("database.json", {"name": "postgresql", "database": "vnpy"}, "database.user"),
        ("database.json", {"name": "postgresql", "database": "vnpy", "user": "t", "port": 0}, "database.port"),
        ("database.json", {"name": "sqlite", "password": "x"}, "database.password"),
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
    assert written == {
        "font.size": 16,
        "database.timezone": "Asia/Shanghai",
        "database.name": "sqlite",
        "database.database": "database.db",
        "log.console": False,
    }
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


def test_postgresql_settings_reach_vt_setting_json_and_the_password_only_vnpys_memory(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {
        "AI_TRADER_DATABASE_NAME": "postgresql",
        "AI_TRADER_DATABASE_DATABASE": "desk",
        "AI_TRADER_DATABASE_HOST": "db.example",
        "AI_TRADER_DATABASE_PORT": "6543",
        "AI_TRADER_DATABASE_USER": "trader",
        config.SECRET_ENV["db_password"]: "pg-Secret-42",
    }
    result = run_python(
        "import config\n"
        "home = config.resolve_home(); config.bind_vnpy_home(home, config.settings_for(home).database)\n"
        "from vnpy.trader.setting import SETTINGS\n"
        "print(SETTINGS['database.name'], SETTINGS['database.host'], SETTINGS['database.port'], "
        "SETTINGS['database.password'] == 'pg-Secret-42')\n",
        home,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "postgresql db.example 6543 True"
    written = json.loads((home / ".vntrader" / "vt_setting.json").read_text(encoding="utf-8"))
    assert {key: value for key, value in written.items() if key.startswith("database.")} == {
        "database.name": "postgresql",
        "database.database": "desk",
        "database.timezone": "Asia/Shanghai",
        "database.host": "db.example",
        "database.port": 6543,
        "database.user": "trader",
    }
    assert "pg-Secret-42" not in (home / ".vntrader" / "vt_setting.json").read_text(encoding="utf-8")


def test_a_password_in_vt_setting_json_is_refused(tmp_path: Path) -> None:
    home = resolve_home(tmp_path / "h", {})
    home.vntrader_dir.mkdir(parents=True)
    home.vt_setting_path.write_text(json.dumps({"database.password": "in-the-clear"}), encoding="utf-8")
    with pytest.raises(ConfigError, match=config.SECRET_ENV["db_password"]):
        prepare_home(home, load_settings([], environ={}).database)


# --- secrets, redaction, audit -----------------------------------------------------------------------------


def test_operations_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="email.security"):
        config.EmailSettings(security="tls")
    with pytest.raises(ConfigError, match="sender"):
        config.EmailSettings(host="127.0.0.1")
    with pytest.raises(ConfigError, match="daily_summary_time"):
        config.MonitorSettings(daily_summary_time="25:00")
    with pytest.raises(ConfigError, match="backoff_max_seconds"):
        config.WatchdogSettings(backoff_initial_seconds=10, backoff_max_seconds=1)
    with pytest.raises(ConfigError, match="true 或 false"):
        load_settings([], environ={"AI_TRADER_WATCHDOG_FOLLOW_CALENDAR": "1"})
    assert load_settings([], environ={"AI_TRADER_WATCHDOG_FOLLOW_CALENDAR": "true"}).watchdog.follow_calendar
    assert config.EmailSettings(host="h", sender="a@x", recipients="b@x, c@x").recipient_list == ["b@x", "c@x"]


def test_secrets_round_trip_through_the_encrypted_file_and_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = resolve_home(tmp_path / "home")
    env = {config.SECRET_KEY_ENV: str(tmp_path / "keys" / "secret.key")}
    config.save_secret(home, "ctp_password", "pw-Файл-9x", environ=env)
    config.save_secret(home, "smtp_password", "smtp-secret-1", environ=env)
    raw = home.secrets_path.read_bytes()
    assert b"pw-" not in raw and b"smtp-secret" not in raw  # encrypted at rest
    assert oct(home.secrets_path.stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "keys" / "secret.key").stat().st_mode & 0o777) == "0o600"
    secrets = config.load_secrets(home, environ=env)
    assert (secrets.get("ctp_password"), secrets.get("smtp_password"), secrets.get("ctp_user")) == (
        "pw-Файл-9x",
        "smtp-secret-1",
        "",
    )
    assert "pw-" not in repr(secrets)
    env["AI_TRADER_CTP_PASSWORD"] = "from-env-77"
    assert config.load_secrets(home, environ=env).get("ctp_password") == "from-env-77"


def test_secrets_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    home = resolve_home(tmp_path / "home")
    env = {config.SECRET_KEY_ENV: str(tmp_path / "keys" / "secret.key")}
    config.save_secret(home, "ctp_user", "123456", environ=env)
    home.secrets_path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        config.load_secrets(home, environ=env)


def test_secrets_file_with_the_wrong_key_is_a_clear_error(tmp_path: Path) -> None:
    home = resolve_home(tmp_path / "home")
    config.save_secret(home, "ctp_user", "123456", environ={config.SECRET_KEY_ENV: str(tmp_path / "k1")})
    with pytest.raises(ConfigError, match="无法用"):
        config.save_secret(home, "ctp_password", "x" * 8, environ={config.SECRET_KEY_ENV: str(tmp_path / "k2")})


def test_secret_key_inside_the_project_is_refused(tmp_path: Path) -> None:
    home = resolve_home(tmp_path / "home")
    inside = config.PROJECT_DIR / "settings" / "never.key"
    with pytest.raises(ConfigError, match="项目目录"):
        config.save_secret(home, "ctp_user", "123456", environ={config.SECRET_KEY_ENV: str(inside)})
    assert not inside.exists()


def test_redaction_covers_log_lines_tracebacks_and_audit(tmp_path: Path) -> None:
    config.register_secrets(["S3cret-Pass", "abc"])  # too short values are not redacted
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    test_logger = logging.getLogger("test_redaction")
    test_logger.addHandler(handler)
    config.install_redaction(test_logger)
    try:
        test_logger.warning("login with %s failed", "S3cret-Pass")
        try:
            raise RuntimeError("bad password S3cret-Pass")
        except RuntimeError:
            test_logger.exception("abc")
    finally:
        test_logger.removeHandler(handler)
    text = stream.getvalue()
    assert "S3cret-Pass" not in text
    assert "login with *** failed" in text and "RuntimeError: bad password ***" in text and "\nabc\n" in text
    audit = config.AuditLog(tmp_path / "audit.jsonl")
    audit.write("login", password="S3cret-Pass", account="u1")
    audit.write("order", price=3001.0)
    events = audit.read()
    assert [e["event"] for e in events] == ["login", "order"]
    assert events[0]["password"] == "***" and events[1]["price"] == 3001.0
    assert "S3cret-Pass" not in (tmp_path / "audit.jsonl").read_text(encoding="utf-8")


def test_audit_log_appends_whole_lines_from_many_threads(tmp_path: Path) -> None:
    audit = config.AuditLog(tmp_path / "audit.jsonl")
    audit.write("first")

    def burst(index: int) -> None:
        for n in range(50):
            audit.write("order", thread=index, n=n, note="x" * 200)

    workers = [threading.Thread(target=burst, args=(i,)) for i in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    events = audit.read()
    assert len(events) == 201 and events[0]["event"] == "first"
    assert sorted((e["thread"], e["n"]) for e in events[1:]) == [(i, n) for i in range(4) for n in range(50)]


def test_json_safe_turns_numpy_dates_enums_and_non_finite_numbers_into_plain_json() -> None:
    import numpy as np
    from vnpy.trader.constant import Direction

    value = {
        1: np.float32(0.5),
        "n": np.int64(7),
        "when": datetime(2016, 1, 4, 9, 0, tzinfo=config.CHINA_TZ),
        "side": Direction.LONG,
        "bad": [float("nan"), np.float64("inf")],
        "path": Path("/x"),
        "ok": (True, None),
    }
    assert config.json_safe(value) == {
        "1": 0.5,
        "n": 7,
        "when": "2016-01-04T09:00:00+08:00",
        "side": Direction.LONG.value,
        "bad": [None, None],
        "path": "/x",
        "ok": [True, None],
    }
    assert json.dumps(config.json_safe(value), allow_nan=False)  # strict JSON: no NaN left


def test_atomic_writes_leave_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "state.json"
    config.write_json_atomic(target, {"a": 1})
    with pytest.raises(RuntimeError), config.atomic_path(target) as temp:
        temp.write_text("half", encoding="utf-8")
        raise RuntimeError("crash while writing")
    assert json.loads(target.read_text(encoding="utf-8")) == {"a": 1}
    assert sorted(p.name for p in target.parent.iterdir()) == ["state.json"]  # no temporary left behind
    assert config.write_text_atomic(target, "new") == target and target.read_text(encoding="utf-8") == "new"


def test_atomic_folder_replaces_the_whole_folder_or_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "bundle"
    with config.atomic_folder(folder) as temp:
        (temp / "a.txt").write_text("1", encoding="utf-8")
    with pytest.raises(RuntimeError), config.atomic_folder(folder) as temp:
        (temp / "b.txt").write_text("2", encoding="utf-8")
        raise RuntimeError("crash half way")
    assert [p.name for p in folder.iterdir()] == ["a.txt"]
    with config.atomic_folder(folder) as temp:
        (temp / "c.txt").write_text("3", encoding="utf-8")
    assert [p.name for p in folder.iterdir()] == ["c.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_file_sha256_is_the_digest_of_the_bytes(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "blob"
    data = bytes(range(256)) * 10_000  # 2.5 MB: several read blocks
    path.write_bytes(data)
    assert config.file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_guarded_handler_counts_and_logs_every_failure_with_one_traceback_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[int] = []

    def handler(event: int) -> None:
        seen.append(event)
        if event % 2:
            raise ValueError(f"bad event {event}")

    guard = config.guarded("unit", handler, logging.getLogger("test_guarded"))
    with caplog.at_level(logging.ERROR, logger="test_guarded"):
        for event in range(6):
            guard(event)  # never raises
    assert seen == [0, 1, 2, 3, 4, 5] and guard.errors == 3
    records = [r for r in caplog.records if r.name == "test_guarded"]
    assert len(records) == 3 and [r.exc_info is not None for r in records] == [True, False, False]
    assert "bad event 5" in records[-1].getMessage() and "第 3 次" in records[-1].getMessage()
