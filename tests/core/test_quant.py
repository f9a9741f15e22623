"""core.quant: statistics and evaluation on synthetic series with known shapes, against analytic and
brute-force values.

Tolerances (stated, not tuned per run): voxel-count sphere volume within 3 % at 1 mm voxels and 5 % on an
oblique 0.8 x 0.8 x 2 mm grid; marching-cubes surface within 10 % of 4 pi r^2 at 1 mm and 16 % on that
grid (the mesh of a binary mask overestimates a smooth surface: +9 % at 1 mm, +14 % with 2 mm slices); centroid within 0.2 mm; noise-free intensities exact.
Surface distances equal explicit point-set distances (scipy cdist) to 1e-9 mm.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from airflow_provider_kaapana.core.quant.evaluation import border, compare_masks, segmentation_evaluation
from airflow_provider_kaapana.core.quant.inputs import Grid
from airflow_provider_kaapana.core.quant.statistics import SCHEMA, intensity_statistics, segment_statistics
from airflow_provider_kaapana.core.seg.export import export_seg
from airflow_provider_kaapana.testing.synthetic import Shape
from tests.core.test_seg import DATASET_JSON, save_label_map

CENTER = (0.0, 0.0, 0.0)
INTERFACE_KEYS = {
    "segment_number", "label", "code", "empty", "voxel_count", "volume_ml", "mean", "sd", "min", "max",
    "median", "p05", "p25", "p75", "p95", "surface_mm2", "sphericity",
}  # fmt: skip


def _sphere_series(synthetic_series, name="s", **kw):
    spec = dict(
        rows=48, columns=48, slices=48, slice_spacing=1.0, origin=(-24.0, -24.0, -24.0), noise_sd=0.0,
        shapes=[Shape(1, CENTER, radius=12.0, intensity=1040.0), Shape(2, (-16.0, -16.0, 16.0), radius=4.0)],
    )  # fmt: skip
    spec.update(kw)
    return synthetic_series(name, **spec)


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(DATASET_JSON))
    return path


def test_sphere_statistics_match_analytic_values(synthetic_series, tmp_path):
    series = _sphere_series(synthetic_series)
    label_map = save_label_map(series, tmp_path / "l.nii.gz", variant="canonical")
    doc = segment_statistics(series.series_dir, label_map, label_config=_config(tmp_path))
    assert doc["schema"] == SCHEMA
    assert doc["image"] == {
        "modality": "CT", "intensity_unit": "HU", "voxel_spacing_mm": pytest.approx([1.0, 1.0, 1.0]),
        "resampled": False,
    }  # fmt: skip
    assert doc["source"]["image_series_instance_uid"] == series.series_instance_uid
    by_number = {s["segment_number"]: s for s in doc["segments"]}
    assert sorted(by_number) == [1, 2, 3]
    liver = by_number[1]
    assert INTERFACE_KEYS <= set(liver)
    assert liver["label"] == "liver" and liver["code"]["scheme"] == "SCT"
    r = 12.0
    assert liver["voxel_count"] == int(np.count_nonzero(series.truth == 1))
    assert liver["volume_ml"] == pytest.approx(4 / 3 * math.pi * r**3 / 1000, rel=0.03)
    assert liver["surface_mm2"] == pytest.approx(4 * math.pi * r**2, rel=0.10)
    assert 0.85 < liver["sphericity"] <= 1.0
    assert liver["centroid_lps_mm"] == pytest.approx(list(CENTER), abs=0.2)
    assert liver["elongation"] == pytest.approx(1.0, abs=0.02)
    assert liver["flatness"] == pytest.approx(1.0, abs=0.02)
    for key in ("mean", "min", "max", "median", "p05", "p95"):
        assert liver[key] == pytest.approx(40.0)  # -1000 HU background + 1040
    assert liver["sd"] == pytest.approx(0.0)
    # label 3 is in the config but not in the map: described, empty, no intensities
    kidney = by_number[3]
    assert kidney["empty"] is True and kidney["voxel_count"] == 0 and kidney["volume_ml"] == 0.0
    assert all(kidney[k] is None for k in ("mean", "sd", "min", "max", "median", "p05", "p25", "p75", "p95"))
    json.dumps(doc, allow_nan=False)


def test_oblique_anisotropic_grid(synthetic_series, tmp_path):
    series = _sphere_series(
        synthetic_series, rows=64, columns=64, slices=24, pixel_spacing=(0.8, 0.8), slice_spacing=2.0,
        orientation="oblique", origin=(-25.6, -25.6, -24.0), shapes=[Shape(1, CENTER, radius=10.0)],
    )  # fmt: skip
    label_map = save_label_map(series, tmp_path / "l.nii.gz", variant="dicom")
    seg = next(
        s for s in segment_statistics(series.series_dir, label_map)["segments"] if s["segment_number"] == 1
    )
    assert seg["volume_ml"] == pytest.approx(4 / 3 * math.pi * 1000 / 1000, rel=0.05)
    assert seg["surface_mm2"] == pytest.approx(4 * math.pi * 100, rel=0.16)  # staircase of 2 mm slices
    # the centroid is in patient space, whatever the grid's orientation
    assert seg["centroid_lps_mm"] == pytest.approx([0.0, 0.0, 0.0], abs=0.3)


@pytest.mark.parametrize("segmentation_type", ["BINARY", "FRACTIONAL", "LABELMAP"])
def test_seg_and_label_map_give_the_same_numbers(synthetic_series, tmp_path, segmentation_type):
    series = _sphere_series(synthetic_series, noise_sd=20.0)
    config = _config(tmp_path)
    label_map = save_label_map(series, tmp_path / "l.nii.gz")
    seg_path = tmp_path / "seg.dcm"
    export_seg(label_map, series.series_dir, config, seg_path, segmentation_type=segmentation_type)
    from_map = segment_statistics(series.series_dir, label_map, label_config=config)
    from_seg = segment_statistics(series.series_dir, seg_path)
    assert from_seg["source"]["segmentation_sop_instance_uid"]
    assert from_seg["algorithm"]["name"]
    for a, b in zip(from_map["segments"], from_seg["segments"]):
        assert a["segment_number"] == b["segment_number"] and a["code"] == b["code"]
        for key in ("voxel_count", "volume_ml", "mean", "sd", "p95", "surface_mm2"):
            assert a[key] == pytest.approx(b[key]), key
    liver = from_seg["segments"][0]
    assert liver["mean"] == pytest.approx(40.0, abs=5 * 20.0 / math.sqrt(liver["voxel_count"]))


def test_intensity_statistics_are_numpy_linear_percentiles():
    values = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    stats = intensity_statistics(values)
    assert stats["p25"] == 2.0 and stats["p05"] == pytest.approx(1.2) and stats["p95"] == pytest.approx(14.4)
    assert stats["sd"] == pytest.approx(np.std(values))  # population SD (1/N), as IBSI
    assert all(v is None for v in intensity_statistics(np.array([])).values())


def _grid(spacing_crs=(0.7, 1.1, 2.5), oblique: bool = False) -> Grid:
    affine = np.diag([*spacing_crs, 1.0])
    if oblique:
        from airflow_provider_kaapana.testing.synthetic import oblique_orientation

        row, col = (np.asarray(v) for v in oblique_orientation(25.0))
        affine[:3, :3] = np.stack([row, col, np.cross(row, col)], axis=1) * np.asarray(spacing_crs)
    return Grid((12, 14, 16), affine)


def _brute_force(reference, test, grid, tolerance):
    def points(mask):
        return grid.index_to_lps(np.argwhere(border(mask)))

    pr, pt = points(reference), points(test)
    d = cdist(pr, pt)
    d_ref, d_test = d.min(axis=1), d.min(axis=0)
    both = np.concatenate([d_ref, d_test])
    return {
        "hausdorff_mm": max(d_ref.max(), d_test.max()),
        "hd95_mm": max(np.percentile(d_ref, 95), np.percentile(d_test, 95)),
        "assd_mm": both.mean(),
        "surface_dice": np.mean(both <= tolerance),
    }


@pytest.mark.parametrize(("seed", "oblique"), [(0, False), (1, False), (2, True)])
def test_surface_distances_equal_brute_force(seed, oblique):
    rng = np.random.default_rng(seed)
    grid = _grid(oblique=oblique)
    k, r, c = np.indices(grid.shape)
    reference = ((k - 6) / 3.0) ** 2 + ((r - 7) / 4.0) ** 2 + ((c - 8) / 5.0) ** 2 <= 1.0
    test = reference.copy()
    test[3:6, 2:5, 1:4] = True  # a separate lump
    test ^= rng.random(grid.shape) < 0.02  # speckle
    got = compare_masks(reference, test, grid, tolerance_mm=1.5)
    expected = _brute_force(reference, test, grid, 1.5)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    n_ref, n_test, n_both = reference.sum(), test.sum(), (reference & test).sum()
    assert got["dice"] == pytest.approx(2 * n_both / (n_ref + n_test))
    assert got["jaccard"] == pytest.approx(n_both / (n_ref + n_test - n_both))
    voxel_ml = 0.7 * 1.1 * 2.5 / 1000
    assert got["volume_difference_ml"] == pytest.approx((n_test - n_ref) * voxel_ml)


def test_sheared_grid_is_refused():
    from airflow_provider_kaapana.exceptions import GeometryError

    grid = _grid()
    grid.affine_lps[0, 2] = 0.5  # slices stacked at a slant
    mask = np.zeros(grid.shape, dtype=bool)
    mask[2:5, 2:5, 2:5] = True
    with pytest.raises(GeometryError, match="sheared"):
        compare_masks(mask, np.roll(mask, 1, axis=0), grid)


def test_shift_by_one_slice_is_one_slice_spacing():
    grid = _grid()
    reference = np.zeros(grid.shape, dtype=bool)
    reference[3:8, 4:10, 4:12] = True
    test = np.roll(reference, 1, axis=0)
    got = compare_masks(reference, test, grid, tolerance_mm=2.0)
    assert got["hausdorff_mm"] == pytest.approx(2.5)
    assert got["surface_dice"] < 1.0
    assert compare_masks(reference, test, grid, tolerance_mm=2.5)["surface_dice"] == 1.0


def test_empty_reference_and_or_test_are_defined():
    grid = _grid()
    empty = np.zeros(grid.shape, dtype=bool)
    mask = empty.copy()
    mask[2:5, 2:5, 2:5] = True
    both = compare_masks(empty, empty, grid)
    assert both["dice"] == 1.0 and both["hausdorff_mm"] == 0.0 and both["surface_dice"] == 1.0
    assert both["relative_volume_difference"] is None
    for ref, test in ((empty, mask), (mask, empty)):
        one = compare_masks(ref, test, grid)
        assert one["dice"] == 0.0 and one["jaccard"] == 0.0 and one["surface_dice"] == 0.0
        assert one["hausdorff_mm"] is None and one["hd95_mm"] is None and one["assd_mm"] is None
    assert compare_masks(mask, mask, grid)["dice"] == 1.0


def test_evaluation_of_seg_against_label_map(synthetic_series, tmp_path):
    series = _sphere_series(synthetic_series)
    config = _config(tmp_path)
    label_map = save_label_map(series, tmp_path / "l.nii.gz")
    seg_path = tmp_path / "seg.dcm"
    export_seg(label_map, series.series_dir, config, seg_path)
    doc = segmentation_evaluation(label_map, seg_path, series_dir=series.series_dir, label_config=config)
    assert [s["dice"] for s in doc["segments"]] == [1.0, 1.0, 1.0]
    assert all(s["hausdorff_mm"] == 0.0 for s in doc["segments"])
    assert doc["segments"][2]["reference_empty"] and doc["segments"][2]["test_empty"]  # kidney_left


def kaapana(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "airflow_provider_kaapana", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_stats_and_evaluate(synthetic_series, tmp_path):
    series = _sphere_series(synthetic_series)
    label_map = save_label_map(series, tmp_path / "l.nii.gz")
    out = tmp_path / "stats.json"
    proc = kaapana("stats", "--source", str(series.series_dir), "--seg", str(label_map), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["segments"][0]["voxel_count"] == int(
        np.count_nonzero(series.truth == 1)
    )
    ev = tmp_path / "eval.json"
    proc = kaapana("evaluate", "--reference", str(label_map), "--test", str(label_map), "-o", str(ev))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(ev.read_text())["segments"][0]["dice"] == 1.0
    proc = kaapana("stats", "--source", str(tmp_path / "nope"), "--seg", str(label_map), "-o", str(out))
    assert proc.returncode == 1 and "kaapana stats:" in proc.stderr


def test_index_moments_equal_explicit_voxel_lists():
    from airflow_provider_kaapana.core.quant.shape import index_moments

    crop = np.random.default_rng(3).random((7, 9, 11)) < 0.3
    offset = np.array([4.0, 2.0, 5.0])
    count, mean, cov = index_moments(crop, offset)
    points = np.argwhere(crop) + offset
    assert count == len(points)
    assert mean == pytest.approx(points.mean(axis=0))
    assert cov == pytest.approx(np.cov(points.T, bias=True))
