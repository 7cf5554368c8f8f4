"""Access requests as the CLI reads them off a Token (docs/access-requests.md).

A Token waits for an approval when one of its Roles requires it (`spec.options.
requireApproval`) or its requester may only `request` one of them. The requester's reason
is the annotation `rdsgate.dev/request-reason`; a decision is an update of the Token's
annotations (`approved-by` + `approval-reason`, or `denied-by` + `denial-reason`), which the
operator's admission webhooks check and stamp with the approver as the API server
authenticated them. The operator then says where the Token stands in its condition
`Approved` (`Pending`, `Approved`, `Denied`, `Expired`, or `NotRequired`), and in
`status.approvedBy` / `status.approvedAt`. Only the condition is the operator's word: a
decision annotation it did not sign counts for nothing, so the CLI reports a decision once
the condition says so.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..admission import (
    APPROVAL_REASON,
    APPROVED_BY,
    DECIDED_AT,
    DENIAL_REASON,
    DENIED_BY,
    REQUEST_REASON,
)
from ..objects import meta_of
from ..status import parse_timestamp
from .resources import condition

if TYPE_CHECKING:
    from ..access import CompiledRole

__all__ = [
    "APPROVAL_REASON",
    "APPROVED_BY",
    "DENIAL_REASON",
    "DENIED_BY",
    "REQUEST_REASON",
    "Standing",
    "approval_roles",
    "program",
    "quoted_roles",
    "standing",
]

PENDING, APPROVED, DENIED, EXPIRED, NOT_REQUIRED = (
    "Pending",
    "Approved",
    "Denied",
    "Expired",
    "NotRequired",
)


def program() -> str:
    """How the user ran us: `kubectl rdsgate` (the plugin) or `rdsgate`, for commands we
    tell them (or an approver) to run."""
    return "kubectl rdsgate" if Path(sys.argv[0]).name == "kubectl-rdsgate" else "rdsgate"


def _annotations(token: Mapping[str, Any]) -> Mapping[str, Any]:
    annotations = meta_of(token).get("annotations")
    return annotations if isinstance(annotations, Mapping) else {}


def _text(value: object) -> str | None:
    return str(value) if value else None


@dataclass(frozen=True)
class Standing:
    """Where a Token stands on approval, as the operator says (and the annotations detail)."""

    #: The Approved condition's reason; None while the operator has not written it.
    state: str | None
    message: str
    request_reason: str | None
    #: The decision, once the condition says there is one.
    decided_by: str | None = None
    decision_reason: str | None = None
    decided_at: datetime | None = None

    @property
    def is_request(self) -> bool:
        """Asked for with a reason, or waiting (or having waited) for an approval."""
        return (self.state not in (None, NOT_REQUIRED)) or self.request_reason is not None

    @property
    def open(self) -> bool:
        """A request that may still be granted: pending (or not judged yet), or approved."""
        return self.state in (None, PENDING, APPROVED)

    @property
    def shown_state(self) -> str:
        return self.state or "Unknown"


def standing(token: Mapping[str, Any]) -> Standing:
    cond = condition(token, "Approved") or {}
    state = _text(cond.get("reason"))
    annotations = _annotations(token)
    reason = _text(annotations.get(REQUEST_REASON))
    message = str(cond.get("message") or "")
    if state not in (APPROVED, DENIED):
        return Standing(state, message, reason)
    approved = state == APPROVED
    status = token.get("status") if isinstance(token.get("status"), Mapping) else {}
    by = _text((status or {}).get("approvedBy")) if approved else None
    by = by or _text(annotations.get(APPROVED_BY if approved else DENIED_BY))
    why = _text(annotations.get(APPROVAL_REASON if approved else DENIAL_REASON))
    at: datetime | None = None
    raw_at = (status or {}).get("approvedAt") if approved else None
    raw_at = raw_at or annotations.get(DECIDED_AT)
    if isinstance(raw_at, str):
        try:
            at = parse_timestamp(raw_at)
        except ValueError:
            at = None
    return Standing(state, message, reason, by, why, at)


def approval_roles(roles: Mapping[str, CompiledRole], names: Sequence[str]) -> list[str]:
    """The Roles an approver needs `approve` on: those of `names` that require approval, or,
    when none does (the Token waits because its requester may only `request`), all of them
    (operator/admission.py `_review_decision`)."""
    needing = [
        n
        for n in names
        if (c := roles.get(n)) is not None
        and c.role is not None
        and c.role.options.require_approval
    ]
    return needing or list(names)


def quoted_roles(names: Sequence[str]) -> str:
    quoted = [f'"{n}"' for n in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]
