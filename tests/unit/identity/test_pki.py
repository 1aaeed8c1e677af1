import pytest
from cryptography import x509

from yumen.errors import Code, YumenError
from yumen.identity import Role, identity_from_pem, init_ca, issue, load_private_key, sign_payload, verify_payload


@pytest.fixture
def ca(tmp_path):
    init_ca(tmp_path / "pki")
    return tmp_path / "pki"


def test_operator_certificate_carries_role_name_and_license(ca):
    cert, key = issue(ca, role=Role.OPERATOR, name="acme", license="LIC-7")
    ident = identity_from_pem(cert.read_bytes())
    assert (ident.role, ident.name, ident.license) == (Role.OPERATOR, "acme", "LIC-7")
    assert oct(key.stat().st_mode & 0o777) == "0o600"


def test_issued_certificate_chains_to_the_ca(ca):
    cert, _ = issue(ca, role=Role.CONNECTOR, name="dept-a", department="dept-a")
    leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    root = x509.load_pem_x509_certificate((ca / "ca.crt").read_bytes())
    leaf.verify_directly_issued_by(root)
    assert identity_from_pem(cert.read_bytes()).department == "dept-a"


def test_operator_without_license_is_refused(ca):
    with pytest.raises(YumenError, match="license"):
        issue(ca, role=Role.OPERATOR, name="acme")


def test_second_ca_in_the_same_folder_is_refused(ca):
    with pytest.raises(YumenError) as e:
        init_ca(ca)
    assert e.value.code is Code.ALREADY_EXISTS


def test_signature_is_bound_to_its_purpose(ca):
    cert, key = issue(ca, role=Role.BROKER, name="broker")
    k = load_private_key(key)
    pub = x509.load_pem_x509_certificate(cert.read_bytes())
    sig = sign_payload(k, "ticket", b"{}")
    verify_payload(pub, "ticket", b"{}", sig)
    with pytest.raises(YumenError):
        verify_payload(pub, "receipt", b"{}", sig)
    with pytest.raises(YumenError):
        verify_payload(pub, "ticket", b"{ }", sig)
