"""The Postgres wire protocol, sans-IO: bytes in, events out, and builders for replies.

Nothing here touches a socket (in the manner of h11). `Reader` turns a byte stream into
startup packets and typed messages; `FrontendScanner` follows frontend message
boundaries during relay to find the SQL that audit needs, without copying anything else.
Message formats: https://www.postgresql.org/docs/current/protocol-message-formats.html
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import NamedTuple

from .errors import ProtocolViolation

PROTOCOL_3_0 = 3 << 16
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

#: The server's own cap on a startup packet (MAX_STARTUP_PACKET_LENGTH).
MAX_STARTUP_PACKET = 10_000
#: A cap on typed messages rdsgate reads whole (password, errors, startup replies).
MAX_MESSAGE = 1 << 20
#: Statement text over this many bytes makes RDS Proxy pin the session (`Statement.large`).
LARGE_STATEMENT = 16 * 1024

AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12

_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_HDR = struct.Struct("!cI")
_II = struct.Struct("!II")

# ---------------------------------------------------------------------------------------
# Events


@dataclass(frozen=True, slots=True)
class SSLRequest:
    pass


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    pass


@dataclass(frozen=True, slots=True)
class CancelRequest:
    pid: int
    secret: bytes


@dataclass(frozen=True, slots=True)
class StartupMessage:
    version: int
    params: dict[str, str] = field(default_factory=dict)

    @property
    def major(self) -> int:
        return self.version >> 16

    @property
    def minor(self) -> int:
        return self.version & 0xFFFF


StartupPacket = SSLRequest | GSSENCRequest | CancelRequest | StartupMessage


@dataclass(frozen=True, slots=True)
class Message:
    """A typed message: `type` is one ASCII byte (b"Q", b"R", ...), `body` excludes the header."""

    type: bytes
    body: bytes


# ---------------------------------------------------------------------------------------
# Reading


class Reader:
    """Buffers one direction of a connection and cuts it into packets.

    `feed` appends bytes; `read_startup` / `read_message` return the next complete packet
    or None when more bytes are needed; `take_buffer` hands what is left to the relay.
    """

    __slots__ = ("_buf", "_max_message", "_max_startup")

    def __init__(
        self, *, max_startup: int = MAX_STARTUP_PACKET, max_message: int = MAX_MESSAGE
    ) -> None:
        self._buf = bytearray()
        self._max_startup = max_startup
        self._max_message = max_message

    def feed(self, data: bytes) -> None:
        self._buf += data

    def take_buffer(self) -> bytes:
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def __len__(self) -> int:
        return len(self._buf)

    def read_startup(self) -> StartupPacket | None:
        """The untyped first packet: SSLRequest, GSSENCRequest, CancelRequest or StartupMessage."""
        buf = self._buf
        if len(buf) < 4:
            return None
        (length,) = _I32.unpack_from(buf, 0)
        if length < 8 or length > self._max_startup:
            raise ProtocolViolation(
                f"invalid startup packet length {length} (must be 8 to {self._max_startup} bytes)"
            )
        if len(buf) < length:
            return None
        (code,) = _U32.unpack_from(buf, 4)
        body = bytes(buf[8:length])
        del buf[:length]
        if code == SSL_REQUEST_CODE:
            return SSLRequest()
        if code == GSSENC_REQUEST_CODE:
            return GSSENCRequest()
        if code == CANCEL_REQUEST_CODE:
            if len(body) < 8:
                raise ProtocolViolation("invalid CancelRequest packet")
            (pid,) = _U32.unpack_from(body, 0)
            return CancelRequest(pid=pid, secret=body[4:])
        if code >> 16 != 3:
            raise ProtocolViolation(
                f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: "
                "rdsgate speaks protocol 3.0"
            )
        return StartupMessage(version=code, params=_parse_startup_params(body))

    def read_message(self) -> Message | None:
        buf = self._buf
        if len(buf) < 5:
            return None
        mtype, length = _HDR.unpack_from(buf, 0)
        if length < 4 or length > self._max_message:
            raise ProtocolViolation(f"invalid message length {length} for message type {mtype!r}")
        end = 1 + length
        if len(buf) < end:
            return None
        body = bytes(buf[5:end])
        del buf[:end]
        return Message(mtype, body)


def _parse_startup_params(body: bytes) -> dict[str, str]:
    if not body.endswith(b"\x00"):
        raise ProtocolViolation("invalid startup packet layout: expected terminator as last byte")
    pairs = body[:-1]
    if pairs and not pairs.endswith(b"\x00"):
        raise ProtocolViolation("invalid startup packet layout: expected terminator as last byte")
    parts = pairs.split(b"\x00")[:-1] if pairs else []
    if len(parts) % 2:
        raise ProtocolViolation("invalid startup packet layout: parameter without a value")
    params: dict[str, str] = {}
    try:
        for i in range(0, len(parts), 2):
            key = parts[i].decode()
            if not key:
                raise ProtocolViolation("invalid startup packet layout: empty parameter name")
            params[key] = parts[i + 1].decode()
    except UnicodeDecodeError as exc:
        raise ProtocolViolation("invalid startup packet: parameters are not UTF-8") from exc
    return params


def cstring(body: bytes, start: int = 0) -> tuple[str, int]:
    """A NUL-terminated string at `start`, and the offset after its terminator."""
    end = body.find(b"\x00", start)
    if end < 0:
        raise ProtocolViolation("invalid message: missing string terminator")
    return body[start:end].decode("utf-8", "replace"), end + 1


def parse_password(body: bytes) -> str:
    """PasswordMessage ('p') answering AuthenticationCleartextPassword."""
    if not body.endswith(b"\x00") or body.count(b"\x00") != 1:
        raise ProtocolViolation("invalid password packet")
    try:
        return body[:-1].decode()
    except UnicodeDecodeError as exc:
        raise ProtocolViolation("invalid password packet: not UTF-8") from exc


def parse_auth_request(body: bytes) -> tuple[int, bytes]:
    """Authentication* ('R'): the request code and its payload."""
    if len(body) < 4:
        raise ProtocolViolation("invalid authentication request")
    (code,) = _I32.unpack_from(body, 0)
    return code, body[4:]


def parse_fields(body: bytes) -> dict[str, str]:
    """ErrorResponse / NoticeResponse fields by their one-letter codes (S, C, M, D, H, ...)."""
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(body) and body[pos] != 0:
        code = chr(body[pos])
        value, pos = cstring(body, pos + 1)
        fields[code] = value
    return fields


def parse_backend_key_data(body: bytes) -> tuple[int, bytes]:
    if len(body) < 8:
        raise ProtocolViolation("invalid BackendKeyData")
    (pid,) = _U32.unpack_from(body, 0)
    return pid, body[4:]


def parse_sasl_mechanisms(payload: bytes) -> list[str]:
    return [m.decode() for m in payload.split(b"\x00") if m]


# ---------------------------------------------------------------------------------------
# Building


def _msg(mtype: bytes, body: bytes) -> bytes:
    return mtype + _I32.pack(len(body) + 4) + body


def frame(msg: Message) -> bytes:
    """A parsed message back in its wire form."""
    return _msg(msg.type, msg.body)


def _cstr(value: str) -> bytes:
    return value.encode() + b"\x00"


def ssl_request() -> bytes:
    return _II.pack(8, SSL_REQUEST_CODE)


def startup_message(params: dict[str, str], version: int = PROTOCOL_3_0) -> bytes:
    body = _U32.pack(version) + b"".join(_cstr(k) + _cstr(v) for k, v in params.items()) + b"\x00"
    return _I32.pack(len(body) + 4) + body


def cancel_request(pid: int, secret: bytes) -> bytes:
    body = _U32.pack(CANCEL_REQUEST_CODE) + _U32.pack(pid) + secret
    return _I32.pack(len(body) + 4) + body


def password_message(password: str) -> bytes:
    return _msg(b"p", _cstr(password))


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return _msg(b"p", _cstr(mechanism) + _I32.pack(len(data)) + data)


def sasl_response(data: bytes) -> bytes:
    return _msg(b"p", data)


def terminate() -> bytes:
    return _msg(b"X", b"")


def authentication(code: int, payload: bytes = b"") -> bytes:
    return _msg(b"R", _I32.pack(code) + payload)


def authentication_ok() -> bytes:
    return authentication(AUTH_OK)


def authentication_cleartext() -> bytes:
    return authentication(AUTH_CLEARTEXT)


def backend_key_data(pid: int, secret: bytes) -> bytes:
    return _msg(b"K", _U32.pack(pid) + secret)


def ready_for_query(status: bytes = b"I") -> bytes:
    return _msg(b"Z", status)


def negotiate_protocol_version(minor: int, unsupported: list[str]) -> bytes:
    body = _I32.pack(minor) + _I32.pack(len(unsupported)) + b"".join(_cstr(o) for o in unsupported)
    return _msg(b"v", body)


def error_response(
    code: str,
    message: str,
    *,
    severity: str = "FATAL",
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    return _msg(b"E", _fields(severity, code, message, detail, hint))


def _fields(severity: str, code: str, message: str, detail: str | None, hint: str | None) -> bytes:
    parts = [b"S" + _cstr(severity), b"V" + _cstr(severity), b"C" + _cstr(code)]
    parts.append(b"M" + _cstr(message))
    if detail:
        parts.append(b"D" + _cstr(detail))
    if hint:
        parts.append(b"H" + _cstr(hint))
    return b"".join(parts) + b"\x00"


def query(sql: str) -> bytes:
    return _msg(b"Q", _cstr(sql))


# ---------------------------------------------------------------------------------------
# The client side of a log-in with a cleartext password (the IAM token, for RDS Proxy)


@dataclass(slots=True)
class LoginResult:
    """How a log-in ended: at ReadyForQuery (`ready`), or at an error or an auth method
    other than a cleartext password."""

    authenticated: bool = False
    ready: bool = False
    error: dict[str, str] | None = None
    #: An authentication method the server asked for that is not a cleartext password.
    unsupported_auth: int | None = None
    #: The frames from AuthenticationOk to ReadyForQuery, BackendKeyData left out.
    greeting: list[bytes] = field(default_factory=list)
    backend_key: tuple[int, bytes] | None = None


class ClientLogin:
    """A Postgres start-up as a client, sans-IO: `start()` gives the StartupMessage, `handle`
    takes each server message and gives the bytes to send back and, at the end, the result.

    Shared by the proxy's upstream leg, `rdsgate diagnose`'s IAM login and the CLI's probe.
    """

    __slots__ = ("_params", "_password", "_result")

    def __init__(self, params: dict[str, str], password: str) -> None:
        self._params = params
        self._password = password
        self._result = LoginResult()

    def start(self) -> bytes:
        return startup_message(self._params)

    def handle(self, msg: Message) -> tuple[bytes, LoginResult | None]:
        result = self._result
        t = msg.type
        if t == b"E":
            result.error = parse_fields(msg.body)
            return b"", result
        if not result.authenticated:
            if t == b"R":
                code, _ = parse_auth_request(msg.body)
                if code == AUTH_CLEARTEXT:
                    return password_message(self._password), None
                if code == AUTH_OK:
                    result.authenticated = True
                    result.greeting.append(authentication_ok())
                    return b"", None
                result.unsupported_auth = code
                return b"", result
            if t == b"N":
                return b"", None
            raise ProtocolViolation(f"unexpected message {t!r} from the server during log-in")
        if t == b"K":
            result.backend_key = parse_backend_key_data(msg.body)
        elif t == b"Z":
            result.greeting.append(frame(msg))
            result.ready = True
            return b"", result
        else:
            result.greeting.append(frame(msg))
        return b"", None


# ---------------------------------------------------------------------------------------
# Relay-time scanning of the frontend stream


class Statement(NamedTuple):
    """SQL the client sent: `kind` is "query" (simple Q) or "parse" (extended P).

    A tuple, not a dataclass: one is made per statement on the data path.
    """

    kind: str
    sql: str
    truncated: bool
    #: A Parse with a non-empty statement name: a named prepared statement.
    named: bool = False
    #: The text is over `LARGE_STATEMENT` bytes (for a Parse, its parameter types included).
    large: bool = False


class FrontendScanner:
    """Follows frontend message boundaries across chunks and reports Q and P statements.

    It reads 5-byte headers and skips bodies without copying them, so COPY data and bind
    parameters cost one header look-up per message. Statement text is kept up to
    `max_sql` bytes. A Parse's statement name is skipped, not kept, whatever its length:
    a long name must not push the SQL out of what the audit sees; only whether it was
    empty is reported (`Statement.named`, for pinning insight).
    """

    __slots__ = (
        "_capture",
        "_ctype",
        "_head",
        "_in_name",
        "_large",
        "_max_sql",
        "_named",
        "_need",
        "_skip",
    )

    def __init__(self, max_sql: int = 8192) -> None:
        self._max_sql = max_sql
        self._skip = 0  # body bytes of the current message still to skip
        self._head = b""  # a header split across chunks
        self._capture: bytearray | None = None  # SQL of a Q/P being collected
        self._ctype = 0
        self._in_name = False  # inside the statement name of the Parse being collected
        self._need = 0  # body bytes of the captured message still to come
        self._named = False  # the Parse being collected has a statement name
        self._large = False  # the statement being collected is over LARGE_STATEMENT

    def feed(self, data: bytes) -> list[Statement] | None:
        n = len(data)
        if (
            6 <= n <= self._max_sql + 6
            and data[0] == 0x51  # one whole simple query: the common case, checked in O(1)
            and data[-1] == 0
            and not (self._skip or self._head or self._capture is not None)
            and int.from_bytes(data[1:5], "big") == n - 1
            and data.find(b"\x00", 5, n - 1) < 0
        ):
            sql = data[5:-1].decode("utf-8", "replace")
            return [Statement("query", sql, False, False, n - 6 > LARGE_STATEMENT)]
        pos = 0
        out: list[Statement] | None = None
        if self._skip:
            if self._skip >= n:
                self._skip -= n
                return None
            pos = self._skip
            self._skip = 0
        elif self._capture is not None:
            take = min(self._need, n)
            start = 0
            if self._in_name:
                nul = data.find(b"\x00", 0, take)
                if nul >= 0:
                    self._in_name = False
                    self._named = self._named or nul > 0
                    start = nul + 1
                    self._large = self._need - start - 1 > LARGE_STATEMENT
                else:
                    self._named = self._named or take > 0
            room = self._max_sql + 1 - len(self._capture)
            if room > 0 and not self._in_name:
                self._capture += data[start : min(take, start + room)]
            self._need -= take
            pos = take
            if self._need:
                return None
            out = [
                self._finish(
                    self._ctype, bytes(self._capture), self._in_name, self._named, self._large
                )
            ]
            self._capture = None
        if self._head:
            data = self._head + data[pos:]
            n = len(data)
            pos = 0
            self._head = b""
        while pos < n:
            if n - pos < 5:
                self._head = data[pos:]
                break
            mtype, length = _HDR.unpack_from(data, pos)
            if length < 4:
                raise ProtocolViolation(f"invalid message length {length}")
            body = pos + 5
            end = pos + 1 + length
            if mtype == b"Q" or mtype == b"P":
                start = body
                in_name = named = False
                if mtype == b"P":  # statement name, then the query
                    nul = data.find(b"\x00", body, min(end, n))
                    in_name = nul < 0
                    start = min(end, n) if in_name else nul + 1
                    # Named if any byte of it is here (the name may run on to later chunks).
                    named = (min(end, n) if in_name else nul) > body
                large = not in_name and end - start - 1 > LARGE_STATEMENT
                stop = min(end, n, start + self._max_sql + 1)
                if end <= n:
                    if out is None:
                        out = []
                    out.append(self._finish(mtype[0], data[start:stop], in_name, named, large))
                else:
                    self._ctype = mtype[0]
                    self._in_name = in_name
                    self._named = named
                    self._large = large
                    self._capture = bytearray(data[start:stop])
                    self._need = end - n
                    return out
            pos = end
        if pos > n:
            self._skip = pos - n
        return out

    def _finish(self, ctype: int, sql: bytes, in_name: bool, named: bool, large: bool) -> Statement:
        """`sql` is at most `max_sql` + 1 bytes from the start of the statement's text;
        `in_name`: a Parse ended inside its statement name (malformed: no SQL at all)."""
        kind = "parse" if ctype == 0x50 else "query"
        if in_name:
            return Statement(kind, "", True, named)
        end = sql.find(b"\x00")
        if end < 0:
            text = sql[: self._max_sql].decode("utf-8", "replace")
            return Statement(kind, text, True, named, large)
        return Statement(kind, sql[:end].decode("utf-8", "replace"), False, named, large)


def ends_ready_for_query(chunk: bytes) -> bool:
    """True when a backend chunk ends with ReadyForQuery: the server is waiting for the client.

    A guess from the last six bytes, used only to pick a moment to end a session cleanly.
    """
    return len(chunk) >= 6 and chunk[-6:-1] == b"Z\x00\x00\x00\x05"


#: How far from the end of a backend chunk `trailing_fatal` looks for an ErrorResponse.
_FATAL_TAIL = 64 * 1024


def trailing_fatal(chunk: bytes) -> dict[str, str] | None:
    """The fields of the FATAL (or PANIC) ErrorResponse that ends a backend chunk, if one does.

    A server's last words before it closes the connection. A guess from the chunk's tail
    like `ends_ready_for_query` (an `E` whose length reaches exactly to the end), used only
    so that rdsgate does not add its own error after the server's.
    """
    n = len(chunk)
    if not chunk.endswith(b"\x00\x00"):
        return None
    floor = max(0, n - _FATAL_TAIL)
    pos = chunk.rfind(b"E", floor, n - 5)
    while pos >= 0:
        if int.from_bytes(chunk[pos + 1 : pos + 5], "big") == n - pos - 1:
            try:
                fields = parse_fields(chunk[pos + 5 :])
            except ProtocolViolation:
                return None
            severity = fields.get("V") or fields.get("S")
            return fields if severity in ("FATAL", "PANIC") else None
        pos = chunk.rfind(b"E", floor, pos)
    return None
