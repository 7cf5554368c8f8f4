"""The few OpenSSL calls Python's `ssl` module does not expose, through ctypes.

Taken from the library `_ssl` itself links, so they act on the very `SSL_CTX` and `SSL`
objects Python made. A pointer is only used after its layout is proven: a fresh `SSL` of
the context must point back at it. Where that fails (a Python linking OpenSSL statically,
another object layout), `LIB` is None and callers keep Python's behaviour.
"""

from __future__ import annotations

import ctypes
import logging
import ssl
from typing import Any

log = logging.getLogger(__name__)

_WORD = ctypes.sizeof(ctypes.c_void_p)
VerifyCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
#: SSL_CTRL_SET_MAX_SEND_FRAGMENT from ssl.h (`SSL_CTX_set_max_send_fragment` is a macro).
_SSL_CTRL_SET_MAX_SEND_FRAGMENT = 52


class OpenSSL:
    def __init__(self) -> None:
        import _ssl

        lib = ctypes.CDLL(_ssl.__file__)

        def fn(name: str, restype: Any, *argtypes: Any) -> Any:
            f = getattr(lib, name)
            f.restype, f.argtypes = restype, list(argtypes)
            return f

        ptr, int_, long_ = ctypes.c_void_p, ctypes.c_int, ctypes.c_long
        self.set_verify = fn("SSL_CTX_set_verify", None, ptr, int_, VerifyCallback)
        self.get_verify_mode = fn("SSL_CTX_get_verify_mode", int_, ptr)
        self.ctx_ctrl = fn("SSL_CTX_ctrl", long_, ptr, int_, long_, ptr)
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


def _load() -> OpenSSL | None:
    try:
        return OpenSSL()
    except (OSError, AttributeError, ImportError) as exc:
        log.warning("OpenSSL's functions are not reachable from this Python: %s", exc)
        return None


LIB = _load()


def ssl_pointer(ssl_object: ssl.SSLObject) -> int | None:
    """The `SSL *` of a connection (for a context already proven by `context_pointer`)."""
    return _field(ssl_object._sslobj, 1)  # type: ignore[attr-defined]


def context_pointer(ctx: ssl.SSLContext) -> int | None:
    """The context's `SSL_CTX *`, once a fresh connection of it proves the layout."""
    global LIB
    lib = LIB
    if lib is None:
        return None
    ctx_ptr = _field(ctx, 0)
    try:
        probe = ctx.wrap_bio(
            ssl.MemoryBIO(),
            ssl.MemoryBIO(),
            server_side=ctx.protocol != ssl.PROTOCOL_TLS_CLIENT,
            server_hostname="probe.invalid" if ctx.check_hostname else None,
        )
    except (ssl.SSLError, ValueError):
        return None
    ssl_ptr = ssl_pointer(probe)
    if not ctx_ptr or not ssl_ptr or lib.get_ctx(ssl_ptr) != ctx_ptr:
        log.warning("unexpected layout of Python's ssl objects: OpenSSL settings left as they are")
        LIB = None
        return None
    return ctx_ptr


def set_max_send_fragment(ctx: ssl.SSLContext, size: int) -> bool:
    """At most `size` bytes of plaintext per TLS record this context's connections send."""
    ctx_ptr = context_pointer(ctx)
    if ctx_ptr is None or LIB is None:
        return False
    return bool(LIB.ctx_ctrl(ctx_ptr, _SSL_CTRL_SET_MAX_SEND_FRAGMENT, size, None))
