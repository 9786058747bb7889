"""The Ray backend: the same results as the local process pool, retries of dead workers, a clear message without Ray."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import ai_trading_system
import cluster
from config import PROJECT_DIR, ConfigError, Home, resolve_home

VT = "rb0000.SHFE"


NETNS_ENV = "DESK_TEST_NETNS"  # set inside the loopback-only namespace (not AI_TRADER_*: conftest clears those)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    """A Ray of two CPUs on this machine, shut down after the module; only inside a network namespace whose one
    interface is loopback (Ray's servers listen on every interface, so the tests run where there is no other)."""
    if os.environ.get(NETNS_ENV) != "1":
        pytest.skip("Ray 只在仅有回环网卡的网络命名空间中运行 / runs in a loopback-only namespace (see the last test)")
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield ray
    ray.shutdown()


def scaled(factor: int, item: int) -> int:
    return factor * item


def dies_once(marker: str, item: int) -> int:
    """Kills its own worker process the first time it runs (as a lost machine would), succeeds when retried."""
    path = Path(marker)
    if item == 1 and not path.exists():
        path.write_text("died")
        os._exit(1)
    return item


def sleeps_unless_first(seconds: float, item: int) -> int:
    if item:
        time.sleep(seconds)
    return item


def interrupt(index: int, result: int) -> None:
    raise KeyboardInterrupt  # as Ctrl-C arrives while the driver waits


def fails_on_two(factor: int, item: int) -> int:
    if item == 2:
        raise ConfigError("bad item")
    return item


def test_without_ray_the_backend_is_refused_with_exit_2_and_the_install_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ConfigError, match="requirements-cluster.txt"):
        cluster.require_ray()
    home = resolve_home(tmp_path / "home")
    argv = ["--home", str(home.root), "research", "--vt-symbol", VT, "--test-years", "2016", "--backend", "ray"]
    assert ai_trading_system.main(argv) == 2
    err = capsys.readouterr().err
    assert "requirements-cluster.txt" in err and "Traceback" not in err
    argv = ["--home", str(home.root), "research", "--vt-symbol", VT, "--test-years", "2016", "--ray-address", "auto"]
    assert ai_trading_system.main(argv) == 2
    assert "--backend ray" in capsys.readouterr().err


@pytest.mark.slow
def test_ray_map_keeps_the_order_reports_each_run_retries_a_dead_worker_and_raises_a_runs_error(
    local_ray: Any, tmp_path: Path
) -> None:
    seen: list[tuple[int, int]] = []
    assert cluster.ray_map(scaled, 3, [5, 6, 7], lambda i, r: seen.append((i, r)), order=[2, 0, 1]) == [15, 18, 21]
    assert sorted(seen) == [(0, 15), (1, 18), (2, 21)]
    marker = tmp_path / "died"
    assert cluster.ray_map(dies_once, str(marker), [0, 1, 2]) == [0, 1, 2]
    assert marker.read_text() == "died"
    with pytest.raises(ConfigError, match="bad item"):
        cluster.ray_map(fails_on_two, 1, [1, 2, 3])


@pytest.mark.slow
def test_ctrl_c_cancels_the_remaining_tasks_and_frees_the_cpus(local_ray: Any) -> None:
    began = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        cluster.ray_map(sleeps_unless_first, 60.0, [0, 1, 2, 3], interrupt)
    while local_ray.available_resources().get("CPU", 0) < 2 and time.monotonic() - began < 20:
        time.sleep(0.2)
    assert local_ray.available_resources().get("CPU", 0) == 2  # the 60 s tasks were cancelled, not left running
    assert time.monotonic() - began < 20


def optimize_argv(home: Home, model: Path, report: Path, *more: str) -> list[str]:
    argv = ["--home", str(home.root), "optimize", "--vt-symbol", VT, "--start", "2016-01-04", "--end", "2016-01-29"]
    argv += ["--model", str(model), "--param", "prediction_threshold=0.0005:0.0015:0.0005"]
    argv += ["--param", "trailing_percent=0.5,1.0", "--target", "total_net_pnl", "--report-dir", str(report)]
    return [*argv, "--no-cache", *more]


@pytest.mark.slow
def test_optimize_on_ray_gives_the_local_pools_results_table(
    local_ray: Any, imported_home: Home, rf_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = optimize_argv(imported_home, rf_bundle, tmp_path / "local", "--workers", "2")
    assert ai_trading_system.main(argv) == 0
    assert ai_trading_system.main(optimize_argv(imported_home, rf_bundle, tmp_path / "ray", "--backend", "ray")) == 0
    err = capsys.readouterr().err
    assert "grid on Ray: 6" in err and "[6/6]" in err
    local = pd.read_csv(tmp_path / "local" / "results.csv")
    on_ray = pd.read_csv(tmp_path / "ray" / "results.csv")
    assert len(local) == 6 and local["total_net_pnl"].nunique() > 1
    pd.testing.assert_frame_equal(local, on_ray, check_exact=True)
    argv = optimize_argv(imported_home, rf_bundle, tmp_path / "ga", "--backend", "ray", "--method", "ga")
    assert ai_trading_system.main(argv) == 2
    assert "--method grid" in capsys.readouterr().err


@pytest.mark.slow
def test_research_on_ray_gives_the_local_pools_rows(
    local_ray: Any, imported_home: Home, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--home", str(imported_home.root), "research", "--vt-symbol", VT, "--test-years", "2016"]
    argv += ["--train-years", "1", "--models", "random_forest", "--trees", "4", "--horizons", "30"]
    argv += ["--classics", "DualThrust"]
    assert ai_trading_system.main([*argv, "--workers", "1", "--report-dir", str(tmp_path / "local")]) == 0
    assert ai_trading_system.main([*argv, "--backend", "ray", "--report-dir", str(tmp_path / "ray")]) == 0
    err = capsys.readouterr().err
    assert "[4/4]" in err  # the model, the classic, its training-years run, buy and hold
    local = json.loads((tmp_path / "local" / "research.json").read_text())["rows"]
    on_ray = json.loads((tmp_path / "ray" / "research.json").read_text())["rows"]
    assert len(local) == 10 and {row["strategy"] for row in local} >= {"DualThrustStrategy", "buy_and_hold"}
    assert on_ray == local


@pytest.mark.slow
def test_ray_tests_pass_in_a_loopback_only_network() -> None:
    """Run this file's Ray tests in a new network namespace with only `lo` up: no packet of Ray's can leave."""
    if os.environ.get(NETNS_ENV) == "1":
        pytest.skip("already inside the namespace")
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if unshare is None or ip is None:
        pytest.fail("需要 util-linux 的 unshare 与 iproute2 的 ip（.ci/run 会安装）/ unshare and ip are needed")
    if os.geteuid() != 0:
        pytest.skip("创建网络命名空间需要 root（CI 以 root 运行）/ a network namespace needs root; CI runs as root")
    pytest_args = "-q -p no:cacheprovider tests/test_cluster.py -k 'not loopback_only_network'"
    command = f"{ip} link set lo up && exec {sys.executable} -m pytest {pytest_args}"
    result = subprocess.run(
        [unshare, "--net", "sh", "-c", command],
        cwd=PROJECT_DIR,
        env={**os.environ, NETNS_ENV: "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    tail = result.stdout[-3000:] + result.stderr[-2000:]
    assert result.returncode == 0, tail
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed is not None and int(passed.group(1)) >= 5, tail  # every Ray test ran there, none skipped
