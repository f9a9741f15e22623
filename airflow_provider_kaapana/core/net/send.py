"""Sending DICOM files to a PACS (C-STORE or STOW-RS) with per-instance checks and optional verification.

:func:`send` is the one implementation: ``kaapana send`` and
:class:`~airflow_provider_kaapana.operators.dicom_send.DicomSendOperator` both call it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom

from airflow_provider_kaapana.core.dicom.discovery import dicom_files
from airflow_provider_kaapana.core.net import dimse
from airflow_provider_kaapana.core.net.dicomweb import DicomWebClient
from airflow_provider_kaapana.core.net.dimse import DimsePeer, StoreResult
from airflow_provider_kaapana.exceptions import InvalidDicomError, PacsError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InstanceUids:
    path: Path
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str


def collect_dicom_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, and the DICOM files below given directories or in DICOMDIR media (any name:
    ``*.dcm`` or a Part-10 preamble; see :func:`~airflow_provider_kaapana.core.dicom.discovery.dicom_files`)."""
    paths = list(paths)
    files = dicom_files(paths, only_dicom=True)
    if not files:
        raise InvalidDicomError(f"no DICOM files in {[str(p) for p in paths]}")
    return files


def instance_uids(path: Path) -> InstanceUids:
    try:
        ds = pydicom.dcmread(
            path,
            stop_before_pixels=True,
            specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"],
        )
        return InstanceUids(path, str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
    except Exception as exc:  # noqa: BLE001 - name the file
        raise InvalidDicomError(f"{path}: cannot read Study/Series/SOP Instance UIDs ({exc})") from exc


def verify_series_stored(
    study_instance_uid: str,
    series_instance_uid: str,
    sop_instance_uids: Iterable[str],
    qido: DicomWebClient | None = None,
    find: Callable[..., list[Any]] | None = None,
    where: str = "the PACS",
) -> None:
    """Raise :class:`PacsError` unless the PACS lists every SOP Instance UID (QIDO-RS or C-FIND)."""
    wanted = set(sop_instance_uids)
    if qido is not None:
        missing = qido.verify_stored(study_instance_uid, series_instance_uid, wanted)
    elif find is not None:
        found = find(
            "instance",
            {"StudyInstanceUID": study_instance_uid, "SeriesInstanceUID": series_instance_uid},
            ["SOPInstanceUID"],
        )
        missing = wanted - {str(ds.SOPInstanceUID) for ds in found}
    else:
        raise ValueError("verification needs a QIDO client or a C-FIND function")
    if missing:
        raise PacsError(
            f"verification at {where}: {len(missing)} of {len(wanted)} instances of series "
            f"{series_instance_uid} not found after sending, e.g. {sorted(missing)[0]}"
        )


SEND_METHODS = ("c-store", "stow-rs")


@dataclass(frozen=True)
class SendReport:
    """What :func:`send` did: per-instance results, the series sent, and where it verified them."""

    results: list[StoreResult]
    method: str
    series: list[tuple[str, str]]  # (StudyInstanceUID, SeriesInstanceUID), sorted
    verified_at: str | None = None  # the DICOMweb URL or DIMSE peer asked afterwards; None: not verified


def send(
    paths: Iterable[str | Path],
    peer: DimsePeer | None = None,
    dicomweb: DicomWebClient | None = None,
    verify: bool = False,
    *,
    method: str | None = None,
) -> SendReport:
    """Send files/directories by C-STORE (``peer``) or STOW-RS (``dicomweb``); optionally verify.

    With one of ``peer``/``dicomweb`` its protocol is used; with both (a PACS with DIMSE and DICOMweb),
    ``method`` (``c-store`` or ``stow-rs``) chooses. Every file's UIDs are read before anything is sent,
    so an unreadable file fails the send before the PACS sees any of it. ``verify`` then asks the PACS
    for every SOP Instance UID: by QIDO-RS when a DICOMweb client is given, else by C-FIND.

    Raises :class:`PacsError` naming the failed files (after the retries of the transport).
    """
    if method is None:
        if (peer is None) == (dicomweb is None):
            raise ValueError("give exactly one of peer (C-STORE) or dicomweb (STOW-RS)")
        method = "c-store" if peer is not None else "stow-rs"
    method = method.lower()
    if method not in SEND_METHODS:
        raise ValueError(f"send method {method!r} is not one of {', '.join(SEND_METHODS)}")
    files = collect_dicom_files(paths)
    groups: dict[tuple[str, str], list[str]] = {}
    for uids in map(instance_uids, files):  # also proves every file is readable before sending
        groups.setdefault((uids.study_instance_uid, uids.series_instance_uid), []).append(
            uids.sop_instance_uid
        )
    if method == "c-store":
        if peer is None:
            raise ValueError("C-STORE needs a DIMSE peer")
        results = dimse.store(peer, files)
    else:
        if dicomweb is None:
            raise ValueError("STOW-RS needs a DICOMweb client")
        results = dicomweb.stow(files)
    where = None
    if verify:
        for (study, series), sops in groups.items():
            if dicomweb is not None:
                where = dicomweb.base_url
                verify_series_stored(study, series, sops, qido=dicomweb, where=where)
            else:
                assert peer is not None
                where = str(peer)
                verify_series_stored(
                    study, series, sops, find=lambda *a, **k: dimse.find(peer, *a, **k), where=where
                )
    return SendReport(results, method, sorted(groups), where)
