"""What is worth retrying, and how: the one place that decides.

Three questions are asked of a failure, each answered here and nowhere else:

* :func:`is_transient`: may *the same request* succeed when sent again? The fetch layer
  retries exactly these (timeouts, dropped connections, cut bodies, 408/429/5xx within the
  policy's ``statuses``); a malformed request, a login problem or a missing resource never.
* :func:`is_congestion`: is the server telling us it is overloaded (429, 503, timeouts)?
  The limiter shrinks its window on these.
* :func:`is_permanent`: would *rerunning the whole download* hit the same wall? The bulk
  downloader deletes a useless ``.part`` file and the command line drops its "rerun to
  resume" hint on these.
* :func:`upload_may_retry`: uploads are not idempotent, so only a failure that proves the
  server did not take the file (:class:`~aiobisque.UploadNotTakenError`) is sent again.

:class:`RetryPolicy` is the value a user configures; :func:`retrying` turns it into a fresh
tenacity retry state per request, built from tenacity's own stop and wait pieces (plus
``Retry-After`` honoured up to a cap, and the download's shared retry budget).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_any,
    stop_before_delay,
    wait_exponential,
    wait_random_exponential,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from aiobisque.errors import (
    AuthenticationError,
    BadRequestError,
    BisqueError,
    BodyIncompleteError,
    DownloadTimeoutError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    SelectionError,
    ServerError,
    TransportError,
    UnsupportedError,
    UploadNotTakenError,
    UsageError,
    require,
)

__all__ = [
    "NEVER_RETRIED",
    "TRANSIENT_STATUSES",
    "RetryBudget",
    "RetryPolicy",
    "is_congestion",
    "is_permanent",
    "for_text_exports",
    "is_transient",
    "load_signal",
    "retrying",
    "upload_may_retry",
    "why_stopped",
]

log = logging.getLogger("aiobisque")

T = TypeVar("T")

#: HTTP statuses worth retrying by default: timeouts, throttling and server-side failures.
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: Statuses that say the request itself is wrong: no policy may retry them.
NEVER_RETRIED = frozenset({400, 401, 403, 404, 501})
#: Statuses by which a server says it is overloaded.
_CONGESTION_STATUSES = frozenset({429, 503})
#: Errors that rerunning the same download cannot cure: the request itself is refused.
_PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    AuthenticationError, PermissionDeniedError, NotFoundError, BadRequestError, ProtocolError,
    UsageError, SelectionError, UnsupportedError,
)


@dataclass(frozen=True)
class RetryPolicy:
    """How each request is retried; turned into a tenacity policy per request.

    A request is tried at most ``max_attempts`` times and not after ``max_delay`` seconds
    since its first attempt. Waits grow exponentially from ``backoff_initial`` to
    ``backoff_max``, jittered between half and all of each step (so a run of failures
    always waits at least half the schedule: an outage is given time to end); a
    ``Retry-After`` header is honoured up to ``retry_after_max`` seconds (a longer one fails
    the request at once rather than sleeping for hours).

    ``budget`` bounds how hard one whole download hits a failing server: retries at the
    capped backoff (``backoff_max`` between attempts) count against at most
    ``max(budget_min, budget * requests)``. A request's first retries, while its backoff is
    still growing towards the cap, do not count: they are what rides out a short outage,
    and their growing waits already bound the load. ``statuses`` are the HTTP statuses
    retried (never 400, 401, 403, 404 or 501).
    """

    max_attempts: int = 10
    max_delay: float = 120.0
    backoff_initial: float = 0.2
    backoff_max: float = 10.0
    retry_after_max: float = 60.0
    budget: float = 0.5
    budget_min: int = 20
    statuses: frozenset[int] = TRANSIENT_STATUSES

    def __post_init__(self) -> None:
        never = sorted(set(self.statuses) & NEVER_RETRIED)
        require(not never, f"statuses {never} are never retried (the request itself is wrong)")
        require(self.max_attempts >= 1, f"max_attempts must be >= 1, got {self.max_attempts}")
        require(self.max_delay > 0, f"max_delay must be > 0, got {self.max_delay}")
        require(
            0 <= self.backoff_initial <= self.backoff_max,
            "need 0 <= backoff_initial <= backoff_max",
        )
        require(self.retry_after_max >= 0, "retry_after_max must be >= 0")
        require(self.budget >= 0 and self.budget_min >= 0, "retry budget must be >= 0")
        object.__setattr__(self, "statuses", frozenset(self.statuses))

    def download_budget(self, n_requests: int) -> int:
        """Retries at the capped backoff allowed for a download of ``n_requests`` requests."""
        return max(self.budget_min, int(self.budget * n_requests))

    def step(self, attempt: int) -> float:
        """The exponential step after failed attempt number ``attempt`` (1-based), capped."""
        return min(self.backoff_max, self.backoff_initial * 2.0 ** min(attempt - 1, 64))

    def ramping(self, attempt: int) -> bool:
        """Whether the wait after ``attempt`` is still below the cap (a free retry)."""
        return self.step(attempt) < self.backoff_max


class RetryBudget:
    """Retries left for one download; when spent, errors are no longer retried."""

    def __init__(self, total: int):
        self.total = total
        self.used = 0

    @property
    def spent(self) -> bool:
        return self.used >= self.total

    def take(self) -> bool:
        if self.spent:
            return False
        self.used += 1
        return True


# -- the three questions --------------------------------------------------------------------


def _retried_kind(exc: BaseException, statuses: frozenset[int]) -> bool:
    """Whether ``exc`` is of a kind that a retry can cure (ignoring ``Retry-After``)."""
    if not isinstance(exc, BisqueError):
        return False  # an explicit allowlist: never CancelledError or a bug
    if exc.status is not None:
        return exc.status in statuses and exc.status not in NEVER_RETRIED
    # no status: the connection failed, timed out, or the body ended early
    return isinstance(exc, TransportError | BodyIncompleteError)


def is_transient(exc: BaseException, policy: RetryPolicy | None = None) -> bool:
    """Whether sending the same request again may succeed, under ``policy``.

    A ``Retry-After`` longer than the policy's ``retry_after_max`` makes an otherwise
    transient error final: waiting hours is never what a download wants.
    """
    policy = policy or RetryPolicy()
    if not _retried_kind(exc, policy.statuses):
        return False
    assert isinstance(exc, BisqueError)
    return exc.retry_after is None or exc.retry_after <= policy.retry_after_max


def is_congestion(exc: BaseException) -> bool:
    """Whether ``exc`` says the server is overloaded (the limiter's signal to back off)."""
    return isinstance(exc, DownloadTimeoutError) or (
        isinstance(exc, ServerError) and exc.status in _CONGESTION_STATUSES
    )


def load_signal(exc: BaseException) -> str:
    """What a failed attempt says about the server's load, for the adaptive window:
    ``"congested"`` (:func:`is_congestion`), ``"server_error"`` (another 5xx: one means
    little, a burst of them means too many requests at once) or ``"error"`` (nothing)."""
    if is_congestion(exc):
        return "congested"
    if isinstance(exc, ServerError) and exc.status is not None and exc.status >= 500:
        return "server_error"
    return "error"


def is_permanent(exc: BaseException, policy: RetryPolicy | None = None) -> bool:
    """Whether rerunning the same download cannot get past ``exc``.

    True for refusals (authentication, access, missing nodes, malformed requests, broken
    responses, bad arguments) and for any 4xx status the policy does not retry, on ``exc``
    or its causes: a request that failed for good carries the server's answer as its
    ``__cause__``.
    """
    statuses = (policy or RetryPolicy()).statuses
    seen: BaseException | None = exc
    for _ in range(8):  # a cause chain is short; bounded all the same
        if seen is None:
            return False
        if isinstance(seen, _PERMANENT_ERRORS) and not isinstance(seen, BodyIncompleteError):
            return True
        status = seen.status if isinstance(seen, BisqueError) else None
        if status is not None and 400 <= status < 500 and status not in statuses:
            return True
        seen = seen.__cause__
    return False


def upload_may_retry(exc: BaseException) -> bool:
    """Whether an upload may be sent again: only when the server provably did not take it.

    A connection that could not be made, or a 503 answered before the body was sent, is an
    :class:`~aiobisque.UploadNotTakenError`; anything else may have created the resource,
    and sending it again could make a duplicate.
    """
    return isinstance(exc, UploadNotTakenError)


def for_text_exports(policy: RetryPolicy) -> RetryPolicy:
    """The policy for BisQue's JSON/text exports of table columns.

    Their 500s are deterministic (a cell the exporter cannot convert: text on BisQue 0.6, a
    multi-dimensional column), unlike the sporadic 500s of concurrent ``format:hdf``
    exports, so sending the same request again cannot help.
    """
    return dataclasses.replace(policy, statuses=policy.statuses - {500})


def why_stopped(exc: BaseException, policy: RetryPolicy, budget: RetryBudget | None) -> str:
    """Why retrying gave up on ``exc``, for messages.

    ``""`` when ``exc`` is of a kind never retried (the request itself is wrong) or when
    the request simply ran out of attempts or time.
    """
    if not _retried_kind(exc, policy.statuses):
        return ""
    assert isinstance(exc, BisqueError)
    if exc.retry_after is not None and exc.retry_after > policy.retry_after_max:
        return (f"the server asked to wait {exc.retry_after:.0f} s, more than "
                f"retry_after_max={policy.retry_after_max:.0f} s")
    if budget is not None and budget.spent:
        return "the download's retry budget is spent"
    return ""


# -- tenacity ---------------------------------------------------------------------------------


class _BudgetStop(stop_base):
    """Stops when the download's retry budget is spent.

    Last in the stop chain (``stop_any`` short-circuits), so a unit is taken only for a
    retry that will really happen; a retry whose backoff is still ramping up to the cap
    takes none (see :class:`RetryPolicy`).
    """

    def __init__(self, budget: RetryBudget | None, policy: RetryPolicy):
        self.budget = budget
        self.policy = policy

    def __call__(self, retry_state: RetryCallState) -> bool:
        if self.budget is None or self.policy.ramping(retry_state.attempt_number):
            return False
        return not self.budget.take()


def _equal_jitter(policy: RetryPolicy) -> wait_base:
    """Exponential backoff, each wait drawn between half and all of its step.

    Full jitter (anywhere from zero) spreads retries as well, but lets a request spend all
    its attempts within a fraction of the schedule; half the step as a floor guarantees
    that ``n`` failures took at least half the schedule's time. Built from tenacity's own
    waits: half the step, fixed, plus up to half the step, random.
    """
    half, cap = policy.backoff_initial / 2, policy.backoff_max / 2
    return wait_exponential(multiplier=half, max=cap) + \
        wait_random_exponential(multiplier=half, max=cap)


class _WaitRetryAfter(wait_base):
    """The server's ``Retry-After`` when it sent one, else the fallback backoff."""

    def __init__(self, fallback: wait_base, cap: float):
        self.fallback = fallback
        self.cap = cap

    def __call__(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, BisqueError) and exc.retry_after is not None:
            return min(exc.retry_after, self.cap)
        return float(self.fallback(retry_state))


async def retrying(
    attempt: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    budget: RetryBudget | None = None,
    on_retry: Callable[[BisqueError, int, float], None] | None = None,
    retry_if: Callable[[BaseException], bool] | None = None,
) -> tuple[T, int]:
    """Run ``attempt`` under a fresh retry state; returns its result and the attempts used.

    Only :func:`is_transient` errors are retried (``retry_if``: another of this module's
    predicates, e.g. :func:`upload_may_retry`). The last error is re-raised as it is once
    the policy gives up (:func:`why_stopped` says why, for messages).

    The first attempt runs on its own: most requests succeed at once, and a tenacity retry
    state costs far more than the attempt's own bookkeeping (a download of a GiB makes
    hundreds). Only when it fails is the tenacity loop built; its first round replays that
    failure, with the retry state's clock set back to when the first attempt started, so
    every decision (stop, wait, budget, ``on_retry``, logging) is the one tenacity makes.
    """
    started = time.monotonic()
    try:
        return await attempt(), 1
    except Exception as exc:  # CancelledError and KeyboardInterrupt go through as they are
        first: Exception | None = exc

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        if isinstance(exc, BisqueError):
            log.info("retrying in %.2f s after attempt %d: %s", delay, state.attempt_number, exc)
            if on_retry:
                on_retry(exc, state.attempt_number, delay)

    retryer = AsyncRetrying(
        stop=stop_any(stop_after_attempt(policy.max_attempts),
                      stop_before_delay(policy.max_delay), _BudgetStop(budget, policy)),
        wait=_WaitRetryAfter(_equal_jitter(policy), policy.retry_after_max),
        retry=retry_if_exception(retry_if or (lambda exc: is_transient(exc, policy))),
        before_sleep=before_sleep,
        reraise=True,
    )
    attempts = 0
    async for state in retryer:
        with state:
            attempts = state.retry_state.attempt_number
            if first is not None:  # the first attempt, already made: its failure
                state.retry_state.start_time = started
                failure, first = first, None
                raise failure
            result = await attempt()
    return result, attempts
