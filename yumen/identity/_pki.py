"""A small certificate authority for the data space, built on ``cryptography``.

Keys are ECDSA P-256 (supported by every TLS stack gRPC links against). Certificates
carry ``urn:yumen:role:<role>``, ``urn:yumen:name:<name>`` and, where they apply,
``urn:yumen:department:<id>`` and ``urn:yumen:license:<id>`` as URI SANs. Server
certificates also carry ``localhost``/``127.0.0.1`` and any extra host names given.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import ipaddress
import os
import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from yumen.errors import Code, YumenError

_URN = "urn:yumen:"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class Role(enum.Enum):
    BROKER = "broker"
    CONNECTOR = "connector"
    OPERATOR = "operator"
    AUDITOR = "auditor"
    ADMIN = "admin"
    OPERATING_BODY = "operating-body"  # the operator of authorized operation: sets actual prices (docs/billing.md)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Identity:
    """Who a certificate says its holder is."""

    role: Role
    name: str
    department: str = ""
    license: str = ""
    serial: int = 0
    fingerprint: str = ""  # sha256 of the DER certificate, hex

    def __str__(self) -> str:
        extra = self.license or self.department
        return f"{self.role.value}:{self.name}" + (f"({extra})" if extra else "")


def _issuer_key(ca_cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    """The CA's public key; this PKI issues from ECDSA keys only."""
    key = ca_cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise YumenError(Code.CONFIG, "the CA certificate's key is not an ECDSA key", hint="create the CA with `yumen pki init`")
    return key


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError:
        raise YumenError(Code.CONFIG, f"private key {path} does not exist", hint="issue one with `yumen pki issue`") from None
    except ValueError as e:
        raise YumenError(Code.CONFIG, f"private key {path} is not a PEM key: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise YumenError(Code.CONFIG, f"private key {path} is not an ECDSA key")
    return key


def init_ca(directory: Path, *, name: str = "Yumen Data Space CA", days: int = 3650) -> Path:
    """Create the CA key and self-signed certificate in ``directory``; refuse to overwrite."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "ca.crt", directory / "ca.key"
    if cert_path.exists() or key_path.exists():
        raise YumenError(
            Code.ALREADY_EXISTS,
            f"a CA already exists in {directory}",
            hint="use another --dir, or remove ca.crt and ca.key to start a new data space",
        )
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
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
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(key_path, _key_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path


def issue(
    directory: Path,
    *,
    role: Role,
    name: str,
    department: str = "",
    license: str = "",
    hosts: tuple[str, ...] = (),
    days: int = 365,
    out_dir: Path | None = None,
) -> tuple[Path, Path]:
    """Issue a certificate and key for ``name`` signed by the CA in ``directory``.

    Returns the certificate and key paths (``<name>.crt``, ``<name>.key`` in ``out_dir``).
    """
    directory = Path(directory)
    out = Path(out_dir) if out_dir else directory
    if not _NAME.match(name):
        raise YumenError(Code.INVALID_ARGUMENT, f"name {name!r} is not valid", hint="use letters, digits, '.', '_' or '-'")
    if role is Role.OPERATOR and not license:
        raise YumenError(Code.INVALID_ARGUMENT, "an operator certificate needs a license id", hint="pass --license LIC-…")
    if role is Role.CONNECTOR and not department:
        raise YumenError(Code.INVALID_ARGUMENT, "a connector certificate needs its department", hint="pass --department ID")
    try:
        ca_key = load_private_key(directory / "ca.key")
        ca_cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
    except (YumenError, FileNotFoundError):
        raise YumenError(Code.CONFIG, f"no CA in {directory}", hint="create one with `yumen pki init --dir DIR`") from None
    key = ec.generate_private_key(ec.SECP256R1())
    uris = [f"{_URN}role:{role.value}", f"{_URN}name:{name}"]
    if department:
        uris.append(f"{_URN}department:{department}")
    if license:
        uris.append(f"{_URN}license:{license}")
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    server = role is Role.BROKER
    if server:
        for host in ("localhost", "127.0.0.1", *hosts):
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
    now = dt.datetime.now(dt.timezone.utc)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role.value),
        ]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(_issuer_key(ca_cert)), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    out.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out / f"{name}.crt", out / f"{name}.key"
    _write_private(key_path, _key_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def identity_from_pem(pem: bytes) -> Identity:
    """Read the identity a certificate asserts. The TLS layer has already verified the chain."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        raise YumenError(Code.UNAUTHENTICATED, "the client certificate carries no Yumen identity") from None
    fields: dict[str, str] = {}
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(_URN):
            k, _, v = uri[len(_URN):].partition(":")
            fields[k] = v
    try:
        role = Role(fields.get("role", ""))
    except ValueError:
        raise YumenError(Code.UNAUTHENTICATED, "the client certificate names no known role") from None
    return Identity(
        role=role,
        name=fields.get("name", ""),
        department=fields.get("department", ""),
        license=fields.get("license", ""),
        serial=cert.serial_number,
        fingerprint=cert.fingerprint(hashes.SHA256()).hex(),
    )
