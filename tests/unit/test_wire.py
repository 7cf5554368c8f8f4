"""The sans-IO protocol module: parsing, building, and fuzzing the parsers."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rdsgate.proxy import wire
from rdsgate.proxy.errors import ProtocolViolation


def test_startup_message_round_trip() -> None:
    params = {"user": "app", "database": "orders", "application_name": "psql"}
    reader = wire.Reader()
    reader.feed(wire.startup_message(params))
    packet = reader.read_startup()
    assert packet == wire.StartupMessage(wire.PROTOCOL_3_0, params)
    assert len(reader) == 0


def test_startup_packets_arrive_byte_by_byte() -> None:
    data = wire.ssl_request() + wire.startup_message({"user": "u"})
    reader = wire.Reader()
    got = []
    for b in data:
        reader.feed(bytes([b]))
        packet = reader.read_startup()
        if packet is not None:
            got.append(packet)
    assert got == [wire.SSLRequest(), wire.StartupMessage(wire.PROTOCOL_3_0, {"user": "u"})]


def test_cancel_request_is_parsed() -> None:
    reader = wire.Reader()
    reader.feed(wire.cancel_request(1234, b"\x01\x02\x03\x04"))
    assert reader.read_startup() == wire.CancelRequest(1234, b"\x01\x02\x03\x04")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00\x00\x00\x04", "invalid startup packet length 4"),
        (b"\x00\x01\x00\x00", "invalid startup packet length 65536"),
        (b"\x00\x00\x00\x08\x00\x02\x00\x00", "unsupported frontend protocol 2.0"),
        (b"\x00\x00\x00\x0c\x00\x03\x00\x00user", "expected terminator"),
        (b"\x00\x00\x00\x0e\x00\x03\x00\x00user\x00\x00", "parameter without a value"),
    ],
)
def test_bad_startup_packets_are_named(data: bytes, message: str) -> None:
    reader = wire.Reader()
    reader.feed(data)
    with pytest.raises(ProtocolViolation, match=message):
        reader.read_startup()


def test_error_response_fields_round_trip() -> None:
    msg = wire.error_response("28000", "no", detail="why", hint="fix")
    reader = wire.Reader()
    reader.feed(msg)
    parsed = reader.read_message()
    assert parsed is not None
    assert parsed.type == b"E"
    assert wire.parse_fields(parsed.body) == {
        "S": "FATAL",
        "V": "FATAL",
        "C": "28000",
        "M": "no",
        "D": "why",
        "H": "fix",
    }


def test_scanner_reports_simple_and_extended_statements() -> None:
    parse = wire.frame(wire.Message(b"P", b"s1\x00select $1\x00\x00\x00"))
    data = wire.query("select 1") + parse + wire.frame(wire.Message(b"S", b"")) + wire.terminate()
    scanner = wire.FrontendScanner()
    assert scanner.feed(data) == [
        wire.Statement("query", "select 1", False),
        wire.Statement("parse", "select $1", False, named=True),
    ]


def test_scanner_skips_large_copy_data_without_reporting() -> None:
    copy = wire.frame(wire.Message(b"d", b"x" * 100_000))
    data = copy + wire.query("select 2")
    scanner = wire.FrontendScanner()
    out = []
    for i in range(0, len(data), 777):
        out += scanner.feed(data[i : i + 777]) or []
    assert out == [wire.Statement("query", "select 2", False)]


def test_scanner_truncates_long_sql() -> None:
    scanner = wire.FrontendScanner(max_sql=64)
    sql = "select '" + "a" * 200 + "'"
    data = wire.query(sql)
    out = scanner.feed(data[:10]) or []
    out += scanner.feed(data[10:]) or []
    assert out == [wire.Statement("query", sql[:64], True)]


@pytest.mark.parametrize("chunk", [1, 5, 777, 1_000_000])
def test_a_long_statement_name_never_hides_the_sql(chunk: int) -> None:
    """PostgreSQL puts no limit on statement names: the name is skipped, not counted."""
    parse = wire.frame(wire.Message(b"P", b"n" * 20_000 + b"\x00select secret()\x00\x00\x00"))
    scanner = wire.FrontendScanner(max_sql=64)
    out: list[wire.Statement] = []
    data = wire.query("select 1") + parse
    for i in range(0, len(data), chunk):
        out += scanner.feed(data[i : i + chunk]) or []
    assert out == [
        wire.Statement("query", "select 1", False),
        wire.Statement("parse", "select secret()", False, named=True),
    ]


def test_a_parse_whose_name_never_ends_reports_no_sql() -> None:
    scanner = wire.FrontendScanner(max_sql=64)
    assert scanner.feed(wire.frame(wire.Message(b"P", b"n" * 100))) == [
        wire.Statement("parse", "", True, named=True)
    ]


def test_ready_for_query_detection() -> None:
    assert wire.ends_ready_for_query(b"Cxxxx" + wire.ready_for_query(b"I"))
    assert not wire.ends_ready_for_query(wire.ready_for_query(b"I") + b"D")


messages = st.tuples(
    st.sampled_from([b"Q", b"P", b"B", b"E", b"d", b"X", b"S", b"H"]),
    st.binary(max_size=300),
).map(lambda m: wire.frame(wire.Message(m[0], m[1])))


@settings(max_examples=300, deadline=None)
@given(st.lists(messages, max_size=12), st.lists(st.integers(1, 97), max_size=30))
def test_scanner_finds_the_same_statements_however_the_stream_is_cut(
    msgs: list[bytes], cuts: list[int]
) -> None:
    data = b"".join(msgs)
    whole = wire.FrontendScanner(max_sql=128).feed(data) or []
    scanner = wire.FrontendScanner(max_sql=128)
    pieces: list[wire.Statement] = []
    pos = 0
    for c in cuts:
        pieces += scanner.feed(data[pos : pos + c]) or []
        pos += c
    pieces += scanner.feed(data[pos:]) or []
    assert pieces == whole
    assert len(whole) == sum(1 for m in msgs if m[:1] in (b"Q", b"P"))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
def test_reader_never_fails_other_than_a_protocol_violation(data: bytes) -> None:
    for method in ("read_startup", "read_message"):
        reader = wire.Reader()
        reader.feed(data)
        try:
            while getattr(reader, method)() is not None:
                pass
        except ProtocolViolation:
            pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_scanner_never_fails_other_than_a_protocol_violation(data: bytes) -> None:
    with contextlib.suppress(ProtocolViolation):
        wire.FrontendScanner(max_sql=32).feed(data)


TEXT = st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"])


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.text(
            TEXT,
            min_size=1,
            max_size=20,
        ),
        st.text(TEXT, max_size=40),
        max_size=6,
    )
)
def test_startup_params_round_trip(params: dict[str, str]) -> None:
    reader = wire.Reader(max_startup=100_000)
    reader.feed(wire.startup_message(params))
    assert reader.read_startup() == wire.StartupMessage(wire.PROTOCOL_3_0, params)


def _server(*frames: bytes) -> list[wire.Message]:
    reader = wire.Reader()
    reader.feed(b"".join(frames))
    out = []
    while (msg := reader.read_message()) is not None:
        out.append(msg)
    return out


def _run(
    login: wire.ClientLogin, frames: list[wire.Message]
) -> tuple[list[bytes], wire.LoginResult]:
    sent = []
    for msg in frames:
        reply, result = login.handle(msg)
        if reply:
            sent.append(reply)
        if result is not None:
            return sent, result
    raise AssertionError("the log-in did not end")


def test_client_login_answers_with_the_password_and_keeps_the_greeting() -> None:
    login = wire.ClientLogin({"user": "app", "database": "orders"}, "iam-token")
    assert login.start() == wire.startup_message({"user": "app", "database": "orders"})
    key = wire.backend_key_data(42, b"\x01\x02\x03\x04")
    status = wire.frame(wire.Message(b"S", b"server_version\x0015\x00"))
    sent, result = _run(
        login,
        _server(
            wire.authentication_cleartext(),
            wire.authentication_ok(),
            status,
            key,
            wire.ready_for_query(),
        ),
    )
    assert sent == [wire.password_message("iam-token")]
    assert result.ready and result.authenticated
    assert result.backend_key == (42, b"\x01\x02\x03\x04")
    assert result.greeting == [wire.authentication_ok(), status, wire.ready_for_query()]


def test_client_login_reports_a_refusal_and_other_methods() -> None:
    refused = wire.error_response("28P01", "The IAM authentication failed for the role app.")
    _, result = _run(
        wire.ClientLogin({"user": "app"}, "t"), _server(wire.authentication_cleartext(), refused)
    )
    assert (result.authenticated, result.ready) == (False, False)
    assert result.error is not None and result.error["C"] == "28P01"
    _, result = _run(
        wire.ClientLogin({"user": "app"}, "t"),
        _server(wire.authentication(wire.AUTH_SASL, b"SCRAM-SHA-256\x00\x00")),
    )
    assert result.unsupported_auth == wire.AUTH_SASL
    missing = wire.error_response("3D000", 'database "nope" does not exist')
    _, result = _run(
        wire.ClientLogin({"user": "app"}, "t"), _server(wire.authentication_ok(), missing)
    )
    assert result.authenticated and not result.ready
    assert result.error is not None and result.error["C"] == "3D000"
