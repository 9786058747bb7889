"""The watchdog: real child processes killed, hung, crashing and exiting; the lock, signals and run windows."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

import restart_script
from config import CHINA_TZ, PROJECT_DIR, AuditLog, ConfigError, Home, WatchdogSettings
from restart_script import (
    CrashHistory,
    Outage,
    RunWindow,
    Supervisor,
    WatchdogLocked,
    backoff_delay,
    describe_exit,
    healthy,
    hung_reason,
    next_window,
    read_heartbeat,
    resolve_command,
    window_at,
)
from tests.conftest import run_python
from trading_calendar import is_trading_time, next_session_start

T = TypeVar("T")

# A stand-in for the trading process: beats every 0.1 s (JSON pid/time, atomic replace) and behaves as argv says:
#   forever | exit SECONDS CODE | crash | hang-once SECONDS (first run only: stops beating, ignores SIGTERM)
#   | transient SECONDS (exits 3 at once until SECONDS after the first start in this home, then runs forever)
CHILD = r"""
import json, os, signal, sys, time
from pathlib import Path

mode = sys.argv[1]
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
code = int(sys.argv[3]) if len(sys.argv) > 3 else 0
home = Path(os.environ["AI_TRADER_HOME"])
beat = home / "run" / "trading.heartbeat"
print(f"child {os.getpid()} {mode}", flush=True)
if mode == "crash":
    sys.exit(1)
if mode == "transient":
    first = home / "first-start"
    if not first.exists():
        first.write_text(str(time.time()))
    if time.time() - float(first.read_text()) < seconds:
        sys.exit(3)
    mode = "forever"
if mode == "hang-once":
    marker = home / "hung-once"
    if marker.exists():
        mode = "forever"
    else:
        marker.touch()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
started = time.monotonic()
while True:
    elapsed = time.monotonic() - started
    if mode == "exit" and elapsed >= seconds:
        sys.exit(code)
    if not (mode == "hang-once" and elapsed >= seconds):
        temp = beat.with_name(f".beat.{os.getpid()}")
        temp.write_text(json.dumps({"pid": os.getpid(), "time": time.time()}))
        os.replace(temp, beat)
    time.sleep(0.1)
"""

FAST = WatchdogSettings(
    heartbeat_timeout_seconds=1.0,
    startup_grace_seconds=2.0,
    backoff_initial_seconds=0.2,
    backoff_max_seconds=0.8,
    max_crashes=5,
    crash_window_seconds=60.0,
    stop_timeout_seconds=1.0,
)
RESTART_SCRIPT = PROJECT_DIR / "restart_script.py"


@dataclass
class AlertRecorder:
    """The alert callable: records (message, severity)."""

    sent: list[tuple[str, str]] = field(default_factory=list)

    def __call__(self, message: str, severity: str) -> None:
        self.sent.append((message, severity))

    def severities(self) -> list[str]:
        return [severity for _, severity in self.sent]


@dataclass
class Running:
    """A supervisor running in a background thread."""

    supervisor: Supervisor
    thread: threading.Thread
    result: list[int] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def wait(self, timeout: float = 10.0) -> int:
        """The supervisor's exit code, failing if it does not end in time."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the supervisor did not end"
        if self.errors:
            raise self.errors[0]
        return self.result[0]


@pytest.fixture
def child(tmp_path: Path) -> Path:
    path = tmp_path / "child.py"
    path.write_text(CHILD, encoding="utf-8")
    return path


def make(home: Home, child: Path, *args: str, settings: WatchdogSettings = FAST, **kwargs: Any) -> Supervisor:
    """A fast-polling supervisor of the stand-in child with a recording alert."""
    kwargs.setdefault("alert", AlertRecorder())
    return Supervisor(
        settings,
        [sys.executable, str(child), *args],
        home,
        AuditLog(home.audit_path),
        cwd=home.root.parent,
        poll_seconds=0.05,
        **kwargs,
    )


def started_pids(audit: AuditLog) -> list[int]:
    return [event["child_pid"] for event in actions(audit, "child_started")]


def actions(audit: AuditLog, action: str) -> list[dict[str, Any]]:
    return [event for event in audit.read() if event.get("action") == action]


def kill_groups(pids: list[int]) -> None:
    """SIGKILL the process groups of children we started that still lead their group (cleanup after a failure)."""
    for pid in pids:
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass


@contextmanager
def supervising(supervisor: Supervisor) -> Iterator[Running]:
    """Run the supervisor in a thread; afterwards stop it and kill any child left, whatever happened."""
    running = Running(supervisor, threading.Thread(daemon=True, target=lambda: None))

    def target() -> None:
        try:
            running.result.append(supervisor.run())
        except Exception as exc:  # handed to the test through wait()
            running.errors.append(exc)

    running.thread = threading.Thread(target=target, daemon=True, name="supervisor")
    running.thread.start()
    try:
        yield running
    finally:
        supervisor.request_stop("test over")
        running.thread.join(10)
        kill_groups(started_pids(supervisor.audit))


def wait_for(probe: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll until probe gives a truthy value; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def beating_pid(home: Home) -> int | None:
    """The pid in a fresh (< 0.5 s old) heartbeat file whose process is alive, or None."""
    beat = read_heartbeat(home.heartbeat_path)
    if beat is None or time.time() - beat.mtime > 0.5 or not alive(beat.pid):
        return None
    return beat.pid


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def china(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=CHINA_TZ)


def window(start: str, end: str) -> RunWindow:
    return RunWindow(china(start), china(end))


# --- the supervisor with real children ---


def test_child_killed_with_sigkill_runs_again_with_a_new_pid_within_5_seconds(home: Home, child: Path) -> None:
    supervisor = make(home, child, "forever")
    with supervising(supervisor):
        first = wait_for(lambda: beating_pid(home), 5, "the first heartbeat")
        assert first == supervisor.child_pid
        killed_at = time.monotonic()
        os.kill(first, signal.SIGKILL)
        second = wait_for(lambda: (pid := beating_pid(home)) != first and pid, 5, "a new child's heartbeat")
        restart_seconds = time.monotonic() - killed_at
        print(f"restart after SIGKILL: {restart_seconds:.3f} s")
        assert restart_seconds < 5
        assert second != first and not alive(first)
        assert supervisor.child_pid == second
    exited = actions(supervisor.audit, "child_exited")
    assert exited[0]["child_pid"] == first and exited[0]["returncode"] == -signal.SIGKILL
    assert "SIGKILL" in exited[0]["meaning"]
    assert [event["delay"] for event in actions(supervisor.audit, "restart_scheduled")] == [0.2]
    assert started_pids(supervisor.audit)[:2] == [first, second]
    assert "child " in (home.run_dir / "trading.out").read_text(encoding="utf-8")  # the child's output is kept


def test_child_exiting_with_configuration_error_is_never_restarted(home: Home, child: Path) -> None:
    alerts = AlertRecorder()
    supervisor = make(home, child, "exit", "0.2", "2", alert=alerts)
    with supervising(supervisor) as running:
        assert running.wait() == 2
    assert len(started_pids(supervisor.audit)) == 1
    assert actions(supervisor.audit, "config_error")
    assert not actions(supervisor.audit, "restart_scheduled")
    assert alerts.severities() == ["CRITICAL"]
    assert "人工" in alerts.sent[0][0] and "a human must act" in alerts.sent[0][0]


def test_hung_child_is_killed_and_restarted(home: Home, child: Path) -> None:
    settings = replace(FAST, stop_timeout_seconds=0.5)  # the hung child ignores SIGTERM: SIGKILL follows
    supervisor = make(home, child, "hang-once", "0.3", settings=settings)
    with supervising(supervisor):
        first = wait_for(lambda: beating_pid(home), 5, "the first heartbeat")
        second = wait_for(lambda: (pid := beating_pid(home)) != first and pid, 8, "the restarted child")
        wait_for(lambda: not alive(first), 2, "the hung child to be gone")
        assert second != first
    hung = actions(supervisor.audit, "hung_killed")
    assert hung[0]["child_pid"] == first and "heartbeat" in hung[0]["detail"]
    exited = actions(supervisor.audit, "child_exited")[0]
    assert (exited["child_pid"], exited["reason"], exited["returncode"]) == (first, "hung", -signal.SIGKILL)
    assert actions(supervisor.audit, "restart_scheduled")[0]["delay"] == 0.2


def test_crash_loop_gives_up_after_max_crashes_with_growing_capped_backoff(home: Home, child: Path) -> None:
    settings = replace(FAST, backoff_initial_seconds=0.1, backoff_max_seconds=0.4, max_crashes=5)
    alerts = AlertRecorder()
    supervisor = make(home, child, "crash", settings=settings, alert=alerts)
    with supervising(supervisor) as running:
        assert running.wait(15) == 1
    assert [event["delay"] for event in actions(supervisor.audit, "restart_scheduled")] == [0.1, 0.2, 0.4, 0.4]
    assert [event["returncode"] for event in actions(supervisor.audit, "child_exited")] == [1] * 5
    assert len(started_pids(supervisor.audit)) == 5
    assert actions(supervisor.audit, "gave_up")[0]["crashes"] == 5
    assert alerts.severities() == ["WARNING"] * 4 + ["CRITICAL"]


def test_transient_exits_outlast_the_crash_window_then_the_child_is_supervised_normally(
    home: Home, child: Path
) -> None:
    settings = replace(
        FAST,
        backoff_initial_seconds=0.05,
        backoff_max_seconds=0.2,
        max_crashes=3,
        crash_window_seconds=1.0,
        startup_grace_seconds=1.0,
        outage_alert_seconds=0.5,
    )
    alerts = AlertRecorder()
    now = FakeNow(china("2024-01-10 10:00"))  # a Wednesday inside rb's day session: the retries go on
    supervisor = make(home, child, "transient", "2.0", settings=settings, alert=alerts, now=now)
    with supervising(supervisor) as running:
        first = wait_for(lambda: beating_pid(home), 15, "a child that got through")
        wait_for(lambda: actions(supervisor.audit, "recovered"), 5, "the recovery")
        os.kill(first, signal.SIGKILL)  # from now on an ordinary crash
        second = wait_for(lambda: (pid := beating_pid(home)) != first and pid, 5, "the child restarted after a crash")
        assert running.thread.is_alive() and supervisor.child_pid == second
    audit = supervisor.audit
    retries = actions(audit, "transient_retry")
    exits = actions(audit, "child_exited")
    assert len(retries) > settings.max_crashes  # the old rule would have given up after 3 within the window
    assert [event["returncode"] for event in exits[: len(retries)]] == [3] * len(retries)
    spread = datetime.fromisoformat(exits[len(retries) - 1]["time"]) - datetime.fromisoformat(exits[0]["time"])
    assert spread.total_seconds() > settings.crash_window_seconds
    delays = [event["delay"] for event in retries]
    assert delays == [0.05, 0.1, 0.2] + [0.2] * (len(retries) - 3)  # capped back-off
    assert not actions(audit, "gave_up")
    assert [event["crashes"] for event in actions(audit, "restart_scheduled")] == [1]  # exit 3 never counted
    assert actions(audit, "restart_scheduled")[0]["delay"] == 0.05  # a fresh crash streak
    assert len(actions(audit, "outage")) == 1 and len(actions(audit, "recovered")) == 1
    recovered = actions(audit, "recovered")[0]
    assert recovered["child_pid"] == first and recovered["alerted"] and recovered["attempts"] == len(retries)
    assert alerts.severities() == ["CRITICAL", "INFO", "WARNING"]  # outage, recovered, then the crash warning
    assert "keeps retrying" in alerts.sent[0][0] and "trading resumed" in alerts.sent[1][0]


def test_short_outage_sends_no_alert_and_a_refused_login_still_stops_at_once(home: Home, child: Path) -> None:
    settings = replace(FAST, startup_grace_seconds=0.3, outage_alert_seconds=60.0)
    alerts = AlertRecorder()
    now = FakeNow(china("2024-01-10 10:00"))
    supervisor = make(home, child, "transient", "0.3", settings=settings, alert=alerts, now=now)
    with supervising(supervisor):
        wait_for(lambda: actions(supervisor.audit, "recovered"), 10, "the recovery")
    assert actions(supervisor.audit, "recovered")[0]["alerted"] is False
    assert not actions(supervisor.audit, "outage") and alerts.sent == []
    before = len(started_pids(supervisor.audit))
    refused = make(home, child, "exit", "0.1", "2", settings=settings, alert=alerts, now=now)  # same home and log
    with supervising(refused) as running:
        assert running.wait() == 2
    assert len(started_pids(refused.audit)) == before + 1
    assert alerts.severities() == ["CRITICAL"] and "a human must act" in alerts.sent[0][0]


def test_transient_exit_outside_the_sessions_waits_for_the_next_one(home: Home, child: Path) -> None:
    now = FakeNow(china("2024-01-13 10:00"))  # Saturday: no session until Monday
    supervisor = make(home, child, "exit", "0.05", "3", now=now)
    with supervising(supervisor) as running:
        waiting = wait_for(lambda: actions(supervisor.audit, "waiting"), 5, "the wait for Monday")
        assert waiting[0]["next_start"] == "2024-01-15T08:50:00+08:00"
        time.sleep(0.5)
        assert len(started_pids(supervisor.audit)) == 1 and running.thread.is_alive()
        now.value = china("2024-01-15 08:50")
        wait_for(lambda: len(started_pids(supervisor.audit)) >= 2, 5, "the retry in Monday's run window")
    assert actions(supervisor.audit, "transient_retry")[0]["delay"] == 0.2
    assert not actions(supervisor.audit, "restart_scheduled")


def test_child_exiting_0_ends_the_supervisor_without_restart(home: Home, child: Path) -> None:
    supervisor = make(home, child, "exit", "0.1", "0")
    with supervising(supervisor) as running:
        assert running.wait() == 0
    assert len(started_pids(supervisor.audit)) == 1
    assert actions(supervisor.audit, "stopped")[0]["exit_code"] == 0


def test_command_that_cannot_start_is_a_configuration_error(home: Home, tmp_path: Path) -> None:
    alerts = AlertRecorder()
    supervisor = Supervisor(
        FAST, [str(tmp_path / "missing-program")], home, AuditLog(home.audit_path), alerts, poll_seconds=0.05
    )
    assert supervisor.run() == 2
    assert actions(supervisor.audit, "config_error")
    assert alerts.severities() == ["CRITICAL"]


def test_second_supervisor_on_the_same_home_is_refused_naming_the_holder(home: Home, child: Path) -> None:
    supervisor = make(home, child, "forever")
    with supervising(supervisor):
        wait_for(lambda: beating_pid(home), 5, "the first heartbeat")
        with pytest.raises(WatchdogLocked, match=f"pid {os.getpid()}") as error:
            make(home, child, "forever").run()
        assert error.value.exit_code == 2
        result = subprocess.run(
            [sys.executable, str(RESTART_SCRIPT), "--home", str(home.root)],
            capture_output=True,
            text=True,
            timeout=30,
            env=clean_environment(),
        )
        assert result.returncode == 2
        assert f"另一个看门狗（pid {os.getpid()}）" in result.stderr
        assert "Traceback" not in result.stderr
        assert len(started_pids(supervisor.audit)) == 1
    assert len(actions(supervisor.audit, "lock_busy")) == 2


def test_live_trader_with_a_fresh_heartbeat_blocks_a_new_watchdog(home: Home, child: Path) -> None:
    home.run_dir.mkdir(parents=True)
    home.heartbeat_path.write_text(json.dumps({"pid": os.getpid(), "time": time.time()}), encoding="utf-8")
    with pytest.raises(ConfigError, match=f"pid {os.getpid()}"):
        make(home, child, "forever").run()
    assert not started_pids(AuditLog(home.audit_path))


def clean_environment() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("AI_TRADER_")}


def test_sigterm_stops_the_supervisor_subprocess_and_its_child(home: Home, child: Path, tmp_path: Path) -> None:
    home.settings_dir.mkdir(parents=True)
    settings = {
        "command": f"{{python}} {shlex.quote(str(child))} forever",
        "heartbeat_timeout_seconds": 1.0,
        "startup_grace_seconds": 2.0,
        "backoff_initial_seconds": 0.2,
        "stop_timeout_seconds": 2.0,
    }
    (home.settings_dir / "watchdog.json").write_text(json.dumps(settings), encoding="utf-8")
    log = tmp_path / "watchdog.err"
    with open(log, "wb") as stderr:
        watchdog = subprocess.Popen(
            [sys.executable, str(RESTART_SCRIPT), "--home", str(home.root)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=clean_environment(),
            start_new_session=True,
        )
    audit = AuditLog(home.audit_path)
    try:
        pid = wait_for(lambda: beating_pid(home), 10, "the child's heartbeat")
        os.kill(watchdog.pid, signal.SIGTERM)
        assert watchdog.wait(10) == 0
        assert not alive(pid)
        assert actions(audit, "stopped")[0]["reason"] == "SIGTERM"
        assert actions(audit, "child_exited")[0]["reason"] == "stopped"
        assert not (home.run_dir / "watchdog.lock").read_text()  # the pid is cleared on the way out
    finally:
        if watchdog.poll() is None:
            os.killpg(watchdog.pid, signal.SIGKILL)
            watchdog.wait()
        kill_groups(started_pids(audit))
    assert "子进程已启动" in log.read_text(encoding="utf-8")


def test_cli_command_option_and_alerts_through_the_monitor(home: Home, child: Path) -> None:
    argv = [
        sys.executable,
        str(RESTART_SCRIPT),
        "--home",
        str(home.root),
        "--command",
        "{python}",
        str(child),
        "exit",
        "0.1",
        "2",
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=clean_environment())
    audit = AuditLog(home.audit_path)
    kill_groups(started_pids(audit))
    assert result.returncode == 2, result.stderr
    assert actions(audit, "child_started")[0]["command"] == [sys.executable, str(child), "exit", "0.1", "2"]
    alerts = [event for event in audit.read() if event["event"] == "alert"]
    assert [event["severity"] for event in alerts] == ["CRITICAL"] and "人工" in alerts[0]["message"]


def test_cli_rejects_bad_settings_with_one_message_and_exit_2(home: Home, capsys: pytest.CaptureFixture[str]) -> None:
    home.settings_dir.mkdir(parents=True)
    (home.settings_dir / "watchdog.json").write_text(json.dumps({"max_crash": 3}), encoding="utf-8")
    assert restart_script.main(["--home", str(home.root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("错误 / error:") and "watchdog.max_crash" in err and err.count("\n") == 1
    assert restart_script.main(["--home", str(home.root), "--product", "r1"]) == 2


@dataclass
class FakeNow:
    """A settable China-time clock for the calendar."""

    value: datetime

    def __call__(self) -> datetime:
        return self.value


def test_calendar_stops_the_child_at_the_window_end_and_waits_for_the_next(home: Home, child: Path) -> None:
    now = FakeNow(china("2024-01-10 10:00"))  # a Wednesday, inside rb's day block
    settings = replace(FAST, follow_calendar=True, lead_minutes=10)
    supervisor = make(home, child, "forever", settings=settings, now=now)
    with supervising(supervisor):
        first = wait_for(lambda: beating_pid(home), 5, "the first heartbeat")
        now.value = china("2024-01-10 15:11")
        wait_for(lambda: actions(supervisor.audit, "waiting"), 5, "the wait for the night window")
        wait_for(lambda: not alive(first), 2, "the child stopped at the window end")
        assert actions(supervisor.audit, "waiting")[0]["next_start"] == "2024-01-10T20:50:00+08:00"
        assert len(started_pids(supervisor.audit)) == 1
        now.value = china("2024-01-10 20:50")
        wait_for(lambda: (pid := beating_pid(home)) != first and pid, 5, "the child of the night window")
    exited = actions(supervisor.audit, "child_exited")[0]
    assert exited["reason"] == "window_end" and exited["returncode"] == -signal.SIGTERM
    assert not actions(supervisor.audit, "restart_scheduled")  # a stop at the window end is not a crash


def test_calendar_child_exiting_0_waits_for_the_next_window(home: Home, child: Path) -> None:
    now = FakeNow(china("2024-01-12 21:30"))  # Friday night, inside rb's night block
    settings = replace(FAST, follow_calendar=True, lead_minutes=10)
    supervisor = make(home, child, "exit", "0.1", "0", settings=settings, now=now)
    with supervising(supervisor) as running:
        waiting = wait_for(lambda: actions(supervisor.audit, "waiting"), 5, "the wait for Monday")
        assert waiting[0]["next_start"] == "2024-01-15T08:50:00+08:00"
        assert running.thread.is_alive() and len(started_pids(supervisor.audit)) == 1
    assert actions(supervisor.audit, "child_exited")[0]["returncode"] == 0
    assert not actions(supervisor.audit, "restart_scheduled")


def test_import_is_inert_and_loads_no_trading_modules(tmp_path: Path) -> None:
    code = (
        "import sys, restart_script, signal; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('vnpy', 'tensorflow', 'monitor', 'ml_model', "
        "'data_collector', 'bar_store', 'predictive_trading_strategy'))); "
        "print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)"
    )
    result = run_python(code, tmp_path / "home")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[]", "True"]
    assert not (tmp_path / "home").exists()


# --- pure rules ---


def test_backoff_doubles_from_initial_and_is_capped() -> None:
    assert [backoff_delay(n, 1.0, 300.0) for n in range(1, 12)] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    assert backoff_delay(10_000, 1.0, 300.0) == 300.0


def test_crash_history_counts_the_window_and_resets_after_a_stable_run() -> None:
    history = CrashHistory(replace(FAST, max_crashes=3, crash_window_seconds=10.0))
    assert [history.record(now, 0.5) for now in (0.0, 1.0)] == [1, 2]
    assert (history.streak, history.delay(), history.gave_up) == (2, 0.4, False)
    assert history.record(12.0, 0.5) == 1  # the first two fell out of the window
    assert history.streak == 3 and history.delay() == 0.8
    history.record(30.0, 15.0)  # the child ran longer than the window: the back-off starts again
    assert (history.streak, history.delay()) == (1, 0.2)
    assert history.record(31.0, 0.1) == 2 and history.record(32.0, 0.1) == 3 and history.gave_up


def test_outage_backs_off_alerts_once_after_its_time_and_is_never_a_crash() -> None:
    outage = Outage(replace(FAST, backoff_initial_seconds=1.0, backoff_max_seconds=4.0, outage_alert_seconds=10.0))
    assert not outage.alert_due(100.0) and outage.lasted(100.0) == 0.0
    assert [outage.record(at) for at in (0.0, 2.0, 5.0, 10.0, 15.0)] == [1.0, 2.0, 4.0, 4.0, 4.0]
    assert outage.since == 0.0 and outage.lasted(9.0) == 9.0
    assert not outage.alert_due(9.9) and outage.alert_due(10.0)
    outage.alerted = True
    assert not outage.alert_due(60.0)


def test_a_child_is_healthy_past_its_startup_grace_with_a_fresh_beat() -> None:
    assert healthy(0.5, 2.0, FAST) and healthy(1.0, 2.0, FAST)
    assert not healthy(0.5, 1.9, FAST)  # still inside the start-up grace: maybe still connecting
    assert not healthy(None, 30.0, FAST) and not healthy(1.5, 30.0, FAST)


def test_hung_reason_allows_the_startup_grace_then_the_heartbeat_timeout() -> None:
    assert hung_reason(None, 1.9, FAST) is None
    assert "no heartbeat" in (hung_reason(None, 2.1, FAST) or "")
    assert hung_reason(0.9, 30.0, FAST) is None
    assert "1.5 s old" in (hung_reason(1.5, 30.0, FAST) or "")


def test_exit_codes_are_described_chinese_first() -> None:
    assert describe_exit(0).startswith("主动停止")
    assert "人工" in describe_exit(2)
    assert describe_exit(-9) == "被信号 SIGKILL 终止 / killed by SIGKILL"
    assert "crashed" in describe_exit(7)


def test_command_template_uses_this_interpreter_and_splits_like_a_shell() -> None:
    assert resolve_command("{python} ai_trading_system.py trade --gateway ctp --no-ui") == [
        sys.executable,
        "ai_trading_system.py",
        "trade",
        "--gateway",
        "ctp",
        "--no-ui",
    ]
    assert resolve_command("x", ["{python}", "a b.py", "--flag"]) == [sys.executable, "a b.py", "--flag"]
    assert resolve_command("x", ["{python} 'a b.py' --flag"]) == [sys.executable, "a b.py", "--flag"]
    with pytest.raises(ConfigError, match="watchdog.command"):
        resolve_command("python 'unclosed")


def test_heartbeat_reader_ignores_missing_and_malformed_files(tmp_path: Path) -> None:
    path = tmp_path / "beat"
    assert read_heartbeat(path) is None
    for text in ("{not json", "[1]", '{"pid": "12"}', '{"pid": true}'):
        path.write_text(text, encoding="utf-8")
        assert read_heartbeat(path) is None
    path.write_text('{"pid": 12, "time": 1.0}', encoding="utf-8")
    beat = read_heartbeat(path)
    assert beat is not None and beat.pid == 12 and abs(beat.mtime - path.stat().st_mtime) < 1e-6


# --- calendar windows (pure functions of now) ---


@pytest.mark.parametrize(
    ("product", "now", "expected"),
    [
        ("rb", "2024-01-10 08:50", window("2024-01-10 08:50", "2024-01-10 15:10")),  # Wednesday's day block
        ("rb", "2024-01-10 12:00", window("2024-01-10 08:50", "2024-01-10 15:10")),  # the lunch break is inside
        ("rb", "2024-01-10 15:09", window("2024-01-10 08:50", "2024-01-10 15:10")),
        ("rb", "2024-01-10 15:10", None),
        ("rb", "2024-01-10 08:49", None),
        ("rb", "2024-01-12 22:00", window("2024-01-12 20:50", "2024-01-12 23:10")),  # Friday night trades
        ("cu", "2024-01-10 20:50", window("2024-01-10 20:50", "2024-01-11 01:10")),  # a night across midnight
        ("cu", "2024-01-11 01:05", window("2024-01-10 20:50", "2024-01-11 01:10")),
        ("cu", "2024-01-13 00:30", window("2024-01-12 20:50", "2024-01-13 01:10")),  # Friday's night, on Saturday
        ("rb", "2024-01-13 10:00", None),  # Saturday
        ("rb", "2024-01-14 21:30", None),  # no Sunday night
        ("IF", "2024-01-10 09:20", window("2024-01-10 09:20", "2024-01-10 15:10")),  # index futures: 09:30 open
    ],
)
def test_window_at(product: str, now: str, expected: RunWindow | None) -> None:
    assert window_at(china(now), product, 10) == expected


@pytest.mark.parametrize(
    ("product", "now", "start"),
    [
        ("rb", "2024-01-10 15:30", "2024-01-10 20:50"),  # Wednesday afternoon: the night block next
        ("rb", "2024-01-12 23:30", "2024-01-15 08:50"),  # after Friday's night: Monday morning
        ("rb", "2024-01-13 10:00", "2024-01-15 08:50"),  # Saturday
        ("rb", "2024-01-14 21:30", "2024-01-15 08:50"),  # Sunday evening
        ("cu", "2024-01-13 02:00", "2024-01-15 08:50"),
        ("au", "2024-01-11 02:45", "2024-01-11 08:50"),  # au's night ends 02:30 (+10): a separate block
        ("rb", "2024-01-10 12:00", "2024-01-10 08:50"),  # inside a window: that window
    ],
)
def test_next_window_start(product: str, now: str, start: str) -> None:
    assert next_window(china(now), product, 10).start == china(start)


def test_the_watchdog_sleeps_through_a_holiday_and_the_night_before_it() -> None:
    assert window_at(china("2024-10-01 10:00"), "rb", 10) is None
    assert window_at(china("2024-09-30 21:30"), "rb", 10) is None
    assert window_at(china("2024-09-30 14:00"), "rb", 10) == window("2024-09-30 08:50", "2024-09-30 15:10")
    assert next_window(china("2024-09-30 15:30"), "rb", 10).start == china("2024-10-08 08:50")
    assert next_window(china("2024-02-08 15:30"), "cu", 10).start == china("2024-02-19 08:50")


def test_windows_cover_every_session_minute_and_lead_the_next_session_start() -> None:
    monday = china("2024-01-08 00:00")
    for product in ("rb", "cu", "au", "IF"):
        for step in range(0, 7 * 24 * 60, 5):
            now = monday + timedelta(minutes=step)
            if is_trading_time(now, product):
                assert window_at(now, product, 10) is not None, (product, now)
        for step in range(0, 7 * 24 * 60, 173):
            now = monday + timedelta(minutes=step)
            if window_at(now, product, 0) is None:
                assert next_window(now, product, 0).start == next_session_start(now, product), (product, now)


def test_windows_merge_when_the_lead_closes_the_gap() -> None:
    assert window_at(china("2024-01-10 18:00"), "rb", 180) == window("2024-01-10 06:00", "2024-01-11 02:00")
