"""The upstream leg: TCP, SSLRequest, verified TLS and an IAM log-in to RDS Proxy.

RDS Proxy with IAM authentication asks for a cleartext password inside TLS; the answer
is an RDS IAM auth token for the database user, host and port. Upstream refusals keep
their SQLSTATE and message, with a hint that names the usual cause.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from . import wire
from .aws import TokenMinter
from .config import AWS, Upstream
from .errors import CredentialsUnavailable, UpstreamRejected, UpstreamUnavailable
from .metrics import Metrics
from .stream import ConnectionClosed, PacketStream

#: Start-up parameters that are the protocol's business, not the upstream's.
_NOT_FORWARDED = ("_pq_.",)


@dataclass(slots=True)
class UpstreamSession:
    """A logged-in upstream connection, ready for the relay."""

    stream: PacketStream
    #: The messages from AuthenticationOk up to and including the first ReadyForQuery,
    #: to send to the client; BackendKeyData is left out (the session sends its own).
    greeting: list[bytes]
    backend_key: tuple[int, bytes] | None


def _auth_hint(aws: AWS, user: str) -> str:
    resource = (
        f"arn:aws:rds-db:{aws.region}:{aws.account_id or 'ACCOUNT'}:dbuser:"
        f"{aws.proxy_resource_id or 'prx-ID'}/{user}"
    )
    return (
        f"the AWS identity of rdsgate needs rds-db:connect on {resource}, and the RDS Proxy "
        f"needs IAM authentication (IAMAuth=REQUIRED) and a Secrets Manager secret for {user!r}; "
        "`rdsgate iam policy` prints the policy and `rdsgate diagnose` checks both"
    )


class UpstreamConnector:
    def __init__(
        self,
        upstream: Upstream,
        aws: AWS,
        ctx: ssl.SSLContext,
        minter: TokenMinter,
        metrics: Metrics,
    ) -> None:
        self.upstream = upstream
        self.aws = aws
        self.ctx = ctx
        self.minter = minter
        self.metrics = metrics
        self.host = upstream.host
        self.port = upstream.port
        self.server_name = upstream.tls.server_name or self.host
        #: Called when a log-in found no AWS credentials to sign its token with.
        self.on_credentials_failure: Callable[[], None] | None = None

    async def token(self, user: str) -> str:
        token = self.minter.cached(self.host, self.port, user)
        if token is not None:
            self.metrics.token_cache_hits.inc()
            return token
        loop = asyncio.get_running_loop()
        token = await loop.run_in_executor(None, self.minter.mint, self.host, self.port, user)
        self.metrics.token_mints.inc()
        return token

    async def addresses(self) -> set[str]:
        """The addresses the endpoint's name resolves to now, through the system resolver
        (nothing here caches them: each connection resolves the name afresh)."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        return {str(info[4][0]) for info in infos}

    async def open_tls(self) -> PacketStream:
        """TCP + SSLRequest + TLS, verified per upstream.tls.mode."""
        loop = asyncio.get_running_loop()
        where = f"{self.host}:{self.port}"
        timeout = self.upstream.connect_timeout
        try:
            async with asyncio.timeout(timeout):
                _, stream = await loop.create_connection(PacketStream, self.host, self.port)
                try:
                    stream.write(wire.ssl_request())
                    answer = await stream.read_byte()
                    if answer != ord("S"):
                        raise UpstreamUnavailable(
                            f"the upstream {where} does not accept TLS connections",
                            hint="point upstream.endpoint at the RDS Proxy endpoint",
                        )
                    await stream.start_tls(
                        self.ctx,
                        server_hostname=self.server_name,
                        ssl_handshake_timeout=timeout,
                    )
                except BaseException:
                    stream.close()
                    raise
        except TimeoutError as exc:
            self.metrics.upstream_errors.labels("timeout").inc()
            raise UpstreamUnavailable(
                f"timed out after {timeout:g}s connecting to the upstream {where}",
                hint="check that the RDS Proxy is in a VPC this cluster can route to and that "
                "its security group allows inbound 5432 from the nodes' security group",
            ) from exc
        except socket.gaierror as exc:
            self.metrics.upstream_errors.labels("dns").inc()
            raise UpstreamUnavailable(
                f"cannot resolve the upstream host {self.host!r}: {exc.strerror}",
                hint="check upstream.endpoint and the cluster's DNS",
            ) from exc
        except ssl.SSLCertVerificationError as exc:
            self.metrics.upstream_errors.labels("tls").inc()
            raise UpstreamUnavailable(
                f"the upstream {where} TLS certificate did not verify: {exc.verify_message}",
                hint="set spec.tls.caBundle (upstream.tls.caFile) to the CA that issued it and "
                "spec.tls.serverName if the endpoint name differs from the certificate; "
                "`rdsgate diagnose` inspects the certificate",
            ) from exc
        except (ssl.SSLError, ConnectionClosed) as exc:
            self.metrics.upstream_errors.labels("tls").inc()
            raise UpstreamUnavailable(f"TLS with the upstream {where} failed: {exc}") from exc
        except OSError as exc:
            self.metrics.upstream_errors.labels("connect").inc()
            raise UpstreamUnavailable(
                f"cannot connect to the upstream {where}: {exc.strerror or exc}",
                hint="check that the RDS Proxy endpoint is up and reachable from this pod",
            ) from exc
        return stream

    async def login(self, params: dict[str, str]) -> UpstreamSession:
        user = params["user"]
        started = time.perf_counter()
        token_task = asyncio.ensure_future(self.token(user))
        try:
            stream = await self.open_tls()
        except BaseException:
            token_task.cancel()
            raise
        try:
            try:
                token = await token_task
            except CredentialsUnavailable:
                self.metrics.upstream_errors.labels("credentials").inc()
                if self.on_credentials_failure is not None:
                    self.on_credentials_failure()
                raise
            forwarded = {k: v for k, v in params.items() if not k.startswith(_NOT_FORWARDED)}
            session = await self._handshake(stream, wire.ClientLogin(forwarded, token), user)
        except BaseException:
            stream.close()
            raise
        self.metrics.upstream_connect_seconds.observe(time.perf_counter() - started)
        return session

    async def _handshake(
        self, stream: PacketStream, login: wire.ClientLogin, user: str
    ) -> UpstreamSession:
        stream.write(login.start())
        try:
            async with asyncio.timeout(self.upstream.connect_timeout + 10):
                while True:
                    reply, result = login.handle(await stream.read_message())
                    if reply:
                        stream.write(reply)
                    if result is not None:
                        break
        except TimeoutError as exc:
            self.metrics.upstream_errors.labels("timeout").inc()
            raise UpstreamUnavailable("the upstream did not finish the log-in in time") from exc
        except ConnectionClosed as exc:
            self.metrics.upstream_errors.labels("closed").inc()
            raise UpstreamUnavailable("the upstream closed the connection during log-in") from exc
        if result.ready:
            return UpstreamSession(stream, result.greeting, result.backend_key)
        fields = result.error or {}
        # Before AuthenticationOk, class 28 is the IAM log-in refused; anything else (08001:
        # RDS Proxy cannot reach its database) says nothing about the token or the policy.
        login_refused = not result.authenticated and fields.get("C", "28").startswith("28")
        if login_refused or result.unsupported_auth is not None:
            self.metrics.upstream_errors.labels("auth").inc()
        elif not result.authenticated:
            self.metrics.upstream_errors.labels("refused").inc()
        if result.unsupported_auth is not None:
            raise UpstreamRejected(
                f"the upstream asked for authentication method {result.unsupported_auth}, not "
                "the cleartext password that IAM authentication uses",
                sqlstate="28000",
                hint=_auth_hint(self.aws, user),
            )
        if login_refused:
            self.minter.forget(self.host, self.port, user)
        raise UpstreamRejected(
            fields.get("M", "the upstream refused the connection"),
            sqlstate=fields.get("C", "08004"),
            detail=fields.get("D"),
            hint=fields.get("H") or (_auth_hint(self.aws, user) if login_refused else None),
        )

    async def cancel(self, key: tuple[int, bytes]) -> None:
        """Forwards a CancelRequest with the upstream's real key, over TLS like every leg."""
        stream = await self.open_tls()
        try:
            stream.write(wire.cancel_request(*key))
            # The server closes the connection after a CancelRequest and answers nothing.
            async with asyncio.timeout(self.upstream.connect_timeout):
                while True:
                    await stream.read_message()
        except (ConnectionClosed, TimeoutError):
            pass
        finally:
            stream.close()
