"""dataset_conversion/DatasetNNN_Name.py: thin nnU-Net-style scripts that only call the package."""
from __future__ import annotations

import ast
import runpy
import sys
from pathlib import Path

import pytest

from conversion_helpers import make_acdc, nnunet_dirs

__all__ = ["nnunet_dirs"]
SCRIPTS = Path(__file__).resolve().parents[1] / "dataset_conversion"
EXPECTED = {"Dataset027_ACDCScribble.py": "acdc", "Dataset028_WSL4MISScribble.py": "wsl4mis",
            "Dataset029_MSCMRScribble.py": "mscmr"}


def run_script(name: str, *args, monkeypatch) -> int:
    monkeypatch.setattr(sys, "argv", [name, *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(SCRIPTS / name), run_name="__main__")
    return exit_info.value.code


@pytest.mark.parametrize("name, fmt", sorted(EXPECTED.items()))
def test_scripts_are_thin_and_show_their_converter_help(name, fmt, monkeypatch, capsys):
    tree = ast.parse((SCRIPTS / name).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported == {"nnunet_scribble.conversion.command"}
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert run_script(name, "--help", monkeypatch=monkeypatch) == 0
    assert f"nnunet-scribble convert {fmt}" in " ".join(capsys.readouterr().out.split())


def test_acdc_script_converts_with_its_dataset_id(tmp_path, nnunet_dirs, monkeypatch):
    make_acdc(tmp_path / "ACDC", patients=(1, 2, 3))
    assert run_script("Dataset027_ACDCScribble.py", "-i", tmp_path / "ACDC", "-s", tmp_path / "ACDC" / "scribbles",
                      "--test-patients", "3", "-np", 1, monkeypatch=monkeypatch) == 0
    assert (nnunet_dirs["nnUNet_raw"] / "Dataset027_ACDCScribble" / "dataset.json").is_file()
    assert sorted(EXPECTED) == sorted(p.name for p in SCRIPTS.glob("Dataset*.py"))
