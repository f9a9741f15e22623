"""De-identification: DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile and its options.

``deidentify(dataset, profile, key)`` (``deidentify``) applies Table E.1-1 (``table``, generated from a
machine-readable copy of the standard) under a :class:`DeidentificationProfile` (``profile``), with
keyed pseudonyms (``pseudonyms``); ``deidentify_folder`` (``files``) is the file-level step of the CLI
and the operator.
"""

from __future__ import annotations

from airflow_provider_kaapana.core.deid.deidentify import deidentify
from airflow_provider_kaapana.core.deid.files import DeidentifyResult, deidentify_file, deidentify_folder
from airflow_provider_kaapana.core.deid.profile import DeidentificationProfile, Option

__all__ = [
    "DeidentificationProfile",
    "DeidentifyResult",
    "Option",
    "deidentify",
    "deidentify_file",
    "deidentify_folder",
]
