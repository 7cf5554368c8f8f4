"""DatabaseDiscovery's pure core: from what AWS says and what the namespace holds, the plan.

`plan(discovery, inventory, databases, now)` decides which Databases to create, update,
mark as gone from AWS, un-mark and delete, which names conflict with someone else's
Database, what was skipped and why, and the status — without any I/O, so that the handler
(`operator/discoverer.py`) only reads, calls this and applies. The rules (docs/discovery.md):

- **Names**: the proxy name for its default endpoint, `<proxy>-<endpoint>` for a read-only
  endpoint; lowercased, characters outside `[a-z0-9-]` become `-`, runs of `-` collapse,
  at most `NAME_MAX` characters (room for the `-ro` Service and the `-rdsgate-access`
  Secret the operator derives from a Database). A name that is too long, or wanted by two
  endpoints, becomes its first 54 characters, `-`, and 5 hex digits of the SHA-256 of
  `<proxy ARN>/<endpoint name>`. Of endpoints wanting the same name, the one whose
  Database already has it keeps it, else the one with the smallest ARN/endpoint.
- **Labels**: tags made valid label keys and values (`sanitize_tags`), under the
  template's labels, under `rdsgate.dev/discovered-by`, `rdsgate.dev/endpoint-role` and
  `rdsgate.dev/aws-proxy-name`, which always win.
- **Spec**: the template's spec, with the discovered `engine`, `endpoint` and
  `aws.region/accountId/proxyResourceId` on top.
- **Ownership**: only Databases with this DatabaseDiscovery's uid as controller owner are
  ever changed. A Database whose endpoint is no longer found gets the annotation
  `rdsgate.dev/gone-from-aws-since` and is deleted `deletionGracePeriod` later; found
  again, the annotation goes.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from rdsgate.proxy.durations import parse_duration

from . import render
from .inventory import FoundProxy, Inventory, ProxyEndpoint
from .objects import meta_of, name_of, spec_of
from .status import InvalidSpec, parse_timestamp, timestamp

KIND = "DatabaseDiscovery"
#: Database names at most this long: the Service `<name>-ro` of a reader endpoint must
#: still be a DNS label (63).
NAME_MAX = 60
_HASH_LEN = 5

LABEL_DISCOVERED_BY = "rdsgate.dev/discovered-by"
LABEL_ENDPOINT_ROLE = "rdsgate.dev/endpoint-role"
LABEL_PROXY_NAME = "rdsgate.dev/aws-proxy-name"
ANNOTATION_ARN = "rdsgate.dev/aws-proxy-arn"
ANNOTATION_ENDPOINT = "rdsgate.dev/aws-proxy-endpoint"
#: The label keys the last apply took from tags and the template, comma-separated: what to
#: remove when a tag goes away (a merge patch only removes what it names).
ANNOTATION_LABELS = "rdsgate.dev/discovered-labels"
ANNOTATION_GONE = render.ANNOTATION_GONE_FROM_AWS

ROLE_VALUES = {"READ_WRITE": "read-write", "READ_ONLY": "read-only"}
SERVED_FAMILIES = ("POSTGRESQL",)
#: What a template's spec may set: the rest of a Database spec is discovered.
TEMPLATE_SPEC_KEYS = ("aws", "tls", "proxy", "audit")
TEMPLATE_AWS_KEYS = ("assumeRoleArn", "externalId")
#: Label prefixes a tag may not set: Kubernetes' own and rdsgate's.
RESERVED_PREFIXES = ("kubernetes.io", "k8s.io", "rdsgate.dev")

_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


# The spec


@dataclass(frozen=True)
class DiscoverySpec:
    regions: tuple[str, ...]
    assume_role_arn: str | None
    external_id: str | None
    tags: Mapping[str, str]
    names: tuple[str, ...]
    engine_families: tuple[str, ...]
    endpoints: frozenset[str]
    interval: float
    grace: float
    template_labels: Mapping[str, str]
    template_annotations: Mapping[str, str]
    template_spec: Mapping[str, Any]


def _duration(spec: Mapping[str, Any], key: str, default: str) -> float:
    value = spec.get(key, default)
    try:
        seconds = parse_duration(str(value))
    except ValueError as exc:
        raise InvalidSpec(f"spec.{key}: {exc}") from None
    return seconds


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidSpec(f"{where} must be a list of strings")
    return tuple(value)


def _string_map(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidSpec(f"{where} must be a map of strings")
    return {str(k): str(v) for k, v in value.items()}


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def parse_spec(obj: Mapping[str, Any]) -> DiscoverySpec:
    """The DatabaseDiscovery's spec, with the CRD's defaults; InvalidSpec says what is wrong."""
    spec = spec_of(obj)
    aws = _map(spec.get("aws"))
    regions = _strings(aws.get("regions"), "spec.aws.regions")
    if not regions:
        raise InvalidSpec("spec.aws.regions: name at least one AWS region")
    match = _map(spec.get("match"))
    families = _strings(match.get("engineFamilies"), "spec.match.engineFamilies") or ("POSTGRESQL",)
    endpoints = _strings(spec.get("endpoints"), "spec.endpoints") or ("default", "read-only")
    unknown = sorted(set(endpoints) - {"default", "read-only"})
    if unknown:
        raise InvalidSpec(f"spec.endpoints: {unknown[0]!r} is not default or read-only")
    interval = _duration(spec, "interval", "5m")
    if interval < 1:
        raise InvalidSpec("spec.interval must be at least 1s")
    template = _map(spec.get("template"))
    tmeta = _map(template.get("metadata"))
    tspec = template.get("spec")
    if tspec is not None and not isinstance(tspec, Mapping):
        raise InvalidSpec("spec.template.spec must be an object")
    for key in tspec or {}:
        if key not in TEMPLATE_SPEC_KEYS:
            raise InvalidSpec(
                f"spec.template.spec.{key}: not a Database field a template may set (it may "
                f"set {', '.join(TEMPLATE_SPEC_KEYS)}; engine and endpoint are discovered)"
            )
    taws = (tspec or {}).get("aws")
    if taws is not None:
        if not isinstance(taws, Mapping):
            raise InvalidSpec("spec.template.spec.aws must be an object")
        for key in taws:
            if key not in TEMPLATE_AWS_KEYS:
                raise InvalidSpec(
                    f"spec.template.spec.aws.{key}: discovered from AWS; a template may set "
                    "only assumeRoleArn and externalId"
                )
    return DiscoverySpec(
        regions=regions,
        assume_role_arn=aws.get("assumeRoleArn") or None,
        external_id=aws.get("externalId") or None,
        tags=_string_map(match.get("tags"), "spec.match.tags"),
        names=_strings(match.get("names"), "spec.match.names"),
        engine_families=families,
        endpoints=frozenset(endpoints),
        interval=interval,
        grace=_duration(spec, "deletionGracePeriod", "1h"),
        template_labels=_string_map(tmeta.get("labels"), "spec.template.metadata.labels"),
        template_annotations=_string_map(
            tmeta.get("annotations"), "spec.template.metadata.annotations"
        ),
        template_spec=dict(tspec or {}),
    )


# Matching


def tags_match(wanted: Mapping[str, str], tags: Mapping[str, str]) -> bool:
    """All wanted tags are there with the wanted value; "*" only asks for the key."""
    return all(k in tags and (v == "*" or tags[k] == v) for k, v in wanted.items())


def name_matches(globs: Sequence[str], name: str) -> bool:
    return not globs or any(fnmatch.fnmatchcase(name, g) for g in globs)


# Names and labels


def _dns(text: str) -> str:
    out = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if not out or not out[0].isalpha():
        out = f"x-{out}".rstrip("-")
    return out


def short_hash(arn: str, endpoint: str) -> str:
    return hashlib.sha256(f"{arn}/{endpoint}".encode()).hexdigest()[:_HASH_LEN]


def hashed_name(base: str, arn: str, endpoint: str) -> str:
    prefix = base[: NAME_MAX - _HASH_LEN - 1].rstrip("-")
    return f"{prefix}-{short_hash(arn, endpoint)}"


def base_name(proxy: FoundProxy, endpoint: ProxyEndpoint) -> str:
    """The name an endpoint's Database wants: DNS-safe, hashed when too long."""
    raw = proxy.name if endpoint.is_default else f"{proxy.name}-{endpoint.name}"
    name = _dns(raw)
    if len(name) > NAME_MAX:
        name = hashed_name(name, proxy.arn, endpoint.name)
    return name


def _label_key(key: str) -> str | None:
    """A tag key as a label key, or None when it cannot be one (or is reserved)."""
    prefix, _, name = key.rpartition("/")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-_.")
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        return None
    if not prefix:
        return name
    prefix = re.sub(r"[^a-z0-9.-]+", "-", prefix.lower()).strip("-.")
    prefix = re.sub(r"\.{2,}", ".", prefix)
    if not prefix or len(prefix) > 253 or not _LABEL_PREFIX.match(prefix):
        return None
    if any(prefix == r or prefix.endswith("." + r) for r in RESERVED_PREFIXES):
        return None
    return f"{prefix}/{name}"


def _label_value(value: str) -> str | None:
    out = re.sub(r"[^A-Za-z0-9_.-]+", "-", value).strip("-_.")
    if len(out) > 63:
        return None
    return out


def sanitize_tags(tags: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """Tags as labels, and the tag keys dropped (with why).

    A key keeps `[A-Za-z0-9_.-]` in its name part (after the last `/`), other runs become
    `-`, and must then be 1-63 characters starting and ending alphanumeric; a prefix
    (before the last `/`) is lowercased the same way and must be a DNS subdomain, not
    kubernetes.io, k8s.io or rdsgate.dev. A value is cleaned the same way and dropped if
    longer than 63. Of two tags giving the same key, the one whose key sorts first wins.
    """
    labels: dict[str, str] = {}
    dropped: list[str] = []
    for key in sorted(tags):
        label = _label_key(key)
        if label is None:
            dropped.append(f"{key}: not a valid label key")
            continue
        value = _label_value(tags[key])
        if value is None:
            dropped.append(f"{key}: value longer than 63 characters")
            continue
        if label in labels:
            dropped.append(f"{key}: same label key {label!r} as another tag")
            continue
        labels[label] = value
    return labels, dropped


# The plan


@dataclass(frozen=True)
class Wanted:
    """One endpoint that becomes a Database."""

    proxy: FoundProxy
    endpoint: ProxyEndpoint

    @property
    def key(self) -> tuple[str, str]:
        return (self.proxy.arn, self.endpoint.name)

    @property
    def role(self) -> str:
        return ROLE_VALUES.get(self.endpoint.role, "read-write")


@dataclass(frozen=True)
class Skipped:
    proxy: str
    endpoint: str | None
    reason: str

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"proxy": self.proxy, "reason": self.reason}
        if self.endpoint:
            out["endpoint"] = self.endpoint
        return out


@dataclass(frozen=True)
class Conflict:
    database: str
    proxy: str
    endpoint: str

    @property
    def message(self) -> str:
        return (
            f"Database {self.database!r} exists and is not managed by this DatabaseDiscovery; "
            f"it is left alone and {self.proxy} ({self.endpoint} endpoint) gets no Database: "
            "delete or rename it to let discovery create it"
        )


@dataclass
class Plan:
    create: list[dict[str, Any]] = field(default_factory=list)
    #: Owned Databases to bring to the rendered object (a merge patch): labels, spec, the
    #: gone annotation removed.
    update: list[dict[str, Any]] = field(default_factory=list)
    #: name → the merge patch marking it gone.
    mark_gone: dict[str, dict[str, Any]] = field(default_factory=dict)
    delete: list[str] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    #: When the next round must run at the latest (a grace period ending).
    due: datetime | None = None
    status: dict[str, Any] = field(default_factory=dict)


def _select(spec: DiscoverySpec, inventory: Inventory) -> tuple[list[Wanted], list[Skipped]]:
    wanted: list[Wanted] = []
    skipped: list[Skipped] = []
    for proxy in sorted(inventory.proxies, key=lambda p: p.arn):
        # Proxies that do not match tags or names are not listed: they are not this
        # discovery's business (and their names would leak into the namespace's status).
        if not tags_match(spec.tags, proxy.tags) or not name_matches(spec.names, proxy.name):
            continue
        family = proxy.engine_family.upper()
        if family not in spec.engine_families:
            skipped.append(
                Skipped(
                    proxy.name,
                    None,
                    f"engine family {family} is not in spec.match.engineFamilies",
                )
            )
            continue
        if family not in SERVED_FAMILIES:
            skipped.append(Skipped(proxy.name, None, f"engine family {family} is not served yet"))
            continue
        for endpoint in proxy.endpoints:
            kind = "default" if endpoint.is_default else "read-only"
            if not endpoint.is_default and endpoint.role != "READ_ONLY":
                skipped.append(
                    Skipped(
                        proxy.name,
                        endpoint.name,
                        "a read-write endpoint other than the default: use the default one",
                    )
                )
                continue
            if kind not in spec.endpoints:
                skipped.append(
                    Skipped(
                        proxy.name, endpoint.name, f"{kind} endpoints are not in spec.endpoints"
                    )
                )
                continue
            wanted.append(Wanted(proxy, endpoint))
    return wanted, skipped


def _owned(db: Mapping[str, Any], uid: str) -> bool:
    return any(
        isinstance(r, Mapping) and r.get("uid") == uid and r.get("controller")
        for r in meta_of(db).get("ownerReferences") or ()
    )


def _key_of(db: Mapping[str, Any]) -> tuple[str, str] | None:
    ann = meta_of(db).get("annotations") or {}
    arn, endpoint = ann.get(ANNOTATION_ARN), ann.get(ANNOTATION_ENDPOINT)
    return (str(arn), str(endpoint)) if arn and endpoint else None


def assign_names(
    wanted: Sequence[Wanted], owned: Mapping[tuple[str, str], str]
) -> dict[tuple[str, str], str]:
    """A Database name per wanted endpoint, unique; `owned`: the names its Databases have."""
    by_name: dict[str, list[Wanted]] = {}
    for w in wanted:
        by_name.setdefault(base_name(w.proxy, w.endpoint), []).append(w)
    names: dict[tuple[str, str], str] = {}
    for name, claimants in by_name.items():
        if len(claimants) == 1:
            names[claimants[0].key] = name
            continue
        keeper = next(
            (w for w in claimants if owned.get(w.key) == name),
            min(claimants, key=lambda w: w.key),
        )
        for w in claimants:
            names[w.key] = name if w is keeper else hashed_name(name, *w.key)
    return names


def desired_database(
    discovery: Mapping[str, Any], spec: DiscoverySpec, wanted: Wanted, name: str
) -> tuple[dict[str, Any], list[str]]:
    """The Database for one endpoint, and the tags dropped from its labels."""
    meta = meta_of(discovery)
    proxy, endpoint = wanted.proxy, wanted.endpoint
    tag_labels, dropped = sanitize_tags(proxy.tags)
    chosen = {**tag_labels, **spec.template_labels}
    labels: dict[str, Any] = {
        **chosen,
        LABEL_DISCOVERED_BY: render.label_value(name_of(discovery)),
        LABEL_ENDPOINT_ROLE: wanted.role,
        LABEL_PROXY_NAME: render.label_value(proxy.name),
    }
    template_aws = spec.template_spec.get("aws") or {}
    aws: dict[str, Any] = {
        **template_aws,
        "region": proxy.region,
        "accountId": proxy.account_id,
        "proxyResourceId": proxy.resource_id,
    }
    db_spec: dict[str, Any] = {
        **{k: v for k, v in spec.template_spec.items() if k != "aws"},
        "engine": "postgres",
        "endpoint": f"{endpoint.host}:{endpoint.port}",
        "aws": aws,
    }
    annotations = {
        **spec.template_annotations,
        ANNOTATION_ARN: proxy.arn,
        ANNOTATION_ENDPOINT: endpoint.name,
        ANNOTATION_LABELS: ",".join(sorted(chosen)),
    }
    obj = {
        "apiVersion": render.API_VERSION,
        "kind": "Database",
        "metadata": {
            "name": name,
            "namespace": str(meta.get("namespace") or "default"),
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [
                render.owner_reference(KIND, name_of(discovery), str(meta.get("uid", "")))
            ],
        },
        "spec": db_spec,
    }
    return obj, dropped


#: An endpoint as AWS describes one, to check a template on before any is found.
_SAMPLE = Wanted(
    FoundProxy(
        name="sample",
        arn="arn:aws:rds:us-east-1:123456789012:db-proxy:prx-0123456789abcdef0",
        resource_id="prx-0123456789abcdef0",
        region="us-east-1",
        account_id="123456789012",
        engine_family="POSTGRESQL",
        status="available",
    ),
    ProxyEndpoint(
        "default",
        "sample.proxy-0123.us-east-1.rds.amazonaws.com",
        5432,
        "READ_WRITE",
        True,
        "available",
    ),
)


def check_template(obj: Mapping[str, Any]) -> None:
    """Raise InvalidSpec when a rendered Database would be refused by the operator (the
    template's proxy, tls and audit settings, checked by the proxy's own config model)."""
    db = render.Database(obj)
    try:
        render.proxy_config(db)
        _ = db.replicas
    except InvalidSpec as exc:
        raise InvalidSpec(f"spec.template makes an invalid Database: {exc.message}") from None


def _with_removed_labels(desired: dict[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
    """`desired`, with None for the labels a previous apply set from tags or the template that
    are no longer wanted (a merge patch removes only what it names)."""
    before = (meta_of(current).get("annotations") or {}).get(ANNOTATION_LABELS) or ""
    labels = desired["metadata"]["labels"]
    removed = {k: None for k in str(before).split(",") if k and k not in labels}
    if removed:
        desired = {**desired, "metadata": {**desired["metadata"], "labels": {**labels, **removed}}}
    return desired


def _covers(current: Any, desired: Any) -> bool:
    if isinstance(desired, Mapping):
        if not isinstance(current, Mapping):
            return False
        return all(
            (k not in current) if v is None else (k in current and _covers(current[k], v))
            for k, v in desired.items()
        )
    return bool(current == desired)


def plan(
    discovery: Mapping[str, Any],
    inventory: Inventory,
    databases: Sequence[Mapping[str, Any]],
    now: datetime,
) -> Plan:
    """What to do to the namespace's Databases, and the DatabaseDiscovery's status fields.

    Raises InvalidSpec when the spec (or the template) is unusable: then nothing changes.
    """
    spec = parse_spec(discovery)
    uid = str(meta_of(discovery).get("uid", ""))
    out = Plan()
    check_template(desired_database(discovery, spec, _SAMPLE, "template-check")[0])
    wanted, out.skipped = _select(spec, inventory)
    live = [d for d in databases if not meta_of(d).get("deletionTimestamp")]
    by_name = {name_of(d): d for d in live}
    owned = {name_of(d): d for d in live if _owned(d, uid)}
    owned_keys = {k: n for n, d in owned.items() if (k := _key_of(d)) is not None}
    names = assign_names(wanted, owned_keys)

    kept: set[str] = set()
    # An owned Database keeps serving its endpoint under its name even when the rule would
    # now pick another (its collision partner went away): names never move. A new endpoint
    # whose name that leaves taken gets the hashed form.
    names.update({k: n for k, n in owned_keys.items() if k in names})
    fixed = {n for k, n in names.items() if owned_keys.get(k) == n}
    for w in wanted:
        if owned_keys.get(w.key) != names[w.key] and names[w.key] in fixed:
            names[w.key] = hashed_name(base_name(w.proxy, w.endpoint), *w.key)

    proxies_status: dict[str, dict[str, Any]] = {}
    dropped_all: list[str] = []
    created_names: list[str] = []
    for w in wanted:
        name = names[w.key]
        desired, dropped = desired_database(discovery, spec, w, name)
        try:
            render.proxy_config(render.Database(desired))
        except InvalidSpec as exc:
            # The template was checked above: what AWS said is what does not fit.
            out.skipped.append(
                Skipped(w.proxy.name, w.endpoint.name, f"cannot become a Database: {exc.message}")
            )
            continue
        dropped_all.extend(f"{name}: {d}" for d in dropped)
        entry = proxies_status.setdefault(
            w.proxy.arn,
            {
                "name": w.proxy.name,
                "region": w.proxy.region,
                "arn": w.proxy.arn,
                "engineFamily": w.proxy.engine_family,
                "endpoints": [],
            },
        )
        ep_status: dict[str, Any] = {
            "name": w.endpoint.name,
            "role": w.role,
            "host": w.endpoint.host,
            "status": w.endpoint.status,
        }
        current = by_name.get(name)
        if current is not None and name not in owned:
            out.conflicts.append(Conflict(name, w.proxy.name, w.endpoint.name))
            entry["endpoints"].append(ep_status)
            continue
        ep_status["database"] = name
        entry["endpoints"].append(ep_status)
        kept.add(name)
        created_names.append(name)
        if current is None:
            if w.endpoint.status.lower() != "available":
                out.skipped.append(
                    Skipped(
                        w.proxy.name,
                        w.endpoint.name,
                        f"endpoint status is {w.endpoint.status}; it becomes a Database once "
                        "available",
                    )
                )
                kept.discard(name)
                created_names.remove(name)
                del ep_status["database"]
                continue
            out.create.append(desired)
            continue
        desired = _with_removed_labels(desired, current)
        desired["metadata"]["annotations"][ANNOTATION_GONE] = None
        if not _covers(current, desired):
            out.update.append(desired)

    gone: list[dict[str, Any]] = []
    grace = timedelta(seconds=spec.grace)
    for name, db in sorted(owned.items()):
        if name in kept:
            continue
        since_text = (meta_of(db).get("annotations") or {}).get(ANNOTATION_GONE)
        since = None
        if since_text:
            try:
                since = parse_timestamp(str(since_text))
            except ValueError:
                since = None
        if since is None:
            since = now
            out.mark_gone[name] = {"metadata": {"annotations": {ANNOTATION_GONE: timestamp(now)}}}
        if now >= since + grace:
            out.delete.append(name)
            continue
        deadline = since + grace
        out.due = deadline if out.due is None else min(out.due, deadline)
        gone.append(
            {"database": name, "since": timestamp(since), "deleteAfter": timestamp(deadline)}
        )

    databases_count = len(kept) + len(gone)
    out.status = {
        "found": len(wanted),
        "databases": databases_count,
        "proxies": list(proxies_status.values()),
        "created": sorted(created_names),
        "skipped": [s.status() for s in out.skipped],
        "conflicts": [
            {"database": c.database, "proxy": c.proxy, "endpoint": c.endpoint, "message": c.message}
            for c in out.conflicts
        ],
        "goneFromAWS": gone,
        "droppedLabels": dropped_all,
    }
    return out
