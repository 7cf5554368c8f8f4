"""Awaitable packets over an asyncio transport, for the start-up phase of either leg.

A `PacketStream` is the transport's protocol until log-in completes; then the session
hands the transport to a relay protocol (`transport.set_protocol`) together with any
bytes still buffered, and this object is dropped.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, cast

from . import wire
from .errors import AuthenticationFailed, ProtocolViolation


class ConnectionClosed(Exception):
    """The peer closed the connection during start-up."""


class TLSHandshakeFailed(AuthenticationFailed):
    """The client's TLS handshake failed: not TLS, no common version or cipher, or a
    certificate from another CA where `certverify` could not defer that verdict.

    Nothing can be sent back inside a failed handshake: the client sees the TLS alert,
    the audit trail and metrics get this reason.
    """

    def __init__(self, error: ssl.SSLError) -> None:
        verify = getattr(error, "verify_message", None)
        if verify:
            super().__init__(
                f"client certificate rejected: {verify} (not signed by the rdsgate CA)",
                reason="certificate_untrusted",
            )
        else:
            super().__init__(f"TLS handshake failed: {error.reason or error}", reason="tls_failed")


class PacketStream(asyncio.Protocol):
    def __init__(self, *, max_startup: int = wire.MAX_STARTUP_PACKET) -> None:
        self.reader = wire.Reader(max_startup=max_startup)
        self.transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._closed: BaseException | None = None
        self._eof = False

    # asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = exc or ConnectionClosed("connection closed")
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    # reading ----------------------------------------------------------------------------
    async def _more(self) -> None:
        if self._closed is not None or self._eof:
            raise ConnectionClosed("connection closed during start-up")
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def read_startup(self) -> wire.StartupPacket:
        while True:
            packet = self.reader.read_startup()
            if packet is not None:
                return packet
            await self._more()

    async def read_message(self) -> wire.Message:
        while True:
            msg = self.reader.read_message()
            if msg is not None:
                return msg
            await self._more()

    async def read_byte(self) -> int:
        while True:
            data = self.reader.take_buffer()
            if data:
                if len(data) > 1:
                    # Bytes after the server's one-byte TLS answer were not encrypted: a
                    # man-in-the-middle could have injected them (CVE-2021-23222).
                    raise ProtocolViolation("unexpected data after the server's TLS answer")
                return data[0]
            await self._more()

    # writing ----------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def start_tls(self, ctx: ssl.SSLContext, **kwargs: Any) -> None:
        """Upgrades the transport in place; bytes buffered before it would be plaintext."""
        if len(self.reader):
            raise ProtocolViolation("received unencrypted data after SSL request")
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        new = await loop.start_tls(self.transport, self, ctx, **kwargs)
        assert new is not None
        self.transport = new

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    @property
    def closed(self) -> bool:
        return self._closed is not None
