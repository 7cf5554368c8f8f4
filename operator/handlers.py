"""The kopf handlers, and the reconcilers they call: read, compute with the pure modules, apply.

Two reconcilers, each level-based (they look at the whole current state, never at the
event that woke them), so any trigger may call them any number of times:

- `reconcile_database` renders and applies one Database's children and sets its status; of
  the access it only needs its own access Secret to exist (a compile creates it if not);
- `sync_access` compiles a namespace's Roles and Tokens into the access Secret of every
  Database there, writes Token Secrets, and sets Role and Token status. It runs when a
  Role, Token or Database is created, changed or deleted, when a Secret it wrote is edited
  or deleted, and once per resync interval — not on every Database trigger.

Problems (`status.Problem`) become conditions and Events here and only here; API errors
become an `ApplyFailed` problem and a kopf retry (or, from watch events, a log line and the
next resync). One Token whose Secret cannot be written gets that problem and no grant; the
rest of its namespace is compiled and written all the same. Runs are serialised and
coalesced per Database and per namespace, so the concurrent triggers kopf delivers (sync
handlers run in threads) neither race on the same objects nor pile up; the diagnosis timer
takes the Database's lock too, so it and the reconcile never overwrite each other's
conditions.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kopf
import yaml

from rdsgate.proxy.access import RoleOptions, access_bytes, secret_digest, utcnow
from rdsgate.proxy.auth import client_certificate_uri
from rdsgate.proxy.errors import ConfigError

from . import access, admission, diagnosis, pki, render, webhooks
from .authz import BindChecker
from .ca import CA_SECRET_NAME, ca_secret, is_current, keypair_from_secret, secret_bytes
from .discoverer import Discoverer
from .kube import (
    CERTIFICATE,
    CLUSTER_ROLE_BINDING,
    CONFIG_MAP,
    DATABASE,
    DATABASE_DISCOVERY,
    DEPLOYMENT,
    HPA,
    PDB,
    POD,
    ROLE,
    SECRET,
    SERVICE,
    SERVICE_ACCOUNT,
    TOKEN,
    Kind,
    Kube,
    KubeError,
    kind_of,
    owned_by,
)
from .metrics import OperatorMetrics
from .objects import labels_of, meta_of, name_of
from .status import (
    EVERY_CHANGE,
    STATUS_AND_REASON,
    ApplyFailed,
    Condition,
    EventSpec,
    InvalidSpec,
    NameConflict,
    Problem,
    ReferenceNotFound,
    SecretConflict,
    condition_events,
    find,
    merge_conditions,
    parse_timestamp,
)

log = logging.getLogger(__name__)

CLIENT_CERT_DAYS = 90
RETRY_DELAY = 10.0
DIAGNOSE_TIMEOUT = 3.0
#: The longest name the API server takes (a DNS subdomain).
NAME_MAX = 253
#: Metric label of each reconciler's coalescing key.
_KINDS = {"db": "database", "ns": "access"}


@dataclass(frozen=True)
class AdmissionConfig:
    """Where the admission webhooks are served, and how the API server is told of them."""

    listen: tuple[str, int]
    #: Register the configurations with this Service or URL; None: someone else does (the
    #: chart with cert-manager's cainjector, or an administrator).
    target: webhooks.Target | None = None
    #: tls.crt/tls.key (and ca.crt) kept by someone else (cert-manager); None: the CA's.
    cert_dir: Path | None = None
    configuration: str = webhooks.DEFAULT_CONFIGURATION
    #: How long the API server waits for an answer (the configurations' timeoutSeconds).
    timeout: int = webhooks.TIMEOUT_SECONDS


@dataclass(frozen=True)
class Config:
    """How the operator was started (flags and environment, see main.py)."""

    proxy_image: str
    operator_namespace: str
    namespaces: tuple[str, ...] = ()
    cluster_domain: str = "cluster.local"
    resync_interval: float = 300.0
    #: How often the proxies' diagnostics are collected into Database conditions.
    diagnose_interval: float = 60.0
    #: The ClusterRoleBinding (granting TokenReview) whose subjects are the proxies'
    #: ServiceAccounts; None leaves ServiceAccount-token log-ins to whoever grants it.
    tokenreview_binding: str | None = None
    #: Images a Database may name in spec.proxy.image (a repository admits its every tag
    #: and digest); empty: the repository of proxy_image.
    allowed_proxy_images: tuple[str, ...] = ()
    #: The Token admission webhooks; None: not served (Tokens are not gated).
    admission: AdmissionConfig | None = None
    #: At least this often (seconds) every requester's `bind` is asked again.
    access_recheck_interval: float = 300.0
    #: Tokens without a stamped requester (from before the webhooks) grant nothing.
    require_verified_requester: bool = False
    #: A request waiting for approval longer than this (seconds) expires.
    request_timeout: float = 3600.0

    @property
    def settings(self) -> render.Settings:
        return render.Settings(self.proxy_image, self.cluster_domain, self.allowed_proxy_images)


class Retry(Exception):
    """The reconcile hit API errors; its outcome is recorded, and it should run again soon."""


@dataclass
class SyncOutcome:
    """What a namespace's access sync leaves to its callers: the problems of each Database
    (its access Secret), and the API errors that call for a retry."""

    database_problems: dict[str, list[Problem]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    #: Databases whose AccessBundleTooLarge condition must change: the bundle's problem (or
    #: None: it was written), its size in bytes and its number of grants.
    bundle_reports: dict[str, tuple[render.AccessBundleTooLarge | None, int, int]] = field(
        default_factory=dict
    )
    #: Which compile of its namespace this was (a later one's reports supersede these).
    compile: int = 0

    def raise_errors(self) -> None:
        if self.errors:
            raise Retry("; ".join(self.errors))


@dataclass
class _Slot:
    lock: threading.Lock = field(default_factory=threading.Lock)
    queued: bool = False


@dataclass
class Reconciler:
    kube: Kube
    config: Config
    ca: pki.KeyPair
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    binds: BindChecker = field(init=False)
    #: Signs and checks the requester stamp (derived from the CA key).
    stamp_key: bytes = field(init=False)
    _slots: dict[tuple[str, ...], _Slot] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)
    #: (kind, namespace, name) → the resourceVersion of the operator's last write of it, so
    #: that the watch event of its own write does not trigger another reconcile.
    _written: dict[tuple[str, str, str], str] = field(default_factory=dict)
    #: namespace → when its access was last compiled (time.monotonic()).
    _synced_at: dict[str, float] = field(default_factory=dict)
    #: namespace → when its requesters' `bind` was last asked afresh (time.monotonic()).
    _rechecked_at: dict[str, float] = field(default_factory=dict)

    #: Namespaces whose next compile is to ask every requester's `bind` afresh.
    _fresh_wanted: set[str] = field(default_factory=set)
    #: namespace → how many compiles of it have run.
    _compiles: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.binds = BindChecker(self.kube)
        self.stamp_key = admission.stamp_key(self.ca.key_pem)

    def _slot(self, key: tuple[str, ...]) -> _Slot:
        with self._guard:
            return self._slots.setdefault(key, _Slot())

    @contextmanager
    def _lock(self, *key: str) -> Iterator[None]:
        with self._slot(key).lock:
            yield

    def _coalesced(self, key: tuple[str, ...], run: Callable[[], object]) -> None:
        """Run a level-based reconcile once per burst of triggers.

        One run at a time per key; of the triggers that arrive meanwhile, one waits and
        the rest return at once: the waiting run reads the state they were woken by.
        """
        slot = self._slot(key)
        with self._guard:
            if slot.queued:
                return
            slot.queued = True
        with slot.lock:
            with self._guard:
                slot.queued = False
            with self.metrics.reconcile(_KINDS[key[0]]):
                run()

    # The CA

    @staticmethod
    def load_ca(kube: Kube, namespace: str) -> pki.KeyPair:
        """The operator's CA from its Secret, created (once, by whoever wins) if absent."""
        current = kube.get(SECRET, namespace, CA_SECRET_NAME)
        if current is None:
            try:
                current = kube.create(ca_secret(namespace, pki.make_ca("rdsgate CA")))
                log.info("created the CA Secret %s/%s", namespace, CA_SECRET_NAME)
            except KubeError as exc:
                if exc.status != 409:
                    raise
                current = kube.get(SECRET, namespace, CA_SECRET_NAME)
        pair = keypair_from_secret(current)
        if pair is None:
            raise kopf.PermanentError(
                f"Secret {namespace}/{CA_SECRET_NAME} holds no usable CA (tls.crt and tls.key, "
                "PEM); delete it and the operator creates a new CA on its next start"
            )
        return pair

    # Status and Events, in one place

    def _set_status(
        self,
        obj: Mapping[str, Any],
        fields: Mapping[str, Any],
        wanted: Sequence[Condition],
        *,
        event_key: Sequence[str] = EVERY_CHANGE,
        observe: bool = True,
    ) -> None:
        """Merge `wanted` into the conditions `obj` (a fresh read) carries, set `fields`, and
        post the Events the changes call for. `observe`: this run acted on the object's
        generation, so it becomes `status.observedGeneration`."""
        status = obj.get("status")
        status = status if isinstance(status, Mapping) else {}
        generation = meta_of(obj).get("generation")
        generation = generation if isinstance(generation, int) else None
        conditions = merge_conditions(
            status.get("conditions"), wanted, generation=generation, now=utcnow()
        )
        patch = {**fields, "conditions": conditions}
        if observe:
            patch["observedGeneration"] = generation
        self.kube.patch_status(obj, patch)
        for event in condition_events(status.get("conditions"), wanted, key=event_key):
            self.kube.post_event(obj, event)

    # The operator's own writes

    @staticmethod
    def _key(obj: Mapping[str, Any]) -> tuple[str, str, str]:
        meta = meta_of(obj)
        return str(obj.get("kind")), str(meta.get("namespace")), str(meta.get("name"))

    def _remember(self, result: str, obj: Mapping[str, Any]) -> None:
        version = meta_of(obj).get("resourceVersion")
        if result != "unchanged" and version:
            with self._guard:
                self._written[self._key(obj)] = str(version)

    def wrote(self, obj: Mapping[str, Any]) -> bool:
        """Whether `obj` (from a watch event) is exactly what the operator last wrote."""
        version = meta_of(obj).get("resourceVersion")
        with self._guard:
            return version is not None and self._written.get(self._key(obj)) == str(version)

    # Owned objects

    def _apply_owned(
        self,
        desired: Mapping[str, Any],
        owner: Mapping[str, Any],
        problems: list[Problem],
        current: Mapping[str, Any] | None = None,
        *,
        adopt: Callable[[Mapping[str, Any]], bool] | None = None,
        known: bool = False,
    ) -> dict[str, Any] | None:
        """Apply a child of `owner`, unless a same-named object belongs to someone else.
        `known`: `current` was just read (None: there is none)."""
        meta = desired["metadata"]
        kind = desired["kind"]
        if current is None and not known:
            current = self.kube.get(kind_of(desired), meta["namespace"], meta["name"])
        uid = str(meta_of(owner).get("uid"))
        if current is not None and not owned_by(current, uid) and not (adopt and adopt(current)):
            problems.append(_name_conflict(kind, meta["name"], owner))
            return None
        result, obj = self.kube.apply(desired, current, known=True)
        self._remember(result, obj)
        return obj

    def _prune(self, kind: Kind, namespace: str, name: str, owner_uid: str) -> None:
        """Delete a child the owner no longer wants (only if it is the owner's)."""
        current = self.kube.get(kind, namespace, name)
        if current is not None and owned_by(current, owner_uid):
            self.kube.delete(kind, namespace, name)

    # Databases

    def reconcile_database(self, namespace: str, name: str) -> None:
        """Bring one Database's children to what it says, and report in its status."""
        self._coalesced(("db", namespace, name), lambda: self._reconcile_database(namespace, name))

    def _reconcile_database(self, namespace: str, name: str) -> None:
        obj = self.kube.get(DATABASE, namespace, name)
        if obj is None or meta_of(obj).get("deletionTimestamp"):
            with contextlib.suppress(KeyError):  # a deleted Database leaves no series behind
                self.metrics.database_ready.remove(namespace, name)
            return
        db = render.Database(obj)
        problems: list[Problem] = []
        deployment: Mapping[str, Any] | None = None
        try:
            deployment = self._apply_children(db, problems)
        except Problem as exc:
            problems.append(exc)
        except KubeError as exc:
            problems.append(ApplyFailed(str(exc)))
        failed = any(isinstance(p, ApplyFailed) for p in problems)
        if deployment is None:
            try:
                deployment = self.kube.get(DEPLOYMENT, namespace, db.child_name)
            except KubeError:
                deployment = None
        if deployment is not None and not owned_by(deployment, db.uid):
            deployment = None
        fields, conditions = render.database_status(db, deployment, problems)
        self._set_status(obj, fields, conditions)
        (ready,) = [c for c in conditions if c.type == "Ready"]
        if ready.reason == "ScaledToZero":  # on purpose: nothing to alert on
            with contextlib.suppress(KeyError):
                self.metrics.database_ready.remove(namespace, name)
        else:
            self.metrics.database_ready.labels(namespace, name).set(float(ready.status == "True"))
        if failed:
            raise Retry("; ".join(p.message for p in problems if isinstance(p, ApplyFailed)))

    def _apply_children(
        self, db: render.Database, problems: list[Problem]
    ) -> dict[str, Any] | None:
        """Apply every child; a spec the operator refuses raises before anything is applied
        (the running proxies keep the last good config)."""
        config = render.proxy_config(db)
        settings = self.config.settings
        render.proxy_image(db, settings)
        hpa = render.horizontal_pod_autoscaler(db)
        ns, obj = db.namespace, db.obj
        self._ensure_access_secret(db, problems)

        service_account = render.service_account(db)
        if service_account is not None:
            self._apply_owned(service_account, obj, problems)
        else:
            sa_name = db.service_account_name()
            if self.kube.get(SERVICE_ACCOUNT, ns, sa_name) is None:
                problems.append(
                    ReferenceNotFound(
                        f"spec.proxy.serviceAccount.name: ServiceAccount {sa_name!r} does not "
                        f"exist in namespace {ns!r}; create it, or drop the name and let the "
                        "operator generate one"
                    )
                )
            self._prune(SERVICE_ACCOUNT, ns, db.child_name, db.uid)

        self._apply_tls(db, problems)
        cm_data = render.config_map_data(db, config, self.ca.cert_pem)
        self._apply_owned(render.config_map(db, cm_data), obj, problems)
        # Read first: with autoscaling, only a new Deployment gets replicas from the operator.
        current = self.kube.get(DEPLOYMENT, ns, db.child_name)
        deployment = self._apply_owned(
            render.deployment(db, settings, render.config_hash(cm_data), creating=current is None),
            obj,
            problems,
            current,
            known=True,
        )
        self._apply_owned(render.service(db), obj, problems)
        read_only = render.read_only_service(db)
        if read_only is not None:
            self._apply_owned(read_only, obj, problems)
        else:
            self._prune(SERVICE, ns, db.read_only_service_name, db.uid)
        pdb = render.pod_disruption_budget(db)
        if pdb is not None:
            self._apply_owned(pdb, obj, problems)
        else:
            self._prune(PDB, ns, db.child_name, db.uid)
        if hpa is not None:
            self._apply_owned(hpa, obj, problems)
        else:
            self._prune(HPA, ns, db.child_name, db.uid)
        return deployment

    def _ensure_access_secret(self, db: render.Database, problems: list[Problem]) -> None:
        """The Database's access Secret: written by the namespace's compile (run here if the
        Secret is missing), never by the Database's own reconcile."""
        current = self.kube.get(SECRET, db.namespace, db.access_secret_name)
        if current is None:
            outcome = self._sync_access(db.namespace)
            problems.extend(outcome.database_problems.get(db.name, []))
        elif not owned_by(current, db.uid):
            problems.append(_name_conflict("Secret", db.access_secret_name, db.obj))

    def _apply_tls(self, db: render.Database, problems: list[Problem]) -> None:
        """The server certificate's Secret, or the cert-manager Certificate that writes it."""
        ns, names = db.namespace, render.server_names(db, self.config.cluster_domain)
        current = self.kube.get(SECRET, ns, db.tls_secret_name)
        if db.issuer_ref:
            try:
                self._apply_owned(render.certificate(db, names), db.obj, problems)
            except KubeError as exc:
                if exc.status != 404:
                    raise
                raise ReferenceNotFound(
                    "spec.proxy.issuerRef: cert-manager is not installed (no "
                    "certificates.cert-manager.io API); install it or remove issuerRef to use "
                    "the operator's CA"
                ) from None
            return

        try:
            self._prune(CERTIFICATE, ns, db.child_name, db.uid)
        except KubeError as exc:
            if exc.status != 404:
                raise
        existing = keypair_from_secret(current)
        pair = render.server_keypair(existing, self.ca, names, utcnow())
        desired = render.tls_secret(db, pair, self.ca.cert_pem)
        self._apply_owned(
            desired,
            db.obj,
            problems,
            current,
            adopt=lambda obj: bool(
                (meta_of(obj).get("annotations") or {}).get("cert-manager.io/certificate-name")
                == db.child_name
            ),
        )

    # What the proxies report

    def diagnose_database(self, namespace: str, name: str) -> None:
        """Folds the ready proxy pods' /diagnose findings into the Database's conditions."""
        with self.metrics.reconcile("diagnosis"):
            self._diagnose_database(namespace, name)

    def _diagnose_database(self, namespace: str, name: str) -> None:
        obj = self.kube.get(DATABASE, namespace, name)
        if obj is None or meta_of(obj).get("deletionTimestamp"):
            return
        reports: dict[str, diagnosis.Report] = {}
        pinning: dict[str, list[dict[str, Any]]] = {}
        for pod in self.kube.list(POD, namespace, render.Database(obj).selector()):
            address = _pod_metrics_address(pod)
            if address is not None:
                reports[name_of(pod)] = _fetch_diagnosis(address)
                pinned = _fetch_pinning(address)
                if pinned is not None:
                    pinning[name_of(pod)] = pinned
        wanted = diagnosis.diagnosis_conditions(reports)
        # What pins RDS Proxy sessions, since the proxies started; kept when none answered.
        fields = {"pinning": diagnosis.pinning_summary(pinning)} if pinning else {}
        # The reconcile merges into the same conditions list: under its lock, and on a read
        # made under it, each keeps what the other wrote. (The pods are asked outside it.)
        with self._lock("db", namespace, name):
            obj = self.kube.get(DATABASE, namespace, name)
            if obj is None or meta_of(obj).get("deletionTimestamp"):
                return
            self._set_status(obj, fields, wanted, event_key=STATUS_AND_REASON, observe=False)

    def sync_tokenreview_subjects(self, namespace: str) -> None:
        """Keeps this namespace's proxy ServiceAccounts, and only them, in the TokenReview
        ClusterRoleBinding (level-based: recomputed from the Databases that exist)."""
        binding_name = self.config.tokenreview_binding
        if not binding_name:
            return
        wanted = sorted(
            {
                render.Database(db).service_account_name()
                for db in self.kube.list(DATABASE, namespace)
                if not meta_of(db).get("deletionTimestamp")
            }
        )
        for _ in range(5):
            binding = self.kube.get(CLUSTER_ROLE_BINDING, "", binding_name)
            if binding is None:
                log.warning(
                    "ClusterRoleBinding %s does not exist: proxies cannot check ServiceAccount "
                    "tokens (install the Helm chart, or create it granting tokenreviews create)",
                    binding_name,
                )
                return
            subjects = access.tokenreview_subjects(binding.get("subjects"), namespace, wanted)
            if subjects == (binding.get("subjects") or []):
                return
            try:
                self.kube.patch(
                    CLUSTER_ROLE_BINDING,
                    "",
                    binding_name,
                    {
                        "metadata": {"resourceVersion": meta_of(binding).get("resourceVersion")},
                        "subjects": subjects,
                    },
                )
                return
            except KubeError as exc:
                if exc.status != 409:
                    raise
        raise Retry(f"ClusterRoleBinding {binding_name} kept changing under the operator")

    # Access: Roles, Tokens, access Secrets

    def sync_access(self, namespace: str) -> None:
        """Compile the namespace's Roles and Tokens into access Secrets, write Token Secrets.

        Raises Retry, after writing all it could, when the API refused something.
        """
        self._compile_and_report(namespace)

    def _compile_and_report(self, namespace: str) -> None:
        """A coalesced compile, then the access bundle conditions it calls for, each under
        its Database's lock (never taken while holding the namespace's: a Database's
        reconcile holds its own lock when it compiles)."""
        outcomes: list[SyncOutcome] = []
        self._coalesced(
            ("ns", namespace), lambda: outcomes.append(self._sync_access_locked(namespace))
        )
        for outcome in outcomes:
            self._report_bundles(namespace, outcome)
            outcome.raise_errors()

    def _report_bundles(self, namespace: str, outcome: SyncOutcome) -> None:
        """Set the AccessBundleTooLarge condition (and its Event) where it changes."""
        for name, (too_large, size, grants) in sorted(outcome.bundle_reports.items()):
            with self._lock("db", namespace, name):
                with self._guard:
                    if self._compiles.get(namespace) != outcome.compile:
                        return  # a later compile wrote other bundles, and reports on them
                try:
                    obj = self.kube.get(DATABASE, namespace, name)
                    if obj is None or meta_of(obj).get("deletionTimestamp"):
                        continue
                    wanted = render.access_bundle_condition(obj, too_large, size, grants)
                    if wanted is not None:
                        self._set_status(obj, {}, [wanted], observe=False)
                except KubeError as exc:
                    outcome.errors.append(str(exc))

    def resync_access(self, namespace: str, max_age: float) -> None:
        """`sync_access`, unless the namespace was compiled within `max_age` seconds: every
        Database's resync timer calls this, and one compile serves them all."""
        with self._guard:
            last = self._synced_at.get(namespace)
        if last is None or time.monotonic() - last >= max_age:
            self.sync_access(namespace)

    def recheck_access(self, namespace: str, max_age: float) -> None:
        """A compile that asks the API server afresh whether every requester may still bind
        their Roles, unless that was done within `max_age` seconds (every Database's timer
        calls this; one run serves them all). When a compile is already queued, it is the
        one that asks afresh."""
        with self._guard:
            last = self._rechecked_at.get(namespace)
            if last is not None and time.monotonic() - last < max_age:
                return
            self._fresh_wanted.add(namespace)
        self._compile_and_report(namespace)

    def _sync_access(self, namespace: str) -> SyncOutcome:
        with self._lock("ns", namespace):
            return self._sync_access_locked(namespace)

    def _grants_in_force(self, namespace: str) -> set[str]:
        """The identities the namespace's access Secrets grant now (as the proxies see it)."""
        found: set[str] = set()
        for secret in self.kube.list(SECRET, namespace, render.ACCESS_SECRET_SELECTOR):
            try:
                text = access_bytes(secret_bytes(secret, render.ACCESS_KEY) or b"")
                doc = yaml.safe_load(text) or {}
            except (ConfigError, yaml.YAMLError):
                continue
            for grant in doc.get("grants") or [] if isinstance(doc, dict) else []:
                if isinstance(grant, dict) and grant.get("identity"):
                    found.add(str(grant["identity"]))
        return found

    def _requester_checks(
        self,
        tokens: Sequence[Mapping[str, Any]],
        namespace: str,
        now: datetime,
        fresh: bool,
        outcome: SyncOutcome,
    ) -> dict[str, access.RequesterCheck]:
        """What the API server says of each live Token's verified requester: may they still
        bind each of its Roles? Answers younger than the recheck interval are reused unless
        `fresh`; within one run each (requester, Role) is asked once."""
        interval = self.config.access_recheck_interval
        max_age = 0.0 if fresh else interval
        answers: dict[tuple[admission.Requester, str, str], admission.Verdict] = {}

        def ask(requester: admission.Requester, role: str, verb: str) -> admission.Verdict:
            verdict = answers.get((requester, role, verb))
            if verdict is None:
                verdict = self.binds.may(
                    requester, namespace, role, verb, max_age=max_age, stale_limit=3 * interval
                )
                answers[(requester, role, verb)] = verdict
                if verdict.failed:
                    outcome.errors.append(f"SubjectAccessReview failed: {verdict.reason}")
            return verdict

        checks: dict[str, access.RequesterCheck] = {}
        unsure: list[str] = []
        for token in access.live(tokens):
            stamp = admission.read_stamp(token, self.stamp_key)
            decision, _ = admission.read_decision(token, self.stamp_key)
            requester = stamp.requester
            base = access.RequesterCheck(requester, forged=stamp.forged, decision=decision)
            if requester is None:
                checks[name_of(token)] = base
                continue
            if access.expired_by_status(token, now):
                # Asking is moot; a Token still waiting has no status.expiresAt yet.
                checks[name_of(token)] = base
                continue
            lost: list[str] = []
            requested: list[str] = []
            unknown: str | None = None
            for role in access.token_roles(token):
                verdict = ask(requester, role, "bind")
                if verdict.allowed is False:
                    # May they still ask for it (and wait for an approval)?
                    verdict = ask(requester, role, "request")
                    if verdict.allowed:
                        requested.append(role)
                        continue
                if verdict.allowed is None:
                    unknown = unknown or verdict.reason
                elif not verdict.allowed:
                    lost.append(role)
            checks[name_of(token)] = dataclasses.replace(
                base, lost=tuple(lost), requested=tuple(requested), unknown=unknown
            )
            if unknown:
                unsure.append(name_of(token))
        if unsure:
            in_force = self._grants_in_force(namespace)
            for name in unsure:
                if access.identity(namespace, name) in in_force:
                    checks[name] = dataclasses.replace(checks[name], in_force=True)
        return checks

    def _sync_access_locked(self, namespace: str) -> SyncOutcome:
        """Compile the namespace's access and write it out, one object at a time: an object
        the API refuses is reported (on its Token, or its Database) and the rest is written.
        A run after `recheck_access` asks every requester's `bind` of the API server now."""
        with self._guard:
            fresh = namespace in self._fresh_wanted
            self._fresh_wanted.discard(namespace)
        now = utcnow()
        started = time.monotonic()
        databases = self.kube.list(DATABASE, namespace)
        roles = self.kube.list(ROLE, namespace)
        tokens = self.kube.list(TOKEN, namespace)
        with self._guard:
            self._compiles[namespace] = self._compiles.get(namespace, 0) + 1
            outcome = SyncOutcome(compile=self._compiles[namespace])

        requesters = self._requester_checks(tokens, namespace, now, fresh, outcome)
        credentials: dict[str, access.Credential] = {}
        keys: dict[str, pki.PublicKey] = {}
        token_secrets: dict[str, Mapping[str, Any]] | None = None
        readers = {
            name_of(d) for d in databases if render.Database(d).read_only_endpoint is not None
        }
        for token in access.live(tokens):
            if access.service_account_subject(token) is not None:
                continue
            pem = access.public_key_pem(token)
            if pem is None:
                if token_secrets is None:
                    token_secrets = self._listed(SECRET, namespace, render.TOKEN_SECRET_SELECTOR)
                credentials[name_of(token)] = self._token_credential(
                    token, now, outcome, token_secrets, readers
                )
                continue
            try:
                keys[name_of(token)] = key = pki.load_public_key(pem)
            except pki.BadPublicKey as exc:
                credentials[name_of(token)] = InvalidSpec(f"spec.publicKey: {exc}")
                continue
            uid = str(meta_of(token).get("uid") or "")
            credentials[name_of(token)] = access.public_key_digest(uid, key)
        compiled = access.compile_namespace(
            namespace,
            databases,
            roles,
            tokens,
            credentials,
            now,
            requesters,
            require_verified=self.config.require_verified_requester,
            request_timeout=timedelta(seconds=self.config.request_timeout),
        )
        by_name = {name_of(t): t for t in access.live(tokens)}
        for name, key in keys.items():
            found = compiled.tokens.get(name)
            if found is not None and found.grant is not None:
                found.certificate = self._key_certificate(by_name[name], found, key, now)
        unverified = sum(1 for c in requesters.values() if c.requester is None)
        if unverified:
            self.metrics.tokens_unverified.labels(namespace).set(unverified)
        else:
            with contextlib.suppress(KeyError):  # no series for a namespace with none
                self.metrics.tokens_unverified.remove(namespace)

        live_databases = access.live(databases)
        access_secrets: dict[str, Mapping[str, Any]] = {}
        if live_databases:
            self._apply_ca_config_map(namespace, live_databases, outcome)
            access_secrets = self._listed(SECRET, namespace, render.ACCESS_SECRET_SELECTOR)
        for obj in live_databases:
            db = render.Database(obj)
            bundle = compiled.bundles[db.name]
            problems = outcome.database_problems.setdefault(db.name, [])
            grants = len(bundle.grants)
            try:
                data = render.access_file_bytes(access.bundle_yaml(bundle), grants)
            except render.AccessBundleTooLarge as exc:
                # Writing it would only earn a 422: the previous bundle stays in force.
                log.warning(
                    "access Secret %s/%s not written (%d bytes for %d grants, limit %d): %s",
                    namespace,
                    db.access_secret_name,
                    exc.size,
                    exc.grants,
                    exc.limit,
                    exc.message,
                )
                problems.append(exc)
                if render.access_bundle_condition(obj, exc, exc.size, grants) is not None:
                    outcome.bundle_reports[db.name] = (exc, exc.size, grants)
                continue
            if render.access_bundle_condition(obj, None, len(data), grants) is not None:
                outcome.bundle_reports[db.name] = (None, len(data), grants)
            try:
                self._apply_owned(
                    render.access_secret(db, data),
                    obj,
                    problems,
                    access_secrets.get(db.access_secret_name),
                )
                self.kube.patch_status(
                    obj, {"roles": len(bundle.roles), "grants": len(bundle.grants)}
                )
            except KubeError as exc:
                problems.append(ApplyFailed(str(exc)))
                outcome.errors.append(str(exc))
        statuses = [
            (obj, access.role_status(compiled.roles[name_of(obj)])) for obj in access.live(roles)
        ] + [
            (obj, access.token_status(compiled.tokens[name_of(obj)])) for obj in access.live(tokens)
        ]
        for obj, (fields, conditions) in statuses:
            try:
                self._set_status(obj, fields, conditions)
            except KubeError as exc:
                outcome.errors.append(str(exc))
                continue
            if obj.get("kind") == TOKEN.kind:
                self._count_request(obj, compiled.tokens[name_of(obj)])
        with self._guard:
            self._synced_at[namespace] = time.monotonic()
            if fresh:
                self._rechecked_at[namespace] = started
        return outcome

    def _count_request(self, token: Mapping[str, Any], found: access.TokenFindings) -> None:
        """Access requests by outcome, and the time to a decision: counted when the Token's
        Approved condition first says so (its status was just written)."""
        state = found.approval.state
        if state == "NotRequired":
            return
        status = token.get("status") if isinstance(token.get("status"), Mapping) else {}
        before = find((status or {}).get("conditions"), "Approved")
        if before is not None and before.get("reason") == state:
            return
        outcome = {"Pending": "requested", "Approved": "approved", "Denied": "denied"}.get(
            state, "expired"
        )
        self.metrics.access_requests.labels(outcome).inc()
        decision = found.approval.decision
        created = meta_of(token).get("creationTimestamp")
        if decision is not None and isinstance(created, str):
            with contextlib.suppress(ValueError):
                waited = (decision.at - parse_timestamp(created)).total_seconds()
                self.metrics.access_request_seconds.observe(max(waited, 0.0))

    def _apply_ca_config_map(
        self, namespace: str, databases: Sequence[Mapping[str, Any]], outcome: SyncOutcome
    ) -> None:
        """The namespace's `rdsgate-ca` ConfigMap, always the operator's: people verify the
        proxies with it, so one made or edited by someone else is taken over (as Kubernetes
        keeps kube-root-ca.crt), not left to vouch for another CA."""
        desired = render.ca_config_map(namespace, databases, self.ca.cert_pem)
        try:
            current = self.kube.get(CONFIG_MAP, namespace, render.CA_CONFIG_MAP)
            if current is not None and labels_of(current).get(render.LABEL_MANAGED_BY) != (
                render.MANAGED_BY
            ):
                log.warning(
                    "ConfigMap %s/%s was not the operator's: replacing it with the CA the "
                    "proxies' certificates chain to",
                    namespace,
                    render.CA_CONFIG_MAP,
                )
            result, written = self.kube.apply(desired, current, known=True)
            self._remember(result, written)
        except KubeError as exc:
            outcome.errors.append(str(exc))

    def _key_certificate(
        self,
        token: Mapping[str, Any],
        found: access.TokenFindings,
        key: pki.PublicKey,
        now: datetime,
    ) -> tuple[bytes, datetime]:
        """The client certificate for a Token's own key (render.key_certificate), with an
        Event when one is issued."""
        assert found.grant is not None and found.grant.public_key_sha256 is not None
        status = token.get("status") if isinstance(token.get("status"), Mapping) else {}
        cert, issued = render.key_certificate(
            (status or {}).get("certificate"),
            self.ca,
            key,
            found.identity,
            found.grant.public_key_sha256,
            found.expires_at,
            now,
        )
        if issued:
            self.kube.post_event(
                token,
                EventSpec(
                    "Normal",
                    "CertificateIssued",
                    f"signed a client certificate for the Token's public key, valid until "
                    f"{pki.not_after(cert).strftime('%Y-%m-%dT%H:%M:%SZ')}",
                ),
            )
        return cert, pki.not_after(cert)

    def _listed(
        self, kind: Kind, namespace: str, selector: Mapping[str, str]
    ) -> dict[str, Mapping[str, Any]]:
        """The objects `selector` lists, by name: a compile's one read of the Secrets it
        writes. A failed list leaves it empty, and each object is then read on its own (and
        its error is that object's, as it would be anyway)."""
        try:
            return access.by_name(self.kube.list(kind, namespace, selector))
        except KubeError as exc:
            log.warning(
                "could not list %s in %s (reading them one by one): %s", kind.plural, namespace, exc
            )
            return {}

    def _token_credential(
        self,
        token: Mapping[str, Any],
        now: datetime,
        outcome: SyncOutcome,
        listed: Mapping[str, Mapping[str, Any]],
        readers: Collection[str] = (),
    ) -> access.Credential:
        """The Token's secret digest, or the problem that keeps it from having a grant; an
        error here is this Token's alone."""
        try:
            return self._token_secret(token, now, listed, readers)
        except KubeError as exc:
            outcome.errors.append(str(exc))
            return ApplyFailed(f"{exc} (retrying)")
        except ValueError as exc:
            name = access.secret_name(token)
            outcome.errors.append(f"Token {name_of(token)}: {exc}")
            return ApplyFailed(
                f"cannot write Secret {name!r}: {exc}; if the Secret was edited by hand, "
                "delete it and the operator writes it anew (with a new secret)"
            )

    def _token_secret(
        self,
        token: Mapping[str, Any],
        now: datetime,
        listed: Mapping[str, Mapping[str, Any]],
        readers: Collection[str] = (),
    ) -> access.Credential:
        """Write the Token's Secret (keeping its secret once generated); the secret's digest.
        `listed`: the namespace's Token Secrets from one list; one not there is read."""
        meta = meta_of(token)
        ns, token_name = str(meta.get("namespace")), str(meta.get("name"))
        name = access.secret_name(token)
        if len(name) > NAME_MAX:
            return InvalidSpec(
                f"the Secret name {name[:40]}... is longer than {NAME_MAX} characters; set "
                "spec.secretName (the default is the Token's name followed by -rdsgate)"
            )
        current = listed[name] if name in listed else self.kube.get(SECRET, ns, name)
        if current is not None and not owned_by(current, str(meta.get("uid"))):
            return SecretConflict(
                f"Secret {name!r} already exists in namespace {ns!r} and does not belong to "
                "this Token; set spec.secretName to a free name or delete that Secret"
            )
        existing = secret_bytes(current, "token")
        secret = existing.decode() if existing else access.new_secret()
        try:
            expires_at = access.token_expiry(token, now)
        except InvalidSpec:
            expires_at = None
        if expires_at is not None and expires_at <= now:
            return secret_digest(secret) if existing else InvalidSpec("the Token has expired")

        identity = access.identity(ns, token_name)
        digest = secret_digest(secret)
        client = keypair_from_secret(current)
        uri = client_certificate_uri(identity, digest)
        if client is None or not is_current(client, self.ca, now, uris=[uri], not_after=expires_at):
            cap = now + timedelta(days=CLIENT_CERT_DAYS)
            client = pki.issue_client_cert(
                self.ca,
                identity,
                secret_sha256=digest,
                days=CLIENT_CERT_DAYS,
                not_after=min(expires_at, cap) if expires_at else None,
            )
        data = access.token_secret_data(
            token,
            namespace=ns,
            secret=secret,
            ca_pem=self.ca.cert_pem,
            client=client,
            readers=readers,
        )
        result, written = self.kube.apply(
            render.token_secret(token, name, data), current, known=True
        )
        self._remember(result, written)
        if result == "created":
            self.kube.post_event(
                token,
                EventSpec("Normal", "SecretWritten", f"wrote Secret {name!r} for {identity}"),
            )
        return digest

    def owner_database(self, obj: Mapping[str, Any]) -> str | None:
        for ref in meta_of(obj).get("ownerReferences") or ():
            if (
                isinstance(ref, Mapping)
                and ref.get("kind") == "Database"
                and str(ref.get("apiVersion", "")).startswith("rdsgate.dev/")
            ):
                return str(ref.get("name"))
        return None


@dataclass
class Runtime:
    """Holds the reconciler once the startup handler has connected and loaded the CA."""

    config: Config
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    reconciler: Reconciler | None = None

    def get(self) -> Reconciler:
        if self.reconciler is None:
            raise kopf.TemporaryError("the operator is still starting", delay=1)
        return self.reconciler


DB_RESOURCE = (DATABASE.group, DATABASE.version, DATABASE.plural)
ROLE_RESOURCE = (ROLE.group, ROLE.version, ROLE.plural)
TOKEN_RESOURCE = (TOKEN.group, TOKEN.version, TOKEN.plural)
DISCOVERY_RESOURCE = (
    DATABASE_DISCOVERY.group,
    DATABASE_DISCOVERY.version,
    DATABASE_DISCOVERY.plural,
)
MANAGED = {render.LABEL_MANAGED_BY: render.MANAGED_BY}
#: Children whose changes are watched for immediate drift repair; the rest are repaired by
#: the periodic resync. Not the HPA: its controller updates its status (the current CPU use)
#: as often as every 15 seconds, and each update would wake a reconcile.
WATCHED_CHILDREN = (DEPLOYMENT, SERVICE, CONFIG_MAP, SECRET)


def _name_conflict(kind: str, name: str, owner: Mapping[str, Any]) -> NameConflict:
    return NameConflict(
        f"{kind} {name!r} already exists and is not managed by {owner.get('kind')} "
        f"{name_of(owner)!r}; delete or rename it"
    )


def _pod_metrics_address(pod: Mapping[str, Any]) -> tuple[str, int] | None:
    """Where a ready proxy pod serves its metrics port (the container port named metrics)."""
    if meta_of(pod).get("deletionTimestamp"):
        return None
    status = pod.get("status") if isinstance(pod.get("status"), Mapping) else {}
    ip = (status or {}).get("podIP")
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (status or {}).get("conditions") or []
    )
    if not ip or not ready:
        return None
    spec = pod.get("spec") if isinstance(pod.get("spec"), Mapping) else {}
    for container in (spec or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == "metrics":
                return str(ip), int(port["containerPort"])
    return str(ip), render.METRICS_PORT


def _pod_json(address: tuple[str, int], path: str, key: str) -> Any:
    """`key` of the JSON a proxy pod serves at `path` on its metrics port."""
    host, port = address
    host = f"[{host}]" if ":" in host else host
    with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=DIAGNOSE_TIMEOUT) as resp:
        doc = json.loads(resp.read())
    if not isinstance(doc, dict):
        raise ValueError(f"{path} answered {type(doc).__name__}, not an object")
    return doc.get(key)


def _fetch_diagnosis(address: tuple[str, int]) -> diagnosis.Report:
    try:
        findings = _pod_json(address, "/diagnose", "findings")
    except (OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return findings if isinstance(findings, list) else "no findings in the answer"


def _fetch_pinning(address: tuple[str, int]) -> list[dict[str, Any]] | None:
    """A proxy pod's `/pinning` counts, or None when it cannot tell (an older proxy too)."""
    try:
        entries = _pod_json(address, "/pinning", "pinning")
    except (OSError, ValueError):
        return None
    return entries if isinstance(entries, list) else None


def _ns(namespace: str | None) -> str:
    """All three resources are namespaced; kopf types the namespace as optional."""
    return namespace or "default"


def _run_all(steps: Sequence[Callable[[], object]]) -> list[str]:
    """Run every step, also after one failed; the API trouble they met."""
    failures = []
    for step in steps:
        try:
            step()
        except (Retry, KubeError) as exc:
            failures.append(str(exc))
    return failures


def _retrying(*steps: Callable[[], object]) -> None:
    """Run reconciles; API trouble becomes a kopf retry, not a crash or a traceback."""
    failures = _run_all(steps)
    if failures:
        raise kopf.TemporaryError("; ".join(failures), delay=RETRY_DELAY)


def _logged(*steps: Callable[[], object]) -> None:
    """For watch-event handlers, which kopf does not retry: the next trigger or resync will."""
    for failure in _run_all(steps):
        log.warning("will retry on the next change or resync: %s", failure)


def _has_ttl(spec: Mapping[str, Any], **_: Any) -> bool:
    return bool(spec.get("ttl"))


def register(registry: kopf.OperatorRegistry, runtime: Runtime) -> None:
    """Register every handler into `registry` (no import-time side effects)."""
    config = runtime.config

    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = "rdsgate.dev/finalizer"
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix="rdsgate.dev"
        )
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="rdsgate.dev", key="last-handled-configuration"
        )
        # Events are ours to post (once per problem, see status.condition_events).
        settings.posting.enabled = False
        # A Database deleted while one of its timers runs (in a thread, so it cannot be
        # cancelled) keeps its finalizer until kopf sees the timer gone: look again within
        # a second, not kopf's default minute.
        settings.background.instant_exit_timeout = 0.1
        settings.background.cancellation_polling = 1.0
        for kind in WATCHED_CHILDREN:
            selector = f"{render.LABEL_MANAGED_BY}={render.MANAGED_BY}"
            settings.watching.label_selectors[(kind.group, kind.version, kind.plural)] = selector
        kube = Kube.connect()
        ca = Reconciler.load_ca(kube, config.operator_namespace)
        runtime.reconciler = Reconciler(kube, config, ca, runtime.metrics)
        if config.admission is not None:
            settings.admission.server = admission_server(config, kube, ca)

    if config.admission is not None:
        register_admission(registry, runtime)

    @kopf.timer(
        *DB_RESOURCE,
        id="access_recheck",
        interval=config.access_recheck_interval / 2,
        initial_delay=config.access_recheck_interval / 2,
        registry=registry,
    )
    def access_recheck(namespace: str | None, **_: Any) -> None:
        """Access follows live RBAC: every requester's `bind` is asked again at least every
        recheck interval (the timer fires twice as often, kopf counting from the end of the
        last run; one fresh compile per namespace serves all its Databases' timers)."""
        half = config.access_recheck_interval / 2
        _retrying(lambda: runtime.get().recheck_access(_ns(namespace), half))

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """In-cluster credentials in a pod, else the kubeconfig, as kopf itself would."""
        info: kopf.ConnectionInfo | None = kopf.login_with_service_account(
            **kwargs
        ) or kopf.login_with_kubeconfig(**kwargs)
        return info

    @kopf.on.resume(*DB_RESOURCE, registry=registry)
    @kopf.on.create(*DB_RESOURCE, registry=registry)
    @kopf.on.update(*DB_RESOURCE, registry=registry)
    def database_changed(namespace: str | None, name: str, **_: Any) -> None:
        """Its labels may change which Tokens reach it: the namespace is compiled first (which
        writes its access Secret), then its children are applied."""
        reconciler, ns = runtime.get(), _ns(namespace)
        _retrying(
            lambda: reconciler.sync_access(ns),
            lambda: reconciler.reconcile_database(ns, name),
            lambda: reconciler.sync_tokenreview_subjects(ns),
        )

    @kopf.timer(
        *DB_RESOURCE,
        interval=config.diagnose_interval,
        initial_delay=min(5.0, config.diagnose_interval),
        registry=registry,
    )
    def database_diagnosis(namespace: str | None, name: str, **_: Any) -> None:
        """The proxies' own diagnostics become the Database's credential/upstream conditions."""
        _logged(lambda: runtime.get().diagnose_database(_ns(namespace), name))

    @kopf.timer(
        *DB_RESOURCE,
        interval=config.resync_interval,
        initial_delay=config.resync_interval,
        registry=registry,
    )
    def database_resync(namespace: str | None, name: str, **_: Any) -> None:
        """Repairs drift in children that are not watched, renews certificates; compiles the
        namespace once per interval (whichever Database's timer comes first)."""
        reconciler, ns = runtime.get(), _ns(namespace)
        _retrying(
            lambda: reconciler.resync_access(ns, config.resync_interval / 2),
            lambda: reconciler.reconcile_database(ns, name),
        )

    @kopf.on.event(*DB_RESOURCE, registry=registry)
    def database_gone(type: str | None, namespace: str | None, **_: Any) -> None:
        if type == "DELETED":
            reconciler, ns = runtime.get(), _ns(namespace)
            _logged(
                lambda: reconciler.sync_access(ns),
                lambda: reconciler.sync_tokenreview_subjects(ns),
            )

    for kind in WATCHED_CHILDREN:

        @kopf.on.event(
            kind.group,
            kind.version,
            kind.plural,
            labels=MANAGED,
            id=f"child_event_{kind.plural}",
            registry=registry,
        )
        def child_event(type: str | None, body: kopf.Body, namespace: str | None, **_: Any) -> None:
            """A child edited or deleted by hand is put back at once; a Token Secret too. The
            event of the operator's own write is not a reason to run again."""
            reconciler, ns = runtime.get(), _ns(namespace)
            if type != "DELETED" and reconciler.wrote(body):
                return
            owner = reconciler.owner_database(body)
            labels = labels_of(body)
            if (
                render.LABEL_TOKEN in labels
                or (owner is not None and labels.get(render.LABEL_COMPONENT) in ("access", "ca"))
                or (body.get("kind") == CONFIG_MAP.kind and name_of(body) == render.CA_CONFIG_MAP)
            ):
                # Written by the namespace's compile (a Token Secret, an access Secret, the
                # namespace's CA ConfigMap).
                _logged(lambda: reconciler.sync_access(ns))
            elif owner is not None:
                _logged(lambda: reconciler.reconcile_database(ns, owner))

    for resource in (ROLE_RESOURCE, TOKEN_RESOURCE):
        plural = resource[2]

        @kopf.on.resume(*resource, id=f"{plural}_changed", registry=registry)
        @kopf.on.create(*resource, id=f"{plural}_changed", registry=registry)
        @kopf.on.update(*resource, id=f"{plural}_changed", registry=registry)
        def access_changed(namespace: str | None, **_: Any) -> None:
            _retrying(lambda: runtime.get().sync_access(_ns(namespace)))

        @kopf.on.event(*resource, id=f"{plural}_gone", registry=registry)
        def access_gone(type: str | None, namespace: str | None, **_: Any) -> None:
            if type == "DELETED":
                _logged(lambda: runtime.get().sync_access(_ns(namespace)))

    register_discovery(registry, runtime)

    @kopf.daemon(*TOKEN_RESOURCE, when=_has_ttl, cancellation_timeout=5.0, registry=registry)
    async def token_expiry(
        stopped: kopf.DaemonStopped, namespace: str | None, name: str, **_: Any
    ) -> None:
        """Sleeps until the Token expires, then takes its grant out of every bundle."""
        while not stopped:
            reconciler = runtime.get()
            try:
                token = await asyncio.to_thread(reconciler.kube.get, TOKEN, _ns(namespace), name)
            except KubeError as exc:
                # The API is down at expiry: try again in RETRY_DELAY, not after kopf's 60 s
                # (and traceback) for an unexpected error. The proxies enforce expiresAt.
                raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY) from None
            if token is None:
                return
            try:
                expires_at = access.token_expiry(token, utcnow())
            except InvalidSpec:
                return
            if expires_at is None:
                return
            remaining = (expires_at - utcnow()).total_seconds()
            if remaining <= 0:
                await asyncio.to_thread(_retrying, partial(reconciler.sync_access, _ns(namespace)))
                return
            await stopped.wait(min(remaining + 0.05, 3600.0))


def register_discovery(registry: kopf.OperatorRegistry, runtime: Runtime) -> None:
    """DatabaseDiscovery (docs/discovery.md): a daemon per object runs a round of
    `Discoverer.run` in a thread, then sleeps the delay it returns (spec.interval, a back-off,
    or until a grace period ends), waking at once when the spec changes."""
    wakes: dict[tuple[str, str], asyncio.Event] = {}
    discoverers: list[Discoverer] = []

    def discoverer() -> Discoverer:
        if not discoverers:
            reconciler = runtime.get()

            def marked(namespace: str, name: str) -> None:
                _logged(lambda: reconciler.reconcile_database(namespace, name))

            discoverers.append(Discoverer(reconciler.kube, marked=marked))
        return discoverers[0]

    @kopf.daemon(*DISCOVERY_RESOURCE, cancellation_timeout=5.0, registry=registry)
    async def discover(
        stopped: kopf.DaemonStopped, namespace: str | None, name: str, **_: Any
    ) -> None:
        key = (_ns(namespace), name)
        wake = wakes.setdefault(key, asyncio.Event())
        try:
            while not stopped:
                wake.clear()
                try:
                    delay = await asyncio.to_thread(discoverer().run, *key)
                except (KubeError, kopf.TemporaryError) as exc:
                    log.warning("DatabaseDiscovery %s/%s: will retry: %s", *key, exc)
                    delay = RETRY_DELAY
                if delay is None:
                    return
                waiters = {
                    asyncio.ensure_future(stopped.wait(delay)),
                    asyncio.ensure_future(wake.wait()),
                }
                _done, pending = await asyncio.wait(
                    waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED
                )
                for task in pending:
                    task.cancel()
        finally:
            wakes.pop(key, None)

    @kopf.on.update(*DISCOVERY_RESOURCE, field="spec", registry=registry)
    async def discovery_changed(namespace: str | None, name: str, **_: Any) -> None:
        """A new spec is read at once, not at the end of the current interval."""
        wake = wakes.get((_ns(namespace), name))
        if wake is not None:
            wake.set()


def server_names_for(host: str) -> tuple[list[str], list[str]]:
    """The names a certificate for a listening address answers to: the host, or for a
    catch-all address the loopback names (a developer's own machine)."""
    try:
        address = ipaddress.ip_address(host or "0.0.0.0")  # noqa: S104 - recognising, not binding
    except ValueError:
        return [host], []
    if address.is_unspecified:
        return ["localhost"], ["127.0.0.1", "::1"]
    return [], [str(address)]


def admission_server(config: Config, kube: Kube, ca: pki.KeyPair) -> webhooks.AdmissionServer:
    """kopf's webhook server for the Token webhooks, as the flags configure it."""
    adm = config.admission
    assert adm is not None
    host, port = adm.listen
    if adm.target is not None:
        dns, ips = adm.target.server_names(config.cluster_domain)
    else:
        log.info(
            "serving the admission webhooks on %s:%d without registering them (no "
            "--admission-url or --admission-service): the webhook configurations must name "
            "this server",
            host,
            port,
        )
        dns, ips = server_names_for(host)
    registration = (
        webhooks.Registration(kube, adm.configuration, adm.target, config.namespaces, adm.timeout)
        if adm.target is not None
        else None
    )
    path = urlsplit(adm.target.url).path if adm.target and adm.target.url else None
    return webhooks.AdmissionServer(
        addr=host,
        port=port,
        ca=None if adm.cert_dir is not None else ca,
        dns_names=dns,
        ip_addresses=ips,
        cert_dir=adm.cert_dir,
        path=path,
        registration=registration,
    )


def register_admission(registry: kopf.OperatorRegistry, runtime: Runtime) -> None:
    """The Token webhooks (docs/access-control.md, docs/access-requests.md): stamp the
    requester and decisions, check `bind`, `request` and `approve`."""

    def context(info: Mapping[str, Any]) -> admission.Context:
        """What admission asks of the API server, now: verbs on Roles (the request's uid and
        extra go with its own user only) and the Roles' options."""
        reconciler = runtime.get()
        caller = admission.Requester.from_userinfo(info)

        def may(
            user: admission.Requester, namespace: str, role: str, verb: str
        ) -> admission.Verdict:
            own = user == caller
            return reconciler.binds.may(
                user,
                namespace,
                role,
                verb,
                uid=info.get("uid") if own else None,
                extra=info.get("extra") if own else None,
            )

        def options(namespace: str, role: str) -> RoleOptions | None:
            found = reconciler.kube.get(ROLE, namespace, role)
            compiled = access.compile_role(found) if found is not None else None
            return compiled.role.options if compiled and compiled.role else None

        return admission.Context(
            reconciler.stamp_key,
            may,
            options,
            utcnow(),
            timedelta(seconds=reconciler.config.request_timeout),
        )

    @kopf.on.mutate(
        *TOKEN_RESOURCE,
        id=admission.MUTATING_ID,
        operations=["CREATE", "UPDATE"],
        persistent=True,
        side_effects=False,
        registry=registry,
    )
    def stamp_requester(
        patch: kopf.Patch, body: kopf.Body, userinfo: kopf.UserInfo, **kwargs: Any
    ) -> None:
        """A new Token names its requester as the API server authenticated them, signed; an
        update that approves or denies it names the approver, and the Roles the decision
        covers, the same way; an update that left these out (a server-side apply) keeps the
        stored ones."""
        reconciler = runtime.get()
        info: Mapping[str, Any] = userinfo
        if kwargs.get("operation") == "UPDATE":
            old = kwargs.get("old")
            ctx = context(info)

            def needing() -> list[str]:
                requester = admission.read_stamp(old or {}, reconciler.stamp_key).requester
                return admission.needing_approval(body, requester, ctx)

            try:
                stamped = admission.restored(body, old) | admission.stamp_decision(
                    info, reconciler.stamp_key, body, old, utcnow(), needing
                )
            except admission.Refused as exc:
                raise kopf.AdmissionError(exc.message, code=exc.code) from None
            except KubeError as exc:
                raise kopf.AdmissionError(f"cannot read the Token's Roles: {exc}", 503) from None
            for key, value in stamped.items():
                patch.metadata.annotations[key] = value
        else:
            meta = meta_of(body)
            name = str(meta.get("name") or "")
            if not name:
                name = admission.generated_name(str(meta.get("generateName") or ""))
                patch.metadata["name"] = name
            namespace = str(meta.get("namespace") or "default")
            stamp = admission.stamp(
                info, reconciler.stamp_key, namespace, name, admission.request_reason(body)
            )
            for key, value in stamp.items():
                patch.metadata.annotations[key] = value
        runtime.metrics.admission_reviews.labels(admission.MUTATING_WEBHOOK, "allowed").inc()

    @kopf.on.validate(
        *TOKEN_RESOURCE,
        id=admission.VALIDATING_ID,
        operations=["CREATE", "UPDATE"],
        persistent=True,
        side_effects=False,
        registry=registry,
    )
    def check_token(body: kopf.Body, userinfo: kopf.UserInfo, **kwargs: Any) -> None:
        """A Token may only name Roles its requester may bind (or request); its requester,
        and once made its decision, are fixed; only others with approve decide."""
        info: Mapping[str, Any] = userinfo
        ctx = context(info)
        metric = runtime.metrics.admission_reviews
        try:
            admission.review(kwargs.get("operation"), body, kwargs.get("old"), info, ctx)
        except admission.Refused as exc:
            metric.labels(admission.VALIDATING_WEBHOOK, "refused").inc()
            raise kopf.AdmissionError(exc.message, code=exc.code) from None
        except KubeError as exc:
            metric.labels(admission.VALIDATING_WEBHOOK, "refused").inc()
            raise kopf.AdmissionError(
                f"cannot read the Token's Roles: {exc}; try again", code=503
            ) from None
        metric.labels(admission.VALIDATING_WEBHOOK, "allowed").inc()
