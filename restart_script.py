"""The watchdog: start the trading process as a child, watch its exit code and heartbeat, restart it with back-off.

Exit codes of the child: 2 (configuration) is never restarted; 3 (transient: the front is unreachable) is an outage,
retried with its own capped back-off inside the trading sessions for as long as it lasts and never counted as a crash;
anything else is a crash, and max_crashes of them within crash_window_seconds stop supervision.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from config import (
    CHINA_TZ,
    EXIT_BAD_INPUT,
    EXIT_BUG,
    EXIT_OK,
    EXIT_TRANSIENT,
    HOME_ENV,
    PROJECT_DIR,
    AppError,
    AppSettings,
    AuditLog,
    ConfigError,
    Home,
    WatchdogSettings,
    install_redaction,
    load_secrets,
    resolve_home,
    settings_for,
)
from trading_calendar import MAX_CLOSURE_DAYS, sessions_held

logger = logging.getLogger("restart_script")  # not __name__: run as a script, that would be "__main__"

LOCK_FILENAME: str = "watchdog.lock"
OUTPUT_FILENAME: str = "trading.out"  # the child's stdout and stderr, appended
DEFAULT_PRODUCT: str = "rb"
DEFAULT_POLL_SECONDS: float = 1.0
BLOCK_GAP: timedelta = timedelta(hours=3)  # sessions closer than this form one block (09:00-15:00 with its breaks)
EXIT_MEANINGS: dict[int, str] = {
    EXIT_OK: "主动停止 / stopped on purpose",
    EXIT_BUG: "程序错误 / a bug",
    EXIT_BAD_INPUT: "配置错误，需要人工处理 / configuration error, a human must act",
    EXIT_TRANSIENT: "暂时性故障 / a transient failure",
}

Alert = Callable[[str, str], None]


class WatchdogLocked(ConfigError):
    """Another watchdog already supervises this home."""


# --- calendar: run windows around trading sessions (pure functions of `now`) ---------------------------------


@dataclass(frozen=True)
class RunWindow:
    """A span [start, end) in which the trading process should run (China time)."""

    start: datetime
    end: datetime

    def __contains__(self, when: object) -> bool:
        return isinstance(when, datetime) and self.start <= when < self.end


def session_spans(product: str, first_day: date, days: int) -> list[RunWindow]:
    """The product's concrete sessions opening in `days` calendar days from `first_day`, in order: like
    is_trading_time, none on weekends and exchange holidays, no night before a holiday (`sessions_held`)."""
    spans: list[RunWindow] = []
    for offset in range(days):
        day = first_day + timedelta(days=offset)
        for start, end in sessions_held(product, day):
            opens = datetime.combine(day, start, tzinfo=CHINA_TZ)
            closes = datetime.combine(day + timedelta(days=1) if end <= start else day, end, tzinfo=CHINA_TZ)
            spans.append(RunWindow(opens, closes))
    return sorted(spans, key=lambda span: span.start)


def merge_spans(spans: Sequence[RunWindow], gap: timedelta) -> list[RunWindow]:
    """Join sorted spans whose gap is at most `gap` into blocks."""
    merged: list[RunWindow] = []
    for span in spans:
        if merged and span.start - merged[-1].end <= gap:
            merged[-1] = RunWindow(merged[-1].start, max(merged[-1].end, span.end))
        else:
            merged.append(span)
    return merged


def run_windows(now: datetime, product: str, lead_minutes: int) -> list[RunWindow]:
    """Run windows near `now` (from two days before to past the longest holiday after): each session block widened
    by the lead."""
    local = now.astimezone(CHINA_TZ)
    blocks = merge_spans(session_spans(product, local.date() - timedelta(days=2), MAX_CLOSURE_DAYS + 11), BLOCK_GAP)
    lead = timedelta(minutes=lead_minutes)
    return merge_spans([RunWindow(block.start - lead, block.end + lead) for block in blocks], timedelta(0))


def window_at(now: datetime, product: str, lead_minutes: int) -> RunWindow | None:
    """The run window containing `now`, or None outside all windows."""
    local = now.astimezone(CHINA_TZ)
    return next((window for window in run_windows(local, product, lead_minutes) if local in window), None)


def next_window(now: datetime, product: str, lead_minutes: int) -> RunWindow:
    """The run window containing `now`, else the first one starting after it."""
    local = now.astimezone(CHINA_TZ)
    for window in run_windows(local, product, lead_minutes):
        if local < window.end:
            return window
    raise ConfigError(f"品种 {product} 没有交易时段 / product has no sessions")  # pragma: no cover - a week has one


# --- pure rules: exit codes, back-off, crash counting, heartbeat ---------------------------------------------


def describe_exit(returncode: int) -> str:
    """What a child's exit code means, Chinese first."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"被信号 {name} 终止 / killed by {name}"
    return EXIT_MEANINGS.get(returncode, f"异常退出（{returncode}）/ crashed")


def backoff_delay(streak: int, initial: float, maximum: float) -> float:
    """Seconds to wait before restart number `streak` (1, 2, ...): `initial` doubling, capped at `maximum`."""
    return min(initial * 2.0 ** min(max(streak - 1, 0), 62), maximum)


@dataclass
class CrashHistory:
    """Crashes inside the sliding window and the back-off streak; a child that ran crash_window_seconds resets it."""

    settings: WatchdogSettings
    times: deque[float] = field(default_factory=deque)
    streak: int = 0

    def record(self, now: float, runtime: float) -> int:
        """Note a crash at monotonic `now` of a child that ran `runtime` seconds; the crashes inside the window."""
        window = self.settings.crash_window_seconds
        self.streak = 1 if runtime >= window else self.streak + 1
        self.times.append(now)
        while self.times and now - self.times[0] > window:
            self.times.popleft()
        return len(self.times)

    @property
    def gave_up(self) -> bool:
        return len(self.times) >= self.settings.max_crashes

    def delay(self) -> float:
        return backoff_delay(self.streak, self.settings.backoff_initial_seconds, self.settings.backoff_max_seconds)


@dataclass
class Outage:
    """Transient exits (exit 3) in a row: when the first came, the back-off streak, whether its alert went out."""

    settings: WatchdogSettings
    since: float | None = None  # monotonic time of the first exit 3; None: no outage
    streak: int = 0
    alerted: bool = False

    def record(self, now: float) -> float:
        """Note an exit 3 at monotonic `now`; the seconds to wait before the next start."""
        if self.since is None:
            self.since = now
        self.streak += 1
        return backoff_delay(self.streak, self.settings.backoff_initial_seconds, self.settings.backoff_max_seconds)

    def lasted(self, now: float) -> float:
        """Seconds since the first exit 3 (0 without an outage)."""
        return 0.0 if self.since is None else now - self.since

    def alert_due(self, now: float) -> bool:
        """Whether the outage has lasted outage_alert_seconds and its one alert has not gone out yet."""
        return self.since is not None and not self.alerted and self.lasted(now) >= self.settings.outage_alert_seconds


@dataclass(frozen=True)
class Heartbeat:
    """The trading process's last beat: the pid it wrote and when the file was replaced (epoch seconds)."""

    pid: int
    mtime: float


def read_heartbeat(path: Path) -> Heartbeat | None:
    """The heartbeat file's pid and mtime, or None when it is missing or malformed."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        with os.fdopen(descriptor, "rb") as handle:
            mtime = os.fstat(handle.fileno()).st_mtime
            data = json.loads(handle.read())
    except (OSError, ValueError):
        return None
    pid = data.get("pid") if isinstance(data, dict) else None
    if not isinstance(pid, int) or isinstance(pid, bool):
        return None
    return Heartbeat(pid, mtime)


def hung_reason(beat_age: float | None, running_for: float, settings: WatchdogSettings) -> str | None:
    """Why a running child counts as hung (no own beat after the grace, or a beat too old), or None."""
    if beat_age is None:
        if running_for > settings.startup_grace_seconds:
            return f"启动 {running_for:.1f} 秒后仍无心跳 / no heartbeat {running_for:.1f} s after start"
        return None
    if beat_age > settings.heartbeat_timeout_seconds:
        return f"心跳已 {beat_age:.1f} 秒未更新 / heartbeat {beat_age:.1f} s old"
    return None


def healthy(beat_age: float | None, running_for: float, settings: WatchdogSettings) -> bool:
    """Whether a running child trades again: past its start-up grace (a failed connect exits 3 well within it) and
    beating on time."""
    fresh = beat_age is not None and beat_age <= settings.heartbeat_timeout_seconds
    return fresh and running_for >= settings.startup_grace_seconds


def resolve_command(template: str, override: Sequence[str] | None = None) -> list[str]:
    """The child's argv: `override`, else the settings string split like a shell; `{python}` is this interpreter."""
    if override:
        parts = list(override)
        if len(parts) == 1:
            template, parts = parts[0], []
    else:
        parts = []
    if not parts:
        try:
            parts = shlex.split(template)
        except ValueError as exc:
            raise ConfigError(f"watchdog.command 无法解析：{exc} / cannot split the command") from None
    if not parts:
        raise ConfigError("watchdog.command 不能为空 / command is empty")
    return [part.replace("{python}", sys.executable) for part in parts]


def china_now() -> datetime:
    """The current time in China."""
    return datetime.now(CHINA_TZ)


def _nothing() -> None:
    """Close nothing."""


def log_alert(message: str, severity: str) -> None:
    """The alert used without e-mail: a log line."""
    level = {"CRITICAL": logging.CRITICAL, "INFO": logging.INFO}.get(severity, logging.WARNING)
    logger.log(level, "告警 / alert [%s]: %s", severity, message)


# --- single instance ---------------------------------------------------------------------------------------


@contextmanager
def hold_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (holding our pid) for the block, or raise WatchdogLocked naming the holder."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # never truncate before holding the lock
    except OSError as exc:
        raise ConfigError(f"无法打开锁文件 {path}：{exc.strerror} / cannot open the lock file") from None
    locked = False
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode("ascii", "replace").strip() or "未知 / unknown"
            raise WatchdogLocked(
                f"另一个看门狗（pid {holder}）正在管理此主目录，锁文件 {path}；请先停止它 / "
                f"another watchdog (pid {holder}) already supervises this home"
            ) from None
        except OSError as exc:
            raise ConfigError(f"无法锁定 {path}：{exc.strerror} / cannot lock the lock file") from None
        locked = True
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode("ascii"), 0)
        yield
    finally:
        if locked:
            os.ftruncate(descriptor, 0)
        os.close(descriptor)


def _process_group(pid: int) -> int | None:
    """The process group of a live pid, or None."""
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _alive(pid: int) -> bool:
    """Whether a process with this pid exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- the supervisor ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChildExit:
    """How one child run ended: its exit code, how long it ran and why (exited, hung, window_end, stopped)."""

    pid: int
    returncode: int
    runtime: float
    reason: str


@dataclass
class Supervisor:
    """Starts the trading command as a child, restarts crashes with back-off, never a configuration error."""

    settings: WatchdogSettings
    command: list[str]
    home: Home
    audit: AuditLog
    alert: Alert = log_alert
    product: str = DEFAULT_PRODUCT
    cwd: Path = PROJECT_DIR
    environ: Mapping[str, str] | None = None  # the child's base environment; None: this process's
    poll_seconds: float = DEFAULT_POLL_SECONDS
    clock: Callable[[], float] = time.monotonic
    now: Callable[[], datetime] = china_now
    sleep: Callable[[float], None] = time.sleep
    crashes: CrashHistory = field(init=False)
    outage: Outage = field(init=False)
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _stop_reason: str | None = field(default=None, init=False, repr=False)
    _resume_after: datetime | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.crashes = CrashHistory(self.settings)
        self.outage = Outage(self.settings)

    @property
    def child_pid(self) -> int | None:
        """The pid of the running child, or None."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def request_stop(self, reason: str = "request") -> None:
        """Ask the loop to stop the child gracefully and end (safe from a signal handler or another thread)."""
        self._stop_reason = self._stop_reason or reason

    def run(self) -> int:
        """Hold the home's lock and supervise until stopped, a configuration error or giving up; the exit code."""
        lock_path = self.home.run_dir / LOCK_FILENAME
        try:
            with hold_lock(lock_path):
                self._record(
                    "watchdog",
                    "lock_acquired",
                    logging.INFO,
                    f"已获得看门狗锁 {lock_path} / watchdog lock held",
                    lock=str(lock_path),
                )
                self._refuse_live_trader()
                try:
                    return self._supervise()
                finally:
                    self._stop_child("watchdog exiting")
        except WatchdogLocked as exc:
            self.audit.write("watchdog", action="lock_busy", message=str(exc))
            raise

    def _supervise(self) -> int:
        """The main loop: wait for a window (with the calendar), run a child, decide what its end means."""
        while self._stop_reason is None:
            window = self._wait_for_window() if self.settings.follow_calendar else None
            if self._stop_reason is not None:
                break
            try:
                outcome = self._run_child(window)
            except OSError as exc:
                return self._config_error(f"无法启动子进程 {self.command!r}：{exc} / cannot start the child")
            code = self._decide(outcome, window)
            if code is not None:
                self._record(
                    "watchdog", "stopped", logging.INFO, f"看门狗结束，退出码 {code} / watchdog ends", exit_code=code
                )
                return code
        self._record(
            "watchdog",
            "stopped",
            logging.INFO,
            f"收到停止请求（{self._stop_reason}），看门狗结束 / stop requested, watchdog ends",
            exit_code=EXIT_OK,
            reason=self._stop_reason,
        )
        return EXIT_OK

    def _decide(self, outcome: ChildExit, window: RunWindow | None) -> int | None:
        """Log a child's end; the supervisor's exit code, or None to go on (after any back-off)."""
        meaning = describe_exit(outcome.returncode)
        expected = outcome.reason in ("stopped", "window_end")
        transient = outcome.reason == "exited" and outcome.returncode == EXIT_TRANSIENT
        level = (
            logging.INFO
            if expected or outcome.returncode == EXIT_OK
            else logging.WARNING
            if transient
            else logging.ERROR
        )
        message = (
            f"子进程 {outcome.pid} 退出，退出码 {outcome.returncode}（{meaning}），"
            f"运行 {outcome.runtime:.1f} 秒 / child exited ({outcome.reason})"
        )
        self._record(
            "restart",
            "child_exited",
            level,
            message,
            child_pid=outcome.pid,
            returncode=outcome.returncode,
            meaning=meaning,
            runtime=round(outcome.runtime, 3),
            reason=outcome.reason,
        )
        if expected:
            return None
        if outcome.reason == "exited" and outcome.returncode == EXIT_OK:
            if window is None:
                return EXIT_OK
            self._resume_after = window.end  # stopped on purpose inside a window: wait for the next one
            return None
        if outcome.reason == "exited" and outcome.returncode == EXIT_BAD_INPUT:
            return self._config_error(
                f"子进程 {outcome.pid} 因配置错误退出（退出码 2），不再重启 / "
                "the child exited with a configuration error and will not be restarted"
            )
        if transient:
            self._after_transient()
            return None
        return self._after_crash(outcome)

    def _after_transient(self) -> None:
        """Exit 3 is an outage, not a crash: restart after the outage's own capped back-off for as long as it lasts;
        outside the trading sessions (the calendar's run windows) the next try waits for the next session."""
        now = self.clock()
        delay = self.outage.record(now)
        lasted = self.outage.lasted(now)
        message = (
            f"子进程暂时性故障（退出码 3，如前置不可达），{delay:g} 秒后重试，已持续 {lasted:.0f} 秒，不计为崩溃 / "
            f"transient failure, retrying in {delay:g} s (not a crash)"
        )
        self._record(
            "restart",
            "transient_retry",
            logging.WARNING,
            message,
            delay=delay,
            streak=self.outage.streak,
            outage_seconds=round(lasted, 3),
        )
        self._pause(delay)
        if not self.settings.follow_calendar:  # with the calendar the main loop waits for the run window itself
            self._wait_for_window()

    def _check_outage(self) -> None:
        """Send the outage's one alert once it has lasted outage_alert_seconds."""
        now = self.clock()
        if not self.outage.alert_due(now):
            return
        self.outage.alerted = True
        lasted = self.outage.lasted(now)
        message = (
            f"交易进程已 {lasted:.0f} 秒无法连接（连续 {self.outage.streak} 次退出码 3），看门狗继续重试 / "
            f"the trading process has not connected for {lasted:.0f} s; the watchdog keeps retrying"
        )
        self._record(
            "watchdog",
            "outage",
            logging.CRITICAL,
            message,
            outage_seconds=round(lasted, 3),
            attempts=self.outage.streak,
        )
        self.alert(message, "CRITICAL")

    def _recovered(self, pid: int) -> None:
        """End the outage: a child runs healthily again; the "recovered" alert follows an outage alert."""
        outage, self.outage = self.outage, Outage(self.settings)
        lasted = outage.lasted(self.clock())
        message = (
            f"交易已恢复：子进程 {pid} 运行正常，距首次连接失败 {lasted:.0f} 秒 / "
            f"trading resumed, {lasted:.0f} s after the first failed connect"
        )
        self._record(
            "watchdog",
            "recovered",
            logging.INFO,
            message,
            child_pid=pid,
            outage_seconds=round(lasted, 3),
            attempts=outage.streak,
            alerted=outage.alerted,
        )
        if outage.alerted:
            self.alert(message, "INFO")

    def _after_crash(self, outcome: ChildExit) -> int | None:
        """Count a crash; give up past max_crashes, else wait the back-off."""
        count = self.crashes.record(self.clock(), outcome.runtime)
        window = self.settings.crash_window_seconds
        if self.crashes.gave_up:
            message = (
                f"{window:g} 秒内崩溃 {count} 次，放弃重启，需要人工处理 / "
                f"{count} crashes within {window:g} s: giving up, a human must act"
            )
            self._record("watchdog", "gave_up", logging.CRITICAL, message, crashes=count, window_seconds=window)
            self.alert(message, "CRITICAL")
            return EXIT_BUG
        delay = self.crashes.delay()
        message = (
            f"子进程崩溃（{describe_exit(outcome.returncode)}），{delay:g} 秒后重启"
            f"（{window:g} 秒内第 {count} 次）/ child crashed, restarting in {delay:g} s"
        )
        self._record(
            "restart",
            "restart_scheduled",
            logging.WARNING,
            message,
            delay=delay,
            crashes=count,
            streak=self.crashes.streak,
        )
        self.alert(message, "WARNING")
        self._pause(delay)
        return None

    def _config_error(self, message: str) -> int:
        """Never restart: log, audit and alert CRITICAL; exit 2."""
        self._record("watchdog", "config_error", logging.CRITICAL, message)
        self.alert(f"{message}；需要人工处理 / a human must act", "CRITICAL")
        return EXIT_BAD_INPUT

    # --- one child ---

    def _run_child(self, window: RunWindow | None) -> ChildExit:
        """Start one child and watch it until it exits, hangs, its window ends or a stop is requested."""
        process = self._start_child()
        started = self.clock()
        while True:
            returncode = process.poll()
            if returncode is not None:
                self._reap_group(process.pid)
                return ChildExit(process.pid, returncode, self.clock() - started, "exited")
            if self._stop_reason is not None:
                return self._end(process, started, "stopped")
            if window is not None and self.now() >= window.end:
                self._record(
                    "watchdog",
                    "window_end",
                    logging.INFO,
                    f"运行时段 {window.end:%Y-%m-%d %H:%M} 结束，停止子进程 / run window over, stopping the child",
                )
                return self._end(process, started, "window_end")
            running_for = self.clock() - started
            age = self._beat_age(process)
            reason = hung_reason(age, running_for, self.settings)
            if reason is not None:
                self._record(
                    "restart",
                    "hung_killed",
                    logging.ERROR,
                    f"子进程 {process.pid} 无响应（{reason}），终止它 / hung child, killing it",
                    child_pid=process.pid,
                    detail=reason,
                )
                return self._end(process, started, "hung")
            if self.outage.since is not None and healthy(age, running_for, self.settings):
                self._recovered(process.pid)
            self._pause(self.poll_seconds)

    def _start_child(self) -> subprocess.Popen[bytes]:
        """Remove a stale heartbeat and start the command in its own session, output appended to trading.out."""
        run_dir = self.home.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self.home.heartbeat_path.unlink(missing_ok=True)
        environ = dict(os.environ if self.environ is None else self.environ)
        environ.update({HOME_ENV: str(self.home.root), "PYTHONUNBUFFERED": "1"})
        with open(run_dir / OUTPUT_FILENAME, "ab") as output:
            output.write(f"--- {self.now():%Y-%m-%d %H:%M:%S} watchdog starts {self.command!r}\n".encode())
            output.flush()
            process = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env=environ,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._process = process
        self._record(
            "restart",
            "child_started",
            logging.INFO,
            f"子进程已启动，pid {process.pid} / child started",
            child_pid=process.pid,
            command=self.command,
        )
        return process

    def _beat_age(self, process: subprocess.Popen[bytes]) -> float | None:
        """Seconds since the child's own last heartbeat, or None before its first."""
        beat = read_heartbeat(self.home.heartbeat_path)
        ours = beat is not None and (beat.pid == process.pid or _process_group(beat.pid) == process.pid)
        return time.time() - beat.mtime if beat is not None and ours else None

    def _end(self, process: subprocess.Popen[bytes], started: float, reason: str) -> ChildExit:
        """Stop the child gracefully and report how it ended."""
        returncode = self._terminate(process)
        return ChildExit(process.pid, returncode, self.clock() - started, reason)

    def _terminate(self, process: subprocess.Popen[bytes]) -> int:
        """SIGTERM the child's process group, SIGKILL after stop_timeout_seconds; its exit code."""
        if process.poll() is None:
            self._signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(self.settings.stop_timeout_seconds)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "子进程 %s 未在 %g 秒内退出，发送 SIGKILL / child ignored SIGTERM, killing it",
                    process.pid,
                    self.settings.stop_timeout_seconds,
                )
                self._signal_group(process.pid, signal.SIGKILL)
                process.wait()
        self._reap_group(process.pid)
        return int(process.returncode)

    def _stop_child(self, reason: str) -> None:
        """Stop the current child, if any, before the supervisor ends (a child must never outlive its watchdog)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            logger.info("停止子进程 %s（%s）/ stopping the child", process.pid, reason)
            self._terminate(process)

    @staticmethod
    def _signal_group(pgid: int, signum: signal.Signals) -> None:
        """Send a signal to a process group, ignoring one that is gone."""
        try:
            os.killpg(pgid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def _reap_group(self, pgid: int) -> None:
        """Kill what is left of an ended child's process group (its own children), so no stray trader survives."""
        self._signal_group(pgid, signal.SIGKILL)

    # --- waiting ---

    def _pause(self, seconds: float) -> None:
        """Sleep `seconds` in slices of poll_seconds (an outage's alert goes out on time), ending early on a stop."""
        deadline = self.clock() + seconds
        while self._stop_reason is None:
            self._check_outage()
            left = deadline - self.clock()
            if left <= 0:
                return
            self.sleep(min(left, self.poll_seconds))

    def _wait_for_window(self) -> RunWindow | None:
        """With the calendar: the run window to start in, waiting (logged once per target) until it opens."""
        announced: datetime | None = None
        while self._stop_reason is None:
            now = self.now()
            probe = max(now, self._resume_after) if self._resume_after is not None else now
            window = next_window(probe, self.product, self.settings.lead_minutes)
            if window.start <= now:
                self._resume_after = None
                return window
            if window.start != announced:
                announced = window.start
                self._record(
                    "watchdog",
                    "waiting",
                    logging.INFO,
                    f"不在运行时段，{window.start:%Y-%m-%d %H:%M} 启动 / outside the run windows, next start",
                    next_start=window.start.isoformat(),
                )
            self._pause(min(max((window.start - now).total_seconds(), 0.0), self.poll_seconds))
        return None

    def _refuse_live_trader(self) -> None:
        """ConfigError if a fresh heartbeat shows a trading process still running in this home (no second trader)."""
        beat = read_heartbeat(self.home.heartbeat_path)
        if beat is None or not _alive(beat.pid) or time.time() - beat.mtime > self.settings.heartbeat_timeout_seconds:
            return
        message = (
            f"主目录 {self.home.root} 中已有交易进程在运行（pid {beat.pid}，心跳新鲜）；请先停止它 / "
            "a trading process of this home is still running"
        )
        self._record("watchdog", "config_error", logging.CRITICAL, message, other_pid=beat.pid)
        raise ConfigError(message)

    def _record(self, kind: str, action: str, level: int, message: str, **fields_: Any) -> None:
        """Log a decision and write it to the audit log."""
        logger.log(level, message)
        self.audit.write(kind, action=action, message=message, **fields_)


# --- wiring ------------------------------------------------------------------------------------------------


def build_alert(settings: AppSettings, home: Home, audit: AuditLog) -> tuple[Alert, Callable[[], None]]:
    """Alerts through monitor.AlertMailer (logged, audited, mailed when email.host is set), and how to close it."""
    try:
        from monitor import AlertMailer
    except ImportError as exc:
        logger.warning("无法加载 monitor（%s），告警只写日志 / monitor unavailable, alerts are only logged", exc)
        return log_alert, _nothing
    password = load_secrets(home).get("smtp_password") if settings.email.host else ""
    mailer = AlertMailer(settings.email, password, settings.monitor.alert_throttle_seconds, audit)
    mailer.start()

    def send(message: str, severity: str) -> None:
        key = f"watchdog:{severity}" if severity == "WARNING" else None  # repeated crash warnings are merged
        mailer.send_alert(message, severity, key=key)

    return send, mailer.stop


def build_parser() -> argparse.ArgumentParser:
    """The command line of the watchdog."""
    parser = argparse.ArgumentParser(
        prog="restart_script.py",
        description="看门狗：启动、监视并重启交易进程 / the watchdog: start, supervise and restart the trading process",
    )
    parser.add_argument("--home", help=f"主目录 / the home folder (default: {HOME_ENV} or the project folder)")
    parser.add_argument(
        "--product", default=DEFAULT_PRODUCT, help="交易时段所用品种 / product whose sessions to follow"
    )
    parser.add_argument(
        "--follow-calendar", action="store_true", help="只在交易时段前后运行 / run only around trading sessions"
    )
    parser.add_argument(
        "--command",
        nargs=argparse.REMAINDER,
        help="子进程命令（须放在最后）/ the child command, last on the line (default: watchdog.command)",
    )
    return parser


def setup_logging() -> None:
    """Log to stderr with secrets redacted; only main() calls this."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    install_redaction()


def _check_product(product: str) -> str:
    """A product code (letters only), or ConfigError."""
    if not product.isascii() or not product.isalpha():
        raise ConfigError(f"--product 应为品种代码（如 rb），收到 {product!r} / expected a product code like rb")
    return product


def main(argv: Sequence[str] | None = None) -> int:
    """Supervise the trading process until stopped; the exit code (0 stopped, 1 gave up, 2 configuration error)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    setup_logging()
    close_alert: Callable[[], None] = _nothing
    previous: dict[signal.Signals, Any] = {}
    try:
        home = resolve_home(args.home)
        settings = settings_for(home)
        watchdog = replace(settings.watchdog, follow_calendar=True) if args.follow_calendar else settings.watchdog
        if args.command is not None and not args.command:
            raise ConfigError("--command 后需要给出命令 / --command needs a command")
        command = resolve_command(watchdog.command, args.command)
        audit = AuditLog(home.audit_path)
        alert, close_alert = build_alert(settings, home, audit)
        supervisor = Supervisor(watchdog, command, home, audit, alert, product=_check_product(args.product))
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(
                signum, lambda number, _frame: supervisor.request_stop(signal.Signals(number).name)
            )
        return supervisor.run()
    except AppError as exc:
        print(f"错误 / error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception:
        logger.exception("看门狗内部错误，请报告此问题 / internal watchdog error, please report it")
        return EXIT_BUG
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        close_alert()


if __name__ == "__main__":
    sys.exit(main())
