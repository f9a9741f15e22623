"""``kaapana seg`` refuses label maps that would give a wrong SEG silently (issue 19 item 7).

A label map of the wrong shape and no sidecar used to export a partial mask without a word; a label map
whose affine disagrees with its sidecar was silently resampled.
"""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from airflow_provider_kaapana.core.seg.export import export_seg
from airflow_provider_kaapana.exceptions import GeometryError
from tests.core.test_seg import DATASET_JSON, THREE_SHAPES, save_label_map


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(DATASET_JSON))
    return path


def test_a_label_map_that_does_not_cover_the_source_is_refused(synthetic_series, tmp_path, config):
    series = synthetic_series(shapes=THREE_SHAPES)
    full = nib.load(save_label_map(series, tmp_path / "full.nii.gz"))
    cropped = np.asarray(full.dataobj)[:, :, :13]  # 3 of 16 slices missing: the wrong shape
    nib.save(nib.Nifti1Image(cropped, full.affine), tmp_path / "cropped.nii.gz")
    with pytest.raises(
        GeometryError, match=r"shape \[32, 32, 13\]\) does not cover the source series"
    ) as err:
        export_seg(tmp_path / "cropped.nii.gz", series.series_dir, config, tmp_path / "seg.dcm")
    assert "3 of 16 slices reach outside it" in str(err.value) and not (tmp_path / "seg.dcm").exists()

    proc = subprocess.run(
        [sys.executable, "-m", "airflow_provider_kaapana", "seg", "--labels", str(tmp_path / "cropped.nii.gz"),
         "--source", str(series.series_dir), "--config", str(config), "-o", str(tmp_path / "seg.dcm")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1 and "refusing to export a partial mask" in proc.stderr
    assert not (tmp_path / "seg.dcm").exists()
    # the full label map still exports
    export_seg(tmp_path / "full.nii.gz", series.series_dir, config, tmp_path / "ok.dcm")


def test_a_label_map_whose_affine_disagrees_with_its_sidecar_is_refused(synthetic_series, tmp_path, config):
    series = synthetic_series(shapes=THREE_SHAPES)
    label_map = save_label_map(series, tmp_path / "case.nii.gz")
    shifted = series.affine_ras.copy()
    shifted[:3, 3] += [0.0, 0.0, 2.0]  # one slice further along: what the sidecar says is the image
    sidecar = {
        "sop_instance_uids": series.sop_instance_uids,
        "series_instance_uid": series.series_instance_uid,
        "affine": shifted.tolist(),
        "shape": [32, 32, 16],
    }
    (tmp_path / "case.json").write_text(json.dumps(sidecar))
    with pytest.raises(
        GeometryError, match=r"case.json: the label map's affine differs from its sidecar's by up to 2 mm"
    ):
        export_seg(label_map, series.series_dir, config, tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists()


def test_a_label_map_on_another_grid_short_of_the_corners_is_exported_with_a_warning(
    synthetic_series, tmp_path, config, caplog
):
    """A model's own (axial, 1 mm) grid that ends short of an oblique source's corners: not refused,
    but the warning says how many slices reach outside it."""
    series = synthetic_series(orientation="oblique", shapes=THREE_SHAPES)
    size = 30
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = -(size - 1) / 2
    labels = np.zeros((size, size, size), dtype=np.uint8)
    labels[10:20, 10:20, 10:20] = 1
    nib.save(nib.Nifti1Image(labels, affine), tmp_path / "axial.nii.gz")
    caplog.set_level("WARNING")
    result = export_seg(tmp_path / "axial.nii.gz", series.series_dir, config, tmp_path / "seg.dcm")
    assert result.resampled and result.seg_path.exists()
    assert "does not cover the source series" in caplog.text and "exported as background" in caplog.text
