"""The caller's key pair and certificates on disk: the private key never leaves this machine.

`db connect` keeps one ECDSA P-256 key pair per kubeconfig context, namespace and Database
under `~/.cache/rdsgate/<context>/<namespace>/<database>/` (`$XDG_CACHE_HOME` honoured; the
context percent-encoded, as EKS context names hold ':' and '/'):

- `tls.key`: the private key (PKCS#8 PEM), made here on the first connect and reused;
- `<token>.crt`: the client certificate the operator signed into that Token's status, one
  per Token, so that two logins to one Database (say `app` and `reporting`, each its own
  Token) never overwrite each other's certificate under a running psql;
- `ca.crt`: the proxy's CA, from the namespace's ConfigMap `rdsgate-ca`.

Files are 0600 and directories 0700 (libpq refuses a key that others may read).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .errors import CliError
from .exitcodes import EXIT_ERROR, EXIT_USAGE

KEY_FILE = "tls.key"
CA_FILE = "ca.crt"
CERT_SUFFIX = ".crt"


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "rdsgate"


def cache_dir(context: str | None, ns: str) -> Path:
    """Per kubeconfig context and namespace (an EKS context name holds ':' and '/')."""
    parts = [quote(context or "default", safe=""), quote(ns, safe="")]
    if any(part in (".", "..") for part in parts):
        raise CliError(f"{ns!r} / {context!r} cannot name a namespace / context", EXIT_USAGE)
    return cache_root().joinpath(*parts)


def private_dir(path: Path) -> None:
    """`path` and its parents up to the cache root, each 0700."""
    path.mkdir(parents=True, exist_ok=True)
    root = cache_root()
    for part in (path, *path.parents):
        if part == root or root in part.parents:
            part.chmod(0o700)


def _temp_file(path: Path, data: bytes) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return tmp


def write_private(path: Path, data: bytes) -> None:
    """Replaces `path` atomically with a 0600 file: a reader sees the old or the new."""
    os.replace(_temp_file(path, data), path)


def public_pem(key: ec.EllipticCurvePrivateKey | x509.Certificate) -> str:
    """The SubjectPublicKeyInfo PEM of a key or a certificate (what `spec.publicKey` holds)."""
    public = key.public_key()
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def same_public_key(a: str, b: str) -> bool:
    """Whether two PEM public keys are the same key (whatever their line wrapping)."""
    try:
        der = [
            serialization.load_pem_public_key(pem.strip().encode()).public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            for pem in (a, b)
        ]
    except (ValueError, TypeError):
        return False
    return der[0] == der[1]


@dataclass(frozen=True)
class KeyPair:
    """The caller's key for one Database, on disk."""

    directory: Path
    key: ec.EllipticCurvePrivateKey
    created: bool

    @property
    def key_file(self) -> Path:
        return self.directory / KEY_FILE

    @property
    def ca_file(self) -> Path:
        return self.directory / CA_FILE

    @property
    def public_pem(self) -> str:
        return public_pem(self.key)

    def cert_file(self, token: str) -> Path:
        return self.directory / f"{token}{CERT_SUFFIX}"

    def save_certificate(self, token: str, pem: str) -> Path:
        path = self.cert_file(token)
        write_private(path, pem.encode())
        return path

    def save_ca(self, pem: str) -> Path:
        write_private(self.ca_file, pem.encode())
        return self.ca_file


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CliError(f"cannot read your key {path}: {exc}", EXIT_ERROR) from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        return None
    return key


def key_pair(directory: Path) -> KeyPair:
    """The key pair in `directory`, made (ECDSA P-256) when there is none or it is unreadable.

    A new key is linked into place only if no other `db connect` got there first, so two
    first connects at once end up with one key, the one both Tokens name."""
    private_dir(directory)
    path = directory / KEY_FILE
    key = _load_key(path)
    if key is not None:
        path.chmod(0o600)
        return KeyPair(directory, key, created=False)
    new = ec.generate_private_key(ec.SECP256R1())
    pem = new.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = _temp_file(path, pem)
    try:
        if path.exists():  # unreadable or not P-256: replaced
            os.replace(tmp, path)
            return KeyPair(directory, new, created=True)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raced = _load_key(path)
            if raced is not None:
                return KeyPair(directory, raced, created=False)
            os.replace(tmp, path)
        return KeyPair(directory, new, created=True)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@dataclass(frozen=True)
class Certificate:
    """A certificate from a Token's status, as far as `db connect` needs to know it."""

    pem: str
    public_pem: str
    not_after: datetime


def parse_certificate(pem: object) -> Certificate | None:
    """`status.certificate`, or None when it is absent or unreadable."""
    if not isinstance(pem, str) or "BEGIN CERTIFICATE" not in pem:
        return None
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        return None
    return Certificate(pem, public_pem(cert), cert.not_valid_after_utc)


def issued_by(cert_pem: str, ca_pem: str) -> bool:
    """Whether `ca_pem` signed `cert_pem`: the certificate in a Token's status is written by
    the operator alone (the status subresource), the CA ConfigMap by whoever may edit
    ConfigMaps, so the first vouches for the second before psql trusts it."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        ca = x509.load_pem_x509_certificate(ca_pem.encode())
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
