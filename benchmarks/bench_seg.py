"""Benchmark: NIfTI label map -> DICOM SEG for a 512x512x300 CT with 5 labels.

Compares :func:`airflow_provider_kaapana.core.seg.export.export_seg` with a straightforward highdicom use on the
same data in the same run (read the series with pixels, sort, one-hot stack, ``hd.seg.Segmentation``
with defaults). Each runs in its own subprocess so its peak RSS is clean. Two more rows show ours with
the label map reoriented to RAS (flipped axes: exact re-indexing) and on a coarser 1.5 mm grid
(nearest-neighbour resample); the plain use cannot handle either without extra code.

    python benchmarks/bench_seg.py [--slices 300] [--size 512] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LABELS = {"background": 0, "liver": 1, "spleen": 2, "kidney_left": 3, "kidney_right": 4, "tumor": 5}


def _prepare(workdir: Path, size: int, slices: int) -> tuple[Path, Path, Path]:
    import nibabel as nib
    import numpy as np

    from airflow_provider_kaapana.testing.synthetic import Shape, generate_series

    source_dir = workdir / "source"
    label_map = workdir / "labels.nii.gz"
    config = workdir / "dataset.json"
    if label_map.exists() and config.exists():
        return source_dir, label_map, config
    half = size / 2
    extent_z = slices * 1.0
    shapes = [
        Shape(1, (-0.3 * half, 0.1 * half, 0.5 * extent_z), radius=0.35 * half),
        Shape(2, (0.5 * half, 0.3 * half, 0.55 * extent_z), radius=0.15 * half),
        Shape(
            3, (0.4 * half, -0.4 * half, 0.35 * extent_z), half_size=(0.1 * half, 0.12 * half, 0.1 * extent_z)
        ),
        Shape(
            4,
            (-0.4 * half, -0.4 * half, 0.35 * extent_z),
            half_size=(0.1 * half, 0.12 * half, 0.1 * extent_z),
        ),
        Shape(5, (-0.3 * half, 0.1 * half, 0.5 * extent_z), radius=0.08 * half),
    ]
    series = generate_series(
        source_dir,
        rows=size,
        columns=size,
        slices=slices,
        pixel_spacing=(1.0, 1.0),
        slice_spacing=1.0,
        origin=(-half, -half, 0.0),
        shapes=shapes,
        noise_sd=0.0,
    )
    nib.save(
        nib.Nifti1Image(np.ascontiguousarray(series.truth.transpose(2, 1, 0)), series.affine_ras), label_map
    )
    config.write_text(json.dumps({"labels": LABELS}))
    return source_dir, label_map, config


def _variants(workdir: Path, label_map: Path) -> dict[str, Path]:
    """The same labels as nibabel's RAS-canonical volume (flipped axes) and on a coarser 1.5 mm grid."""
    import nibabel as nib
    import numpy as np

    canonical, coarse = workdir / "labels_ras.nii.gz", workdir / "labels_coarse.nii.gz"
    if not canonical.exists():
        img = nib.load(str(label_map))
        nib.save(nib.as_closest_canonical(img), canonical)
        data = np.asanyarray(img.dataobj)
        idx = [np.round(np.arange(0, n - 0.5, 1.5)).astype(int) for n in data.shape]
        scale = np.diag([1.5, 1.5, 1.5, 1.0])
        nib.save(nib.Nifti1Image(np.ascontiguousarray(data[np.ix_(*idx)]), img.affine @ scale), coarse)
    return {"ras": canonical, "coarse": coarse}


def _run_ours(source_dir: Path, label_map: Path, config: Path, out: Path) -> dict:
    from airflow_provider_kaapana.core.seg.export import export_seg

    start = time.perf_counter()
    result = export_seg(label_map, source_dir, config, out, model_id="bench")
    return {"seconds": time.perf_counter() - start, "frames": result.number_of_frames}


def _run_plain(source_dir: Path, label_map: Path, config: Path, out: Path) -> dict:
    """What a first highdicom user writes: full datasets, sort, one-hot 4-D mask, defaults."""
    import highdicom as hd
    import nibabel as nib
    import numpy as np
    import pydicom
    from pydicom.sr.codedict import codes

    start = time.perf_counter()
    datasets = [pydicom.dcmread(p) for p in sorted(source_dir.glob("*.dcm"))]
    normal = np.cross(
        np.asarray(datasets[0].ImageOrientationPatient[:3], float),
        np.asarray(datasets[0].ImageOrientationPatient[3:], float),
    )
    datasets.sort(key=lambda ds: float(np.dot(np.asarray(ds.ImagePositionPatient, float), normal)))
    labels = np.asanyarray(nib.load(str(label_map)).dataobj).transpose(2, 1, 0)  # grids known to coincide
    names = {v: k for k, v in json.loads(config.read_text())["labels"].items() if v}
    mask = np.stack([labels == v for v in sorted(names)], axis=-1)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="nnU-Net", family=codes.cid7162.ArtificialIntelligence, version="2"
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i,
            segment_label=names[v],
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type="AUTOMATIC",
            algorithm_identification=algorithm,
        )
        for i, v in enumerate(sorted(names), start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=mask,
        segmentation_type="BINARY",
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=901,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="bench",
        manufacturer_model_name="bench",
        software_versions="0",
        device_serial_number="0",
    )
    seg.save_as(out)
    return {"seconds": time.perf_counter() - start, "frames": int(seg.NumberOfFrames)}


def _child(args: argparse.Namespace) -> int:
    run = _run_ours if args.child == "ours" else _run_plain
    result = run(Path(args.source), Path(args.labels), Path(args.config), Path(args.out))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))
    return 0


def _measure(kind: str, source_dir: Path, label_map: Path, config: Path, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", kind]
    cmd += [
        "--source",
        str(source_dir),
        "--labels",
        str(label_map),
        "--config",
        str(config),
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--workdir", default=None, help="keep the generated data here (default: a temp dir)")
    parser.add_argument("--child", choices=["ours", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--labels", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(args)

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-seg-"))
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    source_dir, label_map, config = _prepare(workdir, args.size, args.slices)
    print(
        f"data: {args.size}x{args.size}x{args.slices}, 5 labels, prepared in {time.perf_counter() - start:.1f} s"
    )
    ours = _measure("ours", source_dir, label_map, config, workdir / "ours.dcm")
    plain = _measure("plain", source_dir, label_map, config, workdir / "plain.dcm")
    variants = _variants(workdir, label_map)
    ours_ras = _measure("ours", source_dir, variants["ras"], config, workdir / "ours_ras.dcm")
    ours_coarse = _measure("ours", source_dir, variants["coarse"], config, workdir / "ours_coarse.dcm")
    rows = (
        ("export_seg (ours)", ours),
        ("plain highdicom", plain),
        ("ours, RAS label map", ours_ras),
        ("ours, 1.5 mm grid", ours_coarse),
    )
    for name, r in rows:
        print(f"{name:20s} {r['seconds']:7.2f} s  peak RSS {r['peak_rss_mb']:7.0f} MB  frames {r['frames']}")
    print(
        f"ratio ours/plain: time {ours['seconds'] / plain['seconds']:.2f}x, "
        f"peak RSS {ours['peak_rss_mb'] / plain['peak_rss_mb']:.2f}x"
    )
    met = ours["seconds"] <= 1 and ours["peak_rss_mb"] <= 2048  # issue 20: 1 s (it was 10 s before)
    print(f"goal (<= 1 s, <= 2048 MB): {'met' if met else 'NOT met'}")
    from airflow_provider_kaapana.testing.benchresult import print_result

    print_result(
        "seg",
        "export s",
        ours["seconds"],
        plain["seconds"],
        "plain highdicom",
        "<= 1 s, <= 2 GB",
        met,
        higher_is_better=False,
    )
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
