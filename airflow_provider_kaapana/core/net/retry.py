"""One retry policy for every network call of the package, on top of ``tenacity``.

A :class:`RetryPolicy` says how often and how patiently to try again: ``retries`` after the first
attempt, ``backoff`` seconds before the first retry, doubled for each further one and capped at
``max_backoff``, optionally with jitter. *What* is worth retrying stays with each caller, which passes
a predicate (DIMSE association failures, connection errors, HTTP 429/5xx, ...). The same three names
are used everywhere: as keyword arguments of the clients (``DimsePeer``, ``DicomWebClient``,
``AirflowClient``, ``bulk_index``) and as connection extras read by the hooks
(:meth:`RetryPolicy.from_extra`).

Log lines and the messages built here pass through :func:`redact`, so passwords and tokens given as
``secrets`` (and credentials written into a URL) never show.
"""

from __future__ import annotations

import logging
import random
import re
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import tenacity

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The connection extras (and keyword arguments) that configure a :class:`RetryPolicy`.
RETRY_EXTRAS = ("retries", "backoff", "max_backoff")

# the userinfo of a URL: everything between "://" and the LAST "@" before the path (a password may
# hold an unescaped "@")
_URL_CREDENTIALS = re.compile(r"(?<=://)[^/?#\s]*@")


class TransientError(Exception):
    """A failure worth retrying (association refused or aborted, connection error, HTTP 503...).

    Callers raise it inside an attempt and turn the last one into their own error when the retries
    are used up; its message says what went wrong, without secrets.
    """


def is_transient(exc: BaseException) -> bool:
    """The predicate for callers whose attempts raise :class:`TransientError` for what may be retried."""
    return isinstance(exc, TransientError)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with every non-empty secret and any ``user:password@`` of a URL replaced by ``***``.

    The one redaction of the package: every URL, error and retry line that may carry a credential
    passes through it before it is logged, printed or raised.
    """
    text = str(text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
            quoted = urllib.parse.quote(secret, safe="")
            if quoted != secret:
                text = text.replace(quoted, "***")
    return _URL_CREDENTIALS.sub("***@", text)


def split_url_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """``http://user:pw@host/x`` -> (``http://host/x``, (``user``, ``pw``)), percent-decoded.

    Clients keep only the URL without userinfo (so no message can show it) and use the pair as basic
    auth; a URL without userinfo comes back unchanged with ``None``.
    """
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    clean = urllib.parse.urlunsplit(parts._replace(netloc=hostport))
    return clean, (urllib.parse.unquote(user), urllib.parse.unquote(password))


def describe_error(exc: BaseException) -> str:
    """How a failed attempt is shown: the message of a :class:`TransientError`, else ``Type: message``."""
    if isinstance(exc, TransientError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _number(extra: Mapping[str, Any], name: str, prefix: str, kind: type) -> Any:
    for key in (name, f"{prefix}{name}" if prefix else None):
        if key is None:
            continue
        value = extra.get(key)
        if value is None or value == "":
            continue
        try:
            return kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"connection extra {key!r} must be a number, not {value!r}") from None
    return None


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a network call is tried again.

    :param retries: retries after the first attempt (0: try once)
    :param backoff: seconds before the first retry, doubled for each further one
    :param max_backoff: the longest single wait
    :param jitter: multiply each wait by a random factor in [0.5, 1) (spreads out many clients)
    """

    retries: int = 3
    backoff: float = 1.0
    max_backoff: float = 60.0
    jitter: bool = False

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be 0 or more, not {self.retries}")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ValueError(f"backoff ({self.backoff}) and max_backoff ({self.max_backoff}) must be >= 0")

    @property
    def attempts(self) -> int:
        """Attempts in all: the first one and the retries."""
        return self.retries + 1

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry)."""
        wait = min(self.max_backoff, self.backoff * 2 ** max(0, retry - 1))
        if self.jitter:
            wait *= 0.5 + random.random() / 2
        return wait

    def updated(self, **changes: Any) -> RetryPolicy:
        """A copy with the given fields changed; ``None`` values leave a field as it is."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_extra(
        cls, extra: Mapping[str, Any] | None, default: RetryPolicy | None = None, *, prefix: str = ""
    ) -> RetryPolicy:
        """The policy a connection's extras ask for: ``retries``, ``backoff``, ``max_backoff``.

        Missing or empty extras keep ``default``'s values. ``prefix`` names a second spelling of each
        key (Airflow's UI form writes ``extra__<conn_type>__retries``).
        """
        extra = extra or {}
        return (default or cls()).updated(
            retries=_number(extra, "retries", prefix, int),
            backoff=_number(extra, "backoff", prefix, float),
            max_backoff=_number(extra, "max_backoff", prefix, float),
        )

    def retrying(
        self,
        retry_if: Callable[[BaseException], bool],
        *,
        operation: str,
        describe: Callable[[BaseException], str] = describe_error,
        secrets: Iterable[str | None] = (),
        sleep: Callable[[float], None] = time.sleep,
        logger: logging.Logger | None = None,
    ) -> tenacity.Retrying:
        """A ``tenacity.Retrying`` for this policy.

        Exceptions for which ``retry_if`` is true are retried; anything else, and the last exception
        once the attempts are used up, is raised as it is (``reraise``). Each retry is logged as a
        warning: ``<operation> failed (<describe(exc)>); retry i of n in s``, with ``secrets`` hidden.
        """
        hidden = tuple(secrets)
        logger = logger or log

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            wait = state.next_action.sleep if state.next_action is not None else 0.0
            logger.warning(
                "%s failed (%s); retry %d of %d in %.2f s",
                redact(operation, hidden),
                redact(describe(exc), hidden) if exc is not None else "?",
                state.attempt_number,
                self.retries,
                wait,
            )

        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=lambda state: self.delay(state.attempt_number),
            retry=tenacity.retry_if_exception(retry_if),
            sleep=sleep,
            before_sleep=before_sleep,
            reraise=True,
        )

    def call(
        self,
        fn: Callable[[], T],
        retry_if: Callable[[BaseException], bool] = is_transient,
        *,
        operation: str,
        describe: Callable[[BaseException], str] = describe_error,
        secrets: Iterable[str | None] = (),
        sleep: Callable[[float], None] = time.sleep,
        logger: logging.Logger | None = None,
    ) -> T:
        """Run ``fn()`` until it returns, retrying what ``retry_if`` accepts (see :meth:`retrying`)."""
        retrying = self.retrying(
            retry_if, operation=operation, describe=describe, secrets=secrets, sleep=sleep, logger=logger
        )
        return retrying(fn)


#: The package's default: 3 retries after 1, 2 and 4 s.
DEFAULT_RETRY = RetryPolicy()
#: Bulk requests to the search server (unless its connection or the caller says otherwise): more
#: patient, and jittered so that many workers do not retry in step.
BULK_RETRY = RetryPolicy(retries=5, backoff=0.5, max_backoff=30.0, jitter=True)
