"""TLS records to the client no larger than PostgreSQL's, so async libpq never stalls.

PostgreSQL writes TLS records of at most 8 KB of plaintext. libpq's async API can wait on
the socket while decrypted bytes of a larger record sit in OpenSSL's buffer, so a proxy
that writes 16 KB records makes async psycopg hang on large results, intermittently. A
plain TCP tap between client and proxy reads the record headers to prove the cap, and
async psycopg reads wide results round after round, each under a watchdog.
"""

from __future__ import annotations

import asyncio
import random
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import psycopg
import pytest
import uvloop

from rdsgate.operator import pki
from rdsgate.proxy import tls
from rdsgate.proxy.config import ClientTLS
from rdsgate.proxy.relay import write_in_records
from tests.fixtures.proxy import RunningProxy
from tests.fixtures.tlstap import TlsRecordTap

#: 8 KB of plaintext, plus the most a TLS 1.3 or 1.2 record may add (RFC 8446 §5.2).
RECORD_LIMIT = 8192 + 256
ROUNDS = 200
WATCHDOG = 5.0


@pytest.fixture
def tap(proxy: RunningProxy) -> Iterator[TlsRecordTap]:
    t = TlsRecordTap(proxy.port).start()
    yield t
    t.stop()


def widths(seed: int, rows: int = 40) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(0, 4500) for _ in range(rows)]


def wide_rows_sql(ws: list[int]) -> str:
    array = "{" + ",".join(map(str, ws)) + "}"
    body = "select i, repeat(chr(97 + (i % 26)::int), w) from unnest('{}'::int[])"
    return body.format(array) + " with ordinality as t(w, i)"


def expected_rows(ws: list[int]) -> list[tuple[int, str]]:
    return [(i, chr(97 + i % 26) * w) for i, w in enumerate(ws, start=1)]


def check_records(tap: TlsRecordTap) -> None:
    assert not tap.log.errors, tap.log.errors
    assert tap.log.lengths, "the tap saw no TLS records"
    assert tap.log.largest <= RECORD_LIMIT, (
        f"a TLS record to the client carried {tap.log.largest} bytes; PostgreSQL's are at most "
        f"{RECORD_LIMIT}"
    )


def test_async_copy_to_stdout_never_stalls(proxy: RunningProxy, tap: TlsRecordTap) -> None:
    dsn = proxy.dsn(port=str(tap.port))

    async def copy_once(conn: psycopg.AsyncConnection[object], ws: list[int]) -> bytes:
        sql = f"copy ({wide_rows_sql(ws)}) to stdout"
        async with conn.cursor() as cur, cur.copy(sql) as copy:
            return b"".join([bytes(chunk) async for chunk in copy])

    async def main() -> None:
        conn = await asyncio.wait_for(
            psycopg.AsyncConnection.connect(dsn, autocommit=True), WATCHDOG
        )
        async with conn:
            for seed in range(ROUNDS):
                ws = widths(seed)
                try:
                    data = await asyncio.wait_for(copy_once(conn, ws), WATCHDOG)
                except TimeoutError:
                    pytest.fail(
                        f"COPY TO STDOUT stalled in round {seed + 1} of {ROUNDS}; largest TLS "
                        f"record to the client so far: {tap.log.largest} bytes"
                    )
                want = "".join(f"{i}\t{v}\n" for i, v in expected_rows(ws)).encode()
                assert data == want, f"round {seed}: COPY returned other bytes"

    asyncio.run(main())
    check_records(tap)


def test_async_fetchall_of_a_wide_result_never_stalls(
    proxy: RunningProxy, tap: TlsRecordTap
) -> None:
    dsn = proxy.dsn(port=str(tap.port))

    async def main() -> None:
        conn = await asyncio.wait_for(
            psycopg.AsyncConnection.connect(dsn, autocommit=True), WATCHDOG
        )
        async with conn:
            for seed in range(ROUNDS):
                ws = widths(seed)
                try:
                    async with asyncio.timeout(WATCHDOG):
                        cur = await conn.execute(wide_rows_sql(ws))
                        rows = await cur.fetchall()
                except TimeoutError:
                    pytest.fail(
                        f"fetchall stalled in round {seed + 1} of {ROUNDS}; largest TLS "
                        f"record to the client so far: {tap.log.largest} bytes"
                    )
                assert rows == expected_rows(ws), f"round {seed}: other rows"

    asyncio.run(main())
    check_records(tap)


def test_the_relay_splits_its_writes_where_openssl_cannot(tmp_path: Path) -> None:
    """`write_in_records`, the relay's way where OpenSSL cannot be told to cap records, on
    uvloop's TLS transport with a context left uncapped."""
    ca = pki.make_ca("records CA")
    server = pki.issue_server_cert(ca, ["localhost"], ["127.0.0.1"])
    (tmp_path / "tls.crt").write_bytes(server.cert_pem)
    (tmp_path / "tls.key").write_bytes(server.key_pem)
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    ctx = tls.server_context(
        ClientTLS.model_validate(
            {"certFile": tmp_path / "tls.crt", "keyFile": tmp_path / "tls.key"}
        )
    )
    payload = random.Random(7).randbytes(300_000)

    class Writer(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            write_in_records(cast(asyncio.Transport, transport), payload)
            transport.close()

    async def serve() -> int:
        srv = await asyncio.get_running_loop().create_server(Writer, "127.0.0.1", 0, ssl=ctx)
        port: int = srv.sockets[0].getsockname()[1]
        return port

    loop = uvloop.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        port = asyncio.run_coroutine_threadsafe(serve(), loop).result(10)
        tap = TlsRecordTap(port).start()
        try:
            client = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
            raw = socket.create_connection(("127.0.0.1", tap.port), 10)
            with client.wrap_socket(raw, server_hostname="localhost") as conn:
                received = b""
                while chunk := conn.recv(65536):
                    received += chunk
        finally:
            tap.stop()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
    assert received == payload
    check_records(tap)
    assert len([n for n in tap.log.lengths if n > 8000]) >= 300_000 // 8192


def test_openssl_caps_records_on_this_python(tmp_path: Path) -> None:
    """The proxy's own way: OpenSSL is told the cap (tap tests above see it on the wire)."""
    ca = pki.make_ca("records CA")
    server = pki.issue_server_cert(ca, ["localhost"])
    (tmp_path / "tls.crt").write_bytes(server.cert_pem)
    (tmp_path / "tls.key").write_bytes(server.key_pem)
    ctx = tls.server_context(
        ClientTLS.model_validate(
            {"certFile": tmp_path / "tls.crt", "keyFile": tmp_path / "tls.key"}
        )
    )
    assert tls.cap_records(ctx)
