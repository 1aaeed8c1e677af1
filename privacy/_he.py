"""Homomorphic delivery with TenSEAL CKKS: the broker adds ciphertexts it cannot read.

Flow (see docs/privacy.md):

1. Operator SDK: ``he_keygen()`` makes a CKKS key pair and returns (secret context bytes,
   public context bytes). The public context carries the public key only: no secret key,
   no relinearisation keys, no Galois keys. Addition needs none of those, and with Galois
   keys the context measures 18.7 MB at these parameters (35.5 MB at TenSEAL's usual
   (60, 40, 40, 60)), against gRPC's default 4 MB message limit; ours is 0.37 MB.
2. Connector: ``he_encrypt(public_ctx, values)`` after any DP noise the policy requires.
3. Broker: ``he_sum(public_ctx, ciphertexts)`` adds the departments' vectors. It refuses a
   context that carries a secret key, so the broker can never decrypt, and it bounds every
   input's size before TenSEAL parses it.
4. Operator SDK: ``he_decrypt(secret_ctx, ciphertext)``.

CKKS is approximate: a decrypted sum matches the plaintext sum to about 1e-6 relative to the
scale (2^40) used here, which is far below any DP noise it carries.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import tenseal as ts

from yumen.errors import Code, YumenError

logger = logging.getLogger(__name__)

POLY_MODULUS_DEGREE = 8192  # 4096 slots; 128-bit security allows up to 218 modulus bits
COEFF_MOD_BIT_SIZES = (60, 40, 60)  # additions only: one middle prime is enough
SCALE_BITS = 40
SLOTS = POLY_MODULUS_DEGREE // 2
MAX_CONTEXT_BYTES = 2 * 1024 * 1024  # a public context is ~0.37 MB; with Galois keys 18.7 MB
MAX_CIPHERTEXT_BYTES = 1024 * 1024  # a 4,096-slot ciphertext is ~0.24 MB
MAX_CIPHERTEXTS = 1024  # departments in one job
MAX_ABS_VALUE = 2.0**60  # far inside the ~2^119 headroom of an unrescaled ciphertext


def _bad(what: str, hint: str = "") -> YumenError:
    return YumenError(Code.INVALID_ARGUMENT, what, hint=hint)


def _load_context(data: bytes, *, private: bool, who: str) -> ts.Context:
    if not isinstance(data, (bytes, bytearray)):
        raise _bad(f"{who}: the context must be bytes")
    if not data or len(data) > MAX_CONTEXT_BYTES:
        raise _bad(
            f"{who}: the context is {len(data)} bytes; the limit is {MAX_CONTEXT_BYTES}",
            "send the public context from he_keygen(), which has no Galois keys",
        )
    try:
        ctx = ts.context_from(bytes(data))
    except Exception:  # TenSEAL raises assorted C++ exceptions on malformed input
        raise _bad(f"{who}: the context is not a valid TenSEAL context") from None
    _check_parameters(ctx, who)
    if ctx.is_private() != private:
        if private:
            raise _bad(f"{who}: this context has no secret key", "decrypt with the secret context kept by the operator")
        raise _bad(
            f"{who}: this context carries a secret key and must never leave the operator",
            "send only the public context returned by he_keygen()",
        )
    return ctx


def _check_parameters(ctx: ts.Context, who: str) -> None:
    """Only Yumen's own parameter set is accepted: a context with weaker parameters (a smaller
    ring, other moduli) could let the broker read what it adds."""
    try:
        data = ctx.seal_context().data.key_context_data()
        parms = data.parms()
        ok = (
            parms.scheme().name == "CKKS"
            and parms.poly_modulus_degree() == POLY_MODULUS_DEGREE
            and data.total_coeff_modulus_bit_count() == sum(COEFF_MOD_BIT_SIZES)
            and ctx.global_scale == 2.0**SCALE_BITS
        )
    except Exception:
        ok = False
    if not ok:
        raise _bad(
            f"{who}: the context does not use Yumen's CKKS parameters",
            f"make keys with he_keygen() (degree {POLY_MODULUS_DEGREE}, moduli {COEFF_MOD_BIT_SIZES}, scale 2^{SCALE_BITS})",
        )


def _load_vector(ctx: ts.Context, data: bytes, who: str) -> ts.CKKSVector:
    if not isinstance(data, (bytes, bytearray)):
        raise _bad(f"{who}: a ciphertext must be bytes")
    if not data or len(data) > MAX_CIPHERTEXT_BYTES:
        raise _bad(f"{who}: a ciphertext is {len(data)} bytes; the limit is {MAX_CIPHERTEXT_BYTES}")
    try:
        return ts.ckks_vector_from(ctx, bytes(data))
    except Exception:
        raise _bad(f"{who}: a ciphertext is not a CKKS vector under this context") from None


def he_keygen() -> tuple[bytes, bytes]:
    """Operator SDK: make a CKKS key pair. Returns (secret context bytes, public context bytes).

    Keep the secret bytes with the operator; send only the public bytes with the job. The
    parameters are fixed (``POLY_MODULUS_DEGREE``, ``COEFF_MOD_BIT_SIZES``, ``SCALE_BITS``:
    4,096 slots, 160 modulus bits, within the 218 bits that 128-bit security allows at this
    degree), so every size bound below holds for every Yumen context.
    """
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=POLY_MODULUS_DEGREE,
        coeff_mod_bit_sizes=list(COEFF_MOD_BIT_SIZES),
    )
    ctx.global_scale = 2.0**SCALE_BITS
    secret = ctx.serialize(save_public_key=True, save_secret_key=True, save_galois_keys=False, save_relin_keys=False)
    public = ctx.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False)
    logger.info("made a CKKS key pair (public context %d bytes)", len(public))
    return secret, public


def he_encrypt(public_ctx: bytes, values: Sequence[float]) -> bytes:
    """Connector: encrypt ``values`` (already DP-noised if the policy asks for DP)."""
    ctx = _load_context(public_ctx, private=False, who="encrypt")
    values = [float(v) for v in values]
    if not values:
        raise _bad("nothing to encrypt")
    if len(values) > SLOTS:
        raise _bad(f"{len(values)} values do not fit {SLOTS} slots", "split the result over several ciphertexts")
    if not all(math.isfinite(v) and abs(v) <= MAX_ABS_VALUE for v in values):
        raise _bad(f"values to encrypt must be finite and at most {MAX_ABS_VALUE:g} in magnitude")
    try:
        data: bytes = ts.ckks_vector(ctx, values).serialize()
    except Exception:
        raise YumenError(Code.INTERNAL, "CKKS encryption failed") from None
    return data


def he_sum(public_ctx: bytes, ciphertexts: Sequence[bytes]) -> bytes:
    """Broker: add the departments' ciphertexts slot by slot, without any secret key."""
    cts = list(ciphertexts)
    if not 1 <= len(cts) <= MAX_CIPHERTEXTS:
        raise _bad(f"he_sum takes 1 to {MAX_CIPHERTEXTS} ciphertexts, got {len(cts)}")
    ctx = _load_context(public_ctx, private=False, who="he_sum")
    vectors = [_load_vector(ctx, c, "he_sum") for c in cts]
    size = vectors[0].size()
    if any(v.size() != size for v in vectors):
        raise _bad("ciphertexts hold different numbers of values", "every department must encrypt the same layout")
    total = vectors[0]
    for v in vectors[1:]:
        total = total + v
    logger.info("added %d ciphertexts of %d slots", len(vectors), size)
    out: bytes = total.serialize()
    return out


def he_decrypt(secret_ctx: bytes, ciphertext: bytes) -> list[float]:
    """Operator SDK: decrypt a (summed) ciphertext with the secret context."""
    ctx = _load_context(secret_ctx, private=True, who="decrypt")
    return list(_load_vector(ctx, ciphertext, "decrypt").decrypt())


def he_check_public_context(public_ctx: bytes) -> None:
    """Broker, at submission: refuse a context that is oversized, malformed, not Yumen's
    parameter set, or that carries a secret key, before the job is accepted."""
    _load_context(public_ctx, private=False, who="job")
