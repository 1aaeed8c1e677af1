"""Identity: the data space's own CA, certificates with roles, and signed payloads.

Every actor holds one X.509 certificate issued by the data space CA. Its role, name,
department and license id are URIs in the subject alternative names, so the broker
knows who is calling from the certificate alone.
"""

from yumen.identity._pki import (
    Identity,
    Role,
    identity_from_pem,
    init_ca,
    issue,
    load_private_key,
)
from yumen.identity._signing import sign_payload, verify_payload

__all__ = [
    "Identity",
    "Role",
    "identity_from_pem",
    "init_ca",
    "issue",
    "load_private_key",
    "sign_payload",
    "verify_payload",
]
