"""`--overwrite` never deletes what the tool did not write: outputs that are, contain or lie inside an input
are refused; only folders carrying the tool's marker are replaced, and only after the new one is complete."""
from __future__ import annotations

import pytest

from conversion_helpers import (convert_folder_3d, make_acdc, make_folder_3d, make_mscmr, make_wsl4mis, nnunet_dirs,
                                run_cli)
from nnunet_scribble.conversion.output import MARKER

__all__ = ["nnunet_dirs"]


def snapshot(folder):
    """{relative path: bytes} of every file below ``folder``."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def dense_dir(tmp_path):
    make_folder_3d(tmp_path / "src", n_patients=1)
    (tmp_path / "src" / "notes.txt").write_text("unrelated file of the user")
    return tmp_path / "src" / "dense"


def simulate_folder(in_dir, out_dir, *extra):
    return run_cli("simulate-scribbles", "-i", in_dir, "-o", out_dir, "--num-classes", 4, "-np", 1, *extra)


def shrink_folder(in_dir, out_dir, *extra):
    return run_cli("shrink-scribbles", "-i", in_dir, "-o", out_dir, "--ignore-label", 4, "--ratio", 20, "-np", 1,
                   *extra)


@pytest.mark.parametrize("where", ["same", "parent", "inside", "symlink"])
@pytest.mark.parametrize("command", [simulate_folder, shrink_folder])
def test_folder_mode_refuses_an_output_overlapping_its_input(tmp_path, dense_dir, capsys, where, command):
    in_dir = dense_dir
    if command is shrink_folder:  # shrink needs scribbles: simulate them first (a tool-written folder)
        assert simulate_folder(dense_dir, tmp_path / "scribbles") == 0
        in_dir = tmp_path / "scribbles"
    out = {"same": in_dir, "parent": in_dir.parent, "inside": in_dir / "out", "symlink": tmp_path / "link"}[where]
    if where == "symlink":
        out.symlink_to(in_dir, target_is_directory=True)
    before = snapshot(tmp_path)
    assert command(in_dir, out, "--overwrite") == 2
    err = capsys.readouterr().err
    assert "overlaps the input" in err and str(in_dir) in err
    assert snapshot(tmp_path) == before
    assert not any(p.name.startswith(".") and "partial" in p.name for p in tmp_path.rglob("*"))


def test_folder_mode_replaces_only_its_own_output(tmp_path, dense_dir, capsys):
    foreign = tmp_path / "results"
    foreign.mkdir()
    (foreign / "model_final.pth").write_text("weeks of training")
    for extra in ((), ("--overwrite",)):
        assert simulate_folder(dense_dir, foreign, *extra) == 2
        err = capsys.readouterr().err
        assert f"{foreign} already exists and was not written by nnunet-scribble" in err
        assert "--overwrite does not replace it: delete it yourself" in err and "choose another -o" in err
    assert (foreign / "model_final.pth").read_text() == "weeks of training"

    out = tmp_path / "scribbles"
    assert simulate_folder(dense_dir, out) == 0
    assert (out / MARKER).is_file()
    names = sorted(p.name for p in out.iterdir() if p.name != MARKER)
    assert names == sorted(p.name for p in dense_dir.iterdir())
    (out / "stale.nii.gz").write_text("left from the last run")
    assert simulate_folder(dense_dir, out, "--seed", 3, "--overwrite") == 0
    assert sorted(p.name for p in out.iterdir() if p.name != MARKER) == names
    assert (out / MARKER).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results", "scribbles", "src"]  # nothing left beside it


def test_an_empty_existing_folder_may_be_used_as_output(tmp_path, dense_dir):
    (tmp_path / "empty").mkdir()
    assert simulate_folder(dense_dir, tmp_path / "empty") == 0
    assert (tmp_path / "empty" / MARKER).is_file()


def test_derived_dataset_may_not_replace_its_source(tmp_path, nnunet_dirs, capsys):
    make_folder_3d(tmp_path / "src", n_patients=2)
    assert convert_folder_3d(tmp_path / "src", 5, "Toy", "--preset", "acdc") == 0
    source = nnunet_dirs["nnUNet_raw"] / "Dataset005_Toy"
    before = snapshot(source)
    for command in (("simulate-scribbles", "-s", 5), ("shrink-scribbles", "-s", 5, "--ratio", 30)):
        assert run_cli(*command, "-d", 5, "-n", "Toy", "--overwrite", "-np", 1) == 2
        assert "overlaps the input" in capsys.readouterr().err
    assert snapshot(source) == before


def test_dataset_without_marker_is_not_replaced(tmp_path, nnunet_dirs, capsys):
    """A folder in nnUNet_raw written by hand, by another tool or by an earlier version (no marker) stays."""
    make_folder_3d(tmp_path / "src", n_patients=2)
    assert convert_folder_3d(tmp_path / "src", 5, "Toy", "--preset", "acdc") == 0
    dataset = nnunet_dirs["nnUNet_raw"] / "Dataset005_Toy"
    assert (dataset / MARKER).is_file()
    (dataset / MARKER).unlink()
    before = snapshot(dataset)
    assert convert_folder_3d(tmp_path / "src", 5, "Toy", "--preset", "acdc", "--overwrite") == 2
    err = capsys.readouterr().err
    assert f"{dataset} already exists and was not written by nnunet-scribble" in err and "delete it yourself" in err
    assert snapshot(dataset) == before


def _acdc(tmp_path, raw):
    make_acdc(tmp_path / "ACDC", patients=(1, 2))
    return ("convert", "acdc", "-i", tmp_path / "ACDC", "-s", tmp_path / "ACDC" / "scribbles", "-d", 27,
            "--nnunet-raw", raw)


def _wsl4mis(tmp_path, raw):
    make_wsl4mis(tmp_path / "h5", patients=(1, 2))
    return ("convert", "wsl4mis", "-i", tmp_path / "h5", "--spacing", 10, 1.5, 1.5, "-d", 28, "--nnunet-raw", raw)


def _mscmr(tmp_path, raw):
    make_mscmr(tmp_path / "MSCMR", train=(2, 4))
    return ("convert", "mscmr", "-i", tmp_path / "MSCMR", "-d", 29, "--nnunet-raw", raw)


def _folder(tmp_path, raw):
    make_folder_3d(tmp_path / "F", n_patients=1)
    return ("convert", "folder", "-i", tmp_path / "F" / "images", "-s", tmp_path / "F" / "scribbles",
            "--scribble-suffix", "_scr", "--preset", "acdc", "-d", 5, "-n", "Toy", "--nnunet-raw", raw)


@pytest.mark.parametrize("make", [_acdc, _wsl4mis, _mscmr, _folder])
def test_converters_refuse_a_dataset_folder_overlapping_their_input(tmp_path, nnunet_dirs, capsys, make):
    """Input stored inside the dataset it is converted into (the swap would delete it), or nnUNet_raw inside the
    input folder: refused before anything is written."""
    args = make(tmp_path, nnunet_dirs["nnUNet_raw"])
    source = args[3]
    # 1. a first conversion, then the source moved into the dataset folder and converted again with --overwrite
    assert run_cli(*args, "-np", 1) == 0
    dataset = next(nnunet_dirs["nnUNet_raw"].glob("Dataset*"))
    moved = dataset / "source"
    source.rename(moved)
    moved_args = [moved if a == source else (moved / a.relative_to(source) if hasattr(a, "is_relative_to")
                                             and a.is_relative_to(source) else a) for a in args]
    before = snapshot(dataset)
    assert run_cli(*moved_args, "--overwrite", "-np", 1) == 2
    assert "overlaps the input" in capsys.readouterr().err
    assert snapshot(dataset) == before
    # 2. nnUNet_raw inside the input folder
    inner_args = [moved / "raw" if a == nnunet_dirs["nnUNet_raw"] else a for a in moved_args]
    assert run_cli(*inner_args, "--overwrite", "-np", 1) == 2
    assert "overlaps the input" in capsys.readouterr().err
    assert not (moved / "raw").exists()


def test_input_files_symlinked_from_the_output_are_protected(tmp_path, nnunet_dirs, capsys):
    """Input folders of symlinks into the dataset being replaced: the links are followed."""
    make_folder_3d(tmp_path / "F", n_patients=1)
    args = ("--preset", "acdc", "-d", 5, "-n", "Toy", "-np", 1)
    base = ("convert", "folder", "-s", tmp_path / "F" / "scribbles", "--scribble-suffix", "_scr")
    assert run_cli(*base, "-i", tmp_path / "F" / "images", *args) == 0
    dataset = nnunet_dirs["nnUNet_raw"] / "Dataset005_Toy"
    links = tmp_path / "links"
    links.mkdir()
    for image in (dataset / "imagesTr").iterdir():
        (links / image.name.replace("_0000", "")).symlink_to(image)
    before = snapshot(dataset)
    assert run_cli(*base, "-i", links, *args, "--overwrite") == 2
    assert "overlaps the input" in capsys.readouterr().err
    assert snapshot(dataset) == before
    assert all(p.exists() for p in links.iterdir())


def test_an_output_that_appears_during_the_run_is_not_replaced_without_overwrite(tmp_path, dense_dir, capsys,
                                                                                  monkeypatch):
    """Another run finished the same output meanwhile: without --overwrite it stays."""
    from nnunet_scribble.conversion import derive

    out, real = tmp_path / "scribbles", derive.run_parallel

    def other_run_finishes_first(*args, **kwargs):
        out.mkdir()
        (out / MARKER).write_text("")
        (out / "other.nii.gz").write_text("the other run's result")
        return real(*args, **kwargs)

    monkeypatch.setattr(derive, "run_parallel", other_run_finishes_first)
    assert simulate_folder(dense_dir, out) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "other.nii.gz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scribbles", "src"]
