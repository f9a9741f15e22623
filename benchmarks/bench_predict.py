"""Benchmark: one case through ``kaapana predict`` and through ``nnUNetv2_predict``, same model and flags.

Both are run end to end as processes (start-up, model load, preprocessing, prediction, export),
alternating, after one warm-up each; the ratio is nnUNetv2_predict's median time over ours (goal >= 0.95:
our wrapper adds nothing). Uses the cached tiny model (trained on first use, ~1.5 min on CPU).

    python benchmarks/bench_predict.py [--size 64] [--repeats 3] [--device cpu|cuda] [--no-tta]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from airflow_provider_kaapana.testing.benchresult import print_result  # noqa: E402
from airflow_provider_kaapana.testing.tiny_model import (  # noqa: E402
    TINY_DATASET_ID,
    dice_score,
    train_tiny_model,
    write_tiny_case,
)


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{command[0]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="edge of the cubic test case in voxels")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--no-tta", dest="tta", action="store_false")
    parser.add_argument(
        "--cache-dir", default=None, help="tiny-model cache (default ~/.cache/kaapana/tiny-model)"
    )
    args = parser.parse_args()

    model_dir = train_tiny_model(cache_dir=args.cache_dir)
    work = Path(tempfile.mkdtemp(prefix="bench-predict-"))
    case = write_tiny_case(work / "in", case_id="bench", size=args.size, seed=31)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    # nnUNetv2_predict finds the model through nnUNet_results + dataset id; set for its process only
    nnunet_env = dict(env, nnUNet_results=str(model_dir.parent.parent))
    tta = [] if args.tta else ["--no-tta"]
    ours = [
        sys.executable, "-m", "airflow_provider_kaapana", "predict", "--model", str(model_dir),
        "-i", str(work / "in"), "-o", str(work / "ours"), "--device", args.device, "--folds", "0",
        "--step-size", "0.5", *tta,
    ]  # fmt: skip
    peer = [
        str(Path(sys.executable).parent / "nnUNetv2_predict"), "-d", str(TINY_DATASET_ID), "-c", "3d_fullres",
        "-i", str(work / "in"), "-o", str(work / "peer"), "-device", args.device, "-f", "0",
        "-step_size", "0.5", *(["--disable_tta"] if not args.tta else []), "--disable_progress_bar",
    ]  # fmt: skip

    timed(ours, env)
    timed(peer, nnunet_env)
    ours_times, peer_times = [], []
    for _ in range(args.repeats):
        ours_times.append(timed(ours, env))
        peer_times.append(timed(peer, nnunet_env))

    import nibabel as nib

    ours_pred = nib.load(work / "ours" / "bench.nii.gz").get_fdata()
    peer_pred = nib.load(work / "peer" / "bench.nii.gz").get_fdata()
    ours_median, peer_median = statistics.median(ours_times), statistics.median(peer_times)
    print(
        f"case {args.size}^3, device {args.device}, tta {args.tta}, fold 0, {args.repeats} repeats (median)"
    )
    print(f"kaapana predict : {ours_median:7.2f} s  {[round(t, 2) for t in ours_times]}")
    print(f"nnUNetv2_predict: {peer_median:7.2f} s  {[round(t, 2) for t in peer_times]}")
    print(f"ratio (nnUNetv2_predict / kaapana predict): {peer_median / ours_median:.3f}x  (goal >= 0.95x)")
    print(f"identical label maps: {bool((ours_pred == peer_pred).all())}; Dice vs truth "
          f"{dice_score(ours_pred, case.truth):.3f}")  # fmt: skip
    print_result(
        "predict",
        "median s per case",
        ours_median,
        peer_median,
        "nnUNetv2_predict",
        ">= 0.95x",
        peer_median / ours_median >= 0.95,
        higher_is_better=False,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
