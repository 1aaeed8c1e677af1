"""CKKS delivery: sums decrypt correctly, the broker never holds a secret key, sizes are bounded."""

from __future__ import annotations

import pytest
import tenseal as ts

import yumen.privacy._he as he_module
from yumen.errors import Code, YumenError
from yumen.privacy import (
    MAX_CIPHERTEXT_BYTES,
    MAX_CONTEXT_BYTES,
    SLOTS,
    he_check_public_context,
    he_decrypt,
    he_encrypt,
    he_keygen,
    he_sum,
)


@pytest.fixture(scope="module")
def keys() -> tuple[bytes, bytes]:
    return he_keygen()


def test_public_context_has_no_secret_or_galois_keys_and_is_small(keys):
    secret, public = keys
    ctx = ts.context_from(public)
    assert not ctx.is_private() and not ctx.has_galois_keys() and ctx.has_public_key()
    assert ts.context_from(secret).is_private()
    assert len(public) < 1024 * 1024 < 4 * 1024 * 1024  # far under gRPC's default 4 MB


def test_decrypted_sum_matches_the_plaintext_sum(keys):
    secret, public = keys
    vectors = [[(d * 7919 + i * 31) % 1000 - 500.5 + d / 3 for i in range(SLOTS)] for d in range(20)]
    total = he_sum(public, [he_encrypt(public, v) for v in vectors])
    plain = [sum(col) for col in zip(*vectors)]
    got = he_decrypt(secret, total)
    assert len(got) == SLOTS
    assert max(abs(a - b) for a, b in zip(got, plain)) < 1e-3


def test_large_dp_sums_survive_encryption(keys):
    secret, public = keys
    got = he_decrypt(secret, he_sum(public, [he_encrypt(public, [1.3e7, -2.5e9]), he_encrypt(public, [1.0, 1.0])]))
    assert got[0] == pytest.approx(1.3e7 + 1, abs=1e-2) and got[1] == pytest.approx(-2.5e9 + 1, abs=1e-1)


def test_broker_refuses_a_context_carrying_a_secret_key(keys):
    secret, public = keys
    ct = he_encrypt(public, [1.0])
    with pytest.raises(YumenError) as err:
        he_sum(secret, [ct])
    assert err.value.code is Code.INVALID_ARGUMENT and "secret key" in err.value.message


def test_broker_side_never_holds_a_secret_key(keys, monkeypatch):
    secret, public = keys
    loaded: list[ts.Context] = []
    real = ts.context_from

    def spy(data: bytes) -> ts.Context:
        ctx = real(data)
        loaded.append(ctx)
        return ctx

    monkeypatch.setattr(he_module.ts, "context_from", spy)
    cts = [he_encrypt(public, [1.0, 2.0]) for _ in range(3)]
    loaded.clear()
    he_sum(public, cts)
    assert loaded and not any(c.is_private() for c in loaded)


def test_connector_refuses_to_encrypt_under_a_secret_context(keys):
    secret, _ = keys
    with pytest.raises(YumenError, match="secret key"):
        he_encrypt(secret, [1.0])


def test_decryption_needs_the_secret_context(keys):
    _, public = keys
    with pytest.raises(YumenError, match="no secret key"):
        he_decrypt(public, he_encrypt(public, [1.0]))


def test_oversized_inputs_are_refused_before_parsing(keys):
    _, public = keys
    with pytest.raises(YumenError, match="limit"):
        he_sum(b"\0" * (MAX_CONTEXT_BYTES + 1), [b"x"])
    with pytest.raises(YumenError, match="limit"):
        he_sum(public, [b"\0" * (MAX_CIPHERTEXT_BYTES + 1)])
    with pytest.raises(YumenError, match="1 to"):
        he_sum(public, [])


def test_a_context_with_other_parameters_is_refused():
    weak = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=4096, coeff_mod_bit_sizes=[40, 20, 40])
    weak.global_scale = 2**20
    data = weak.serialize(save_secret_key=False)
    with pytest.raises(YumenError, match="CKKS parameters"):
        he_encrypt(data, [1.0])


def test_garbage_and_mismatched_ciphertexts_are_refused(keys):
    _, public = keys
    with pytest.raises(YumenError, match="not a CKKS vector"):
        he_sum(public, [b"garbage"])
    with pytest.raises(YumenError, match="different numbers"):
        he_sum(public, [he_encrypt(public, [1.0]), he_encrypt(public, [1.0, 2.0])])


def test_too_many_or_non_finite_values_are_refused(keys):
    _, public = keys
    with pytest.raises(YumenError, match="slots"):
        he_encrypt(public, [0.0] * (SLOTS + 1))
    with pytest.raises(YumenError, match="finite"):
        he_encrypt(public, [float("nan")])


def test_a_context_with_galois_keys_is_refused_by_its_size(keys):
    _, public = keys
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=8192, coeff_mod_bit_sizes=[60, 40, 60])
    ctx.global_scale = 2**40
    ctx.generate_galois_keys()
    heavy = ctx.serialize(save_secret_key=False, save_galois_keys=True)
    assert len(heavy) > MAX_CONTEXT_BYTES
    with pytest.raises(YumenError, match="no Galois keys"):
        he_sum(heavy, [he_encrypt(public, [1.0])])


def test_submission_check_accepts_the_public_context_and_refuses_the_secret_one(keys):
    secret, public = keys
    assert he_check_public_context(public) is None
    with pytest.raises(YumenError, match="secret key"):
        he_check_public_context(secret)
    with pytest.raises(YumenError, match="not a valid TenSEAL context"):
        he_check_public_context(b"not a context")
