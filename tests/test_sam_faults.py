"""Fault injection for the SAM stages: kills (SIGKILL) during stage A and stage B, concurrent jobs, read-only
folders. Each job is a child process running ``nnunet-scribble sam-pseudolabels`` with the tiny test SAM,
slowed down at one place so that the kill lands inside the stage."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nnunet_scribble.cli import main
from nnunet_scribble.sam.testing import write_tiny_sam

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.skipif(os.name != "posix", reason="SIGKILL and POSIX permissions")]

# SAM_TEST_SLOW=encode=S,label=S,step=S sleeps S seconds per encoder call / pseudo-labelled case / fine-tuning
# step; after all imports the job creates SAM_TEST_READY=FILE, then waits until SAM_TEST_GO=FILE exists.
CHILD = r"""
import os, sys, time
import torch
torch.set_num_threads(1)
slow = dict(kv.split("=") for kv in os.environ.get("SAM_TEST_SLOW", "").split(",") if kv)

def slowed(owner, name, seconds):
    original = getattr(owner, name)
    def wrapper(*a, **k):
        time.sleep(float(seconds))
        return original(*a, **k)
    setattr(owner, name, wrapper)

import nnunet_scribble.sam.backends as backends, nnunet_scribble.sam.decoder as decoder
import nnunet_scribble.sam.pseudolabels as pseudolabels
from nnunet_scribble.cli import main
from nnunet_scribble.sam.testing import use_tiny_spec
for key, owner, name in (("encode", backends.SamBackend, "encode"), ("label", pseudolabels, "pseudo_label_case"),
                         ("step", decoder, "sample_loss")):
    if key in slow:
        slowed(owner, name, slow[key])
open(os.environ["SAM_TEST_READY"], "w").close()
go = os.environ.get("SAM_TEST_GO")
while go and not os.path.exists(go):
    time.sleep(0.05)
with use_tiny_spec():
    sys.exit(main(sys.argv[1:]))
"""


class Job:
    def __init__(self, log: Path, argv, slow: str = "", go: Path | None = None, prefix=()):
        self.log, self.ready = log, Path(f"{log}.ready")
        env = {**os.environ, "SAM_TEST_SLOW": slow, "SAM_TEST_GO": str(go or ""), "SAM_TEST_READY": str(self.ready),
               "OMP_NUM_THREADS": "1"}
        with open(log, "w") as out:
            self.proc = subprocess.Popen([*prefix, sys.executable, "-c", CHILD, *argv], env=env, stdout=out,
                                         stderr=subprocess.STDOUT)

    @property
    def output(self) -> str:
        return self.log.read_text()

    def wait_until(self, condition, timeout: float = 240) -> None:
        deadline = time.time() + timeout
        while not condition():
            assert self.proc.poll() is None, f"job ended early (rc {self.proc.returncode}):\n{self.output[-3000:]}"
            assert time.time() < deadline, f"timed out waiting:\n{self.output[-3000:]}"
            time.sleep(0.05)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(60) == -signal.SIGKILL

    def finish(self, timeout: float = 240) -> str:
        rc = self.proc.wait(timeout)
        assert rc == 0, self.output[-3000:]
        return self.output


def _argv(name, ckpt, fold="0", rounds=0, epochs=1):
    return ["sam-pseudolabels", "-d", name, "-f", str(fold), "--backend", "vit_b", "--checkpoint", ckpt,
            "--rounds", str(rounds), "--epochs", str(epochs), "--overlays", "0", "--device", "cpu"]


def _cache_folder(pre: Path) -> Path:
    return next((pre / "sam_embeddings" / "nnUNetPlans_2d").glob("vit_b-*"))


def _fold_folder(pre: Path, fold=0) -> Path:
    return next((pre / "sam_pseudolabels" / "nnUNetPlans_2d").glob(f"vit_b-*/fold_{fold}"))


def _case_files(folder: Path, suffix: str) -> dict[str, int]:
    """Finished (renamed) files -> mtime; temporary files start with '.'."""
    if not folder.is_dir():
        return {}
    return {p.name[:-len(suffix)]: p.stat().st_mtime_ns for p in folder.glob(f"*{suffix}") if not p.name.startswith(".")}


def _no_leftovers(*folders: Path) -> None:
    for folder in folders:
        assert not [p for p in folder.rglob("*") if ".tmp" in p.name or p.name.endswith(".state.pth")], folder


def _train(pre: Path, fold=0) -> list[str]:
    return sorted(json.load(open(pre / "splits_final.json"))[fold]["train"])


def test_kill_during_stage_a_then_rerun_reuses_the_finished_cases(tiny_copy, tmp_path, capsys):
    root, name = tiny_copy
    pre = root / "nnUNet_preprocessed" / name
    ckpt = write_tiny_sam(str(root / "tiny.pth"))
    job = Job(tmp_path / "a.log", _argv(name, ckpt), slow="encode=0.7")
    job.wait_until(lambda: (pre / "sam_embeddings").is_dir() and len(_case_files(_cache_folder(pre), ".npy")) >= 2)
    job.kill()
    cache = _cache_folder(pre)
    finished = sorted(json.load(open(cache / "manifest.json"))["cases"])      # what the killed job completed
    kept = {c: m for c, m in _case_files(cache, ".npy").items() if c in finished}
    train = _train(pre)
    assert 2 <= len(finished) < len(train)

    assert main(_argv(name, ckpt)) == 0
    log = capsys.readouterr().out
    todo = len(train) - len(finished)
    assert f"stage A: encoding {todo} slices of {todo} case(s)" in log, log
    assert all(_case_files(cache, ".npy")[c] == m for c, m in kept.items())        # reused, not rewritten
    assert sorted(json.load(open(cache / "manifest.json"))["cases"]) == train
    fold = _fold_folder(pre)
    assert sorted(_case_files(fold / "round_0", ".b2nd")) == train
    _no_leftovers(cache, fold)

    # the resumed cache equals one encoded in one go
    embeddings = {c: np.load(cache / f"{c}.npy") for c in train}
    shutil.rmtree(pre / "sam_embeddings")
    assert main(_argv(name, ckpt)) == 0
    for c in train:
        np.testing.assert_array_equal(np.load(cache / f"{c}.npy"), embeddings[c])


def test_kills_during_stage_b_then_rerun_completes_as_an_uninterrupted_run(tiny_copy, tmp_path, capsys):
    root, name = tiny_copy
    pre = root / "nnUNet_preprocessed" / name
    ckpt = write_tiny_sam(str(root / "tiny.pth"))
    argv = _argv(name, ckpt, rounds=1, epochs=3)
    train = None

    # 1) killed while writing the round-0 pseudo-labels
    job = Job(tmp_path / "b1.log", argv, slow="label=0.7")
    job.wait_until(lambda: (pre / "sam_pseudolabels").is_dir()
                   and len(_case_files(_fold_folder(pre) / "round_0", ".b2nd")) >= 2)
    job.kill()
    fold = _fold_folder(pre)
    train = _train(pre)
    kept = _case_files(fold / "round_0", ".b2nd")
    assert 2 <= len(kept) < len(train)

    # 2) killed during the decoder fine-tuning of round 1, after its first epoch was saved
    job = Job(tmp_path / "b2.log", argv, slow="step=0.3")
    job.wait_until(lambda: (fold / "finetune_round_1.state.pth").is_file())
    job.kill()
    assert "round 0: pseudo-labels already complete" not in job.output      # round 0 was finished, not redone
    assert all(_case_files(fold / "round_0", ".b2nd")[c] == m for c, m in kept.items())
    assert sorted(_case_files(fold / "round_0", ".b2nd")) == train

    # 3) the rerun resumes the fine-tuning and completes
    assert main(argv) == 0
    log = capsys.readouterr().out
    assert "round 0: pseudo-labels already complete" in log
    assert re.search(r"resuming decoder fine-tuning at epoch [23]/3", log), log
    manifest = json.load(open(fold / "stage_b.json"))
    assert manifest["rounds"]["0"]["complete"] and manifest["rounds"]["1"]["complete"]
    assert len(manifest["finetune"]["1"]["epoch_losses"]) == 3
    assert sorted(_case_files(fold / "round_1", ".b2nd")) == train
    _no_leftovers(fold)

    # the interrupted run gives exactly what an uninterrupted one gives
    import blosc2
    import torch

    labels = {(r, c): blosc2.open(urlpath=str(fold / f"round_{r}" / f"{c}.b2nd"), mode="r")[:]
              for r in (0, 1) for c in train}
    decoder = torch.load(fold / "decoder_round_1.pth", weights_only=True)
    shutil.rmtree(pre / "sam_pseudolabels")
    assert main(argv) == 0
    for (r, c), pl in labels.items():
        np.testing.assert_array_equal(blosc2.open(urlpath=str(fold / f"round_{r}" / f"{c}.b2nd"), mode="r")[:], pl)
    again = torch.load(fold / "decoder_round_1.pth", weights_only=True)
    assert all(torch.equal(decoder[k], again[k]) for k in decoder)


def _start_second_while_first_encodes(first: Job, go1: Path, second: Job, go2: Path, pre: Path) -> None:
    """Both jobs imported; the first starts; the second starts once the first is inside stage A."""
    first.wait_until(lambda: first.ready.exists() and second.ready.exists())
    go1.touch()
    first.wait_until(lambda: (pre / "sam_embeddings").is_dir() and _case_files(_cache_folder(pre), ".npy"))
    go2.touch()


def test_concurrent_jobs_on_the_same_fold_give_one_result(tiny_copy, tmp_path):
    root, name = tiny_copy
    pre = root / "nnUNet_preprocessed" / name
    ckpt = write_tiny_sam(str(root / "tiny.pth"))
    argv = _argv(name, ckpt)
    go1, go2 = tmp_path / "go1", tmp_path / "go2"
    first = Job(tmp_path / "first.log", argv, slow="encode=2.0", go=go1)
    second = Job(tmp_path / "second.log", argv, go=go2)
    _start_second_while_first_encodes(first, go1, second, go2, pre)
    out1, out2 = first.finish(), second.finish()
    assert "stage A: encoding" in out1 and "stage A: encoding" not in out2
    assert "waiting for the lock on the SAM pseudo-labels of fold 0" in out2 and f"pid {first.proc.pid} " in out2, out1 + "\n=====\n" + out2
    assert "round 0: pseudo-labels already complete" in out2
    fold = _fold_folder(pre)
    assert out1.count(f"pseudo-labels: {fold / 'round_0'}") == out2.count(f"pseudo-labels: {fold / 'round_0'}") == 1
    assert sorted(_case_files(fold / "round_0", ".b2nd")) == _train(pre)
    _no_leftovers(_cache_folder(pre), fold)


def test_concurrent_folds_share_the_cache_and_encode_each_case_once(tiny_copy, tmp_path):
    root, name = tiny_copy
    pre = root / "nnUNet_preprocessed" / name
    ckpt = write_tiny_sam(str(root / "tiny.pth"))
    go0, go1 = tmp_path / "go0", tmp_path / "go1"
    fold0 = Job(tmp_path / "fold0.log", _argv(name, ckpt, fold=0), slow="encode=2.0", go=go0)
    fold1 = Job(tmp_path / "fold1.log", _argv(name, ckpt, fold=1), go=go1)
    _start_second_while_first_encodes(fold0, go0, fold1, go1, pre)
    out0, out1 = fold0.finish(), fold1.finish()
    train0, train1 = _train(pre, 0), _train(pre, 1)
    extra = len(set(train1) - set(train0))
    assert f"stage A: encoding {len(train0)} slices of {len(train0)} case(s)" in out0
    assert "waiting for the lock on the SAM embedding cache" in out1 and f"pid {fold0.proc.pid} " in out1
    assert f"stage A: encoding {extra} slices of {extra} case(s)" in out1, out1
    cache = _cache_folder(pre)
    assert sorted(json.load(open(cache / "manifest.json"))["cases"]) == sorted(set(train0) | set(train1))
    assert sorted(_case_files(_fold_folder(pre, 1) / "round_0", ".b2nd")) == train1
    _no_leftovers(cache, _fold_folder(pre, 0), _fold_folder(pre, 1))


def test_read_only_preprocessed_folder_is_refused_before_any_work(tiny_copy, tmp_path):
    """A read-only nnUNet_preprocessed gave a PermissionError traceback from the middle of the stages."""
    root, name = tiny_copy
    pre = root / "nnUNet_preprocessed" / name
    ckpt = write_tiny_sam(str(root / "tiny.pth"))
    prefix = ()
    if os.geteuid() == 0:       # permission bits bind root only without these capabilities
        if not shutil.which("capsh"):
            pytest.skip("running as root without capsh: cannot make a folder read-only for this process")
        prefix = ("capsh", "--drop=cap_dac_override,cap_dac_read_search", "--", "-c", 'exec "$0" "$@"')
    before = sorted(p.name for p in pre.iterdir())
    pre.chmod(0o555)
    try:
        job = Job(tmp_path / "ro.log", _argv(name, ckpt), prefix=prefix)
        assert job.proc.wait(240) == 2, job.output[-3000:]
    finally:
        pre.chmod(0o755)
    out = job.output
    assert "Traceback" not in out, out
    assert f"Cannot write the SAM embedding cache to {pre / 'sam_embeddings' / 'nnUNetPlans_2d'}: {pre} " in out, out
    assert "is not writable" in out and "nnUNet_preprocessed" in out
    assert sorted(p.name for p in pre.iterdir()) == before       # nothing was written
