"""A stand-in for Amazon RDS Proxy with IAM authentication required, for tests and the demo.

`RdsProxyStandIn` is a TLS Postgres front on 127.0.0.1 that behaves, as seen by a client,
like an RDS Proxy endpoint whose Auth entries say `IAMAuth: REQUIRED`:

* SSLRequest → `S` and TLS (certificate from the lab CA for `localhost` and 127.0.0.1),
  GSSENCRequest → `N`; a plaintext StartupMessage gets FATAL 28000 "This RDS Proxy
  requires TLS connections." when the proxy's RequireTLS is on.
* It asks for a cleartext password and checks it as an RDS IAM auth token: the SigV4
  query signature is recomputed with the secret of the access key, looked up in moto's
  in-process IAM (users) and STS (assumed roles) state, then expiry, host, port, user and
  the principal's `rds-db:connect` permission on
  `arn:aws:rds-db:REGION:ACCOUNT:dbuser:PRX-ID/USER` are checked (moto's policy evaluator;
  an explicit Deny wins). Every failure gives the client RDS Proxy's generic 28P01 text;
  the specific reason goes only to the `rdsgate.lab.rdsproxy` logger and to
  `RdsProxyStandIn.rejections`, as on AWS, where it only shows in CloudWatch.
* The proxy's Auth entries come from moto's RDS (`describe_db_proxies`) and the logins
  from Secrets Manager, over the API, as RDS Proxy reads them. With them it logs in to the
  real PostgreSQL over verified TLS with SCRAM-SHA-256, forwards the server's start-up
  replies (AuthenticationOk, ParameterStatus, BackendKeyData unchanged, ReadyForQuery)
  and then relays bytes both ways. A CancelRequest (plain or inside TLS) is forwarded to
  PostgreSQL, which works because BackendKeyData passes through unchanged.

It runs its own asyncio loop in a background thread, so synchronous tests and the demo
can use it, and it must live in the process that runs the `AwsLab` (moto's state is read
in memory). What it does not do: connection pooling and multiplexing, session pinning,
direct TLS (`sslnegotiation=direct`), SCRAM channel binding to PostgreSQL.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import hmac
import json
import logging
import os
import shutil
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, NoReturn, Self
from urllib.parse import quote, unquote

from rdsgate.operator import pki
from rdsgate.proxy import wire
from rdsgate.proxy.errors import ProtocolViolation

from .aws import AwsLab, DbProxy
from .lifecycle import Service
from .scram import MECHANISM as SCRAM_SHA_256
from .scram import ScramClient, ScramError

log = logging.getLogger("rdsgate.lab.rdsproxy")

TLS_REQUIRED = "This RDS Proxy requires TLS connections."
IAM_AUTH_FAILED = (
    "The IAM authentication failed for the role {user}. "
    "Check the IAM token for this role and try again."
)
NO_CREDENTIALS = (
    "This RDS proxy has no credentials for the role {user}. "
    "Check the credentials for this role and try again."
)
#: Not a documented RDS Proxy text: what this stand-in says when PostgreSQL or moto fails it.
UPSTREAM_UNAVAILABLE = "RDS Proxy could not connect to the database for the role {user}."

MAX_TOKEN_LIFETIME = 900
CLOCK_SKEW = timedelta(minutes=5)
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_AMZ_DATE = "%Y%m%dT%H%M%SZ"
_UNRESERVED = "-_.~"
_READ_CHUNK = 256 * 1024
_STREAM_LIMIT = 1 << 20


# ---------------------------------------------------------------------------------------
# IAM auth tokens


class TokenRejected(Exception):
    """The token does not let this principal log in; `reason` is a short code for tests."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class AuthToken:
    """An RDS IAM auth token taken apart (`host:port/?Action=connect&DBUser=…&X-Amz-…`)."""

    host: str
    port: int
    params: tuple[tuple[str, str], ...]

    def get(self, name: str) -> str | None:
        for key, value in self.params:
            if key == name:
                return value
        return None

    def require(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise TokenRejected("malformed-token", f"the token has no {name}")
        return value


def parse_auth_token(token: str) -> AuthToken:
    netloc, sep, query = token.partition("/?")
    if not sep or not query:
        raise TokenRejected("malformed-token", "the password is not an IAM auth token")
    host, colon, port_text = netloc.rpartition(":")
    if not colon or not host or not port_text.isdigit():
        raise TokenRejected("malformed-token", f"the token's endpoint {netloc!r} has no port")
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for part in query.split("&"):
        key, _, value = part.partition("=")
        key, value = unquote(key), unquote(value)
        if key in seen:
            raise TokenRejected("malformed-token", f"the token repeats {key}")
        seen.add(key)
        pairs.append((key, value))
    return AuthToken(host=host, port=int(port_text), params=tuple(pairs))


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def expected_signature(token: AuthToken, secret_access_key: str) -> str:
    """SigV4 of a presigned `GET /` on `host:port`, signed header `host`, empty payload."""
    query = sorted(
        (quote(k, safe=_UNRESERVED), quote(v, safe=_UNRESERVED))
        for k, v in token.params
        if k != "X-Amz-Signature"
    )
    host_header = token.host if token.port == 443 else f"{token.host}:{token.port}"
    canonical_request = "\n".join(
        [
            "GET",
            "/",
            "&".join(f"{k}={v}" for k, v in query),
            f"host:{host_header}",
            "",
            "host",
            EMPTY_SHA256,
        ]
    )
    amz_date = token.require("X-Amz-Date")
    scope = token.require("X-Amz-Credential").split("/", 1)[1]
    string_to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            amz_date,
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    date, region, service, terminator = scope.split("/")
    key = _hmac(f"AWS4{secret_access_key}".encode(), date)
    for part in (region, service, terminator):
        key = _hmac(key, part)
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who signed a token, as IAM sees it; `policies` are moto policy objects or documents."""

    kind: Literal["user", "assumed-role"]
    arn: str
    access_key_id: str
    secret_access_key: str
    session_token: str | None
    policies: tuple[Any, ...]
    session_policy: str | None = None
    expiration: datetime | None = None


def _partition(region: str) -> str:
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def find_principal(account_id: str, partition: str, access_key_id: str) -> Principal | None:
    """The IAM user or assumed-role session that owns an access key, from moto's memory."""
    from moto.iam.models import iam_backends
    from moto.sts.models import sts_backends

    iam = iam_backends[account_id][partition]
    assumed = sts_backends[account_id][partition].get_assumed_role_from_access_key(access_key_id)
    if assumed is not None:
        role_name = str(assumed.role_arn).split("/")[-1]
        policies: list[Any] = []
        try:
            iam.get_role(role_name)
        except Exception:  # moto lets a caller assume a role that does not exist
            role_exists = False
        else:
            role_exists = True
        if role_exists:
            for name in iam.list_role_policies(role_name):
                policies.append(iam.get_role_policy(role_name, name)[1])
            policies.extend(iam.list_attached_role_policies(role_name)[0])
        expiration = assumed.expiration
        if expiration.tzinfo is None:
            expiration = expiration.replace(tzinfo=UTC)
        return Principal(
            kind="assumed-role",
            arn=str(assumed.arn),
            access_key_id=access_key_id,
            secret_access_key=str(assumed.secret_access_key),
            session_token=str(assumed.session_token),
            policies=tuple(policies),
            session_policy=assumed.policy or None,
            expiration=expiration,
        )
    for user in list(iam.users.values()):
        for key in list(user.access_keys):
            if key.access_key_id != access_key_id:
                continue
            if key.status != "Active":
                raise TokenRejected("inactive-access-key", f"{access_key_id} is {key.status}")
            policies = [
                iam.get_user_policy(user.name, n) for n in iam.list_user_policies(user.name)
            ]
            policies.extend(iam.list_attached_user_policies(user.name)[0])
            for group in iam.get_groups_for_user(user.name):
                for name in iam.list_group_policies(group.name):
                    policies.append(iam.get_group_policy(group.name, name))
                policies.extend(iam.list_attached_group_policies(group.name)[0])
            return Principal(
                kind="user",
                arn=str(user.arn),
                access_key_id=access_key_id,
                secret_access_key=str(key.secret_access_key),
                session_token=None,
                policies=tuple(policies),
            )
    return None


def evaluate(
    policies: Sequence[Any], action: str, resource: str
) -> Literal["allow", "deny", "none"]:
    """IAM's rule over identity policies: an explicit Deny wins, then any Allow, else none."""
    from moto.iam.access_control import IAMPolicy, PermissionResult

    allowed = False
    for policy in policies:
        result = IAMPolicy(policy).is_action_permitted(action, resource)
        if result == PermissionResult.DENIED:
            return "deny"
        if result == PermissionResult.PERMITTED:
            allowed = True
    return "allow" if allowed else "none"


def dbuser_arn(region: str, account_id: str, resource_id: str, user: str) -> str:
    return f"arn:{_partition(region)}:rds-db:{region}:{account_id}:dbuser:{resource_id}/{user}"


def verify_auth_token(
    token: str,
    *,
    user: str,
    host: str,
    port: int,
    region: str,
    account_id: str,
    resource_id: str,
    now: datetime | None = None,
) -> Principal:
    """Check an RDS IAM auth token as RDS Proxy does: the signer, or TokenRejected."""
    parsed = parse_auth_token(token)
    if parsed.require("Action") != "connect":
        raise TokenRejected("malformed-token", f"Action is {parsed.get('Action')!r}, not connect")
    algorithm = parsed.require("X-Amz-Algorithm")
    if algorithm != "AWS4-HMAC-SHA256":
        raise TokenRejected("malformed-token", f"unsupported algorithm {algorithm}")
    if parsed.require("X-Amz-SignedHeaders") != "host":
        raise TokenRejected("malformed-token", "the token must sign exactly the host header")
    credential = parsed.require("X-Amz-Credential").split("/")
    if len(credential) != 5 or credential[4] != "aws4_request":
        raise TokenRejected("malformed-token", "malformed X-Amz-Credential")
    access_key_id, scope_date, scope_region, scope_service, _ = credential
    amz_date = parsed.require("X-Amz-Date")
    try:
        signed_at = datetime.strptime(amz_date, _AMZ_DATE).replace(tzinfo=UTC)
        expires = int(parsed.require("X-Amz-Expires"))
    except ValueError as exc:
        raise TokenRejected("malformed-token", f"bad X-Amz-Date or X-Amz-Expires: {exc}") from exc
    if scope_date != amz_date[:8]:
        raise TokenRejected("malformed-token", "the credential scope date is not X-Amz-Date's")
    signature = parsed.require("X-Amz-Signature")

    principal = find_principal(account_id, _partition(region), access_key_id)
    if principal is None:
        raise TokenRejected("unknown-access-key", f"no IAM user or session has key {access_key_id}")
    session_token = parsed.get("X-Amz-Security-Token")
    if principal.session_token is None and session_token is not None:
        raise TokenRejected(
            "invalid-session-token", f"{access_key_id} is a long-term key: no session token"
        )
    if principal.session_token is not None and not hmac.compare_digest(
        (session_token or "").encode(), principal.session_token.encode()
    ):
        raise TokenRejected(
            "invalid-session-token", f"the session token does not belong to {access_key_id}"
        )
    if not hmac.compare_digest(expected_signature(parsed, principal.secret_access_key), signature):
        raise TokenRejected(
            "bad-signature", f"the SigV4 signature does not match ({principal.arn})"
        )

    now = now or datetime.now(UTC)
    if expires > MAX_TOKEN_LIFETIME or expires <= 0:
        raise TokenRejected(
            "expires-too-long", f"X-Amz-Expires={expires}; at most {MAX_TOKEN_LIFETIME} s"
        )
    if now > signed_at + timedelta(seconds=expires):
        raise TokenRejected(
            "expired",
            f"signed at {signed_at:%Y-%m-%dT%H:%M:%SZ}, valid {expires} s, now {now:%H:%M:%S}",
        )
    if signed_at > now + CLOCK_SKEW:
        raise TokenRejected("not-yet-valid", f"signed in the future ({amz_date})")
    if principal.expiration is not None and now > principal.expiration:
        raise TokenRejected("credentials-expired", f"the session of {principal.arn} has expired")

    if parsed.host.lower() != host.lower():
        raise TokenRejected("wrong-host", f"token for host {parsed.host!r}, this proxy is {host!r}")
    if parsed.port != port:
        raise TokenRejected("wrong-port", f"token for port {parsed.port}, this proxy is on {port}")
    db_user = parsed.require("DBUser")
    if db_user != user:
        raise TokenRejected("wrong-user", f"token for DBUser {db_user!r}, startup user {user!r}")
    if scope_region != region:
        raise TokenRejected("wrong-region", f"signed for {scope_region}, this proxy is in {region}")
    if scope_service != "rds-db":
        raise TokenRejected("wrong-service", f"signed for service {scope_service}, not rds-db")

    resource = dbuser_arn(region, account_id, resource_id, user)
    verdict = evaluate(principal.policies, "rds-db:connect", resource)
    if verdict == "deny":
        raise TokenRejected(
            "explicit-deny", f"{principal.arn}: explicit Deny of rds-db:connect on {resource}"
        )
    if verdict == "none":
        raise TokenRejected(
            "not-authorized", f"{principal.arn} is not allowed rds-db:connect on {resource}"
        )
    if (
        principal.session_policy
        and evaluate([principal.session_policy], "rds-db:connect", resource) != "allow"
    ):
        raise TokenRejected(
            "not-authorized", f"the session policy of {principal.arn} does not allow {resource}"
        )
    return principal


# ---------------------------------------------------------------------------------------
# The stand-in


@dataclass(frozen=True)
class Rejection:
    """A refused login: what the client saw (`sqlstate`, `message`) and why (`reason`, `detail`)."""

    user: str
    database: str
    reason: str
    detail: str
    sqlstate: str
    message: str
    client: str
    at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Login:
    """One Auth entry of the proxy, resolved through Secrets Manager."""

    username: str
    password: str
    iam_auth: str
    secret_arn: str


@dataclass
class _AuthConfig:
    logins: dict[str, Login]
    require_tls: bool
    fetched: float


@dataclass
class _Who:
    """The session a rejection is about."""

    client: str
    user: str = ""
    database: str = ""


def _md5_password(login: Login, salt: bytes) -> str:
    inner = hashlib.md5((login.password + login.username).encode()).hexdigest()  # noqa: S324
    return "md5" + hashlib.md5(inner.encode() + salt).hexdigest()  # noqa: S324


class _Refused(Exception):
    """Ends a session with one ErrorResponse (already recorded, or not a login failure)."""

    def __init__(self, packet: bytes) -> None:
        super().__init__()
        self.packet = packet


def _localhost_has_ipv6() -> bool:
    try:
        infos = socket.getaddrinfo("localhost", None, socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        return False
    return any(info[4][0] == "::1" for info in infos)


async def _read_startup(reader: asyncio.StreamReader) -> wire.StartupPacket:
    head = await reader.readexactly(4)
    length = int.from_bytes(head, "big", signed=True)
    if length < 8 or length > wire.MAX_STARTUP_PACKET:
        raise ProtocolViolation(f"invalid length of startup packet: {length}")
    parser = wire.Reader()
    parser.feed(head + await reader.readexactly(length - 4))
    packet = parser.read_startup()
    assert packet is not None  # the whole packet was fed
    return packet


async def _read_message(reader: asyncio.StreamReader) -> tuple[wire.Message, bytes]:
    """One typed message and its raw bytes (to forward unchanged)."""
    head = await reader.readexactly(5)
    length = int.from_bytes(head[1:], "big")
    if length < 4 or length > wire.MAX_MESSAGE:
        raise ProtocolViolation(f"invalid message length {length}")
    body = await reader.readexactly(length - 4)
    return wire.Message(head[:1], body), head + body


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, TimeoutError, ssl.SSLError, asyncio.IncompleteReadError):
        await asyncio.wait_for(writer.wait_closed(), 5)


class RdsProxyStandIn(Service):
    """An RDS Proxy endpoint (`localhost:PORT`) in front of a real PostgreSQL; see the module doc.

    `db_proxy` names the RDS Proxy in the `AwsLab` whose Auth entries and secrets it serves.
    `upstream_*` is the PostgreSQL it logs in to (verified with `upstream_ca_file`). Its own
    server certificate is issued by `ca` (the lab CA) for `localhost` and 127.0.0.1.
    Auth entries and secrets are re-read after `auth_cache_seconds`.

    `login_delay` (seconds, default 0) holds back the answer to an accepted password for
    that long before the database log-in and AuthenticationOk, standing in for what an IAM
    log-in to RDS Proxy costs on AWS (a round trip, IAM authentication, the database
    log-in). Refused passwords are answered at once; other sessions go on meanwhile.
    """

    def __init__(
        self,
        aws: AwsLab,
        db_proxy: DbProxy | str,
        *,
        upstream_host: str,
        upstream_port: int,
        upstream_ca_file: str | Path,
        upstream_server_name: str | None = None,
        ca: pki.KeyPair | None = None,
        listen_host: str = "127.0.0.1",
        endpoint_host: str = "localhost",
        port: int = 0,
        auth_cache_seconds: float = 1.0,
        startup_timeout: float = 30.0,
        login_delay: float = 0.0,
    ) -> None:
        if login_delay < 0:
            raise ValueError(f"login_delay must not be negative, got {login_delay}")
        self.aws = aws
        self.db_proxy_name = db_proxy.name if isinstance(db_proxy, DbProxy) else db_proxy
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.upstream_ca_file = Path(upstream_ca_file)
        self.upstream_server_name = upstream_server_name or upstream_host
        self.ca = ca or pki.make_ca("rdsgate lab CA")
        self.listen_host = listen_host
        self.host = endpoint_host
        self.auth_cache_seconds = auth_cache_seconds
        self.startup_timeout = startup_timeout
        self.login_delay = login_delay
        self.rejections: list[Rejection] = []
        self.sessions_total = 0
        self.resource_id = ""
        self.region = aws.region
        self.account_id = ""
        self._port_arg = port
        self.port = 0
        #: Names of this stand-in's threads start with this (the loop, its AWS workers).
        self.thread_name = f"rdsproxy-standin-{os.urandom(3).hex()}"
        self._dir: Path | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        self._auth: _AuthConfig | None = None
        self._auth_fetch: asyncio.Future[_AuthConfig] | None = None
        self._lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> Self:
        if self._thread is not None:
            return self
        proxy = self._describe()
        self.resource_id = str(proxy["DBProxyArn"]).rsplit(":", 1)[-1]
        self.account_id = str(proxy["DBProxyArn"]).split(":")[4]
        self._dir = Path(tempfile.mkdtemp(prefix="rdsgate-rdsproxy-"))
        names = list(dict.fromkeys([self.host, "localhost"]))
        cert = pki.issue_server_cert(self.ca, names, ["127.0.0.1"], days=30)
        (self._dir / "server.crt").write_bytes(cert.cert_pem)
        (self._dir / "server.key").write_bytes(cert.key_pem)
        (self._dir / "server.key").chmod(0o600)
        self.ca_file.write_bytes(self.ca.cert_pem)
        self._server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._server_tls.minimum_version = ssl.TLSVersion.TLSv1_2
        self._server_tls.load_cert_chain(self._dir / "server.crt", self._dir / "server.key")
        self._upstream_tls = ssl.create_default_context(cafile=str(self.upstream_ca_file))
        self._executor = concurrent.futures.ThreadPoolExecutor(
            4, thread_name_prefix=f"{self.thread_name}-aws"
        )
        ready: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name=self.thread_name, daemon=True
        )
        self._thread.start()
        try:
            self.port = ready.result(timeout=30)
        except BaseException:
            self.stop()
            raise
        log.info("RDS Proxy stand-in %s listening on %s", self.db_proxy_name, self.endpoint)
        return self

    def stop(self) -> None:
        """Close the listener and every session, end the loop thread, remove the files."""
        thread, self._thread = self._thread, None
        if thread is not None:
            loop, event = self._loop, self._stop_event
            if loop is not None and event is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(event.set)
            thread.join(timeout=30)
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    @property
    def endpoint(self) -> str:
        """The endpoint name clients connect to and mint tokens for: `localhost:PORT`."""
        return f"{self.host}:{self.port}"

    @property
    def ca_file(self) -> Path:
        if self._dir is None:
            raise RuntimeError("the stand-in is not started")
        return self._dir / "ca.crt"

    @property
    def active_sessions(self) -> int:
        return len(self._sessions)

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that verifies this endpoint as `sslmode=verify-full` does."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def rejections_since(self, mark: int) -> list[Rejection]:
        """Rejections recorded after `mark = len(standin.rejections)` was taken."""
        with self._lock:
            return self.rejections[mark:]

    # -- the loop thread ------------------------------------------------------------

    def _run(self, ready: concurrent.futures.Future[int]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(ready))
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            else:
                log.exception("the RDS Proxy stand-in loop failed")
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self, ready: concurrent.futures.Future[int]) -> None:
        self._stop_event = asyncio.Event()
        servers = [
            await asyncio.start_server(
                self._accept, self.listen_host, self._port_arg, limit=_STREAM_LIMIT, backlog=512
            )
        ]
        port: int = servers[0].sockets[0].getsockname()[1]
        if self.listen_host == "127.0.0.1" and self.host == "localhost" and _localhost_has_ipv6():
            try:
                servers.append(
                    await asyncio.start_server(
                        self._accept, "::1", port, limit=_STREAM_LIMIT, backlog=512
                    )
                )
            except OSError:
                log.warning("localhost resolves to ::1 but [::1]:%d is taken", port)
        ready.set_result(port)
        await self._stop_event.wait()
        for server in servers:
            server.close()
        for task in list(self._sessions):
            task.cancel()
        await asyncio.gather(*self._sessions, return_exceptions=True)
        for server in servers:
            await server.wait_closed()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._session(reader, writer))
        self._sessions.add(task)
        self.sessions_total += 1
        task.add_done_callback(self._sessions.discard)

    # -- one client -----------------------------------------------------------------

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        who = _Who(client=f"{peer[0]}:{peer[1]}" if peer else "?")
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            try:
                login = self._login(reader, writer, who)
                upstream = await asyncio.wait_for(login, self.startup_timeout)
            except _Refused as refused:
                writer.write(refused.packet)
                await writer.drain()
                return
            except ProtocolViolation as exc:
                writer.write(wire.error_response("08P01", exc.message))
                await writer.drain()
                return
            if upstream is not None:
                await self._relay(reader, writer, *upstream)
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError, TimeoutError) as exc:
            log.debug("session from %s ended: %r", who.client, exc)
        except Exception:
            log.exception("session from %s failed", who.client)
        finally:
            # The client first, so it hears at once that its session ended; when stopping,
            # the database gets no goodbye to wait for (a backend in pg_sleep reads nothing).
            await _close(writer)
            if upstream is not None:
                if self._stop_event is not None and self._stop_event.is_set():
                    upstream[1].transport.abort()
                else:
                    await _close(upstream[1])

    async def _login(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, who: _Who
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """Start-up and authentication; None after a forwarded CancelRequest."""
        tls = False
        while True:
            packet = await _read_startup(reader)
            if isinstance(packet, wire.StartupMessage):
                break
            if isinstance(packet, wire.SSLRequest):
                if tls:
                    raise ProtocolViolation("SSLRequest inside TLS")
                writer.write(b"S")
                await writer.drain()
                await writer.start_tls(self._server_tls)
                tls = True
            elif isinstance(packet, wire.GSSENCRequest):
                writer.write(b"N")
                await writer.drain()
            else:
                await self._forward_cancel(packet)
                return None
        params = dict(packet.params)
        who.user = user = params.get("user", "")
        who.database = params.get("database") or user
        if not user:
            no_user = "no PostgreSQL user name specified in startup packet"
            raise _Refused(wire.error_response("28000", no_user))
        unavailable = UPSTREAM_UNAVAILABLE.format(user=user)
        try:
            auth = await self._auth_config()
        except Exception as exc:
            self._reject(who, "aws-unavailable", repr(exc), "08001", unavailable)
        if not tls and auth.require_tls:
            self._reject(who, "tls-required", "plaintext StartupMessage", "28000", TLS_REQUIRED)
        extras = [k for k in params if k.startswith("_pq_.")]
        if packet.minor > 0 or extras:
            writer.write(wire.negotiate_protocol_version(0, extras))
            for key in extras:
                del params[key]

        writer.write(wire.authentication_cleartext())
        await writer.drain()
        message, _ = await _read_message(reader)
        if message.type != b"p":
            raise ProtocolViolation(f"expected a password message, got {message.type!r}")
        password = wire.parse_password(message.body)

        login = auth.logins.get(user)
        iam_auth = login.iam_auth if login else "REQUIRED"
        if iam_auth == "DISABLED" or (iam_auth == "ENABLED" and "X-Amz-Signature=" not in password):
            if login is None or not hmac.compare_digest(password.encode(), login.password.encode()):
                failed = f'password authentication failed for user "{user}"'
                self._reject(who, "bad-password", "not the secret's password", "28P01", failed)
        else:
            try:
                principal = verify_auth_token(
                    password,
                    user=user,
                    host=self.host,
                    port=self.port,
                    region=self.region,
                    account_id=self.account_id,
                    resource_id=self.resource_id,
                )
            except TokenRejected as exc:
                failed = IAM_AUTH_FAILED.format(user=user)
                self._reject(who, exc.reason, exc.detail, "28P01", failed)
            log.info("IAM login as %s by %s from %s", user, principal.arn, who.client)
        if login is None:
            detail = f"no Auth entry of {self.db_proxy_name} has a secret for {user!r}"
            self._reject(who, "no-credentials", detail, "28P01", NO_CREDENTIALS.format(user=user))

        if self.login_delay:
            # What RDS Proxy's IAM log-in costs on AWS; not a synchronisation.
            await asyncio.sleep(self.login_delay)
        params["user"] = login.username
        params["database"] = who.database
        return await self._upstream_login(writer, params, login, who)

    def _record(self, who: _Who, reason: str, detail: str, sqlstate: str, message: str) -> None:
        rejection = Rejection(who.user, who.database, reason, detail, sqlstate, message, who.client)
        with self._lock:
            self.rejections.append(rejection)
        log.warning("refused login as %s from %s: %s (%s)", who.user, who.client, reason, detail)

    def _reject(self, who: _Who, reason: str, detail: str, sqlstate: str, message: str) -> NoReturn:
        """Record the specific reason, then end the session with the client-facing error."""
        self._record(who, reason, detail, sqlstate, message)
        raise _Refused(wire.error_response(sqlstate, message))

    async def _upstream_login(
        self, client: asyncio.StreamWriter, params: dict[str, str], login: Login, who: _Who
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """TLS and SCRAM login to PostgreSQL; forwards its replies up to ReadyForQuery."""
        unavailable = UPSTREAM_UNAVAILABLE.format(user=who.user)
        try:
            reader, writer = await asyncio.open_connection(
                self.upstream_host, self.upstream_port, limit=_STREAM_LIMIT
            )
        except OSError as exc:
            self._reject(who, "upstream-unreachable", repr(exc), "08001", unavailable)
        try:
            writer.write(wire.ssl_request())
            await writer.drain()
            if await reader.readexactly(1) != b"S":
                self._reject(who, "upstream-no-tls", "SSLRequest refused", "08001", unavailable)
            await writer.start_tls(self._upstream_tls, server_hostname=self.upstream_server_name)
            writer.write(wire.startup_message(params))
            await writer.drain()
            scram: ScramClient | None = None
            while True:
                message, raw = await _read_message(reader)
                if message.type == b"E":
                    fields = wire.parse_fields(message.body)
                    sqlstate, text = fields.get("C", "XX000"), fields.get("M", "")
                    self._reject(who, "upstream-refused", text, sqlstate, text)
                if message.type == b"v":
                    continue
                if message.type != b"R":
                    raise ProtocolViolation(f"unexpected {message.type!r} during database login")
                code, payload = wire.parse_auth_request(message.body)
                if code == wire.AUTH_OK:
                    client.write(raw)
                    break
                if code == wire.AUTH_SASL:
                    if SCRAM_SHA_256 not in wire.parse_sasl_mechanisms(payload):
                        raise ProtocolViolation("the database offers no SCRAM-SHA-256")
                    scram = ScramClient(login.password)
                    writer.write(wire.sasl_initial_response(SCRAM_SHA_256, scram.client_first()))
                elif code == wire.AUTH_SASL_CONTINUE and scram is not None:
                    writer.write(wire.sasl_response(scram.client_final(payload)))
                elif code == wire.AUTH_SASL_FINAL and scram is not None:
                    scram.verify(payload)
                    continue
                elif code == wire.AUTH_CLEARTEXT:
                    writer.write(wire.password_message(login.password))
                elif code == wire.AUTH_MD5:
                    writer.write(wire.password_message(_md5_password(login, payload[:4])))
                else:
                    raise ProtocolViolation(f"unsupported database authentication request {code}")
                await writer.drain()
            while True:
                message, raw = await _read_message(reader)
                client.write(raw)
                if message.type == b"E":
                    fields = wire.parse_fields(message.body)
                    text = fields.get("M", "")
                    self._record(who, "upstream-refused", text, fields.get("C", "XX000"), text)
                    await client.drain()
                    raise _Refused(b"")
                if message.type == b"Z":
                    await client.drain()
                    return reader, writer
        except ScramError as exc:
            await _close(writer)
            self._reject(who, "upstream-scram", str(exc), "08001", unavailable)
        except BaseException:
            await _close(writer)
            raise

    async def _relay(
        self,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        pumps = [
            asyncio.ensure_future(_pump(client_reader, writer)),
            asyncio.ensure_future(_pump(reader, client_writer)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

    async def _forward_cancel(self, packet: wire.CancelRequest) -> None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.upstream_host, self.upstream_port), 5
            )
        except (OSError, TimeoutError) as exc:
            log.warning("could not forward a CancelRequest: %r", exc)
            return
        try:
            writer.write(wire.cancel_request(packet.pid, packet.secret))
            await writer.drain()
            await asyncio.wait_for(reader.read(), 5)
        except (OSError, TimeoutError):
            pass
        finally:
            await _close(writer)

    # -- AWS ------------------------------------------------------------------------

    def _describe(self) -> dict[str, Any]:
        proxies = self.aws.client("rds").describe_db_proxies(DBProxyName=self.db_proxy_name)
        found: dict[str, Any] = proxies["DBProxies"][0]
        return found

    def _fetch_auth(self) -> _AuthConfig:
        """Auth entries from RDS, then each secret from Secrets Manager (in a worker thread)."""
        proxy = self._describe()
        secrets = self.aws.client("secretsmanager")
        logins: dict[str, Login] = {}
        for entry in proxy.get("Auth", []):
            arn = entry.get("SecretArn")
            if entry.get("AuthScheme", "SECRETS") != "SECRETS" or not arn:
                continue
            try:
                value = json.loads(secrets.get_secret_value(SecretId=arn)["SecretString"])
                login = Login(
                    str(value["username"]),
                    str(value["password"]),
                    str(entry.get("IAMAuth", "DISABLED")),
                    arn,
                )
            except Exception as exc:
                log.warning("RDS Proxy %s cannot use secret %s: %r", self.db_proxy_name, arn, exc)
                continue
            logins.setdefault(login.username, login)
        return _AuthConfig(logins, bool(proxy.get("RequireTLS", False)), time.monotonic())

    async def _auth_config(self) -> _AuthConfig:
        auth = self._auth
        if auth is not None and time.monotonic() - auth.fetched < self.auth_cache_seconds:
            return auth
        fetch = self._auth_fetch
        if fetch is None:
            loop = asyncio.get_running_loop()
            fetch = asyncio.ensure_future(loop.run_in_executor(self._executor, self._fetch_auth))
            self._auth_fetch = fetch
            fetch.add_done_callback(self._fetch_done)
        result = await asyncio.shield(fetch)
        self._auth = result
        return result

    def _fetch_done(self, _: asyncio.Future[_AuthConfig]) -> None:
        self._auth_fetch = None


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(_READ_CHUNK):
        writer.write(data)
        await writer.drain()


def wait_for(condition: Callable[[], bool], *, timeout: float = 10.0) -> bool:
    """Poll `condition` until it holds or `timeout` passes; return whether it held.

    For synchronous callers of this in-process rig: wait for a state, never for a time.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def standin_for(
    aws: AwsLab,
    upstream_host: str,
    upstream_port: int,
    upstream_ca_file: str | Path,
    logins: Mapping[str, str],
    *,
    name: str | None = None,
    ca: pki.KeyPair | None = None,
) -> RdsProxyStandIn:
    """Create the RDS Proxy in moto (one secret per login) and a stand-in for it (not started)."""
    proxy = aws.create_rds_proxy(name or f"lab-{int(time.time() * 1000) % 10**9}", logins)
    return RdsProxyStandIn(
        aws,
        proxy,
        upstream_host=upstream_host,
        upstream_port=upstream_port,
        upstream_ca_file=upstream_ca_file,
        ca=ca,
    )
