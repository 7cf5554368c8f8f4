"""Status conditions in the Kubernetes convention, the Events they imply, and domain problems.

Pure: handlers compute the wanted conditions, `merge_conditions` folds them into what the
object already says (keeping `lastTransitionTime` while a status holds, and conditions of
other types that other code owns), and `condition_events` says which Events to post so that
a problem is reported once when it appears or changes, not on every reconcile.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

ConditionStatus = Literal["True", "False", "Unknown"]
EventType = Literal["Normal", "Warning"]


class Problem(Exception):
    """A user-fixable problem with a resource: becomes a condition reason/message and an Event.

    `reason` is a CamelCase word; the message says what is wrong and what to do, and never
    carries a traceback.
    """

    reason = "Problem"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason


class InvalidSpec(Problem):
    reason = "InvalidSpec"


class ReferenceNotFound(Problem):
    reason = "ReferenceNotFound"


class SecretConflict(Problem):
    reason = "SecretConflict"


class NameConflict(Problem):
    """An object the operator would own exists and belongs to someone else: never overwritten."""

    reason = "NameConflict"


class ApplyFailed(Problem):
    """The API refused a child object (RBAC, admission webhook, quota, …)."""

    reason = "ApplyFailed"


@dataclass(frozen=True, slots=True)
class Condition:
    """A wanted condition; `event` says which Event type to post when it changes (if any),
    `event_message` what the Event says when that is not the condition's message."""

    type: str
    status: ConditionStatus
    reason: str
    message: str
    event: EventType | None = None
    event_message: str | None = None
    #: The Event's reason when it is not the condition's (AccessRequested for Pending).
    event_reason: str | None = None


@dataclass(frozen=True, slots=True)
class EventSpec:
    type: EventType
    reason: str
    message: str


def timestamp(now: datetime) -> str:
    """RFC 3339 in UTC with a Z, whole seconds: what the API server stores."""
    return now.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def merge_conditions(
    current: Iterable[Mapping[str, Any]] | None,
    wanted: Sequence[Condition],
    *,
    generation: int | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """The conditions list to store: wanted ones replace theirs, others stay as they are."""
    by_type = {c.get("type"): dict(c) for c in current or () if isinstance(c, Mapping)}
    for cond in wanted:
        old = by_type.get(cond.type)
        changed = old is None or old.get("status") != cond.status
        new: dict[str, Any] = {
            "type": cond.type,
            "status": cond.status,
            "reason": cond.reason,
            "message": cond.message,
            "lastTransitionTime": (
                timestamp(now)
                if changed or old is None or not old.get("lastTransitionTime")
                else old["lastTransitionTime"]
            ),
        }
        if generation is not None:
            new["observedGeneration"] = generation
        by_type[cond.type] = new
    wanted_order = [c.type for c in wanted]
    others = sorted(t for t in by_type if t not in wanted_order and isinstance(t, str))
    return [by_type[t] for t in [*wanted_order, *others]]


#: What makes a condition's change worth an Event: by default any change of status, reason or
#: message; `STATUS_AND_REASON` for conditions whose message carries changing detail (the
#: proxies' diagnostics name a pod, a latency, …).
EVERY_CHANGE: tuple[str, ...] = ("status", "reason", "message")
STATUS_AND_REASON: tuple[str, ...] = ("status", "reason")


def condition_events(
    current: Iterable[Mapping[str, Any]] | None,
    wanted: Sequence[Condition],
    *,
    key: Sequence[str] = EVERY_CHANGE,
) -> list[EventSpec]:
    """Events for the wanted conditions (those with an `event`) whose `key` fields differ from
    the current ones. A condition that first appears as Unknown says nothing yet: no Event."""
    by_type = {c.get("type"): c for c in current or () if isinstance(c, Mapping)}
    events = []
    for cond in wanted:
        if cond.event is None:
            continue
        old = by_type.get(cond.type)
        if old is None and cond.status == "Unknown" and cond.event_reason is None:
            continue
        if old is not None and all(old.get(k) == getattr(cond, k) for k in key):
            continue
        events.append(
            EventSpec(
                cond.event, cond.event_reason or cond.reason, cond.event_message or cond.message
            )
        )
    return events


def find(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    for c in conditions or ():
        if c.get("type") == type_:
            return c
    return None


def problems_condition(
    type_: str,
    problems: Sequence[Problem],
    *,
    bad_status: ConditionStatus,
    ok_reason: str,
    ok_message: str,
) -> Condition:
    """One condition summarising several problems: the first reason, every message."""
    good: ConditionStatus = "False" if bad_status == "True" else "True"
    if not problems:
        return Condition(type_, good, ok_reason, ok_message)
    return Condition(
        type_,
        bad_status,
        problems[0].reason,
        "; ".join(p.message for p in problems),
        event="Warning",
    )
