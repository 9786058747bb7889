"""Shared fixtures: temporary homes, the real sample data, and a helper to run Python in a fresh process."""

from __future__ import annotations

import bz2
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import ai_trading_system
import data_collector
from config import CHINA_TZ, PROJECT_DIR, SAMPLE_BARS_CSV, SAMPLE_TICKS_CSV, Home, resolve_home


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


def table_dump(home: Home) -> list[tuple[object, ...]]:
    """Every row of every vnpy table, ids included: equal dumps mean an unchanged database."""
    conn = sqlite3.connect(data_collector.database_path(home))
    try:
        rows: list[tuple[object, ...]] = []
        for table in ("dbbardata", "dbbaroverview", "dbtickdata", "dbtickoverview"):
            rows += [(table, *row) for row in conn.execute(f'SELECT * FROM "{table}" ORDER BY "id"')]
        return rows
    finally:
        conn.close()


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
