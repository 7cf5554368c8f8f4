"""`make fuzz`: generated inputs through the proxy's parsers, checked one by one.

Targets, each a pure function of bytes or text (no sockets, no event loop):

- `startup`: `wire.Reader` as a session uses it before log-in: `read_startup` until a
  StartupMessage, then `read_message` + `parse_password` for the password answer, the
  bytes fed in generated chunks.
- `scanner`: `wire.FrontendScanner.feed` over a frontend stream cut into chunks, checked
  against a reference model of the message framing (which statements each chunk
  completes, and where a bad length is).
- `access` / `config`: `parse_access` / `parse_config` of mutated valid YAML documents.

**The invariant.** A wire input ends in one of two clean outcomes: a parsed packet (or
"needs more data", when what is buffered is a prefix of a packet whose declared length
is within the cap), or `ProtocolViolation` — the one exception type the proxy turns into
an 08P01 ErrorResponse (`Session._fail` at start-up, `Session.protocol_error` in the
relay). Any other exception, a wrong parse, or an unbounded wait is a crash. A file input
is accepted (and then every duration is finite) or refused with `ConfigError`, whose
problems name the field the mutation touched (`limits.idleTimeout: ...`). An input
running longer than `--hang-seconds` is a hang.

Inputs are structure-aware: valid packets and documents with mutated lengths, codes,
fields and values, truncated, spliced and concatenated, plus some plain random bytes.
Input i of a run is generated from (seed, i) alone, so `--replay I` re-runs one input.

The same generators drive `tests/fuzz/`: a short run of each target in CI, and the whole
proxy process fed start-up input over TCP + TLS (`test_fuzz_proxy.py`, which `make fuzz`
runs with `RDSGATE_FUZZ_PROXY_INPUTS`), since that needs the lab's fixtures.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import struct
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from rdsgate.proxy import wire
from rdsgate.proxy.access import parse_access
from rdsgate.proxy.config import parse_config, parse_yaml
from rdsgate.proxy.errors import ConfigError, ProtocolViolation

# ---------------------------------------------------------------------------------------
# Byte-level building blocks

_I32 = struct.Struct("!i")
INTERESTING_LENGTHS = (0, 1, 3, 4, 5, 7, 8, 9, 16, 255, 256, 9_999, 10_000, 10_001, 65_535)
INTERESTING_U32 = (0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFFE, 1 << 20, (1 << 20) + 1)
STARTUP_CODES = (
    wire.PROTOCOL_3_0,
    wire.PROTOCOL_3_0 | 2,
    wire.PROTOCOL_3_0 | 0xFFFF,
    2 << 16,
    4 << 16,
    0,
    wire.SSL_REQUEST_CODE,
    wire.GSSENC_REQUEST_CODE,
    wire.CANCEL_REQUEST_CODE,
    1234 << 16 | 5677,
)
PARAM_KEYS = ("user", "database", "application_name", "options", "replication", "_pq_.x", "")
TEXTS = ("app", "orders", "", "é", "\u2603" * 3, "x" * 300, "a b", "-c x=1", "true", "0")
BAD_UTF8 = (b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\x80", b"\xf4\x90\x80\x80", b"\x80")
FRONTEND_TYPES = b"QPBEDHSCcdfFXp"


def _u32(value: int) -> bytes:
    return struct.pack("!I", value & 0xFFFFFFFF)


def _text(rng: random.Random) -> str:
    if rng.random() < 0.7:
        return rng.choice(TEXTS)
    return "".join(
        chr(rng.choice((rng.randrange(32, 127), rng.randrange(160, 0x3000))))
        for _ in range(rng.randrange(12))
    )


def _startup_params(rng: random.Random) -> dict[str, str]:
    return {rng.choice(PARAM_KEYS) or "k": _text(rng) for _ in range(rng.randrange(5))}


def _valid_startup_packet(rng: random.Random) -> bytes:
    r = rng.random()
    if r < 0.15:
        return wire.ssl_request()
    if r < 0.22:
        return _I32.pack(8) + _u32(wire.GSSENC_REQUEST_CODE)
    if r < 0.32:
        return wire.cancel_request(
            rng.getrandbits(32), rng.randbytes(rng.choice((4, 4, 0, 3, 32, 256)))
        )
    return wire.startup_message(
        _startup_params(rng), rng.choice((wire.PROTOCOL_3_0,) * 4 + STARTUP_CODES)
    )


def _raw_startup_body(rng: random.Random) -> bytes:
    """A StartupMessage body written by hand: layouts `startup_message` cannot produce."""
    parts: list[bytes] = []
    for _ in range(rng.randrange(6)):
        piece = _text(rng).encode()
        if rng.random() < 0.15:
            piece += rng.choice(BAD_UTF8)
        parts.append(piece)
    body = b"\x00".join(parts)
    ending = rng.choice((b"\x00\x00", b"\x00", b"", b"\x00\x00\x00"))
    return _u32(rng.choice(STARTUP_CODES)) + body + ending


def _frontend_message(rng: random.Random, max_sql: int) -> bytes:
    t = rng.choice(b"QP") if rng.random() < 0.5 else rng.choice(FRONTEND_TYPES)
    sql_len = rng.choice((0, 1, 8, max_sql - 1, max_sql, max_sql + 1, max_sql + 7, 3 * max_sql))
    sql = rng.choice(
        (b"select 1", b"x" * max(sql_len, 0), "é".encode() * (sql_len // 2), b"a\xffb")
    )
    if t == ord("Q"):
        body = sql + rng.choice((b"\x00", b"\x00", b"", b"\x00junk\x00"))
    elif t == ord("P"):
        name = rng.choice((b"", b"s1", b"n" * rng.choice((3, max_sql, max_sql + 2))))
        body = name + rng.choice((b"\x00", b"")) + sql + rng.choice((b"\x00", b"")) + b"\x00\x00"
    elif t == ord("d"):
        body = rng.randbytes(rng.choice((0, 1, 100, 5000)))
    elif t == ord("X"):
        body = b""
    else:
        body = rng.randbytes(rng.randrange(24))
    return bytes([t]) + _I32.pack(len(body) + 4) + body


def _mutate_length(rng: random.Random, data: bytes, at: int) -> bytes:
    """Replaces the 4-byte length at `at` with an off-by-some or an extreme value."""
    if len(data) < at + 4:
        return data
    (length,) = struct.unpack_from("!I", data, at)
    new = rng.choice(
        (
            rng.choice(INTERESTING_LENGTHS),
            rng.choice(INTERESTING_U32),
            length + rng.randint(-9, 9),
            length * 2,
            length // 2,
            rng.getrandbits(32),
        )
    )
    return data[:at] + _u32(new) + data[at + 4 :]


def _mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    """One generic mutation: flip, insert, delete, duplicate, NUL, bad UTF-8, truncate."""
    if not data:
        return rng.randbytes(rng.randrange(1, 16))
    i = rng.randrange(len(data))
    op = rng.randrange(8)
    if op == 0:
        return data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1 :]
    if op == 1:
        return data[:i] + rng.randbytes(rng.randrange(1, 8)) + data[i:]
    if op == 2:
        return data[:i] + data[i + rng.randrange(1, 8) :]
    if op == 3:
        j = rng.randrange(i, len(data) + 1)
        return data[:j] + data[i:j] + data[j:]
    if op == 4:
        return data[:i] + b"\x00" + data[i + rng.randrange(2) :]
    if op == 5:
        return data[:i] + rng.choice(BAD_UTF8) + data[i:]
    if op == 6:
        return data[:i]
    return data[:i] + bytes([rng.randrange(256)]) + data[i + 1 :]


def _cuts(rng: random.Random, data: bytes, boundaries: list[int]) -> list[bytes]:
    """The input split into the chunks the parser is fed: whole, at message boundaries,
    at random points, or byte by byte."""
    mode = rng.random()
    if mode < 0.35 or not data:
        return [data]
    if mode < 0.6 and boundaries:
        points = sorted({b for b in boundaries if 0 < b < len(data)})
    elif mode < 0.95:
        points = sorted(
            rng.sample(range(1, len(data)), min(len(data) - 1, rng.randrange(1, 12)))
            if len(data) > 1
            else []
        )
    else:
        points = list(range(1, min(len(data), 300)))
    out, prev = [], 0
    for p in points:
        out.append(data[prev:p])
        prev = p
    out.append(data[prev:])
    return out


# ---------------------------------------------------------------------------------------
# Wire inputs


@dataclass(frozen=True)
class WireInput:
    chunks: list[bytes]
    max_sql: int = 8192

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


def startup_input(rng: random.Random) -> WireInput:
    """What a client could send before log-in: packets, one or more of them broken."""
    r = rng.random()
    if r < 0.08:
        data = rng.randbytes(rng.randrange(48))
        return WireInput(_cuts(rng, data, []))
    packets: list[bytes] = []
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 5))):
        if rng.random() < 0.3:
            body = _raw_startup_body(rng)
            packet = _I32.pack(len(body) + 4) + body
        else:
            packet = _valid_startup_packet(rng)
        packets.append(packet)
    if rng.random() < 0.45:  # a password answer after the StartupMessage
        pw = wire.password_message(_text(rng)) if rng.random() < 0.7 else _frontend_message(rng, 64)
        packets.append(pw)
    # Mutate one packet (or none) at a structural point, sometimes several times.
    for _ in range(rng.choice((0, 1, 1, 1, 2, 3))):
        k = rng.randrange(len(packets))
        p = packets[k]
        what = rng.random()
        if what < 0.35:
            p = _mutate_length(
                rng, p, 1 if p[:1].isalpha() and len(p) > 5 and p[:1] in b"pQP" else 0
            )
        elif what < 0.5 and len(p) >= 8:
            p = (
                p[:4]
                + _u32(rng.choice(STARTUP_CODES) if rng.random() < 0.7 else rng.getrandbits(32))
                + p[8:]
            )
        else:
            p = _mutate_bytes(rng, p)
        packets[k] = p
    bounds = [sum(len(p) for p in packets[: i + 1]) for i in range(len(packets))]
    data = b"".join(packets)
    if rng.random() < 0.1:
        data = data[: rng.randrange(len(data) + 1)]
    return WireInput(_cuts(rng, data, bounds))


def scanner_input(rng: random.Random) -> WireInput:
    """A frontend stream during relay: valid messages, some with broken lengths."""
    max_sql = rng.choice((64, 64, 100, 8192))
    if rng.random() < 0.08:
        data = rng.randbytes(rng.randrange(64))
        return WireInput(_cuts(rng, data, []), max_sql)
    msgs = [_frontend_message(rng, max_sql) for _ in range(rng.choice((1, 1, 2, 3, 5, 8)))]
    for _ in range(rng.choice((0, 0, 1, 1, 2))):
        k = rng.randrange(len(msgs))
        msgs[k] = (
            _mutate_length(rng, msgs[k], 1) if rng.random() < 0.6 else _mutate_bytes(rng, msgs[k])
        )
    bounds = [sum(len(m) for m in msgs[: i + 1]) for i in range(len(msgs))]
    data = b"".join(msgs)
    if rng.random() < 0.1:
        data = data[: rng.randrange(len(data) + 1)]
    return WireInput(_cuts(rng, data, bounds), max_sql)


# ---------------------------------------------------------------------------------------
# Wire oracles: each returns an outcome label, or raises Failure


class Failure(Exception):
    """The parser broke the invariant on this input (not a clean outcome)."""


def _violation_label(exc: ProtocolViolation) -> str:
    if exc.sqlstate != "08P01" or not exc.message:
        raise Failure(f"ProtocolViolation without 08P01 and a message: {exc.sqlstate} {exc!r}")
    return "08P01: " + re.sub(r"\d+|b'.*'|'.*'", "N", exc.message)[:60]


def check_startup(inp: WireInput) -> str:
    """The proxy's start-up reads, in its order, on one `Reader`."""
    reader = wire.Reader()
    cap = wire.MAX_STARTUP_PACKET
    in_password = False
    data = b""
    try:
        for chunk in inp.chunks:
            reader.feed(chunk)
            data += chunk
            while True:
                before = len(reader)
                pending = data[len(data) - before :]
                if not in_password:
                    packet = reader.read_startup()
                    if packet is None:
                        if before >= 4:
                            (declared,) = _I32.unpack_from(pending, 0)
                            if not 8 <= declared <= cap or before >= declared:
                                raise Failure(
                                    f"waits for more after {before} bytes, declared {declared}"
                                )
                        break
                    used = pending[: before - len(reader)]
                    _check_packet(packet, used)
                    if isinstance(packet, wire.CancelRequest):
                        return "cancel"
                    if isinstance(packet, wire.StartupMessage):
                        in_password = True
                    continue
                msg = reader.read_message()
                if msg is None:
                    if before >= 5:
                        (declared,) = _I32.unpack_from(pending, 1)
                        if not 4 <= declared <= wire.MAX_MESSAGE or before >= declared + 1:
                            raise Failure(
                                f"waits for more after {before} bytes, declared {declared}"
                            )
                    break
                if wire.frame(msg) != pending[: before - len(reader)]:
                    raise Failure("message does not round-trip")
                if msg.type != b"p":
                    return "not a password message"  # the session refuses it with 08P01
                password = wire.parse_password(msg.body)
                if not isinstance(password, str) or wire.password_message(password) != wire.frame(
                    msg
                ):
                    raise Failure("password does not round-trip")
                return "password"
    except ProtocolViolation as exc:
        return _violation_label(exc)
    return "needs more data" if len(reader) else ("startup" if in_password else "negotiation")


def _check_packet(packet: wire.StartupPacket, used: bytes) -> None:
    (length,) = _I32.unpack_from(used, 0)
    if length != len(used):
        raise Failure(f"consumed {len(used)} bytes of a {length}-byte packet")
    code = struct.unpack_from("!I", used, 4)[0]
    if isinstance(packet, wire.SSLRequest | wire.GSSENCRequest):
        want = (
            wire.SSL_REQUEST_CODE
            if isinstance(packet, wire.SSLRequest)
            else wire.GSSENC_REQUEST_CODE
        )
        if code != want:
            raise Failure(f"{packet} from code {code}")
    elif isinstance(packet, wire.CancelRequest):
        if wire.cancel_request(packet.pid, packet.secret) != used:
            raise Failure("CancelRequest does not round-trip")
    else:
        if packet.major != 3 or not all(packet.params):
            raise Failure(f"accepted {packet!r}")
        rebuilt = wire.startup_message(packet.params, packet.version)
        duplicates = used.count(b"\x00") - 1 != 2 * len(packet.params)
        if rebuilt != used and not duplicates:
            raise Failure("StartupMessage does not round-trip")


def reference_frames(
    data: bytes, max_sql: int
) -> tuple[list[tuple[int, wire.Statement]], int | None]:
    """What the scanner must report, by a direct walk of the whole stream: each Q/P
    statement with the offset where it ends, and the offset where a bad header ends."""
    out: list[tuple[int, wire.Statement]] = []
    pos = 0
    while len(data) - pos >= 5:
        mtype = data[pos]
        (length,) = struct.unpack_from("!I", data, pos + 1)
        if length < 4:
            return out, pos + 5
        end = pos + 1 + length
        if mtype in (0x51, 0x50) and end <= len(data):
            out.append((end, _reference_statement(mtype, data[pos + 5 : end], max_sql)))
        pos = end
    return out, None


def _reference_statement(mtype: int, body: bytes, max_sql: int) -> wire.Statement:
    """Audit keeps the first `max_sql` bytes of SQL, after a Parse's statement name however
    long; `truncated` when cut or unterminated (a Parse with no end to its name has no SQL).
    `named`: a Parse whose name has any byte; `large`: the text after the name (and its NUL)
    is over `wire.LARGE_STATEMENT` bytes."""
    named = False
    if mtype == 0x50:
        nul = body.find(b"\x00")
        named = nul != 0 and len(body) > 0
        body = body[nul + 1 :] if nul >= 0 else b""
        large = nul >= 0 and len(body) - 1 > wire.LARGE_STATEMENT
    else:
        large = len(body) - 1 > wire.LARGE_STATEMENT
    seen = body[: max_sql + 1]
    end = seen.find(b"\x00")
    if end < 0:
        sql, truncated = seen[:max_sql], True
    else:
        sql, truncated = seen[:end], False
    kind = "parse" if mtype == 0x50 else "query"
    return wire.Statement(kind, sql.decode("utf-8", "replace"), truncated, named, large)


def check_scanner(inp: WireInput) -> str:
    data = inp.data
    expected, bad_at = reference_frames(data, inp.max_sql)
    scanner = wire.FrontendScanner(inp.max_sql)
    start = 0
    got_total = 0
    for chunk in inp.chunks:
        end = start + len(chunk)
        try:
            got = scanner.feed(chunk)
        except ProtocolViolation as exc:
            if bad_at is None or not start < bad_at <= end:
                raise Failure(f"violation in bytes {start}-{end}, reference says {bad_at}") from exc
            return _violation_label(exc)
        if bad_at is not None and start < bad_at <= end:
            raise Failure(f"no violation for the bad header ending at {bad_at}")
        want = [s for e, s in expected if start < e <= end]
        if (got or []) != want:
            raise Failure(f"bytes {start}-{end}: reported {got!r}, expected {want!r}")
        if got is not None and (not isinstance(got, list) or not got):
            raise Failure(f"feed returned {got!r}")
        got_total += len(want)
        start = end
    return f"{min(got_total, 3)}{'+' if got_total > 3 else ''} statements"


# ---------------------------------------------------------------------------------------
# File inputs


SEED_ACCESS: dict[str, Any] = {
    "version": 1,
    "roles": [
        {
            "name": "orders-rw",
            "allow": {
                "databases": {
                    "matchLabels": {"env": "prod"},
                    "matchExpressions": [{"key": "tier", "operator": "In", "values": ["db"]}],
                },
                "databaseNames": ["orders", "orders_*"],
                "databaseUsers": ["app", "^app_[a-z]+$"],
            },
            "deny": {"databaseUsers": ["postgres"]},
            "options": {
                "maxConnections": 50,
                "maxSessionDuration": "8h",
                "auditQueries": True,
                "maxTokenTTL": "24h",
            },
        },
        {
            "name": "orders-ro",
            "allow": {"databases": {}, "databaseNames": ["orders"], "databaseUsers": ["report"]},
        },
    ],
    "grants": [
        {
            "identity": "shop/orders-app",
            "secretSha256": "9f" * 32,
            "roles": ["orders-rw"],
            "expiresAt": "2026-12-01T00:00:00Z",
        },
        {
            "identity": "shop/web-sa",
            "serviceAccount": {"namespace": "shop", "name": "web"},
            "roles": ["orders-ro"],
        },
        {
            "identity": "shop/laptop",
            "publicKeySha256": "0a" * 32,
            "roles": ["orders-ro"],
            "requestedBy": "alice",
            "approvedBy": "bob",
        },
    ],
    "revoked": [{"identity": "shop/old", "reason": "its Token expired"}],
}

SEED_CONFIG: dict[str, Any] = {
    "database": {"name": "orders", "namespace": "shop", "labels": {"env": "prod"}},
    "listen": {"address": "0.0.0.0", "port": 5432},  # noqa: S104
    "tls": {
        "certFile": "/etc/rdsgate/tls/tls.crt",
        "keyFile": "/etc/rdsgate/tls/tls.key",
        "clientCAFile": "/etc/rdsgate/tls/ca.crt",
    },
    "upstream": {
        "endpoint": "orders.proxy-abc123.eu-west-1.rds.amazonaws.com:5432",
        "tls": {"mode": "verify-full", "caFile": None, "serverName": None},
        "connectTimeout": "5s",
        "warm": {"perKey": 2, "maxTotal": 32, "idleTimeout": "5m", "forgetAfter": "10m"},
    },
    "aws": {
        "region": "eu-west-1",
        "assumeRoleArn": "arn:aws:iam::123456789012:role/rdsgate",
        "externalId": "ext-1",
        "proxyResourceId": "prx-abc123",
        "accountId": "123456789012",
    },
    "access": {"file": "/etc/rdsgate/access/access.yaml", "pollInterval": "1s"},
    "limits": {
        "maxConnections": 1000,
        "idleTimeout": "30m",
        "maxSessionDuration": "12h",
        "startupTimeout": "10s",
        "drainTimeout": "30s",
    },
    "audit": {"queries": True, "maxQueryBytes": 8192, "maxBufferBytes": 16777216},
    "metrics": {"address": "0.0.0.0", "port": 9187},  # noqa: S104
}

BAD_VALUES: tuple[Any, ...] = (
    None,
    True,
    0,
    -1,
    1,
    10**30,
    -(10**30),
    2**63,
    1.5,
    -0.5,
    math.nan,
    math.inf,
    -math.inf,
    "",
    "soon",
    "10",
    "-5s",
    "5 s",
    ".5s",
    "1e9s",
    "9" * 400 + "s",
    "9" * 30 + "d",
    "1h30",
    "0s",
    "x" * 100_000,
    "\u2603",
    "\x00",
    "^(unclosed$",
    "*",
    "^$",
    [],
    [1, 2],
    {},
    {"a": 1},
    "2026-13-45T99:00:00Z",
    "not-a-date",
    "eu-west-1",
    "arn:aws:iam::1:role/x",
    "[::1]:0",
    "host:99999",
    "h:5432",
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, (*prefix, i))


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        doc = doc[p]
    return doc


@dataclass(frozen=True)
class FileInput:
    text: str
    #: The dotted fields the mutations touched; empty after text-level damage (then no
    #: field can be named, only the YAML position).
    paths: tuple[str, ...]
    #: Whether a mutation duplicated a named list entry (refused at the top level).
    duplicated: bool = False


def _dotted(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path)


def file_input(rng: random.Random, seed_doc: dict[str, Any]) -> FileInput:
    doc = json.loads(json.dumps(seed_doc))  # a deep copy
    paths = [p for p in _paths(doc) if p]
    touched: list[str] = []
    duplicated = False
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        path = rng.choice(paths)
        parent, key = _get(doc, path[:-1]), path[-1]
        op = rng.random()
        touched.append(_dotted(path))
        if op < 0.55:
            parent[key] = rng.choice(BAD_VALUES) if rng.random() < 0.85 else rng.randbytes(4).hex()
        elif op < 0.7 and isinstance(parent, dict):
            del parent[key]
        elif op < 0.8 and isinstance(parent, dict):
            parent[f"{key}x"] = parent.pop(key)  # a typo
            touched.append(_dotted((*path[:-1], f"{key}x")))
        elif op < 0.88 and isinstance(parent, dict):
            extra = rng.choice(("extra", "Database", "max_connections"))
            parent[extra] = 1
            touched.append(_dotted((*path[:-1], extra)))
        elif op < 0.95 and isinstance(parent, list):
            parent.append(json.loads(json.dumps(parent[key])))
            touched.append(_dotted((*path[:-1], len(parent) - 1)))
            duplicated = True
        else:
            parent[key] = [parent[key]] if rng.random() < 0.5 else {"value": parent[key]}
        paths = [p for p in _paths(doc) if p]
        if not paths:
            break
    text = yaml.safe_dump(doc, allow_unicode=True) if rng.random() < 0.8 else json.dumps(doc)
    if rng.random() < 0.15:  # text-level damage: the field is no longer known
        i = rng.randrange(len(text) + 1)
        damage = rng.choice(
            (
                "\t",
                ": :",
                "{",
                "]",
                "&a *b",
                "!!python/object:os.system",
                "\x00",
                "\n  - ",
                text[:i],
            )
        )
        text = text[:i] + damage + text[i:]
        touched = []
    return FileInput(text, tuple(touched), duplicated)


def _durations_finite(model: Any) -> None:
    """Every float a loaded file carries is usable as a timer (finite, not negative)."""
    for value in _walk_model(model):
        if isinstance(value, float) and (not math.isfinite(value) or value < 0):
            raise Failure(f"accepted a duration of {value}")


def _walk_model(value: Any) -> Iterator[Any]:
    if hasattr(value, "__pydantic_fields__"):
        for name in type(value).model_fields:
            yield from _walk_model(getattr(value, name))
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _walk_model(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _walk_model(v)
    else:
        yield value


def check_file(inp: FileInput, kind: str) -> str:
    try:
        data = parse_yaml(inp.text, kind)
        if kind == "access":
            policy = parse_access(data, kind)
            _durations_finite(policy.file)
        else:
            config = parse_config(data, kind)
            _durations_finite(config)
            config.dump()
    except ConfigError as exc:
        if not exc.problems or not all(isinstance(p, str) and p for p in exc.problems):
            raise Failure(f"ConfigError without problems: {exc!r}") from exc
        if not inp.paths:
            return "refused (damaged text)"
        if any(
            p.startswith(("the access file must", "the config must", "not valid YAML"))
            for p in exc.problems
        ):
            return "refused (not a mapping, or not YAML)"
        for problem in exc.problems:
            where = problem.split(": ", 1)[0]
            named = any(
                where == t or t.startswith(where + ".") or where.startswith(t + ".")
                for t in inp.paths
            ) or (inp.duplicated and where == "(top level)" and "duplicate" in problem)
            if not named:
                raise Failure(
                    f"problem {problem!r} names none of the fields changed: {inp.paths}"
                ) from exc
        return "refused, field named"
    return "accepted"


# ---------------------------------------------------------------------------------------
# The run


@dataclass
class Target:
    name: str
    generate: Callable[[random.Random], Any]
    check: Callable[[Any], str]


TARGETS: dict[str, Target] = {
    "startup": Target("startup", startup_input, check_startup),
    "scanner": Target("scanner", scanner_input, check_scanner),
    "access": Target(
        "access", lambda rng: file_input(rng, SEED_ACCESS), lambda i: check_file(i, "access")
    ),
    "config": Target(
        "config", lambda rng: file_input(rng, SEED_CONFIG), lambda i: check_file(i, "config")
    ),
}


def input_rng(seed: int, target: str, index: int) -> random.Random:
    """Input `index` of `target` depends on nothing else, so one input can be replayed."""
    return random.Random(f"{seed}:{target}:{index}")


class _Hang(Exception):
    pass


class Watchdog:
    """Interrupts the main thread when one input runs longer than `limit` seconds.

    A thread polls a counter instead of arming a timer per input, so the check costs
    nothing per input."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.index = -1
        self.since = time.monotonic()
        self.fired = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def start(self, index: int) -> None:
        self.index = index
        self.since = time.monotonic()

    def _run(self) -> None:
        import _thread

        seen, seen_at = -2, time.monotonic()
        while not self._stop.wait(min(0.1, self.limit / 4)):
            if self.index != seen:
                seen, seen_at = self.index, time.monotonic()
            elif time.monotonic() - seen_at > self.limit and not self.fired:
                self.fired = True
                _thread.interrupt_main()


@dataclass
class Result:
    target: str
    inputs: int = 0
    crashes: int = 0
    hangs: int = 0
    seconds: float = 0.0
    slowest_ms: float = 0.0
    outcomes: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.inputs / self.seconds if self.seconds else 0.0


def run_target(
    target: Target,
    inputs: int,
    seed: int,
    *,
    hang_seconds: float = 2.0,
    first: int = 0,
    progress: Callable[[Result], None] | None = None,
    max_failures: int = 20,
) -> Result:
    """Generates and checks inputs `first`..`first+inputs-1`; never stops at a failure."""
    result = Result(target.name)
    started = time.perf_counter()
    next_report = started + 5.0
    with Watchdog(hang_seconds) as dog:
        for i in range(first, first + inputs):
            dog.start(i)
            t0 = time.perf_counter()
            try:
                inp = target.generate(input_rng(seed, target.name, i))
                label = target.check(inp)
            except KeyboardInterrupt:
                if not dog.fired:
                    raise
                dog.fired = False
                result.hangs += 1
                label = "hang"
                _record(result, i, seed, f"no outcome within {hang_seconds}s", max_failures)
            except Failure as exc:
                result.crashes += 1
                label = "failure"
                _record(result, i, seed, f"invariant broken: {exc}", max_failures)
            except Exception as exc:
                result.crashes += 1
                label = "crash"
                _record(
                    result,
                    i,
                    seed,
                    "".join(traceback.format_exception_only(exc)).strip(),
                    max_failures,
                )
            elapsed = (time.perf_counter() - t0) * 1000
            if elapsed > result.slowest_ms:
                result.slowest_ms = elapsed
            result.outcomes[label] += 1
            result.inputs += 1
            if progress is not None and time.perf_counter() >= next_report:
                result.seconds = time.perf_counter() - started
                progress(result)
                next_report += 5.0
    result.seconds = time.perf_counter() - started
    return result


def _record(result: Result, index: int, seed: int, what: str, limit: int) -> None:
    if len(result.failures) < limit:
        result.failures.append(
            f"{result.target} input {index}: {what}\n"
            f"    replay: bench/fuzz.py --seed {seed} --targets {result.target} --replay {index}"
        )


def describe(target: str, inp: Any) -> str:
    if isinstance(inp, WireInput):
        return f"chunks ({len(inp.chunks)}, max_sql={inp.max_sql}): " + repr(inp.chunks)[:2000]
    assert isinstance(inp, FileInput)
    return f"mutated fields: {inp.paths}\n{inp.text[:4000]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--inputs", type=int, default=1_000_000, help="per wire target (default 10^6)"
    )
    parser.add_argument(
        "--file-inputs", type=int, default=20_000, help="per file target (access, config)"
    )
    parser.add_argument("--seed", type=int, default=None, help="default: random, printed")
    parser.add_argument(
        "--targets", default=",".join(TARGETS), help="comma-separated: " + ", ".join(TARGETS)
    )
    parser.add_argument("--hang-seconds", type=float, default=2.0, help="one input's limit")
    parser.add_argument("--replay", type=int, default=None, help="re-run one input and show it")
    parser.add_argument("--json", action="store_true", help="the summary as JSON on stdout")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        parser.error(f"unknown targets {unknown}")
    if args.replay is not None:
        for name in names:
            inp = TARGETS[name].generate(input_rng(seed, name, args.replay))
            print(describe(name, inp))
            print("outcome:", TARGETS[name].check(inp))
        return 0

    def progress(r: Result) -> None:
        print(
            f"  {r.target}: {r.inputs:>9,} inputs  {r.rate:>8,.0f}/s  crashes {r.crashes}  hangs {r.hangs}",
            file=sys.stderr,
            flush=True,
        )

    print(f"fuzz: seed {seed}, targets {', '.join(names)}", file=sys.stderr)
    results = []
    for name in names:
        count = args.inputs if name in ("startup", "scanner") else args.file_inputs
        r = run_target(
            TARGETS[name], count, seed, hang_seconds=args.hang_seconds, progress=progress
        )
        progress(r)
        results.append(r)
    total = sum(r.seconds for r in results)
    summary = {
        "seed": seed,
        "targets": {
            r.target: {
                "inputs": r.inputs,
                "crashes": r.crashes,
                "hangs": r.hangs,
                "seconds": round(r.seconds, 1),
                "inputs_per_second": round(r.rate),
                "slowest_input_ms": round(r.slowest_ms, 1),
                "outcomes": dict(r.outcomes.most_common()),
            }
            for r in results
        },
        "inputs": sum(r.inputs for r in results),
        "crashes": sum(r.crashes for r in results),
        "hangs": sum(r.hangs for r in results),
        "seconds": round(total, 1),
    }
    for r in results:
        for f in r.failures:
            print(f, file=sys.stderr)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"\nfuzz summary (seed {seed})")
        for r in results:
            print(
                f"  {r.target:8} {r.inputs:>9,} inputs  {r.crashes} crashes  {r.hangs} hangs  "
                f"{r.seconds:7.1f} s  {r.rate:>8,.0f} inputs/s  slowest {r.slowest_ms:.1f} ms"
            )
            for label, n in r.outcomes.most_common(12):
                print(f"      {n:>9,}  {label}")
        print(
            f"  total    {summary['inputs']:>9,} inputs  {summary['crashes']} crashes  "
            f"{summary['hangs']} hangs  {total:7.1f} s"
        )
    return 1 if summary["crashes"] or summary["hangs"] else 0


if __name__ == "__main__":
    sys.exit(main())
