"""What a failed activity says, read the same way by every workflow: refused for good or not,
cancelled or not, and in one line for people (the order's `attention`, its steps, its logs)."""

from __future__ import annotations

import asyncio

from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, RetryState


def refusal_type(err: BaseException) -> str | None:
    """The `type` of the non-retryable ApplicationError behind a failed activity, if any (a local
    activity's comes unwrapped)."""
    if isinstance(err, ActivityError) and isinstance(err.cause, ApplicationError):
        return err.cause.type
    return err.type if isinstance(err, ApplicationError) else None


def refused_for_good(err: BaseException) -> bool:
    """Whether a failed activity was refused for good (a non-retryable ApplicationError), rather
    than out of time or attempts for now."""
    cause = err.cause if isinstance(err, ActivityError) else err
    return isinstance(cause, ApplicationError) and cause.non_retryable


def timed_out(err: BaseException) -> bool:
    """Whether an activity ended because its schedule-to-close bound passed (not taken in time)."""
    return isinstance(err, ActivityError) and err.retry_state == RetryState.TIMEOUT


def cancelled(err: BaseException) -> bool:
    """Whether an activity ended because the workflow cancelled it: cancelled before or during an
    attempt, or failed while its cancellation was asked (Temporal then retries it no more)."""
    if isinstance(err, asyncio.CancelledError):
        return True
    return isinstance(err, ActivityError) and (
        isinstance(err.cause, CancelledError) or err.retry_state == RetryState.CANCEL_REQUESTED
    )


def failure_text(err: BaseException) -> str:
    """What went wrong, in one line: the cause's message rather than the wrapper's."""
    if isinstance(err, ActivityError) and err.cause is not None:
        cause = err.cause
        if isinstance(cause, CancelledError):
            return "cancelled"
        message = getattr(cause, "message", None) or str(cause) or type(cause).__name__
        kind = cause.type if isinstance(cause, ApplicationError) and cause.type else None
        return f"{kind}: {message}" if kind else message
    if isinstance(err, ApplicationError) and err.type:
        return f"{err.type}: {err.message}"
    return str(err) or type(err).__name__
