"""Output folders that cannot cost the user data: every conversion command writes through :func:`staged`.

- The output may not be, contain or lie inside one of the inputs (paths compared after resolving
  symbolic links, so a link to an input counts as the input).
- An existing output is replaced only with ``overwrite``, and only if this tool wrote it (it holds the
  :data:`MARKER` file) or it is empty. Folders without the marker (the user's own, another tool's, or
  written by a version of this tool from before the marker) are refused with a message.
- The new folder is written beside the output (``.NAME.partial-PID``) and swapped in when complete; the
  old one (``.NAME.old-PID`` for a moment) is deleted only after the swap. A kill at any point leaves
  either the old or the new folder in place; the next run removes the leftovers of a killed run, or
  puts the old folder back if the kill fell between the two renames of the swap.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from nnunet_scribble.errors import UserFacingError

MARKER = ".nnunet-scribble-output"
_LEFTOVER = re.compile(r"\.(?P<name>.+)\.(?P<kind>partial|old)-(?P<pid>\d+)")


def check_apart(output: Path, inputs: Iterable[Path]) -> None:
    """Refuse an ``output`` that is, contains or lies inside one of ``inputs``; for an input file, its folder."""
    out = Path(output).resolve()
    for given in inputs:
        resolved = Path(given).resolve()
        path = resolved.parent if resolved.is_file() else resolved
        if out == path or out in path.parents or path in out.parents:
            relation = "is" if out == path else "contains" if out in path.parents else "lies inside"
            via = f" (a link to {resolved})" if Path(given).absolute() != resolved else ""
            out_via = f" (a link to {out})" if Path(output).absolute() != out else ""
            raise UserFacingError(f"the output {output}{out_via} overlaps the input {given}{via}: it {relation} "
                                  f"{path}. Writing there could delete or mix up the input; choose an output "
                                  f"outside every input")


def check_replaceable(folder: Path, overwrite: bool, another: str) -> None:
    """Refuse an existing, non-empty ``folder`` unless ``overwrite`` is given and this tool wrote it.

    ``another`` says how to pick a different output (e.g. 'choose another -o').
    """
    folder = Path(folder)
    if folder.is_symlink():
        raise UserFacingError(f"the output {folder} is a symbolic link (to {folder.resolve()}); give the real "
                              f"folder or {another}")
    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
        return
    if not folder.is_dir():
        raise UserFacingError(f"the output {folder} exists and is not a folder; {another}")
    if not (folder / MARKER).is_file():
        raise UserFacingError(f"{folder} already exists and was not written by nnunet-scribble (it holds no {MARKER} "
                              f"file; folders written by earlier versions of nnunet-scribble have none either), so "
                              f"--overwrite does not replace it: delete it yourself if nothing in it is needed, or "
                              f"{another}")
    if not overwrite:
        raise UserFacingError(f"{folder} already exists; pass --overwrite to replace it")


@contextmanager
def staged(final: Path, *, overwrite: bool, inputs: Iterable[Path] = (), another: str) -> Iterator[Path]:
    """Yield an empty folder beside ``final``; on normal exit it replaces ``final``, on any error it is removed."""
    final = Path(final)
    check_apart(final, inputs)
    clean_leftovers(final)
    check_replaceable(final, overwrite, another)
    final.parent.mkdir(parents=True, exist_ok=True)
    new = final.with_name(f".{final.name}.partial-{os.getpid()}")
    new.mkdir()
    (new / MARKER).write_text(f"written by nnunet-scribble on {time.strftime('%Y-%m-%d %H:%M:%S')}; "
                              f"nnunet-scribble --overwrite replaces only folders holding this file\n")
    try:
        yield new
        _swap(new, final, overwrite, another)
    finally:
        shutil.rmtree(new, ignore_errors=True)


def _swap(new: Path, final: Path, overwrite: bool, another: str) -> None:
    check_replaceable(final, overwrite, another)  # again: it may have appeared or changed meanwhile
    if not final.exists():
        new.rename(final)
        return
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    final.rename(old)
    try:
        new.rename(final)
    except BaseException:
        old.rename(final)
        raise
    _remove_ours(old)


def _remove_ours(folder: Path) -> None:
    """Delete ``folder`` if it holds the marker; an empty one is removed too; anything else stays."""
    if (folder / MARKER).is_file():
        shutil.rmtree(folder, ignore_errors=True)
    elif folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def clean_leftovers(final: Path) -> None:
    """Remove what killed runs left beside ``final``; restore the old folder if a kill fell inside a swap."""
    for path in sorted(final.parent.glob(f".{glob.escape(final.name)}.*-*")):
        m = _LEFTOVER.fullmatch(path.name)
        if not m or m["name"] != final.name or _running(int(m["pid"])) or path.is_symlink() or not path.is_dir():
            continue
        if m["kind"] == "old" and not final.exists():
            path.rename(final)
        else:
            _remove_ours(path)


def _running(pid: int) -> bool:
    """Whether another live process has this id (ours does not count: a leftover with our id is from the past)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
