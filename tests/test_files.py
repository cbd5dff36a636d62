"""The one inter-process lock helper and atomic writes (``nnunet_scribble.files``)."""
from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nnunet_scribble.errors import UserFacingError
from nnunet_scribble.files import atomic_write, atomic_write_json, holder_file, locked, require_writable

PACKAGE = Path(__file__).resolve().parents[1] / "nnunet_scribble"


def _hold(path, entered: threading.Event, release: threading.Event):
    with locked(path, "the test lock", log=lambda m: None):
        entered.set()
        release.wait(30)


def test_a_waiter_says_once_who_holds_the_lock_then_waits(tmp_path):
    path = str(tmp_path / "sub" / ".lock")
    entered, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold, args=(path, entered, release))
    holder.start()
    assert entered.wait(30)
    info = json.loads(Path(holder_file(path)).read_text())
    assert info["pid"] == os.getpid() and info["host"] == socket.gethostname() and info["command"]
    messages = []
    threading.Timer(2.5, release.set).start()
    start = time.time()
    with locked(path, "the test lock", log=messages.append):
        waited = time.time() - start
        assert json.loads(Path(holder_file(path)).read_text())["since"] >= info["since"]
    holder.join()
    assert waited >= 2.0
    assert len(messages) == 1, messages
    msg = messages[0]
    assert "waiting" in msg and "the test lock" in msg and f"pid {os.getpid()}" in msg
    assert f"host {socket.gethostname()}" in msg and "since" in msg
    assert not os.path.exists(holder_file(path))     # removed on release


def test_a_free_lock_is_taken_silently(tmp_path):
    messages = []
    with locked(str(tmp_path / ".lock"), "x", log=messages.append):
        pass
    with locked(str(tmp_path / ".lock"), "x", log=messages.append):
        pass
    assert messages == []


def test_lock_in_a_folder_that_cannot_be_created_names_it(tmp_path):
    (tmp_path / "blocker").write_text("a file where a folder should be")
    with pytest.raises(UserFacingError, match=r"blocker.* is a file, not a folder"):
        with locked(str(tmp_path / "blocker" / "cache" / ".lock"), "the cache"):
            pass
    with pytest.raises(UserFacingError, match="blocker"):
        require_writable(str(tmp_path / "blocker" / "x"), "the cache")
    require_writable(str(tmp_path / "new" / "deeper"), "the cache")     # missing folders can be created
    assert not (tmp_path / "new").exists()                              # the check creates nothing


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="permission bits do not bind root")
def test_read_only_folder_is_refused_with_its_name(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(UserFacingError, match=rf"{ro}.* is not writable"):
            require_writable(str(ro / "cache"), "the cache")
    finally:
        ro.chmod(0o755)


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "m.json"
    atomic_write_json(str(path), {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_json(str(path), {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]     # the temporary file is gone


def test_atomic_write_keeps_the_ending_for_writers_that_go_by_it(tmp_path):
    seen = []

    def write(tmp):
        seen.append(os.path.basename(tmp))
        Path(tmp).write_text("complete")

    atomic_write(tmp_path / "plot.png", write)
    assert seen[0].startswith(".plot.tmp") and seen[0].endswith(".png")
    assert (tmp_path / "plot.png").read_text() == "complete"

    def killed(tmp):
        Path(tmp).write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "plot.png", killed)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png"]
    assert (tmp_path / "plot.png").read_text() == "complete"


def test_no_module_imports_fcntl():
    """fcntl does not exist on Windows; locks go through filelock (nnunet_scribble.files)."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] == "fcntl" for n in names):
                offenders.append(str(path.relative_to(PACKAGE.parent)))
    assert offenders == []


def test_trainers_import_without_fcntl():
    """What a Windows user sees: every trainer module imports (gc_maps imported fcntl at module level)."""
    code = ("import sys; sys.modules['fcntl'] = None\n"
            "import nnunet_scribble.targets.gc_maps, nnunet_scribble.training.maco, nnunet_scribble.training.samsp\n"
            "import nnunet_scribble.sam.pseudolabels, nnunet_scribble.files\n"
            "print('imported')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "imported" in proc.stdout, proc.stderr[-2000:]
