"""Submit a pipeline as a Ray job: the resolved config and the clipray package travel with it.

The job's runtime environment carries
- `working_dir`: a folder holding only `pipeline.yaml`, the resolved config (overrides applied,
  local paths made absolute so they still point at the data from the job's own working dir);
- `py_modules`: the clipray package this command runs from, so the cluster runs the same code.
The entrypoint runs `-m clipray train pipeline.yaml` on the cluster's own interpreter
(`cluster_python_command`); it reserves no CPU of its own (entrypoint_num_cpus=0), so the workers
and data stages keep the cluster's CPUs.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from clipray.config import PipelineConfig, load_config
from clipray.config.paths import with_absolute_paths
from clipray.jobs.client import ClusterError, call

if TYPE_CHECKING:
    from ray.job_submission import JobDetails, JobSubmissionClient

CONFIG_NAME = "pipeline.yaml"
# The job supervisor runs the entrypoint with `/bin/sh -c`, whose `python` is whatever the head's
# PATH finds first: with `.venv/bin/ray start --head` (no venv on PATH) that is a python without
# Ray. The interpreter the cluster does run is in its raylet's command line, which Ray gives the
# exact worker command (`--python_worker_command=<python> .../setup_worker.py ...`); the raylet is
# an ancestor of the supervisor that runs the entrypoint. So the entrypoint walks up from its
# parent to that process and takes its python, falling back to `python` where there is no /proc.
CLUSTER_PYTHON = (
    'PY=$(p=$PPID; while [ "${p:-0}" -gt 1 ]; do '
    "c=$(tr '\\0' '\\n' < /proc/$p/cmdline 2>/dev/null | sed -n 's/^--python_worker_command=\\([^ ]*\\).*/\\1/p'); "
    'if [ -n "$c" ]; then echo "$c"; break; fi; '
    "p=$(sed -n 's/^PPid:[[:space:]]*//p' /proc/$p/status 2>/dev/null); done); "
    'exec "${PY:-python}"'
)
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


@dataclass
class PreparedJob:
    config: PipelineConfig
    resolved: dict[str, Any]  # what is written to pipeline.yaml
    entrypoint: str
    submission_id: str
    runtime_env: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)


def resolve_for_job(config: PipelineConfig, base: Path | None = None) -> dict[str, Any]:
    """The config as a dict with local paths absolute and the tracking URI fixed on this side."""
    from clipray.tracking import resolve_tracking_uri

    base = base or Path.cwd()
    raw = with_absolute_paths(config, base)
    if raw["train"].get("storage_path") is None:
        raw["train"]["storage_path"] = str((base / "clipray_runs").resolve())
    # The job must log where the submitter would have: resolve $MLFLOW_TRACKING_URI / the default now.
    raw["tracking"]["tracking_uri"] = resolve_tracking_uri(config.tracking.tracking_uri)
    return raw


def default_submission_id(name: str) -> str:
    return f"clipray-{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def prepare_job(pipeline: str | os.PathLike[str], overrides: Iterable[str] = (), *,
                submission_id: str | None = None, metadata: dict[str, str] | None = None,
                env_vars: dict[str, str] | None = None, resume: str | None = None) -> PreparedJob:
    """Load and validate the pipeline here (errors before anything reaches the cluster).

    `resume`: an MLflow run id the job continues (`clipray train --resume`).
    """
    import clipray
    from clipray.text.encoding import text_encoding

    config = load_config(pipeline, overrides)
    text_encoding(config).check_vocabulary(remote_ok=True)  # a vocabulary too large for the text tower never reaches the cluster
    resolved = resolve_for_job(config)
    if resume:  # refused here, before the cluster sees it, as `clipray train --resume` would
        from clipray.train.resume import resume_point

        resume_point(load_config(data=resolved), resolved["tracking"]["tracking_uri"], resume)
    runtime_env: dict[str, Any] = {
        "py_modules": [str(Path(clipray.__file__).parent)],
        "excludes": ["__pycache__", "*.pyc"],
    }
    if env_vars:
        runtime_env["env_vars"] = dict(env_vars)
    return PreparedJob(
        config=config, resolved=resolved,
        entrypoint=cluster_python_command(f"-m clipray train {CONFIG_NAME}"
                                          + (f" --resume {shlex.quote(resume)}" if resume else "")),
        submission_id=submission_id or default_submission_id(config.name), runtime_env=runtime_env,
        metadata={"clipray.pipeline": config.name, **(metadata or {})},
    )


def cluster_python_command(args: str) -> str:
    """A job entrypoint that runs `<the cluster's python> args` (see CLUSTER_PYTHON)."""
    return f"{CLUSTER_PYTHON} {args}"


def submit_pipeline(client: JobSubmissionClient, address: str, job: PreparedJob) -> str:
    """Submit `job`; returns its submission id. Raises ClusterError on refusal."""
    with tempfile.TemporaryDirectory(prefix="clipray-job-") as tmp:
        Path(tmp, CONFIG_NAME).write_text(yaml.safe_dump(job.resolved, sort_keys=False))
        runtime_env = {**job.runtime_env, "working_dir": tmp}
        try:
            return call(address, client.submit_job, entrypoint=job.entrypoint, submission_id=job.submission_id,
                        runtime_env=runtime_env, metadata=job.metadata, entrypoint_num_cpus=0)
        except RuntimeError as e:
            if isinstance(e, ClusterError):
                raise
            raise ClusterError(f"the cluster at {address} rejected job {job.submission_id}: {e}") from None


def wait_for_job(client: JobSubmissionClient, address: str, job_id: str,
                 write: Callable[[str], Any] = sys.stdout.write) -> JobDetails:
    """Stream the job's logs until it ends; returns its final details."""

    async def follow() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)
            sys.stdout.flush()

    call(address, asyncio.run, follow())
    # The log stream closes when the job ends, but the status may lag by a moment.
    deadline = time.monotonic() + 30
    info = call(address, client.get_job_info, job_id)
    while status_name(info) not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.5)
        info = call(address, client.get_job_info, job_id)
    return info


def status_name(info: Any) -> str:
    status = info.status
    return str(getattr(status, "value", status))
