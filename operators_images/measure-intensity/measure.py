"""Intensity measurements: the kaapana.algorithm/v1 contract reading DICOM (pydicom + numpy).

Reads every DICOM file in $KAAPANA_INPUT_DIR and $KAAPANA_SERIES_FILE, writes measurements.json (a flat
object of name -> number) to $KAAPANA_OUTPUT_DIR; the platform puts it into the series' index document.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pydicom


def main() -> int:
    input_dir = Path(os.environ["KAAPANA_INPUT_DIR"])
    params = json.loads(Path(os.environ["KAAPANA_PARAMS_FILE"]).read_text())
    series = json.loads(Path(os.environ["KAAPANA_SERIES_FILE"]).read_text())
    values = []
    for path in sorted(p for p in input_dir.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path)
            pixels = ds.pixel_array.astype(np.float64)
        except Exception as exc:  # the contract: log what is wrong, name the file
            print(f"{path.name}: skipped: {exc}", file=sys.stderr)
            continue
        values.append(
            pixels * float(getattr(ds, "RescaleSlope", 1)) + float(getattr(ds, "RescaleIntercept", 0))
        )
    if not values:
        print(f"no readable image in {input_dir}", file=sys.stderr)
        return 2
    voxels = np.concatenate([v.ravel() for v in values])
    measurements = {
        "voxels": int(voxels.size),
        "mean": round(float(voxels.mean()), 3),
        "min": float(voxels.min()),
        "max": float(voxels.max()),
        "voxels_above": int((voxels > float(params["above"])).sum()),
    }
    print(f"series {series.get('series_instance_uid')}: {measurements}")
    out = Path(os.environ["KAAPANA_OUTPUT_DIR"]) / "measurements.json"
    out.write_text(json.dumps(measurements))
    return 0


if __name__ == "__main__":
    sys.exit(main())
