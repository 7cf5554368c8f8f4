"""Database → the child objects the operator owns and the proxy config they carry.

Pure. Every object is rendered whole and deterministically, so applying it twice changes
nothing; a `None` value means "this field must be absent" (it becomes `null` in a JSON
merge patch). Lists are rendered whole: a merge patch replaces a list entirely, which is
what repairs a Service port edited by hand (ARCHITECTURE §3, the drift trap).
"""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import PurePosixPath
from typing import Any

import yaml
from cryptography import x509
from pydantic import ValidationError
from pydantic.alias_generators import to_camel

from rdsgate.proxy.auth import client_certificate_uri
from rdsgate.proxy.config import ProxyConfig

from . import pki
from .ca import b64, is_current
from .objects import labels_of, meta_of, spec_of, spec_problems
from .status import Condition, InvalidSpec, Problem, find

API_VERSION = "rdsgate.dev/v1alpha1"
MANAGED_BY = "rdsgate-operator"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_TOKEN = "rdsgate.dev/token"  # noqa: S105 - a label key
#: The Token's name on its Secret (a label value holds 63 characters; a name, 253).
ANNOTATION_TOKEN = "rdsgate.dev/token-name"  # noqa: S105 - an annotation key
LABEL_COMPONENT = "app.kubernetes.io/component"
CONFIG_HASH = "rdsgate.dev/config-hash"
IRSA_ANNOTATION = "eks.amazonaws.com/role-arn"
#: Set by a DatabaseDiscovery on a Database whose RDS Proxy endpoint it no longer finds
#: (operator/discovery.py): Ready=False, reason GoneFromAWS, until deleted or found again.
ANNOTATION_GONE_FROM_AWS = "rdsgate.dev/gone-from-aws-since"

CONFIG_DIR = PurePosixPath("/etc/rdsgate/config")
TLS_DIR = PurePosixPath("/etc/rdsgate/tls")
ACCESS_DIR = PurePosixPath("/etc/rdsgate/access")
CONFIG_KEY = "config.yaml"
ACCESS_KEY = "access.yaml"
UPSTREAM_CA_KEY = "upstream-ca.crt"
CLIENT_CA_KEY = "client-ca.crt"

SERVICE_PORT = 5432
#: The read-only listener's container port (spec.proxy.readOnlyPort), with a reader.
READ_ONLY_PORT = 5433
#: The `-ro` Service's suffix: a reader's Service is `<db>-ro`.
READ_ONLY_SUFFIX = "-ro"
METRICS_PORT = 9187
PROXY_UID = 65532
DEFAULT_REPLICAS = 2
#: spec.proxy.autoscaling.targetCPUUtilizationPercentage when omitted (% of the CPU request).
DEFAULT_CPU_TARGET = 70
SERVER_CERT_DAYS = 90
DEFAULT_RESOURCES = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}}
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE_MAX = 63


class ImageNotAllowed(InvalidSpec):
    reason = "ImageNotAllowed"


def image_repository(image: str) -> str:
    """The image without its tag and digest (`registry:5000/team/rdsgate:1.2@sha256:…` →
    `registry:5000/team/rdsgate`; a registry's port is not a tag)."""
    name = image.split("@", 1)[0]
    colon = name.rfind(":")
    return name[:colon] if colon > name.rfind("/") else name


def image_allowed(image: str, allowed: Sequence[str]) -> bool:
    """Whether `image` is one of `allowed`: an entry that is a repository (no tag, no digest)
    admits every tag and digest of it; an entry with a tag or digest admits exactly that."""
    repository = image_repository(image)
    return any(
        image == entry or (entry == image_repository(entry) and repository == entry)
        for entry in allowed
    )


@dataclass(frozen=True)
class Settings:
    """What the operator was started with that shapes rendered objects."""

    proxy_image: str
    cluster_domain: str = "cluster.local"
    #: Images a Database may name in spec.proxy.image; empty: the repository of proxy_image.
    allowed_images: tuple[str, ...] = ()

    @property
    def allowed(self) -> tuple[str, ...]:
        return self.allowed_images or (image_repository(self.proxy_image),)


@dataclass(frozen=True)
class Autoscaling:
    """spec.proxy.autoscaling: a HorizontalPodAutoscaler owns the proxies' replica count."""

    min_replicas: int
    max_replicas: int
    target_cpu_utilization: int


@dataclass(frozen=True)
class Database:
    """A Database resource, read once; accessors never raise on odd input."""

    obj: Mapping[str, Any]

    @property
    def meta(self) -> Mapping[str, Any]:
        return meta_of(self.obj)

    @property
    def name(self) -> str:
        return str(self.meta.get("name", ""))

    @property
    def namespace(self) -> str:
        return str(self.meta.get("namespace") or "default")

    @property
    def uid(self) -> str:
        return str(self.meta.get("uid", ""))

    @property
    def generation(self) -> int | None:
        g = self.meta.get("generation")
        return g if isinstance(g, int) else None

    @property
    def labels(self) -> dict[str, str]:
        return labels_of(self.obj)

    @property
    def spec(self) -> Mapping[str, Any]:
        return spec_of(self.obj)

    def section(self, key: str) -> Mapping[str, Any]:
        value = self.spec.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise InvalidSpec(f"spec.{key} must be an object")
        return value

    @property
    def replicas(self) -> int:
        value = self.section("proxy").get("replicas", DEFAULT_REPLICAS)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidSpec("spec.proxy.replicas must be a whole number, 0 or more")
        return value

    @property
    def autoscaling(self) -> Autoscaling | None:
        """spec.proxy.autoscaling, checked (the CRD's schema and CEL rule say the same, but a
        Database stored before them, or on a server without CEL, reaches the operator)."""
        value = self.section("proxy").get("autoscaling")
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise InvalidSpec("spec.proxy.autoscaling must be an object")

        def whole(key: str, default: int | None) -> int:
            v = value.get(key, default)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidSpec(f"spec.proxy.autoscaling.{key} must be a whole number, 1 or more")
            return v

        scaling = Autoscaling(
            whole("minReplicas", DEFAULT_REPLICAS),
            whole("maxReplicas", None),
            whole("targetCPUUtilizationPercentage", DEFAULT_CPU_TARGET),
        )
        if scaling.max_replicas < scaling.min_replicas:
            raise InvalidSpec(
                f"spec.proxy.autoscaling.maxReplicas ({scaling.max_replicas}) must be at least "
                f"minReplicas ({scaling.min_replicas})"
            )
        return scaling

    @property
    def child_name(self) -> str:
        return f"{self.name}-rdsgate"

    @property
    def read_only_endpoint(self) -> str | None:
        """spec.readOnlyEndpoint: an RDS Proxy read-only endpoint, served as `<db>-ro`."""
        value = self.spec.get("readOnlyEndpoint")
        return str(value) if value else None

    @property
    def read_only_service_name(self) -> str:
        return f"{self.name}{READ_ONLY_SUFFIX}"

    @property
    def tls_secret_name(self) -> str:
        return f"{self.name}-rdsgate-tls"

    @property
    def access_secret_name(self) -> str:
        return f"{self.name}-rdsgate-access"

    @property
    def issuer_ref(self) -> Mapping[str, Any] | None:
        ref = self.section("proxy").get("issuerRef")
        return ref if isinstance(ref, Mapping) else None

    def service_account_name(self) -> str:
        sa = self.section("proxy").get("serviceAccount")
        if isinstance(sa, Mapping) and sa.get("name"):
            return str(sa["name"])
        return self.child_name

    def selector(self) -> dict[str, str]:
        return {LABEL_NAME: "rdsgate-proxy", LABEL_INSTANCE: self.name}

    def labels_for(self, component: str) -> dict[str, str]:
        return {
            **self.selector(),
            LABEL_COMPONENT: component,
            LABEL_MANAGED_BY: MANAGED_BY,
        }


def owner_reference(
    kind: str, name: str, uid: str, api_version: str = API_VERSION
) -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _child_meta(db: Database, name: str, component: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": db.namespace,
        "labels": db.labels_for(component),
        "ownerReferences": [owner_reference("Database", db.name, db.uid)],
        **extra,
    }


# The proxy config

#: Where a ProxyConfig error points in the Database spec (longest prefix first).
_SPEC_PATHS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("upstream", "tls", "ca_file"), "spec.tls.caBundle"),
    (("upstream", "tls"), "spec.tls"),
    (("upstream", "endpoint"), "spec.endpoint"),
    (("upstream", "warm"), "spec.proxy.warmConnections"),
    (("upstream",), "spec"),
    (("read_only", "endpoint"), "spec.readOnlyEndpoint"),
    (("read_only", "port"), "spec.proxy.readOnlyPort"),
    (("read_only",), "spec"),
    (("listen", "port"), "spec.proxy.port"),
    (("metrics", "port"), "spec.proxy.metricsPort"),
    (("limits",), "spec.proxy"),
    (("aws",), "spec.aws"),
    (("audit",), "spec.audit"),
    (("database", "name"), "metadata.name"),
    (("database", "labels"), "metadata.labels"),
)


def _spec_path(loc: tuple[str | int, ...]) -> str:
    parts = tuple(str(p) for p in loc)
    for prefix, target in _SPEC_PATHS:
        if parts[: len(prefix)] == prefix:
            return ".".join([target, *(to_camel(p) for p in parts[len(prefix) :])])
    return ".".join(["spec", *(to_camel(p) for p in parts)])


def _check_names(db: Database) -> None:
    if not _DNS_LABEL.match(db.name) or len(db.name) > 63:
        raise InvalidSpec(
            f"metadata.name {db.name!r} must be a DNS label (lowercase letters, digits, '-', "
            "starting with a letter, at most 63 characters): it becomes the Service name"
        )
    if db.read_only_endpoint and len(db.read_only_service_name) > 63:
        raise InvalidSpec(
            f"metadata.name {db.name!r} is too long for spec.readOnlyEndpoint: the read-only "
            f"Service {db.read_only_service_name!r} must be at most 63 characters"
        )
    engine = db.spec.get("engine", "postgres")
    if engine != "postgres":
        raise InvalidSpec(f"spec.engine {engine!r} is not served yet; use postgres")
    sa = db.section("proxy").get("serviceAccount")
    if isinstance(sa, Mapping) and sa.get("name") and sa.get("roleArn"):
        raise InvalidSpec(
            "spec.proxy.serviceAccount: set either name (an existing ServiceAccount) or roleArn "
            "(the operator generates one annotated for IRSA), not both"
        )


def _ca_bundle(db: Database) -> str | None:
    bundle = db.section("tls").get("caBundle")
    if bundle is None:
        return None
    try:
        if not isinstance(bundle, str):
            raise ValueError("not a string")
        x509.load_pem_x509_certificates(bundle.encode())
    except ValueError as exc:
        raise InvalidSpec(f"spec.tls.caBundle is not PEM certificates: {exc}") from exc
    return bundle


def proxy_config(db: Database) -> ProxyConfig:
    """The proxy's config for this Database, validated by the proxy's own model."""
    _check_names(db)
    proxy, tls, aws, audit = (db.section(k) for k in ("proxy", "tls", "aws", "audit"))
    ca_bundle = _ca_bundle(db)
    warm = proxy.get("warmConnections") or {}
    if not isinstance(warm, Mapping):
        raise InvalidSpec("spec.proxy.warmConnections must be an object")
    client_ca = CONFIG_DIR / CLIENT_CA_KEY if db.issuer_ref else TLS_DIR / "ca.crt"
    # Field names, not aliases: the model decides how they are spelled on disk.
    data: dict[str, Any] = {
        "database": {"name": db.name, "namespace": db.namespace, "labels": db.labels},
        "listen": {"port": proxy.get("port", SERVICE_PORT)},
        "tls": {
            "cert_file": str(TLS_DIR / "tls.crt"),
            "key_file": str(TLS_DIR / "tls.key"),
            "client_ca_file": str(client_ca),
        },
        "upstream": {
            "endpoint": db.spec.get("endpoint"),
            "tls": {
                "mode": tls.get("mode", "verify-full"),
                "ca_file": str(CONFIG_DIR / UPSTREAM_CA_KEY) if ca_bundle else None,
                "server_name": tls.get("serverName"),
            },
            "warm": {
                "per_key": warm.get("perKey", 2),
                "max_total": warm.get("maxTotal", 32),
                "idle_timeout": warm.get("idleTimeout", "5m"),
            },
        },
        "aws": dict(aws),
        "access": {"file": str(ACCESS_DIR / ACCESS_KEY)},
        "limits": {
            "max_connections": proxy.get("maxConnections", 1000),
            "idle_timeout": proxy.get("idleTimeout", "30m"),
        },
        "audit": {"queries": audit.get("queries", True)},
        "metrics": {"port": proxy.get("metricsPort", METRICS_PORT)},
    }
    if data["upstream"]["endpoint"] is None:
        del data["upstream"]["endpoint"]
    if db.read_only_endpoint:
        ro_port = proxy.get("readOnlyPort", READ_ONLY_PORT)
        for other in ("port", "metricsPort"):
            if ro_port == data["listen" if other == "port" else "metrics"]["port"]:
                raise InvalidSpec(
                    f"spec.proxy.readOnlyPort {ro_port} is spec.proxy.{other} too; the "
                    "read-only listener needs a port of its own"
                )
        data["read_only"] = {"port": ro_port, "endpoint": db.read_only_endpoint}
    try:
        return ProxyConfig.model_validate(data)
    except ValidationError as exc:
        problems = spec_problems(exc, _spec_path)
        raise InvalidSpec("; ".join(p.message for p in problems)) from exc


def config_yaml(config: ProxyConfig) -> str:
    data = config.dump()
    if data.get("readOnly") is None:
        # Absent, not null: a Database without a reader renders the same file as before the
        # field existed (no roll-out on upgrade, and older proxies still read it).
        data.pop("readOnly", None)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def config_map_data(
    db: Database, config: ProxyConfig, client_ca_pem: bytes
) -> dict[str, str | None]:
    ca_bundle = _ca_bundle(db)
    return {
        CONFIG_KEY: config_yaml(config),
        UPSTREAM_CA_KEY: ca_bundle,
        CLIENT_CA_KEY: client_ca_pem.decode() if db.issuer_ref else None,
    }


def config_map(db: Database, data: Mapping[str, str | None]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _child_meta(db, db.child_name, "config"),
        "data": dict(data),
    }


# TLS


def server_names(db: Database, cluster_domain: str) -> list[str]:
    """The names clients reach the Service by, the first being the short one; then those
    of the read-only Service `<db>-ro`, when there is one (one certificate serves both
    listeners)."""
    services = [db.name] + ([db.read_only_service_name] if db.read_only_endpoint else [])
    names = []
    for svc in services:
        base = f"{svc}.{db.namespace}.svc"
        names += [svc, f"{svc}.{db.namespace}", base, f"{base}.{cluster_domain}"]
    return names


def server_keypair(
    existing: pki.KeyPair | None, ca: pki.KeyPair, names: list[str], now: datetime
) -> pki.KeyPair:
    """The server certificate to serve: the existing one while current, else a new one."""
    if is_current(existing, ca, now, dns_names=names):
        assert existing is not None
        return existing
    return pki.issue_server_cert(ca, names, days=SERVER_CERT_DAYS)


#: A certificate signed for a Token's own key lives at most this long (renewed before).
KEY_CERT_LIFETIME = timedelta(hours=12)


def key_certificate(
    current_pem: object,
    ca: pki.KeyPair,
    key: pki.PublicKey,
    identity: str,
    digest: str,
    expires_at: datetime | None,
    now: datetime,
) -> tuple[bytes, bool]:
    """The client certificate for a Token's own key (`spec.publicKey`): the one in its
    status while it is current (this CA, this key and binding, before 2/3 of its life),
    else a new one for at most min(the remaining TTL, 12 hours). Returns it and whether it
    is new."""
    uri = client_certificate_uri(identity, digest)
    if isinstance(current_pem, str) and current_pem:
        existing = pki.KeyPair(current_pem.encode(), b"")
        try:
            same_key = pki.public_key_der(existing.cert.public_key()) == pki.public_key_der(key)  # type: ignore[arg-type]
            if same_key and is_current(existing, ca, now, uris=[uri], not_after=expires_at):
                return existing.cert_pem, False
        except ValueError:
            pass
    end = now + KEY_CERT_LIFETIME
    if expires_at is not None:
        end = min(end, expires_at)
    return pki.sign_client_cert(ca, key, identity, binding_sha256=digest, not_after=end), True


def tls_secret(db: Database, pair: pki.KeyPair, ca_pem: bytes) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _child_meta(db, db.tls_secret_name, "tls"),
        "type": "kubernetes.io/tls",
        "data": {
            "tls.crt": b64(pair.cert_pem),
            "tls.key": b64(pair.key_pem),
            "ca.crt": b64(ca_pem),
        },
    }


def certificate(db: Database, names: list[str]) -> dict[str, Any]:
    """A cert-manager Certificate writing the TLS Secret, when spec.proxy.issuerRef is set."""
    ref = db.issuer_ref or {}
    return {
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": _child_meta(db, db.child_name, "tls"),
        "spec": {
            "secretName": db.tls_secret_name,
            "commonName": names[0],
            "dnsNames": names,
            "duration": f"{SERVER_CERT_DAYS * 24}h",
            "renewBefore": f"{SERVER_CERT_DAYS * 24 // 3}h",
            "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
            "usages": ["server auth", "digital signature"],
            "issuerRef": {
                "name": str(ref.get("name", "")),
                "kind": str(ref.get("kind", "Issuer")),
                "group": str(ref.get("group", "cert-manager.io")),
            },
        },
    }


# Access


#: The most a Secret's `data` may hold, its values' bytes summed (kube-apiserver's
#: MaxSecretSize): a larger one is refused with 422 Invalid, "data: Too long".
SECRET_DATA_LIMIT = 1024 * 1024
#: Access files longer than this are written gzip-compressed (proxies read both forms):
#: SHA-256 digests and repeated names shrink about 5x, so ~20,000 grants fit, not ~4,500.
COMPRESS_ABOVE = 256 * 1024


class AccessBundleTooLarge(Problem):
    """The access bundle does not fit in a Secret: the previous one stays in force."""

    reason = "AccessBundleTooLarge"

    def __init__(self, size: int, text_size: int, grants: int, limit: int) -> None:
        form = f"gzip-compressed from {text_size} bytes of YAML" if size != text_size else "YAML"
        super().__init__(
            f"the access bundle is {size} bytes ({form}) for {grants} grants, over the "
            f"{limit}-byte limit of a Secret, so it was not written and the proxies keep the "
            "previous one: grants added since are not in force and grants removed since are "
            "still in force. Let fewer grants reach this Database (narrow the Roles' "
            "spec.allow.databases, or split the Tokens across namespaces)"
        )
        self.size, self.text_size, self.grants, self.limit = size, text_size, grants, limit


def access_file_bytes(text: str, grants: int, limit: int = SECRET_DATA_LIMIT) -> bytes:
    """The access Secret's `access.yaml`: the text, gzip-compressed when long (deterministic:
    no timestamp or name in the header, so an unchanged bundle is an unchanged Secret).

    Raises AccessBundleTooLarge when it would not fit in a Secret."""
    raw = text.encode()
    data = raw
    if len(raw) > COMPRESS_ABOVE:
        deflate = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        data = deflate.compress(raw) + deflate.flush()
    if len(data) > limit:
        raise AccessBundleTooLarge(len(data), len(raw), grants, limit)
    return data


def access_secret(db: Database, bundle: str | bytes, grants: int = 0) -> dict[str, Any]:
    """The Database's access Secret from the bundle's text (encoded by access_file_bytes,
    which may raise AccessBundleTooLarge) or from bytes it already returned."""
    data = bundle if isinstance(bundle, bytes) else access_file_bytes(bundle, grants)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _child_meta(db, db.access_secret_name, "access"),
        "type": "Opaque",
        "data": {ACCESS_KEY: b64(data)},
    }


#: The Database condition that says its access bundle does not fit in a Secret. Like a
#: Node's MemoryPressure it is True while the problem lasts; a Database whose bundles always
#: fit never carries it.
ACCESS_BUNDLE_CONDITION = "AccessBundleTooLarge"


def access_bundle_condition(
    db_obj: Mapping[str, Any], too_large: AccessBundleTooLarge | None, size: int, grants: int
) -> Condition | None:
    """The AccessBundleTooLarge condition the Database must now carry, or None when what it
    carries already says so: True while the bundle does not fit (a Warning Event), False
    once one fits again (`size` bytes for `grants` grants were written)."""
    status = db_obj.get("status")
    current = find(
        (status if isinstance(status, Mapping) else {}).get("conditions"), ACCESS_BUNDLE_CONDITION
    )
    if too_large is not None:
        wanted = Condition(
            ACCESS_BUNDLE_CONDITION,
            "True",
            "OverSecretLimit",
            too_large.message,
            event="Warning",
            event_reason=AccessBundleTooLarge.reason,
        )
    elif current is None or current.get("status") == "False":
        return None
    else:
        wanted = Condition(
            ACCESS_BUNDLE_CONDITION,
            "False",
            "WithinLimit",
            f"the access bundle fits again: {size} bytes of {SECRET_DATA_LIMIT} for {grants} "
            "grants, written",
            event="Normal",
            event_reason="AccessBundleWritten",
        )
    if current is not None and all(
        current.get(k) == getattr(wanted, k) for k in ("status", "reason", "message")
    ):
        return None
    return wanted


#: The namespace-wide ConfigMap of the operator's CA (key `ca.crt`): apps and people verify
#: the proxies with it, and `db connect` reads it instead of any Secret.
CA_CONFIG_MAP = "rdsgate-ca"


def ca_config_map(
    namespace: str, databases: Sequence[Mapping[str, Any]], ca_pem: bytes
) -> dict[str, Any]:
    """ConfigMap `rdsgate-ca` of a namespace with Databases: owned by every one of them (none
    a controller), so the garbage collector removes it with the last one."""
    owners = [
        {
            **owner_reference("Database", str(meta_of(d).get("name")), str(meta_of(d).get("uid"))),
            "controller": False,
        }
        for d in sorted(databases, key=lambda d: str(meta_of(d).get("name")))
    ]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": CA_CONFIG_MAP,
            "namespace": namespace,
            "labels": {
                LABEL_NAME: "rdsgate",
                LABEL_COMPONENT: "ca",
                LABEL_MANAGED_BY: MANAGED_BY,
            },
            "ownerReferences": owners,
        },
        "data": {"ca.crt": ca_pem.decode()},
    }


# Workload


def config_hash(config_data: Mapping[str, str | None]) -> str:
    """What rolls the proxies: the ConfigMap's data. Not the TLS material (the proxy reloads
    its certificate files when they change, so a renewal drains no session) and never the
    access bundle (reloaded too)."""
    material = {k: v for k, v in sorted(config_data.items()) if v is not None}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def service_account(db: Database) -> dict[str, Any] | None:
    """The generated ServiceAccount, or None when spec.proxy.serviceAccount.name names one."""
    sa = db.section("proxy").get("serviceAccount")
    sa = sa if isinstance(sa, Mapping) else {}
    if sa.get("name"):
        return None
    role_arn = sa.get("roleArn")
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _child_meta(
            db,
            db.child_name,
            "proxy",
            annotations={IRSA_ANNOTATION: str(role_arn) if role_arn else None},
        ),
    }


def _resources(db: Database) -> dict[str, Any]:
    res = db.section("proxy").get("resources")
    if res is None:
        return json.loads(json.dumps(DEFAULT_RESOURCES))  # type: ignore[no-any-return]
    if not isinstance(res, Mapping):
        raise InvalidSpec("spec.proxy.resources must be an object with limits and requests")
    return {
        k: dict(v) for k, v in res.items() if k in ("limits", "requests") and isinstance(v, Mapping)
    }


def proxy_image(db: Database, settings: Settings) -> str:
    """The proxy image: spec.proxy.image if the operator allows it, else its own.

    Raises ImageNotAllowed: whoever may create a Database must not choose what runs with
    the proxy's ServiceAccount and the operator's rights to create Deployments.
    """
    image = db.section("proxy").get("image")
    if not image or image == settings.proxy_image:
        return settings.proxy_image
    if not isinstance(image, str) or not image_allowed(image, settings.allowed):
        allowed = ", ".join(
            f"{a} (any tag or digest)" if a == image_repository(a) else a for a in settings.allowed
        )
        raise ImageNotAllowed(
            f"spec.proxy.image {image!r} is not an allowed proxy image (allowed: {allowed}); "
            f"remove spec.proxy.image to run {settings.proxy_image}, or have the operator "
            "started with --allowed-proxy-image for it"
        )
    return image


def deployment(
    db: Database, settings: Settings, config_hash_value: str, *, creating: bool = False
) -> dict[str, Any]:
    """The proxies' Deployment. With spec.proxy.autoscaling its replicas are the HPA's: set
    to minReplicas when `creating` it, and otherwise left out, so that applying it (a merge
    patch of the fields rendered) never undoes the HPA's scaling."""
    proxy = db.section("proxy")
    scaling = db.autoscaling
    if scaling is None:
        replicas: dict[str, int] = {"replicas": db.replicas}
    else:
        replicas = {"replicas": scaling.min_replicas} if creating else {}
    image = proxy_image(db, settings)
    port = int(proxy.get("port", SERVICE_PORT))
    metrics_port = int(proxy.get("metricsPort", METRICS_PORT))
    read_only_port = int(proxy.get("readOnlyPort", READ_ONLY_PORT))
    selector = db.selector()
    probe = {"periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 3}
    container = {
        "name": "proxy",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["rdsgate-proxy", "--config", str(CONFIG_DIR / CONFIG_KEY)],
        "ports": [
            {"name": "postgres", "containerPort": port, "protocol": "TCP"},
            *(
                [{"name": "postgres-ro", "containerPort": read_only_port, "protocol": "TCP"}]
                if db.read_only_endpoint
                else []
            ),
            {"name": "metrics", "containerPort": metrics_port, "protocol": "TCP"},
        ],
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "metrics"}, **probe},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}, **probe},
        "resources": _resources(db),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": PROXY_UID,
            "runAsGroup": PROXY_UID,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "config", "mountPath": str(CONFIG_DIR), "readOnly": True},
            {"name": "tls", "mountPath": str(TLS_DIR), "readOnly": True},
            {"name": "access", "mountPath": str(ACCESS_DIR), "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - an emptyDir for the runtime
        ],
    }
    spread = [
        {
            "maxSkew": 1,
            "topologyKey": key,
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector},
        }
        for key in ("kubernetes.io/hostname", "topology.kubernetes.io/zone")
    ]
    pod_labels = db.labels_for("proxy")
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _child_meta(db, db.child_name, "proxy"),
        "spec": {
            **replicas,
            "selector": {"matchLabels": selector},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {CONFIG_HASH: config_hash_value},
                },
                "spec": {
                    "serviceAccountName": db.service_account_name(),
                    "automountServiceAccountToken": True,
                    "terminationGracePeriodSeconds": 40,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": PROXY_UID,
                        "runAsGroup": PROXY_UID,
                        "fsGroup": PROXY_UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "topologySpreadConstraints": spread,
                    "containers": [container],
                    "volumes": [
                        {"name": "config", "configMap": {"name": db.child_name}},
                        {"name": "tls", "secret": {"secretName": db.tls_secret_name}},
                        {"name": "access", "secret": {"secretName": db.access_secret_name}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}},
                    ],
                },
            },
        },
    }


def service(db: Database) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _child_meta(db, db.name, "proxy"),
        "spec": {
            "type": "ClusterIP",
            "selector": db.selector(),
            "ports": [
                {
                    "name": "postgres",
                    "port": SERVICE_PORT,
                    "targetPort": "postgres",
                    "protocol": "TCP",
                },
                {
                    "name": "metrics",
                    "port": METRICS_PORT,
                    "targetPort": "metrics",
                    "protocol": "TCP",
                },
            ],
        },
    }


def read_only_service(db: Database) -> dict[str, Any] | None:
    """Service `<db>-ro` (port 5432 → the pods' read-only listener), with a reader; None
    when the Database has no spec.readOnlyEndpoint (the operator deletes its own then)."""
    if not db.read_only_endpoint:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _child_meta(db, db.read_only_service_name, "proxy"),
        "spec": {
            "type": "ClusterIP",
            "selector": db.selector(),
            "ports": [
                {
                    "name": "postgres",
                    "port": SERVICE_PORT,
                    "targetPort": "postgres-ro",
                    "protocol": "TCP",
                }
            ],
        },
    }


def horizontal_pod_autoscaler(db: Database) -> dict[str, Any] | None:
    """The HPA of the proxies' Deployment (spec.proxy.autoscaling), or None without one (the
    operator deletes its own then).

    Raises InvalidSpec when the proxy container has no CPU request: a CPU utilization target
    is a percentage of it, and the HPA controller cannot scale without one. (A CPU limit
    alone will do: the API server defaults the request to the limit.)
    """
    scaling = db.autoscaling
    if scaling is None:
        return None
    resources = _resources(db)
    if not any((resources.get(k) or {}).get("cpu") for k in ("requests", "limits")):
        raise InvalidSpec(
            "spec.proxy.autoscaling scales on CPU utilization, a percentage of the CPU request: "
            "set spec.proxy.resources.requests.cpu (or remove spec.proxy.resources to get "
            f"the default request of {DEFAULT_RESOURCES['requests']['cpu']})"
        )
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _child_meta(db, db.child_name, "proxy"),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": db.child_name,
            },
            "minReplicas": scaling.min_replicas,
            "maxReplicas": scaling.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": scaling.target_cpu_utilization,
                        },
                    },
                }
            ],
        },
    }


def pod_disruption_budget(db: Database) -> dict[str, Any] | None:
    """One proxy may be down for maintenance at a time, when there is more than one (with
    autoscaling: when there are always more than one, minReplicas > 1)."""
    scaling = db.autoscaling
    if (scaling.min_replicas if scaling is not None else db.replicas) <= 1:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _child_meta(db, db.child_name, "proxy"),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": db.selector()}},
    }


# Status


def database_status(
    db: Database, deployment_obj: Mapping[str, Any] | None, problems: list[Problem]
) -> tuple[dict[str, Any], list[Condition]]:
    """Status fields and Ready / Progressing / Degraded from the Deployment and the problems."""
    dep_status: Mapping[str, Any] = {}
    dep_generation = None
    dep_replicas = None
    if deployment_obj:
        s = deployment_obj.get("status")
        dep_status = s if isinstance(s, Mapping) else {}
        dep_generation = meta_of(deployment_obj).get("generation")
        dep_replicas = (deployment_obj.get("spec") or {}).get("replicas")
    try:
        scaling = db.autoscaling
        replicas = db.replicas if scaling is None else scaling.min_replicas
        if scaling is not None and isinstance(dep_replicas, int):
            replicas = dep_replicas  # what the HPA asks for now
    except InvalidSpec:
        replicas = DEFAULT_REPLICAS
    ready = int(dep_status.get("readyReplicas") or 0)
    updated = int(dep_status.get("updatedReplicas") or 0)
    observed = dep_generation is not None and dep_status.get("observedGeneration") == dep_generation
    address = f"{db.name}.{db.namespace}.svc:{SERVICE_PORT}"
    fields: dict[str, Any] = {
        "serviceName": db.name,
        "readyReplicas": ready,
        "replicas": replicas,
    }
    current_status = db.obj.get("status")
    if db.read_only_endpoint:
        fields["readOnlyServiceName"] = db.read_only_service_name
    elif isinstance(current_status, Mapping) and "readOnlyServiceName" in current_status:
        fields["readOnlyServiceName"] = None  # the reader was removed: so is the field

    gone_since = (db.meta.get("annotations") or {}).get(ANNOTATION_GONE_FROM_AWS)
    if gone_since:
        # The proxies keep serving meanwhile: the endpoint may only be renamed or re-tagged.
        ready_cond = Condition(
            "Ready",
            "False",
            "GoneFromAWS",
            f"the RDS Proxy endpoint is no longer found by the DatabaseDiscovery that created "
            f"this Database (since {gone_since}); it is deleted after the discovery's "
            "deletionGracePeriod unless it comes back",
            event="Warning",
        )
    elif deployment_obj is None:
        ready_cond = Condition(
            "Ready",
            "False",
            problems[0].reason if problems else "Creating",
            problems[0].message if problems else "the proxy Deployment is being created",
        )
    elif replicas == 0:
        ready_cond = Condition(
            "Ready",
            "False",
            "ScaledToZero",
            "spec.proxy.replicas is 0"
            if db.section("proxy").get("autoscaling") is None
            else f"the Deployment {db.child_name} was scaled to 0 by hand, which turns its "
            "HorizontalPodAutoscaler off; scale it back to spec.proxy.autoscaling.minReplicas",
        )
    elif ready >= 1:
        ready_cond = Condition(
            "Ready", "True", "ProxiesReady", f"serving {address}", event="Normal"
        )
    else:
        ready_cond = Condition(
            "Ready",
            "False",
            "ProxiesNotReady",
            f"0/{replicas} proxies ready; see kubectl -n {db.namespace} get pods "
            f"-l {LABEL_INSTANCE}={db.name}",
        )

    if deployment_obj is not None and (not observed or updated < replicas or ready < replicas):
        progressing = Condition(
            "Progressing",
            "True",
            "RollingOut",
            f"{updated}/{replicas} proxies updated, {ready}/{replicas} ready",
        )
    elif deployment_obj is None:
        progressing = Condition("Progressing", "True", "Creating", "creating the proxy Deployment")
    else:
        progressing = Condition(
            "Progressing", "False", "RolloutComplete", f"{replicas} proxies run the current config"
        )

    stalled = next(
        (
            c
            for c in dep_status.get("conditions") or ()
            if isinstance(c, Mapping)
            and c.get("type") == "Progressing"
            and c.get("reason") == "ProgressDeadlineExceeded"
        ),
        None,
    )
    if problems:
        degraded = Condition(
            "Degraded",
            "True",
            problems[0].reason,
            "; ".join(p.message for p in problems),
            event="Warning",
        )
    elif stalled is not None:
        degraded = Condition(
            "Degraded",
            "True",
            "ProgressDeadlineExceeded",
            str(stalled.get("message") or "the proxy rollout is stuck"),
            event="Warning",
        )
    else:
        degraded = Condition("Degraded", "False", "AsExpected", "no problems found")
    return fields, [ready_cond, progressing, degraded]


# The Token Secret

#: Labels every Token Secret carries: a compile lists them all with this selector (one
#: request), not one GET per Token.
TOKEN_SECRET_SELECTOR = {LABEL_NAME: "rdsgate-token", LABEL_MANAGED_BY: MANAGED_BY}
#: Labels every access Secret carries (`Database.labels_for("access")`), for the same reason.
ACCESS_SECRET_SELECTOR = {LABEL_COMPONENT: "access", LABEL_MANAGED_BY: MANAGED_BY}


def label_value(value: str) -> str:
    """`value` as a label value (at most 63 characters): itself when it fits, else a prefix
    and a hash of the whole, so that distinct values stay distinct."""
    if len(value) <= LABEL_VALUE_MAX:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:12]
    prefix = value[: LABEL_VALUE_MAX - len(digest) - 1].rstrip("-._")
    return f"{prefix}-{digest}"


def token_secret(
    token: Mapping[str, Any], name: str, data: Mapping[str, str | None]
) -> dict[str, Any]:
    meta = meta_of(token)
    token_name = str(meta.get("name"))
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": meta.get("namespace"),
            "labels": {
                **TOKEN_SECRET_SELECTOR,
                LABEL_INSTANCE: label_value(token_name),
                LABEL_TOKEN: label_value(token_name),
            },
            "annotations": {ANNOTATION_TOKEN: token_name},
            "ownerReferences": [owner_reference("Token", token_name, str(meta.get("uid")))],
        },
        "type": "Opaque",
        "data": dict(data),
    }
