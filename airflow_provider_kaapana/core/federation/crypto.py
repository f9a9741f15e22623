"""Sealed boxes: a site encrypts its released document to the coordinator's public key.

The coordinator's REST API lets every site user read every other site's HITL answer (Airflow's
simple auth manager has no per-task scoping), so the answer travels encrypted: X25519 with a fresh
ephemeral key per message, HKDF-SHA256 for the key, AES-256-GCM with associated data that binds the
ciphertext to one job and one site (a sealed answer cannot be replayed for another job or site).
Keys are base64 text (raw 32 bytes); PEM is accepted as well.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from airflow_provider_kaapana.exceptions import FederationError

ALGORITHM = "X25519-HKDF-SHA256-AES256GCM"
_INFO = b"kaapana-federation-sealed-box/v1"
_SEALED_KEYS = frozenset({"alg", "kid", "epk", "nonce", "ct"})
MAX_SEALED_CHARS = 16 * 1024 * 1024


class SealedPayloadError(FederationError):
    """A sealed payload cannot be opened: wrong key, wrong job or site, tampered, or malformed.

    The message never contains key material or plaintext.
    """


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str) -> bytes:
    if not isinstance(text, str) or len(text) > MAX_SEALED_CHARS:
        raise SealedPayloadError(f"{what} must be base64 text")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise SealedPayloadError(f"{what} is not valid base64") from None


def _raw_public(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def generate_keypair() -> tuple[str, str]:
    """``(private_b64, public_b64)``: a new X25519 key pair as base64 of the raw 32 bytes."""
    private = X25519PrivateKey.generate()
    raw = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return _b64(raw), _b64(_raw_public(private.public_key()))


def load_private_key(text: str | bytes) -> X25519PrivateKey:
    """An X25519 private key from base64 (raw 32 bytes) or PEM (PKCS#8)."""
    data = text.encode("ascii", "ignore") if isinstance(text, str) else bytes(text)
    data = data.strip()
    try:
        if data.startswith(b"-----BEGIN"):
            key = serialization.load_pem_private_key(data, password=None)
            if not isinstance(key, X25519PrivateKey):
                raise SealedPayloadError("the PEM private key is not an X25519 key")
            return key
        return X25519PrivateKey.from_private_bytes(_unb64(data.decode("ascii"), "private key"))
    except SealedPayloadError:
        raise
    except (ValueError, TypeError):
        raise SealedPayloadError("not an X25519 private key (base64 of 32 bytes, or PEM)") from None


def load_public_key(text: str | bytes) -> X25519PublicKey:
    """An X25519 public key from base64 (raw 32 bytes) or PEM (SubjectPublicKeyInfo)."""
    data = text.encode("ascii", "ignore") if isinstance(text, str) else bytes(text)
    data = data.strip()
    try:
        if data.startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(data)
            if not isinstance(key, X25519PublicKey):
                raise SealedPayloadError("the PEM public key is not an X25519 key")
            return key
        return X25519PublicKey.from_public_bytes(_unb64(data.decode("ascii"), "public key"))
    except SealedPayloadError:
        raise
    except (ValueError, TypeError):
        raise SealedPayloadError("not an X25519 public key (base64 of 32 bytes, or PEM)") from None


def public_key_of(private: str | bytes) -> str:
    """The base64 public key that belongs to a private key."""
    return _b64(_raw_public(load_private_key(private).public_key()))


def key_id(public: str | bytes | X25519PublicKey) -> str:
    """A short fingerprint of a public key (first 16 hex digits of SHA-256 of its raw bytes)."""
    key = public if isinstance(public, X25519PublicKey) else load_public_key(public)
    return hashlib.sha256(_raw_public(key)).hexdigest()[:16]


def _aad(aad: str | bytes) -> bytes:
    return aad.encode("utf-8") if isinstance(aad, str) else bytes(aad)


def _key(shared: bytes, epk: bytes, recipient: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO + epk + recipient).derive(shared)


def seal(plaintext: bytes, recipient_public: str | bytes, aad: str | bytes) -> dict[str, str]:
    """Encrypt ``plaintext`` so that only the holder of the matching private key can read it.

    Returns ``{"alg", "kid", "epk", "nonce", "ct"}`` (JSON-ready text): ``kid`` names the recipient key,
    ``epk`` is the ephemeral public key, ``ct`` the AES-GCM ciphertext with its tag. ``aad`` (e.g. job
    id and site) must be given again, equal, to open it.
    """
    recipient = load_public_key(recipient_public)
    ephemeral = X25519PrivateKey.generate()
    epk = _raw_public(ephemeral.public_key())
    recipient_raw = _raw_public(recipient)
    key = _key(ephemeral.exchange(recipient), epk, recipient_raw)
    nonce = os.urandom(12)
    ct = AESGCM(key).encrypt(nonce, bytes(plaintext), _aad(aad))
    return {
        "alg": ALGORITHM,
        "kid": hashlib.sha256(recipient_raw).hexdigest()[:16],
        "epk": _b64(epk),
        "nonce": _b64(nonce),
        "ct": _b64(ct),
    }


def open_sealed(sealed: Mapping[str, Any], private: str | bytes, aad: str | bytes) -> bytes:
    """The plaintext of a :func:`seal` result; :class:`SealedPayloadError` if it does not open.

    Fails for another recipient key, other associated data (another job or site), any changed byte,
    an unknown algorithm or a malformed envelope.
    """
    if not isinstance(sealed, Mapping) or set(sealed) != _SEALED_KEYS:
        raise SealedPayloadError(f"a sealed payload has exactly the keys {', '.join(sorted(_SEALED_KEYS))}")
    if sealed["alg"] != ALGORITHM:
        raise SealedPayloadError(f"unknown sealing algorithm (expected {ALGORITHM})")
    key = load_private_key(private)
    recipient_raw = _raw_public(key.public_key())
    if sealed["kid"] != hashlib.sha256(recipient_raw).hexdigest()[:16]:
        raise SealedPayloadError(
            f"sealed for key {str(sealed['kid'])[:16]!r}, not for this coordinator's key "
            f"{hashlib.sha256(recipient_raw).hexdigest()[:16]!r} (is the site's coordinator_public_key current?)"
        )
    epk = _unb64(sealed["epk"], "epk")
    nonce = _unb64(sealed["nonce"], "nonce")
    ct = _unb64(sealed["ct"], "ct")
    if len(epk) != 32 or len(nonce) != 12 or len(ct) < 16:
        raise SealedPayloadError("sealed payload has a malformed key, nonce or ciphertext")
    try:
        shared = key.exchange(X25519PublicKey.from_public_bytes(epk))
        return AESGCM(_key(shared, epk, recipient_raw)).decrypt(nonce, ct, _aad(aad))
    except (InvalidTag, ValueError):
        raise SealedPayloadError(
            "sealed payload does not open: tampered, or sealed for another job or site"
        ) from None


__all__ = [
    "ALGORITHM",
    "SealedPayloadError",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "open_sealed",
    "public_key_of",
    "seal",
]
