"""Threshold segmenter: the kaapana.algorithm/v1 contract in a few lines (numpy + nibabel, no weights).

Reads the one NIfTI volume in $KAAPANA_INPUT_DIR, labels voxels in [lower, upper] with 1, writes
label_map.nii.gz (same grid) and labels.json to $KAAPANA_OUTPUT_DIR. Exit 3: no voxel in range.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np


def main() -> int:
    input_dir = Path(os.environ["KAAPANA_INPUT_DIR"])
    output_dir = Path(os.environ["KAAPANA_OUTPUT_DIR"])
    params = json.loads(Path(os.environ["KAAPANA_PARAMS_FILE"]).read_text())
    volumes = sorted(input_dir.glob("*.nii.gz"))
    if len(volumes) != 1:
        print(f"expected one NIfTI volume in {input_dir}, found {len(volumes)}", file=sys.stderr)
        return 2
    image = nib.load(volumes[0])
    data = np.asanyarray(image.dataobj)
    mask = (data >= float(params["lower"])) & (data <= float(params["upper"]))
    print(
        f"{volumes[0].name}: {int(mask.sum())} of {mask.size} voxels in [{params['lower']}, {params['upper']}]"
    )
    if not mask.any():
        return 3
    label_map = nib.Nifti1Image(mask.astype(np.uint8), image.affine)
    label_map.set_qform(image.affine, code=1)
    label_map.set_sform(image.affine, code=1)
    nib.save(label_map, output_dir / "label_map.nii.gz")
    (output_dir / "labels.json").write_text(json.dumps({"background": 0, params["label_name"]: 1}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
