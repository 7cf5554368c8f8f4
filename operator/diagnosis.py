"""What the proxies' own diagnostics say, as Database conditions (pure).

Each proxy pod runs `rdsgate diagnose`'s checks with its own AWS identity and serves the
latest findings on its metrics port at `/diagnose`; the operator collects them from the
ready pods of a Database and folds them into the conditions `CredentialsAvailable`,
`UpstreamReachable`, `UpstreamAuthenticated` and `TargetsHealthy`. Across pods the worst
answer wins (False over Unknown over True), naming the pod it came from. An Event is posted
when a condition's status or reason changes (`status.STATUS_AND_REASON`), not when only its
message does: a Warning for False, Normal otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rdsgate.proxy.diagnose import CONDITION_CHECKS, Finding, conditions

from .status import Condition, ConditionStatus

CONDITION_TYPES: tuple[str, ...] = tuple(CONDITION_CHECKS)
_RANK: dict[str, int] = {"False": 0, "Unknown": 1, "True": 2}

#: A pod's report: its findings as /diagnose serves them, or why they could not be read.
Report = Sequence[Mapping[str, Any]] | str


def _status(value: str) -> ConditionStatus:
    if value == "True":
        return "True"
    if value == "False":
        return "False"
    return "Unknown"


def diagnosis_conditions(reports: Mapping[str, Report]) -> list[Condition]:
    """One condition per type from every pod's report (pod name → findings or an error)."""
    if not reports:
        return [
            _condition(t, "Unknown", "NoProxyPods", "no ready proxy pod has reported yet")
            for t in CONDITION_TYPES
        ]
    per_type: dict[str, tuple[int, str, dict[str, str]]] = {}
    for pod, report in sorted(reports.items()):
        if isinstance(report, str):
            found = _unknown(
                "DiagnosisUnavailable", f"cannot read the diagnostics of this pod: {report}"
            )
        else:
            try:
                found = conditions([Finding.from_dict(doc) for doc in report])
            except ValueError as exc:
                found = _unknown(
                    "DiagnosisUnreadable",
                    f"the pod's diagnostics are not in the expected form: {exc}",
                )
        for cond in found:
            rank = _RANK.get(cond["status"], 1)
            best = per_type.get(cond["type"])
            if best is None or rank < best[0]:
                per_type[cond["type"]] = (rank, pod, cond)
    out = []
    for ctype in CONDITION_TYPES:
        _, pod, cond = per_type[ctype]
        message = cond["message"]
        if len(reports) > 1:
            message = f"pod {pod}: {message}"
        out.append(_condition(ctype, _status(cond["status"]), cond["reason"], message))
    return out


def _unknown(reason: str, message: str) -> list[dict[str, str]]:
    """Every condition type Unknown, for a pod whose report cannot be used."""
    return [
        {"type": t, "status": "Unknown", "reason": reason, "message": message}
        for t in CONDITION_TYPES
    ]


def _condition(type_: str, status: ConditionStatus, reason: str, message: str) -> Condition:
    return Condition(
        type_,
        status,
        reason,
        message,
        event="Warning" if status == "False" else "Normal",
        event_message=f"{type_}={status}: {message}",
    )


#: How many (identity, reason) pairs `status.pinning` keeps.
PINNING_TOP = 10


def pinning_summary(
    reports: Mapping[str, Sequence[Mapping[str, Any]]], top: int = PINNING_TOP
) -> list[dict[str, Any]]:
    """The top identities by pinning reason across pods (pod name → its `/pinning` list):
    statements summed per (identity, reason), most first. No SQL text: only counts."""
    totals: dict[tuple[str, str], int] = {}
    for entries in reports.values():
        for entry in entries:
            try:
                key = (str(entry["identity"]), str(entry["reason"]))
                count = int(entry["statements"])
            except (KeyError, TypeError, ValueError):
                continue
            totals[key] = totals.get(key, 0) + count
    ranked = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return [
        {"identity": ident, "reason": reason, "statements": count}
        for (ident, reason), count in ranked
    ]
