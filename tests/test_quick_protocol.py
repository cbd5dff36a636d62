"""The benchmark harness's own logic (benchmarks/quick_protocol.py), without training anything."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
quick_protocol = pytest.importorskip("quick_protocol")


def test_run_reports_the_peak_memory_of_this_command_tree_only(tmp_path):
    big = f"{sys.executable} -c 'x = bytearray(400 * 2**20)'"
    # the 400 MB process is a grandchild: it counts for the first command ...
    first = quick_protocol.run([sys.executable, "-c", f"import subprocess; subprocess.run({big!r}, shell=True)"],
                               {}, tmp_path / "a.log")
    # ... and not for the next one, run from the same harness process
    second = quick_protocol.run([sys.executable, "-c", "x = bytearray(50 * 2**20)"], {}, tmp_path / "b.log")
    assert first > 400 and 50 < second < 300


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


def test_table_ratios_are_against_the_dense_run_of_the_budget():
    def result(trainer, labels, dice, spi):
        return {"trainer": trainer, "variant": f"{trainer}_3000it", "labels": labels, "seconds_per_iteration": spi,
                "per_class": {"1": {"name": "RV", "Dice_mean": dice}}, "mean": {"Dice": dice, "HD95": 10.0},
                "peak_rss_mb": 1000.0}

    lines = quick_protocol.budget_table([result("nnUNetTrainer", "dense", 0.8, 0.5),
                                         result("nnUNetTrainerPCE", "scribbles", 0.6, 0.75)])
    pce = lines[-1].split(" | ")
    assert pce[4] == "0.75" and pce[7] == "1.50x"   # Dice ratio 0.6 / 0.8, speed 0.75 / 0.5
