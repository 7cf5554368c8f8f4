"""The client side of SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL speaks it.

The RDS Proxy stand-in logs in to PostgreSQL with a Secrets-Manager password the way RDS
Proxy does, and PostgreSQL's `scram-sha-256` host auth is what a real RDS database asks
for. No channel binding (`n,,`): the TLS session is verified separately with the lab CA.
PostgreSQL ignores the SCRAM user name (the startup `user` counts), so it is sent empty,
as libpq does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import unicodedata

MECHANISM = "SCRAM-SHA-256"


class ScramError(Exception):
    """The server's SCRAM messages are malformed or it failed to prove it knows the password."""


def _attributes(message: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in message.split(","):
        key, sep, value = part.partition("=")
        if not sep or len(key) != 1:
            raise ScramError(f"malformed SCRAM message: {message!r}")
        out[key] = value
    return out


def _normalize(password: str) -> bytes:
    """SASLprep, approximated: PostgreSQL normalizes with NFKC and uses raw bytes on failure."""
    if password.isascii():
        return password.encode()
    return unicodedata.normalize("NFKC", password).encode()


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


class ScramClient:
    """One exchange: `client_first()`, `client_final(server_first)`, `verify(server_final)`."""

    def __init__(self, password: str, *, nonce: str | None = None) -> None:
        self._password = _normalize(password)
        self._nonce = nonce or base64.b64encode(os.urandom(18)).decode()
        self._first_bare = f"n=,r={self._nonce}"
        self._server_signature: bytes | None = None

    def client_first(self) -> bytes:
        return ("n,," + self._first_bare).encode()

    def client_final(self, server_first: bytes) -> bytes:
        text = server_first.decode()
        attrs = _attributes(text)
        try:
            nonce, salt, iterations = attrs["r"], base64.b64decode(attrs["s"]), int(attrs["i"])
        except (KeyError, ValueError) as exc:
            raise ScramError(f"malformed SCRAM server-first-message: {text!r}") from exc
        if not nonce.startswith(self._nonce) or len(nonce) == len(self._nonce):
            raise ScramError("the server's nonce does not extend the client's")
        if iterations < 1:
            raise ScramError("invalid SCRAM iteration count")
        salted = hashlib.pbkdf2_hmac("sha256", self._password, salt, iterations)
        client_key = _hmac(salted, b"Client Key")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c={base64.b64encode(b'n,,').decode()},r={nonce}"
        auth_message = f"{self._first_bare},{text},{without_proof}".encode()
        signature = _hmac(stored_key, auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self._server_signature = _hmac(_hmac(salted, b"Server Key"), auth_message)
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify(self, server_final: bytes) -> None:
        attrs = _attributes(server_final.decode())
        if "e" in attrs:
            raise ScramError(f"SCRAM authentication failed: {attrs['e']}")
        if self._server_signature is None:
            raise ScramError("server-final-message before client-final-message")
        try:
            signature = base64.b64decode(attrs["v"])
        except (KeyError, ValueError) as exc:
            raise ScramError("malformed SCRAM server-final-message") from exc
        if not hmac.compare_digest(signature, self._server_signature):
            raise ScramError("the server's SCRAM signature is wrong")
