"""De-identify DICOM files: one output file per input instance, refused ones quarantined with a reason."""

from __future__ import annotations

import json
import logging
import multiprocessing
import shutil
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.errors import InvalidDicomError as PydicomInvalidDicomError

from airflow_provider_kaapana.core.deid.deidentify import Replaced, deidentify_part10
from airflow_provider_kaapana.core.deid.profile import DeidentificationProfile
from airflow_provider_kaapana.core.deid.pseudonyms import check_key
from airflow_provider_kaapana.core.deid.reidentify import ReidentificationMap, check_public_key
from airflow_provider_kaapana.core.dicom.discovery import dicom_files
from airflow_provider_kaapana.core.dicom.uids import uid_path, validate_uid
from airflow_provider_kaapana.core.files import write_atomic
from airflow_provider_kaapana.core.paths import path_under
from airflow_provider_kaapana.exceptions import DeidentificationError, InvalidDicomError

log = logging.getLogger(__name__)

QUARANTINE_REPORT = "quarantine.json"
WORKERS = 2
# below this many files one process does all: starting and stopping two forked workers measured
# 80-170 ms wall (~20 ms CPU) on the loaded 2-core development machine, and on a 100-file series the
# workers used ~0.6 ms more CPU per instance than one process (copy-on-write of the forked memory)
PROCESS_MIN_FILES = 256
# fork: the workers start in milliseconds with everything imported (spawn re-imports pydicom: ~1 s)
_CONTEXT = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)


@dataclass
class DeidentifyResult:
    """What a folder run did: files written, inputs refused by the profile, inputs that are not DICOM."""

    written: list[Path] = field(default_factory=list)
    quarantined: dict[str, str] = field(default_factory=dict)  # input path -> reason
    failed: dict[str, str] = field(default_factory=dict)  # input path -> error
    reid_map: Path | None = None  # the sealed re-identification map, when one was asked for

    def as_dict(self) -> dict[str, object]:
        return {
            "written": [str(p) for p in self.written],
            "quarantined": self.quarantined,
            "failed": self.failed,
            "reid_map": str(self.reid_map) if self.reid_map else None,
        }


def deidentify_file(
    source: str | Path,
    out_dir: str | Path,
    profile: DeidentificationProfile,
    key: bytes,
    record: ReidentificationMap | None = None,
) -> Path:
    """De-identify one DICOM file into ``out_dir/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` (new UIDs).

    The output path holds only pseudonymous UIDs, never the input's name (which may name the patient).
    Pixel data is copied as bytes, never decoded. Raises ``DeidentificationError`` (the profile refuses
    the instance) or ``InvalidDicomError`` (not readable DICOM). With ``record``, what was replaced is
    added to it (the optional re-identification map).
    """
    written, replaced = _deidentify_one(Path(source), Path(out_dir), profile, key)
    if record is not None:
        record.add(
            replaced.pseudonym, replaced.patient_id, replaced.patient_name, replaced.shift_days, replaced.uids
        )
    return written


def _deidentify_one(
    source: Path,
    out_dir: Path,
    profile: DeidentificationProfile,
    key: bytes,
    series_dirs: dict[str, Path] | None = None,
) -> tuple[Path, Replaced]:
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise InvalidDicomError(f"{source}: cannot be read ({type(exc).__name__})") from None
    try:
        encoded = deidentify_part10(data, profile, key)
    except (PydicomInvalidDicomError, InvalidDicomError, ValueError, EOFError) as exc:
        # our own messages name offsets and tags; a library's may quote a value, which could be PHI
        reason = str(exc) if isinstance(exc, InvalidDicomError) else type(exc).__name__
        raise InvalidDicomError(f"{source}: not readable DICOM ({reason})") from None
    sop, series, replaced = encoded.sop_instance_uid, encoded.series_instance_uid, encoded.replaced
    try:
        # checked and made once per series (``series_dirs``), not per file
        known = series_dirs.get(series) if series_dirs is not None else None
        series_dir = known or uid_path(out_dir, series, what=f"de-identified SeriesInstanceUID of {source}")
        target = path_under(series_dir, f"{validate_uid(sop)}.dcm", source=f"SOPInstanceUID of {source}")
    except ValueError:
        raise InvalidDicomError(f"{source}: no valid SOPInstanceUID/SeriesInstanceUID") from None
    if known is None:
        series_dir.mkdir(parents=True, exist_ok=True)
        if series_dirs is not None:
            series_dirs[series] = series_dir
    # the chunks are views of the input (pixel data is not copied): written with one writev
    return write_atomic(target, encoded.chunks, fsync=False), replaced


Outcome = tuple[Path, Replaced] | DeidentificationError | InvalidDicomError


def _deidentify_chunk(
    sources: list[Path], out_dir: Path, profile: DeidentificationProfile, key: bytes
) -> list[Outcome]:
    """One worker's share: each file's output and what it replaced, or why it was refused."""
    series_dirs: dict[str, Path] = {}
    outcomes: list[Outcome] = []
    for source in sources:
        try:
            outcomes.append(_deidentify_one(source, out_dir, profile, key, series_dirs))
        except (DeidentificationError, InvalidDicomError) as exc:
            outcomes.append(exc)
    return outcomes


def _run(
    inputs: list[Path], out_dir: Path, profile: DeidentificationProfile, key: bytes, workers: int
) -> Iterator[Outcome]:
    """Every input's outcome, in input order: ``workers`` processes each take every ``workers``-th file.

    Processes, not threads: most of the per-file work is Python, which the GIL runs one thread at a
    time (two threads measured no faster than one). Folders under ``PROCESS_MIN_FILES`` files run here.
    """
    if workers <= 1 or len(inputs) < PROCESS_MIN_FILES:
        yield from _deidentify_chunk(inputs, out_dir, profile, key)
        return
    shares = [inputs[i::workers] for i in range(workers)]
    with ProcessPoolExecutor(max_workers=workers, mp_context=_CONTEXT) as pool:
        done = list(pool.map(_deidentify_chunk, shares, *zip(*[(out_dir, profile, key)] * workers)))
    for i in range(len(inputs)):
        yield done[i % workers][i // workers]


def deidentify_folder(
    in_dir: str | Path,
    out_dir: str | Path,
    profile: DeidentificationProfile,
    key: bytes,
    quarantine_dir: str | Path | None = None,
    reid_map_dir: str | Path | None = None,
    reid_public_key: str | bytes | None = None,
    workers: int = WORKERS,
) -> DeidentifyResult:
    """De-identify every file under ``in_dir`` into ``out_dir``; a bad file is named and the rest goes on.

    Instances the profile refuses (burned-in text) are not written; with ``quarantine_dir`` the original
    is copied there for review (it holds PHI: keep it on the site) and ``quarantine.json`` lists
    ``input -> reason``. With ``reid_map_dir`` and ``reid_public_key`` what was replaced is written
    there as a sealed re-identification map (see :mod:`~airflow_provider_kaapana.core.deid.reidentify`).
    ``workers`` processes read, de-identify and write files at once (one process for small folders).
    Results are in input order whatever the workers.
    """
    key = check_key(key)
    in_path, out_path = Path(in_dir), Path(out_dir)
    out_path.mkdir(parents=True, exist_ok=True)
    if (reid_map_dir is None) != (reid_public_key is None):
        raise ValueError("a re-identification map needs both a folder and the public key to seal it to")
    if reid_public_key is not None:
        check_public_key(reid_public_key)
    record = ReidentificationMap() if reid_map_dir is not None else None
    result = DeidentifyResult()

    # the one DICOM walker: os.walk (no stat per file), hidden files skipped, DICOMDIR records followed
    inputs = dicom_files(in_path)
    for source, outcome in zip(inputs, _run(inputs, out_path, profile, key, workers)):
        if isinstance(outcome, DeidentificationError):
            result.quarantined[str(source)] = str(outcome)
            log.warning("quarantined %s: %s", source, outcome)
        elif isinstance(outcome, Exception):
            result.failed[str(source)] = str(outcome)
            log.warning("%s", outcome)
        else:
            written, replaced = outcome
            result.written.append(written)
            if record is not None:
                record.add(
                    replaced.pseudonym,
                    replaced.patient_id,
                    replaced.patient_name,
                    replaced.shift_days,
                    replaced.uids,
                )
    if quarantine_dir is not None and result.quarantined:
        q = Path(quarantine_dir)
        q.mkdir(parents=True, exist_ok=True)
        for number, source in enumerate(result.quarantined):
            shutil.copyfile(source, q / f"{number:06d}.dcm")
        report = {
            f"{n:06d}.dcm": {"input": s, "reason": r} for n, (s, r) in enumerate(result.quarantined.items())
        }
        write_atomic(q / QUARANTINE_REPORT, [json.dumps(report, indent=2).encode()], fsync=False)
    if record is not None and reid_public_key is not None and reid_map_dir is not None:
        result.reid_map = record.write(reid_map_dir, reid_public_key)
    return result
