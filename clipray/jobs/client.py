"""A `JobSubmissionClient` that authenticates the way Ray's own clients do.

Ray 2.60 clusters enable token authentication by default. Ray's client reads the token from
$RAY_AUTH_TOKEN, else the file $RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token, but only sends it
when the process runs in token mode ($RAY_AUTH_MODE=token). `ray job submit` switches to token
mode when a token is available; `connect` does the same, so a token in the environment is enough.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from clipray.errors import UserError

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

T = TypeVar("T")
AUTH_HELP = ("set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token) to the cluster's token; "
             "on the head node `ray get-auth-token` prints it")


class JobsError(UserError, RuntimeError):
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


def connect(address: str | None) -> JobSubmissionClient:
    """A client for the dashboard at `address` (or $RAY_API_SERVER_ADDRESS / $RAY_ADDRESS)."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not address:
        raise JobsError("no cluster address: pass --address http://HEAD:8265 or set RAY_API_SERVER_ADDRESS")
    enable_token_mode_if_token()
    try:
        return JobSubmissionClient(address)
    except AuthenticationError as e:
        raise JobsError(auth_message(address, e)) from None
    except ConnectionError as e:
        raise JobsError(f"cannot reach the Ray dashboard at {address}: {e}") from None


def auth_message(address: str, error: BaseException) -> str:
    text = str(error)
    source = token_source()
    if source is not None and ("Forbidden" in text or "invalid" in text.lower()):
        return (f"the cluster at {address} refused the authentication token from {source}: "
                f"it is not this cluster's token; {AUTH_HELP}")
    return f"the cluster at {address} requires an authentication token and none was found; {AUTH_HELP}"


def call(address: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run one client call, turning authentication failures and unknown job ids into a JobsError."""
    from ray.exceptions import AuthenticationError

    try:
        return fn(*args, **kwargs)
    except AuthenticationError as e:
        raise JobsError(auth_message(address, e)) from None
    except RuntimeError as e:  # the SDK's 404: "Request failed with status code 404: Job X does not exist."
        if "does not exist" in str(e) and not isinstance(e, JobsError):
            raise JobsError(f"the cluster at {address}: {str(e).rsplit(': ', 1)[-1]}") from None
        raise
