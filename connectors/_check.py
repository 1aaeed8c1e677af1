"""``yumen connector check``: say in plain words what would stop the connector."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from yumen.errors import YumenError
from yumen.identity import Role, identity_from_pem, load_private_key

from yumen.connectors._config import load_connector_config
from yumen.connectors._sources import open_source, validate_against, value_problems


def check_config(path: Path) -> int:
    problems: list[str] = []
    config = load_connector_config(path)  # a config that does not parse raises with its reason
    print(f"config {path}: parsed ({len(config.datasets)} datasets)")
    cert_problems: list[str] = []
    try:
        ca, cert, _ = config.tls.read()
        load_private_key(config.tls.key)
        ident = identity_from_pem(cert)
        ca_cert = x509.load_pem_x509_certificate(ca)
        leaf = x509.load_pem_x509_certificate(cert)
        leaf.verify_directly_issued_by(ca_cert)
        if ident.role is not Role.CONNECTOR:
            cert_problems.append(f"the certificate is for the role {ident.role.value!r}, not a connector")
        if ident.name != config.id:
            cert_problems.append(f"the certificate names {ident.name!r} but [connector] id is {config.id!r}")
        if ident.department != config.department:
            cert_problems.append(f"the certificate's department is {ident.department!r}, the config says {config.department!r}")
        x509.load_pem_x509_certificate(config.broker_certificate.read_bytes()).verify_directly_issued_by(ca_cert)
    except (YumenError, OSError, ValueError, TypeError) as e:
        cert_problems.append(str(e))
    if cert_problems:
        problems += [f"certificates: {p}" for p in cert_problems]
    else:
        print("certificates: ok")
    warnings: list[str] = []
    for d in config.datasets:
        # The whole source is read, as `serve` reads it when it pins a version: a value that
        # does not fit its column's type on the last row fails here, not in production.
        try:
            src = open_source(d.source)
            src.check()
            validate_against(d.registration, src)
            src.version()
            strays = value_problems(d.registration, src)
        except YumenError as e:
            problems.append(f"dataset {d.registration.id}: {e}")
            continue
        warnings += [f"dataset {d.registration.id}: {message}" for message, _ in strays]
        print(f"dataset {d.registration.id}: ok ({d.source.describe()}){'; see the warnings below' if strays else ''}")
    try:
        from yumen.sandbox import get_backend

        get_backend(config.sandbox).check()
        print(f"sandbox {config.sandbox}: ok")
    except YumenError as e:
        problems.append(f"sandbox {config.sandbox}: {e}")
    for w in warnings:  # served as they are, but results are biased or lose rows: say so
        print(f"warning: {w}")
    for p in problems:
        print(f"problem: {p}")
    return 0 if not problems else 2
