"""The semi-supervised benchmark (benchmarks/semisupervised_protocol.py): its labeled-only dataset, the
teacher's model folder and the table."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
semi = pytest.importorskip("semisupervised_protocol")


def _mixed_dataset(root: Path) -> Path:
    mixed = root / "Dataset203_ACDCSemi3"
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (mixed / sub).mkdir(parents=True)
    for case in ("patient001_frame01", "patient001_frame12", "patient002_frame01", "patient0010_frame01"):
        (mixed / "imagesTr" / f"{case}_0000.nii.gz").write_text(case)
        (mixed / "labelsTr" / f"{case}.nii.gz").write_text(case)
    (mixed / "imagesTs" / "patient071_frame01_0000.nii.gz").write_text("test")
    (mixed / "labelsTs" / "patient071_frame01.nii.gz").write_text("test")
    (mixed / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "cineMRI"}, "labels": {"background": 0, "RV": 1, "ignore": 2},
        "numTraining": 4, "file_ending": ".nii.gz"}))
    return mixed


def test_labeled_only_dataset_holds_the_dense_cases_and_the_test_set(tmp_path):
    mixed = _mixed_dataset(tmp_path)
    target = tmp_path / "Dataset303_ACDCSemi3Labeled"
    semi.labeled_only_dataset(mixed, target, ["patient001_frame01", "patient001_frame12"])
    assert sorted(f.name for f in (target / "imagesTr").iterdir()) == [
        "patient001_frame01_0000.nii.gz", "patient001_frame12_0000.nii.gz"]   # not patient0010_frame01
    assert sorted(f.name for f in (target / "labelsTr").iterdir()) == [
        "patient001_frame01.nii.gz", "patient001_frame12.nii.gz"]
    assert [f.name for f in (target / "imagesTs").iterdir()] == ["patient071_frame01_0000.nii.gz"]
    assert (target / "labelsTr" / "patient001_frame12.nii.gz").read_text() == "patient001_frame12"
    dataset_json = json.loads((target / "dataset.json").read_text())
    assert dataset_json["labels"] == {"background": 0, "RV": 1} and dataset_json["numTraining"] == 2
    assert not list(tmp_path.glob(".*tmp"))


def test_teacher_model_folder_swaps_in_the_teacher_weights_only(tmp_path):
    src, dst = tmp_path / "student", tmp_path / "teacher"
    (src / "fold_all").mkdir(parents=True)
    for f in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        (src / f).write_text(f)
    student, teacher = {"w": torch.zeros(2)}, {"w": torch.ones(2)}
    torch.save({"network_weights": student, "mean_teacher": teacher, "trainer_name": "nnUNetTrainerMeanTeacher"},
               src / "fold_all" / "checkpoint_final.pth")
    semi.teacher_model_folder(src, dst)
    swapped = torch.load(dst / "fold_all" / "checkpoint_final.pth", weights_only=False)
    assert torch.equal(swapped["network_weights"]["w"], torch.ones(2))
    assert swapped["trainer_name"] == "nnUNetTrainerMeanTeacher"
    assert (dst / "plans.json").read_text() == "plans.json"
    original = torch.load(src / "fold_all" / "checkpoint_final.pth", weights_only=False)
    assert torch.equal(original["network_weights"]["w"], torch.zeros(2))   # the source is untouched


def _result(trainer, tag, dice, spi, labels):
    return {"trainer": trainer, "variant": f"{trainer}_3000it", "tag": tag, "labels": labels,
            "protocol": "acdc_semi3", "budget": "3000it", "date": "2026-12-02", "machine": "test", "command": "c",
            "per_class": {"1": {"name": "RV", "Dice_mean": dice}, "2": {"name": "Myo", "Dice_mean": dice},
                          "3": {"name": "LV", "Dice_mean": dice}},
            "mean": {"Dice": dice, "HD95": 10.0}, "seconds_per_iteration": spi, "peak_rss_mb": 1000}


def test_table_rates_against_the_quoted_dense_run_and_times_against_stock_of_the_same_run(tmp_path):
    (tmp_path / "results").mkdir()
    for name, result in {"stock": _result("nnUNetTrainer", None, 0.5, 0.4, "dense, 3 patients"),
                         "mt": _result("nnUNetTrainerMeanTeacher", None, 0.6, 0.6, "3 dense + 67 unlabeled"),
                         "teacher": _result("nnUNetTrainerMeanTeacher", "teacher", 0.65, 0.6, "3 dense + 67 unlabeled")
                         }.items():
        (tmp_path / "results" / f"acdc_semi3_{name}.json").write_text(json.dumps(result))
    md = semi.write_tables(tmp_path, tmp_path).read_text()
    quoted = {r["variant"]: r for r in semi.quoted_rows("3000it")}
    dense = quoted["nnUNetTrainer_3000it"]["mean"]["Dice"]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in md.splitlines() if line.startswith("| `")}
    assert rows["`nnUNetTrainerMeanTeacher_3000it`"][6] == f"{0.6 / dense:.2f}"    # ratio to the quoted dense run
    assert rows["`nnUNetTrainerMeanTeacher_3000it`"][9] == "1.50x"                  # s/it vs stock of this run
    assert rows["`nnUNetTrainerMeanTeacher_3000it` [teacher]"][5] == "**0.650**"
    assert rows["`nnUNetTrainerPCE_3000it` [quoted]"][1] == "scribbles, all 70 patients (quoted)"
    assert rows["`nnUNetTrainer_3000it` [labeled only]"][9] == "1.00x"
    assert (tmp_path / "acdc_semisupervised_quick_3labeled_3000it.png").is_file()


def test_cfr_pseudolabel_table_names_the_variant():
    cfr = pytest.importorskip("cfr_pseudolabels")
    dice = {"per_class": {"RV": 0.5, "Myo": None, "LV": 0.75}, "mean": 0.625, "cases": 4}
    rows = cfr.table([{"labeled": 3, "iterations": 200, "concatenate": False, "input_size": 512, "dice": dice,
                       "minutes": 61.2, "date": "2026-12-02"}])
    assert rows[2] == "| 3 | 200 | 1 | 512 | 0.500 | - | 0.750 | **0.625** | 4 | 61 | 2026-12-02 |"
    assert cfr.variant_name(3, 200, False, 512) == "cfr_semi3_200it_single_in512"
