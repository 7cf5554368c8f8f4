"""The kopf handlers, and the reconcilers they call: read, compute with the pure modules, apply.

Two reconcilers, each level-based (they look at the whole current state, never at the
event that woke them), so any trigger may call them any number of times:

- `reconcile_database` renders and applies one Database's children and sets its status;
- `sync_access` compiles a namespace's Roles and Tokens into the access Secret of every
  Database there, writes Token Secrets, and sets Role and Token status.

Problems (`status.Problem`) become conditions and Events here and only here; API errors
become an `ApplyFailed` problem and a kopf retry (or, from watch events, a log line and the
next resync). Runs are serialised and coalesced per Database and per namespace, so the
concurrent triggers kopf delivers (sync handlers run in threads) neither race on the same
objects nor pile up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import kopf

from rdsgate.proxy.access import secret_digest
from rdsgate.proxy.auth import client_certificate_uri

from . import access, diagnosis, pki, render
from .ca import CA_SECRET_NAME, ca_secret, is_current, keypair_from_secret, secret_bytes
from .kube import (
    CERTIFICATE,
    CLUSTER_ROLE_BINDING,
    CONFIG_MAP,
    DATABASE,
    DEPLOYMENT,
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
from .status import (
    ApplyFailed,
    Condition,
    EventSpec,
    InvalidSpec,
    NameConflict,
    Problem,
    ReferenceNotFound,
    SecretConflict,
    condition_events,
    merge_conditions,
)

log = logging.getLogger(__name__)

CLIENT_CERT_DAYS = 90
RETRY_DELAY = 10.0
DIAGNOSE_TIMEOUT = 3.0
#: Metric label of each reconciler's coalescing key.
_KINDS = {"db": "database", "ns": "access"}


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


def utcnow() -> datetime:
    return datetime.now(UTC)


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


class Retry(Exception):
    """The reconcile hit API errors; its outcome is recorded, and it should run again soon."""


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
    _slots: dict[tuple[str, ...], _Slot] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)

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
        self, obj: Mapping[str, Any], fields: Mapping[str, Any], wanted: Sequence[Condition]
    ) -> None:
        status = obj.get("status")
        status = status if isinstance(status, Mapping) else {}
        generation = _meta(obj).get("generation")
        generation = generation if isinstance(generation, int) else None
        conditions = merge_conditions(
            status.get("conditions"), wanted, generation=generation, now=utcnow()
        )
        self.kube.patch_status(
            obj, {**fields, "observedGeneration": generation, "conditions": conditions}
        )
        for event in condition_events(status.get("conditions"), wanted):
            self.kube.post_event(obj, event)

    # Owned objects

    def _apply_owned(
        self,
        desired: Mapping[str, Any],
        owner: Mapping[str, Any],
        problems: list[Problem],
        current: Mapping[str, Any] | None = None,
        *,
        adopt: Callable[[Mapping[str, Any]], bool] | None = None,
    ) -> dict[str, Any] | None:
        """Apply a child of `owner`, unless a same-named object belongs to someone else."""
        meta = desired["metadata"]
        kind = desired["kind"]
        if current is None:
            current = self.kube.get(kind_of(desired), meta["namespace"], meta["name"])
        uid = str(_meta(owner).get("uid"))
        if current is not None and not owned_by(current, uid) and not (adopt and adopt(current)):
            owner_kind, owner_name = owner.get("kind"), _meta(owner).get("name")
            problems.append(
                NameConflict(
                    f"{kind} {meta['name']!r} already exists and is not managed by "
                    f"{owner_kind} {owner_name!r}; delete or rename it"
                )
            )
            return None
        _, obj = self.kube.apply(desired, current)
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
        if obj is None or _meta(obj).get("deletionTimestamp"):
            return
        db = render.Database(obj)
        problems: list[Problem] = []
        failed = False
        deployment: Mapping[str, Any] | None = None
        try:
            deployment = self._apply_children(db, problems)
        except Problem as exc:
            problems.append(exc)
        except KubeError as exc:
            problems.append(ApplyFailed(str(exc)))
            failed = True
        if deployment is None:
            try:
                deployment = self.kube.get(DEPLOYMENT, namespace, db.child_name)
            except KubeError:
                deployment = None
        if deployment is not None and not owned_by(deployment, db.uid):
            deployment = None
        fields, conditions = render.database_status(db, deployment, problems)
        self._set_status(obj, fields, conditions)
        if failed:
            raise Retry(problems[-1].message)

    def _apply_children(
        self, db: render.Database, problems: list[Problem]
    ) -> dict[str, Any] | None:
        config = render.proxy_config(db)
        ns, obj = db.namespace, db.obj
        access_problems = self._sync_access(ns).get(db.name, [])
        problems.extend(access_problems)

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

        tls_data = self._apply_tls(db, problems)
        cm_data = render.config_map_data(db, config, self.ca.cert_pem)
        self._apply_owned(render.config_map(db, cm_data), obj, problems)
        deployment = self._apply_owned(
            render.deployment(
                db,
                render.Settings(self.config.proxy_image, self.config.cluster_domain),
                render.config_hash(cm_data, tls_data),
            ),
            obj,
            problems,
        )
        self._apply_owned(render.service(db), obj, problems)
        pdb = render.pod_disruption_budget(db)
        if pdb is not None:
            self._apply_owned(pdb, obj, problems)
        else:
            self._prune(PDB, ns, db.child_name, db.uid)
        return deployment

    def _apply_tls(self, db: render.Database, problems: list[Problem]) -> Mapping[str, Any]:
        """The server certificate's Secret (or cert-manager Certificate); its data for the hash."""
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
            issued = (current or {}).get("data")
            return issued if isinstance(issued, Mapping) else {}

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
                (_meta(obj).get("annotations") or {}).get("cert-manager.io/certificate-name")
                == db.child_name
            ),
        )
        written: Mapping[str, Any] = desired["data"]
        return written

    # What the proxies report

    def diagnose_database(self, namespace: str, name: str) -> None:
        """Folds the ready proxy pods' /diagnose findings into the Database's conditions."""
        with self.metrics.reconcile("diagnosis"):
            self._diagnose_database(namespace, name)

    def _diagnose_database(self, namespace: str, name: str) -> None:
        obj = self.kube.get(DATABASE, namespace, name)
        if obj is None or _meta(obj).get("deletionTimestamp"):
            return
        db = render.Database(obj)
        reports: dict[str, diagnosis.Report] = {}
        for pod in self.kube.list(POD, namespace, db.selector()):
            address = _pod_metrics_address(pod)
            if address is not None:
                reports[str(_meta(pod).get("name"))] = _fetch_diagnosis(address)
        wanted = diagnosis.diagnosis_conditions(reports)
        status = obj.get("status") if isinstance(obj.get("status"), Mapping) else {}
        current = (status or {}).get("conditions")
        generation = _meta(obj).get("generation")
        merged = merge_conditions(
            current,
            wanted,
            generation=generation if isinstance(generation, int) else None,
            now=utcnow(),
        )
        self.kube.patch_status(obj, {"conditions": merged})
        for event in diagnosis.diagnosis_events(current, wanted):
            self.kube.post_event(obj, event)

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
                if not _meta(db).get("deletionTimestamp")
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
                        "metadata": {"resourceVersion": _meta(binding).get("resourceVersion")},
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
        """Compile the namespace's Roles and Tokens into access Secrets, write Token Secrets."""
        self._coalesced(("ns", namespace), lambda: self._sync_access_locked(namespace))

    def _sync_access(self, namespace: str) -> dict[str, list[Problem]]:
        with self._lock("ns", namespace):
            return self._sync_access_locked(namespace)

    def _sync_access_locked(self, namespace: str) -> dict[str, list[Problem]]:
        """Compile the namespace's access and write it out; problems per Database."""
        now = utcnow()
        databases = self.kube.list(DATABASE, namespace)
        roles = self.kube.list(ROLE, namespace)
        tokens = self.kube.list(TOKEN, namespace)

        credentials: dict[str, access.Credential] = {}
        for token in access.live(tokens):
            if access.service_account_subject(token) is None:
                credentials[str(_meta(token)["name"])] = self._token_secret(token, now)
        compiled = access.compile_namespace(namespace, databases, roles, tokens, credentials, now)

        db_problems: dict[str, list[Problem]] = {}
        for obj in access.live(databases):
            db = render.Database(obj)
            bundle = compiled.bundles[db.name]
            problems = db_problems.setdefault(db.name, [])
            self._apply_owned(render.access_secret(db, access.bundle_yaml(bundle)), obj, problems)
            self.kube.patch_status(obj, {"roles": len(bundle.roles), "grants": len(bundle.grants)})
        for obj in access.live(roles):
            fields, conditions = access.role_status(compiled.roles[str(_meta(obj)["name"])])
            self._set_status(obj, fields, conditions)
        for obj in access.live(tokens):
            fields, conditions = access.token_status(compiled.tokens[str(_meta(obj)["name"])])
            self._set_status(obj, fields, conditions)
        return db_problems

    def _token_secret(self, token: Mapping[str, Any], now: datetime) -> access.Credential:
        """Write the Token's Secret (keeping its secret once generated); the secret's digest."""
        meta = _meta(token)
        ns, token_name = str(meta.get("namespace")), str(meta.get("name"))
        name = access.secret_name(token)
        current = self.kube.get(SECRET, ns, name)
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
            token, namespace=ns, secret=secret, ca_pem=self.ca.cert_pem, client=client
        )
        result, _ = self.kube.apply(render.token_secret(token, name, data), current)
        if result == "created":
            self.kube.post_event(
                token,
                EventSpec("Normal", "SecretWritten", f"wrote Secret {name!r} for {identity}"),
            )
        return digest

    def owner_database(self, obj: Mapping[str, Any]) -> str | None:
        for ref in _meta(obj).get("ownerReferences") or ():
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
MANAGED = {render.LABEL_MANAGED_BY: render.MANAGED_BY}
#: Children whose changes are watched for immediate drift repair; the rest are repaired by
#: the periodic resync.
WATCHED_CHILDREN = (DEPLOYMENT, SERVICE, CONFIG_MAP, SECRET)


def _pod_metrics_address(pod: Mapping[str, Any]) -> tuple[str, int] | None:
    """Where a ready proxy pod serves its metrics port (the container port named metrics)."""
    if _meta(pod).get("deletionTimestamp"):
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


def _fetch_diagnosis(address: tuple[str, int]) -> diagnosis.Report:
    host, port = address
    host = f"[{host}]" if ":" in host else host
    try:
        with urllib.request.urlopen(
            f"http://{host}:{port}/diagnose", timeout=DIAGNOSE_TIMEOUT
        ) as resp:
            findings = json.loads(resp.read()).get("findings")
    except (OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return findings if isinstance(findings, list) else "no findings in the answer"


def _ns(namespace: str | None) -> str:
    """All three resources are namespaced; kopf types the namespace as optional."""
    return namespace or "default"


def _retrying(fn: Callable[[], object]) -> None:
    """Run a reconcile; API trouble becomes a kopf retry, not a crash or a traceback."""
    try:
        fn()
    except (Retry, KubeError) as exc:
        raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY) from None


def _logged(fn: Callable[[], object]) -> None:
    """For watch-event handlers, which kopf does not retry: the next trigger or resync will."""
    try:
        fn()
    except (Retry, KubeError) as exc:
        log.warning("will retry on the next change or resync: %s", exc)


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
        for kind in WATCHED_CHILDREN:
            selector = f"{render.LABEL_MANAGED_BY}={render.MANAGED_BY}"
            settings.watching.label_selectors[(kind.group, kind.version, kind.plural)] = selector
        kube = Kube.connect()
        runtime.reconciler = Reconciler(
            kube, config, Reconciler.load_ca(kube, config.operator_namespace), runtime.metrics
        )

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
        _retrying(lambda: runtime.get().reconcile_database(_ns(namespace), name))
        _retrying(lambda: runtime.get().sync_tokenreview_subjects(_ns(namespace)))

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
        """Repairs drift in children that are not watched, renews certificates."""
        _retrying(lambda: runtime.get().reconcile_database(_ns(namespace), name))

    @kopf.on.event(*DB_RESOURCE, registry=registry)
    def database_gone(type: str | None, namespace: str | None, **_: Any) -> None:
        if type == "DELETED":
            _logged(lambda: runtime.get().sync_access(_ns(namespace)))
            _logged(lambda: runtime.get().sync_tokenreview_subjects(_ns(namespace)))

    for kind in WATCHED_CHILDREN:

        @kopf.on.event(
            kind.group,
            kind.version,
            kind.plural,
            labels=MANAGED,
            id=f"child_event_{kind.plural}",
            registry=registry,
        )
        def child_event(body: kopf.Body, namespace: str | None, **_: Any) -> None:
            """A child edited or deleted by hand is put back at once; a Token Secret too."""
            reconciler = runtime.get()
            owner = reconciler.owner_database(body)
            if owner is not None:
                _logged(lambda: reconciler.reconcile_database(_ns(namespace), owner))
            elif render.LABEL_TOKEN in (_meta(body).get("labels") or {}):
                _logged(lambda: reconciler.sync_access(_ns(namespace)))

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

    @kopf.daemon(*TOKEN_RESOURCE, when=_has_ttl, cancellation_timeout=5.0, registry=registry)
    async def token_expiry(
        stopped: kopf.DaemonStopped, namespace: str | None, name: str, **_: Any
    ) -> None:
        """Sleeps until the Token expires, then takes its grant out of every bundle."""
        while not stopped:
            reconciler = runtime.get()
            token = await asyncio.to_thread(reconciler.kube.get, TOKEN, _ns(namespace), name)
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
