"""Every converter's output passes `nnUNetv2_extract_fingerprint -d ... --verify_dataset_integrity`.

One nnU-Net run checks all datasets. Its cost is mostly fixed per dataset (nnU-Net samples 10^8 foreground
intensities per dataset for its statistics, ~8 s of CPU even for tiny data), so the list holds one dataset
per converter: ACDC, WSL4MIS and MSCMR on a few real cases from ../shared/data when present (synthetic
stand-ins otherwise), the folder converter (2D PNG; its 3D NIfTI output is written by the same code as
ACDC's), and simulated + shrunk scribbles derived from the PNG dataset.
"""
from __future__ import annotations

import pytest

from conversion_helpers import (SHARED_DATA, make_acdc, make_mscmr, make_png_folder, make_wsl4mis, nnunet_dirs,
                                run_cli, symlink_subset, verify_with_nnunet)

__all__ = ["nnunet_dirs"]


def public_format_inputs(tmp_path) -> dict:
    """Inputs for the acdc / wsl4mis / mscmr converters: a few real cases, or synthetic ones."""
    acdc, h5 = SHARED_DATA / "ACDC", SHARED_DATA / "ACDC_WSL4MIS_h5" / "ACDC_training_volumes"
    mscmr = SHARED_DATA / "MSCMR"
    if acdc.is_dir() and h5.is_dir() and mscmr.is_dir():
        patients = ("patient001", "patient002", "patient071")
        symlink_subset(acdc / "training", tmp_path / "ACDC" / "training", patients, "{}")
        symlink_subset(acdc / "scribbles", tmp_path / "ACDC" / "scribbles", patients)
        symlink_subset(h5, tmp_path / "h5", ("patient001", "patient002", "patient003"))
        return {"acdc": tmp_path / "ACDC", "h5": tmp_path / "h5", "mscmr": mscmr, "test": (71, 3)}
    make_acdc(tmp_path / "ACDC", patients=(1, 2, 3))
    make_wsl4mis(tmp_path / "h5", patients=(1, 2, 3))
    make_mscmr(tmp_path / "MSCMR")
    return {"acdc": tmp_path / "ACDC", "h5": tmp_path / "h5", "mscmr": tmp_path / "MSCMR", "test": (3, 3)}


@pytest.mark.slow
def test_converted_datasets_pass_nnunet_integrity_check(tmp_path, nnunet_dirs):
    inputs = public_format_inputs(tmp_path)
    png = tmp_path / "png"
    make_png_folder(png)
    commands = [
        ("convert", "acdc", "-i", inputs["acdc"], "-s", inputs["acdc"] / "scribbles", "--test-patients",
         inputs["test"][0], "-d", 27),
        ("convert", "wsl4mis", "-i", inputs["h5"], "--spacing", 10, 1.5, 1.5, "--test-patients", inputs["test"][1],
         "-d", 28),
        ("convert", "mscmr", "-i", inputs["mscmr"], "-d", 29),
        ("convert", "folder", "-i", png / "img", "-s", png / "scr", "--dense", png / "gt", "--classes", "background",
         "RV", "Myo", "LV", "--unlabeled", 255, "-d", 8, "-n", "Png"),
        ("simulate-scribbles", "-s", 8, "-d", 9, "--shrink", 30),
    ]
    for command in commands:
        assert run_cli(*command, "-np", 1) == 0, command
    verify_with_nnunet(nnunet_dirs, 27, 28, 29, 8, 9)
