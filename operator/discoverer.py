"""DatabaseDiscovery's I/O: read the object, AWS and the namespace's Databases, apply the plan.

`Discoverer.run` is one round, called by the kopf daemon of each DatabaseDiscovery
(handlers.py) in a thread; it returns how long to wait before the next one. Everything it
decides comes from `discovery.plan` (pure); this module only reads, writes and reports:

- `Synced` True after a round that read AWS and applied the plan; `Ready` follows it, and
  says so when conflicts or invalid templates leave something out;
- `AccessDenied` names the missing permission and prints the least-privilege policy
  (`rdsgate iam policy --discovery`); nothing changes in the namespace meanwhile;
- `Throttled`: AWS asked to slow down; the next try is after an exponential back-off
  (1 s, 2 s, 4 s, … capped at spec.interval), said in the condition's message.

A failed read of AWS never marks a Database gone: only a successful read that no longer
lists an endpoint does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any

from rdsgate.proxy.access import utcnow

from . import discovery, iam, inventory
from .kube import DATABASE, DATABASE_DISCOVERY, Kube, KubeError
from .objects import meta_of, name_of
from .status import (
    Condition,
    EventSpec,
    InvalidSpec,
    condition_events,
    merge_conditions,
    timestamp,
)

log = logging.getLogger(__name__)

DISCOVERY = DATABASE_DISCOVERY
#: The first back-off after a throttled or failed read, doubled each time up to the interval.
BACKOFF_START = 1.0
#: How soon to try again after the Kubernetes API failed us.
KUBE_RETRY = 10.0

Reader = Callable[..., inventory.Inventory]


def discovery_policy_text(spec: discovery.DiscoverySpec) -> str:
    """The least-privilege IAM policy for this discovery's reads, as `rdsgate iam policy
    --discovery` prints it."""
    policy = iam.discovery_policy(spec.assume_role_arn, regions=spec.regions)
    return json.dumps(policy, indent=2)


@dataclass
class Discoverer:
    kube: Kube
    read: Reader = inventory.read_inventory
    #: Called with (namespace, name) after a Database's gone-from-AWS mark was set or
    #: removed: kopf does not see changes of rdsgate.dev/ annotations (its own prefix), so
    #: the handler passes the Database reconcile here, which puts the mark into Ready.
    marked: Callable[[str, str], None] | None = None
    #: (namespace, name) → consecutive failed reads (for the back-off).
    _failures: dict[tuple[str, str], int] = field(default_factory=dict)

    def run(self, namespace: str, name: str) -> float | None:
        """One round; the seconds until the next one, or None when the object is gone."""
        obj = self.kube.get(DISCOVERY, namespace, name)
        if obj is None or meta_of(obj).get("deletionTimestamp"):
            self._failures.pop((namespace, name), None)
            return None
        try:
            spec = discovery.parse_spec(obj)
        except InvalidSpec as exc:
            self._report(obj, {}, _failed("InvalidSpec", exc.message))
            return KUBE_RETRY * 30
        try:
            found = self.read(
                spec.regions,
                assume_role_arn=spec.assume_role_arn,
                external_id=spec.external_id,
            )
        except inventory.AwsAccessDenied as exc:
            delay = self._backoff(namespace, name, spec.interval)
            message = (
                f"{exc.message}. The operator's AWS identity (or spec.aws.assumeRoleArn) needs "
                f"{exc.action}; grant it this policy (rdsgate iam policy --discovery): "
                f"{discovery_policy_text(spec)}"
            )
            self._report(
                obj,
                {},
                [
                    Condition("AccessDenied", "True", "AccessDenied", message, event="Warning"),
                    *_failed("AccessDenied", f"AWS refused {exc.action}; see AccessDenied"),
                    _not_throttled(),
                ],
            )
            return delay
        except inventory.AwsThrottled as exc:
            delay = self._backoff(namespace, name, spec.interval)
            at = timestamp(utcnow() + timedelta(seconds=delay))
            self._report(
                obj,
                {"nextSyncTime": at},
                [
                    Condition(
                        "Throttled",
                        "True",
                        "Throttled",
                        f"{exc.message}; backing off, next try in {delay:g}s (at {at})",
                        event="Warning",
                    ),
                    Condition("Synced", "False", "Throttled", "AWS throttled the last read"),
                    Condition("Ready", "False", "Throttled", "AWS throttled the last read"),
                ],
            )
            return delay
        except inventory.InventoryError as exc:
            delay = self._backoff(namespace, name, spec.interval)
            self._report(
                obj,
                {},
                [
                    *_failed("AwsUnavailable", f"{exc.message}; next try in {delay:g}s"),
                    _not_throttled(),
                ],
            )
            return delay
        self._failures.pop((namespace, name), None)
        return self._sync(obj, spec, found)

    def _backoff(self, namespace: str, name: str, interval: float) -> float:
        n = self._failures.get((namespace, name), 0)
        self._failures[(namespace, name)] = n + 1
        return float(min(interval, BACKOFF_START * 2**n))

    def _sync(
        self, obj: Mapping[str, Any], spec: discovery.DiscoverySpec, found: inventory.Inventory
    ) -> float:
        namespace = str(meta_of(obj).get("namespace") or "default")
        databases = self.kube.list(DATABASE, namespace)
        now = utcnow()
        try:
            plan = discovery.plan(obj, found, databases, now)
        except InvalidSpec as exc:
            self._report(obj, {}, [*_failed("InvalidSpec", exc.message), _not_throttled()])
            return spec.interval
        errors = self._apply(obj, plan)
        fields = {
            **plan.status,
            "lastSyncTime": timestamp(now),
            "nextSyncTime": timestamp(now + timedelta(seconds=spec.interval)),
        }
        wanted = [
            Condition("AccessDenied", "False", "Allowed", "AWS answered every call"),
            _not_throttled(),
        ]
        if errors:
            wanted += _failed("ApplyFailed", "; ".join(errors))
        else:
            wanted.append(
                Condition(
                    "Synced",
                    "True",
                    "Synced",
                    f"{plan.status['found']} endpoints found, {plan.status['databases']} "
                    "Databases kept",
                )
            )
            if plan.conflicts:
                wanted.append(
                    Condition(
                        "Ready",
                        "False",
                        "NameConflict",
                        "; ".join(c.message for c in plan.conflicts),
                        event="Warning",
                    )
                )
            else:
                wanted.append(Condition("Ready", "True", "Synced", "in step with AWS"))
        self._report(obj, fields, wanted)
        delay = spec.interval
        if plan.due is not None:
            delay = min(delay, max(0.1, (plan.due - utcnow()).total_seconds() + 0.05))
        return KUBE_RETRY if errors else delay

    def _apply(self, owner: Mapping[str, Any], plan: discovery.Plan) -> list[str]:
        """Create, update, mark and delete; the API errors met (the rest is still done)."""
        namespace = str(meta_of(owner).get("namespace") or "default")
        errors: list[str] = []

        def attempt(step: Callable[[], object]) -> None:
            try:
                step()
            except KubeError as exc:
                errors.append(str(exc))

        for desired in plan.create:
            attempt(partial(self._created, owner, desired))
        for desired in plan.update:
            attempt(partial(self._updated, desired))
        for name, patch in plan.mark_gone.items():
            attempt(partial(self._marked, owner, namespace, name, patch))
        for name in plan.delete:
            attempt(partial(self._deleted, owner, namespace, name))
        return errors

    def _created(self, owner: Mapping[str, Any], desired: Mapping[str, Any]) -> None:
        self.kube.create(desired)
        self.kube.post_event(
            owner,
            EventSpec(
                "Normal",
                "DatabaseCreated",
                f"created Database {name_of(desired)} for {desired['spec']['endpoint']}",
            ),
        )

    def _updated(self, desired: Mapping[str, Any]) -> None:
        meta = desired["metadata"]
        current = self.kube.get(DATABASE, meta["namespace"], meta["name"])
        unmarked = current is not None and discovery.ANNOTATION_GONE in (
            meta_of(current).get("annotations") or {}
        )
        self.kube.apply(desired, current, known=True)
        if unmarked and self.marked is not None:
            self.marked(meta["namespace"], meta["name"])

    def _marked(
        self, owner: Mapping[str, Any], namespace: str, name: str, patch: Mapping[str, Any]
    ) -> None:
        self.kube.patch(DATABASE, namespace, name, patch)
        if self.marked is not None:
            self.marked(namespace, name)
        self.kube.post_event(
            owner,
            EventSpec(
                "Warning",
                "GoneFromAWS",
                f"the RDS Proxy endpoint of Database {name} is no longer found; it is deleted "
                "after spec.deletionGracePeriod unless it comes back",
            ),
        )

    def _deleted(self, owner: Mapping[str, Any], namespace: str, name: str) -> None:
        if self.kube.delete(DATABASE, namespace, name):
            self.kube.post_event(
                owner,
                EventSpec(
                    "Normal",
                    "DatabaseDeleted",
                    f"deleted Database {name}: its endpoint stayed gone from AWS for the "
                    "deletion grace period",
                ),
            )

    def _report(
        self, obj: Mapping[str, Any], fields: Mapping[str, Any], wanted: Sequence[Condition]
    ) -> None:
        """Merge the conditions, set the fields, post the Events of what changed."""
        status = obj.get("status") if isinstance(obj.get("status"), Mapping) else {}
        generation = meta_of(obj).get("generation")
        generation = generation if isinstance(generation, int) else None
        conditions = merge_conditions(
            (status or {}).get("conditions"), wanted, generation=generation, now=utcnow()
        )
        self.kube.patch_status(
            obj, {**fields, "conditions": conditions, "observedGeneration": generation}
        )
        for event in condition_events((status or {}).get("conditions"), wanted):
            self.kube.post_event(obj, event)


def _failed(reason: str, message: str) -> list[Condition]:
    return [
        Condition("Synced", "False", reason, message, event="Warning"),
        Condition("Ready", "False", reason, message),
    ]


def _not_throttled() -> Condition:
    return Condition("Throttled", "False", "NotThrottled", "AWS answered without throttling")
