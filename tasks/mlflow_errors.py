"""An unreachable tracking server: a bounded wait, then one clear :class:`~tasks.registry.RegistryError`.

MLflow's HTTP client already retries a refused connection with exponential backoff, but its
defaults (7 retries, factor 2, 120 s per request) spend about 4 minutes on every call, and a
flow makes dozens, each wrapped in a task's own retries. :func:`apply_http_limits` sets
``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, ``..._BACKOFF_FACTOR`` and ``..._TIMEOUT`` from
``settings.tracking`` (about 15 s per call by default), never over values the user exported;
MLflow reads them on every request, so setting them late is enough.

When the retries are spent MLflow raises ``MlflowException("API request to ... failed with
exception HTTPConnectionPool(...): Max retries exceeded ... Connection refused")``, with the
``requests.ConnectionError`` as its ``__context__``. :func:`tracking_errors` (a context manager)
and :func:`guarded` (a decorator for ``fn(settings, ...)``) turn that into one line naming the
server, the tries, the cause and what to do.
"""

from __future__ import annotations

import functools
import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

from transferops.config import Settings
from transferops.errors import TransferopsError

# MLflow's variable -> the TrackingConfig field that sets it
HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "http_max_retries",
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "http_backoff_factor",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "http_timeout_s"}
MLFLOW_DEFAULT_RETRIES = 7
CHAMPION_UNCHANGED = "the champion is unchanged"
# the values this process set, so that later settings may change them but a user's export is kept
_ours: dict[str, str] = {}
F = TypeVar("F", bound=Callable[..., Any])


class RegistryError(TransferopsError, RuntimeError):
    """A registry reference is wrong or the registry refused; the message says which."""


def missing(exc: BaseException, *codes: str) -> bool:
    """Whether ``exc`` is MLflow saying a thing does not exist (``RESOURCE_DOES_NOT_EXIST`` and
    ``codes``), as opposed to an unreachable server or a refusal that must not read as "absent"."""
    return getattr(exc, "error_code", None) in ("RESOURCE_DOES_NOT_EXIST", *codes) and unreachable_cause(exc) is None


def apply_http_limits(settings: Settings) -> None:
    """Set MLflow's HTTP retry variables from ``settings.tracking``, except those the user exported."""
    for var, field in HTTP_ENV.items():
        if var in os.environ and os.environ[var] != _ours.get(var):
            continue  # exported by the user (or a parent process): theirs to choose
        value = str(getattr(settings.tracking, field))
        os.environ[var] = _ours[var] = value


def unreachable_cause(exc: BaseException) -> BaseException | None:
    """The connection error behind ``exc`` (its cause/context chain), or None when it is another failure."""
    import requests

    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        # builtin ConnectionError covers refused and reset sockets; requests' ConnectionError is not one
        if isinstance(e, (requests.ConnectionError, requests.Timeout, ConnectionError)):
            return e
        e = e.__cause__ or e.__context__
    return None


def unreachable_message(settings: Settings, exc: BaseException, consequence: str = CHAMPION_UNCHANGED) -> str:
    """The one line for an unreachable server: where, after how many tries, why, and what to do."""
    cause = unreachable_cause(exc) or exc
    root = cause
    while (root.__cause__ or root.__context__) is not None:
        root = root.__cause__ or root.__context__
    why = type(cause).__name__ if root is cause else f"{type(cause).__name__}: {root}"
    tries = int(os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", MLFLOW_DEFAULT_RETRIES)) + 1
    uri = settings.public_dict()["tracking_uri"]  # credentials in the URI masked
    return " ".join(f"tracking server {uri} unreachable after {tries} tries ({why}): {consequence}; "
                    "start the server or set TRANSFEROPS_TRACKING_URI".split())


@contextmanager
def tracking_errors(settings: Settings, consequence: str = CHAMPION_UNCHANGED) -> Iterator[None]:
    """Bound MLflow's retries (:func:`apply_http_limits`) and raise an unreachable server as one RegistryError."""
    apply_http_limits(settings)
    try:
        yield
    except RegistryError:
        raise  # already says what happened
    except Exception as exc:
        if unreachable_cause(exc) is None:
            raise
        raise RegistryError(unreachable_message(settings, exc, consequence)) from exc


def guarded(fn: F) -> F:
    """Decorate ``fn(settings, ...)`` so that an unreachable server raises one RegistryError."""
    @functools.wraps(fn)
    def wrapper(settings: Settings, *args: Any, **kwargs: Any) -> Any:
        with tracking_errors(settings):
            return fn(settings, *args, **kwargs)
    return wrapper  # type: ignore[return-value]
