"""The upstream's certificate: its names (subject CN, SANs), its issuer and validity."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from ipaddress import ip_address
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class CertInfo:
    subject_cn: str | None
    dns_names: list[str]
    ip_addresses: list[str]
    issuer: str
    not_before: datetime
    not_after: datetime
    has_san: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "subjectCN": self.subject_cn,
            "subjectAltNames": self.dns_names + self.ip_addresses,
            "issuer": self.issuer,
            "notBefore": self.not_before.isoformat(),
            "notAfter": self.not_after.isoformat(),
        }


def name_matches(host: str, cert: CertInfo) -> bool:
    try:
        addr = ip_address(host)
    except ValueError:
        host = host.lower().rstrip(".")
        for name in cert.dns_names:
            name = name.lower().rstrip(".")
            if name == host:
                return True
            if name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:]:
                return True
        return False
    return str(addr) in cert.ip_addresses


def cert_info(der: bytes) -> CertInfo:
    cert = x509.load_der_x509_certificate(der)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
        ips = [str(n) for n in san.get_values_for_type(x509.IPAddress)]
        has_san = True
    except x509.ExtensionNotFound:
        dns_names, ips, has_san = [], [], False
    return CertInfo(
        subject_cn=str(cns[0].value) if cns else None,
        dns_names=dns_names,
        ip_addresses=ips,
        issuer=cert.issuer.rfc4514_string(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        has_san=has_san,
    )
