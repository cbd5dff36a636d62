"""The ACDC intensity statistics behind AttenScribble's ``crf_sigma_intensity`` (docs/methods/attenscribble.md).

    python benchmarks/acdc_intensity_stats.py [--acdc ../shared/data/ACDC]

For each ACDC volume: ``(max - min) / std`` and ``(p99.5 - p0.5) / std``. nnU-Net z-scores each MRI volume
by its mean and std; the paper min-max scales it to [0, 1] and uses sigma_I = 0.1 of that range, so 0.1 of
the median range says what sigma_I is in z-scores.
"""
from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--acdc", type=Path, default=HERE.parents[1] / "shared" / "data" / "ACDC")
    args = p.parse_args()
    import SimpleITK as sitk

    from nnunet_scribble.image_io import read_image

    sitk.ProcessObject_SetGlobalWarningDisplay(False)   # ACDC's "unexpected scales in sform", once per file

    files = sorted(glob.glob(str(args.acdc / "training" / "patient*" / "patient*_frame??.nii.gz")))
    if not files:
        sys.exit(f"no ACDC volumes under {args.acdc}/training")
    full, robust = [], []
    for f in files:
        a = sitk.GetArrayFromImage(read_image(f)).astype(np.float64)
        full.append((a.max() - a.min()) / a.std())
        robust.append((np.percentile(a, 99.5) - np.percentile(a, 0.5)) / a.std())
    for label, v in (("(max - min) / std", np.array(full)), ("(p99.5 - p0.5) / std", np.array(robust))):
        print(f"{label}: median {np.median(v):.2f}, p10 {np.percentile(v, 10):.2f}, p90 {np.percentile(v, 90):.2f} "
              f"(n={len(v)}) -> 0.1 of that range = {0.1 * np.median(v):.2f} z-scores")


if __name__ == "__main__":
    main()
