"""Sealed boxes: round trip, and every way a sealed payload must refuse to open."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from airflow_provider_kaapana.core.federation.crypto import (
    ALGORITHM,
    SealedPayloadError,
    generate_keypair,
    key_id,
    open_sealed,
    public_key_of,
    seal,
)

AAD = b"kaapana-federation/v1\nkaapana_federated_cohort_statistics/manual__1\nalpha"
PLAINTEXT = b'{"payload":"{}","reason":"","sha256":"44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"}'


@pytest.fixture(scope="module")
def keys() -> tuple[str, str]:
    return generate_keypair()


def test_round_trip(keys):
    private, public = keys
    sealed = seal(PLAINTEXT, public, AAD)
    assert set(sealed) == {"alg", "kid", "epk", "nonce", "ct"} and sealed["alg"] == ALGORITHM
    assert sealed["kid"] == key_id(public)
    assert open_sealed(sealed, private, AAD) == PLAINTEXT
    assert PLAINTEXT not in base64.b64decode(sealed["ct"])


def test_every_seal_is_different(keys):
    _, public = keys
    a, b = seal(PLAINTEXT, public, AAD), seal(PLAINTEXT, public, AAD)
    assert a["epk"] != b["epk"] and a["ct"] != b["ct"]


def test_public_key_follows_from_private(keys):
    private, public = keys
    assert public_key_of(private) == public
    assert len(base64.b64decode(private)) == len(base64.b64decode(public)) == 32


@pytest.mark.parametrize(
    "other_aad",
    [
        AAD.replace(b"alpha", b"beta"),  # another site
        AAD.replace(b"manual__1", b"manual__2"),  # another job
        b"",
    ],
)
def test_wrong_associated_data_fails(keys, other_aad):
    private, public = keys
    sealed = seal(PLAINTEXT, public, AAD)
    with pytest.raises(SealedPayloadError, match="another job or site"):
        open_sealed(sealed, private, other_aad)


def test_wrong_key_fails_and_says_which_key(keys):
    _, public = keys
    other_private, _ = generate_keypair()
    sealed = seal(PLAINTEXT, public, AAD)
    with pytest.raises(SealedPayloadError, match="not for this coordinator's key") as info:
        open_sealed(sealed, other_private, AAD)
    assert other_private not in str(info.value)


def test_wrong_key_with_forged_kid_still_fails(keys):
    _, public = keys
    other_private, other_public = generate_keypair()
    sealed = dict(seal(PLAINTEXT, public, AAD), kid=key_id(other_public))
    with pytest.raises(SealedPayloadError, match="does not open"):
        open_sealed(sealed, other_private, AAD)


@pytest.mark.parametrize("field", ["ct", "epk", "nonce"])
def test_any_changed_byte_fails(keys, field):
    private, public = keys
    sealed = seal(PLAINTEXT, public, AAD)
    raw = bytearray(base64.b64decode(sealed[field]))
    raw[len(raw) // 2] ^= 0x01
    tampered = dict(sealed, **{field: base64.b64encode(bytes(raw)).decode()})
    with pytest.raises(SealedPayloadError):
        open_sealed(tampered, private, AAD)


def test_truncated_ciphertext_fails(keys):
    private, public = keys
    sealed = seal(PLAINTEXT, public, AAD)
    with pytest.raises(SealedPayloadError):
        open_sealed(
            dict(sealed, ct=base64.b64encode(base64.b64decode(sealed["ct"])[:-1]).decode()), private, AAD
        )


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: {**s, "alg": "X25519-XSALSA20"},
        lambda s: {**s, "extra": "x"},
        lambda s: {k: v for k, v in s.items() if k != "nonce"},
        lambda s: {**s, "ct": "not base64!"},
        lambda s: {**s, "ct": 42},
    ],
)
def test_malformed_envelopes_fail(keys, mutate):
    private, public = keys
    with pytest.raises(SealedPayloadError):
        open_sealed(mutate(seal(PLAINTEXT, public, AAD)), private, AAD)


def test_pem_keys_are_accepted(keys):
    key = X25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    assert open_sealed(seal(PLAINTEXT, public_pem, AAD), private_pem, AAD) == PLAINTEXT


@pytest.mark.parametrize(
    "bad", ["", "abc", base64.b64encode(b"x" * 31).decode(), "-----BEGIN PUBLIC KEY-----\nxx"]
)
def test_bad_public_keys_are_refused(bad):
    with pytest.raises(SealedPayloadError):
        seal(PLAINTEXT, bad, AAD)
