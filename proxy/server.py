"""The listener and everything shared between sessions.

It accepts connections itself so it can peek at the first byte: 0x16 is a TLS
ClientHello (direct TLS, `sslnegotiation=direct`), anything else the Postgres start-up.
It keeps the session registry (limits, cancel keys, revocation), reloads the access file
and TLS material when their files change, sweeps idle and expired sessions, and drains
on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
import os
import secrets
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from . import wire
from .access import AccessPolicy, load_access, utcnow
from .audit import AuditLog
from .auth import expiry_message
from .aws import TokenMinter
from .config import READ_ONLY, READ_WRITE, EndpointName, ProxyConfig, Upstream
from .diagnose import Finding, Options, Status, Target, diagnose, run_startup_checks_async
from .durations import format_duration
from .errors import ConfigError, ProxyError, SessionTerminated
from .metrics import Health, Metrics
from .rbac import authorize
from .session import CLOSE_GRACE, Session
from .stream import PacketStream, TLSHandshakeFailed
from .tls import ALPN, cap_records, server_context, upstream_context
from .tokenreview import TokenReviewer
from .upstream import UpstreamConnector
from .warm import WarmPool

log = logging.getLogger("rdsgate.proxy")
T = TypeVar("T")

#: Retries of a read that raced the kubelet's `..data` symlink swap.
_SWAP_RETRIES = 5
_SWAP_BACKOFF = 0.05
DIAGNOSE_INTERVAL = 300.0
#: How often AWS credentials are checked while they work, and retried while they do not.
CREDENTIALS_INTERVAL = 60.0
CREDENTIALS_RETRY = 2.0


@dataclass(eq=False)
class Endpoint:
    """One listener and the upstream its sessions log in to: the read-write one (Service
    `<db>`, `upstream.endpoint`) and, with `readOnly`, the read-only one (`<db>-ro`)."""

    name: EndpointName
    port: int
    upstream: Upstream
    connector: UpstreamConnector
    warm: WarmPool
    listener: socket.socket | None = None
    accepting: asyncio.Task[None] | None = None


def _file_key(path: Path) -> tuple[int, int, int] | None:
    """Identity of the file a path resolves to now; a Secret update changes it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _failing(health: Health, check: str) -> Callable[[], float]:
    """1.0 while `check` keeps the proxy unready: read at scrape time, by the HTTP thread."""
    return lambda: 1.0 if check in health.problems else 0.0


class Server:
    def __init__(
        self,
        config: ProxyConfig,
        *,
        metrics: Metrics,
        health: Health,
        audit: AuditLog,
        minter: TokenMinter,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.health = health
        self.audit = audit
        self.minter = minter
        self.database_name = f"{config.database.namespace}/{config.database.name}"
        self.labels = dict(config.database.labels)
        self.policy: AccessPolicy | None = None
        self.server_context: ssl.SSLContext | None = None
        #: Whether OpenSSL keeps TLS records to clients within PostgreSQL's 8 KB.
        self.records_capped = True
        wanted: list[tuple[EndpointName, int, Upstream]] = [
            (READ_WRITE, config.listen.port, config.upstream)
        ]
        if config.read_only is not None:
            reader = config.read_only.upstream(config.upstream)
            wanted.append((READ_ONLY, config.read_only.port, reader))
        #: The listeners: read-write first. Each has its own connector (IAM auth tokens are
        #: signed for the endpoint's host and port) and its own warm connections.
        self.endpoints: list[Endpoint] = []
        pools: list[WarmPool] = []
        for name, port, upstream in wanted:
            connector = UpstreamConnector(
                upstream, config.aws, upstream_context(upstream.tls), minter, metrics
            )
            connector.on_credentials_failure = self._credentials_failed
            warm = WarmPool(upstream.warm, connector.login, metrics, group=pools)
            self.endpoints.append(Endpoint(name, port, upstream, connector, warm))
        self.connector = self.endpoints[0].connector
        self.warm = self.endpoints[0].warm
        self.reviewer = TokenReviewer()
        #: Set when a log-in could not sign a token, so readiness is re-checked at once.
        self._credentials_event = asyncio.Event()
        #: The credentials problem last logged, so a long outage is logged once, not every retry.
        self._credentials_logged: str | None = None
        self.sessions: set[Session] = set()
        self._per_identity: Counter[str] = Counter()
        #: Sessions by the process ID in their BackendKeyData, each with its secret key.
        self._cancel_keys: dict[int, list[tuple[bytes, Session]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        #: CancelRequests on their way upstream for sessions that were cut
        self._cancels: set[asyncio.Task[None]] = set()
        self._file_keys: dict[str, tuple[int, int, int] | None] = {}
        metrics.ready.set_function(lambda: 1.0 if health.ready else 0.0)
        for check in list(health.problems):  # the checks a proxy starts with
            metrics.readiness_failing.labels(check).set_function(_failing(health, check))
        self._no_sessions = asyncio.Event()
        self._no_sessions.set()

    @property
    def active_count(self) -> int:
        return len(self.sessions)

    def identity_count(self, identity: str) -> int:
        return self._per_identity[identity]

    # ------------------------------------------------------------------------------------
    # loading what the files say

    def load_tls(self) -> bool:
        try:
            ctx = server_context(self.config.tls)
        except ConfigError as exc:
            self.health.set("tls", "; ".join(exc.problems))
            log.error("TLS material not loaded: %s", "; ".join(exc.problems))
            return False
        capped = cap_records(ctx)
        if not capped and self.records_capped:
            log.warning("OpenSSL cannot cap TLS records here: the relay splits its writes")
        self.server_context, self.records_capped = ctx, capped
        self.health.set("tls", None)
        log.info("TLS certificate loaded from %s", self.config.tls.cert_file)
        return True

    async def load_access(self) -> bool:
        path = self.config.access.file
        try:
            # Off the event loop: 10,000 grants take seconds to parse and check, and
            # sessions keep being served meanwhile (the GIL is handed back every 5 ms).
            policy = await _retry_swap(lambda: load_access(path), in_thread=True)
        except ConfigError as exc:
            self.metrics.access_reloads.labels("invalid").inc()
            problem = "; ".join(exc.problems)
            if self.policy is None:
                self.health.set("access", problem)
                log.error("access file not loaded: %s", problem)
            else:
                log.error(
                    "access file rejected, the previous one (%s) stays in force: %s",
                    self.policy.digest,
                    problem,
                )
            return False
        if self.policy is not None and policy.digest != self.policy.digest:
            # Nothing logged in ahead of time outlives the grants that asked for it.
            for endpoint in self.endpoints:
                endpoint.warm.clear()
        self.policy = policy
        self.metrics.access_reloads.labels("ok").inc()
        self.metrics.access_grants.set(len(policy.file.grants))
        self.health.set("access", None)
        log.info(
            "access file %s loaded: %d roles, %d grants",
            policy.digest,
            len(policy.file.roles),
            len(policy.file.grants),
        )
        self.recheck_sessions()
        return True

    async def check_credentials(self) -> float:
        """Gets (refreshing if due) the AWS credentials; returns when to check again.

        While they cannot be had, log-ins go on with the IAM auth tokens already signed
        (reused for aws.tokenReuse), so the proxy stays ready until the last of those is
        due for renewal; then /readyz says which credential source failed.
        """
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, self.minter.credentials)
        except ProxyError as exc:
            left = self.minter.reusable_for()
            if left > 0:
                self.health.set("aws", None)
                if self._credentials_logged != f"cached {exc.message}":
                    self._credentials_logged = f"cached {exc.message}"
                    log.warning(
                        "AWS credentials not available: %s; log-ins use the IAM auth tokens "
                        "already signed, for up to %.0fs more",
                        exc.message,
                        left,
                    )
                return min(CREDENTIALS_RETRY, left)
            self.health.set("aws", exc.message)
            if self._credentials_logged != exc.message:
                self._credentials_logged = exc.message
                log.error("AWS credentials not available: %s (%s)", exc.message, exc.hint or "")
            return CREDENTIALS_RETRY
        if self._credentials_logged is not None:
            self._credentials_logged = None
            log.info("AWS credentials available again")
        self.health.set("aws", None)
        return CREDENTIALS_INTERVAL

    def _credentials_failed(self) -> None:
        self._credentials_event.set()

    # ------------------------------------------------------------------------------------
    # sessions

    def session_logged_in(self, session: Session) -> None:
        """Counts the session against its identity's limit (undone by session_ended)."""
        assert session.identity is not None
        self._per_identity[session.identity.name] += 1
        session.counted_for_identity = True

    def session_ended(self, session: Session, reason: str) -> None:
        if session not in self.sessions:
            return
        self.sessions.discard(session)
        self.metrics.connections_active.set(len(self.sessions))
        if not self.sessions:
            self._no_sessions.set()
        if session.counted_for_identity:
            assert session.identity is not None
            name = session.identity.name
            self._per_identity[name] -= 1
            if not self._per_identity[name]:
                del self._per_identity[name]
        if session.cancel_key is not None:
            pid = session.cancel_key[0]
            entries = [e for e in self._cancel_keys.get(pid, ()) if e[1] is not session]
            if entries:
                self._cancel_keys[pid] = entries
            else:
                self._cancel_keys.pop(pid, None)
        if session.relaying:
            self.metrics.sessions_ended.labels(reason).inc()
            self._account_bytes(session)

    def _account_bytes(self, session: Session) -> None:
        if session.client_leg is None or session.upstream_leg is None:
            return
        sent_in, sent_out = session.client_leg.nbytes, session.upstream_leg.nbytes
        counted_in, counted_out = session.counted
        self.metrics.bytes_in.inc(sent_in - counted_in)
        self.metrics.bytes_out.inc(sent_out - counted_out)
        session.counted = (sent_in, sent_out)

    def register_cancel_key(self, session: Session, upstream_pid: int | None) -> tuple[int, bytes]:
        """The client's BackendKeyData: the upstream's process ID, so `pg_backend_pid()`,
        NOTIFY's sender and `pg_terminate_backend` agree with what the driver reports, and a
        secret key of the proxy's own. Cancels are routed by both; a random ID stands in
        only when the upstream sent no key."""
        pid = upstream_pid
        if pid is None:
            pid = secrets.randbits(31) or 1
            while pid in self._cancel_keys:
                pid = secrets.randbits(31) or 1
        entries = self._cancel_keys.setdefault(pid, [])
        while True:
            secret = secrets.token_bytes(4)
            if all(secret != e[0] for e in entries):
                break
        entries.append((secret, session))
        return pid, secret

    async def cancel(self, request: wire.CancelRequest) -> None:
        session = None
        for secret, candidate in self._cancel_keys.get(request.pid, ()):
            if hmac.compare_digest(secret, request.secret):
                session = candidate
        if session is None:
            log.info("cancel request with an unknown key ignored")
            return
        if session.upstream_key is None:
            log.info("cancel request for session %s: the upstream gave no key", session.id)
            return
        try:
            await session.endpoint.connector.cancel(session.upstream_key)
        except ProxyError as exc:
            log.warning("cancel request for session %s failed: %s", session.id, exc.message)

    def forward_cancel(self, request: wire.CancelRequest) -> asyncio.Task[None]:
        """A client's CancelRequest on its way upstream, as a task of the server's own."""
        task = asyncio.create_task(self.cancel(request))
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)
        return task

    def cancel_upstream(self, session: Session, key: tuple[int, bytes]) -> None:
        """Cancels what a session being cut still runs upstream, in the background."""
        task = asyncio.create_task(self._cancel_upstream(session, key))
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    async def _cancel_upstream(self, session: Session, key: tuple[int, bytes]) -> None:
        try:
            await session.endpoint.connector.cancel(key)
        except ProxyError as exc:
            log.warning(
                "cancelling the statement of session %s failed: %s", session.id, exc.message
            )
        else:
            log.info("cancelled the statement still running for ended session %s", session.id)

    def recheck_sessions(self) -> None:
        """Ends every session whose identity lost access under the policy now in force."""
        for session in list(self.sessions):
            self.recheck(session)

    def recheck(self, session: Session) -> None:
        """Ends one relaying session if the policy in force no longer lets it in."""
        policy = self.policy
        ident = session.identity
        if policy is None or ident is None or not session.relaying or session.closing is not None:
            return
        session.policy_seen = policy
        grant = policy.current(ident.grant)
        why: str | None
        if grant is None:
            why = policy.revocations.get(ident.grant.identity) or "its Token's grant was removed"
        elif grant.certificate_binding != ident.grant.certificate_binding:
            why = (
                "its Token's secret changed"
                if grant.secret_sha256 is not None
                else "its Token was re-created"
            )
        else:
            assert session.db_user is not None and session.db_name is not None
            decision = authorize(
                policy,
                grant,
                self.labels,
                session.db_user,
                session.db_name,
                utcnow(),
                session.endpoint.name,
            )
            why = None if decision.allowed else decision.reason
        if why is not None:
            self.revoke(session, why)

    def revoke(self, session: Session, why: str) -> None:
        self.audit.emit("session.revoked", dict(session.fields(), reason=why))
        session.terminate(SessionTerminated(f"access revoked: {why}", sqlstate="57P01"), "revoked")

    # ------------------------------------------------------------------------------------
    # background work

    def _sweep(self) -> None:
        """Idle timeouts and grant expiry, and warm connections' own; also publishes
        relayed byte counts."""
        for endpoint in self.endpoints:
            endpoint.warm.sweep()
        now_m = time.monotonic()
        idle_limit = self.config.limits.idle_timeout
        now = utcnow()
        for session in list(self.sessions):
            if not session.relaying or session.closing is not None:
                continue
            self._account_bytes(session)
            seen = session.activity()
            if seen != session.seen_activity or not session.server_waits_for_client():
                # Idle means the server waits for the client: a long query is not idle.
                session.seen_activity = seen
                session.idle_since = now_m
            elif idle_limit and now_m - session.idle_since >= idle_limit:
                session.terminate(
                    SessionTerminated(
                        "terminating connection due to idle timeout of "
                        f"{format_duration(idle_limit)} (limits.idleTimeout)",
                        sqlstate="57P05",
                    ),
                    "idle_timeout",
                )
                continue
            ident = session.identity
            if ident is not None and ident.grant.expired(now):
                self.revoke(session, expiry_message(ident.grant))

    async def _sweeper(self) -> None:
        idle = self.config.limits.idle_timeout
        interval = min(1.0, idle / 4) if idle else 1.0
        resolving: dict[str, asyncio.Task[None]] = {}
        while True:
            await asyncio.sleep(interval)
            self._sweep()
            for endpoint in self.endpoints:
                task = resolving.get(endpoint.name)
                if endpoint.warm.idle_count and (task is None or task.done()):
                    # Off the sweep: a slow DNS answer must not hold back idle timeouts.
                    resolving[endpoint.name] = asyncio.create_task(self._follow_endpoint(endpoint))

    async def _follow_endpoint(self, endpoint: Endpoint) -> None:
        """Warm connections follow the endpoint's DNS name: after a failover moves it, those
        to the old address are closed within a sweep, so no session is handed one."""
        connector = endpoint.connector
        try:
            async with asyncio.timeout(endpoint.upstream.connect_timeout):
                addresses = await connector.addresses()
        except (OSError, TimeoutError) as exc:
            log.info("could not resolve %s to check warm connections: %s", connector.host, exc)
            return
        endpoint.warm.keep_addresses(addresses)

    def _tls_files(self) -> list[Path]:
        tls = self.config.tls
        return [tls.cert_file, tls.key_file] + ([tls.client_ca_file] if tls.client_ca_file else [])

    async def _watch_files(self) -> None:
        interval = self.config.access.poll_interval
        while True:
            await asyncio.sleep(interval)
            if self._changed([self.config.access.file]) or self.policy is None:
                await self.load_access()
            if self._changed(self._tls_files()) or self.server_context is None:
                self.load_tls()

    def _changed(self, paths: list[Path]) -> bool:
        changed = False
        for p in paths:
            key = _file_key(p)
            if self._file_keys.get(str(p)) != key:
                self._file_keys[str(p)] = key
                changed = True
        return changed

    async def _diagnose_loop(self) -> None:
        """The diagnostics of `rdsgate diagnose`, at start-up and then periodically.

        Findings are served on /diagnose (the operator turns them into Database
        conditions); failures are logged with their fix when they first appear.
        """
        reported: set[tuple[str, str]] = set()
        while True:
            login = self.policy.sample_login(self.labels) if self.policy else None
            findings = await run_startup_checks_async(
                self.config,
                db_users=[login[0]] if login else [],
                db_name=login[1] if login else "postgres",
            )
            findings += await self._diagnose_readers()
            self.health.diagnosis = [f.to_dict() for f in findings]
            now_failing = {(f.check, f.reason) for f in findings if f.status is Status.FAIL}
            for f in findings:
                if (f.check, f.reason) in now_failing - reported:
                    log.warning("check %s failed: %s\nfix: %s", f.check, f.summary, f.fix or "-")
            reported = now_failing
            await asyncio.sleep(DIAGNOSE_INTERVAL)

    async def _diagnose_readers(self) -> list[Finding]:
        """Reachability of the read-only endpoint (DNS, TCP, TLS): the same checks, and so the
        same UpstreamReachable condition, as the read-write one. The credential and IAM
        checks are the proxy's, whichever endpoint, and are not repeated."""
        found: list[Finding] = []
        for endpoint in self.endpoints[1:]:
            target = Target(self.config.database, endpoint.upstream, self.config.aws)
            options = Options(only=("endpoint-dns", "endpoint-tcp", "upstream-tls"))
            findings = await asyncio.to_thread(diagnose, target, options)
            found += [
                dataclasses.replace(f, evidence={**f.evidence, "endpoint": endpoint.name})
                for f in findings
            ]
        return found

    async def _credentials_loop(self) -> None:
        while True:
            self._credentials_event.clear()
            delay = await self.check_credentials()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._credentials_event.wait(), delay)

    # ------------------------------------------------------------------------------------
    # listening

    async def start(self) -> None:
        self._changed([self.config.access.file, *self._tls_files()])
        self.load_tls()
        await self.load_access()
        await self.check_credentials()
        listen = self.config.listen
        family = socket.AF_INET6 if ":" in listen.address else socket.AF_INET
        for endpoint in self.endpoints:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((listen.address, endpoint.port))
                sock.listen(1024)
            except OSError:
                sock.close()
                for started in self.endpoints:
                    if started.listener is not None:
                        started.listener.close()
                raise
            sock.setblocking(False)
            endpoint.listener = sock
        self.health.set("listener", None)
        for endpoint in self.endpoints:
            assert endpoint.listener is not None
            endpoint.accepting = asyncio.create_task(self._accept_loop(endpoint.listener, endpoint))
            self._tasks.append(endpoint.accepting)
        for coro in (self._sweeper(), self._watch_files()):
            self._tasks.append(asyncio.create_task(coro))
        self._tasks.append(asyncio.create_task(self._credentials_loop()))
        self._tasks.append(asyncio.create_task(self._diagnose_loop()))
        for endpoint in self.endpoints:
            log.info(
                "rdsgate-proxy for %s listening on %s:%d (%s), upstream %s",
                self.database_name,
                listen.address,
                endpoint.port,
                endpoint.name,
                endpoint.upstream.endpoint,
            )

    async def _accept_loop(self, sock: socket.socket, endpoint: Endpoint) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, addr = await loop.sock_accept(sock)
            except OSError as exc:
                log.warning("accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer = f"{addr[0]}:{addr[1]}"
            self.metrics.connections_total.inc()
            if len(self.sessions) >= 2 * self.config.limits.max_connections + 64:
                # Far beyond the limit: not even worth a TLS handshake to say so.
                conn.close()
                continue
            task = asyncio.create_task(self._handle(conn, peer, endpoint))
            task.add_done_callback(_log_crash)

    async def _handle(self, conn: socket.socket, peer: str, endpoint: Endpoint) -> None:
        loop = asyncio.get_running_loop()
        startup = self.config.limits.startup_timeout
        try:
            first = await asyncio.wait_for(_peek(loop, conn), startup)
        except (TimeoutError, OSError):
            conn.close()
            return
        if first is None:
            conn.close()
            return
        direct = first == 0x16
        ctx = self.server_context
        if direct and ctx is None:
            conn.close()
            return
        stream = PacketStream()
        try:
            # uvloop returns its SSLProtocol wrapper as the protocol: keep our own reference.
            transport, _ = await loop.connect_accepted_socket(
                lambda: stream,
                conn,
                ssl=ctx if direct else None,
                ssl_handshake_timeout=startup if direct else None,
            )
        except ssl.SSLError as exc:
            conn.close()
            failure = TLSHandshakeFailed(exc)
            self.metrics.auth_failures.labels(failure.reason).inc()
            fields = Session.blank_fields(self.database_name, peer, endpoint=endpoint.name)
            self.audit.emit("auth.denied", dict(fields, reason=failure.message))
            return
        except (OSError, TimeoutError) as exc:
            log.info("connection from %s dropped during TLS: %s", peer, exc)
            conn.close()
            return
        if direct and transport.get_extra_info("ssl_object").selected_alpn_protocol() != ALPN:
            # Direct TLS without ALPN could be a confused non-Postgres client: refuse it.
            transport.close()
            return
        session = Session(self, stream, peer, endpoint)
        self.sessions.add(session)
        self._no_sessions.clear()
        self.metrics.connections_active.set(len(self.sessions))
        session.task = asyncio.current_task()
        await session.run()

    async def drain(self) -> None:
        """Stops accepting, lets sessions finish for drainTimeout, then ends the rest."""
        self.health.draining = True
        for endpoint in self.endpoints:
            await endpoint.warm.close()
            if endpoint.listener is not None:
                endpoint.listener.close()
            if endpoint.accepting is not None:
                endpoint.accepting.cancel()
        timeout = self.config.limits.drain_timeout
        log.info("draining %d sessions for up to %gs", len(self.sessions), timeout)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._no_sessions.wait(), timeout)
        for session in list(self.sessions):
            session.terminate(
                SessionTerminated("terminating connection due to administrator command"),
                "shutdown",
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._no_sessions.wait(), CLOSE_GRACE + 1)
        self.audit.flush()

    async def stop(self) -> None:
        for endpoint in self.endpoints:
            await endpoint.warm.close()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t


async def _peek(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> int | None:
    """The first byte of a connection, left in the socket for whoever reads it next."""
    fd = conn.fileno()
    ready: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await ready
    finally:
        loop.remove_reader(fd)
    data = conn.recv(1, socket.MSG_PEEK)
    return data[0] if data else None


async def _retry_swap(load: Callable[[], T], *, in_thread: bool = False) -> T:
    """Runs `load`, retrying briefly when a file vanished mid-swap (kubelet `..data` rename);
    `in_thread`: in a worker thread, for loads too slow for the event loop."""
    for attempt in range(_SWAP_RETRIES):
        try:
            return await asyncio.to_thread(load) if in_thread else load()
        except ConfigError as exc:
            missing = any("No such file" in p for p in exc.problems)
            if not missing or attempt == _SWAP_RETRIES - 1:
                raise
            await asyncio.sleep(_SWAP_BACKOFF * (attempt + 1))
    raise AssertionError("unreachable")


def _log_crash(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("session task crashed", exc_info=exc)
