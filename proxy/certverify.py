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

import ctypes
import logging
import ssl
from typing import Any

from cryptography import x509

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
_WORD = ctypes.sizeof(ctypes.c_void_p)
_VerifyCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


def _accept(preverify_ok: int, store: int | None) -> int:
    """OpenSSL's verify callback: go on whatever the verdict; `peer_certificate` acts on it."""
    return 1


#: Module-level so the C callback outlives every context it is installed on.
_ACCEPT = _VerifyCallback(_accept)


class _OpenSSL:
    """The OpenSSL functions Python's `ssl` does not expose, from the library `_ssl` uses."""

    def __init__(self) -> None:
        import _ssl

        lib = ctypes.CDLL(_ssl.__file__)

        def fn(name: str, restype: Any, *argtypes: Any) -> Any:
            f = getattr(lib, name)
            f.restype, f.argtypes = restype, list(argtypes)
            return f

        ptr, int_, long_ = ctypes.c_void_p, ctypes.c_int, ctypes.c_long
        self.set_verify = fn("SSL_CTX_set_verify", None, ptr, int_, _VerifyCallback)
        self.get_verify_mode = fn("SSL_CTX_get_verify_mode", int_, ptr)
        self.get_ctx = fn("SSL_get_SSL_CTX", ptr, ptr)
        self.verify_result = fn("SSL_get_verify_result", long_, ptr)
        self.error_string = fn("X509_verify_cert_error_string", ctypes.c_char_p, long_)


def _field(obj: Any, index: int) -> int | None:
    """The index-th pointer after the object header: `SSL_CTX *ctx` of `_ssl._SSLContext`,
    `PyObject *Socket, SSL *ssl` of `_ssl._SSLSocket` (stable since Python 3.7)."""
    offset = object.__basicsize__ + index * _WORD
    if offset + _WORD > type(obj).__basicsize__:
        return None
    value: int | None = ctypes.c_void_p.from_address(id(obj) + offset).value
    return value


def _load() -> _OpenSSL | None:
    try:
        return _OpenSSL()
    except (OSError, AttributeError, ImportError) as exc:
        log.warning("OpenSSL's verify callback is not reachable from this Python: %s", exc)
        return None


_LIB = _load()


def defer_client_verification(ctx: ssl.SSLContext) -> bool:
    """Let the handshake finish whatever the client certificate's chain; `peer_certificate`
    then refuses it. False (nothing changed) when that cannot be done safely here."""
    global _LIB
    lib = _LIB
    mode = _OPENSSL_MODE.get(ctx.verify_mode)
    if lib is None or mode is None:
        return False
    ctx_ptr = _field(ctx, 0)
    probe = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)
    ssl_ptr = _field(probe._sslobj, 1)  # type: ignore[attr-defined]
    # Both layouts are proven before anything is written: the SSL of a fresh connection
    # must point back at this context, whose verify mode must be the one Python set.
    if (
        not ctx_ptr
        or not ssl_ptr
        or lib.get_ctx(ssl_ptr) != ctx_ptr
        or lib.get_verify_mode(ctx_ptr) != mode
    ):
        log.warning(
            "unexpected layout of Python's ssl objects: a client certificate from another "
            "CA will fail the TLS handshake instead of getting a FATAL"
        )
        _LIB = None
        return False
    lib.set_verify(ctx_ptr, mode, _ACCEPT)
    return True


def peer_certificate(ssl_object: ssl.SSLObject) -> bytes | None:
    """The client's certificate (DER), only if OpenSSL verified its chain; else a FATAL."""
    der = ssl_object.getpeercert(binary_form=True)
    if not der or _LIB is None:
        # Without the library nothing was deferred: the handshake itself verified.
        return der or None
    ssl_ptr = _field(ssl_object._sslobj, 1)  # type: ignore[attr-defined]
    code = _LIB.verify_result(ssl_ptr) if ssl_ptr else -1
    if code == _X509_V_OK:
        return der
    if code in _UNKNOWN_ISSUER:
        issuer = x509.load_der_x509_certificate(der).issuer.rfc4514_string()
        message = f"client certificate rejected: issued by {issuer!r}, not by the rdsgate CA"
    else:
        text = _LIB.error_string(code) if code > 0 else None
        message = f"client certificate rejected: {(text or b'unknown error').decode()}"
    raise AuthenticationFailed(
        message,
        reason="certificate_untrusted",
        hint="use a certificate from the rdsgate CA: tls.crt and tls.key of your Token's "
        "Secret, or status.certificate for a Token with spec.publicKey (`rdsgate db connect`)",
    )
