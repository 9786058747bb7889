"""Settings, the home folder and import hygiene."""

from __future__ import annotations

import io
import json
import logging
import threading
from datetime import date, datetime, time
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


# --- the contract table (settings/contracts.toml) ----------------------------------------------------------------


def test_the_table_covers_at_least_70_products_on_all_six_exchanges() -> None:
    contracts = config.load_contracts()
    assert len(contracts) >= 70
    assert {spec.exchange for spec in contracts.values()} == set(config.EXCHANGES)
    for exchange in config.EXCHANGES:
        assert sum(spec.exchange == exchange for spec in contracts.values()) >= 3, exchange


def _minutes(moment: time) -> int:
    return moment.hour * 60 + moment.minute


def test_every_product_follows_the_tables_rules() -> None:
    for product, spec in config.load_contracts().items():
        assert spec.size > 0 and spec.pricetick > 0 and 0 < spec.margin_rate <= 1, product
        assert spec.name and spec.slippage_ticks == 1, product
        for side in config.FEE_SIDES:  # one kind of fee a side: a rate of turnover or money per lot
            assert not (getattr(spec.fees, f"{side}_rate") and getattr(spec.fees, f"{side}_per_lot")), (product, side)
        assert spec.fees.open_rate or spec.fees.open_per_lot, product  # every exchange charges an opening
        assert spec.sessions, product
        for since, windows in spec.sessions:
            traded = sum((_minutes(end) - _minutes(start)) % 1440 for start, end in windows)
            assert 0 < traded < 12 * 60, (product, since)
            for start, end in windows:  # a day window inside 06:00-18:00, a night one from 18:00 to 06:00 at most
                night = _minutes(start) >= 18 * 60
                if night:
                    assert _minutes(end) <= 6 * 60 or _minutes(end) > _minutes(start), (product, since, start)
                else:
                    assert 6 * 60 <= _minutes(start) < _minutes(end) <= 18 * 60, (product, since, start)
            nights = [night for night, _ in enumerate(windows) if _minutes(windows[night][0]) >= 18 * 60]
            assert nights in ([], [0]), (product, since)  # a night opens the trading day: listed first


def test_known_facts_of_rb_m_ta_if_sc_si() -> None:
    contracts = config.load_contracts()
    rb, m, ta, index, crude, silicon = (contracts[p] for p in ("rb", "m", "TA", "IF", "sc", "si"))
    # SHFE rebar: 10 t a lot, tick 1 yuan, 1/10,000 of turnover each side, night 21:00-23:00 since 2016-05-03
    assert (rb.exchange, rb.size, rb.pricetick) == ("SHFE", 10, 1)
    assert rb.fees == config.Fees.of_rate(0.0001)
    assert rb.sessions[-1] == (
        date(2016, 5, 3),
        config.parse_hours("21:00-23:00 09:00-10:15 10:30-11:30 13:30-15:00", ""),
    )
    # DCE soybean meal: 10 t, tick 1, 1.5 yuan a lot
    assert (m.exchange, m.size, m.pricetick) == ("DCE", 10, 1)
    assert m.fees == config.Fees(open_per_lot=1.5, close_per_lot=1.5, close_today_per_lot=1.5)
    # CZCE PTA: 5 t, tick 2, 3 yuan a lot
    assert (ta.exchange, ta.size, ta.pricetick) == ("CZCE", 5, 2)
    assert ta.fees == config.Fees(open_per_lot=3, close_per_lot=3, close_today_per_lot=3)
    # CFFEX CSI 300: 300 yuan a point, tick 0.2; 0.23/10,000, close-today 2.3/10,000 since 2023-03-20
    assert (index.exchange, index.size, index.pricetick, index.margin_rate) == ("CFFEX", 300, 0.2, 0.12)
    assert index.fees == config.Fees(open_rate=0.000023, close_rate=0.000023, close_today_rate=0.00023)
    # INE crude oil: 1,000 barrels, tick 0.1 yuan, 20 yuan a lot, night to 02:30
    assert (crude.exchange, crude.size, crude.pricetick) == ("INE", 1000, 0.1)
    assert crude.fees == config.Fees(open_per_lot=20, close_per_lot=20, close_today_per_lot=20)
    assert crude.sessions[-1][1][0] == (time(21, 0), time(2, 30))
    # GFEX industrial silicon: 5 t, tick 5, 1/10,000, close-today free, no night session
    assert (silicon.exchange, silicon.size, silicon.pricetick) == ("GFEX", 5, 5)
    assert silicon.fees == config.Fees(open_rate=0.0001, close_rate=0.0001)
    assert [windows for _, windows in silicon.sessions] == [
        config.parse_hours("09:00-10:15 10:30-11:30 13:30-15:00", "")
    ]


def test_round_trip_cost_is_open_plus_close_today_with_per_lot_fees_as_a_return() -> None:
    contracts = config.load_contracts()
    assert contracts["rb"].round_trip_return(2000.0) == 2 * 0.0001 + 2 * 1 / 2000  # unchanged for a one-rate product
    # IF at 4,000: 0.23 + 2.3 parts in 10,000, and a 0.2 tick each side
    assert contracts["IF"].round_trip_return(4000.0) == pytest.approx(0.000023 + 0.00023 + 2 * 0.2 / 4000)
    # m at 3,000: 1.5 + 1.5 yuan on a 30,000-yuan lot, and a 1-yuan tick each side
    assert contracts["m"].round_trip_return(3000.0) == pytest.approx(3.0 / 30_000 + 2 / 3000)


def test_fees_read_as_text_round_trip_and_refuse_two_kinds_on_a_side() -> None:
    fees = config.Fees.parse("0.000023 0.000023 0.00023")
    assert fees == config.Fees(open_rate=0.000023, close_rate=0.000023, close_today_rate=0.00023)
    assert config.Fees.parse(fees.text) == fees and not fees.rate_only
    lots = config.Fees.parse("1.5/lot 1.5/lot 0/lot")
    assert config.Fees.parse(lots.text) == lots and lots.close_today_per_lot == 0
    assert config.Fees.of_rate(0.0001).rate_only
    # a close of 3 lots at 100 (size 10), one opened today: 2 × 1.5 + 1 × 0
    assert lots.close_fee(100.0, 3, 10, today=1) == 3.0 and lots.open_fee(100.0, 3, 10) == 4.5
    assert fees.close_fee(4000.0, 2, 300, today=2) == pytest.approx(2 * 4000 * 300 * 0.00023)
    for text, fragment in (("0.0001 0.0001", "三项"), ("1/kg 1/kg 1/kg", "N/lot"), ("x 1 1", "N/lot")):
        with pytest.raises(ConfigError, match=fragment):
            config.Fees.parse(text)
    with pytest.raises(ConfigError, match="one kind"):
        config.Fees(open_rate=0.0001, open_per_lot=1.0)
    with pytest.raises(ConfigError, match="out of range"):
        config.Fees.parse("0.05 0.05 0.05")


def test_a_home_overrides_a_product_key_by_key_and_adds_its_own(tmp_path: Path) -> None:
    home = resolve_home(tmp_path / "home")
    write(
        home.settings_dir,
        config.CONTRACTS_FILE,
        '[products]\nrb = { fees = "0.00012 0.00012 0.00012", margin_rate = 0.15 }\n'
        'xx = { exchange = "DCE", size = 10, pricetick = 1, margin_rate = 0.1, fees = "2/lot 2/lot 2/lot" }\n',
    )
    project = config.load_contracts()
    contracts = config.load_contracts(config.settings_dirs(home))
    assert contracts["rb"].fees == config.Fees.of_rate(0.00012) and contracts["rb"].margin_rate == 0.15
    assert contracts["rb"].sessions == project["rb"].sessions and contracts["rb"].size == 10  # the rest: the project's
    assert contracts["xx"].fees.open_per_lot == 2 and contracts["xx"].sessions == ()  # hours then come from bars
    assert contracts["m"] == project["m"]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ('[products]\nrb = { sessions = "day" }\n', "交易时段只在项目"),
        ('[sessions]\nmine = [{ since = 2020-01-01, hours = "09:00-10:00" }]\n', "交易时段只在项目"),
        ("[products]\nzz = { size = 10 }\n", "缺少 exchange"),
        ('[products]\nrb = { size = "10" }\n', "rb.size"),
        ("[products]\nrb = { tick = 1 }\n", "bad contract entry"),
        ('[products]\nrb = { fees = "0.0001" }\n', "三项"),
        ('[products]\nrb = { exchange = "LME" }\n', "LME"),
        ("[products\n", "TOML"),
    ],
)
def test_a_bad_home_contract_table_is_a_clear_error(tmp_path: Path, content: str, fragment: str) -> None:
    home = resolve_home(tmp_path / "home")
    write(home.settings_dir, config.CONTRACTS_FILE, content)
    with pytest.raises(ConfigError, match=fragment) as error:
        config.load_contracts(config.settings_dirs(home))
    assert error.value.exit_code == 2


def test_session_histories_are_checked_where_they_are_defined(tmp_path: Path) -> None:
    table = (
        '[sessions]\nwrong = [{ since = 2020-01-01, hours = "09:00-10:15 10:00-11:30" }]\n'
        '[products]\nzz = { exchange = "DCE", size = 1, pricetick = 1, margin_rate = 0.1, fees = "1/lot 1/lot 1/lot", '
        'sessions = "wrong" }\n'
    )
    write(tmp_path, config.CONTRACTS_FILE, table)
    with pytest.raises(ConfigError, match="overlapping"):
        config.load_contracts([tmp_path])
    write(tmp_path, config.CONTRACTS_FILE, table.replace("10:00-11:30", "10:30-11:30").replace('= "wrong"', '= "gone"'))
    with pytest.raises(ConfigError, match="unknown session history"):
        config.load_contracts([tmp_path])


def test_a_product_not_in_the_table_names_itself_and_how_to_add_it() -> None:
    with pytest.raises(ConfigError) as error:
        config.contract_spec("zz2605.DCE", config.load_contracts())
    message = str(error.value)
    assert "zz" in message and "zz2605.DCE" in message and "[products]" in message and "contracts.toml" in message
    assert 'zz = { exchange = "SHFE", size = 10' in message  # a line to copy


def test_a_leftover_contracts_json_is_refused_with_the_way_to_move_it(tmp_path: Path) -> None:
    home = resolve_home(tmp_path / "home")
    write(home.settings_dir, "contracts.json", {"rb": {"size": 10}})
    with pytest.raises(ConfigError, match="contracts.toml"):
        config.load_contracts(config.settings_dirs(home))
    with pytest.raises(ConfigError, match="contracts.toml"):
        load_settings(config.settings_dirs(home), environ={})


def test_a_product_listed_after_an_hours_change_starts_with_the_era_then_in_force() -> None:
    history = (
        (date(1993, 3, 1), config.parse_hours("09:00-10:15", "")),
        (date(2013, 12, 20), config.parse_hours("21:00-01:00 09:00-10:15", "")),
    )
    assert config.product_eras(history, date(2015, 3, 27)) == ((date(2015, 3, 27), history[1][1]),)
    assert config.product_eras(history, date(2009, 1, 5)) == ((date(2009, 1, 5), history[0][1]), history[1])
    assert config.product_eras(history, None) == history
