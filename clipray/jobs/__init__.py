"""Ray Jobs API: submit pipelines to a cluster's dashboard, follow and manage the jobs."""

from clipray.jobs.client import ClusterError, connect
from clipray.jobs.submit import PreparedJob, prepare_job, submit_pipeline, wait_for_job

__all__ = ["ClusterError", "PreparedJob", "connect", "prepare_job", "submit_pipeline", "wait_for_job"]
