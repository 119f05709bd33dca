"""Throwaway test PKI for the traffic generator: one CA and one server certificate.

The keys are made at run time and live only in the directory the caller
passes, so nothing secret is ever committed. Certificates are valid for one
day, which covers any capture run and makes a leaked file useless soon after.

    files = write_test_pki(tmp_dir, ip_addresses=["127.0.0.1"])
    server_context = server_ssl_context(files)
    client_context = client_ssl_context(files.ca)
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_COMMON_NAME = "aiflowd test CA"
SERVER_COMMON_NAME = "aiflowd test server"
VALIDITY = datetime.timedelta(days=1)
# Start validity a little in the past so a client whose clock lags the
# server's by a few minutes still accepts a certificate made a moment ago.
CLOCK_SKEW = datetime.timedelta(minutes=5)

CA_FILE = "ca.pem"
CERTIFICATE_FILE = "server.pem"
KEY_FILE = "server.key"


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the PEM files written by `write_test_pki`."""

    ca: Path
    certificate: Path
    key: Path


def write_test_pki(
    directory: str | os.PathLike[str],
    ip_addresses: Iterable[str] = (),
    dns_names: Iterable[str] = (),
) -> TlsFiles:
    """Write a fresh CA and a server certificate for the given names into `directory`.

    The server certificate carries every address and name as a subjectAltName,
    so clients can verify it against the CA with hostname checking on. Files
    that exist are overwritten. The server key is written with mode 0600.

    Raises:
        ValueError: if no address or name is given, or an address is not an IP address.
    """
    addresses = [_parse_ip(value) for value in ip_addresses]
    names = list(dns_names)
    if not addresses and not names:
        raise ValueError(
            "write_test_pki needs at least one IP address or DNS name for the server certificate; "
            "pass the address the server listens on, e.g. ip_addresses=['127.0.0.1']"
        )

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    not_before = now - CLOCK_SKEW
    not_after = now + VALIDITY

    # P-256 keys: generated in milliseconds, unlike RSA, and accepted by every TLS stack here.
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME)])
    ca_certificate = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = [x509.IPAddress(address) for address in addresses]
    alt_names += [x509.DNSName(name) for name in names]
    server_certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_COMMON_NAME)]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    files = TlsFiles(ca=directory / CA_FILE, certificate=directory / CERTIFICATE_FILE, key=directory / KEY_FILE)
    files.ca.write_bytes(ca_certificate.public_bytes(serialization.Encoding.PEM))
    files.certificate.write_bytes(server_certificate.public_bytes(serialization.Encoding.PEM))
    key_pem = server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    descriptor = os.open(files.key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as key_file:
        key_file.write(key_pem)
    return files


def server_ssl_context(files: TlsFiles) -> ssl.SSLContext:
    """Build the server-side TLS context from the files of `write_test_pki`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.certificate, files.key)
    return context


def client_ssl_context(ca: str | os.PathLike[str]) -> ssl.SSLContext:
    """Build a client TLS context that trusts only the test CA, with hostname checking on.

    Raises:
        FileNotFoundError: if `ca` does not exist.
        ssl.SSLError: if `ca` is not a PEM certificate.
    """
    path = Path(ca)
    if not path.is_file():
        raise FileNotFoundError(
            f"CA certificate {str(path)!r} not found; pass the ca.pem that the server wrote into its --tls-dir"
        )
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=path)


def _parse_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(
            f"invalid IP address {value!r} for the server certificate; pass host names as dns_names"
        ) from None


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )
