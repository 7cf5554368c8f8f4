"""The proxy config file (ConfigMap `<db>-rdsgate`, key `config.yaml`) and its validation.

The data plane owns this schema; the operator imports it to render the file. Unknown
fields are errors so that a typo never silently falls back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from .durations import Duration
from .errors import ConfigError

REGION_PATTERN = r"^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d$"
ROLE_ARN_PATTERN = r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+$"
ENDPOINT_PATTERN = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?):\d{1,5}$"


class Model(BaseModel):
    """camelCase on disk, snake_case in Python, no unknown fields."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    def dump(self) -> dict[str, Any]:
        """The on-disk form (camelCase, durations as strings)."""
        return self.model_dump(mode="json", by_alias=True)


class DatabaseRef(Model):
    """The Database resource this proxy serves; Roles select it by its labels."""

    name: str = Field(min_length=1)
    namespace: str = "default"
    labels: dict[str, str] = Field(default_factory=dict)


class Listen(Model):
    address: str = "0.0.0.0"  # noqa: S104 - a proxy in a pod listens on all interfaces
    port: int = Field(5432, ge=1, le=65535)


class ClientTLS(Model):
    """The client-facing TLS: server certificate, and the CA that signs client certificates."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = Field(None, alias="clientCAFile")


class UpstreamTLS(Model):
    mode: Literal["verify-full", "verify-ca", "insecure"] = "verify-full"
    ca_file: Path | None = None
    server_name: str | None = None


class Warm(Model):
    """Upstream connections logged in ahead of time (`warm.py`)."""

    #: Per set of start-up parameters (user, database, application_name, ...); 0 = off.
    per_key: int = Field(2, ge=0, le=64)
    max_total: int = Field(32, ge=0, le=10000)
    #: Below RDS Proxy's idle client timeout (IdleClientTimeout, 30 minutes by default).
    idle_timeout: Duration = 300.0
    #: Parameter sets no client used for this long get no warm connections.
    forget_after: Duration = 600.0


class Upstream(Model):
    endpoint: str = Field(pattern=ENDPOINT_PATTERN)
    tls: UpstreamTLS = UpstreamTLS()
    connect_timeout: Duration = 5.0
    warm: Warm = Warm()

    @property
    def host(self) -> str:
        return self.endpoint.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])

    @field_validator("endpoint")
    @classmethod
    def _port_in_range(cls, value: str) -> str:
        port = int(value.rsplit(":", 1)[1])
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} is out of range 1-65535")
        return value


#: The two kinds of listener, as Roles (`allow.endpoints`) and audit lines (`endpoint`) name them.
EndpointName = Literal["read-write", "read-only"]
READ_WRITE: EndpointName = "read-write"
READ_ONLY: EndpointName = "read-only"


class ReadOnly(Model):
    """A second listener whose sessions log in to an RDS Proxy read-only endpoint (Database
    `spec.readOnlyEndpoint`). It shares `listen.address`, `upstream.tls` (but for the server
    name), `upstream.connectTimeout`, `upstream.warm` and `limits` with the first."""

    port: int = Field(5433, ge=1, le=65535)
    endpoint: str = Field(pattern=ENDPOINT_PATTERN)
    #: The name the reader's certificate is verified for; default: the endpoint's host
    #: (never `upstream.tls.serverName`, which names the read-write endpoint).
    server_name: str | None = None

    @field_validator("endpoint")
    @classmethod
    def _port_in_range(cls, value: str) -> str:
        return Upstream._port_in_range(value)

    def upstream(self, writer: Upstream) -> Upstream:
        """The reader's upstream: the writer's settings with this endpoint and server name."""
        tls = writer.tls.model_copy(update={"server_name": self.server_name})
        return writer.model_copy(update={"endpoint": self.endpoint, "tls": tls})


class AWS(Model):
    region: str = Field(pattern=REGION_PATTERN)
    assume_role_arn: str | None = Field(None, pattern=ROLE_ARN_PATTERN)
    external_id: str | None = Field(None, min_length=2, max_length=1224)
    #: RDS Proxy resource id (prx-...) and account, used to name the rds-db:connect resource.
    proxy_resource_id: str | None = Field(None, pattern=r"^prx-[a-z0-9]+$")
    account_id: str | None = Field(None, pattern=r"^\d{12}$")
    #: How long a signed RDS IAM auth token serves new log-ins. Tokens live 15 minutes and
    #: botocore renews credentials 10 minutes before they expire, so at most 10 minutes
    #: keeps every reused token inside its credentials' life. While credentials cannot be
    #: refreshed, log-ins go on with the tokens already signed for this long.
    token_reuse: Duration = Field(600.0, gt=0, le=600)


class Access(Model):
    file: Path
    #: How often the file (and the TLS material) is checked for a new version.
    poll_interval: Duration = 1.0


class Limits(Model):
    max_connections: int = Field(1000, ge=1)
    #: 0 disables the idle timeout.
    idle_timeout: Duration = 1800.0
    max_session_duration: Duration = 43200.0
    startup_timeout: Duration = 10.0
    drain_timeout: Duration = 30.0


class Audit(Model):
    queries: bool = True
    #: Classify each statement for what makes RDS Proxy pin the session (`pinning.py`):
    #: `rdsgate_pinning_statements_total`, `session.end`'s `pinned_by`, `/pinning`.
    pinning: bool = True
    #: Longer statements are cut to this many bytes and marked `truncated`.
    max_query_bytes: int = Field(8192, ge=64)
    #: Audit lines waiting for a stdout nobody reads, at most; past it they are dropped
    #: and counted (`audit.py`).
    max_buffer_bytes: int = Field(16 << 20, ge=4096)


class Metrics(Model):
    address: str = "0.0.0.0"  # noqa: S104
    port: int = Field(9187, ge=1, le=65535)


class ProxyConfig(Model):
    database: DatabaseRef
    listen: Listen = Listen()
    tls: ClientTLS
    upstream: Upstream
    aws: AWS
    access: Access
    limits: Limits = Limits()
    audit: Audit = Audit()
    metrics: Metrics = Metrics()
    #: The read-only listener; None: only the read-write one.
    read_only: ReadOnly | None = None

    @model_validator(mode="after")
    def _distinct_ports(self) -> ProxyConfig:
        if self.read_only is None:
            return self
        port = self.read_only.port
        if port == self.listen.port:
            raise ValueError(f"readOnly.port {port} is listen.port too; give it its own port")
        if port == self.metrics.port:
            raise ValueError(f"readOnly.port {port} is metrics.port too; give it its own port")
        return self


def format_validation_error(exc: ValidationError) -> list[str]:
    """One line per problem: `upstream.endpoint: String should match pattern ...`."""
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        elif err["type"] == "missing":
            message = "required field is missing"
        problems.append(f"{where}: {message}")
    return problems


def parse_yaml(text: bytes | str, source: str) -> Any:
    """YAML (or JSON, which is YAML), as a ConfigError on failure."""
    try:
        return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506
    except yaml.YAMLError as exc:
        raise ConfigError(source, [f"not valid YAML: {exc}"]) from exc


def read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read: {exc.strerror or exc}"]) from exc


def parse_config(data: Any, source: str = "config") -> ProxyConfig:
    if not isinstance(data, dict):
        raise ConfigError(source, ["the config must be a mapping of sections"])
    try:
        return ProxyConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, format_validation_error(exc)) from exc


def load_config(path: Path) -> ProxyConfig:
    return parse_config(parse_yaml(read_file(path), str(path)), str(path))
