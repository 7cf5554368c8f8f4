"""TLS contexts for both legs: the client-facing listener and the upstream RDS Proxy.

Client side: TLS 1.2+, ALPN `postgresql` (required for direct TLS), optional client
certificates from the operator's CA (refused after the handshake, with a FATAL), session
tickets on so reconnects skip the full handshake, records of at most 8 KB of plaintext. Upstream: verified by default against the system store (RDS Proxy serves
ACM certificates that chain to Amazon's public roots) plus an optional CA bundle.
"""

from __future__ import annotations

import ssl

from . import certverify, openssl
from .config import ClientTLS, UpstreamTLS
from .errors import ConfigError

ALPN = "postgresql"
#: PostgreSQL's send buffer, and so the most plaintext it puts in one TLS record.
RECORD_PLAINTEXT = 8192
#: OpenSSL's X509_V_FLAG_NO_CHECK_TIME, which Python's ssl module has no name for.
_X509_V_FLAG_NO_CHECK_TIME = 0x200000


def server_context(tls: ClientTLS) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
        if tls.client_ca_file is not None:
            ctx.load_verify_locations(cafile=tls.client_ca_file)
            ctx.verify_mode = ssl.CERT_OPTIONAL
            # Dates are checked after the handshake, so an expired client certificate
            # gets a FATAL that says so instead of a bare TLS alert; so is the chain's
            # verdict, where this Python lets it be deferred (certverify).
            ctx.verify_flags |= _X509_V_FLAG_NO_CHECK_TIME
            certverify.defer_client_verification(ctx)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("tls", [f"cannot load the server certificate and key: {exc}"]) from exc
    ctx.set_alpn_protocols([ALPN])
    return ctx


def cap_records(ctx: ssl.SSLContext) -> bool:
    """TLS records to clients no larger than PostgreSQL's: libpq's async API can wait on the
    socket while the rest of a larger record sits decrypted in OpenSSL's buffer, and hang.
    OpenSSL splits each write itself, at no cost; False where it cannot be told to, and
    the relay then splits its writes (`relay.write_in_records`)."""
    return openssl.set_max_send_fragment(ctx, RECORD_PLAINTEXT)


def upstream_context(tls: UpstreamTLS) -> ssl.SSLContext:
    if tls.mode == "insecure":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        if tls.ca_file is not None:
            try:
                ctx.load_verify_locations(cafile=tls.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    "upstream.tls.caFile", [f"cannot load CA bundle {tls.ca_file}: {exc}"]
                ) from exc
        ctx.check_hostname = tls.mode == "verify-full"
        # Names come from SANs only (RFC 6125), as in Go and every browser: RDS certificates
        # from before July 2020 with only a Common Name fail here, and `rdsgate diagnose`
        # names that case and its fix (rotate the certificate authority).
        ctx.hostname_checks_common_name = False
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
