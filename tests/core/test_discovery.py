"""DICOM file discovery: files without an extension, DICOMDIR media (written by pydicom's FileSet, and the
media pydicom ships), and the consumers that use it: NIfTI conversion, indexing, ingest by hand, sending."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom.data import get_testdata_file
from pydicom.fileset import FileSet

from airflow_provider_kaapana.core.dicom.discovery import dicom_files, dicomdir_files
from airflow_provider_kaapana.core.index.document import build_series_documents
from airflow_provider_kaapana.core.ingest import landing_series, receive_files, validate_series
from airflow_provider_kaapana.core.net.send import collect_dicom_files
from airflow_provider_kaapana.core.nifti.convert import convert_series
from airflow_provider_kaapana.exceptions import InvalidDicomError

PYDICOM_MEDIA = Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests"


def write_media(root: Path, names: list[str]) -> Path:
    """A PS3.10 media folder (DICOMDIR + ``PT000000/ST000000/SE000000/IM000000``...) made by pydicom."""
    fs = FileSet()
    for name in names:
        fs.add(pydicom.dcmread(get_testdata_file(name)))
    fs.write(root)
    (root / "README.TXT").write_text("burnt by a modality")
    return root


@pytest.fixture
def media(tmp_path: Path) -> Path:
    return write_media(tmp_path / "cd", ["CT_small.dcm", "MR_small.dcm"])


def test_media_files_come_from_the_directory_records(media):
    files = dicom_files(media)
    assert len(files) == 2 and all(p.suffix == "" and p.is_file() for p in files)
    assert files == dicomdir_files(media / "DICOMDIR") == dicom_files(media / "DICOMDIR")
    assert {pydicom.dcmread(p).SOPInstanceUID for p in files} == {
        pydicom.dcmread(get_testdata_file(n)).SOPInstanceUID for n in ("CT_small.dcm", "MR_small.dcm")
    }


def test_media_mounted_lower_case_is_resolved(media, tmp_path):
    lower = tmp_path / "lower"
    for path in sorted(media.rglob("*")):
        target = lower / str(path.relative_to(media)).lower()
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)
    (lower / "dicomdir").rename(lower / "DICOMDIR")
    assert len(dicom_files(lower)) == 2


def test_pydicom_media_records(tmp_path):
    files = dicom_files(PYDICOM_MEDIA)
    assert len(files) == 31 and all(p.is_relative_to(PYDICOM_MEDIA) for p in files)


def test_folders_without_dicomdir_are_walked(tmp_path):
    folder = tmp_path / "export"
    (folder / "SE1").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "SE1" / "IM00001")
    shutil.copy(get_testdata_file("MR_small.dcm"), folder / "b.dcm")
    shutil.copy(get_testdata_file("MR_small.dcm"), folder / ".hidden" / "x.dcm")
    (folder / "notes.txt").write_text("no")
    (folder / ".partial.part").write_bytes(b"x")
    assert [p.relative_to(folder).as_posix() for p in dicom_files(folder)] == [
        "SE1/IM00001",
        "b.dcm",
        "notes.txt",
    ]
    assert [p.name for p in dicom_files(folder, only_dicom=True)] == ["IM00001", "b.dcm"]
    assert [p.name for p in collect_dicom_files([folder])] == ["IM00001", "b.dcm"]
    with pytest.raises(FileNotFoundError):
        dicom_files(tmp_path / "nope")


def test_unreadable_dicomdir_is_named(tmp_path):
    (tmp_path / "DICOMDIR").write_bytes(b"garbage")
    with pytest.raises(InvalidDicomError, match="DICOMDIR: not a readable DICOMDIR"):
        dicom_files(tmp_path)


def test_nifti_converts_every_series_of_media_like_dcm2niix(media, tmp_path, tool):
    volumes = convert_series(media, tmp_path / "out")
    assert sorted(v.shape for v in volumes) == [(64, 64, 1), (128, 128, 1)]
    for volume in volumes:
        src = tmp_path / f"single_{volume.shape[0]}"
        src.mkdir()
        uid = volume.sop_instance_uids[0]
        (path,) = [
            p for p in dicom_files(media) if pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID == uid
        ]
        shutil.copy(path, src / "x.dcm")
        subprocess.run([tool("dcm2niix"), "-z", "n", "-f", "ref", "-o", str(src), str(src)], check=True,
                       capture_output=True)  # fmt: skip
        ref, ours = nib.load(src / "ref.nii"), nib.load(volume.nifti_path)
        np.testing.assert_allclose(ours.affine, ref.affine, atol=1e-3)
        np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(ref.dataobj).reshape(ours.shape))


def test_kaapana_nifti_cli_on_media(media, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "airflow_provider_kaapana.cli",
            "nifti",
            str(media),
            "-o",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "o").glob("*.nii.gz"))) == 2


def test_index_documents_from_media(media):
    documents, errors = build_series_documents([media])
    assert errors == []  # README.TXT is not in the records
    assert len(documents) == 2 and all(len(d.files) == 1 for d in documents)


def test_ingest_by_hand_receives_every_series_of_media(media, tmp_path):
    series = landing_series({"series_dir": str(media)})
    assert len(series) == 2
    for k, landing in enumerate(series):
        dest = tmp_path / f"ws{k}"
        received = receive_files(landing, dest)
        # nested media paths become flat, unique names in the workspace
        assert [p.name for p in received] == ["_".join(f.relative_to(media).parts) for f in landing.files]
        validated = validate_series(
            {"series_dir": str(dest), "series_instance_uid": landing.series_instance_uid}
        )
        assert validated["instances"] == 1 and validated["quarantined"] == []
    assert len(landing_series({"series_dir": str(media / "DICOMDIR")})) == 2
