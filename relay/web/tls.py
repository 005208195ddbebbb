"""A certificate for the gateway's page: browsers give a page the microphone only in a secure
context (HTTPS, or localhost). Self-signed, made once and kept in the gateway's home (the key
0600); people check its SHA-256 fingerprint, which the link and its QR code carry."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from relay.errors import UsageError
from relay.store.home import Home

CERT_FILE = "tls-cert.pem"
KEY_FILE = "tls-key.pem"
VALID_DAYS = 825


def _names(host: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    for value in {host, "127.0.0.1"}:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(value)))
        except ValueError:
            if value and value != "localhost":
                names.append(x509.DNSName(value))
    return names


def fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of the certificate, as browsers show it (colon-separated hex)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def existing_fingerprint(home: Home) -> str | None:
    path = home.path / "web" / CERT_FILE
    return fingerprint(path.read_bytes()) if path.exists() else None


def certificate(home: Home, host: str) -> tuple[Path, Path, str]:
    """The gateway's certificate and key files (made if missing) and the fingerprint."""
    folder = home.path / "web"
    cert_path, key_path = folder / CERT_FILE, folder / KEY_FILE
    if not cert_path.exists() or not key_path.exists():
        home.ensure()
        folder.mkdir(mode=0o700, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay gateway")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName(_names(host)), critical=False)
            .sign(key, hashes.SHA256())
        )
        pem_key = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        home._write_private(key_path, pem_key, replace=True)
        home._write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), replace=True)
    return cert_path, key_path, fingerprint(cert_path.read_bytes())


def server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_path, key_path)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot use the gateway's certificate: {exc}") from None
    return context
