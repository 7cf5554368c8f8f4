"""Deferred client-certificate verification, on real OpenSSL handshakes over memory BIOs."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from rdsgate.operator import pki
from rdsgate.proxy import certverify, tls
from rdsgate.proxy.access import secret_digest
from rdsgate.proxy.config import ClientTLS
from rdsgate.proxy.errors import AuthenticationFailed

BINDING = secret_digest("s3cret")


@pytest.fixture(scope="module")
def ca() -> pki.KeyPair:
    return pki.make_ca("rdsgate CA")


def server_context(tmp_path: Path, ca: pki.KeyPair) -> ssl.SSLContext:
    server = pki.issue_server_cert(ca, ["localhost"])
    for name, data in {"tls.crt": server.cert_pem, "tls.key": server.key_pem}.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    return tls.server_context(
        ClientTLS.model_validate(
            {
                "certFile": tmp_path / "tls.crt",
                "keyFile": tmp_path / "tls.key",
                "clientCAFile": tmp_path / "ca.crt",
            }
        )
    )


def handshake(
    server_ctx: ssl.SSLContext, ca: pki.KeyPair, client: pki.KeyPair | None, tmp_path: Path
) -> ssl.SSLObject:
    """Runs a whole handshake in memory; returns the server's side of it."""
    ctx = ssl.create_default_context(cadata=ca.cert_pem.decode())
    if client is not None:
        (tmp_path / "c.crt").write_bytes(client.cert_pem)
        (tmp_path / "c.key").write_bytes(client.key_pem)
        ctx.load_cert_chain(tmp_path / "c.crt", tmp_path / "c.key")
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    s = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(10):
        for name, obj in (("c", c), ("s", s)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            # TLS 1.3: the server learns the client's certificate from its last flight.
            with pytest.raises(ssl.SSLWantReadError):
                s.read()
            return s
    raise AssertionError("handshake did not finish")


def test_certificate_from_the_ca_is_returned(tmp_path: Path, ca: pki.KeyPair) -> None:
    ctx = server_context(tmp_path, ca)
    client = pki.issue_client_cert(ca, "shop/app", secret_sha256=BINDING)
    server = handshake(ctx, ca, client, tmp_path)
    assert certverify.peer_certificate(server) == ssl.PEM_cert_to_DER_cert(client.cert_pem.decode())


def test_certificate_from_another_ca_completes_the_handshake_then_is_refused(
    tmp_path: Path, ca: pki.KeyPair
) -> None:
    ctx = server_context(tmp_path, ca)
    other = pki.make_ca("Mallory CA")
    server = handshake(
        ctx, ca, pki.issue_client_cert(other, "shop/app", secret_sha256=BINDING), tmp_path
    )
    with pytest.raises(AuthenticationFailed) as err:
        certverify.peer_certificate(server)
    assert err.value.message == (
        "client certificate rejected: issued by 'CN=Mallory CA', not by the rdsgate CA"
    )
    assert (err.value.reason, err.value.sqlstate) == ("certificate_untrusted", "28P01")


def test_no_certificate_is_no_identity(tmp_path: Path, ca: pki.KeyPair) -> None:
    server = handshake(server_context(tmp_path, ca), ca, None, tmp_path)
    assert certverify.peer_certificate(server) is None


def test_contexts_that_ask_for_no_certificate_are_left_alone() -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    assert ctx.verify_mode == ssl.CERT_NONE
    assert certverify.defer_client_verification(ctx) is False
    assert ctx.verify_mode == ssl.CERT_NONE


def test_required_certificates_keep_being_required(tmp_path: Path, ca: pki.KeyPair) -> None:
    """CERT_REQUIRED keeps SSL_VERIFY_FAIL_IF_NO_PEER_CERT: no certificate, no handshake."""
    ctx = server_context(tmp_path, ca)
    ctx.verify_mode = ssl.CERT_REQUIRED  # resets the callback, as Python's setter does
    assert certverify.defer_client_verification(ctx) is True
    with pytest.raises(ssl.SSLError, match=r"PEER_DID_NOT_RETURN_A_CERTIFICATE|certificate"):
        handshake(ctx, ca, None, tmp_path)
