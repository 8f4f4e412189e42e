"""Ray start-up and the environment of clipray's Ray workers, for every command.

`init_ray(config)` connects to the cluster in `ray.address` / $RAY_ADDRESS (authenticating the
way Ray's own clients do) or starts an embedded local one (`start_local_ray`). Either way the
workers get `worker_env()`: clipray's settings for Arrow, Ray Data and known harmless warnings.

Ray 2.60 clusters enable token authentication by default. Ray's client reads the token from
$RAY_AUTH_TOKEN, else the file $RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token, but only sends it
when the process runs in token mode ($RAY_AUTH_MODE=token). `ray job submit` switches to token
mode when a token is available; `enable_token_mode_if_token` does the same for clipray, so a token
in the environment is enough (`clipray submit` and the jobs commands use it too).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipray.errors import UserError

if TYPE_CHECKING:
    from clipray.config import PipelineConfig

READER_CPU_ENV = "RAY_DATA_PARQUET_READER_CPU_COUNT"
PROGRESS_BARS_OFF_ENV = "RAY_DATA_DISABLE_PROGRESS_BARS"

AUTH_HELP = ("set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token) to the cluster's token; "
             "on the head node `ray get-auth-token` prints it")


class ClusterError(UserError, RuntimeError):
    """The cluster refused or could not be reached; the message says why and what to do."""


def token_source() -> str | None:
    """Where Ray's client will find a token, in its own order; None when there is none."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        return f"RAY_AUTH_TOKEN_PATH={path}" if Path(path).expanduser().is_file() else None
    default = Path.home() / ".ray" / "auth_token"
    return str(default) if default.is_file() else None


def enable_token_mode_if_token() -> None:
    """Token mode when a token exists and the user did not choose a mode (as `ray job submit`)."""
    if os.environ.get("RAY_AUTH_MODE") is None and token_source() is not None:
        os.environ["RAY_AUTH_MODE"] = "token"
        from ray._raylet import Config  # type: ignore[attr-defined]  # _raylet.pyi declares only the ID types

        Config.initialize("")  # Ray caches its config: re-read it so the new mode applies


def auth_message(address: str, error: BaseException) -> str:
    text = str(error)
    source = token_source()
    if source is not None and ("Forbidden" in text or "invalid" in text.lower()):
        return (f"the cluster at {address} refused the authentication token from {source}: "
                f"it is not this cluster's token; {AUTH_HELP}")
    return f"the cluster at {address} requires an authentication token and none was found; {AUTH_HELP}"


# What clipray puts in the environment of its Ray workers. Ray Data's parquet read task resizes
# Arrow's process-wide CPU pool to 32 threads by default, whatever the node's core count; on 2
# cores those threads spent 3.8 CPU-s reading 6,000 web rows (284 MB) where Arrow's own default,
# one thread per core (the value 0 keeps it), spent 1.1. Ray reads the variable when a worker
# imports its parquet reader, so it must be in the worker's environment from the start.
# Ray Data warns (a UserWarning, once per dataset execution) when a fixed actor pool gets fewer
# input blocks than it has actors: a chunk of one small file makes one read unit. clipray sizes
# its pools on purpose (clipray.data.pipeline: a fixed pool, not an autoscaling one), and an
# idle actor on a small chunk needs no action from the user. Python matches the start of the
# message; the executor runs in a Ray worker (the streaming_split coordinator), hence the
# environment variable, and in the driver for `clipray eval`/`embed` (quiet_known_warnings).
MIN_ACTORS_WARNING = "The minimum number of concurrent actors"
# DDP warns (once per worker) when a gradient's strides differ from its bucket view's. CPU 1x1
# convolutions (CLIP's ResNet tower) return weight gradients whose strides differ only in
# dimensions of size 1: the same memory layout, so nothing is wrong and nothing is slower.
DDP_STRIDES_WARNING = "Grad strides do not match bucket view strides"
WORKER_ENV_DEFAULTS = {READER_CPU_ENV: "0", "PYTHONWARNINGS": ",".join(
    f"ignore:{message}:UserWarning" for message in (MIN_ACTORS_WARNING, DDP_STRIDES_WARNING))}


def worker_env() -> dict[str, str]:
    """clipray's defaults for the Ray workers' environment that this process's environment does
    not set: a value set here already (by the user, or by a job's runtime_env) wins and is not
    repeated, which would also make Ray refuse to merge a job's runtime_env with the driver's."""
    defaults = dict(WORKER_ENV_DEFAULTS)
    if progress_bars_unwanted():
        defaults[PROGRESS_BARS_OFF_ENV] = "1"
    return {name: value for name, value in defaults.items() if name not in os.environ}


def progress_bars_unwanted() -> bool:
    """This process writes to a file (a job's log, CI) and the user has not chosen either way.

    Ray Data's progress bars in the Ray processes reach the driver as log lines, and in a file
    every redraw repeats each finished bar: 1,100 such lines in a 60-step run. Each execution's
    start and finish lines remain.
    """
    return not sys.stdout.isatty() and PROGRESS_BARS_OFF_ENV not in os.environ


# Ray Data logs a warning, once per process, that progress bars are off; clipray turns them off
# where output goes to a file (progress_bars_unwanted, build_dataset). Only this logger's warnings
# are dropped; its errors, and every other Ray Data warning, still show.
PROGRESS_LOGGER = "ray.data._internal.progress"


# Ray's core logs an error-level line whenever an actor whose constructor arguments sit in the
# object store may be restarted (ray#53727: a restart would fail if those objects were gone).
# Ray Data creates every actor-pool worker that way (the map function is `ray.put` once, and
# the operator holds it for as long as its actors live), so for clipray's preprocessing and
# embedding actors the condition cannot occur. The driver drops the lines it forwards from the
# workers that match; Ray reads the variable when `ray` is first imported.
SKIP_LOG_LINES = r"has constructor arguments in the object store and max_restarts > 0"
SKIP_LOG_LINES_ENV = "RAY_DEDUP_LOGS_SKIP_REGEX"


def skip_known_log_lines() -> None:
    """Set SKIP_LOG_LINES_ENV (unless the user set it) before this process imports ray."""
    os.environ.setdefault(SKIP_LOG_LINES_ENV, SKIP_LOG_LINES)


def quiet_known_warnings() -> None:
    """In this process, drop the Ray warnings that clipray knows do not apply (the workers of an
    embedded cluster get the same through `ray_data_logging_env`)."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", message=MIN_ACTORS_WARNING, category=UserWarning)
    logging.getLogger(PROGRESS_LOGGER).setLevel(logging.ERROR)


def ray_data_logging_env(directory: str) -> dict[str, str]:
    """`RAY_DATA_LOGGING_CONFIG` for the workers of an embedded cluster: Ray Data's own default
    logging configuration plus PROGRESS_LOGGER at error level, written under `directory`.

    Ray Data applies the file when a process imports it. A value the user set wins.
    """
    import copy

    import yaml
    from ray.data._internal.logging import DEFAULT_CONFIG  # Ray's defaults, so nothing else changes

    name = "RAY_DATA_LOGGING_CONFIG"
    if name in os.environ:
        return {}
    config: dict[str, Any] = copy.deepcopy(DEFAULT_CONFIG)
    config["loggers"][PROGRESS_LOGGER] = {"level": "ERROR", "propagate": True}
    path = os.path.join(directory, "clipray-ray-data-logging.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    return {name: path}


def quiet_progress_bars() -> None:
    """Progress bars off in this process's Ray Data context when `progress_bars_unwanted()`.

    The environment variable alone is not enough: Ray Train hands the driver's context to its
    workers, and the context reads the variable once, when ray.data is imported.
    """
    if progress_bars_unwanted():
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False


def init_ray(config: PipelineConfig, forward_env: Iterable[str] = ()) -> None:
    """Connect to the cluster in ray.address / $RAY_ADDRESS, or start an embedded local one.

    `forward_env`: variables of this process that the workers of an existing cluster get too (an
    embedded cluster's workers inherit the whole environment)."""
    import ray

    if ray.is_initialized():
        return
    quiet_progress_bars()  # before worker_env() sets the variable for the workers
    quiet_known_warnings()
    address = config.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        from ray.exceptions import AuthenticationError

        # Workers of an existing cluster do not inherit this process's environment: clipray's
        # worker settings and the forwarded variables (the fault injection of recovery tests,
        # clipray.train.faults) travel with the job instead.
        env = worker_env()
        env.update({name: os.environ[name] for name in forward_env if os.environ.get(name)})
        enable_token_mode_if_token()  # a token in the environment is enough, as for `clipray submit`
        try:
            ray.init(address=address, log_to_driver=True, runtime_env={"env_vars": env} if env else None)
        except ConnectionError as e:
            # Ray 2.60 wraps the GCS's refusal in a RuntimeError that quotes the traceback of its
            # AuthenticationError; the token's problem is only in that text.
            cause = e.__cause__ or e
            if isinstance(cause, AuthenticationError) or "InvalidAuthToken" in str(cause):
                raise ClusterError(auth_message(address, cause)) from None
            raise
    else:
        start_local_ray(num_cpus=config.ray.num_cpus or os.cpu_count(), include_dashboard=True,
                        dashboard_host="127.0.0.1", configure_logging=True, logging_level="warning")


def start_local_ray(**init_kwargs: Any) -> None:
    """`ray.init(**init_kwargs)` of an embedded cluster whose workers get clipray's `worker_env`.

    The raylet and its workers inherit this process's environment, so the settings go there. A
    runtime_env would carry them too, but no prestarted worker matches one: every task and actor
    would start a fresh process.
    """
    import ray

    os.environ.update(worker_env())
    os.environ.update({k: v for k, v in LOCAL_CLUSTER_ENV.items() if k not in os.environ})
    os.environ.update(ray_data_logging_env(tempfile.mkdtemp(prefix="clipray-")))
    ray.init(**init_kwargs)
    # The node's CPUs reach the cluster's resource view a moment after ray.init returns; a Dataset
    # executed before that warns that "the Dataset job will hang" (and then runs normally).
    deadline = time.monotonic() + 10
    while not ray.available_resources().get("CPU") and time.monotonic() < deadline:
        time.sleep(0.1)


# Settings for an embedded single-node cluster only (the raylet and every worker inherit them):
# - no preemption watcher: nothing preempts the local node, and Ray logs an error-level line
#   about the watcher actor's constructor arguments at every start;
# - worker start-up concurrency: the raylet warns once more Python workers than 4x this number
#   exist (default: the CPU count). A 2-core run holds about 12 by design (controller, train
#   workers, data actors, read tasks), most of them reserving fractions of a CPU.
LOCAL_CLUSTER_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_worker_maximum_startup_concurrency": "8"}


