"""Client-certificate verification whose failure is a Postgres FATAL, not a TLS alert.

OpenSSL verifies a client's certificate chain during the handshake, and by default a
failure aborts the handshake: the client sees a bare TLS alert (uvloop does not even
flush it). Python's `ssl` module has no verify callback, so `defer_client_verification`
sets OpenSSL's documented one through ctypes (`SSL_CTX_set_verify` with a callback that
accepts). OpenSSL still verifies and records its verdict in the session; after the
handshake `peer_certificate` reads it (`SSL_get_verify_result`) and refuses a bad chain
with a FATAL that says why. OpenSSL stays the verifier; only the moment of refusal moves.
The verdict travels with TLS session tickets, so a resumed session is refused the same way.

Where the functions cannot be reached (a Python linking OpenSSL statically) or the
object layout is not the expected one, nothing is installed and a bad chain fails the
handshake as before: either way an untrusted certificate never authenticates anyone.
"""

from __future__ import annotations

import logging
import ssl

from cryptography import x509

from . import openssl
from .errors import AuthenticationFailed

log = logging.getLogger(__name__)

_X509_V_OK = 0
#: Verdicts that mean "not issued by a CA in tls.clientCAFile".
_UNKNOWN_ISSUER = {
    2,  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT
    18,  # X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
    19,  # X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN
    20,  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21,  # X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE
}
#: SSL_VERIFY_PEER, and SSL_VERIFY_FAIL_IF_NO_PEER_CERT with it, as Python sets them.
_OPENSSL_MODE = {ssl.CERT_OPTIONAL: 0x01, ssl.CERT_REQUIRED: 0x03}


def _accept(preverify_ok: int, store: int | None) -> int:
    """OpenSSL's verify callback: go on whatever the verdict; `peer_certificate` acts on it."""
    return 1


#: Module-level so the C callback outlives every context it is installed on.
_ACCEPT = openssl.VerifyCallback(_accept)


def defer_client_verification(ctx: ssl.SSLContext) -> bool:
    """Let the handshake finish whatever the client certificate's chain; `peer_certificate`
    then refuses it. False (nothing changed) when that cannot be done safely here."""
    mode = _OPENSSL_MODE.get(ctx.verify_mode)
    ctx_ptr = openssl.context_pointer(ctx) if mode is not None else None
    lib = openssl.LIB
    if lib is None or mode is None or ctx_ptr is None:
        return False
    # The verify mode must be the one Python set, or this is not the object we think.
    if lib.get_verify_mode(ctx_ptr) != mode:
        log.warning(
            "unexpected layout of Python's ssl objects: a client certificate from another "
            "CA will fail the TLS handshake instead of getting a FATAL"
        )
        openssl.LIB = None
        return False
    lib.set_verify(ctx_ptr, mode, _ACCEPT)
    return True


def peer_certificate(ssl_object: ssl.SSLObject) -> bytes | None:
    """The client's certificate (DER), only if OpenSSL verified its chain; else a FATAL."""
    der = ssl_object.getpeercert(binary_form=True)
    lib = openssl.LIB
    if not der or lib is None:
        # Without the library nothing was deferred: the handshake itself verified.
        return der or None
    ssl_ptr = openssl.ssl_pointer(ssl_object)
    code = lib.verify_result(ssl_ptr) if ssl_ptr else -1
    if code == _X509_V_OK:
        return der
    if code in _UNKNOWN_ISSUER:
        issuer = x509.load_der_x509_certificate(der).issuer.rfc4514_string()
        message = f"client certificate rejected: issued by {issuer!r}, not by the rdsgate CA"
    else:
        text = lib.error_string(code) if code > 0 else None
        message = f"client certificate rejected: {(text or b'unknown error').decode()}"
    raise AuthenticationFailed(
        message,
        reason="certificate_untrusted",
        hint="use a certificate from the rdsgate CA: tls.crt and tls.key of your Token's "
        "Secret, or status.certificate for a Token with spec.publicKey (`rdsgate db connect`)",
    )
