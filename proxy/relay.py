"""The data path after log-in: two protocols that move bytes between the legs.

Backend traffic is copied without being looked at. Frontend traffic goes through a
`wire.FrontendScanner` only when the session audits queries or classifies them for RDS
Proxy pinning (`audit.pinning`), which reads message headers and the SQL of Q and P
messages. Backpressure: when one side's write buffer
fills, the protocol attached to it is told `pause_writing` and pauses reading the other
side.

TLS records to the client carry at most 8 KB of plaintext, as PostgreSQL's do
(`tls.cap_records`). OpenSSL splits the writes itself; where it cannot be told to, the
client is written through `write_in_records`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import ProtocolViolation
from .tls import RECORD_PLAINTEXT
from .wire import FrontendScanner, terminate

#: The frontend's Terminate: a client that sent it ends the session, whoever closes first.
_TERMINATE = terminate()

if TYPE_CHECKING:
    from .session import Session


def write_in_records(transport: asyncio.Transport, data: bytes) -> None:
    """Writes so that no TLS record carries more than `RECORD_PLAINTEXT` bytes: the TLS
    transport makes one record per buffer, so a larger chunk goes out as slices of one
    `writelines` call (one flush to the socket, no copies)."""
    n = len(data)
    if n <= RECORD_PLAINTEXT:
        transport.write(data)
    else:
        view = memoryview(data)
        transport.writelines(
            [view[i : i + RECORD_PLAINTEXT] for i in range(0, n, RECORD_PLAINTEXT)]
        )


class _Leg(asyncio.Protocol):
    __slots__ = ("nbytes", "peer", "session")

    def __init__(self, session: Session, peer: asyncio.Transport) -> None:
        self.session = session
        self.peer = peer
        self.nbytes = 0

    def pause_writing(self) -> None:
        self.peer.pause_reading()

    def resume_writing(self) -> None:
        self.peer.resume_reading()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.peer.close()
        self.session.relay_closed()
        self._forget()

    def _forget(self) -> None:
        """The transport's last callback: drop the links back to the session and the other
        transport. Otherwise they make reference cycles that only a full garbage collection
        frees, and every ended session would keep its two TLS transports (uvloop holds a
        256 KiB read buffer each) until then: under connection churn, hundreds at a time."""
        del self.session, self.peer


class UpstreamLeg(_Leg):
    """Attached to the upstream transport; writes to the client."""

    __slots__ = ("last", "tail", "write")

    def __init__(
        self, session: Session, peer: asyncio.Transport, write: Callable[[bytes], None]
    ) -> None:
        super().__init__(session, peer)
        #: `peer.write`, or `write_in_records` where OpenSSL does not cap records itself.
        self.write = write
        #: The latest upstream chunk since the client last spoke, to tell when the server
        #: waits for the client (ReadyForQuery) — the clean moment to end a session.
        self.last = b""
        #: The latest upstream chunk, whatever the client said since: the server's last
        #: words when it closes the connection (`wire.trailing_fatal`).
        self.tail = b""

    def resume_writing(self) -> None:
        # A session being ended keeps the client paused (no new queries) until it goes.
        if self.session.closing is None:
            self.peer.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.nbytes += len(data)
        self.last = self.tail = data
        self.write(data)
        if self.session.closing is not None:
            self.session.close_if_idle()

    def _forget(self) -> None:
        super()._forget()
        del self.write

    def connection_lost(self, exc: Exception | None) -> None:
        session = self.session
        if session.closing is None and not session.client_left and not self.peer.is_closing():
            # Neither rdsgate nor the client ended it: the upstream went away first.
            session.upstream_lost(exc)
        super().connection_lost(exc)


class ClientLeg(_Leg):
    """Attached to the client transport; writes to the upstream."""

    __slots__ = ("scanner", "upstream_leg")

    def __init__(
        self,
        session: Session,
        peer: asyncio.Transport,
        upstream_leg: UpstreamLeg,
        scanner: FrontendScanner | None,
    ) -> None:
        super().__init__(session, peer)
        self.upstream_leg = upstream_leg
        self.scanner = scanner

    def data_received(self, data: bytes) -> None:
        self.nbytes += len(data)
        if self.scanner is not None:
            try:
                statements = self.scanner.feed(data)
            except ProtocolViolation as exc:
                self.session.protocol_error(exc)
                return
            if statements:
                self.session.audit_statements(statements)
        self.upstream_leg.last = b""
        if data.endswith(_TERMINATE):
            self.session.client_left = True
        self.peer.write(data)

    def _forget(self) -> None:
        super()._forget()
        del self.upstream_leg
