"""Ray as the distributed backend: independent runs as Ray tasks, their shared input in the object store once."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, TypeVar

from config import PROJECT_DIR, ConfigError, TransientError

LOCAL = "local"
RAY = "ray"
BACKENDS: tuple[str, ...] = (LOCAL, RAY)
# a task whose worker process or machine dies is run again this many times; a run's own exception is not retried
RETRIES = 3
# what a cluster's workers do not need of the project folder (the code travels as Ray's working_dir)
UPLOAD_EXCLUDES: list[str] = [".git", ".venv", "tests", "bench", "docs", "models", "reports", ".vntrader", "*.pkl"]

Shared = TypeVar("Shared")
State = TypeVar("State")
Item = TypeVar("Item")
Result = TypeVar("Result")

# each worker process's prepared state of the shared objects it has seen, by object id (few: one per job)
_STATES: dict[str, Any] = {}


def require_ray() -> ModuleType:
    """The ray package, or a ConfigError (exit 2) saying how to install it."""
    try:
        return importlib.import_module("ray")
    except ImportError as error:
        raise ConfigError(
            "--backend ray 需要 Ray：pip install -r requirements-cluster.txt / Ray is not installed"
        ) from error


def connect(address: str | None = None) -> ModuleType:
    """Ray, connected: to the cluster at `address` (auto | HOST:PORT, the project's code uploaded to its workers), or
    to a Ray started on this machine on loopback; a Ray the caller already started is used as it is."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    if address:
        runtime_env = {"working_dir": str(PROJECT_DIR), "excludes": UPLOAD_EXCLUDES}
        try:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
        except ConnectionError as error:
            raise TransientError(f"连接不到 Ray 集群 {address}：{error} / cannot reach the Ray cluster") from error
    else:
        ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    return ray


def _prepared(holder: list[Any], setup: Callable[[Any], Any] | None) -> Any:
    """The shared object of `holder` (an object reference kept unresolved), prepared once per worker process."""
    import ray

    ref = holder[0]
    key = ref.hex()
    if key not in _STATES:
        _STATES.clear()  # a new job: the previous one's state is no longer needed
        shared = ray.get(ref)
        _STATES[key] = setup(shared) if setup else shared
    return _STATES[key]


def _task(function: Callable[[Any, Any], Any], setup: Callable[[Any], Any] | None, holder: list[Any], item: Any) -> Any:
    return function(_prepared(holder, setup), item)


def ray_map(
    function: Callable[[State, Item], Result],
    shared: Shared,
    items: Sequence[Item],
    done: Callable[[int, Result], None] | None = None,
    setup: Callable[[Shared], State] | None = None,
    order: Sequence[int] | None = None,
    env: dict[str, str] | None = None,
) -> list[Result]:
    """`function(setup(shared), item)` for every item as a Ray task, `shared` put in the object store once and
    prepared once per worker; results in the order of `items`, `done(i, result)` as each finishes; tasks submitted
    in `order` (default: as given), in worker processes of their own when `env` (environment variables) is given.
    On any error or Ctrl-C the remaining tasks are cancelled."""
    ray = connect()
    holder = [ray.put(shared)]  # inside a list, so the task receives the reference, not the resolved object
    remote = ray.remote(max_retries=RETRIES)(_task)
    if env:  # Ray keeps a separate pool of workers for each runtime environment
        remote = remote.options(runtime_env={"env_vars": env})
    indices = list(order) if order is not None else list(range(len(items)))
    refs = {remote.remote(function, setup, holder, items[i]): i for i in indices}
    found: dict[int, Result] = {}
    pending = list(refs)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                index = refs[ref]
                found[index] = ray.get(ref)  # a run's exception is raised here, as its own type
                if done:
                    done(index, found[index])
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    return [found[index] for index in range(len(items))]
