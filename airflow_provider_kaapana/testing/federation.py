"""Synthetic federated sites: real (tiny) DICOM series per site, their index documents, and the truth.

Every series is written by :func:`~airflow_provider_kaapana.testing.synthetic.generate_series` and
indexed by :func:`~airflow_provider_kaapana.core.index.document.build_series_document`, so the cohort
analysis reads exactly what a site's search index holds. :class:`SeriesTruth` records what was written,
so tests compute expected statistics without going through the code under test.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.uid import generate_uid

from airflow_provider_kaapana.core.index.document import build_series_document
from airflow_provider_kaapana.testing.synthetic import generate_series

MODALITIES = ("CT", "CT", "CT", "MR", "MR", "PT")
BODY_PARTS = ("CHEST", "ABDOMEN", "HEAD", "PELVIS")
MANUFACTURERS = ("SIEMENS", "GE MEDICAL SYSTEMS", "Philips Medical Systems", "Canon Medical Systems")
SLICE_THICKNESSES = (0.625, 1.0, 1.25, 2.5, 3.0, 5.0)
SEXES = ("M", "F", "F", "M", "O", "")


@dataclass(frozen=True)
class SeriesTruth:
    """What one synthetic series is, as written into its DICOM headers."""

    site: str
    patient_id: str
    patient_name: str
    birth_date: str  # YYYYMMDD or ""
    sex: str  # M/F/O or ""
    age_years: int | None  # PatientAge at this study, None when neither age nor birth date is written
    study_instance_uid: str
    study_date: str  # YYYYMMDD
    series_instance_uid: str
    modality: str
    body_part: str
    manufacturer: str
    slice_thickness: float
    instances: int


@dataclass
class SyntheticSite:
    """One site: its name, its series index documents, and the truth behind them."""

    name: str
    documents: list[dict[str, Any]] = field(default_factory=list)
    truth: list[SeriesTruth] = field(default_factory=list)


def synthetic_site(
    out_dir: str | Path,
    name: str,
    *,
    n_patients: int,
    seed: int,
    unknown_age_patients: int = 0,
    modalities: Sequence[str] = MODALITIES,
) -> SyntheticSite:
    """A site of ``n_patients`` patients, each with 1-2 studies of 1-2 tiny series (1-3 slices of 4x4).

    Attributes are drawn from the site's own random stream (``seed``); the first
    ``unknown_age_patients`` patients carry neither PatientAge nor PatientBirthDate.
    """
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    site = SyntheticSite(name)
    counter = 0
    for p in range(n_patients):
        # the whole site name: a prefix (site_a / site_b) would merge patients across sites
        patient_id = f"{re.sub(r'[^A-Z0-9]', '', name.upper())}{p:05d}"
        patient_name = f"{name.capitalize()}^Patient{p:05d}"
        sex = str(rng.choice(SEXES))
        age0 = int(rng.integers(18, 90))
        known_age = p >= unknown_age_patients
        first_year = int(rng.integers(2016, 2025))
        birth = _dt.date(first_year - age0, 1, 1 + int(rng.integers(0, 28)))
        for s in range(int(rng.integers(1, 3))):
            year = first_year + s
            study_date = f"{year}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
            age = age0 + s if known_age else None
            study_uid = generate_uid(entropy_srcs=[name, str(seed), patient_id, str(s)])
            for series_number in range(1, int(rng.integers(1, 3)) + 1):
                counter += 1
                modality = str(rng.choice(list(modalities)))
                thickness = float(rng.choice(SLICE_THICKNESSES))
                slices = int(rng.integers(1, 4))
                extra: dict[str, object] = {
                    "PatientSex": sex,
                    "PatientAge": f"{age:03d}Y" if age is not None else "",
                    "PatientBirthDate": birth.strftime("%Y%m%d") if known_age else "",
                    "Manufacturer": str(rng.choice(MANUFACTURERS)),
                }
                series = generate_series(
                    out / name / f"{counter:05d}",
                    modality=modality,
                    rows=4,
                    columns=4,
                    slices=slices,
                    slice_spacing=thickness,
                    shapes=[],
                    noise_sd=0.0,
                    seed=seed * 100_000 + counter,
                    patient_id=patient_id,
                    patient_name=patient_name,
                    study_instance_uid=study_uid,
                    series_number=series_number,
                    body_part=str(rng.choice(BODY_PARTS)),
                    study_date=study_date,
                    extra=extra,
                )
                _, document, _ = build_series_document(series.series_dir)
                site.documents.append(document)
                site.truth.append(
                    SeriesTruth(
                        site=name,
                        patient_id=patient_id,
                        patient_name=patient_name,
                        birth_date=str(extra["PatientBirthDate"]),
                        sex=sex,
                        age_years=age,
                        study_instance_uid=study_uid,
                        study_date=study_date,
                        series_instance_uid=series.series_instance_uid,
                        modality=modality,
                        body_part=series.spec.body_part,
                        manufacturer=str(extra["Manufacturer"]),
                        slice_thickness=thickness,
                        instances=slices,
                    )
                )
    return site
