"""Benchmark: per-segment statistics and segmentation evaluation on a 512x512x300 CT with 5 labels.

Rows, each in its own subprocess so its peak RSS is clean:

* ``segment_statistics`` (ours: read series + label map, all statistics incl. marching-cubes surface)
  against SimpleITK's ``LabelShapeStatisticsImageFilter`` (with perimeter) and
  ``LabelIntensityStatisticsImageFilter`` on the same files (``ImageSeriesReader`` + ``ReadImage``).
  Goal for ours: <= 2 s, <= 1 GB.
* ``segmentation_evaluation`` of two label maps (the truth and a copy shifted by (2, 1, 0) voxels)
  against MONAI's Dice, Hausdorff, HD95, ASSD and surface Dice on one-hot tensors, when MONAI is
  installed. Goal for ours: <= 5 s.

    python benchmarks/bench_stats.py [--slices 300] [--size 512] [--workdir DIR]
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

from bench_seg import _prepare  # the same 512x512x300 CT with 5 labels as the SEG benchmark

SPACING = (1.0, 1.0, 1.0)  # the prepared series' voxel size, (x, y, z) mm
TOLERANCE_MM = 1.0


def _shifted(workdir: Path, label_map: Path) -> Path:
    import nibabel as nib
    import numpy as np

    out = workdir / "labels_shifted.nii.gz"
    if not out.exists():
        img = nib.load(str(label_map))
        data = np.roll(np.asanyarray(img.dataobj), (2, 1, 0), axis=(0, 1, 2))
        nib.save(nib.Nifti1Image(np.ascontiguousarray(data), img.affine), out)
    return out


def _stats_ours(source: Path, labels: Path, config: Path, _: Path) -> dict:
    from airflow_provider_kaapana.core.quant.statistics import segment_statistics

    start = time.perf_counter()
    doc = segment_statistics(source, labels, label_config=config)
    return {"seconds": time.perf_counter() - start, "volumes_ml": [s["volume_ml"] for s in doc["segments"]]}


def _stats_sitk(source: Path, labels: Path, config: Path, _: Path) -> dict:
    import SimpleITK as sitk

    start = time.perf_counter()
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(source)))
    image = reader.Execute()  # GDCM applies the rescale: HU
    label = sitk.ReadImage(str(labels))
    label.CopyInformation(image)  # same grid, as the prepared data is made
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.ComputePerimeterOn()
    shape.Execute(label)
    intensity = sitk.LabelIntensityStatisticsImageFilter()
    intensity.Execute(label, image)
    volumes = [shape.GetPhysicalSize(v) / 1000 for v in shape.GetLabels()]
    _ = [(intensity.GetMean(v), intensity.GetMedian(v), shape.GetPerimeter(v)) for v in shape.GetLabels()]
    return {"seconds": time.perf_counter() - start, "volumes_ml": volumes}


def _eval_ours(reference: Path, test: Path, config: Path, _: Path) -> dict:
    from airflow_provider_kaapana.core.quant.evaluation import segmentation_evaluation

    start = time.perf_counter()
    doc = segmentation_evaluation(reference, test, tolerance_mm=TOLERANCE_MM, label_config=config)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "hd95": [s["hd95_mm"] for s in doc["segments"]]}


def _eval_monai(reference: Path, test: Path, config: Path, _: Path) -> dict:
    import nibabel as nib
    import numpy as np
    import torch
    from monai.metrics import (
        compute_average_surface_distance,
        compute_dice,
        compute_hausdorff_distance,
        compute_surface_dice,
    )

    start = time.perf_counter()
    ref = np.asanyarray(nib.load(str(reference)).dataobj)
    tst = np.asanyarray(nib.load(str(test)).dataobj)
    n = 6

    def one_hot(a):
        return torch.from_numpy(np.stack([a == v for v in range(n)])[None])

    r, t = one_hot(ref), one_hot(tst)
    compute_dice(t, r, include_background=False)
    hd95 = compute_hausdorff_distance(t, r, include_background=False, percentile=95, spacing=SPACING)
    compute_hausdorff_distance(t, r, include_background=False, spacing=SPACING)
    compute_average_surface_distance(t, r, include_background=False, symmetric=True, spacing=SPACING)
    compute_surface_dice(t, r, [TOLERANCE_MM] * (n - 1), include_background=False, spacing=SPACING)
    return {"seconds": time.perf_counter() - start, "hd95": [float(x) for x in hd95[0]]}


RUNS = {
    "stats_ours": _stats_ours,
    "stats_sitk": _stats_sitk,
    "eval_ours": _eval_ours,
    "eval_monai": _eval_monai,
}


def _child(args: argparse.Namespace) -> int:
    result = RUNS[args.child](Path(args.a), Path(args.b), Path(args.config), Path(args.a))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))
    return 0


def _measure(kind: str, a: Path, b: Path, config: Path) -> dict | None:
    cmd = [sys.executable, __file__, "--child", kind, "--a", str(a), "--b", str(b), "--config", str(config)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        print(f"{kind} failed:\n{proc.stderr[-2000:]}")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--workdir", default=None, help="keep the generated data here (default: a temp dir)")
    parser.add_argument("--child", choices=sorted(RUNS), help=argparse.SUPPRESS)
    parser.add_argument("--a", help=argparse.SUPPRESS)
    parser.add_argument("--b", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(args)

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-stats-"))
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    source_dir, label_map, config = _prepare(workdir, args.size, args.slices)
    shifted = _shifted(workdir, label_map)
    print(
        f"data: {args.size}x{args.size}x{args.slices}, 5 labels, prepared in {time.perf_counter() - start:.1f} s"
    )
    from airflow_provider_kaapana.testing.benchresult import print_result

    pairs = (
        ("statistics", "segment_statistics (ours)", "stats_ours", "SimpleITK shape+intensity", "stats_sitk"),
        ("evaluation", "segmentation_evaluation (ours)", "eval_ours", "MONAI metrics", "eval_monai"),
    )
    for what, our_name, ours_kind, peer_name, peer_kind in pairs:
        a, b = (source_dir, label_map) if what == "statistics" else (label_map, shifted)
        ours, peer = _measure(ours_kind, a, b, config), _measure(peer_kind, a, b, config)
        print(f"\n{what}:")
        for name, row in ((our_name, ours), (peer_name, peer)):
            if row is not None:
                print(f"  {name:34s} {row['seconds']:7.2f} s  peak RSS {row['peak_rss_mb']:7.0f} MB")
        if ours and peer:
            print(f"  peer / ours: {peer['seconds'] / ours['seconds']:.2f}x time")
            key = "volumes_ml" if what == "statistics" else "hd95"
            print(f"  ours {key}: {[round(x, 3) for x in ours[key]]}")
            print(f"  peer {key}: {[round(x, 3) for x in peer[key]]}")
        if ours:
            limit_s, limit_mb = (2.0, 1024) if what == "statistics" else (5.0, None)
            print_result(
                "stats",
                f"{what} s",
                ours["seconds"],
                peer["seconds"] if peer else None,
                peer_name if peer else None,
                "<= 2 s, <= 1 GB" if limit_mb else "<= 5 s",
                ours["seconds"] <= limit_s and (limit_mb is None or ours["peak_rss_mb"] <= limit_mb),
                higher_is_better=False,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
