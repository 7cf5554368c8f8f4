"""May this user bind this Role? Asked of the API server with SubjectAccessReviews.

RBAC is the API server's to decide (Roles, ClusterRoles, aggregation, `resourceNames`,
`*`, webhook authorizers on EKS): the operator never evaluates rules itself, it asks with
the user and groups the API server authenticated. Answers are remembered per (user,
groups, namespace, Role) so that compiling a namespace of many Tokens costs one review per
distinct requester and Role, not one per Token per compile; callers say how old an answer
they accept (0: ask now). When the API server cannot answer, the last answer stands (an
outage must not revoke everyone's access) and, with none, the verdict is unknown.
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


@dataclass
class BindChecker:
    kube: Kube
    clock: Callable[[], float] = time.monotonic
    _answers: dict[tuple[str, tuple[str, ...], str, str], tuple[float, Verdict]] = field(
        default_factory=dict
    )
    _guard: threading.Lock = field(default_factory=threading.Lock)
    #: Whether a review failed since the last `take_failures` (the caller retries soon).
    _failed: bool = False

    def may_bind(
        self,
        requester: Requester,
        namespace: str,
        role: str,
        *,
        max_age: float = 0.0,
        uid: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Verdict:
        key = (requester.username, tuple(sorted(requester.groups)), namespace, role)
        now = self.clock()
        with self._guard:
            cached = self._answers.get(key)
        if cached is not None and now - cached[0] < max_age:
            return cached[1]
        try:
            allowed, reason = self.kube.review_access(
                requester.username,
                requester.groups,
                {
                    "namespace": namespace,
                    "verb": "bind",
                    "group": ROLE.group,
                    "resource": ROLE.plural,
                    "name": role,
                },
                uid=uid,
                extra=extra,
            )
        except KubeError as exc:
            log.warning(
                "SubjectAccessReview for %s on Role %s/%s failed: %s",
                requester.username,
                namespace,
                role,
                exc,
            )
            with self._guard:
                self._failed = True
            if cached is not None:
                return cached[1]
            return Verdict(None, f"the API server did not answer a SubjectAccessReview: {exc}")
        verdict = Verdict(allowed, reason)
        with self._guard:
            self._answers[key] = (now, verdict)
        return verdict

    def take_failures(self) -> bool:
        """Whether any review failed since the last call (and forget it)."""
        with self._guard:
            failed, self._failed = self._failed, False
        return failed
