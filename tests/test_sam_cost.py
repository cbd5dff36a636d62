"""SAM-SP's CPU time estimate: the figures, and the message at the start of the stages (tiny dataset)."""
from __future__ import annotations

import pytest

from nnunet_scribble.cli import main
from nnunet_scribble.sam.cost import cpu_estimate, finetune_note
from nnunet_scribble.sam.testing import write_tiny_sam


def test_estimate_for_acdc_with_the_papers_defaults():
    """ACDC's 1282 training slices, 2 rounds x 30 epochs: the figures of sam_pseudolabels.md."""
    text = cpu_estimate("litemedsam", slices_to_encode=1282, slices=1282, finetune_epochs=60, rounds_to_write=3)
    assert text.startswith("[sam] on the CPU the SAM stages take about 7.3-21.7 h")
    assert "stage A encodes 1282 slices (litemedsam: ~1.5-6 s per slice, 0.5-2.1 h)" in text
    assert "60 epoch(s) over up to 1282 slices (~0.3-0.9 s per slice and epoch, 6.4-19.2 h)" in text
    assert "GPU times not measured" in text
    assert "NNUNET_SCRIBBLE_SAM_ROUNDS=1 NNUNET_SCRIBBLE_SAM_EPOCHS=1" in text and "--rounds/--epochs" in text
    # resumed: encoding and fine-tuning done, nothing left to say
    assert cpu_estimate("litemedsam", 0, 1282, 0, 0) is None
    assert "stage A" not in cpu_estimate("litemedsam", 0, 1282, 30, 1)
    # a backend without a measurement does not get an invented figure
    unmeasured = cpu_estimate("vit_h", 10, 10, 0, 0)
    assert "an unmeasured time" in unmeasured and "CPU time not measured" in unmeasured
    assert finetune_note(1238, 30) == "CPU: ~0.3-0.9 s per slice and epoch, about 3.1-9.3 h"


@pytest.mark.usefixtures("one_torch_thread")
def test_stages_say_what_remains_and_how_long_before_starting(tiny_copy, capsys):
    root, name = tiny_copy
    ckpt = write_tiny_sam(str(root / "tiny_vit_b.pth"))
    argv = ["sam-pseudolabels", "-d", "990", "-c", "2d", "-f", "0", "--backend", "vit_b", "--checkpoint", ckpt,
            "--overlays", "0", "--device", "cpu", "--epochs", "1"]
    assert main(argv + ["--rounds", "0"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "on the CPU the SAM stages take" in line]
    assert len(lines) == 1 and out.index(lines[0]) < out.index("stage A: encoding")    # said before the work
    assert "stage A encodes 6 slices (vit_b: ~21 s per slice, 2 min)" in lines[0]     # fold 0: 6 of 8 cases
    assert "fine-tunes" not in lines[0] and "writes 1 round(s)" in lines[0]
    # one more round: the cache and round 0 are reused, only the fine-tuning and round 1 remain
    assert main(argv + ["--rounds", "1"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "on the CPU the SAM stages take" in line)
    assert "stage A" not in line and "1 epoch(s) over up to 6 slices" in line and "writes 1 round(s)" in line
    assert "fine-tuning the mask decoder on round 0 pseudo-labels" in out and "CPU: ~0.3-0.9 s per slice" in out
    assert main(argv + ["--rounds", "1"]) == 0                       # all done: no estimate
    assert "on the CPU the SAM stages take" not in capsys.readouterr().out
