"""The upstream-tls check: does the endpoint speak TLS, and does its certificate verify."""

from __future__ import annotations

from datetime import UTC, datetime

from .certificates import name_matches
from .findings import Finding, Status
from .run import Run

_RDS_CA_FIX = (
    "For RDS and Aurora, rotate to a current CA: aws rds modify-db-instance "
    "--db-instance-identifier DB --ca-certificate-identifier rds-ca-rsa2048-g1 "
    "--apply-immediately (RDS Proxy itself serves ACM certificates with SANs)."
)


def check_upstream_tls(run: Run) -> Finding:
    if run.tcp.address is None:
        return Finding(
            "upstream-tls",
            Status.SKIP,
            "the endpoint is not reachable (see endpoint-tcp)",
            "NotReachable",
        )
    tls = run.tls
    evidence = tls.evidence
    cert = tls.cert
    mode = run.upstream.tls.mode
    if tls.refused:
        return Finding(
            "upstream-tls",
            Status.FAIL,
            f"{run.host}:{run.port} {tls.error}",
            "TLSRefused",
            evidence,
            "rdsgate always uses TLS upstream, as IAM authentication requires: point "
            "upstream.endpoint at the RDS Proxy endpoint (RDS Proxy always offers TLS).",
        )
    if tls.ok:
        if cert is not None and not cert.has_san and mode != "insecure":
            why = (
                f"accepted only because tls.mode is {mode}"
                if mode != "verify-full"
                else "rdsgate accepts it (it matches the CN when there are no SANs, as libpq "
                "does), but clients that follow RFC 6125 refuse it, Go's with \"x509: "
                'certificate relies on legacy Common Name field, use SANs instead"'
            )
            return Finding(
                "upstream-tls",
                Status.WARN,
                f"the certificate of {run.host} has only a legacy Common Name "
                f"({cert.subject_cn}) and no SANs; {why}",
                "LegacyCommonNameCertificate",
                evidence,
                _RDS_CA_FIX
                + (" Then go back to tls.mode verify-full." if mode != "verify-full" else ""),
            )
        if mode == "insecure":
            return Finding(
                "upstream-tls",
                Status.WARN,
                "TLS is up but the certificate is not verified (tls.mode insecure)",
                "NotVerified",
                evidence,
                "Set tls.mode to verify-full, with tls.caBundle when the endpoint's CA is not "
                "in the system store.",
            )
        until = f", valid until {cert.not_after:%Y-%m-%d}" if cert else ""
        return Finding(
            "upstream-tls",
            Status.PASS,
            f"TLS {evidence.get('tlsVersion')} to {run.host} verified ({mode}){until}",
            "Verified",
            evidence,
        )
    if cert is None:
        return Finding(
            "upstream-tls",
            Status.FAIL,
            f"TLS with {run.host}:{run.port} failed: {tls.error}",
            "TLSFailed",
            evidence,
            "Check upstream.tls (caFile readable, mode) and that the endpoint is an RDS Proxy.",
        )
    now = datetime.now(UTC)
    if cert.not_after < now:
        return Finding(
            "upstream-tls",
            Status.FAIL,
            f"the certificate of {run.host} expired on {cert.not_after:%Y-%m-%d %H:%M} UTC",
            "CertificateExpired",
            evidence,
            "The server must renew its certificate. " + _RDS_CA_FIX,
        )
    if cert.not_before > now:
        return Finding(
            "upstream-tls",
            Status.FAIL,
            f"the certificate of {run.host} is not valid before {cert.not_before:%Y-%m-%d} "
            "(check this machine's clock)",
            "CertificateNotYetValid",
            evidence,
            "Synchronise the clock (chrony / NTP) or renew the certificate.",
        )
    if mode == "verify-full" and not name_matches(run.server_name, cert):
        if not cert.has_san and cert.subject_cn == run.server_name:
            return Finding(
                "upstream-tls",
                Status.FAIL,
                f"x509: certificate relies on legacy Common Name field, use SANs instead: "
                f"the certificate of {run.host} names {cert.subject_cn} only in its subject "
                "CN and has no subjectAltName, which TLS clients no longer accept",
                "LegacyCommonNameCertificate",
                evidence,
                _RDS_CA_FIX + " As a stopgap, tls.mode verify-ca verifies the chain without "
                "the name.",
            )
        names = ", ".join(cert.dns_names + cert.ip_addresses) or f"CN {cert.subject_cn}"
        return Finding(
            "upstream-tls",
            Status.FAIL,
            f"the certificate of {run.host} is for {names}, not {run.server_name}",
            "HostnameMismatch",
            evidence,
            "Connect with the name the certificate is for (the endpoint from aws rds "
            "describe-db-proxies), or set tls.serverName to one of its names when reaching it "
            "through another name or an IP address.",
        )
    return Finding(
        "upstream-tls",
        Status.FAIL,
        f"the certificate of {run.host} did not verify: {tls.error} (issuer {cert.issuer})",
        "UntrustedCertificate",
        evidence,
        "Trust the CA that issued it: set tls.caBundle (upstream.tls.caFile) to that CA's "
        "PEM, for RDS the bundle at https://truststore.pki.rds.amazonaws.com/global/"
        "global-bundle.pem. RDS Proxy's ACM certificates chain to Amazon's public roots, "
        "which the system store holds.",
    )
