"""One client connection, from its first byte to its end.

Start-up (TLS, StartupMessage, authentication, authorization, upstream log-in) runs as a
task over `PacketStream`s; then both transports are handed to the relay protocols and
the session is only bookkeeping until it ends. Every `ProxyError` becomes an
ErrorResponse in `_fail`, the one place that does so.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
import ssl
import time
from typing import TYPE_CHECKING, Any

from . import pinning, wire
from .access import utcnow
from .audit import encode_fields
from .auth import (
    Identity,
    authenticate_certificate,
    authenticate_password,
    authenticate_service_account,
)
from .certverify import peer_certificate
from .durations import format_duration
from .errors import (
    AccessDenied,
    AuthenticationFailed,
    NotReady,
    ProtocolViolation,
    ProxyError,
    SessionTerminated,
    TLSRequired,
    TooManyConnections,
    UpstreamUnavailable,
)
from .rbac import SessionOptions, authorize
from .relay import ClientLeg, UpstreamLeg, write_in_records
from .stream import ConnectionClosed, PacketStream, TLSHandshakeFailed
from .tokenreview import looks_like_jwt

if TYPE_CHECKING:
    from .server import Endpoint, Server

#: How long a session being ended waits for the server to be between queries before it is
#: cut without a goodbye.
CLOSE_GRACE = 5.0
#: How much of the first pinning statement `session.end`'s `pinned_by` keeps.
PINNED_SQL_CHARS = 200


class Session:
    def __init__(
        self, server: Server, stream: PacketStream, client_addr: str, endpoint: Endpoint
    ) -> None:
        self.server = server
        self.stream = stream
        #: The listener the client came in on, and so the upstream it logs in to.
        self.endpoint = endpoint
        self.id = secrets.token_hex(8)
        self.client_addr = client_addr
        self.identity: Identity | None = None
        self.db_user: str | None = None
        self.db_name: str | None = None
        self.options = SessionOptions()
        self.audit_queries = server.config.audit.queries
        #: Statements are classified for RDS Proxy pinning (`audit.pinning`).
        self.pinning = server.config.audit.pinning
        #: The first pinning statement: its reason, and its text where queries are audited.
        self.pinned_by: tuple[str, str | None] | None = None
        self.started = time.monotonic()
        self.task: asyncio.Task[None] | None = None
        self.closing: SessionTerminated | None = None
        #: The client sent Terminate: the upstream closing next is no fault.
        self.client_left = False
        self._closing_reason = ""
        self._ended = False
        self._cut_timer: asyncio.TimerHandle | None = None
        self._limit_timer: asyncio.TimerHandle | None = None
        self.client_leg: ClientLeg | None = None
        self.upstream_leg: UpstreamLeg | None = None
        self._client_t: asyncio.Transport | None = None
        self._upstream_t: asyncio.Transport | None = None
        self.cancel_key: tuple[int, bytes] | None = None
        self.upstream_key: tuple[int, bytes] | None = None
        self.seen_activity = 0
        self.counted = (0, 0)
        self.counted_for_identity = False
        #: The access policy this session was last checked against.
        self.policy_seen: object | None = None
        self._audit_fields: str | None = None
        self.idle_since = time.monotonic()

    # ------------------------------------------------------------------------------------
    # audit

    def fields(self) -> dict[str, Any]:
        """What every audit event of this session carries."""
        ident = self.identity
        fields = self.blank_fields(
            self.server.database_name, self.client_addr, self.id, endpoint=self.endpoint.name
        )
        fields.update(
            identity=ident.name if ident else None,
            requested_by=ident.grant.requested_by if ident else None,
            auth_method=ident.method if ident else None,
            db_user=self.db_user,
            db_name=self.db_name,
        )
        if ident is not None and ident.grant.approved_by is not None:
            grant = ident.grant
            fields.update(
                approved_by=grant.approved_by,
                approval_reason=grant.approval_reason,
                request_reason=grant.request_reason,
            )
        return fields

    @staticmethod
    def blank_fields(
        database: str,
        client_addr: str,
        session_id: str | None = None,
        *,
        endpoint: str = "read-write",
    ) -> dict[str, Any]:
        """The audit fields of a connection refused before anything about it is known."""
        return {
            "session_id": session_id or secrets.token_hex(8),
            "database": database,
            "endpoint": endpoint,
            "identity": None,
            "requested_by": None,
            "auth_method": None,
            "db_user": None,
            "db_name": None,
            "client_addr": client_addr,
        }

    def audit_statements(self, statements: list[wire.Statement]) -> None:
        if self.pinning:
            classify = pinning.classify
            for st in statements:
                reason = classify(st)
                if reason is not None:
                    self._pinned(reason, st)
        if not self.audit_queries:
            return
        if self._audit_fields is None:
            self._audit_fields = encode_fields(self.fields())
        query = self.server.audit.query
        for st in statements:
            query(self._audit_fields, st.kind, st.sql, st.truncated)

    def _pinned(self, reason: str, st: wire.Statement) -> None:
        """A statement that makes RDS Proxy pin this session: counted per reason and per
        identity; the first is kept for `session.end`, its text only where this session's
        queries are audited (a Role's `auditQueries: false` keeps SQL out of the trail)."""
        server = self.server
        server.metrics.pinning_statements.labels(server.database_name, reason).inc()
        server.metrics.pinning.add(self.identity.name if self.identity else "", reason)
        if self.pinned_by is None:
            self.pinned_by = (reason, st.sql[:PINNED_SQL_CHARS] if self.audit_queries else None)

    # ------------------------------------------------------------------------------------
    # start-up

    async def run(self) -> None:
        server = self.server
        try:
            try:
                async with asyncio.timeout(server.config.limits.startup_timeout):
                    params = await self._negotiate()
                    if params is None:
                        return
                    self._check_capacity()
                    self.identity = await self._authenticate()
            except TimeoutError:
                raise ProtocolViolation(
                    "start-up did not complete in "
                    f"{server.config.limits.startup_timeout:g}s (limits.startupTimeout)"
                ) from None
            self._authorize()
            server.session_logged_in(self)
            warm = self.endpoint.warm
            upstream = warm.take(params)
            if upstream is None:
                upstream = await self.endpoint.connector.login(params)
                warm.logged_in(params)
            self._start_relay(upstream.stream, upstream.greeting, upstream.backend_key)
        except ProxyError as exc:
            self._fail(exc)
        except ConnectionClosed:
            self._end("client closed during start-up")
        except asyncio.CancelledError:
            err = self.closing or SessionTerminated("terminating connection")
            self._fail(err)
            raise
        finally:
            if not self.relaying:
                self.stream.close()
                self._end("start-up ended")

    async def _negotiate(self) -> dict[str, str] | None:
        stream = self.stream
        server = self.server
        tls = stream.transport is not None and stream.transport.get_extra_info("ssl_object")
        while True:
            packet = await stream.read_startup()
            if isinstance(packet, wire.SSLRequest):
                if tls:
                    raise ProtocolViolation("SSLRequest received inside TLS")
                ctx = server.server_context
                if ctx is None:
                    raise NotReady(
                        "rdsgate is not ready: its TLS certificate is not loaded "
                        f"({server.health.problems.get('tls', 'unknown')})"
                    )
                stream.write(b"S")
                try:
                    await stream.start_tls(
                        ctx,
                        server_side=True,
                        ssl_handshake_timeout=server.config.limits.startup_timeout,
                    )
                except ssl.SSLError as exc:
                    raise TLSHandshakeFailed(exc) from exc
                except OSError as exc:
                    raise ConnectionClosed(f"client left during the TLS handshake: {exc}") from exc
                tls = True
            elif isinstance(packet, wire.GSSENCRequest):
                if tls:
                    raise ProtocolViolation("GSSENCRequest received inside TLS")
                stream.write(b"N")
            elif isinstance(packet, wire.CancelRequest):
                # Like the postmaster: act, then close. Clients take the close as "the
                # cancel is delivered" (libpq's PQcancel, asyncpg wait for it): closing
                # first would let their next query reach the server before the cancel,
                # and be the one cancelled.
                # The forwarding is the server's task: a client that leaves first (libpq's
                # plain PQcancel may) ends this session, not the cancel.
                try:
                    await asyncio.shield(server.forward_cancel(packet))
                finally:
                    stream.close()
                    self._end("cancel request")
                return None
            else:
                if not tls:
                    raise TLSRequired(
                        "rdsgate requires TLS: connect with sslmode=require (or verify-full)",
                        hint="set sslmode=verify-full and sslrootcert to the ca.crt of your "
                        "Token's Secret",
                    )
                return self._startup_params(packet)

    def _startup_params(self, msg: wire.StartupMessage) -> dict[str, str]:
        params = dict(msg.params)
        unsupported = [k for k in params if k.startswith("_pq_.")]
        if msg.minor > 0 or unsupported:
            self.stream.write(wire.negotiate_protocol_version(0, unsupported))
        if not params.get("user"):
            raise ProxyError(
                "no PostgreSQL user name specified in startup packet", sqlstate="28000"
            )
        if "replication" in params and params["replication"] not in ("false", "off", "no", "0"):
            raise ProxyError("rdsgate does not relay replication connections", sqlstate="0A000")
        params.setdefault("database", params["user"])
        self.db_user = params["user"]
        self.db_name = params["database"]
        return params

    def _check_capacity(self) -> None:
        limit = self.server.config.limits.max_connections
        if self.server.active_count > limit:
            raise TooManyConnections(
                f"too many connections: this rdsgate proxy allows {limit} (limits.maxConnections)",
                reason="proxy_limit",
            )

    async def _authenticate(self) -> Identity:
        server = self.server
        policy = server.policy
        if policy is None:
            raise NotReady(
                "rdsgate is not ready: its access file is not loaded "
                f"({server.health.problems.get('access', 'unknown')})"
            )
        transport = self.stream.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport else None
        certificate = peer_certificate(ssl_object) if ssl_object else None
        if certificate:
            return authenticate_certificate(policy, certificate, utcnow())
        self.stream.write(wire.authentication_cleartext())
        msg = await self.stream.read_message()
        if msg.type != b"p":
            raise ProtocolViolation(f"expected a password message, got {msg.type!r}")
        password = wire.parse_password(msg.body)
        if looks_like_jwt(password):
            account = await server.reviewer.review(password)
            return authenticate_service_account(server.policy or policy, account, utcnow())
        return authenticate_password(policy, password, utcnow())

    def _authorize(self) -> None:
        server = self.server
        ident = self.identity
        policy = server.policy
        assert ident is not None and policy is not None
        assert self.db_user is not None and self.db_name is not None
        endpoint = self.endpoint.name
        decision = authorize(
            policy, ident.grant, server.labels, self.db_user, self.db_name, utcnow(), endpoint
        )
        if not decision.allowed:
            # Which listener matters only where there are two.
            where = f" ({endpoint})" if len(server.endpoints) > 1 else ""
            raise AccessDenied(
                f"access denied: {ident.name} may not log in as database user "
                f"{self.db_user!r} to database {self.db_name!r} on "
                f"{server.database_name}{where}: {decision.reason}"
            )
        self.options = decision.options
        self.policy_seen = policy
        if decision.options.audit_queries is not None:
            self.audit_queries = decision.options.audit_queries
        limit = decision.options.max_connections
        if limit is not None and server.identity_count(ident.name) >= limit:
            raise TooManyConnections(
                f"too many connections for {ident.name}: its roles allow {limit} (maxConnections)",
                reason="identity_limit",
            )

    # ------------------------------------------------------------------------------------
    # relay

    def _start_relay(
        self, upstream: PacketStream, greeting: list[bytes], backend_key: tuple[int, bytes] | None
    ) -> None:
        server = self.server
        client_t = self.stream.transport
        upstream_t = upstream.transport
        assert client_t is not None and upstream_t is not None
        if client_t.is_closing():
            upstream.close()
            self._end("client closed during start-up")
            return
        if upstream_t.is_closing():
            self._fail(UpstreamUnavailable("the upstream closed the connection right after log-in"))
            return
        self._client_t, self._upstream_t = client_t, upstream_t
        self.upstream_key = backend_key
        self.cancel_key = server.register_cancel_key(
            self, backend_key[0] if backend_key is not None else None
        )
        greeting.insert(len(greeting) - 1, wire.backend_key_data(*self.cancel_key))
        scanner = (
            wire.FrontendScanner(server.config.audit.max_query_bytes)
            if self.audit_queries or self.pinning
            else None
        )
        write = (
            client_t.write
            if server.records_capped
            else functools.partial(write_in_records, client_t)
        )
        up_leg = self.upstream_leg = UpstreamLeg(self, client_t, write)
        up_leg.last = greeting[-1]
        cl_leg = self.client_leg = ClientLeg(self, upstream_t, up_leg, scanner)
        pending_client = self.stream.reader.take_buffer()
        pending_upstream = upstream.reader.take_buffer()
        upstream_t.set_protocol(up_leg)
        client_t.set_protocol(cl_leg)
        write(b"".join(greeting))
        self.idle_since = time.monotonic()
        server.audit.emit("session.start", self.fields())
        server.metrics.sessions_total.inc()
        limits = [server.config.limits.max_session_duration, self.options.max_session_duration]
        max_duration = min((d for d in limits if d), default=0.0)
        if max_duration:
            self._limit_timer = asyncio.get_running_loop().call_later(
                max_duration, self._duration_reached, max_duration
            )
        if pending_upstream:
            up_leg.data_received(pending_upstream)
        if pending_client:
            cl_leg.data_received(pending_client)
        if server.policy is not self.policy_seen:
            # The access file changed while the upstream log-in ran.
            server.recheck(self)

    def _duration_reached(self, limit: float) -> None:
        self.terminate(
            SessionTerminated(
                "terminating connection: the maximum session duration of "
                f"{format_duration(limit)} was reached",
                hint="reconnect to start a new session",
            ),
            "max_session_duration",
        )

    @property
    def relaying(self) -> bool:
        return self.client_leg is not None

    def activity(self) -> int:
        if self.client_leg is None or self.upstream_leg is None:
            return 0
        return self.client_leg.nbytes + self.upstream_leg.nbytes

    def protocol_error(self, exc: ProtocolViolation) -> None:
        self.terminate(SessionTerminated(exc.message, sqlstate=exc.sqlstate), "protocol_error")

    def terminate(self, err: SessionTerminated, reason: str) -> None:
        """Ends the session with `err`, between queries when possible (see CLOSE_GRACE)."""
        if self._ended or self.closing is not None:
            return
        self.closing = err
        self._closing_reason = reason
        if not self.relaying:
            if self.task is not None:
                self.task.cancel()
            return
        assert self._client_t is not None
        with contextlib.suppress(RuntimeError):
            self._client_t.pause_reading()
        self._cut_timer = asyncio.get_running_loop().call_later(CLOSE_GRACE, self._cut)
        self.close_if_idle()

    def server_waits_for_client(self) -> bool:
        """Whether the server's last word was ReadyForQuery and the client has not spoken."""
        leg = self.upstream_leg
        return leg is not None and wire.ends_ready_for_query(leg.last)

    def close_if_idle(self) -> None:
        if self.server_waits_for_client():
            self._goodbye()

    def _goodbye(self) -> None:
        err = self.closing
        assert err is not None and self._client_t is not None and self._upstream_t is not None
        self._client_t.write(
            wire.error_response(err.sqlstate, err.message, detail=err.detail, hint=err.hint)
        )
        self._upstream_t.write(wire.terminate())
        self._close_transports()

    def _cut(self) -> None:
        """CLOSE_GRACE passed with a statement still running. The statement is cancelled
        upstream too: the database would otherwise run it to its end for a client that
        is gone, as it notices a vanished client only when it next reads."""
        if self.upstream_key is not None:
            self.server.cancel_upstream(self, self.upstream_key)
        self._close_transports()

    def _close_transports(self) -> None:
        for t in (self._client_t, self._upstream_t):
            if t is not None:
                t.close()

    def upstream_lost(self, exc: Exception | None) -> None:
        """The upstream ended a relaying session on its own (RDS Proxy or its database went
        away): the client hears it at once as a FATAL naming the upstream (`08006`), unless
        the last thing relayed was already the server's own FATAL (`57P01` ...)."""
        assert self.upstream_leg is not None and self._client_t is not None
        where = self.endpoint.upstream.endpoint
        said = wire.trailing_fatal(self.upstream_leg.tail)
        if said is not None:
            self.closing = SessionTerminated(
                f"the upstream {where} closed the connection: {said.get('M', '')}",
                sqlstate=said.get("C", "57P01"),
            )
        else:
            message = (
                f"lost the connection to the upstream {where}: {exc}"
                if exc is not None
                else f"the upstream {where} closed the connection"
            )
            self.closing = err = SessionTerminated(
                message,
                sqlstate="08006",
                hint="RDS Proxy or the database behind it ended this session; reconnect. "
                "A statement in flight when it ended, a COMMIT too, may or may not have "
                "completed",
            )
            self._client_t.write(wire.error_response(err.sqlstate, err.message, hint=err.hint))
        self._closing_reason = "upstream_closed"

    def relay_closed(self) -> None:
        if self.closing is not None:
            self._end(self._closing_reason, error=self.closing.message)
        else:
            self._end("closed")

    # ------------------------------------------------------------------------------------
    # ending

    def _fail(self, exc: ProxyError) -> None:
        refused = (
            exc
            if isinstance(
                exc, AuthenticationFailed | AccessDenied | TooManyConnections | TLSRequired
            )
            else None
        )
        if refused is not None:
            # Counted before the client can read the refusal (and look at /metrics).
            self.server.metrics.auth_failures.labels(refused.reason).inc()
        stream = self.stream
        if not stream.closed and not isinstance(exc, TLSHandshakeFailed):
            stream.write(
                wire.error_response(
                    exc.sqlstate,
                    exc.message,
                    severity=exc.severity,
                    detail=exc.detail,
                    hint=exc.hint,
                )
            )
            stream.close()
        server = self.server
        fields = self.fields()
        denied = dict(fields, reason=exc.message, sqlstate=exc.sqlstate)
        if refused is not None:
            server.audit.emit("auth.denied", denied)
            self._end(refused.reason, error=exc.message)
        elif isinstance(exc, SessionTerminated) and self.closing is not None:
            self._end(self._closing_reason, error=exc.message)
        else:
            server.audit.emit(
                "session.failed", dict(fields, reason=exc.message, sqlstate=exc.sqlstate)
            )
            self._end("failed", error=exc.message)

    def _end(self, reason: str, *, error: str | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        for timer in (self._cut_timer, self._limit_timer):
            if timer is not None:
                timer.cancel()
        server = self.server
        if self.relaying:
            assert self.client_leg is not None and self.upstream_leg is not None
            fields = self.fields()
            fields.update(
                reason=reason,
                bytes_in=self.client_leg.nbytes,
                bytes_out=self.upstream_leg.nbytes,
                duration_s=round(time.monotonic() - self.started, 3),
            )
            if error:
                fields["error"] = error
            pinned = self.pinned_by
            fields["pinned_by"] = (
                None if pinned is None else {"reason": pinned[0], "statement": pinned[1]}
            )
            server.audit.emit("session.end", fields)
        server.session_ended(self, reason)
