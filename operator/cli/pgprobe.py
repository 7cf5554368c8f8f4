"""One Postgres log-in through an rdsgate proxy: has it loaded a new Token's grant yet?

The operator writes the grant into the access Secret before it marks the Token Ready, but
a running proxy sees it only after the kubelet refreshes its Secret volume (up to about a
minute on a real node) and the proxy re-reads the file. Until then the proxy answers the
Token's client certificate with 28P01 "client certificate for '…': no Token of that name
grants access here". `db connect` logs in once the way psql will (TLS verify-full against
the proxies' CA for the Service name, the caller's client certificate, no password) and
retries on exactly that answer, so that psql, or a script using `--print-env`, does not
meet it. Speaks the protocol with the proxy's own `wire` module.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from rdsgate.proxy import wire
from rdsgate.proxy.errors import ProtocolViolation

APPLICATION_NAME = "rdsgate-cli"
#: What the proxy's certificate check says of a Token it does not know (yet).
_NOT_LOADED = "no Token of that name grants access here"


@dataclass(frozen=True)
class Probe:
    ok: bool
    sqlstate: str | None = None
    message: str = ""
    #: TLS went wrong (the proxy's certificate did not verify, ours was not taken or not
    #: loaded): waiting will not help.
    tls_error: bool = False

    @property
    def grant_not_loaded(self) -> bool:
        return self.sqlstate == "28P01" and _NOT_LOADED in self.message

    @property
    def unreachable(self) -> bool:
        return not self.ok and self.sqlstate is None and not self.tls_error


def login(
    *,
    address: str,
    port: int,
    server_name: str,
    ca_file: Path,
    cert_file: Path,
    key_file: Path,
    user: str,
    dbname: str,
    timeout: float,
) -> Probe:
    """Logs in and out with the client certificate; the outcome, never an exception for
    network or TLS trouble."""
    try:
        context = ssl.create_default_context(cafile=str(ca_file))
        context.load_cert_chain(str(cert_file), str(key_file))
    except (OSError, ValueError) as exc:
        return Probe(False, None, f"cannot load {cert_file} / {key_file} / {ca_file}: {exc}", True)
    try:
        with socket.create_connection((address, port), timeout=timeout) as raw:
            raw.sendall(wire.ssl_request())
            answer = raw.recv(1)
            if answer != b"S":
                return Probe(False, None, f"{address}:{port} does not offer TLS", tls_error=True)
            with context.wrap_socket(raw, server_hostname=server_name) as tls:
                return _startup(tls, user, dbname)
    except ssl.SSLCertVerificationError as exc:
        return Probe(
            False, None, f"TLS verification of {server_name} failed: {exc.verify_message}", True
        )
    except (OSError, ValueError, ProtocolViolation) as exc:
        return Probe(False, None, f"{address}:{port}: {exc}")


def _startup(sock: ssl.SSLSocket, user: str, dbname: str) -> Probe:
    params = {"user": user, "database": dbname, "application_name": APPLICATION_NAME}
    login = wire.ClientLogin(params, "")
    sock.sendall(login.start())
    reader = wire.Reader()
    while True:
        msg = reader.read_message()
        if msg is None:
            data = sock.recv(65536)
            if not data:
                return Probe(False, None, "the server closed the connection during log-in")
            reader.feed(data)
            continue
        if msg.type == b"R" and wire.parse_auth_request(msg.body)[0] == wire.AUTH_CLEARTEXT:
            return Probe(
                False,
                None,
                "the proxy asked for a password: it did not take the client certificate",
                tls_error=True,
            )
        reply, result = login.handle(msg)
        if reply:
            sock.sendall(reply)
        if result is None:
            continue
        if result.ready:
            with contextlib.suppress(OSError):
                sock.sendall(wire.terminate())
            return Probe(True)
        if result.unsupported_auth is not None:
            return Probe(
                False, None, f"unexpected authentication request {result.unsupported_auth}"
            )
        fields = result.error or {}
        return Probe(False, fields.get("C", "XX000"), fields.get("M", ""))
