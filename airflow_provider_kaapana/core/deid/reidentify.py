"""The optional re-identification map: pseudonym -> original, kept at the site, sealed to a key holder.

Pseudonyms are keyed one-way MACs: whoever holds the site key can recompute a pseudonym from a known
identifier, but nobody can go back. Where a study needs the way back (a finding to report to the
treating clinician), the de-identification step also writes what it replaced — patient ID and name,
every UID it mapped (references included), the date shift — as a sealed box (X25519 + AES-256-GCM,
:mod:`airflow_provider_kaapana.core.federation.crypto`) to the public key of whoever may re-identify.
The step itself cannot read the map back; only the private key's holder can (``kaapana deid
--reidentify``).

One file per run and content: ``<map_dir>/reid-<sha256 of the entries>.json``, so a re-run over the same
input replaces its file instead of adding one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_provider_kaapana.core.federation.crypto import (
    SealedPayloadError,
    load_public_key,
    open_sealed,
    seal,
)
from airflow_provider_kaapana.core.files import write_atomic
from airflow_provider_kaapana.exceptions import DeidentificationError

FORMAT = "kaapana.reidentification-map/v1"
AAD = FORMAT.encode("ascii")


def check_public_key(public_key: str | bytes) -> None:
    """ValueError unless ``public_key`` is an X25519 public key (checked before any file is written)."""
    try:
        load_public_key(public_key)
    except SealedPayloadError as exc:
        raise ValueError(f"re-identification public key: {exc}") from None


@dataclass
class ReidentificationMap:
    """What one run replaced: ``patients`` by pseudonym and ``uids`` pseudonym -> original."""

    patients: dict[str, dict[str, Any]] = field(default_factory=dict)
    uids: dict[str, str] = field(default_factory=dict)

    def add(
        self, pseudonym: str, patient_id: str, patient_name: str, shift_days: int, uids: dict[str, str]
    ) -> None:
        """Record one instance: its patient's pseudonym and originals, and ``uids`` (original -> pseudonym)."""
        self.patients[pseudonym] = {
            "patient_id": patient_id,
            "patient_name": patient_name,
            "date_shift_days": shift_days,
        }
        for original, pseudonym_uid in uids.items():
            self.uids[pseudonym_uid] = original

    def as_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "patients": self.patients, "uids": self.uids}

    def write(self, map_dir: str | Path, public_key: str | bytes) -> Path | None:
        """Seal the map to ``public_key`` into ``map_dir``; None when there is nothing to record."""
        if not self.patients and not self.uids:
            return None
        plaintext = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":")).encode("utf-8")
        name = f"reid-{hashlib.sha256(plaintext).hexdigest()[:32]}.json"
        sealed = {"format": FORMAT, **seal(plaintext, public_key, AAD)}
        directory = Path(map_dir)
        directory.mkdir(parents=True, exist_ok=True)
        return write_atomic(directory / name, [json.dumps(sealed, indent=1).encode("ascii")])


def read_maps(map_dir: str | Path, private_key: str | bytes) -> ReidentificationMap:
    """All sealed maps under ``map_dir`` opened with ``private_key`` and merged.

    Raises :class:`DeidentificationError` naming the file that does not open (wrong key, tampered);
    the message never contains key material or map content.
    """
    merged = ReidentificationMap()
    files = sorted(Path(map_dir).glob("reid-*.json"))
    if not files:
        raise DeidentificationError(f"{map_dir}: no re-identification map (reid-*.json) found")
    for path in files:
        try:
            sealed = json.loads(path.read_text())
            if sealed.get("format") != FORMAT:
                raise DeidentificationError(f"{path}: not a {FORMAT} file")
            plain = json.loads(
                open_sealed({k: v for k, v in sealed.items() if k != "format"}, private_key, AAD)
            )
        except SealedPayloadError as exc:
            raise DeidentificationError(f"{path}: cannot be opened with this key ({exc})") from None
        except (OSError, ValueError, AttributeError) as exc:
            raise DeidentificationError(f"{path}: unreadable ({type(exc).__name__})") from None
        merged.patients.update(plain.get("patients", {}))
        merged.uids.update(plain.get("uids", {}))
    return merged


def reidentify(entries: ReidentificationMap, pseudonyms: list[str]) -> dict[str, Any]:
    """What each pseudonym (a patient pseudonym or a pseudonymous UID) stands for; unknown ones are None."""
    found: dict[str, Any] = {}
    for pseudonym in pseudonyms:
        if pseudonym in entries.patients:
            found[pseudonym] = entries.patients[pseudonym]
        elif pseudonym in entries.uids:
            found[pseudonym] = {"uid": entries.uids[pseudonym]}
        else:
            found[pseudonym] = None
    return found
