"""A `JobSubmissionClient` that authenticates the way Ray's own clients do (token mode when a
token is available: `clipray.runtime.enable_token_mode_if_token`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from clipray.runtime import ClusterError, auth_message, enable_token_mode_if_token

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

T = TypeVar("T")
def connect(address: str | None) -> JobSubmissionClient:
    """A client for the dashboard at `address` (or $RAY_API_SERVER_ADDRESS / $RAY_ADDRESS)."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not address:
        raise ClusterError("no cluster address: pass --address http://HEAD:8265 or set RAY_API_SERVER_ADDRESS")
    enable_token_mode_if_token()
    try:
        return JobSubmissionClient(address)
    except AuthenticationError as e:
        raise ClusterError(auth_message(address, e)) from None
    except ConnectionError as e:
        raise ClusterError(f"cannot reach the Ray dashboard at {address}: {e}") from None


def call(address: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run one client call, turning authentication failures and unknown job ids into a ClusterError."""
    from ray.exceptions import AuthenticationError

    try:
        return fn(*args, **kwargs)
    except AuthenticationError as e:
        raise ClusterError(auth_message(address, e)) from None
    except RuntimeError as e:  # the SDK's 404: "Request failed with status code 404: Job X does not exist."
        if "does not exist" in str(e) and not isinstance(e, ClusterError):
            raise ClusterError(f"the cluster at {address}: {str(e).rsplit(': ', 1)[-1]}") from None
        raise
