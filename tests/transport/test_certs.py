"""Federation certificates: what init_ca and issue write, and errors that name the file."""

from __future__ import annotations

import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedmine.errors import ConfigError
from fedmine.transport import certs
from fedmine.transport.certs import CertificateError, client_tls, init_ca, issue, server_tls


@pytest.fixture()
def folder(tmp_path):
    init_ca(tmp_path, federation="demo")
    issue(tmp_path, "bank")
    issue(tmp_path, "coordinator", kind="coordinator")
    return tmp_path


def load(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_ca_is_a_ca_and_signs_the_certificates(folder):
    ca = load(folder / "ca.pem")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert ca.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "demo"
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey) and ca.public_key().curve.name == "secp256r1"
    for name in ("bank", "coordinator"):
        load(folder / f"{name}.pem").verify_directly_issued_by(ca)


def test_party_certificate_names_the_organisation_and_loopback(folder):
    cert = load(folder / "bank.pem")
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "bank"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["bank", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku and ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert 364 <= days <= 366


def test_coordinator_certificate_names_only_the_coordinator(folder):
    san = load(folder / "coordinator.pem").extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["coordinator"]
    assert san.get_values_for_type(x509.IPAddress) == []


def test_private_keys_are_readable_by_the_owner_only(folder):
    for name in ("ca.key", "bank.key", "coordinator.key"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600
    assert stat.S_IMODE((folder / "bank.pem").stat().st_mode) == 0o644


def test_loaders_return_pem_bytes(folder):
    s = server_tls(folder, "bank")
    assert s.cert.startswith(b"-----BEGIN CERTIFICATE-----") and b"PRIVATE KEY" in s.key
    assert s.ca == (folder / "ca.pem").read_bytes() and s.coordinator == "coordinator"
    c = client_tls(folder)
    assert c.cert == (folder / "coordinator.pem").read_bytes()


def test_existing_files_are_not_overwritten(folder):
    with pytest.raises(
        CertificateError, match=rf"{folder / 'ca.pem'}: already exists; remove it or pass overwrite=True"
    ):
        init_ca(folder, federation="demo")
    with pytest.raises(CertificateError, match=r"bank.pem: already exists"):
        issue(folder, "bank")
    issue(folder, "bank", overwrite=True)


@pytest.mark.parametrize("name", ["", "bank/../x", "a b", "-x", "é", "x" * 64, "bank\n"])
def test_names_must_be_dns_names(folder, name):
    with pytest.raises(CertificateError, match=r"is not usable as a DNS name"):
        issue(folder, name)


@pytest.mark.parametrize("days", [0, -30, True, 10**8])
def test_validity_is_one_day_to_the_year_9999(tmp_path, folder, days):
    message = rf"^days {days!r}: the validity must be a whole number of days in \[1, \d+\]$"
    with pytest.raises(CertificateError, match=message):
        init_ca(tmp_path / "ca", federation="demo", days=days)
    assert not (tmp_path / "ca").exists()
    with pytest.raises(CertificateError, match=message):
        issue(folder, "clinic", days=days)
    assert not (folder / "clinic.pem").exists()


def test_kind_and_reserved_name(folder):
    with pytest.raises(
        CertificateError, match=r"certificate kind must be one of \['party', 'coordinator'\], got 'admin'"
    ):
        issue(folder, "x", kind="admin")
    with pytest.raises(CertificateError, match=r"'ca' is reserved"):
        issue(folder, "ca")


def test_errors_name_the_file(tmp_path, folder):
    with pytest.raises(CertificateError, match=rf"{tmp_path / 'nowhere' / 'ca.pem'}: certificate not found"):
        issue(tmp_path / "nowhere", "bank")
    (folder / "bank.pem").write_text("hello")
    with pytest.raises(CertificateError, match=r"bank.pem: not a PEM certificate"):
        server_tls(folder, "bank")
    (folder / "coordinator.key").write_text("junk")
    with pytest.raises(CertificateError, match=r"coordinator.key: not an unencrypted PEM private key"):
        client_tls(folder)


def test_mismatched_key_and_foreign_ca_are_caught(tmp_path, folder):
    issue(folder, "clinic")
    (folder / "bank.key").write_bytes((folder / "clinic.key").read_bytes())
    with pytest.raises(CertificateError, match=r"bank.key: does not match the certificate .*bank.pem"):
        server_tls(folder, "bank")
    other = tmp_path / "other"
    init_ca(other, federation="demo")  # same subject, different key
    issue(other, "coordinator", kind="coordinator")
    (folder / "coordinator.pem").write_bytes((other / "coordinator.pem").read_bytes())
    with pytest.raises(CertificateError, match=r"coordinator.pem: signature does not verify against .*ca.pem"):
        client_tls(folder)
    (folder / "clinic.pem").write_bytes((folder / "coordinator.pem").read_bytes())
    with pytest.raises(CertificateError, match=r"clinic.pem: certificate is for 'coordinator', expected 'clinic'"):
        server_tls(folder, "clinic")


def test_certificate_error_is_a_config_error():
    assert issubclass(CertificateError, ConfigError)
    assert certs.KINDS == ("party", "coordinator")
