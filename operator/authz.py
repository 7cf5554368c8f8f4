"""May this user bind (request, approve) this Role? Asked of the API server with
SubjectAccessReviews.

RBAC is the API server's to decide (Roles, ClusterRoles, aggregation, `resourceNames`,
`*`, webhook authorizers on EKS): the operator never evaluates rules itself, it asks with
the user and groups the API server authenticated. Answers are remembered per (user,
groups, namespace, Role, verb), so a compile reuses answers younger than the recheck interval;
callers say how old an answer they accept (0: ask now).

When the API server does not answer (unreachable, a 5xx, or the operator lost its right
to ask), an earlier answer stands for at most `stale_limit` seconds and the verdict says
the asking failed; past that, or with no earlier answer, or at admission (which never
takes an old answer), the verdict is unknown. What an unknown verdict does to a grant
is the compile's decision (access.py): a grant in force stands, a new one waits.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .admission import Requester, Verdict
from .kube import ROLE, Kube, KubeError

log = logging.getLogger(__name__)

AnswerKey = tuple[str, tuple[str, ...], str, str, str]


@dataclass
class BindChecker:
    kube: Kube
    clock: Callable[[], float] = time.monotonic
    _answers: dict[AnswerKey, tuple[float, Verdict]] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def may(
        self,
        requester: Requester,
        namespace: str,
        role: str,
        verb: str = "bind",
        *,
        max_age: float = 0.0,
        stale_limit: float = 0.0,
        uid: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Verdict:
        key = (requester.username, tuple(sorted(requester.groups)), namespace, role, verb)
        now = self.clock()
        with self._guard:
            cached = self._answers.get(key)
        if cached is not None and now - cached[0] < max_age:
            return cached[1]
        try:
            allowed, reason, error = self.kube.review_access(
                requester.username,
                requester.groups,
                {
                    "namespace": namespace,
                    "verb": verb,
                    "group": ROLE.group,
                    "resource": ROLE.plural,
                    "name": role,
                },
                uid=uid,
                extra=extra,
            )
        except KubeError as exc:
            return self._failed(key, cached, now, stale_limit, f"{exc}", exc.status)
        if error and not allowed:
            # An authorizer erred before one said no: not an answer to act on.
            return self._failed(key, cached, now, stale_limit, f"evaluationError: {error}", 0)
        verdict = Verdict(allowed, reason)
        with self._guard:
            self._answers[key] = (now, verdict)
        return verdict

    def _failed(
        self,
        key: AnswerKey,
        cached: tuple[float, Verdict] | None,
        now: float,
        stale_limit: float,
        what: str,
        status: int,
    ) -> Verdict:
        user, _, namespace, role, verb = key
        if 400 <= status < 500:
            log.error(
                "the API server refused the operator's SubjectAccessReview (%s): grant it "
                "create on subjectaccessreviews.authorization.k8s.io, as the chart does",
                what,
            )
        else:
            log.warning(
                "SubjectAccessReview for %s to %s Role %s/%s failed: %s",
                user,
                verb,
                namespace,
                role,
                what,
            )
        reason = f"the API server did not answer a SubjectAccessReview: {what}"
        if cached is not None and now - cached[0] < stale_limit:
            return Verdict(cached[1].allowed, cached[1].reason, failed=True)
        return Verdict(None, reason, failed=True)
