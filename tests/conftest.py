"""Shared fixtures: temporary homes, the real sample data, and a helper to run Python in a fresh process."""

from __future__ import annotations

import bz2
import itertools
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import ai_trading_system
import bar_store
import data_collector
from config import CHINA_TZ, PROJECT_DIR, SAMPLE_BARS_CSV, SAMPLE_TICKS_CSV, SECRET_ENV, Home, resolve_home


def require(path: Path) -> Path:
    """The shared data file, or a failing test that says where it should be."""
    if not path.exists():
        pytest.fail(f"real market data missing: {path} (clone the project with ../shared beside it)")
    return path


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the developer's own home or settings overrides."""
    for key in list(os.environ):
        if key.startswith("AI_TRADER_"):
            monkeypatch.delenv(key)


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return resolve_home(tmp_path / "home")


@pytest.fixture(scope="session")
def sample_bars_csv() -> Path:
    return require(SAMPLE_BARS_CSV)


@pytest.fixture(scope="session")
def sample_ticks_csv() -> Path:
    return require(SAMPLE_TICKS_CSV)


@pytest.fixture(scope="session")
def sample_lines(sample_bars_csv: Path) -> list[str]:
    """The sample's text lines (header first), decompressed once."""
    return bz2.decompress(sample_bars_csv.read_bytes()).decode("utf-8").splitlines()


@pytest.fixture(scope="session")
def imported_home(tmp_path_factory: pytest.TempPathFactory, sample_bars_csv: Path) -> Home:
    """A home holding the whole real sample, imported once for the session; tests must not modify it."""
    home = resolve_home(tmp_path_factory.mktemp("imported") / "home")
    argv = [
        "--home",
        str(home.root),
        "import",
        "--csv",
        str(sample_bars_csv),
        "--vt-symbol",
        "rb0000.SHFE",
        "--timestamp",
        "end",
    ]
    assert ai_trading_system.main(argv) == 0  # the acceptance command, run in-process
    return home


@pytest.fixture(scope="session")
def sample_frame(sample_bars_csv: Path) -> pd.DataFrame:
    """The whole real sample as bars indexed by bar start (China time); tests must copy before changing it."""
    frame, _ = data_collector.read_bar_csv(sample_bars_csv, timestamp="end")
    frame = frame.set_index("datetime")
    frame.attrs["vt_symbol"] = "rb0000.SHFE"
    return frame


def at(text: str) -> pd.Timestamp:
    """A China-time timestamp from text such as "2016-05-03 09:00"."""
    return pd.Timestamp(text, tz=CHINA_TZ)


def bars(sample_frame: pd.DataFrame, start: str, end: str) -> pd.DataFrame:
    """A copy of the real sample between two times (inclusive)."""
    frame = sample_frame.loc[at(start) : at(end)].copy()
    frame.attrs["vt_symbol"] = "rb0000.SHFE"
    return frame


@pytest.fixture(scope="module")
def spring_2016(sample_frame: pd.DataFrame) -> pd.DataFrame:
    """2016-04-05 .. 2016-06-30, cleaned: night sessions, the 2016-05-03 session change and a roll gap."""
    import data_processor

    cleaned, _ = data_processor.clean_data(bars(sample_frame, "2016-04-05", "2016-06-30 23:59"), "rb0000.SHFE")
    return cleaned


def home_rows(home: Home, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """Rows of a query (`?` parameters) on the home's database, SQLite or PostgreSQL; times as vnpy_sqlite's text."""
    conn = data_collector.open_database(home)
    try:
        if isinstance(conn, bar_store.PgConnection):
            with conn.raw, conn.raw.cursor() as cursor:
                cursor.execute(sql.replace("?", "%s"), params)
                rows = cursor.fetchall()
            return [tuple(str(v) if isinstance(v, datetime) else v for v in row) for row in rows]
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def edit_metadata(bundle: Path, reseal: bool = True, **changes: Any) -> None:
    """Change a bundle's metadata.json; with `reseal` also redo its manifest, as a buggy writer would, so that the
    loader's other checks are what must refuse the change."""
    import json

    import ml_model

    path = bundle / ml_model.METADATA_FILE
    metadata = json.loads(path.read_text(encoding="utf-8"))
    metadata.update(changes)
    path.write_text(json.dumps(metadata), encoding="utf-8")
    if reseal:
        (bundle / ml_model.MANIFEST_FILE).write_text(json.dumps(ml_model.manifest_of(bundle)), encoding="utf-8")


def resealed_copy(bundle: Path, copy: Path, **changes: Any) -> Path:
    """A copy of the bundle at `copy` whose metadata was changed and sealed again (`edit_metadata`)."""
    import shutil

    shutil.copytree(bundle, copy)
    edit_metadata(copy, **changes)
    return copy


def table_dump(home: Home) -> list[tuple[object, ...]]:
    """Every row of every vnpy table, ids included: equal dumps mean an unchanged database."""
    rows: list[tuple[object, ...]] = []
    for table in ("dbbardata", "dbbaroverview", "dbtickdata", "dbtickoverview"):
        rows += [(table, *row) for row in home_rows(home, f'SELECT * FROM "{table}" ORDER BY "id"')]
    return rows


def run_python(
    code: str, home: Path, extra_path: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run code in a fresh interpreter (vnpy binds its folder once per process) with the project importable."""
    paths = [str(PROJECT_DIR)] + ([str(extra_path)] if extra_path else [])
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AI_TRADER_")}
    full_env.update({"PYTHONPATH": os.pathsep.join(paths), "AI_TRADER_HOME": str(home), "HOME": str(home.parent)})
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full_env, cwd=home.parent, timeout=300
    )


@pytest.fixture(scope="session")
def rf_bundle(sample_frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small RandomForest bundle trained on real rb bars of 2015-09 .. 2015-12 (before any backtest range).

    Its threshold is the one the validation simulation picks, saved without the verdict (on these four months it is
    edge: none, and the tests need a bundle that trades); `train_bundle` itself is tested in test_ml_model.
    """
    import data_processor
    import ml_model
    from config import CHINA_TZ, contract_spec, load_contracts

    bars = sample_frame.loc[pd.Timestamp("2015-09-01", tz=CHINA_TZ) : pd.Timestamp("2015-12-31 23:59", tz=CHINA_TZ)]
    data = data_processor.prepare_training_data(
        bars.copy(), "rb0000.SHFE", horizon=5, sequence_length=60, features_count=30
    )
    model = ml_model.PricePredictionModel(
        "random_forest", ml_model.ModelConfig(model_type="random_forest", trees=20, max_depth=6)
    )
    model.train(data)
    model.threshold = ml_model.decide_threshold(model, data, contract_spec("rb0000.SHFE", load_contracts())).threshold
    model.evaluate(data, "test")
    extra = {
        "vt_symbol": "rb0000.SHFE",
        "interval": "1m",
        "ranges": data.split.ranges(data.index),
        "label_kind": data.label_kind,
    }
    return model.save_model(tmp_path_factory.mktemp("bundles") / "rf", extra=extra)


# --- PostgreSQL: a throw-away cluster for the session, and a fixture that runs a test on both databases ---------

PG_USER = "trader"
PG_PASSWORD = "pg-test-Secret-7"
PG_REQUIRED_ENV = "REQUIRE_POSTGRESQL"  # set by .ci/run: a server that cannot start fails the tests instead


def postgresql_bin_dir() -> Path | None:
    """The folder of initdb and pg_ctl: from PATH, else Debian's newest /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = [path.parent for path in Path("/usr/lib/postgresql").glob("*/bin/initdb")]
    versions.sort(key=lambda folder: int(folder.parent.name) if folder.parent.name.isdigit() else 0)
    return versions[-1] if versions else None


def free_port() -> int:
    """A TCP port nothing listens on now, on loopback."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True)
class PgServer:
    """A running throw-away PostgreSQL cluster on loopback; its user owns every database it creates."""

    port: int
    host: str = "127.0.0.1"
    user: str = PG_USER
    password: str = PG_PASSWORD

    def create_database(self) -> str:
        """A new empty database, named uniquely for this session."""
        import psycopg2

        name = f"test_{next(_database_numbers)}"
        conn = psycopg2.connect(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname="postgres"
        )
        try:
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return name

    def settings(self, database: str) -> dict[str, object]:
        """The database.json that points a home at one of this server's databases."""
        return {"name": "postgresql", "host": self.host, "port": self.port, "database": database, "user": self.user}


_database_numbers = itertools.count(1)


def _postgresql_unavailable(reason: str) -> None:
    """Skip the PostgreSQL tests with the reason, or fail them where CI requires the server."""
    if os.environ.get(PG_REQUIRED_ENV):
        pytest.fail(f"PostgreSQL is required here ({PG_REQUIRED_ENV} is set) but {reason}")
    pytest.skip(f"PostgreSQL tests skipped: {reason}")


@pytest.fixture(scope="session")
def postgresql_server() -> Iterator[PgServer]:
    """initdb a cluster in a temporary folder, start it on a free loopback port, stop and delete it at the end.

    initdb refuses to run as root: then the cluster belongs to the `postgres` account (runuser) in a folder it owns.
    """
    bin_dir = postgresql_bin_dir()
    if bin_dir is None:
        _postgresql_unavailable("initdb was not found (apt-get install postgresql)")
    assert bin_dir is not None
    as_owner: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="ai-trader-pg-"))
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(folder)
            _postgresql_unavailable("running as root and there is no postgres account to own the cluster")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
        as_owner = ["runuser", "-u", "postgres", "--"]
    password_file = folder / "password"
    password_file.write_text(PG_PASSWORD, encoding="utf-8")
    if as_owner:
        os.chown(password_file, owner.pw_uid, owner.pw_gid)
    data, log, port = folder / "data", folder / "server.log", free_port()
    options = (
        f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={folder} "
        "-c fsync=off -c full_page_writes=off -c synchronous_commit=off"
    )
    commands = [
        [str(bin_dir / "initdb"), "-D", str(data), "-U", PG_USER, f"--pwfile={password_file}"]
        + ["-A", "scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"],
        [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start"],
    ]
    for command in commands:
        done = subprocess.run(as_owner + command, capture_output=True, text=True, cwd=folder, timeout=120)
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            if log.exists():
                detail += log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
            shutil.rmtree(folder, ignore_errors=True)
            _postgresql_unavailable(f"{Path(command[0]).name} failed: {' | '.join(detail)}")
    try:
        yield PgServer(port)
    finally:
        stop = [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]
        subprocess.run(as_owner + stop, capture_output=True, cwd=folder, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


def use_postgresql(home: Home, server: PgServer, database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point a home at a PostgreSQL database: its settings/database.json, the password in the environment."""
    home.settings_dir.mkdir(parents=True, exist_ok=True)
    (home.settings_dir / "database.json").write_text(json.dumps(server.settings(database)), encoding="utf-8")
    monkeypatch.setenv(SECRET_ENV["db_password"], server.password)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, home: Home, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test on both databases: the `home` fixture keeps SQLite, or uses a fresh PostgreSQL database."""
    if request.param == "postgresql":
        server: PgServer = request.getfixturevalue("postgresql_server")
        use_postgresql(home, server, server.create_database(), monkeypatch)
    return str(request.param)


def quiet_main_engine() -> Any:
    """A real vnpy MainEngine with its log output switched off, the working folder kept (MainEngine chdirs into
    vnpy's folder); the caller closes it."""
    from vnpy.event import EventEngine
    from vnpy.trader.engine import MainEngine

    cwd = os.getcwd()
    engine = MainEngine(EventEngine())
    os.chdir(cwd)
    log_engine: Any = engine.get_engine("log")
    log_engine.active = False
    return engine
