"""The benchmark harness (benchmarks/quick_protocol.py, full_protocol.py): its logic, and one small
full-protocol run through the nnU-Net CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import CPU_ENV

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
quick_protocol = pytest.importorskip("quick_protocol")


def test_run_reports_the_peak_memory_of_this_command_tree_only(tmp_path):
    # run from a fresh harness-sized process: Linux counts the spawning process's resident memory at
    # exec into the child's peak, so from inside pytest (torch loaded) every command would look large
    grandchild = [sys.executable, "-c", "x = bytearray(400 * 2**20)"]
    first = [sys.executable, "-c", f"import subprocess; subprocess.run({grandchild!r})"]
    second = [sys.executable, "-c", "x = bytearray(50 * 2**20)"]
    script = "\n".join([
        "import sys; from pathlib import Path",
        f"sys.path.insert(0, {str(Path(quick_protocol.__file__).parent)!r}); import quick_protocol",
        f"print(quick_protocol.run({first!r}, {{}}, Path({str(tmp_path / 'a.log')!r})),",
        f"      quick_protocol.run({second!r}, {{}}, Path({str(tmp_path / 'b.log')!r})))"])
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    first_mb, second_mb = map(float, proc.stdout.split()[-2:])
    # the 400 MB grandchild counts for the first command, and not for the next one of the same harness
    assert first_mb > 400 and 50 < second_mb < 300


def test_run_exits_with_the_log_on_failure(tmp_path):
    with pytest.raises(SystemExit, match="exit 3.*c.log"):
        quick_protocol.run([sys.executable, "-c", "raise SystemExit(3)"], {}, tmp_path / "c.log")


def test_quick_configuration_is_added_once_and_leaves_stock_untouched(tmp_path):
    stock_2d = {"batch_size": 12, "architecture": {"arch_kwargs": {"features_per_stage": [32, 64, 128, 256, 512]}}}
    plans_file = tmp_path / "nnUNetPlans.json"
    plans_file.write_text(json.dumps({"configurations": {"2d": stock_2d}}))
    quick_protocol.add_quick_configuration(plans_file, batch_size=8)
    quick_protocol.add_quick_configuration(plans_file, batch_size=99)   # already there: unchanged
    configs = json.loads(plans_file.read_text())["configurations"]
    assert configs["2d"] == stock_2d
    assert configs["2d_quick"] == {"inherits_from": "2d", "batch_size": 8, "architecture": {
        "arch_kwargs": {"features_per_stage": [8, 16, 32, 64, 128]}}}


def test_quick_batch_is_fixed_whatever_nnunet_planned(tmp_path):
    # nnU-Net's planned 2d batch grows with the number of cases (3 for the 4 shipped MSCMR subjects, 12
    # for all 25): the quick protocols fix it so an iteration costs the same on any number of cases
    own = quick_protocol.dataset_protocol(_raw_dataset(tmp_path))
    batches = {name: p.quick_batch for name, p in quick_protocol.PROTOCOLS.items()} | {"--dataset": own.quick_batch}
    assert batches == {"acdc": 8, "mscmr": 3, "--dataset": 8}
    for planned in (3, 12):
        plans_file = tmp_path / f"plans_{planned}.json"
        plans_file.write_text(json.dumps({"configurations": {"2d": {
            "batch_size": planned, "architecture": {"arch_kwargs": {"features_per_stage": [32, 64]}}}}}))
        quick_protocol.add_quick_configuration(plans_file, quick_protocol.PROTOCOLS["mscmr"].quick_batch)
        assert json.loads(plans_file.read_text())["configurations"]["2d_quick"]["batch_size"] == 3


def test_table_ratios_are_against_the_dense_run_of_the_budget():
    def result(trainer, labels, dice, spi):
        return {"trainer": trainer, "variant": f"{trainer}_3000it", "labels": labels, "seconds_per_iteration": spi,
                "per_class": {"1": {"name": "RV", "Dice_mean": dice}}, "mean": {"Dice": dice, "HD95": 10.0},
                "peak_rss_mb": 1000.0}

    lines = quick_protocol.budget_table([result("nnUNetTrainer", "dense", 0.8, 0.5),
                                         result("nnUNetTrainerPCE", "scribbles", 0.6, 0.75)])
    pce = lines[-1].split(" | ")
    assert pce[4] == "0.75" and pce[7] == "1.50x"   # Dice ratio 0.6 / 0.8, speed 0.75 / 0.5


def _raw_dataset(root: Path, name="Dataset042_Knee", labels=None, dense_train=True) -> Path:
    folder = root / name
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs") + (("labelsTr_dense",) if dense_train else ()):
        (folder / sub).mkdir(parents=True)
        (folder / sub / "case_000.nii.gz").write_bytes(b"")
    labels = {"background": 0, "bone": 1, "ignore": 2} if labels is None else labels
    (folder / "dataset.json").write_text(json.dumps({"labels": labels, "file_ending": ".nii.gz"}))
    return folder


def test_own_dataset_protocol_names_its_dense_reference_and_command(tmp_path):
    protocol = quick_protocol.dataset_protocol(_raw_dataset(tmp_path))
    assert protocol.scribble == (42, "Dataset042_Knee") and protocol.dense == (142, "Dataset142_KneeDense")
    assert protocol.cli() == f"--dataset {tmp_path / 'Dataset042_Knee'}"
    assert quick_protocol.PROTOCOLS["acdc"].cli() == "--protocol acdc"
    assert quick_protocol.dataset_protocol(_raw_dataset(tmp_path, "Dataset043_Hip", dense_train=False)).dense is None


@pytest.mark.parametrize("breakage, message", [
    ("name", "DatasetXXX_Name"), ("ignore", "no 'ignore' label"), ("labelsTs", "labelsTs is missing or empty")])
def test_own_dataset_errors_name_the_file_and_the_fix(tmp_path, breakage, message):
    from nnunet_scribble.errors import UserFacingError

    folder = _raw_dataset(tmp_path, labels={"background": 0, "bone": 1} if breakage == "ignore" else None)
    if breakage == "name":
        folder = folder.rename(tmp_path / "knee_scribbles")
    if breakage == "labelsTs":
        (folder / "labelsTs" / "case_000.nii.gz").unlink()
    with pytest.raises(UserFacingError, match=message):
        quick_protocol.dataset_protocol(folder)


def test_own_dataset_is_linked_into_the_work_folder_and_its_dense_twin_derived(tmp_path):
    folder = _raw_dataset(tmp_path / "data")
    protocol = quick_protocol.dataset_protocol(folder)
    raw = tmp_path / "work" / "nnUNet_raw"
    (tmp_path / "work" / "nnUNet_preprocessed" / "Dataset042_Knee" / "nnUNetPlans_2d").mkdir(parents=True)
    (tmp_path / "work" / "nnUNet_preprocessed" / "Dataset142_KneeDense" / "nnUNetPlans_2d").mkdir(parents=True)
    for name in ("Dataset042_Knee", "Dataset142_KneeDense"):   # planned already: no nnU-Net call in this test
        (tmp_path / "work" / "nnUNet_preprocessed" / name / "nnUNetPlans.json").write_text(json.dumps(
            {"configurations": {"2d": {"architecture": {"arch_kwargs": {"features_per_stage": [32, 64]}}}}}))
    quick_protocol.prepare_datasets(tmp_path / "work", protocol, protocol.data, True, {})
    assert (raw / "Dataset042_Knee").resolve() == folder.resolve()
    dense = raw / "Dataset142_KneeDense"
    assert (dense / "labelsTr" / "case_000.nii.gz").resolve() == (folder / "labelsTr_dense" / "case_000.nii.gz")
    assert "ignore" not in json.loads((dense / "dataset.json").read_text())["labels"]


@pytest.mark.slow
def test_full_protocol_on_an_own_dataset_trains_validates_predicts_and_tables(tiny_dataset, tmp_path):
    root, name = tiny_dataset
    script = Path(quick_protocol.__file__).with_name("full_protocol.py")
    proc = subprocess.run([sys.executable, str(script), "--dataset", str(root / "nnUNet_raw" / name), "--work",
                           str(tmp_path / "work"), "--budget", "1epoch", "--folds", "0", "--device", "cpu", "-c", "2d_quick",
                           "--out", str(tmp_path / "out"), "nnUNetTrainerPCE"],
                          env={**os.environ, **CPU_ENV}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "work" / "results" / f"{name}_full_nnUNetTrainerPCE_1epoch_2d_quick_folds0.json").read_text())
    assert result["folds"] == [0] and result["configuration"] == "2d_quick" and result["n_test_cases"] == 2
    assert 0 <= result["cv_mean"]["Dice"] <= 1 and result["epochs_logged"] == 1   # fold 0 against labelsTr_dense
    table = (tmp_path / "out" / f"{name}_full_2d_quick.md").read_text()
    assert "CV mean Dice" in table and "`nnUNetTrainerPCE_1epoch`" in table and "--folds 0" in table
    assert (tmp_path / "out" / f"{name}_full_2d_quick_1epoch.png").is_file()


def _run_result(trainer, labels, dice, hd, std=True, budget="3000it", tag=None):
    per_class = {}
    for i, (name, d, h) in enumerate(zip(("RV", "Myo", "LV"), dice, hd)):
        per_class[str(i + 1)] = {"name": name, "Dice_mean": d, "HD95_mean": h}
        if std:
            per_class[str(i + 1)].update(Dice_std=0.05, HD95_std=h / 2)
    return {"trainer": trainer, "variant": f"{trainer}_{budget}", "tag": tag, "labels": labels, "budget": budget,
            "per_class": per_class, "mean": {"Dice": float(np.mean(dice)), "HD95": float(np.mean(hd))},
            "seconds_per_iteration": 0.5, "peak_rss_mb": 1000.0, "date": "2026-12-02", "machine": "m", "command": "c"}


def test_results_plot_keeps_the_bars_readable():
    import matplotlib.pyplot as plt
    from matplotlib.container import BarContainer

    runs = [_run_result("nnUNetTrainer", "dense", (0.8, 0.85, 0.9), (6.0, 7.0, 8.0))] + [
        _run_result(f"nnUNetTrainerX{i}", "scribbles", (0.7, 0.6, 0.9), (20.0, 300.0, 5.0)) for i in range(5)]
    fig = quick_protocol.results_figure(runs, runs[0])
    ax_d, ax_h = fig.axes
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend = fig.legends[0].get_window_extent(renderer)
    for ax in (ax_d, ax_h):
        assert ax.get_legend() is None
        # the legend is below the panels, so it covers no bar
        assert legend.y1 <= ax.get_window_extent(renderer).y0
        bars = [c for c in ax.containers if isinstance(c, BarContainer)]
        assert len(bars) == len(runs) and all(b.errorbar is not None for b in bars)   # std as error bars
    assert ax_h.get_yscale() == "log"      # 5 mm and 300 mm both readable
    assert len(fig.legends[0].get_texts()) == len(runs) + 1   # runs + dense bound
    plt.close(fig)


def test_plots_are_redrawn_from_a_results_table(tmp_path):
    replot = pytest.importorskip("replot")
    runs = [_run_result("nnUNetTrainer", "dense", (0.8, 0.85, 0.9), (6.0, 7.0, 8.0)),
            _run_result("nnUNetTrainerPCE", "scribbles", (0.7, 0.6, 0.9), (20.0, 300.0, 5.0)),
            _run_result("nnUNetTrainerPCE", "scribbles", (0.5, 0.4, 0.3), (2.0, 3.0, 4.0), budget="1000it", tag="b")]
    md = quick_protocol.write_table(runs, tmp_path, "toy_quick", "Toy")
    (tmp_path / "toy_quick_3000it.png").unlink()
    parsed = quick_protocol.results_from_table(md)
    assert sorted(parsed) == ["1000it", "3000it"]
    pce = parsed["3000it"][1]
    assert (pce["variant"], pce["tag"], pce["labels"]) == ("nnUNetTrainerPCE_3000it", None, "scribbles")
    assert [c["Dice_mean"] for c in pce["per_class"].values()] == [0.7, 0.6, 0.9]
    assert pce["mean"]["HD95"] == pytest.approx(108.3, abs=0.05) and parsed["1000it"][0]["tag"] == "b"
    assert sorted(p.name for p in replot.replot(md)) == ["toy_quick_1000it.png", "toy_quick_3000it.png"]
    assert (tmp_path / "toy_quick_3000it.png").stat().st_size > 0
