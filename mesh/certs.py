"""Make the mesh's certificates: a local CA and one certificate per identity (`constellation certs`).

The folder (default `$CONSTELLATION_HOME/certs`) is 0700 and every private key
in it 0600. Each leaf certificate is an ECDSA P-256 key signed by the CA, with
its identity in the subject CN and as the SAN URI
`spiffe://constellation/<name>` (what `mesh.tls.peer_name` reads), and the
names clients dial it by as SANs: localhost, 127.0.0.1, ::1 and the `hosts`
asked for (e.g. compose service names).

Running it again keeps the CA and every leaf that is still good, and renews a
leaf that expires within `renew_within`, lacks one of the asked-for names, or
was not signed by this CA; `rotate` renews every leaf. A service reads its
certificate at start-up, so restart the mesh after a renewal. Replacing the CA
itself means deleting the folder and restarting everything with the new one.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mesh.tls import CA_CERT, CA_KEY, IDENTITIES, SPIFFE_PREFIX

CA_DAYS = 3650
LEAF_DAYS = 365
RENEW_WITHIN = datetime.timedelta(days=30)
LOOPBACK = ("localhost", "127.0.0.1", "::1")
ORGANIZATION = "Constellation mesh"


@dataclass(frozen=True)
class Issued:
    name: str
    action: str  # "created", "renewed" or "kept"
    not_after: datetime.datetime


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to `path` with `mode` from the first byte on (a key is never readable by others, even briefly)."""
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "wb") as out:
        out.write(data)
    os.replace(partial, path)
    path.chmod(mode)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return x509.DNSName(host)


def _make_ca(folder: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    subject = _name("Constellation mesh CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(folder / CA_KEY, _key_pem(key), 0o600)
    _write(folder / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert, key


def _load_ca(folder: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate((folder / CA_CERT).read_bytes())
    key = serialization.load_pem_private_key((folder / CA_KEY).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{folder / CA_KEY} is not an EC key made by `constellation certs`")
    return cert, key


def sans(name: str, hosts: Iterable[str]) -> list[x509.GeneralName]:
    """The SANs of `name`'s certificate: its SPIFFE URI, loopback names, then `hosts`."""
    names = dict.fromkeys([*LOOPBACK, *hosts])
    return [x509.UniformResourceIdentifier(SPIFFE_PREFIX + name), *(_general_name(host) for host in names)]


def _issue(
    folder: Path, name: str, hosts: list[str], ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey
) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    usages = (
        [ExtendedKeyUsageOID.CLIENT_AUTH]
        if name == "client"
        else [
            ExtendedKeyUsageOID.SERVER_AUTH,
            ExtendedKeyUsageOID.CLIENT_AUTH,
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + datetime.timedelta(days=LEAF_DAYS), ca.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans(name, hosts)), critical=False)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(folder / f"{name}.key", _key_pem(key), 0o600)
    _write(folder / f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert


def _still_good(
    path: Path, name: str, hosts: list[str], ca: x509.Certificate, renew_within: datetime.timedelta
) -> x509.Certificate | None:
    """The certificate at `path` when it can stay: signed by `ca`, far from expiry, naming every asked-for host."""
    if not path.is_file() or not path.with_suffix(".key").is_file():
        return None
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        cert.verify_directly_issued_by(ca)
        present = set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return None
    if cert.not_valid_after_utc - _now() < renew_within or not set(sans(name, hosts)) <= present:
        return None
    return cert


def issue(
    folder: Path,
    hosts: Iterable[str] = (),
    rotate: bool = False,
    renew_within: datetime.timedelta = RENEW_WITHIN,
    names: Iterable[str] = IDENTITIES,
) -> list[Issued]:
    """Make or renew the CA and the certificates of `names` in `folder`; what happened to each leaf."""
    hosts = [host.strip() for host in hosts if host.strip()]
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    if (folder / CA_CERT).is_file() and (folder / CA_KEY).is_file():
        ca, ca_key = _load_ca(folder)
    else:
        ca, ca_key = _make_ca(folder)
    report = []
    for name in names:
        path = folder / f"{name}.crt"
        existed = path.is_file()
        kept = None if rotate else _still_good(path, name, hosts, ca, renew_within)
        if kept is not None:
            report.append(Issued(name, "kept", kept.not_valid_after_utc))
            continue
        cert = _issue(folder, name, hosts, ca, ca_key)
        report.append(Issued(name, "renewed" if existed else "created", cert.not_valid_after_utc))
    return report
