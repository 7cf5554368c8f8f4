"""Findings: the outcome of each check, and the Database conditions they decide.

Every check returns a `Finding` (JSON-serialisable: check id, status pass/fail/warn/skip,
summary, evidence, fix, and a CamelCase reason for Kubernetes conditions). `CHECK_TITLES`
lists the checks in the order `diagnose()` runs them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    PASS = "pass"  # noqa: S105
    FAIL = "fail"
    WARN = "warn"
    SKIP = "skip"


@dataclass(frozen=True)
class Finding:
    """The outcome of one check, as the CLI prints it and the operator turns into conditions."""

    check: str
    status: Status
    summary: str
    reason: str
    evidence: Mapping[str, Any] = field(default_factory=dict)
    fix: str | None = None

    @property
    def title(self) -> str:
        return CHECK_TITLES.get(self.check, self.check)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Finding:
        """A finding as `to_dict` wrote it (what /diagnose serves); ValueError if malformed."""
        return cls(
            check=str(doc.get("check", "")),
            status=Status(str(doc.get("status", "skip"))),
            summary=str(doc.get("summary", "")),
            reason=str(doc.get("reason", "")),
            evidence=dict(doc.get("evidence") or {}),
            fix=doc.get("fix"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "title": self.title,
            "status": self.status.value,
            "reason": self.reason,
            "summary": self.summary,
            "evidence": dict(self.evidence),
            "fix": self.fix,
        }


CHECK_TITLES: dict[str, str] = {
    "credentials": "AWS credentials",
    "imds": "Instance metadata (IMDSv2)",
    "assume-role": "Assume role",
    "endpoint-dns": "Endpoint DNS",
    "endpoint-tcp": "Endpoint TCP",
    "upstream-tls": "Upstream TLS",
    "rds-proxy-auth": "RDS Proxy authentication",
    "rds-proxy-targets": "RDS Proxy targets",
    "iam-login": "IAM login",
    "iam-policy-size": "IAM policy size",
}
CHECKS: tuple[str, ...] = tuple(CHECK_TITLES)

#: Database status conditions and the checks that decide each.
CONDITION_CHECKS: dict[str, tuple[str, ...]] = {
    "CredentialsAvailable": ("credentials", "imds", "assume-role"),
    "UpstreamReachable": ("endpoint-dns", "endpoint-tcp", "upstream-tls"),
    "UpstreamAuthenticated": ("rds-proxy-auth", "iam-login"),
    "TargetsHealthy": ("rds-proxy-targets",),
}


def failed(findings: Iterable[Finding]) -> bool:
    return any(f.status is Status.FAIL for f in findings)


def conditions(findings: Sequence[Finding]) -> list[dict[str, str]]:
    """Findings as Kubernetes conditions (type, status, reason, message), one per type.

    False when a deciding check failed, True when one passed (reason and message of a
    warning, if any), Unknown when all were skipped or none ran. The caller adds
    `lastTransitionTime` and `observedGeneration`.
    """
    out: list[dict[str, str]] = []
    for ctype, checks in CONDITION_CHECKS.items():
        relevant = [f for f in findings if f.check in checks]
        fails = [f for f in relevant if f.status is Status.FAIL]
        warns = [f for f in relevant if f.status is Status.WARN]
        passes = [f for f in relevant if f.status is Status.PASS]
        if fails:
            status, chosen = "False", fails
        elif warns or passes:
            status, chosen = "True", warns or passes
        else:
            status, chosen = "Unknown", relevant
        if chosen:
            reason = chosen[0].reason
            message = " ".join(f.summary for f in chosen)
        else:
            reason, message = "NotChecked", "no check has run yet"
        out.append({"type": ctype, "status": status, "reason": reason, "message": message})
    return out
