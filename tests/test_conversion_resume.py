"""Conversions killed at any point (SIGKILL in a child process: no clean-up runs) leave no half-written output that
could pass for a finished one, never lose the previous output, and the same command run again finishes."""
from __future__ import annotations

import os

import pytest

from conversion_helpers import convert_folder_3d, make_folder_3d, nnunet_dirs, run_cli, run_cli_killed
from nnunet_scribble.conversion.output import MARKER

__all__ = ["nnunet_dirs"]


def contents(folder):
    """{relative path: bytes} of the files below ``folder``, the marker (it holds the time of writing) aside."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MARKER}


def convert_args(src, *extra):
    return ("convert", "folder", "-i", src / "images", "-s", src / "scribbles", "--scribble-suffix", "_scr",
            "--dense", src / "dense", "--test-images", src / "test_images", "--test-labels", src / "test_labels",
            "--patient-pattern", r"^(pat\d+)_", "--preset", "acdc", "-d", 5, "-n", "Toy", "-np", 1, *extra)


@pytest.fixture
def src(tmp_path):
    make_folder_3d(tmp_path / "src", n_patients=2)
    return tmp_path / "src"


@pytest.fixture
def reference(tmp_path, src):
    """The dataset as an uninterrupted conversion writes it (into a separate nnUNet_raw)."""
    raw, pre = tmp_path / "reference_raw", tmp_path / "reference_pre"
    assert run_cli(*convert_args(src, "--nnunet-raw", raw, "--nnunet-preprocessed", pre)) == 0
    return contents(raw / "Dataset005_Toy")


def test_killed_conversion_leaves_no_dataset_and_the_rerun_finishes(src, nnunet_dirs, reference):
    raw = nnunet_dirs["nnUNet_raw"]
    for kill_after in (0, 7):  # at the first file, and with 7 of the 14 files written
        run_cli_killed("writes", kill_after, *convert_args(src))
        assert not (raw / "Dataset005_Toy").exists()                      # nothing that looks finished
        assert not (nnunet_dirs["nnUNet_preprocessed"] / "Dataset005_Toy").exists()
        assert [p.name.split("-")[0] for p in raw.iterdir()] == [".Dataset005_Toy.partial"]
    assert run_cli(*convert_args(src)) == 0                               # the same command again
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset005_Toy"]    # the killed runs' leftovers are gone
    assert contents(raw / "Dataset005_Toy") == reference


def test_killed_overwrite_keeps_the_previous_dataset(src, nnunet_dirs, reference):
    raw = nnunet_dirs["nnUNet_raw"]
    assert run_cli(*convert_args(src)) == 0
    run_cli_killed("writes", 9, *convert_args(src, "--overwrite"))
    assert contents(raw / "Dataset005_Toy") == reference                  # the old dataset, untouched
    assert run_cli(*convert_args(src, "--overwrite")) == 0
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset005_Toy"]
    assert contents(raw / "Dataset005_Toy") == reference


def test_kill_inside_the_swap_puts_the_previous_dataset_back(src, nnunet_dirs, reference, capsys):
    """Killed after the old dataset was renamed aside and before the new one was renamed into place."""
    raw = nnunet_dirs["nnUNet_raw"]
    assert run_cli(*convert_args(src)) == 0
    run_cli_killed("swap", 0, *convert_args(src, "--overwrite"))
    assert not (raw / "Dataset005_Toy").exists()
    assert sorted(p.name.split("-")[0] for p in raw.iterdir()) == [".Dataset005_Toy.old", ".Dataset005_Toy.partial"]
    assert run_cli(*convert_args(src)) == 2                               # the old dataset is back: still protected
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset005_Toy"]
    assert contents(raw / "Dataset005_Toy") == reference
    assert run_cli(*convert_args(src, "--overwrite")) == 0
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset005_Toy"]


def test_killed_folder_mode_simulation_resumes(src, tmp_path):
    out = tmp_path / "scribbles"
    args = ("simulate-scribbles", "-i", src / "dense", "-o", out, "--num-classes", 4, "-np", 1)
    run_cli_killed("writes", 2, *args)
    assert not out.exists()
    assert run_cli(*args) == 0
    assert sorted(p.name for p in out.glob("*.nii.gz")) == sorted(p.name for p in (src / "dense").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scribbles", "src"]
    first = contents(out)
    run_cli_killed("swap", 0, *args, "--overwrite")
    assert run_cli(*args, "--overwrite") == 0
    assert contents(out) == first                                         # seeded: the same scribbles again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scribbles", "src"]


def test_leftovers_of_running_or_foreign_processes_stay(src, nnunet_dirs):
    """A partial folder of a conversion still running (its process is alive), or one without the marker, stays."""
    raw = nnunet_dirs["nnUNet_raw"]
    running = raw / f".Dataset005_Toy.partial-{os.getppid()}"
    running.mkdir()
    (running / MARKER).write_text("")
    foreign = raw / ".Dataset005_Toy.partial-999999999"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("not the tool's")
    assert convert_folder_3d(src, 5, "Toy", "--preset", "acdc") == 0
    assert running.is_dir() and (foreign / "mine.txt").is_file()
