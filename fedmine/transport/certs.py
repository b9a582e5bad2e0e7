"""The federation's certificates: one CA, one certificate per organisation and one for the coordinator.

This module owns the PEM files that mutual TLS runs on (see docs/transport.md)::

    folder/
      ca.pem, ca.key          the federation CA (the key signs, then goes offline)
      NAME.pem, NAME.key      one per organisation (kind "party") and the coordinator

Every certificate names its holder twice, as the subject's common name and as
the first DNS subject alternative name, because that is what TLS checks: the
coordinator reaches organisation ``bank`` only if the server's certificate
says ``bank``, and a party server answers only the certificate that says the
coordinator's name. Party certificates also carry ``localhost`` and
``127.0.0.1`` so a party can be reached on loopback.

Keys are EC P-256. Party certificates may serve (serverAuth), the
coordinator's may connect (clientAuth); both carry both usages so one
organisation may also run the coordinator's side in tests. Private keys are
written with mode 0600.

:class:`ServerTLS` and :class:`ClientTLS` are the loaded PEM bytes, ready for
``pyarrow.flight``; :func:`server_tls` and :func:`client_tls` load them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedmine.errors import ConfigError

#: File names inside a certificate folder.
CA_CERT, CA_KEY = "ca.pem", "ca.key"

#: Kinds of certificate :func:`issue` makes.
KINDS = ("party", "coordinator")

#: Validity in days: the CA outlives the certificates it signs.
CA_DAYS = 5 * 365
CERT_DAYS = 365

#: Latest day a certificate can end on (X.509 GeneralizedTime stops at year 9999).
LAST_DAY = dt.date(9999, 12, 31)

#: Names become DNS names in certificates: letters, digits, ``-``, ``_`` and ``.``.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62})$")

#: Extra subject alternative names of party certificates (loopback).
LOOPBACK_DNS = "localhost"
LOOPBACK_IP = ipaddress.ip_address("127.0.0.1")


class CertificateError(ConfigError):
    """A certificate or key file is missing, unreadable or not what it should be; the message names the file."""


@dataclass(frozen=True)
class ServerTLS:
    """What a party server needs for mutual TLS (PEM bytes).

    Attributes
    ----------
    cert, key : the organisation's certificate and private key.
    ca : the federation CA; client certificates must be signed by it.
    coordinator : the only client name (certificate CN / first DNS SAN) the server answers.
    """

    cert: bytes
    key: bytes
    ca: bytes
    coordinator: str = "coordinator"


@dataclass(frozen=True)
class ClientTLS:
    """What the coordinator needs to reach party servers (PEM bytes).

    Attributes
    ----------
    cert, key : the coordinator's certificate and private key.
    ca : the federation CA; a server's certificate must be signed by it.
    """

    cert: bytes
    key: bytes
    ca: bytes


def check_name(name: str) -> str:
    """A certificate holder's name, checked (it becomes a DNS name)."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise CertificateError(
            f"certificate name {name!r} is not usable as a DNS name; use 1-63 letters, digits, '.', '-' or '_', "
            "starting with a letter or digit"
        )
    return name


def check_days(days: int, *, key: str = "days") -> int:
    """A validity in days, checked: a whole number from 1 to the days left until :data:`LAST_DAY`."""
    latest = (LAST_DAY - dt.date.today()).days
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= latest:
        raise CertificateError(f"{key} {days!r}: the validity must be a whole number of days in [1, {latest}]")
    return days


def _write(path: Path, data: bytes, *, private: bool, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise CertificateError(f"{path}: already exists; remove it or pass overwrite=True")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    if private:
        os.chmod(path, 0o600)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CertificateError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise CertificateError(f"{path}: {what} cannot be read: {exc.strerror or exc}") from None


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_certificate(path: str | os.PathLike) -> x509.Certificate:
    """Read one PEM certificate; the error names the file and what is wrong."""
    path = Path(path)
    data = _read(path, "certificate")
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise CertificateError(f"{path}: not a PEM certificate ({exc})") from None


def load_private_key(path: str | os.PathLike) -> ec.EllipticCurvePrivateKey:
    """Read one unencrypted PEM private key (EC); the error names the file and what is wrong."""
    path = Path(path)
    data = _read(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{path}: expected an EC private key, got {type(key).__name__}")
    return key


def init_ca(folder: str | os.PathLike, *, federation: str, days: int = CA_DAYS, overwrite: bool = False) -> Path:
    """Create the federation's CA in ``folder`` (``ca.pem``, ``ca.key``); returns the certificate's path.

    Raises
    ------
    CertificateError
        The files exist already (unless ``overwrite``); ``days`` is not in [1, days until :data:`LAST_DAY`].
    """
    if not isinstance(federation, str) or not federation.strip():
        raise CertificateError(f"federation name must be a non-empty string, got {federation!r}")
    check_days(days)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for fname in (CA_CERT, CA_KEY):
        if (folder / fname).exists() and not overwrite:
            raise CertificateError(f"{folder / fname}: already exists; remove it or pass overwrite=True")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, federation),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{federation} federation CA"),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(folder / CA_KEY, _key_pem(key), private=True, overwrite=overwrite)
    _write(folder / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), private=False, overwrite=overwrite)
    return folder / CA_CERT


def issue(
    folder: str | os.PathLike, name: str, *, kind: str = "party", days: int = CERT_DAYS, overwrite: bool = False
) -> Path:
    """Issue ``NAME.pem`` / ``NAME.key`` in ``folder``, signed by the CA there; returns the certificate's path.

    Parameters
    ----------
    name : the organisation's name (kind ``party``) or the coordinator's; CN and first DNS SAN.
    kind : ``party`` (adds loopback SANs) or ``coordinator``.

    Raises
    ------
    CertificateError
        Bad name, kind or days, missing or malformed CA files, files that exist already.
    """
    check_name(name)
    check_days(days)
    if kind not in KINDS:
        raise CertificateError(f"certificate kind must be one of {list(KINDS)}, got {kind!r}")
    if name == "ca":
        raise CertificateError("certificate name 'ca' is reserved for the federation CA files")
    folder = Path(folder)
    ca_cert = load_certificate(folder / CA_CERT)
    ca_key = load_private_key(folder / CA_KEY)
    if ca_cert.public_key().public_numbers() != ca_key.public_key().public_numbers():
        raise CertificateError(f"{folder / CA_KEY}: does not match the CA certificate {folder / CA_CERT}")
    for fname in (f"{name}.pem", f"{name}.key"):
        if (folder / fname).exists() and not overwrite:
            raise CertificateError(f"{folder / fname}: already exists; remove it or pass overwrite=True")
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(name)]  # first: gRPC reports it as the peer identity
    if kind == "party":
        sans += [x509.DNSName(LOOPBACK_DNS), x509.IPAddress(LOOPBACK_IP)]
    now = dt.datetime.now(dt.UTC)
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, kind),
                    x509.NameAttribute(NameOID.COMMON_NAME, name),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(folder / f"{name}.key", _key_pem(key), private=True, overwrite=overwrite)
    _write(folder / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM), private=False, overwrite=overwrite)
    return folder / f"{name}.pem"


def certificate_name(cert: x509.Certificate) -> str:
    """The holder's name: the subject's common name."""
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else ""


def _load_pair(folder: Path, name: str) -> tuple[bytes, bytes, bytes]:
    """(cert, key, ca) PEM bytes for ``name``, checked against each other and the CA."""
    check_name(name)
    ca_path, cert_path, key_path = folder / CA_CERT, folder / f"{name}.pem", folder / f"{name}.key"
    ca = load_certificate(ca_path)
    cert = load_certificate(cert_path)
    key = load_private_key(key_path)
    if certificate_name(cert) != name:
        raise CertificateError(f"{cert_path}: certificate is for {certificate_name(cert)!r}, expected {name!r}")
    if cert.issuer != ca.subject:
        raise CertificateError(
            f"{cert_path}: not issued by the CA in {ca_path} (issuer {cert.issuer.rfc4514_string()})"
        )
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError) as exc:  # InvalidSignature has no message
        raise CertificateError(
            f"{cert_path}: signature does not verify against {ca_path} ({type(exc).__name__})"
        ) from None
    if cert.public_key().public_numbers() != key.public_key().public_numbers():
        raise CertificateError(f"{key_path}: does not match the certificate {cert_path}")
    now = dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise CertificateError(
            f"{cert_path}: not valid now (valid {cert.not_valid_before_utc:%Y-%m-%d} "
            f"to {cert.not_valid_after_utc:%Y-%m-%d})"
        )
    return cert_path.read_bytes(), key_path.read_bytes(), ca_path.read_bytes()


def server_tls(folder: str | os.PathLike, name: str, *, coordinator: str = "coordinator") -> ServerTLS:
    """Load organisation ``name``'s certificate, key and the CA from ``folder`` for a party server."""
    cert, key, ca = _load_pair(Path(folder), name)
    return ServerTLS(cert=cert, key=key, ca=ca, coordinator=check_name(coordinator))


def client_tls(folder: str | os.PathLike, name: str = "coordinator") -> ClientTLS:
    """Load the coordinator's certificate, key and the CA from ``folder`` for :class:`RemoteParty`."""
    cert, key, ca = _load_pair(Path(folder), name)
    return ClientTLS(cert=cert, key=key, ca=ca)
