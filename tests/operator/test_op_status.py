"""Conditions in the Kubernetes convention and the Events they imply."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from rdsgate.operator import diagnosis
from rdsgate.operator.status import (
    STATUS_AND_REASON,
    Condition,
    EventSpec,
    InvalidSpec,
    ReferenceNotFound,
    condition_events,
    merge_conditions,
    problems_condition,
    timestamp,
)
from rdsgate.proxy.diagnose import Finding, Status

T0 = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def test_new_conditions_carry_every_field_of_the_convention() -> None:
    merged = merge_conditions(
        None, [Condition("Ready", "False", "Creating", "being created")], generation=3, now=T0
    )
    assert merged == [
        {
            "type": "Ready",
            "status": "False",
            "reason": "Creating",
            "message": "being created",
            "lastTransitionTime": "2026-01-02T03:04:05Z",
            "observedGeneration": 3,
        }
    ]


def test_transition_time_moves_only_when_the_status_changes() -> None:
    first = merge_conditions(None, [Condition("Ready", "False", "A", "a")], generation=1, now=T0)
    same_status = merge_conditions(
        first, [Condition("Ready", "False", "B", "b")], generation=2, now=T1
    )
    assert same_status[0]["lastTransitionTime"] == timestamp(T0)
    assert same_status[0]["reason"] == "B"
    assert same_status[0]["observedGeneration"] == 2
    flipped = merge_conditions(
        same_status, [Condition("Ready", "True", "C", "c")], generation=2, now=T1
    )
    assert flipped[0]["lastTransitionTime"] == timestamp(T1)


def test_conditions_owned_by_others_are_kept() -> None:
    current = [
        {
            "type": "CredentialsAvailable",
            "status": "True",
            "reason": "IRSA",
            "message": "m",
            "lastTransitionTime": "2025-01-01T00:00:00Z",
        },
        {
            "type": "Ready",
            "status": "False",
            "reason": "X",
            "message": "x",
            "lastTransitionTime": "2025-01-01T00:00:00Z",
        },
    ]
    merged = merge_conditions(
        current, [Condition("Ready", "True", "Ok", "ok")], generation=None, now=T0
    )
    assert [c["type"] for c in merged] == ["Ready", "CredentialsAvailable"]
    assert merged[1] == current[0]
    assert "observedGeneration" not in merged[0]


def test_an_event_is_posted_once_per_problem_and_again_when_it_changes() -> None:
    bad = Condition("Degraded", "True", "InvalidSpec", "spec.endpoint: bad", event="Warning")
    assert condition_events(None, [bad]) == [
        EventSpec("Warning", "InvalidSpec", "spec.endpoint: bad")
    ]
    stored = merge_conditions(None, [bad], generation=1, now=T0)
    assert condition_events(stored, [bad]) == []
    worse = Condition("Degraded", "True", "InvalidSpec", "spec.aws: bad", event="Warning")
    assert condition_events(stored, [worse]) == [
        EventSpec("Warning", "InvalidSpec", "spec.aws: bad")
    ]


def test_diagnosis_events_follow_status_and_reason_not_message() -> None:
    """The proxies' diagnostics go through the same Events as every condition, keyed on status
    and reason: a new latency in the message is no news, a new reason is."""
    first = diagnosis.diagnosis_conditions({})
    # Nothing known yet (Unknown on first appearance) is not worth an Event.
    assert condition_events(None, first, key=STATUS_AND_REASON) == []
    stored = merge_conditions(None, first, generation=1, now=T0)
    failing = {
        "pod-a": [
            Finding(
                "credentials", Status.FAIL, "no AWS credentials found", "NoCredentials"
            ).to_dict()
        ]
    }
    wanted = diagnosis.diagnosis_conditions(failing)
    creds = next(c for c in wanted if c.type == "CredentialsAvailable")
    assert (creds.status, creds.reason) == ("False", "NoCredentials")
    events = condition_events(stored, wanted, key=STATUS_AND_REASON)
    assert (
        EventSpec(
            "Warning", "NoCredentials", "CredentialsAvailable=False: no AWS credentials found"
        )
        in events
    )
    stored = merge_conditions(stored, wanted, generation=1, now=T1)
    reworded = [
        Condition(c.type, c.status, c.reason, c.message + " (again)", c.event, c.event_message)
        for c in wanted
    ]
    assert condition_events(stored, reworded, key=STATUS_AND_REASON) == []
    # The rest of the operator's conditions post again when only the message changes.
    assert condition_events(stored, reworded) != []


def test_conditions_without_an_event_type_post_nothing() -> None:
    assert condition_events(None, [Condition("Progressing", "True", "RollingOut", "1/2")]) == []


def test_problems_fold_into_one_condition_with_the_first_reason() -> None:
    cond = problems_condition(
        "Degraded",
        [InvalidSpec("spec.a: bad"), ReferenceNotFound("Role x is missing")],
        bad_status="True",
        ok_reason="AsExpected",
        ok_message="fine",
    )
    assert cond == Condition(
        "Degraded", "True", "InvalidSpec", "spec.a: bad; Role x is missing", event="Warning"
    )
    ok = problems_condition("Ready", [], bad_status="False", ok_reason="Ok", ok_message="fine")
    assert ok == Condition("Ready", "True", "Ok", "fine")
