"""The access file (Secret `<db>-rdsgate-access`, key `access.yaml`): compiled Roles and grants.

The data plane owns this schema; the operator compiles Role and Token resources into it.
`AccessPolicy` is the loaded, indexed form the proxy consults on each login. The format
and its matching rules are documented in docs/access-file.md.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    GetCoreSchemaHandler,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import core_schema

from .config import EndpointName, Model, format_validation_error, parse_yaml, read_file
from .durations import Duration
from .errors import ConfigError


class NamePattern:
    """A database name or user pattern: exact, `*` glob, or `^…$` regular expression."""

    __slots__ = ("_exact", "_regex", "text")

    def __init__(self, text: str) -> None:
        if not text:
            raise ValueError("an empty pattern matches nothing; remove it")
        self.text = text
        self._exact: str | None = None
        self._regex: re.Pattern[str] | None = None
        if text.startswith("^") and text.endswith("$"):
            try:
                self._regex = re.compile(text)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {text!r}: {exc}") from exc
        elif "*" in text:
            self._regex = re.compile(".*".join(re.escape(p) for p in text.split("*")) + r"\Z")
        else:
            self._exact = text

    @property
    def exact(self) -> str | None:
        """The one name this pattern matches, when it is not a glob or a regex."""
        return self._exact

    def matches(self, value: str) -> bool:
        if self._exact is not None:
            return value == self._exact
        assert self._regex is not None
        return self._regex.fullmatch(value) is not None

    def __repr__(self) -> str:
        return f"NamePattern({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NamePattern) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: type[Any], handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(
            cls,
            core_schema.str_schema(),
            serialization=core_schema.plain_serializer_function_ser_schema(lambda p: p.text),
        )


def matches_any(patterns: Iterable[NamePattern], value: str) -> NamePattern | None:
    for p in patterns:
        if p.matches(value):
            return p
    return None


class LabelSelectorRequirement(Model):
    key: str = Field(min_length=1)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _values_fit_operator(self) -> LabelSelectorRequirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"operator {self.operator} needs at least one value")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"operator {self.operator} takes no values")
        return self

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return labels.get(self.key) in self.values
        if self.operator == "NotIn":
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels


class LabelSelector(Model):
    """A Kubernetes LabelSelector; `{}` matches every Database."""

    match_labels: dict[str, str] = Field(default_factory=dict)
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list)

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels.items()) and all(
            e.matches(labels) for e in self.match_expressions
        )


class Rule(Model):
    databases: LabelSelector | None = None
    database_names: list[NamePattern] = Field(default_factory=list)
    database_users: list[NamePattern] = Field(default_factory=list)
    #: Which listeners the rule is about: `read-write` (the Service `<db>`) and `read-only`
    #: (`<db>-ro`). Omitted: both. In `deny` it scopes the rule like `databases` does.
    endpoints: list[EndpointName] | None = Field(None, min_length=1)

    def on_endpoint(self, endpoint: str) -> bool:
        return self.endpoints is None or endpoint in self.endpoints


class RoleOptions(Model):
    max_connections: int | None = Field(None, ge=1)
    max_session_duration: Duration | None = None
    audit_queries: bool | None = None
    #: Tokens naming the Role wait for an approval (the operator's business, not the proxy's).
    require_approval: bool | None = None
    #: The longest a Token naming the Role may live (the operator caps its expiry).
    max_token_ttl: Duration | None = Field(None, alias="maxTokenTTL")


class Role(Model):
    name: str = Field(min_length=1)
    allow: Rule = Rule()
    deny: Rule = Rule()
    options: RoleOptions = RoleOptions()


class ServiceAccountRef(Model):
    namespace: str = Field(min_length=1)
    name: str = Field(min_length=1)


class Grant(Model):
    """One Token: an identity, how it proves itself, its roles, and who asked for it.

    The credential is one of: `secretSha256` (a secret, as a password or through a client
    certificate bound to it), `publicKeySha256` (a key pair whose private half never left
    its owner: client certificates only, never a password), or `serviceAccount`.
    """

    identity: str = Field(min_length=1)
    secret_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    public_key_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    service_account: ServiceAccountRef | None = None
    roles: list[str] = Field(default_factory=list)
    expires_at: datetime | None = None
    #: The user the API server authenticated when the Token was created (its admission).
    requested_by: str | None = None
    #: For a Token that needed an approval: who approved it, why, and why it was asked for.
    approved_by: str | None = None
    approval_reason: str | None = None
    request_reason: str | None = None

    @model_validator(mode="after")
    def _one_credential(self) -> Grant:
        given = [self.secret_sha256, self.public_key_sha256, self.service_account]
        if sum(c is not None for c in given) != 1:
            raise ValueError(
                "a grant has exactly one of secretSha256, publicKeySha256 and serviceAccount"
            )
        return self

    @property
    def certificate_binding(self) -> str | None:
        """The digest whose first hex digits a client certificate for this grant must carry."""
        return self.secret_sha256 or self.public_key_sha256

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at


class Revocation(Model):
    """A grant the operator withheld, and why: the proxy ends its sessions with this reason."""

    identity: str = Field(min_length=1)
    reason: str = Field(min_length=1)


class AccessFile(Model):
    version: Literal[1] = 1
    roles: list[Role] = Field(default_factory=list)
    grants: list[Grant] = Field(default_factory=list)
    revoked: list[Revocation] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> AccessFile:
        # The policy keeps one grant per ServiceAccount: a second would silently do nothing.
        for what, names in (
            ("role name", [r.name for r in self.roles]),
            ("grant identity", [g.identity for g in self.grants]),
            (
                "grant serviceAccount",
                [
                    f"{g.service_account.namespace}/{g.service_account.name}"
                    for g in self.grants
                    if g.service_account is not None
                ],
            ),
        ):
            seen: set[str] = set()
            for n in names:
                if n in seen:
                    raise ValueError(f"duplicate {what} {n!r}")
                seen.add(n)
        return self


def secret_digest(secret: str) -> str:
    """The hex SHA-256 that the access file holds for a Token secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """An access file indexed for log-ins; immutable, swapped whole on reload."""

    file: AccessFile
    roles: Mapping[str, Role]
    by_identity: Mapping[str, Grant]
    by_service_account: Mapping[tuple[str, str], Grant]
    password_grants: tuple[tuple[bytes, Grant], ...]
    revocations: Mapping[str, str]  # identity → why its grant was withheld
    digest: str  # SHA-256 of the file's bytes, to log which version is in force

    @classmethod
    def build(cls, file: AccessFile, digest: str = "") -> AccessPolicy:
        return cls(
            file=file,
            roles={r.name: r for r in file.roles},
            by_identity={g.identity: g for g in file.grants},
            by_service_account={
                (g.service_account.namespace, g.service_account.name): g
                for g in file.grants
                if g.service_account is not None
            },
            password_grants=tuple(
                (bytes.fromhex(g.secret_sha256), g)
                for g in file.grants
                if g.secret_sha256 is not None
            ),
            revocations={r.identity: r.reason for r in file.revoked},
            digest=digest,
        )

    def sample_login(self, labels: Mapping[str, str]) -> tuple[str, str] | None:
        """A database user and name some role allows here by exact name, to test a log-in with."""
        for role in self.file.roles:
            allow = role.allow
            if allow.databases is None or not allow.databases.matches(labels):
                continue
            users = [p.exact for p in allow.database_users if p.exact]
            names = [p.exact for p in allow.database_names if p.exact]
            if users and names:
                return users[0], names[0]
        return None

    def current(self, grant: Grant) -> Grant | None:
        """This policy's version of a grant from an earlier one (same Token or subject)."""
        if grant.service_account is not None:
            sa = grant.service_account
            return self.by_service_account.get((sa.namespace, sa.name))
        found = self.by_identity.get(grant.identity)
        return found if found is not None and found.service_account is None else None

    def grant_for_secret(self, secret: str) -> Grant | None:
        """The grant whose secret this is; every candidate is compared in constant time."""
        digest = hashlib.sha256(secret.encode()).digest()
        found = None
        for candidate, grant in self.password_grants:
            if hmac.compare_digest(candidate, digest):
                found = grant
        return found


def parse_access(data: Any, source: str = "access file") -> AccessPolicy:
    if not isinstance(data, dict):
        raise ConfigError(source, ["the access file must be a mapping with version, roles, grants"])
    try:
        file = AccessFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, format_validation_error(exc)) from exc
    return AccessPolicy.build(file)


#: The first bytes of a gzip stream (RFC 1952). No YAML or JSON text starts with them, so an
#: access file that does is read as gzip-compressed (the operator compresses large ones).
GZIP_MAGIC = b"\x1f\x8b"
#: The most a compressed access file may inflate to (about 250,000 grants): a bound on memory.
MAX_ACCESS_BYTES = 64 * 1024 * 1024


def access_bytes(raw: bytes, source: str = "access file") -> bytes:
    """The access file's text: `raw` itself, or inflated when it is gzip-compressed."""
    if not raw.startswith(GZIP_MAGIC):
        return raw
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        text = inflater.decompress(raw, MAX_ACCESS_BYTES + 1)
    except zlib.error as exc:
        raise ConfigError(source, [f"gzip-compressed, but not a valid gzip stream: {exc}"]) from exc
    if len(text) > MAX_ACCESS_BYTES:
        raise ConfigError(
            source, [f"inflates to more than {MAX_ACCESS_BYTES} bytes; refusing to load it"]
        )
    if not inflater.eof:
        raise ConfigError(source, ["gzip-compressed, but the stream is truncated"])
    return text


def load_access(path: Path) -> AccessPolicy:
    """Reads and validates an access file (YAML or JSON, plain or gzip-compressed)."""
    raw = read_file(path)
    text = access_bytes(raw, str(path))
    policy = parse_access(parse_yaml(text, str(path)), str(path))
    return AccessPolicy.build(policy.file, hashlib.sha256(raw).hexdigest()[:12])


def utcnow() -> datetime:
    return datetime.now(UTC)
